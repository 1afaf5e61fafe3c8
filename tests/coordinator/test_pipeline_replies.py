"""A reply is accepted only for the site the request went to: a hostile site cannot answer
for another one, nor replay a reply to an older request, on either path (one function)."""

from __future__ import annotations

from pathlib import Path

from coordinator.pipeline import accept_reply, request_evaluations, site_rows
from coordinator.state import CoordinatorState

TRAINED = {"pooled": {"weights_sha256": "a" * 64, "weights": "pooled.npz"}, "own": {}}


def _state(tmp_path: Path) -> CoordinatorState:
    state = CoordinatorState(tmp_path / "state.db")
    for site in ("site-a", "site-b"):
        state.set_site_status("r", site, "ok")
    return state


def test_a_reply_naming_another_site_is_a_failure_for_the_site_asked(tmp_path: Path) -> None:
    state = _state(tmp_path)
    requests = request_evaluations("r", TRAINED, ["site-a", "site-b"], 200)
    # site-b copies site-a's request id into its own reply file
    doc = {"site": "site-b", "request_id": requests["site-a"]["request-id"], "evaluations": {}}
    assert not accept_reply(state, "r", "site-a", doc, requests["site-a"], TRAINED, tmp_path)
    assert state.site_statuses("r")["site-a"] == {"status": "failed",
                                                  "reason": "reply names site 'site-b'"}


def test_a_replayed_reply_to_another_request_is_refused(tmp_path: Path) -> None:
    state = _state(tmp_path)
    requests = request_evaluations("r", TRAINED, ["site-a"], 200)
    doc = {"site": "site-a", "request_id": "an-old-request", "evaluations": {}}
    assert not accept_reply(state, "r", "site-a", doc, requests["site-a"], TRAINED, tmp_path)
    status = state.site_statuses("r")["site-a"]
    assert status["status"] == "failed" and "an-old-request" in status["reason"]


def test_one_status_rule_for_a_site_without_a_verified_evaluation(tmp_path: Path) -> None:
    state = _state(tmp_path)
    # site-a replied, but nothing in its reply verified; site-b never replied
    state.add_evaluation("r", "site-a", "problems", {"problems": ["pooled: bad signature"]})
    rows = site_rows(state, "r", None)
    assert (rows["site-a"]["status"], rows["site-b"]["status"]) == ("failed", "dropped")
    assert rows["site-a"]["problems"] == ["pooled: bad signature"]
