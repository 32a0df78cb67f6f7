"""Catch, on a CPU, the tensors that would land on the wrong device on a GPU.

On a machine without a GPU every tensor is on the CPU, so `torch.ones(n) * probs` works even where `probs` would
live on CUDA and the same line would fail there. `DeviceGuard` is a `TorchFunctionMode` that gives tensors a
colour instead of a device:

- *device* tensors: the result of a move to "the device" (`.to('cpu:0')`: the guarded run uses `cpu:0` as its
  device, which PyTorch treats as the CPU), of `.to(tensor)` with a device tensor, of `Module.to('cpu:0')` (its
  parameters and buffers), of a factory given `device=` such a device, and of any operation with a device input.
  While the guard is on, a device tensor reports `device(type='cpu', index=0)`, so `.to(x.device)` and
  `torch.ones(n, device=x.device)` follow `x`;
- *orphans*: made by a factory (`torch.ones`, `zeros`, `arange`, `tensor`, `full`, `eye`, `empty`, `rand*`,
  `linspace`, `from_numpy`, `as_tensor` of data) called from watched code (the `self_sup` package) without a
  device, and results of operations on orphans only: on a GPU machine these sit on the CPU while the device
  tensors are on CUDA;
- everything else is neutral (made by the test itself, by torchvision, ...).

An operation that combines an orphan (not a 0-dim scalar, which PyTorch lets a CUDA op take) with a device tensor
raises `DeviceMismatch`, naming where the orphan was made and where it was combined; so does `.numpy()` of a device
tensor that did not pass through `.cpu()`. Indexing a device tensor with an orphan index is allowed (PyTorch moves
CPU indices). Usage: `with DeviceGuard(): x = x.to('cpu:0'); method.to('cpu:0'); method(x)` (or `--device cpu:0`)."""
from __future__ import annotations
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

PACKAGE = str(Path(__file__).resolve().parents[1] / 'self_sup')
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
THIS = str(Path(__file__).resolve())
FACTORIES = {torch.ones, torch.zeros, torch.arange, torch.tensor, torch.full, torch.eye, torch.empty, torch.rand,
             torch.randn, torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.from_numpy,
             torch.as_tensor, torch.empty_strided, torch.range}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}
MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.type_as}
DEVICE, ORPHAN, HOST = '_guard_device', '_guard_orphan', '_guard_host'
THE_DEVICE = torch.device('cpu', 0)   # "the GPU" of a guarded run
_TENSOR_DEVICE = torch._C.TensorBase.device


def _is_the_device(device) -> bool:
    try: return torch.device(device) == THE_DEVICE
    except (RuntimeError, TypeError): return False


def _reported_device(t: torch.Tensor) -> torch.device:
    return THE_DEVICE if getattr(t, DEVICE, False) else _TENSOR_DEVICE.__get__(t)


class DeviceMismatch(RuntimeError):
    "A tensor made without a device meets a tensor on the device: on a GPU this line fails."


def _flatten(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor): out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj: _flatten(o, out)
    elif isinstance(obj, dict):
        for o in obj.values(): _flatten(o, out)
    return out


def _caller():
    "(file, line) of the first frame outside torch and this file."
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename.startswith(TORCH_DIR) or f.f_code.co_filename == THIS
                             or f.f_code.co_filename.startswith('<frozen')):
        f = f.f_back
    return (f.f_code.co_filename, f.f_lineno) if f is not None else ('?', 0)


def _colour(t: torch.Tensor) -> str | None:
    if getattr(t, DEVICE, False): return 'device'
    if getattr(t, ORPHAN, None) is not None and not isinstance(t, nn.Parameter): return 'orphan'
    return None


def _mark(obj, attr: str, value) -> None:
    for t in _flatten(obj, []):
        try: setattr(t, attr, value)
        except Exception: pass   # some outputs (e.g. ints wrapped as tensors by C++) refuse attributes


class DeviceGuard(TorchFunctionMode):
    "Raise `DeviceMismatch` where a tensor made without a device would meet one on the GPU (see the module doc)."
    def __init__(self, watch_notebooks: bool = False):
        super().__init__()
        self.watch_notebooks, self._module_to = watch_notebooks, None

    def watched(self, filename: str) -> bool:
        return filename.startswith(PACKAGE) or (self.watch_notebooks and '.ipynb' in filename)

    def __enter__(self):
        # Module.to keeps each Parameter object and swaps its .data: colour parameters and buffers after the move
        self._module_to, original = nn.Module.to, nn.Module.to
        def module_to(module, *args, **kwargs):
            out = original(module, *args, **kwargs)
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if _is_the_device(device):
                for t in list(module.parameters()) + list(module.buffers()): _mark(t, DEVICE, True)
            return out
        nn.Module.to = module_to
        torch.Tensor.device = property(_reported_device)
        return super().__enter__()

    def __exit__(self, *exc):
        nn.Module.to = self._module_to
        del torch.Tensor.device
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            t = args[0]
            if _colour(t) == 'device' and not getattr(t, HOST, False):
                file, line = _caller()
                if self.watched(file):
                    raise DeviceMismatch(f"{file}:{line}: .numpy() of a tensor on the device (call .cpu() first)")
        out = func(*args, **kwargs)
        if func in FACTORIES:
            has_device = kwargs.get('device') is not None
            from_tensor = func is torch.as_tensor and isinstance(args[0] if args else None, torch.Tensor)
            if has_device and _is_the_device(kwargs['device']): _mark(out, DEVICE, True)
            elif has_device: pass   # an explicit other device (the host): neutral
            elif from_tensor: self._propagate(args, out)
            else:
                file, line = _caller()
                if self.watched(file): _mark(out, ORPHAN, f"{file}:{line}")
            return out
        if func is torch.Tensor.cpu: return self._host(args[0], out)
        if func in MOVES:
            targets = [a for a in (*args[1:], kwargs.get('device'), kwargs.get('other')) if isinstance(a, (torch.device, str, torch.Tensor))]
            if func is torch.Tensor.cuda or any(_colour(a) == 'device' if isinstance(a, torch.Tensor) else _is_the_device(a) for a in targets):
                _mark(out, DEVICE, True); return out
            if targets: return self._host(args[0], out)   # moved to the host explicitly
        if func not in INDEXING: self._check(func, args, kwargs)
        self._propagate((args, kwargs), out)
        return out

    @staticmethod
    def _host(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        "`out`, the result of moving `t` to the host: a neutral tensor (a new view when the CPU handed back `t` itself)."
        if out is t:
            with torch._C.DisableTorchFunction(): out = t.view_as(t)
        _mark(out, HOST, True)
        return out

    def _check(self, func, args, kwargs) -> None:
        tensors = _flatten((args, kwargs), [])
        colours = [_colour(t) for t in tensors]
        orphans = [t for t, c in zip(tensors, colours) if c == 'orphan' and t.ndim > 0]
        if orphans and 'device' in colours:
            file, line = _caller()
            name = getattr(func, '__qualname__', getattr(func, '__name__', str(func)))
            raise DeviceMismatch(f"{file}:{line}: {name} combines a tensor made without a device at "
                                 f"{getattr(orphans[0], ORPHAN)} with a tensor on the device: on a GPU these are on "
                                 "different devices (make it with device=..., or *_like)")

    @staticmethod
    def _propagate(inputs, out) -> None:
        colours = {_colour(t) for t in _flatten(inputs, [])}
        if 'device' in colours: _mark(out, DEVICE, True)
        elif 'orphan' in colours:
            origin = next(getattr(t, ORPHAN) for t in _flatten(inputs, []) if _colour(t) == 'orphan')
            _mark(out, ORPHAN, origin)
