"""SwAV: codes, loss and queue over 2 gloo processes equal one process on the concatenated batch; bad config values; train end to end."""
import argparse, math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distributed_utils import run_distributed
from self_sup.methods.swav import SwAV, SwAVConfig, make_trainer, swav_codes, swav_loss, train

B, K, V = 6, 7, 5   # images per rank, prototypes, crops (2 global + 3 local)


def _scores():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(V, 2 * B, 8, generator=g), dim=-1)
    c = F.normalize(torch.randn(K, 8, generator=g), dim=-1)
    return z @ c.t()                                            # [V, 2B, K] cosine scores


class Pooled(nn.Module):
    "A BatchNorm-free encoder for crops of any size: 2x2 average pool, then a linear layer."
    embed_dim = 16
    def __init__(self):
        super().__init__(); self.linear = nn.Linear(12, self.embed_dim)
    def forward(self, x): return self.linear(F.adaptive_avg_pool2d(x, 2).flatten(1))


def _swav(queue_length):
    torch.manual_seed(0)
    swav = SwAV(Pooled(), hidden_dim=0, out_dim=8, n_prototypes=K, queue_length=queue_length, freeze_prototypes_niters=0)
    swav.use_queue = queue_length > 0
    return swav


def _crops(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.rand(2 * B, 3, 8, 8, generator=g) for _ in range(2)] + [torch.rand(2 * B, 3, 4, 4, generator=g) for _ in range(3)]


def _run(swav, part, steps=5):
    out = []
    for step in range(steps):
        o = swav([c[part] for c in _crops(step)])
        out.append((o['loss'].item(), o['queue']))
    return out


def _ranked(rank, world):
    half = slice(rank * B, (rank + 1) * B)
    scores = _scores()
    codes = swav_codes(scores[:2, half], distributed=True)
    # with the queue: 2B per step over both ranks, 4B rows -> full after 2 steps, used from step 2 on
    return dict(codes=codes, loss=swav_loss(scores[:, half], codes).item(), steps=_run(_swav(4 * B), half))


@pytest.fixture(scope='module')
def two_ranks():
    return run_distributed(_ranked, world_size=2)


def test_codes_and_loss_over_two_ranks_equal_one_process(two_ranks):
    scores = _scores()
    codes = swav_codes(scores[:2], distributed=True)
    for rank, out in enumerate(two_ranks):
        torch.testing.assert_close(out['codes'], codes[:, rank * B:(rank + 1) * B], rtol=1e-5, atol=1e-6)
    # each rank's loss is the mean over its images; DDP averages them: the mean of the ranks' losses is the global loss
    assert math.isclose(sum(o['loss'] for o in two_ranks) / 2, swav_loss(scores, codes).item(), rel_tol=1e-5)


def test_method_with_queue_over_two_ranks_equals_one_process(two_ranks):
    one = _run(_swav(4 * B), slice(None))
    assert [q for _, q in one] == [0.0, 0.0, 1.0, 1.0, 1.0]
    for step, (loss, used) in enumerate(one):
        assert [o['steps'][step][1] for o in two_ranks] == [used, used]
        assert math.isclose(sum(o['steps'][step][0] for o in two_ranks) / 2, loss, rel_tol=1e-5), step


@pytest.mark.parametrize('kwargs, message', [
    (dict(preset='huge'), "preset must be one of ['paper', 'bs256', 'cpu', 'objects'], got 'huge'"),
    (dict(n_prototypes=0), 'n_prototypes must be an integer >= 1, got 0'),
    (dict(epsilon=-0.05), 'epsilon must be a positive number, got -0.05'),
    (dict(temperature=0), 'temperature must be a positive number, got 0'),
    (dict(sinkhorn_iterations=0), 'sinkhorn_iterations must be an integer >= 1, got 0'),
    (dict(freeze_prototypes_niters=-1), 'freeze_prototypes_niters must be an integer >= 0, got -1'),
    (dict(queue_length=3.5), 'queue_length must be an integer >= 0, got 3.5'),
    (dict(epoch_queue_starts=-2), 'epoch_queue_starts must be an integer >= 0, got -2'),
    (dict(n_local=-1), 'n_local must be an integer >= 0, got -1'),
    (dict(global_scale=(0.14, 1.5)), 'global_scale must satisfy 0 < low <= high <= 1, got (0.14, 1.5)'),
    (dict(local_scale='small'), "local_scale must be two numbers (low, high), got 'small'"),
    (dict(lr=0), 'lr must be a positive number, got 0'),
    (dict(warmup_lr=-0.3), 'warmup_lr must be a non-negative number, got -0.3'),
    (dict(optimizer='adam'), "optimizer must be one of ['adamw', 'sgd', 'lars'], got 'adam'"),
    (dict(dataset='cifar'), "dataset must be one of ['imagenet', 'folder', 'digits', 'objects'], got 'cifar'"),
])
def test_bad_config_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as e: SwAVConfig(**kwargs)
    assert message in str(e.value)


def test_bad_method_arguments_and_batches():
    with pytest.raises(TypeError, match='backbone must be a self_sup.models.Backbone'): SwAV(nn.Linear(2, 2))
    with pytest.raises(ValueError, match='queue_length must be an integer >= 0'): SwAV(Pooled(), queue_length=-3)
    swav = _swav(0)
    with pytest.raises(ValueError, match='SwAV expects a batch that is a list of crops'): swav(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="data_path is required for dataset='imagenet'"): train(SwAVConfig())
    with pytest.raises(FileNotFoundError, match='nowhere'): train(SwAVConfig(data_path='/nowhere'))


def test_train_with_queue_then_resume_restores_it(tmp_path):
    base = dict(preset='cpu', batch_size=32, queue_length=64, epoch_queue_starts=0, out_dir=str(tmp_path), checkpoint_every=2)
    first = train(SwAVConfig(max_steps=2, **base))
    assert int(first.queue_filled) == 64 and first.queue.abs().sum() > 0
    trainer = make_trainer(SwAVConfig(max_steps=3, resume='auto', **base))
    seen = []
    trainer.callbacks.append(lambda t: seen.append(t.metrics['queue']))
    trainer.fit()
    assert trainer.step == 3 and seen == [1.0]       # the restored queue is full: used at once
    norms = trainer.method.prototypes.normalize_().weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_command_line_round_trip():
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    parser = add_dataclass_arguments(argparse.ArgumentParser(), SwAVConfig)
    cfg = dataclass_from_args(SwAVConfig, parser.parse_args(['--preset', 'bs256', '--epsilon', '0.03', '--local-scale', '0.05', '0.2',
                                                             '--data-path', '/data/imagenet']))
    assert (cfg.preset, cfg.epsilon, cfg.local_scale, cfg.queue_length, cfg.lr) == ('bs256', 0.03, (0.05, 0.2), 3840, 0.6)


@pytest.mark.parametrize('batch_size', [64, 32])   # the paper's batch and another: both win over the cpu preset's 128
def test_an_explicit_batch_size_wins_over_the_preset_on_the_command_line(batch_size):
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    parser = add_dataclass_arguments(argparse.ArgumentParser(), SwAVConfig)
    cfg = dataclass_from_args(SwAVConfig, parser.parse_args(['--preset', 'cpu', '--batch-size', str(batch_size)]))
    assert (cfg.batch_size, cfg.backbone, cfg.n_prototypes) == (batch_size, 'small_cnn', 128)
