"""Which implementation fastad's ops run: the compiled kernels or the PyTorch references."""
from __future__ import annotations

import contextlib
from typing import Iterator

BACKENDS = ("native", "reference")
_current = "native"


def set_backend(name: str) -> None:
    """Selects "native" (compiled CPU/CUDA kernels, the default) or "reference" (pure PyTorch)."""
    global _current
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _current = name


def get_backend() -> str:
    return _current


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Runs a block with another backend: `with fastad.use_backend("reference"): ...`."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def use_reference() -> bool:
    return _current == "reference"
