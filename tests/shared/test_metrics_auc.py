"""AUC + bootstrap CI agree with scikit-learn; sensitivity/specificity; macro AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shared.metrics.auc import MetricError, auc_with_ci, class_auc_with_ci, sens_spec


def _fixed(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = rng.normal(size=n) + 0.9 * y
    return y, s


def test_point_estimate_matches_sklearn_and_ci_covers_it() -> None:
    y, s = _fixed()
    r = auc_with_ci(y, s, n_boot=1000, seed=0)
    assert r.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r.ci_low < r.auc < r.ci_high
    assert r.ci_low >= 0.0 and r.ci_high <= 1.0
    assert r.n_boot == 1000 and r.n_pos == int(y.sum()) and r.n_neg == int((1 - y).sum())


def test_ci_equals_an_independent_sklearn_bootstrap() -> None:
    y, s = _fixed(80, 5)
    r = auc_with_ci(y, s, n_boot=1000, seed=7)
    rng = np.random.default_rng(7)
    boots = []
    for _ in range(1000):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) < 2:
            continue
        boots.append(roc_auc_score(y[idx], s[idx]))
    assert r.ci_low == pytest.approx(np.quantile(boots, 0.025))
    assert r.ci_high == pytest.approx(np.quantile(boots, 0.975))


def test_ci_narrows_with_more_data_and_accepts_two_column_scores() -> None:
    y, s = _fixed(100, 1)
    Y, S = _fixed(2000, 1)
    small, big = auc_with_ci(y, s, n_boot=300), auc_with_ci(Y, S, n_boot=300)
    assert big.ci_high - big.ci_low < small.ci_high - small.ci_low
    two = np.stack([1 - s, s], 1)
    assert auc_with_ci(y, two, n_boot=10).auc == pytest.approx(roc_auc_score(y, s))


def test_single_class_is_a_clear_error() -> None:
    with pytest.raises(MetricError, match="both classes"):
        auc_with_ci(np.ones(5), np.arange(5.0))


def test_sens_spec_at_threshold() -> None:
    out = sens_spec([0, 0, 0, 1, 1], [0.1, 0.2, 0.9, 0.8, 0.3], 0.5)
    assert out["sensitivity"] == 0.5 and out["specificity"] == pytest.approx(2 / 3)


def test_macro_auc_matches_sklearn_ovr() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    r = class_auc_with_ci(y, p, n_boot=200)
    assert r.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert r.ci_low <= r.auc <= r.ci_high


def test_bootstrap_handles_ties_like_sklearn() -> None:
    y, s = _fixed(60, 9)
    s = np.round(s)  # heavy ties
    r = auc_with_ci(y, s, n_boot=500, seed=2)
    rng = np.random.default_rng(2)
    boots = []
    for _ in range(500):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) == 2:
            boots.append(roc_auc_score(y[idx], s[idx]))
    assert r.auc == pytest.approx(roc_auc_score(y, s))
    assert (r.ci_low, r.ci_high) == pytest.approx(
        (np.quantile(boots, 0.025), np.quantile(boots, 0.975))
    )
