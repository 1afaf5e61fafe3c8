"""Differential privacy for every network that sees real pixels: DP-SGD with Opacus.

What is private, and why this is enough. The discriminator D is the only GAN network that
touches real images; G only ever sees D's outputs on *fake* images, so G (and every synthetic
image it makes) is post-processing of a DP D and costs no extra privacy (DESIGN §5). SpineGAN's
classifier S also reads real images, so under DP it is trained with DP-SGD too and the two
guarantees compose (see :func:`split_budget` / :func:`compose_reports`).

How the budget is planned. The trainer knows the run's length (``total_steps``) before it
starts, so :class:`DPSession` picks the *smallest* noise multiplier σ for which the accountant
(RDP by default, PRV optional) says that ``total_steps`` Poisson-sampled steps at rate
``q = batch / n`` compose to ε ≤ target at δ (default 1/n, set by the caller). Training then
stops when the planned steps are done (:meth:`DPSession.exhausted`), so the reported ε spent
is never above the target. If no usable σ reaches the target (σ would exceed
``max_noise_multiplier``: the gradient signal drowns and nothing trains) the session refuses
with :class:`DPBudgetError`, stating the smallest ε these settings can reach.

The D-step under DP (the pitfall of Opacus issue 418,
https://github.com/pytorch/opacus/issues/418): if real and fake batches go through two private
backward passes, Opacus clips and *noises* both, and the accountant charges two steps — the
fake pass is charged as if it were private data although it is not. We instead run ONE
forward/backward over ``torch.cat([real, fake.detach()])`` (``node.training.losses.GanLoss``,
``joint=True``): every example's gradient, real or fake, is clipped once to
``max_grad_norm``, noise is added once per step, and the accountant charges one step at
rate q. A real example still contributes at most ``max_grad_norm`` to the summed gradient (its
sensitivity is unchanged); the fake examples were produced by G, itself post-processing of
earlier private D's, so including them adds no privacy cost. R1 (a second backward over real
data) is off under DP, augmentation is fixed (ADA's p is tuned on real-data statistics, which
would leak), D uses GroupNorm (BatchNorm mixes examples, so per-example gradients would not
exist), and minibatch-std is off for the same reason.

>>> dp_delta_default(2000)
0.0005
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from node.errors import DPBudgetError, TrainingError
from shared.synthetic import to_tensor_range

log = logging.getLogger(__name__)

DEFAULT_ACCOUNTANT = "rdp"
MAX_NOISE_MULTIPLIER = 50.0
"""Above this σ the noise on each step's summed gradient is ~50 clip-norms: with the batches a
site can afford, that is more noise than signal on every coordinate, so we call the budget
infeasible rather than burn compute on a generator that learns nothing."""

SPINE_EPSILON_SHARE = 0.2
"""Default share of ε given to SpineGAN's classifier S when it is trained under DP too; D gets
the rest. S only has to be a decent classifier (a few epochs), D needs many steps."""


RDP_ALPHAS: list[float] = ([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
                           + [80, 96, 128, 160, 192, 256, 384, 512, 1024])
"""Rényi orders: Opacus' defaults extended upwards, so that small budgets (large σ) are not
over-charged by a grid that stops at 63."""


def _eps_kwargs(accountant: str) -> dict[str, Any]:
    return {"alphas": RDP_ALPHAS} if accountant == "rdp" else {}


def dp_delta_default(n_train: int) -> float:
    """δ = 1/n: the usual ceiling (δ must be well below the chance of picking one person)."""
    return 1.0 / max(int(n_train), 1)


def _epsilon_for(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    from opacus.accountants.utils import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta, **_eps_kwargs(accountant)))


def smallest_feasible_epsilon(
    sample_rate: float, steps: int, delta: float, accountant: str = DEFAULT_ACCOUNTANT,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """ε reached at the largest usable noise multiplier: no smaller budget can train."""
    return _epsilon_for(max_noise_multiplier, sample_rate, steps, delta, accountant)


def epsilon_spent_by_runs(runs_dir: Path, exclude: str | None = None) -> dict[str, float]:
    """ε spent per earlier DP run of a site (``runs/*/metrics.json``), run name → ε.

    HOOK: this is the site's own record until a per-site privacy ledger exists; summing the
    runs' ε (basic composition) is an upper bound on what the site has spent in total.
    """
    import json

    spent: dict[str, float] = {}
    for metrics in sorted(Path(runs_dir).glob("*/metrics.json")):
        if metrics.parent.name == exclude:
            continue
        try:
            dp = (json.loads(metrics.read_text()).get("dp") or {})
        except (OSError, ValueError):
            continue
        eps = dp.get("epsilon_spent") if isinstance(dp, dict) else None
        if isinstance(eps, int | float) and eps > 0:
            spent[metrics.parent.name] = float(eps)
    return spent


def check_site_budget(runs_dir: Path, run_name: str, epsilon: float, site_budget: float,
                      sample_rate: float, steps: int, delta: float) -> None:
    """Refuse, before training, a DP run (e.g. a second round) whose ε exceeds what remains.

    The message gives the remaining budget and the smallest ε this run could be trained with,
    so the admin can lower ``--dp-epsilon`` or ``--kimg`` (or stop).
    """
    spent = epsilon_spent_by_runs(runs_dir, exclude=run_name)
    remaining = site_budget - sum(spent.values())
    if epsilon <= remaining + 1e-9:
        return
    smallest = smallest_feasible_epsilon(sample_rate, steps, delta)
    runs = ", ".join(f"{k} ε={v:.3g}" for k, v in spent.items()) or "none"
    hint = (f"lower --dp-epsilon to ≤ {remaining:.3g}" if remaining >= smallest else
            f"this run needs at least ε {_round_up(smallest)} at these settings; lower --kimg")
    raise DPBudgetError(
        f"{runs_dir}: run {run_name!r} would spend ε {epsilon:g} but only {max(remaining, 0):.3g}"
        f" of the site's budget {site_budget:g} remains (earlier runs: {runs}); {hint}",
        smallest_epsilon=smallest)


def plan_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int,
    accountant: str = DEFAULT_ACCOUNTANT, max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """The smallest σ with composed ε(σ, q, steps, δ) ≤ target; :class:`DPBudgetError` if none.

    >>> s = plan_noise_multiplier(8.0, 1e-3, 0.05, 200)
    >>> 0.5 < s < 2.0 and _epsilon_for(s, 0.05, 200, 1e-3, "rdp") <= 8.0
    True
    """
    from opacus.accountants.utils import get_noise_multiplier

    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise DPBudgetError(f"target ε must be a positive number, got {target_epsilon}")
    if not 0 < delta < 1:
        raise DPBudgetError(f"δ must be in (0, 1), got {delta}")
    if not 0 < sample_rate <= 1 or steps < 1:
        raise DPBudgetError(f"need 0 < sampling rate ≤ 1 and ≥ 1 step, got q={sample_rate}, "
                            f"steps={steps}")
    floor = smallest_feasible_epsilon(sample_rate, steps, delta, accountant,
                                      max_noise_multiplier)
    if target_epsilon < floor:
        raise DPBudgetError(
            f"privacy budget ε={target_epsilon:g} (δ={delta:.3g}) is too small to train at all: "
            f"with {steps} steps at sampling rate {sample_rate:.4g} the smallest feasible ε is "
            f"{_round_up(floor)} (at noise multiplier {max_noise_multiplier:g}). Raise "
            f"--dp-epsilon to at least {_round_up(floor)}, or train fewer steps (smaller "
            "--kimg), or use a smaller batch",
            smallest_epsilon=floor,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=accountant, epsilon_tolerance=0.01,
                **_eps_kwargs(accountant)))
    except ValueError as exc:  # opacus: "The privacy budget is too low."
        raise DPBudgetError(
            f"privacy budget ε={target_epsilon:g} is too small for {steps} steps at sampling "
            f"rate {sample_rate:.4g}: {exc}; the smallest feasible ε is {_round_up(floor)}",
            smallest_epsilon=floor) from None
    return sigma


def _round_up(x: float) -> str:
    """Round a minimum *up* so the number we print is itself feasible."""
    if x <= 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(x)))
    f = 10.0**digits
    return f"{math.ceil(x * f) / f:g}"


_REGISTERED = False


def register_layer_grad_samplers() -> None:
    """Exact per-example gradients for synthlearn's equalised-LR layers, in closed form.

    Without these, Opacus falls back to functorch (vmap over a functional copy of each layer),
    which is correct but several times slower per step on CPU. The formulas are the ones Opacus
    uses for ``nn.Linear`` / ``nn.Conv2d`` times the layers' run-time weight scale (the weight
    used in the forward pass is ``weight · scale``, so ∂L/∂weight = scale · ∂L/∂(used weight)).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from opacus.grad_sample import register_grad_sampler
    from torch.nn import functional as F

    from node.training.networks.layers import EqConv2d, EqLinear

    @register_grad_sampler(EqLinear)
    def _eq_linear(layer: EqLinear, activations: list[torch.Tensor],
                   backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        a = activations[0].to(backprops.dtype)
        out: dict[nn.Parameter, torch.Tensor] = {}
        if layer.weight.requires_grad:
            out[layer.weight] = torch.einsum("n...i,n...j->nij", backprops, a) * layer.scale
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = torch.einsum("n...k->nk", backprops) * layer.lr_mul
        return out

    @register_grad_sampler(EqConv2d)
    def _eq_conv(layer: EqConv2d, activations: list[torch.Tensor],
                 backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        a = activations[0].to(backprops.dtype)
        n = a.shape[0]
        cout, cin, k, _ = layer.weight.shape
        out: dict[nn.Parameter, torch.Tensor] = {}
        if layer.weight.requires_grad:
            cols = F.unfold(a, k, padding=layer.padding)  # (n, cin·k·k, L)
            b = backprops.reshape(n, cout, -1)            # (n, cout, L)
            gs = torch.einsum("nol,nil->noi", b, cols).reshape(n, cout, cin, k, k)
            out[layer.weight] = gs * layer.scale
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = backprops.sum(dim=(2, 3))
        return out

    _REGISTERED = True


def _skip_backprops_of_frozen_layers(gsm: nn.Module) -> None:
    """Make Opacus ignore backward passes through layers whose parameters are frozen.

    The G-step runs D with ``requires_grad_(False)``: Opacus' forward hook then records no
    activations, but its full-backward hook still fires (G's fake images need gradients through
    D) and fails popping an activation that was never stored. Frozen layers contribute no
    parameter gradient, so skipping them is exact; the trainer need not toggle hooks itself
    (``DPSession.frozen()`` does that explicitly too).
    """
    capture = getattr(gsm, "capture_backprops_hook", None)
    if capture is None or not hasattr(gsm, "add_hooks"):
        return

    def guarded(module: nn.Module, forward_input: Any, forward_output: Any,
                loss_reduction: str, batch_first: bool) -> None:
        trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        if not trainable or not getattr(module, "activations", None):
            return
        capture(module, forward_input, forward_output, loss_reduction=loss_reduction,
                batch_first=batch_first)

    gsm.capture_backprops_hook = guarded  # type: ignore[assignment]
    loss_reduction = getattr(gsm, "loss_reduction", "mean")
    batch_first = getattr(gsm, "batch_first", True)
    gsm.remove_hooks()  # type: ignore[operator]
    gsm.add_hooks(loss_reduction=loss_reduction, batch_first=batch_first)  # type: ignore[operator]


def _rebuild_optimizer(optimizer: torch.optim.Optimizer,
                       module: nn.Module) -> torch.optim.Optimizer:
    """Same optimizer class and hyper-parameters, over a (fixed) module's parameters."""
    return type(optimizer)(module.parameters(), **optimizer.defaults)


class DPSession:
    """One network trained with DP-SGD under a fixed, pre-planned (ε, δ) budget.

    Use ``.module``, ``.optimizer`` and ``.data_loader`` (Poisson sampling: batch sizes vary,
    possibly 0) instead of the originals; the optimizer clips each example's gradient to
    ``max_grad_norm`` and adds Gaussian noise with std ``noise_multiplier · max_grad_norm``.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: torch.utils.data.DataLoader[Any],
        *,
        target_epsilon: float,
        delta: float,
        total_steps: int,
        max_grad_norm: float = 1.0,
        accountant: str = DEFAULT_ACCOUNTANT,
        max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
        secure_mode: bool = False,
    ) -> None:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        if max_grad_norm <= 0:
            raise TrainingError(f"DP clip norm must be > 0, got {max_grad_norm}")
        if total_steps < 1:
            raise DPBudgetError(f"a DP run needs at least one step, got {total_steps}")
        n = len(data_loader.dataset)  # type: ignore[arg-type]
        if len(data_loader) < 1 or n < 2:
            raise DPBudgetError(f"DP training needs at least 2 training images, got {n}")
        self.sample_rate = 1.0 / len(data_loader)  # Opacus' own convention for Poisson loaders
        self.target_epsilon = float(target_epsilon)
        self.delta = float(delta)
        self.total_steps = int(total_steps)
        self.max_grad_norm = float(max_grad_norm)
        self.accountant_name = accountant
        self.n_train = n
        self.noise_multiplier = plan_noise_multiplier(
            self.target_epsilon, self.delta, self.sample_rate, self.total_steps, accountant,
            max_noise_multiplier)

        errors = ModuleValidator.validate(module, strict=False)
        self.fixed: list[str] = [str(e) for e in errors]
        if errors:
            log.warning("Opacus cannot train this module privately as is (%s); replacing "
                        "BatchNorm with GroupNorm", "; ".join(self.fixed))
            module = ModuleValidator.fix(module)
            remaining = ModuleValidator.validate(module, strict=False)
            if remaining:
                raise TrainingError(
                    "the network has layers DP-SGD cannot handle even after Opacus' fixes: "
                    + "; ".join(str(e) for e in remaining))
            optimizer = _rebuild_optimizer(optimizer, module)

        register_layer_grad_samplers()
        self.engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
        with warnings.catch_warnings():
            # Opacus warns about secure RNG and about full-backward-hook use; both are known.
            warnings.simplefilter("ignore")
            mod, opt, loader = self.engine.make_private(
                module=module, optimizer=optimizer, data_loader=data_loader,
                noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                poisson_sampling=True, grad_sample_mode="hooks")
        _skip_backprops_of_frozen_layers(mod)
        self.module: nn.Module = mod
        self.optimizer: torch.optim.Optimizer = opt
        self.data_loader: torch.utils.data.DataLoader[Any] = loader
        self._eps_cache: tuple[int, float] = (0, 0.0)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[nn.Module]:
        """D as a fixed function (the G-step): no per-example hooks, no parameter gradients.

        Yields the private module; its parameters' ``requires_grad`` is restored afterwards.
        """
        flags = [p.requires_grad for p in self.module.parameters()]
        disable = getattr(self.module, "disable_hooks", None)
        enable = getattr(self.module, "enable_hooks", None)
        self.module.requires_grad_(False)
        if disable is not None:
            disable()
        try:
            yield self.module
        finally:
            for p, f in zip(self.module.parameters(), flags, strict=True):
                p.requires_grad_(f)
            if enable is not None:
                enable()

    @property
    def steps(self) -> int:
        """Private optimizer steps taken (each one charged by the accountant)."""
        return int(sum(h[2] for h in self.engine.accountant.history))

    def epsilon_spent(self) -> float:
        steps = self.steps
        if steps == 0:
            return 0.0
        if self._eps_cache[0] != steps:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                eps = float(self.engine.accountant.get_epsilon(
                    delta=self.delta, **_eps_kwargs(self.accountant_name)))
            self._eps_cache = (steps, eps)
        return self._eps_cache[1]

    def exhausted(self) -> bool:
        """True once the planned steps are done (or ε would pass the target): stop training."""
        return self.steps >= self.total_steps or self.epsilon_spent() >= self.target_epsilon

    def report(self) -> dict[str, Any]:
        """The DP accounting that goes into run metrics and the bundle manifest."""
        import opacus

        return {
            "mechanism": "DP-SGD (Opacus, Poisson sampling, per-example clipping)",
            "epsilon_spent": self.epsilon_spent(),
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "planned_steps": self.total_steps,
            "n_train": self.n_train,
            "accountant": self.accountant_name,
            "opacus_version": opacus.__version__,
            "fixed_layers": self.fixed,
        }


# -- composition (SpineGAN: D and S both read the same real images) ---------------------------
def split_budget(epsilon: float, delta: float,
                 spine_share: float = SPINE_EPSILON_SHARE) -> dict[str, tuple[float, float]]:
    """Split (ε, δ) between D and S so that, by sequential composition, the sum is the target.

    D and S are trained on the same real images and both shape G, so the released synthetic
    images are (ε_D + ε_S, δ_D + δ_S)-DP (basic composition; tighter accounting exists but this
    bound is simple to audit). δ is split evenly.

    >>> split_budget(10.0, 1e-3)
    {'discriminator': (8.0, 0.0005), 'spine_classifier': (2.0, 0.0005)}
    """
    if not 0 < spine_share < 1:
        raise ValueError(f"spine_share must be in (0, 1), got {spine_share}")
    return {"discriminator": (epsilon * (1 - spine_share), delta / 2),
            "spine_classifier": (epsilon * spine_share, delta / 2)}


def compose_reports(reports: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One DP report for a run whose networks were trained privately on the same data.

    Totals are by basic sequential composition (ε and δ add); the parts are kept as given.
    None when no part was private.

    >>> r = compose_reports({"discriminator": {"epsilon_spent": 7.9, "delta": 5e-4},
    ...                      "spine_classifier": {"epsilon_spent": 1.95, "delta": 5e-4}})
    >>> round(r["epsilon_spent"], 2), r["delta"], r["composition"]
    (9.85, 0.001, 'sequential (sum of parts)')
    """
    parts = {k: dict(v) for k, v in reports.items() if v is not None}
    if not parts:
        return None
    if len(parts) == 1:
        return copy.deepcopy(next(iter(parts.values())))
    return {
        "epsilon_spent": sum(float(p["epsilon_spent"]) for p in parts.values()),
        "delta": sum(float(p["delta"]) for p in parts.values()),
        "composition": "sequential (sum of parts)",
        "parts": parts,
    }


def train_classifier_dp(
    images: Any,
    labels: Any,
    num_classes: int,
    *,
    target_epsilon: float,
    delta: float,
    epochs: int = 5,
    batch: int = 64,
    lr: float = 2e-3,
    width: int = 16,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: bool = True,
    device: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train SpineGAN's classifier S with DP-SGD; returns (eval-mode model on CPU, DP report).

    ``images`` uint8 (N, H, W), ``labels`` int64 (N,). S is ``shared.classifier``'s ResNet with
    GroupNorm (Opacus rejects BatchNorm), trained for ``epochs`` passes of Poisson-sampled
    batches; the noise is planned for exactly those steps, so the report's ε ≤ target. With
    :func:`split_budget`, D gets the rest of the run's ε and :func:`compose_reports` sums them.
    A ``max_minutes`` stop only ever spends less than planned.
    """
    import time

    import numpy as np
    from torch.nn import functional as F

    from shared.classifier import ResNetClassifier

    x = torch.from_numpy(np.asarray(images, np.uint8)).unsqueeze(1)
    y = torch.from_numpy(np.asarray(labels, np.int64))
    n = len(y)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    model = ResNetClassifier(num_classes, width=width, norm="group").to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=min(batch, n))
    steps = max(1, epochs * len(loader))
    session = DPSession(model, opt, loader, target_epsilon=target_epsilon, delta=delta,
                        total_steps=steps, max_grad_norm=max_grad_norm)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
    from shared.progress import progress_bar

    with progress_bar("img", transient=True) as bar:
        task = bar.add_task("S (DP-SGD)", total=steps, status="", visible=progress)
        session.module.train()
        while not session.exhausted() and time.monotonic() < deadline:
            for xb, yb in session.data_loader:
                if session.exhausted() or time.monotonic() >= deadline:
                    break
                xb = to_tensor_range(xb.to(dev))
                session.optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(session.module(xb), yb.to(dev))
                loss.backward()
                session.optimizer.step()
                bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
    report = session.report()
    plain = ResNetClassifier(num_classes, width=width, norm="group")
    raw = getattr(session.module, "_module", session.module)
    plain.load_state_dict({k: v.detach().cpu() for k, v in raw.state_dict().items()})
    return plain.eval(), report
