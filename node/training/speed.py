"""Pick the fastest numeric mode for the GAN networks on THIS machine, at the start of a run.

Why: whether bfloat16 autocast or the channels_last memory layout makes a CPU faster depends on
the CPU (bf16 is native on AVX512-BF16/AMX parts and emulated, i.e. slower, elsewhere) and on
the torch build; the only honest answer is to time a few real training steps of the run's own
networks. The probe times each candidate for a handful of G+D forward/backward passes at the
run's batch size and keeps one only if it beats float32 by ``min_gain``; a candidate that
raises (unsupported op, no bf16 kernel) is skipped. float32 is always the fallback.

What the choice touches: the D and G adversarial forward/backward passes. R1 (a double
backward whose squared gradients underflow in bf16) and every DP-SGD step (Opacus' per-example
clipping) stay float32 — the loop enforces that, not this module.

``torch.compile`` is not a candidate on CPU: it needs a C++ toolchain at run time and its
compile time (tens of seconds) is a large share of a few-minute CPU budget; the probe reports
it as not tried.

>>> from node.training.networks import Generator, Discriminator
>>> G, D = Generator(8, 2, channel_base=64, channel_min=8), Discriminator(8, 2, channel_base=64,
...                                                                           channel_min=8)
>>> choice = probe_speed(G, D, batch=4, candidates=("float32",), reps=1)
>>> choice.mode
'float32'
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

MODES = ("float32", "bf16", "channels_last")
"""What the probe can pick; ``float32`` is the reference and the fallback."""

Timer = Callable[[str, Callable[[], None]], float]
"""(mode name, one training pass) → seconds per pass; replaceable in tests."""


@dataclass
class SpeedChoice:
    """The mode a run uses and the timings that chose it (recorded in the run's metrics)."""

    mode: str = "float32"
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per probed G+D pass, per mode that ran."""
    failed: dict[str, str] = field(default_factory=dict)
    """Mode → why it could not run here."""

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.mode == "bf16" else None

    @property
    def channels_last(self) -> bool:
        return self.mode == "channels_last"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "seconds": self.seconds, "failed": self.failed,
                "compile": "not tried on CPU (toolchain + compile time exceed the gain)"}


@contextlib.contextmanager
def numeric_mode(mode: str, device: torch.device) -> Iterator[None]:
    """Autocast to bf16 for ``bf16``; nothing for the others (layout is set on the modules)."""
    if mode == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def to_channels_last(*modules: nn.Module) -> None:
    """Store the modules' 4-D weights in NHWC order (in place; convolutions follow them)."""
    for m in modules:
        m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _default_timer(reps: int) -> Timer:
    def timer(mode: str, one_pass: Callable[[], None]) -> float:
        one_pass()  # warm-up: allocations, oneDNN primitive caches
        t0 = time.perf_counter()
        for _ in range(reps):
            one_pass()
        return (time.perf_counter() - t0) / reps
    return timer


def _one_pass(G: nn.Module, D: nn.Module, batch: int, mode: str,
              device: torch.device) -> Callable[[], None]:
    fmt = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    z = torch.randn(batch, int(G.z_dim), device=device)  # type: ignore[arg-type]
    c = torch.zeros(batch, dtype=torch.long, device=device)

    def run() -> None:
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        with numeric_mode(mode, device):
            fake = G(z, c).contiguous(memory_format=fmt)
            loss = F.softplus(-D(fake, c)).mean()
        loss.float().backward()
    return run


def probe_speed(
    G: nn.Module,
    D: nn.Module,
    batch: int,
    candidates: tuple[str, ...] = MODES,
    reps: int = 2,
    min_gain: float = 1.1,
    max_batch: int = 32,
    timer: Timer | None = None,
    rounds: int = 5,
) -> SpeedChoice:
    """Time each candidate on copies of ``G`` and ``D``; return the fastest that wins.

    The networks the run trains are never touched (copies are timed), so a failed candidate
    leaves no half-converted module behind. The modes are timed in ``rounds`` interleaved
    rounds and each keeps its fastest round: a site usually starts beside others (the demo
    starts three at once), and timing the modes one after the other let a burst of the
    neighbours' start-up land on one mode only — measured, three sites of one demo picked
    bf16, channels_last and float32 on the same CPU. The minimum over interleaved rounds is
    the time the mode takes when it gets the CPU. Five rounds, not three: with three, one site
    of a demo (seed 0, 2026-11-26) timed bf16 at only 1.05× float32 while its neighbours
    measured 1.15-1.46×, kept float32 and trained 9.6 kimg where they trained 13.4
    (BENCHMARKS.md § demo); two more rounds cost about two seconds.
    """
    import copy

    timer = timer or _default_timer(reps)
    device = next(G.parameters()).device
    batch = min(batch, max_batch)  # bounded cost: the probe is a few seconds of a run
    choice = SpeedChoice()
    passes: dict[str, Callable[[], None]] = {}
    for mode in ("float32", *[m for m in candidates if m != "float32"]):
        if mode not in MODES:
            raise ValueError(f"unknown speed mode {mode!r}; one of {MODES}")
        g, d = copy.deepcopy(G).train(), copy.deepcopy(D).train()
        if mode == "channels_last":
            to_channels_last(g, d)
        passes[mode] = _one_pass(g, d, batch, mode, device)
    for _ in range(max(1, rounds)):
        for mode, one_pass in passes.items():
            if mode in choice.failed:
                continue
            try:
                t = float(timer(mode, one_pass))
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                choice.failed[mode] = (str(exc).splitlines()[0][:200] if str(exc)
                                       else type(exc).__name__)
                choice.seconds.pop(mode, None)
                continue
            choice.seconds[mode] = min(t, choice.seconds.get(mode, t))
    base = choice.seconds.get("float32")
    if base is None:
        return choice
    best = min(choice.seconds, key=lambda m: choice.seconds[m])
    if best != "float32" and base / choice.seconds[best] >= min_gain:
        choice.mode = best
    return choice


__all__ = ["MODES", "SpeedChoice", "numeric_mode", "probe_speed", "to_channels_last"]
