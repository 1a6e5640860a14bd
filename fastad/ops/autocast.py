"""fastad's ops run in float32 inside an autocast region, as torch's own precision-sensitive ops do."""
from __future__ import annotations

import functools

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


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
