"""fastad's ops run in float32 inside an autocast region, as torch's own precision-sensitive ops do.

Two places apply the rule, so that it holds however an op is reached:
- `float32_under_autocast` decorates the Python wrappers (fastad.ops.knn, ...): low-precision
  arguments are cast before the wrapper's own checks, which therefore name float32 in their errors,
  and before the pure-PyTorch reference backend runs;
- `register_float32_autocast` registers an Autocast kernel for each forward operator in the
  dispatcher (torch.library.register_autocast, for the CPU and CUDA autocast keys), so that
  `torch.ops.fastad.*` called directly, or replayed from a compiled or exported graph, casts too.
  It casts floating-point tensors other than float64 to float32 (float64 passes through) and runs
  the op with autocast excluded. Backward operators and in-place variants get no Autocast kernel:
  backward ops receive the float32 of their forward, and casting a mutated argument would lose
  the mutation. The partial-convolution operators (NATIVE_LOW_PRECISION) take float16/bfloat16
  themselves, computing in float32 inside and returning their input's dtype, because the
  convolution between them follows autocast as nn.Conv2d does; they need no Autocast kernel.
"""
from __future__ import annotations

import functools

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
#: the device types whose autocast keys fastad registers kernels for
AUTOCAST_DEVICES = ("cpu", "cuda")
#: forward operators whose kernels take float16 / bfloat16 as they are (float32 arithmetic inside)
NATIVE_LOW_PRECISION = ("fastad::partial_conv_coverage", "fastad::partial_conv_renormalize")


def _upcast(value):
    if isinstance(value, torch.Tensor) and value.dtype in LOW_PRECISION and torch.is_autocast_enabled(value.device.type):
        return value.float()
    return value


def float32_under_autocast(fn):
    """Decorates an op wrapper: while autocast is enabled on a tensor argument's device, float16 /
    bfloat16 tensor arguments are cast to float32 first (outside autocast they are passed through,
    and the op's dtype check rejects them with its usual error)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper


def register_float32_autocast(qualname: str) -> None:
    """Registers the dispatcher's Autocast kernels (CPU and CUDA) of operator `qualname`
    ("fastad::knn"): inside autocast its floating-point inputs are cast to float32 (float64 kept)."""
    for device_type in AUTOCAST_DEVICES:
        torch.library.register_autocast(qualname, device_type, torch.float32)
