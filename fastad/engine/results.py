"""Writing results: anomaly maps (.npy) and heat-map overlays (PNG), named as the scores folder
names them (fastad.engine.scores_folder, which also writes scores.csv). Every file is written to
a temporary name and renamed into place.

An overlay PNG reads on its own: image | heat map | heat map over the image (ground truth
outlined), a colour bar labelled with the set's map range, and a caption with the image score
(and verdict, with a calibrated threshold). Heat maps use matplotlib's viridis: perceptually
uniform, monotonic in lightness, so it reads in grey and with the common colour-vision
deficiencies (jet does neither)."""
from __future__ import annotations

import warnings
from pathlib import Path

import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from fastad.files import atomic_write
from fastad.data.images import UnreadableImageError
from fastad.data.report import SkippedImageWarning
from fastad.engine.decision import verdicts
from fastad.engine.scores_folder import OVERLAYS_DIR, output_name


def save_map(path, anomaly_map: torch.Tensor) -> None:
    """anomaly_map [H, W] -> float32 .npy."""
    with atomic_write(path) as f:
        np.save(f, anomaly_map.detach().cpu().float().numpy())


COLOUR_MAP = "viridis"
LUT_SIZE = 256
HEAT_WEIGHT = 0.45  # of the heat map where it lies over the image


@functools.cache
def colour_table() -> torch.Tensor:
    """COLOUR_MAP sampled at LUT_SIZE levels: [LUT_SIZE, 3] float32 RGB in [0, 1]."""
    from matplotlib import colormaps  # imported on first use: slow import

    return torch.from_numpy(colormaps[COLOUR_MAP](np.linspace(0, 1, LUT_SIZE))[:, :3].astype(np.float32))


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """values [H, W] in [0, 1] (clamped) -> RGB [3, H, W] in [0, 1] in COLOUR_MAP."""
    levels = (values.float().clamp(0, 1) * (LUT_SIZE - 1)).round().long()
    return colour_table()[levels].permute(2, 0, 1).contiguous()


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
    heat, blended = blend(image, anomaly_map, mask, scale)
    return torch.cat([image, heat, blended], dim=2)


def blend(image: torch.Tensor, anomaly_map: torch.Tensor, mask: torch.Tensor | None,
          scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """image [3, H, W], map [H, W], mask [H, W] bool or None -> (heat map [3, H, W], the image
    under the heat map with the mask's contour in green [3, H, W]), in [0, 1]."""
    low, high = scale
    heat = heat_colours((anomaly_map.float() - low) / (high - low))
    blended = (1 - HEAT_WEIGHT) * image + HEAT_WEIGHT * heat
    if mask is not None and bool(mask.any()):
        edge = mask_contour(mask.bool())
        blended[:, edge] = torch.tensor([0.0, 1.0, 0.0])[:, None]
    return heat, blended


def caption(score: float | None, verdict: str | None) -> str:
    """The overlay's caption: "score 1.23 | defect" (the parts that are known)."""
    parts = ([] if score is None else [f"score {score:.4g}"]) + ([] if verdict is None else [verdict])
    return " | ".join(parts)


def _font(size: int):
    return ImageFont.load_default(size=size)


def annotate(picture: torch.Tensor, scale: tuple[float, float], text: str) -> Image.Image:
    """picture [3, S, W] in [0, 1] -> an RGB image with a colour bar of COLOUR_MAP on the right,
    labelled with scale = (low, high) at its ends, and `text` in a band below."""
    rows = picture.shape[1]
    size = max(10, rows // 16)
    font = _font(size)
    labels = [f"{scale[1]:.3g}", f"{scale[0]:.3g}"]
    bar = max(8, rows // 16)
    label_width = int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font) for t in labels)) + 4
    band = size + 6
    canvas = Image.new("RGB", (picture.shape[2] + bar + 6 + label_width, rows + band), "white")
    canvas.paste(Image.fromarray(as_bytes(picture)), (0, 0))
    ramp = heat_colours(torch.linspace(1, 0, rows)[:, None].expand(rows, bar))
    canvas.paste(Image.fromarray(as_bytes(ramp)), (picture.shape[2] + 3, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.shape[2] + bar + 6
    draw.text((x, 0), labels[0], fill="black", font=font)
    draw.text((x, rows - size - 2), labels[1], fill="black", font=font)
    draw.text((3, rows + 2), text, fill="black", font=font)
    return canvas


def as_bytes(picture: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8."""
    return (picture.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_overlay(path, image: torch.Tensor, anomaly_map: torch.Tensor, mask: torch.Tensor | None,
                 scale: tuple[float, float], score: float | None = None, verdict: str | None = None) -> None:
    """overlay(...) with its colour bar and caption (annotate) as an 8-bit PNG at path."""
    picture = overlay(image.detach().cpu().float(), anomaly_map.detach().cpu(), None if mask is None else mask.cpu(),
                      scale)
    with atomic_write(path) as f:
        annotate(picture, scale, caption(score, verdict)).save(f, format="PNG")


def write_overlays(out, scored, dataset, limit: int | None = None, threshold: float | None = None) -> Path:
    """Overlays of the scored images of `dataset` (ScoredImages with maps; anomalous ones first,
    `limit` at most) into out/overlays/<name>.png, one colour range for the whole set; <name> is
    output_name(path, dataset position), as the map's. Each caption has the image score, and the
    verdict when the calibrated `threshold` is given."""
    folder = Path(out) / OVERLAYS_DIR
    scale = map_scale(scored.maps)
    order = sorted(range(len(scored.paths)), key=lambda i: (-int(scored.labels[i]), i))[:limit]
    judged = verdicts(scored.image_scores, threshold)
    for i in order:
        index = scored.indices[i] if scored.indices else i
        try:
            image = dataset[index].image
        except UnreadableImageError as error:  # changed on disk since it was scored
            warnings.warn(f"no overlay for {error.path}: {error.reason}", SkippedImageWarning, stacklevel=2)
            continue
        save_overlay(folder / f"{output_name(scored.paths[i], index)}.png", image, scored.maps[i],
                     scored.masks[i] if scored.labels[i] == 1 else None, scale, float(scored.image_scores[i]),
                     judged[i] if judged else None)
    return folder


def map_scale(maps: torch.Tensor) -> tuple[float, float]:
    """(low, high) colour range for heat maps of a set: the 1st and 99.9th percentiles of (a
    sample of) its pixels, so that one hot pixel does not wash out the rest."""
    flat = maps.flatten().float()
    if flat.numel() > 1_000_000:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    low, high = torch.quantile(flat, torch.tensor([0.01, 0.999])).tolist()
    return low, max(high, low + 1e-12)
