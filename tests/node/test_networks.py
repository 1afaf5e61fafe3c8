"""Networks scale with resolution, condition on K classes, and D has no BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from node.training.networks import Discriminator, Generator, build_generator


@pytest.mark.parametrize("res", [8, 32, 64])
@pytest.mark.parametrize("k", [2, 8])
def test_shapes_across_resolutions_and_classes(res: int, k: int) -> None:
    g = Generator(res, k, channel_base=64, channel_min=4)
    d = Discriminator(res, k, channel_base=64, channel_min=4)
    c = torch.arange(4) % k
    x = g(torch.randn(4, g.z_dim), c)
    assert x.shape == (4, 1, res, res)
    assert d(x, c).shape == (4,)


def test_non_power_of_two_rejected() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(28, 2)


def test_discriminator_has_no_batchnorm_and_group_variant() -> None:
    for norm in ("none", "group"):
        d = Discriminator(32, 2, norm=norm)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in Discriminator(32, 2, norm="group").modules())


def test_class_changes_output_and_arch_roundtrip() -> None:
    torch.manual_seed(0)
    g = Generator(16, 3, channel_base=64, channel_min=4)
    z = torch.randn(2, g.z_dim)
    a = g(z, torch.tensor([0, 0]))
    b = g(z, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    g2 = build_generator(g.architecture())
    g2.load_state_dict(g.state_dict())
    assert torch.equal(g2(z, torch.tensor([0, 0])), a)
