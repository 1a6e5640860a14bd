"""A trained model as plain arrays, for putting into Ray's object store once and rebuilding in
every replica.

    packed = pack_model(model)          # {"name", "config", "tensors": {key: (dtype, shape, uint8 [nbytes])}}
    ref = ray.put(packed)               # numpy arrays: stored once per node, read zero-copy
    model = unpack_model(ray.get(ref))  # an AnomalyModel on the CPU, eval mode, same weights bit for bit

Every tensor travels as its raw bytes (a uint8 numpy array) next to its dtype and shape, so any
dtype (bfloat16 included) survives, and Ray maps the arrays from shared memory instead of
unpickling a copy per actor.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from fastad.engine.checkpoint import model_from_state
from fastad.models.base import AnomalyModel


def tensor_to_bytes(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], np.ndarray]:
    """tensor (any dtype, shape, device) -> (dtype name, shape, uint8 array [nbytes]) on the CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return str(flat.dtype).removeprefix("torch."), tuple(tensor.shape), flat.view(torch.uint8).numpy()


def tensor_from_bytes(dtype: str, shape, data: np.ndarray) -> torch.Tensor:
    """Inverse of tensor_to_bytes. The tensor shares `data`'s memory (read-only when `data` comes
    from the object store); load_state_dict copies it into the model."""
    kind = getattr(torch, dtype, None)
    if not isinstance(kind, torch.dtype):
        raise ValueError(f"dtype must name a torch dtype, got {dtype!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        raw = torch.from_numpy(data)
    return raw.view(kind).reshape(shape)


def pack_model(model: AnomalyModel) -> dict:
    """A trained AnomalyModel -> {"name", "config", "tensors": {state_dict key: (dtype, shape,
    uint8 array)}}: picklable, and its arrays are stored zero-copy by Ray."""
    if not isinstance(model, AnomalyModel):
        raise TypeError(f"model must be a fastad AnomalyModel, got {type(model).__name__}")
    tensors = {key: tensor_to_bytes(value) for key, value in model.state_dict().items()}
    return {"name": model.name, "config": dict(model.config), "tensors": tensors}


def unpack_model(packed: dict) -> AnomalyModel:
    """pack_model's dict -> the model rebuilt from the registry with the same weights and memory
    bank, on the CPU, in eval mode."""
    missing = {"name", "config", "tensors"} - set(packed)
    if missing:
        raise ValueError(f"packed must come from pack_model; it lacks {sorted(missing)}")
    state = {key: tensor_from_bytes(*entry) for key, entry in packed["tensors"].items()}
    return model_from_state(packed["name"], packed["config"], state, "the packed model").eval()
