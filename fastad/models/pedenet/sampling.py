"""PEDENet's training batches: random patches for the DE loss and neighbour pairs for the LP loss."""
from __future__ import annotations

from typing import NamedTuple

import torch

from fastad.models.components.patches import crop_patches

#: (row, col) direction of the neighbour p' relative to p for each LP label, raster order
#: around the centre: 0 1 2 / 3 . 4 / 5 6 7.
POSITIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class TrainingBatch(NamedTuple):
    """patches [n_patches, C, K, K] for the DE loss; centre, neighbour [n_pairs, C, K, K] and
    position [n_pairs] (long, index into POSITIONS) for the LP loss."""

    patches: torch.Tensor
    centre: torch.Tensor
    neighbour: torch.Tensor
    position: torch.Tensor


def sample_training_batch(images: torch.Tensor, generator: torch.Generator | None = None, n_patches: int = 128,
                          n_pairs: int = 36, patch_size: int = 64, min_shift: int | None = None) -> TrainingBatch:
    """Random patches and neighbour pairs from images [N, C, H, W] (on any device).

    A pair is a patch p and a patch p' displaced from it by `shift` pixels along each axis its
    position's direction moves (shift drawn per axis in [min_shift, min(patch_size, H - K)], so
    p' is next to p, overlapping it by at most patch_size - min_shift pixels), with p placed so
    that p and p' are both inside the image: the label is exact (no clipping). Needs
    H, W >= patch_size + min_shift; the default min_shift = 3 * patch_size // 4 (as Patch-SVDD).

    Args:
        generator: a CPU torch.Generator for reproducibility (None: torch's global one).
        n_patches, n_pairs: the paper's batch sizes (128 patches for the DE loss, 36 pairs).

    Returns:
        TrainingBatch(patches [n_patches, C, K, K], centre, neighbour [n_pairs, C, K, K],
        position [n_pairs]) on the images' device; position indexes POSITIONS.
    """
    n, _, h, w = images.shape
    k = patch_size
    min_shift = 3 * k // 4 if min_shift is None else min_shift
    if not 1 <= min_shift <= k:
        raise ValueError(f"min_shift must be in [1, patch_size], got {min_shift}")
    if h < k + min_shift or w < k + min_shift:
        raise ValueError(f"images of {h}x{w} are too small for pairs of {k}x{k} patches shifted by {min_shift}")

    def randint(low, high):  # [low, high] inclusive, per element of tensors low/high
        u = torch.rand(low.shape, generator=generator)
        return low + (u * (high - low + 1)).long().clamp_max(high - low)

    def crop(idx, rows, cols):
        return crop_patches(images, idx, rows, cols, k)

    idx = torch.randint(n, (n_patches,), generator=generator)
    rows = torch.randint(h - k + 1, (n_patches,), generator=generator)
    cols = torch.randint(w - k + 1, (n_patches,), generator=generator)
    patches = crop(idx, rows, cols)

    position = torch.randint(len(POSITIONS), (n_pairs,), generator=generator)
    direction = torch.tensor(POSITIONS)[position]                                   # [n_pairs, 2]
    size = torch.tensor([h, w])
    max_shift = torch.minimum(torch.full((2,), k), size - k)                         # keep p' inside
    shift = randint(torch.full((n_pairs, 2), min_shift), max_shift.expand(n_pairs, 2)) * direction
    # p's top-left corner so that both p and p + shift lie in [0, size - k]
    low, high = (-shift).clamp_min(0), (size - k) - shift.clamp_min(0)
    corner = randint(low, high)
    pair_idx = torch.randint(n, (n_pairs,), generator=generator)
    centre = crop(pair_idx, corner[:, 0], corner[:, 1])
    neighbour = crop(pair_idx, corner[:, 0] + shift[:, 0], corner[:, 1] + shift[:, 1])
    return TrainingBatch(patches, centre, neighbour, position.to(images.device))
