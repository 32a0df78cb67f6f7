"""Build the documentation up to what Quarto would render, and an HTML preview of it.

Quarto cannot be installed everywhere (it is not on PyPI as a binary), so this builds the docs as far as
nbdev goes without it: `nbdev_proc_nbs` turns the notebooks into the processed notebooks Quarto renders
(show_doc cells added, hidden cells and directives handled), and `jupyter nbconvert` renders each of them
to an HTML page a browser can open. Usage: python tests/docs_preview.py [OUT_DIR]
"""
import json, re, shutil, subprocess, sys, tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _as_quarto_shows(nb_path: Path, dest: Path) -> None:
    """Copy a processed notebook, doing what Quarto does with two things nbconvert would print as they are:
    the YAML front matter becomes the page's title and description, and `#| echo: false` cells show only
    their output (the API docs of `show_doc`)."""
    nb = json.loads(nb_path.read_text())
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and src.startswith('---'):
            meta = yaml.safe_load(src.strip().strip('-')) or {}
            c.update(cell_type='markdown', source=f"# {meta.get('title', nb_path.stem)}\n\n> {meta.get('description', '')}")
            c.pop('outputs', None); c.pop('execution_count', None)
        elif c['cell_type'] == 'code' and re.search(r'^#\|\s*echo:\s*false', src, flags=re.M):
            c.setdefault('metadata', {}).setdefault('tags', []).append('remove_input')
    dest.write_text(json.dumps(nb))


def build_preview(out_dir: Path) -> list[Path]:
    """Process the notebooks with nbdev and render each to HTML in `out_dir`; return the pages."""
    subprocess.run(['nbdev_proc_nbs'], cwd=ROOT, check=True, capture_output=True, text=True)
    proc = ROOT / '_proc'
    nbs = sorted(p for p in proc.glob('*.ipynb'))
    if not nbs: raise RuntimeError(f'nbdev_proc_nbs wrote no notebooks to {proc}')
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shown = []
        for nb in nbs:
            _as_quarto_shows(nb, Path(tmp) / nb.name); shown.append(Path(tmp) / nb.name)
        for extra in proc.iterdir():          # images and data the pages refer to
            if extra.suffix != '.ipynb' and not (Path(tmp) / extra.name).exists():
                (shutil.copytree if extra.is_dir() else shutil.copy)(extra, Path(tmp) / extra.name)
        subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--to', 'html', '--no-prompt', '--output-dir', str(out_dir),
                        '--TagRemovePreprocessor.enabled=True', '--TagRemovePreprocessor.remove_input_tags=remove_input',
                        *map(str, shown)], cwd=tmp, check=True, capture_output=True, text=True)
    pages = sorted(out_dir.glob('*.html'))
    if len(pages) != len(nbs): raise RuntimeError(f'{len(nbs)} notebooks but {len(pages)} pages in {out_dir}')
    return pages


if __name__ == '__main__':
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / '_preview')
    for p in build_preview(out): print(p)
