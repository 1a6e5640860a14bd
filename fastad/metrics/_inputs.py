"""Input handling shared by fastad.metrics: accept torch tensors, numpy arrays or sequences, check
shapes and values, and binarise ground truth. Every error names the argument."""
from __future__ import annotations

import numbers

import numpy as np
import torch

from fastad.checks import check_tensor


def as_cpu_tensor(name: str, value, ndim: int, shape_hint: str) -> torch.Tensor:
    """`value` (torch.Tensor, numpy array, list or tuple) as a CPU tensor of rank `ndim`.

    Reduced-precision floats (float16, bfloat16) are widened to float32; complex and non-numeric
    input is a TypeError, a wrong rank a ValueError."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, (np.ndarray, list, tuple)):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy array of shape {shape_hint}, got {type(value).__name__}")
    if tensor.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    check_tensor(name, tensor, ndim, shape_hint)
    return tensor


def check_no_nan(name: str, tensor: torch.Tensor) -> None:
    """NaN cannot be ranked: refuse it (±Inf is allowed, it sorts to the ends)."""
    if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
        raise ValueError(f"{name} contains NaN values")


def binarise(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Ground truth as bool: True (anomalous) where value > 0.5, so {0, 1}, {False, True} and
    {0, 255} masks all work. NaN is refused."""
    check_no_nan(name, tensor)
    if tensor.dtype == torch.bool:
        return tensor
    return tensor > 0.5


def scores_and_truth(score_name: str, truth_name: str, scores, truth, ndim: int, shape_hint: str):
    """(scores, truth as bool), both flattened CPU tensors, after the shared checks."""
    scores = as_cpu_tensor(score_name, scores, ndim, shape_hint)
    truth = as_cpu_tensor(truth_name, truth, ndim, shape_hint)
    if scores.shape != truth.shape:
        raise ValueError(
            f"{score_name} and {truth_name} must have the same shape, got {tuple(scores.shape)} and {tuple(truth.shape)}")
    check_no_nan(score_name, scores)
    return scores, binarise(truth_name, truth)


def check_real(name: str, value, allow_nan: bool = False) -> float:
    """A real Python number (int, float, numpy scalar or 0-d tensor) as float; bool is refused."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not allow_nan and value != value:
        raise ValueError(f"{name} must not be NaN")
    return value
