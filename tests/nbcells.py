"""Run notebooks' code cells in order as `nbdev_test` does, on a machine without nbdev (the GPU machine).

Cells marked `#| eval: false` are skipped, and so are cells whose flags (`#| slow`, `#| cuda`) are not among
`--flags`. `from nbdev.showdoc import show_doc` works without nbdev (a stub that shows nothing), so a GPU
machine needs only the kit's own requirements plus fastcore for `fastcore.test`.
Usage: python tests/nbcells.py [--flags cuda] [--flags slow] [--device-guard] nbs/X.ipynb [...]; exits 1 if any notebook fails."""
import __future__, argparse, json, linecache, os, sys, time, traceback, types
from pathlib import Path

FLAGS = ('slow', 'cuda')


def directives(source: str) -> list[str]:
    "The `#| ...` directives of a cell, spaces removed."
    return [l[2:].replace(' ', '') for l in source.splitlines() if l.startswith('#|')]


def runnable(source: str, flags: set[str]) -> bool:
    "Whether nbdev_test with `flags` runs this cell."
    d = directives(source)
    if 'eval:false' in d: return False
    return {f for f in FLAGS if f in d} <= flags


def ensure_showdoc():
    "A stand-in `nbdev.showdoc.show_doc` when nbdev is not installed."
    try: import nbdev.showdoc  # noqa: F401
    except ImportError:
        nbdev, showdoc = types.ModuleType('nbdev'), types.ModuleType('nbdev.showdoc')
        showdoc.show_doc = lambda *a, **k: None
        nbdev.showdoc = showdoc
        sys.modules.update({'nbdev': nbdev, 'nbdev.showdoc': showdoc})


def run_notebook(path: Path, flags: set[str], device_guard: bool = False) -> bool | str:
    "Run `path`'s cells in one namespace from its own folder; True when every cell ran, else the error's first line."
    if device_guard:   # every cell under tests/device_guard.py's DeviceGuard (the package watched)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from device_guard import DeviceGuard, THE_DEVICE
        os.environ['SELF_SUP_DEVICE'] = str(THE_DEVICE)   # the trainer and the demos default to "the GPU"
        with DeviceGuard(): return run_notebook(path, flags)
    cells = [''.join(c['source']) for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'code']
    # the cells run in a fresh module that stands in as __main__, as in a kernel (type hints resolve there)
    main, module = sys.modules['__main__'], types.ModuleType('__main__')
    ns, cwd, start, future = module.__dict__, os.getcwd(), time.time(), 0
    os.chdir(path.parent); sys.modules['__main__'] = module
    try:
        for i, src in enumerate(cells):
            if not runnable(src, flags): continue
            code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
            # a kernel keeps `from __future__ import annotations` for later cells; exec needs the flag passed on
            if 'from __future__ import annotations' in code: future = __future__.annotations.compiler_flag
            name = f'<{path.name} code cell {i}>'  # source kept where inspect finds it, as IPython does
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
            try: exec(compile(code, name, 'exec', flags=future, dont_inherit=True), ns)
            except Exception as e:
                print(f'FAIL {path.name}, code cell {i}:\n{src}\n'); traceback.print_exc()
                return f"code cell {i}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    finally: os.chdir(cwd); sys.modules['__main__'] = main
    print(f'ok {path.name} ({time.time() - start:.1f} s)', flush=True)
    return True


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flags", action="append", default=[], choices=FLAGS, help="run cells with this flag (repeatable)")
    p.add_argument("--device-guard", action="store_true", help="run under DeviceGuard: fail where a GPU would see two devices")
    p.add_argument("--json", type=Path, default=None, help='write {"nbs/NAME.ipynb": "passed" or "failed: <first error line>"} here')
    p.add_argument('notebooks', nargs='+', type=Path)
    a = p.parse_args()
    ensure_showdoc()
    ok = {str(nb): run_notebook(nb.resolve(), set(a.flags), a.device_guard) for nb in a.notebooks}
    if a.json: a.json.write_text(json.dumps({k: 'passed' if v is True else f'failed: {v}' for k, v in ok.items()}, indent=1) + '\n')
    sys.exit(0 if all(v is True for v in ok.values()) else 1)
