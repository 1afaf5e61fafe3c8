"""Results of a reader study: per reader and pooled, with 95 % confidence intervals.

Accuracy is a binomial proportion; its CI is Wilson's score interval, which stays inside
[0, 1] and keeps close to nominal coverage at the small counts a reader study has (a reader
rarely looks at more than a few hundred images), unlike the normal approximation.

Pooled numbers add every finished reader's answers. Readers share the images, so pooled
answers are not independent (readers agree on the same hard images) and Wilson's interval
would be too narrow. With two or more finished readers a pooled CI is therefore the wider of
Wilson's and a cluster bootstrap that resamples *images* with all their answers
(:func:`cluster_bootstrap_ci`); it still treats the readers as fixed, which the summary says
(``pooled_ci_note``).

>>> lo, hi = wilson(53, 100); round(lo, 3), round(hi, 3)
(0.433, 0.625)
>>> verdict(Proportion.of(53, 100))
'readers could not tell them apart: accuracy 0.53 [0.43, 0.62]'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959963984540054
MAX_NULL_CI_WIDTH = 0.2
"""Widest 95 % CI (≈ 100 answers) around 0.5 that still counts as "could not tell them apart"."""
N_BOOT = 2000
POOLED_CI_NOTE = ("pooled CI: wider of Wilson and a bootstrap over images (readers share them); "
                  "readers are taken as fixed")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (n ≥ 1)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 ≤ k ≤ n and n ≥ 1, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """k of n, with its estimate and Wilson 95 % CI (all None when n is 0)."""

    k: int
    n: int
    value: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, k: int, n: int) -> Proportion:
        if n == 0:
            return cls(0, 0, None, None, None)
        lo, hi = wilson(k, n)
        return cls(k, n, k / n, lo, hi)

    def text(self) -> str:
        if self.value is None:
            return "–"
        return f"{self.value:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"


@dataclass(frozen=True)
class Answer:
    """One answer joined with the truth, as the statistics need it (no image, no reader)."""

    truth: str          # "real" or "synthetic"
    call: str           # what the reader said: "real" or "synthetic"
    true_class: str | None
    class_call: str | None
    confidence: int | None
    item: int = -1      # the study's item number: pooled CIs resample images, not answers


@dataclass(frozen=True)
class ReaderResult:
    answered: int
    total: int
    accuracy: Proportion
    synthetic_called_real: Proportion
    real_called_synthetic: Proportion
    class_agreement_synthetic: Proportion
    class_agreement_real: Proportion
    mean_confidence: float | None
    verdict: str

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.answered >= self.total


def verdict(accuracy: Proportion) -> str:
    """The result in words: 0.5 inside the CI means readers could not tell real from synthetic,
    but only if the CI is narrow enough to have excluded a real difference
    (:data:`MAX_NULL_CI_WIDTH`); a wide CI around 0.5 says the study was too small.

    >>> verdict(Proportion.of(9, 16))
    'too few answers to tell: accuracy 0.56 [0.33, 0.77]; about 100 images per reader narrow it'
    """
    if accuracy.value is None or accuracy.ci_low is None or accuracy.ci_high is None:
        return "no answers yet"
    numbers = f"accuracy {accuracy.text()}"
    if accuracy.ci_low > 0.5:
        return f"readers told real from synthetic better than chance: {numbers}"
    if accuracy.ci_high < 0.5:
        return ("readers took synthetic for real and real for synthetic more often than chance: "
                f"{numbers}")
    if accuracy.ci_high - accuracy.ci_low > MAX_NULL_CI_WIDTH:
        return f"too few answers to tell: {numbers}; about 100 images per reader narrow it"
    return f"readers could not tell them apart: {numbers}"


def cluster_bootstrap_ci(hits: Sequence[tuple[int, bool]], n_boot: int = N_BOOT,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % CI of a proportion whose answers cluster by image: images are drawn with
    replacement, each bringing all of its answers.

    >>> lo, hi = cluster_bootstrap_ci([(i, i % 2 == 0) for i in range(40)] * 3)
    >>> bool(lo < 0.5 < hi), bool(hi - lo > 0.25)  # 40 images, not 120 independent answers
    (True, True)
    """
    import numpy as np

    items = sorted({i for i, _ in hits})
    index = {item: j for j, item in enumerate(items)}
    k = np.zeros(len(items))
    m = np.zeros(len(items))
    for item, hit in hits:
        m[index[item]] += 1
        k[index[item]] += hit
    draws = np.random.default_rng(seed).integers(0, len(items), size=(n_boot, len(items)))
    ratios = k[draws].sum(axis=1) / m[draws].sum(axis=1)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return float(lo), float(hi)


def _share(hits: Sequence[tuple[int, bool]], clustered: bool) -> Proportion:
    p = Proportion.of(sum(h for _, h in hits), len(hits))
    if not clustered or p.ci_low is None or p.ci_high is None:
        return p
    lo, hi = cluster_bootstrap_ci(hits)
    return Proportion(p.k, p.n, p.value, min(p.ci_low, lo), max(p.ci_high, hi))


def reader_result(answers: Sequence[Answer], total: int, clustered: bool = False
                  ) -> ReaderResult:
    """Every number of one reader, or of several readers' answers pooled (``clustered``: CIs
    allow for readers sharing images)."""
    syn = [a for a in answers if a.truth == "synthetic"]
    real = [a for a in answers if a.truth == "real"]
    syn_cls = [a for a in syn if a.class_call is not None and a.true_class is not None]
    real_cls = [a for a in real if a.class_call is not None and a.true_class is not None]
    conf = [a.confidence for a in answers if a.confidence is not None]
    acc = _share([(a.item, a.call == a.truth) for a in answers], clustered)
    return ReaderResult(
        answered=len(answers), total=total, accuracy=acc,
        synthetic_called_real=_share([(a.item, a.call == "real") for a in syn], clustered),
        real_called_synthetic=_share([(a.item, a.call == "synthetic") for a in real], clustered),
        class_agreement_synthetic=_share(
            [(a.item, a.class_call == a.true_class) for a in syn_cls], clustered),
        class_agreement_real=_share(
            [(a.item, a.class_call == a.true_class) for a in real_cls], clustered),
        mean_confidence=round(sum(conf) / len(conf), 3) if conf else None,
        verdict=verdict(acc),
    )


def pooled_result(per_reader: Iterable[tuple[ReaderResult, Sequence[Answer]]]) -> ReaderResult:
    """Pooled over *finished* readers only: a half-done reader would tilt the numbers and
    showing their running accuracy would unblind them."""
    answers: list[Answer] = []
    total = finished = 0
    for result, ans in per_reader:
        if result.finished:
            answers.extend(ans)
            total += result.total
            finished += 1
    return reader_result(answers, total, clustered=finished >= 2)


def result_dict(r: ReaderResult) -> dict[str, Any]:
    """JSON form: what the page and the summary show."""
    d = asdict(r)
    d["finished"] = r.finished
    return d


def summary(*, study: str, synthetic_name: str, synthetic_sha256: str, n_real: int,
            n_synthetic: int, class_names: Sequence[str],
            readers: Sequence[ReaderResult], pooled: ReaderResult, created_at: str
            ) -> dict[str, Any]:
    """The numbers-only summary that may leave the site: no image, no answer per image, and no
    reader's name (readers are numbered in the order the admin named them)."""
    return {
        "kind": "reader_study",
        "study": study,
        "synthetic_name": synthetic_name,
        "synthetic_sha256": synthetic_sha256,
        "images": {"real": n_real, "synthetic": n_synthetic},
        "class_names": list(class_names),
        "readers_named": len(readers),
        "readers_finished": sum(r.finished for r in readers),
        "pooled": result_dict(pooled),
        "pooled_ci_note": POOLED_CI_NOTE,
        "per_reader": {f"reader-{i + 1}": result_dict(r) for i, r in enumerate(readers)},
        "verdict": pooled.verdict,
        "created_at": created_at,
    }
