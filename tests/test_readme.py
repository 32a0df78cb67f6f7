"""The README's quick start: exactly two commands, the second the one CI runs, the docs' index saying the same."""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start(text: str) -> list[str]:
    "The command lines of the first ```bash block after '## Quick start', comments dropped."
    block = re.search(r'## Quick start\s*```bash\n(.*?)```', text, re.S)
    assert block, 'no ```bash block under "## Quick start"'
    return [l.split('  #')[0].strip() for l in block.group(1).splitlines() if l.strip()]


def test_readme_quick_start_is_two_commands_and_the_second_is_ci_s():
    install_and_demo, install_and_test = quick_start((ROOT / 'README.md').read_text())
    assert 'pip install -e .' in install_and_demo and install_and_demo.endswith('self_sup demo'), install_and_demo
    assert install_and_test.endswith('bash tests/run.sh'), install_and_test
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    assert 'bash tests/run.sh || fail=1' in ci, 'CI must call the README test command'
    assert 'self_sup=self_sup.cli:console' in (ROOT / 'settings.ini').read_text().replace(' ', '')


def test_index_page_gives_the_same_quick_start():
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    text = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert quick_start(text) == quick_start((ROOT / 'README.md').read_text())


def test_cpu_only_install_is_documented_beside_the_default_and_the_index_says_the_same():
    readme = (ROOT / 'README.md').read_text()
    section = readme[readme.index('### CPU-only install'):readme.index('## Notebook map')].strip()
    assert '--extra-index-url https://download.pytorch.org/whl/cpu' in section and 'GB' in section, section
    assert readme.index('## Quick start') < readme.index('### CPU-only install')
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    assert any(''.join(c['source']).strip() == section for c in nb['cells'] if c['cell_type'] == 'markdown')
