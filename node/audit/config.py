"""`AuditConfig`: the memorization audit's thresholds and gates, with their reasons.

Defaults, and why:

* ``copy_percentile = 95`` — Dar et al.: the copy threshold τ is calibrated on *real* data
  only, as the 95th percentile of the nearest-neighbour similarity between held-out real images
  and the training images. A synthetic image closer to its nearest training image than 95 % of
  genuinely new patients are is called a copy. By construction an honest generator whose
  samples are as novel as new patients has an expected copy rate of 5 %
  (``1 − copy_percentile/100``); anything above that is excess closeness to training data.
  τ is the conformal order statistic ⌈q·(n+1)⌉ of the n held-out values, so the base rate is
  exactly (n + 1 − k)/(n + 1) ≤ 5 % under exchangeability.
* ``max_copy_rate = 0.10`` — twice that base rate: a generator that reproduces even 5 % of
  its outputs from training images (plus its honest 5 %) fails.
* ``copy_significance = 0.05`` — τ comes from the held-out set, and with few held-out images it
  is noisy: at 20 of them an honest generator's copy rate exceeds 10 % in one audit of eight
  (in a third of them with the interpolated percentile used before). A copy-rate gate above
  its limit therefore fails only if the count is also significant against the exact null of a
  novel generator (beta-binomial over the noise of τ, p below this); otherwise it passes with
  a note. The test never excuses a pixel copy rate that includes exact copies
  (``exact_copy_correlation``). With a few hundred held-out images the limit, not the test,
  decides.
* ``max_mia_auc = 0.60`` — black-box membership inference (GAN-Leaks style, distance to the
  nearest synthetic image) should be at chance (0.5). 0.6 is the usual "weak but real leak"
  line. The gate fails only when the AUC is above it *and* its bootstrap 95 % CI excludes
  0.5: with a few dozen held-out images the AUC of an honest generator swings by ±0.1.
* ``exact_copy_correlation = 0.995`` — Pearson correlation at which a synthetic image is a copy
  whatever τ is (a training image plus light noise sits at ≥ 0.99 at 32–256 px).
* ``max_synthetic = 2000`` / ``max_real = 5000`` — the audit compares every synthetic image with
  every training image; random subsets (seeded, reported) keep it to minutes on a CPU.

Gates set to ``None`` are reported but never fail the audit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditConfig:
    encoder: str = "domain"
    """Embedding for the second nearest-neighbour view (``shared.metrics.encoders``); "none"
    audits in pixel space only."""
    copy_percentile: float = 95.0
    exact_copy_correlation: float = 0.995
    max_copy_rate: float | None = 0.10
    """Gate on the pixel-correlation copy rate."""
    max_copy_rate_embedding: float | None = 0.10
    """Gate on the embedding copy rate (same calibration, in the encoder's space)."""
    copy_significance: float = 0.05
    """A copy-rate gate over its limit fails only if p (novel-generator null) is below this."""
    max_train_with_copy: float | None = None
    """Optional gate on the fraction of training images that have at least one copy."""
    max_mia_auc: float | None = 0.60
    """Gate on the larger of the pixel and embedding membership-inference AUCs."""
    max_epsilon: float | None = None
    """Optional gate on the DP ε spent (fails if a limit is set and training was not DP)."""
    max_synthetic: int = 2000
    max_real: int = 5000
    min_heldout: int = 20
    """Fewer held-out real images cannot calibrate τ; the audit refuses rather than guess."""
    n_boot: int = 1000
    pairs_in_report: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if not 50.0 <= self.copy_percentile < 100.0:
            raise ValueError(f"copy_percentile must be in [50, 100), got {self.copy_percentile}")
        if not 0.0 < self.exact_copy_correlation <= 1.0:
            raise ValueError("exact_copy_correlation must be in (0, 1]")
        for name in ("max_copy_rate", "max_copy_rate_embedding", "max_train_with_copy"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 < self.copy_significance < 1.0:
            raise ValueError(f"copy_significance must be in (0, 1), got {self.copy_significance}")
        if self.max_epsilon is not None and self.max_epsilon <= 0:
            raise ValueError(f"max_epsilon must be > 0, got {self.max_epsilon}")
        if self.max_mia_auc is not None and not 0.5 <= self.max_mia_auc <= 1.0:
            raise ValueError(f"max_mia_auc must be in [0.5, 1], got {self.max_mia_auc}")
        if self.max_synthetic < 10 or self.max_real < 10 or self.min_heldout < 5:
            raise ValueError("max_synthetic/max_real must be ≥ 10 and min_heldout ≥ 5")
