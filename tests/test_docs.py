"""The documentation preview: every page opens, its figures are images that load, no cell shows an error."""
import json, os
from pathlib import Path

import pytest

from browser import browser
from docs_preview import ROOT, build_preview

SHOTS = Path(os.environ.get('SELF_SUP_SCREENSHOTS', ROOT / '_preview' / 'screenshots'))
SCREENSHOT_PAGES = ('index', '04_sinkhorn', '17_methods.distill', '42_viz.attention', '90_repro.single_image')


@pytest.fixture(scope='module')
def pages(tmp_path_factory):
    return build_preview(tmp_path_factory.mktemp('preview'))


def stored_images(nb: Path) -> int:
    "How many image outputs a notebook stores (what its page must show)."
    cells = json.loads(nb.read_text())['cells']
    return sum(1 for c in cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {}))


def test_every_notebook_has_a_page(pages):
    names = {p.stem for p in pages}
    for nb in (ROOT / 'nbs').glob('*.ipynb'):
        assert nb.stem in names, f'no docs page for {nb.name}'


def test_pages_open_with_images_and_no_errors(pages):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser() as b:
        page = b.new_page(viewport={'width': 1200, 'height': 900})
        for html in pages:
            page.goto(html.as_uri())
            page.wait_for_load_state('load')
            title = page.title()
            assert title, f'{html.name}: empty page title'
            imgs = page.eval_on_selector_all(
                '.jp-OutputArea-output img', 'els => els.map(e => [e.complete, e.naturalWidth])')
            broken = [i for i, (complete, width) in enumerate(imgs) if not complete or width == 0]
            assert not broken, f'{html.name}: images {broken} did not load'
            expected = stored_images(ROOT / 'nbs' / f'{html.stem}.ipynb')
            assert len(imgs) >= expected, f'{html.name}: {len(imgs)} images shown, the notebook stores {expected}'
            errors = page.eval_on_selector_all(
                '.jp-OutputArea-output', "els => els.map(e => e.innerText).filter(t => t.includes('Traceback (most recent call last)'))")
            assert not errors, f'{html.name}: a cell shows an error trace:\n{errors[0][:2000]}'
            if html.stem in SCREENSHOT_PAGES:
                page.screenshot(path=str(SHOTS / f'{html.stem}.png'), full_page=False)


def test_sidebar_lists_every_notebook_once():
    import re
    listed = re.findall(r'-\s+(\S+\.ipynb)', (ROOT / 'nbs' / 'sidebar.yml').read_text())
    present = sorted(p.name for p in (ROOT / 'nbs').glob('*.ipynb'))
    assert len(listed) == len(set(listed)), 'a notebook is listed twice in nbs/sidebar.yml'
    assert sorted(listed) == present, (f'sidebar without notebook: {sorted(set(listed) - set(present))}; '
                                       f'notebook not in sidebar: {sorted(set(present) - set(listed))}')


def test_page_summaries_fit_on_one_line():
    "nbdev turns the first `> ` line under a notebook's title into the page description; a second line would be cut off."
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        title = next((''.join(c['source']) for c in cells if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('# ')), None)
        assert title is not None, f'{nb.name} has no "# Title" markdown cell'
        lines = title.split('\n')[1:]
        summary = [l for l in lines[:next((i for i, l in enumerate(lines) if not l.startswith('>')), len(lines))]]
        assert len(summary) <= 1, f'{nb.name}: the summary under the title spans {len(summary)} lines; nbdev keeps only the first'
