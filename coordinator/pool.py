"""Verify, de-duplicate and balance site bundles into one pooled synthetic set.

The same function serves both transports: bundles that arrived over Flower are written to
files first, so an air-gapped site's USB stick and a SuperNode's reply are checked by exactly
the same code (:func:`shared.bundle.verify_bundle`). A bad bundle never stops the pool: it is
recorded with its reason (and its site marked *excluded*), and the good ones are pooled.

Checks beyond the bundle's own verification:

* **replay**: a bundle id pooled by an earlier run is refused (``replayed``); so is a second
  copy of the same bundle inside one pool;
* **one bundle per site**: a second bundle from the same site in one pool is refused
  (``duplicate-site``) — the first, in name order, is kept;
* **compatibility**: every bundle must have the class list (names and vocabulary ids,
  :mod:`shared.vocabulary`) and image size of the first good one, in site order
  (``class-mismatch``, with both lists in the message / ``size-mismatch``);
* **duplicate images**: byte-identical images across bundles are kept once;
* **balance** (optional): undersample each class to the smallest class's count, so the
  downstream CNN does not learn the site mix instead of the lesions.

**Streaming, for a consortium of any size**: memory holds one bundle's images at a time, never
the pool. Each verified bundle's images go to a staging ``.npy`` on disk at once (its per-image
SHA-256 and labels stay in memory: 40 bytes an image); the merge then streams the kept rows,
bundle by bundle, into ``pooled/images.npy``, which the CNN reads batch by batch
(:mod:`shared.image_rows`). The pooled folder is the same :class:`SyntheticSet` layout as
before (ARCHITECTURE.md, "The pool on disk").
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.errors import PoolError
from coordinator.state import CoordinatorState
from shared.files import atomic_write_json, atomic_writer
from shared.synthetic import SyntheticSet
from shared.vocabulary import class_ids, mismatch


@dataclass
class PoolResult:
    """The pooled set plus what was accepted and rejected, and why."""

    pooled: SyntheticSet | None
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicates_dropped: int = 0
    balanced_dropped: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "images": 0 if self.pooled is None else len(self.pooled),
            "counts": {} if self.pooled is None else self.pooled.counts(),
            "class_names": [] if self.pooled is None else list(self.pooled.class_names),
            "class_ids": None if self.pooled is None else class_ids(self.pooled.class_names),
            "duplicates_dropped": self.duplicates_dropped,
            "balanced_dropped": self.balanced_dropped,
        }


@dataclass
class _Staged:
    """A verified bundle whose images wait on disk: what the merge needs, without pixels."""

    site: str
    bundle_id: str
    class_names: list[str]
    image_shape: tuple[int, ...]
    images: Path
    """Staging ``.npy`` of this bundle's decoded images, in labels.csv order."""
    labels: npt.NDArray[np.int64]
    soft: npt.NDArray[np.float32] | None
    digests: npt.NDArray[np.uint8]
    """(n, 32): SHA-256 of each image's pixel bytes, for cross-bundle de-duplication."""


def _stage(vb: Any, path: Path) -> _Staged:
    syn = vb.synthetic
    np.save(path, syn.images, allow_pickle=False)
    digests = b"".join(hashlib.sha256(img.tobytes()).digest() for img in syn.images)
    return _Staged(site=vb.site, bundle_id=vb.bundle_id, class_names=list(syn.class_names),
                   image_shape=tuple(syn.images.shape[1:]), images=path, labels=syn.labels,
                   soft=syn.soft,
                   digests=np.frombuffer(digests, np.uint8).reshape(len(syn), 32))


def _sha256(path: Path) -> str | None:
    from shared.files import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


def _site_hint(path: Path) -> str | None:
    """Best-effort site name of a bundle that failed verification (for the report only)."""
    from shared.bundle import read_manifest_unverified

    try:
        site = read_manifest_unverified(path).get("site")
        return str(site) if site else None
    except Exception:  # a corrupt file has no readable manifest; that is what we report
        return None


def pool_bundles(paths: Iterable[Path], trust_dir: Path, state: CoordinatorState,
                 run: str = "pool", *, balance: bool = True, seed: int = 0,
                 out_dir: Path | None = None) -> PoolResult:
    """Verify every bundle in ``paths``, pool the good ones, record every verdict in ``state``.

    ``run`` names this pooling; re-pooling the same run (after a coordinator restart) does not
    count its own earlier verdicts as replays. When ``out_dir`` is given the pooled set is
    saved to ``out_dir/pooled`` (its images left on disk in ``result.pooled``) and the summary
    to ``out_dir/pool.json``; without it the pooled set is returned in memory.
    """
    state.clear_run_bundles(run)
    seen = state.pooled_ids(exclude_run=run)
    result = PoolResult(pooled=None)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".pool-staging-*"):  # left by a pool that was killed
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".pool-staging-") as tmp:
        kept = _verify_and_stage(paths, trust_dir, state, run, seen, result, Path(tmp))
        if kept:
            # By site, not by file name or arrival order: the same bundles make the same pool
            # whether they came over Flower or on a USB stick.
            kept.sort(key=lambda st: st.site)
            folder = (out_dir if out_dir is not None else Path(tmp)) / "pooled"
            result.pooled = _merge(kept, result, folder, balance=balance, seed=seed)
            if out_dir is None:  # the staging folder goes away: keep the images in memory
                result.pooled.images = np.array(result.pooled.images)
    if out_dir is not None:
        atomic_write_json(out_dir / "pool.json", result.summary())
    return result


def _verify_and_stage(paths: Iterable[Path], trust_dir: Path, state: CoordinatorState, run: str,
                      seen: Any, result: PoolResult, staging: Path) -> list[_Staged]:
    """Verify each bundle, record its verdict, stage the good ones' images on disk."""
    from shared.bundle import BundleError, verify_bundle
    from shared.signing import SigningError

    kept: list[_Staged] = []
    sites_in_pool: set[str] = set()
    for path in sorted(Path(p) for p in paths):
        sha = _sha256(path)
        try:
            vb = verify_bundle(path, trust_dir, seen_ids=seen)
        except (BundleError, SigningError) as exc:
            reason = getattr(exc, "reason", "invalid")
            site = _site_hint(path)
            result.rejected.append({"path": str(path), "site": site, "reason": reason,
                                    "message": str(exc)})
            state.record_bundle(run, verdict="rejected", bundle_id=None, sha256=sha, site=site,
                                path=str(path), reason=reason, message=str(exc))
            continue
        problem: tuple[str, str] | None = None
        if vb.site in sites_in_pool:
            problem = ("duplicate-site", f"a bundle from site {vb.site} is already in this pool")
        elif kept:
            first = kept[0]
            differ = mismatch(first.class_names, list(vb.synthetic.class_names),
                              f"the pool (from site {first.site})", f"site {vb.site}")
            if differ:
                problem = ("class-mismatch", differ)
            elif vb.synthetic.images.shape[1:] != first.image_shape:
                problem = ("size-mismatch", f"image size {vb.synthetic.images.shape[1:]} "
                           f"differs from the pool's {first.image_shape}")
        if problem is not None:
            result.rejected.append({"path": str(path), "site": vb.site, "reason": problem[0],
                                    "message": f"{path}: {problem[1]}"})
            state.record_bundle(run, verdict="rejected", bundle_id=vb.bundle_id, sha256=sha,
                                site=vb.site, path=str(path), reason=problem[0],
                                message=problem[1])
            continue
        seen = set(seen) | {vb.bundle_id}
        sites_in_pool.add(vb.site)
        kept.append(_stage(vb, staging / f"{len(kept):06d}.npy"))
        state.upsert_site(vb.site, vb.key_fingerprint, vb.key_name)
        state.record_bundle(run, verdict="pooled", bundle_id=vb.bundle_id, sha256=sha,
                            site=vb.site, path=str(path), images=len(vb.synthetic))
        manifest = vb.manifest
        result.accepted.append({
            "path": str(path), "site": vb.site, "bundle_id": vb.bundle_id,
            "key_fingerprint": vb.key_fingerprint, "images": len(vb.synthetic),
            "counts": vb.synthetic.counts(), "dp": manifest.get("dp"),
            "audit": manifest.get("audit"), "accepted_risk": manifest.get("accepted_risk"),
            "metrics": manifest.get("metrics"), "software_version":
                manifest.get("software_version"), "created_at": manifest.get("created_at"),
            "privacy_ledger": manifest.get("privacy_ledger"),
            "signed_manifest": vb.signed_manifest,
        })
        del vb  # its pixels are on disk now; hold one bundle at a time
    return kept


def _merge(kept: list[_Staged], result: PoolResult, folder: Path, *, balance: bool,
           seed: int) -> SyntheticSet:
    """De-duplicate (first copy in site order wins) and balance by index, then stream the kept
    rows bundle by bundle into ``folder/images.npy``; return the set, its images on disk."""
    class_names = kept[0].class_names
    labels = np.concatenate([st.labels for st in kept])
    owner = np.repeat(np.arange(len(kept)), [len(st.labels) for st in kept])
    digests = np.concatenate([st.digests for st in kept])
    _, first = np.unique(digests.view("V32").ravel(), return_index=True)
    rows = np.sort(first)  # rows of the concatenation that are first copies, in pool order
    result.duplicates_dropped = len(labels) - len(rows)
    y = labels[rows]
    if balance:
        counts = np.bincount(y, minlength=len(class_names))
        present = counts[counts > 0]
        target = int(present.min()) if len(present) else 0
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(y), bool)
        for c in range(len(class_names)):
            idx = np.flatnonzero(y == c)
            if len(idx) > target:
                idx = rng.choice(idx, target, replace=False)
            keep[idx] = True
        result.balanced_dropped = int((~keep).sum())
        rows, y = rows[keep], y[keep]
    # Teacher labels (optional bundle member): kept when at least one bundle has them; an
    # image from a bundle without them gets its one-hot hard label, so old and new bundles pool.
    with_teacher = any(st.soft is not None for st in kept)
    eye = np.eye(len(class_names), dtype=np.float32)
    teacher = np.concatenate([st.soft if st.soft is not None else eye[st.labels]
                              for st in kept])[rows] if with_teacher else None
    _write_rows(folder / "images.npy", kept, owner, rows)
    src = np.asarray([kept[k].site for k in owner[rows]])
    info = {"sites": sorted(set(src.tolist())),
            "bundle_ids": [st.bundle_id for st in kept],
            "per_site": {s: int((src == s).sum()) for s in sorted(set(src.tolist()))},
            "synthetic_only": True,
            "teacher_sites": sorted({st.site for st in kept if st.soft is not None})}
    images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
    pooled = SyntheticSet(images, y, class_names, info, soft=teacher)
    pooled.save_labels(folder)
    return pooled


def _write_rows(out: Path, kept: list[_Staged], owner: npt.NDArray[np.int64],
                rows: npt.NDArray[np.int64]) -> None:
    """Write the pooled ``.npy`` by appending each bundle's kept rows (atomic rename at the end):
    one bundle's images in memory at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": (len(rows), *kept[0].image_shape)}
    starts = np.concatenate([[0], np.cumsum([len(st.labels) for st in kept])])
    with atomic_writer(out) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for k, st in enumerate(kept):
            mine = rows[owner[rows] == k] - starts[k]
            if len(mine):
                fh.write(np.load(st.images, allow_pickle=False)[mine].tobytes())


def require_pool(result: PoolResult, where: Path | str) -> SyntheticSet:
    """The pooled set, or a :class:`PoolError` listing every rejection reason."""
    if result.pooled is None or len(result.pooled) == 0:
        reasons = "; ".join(f"{r.get('site') or r['path']}: {r['reason']}"
                            for r in result.rejected) or "no bundles found"
        raise PoolError(f"{where}: no bundle could be pooled ({reasons}); fix the rejected "
                        "bundles or add the sites' public keys to the trust folder")
    return result.pooled
