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
        logits = disc(self.augment(fake), c)
        adv = F.softplus(-logits).mean()
        stats = {"g_adv": adv.detach().float()}
        loss = adv
        if self.spine is not None and self.spine_gamma > 0:
            s_logits = self.spine(self.spine_preprocess(fake.float()))
            ce = F.cross_entropy(s_logits, c.long())
            loss = loss + self.spine_gamma * ce
            stats["g_spine_ce"] = ce.detach().float()
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
        if joint:
            x = torch.cat([self.augment(real), self.augment(fake)])
            logits = self.D(x, torch.cat([c_real, c_fake]))
            n = real.shape[0]
            lr_, lf = logits[:n], logits[n:]
            per_example = torch.cat([F.softplus(-lr_), F.softplus(lf)])
            loss = per_example.mean()
        else:
            lr_ = self.D(self.augment(real), c_real)
            lf = self.D(self.augment(fake), c_fake)
            loss = F.softplus(-lr_).mean() + F.softplus(lf).mean()
        stats = {"d_loss": loss.detach().float(), "d_fake": lf.detach().float().mean()}
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
