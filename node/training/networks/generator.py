"""Class-conditional generator: a lean StyleGAN2-flavoured design for CPUs as well as GPUs.

Layout (all layers with equalised learning rate, no BatchNorm):

* **mapping**: ``w = MLP([pixelnorm(z), pixelnorm(embed(c))])``: the class enters through
  the style vector, as in conditional StyleGAN2-ADA, so truncation can pull ``w`` towards the
  *class* mean (``w_avg[c]``) instead of a class-mixed global mean;
* **synthesis**: ``w`` → 4×4 feature map (a linear layer instead of StyleGAN's learned
  constant, so the class shapes the layout from the first layer), then one block per octave:
  nearest ×2 upsample, two 3×3 convs, each followed by pixel norm and a per-channel style
  (scale, shift) from ``w`` (AdaIN-like modulation: cheaper on CPU than weight demodulation,
  which needs grouped convolutions);
* **skip outputs**: every block adds its own 1×1 "to-gray" image to the upsampled running
  image (StyleGAN2's skip generator), which trains faster than a single output head.

Channels halve as resolution doubles (:func:`node.training.networks.layers.channels_at`), so
the same class serves 8² test nets and 256² production nets.

>>> import torch
>>> g = Generator(resolution=32, num_classes=2)
>>> g(torch.randn(3, g.z_dim), torch.tensor([0, 1, 1])).shape
torch.Size([3, 1, 32, 32])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from node.training.networks.layers import EqConv2d, EqLinear, channels_at, lrelu, pixel_norm


def check_resolution(resolution: int) -> None:
    """Powers of two from 8 (tests) to 1024; real use is 32²–256²."""
    if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(
            f"resolution must be a power of two between 8 and 1024, got {resolution}; "
            "pad or resize other sizes (28² data is reflect-padded to 32²)"
        )


class StyleConv(nn.Module):
    """3×3 conv → pixel norm → per-channel (scale, shift) from w → leaky ReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int) -> None:
        super().__init__()
        self.conv = EqConv2d(cin, cout, 3)
        self.affine = EqLinear(w_dim, 2 * cout)
        # Start as the identity modulation: scale 1 + 0, shift 0.
        nn.init.zeros_(self.affine.weight)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(self.conv(x))
        scale, shift = self.affine(w).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return lrelu(x * (1.0 + scale) + shift)


class SynthesisBlock(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, channels_out: int) -> None:
        super().__init__()
        self.conv0 = StyleConv(cin, cout, w_dim)
        self.conv1 = StyleConv(cout, cout, w_dim)
        self.to_img = EqConv2d(cout, channels_out, 1)

    def forward(
        self, x: torch.Tensor, img: torch.Tensor | None, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv1(self.conv0(x, w), w)
        y = self.to_img(x)
        if img is not None:
            y = y + F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x, y


class Generator(nn.Module):
    """G(z, c) → image (N, channels, R, R), roughly in [-1, 1] (not clamped while training)."""

    def __init__(
        self,
        resolution: int,
        num_classes: int,
        z_dim: int = 64,
        w_dim: int = 128,
        mapping_layers: int = 2,
        channel_base: int = 512,
        channel_max: int = 256,
        channel_min: int = 16,
        channels: int = 1,
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        if num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
        self.resolution = resolution
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.w_dim = w_dim
        self._arch: dict[str, Any] = {
            "name": "Generator", "resolution": resolution, "num_classes": num_classes,
            "z_dim": z_dim, "w_dim": w_dim, "mapping_layers": mapping_layers,
            "channel_base": channel_base, "channel_max": channel_max,
            "channel_min": channel_min, "channels": channels,
        }
        self.embed = EqLinear(num_classes, z_dim)
        layers: list[nn.Module] = []
        dim = 2 * z_dim
        for _ in range(mapping_layers):
            # lr_mul 0.1 (StyleGAN uses 0.01 over 8 layers and millions of images): short CPU
            # runs need the class signal to reach w quickly.
            layers.append(EqLinear(dim, w_dim, lr_mul=0.1))
            dim = w_dim
        self.mapping = nn.ModuleList(layers)
        # Per-class running mean of w, for truncation towards the class centre.
        self.register_buffer("w_avg", torch.zeros(num_classes, w_dim))

        def ch(r: int) -> int:
            return channels_at(r, channel_base, channel_max, channel_min)

        self.c4 = ch(4)
        self.input = EqLinear(w_dim, self.c4 * 16)
        self.conv4 = StyleConv(self.c4, self.c4, w_dim)
        self.to_img4 = EqConv2d(self.c4, channels, 1)
        blocks = []
        r = 8
        while r <= resolution:
            blocks.append(SynthesisBlock(ch(r // 2), ch(r), w_dim, channels))
            r *= 2
        self.blocks = nn.ModuleList(blocks)

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments: what a checkpoint records to rebuild this network."""
        return dict(self._arch)

    def one_hot(self, c: torch.Tensor) -> torch.Tensor:
        return F.one_hot(c.long(), self.num_classes).to(self.embed.weight.dtype)

    def map(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation: float = 1.0,
        update_w_avg: float | None = None,
    ) -> torch.Tensor:
        """z, class → w; ``update_w_avg`` (a decay, e.g. 0.995) tracks the class means."""
        x = torch.cat([pixel_norm(z), pixel_norm(self.embed(self.one_hot(c)))], dim=1)
        for layer in self.mapping:
            x = lrelu(layer(x))
        w_avg: torch.Tensor = self.w_avg  # type: ignore[assignment]
        if update_w_avg is not None:
            # Per-class means by one matrix product, all on the device: a loop over
            # c.unique() would read the labels back to the host (a GPU sync) every step.
            with torch.no_grad():
                onehot = F.one_hot(c.long(), self.num_classes).float()  # (N, K)
                counts = onehot.sum(0)
                means = (onehot.t() @ x.detach().float()) / counts.clamp_min(1.0)[:, None]
                moved = w_avg.lerp(means.to(w_avg.dtype), 1.0 - update_w_avg)
                w_avg.copy_(torch.where((counts > 0)[:, None], moved, w_avg))
        if truncation != 1.0:
            centre = w_avg[c.long()].to(x.dtype)
            x = centre + truncation * (x - centre)
        return x

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        x = self.input(w).view(-1, self.c4, 4, 4)
        x = self.conv4(x, w)
        img = self.to_img4(x)
        for block in self.blocks:
            x, img = block(x, img, w)
        return img

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation: float = 1.0,
        update_w_avg: float | None = None,
    ) -> torch.Tensor:
        return self.synthesize(self.map(z, c, truncation, update_w_avg))


def num_params(module: nn.Module) -> int:
    """Trainable parameter count (for logs and the benchmark table)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def gain_check(g: Generator, n: int = 16) -> float:
    """Output standard deviation at initialisation (≈ 1 means the equalised LR is wired right)."""
    with torch.no_grad():
        x = g(torch.randn(n, g.z_dim), torch.zeros(n, dtype=torch.long))
    return float(x.std()) if math.isfinite(float(x.std())) else float("nan")
