"""`synthlearn node export`: the one door out of a site — a signed bundle (DESIGN §2, §3).

What goes in: the synthetic images and labels; the metrics (``SITE/metrics/*.json``, e.g. the
local real baseline written by ``node baseline``, the numbers-only reader-study summary written
by ``node reader-study --results``, and the GAN run's ``metrics.json`` incl. its DP report); the
audit summary; the DP accounting; the resolved GAN and audit configs; the site pseudonym and
any accepted-risk reason. Everything but the images passes through :func:`public_numbers`,
which keeps numbers, booleans and short plain strings and drops anything that looks like a path
or a long text, so a metric file that one day grows a list of file names or per-image values
cannot carry them out.

What never goes in: real pixels, DICOM tags, file names of real images, weights, per-real-image
distances, the local HTML report. Export is refused when the audit is missing, stale (the
synthetic set changed after it) or failed — unless the admin gives ``accept_risk``, a reason
that is signed into the manifest together with the names of the failed gates.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.errors import ExportError

PSEUDONYM_FILE = "pseudonym"
EXPORT_LOG = "exports.jsonl"
MIN_REASON_CHARS = 10
_MAX_STR = 120
_MAX_LIST = 32
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def public_numbers(obj: Any, _depth: int = 0) -> Any:
    """Numbers, booleans, None and short path-free strings; nested dicts and short lists.

    >>> public_numbers({"auc": 0.9, "src": "/data/x.dcm", "ids": list(range(100)),
    ...                 "model": "gan", "ci": [0.8, 0.95], "nan": float("nan")})
    {'auc': 0.9, 'model': 'gan', 'ci': [0.8, 0.95], 'nan': None}
    """
    import math

    drop = _Drop
    if _depth > 8:
        return drop
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, dict | list | str):
        return public_numbers(obj.item(), _depth)
    if isinstance(obj, str):
        if len(obj) > _MAX_STR or "/" in obj or "\\" in obj or "\n" in obj:
            return drop
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or "/" in k or "\\" in k:
                continue
            clean = public_numbers(v, _depth + 1)
            if clean is not drop:
                out[k] = clean
        return out
    if isinstance(obj, list | tuple):
        if len(obj) > _MAX_LIST:
            return drop
        items = [public_numbers(v, _depth + 1) for v in obj]
        return [v for v in items if v is not drop]
    return drop


class _DropType:
    def __repr__(self) -> str:
        return "<dropped>"


_Drop = _DropType()


def site_pseudonym(site_dir: Path, site: str | None = None) -> str:
    """The admin's chosen pseudonym: explicit, else ``keys/pseudonym`` (set by keygen --name)."""
    if site is None:
        path = Path(site_dir) / "keys" / PSEUDONYM_FILE
        if path.exists():
            site = path.read_text(encoding="utf-8").strip()
    if not site:
        raise ExportError(
            f"{site_dir}: no site pseudonym. Pass --site NAME (e.g. site-a) or set one with "
            f"`synthlearn node keygen --site-dir {site_dir} --name NAME`; choose a pseudonym, "
            "not the hospital's name")
    if not _SITE_RE.match(site):
        raise ExportError(f"site pseudonym {site!r} must be 1–64 letters, digits, '.', '_' or "
                          "'-', starting with a letter or digit")
    return site


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable JSON ({exc}); re-run the command that wrote "
                          "it") from None


def _collect_metrics(site_dir: Path, run_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, gan config) from ``SITE/metrics/*.json`` and ``SITE/runs/<run>/``."""
    from shared.signing import is_signed_record

    metrics: dict[str, Any] = {}
    for path in sorted((site_dir / "metrics").glob("*.json")):
        doc = _read_json(path)
        if is_signed_record(doc):
            doc = doc["payload"]
        if isinstance(doc, dict):
            metrics[path.stem] = public_numbers(doc)
    run = site_dir / "runs" / run_name
    gan_config: dict[str, Any] = {}
    if (run / "metrics.json").exists():
        doc = _read_json(run / "metrics.json")
        if isinstance(doc, dict):
            metrics["gan"] = public_numbers(doc)
    if (run / "config.json").exists():
        doc = _read_json(run / "config.json")
        if isinstance(doc, dict):
            gan_config = public_numbers(doc)
    return metrics, gan_config


def export_bundle(
    site_dir: Path,
    out: Path,
    synthetic_name: str = "default",
    accept_risk: str | None = None,
    *,
    site: str | None = None,
    key_dir: Path | None = None,
    overwrite: bool = False,
    lifetime_epsilon: float | None = None,
) -> dict[str, Any]:
    """Write the signed bundle for ``SITE/synthetic/<name>`` to ``out``; return its manifest."""
    from node.audit import SUMMARY_NAME, find_dp_report, run_name_of, synthetic_digest
    from node.privacy_ledger import summary as ledger_summary
    from shared.bundle import write_bundle
    from shared.files import atomic_write_bytes
    from shared.synthetic import SyntheticSet

    site_dir, out = Path(site_dir), Path(out)
    pseudonym = site_pseudonym(site_dir, site)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists; choose another --out or pass --force")
    syn_dir = site_dir / "synthetic" / synthetic_name
    synthetic = SyntheticSet.load(syn_dir)
    summary_path = site_dir / "audit" / SUMMARY_NAME
    if not summary_path.exists():
        raise ExportError(f"{summary_path}: no memorization audit yet; run `synthlearn node "
                          f"audit --site-dir {site_dir} --synthetic {synthetic_name}` first")
    audit = _read_json(summary_path)
    if not isinstance(audit, dict) or audit.get("kind") != "memorization_audit":
        raise ExportError(f"{summary_path}: not an audit summary; re-run `synthlearn node audit`")
    if audit.get("synthetic_name") != synthetic_name or \
            audit.get("synthetic_sha256") != synthetic_digest(synthetic):
        raise ExportError(
            f"{summary_path}: the audit is for {audit.get('synthetic_name')!r} and does not match "
            f"the current contents of {syn_dir} (regenerated since?); run `synthlearn node audit "
            f"--site-dir {site_dir} --synthetic {synthetic_name}` again")
    reason = accept_risk.strip() if accept_risk else None
    if reason is not None and len(reason) < MIN_REASON_CHARS:
        raise ExportError(f"--accept-risk needs a real reason (≥ {MIN_REASON_CHARS} characters), "
                          "e.g. 'reviewed the 24 closest pairs by hand: none is a patient copy'")
    if not audit.get("gates_passed", False) and reason is None:
        failed = [f"{k} = {g.get('value')} (max {g.get('max')})"
                  for k, g in (audit.get("gates") or {}).items() if not g.get("passed")]
        raise ExportError(
            f"export refused: the memorization audit failed ({'; '.join(failed) or 'gates'}). "
            f"Review {site_dir / 'audit' / 'report.html'}; retrain (e.g. with --dp-epsilon) and "
            "regenerate, or export anyway with --accept-risk \"REASON\" (the reason is signed "
            "into the bundle for the coordinator and auditors to see)")
    run_name = run_name_of(synthetic)
    metrics, gan_config = _collect_metrics(site_dir, run_name)
    study = metrics.get("reader_study")
    if isinstance(study, dict):  # say whether the readers saw the set this bundle carries
        study["matches_bundle_set"] = study.get("synthetic_sha256") == \
            synthetic_digest(synthetic)
    dp = find_dp_report(site_dir, synthetic)
    audit_config = audit.get("config") if isinstance(audit.get("config"), dict) else {}
    config = {
        "gan": gan_config,
        "generation": public_numbers(dict(synthetic.info)),
        "audit": public_numbers(audit_config),
        "synthetic_name": synthetic_name,
    }
    manifest = write_bundle(
        out, synthetic, site=pseudonym, key_dir=key_dir or site_dir / "keys",
        metrics=metrics, audit=public_numbers(audit), dp=public_numbers(dp) if dp else None,
        config=config, accepted_risk=reason,
        privacy_ledger=ledger_summary(site_dir, lifetime_epsilon))
    log_line = {"bundle_id": manifest["bundle_id"], "out": str(out.resolve()),
                "synthetic_name": synthetic_name, "images": manifest["image_count"],
                "accepted_risk": reason,
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    log_path = site_dir / EXPORT_LOG
    previous = log_path.read_bytes() if log_path.exists() else b""
    atomic_write_bytes(log_path, previous + (json.dumps(log_line) + "\n").encode())
    return manifest
