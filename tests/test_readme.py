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


# ---------------------------------------------------------------- every command the README shows, run
import os, shlex, shutil, subprocess, sys, time

import numpy as np
import PIL.Image
import pytest
import torch

# commands that are not run, with the reason (a README command in neither table fails the test below)
NOT_RUN = {
    'python3 -m venv .venv': 'installs the kit into a new virtual environment (the suite runs in an installed one); its `self_sup demo` runs below',
    'self_sup eval davis --backbone vit_small_patch16 --weights dino_deitsmall16_pretrain.pth': "needs DINO's released weights file and the real DAVIS at /data/DAVIS",
    'torchrun --standalone --nproc_per_node=2 -m self_sup.cli train dino --data-path /data/imagenet': 'needs ImageNet at /data/imagenet and two GPUs',
    'torchrun --nnodes=2': 'needs two machines with 8 GPUs and ImageNet',
    'nbdev_export': 'development tool: rewrites self_sup/ from the notebooks',
    'nbdev_clean': 'development tool: rewrites the notebooks',
    'bash tests/run.sh': 'the whole suite, this test included',
    'python tests/nbcells.py': 'development tool: runs a notebook (minutes; tests/test_device_guard.py covers the guard)',
    'python tests/docs_readme.py': 'development tool: rewrites README.md from nbs/index.ipynb (tests/test_docs.py checks it is current)',
    'python tests/docs_preview.py': 'development tool: builds the HTML docs preview (tests/test_docs.py builds and checks it)',
    'bash tests/gpu.sh': 'GPU only',
}
# command prefix -> options appended (argparse: a later value wins) to make the run tiny
TINY = {
    'self_sup --help': [],
    'self_sup demo --image chelsea': ['--teacher', '{teacher}', '--steps', '2', '--batch-size', '16', '--no-noise'],
    'self_sup train dino --preset cpu': ['--max-steps', '1', '--num-workers', '0'],
    'self_sup eval knn --run runs/dino': ['--data', '{images}', '--size', '28', '--ks', '2'],
    'self_sup export runs/dino': [],
    'self_sup eval knn --backbone vit_tiny_patch16': ['--data', '{images}', '--size', '28', '--ks', '2'],
    'self_sup fake-videos': ['--n-videos', '2', '--n-frames', '4', '--size', '32'],
    'self_sup cache-video --path walking_tour.mp4': [],
    'python -m self_sup.bench sinkhorn': ['--quick', '--no-augment'],
    'torchrun --standalone --nproc_per_node=2 -m self_sup.cli train simclr': [],
}
SUBSTITUTE = {'walking_tour.mp4': 'fake_videos/fake_0000.mp4'}   # a user's own video: the clip fake-videos wrote just before


def readme_commands(text: str) -> list[str]:
    "Every command line of the ```bash blocks, continuation lines joined, comments dropped."
    lines = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = ' '.join(line.split('  #')[0].split())
            if line: lines.append(line)
    return lines


def _kind(command: str) -> str:
    hits = [p for p in (*NOT_RUN, *TINY) if command.startswith(p)]
    assert len(hits) == 1, f"README command {command!r} matches {hits}: add it to TINY (run) or NOT_RUN (with the reason)"
    return hits[0]


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    commands = readme_commands((ROOT / 'README.md').read_text())
    kinds = [_kind(c) for c in commands]
    assert 'self_sup eval knn --run runs/dino' in kinds and 'self_sup export runs/dino' in kinds
    assert not set(TINY) - set(kinds), f"TINY lists commands the README no longer shows: {set(TINY) - set(kinds)}"


def _tiny_images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in range(2):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(4):
                PIL.Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / split / f'class{c}' / f'{i}.png')
    return root


def test_readme_commands_run(tmp_path):
    from self_sup.tasks import Classifier, save_classifier
    torch.manual_seed(0)
    values = dict(teacher=str(save_classifier(Classifier('small_cnn', 10, 1, widths=(32, 64, 128)), tmp_path / 'teacher.pt')),
                  images=str(_tiny_images(tmp_path / 'images')))
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, SELF_SUP_PROGRESS='0', PYTHONWARNINGS='ignore')
    ran = []
    for command in readme_commands((ROOT / 'README.md').read_text()):
        kind = _kind(command)
        if kind in NOT_RUN: continue
        argv = [SUBSTITUTE.get(a, a) for a in shlex.split(command)] + [a.format(**values) for a in TINY[kind]]
        tool = sys.executable if argv[0] == 'python' else str(bin_dir / argv[0]) if (bin_dir / argv[0]).exists() else shutil.which(argv[0])
        start = time.perf_counter()
        r = subprocess.run([tool, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        print(f'{time.perf_counter() - start:5.1f} s  {command}')
        assert r.returncode == 0, f"README command {command!r} (run as {argv}) failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        ran.append((kind, r.stdout))
    out = dict(ran)
    assert 'knn@2:' in out['self_sup eval knn --run runs/dino'] and 'timm.create_model(' in out['self_sup export runs/dino']
    assert (tmp_path / 'backbone.safetensors').is_file() and (tmp_path / 'runs' / 'dino' / 'method.json').is_file()
    assert len(ran) == len(TINY)
