"""Encoders: the domain encoder is deterministic and needs no file; Inception refuses bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.metrics.encoders import DomainEncoder, EncoderError, get_encoder


def test_domain_encoder_is_deterministic_and_named() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    a = get_encoder("domain")
    b = get_encoder()
    assert a.name == "domain-rfconv-v1"
    ea, eb = a.embed(images), b.embed(images, batch=2)
    assert ea.shape == (5, DomainEncoder().dim) and ea.dtype == np.float32
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)
    # different images → different embeddings
    assert not np.allclose(ea[0], ea[1])


def test_domain_encoder_compares_sizes() -> None:
    img = np.random.default_rng(1).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    assert get_encoder().embed(img).shape == get_encoder().embed(img[:, ::2, ::2]).shape


def test_inception_needs_a_real_weights_file(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="needs"):
        get_encoder("inception")
    with pytest.raises(EncoderError, match="not found"):
        get_encoder("inception", tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(EncoderError, match="not a readable"):
        get_encoder("inception", junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(EncoderError, match="missing keys"):
        get_encoder("inception", wrong)
    with pytest.raises(EncoderError, match="unknown encoder"):
        get_encoder("vgg")
