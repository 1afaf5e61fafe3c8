"""What this site is willing to do for a coordinator: set by its admin, never by a request.

Why a policy of its own: the coordinator chooses *what* to ask (a bundle, an evaluation), but
how much privacy a hospital spends, whether it trains at all, how often its real test images
may be scored and how long its machines may run are the hospital's decisions. A request that
asks for more is refused with the reason (signed, :func:`node.federation.refusal`).

Where it comes from (the one config resolver, :func:`shared.config.resolve`): this table's
defaults, then ``SITE/site.toml`` (``[policy]`` and ``[audit]`` tables, or the file named by
the node config ``policy-file``), then the policy keys the admin passed to ``synthlearn node
join`` (node config, e.g. ``allow-train=true``). Nothing in a request reaches it.

Example ``SITE/site.toml``::

    [policy]
    allow_train = true           # off unless the admin turns it on
    require_dp = true
    max_epsilon_per_run = 8.0
    lifetime_epsilon = 30.0      # the privacy ledger refuses work beyond this
    max_evaluations_per_run = 2
    max_evaluations_per_day = 10
    max_candidates = 32          # candidate CNNs one evaluation may choose among
    batchnorm = "either"         # offer each candidate with this site's BatchNorm statistics too
    max_pretrain_images = 50000  # round 2: other sites' synthetic images (0 = no round 2)
    max_train_minutes = 60       # GAN loop
    max_spine_minutes = 20       # SpineGAN's classifier S
    max_baseline_minutes = 20    # the local real baseline CNN
    baseline_recipe = "site"     # the baseline CNN's recipe is this file's [classifier] table

    [classifier]                 # this site's yardstick (what `node baseline` trains)
    width = 32

    [audit]                      # the memorization-audit gates (node.audit.config)
    max_copy_rate = 0.05
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.protocol import DEFAULT_SITE_CANDIDATES

BASELINE_RECIPE_CHOICES = ("site", "request")
"""Who sets the local real baseline CNN's recipe (``baseline_recipe``)."""
BATCHNORM_CHOICES = ("either", "sent")
"""The ``batchnorm`` values a policy may set (modes of ``node.selection.BATCHNORM``; its
measured-only "site" mode is not offered)."""
POLICY_FILE = "site.toml"
"""Default policy file inside the site folder."""
SITE_TABLES = ("audit", "classifier", "policy")
"""The tables a site TOML holds; anything else in it (``[classifer]``) is a typo that would
silently leave the admin's settings at their defaults, so it stops with the file's name."""


@dataclass(frozen=True)
class SitePolicy:
    """The admin's limits. Defaults are the conservative choice (DESIGN §2: the site stays in
    control): no training on request, DP required, few evaluations; ``batchnorm`` is the one
    exception (its docstring says why)."""

    allow_train: bool = False
    """Train a GAN when the coordinator asks (``train`` mode). Off unless the admin says so."""
    require_dp: bool = True
    """A training request without DP (no ``dp_epsilon``) is refused."""
    max_epsilon_per_run: float = 10.0
    """The largest ε one training request may spend."""
    lifetime_epsilon: float | None = None
    """Total ε (basic composition over the privacy ledger) this site will ever spend on DP
    training; a request that would go past it is refused. None: no lifetime cap."""
    max_evaluations_per_run: int = 2
    """Evaluation requests answered per run tag (a resumed run may ask again once)."""
    max_evaluations_per_day: int = 10
    """Evaluation requests answered in any 24 hours, all coordinators and runs together."""
    max_candidates: int = DEFAULT_SITE_CANDIDATES
    """Most candidate CNNs one weights file may hold. The site picks its ensemble among them
    on its real train split (:mod:`node.selection`) and signs which ones it picked: each pick
    is a few bits about that split, so this caps what one evaluation can reveal (with K
    candidates and ≤ 5 picks, ≤ 5·log2(K) bits, 25 at 32; ≤ 5·log2(2K), 30, under
    ``batchnorm = "either"``). 1 = accept single networks only, scored as sent."""
    batchnorm: str = "either"
    """How the choice treats the candidates' BatchNorm statistics (:mod:`node.selection`):
    "either" offers each candidate as sent and with statistics re-estimated on this site's
    real train images (images only, no labels), and the choice keeps whichever scores better
    there; "sent" scores the candidates as they came. "either" doubles what the choice
    picks among (≤ 5·log2(2K) bits per evaluation: 30 at 32) and lets a crafted candidate's
    test scores depend on the train split's image statistics, a channel only the evaluation
    limits bound (SECURITY.md § Choosing among candidate CNNs). The one policy default that
    is not the most conservative value: it is what lifts the DP utility. "sent", or
    ``max_candidates = 1``, closes that channel."""
    max_pretrain_images: int = 50_000
    """Most synthetic images of other sites a round-2 request may bring for this site's GAN to
    pretrain on (:mod:`shared.pretrain_set`); 0 = this site takes no part in a second round.
    They are other sites' exported images, never real ones, and pretraining on them spends
    none of this site's ε."""
    max_train_minutes: float = 60.0
    """Cap on the GAN training loop per request, whatever the request asks (a round-2
    request's pretraining stage has the same cap, so it runs at most twice this)."""
    max_spine_minutes: float = 30.0
    """Cap on SpineGAN's abnormality classifier S per request."""
    max_baseline_minutes: float = 30.0
    """Cap on the local real baseline CNN trained on request."""
    baseline_recipe: str = "site"
    """Whose recipe trains the local real baseline CNN on request. "site": this site's own,
    the ``[classifier]`` table of the site TOML over :data:`node.baseline.BASELINE_DEFAULTS`,
    which is what ``synthlearn node baseline`` trains; the request's ``baseline-config`` is
    not used (but for its ``classes``). "request": the coordinator's ``baseline-config``
    (capped in time as above). The GAN-train CNN (node.quality) trains the same recipe,
    capped at one minute.
    The baseline is the yardstick every "gained by joining" claim is measured against, and a
    site signs it: under "request" a coordinator could ask for one epoch of a width-1 network
    and get a signed, honest-looking gain. Set "request" only to trade the site's own
    recipe for the coordinator's budget (the phantom demo does)."""
    eval_threshold: float | None = None
    """Decision threshold for sensitivity/specificity in evaluation replies. None: replies hold
    AUC and its CI only. The coordinator can never set it (weights carrying one are refused)."""

    def __post_init__(self) -> None:
        for name in ("max_epsilon_per_run", "max_train_minutes", "max_spine_minutes",
                     "max_baseline_minutes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lifetime_epsilon is not None and self.lifetime_epsilon <= 0:
            raise ValueError(f"lifetime_epsilon must be > 0, got {self.lifetime_epsilon}")
        for name in ("max_evaluations_per_run", "max_evaluations_per_day"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.max_pretrain_images <= 1_000_000:
            raise ValueError(f"max_pretrain_images must be in 0..1000000, got "
                             f"{self.max_pretrain_images}")
        if not 1 <= self.max_candidates <= 64:
            raise ValueError(f"max_candidates must be in 1..64 (1 = single networks only), "
                             f"got {self.max_candidates}")
        if self.batchnorm not in BATCHNORM_CHOICES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_CHOICES)}, got "
                             f"{self.batchnorm!r}")
        if self.baseline_recipe not in BASELINE_RECIPE_CHOICES:
            raise ValueError(f"baseline_recipe must be one of "
                             f"{', '.join(BASELINE_RECIPE_CHOICES)}, got {self.baseline_recipe!r}")
        if self.eval_threshold is not None and not 0.0 < self.eval_threshold < 1.0:
            raise ValueError(f"eval_threshold must be in (0, 1), got {self.eval_threshold}")


POLICY_KEYS = frozenset(f.name for f in dataclasses.fields(SitePolicy))
"""Node-config keys (hyphens as underscores) that set the policy rather than the node."""


def policy_path(site_dir: Path, policy_file: str | Path | None = None) -> Path:
    return Path(policy_file) if policy_file else Path(site_dir) / POLICY_FILE


def check_site_tables(path: Path) -> None:
    """Refuse a site TOML with a top-level table or key outside :data:`SITE_TABLES`."""
    from shared.config import read_table
    from shared.errors import ConfigError

    unknown = sorted(set(read_table(Path(path))) - set(SITE_TABLES))
    if unknown:
        raise ConfigError(f"unknown table {', '.join(f'[{k}]' for k in unknown)} (known: "
                          f"{', '.join(f'[{k}]' for k in SITE_TABLES)})", path)


def load_policy(site_dir: Path, policy_file: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> SitePolicy:
    """Defaults → the site TOML's ``[policy]`` → the admin's node-config overrides."""
    from shared.config import resolve

    path = policy_path(site_dir, policy_file)
    if policy_file and not path.is_file():
        from shared.errors import ConfigError

        raise ConfigError("policy file not found (node-config policy-file)", path)
    if path.is_file():
        check_site_tables(path)
    base = resolve(SitePolicy, toml=path if path.is_file() else None, table="policy")
    if not overrides:
        return base
    return resolve(SitePolicy, defaults={**dataclasses.asdict(base), **overrides})


def load_audit_config(site_dir: Path, policy_file: str | Path | None = None) -> Any:
    """The admin's memorization-audit gates (``[audit]`` of the site TOML), for audits run
    on a coordinator's request: the same gates as ``node audit --config site.toml``."""
    from node.audit.config import AuditConfig
    from shared.config import resolve

    path = policy_path(site_dir, policy_file)
    if path.is_file():
        check_site_tables(path)
    return resolve(AuditConfig, toml=path if path.is_file() else None, table="audit")
