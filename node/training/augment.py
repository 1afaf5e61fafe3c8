"""Differentiable augmentation for small-data GANs: adaptive (ADA-like) or fixed probability.

Why: with a few thousand radiographs D memorises the training set within a few epochs and G
collapses (Karras et al. 2020, "ADA"; Zhao et al. 2020, "DiffAugment"). Augmenting *both* real
and generated images before D, with operations that are differentiable so G's gradient passes
through them, lets D see "more" data without G learning the augmentations, as long as each is
applied with probability p < ~0.8 (non-leaking).

Operations (each applied per image with probability p), chosen for grayscale radiographs:

* geometric, fused into one ``grid_sample``: integer-ish translation (±1/8 of the side),
  isotropic scaling (log-normal, σ = 0.2·ln 2), small rotation (±10°); reflection padding;
  **no flips**: a mirrored chest or spine is anatomically wrong, and D would learn it;
* intensity: brightness (+N(0, 0.2)), contrast (×lognormal(σ = 0.5·ln 2) about the mean);
* cutout: one square of half the side set to 0 (mid-gray), as in DiffAugment.

Modes: ``"ada"`` tunes p from the overfitting heuristic r_t = E[sign(D(real))] towards a target
(0.6), ``"fixed"`` keeps p constant (required under DP: the ADA heuristic itself reads D's
outputs on private images), ``"none"`` is the identity.

>>> import torch
>>> aug = Augment(mode="fixed", p=1.0)
>>> x = torch.zeros(4, 1, 16, 16, requires_grad=True)
>>> aug(x).shape
torch.Size([4, 1, 16, 16])
>>> Augment(mode="none")(x) is x
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

MODES = ("ada", "fixed", "none")


class Augment:
    """Callable augmentation pipe with a probability ``p`` and, in ADA mode, its controller."""

    def __init__(
        self,
        mode: str = "ada",
        p: float = 0.0,
        target: float = 0.6,
        ada_kimg: float = 50.0,
        interval: int = 4,
        max_p: float = 0.8,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"augment mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
        self.mode = mode
        # p lives in a 0-d tensor on the data's device, and the ADA controller updates it
        # there: reading it back (``.p``) is a host synchronisation, done only when logging
        # or checkpointing, never inside a training step.
        self._p = torch.tensor(float(p) if mode != "none" else 0.0, dtype=torch.float64)
        self._p_host_zero = mode == "none" or float(p) == 0.0
        """True while p is known on the host to be exactly 0 (skip the pipe without a sync)."""
        self.target = target
        self.ada_kimg = ada_kimg
        self.interval = interval
        self.max_p = max_p
        self._signs = torch.zeros((), dtype=torch.float64)
        self._count = 0
        self._updates = 0
        self._last_rt: torch.Tensor | None = None

    @property
    def p(self) -> float:
        """Current probability (a host read: call at logging intervals only)."""
        return float(self._p)

    def average_p_(self, average: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace p by ``average(p)`` on the device (torchrun: every process the same p)."""
        self._p = average(self._p.clone())

    @property
    def last_rt(self) -> float | None:
        """The overfitting heuristic at the last ADA update (a host read)."""
        return None if self._last_rt is None else float(self._last_rt)

    # -- the controller -------------------------------------------------------------------
    def observe_real_logits(self, logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)); every ``interval`` calls, nudge p towards the target.

        All on the logits' device: the step size depends only on how many logits were seen
        (known on the host), its sign on r_t − target (a tensor), so nothing is read back.
        """
        if self.mode != "ada":
            return
        signs = torch.sign(logits.detach().float()).sum().double()
        self._signs = _on(self._signs, signs.device) + signs
        self._count += int(logits.numel())
        self._updates += 1
        if self._updates >= self.interval and self._count:
            rt = self._signs / self._count
            step = self._count / (self.ada_kimg * 1000.0)
            direction = torch.where(rt >= self.target, 1.0, -1.0)
            p = _on(self._p, rt.device) + direction * step
            self._p = p.clamp(0.0, self.max_p)
            self._p_host_zero = False
            self._last_rt = rt
            self._signs = torch.zeros((), dtype=torch.float64, device=rt.device)
            self._count, self._updates = 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "p": self.p, "signs": float(self._signs),
                "count": self._count, "updates": self._updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._p = torch.tensor(float(state["p"]), dtype=torch.float64)
        self._p_host_zero = self.mode == "none" or float(state["p"]) == 0.0
        self._signs = torch.tensor(float(state["signs"]), dtype=torch.float64)
        self._count = int(state["count"])
        self._updates = int(state["updates"])

    # -- the pipe -------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._p_host_zero:
            return x
        if self._p.device != x.device:
            self._p = _on(self._p, x.device)
        return augment(x, self._p)


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A 0-d state tensor on ``device`` without a host synchronisation: a CPU value (a fresh
    or resumed state) is rebuilt there from its host value instead of copied."""
    if t.device == device:
        return t
    if t.device.type == "cpu":
        return torch.full((), float(t), dtype=t.dtype, device=device)
    return t.to(device)


def _gate(n: int, p: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, device=device) < p).float()


def augment(x: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Apply the pipeline with per-image probability ``p`` per operation (differentiable).

    ``p`` may be a 0-d tensor on ``x``'s device; every gate is computed on the device and the
    warp always runs (identity where closed), so the pipe never waits for the device.
    """
    n, _, h, w = x.shape
    dev = x.device
    dtype = x.dtype
    # Geometric: one affine per image, identity where the gate is closed.
    g_t = _gate(n, p, dev)
    g_s = _gate(n, p, dev)
    g_r = _gate(n, p, dev)
    tx = (torch.rand(n, device=dev) * 2 - 1) * 0.125 * 2 * g_t  # grid units: side = 2
    ty = (torch.rand(n, device=dev) * 2 - 1) * 0.125 * 2 * g_t
    s = torch.exp(torch.randn(n, device=dev) * (0.2 * math.log(2)) * g_s)
    a = (torch.rand(n, device=dev) * 2 - 1) * (10.0 * math.pi / 180.0) * g_r
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    ).to(dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Intensity.
    g_b = _gate(n, p, dev).view(n, 1, 1, 1).to(dtype)
    x = x + torch.randn(n, 1, 1, 1, device=dev, dtype=dtype) * 0.2 * g_b
    g_c = _gate(n, p, dev).view(n, 1, 1, 1).to(dtype)
    c = torch.exp(torch.randn(n, 1, 1, 1, device=dev, dtype=dtype) * (0.5 * math.log(2)) * g_c)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    # Cutout: a half-side square at a random centre, per gated image.
    g_o = _gate(n, p, dev).view(n, 1, 1)
    cy = torch.randint(0, h, (n, 1, 1), device=dev)
    cx = torch.randint(0, w, (n, 1, 1), device=dev)
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    hole = ((yy - cy).abs() < h // 4) & ((xx - cx).abs() < w // 4)
    keep = 1.0 - hole.float() * g_o
    return x * keep.unsqueeze(1).to(dtype)
