"""The teacher R of GlanceNet's distillation loss (eq. 1): a ResNet-18 read from a local weights
file in torchvision's layout (no torchvision needed, nothing downloaded).

    teacher = load_resnet18_teacher("resnet18-f37072fd.pth")    # frozen, eval mode
    r = teacher(patches)                                         # [N, 3, K, K] in [0, 1] -> [N, 512]
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from fastad.models.weights_file import read_state_dict

#: ImageNet's per-channel pixel statistics, which torchvision's ResNet weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (two 3x3 convs with BatchNorm, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's parameter names (so its state_dict loads strictly).

    forward(images [N, 3, H, W] in [0, 1]) -> [N, 512], the global average of layer4 after
    ImageNet normalisation (a 32x32 patch gives a 1x1 layer4 map).
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.fc = nn.Linear(512, 1000)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


def load_resnet18_teacher(path) -> ResNet18:
    """A frozen ResNet18 in eval mode from a torchvision resnet18 state_dict saved at `path`
    (.pth / .pt via torch.load(weights_only=True), or .safetensors)."""
    state = read_state_dict(path, "teacher_weights", "torchvision resnet18")
    teacher = ResNet18()
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"teacher_weights {str(path)!r} is not a torchvision resnet18 state_dict: {error}") from None
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
