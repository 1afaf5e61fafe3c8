"""Evaluation requests and replies: the same documents over Flower and as files.

Request (coordinator → site)::

    {"request": {"protocol", "action": "evaluate", "request-id", "run-tag",
                 "weights-sha256", "own-weights-sha256", "n-boot"},
     "weights": {"pooled": "pooled-cnn.npz", "own": "own-cnn.npz"}}

For an air-gapped site the folder ``requests/<site>/`` holds ``request.json`` and the npz
files; the admin runs ``synthlearn node evaluate --request requests/<site>/request.json
--site-dir SITE`` and carries back ``reply-<site>.json``. Over Flower, the ``request`` object
is the message's ConfigRecord and the weights travel as uint8 arrays.

Reply (site → coordinator): ``{"site", "request_id", "evaluations": {"pooled": SIGNED,
"own": SIGNED}, "baseline": SIGNED | null}``; :func:`verify_reply` checks every signature
against the trust folder and binds each evaluation to the SHA-256 of the weights sent.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from coordinator.errors import ReportError
from node.federation import PROTOCOL


def make_request(run_tag: str, pooled_sha256: str, own_sha256: str | None = None,
                 n_boot: int = 1000, request_id: str | None = None) -> dict[str, Any]:
    """The request object (ConfigRecord-compatible: strings and ints only)."""
    req: dict[str, Any] = {"protocol": PROTOCOL, "action": "evaluate",
                           "request-id": request_id or str(uuid.uuid4()), "run-tag": run_tag,
                           "weights-sha256": pooled_sha256, "n-boot": int(n_boot)}
    if own_sha256:
        req["own-weights-sha256"] = own_sha256
    return req


def write_request_folder(out: Path, request: dict[str, Any], pooled: Path,
                         own: Path | None = None) -> Path:
    """``out/request.json`` plus the weights beside it; returns the request file."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pooled, out / "pooled-cnn.npz")
    files = {"pooled": "pooled-cnn.npz"}
    if own is not None:
        shutil.copyfile(own, out / "own-cnn.npz")
        files["own"] = "own-cnn.npz"
    path = out / "request.json"
    path.write_text(json.dumps({"request": request, "weights": files}, indent=2,
                               sort_keys=True) + "\n")
    return path


def verify_reply(doc: dict[str, Any], trust_dir: Path,
                 expected_sha: dict[str, str]) -> dict[str, Any]:
    """Verified numbers from one reply: ``{"site", "pooled", "own", "baseline"}``.

    Each present record is checked: trusted signature, kind, the site named inside the signed
    payload, and (for evaluations) the SHA-256 of the weights it claims to have scored.
    Problems are listed under ``"problems"`` instead of raising, so one bad record does not
    discard a site's other numbers.
    """
    from shared.signing import SigningError, load_trust, verify_record

    trusted = load_trust(trust_dir)
    site = str(doc.get("site", ""))
    out: dict[str, Any] = {"site": site, "problems": []}
    evaluations = doc.get("evaluations") or {}
    if not isinstance(evaluations, dict):
        raise ReportError(f"reply from {site}: 'evaluations' is not an object")
    items: list[tuple[str, Any, str]] = [(role, rec, "evaluation")
                                         for role, rec in evaluations.items()]
    if doc.get("baseline") is not None:
        items.append(("baseline", doc["baseline"], "local_real_baseline"))
    for role, record, kind in items:
        try:
            payload = verify_record(record, trust_dir, trusted)
        except SigningError as exc:
            out["problems"].append(f"{role}: {exc}")
            continue
        if payload.get("kind") != kind:
            out["problems"].append(f"{role}: signed record is a {payload.get('kind')!r}, "
                                   f"not {kind!r}")
            continue
        if payload.get("site") != site:
            out["problems"].append(f"{role}: signed for site {payload.get('site')!r}, reply "
                                   f"says {site!r}")
            continue
        if kind == "evaluation":
            want = expected_sha.get(role)
            if want is None or payload.get("weights_sha256") != want:
                out["problems"].append(
                    f"{role}: evaluates weights {payload.get('weights_sha256')}, which are not "
                    f"the {role} weights this run sent ({want})")
                continue
        out[role] = {**payload, "verified": True,
                     "key_fingerprint": record.get("key_fingerprint")}
    return out


def read_reply_files(folder: Path) -> list[dict[str, Any]]:
    """Every ``reply-*.json`` (or ``*/reply-*.json``) under ``folder``."""
    docs = []
    for path in sorted(set(Path(folder).glob("reply-*.json")) |
                       set(Path(folder).glob("*/reply-*.json"))):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: not a readable reply ({exc}); ask the site to send "
                              "it again") from None
        if not isinstance(doc, dict):
            raise ReportError(f"{path}: not a reply object")
        doc["_path"] = str(path)
        docs.append(doc)
    return docs
