"""The CPU speed probe picks only what wins, falls back to float32; the step never syncs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from node.training import GanConfig
from node.training.networks import Discriminator, Generator
from node.training.speed import probe_speed


def _nets() -> tuple[Generator, Discriminator]:
    return (Generator(8, 2, channel_base=32, channel_min=4, z_dim=4, w_dim=8),
            Discriminator(8, 2, channel_base=32, channel_min=4))


def _timer(seconds: dict[str, float], broken: tuple[str, ...] = ()) -> Callable[..., float]:
    def timer(mode: str, one_pass: Callable[[], None]) -> float:
        one_pass()  # the candidate really runs
        if mode in broken:
            raise RuntimeError(f"no {mode} kernel on this CPU")
        return seconds[mode]
    return timer


def test_probe_keeps_float32_when_others_are_slower_or_unsupported() -> None:
    G, D = _nets()
    slower = probe_speed(G, D, 4, timer=_timer({"float32": 1.0, "bf16": 1.6,
                                                "channels_last": 1.05}))
    assert slower.mode == "float32" and slower.amp_dtype is None  # 1.05 is not a 10 % win
    broken = probe_speed(G, D, 4, timer=_timer({"float32": 1.0, "channels_last": 2.0},
                                               broken=("bf16",)))
    assert broken.mode == "float32" and "bf16" in broken.failed
    faster = probe_speed(G, D, 4, timer=_timer({"float32": 1.0, "bf16": 0.5,
                                                "channels_last": 0.9}))
    assert faster.mode == "bf16" and faster.amp_dtype == torch.bfloat16


def test_probe_keeps_each_modes_fastest_interleaved_round() -> None:
    """A burst of a neighbour's load during one mode's round must not decide the pick: the
    modes are timed in interleaved rounds and each keeps its fastest."""
    G, D = _nets()
    order: list[str] = []
    burst = {("float32", 0): 3.0, ("bf16", 0): 0.6, ("bf16", 1): 5.0}  # noisy rounds

    def timer(mode: str, one_pass: Callable[[], None]) -> float:
        r = sum(m == mode for m in order)
        order.append(mode)
        return burst.get((mode, r), {"float32": 1.0, "bf16": 0.7, "channels_last": 1.2}[mode])

    choice = probe_speed(G, D, 4, timer=timer, rounds=3)
    assert order[:3] == ["float32", "bf16", "channels_last"] and len(order) == 9  # interleaved
    assert choice.seconds == {"float32": 1.0, "bf16": 0.6, "channels_last": 1.2}
    assert choice.mode == "bf16"


def test_probe_leaves_the_run_networks_untouched() -> None:
    G, D = _nets()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    probe_speed(G, D, 4, reps=1)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in G.parameters())


def _trainer(site: Path, device: str, model: str = "spinegan") -> object:
    from node.training.data import load_site_data
    from node.training.loop import Trainer

    cfg = GanConfig(model=model, resolution=32, batch=8, kimg=1.0,  # type: ignore[arg-type]
                    channel_base=64, channel_min=4, z_dim=8, w_dim=16, min_class_images=8,
                    device=device, r1_interval=2, spine_epochs=1, speed="float32")
    images, labels, names, size = load_site_data(site, "binary")
    return Trainer(images, labels, names, cfg, size, site / "runs" / "t", progress=False)


def test_training_step_reads_nothing_back_from_the_device(tiny_site: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU: every Python-level tensor → host read raises inside the steps (R1 and ADA
    updates included); the stats are read once, by read_stats, at the logging interval."""
    tr = _trainer(tiny_site, "cpu", model="gan")  # the GPU test below covers SpineGAN's term
    tr.step()  # type: ignore[attr-defined]
    # Adam's step counters are host-side tensors (on the CPU even when training on a GPU);
    # reading them is not a device sync. Every other read is.
    allowed = {id(st["step"]) for opt in (tr.opt_G, tr.opt_D)  # type: ignore[attr-defined]
               for st in opt.state.values() if "step" in st}
    originals = {n: getattr(torch.Tensor, n)
                 for n in ("__float__", "__bool__", "__int__", "item", "tolist", "numpy")}

    def guard(name: str) -> Callable[..., object]:
        def read(self: torch.Tensor, *a: object, **k: object) -> object:
            if id(self) not in allowed:
                raise AssertionError(f"host read ({name}) inside the training step")
            return originals[name](self, *a, **k)
        return read

    with monkeypatch.context() as m:
        for name in originals:
            m.setattr(torch.Tensor, name, guard(name))
        for _ in range(8):  # ADA updates every 4 steps, R1 every 2
            tr.step()  # type: ignore[attr-defined]
    stats = tr.read_stats()  # type: ignore[attr-defined]
    assert {"g_adv", "d_loss", "d_real", "d_fake", "r1", "aug_p"} <= set(stats)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_training_step_makes_no_cuda_sync(tiny_site: Path) -> None:
    tr = _trainer(tiny_site, "cuda")
    tr.step()  # type: ignore[attr-defined]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):
            tr.step()  # type: ignore[attr-defined]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stats = tr.read_stats()  # type: ignore[attr-defined]
    assert stats and all(math.isfinite(v) for v in stats.values())
