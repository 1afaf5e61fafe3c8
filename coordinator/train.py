"""The downstream CNN the coordinator trains — on synthetic images only.

The coordinator never holds a real image; this module makes that checkable: the weights'
metadata names the bundles whose synthetic images trained them (``trained_on``,
``bundle_ids``, ``synthetic_only: true``) and the image count, and the training call only
ever receives a :class:`shared.synthetic.SyntheticSet` that came out of verified bundles.

Two kinds of CNN are trained with the same recipe (:mod:`shared.cnn_train`):

* **pooled**: on the pooled synthetic set of all accepted sites — the product;
* **own** (optional): on one site's own synthetic images — so the report can show what pooling
  adds over each site's synthetic data alone (DESIGN §4).
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any

from shared.cnn_train import ClassifierConfig
from shared.synthetic import SyntheticSet
from shared.vocabulary import VOCABULARY, class_ids, class_mode

MAX_CANDIDATE_BYTES = 192 << 20
"""Largest candidate file the coordinator writes (a site refuses more than 256 MiB inflated,
:data:`shared.weights_io.MAX_TOTAL_BYTES`): each CNN seed keeps its latest epochs that fit."""


def train_pooled(pooled: SyntheticSet, out: Path, cfg: ClassifierConfig, *,
                 role: str = "pooled", progress: bool = True,
                 device: str | None = None, members: int = 1,
                 round2: SyntheticSet | None = None) -> dict[str, Any]:
    """Train ``members`` CNNs (seeds ``cfg.seed`` …) on ``pooled`` (synthetic only) and save
    every epoch of each as one candidate file at ``out``.

    ``round2``: a two-round run's second pool. ``members`` more CNNs train on it (each pool
    with the whole ``cfg.max_minutes``) and join the same file, each candidate saying its
    ``round``: a site then keeps round 2's networks only where they score better on its own
    train split. Under DP that choice met ratio ≥ 0.90 in five seeds of five, where round 1
    alone did in two and round 2 alone in one (BENCHMARKS.md § DP ε = 10 with round 2).

    Why candidates rather than one network: on the pool's own synthetic validation part every
    epoch scores AUC ≈ 1.0, so the coordinator cannot tell which seed and epoch carry over to
    real radiographs; each site chooses on its real train split (:mod:`node.selection`).
    ``members`` split ``cfg.max_minutes`` between them. The file's ``default`` (for a site
    that cannot choose) is each member's best epoch on the synthetic validation part.

    Returns a record with the weights' path and SHA-256, the images they saw, the threshold
    and the training history summary; the same facts, but the threshold, are inside the
    weights' metadata (a site scores at its own threshold and refuses weights that carry one).
    """
    from dataclasses import replace

    import torch

    from shared.cnn_train import train_classifier
    from shared.config import to_dict
    from shared.data_parallel import ProcessGroup
    from shared.files import sha256_file
    from shared.weights_io import save_candidates

    pools = [pooled] if round2 is None else [pooled, round2]
    for pool in pools:
        if pool.info.get("synthetic_only") is False:
            raise ValueError("refusing to train the coordinator's CNN on a set not marked "
                             "synthetic")
    if members < 1:
        raise ValueError(f"members must be ≥ 1, got {members}")
    if round2 is not None and (list(round2.class_names) != list(pooled.class_names)
                               or round2.images.shape[1:] != pooled.images.shape[1:]):
        raise ValueError(f"round 2's pool ({list(round2.class_names)}, "
                         f"{round2.images.shape[1:]}) differs from round 1's "
                         f"({list(pooled.class_names)}, {pooled.images.shape[1:]}) in its "
                         "classes or image size: one candidate file cannot hold both")
    # before any training: a file of one network per member must already fit what sites accept
    per_member = candidates_per_run(cfg, members * len(pools), len(pooled.class_names))
    # Under torchrun (several GPUs) every process trains its share of each batch.
    group = ProcessGroup()
    t0 = time.monotonic()
    member_cfg = cfg if cfg.max_minutes is None or members == 1 else replace(
        cfg, max_minutes=cfg.max_minutes / members)
    snaps: list[tuple[int, int, int, dict[str, torch.Tensor], float | None]] = []
    runs = []
    for (rnd, pool), m in itertools.product(enumerate(pools, start=1), range(members)):
        states: dict[int, dict[str, torch.Tensor]] = {}

        def keep(epoch: int, model: torch.nn.Module,
                 states: dict[int, dict[str, torch.Tensor]] = states) -> None:
            # only the latest epochs that will be sent stay in memory
            states[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            while len(states) > per_member:
                del states[min(states)]

        # Teacher labels when the bundles carried them: the CNN distils every site's S.
        trained = train_classifier(pool.images, pool.labels, len(pool.class_names),
                                   replace(member_cfg, seed=cfg.seed + m), progress=progress,
                                   device=device, soft_labels=pool.soft, on_epoch=keep,
                                   group=group)
        best = int(trained.val_metrics.get("best_epoch", 0))
        if best >= 1 and best not in states:  # the best epoch is always sent: trained.model
            del states[min(states)]           # holds its weights (restored at the end)
            states[best] = {k: v.detach().cpu().clone()
                            for k, v in trained.model.state_dict().items()}
        val_auc = {int(h["epoch"]): h.get("val_auc") for h in trained.history}
        for epoch, state in sorted(states.items()):
            auc = val_auc.get(epoch)
            snaps.append((rnd, m, epoch, state,
                          None if auc is None or auc != auc else float(auc)))
        runs.append(trained)
    seconds = time.monotonic() - t0
    model = runs[0].model.cpu()
    nets = []
    for *_, state, _ in snaps:
        net = copy.deepcopy(model)
        net.load_state_dict(state)
        nets.append(net.eval())
    candidates = [{"member": m, "seed": cfg.seed + m, "epoch": e, "synthetic_val_auc": a,
                   **({"round": r} if round2 is not None else {})}
                  for r, m, e, _, a in snaps]
    # a site that cannot choose gets every run's best synthetic-validation epoch, both rounds'
    default = [i for i, (r, m, e, _, _) in enumerate(snaps)
               if e == int(runs[(r - 1) * members + m].val_metrics.get("best_epoch", 0))]
    trained = runs[0]
    info = _merged_info(pools)
    bundle_ids = list(info.get("bundle_ids", []))
    n_images = sum(len(p) for p in pools)
    counts = _merged_counts(pools)
    meta = {
        "classes": class_mode(list(pooled.class_names)),
        "class_names": list(pooled.class_names),
        "class_ids": class_ids(pooled.class_names),
        "vocabulary": VOCABULARY if class_ids(pooled.class_names) else None,
        "trained_on": f"{role} synthetic images from {len(bundle_ids)} verified bundle(s)",
        "synthetic_only": True,
        "bundle_ids": bundle_ids,
        "sites": list(info.get("sites", [])),
        "n_images": n_images,
        # The side the CNN learned at: a site whose real images differ resizes to it, and
        # records that it did (node/evaluate.py), instead of scoring at a silent mismatch.
        "input_size": int(pooled.images.shape[1]),
        "teacher_labels": pooled.soft is not None,
        "counts": counts,
        "role": role,
        "config": to_dict(cfg),
        "members": members,
    }
    if round2 is not None:
        meta["rounds"] = [_round_summary(r, p) for r, p in enumerate(pools, start=1)]
    if not group.main:  # under torchrun, rank 0 alone writes (the nets are equal)
        return {"role": role, "weights": None, "seconds": round(seconds, 2)}
    # float16 on the wire: K networks go to every site; AUCs are unchanged to 3 decimals
    # (tests/coordinator/test_train_candidates.py checks the predictions).
    save_candidates(nets, out, meta, candidates, default or [len(nets) - 1], half=True)
    record: dict[str, Any] = {
        "role": role,
        "weights": str(out),
        "weights_sha256": sha256_file(out),
        "n_images": n_images,
        "teacher_labels": pooled.soft is not None,
        "counts": counts,
        "sites": meta["sites"],
        "bundle_ids": bundle_ids,
        "threshold": trained.threshold,
        "n_train": trained.n_train,
        "n_val": trained.n_val,
        "epochs_run": len(trained.history),
        "stopped": trained.stopped,
        "members": members,
        "candidates": len(nets),
        "epochs_per_member": [len(r.history) for r in runs],
        "val_metrics": {k: v for k, v in trained.val_metrics.items()
                        if isinstance(v, int | float | str | None)},
        "device": trained.device,
        "seconds": round(seconds, 2),
        "synthetic_only": True,
    }
    if round2 is not None:
        record["rounds"] = meta["rounds"]
        record["candidate_rounds"] = [c["round"] for c in candidates]
    return record


def _merged_info(pools: list[SyntheticSet]) -> dict[str, Any]:
    """The pools' provenance as one: every bundle and site once, in order."""
    info = dict(pools[0].info)
    for key in ("bundle_ids", "sites"):
        seen: list[Any] = []
        for pool in pools:
            seen += [v for v in pool.info.get(key, []) if v not in seen]
        info[key] = seen
    return info


def _merged_counts(pools: list[SyntheticSet]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pool in pools:
        for name, n in pool.counts().items():
            out[name] = out.get(name, 0) + int(n)
    return out


def _round_summary(rnd: int, pool: SyntheticSet) -> dict[str, Any]:
    return {"round": rnd, "n_images": len(pool), "counts": pool.counts(),
            "bundle_ids": list(pool.info.get("bundle_ids", [])),
            "sites": list(pool.info.get("sites", []))}


def candidates_per_run(cfg: ClassifierConfig, runs: int, num_classes: int = 2) -> int:
    """Epochs each of ``runs`` CNN trainings may keep in one candidate file that a site at its
    default policy accepts; ValueError, naming what to lower, when not even one fits."""
    return _per_member(runs, *_network_bytes(cfg, num_classes))


def _network_bytes(cfg: ClassifierConfig, num_classes: int) -> tuple[int, int]:
    """(bytes of one network in a candidate file, bytes of its largest tensor): floating-point
    tensors at 2 bytes, as :func:`shared.weights_io.save_candidates` writes them with ``half``.
    Counted on the meta device: nothing is allocated."""
    import torch

    from shared.classifier import ResNetClassifier

    with torch.device("meta"):
        net = ResNetClassifier(num_classes, width=cfg.width, norm=cfg.norm)
    sizes = [v.numel() * (2 if v.is_floating_point() else v.element_size())
             for v in net.state_dict().values()]
    return sum(sizes), max(sizes)


def _per_member(members: int, size: int, largest: int) -> int:
    """Candidates each of ``members`` CNN runs may keep so that the file stays under
    :data:`MAX_CANDIDATE_BYTES`, under a site's cap on one stacked tensor
    (:data:`shared.weights_io.MAX_MEMBER_BYTES`, less room for the npy header) and under the
    number of candidates a site accepts at its default policy
    (:data:`shared.protocol.DEFAULT_SITE_CANDIDATES`). A file that would not fit even one
    network per member is refused here, before training, naming what to lower: every site
    would refuse it after the coordinator spent its time budget."""
    from shared.protocol import DEFAULT_SITE_CANDIDATES
    from shared.weights_io import MAX_MEMBER_BYTES

    fit = min(DEFAULT_SITE_CANDIDATES, MAX_CANDIDATE_BYTES // max(size, 1),
              (MAX_MEMBER_BYTES - (1 << 16)) // max(largest, 1))
    if fit < members:
        raise ValueError(f"{members} CNNs of {size / 2**20:.0f} MiB each (cnn-members, twice "
                         "that in a two-round run) do not fit one candidate file a site "
                         f"accepts ({fit} at most at this width); lower cnn-members or "
                         "cnn-width")
    return fit // members

