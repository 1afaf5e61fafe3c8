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
* ``family_significance = 0.01`` — the audit runs several significance tests on the same images
  (pixel copy rate, embedding copy rate, data copying, membership inference) and an honest
  generator must pass all of them, so the level is set for the audit as a whole: Holm's
  step-down procedure (valid under any dependence between the gates) tests the smallest
  p-value at 0.01/k, the next at 0.01/(k − 1), …, and stops at the first one it cannot reject.
  A generator whose images are as novel as new patients therefore fails one of these gates in
  at most one audit of a hundred, however many gates run. Why: with each gate at 0.01 on its
  own, the false alarms add up (≈ 1.7 % from the two rank tests alone, measured by simulation
  under the exchangeable null; more with the embedding view and the MIA gate), and the
  20-seed honest phantom sweep failed 2 of 14 honest sets at p = 0.008 (data copying) and
  p = 0.009 (copy rate), with no shift between the synthetic and held-out closeness
  distributions (Meehan's C_T +0.18 and −0.38): chance, not copying (BENCHMARKS.md, issue 14).
  What it costs: a gate fails at p < 0.0025–0.01 instead of < 0.01, so a few copies among many
  honest images are a weaker signal: 10 planted copies among 200 phantoms (120 held-out) sit
  at data-copying p ≈ 0.005–0.008 and no longer fail that gate. Copies made verbatim or nearly
  so fail ``near_copies``, which no significance level excuses (every planted edit in the
  benchmark, both data sets, still fails the audit).
  Two lines below are not p-values and sit outside the family: Meehan's C_T ≤ −3 (a weighted
  mean of per-cell Mann–Whitney Z's, null variance ≤ 1, so P(C_T ≤ −3) ≤ 0.0013) and the
  near-copy line, whose chance rate depends on the data (none of the honest phantom sets,
  2 of 40 honest 28-px radiograph sets: BENCHMARKS.md). An honest audit's total false-alarm
  rate is therefore ≈ 1 % plus that near-copy rate.
* ``max_copy_rate = 0.10`` — twice the novel base rate: a generator that reproduces even 5 % of
  its outputs from training images (plus its honest 5 %) fails, if the count is also
  significant against the exact null of a novel generator (beta-binomial over the noise of τ,
  in the Holm family above). τ comes from the held-out set, and with few held-out images it is
  noisy: at 20 of them an honest generator's copy rate exceeds 10 % in one audit of eight
  (in a third of them with the interpolated percentile used before); above the line but not
  significant, the gate passes with a note. The test never excuses a pixel copy rate that
  includes near-exact copies. With a few hundred held-out images the limit, not the test,
  decides.
* ``max_mia_auc = 0.60`` — black-box membership inference (GAN-Leaks style, distance to the
  nearest synthetic image) should be at chance (0.5). 0.6 is the usual "weak but real leak"
  line. The gate fails only when the AUC is above it *and* significantly above 0.5 (one-sided
  Mann–Whitney p of members vs non-members, Bonferroni over the views, in the Holm family
  above): with a few dozen held-out images the AUC of an honest generator swings by ±0.1.
* ``exact_copy_correlation = 0.995`` — Pearson correlation at which a synthetic image is a copy
  whatever τ is (a training image plus light noise sits at ≥ 0.99 at 32–256 px).
* ``near_copy_ratio = 0.5`` — a synthetic image whose residual 1 − r (after the transform
  search of ``node.audit.matcher``) is below half that of the *closest* held-out patient is a
  near-exact copy and fails the audit on its own, whatever the rate: no new patient came
  anywhere near that close. Verbatim, shifted, flipped, re-exposed copies sit at r ≈ 1.
* data copying — the per-image test: a synthetic image closer to the training set than *every*
  held-out patient has conformal p = 1/(n + 1). A generator as novel as new patients has that
  many by chance (beta-binomial, as for τ); more, at the Holm level above, fails.
* ``min_meehan_ct = -3`` — Meehan et al.'s C_T (cell-wise Mann–Whitney Z of synthetic vs
  held-out distances to training) below −3 also fails ``data_copying``: the synthetic images
  as a whole sit closer to the training images than new patients do.
* ``shifted_auc = 0.6`` — the blind baseline on raw pixels (training half A vs held-out, by
  closeness to half B) at or above this, with its CI above 0.5, is reported as "held-out set
  shifted". The copy and MIA comparisons are on histogram-equalised images, so an exposure or
  window difference between the splits does not fail an honest generator; the MIA gate also
  passes when the MIA AUC is not above that baseline.
* ``max_shift = 4`` / ``zooms`` — the transform search: ±4 px, crops down to 1/1.16 ≈ 86 % of
  the side (see ``node.audit.matcher``).
* ``max_synthetic = None`` / ``max_real = None`` — every image is audited. A limit audits a
  seeded random subset and the summary states ``copy_fraction_upper_95``, the 95 % upper
  bound on the copy fraction of the whole export (Clopper–Pearson).

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
    max_train_with_copy: float | None = None
    """Optional gate on the fraction of training images that have at least one copy."""
    max_mia_auc: float | None = 0.60
    """Gate on the larger of the pixel and embedding membership-inference AUCs."""
    max_epsilon: float | None = None
    """Optional gate on the DP ε spent (fails if a limit is set and training was not DP)."""
    near_copy_ratio: float = 0.5
    """Residual ratio to the closest held-out patient below which an image is a near copy."""
    family_significance: float = 0.01
    """Holm family-wise level over the p-value gates: an honest audit fails ≤ this often."""
    min_meehan_ct: float | None = -3.0
    meehan_cells: int = 20
    shifted_auc: float = 0.6
    max_shift: int = 4
    zooms: tuple[float, ...] = (1.0, 1.04, 1.08, 1.12, 1.16)
    max_synthetic: int | None = None
    max_real: int | None = None
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
        if self.max_epsilon is not None and self.max_epsilon <= 0:
            raise ValueError(f"max_epsilon must be > 0, got {self.max_epsilon}")
        if self.max_mia_auc is not None and not 0.5 <= self.max_mia_auc <= 1.0:
            raise ValueError(f"max_mia_auc must be in [0.5, 1], got {self.max_mia_auc}")
        if any(v is not None and v < 10 for v in (self.max_synthetic, self.max_real)) or \
                self.min_heldout < 5:
            raise ValueError("max_synthetic/max_real must be ≥ 10 (or unset) and "
                             "min_heldout ≥ 5")
        if not 0.0 < self.near_copy_ratio < 1.0:
            raise ValueError(f"near_copy_ratio must be in (0, 1), got {self.near_copy_ratio}")
        if not 0.0 < self.family_significance < 1.0:
            raise ValueError(f"family_significance must be in (0, 1), got "
                             f"{self.family_significance}")
        if self.max_shift < 0 or self.meehan_cells < 2:
            raise ValueError("max_shift must be ≥ 0 and meehan_cells ≥ 2")
        if not self.zooms or any(not 1.0 <= z < 2.0 for z in self.zooms):
            raise ValueError(f"zooms must be in [1, 2), got {self.zooms}")
