"""Writing results: per-image scores (CSV), anomaly maps (.npy), heat-map overlays (PNG).
Every file is written to a temporary name and renamed into place."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastad.files import atomic_write
from fastad.data.images import UnreadableImageError, save_image
from fastad.data.report import SkippedImageWarning


def write_scores_csv(path, paths: list[str], image_scores: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """One row per image: path, score (and label when given)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "score"] + (["label"] if labels is not None else []))
    for i, (name, score) in enumerate(zip(paths, image_scores.tolist())):
        writer.writerow([name, f"{score:.9g}"] + ([int(labels[i])] if labels is not None else []))
    with atomic_write(path, "w") as f:
        f.write(buffer.getvalue())


def output_name(path: str, index: int) -> str:
    """A file stem for image `path` that stays unique across sub-folders (test/crack/000 ->
    0007_crack_000)."""
    parts = Path(path.split(":", 1)[-1]).with_suffix("").parts[-2:]
    return f"{index:05d}_" + "_".join(p.replace(" ", "_") for p in parts)


def save_map(path, anomaly_map: torch.Tensor) -> None:
    """anomaly_map [H, W] -> float32 .npy."""
    with atomic_write(path) as f:
        np.save(f, anomaly_map.detach().cpu().float().numpy())


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """values [H, W] in [0, 1] -> RGB [3, H, W] in [0, 1] (blue - cyan - yellow - red)."""
    x = values.clamp(0, 1)
    return torch.stack([(1.5 - (4 * x - 3).abs()).clamp(0, 1), (1.5 - (4 * x - 2).abs()).clamp(0, 1),
                        (1.5 - (4 * x - 1).abs()).clamp(0, 1)])


def mask_contour(mask: torch.Tensor) -> torch.Tensor:
    """mask [H, W] bool -> [H, W] bool, the mask's pixels with a pixel outside it among their 8 neighbours."""
    inside = mask.float()[None, None]
    eroded = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return mask & (eroded[0, 0] < 0.5)


def overlay(image: torch.Tensor, anomaly_map: torch.Tensor, mask: torch.Tensor | None,
            scale: tuple[float, float]) -> torch.Tensor:
    """image [3, H, W], map [H, W], mask [H, W] bool or None -> [3, H, 3W] in [0, 1]: the image,
    the heat map (colour range `scale` = (low, high)), and the image under the heat map with the
    ground-truth contour in green, side by side."""
    low, high = scale
    heat = heat_colours((anomaly_map.float() - low) / (high - low))
    blended = 0.55 * image + 0.45 * heat
    if mask is not None and bool(mask.any()):
        edge = mask_contour(mask.bool())
        blended[:, edge] = torch.tensor([0.0, 1.0, 0.0])[:, None]
    return torch.cat([image, heat, blended], dim=2)


def save_overlay(path, image: torch.Tensor, anomaly_map: torch.Tensor, mask: torch.Tensor | None,
                 scale: tuple[float, float]) -> None:
    """overlay(...) as an 8-bit PNG at path."""
    save_image(overlay(image.detach().cpu().float(), anomaly_map.detach().cpu(),
                       None if mask is None else mask.cpu(), scale), path)


def write_overlays(out, scored, dataset, limit: int | None = None) -> Path:
    """Overlays of the scored images of `dataset` (ScoredImages with maps; anomalous ones first,
    `limit` at most) into out/overlays/<name>.png, one colour range for the whole set; <name> is
    output_name(path, dataset position), as the map's."""
    folder = Path(out) / "overlays"
    scale = map_scale(scored.maps)
    order = sorted(range(len(scored.paths)), key=lambda i: (-int(scored.labels[i]), i))[:limit]
    for i in order:
        index = scored.indices[i] if scored.indices else i
        try:
            image = dataset[index].image
        except UnreadableImageError as error:  # changed on disk since it was scored
            warnings.warn(f"no overlay for {error.path}: {error.reason}", SkippedImageWarning, stacklevel=2)
            continue
        save_overlay(folder / f"{output_name(scored.paths[i], index)}.png", image, scored.maps[i],
                     scored.masks[i] if scored.labels[i] == 1 else None, scale)
    return folder


def map_scale(maps: torch.Tensor) -> tuple[float, float]:
    """(low, high) colour range for heat maps of a set: the 1st and 99.9th percentiles of (a
    sample of) its pixels, so that one hot pixel does not wash out the rest."""
    flat = maps.flatten().float()
    if flat.numel() > 1_000_000:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    low, high = torch.quantile(flat, torch.tensor([0.01, 0.999])).tolist()
    return low, max(high, low + 1e-12)
