"""Argument checks shared by fastad's ops: each error names the argument and what was expected."""
from __future__ import annotations

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
    if value.numel() and not bool(torch.isfinite(value).all()):
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
