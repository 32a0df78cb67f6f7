"""Headless Chromium for the docs and JupyterLab tests (the system browser; nothing is downloaded)."""
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-quic']


def chromium_path() -> str:
    path = shutil.which('chromium') or shutil.which('chromium-browser')
    if path is None:
        pytest.fail('chromium is not installed: apt-get install chromium (.ci/run does this)')
    return path


@contextmanager
def browser():
    playwright = pytest.importorskip('playwright.sync_api', reason='pip install playwright (dev extra)')
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try: yield b
        finally: b.close()
