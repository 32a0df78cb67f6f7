"""Two gloo processes on the CPU: the collectives behave like one process on the concatenated batch."""
import torch

import pytest

from self_sup.distributed import (all_gather_no_grad, all_gather_with_grad, all_reduce_mean, all_reduce_sum, backend_for_device,
                                  get_rank, get_world_size, init_distributed, is_distributed, is_main_process)
from distributed_utils import JoinedProcessGroup, fake_gpu_torchrun, run_distributed


def _global_batch():
    torch.manual_seed(0)
    return torch.randn(8, 5)


def _loss(z):
    # a loss that couples every pair of samples, like a contrastive loss over the global batch
    z = torch.nn.functional.normalize(z, dim=1)
    return (z @ z.T).exp().sum().log()


def _collectives(rank, world):
    assert is_distributed() and get_rank() == rank and get_world_size() == world
    assert is_main_process() == (rank == 0)
    s = all_reduce_sum(torch.tensor([float(rank + 1)]))
    m = all_reduce_mean(torch.tensor([float(rank + 1)]))
    x = _global_batch()
    local = x.chunk(world)[rank].clone().requires_grad_(True)
    gathered = all_gather_with_grad(local)
    _loss(gathered).backward()
    return {'sum': s.item(), 'mean': m.item(), 'gathered': gathered.detach(), 'grad': local.grad,
            'nograd': all_gather_no_grad(local)}


def test_collectives_match_one_process():
    outs = run_distributed(_collectives, world_size=2)
    x = _global_batch().requires_grad_(True)
    _loss(x).backward()
    for rank, o in enumerate(outs):
        assert o['sum'] == 3.0 and o['mean'] == 1.5
        torch.testing.assert_close(o['gathered'], x.detach())
        torch.testing.assert_close(o['nograd'], x.detach())
        assert not o['nograd'].requires_grad
        # every rank computes the same global loss; the summed gradient of both ranks' losses is 2x the
        # one-process gradient, and each rank holds its own slice of it
        torch.testing.assert_close(o['grad'], 2 * x.grad.chunk(2)[rank], atol=1e-6, rtol=1e-5)


def test_single_process_helpers_are_identities():
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    assert torch.equal(all_reduce_sum(x.clone()), x)


def test_backend_follows_the_device_not_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)          # a machine with GPUs
    assert [backend_for_device(d) for d in ('cpu', torch.device('cpu'), 'mps')] == ['gloo'] * 3
    assert [backend_for_device(d) for d in ('cuda', 'cuda:1', torch.device('cuda', 0), None, 'auto')] == ['nccl'] * 5
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)         # a machine without
    assert backend_for_device(None) == backend_for_device('auto') == 'gloo'
    with pytest.raises(ValueError, match="got 'gpu'"): backend_for_device('gpu')


def test_init_distributed_under_torchrun_picks_the_backend_of_the_device(monkeypatch):
    calls = fake_gpu_torchrun(monkeypatch)
    for device, expected in [('cpu', ['gloo']), ('cuda', [('set_device', 1), 'nccl']), (None, [('set_device', 1), 'nccl'])]:
        calls.clear()
        with pytest.raises(JoinedProcessGroup): init_distributed(device=device)
        assert calls == expected, (device, calls)
    calls.clear()
    with pytest.raises(JoinedProcessGroup): init_distributed('gloo', device='cuda')   # an explicit backend wins
    assert calls == ['gloo']


def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 8), torch.nn.BatchNorm1d(8))


def _bn_batch():
    return torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _bn_loss(y):
    return (y.softmax(1) * torch.arange(8.)).sum(1).mean()


def _sync_bn(rank, world):
    from self_sup.distributed import convert_sync_batchnorm
    net = convert_sync_batchnorm(_bn_net())
    x = _bn_batch().chunk(world)[rank]
    y = net(x)
    _bn_loss(y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    for g in grads: all_reduce_mean(g)   # what DDP does with the gradients
    return {'y': y.detach(), 'grads': grads, 'running': [net[1].running_mean, net[1].running_var, net[5].running_var]}


def test_sync_batchnorm_on_cpu_matches_one_process():
    "Two gloo processes with SyncBatchNorm give the one-process outputs, running statistics and gradients."
    outs = run_distributed(_sync_bn, world_size=2)
    net = _bn_net()
    y = net(_bn_batch())
    _bn_loss(y).backward()
    for rank, o in enumerate(outs):
        torch.testing.assert_close(o['y'], y.detach().chunk(2)[rank], atol=1e-5, rtol=1e-4)
        for a, b in zip(o['running'], [net[1].running_mean, net[1].running_var, net[5].running_var]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for g, p in zip(o['grads'], net.parameters()):
            torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


def test_two_process_simclr_on_cpu_matches_one_process(tmp_path):
    "The README's torchrun command: 2 gloo processes x 16 images give the losses of 1 process x 32 (global BatchNorm)."
    import csv, os, shutil, subprocess, sys
    env = {**os.environ, 'SELF_SUP_PROGRESS': '0', 'OMP_NUM_THREADS': '1'}
    common = ['train', 'simclr', '--preset', 'cpu', '--device', 'cpu', '--num-workers', '0', '--max-steps', '3']
    runs = {1: [sys.executable, '-m', 'self_sup.cli', *common, '--batch-size', '32', '--out-dir', str(tmp_path / '1')],
            2: [shutil.which('torchrun'), '--standalone', '--nproc_per_node=2', '-m', 'self_sup.cli', *common,
                '--batch-size', '16', '--out-dir', str(tmp_path / '2')]}
    losses = {}
    for n, cmd in runs.items():
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        with open(tmp_path / str(n) / 'metrics.csv') as f: losses[n] = [float(row['loss']) for row in csv.DictReader(f)]
    assert len(losses[1]) == 3
    torch.testing.assert_close(torch.tensor(losses[2]), torch.tensor(losses[1]), atol=1e-5, rtol=1e-5)
