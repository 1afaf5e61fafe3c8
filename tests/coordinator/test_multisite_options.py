"""benchmarks/multisite.py: the site-shift option (sites rendered as different scanners) and
the selected arm's BatchNorm twins."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_benchmark

multisite = load_benchmark("multisite")


def test_exposures_parse_by_site_and_refuse_what_is_not_one() -> None:
    names = ["a", "b", "c"]
    assert multisite.parse_exposures("", names) == {}
    assert multisite.parse_exposures("a=0.8, c=1.25", names) == {"a": 0.8, "c": 1.25}
    with pytest.raises(ValueError, match="'d' is not a site"):
        multisite.parse_exposures("d=1.2", names)
    with pytest.raises(ValueError, match="must be a number"):
        multisite.parse_exposures("a=bright", names)
    with pytest.raises(ValueError, match=r"\[0.25, 4\]"):
        multisite.parse_exposures("b=0", names)


def test_exposure_is_a_monotone_intensity_map_that_keeps_black_and_white() -> None:
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert multisite.expose(x, 1.0) is x
    dark, bright = multisite.expose(x, 0.8), multisite.expose(x, 1.25)
    for y in (dark, bright):
        assert y.dtype == np.uint8 and y.shape == x.shape
        assert y.flat[0] == 0 and y.flat[-1] == 255
        assert (np.diff(y.ravel().astype(int)) >= 0).all()
    assert dark.mean() < x.mean() < bright.mean()


@pytest.mark.parametrize(("option", "message"), [
    (["--site-exposure", "a=0.8"], "written with none, not {'a': 0.8}"),
    (["--small-train", "100"], "made with all small-site train images, not 100"),
])
def test_a_folder_made_with_other_stores_is_refused(tmp_path, capsys, option, message) -> None:
    """Stores and GANs already written keep what they were made from: re-running into them
    with another exposure would expose the tests but not the GANs' training images, and a
    site-c GAN that saw all its images would leak the ones --small-train leaves out."""
    (tmp_path / "sites").mkdir()
    with pytest.raises(SystemExit) as e:
        multisite.main(["--out", str(tmp_path), *option,
                        "--data", str(tmp_path / "absent.npz")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_small_train_shrinks_only_the_small_site_s_train_split() -> None:
    """The scenario of a site whose own data is far from enough: the other sites and every
    test split stay those of the default partition, so runs pair with the default's."""
    labels = np.repeat([0, 1], [1213, 3469])
    full, small = multisite.partition(labels, 3), multisite.partition(labels, 3, 100)
    for site in ("a", "b"):
        assert np.array_equal(full[site]["train"], small[site]["train"])
    for site in ("a", "b", "c"):
        assert np.array_equal(full[site]["test"], small[site]["test"])
    kept = small["c"]["train"]
    assert len(kept) == 100 and np.isin(kept, full["c"]["train"]).all()
    assert np.bincount(labels[kept]).tolist() == [57, 43]  # the site's class mix, 208:160
    with pytest.raises(SystemExit, match="368 train images"):
        multisite.partition(labels, 3, 369)


def test_the_selected_arm_s_twins_share_its_candidates_and_keep_each_candidate_s_scores(
) -> None:
    """``--adapt-bn``: '-adabn' and '-either' are chosen from the very candidates the arm
    chose from (each candidate's sent and adapted test scores come back, so a twin's result
    can be traced), and every mode's picks are recorded."""
    from types import SimpleNamespace

    from node.selection import MAX_SELECTION_IMAGES
    from shared.cnn_train import ClassifierConfig
    from tests.conftest import blob_images

    x, lesions = blob_images(96, 28, seed=1)
    y = np.array([int(s == "Lesion") for s in lesions])
    cfg = ClassifierConfig(epochs=1, width=4, batch=16, patience=0, norm="batch")
    tests = {"site-a": (x[64:], y[64:]), "common-val": (x[64:], y[64:])}
    trains = {"a": (x[32:64], y[32:64])}
    # The common val's chooser is larger than the choice samples: the saved adapted scores
    # must come from the copies the twins used (adapted on that sample), not on every image.
    big = MAX_SELECTION_IMAGES + 200
    rng = np.random.default_rng(2)
    cx = np.clip(np.resize(x[:64], (big, 28, 28)).astype(int) + rng.integers(
        -40, 40, (big, 28, 28)), 0, 255).astype(np.uint8)
    cy = np.resize(y[:64], big)
    args = SimpleNamespace(n_boot=50, seed=0)
    arm, picked, twins, per_cand = multisite.selected_arm(
        x[:32], y[:32], cfg, 2, tests, trains, cx, cy, args, adapt_bn=True)
    assert set(twins) == {"-adabn", "-either"}
    k = picked["site-a"]["sent"]["candidates"]
    assert k == 2 and all(picked["site-a"][m]["candidates"] == k for m in ("site", "either"))
    assert len(picked["site-a"]["either"]["adapted"]) == len(picked["site-a"]["either"]["picked"])
    for t in tests:
        for how in ("sent", "site"):
            assert all(per_cand[f"cand/{t}/{how}/{i}"].shape == (32,) for i in range(k))
    # The arm's ensemble is the mean of its picks' probabilities, as sent.
    sent = picked["site-a"]["sent"]["picked"]
    ens = np.mean([per_cand[f"cand/site-a/sent/{i}"] for i in sent], axis=0)
    np.testing.assert_allclose(arm["probs"]["site-a"], ens, atol=1e-5)
    for t in tests:
        site_picks = picked[t]["site"]["picked"]
        ens_site = np.mean([per_cand[f"cand/{t}/site/{i}"] for i in site_picks], axis=0)
        np.testing.assert_allclose(twins["-adabn"]["probs"][t], ens_site, atol=1e-5)
    # Without the switch there are no twins and no per-candidate scores.
    _, picked0, twins0, per0 = multisite.selected_arm(
        x[:32], y[:32], cfg, 2, tests, trains, x[:64], y[:64], args)
    assert twins0 == {} and per0 == {} and set(picked0["site-a"]) == {"sent"}


def test_a_small_site_too_small_for_a_gan_stops_before_any_cnn(tmp_path, capsys) -> None:
    """The node refuses a GAN under 50 images per class; the benchmark says so at once
    instead of after the local CNNs (a run of --small-train 100 lost ten minutes that way)."""
    labels = np.repeat([0, 1], [1213, 3469])
    data = tmp_path / "fake.npz"
    np.savez(data, train_images=np.zeros((labels.size, 28, 28), np.uint8),
             train_labels=labels, val_images=np.zeros((4, 28, 28), np.uint8),
             val_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(SystemExit) as e:
        multisite.main(["--out", str(tmp_path / "out"), "--small-train", "100",
                        "--data", str(data)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--small-train 100" in err and "'abnormal': 43 (minimum 50 per class" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_small_site_s_local_cnn_trains_long_enough_to_be_a_fair_opponent() -> None:
    """On 120 images the shared recipe stopped the local CNN after 20-40 steps, and joining
    looked 0.10-0.22 AUC better than it was; --small-train runs now floor its steps."""
    assert multisite.resolve_local_min_steps(None, 120) == multisite.SMALL_SITE_LOCAL_MIN_STEPS
    assert multisite.resolve_local_min_steps(None, None) == 0  # comparable with stored runs
    assert multisite.resolve_local_min_steps(50, 120) == 50
    with pytest.raises(ValueError, match="≥ 0"):
        multisite.resolve_local_min_steps(-1, None)
