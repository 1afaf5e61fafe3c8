"""The GAN objective the training loop calls: non-saturating logistic loss, lazy R1, SpineGAN.

* **Non-saturating logistic** (Goodfellow 2014, StyleGAN2): D minimises
  softplus(D(fake)) + softplus(−D(real)); G minimises softplus(−D(G(z, c))).
* **Lazy R1** (Mescheder 2018; Karras 2020): γ/2·‖∇ₓD(x)‖² at augmented reals, evaluated every
  ``r1_interval`` D-steps and scaled up by the interval, which keeps its regularising effect
  at a fraction of the cost (a double backward is the most expensive thing in a step).
  Switched off under DP: it is a second, unclipped per-example gradient of D on private data.
* **SpineGAN term** (Sci. Rep. 2023): G additionally minimises γ·CE(S(G(z, c)), c), where S is a
  frozen classifier pretrained on the site's real train split. G's images are first mapped
  into S's input space (``spine_preprocess``: crop the padding / resize to the store size, clamp
  to [−1, 1]) so S sees exactly what it was trained on. CE over S's logits is the multi-class
  form; with two classes it equals the paper's BCE.
* **D-side levers** (off by default, :mod:`node.training.networks.d_heads`): ``recon_weight``
  adds FastGAN's reconstruction error of D's decoder on *real* inputs to D's loss (per real
  example, so under DP it is clipped with that example's gradient); ``projected`` (a function
  from images to SpineGAN's S feature maps) adds the non-saturating loss of D's projected heads
  to both players, on the same augmented images the main head sees.

>>> import torch
>>> from node.training.networks import Generator, Discriminator
>>> G, D = Generator(8, 2, channel_base=64, channel_min=8), Discriminator(8, 2, channel_base=64,
...                                                                           channel_min=8)
>>> loss = GanLoss(G, D)
>>> z, c = torch.randn(4, G.z_dim), torch.tensor([0, 1, 0, 1])
>>> g, stats = loss.generator_loss(z, c)
>>> sorted(stats)
['g_adv']
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from node.training.augment import Augment
from node.training.networks.d_heads import recon_error


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, c: torch.Tensor,
                 eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term over the pairs (i, i + n/2) of the batch that share a class.

    1 / (mean_pixels |x_i − x_j| / mean |z_i − z_j|), averaged over those pairs; 0 (with a
    graph, so backward still works) when no pair shares a class. Pairs, not all n² couples:
    cost stays O(n), and the batch's class mix is left as the loop drew it.

    Images that differ as much as their latents give 1; identical images give 1/eps:

    >>> c = torch.tensor([0, 1, 0, 1])
    >>> x = torch.arange(4.).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    >>> z = torch.arange(4.).view(4, 1).expand(4, 3)
    >>> round(float(mode_seeking(x, z, c)), 3), float(mode_seeking(x * 0, z, c)) > 1e4
    (1.0, True)
    """
    half = len(fake) // 2
    a, b = fake[:half].float(), fake[half: 2 * half].float()
    same = (c[:half] == c[half: 2 * half]).float()
    img = (a - b).abs().flatten(1).mean(1)
    lat = (z[:half] - z[half: 2 * half]).abs().flatten(1).mean(1)
    per_pair = 1.0 / (img / lat.clamp_min(eps) + eps)
    return (per_pair * same).sum() / same.sum().clamp_min(1.0)


def r1_gamma_heuristic(resolution: int, batch: int) -> float:
    """StyleGAN2-ADA's default: γ = 0.0002·R²/batch (0.0032 at 32², batch 64)."""
    return 0.0002 * resolution * resolution / batch


class GanLoss:
    """Losses for one (G, D) pair; the loop owns the optimizers and calls these."""

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        augment: Augment | None = None,
        r1_gamma: float = 0.0,
        r1_interval: int = 16,
        spine: nn.Module | None = None,
        spine_gamma: float = 0.1,
        spine_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        w_avg_decay: float | None = 0.995,
        recon_weight: float = 0.0,
        projected: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
        projected_weight: float = 1.0,
        diversity_weight: float = 0.0,
    ) -> None:
        self.G = G
        self.D = D
        self.augment = augment or Augment(mode="none")
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval
        self.spine = spine
        self.spine_gamma = spine_gamma
        self.spine_preprocess = spine_preprocess or (lambda x: x.clamp(-1.0, 1.0))
        self.w_avg_decay = w_avg_decay
        self.recon_weight = recon_weight
        self.projected = projected
        self.projected_weight = projected_weight
        self.diversity_weight = diversity_weight

    def _project(self, disc: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """D's projected-head logits for (augmented) images ``x``, seen through frozen S."""
        assert self.projected is not None
        feats = self.projected(self.spine_preprocess(x.float()))
        out: torch.Tensor = disc.project(feats, c)  # type: ignore[operator]
        return out

    def _fake(self, z: torch.Tensor, c: torch.Tensor, track: bool) -> torch.Tensor:
        decay = self.w_avg_decay if track else None
        out: torch.Tensor = self.G(z, c, update_w_avg=decay)
        return out

    def generator_loss(
        self, z: torch.Tensor, c: torch.Tensor, D: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """softplus(−D(aug(G(z, c)), c)) [+ γ·CE(S(G(z, c)), c)].

        Stats are detached 0-d tensors on the device: the loop sums them and reads them back
        only at logging intervals (a ``float()`` here would stall a GPU every step).

        ``D`` overrides the discriminator used (under DP the loop passes the raw module so that
        Opacus' per-example hooks on the private wrapper are not fed G's step).
        """
        disc = D if D is not None else self.D
        fake = self._fake(z, c, track=True)
        seen = self.augment(fake)
        logits = disc(seen, c)
        adv = F.softplus(-logits).mean()
        stats = {"g_adv": adv.detach().float()}
        loss = adv
        if self.projected is not None:
            g_proj = F.softplus(-self._project(disc, seen, c)).mean()
            loss = loss + self.projected_weight * g_proj
            stats["g_proj"] = g_proj.detach().float()
        if self.spine is not None and self.spine_gamma > 0:
            s_logits = self.spine(self.spine_preprocess(fake.float()))
            ce = F.cross_entropy(s_logits, c.long())
            loss = loss + self.spine_gamma * ce
            stats["g_spine_ce"] = ce.detach().float()
        if self.diversity_weight > 0:
            ms = mode_seeking(fake, z, c)
            loss = loss + self.diversity_weight * ms
            stats["g_diversity"] = ms.detach().float()
        return loss, stats

    def discriminator_loss(
        self,
        real: torch.Tensor,
        c_real: torch.Tensor,
        z: torch.Tensor,
        c_fake: torch.Tensor,
        joint: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """softplus(D(fake)) + softplus(−D(real)); returns (loss, stats, real logits).

        ``joint=True`` runs ONE forward over ``cat([real, fake])`` and averages per-example
        losses, so that under DP-SGD each real example's gradient is clipped once and the noise
        is added once (Opacus issue 418); otherwise real and fake are two forwards, which is
        what minibatch-std expects.
        """
        with torch.no_grad():
            fake = self._fake(z, c_fake, track=False)
        recon = self.recon_weight > 0
        rec: torch.Tensor | None = None
        if joint:
            xr, xf = self.augment(real), self.augment(fake)
            x, c = torch.cat([xr, xf]), torch.cat([c_real, c_fake])
            n = real.shape[0]
            if recon:
                logits, decoded = self.D(x, c, with_recon=True)
                rec = recon_error(xr, decoded[:n])
            else:
                logits = self.D(x, c)
            lr_, lf = logits[:n], logits[n:]
            real_terms = F.softplus(-lr_)
            if rec is not None:
                real_terms = real_terms + self.recon_weight * rec
            per_example = torch.cat([real_terms, F.softplus(lf)])
            loss = per_example.mean()
        else:
            xr = self.augment(real)
            if recon:
                lr_, decoded = self.D(xr, c_real, with_recon=True)
                rec = recon_error(xr, decoded)
            else:
                lr_ = self.D(xr, c_real)
            xf = self.augment(fake)
            lf = self.D(xf, c_fake)
            loss = F.softplus(-lr_).mean() + F.softplus(lf).mean()
            if rec is not None:
                loss = loss + self.recon_weight * rec.mean()
        stats = {"d_fake": lf.detach().float().mean()}
        if self.projected is not None:
            if joint:
                raise ValueError("the projected heads are not available in the joint (DP) D-step")
            d_proj = (F.softplus(-self._project(self.D, xr, c_real)).mean()
                      + F.softplus(self._project(self.D, xf, c_fake)).mean())
            loss = loss + self.projected_weight * d_proj
            stats["d_proj"] = d_proj.detach().float()
        stats["d_loss"] = loss.detach().float()
        if rec is not None and rec.numel():
            stats["d_recon"] = rec.detach().float().mean()
        if lr_.numel():  # a Poisson-sampled DP batch may hold no real image
            stats["d_real"] = lr_.detach().float().mean()
        return loss, stats, lr_.detach()

    def r1_penalty(
        self, real: torch.Tensor, c_real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lazy R1 term, already multiplied by the interval; returns (loss, ‖∇‖² mean).

        The gradient is taken at D's actual input, the augmented real image: the penalty
        smooths D where it sees real data, and no double backward runs through the
        augmentation's ``grid_sample`` (PyTorch has no derivative of its backward; StyleGAN2-ADA
        ships a custom op for it). With augmentation off the two forms are identical.
        """
        x = self.augment(real.detach().float()).detach().requires_grad_(True)
        logits = self.D(x, c_real)
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = grad.pow(2).sum(dim=(1, 2, 3))
        loss = penalty.mean() * (self.r1_gamma / 2) * self.r1_interval
        return loss, penalty.detach().mean()
