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

Two optional heads (GanConfig ``d_recon``, on by default since its ablation, and
``d_projected``, off; see benchmarks/d_levers.py and BENCHMARKS.md, issue 12):

* ``recon``: FastGAN's self-supervised D (:class:`node.training.networks.d_heads.ReconDecoder`).
  A small decoder turns D's 8×8 feature map back into the (downsampled) input, and D's loss on
  real images adds the reconstruction error, so D must keep a description of the whole image
  rather than the few cues that separate real from fake on a small data set.
* ``projected``: Projected GAN's idea on SpineGAN's frozen classifier S
  (:class:`node.training.networks.d_heads.ProjectedHeads`): per-scale patch discriminators on
  S's intermediate feature maps. Only the heads are D's; S's weights stay in S's own file.

With both off, the module, its parameters and its ``architecture()`` are exactly as before, so
old checkpoints load and a run draws the same random numbers.

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

from node.training.networks.d_heads import ProjectedHeads, ReconDecoder
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
        recon: bool = False,
        projected: tuple[int, ...] | list[int] = (),
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
        # Recorded only when on, so a lever-free D has the architecture dict it always had.
        if recon:
            self._arch["recon"] = True
        if projected:
            self._arch["projected"] = [int(c) for c in projected]

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
        # Built after every base layer, so the base layers draw the same initial weights.
        self.recon_tap: int | None = None
        self.recon: ReconDecoder | None = None
        if recon:
            # The first block whose output is ≤ 8×8 (FastGAN decodes its 8×8 map).
            sides = [resolution // 2 ** (i + 1) for i in range(len(blocks))]
            self.recon_tap = next(i for i, side in enumerate(sides) if side <= 8)
            self.recon = ReconDecoder(ch(sides[self.recon_tap]), sides[self.recon_tap],
                                      recon_side(resolution), channels)
        self.proj: ProjectedHeads | None = (
            ProjectedHeads(list(projected), num_classes) if projected else None)

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
        return self._features(x)[0]

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(final feature vector, the recon decoder's feature map or None)."""
        x = lrelu(self.from_img(x))
        tap = None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.recon_tap:
                tap = x
        if self.mbstd:
            x = self._mbstd(x)
        x = lrelu(self.norm4(self.conv4(x)))
        return lrelu(self.fc(x.flatten(1))), tap

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, with_recon: bool = False
    ) -> Any:
        """Logits (N,); with ``with_recon`` (needs ``recon=True``) also the decoded image.

        One method rather than two so that Opacus' wrapper, which only forwards ``forward``,
        sees the reconstruction pass too (its per-example hooks then cover the decoder).
        """
        h, tap = self._features(x)
        onehot = F.one_hot(c.long(), self.num_classes).to(h.dtype)
        proj = (self.embed(onehot) * h).sum(dim=1) * self.cmap_scale
        out: torch.Tensor = self.out(h).squeeze(1) + proj
        if not with_recon:
            return out
        if self.recon is None or tap is None:
            raise ValueError("this discriminator has no reconstruction decoder (recon=False)")
        return out, self.recon(tap)

    def project(self, feats: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """Projected head: one logit per image from S's feature maps (N,)."""
        if self.proj is None:
            raise ValueError("this discriminator has no projected head (projected=())")
        return self.proj(feats, c)


def recon_side(resolution: int) -> int:
    """Side of the reconstructed image: the input side, at most 32 (a cheap decoder)."""
    return min(resolution, 32)
