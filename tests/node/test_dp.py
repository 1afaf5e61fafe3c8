"""DP-SGD sessions: Opacus accepts the DP networks, ε spent stays within the budget."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from node.training.dp import DPBudgetError, DPSession, compose_reports, plan_noise_multiplier


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """Tiny models: one thread avoids oversubscription stalls on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def loader(n: int = 64, batch: int = 16, size: int = 8) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 2
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def dp_discriminator() -> nn.Module:
    from node.training.networks.discriminator import Discriminator

    return Discriminator(8, 2, channel_base=64, channel_max=16, channel_min=8, norm="group",
                         mbstd=False)


def test_opacus_validates_the_dp_discriminator_and_rejects_batchnorm() -> None:
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(dp_discriminator(), strict=False) == []
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 1))
    assert ModuleValidator.validate(bn, strict=False)
    session = DPSession(bn, torch.optim.SGD(bn.parameters(), lr=0.1), loader(),
                        target_epsilon=5.0, delta=1e-3, total_steps=4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in session.module.modules())
    assert session.fixed and ModuleValidator.validate(session.module, strict=False) == []
    # The rebuilt optimizer updates the fixed module's parameters, not the discarded ones.
    owned = {id(p) for p in session.module.parameters()}
    assert all(id(p) in owned for g in session.optimizer.param_groups for p in g["params"])


def test_joint_real_fake_step_spends_at_most_the_budget() -> None:
    torch.manual_seed(0)
    D = dp_discriminator()
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    session = DPSession(D, opt, loader(), target_epsilon=4.0, delta=1 / 64, total_steps=6,
                        max_grad_norm=1.0)
    before = [p.detach().clone() for p in session.module.parameters()]
    it = iter(session.data_loader)
    while not session.exhausted():
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(session.data_loader)
            continue
        real = xb.float() / 127.5 - 1
        fake = torch.randn(max(len(real), 4), 1, 8, 8)
        c_fake = torch.randint(0, 2, (len(fake),))
        session.optimizer.zero_grad(set_to_none=True)
        logits = session.module(torch.cat([real, fake]), torch.cat([yb, c_fake]))
        n = len(real)
        loss = torch.cat([F.softplus(-logits[:n]), F.softplus(logits[n:])]).mean()
        loss.backward()
        session.optimizer.step()
    rep = session.report()
    assert rep["steps"] == 6 == rep["planned_steps"]
    assert 0 < rep["epsilon_spent"] <= 4.0
    assert rep["delta"] == 1 / 64 and rep["max_grad_norm"] == 1.0
    assert rep["sample_rate"] == pytest.approx(0.25) and rep["noise_multiplier"] > 0.3
    assert set(rep) >= {"epsilon_spent", "delta", "noise_multiplier", "max_grad_norm",
                        "sample_rate", "steps", "accountant"}
    after = list(session.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_more_budget_means_less_noise() -> None:
    s1 = plan_noise_multiplier(1.0, 1e-4, 0.01, 2000)
    s10 = plan_noise_multiplier(10.0, 1e-4, 0.01, 2000)
    assert s1 > s10 > 0


def test_too_small_budget_names_the_smallest_feasible_epsilon() -> None:
    with pytest.raises(DPBudgetError) as err:
        DPSession(dp_discriminator(), torch.optim.SGD(dp_discriminator().parameters(), lr=0.1),
                  loader(), target_epsilon=0.01, delta=1e-5, total_steps=5000)
    msg = str(err.value)
    assert "too small to train at all" in msg and "smallest feasible ε is" in msg
    found = re.search(r"smallest feasible ε is ([0-9.e-]+)", msg)
    assert found is not None and err.value.smallest_epsilon is not None
    smallest = float(found.group(1))
    assert smallest == pytest.approx(err.value.smallest_epsilon, rel=0.01)
    # The number printed is itself feasible.
    assert plan_noise_multiplier(smallest, 1e-5, 0.25, 5000) <= 50.0


def test_composition_sums_parts() -> None:
    rep = compose_reports({"discriminator": {"epsilon_spent": 3.0, "delta": 1e-4},
                           "spine_classifier": None})
    assert rep == {"epsilon_spent": 3.0, "delta": 1e-4}
    assert compose_reports({"discriminator": None}) is None


def test_equalised_layer_grad_samplers_match_per_example_autograd() -> None:
    """The closed-form per-example gradients equal one backward pass per example."""
    from opacus import GradSampleModule

    from node.training.dp import register_layer_grad_samplers

    register_layer_grad_samplers()
    torch.manual_seed(1)
    D = dp_discriminator()
    x, c = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 1])
    gsm = GradSampleModule(D, loss_reduction="sum")
    gsm(x, c).pow(2).sum().backward()
    per_param = {name: p.grad_sample.clone()  # type: ignore[attr-defined]
                 for name, p in D.named_parameters()}
    ref = dp_discriminator()
    ref.load_state_dict(D.state_dict())
    for i in range(3):
        ref.zero_grad()
        ref(x[i:i + 1], c[i:i + 1]).pow(2).sum().backward()
        for name, p in ref.named_parameters():
            assert p.grad is not None
            assert torch.allclose(per_param[name][i], p.grad, atol=1e-5), name


def test_generator_step_through_frozen_private_d_is_free_and_does_not_crash() -> None:
    """G's step back-propagates through D with D frozen: Opacus must record nothing."""
    torch.manual_seed(0)
    D = dp_discriminator()
    session = DPSession(D, torch.optim.SGD(D.parameters(), lr=0.1), loader(),
                        target_epsilon=4.0, delta=1 / 64, total_steps=3)
    raw: nn.Module = session.module._module  # type: ignore[assignment]
    for use_context in (False, True):
        fake = torch.randn(5, 1, 8, 8, requires_grad=True)
        if use_context:
            with session.frozen() as d:
                d(fake, torch.zeros(5, dtype=torch.long)).sum().backward()
        else:  # what the trainer does: requires_grad_(False) and the unwrapped module
            session.module.requires_grad_(False)
            raw(fake, torch.zeros(5, dtype=torch.long)).sum().backward()
            session.module.requires_grad_(True)
        assert fake.grad is not None and fake.grad.abs().sum() > 0
        assert all(getattr(p, "grad_sample", None) is None for p in session.module.parameters())
        assert all(p.requires_grad for p in session.module.parameters())
    assert session.steps == 0 and session.epsilon_spent() == 0.0


def test_dp_classifier_for_spinegan_stays_within_its_share() -> None:
    from node.training.dp import split_budget, train_classifier_dp

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 16, 16), generator=g, dtype=torch.uint8).numpy()
    labels = (torch.arange(48) % 2).numpy()
    eps_s, delta_s = split_budget(5.0, 1 / 48)["spine_classifier"]
    model, rep = train_classifier_dp(images, labels, 2, target_epsilon=eps_s, delta=delta_s,
                                     epochs=1, batch=16, width=4, progress=False)
    assert 0 < rep["epsilon_spent"] <= eps_s == 1.0 and rep["steps"] == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 2)
