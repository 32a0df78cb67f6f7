"""JupyterLab as its users meet it: open a tutorial notebook in a real browser, run all cells, and check
that the outputs, a figure and an interactive widget rendered and no cell failed."""
import json, os, re, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

from browser import browser

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = os.environ.get('SELF_SUP_LAB_NOTEBOOK', '45_viz.explorers.ipynb')
PANEL = '.jp-NotebookPanel:not(.lm-mod-hidden)'  # the notebook in the visible tab
SHOTS = Path(os.environ.get('SELF_SUP_SCREENSHOTS', ROOT / '_preview' / 'screenshots'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on loopback, with no token, serving a copy of nbs/."
    root = tmp_path / 'nbs'
    shutil.copytree(ROOT / 'nbs', root, symlinks=True)
    port = _free_port()
    log = open(tmp_path / 'lab.log', 'w')
    # render every cell (JupyterLab 4 otherwise only draws the cells in view), and no news pop-up
    settings = tmp_path / 'lab-settings' / '@jupyterlab' / 'notebook-extension'
    settings.mkdir(parents=True)
    (settings / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    env = {**os.environ, 'SELF_SUP_PROGRESS': '0', 'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
           'JUPYTERLAB_SETTINGS_DIR': str(tmp_path / 'lab-settings'),
           # a fresh workspace: no tabs restored from an earlier session on this machine
           'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'lab-workspaces')}
    proc = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                             '--ServerApp.token=', '--ServerApp.password=', '--allow-root', f'--ServerApp.root_dir={root}',
                             '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(240):
            try: urllib.request.urlopen(f'{url}/api', timeout=1); break
            except Exception: time.sleep(0.5)
        else: pytest.fail(f'JupyterLab did not start:\n{(tmp_path / "lab.log").read_text()[-3000:]}')
        yield url, root
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()


def test_tutorial_runs_in_jupyterlab(lab):
    url, root = lab
    nb = root / TUTORIAL
    assert nb.exists(), f'tutorial notebook {TUTORIAL} is missing'
    n_code = sum(c['cell_type'] == 'code' for c in json.loads(nb.read_text())['cells'])
    with browser() as b:
        page = b.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto(f'{url}/lab/tree/{TUTORIAL}?reset')
        page.wait_for_selector(f'{PANEL} .jp-Notebook .jp-Cell', timeout=120_000)
        # the kernel has started when the status bar says "Idle"
        page.wait_for_function("document.body.innerText.includes('| Idle')", timeout=120_000)
        page.click('text=Run', timeout=20_000)
        page.click('text=Run All Cells', timeout=20_000)
        # every code cell gets an execution count and the kernel goes idle again
        deadline = time.time() + 600
        while time.time() < deadline:
            prompts = page.eval_on_selector_all(f'{PANEL} .jp-CodeCell .jp-InputArea-prompt', 'els => els.map(e => e.innerText.trim())')
            done = [p for p in prompts if re.fullmatch(r'\[\s*\d+\s*\]:?', p)]
            if len(done) >= n_code: break
            time.sleep(1)
        else:
            pytest.fail(f'not every cell ran: prompts {prompts}')
        page.wait_for_timeout(1500)
        errors = page.eval_on_selector_all(
            f'{PANEL} .jp-OutputArea-output', "els => els.map(e => e.innerText).filter(t => t.includes('Traceback') || t.match(/^\\w+Error:/m))")
        assert not errors, f'a cell failed in JupyterLab:\n{errors[0][:3000]}'
        assert page.locator(f'{PANEL} .jp-OutputArea-output img').count() >= 1, 'no figure rendered'
        assert page.locator('.jupyter-widgets .widget-slider, .jupyter-widgets.widget-slider, .widget-hslider').count() >= 1, \
            'no interactive widget (slider) rendered'
        page.locator('.widget-slider, .widget-hslider').first.scroll_into_view_if_needed()   # the picture shows a live explorer
        page.wait_for_timeout(500)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / 'jupyterlab.png'))
