"""RotNet: bad configs, the command-line fields, `train` end to end on the CPU from a CIFAR-10 folder in its
real on-disk format and from an image folder, an exact resume under the step schedule, and the forward
hooks of `IntermediateFeatures` when the network fails. (The loss against its naive reference, the
network's block sizes, the per-depth features and the demo are in nbs/10_methods.rotnet.ipynb.)"""
import argparse

import pytest
import torch
from PIL import Image
from torch import nn

from self_sup.cli import add_dataclass_arguments, dataclass_from_args, field_help
from self_sup.data.images import write_cifar
from self_sup.methods.rotnet import (IntermediateFeatures, NetworkInNetwork, RotNet, RotNetConfig, make_trainer,
                                     rotnet_dataset, rotnet_transform, train)
from self_sup.train import read_metrics


@pytest.mark.parametrize('kwargs, message', [
    (dict(batch_size=0), 'batch_size must be an integer >= 1, got 0'),
    (dict(nin_width=2.5), 'nin_width must be an integer >= 1, got 2.5'),
    (dict(lr=-0.1), 'lr must be a positive number, got -0.1'),
    (dict(weight_decay=-1), 'weight_decay must be a non-negative number, got -1'),
    (dict(lr_milestones=(60, 0)), 'lr_milestones must be increasing positive numbers of epochs, got (60, 0)'),
    (dict(lr_milestones='soon'), "lr_milestones must be numbers of epochs, got 'soon'"),
    (dict(lr_schedule='linear'), "lr_schedule must be one of ['step', 'cosine'], got 'linear'"),
    (dict(flip_p=1.5), 'flip_p must lie in [0, 1], got 1.5'),
    (dict(mean=(0.5, 0.5)), 'mean must be 1 or 3 numbers, got (0.5, 0.5)'),
    (dict(resize=0), 'resize must be an integer >= 1, got 0'),
    (dict(crop_padding=-4), 'crop_padding must be an integer >= 0, got -4'),
    (dict(preset='gpu'), "preset must be one of ['paper', 'cpu', 'objects'], got 'gpu'"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError) as e:
        RotNetConfig(**kwargs)
    assert message in str(e.value)


def test_every_field_is_documented_for_the_command_line():
    helps = field_help(RotNetConfig)
    assert all(helps.get(n) for n in RotNetConfig.__dataclass_fields__), [n for n in RotNetConfig.__dataclass_fields__ if not helps.get(n)]
    parser = add_dataclass_arguments(argparse.ArgumentParser(), RotNetConfig)
    cfg = dataclass_from_args(RotNetConfig, parser.parse_args(['--preset', 'cpu', '--lr-milestones', '2', '3', '--no-nesterov', '--resize', 'none']))
    assert (cfg.lr_milestones, cfg.nesterov, cfg.resize, cfg.dataset) == ((2.0, 3.0), False, None, 'digits')


def _tiny_cifar(root, n_train=40, n_test=10):
    g = torch.Generator().manual_seed(0)
    images = lambda n: (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    write_cifar(root, (images(n_train), torch.arange(n_train) % 10), (images(n_test), torch.arange(n_test) % 10))
    return root


def test_paper_recipe_end_to_end_from_a_cifar10_folder(tmp_path):
    root = _tiny_cifar(tmp_path / 'cifar')
    cfg = RotNetConfig(data_path=str(root), nin_width=8, batch_size=8, epochs=4, lr_milestones=(2, 3), num_workers=1,
                       device='cpu', out_dir=str(tmp_path / 'run'), log_every=1)
    method = train(cfg)
    m = read_metrics(tmp_path / 'run' / 'metrics.csv')
    assert len(m['step']) == 20 and all(m['loss'] > 0)
    # the paper's step schedule: 0.1, then x 0.2 at epoch 2 and again at epoch 3 (5 steps per epoch)
    torch.testing.assert_close(torch.tensor(m['lr']), torch.tensor([0.1] * 10 + [0.02] * 5 + [0.004] * 5, dtype=torch.float64), rtol=1e-6, atol=0)
    assert isinstance(method.backbone, NetworkInNetwork) and method.backbone.embed_dim == 8
    test = rotnet_dataset(cfg, 'test')
    x, y = test[0]
    assert x.shape == (3, 32, 32) and len(test) == 10
    with torch.no_grad(): assert method.eval().predict(x[None]).shape == (1, 4)


def test_resume_continues_exactly_under_the_step_schedule(tmp_path):
    root = _tiny_cifar(tmp_path / 'cifar')
    base = dict(data_path=str(root), nin_width=8, batch_size=8, epochs=2, lr_milestones=(1,), num_workers=0, device='cpu', log_every=1)
    train(RotNetConfig(**base, out_dir=str(tmp_path / 'full')))
    train(RotNetConfig(**base, out_dir=str(tmp_path / 'cut'), max_steps=7))
    train(RotNetConfig(**base, out_dir=str(tmp_path / 'cut'), resume='auto'))
    full, cut = read_metrics(tmp_path / 'full' / 'metrics.csv'), read_metrics(tmp_path / 'cut' / 'metrics.csv')
    assert list(cut['loss']) == list(full['loss']) and list(cut['lr']) == list(full['lr'])


def test_imagenet_style_folder_with_resize(tmp_path):
    g = torch.Generator().manual_seed(0)
    for c in ('a', 'b'):
        (tmp_path / 'img' / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((torch.rand(50, 70, 3, generator=g) * 255).to(torch.uint8).numpy()).save(tmp_path / 'img' / c / f'{i}.png')
    cfg = RotNetConfig(dataset='folder', data_path=str(tmp_path / 'img'), resize=40, image_size=32, crop_padding=0, backbone='small_cnn',
                       batch_size=4, max_steps=2, num_workers=0, device='cpu')
    trainer = make_trainer(cfg)
    trainer.fit()
    assert trainer.step == 2 and trainer.method.backbone.embed_dim == 128
    assert rotnet_transform(cfg, train=False)(Image.open(tmp_path / 'img' / 'a' / '0.png')).shape == (3, 32, 32)


def test_missing_data():
    with pytest.raises(ValueError, match="data_path is required for dataset='imagenet'"):
        make_trainer(RotNetConfig(dataset='imagenet'))
    with pytest.raises(FileNotFoundError, match='CIFAR-10 files not found'):
        make_trainer(RotNetConfig(data_path='/no/such/cifar'))


class Fails(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    def forward(self, x):
        self.blocks[0](x)
        raise RuntimeError('broken network')


def test_hooks_are_removed_when_the_network_fails():
    net = Fails()
    feats = IntermediateFeatures(net)
    with pytest.raises(RuntimeError, match='broken network'):
        feats(torch.rand(1, 3, 8, 8))
    assert not any(m._forward_hooks for m in net.modules())


def test_unvisited_layer_is_reported():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Identity(), nn.Identity())
        def forward(self, x): return self.blocks[0](x)
    with pytest.raises(RuntimeError, match=r"layers \['blocks.1'\] were not called"):
        IntermediateFeatures(Skips())(torch.rand(2, 3, 4, 4))


def test_rotnet_rejects_non_square_images():
    with pytest.raises(ValueError, match='square'):
        RotNet(NetworkInNetwork(width=8))(torch.rand(2, 3, 32, 28))


def test_nin_export_rebuilds_from_the_file_alone(tmp_path):
    "RotNet's Network-In-Network is not a create_backbone name: its export names the builder, and load_export rebuilds it exactly."
    import torch
    from self_sup.methods.rotnet import NetworkInNetwork
    from self_sup.models import export_backbone, load_export, read_export_info
    torch.manual_seed(0)
    nin = NetworkInNetwork(in_chans=3, n_blocks=4, width=16).eval()
    meta = export_backbone(nin, tmp_path / 'nin.safetensors')
    assert meta['builder'] == 'self_sup.methods.rotnet.create_encoder' and meta['kwargs'] == dict(name='nin', in_chans=3, nin_blocks=4, nin_width=16)
    assert read_export_info(tmp_path / 'nin.safetensors')['architecture'] == 'nin'
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad(): assert torch.equal(load_export(tmp_path / 'nin.safetensors')(x), nin(x))
