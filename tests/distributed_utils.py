"""Run a function in N gloo processes on this machine (the CPU stand-in for torchrun + NCCL)."""
import os, socket, tempfile, traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, fn, args, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        dist.init_process_group('gloo', rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        torch.save({'ok': True, 'result': result}, os.path.join(out_dir, f'{rank}.pt'))
    except BaseException:
        torch.save({'ok': False, 'error': traceback.format_exc()}, os.path.join(out_dir, f'{rank}.pt'))
    finally:
        if dist.is_initialized(): dist.destroy_process_group()


def run_distributed(fn, world_size: int = 2, args: tuple = ()):
    """Run `fn(rank, world_size, *args)` in `world_size` gloo processes; return the per-rank results."""
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world_size, free_port(), fn, args, d), nprocs=world_size,
                           join=True, start_method='spawn')
        outs = [torch.load(os.path.join(d, f'{r}.pt'), weights_only=False) for r in range(world_size)]
    for r, o in enumerate(outs):
        if not o['ok']: raise AssertionError(f'rank {r} failed:\n{o["error"]}')
    return [o['result'] for o in outs]


class JoinedProcessGroup(Exception):
    "Raised by the fake `init_process_group` of `fake_gpu_torchrun`: the point where a real run would join."


def fake_gpu_torchrun(monkeypatch) -> list:
    """Rank 1 of 2 under torchrun on a machine with GPUs, without starting a process group: returns the list
    that records each `torch.cuda.set_device(i)` as ('set_device', i) and each backend asked for; the call to
    `init_process_group` then raises `JoinedProcessGroup`."""
    calls = []
    def fake_init_process_group(backend, **kwargs):
        calls.append(backend); raise JoinedProcessGroup
    monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.setenv('RANK', '1'); monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda i: calls.append(('set_device', i)))
    monkeypatch.setattr(dist, 'init_process_group', fake_init_process_group)
    return calls
