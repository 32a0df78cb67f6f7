"""The `self_sup demo` application (`self_sup.demo`): bad inputs and their messages (missing image or teacher,
image smaller than a patch, teacher whose classes do not fit the task, bad config values), the config on the
generated command line, a tiny end-to-end run that writes the report (Markdown and HTML), plots and checkpoints,
and the run cache of sweeps."""
import argparse, dataclasses, json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from self_sup.demo import DemoConfig, cached_student, demo
from self_sup.methods.distill import DistillConfig
from self_sup.tasks import Classifier, load_classifier, load_task, save_classifier


@pytest.fixture(scope='module')
def random_teacher(tmp_path_factory) -> Path:
    "An untrained 10-class grey teacher checkpoint, the demo's networks (fast: the tests check plumbing, not accuracy)."
    torch.manual_seed(0)
    return save_classifier(Classifier('small_cnn', 10, 1, widths=(32, 64, 128)), tmp_path_factory.mktemp('teacher') / 'teacher.pt')


# ---------------------------------------------------------------- bad inputs
def test_missing_image_or_folder(tmp_path):
    with pytest.raises(ValueError, match=r"image must be a sample image name .*no_such_photo\.jpg' does not exist"):
        DemoConfig(image=str(tmp_path / 'no_such_photo.jpg'))
    with pytest.raises(ValueError, match='is a folder'): DemoConfig(image=str(tmp_path))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='is a file, expected a folder'): DemoConfig(out_dir=tmp_path / 'file')


def test_refuses_before_training_and_writes_nothing(random_teacher, tmp_path):
    tiny = tmp_path / 'tiny.png'
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(tiny)
    with pytest.raises(ValueError, match='too small'):
        demo(DemoConfig(image=str(tiny), teacher=str(random_teacher), out_dir=tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()
    wrong = save_classifier(Classifier('small_cnn', 100, 1, widths=(8, 16)), tmp_path / 'cifar100_teacher.pt')
    with pytest.raises(ValueError, match="predicts 100 classes, but the task has 10"):
        demo(DemoConfig(teacher=str(wrong), steps=1, out_dir=tmp_path / 'out'))


@pytest.mark.parametrize('field, value, message', [
    ('steps', 0, 'steps must be an integer >= 1, got 0'),
    ('steps', 2.5, 'steps must be an integer >= 1, got 2.5'),
    ('batch_size', -4, 'batch_size must be an integer >= 1'),
    ('seed', -1, 'seed must be an integer >= 0'),
    ('threads', -1, 'threads must be an integer >= 0'),
    ('task', 'cifar10', "task must be one of \\['mnist', 'photo'\\]"),
    ('teacher', 'missing.pt', "teacher must be 'train' .* 'missing.pt' does not exist"),
    ('image', 'real', 'use upper_bound=True'),
])
def test_bad_config_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message) as info: DemoConfig(**{field: value})
    assert field in str(info.value)


def test_config_on_the_generated_command_line():
    "The CLI builds options from the fields: every field must round-trip through argparse."
    from self_sup.cli import add_dataclass_arguments, dataclass_from_args
    parser = add_dataclass_arguments(argparse.ArgumentParser(), DemoConfig)
    assert dataclass_from_args(DemoConfig, parser.parse_args([])) == DemoConfig()
    argv = ['--image', 'chelsea', '--steps', '10', '--no-noise', '--out-dir', 'x', '--threads', '1']
    assert dataclass_from_args(DemoConfig, parser.parse_args(argv)) == DemoConfig(image='chelsea', steps=10, noise=False, out_dir=Path('x'), threads=1)


# ---------------------------------------------------------------- end to end
def test_tiny_demo_writes_report_and_plots(random_teacher, tmp_path):
    photo = tmp_path / 'photo.png'           # any image file works as the source
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / 'demo_out'
    r = demo(DemoConfig(image=str(photo), teacher=str(random_teacher), steps=2, batch_size=16, upper_bound=True, out_dir=out))
    for name in ['curves.png', 'accuracy.png', 'patches.png', 'report.md', 'report.html', 'results.json',
                 'student_one_image.pt', 'student_noise.pt', 'student_real_images.pt']:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / 'report.md').read_text()
    assert f"{r['teacher_accuracy']:.1%}" in report and str(photo) in report
    for name in ('one image', 'noise', 'real images'):
        assert f"{r['students'][name]['accuracy']:.1%}" in report and f"student from {name}" in report
    assert '94.1%' in report and '69.3%' in report          # the paper's numbers beside ours
    assert json.loads((out / 'results.json').read_text())['students']['noise']['image'] == 'noise'
    assert '<table>' in (out / 'report.html').read_text()
    student = load_classifier(out / 'student_one_image.pt', 10, 1)
    assert student(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # the same folder again: the demo overwrites its own files
    demo(DemoConfig(teacher=str(random_teacher), steps=1, batch_size=8, noise=False, out_dir=out))


def test_cached_student_survives_a_new_process_and_notices_changes(random_teacher, tmp_path):
    "A stored result is returned for the same recipe and teacher, and recomputed when either changes."
    task, teacher = load_task('mnist'), load_classifier(random_teacher, 10, 1)
    c = DistillConfig(steps=2, batch_size=8, eval_every=1, widths=(8, 16))
    first = cached_student(c, task, teacher, tmp_path / 'run.json')
    assert json.loads((tmp_path / 'run.json').read_text())['accuracy'] == first['accuracy']
    assert cached_student(c, task, teacher, tmp_path / 'run.json') == first
    longer = cached_student(dataclasses.replace(c, steps=3), task, teacher, tmp_path / 'run.json')
    assert len(longer['history']) == 3 and longer['key']['steps'] == 3
    torch.nn.init.zeros_(teacher.head.weight)
    assert cached_student(c, task, teacher, tmp_path / 'run.json')['key'] != first['key']
