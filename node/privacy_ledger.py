"""The site's privacy ledger: every DP training run's (ε, δ), appended, never rewritten.

Why: a DP guarantee is per run. A coordinator that asks for ten runs at ε = 8 has had the
site spend ε = 80 on the same patients (basic sequential composition: ε and δ add). The ledger
keeps that sum where the admin, the coordinator and an auditor can see it: it is signed into
every bundle manifest (``privacy_ledger``) and shown by ``synthlearn audit verify`` and the
coordinator's report, and the site refuses work that would take it past the lifetime budget
its admin set (:attr:`node.site_policy.SitePolicy.lifetime_epsilon`).

File: ``SITE/privacy-ledger.jsonl``, one JSON object a line::

    {"time": "...Z", "run": "demo", "epsilon": 7.93, "delta": 1e-5, "source": "gan_training"}

API (also used by a second training round, issue 12): :func:`record_spend`,
:func:`spent`, :func:`remaining`, :func:`check_budget`, :func:`summary`.

>>> import tempfile
>>> site = Path(tempfile.mkdtemp())
>>> _ = record_spend(site, 2.0, 1e-5, run="r1")
>>> _ = record_spend(site, 3.5, 1e-5, run="r2")
>>> spent(site)
(5.5, 2e-05)
>>> remaining(site, 8.0)
2.5
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.errors import LedgerError, PrivacyBudgetError

LEDGER_NAME = "privacy-ledger.jsonl"


def ledger_path(site_dir: Path) -> Path:
    return Path(site_dir) / LEDGER_NAME


def entries(site_dir: Path) -> list[dict[str, Any]]:
    """Every ledger entry, oldest first. A corrupt line is an error, never skipped (skipping
    would under-count what was spent)."""
    path = ledger_path(site_dir)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            eps, delta = float(rec["epsilon"]), float(rec["delta"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise LedgerError(f"{path}:{i}: not a ledger entry; the site cannot tell what it "
                              "has spent; restore the file from backup") from None
        if not (math.isfinite(eps) and eps >= 0 and math.isfinite(delta) and delta >= 0):
            raise LedgerError(f"{path}:{i}: ε {eps} / δ {delta} is not a spend")
        out.append(rec)
    return out


def record_spend(site_dir: Path, epsilon: float, delta: float, *, run: str = "",
                 source: str = "gan_training") -> dict[str, Any]:
    """Append one DP run's spend (fsync'd: a crash after training must not forget it)."""
    from shared.files import append_jsonl

    if not (math.isfinite(epsilon) and epsilon >= 0 and math.isfinite(delta) and delta >= 0):
        raise LedgerError(f"refusing to record ε {epsilon} / δ {delta}: not a spend")
    rec = {"time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "run": run,
           "epsilon": float(epsilon), "delta": float(delta), "source": source}
    append_jsonl(ledger_path(site_dir), rec)
    return rec


def spent(site_dir: Path) -> tuple[float, float]:
    """(Σε, Σδ) over the ledger: basic sequential composition."""
    recs = entries(site_dir)
    return (round(sum(float(r["epsilon"]) for r in recs), 6),
            round(sum(float(r["delta"]) for r in recs), 12))


def remaining(site_dir: Path, lifetime_epsilon: float | None) -> float | None:
    """ε left under the lifetime budget (None when the admin set none)."""
    if lifetime_epsilon is None:
        return None
    return round(max(0.0, lifetime_epsilon - spent(site_dir)[0]), 6)


def check_budget(site_dir: Path, epsilon: float, lifetime_epsilon: float | None) -> None:
    """Raise :class:`PrivacyBudgetError` when spending ``epsilon`` more would exceed the
    lifetime budget."""
    if lifetime_epsilon is None:
        return
    total = spent(site_dir)[0]
    if total + epsilon > lifetime_epsilon + 1e-9:
        raise PrivacyBudgetError(
            f"privacy budget: this site has spent ε = {total:g} of its lifetime ε = "
            f"{lifetime_epsilon:g}; a run at ε = {epsilon:g} would exceed it "
            f"({remaining(site_dir, lifetime_epsilon):g} left)")


def record_dp_report(site_dir: Path, dp: dict[str, Any] | None, run: str) -> None:
    """Record a finished training run's DP accounting (composed over its parts); no-op for
    a run without DP."""
    if not isinstance(dp, dict) or dp.get("epsilon_spent") is None:
        return
    record_spend(site_dir, float(dp["epsilon_spent"]), float(dp.get("delta") or 0.0), run=run,
                 source="gan_training")


def summary(site_dir: Path, lifetime_epsilon: float | None = None) -> dict[str, Any]:
    """What a manifest carries (signed): totals under basic composition, runs, the budget."""
    eps, delta = spent(site_dir)
    return {"composition": "basic (ε and δ add)", "cumulative_epsilon": eps,
            "cumulative_delta": delta, "dp_runs": len(entries(site_dir)),
            "lifetime_epsilon": lifetime_epsilon,
            "remaining_epsilon": remaining(site_dir, lifetime_epsilon)}
