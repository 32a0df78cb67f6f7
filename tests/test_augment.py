"""self_sup.augment: bad configurations and inputs, DataLoader workers, determinism under a seed."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from self_sup import augment
from self_sup.augment import (MultiCropTransform, SimCLRTransform, ViewTransform, cutmix, mixup, rotations,
                              to_image_tensor)

SMALL = dict(global_size=28, local_size=12, n_local=4, blur_sigma=(0.1, 0.25))


class RandomImages(Dataset):
    "A few fixed uint8 images [3, 32, 32] with labels, transformed by `transform`."
    def __init__(self, transform, n=16):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.transform = transform
    def __len__(self): return len(self.images)
    def __getitem__(self, i): return self.transform(self.images[i]), i % 10


@pytest.mark.parametrize('kwargs, message', [
    (dict(global_size=0), 'global_size must be a positive integer (pixels), got 0'),
    (dict(global_size=2.5), 'global_size must be a positive integer (pixels), got 2.5'),
    (dict(n_global=0), 'n_global must be a positive integer, got 0'),
    (dict(global_scale=(0.4, 1.2)), 'global_scale must be (min, max) with 0 < min <= max <= 1, got (0.4, 1.2)'),
    (dict(global_scale=(-0.1, 0.5)), 'global_scale must be (min, max) with 0 < min <= max <= 1, got (-0.1, 0.5)'),
    (dict(local_scale=(0.3,)), 'local_scale must be (min, max) with 0 < min <= max <= 1, got (0.3,)'),
    (dict(local_blur=-0.1), 'local_blur must lie in [0, 1], got -0.1'),
    (dict(global_blur=(1.0, 0.1, 0.5)), 'global_blur must be one probability or one per view (2), got (1.0, 0.1, 0.5)'),
    (dict(jitter=(0.4, 0.4, 0.2)), 'jitter must be 4 non-negative numbers'),
    (dict(interpolation='area'), "interpolation must be one of ['bilinear', 'bicubic', 'nearest'], got 'area'"),
    (dict(pre_size=0), 'pre_size must be a positive integer (pixels), got 0'),
    (dict(pre_size=300, pre_scale=(0.9, 0.2)), 'pre_scale must be (min, max) with 0 < min <= max <= 1, got (0.9, 0.2)'),
    (dict(blur_sigma=(0, 2)), 'blur_sigma must be (min, max) with 0 < min <= max, got (0, 2)'),
    (dict(mean=(0.5, 0.5)), 'mean must have 1 or 3 numbers, got (0.5, 0.5)'),
])
def test_multicrop_bad_config(kwargs, message):
    with pytest.raises(ValueError) as e: MultiCropTransform(**kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize('kwargs, message', [
    (dict(size=-1), 'size must be a positive integer (pixels), got -1'),
    (dict(scale=(0.08, 0.0)), 'scale must be (min, max) with 0 < min <= max <= 1, got (0.08, 0.0)'),
    (dict(strength=-1), 'strength must lie in [0, 2.5], got -1'),
    (dict(blur_p=1.5), 'blur_p must lie in [0, 1], got 1.5'),
    (dict(n_views=1.0), 'n_views must be a positive integer, got 1.0'),
])
def test_simclr_bad_config(kwargs, message):
    with pytest.raises(ValueError) as e: SimCLRTransform(**kwargs)
    assert message in str(e.value)


def test_view_bad_ratio():
    with pytest.raises(ValueError, match=r'ratio must be \(min, max\) with 0 < min <= max, got \(2, 0.5\)'):
        ViewTransform(ratio=(2, 0.5))


@pytest.mark.parametrize('image, error, message', [
    (torch.rand(32, 32, 3), ValueError, 'channels-last: use image.permute(2, 0, 1)'),
    (torch.rand(4, 32, 32), ValueError, 'expected a tensor [C, H, W] with C = 1 or 3, got shape [4, 32, 32]'),
    (torch.rand(3, 32, 32) * 255, ValueError, 'float images must lie in [0, 1]'),
    (torch.zeros(3, 32, 32, dtype=torch.int32), TypeError, 'expected a uint8 or float image, got dtype torch.int32'),
    (np.zeros((32, 32, 5), np.uint8), ValueError, 'got shape (32, 32, 5)'),
    ('astronaut.png', TypeError, 'got str'),
    (torch.zeros(3, 0, 8), ValueError, 'image has no pixels'),
])
def test_bad_images(image, error, message):
    with pytest.raises(error) as e: to_image_tensor(image)
    assert message in str(e.value)
    with pytest.raises(error) as e: MultiCropTransform(**SMALL)(image)  # the transforms check at the same boundary
    assert message in str(e.value)


def test_image_too_small_for_local_crops():
    # 0.05 of a 3x3 image is less than one pixel: RandomResizedCrop would silently fall back to a centre crop
    with pytest.raises(ValueError, match=r'image of 3x3 pixels is too small for local_scale = \(0.05, 0.4\)'):
        MultiCropTransform(**SMALL)(torch.rand(3, 3, 3))
    # a DoRA pre-crop is what the local crops are cut from, so the check applies after it
    t = MultiCropTransform(**SMALL, pre_size=4, video=True)
    with pytest.raises(ValueError, match=r'clip of 4x4 pixels is too small for local_scale'):
        t(torch.rand(2, 3, 64, 64))


def test_batch_functions_bad_inputs():
    with pytest.raises(ValueError, match='square images'): rotations(torch.rand(2, 3, 8, 6))
    with pytest.raises(ValueError, match=r'class-index targets must be \[B\]'):
        cutmix(torch.rand(2, 3, 8, 8), torch.zeros(2, 3, dtype=torch.long), num_classes=3)
    with pytest.raises(ValueError, match='alpha must be a positive number'): mixup(torch.rand(2, 3, 8, 8), alpha=-1)
    with pytest.raises(ValueError, match=r'got \[2, 3, 8, 8, 1, 1\]'): mixup(torch.rand(2, 3, 8, 8, 1, 1))


def test_transforms_pickle():
    "DataLoader workers receive the transform by pickling (spawn start method)."
    for t in (MultiCropTransform(), MultiCropTransform.swav(), MultiCropTransform.dora(), SimCLRTransform(size=32)):
        t2 = pickle.loads(pickle.dumps(t))
        assert t2 == t


def _views_equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_dataloader_two_workers_multicrop():
    ds = RandomImages(MultiCropTransform(**SMALL))
    dl = DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = list(dl)
    assert len(batches) == 4
    views, labels = batches[0]
    # default_collate turns a list of views per sample into a list of batched views, globals first
    assert isinstance(views, list) and len(views) == 6
    assert [tuple(v.shape) for v in views] == [(4, 3, 28, 28)] * 2 + [(4, 3, 12, 12)] * 4
    assert labels.tolist() == [0, 1, 2, 3]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    # workers draw different crops for different samples
    assert not torch.equal(views[0][0], views[0][1])
    # the same loader seed gives the same batches, worker for worker
    again = list(DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0)))
    assert all(_views_equal(a[0], b[0]) for a, b in zip(batches, again))
    other = list(DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(1)))
    assert not _views_equal(batches[0][0], other[0][0])


def test_dataloader_two_workers_video():
    clips = torch.randint(0, 256, (4, 3, 3, 32, 32), dtype=torch.uint8)  # 4 clips of 3 frames
    t = MultiCropTransform.dora(global_size=24, local_size=12, n_local=2, pre_size=28)
    class Clips(Dataset):
        def __len__(self): return len(clips)
        def __getitem__(self, i): return t(clips[i])
    views = next(iter(DataLoader(Clips(), batch_size=2, num_workers=2)))
    assert [tuple(v.shape) for v in views] == [(2, 3, 3, 24, 24)] + [(2, 3, 3, 12, 12)] * 2


@pytest.mark.parametrize('make', [lambda: MultiCropTransform(**SMALL), lambda: SimCLRTransform(size=24),
                                  lambda: MultiCropTransform.swav(global_size=24, local_size=12),
                                  lambda: ViewTransform(size=16, video=True, blur_p=0.5, solarize_p=0.5)])
def test_deterministic_under_seed(make):
    t = make()
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    x = x if getattr(t, 'video', False) else x[0]
    torch.manual_seed(0); a = t(x)
    torch.manual_seed(0); b = t(x)
    torch.manual_seed(1); c = t(x)
    a, b, c = ([v] if torch.is_tensor(v) else v for v in (a, b, c))
    assert _views_equal(a, b)
    assert not _views_equal(a, c)


def test_inputs_agree():
    "PIL, NumPy and tensor inputs of the same picture give the same views under the same seed."
    from PIL import Image
    arr = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    t = MultiCropTransform(**SMALL)
    outs = []
    for x in (Image.fromarray(arr), arr, torch.from_numpy(arr).permute(2, 0, 1)):
        torch.manual_seed(0); outs.append(t(x))
    assert _views_equal(outs[0], outs[1]) and _views_equal(outs[0], outs[2])
    # a float input gives the same views up to the uint8 rounding of the resized crop
    t = MultiCropTransform(**SMALL, normalize=False)
    torch.manual_seed(0); a = t(arr)
    torch.manual_seed(0); f = t(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert all((x - y).abs().mean() < 0.005 and (x - y).abs().max() < 0.1 for x, y in zip(a, f))


def test_configs_from_command_line():
    "The transforms are config dataclasses: the generated command line builds them with typed options."
    import argparse
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    p = add_dataclass_arguments(argparse.ArgumentParser(), MultiCropTransform)
    args = p.parse_args(['--n-local', '6', '--global-scale', '0.14', '1', '--global-blur', '0.5', '0.5',
                         '--interpolation', 'bilinear', '--pre-size', '300', '--no-normalize'])
    t = dataclass_from_args(MultiCropTransform, args)
    assert (t.n_local, t.global_scale, t.global_blur, t.interpolation, t.pre_size, t.normalize) == \
        (6, (0.14, 1.0), (0.5, 0.5), 'bilinear', 300, False)
    assert dataclass_from_args(MultiCropTransform, p.parse_args([])) == MultiCropTransform()
    p = add_dataclass_arguments(argparse.ArgumentParser(), SimCLRTransform)
    assert dataclass_from_args(SimCLRTransform, p.parse_args(['--size', '32', '--blur-p', 'none'])).view.blur_p == 0.0


# CutMix / MixUp: the properties, read off the outputs, and proof that these checks catch broken mixing
# (a mix that leaves the batch alone, an empty box, a box over time x height of clips, an unadjusted lam,
# the wrong partner). The notebook shows the same properties on a few seeds; here each broken variant is
# patched into the module and the checks must fail on it.

def check_cutmix(x, seed, channel_dim=1):
    "Assert CutMix's properties for one seeded call on distinct random images or clips (`channel_dim`: 1, or 2 for [B, T, C, H, W])."
    b, (h, w) = len(x), x.shape[-2:]
    mixed, y, p = cutmix(x, torch.arange(b), generator=torch.Generator().manual_seed(seed), num_classes=b, return_params=True)
    top, bottom, left, right = p.box
    box = torch.zeros(h, w, dtype=torch.bool)
    box[top:bottom, left:right] = True
    assert p.lam == 1 - box.sum().item() / (h * w), (p.lam, p.box)       # the reported lam is the box's, exactly
    changed = (mixed != x).any(channel_dim).reshape(b, -1, h, w)         # [B, frames, H, W]
    for i in range(b):
        j = int(p.index[i])
        assert torch.equal(changed[i], (box if j != i else torch.zeros_like(box)).expand_as(changed[i])), (i, j, p.box)
        assert torch.equal(mixed[i][..., box], x[j][..., box]) and torch.equal(mixed[i][..., ~box], x[i][..., ~box])
    onehot = torch.eye(b)
    assert torch.allclose(y, p.lam * onehot + (1 - p.lam) * onehot[p.index], atol=1e-12)
    return p


def check_mixup(x, seed):
    "Assert MixUp's properties for one seeded call."
    b = len(x)
    m, y, p = mixup(x, torch.arange(b), alpha=1.0, generator=torch.Generator().manual_seed(seed), num_classes=b, return_params=True)
    assert torch.equal(m, torch.stack([p.lam * x[i] + (1 - p.lam) * x[p.index[i]] for i in range(b)]))
    assert torch.allclose(m.flatten(1), y @ x.flatten(1), atol=1e-5)     # with one-hot targets, the targets are the mixing matrix
    return p


def check_all_mixing():
    g = torch.Generator().manual_seed(0)
    images, clips = torch.rand(4, 3, 12, 14, generator=g), torch.rand(3, 3, 4, 10, 12, generator=g)
    cases = [(images, 1), (clips, 1), (clips.transpose(1, 2).contiguous(), 2)]  # [B,C,H,W], [B,C,T,H,W], [B,T,C,H,W]
    for x, channel_dim in cases:
        ps = [check_cutmix(x, seed, channel_dim) for seed in range(8)]
        assert ps[0].lam < 1 and not torch.equal(cutmix(x, generator=torch.Generator().manual_seed(0)), x)
        assert 0.1 < sum(1 - p.lam for p in ps) / len(ps) < 0.6                  # boxes of about 0.3 of the image on average
    for x in (images, clips):
        ps = [check_mixup(x, seed) for seed in range(4)]
        assert 0 < ps[0].lam < 1 and not torch.allclose(mixup(x, generator=torch.Generator().manual_seed(0)), x)


def test_mixing_properties():
    check_all_mixing()


def _paste_time_x_height(images, params):
    "The distillation reference code's defect: for clips [B, C, T, H, W] the box spans time x height."
    if params.box is None: return params.lam * images + (1 - params.lam) * images[params.index]
    top, bottom, left, right = params.box
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[params.index][:, :, top:bottom, left:right]
    return mixed


def _cutmix_params_drawn_lam(batch_size, height, width, alpha=1.0, generator=None):
    "lam as drawn, not recomputed from the clipped box."
    lam = augment._sample_lam(alpha, generator)
    index = augment._randperm(batch_size, generator)
    return augment.MixParams(lam, index, augment.cutmix_box(height, width, lam, generator))


_real_mix_images = augment.mix_images
BROKEN = {
    'cutmix leaves the batch alone': ('mix_images', lambda images, params: images.clone() if params.box else _real_mix_images(images, params)),
    'empty box': ('cutmix_box', lambda height, width, lam, generator=None: (0, 0, 0, 0)),
    'box over time x height': ('mix_images', _paste_time_x_height),
    'lam not adjusted to the box': ('cutmix_params', _cutmix_params_drawn_lam),
    'pasted from the wrong image': ('mix_images', lambda images, params: _real_mix_images(images, params._replace(index=params.index.flip(0)))
                                    if params.box else _real_mix_images(images, params)),
    'mixup leaves the batch alone': ('mix_images', lambda images, params: images.clone() if params.box is None else _real_mix_images(images, params)),
    'mixup with lam 1': ('mixup_params', lambda batch_size, alpha=0.2, generator=None: augment.MixParams(1.0, torch.arange(batch_size), None)),
    'mixup blends with the wrong image': ('mix_images', lambda images, params: _real_mix_images(images, params._replace(index=params.index.flip(0)))
                                          if params.box is None else _real_mix_images(images, params)),
}


@pytest.mark.parametrize('variant', list(BROKEN))
def test_mixing_checks_catch(monkeypatch, variant):
    name, broken = BROKEN[variant]
    monkeypatch.setattr(augment, name, broken)
    with pytest.raises(AssertionError): check_all_mixing()


def test_mixing_reproducible_under_global_seed():
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(0); a, pa = cutmix(x, return_params=True)
    torch.manual_seed(0); b, pb = cutmix(x, return_params=True)
    assert torch.equal(a, b) and pa.box == pb.box and pa.lam == pb.lam
