"""The gallery's thumbnails: small JPEGs of each image under its heat map, written beside the page.

The colour range is the one of fastad.engine.results.map_scale over the maps of up to
SCALE_SAMPLE images spread evenly over the set, every k-th pixel of them (reading every map twice
would double the time for a large folder); the page states the range it used.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastad.data.images import UnreadableImageError, load_image
from fastad.engine.results import as_bytes, blend, map_scale

THUMB_SIZE = 160
JPEG_QUALITY = 82
SCALE_SAMPLE = 256
SCALE_PIXELS = 1_000_000  # map_scale's own sample size


def read_map(source) -> torch.Tensor | None:
    """A row's map: a maps/*.npy path, a tensor [H, W], or None -> float32 tensor [H, W] or None."""
    if source is None:
        return None
    if isinstance(source, torch.Tensor):
        return source.float()
    return torch.from_numpy(np.load(source)).float()


def read_image(source, size: int) -> torch.Tensor:
    """A row's image (a file path, or a function returning a tensor [3, H, W]) -> [3, size, size]."""
    if callable(source):
        image = source()
        return F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]
    return load_image(source, size)


def shared_scale(rows) -> tuple[float, float] | None:
    """map_scale over the maps of up to SCALE_SAMPLE rows spread evenly; None when no row has a map."""
    with_maps = [row for row in rows if row.map is not None]
    if not with_maps:
        return None
    pick = np.unique(np.linspace(0, len(with_maps) - 1, min(SCALE_SAMPLE, len(with_maps))).round().astype(int))
    maps = [read_map(with_maps[i].map).flatten() for i in pick]
    stride = max(1, -(-sum(m.numel() for m in maps) // SCALE_PIXELS))  # every stride-th pixel: no shuffle needed
    return map_scale(torch.cat([m[::stride] for m in maps]))


def thumbnail(row, scale: tuple[float, float] | None, size: int = THUMB_SIZE) -> Image.Image:
    """The row's image at size x size under its heat map (mask contour in green), or the plain
    image when it has no map; UnreadableImageError / OSError when a file cannot be read."""
    image = read_image(row.image, size)
    anomaly_map = read_map(row.map)
    if anomaly_map is None or scale is None:
        return Image.fromarray(as_bytes(image))
    small = F.interpolate(anomaly_map[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    mask = None
    if row.mask is not None and bool(row.mask.any()):
        mask = F.interpolate(row.mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
    return Image.fromarray(as_bytes(blend(image, small, mask, scale)[1]))


def write_thumbnails(rows, folder: Path, scale) -> tuple[dict[int, str], list[tuple[str, str]]]:
    """Writes folder/<row name>.jpg for each row with an image -> ({row position: file name},
    [(path, reason)] of the rows whose image or map could not be read). The files are not synced
    one by one: the caller writes them into a fresh folder that replaces the old one at the end."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(position: int):
        row = rows[position]
        if row.image is None:
            return position, None, "image file not found"
        try:
            picture = thumbnail(row, scale)
        except (UnreadableImageError, OSError, ValueError) as error:
            return position, None, str(error)
        name = f"{row.name}.jpg"
        picture.save(folder / name, format="JPEG", quality=JPEG_QUALITY)
        return position, name, None

    written, failed = {}, []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for position, name, reason in pool.map(one, range(len(rows))):
            if name is None:
                failed.append((rows[position].path, reason))
            else:
                written[position] = name
    return written, failed
