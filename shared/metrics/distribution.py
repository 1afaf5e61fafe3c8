"""Distribution scores between real and synthetic images, in a *named* encoder's space.

* **FD** — Fréchet distance between Gaussian fits of the two feature sets (Heusel et al.,
  2017). Called "FID" only when the encoder is the FID Inception-v3; with any other encoder
  it is labelled ``FD[<encoder name>]`` so nobody compares it with published FIDs.
* **KD** — kernel distance: unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over random subsets (Bińkowski et al., 2018; "KID" only
  for Inception).
* **Precision / recall** — k-NN manifold estimates (Kynkäänniemi et al., 2019, k = 3):
  precision = share of synthetic samples inside some real sample's k-NN ball (fidelity);
  recall = share of real samples inside some synthetic sample's ball (coverage).

Every result carries its encoder's name; :meth:`DistributionScores.to_dict` gives the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.metrics.auc import MetricError
from shared.metrics.encoders import Encoder

INCEPTION_NAME = "inception-v3-fid"

Features = npt.NDArray[np.floating[Any]]


def frechet_distance(a: Features, b: Features) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between two feature sets (rows = samples)."""
    from scipy import linalg

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MetricError(f"feature sets must be (N, D) with equal D, got {a.shape}, {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise MetricError("Fréchet distance needs at least 2 samples per set")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def kernel_distance(
    a: Features, b: Features, n_subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Unbiased polynomial-kernel MMD² (mean, std over subsets)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d = a.shape[1]
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise MetricError("kernel distance needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def _pairwise(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def _knn_radii(x: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    radii = np.empty(len(x))
    for i in range(0, len(x), 1024):
        d = _pairwise(x[i : i + 1024], x)
        radii[i : i + 1024] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def _coverage(queries: npt.NDArray[np.float64], support: npt.NDArray[np.float64],
              radii: npt.NDArray[np.float64]) -> float:
    inside = np.zeros(len(queries), bool)
    for i in range(0, len(queries), 1024):
        d = _pairwise(queries[i : i + 1024], support)
        inside[i : i + 1024] = (d <= radii[None, :]).any(1)
    return float(inside.mean())


def precision_recall(real: Features, fake: Features, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. improved precision and recall with k-NN manifolds."""
    r = np.asarray(real, np.float64)
    f = np.asarray(fake, np.float64)
    if len(r) <= k or len(f) <= k:
        raise MetricError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _coverage(f, r, _knn_radii(r, k))
    recall = _coverage(r, f, _knn_radii(f, k))
    return precision, recall


@dataclass(frozen=True)
class DistributionScores:
    encoder: str
    fd: float
    kd: float
    kd_std: float
    precision: float
    recall: float
    k: int
    n_real: int
    n_fake: int

    @property
    def fd_label(self) -> str:
        return "FID" if self.encoder == INCEPTION_NAME else f"FD[{self.encoder}]"

    @property
    def kd_label(self) -> str:
        return "KID" if self.encoder == INCEPTION_NAME else f"KD[{self.encoder}]"

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable, with every score's label naming its encoder."""
        return {
            "encoder": self.encoder,
            "fd": self.fd,
            "fd_label": self.fd_label,
            "kd": self.kd,
            "kd_std": self.kd_std,
            "kd_label": self.kd_label,
            "precision": self.precision,
            "recall": self.recall,
            "pr_label": f"precision/recall[{self.encoder}, k={self.k}]",
            "k": self.k,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
        }

    def __str__(self) -> str:
        return (
            f"{self.fd_label} {self.fd:.3f}, {self.kd_label} {self.kd:.4f}, "
            f"precision {self.precision:.3f}, recall {self.recall:.3f} "
            f"({self.encoder}, k={self.k})"
        )


def distribution_scores(
    real_images: npt.NDArray[np.uint8],
    fake_images: npt.NDArray[np.uint8],
    encoder: Encoder,
    k: int = 3,
    max_samples: int | None = 5000,
    seed: int = 0,
) -> DistributionScores:
    """Embed both image sets with ``encoder`` and compute FD, KD, precision and recall."""
    rng = np.random.default_rng(seed)

    def cap(x: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        if max_samples is not None and len(x) > max_samples:
            return x[np.sort(rng.choice(len(x), max_samples, replace=False))]
        return x

    r = encoder.embed(cap(real_images))
    f = encoder.embed(cap(fake_images))
    return scores_from_features(r, f, encoder.name, k=k, seed=seed)


def scores_from_features(
    real: Features, fake: Features, encoder_name: str, k: int = 3, seed: int = 0
) -> DistributionScores:
    """Same as :func:`distribution_scores` on precomputed features (name still required)."""
    kd, kd_std = kernel_distance(real, fake, seed=seed)
    p, rc = precision_recall(real, fake, k)
    return DistributionScores(
        encoder=encoder_name,
        fd=frechet_distance(real, fake),
        kd=kd,
        kd_std=kd_std,
        precision=p,
        recall=rc,
        k=k,
        n_real=len(real),
        n_fake=len(fake),
    )
