"""Reading and writing images and masks with an explicit resize policy.

Policy: every image becomes 3 channels (gray replicated, alpha dropped), float32 in [0, 1];
`size` is an int (square, PEDENet's 256 -> 256x256), an (H, W) pair, or None (keep the file's
size). Images are resized bilinearly, masks with nearest neighbour, then binarised at 128 of
255 (any nonzero value of a 0/1 mask also counts).

Orientation: an EXIF orientation tag (a phone or camera picture stored sideways) is applied, so
an image is read as a viewer shows it.

Bit depth: 8-bit files are divided by 255. 16-bit files, gray (PNG or TIFF, PIL mode I;16) and
colour (PNG RGB, RGBA or gray+alpha; TIFF RGB or RGBA), are divided by their declared range:
2**bits - 1 where bits is the PNG's sBIT significant bits when the file has that chunk and its
values fit in those low bits (12-bit-in-16 camera images), else 65535 (32-bit integer files,
mode I, likewise, when their values fit in 0..65535). 32-bit float files (TIFF, mode F) are
taken as they are and must lie in [0, 1].

What is read (READ_MODES): 1-bit, 8-bit gray, palette, gray+alpha, RGB, RGBA, CMYK, YCbCr and
LAB files, 16-bit gray and colour files and 32-bit integer and float gray files, in the formats
of IMAGE_SUFFIXES. Any other mode (e.g. a 32-bit float colour TIFF), and any failure while
opening, decoding, converting or resizing, raises UnreadableImageError naming the path and the
reason. In a folder, only regular files (or links to them) with an IMAGE_SUFFIXES suffix are
images; list_entries names every other entry (other suffixes, sub-folders, broken links) with
the reason it is ignored.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fastad.files import atomic_write
from fastad.checks import check_pair

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
READ_MODES = ("1", "L", "P", "PA", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I;16L", "I;16B",
              "I;16N", "I", "F")  # PIL modes load_image reads (16-bit colour files open as RGB, RGBA or LA)


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


def _check_extent(img: Image.Image, path) -> None:
    """UnreadableImageError when the file's image data (PIL's tiles) does not cover the size its
    header declares: a corrupt header would otherwise make PIL allocate and fill that size."""
    width, height = img.size
    covered = sum(max(0, min(t.extents[2], width) - t.extents[0]) * max(0, min(t.extents[3], height) - t.extents[1])
                  for t in img.tile)
    if not width or not height or (img.tile and covered < width * height):
        raise UnreadableImageError(path, f"its header says {width}x{height} pixels, its image data covers {covered}")


def _open(path) -> Image.Image:
    """The decoded image of path, turned as its EXIF orientation says."""
    with _reading(path), Image.open(path) as img:
        _check_extent(img, path)
        img.load()
        return ImageOps.exif_transpose(img)


def _raw_mode(img: Image.Image) -> str:
    """How the file stores its pixels (PIL's raw mode, e.g. RGB;16B), before decoding."""
    args = img.tile[0].args if img.tile else ""
    return str(args[0] if isinstance(args, tuple) and args else args)


def _is_deep_colour(img: Image.Image) -> bool:
    """A colour (or gray+alpha) file of 16 bits per channel, which PIL would cut to 8."""
    return img.mode in ("RGB", "RGBA", "LA") and ";16" in _raw_mode(img)


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


def _unit_range(values: np.ndarray, path, mode: str) -> np.ndarray:
    """Integer pixel values (0..65535) -> float32 in [0, 1] by the file's declared range (the
    module docstring)."""
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise UnreadableImageError(path, f"a {mode} integer image must hold values in 0..65535")
    bits = png_significant_bits(path)
    top = 65535.0
    if bits is not None and 0 < bits < 16 and values.max(initial=0) <= 2 ** bits - 1:
        top = float(2 ** bits - 1)
    return (values / top).astype(np.float32)


def _to_unit_range(img: Image.Image, path) -> Image.Image:
    """A 16-bit (or 32-bit integer holding 16-bit values) or float image -> mode F with values in
    [0, 1] (see the module docstring)."""
    values = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise UnreadableImageError(path, "a float image must hold finite values in [0, 1]")
        return Image.fromarray(values, mode="F")
    return Image.fromarray(_unit_range(values, path, img.mode), mode="F")


ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}  # EXIF orientation -> turn


def _deep_channels(path, img: Image.Image) -> list[Image.Image]:
    """The colour channels (alpha dropped, gray replicated) of a 16-bit colour file as mode F
    images in [0, 1], turned as its EXIF orientation says."""
    import png  # pypng: PIL reads 16-bit colour as 8 bits
    import tifffile

    if img.format == "PNG":
        width, height, rows, info = png.Reader(filename=str(path)).read()
        values = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
    else:
        values = tifffile.imread(path, key=0)
        if values.ndim == 3 and values.shape[0] in (3, 4) and values.shape[-1] not in (3, 4):
            values = np.moveaxis(values, 0, -1)
    if values.ndim != 3 or values.shape[-1] not in (2, 3, 4):
        raise UnreadableImageError(path, f"a 16-bit colour image must have 2 to 4 channels, got shape {values.shape}")
    if values.shape[:2] != (img.height, img.width) or not values.size:
        raise UnreadableImageError(path, f"its pixel data is {values.shape[0]}x{values.shape[1]}, its header says "
                                         f"{img.height}x{img.width}")
    values = values[..., :1].repeat(3, axis=-1) if values.shape[-1] == 2 else values[..., :3]
    unit = _unit_range(values.astype(np.float32), path, f"16-bit {img.mode}")
    turn = ORIENTATIONS.get(img.getexif().get(0x0112))
    channels = [Image.fromarray(np.ascontiguousarray(unit[..., c]), mode="F") for c in range(3)]
    return [c.transpose(turn) for c in channels] if turn is not None else channels


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # gray images deeper than 8 bits


def check_image(path) -> None:
    """Cheap validity check without decoding the pixels (PIL verify: header and chunk CRCs)."""
    with _reading(path), Image.open(path) as img:
        img.verify()


def load_image(path, size=256) -> torch.Tensor:
    """path -> [3, H, W] float32 in [0, 1], (H, W) = size (bilinear) or the file's size, as a
    viewer shows it (EXIF orientation applied). UnreadableImageError (naming path) when any
    stage fails or the file's mode is not one of READ_MODES."""
    size = normalize_size(size)
    with _reading(path), Image.open(path) as opened:
        _check_extent(opened, path)
        if _is_deep_colour(opened):
            return _load_deep_colour(path, opened, size)
    img = _open(path)
    with _reading(path):
        if img.mode not in READ_MODES:
            raise UnreadableImageError(path, f"its pixel mode {img.mode} is not one fastad reads ({', '.join(READ_MODES)})")
        if img.mode in HIGH_DEPTH_MODES:
            return _load_high_depth(img, path, size)
        img = img.convert("RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _load_deep_colour(path, img: Image.Image, size) -> torch.Tensor:
    channels = _deep_channels(path, img)
    if size is not None and channels[0].size != (size[1], size[0]):
        channels = [c.resize((size[1], size[0]), Image.BILINEAR) for c in channels]
    return torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) for c in channels])).clamp_(0, 1)


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


def _ignored_because(path: Path) -> str | None:
    """Why a folder entry is not an image file, or None when it is one."""
    if path.is_symlink() and not path.exists():
        return "a broken link"
    if path.is_dir():
        return "a folder (sub-folders are not read)"
    if not path.is_file():
        return "not a regular file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (suffix {path.suffix or 'none'!r}; read: {', '.join(IMAGE_SUFFIXES)})"
    return None


def list_entries(directory) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files directly in directory, sorted by name; [(path, reason)] of every other entry
    of it, ignored: other suffixes, sub-folders, broken links, special files)."""
    images, ignored = [], []
    for path in sorted(Path(directory).iterdir()):
        reason = _ignored_because(path)
        if reason is None:
            images.append(path)
        else:
            ignored.append((str(path), reason))
    return images, ignored


def list_images(directory) -> list[Path]:
    """Image files (by suffix) directly in directory, sorted by name."""
    return list_entries(directory)[0]


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
