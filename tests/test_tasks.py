"""Labelled tasks and classifiers (`self_sup.tasks`): checkpoints that are not classifiers, or whose classes or
channels do not fit the task, are refused with a message that names the file and what is wrong."""
import pytest
import torch

from self_sup.tasks import Classifier, load_classifier, save_classifier


def test_classifier_that_does_not_fit_the_task(tmp_path):
    path = save_classifier(Classifier('small_cnn', 100, 1, widths=(8, 16)), tmp_path / 'cifar100_teacher.pt')
    with pytest.raises(ValueError, match="predicts 100 classes, but the task has 10"): load_classifier(path, 10, 1)
    rgb = save_classifier(Classifier('small_cnn', 10, 3, widths=(8, 16)), tmp_path / 'rgb_teacher.pt')
    with pytest.raises(ValueError, match="takes 3-channel images, but the task's images have 1"): load_classifier(rgb, 10, 1)


def test_files_that_are_not_classifiers(tmp_path):
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='junk.pt'): load_classifier(tmp_path / 'junk.pt', 10, 1)
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='is not a classifier checkpoint'): load_classifier(tmp_path / 'other.pt', 10, 1)
    with pytest.raises(FileNotFoundError, match='nope.pt'): load_classifier(tmp_path / 'nope.pt', 10, 1)
