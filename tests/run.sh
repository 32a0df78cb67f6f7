#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: every notebook under nbdev_test (cells flagged
# `#| slow` or `#| cuda` are skipped unless you pass --flags), then pytest on tests/.
# Usage: bash tests/run.sh [extra nbdev_test flags, e.g. --flags slow]
set -uo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=${MPLBACKEND:-Agg} SELF_SUP_PROGRESS=${SELF_SUP_PROGRESS:-0}
# Notebooks run two at a time on CI's 2 cores: one BLAS/OpenMP thread each keeps them from fighting over
# the cores (small matrix products get ~10x slower when threads oversubscribe).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
status=0
# The docs and JupyterLab tests drive the system's Chromium (Playwright's own browser download is not used).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium for the browser tests (apt-get)"
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "apt-get could not install chromium"
  else
    echo "chromium is missing and cannot be installed from here: the docs and JupyterLab tests will fail;" \
         "install it (Debian/Ubuntu: sudo apt-get install chromium) and rerun"
  fi
fi
echo "== nbdev_test (notebooks)"
nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing "$@" || status=1
echo "== pytest tests/"
python -m pytest tests/ -q -p no:cacheprovider || status=1
exit $status
