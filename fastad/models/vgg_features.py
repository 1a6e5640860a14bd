"""VGG-19's first three blocks as a frozen feature extractor for UTAD's perceptual measurement.

    vgg = VGG19Features("vgg19.pth")     # local torchvision-layout weights, or None (see below)
    conv1_2, conv2_2, conv3_4 = vgg(images)   # images [B, 3, H, W] in [0, 1]
    # -> [B, 64, H, W], [B, 128, H/2, W/2], [B, 256, H/4, W/4], one pass, no gradient

The three taps are the ReLU outputs of conv1_2, conv2_2 and conv3_4 (the activations perceptual
losses use). Inputs are standardised with ImageNet's channel statistics first, as VGG expects.

Weights come only from a local file: a torchvision VGG-19 state_dict (keys
"features.<i>.weight"/"features.<i>.bias", the rest ignored) saved with torch.save or as
safetensors. Without a file the layers get a fixed He-normal initialisation from `seed` and a
UserWarning says so: random features still compare local structure, but the measurement is
then not the paper's.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from fastad.models.weights_file import read_state_dict

#: (in, out) channels of VGG-19's convs up to conv3_4 with their torchvision `features` indices.
VGG19_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (16, 256, 256))
#: positions in VGG19_CONVS after which (ReLU) a feature map is tapped: conv1_2, conv2_2, conv3_4
TAPS = (1, 3, 7)
#: positions in VGG19_CONVS after which (ReLU) the map is max-pooled 2x2
POOLS = (1, 3)
LAYER_NAMES = ("conv1_2", "conv2_2", "conv3_4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_vgg19_state(path) -> dict[str, torch.Tensor]:
    """The tensors of a local VGG-19 weights file (.safetensors, or a torch.save'd state_dict)."""
    return read_state_dict(path, "vgg_weights", "VGG-19")


class VGG19Features(nn.Module):
    """Frozen VGG-19 up to conv3_4: images [B, 3, H, W] in [0, 1] -> (conv1_2 [B, 64, H, W],
    conv2_2 [B, 128, H/2, W/2], conv3_4 [B, 256, H/4, W/4]) in one pass under torch.no_grad.

    Args:
        weights: path of a local VGG-19 weights file (torchvision layout), or None for the fixed
            random initialisation (with a UserWarning).
        seed: seeds the random initialisation (ignored with a weights file).
    """

    def __init__(self, weights: str | None = None, seed: int = 0):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for _, cin, cout in VGG19_CONVS)
        if weights is None:
            warnings.warn("UTAD: no VGG-19 weights file given (vgg_weights=None); the perceptual measurement uses "
                          f"a fixed random initialisation (seed {seed}), not ImageNet features", UserWarning,
                          stacklevel=3)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for conv in self.convs:
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator)
                                      * (2.0 / conv.weight[0].numel()) ** 0.5)
                    conv.bias.zero_()
        else:
            state = load_vgg19_state(weights)
            with torch.no_grad():
                for conv, (index, _, _) in zip(self.convs, VGG19_CONVS):
                    for name in ("weight", "bias"):
                        key = f"features.{index}.{name}"
                        if key not in state:
                            raise ValueError(f"vgg_weights {weights} has no {key!r}: expected torchvision's VGG-19 keys")
                        target = getattr(conv, name)
                        if state[key].shape != target.shape:
                            raise ValueError(f"vgg_weights {weights}: {key} is {tuple(state[key].shape)}, expected "
                                             f"{tuple(target.shape)} (VGG-19)")
                        target.copy_(state[key])
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        taps = []
        for position, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if position in TAPS:
                taps.append(x)
            if position in POOLS:
                x = nn.functional.max_pool2d(x, 2)
        return tuple(taps)
