"""Weights travel as npz state dicts with JSON meta, never pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.classifier import ResNetClassifier
from shared.weights_io import WeightsError, load_classifier, load_weights, save_weights


def test_round_trip_is_exact(tmp_path: Path) -> None:
    net = ResNetClassifier(num_classes=3, width=4, norm="group").eval()
    path = tmp_path / "cnn.npz"
    save_weights(net, path, {"classes": "lesion", "threshold": None})
    _arrays, meta = load_weights(path)
    assert meta["classes"] == "lesion" and meta["architecture"]["num_classes"] == 3
    back = load_classifier(path)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(back(x), net(x))
    with np.load(path, allow_pickle=False) as npz:  # readable without pickle
        assert "__meta__" in npz.files


def test_pickles_and_garbage_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "evil.npz"
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WeightsError):
        load_weights(junk)
    with pytest.raises(WeightsError, match="no such"):
        load_weights(tmp_path / "missing.npz")


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cnn.npz"
    save_weights(ResNetClassifier(num_classes=2, width=4), path, {})
    arrays, meta = load_weights(path)
    meta["architecture"]["width"] = 8
    import json

    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError, match="do not fit"):
        load_classifier(path)
