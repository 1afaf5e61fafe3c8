"""`synthlearn node audit`: memorization audit of a synthetic set against the site's real data.

Writes ``SITE/audit/report.html`` (local only: real images) and ``SITE/audit/summary.json``
(numbers only, exportable; ``node export`` signs it into the bundle). See
:mod:`node.audit.memorization` for the method and :mod:`node.audit.config` for the gates.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from node.audit.config import AuditConfig
from node.audit.memorization import AuditError, AuditResult, audit_arrays
from shared.synthetic import SyntheticSet

__all__ = [
    "AuditConfig",
    "AuditError",
    "AuditResult",
    "audit_arrays",
    "find_dp_report",
    "run_audit",
    "synthetic_digest",
]

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"


def synthetic_digest(synthetic: SyntheticSet) -> str:
    """SHA-256 over the images, labels and class names: ties an audit to the exact set."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(synthetic.images).tobytes())
    h.update(str(synthetic.images.shape).encode())
    h.update(np.asarray(synthetic.labels, np.int64).tobytes())
    h.update(json.dumps(list(synthetic.class_names)).encode())
    return h.hexdigest()


def run_name_of(synthetic: SyntheticSet) -> str:
    info = synthetic.info or {}
    for key in ("generator_run", "run_name", "run"):  # node.generate writes generator_run
        if isinstance(info.get(key), str):
            return str(info[key])
    return "default"


def find_dp_report(site_dir: Path, synthetic: SyntheticSet) -> dict[str, Any] | None:
    """The DP accounting of the GAN run that made the set.

    ``node generate`` copies it into the set's info from the checkpoint it sampled; sets made
    otherwise fall back to ``runs/<run>/metrics.json``.
    """
    info = synthetic.info or {}
    if "dp" in info:
        return info["dp"] if isinstance(info["dp"], dict) else None
    path = Path(site_dir) / "runs" / run_name_of(synthetic) / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    dp = metrics.get("dp") if isinstance(metrics, dict) else None
    return dp if isinstance(dp, dict) else None


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return np.clip(np.rint(y.squeeze(1).numpy()), 0, 255).astype(np.uint8)


def run_audit(site_dir: Path, synthetic_name: str = "default", cfg: AuditConfig | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Audit ``SITE/synthetic/<name>`` against the site's real train/test split.

    Returns the exportable summary (numbers only, with ``gates_passed``) and writes it to
    ``SITE/audit/summary.json`` next to the local-only ``report.html``.
    """
    from node.audit.report_html import render_report
    from node.store import SiteStore
    from shared.config import write_resolved
    from shared.files import atomic_write_bytes
    from shared.progress import progress_bar

    site_dir = Path(site_dir)
    cfg = cfg or AuditConfig()
    store = SiteStore.open(site_dir)
    syn_dir = site_dir / "synthetic" / synthetic_name
    if not syn_dir.exists():
        raise AuditError(f"{syn_dir}: no synthetic set named {synthetic_name!r}; run "
                         f"`synthlearn node generate --site-dir {site_dir} --out-name "
                         f"{synthetic_name}` first")
    synthetic = SyntheticSet.load(syn_dir)
    train, _ = store.load("train")
    held, _ = store.load("test")
    images = synthetic.images
    resized = None
    if images.shape[1:] != train.shape[1:]:
        resized = [int(images.shape[1]), int(images.shape[2])]
        images = _resize(images, (int(train.shape[1]), int(train.shape[2])))
    dp = find_dp_report(site_dir, synthetic)
    with progress_bar("stage", transient=True) as bar:
        task = bar.add_task("memorization audit", total=1, status="", visible=progress)
        result = audit_arrays(images, train, held, cfg, synthetic_labels=synthetic.labels,
                              dp=dp)
        bar.update(task, advance=1)
    result.class_names = list(synthetic.class_names)
    summary = result.summary
    summary.update({
        "synthetic_name": synthetic_name,
        "synthetic_sha256": synthetic_digest(synthetic),
        "synthetic_resized_from": resized,
        "run_name": run_name_of(synthetic),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    out = site_dir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / REPORT_NAME, render_report(result).encode("utf-8"))
    from shared.signing import sanitize_json

    summary = sanitize_json(summary)
    atomic_write_bytes(out / SUMMARY_NAME,
                       (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    write_resolved(cfg, out, "audit-config.json")
    return summary
