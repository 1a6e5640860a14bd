"""Loads the compiled operators (fastad._C) once and keeps the reason if that failed."""
from __future__ import annotations

try:
    from fastad import _C as compiled
except (ImportError, OSError) as error:  # a missing build or a torch ABI mismatch
    compiled = None
    load_error: str | None = f"{type(error).__name__}: {error}"
else:
    load_error = None


class ExtensionNotLoadedError(RuntimeError):
    """A native fastad op was called but fastad._C could not be loaded."""


def loaded() -> bool:
    return compiled is not None


def require(op_name: str) -> None:
    """Raises ExtensionNotLoadedError naming the op, the load error and the ways out."""
    if compiled is None:
        raise ExtensionNotLoadedError(
            f"fastad.ops.{op_name} needs the compiled extension fastad._C, which failed to load "
            f"({load_error}). Rebuild it with `pip install --no-build-isolation -e .`, or run the "
            'pure-PyTorch reference ops with fastad.set_backend("reference").'
        )
