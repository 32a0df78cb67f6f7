"""Build the documentation up to what Quarto would render, and an HTML preview of it.

Quarto cannot be installed everywhere (it is not on PyPI as a binary), so this builds the docs as far as
nbdev goes without it: `nbdev_proc_nbs` turns the notebooks into the processed notebooks Quarto renders
(show_doc cells added, hidden cells and directives handled), and `jupyter nbconvert` renders each of them
to an HTML page a browser can open. Usage: python tests/docs_preview.py [OUT_DIR]
"""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_preview(out_dir: Path) -> list[Path]:
    """Process the notebooks with nbdev and render each to HTML in `out_dir`; return the pages."""
    subprocess.run(['nbdev_proc_nbs'], cwd=ROOT, check=True, capture_output=True, text=True)
    proc = ROOT / '_proc'
    nbs = sorted(p for p in proc.glob('*.ipynb'))
    if not nbs: raise RuntimeError(f'nbdev_proc_nbs wrote no notebooks to {proc}')
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--to', 'html', '--output-dir', str(out_dir),
                    *map(str, nbs)], cwd=proc, check=True, capture_output=True, text=True)
    pages = sorted(out_dir.glob('*.html'))
    if len(pages) != len(nbs): raise RuntimeError(f'{len(nbs)} notebooks but {len(pages)} pages in {out_dir}')
    return pages


if __name__ == '__main__':
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / '_preview')
    for p in build_preview(out): print(p)
