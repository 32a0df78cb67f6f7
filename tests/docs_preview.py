"""The documentation as HTML pages, built offline from what is installed: no Quarto, no download, no CDN.

Quarto cannot be installed everywhere (it is not on PyPI as a binary), and nbdev's `nbdev_proc_nbs` starts by
installing it (`sudo`, a download, then `pip install -e .[dev]`). So this runs nbdev's own notebook processing
(`nbdev.processors.FilterDefaults`: show_doc cells added, hidden cells dropped, the `# Title` cell turned into
front matter) into a private folder, then renders each processed notebook with nbconvert, doing what Quarto
would do with what nbconvert would print as it is: the front matter becomes the page's title and summary,
`#|` directives are obeyed and not shown, Pandoc's `[text](url){target="_blank" ...}` links become HTML links,
and every page gets the sidebar of `nbs/sidebar.yml`. Math is typeset by the MathJax that the
`jupyter-server-mathjax` package ships (a dev requirement), copied beside the pages.

Usage: python tests/docs_preview.py [OUT_DIR]    (default: _preview/; open OUT_DIR/index.html, or serve it)
"""
import html, json, re, shutil, sys, tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
MATHJAX_CONFIG = 'TeX-AMS-MML_HTMLorMML-full,Safe'   # the configuration jupyter-server-mathjax ships

SITE_CSS = """
body.preview { margin: 0; }
body.preview > main { margin-left: 17rem; max-width: 60rem; padding: 1rem 2rem; }
nav#sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 15rem; overflow-y: auto; padding: 1rem;
  background: #f7f7f9; border-right: 1px solid #ddd; font: 14px/1.4 system-ui, sans-serif; }
nav#sidebar .site-title { display: block; font-size: 1.3rem; font-weight: 600; margin-bottom: .8rem; color: #2780e3; text-decoration: none; }
nav#sidebar ul { list-style: none; padding-left: 0; margin: 0; }
nav#sidebar li.section { margin-top: .8rem; }
nav#sidebar .section-name { font-weight: 600; text-transform: uppercase; font-size: .75rem; color: #555; letter-spacing: .03em; }
nav#sidebar a { color: #333; text-decoration: none; display: block; padding: .1rem 0 .1rem .5rem; }
nav#sidebar a[aria-current="page"] { color: #2780e3; font-weight: 600; border-left: 2px solid #2780e3; }
p.description { font-style: italic; font-size: 1.3rem; opacity: .7; margin-top: 0; }
/* the hidden MathML MathJax adds for screen readers would ask for MathJax's TeX fonts, which the local copy lacks */
.MJX_Assistive_MathML [mathvariant] { font-family: inherit !important; }
"""

TEMPLATE = """{%- extends 'index.html.j2' -%}
{#- nothing from a CDN: no require.js, no widget manager, no mermaid; MathJax from the copy beside the pages -#}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
            processEscapes: true, processEnvironments: true},
  TeX: {equationNumbers: {autoNumber: 'AMS', useLabelIds: true}},
  displayAlign: 'center', messageStyle: 'none',
  'HTML-CSS': {availableFonts: [], imageFont: null, preferredFont: null, webFont: 'STIX-Web', linebreaks: {automatic: true}}
});
</script>
<script src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}<style>{{ resources.site_css }}</style>{% endblock extra_css %}
{%- block body_header -%}
<body class="jp-Notebook preview" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{{ resources.sidebar }}
<main>
{%- endblock body_header -%}
"""


def mathjax_dir() -> Path:
    "The MathJax 2 tree that `jupyter-server-mathjax` installs (the one the classic notebook served offline)."
    try: import jupyter_server_mathjax
    except ImportError: raise RuntimeError('the docs preview typesets math with the MathJax of jupyter-server-mathjax: '
                                           'pip install -e ".[dev]"') from None
    static = Path(jupyter_server_mathjax.__file__).parent / 'static'
    if not (static / 'MathJax.js').is_file(): raise RuntimeError(f'no MathJax.js in {static}')
    return static


def process_notebooks(dest: Path, n_workers: int = 2) -> list[Path]:
    """nbdev's processing of every notebook in nbs/ into `dest`: what `nbdev_proc_nbs` does, without its Quarto
    installer, without rewriting nbs/nbdev.yml and self_sup/_modidx.py, and without the shared _proc/ folder."""
    from fastcore.parallel import parallel
    from fastcore.xtras import working_directory
    from nbdev.processors import FilterDefaults
    import nbdev.serve_drv
    nbs = sorted(NBS.glob('*.ipynb'))
    if not nbs: raise RuntimeError(f'no notebooks in {NBS}')
    dest.mkdir(parents=True, exist_ok=True)
    with working_directory(ROOT):   # nbdev finds settings.ini from the working directory, in the workers too
        parallel(nbdev.serve_drv.main, [(nb, dest / nb.name, FilterDefaults) for nb in nbs],
                 n_workers=n_workers, method='spawn', pause=0.01)
    done = [dest / nb.name for nb in nbs]
    missing = [p.name for p in done if not p.is_file()]
    if missing: raise RuntimeError(f'nbdev did not process {missing}')
    return done


def front_matter(nb: dict) -> dict:
    "The YAML front matter nbdev made from the `# Title` / `> summary` cell ({} if none)."
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and src.startswith('---'): return yaml.safe_load(src.strip().strip('-')) or {}
    return {}


_LINK_ATTRS = re.compile(r'\[([^\]\n]*)\]\(([^)\s]+)\)\{([^}\n]*)\}')     # [text](url){target="_blank" style="..."}
_HEADING_ATTRS = re.compile(r'^(#{1,6} .*?)\s*\{[#.][^}\n]*\}\s*$', re.M)  # ## Heading {#id .class}


def pandoc_to_html(md: str) -> str:
    "Markdown with Pandoc's attribute syntax (which Quarto reads and nbconvert would print) made plain."
    md = _LINK_ATTRS.sub(lambda m: f'<a href="{html.escape(m[2])}" {m[3].strip()}>{m[1]}</a>', md)
    return _HEADING_ATTRS.sub(r'\1', md)


def _directives(src: str) -> tuple[dict, str]:
    "The leading `#| key: value` lines of a code cell, and the code without them."
    lines = src.split('\n')
    n = next((i for i, l in enumerate(lines) if not l.startswith('#|')), len(lines))
    opts = {}
    for l in lines[:n]:
        key, _, value = l[2:].partition(':')
        opts[key.strip()] = value.strip().lower()
    return opts, '\n'.join(lines[n:]).strip('\n')


def as_quarto_shows(nb: dict, name: str) -> dict:
    """The processed notebook `nb` as Quarto would show it: front matter as title and summary, `#|` directives
    obeyed and hidden (echo, output, include), Pandoc link attributes as HTML."""
    fm, cells = front_matter(nb), []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and src.startswith('---'):
            head = f"# {fm.get('title', name)}"
            if fm.get('description'): head += f"\n\n<p class=\"description\">{html.escape(str(fm['description']))}</p>"
            c = dict(cell_type='markdown', id=c.get('id', 'front-matter'), metadata={}, source=head)
        elif c['cell_type'] == 'markdown':
            c['source'] = pandoc_to_html(src)
        elif c['cell_type'] == 'code':
            opts, c['source'] = _directives(src)
            if opts.get('include') == 'false': continue
            if opts.get('echo') == 'false': c.setdefault('metadata', {}).setdefault('tags', []).append('remove_input')
            if opts.get('output') == 'false': c['outputs'] = []
            for o in c.get('outputs', []):
                data = o.get('data', {})
                if 'text/markdown' in data:
                    text = data['text/markdown']
                    data['text/markdown'] = pandoc_to_html(''.join(text) if isinstance(text, list) else text)
        cells.append(c)
    nb['cells'] = cells
    nb.setdefault('metadata', {}).pop('widgets', None)   # their state needs a widget manager from a CDN
    return nb


def sidebar_entries(titles: dict[str, str]) -> list:
    "nbs/sidebar.yml as [(section or None, [(page stem, title), ...]), ...], in its order."
    contents = yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    def page(entry: str): stem = Path(entry).stem; return stem, titles.get(stem, stem)
    groups = []
    for item in contents:
        if isinstance(item, str): groups.append((None, [page(item)]))
        else: groups.append((item['section'], [page(e if isinstance(e, str) else e['href']) for e in item.get('contents', [])]))
    return groups


def sidebar_html(groups: list, current: str, site_title: str) -> str:
    "The sidebar of one page, `current` marked as the page shown."
    def link(stem, title):
        here = ' aria-current="page"' if stem == current else ''
        return f'<li><a href="{stem}.html"{here}>{html.escape(title)}</a></li>'
    items = []
    for section, pages in groups:
        if section is None: items += [link(*p) for p in pages]
        else: items.append(f'<li class="section"><span class="section-name">{html.escape(section)}</span>'
                           f'<ul>{"".join(link(*p) for p in pages)}</ul></li>')
    return (f'<nav id="sidebar" aria-label="Documentation"><a class="site-title" href="index.html">{html.escape(site_title)}</a>'
            f'<ul>{"".join(items)}</ul></nav>')


def site_title() -> str:
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT'].get('title', cfg['DEFAULT']['lib_name'])


def page_title(title: str, site: str) -> str:
    "What the browser tab shows: the page's title and the site's (the site's alone on its home page)."
    return site if title == site else f'{title} – {site}'


def build_preview(out_dir: Path, n_workers: int = 2) -> list[Path]:
    "Process the notebooks with nbdev and render each to an HTML page in `out_dir`; return the pages."
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    import nbformat
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(mathjax_dir(), out_dir / 'mathjax', dirs_exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        processed = process_notebooks(Path(tmp), n_workers=n_workers)
        nbs = {p.stem: json.loads(p.read_text()) for p in processed}
    site = site_title()
    titles = {stem: str(front_matter(nb).get('title', stem)) for stem, nb in nbs.items()}
    groups = sidebar_entries(titles)
    from traitlets.config import Config
    config = Config()
    config.TagRemovePreprocessor.enabled, config.TagRemovePreprocessor.remove_input_tags = True, {'remove_input'}
    exporter = HTMLExporter(config=config, template_name='lab', extra_loaders=[DictLoader({'preview.html.j2': TEMPLATE})],
                            template_file='preview.html.j2', exclude_input_prompt=True, exclude_output_prompt=True,
                            mathjax_url=f'mathjax/MathJax.js?config={MATHJAX_CONFIG}')
    pages = []
    for stem, nb in nbs.items():
        node = nbformat.from_dict(as_quarto_shows(nb, stem))
        node.metadata['title'] = page_title(titles[stem], site)
        body, _ = exporter.from_notebook_node(node, resources=dict(
            site_css=SITE_CSS, sidebar=sidebar_html(groups, stem, site)))
        page = out_dir / f'{stem}.html'
        page.write_text(body, encoding='utf-8'); pages.append(page)
    return sorted(pages)


if __name__ == '__main__':
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / '_preview')
    pages = build_preview(out)
    print(f'{len(pages)} pages in {out}; open {out / "index.html"}')
