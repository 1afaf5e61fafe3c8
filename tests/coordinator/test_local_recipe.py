"""benchmarks/local_recipe.py: the local CNN retrained from a run's own site store must be the
run's local CNN (same images, order and seed) before any other recipe is compared with it;
a store whose test split is not the scored one is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark


def _fake_run(folder: Path) -> tuple[Path, np.ndarray]:
    """A run folder as multisite.py leaves it, with one small site c and its local CNN."""
    from node.store import Accepted, StoreWriter
    from shared.cnn_train import ClassifierConfig, predict_scores, train_classifier

    rng = np.random.default_rng(0)
    n = 60
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)
    images[labels == 1, 10:18, 10:18] += 100  # a learnable finding
    split = np.where(np.arange(n) < 44, "train", "test")
    site = folder / "sites" / "site-c"
    with StoreWriter(site, size=28) as w:
        for part in ("train", "test"):
            w.add_batch([Accepted(f"img-{i:03d}", images[i], "Pneumonia" if labels[i] else
                                  "No finding", f"src/{i}", patient_id=f"p{i}", split=part)
                         for i in np.flatnonzero(split == part)])
    cfg = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, seed=3)
    train = split == "train"
    trained = train_classifier(images[train], labels[train], 2, cfg, progress=False)
    test_y = labels[~train]
    local = predict_scores(trained.model, images[~train])[:, 1]
    np.savez(folder / "scores.npz", **{"labels/site-c": test_y, "local-c/site-c": local,
                                       "pooled/site-c": np.where(test_y == 1, 0.9, 0.1)})
    (folder / "results.json").write_text(json.dumps({"cnn_config": dataclasses.asdict(cfg)}))
    return folder, test_y


def test_bench_recipe_reproduces_the_stored_local_cnn_and_others_are_compared(
    tmp_path: Path,
) -> None:
    mod = load_benchmark("local_recipe")
    run, _ = _fake_run(tmp_path / "run")
    row = mod.run_recipes(run, "c", ["bench", "steps200"])
    assert row["bench_reproduces_stored"] is True
    assert row["recipes"]["bench"]["vs_stored_local"]["delta"] == 0.0
    assert row["n_train"] == 44 and row["n_test"] == 16
    assert row["best_local"] in ("bench", "steps200")
    # each recipe against the ones before it, on the same test images
    versus = row["recipes"]["steps200"]["vs_recipes"]["bench"]
    assert versus["auc_a"] == row["recipes"]["bench"]["auc"]
    assert versus["auc_b"] == row["recipes"]["steps200"]["auc"]
    assert row["recipes"]["bench"]["vs_recipes"] == {}
    assert row["pooled_vs_best_local"]["pooled"]["auc_b"] == 1.0


def test_a_store_whose_test_split_was_not_the_scored_one_is_refused(tmp_path: Path) -> None:
    mod = load_benchmark("local_recipe")
    run, test_y = _fake_run(tmp_path / "run")
    with np.load(run / "scores.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels/site-c"] = 1 - test_y
    np.savez(run / "scores.npz", **arrays)
    with pytest.raises(SystemExit, match="not the one scored"):
        mod.run_recipes(run, "c", ["bench"])
    with pytest.raises(SystemExit):
        mod.main([str(run), "--recipes", "bench,longer"])
