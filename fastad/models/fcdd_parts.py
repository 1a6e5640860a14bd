"""FCDD's networks and its two hypersphere losses.

    net = fcdd_cnn224()                 # [B, 3, 224, 224] -> [B, 1, 28, 28], receptive field 59, stride 8
    A = upsampler(pseudo_huber(net(x))) # [B, 1, 224, 224] anomaly scores >= 0
    loss = fcdd_loss(A[:, 0], masks)    # eq. 4, or hsc_pixel_loss (eq. 5)
"""
from __future__ import annotations


import torch
from torch import nn

from fastad.models.weights_file import read_state_dict

#: Added inside the push function's log, so p(0) = -log(eps) stays finite (and its slope -1/eps).
PUSH_EPS = 1e-6

#: Filter counts of FCDD's from-scratch CNN for 224 x 224 inputs (convs 1-5).
CNN224_FILTERS = (8, 32, 64, 128, 128)

#: torchvision's VGG-11-BN `features` up to (excluding) the fourth max-pool: conv widths and "M"
#: for max-pools, in order; the first 3 blocks (through the third max-pool) are frozen when
#: pretrained weights are loaded.
VGG11_CUT = (64, "M", 128, "M", 256, 256, "M", 512, 512)


def pseudo_huber(x: torch.Tensor) -> torch.Tensor:
    """h(x) = sqrt(x^2 + 1) - 1, elementwise (>= 0, smooth at 0), computed as
    x^2 / (sqrt(x^2 + 1) + 1): the same value without the cancellation that rounds small scores to
    0 (in bfloat16 every |x| < 0.06; in float32 every |x| < 3e-4)."""
    square = x * x
    return square / (torch.sqrt(square + 1) + 1)


def push(x: torch.Tensor, eps: float = PUSH_EPS) -> torch.Tensor:
    """p(x) = -log(1 - exp(-x) + eps), elementwise for x >= 0 (eq. 2 with eps inside the log, so
    that p and its gradient are finite at x = 0; expm1 keeps 1 - exp(-x) exact for small x)."""
    return -torch.log(-torch.expm1(-x) + eps)


def _check_scores(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if scores.ndim < 2:
        raise ValueError(f"scores must be [n, ...pixels], got shape {tuple(scores.shape)}")
    if masks.shape != scores.shape:
        raise ValueError(f"masks must have the scores' shape {tuple(scores.shape)}, got {tuple(masks.shape)}")
    return masks.to(scores.dtype)


def fcdd_loss(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """FCDD's loss (eq. 4) on anomaly scores A [n, ...] (>= 0) with masks Y [n, ...] (1/True:
    anomalous): mean over images of [ (1/m) Σ_j (1 - Y_ij) A_ij + p((1/m) Σ_j Y_ij A_ij) ], m the
    pixels per image. An image without anomalous pixels contributes only its first term (p of an
    empty sum would be p(0), the push of a non-existent anomaly). -> scalar."""
    y = _check_scores(scores, masks)
    a, y = scores.flatten(1), y.flatten(1)
    normal = ((1 - y) * a).mean(1)
    anomalous_mean = (y * a).mean(1)
    has_anomaly = y.sum(1) > 0
    pushed = torch.where(has_anomaly, push(anomalous_mean), torch.zeros_like(anomalous_mean))
    return (normal + pushed).mean()


def hsc_pixel_loss(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The pixel-wise HSC loss (eq. 5) on anomaly scores A [n, ...] (>= 0) with masks Y [n, ...]:
    (1/nm) Σ_ij [ (1 - Y_ij) A_ij + (|J0| / |J1|) Y_ij p(A_ij) ], |J0|, |J1| the numbers of
    normal and anomalous pixels in the batch. A batch without anomalous pixels has no second
    term; one without normal pixels has |J0| / |J1| = 0, as the formula says. -> scalar."""
    y = _check_scores(scores, masks)
    n_anomalous = y.sum()
    weight = (y.numel() - n_anomalous) / n_anomalous.clamp_min(1)
    pushed = torch.where(y > 0, push(scores), torch.zeros_like(scores))
    return ((1 - y) * scores + weight * pushed).mean()


def _conv_block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout, eps=1e-4), nn.LeakyReLU(0.01)]


def fcdd_cnn224(width: float = 1.0, in_channels: int = 3) -> nn.Sequential:
    """FCDD's from-scratch CNN for 224 x 224 inputs, without the final 1x1 convolution:
    conv5x5(8)-BN-LReLU-maxpool3/2, conv5x5(32)-BN-LReLU-maxpool3/2, conv3x3(64)-BN-LReLU,
    conv3x3(128)-BN-LReLU-maxpool3/2, conv3x3(128) (filter counts scaled by `width`, at least 1).
    [B, C, H, W] -> [B, F, H/8, W/8] (F = 128 * width); receptive field 59 px, stride 8, unit 0
    centred on pixel 0."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    f = [max(1, round(n * width)) for n in CNN224_FILTERS]
    return nn.Sequential(*_conv_block(in_channels, f[0], 5), nn.MaxPool2d(3, 2, 1),
                         *_conv_block(f[0], f[1], 5), nn.MaxPool2d(3, 2, 1),
                         *_conv_block(f[1], f[2], 3), *_conv_block(f[2], f[3], 3), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(f[3], f[4], 3, padding=1))


def vgg11_features() -> nn.Sequential:
    """VGG-11-BN's feature layers up to (not including) the fourth max-pool, in torchvision's
    layout (so `features.<i>.*` keys of a torchvision vgg11_bn state_dict load into it by index).
    [B, 3, H, W] -> [B, 512, H/8, W/8]."""
    layers: list[nn.Module] = []
    cin = 3
    for item in VGG11_CUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            cin = item
    return nn.Sequential(*layers)


def frozen_vgg11_layers(features: nn.Sequential) -> int:
    """How many leading layers of vgg11_features() reach through the third max-pool."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return pools[2] + 1


def load_vgg11_weights(features: nn.Sequential, path) -> None:
    """Loads a torchvision vgg11_bn state_dict (a .safetensors file, or a .pth/.pt file read with
    torch.load(weights_only=True)) into vgg11_features() by its `features.<i>.*` keys.
    Raises ValueError naming the keys that are missing or have the wrong shape."""
    state = read_state_dict(path, "weights", "VGG-11-BN")
    wanted = features.state_dict()
    picked = {key: state.get(f"features.{key}") for key in wanted}
    missing = [key for key, value in picked.items() if value is None]
    wrong = [key for key, value in picked.items() if value is not None and value.shape != wanted[key].shape]
    if missing or wrong:
        raise ValueError(f"weights must be a torchvision vgg11_bn state_dict: {path} lacks "
                         f"{['features.' + k for k in missing][:4]} or has wrong shapes for "
                         f"{['features.' + k for k in wrong][:4]}")
    features.load_state_dict(picked)
