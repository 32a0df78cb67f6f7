"""Sinkhorn-Knopp: error messages, the block-wise CPU path, the tiny-marginal path, and 2 gloo processes
against one process on the concatenated batch. (Agreement with SwAV's loop, marginals, dtypes and the
batched form are tested in nbs/04_sinkhorn.ipynb.)"""
import math

import pytest
import torch
import torch.nn.functional as F

import self_sup.sinkhorn as sk
from self_sup.sinkhorn import marginal_error, sinkhorn_knopp
from distributed_utils import run_distributed


def _scores(*shape, seed=0, dim=32):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(*shape[:-1], dim, generator=g), dim=-1)
    c = F.normalize(torch.randn(shape[-1], dim, generator=g), dim=-1)
    return z @ c.T


def _reference(scores, eps, n_iters, r=None, c=None):
    "Textbook log-domain Sinkhorn in float64 (potentials a, b; same update order as SwAV)."
    L = scores.double() / eps
    N, K = L.shape[-2:]
    log_r = torch.full((N,), -math.log(N), dtype=torch.float64) if r is None else r.double().log()
    log_c = torch.full((K,), -math.log(K), dtype=torch.float64) if c is None else c.double().log()
    a = torch.zeros(L.shape[:-1], dtype=torch.float64)
    for _ in range(n_iters):
        b = log_c - torch.logsumexp(L + a.unsqueeze(-1), dim=-2)
        a = log_r - torch.logsumexp(L + b.unsqueeze(-2), dim=-1)
    return (N * torch.exp(L + a.unsqueeze(-1) + b.unsqueeze(-2))).float()


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize('scores, message', [
    ([[0.1, 0.2]], 'scores must be a torch.Tensor, got list'),
    (torch.ones(4, 3, dtype=torch.long), 'scores must be a floating-point tensor, got torch.int64'),
    (torch.ones(4), 'scores must be [N, K] (one problem) or [B, N, K] (B problems), got shape (4,)'),
    (torch.ones(2, 4, 3, 1), 'got shape (2, 4, 3, 1)'),
    (torch.ones(0, 3), 'at least one problem, sample and prototype, got shape (0, 3)'),
    (torch.ones(2, 4, 0), 'got shape (2, 4, 0)'),
])
def test_bad_scores(scores, message):
    with pytest.raises((TypeError, ValueError)) as e:
        sinkhorn_knopp(scores)
    assert message in str(e.value)


@pytest.mark.parametrize('bad, word', [(float('nan'), 'NaN'), (float('inf'), 'Inf'), (float('-inf'), 'Inf')])
def test_nonfinite_scores(bad, word):
    s = _scores(16, 5)
    s[3, 2] = bad
    with pytest.raises(ValueError, match=f'scores must be finite, found {word}'):
        sinkhorn_knopp(s)
    with pytest.raises(ValueError, match='scores must be finite'):
        sinkhorn_knopp(s.half())


def test_overflowing_ratio():
    with pytest.raises(ValueError, match=r'scores / eps overflows float32: largest \|score\| 1e\+30 with eps=1e-10'):
        sinkhorn_knopp(torch.full((4, 3), 1e30), eps=1e-10)


@pytest.mark.parametrize('kwargs, message', [
    (dict(eps=0), 'eps must be a positive number, got 0'),
    (dict(eps=-0.05), 'eps must be a positive number, got -0.05'),
    (dict(eps=float('nan')), 'eps must be a positive number, got nan'),
    (dict(eps='0.05'), "eps must be a positive number, got '0.05'"),
    (dict(n_iters=0), 'n_iters must be an integer >= 1, got 0'),
    (dict(n_iters=2.5), 'n_iters must be an integer >= 1, got 2.5'),
    (dict(n_iters=True), 'n_iters must be an integer >= 1, got True'),
    (dict(tol=0), 'tol must be a positive number, got 0'),
    (dict(row_marginals=torch.full((7,), 1 / 7)), 'row_marginals must have shape (8,), got (7,)'),
    (dict(col_marginals=torch.full((2, 3), 1 / 3)), 'col_marginals must have shape (3,), got (2, 3)'),
    (dict(row_marginals=torch.full((8,), 0.25)), 'row_marginals must sum to 1, got [2.0]'),
    (dict(col_marginals=torch.tensor([0.5, 0.6, -0.1])), 'col_marginals must be positive and finite, got smallest entry -0.1'),
    (dict(col_marginals=torch.tensor([0.5, 0.5, 0.0])), 'col_marginals must be positive and finite, got smallest entry 0'),
    (dict(col_marginals=torch.tensor([0.5, float('nan'), 0.5])), 'col_marginals must be positive and finite'),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError)) as e:
        sinkhorn_knopp(_scores(8, 3), **kwargs)
    assert message in str(e.value)


def test_batched_marginal_shapes():
    s = _scores(2, 8, 3)
    r = torch.rand(2, 8) + 0.1
    r /= r.sum(-1, keepdim=True)
    q = sinkhorn_knopp(s, n_iters=300, row_marginals=r, col_marginals=[0.2, 0.3, 0.5])
    for b in range(2):
        assert max(marginal_error(q[b], r[b], torch.tensor([0.2, 0.3, 0.5]))) < 1e-4
    with pytest.raises(ValueError, match=r'row_marginals must have shape \(8,\) or \(2, 8\), got \(3, 8\)'):
        sinkhorn_knopp(s, row_marginals=torch.full((3, 8), 1 / 8))


def test_marginals_are_normalised_within_tolerance():
    s = _scores(8, 3)
    q = sinkhorn_knopp(s, row_marginals=torch.full((8,), 1 / 8 + 1e-5))
    torch.testing.assert_close(q, sinkhorn_knopp(s))


# ---------------------------------------------------------------- code paths
def test_input_dtypes_and_layouts():
    s = _scores(64, 10)
    q = sinkhorn_knopp(s)
    torch.testing.assert_close(sinkhorn_knopp(s.double()), q)
    assert sinkhorn_knopp(s.double()).dtype == torch.float32
    torch.testing.assert_close(sinkhorn_knopp(s.T.contiguous().T), q)   # non-contiguous input


@pytest.mark.parametrize('shape', [(300, 40), (60, 200), (5, 60, 3), (4, 50, 100)])
@pytest.mark.parametrize('precision', ['highest', 'high'])   # BLAS sums / plain reductions
def test_blocks_equal_one_block(monkeypatch, shape, precision):
    s = _scores(*shape)
    one_block = sinkhorn_knopp(s, n_iters=10)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        monkeypatch.setattr(sk, '_CPU_BLOCK', 700)      # many blocks of a few rows (one thread ...)
        monkeypatch.setattr(sk, '_CPU_BLOCK_THREADED', 700)   # ... or several)
        many = sinkhorn_knopp(s, n_iters=10)
        with_tol = sinkhorn_knopp(s, n_iters=200, tol=1e-4)
    finally:
        torch.set_float32_matmul_precision(old)
    torch.testing.assert_close(many, one_block, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(many, _reference(s, 0.05, 10), atol=1e-5, rtol=1e-4)
    assert marginal_error(with_tol)[1] < 1e-4


def test_tiny_marginals_stabilise_every_step():
    # (smallest row share) x (smallest column share) < 1e-20: sums could underflow, every step subtracts maxima
    s = _scores(50, 6) * 3
    c = torch.tensor([1e-24, 0.2, 0.2, 0.2, 0.2, 0.2 - 1e-24], dtype=torch.float64)
    for n_iters in (1, 4, 50):
        q = sinkhorn_knopp(s, eps=0.02, n_iters=n_iters, col_marginals=c)
        assert q.isfinite().all()
        torch.testing.assert_close(q, _reference(s, 0.02, n_iters, c=c), atol=1e-5, rtol=1e-4)
    q = sinkhorn_knopp(s, eps=0.02, n_iters=2000, col_marginals=c, tol=1e-4)
    assert max(marginal_error(q, col_marginals=c.float())) < 1e-4


def test_log_domain_matches_reference_where_plain_loop_overflows():
    s = torch.rand(128, 20, generator=torch.Generator().manual_seed(1)) * 200 - 100
    torch.testing.assert_close(sinkhorn_knopp(s, 0.05, 5), _reference(s, 0.05, 5), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- two processes
SPLITS = ([12, 12], [5, 19])   # rows of the global batch on rank 0 and rank 1 (SwAV: equal; ours may differ)


def _global_scores():
    return _scores(24, 7, seed=3), _scores(6, 20, 4, seed=4), _scores(24, 100, seed=5)


def _row_marginals():
    r = torch.linspace(1, 2, 24, dtype=torch.float64)
    return r / r.sum()


def _split(x, rank, sizes, dim=0):
    return x.narrow(dim, sum(sizes[:rank]), sizes[rank])


def _codes(s2, s3, wide, r, **kw):
    "The calls of the test, on the global batch (one process) or on one rank's share (kw distributed=True)."
    return {
        'swav': sinkhorn_knopp(s2, **kw),
        'timetuning': sinkhorn_knopp(s2, n_iters=10, **kw),
        'tol': sinkhorn_knopp(s2, n_iters=500, tol=1e-5, **kw),
        'marginals': sinkhorn_knopp(s2, n_iters=20, row_marginals=r, col_marginals=torch.linspace(1, 3, 7) / 14, **kw),
        'batched': sinkhorn_knopp(s3, n_iters=30, **kw),
        'wide': sinkhorn_knopp(wide, n_iters=10, **kw),   # K > 64: the samples x prototypes layout
    }


def _errors(rank):
    s = _scores(8, 5, seed=rank)
    if rank == 1: s[0, 0] = float('nan')
    errors = []
    try: sinkhorn_knopp(s, distributed=True)
    except ValueError as e: errors.append(str(e))
    r = torch.full((8,), 0.1 if rank == 0 else 0.025, dtype=torch.float64)   # sums to 1 only over both ranks
    try: sinkhorn_knopp(_scores(8, 5), distributed=True, row_marginals=r)
    except ValueError as e: errors.append(str(e))
    r = torch.full((8,), 1 / 8)                                               # sums to 2 over both ranks
    try: sinkhorn_knopp(_scores(8, 5), distributed=True, row_marginals=r)
    except ValueError as e: errors.append(str(e))
    return errors


def _two_ranks(rank, world):
    s2, s3, wide, r = *_global_scores(), _row_marginals()
    out = {}
    for sizes in SPLITS:
        out[str(sizes)] = _codes(_split(s2, rank, sizes), _split(s3, rank, [10, 10], dim=1), _split(wide, rank, sizes),
                                 _split(r, rank, sizes), distributed=True)
    out['errors'] = _errors(rank)
    return out


@pytest.fixture(scope='module')
def two_ranks():
    return run_distributed(_two_ranks, world_size=2)   # one spawn for all the two-process tests


@pytest.mark.parametrize('sizes', SPLITS)
def test_two_processes_equal_one_process(two_ranks, sizes):
    expected = _codes(*_global_scores(), _row_marginals())
    for key, want in expected.items():
        got = torch.cat([o[str(sizes)][key] for o in two_ranks], dim=1 if key == 'batched' else 0)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=key)


def test_errors_are_raised_on_every_rank(two_ranks):
    # a NaN on one rank must stop every rank (a rank that went on would wait forever in the next collective)
    for o in two_ranks:
        errors = o['errors']
        assert len(errors) == 2, errors
        assert 'scores must be finite' in errors[0]
        assert 'row_marginals must sum to 1 over all ranks, got [2.0]' in errors[1]
