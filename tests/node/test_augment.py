"""Augmentation is differentiable, and ADA's p follows D's overfitting signal."""

from __future__ import annotations

import torch

from node.training.augment import Augment


def test_fixed_mode_is_differentiable_and_changes_images() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 16, 16, requires_grad=True)
    y = Augment(mode="fixed", p=1.0)(x)
    assert not torch.allclose(x, y)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fixed_mode_keeps_p_and_ada_moves_it() -> None:
    fixed = Augment(mode="fixed", p=0.3)
    ada = Augment(mode="ada", p=0.0, ada_kimg=1.0, interval=1)
    for _ in range(5):
        fixed.observe_real_logits(torch.ones(64))  # D confident on reals: overfitting
        ada.observe_real_logits(torch.ones(64))
    assert fixed.p == 0.3
    assert ada.p > 0.0
    before = ada.p
    for _ in range(3):
        ada.observe_real_logits(-torch.ones(64))
    assert ada.p < before


def test_state_roundtrip() -> None:
    a = Augment(mode="ada", p=0.2, interval=3)
    a.observe_real_logits(torch.ones(4))
    b = Augment(mode="ada")
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
