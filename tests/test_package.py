"""The package installs from its sources (pip install .) and imports from outside the repository."""
import os, subprocess, sys, tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp('site')
    build = tmp_path_factory.mktemp('build')
    # a non-editable install of this checkout (no deps: they are in the test environment already)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                    '--target', str(target), str(ROOT)], check=True, cwd=build)
    return target


def test_import_from_outside_repo(installed, tmp_path):
    code = ('import self_sup, self_sup.core, self_sup.distributed, pathlib; '
            'print(pathlib.Path(self_sup.__file__).resolve())')
    env = {**os.environ, 'PYTHONPATH': str(installed)}
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    assert str(path).startswith(str(installed.resolve())), path
    assert ROOT not in path.parents


def test_every_module_is_installed(installed):
    src = {p.relative_to(ROOT) for p in (ROOT / 'self_sup').rglob('*.py')}
    inst = {p.relative_to(installed) for p in (installed / 'self_sup').rglob('*.py')}
    assert src <= inst, f'not installed: {sorted(map(str, src - inst))}'


def test_version_matches_settings():
    import configparser, self_sup
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    assert self_sup.__version__ == cfg['DEFAULT']['version']
