"Bad inputs and edge cases of label propagation (self_sup.propagation) and the DAVIS evaluation (self_sup.eval.propagation)."
import numpy as np
import pytest
import torch
from torch import nn

from self_sup.propagation import (downsample_labels, labels_to_onehot, onehot_to_labels, propagate_labels,
                                  propagate_labels_batched, upsample_maps)
from self_sup.eval.propagation import (boundary_f_measure, davis_statistics, evaluate_davis, evaluate_davis_masks,
                                       evaluate_davis_sequence, propagate_video_masks, video_patch_features)


def _video(T=4, grid=(4, 5), dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, grid[0] * grid[1], dim, generator=g), torch.randint(0, 3, grid, generator=g)


# --- self_sup.propagation ------------------------------------------------------------------------------

@pytest.mark.parametrize('labels, num_classes, message', [
    (torch.tensor([[0, 3], [1, 2]]), 3, 'labels must lie in [0, 3) for num_classes=3, found values from 0 to 3'),
    (torch.tensor([[0, -1], [1, 2]]), None, 'found values from -1 to 2'),
])
def test_labels_out_of_range(labels, num_classes, message):
    feats, _ = _video(grid=(2, 2))
    with pytest.raises(ValueError) as e: propagate_labels(feats, labels, num_classes=num_classes)
    assert message in str(e.value)


@pytest.mark.parametrize('option, value', [
    ('n_context', -1), ('n_context', 1.5), ('n_context', True), ('radius', -2), ('radius', 1.0),
    ('topk', 0), ('topk', 2.0), ('temperature', 0), ('temperature', -0.1), ('temperature', float('nan')),
])
def test_bad_options_name_the_option(option, value):
    feats, first = _video()
    with pytest.raises(ValueError, match=option): propagate_labels(feats, first, **{option: value})


def test_bad_types_and_shapes():
    feats, first = _video()
    with pytest.raises(TypeError, match='features must be a float tensor'): propagate_labels(feats.long(), first)
    with pytest.raises(TypeError, match='first_labels must be a tensor'): propagate_labels(feats, first.numpy())
    with pytest.raises(ValueError, match='integer first_labels must have shape \\[h, w\\]'): propagate_labels(feats, first[None])
    with pytest.raises(ValueError, match='3 channels but num_classes=4'): propagate_labels(feats, labels_to_onehot(first, 3), num_classes=4)
    maps = feats.transpose(1, 2).reshape(4, 8, 4, 5)
    with pytest.raises(ValueError, match='features \\[T, D, h, w\\] are on a 5x4 grid'): propagate_labels(maps.transpose(2, 3), first)
    with pytest.raises(ValueError, match='integer first_labels must have shape \\[B, h, w\\]'): propagate_labels_batched(feats[None], first)
    with pytest.raises(ValueError, match='labels must have shape'): labels_to_onehot(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match='maps must have shape'): onehot_to_labels(torch.rand(3, 4))
    with pytest.raises(ValueError, match='maps must have shape'): upsample_maps(torch.rand(3, 4), (8, 8))
    with pytest.raises(ValueError, match='labels must have shape'): downsample_labels(torch.tensor([1, 2]), (1, 1))


def test_edge_cases():
    feats, first = _video()
    one = propagate_labels(feats[:1], first)                            # a single frame: just the given labels
    assert one.shape == (1, 3, 4, 5) and torch.equal(one[0], labels_to_onehot(first))
    half = propagate_labels(feats.half(), first)                        # low-precision features: float32 maps
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, propagate_labels(feats.half().float(), first))
    before_f, before_l = feats.clone(), first.clone()
    propagate_labels(feats, first)
    assert torch.equal(feats, before_f) and torch.equal(first, before_l)   # inputs are not modified
    big = propagate_labels(feats, first, topk=10_000)                   # top-k larger than the context
    torch.testing.assert_close(big, propagate_labels(feats, first, topk=20 * 8))
    # gradients reach the features (a method may want to back-propagate through the propagation)
    f = feats.clone().requires_grad_()
    (propagate_labels(f, first, topk=3)[-1] ** 2).sum().backward()   # squared: the maps themselves always sum to 1
    assert f.grad is not None and torch.isfinite(f.grad).all()


def test_deterministic():
    feats, first = _video(T=6)
    torch.testing.assert_close(propagate_labels(feats, first), propagate_labels(feats, first), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_matches_cpu():
    feats, first = _video(T=6, grid=(12, 14), dim=32)
    cpu = propagate_labels(feats, first)
    gpu = propagate_labels(feats.cuda(), first.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


# --- self_sup.eval.propagation -----------------------------------------------------------------------

def _colour(frames):  # [B, 3, H, W] -> [B, 3, H/8, W/8]
    return nn.functional.avg_pool2d(frames, 8) - 0.5


def _sequence(T=4):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(T, 3, 32, 40, generator=g)
    masks = torch.zeros(T, 32, 40, dtype=torch.long); masks[:, 8:24, 8:32] = 1
    return frames, masks


def test_eval_bad_inputs():
    frames, masks = _sequence()
    with pytest.raises(ValueError, match='holds no object'): evaluate_davis_masks(masks * 0, masks * 0)
    with pytest.raises(ValueError, match='gt_masks must have shape \\[T, H, W\\]'): evaluate_davis_masks(masks[0], masks[0])
    with pytest.raises(ValueError, match='first_mask holds ids from 0 to 1, expected 0..0'):
        propagate_video_masks(_colour, frames, masks[0], num_objects=0)
    with pytest.raises(ValueError, match='bound_th'): boundary_f_measure(masks, masks, bound_th=0)
    with pytest.raises(ValueError, match='non-empty'): davis_statistics(torch.tensor([]))
    with pytest.raises(ValueError, match='batch_size'): video_patch_features(_colour, frames, batch_size=0)
    with pytest.raises(ValueError, match='\\(name, frames, masks\\) or \\(frames, masks\\)'):
        evaluate_davis(_colour, [(frames,)])
    wrong_n = lambda x: (torch.rand(len(x), 7, 4), (4, 5))
    with pytest.raises(ValueError, match='tokens must have shape \\[B, h\\*w, D\\] = \\[B, 20, D\\]'): video_patch_features(wrong_n, frames)
    calls = []
    def changing_grid(x):
        calls.append(1)
        return torch.rand(len(x), 3, 4, 5 + len(calls))
    with pytest.raises(ValueError, match='grid'): video_patch_features(changing_grid, frames, batch_size=2)


def test_training_flag_restored_after_an_error():
    class Broken(nn.Module):
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.ones(()))
        def forward(self, x): raise RuntimeError('boom')
    m = Broken().train()
    with pytest.raises(RuntimeError, match='boom'): video_patch_features(m, _sequence()[0])
    assert m.training


def test_void_in_first_mask_and_dict_outputs():
    frames, masks = _sequence(T=5)
    masks[:, 0, :] = 255                                                # void rows are background
    out = lambda x: {'tokens': _colour(x).flatten(2).transpose(1, 2), 'grid': (4, 5)}
    res = evaluate_davis_sequence(out, frames, masks[0], masks, name='void')
    assert res.num_objects == 1 and res.J.shape == (1, 3) and res.masks.max() <= 1
    summary, results = evaluate_davis(out, [{'name': 'a', 'frames': frames, 'masks': masks}, (frames, masks)])
    assert [r.name for r in results] == ['a', '1'] and 0 <= summary['J&F-Mean'] <= 1


def test_unannotated_davis_frames_are_skipped(tmp_path):
    # DAVIS marks frames without an annotation file with -1; they must be left out of J and F (as the
    # toolkit, which scores only the annotation files that exist), not scored as background
    from self_sup.data.davis import DAVIS, make_builtin_davis
    root = make_builtin_davis(tmp_path/'davis', size=(48, 64), n_frames=6)
    full = DAVIS(root, sequences=['cup-rocket'])[0]
    for stem in ('00002', '00004'): (root/'Annotations/480p/cup-rocket'/f'{stem}.png').unlink()
    sparse = DAVIS(root, sequences=['cup-rocket'])[0]
    assert (sparse['masks'][[2, 4]] == -1).all() and (sparse['masks'][[0, 1, 3, 5]] >= 0).all()
    pred = full['masks'].clone(); pred[[2, 4]] = 1                      # the object everywhere where nobody annotated
    res = evaluate_davis_masks(pred, sparse['masks'])
    assert res.frames == [1, 3]                                         # annotated 0, 1, 3, 5 less the first and last
    torch.testing.assert_close(res.J, evaluate_davis_masks(pred, full['masks']).J[:, [0, 2]])
    assert res.J.min() == 1 and res.F.min() == 1
    _, results = evaluate_davis(lambda x: torch.nn.functional.avg_pool2d(x, 8), [sparse])
    assert results[0].frames == [1, 3] and results[0].masks.shape == (6, 48, 64)
    with pytest.raises(ValueError, match='first_mask is -1 everywhere'):
        propagate_video_masks(_colour, sparse['frames'], sparse['masks'][2])


def test_progress_bars_over_frames(monkeypatch, capsys):
    frames, masks = _sequence(T=5)
    monkeypatch.setenv('SELF_SUP_PROGRESS', '1')
    propagate_video_masks(_colour, frames, masks[0], batch_size=2)
    err = capsys.readouterr().err
    assert 'frame features' in err and 'propagating' in err
    propagate_labels(*_video())                                         # off by default (TimeTuning calls it in every step)
    assert 'propagating' not in capsys.readouterr().err
    monkeypatch.setenv('SELF_SUP_PROGRESS', '0')
    propagate_video_masks(_colour, frames, masks[0])
    assert capsys.readouterr().err == ''


def test_uint8_masks_with_void_pixels_score_like_long_ones():
    # PNG annotations load as uint8, where 255 marks void pixels: they must not read as -1 (frame not annotated)
    _, masks = _sequence()
    pred, gt = masks.clone(), masks.clone()
    pred[:, 20:24, 8:16] = 0; gt[:, 0, 0] = 255
    expected = evaluate_davis_masks(pred, gt)
    got = evaluate_davis_masks(pred.to(torch.uint8), gt.to(torch.uint8))
    assert got.frames == expected.frames == [1, 2]
    torch.testing.assert_close((got.J, got.F), (expected.J, expected.F))
