"""Memorization audit: does the synthetic set contain (near-)copies of training patients?

Two views of "nearest training image", because each misses things the other catches:

* **transform-robust pixel correlation** (``node.audit.matcher``; Akbar et al., "Beware of
  diffusion models for synthesizing medical images", 2023, for plain correlation): Pearson
  correlation of histogram-equalised, lightly blurred images, maximised over the training set
  *and* over flips, small crops rescaled and shifts of a few pixels. Catches verbatim copies
  and the edits of ``node.audit.edits``.
* **embedding distance**: Euclidean distance in a documented encoder's space
  (``shared.metrics.encoders``, default ``domain-rfconv-v1``), which pools over space and so
  tolerates small shifts.

In each view the copy threshold τ is calibrated on real data only (Dar et al., "Investigating
data memorization in 3D latent diffusion models for medical image synthesis", 2023): for every
held-out real image (the site's test split, never seen in training) take its similarity to the
nearest training image; τ is their 95th percentile (the conformal order statistic, so the rate
for a novel generator is exact). A synthetic image beyond τ is closer to a training image than
95 % of genuinely new patients are: a **copy**. Reported: copy rate; its p-value against a
generator as novel as new patients (beta-binomial: τ's own noise included); fraction of
training images that have a copy; the nearest-similarity distributions synthetic→train vs
held-out→train (quantiles only).

Membership inference, black box, GAN-Leaks style (Chen et al., 2020): score every real image by
its closeness to the nearest *synthetic* image; AUC of training members vs held-out
non-members. 0.5 = nothing to infer. Two controls say how to read that AUC:

* **member-only control** (two random halves of the training set, both members, scored the
  same way): ≈0.5 by construction when the halves are exchangeable, so it shows the AUC's
  noise floor at this sample size, not bias;
* **split-bias baseline** (a *blind* attack that never looks at the synthetic set; Das et al.,
  2024, "Blind baselines beat membership inference attacks for foundation models"): half A of
  the training images vs the held-out images, each scored by closeness to the nearest image of
  the *other* half B. Above 0.5 means training and held-out images differ by themselves
  (acquisition, time, several images per patient on one side of a patient-level split), so an
  MIA AUC at or below this baseline is not evidence of leakage from the generator; an MIA AUC
  well above it is.

Gates on top (``node.audit.config``): any near-exact copy fails on its own; the copy rate
against τ; the per-image data-copying test (images closer to training than every held-out
patient, beyond the novel rate) with Meehan et al.'s C_T; membership inference read against
the blind baseline. Two blind checks on raw pixels say whether the held-out split is shifted.

What this cannot catch: copies of a *part* of an image (a distinctive implant pasted into a new
anatomy), copies of images that are not in the audited subset when subsampling, leakage of
attributes rather than pixels. DP training bounds all of these; the audit only measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from node.audit.config import AuditConfig
from node.errors import AuditError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def _standardize(images: U8) -> torch.Tensor:
    """Rows of zero mean and unit L2 norm, so a dot product is the Pearson correlation."""
    x = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).float()
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


def nearest_correlation(query: U8, reference: U8, chunk: int = 1024
                        ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """For each query image: the highest Pearson correlation with any reference image, and
    which one.

    >>> a = np.array([[[0, 1], [2, 3]], [[3, 2], [1, 0]]], np.uint8)
    >>> c, i = nearest_correlation(a[:1], a)
    >>> round(float(c[0]), 6), int(i[0])
    (1.0, 0)
    """
    ref = _standardize(reference)
    best = np.empty(len(query)), np.empty(len(query), np.int64)
    for s in range(0, len(query), chunk):
        q = _standardize(query[s:s + chunk])
        sim = q @ ref.T
        v, idx = sim.max(dim=1)
        best[0][s:s + len(q)] = v.double().numpy()
        best[1][s:s + len(q)] = idx.numpy()
    return best


def nearest_l2(query: F32, reference: F32, chunk: int = 1024
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """For each query embedding: Euclidean distance to the nearest reference, and which one."""
    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float32))
    best = np.empty(len(query)), np.empty(len(query), np.int64)
    for s in range(0, len(query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query[s:s + chunk], np.float32))
        d = torch.cdist(q.double(), ref.double())
        v, idx = d.min(dim=1)
        best[0][s:s + len(q)] = v.numpy()
        best[1][s:s + len(q)] = idx.numpy()
    return best


def quantiles(x: npt.NDArray[np.float64]) -> dict[str, float]:
    """Aggregate numbers only (what may leave the site), never per-image values."""
    if len(x) == 0:
        return {}
    qs = np.quantile(x, QUANTILES)
    out = {f"p{int(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)}
    out["mean"] = float(np.mean(x))
    return out


@dataclass
class View:
    """One nearest-neighbour space. ``closeness`` is higher-is-closer in both spaces
    (correlation, or minus the distance), so one set of rules serves both."""

    space: str
    metric: str
    tau: float
    syn_closeness: npt.NDArray[np.float64]
    syn_nn: npt.NDArray[np.int64]
    held_closeness: npt.NDArray[np.float64]
    member_closeness: npt.NDArray[np.float64]
    nonmember_closeness: npt.NDArray[np.float64]
    is_copy: npt.NDArray[np.bool_]
    tau_rank: int
    """τ is the ``tau_rank``-th smallest held-out closeness (1-based)."""

    def value(self, closeness: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Back to the natural unit (correlation, or distance) for reports."""
        return closeness if self.metric == "correlation" else -closeness


@dataclass
class AuditResult:
    """The exportable ``summary`` plus local-only details for the HTML report."""

    summary: dict[str, Any]
    views: list[View]
    synthetic: U8
    synthetic_labels: npt.NDArray[np.int64]
    train: U8
    class_names: list[str] = field(default_factory=list)
    matches: Any = None
    """``node.audit.matcher.Matches`` of every audited synthetic image (local only)."""
    per_image_p: npt.NDArray[np.float64] | None = None
    """Per synthetic image: share of held-out patients at least as close to training."""
    near: npt.NDArray[np.bool_] | None = None
    """Per synthetic image: near-exact copy (fails the audit on its own)."""


def _auc(members: npt.NDArray[np.float64], nonmembers: npt.NDArray[np.float64],
         n_boot: int, seed: int) -> dict[str, float]:
    from shared.metrics.auc import auc_with_ci

    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    r = auc_with_ci(y, np.r_[members, nonmembers], n_boot=n_boot, seed=seed)
    return {"auc": float(r.auc), "ci_low": float(r.ci_low), "ci_high": float(r.ci_high)}


def tau_rank(n_heldout: int, copy_percentile: float) -> int:
    """The order statistic used as τ: the conformal quantile ⌈q·(n+1)⌉, capped at n.

    With it, a synthetic image exactly as novel as a new patient lands above τ with probability
    (n + 1 − k) / (n + 1) ≤ 1 − q, whatever the distribution of closeness (exchangeability
    only), which is what makes the null distribution of the copy count exact below.
    """
    return min(n_heldout, max(1, math.ceil(copy_percentile / 100.0 * (n_heldout + 1))))


def novel_copy_rate(n_heldout: int, rank: int) -> float:
    """Expected copy rate of a generator whose images are as novel as new patients."""
    return (n_heldout + 1 - rank) / (n_heldout + 1)


def copy_count_p_value(copies: int, n_synthetic: int, n_heldout: int, rank: int) -> float:
    """P(at least ``copies`` copies) if the synthetic images were as novel as new patients.

    τ is itself random: the chance ``p`` that a novel image exceeds the rank-k held-out value
    is Beta(n + 1 − k, k) distributed, and the m synthetic images share that one τ, so the
    count is beta-binomial, far wider than a binomial when the held-out set is small. At 20
    held-out images the raw rate of an honest generator exceeds a 10 % gate in one audit of
    eight.
    """
    from scipy.stats import betabinom

    if copies <= 0:
        return 1.0
    a, b = n_heldout + 1 - rank, rank
    return float(betabinom.sf(copies - 1, n_synthetic, a, b))


def mia_p_value(members: npt.NDArray[np.float64], nonmembers: npt.NDArray[np.float64]
                ) -> float:
    """One-sided p that training members sit closer to the synthetic set than non-members
    (Mann–Whitney U, whose U/(n₁n₂) is the MIA AUC): exact under the null of a generator
    that learned nothing about who was in its training set."""
    from scipy.stats import mannwhitneyu

    if len(members) == 0 or len(nonmembers) == 0:
        return 1.0
    return float(mannwhitneyu(members, nonmembers, alternative="greater").pvalue)


def holm(p_values: dict[str, float], alpha: float) -> dict[str, dict[str, Any]]:
    """Holm's step-down test of several p-values at family-wise level ``alpha``: the smallest
    at alpha/k, the next at alpha/(k − 1), …, stopping at the first it cannot reject. Valid
    under any dependence, so the chance that *any* true null is rejected is ≤ alpha.

    >>> r = holm({"a": 0.003, "b": 0.004, "c": 0.5}, 0.01)
    >>> r["a"]["rejected"], r["b"]["rejected"], round(r["b"]["level"], 4)
    (True, True, 0.005)
    >>> holm({"a": 0.008, "b": 0.009}, 0.01)["a"]["rejected"]
    False
    """
    out: dict[str, dict[str, Any]] = {}
    going = True
    for i, name in enumerate(sorted(p_values, key=lambda k: p_values[k])):
        level = alpha / (len(p_values) - i)
        going = going and p_values[name] <= level
        out[name] = {"p_value": float(p_values[name]), "level": level, "rejected": going}
    return out


def _build_view(space: str, metric: str, syn_close: npt.NDArray[np.float64],
                syn_nn: npt.NDArray[np.int64], held_close: npt.NDArray[np.float64],
                member_close: npt.NDArray[np.float64], nonmember_close: npt.NDArray[np.float64],
                cfg: AuditConfig, exact: npt.NDArray[np.bool_] | None = None) -> View:
    rank = tau_rank(len(held_close), cfg.copy_percentile)
    tau = float(np.sort(held_close)[rank - 1])
    is_copy = syn_close > tau
    if exact is not None:
        is_copy |= exact
    return View(space, metric, tau, syn_close, syn_nn, held_close, member_close,
                nonmember_close, is_copy, rank)


def _view_summary(v: View, n_train: int, control: npt.NDArray[np.int64],
                  cfg: AuditConfig, blind: dict[str, float] | None) -> dict[str, Any]:
    copies = v.is_copy
    half = len(control) // 2
    return {
        "space": v.space,
        "metric": v.metric,
        "tau": float(v.value(np.array([v.tau]))[0]),
        "copy_rate": float(copies.mean()) if len(copies) else 0.0,
        "copies": int(copies.sum()),
        "copy_rate_if_novel": novel_copy_rate(len(v.held_closeness), v.tau_rank),
        "copy_p_value": copy_count_p_value(int(copies.sum()), len(copies),
                                           len(v.held_closeness), v.tau_rank),
        "train_with_copy": float(len(np.unique(v.syn_nn[copies])) / max(n_train, 1)),
        "synthetic_to_train": quantiles(v.value(v.syn_closeness)),
        "heldout_to_train": quantiles(v.value(v.held_closeness)),
        "mia": _auc(v.member_closeness, v.nonmember_closeness, cfg.n_boot, cfg.seed),
        "mia_p_value": mia_p_value(v.member_closeness, v.nonmember_closeness),
        "mia_control": _auc(v.member_closeness[control[:half]],
                            v.member_closeness[control[half:]], cfg.n_boot, cfg.seed),
        "split_bias_baseline": blind,
    }


def _blind_baseline(a_close: npt.NDArray[np.float64], held_close: npt.NDArray[np.float64],
                    cfg: AuditConfig) -> dict[str, float] | None:
    """AUC of training half A vs held-out, scored by closeness to training half B only."""
    if len(a_close) < 2 or len(held_close) < 2:
        return None
    return _auc(a_close, held_close, cfg.n_boot, cfg.seed)


def _subset(n: int, limit: int | None, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, limit, replace=False))


def unaudited_copy_bound(copies: int, audited: int, total: int, confidence: float = 0.95
                         ) -> float | None:
    """Upper ``confidence`` bound on the copy fraction of the whole export when only a random
    ``audited`` of ``total`` images were audited (Clopper–Pearson); None when all were."""
    if audited >= total:
        return None
    from scipy.stats import beta

    return float(beta.ppf(confidence, copies + 1, max(audited - copies, 1)))


def near_copy_limit(held_closeness: npt.NDArray[np.float64], ratio: float) -> float:
    """Similarity above which a synthetic image is a *near-exact* copy whatever the rate: its
    residual 1 − r is below ``ratio`` × the residual of the closest held-out patient, i.e.
    far closer to a training image than any new patient came."""
    return float(1.0 - ratio * (1.0 - float(np.max(held_closeness))))


def meehan_ct(syn_dist: npt.NDArray[np.float64], held_dist: npt.NDArray[np.float64],
              syn_cell: npt.NDArray[np.int64], held_cell: npt.NDArray[np.int64],
              min_per_cell: int = 5) -> dict[str, float] | None:
    """Meehan et al. (AISTATS 2020) C_T: per cell of a partition of the training data, the
    Mann–Whitney Z of synthetic-to-train vs held-out-to-train distances, averaged with the
    held-out mass of the cell. ≪ 0 means the synthetic images sit closer to the training
    images than new patients do (data copying); ≫ 0 means under-fitting. Cells with fewer
    than ``min_per_cell`` images on either side are skipped, as in the paper."""
    from scipy.stats import mannwhitneyu

    zs, weights = [], []
    for c in np.unique(held_cell):
        a, b = syn_dist[syn_cell == c], held_dist[held_cell == c]
        if len(a) < min_per_cell or len(b) < min_per_cell:
            continue
        u = mannwhitneyu(a, b, alternative="two-sided").statistic
        mu, sd = len(a) * len(b) / 2.0, math.sqrt(len(a) * len(b) * (len(a) + len(b) + 1) / 12)
        zs.append((u - mu) / sd)
        weights.append(len(b))
    if not zs:
        return None
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return {"c_t": float(np.dot(w, zs)), "cells": len(zs),
            "heldout_covered": float(np.sum(weights) / len(held_dist))}


def intensity_shift(train: U8, heldout: U8, n_boot: int, seed: int) -> dict[str, float] | None:
    """A blind check of the splits themselves: can simple per-image intensity statistics
    (quantiles, mean, spread of the raw pixels) tell held-out from training images? AUC of a
    cross-validated logistic regression; 0.5 when the splits were acquired alike, high when the
    held-out images come at another exposure, window or scanner curve."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train) < 10 or len(heldout) < 10:
        return None
    rng = np.random.default_rng(seed)
    tr = train[rng.choice(len(train), min(len(train), 4 * len(heldout)), replace=False)]

    def feats(x: U8) -> npt.NDArray[np.float64]:
        flat = x.reshape(len(x), -1).astype(np.float64)
        q = np.quantile(flat, [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98], axis=1).T
        return np.c_[q, flat.mean(1), flat.std(1)]

    x = np.r_[feats(tr), feats(heldout)]
    y = np.r_[np.zeros(len(tr)), np.ones(len(heldout))]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    score = cross_val_predict(model, x, y, cv=folds, method="decision_function")
    return _auc(score[y == 1], score[y == 0], n_boot, seed)


def _cells(train_desc: torch.Tensor, k: int, seed: int) -> Any:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(train_desc.numpy())


def audit_arrays(
    synthetic: U8,
    train: U8,
    heldout: U8,
    cfg: AuditConfig | None = None,
    *,
    synthetic_labels: npt.NDArray[np.int64] | None = None,
    dp: dict[str, Any] | None = None,
    encoder: Any = None,
    matcher: Any = None,
) -> AuditResult:
    """The audit on arrays (uint8, same H×W). ``encoder=None`` builds ``cfg.encoder``;
    ``matcher``: a ``TransformMatcher`` already built on ``train`` (to audit several sets
    against one site without indexing it again)."""
    from node.audit.matcher import MatchConfig, TransformMatcher, equalize

    cfg = cfg or AuditConfig()
    if synthetic.ndim != 3 or train.ndim != 3 or heldout.ndim != 3:
        raise AuditError("images must be uint8 arrays (N, H, W)")
    if not (synthetic.shape[1:] == train.shape[1:] == heldout.shape[1:]):
        raise AuditError(f"image sizes differ: synthetic {synthetic.shape[1:]}, train "
                         f"{train.shape[1:]}, held-out {heldout.shape[1:]}")
    if synthetic.shape[1] != synthetic.shape[2]:
        raise AuditError(f"images must be square, got {synthetic.shape[1:]}")
    if synthetic.shape[1] < 2 * cfg.max_shift + 8:
        raise AuditError(f"{synthetic.shape[1]}-px images are too small for the ±{cfg.max_shift}"
                         " px shift search; lower max_shift in the audit config")
    if len(heldout) < cfg.min_heldout:
        raise AuditError(
            f"only {len(heldout)} held-out (test split) real images; the copy threshold needs at "
            f"least {cfg.min_heldout} to be calibrated. Preprocess more data or lower "
            "min_heldout in the audit config (the threshold gets noisier)")
    if len(train) < 2 or len(synthetic) < 2:
        raise AuditError("need at least 2 training and 2 synthetic images")
    rng = np.random.default_rng(cfg.seed)
    si = _subset(len(synthetic), cfg.max_synthetic, rng)
    ti = _subset(len(train), cfg.max_real, rng)
    hi = _subset(len(heldout), cfg.max_real, rng)
    syn, tr, held = synthetic[si], train[ti], heldout[hi]
    labels = (synthetic_labels[si] if synthetic_labels is not None
              else np.zeros(len(si), np.int64))
    control = rng.permutation(len(tr))
    half_a, half_b = control[: len(tr) // 2], control[len(tr) // 2:]

    # Transform-robust view: copies under shifts, flips, crops and intensity edits.
    match_cfg = MatchConfig(max_shift=cfg.max_shift, zooms=cfg.zooms)
    if matcher is None:
        matcher = TransformMatcher(tr, match_cfg)
    elif len(matcher) != len(tr) or matcher.cfg != match_cfg or matcher.size != tr.shape[1]:
        raise AuditError("the matcher passed in was not built on this training set and config")
    s_m = matcher.match(syn)
    h_m = matcher.match_remembered(held)  # the same split in every audit of this site
    # Membership inference and the blind baseline on equalised pixels (invariant to exposure,
    # so a held-out split at another exposure does not read as membership).
    eq = [np.rint(equalize(x).numpy() * 255).astype(np.uint8) for x in (syn, tr, held)]
    e_syn, e_tr, e_held = eq
    m_c, _ = nearest_correlation(e_tr, e_syn)
    n_c, _ = nearest_correlation(e_held, e_syn)
    limit = near_copy_limit(h_m.similarity, cfg.near_copy_ratio)
    near = s_m.similarity >= limit
    pixel = _build_view("pixel", "correlation", s_m.similarity, s_m.index, h_m.similarity,
                        m_c, n_c, cfg, near)
    views = [pixel]
    blind = {"pixel": _blind_baseline(nearest_correlation(e_tr[half_a], e_tr[half_b])[0],
                                      nearest_correlation(e_held, e_tr[half_b])[0], cfg)}
    # The same blind attack on raw pixels: does the held-out split differ *by itself* (another
    # exposure, scanner, period)? Reported, so that a reader knows the held-out set is shifted.
    raw_blind = _blind_baseline(nearest_correlation(tr[half_a], tr[half_b])[0],
                                nearest_correlation(held, tr[half_b])[0], cfg)

    # Per-image data-copying test (conformal): the fraction of held-out patients at least as
    # close to the training set as this synthetic image. Small = closer than new patients.
    h_sorted = np.sort(h_m.similarity)
    per_image_p = ((len(h_sorted) - np.searchsorted(h_sorted, s_m.similarity, side="left")) + 1
                   ) / (len(h_sorted) + 1)
    # Meehan's C_T over cells of the training set (k-means on the coarse descriptor).
    k = int(max(2, min(cfg.meehan_cells, len(held) // 10, len(tr) // 10)))
    km = _cells(matcher.descriptor(tr), k, cfg.seed)
    meehan = meehan_ct(1.0 - s_m.similarity, 1.0 - h_m.similarity,
                       km.predict(matcher.descriptor(syn).numpy()),
                       km.predict(matcher.descriptor(held).numpy()))

    # Embedding view (on equalised images too, for the same reason).
    encoder_name = None
    if cfg.encoder != "none":
        if encoder is None:
            from shared.metrics.encoders import get_encoder

            encoder = get_encoder(cfg.encoder)
        encoder_name = str(encoder.name)
        e_s, e_t, e_h = (np.asarray(encoder.embed(x), np.float32) for x in eq)
        d_s, e_nn = nearest_l2(e_s, e_t)
        d_h, _ = nearest_l2(e_h, e_t)
        d_m, _ = nearest_l2(e_t, e_s)
        d_n, _ = nearest_l2(e_h, e_s)
        views.append(_build_view(encoder_name, "distance", -d_s, e_nn, -d_h, -d_m, -d_n, cfg))
        blind[encoder_name] = _blind_baseline(-nearest_l2(e_t[half_a], e_t[half_b])[0],
                                              -nearest_l2(e_h, e_t[half_b])[0], cfg)

    per_view = {v.space: _view_summary(v, len(tr), control, cfg, blind.get(v.space))
                for v in views}
    emb = per_view.get(encoder_name) if encoder_name else None
    any_copy = np.logical_or.reduce([v.is_copy for v in views])
    eps = (dp or {}).get("epsilon_spent") if dp else None
    intensity = intensity_shift(tr, held, cfg.n_boot, cfg.seed)
    shifted = any(b is not None and b["ci_low"] > 0.5 and b["auc"] >= cfg.shifted_auc
                  for b in (raw_blind, intensity))

    gates: dict[str, dict[str, Any]] = {}

    def gate(name: str, value: float | None, limit: float | None, *, missing_fails: bool = False
             ) -> None:
        if limit is None:
            return
        passed = (not missing_fails) if value is None else value <= limit
        gates[name] = {"value": value, "max": limit, "passed": bool(passed)}

    # The p-value gates are one Holm family at cfg.family_significance (config docstring): an
    # honest audit fails any of them in at most that share of audits, however many run.
    n_h = len(held)
    beyond = int((per_image_p <= 1.0 / (n_h + 1)).sum())
    # Only gates that run take a slot: an unused one would make the others stricter.
    family = {"data_copying": copy_count_p_value(beyond, len(syn), n_h, n_h)}
    if cfg.max_copy_rate is not None:
        family["copy_rate"] = per_view["pixel"]["copy_p_value"]
    if emb is not None and cfg.max_copy_rate_embedding is not None:
        family["copy_rate_embedding"] = emb["copy_p_value"]
    if cfg.max_mia_auc is not None:  # the worst view's AUC is gated: Bonferroni over views
        family["mia_auc"] = min(1.0, len(per_view) * min(pv["mia_p_value"]
                                                         for pv in per_view.values()))
    tested = holm(family, cfg.family_significance)

    def significance(name: str) -> str:
        t = tested[name]
        return (f"p = {t['p_value']:.3g} ≥ {t['level']:.3g}, the Holm level of a "
                f"{100 * cfg.family_significance:g} % family-wise test")

    # 1. Any near-exact copy (after the transform search) fails, whatever the rate.
    gates["near_copies"] = {"value": int(near.sum()), "max": 0, "passed": not near.any()}
    # 2. The copy rate against τ (95 % of new patients), significance-tested.
    gate("copy_rate", per_view["pixel"]["copy_rate"], cfg.max_copy_rate)
    if emb is not None:
        gate("copy_rate_embedding", emb["copy_rate"], cfg.max_copy_rate_embedding)
    for name in ("copy_rate", "copy_rate_embedding"):
        g = gates.get(name)
        if g is None or g["passed"]:
            continue
        g.update(p_value=tested[name]["p_value"], level=tested[name]["level"])
        if not tested[name]["rejected"] and not (name == "copy_rate" and near.any()):
            # Above the line, but a novel generator would reach this count this often
            # through the noise of τ alone: too few held-out images to call it copying.
            g.update(passed=True, note=(
                f"above the limit but not significantly above the rate of new patients "
                f"({significance(name)}, {n_h} held-out images); more held-out images "
                "would sharpen τ"))
    # 3. Data copying: how many synthetic images are closer to training than *every* held-out
    #    patient (per-image conformal p = 1/(n+1)), against what a novel generator would show.
    gates["data_copying"] = {
        "value": beyond / len(syn), "max": novel_copy_rate(n_h, n_h),
        "p_value": tested["data_copying"]["p_value"], "level": tested["data_copying"]["level"],
        "passed": bool(not tested["data_copying"]["rejected"]
                       and (meehan is None or cfg.min_meehan_ct is None
                            or meehan["c_t"] >= cfg.min_meehan_ct)),
    }
    if meehan is not None:
        gates["data_copying"]["meehan_c_t"] = meehan["c_t"]
    gate("train_with_copy", per_view["pixel"]["train_with_copy"], cfg.max_train_with_copy)
    # 4. Membership inference, read against the blind split-bias baseline.
    worst = max(per_view.values(), key=lambda pv: pv["mia"]["auc"])
    mia_auc = float(worst["mia"]["auc"])
    gate("mia_auc", mia_auc, cfg.max_mia_auc)
    if "mia_auc" in gates and not gates["mia_auc"]["passed"]:
        base = worst.get("split_bias_baseline") or {"auc": 0.5}
        gates["mia_auc"].update(p_value=tested["mia_auc"]["p_value"],
                                level=tested["mia_auc"]["level"])
        if not tested["mia_auc"]["rejected"]:
            # With a few dozen held-out images the AUC alone swings by ±0.1.
            gates["mia_auc"].update(passed=True, note=(
                f"above the limit but not significantly above 0.5 ({significance('mia_auc')})"))
        elif worst["mia"]["ci_low"] <= base["auc"]:
            gates["mia_auc"].update(passed=True, note=(
                f"above the limit but not above the blind split-bias baseline "
                f"({base['auc']:.3f}): training and held-out images differ by themselves"))
    gate("epsilon", float(eps) if eps is not None else None, cfg.max_epsilon,
         missing_fails=True)

    from shared.config import to_dict

    flagged = pixel.is_copy | near
    summary: dict[str, Any] = {
        "kind": "memorization_audit",
        "version": 2,
        "encoder": encoder_name,
        "matcher": {"intensity": "histogram-equalised, Gaussian blur "
                                 f"σ={matcher_blur()} px",
                    "flips": 4, "max_shift_px": cfg.max_shift, "zooms": list(cfg.zooms)},
        "n_synthetic": len(syn),
        "n_synthetic_total": len(synthetic),
        "copy_fraction_upper_95": unaudited_copy_bound(int(flagged.sum()), len(syn),
                                                       len(synthetic)),
        "n_train": len(tr),
        "n_train_total": len(train),
        "n_heldout": len(held),
        "image_size": [int(synthetic.shape[1]), int(synthetic.shape[2])],
        "copy_percentile": cfg.copy_percentile,
        "family_significance": cfg.family_significance,
        "expected_copy_rate_if_novel": round(per_view["pixel"]["copy_rate_if_novel"], 6),
        "copy_rate": per_view["pixel"]["copy_rate"],
        "copy_rate_any_view": float(any_copy.mean()),
        "exact_copies": int(near.sum()),
        "near_copy_similarity": limit,
        "closer_than_every_heldout": beyond,
        "meehan": meehan,
        "train_with_copy": per_view["pixel"]["train_with_copy"],
        "mia_auc": mia_auc,
        "heldout_shift": {"raw_pixel_baseline": raw_blind, "intensity_statistics": intensity,
                          "shifted": shifted},
        "views": per_view,
        "dp": ({"epsilon_spent": eps, "delta": (dp or {}).get("delta")} if eps is not None
               else None),
        "gates": gates,
        "gates_passed": all(g["passed"] for g in gates.values()),
        "config": to_dict(cfg),
    }
    return AuditResult(summary, views, syn, labels, tr, matches=s_m, per_image_p=per_image_p,
                       near=near)


def matcher_blur() -> float:
    from node.audit.matcher import BLUR

    return BLUR
