"""Local real baseline: the CNN a hospital can train on its own real images alone.

It is the yardstick for everything synthetic: the report sets the pooled-synthetic AUC on
this site's test split beside this number. Training reads only the *train* split (early
stopping on a part carved from it, inside :func:`shared.cnn_train.train_classifier`); the
test split is opened only after training has returned.

Writes ``SITE/metrics/baseline.json`` (unsigned numbers-only payload, signed later by the
export step) and ``SITE/metrics/baseline-cnn.npz`` (weights, npz, stays on site unless the
admin chooses otherwise), plus the resolved config.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from node.errors import StoreError
from shared.cnn_train import ClassifierConfig
from shared.config import to_dict, write_resolved
from shared.files import atomic_write_bytes
from shared.vocabulary import class_ids

BASELINE_KIND = "local_real_baseline"
WITH_SYNTHETIC_KIND = "local_real_plus_synthetic"
FEW_STEPS = 200
"""An early-stopped baseline under this many optimizer steps gets a warning. On a 120-image
site the CNN stopped after 20-40 steps, 0.10-0.22 AUC below the same site trained 200 steps
(BENCHMARKS.md, § Is the local CNN a fair opponent?): a yardstick that low makes joining
look better than it is."""


BASELINE_DEFAULTS: dict[str, Any] = {"min_steps": FEW_STEPS}
"""The site's yardstick recipe: :class:`shared.cnn_train.ClassifierConfig`'s defaults with
these changed. At least 200 optimizer steps, because early stopping on a small site's few
validation images ended its CNN after 20-40 steps, 0.10-0.22 AUC below the same CNN trained
200 steps; on larger sites the floor changed nothing measurable (BENCHMARKS.md, § Is the local
CNN a fair opponent?, and § A step floor for the site's yardstick)."""


def site_recipe(site_dir: Path, toml: Path | None = None, ctx: Any = None) -> ClassifierConfig:
    """The recipe of this site's local real baseline: :data:`BASELINE_DEFAULTS`, then the
    ``[classifier]`` table of ``toml`` (else of ``SITE/site.toml`` when there is one), then the
    CLI options in ``ctx``. The one resolver for `node baseline` and for a baseline trained
    on a coordinator's request under the site policy ``baseline_recipe = "site"``."""
    from node.site_policy import check_site_tables, policy_path
    from shared.config import resolve

    path: Path | None = Path(toml) if toml is not None else None
    if toml is None and (site_toml := policy_path(site_dir)).is_file():
        check_site_tables(site_toml)  # a `[classifer]` typo must not leave the defaults silently
        path = site_toml
    return resolve(ClassifierConfig, ctx, toml=path, table="classifier",
                   defaults=BASELINE_DEFAULTS)


def few_steps_warning(record: dict[str, Any]) -> str | None:
    """One line for the admin when early stopping ended the baseline after very few steps."""
    steps = record.get("optimizer_steps")
    if record.get("stopped") != "early-stopping" or not isinstance(steps, int) or \
            steps >= FEW_STEPS:
        return None
    return (f"early stopping ended this CNN after {steps} optimizer steps (on "
            f"{record.get('n_val')} validation images): on a small site that can understate "
            f"what its own data gives. Set min_steps = {FEW_STEPS} (the default) in the "
            "[classifier] table of the recipe's TOML (--config, else SITE/site.toml), or pass "
            f"--min-steps {FEW_STEPS}, and run it again")


def run_baseline(
    site_dir: Path,
    cfg: ClassifierConfig,
    classes: str = "binary",
    progress: bool = True,
    n_boot: int = 1000,
    device: str | None = None,
    with_synthetic: Path | None = None,
    synthetic_share: float = 0.5,
    recipe: str = "site",
) -> dict[str, Any]:
    """Train on the site's real train split, score its real test split, save both.

    ``with_synthetic`` (a synthetic set folder, e.g. the pooled set the coordinator sends
    back): the other way a site gains by joining — its CNN trains on its real images plus
    synthetic ones making up ``synthetic_share`` of the mix, early-stopped on real images only.
    Written next to (never over) the real-only baseline, as ``baseline-with-synthetic.*``.

    ``recipe`` says, in the record the site signs, who chose ``cfg``: "site" (its admin,
    :func:`site_recipe`) or "request" (a coordinator, under ``baseline_recipe = "request"``).
    """
    from node.evaluate import score_test_split
    from node.store import SiteStore
    from shared import __version__
    from shared.cnn_train import train_classifier
    from shared.files import sha256_file
    from shared.weights_io import save_weights

    if classes not in ("binary", "lesion"):
        raise StoreError(f"classes must be 'binary' or 'lesion', got {classes!r}")
    site_dir = Path(site_dir)
    store = SiteStore.open(site_dir)
    names = store.class_names(classes)  # type: ignore[arg-type]
    images, labels = store.load("train", classes)  # type: ignore[arg-type]
    if len(labels) == 0:
        raise StoreError(f"{site_dir}: the site store has no training images")
    val_eligible = None
    n_synthetic = 0
    if with_synthetic is not None:
        images, labels, val_eligible = _mix_in(Path(with_synthetic), images, labels, names,
                                               synthetic_share, cfg.seed)
        n_synthetic = int((~val_eligible).sum())
    t0 = time.monotonic()
    trained = train_classifier(images, labels, len(names), cfg, progress=progress,
                               device=device, val_eligible=val_eligible)
    train_seconds = time.monotonic() - t0
    del images, labels
    # Only now is the test split read, by a function training code never calls.
    scores = score_test_split(trained.model, site_dir, classes, trained.threshold, n_boot,
                              cfg.seed)
    out_dir = site_dir / "metrics"
    stem = "baseline" if with_synthetic is None else "baseline-with-synthetic"
    weights = out_dir / f"{stem}-cnn.npz"
    trained_on = ("local real train split" if with_synthetic is None else
                  f"local real train split + {n_synthetic} synthetic images from "
                  f"{Path(with_synthetic).name}")
    save_weights(
        trained.model.cpu(),
        weights,
        {"classes": classes, "class_names": names, "class_ids": class_ids(names),
         "threshold": trained.threshold,
         "trained_on": trained_on, "config": to_dict(cfg)},
    )
    write_resolved(cfg, out_dir, f"{stem}-config.json")
    record: dict[str, Any] = {
        "kind": BASELINE_KIND if with_synthetic is None else WITH_SYNTHETIC_KIND,
        "trained_on": trained_on,
        "n_synthetic": n_synthetic,
        **scores,
        "n_train": trained.n_train,
        "n_val": trained.n_val,
        "threshold": trained.threshold,
        "best_epoch": trained.val_metrics.get("best_epoch"),
        "epochs_run": len(trained.history),
        "optimizer_steps": trained.steps,
        "stopped": trained.stopped,
        "device": trained.device,
        "train_seconds": round(train_seconds, 2),
        "weights_sha256": sha256_file(weights),
        "config": to_dict(cfg),
        "recipe": recipe,
        "software_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(
        out_dir / f"{stem}.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    )
    return record


def _mix_in(folder: Path, images: Any, labels: Any, names: list[str], share: float,
            seed: int) -> tuple[Any, Any, Any]:
    """Real + synthetic training rows and the mask of real rows (checked before training)."""
    from shared.cnn_train import mix_real_synthetic
    from shared.synthetic import SyntheticSetError, load_matching

    if not 0.0 < share < 1.0:
        raise StoreError(f"--synthetic-share must be in (0, 1), got {share}")
    try:
        syn = load_matching(folder, names, int(images.shape[1]))
    except SyntheticSetError as exc:
        raise StoreError(str(exc)) from None
    return mix_real_synthetic(images, labels, syn.images, syn.labels, share, seed=seed)
