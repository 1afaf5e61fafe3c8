"""Multi-site reference benchmark (issue 4): does pooling synthetic images beat going it alone?

Scenario (everything in one process; the Flower wiring is benchmarked elsewhere):

1. **Partition** the PneumoniaMNIST *train* split (4682 images, 28², 0 normal / 1 pneumonia)
   into three non-IID sites with different sizes and class mixes. The partition is a seeded
   permutation per class (``--seed``, default 0), then consecutive slices:

   ======  ========  ===========  =======  =========================================
   site    normal    pneumonia    total    story
   ======  ========  ===========  =======  =========================================
   a         300       2600        2900    large referral hospital, 90 % pneumonia
   b         650        650        1300    mid-size hospital, balanced
   c         260        200         460    small clinic (≤ 500 images), 43 % pneumonia
   ======  ========  ===========  =======  =========================================

   (1210 of 1213 normal and 3450 of 3469 pneumonia images are used; the rest are left out.)
   Each site's own real test split is a seeded, stratified 20 % of its images
   (``Accepted.split`` forces it). The global ``val`` split (524 images) is the **common real
   test set**; nothing trains on it. PneumoniaMNIST has no patient ids, so each image is its
   own "patient": images of one child may land on both sides of a site's split (a caveat the
   MedMNIST splits share).
2. Per site: **local real** CNN (site train split → site test), **local GAN**
   (``node.training.train`` then ``node.generate.generate``), **own synthetic** CNN.
3. **Pooled synthetic** CNN on the union of the three synthetic sets, scored on every site's
   test split and on the common set. **Centralised real** CNN (upper bound) on the union of
   the three sites' real train splits.
4. One table (rows sites; columns local real / own synthetic / pooled synthetic / centralised
   real; AUC [95 % bootstrap CI]); utility ratio pooled ÷ centralised; wall-clock per stage;
   peak RSS; ``roc.png``; ``samples-site-<x>.png``; ``results.json``. Pooled − local real on
   each site's own test is also given as DeLong's *paired* test (both CNNs score the same
   images; ``pooled_arms.<arm>.paired_vs_local``), and every arm's test scores go to
   ``scores.npz`` so that two runs can be paired later: ``benchmarks/paired_runs.py`` compares
   a ``--gan-set`` lever's run with the default's of the same ``--seed`` (same test images).
5. **Augmentation** (Finlayson et al., Gupta et al.): per site, its real train split plus pooled
   synthetic images making up ``--augment-share`` of the mix (0 turns it off), early-stopped on
   real images only, next to its local-real CNN.
6. **Memorization audit** of each site's synthetic set against its real train / test split
   (``node.audit.run_audit``, default gates): copy rates, MIA AUC, split-bias baseline, ε.

Every CNN uses the same recipe (``shared.cnn_train``; the CNN flags below), early-stopped on
a validation part of its own training source; test sets are scored only after training. The
local-real CNNs of a ``--small-train`` run also train at least 200 steps
(``--local-min-steps``): without that floor a 120-image site's CNN stopped after 20-40 steps
and joining looked far better than it was (``benchmarks/local_recipe.py``).

Run::

    python benchmarks/multisite.py --out /tmp/multisite            # full run
    python benchmarks/multisite.py --out /tmp/ms-quick --quick     # plumbing check, ~3 min
    python benchmarks/multisite.py --out /tmp/ms-small --small-train 120 ...  # see partition()
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
LESION = {0: "No finding", 1: "Pneumonia"}

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SiteSpec:
    name: str
    normal: int
    pneumonia: int
    story: str


SITES = (
    SiteSpec("a", 300, 2600, "large referral hospital, pneumonia-heavy"),
    SiteSpec("b", 650, 650, "mid-size hospital, balanced"),
    SiteSpec("c", 260, 200, "small clinic (<= 500 images)"),
)
SMALL_SITE = min(SITES, key=lambda s: s.normal + s.pneumonia)
"""The site with the fewest images: the issue's small-site target, and ``--small-train``."""
TEST_FRACTION = 0.2


def load_split(path: Path, split: str) -> tuple[U8, I64]:
    with np.load(path, allow_pickle=False) as d:
        return d[f"{split}_images"].astype(np.uint8), d[f"{split}_labels"].reshape(-1).astype(
            np.int64
        )


def partition(labels: I64, seed: int, small_train: int | None = None
              ) -> dict[str, dict[str, I64]]:
    """Indices into the train split per site, split into site train / site test (stratified).

    ``small_train`` keeps only that many of the small site's train images (stratified, the
    first of its seeded permutation) and its test split as it is: a clinic whose own data is
    far from enough, scored on the same 92 test images. The images left out go nowhere, so
    sites a and b and every test split are those of the default partition of this seed."""
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)}
    taken = {0: 0, 1: 0}
    out: dict[str, dict[str, I64]] = {}
    for spec in SITES:
        train_parts, test_parts = [], []
        for c, n in ((0, spec.normal), (1, spec.pneumonia)):
            idx = pools[c][taken[c] : taken[c] + n]
            if len(idx) < n:
                raise SystemExit(f"partition needs {n} images of class {c} for site {spec.name}")
            taken[c] += n
            k = round(TEST_FRACTION * n)
            test_parts.append(idx[:k])
            train_parts.append(idx[k:])
        if small_train is not None and spec is SMALL_SITE:
            have = sum(len(t) for t in train_parts)
            if not 2 <= small_train <= have:
                raise SystemExit(f"--small-train {small_train}: the small site has {have} "
                                 f"train images; give 2..{have}")
            keep = [max(1, round(small_train * len(t) / have)) for t in train_parts]
            train_parts = [t[:m] for t, m in zip(train_parts, keep, strict=True)]
        out[spec.name] = {"train": np.sort(np.concatenate(train_parts)),
                          "test": np.sort(np.concatenate(test_parts))}
    return out


def parse_exposures(text: str, site_names: list[str]) -> dict[str, float]:
    """``a=0.8,c=1.25`` → {site: exposure}; unnamed sites keep 1.0 (the images as stored)."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        if name not in site_names:
            raise ValueError(f"{name!r} is not a site ({', '.join(site_names)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: the exposure must be a number, e.g. {name}=0.8") from None
        if not 0.25 <= out[name] <= 4.0:
            raise ValueError(f"{item!r}: exposure must lie in [0.25, 4]")
    return out


def expose(images: U8, exposure: float) -> U8:
    """The images as another scanner would render them: intensity ** (1 / exposure), as the
    phantoms' per-site exposure (node.phantoms). 1.0 returns the array itself."""
    if exposure == 1.0:
        return images
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** (1.0 / exposure)).astype(np.uint8)
    return lut[images]


SMALL_SITE_LOCAL_MIN_STEPS = 200
"""Optimizer steps a local-real CNN trains at least with ``--small-train``: on 120 images the
shared recipe stopped after 20-40 steps, and the site looked 0.10-0.22 AUC weaker than it is."""


def resolve_local_min_steps(given: int | None, small_train: int | None) -> int:
    """``--local-min-steps``: as given, else the small-site floor with ``--small-train``, else
    0 (the default partition's local CNNs, comparable with earlier runs' stored scores)."""
    if given is None:
        return SMALL_SITE_LOCAL_MIN_STEPS if small_train is not None else 0
    if given < 0:
        raise ValueError(f"--local-min-steps must be ≥ 0, got {given}")
    return given


def write_site(site_dir: Path, images: U8, labels: I64, parts: dict[str, I64]) -> None:
    """Write one site store through the real StoreWriter (forced, stratified splits)."""
    from node.store import Accepted, StoreWriter

    if (site_dir / "site.json").exists():
        return
    with StoreWriter(site_dir, size=images.shape[1], test_fraction=TEST_FRACTION) as w:
        for split in ("train", "test"):
            batch = [
                Accepted(
                    image_id=f"pmnist-train-{i:05d}",
                    pixels=images[i],
                    lesion=LESION[int(labels[i])],
                    source_key=f"pneumoniamnist/train/{i:05d}",
                    patient_id=f"pmnist-{i:05d}",
                    split=split,
                )
                for i in parts[split].tolist()
            ]
            w.add_batch(batch)


class Clock:
    """Wall-clock per named stage."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name} …", flush=True)
        try:
            yield
        finally:
            self.stages[name] = round(time.monotonic() - t0, 2)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.stages[name]:.1f} s", flush=True)


def peak_rss_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"self_mb": round(own, 1), "children_mb": round(kids, 1)}


def audit_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """The memorization audit's headline numbers for one site (node.audit, default gates)."""
    pixel = summary["views"]["pixel"]
    emb = next((v for k, v in summary["views"].items() if k != "pixel"), None)
    return {
        "copy_rate_pixel": summary["copy_rate"],
        "copy_rate_embedding": emb["copy_rate"] if emb else None,
        "train_with_copy": summary["train_with_copy"],
        "exact_copies": summary["exact_copies"],
        "mia_auc_pixel": pixel["mia"],
        "mia_auc_embedding": emb["mia"] if emb else None,
        "split_bias_baseline_pixel": pixel.get("split_bias_baseline"),
        "epsilon_spent": (summary.get("dp") or {}).get("epsilon_spent"),
        "gates_passed": summary["gates_passed"],
        "failed_gates": [k for k, g in summary["gates"].items() if not g["passed"]],
    }


def fmt(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    return f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def plot_roc(
    path: Path, scores: dict[str, dict[str, Any]], tests: dict[str, tuple[U8, I64]],
    site_names: list[str],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    names = list(tests)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, tname in zip(axes[0], names, strict=True):
        y = tests[tname][1]
        site = tname.removeprefix("site-")
        if site in site_names:
            models = [(f"local-{site}", "local real"), (f"own-{site}", "own synthetic")]
        else:
            models = [(f"local-{s}", f"local real {s}") for s in site_names]
        models += [("pooled", "pooled synthetic"), ("centralised", "centralised real")]
        for key, label in models:
            if key not in scores or tname not in scores[key]["probs"]:
                continue
            p = scores[key]["probs"][tname]
            fpr, tpr, _ = roc_curve(y, p)
            auc = scores[key]["auc"][tname]["auc"]
            style = "--" if key.startswith("local") and site not in site_names else "-"
            ax.plot(fpr, tpr, style, label=f"{label} ({auc:.3f})", lw=1.4)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_title(tname)
        ax.set_xlabel("1 − specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(path: Path, real: tuple[U8, I64], synth: tuple[U8, I64], title: str,
                per_row: int = 10, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    rows: list[tuple[str, U8]] = []
    for source, (x, y) in (("real", real), ("synthetic", synth)):
        for c in (0, 1):
            idx = np.flatnonzero(y == c)
            pick = rng.choice(idx, size=min(per_row, len(idx)), replace=False)
            rows.append((f"{source} {LESION[c].lower()}", x[pick]))
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 0.9, len(rows) * 1.0),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(label, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TWINS = {"site": "-adabn", "either": "-either"}
"""``--adapt-bn``: the twin arms of every selected arm (``node.selection.BATCHNORM`` mode →
arm-name suffix), each from the same candidates as the arm."""


def selected_arm(pooled_x: U8, pooled_y: I64, cfg: Any, members: int,
                 tests: dict[str, tuple[U8, I64]], train_sets: dict[str, tuple[U8, I64]],
                 central_x: U8, central_y: I64, args: Any,
                 more_pools: list[tuple[U8, I64]] = (),  # type: ignore[assignment]
                 adapt_bn: bool = False,
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]],
                            dict[str, npt.NDArray[np.float64]]]:
    """The 'pooled-selected' arm: candidates from the coordinator's ``train_pooled``, each
    test target's ensemble chosen on its own real train split (``node.selection``).

    Returns (scores in the shape of the other arms; target → what was picked, per
    BatchNorm mode; twin suffix → the twin's scores; per-candidate test scores). ``more_pools``:
    round 2's pool, whose candidates join the same file and the same choice, as in the
    product (:func:`coordinator.train.train_pooled` with ``round2``). ``adapt_bn``: the SAME
    candidates are also chosen and scored after their BatchNorm statistics are re-estimated
    on the chooser's real train images (:data:`TWINS`), so each twin differs from the arm
    only by that; every candidate's own test scores, as sent and adapted, come back too
    (``cand/<target>/<sent|site>/<i>``), so a twin's gain or loss can be traced to the
    scores or to the choice."""
    import tempfile

    from coordinator.train import train_pooled
    from node.selection import adapt_to_site, sample_for_selection, select_on_train
    from shared.cnn_train import predict_scores
    from shared.metrics.auc import auc_with_ci
    from shared.synthetic import SyntheticSet
    from shared.weights_io import load_candidates

    pools = [SyntheticSet(x, y, ["normal", "pneumonia"], {"synthetic_only": True})
             for x, y in [(pooled_x, pooled_y), *more_pools]]
    if len(pools) > 2:
        raise ValueError("at most two rounds' pools share one candidate file")
    with tempfile.TemporaryDirectory() as tmp:  # the coordinator's own call, both rounds
        path = Path(tmp) / "candidates.npz"
        train_pooled(pools[0], path, cfg, progress=False, members=members,
                     round2=pools[1] if len(pools) > 1 else None)
        nets, meta = load_candidates(path)
    chooser = {f"site-{n}": xy for n, xy in train_sets.items()}
    chooser["common-val"] = (central_x, central_y)
    modes = ["sent", *TWINS] if adapt_bn else ["sent"]
    outs: dict[str, dict[str, Any]] = {m: {"auc": {}, "probs": {}} for m in modes}
    picked: dict[str, Any] = {}
    per_candidate: dict[str, npt.NDArray[np.float64]] = {}
    for tname, (tx, ty) in tests.items():
        if tname not in chooser:
            continue
        cx, cy = chooser[tname]
        for mode in modes:
            model, rec = select_on_train(nets, meta["default"], cx, cy, batchnorm=mode)
            p = predict_scores(model, tx)[:, 1]
            outs[mode]["probs"][tname] = p
            outs[mode]["auc"][tname] = auc_with_ci(ty, p, n_boot=args.n_boot,
                                                   seed=args.seed).to_dict()
            picked.setdefault(tname, {})[mode] = {
                k: rec.get(k) for k in ("candidates", "picked", "adapted", "n_images",
                                        "batchnorm") if k in rec}
        if adapt_bn:  # the copies the twins chose among: adapted on the same sample
            adapted, _ = adapt_to_site(nets, cx[sample_for_selection(cy)])
            for how, group in (("sent", nets), ("site", adapted)):
                for i, m in enumerate(group):
                    per_candidate[f"cand/{tname}/{how}/{i}"] = predict_scores(m, tx)[:, 1]
    twins = {TWINS[m]: outs[m] for m in modes if m in TWINS}
    return outs["sent"], picked, twins, per_candidate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/synthlearn-multisite"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=("gan", "spinegan"), default="gan")
    ap.add_argument("--gan-minutes", type=float, default=2.0, help="GAN budget per site")
    ap.add_argument("--gan-kimg", type=float, default=None, help="optional kimg cap per site")
    ap.add_argument("--gan-batch", type=int, default=None,
                    help="GAN batch (default: GanConfig's); fewer images per step, more steps")
    ap.add_argument("--gan-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="set a GanConfig field for every site's GAN (repeatable), e.g. "
                         "--gan-set ada_target=0.45; checked by shared.config.from_mapping")
    ap.add_argument("--dp-epsilon", type=float, default=None,
                    help="train every site's GAN under DP-SGD with this ε (GanConfig.dp_epsilon)")
    ap.add_argument("--synthetic-per-site", type=int, default=None,
                    help="synthetic images per site (default: as many as its real train split)")
    ap.add_argument("--per-class", choices=("real", "balanced"), default="real")
    ap.add_argument("--small-train", type=int, default=None, metavar="N",
                    help="keep only N of the small site's train images (stratified; its test "
                         "split unchanged): a site whose own data is far from enough")
    ap.add_argument("--truncation", type=float, default=1.0)
    ap.add_argument("--cnn-width", type=int, default=16)
    ap.add_argument("--cnn-epochs", type=int, default=12)
    ap.add_argument("--cnn-patience", type=int, default=3)
    ap.add_argument("--local-min-steps", type=int, default=None, metavar="N",
                    help="train each local-real CNN at least N optimizer steps before early "
                         "stopping may end it (default: 200 with --small-train, else 0). On "
                         "120 images the shared recipe stopped after 20-40 steps, 0.10-0.22 "
                         "AUC below the same site trained 200 steps (BENCHMARKS.md, § Is the "
                         "local CNN a fair opponent?)")
    ap.add_argument("--cnn-minutes", type=float, default=None, help="cap per CNN")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--augment-share", type=float, default=0.5,
                    help="share of pooled synthetic images added to each site's real train "
                         "split in the augmentation arm (0 = skip the arm)")
    ap.add_argument("--extra-test", type=Path, default=None,
                    help="npz with test_images/test_labels (MedMNIST layout): another real test")
    ap.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=False,
                    help="the pooled CNN learns from each site classifier's probabilities "
                         "(soft teacher labels, SyntheticSet.soft) instead of hard labels")
    ap.add_argument("--synthetic-factor", type=float, default=1.0,
                    help="synthetic images per site = factor × its real train split")
    ap.add_argument("--ablate", default="",
                    help="comma list of extra pooled-CNN arms on the SAME generators: "
                         "teacher, factor3, teacher-factor3 (ablation; 'pooled' stays the "
                         "configured arm)")
    ap.add_argument("--select", default="",
                    help="MEMBERSxEPOCHS (e.g. 3x4): add the 'pooled-selected' arm, the "
                         "product's candidate path — the coordinator keeps every epoch of "
                         "MEMBERS CNN seeds, and each site picks its ensemble on its own real "
                         "train split (node.selection); on the common val the choice is made "
                         "on the union of the train splits, what the centralised CNN saw")
    ap.add_argument("--site-exposure", default="",
                    help="sites as different scanners: e.g. 'a=0.8,c=1.25' renders that site's "
                         "real images (train and test) with intensity ** (1/exposure); the "
                         "common val stays as stored. Default: every site as stored")
    ap.add_argument("--adapt-bn", action="store_true",
                    help="with --select: every selected arm gets two twins from the same "
                         "candidates: '-adabn', their BatchNorm statistics re-estimated on "
                         "each chooser's real train images before the choice (AdaBN), and "
                         "'-either', the choice among the candidates as sent and adapted; "
                         "each candidate's test scores go to candidate-scores.npz")
    ap.add_argument("--select-both", action="store_true",
                    help="with --round2 and --select: add 'pooled-both-selected', where each "
                         "target chooses among the candidates of BOTH rounds' pools (a site "
                         "keeps round 2 only where it helps on its own train split)")
    ap.add_argument("--select-both-only", action="store_true",
                    help="re-measuring on reused generators: of the pooled arms, train only "
                         "'pooled' and 'pooled-both-selected' (skips round 2's and round 1's "
                         "own selected arms and the one-CNN round-2 arm)")
    ap.add_argument("--reuse-gans", action="store_true",
                    help="skip GAN training for a site whose run in --out already finished, "
                         "round 2's included (re-run downstream arms on the same generators)")
    ap.add_argument("--round2", action="store_true",
                    help="second round: each site pretrains on the OTHER sites' pooled synthetic "
                         "images (--init-from), fine-tunes on its own, exports again; adds the "
                         "'pooled-round2' arm (and 'pooled-round2-selected' with --select)")
    ap.add_argument("--round2-source", choices=("others", "own"), default="others",
                    help="what round 2 pretrains on: the OTHER sites' synthetic images (the "
                         "product), or, as a control, the site's OWN round-1 synthetic images "
                         "(same pretraining kimg and ε; separates knowledge from other sites "
                         "from pretraining as such)")
    ap.add_argument("--round2-epsilon-share", type=float, default=0.3,
                    help="under DP, the share of each site's ε kept for round 2 (round 1 gets "
                         "the rest; both are charged to the site budget --dp-epsilon)")
    ap.add_argument("--screen", action="store_true",
                    help="ablation screening on a busy machine: no own-synthetic CNNs, no "
                         "memorization audit, no distribution scores (pooled arms unchanged)")
    ap.add_argument("--quick", action="store_true",
                    help="plumbing check: tiny GAN/CNN budgets (numbers not meaningful)")
    args = ap.parse_args(argv)
    if args.adapt_bn and not args.select:
        ap.error("--adapt-bn adapts the candidates the sites choose among: add --select")
    if args.quick:
        args.gan_minutes = min(args.gan_minutes, 0.5)
        args.cnn_epochs = min(args.cnn_epochs, 2)
        args.n_boot = min(args.n_boot, 200)

    import torch

    from node.audit import run_audit
    from node.generate import generate
    from node.training import GanConfig, train
    from shared.cnn_train import (
        ClassifierConfig,
        mix_real_synthetic,
        predict_scores,
        train_classifier,
    )
    from shared.config import from_mapping, parse_assignment, to_dict
    from shared.errors import ConfigError
    from shared.metrics.auc import auc_with_ci
    from shared.metrics.distribution import distribution_scores
    from shared.metrics.encoders import get_encoder
    from shared.metrics.paired import delong_paired

    out: Path = args.out
    clock = Clock()
    t_start = time.monotonic()
    cnn_cfg = ClassifierConfig(epochs=args.cnn_epochs, width=args.cnn_width,
                               patience=args.cnn_patience, seed=args.seed,
                               max_minutes=args.cnn_minutes)
    try:
        local_min_steps = resolve_local_min_steps(args.local_min_steps, args.small_train)
    except ValueError as e:
        ap.error(str(e))
    local_cfg = dataclasses.replace(cnn_cfg, min_steps=local_min_steps)
    eps_r1 = args.dp_epsilon
    if args.round2 and args.dp_epsilon is not None:
        eps_r1 = args.dp_epsilon * (1.0 - args.round2_epsilon_share)
    own_flags = {"model": "--model", "classes": "(binary)", "seed": "--seed",
                 "max_minutes": "--gan-minutes", "kimg": "--gan-kimg", "batch": "--gan-batch",
                 "dp_epsilon": "--dp-epsilon", "dp_site_budget": "--dp-epsilon"}
    try:
        gan_set = dict(parse_assignment(item) for item in args.gan_set)
    except ConfigError as e:
        ap.error(f"--gan-set: {e}")
    for key in sorted(set(gan_set) & set(own_flags)):  # else round 2 and results.json disagree
        ap.error(f"--gan-set {key}: set by {own_flags[key]}, not --gan-set")
    try:  # the project's one resolver: unknown fields and wrong types refused by name
        gan_cfg = from_mapping(GanConfig, {
            "model": args.model, "classes": "binary", "seed": args.seed,
            "max_minutes": args.gan_minutes, "kimg": args.gan_kimg, "dp_epsilon": eps_r1,
            "dp_site_budget": args.dp_epsilon,
            **({"batch": args.gan_batch} if args.gan_batch else {}),
            **gan_set})
    except ConfigError as e:
        ap.error(f"--gan-set: {e}")
    site_names = [s.name for s in SITES]
    try:
        exposure = parse_exposures(args.site_exposure, site_names)
    except ValueError as e:
        ap.error(f"--site-exposure: {e}")
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "site-exposure.json"  # the stores keep the exposure they were written with
    if (out / "sites").exists():
        before = json.loads(stamp.read_text()) if stamp.is_file() else {}
        if before != exposure:
            ap.error(f"--site-exposure: {out}'s stores were written with {before or 'none'}, "
                     f"not {exposure or 'none'}; use another --out")
    else:
        stamp.write_text(json.dumps(exposure))
    # A site-c GAN trained on all its images must not be reused for a --small-train run.
    shrink = out / "small-train.json"
    if ((out / "sites").exists() and shrink.is_file() != (args.small_train is not None)) or (
            shrink.is_file() and json.loads(shrink.read_text()) != args.small_train):
        ap.error(f"--small-train: {out}'s stores and GANs were made with "
                 f"{shrink.read_text().strip() if shrink.is_file() else 'all'} small-site train "
                 f"images, not {args.small_train or 'all'}; use another --out")
    if args.small_train is not None:
        shrink.write_text(json.dumps(args.small_train))

    with clock.stage("partition + stores"):
        images, labels = load_split(args.data, "train")
        val_x, val_y = load_split(args.data, "val")
        parts = partition(labels, args.seed, args.small_train)
        from node.errors import TrainingError
        from node.training.data import check_class_counts

        for name in site_names:  # before any CNN: a GAN the node would refuse stops here
            try:
                check_class_counts(labels[parts[name]["train"]], ["normal", "abnormal"],
                                   gan_cfg, f"site {name}")
            except TrainingError as e:
                ap.error(f"--small-train {args.small_train}: {e}")
        site_dirs = {}
        site_images = {n: expose(images, exposure.get(n, 1.0)) for n in site_names}
        for name in site_names:
            site_dirs[name] = out / "sites" / f"site-{name}"
            write_site(site_dirs[name], site_images[name], labels, parts[name])
    tests: dict[str, tuple[U8, I64]] = {
        f"site-{n}": (site_images[n][parts[n]["test"]], labels[parts[n]["test"]])
        for n in site_names
    }
    tests["common-val"] = (val_x, val_y)
    if args.extra_test is not None:
        tests["extra"] = load_split(args.extra_test, "test")
    train_sets = {n: (site_images[n][parts[n]["train"]], labels[parts[n]["train"]])
                  for n in site_names}

    models: dict[str, torch.nn.Module] = {}
    train_info: dict[str, dict[str, Any]] = {}

    def fit(key: str, x: U8, y: I64, val_eligible: npt.NDArray[np.bool_] | None = None,
            soft_labels: Any = None, cfg: ClassifierConfig = cnn_cfg) -> None:
        with clock.stage(f"cnn {key}"):
            trained = train_classifier(x, y, 2, cfg, progress=True,
                                       val_eligible=val_eligible, soft_labels=soft_labels)
        models[key] = trained.model
        train_info[key] = {"n_train": trained.n_train, "n_val": trained.n_val,
                           "epochs_run": len(trained.history), "stopped": trained.stopped,
                           "best_epoch": trained.val_metrics.get("best_epoch"),
                           "val_auc": trained.val_metrics.get("val_auc"),
                           "threshold": trained.threshold}

    synth: dict[str, tuple[U8, I64]] = {}
    audits: dict[str, dict[str, Any]] = {}
    gan_info: dict[str, Any] = {}
    dist: dict[str, Any] = {}
    encoder = get_encoder("domain")
    arms = [a for a in args.ablate.split(",") if a]
    unknown = set(arms) - {"teacher", "factor3", "teacher-factor3"}
    if unknown:
        raise SystemExit(f"--ablate: unknown arm(s) {sorted(unknown)}")
    want_teacher = args.teacher or any(a.startswith("teacher") for a in arms)
    soft: dict[str, Any] = {}
    synth_x3: dict[str, tuple[U8, I64, Any]] = {}
    for name in site_names:
        x, y = train_sets[name]
        fit(f"local-{name}", x, y, cfg=local_cfg)
        run_dir = site_dirs[name] / "runs" / "bench"
        metrics_path = Path(run_dir) / "metrics.json"
        if not (args.reuse_gans and metrics_path.exists()):
            with clock.stage(f"gan train site-{name}"):
                run_dir = train(site_dirs[name], gan_cfg, run_name="bench", progress=True)
        gan_info[name] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        n_syn = args.synthetic_per_site or round(args.synthetic_factor * len(y))
        with clock.stage(f"generate site-{name}"):
            s = generate(site_dirs[name], n_syn, run_name="bench", truncation=args.truncation,
                         per_class=args.per_class, seed=args.seed, out_name="bench",
                         teacher=want_teacher)
            if any(a.endswith("factor3") for a in arms):
                s3 = generate(site_dirs[name], 3 * n_syn, run_name="bench",
                              truncation=args.truncation, per_class=args.per_class,
                              seed=args.seed + 1, out_name="bench-x3", teacher=want_teacher)
                synth_x3[name] = (s3.images, s3.labels, s3.soft)
        synth[name] = (s.images, s.labels)
        soft[name] = s.soft
        if not args.screen:
            with clock.stage(f"audit site-{name}"):
                audits[name] = audit_numbers(run_audit(site_dirs[name], "bench",
                                                       progress=False))
            dist[name] = distribution_scores(x, s.images, encoder).to_dict()
            fit(f"own-{name}", s.images, s.labels)
        sample_grid(out / f"samples-site-{name}.png", (x, y), synth[name],
                    f"site {name}: real train (top) vs own synthetic (bottom)")

    pooled_x = np.concatenate([synth[n][0] for n in site_names])
    pooled_y = np.concatenate([synth[n][1] for n in site_names])
    pooled_soft = (np.concatenate([soft[n] for n in site_names]) if want_teacher else None)
    fit("pooled", pooled_x, pooled_y, soft_labels=pooled_soft if args.teacher else None)
    for arm in arms:
        if arm == "teacher":
            fit("pooled-teacher", pooled_x, pooled_y, soft_labels=pooled_soft)
        else:
            x3 = np.concatenate([synth_x3[n][0] for n in site_names])
            y3 = np.concatenate([synth_x3[n][1] for n in site_names])
            soft3 = (np.concatenate([synth_x3[n][2] for n in site_names])
                  if arm == "teacher-factor3" else None)
            fit(f"pooled-{arm}", x3, y3, soft_labels=soft3)
    round2_pool: tuple[U8, I64] | None = None
    if args.round2:
        from node.store import SiteStore
        from shared.synthetic import SyntheticSet

        r2x: list[U8] = []
        r2y: list[I64] = []
        r2soft: list[Any] = []
        for name in site_names:
            # The only cross-site input: the others' synthetic images (what bundles carry);
            # the control pretrains on the site's own round-1 images instead.
            others = ([n for n in site_names if n != name] if args.round2_source == "others"
                      else [name])
            shared_set = SyntheticSet(np.concatenate([synth[n][0] for n in others]),
                                      np.concatenate([synth[n][1] for n in others]),
                                      SiteStore.open(site_dirs[name]).class_names("binary"))
            shared_dir = (out / ("round2-inputs" if args.round2_source == "others"
                                 else "round2-inputs-own") / f"site-{name}")
            shared_set.save(shared_dir)
            r2_cfg = dataclasses.replace(
                gan_cfg, dp_epsilon=(None if args.dp_epsilon is None
                                     else args.dp_epsilon * args.round2_epsilon_share))
            r2_run = "bench-r2" if args.round2_source == "others" else "bench-r2-own"
            r2_metrics = site_dirs[name] / "runs" / r2_run / "metrics.json"
            if not (args.reuse_gans and r2_metrics.exists()):
                with clock.stage(f"gan round2 site-{name}"):
                    train(site_dirs[name], r2_cfg, run_name=r2_run, progress=True,
                          init_from=shared_dir)
            gan_info[f"{name}-round2"] = json.loads(r2_metrics.read_text())
            s2 = generate(site_dirs[name], len(synth[name][1]), run_name=r2_run,
                          truncation=args.truncation, per_class=args.per_class, seed=args.seed,
                          out_name=r2_run, teacher=want_teacher)
            r2x.append(s2.images)
            r2y.append(s2.labels)
            r2soft.append(s2.soft)
        round2_pool = (np.concatenate(r2x), np.concatenate(r2y))
        if not args.select_both_only:
            fit("pooled-round2", *round2_pool,
                soft_labels=np.concatenate(r2soft) if args.teacher else None)
    central_x = np.concatenate([train_sets[n][0] for n in site_names])
    central_y = np.concatenate([train_sets[n][1] for n in site_names])
    fit("centralised", central_x, central_y)
    if args.augment_share > 0:
        for n in site_names:
            mx, my, is_real = mix_real_synthetic(*train_sets[n], pooled_x, pooled_y,
                                                 args.augment_share, seed=args.seed)
            fit(f"augmented-{n}", mx, my, val_eligible=is_real)

    scores: dict[str, dict[str, Any]] = {}
    with clock.stage("evaluate"):
        for key, model in models.items():
            scores[key] = {"auc": {}, "probs": {}}
            for tname, (tx, ty) in tests.items():
                p = predict_scores(model, tx)[:, 1]
                scores[key]["probs"][tname] = p
                scores[key]["auc"][tname] = auc_with_ci(ty, p, n_boot=args.n_boot,
                                                        seed=args.seed).to_dict()
    selection: dict[str, Any] = {}
    candidate_scores: dict[str, Any] = {}
    if args.select:
        members, _, per = args.select.partition("x")
        sel_cfg = dataclasses.replace(cnn_cfg, epochs=int(per), patience=0)
        chosen: list[tuple[str, tuple[U8, I64], list[tuple[U8, I64]]]] = []
        if not args.select_both_only:
            chosen.append(("pooled-selected", (pooled_x, pooled_y), []))
        if round2_pool is not None and not args.select_both_only:  # the product's path, round 2
            chosen.append(("pooled-round2-selected", round2_pool, []))
        if round2_pool is not None and args.select_both:
            chosen.append(("pooled-both-selected", (pooled_x, pooled_y), [round2_pool]))
        for arm, (px, py), more in chosen:
            with clock.stage(f"cnn {arm}"):  # the twins' choices and scores included
                scores[arm], picked, twins, per_cand = selected_arm(
                    px, py, sel_cfg, int(members), tests, train_sets, central_x, central_y,
                    args, more_pools=more, adapt_bn=args.adapt_bn)
            selection[arm] = picked
            for suffix, twin in twins.items():
                scores[f"{arm}{suffix}"] = twin
            candidate_scores.update({f"{arm}/{k}": v for k, v in per_cand.items()})

    table: list[dict[str, Any]] = []
    for n in site_names:
        t = f"site-{n}"
        table.append({
            "site": n,
            "n_train": len(train_sets[n][1]),
            "n_test": len(tests[t][1]),
            "local_real": scores[f"local-{n}"]["auc"][t],
            "own_synthetic": scores[f"own-{n}"]["auc"][t] if f"own-{n}" in scores else None,
            "pooled_synthetic": scores["pooled"]["auc"][t],
            "centralised_real": scores["centralised"]["auc"][t],
            "utility_ratio": scores["pooled"]["auc"][t]["auc"]
            / scores["centralised"]["auc"][t]["auc"],
            "real_plus_pooled": scores.get(f"augmented-{n}", {}).get("auc", {}).get(t),
        })
    common = {
        k: scores[k]["auc"]["common-val"] for k in scores
    }
    ratio_common = common["pooled"]["auc"] / common["centralised"]["auc"]
    ablation = {
        k: {"common_val": common[k], "ratio_vs_central": common[k]["auc"]
            / common["centralised"]["auc"],
            "ratio_vs_pooled": common[k]["auc"] / common["pooled"]["auc"],
            "sites": {n: scores[k]["auc"][f"site-{n}"] for n in site_names},
            "minus_local": {n: scores[k]["auc"][f"site-{n}"]["auc"]
                            - scores[f"local-{n}"]["auc"][f"site-{n}"]["auc"]
                            for n in site_names},
            "seconds": clock.stages.get(f"cnn {k}")}
        for k in scores if k.startswith("pooled")
    }
    # Pooled − local on each site's own test images is a PAIRED question (same images, two
    # CNNs): DeLong's paired test is far tighter than comparing two unpaired bootstrap CIs,
    # which is what a 92-image test split needs before a +0.02 can count as a gain.
    for k, arm in ablation.items():
        arm["paired_vs_local"] = {
            n: delong_paired(tests[f"site-{n}"][1], scores[f"local-{n}"]["probs"][f"site-{n}"],
                             scores[k]["probs"][f"site-{n}"]).to_dict()
            for n in site_names}
    small = SMALL_SITE.name
    small_gain = (scores["pooled"]["auc"][f"site-{small}"]["auc"]
                  - scores[f"local-{small}"]["auc"][f"site-{small}"]["auc"])
    arrays: dict[str, Any] = {f"labels/{t}": y for t, (_, y) in tests.items()}
    arrays.update({f"{k}/{t}": p for k in scores for t, p in scores[k]["probs"].items()})
    np.savez_compressed(out / "scores.npz", **arrays)  # for paired re-analysis later
    if candidate_scores:  # --adapt-bn: each candidate's own test scores, sent and adapted
        np.savez_compressed(out / "candidate-scores.npz", **candidate_scores)
    with clock.stage("plots"):
        plot_roc(out / "roc.png", scores, tests, site_names)
    total = round(time.monotonic() - t_start, 1)
    stage_sum: dict[str, float] = {}
    for k, v in clock.stages.items():
        group = k.split(" site-")[0].split(" ")[0] if not k.startswith("cnn") else "cnn"
        stage_sum[group] = round(stage_sum.get(group, 0.0) + v, 1)
    dominant = max(stage_sum, key=lambda k: stage_sum[k])

    results = {
        "benchmark": "multisite",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None
                                                         else sys.argv[1:])]),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "quick": args.quick,
        "partition": {"seed": args.seed, "test_fraction": TEST_FRACTION,
                      "small_train": args.small_train,
                      "sites": [dataclasses.asdict(s) for s in SITES],
                      "n_common_val": len(val_y)},
        "cnn_config": to_dict(cnn_cfg),
        "local_min_steps": local_min_steps,
        "gan_config": to_dict(gan_cfg),
        "synthetic_per_site": {n: len(synth[n][1]) for n in site_names},
        "site_exposure": exposure,
        "per_class": args.per_class,
        "augment_share": args.augment_share,
        "table": table,
        "common_val": common,
        "utility_ratio_common": ratio_common,
        "pooled_arms": ablation,
        "selection": selection,  # arm → test → BatchNorm mode → picks
        "selection_format": 2,
        "teacher": args.teacher,
        "round2_source": args.round2_source if args.round2 else None,
        "synthetic_factor": args.synthetic_factor,
        "small_site": {"site": small, "pooled_minus_local": small_gain,
                       "paired": {k: a["paired_vs_local"][small] for k, a in ablation.items()}},
        "all_auc": {k: scores[k]["auc"] for k in models},
        "cnn_training": train_info,
        "gan_metrics": gan_info,
        "distribution_real_train_vs_own_synthetic": dist,
        "memorization_audit": audits,
        "seconds_per_stage": clock.stages,
        "seconds_per_stage_group": stage_sum,
        "dominant_stage": dominant,
        "seconds_total": total,
        "peak_rss": peak_rss_mb(),
        "files": {"roc": str(out / "roc.png"), "scores": str(out / "scores.npz"),
                  "samples": [str(out / f"samples-site-{n}.png") for n in site_names]},
    }
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")

    from rich.console import Console
    from rich.table import Table

    con = Console()
    tab = Table(title="AUC on each site's own real test split [95% bootstrap CI]"
                + ("  (QUICK: not meaningful)" if args.quick else ""))
    for col in ("site", "n train", "local real", "own synthetic", "pooled synthetic",
                "centralised real", "pooled ÷ central", "real + pooled"):
        tab.add_column(col, justify="right")
    for row in table:
        tab.add_row(row["site"], str(row["n_train"]), fmt(row["local_real"]),
                    fmt(row["own_synthetic"]), fmt(row["pooled_synthetic"]),
                    fmt(row["centralised_real"]), f"{row['utility_ratio']:.3f}",
                    fmt(row["real_plus_pooled"]))
    tab.add_row("common val", "—", "—", "—", fmt(common["pooled"]), fmt(common["centralised"]),
                f"{ratio_common:.3f}", "—")
    con.print(tab)
    tab2 = Table(title="Every CNN on the common real test set (PneumoniaMNIST val)")
    tab2.add_column("CNN")
    tab2.add_column("AUC [95% CI]", justify="right")
    for k in models:
        tab2.add_row(k, fmt(common[k]))
    con.print(tab2)
    tab3 = Table(title="Memorization audit per site (node.audit, default gates)")
    for col in ("site", "copy rate pixel / emb.", "MIA AUC pixel", "split-bias baseline",
                "ε spent", "gates"):
        tab3.add_column(col, justify="right")
    for n, a in audits.items():
        emb = a["copy_rate_embedding"]
        eps = a["epsilon_spent"]
        tab3.add_row(n, f"{a['copy_rate_pixel']:.3f} / {'—' if emb is None else f'{emb:.3f}'}",
                     fmt(a["mia_auc_pixel"]), fmt(a["split_bias_baseline_pixel"]),
                     "—" if eps is None else f"{eps:.2f}",
                     "pass" if a["gates_passed"] else "FAIL " + ",".join(a["failed_gates"]))
    con.print(tab3)
    con.print(f"utility ratio pooled ÷ centralised (common val): {ratio_common:.4f}")
    for k, a in ablation.items():
        con.print(f"  {k}: common {fmt(a['common_val'])} ÷central {a['ratio_vs_central']:.3f} "
                  f"÷pooled {a['ratio_vs_pooled']:.3f}; minus local "
                  + " ".join(f"{n} {v:+.3f}" for n, v in a["minus_local"].items()))
        con.print("    paired DeLong vs local real, own tests: " + "; ".join(
            f"{n} {d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_value']:.3f}"
            for n, d in a["paired_vs_local"].items()))
    con.print(f"small site {small}: pooled − local real on its own test = {small_gain:+.3f}")
    con.print(f"stages (s): {stage_sum}; dominant: {dominant}; total {total:.0f} s; "
              f"peak RSS {results['peak_rss']}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
