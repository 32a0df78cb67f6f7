"eval.objects from the installed package: a backbone end to end on a small tour, uint8 frames, DAVIS items, bad inputs."
import pytest
import torch

from self_sup.data.davis import DAVIS
from self_sup.data.walking_tour import make_walking_tour, walking_tour
from self_sup.eval.objects import object_crops, object_knn
from self_sup.models import create_backbone


@pytest.fixture(scope='module')
def tour():
    return make_walking_tour((48, 64), 80, seed=2)


def test_vit_backbone_on_a_davis_item(tmp_path):
    torch.manual_seed(0)
    vit = create_backbone('vit_tiny_patch16', patch_size=8, depth=1, img_size=32)
    seq = DAVIS(walking_tour((48, 64), 80, seed=2, cache_dir=tmp_path))[0]
    r = object_knn(vit, seq, size=32, gap=8, every=4, min_pixels=20)
    assert r['chance'] == 25.0 and r['n_train'] > 20 and r['n_test'] > 20 and 0 <= r['object kNN'] <= 100
    assert vit.training                                          # extract_features restores the mode


def test_uint8_frames_give_the_same_crops(tour):
    frames, masks, _ = tour
    a = object_crops(frames, masks, [0, 5])
    b = object_crops((frames * 255).round().byte(), masks, [0, 5])
    assert torch.equal(a[1], b[1]) and (a[0] - b[0]).abs().max() < 1 / 255 + 1e-6


def test_bad_inputs(tour):
    frames, masks, _ = tour
    pixels = lambda x: x.flatten(1)
    with pytest.raises(ValueError, match='leave no frames'):
        object_knn(pixels, (frames, masks), gap=200)
    with pytest.raises(ValueError, match='size must be'):
        object_crops(frames, masks, [0], size=0)
    with pytest.raises(ValueError, match='k'):
        object_knn(pixels, (frames, masks), gap=8, k=10_000)
