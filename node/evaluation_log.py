"""The site's evaluation log: every evaluation request a coordinator sent, answered or not.

Why: each evaluation scores the site's *real* test images. A coordinator that may ask without
limit can probe them (an oracle: send crafted weights, read the numbers back). The log lets the
admin see who asked what and when, and it is what the policy's limits are counted on
(:attr:`node.site_policy.SitePolicy.max_evaluations_per_run` / ``_per_day``); a request id
already in the log is a replay and is refused.

File: ``SITE/metrics/evaluation-log.jsonl``, one JSON object a line: time, run tag, request id,
weights SHA-256s, verdict (``answered`` / ``refused`` / ``failed``: the weights ran on real
images and the evaluation broke part-way, counted like an answer) and the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import RequestRefusedError
from shared.files import append_jsonl

LOG_NAME = "evaluation-log.jsonl"
DAY_S = 24 * 3600


def log_path(site_dir: Path) -> Path:
    return Path(site_dir) / "metrics" / LOG_NAME


def entries(site_dir: Path) -> list[dict[str, Any]]:
    """Every log entry (an unreadable line counts as an answered request: when in doubt the
    limit is reached sooner, never later)."""
    path = log_path(site_dir)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        out.append(rec if isinstance(rec, dict) else {"verdict": "answered", "time": time.time()})
    return out


def append(site_dir: Path, request: Mapping[str, Any], verdict: str, reason: str = "") -> None:
    rec = {"time": time.time(), "run_tag": str(request.get("run-tag", "")),
           "request_id": str(request.get("request-id", "")),
           "weights_sha256": str(request.get("weights-sha256", "")),
           "own_weights_sha256": str(request.get("own-weights-sha256", "")),
           "verdict": verdict, "reason": reason}
    append_jsonl(log_path(site_dir), rec)


def check_allowed(site_dir: Path, request: Mapping[str, Any], *, per_run: int,
                  per_day: int, now: float | None = None) -> None:
    """Raise :class:`RequestRefusedError` when answering ``request`` would replay an answered
    request or go past the policy's limits."""
    now = time.time() if now is None else now
    log = entries(site_dir)
    answered = [e for e in log if e.get("verdict") == "answered"]
    # What the limits count: every request whose weights ran on real images, answered or
    # failed part-way (a failure the sender can provoke is an answer too).
    counted = [e for e in log if e.get("verdict") in ("answered", "failed")]
    rid = str(request.get("request-id", ""))
    if not rid:
        raise RequestRefusedError("evaluation request has no request-id; refusing an "
                                  "unbound request")
    if any(str(e.get("request_id")) == rid for e in answered):
        raise RequestRefusedError(f"evaluation request {rid} was already answered: a "
                                  "replayed request is not evaluated again")
    tag = str(request.get("run-tag", ""))
    in_run = sum(1 for e in counted if str(e.get("run_tag")) == tag)
    if in_run >= per_run:
        raise RequestRefusedError(
            f"this site answers at most {per_run} evaluation request(s) per run (policy "
            f"max_evaluations_per_run); run {tag!r} has had {in_run}")
    today = sum(1 for e in counted if now - float(e.get("time", now)) < DAY_S)
    if today >= per_day:
        raise RequestRefusedError(
            f"this site answers at most {per_day} evaluation request(s) per day (policy "
            f"max_evaluations_per_day); {today} in the last 24 hours")
