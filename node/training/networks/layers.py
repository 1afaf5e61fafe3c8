"""Building blocks shared by the generator and discriminator.

Why equalised learning rate everywhere: weights are stored with unit variance and scaled at
run time by He's constant, so Adam's per-parameter step is the same relative size in every
layer whatever its fan-in. That is what lets one learning rate work from 32² to 256² (ProGAN /
StyleGAN); with it, neither network needs BatchNorm, which the DP work (per-example
gradients) and the EMA generator both prefer.

>>> import torch
>>> conv = EqConv2d(3, 8, 3)
>>> conv(torch.zeros(2, 3, 16, 16)).shape
torch.Size([2, 8, 16, 16])
>>> pixel_norm(torch.ones(1, 4)).pow(2).mean().item()
1.0
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each feature vector to unit RMS (ProGAN): keeps G's signals bounded."""
    return x * torch.rsqrt(x.pow(2).mean(dim=dim, keepdim=True) + eps)


class EqLinear(nn.Module):
    """Linear layer with equalised learning rate (weights ~ N(0,1), scaled at run time)."""

    def __init__(
        self, cin: int, cout: int, bias: bool = True, lr_mul: float = 1.0, bias_init: float = 0.0
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, b)


class EqConv2d(nn.Module):
    """3×3 (or k×k) convolution with equalised learning rate and 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1.0 / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with gain √2, so unit-variance signals stay unit-variance."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


def channels_at(res: int, base: int, max_channels: int, min_channels: int = 16) -> int:
    """Feature maps at a given side length: wide at low resolution, halving as it doubles.

    Why lean: on a 2-core CPU the cost of a GAN step is dominated by the convolutions at the
    two highest resolutions, and more images shown per minute beats wider layers for the
    small, blurry radiographs this targets (see benchmarks/results-gan.md).

    >>> [channels_at(r, 512, 256) for r in (4, 8, 16, 32, 64, 128, 256)]
    [128, 64, 32, 16, 16, 16, 16]
    """
    return int(max(min_channels, min(max_channels, base // res)))
