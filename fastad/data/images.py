"""Reading and writing images and masks with an explicit resize policy.

Policy: every image becomes 3 channels (gray replicated, alpha dropped), float32 in [0, 1];
`size` is an int (square, PEDENet's 256 -> 256x256), an (H, W) pair, or None (keep the file's
size). Images are resized bilinearly, masks with nearest neighbour, then binarised at 128 of
255 (any nonzero value of a 0/1 mask also counts).

Bit depth: 8-bit files are divided by 255. 16-bit gray files (PNG or TIFF, PIL mode I;16) are
divided by their declared range: 2**bits - 1 where bits is the PNG's sBIT significant bits when
the file has that chunk and its values fit in those low bits (12-bit-in-16 camera images), else
65535 (32-bit integer files, mode I, likewise, when their values fit in 0..65535). 32-bit float
files (TIFF, mode F) are taken as they are and must lie in [0, 1]. Any other
mode that PIL cannot turn into RGB, and any failure while opening, decoding, converting or
resizing, raises UnreadableImageError naming the path and the reason.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastad.files import atomic_write
from fastad.checks import check_pair

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
    return check_pair("size", size, 1)


@contextlib.contextmanager
def _reading(path):
    """Turns any failure inside the block into UnreadableImageError naming path (the decoders
    raise OSError, ValueError, zlib.error, SyntaxError, ...: each means the file is unusable)."""
    try:
        yield
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file") from None
    except (MemoryError, RecursionError):
        raise
    except Exception as error:  # noqa: BLE001
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from None


def _open(path) -> Image.Image:
    with _reading(path), Image.open(path) as img:
        img.load()
        return img.copy()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_significant_bits(path) -> int | None:
    """The first value of a PNG's sBIT chunk (significant bits of the gray or red channel), or
    None when the file is no PNG or has no sBIT before its image data."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8 or head[4:] in (b"IDAT", b"IEND"):
                return None
            length = int.from_bytes(head[:4], "big")
            body = f.read(length)
            f.read(4)  # CRC (verified by PIL)
            if head[4:] == b"sBIT" and body:
                return body[0]


def _to_unit_range(img: Image.Image, path) -> Image.Image:
    """A 16-bit (or 32-bit integer holding 16-bit values) or float image -> mode F with values in
    [0, 1] (see the module docstring)."""
    values = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise UnreadableImageError(path, "a float image must hold finite values in [0, 1]")
        return Image.fromarray(values, mode="F")
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise UnreadableImageError(path, f"a {img.mode} integer image must hold values in 0..65535")
    bits = png_significant_bits(path)
    top = 65535.0
    if bits is not None and 0 < bits < 16 and values.max(initial=0) <= 2 ** bits - 1:
        top = float(2 ** bits - 1)
    return Image.fromarray(values / top, mode="F")


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # gray images deeper than 8 bits


def check_image(path) -> None:
    """Cheap validity check without decoding the pixels (PIL verify: header and chunk CRCs)."""
    with _reading(path), Image.open(path) as img:
        img.verify()


def load_image(path, size=256) -> torch.Tensor:
    """path -> [3, H, W] float32 in [0, 1], (H, W) = size (bilinear) or the file's size.
    UnreadableImageError (naming path) when any stage fails."""
    size = normalize_size(size)
    img = _open(path)
    with _reading(path):
        if img.mode in HIGH_DEPTH_MODES:
            return _load_high_depth(img, path, size)
        img = img.convert("RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _load_high_depth(img: Image.Image, path, size) -> torch.Tensor:
    gray = _to_unit_range(img, path)
    if size is not None and gray.size != (size[1], size[0]):
        gray = gray.resize((size[1], size[0]), Image.BILINEAR)
    values = torch.from_numpy(np.asarray(gray, dtype=np.float32).copy()).clamp_(0, 1)
    return values.expand(3, *values.shape).contiguous()


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
