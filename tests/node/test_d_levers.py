"""The discriminator-side levers (GanConfig ``d_recon`` / ``d_projected``): each trains, each is
really wired in, both off changes nothing, and the combinations that cannot work are refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from node.errors import CheckpointError
from node.training import GanConfig, train
from node.training.init_from import InitFromError, apply_checkpoint
from node.training.loop import Trainer
from node.training.networks import Discriminator, build_discriminator
from node.training.networks.d_heads import recon_error

SMALL = GanConfig(resolution=16, batch=8, kimg=1.0, channel_base=64, channel_min=4, z_dim=8,
                  w_dim=16, min_class_images=8, r1_interval=4, device="cpu", speed="float32",
                  spine_epochs=1, spine_width=4)


MAIN_IMAGE_SUM = 833.9295654296875
"""Sum of the first test image below, measured on main before the levers existed."""


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 16, 16), dtype=np.uint8), np.arange(32) % 2


def _trainer(cfg: GanConfig, run_dir: Path | None) -> Trainer:
    x, y = _data()
    return Trainer(x, y, ["a", "b"], cfg, 16, run_dir, progress=False)


def _params(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters() if k.startswith(prefix)}


def test_recon_is_on_by_default_and_trains_its_decoder(tmp_path: Path) -> None:
    assert GanConfig().d_recon  # measured to win (BENCHMARKS.md, issue 12)
    tr = _trainer(SMALL, tmp_path)
    before = _params(tr.D, "recon.")
    assert before, "d_recon built no decoder"
    stats = tr.step()
    assert float(stats["d_recon"]) > 0
    after = _params(tr.D, "recon.")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_projected_option_trains_heads_on_frozen_s(tmp_path: Path) -> None:
    tr = _trainer(replace(SMALL, model="spinegan", d_projected=True), tmp_path)
    assert tr.spine is not None
    s_before = {k: v.clone() for k, v in tr.spine.state_dict().items()}
    heads_before = _params(tr.D, "proj.")
    g_before = _params(tr.G, "")
    stats = tr.step()
    assert float(stats["d_proj"]) > 0 and float(stats["g_proj"]) > 0
    heads_after = _params(tr.D, "proj.")
    assert any(not torch.equal(heads_before[k], heads_after[k]) for k in heads_before)
    assert all(torch.equal(v, tr.spine.state_dict()[k]) for k, v in s_before.items())
    assert any(not torch.equal(v, dict(tr.G.named_parameters())[k]) for k, v in g_before.items())


def test_projected_heads_reach_the_generator() -> None:
    """G's gradient changes when the projected term is on (it flows through frozen S)."""
    from node.training.losses import GanLoss
    from node.training.networks import Generator
    from node.training.networks.d_heads import spine_feature_channels, spine_features
    from shared.classifier import ResNetClassifier

    torch.manual_seed(0)
    G = Generator(16, 2, channel_base=64, channel_min=4)
    D = Discriminator(16, 2, channel_base=64, channel_min=4,
                      projected=spine_feature_channels(4))
    S = ResNetClassifier(2, width=4).eval().requires_grad_(False)

    def grads(loss: GanLoss) -> torch.Tensor:
        G.zero_grad()
        torch.manual_seed(1)
        total, _ = loss.generator_loss(torch.randn(4, G.z_dim), torch.tensor([0, 1, 0, 1]))
        total.backward()
        return torch.cat([p.grad.flatten() for p in G.parameters() if p.grad is not None])

    plain = grads(GanLoss(G, D, w_avg_decay=None))
    proj = grads(GanLoss(G, D, w_avg_decay=None, projected=lambda x: spine_features(S, x)))
    assert not torch.allclose(plain, proj)


def test_both_options_take_a_step_together(tmp_path: Path) -> None:
    tr = _trainer(replace(SMALL, model="spinegan", d_projected=True, d_recon=True), tmp_path)
    stats = tr.step()
    assert {"d_proj", "d_recon", "g_proj", "g_spine_ce"} <= set(stats)
    assert all(torch.isfinite(v) for v in stats.values())


def test_reconstruction_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    D = Discriminator(32, 2, channel_base=128, channel_min=8, recon=True)
    # Smooth images, like radiographs (iid noise has nothing an 8×8 map could describe).
    x = torch.nn.functional.interpolate(torch.rand(8, 1, 4, 4) * 2 - 1, size=32,
                                        mode="bilinear", align_corners=False)
    c = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        _, decoded = D(x, c, with_recon=True)
        loss = recon_error(x, decoded).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert decoded.shape == x.shape
    assert losses[-1] < 0.5 * losses[0], losses


def test_recon_target_is_the_downsampled_input() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    decoded = torch.nn.functional.avg_pool2d(x, 2)
    assert float(recon_error(x, decoded)) == 0.0
    assert float(recon_error(x, decoded + 1)) == pytest.approx(1.0)


def test_levers_off_leave_the_discriminator_and_the_run_as_on_main() -> None:
    """Off means off: same parameters, same architecture record, same first images.

    The image sum was measured on main before the levers existed (same seed, three steps,
    float32); a change here means runs with the levers off no longer reproduce main's.
    """
    torch.manual_seed(0)
    D = Discriminator(16, 2, channel_base=64, channel_min=4)
    assert set(D.architecture()) == {"name", "resolution", "num_classes", "channel_base",
                                     "channel_max", "channel_min", "channels", "norm", "mbstd",
                                     "mbstd_group"}
    assert not any(k.startswith(("recon.", "proj.")) for k in D.state_dict())
    # The levers' heads are built after the base layers: those draw the same initial weights.
    torch.manual_seed(0)
    D_on = Discriminator(16, 2, channel_base=64, channel_min=4, recon=True, projected=[8, 16])
    for k, v in D.state_dict().items():
        assert torch.equal(v, D_on.state_dict()[k]), k
    assert build_discriminator(D_on.architecture()).architecture() == D_on.architecture()

    tr = _trainer(replace(SMALL, d_recon=False), None)  # d_recon is on by default since issue 12
    for _ in range(3):
        tr.step()
    with torch.no_grad():
        z = torch.randn(4, tr.G.z_dim, generator=torch.Generator().manual_seed(5))
        img = tr.G_ema(z, torch.tensor([0, 1, 0, 1]))
    assert float(img.sum()) == pytest.approx(MAIN_IMAGE_SUM, rel=1e-5, abs=1e-4)


def test_projected_refused_under_dp_and_without_spinegan() -> None:
    with pytest.raises(ValueError, match="d_projected is not available with DP"):
        GanConfig(kimg=1.0, model="spinegan", d_projected=True, dp_epsilon=10.0)
    with pytest.raises(ValueError, match="d_projected needs model 'spinegan'"):
        GanConfig(kimg=1.0, d_projected=True)


def test_recon_under_dp_takes_a_private_step(tmp_path: Path) -> None:
    """The decoder is part of D, so Opacus clips its per-example gradients with D's."""
    tr = _trainer(replace(SMALL, d_recon=True, dp_epsilon=10.0, kimg=0.032), tmp_path)
    tr.enable_dp(4)
    before = _params(tr._D_raw, "recon.")
    stats = tr.step()
    assert float(stats["d_recon"]) > 0
    after = _params(tr._D_raw, "recon.")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_with_other_d_heads_is_refused_naming_them(tiny_site: Path) -> None:
    cfg = replace(SMALL, kimg=0.016, log_every=2, grid_per_class=2, d_recon=False)
    train(tiny_site, cfg, run_name="r", progress=False)
    with pytest.raises(CheckpointError, match="d_recon: checkpoint has False, now True"):
        train(tiny_site, replace(cfg, d_recon=True), run_name="r", progress=False)


def test_init_from_weights_keep_d_heads_strict_and_start_projected_heads_fresh() -> None:
    class _T:
        def __init__(self, D: Discriminator) -> None:
            self.G = torch.nn.Linear(1, 1)
            self.G_ema = torch.nn.Linear(1, 1)
            self._D_raw = D

    torch.manual_seed(0)
    src = Discriminator(16, 2, channel_base=64, channel_min=4, projected=[8, 16])
    ckpt = {"G": torch.nn.Linear(1, 1).state_dict(), "G_ema": torch.nn.Linear(1, 1).state_dict(),
            "D": src.state_dict()}
    fresh = Discriminator(16, 2, channel_base=64, channel_min=4, projected=[8, 16])
    heads = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("proj.")}
    apply_checkpoint(_T(fresh), ckpt, Path("src.pt"))
    assert torch.equal(fresh.from_img.weight, src.from_img.weight)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in heads.items())
    with pytest.raises(InitFromError, match=r"src\.pt: weights do not fit"):
        apply_checkpoint(_T(Discriminator(16, 2, channel_base=64, channel_min=4, recon=True)),
                         ckpt, Path("src.pt"))
