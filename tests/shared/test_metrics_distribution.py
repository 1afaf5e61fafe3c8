"""FD/KD/precision/recall behave on constructed cases; labels always name the encoder."""

from __future__ import annotations

import numpy as np
import pytest

from shared.metrics.distribution import (
    distribution_scores,
    frechet_distance,
    kernel_distance,
    precision_recall,
    scores_from_features,
)
from shared.metrics.encoders import get_encoder
from tests.conftest import blob_images


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_noise() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 16))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    values = [frechet_distance(feats, feats + rng.normal(scale=s, size=feats.shape))
              for s in (0.1, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]


def test_fd_on_images_with_domain_encoder() -> None:
    images, _ = blob_images(120, 32, seed=0)
    enc = get_encoder("domain")
    same = distribution_scores(images, images, enc)
    assert same.fd == pytest.approx(0.0, abs=1e-3)
    rng = np.random.default_rng(1)
    fds = []
    for sigma in (10, 40):
        noisy = np.clip(images + rng.normal(scale=sigma, size=images.shape), 0, 255)
        fds.append(distribution_scores(images, noisy.astype(np.uint8), enc).fd)
    assert same.fd < fds[0] < fds[1]


def test_kernel_distance_near_zero_for_same_distribution() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kernel_distance(a, b, n_subsets=10, subset_size=200)
    shifted, _ = kernel_distance(a, b + 1.0, n_subsets=10, subset_size=200)
    assert abs(same) < 0.05 < shifted


def test_shifted_distribution_lowers_precision() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 4))
    same = rng.normal(size=(400, 4))
    shifted = rng.normal(size=(400, 4)) + 3.0
    p_same, r_same = precision_recall(real, same, k=3)
    p_shift, _ = precision_recall(real, shifted, k=3)
    assert p_same > 0.8 and r_same > 0.8
    assert p_shift < p_same - 0.5


def test_dropped_mode_lowers_recall_not_precision() -> None:
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    real = np.concatenate([rng.normal(size=(200, 2)) + c for c in centres])
    full = np.concatenate([rng.normal(size=(200, 2)) + c for c in centres])
    one_mode = rng.normal(size=(400, 2)) + centres[0]
    _p_full, r_full = precision_recall(real, full)
    p_drop, r_drop = precision_recall(real, one_mode)
    assert r_drop < r_full - 0.35
    assert p_drop > 0.8


def test_labels_never_call_a_domain_score_fid() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    d = scores_from_features(a, b, "domain-rfconv-v1").to_dict()
    assert d["fd_label"] == "FD[domain-rfconv-v1]" and "FID" not in str(d)
    i = scores_from_features(a, b, "inception-v3-fid")
    assert i.fd_label == "FID" and i.kd_label == "KID"
