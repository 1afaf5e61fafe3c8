"""benchmarks/pool_replay.py on a tiny finished-demo folder: every arm is scored on every
site's real test split, compared with the demo recipe on the same images, and the trace
study chooses epochs by the real *train* split (never by the test split)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np

from shared.cnn_train import ClassifierConfig
from shared.config import to_dict
from shared.synthetic import SyntheticSet
from tests.conftest import blob_images, load_benchmark


def _replay() -> ModuleType:
    return load_benchmark("pool_replay")


def _demo_folder(tmp_path: Path) -> Path:
    """What `synthlearn demo --out RUN` leaves that the replay reads: one site store with a
    test split, the pool and the CNN config."""
    from node.store import Accepted, StoreWriter

    run = tmp_path / "run"
    images, lesions = blob_images(64, 32, seed=0)
    with StoreWriter(run / "sites" / "site-a", size=32, test_fraction=0.25) as w:
        w.add_batch([Accepted(f"img-{i:03d}", images[i], lesions[i], f"src-{i}",
                              patient_id=f"P{i}",
                              split="test" if (i // 2) % 4 == 3 else "train")
                     for i in range(len(images))])
    syn, syn_lesions = blob_images(96, 32, seed=1)
    labels = np.array([0 if s == "No finding" else 1 for s in syn_lesions], np.int64)
    SyntheticSet(syn, labels, ["normal", "abnormal"], {"synthetic_only": True}).save(
        run / "coordinator" / "pool" / "pooled")
    cfg = run / "coordinator" / "cnn" / "cnn-config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps(to_dict(ClassifierConfig(width=4, batch=16, patience=0))))
    return run


def test_arms_are_scored_on_each_site_test_and_paired_with_the_demo_recipe(
        tmp_path: Path) -> None:
    run = _demo_folder(tmp_path)
    out = tmp_path / "out"
    assert _replay().main([str(run), "--out", str(out), "--arms", "intensity,ens2",
                           "--epochs", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    arms = doc["results"][0]["arms"]
    assert list(arms) == ["demo", "intensity", "ens2"]  # the demo recipe is always the base
    site = arms["intensity"]["sites"]["site-a"]
    assert site["n_test"] == 16 and 0.0 <= site["auc"] <= 1.0
    assert "delta" in site and "delta" not in arms["demo"]["sites"]["site-a"]
    assert len(arms["ens2"]["per_seed"]) == 2  # two CNNs, scored as one ensemble


def test_trace_chooses_epochs_by_the_real_train_split(tmp_path: Path) -> None:
    run = _demo_folder(tmp_path)
    out = tmp_path / "out"
    assert _replay().main([str(run), "--out", str(out), "--trace", "--cnn-seeds", "0,1",
                           "--epochs", "2"]) == 0
    res = json.loads((out / "results.json").read_text())["results"][0]
    assert set(res["real_train_epoch_chosen"].values()) <= {1, 2}
    assert set(res["ensemble_real_train_epoch"]) == {"site-a"}
    trace = np.load(out / "trace-run.npz")
    assert {"s0_e1_site-a_train", "s1_e2_site-a_test"} <= set(trace.files)


def test_the_select_arm_runs_the_products_candidate_path(tmp_path: Path) -> None:
    """select3x3: the coordinator's candidates, each site's choice on its train split."""
    run = _demo_folder(tmp_path)
    out = tmp_path / "out"
    assert _replay().main([str(run), "--out", str(out), "--arms", "select3x3",
                           "--epochs", "1"]) == 0
    arm = json.loads((out / "results.json").read_text())["results"][0]["arms"]["select3x3"]
    choice = arm["site_choices"]["site-a"]
    assert choice["picked"] and all(0 <= i < 9 for i in choice["picked"])
    assert 0.0 <= arm["sites"]["site-a"]["auc"] <= 1.0 and "delta" in arm["sites"]["site-a"]


def test_an_arm_s_versus_arm_runs_first_whatever_order_they_are_asked_in() -> None:
    """The paired comparison needs the other arm's scores: asked in either order, it runs
    first; an arm whose versus arm was not asked for runs alone."""
    mod = _replay()
    assert mod.versus_first(["select3x3-either", "demo", "select3x3"]) == [
        "select3x3", "select3x3-either", "demo"]
    assert mod.versus_first(["select3x3", "select3x3-adabn"]) == ["select3x3", "select3x3-adabn"]
    assert mod.versus_first(["select3x3-adabn"]) == ["select3x3-adabn"]
