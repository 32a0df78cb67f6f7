"""DINO: bad configs and batches, exact resume, 2 gloo processes equal 1 process with twice the batch,
the generated command line, and an end-to-end CPU run of `train` on the built-in digits."""
import argparse, dataclasses, warnings
from dataclasses import replace

import pytest
import torch

from self_sup.methods.dino import DINO, DINOConfig, DINOCPUConfig, dino_dataset, make_trainer, train, train_config
from self_sup.models import create_backbone
from self_sup.train import Trainer, TrainConfig
from distributed_utils import run_distributed


class Crops(torch.utils.data.Dataset):
    "Multi-crop items: 2 global 16-pixel and 2 local 8-pixel random views of a fixed random image."
    def __init__(self, n=16):
        self.x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    def __len__(self): return len(self.x)
    def __getitem__(self, i):
        x = self.x[i]
        g = [x + 0.1 * torch.randn_like(x) for _ in range(2)]
        l = [x[:, :8, :8] + 0.1 * torch.randn(3, 8, 8), x[:, 8:, 8:] + 0.1 * torch.randn(3, 8, 8)]
        return g + l, i


def tiny_dino(**kwargs):
    torch.manual_seed(0)
    backbone = create_backbone('vit_tiny_patch16', patch_size=4, depth=1, embed_dim=32, num_heads=2, img_size=16)
    return DINO(backbone, **{**dict(out_dim=16, hidden_dim=32, bottleneck_dim=8, warmup_teacher_temp_epochs=2,
                                     teacher_temp=0.06, momentum_teacher=0.9), **kwargs})


BASE = TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0.5, clip_grad=None, final_lr=0.0, seed=0)


def _losses(method, cfg, data=None):
    out = []
    Trainer(method, data or Crops(), cfg, callbacks=[lambda t: out.append(t.metrics['loss'])]).fit()
    return out


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize('kwargs, message', [
    (dict(out_dim=0), 'out_dim must be an integer >= 1, got 0'),
    (dict(n_local=-1), 'n_local must be an integer >= 0, got -1'),
    (dict(batch_size=2.5), 'batch_size must be an integer >= 1, got 2.5'),
    (dict(student_temp=0), 'student_temp must be a positive number, got 0'),
    (dict(momentum_teacher=1.5), 'momentum_teacher must lie in [0, 1], got 1.5'),
    (dict(global_scale=(0.5,)), 'global_scale must be two numbers'),
    (dict(global_scale=(0.0, 1.0)), 'global_scale must satisfy 0 < low <= high <= 1'),
    (dict(precision='16'), "precision must be one of ['32', 'bf16', 'fp16'], got '16'"),
    (dict(drop_path_rate=2.0), 'drop_path_rate must lie in [0, 1], got 2.0'),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError) as e: DINOConfig(**kwargs)
    assert message in str(e.value)


def test_missing_data_path_and_bad_folder(tmp_path):
    with pytest.raises(ValueError, match="data_path is required for dataset='imagenet'"):
        dino_dataset(DINOConfig())
    with pytest.raises(FileNotFoundError, match='nowhere'):
        dino_dataset(DINOConfig(dataset='folder', data_path=str(tmp_path / 'nowhere')))
    with pytest.raises(TypeError, match="config must be a method's config"):
        make_trainer(TrainConfig())


def test_bad_batches():
    dino = tiny_dino()
    with pytest.raises(ValueError, match='more than 2 views per image'):
        dino([torch.rand(2, 3, 16, 16)] * 2)
    with pytest.raises(ValueError, match='a list of views'):
        dino(torch.rand(2, 3, 16, 16))
    with pytest.raises(TypeError, match='backbone must be a self_sup.models.Backbone'):
        DINO(torch.nn.Linear(3, 3))


# ---------------------------------------------------------------- resume and distributed
def test_resume_is_exact(tmp_path):
    cfg = replace(BASE, epochs=3, out_dir=str(tmp_path / 'full'), checkpoint_every=100)
    full = _losses(tiny_dino(), cfg)
    first = _losses(tiny_dino(), replace(cfg, out_dir=str(tmp_path / 'cut'), max_steps=5))
    rest = _losses(tiny_dino(), replace(cfg, out_dir=str(tmp_path / 'cut'), resume='auto'))
    assert first + rest == full
    assert len(full) == 12


def _ddp(rank, world, batch):
    return _losses(tiny_dino(), replace(BASE, batch_size=batch))


def test_two_processes_equal_one_process():
    ddp = run_distributed(_ddp, world_size=2, args=(2,))
    one = _losses(tiny_dino(), BASE)
    assert len(one) == 8
    for losses in ddp:
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(one), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- command line and end-to-end run
@pytest.mark.parametrize('n', [64, 32])
def test_explicit_value_wins_over_the_cpu_preset(n):
    assert DINOConfig(preset='cpu', batch_size=n).batch_size == n
    assert DINOCPUConfig(batch_size=n).batch_size == n


def test_recipes_registered():
    from self_sup.recipes import get_recipe, recipe_of
    assert get_recipe('dino').config is DINOConfig and get_recipe('dino-cpu').config is DINOCPUConfig
    assert recipe_of(DINOCPUConfig()).name == 'dino-cpu'


def test_config_through_the_generated_command_line():
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    parser = add_dataclass_arguments(argparse.ArgumentParser(), DINOCPUConfig)
    args = parser.parse_args(['--epochs', '2', '--local-scale', '0.1', '0.3', '--no-norm-last-layer', '--batch-size', '64',
                              '--out-dir', 'none', '--max-steps', '3'])
    cfg = dataclass_from_args(DINOCPUConfig, args)
    assert (cfg.epochs, cfg.local_scale, cfg.norm_last_layer, cfg.batch_size, cfg.out_dir, cfg.max_steps) == (2, (0.1, 0.3), False, 64, None, 3)
    assert cfg.dataset == 'digits' and cfg.backbone == 'vit_tiny_patch16'
    assert dataclass_from_args(DINOCPUConfig, parser.parse_args([])) == DINOCPUConfig()
    helps = parser.format_help()
    assert 'teacher temperature after the warm-up' in helps and '--warmup-teacher-temp-epochs' in helps
    paper = add_dataclass_arguments(argparse.ArgumentParser(), DINOConfig)
    assert dataclass_from_args(DINOConfig, paper.parse_args([])) == DINOConfig()
    paper_help = ' '.join(paper.format_help().split())
    assert '(default: vit_small_patch16)' in paper_help and '(default: 65536)' in paper_help
    cpu = dataclass_from_args(DINOConfig, paper.parse_args(['--preset', 'cpu', '--batch-size', '64']))
    assert (cpu.batch_size, cpu.backbone) == (64, 'vit_tiny_patch16')   # given explicitly: kept, although it is the paper's value


def test_train_cpu_config_end_to_end(tmp_path):
    cfg = DINOCPUConfig(epochs=1, batch_size=4, max_steps=2, num_workers=0, out_dir=str(tmp_path), depth=1)
    tc = train_config(cfg)
    assert (tc.lr_reference_batch, tc.clip_grad, tc.final_weight_decay) == (256, None, cfg.weight_decay_end)
    dino = train(cfg)
    assert (tmp_path / 'checkpoint.pt').is_file() and (tmp_path / 'metrics.csv').is_file()
    assert dino.backbone is dino.teacher.backbone
    with torch.no_grad():
        assert dino.backbone.eval()(torch.rand(2, 3, cfg.global_size, cfg.global_size)).shape == (2, 192)


def test_measure_training_writes_figures(tmp_path):
    import json
    from self_sup.bench.paper import measure_training
    cfg = DINOCPUConfig(epochs=1, batch_size=4, num_workers=0, depth=1, backbone='small_cnn')
    r = measure_training(cfg, steps=2, warmup=1, out=str(tmp_path / 'r.json'))
    saved = json.loads((tmp_path / 'r.json').read_text())
    assert saved['steps'] == 2 and saved['global_batch'] == 4 and len(saved['losses']) == 3
    assert r['images_per_s'] > 0 and r['peak_memory_gib'] is None
    with pytest.raises(ValueError, match='warmup must be an integer >= 1'):
        measure_training(cfg, steps=2, warmup=0)
