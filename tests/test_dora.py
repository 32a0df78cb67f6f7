"""DoRA: the fixed defects at the level of the method (masks thresholded at each map's own mean, float32 tracking under
autocast, every local crop trained, no loss state carried between objects or steps), data with workers, exact resume,
bad inputs, CLI."""
import argparse, dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from self_sup.data.images import sample_image
from self_sup.data.video import fake_video, write_video
import self_sup.methods.dora as dora_module
from self_sup.methods.dora import DoRA, DoRAConfig, dora_dataset, make_trainer, train
from self_sup.methods.dora_tracking import object_masks, track_clip_objects
from self_sup.models import create_backbone
from self_sup.train import read_metrics


def _dora(**kw):
    torch.manual_seed(0)
    return DoRA(create_backbone('vit_tiny_patch16', patch_size=4, depth=1), out_dim=32, hidden_dim=16, bottleneck_dim=8, **kw)


def _views(B=2, T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, 3, 32, 32, generator=g)] + [torch.randn(B, T, 3, 16, 16, generator=g) for _ in range(3)]


@pytest.fixture(scope='module')
def tiny_video(tmp_path_factory):
    d = tmp_path_factory.mktemp('video')
    clip = fake_video(sample_image('coffee'), n_frames=24, size=(40, 56), generator=torch.Generator().manual_seed(0))
    return write_video(clip, d / 'tiny.mp4')


def _tiny_config(video, d, **kw):
    base = dict(preset='cpu', video=str(video), cache_dir=str(d), cache_short_side=40, frames_per_clip=3, stride=2, pre_size=32,
                global_size=32, local_size=16, depth=1, patch_size=4, out_dim=32, hidden_dim=16, bottleneck_dim=8, batch_size=2)
    return DoRAConfig(**{**base, **kw})


def test_masks_do_not_depend_on_the_rest_of_the_batch():
    # the same object on patches 5-7 of a 4 x 4 grid in two maps: image 0 peaked, image 1 flat and 10 times smaller (maps
    # that are not softmaxes, so their means differ). Each map's own mean keeps exactly the object in both; a threshold
    # shared by the batch (its plain mean, or the public code's mean after L2-normalising each map) gives image 1
    # nothing or everything
    logits = torch.zeros(2, 1, 1, 16)
    logits[0, ..., 5:8], logits[1, ..., 5:8] = 8.0, 1.0
    maps = logits.softmax(-1) * torch.tensor([1.0, 0.1]).view(2, 1, 1, 1)          # [B=2, T=1, k=1, N=16]
    both = object_masks(maps, (4, 4))
    assert both.flatten(1).sum(1).tolist() == [3, 3]
    assert both[1].flatten()[5:8].all()
    for b in range(2): assert torch.equal(both[b:b + 1], object_masks(maps[b:b + 1], (4, 4)))   # alone = in the batch


def test_tracking_does_not_depend_on_the_rest_of_the_batch():
    # per-image Sinkhorn and thresholds through the whole tracker: clip 0's masks are the same alone and in a batch of 2
    dora = _dora()
    clips = _views()[0]
    clips[1] = clips[1] * 0.1          # a second clip with much flatter attention
    with torch.no_grad():
        both = track_clip_objects(dora.teacher.backbone.forward_features(clips.flatten(0, 1), attention=True, qkv=True), 3, [0, 1, 2])
        alone = track_clip_objects(dora.teacher.backbone.forward_features(clips[:1].flatten(0, 1), attention=True, qkv=True), 3, [0, 1, 2])
    assert torch.equal(both.masks[:1], alone.masks)
    torch.testing.assert_close(both.assignment[:1], alone.assignment, atol=1e-5, rtol=0)
    assert both.masks[1].any(dim=(-1, -2)).all()          # every object of the flat clip keeps some patches


def test_tracking_in_float32_under_bf16_autocast():
    dora = _dora()
    clips = _views()[0]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        feats = dora.teacher.backbone.forward_features(clips.flatten(0, 1), attention=True, qkv=True)
        under = track_clip_objects(feats, 3, [0, 1, 2])
    outside = track_clip_objects(feats, 3, [0, 1, 2])       # same (bf16) features, no autocast
    assert feats.q.dtype == torch.bfloat16
    assert under.assignment.dtype == under.attention.dtype == under.refined.dtype == torch.float32
    torch.testing.assert_close(under.assignment, outside.assignment)
    assert torch.equal(under.masks, outside.masks)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dora(_views())
    assert out['loss'].dtype == torch.float32 and torch.isfinite(out['loss'])


def test_every_local_crop_gets_a_gradient():
    dora = _dora()
    views = [v.requires_grad_() for v in _views()]
    dora(views)['loss'].backward()
    for v in views[1:]:                                        # the global clip reaches the student only through the masks
        assert v.grad is not None and (v.grad.flatten(2).abs().sum(-1) > 0).all()


def _same_object_k_times(features, n_frames, heads, *args, **kwargs):
    # the tracker run with k copies of head 0 (k identical objects), the same tracks whatever k the method asks for
    tracks = track_clip_objects(features, n_frames, [0] * 3, *args, **kwargs)
    return dataclasses.replace(tracks, heads=tracks.heads[:len(heads)], masks=tracks.masks[:, :, :len(heads)])


def test_identical_objects_give_the_one_object_loss():
    # the public code carries its per-object accumulator from one object to the next, so k identical objects count
    # more than one; the average over objects must be the one-object loss
    torch.manual_seed(0)
    t, l, m = torch.randn(6, 32), torch.randn(4, 6, 32), torch.randn(1, 6, 32)
    one = dora_module.dora_loss(t, l, m)[0]
    for k in (2, 3):
        torch.testing.assert_close(dora_module.dora_loss(t, l, m.expand(k, -1, -1))[0], one)


def test_the_method_averages_identical_objects(monkeypatch):
    # the same through the method: k identical tracked objects (the tracker run with k copies of one head) give the
    # loss of one object, so no accumulator is carried between the objects of a step
    monkeypatch.setattr(dora_module, 'track_clip_objects', _same_object_k_times)
    losses = []
    for k in (1, 2, 3):
        dora = _dora(n_objects=k)
        with torch.no_grad(): losses.append(dora(_views())['loss'])
        masks = dora.last_tracks.masks
        assert masks.shape[2] == k and torch.equal(masks[:, :, :1].expand_as(masks), masks) and 0 < masks.float().mean() < 1
    for loss in losses[1:]: torch.testing.assert_close(loss, losses[0], atol=1e-5, rtol=0)


def test_no_loss_state_carried_between_steps():
    # with the centre frozen, the same batch and the same heads give the same loss at every step
    dora = _dora(center_momentum=1.0)
    losses = []
    for _ in range(3):
        torch.manual_seed(5)
        losses.append(dora(_views())['loss'].item())
    assert losses[0] == losses[1] == losses[2]


def test_dino_on_video_ablation_has_no_masked_term():
    out = _dora(use_tracking_masks=False)(_views())
    assert 'masked_loss' not in out and out['loss'] == out['local_loss']


def test_dataset_with_workers(tiny_video, tmp_path):
    ds = dora_dataset(_tiny_config(tiny_video, tmp_path))
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2)))
    assert [tuple(v.shape) for v in batch] == [(2, 3, 3, 32, 32)] + [(2, 3, 3, 16, 16)] * 2
    assert all(v.dtype == torch.float32 for v in batch)


def test_resume_continues_exactly(tiny_video, tmp_path):
    straight = tmp_path / 'straight'
    train(_tiny_config(tiny_video, tmp_path, max_steps=3, out_dir=str(straight)))
    resumed = tmp_path / 'resumed'
    train(_tiny_config(tiny_video, tmp_path, max_steps=1, out_dir=str(resumed)))
    train(_tiny_config(tiny_video, tmp_path, max_steps=3, out_dir=str(resumed), resume='auto'))
    a, b = read_metrics(straight / 'metrics.csv'), read_metrics(resumed / 'metrics.csv')
    assert b['step'].tolist() == [0, 1, 2]
    assert a['loss'].tolist() == b['loss'].tolist()            # the heads drawn and the augmentations are restored too


def test_bad_inputs(tiny_video, tmp_path):
    with pytest.raises(ValueError, match='video is required'):
        make_trainer(DoRAConfig(video=None, cache_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match='nope.mp4'):
        dora_dataset(DoRAConfig(preset='cpu', video=str(tmp_path / 'nope.mp4')))
    with pytest.raises(ValueError, match='shorter than one clip'):
        dora_dataset(_tiny_config(tiny_video, tmp_path, frames_per_clip=9, stride=6))
    with pytest.raises(ValueError, match='n_objects=4 objects need at least 4 attention heads'):
        make_trainer(_tiny_config(tiny_video, tmp_path, n_objects=4))
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'):
        DoRAConfig(batch_size=0)


@pytest.mark.parametrize('n', [6, 3])
def test_explicit_value_wins_over_the_cpu_preset(n):
    assert DoRAConfig(preset='cpu', batch_size=n).batch_size == n
    assert DoRAConfig(preset='cpu', checkpoint_every=1000).checkpoint_every == 1000    # was replaced by the preset's 0


def test_command_line_round_trip():
    from self_sup.cli import add_dataclass_arguments, config_or_exit
    parser = add_dataclass_arguments(argparse.ArgumentParser(), DoRAConfig)
    cfg = config_or_exit(parser, DoRAConfig, parser.parse_args(['--preset', 'cpu', '--no-use-tracking-masks', '--pre-scale', '0.3', '1',
                                                                 '--video', 'bikes', '--max-steps', '5']))
    assert (cfg.use_tracking_masks, cfg.pre_scale, cfg.max_steps, cfg.backbone) == (False, (0.3, 1.0), 5, 'vit_tiny_patch16')
    assert config_or_exit(parser, DoRAConfig, parser.parse_args([])) == DoRAConfig()
    cpu = config_or_exit(parser, DoRAConfig, parser.parse_args(['--preset', 'cpu', '--checkpoint-every', '1000', '--batch-size', '6']))
    assert (cpu.checkpoint_every, cpu.batch_size, cpu.backbone) == (1000, 6, 'vit_tiny_patch16')

