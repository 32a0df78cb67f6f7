"The built-in objects task (self_sup.data.objects): determinism across processes, the loader's registry, DataLoader workers, bad inputs."
import subprocess, sys

import pytest
import torch
from torch.utils.data import DataLoader

from self_sup.data.images import pretraining_images
from self_sup.data.objects import OBJECT_SPLITS, ObjectImages, object_images


def test_same_pixels_in_a_fresh_process():
    code = "from self_sup.data.objects import object_images; x, y, m = object_images('val'); print(int(x.long().sum()), int(y.sum()), int(m.sum()))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    x, y, m = object_images('val')
    assert list(map(int, out)) == [int(x.long().sum()), int(y.sum()), int(m.sum())]


def test_splits_partition_train():
    assert {s: len(object_images(s)[0]) for s in OBJECT_SPLITS} == OBJECT_SPLITS
    tr = object_images('train')[0]
    assert torch.equal(torch.cat([object_images('train_fit')[0], object_images('val')[0]]), tr)


def test_every_image_method_accepts_objects():
    from self_sup.methods.dino import DINOConfig
    from self_sup.methods.moco import MoCoConfig
    from self_sup.methods.rotnet import RotNetConfig
    from self_sup.methods.simclr import SimCLRConfig
    from self_sup.methods.swav import SwAVConfig
    for cls in (RotNetConfig, SimCLRConfig, MoCoConfig, SwAVConfig, DINOConfig):
        for preset in ('cpu', 'objects'):
            assert cls(preset=preset, dataset='objects').dataset == 'objects'
        assert cls(preset='objects').dataset == 'objects'


def test_pretraining_images_and_workers():
    ds = pretraining_images('objects', split='test', transform=lambda im: torch.tensor(list(im.size)))
    assert isinstance(ds, ObjectImages) and len(ds) == 1000
    batches = list(DataLoader(ds, batch_size=500, num_workers=2))
    assert [b[0].shape for b in batches] == [torch.Size([500, 2])] * 2
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)


def test_bad_split():
    with pytest.raises(ValueError, match="split must be one of .* got 'validation'"):
        ObjectImages('validation')
