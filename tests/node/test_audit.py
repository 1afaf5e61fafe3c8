"""Memorization audit: planted copies are caught and fail the gate; honest samples pass."""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from node.audit import AuditConfig, AuditError, audit_arrays, run_audit

SIZE = 32


def phantoms(n: int, seed: int, size: int = SIZE, exposure: float = 1.0) -> np.ndarray:
    """Phantom radiographs from engineer A's generator: every call is a new set of 'patients';
    ``exposure`` < 1 renders them darker (the curve the site's scanner applies)."""
    from node.phantoms import LESION_CLASSES, render

    rng = np.random.default_rng([seed, 7])
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        lesion = LESION_CLASSES[0] if i % 2 == 0 else LESION_CLASSES[1 + (i // 2) % 4]
        img = render(rng, lesion, size, exposure * float(np.exp(rng.normal(0, 0.1))))
        out[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


@cache
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return phantoms(160, 1), phantoms(80, 2), phantoms(200, 3)  # train, held-out, honest


@cache
def encoder() -> Any:
    from shared.metrics.encoders import get_encoder

    return get_encoder("domain")


CFG = AuditConfig(n_boot=200)


def test_planted_copies_are_flagged_and_fail_the_gate() -> None:
    train, held, honest = data()
    rng = np.random.default_rng(0)
    syn = honest.copy()
    planted = rng.choice(len(syn), 20, replace=False)
    sources = rng.choice(len(train), 20, replace=False)
    syn[planted[:10]] = train[sources[:10]]  # 5 % exact copies
    noisy = train[sources[10:]].astype(np.float64) + rng.normal(0, 4.0, (10, SIZE, SIZE))
    syn[planted[10:]] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)  # 5 % lightly noised
    result = audit_arrays(syn, train, held, CFG, encoder=encoder())
    pixel = result.views[0]
    flagged = pixel.is_copy[planted]
    assert flagged.mean() >= 0.95
    # The flagged pairs point at the right training images.
    assert (pixel.syn_nn[planted][flagged] == sources[flagged]).mean() >= 0.95
    s = result.summary
    assert s["exact_copies"] >= 10
    assert not s["gates"]["copy_rate"]["passed"] and not s["gates_passed"]
    assert s["train_with_copy"] >= 20 / len(train)


def test_honest_samples_pass_the_gates() -> None:
    train, held, honest = data()
    s = audit_arrays(honest, train, held, CFG, encoder=encoder()).summary
    assert s["gates_passed"], s["gates"]
    assert s["copy_rate"] <= 0.10 and s["exact_copies"] == 0
    for view in s["views"].values():
        assert abs(view["mia"]["auc"] - 0.5) < 0.15
        assert abs(view["mia_control"]["auc"] - 0.5) < 0.15
        # Honest samples are about as far from training data as new patients are.
        assert view["synthetic_to_train"]["p50"] == pytest.approx(
            view["heldout_to_train"]["p50"], rel=0.2)


def test_copy_p_value_holds_its_level_where_the_raw_rate_does_not() -> None:
    """A novel generator with 20 held-out images: τ's noise alone pushes the raw copy rate over
    10 % in one audit of eight; the beta-binomial p-value stays at its 5 % level."""
    from node.audit.memorization import copy_count_p_value, novel_copy_rate, tau_rank

    rng = np.random.default_rng(0)
    n_held, m, reps = 20, 400, 3000
    rank = tau_rank(n_held, 95.0)
    rates, ps = np.empty(reps), np.empty(reps)
    for r in range(reps):
        held, syn = rng.random(n_held), rng.random(m)  # exchangeable: as novel as new patients
        copies = int((syn > np.sort(held)[rank - 1]).sum())
        rates[r], ps[r] = copies / m, copy_count_p_value(copies, m, n_held, rank)
    assert rates.mean() == pytest.approx(novel_copy_rate(n_held, rank), abs=0.005)
    assert (rates > 0.10).mean() > 0.10
    assert (ps < 0.05).mean() <= 0.06


def test_an_honest_audit_fails_its_significance_gates_at_most_at_the_family_level() -> None:
    """Under the null of a novel generator (synthetic images exchangeable with held-out
    patients, members with non-members) the copy-rate, data-copying and MIA gates together fail
    in ≤ ``family_significance`` of audits (Holm), where each gate at that level on its own
    failed more than twice as often. 40 held-out images: τ is noisy, the copy line is crossed."""
    from node.audit.memorization import copy_count_p_value, holm, mia_p_value, tau_rank

    rng = np.random.default_rng(0)
    alpha, n_held, m, n_train, reps = AuditConfig().family_significance, 40, 200, 200, 2000
    rank = tau_rank(n_held, 95.0)
    held, syn = rng.random((reps, n_held)), rng.random((reps, m))
    copies = (syn > np.sort(held, axis=1)[:, rank - 1, None]).sum(1)
    beyond = (syn > held.max(1, keepdims=True)).sum(1)
    members, nonmembers = rng.random((reps, n_train)), rng.random((reps, n_held))
    auc = (members[:, :, None] > nonmembers[:, None, :]).mean(axis=(1, 2))
    p_copy = {int(c): copy_count_p_value(int(c), m, n_held, rank) for c in np.unique(copies)}
    p_dc = {int(b): copy_count_p_value(int(b), m, n_held, n_held) for b in np.unique(beyond)}
    family_fails = single_fails = 0
    for r in range(reps):
        p = {"copy_rate": p_copy[int(copies[r])], "data_copying": p_dc[int(beyond[r])],
             "mia_auc": mia_p_value(members[r], nonmembers[r])}
        over = {"copy_rate": copies[r] / m > 0.10, "data_copying": True, "mia_auc": auc[r] > 0.6}
        tested = holm(p, alpha)
        family_fails += any(over[k] and tested[k]["rejected"] for k in p)
        single_fails += any(over[k] and p[k] < alpha for k in p)
    assert family_fails / reps <= alpha + 0.003  # ≈ 2 binomial SE above the level
    assert single_fails / reps > 2 * alpha


def test_small_held_out_set_passes_honest_samples_and_still_fails_planted_copies() -> None:
    train, held, honest = data()
    cfg = AuditConfig(n_boot=100, encoder="none", min_heldout=20)
    # An unlucky draw of 20 held-out patients (nineteen of the farthest from training, then
    # one at the 85th percentile) puts τ low, so honest samples cross 10 % by τ's noise alone.
    from node.audit.matcher import TransformMatcher

    order = np.argsort(TransformMatcher(train).match(held).similarity)
    unlucky = held[np.r_[order[:19], order[68]]]
    ok = audit_arrays(honest, train, unlucky, cfg).summary
    gate = ok["gates"]["copy_rate"]
    assert gate["value"] > 0.10 and gate["p_value"] >= 0.05, gate
    assert gate["passed"] and "not significantly above" in gate["note"]
    rng = np.random.default_rng(1)
    syn = honest.copy()
    planted = rng.choice(len(syn), 60, replace=False)  # 30 % lightly noised copies
    noisy = train[rng.choice(len(train), 60)].astype(np.float64) + rng.normal(0, 6.0,
                                                                             (60, SIZE, SIZE))
    syn[planted] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    # The τ test catches these on its own (the near-copy rule is switched off; the data-copying
    # test may fail too, the copy-rate gate must fail at its own Holm level).
    cfg = dataclasses.replace(cfg, near_copy_ratio=1e-9, min_meehan_ct=None)
    bad = audit_arrays(syn, train, held[:20], cfg).summary
    assert bad["exact_copies"] == 0
    gate = bad["gates"]["copy_rate"]
    assert not gate["passed"] and gate["p_value"] <= gate["level"], gate


def test_split_bias_baseline_flags_a_held_out_set_that_differs_by_itself() -> None:
    # Held-out images from another "scanner" (noisier, darker): a blind attack that never sees
    # the synthetic set already separates them from training images, so the baseline rises
    # well above 0.5, while for exchangeable new patients it stays near 0.5.
    train, held, honest = data()
    same = audit_arrays(honest, train, held, CFG, encoder=encoder()).summary
    noise = np.random.default_rng(0).normal(0, 25, held.shape)
    shifted = np.clip(held * 0.7 + noise, 0, 255).astype(np.uint8)
    other = audit_arrays(honest, train, shifted, CFG, encoder=encoder()).summary
    for space in same["views"]:
        assert abs(same["views"][space]["split_bias_baseline"]["auc"] - 0.5) < 0.15
        assert other["views"][space]["split_bias_baseline"]["auc"] > 0.75


def test_too_few_heldout_images_is_refused() -> None:
    train, held, honest = data()
    with pytest.raises(AuditError, match="held-out"):
        audit_arrays(honest, train, held[:5], AuditConfig(encoder="none"))


def test_run_audit_writes_local_report_and_numbers_only_summary(tmp_path: Path) -> None:
    from node.store import Accepted, StoreWriter
    from shared.synthetic import SyntheticSet

    train, held, honest = data()
    site = tmp_path / "site"
    rows: list[tuple[np.ndarray, Literal["train", "test"]]] = (
        [(t, "train") for t in train[:60]] + [(h, "test") for h in held[:30]])
    with StoreWriter(site, size=SIZE) as w:
        w.add_batch([Accepted(f"real-{i:03d}", img, "No finding", f"src-{i}", split=split)
                     for i, (img, split) in enumerate(rows)])
    SyntheticSet(honest[:50], np.arange(50) % 2, ["normal", "abnormal"],
                 {"run_name": "r1"}).save(site / "synthetic" / "default")
    runs = site / "runs" / "r1"
    runs.mkdir(parents=True)
    (runs / "metrics.json").write_text(json.dumps({"dp": {"epsilon_spent": 4.2, "delta": 1e-3}}))
    summary = run_audit(site, cfg=AuditConfig(encoder="none", n_boot=100, max_epsilon=5.0),
                        progress=False)
    html = (site / "audit" / "report.html").read_text()
    assert "must stay on site" in html.splitlines()[0]
    assert html.count("data:image/png;base64,") >= 2 * 24 + 1  # pairs + histogram
    on_disk = json.loads((site / "audit" / "summary.json").read_text())
    assert on_disk == summary and summary["dp"]["epsilon_spent"] == 4.2
    assert summary["gates"]["epsilon"]["passed"]

    def lists(obj: Any) -> list[list[Any]]:
        if isinstance(obj, dict):
            return [x for v in obj.values() for x in lists(v)]
        return [obj] if isinstance(obj, list) else []

    # Numbers only: no per-image vectors (lists are CIs and the config's zoom steps), no ids.
    assert all(len(x) <= len(AuditConfig().zooms) for x in lists(summary))
    assert len(train[:60]) > len(AuditConfig().zooms)
    assert "real-0" not in json.dumps(summary)
