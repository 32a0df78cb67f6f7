"""TimeTuning: codes equipartitioned over 2 gloo processes as over one, every config/CLI option reaching the method and
changing its targets or loss, booleans as --flag/--no-flag, bf16 autocast, data with workers, bad inputs."""
import argparse, contextlib, io

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distributed_utils import run_distributed
from self_sup.data.images import sample_image
from self_sup.data.video import fake_video, write_video
from self_sup.methods.timetuning import (TimeTuning, TimeTuningConfig, cluster_codes, make_trainer, timetuning_dataset, tune,
                                         timetuning_method)
from self_sup.models import create_backbone


def _scores():
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(4, 12, 8, generator=g), dim=-1) @ F.normalize(torch.randn(5, 8, generator=g), dim=-1).T   # [B, N, K]


def _ranked(rank, world):
    return cluster_codes(_scores()[rank * 2:(rank + 1) * 2], n_iters=10, distributed=True)


def test_codes_equipartitioned_over_processes():
    outs = run_distributed(_ranked, world_size=2)
    one = cluster_codes(_scores(), n_iters=10)
    torch.testing.assert_close(torch.cat(outs), one, atol=1e-5, rtol=0)
    assert not torch.allclose(cluster_codes(_scores()[:2], n_iters=10), one[:2], atol=1e-4)   # a rank alone would differ


@pytest.fixture(scope='module')
def tiny_video(tmp_path_factory):
    d = tmp_path_factory.mktemp('video')
    clip = fake_video(sample_image('astronaut'), n_frames=20, size=(40, 56), generator=torch.Generator().manual_seed(0))
    return write_video(clip, d / 'tiny.mp4')


def _tuned_output(**options):
    "The forwarded cluster maps and the loss of one batch, from the method a config builds (same weights and clips)."
    torch.manual_seed(0)
    cfg = TimeTuningConfig(preset='cpu', depth=2, crop_size=48, head_dims=(32, 16), n_prototypes=6, **options)
    m = timetuning_method(cfg)
    clips = torch.randn(2, 4, 3, 48, 48, generator=torch.Generator().manual_seed(1))    # 4 frames on a 6 x 6 patch grid
    with torch.no_grad(): loss = m(clips)['loss']
    return m.last_targets, loss


@pytest.mark.parametrize('option, value', [('sinkhorn_eps', 0.5), ('sinkhorn_iters', 1), ('n_context', 0), ('topk', 1),
                                           ('radius', 1), ('propagation_temperature', 1.0)])
def test_every_option_reaches_the_targets(option, value):
    # the public code's flags for eps, Sinkhorn iterations, context frames and top-k never reached get_loss: each option
    # changed on its own in the config must change the forwarded cluster maps the loss is computed from
    reference, _ = _tuned_output()
    changed, _ = _tuned_output(**{option: value})
    assert not torch.allclose(changed, reference, atol=1e-4), f"{option}={value} did not change the forwarded maps"


def test_score_temperature_reaches_the_loss():
    (ref_maps, ref_loss), (maps, loss) = _tuned_output(), _tuned_output(score_temperature=0.5)
    assert torch.equal(maps, ref_maps) and abs(loss.item() - ref_loss.item()) > 1e-3


def test_every_option_reaches_the_method():
    cfg = TimeTuningConfig(preset='cpu', depth=3, sinkhorn_eps=0.07, sinkhorn_iters=4, n_context=2, radius=3, topk=2,
                           propagation_temperature=0.2, score_temperature=0.3, use_teacher=False, teacher_momentum=0.9,
                           backbone_lr_scale=0.5, n_prototypes=7, head_dims=(16, 8), n_trainable_blocks=1)
    m = timetuning_method(cfg)
    assert (m.sinkhorn_eps, m.sinkhorn_iters, m.n_context, m.radius, m.topk, m.propagation_temperature, m.score_temperature,
            m.teacher, m.teacher_momentum, m.backbone_lr_scale) == (0.07, 4, 2, 3, 2, 0.2, 0.3, None, 0.9, 0.5)
    assert m.network.prototypes.weight.shape == (7, 8)
    assert {n.split('.')[1] for n, p in m.backbone.model.named_parameters() if p.requires_grad} == {'2'}   # blocks.2 only
    lr_scales = sorted({g['lr_scale'] for g in m.param_groups()})
    assert lr_scales == [0.5, 1.0]


def test_command_line_booleans_and_options():
    from self_sup.cli import add_dataclass_arguments, config_or_exit
    parser = add_dataclass_arguments(argparse.ArgumentParser(), TimeTuningConfig)
    cfg = config_or_exit(parser, TimeTuningConfig, parser.parse_args(
        ['--no-use-teacher', '--head-dims', '64', '32', '--radius', '3', '--sinkhorn-eps', '0.1', '--n-context', '1']))
    assert (cfg.use_teacher, cfg.head_dims, cfg.radius, cfg.sinkhorn_eps, cfg.n_context) == (False, (64, 32), 3, 0.1, 1)
    assert config_or_exit(parser, TimeTuningConfig, parser.parse_args([])).use_teacher is True
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as e:
        parser.parse_args(['--use-teacher', 'False'])           # type=bool would have read this as True
    assert e.value.code == 2
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit):
        config_or_exit(parser, TimeTuningConfig, parser.parse_args(['--topk', '0']))
    assert 'argument --topk: topk must be an integer >= 1, got 0' in err.getvalue()


def test_bf16_autocast_keeps_targets_in_float32():
    torch.manual_seed(0)
    tt = TimeTuning(create_backbone('vit_tiny_patch16', patch_size=8, depth=2), head_dims=(32, 16), n_prototypes=6, radius=2)
    clips = torch.randn(2, 3, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = tt(clips)
    assert out['loss'].dtype == torch.float32 and torch.isfinite(out['loss'])
    assert tt.last_targets.dtype == torch.float32
    torch.testing.assert_close(tt.last_targets.sum(2), torch.ones(2, 3, 4, 4), atol=1e-4, rtol=0)


def test_dataset_with_workers(tiny_video, tmp_path):
    cfg = TimeTuningConfig(preset='cpu', video=str(tiny_video), cache_dir=str(tmp_path), cache_short_side=40, frames_per_clip=3,
                           stride=2, crop_size=32)
    ds = timetuning_dataset(cfg)
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2)))
    assert batch.shape == (2, 3, 3, 32, 32) and batch.dtype == torch.float32


@pytest.mark.parametrize('n', [128, 8])
def test_explicit_value_wins_over_the_cpu_preset(n):
    assert TimeTuningConfig(preset='cpu', batch_size=n).batch_size == n
    assert TimeTuningConfig(preset='cpu', checkpoint_every=1000).checkpoint_every == 1000


def test_tune_a_ready_backbone(tiny_video, tmp_path):
    cfg = TimeTuningConfig(preset='cpu', video=str(tiny_video), cache_dir=str(tmp_path), cache_short_side=40, frames_per_clip=3,
                           stride=2, crop_size=32, depth=3, batch_size=2, max_steps=1)
    torch.manual_seed(0)
    backbone = create_backbone('vit_tiny_patch16', patch_size=8, depth=3, img_size=32)
    assert tune(cfg, backbone).backbone is backbone


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match='video is required'):
        make_trainer(TimeTuningConfig(video=None))
    with pytest.raises(FileNotFoundError, match='nope.mp4'):
        timetuning_dataset(TimeTuningConfig(preset='cpu', video=str(tmp_path / 'nope.mp4')))
    with pytest.raises(FileNotFoundError, match='weights'):
        TimeTuningConfig(weights=str(tmp_path / 'dino.pth'))
    with pytest.raises(ValueError, match='crop_scale must satisfy'):
        TimeTuningConfig(crop_scale=(0.9, 0.1))
    with pytest.raises(TypeError, match='needs a ViT'):
        TimeTuning(create_backbone('small_cnn'))
