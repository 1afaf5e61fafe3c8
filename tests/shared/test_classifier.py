"""The downstream CNN: shapes, sizes, norms, and that it can actually learn."""

from __future__ import annotations

import pytest
import torch

from shared.classifier import ResNetClassifier


@pytest.mark.parametrize("size", [16, 28, 32, 64, 130])
def test_any_input_size_gives_logits(size: int) -> None:
    net = ResNetClassifier(num_classes=5, width=4).eval()
    assert net(torch.zeros(2, 1, size, size)).shape == (2, 5)


def test_group_norm_has_no_batchnorm() -> None:
    net = ResNetClassifier(num_classes=2, width=8, norm="group")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        ResNetClassifier(num_classes=1)
    with pytest.raises(ValueError):
        ResNetClassifier(num_classes=2, norm="layer")
    with pytest.raises(ValueError):
        ResNetClassifier(num_classes=2, width=4)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError):
        ResNetClassifier(num_classes=2, width=4)(torch.zeros(1, 3, 32, 32))


def test_weights_do_not_depend_on_input_size() -> None:
    a = ResNetClassifier(num_classes=2, width=4)
    assert ResNetClassifier.stem_pool(28) == 1
    assert ResNetClassifier.stem_pool(256) == 4
    b = ResNetClassifier(num_classes=2, width=4)
    b.load_state_dict(a.state_dict())  # same parameters whatever size is fed later
