#!/usr/bin/env bash
# Every GPU check in one go, for a GPU machine lent for minutes: the GPU pytest tests, the `#| cuda` notebook
# cells, and each method's paper recipe (`python -m self_sup.bench paper`) and the distillation recipe
# (`python -m self_sup.bench distill --paper`). Steps run in order of importance under one time budget, each
# with its own limit. $OUT (default results/gpu) receives summary.txt and gpu_results.tgz (every log and JSON: one
# archive, because a lent machine returns only a few files).
# Usage: bash tests/gpu.sh [WHEELS]   WHEELS: a folder of wheels for packages the machine lacks (installed offline)
# Env: GPU_BUDGET_S (default 540), PAPER_STEPS (200), DORA_VIDEO / TIMETUNING_VIDEO (default: generated stand-ins),
#      IMAGENET (default: generated stand-in photos)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}; mkdir -p "$OUT"
RESULTS=$OUT; OUT=$(mktemp -d)/gpu_results; mkdir -p "$OUT"    # logs and JSON here, archived at the end
deadline=$(( $(date +%s) + ${GPU_BUDGET_S:-540} ))
steps=${PAPER_STEPS:-200}
step() {  # step NAME LIMIT_S COMMAND...: run it with the smaller of its limit and the time left
  local name=$1 cap=$2; shift 2
  local left=$(( deadline - $(date +%s) )); local t=$(( left < cap ? left : cap ))
  if [ "$t" -lt 10 ]; then echo "$name: skipped, no time left" | tee -a "$OUT/summary.txt"; return; fi
  echo "== $name (limit $t s): $*"
  local s=$(date +%s); timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - s )) s" | tee -a "$OUT/summary.txt"; tail -n 8 "$OUT/$name.log"
}
if [ -n "${1:-}" ]; then
  python -m pip install -q --no-index --no-deps "$1"/*.whl 2>&1 | tail -n 3 || python -m pip install -q --no-index --no-deps --break-system-packages "$1"/*.whl
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MPLBACKEND=Agg SELF_SUP_PROGRESS=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
step pytest_gpu 90 python -m pytest -q -p no:cacheprovider tests/test_eval_dense.py tests/test_propagation.py tests/test_train.py -k "cuda"
step notebooks_cuda 120 python tests/nbcells.py --flags cuda nbs/03_augment.ipynb nbs/05_models.ipynb nbs/06_train.ipynb
step paper_dora 150 python -m self_sup.bench paper --methods dora --steps "$steps" --warmup 10 --workers "$workers" \
  --out-dir "$OUT/paper" ${DORA_VIDEO:+--dora-video "$DORA_VIDEO"}
step paper_timetuning 150 python -m self_sup.bench paper --methods timetuning --steps "$(( steps / 2 ))" --warmup 10 --workers "$workers" \
  --out-dir "$OUT/paper" ${TIMETUNING_VIDEO:+--timetuning-video "$TIMETUNING_VIDEO"}
step paper_images 240 python -m self_sup.bench paper --methods rotnet simclr moco_v2 moco_v3 swav dino --steps "$(( steps / 2 ))" \
  --warmup 10 --workers "$workers" --out-dir "$OUT/paper" ${IMAGENET:+--data-path "$IMAGENET"}
step distill_paper 90 python -m self_sup.bench distill --paper --steps 300 --workers "$workers" --out "$OUT/distill_paper.json"
cp "$OUT/summary.txt" "$OUT/machine.txt" "$RESULTS/"
tar czf "$RESULTS/gpu_results.tgz" -C "$(dirname "$OUT")" gpu_results && rm -rf "$OUT"
cat "$RESULTS/summary.txt"
