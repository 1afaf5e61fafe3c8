"""Image encoders for distribution scores and memorization audits — none downloads anything.

Two encoders, always named, so no number is ever shown without the feature space that made it:

``domain`` → :class:`DomainEncoder`, name ``"domain-rfconv-v1"`` (the default)
    A fixed, *seeded random-feature* convolutional network plus pooled intensity statistics,
    built from a NumPy PCG64 stream, so every machine builds bit-identical filters without any
    weights file. Why this and not an ImageNet network:

    * nothing may be downloaded, and no radiograph-trained encoder ships with the package;
    * random convolutional features are a recognised embedding for generative-model
      evaluation: Naeem et al. (2020, "Reliable fidelity and diversity metrics") found
      randomly initialised CNN embeddings usable for precision/recall-type metrics, and
      shallow random-filter networks capture image texture statistics (Ustyuzhaninov et al.,
      2017), which is what GAN artefacts in radiographs alter;
    * ImageNet-class features are known to bias FID (Kynkäänniemi et al., 2023) and are far
      from grey-scale radiographs anyway.

    Architecture: resize to 64×64 (antialiased bilinear) so stores of any size compare; three
    conv+ReLU+avg-pool stages (32 5×5, 64 3×3, 128 3×3 filters; zero-mean, He-scaled
    Gaussian); per-stage per-channel spatial mean and standard deviation (texture, Gatys-style
    first/second moments); plus a 4×4 average-pooled image (coarse anatomy/layout) and a
    16-bin intensity histogram (exposure/contrast). 480 dimensions. Deterministic: no
    dropout, no BatchNorm, float32, eval mode.

    What it is not: a perceptual metric validated against radiologists. Distances in it are
    comparable between runs of this version only, which is why the name carries ``-v1``.

``inception`` → :class:`InceptionEncoder`, name ``"inception-v3-fid"``
    The TF-2015 Inception-v3 used by the original FID (pool3, 2048-d), written here in plain
    torch, loading a **user-supplied** ``pt_inception-2015-12-05-*.pth`` state dict (the file
    pytorch-fid distributes) or an npz of the same arrays. Only with it is "FID" comparable to
    published numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from shared.errors import EncoderError
from shared.synthetic import to_tensor_range


class Encoder(Protocol):
    name: str

    def embed(self, images: npt.NDArray[np.uint8], batch: int = 256) -> npt.NDArray[np.float32]:
        ...


def _check_images(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise EncoderError(f"encoders take uint8 (N, H, W) images, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


class DomainEncoder:
    """Seeded random-feature conv net + pooled intensity statistics (see module docstring)."""

    name = "domain-rfconv-v1"
    SIZE = 64
    CHANNELS = (32, 64, 128)
    KERNELS = (5, 3, 3)

    def __init__(self, seed: int = 20240611) -> None:
        rng = np.random.Generator(np.random.PCG64(seed))
        self.weights: list[torch.Tensor] = []
        cin = 1
        for cout, k in zip(self.CHANNELS, self.KERNELS, strict=True):
            w = rng.standard_normal((cout, cin, k, k))
            w -= w.mean(axis=(1, 2, 3), keepdims=True)  # respond to structure, not brightness
            w *= math.sqrt(2.0 / (cin * k * k)) / max(w.std(), 1e-12)
            self.weights.append(torch.from_numpy(w.astype(np.float32)))
            cin = cout
        self.dim = 2 * sum(self.CHANNELS) + 16 + 16

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
        feats = [F.adaptive_avg_pool2d(x, 4).flatten(1)]
        u = ((x + 1.0) / 2.0).clamp(0, 1)
        centers = torch.linspace(0, 1, 16).view(1, 16, 1, 1)
        hist = torch.exp(-0.5 * ((u - centers) / (1 / 16)) ** 2).mean(dim=(2, 3))
        feats.append(hist / hist.sum(1, keepdim=True).clamp_min(1e-12))
        h = x
        for w in self.weights:
            h = F.relu(F.conv2d(h, w, padding=w.shape[-1] // 2))
            feats.append(h.mean(dim=(2, 3)))
            feats.append(h.std(dim=(2, 3)))
            h = F.avg_pool2d(h, 2)
        return torch.cat(feats, 1)

    def embed(self, images: npt.NDArray[np.uint8], batch: int = 256) -> npt.NDArray[np.float32]:
        data = _check_images(images)
        out: list[npt.NDArray[np.float32]] = []
        with torch.no_grad():
            for i in range(0, len(data), batch):
                x = to_tensor_range(data[i : i + batch]).unsqueeze(1)
                out.append(self._features(x).numpy().astype(np.float32))
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Inception-v3 (FID variant), plain torch. Module names match the pt_inception-2015-12-05
# state dict so it loads with strict=True.


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores padded zeros.
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, 2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class _BlockE(nn.Module):
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # the FID network's last block max-pools (a TF quirk)
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in TF FID: input (N, 3, 299, 299) in [-1, 1] → pool3 (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # present in the weights file; unused for features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EncoderError(
            f"{path}: Inception weights file not found. Nothing is downloaded at run time: "
            "obtain pt_inception-2015-12-05-6726825d.pth (the pytorch-fid FID weights) yourself "
            "and pass its path, or use the default 'domain' encoder"
        )
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: torch.from_numpy(npz[k]) for k in npz.files}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a wrong file
        raise EncoderError(
            f"{path}: not a readable state dict ({type(exc).__name__}: {str(exc)[:120]}); "
            "expected pt_inception-2015-12-05-6726825d.pth"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"{path}: does not hold a plain state dict of tensors")
    return state


class InceptionEncoder:
    """pool3 features of the FID Inception-v3 from a user-supplied weights file."""

    name = "inception-v3-fid"
    dim = 2048

    def __init__(self, weights: Path, device: str | None = None) -> None:
        state = _read_state_dict(Path(weights))
        net = FIDInceptionV3()
        missing = sorted(set(net.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(net.state_dict()))
        if missing or unexpected:
            raise EncoderError(
                f"{weights}: not the FID Inception-v3 weights ({len(missing)} missing keys, "
                f"e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
            )
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EncoderError(f"{weights}: shapes do not match Inception-v3 ({exc})") from None
        self.device = torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.net = net.eval().to(self.device)

    def embed(self, images: npt.NDArray[np.uint8], batch: int = 64) -> npt.NDArray[np.float32]:
        data = _check_images(images)
        out: list[npt.NDArray[np.float32]] = []
        with torch.no_grad():
            for i in range(0, len(data), batch):
                x = data[i : i + batch].to(self.device).float().div(255.0).unsqueeze(1)
                x = F.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear",
                                  align_corners=False)
                out.append(self.net(2 * x - 1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)


def get_encoder(name: str = "domain", weights: Path | None = None) -> Encoder:
    """The named encoder: ``"domain"`` (default, no file) or ``"inception"`` (needs weights)."""
    if name in ("domain", DomainEncoder.name):
        if weights is not None:
            raise EncoderError("the domain encoder takes no weights file (it is built from a seed)")
        return DomainEncoder()
    if name in ("inception", InceptionEncoder.name):
        if weights is None:
            raise EncoderError(
                "the 'inception' encoder needs --inception-weights PATH to a user-supplied "
                "pt_inception-2015-12-05 state dict; nothing is downloaded"
            )
        return InceptionEncoder(weights)
    raise EncoderError(f"unknown encoder {name!r}; choose 'domain' or 'inception'")
