"""The downstream CNN: a ResNet-18-like classifier in plain torch (torchvision is not usable).

Why ResNet-18: the seed paper and the MedMNIST reference numbers (AUC 0.944 on
PneumoniaMNIST at 28 px) use it, so our local-real / synthetic / pooled numbers stay
comparable with published ones. Layout: 3×3 stem, four stages of two BasicBlocks
(widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), global average pooling, linear head.

Any input size ≥ 16 works with the *same* weights: small radiographs (28–64 px) keep full
resolution after the stem, larger ones are max-pooled right after the stem by a power of two
so stage 1 sees at most ~64 px (the CPU-friendly analogue of ImageNet ResNet's stride-2
stem + max-pool). The pooling has no parameters, so a weights file is size-independent.

``norm="group"`` swaps BatchNorm for GroupNorm: needed where DP-SGD (Opacus) trains the net,
since per-example gradients are undefined under BatchNorm.

>>> import torch
>>> net = ResNetClassifier(num_classes=2, width=4)
>>> net(torch.zeros(3, 1, 28, 28)).shape
torch.Size([3, 2])
>>> net(torch.zeros(1, 1, 256, 200)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # 8 groups (or fewer for tiny test widths): GroupNorm(32) as in the paper is too coarse
    # for the narrow nets used in tests, and 8 is a common DP-SGD choice.
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (1×1 projection when shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetClassifier(nn.Module):
    """ResNet-18-like classifier: input (N, C, H, W) in [-1, 1], output logits (N, classes)."""

    def __init__(
        self, num_classes: int, width: int = 64, in_channels: int = 1, norm: str = "batch"
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2 (binary uses 2), got {num_classes}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if width < 1:
            raise ValueError(f"width must be ≥ 1, got {width}")
        self.num_classes = num_classes
        self.width = width
        self.in_channels = in_channels
        self.norm = norm
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_bn = _norm(norm, width)
        layers: list[nn.Module] = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            layers.append(BasicBlock(cin, cout, stride, norm))
            layers.append(BasicBlock(cout, cout, 1, norm))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def architecture(self) -> dict[str, Any]:
        """What a weights file must record to rebuild this net (see shared.weights_io)."""
        return {
            "name": "ResNetClassifier",
            "num_classes": self.num_classes,
            "width": self.width,
            "in_channels": self.in_channels,
            "norm": self.norm,
        }

    @staticmethod
    def stem_pool(size: int) -> int:
        """Max-pool factor after the stem for an input side ``size`` (1 for ≤ 127 px)."""
        return 2 ** max(0, math.floor(math.log2(max(size, 1) / 64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"input must be at least 16×16, got {tuple(x.shape[-2:])}")
        out = F.relu(self.stem_bn(self.stem(x)))
        k = self.stem_pool(min(x.shape[-2:]))
        if k > 1:
            out = F.max_pool2d(out, k)
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits: torch.Tensor = self.fc(out)
        return logits
