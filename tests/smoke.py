"""Every method and command of the kit for a few steps, on built-in data: the table that `tests/gpu.sh` runs on a GPU
and `tests/test_device_guard.py` runs on the CPU under `DeviceGuard`.

Usage: python tests/smoke.py [--device DEVICE] [--guard] [--json FILE] [--out DIR] [NAME ...]
Each command runs in its own process (`--one NAME` runs one in this process); the result of each is "passed" or
"failed: <first error line>", printed and, with --json, written as {NAME: result}. Exits 1 if any failed."""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path

STEPS = ['--max-steps', '2', '--num-workers', '0', '--log-every', '1']
# name: (self_sup arguments, the paper recipe's precision: a GPU run uses it); {out} is the run's own folder
SMOKE: dict[str, tuple[list[str], str]] = {
    'rotnet': (['train', 'rotnet', '--preset', 'cpu', '--batch-size', '16', *STEPS], '32'),
    'simclr': (['train', 'simclr', '--preset', 'cpu', '--batch-size', '16', *STEPS], 'bf16'),
    'moco_v2': (['train', 'moco', '--version', 'v2', '--preset', 'cpu', '--batch-size', '16', '--queue-size', '64', *STEPS], 'bf16'),
    'moco_v3': (['train', 'moco', '--version', 'v3', '--preset', 'cpu', '--batch-size', '16', *STEPS], 'bf16'),
    'swav': (['train', 'swav', '--preset', 'cpu', '--batch-size', '16', '--queue-length', '0', *STEPS], 'bf16'),
    'dino': (['train', 'dino', '--preset', 'cpu', '--batch-size', '16', *STEPS], 'bf16'),
    'dora': (['train', 'dora', '--preset', 'cpu', '--batch-size', '2', '--cache-dir', '{out}/cache', *STEPS], 'bf16'),
    'timetuning': (['train', 'timetuning', '--preset', 'cpu', '--batch-size', '2', '--cache-dir', '{out}/cache', *STEPS], 'bf16'),
    'distill': (['distill', '--teacher-epochs', '1', '--steps', '3', '--eval-every', '3', '--batch-size', '16', '--widths', '8', '16'], None),
    'demo': (['demo', '--teacher-epochs', '1', '--steps', '3', '--batch-size', '16'], None),
    'eval_knn': (['eval', 'knn', '--backbone', 'small_cnn', '--data', 'digits', '--ks', '20'], None),
    'eval_linear': (['eval', 'linear', '--backbone', 'small_cnn', '--data', 'digits', '--epochs', '2'], None),
    'eval_dense': (['eval', 'dense', '--backbone', 'vit_tiny_patch16', '--patch-size', '8', '--depth', '2'], None),
    'eval_davis': (['eval', 'davis', '--backbone', 'vit_tiny_patch16', '--patch-size', '8', '--depth', '2', '--radius', '4'], None),
}
OUT_OPTION = {'distill': '--out-dir', 'demo': '--out-dir'}


def argv(name: str, out: str | Path, device: str | None = None, precision: bool = False) -> list[str]:
    "The `self_sup` arguments of smoke run `name`, writing under `out`, on `device`, in the recipe's precision if asked."
    args, prec = SMOKE[name]
    args = [a.replace('{out}', str(out)) for a in args]
    if args[0] == 'train' or name in OUT_OPTION: args += ['--out-dir', str(out)]
    if device is not None: args += ['--device', device]
    if precision and prec is not None: args += ['--precision', prec]
    return args


def run_one(name: str, out: str | Path, device: str | None = None, precision: bool = False, guard: bool = False) -> None:
    "Run smoke command `name` in this process (under `DeviceGuard` if `guard`)."
    from self_sup.cli import main
    args = argv(name, out, device, precision)
    if not guard: return main(args)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from device_guard import DeviceGuard
    with DeviceGuard(): return main(args)


def first_error(text: str) -> str:
    "The last line that names an exception in `text` (its first line when there is none)."
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    errors = [l for l in lines if 'Error' in l or 'Exception' in l or 'error:' in l or 'Mismatch' in l]
    return (errors or lines or ['no output'])[-1][:300]


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('names', nargs='*', help=f"smoke runs (default: all): {', '.join(SMOKE)}")
    p.add_argument('--device', default=None, help="--device of every command (default: the kit's choice, a GPU if any)")
    p.add_argument('--precision', action='store_true', help="train in each paper recipe's precision (bf16 where it says so)")
    p.add_argument('--guard', action='store_true', help='run under tests/device_guard.py (use --device cpu:0)')
    p.add_argument('--json', type=Path, default=None, help='write {name: result} here')
    p.add_argument('--out', type=Path, default=None, help='folder for the runs (default: a temporary one)')
    p.add_argument('--timeout', type=float, default=300, help='seconds each command may take')
    p.add_argument('--one', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix='self_sup_smoke_'))
    if a.one:
        run_one(a.one, out / a.one, a.device, a.precision, a.guard); sys.exit(0)
    unknown = [n for n in a.names if n not in SMOKE]
    if unknown: p.error(f"unknown smoke runs {unknown}; choose from {list(SMOKE)}")
    results = {}
    for name in a.names or list(SMOKE):
        cmd = [sys.executable, __file__, '--one', name, '--out', str(out)] + (['--device', a.device] if a.device else []) \
            + (['--precision'] if a.precision else []) + (['--guard'] if a.guard else [])
        start = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env={**os.environ, 'SELF_SUP_PROGRESS': '0'})
            results[name] = 'passed' if r.returncode == 0 else f'failed: {first_error(r.stdout + r.stderr)}'
            if r.returncode: print(r.stdout[-2000:], r.stderr[-4000:], sep='\n')
        except subprocess.TimeoutExpired: results[name] = f'failed: timed out after {a.timeout:.0f} s'
        print(f'{name}: {results[name]} ({time.time() - start:.1f} s)', flush=True)
    if a.json: a.json.parent.mkdir(parents=True, exist_ok=True); a.json.write_text(json.dumps(results, indent=1) + '\n')
    sys.exit(0 if all(v == 'passed' for v in results.values()) else 1)
