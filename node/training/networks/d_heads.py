"""The discriminator's optional extra heads: FastGAN's decoder and Projected GAN's heads on S.

Both answer the same small-data problem: with a few hundred or thousand radiographs, D
overfits the training images within a few kimg and then gives G little to learn from.

* :class:`ReconDecoder` (Liu et al. 2021, "FastGAN"): D's 8×8 feature map is decoded back into
  the image D was shown, for *real* images only. D is then trained as an auto-encoder too, which
  keeps its features a description of the whole radiograph instead of a few discriminative
  cues. FastGAN scores it with LPIPS (a downloaded VGG); we use mean squared error on the
  downsampled input, which needs no weights. FastGAN also decodes a random crop of its 16×16
  map; at our 32² inputs the 8×8 map covers the image at a useful detail already, so the crop
  decoder is left out.
* :class:`ProjectedHeads` (Sauer et al. 2021, "Projected GANs Converge Faster"): small patch
  discriminators on the feature maps of a *frozen* feature network. Projected GAN uses an
  ImageNet EfficientNet; we use SpineGAN's classifier S, trained on this site's real images,
  which is a radiograph-specific feature network that needs no download. The heads are
  class-conditional by projection (a class embedding dotted with each patch's features), as
  the main D is.

>>> import torch
>>> dec = ReconDecoder(cin=64, side=8, out_side=32, channels=1)
>>> dec(torch.zeros(2, 64, 8, 8)).shape
torch.Size([2, 1, 32, 32])
>>> heads = ProjectedHeads([16, 32], num_classes=2)
>>> heads([torch.zeros(3, 16, 16, 16), torch.zeros(3, 32, 8, 8)], torch.tensor([0, 1, 1])).shape
torch.Size([3])
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from node.training.networks.layers import EqConv2d, EqLinear, lrelu

SPINE_STAGES = (1, 2)
"""Stages of S (0-based, four in a ResNet-18) whose outputs the projected heads see: at 32²
input and S's width 8, 16×16×16 and 8×8×32 maps. Stage 0 is almost the raw image; stage 3
(4×4) is nearly the classifier's decision, which D would only learn to fool."""


def recon_error(x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error (N,) between the decoder's output and D's input ``x``,
    area-downsampled to the output side. ``x`` is a target, so no gradient flows into it."""
    target = x.detach()
    if target.shape[-1] != decoded.shape[-1]:
        target = F.adaptive_avg_pool2d(target, decoded.shape[-1])
    return (decoded.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


class ReconDecoder(nn.Module):
    """(N, cin, side, side) → (N, channels, out_side, out_side): ×2 upsample + 3×3 conv each."""

    def __init__(self, cin: int, side: int, out_side: int, channels: int) -> None:
        super().__init__()
        if out_side < side or out_side & (out_side - 1) or side & (side - 1):
            raise ValueError(f"decoder needs power-of-two sides with out ≥ in, got {side} → "
                             f"{out_side}")
        ups = int(math.log2(out_side // side))
        convs = []
        c = cin
        for _ in range(ups):
            nxt = max(16, c // 2)
            convs.append(EqConv2d(c, nxt, 3))
            c = nxt
        self.convs = nn.ModuleList(convs)
        self.to_img = EqConv2d(c, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = lrelu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        out: torch.Tensor = self.to_img(x)
        return out


class _PatchHead(nn.Module):
    """One scale: 3×3 conv, then 2× downsampling convs to ≤ 4×4, then a logit per patch."""

    def __init__(self, cin: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv_in = EqConv2d(cin, width, 3)
        self.down = EqConv2d(width, width, 3)
        self.out = EqConv2d(width, 1, 1)
        self.embed = EqLinear(num_classes, width, bias=False)
        self.cmap_scale = 1.0 / math.sqrt(width)
        self.num_classes = num_classes

    def forward(self, f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv_in(f))
        while x.shape[-1] > 4:
            x = F.avg_pool2d(lrelu(self.down(x)), 2)
        onehot = F.one_hot(c.long(), self.num_classes).to(x.dtype)
        cmap = self.embed(onehot)[:, :, None, None]
        logits = self.out(x).squeeze(1) + (x * cmap).sum(dim=1) * self.cmap_scale
        return logits.mean(dim=(1, 2))


class ProjectedHeads(nn.Module):
    """Sum over S's feature scales of each scale's mean patch logit: one logit per image."""

    def __init__(self, channels: list[int], num_classes: int) -> None:
        super().__init__()
        if not channels:
            raise ValueError("projected heads need at least one feature scale")
        self.heads = nn.ModuleList(_PatchHead(c, num_classes) for c in channels)

    def forward(self, feats: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        if len(feats) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature maps, got {len(feats)}")
        out: torch.Tensor = sum(
            head(f, c) for head, f in zip(self.heads, feats, strict=True))
        return out


def spine_feature_channels(width: int) -> list[int]:
    """Channels of the maps :func:`spine_features` returns for an S of ``width``."""
    return [width * 2**s for s in SPINE_STAGES]


def spine_features(spine: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of S's stages :data:`SPINE_STAGES` for images ``x`` in S's input space.

    S is ``shared.classifier.ResNetClassifier`` (stem, then two BasicBlocks per stage); this
    replays its forward up to the last stage needed. S stays frozen and in eval mode (its
    BatchNorm uses running statistics), so its features of a batch never depend on the other
    images in the batch; gradients still flow through it to G's images.
    """
    assert x.ndim == 4, f"expected (N, C, H, W), got {tuple(x.shape)}"
    out = F.relu(spine.stem_bn(spine.stem(x)))  # type: ignore[operator]
    k = spine.stem_pool(min(x.shape[-2:]))  # type: ignore[operator]
    if k > 1:
        out = F.max_pool2d(out, k)
    feats = []
    layers = list(spine.layers)  # type: ignore[arg-type]
    for stage in range(max(SPINE_STAGES) + 1):
        out = layers[2 * stage + 1](layers[2 * stage](out))
        if stage in SPINE_STAGES:
            feats.append(out)
    return feats
