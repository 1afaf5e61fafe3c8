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
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.errors import PoolError
from coordinator.state import CoordinatorState
from shared.files import atomic_write_json
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
    saved to ``out_dir/pooled`` and the summary to ``out_dir/pool.json``.
    """
    from shared.bundle import BundleError, verify_bundle
    from shared.signing import SigningError

    state.clear_run_bundles(run)
    seen = state.pooled_ids(exclude_run=run)
    result = PoolResult(pooled=None)
    kept: list[Any] = []
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
            first = kept[0].synthetic
            differ = mismatch(first.class_names, vb.synthetic.class_names,
                              f"the pool (from site {kept[0].site})", f"site {vb.site}")
            if differ:
                problem = ("class-mismatch", differ)
            elif vb.synthetic.images.shape[1:] != first.images.shape[1:]:
                problem = ("size-mismatch", f"image size {vb.synthetic.images.shape[1:]} "
                           f"differs from the pool's {first.images.shape[1:]}")
        if problem is not None:
            result.rejected.append({"path": str(path), "site": vb.site, "reason": problem[0],
                                    "message": f"{path}: {problem[1]}"})
            state.record_bundle(run, verdict="rejected", bundle_id=vb.bundle_id, sha256=sha,
                                site=vb.site, path=str(path), reason=problem[0],
                                message=problem[1])
            continue
        seen = set(seen) | {vb.bundle_id}
        sites_in_pool.add(vb.site)
        kept.append(vb)
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
    if kept:
        # By site, not by file name or arrival order: the same bundles make the same pool
        # whether they came over Flower or on a USB stick.
        kept.sort(key=lambda vb: vb.site)
        result.pooled = _merge(kept, result, balance=balance, seed=seed)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if result.pooled is not None:
            result.pooled.save(out_dir / "pooled")
        atomic_write_json(out_dir / "pool.json", result.summary())
    return result


def _merge(kept: list[Any], result: PoolResult, *, balance: bool, seed: int) -> SyntheticSet:
    images, labels, sources, softs = [], [], [], []
    seen_hashes: set[bytes] = set()
    class_names = list(kept[0].synthetic.class_names)
    # Teacher labels (optional bundle member): kept when at least one bundle has them; an
    # image from a bundle without them gets its one-hot hard label, so old and new bundles pool.
    with_teacher = any(vb.synthetic.soft is not None for vb in kept)
    eye = np.eye(len(class_names), dtype=np.float32)
    for vb in kept:
        syn = vb.synthetic
        soft = syn.soft if syn.soft is not None else eye[syn.labels]
        for img, lab, p in zip(syn.images, syn.labels, soft, strict=True):
            digest = hashlib.sha256(img.tobytes()).digest()
            if digest in seen_hashes:
                result.duplicates_dropped += 1
                continue
            seen_hashes.add(digest)
            images.append(img)
            labels.append(int(lab))
            sources.append(vb.site)
            softs.append(p)
    x = np.stack(images).astype(np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    src = np.asarray(sources)
    teacher = np.stack(softs).astype(np.float32)
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
        x, y, src, teacher = x[keep], y[keep], src[keep], teacher[keep]
    info = {"sites": sorted(set(src.tolist())),
            "bundle_ids": [vb.bundle_id for vb in kept],
            "per_site": {s: int((src == s).sum()) for s in sorted(set(src.tolist()))},
            "synthetic_only": True,
            "teacher_sites": sorted({vb.site for vb in kept if vb.synthetic.soft is not None})}
    return SyntheticSet(x, y, class_names, info, soft=teacher if with_teacher else None)


def require_pool(result: PoolResult, where: Path | str) -> SyntheticSet:
    """The pooled set, or a :class:`PoolError` listing every rejection reason."""
    if result.pooled is None or len(result.pooled) == 0:
        reasons = "; ".join(f"{r.get('site') or r['path']}: {r['reason']}"
                            for r in result.rejected) or "no bundles found"
        raise PoolError(f"{where}: no bundle could be pooled ({reasons}); fix the rejected "
                        "bundles or add the sites' public keys to the trust folder")
    return result.pooled
