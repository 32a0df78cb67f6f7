#!/usr/bin/env bash
# Every GPU check in one go, for a GPU machine lent for minutes, in this order under one time budget (8 minutes):
#   1. every notebook in nbs/ (but index) top to bottom as nbdev_test runs it, plus its `#| cuda` cells, 8 at a time,
#      with the trainer and the demos on the GPU (tests/nbcells.py);
#   2. `self_sup train` for every method, `self_sup distill`, `self_sup demo` and `self_sup eval knn|linear|dense|davis`
#      for a few steps on the GPU, training in each paper recipe's precision (bf16 where it says so) (tests/smoke.py);
#   3. the GPU pytest tests;
#   4. with the time left, each method's paper recipe (`python -m self_sup.bench paper`) and the distillation recipe.
# It writes nbs/results/gpu_<card>/summary.json: {"notebooks": {"nbs/NAME.ipynb": "passed" | "failed: <first error
# line>"}, "train": {"<method or command>": ...}, "machine": ..., "commit": ..., "date": ...}, and beside it
# summary.txt and gpu_results.tgz (every log and JSON: a lent machine returns only a few files). With $OUT set (the
# device tool's output folder) the same files are copied there.
#
# Usage: bash tests/gpu.sh [WHEELS]
#   WHEELS: a folder of wheels for the packages a bare GPU machine lacks (it has torch, torchvision, timm, numpy,
#   matplotlib, scikit-learn, scikit-image, but no network), installed offline. Make it where the registry is
#   reachable, for the GPU machine's Python (3.12) and platform:
#     pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d wheels decord av scikit-video mlxtend fastcore ipython ipywidgets
#   (decord, PyAV, scikit-video, mlxtend and fastcore for the kit and its notebooks' tests; IPython with its
#   dependencies (jedi, parso, traitlets, prompt_toolkit, pexpect, ...) and ipywidgets for the notebooks' displays.)
# Env: GPU_BUDGET_S (default 480), COMMIT (default: git rev-parse HEAD; the device machine has no .git),
#      PAPER_STEPS (100), DORA_VIDEO / TIMETUNING_VIDEO / IMAGENET (default: generated stand-ins)
set -uo pipefail
cd "$(dirname "$0")/.."
deadline=$(( $(date +%s) + ${GPU_BUDGET_S:-480} ))
steps=${PAPER_STEPS:-100}
commit=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if [ -n "${1:-}" ]; then
  pkgs=$(ls "$1"/*.whl | sed 's#.*/##; s/-.*//' | tr '\n' ' ')
  python -m pip install -q --no-index --find-links "$1" $pkgs 2>&1 | tail -n 3 \
    || python -m pip install -q --no-index --find-links "$1" --break-system-packages $pkgs
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MPLBACKEND=Agg SELF_SUP_PROGRESS=0
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | grep -oiE 'h100|h200|a100|l40s?|b200|[a-z][0-9]{2,4}' | head -n 1 | tr 'A-Z' 'a-z')
RESULTS=${RESULTS:-nbs/results/gpu_${card:-unknown}}; mkdir -p "$RESULTS"
LOGS=$(mktemp -d)/gpu_results; mkdir -p "$LOGS/notebooks"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "$(nproc) CPU cores"
  python -c "import sys, torch, torchvision, timm; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"; } > "$LOGS/machine.txt" 2>&1
cat "$LOGS/machine.txt"
left() { echo $(( deadline - $(date +%s) )); }
step() {  # step NAME LIMIT_S COMMAND...: run it with the smaller of its limit and the time left
  local name=$1 cap=$2; shift 2
  local l=$(left); local t=$(( l < cap ? l : cap ))
  if [ "$t" -lt 10 ]; then echo "$name: skipped, no time left" | tee -a "$LOGS/summary.txt"; return; fi
  echo "== $name (limit $t s): $*"
  local s=$(date +%s); timeout "$t" "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - s )) s" | tee -a "$LOGS/summary.txt"; tail -n 8 "$LOGS/$name.log"
}

# 1. every notebook, 8 at a time, each in its own process with its own limit
notebooks=$(ls nbs/*.ipynb | grep -v 'nbs/index.ipynb')
nb_limit=$(( $(left) < 240 ? $(left) : 240 ))
s=$(date +%s)
echo "$notebooks" | xargs -P 8 -I{} sh -c 'n=$(basename {} .ipynb); timeout '"$nb_limit"' python tests/nbcells.py --flags cuda --json "'"$LOGS"'/notebooks/$n.json" {} > "'"$LOGS"'/notebooks/$n.log" 2>&1; true'
echo "notebooks: $(ls "$LOGS"/notebooks/*.json 2>/dev/null | wc -l) finished of $(echo "$notebooks" | wc -l) after $(( $(date +%s) - s )) s" | tee -a "$LOGS/summary.txt"

# 2. every method and command for a few steps, on the GPU, in the recipes' precision
step train 200 python tests/smoke.py --precision --timeout 120 --json "$LOGS/train.json" --out "$LOGS/smoke_runs"
rm -rf "$LOGS/smoke_runs"

# 3. the GPU pytest tests and #| cuda-only checks of the library
step pytest_gpu 60 python -m pytest -q -p no:cacheprovider tests/test_eval_dense.py tests/test_propagation.py tests/test_train.py -k "cuda"

# 4. paper recipes with the time left
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
step paper_images 120 python -m self_sup.bench paper --methods rotnet simclr moco_v2 moco_v3 swav dino --steps "$steps" \
  --warmup 10 --workers "$workers" --out-dir "$LOGS/paper" ${IMAGENET:+--data-path "$IMAGENET"}
step paper_video 90 python -m self_sup.bench paper --methods dora timetuning --steps "$(( steps / 2 ))" --warmup 10 --workers "$workers" \
  --out-dir "$LOGS/paper" ${DORA_VIDEO:+--dora-video "$DORA_VIDEO"} ${TIMETUNING_VIDEO:+--timetuning-video "$TIMETUNING_VIDEO"}
step distill_paper 60 python -m self_sup.bench distill --paper --steps 300 --workers "$workers" --out "$LOGS/distill_paper.json"

python - "$LOGS" "$RESULTS" "$commit" <<'EOF'
import json, sys, time
from pathlib import Path
logs, results, commit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
notebooks = {}
for nb in sorted(Path('nbs').glob('*.ipynb')):
    if nb.name == 'index.ipynb': continue
    j, log = logs / 'notebooks' / f'{nb.stem}.json', logs / 'notebooks' / f'{nb.stem}.log'
    if j.is_file(): notebooks[f'nbs/{nb.name}'] = next(iter(json.loads(j.read_text()).values()))
    else: notebooks[f'nbs/{nb.name}'] = 'failed: did not finish (timed out or crashed)' + (
        f"; last line: {log.read_text().strip().splitlines()[-1][:200]}" if log.is_file() and log.read_text().strip() else '')
sys.path.insert(0, 'tests')
from smoke import SMOKE
train_file = logs / 'train.json'
train = json.loads(train_file.read_text()) if train_file.is_file() else {}
train = {name: train.get(name, 'failed: not run (no time left, or tests/smoke.py crashed)') for name in SMOKE}
summary = dict(notebooks=notebooks, train=train, machine=(logs / 'machine.txt').read_text().strip().splitlines(),
               commit=commit, date=time.strftime('%Y-%m-%d'))
(results / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
bad = [k for k, v in {**notebooks, **train}.items() if v != 'passed']
line = f"summary: {len(notebooks) + len(train) - len(bad)} passed, {len(bad)} failed" + (f": {', '.join(bad)}" if bad else '')
print(line); open(logs / 'summary.txt', 'a').write(line + '\n')
EOF
cp "$LOGS/summary.txt" "$LOGS/machine.txt" "$RESULTS/"
tar czf "$RESULTS/gpu_results.tgz" -C "$(dirname "$LOGS")" gpu_results && rm -rf "$LOGS"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$RESULTS"/summary.json "$RESULTS"/summary.txt "$RESULTS"/machine.txt "$RESULTS"/gpu_results.tgz "$OUT/"; fi
cat "$RESULTS/summary.txt"
