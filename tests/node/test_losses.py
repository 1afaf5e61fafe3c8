"""The SpineGAN term is really wired into G's gradients; R1 is a real gradient penalty."""

from __future__ import annotations

import torch
from torch import nn

from node.training.losses import GanLoss
from node.training.networks import Discriminator, Generator


def _nets() -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return (Generator(16, 2, channel_base=64, channel_min=4),
            Discriminator(16, 2, channel_base=64, channel_min=4))


def _grads(loss: GanLoss, G: Generator) -> torch.Tensor:
    G.zero_grad()
    torch.manual_seed(1)
    z, c = torch.randn(8, G.z_dim), torch.tensor([0, 1] * 4)
    total, _ = loss.generator_loss(z, c)
    total.backward()
    return torch.cat([p.grad.flatten() for p in G.parameters() if p.grad is not None])


def test_spine_term_changes_generator_gradients() -> None:
    G, D = _nets()
    S = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2))
    plain = _grads(GanLoss(G, D, w_avg_decay=None), G)
    spine = _grads(GanLoss(G, D, spine=S, spine_gamma=0.1, w_avg_decay=None), G)
    zero = _grads(GanLoss(G, D, spine=S, spine_gamma=0.0, w_avg_decay=None), G)
    assert torch.allclose(plain, zero)
    assert not torch.allclose(plain, spine)
    _, stats = GanLoss(G, D, spine=S).generator_loss(torch.randn(2, G.z_dim), torch.tensor([0, 1]))
    assert stats["g_spine_ce"] > 0


def test_r1_penalty_positive_and_scaled_by_interval() -> None:
    G, D = _nets()
    real, c = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    a, raw = GanLoss(G, D, r1_gamma=1.0, r1_interval=1).r1_penalty(real, c)
    b, _ = GanLoss(G, D, r1_gamma=1.0, r1_interval=16).r1_penalty(real, c)
    assert raw > 0
    assert torch.allclose(b, a * 16)


def test_joint_discriminator_loss_matches_separate_without_mbstd() -> None:
    torch.manual_seed(0)
    G = Generator(16, 2, channel_base=64, channel_min=4)
    D = Discriminator(16, 2, channel_base=64, channel_min=4, mbstd=False)
    loss = GanLoss(G, D)
    real, c = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    z = torch.randn(4, G.z_dim)
    sep, _, _ = loss.discriminator_loss(real, c, z, c)
    joint, _, _ = loss.discriminator_loss(real, c, z, c, joint=True)
    assert torch.allclose(sep, 2 * joint, atol=1e-5)


def test_mode_seeking_pushes_same_class_pairs_apart_only() -> None:
    """Two latents of one class that give (nearly) one image are penalised, and the gradient
    pulls the two images apart; a pair of different classes adds nothing."""
    from node.training.losses import mode_seeking

    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    base = torch.tensor([0.1, 0.2, 0.1001, 0.5]).view(4, 1, 1, 1).repeat(1, 1, 2, 2)
    x = base.clone().requires_grad_(True)
    same = torch.tensor([0, 1, 0, 0])  # pairs (0, 2): same class, same image; (1, 3): not
    loss = mode_seeking(x, z, same)
    loss.backward()
    assert loss > 100  # (nearly) one image for two distant latents
    g = x.grad
    assert g is not None and torch.all(g[1] == 0) and torch.all(g[3] == 0)
    # Descending the loss moves image 0 down and image 2 up: apart.
    assert float(g[0].sum()) > 0 > float(g[2].sum())
    other = torch.tensor([0, 1, 1, 0])  # no pair shares a class
    assert float(mode_seeking(base, z, other)) == 0.0


def test_diversity_weight_changes_generator_gradients() -> None:
    G, D = _nets()
    plain = _grads(GanLoss(G, D, w_avg_decay=None), G)
    diverse = _grads(GanLoss(G, D, w_avg_decay=None, diversity_weight=1.0), G)
    assert not torch.allclose(plain, diverse)
    _, stats = GanLoss(G, D, diversity_weight=1.0).generator_loss(
        torch.randn(4, G.z_dim), torch.tensor([0, 1, 0, 1]))
    assert stats["g_diversity"] > 0
