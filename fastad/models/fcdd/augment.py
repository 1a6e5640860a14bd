"""FCDD's synthetic anomalies (confetti noise) and its pre-processing / augmentation pipeline
(Liznerski et al., ICLR 2021; the sequence of "Adapting the Hypersphere Loss ...", sec. 4).

Every random choice is drawn from a CPU torch.Generator (then moved to the images' device), so
a training run is a function of the generator's state.

    images, masks = confetti_noise(images, generator)              # [B, 3, H, W], [B, H, W] bool
    images, masks = augment(images, masks, generator, resize=240, size=224)
    x = min_max(local_contrast_normalization(images), low, high)   # the network input
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: The two colour-jitter strengths of the paper (every jitter parameter takes one of them).
JITTER_STRENGTHS = (0.04, 0.0005)


def _uniform(shape, low, high, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _randint(low: int, high: int, shape, generator: torch.Generator) -> torch.Tensor:
    """Integers in [low, high] inclusive (CPU)."""
    return torch.randint(low, high + 1, shape, generator=generator)


def confetti_noise(images: torch.Tensor, generator: torch.Generator, min_squares: int = 1,
                   max_squares: int = 12, min_side: float = 0.02, max_side: float = 0.11,
                   gray_probability: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Paints randomly sized, placed and coloured opaque squares over each image.

    Args:
        images: [B, C, H, W] in [0, 1] (any device).
        min_squares, max_squares: squares per image, drawn uniformly in this range.
        min_side, max_side: square side as a fraction of min(H, W) (at least 1 pixel), drawn
            uniformly per square. The paper gives no numbers; at 224 px these are 4-24 px.
        gray_probability: chance that a square is gray (one random intensity on every channel)
            instead of a random RGB colour, so the anomalies are not all colour anomalies.

    Returns:
        (images [B, C, H, W], masks [B, H, W] bool): masks mark the painted pixels. A square may
        run over the image border (it is clipped there); squares may overlap.
    """
    if not 1 <= min_squares <= max_squares:
        raise ValueError(f"min_squares, max_squares must satisfy 1 <= min <= max, got {min_squares}, {max_squares}")
    if not 0 < min_side <= max_side <= 1:
        raise ValueError(f"min_side, max_side must satisfy 0 < min <= max <= 1, got {min_side}, {max_side}")
    b, c, h, w = images.shape
    out, masks = images.clone(), torch.zeros(b, h, w, dtype=torch.bool, device=images.device)
    counts = _randint(min_squares, max_squares, (b,), generator)
    for i, n in enumerate(counts.tolist()):
        sides = (_uniform((n,), min_side, max_side, generator) * min(h, w)).round().clamp_min(1).long()
        tops = (torch.rand(n, generator=generator) * h).long() - sides // 2
        lefts = (torch.rand(n, generator=generator) * w).long() - sides // 2
        gray = torch.rand(n, generator=generator) < gray_probability
        colours = torch.where(gray[:, None], torch.rand(n, 1, generator=generator).expand(n, c),
                              torch.rand(n, c, generator=generator)).to(images)
        for side, top, left, colour in zip(sides.tolist(), tops.tolist(), lefts.tolist(), colours):
            y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, h), min(left + side, w)
            out[i, :, y0:y1, x0:x1] = colour[:, None, None]
            masks[i, y0:y1, x0:x1] = True
    return out, masks


def random_resized_crop(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, resize: int = 240,
                        size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """Resizes [B, C, H, W] images to resize x resize (bilinear), then per image with 50 %
    chance each resizes to size x size or crops size x size at a random position. masks [B, H, W]
    bool follow the same geometry (nearest neighbour). -> ([B, C, size, size], [B, size, size])."""
    if resize < size:
        raise ValueError(f"resize must be >= size, got resize={resize}, size={size}")
    big = F.interpolate(images, size=(resize, resize), mode="bilinear", align_corners=False)
    big_masks = F.interpolate(masks[:, None].float(), size=(resize, resize), mode="nearest")
    b = images.shape[0]
    crop = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    tops, lefts = _randint(0, resize - size, (b,), generator), _randint(0, resize - size, (b,), generator)
    offsets = torch.arange(size)
    rows = (tops[:, None] + offsets).to(images.device)[:, :, None]                   # [B, size, 1]
    cols = (lefts[:, None] + offsets).to(images.device)[:, None, :]                  # [B, 1, size]
    batch = torch.arange(b, device=images.device)[:, None, None]

    def crop_or_resize(x: torch.Tensor, mode: str) -> torch.Tensor:
        cropped = x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)       # [B, C, size, size]
        resized = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        return torch.where(crop[:, None, None, None], cropped, resized)

    return crop_or_resize(big, "bilinear"), crop_or_resize(big_masks, "nearest")[:, 0] > 0.5


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma (ITU-R 601)."""
    weights = images.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]
    return (images * weights).sum(1, keepdim=True)


def _rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue shift by `turns` [B] of a full turn, as a rotation of the chroma plane in YIQ space
    (keeps luma; an approximation of the HSV hue shift that needs no colour-space branches)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
    angle = 2 * torch.pi * turns.double()
    rotation = torch.zeros(len(turns), 3, 3, dtype=torch.float64)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
    rotation[:, 2, 1], rotation[:, 2, 2] = torch.sin(angle), torch.cos(angle)
    per_image = (torch.linalg.inv(to_yiq) @ rotation @ to_yiq).to(images)                # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", per_image, images)


def color_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's colour jitter on [B, 3, H, W] in [0, 1]: per image, all four parameters
    (brightness, contrast, saturation, hue) are 0.04 or all 0.0005 (50 % each); factors are drawn
    uniformly in [1 - s, 1 + s] (hue: a shift in [-s, s] turns) and applied in that fixed order,
    clamping to [0, 1] after each, as torchvision's ColorJitter does."""
    b = images.shape[0]
    strong = torch.rand(b, generator=generator) < 0.5
    s = torch.where(strong, JITTER_STRENGTHS[0], JITTER_STRENGTHS[1])[:, None]
    factors = 1 + s * (2 * torch.rand(b, 4, generator=generator) - 1)          # [B, 4]
    hue = s[:, 0] * (2 * torch.rand(b, generator=generator) - 1)
    f = factors.to(images)[:, :, None, None, None]
    x = (images * f[:, 0]).clamp(0, 1)
    x = (f[:, 1] * x + (1 - f[:, 1]) * _grayscale(x).mean((2, 3), keepdim=True)).clamp(0, 1)
    x = (f[:, 2] * x + (1 - f[:, 2]) * _grayscale(x)).clamp(0, 1)
    return _rotate_hue(x, hue.cpu()).clamp(0, 1)


def gaussian_noise(images: torch.Tensor, generator: torch.Generator, relative_std: float = 0.1) -> torch.Tensor:
    """Adds zero-mean Gaussian noise of std = relative_std * the image's std (all channels
    confounded) to each pixel with 50 % chance; a pixel's channels get the same noise value (a gray
    image stays gray).
    images [B, C, H, W] -> [B, C, H, W]."""
    b, c, h, w = images.shape
    noise = torch.randn(b, 1, h, w, generator=generator).to(images)
    chosen = (torch.rand(b, 1, h, w, generator=generator) < 0.5).to(images)
    std = images.flatten(1).std(1)[:, None, None, None]
    return images + relative_std * std * noise * chosen


def local_contrast_normalization(images: torch.Tensor) -> torch.Tensor:
    """FCDD's contrast normalisation, per image over all channels and pixels: subtract the mean,
    divide by the mean absolute deviation (L1 scale, floored at 1e-6 for flat images).
    [B, C, H, W] -> [B, C, H, W]."""
    centred = images - images.mean((1, 2, 3), keepdim=True)
    return centred / centred.abs().mean((1, 2, 3), keepdim=True).clamp_min(1e-6)


def min_max(images: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(images - low) / (high - low): the normal training set's extremes (scalars, set once
    from the un-augmented training images) map to 0 and 1; augmented or test images may leave
    [0, 1] slightly (no clamping, so an anomaly's extreme values stay visible)."""
    return (images - low) / (high - low).clamp_min(1e-6)


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, resize: int = 240,
            size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentation before normalisation: random resized crop, colour jitter,
    Gaussian noise. images [B, 3, H, W] in [0, 1], masks [B, H, W] bool ->
    ([B, 3, size, size], [B, size, size] bool)."""
    images, masks = random_resized_crop(images, masks, generator, resize, size)
    return gaussian_noise(color_jitter(images, generator), generator), masks


def resize(images: torch.Tensor, size) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, *size] bilinearly (size an int or (H, W)); unchanged if already so."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
