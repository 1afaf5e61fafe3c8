"""The seam between a site and the coordinator: every document that crosses it.

Both sides import this module and nothing of each other (ARCHITECTURE.md, import rules): the
protocol version, the actions a site answers and the keys each request may carry, the reply
document, the evaluation request/reply files, and the :class:`Transport` interface that the
Flower adapter and the in-process loopback both implement.

Evaluation request (coordinator → site)::

    {"request": {"protocol", "action": "evaluate", "request-id", "run-tag",
                 "weights-sha256", "own-weights-sha256", "n-boot"},
     "weights": {"pooled": "pooled-cnn.npz", "own": "own-cnn.npz"}}

For an air-gapped site the folder ``requests/<site>/`` holds ``request.json`` and the npz
files; the admin runs ``synthlearn node evaluate --request requests/<site>/request.json
--site-dir SITE`` and carries back ``reply-<site>.json``. Over Flower, the ``request`` object
is the message's ConfigRecord and the weights travel as uint8 arrays.

Evaluation reply (site → coordinator): ``{"site", "request_id", "evaluations": {"pooled":
SIGNED, "own": SIGNED}, "baseline": SIGNED | null}``; :func:`verify_reply` checks every
signature against the trust folder and binds each evaluation to the SHA-256 of the weights
sent.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.errors import ProtocolError, RequestRefusedError
from shared.files import UntrustedJSONError, atomic_write_json, loads_untrusted

PROTOCOL = 1
"""Version of the request/reply documents below; both sides refuse another version."""
DEFAULT_SITE_CANDIDATES = 32
"""Candidate CNNs a site accepts in one evaluation's weights file unless its admin changes
its policy (``max_candidates``): the most the coordinator puts in one file, so that no site
at its defaults refuses it."""

ACTIONS: dict[str, frozenset[str]] = {
    "ping": frozenset({"protocol", "action", "software-version", "run-tag"}),
    "export-bundle": frozenset({
        "protocol", "action", "software-version", "run-tag", "mode", "gan-config",
        "n-synthetic", "seed", "baseline-config", "round", "pretrain-sha256",
    }),
    "evaluate": frozenset({
        "protocol", "action", "software-version", "run-tag", "request-id", "weights-sha256",
        "own-weights-sha256", "n-boot",
    }),
}
"""Every action a node performs and the only keys each request may carry."""

REPLY_KEYS = frozenset({
    "protocol", "action", "status", "reason", "site", "software-version", "bundle-sha256",
    "bundle-id", "seconds", "reply-json",
})
"""The only keys a reply's config part may carry (the bundle bytes travel separately)."""

SIGNED_KINDS = frozenset({"evaluation", "local_real_baseline"})
"""Kinds of signed record a reply may carry: model-free numbers only."""

FORBIDDEN_GAN_KEYS = frozenset({"device"})
"""GanConfig keys the coordinator may not set: they are the site's own business."""

MAX_LIST = 64
"""Longest list a signed record may hold; per-image data would be longer than this."""


def software_version() -> str:
    """The synthlearn version both sides put in every document (``shared.__version__``)."""
    from shared import __version__

    return str(__version__)


@dataclass
class Reply:
    """What goes back: config fields (numbers, short strings, one JSON document) and,
    for ``export-bundle``, the bundle's bytes."""

    config: dict[str, Any]
    bundle: bytes | None = None

    def check(self) -> Reply:
        extra = sorted(set(self.config) - REPLY_KEYS)
        if extra:
            raise RequestRefusedError(f"reply would carry unexpected fields {extra}")
        return self


@dataclass
class Outcome:
    """One node's answer: a reply (config + optional bundle bytes) or a transport error."""

    node: int
    config: dict[str, Any] = field(default_factory=dict)
    bundle: bytes | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.config.get("status") == "ok"


class Transport(Protocol):
    """How the coordinator reaches its sites: Flower (:mod:`coordinator.server_app`) or the
    in-process loopback (:mod:`coordinator.local_transport`). Same requests, same replies."""

    name: str
    """How the report names the transport ('flower', 'in-process'; 'files' is not one)."""

    def node_ids(self) -> list[int]: ...

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]: ...


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
    atomic_write_json(path, {"request": request, "weights": files})
    return path


NUMBER_FIELDS = {"auc": (0.0, 1.0), "ci_low": (0.0, 1.0), "ci_high": (0.0, 1.0),
                 "sensitivity": (0.0, 1.0), "specificity": (0.0, 1.0), "accuracy": (0.0, 1.0),
                 "n_test": (0, 10**9), "n_pos": (0, 10**9), "n_neg": (0, 10**9),
                 "n_boot": (0, 10**9)}
"""Numbers a signed evaluation may carry, with their range. A site signs what it likes; the
coordinator believes a number only when it is one, in range (a string AUC is a failed
record, not a crash)."""


def check_numbers(payload: Mapping[str, Any]) -> list[str]:
    """What is wrong with the numbers of one signed record (empty when nothing)."""
    problems = []
    for key, (lo, hi) in NUMBER_FIELDS.items():
        if key not in payload or payload[key] is None:
            continue
        v = payload[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            problems.append(f"{key} {str(v)[:40]!r} is not a number in [{lo}, {hi}]")
    if payload.get("kind") == "evaluation" and not isinstance(payload.get("auc"), int | float):
        problems.append("no numeric auc")
    return problems


def verify_reply(doc: dict[str, Any], trust_dir: Path, expected_sha: dict[str, str],
                 binding: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Verified numbers from one reply: ``{"site", "pooled", "own", "baseline"}``.

    Each present record is checked: trusted signature, kind, the site named inside the signed
    payload *and* that it is the site the signing key belongs to (the trust file's name), the
    run tag and request id signed in (``binding``: a record from another run or request is a
    replay), its numbers' types and ranges, and (for evaluations) the SHA-256 of the weights
    it claims to have scored. Problems are listed under ``"problems"`` instead of raising, so
    one bad record does not discard a site's other numbers. Each verified record keeps its
    signed original under ``"signed"``, for ``synthlearn audit verify`` on the report.
    """
    from shared.signing import SigningError, check_signer, load_trust, verify_record

    trusted = load_trust(trust_dir)
    site = str(doc.get("site", ""))[:64]
    out: dict[str, Any] = {"site": site, "problems": []}
    evaluations = doc.get("evaluations") or {}
    if not isinstance(evaluations, dict):
        raise ProtocolError(f"reply from {site}: 'evaluations' is not an object")
    items: list[tuple[str, Any, str]] = [(str(role)[:20], rec, "evaluation")
                                         for role, rec in evaluations.items()]
    if doc.get("baseline") is not None:
        items.append(("baseline", doc["baseline"], "local_real_baseline"))
    for role, record, kind in items:
        try:
            payload = verify_record(record, trust_dir, trusted)
            check_signer(payload.get("site"), str(record.get("key_fingerprint")), trust_dir,
                         f"{role} record")
        except SigningError as exc:
            out["problems"].append(f"{role}: {exc}")
            continue
        if payload.get("kind") != kind:
            out["problems"].append(f"{role}: signed record is a {str(payload.get('kind'))[:40]!r}"
                                   f", not {kind!r}")
            continue
        if payload.get("site") != site:
            out["problems"].append(f"{role}: signed for site {str(payload.get('site'))[:64]!r}, "
                                   f"reply says {site!r}")
            continue
        unbound = [f"{k} {str(payload.get(k))[:60]!r} (this run sent {v!r})"
                   for k, v in (binding or {}).items() if payload.get(k) != v]
        if unbound:
            out["problems"].append(f"{role}: signed for another run or request: "
                                   + ", ".join(unbound) + " — a replayed record")
            continue
        bad_numbers = check_numbers(payload)
        if bad_numbers:
            out["problems"].append(f"{role}: {'; '.join(bad_numbers)}")
            continue
        if kind == "evaluation":
            want = expected_sha.get(role)
            if want is None or payload.get("weights_sha256") != want:
                out["problems"].append(
                    f"{role}: evaluates weights {str(payload.get('weights_sha256'))[:64]}, which "
                    f"are not the {role} weights this run sent ({want})")
                continue
        out[role] = {**payload, "verified": True,
                     "key_fingerprint": record.get("key_fingerprint"), "signed": record}
    return out


def read_reply_files(folder: Path) -> list[dict[str, Any]]:
    """Every ``reply-*.json`` (or ``*/reply-*.json``) under ``folder``."""
    docs = []
    for path in sorted(set(Path(folder).glob("reply-*.json")) |
                       set(Path(folder).glob("*/reply-*.json"))):
        try:
            doc = loads_untrusted(path.read_bytes())
        except (OSError, UntrustedJSONError) as exc:
            raise ProtocolError(f"{path}: not a readable reply ({exc}); ask the site to send "
                              "it again") from None
        if not isinstance(doc, dict):
            raise ProtocolError(f"{path}: not a reply object")
        doc["_path"] = str(path)
        docs.append(doc)
    return docs
