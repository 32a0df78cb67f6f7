"""self_sup.core: a checkpoint write killed with SIGKILL, the leftovers it leaves, and the progress bar in a terminal and a kernel."""
import hashlib, os, signal, subprocess, sys, textwrap, time

import pytest
import torch

from self_sup.core import load_checkpoint, progress, save_checkpoint, stale_temporaries

# A writer of a checkpoint of 20,000 small tensors (26 MB): torch.save writes one record per tensor, so the file
# grows for a good part of a second and the kill lands while it is being written.
WRITER = textwrap.dedent("""
    import sys, torch
    from self_sup.core import save_checkpoint
    big = {'step': 2, 'weights': [torch.full((256,), float(i)) for i in range(20_000)]}
    print('ready', flush=True)
    save_checkpoint(big, sys.argv[1])
    print('finished', flush=True)
""")
FULL_SIZE = 20_000 * 1024      # the tensors' bytes alone, a lower bound of the finished file's size


def _temporaries(path):
    return [p for p in path.parent.iterdir() if p.name.startswith(f'.{path.name}.') and p.name.endswith('.tmp')]


def _kill_mid_write(path):
    "Start WRITER over `path`, SIGKILL it once its temporary file holds data; (temporary file, its size) or None if it finished first."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            for tmp in _temporaries(path):
                try: size = tmp.stat().st_size
                except FileNotFoundError: continue
                if size > 0:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()                     # reaped: the pid is gone, not a zombie
                    return tmp, size
            time.sleep(0.001)
        return None
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()


def _digest(path): return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_survives_a_writer_killed_mid_write(tmp_path):
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'step': 1, 'w': torch.arange(5.)}, path)
    good = _digest(path)
    for attempt in range(3):                    # the kill must land while the file is being written
        killed = _kill_mid_write(path)
        assert _digest(path) == good            # whatever happened, the good checkpoint is untouched
        if killed is not None and killed[0].exists() and killed[0].stat().st_size < FULL_SIZE: break
        for tmp in _temporaries(path): tmp.unlink()
    else:
        pytest.fail('the writer was never killed in the middle of its write (it finished first three times)')
    tmp, _ = killed
    state = load_checkpoint(path)
    assert state['step'] == 1 and torch.equal(state['w'], torch.arange(5.))
    with pytest.raises(ValueError, match='could not be read'):
        load_checkpoint(tmp)                    # what was left is half a checkpoint ...
    assert stale_temporaries(path) == [tmp]     # ... of a dead writer, so it is stale at once
    save_checkpoint({'step': 3}, path)          # the next save removes it
    assert _temporaries(path) == [] and load_checkpoint(path)['step'] == 3


def test_temporary_file_of_a_live_writer_is_kept(tmp_path):
    from self_sup.core import _machine_tag
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'step': 1}, path)
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        live = tmp_path / f'.ckpt.pt.{sleeper.pid}-{_machine_tag()}.abcd1234.tmp'
        live.write_bytes(b'still being written')
        save_checkpoint({'step': 2}, path)
        assert live.exists()                    # its writer runs and wrote a moment ago: never touched
        old = time.time() - 2 * 3600
        os.utime(live, (old, old))
        save_checkpoint({'step': 3}, path, stale_after=3 * 3600)
        assert live.exists()
        save_checkpoint({'step': 4}, path)      # not modified for two hours: presumed dead (or its pid reused)
        assert not live.exists()
    finally:
        sleeper.kill(); sleeper.wait()
    dead = tmp_path / f'.ckpt.pt.{sleeper.pid}-{_machine_tag()}.abcd1234.tmp'
    dead.write_bytes(b'left behind')
    save_checkpoint({'step': 5}, path)          # the same name once its writer is gone: removed at once
    assert not dead.exists()


# ---------------------------------------------------------------- progress
def _drive(bar):
    for i in bar: bar.set_postfix(loss=0.25)
    bar.close()


def test_progress_renders_in_a_terminal(capsys):
    bar = progress(range(7), desc='epochs', disable=False)
    assert type(bar).__module__.startswith('tqdm') and not bar.disable
    _drive(bar)
    err = capsys.readouterr().err
    assert 'epochs' in err and '7/7' in err and 'loss=0.25' in err


@pytest.mark.parametrize('env, shown', [({'SELF_SUP_PROGRESS': '1', 'RANK': '0'}, True), ({'SELF_SUP_PROGRESS': '0', 'RANK': '0'}, False),
                                        ({'SELF_SUP_PROGRESS': '1', 'RANK': '1'}, False), ({'SELF_SUP_PROGRESS': '1', 'RANK': '3'}, False)])
def test_progress_follows_self_sup_progress_and_rank(monkeypatch, capsys, env, shown):
    for k, v in env.items(): monkeypatch.setenv(k, v)
    bar = progress(range(4), desc='steps')
    assert bar.disable == (not shown)
    _drive(bar)
    err = capsys.readouterr().err
    assert ('steps' in err and '4/4' in err) == shown
    if not shown: assert err == ''


def test_progress_disable_false_overrides_the_environment(monkeypatch, capsys):
    monkeypatch.setenv('SELF_SUP_PROGRESS', '0'); monkeypatch.setenv('RANK', '2')
    _drive(progress(range(3), desc='forced', disable=False))
    assert 'forced' in capsys.readouterr().err


def test_progress_is_a_widget_in_a_jupyter_kernel_and_text_in_a_program():
    code = 'import tqdm.notebook; from self_sup.core import progress; print(isinstance(progress(range(3), disable=True), tqdm.notebook.tqdm))'
    program = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert program.stdout.strip() == 'False'
    jupyter_client = pytest.importorskip('jupyter_client')
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name='python3', startup_timeout=60)
    outputs = []
    try:
        kc.execute_interactive(code, timeout=60, output_hook=outputs.append)
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
    printed = ''.join(m['content'].get('text', '') for m in outputs if m['msg_type'] == 'stream')
    assert printed.strip() == 'True', outputs
