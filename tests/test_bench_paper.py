"""bench.paper for the video recipes: TimeTuning's stand-in folder read by its paper recipe, options that reach the
run (batch, cache folder), bad inputs, and `--cpu` end to end for DoRA and TimeTuning with the fewest steps."""
import json
from pathlib import Path

import pytest

from self_sup.bench.paper import CPU_BATCH_SIZE, METHODS, VIDEO_METHODS, clips_needed, main, paper_recipe, stand_in_data
from self_sup.data.video import video_info
from self_sup.methods.timetuning import timetuning_dataset


def test_timetuning_stand_in_is_a_folder_of_short_videos(tmp_path):
    folder = stand_in_data(tmp_path, 'timetuning', 30)            # 27 clips of 4 frames 3 apart per 36-frame video
    videos = sorted(folder.glob('*.mp4'))
    assert [(i['frames'], i['height'], i['width']) for i in map(video_info, videos)] == [(36, 256, 456)] * 2
    clips = timetuning_dataset(paper_recipe('timetuning', video=str(folder), cache_dir=str(tmp_path / 'cache'))[0])
    assert len(clips) == 54 and tuple(clips[0].shape) == (4, 3, 224, 224)
    assert stand_in_data(tmp_path, 'timetuning', 1000) == folder and len(list(folder.glob('*.mp4'))) == 2   # written once


def test_video_recipes_are_selected():
    assert set(VIDEO_METHODS) <= set(METHODS)
    assert clips_needed(paper_recipe('dora')[0], 320) == 6 * 4          # 100 epochs: 4 steps per epoch reach 320 steps
    with pytest.raises(ValueError, match='method must be one of'):
        stand_in_data(Path('.'), 'vjepa', 1)
    with pytest.raises(SystemExit):
        main(['--methods', 'vjepa'])


def test_cpu_run_of_the_video_recipes(tmp_path, capsys):
    # the paper's ViT-S/16 recipes, 1 DoRA clip (8 frames: 8 teacher, 24 masked and 48 local student images) and 2
    # TimeTuning clips per step, 1 untimed + 1 timed step each, through the stand-in videos, the cache and the trainer
    res = main(['--cpu', '--methods', 'dora', 'timetuning', '--steps', '1', '--warmup', '1', '--out-dir', str(tmp_path / 'out')])
    for m in VIDEO_METHODS:
        r = json.loads((tmp_path / 'out' / f'{m}.json').read_text())
        assert (r['method'], r['global_batch'], len(r['losses']), r['config']['backbone']) == (m, CPU_BATCH_SIZE[m], 2, 'vit_small_patch16')
        assert r['images_per_s'] == pytest.approx(r['clips_per_s'] * r['frames_per_clip']) and r['images_per_s'] > 0
        assert r['command'].startswith('python -m self_sup.bench paper --cpu')
        assert res[m]['losses'] == r['losses']
    assert (res['dora']['frames_per_clip'], res['dora']['config']['stride'], res['timetuning']['frames_per_clip']) == (8, 60, 4)
    assert 'clips of 8 frames' in capsys.readouterr().out
