"""Generation: same seed → same images; class balance; the class condition is learned."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from node.errors import CheckpointError, TrainingError
from node.generate import generate
from node.training import GanConfig, train

TINY = GanConfig(resolution=32, batch=16, kimg=0.032, checkpoint_kimg=1.0, channel_base=128,
                 channel_min=4, z_dim=8, w_dim=16, min_class_images=8, device="cpu",
                 grid_per_class=2, speed="float32")


def test_same_seed_same_images_and_balance(tiny_site: Path) -> None:
    train(tiny_site, TINY, progress=False)
    a = generate(tiny_site, 7, seed=3, out_name="a")
    b = generate(tiny_site, 7, seed=3, out_name="b", truncation=1.0)
    c = generate(tiny_site, 7, seed=4, out_name="c")
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (7, 32, 32)
    assert sorted(a.counts().values()) == [3, 4]
    assert (tiny_site / "synthetic" / "a" / "images.npy").exists()
    t = generate(tiny_site, 4, seed=3, truncation=0.0, out_name="t")
    assert t.images[0].std() >= 0  # truncation runs; ψ=0 gives the class-mean image
    assert np.array_equal(t.images[0], t.images[1])


def test_missing_run_is_a_clear_error(tiny_site: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint missing"):
        generate(tiny_site, 4, run_name="nope")
    with pytest.raises(TrainingError, match="per-class"):
        train(tiny_site, TINY, progress=False)
        generate(tiny_site, 4, per_class="weird")


def test_filter_reports_drawn_and_kept(tiny_site: Path) -> None:
    # A deliberately weak S (1 epoch, no step floor): this tests the bookkeeping, and a
    # sharp S would reject every image of a barely trained G at any threshold.
    train(tiny_site, replace(TINY, model="spinegan", spine_epochs=1, spine_width=4,
                             spine_min_steps=0),
          run_name="s", progress=False)
    s = generate(tiny_site, 4, run_name="s", filter_threshold=0.01, out_name="f")
    f = s.info["filter"]
    assert sum(f["kept"].values()) == 4
    assert all(f["drawn"][k] >= f["kept"][k] for k in f["kept"])


def test_class_condition_is_learned(tiny_site: Path) -> None:
    """A classifier trained on real images labels generated images better than chance."""
    from sklearn.linear_model import LogisticRegression

    from node.store import SiteStore

    cfg = replace(TINY, kimg=3.0)
    train(tiny_site, cfg, progress=False)
    x, y = SiteStore.open(tiny_site).load("train")
    clf = LogisticRegression(max_iter=2000).fit(x.reshape(len(x), -1) / 255.0, y)
    s = generate(tiny_site, 40, seed=0)
    pred = clf.predict(s.images.reshape(len(s), -1) / 255.0)
    acc = [float((pred[s.labels == k] == k).mean()) for k in (0, 1)]
    assert min(acc) > 0.5, acc


def test_lesion_mode_uses_the_vocabulary_and_draws_no_class_the_site_lacks(
        tmp_path: Path) -> None:
    from node.phantoms import LESION_CLASSES as DRAWN
    from node.phantoms import phantom_store
    from shared.vocabulary import LESION_CLASSES

    site = phantom_store(tmp_path / "site", n=100, size=32, seed=1, classes="lesion")
    train(site, replace(TINY, classes="lesion"), progress=False)
    s = generate(site, 10, seed=0)
    assert s.class_names == list(LESION_CLASSES)  # all eight ids, whatever the site has
    counts = s.counts()
    assert {n: counts[n] for n in DRAWN} == dict.fromkeys(DRAWN, 2)
    assert all(counts[n] == 0 for n in LESION_CLASSES if n not in DRAWN)
    real = generate(site, 10, seed=0, per_class="real", out_name="r")
    assert all(real.counts()[n] == 0 for n in LESION_CLASSES if n not in DRAWN)
