"""self_sup.models: bad names, no downloads, and load_weights on checkpoints written in each real format."""
import copy, functools, re

import pytest
import timm
import torch
import torchvision
from torch import nn

from self_sup.models import Backbone, LoadResult, available_backbones, create_backbone, load_weights

X = torch.rand(2, 3, 32, 32)


@functools.lru_cache(maxsize=None)
def _made(name, seed, **kw):
    torch.manual_seed(seed)
    return create_backbone(name, **kw).eval()

def tiny_vit(seed=0, **kw):
    "A two-block ViT-Tiny (the real one's key names at a fraction of the cost); a fresh copy, so tests may change it."
    return copy.deepcopy(_made('vit_tiny_patch16', seed, depth=2, **kw))

def resnet18(seed=0, **kw):
    return copy.deepcopy(_made('resnet18', seed, **kw))


def timm_vit():
    return timm.create_model('vit_tiny_patch16_224', depth=2, dynamic_img_size=True).eval()  # with its 1000-class head


def same(a: nn.Module, b: nn.Module, x=X):
    with torch.no_grad(): return torch.allclose(a(x), b(x), atol=1e-6)


# --- names and no downloads ---------------------------------------------------------------------------

def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError) as e: create_backbone('vit_large_patch14')
    msg = str(e.value)
    assert "'vit_large_patch14'" in msg
    for name in available_backbones(): assert name in msg


def test_full_timm_names_are_accepted():
    assert create_backbone('vit_tiny_patch16_224', depth=1).name == 'vit_tiny_patch16'


@pytest.mark.parametrize('pretrained', [True, 'imagenet'])
def test_pretrained_refuses_to_download(pretrained, monkeypatch):
    def no_network(*a, **k): raise AssertionError('tried to download')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_network)
    with pytest.raises(ValueError, match=r"never downloads weights.*load_weights\(backbone, '/path/to/checkpoint.pth'\)"):
        create_backbone('resnet18', pretrained=pretrained)


def test_num_classes_is_refused():
    with pytest.raises(ValueError, match='no classifier'): create_backbone('resnet18', num_classes=10)


def test_small_cnn_rejects_unknown_keywords():
    with pytest.raises(TypeError, match=r"got \['img_size'\]"): create_backbone('small_cnn', img_size=28)


# --- load_weights: the formats ------------------------------------------------------------------------

def test_timm_state_dict_with_classifier_head(tmp_path):
    src = timm_vit()
    torch.save(src.state_dict(), tmp_path / 'vit.pth')
    b = tiny_vit()
    res = load_weights(b, tmp_path / 'vit.pth')
    assert isinstance(res, LoadResult)
    assert sorted(res.ignored) == ['head.bias', 'head.weight'] and not res.missing and not res.unexpected
    with torch.no_grad(): assert torch.allclose(b(X), src.forward_head(src.forward_features(X), pre_logits=True), atol=1e-6)


def test_timm_training_checkpoint_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    src = timm_vit()
    torch.save({'epoch': 3, 'arch': 'vit_tiny_patch16_224', 'state_dict': src.state_dict()}, tmp_path / 'last.pth.tar')
    b = tiny_vit()
    load_weights(b, tmp_path / 'last.pth.tar')
    with torch.no_grad(): assert torch.allclose(b(X), src.forward_head(src.forward_features(X), pre_logits=True), atol=1e-6)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / 'model.safetensors'))
    b2 = tiny_vit()
    load_weights(b2, tmp_path / 'model.safetensors')
    assert same(b, b2)


def test_torchvision_resnet18(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a mix-up of buffers would show
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d): m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / 'resnet18.pth')
    b = resnet18()
    res = load_weights(b, tmp_path / 'resnet18.pth')
    assert sorted(res.ignored) == ['fc.bias', 'fc.weight'] and not res.missing
    tv.fc = nn.Identity(); tv.eval()
    x = torch.rand(2, 3, 64, 64)
    assert same(b, tv, x)  # torchvision's pooled features are our embedding: the key names agree


def test_torchvision_resnet50_keys_match(tmp_path):
    # the released torchvision/DINO ResNet-50 files predate BN's num_batches_tracked buffer: leave it out
    sd = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items() if not k.endswith('num_batches_tracked')}
    torch.save(sd, tmp_path / 'resnet50.pth')
    res = load_weights(create_backbone('resnet50'), tmp_path / 'resnet50.pth')
    assert not res.missing and not res.unexpected and len(res.loaded) == 320 - 2 - 53


def test_dino_released_backbone_and_ddp_teacher(tmp_path):
    # dino_deitsmall16_pretrain.pth style: a plain state dict of the ViT, no head
    src = tiny_vit(seed=1)
    torch.save(src.model.state_dict(), tmp_path / 'dino_vit.pth')
    b = tiny_vit()
    assert load_weights(b, tmp_path / 'dino_vit.pth').ignored == []
    assert same(b, src)
    # a DINO checkpoint.pth of a ResNet (teacher wrapped in DDP because it has batch norms) with head keys
    r = resnet18(seed=1)
    sd = {f'module.backbone.{k}': v for k, v in r.model.state_dict().items()}
    sd.update({'module.head.mlp.0.weight': torch.zeros(4, 512), 'module.head.last_layer.weight_g': torch.ones(8, 1)})
    torch.save({'teacher': sd, 'student': {}, 'epoch': 1, 'optimizer': {}}, tmp_path / 'checkpoint.pth')
    r2 = resnet18()
    res = load_weights(r2, tmp_path / 'checkpoint.pth')
    assert sorted(res.ignored) == ['head.last_layer.weight_g', 'head.mlp.0.weight']
    assert same(r, r2, torch.rand(2, 3, 64, 64))


def test_own_backbone_state_dict_and_weights_argument(tmp_path):
    src = create_backbone('small_cnn', in_chans=1).eval()
    torch.save(src.state_dict(), tmp_path / 'cnn.pth')  # keys 'model.stages...'
    b = create_backbone('small_cnn', in_chans=1, weights=tmp_path / 'cnn.pth').eval()
    assert same(b, src, torch.rand(2, 1, 28, 28))


def test_prefix_picks_a_sub_model(tmp_path):
    # MoCo v3 style: two encoders in one state dict
    a, m = tiny_vit(seed=1), tiny_vit(seed=2)
    sd = {**{f'module.base_encoder.{k}': v for k, v in a.model.state_dict().items()},
          **{f'module.momentum_encoder.{k}': v for k, v in m.model.state_dict().items()}}
    torch.save({'state_dict': sd, 'epoch': 1}, tmp_path / 'moco.pth')
    with pytest.raises(ValueError, match='prefix='): load_weights(tiny_vit(), tmp_path / 'moco.pth')
    b = tiny_vit()
    load_weights(b, tmp_path / 'moco.pth', prefix='module.momentum_encoder.')
    assert same(b, m)
    with pytest.raises(ValueError, match="no key .* starts with prefix 'encoder_q.'"):
        load_weights(b, tmp_path / 'moco.pth', prefix='encoder_q.')


def test_pos_embed_resampled_for_another_grid(tmp_path):
    torch.save(timm_vit().state_dict(), tmp_path / 'vit224.pth')
    b = tiny_vit(img_size=64)
    assert load_weights(b, tmp_path / 'vit224.pth').resized == ['pos_embed']
    assert b.model.pos_embed.shape == (1, 17, 192)


# --- load_weights: what goes wrong --------------------------------------------------------------------

def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'): load_weights(tiny_vit(), tmp_path / 'nope.pth')
    (tmp_path / 'bad.pth').write_bytes(b'this is not a checkpoint')
    with pytest.raises(ValueError, match='could not be read'): load_weights(tiny_vit(), tmp_path / 'bad.pth')
    (tmp_path / 'bad.safetensors').write_bytes(b'nor is this')
    with pytest.raises(ValueError, match='could not be read as safetensors'): load_weights(tiny_vit(), tmp_path / 'bad.safetensors')
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match='holds a list, expected a state dict'): load_weights(tiny_vit(), tmp_path / 'list.pth')


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / 'resnet18.pth')
    with pytest.raises(ValueError) as e: load_weights(tiny_vit(), tmp_path / 'resnet18.pth')
    msg = str(e.value)
    assert "does not fit vit_tiny_patch16" in msg
    assert re.search(r'missing keys \d+ \(cls_token, pos_embed, patch_embed.proj.weight', msg), msg
    assert re.search(r'unexpected keys 120 \(conv1.weight, bn1.weight', msg), msg  # 122 minus the ignored fc
    assert 'strict=False' in msg


def test_strict_false_loads_what_matches(tmp_path):
    src = tiny_vit(seed=1)
    sd = {k: v for k, v in src.model.state_dict().items() if not k.startswith('blocks.1.')}
    sd['extra.weight'] = torch.zeros(3)
    torch.save(sd, tmp_path / 'partial.pth')
    with pytest.raises(ValueError, match=r'missing keys 12 \(blocks.1.norm1.weight.*unexpected keys 1 \(extra.weight\)'):
        load_weights(tiny_vit(), tmp_path / 'partial.pth')
    b = tiny_vit()
    res = load_weights(b, tmp_path / 'partial.pth', strict=False)
    assert len(res.missing) == 12 and res.unexpected == ['extra.weight']
    assert torch.equal(b.model.blocks[0].attn.qkv.weight, src.model.blocks[0].attn.qkv.weight)
    # nothing at all that fits is an error even when not strict
    torch.save({'foo.weight': torch.zeros(2)}, tmp_path / 'alien.pth')
    with pytest.raises(ValueError, match='no key of checkpoint .* fits vit_tiny_patch16'):
        load_weights(tiny_vit(), tmp_path / 'alien.pth', strict=False)


def test_shape_mismatch_names_the_tensors(tmp_path):
    torch.save(create_backbone('vit_small_patch16', depth=2).state_dict(), tmp_path / 'vit_s.pth')
    with pytest.raises(ValueError, match=r'tensors have other shapes .*cls_token \(1, 1, 384\) vs \(1, 1, 192\)'):
        load_weights(tiny_vit(), tmp_path / 'vit_s.pth')
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / 'r18.pth')
    with pytest.raises(ValueError, match=r'conv1.weight \(64, 3, 7, 7\) vs \(64, 1, 7, 7\)'):
        load_weights(create_backbone('resnet18', in_chans=1), tmp_path / 'r18.pth')


def test_checkpoint_key_errors(tmp_path):
    torch.save({'teacher': tiny_vit().model.state_dict(), 'epoch': 1}, tmp_path / 'ckpt.pth')
    with pytest.raises(ValueError, match=r"no state dict under 'student'; its top-level keys are \['teacher', 'epoch'\]"):
        load_weights(tiny_vit(), tmp_path / 'ckpt.pth', checkpoint_key='student')
    torch.save({'weights': tiny_vit().model.state_dict(), 'epoch': 1}, tmp_path / 'odd.pth')
    with pytest.raises(ValueError, match=r"no tensors at its top level.*\['weights', 'epoch'\].*checkpoint_key="):
        load_weights(tiny_vit(), tmp_path / 'odd.pth')
    load_weights(tiny_vit(), tmp_path / 'odd.pth', checkpoint_key='weights')


def test_load_into_a_plain_module(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save({'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()}}, tmp_path / 'net.pth')
    net2 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    load_weights(net2, tmp_path / 'net.pth')
    assert same(net, net2, torch.rand(5, 3))


@pytest.mark.parametrize('kwargs', [dict(patch_size=0), dict(patch_size=-2), dict(img_size=0), dict(in_chans=0)])
def test_vit_sizes_must_be_positive_integers(kwargs):
    # patch_size=0 used to end in a ZeroDivisionError deep inside timm
    with pytest.raises(ValueError, match=f"{list(kwargs)[0]} must be a positive integer"):
        create_backbone('vit_tiny_patch16', **kwargs)
