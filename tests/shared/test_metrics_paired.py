"""The site's paired test (pooled vs local real AUC on the same images) against references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.metrics.auc import MetricError
from shared.metrics.paired import delong_paired, paired_bootstrap_macro


def _delong_reference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) written out with the O(m·n) kernel ψ(x, y) = 1, ½, 0."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())

    def components(s: np.ndarray) -> tuple[float, list[float], list[float]]:
        xs, ys = s[pos], s[neg]
        psi = [[1.0 if x > v else 0.5 if x == v else 0.0 for v in ys] for x in xs]
        auc = sum(map(sum, psi)) / (m * n)
        v10 = [sum(row) / n for row in psi]
        v01 = [sum(psi[i][j] for i in range(m)) / m for j in range(n)]
        return auc, v10, v01

    auc_a, v10a, v01a = components(a)
    auc_b, v10b, v01b = components(b)

    def cov(u: list[float], v: list[float]) -> float:
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((p - mu) * (q - mv) for p, q in zip(u, v, strict=True)) / (len(u) - 1)

    var = (cov(v10a, v10a) + cov(v10b, v10b) - 2 * cov(v10a, v10b)) / m + \
          (cov(v01a, v01a) + cov(v01b, v01b) - 2 * cov(v01a, v01b)) / n
    z = (auc_b - auc_a) / math.sqrt(var)
    return auc_a, auc_b, 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_quadratic_reference_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    a = np.round(y * 0.6 + rng.normal(0, 0.5, 60), 1)  # rounded: ties within and across classes
    b = np.round(y * 1.2 + rng.normal(0, 0.5, 60), 1)
    ref_a, ref_b, ref_p = _delong_reference(y, a, b)
    res = delong_paired(y, a, b)
    assert res.auc_a == pytest.approx(ref_a, abs=1e-12)
    assert res.auc_b == pytest.approx(ref_b, abs=1e-12)
    assert res.p_value == pytest.approx(ref_p, rel=1e-9)
    assert res.ci_low < res.delta < res.ci_high
    assert (res.n_pos, res.n_neg) == (int(y.sum()), int((y == 0).sum()))


def test_delong_sees_a_real_difference_and_no_difference() -> None:
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 100)
    weak = y * 0.3 + rng.normal(0, 1, 200)
    strong = y * 2.0 + rng.normal(0, 1, 200)
    assert delong_paired(y, weak, strong).p_value < 0.001
    same = delong_paired(y, strong, strong)
    assert same.delta == 0 and same.p_value == 1.0


def test_delong_refuses_what_it_cannot_test() -> None:
    with pytest.raises(MetricError, match="2 positives"):
        delong_paired([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(MetricError, match="same length"):
        delong_paired([0, 1, 0, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(MetricError, match="finite"):
        delong_paired([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])


def test_paired_bootstrap_macro_agrees_in_direction_and_size() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 60)
    onehot = np.eye(3)[y]
    weak = onehot * 0.3 + rng.random((180, 3))
    strong = onehot * 1.5 + rng.random((180, 3))
    res = paired_bootstrap_macro(y, weak / weak.sum(1, keepdims=True),
                                 strong / strong.sum(1, keepdims=True), n_boot=300)
    assert res.delta > 0.1 and res.p_value < 0.01 and res.ci_low > 0
    tie = paired_bootstrap_macro(y, strong, strong, n_boot=100)
    assert tie.delta == 0 and tie.p_value == 1.0


def test_rank_auc_is_sklearns_auc() -> None:
    from sklearn.metrics import roc_auc_score

    from shared.metrics.paired import _rank_auc

    rng = np.random.default_rng(9)
    hit = rng.random(50) < 0.3
    s = np.round(rng.random(50), 1)  # ties
    assert _rank_auc(hit, s) == pytest.approx(roc_auc_score(hit, s), abs=1e-12)


def test_delong_contrast_of_a_mean_over_runs_agrees_with_the_pairwise_tests() -> None:
    """The mean of two runs' gains over a baseline, ½(B1 + B2) − A: its variance follows from
    the three pairwise DeLong variances (½V(B1−A) + ½V(B2−A) − ¼V(B1−B2)), and [−1, 1] is
    the paired test itself."""
    from shared.metrics.paired import delong_contrast

    rng = np.random.default_rng(7)
    y = np.array([0] * 40 + [1] * 30)
    a = y * 0.8 + rng.normal(0, 1, y.size)
    b1 = y * 1.2 + rng.normal(0, 1, y.size)
    b2 = y * 1.0 + rng.normal(0, 1, y.size) + 0.5 * a
    pair = delong_paired(y, a, b1)
    aucs, d, se = delong_contrast(y, [a, b1], [-1, 1])
    assert math.isclose(d, pair.delta) and math.isclose(se, pair.se)
    assert np.allclose(aucs, [pair.auc_a, pair.auc_b])
    v1, v2 = delong_paired(y, a, b1).se ** 2, delong_paired(y, a, b2).se ** 2
    v12 = delong_paired(y, b2, b1).se ** 2
    _, d_mean, se_mean = delong_contrast(y, [a, b1, b2], [-1, 0.5, 0.5])
    assert math.isclose(d_mean, (pair.delta + delong_paired(y, a, b2).delta) / 2)
    assert math.isclose(se_mean ** 2, 0.5 * v1 + 0.5 * v2 - 0.25 * v12, rel_tol=1e-9)
    # Against DeLong written out with the O(m·n) kernel, for three vectors with ties.
    bt = np.round(b2, 1)
    _, _, se_ref = _contrast_reference(y, [a, b1, bt], [-1, 0.5, 0.5])
    assert math.isclose(delong_contrast(y, [a, b1, bt], [-1, 0.5, 0.5])[2], se_ref,
                        rel_tol=1e-9)
    # The same run given twice is the same evidence, not twice as much.
    assert math.isclose(delong_contrast(y, [a, b1, b1], [-1, 0.5, 0.5])[2], pair.se)
    with pytest.raises(MetricError, match="2 weights for 3 score vectors"):
        delong_contrast(y, [a, b1, b2], [-1, 1])


def _contrast_reference(y: np.ndarray, scores: list[np.ndarray], c: list[float]
                        ) -> tuple[list[float], float, float]:
    """DeLong et al. (1988) § 3 for k vectors: Var(c·θ) = c S cᵀ, S from the O(m·n) kernel."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    aucs, v10s, v01s = [], [], []
    for s in scores:
        psi = np.array([[1.0 if x > v else 0.5 if x == v else 0.0 for v in s[neg]]
                        for x in s[pos]])
        aucs.append(float(psi.mean()))
        v10s.append(psi.mean(1))
        v01s.append(psi.mean(0))
    k = len(scores)
    var = 0.0
    for i in range(k):
        for j in range(k):
            s10 = float(((v10s[i] - v10s[i].mean()) * (v10s[j] - v10s[j].mean())).sum()) / (m - 1)
            s01 = float(((v01s[i] - v01s[i].mean()) * (v01s[j] - v01s[j].mean())).sum()) / (n - 1)
            var += c[i] * c[j] * (s10 / m + s01 / n)
    return aucs, float(np.dot(c, aucs)), math.sqrt(var)
