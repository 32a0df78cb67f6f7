"""DINO's loss: the centre all-reduced over 2 gloo processes equals one process on the whole batch; bad inputs."""
import math

import pytest
import torch

from self_sup.losses import DINOLoss, collapse_report, dino_loss
from distributed_utils import run_distributed

K, B, V = 12, 6, 5   # output dim, global batch, student views (2 global + 3 local)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(V, B, K, generator=g), torch.randn(2, B, K, generator=g)


def _two_steps(loss_fn, student, teacher):
    losses = []
    for step in range(2):
        losses.append(loss_fn(student + step, teacher * (step + 1)).item())
    return losses


def _ranked(rank, world):
    student, teacher = _batch()
    half = slice(rank * B // world, (rank + 1) * B // world)
    loss_fn = DINOLoss(K, center_momentum=0.5)
    losses = _two_steps(loss_fn, student[:, half], teacher[:, half])
    return {'center': loss_fn.center.clone(), 'losses': losses}


def test_center_all_reduced_over_ranks():
    outs = run_distributed(_ranked, world_size=2)
    student, teacher = _batch()
    one = DINOLoss(K, center_momentum=0.5)
    full = _two_steps(one, student, teacher)
    for o in outs:
        torch.testing.assert_close(o['center'], one.center)          # every rank holds the global centre
    # the loss is a mean over each rank's samples; DDP averages, so the mean of the ranks' losses is the global loss
    for step in range(2):
        assert math.isclose(sum(o['losses'][step] for o in outs) / 2, full[step], rel_tol=1e-5)


def test_state_dict_keeps_center():
    loss_fn = DINOLoss(K)
    student, teacher = _batch()
    loss_fn(student, teacher)
    other = DINOLoss(K)
    other.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(other.center, loss_fn.center)


@pytest.mark.parametrize('kwargs, message', [
    (dict(teacher_temp=0.0), 'teacher_temp must be a positive number, got 0.0'),
    (dict(student_temp=-0.1), 'student_temp must be a positive number'),
    (dict(n_global=0), 'n_global must be an integer >= 1, got 0'),
    (dict(center_momentum=-0.1), 'center_momentum must lie in [0, 1]'),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        DINOLoss(K, **kwargs)


def test_bad_views():
    student, teacher = _batch()
    with pytest.raises(ValueError, match='every view must have the same shape'):
        dino_loss([student[0], student[1, :3]], teacher)
    with pytest.raises(TypeError, match='student_out must be a tensor or a list of tensors, got ndarray'):
        dino_loss(student.numpy(), teacher)
    with pytest.raises(ValueError, match=r'must be \[V, B, K\], \[V\*B, K\] or a list'):
        dino_loss(student[None], teacher)


def test_collapse_report_bad_input():
    with pytest.raises(ValueError, match='with K >= 2'):
        collapse_report(torch.ones(4))
    with pytest.raises(ValueError, match='uniform_tol must lie in'):
        collapse_report(torch.full((4, 2), 0.5), uniform_tol=2)
