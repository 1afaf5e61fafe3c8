"""Sampling labelled synthetic images from a trained run (`synthlearn node generate`).

Determinism: every random number comes from one ``torch.Generator`` seeded with ``seed`` on the
CPU, and images are produced in fixed-size batches in a fixed class order, so the same run,
seed and options give byte-identical images on any machine running the same torch build.

Truncation ψ pulls each style vector towards its *class* mean (``w_avg[c]``), trading variety
for typicality without blurring classes together. The optional quality filter (Gupta et al.;
SpineGAN's discussion) keeps a sample only if SpineGAN's classifier S gives its requested class
a probability ≥ ``filter_threshold``; the numbers drawn and kept per class go into the set's
``info`` so the filter's selectivity is always reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.errors import TrainingError
from node.training.data import (
    describe_transform,
    images_to_model_space,
    load_site_data,
    tensor_to_uint8,
)
from node.training.data import to_output_space as _to_output
from shared.synthetic import SyntheticSet

BATCH = 256
"""Images per generator call at ≤ 64²; larger sides use fewer (:func:`batch_for`)."""
MAX_DRAW_FACTOR = 50


def batch_for(resolution: int) -> int:
    """Images per call, so one call holds about as many pixels as 256 images at 64²: a 512²
    generator at 256 images per call would need gigabytes per activation.

    >>> batch_for(32), batch_for(128), batch_for(512)
    (256, 64, 16)
    """
    return max(16, BATCH * 64 * 64 // max(resolution * resolution, 64 * 64))


def load_generator(site_dir: Path, run_name: str = "default") -> tuple[Any, dict[str, Any]]:
    """(EMA generator, eval mode, CPU; checkpoint metadata) of ``SITE/runs/<run_name>``."""
    from node.training.loop import load_trained

    return load_trained(Path(site_dir) / "runs" / run_name)


def _quota(n: int, counts: list[int], per_class: str) -> list[int]:
    """Images to draw per class. A class the site's GAN never saw (a vocabulary class this
    site lacks, count 0) gets none: its label would name images the GAN cannot draw.

    >>> _quota(7, [5, 0, 2], "balanced"), _quota(7, [5, 0, 2], "real")
    ([4, 0, 3], [5, 0, 2])
    """
    if per_class == "balanced":
        seen = [i for i, c in enumerate(counts) if c > 0]
        q = [0] * len(counts)
        for j, i in enumerate(seen):
            q[i] = n // len(seen) + (1 if j < n % len(seen) else 0)
        return q
    k = len(counts)
    if per_class == "real":
        total = sum(counts)
        raw = [n * c / total for c in counts]
        q = [int(x) for x in raw]
        for i in sorted(range(k), key=lambda i: raw[i] - q[i], reverse=True)[: n - sum(q)]:
            q[i] += 1
        return q
    raise TrainingError(f"--per-class must be 'balanced' or 'real', got {per_class!r}")


def generate(
    site_dir: Path,
    n: int,
    run_name: str = "default",
    truncation: float = 1.0,
    per_class: str = "balanced",
    seed: int = 0,
    filter_threshold: float | None = None,
    out_name: str = "default",
    teacher: bool = False,
) -> SyntheticSet:
    """Draw ``n`` labelled images and save them to ``SITE/synthetic/<out_name>/``.

    ``teacher=True`` also stores, per image, the probabilities the site's classifier S gives
    each class (:attr:`SyntheticSet.soft`): the coordinator's CNN can then learn every site's
    real-data classifier, not only the class each image was drawn for. S is the one the
    filter uses (SpineGAN's, or one trained now on the real train split; under DP only one
    trained inside the run's ε), so the labels are post-processing of S.
    """
    site_dir = Path(site_dir)
    if n < 1:
        raise TrainingError(f"-n must be ≥ 1, got {n}")
    if filter_threshold is not None and not 0.0 < filter_threshold < 1.0:
        raise TrainingError(f"filter threshold must be in (0, 1), got {filter_threshold}")
    G, meta = load_generator(site_dir, run_name)
    names: list[str] = list(meta["class_names"])
    quota = _quota(n, list(meta["class_counts"]), per_class)
    tf: dict[str, Any] = meta["transform"]
    spine = None
    if filter_threshold is not None or teacher:
        spine = spine_for(site_dir, run_name, meta)
    gen = torch.Generator().manual_seed(seed)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    softs: list[np.ndarray] = []
    drawn = [0] * len(names)
    kept = [0] * len(names)
    with torch.no_grad():
        for k, want in enumerate(quota):
            while kept[k] < want:
                if drawn[k] >= MAX_DRAW_FACTOR * max(want, 1):
                    raise TrainingError(
                        f"quality filter kept only {kept[k]} of {drawn[k]} drawn images of class "
                        f"{names[k]!r} at threshold {filter_threshold}; lower --filter or train "
                        "longer"
                    )
                b = batch_for(G.resolution)
                x = draw_images(G, k, b, truncation, gen)
                drawn[k] += b
                if spine is not None:
                    probs = torch.softmax(spine(x).float(), dim=1)
                    if filter_threshold is not None:
                        keep = probs[:, k] >= filter_threshold
                        x, probs = x[keep], probs[keep]
                    softs.append(probs[: want - kept[k]].numpy())
                x = x[: want - kept[k]]
                kept[k] += len(x)
                images.append(tensor_to_uint8(_to_output(x, tf)))
                labels.append(np.full(len(x), k, dtype=np.int64))
    if filter_threshold is None:
        drawn = list(quota)
    info = {
        **generator_info(meta, run_name, seed, truncation, tf),
        "per_class": per_class,
        "filter": None if filter_threshold is None else {
            "threshold": filter_threshold,
            "drawn": dict(zip(names, drawn, strict=True)),
            "kept": dict(zip(names, kept, strict=True)),
        },
        "dp": meta.get("dp"),
        "teacher": "site classifier S probabilities" if teacher else None,
    }
    soft = None
    if teacher:
        soft = np.concatenate(softs).astype(np.float32)
        soft /= soft.sum(axis=1, keepdims=True)  # exact rows after float32 softmax
    s = SyntheticSet(np.concatenate(images), np.concatenate(labels), names, info, soft=soft)
    s.save(site_dir / "synthetic" / out_name)
    return s


def generator_info(meta: dict[str, Any], run_name: str, seed: int, truncation: float,
                   tf: dict[str, Any]) -> dict[str, Any]:
    """Where a synthetic set's images came from (its ``set.json`` ``info``): the generator run,
    its training, and how images were drawn and resized. Every way of making a set records
    these; each adds what is particular to it."""
    return {
        "generator_run": run_name,
        "kimg": meta["nimg"] / 1000,
        "model": meta["config"]["model"],
        "seed": seed,
        "truncation": truncation,
        "class_mode": meta["config"]["classes"],
        "preset": meta["config"].get("preset", "cpu"),
        "resize": describe_transform(tf),
    }


def draw_images(G: Any, k: int, b: int, truncation: float,
                gen: torch.Generator) -> torch.Tensor:
    """``b`` images of class ``k`` in model space, clamped to [-1, 1]."""
    z = torch.randn(b, int(G.z_dim), generator=gen)
    c = torch.full((b,), k, dtype=torch.long)
    out: torch.Tensor = G(z, c, truncation=truncation).float().clamp(-1, 1)
    return out


def sample_class(G: Any, meta: dict[str, Any], class_name: str, n: int,
                 truncation: float = 1.0, seed: int = 0) -> SyntheticSet:
    """``n`` images of one class, not saved: the teaching gallery's "show me more of this".

    ``G, meta`` come from :func:`load_generator` (loaded once by the caller).
    """
    names: list[str] = list(meta["class_names"])
    if class_name not in names:
        raise TrainingError(f"class {class_name!r} is not one of the generator's {names}")
    if not 1 <= n <= 1000:
        raise TrainingError(f"ask for 1–1000 images at a time, not {n}")
    if not 0.0 <= truncation <= 1.0:
        raise TrainingError(f"truncation ψ must be in [0, 1], got {truncation}")
    k = names.index(class_name)
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    with torch.no_grad():
        step = batch_for(G.resolution)
        for start in range(0, n, step):
            x = draw_images(G, k, min(step, n - start), truncation, gen)
            chunks.append(tensor_to_uint8(_to_output(x, meta["transform"])))
    info = {"seed": seed, "truncation": truncation,
            "class_mode": meta["config"]["classes"]}
    return SyntheticSet(np.concatenate(chunks), np.full(n, k, np.int64), names, info)


def spine_for(site_dir: Path, run_name: str, meta: dict[str, Any]) -> torch.nn.Module:
    """The run's S (SpineGAN) or, for a plain GAN run, one trained now and kept in the run.

    A DP run only uses an S that was trained inside its budget (SpineGAN with DP): training
    one now would read real images outside the run's ε.
    """
    from node.training.spine_classifier import ensure_spine_classifier, spine_path

    cfg = meta["config"]
    run_dir = site_dir / "runs" / run_name
    dp_budget = None
    if cfg.get("dp_epsilon") is not None:
        if not spine_path(run_dir).exists():
            raise TrainingError(
                f"{run_dir}: --filter needs a classifier trained on the real images, and this "
                "DP run has none inside its privacy budget; train with --model spinegan "
                "--dp-epsilon (S gets its share of ε), or generate without --filter")
        from node.training.dp import split_budget

        dp_budget = split_budget(float(cfg["dp_epsilon"]),
                                 float(meta["dp"]["delta"]))["spine_classifier"]
    images, labels, names, _ = load_site_data(site_dir, cfg["classes"])
    x = images_to_model_space(images, meta["transform"])
    model = ensure_spine_classifier(
        run_dir, tensor_to_uint8(x), labels, len(names), resolution=int(cfg["resolution"]),
        epochs=int(cfg["spine_epochs"]), width=int(cfg["spine_width"]), seed=int(cfg["seed"]),
        max_minutes=cfg.get("spine_max_minutes"), dp_budget=dp_budget, progress=False)
    out: torch.nn.Module = model.eval()
    return out
