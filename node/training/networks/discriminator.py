"""Class-conditional discriminator: residual, projection-conditioned, no BatchNorm.

Why projection conditioning (Miyato & Koyama 2018, used by StyleGAN2-ADA): the class enters
as an inner product between a learned class embedding and D's final features, so D judges
"is this a realistic image *of class c*" with one extra vector per class, instead of
concatenating labels to the input where they are easy to ignore.

Why no BatchNorm: BatchNorm mixes examples in a batch, which makes per-example gradients (and
so DP-SGD) undefined and lets D tell real from fake batches by their statistics.
``norm="group"`` adds GroupNorm after each conv for the DP work; ``mbstd`` (minibatch standard
deviation, a cross-example feature that fights mode collapse) is switched off under DP for the
same reason.

>>> import torch
>>> d = Discriminator(resolution=32, num_classes=2)
>>> d(torch.zeros(3, 1, 32, 32), torch.tensor([0, 1, 1])).shape
torch.Size([3])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from node.training.networks.generator import check_resolution
from node.training.networks.layers import EqConv2d, EqLinear, channels_at, lrelu

NORMS = ("none", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


class DBlock(nn.Module):
    """Two 3×3 convs, 2× average-pool down, with a 1×1 residual path (scaled by 1/√2)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.norm0 = _norm(norm, cin)
        self.conv1 = EqConv2d(cin, cout, 3)
        self.norm1 = _norm(norm, cout)
        self.skip = EqConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(self.skip(x), 2)
        x = lrelu(self.norm0(self.conv0(x)))
        x = F.avg_pool2d(lrelu(self.norm1(self.conv1(x))), 2)
        return (x + y) * (1.0 / math.sqrt(2.0))


class Discriminator(nn.Module):
    """D(x, c) → one logit per image (N,)."""

    def __init__(
        self,
        resolution: int,
        num_classes: int,
        channel_base: int = 512,
        channel_max: int = 256,
        channel_min: int = 16,
        channels: int = 1,
        norm: str = "none",
        mbstd: bool = True,
        mbstd_group: int = 4,
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.resolution = resolution
        self.num_classes = num_classes
        self.mbstd = mbstd
        self.mbstd_group = mbstd_group
        self._arch: dict[str, Any] = {
            "name": "Discriminator", "resolution": resolution, "num_classes": num_classes,
            "channel_base": channel_base, "channel_max": channel_max,
            "channel_min": channel_min, "channels": channels, "norm": norm, "mbstd": mbstd,
            "mbstd_group": mbstd_group,
        }

        def ch(r: int) -> int:
            return channels_at(r, channel_base, channel_max, channel_min)

        self.from_img = EqConv2d(channels, ch(resolution), 1)
        blocks = []
        r = resolution
        while r > 4:
            blocks.append(DBlock(ch(r), ch(r // 2), norm))
            r //= 2
        self.blocks = nn.ModuleList(blocks)
        c4 = ch(4)
        self.conv4 = EqConv2d(c4 + (1 if mbstd else 0), c4, 3)
        self.norm4 = _norm(norm, c4)
        self.fc = EqLinear(c4 * 16, c4)
        self.out = EqLinear(c4, 1)
        self.embed = EqLinear(num_classes, c4, bias=False)
        self.cmap_scale = 1.0 / math.sqrt(c4)

    def architecture(self) -> dict[str, Any]:
        return dict(self._arch)

    def _mbstd(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).pow(2).mean(0).add(1e-8).sqrt()
        y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.from_img(x))
        for block in self.blocks:
            x = block(x)
        if self.mbstd:
            x = self._mbstd(x)
        x = lrelu(self.norm4(self.conv4(x)))
        return lrelu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        onehot = F.one_hot(c.long(), self.num_classes).to(h.dtype)
        proj = (self.embed(onehot) * h).sum(dim=1) * self.cmap_scale
        out: torch.Tensor = self.out(h).squeeze(1) + proj
        return out
