"""`node baseline`: trains on the train split only, scores the test split, writes npz + JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import shared.cnn_train as cnn_train
from node.baseline import run_baseline
from node.store import SiteStore
from shared.cnn_train import ClassifierConfig
from shared.weights_io import load_classifier, load_weights

CFG = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, norm="group")


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(im.tobytes()).hexdigest() for im in images}


def test_baseline_never_trains_or_stops_on_test_images(
    tiny_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SiteStore.open(tiny_site)
    test_x, _ = store.load("test")
    train_x, _ = store.load("train")
    assert len(test_x) and not (_hashes(test_x) & _hashes(train_x))
    seen: list[set[str]] = []
    real_train = cnn_train.train_classifier

    def spy(images: np.ndarray, *args: object, **kwargs: object) -> object:
        seen.append(_hashes(images))
        return real_train(images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cnn_train, "train_classifier", spy)
    record = run_baseline(tiny_site, CFG, progress=False, n_boot=100)
    assert len(seen) == 1
    # everything the trainer saw (train + its validation part) is training data, none is test
    assert seen[0] == _hashes(train_x)
    assert not seen[0] & _hashes(test_x)
    assert record["n_train"] + record["n_val"] == len(train_x)
    assert record["n_test"] == len(test_x)


def test_baseline_writes_numbers_only_record_and_npz(tiny_site: Path) -> None:
    record = run_baseline(tiny_site, CFG, progress=False, n_boot=100)
    saved = json.loads((tiny_site / "metrics" / "baseline.json").read_text())
    assert saved["kind"] == "local_real_baseline"
    assert saved["ci_low"] <= saved["auc"] <= saved["ci_high"]
    assert saved == json.loads(json.dumps(record, sort_keys=True))
    text = json.dumps(saved)
    assert "img-" not in text and "src-" not in text  # no image ids or sources
    weights = tiny_site / "metrics" / "baseline-cnn.npz"
    _, meta = load_weights(weights)
    assert meta["classes"] == "binary" and meta["threshold"] == record["threshold"]
    assert load_classifier(weights).num_classes == 2
    assert (tiny_site / "metrics" / "baseline-config.json").exists()


def test_baseline_cli(tiny_site: Path) -> None:
    from node.cli import app

    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--epochs", "1",
                                   "--width", "4", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["kind"] == "local_real_baseline"


def test_the_cli_trains_the_site_s_own_recipe_from_its_site_toml(tiny_site: Path) -> None:
    """`node baseline` and a coordinator's request train the same yardstick: the site TOML's
    [classifier] table over the step floor, then what the admin types."""
    from node.baseline import FEW_STEPS
    from node.cli import app
    from shared.errors import ConfigError

    (tiny_site / "site.toml").write_text(
        "[policy]\nallow_train = true\n\n[classifier]\nwidth = 4\nepochs = 1\nbatch = 16\n"
        "norm = 'group'\n")
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--epochs", "2",
                                   "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output)
    assert (record["config"]["width"], record["config"]["epochs"]) == (4, 2)
    assert record["config"]["min_steps"] == FEW_STEPS and record["recipe"] == "site"
    assert record["optimizer_steps"] >= FEW_STEPS
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--min-steps",
                                   "0", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["optimizer_steps"] < FEW_STEPS  # one epoch
    # The table says whose recipe ran and how long: the floor can run far past --epochs
    # (31 images at batch 32: 200 epochs under "--epochs 30"), which it did not show.
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--epochs", "1",
                                   "--min-steps", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in res.output.splitlines() if line.count("│") == 3}
    assert rows["recipe"] == "site" and int(rows["optimizer_steps"]) >= 3
    assert int(rows["epochs_run"]) >= 1
    other = tiny_site.parent / "recipe.toml"
    other.write_text("[classifer]\nwidth = 4\n")
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--config",
                                   str(other), "--no-progress"])
    assert isinstance(res.exception, ConfigError), res.output  # it trained the defaults
    assert str(res.exception).startswith(f"{other}: no [classifier] table")
    (tiny_site / "site.toml").write_text('[policy]\nbaseline_recipe = "sites"\n')
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--no-progress"])
    assert isinstance(res.exception, ConfigError), res.output  # it trained, saying nothing
    assert "site.toml [policy]" in str(res.exception) and "baseline_recipe must be one of" in \
        str(res.exception)
    (tiny_site / "site.toml").write_text("[classifier]\nwidth = 0\n")
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--no-progress"])
    # `synthlearn` turns it into one line and exit 2 (shared.cli.main)
    assert isinstance(res.exception, ConfigError), res.output
    assert "site.toml [classifier]" in str(res.exception) and "width must be ≥ 1" in str(
        res.exception)


def test_baseline_with_synthetic_trains_on_both_and_keeps_the_real_baseline(
    tiny_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.errors import StoreError
    from shared.synthetic import SyntheticSet

    store = SiteStore.open(tiny_site)
    names = store.class_names("binary")
    rng = np.random.default_rng(0)
    syn = SyntheticSet(rng.integers(0, 256, (40, 32, 32), dtype=np.uint8),
                       np.arange(40) % 2, names)
    syn.save(tmp_path / "pool")
    seen: list[tuple[int, int]] = []
    real_train = cnn_train.train_classifier

    def spy(images: np.ndarray, *args: object, **kwargs: object) -> object:
        eligible = kwargs.get("val_eligible")
        assert eligible is not None  # early stopping only on real rows
        seen.append((len(images), int(np.sum(~np.asarray(eligible)))))
        return real_train(images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cnn_train, "train_classifier", spy)
    rec = run_baseline(tiny_site, CFG, progress=False, n_boot=20,
                       with_synthetic=tmp_path / "pool", synthetic_share=0.25)
    n_real = len(store.load("train")[1])
    assert seen == [(n_real + rec["n_synthetic"], rec["n_synthetic"])] and rec["n_synthetic"] > 0
    assert rec["kind"] == "local_real_plus_synthetic"
    assert (tiny_site / "metrics" / "baseline-with-synthetic.json").exists()
    assert not (tiny_site / "metrics" / "baseline.json").exists()

    SyntheticSet(syn.images, syn.labels, ["cat", "dog"]).save(tmp_path / "other")
    with pytest.raises(StoreError, match=r"other: classes \['cat', 'dog'\] differ"):
        run_baseline(tiny_site, CFG, progress=False, with_synthetic=tmp_path / "other")


def test_a_baseline_stopped_after_few_steps_is_flagged_and_a_step_floor_clears_it(
    tiny_site: Path, tmp_path: Path
) -> None:
    """A small site's yardstick stopped after a handful of steps understates its own data
    (0.10-0.22 AUC on 120 images): the admin is told, with the setting that fixes it."""
    from node.baseline import FEW_STEPS, few_steps_warning
    from node.cli import app

    short = ClassifierConfig(epochs=30, width=4, batch=16, patience=1, norm="group", lr=0.5)
    record = run_baseline(tiny_site, short, progress=False, n_boot=100)
    assert record["stopped"] == "early-stopping" and record["optimizer_steps"] < FEW_STEPS
    warning = few_steps_warning(record)
    assert warning is not None and f"min_steps = {FEW_STEPS}" in warning
    assert f"after {record['optimizer_steps']} optimizer steps" in warning
    config = tmp_path / "c.toml"
    recipe = "[classifier]\nepochs = 30\nwidth = 4\nbatch = 16\npatience = 1\nnorm = 'group'\n"
    config.write_text(recipe + "lr = 0.5\nmin_steps = 0\n")  # the floor turned off
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--config",
                                   str(config), "--no-progress"])
    assert res.exit_code == 0 and "warning: early stopping ended" in res.output, res.output
    config.write_text(recipe + f"lr = 0.5\nmin_steps = {FEW_STEPS}\n")
    res = CliRunner().invoke(app, ["baseline", "--site-dir", str(tiny_site), "--config",
                                   str(config), "--no-progress"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tiny_site / "metrics" / "baseline.json").read_text())
    assert saved["optimizer_steps"] >= FEW_STEPS and "warning:" not in res.output
    assert few_steps_warning({**saved, "stopped": "epochs"}) is None
