"""Single-image distillation (`self_sup.methods.distill`): bad inputs and their messages (missing image, image
smaller than a patch, teacher whose classes do not fit the task, bad config values), the config on the generated
command line, a tiny end-to-end `distill` run, DataLoader workers, determinism, and the paper-scale CIFAR path
on tiny generated files. The demo's tests are in `test_demo.py`, the classifiers' in `test_tasks.py`."""
import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from self_sup.data.images import write_cifar
from self_sup.methods.distill import DistillConfig, VideoDistillConfig, distill, distill_student, make_source
from self_sup.tasks import Classifier, load_classifier, load_task, save_classifier


@pytest.fixture(scope='module')
def random_teacher(tmp_path_factory) -> Path:
    "An untrained 10-class grey teacher checkpoint (fast: the tests check plumbing, not accuracy)."
    path = tmp_path_factory.mktemp('teacher') / 'teacher.pt'
    torch.manual_seed(0)
    return save_classifier(Classifier('small_cnn', 10, 1, widths=(32, 64, 128)), path)


@pytest.fixture(scope='module')
def tiny_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('img') / 'tiny.png'
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- bad inputs
def test_missing_image_path(tmp_path):
    missing = str(tmp_path / 'no_such_photo.jpg')
    for make in (lambda: DistillConfig(image=missing), lambda: VideoDistillConfig(image=missing)):
        with pytest.raises(ValueError, match=r"image must be a sample image name .*no_such_photo\.jpg' does not exist"): make()
    with pytest.raises(ValueError, match='is a folder'): DistillConfig(image=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='no_such_photo.jpg'): make_source(missing, load_task('mnist'))


def test_image_smaller_than_patch(tiny_image):
    task = load_task('mnist')
    with pytest.raises(ValueError, match=r"source image .*tiny\.png' is too small: image of 20x16 pixels is smaller than the patch size 28x28"):
        make_source(str(tiny_image), task)
    make_source(str(tiny_image), task, patch_size=16)    # fits at 16 pixels


def test_teacher_classes_do_not_match_task(tmp_path):
    path = save_classifier(Classifier('small_cnn', 100, 1, widths=(8, 16)), tmp_path / 'cifar100_teacher.pt')
    with pytest.raises(ValueError, match="predicts 100 classes, but the task has 10"):
        distill(DistillConfig(teacher=str(path), steps=1))
    rgb = save_classifier(Classifier('small_cnn', 10, 3, widths=(8, 16)), tmp_path / 'rgb_teacher.pt')
    with pytest.raises(ValueError, match="takes 3-channel images, but the task's images have 1"):
        distill(DistillConfig(teacher=str(rgb), steps=1))


@pytest.mark.parametrize('cls, field, value, message', [
    (DistillConfig, 'lr', 0.0, 'lr must be a positive number, got 0.0'),
    (DistillConfig, 'temperature', -8.0, 'temperature must be a positive number'),
    (DistillConfig, 'targets', 'hard', "targets must be one of \\['soft', 'topk', 'argmax'\\], got 'hard'"),
    (DistillConfig, 'top_k', 0, 'top_k must be an integer >= 1'),
    (DistillConfig, 'patch_size', 4, 'patch_size must be 0 .* or at least 8'),
    (DistillConfig, 'patch_style', 'cartoon', 'patch_style must be one of'),
    (DistillConfig, 'task', 'svhn', 'task must be one of'),
    (DistillConfig, 'task', 'cifar10', 'data_root must be the folder'),
    (DistillConfig, 'widths', (32, 0), 'widths must be positive integers'),
    (DistillConfig, 'precision', '16', 'precision must be one of'),
    (VideoDistillConfig, 'n_frames', 1, 'n_frames must be at least 2'),
])
def test_bad_config_values_name_the_field(cls, field, value, message):
    with pytest.raises(ValueError, match=message) as info: cls(**{field: value})
    assert field in str(info.value)


def test_config_on_the_generated_command_line():
    "The lead's CLI builds options from the fields: every field must round-trip through argparse."
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    argv = ['--targets', 'topk', '--top-k', '3', '--widths', '16', '32', '--patch-size', '32', '--device', 'cpu']
    parser = add_dataclass_arguments(argparse.ArgumentParser(), DistillConfig)
    assert dataclass_from_args(DistillConfig, parser.parse_args([])) == DistillConfig()
    assert dataclass_from_args(DistillConfig, parser.parse_args(argv)) == DistillConfig(targets='topk', top_k=3, widths=(16, 32), patch_size=32, device='cpu')


# ---------------------------------------------------------------- end to end
def test_teacher_trained_then_reused(tmp_path):
    r = distill(DistillConfig(teacher='train', teacher_epochs=1, widths=(8, 16), steps=2, batch_size=8, out_dir=tmp_path / 'run'))
    assert r['teacher_accuracy'] > 0.2          # above chance (10%) after one epoch of a tiny CNN
    again = distill(DistillConfig(teacher=str(tmp_path / 'run' / 'teacher.pt'), widths=(8, 16), steps=1, batch_size=8))
    assert abs(again['teacher_accuracy'] - r['teacher_accuracy']) <= 0.002


def test_distill_writes_outputs_and_refuses_to_overwrite(random_teacher, tmp_path):
    c = DistillConfig(teacher=str(random_teacher), steps=2, batch_size=8, eval_every=1, out_dir=tmp_path / 'run')
    r = distill(c)
    assert len(r['history']) == 2 and 0 <= r['student_accuracy'] <= 1
    assert {'student.pt', 'results.json'} <= {p.name for p in (tmp_path / 'run').iterdir()}
    with pytest.raises(FileExistsError, match='already holds a distillation run'): distill(c)


def test_workers_and_determinism(random_teacher):
    task = load_task('mnist')
    teacher = load_classifier(random_teacher, 10, 1)
    c = DistillConfig(teacher=str(random_teacher), steps=3, batch_size=8, eval_every=1, widths=(8, 16))
    a = distill_student(c, task, teacher)
    b = distill_student(c, task, teacher)
    w = distill_student(DistillConfig(teacher=str(random_teacher), steps=3, batch_size=8, eval_every=1, widths=(8, 16), num_workers=2), task, teacher)
    assert a['history'] == b['history'] == w['history']
    for p, q in zip(a['student'].parameters(), w['student'].parameters()): torch.testing.assert_close(p, q)


def test_paper_recipe_on_tiny_cifar_files_runs_on_cpu(tmp_path):
    "The paper-scale configuration (CIFAR-10 from a local folder, ResNet teacher and student, 32-pixel patches) on tiny generated files."
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    write_cifar(tmp_path / 'data', (images(64), torch.arange(64) % 10), (images(20), torch.arange(20) % 10))
    c = DistillConfig(task='cifar10', data_root=tmp_path / 'data', image='chelsea', teacher_arch='resnet18', student_arch='resnet18',
                      teacher_epochs=1, steps=2, batch_size=8, patch_size=32, eval_every=1, device='cpu', out_dir=tmp_path / 'run')
    r = distill(c)
    assert r['teacher'].spec['arch'] == 'resnet18' and len(r['history']) == 2
    assert load_classifier(tmp_path / 'run' / 'teacher.pt', 10, 3).spec['arch'] == 'resnet18'
