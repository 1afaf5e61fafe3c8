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


# -- replies that are not JSON Python can hold ---------------------------------------------------
HOSTILE_JSON = {"huge-int": '{"site": ' + "1" * 5000 + "}", "deep": "[" * 100_000,
                "nested": '{"ping": ' + "[" * 900 + "]" * 900 + "}",
                "duplicate": '{"request_id": "x", "request_id": "y"}'}


class _Replies:
    """A transport whose one node answers every round with ``reply_json``."""

    name = "stub"

    def __init__(self, reply_json: str) -> None:
        self.reply_json = reply_json

    def node_ids(self) -> list[int]:
        return [1]

    def exchange(self, kind: str, requests: dict, weights: object, timeout: float) -> dict:
        from shared.protocol import Outcome

        return {n: Outcome(n, {"status": "ok", "site": "site-a", "reply-json": self.reply_json})
                for n in requests}


def _run(tmp_path: Path, reply_json: str) -> object:
    from coordinator.phases import Run, settings_from_run_config

    trust = tmp_path / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    settings = settings_from_run_config({"work-dir": str(tmp_path / "work"),
                                         "trust-dir": str(trust), "run-name": "r",
                                         "expected-sites": 1, "node-wait-s": 0.01})
    return Run(settings, _Replies(reply_json), log=lambda _: None)


def test_a_ping_that_is_not_plain_json_excludes_that_node_only(tmp_path: Path) -> None:
    """An integer over 4300 digits (a bare ValueError) or deep nesting (RecursionError)
    used to escape the ping's check and stop the run for every site."""
    for label, text in HOSTILE_JSON.items():
        run = _run(tmp_path / label, text)
        assert run.sites() == {}, label
        reason = run.state.site_statuses("r")["node #1"]["reason"]
        assert "ping claiming site 'site-a'" in reason and "reply-json" in reason, reason


def test_an_evaluation_reply_that_is_not_plain_json_fails_that_site_only(
        tmp_path: Path) -> None:
    for label, text in HOSTILE_JSON.items():
        run = _run(tmp_path / label, text)
        weights = tmp_path / label / "pooled.npz"
        weights.write_bytes(b"weights")
        run.state.finish_phase("r", "train", {"pooled": {"weights_sha256": "a" * 64,
                                                         "weights": str(weights)}, "own": {}})
        run._sites = {1: "site-a"}
        assert run.phase_evaluate() == {"answered": 0}, label
        status = run.state.site_statuses("r")["site-a"]
        assert status["status"] == "failed" and "reply-json" in status["reason"], status


def test_a_reply_file_that_is_not_plain_json_is_named_not_a_traceback(tmp_path: Path) -> None:
    import pytest

    from shared.errors import ProtocolError
    from shared.protocol import read_reply_files

    for label, text in HOSTILE_JSON.items():
        folder = tmp_path / label
        folder.mkdir()
        (folder / "reply-site-a.json").write_text(text)
        with pytest.raises(ProtocolError, match=r"reply-site-a\.json: not a readable reply"):
            read_reply_files(folder)
