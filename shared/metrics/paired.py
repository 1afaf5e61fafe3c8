"""DeLong's test for two correlated AUCs: is model B better than model A on the *same* images?

Why paired: a site scores its local real CNN and the pooled synthetic CNN on one and the same
real test split. Two independent CIs that overlap say little; the difference of the two AUCs
has a much smaller variance because both models see the same hard and easy cases. DeLong,
DeLong & Clarke-Pearson (1988, Biometrics 44:837) estimate that covariance from the placement
values (structural components) of each positive and negative case; the fast midrank form is
Sun & Xu (2014, IEEE SPL 21:1389), O(n log n) instead of O(n²).

Only numbers leave :func:`delong_paired` (AUCs, their difference, its SE, z, p and a 95 % CI),
so its result may be signed into a site's reply.

>>> import numpy as np
>>> y = np.array([0, 0, 0, 1, 1, 1])
>>> r = delong_paired(y, [0.1, 0.4, 0.35, 0.8, 0.3, 0.9], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
>>> round(r.auc_a, 3), round(r.auc_b, 3), round(r.delta, 3)
(0.778, 1.0, 0.222)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.metrics.auc import MetricError

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PairedAUC:
    """AUC of A and B on the same cases; ``delta`` = B − A with DeLong's SE, z, p, 95 % CI."""

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    test: str = "DeLong (paired, two-sided)"

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _midrank(x: Array) -> Array:
    """1-based ranks with ties given their average rank."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(x, method="average"), np.float64)


def _placements(pos: Array, neg: Array) -> tuple[float, Array, Array]:
    """AUC and DeLong's structural components V10 (per positive) and V01 (per negative)."""
    m, n = len(pos), len(neg)
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    v10 = (tz[:m] - tx) / n  # share of negatives below each positive (ties count ½)
    v01 = 1.0 - (tz[m:] - ty) / m  # share of positives above each negative
    return auc, v10, v01


def _rank_auc(hit: npt.NDArray[np.bool_], scores: Array) -> float:
    """AUC by the rank-sum (Mann-Whitney) formula; ties count ½. Fast enough to bootstrap."""
    m = int(hit.sum())
    n = len(hit) - m
    ranks = _midrank(scores)
    return float((ranks[hit].sum() - m * (m + 1) / 2.0) / (m * n))


def _checked(y_true: npt.ArrayLike, scores: list[npt.ArrayLike]
             ) -> tuple[npt.NDArray[np.int64], list[Array]]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    vs = [np.asarray(s, np.float64).ravel() for s in scores]
    if any(len(v) != len(y) for v in vs):
        raise MetricError("labels and every score vector need the same length, got "
                          + ", ".join(str(n) for n in [len(y), *map(len, vs)]))
    if not np.isin(y, (0, 1)).all():
        raise MetricError("DeLong's test needs binary labels 0/1")
    if not all(np.isfinite(v).all() for v in vs):
        raise MetricError("scores must be finite")
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        raise MetricError(f"DeLong's test needs ≥ 2 positives and ≥ 2 negatives, got {m} and {n}")
    return y, vs


def delong_contrast(y_true: npt.ArrayLike, scores: list[npt.ArrayLike],
                    weights: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], float, float]:
    """(every vector's AUC, Σ weights·AUC, DeLong's SE of that sum) for score vectors on the
    same binary labels.

    Why a general contrast: "the mean gain over R generator runs" is (1/R)·Σ AUC(pooled_r) −
    AUC(local), a weighted sum of AUCs that share their test images; DeLong's covariance of
    all of them gives its SE in one step (DeLong et al. 1988, § 3: any contrast L·θ has
    variance L S Lᵀ). The SE is over the test images, the networks held fixed.
    """
    y, vs = _checked(y_true, scores)
    c = np.asarray(weights, np.float64).ravel()
    if len(c) != len(vs):
        raise MetricError(f"{len(c)} weights for {len(vs)} score vectors")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    parts = [_placements(v[pos], v[neg]) for v in vs]
    aucs = np.array([a for a, _, _ in parts])
    if len(vs) == 1:  # np.cov of one row is a scalar
        s10 = np.atleast_2d(np.var(parts[0][1], ddof=1))
        s01 = np.atleast_2d(np.var(parts[0][2], ddof=1))
    else:  # k×k, ddof 1 as in DeLong et al.
        s10 = np.cov(np.vstack([v10 for _, v10, _ in parts]))
        s01 = np.cov(np.vstack([v01 for _, _, v01 in parts]))
    var = float(c @ (s10 / m + s01 / n) @ c)
    return aucs, float(c @ aucs), math.sqrt(max(var, 0.0))


def delong_paired(y_true: npt.ArrayLike, scores_a: npt.ArrayLike,
                  scores_b: npt.ArrayLike) -> PairedAUC:
    """DeLong's test of AUC(B) − AUC(A) for two score vectors on the same binary labels."""
    y, _ = _checked(y_true, [scores_a, scores_b])
    (auc_a, auc_b), delta, se = delong_contrast(y, [scores_a, scores_b], [-1.0, 1.0])
    z, p = z_and_p(delta, se)
    return PairedAUC(auc_a=float(auc_a), auc_b=float(auc_b), delta=delta, se=se, z=z,
                     p_value=p, ci_low=delta - 1.959964 * se, ci_high=delta + 1.959964 * se,
                     n_pos=int((y == 1).sum()), n_neg=int((y == 0).sum()))


def z_and_p(delta: float, se: float) -> tuple[float, float]:
    """(z, two-sided normal p) of a difference and its SE; an SE of 0 (identical rankings,
    or both perfect) is no evidence of a difference unless the difference is not 0."""
    if se == 0.0:
        return 0.0, 1.0 if delta == 0.0 else 0.0
    z = delta / se
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def paired_bootstrap_macro(y_true: npt.ArrayLike, probs_a: npt.ArrayLike,
                           probs_b: npt.ArrayLike, n_boot: int = 1000,
                           seed: int = 0) -> PairedAUC:
    """Macro one-vs-rest AUC of B − A with a paired bootstrap (same resampled cases for both).

    For multi-class outputs, where DeLong's test has no standard macro form. ``se`` is the
    bootstrap SD of the difference, the CI its percentile interval, and ``p`` the two-sided
    bootstrap p-value (twice the smaller share of resampled differences on either side of 0).
    """
    y = np.asarray(y_true).astype(np.int64).ravel()
    pa, pb = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    if pa.shape != pb.shape or pa.ndim != 2 or len(pa) != len(y):
        raise MetricError(f"need two (N, classes) probability matrices for {len(y)} labels, "
                          f"got {pa.shape} and {pb.shape}")

    def macro(idx: npt.NDArray[np.int64], p: Array) -> float | None:
        yy = y[idx]
        present = [c for c in np.unique(yy) if 0 <= c < p.shape[1]]
        if len(present) < 2 or any((yy == c).all() for c in present):
            return None
        return float(np.mean([_rank_auc(yy == c, p[idx, c]) for c in present]))

    everything = np.arange(len(y))
    auc_a, auc_b = macro(everything, pa), macro(everything, pb)
    if auc_a is None or auc_b is None:
        raise MetricError("a paired macro AUC needs at least two classes in the test set")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        va, vb = macro(idx, pa), macro(idx, pb)
        if va is not None and vb is not None:
            diffs.append(vb - va)
    d = np.asarray(diffs) if diffs else np.zeros(1)
    p = min(1.0, 2.0 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    se = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return PairedAUC(auc_a=auc_a, auc_b=auc_b, delta=auc_b - auc_a, se=se,
                     z=(auc_b - auc_a) / se if se > 0 else 0.0, p_value=p,
                     ci_low=float(np.quantile(d, 0.025)), ci_high=float(np.quantile(d, 0.975)),
                     n_pos=int((y != 0).sum()), n_neg=int((y == 0).sum()),
                     test=f"paired bootstrap of macro AUC ({len(diffs)} resamples)")
