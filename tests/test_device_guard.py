"""GPU-only breakage caught on the CPU: every method, command and evaluation of `tests/smoke.py` under `DeviceGuard`
(a tensor made without a device that meets one on "the device" fails, as it would on a GPU)."""
import os, subprocess, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_guard import DeviceGuard, DeviceMismatch, PACKAGE, THE_DEVICE  # noqa: E402
from smoke import SMOKE  # noqa: E402

ENV = {**os.environ, 'SELF_SUP_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


def _package_function(source: str, name: str):
    "A function compiled as if it were written in `self_sup/losses.py` (the guard watches the package's files)."
    ns = {'torch': torch}
    exec(compile(source, str(Path(PACKAGE) / 'losses.py'), 'exec'), ns)
    return ns[name]


# collapse_report's check before the fix (a row-sum test against ones made on the CPU), and after it
DEFECT = "def rows_sum_to_one(p):\n    return torch.allclose(p.sum(-1), torch.ones(len(p)), atol=1e-3)\n"
FIXED = "def rows_sum_to_one(p):\n    return torch.allclose(p.sum(-1), p.new_ones(len(p)), atol=1e-3)\n"


def test_guard_flags_a_factory_without_device_meeting_a_device_tensor():
    p = torch.softmax(torch.randn(8, 5), -1)
    with DeviceGuard():
        with pytest.raises(DeviceMismatch, match='losses.py:2.*made without a device'):
            _package_function(DEFECT, 'rows_sum_to_one')(p.to(THE_DEVICE))
        assert _package_function(FIXED, 'rows_sum_to_one')(p.to(THE_DEVICE))
        assert _package_function(DEFECT, 'rows_sum_to_one')(p)   # a tensor that never went to the device: no GPU issue


def test_guard_follows_moves_and_allows_host_copies():
    with DeviceGuard():
        x = torch.randn(4, 3).to(THE_DEVICE)
        assert x.device == THE_DEVICE   # so `device=x.device` and `.to(x.device)` follow x
        ok = _package_function("def f(x):\n    return x + torch.ones(3, device=x.device) + torch.arange(3).to(x.device)\n", 'f')
        ok(x)
        host = _package_function("def f(x):\n    return x.cpu().numpy() + torch.ones(3).numpy()\n", 'f')
        host(x)
        with pytest.raises(DeviceMismatch, match=r'\.numpy\(\) of a tensor on the device'):
            _package_function("def f(x):\n    return x.numpy()\n", 'f')(x)
        index = _package_function("def f(x):\n    return x[torch.arange(2)]\n", 'f')
        index(x)   # PyTorch moves CPU indices to the device
        model = torch.nn.Linear(3, 2).to(THE_DEVICE)
        with pytest.raises(DeviceMismatch, match='F.f|linear'):
            _package_function("def f(m):\n    return m(torch.zeros(1, 3))\n", 'f')(model)


def test_collapse_report_passes_the_guard():
    from self_sup.losses import collapse_report
    with DeviceGuard():
        report = collapse_report(torch.softmax(torch.randn(16, 8), -1).to(THE_DEVICE))
    assert not report.collapsed


@pytest.mark.parametrize('name', list(SMOKE))
def test_every_command_on_the_device_under_the_guard(name, tmp_path):
    "Each method's training steps (forward, loss, hooks, collapse checks), the demo and every evaluation, on 'cpu:0'."
    r = subprocess.run([sys.executable, str(Path(__file__).parent / 'smoke.py'), '--device', str(THE_DEVICE), '--guard',
                        '--out', str(tmp_path), name], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
