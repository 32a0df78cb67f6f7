"""self_sup.data.images: bad inputs and their messages, real on-disk formats, DataLoader workers, determinism."""
import pickle, pickletools, struct

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from self_sup.data.images import (SAMPLE_IMAGES, BuiltinDigits, CIFAR10, CIFAR100, ImageFolder, ImageNetFolder, as_rgb_image,
                                  load_image, read_val_solution, sample_image, write_cifar)
from self_sup.data.patches import PatchFolder, SingleImagePatches, image_complexity


# ---------------------------------------------------------------- sample photos and image files
@pytest.mark.parametrize('name', SAMPLE_IMAGES)
def test_every_sample_image_loads_offline_as_rgb(name):
    img = sample_image(name)
    assert img.mode == 'RGB' and min(img.size) >= 256


def test_unknown_sample_image_lists_the_names():
    with pytest.raises(ValueError, match=r"name must be one of \['astronaut'.*'noise'\], got 'lena'"):
        sample_image('lena')


def test_load_image_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.png'):
        load_image(tmp_path / 'nope.png')
    with pytest.raises(IsADirectoryError, match='is a folder'):
        load_image(tmp_path)
    (tmp_path / 'text.jpg').write_text('hello')
    with pytest.raises(ValueError, match=r"text.jpg' could not be read as an image"):
        load_image(tmp_path / 'text.jpg')
    sample_image('coffee').save(tmp_path / 'full.png')
    data = (tmp_path / 'full.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[: len(data) // 2])          # a download that stopped half way
    with pytest.raises(ValueError, match='cut.png'):
        load_image(tmp_path / 'cut.png')


def test_load_image_converts_every_mode_to_rgb(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    PIL.Image.fromarray(ramp, mode='F').save(tmp_path / 'float.tif')                          # 32-bit float in [0, 1]
    PIL.Image.fromarray((ramp * 65535).astype(np.int32)).save(tmp_path / 'int32.tif')         # mode I, 16-bit values
    sample_image('coffee').convert('CMYK').save(tmp_path / 'cmyk.jpg')
    sample_image('coffee').convert('1').save(tmp_path / 'bw.png')
    PIL.Image.fromarray(np.full((8, 8, 2), 128, np.uint8), mode='LA').save(tmp_path / 'la.png')
    for name in ['float.tif', 'int32.tif', 'cmyk.jpg', 'bw.png', 'la.png']:
        img = load_image(tmp_path / name)
        assert img.mode == 'RGB', name
    expected = np.rint(ramp[0] * 255)
    assert np.abs(np.asarray(load_image(tmp_path / 'float.tif'))[0, :, 0] - expected).max() <= 1
    assert np.abs(np.asarray(load_image(tmp_path / 'int32.tif'))[0, :, 0] - expected).max() <= 1


def test_load_image_applies_exif_orientation(tmp_path):
    img = sample_image('rocket').resize((60, 40))
    exif = PIL.Image.Exif(); exif[0x0112] = 6                              # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / 'phone.jpg', exif=exif)
    assert load_image(tmp_path / 'phone.jpg').size == (40, 60)


def test_as_rgb_image_bad_inputs():
    with pytest.raises(TypeError, match='got int'):
        as_rgb_image(3)
    with pytest.raises(ValueError, match='dtype int16'):
        as_rgb_image(np.zeros((8, 8), np.int16))
    with pytest.raises(ValueError, match=r'\[H, W\] or \[H, W, 3\|4\], got \[8, 8, 2\]'):
        as_rgb_image(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match="'no_such_photo.jpg' is neither a sample image"):
        as_rgb_image('no_such_photo.jpg')


# ---------------------------------------------------------------- built-in digits
def test_builtin_digits_split_is_fixed_and_disjoint():
    tr, te = BuiltinDigits('train'), BuiltinDigits('test')
    assert (len(tr), len(te)) == (4000, 1000)
    assert torch.bincount(tr.labels).tolist() == [400] * 10
    # no test digit is also a training digit
    train_rows = {bytes(x.numpy()) for x in tr.images.flatten(1)}
    assert not any(bytes(x.numpy()) in train_rows for x in te.images.flatten(1))


def test_builtin_digits_with_workers():
    ds = BuiltinDigits('test', 'photo')
    xs, ys = zip(*DataLoader(ds, batch_size=100, num_workers=2))
    assert torch.equal(torch.cat(xs), ds.images.float() / 255) and torch.equal(torch.cat(ys), ds.labels)


# ---------------------------------------------------------------- class-per-folder images
def _folder(root, classes, n=2, ext='JPEG'):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            sample_image('chelsea').resize((24, 16)).save(root / c / f'{c}_{k}.{ext}')


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder '.*missing' does not exist"):
        ImageFolder(tmp_path / 'missing')
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(NotADirectoryError, match='file.txt'):
        ImageFolder(tmp_path / 'file.txt')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='has no class sub-folders'):
        ImageFolder(tmp_path / 'empty')
    flat = tmp_path / 'flat'; flat.mkdir(); sample_image('coffee').save(flat / 'a.png')
    with pytest.raises(ValueError, match='put them in one sub-folder per class'):
        ImageFolder(flat)
    _folder(tmp_path / 'data', ['cat', 'dog'])
    (tmp_path / 'data' / 'eel').mkdir()
    with pytest.raises(ValueError, match=r"class folders \['eel'\] .* hold no image files"):
        ImageFolder(tmp_path / 'data')
    ds = ImageFolder(tmp_path / 'data', allow_empty=True)
    assert ds.classes == ['cat', 'dog', 'eel'] and len(ds) == 4
    with pytest.raises(FileNotFoundError, match=r"class folders \['fox'\] do not exist"):
        ImageFolder(tmp_path / 'data', classes=['cat', 'fox'])
    (tmp_path / 'nothing' / 'a').mkdir(parents=True); (tmp_path / 'nothing' / 'a' / 'notes.txt').write_text('x')
    with pytest.raises(ValueError, match='holds no image files'):
        ImageFolder(tmp_path / 'nothing')


def test_image_folder_broken_file_names_its_path(tmp_path):
    _folder(tmp_path, ['cat'])
    (tmp_path / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    ds = ImageFolder(tmp_path)
    broken = [i for i, (p, _) in enumerate(ds.samples) if p.name == 'broken.jpg'][0]
    with pytest.raises(ValueError, match='broken.jpg'):
        ds[broken]


def test_image_folder_with_workers_and_transform(tmp_path):
    _folder(tmp_path, ['a', 'b', 'c'], n=3, ext='png')
    ds = ImageFolder(tmp_path, transform=lambda im: torch.tensor(im.size))
    sizes, labels = zip(*DataLoader(ds, batch_size=4, num_workers=2))
    assert torch.cat(labels).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.cat(sizes).tolist() == [[24, 16]] * 9


# ---------------------------------------------------------------- CIFAR pickles
def _cifar(tmp_path, num_classes=10, n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % num_classes
    return write_cifar(tmp_path, (x, y), (x[:4], y[:4]), num_classes=num_classes), x, y


def test_cifar_reads_real_layout_channel_order(tmp_path):
    # a red image must come back red: b'data' holds the red plane first
    folder, x, y = _cifar(tmp_path)
    with open(folder / 'data_batch_1', 'rb') as f: batch = pickle.load(f, encoding='bytes')
    assert set(batch) == {b'batch_label', b'data', b'labels', b'filenames'}
    assert batch[b'data'].dtype == np.uint8 and batch[b'data'].shape[1] == 3072
    assert np.array_equal(batch[b'data'][0, :1024], x[0, 0].flatten().numpy())
    with open(folder / 'batches.meta', 'rb') as f: meta = pickle.load(f, encoding='bytes')
    assert meta[b'label_names'][0] == b'class_0'
    ds = CIFAR10(tmp_path, transform=lambda im: np.asarray(im))
    img, label = ds[5]
    assert img.shape == (32, 32, 3) and np.array_equal(img, x[5].permute(1, 2, 0).numpy()) and label == 5


def test_cifar100_keys(tmp_path):
    folder, x, y = _cifar(tmp_path, num_classes=100, n=150)
    assert sorted(p.name for p in folder.iterdir()) == ['meta', 'test', 'train']
    with open(folder / 'train', 'rb') as f: batch = pickle.load(f, encoding='bytes')
    assert {b'fine_labels', b'coarse_labels', b'data'} <= set(batch)
    ds = CIFAR100(folder, 'test')
    assert len(ds) == 4 and ds.num_classes == 100
    with pytest.raises(ValueError, match="label_type must be one of \\['fine', 'coarse'\\], got 'medium'"):
        CIFAR100(folder, label_type='medium')


# What Python 2's cPickle.dump(obj, f, 2) wrote for the CIFAR batches, assembled opcode by opcode from the pickle
# format (independently of write_cifar's pickler): strings are Python 2 byte strings (SHORT_BINSTRING/BINSTRING),
# arrays go through numpy.core.multiarray._reconstruct with the raw data as one string.
def _py2_int(v):
    if 0 <= v < 256: return b'K' + bytes([v])
    if 0 <= v < 65536: return b'M' + struct.pack('<H', v)
    return b'J' + struct.pack('<i', v)


def _py2_str(b):
    return (b'U' + bytes([len(b)]) if len(b) < 256 else b'T' + struct.pack('<i', len(b))) + b


def _py2_body(obj):
    if isinstance(obj, dict): return b'}(' + b''.join(_py2_body(k) + _py2_body(v) for k, v in obj.items()) + b'u'
    if isinstance(obj, list): return b'](' + b''.join(_py2_body(v) for v in obj) + b'e'
    if isinstance(obj, bytes): return _py2_str(obj)
    if isinstance(obj, int): return _py2_int(obj)
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 2
    dtype = b'cnumpy\ndtype\n' + _py2_str(b'u1') + _py2_int(0) + _py2_int(1) + b'\x87R(' + _py2_int(3) + _py2_str(b'|') + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff' + _py2_int(0) + b'tb'
    return (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n' + _py2_int(0) + b'\x85' + _py2_str(b'b') + b'\x87R'
            + b'(' + _py2_int(1) + _py2_int(obj.shape[0]) + _py2_int(obj.shape[1]) + b'\x86' + dtype + b'\x89' + _py2_str(obj.tobytes()) + b'tb')


def _python2_pickle(obj): return b'\x80\x02' + _py2_body(obj) + b'.'


def _cifar_batches(n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, num_classes, n)]
    batch = {b'batch_label': b'training batch 1 of 1', b'data': data, b'filenames': [f'img_{i}.png'.encode() for i in range(n)]}
    if num_classes == 10: batch[b'labels'] = labels
    else: batch[b'fine_labels'] = labels; batch[b'coarse_labels'] = [l // 5 for l in labels]
    return batch, data, labels


@pytest.mark.parametrize('num_classes', [10, 100])
@pytest.mark.parametrize('python', [2, 3])
def test_cifar_reads_python2_pickles_with_bytes_keys_and_python3_ones_with_str_keys(tmp_path, num_classes, python):
    folder_name, train_files, meta_name = ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], 'batches.meta') if num_classes == 10 \
        else ('cifar-100-python', ['train'], 'meta')
    folder = tmp_path / folder_name; folder.mkdir()
    names_key = b'label_names' if num_classes == 10 else b'fine_label_names'
    meta = {names_key: [f'name_{i}'.encode() for i in range(num_classes)]}
    if num_classes == 100: meta[b'coarse_label_names'] = [f'super_{i}'.encode() for i in range(20)]
    expected_x, expected_y = [], []
    for k, name in enumerate(train_files + ['test_batch' if num_classes == 10 else 'test']):
        batch, data, labels = _cifar_batches(3 + k, num_classes, seed=k)
        if name in train_files: expected_x.append(data); expected_y += labels
        if python == 2: raw = _python2_pickle(batch)
        else: raw = pickle.dumps({key.decode(): v for key, v in batch.items()}, protocol=4)       # re-pickled by Python 3: str keys
        (folder / name).write_bytes(raw)
    (folder / meta_name).write_bytes(_python2_pickle(meta) if python == 2 else pickle.dumps({k.decode(): [v.decode() for v in vs] for k, vs in meta.items()}))
    if python == 2:   # the files behave as the real ones: bytes keys under encoding='bytes', no load without an encoding
        assert set(pickle.loads((folder / train_files[0]).read_bytes(), encoding='bytes')) == set(_cifar_batches(1, num_classes)[0])
        with pytest.raises(UnicodeDecodeError):
            pickle.loads((folder / train_files[0]).read_bytes())
    ds = (CIFAR10 if num_classes == 10 else CIFAR100)(tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(np.concatenate(expected_x)).view(-1, 3, 32, 32))
    assert ds.labels.tolist() == expected_y and ds.classes[:2] == ['name_0', 'name_1'] and ds.num_classes == num_classes
    if num_classes == 100:
        coarse = CIFAR100(tmp_path, label_type='coarse')
        assert coarse.labels.tolist() == [l // 5 for l in expected_y] and coarse.classes[0] == 'super_0'


def test_write_cifar_writes_python2_pickles(tmp_path):
    for num_classes, batch_file, keys in [(10, 'data_batch_1', {b'batch_label', b'data', b'labels', b'filenames'}),
                                          (100, 'train', {b'batch_label', b'data', b'fine_labels', b'coarse_labels', b'filenames'})]:
        folder, x, y = _cifar(tmp_path / str(num_classes), num_classes=num_classes, n=150)
        raw = (folder / batch_file).read_bytes()
        assert raw[:2] == b'\x80\x02'                                     # protocol 2
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
        names = {name for name, _ in ops}
        assert 'SHORT_BINSTRING' in names and not names & {'BINUNICODE', 'SHORT_BINUNICODE', 'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'}
        assert ('GLOBAL', 'numpy.core.multiarray _reconstruct') in ops and not any(n == 'GLOBAL' and '_codecs' in a for n, a in ops)
        assert set(pickle.loads(raw, encoding='bytes')) == keys
        assert set(pickle.loads(raw, encoding='latin1')) == {k.decode() for k in keys}
        with pytest.raises(UnicodeDecodeError):
            pickle.loads(raw)
        # write_cifar's bytes and the hand-assembled Python 2 pickle of the same batch load to the same thing
        again = pickle.loads(_python2_pickle(pickle.loads(raw, encoding='bytes')), encoding='bytes')
        loaded = pickle.loads(raw, encoding='bytes')
        assert np.array_equal(again[b'data'], loaded[b'data']) and {k: v for k, v in again.items() if k != b'data'} == {k: v for k, v in loaded.items() if k != b'data'}


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='CIFAR-10 files not found: expected .*cifar-10-batches-py/data_batch_1'):
        CIFAR10(tmp_path)
    (tmp_path / 'cifar-10-python.tar.gz').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='cifar-10-python.tar.gz is there: extract it first'):
        CIFAR10(tmp_path)
    with pytest.raises(ValueError, match="split must be one of \\['train', 'test'\\], got 'val'"):
        CIFAR10(tmp_path, split='val')
    folder, x, y = _cifar(tmp_path)
    (folder / 'data_batch_3').unlink()
    with pytest.raises(FileNotFoundError, match='data_batch_3'):
        CIFAR10(tmp_path)
    with open(folder / 'data_batch_3', 'wb') as f: pickle.dump({b'data': np.zeros((2, 3072), np.float32), b'labels': [0, 1]}, f)
    with pytest.raises(ValueError, match=r"data_batch_3': 'data' must be uint8 \[N, 3072\]"):
        CIFAR10(tmp_path)
    with open(folder / 'data_batch_3', 'wb') as f: pickle.dump({b'data': np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(ValueError, match="data_batch_3' has no 'labels' entry"):
        CIFAR10(tmp_path)
    (folder / 'data_batch_3').write_bytes(b'garbage')
    with pytest.raises(ValueError, match='data_batch_3.*could not be read as a pickle'):
        CIFAR10(tmp_path)
    with pytest.raises(ValueError, match=r'CIFAR images must be uint8 \[N, 3, 32, 32\]'):
        write_cifar(tmp_path / 'x', (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), [0, 1]), (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), [0]))


# ---------------------------------------------------------------- ImageNet folders
def test_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageNet folder '.*nowhere' does not exist"):
        ImageNetFolder(tmp_path / 'nowhere')
    _folder(tmp_path / 'train', ['n01', 'n02'])
    with pytest.raises(FileNotFoundError, match=r"split folder '.*val' does not exist; expected .*/val/<wnid>/\*.JPEG, or the flat .*/val/\*.JPEG with their labels in .*LOC_val_solution.csv"):
        ImageNetFolder(tmp_path, 'val')
    (tmp_path / 'val').mkdir()
    with pytest.raises(ValueError, match=r"val' holds neither class folders nor images: expected .*/val/<wnid>/\*.JPEG, or the flat"):
        ImageNetFolder(tmp_path, 'val')
    for k in range(3): sample_image('coffee').resize((8, 8)).save(tmp_path / 'val' / f'ILSVRC2012_val_{k:08d}.JPEG')
    with pytest.raises(FileNotFoundError, match=r"holds the validation images directly, but their labels are not there: expected Kaggle's LOC_val_solution.csv "
                                                r"\(header ImageId,PredictionString\) at '.*LOC_val_solution.csv', or the images sorted into .*/val/<wnid>/\*.JPEG"):
        ImageNetFolder(tmp_path, 'val')
    with pytest.raises(FileNotFoundError, match="val_labels '.*nope.csv' does not exist; expected Kaggle's LOC_val_solution.csv"):
        ImageNetFolder(tmp_path, 'val', val_labels=tmp_path / 'nope.csv')
    _folder(tmp_path / 'val', ['n03'])
    with pytest.raises(ValueError, match=r"class folders \['n03'\] that are not in"):
        ImageNetFolder(tmp_path, 'val')
    with pytest.raises(ValueError, match="split must be one of \\['train', 'val'\\]"):
        ImageNetFolder(tmp_path, 'test')
    flat_train = tmp_path / 'other'; (flat_train / 'train').mkdir(parents=True); sample_image('coffee').save(flat_train / 'train' / 'a.JPEG')
    with pytest.raises(ValueError, match=r"train' holds images directly: expected .*/train/<wnid>/\*.JPEG \(or sort the images into class folders"):
        ImageNetFolder(flat_train)


VAL_ROWS = [('ILSVRC2012_val_00000002', 'n01443537 12 3 40 30 n01443537 1 1 9 9'), ('ILSVRC2012_val_00000001', 'n01484850 0 0 47 31'),
            ('ILSVRC2012_val_00000003', 'n01443537 5 6 7 8')]


def _flat_imagenet(root, rows=VAL_ROWS, csv_dir=None, wnids=('n01440764', 'n01443537', 'n01484850')):
    "train/<wnid>/ with one image each, a flat val/ and a LOC_val_solution.csv in Kaggle's format (ImageId,PredictionString; boxes 'wnid x0 y0 x1 y1' repeated)."
    _folder(root / 'train', list(wnids), n=1)
    (root / 'val').mkdir(parents=True)
    for image_id, _ in rows: sample_image('rocket').resize((20, 12)).save(root / 'val' / f'{image_id}.JPEG')
    csv = (csv_dir or root) / 'LOC_val_solution.csv'
    csv.write_text('ImageId,PredictionString\n' + ''.join(f'{i},{p} \n' for i, p in rows))
    return csv


def test_imagenet_flat_validation_folder_with_kaggle_csv(tmp_path):
    _flat_imagenet(tmp_path)
    ds = ImageNetFolder(tmp_path, 'val')
    assert [p.name for p, _ in ds.samples] == [f'ILSVRC2012_val_0000000{i}.JPEG' for i in (1, 2, 3)]
    assert ds.labels.tolist() == [2, 1, 1] and ds.classes == ['n01440764', 'n01443537', 'n01484850']
    assert ds[0][0].shape == (3, 12, 20) and ds[2][1] == 1
    assert torch.cat([y for _, y in DataLoader(ds, batch_size=2, num_workers=2)]).tolist() == [2, 1, 1]
    assert len(ImageNetFolder(tmp_path, 'train')) == 3


def test_imagenet_flat_validation_labels_by_path_and_in_the_kaggle_download(tmp_path):
    kaggle = tmp_path / 'imagenet-object-localization-challenge'
    root = kaggle / 'ILSVRC' / 'Data' / 'CLS-LOC'
    csv = _flat_imagenet(root, csv_dir=kaggle.mkdir(parents=True) or kaggle)   # Kaggle puts the CSVs three levels above CLS-LOC
    (kaggle / 'LOC_synset_mapping.txt').write_text('n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n')
    ds = ImageNetFolder(root, 'val')
    assert ds.labels.tolist() == [2, 1, 1] and ds.class_names[2] == 'great white shark'
    moved = tmp_path / 'labels.csv'; csv.rename(moved)
    assert ImageNetFolder(root, 'val', val_labels=moved).labels.tolist() == [2, 1, 1]
    assert read_val_solution(moved) == {i: p.split()[0] for i, p in VAL_ROWS}


def test_imagenet_flat_validation_errors(tmp_path):
    csv = _flat_imagenet(tmp_path, rows=VAL_ROWS[:2])
    sample_image('rocket').resize((20, 12)).save(tmp_path / 'val' / 'ILSVRC2012_val_00000009.JPEG')
    with pytest.raises(ValueError, match=r"1 image\(s\) in '.*val' have no row in '.*LOC_val_solution.csv', e.g. \['ILSVRC2012_val_00000009.JPEG'\]"):
        ImageNetFolder(tmp_path, 'val')
    (tmp_path / 'val' / 'ILSVRC2012_val_00000009.JPEG').unlink()
    csv.write_text(csv.read_text() + 'ILSVRC2012_val_00000003,n09999999 1 2 3 4\n')
    sample_image('rocket').resize((20, 12)).save(tmp_path / 'val' / 'ILSVRC2012_val_00000003.JPEG')
    with pytest.raises(ValueError, match=r"labels images with wnids \['n09999999'\] that are not class folders of"):
        ImageNetFolder(tmp_path, 'val')
    csv.write_text('image,label\nILSVRC2012_val_00000001,n01443537\n')
    with pytest.raises(ValueError, match=r"must start with the header ImageId,PredictionString .*got \['image', 'label'\]"):
        ImageNetFolder(tmp_path, 'val')
    csv.write_text('ImageId,PredictionString\nILSVRC2012_val_00000001,\n')
    with pytest.raises(ValueError, match="line 2: expected an image id and a PredictionString starting with its wnid"):
        read_val_solution(csv)
    csv.write_text('')
    with pytest.raises(ValueError, match='got an empty file'):
        read_val_solution(csv)


# ---------------------------------------------------------------- single-image patches
def test_single_image_patches_bad_arguments():
    with pytest.raises(ValueError, match='image of 30x20 pixels is smaller than the patch size 32x32'):
        SingleImagePatches(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match='64x64'):
        SingleImagePatches(torch.zeros(3, 48, 100), size=64)
    with pytest.raises(TypeError, match='size must be an integer, got 32.5'):
        SingleImagePatches('astronaut', size=32.5)
    with pytest.raises(ValueError, match='length must be a positive number, got 0'):
        SingleImagePatches('astronaut', length=0)
    with pytest.raises(ValueError, match='jitter must be 4 strengths'):
        SingleImagePatches('astronaut', jitter=(0.4, 0.4))
    with pytest.raises(ValueError, match='shear must lie in'):
        SingleImagePatches('astronaut', shear=90)
    ds = SingleImagePatches('astronaut', length=10)
    with pytest.raises(IndexError, match='patch index -11 is out of range for 10 patches'):
        ds.get_batch([0, -11])
    with pytest.raises(ValueError, match="format must be one of \\['png', 'jpeg'\\]"):
        ds.save('unused', n=1, format='gif')


def test_single_image_patches_accepts_a_path(tmp_path):
    sample_image('coffee').save(tmp_path / 'coffee.png')
    assert torch.equal(SingleImagePatches(tmp_path / 'coffee.png')[7], SingleImagePatches('coffee')[7])
    assert torch.equal(SingleImagePatches(str(tmp_path / 'coffee.png'))[7], SingleImagePatches('coffee')[7])


def test_single_image_patches_same_patch_in_any_worker_and_order():
    ds = SingleImagePatches('chelsea', size=24, length=500, seed=3)
    order = torch.randperm(500, generator=torch.Generator().manual_seed(0))[:96].tolist()
    loaded = torch.cat(list(DataLoader(ds, batch_size=16, sampler=order, num_workers=2)))
    assert torch.equal(loaded, ds.get_batch(order))
    one_by_one = torch.stack(list(DataLoader(ds, batch_size=None, sampler=order[:8], num_workers=2)))   # __getitem__ path
    assert torch.equal(one_by_one, loaded[:8])


def test_single_image_patches_pickle_drops_the_pyramid():
    ds = SingleImagePatches('rocket', length=100)
    first = ds.get_batch(range(8))
    assert ds._pyramid is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._pyramid is None and torch.equal(clone.get_batch(range(8)), first)


def test_single_image_patches_any_size_and_image():
    for name, size in [('retina', 64), ('camera', 16), ('noise', 32)]:
        x = SingleImagePatches(name, size=size, length=50).get_batch(range(50))
        assert x.shape == (50, 3, size, size) and x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()


def test_patch_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="patch folder '.*missing' does not exist"):
        PatchFolder(tmp_path / 'missing')
    with pytest.raises(ValueError, match='holds no image files'):
        PatchFolder(tmp_path)


def test_saved_patches_round_trip_with_workers(tmp_path):
    ds = SingleImagePatches('coffee', length=40)
    back = PatchFolder(ds.save(tmp_path / 'p', n=40, batch_size=16))
    loaded = torch.cat(list(DataLoader(back, batch_size=10, num_workers=2)))
    assert (loaded - ds.get_batch(range(40))).abs().max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------- image complexity
def test_image_complexity_of_a_file(tmp_path):
    sample_image('gravel').save(tmp_path / 'gravel.png')
    c = image_complexity(tmp_path / 'gravel.png')
    assert c['png_bytes_per_pixel'] > c['jpeg_bytes_per_pixel'] > 0 and (c['width'], c['height']) == (512, 512)
    with pytest.raises(ValueError, match='size must be a positive number'):
        image_complexity('gravel', size=0)


def test_pretraining_folder_has_no_held_out_split(tmp_path):
    from self_sup.data.images import pretraining_images
    for c in ('a', 'b'):
        (tmp_path / c).mkdir(); PIL.Image.new('RGB', (8, 8)).save(tmp_path / c / '0.png')
    assert len(pretraining_images('folder', tmp_path)) == 2
    with pytest.raises(ValueError, match="dataset='folder' reads one class-per-folder root .* has no 'test' split"):
        pretraining_images('folder', tmp_path, split='test')
