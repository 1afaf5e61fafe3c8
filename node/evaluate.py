"""Score CNN weights on this site's real *test* split: the federated-evaluation primitive.

The coordinator's pooled CNN arrives as an npz state dict (never a pickle); this module loads
it, scores the site's real test images, and returns model-free numbers only (AUC + bootstrap
CI, counts, sensitivity/specificity at the threshold the weights carry). No per-image score,
no pixel, no image id leaves this function's return value.

When the site has its own local real CNN (``SITE/metrics/baseline-cnn.npz``, written by
``node baseline``), the incoming weights are also compared with it *on the same test images*:
DeLong's test for two correlated AUCs (binary) or a paired bootstrap (macro AUC, lesion
classes). The comparison is what "this site gains by joining" means, and it can only be
computed here, where both models' per-image scores exist; only its summary (AUCs, difference,
SE, p, CI) is added to the record under ``paired_vs_local``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import ClassMismatchError, StoreError
from shared.files import atomic_write_bytes, sha256_file
from shared.synthetic import resize_u8
from shared.vocabulary import VOCABULARY, class_ids, class_mode, mismatch

EVAL_KIND = "evaluation"


def score_test_split(
    model: Any,
    site_dir: Path,
    classes: str,
    threshold: float | None,
    n_boot: int = 1000,
    seed: int = 0,
    input_size: int | None = None,
    compare_with: Any = None,
    expect_names: list[str] | None = None,
) -> dict[str, Any]:
    """AUC (+ CI) of ``model`` on the site's real test split; numbers only.

    ``expect_names``: the class list the model was trained on (its weights' metadata); any
    other list than this site's is refused with both lists (:class:`ClassMismatchError`).
    Classes of the list with no test image here are reported under ``absent_classes`` and
    get no AUC (None), never a score of zero; the macro AUC averages the present ones.

    ``input_size`` is the side the CNN was trained at (its weights' metadata); test images of
    another side are resized to it (bilinear, antialiased when shrinking) and the record says
    so under ``resize``. ``compare_with``: another model (the site's local real CNN) scored on
    the same images at the site's own size; the paired comparison ``model`` − ``compare_with``
    lands under ``paired_vs_local``.

    ``model`` is a :class:`shared.classifier.ResNetClassifier` (any torch module returning
    logits works). The test split is read here and nowhere in training code.
    """
    from node.store import SiteStore
    from shared.cnn_train import predict_scores
    from shared.metrics.auc import class_auc_with_ci, sens_spec

    store = SiteStore.open(site_dir)
    images, labels = store.load("test", classes)  # type: ignore[arg-type]
    if len(labels) == 0:
        raise StoreError(
            f"{site_dir}: the site store has no test images; re-run preprocess with a "
            "test fraction > 0"
        )
    n_out = int(getattr(model, "num_classes", 2))
    names = check_classes(store, site_dir, classes, n_out, expect_names)
    resize = None
    site_images = images  # the local CNN was trained at the site's own size
    if input_size is not None and images.shape[1] != input_size:
        resize = {"from": int(images.shape[1]), "to": int(input_size),
                  "policy": "bilinear resize of the site's test images to the CNN's training "
                            "size" + (" (antialiased)" if input_size < images.shape[1] else "")}
        images = resize_u8(images, int(input_size))
    probs = predict_scores(model, images)
    counts = np.bincount(labels, minlength=len(names))
    out: dict[str, Any] = {"classes": classes, "class_names": names, "n_test": len(labels),
                           "resize": resize, "class_ids": class_ids(names),
                           "vocabulary": VOCABULARY if class_ids(names) else None,
                           "per_class_n": {n: int(k) for n, k in zip(names, counts,
                                                                     strict=True)},
                           "absent_classes": [n for n, k in zip(names, counts, strict=True)
                                              if k == 0]}
    out.update(class_auc_with_ci(labels, probs, n_boot=n_boot, seed=seed).to_dict())
    if n_out == 2 and threshold is not None:
        out.update(sens_spec(labels, probs[:, 1], threshold))
    elif n_out != 2:
        out["accuracy"] = float((probs.argmax(1) == labels).mean())
        out["per_class_auc"] = per_class_auc(labels, probs, names)
    if compare_with is not None:
        local_probs = predict_scores(compare_with, site_images)
        out["paired_vs_local"] = paired_comparison(labels, local_probs, probs, n_boot, seed)
    return out


def check_classes(store: Any, site_dir: Path, classes: str, n_out: int,
                  expect_names: list[str] | None) -> list[str]:
    """This site's class names, once the CNN's class list (``expect_names``, from its weights)
    and output count ``n_out`` are checked against them: any real split is scored only by a
    network trained for the same classes."""
    names: list[str] = store.class_names(classes)
    if expect_names is not None:
        differ = mismatch(names, expect_names, "this site's store", "the CNN's weights")
        if differ:
            raise ClassMismatchError(f"{site_dir}: {differ}; ask for weights trained on this "
                                     "site's class list")
    if n_out != len(names):
        raise StoreError(
            f"{site_dir}: the CNN predicts {n_out} classes but this site's '{classes}' mode has "
            f"{len(names)} ({', '.join(names)}); ask for weights trained with the same classes"
        )
    return names


def per_class_auc(labels: npt.NDArray[np.int64], probs: npt.NDArray[np.float64],
                  names: list[str]) -> dict[str, float | None]:
    """Class name → one-vs-rest AUC (None where the test split lacks the class or its rest)."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        hit = labels == c
        out[name] = float(roc_auc_score(hit, probs[:, c])) if 0 < hit.sum() < len(hit) else None
    return out


def paired_comparison(labels: npt.NDArray[np.int64], local: npt.NDArray[np.float64],
                      other: npt.NDArray[np.float64], n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """other − local on the same cases: DeLong (two classes) or a paired bootstrap (more)."""
    from shared.metrics.auc import MetricError
    from shared.metrics.paired import delong_paired, paired_bootstrap_macro

    if local.shape != other.shape:
        return {"error": f"the local CNN has {local.shape[1]} outputs, these weights "
                         f"{other.shape[1]}; not comparable"}
    try:
        if other.shape[1] == 2:
            res = delong_paired(labels, local[:, 1], other[:, 1])
        else:
            res = paired_bootstrap_macro(labels, local, other, n_boot=n_boot, seed=seed)
    except MetricError as exc:
        return {"error": str(exc)[:200]}
    return {"against": "local real CNN (SITE/metrics/baseline-cnn.npz)", **res.to_dict()}


MAX_INPUT_SIZE = 1024
"""Largest CNN input side a weights file may ask for (it comes from the coordinator)."""


def choose_on_train_split(models: list[Any], meta: dict[str, Any], site_dir: Path,
                          classes: str, input_size: int | None,
                          expect_names: list[str] | None = None,
                          batchnorm: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(the model to score, how it was chosen): :func:`node.selection.select_on_train` on
    the site's real train split, resized to the CNN's input size like the test split. The
    class list is checked first, as for the test split: labels of other classes than the
    networks predict would otherwise reach the AUC (a crash, not a refusal). ``batchnorm``:
    whether the candidates' BatchNorm statistics are re-estimated on that train split
    (:data:`node.selection.BATCHNORM`; None: :data:`node.selection.DEFAULT_BATCHNORM`). A
    single network is scored as sent in every mode: adapting one was never measured, and the
    admin's own weights (the local baseline) must score as they were trained."""
    from node.selection import DEFAULT_BATCHNORM, sample_for_selection, select_on_train
    from node.store import SiteStore

    if len(models) == 1:
        return models[0], {"candidates": 1, "picked": [0], "rule": "one network: no choice"}
    if batchnorm is None:
        batchnorm = DEFAULT_BATCHNORM
    store = SiteStore.open(site_dir)
    check_classes(store, site_dir, classes, int(getattr(models[0], "num_classes", 2)),
                  expect_names)
    images, labels = store.load("train", classes)  # type: ignore[arg-type]
    keep = sample_for_selection(np.asarray(labels, np.int64))  # bounded work, before resizing
    images, labels = images[keep], np.asarray(labels, np.int64)[keep]
    if input_size is not None and len(images) and images.shape[1] != input_size:
        images = resize_u8(images, int(input_size))
    model, record = select_on_train(models, list(meta["default"]), images,
                                    np.asarray(labels, np.int64), batchnorm=batchnorm)
    rounds = [c.get("round") for c in meta["candidates"]]
    if any(r is not None for r in rounds):  # a two-round run's file: say which round won
        record["picked_rounds"] = [rounds[i] for i in record["picked"]]
    return model, record


def class_counts(site_dir: Path, classes: str) -> npt.NDArray[np.int64]:
    """Images per class in the test split (for reports; counts only)."""
    from node.store import SiteStore

    _, labels = SiteStore.open(site_dir).load("test", classes)  # type: ignore[arg-type]
    return np.bincount(labels)


def evaluate_weights(
    site_dir: Path,
    weights: Path,
    n_boot: int = 1000,
    seed: int = 0,
    write: bool = True,
    *,
    threshold: float | None = None,
    threshold_from_meta: bool = True,
    compare_local: bool = True,
    max_candidates: int | None = None,
    batchnorm: str | None = None,
) -> dict[str, Any]:
    """Evaluate CNN ``weights`` (npz) on the site's real test split.

    Sensitivity/specificity are reported at the threshold the weights carry (the admin's own
    weights) or, with ``threshold_from_meta=False`` (a coordinator's request), at the site's
    own ``threshold`` only; None reports AUC and its CI alone. With ``compare_local`` and a
    local real CNN on site, the record also holds the paired comparison against it (see the
    module docstring).

    A candidate file (several networks, :func:`shared.weights_io.save_candidates`) is first
    narrowed to the ensemble that scores best on the site's real *train* split
    (:mod:`node.selection`); the test split is scored once, with that ensemble, and the record
    says how it was chosen under ``selection``. ``batchnorm``: the site policy's
    (:data:`node.selection.BATCHNORM`): by default each candidate is offered to the choice as
    sent and with BatchNorm statistics of the site's train split, and the record's
    ``adapted`` says which picks were adapted copies. ``max_candidates``: the site policy's
    cap on how many networks one file may hold.

    Returns the unsigned record ``{"kind": "evaluation", auc, ci_low, ci_high, n_test,
    weights_sha256, ...}`` and, when ``write``, saves it as
    ``SITE/metrics/evaluation-<sha256[:12]>.json``.
    """
    from shared import __version__
    from shared.weights_io import MAX_CANDIDATES, load_candidates, load_classifier

    site_dir, weights = Path(site_dir), Path(weights)
    t0 = time.monotonic()
    digest = sha256_file(weights) if weights.is_file() else ""
    # raises WeightsError for a missing/bad file, or more candidates than the site accepts
    models, meta = load_candidates(weights, max_candidates or MAX_CANDIDATES)
    expect = meta.get("class_names")
    if expect is not None and not (isinstance(expect, list) and 0 < len(expect) <= 64
                                   and all(isinstance(n, str) and len(n) <= 200
                                           for n in expect)):
        raise ClassMismatchError(f"{weights}: the weights' class_names is not a list of class "
                                 "names; ask the coordinator for weights it trained")
    if expect is not None:
        classes = class_mode(expect)
    else:  # weights from before class lists were carried: the class count is checked
        classes = str(meta.get("classes", "binary"))
        if classes not in ("binary", "lesion"):
            classes = "binary"
    if threshold_from_meta:
        threshold = meta.get("threshold")
    input_size = meta.get("input_size")
    if input_size is not None and (not isinstance(input_size, int) or isinstance(input_size, bool)
                                   or not 8 <= input_size <= MAX_INPUT_SIZE):
        raise StoreError(f"{weights}: input_size {input_size!r} in the weights' metadata is not "
                         f"a side between 8 and {MAX_INPUT_SIZE}; ask the coordinator for "
                         "weights it trained")
    local = site_dir / "metrics" / "baseline-cnn.npz"
    reference = None
    if compare_local and local.is_file() and local.resolve() != weights.resolve():
        reference = load_classifier(local)
    model, selection = choose_on_train_split(models, meta, site_dir, classes, input_size,
                                             expect_names=expect, batchnorm=batchnorm)
    record: dict[str, Any] = {
        "kind": EVAL_KIND,
        "weights_sha256": digest,
        "selection": selection,
        **score_test_split(model, site_dir, classes,
                           float(threshold) if threshold is not None else None, n_boot, seed,
                           input_size=input_size, compare_with=reference,
                           expect_names=expect),
        "seconds": round(time.monotonic() - t0, 2),
        "software_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if "trained_on" in meta:
        record["weights_trained_on"] = meta["trained_on"]
    if write:
        path = site_dir / "metrics" / f"evaluation-{digest[:12]}.json"
        atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return record
