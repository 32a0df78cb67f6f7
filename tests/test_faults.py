"""Faults and bad input (issue 18): checkpoints only from finite state, SIGTERM/SIGUSR1 stop like Ctrl-C, one run per
folder, changed settings on resume are named, signal handlers are put back, damaged metrics files are named."""
import json, os, shutil, signal, subprocess, sys, time, warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from self_sup.cli import main
from self_sup.core import FolderInUse, FolderLock
from self_sup.train import Trainer, TrainConfig, read_metrics

ENV = {**os.environ, 'SELF_SUP_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
SELF_SUP = shutil.which('self_sup') or str(Path(sys.executable).parent / 'self_sup')
BASE = TrainConfig(epochs=3, batch_size=8, optimizer='sgd', lr=0.05, warmup_epochs=0, clip_grad=None, weight_decay=0,
                   final_weight_decay=None)


class Data(torch.utils.data.Dataset):
    def __init__(self): self.x = torch.randn(48, 6, generator=torch.Generator().manual_seed(0))
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.x[i].flip(0)


class Regress(nn.Module):
    "Maps each vector to its reverse; after the update of step `blow_at`, the weights are multiplied by `factor`."
    def __init__(self, blow_at=None, factor=1e30):
        super().__init__(); torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 6))
        self.blow_at, self.factor = blow_at, factor
    def forward(self, batch):
        x, y = batch
        return dict(loss=(self.net(x) - y).pow(2).mean())
    def on_after_optimizer_step(self, trainer):
        if trainer.step == self.blow_at:
            with torch.no_grad():
                for p in self.parameters(): p.mul_(self.factor)


def _fit(method, cfg, callbacks=()):
    trainer = Trainer(method, Data(), cfg, callbacks=callbacks)
    return trainer, trainer.fit()


# ---------------------------------------------------------------- 1. a checkpoint that resumes
def test_checkpoint_whose_weights_diverge_is_set_aside_and_the_one_before_resumes(tmp_path):
    # the update of step 5 makes the weights huge but finite: step 6's checkpoint is finite, its loss is not
    cfg = replace(BASE, out_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(FloatingPointError) as e: _fit(Regress(blow_at=5), cfg)
    msg = str(e.value)
    assert ('loss is inf at step 6' in msg or 'loss is nan at step 6' in msg) and 'the checkpoint of step 6 holds the weights that gave it' in msg, msg
    assert f"the last good checkpoint is {str(tmp_path / 'checkpoint.pt')!r} (step 5)" in msg, msg
    assert torch.load(tmp_path / 'checkpoint.pt', weights_only=False)['step'] == 5
    assert torch.load(tmp_path / 'checkpoint.diverged.pt', weights_only=False)['step'] == 6
    trainer, out = _fit(Regress(), replace(cfg, resume='auto'))        # the named checkpoint resumes, to the end
    assert trainer.step == 18 and torch.isfinite(torch.tensor(read_metrics(tmp_path / 'metrics.csv')['loss'])).all()
    assert not (tmp_path / 'checkpoint.previous.pt').exists()          # kept only while the newest is unchecked


def test_non_finite_weights_write_no_checkpoint(tmp_path):
    cfg = replace(BASE, out_dir=str(tmp_path), checkpoint_every=3)
    with pytest.raises(FloatingPointError) as e: _fit(Regress(blow_at=5, factor=float('nan')), cfg)
    msg = str(e.value)
    assert "method['net.0.weight'] is not finite after step 6: no checkpoint written" in msg, msg
    assert f"the last good checkpoint is {str(tmp_path / 'checkpoint.pt')!r} (step 3)" in msg, msg
    assert torch.load(tmp_path / 'checkpoint.pt', weights_only=False)['step'] == 3


def test_the_issue_command_names_no_poisoned_checkpoint(tmp_path, monkeypatch):
    # issue 18: with lr 1e30 the weights after step 0 reach 1e29 and step 1's loss is NaN; the checkpoint of step 1
    # used to be named as the last good one, and resuming it with a sane lr was NaN again
    args = [SELF_SUP, 'train', 'rotnet', '--preset', 'cpu', '--device', 'cpu', '--checkpoint-every', '1', '--out-dir', 'o/nan']
    r = subprocess.run(args + ['--lr', '1e30', '--max-steps', '30'], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and 'loss is nan at step 1' in r.stderr, r.stderr[-2000:]
    assert 'no checkpoint that resumes was written' in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / 'o/nan/checkpoint.pt').exists()
    monkeypatch.chdir(tmp_path)
    main(args[1:] + ['--lr', '0.001', '--max-steps', '3', '--resume', 'auto'])     # in this process: no second start-up
    m = read_metrics(tmp_path / 'o/nan/metrics.csv')
    assert m['step'].tolist() == [0, 1, 2] and torch.isfinite(torch.tensor(m['loss'])).all()


# ---------------------------------------------------------------- 2 and 9. signals
@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGUSR1', 'SIGINT'])
def test_stop_signals_checkpoint_after_the_step_and_put_the_handlers_back(tmp_path, signame):
    num = getattr(signal, signame)
    mine = lambda *a: None
    before = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, mine), (signal.SIGUSR1, signal.SIG_DFL))}
    try:
        def send(t):
            if t.step == 4: os.kill(os.getpid(), num)
        trainer = Trainer(Regress(), Data(), replace(BASE, out_dir=str(tmp_path), checkpoint_every=100), callbacks=[send])
        with pytest.raises(KeyboardInterrupt): trainer.fit()
        assert trainer.step == 4 and torch.load(tmp_path / 'checkpoint.pt', weights_only=False)['step'] == 4
        # the handlers that were there before, whatever they were (an ignore, a function, the default)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    finally:
        for s, h in before.items(): signal.signal(s, h)


def _rows(path):
    try: return len(path.read_text().splitlines()) - 1
    except FileNotFoundError: return 0


def test_cli_sigterm_checkpoints_and_a_second_run_on_the_folder_is_refused(tmp_path, monkeypatch, capsys):
    args = [SELF_SUP, 'train', 'rotnet', '--preset', 'cpu', '--device', 'cpu', '--batch-size', '16', '--num-workers', '0',
            '--checkpoint-every', '1000', '--out-dir', 'run']
    first = subprocess.Popen(args + ['--max-steps', '10000'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while _rows(tmp_path / 'run/metrics.csv') < 3 and time.time() < deadline and first.poll() is None: time.sleep(0.1)
        assert first.poll() is None, first.communicate()
        # 3. the same folder, --resume auto: refused while the first run lives, naming the folder and its pid
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as e: main(args[1:] + ['--max-steps', '5', '--resume', 'auto'])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"'run' is in use by another run (pid {first.pid} on " in err, err
        first.send_signal(signal.SIGTERM)       # 2. what kill, timeout and Kubernetes send
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None: first.kill()
    assert first.returncode != 0
    step = torch.load(tmp_path / 'run/checkpoint.pt', weights_only=False)['step']
    assert step == _rows(tmp_path / 'run/metrics.csv') and step >= 3                  # nothing lost
    assert f'interrupted by SIGTERM after step {step}' in out and '--resume auto' in out, out[-2000:]
    assert not (tmp_path / 'run/.lock').exists()
    main(args[1:] + ['--max-steps', str(step + 2), '--resume', 'auto'])
    assert read_metrics(tmp_path / 'run/metrics.csv')['step'].tolist() == list(range(step + 2))


def test_a_locked_folder_is_refused_before_anything_is_read_or_written(tmp_path):
    _fit(Regress(), replace(BASE, out_dir=str(tmp_path), max_steps=2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with FolderLock(tmp_path):
        with pytest.raises(FolderInUse, match=f"is in use by another run \\(pid {os.getpid()} on "):
            _fit(Regress(), replace(BASE, out_dir=str(tmp_path), resume='auto'))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- 7. changed settings on resume
def test_resume_with_changed_settings_warns_and_keeps_both(tmp_path):
    cfg = replace(BASE, out_dir=str(tmp_path), max_steps=3)
    _fit(Regress(), cfg)
    with pytest.warns(UserWarning, match=r"changed settings: lr 0.05 -> 0.5, seed 0 -> 7 \(the checkpoint's settings stay in"):
        _fit(Regress(), replace(cfg, resume='auto', seed=7, lr=0.5, max_steps=4))
    assert json.loads((tmp_path / 'config.json').read_text())['lr'] == 0.5
    history = [json.loads(line) for line in (tmp_path / 'config_history.jsonl').read_text().splitlines()]
    assert history[0]['step'] == 3 and history[0]['previous']['lr'] == 0.05 and history[0]['changes']['seed'] == [0, 7]
    with warnings.catch_warnings():
        warnings.simplefilter('error')          # same settings (only how far to run): no warning
        _fit(Regress(), replace(cfg, resume='auto', seed=7, lr=0.5, max_steps=5))


# ---------------------------------------------------------------- 10. damaged metrics files
def test_resume_names_a_damaged_metrics_file_and_drops_a_cut_last_row(tmp_path):
    cfg = replace(BASE, out_dir=str(tmp_path), max_steps=3)
    _fit(Regress(), cfg)
    metrics = tmp_path / 'metrics.csv'
    text = metrics.read_text()
    metrics.write_text(text + '3,0,0.05')           # a row cut short: the run was killed while writing it
    assert read_metrics(metrics)['step'].tolist() == [0, 1, 2]
    _fit(Regress(), replace(cfg, resume='auto', max_steps=4))
    assert read_metrics(metrics)['step'].tolist() == [0, 1, 2, 3]
    metrics.write_bytes(text.encode() + b'\x00\xff\xfegarbage\n')
    with pytest.raises(ValueError, match=f"metrics file {str(metrics)!r} is damaged"):
        _fit(Regress(), replace(cfg, resume='auto', max_steps=5))


def test_checkpoint_write_failure_is_one_clear_error_and_keeps_the_previous(tmp_path, monkeypatch):
    "Disk full (torch's zip writer: 'enforce fail ... unexpected pos') while writing: a CheckpointWriteError, the old file intact."
    import torch
    from self_sup.core import CheckpointWriteError, save_checkpoint
    path = save_checkpoint({'w': torch.ones(3)}, tmp_path / 'checkpoint.pt')
    before = path.read_bytes()
    def full(obj, f): f.write(b'PK'); raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448')
    monkeypatch.setattr(torch, 'save', full)
    with pytest.raises(CheckpointWriteError, match=r"could not write the checkpoint .*unexpected pos.*MiB free.*previous checkpoint there is intact"):
        save_checkpoint({'w': torch.zeros(3)}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob('.*tmp'))


@pytest.mark.parametrize('args, message', [
    (['--out-dir', '{file}/run'], "argument --out-dir: out_dir '{file}/run' cannot be a folder: '{file}' is a file"),
    (['--seed', str(10**23)], 'argument --seed: seed must be an integer in [0, 2**63 - 1]'),
    (['--image-size', '100000'], 'argument --image-size: image_size must be at most 8192 pixels, got 100000: one float32 RGB image of that side needs 111.8 GiB'),
])
def test_bad_run_values_are_one_line_errors(args, message, tmp_path, capsys):
    from self_sup.cli import main
    f = tmp_path / 'a_file'; f.write_text('x')
    args = [a.replace('{file}', str(f)) for a in args]
    with pytest.raises(SystemExit) as e: main(['train', 'simclr', '--preset', 'cpu', '--max-steps', '1', *args])
    assert e.value.code == 2
    assert message.replace('{file}', str(f)) in capsys.readouterr().err
