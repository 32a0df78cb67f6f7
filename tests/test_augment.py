"""self_sup.augment: bad configurations and inputs, DataLoader workers, determinism under a seed."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

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
