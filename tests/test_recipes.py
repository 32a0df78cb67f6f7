"""The recipe layer, for every registered method: one preset mechanism in which an explicit value always wins,
the command line built from the registry, and every method covered by the smoke runs."""
import argparse, dataclasses, sys
import numpy as np
from pathlib import Path

import pytest

from self_sup.cli import add_dataclass_arguments, commands, dataclass_from_args
from self_sup.recipes import RunConfig, make_trainer, recipe_of, recipes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smoke import SMOKE  # noqa: E402

RECIPES = recipes()


def test_every_method_is_registered_once_with_a_run_config():
    assert {'rotnet', 'simclr', 'moco', 'swav', 'dino', 'dora', 'timetuning'} <= set(RECIPES)
    for name, r in RECIPES.items():
        assert issubclass(r.config, RunConfig) and r.help, name
        assert f'train {name}' in commands(), name


def test_every_method_has_a_smoke_run():
    "tests/smoke.py (the GPU check and the device guard) trains every registered method."
    trained = {args[1] for args, _ in SMOKE.values() if args[0] == 'train'}
    methods = {n for n, r in RECIPES.items() if _paper_default(r.config, 'preset') == 'paper'}   # not aliases such as dino-cpu
    assert methods <= trained, methods - trained


def _paper_default(cls, name):
    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else None


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_preset_cpu_keeps_an_explicit_batch_size(name):
    "`--preset cpu --batch-size N` trains with N, also when N is the paper's batch; without it the preset's batch."
    r = RECIPES[name]
    if 'cpu' not in r.config.PRESETS: pytest.skip(f'{name} has no cpu preset')
    preset_batch = r.config(preset='cpu').batch_size
    paper_batch = _paper_default(r.config, 'batch_size') or r.config(preset='paper').batch_size
    for n in {paper_batch, 3, preset_batch + 1}:
        cfg = r.config(preset='cpu', batch_size=n)
        assert cfg.batch_size == n and r.train_config(cfg).batch_size == n, (name, n)
        parser = add_dataclass_arguments(argparse.ArgumentParser(), r.config)
        cli = dataclass_from_args(r.config, parser.parse_args(['--preset', 'cpu', '--batch-size', str(n)]))
        assert cli.batch_size == n, (name, n)
    assert recipe_of(r.config(preset='cpu')) is r


def test_make_trainer_refuses_other_configs():
    with pytest.raises(TypeError, match="config must be a method's config"):
        make_trainer(argparse.Namespace())


def test_online_probe_and_tensorboard_through_the_recipe_layer(tmp_path):
    "`--probe-every` adds the encoder's kNN@20 on the built-in test split to metrics.csv; `--tensorboard` writes event files."
    from self_sup.methods.simclr import SimCLRConfig
    from self_sup.metrics import read_metrics
    from self_sup.recipes import train
    cfg = SimCLRConfig(preset='objects', max_steps=4, probe_every=2, tensorboard=True, log_every=3, batch_size=32,
                       num_workers=0, out_dir=str(tmp_path))
    train(cfg)
    rows = read_metrics(tmp_path / 'metrics.csv')
    assert rows['step'].tolist() == [0, 1, 3]                 # the logged step 0, then the probed steps 2 and 4 (0-based 1, 3)
    knn = rows['knn@20']
    assert np.isnan(knn[0]) and all(5 < v < 100 for v in knn[1:]), knn
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
    with pytest.raises(ValueError, match="probe_every needs a built-in labelled test split .* got dataset='imagenet'"):
        SimCLRConfig(probe_every=10)
