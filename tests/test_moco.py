"""MoCo: the queue and the losses over 2 gloo processes equal one process on the whole batch; bad config values; train end to end."""
import argparse, math

import pytest
import torch
import torch.nn.functional as F

from distributed_utils import run_distributed
from self_sup.methods.moco import MoCo, MoCoConfig, moco_v3_loss, train, make_trainer
from self_sup.models import Backbone, SmallCNN

B, D = 4, 16   # images per rank, projection size


def _moco(bn_splits=1, queue_size=24):
    torch.manual_seed(0)
    return MoCo(Backbone(SmallCNN(3, (8, 16)), 'small_cnn'), hidden_dim=32, out_dim=D, queue_size=queue_size, bn_splits=bn_splits)


def _views(n=2 * B):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 12, 12, generator=g), torch.rand(n, 3, 12, 12, generator=g)


def _rank_keys(rank):
    return F.normalize(torch.randn(B, D, generator=torch.Generator().manual_seed(10 + rank)), dim=1)


def _v3_inputs():
    return torch.randn(4, 2 * B, D, generator=torch.Generator().manual_seed(2))


def _ranked(rank, world):
    "Everything the 2-process tests need, from one launch of 2 gloo processes."
    out = {}
    moco = _moco()
    moco.enqueue(_rank_keys(rank))
    out['enqueued'] = (moco.queue.clone(), int(moco.queue_pointer))
    moco = _moco(bn_splits=1)
    x1, x2 = _views()
    half = slice(rank * B, (rank + 1) * B)
    out['losses'] = [moco([x1[half], x2[half]])['loss'].item() for _ in range(2)]
    out['queue'] = moco.queue.clone()
    q1, q2, k1, k2 = _v3_inputs()
    out['v3'] = moco_v3_loss(q1[half], q2[half], k1[half], k2[half], 0.2).item()
    return out


@pytest.fixture(scope='module')
def two_ranks():
    return run_distributed(_ranked, world_size=2)


def test_queue_holds_every_ranks_keys_in_rank_order(two_ranks):
    expected = torch.cat([_rank_keys(0), _rank_keys(1)])
    for out in two_ranks:
        queue, pointer = out['enqueued']
        assert pointer == 2 * B
        torch.testing.assert_close(queue[:2 * B], expected)
    torch.testing.assert_close(two_ranks[0]['enqueued'][0], two_ranks[1]['enqueued'][0])   # every rank holds the same queue


def test_shuffle_bn_over_two_ranks_equals_one_process_with_two_bn_groups(two_ranks):
    one = _moco(bn_splits=2)                    # the same BN groups: each rank's half, keys shuffled over the global batch
    x1, x2 = _views()
    full = [one([x1, x2])['loss'].item() for _ in range(2)]
    for step in range(2):
        assert math.isclose((two_ranks[0]['losses'][step] + two_ranks[1]['losses'][step]) / 2, full[step], rel_tol=1e-5)
    for out in two_ranks: torch.testing.assert_close(out['queue'], one.queue, rtol=1e-5, atol=1e-6)


def test_v3_loss_over_two_ranks_equals_one_process(two_ranks):
    q1, q2, k1, k2 = _v3_inputs()
    assert math.isclose((two_ranks[0]['v3'] + two_ranks[1]['v3']) / 2, moco_v3_loss(q1, q2, k1, k2, 0.2).item(), rel_tol=1e-5)


@pytest.mark.parametrize('kwargs, message', [
    (dict(version='v1'), "version must be one of ['v2', 'v3'], got 'v1'"),
    (dict(preset='gpu'), "preset must be one of ['paper', 'cpu', 'objects'], got 'gpu'"),
    (dict(queue_size=0), "queue_size must be an integer >= 1 for version='v2'"),
    (dict(queue_size=2.5), 'queue_size must be an integer >= 0, got 2.5'),
    (dict(temperature=0.0), 'temperature must be a positive number, got 0.0'),
    (dict(momentum=-0.1), 'momentum must lie in [0, 1], got -0.1'),
    (dict(bn_splits=0), 'bn_splits must be an integer >= 1, got 0'),
    (dict(batch_size=0), 'batch_size must be an integer >= 1, got 0'),
    (dict(lr=-1.0), 'lr must be a positive number, got -1.0'),
    (dict(weight_decay=-1e-4), 'weight_decay must be a non-negative number'),
    (dict(crop_scale=(0.0, 1.0)), 'crop_scale must satisfy 0 < low <= high <= 1, got (0.0, 1.0)'),
    (dict(crop_scale=(0.2,)), 'crop_scale must be two numbers (low, high)'),
    (dict(optimizer='adam'), "optimizer must be one of ['adamw', 'sgd', 'lars'], got 'adam'"),
    (dict(precision='16'), "precision must be one of ['32', 'bf16', 'fp16'], got '16'"),
    (dict(dataset='cifar'), "dataset must be one of ['imagenet', 'folder', 'digits', 'objects'], got 'cifar'"),
])
def test_bad_config_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as e: MoCoConfig(**kwargs)
    assert message in str(e.value)


def test_bad_method_arguments():
    with pytest.raises(TypeError, match='backbone must be a self_sup.models.Backbone'): MoCo(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match='freeze_patch_embed needs a ViT backbone'):
        MoCo.from_config(MoCoConfig(preset='cpu', freeze_patch_embed=True))
    with pytest.raises(ValueError, match="data_path is required for dataset='imagenet'"): train(MoCoConfig())
    with pytest.raises(FileNotFoundError, match='nowhere'): train(MoCoConfig(data_path='/nowhere'))


def test_train_a_few_steps_then_resume_restores_the_queue(tmp_path):
    cfg = MoCoConfig(preset='cpu', max_steps=2, out_dir=str(tmp_path), checkpoint_every=2, batch_size=32)
    first = train(cfg)
    assert int(first.queue_pointer) == 2 * 32
    trainer = make_trainer(MoCoConfig(preset='cpu', max_steps=3, out_dir=str(tmp_path), resume='auto', batch_size=32))
    trainer.fit()
    assert trainer.step == 3 and int(trainer.method.queue_pointer) == 3 * 32
    torch.testing.assert_close(trainer.method.queue[:64], first.queue[:64])   # the restored keys are still there


def test_v3_trains_on_cpu_with_cosine_momentum():
    trainer = make_trainer(MoCoConfig(version='v3', preset='cpu', max_steps=2, batch_size=32))
    trainer.fit()
    assert 0.99 < trainer.method.momentum < 1 and math.isfinite(trainer.metrics['loss'])


def test_command_line_round_trip():
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    parser = add_dataclass_arguments(argparse.ArgumentParser(), MoCoConfig)
    cfg = dataclass_from_args(MoCoConfig, parser.parse_args(['--version', 'v3', '--crop-scale', '0.08', '1', '--temperature', '0.2',
                                                             '--no-shuffle-bn', '--max-steps', 'none']))
    assert (cfg.version, cfg.crop_scale, cfg.temperature, cfg.shuffle_bn, cfg.out_dim, cfg.max_steps) == ('v3', (0.08, 1.0), 0.2, False, 256, None)


@pytest.mark.parametrize('version, batch_size', [('v2', 32), ('v2', 64), ('v3', 256), ('v3', 64)])   # each version's paper batch and another
def test_an_explicit_batch_size_wins_over_the_preset_on_the_command_line(version, batch_size):
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    parser = add_dataclass_arguments(argparse.ArgumentParser(), MoCoConfig)
    cfg = dataclass_from_args(MoCoConfig, parser.parse_args(['--version', version, '--preset', 'cpu', '--batch-size', str(batch_size)]))
    assert (cfg.batch_size, cfg.backbone, cfg.lr, cfg.queue_size) == (batch_size, 'small_cnn', 0.06, 1024 if version == 'v2' else 0)
