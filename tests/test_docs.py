"""The documentation: README.md is generated from nbs/index.ipynb, and the offline preview builds without installing
or downloading anything; in Chromium every page opens with its sidebar, a human title, its figures, typeset math
(MathJax from the local copy), no stray markup, no error, and no request leaves the machine."""
import functools, http.server, json, os, re, stat, threading
from pathlib import Path

import pytest

from browser import browser
from docs_preview import ROOT, build_preview, page_title, sidebar_entries, site_title
from docs_readme import README, readme_from_index

SHOTS = Path(os.environ.get('SELF_SUP_SCREENSHOTS', ROOT / '_preview' / 'screenshots'))
SCREENSHOT_PAGES = ('index', '04_sinkhorn', '11_methods.simclr', '17_methods.distill', '42_viz.attention', '90_repro.single_image')
# what building the docs must not run: Quarto's installer (sudo, a download) and pip
TRIPWIRES = ('sudo', 'curl', 'wget', 'pip', 'pip3', 'apt-get')


def test_readme_is_generated_from_the_index():
    assert README.read_text() == readme_from_index(), \
        'README.md differs from what nbs/index.ipynb generates: edit the notebook, then run python tests/docs_readme.py'


@pytest.fixture(scope='module')
def preview(tmp_path_factory):
    "The preview, built with programs that would install or download something replaced by ones that log their call."
    tripwires = tmp_path_factory.mktemp('tripwires')
    log = tripwires / 'called.log'
    for tool in TRIPWIRES:
        (tripwires / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit 1\n')
        (tripwires / tool).chmod(stat.S_IRWXU)
    path = os.environ['PATH']
    os.environ['PATH'] = f'{tripwires}{os.pathsep}{path}'
    try: pages = build_preview(tmp_path_factory.mktemp('preview'))
    finally: os.environ['PATH'] = path
    return pages, (log.read_text() if log.exists() else '')


@pytest.fixture(scope='module')
def pages(preview): return preview[0]


def test_preview_builds_without_installing_or_downloading(preview):
    assert not preview[1], f'building the docs preview ran:\n{preview[1]}'


def test_every_notebook_has_a_page(pages):
    names = {p.stem for p in pages}
    for nb in (ROOT / 'nbs').glob('*.ipynb'):
        assert nb.stem in names, f'no docs page for {nb.name}'


def is_module_name(title: str, stem: str) -> bool:
    "Whether a page title is only the name of the module its notebook exports (04_sinkhorn: 'sinkhorn', 'self_sup.sinkhorn')."
    module = re.sub(r'^\d+[a-z]?_', '', stem)
    return title in (module, f'self_sup.{module}') or bool(re.fullmatch(r'[a-z_.]+', title)) and stem != 'index'


def test_page_titles_are_human():
    "nbdev makes the page title from the notebook's `# Title` cell: a title a reader understands, not the module's name."
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        title = next((''.join(c['source']).split('\n')[0][2:].strip() for c in cells
                      if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('# ')), None)
        assert title, f'{nb.name} has no "# Title" markdown cell'
        assert not is_module_name(title, nb.stem), \
            f'{nb.name}: the page title {title!r} is the module name; give the page a title a reader understands'


def _serve(directory: Path):
    "A quiet HTTP server on loopback for `directory` (what a reader of the preview runs: python -m http.server)."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f'http://127.0.0.1:{server.server_address[1]}/'


# markup Quarto would have consumed, and a page must not show as text
STRAY = {'Pandoc attributes': re.compile(r'\{(target=|style=|[.#][\w-]+[ }])'), 'Quarto div': re.compile(r'^:::', re.M),
         'cell directive': re.compile(r'^#\|', re.M), 'front matter': re.compile(r'^---\s*$\ntitle:', re.M)}


def test_pages_in_chromium(pages):
    "Every page: sidebar, title, images, math, no stray markup, no error, and every request answered by the local server."
    SHOTS.mkdir(parents=True, exist_ok=True)
    site = site_title()
    server, base = _serve(pages[0].parent)
    outside, failed = [], []
    try:
        with browser() as b:
            context = b.new_context(viewport={'width': 1200, 'height': 900})
            def route(r):
                if r.request.url.startswith(base): r.continue_()
                else: outside.append(r.request.url); r.abort()
            context.route('**/*', route)
            page = context.new_page()
            page.on('response', lambda resp: resp.status >= 400 and failed.append(f'{resp.status} {resp.url}'))
            page.on('requestfailed', lambda req: req.url.startswith(base) and failed.append(f'{req.failure} {req.url}'))
            n_math = {}
            for html in pages:
                page.goto(base + html.name)
                page.wait_for_load_state('load')
                # MathJax typesets after the page loads; its 'End' hook runs once it is done (at once if it already is)
                page.evaluate("() => new Promise(done => MathJax.Hub.Register.StartupHook('End', () => done(true)))")
                h1 = page.eval_on_selector('main h1', "e => e.textContent.replace('¶', '').trim()")
                assert page.title() == page_title(h1, site), f'{html.name}: page title {page.title()!r}, heading {h1!r}'
                assert not is_module_name(h1, html.stem), f'{html.name}: the page is titled by its module name {h1!r}'
                # the sidebar: every section and page of nbs/sidebar.yml, this page marked
                sections = page.eval_on_selector_all('nav#sidebar .section-name', 'els => els.map(e => e.textContent)')
                links = page.eval_on_selector_all('nav#sidebar li a', 'els => els.map(e => e.getAttribute("href"))')
                current = page.eval_on_selector_all('nav#sidebar a[aria-current="page"]', 'els => els.map(e => e.getAttribute("href"))')
                groups = sidebar_entries({})
                assert sections == [s for s, _ in groups if s], f'{html.name}: sidebar sections {sections}'
                assert links == [f'{stem}.html' for _, entries in groups for stem, _ in entries], f'{html.name}: sidebar links {links}'
                listed = html.name in links   # a page nbs/sidebar.yml lacks: test_sidebar_lists_every_notebook_once says so
                assert current == ([html.name] if listed else []), f'{html.name}: the sidebar marks {current} as this page'
                # figures load, no cell shows an error
                imgs = page.eval_on_selector_all('.jp-OutputArea-output img', 'els => els.map(e => [e.complete, e.naturalWidth])')
                broken = [i for i, (complete, width) in enumerate(imgs) if not complete or width == 0]
                assert not broken, f'{html.name}: images {broken} did not load'
                expected = stored_images(ROOT / 'nbs' / f'{html.stem}.ipynb')
                assert len(imgs) >= expected, f'{html.name}: {len(imgs)} images shown, the notebook stores {expected}'
                errors = page.eval_on_selector_all(
                    '.jp-OutputArea-output', "els => els.map(e => e.innerText).filter(t => t.includes('Traceback (most recent call last)'))")
                assert not errors, f'{html.name}: a cell shows an error trace:\n{errors[0][:2000]}'
                # math: every formula typeset by MathJax, none left as TeX source or shown as an error
                tex, typeset, math_errors = page.evaluate("""() => [document.querySelectorAll('script[type^="math/tex"]').length,
                    document.querySelectorAll('span.MathJax').length, document.querySelectorAll('.MathJax_Error, .merror, [data-mjx-error]').length]""")
                assert typeset == tex and not math_errors, f'{html.name}: {tex} formulas, {typeset} typeset, {math_errors} errors'
                n_math[html.stem] = typeset
                if has_math(ROOT / 'nbs' / f'{html.stem}.ipynb'):
                    assert typeset > 0, f'{html.name}: the notebook has math, the page shows none typeset'
                # no markup Quarto would have consumed, in the text or in the code shown
                text = page.eval_on_selector('main', 'e => e.innerText')
                for what, pattern in STRAY.items():
                    hit = pattern.search(text)
                    assert not hit, f'{html.name}: {what} shown as text: {text[max(0, hit.start() - 80):hit.end() + 80]!r}'
                if html.stem in SCREENSHOT_PAGES:
                    page.screenshot(path=str(SHOTS / f'docs_{html.stem}.png'), full_page=False)
    finally:
        server.shutdown()
    assert not outside, f'pages asked the network for {sorted(set(outside))[:10]} ({len(outside)} requests)'
    assert not failed, f'requests the local server failed: {failed[:10]}'
    assert sum(n > 0 for n in n_math.values()) >= 5, f'math typeset on too few pages: {n_math}'


def stored_images(nb: Path) -> int:
    "How many image outputs a notebook stores (what its page must show)."
    cells = json.loads(nb.read_text())['cells']
    return sum(1 for c in cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {}))


def has_math(nb: Path) -> bool:
    "Whether a notebook's prose has TeX between dollars."
    cells = json.loads(nb.read_text())['cells']
    return any(re.search(r'(?<![\\$])\$[^$\n]+\$', ''.join(c['source'])) for c in cells if c['cell_type'] == 'markdown')


def test_sidebar_lists_every_notebook_once():
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
