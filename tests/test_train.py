"""The trainer: bad inputs, exact resume after an interruption (with workers and random augmentations),
Ctrl-C, 2-process DDP runs equal to 1-process runs, and a real torchrun launch."""
import os, random, runpy, signal, subprocess, sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torch.utils.data import DataLoader, DistributedSampler

from self_sup.distributed import all_gather_with_grad, get_world_size
from self_sup.train import Trainer, TrainConfig, epoch_batches, read_metrics
from distributed_utils import JoinedProcessGroup, fake_gpu_torchrun, run_distributed


# ---------------------------------------------------------------- small methods and data
class Views(torch.utils.data.Dataset):
    "Two randomly augmented views of a fixed random vector (Python, NumPy and torch randomness)."
    def __init__(self, n=48, d=6):
        self.x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    def __len__(self): return len(self.x)
    def __getitem__(self, i):
        x = self.x[i]
        return (x + 0.3 * torch.randn_like(x) * random.random(),
                x + 0.3 * torch.from_numpy(np.random.randn(*x.shape)).float())


class Contrastive(nn.Module):
    "A tiny SimCLR-like method: InfoNCE between the two views over the global batch (all_gather with grad)."
    def __init__(self, d=6, dropout=0.0):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8))
        self.hooks = []

    def forward(self, batch):
        x1, x2 = batch
        z1 = all_gather_with_grad(nn.functional.normalize(self.net(x1), dim=1))
        z2 = all_gather_with_grad(nn.functional.normalize(self.net(x2), dim=1))
        logits = z1 @ z2.T / 0.5
        return dict(loss=nn.functional.cross_entropy(logits, torch.arange(len(z1))), batch=float(len(z1)))

    def on_step_start(self, trainer): self.hooks.append(('step_start', trainer.step))
    def on_after_optimizer_step(self, trainer): self.hooks.append(('after_opt', trainer.step))


class MeanLoss(Contrastive):
    "A loss that is a mean over the local batch (no gathering): DDP's gradient average makes it global."
    def forward(self, batch):
        x1, x2 = batch
        return dict(loss=(self.net(x1) - self.net(x2).detach()).pow(2).mean())


def _losses(method, data, cfg, stop_at=None):
    out = []
    def record(t):
        out.append(t.metrics['loss'])
        if stop_at is not None and t.step == stop_at: raise KeyboardInterrupt
    trainer = Trainer(method, data, cfg, callbacks=[record])
    try: trainer.fit()
    except KeyboardInterrupt:
        if stop_at is None: raise
    return out, trainer


BASE = TrainConfig(epochs=3, batch_size=8, optimizer='sgd', lr=0.5, warmup_epochs=0.5, weight_decay=1e-4,
                   final_weight_decay=1e-3, clip_grad=None)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize('kwargs, message', [
    (dict(batch_size=0), 'batch_size must be an integer >= 1, got 0'),
    (dict(batch_size=-4), 'batch_size'),
    (dict(lr=0.0), 'lr must be a positive number, got 0.0'),
    (dict(lr=-1.0), 'lr must be a positive number'),
    (dict(epochs=-1), 'epochs'),
    (dict(optimizer='rmsprop'), "optimizer must be one of ['adamw', 'sgd', 'lars'], got 'rmsprop'"),
    (dict(precision='fp8'), 'precision'),
    (dict(accumulate_steps=0), 'accumulate_steps'),
    (dict(clip_grad=0), 'clip_grad'),
    (dict(momentum=1.5), 'momentum'),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=None) as e: TrainConfig(**kwargs)
    assert message in str(e.value)


def test_bad_method_data_and_outputs():
    with pytest.raises(TypeError, match='nn.Module'): Trainer(lambda b: b, Views(), BASE)
    with pytest.raises(TypeError, match='map-style dataset'): Trainer(Contrastive(), iter([1, 2]), BASE)
    with pytest.raises(ValueError, match='fewer than one optimiser step'): Trainer(Contrastive(), Views(n=5), BASE)

    class NoLoss(Contrastive):
        def forward(self, batch): return {'acc': torch.tensor(1.0)}
    with pytest.raises(TypeError, match="must return a dict with a 'loss' entry, got keys \\['acc'\\]"):
        Trainer(NoLoss(), Views(), BASE).fit()

    class VectorLog(Contrastive):
        def forward(self, batch): return dict(super().forward(batch), z=torch.zeros(3))
    with pytest.raises(ValueError, match="'z' = Tensor of shape \\(3,\\): only scalars"):
        Trainer(VectorLog(), Views(), BASE).fit()

    frozen = Contrastive().requires_grad_(False)
    with pytest.raises(ValueError, match='no trainable parameters'): Trainer(frozen, Views(), BASE).fit()


def test_resume_from_missing_or_wrong_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        Trainer(Contrastive(), Views(), replace(BASE, resume=str(tmp_path / 'nope.pt'))).fit()
    with pytest.raises(ValueError, match="resume='auto' needs out_dir"):
        Trainer(Contrastive(), Views(), replace(BASE, resume='auto')).fit()
    (tmp_path / 'garbage.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='could not be read'):
        Trainer(Contrastive(), Views(), replace(BASE, resume=str(tmp_path / 'garbage.pt'))).fit()
    torch.save({'state_dict': {}}, tmp_path / 'weights.pt')
    with pytest.raises(ValueError, match="not a checkpoint written by self_sup.train.Trainer \\(it holds \\['state_dict'\\]\\)"):
        Trainer(Contrastive(), Views(), replace(BASE, resume=str(tmp_path / 'weights.pt'))).fit()

    cfg = replace(BASE, out_dir=str(tmp_path / 'run'), max_steps=2)
    Trainer(Contrastive(), Views(), cfg).fit()
    ckpt = str(tmp_path / 'run' / 'checkpoint.pt')

    class Wider(Contrastive):
        def __init__(self):
            super().__init__(); self.net[-1] = nn.Linear(16, 9)
    with pytest.raises(ValueError, match='does not fit Wider \\(written for Contrastive\\)'):
        Trainer(Wider(), Views(), replace(BASE, resume=ckpt)).fit()

    class Extra(Contrastive):
        def __init__(self):
            super().__init__(); self.head = nn.Linear(8, 2)
    with pytest.raises(ValueError, match="unexpected keys \\[\\]|missing keys \\['head.weight'"):
        Trainer(Extra(), Views(), replace(BASE, resume=ckpt)).fit()
    with pytest.raises(ValueError, match='written with 6 steps per epoch .* this run has 3'):
        Trainer(Contrastive(), Views(), replace(BASE, batch_size=16, resume=ckpt)).fit()
    # starting afresh over an existing run is refused rather than silently overwriting it
    with pytest.raises(FileExistsError, match="resume='auto'"):
        Trainer(Contrastive(), Views(), replace(cfg, max_steps=None)).fit()


# ---------------------------------------------------------------- clipping, divergence, the loader
class Steep(nn.Module):
    "A loss whose gradient norm is far above 1; records the gradients before clipping and what the optimiser used."
    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(6)), nn.Parameter(torch.zeros(3))
        self.before, self.after = [], []
    def forward(self, batch):
        x1, _ = batch
        return dict(loss=100 * (x1 @ self.w).pow(2).mean() + 50 * self.b.sum())
    def _grads(self): return torch.cat([p.grad.flatten() for p in self.parameters()]).clone()
    def on_before_optimizer_step(self, trainer): self.before.append(self._grads())
    def on_after_optimizer_step(self, trainer): self.after.append(self._grads())


def test_clip_grad_bounds_the_gradient_norm():
    cfg = replace(BASE, epochs=1, lr=1e-4, weight_decay=0.0, final_weight_decay=0.0)
    logged = []
    method = Steep()
    Trainer(method, Views(), replace(cfg, clip_grad=1.0), callbacks=[lambda t: logged.append(t.metrics['grad_norm'])]).fit()
    assert len(method.after) == 6
    for before, after, norm in zip(method.before, method.after, logged):
        assert before.norm() > 10                                    # the loss is steep ...
        assert after.norm() <= 1.0 + 1e-5                            # ... the optimiser saw a gradient of norm <= clip_grad
        torch.testing.assert_close(after, before / before.norm(), rtol=1e-5, atol=1e-7)   # same direction, scaled down
        assert norm == pytest.approx(before.norm().item(), rel=1e-5)                     # the logged norm is the unclipped one
    unclipped = Steep()
    Trainer(unclipped, Views(), replace(cfg, clip_grad=None)).fit()
    assert all(torch.equal(a, b) and a.norm() > 10 for a, b in zip(unclipped.before, unclipped.after))


class BlowsUp(Contrastive):
    "The loss of step 8 is multiplied by `factor` (inf or -inf)."
    def __init__(self, factor):
        super().__init__(); self.factor = factor
    def forward(self, batch):
        out = super().forward(batch)
        if self.step == 8: out['loss'] = out['loss'] * self.factor
        return out
    def on_step_start(self, trainer):
        self.step = trainer.step
        if trainer.step == 8: self.params_before = [p.detach().clone() for p in self.parameters()]


@pytest.mark.parametrize('factor', [float('inf'), float('-inf')])
def test_infinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, factor):
    method = BlowsUp(factor)
    cfg = replace(BASE, out_dir=str(tmp_path), checkpoint_every=5)
    with pytest.raises(FloatingPointError) as e: Trainer(method, Views(), cfg).fit()
    msg = str(e.value)
    assert f'loss is {factor} at step 8 (epoch 1)' in msg, msg
    assert f"the last good checkpoint is {str(tmp_path / 'checkpoint.pt')!r} (step 5)" in msg, msg
    assert torch.load(tmp_path / 'checkpoint.pt', weights_only=False)['step'] == 5
    for p, q in zip(method.parameters(), method.params_before): assert torch.equal(p.detach(), q)   # step 8 changed nothing
    assert read_metrics(tmp_path / 'metrics.csv')['step'].tolist() == list(range(8))


def test_loader_pins_memory_for_cuda_only_and_passes_num_workers():
    for workers in (0, 2):
        trainer = Trainer(Contrastive(), Views(), replace(BASE, num_workers=workers, device='cpu'))
        loader = trainer._loader()
        assert (loader.pin_memory, loader.num_workers) == (False, workers)
        assert (loader.worker_init_fn is None) == (workers == 0)
        trainer.device = torch.device('cuda', 0)    # what a GPU run holds; the loader is only built, never iterated
        loader = trainer._loader()
        assert (loader.pin_memory, loader.num_workers) == (True, workers)


def test_trainer_backend_follows_config_device(monkeypatch):
    calls = fake_gpu_torchrun(monkeypatch)      # rank 1 of 2 under torchrun on a machine with GPUs, group faked
    with pytest.raises(JoinedProcessGroup): Trainer(Contrastive(), Views(), replace(BASE, device='cpu'))
    assert calls == ['gloo']                         # a CPU run on a GPU machine: gloo, no GPU bound
    calls.clear()
    with pytest.raises(JoinedProcessGroup): Trainer(Contrastive(), Views(), replace(BASE, device=None))
    assert calls == [('set_device', 1), 'nccl']      # the default device there is the rank's GPU


# ---------------------------------------------------------------- the data order of each rank
def _distributed_sampler_batches(n, batch, world, drop_last, shuffle=False, seed=0, epoch=0):
    "Each rank's batches from DistributedSampler and a DataLoader that drops the incomplete last batch."
    out = []
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        out.append([b.tolist() for b in DataLoader(range(n), batch_size=batch, sampler=sampler, drop_last=True)])
    return out


@pytest.mark.parametrize('n, batch, world', [(50, 4, 2), (48, 8, 3), (37, 2, 4), (16, 8, 2), (9, 1, 2)])
def test_epoch_batches_shard_an_epoch_like_distributed_sampler(n, batch, world):
    seen_over_epochs = set()
    for epoch in range(12):
        one = epoch_batches(n, batch * world, epoch, seed=7)                         # one process, the global batch
        ranks = [epoch_batches(n, batch, epoch, seed=7, rank=r, world_size=world) for r in range(world)]
        assert all(r.shape == (len(one), batch) for r in ranks)                    # every rank runs the same steps
        for step in range(len(one)):
            # the ranks' shares of a step, in rank order (what all_gather returns), are the one-process batch
            np.testing.assert_array_equal(np.concatenate([r[step] for r in ranks]), one[step])
        taken = np.concatenate([r.ravel() for r in ranks])
        assert len(set(taken.tolist())) == len(taken)                               # ranks disjoint, nothing repeated
        seen_over_epochs |= set(taken.tolist())
    assert seen_over_epochs == set(range(n))       # what an epoch drops (< one global batch) differs from epoch to epoch

    # DistributedSampler(drop_last=True) with DataLoader(drop_last=True): as many steps, and in every step the same
    # samples (without shuffling both start from 0, 1, 2, ...); only their split over the ranks differs
    reference = _distributed_sampler_batches(n, batch, world, drop_last=True)
    ours = [epoch_batches(n, batch, 0, shuffle=False, rank=r, world_size=world) for r in range(world)]
    assert [len(b) for b in reference] == [len(o) for o in ours]
    for step in range(len(ours[0])):
        assert sorted(i for r in reference for i in r[step]) == sorted(np.concatenate([o[step] for o in ours]).tolist())
    # its default, drop_last=False, instead pads the epoch with repeated samples when n % world != 0
    padded = [i for r in range(world) for i in DistributedSampler(range(n), world, r, shuffle=False, drop_last=False)]
    assert len(padded) - len(set(padded)) == (-n) % world


# ---------------------------------------------------------------- exact resume
def test_interrupt_mid_epoch_then_resume_is_bit_exact(tmp_path):
    # random augmentations (random, numpy, torch) in the data, dropout in the method, AdamW and a warm-up;
    # the uninterrupted run loads in the main process, the interrupted one with 2 worker processes
    cfg = replace(BASE, optimizer='adamw', lr=1e-2, clip_grad=1.0, checkpoint_every=4)
    full, _ = _losses(Contrastive(dropout=0.2), Views(), replace(cfg, out_dir=str(tmp_path / 'full')))
    assert len(full) == 18 and len(set(full)) == 18

    cut = replace(cfg, out_dir=str(tmp_path / 'cut'), num_workers=2)
    first, trainer = _losses(Contrastive(dropout=0.2), Views(), cut, stop_at=9)   # step 9 of 18: mid epoch 1
    assert (trainer.step, trainer.epoch, trainer.step_in_epoch) == (9, 1, 3)
    assert torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=True)['step'] == 9  # Ctrl-C wrote it; tensors, numbers, strings only
    rest, _ = _losses(Contrastive(dropout=0.2), Views(), replace(cut, resume='auto'))
    assert first + rest == full                      # bit for bit
    assert list(read_metrics(tmp_path / 'cut' / 'metrics.csv')['loss']) == full


def test_checkpoint_of_an_older_version_resumes_bit_exact_with_a_note(tmp_path):
    # versions before 2 stored NumPy's random state as an array (torch.load(weights_only=True) refuses arrays by default)
    cfg = replace(BASE, optimizer='adamw', lr=1e-2, checkpoint_every=4)
    full, _ = _losses(Contrastive(), Views(), replace(cfg, out_dir=str(tmp_path / 'full')))
    cut = replace(cfg, out_dir=str(tmp_path / 'cut'))
    first, _ = _losses(Contrastive(), Views(), cut, stop_at=9)
    path = tmp_path / 'cut' / 'checkpoint.pt'
    ckpt = torch.load(path, weights_only=True)
    for state in ckpt['rng']:
        name, key, *rest = state['numpy']
        state['numpy'] = (name, key.numpy().astype(np.uint32), *rest)
    ckpt['version'] = 1
    torch.save(ckpt, path)
    with pytest.raises(Exception): torch.load(path, weights_only=True)
    with pytest.warns(UserWarning, match='older version of self_sup'):
        rest, _ = _losses(Contrastive(), Views(), replace(cut, resume='auto'))
    assert first + rest == full
    assert torch.load(path, weights_only=True)['version'] == 2   # the run's new checkpoint is the new format


def test_sigint_stops_after_the_step_with_a_checkpoint(tmp_path):
    cfg = replace(BASE, out_dir=str(tmp_path), checkpoint_every=100)
    full, _ = _losses(Contrastive(), Views(), replace(cfg, out_dir=str(tmp_path / 'full')))
    seen = []
    def ctrl_c(t):
        seen.append(t.metrics['loss'])
        if t.step == 4: os.kill(os.getpid(), signal.SIGINT)   # what Ctrl-C in a terminal or Jupyter does
    before = signal.getsignal(signal.SIGINT)    # default_int_handler, or SIG_IGN in a background job
    trainer = Trainer(Contrastive(), Views(), cfg, callbacks=[ctrl_c])
    with pytest.raises(KeyboardInterrupt): trainer.fit()
    assert trainer.step == 4 and torch.load(tmp_path / 'checkpoint.pt', weights_only=False)['step'] == 4
    assert signal.getsignal(signal.SIGINT) is before   # the handler that was there is put back
    rest, _ = _losses(Contrastive(), Views(), replace(cfg, resume=str(tmp_path / 'checkpoint.pt')))
    assert seen + rest == full


class CtrlCDuringStep(Contrastive):
    "Presses Ctrl-C as a terminal does (main process and DataLoader workers) as the workers of epoch 1 start."
    def on_step_start(self, trainer):
        if trainer.step == 6:
            for w in trainer._batches._workers: os.kill(w.pid, signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_with_workers_finishes_the_step(tmp_path, capfd):
    cfg = replace(BASE, out_dir=str(tmp_path), num_workers=2)
    trainer = Trainer(CtrlCDuringStep(), Views(), cfg)
    with pytest.raises(KeyboardInterrupt): trainer.fit()
    # the workers ignored it (they neither died nor ran the trainer's handler), the main process stopped once
    assert capfd.readouterr().out.count('stopping after this step') == 1
    assert torch.load(tmp_path / 'checkpoint.pt', weights_only=False)['step'] == 7   # step 6 completed, then stopped


def test_multicrop_lists_and_dict_batches():
    class Crops(torch.utils.data.Dataset):
        def __len__(self): return 16
        def __getitem__(self, i):
            return {'views': [torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.rand(3, 4, 4)], 'index': i}

    class MultiCrop(nn.Module):
        def __init__(self):
            super().__init__(); self.conv = nn.Conv2d(3, 4, 3, padding=1)
        def forward(self, batch):
            views = batch['views']
            assert isinstance(views, list) and [v.shape[-1] for v in views] == [8, 8, 4]
            feats = [self.conv(v).mean((2, 3)) for v in views]
            return dict(loss=sum((f - feats[0].detach()).pow(2).mean() for f in feats[1:]), n_views=len(views))

    out = Trainer(MultiCrop(), Crops(), TrainConfig(epochs=1, batch_size=4, warmup_epochs=0)).fit()
    assert out['n_views'] == 3 and out['step'] == 3


# ---------------------------------------------------------------- distributed
def _ddp_runs(rank, world, batch, out_dir):
    "In each of `world` gloo processes: train both methods, then an interrupted + resumed run."
    from self_sup.train import Trainer
    results, cfg = {}, replace(BASE, epochs=2, batch_size=batch, final_lr=0.0)
    for name, cls in (('contrastive', Contrastive), ('mean', MeanLoss)):
        losses, trainer = _losses(cls(), Views(), cfg)
        assert trainer.model is not trainer.method and isinstance(trainer.model, nn.parallel.DistributedDataParallel)
        results[name] = losses
        results[name + '_params'] = [p.detach().clone() for p in trainer.method.parameters()]
        results[name + '_hooks'] = trainer.method.hooks[:4]
    cfg = replace(cfg, out_dir=out_dir, checkpoint_every=100)
    first, _ = _losses(Contrastive(), Views(), cfg, stop_at=4)
    rest, _ = _losses(Contrastive(), Views(), replace(cfg, resume='auto'))
    results['resumed'] = first + rest
    results['files'] = sorted(os.listdir(out_dir))
    return results


def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    ddp = run_distributed(_ddp_runs, world_size=2, args=(4, str(tmp_path / 'ddp')))
    for name, cls in (('contrastive', Contrastive), ('mean', MeanLoss)):
        one, trainer = _losses(cls(), Views(), replace(BASE, epochs=2, batch_size=8, final_lr=0.0))
        assert len(one) == 12
        for rank in range(2):
            np.testing.assert_allclose(ddp[rank][name], one, rtol=1e-5, atol=1e-6)
            for p, q in zip(ddp[rank][name + '_params'], trainer.method.parameters()):
                torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-5)
            assert ddp[rank][name + '_hooks'] == [('step_start', 0), ('after_opt', 0), ('step_start', 1), ('after_opt', 1)]
    # the logged (rank-averaged) loss is the same on both ranks; only rank 0 wrote files
    assert ddp[0]['contrastive'] == ddp[1]['contrastive']
    assert ddp[0]['resumed'] == ddp[0]['contrastive'] == ddp[1]['resumed']
    assert ddp[0]['files'] == ['checkpoint.pt', 'config.json', 'metrics.csv']


TORCHRUN_SCRIPT = '''
import random, sys
import numpy as np, torch
from torch import nn
from self_sup.distributed import all_gather_with_grad, cleanup_distributed
from self_sup.train import Trainer, TrainConfig

class Data(torch.utils.data.Dataset):
    def __init__(self): self.x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    def __len__(self): return 32
    def __getitem__(self, i): return self.x[i] + 0.1 * torch.randn(5), self.x[i] + 0.1 * torch.randn(5)

class Method(nn.Module):
    def __init__(self):
        super().__init__(); torch.manual_seed(0); self.net = nn.Linear(5, 4)
    def forward(self, batch):
        z1, z2 = (all_gather_with_grad(nn.functional.normalize(self.net(x), dim=1)) for x in batch)
        return dict(loss=nn.functional.cross_entropy(z1 @ z2.T / 0.2, torch.arange(len(z1))))

def main(out_dir, batch):
    cfg = TrainConfig(epochs=2, batch_size=batch, optimizer='sgd', lr=0.3, warmup_epochs=0, clip_grad=None, out_dir=out_dir)
    Trainer(Method(), Data(), cfg).fit()
    cleanup_distributed()

if __name__ == '__main__': main(sys.argv[1], int(sys.argv[2]))
'''


def test_torchrun_two_cpu_processes(tmp_path):
    script = tmp_path / 'train_script.py'
    script.write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).parent / 'torchrun'
    env = dict(os.environ, OMP_NUM_THREADS='1', SELF_SUP_PROGRESS='0')
    r = subprocess.run([str(torchrun), '--standalone', '--nproc_per_node=2', str(script), str(tmp_path / 'ddp'), '4'],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reference = runpy.run_path(str(script))          # the same script as one process with twice the batch
    reference['main'](str(tmp_path / 'one'), 8)
    ddp, one = read_metrics(tmp_path / 'ddp' / 'metrics.csv'), read_metrics(tmp_path / 'one' / 'metrics.csv')
    assert len(one['loss']) == 8
    np.testing.assert_allclose(ddp['loss'], one['loss'], rtol=1e-5, atol=1e-6)
