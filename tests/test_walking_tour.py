"The built-in walking tour from the installed package: the recipes' video='walking', the cache, determinism in another process, bad inputs."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from self_sup.data.video import VideoClips
from self_sup.data.davis import DAVIS
from self_sup.data.walking_tour import make_walking_tour, walking_tour, walking_tour_video, write_davis_sequence


def test_recipes_name_the_walking_tour(tmp_path, monkeypatch):
    "video='walking' in DoRA's and TimeTuning's recipes is the cached tour's mp4, read as clips by their datasets."
    from self_sup.methods.dora import DoRAConfig, dora_dataset, resolve_video
    from self_sup.methods.timetuning import TimeTuningConfig, timetuning_dataset
    path = resolve_video('walking')
    assert path == walking_tour_video() and path.suffix == '.mp4' and path.is_file()
    assert DAVIS(path.parent)[0]['num_objects'] == 4
    dora = dora_dataset(DoRAConfig(preset='cpu', video='walking', cache_dir=str(tmp_path)))
    assert len(dora) == 600 - 3 * 8                           # CPU preset: 4 frames 8 apart, every start
    tt = timetuning_dataset(TimeTuningConfig(preset='cpu', video='walking', cache_dir=str(tmp_path)))
    assert tt[0].shape[:2] == (4, 3)


def test_same_tour_in_another_process(tmp_path):
    "The seed alone fixes the tour: a fresh interpreter writes the same masks and the same JPEG bytes."
    code = ("import sys; from self_sup.data.walking_tour import walking_tour; "
            "print(walking_tour((32, 64), 12, seed=3, cache_dir=sys.argv[1]))")
    roots = [Path(subprocess.run([sys.executable, '-c', code, str(tmp_path / d)], check=True, capture_output=True, text=True).stdout.strip())
             for d in 'ab']
    files = sorted(p.relative_to(roots[0]) for p in roots[0].rglob('*') if p.suffix in ('.jpg', '.png', '.json'))
    assert len(files) == 2 * 12 + 1
    assert all((roots[0] / f).read_bytes() == (roots[1] / f).read_bytes() for f in files)


def test_cache_survives_a_failed_write(tmp_path, monkeypatch):
    "A generation that fails leaves no tour (and no temporary folder); the next call makes it whole."
    import self_sup.data.walking_tour as wt
    monkeypatch.setattr(wt, 'write_video', lambda *a, **k: (_ for _ in ()).throw(OSError('disk full')))
    with pytest.raises(OSError, match='disk full'):
        walking_tour((32, 64), 10, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    root = walking_tour((32, 64), 10, cache_dir=tmp_path)
    assert json.loads((root / 'tour.json').read_text())['n_frames'] == 10
    assert len(VideoClips(walking_tour_video(size=(32, 64), n_frames=10, cache_dir=tmp_path), frames_per_clip=2, stride=1)) == 9


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tour objects \['dog'\]"):
        make_walking_tour((32, 64), 4, objects=('cup', 'dog'))
    with pytest.raises(ValueError, match='n_frames must be'):
        make_walking_tour((32, 64), 0)
    with pytest.raises(ValueError, match='fps must be'):
        walking_tour((32, 64), 4, fps=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r'object ids in 0..255'):
        write_davis_sequence(tmp_path, 'x', torch.zeros(2, 3, 4, 4), torch.full((2, 4, 4), 300))
