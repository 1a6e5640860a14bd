"""Reading a pretrained backbone's weights from a local file (never downloaded)."""
from __future__ import annotations

from pathlib import Path

import torch


def read_state_dict(path, argument: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: .safetensors, or a torch.save'd state_dict read with
    torch.load(weights_only=True) (no code runs). ValueError naming `argument` (the config key,
    e.g. "vgg_weights") when the file is missing or holds no state_dict; `what` names the
    expected network in that message (e.g. "VGG-19")."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{argument} must be the path of a local {what} weights file, found nothing at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{argument} {path} must hold a state_dict (a dict of tensors), got {type(state).__name__}")
    return state
