"""Network presets and the site's hardware: capacity by name, the lean CPU nets unchanged,
every resize recorded, and a configuration that cannot fit the GPU refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from node.errors import CheckpointError, DeviceError
from node.training import hardware
from node.training.config import GanConfig, preset_config
from node.training.loop import Trainer, train
from node.training.networks import Discriminator, Generator
from node.training.presets import PRESETS, preset_defaults
from shared.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> object:
    """One OpenMP thread: on a shared CPU two spinning threads make the 512² step ~10× slower,
    and OMP_NUM_THREADS stops pick_device from taking every core back."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(res: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, res, res), dtype=np.uint8), np.arange(n) % 2


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_at_its_resolution(name: str) -> None:
    """Full-size networks on the meta device (no memory): the right output shape, and more
    capacity than the CPU nets wherever a GPU preset is meant to give it."""
    cfg = preset_config(name)
    res = cfg.resolution or 32
    with torch.device("meta"):
        G = Generator(res, 2, z_dim=cfg.z_dim, w_dim=cfg.w_dim, channel_base=cfg.channel_base,
                      channel_max=cfg.channel_max, channel_min=cfg.channel_min)
        D = Discriminator(res, 2, channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                          channel_min=cfg.channel_min)
        img = G(torch.empty(2, cfg.z_dim), torch.zeros(2, dtype=torch.long))
        assert img.shape == (2, 1, res, res)
        assert D(img, torch.zeros(2, dtype=torch.long)).shape == (2,)
    params = sum(p.numel() for p in G.parameters())
    if name == "cpu":
        assert params < 1_000_000
    else:
        assert params > 10_000_000, f"{name}: {params} parameters is not GPU capacity"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_takes_one_training_step(name: str) -> None:
    """Each preset's own settings (z/w sizes, R1 γ, EMA, augmentation) through a real step,
    at a tiny batch; the widths are divided by 32 and the side kept at 16² so the full
    matrix stays a few seconds on a CPU (the full widths train in `pytest -m cuda`)."""
    d = preset_defaults(name)
    cfg = preset_config(name, batch=2, kimg=1.0, min_class_images=1, r1_interval=1,
                        resolution=16, channel_base=max(32, d.get("channel_base", 512) // 32),
                        channel_max=max(8, d.get("channel_max", 256) // 32),
                        channel_min=max(4, d.get("channel_min", 16) // 32))
    x, y = _data(16)
    tr = Trainer(x, y, ["a", "b"], cfg, 16, None, False)
    stats = tr.step()
    assert tr.nimg == 2 and tr.cfg.preset == name
    assert all(np.isfinite(v) for v in stats.values()), stats
    assert tr.r1_gamma == (d.get("r1_gamma") or 0.0002 * 16 * 16 / 2)


def test_cpu_preset_is_the_benchmarked_lean_nets_unchanged() -> None:
    """Same seed → the same first images as before presets existed (values recorded from the
    commit before this change, torch 2.13 CPU build, one thread); preset "cpu" is GanConfig()."""
    assert preset_config("cpu") == GanConfig()
    x = np.random.default_rng(0).integers(0, 255, (120, 28, 28), dtype=np.uint8)
    y = np.repeat([0, 1], 60)
    # float32: the start-up speed probe may pick bf16/channels_last on this CPU (other numerics).
    # d_recon off: the recorded values predate that head (on by default since issue 12's
    # ablation); with it on D has a decoder more and D's loss another term.
    tr = Trainer(x, y, ["a", "b"], preset_config("cpu", kimg=1.0, batch=8, min_class_images=1,
                                                 speed="float32", d_recon=False),
                 28, None, False)
    for _ in range(3):
        tr.step()
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        img = tr.G_ema(torch.randn(2, tr.G.z_dim, generator=g), torch.tensor([0, 1])).double()
    assert float(img.sum()) == pytest.approx(-256.69889111444354, rel=1e-6)
    assert float(img.abs().sum()) == pytest.approx(2618.2429502271116, rel=1e-6)


def test_unknown_preset_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'gpu-9'.*gpu-256"):
        preset_defaults("gpu-9")
    with pytest.raises(ValueError, match="preset must be one of"):
        GanConfig(preset="gpu-9")


def test_checkpoint_from_another_preset_is_refused_naming_what_differs(tmp_path: Path) -> None:
    x, y = _data(16, 16)
    small = {"kimg": 0.002, "batch": 2, "min_class_images": 1, "resolution": 16,
             "channel_base": 64, "channel_max": 16, "channel_min": 8, "z_dim": 8, "w_dim": 8}
    from node.training.loop import train_arrays

    train_arrays(x, y, ["a", "b"], preset_config("cpu", **small), tmp_path, progress=False)
    other = preset_config("gpu-64", **{**small, "kimg": 0.004})
    with pytest.raises(CheckpointError, match="preset: checkpoint has 'cpu', now 'gpu-64'"):
        train_arrays(x, y, ["a", "b"], other, tmp_path, progress=False)


def test_a_checkpoint_older_than_presets_resumes_as_cpu() -> None:
    from node.training.config import config_differences

    old = {k: v for k, v in GanConfig().__dict__.items() if k != "preset"}
    assert config_differences(old, dict(GanConfig().__dict__)) == []


# -- hardware ------------------------------------------------------------------------------

def test_cuda_asked_for_without_cuda_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA was asked for but this machine has none"):
        hardware.pick_device("cuda")


def test_cli_cuda_without_cuda_exits_2_with_one_line(
        tiny_site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from shared.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["synthlearn", "node", "train", "--site-dir",
                                      str(tiny_site), "--kimg", "0.01", "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "CUDA was asked for" in lines[0], err


def test_preset_that_does_not_fit_is_refused_with_need_and_largest_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's free memory is the seam: 6 GiB free cannot hold gpu-512 at batch 16."""
    gib = 1 << 30
    monkeypatch.setattr(hardware, "gpu_memory_bytes", lambda device: (6 * gib, 8 * gib))
    cfg = preset_config("gpu-512")
    est = hardware.estimate_memory(cfg, 2, 1000)
    fits = est.largest_batch(6 * gib)
    assert 0 <= fits < 16 and est.needed(fits) <= 6 * gib < est.needed(fits + 1)
    with pytest.raises(DeviceError) as err:
        hardware.check_memory(cfg, 2, 1000, torch.device("cuda", 0))
    msg = str(err.value)
    assert "gpu-512" in msg and "GiB" in msg and f"largest batch that fits is {fits}" in msg
    # Ample memory: no refusal; the CPU is never checked.
    monkeypatch.setattr(hardware, "gpu_memory_bytes", lambda device: (200 * gib, 200 * gib))
    assert hardware.check_memory(cfg, 2, 1000, torch.device("cuda", 0)) is not None
    assert hardware.check_memory(cfg, 2, 1000, torch.device("cpu")) is None


def test_memory_estimate_grows_with_resolution_and_capacity() -> None:
    per = {n: hardware.estimate_memory(preset_config(n), 2, 0).per_image_bytes
           for n in ("gpu-64", "gpu-128", "gpu-256")}
    assert per["gpu-64"] < per["gpu-128"] < per["gpu-256"]
    assert hardware.estimate_memory(preset_config("cpu", resolution=64), 2, 0) \
        .per_image_bytes < per["gpu-64"]


# -- resolution: explicit and recorded -----------------------------------------------------

@pytest.mark.slow
def test_512_store_trains_at_512_and_every_stage_records_the_resize(tmp_path: Path) -> None:
    from node.export import public_numbers
    from node.generate import generate
    from node.phantoms import phantom_store

    site = phantom_store(tmp_path / "site", n=8, size=512)
    # One step, no R1 (its double backward at 512² is the slow part on a CPU).
    cfg = GanConfig(kimg=0.002, batch=2, min_class_images=1, resolution=512, channel_min=4,
                    channel_base=256, channel_max=32, z_dim=8, w_dim=8, grid_per_class=1,
                    r1_gamma=0.0, augment="none")
    run = train(site, cfg, run_name="r512", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resolution"] == 512 and metrics["steps"] == 1
    assert metrics["resize"]["kind"] == "none" and metrics["resize"]["output_size"] == 512
    syn = generate(site, n=2, run_name="r512")
    assert syn.images.shape[1:] == (512, 512)
    assert syn.info["resize"]["policy"].startswith("none")
    # The same store asked to train at 32²: an explicit resize, recorded where the bundle
    # takes its generation info and GAN metrics from (node/export.py).
    run = train(site, GanConfig(**{**cfg.__dict__, "resolution": 32}), run_name="r32",
                progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resize"]["policy"] == "bilinear resize 512² → 32² (antialiased)"
    syn = generate(site, n=2, run_name="r32", out_name="s32")
    assert syn.images.shape[1:] == (32, 32)
    assert public_numbers(dict(syn.info))["resize"]["output_size"] == 32
    assert public_numbers(metrics)["resize"]["store_size"] == 512
