"""Reading and writing images and masks with an explicit resize policy.

Policy: every image becomes 3 channels (gray replicated, alpha dropped), float32 in [0, 1];
`size` is an int (square, PEDENet's 256 -> 256x256), an (H, W) pair, or None (keep the file's
size). Images are resized bilinearly, masks with nearest neighbour, then binarised at 128 of
255 (any nonzero value of a 0/1 mask also counts). An unreadable file raises
UnreadableImageError naming the path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastad._files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class UnreadableImageError(OSError):
    """A file that is missing, not an image, or corrupt. .path and .reason say which and why."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def normalize_size(size) -> tuple[int, int] | None:
    """size: None, an int > 0 or an (H, W) pair of ints > 0 -> None or (H, W)."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"size must be None, a positive int or an (H, W) pair of positive ints, got {size!r}")
    return pair


def _open(path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from None


def check_image(path) -> None:
    """Cheap validity check without decoding the pixels (PIL verify: header and chunk CRCs)."""
    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from None


def load_image(path, size=256) -> torch.Tensor:
    """path -> [3, H, W] float32 in [0, 1], (H, W) = size (bilinear) or the file's size."""
    size = normalize_size(size)
    img = _open(path).convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_mask(path, size=256) -> torch.Tensor:
    """path -> [H, W] bool, (H, W) = size (nearest neighbour) or the file's size."""
    size = normalize_size(size)
    img = _open(path)
    img = img.convert("L") if img.mode not in ("1", "L") else img
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.NEAREST)
    values = np.asarray(img)
    binary = values > 0 if values.dtype == bool or values.max(initial=0) <= 1 else values >= 128
    return torch.from_numpy(np.ascontiguousarray(binary))


def list_images(directory) -> list[Path]:
    """Image files (by suffix) directly in directory, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _write_atomic(img: Image.Image, path) -> None:
    with atomic_write(path) as f:
        img.save(f, format="PNG")


def save_image(image: torch.Tensor, path) -> None:
    """image [3, H, W] (or [1, H, W]) float in [0, 1] -> 8-bit PNG at path, written atomically."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be a tensor of shape [3, H, W] or [1, H, W], got {getattr(image, 'shape', image)!r}")
    array = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    _write_atomic(Image.fromarray(array[..., 0] if array.shape[2] == 1 else array), path)


def save_mask(mask: torch.Tensor, path) -> None:
    """mask [H, W] bool -> 0/255 8-bit PNG at path, written atomically."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a tensor of shape [H, W], got {getattr(mask, 'shape', mask)!r}")
    _write_atomic(Image.fromarray(mask.detach().cpu().bool().numpy().astype(np.uint8) * 255), path)
