"""Pretrain one image method on the built-in 'objects' task and score its frozen encoder (kNN@20, linear probe) beside the
same encoder at random initialisation, for several seeds: the runs behind `nbs/results/<method>_builtin.json`.

    OMP_NUM_THREADS=2 python tests/objects_ssl.py simclr --seeds 0 1 2 --split test --out nbs/results/simclr_builtin.json
    OMP_NUM_THREADS=2 python tests/objects_ssl.py dino --seeds 0 --split val --set epochs=8 lr=1e-3   # choose settings on 'val'

`--split val` fits the probes on 'train_fit' and scores on 'val' (both inside the training images: for choosing settings);
`--split test` fits them on all of 'train' and scores on 'test' (for reporting); `--split both` does both after each training
run (settings are chosen on the 'val' figures alone; the 'test' figures of the chosen settings are the ones reported).
Pretraining always sees 'train', unlabelled.
"""
from __future__ import annotations
import argparse, ast, copy, dataclasses, json, os, platform, shlex, sys, tempfile, time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's self_sup, whatever is installed
from self_sup.augment import IMAGENET_MEAN, IMAGENET_STD
from self_sup.data.objects import object_images
from self_sup.eval.linear import evaluate_representation
from self_sup.recipes import make_trainer

METHODS = {  # name -> (display name, config factory); every method's 'objects' preset on the objects task
    'rotnet': 'RotNet', 'simclr': 'SimCLR', 'moco_v2': 'MoCo v2', 'moco_v3': 'MoCo v3', 'swav': 'SwAV', 'dino': 'DINO'}

def make_config(method: str, seed: int, preset: str, **overrides):
    "The method's config on the objects task (`overrides` win over the preset)."
    kw = dict(preset=preset, dataset='objects', seed=seed, device='cpu', **overrides)
    if method == 'rotnet':
        from self_sup.methods.rotnet import RotNetConfig; return RotNetConfig(**kw)
    if method == 'simclr':
        from self_sup.methods.simclr import SimCLRConfig; return SimCLRConfig(**kw)
    if method.startswith('moco'):
        from self_sup.methods.moco import MoCoConfig; return MoCoConfig(version=method[-2:], **kw)
    if method == 'swav':
        from self_sup.methods.swav import SwAVConfig; return SwAVConfig(**kw)
    if method == 'dino':
        from self_sup.methods.dino import DINOConfig; return DINOConfig(**kw)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")

def labelled(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    "Images of an objects split normalised as in training (ImageNet statistics), and their labels."
    x, y, _ = object_images(split)
    x = x.float() / 255
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None], y

def score(backbone, fit, query) -> dict:
    "kNN@20 and linear-probe top-1 (%) of a frozen backbone."
    backbone.eval()
    r = evaluate_representation(backbone, fit, query, ks=(20,))
    return {'knn@20': r['knn@20'], 'linear_top1': r['linear_top1']}

def attention_on_object(backbone, split: str = 'test') -> dict | None:
    "ViTs: the last block's [CLS] attention mass inside the object's mask over the mask's share (`viz.attention.attention_in_mask`), mean over images and heads."
    if not getattr(backbone, 'is_vit', False) and not hasattr(getattr(backbone, 'model', None), 'blocks'): return None
    from self_sup.viz.attention import attention_in_mask
    x, _ = labelled(split); masks = object_images(split)[2]
    backbone.eval()
    with torch.no_grad(): maps = torch.cat([backbone.forward_features(x[i:i + 250], attention=True).attention_maps() for i in range(0, len(x), 250)])
    ratio = attention_in_mask(maps, masks)
    return {'mean': round(ratio.mean().item(), 3), 'per_head': [round(v, 3) for v in ratio.mean(0).tolist()],
            'best_head': round(ratio.mean(0).max().item(), 3)}

def run(method: str, seed: int, preset: str, split: str, overrides: dict, save_backbone: str | None = None) -> dict:
    "Pretrain once and score the trained and the initial encoder (on 'test', and/or on 'val' under the key 'val')."
    config = make_config(method, seed, preset, out_dir=tempfile.mkdtemp(prefix='objects_ssl_'), **overrides)
    trainer = make_trainer(config)
    initial = copy.deepcopy(trainer.method.backbone)           # exactly the weights training starts from
    t0 = time.perf_counter(); trainer.fit(); wall = time.perf_counter() - t0
    out = {'seed': seed, 'steps': trainer.step, 'wall_time_s': round(wall, 1), 'final_loss': float(trainer.metrics['loss'])}
    if split in ('val', 'both'):
        fit, query = labelled('train_fit'), labelled('val')
        out['val'] = {**score(trainer.method.backbone, fit, query), 'random_init': score(initial, fit, query)}
    if split in ('test', 'both'):
        fit, query = labelled('train'), labelled('test')
        out.update(score(trainer.method.backbone, fit, query), random_init=score(initial, fit, query))
        attention = attention_on_object(trainer.method.backbone)
        if attention is not None: out['attention_in_mask'] = {'trained': attention, 'random_init': attention_on_object(initial)}
    else: out.update({k: out['val'][k] for k in ('knn@20', 'linear_top1', 'random_init')})
    if save_backbone:   # the trained encoder (DINO: the teacher's), fp16 safetensors, for pictures without retraining
        from safetensors.torch import save_file
        save_file({k: v.detach().half().contiguous() for k, v in trainer.method.backbone.state_dict().items()}, save_backbone)
    out['config'] = {k: v for k, v in dataclasses.asdict(config).items() if k != 'out_dir'}
    return out

FINGERPRINT_STEPS = 3   # optimiser steps behind a fingerprint

def fingerprint(method: str, config: dict, steps: int = FINGERPRINT_STEPS) -> dict:
    """What the code does with a stored result's `config`, in seconds: the losses of its first `steps` optimiser steps
    (data, augmentations, network, loss and optimiser) and kNN@20 / linear probe of its untrained encoder on 300 'train' and
    200 'test' images (the evaluation). A long run's numbers come from the same code, so when the code's fingerprint of a
    stored config differs from the stored one, the code no longer produces that result (`tests/test_stored_results.py`)."""
    cls = type(make_config(method, 0, 'objects'))
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields}   # JSON lists were tuples
    cfg = cls(**{**values, 'out_dir': None, 'resume': None, 'max_steps': steps, 'num_workers': 0, 'device': 'cpu'})
    losses = []
    trainer = make_trainer(cfg, callbacks=[lambda t: losses.append(float(t.metrics['loss']))])
    initial = copy.deepcopy(trainer.method.backbone)
    trainer.fit()
    (xf, yf), (xq, yq) = labelled('train'), labelled('test')
    return {'steps': steps, 'losses': [round(v, 6) for v in losses],
            'random_init': {k: round(v, 2) for k, v in score(initial, (xf[:300], yf[:300]), (xq[:200], yq[:200])).items()}}

def fingerprint_matches(stored: dict, current: dict, rtol: float = 1e-4) -> bool:
    "Whether two fingerprints agree: the same steps, losses within `rtol` (BLAS and thread counts move the last digits), probes within 0.5 points."
    if stored.get('steps') != current['steps'] or len(stored.get('losses', ())) != len(current['losses']): return False
    if any(abs(a - b) > rtol * max(1.0, abs(b)) for a, b in zip(stored['losses'], current['losses'])): return False
    return all(abs(stored['random_init'][k] - v) <= 0.5 for k, v in current['random_init'].items())

def summarise(method: str, runs: list[dict], split: str, command: str) -> dict:
    "Mean and standard deviation over seeds, in the layout of `nbs/results/<method>_builtin.json`."
    def stats(key, sub=None, rs=runs):
        v = torch.tensor([(r[sub] if sub else r)[key] for r in rs], dtype=torch.float64)
        return round(v.mean().item(), 2), round(v.std().item() if len(v) > 1 else 0.0, 2)
    keys = ('knn@20', 'linear_top1')
    cfg = runs[0]['config']
    val = None
    if 'val' in runs[0]:
        vs = [r['val'] for r in runs]
        val = {**{k: stats(k, rs=vs)[0] for k in keys}, 'std': {k: stats(k, rs=vs)[1] for k in keys},
               'random_init': {k: stats(k, 'random_init', vs)[0] for k in keys}}
    attention = None
    if 'attention_in_mask' in runs[0]:   # ViTs: attention mass inside the object's mask / the mask's share, mean over test images and heads
        att = [r['attention_in_mask'] for r in runs]
        attention = {who: {'mean': round(float(torch.tensor([a[who]['mean'] for a in att]).mean()), 3),
                           'std': round(float(torch.tensor([a[who]['mean'] for a in att]).std()) if len(att) > 1 else 0.0, 3)}
                     for who in ('trained', 'random_init')}
    return {'method': METHODS[method], 'task': 'objects', 'attention_in_mask': attention, 'split': 'test' if split == 'both' else split,
            'backbone': cfg.get('backbone') or f"nin (width {cfg.get('nin_width')})",
            **{k: stats(k)[0] for k in keys}, 'std': {k: stats(k)[1] for k in keys},
            'random_init': {k: stats(k, 'random_init')[0] for k in keys}, 'random_init_std': {k: stats(k, 'random_init')[1] for k in keys},
            'val': val, 'seeds': [r['seed'] for r in runs], 'per_seed': [{k: r[k] for k in r if k != 'config'} for r in runs],
            'steps': runs[0]['steps'], 'epochs': cfg['epochs'], 'batch_size': cfg['batch_size'],
            'wall_time_s': round(max(r['wall_time_s'] for r in runs), 1),
            'config': cfg, 'command': command, 'fingerprint': fingerprint(method, cfg),
            'machine': f"{os.cpu_count()} shared CPU cores ({platform.machine()}), no GPU, torch threads {torch.get_num_threads()}, "
                       f"load average at the end {os.getloadavg()[0]:.1f}"}

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('method', choices=list(METHODS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--preset', default='objects', help="the method config's preset")
    p.add_argument('--split', choices=['val', 'test', 'both'], default='both')
    p.add_argument('--set', nargs='*', default=[], metavar='FIELD=VALUE', help='config fields (Python literals)')
    p.add_argument('--out', help='write the summary JSON here')
    p.add_argument('--save-backbone', help="save the first seed's trained backbone here (fp16 safetensors)")
    a = p.parse_args(argv)
    overrides = {}
    for item in a.set:
        k, v = item.split('=', 1)
        try: overrides[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError): overrides[k] = v
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python " + shlex.join(['tests/objects_ssl.py', *(argv or sys.argv[1:])])
    runs = []
    for seed in a.seeds:
        r = run(a.method, seed, a.preset, a.split, overrides, a.save_backbone if seed == a.seeds[0] else None); runs.append(r)
        print(json.dumps({k: r[k] for k in r if k != 'config'}), flush=True)
    s = summarise(a.method, runs, a.split, command)
    print(json.dumps({k: s[k] for k in ('method', 'split', 'knn@20', 'linear_top1', 'std', 'random_init', 'random_init_std', 'val', 'wall_time_s')}), flush=True)
    if a.out:
        with open(a.out, 'w') as f: json.dump(s, f, indent=1); f.write('\n')

if __name__ == '__main__': main()
