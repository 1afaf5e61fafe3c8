"""`node train --init-from`: exact weights in, clear refusals, the site's runs untouched."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from node.generate import generate
from node.training import GanConfig, train
from node.training.checkpoint import load_checkpoint, save_checkpoint
from node.training.init_from import InitFromError
from shared.synthetic import SyntheticSet

TINY = GanConfig(resolution=32, batch=8, kimg=0.016, checkpoint_kimg=1.0, channel_base=64,
                 channel_min=4, z_dim=8, w_dim=16, min_class_images=8, device="cpu",
                 grid_per_class=2, speed="float32", init_pretrain_kimg=0.016)


def _first_image(site: Path, run: str) -> np.ndarray:
    return generate(site, 2, run_name=run, seed=0, out_name=f"first-{run}").images[0]


def test_init_from_checkpoint_loads_exactly_its_weights(tiny_site: Path, tmp_path: Path) -> None:
    src = train(tiny_site, TINY, run_name="src", progress=False)
    ckpt = load_checkpoint(src / "checkpoint.pt")
    # A copy with ONE generator weight changed: the first generated image must change too.
    changed = {**ckpt, "G_ema": dict(ckpt["G_ema"]), "G": dict(ckpt["G"])}
    key = next(k for k in changed["G_ema"] if (k.endswith("weight") and "torgb" in k.lower())
               or k.endswith("weight"))
    changed["G_ema"][key] = changed["G_ema"][key] + 0.5
    changed["G"][key] = changed["G"][key] + 0.5
    save_checkpoint(tmp_path / "changed.pt", changed)

    from node.training.data import load_site_data
    from node.training.loop import Trainer

    images, labels, names, size = load_site_data(tiny_site, "binary")
    for path, expect in ((src / "checkpoint.pt", ckpt), (tmp_path / "changed.pt", changed)):
        from node.training.init_from import apply_checkpoint, load_init_source

        tr = Trainer(images, labels, names, TINY, size, tmp_path / "t", progress=False)
        apply_checkpoint(tr, load_init_source(path, TINY, names, size).checkpoint or {}, path)
        for k, v in expect["G_ema"].items():
            assert torch.equal(tr.G_ema.state_dict()[k], v), k
        for k, v in expect["D"].items():
            assert torch.equal(tr._D_raw.state_dict()[k], v), k

    a = train(tiny_site, replace(TINY, kimg=0.008), run_name="a", progress=False,
              init_from=src / "checkpoint.pt")
    train(tiny_site, replace(TINY, kimg=0.008), run_name="b", progress=False,
              init_from=tmp_path / "changed.pt")
    assert load_checkpoint(a / "checkpoint.pt")["init_from"]["kind"] == "checkpoint"
    assert not np.array_equal(_first_image(tiny_site, "a"), _first_image(tiny_site, "b"))


def test_init_from_synthetic_set_pretrains_then_fine_tunes(tiny_site: Path) -> None:
    train(tiny_site, TINY, run_name="src", progress=False)
    generate(tiny_site, 40, run_name="src", seed=1, out_name="others")
    run = train(tiny_site, TINY, run_name="r2", progress=False,
                init_from=tiny_site / "synthetic" / "others")
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["init_from"]["kind"] == "synthetic-set"
    assert (run / "pretrain" / "checkpoint.pt").exists()
    assert ck["nimg"] >= 16  # fine-tuned on the site's real images after pretraining


def test_bad_init_sources_are_refused_and_runs_untouched(tiny_site: Path,
                                                         tmp_path: Path) -> None:
    src = train(tiny_site, TINY, run_name="src", progress=False)
    before = (src / "checkpoint.pt").read_bytes()

    other_res = train(tiny_site, replace(TINY, resolution=16), run_name="r16", progress=False)
    with pytest.raises(InitFromError, match=r"r16/checkpoint\.pt.*resolution: file has 16"):
        train(tiny_site, TINY, run_name="new", progress=False, init_from=other_res)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(InitFromError, match=r"corrupt\.pt"):
        train(tiny_site, TINY, run_name="new", progress=False, init_from=corrupt)

    ck = load_checkpoint(src / "checkpoint.pt")
    ck["class_names"] = ["cat", "dog"]
    save_checkpoint(tmp_path / "classes.pt", ck)
    with pytest.raises(InitFromError, match=r"classes\.pt.*classes: file has \['cat', 'dog'\]"):
        train(tiny_site, TINY, run_name="new", progress=False, init_from=tmp_path / "classes.pt")

    SyntheticSet(np.zeros((4, 32, 32), np.uint8), np.array([0, 1, 0, 1]),
                 ["cat", "dog"]).save(tmp_path / "set")
    with pytest.raises(InitFromError, match=r"set: classes \['cat', 'dog'\] differ"):
        train(tiny_site, TINY, run_name="new", progress=False, init_from=tmp_path / "set")

    with pytest.raises(InitFromError, match="already holds a run"):
        train(tiny_site, TINY, run_name="src", progress=False, init_from=other_res)

    assert not (tiny_site / "runs" / "new").exists()
    assert (src / "checkpoint.pt").read_bytes() == before


def test_second_round_reads_only_its_own_store_and_shared_images(
    tiny_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 2 at a site: its inputs are its own store and the pooled synthetic set (what the
    coordinator sends back); no other site's store is ever opened."""
    from node.store import SiteStore

    rng = np.random.default_rng(1)
    pooled = SyntheticSet(rng.integers(0, 256, (32, 32, 32), dtype=np.uint8),
                          np.arange(32) % 2, SiteStore.open(tiny_site).class_names("binary"))
    pooled.save(tmp_path / "pooled-from-others")
    opened: list[Path] = []
    real_open = SiteStore.open.__func__  # type: ignore[attr-defined]

    def spy(cls: type, site_dir: Path, *a: object, **k: object) -> object:
        opened.append(Path(site_dir).resolve())
        return real_open(cls, site_dir, *a, **k)

    monkeypatch.setattr(SiteStore, "open", classmethod(spy))
    train(tiny_site, TINY, run_name="round2", progress=False,
          init_from=tmp_path / "pooled-from-others")
    assert opened and set(opened) == {tiny_site.resolve()}


def test_dp_run_beyond_the_site_budget_is_refused_before_training(tiny_site: Path) -> None:
    from node.training.dp import DPBudgetError

    r1 = tiny_site / "runs" / "round1"
    r1.mkdir(parents=True)
    (r1 / "metrics.json").write_text('{"dp": {"epsilon_spent": 8.0}}')
    cfg = replace(TINY, dp_epsilon=5.0, dp_site_budget=10.0, kimg=0.032)
    with pytest.raises(DPBudgetError, match=r"ε 5 but only 2 of the site's budget 10 remains"):
        train(tiny_site, cfg, run_name="round2", progress=False)
    assert not (tiny_site / "runs" / "round2").exists()
