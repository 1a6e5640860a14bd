"""Input checks of the fake kernels (torch.compile, torch.export, FakeTensorMode).

A fake kernel computes an op's output shapes without running it; these checks make it refuse what
the compiled kernel refuses, with the kernel's own message (csrc/common/checks.h and each op's
check functions), so a traced graph fails where eager would, and says the same thing.
Every check is a torch._check, which also records the condition for symbolic shapes.
"""
from __future__ import annotations

import math

import torch

#: c10's names of the scalar types, as the compiled kernels' messages print them
SCALAR_NAMES = {torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
                torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
                torch.bool: "Bool"}


def shape(t: torch.Tensor) -> str:
    """t's sizes as c10 prints them: [2, 3]."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check(condition, message: str) -> None:
    torch._check(condition, lambda: message)


def check_float(op: str, name: str, t: torch.Tensor, dim: int, layout: str) -> None:
    """t has `dim` dimensions (`layout`, e.g. "[B, P]") and is float32 or float64."""
    check(t.dim() == dim, f"{op}: {name} must be {layout}, got shape {shape(t)}")
    check(t.dtype in (torch.float32, torch.float64),
          f"{op}: {name} must be float32 or float64, got {SCALAR_NAMES.get(t.dtype, t.dtype)}")


def check_size(op: str, name: str, size) -> None:
    check(len(size) == 2 and size[0] >= 1 and size[1] >= 1,
          f"{op}: {name} must be two positive ints, got [{', '.join(map(str, size))}]")


def check_sigma(op: str, sigma: float) -> None:
    check(math.isfinite(sigma) and sigma > 0, f"{op}: sigma must be > 0, got {sigma:g}")


def check_patch_grid(op: str, patch_size, stride, image_size) -> tuple[int, int]:
    """The grid's (rows, cols) of patches, after the kernel's checks of its three pairs."""
    for name, size in (("patch_size", patch_size), ("stride", stride), ("image_size", image_size)):
        check_size(op, name, size)
    check(patch_size[0] <= image_size[0] and patch_size[1] <= image_size[1],
          f"{op}: patch_size [{patch_size[0]}, {patch_size[1]}] must fit in image_size "
          f"[{image_size[0]}, {image_size[1]}]")
    return (image_size[0] - patch_size[0]) // stride[0] + 1, (image_size[1] - patch_size[1]) // stride[1] + 1
