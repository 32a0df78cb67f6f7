"""Pretrain DINO on one video (`DoRAConfig(use_tracking_masks=False)`) and DoRA on the same video with the same steps, views,
schedules and seed, for several seeds; score each trained teacher backbone and the random-init backbone it started from
(object kNN on the built-in walking tour, J&F and dense mIoU on the built-in DAVIS sequences), and measure DoRA's tracked
objects on the walking tour (mean pairwise IoU between its object masks, each object's best IoU with a true object):
the runs behind `nbs/results/video/<video>.json`. Optionally tune the trained DINO backbone with TimeTuning.

    OMP_NUM_THREADS=1 SELF_SUP_PROGRESS=0 python tests/video_ssl.py walking --seeds 0 1 2 --out nbs/results/video/walking.json
    OMP_NUM_THREADS=1 SELF_SUP_PROGRESS=0 python tests/video_ssl.py walking --seeds 0 --split val --set global_size=64   # choose settings on 'val'
    OMP_NUM_THREADS=1 SELF_SUP_PROGRESS=0 python tests/video_ssl.py walking --seeds 0 1 2 --timetuning --out nbs/results/video/timetuning.json

The two splits never share frames or sequences:
- 'val' (for choosing settings): object kNN inside the walking tour's first half (labelled crops from its first quarter, test
  crops from the second quarter after a 2-second gap); J&F and dense mIoU on the first built-in DAVIS sequence; tracking on
  clips of the tour's first half.
- 'test' (reported): object kNN with labelled crops from the first half and test crops from the second half; J&F and dense
  mIoU on the other built-in DAVIS sequences; tracking on clips of the tour's second half.
Pretraining sees the whole video, unlabelled.
"""
from __future__ import annotations
import argparse, ast, copy, dataclasses, json, os, platform, shlex, sys, tempfile, time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's self_sup, whatever is installed
from self_sup.augment import normalize
from self_sup.data.davis import DAVIS, builtin_davis
from self_sup.data.walking_tour import walking_tour
from self_sup.eval.dense import evaluate_dense
from self_sup.eval.objects import object_knn
from self_sup.eval.propagation import evaluate_davis
from self_sup.methods.dora import DoRAConfig
from self_sup.methods.dora_tracking import choose_heads, track_clip_objects
from self_sup.recipes import make_trainer

NAMES = {False: 'DINO on video', True: 'DoRA'}
METRICS = ('J&F', 'dense mIoU', 'object kNN')
VAL_SEQUENCES, TEST_SEQUENCES = [0], [1, 2]   # indices of the built-in DAVIS sequences used for choosing / for reporting
TRACK_SIZE = (72, 96)   # tracking is measured on the tour's frames at the size the training cache holds (cache_short_side=72)

_data = {}
def data() -> dict:
    "The walking tour (frames, masks) and the built-in DAVIS sequences, loaded once."
    if not _data:
        _data['tour'] = DAVIS(walking_tour())[0]
        davis = DAVIS(builtin_davis())
        _data['sequences'] = [davis[i] for i in range(len(davis))]
    return _data

def patch_features(backbone, size=(96, 176)):
    "frames [B, 3, H, W] in [0, 1] -> the backbone's patch tokens at `size` (what the video evaluations read; 91_repro.video's)."
    def fn(frames):
        x = F.interpolate(frames.float(), size=size, mode='bilinear', antialias=True, align_corners=False)
        return backbone.forward_features(normalize(x))
    return fn

@torch.no_grad()
def evaluate(backbone, split: str) -> dict:
    "object kNN, J&F and dense mIoU (%) of a frozen backbone on the 'val' or 'test' part (module docstring)."
    backbone.eval()
    d = data(); tour = d['tour']
    if split == 'val': knn = object_knn(backbone, (tour['frames'][:300], tour['masks'][:300]), k=20, size=48, gap=25)
    else: knn = object_knn(backbone, tour, k=20, size=48)
    sequences = [d['sequences'][i] for i in (VAL_SEQUENCES if split == 'val' else TEST_SEQUENCES)]
    jf = evaluate_davis(patch_features(backbone), [(s['name'], s['frames'], s['masks']) for s in sequences])[0]
    mious = []
    for s in sequences:
        out = patch_features(backbone)(s['frames'])
        score, _ = evaluate_dense(out.tokens, s['masks'], num_classes=s['num_objects'] + 1, grid=out.grid)
        mious.append(score.miou)
    return {'J&F': 100 * jf['J&F-Mean'], 'J': 100 * jf['J-Mean'], 'F': 100 * jf['F-Mean'], 'dense mIoU': 100 * float(np.mean(mious)),
            'object kNN': knn['object kNN']}

def tour_clips(split: str, frames_per_clip: int = 4, stride: int = 8, every: int = 16) -> list[int]:
    "First-frame indices of the tour's clips for tracking: in its first half ('val') or its second half ('test')."
    n = len(data()['tour']['frames'])
    lo, hi = (0, n // 2) if split == 'val' else (n // 2, n)
    return list(range(lo, hi - (frames_per_clip - 1) * stride, every))

def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    "masks bool [..., k, H, W] -> IoU of every pair of the k masks [..., k, k] (empty union: 0)."
    m = masks.flatten(-2).float()
    inter = m @ m.transpose(-1, -2)
    area = m.sum(-1)
    union = area[..., :, None] + area[..., None, :] - inter
    return inter / union.clamp_min(1)

@torch.no_grad()
def tracking_quality(backbone, split: str = 'test', n_objects: int = 3, frames_per_clip: int = 4, stride: int = 8,
                     eps: float = 0.05, n_iters: int = 30, starts: list[int] | None = None, return_tracks: bool = False) -> dict:
    """DoRA's tracker (`track_clip_objects`, the heads `choose_heads` gives) run by `backbone` on clips of the walking tour:
    'pairwise IoU' is the mean IoU between two of its k object masks (per frame, over pairs, frames and clips; DoRA's masks are
    meant to be distinct, goal <= 0.3); 'best IoU' is, per object slot, the IoU with the true object that matches it best over
    the clip (mean over frames), averaged over clips; 'mask fraction' the share of patches an object mask covers."""
    backbone.eval()
    tour = data()['tour']
    frames, labels = tour['frames'], tour['masks']
    heads = choose_heads(backbone.num_heads, n_objects, torch.Generator().manual_seed(0))
    n_true = int(labels.max())
    pair, best, fraction, tracks = [], [], [], []
    for start in (tour_clips(split, frames_per_clip, stride) if starts is None else starts):
        idx = list(range(start, start + frames_per_clip * stride, stride))
        x = F.interpolate(frames[idx].float() / (255 if frames.dtype == torch.uint8 else 1), size=TRACK_SIZE, mode='bilinear',
                          antialias=True, align_corners=False)
        out = backbone.forward_features(normalize(x), attention=True, qkv=True)
        t = track_clip_objects(out, frames_per_clip, heads, eps, n_iters, backbone.num_prefix_tokens)
        masks = t.masks[0]                                                           # [T, k, h, w] on the patch grid
        iou = pairwise_iou(masks)                                                    # [T, k, k]
        off = ~torch.eye(n_objects, dtype=torch.bool)
        pair.append(iou[:, off].mean().item())
        fraction.append(masks.float().mean().item())
        up = F.interpolate(masks.float(), size=labels.shape[-2:], mode='nearest').bool()   # [T, k, H, W]
        truth = torch.stack([labels[idx] == o for o in range(1, n_true + 1)], 1)          # [T, O, H, W]
        inter = torch.einsum('tkp,top->tko', up.flatten(2).float(), truth.flatten(2).float())
        union = up.flatten(2).sum(-1)[:, :, None] + truth.flatten(2).sum(-1)[:, None, :] - inter
        best.append((inter / union.clamp_min(1)).mean(0).max(-1).values.tolist())      # [k]: best true object over the clip
        if return_tracks: tracks.append((idx, masks))
    best = torch.tensor(best)
    r = {'pairwise IoU': float(np.mean(pair)), 'best IoU': best.mean(0).tolist(), 'best IoU mean': best.mean().item(),
         'mask fraction': float(np.mean(fraction)), 'clips': len(pair), 'heads': heads}
    return (r, tracks) if return_tracks else r

def tracks_picture(backbone, starts=(330, 420, 510), **kw) -> dict:
    "DoRA's tracker on a few clips of the tour's test half, for a picture without the network: frame indices and masks [T, k, h, w] as 0/1 lists."
    _, tracks = tracking_quality(backbone, starts=starts, return_tracks=True, **kw)
    return {'size': list(TRACK_SIZE), 'frames': [idx for idx, _ in tracks], 'masks': [m.int().tolist() for _, m in tracks]}

def make_config(video: str, seed: int, tracking: bool, **overrides) -> DoRAConfig:
    "The DoRA CPU preset on `video`, with or without the masked clips (DINO on video), `overrides` winning."
    return DoRAConfig(preset='cpu', video=video, seed=seed, use_tracking_masks=tracking, device='cpu', **overrides)

def train_one(video: str, seed: int, tracking: bool, overrides: dict):
    "Train once; returns (trainer, the random-init backbone it started from, wall time in s)."
    config = make_config(video, seed, tracking, out_dir=tempfile.mkdtemp(prefix='video_ssl_'), **overrides)
    trainer = make_trainer(config)
    initial = copy.deepcopy(trainer.method.backbone)
    t0 = time.perf_counter(); trainer.fit()
    return trainer, initial, time.perf_counter() - t0, config

def tune_one(backbone, seed: int, video: str, overrides: dict):
    "TimeTuning (CPU preset) from a copy of `backbone`; returns (tuned backbone, steps, wall time in s, config)."
    from self_sup.methods.timetuning import TimeTuningConfig, tune
    config = TimeTuningConfig(preset='cpu', video=video, seed=seed, device='cpu', out_dir=tempfile.mkdtemp(prefix='video_ssl_tt_'), **overrides)
    steps = []
    t0 = time.perf_counter()
    method = tune(config, copy.deepcopy(backbone).requires_grad_(True), callbacks=[lambda t: steps.append(t.step)])
    return method.backbone, len(steps), time.perf_counter() - t0, config

def scores(backbone, split: str) -> dict:
    "The evaluations of `split` ('val', 'test' or 'both': then the 'val' figures go under the key 'val')."
    if split == 'both': return {**evaluate(backbone, 'test'), 'val': evaluate(backbone, 'val')}
    return evaluate(backbone, split)

def run_seed(video: str, seed: int, split: str, overrides: dict, timetuning: dict | None, picture: bool = False,
             tune_from: str = 'DINO on video') -> dict:
    "One seed: DINO on video and DoRA (and TimeTuning from this seed's `tune_from` backbone), with the random-init backbone."
    out, trained = {'seed': seed}, {}
    track_split = 'test' if split != 'val' else 'val'
    for tracking in (False, True):
        trainer, initial, wall, config = train_one(video, seed, tracking, overrides)
        name = NAMES[tracking]
        trained[name] = trainer.method.backbone
        if not tracking:
            out['random init'] = scores(initial, split)
            out['random init']['tracking'] = tracking_quality(initial, track_split)
        out[name] = {**scores(trained[name], split), 'tracking': tracking_quality(trained[name], track_split),
                     'steps': trainer.step, 'wall_time_s': round(wall, 1), 'final_loss': float(trainer.metrics['loss'])}
        if tracking and picture: out['picture'] = tracks_picture(trained[name])
        out.setdefault('config', {k: v for k, v in dataclasses.asdict(config).items() if k not in ('out_dir', 'use_tracking_masks')})
        print(json.dumps({'seed': seed, name: out[name]}), flush=True)
    if timetuning is not None:
        tuned, steps, wall, tconfig = tune_one(trained[tune_from], seed, timetuning.get('video', video),
                                               {k: v for k, v in timetuning.items() if k != 'video'})
        name = f'TimeTuning (from {tune_from})'
        out[name] = {**scores(tuned, split), 'steps': steps, 'wall_time_s': round(wall, 1)}
        out['timetuning_config'] = {k: v for k, v in dataclasses.asdict(tconfig).items() if k != 'out_dir'}
        print(json.dumps({'seed': seed, name: out[name]}), flush=True)
    return out

def mean_std(values) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return round(v.mean().item(), 2), round(v.std().item() if len(v) > 1 else 0.0, 2)

def summarise(video: str, runs: list[dict], split: str, command: str, wall: float) -> dict:
    "Mean and standard deviation over seeds, in the layout `{'results': {name: {metric: mean}}, 'std': ..., 'seeds': ...}`."
    names = [n for n in ('random init', 'DINO on video', 'DoRA', 'TimeTuning (from DINO on video)', 'TimeTuning (from DoRA)') if n in runs[0]]
    def table(get):
        res, std = {}, {}
        for n in names:
            res[n], std[n] = {}, {}
            for m in (*METRICS, 'J', 'F'):
                res[n][m], std[n][m] = mean_std([get(r[n])[m] for r in runs])
        return res, std
    results, std = table(lambda x: x)
    out = {'video': video, 'split': 'test' if split == 'both' else split, 'results': results, 'std': std, 'seeds': [r['seed'] for r in runs]}
    if split == 'both':
        val, val_std = table(lambda x: x['val'])
        out['val'] = {'results': val, 'std': val_std}
    tracking = {}
    for n in names:
        if 'tracking' not in runs[0][n]: continue
        t = [r[n]['tracking'] for r in runs]
        k = len(t[0]['best IoU'])
        tracking[n] = {'pairwise IoU': mean_std([x['pairwise IoU'] for x in t]), 'best IoU mean': mean_std([x['best IoU mean'] for x in t]),
                       'best IoU per object': [mean_std([x['best IoU'][j] for x in t]) for j in range(k)],
                       'mask fraction': mean_std([x['mask fraction'] for x in t]), 'clips': t[0]['clips']}
    out['tracking'] = {'about': "DoRA's tracker on clips of the walking tour's " + ('first' if split == 'val' else 'second')
                       + " half at 72 x 96 (9 x 12 patches), 4 frames 8 apart: [mean, std] over seeds; pairwise IoU between the "
                       "object masks (goal <= 0.3), each object's best IoU with a true object (of 4)", **tracking}
    out['steps'] = {n: runs[0][n]['steps'] for n in names if 'steps' in runs[0][n]}
    out['wall_time_s'] = {n: max(r[n]['wall_time_s'] for r in runs) for n in names if 'wall_time_s' in runs[0][n]}
    out['per_seed'] = [{k: v for k, v in r.items() if k not in ('config', 'timetuning_config', 'picture')} for r in runs]
    if 'picture' in runs[0]: out['picture'] = {'seed': runs[0]['seed'], 'about': "DoRA's tracked objects, first seed", **runs[0]['picture']}
    out['config'] = runs[0]['config']
    if 'timetuning_config' in runs[0]: out['timetuning_config'] = runs[0]['timetuning_config']
    out['evaluation'] = ("object kNN: k=20 on 48-pixel crops of the walking tour's 4 objects, labelled from its first half, tested on "
                         "its second; J&F (label propagation, context 7, radius 12, top-5) and dense mIoU (k-means into objects+1 "
                         f"clusters, Hungarian) on the built-in DAVIS sequences {TEST_SEQUENCES} at 96 x 176; 'val': object kNN inside "
                         f"the first half, DAVIS sequence {VAL_SEQUENCES}")
    out['command'] = command
    out['machine'] = (f"{os.cpu_count()} shared CPU cores ({platform.machine()}), no GPU, torch threads {torch.get_num_threads()}, "
                      f"load average at the end {os.getloadavg()[0]:.1f}; whole command {wall / 60:.1f} min")
    return out

def parse_sets(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        k, v = item.split('=', 1)
        try: overrides[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError): overrides[k] = v
    return overrides

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('video', help="'walking' (the built-in walking tour), 'bikes' (bikes.mp4) or a video path")
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--split', choices=['val', 'test', 'both'], default='both')
    p.add_argument('--set', nargs='*', default=[], metavar='FIELD=VALUE', help='DoRAConfig fields (Python literals), for both methods')
    p.add_argument('--timetuning', action='store_true', help="also tune each seed's DINO-on-video backbone with TimeTuning")
    p.add_argument('--tune-from', choices=list(NAMES.values()), default='DINO on video', help='the trained backbone TimeTuning starts from')
    p.add_argument('--tt-set', nargs='*', default=[], metavar='FIELD=VALUE', help='TimeTuningConfig fields (video: the DoRA video by default)')
    p.add_argument('--out', help='write the summary JSON here')
    a = p.parse_args(argv)
    overrides = parse_sets(a.set)
    timetuning = parse_sets(a.tt_set) if a.timetuning else None
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} SELF_SUP_PROGRESS={os.environ.get('SELF_SUP_PROGRESS', '')} python "
               + shlex.join(['tests/video_ssl.py', *(argv or sys.argv[1:])]))
    t0 = time.perf_counter()
    runs = [run_seed(a.video, seed, a.split, overrides, None if timetuning is None else dict(timetuning), picture=i == 0,
                     tune_from=a.tune_from) for i, seed in enumerate(a.seeds)]
    s = summarise(a.video, runs, a.split, command, time.perf_counter() - t0)
    print(json.dumps({k: s[k] for k in ('results', 'std', 'tracking', 'steps', 'wall_time_s')}), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
        with open(a.out, 'w') as f: json.dump(s, f, indent=1); f.write('\n')

if __name__ == '__main__': main()
