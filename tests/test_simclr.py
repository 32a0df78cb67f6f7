"""SimCLR: NT-Xent in 2 gloo processes against 1 process on the concatenated batch (values and gradients),
a 2-process training run against 1 process with twice the batch, bad configs, the command-line fields, and
`train` end to end on the CPU from an image folder. (The loss against its naive reference, shapes and the
method's outputs are tested in nbs/11_methods.simclr.ipynb.)"""
import argparse, dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from self_sup.cli import add_dataclass_arguments, dataclass_from_args, field_help
from self_sup.distributed import all_reduce_mean
from self_sup.methods.simclr import SimCLR, SimCLRConfig, eval_transform, nt_xent, nt_xent_logits, train
from self_sup.train import Trainer, TrainConfig
from distributed_utils import run_distributed


def _projections(n=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- 2 processes = 1 process
def _loss_and_grads(rank, world, n, gather):
    z1, z2 = _projections(n)
    b = n // world
    a1 = z1[rank * b:(rank + 1) * b].clone().requires_grad_()
    a2 = z2[rank * b:(rank + 1) * b].clone().requires_grad_()
    loss = nt_xent(a1, a2, temperature=0.3, gather=gather)
    loss.backward()
    mean_loss = all_reduce_mean(loss.detach().clone())
    logits, positives = nt_xent_logits(a1.detach(), a2.detach(), 0.3, gather)
    return dict(loss=loss.item(), mean_loss=mean_loss.item(), g1=a1.grad, g2=a2.grad,
                logits_shape=tuple(logits.shape), positives=positives)


class PairsOfNoisyImages(torch.utils.data.Dataset):
    "Two noisy copies of a fixed random 'image' [1, 2, 2] per item (noise seeded per sample by the trainer)."
    def __init__(self, n=16):
        self.x = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return [self.x[i] + 0.1 * torch.randn(1, 2, 2), self.x[i] + 0.1 * torch.randn(1, 2, 2)]


class LinearEncoder(nn.Module):
    "No BatchNorm, so per-process statistics cannot make 2 processes differ from 1."
    embed_dim = 6
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6))
    def forward(self, x): return self.net(x)


def _fit(batch_size, steps=3):
    torch.manual_seed(0)
    method = SimCLR(LinearEncoder(), proj_dim=3, proj_layers=1, temperature=0.5)
    losses = []
    cfg = TrainConfig(epochs=1, batch_size=batch_size, optimizer='sgd', lr=0.5, warmup_epochs=0, final_lr=0.5, weight_decay=0.0,
                      final_weight_decay=None, clip_grad=None, max_steps=steps, device='cpu')
    Trainer(method, PairsOfNoisyImages(), cfg, callbacks=[lambda t: losses.append(t.metrics['loss'])]).fit()
    return losses, {k: v.detach().clone() for k, v in method.state_dict().items()}


def _two_process_runs(rank, world, n):
    "Everything that needs 2 processes, in one launch (starting processes is the slow part)."
    return dict(gather=_loss_and_grads(rank, world, n, True), local=_loss_and_grads(rank, world, n, False), fit=_fit(n // world))


@pytest.fixture(scope='module')
def two_processes():
    return run_distributed(_two_process_runs, world_size=2, args=(8,))


def test_two_processes_equal_one_process_on_the_concatenated_batch(two_processes):
    n, world = 8, 2
    z1, z2 = (z.clone().requires_grad_() for z in _projections(n))
    one = nt_xent(z1, z2, temperature=0.3)
    one.backward()
    outs = [o['gather'] for o in two_processes]
    b = n // world
    for rank, o in enumerate(outs):
        assert o['logits_shape'] == (2 * b, 2 * n)        # this rank's anchors against every view of every rank
        assert abs(o['mean_loss'] - one.item()) < 1e-10   # the mean of the ranks' losses is the one-process loss
        # each rank's anchors, positives at the other view of the same image in the gathered order
        assert o['positives'].tolist() == [rank * 2 * b + (i + b) % (2 * b) for i in range(2 * b)]
        # the gather's backward sums the ranks' gradients: W x the gradient of the global mean loss
        # (DDP's average over ranks divides by W again)
        torch.testing.assert_close(o['g1'] / world, z1.grad[rank * b:(rank + 1) * b], atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(o['g2'] / world, z2.grad[rank * b:(rank + 1) * b], atol=1e-12, rtol=1e-9)
    assert abs(sum(o['loss'] for o in outs) / world - one.item()) < 1e-10


def test_without_gathering_each_process_only_sees_its_own_negatives(two_processes):
    z1, z2 = _projections(8)
    outs = [o['local'] for o in two_processes]
    for rank, o in enumerate(outs):
        local = nt_xent(z1[rank * 4:(rank + 1) * 4], z2[rank * 4:(rank + 1) * 4], 0.3, gather=False)
        assert abs(o['loss'] - local.item()) < 1e-10 and o['logits_shape'] == (8, 8)
    assert abs(outs[0]['mean_loss'] - nt_xent(z1, z2, 0.3).item()) > 1e-3


def test_two_process_training_equals_one_process_with_twice_the_batch(two_processes):
    one_losses, one_state = _fit(8)
    for losses, state in (o['fit'] for o in two_processes):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(one_losses), atol=1e-5, rtol=1e-5)
        for k, v in one_state.items(): torch.testing.assert_close(state[k], v, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- configuration and command line
@pytest.mark.parametrize('kwargs, message', [
    (dict(temperature=-0.1), 'temperature must be a positive number, got -0.1'),
    (dict(batch_size=0), 'batch_size must be an integer >= 1, got 0'),
    (dict(proj_hidden_dim=0), 'proj_hidden_dim must be an integer >= 1, got 0'),
    (dict(blur_p=1.5), 'blur_p must lie in [0, 1], got 1.5'),
    (dict(optimizer='adam'), "optimizer must be one of ['adamw', 'sgd', 'lars'], got 'adam'"),
    (dict(precision='16'), "precision must be one of ['32', 'bf16', 'fp16'], got '16'"),
    (dict(preset='gpu'), "preset must be one of ['paper', 'cpu', 'objects'], got 'gpu'"),
    (dict(crop_scale=(0.0, 1.0)), 'crop_scale must satisfy 0 < low <= high <= 1, got (0.0, 1.0)'),
    (dict(crop_scale='big'), "crop_scale must be two numbers (low, high), got 'big'"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError) as e:
        SimCLRConfig(**kwargs)
    assert message in str(e.value)


def test_every_field_is_documented_for_the_command_line():
    helps = field_help(SimCLRConfig)
    assert all(helps.get(name) for name in SimCLRConfig.__dataclass_fields__), [n for n in SimCLRConfig.__dataclass_fields__ if not helps.get(n)]
    parser = add_dataclass_arguments(argparse.ArgumentParser(), SimCLRConfig)
    cfg = dataclass_from_args(SimCLRConfig, parser.parse_args(['--preset', 'cpu', '--crop-scale', '0.3', '1', '--temperature', '0.2', '--no-gather-negatives']))
    assert (cfg.crop_scale, cfg.temperature, cfg.gather_negatives, cfg.backbone) == ((0.3, 1.0), 0.2, False, 'small_cnn')


@pytest.mark.parametrize('batch_size', [256, 64])   # the paper's batch and another: both win over the cpu preset's 128
def test_an_explicit_batch_size_wins_over_the_preset_on_the_command_line(batch_size):
    parser = add_dataclass_arguments(argparse.ArgumentParser(), SimCLRConfig)
    cfg = dataclass_from_args(SimCLRConfig, parser.parse_args(['--preset', 'cpu', '--batch-size', str(batch_size)]))
    assert (cfg.batch_size, cfg.backbone, cfg.lr) == (batch_size, 'small_cnn', 1e-3)


def test_bad_batches():
    method = SimCLR(LinearEncoder(), proj_layers=1)
    with pytest.raises(ValueError, match='SimCLR expects a batch of 2 views'):
        method(torch.rand(4, 1, 2, 2))
    with pytest.raises(ValueError, match='SimCLR expects a batch of 2 views'):
        method([torch.rand(4, 1, 2, 2)] * 3)


# ---------------------------------------------------------------- end to end from an image folder
def _write_folder(root, n_per_class=6, size=40):
    g = torch.Generator().manual_seed(0)
    for c in ('cat', 'dog'):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            arr = (torch.rand(size, size + 8, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f'{i}.png')


def test_train_end_to_end_from_a_folder_on_the_cpu(tmp_path):
    _write_folder(tmp_path / 'images')
    cfg = SimCLRConfig(dataset='folder', data_path=str(tmp_path / 'images'), image_size=32, backbone='small_cnn', batch_size=4,
                       num_workers=1, device='cpu', precision='32', sync_batchnorm=False, epochs=2, max_steps=3,
                       out_dir=str(tmp_path / 'run'), log_every=1)
    method = train(cfg)
    lines = (tmp_path / 'run' / 'metrics.csv').read_text().splitlines()
    assert lines[0].split(',')[:4] == ['step', 'epoch', 'lr', 'weight_decay'] and len(lines) == 4
    assert 'pos_sim' in lines[0] and 'neg_sim' in lines[0]
    assert (tmp_path / 'run' / 'checkpoint.pt').is_file()
    x = eval_transform(cfg)(Image.open(tmp_path / 'images' / 'cat' / '0.png'))
    assert x.shape == (3, 32, 32)
    with torch.no_grad(): assert method.backbone.eval()(x[None]).shape == (1, 128)
    # the run continues from its checkpoint
    method = train(dataclasses.replace(cfg, max_steps=5, resume='auto'))
    assert len((tmp_path / 'run' / 'metrics.csv').read_text().splitlines()) == 6


def test_bf16_autocast_keeps_the_loss_in_float32():
    z1, z2 = (z.float() for z in _projections())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        lin = nn.Linear(5, 5)
        loss = nt_xent(lin(z1), lin(z2), 0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
