"""Headless Chromium for the docs and JupyterLab tests (the system browser; nothing is downloaded)."""
import os, shutil
from contextlib import contextmanager

import pytest

CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-quic']


def chromium_path() -> str:
    "The system's Chromium; without one the test is skipped, except on CI (CI=true), where tests/run.sh installs it."
    path = shutil.which('chromium') or shutil.which('chromium-browser')
    if path is None:
        message = 'chromium is not installed: apt-get install chromium (tests/run.sh does this when run as root)'
        if os.environ.get('CI', '').lower() in ('1', 'true'): pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def browser():
    playwright = pytest.importorskip('playwright.sync_api', reason='pip install playwright (dev extra)')
    path = chromium_path()
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try: yield b
        finally: b.close()
