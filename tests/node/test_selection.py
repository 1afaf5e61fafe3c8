"""Site-side choice among the coordinator's candidate CNNs (node/selection.py).

The choice must use the site's real *train* split only, pick what scores best there, and
fall back to the coordinator's default when that split cannot rank candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from node.baseline import run_baseline
from node.evaluate import evaluate_weights
from node.selection import MeanEnsemble, choose, select_on_train
from node.store import SiteStore
from shared.classifier import ResNetClassifier
from shared.cnn_train import ClassifierConfig, predict_scores
from shared.weights_io import load_classifier, save_candidates, save_weights

CFG = ClassifierConfig(epochs=3, width=4, batch=16, patience=0, norm="group")


def _probs(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], 1)


def test_choose_picks_the_candidate_that_ranks_the_train_split() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20)
    noise = _probs(rng.random(40))
    good = _probs(np.clip(y * 0.6 + rng.random(40) * 0.5, 0, 1))
    inverted = _probs(1 - good[:, 1])
    picks, auc = choose([noise, inverted, good], y)
    assert picks[0] == 2
    assert auc >= roc_auc_score(y, good[:, 1]) - 1e-12
    assert 1 not in picks  # the inverted network never helps


def test_choose_stops_when_nothing_improves_and_caps_its_picks() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = _probs(np.array([0.1, 0.2, 0.8, 0.9]))
    assert choose([perfect, perfect], y) == ([0], 1.0)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    many = [_probs(np.clip(y * 0.1 + rng.random(200), 0, 1)) for _ in range(20)]
    picks, _ = choose(many, y, max_picks=3)
    assert 1 <= len(picks) <= 3


def test_mean_ensemble_reports_the_mean_probability() -> None:
    torch.manual_seed(0)
    a, b = ResNetClassifier(2, width=4).eval(), ResNetClassifier(2, width=4).eval()
    x = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    ens = predict_scores(MeanEnsemble([a, b]), x)
    assert ens == pytest.approx((predict_scores(a, x) + predict_scores(b, x)) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        MeanEnsemble([])


def test_a_train_split_without_both_classes_uses_the_coordinator_default() -> None:
    nets = [ResNetClassifier(2, width=4).eval() for _ in range(3)]
    x = np.zeros((8, 32, 32), np.uint8)
    model, rec = select_on_train(nets, [2], x, np.zeros(8, np.int64))
    assert rec["picked"] == [2] and "default" in rec["rule"]
    assert list(model.members) == [nets[2]]


def test_the_site_evaluates_the_candidate_its_train_split_prefers(tiny_site: Path,
                                                                  tmp_path: Path) -> None:
    """A trained network and two untrained ones: the site must keep the trained one, and the
    reported test AUC must be exactly that network's (the test split played no part)."""
    run_baseline(tiny_site, CFG, progress=False, n_boot=200)
    good = load_classifier(tiny_site / "metrics" / "baseline-cnn.npz")
    torch.manual_seed(3)
    blank = [ResNetClassifier(2, width=4, norm="group").eval() for _ in range(2)]
    path = tmp_path / "candidates.npz"
    save_candidates([blank[0], good, blank[1]], path, {"class_names": ["normal", "abnormal"]},
                    [{"member": m, "epoch": 1} for m in range(3)], default=[0])
    ev = evaluate_weights(tiny_site, path, n_boot=200, write=False, compare_local=False)
    sel = ev["selection"]
    assert sel["candidates"] == 3 and sel["split"] == "train"
    assert sel["picked"][0] == 1  # the trained network first
    nets = [blank[0], good, blank[1]]
    x_tr, y_tr = SiteStore.open(tiny_site).load("train")
    assert sel["n_images"] == len(y_tr)
    assert sel["picked"] == choose([predict_scores(n, x_tr) for n in nets], y_tr)[0]
    assert "train_auc" not in sel  # numbers about the train split stay at the site
    x, y = SiteStore.open(tiny_site).load("test")
    on_test = np.mean([predict_scores(nets[i], x)[:, 1] for i in sel["picked"]], 0)
    assert ev["auc"] == pytest.approx(roc_auc_score(y, on_test))


def test_a_site_policy_caps_the_candidates_it_accepts(tiny_site: Path, tmp_path: Path) -> None:
    from shared.weights_io import WeightsError

    nets = [ResNetClassifier(2, width=4).eval() for _ in range(4)]
    path = tmp_path / "four.npz"
    save_candidates(nets, path, {}, [{"epoch": i} for i in range(4)], default=[3])
    with pytest.raises(WeightsError, match="at most 3"):
        evaluate_weights(tiny_site, path, write=False, max_candidates=3)


def _overflow_probe() -> ResNetClassifier:
    """A network a hostile coordinator could send: finite weights whose activations overflow
    to inf (then NaN) on images with a bright patch only, and stay finite elsewhere."""
    probe = ResNetClassifier(2, width=4).eval()
    with torch.no_grad():
        probe.stem.weight.fill_(1e38)
    return probe


def test_a_candidate_undefined_on_some_images_is_no_opinion_there_not_a_crash() -> None:
    """The crash used to happen only when the probed image was in the train split: an
    answer ("that patient is here") the evaluation limits never counted."""
    rng = np.random.default_rng(0)
    dim = rng.integers(0, 60, (40, 32, 32), dtype=np.uint8)
    bright = dim.copy()
    bright[-1] = 250
    y = np.array([0, 1] * 20)
    probe, other = _overflow_probe(), ResNetClassifier(2, width=4).eval()
    assert np.isnan(predict_scores(probe, bright[-1:])).all()  # the probe does overflow
    for images in (dim, bright):
        _, rec = select_on_train([other, probe], [0], images, y)
        assert rec["picked"] and "default" not in rec["rule"]
        assert np.isfinite(predict_scores(MeanEnsemble([probe, other]), images)).all()


def test_candidates_for_other_classes_are_refused_before_the_train_split_is_scored(
        tmp_path: Path) -> None:
    """Two-output candidates at a site of several lesion classes: refused with the class
    counts (StoreError), as a single network is, not a ValueError from inside the AUC."""
    from node.errors import StoreError
    from node.phantoms import phantom_store

    site = tmp_path / "site"
    phantom_store(site, 160, 32, seed=0, classes="lesion")
    _, labels = SiteStore.open(site).load("train", "lesion")
    assert len(np.unique(labels)) > 2  # labels the 2-output candidates cannot score
    path = tmp_path / "two.npz"
    save_candidates([ResNetClassifier(2, width=4).eval() for _ in range(2)], path,
                    {"classes": "lesion"}, [{"epoch": 1}, {"epoch": 2}], default=[0])
    with pytest.raises(StoreError, match="predicts 2 classes"):
        evaluate_weights(site, path, n_boot=100, write=False, compare_local=False)


def test_a_lesion_site_without_every_class_still_chooses(tmp_path: Path) -> None:
    """Phantom lesion sites hold 5 of the 7 vocabulary classes; the choice used to fall back
    to the coordinator's default whenever any class of the list had no train image."""
    from node.phantoms import phantom_store

    site = tmp_path / "site"
    phantom_store(site, 160, 32, seed=0, classes="lesion")
    images, labels = SiteStore.open(site).load("train", "lesion")
    n = len(SiteStore.open(site).class_names("lesion"))
    assert 0 in np.bincount(labels, minlength=n)  # some class of the list is absent
    torch.manual_seed(0)
    nets = [ResNetClassifier(n, width=4).eval() for _ in range(3)]
    _, rec = select_on_train(nets, [0], images, labels)
    assert "default" not in rec["rule"] and rec["split"] == "train"
    one = labels == labels[0]  # a single class present cannot rank anything
    _, rec = select_on_train(nets, [2], images[one], labels[one])
    assert rec["picked"] == [2] and "default" in rec["rule"]


def test_the_rounds_a_coordinator_declares_are_numbers_echoed_for_the_picks_only(
        tiny_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-round file's candidates say their round. A hostile coordinator may declare any
    round: text is refused before any network is built; a number is only echoed back for
    the picked networks (the report counts 1s and 2s and drops anything else), and nothing
    about the choice or the test AUC depends on it."""
    from shared.report_verify import selection_view
    from shared.weights_io import WeightsError

    run_baseline(tiny_site, CFG, progress=False, n_boot=200)
    good = load_classifier(tiny_site / "metrics" / "baseline-cnn.npz")
    torch.manual_seed(3)
    blank = ResNetClassifier(2, width=4, norm="group").eval()
    meta = {"class_names": ["normal", "abnormal"]}
    honest, odd = tmp_path / "honest.npz", tmp_path / "odd.npz"
    save_candidates([blank, good], honest, meta, [{"epoch": 1, "round": 1},
                                                 {"epoch": 1, "round": 2}], default=[0])
    save_candidates([blank, good], odd, meta, [{"epoch": 1, "round": -7},
                                              {"epoch": 1, "round": 1e300}], default=[0])
    ev = evaluate_weights(tiny_site, honest, n_boot=200, write=False, compare_local=False)
    ev_odd = evaluate_weights(tiny_site, odd, n_boot=200, write=False, compare_local=False)
    sel, sel_odd = ev["selection"], ev_odd["selection"]
    assert sel["picked_rounds"] == [[1, 2][i] for i in sel["picked"]]
    assert sel_odd["picked"] == sel["picked"] and ev_odd["auc"] == ev["auc"]
    assert sel_odd["picked_rounds"] == [[-7, 1e300][i] for i in sel["picked"]]
    assert "from_round" in selection_view(sel)  # type: ignore[operator]
    assert "from_round" not in selection_view(sel_odd)  # type: ignore[operator]
    # a file whose sender skipped the writer's check: the site refuses it before scoring
    with monkeypatch.context() as m:
        m.setattr("shared.weights_io._check_candidate_meta", lambda *a: None)
        save_candidates([blank, good], tmp_path / "text.npz", meta,
                        [{"epoch": 1, "round": "<b>1</b>"}, {"epoch": 1, "round": 2}],
                        default=[0])
    with pytest.raises(WeightsError, match=r"text\.npz.*not numbers"):
        evaluate_weights(tiny_site, tmp_path / "text.npz", n_boot=200, compare_local=False)
    assert not list((tiny_site / "metrics").glob("evaluation-*.json"))  # nothing written


def test_adapt_bn_chooses_and_scores_with_the_site_s_statistics_and_leaves_the_sender_s() -> None:
    """A candidate whose BatchNorm statistics were set for other images (the synthetic ones
    it trained on) is chosen and scored with statistics of this site's train images; the
    coordinator's network is not modified."""
    from shared.cnn_train import adapt_batchnorm

    torch.manual_seed(0)
    net = ResNetClassifier(2, width=4).eval()
    with torch.no_grad():
        net.stem_bn.running_mean += 3.0  # far from what these images give
    before = net.stem_bn.running_mean.clone()
    rng = np.random.default_rng(2)
    x = rng.integers(0, 255, (40, 32, 32), dtype=np.uint8)
    y = np.array([0, 1] * 20)
    model, rec = select_on_train([net], [0], x, y, batchnorm="site")
    assert rec["batchnorm"] == "re-estimated on 40 train images"
    assert torch.equal(net.stem_bn.running_mean, before)
    (member,) = model.members
    assert member is not net
    np.testing.assert_allclose(predict_scores(model, x), predict_scores(adapt_batchnorm(net, x), x),
                               atol=1e-6)
    assert not np.allclose(predict_scores(model, x), predict_scores(net, x), atol=1e-3)
    # Under "sent", the sender's statistics score.
    plain, rec_plain = select_on_train([net], [0], x, y, batchnorm="sent")
    assert "batchnorm" not in rec_plain and plain.members[0] is net


def test_adapt_bn_keeps_the_sender_s_statistics_for_too_few_train_images() -> None:
    from node.selection import MIN_ADAPT_IMAGES

    net = ResNetClassifier(2, width=4).eval()
    n = MIN_ADAPT_IMAGES - 2
    x = np.random.default_rng(3).integers(0, 255, (n, 32, 32), dtype=np.uint8)
    y = np.array([0, 1] * (n // 2))
    model, rec = select_on_train([net], [0], x, y, batchnorm="site")
    assert rec["batchnorm"].startswith("the sender's") and model.members[0] is net


def test_adapting_at_the_site_uses_its_train_split_only_and_survives_a_hostile_candidate(
        tiny_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``choose_on_train_split(batchnorm="site")`` (the AdaBN arm the benchmarks measure): the
    candidates get BatchNorm statistics of the site's real TRAIN images, never the test
    split; a candidate that overflows is no crash. The site's own evaluation offers the
    adapted copies next to the sent ones by default (adapting on the train split only), and
    not at all under the policy's "sent"; a single network is scored as sent."""
    import shared.cnn_train as cnn_train
    from node.evaluate import choose_on_train_split

    seen: list[np.ndarray] = []
    real = cnn_train.adapt_batchnorm

    def spy(model: torch.nn.Module, images: np.ndarray, batch: int = 256) -> torch.nn.Module:
        seen.append(np.asarray(images).copy())
        return real(model, images, batch)

    monkeypatch.setattr(cnn_train, "adapt_batchnorm", spy)
    torch.manual_seed(0)
    nets = [ResNetClassifier(2, width=4).eval() for _ in range(2)]
    meta = {"default": [0], "candidates": [{}, {}]}
    _, sel = choose_on_train_split(nets, meta, tiny_site, "binary", None, batchnorm="site")
    x_tr, _ = SiteStore.open(tiny_site).load("train")
    x_te, _ = SiteStore.open(tiny_site).load("test")
    assert sel["batchnorm"] == f"re-estimated on {len(x_tr)} train images"
    assert len(seen) == 2 and all(np.array_equal(s, x_tr) for s in seen)
    assert not any(len(s) == len(x_te) and np.array_equal(s, x_te) for s in seen)

    seen.clear()
    path = tmp_path / "candidates.npz"
    save_candidates(nets, path, {"class_names": ["normal", "abnormal"]},
                    [{"epoch": 1}, {"epoch": 2}], default=[0])
    ev = evaluate_weights(tiny_site, path, n_boot=100, write=False, compare_local=False)
    assert len(seen) == 2 and all(np.array_equal(s, x_tr) for s in seen)
    assert ev["selection"]["batchnorm"] == f"re-estimated on {len(x_tr)} train images"
    assert len(ev["selection"]["adapted"]) == len(ev["selection"]["picked"])
    assert all(type(a) is bool for a in ev["selection"]["adapted"])
    seen.clear()
    ev_sent = evaluate_weights(tiny_site, path, n_boot=100, write=False, compare_local=False,
                               batchnorm="sent")
    assert not seen and "batchnorm" not in ev_sent["selection"]
    single = tmp_path / "single.npz"
    save_weights(nets[0], single, {"class_names": ["normal", "abnormal"]})
    ev_one = evaluate_weights(tiny_site, single, n_boot=100, write=False, compare_local=False)
    assert not seen and ev_one["selection"]["rule"] == "one network: no choice"

    model_h, sel_h = choose_on_train_split(
        [nets[0], _overflow_probe()], {"default": [1], "candidates": [{}, {}]}, tiny_site,
        "binary", None, batchnorm="site")
    assert sel_h["picked"] == [0]  # the probe is no opinion everywhere: never the better pick
    assert np.isfinite(predict_scores(model_h, x_tr)).all()
    assert np.isfinite(predict_scores(model_h, x_te)).all()
    # Every candidate overflowing: the signed text must not say so (it would be an answer
    # about the train split outside the picks); it names the attempt and the count only.
    _, sel_all = choose_on_train_split(
        [_overflow_probe(), _overflow_probe()], {"default": [0], "candidates": [{}, {}]},
        tiny_site, "binary", None, batchnorm="either")
    assert sel_all["batchnorm"] == f"re-estimated on {len(x_tr)} train images"


def test_either_chooses_among_the_candidates_as_sent_and_adapted_and_names_the_sender_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``batchnorm="either"``: the choice sees K sent + K adapted candidates; a pick of an
    adapted copy is recorded as the sender's index with ``adapted`` true, and the ensemble
    holds that adapted copy (not the sender's network)."""
    import node.selection as selection

    torch.manual_seed(0)
    nets = [ResNetClassifier(2, width=4).eval() for _ in range(3)]
    x = np.random.default_rng(4).integers(0, 255, (40, 32, 32), dtype=np.uint8)
    y = np.array([0, 1] * 20)
    seen: list[int] = []

    def fake_choose(scores: list[np.ndarray], labels: np.ndarray) -> tuple[list[int], float]:
        seen.append(len(scores))
        # with the adapted copies: candidate 1's copy, then candidate 0 as sent
        return ([4, 0, 4] if len(scores) == 6 else [0]), 0.9

    monkeypatch.setattr(selection, "choose", fake_choose)
    model, rec = select_on_train(nets, [0], x, y, batchnorm="either")
    assert seen == [6]
    assert rec["picked"] == [1, 0, 1] and rec["adapted"] == [True, False, True]
    assert rec["distinct"] == 2 and rec["batchnorm"] == "re-estimated on 40 train images"
    first, second, third = model.members
    assert first is third and first is not nets[1] and second is nets[0]
    assert not torch.equal(first.stem_bn.running_mean, nets[1].stem_bn.running_mean)
    # "sent" never sees an adapted copy, and says nothing of BatchNorm or adaptation.
    seen.clear()
    _, rec_sent = select_on_train(nets, [0], x, y, batchnorm="sent")
    assert seen == [3] and "adapted" not in rec_sent and "batchnorm" not in rec_sent


def test_either_does_not_offer_a_copy_that_kept_the_sender_s_statistics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Too few train images to adapt: "either" has only the sent candidates to choose from
    (a copy equal to its original would only double its weight in the choice)."""
    import node.selection as selection
    from node.selection import MIN_ADAPT_IMAGES

    nets = [ResNetClassifier(2, width=4).eval() for _ in range(2)]
    n = MIN_ADAPT_IMAGES - 2
    x = np.random.default_rng(5).integers(0, 255, (n, 32, 32), dtype=np.uint8)
    y = np.array([0, 1] * (n // 2))
    real_choose = selection.choose
    seen: list[int] = []

    def spy(scores: list[np.ndarray], labels: np.ndarray) -> tuple[list[int], float]:
        seen.append(len(scores))
        return real_choose(scores, labels)

    monkeypatch.setattr(selection, "choose", spy)
    model, rec = select_on_train(nets, [0], x, y, batchnorm="either")
    assert seen == [2] and not any(rec["adapted"])
    assert all(any(m is n for n in nets) for m in model.members)


def test_a_default_ensemble_is_adapted_member_by_member_and_an_unknown_mode_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A train split that cannot rank (one class): "site" adapts the default's members only,
    "either" keeps them as sent (nothing to choose between); a misspelt mode names the
    valid ones."""
    import shared.cnn_train as cnn_train

    calls: list[int] = []
    real = cnn_train.adapt_batchnorm

    def spy(model: torch.nn.Module, images: np.ndarray, batch: int = 256) -> torch.nn.Module:
        calls.append(1)
        return real(model, images, batch)

    monkeypatch.setattr(cnn_train, "adapt_batchnorm", spy)
    nets = [ResNetClassifier(2, width=4).eval() for _ in range(4)]
    x = np.random.default_rng(6).integers(0, 255, (40, 32, 32), dtype=np.uint8)
    y = np.zeros(40, np.int64)
    model, rec = select_on_train(nets, [2, 3], x, y, batchnorm="site")
    assert rec["split"] is None and rec["picked"] == [2, 3] and len(calls) == 2
    assert all(m is not nets[i] for m, i in zip(model.members, [2, 3], strict=True))
    calls.clear()
    model, rec = select_on_train(nets, [2, 3], x, y, batchnorm="either")
    assert not calls
    assert all(m is nets[i] for m, i in zip(model.members, [2, 3], strict=True))
    with pytest.raises(ValueError, match=r"batchnorm='adabn'.*sent, site, either"):
        select_on_train(nets, [0], x, np.array([0, 1] * 20), batchnorm="adabn")


def test_networks_without_batchnorm_are_not_copied_nor_said_to_be_adapted() -> None:
    """GroupNorm candidates have no statistics to re-estimate: "either" must not offer K
    identical copies, and the record must not claim an adaptation that did not happen."""
    nets = [ResNetClassifier(2, width=4, norm="group").eval() for _ in range(2)]
    x = np.random.default_rng(8).integers(0, 255, (40, 32, 32), dtype=np.uint8)
    y = np.array([0, 1] * 20)
    model, rec = select_on_train(nets, [0], x, y, batchnorm="either")
    assert rec["batchnorm"].startswith("the sender's: no candidate has BatchNorm")
    assert not any(rec["adapted"]) and all(any(m is n for n in nets) for m in model.members)
