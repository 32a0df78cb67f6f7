"Pictures and explorers of self_sup.viz: figures with the expected panels for small inputs, clear errors for bad ones."
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from self_sup.augment import ViewTransform, normalize
from self_sup.viz.attention import attention_mass_mask, plot_attention, plot_backbone_attention, plot_object_maps, prepare_image
from self_sup.viz.core import as_display_image, object_colours, overlay, panel_grid, resize_maps
from self_sup.viz.explorers import augmentation_explorer, plot_sinkhorn, sinkhorn_explorer, use_static, video_explorer
from self_sup.viz.features import embed_2d, plot_embedding, plot_neurons, visualize_neuron, visualize_neurons
from self_sup.viz.predictions import plot_patch_predictions, predict_probs
from self_sup.viz.tracking import plot_tracked_objects


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close('all')


def n_images(fig): return sum(len(ax.images) for ax in fig.axes)
def visible_axes(fig): return [ax for ax in fig.axes if ax.axison]


# ---------------------------------------------------------------- core
def test_display_image_forms():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    ref = rgb.astype(np.float32) / 255
    np.testing.assert_allclose(as_display_image(rgb), ref)
    np.testing.assert_allclose(as_display_image(PIL.Image.fromarray(rgb)), ref)
    t = torch.from_numpy(ref).permute(2, 0, 1)
    np.testing.assert_allclose(as_display_image(t), ref, atol=1e-6)
    np.testing.assert_allclose(as_display_image(normalize(t)), ref, atol=1e-5)
    assert as_display_image(np.zeros((5, 7), bool)).shape == (5, 7, 3)
    assert as_display_image(torch.rand(4, 6, 6)).shape == (6, 6, 3)          # alpha dropped


@pytest.mark.parametrize('bad, message', [(torch.rand(2, 3, 4, 4), '[H, W] or [C, H, W]'), (np.zeros((2, 3, 4, 5)), '[H, W] or [H, W, C]'),
                                          (torch.rand(2, 4, 4), '1, 3 or 4 channels, got 2'), ('astronaut', 'got str')])
def test_display_image_errors(bad, message):
    with pytest.raises((ValueError, TypeError), match=message.replace('[', r'\[').replace(']', r'\]')): as_display_image(bad)


def test_overlay_and_grid():
    img = torch.zeros(3, 8, 8)
    labels = torch.zeros(4, 4, dtype=torch.long); labels[:2] = 2
    out = overlay(img, labels, alpha=1.0)
    np.testing.assert_allclose(out[0, 0], object_colours(2)[1])
    np.testing.assert_allclose(out[7, 7], 0)
    assert overlay(img, torch.rand(3, 4, 4)).shape == (8, 8, 3)
    with pytest.raises(ValueError, match='integer label map'): overlay(img, torch.rand(4, 4))
    with pytest.raises(ValueError, match=r'\[\.\.\., h, w\]'): resize_maps(torch.zeros(3), (2, 2))
    fig, axes = panel_grid(7, ncols=3)
    assert len(axes) == 7 and len(fig.axes) == 9 and len(visible_axes(fig)) == 7


# ---------------------------------------------------------------- attention
def test_plot_attention_panels():
    img = torch.rand(3, 64, 96)
    maps = torch.rand(4, 4, 6)
    fig = plot_attention(img, maps)
    assert isinstance(fig, Figure) and len(fig.axes) == 5 and n_images(fig) == 5
    fig = plot_attention(img, maps, heads=[1, 3], show_mean=True, overlay=True)
    assert len(fig.axes) == 4 and n_images(fig) == 1 + 2 * 3
    assert len(plot_attention(img, maps[0], threshold=0.5).axes) == 2


@pytest.mark.parametrize('maps, kwargs, message', [
    (torch.rand(4, 6, 6), {}, 'attention maps of 6x6 do not have the aspect ratio of the 64x96 image'),
    (torch.rand(2, 4, 4, 6), {}, r'must be \[heads, h, w\]'),
    (torch.rand(4, 4, 6), dict(heads=[4]), r'heads \[4\] do not exist: the maps have 4 heads'),
    (torch.rand(4, 4, 6), dict(threshold=2.0), r'threshold must lie in \[0, 1\]')])
def test_plot_attention_errors(maps, kwargs, message):
    with pytest.raises(ValueError, match=message): plot_attention(torch.rand(3, 64, 96), maps, **kwargs)


def test_attention_mass_mask_keeps_the_mass():
    maps = torch.rand(5, 3, 4) ** 3
    keep = attention_mass_mask(maps, 0.7)
    kept = (maps * keep).sum((1, 2)) / maps.sum((1, 2))
    assert (kept >= 0.7 - 1e-6).all()
    # dropping the smallest kept patch loses the property: the set is minimal
    for m, k in zip(maps, keep):
        smallest = m[k].min()
        assert ((m * k).sum() - smallest) / m.sum() < 0.7


def test_plot_backbone_attention_on_a_tiny_vit():
    from self_sup.models import create_backbone
    torch.manual_seed(0)
    vit = create_backbone('vit_tiny_patch16', depth=1).train()
    fig = plot_backbone_attention(vit, np.zeros((40, 60, 3), np.uint8), size=32)          # 32x48 -> 2x3 patches, 3 heads
    assert len(fig.axes) == 4 and vit.training
    assert prepare_image(torch.rand(3, 50, 70), size=None, multiple=16).shape == (3, 48, 64)
    with pytest.raises(ValueError, match='needs a ViT Backbone'): plot_backbone_attention(create_backbone('small_cnn'), torch.rand(3, 28, 28))


def test_plot_object_maps():
    img = torch.rand(3, 32, 32)
    maps = torch.rand(3, 4, 4)
    assert len(plot_object_maps(img, maps).axes) == 5
    assert len(plot_object_maps(img, maps, masks=None).axes) == 4
    with pytest.raises(ValueError, match=r'masks must be \[k, h, w\] with k = 3'): plot_object_maps(img, maps, masks=torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='titles has 1 entries for 3 maps'): plot_object_maps(img, maps, titles=['a'])


# ---------------------------------------------------------------- tracking
def test_plot_tracked_objects_forms():
    frames = torch.rand(5, 3, 16, 24)
    labels = torch.randint(0, 3, (5, 16, 24))
    fig = plot_tracked_objects(frames, labels)
    assert len(fig.axes) == 5 and n_images(fig) == 5
    fig = plot_tracked_objects(frames, torch.rand(5, 2, 4, 6), max_frames=3, contours=True, object_names=['a', 'b'])
    assert len(fig.axes) == 3
    assert len(plot_tracked_objects(frames, labels, frame_ids=[0, -1]).axes) == 2


@pytest.mark.parametrize('masks, kwargs, message', [
    (torch.randint(0, 2, (4, 16, 24)), {}, 'masks hold 4 frames but frames hold 5'),
    (torch.rand(5, 16, 24), {}, r'pass masks\[:, None\]'),
    (torch.randint(0, 2, (5, 16, 16)), {}, 'do not have the aspect ratio'),
    (torch.randint(0, 2, (5, 2, 16, 24, 1)), {}, r'label maps \[T, H, W\] or object masks \[T, k, H, W\]'),
    (torch.randint(0, 3, (5, 16, 24)), dict(frame_ids=[7]), r'frame_ids \[7\] are out of range'),
])
def test_plot_tracked_objects_errors(masks, kwargs, message):
    with pytest.raises(ValueError, match=message): plot_tracked_objects(torch.rand(5, 3, 16, 24), masks, **kwargs)


# ---------------------------------------------------------------- predictions
def test_plot_patch_predictions():
    patches = torch.rand(5, 3, 12, 12)
    probs = torch.rand(5, 7).softmax(-1)
    fig = plot_patch_predictions(patches, probs, [f'class {i}' for i in range(7)], k=5, ncols=3, labels=[0, 1, 2, 3, 4])
    assert len(fig.axes) == 12 and len(visible_axes(fig)) == 10 and n_images(fig) == 5
    assert [b.get_width() for b in fig.axes[1].patches] == pytest.approx(probs[0].topk(5).values.tolist())


@pytest.mark.parametrize('kwargs, message', [
    (dict(probs=torch.randn(5, 7)), 'for logits pass logits.softmax'),
    (dict(probs=torch.rand(4, 7).softmax(-1)), '5 patches but 4 rows of probabilities'),
    (dict(class_names=['a', 'b']), 'class_names has 2 names but probs have 7 classes'),
    (dict(k=0), r'k must be an integer between 1 and the number of classes \(7\)'),
    (dict(labels=[9, 0, 0, 0, 0]), r'labels must be class indices in \[0, 7\)'),
    (dict(patches=torch.rand(3, 12, 12)), r'patches must be a tensor \[N, C, H, W\]'),
])
def test_plot_patch_predictions_errors(kwargs, message):
    args = dict(patches=torch.rand(5, 3, 12, 12), probs=torch.rand(5, 7).softmax(-1)) | kwargs
    with pytest.raises(ValueError, match=message): plot_patch_predictions(**args)


def test_predict_probs_restores_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.BatchNorm1d(3)).train()
    p = predict_probs(model, torch.rand(7, 3, 2, 2), batch_size=2)
    assert p.shape == (7, 3) and torch.allclose(p.sum(-1), torch.ones(7)) and model.training


# ---------------------------------------------------------------- features
def test_visualize_neurons_on_a_small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    imgs = visualize_neurons(net, '2', [0, 5], image_size=12, steps=8)
    assert imgs.shape == (2, 1, 12, 12) and 0 <= imgs.min() and imgs.max() <= 1
    assert all(p.grad is None for p in net.parameters())
    assert visualize_neuron(net, net[4], 3, image_size=(8, 10), steps=2).shape == (1, 8, 10)
    fig = plot_neurons(imgs, titles=['a', 'b'])
    assert len(fig.axes) == 2 and n_images(fig) == 2
    with pytest.raises(ValueError, match=r"units \[6\] do not exist: the layer has 6 units"): visualize_neurons(net, '2', 6, steps=1)
    with pytest.raises(ValueError, match="the model has no layer 'fc'"): visualize_neurons(net, 'fc', 0, steps=1)
    with pytest.raises(ValueError, match='steps must be a positive number'): visualize_neurons(net, '2', 0, steps=0)


def test_embeddings():
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.arange(40) % 4
    assert embed_2d(x).shape == (40, 2) and embed_2d(x[:12], 'tsne').shape == (12, 2)
    fig = plot_embedding({'a': x, 'b': x + 1}, y, class_names='wxyz')
    assert len(fig.axes) == 2 and all(len(ax.collections) == 1 for ax in fig.axes)
    assert len(plot_embedding(x[:15], method='tsne').axes) == 1
    with pytest.raises(ValueError, match='labels has 3 entries but the features 40 samples'): plot_embedding(x, y[:3])
    with pytest.raises(ValueError, match="method must be one of"): plot_embedding(x, method='umap')
    with pytest.raises(ValueError, match='NaN or Inf'): embed_2d(torch.full((5, 3), float('nan')))


# ---------------------------------------------------------------- explorers
def test_use_static_rule(monkeypatch):
    monkeypatch.setenv('SELF_SUP_STATIC', '1'); assert use_static() is True
    monkeypatch.setenv('SELF_SUP_STATIC', '0'); assert use_static() is False
    assert use_static(True) is True
    monkeypatch.delenv('SELF_SUP_STATIC'); assert use_static() is True           # pytest is no IPython kernel
    monkeypatch.setenv('SELF_SUP_STATIC', 'sometimes')
    with pytest.raises(ValueError, match='SELF_SUP_STATIC must be'): use_static()


def test_explorers_static_are_figures(monkeypatch):
    monkeypatch.delenv('SELF_SUP_STATIC', raising=False)
    fig = sinkhorn_explorer(torch.randn(20, 4))
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    frames, labels = torch.rand(6, 3, 16, 24), torch.randint(0, 3, (6, 16, 24))
    fig = video_explorer(frames, labels, max_frames=4)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    fig = augmentation_explorer(torch.rand(3, 40, 40), {'crop': ViewTransform(size=16)}, n_views=3)
    assert isinstance(fig, Figure) and sum(ax.has_data() for ax in fig.axes) == 3
    assert plt.get_fignums() == []                                              # returned closed: shown once as a cell's value


def test_explorers_as_widgets():
    pytest.importorskip('ipywidgets')
    w = sinkhorn_explorer(torch.randn(20, 4), static=False)
    first = w.figure
    w.controls['eps'].value = 0.5
    assert w.figure is not first and 'eps = 0.5' in w.figure.axes[0].get_title()
    frames, masks = torch.rand(4, 3, 16, 24), torch.rand(4, 2, 4, 6)
    w = video_explorer(frames, masks, static=False)
    w.controls['t'].value = 3
    assert w.figure.axes[0].get_title() == 'frame 3 of 4'
    w = augmentation_explorer(torch.rand(3, 40, 40), {'crop': ViewTransform(size=16), 'big': ViewTransform(size=24)}, n_views=2, static=False)
    w.controls['name'].value = 'big'
    assert w.values() == {'name': 'big', 'seed': 0}
    w.button.click()
    assert w.values()['seed'] == 1


@pytest.mark.parametrize('call, message', [
    (lambda: sinkhorn_explorer(torch.rand(2, 3, 4), static=True), r'scores must be \[N, K\]'),
    (lambda: plot_sinkhorn(torch.rand(5, 3), n_iters=0), 'n_iters must be an integer >= 1'),
    (lambda: video_explorer(torch.rand(3, 16, 24), static=True), r'frames must be a tensor \[T, C, H, W\]'),
    (lambda: video_explorer(torch.rand(4, 3, 16, 24), torch.randint(0, 2, (3, 16, 24)), static=True), 'masks hold 3 frames but frames hold 4'),
    (lambda: augmentation_explorer(torch.rand(3, 16, 16), {}, static=True), 'at least one transform'),
])
def test_explorer_errors(call, message):
    with pytest.raises(ValueError, match=message): call()
