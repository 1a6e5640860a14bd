"""Argument checks shared by every fastad package (ops, nn, models, engine, data, metrics).

Each check raises TypeError (wrong type) or ValueError (wrong value) whose message names the
argument and what was expected; the value checks return the normalised value.
"""
from __future__ import annotations

import math
import os
from numbers import Real

import torch


def check_tensor(name: str, value, ndim: int, shape_hint: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_hint}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_hint}, got {tuple(value.shape)}")


def check_float(name: str, value: torch.Tensor, cuda_float64: bool = False) -> None:
    allowed = (torch.float32, torch.float64)
    if value.dtype not in allowed:
        raise TypeError(f"{name} must be float32 or float64, got {value.dtype}")
    if value.is_cuda and value.dtype == torch.float64 and not cuda_float64:
        raise TypeError(f"{name} must be float32 on CUDA, got float64")


def tracing_or_capturing(value: torch.Tensor) -> bool:
    """True inside torch.compile / torch.export tracing or a CUDA graph capture, where a check
    that reads tensor values (a host sync) cannot run."""
    return torch.compiler.is_compiling() or (value.is_cuda and torch.cuda.is_current_stream_capturing())


def check_finite(name: str, value: torch.Tensor) -> None:
    """NaN/Inf check; skipped while tracing or capturing (see tracing_or_capturing)."""
    if tracing_or_capturing(value):
        return
    if not value.numel():
        return
    if value.is_floating_point():  # NaN propagates through aminmax: one pass, no [..] mask
        low, high = torch.aminmax(value)
        finite = bool(torch.isfinite(low) & torch.isfinite(high))
    else:
        finite = bool(torch.isfinite(value).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or Inf values")


def check_same_device(names: tuple[str, str], a: torch.Tensor, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{names[0]} and {names[1]} must be on the same device, got {a.device} and {b.device}")


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value}")


def check_pair(name: str, value, low: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each >= low, as (height, width)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        check_int(name, value[0], low)
        check_int(name, value[1], low)
        return int(value[0]), int(value[1])
    if isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {len(value)} values")
    check_int(name, value, low)
    return int(value), int(value)


def check_real(name: str, value, low: float | None = None, strict: bool = False,
               high: float | None = None) -> float:
    """A finite real number (bool refused) in [low, high] (low excluded when strict), as float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (strict and value == low)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {type(value).__name__}")
    return value


def check_choice(name: str, value, choices) -> object:
    """value must be one of `choices` (any iterable); the message lists them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_ints(name: str, value, low: int, min_length: int = 1) -> tuple[int, ...]:
    """A list or tuple of at least min_length ints, each >= low, as a tuple."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a list of ints, got {type(value).__name__}")
    if len(value) < min_length:
        raise ValueError(f"{name} must hold at least {min_length} ints, got {len(value)}")
    for item in value:
        check_int(f"each of {name}", item, low)
    return tuple(value)


def check_optional_path(name: str, value) -> str | None:
    """None, or a file path (str or os.PathLike) as str."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path or null, got {type(value).__name__}")
    return os.fspath(value)


def check_fraction_or_count(name: str, value) -> float | int | None:
    """None, a fraction in (0, 1] (a real number), or a count (an int >= 2: the int 1, one row,
    is refused as the fraction 1.0 mistyped)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 1:
            raise ValueError(f"{name}=1 would keep a single row; write {name}=1.0 to keep all of them (a fraction "
                             "in (0, 1]) or give a count >= 2")
        check_int(name, value, 2)
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a fraction in (0, 1], a count >= 1 or null, got {type(value).__name__}")
    return check_real(name, value, 0.0, strict=True, high=1.0)
