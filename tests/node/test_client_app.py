"""The site's ClientApp answers only what DESIGN §2 allows and refuses anything else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from node.client_app import answer_content, describe_reply
from node.federation import check_numbers_only, check_request
from shared.errors import RequestRefusedError
from shared.protocol import PROTOCOL, REPLY_KEYS


@pytest.fixture
def keyed_site(tiny_site: Path) -> Path:
    from shared.signing import generate_keypair

    generate_keypair(tiny_site / "keys")
    (tiny_site / "keys" / "pseudonym").write_text("site-t")
    return tiny_site


def ask(site: Path, request: dict[str, Any], kind: str,
        weights: dict[str, bytes] | None = None, node: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    content = RecordDict({"request": ConfigRecord(request)})
    if weights:
        content["weights"] = ArrayRecord({k: Array(np.frombuffer(v, np.uint8))
                                          for k, v in weights.items()})
    reply = answer_content(content, {"site-dir": str(site), **(node or {})}, kind)
    cfg = describe_reply(reply)
    assert set(cfg) <= REPLY_KEYS
    return cfg


def test_ping_names_the_site_and_its_key_only(keyed_site: Path) -> None:
    cfg = ask(keyed_site, {"protocol": PROTOCOL, "action": "ping"}, "query")
    assert cfg["status"] == "ok" and cfg["site"] == "site-t"
    assert set(cfg["reply-json"]) == {"key_fingerprint", "allow_train", "ping"}
    from shared.signing import verify_record

    payload = verify_record(cfg["reply-json"]["ping"], keyed_site / "keys")
    assert payload["kind"] == "ping" and payload["site"] == "site-t"
    assert cfg["reply-json"]["allow_train"] is False  # off unless the admin turns it on


@pytest.mark.parametrize("request_, kind, why", [
    ({"protocol": PROTOCOL, "action": "send-real-images"}, "query", "unknown action"),
    ({"protocol": PROTOCOL, "action": "ping", "include": "weights"}, "query", "does not accept"),
    ({"protocol": 99, "action": "ping"}, "query", "protocol"),
    ({"protocol": PROTOCOL, "action": "ping"}, "train", "not answered on a train"),
    ({"protocol": PROTOCOL, "action": "export-bundle", "mode": "train",
      "gan-config": '{"device": "cuda"}'}, "train", "may not set device"),
    ({"protocol": PROTOCOL, "action": "export-bundle", "mode": "steal"}, "train", "neither"),
])
def test_requests_for_anything_else_are_refused_with_a_reason(
        keyed_site: Path, request_: dict[str, Any], kind: str, why: str) -> None:
    cfg = ask(keyed_site, request_, kind, node={"allow-train": True})
    assert cfg["status"] == "refused"
    assert why in cfg["reason"]
    assert "bundle" not in cfg and set(cfg["reply-json"]) == {"refusal"}
    from shared.signing import verify_record

    signed = verify_record(cfg["reply-json"]["refusal"], keyed_site / "keys")
    assert signed["kind"] == "refusal" and signed["reason"] == cfg["reason"]


def test_site_that_does_not_train_on_request_refuses_train_mode(keyed_site: Path) -> None:
    cfg = ask(keyed_site, {"protocol": PROTOCOL, "action": "export-bundle", "mode": "train"},
              "train", node={"allow-train": False})
    assert cfg["status"] == "refused" and "allow_train = false" in cfg["reason"]


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_train_request_with_a_non_finite_time_budget_never_trains(keyed_site: Path,
                                                                  value: str) -> None:
    """JSON NaN passed `max_minutes <= 0` and `max_minutes > cap`, so the site's own
    max-train-minutes was skipped and the training deadline (now + NaN) never came."""
    request = {"protocol": PROTOCOL, "action": "export-bundle", "mode": "train",
               "gan-config": f'{{"max_minutes": {value}, "kimg": 1000000}}'}
    cfg = ask(keyed_site, request, "train", node={"allow-train": True,
                                                  "max-train-minutes": 1.0})
    assert cfg["status"] != "ok" and "finite number" in cfg["reason"]
    assert not (keyed_site / "runs").exists() or not any((keyed_site / "runs").iterdir())


def test_failure_reasons_leaving_the_site_carry_no_local_paths(keyed_site: Path) -> None:
    # collect mode without a synthetic set: the export fails with a message naming files
    cfg = ask(keyed_site, {"protocol": PROTOCOL, "action": "export-bundle", "mode": "collect"},
              "train")
    assert cfg["status"] in ("failed", "refused")
    assert str(keyed_site) not in cfg["reason"] and "<path>" in cfg["reason"]


def test_the_same_export_asked_twice_within_a_second_is_answered_twice(
        keyed_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted coordinator may repeat a request at once: the second export used to be
    refused because its bundle file name (run tag + second) was the first one's."""
    import time
    from types import SimpleNamespace

    from tests.coordinator.fedutil import audited_stand_in

    audited_stand_in(keyed_site, 0, size=32)
    monkeypatch.setattr("node.federation.time",
                        SimpleNamespace(time=lambda: 1_800_000_000.0, monotonic=time.monotonic))
    req = {"protocol": PROTOCOL, "action": "export-bundle", "mode": "collect",
           "run-tag": "run-1"}
    node = {"accept-risk": "test site: 32 px blobs look alike; no patient exists"}
    first = ask(keyed_site, req, "train", node=node)
    again = ask(keyed_site, req, "train", node=node)
    assert first["status"] == again["status"] == "ok", (first, again)
    assert len(list((keyed_site / "exports").glob("run-1-1800000000-*.slbundle"))) == 2


def test_evaluate_returns_signed_numbers_bound_to_the_weights(keyed_site: Path,
                                                              tmp_path: Path) -> None:
    from shared.classifier import ResNetClassifier
    from shared.signing import verify_record
    from shared.weights_io import save_weights

    weights = tmp_path / "w.npz"
    save_weights(ResNetClassifier(2, width=8), weights,
                 {"classes": "binary", "class_names": ["normal", "abnormal"]})
    data = weights.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    req = {"protocol": PROTOCOL, "action": "evaluate", "weights-sha256": sha, "n-boot": 200,
           "request-id": "req-1", "run-tag": "run-1"}
    cfg = ask(keyed_site, req, "evaluate", {"pooled": data})
    assert cfg["status"] == "ok", cfg
    doc = cfg["reply-json"]
    trust = keyed_site / "keys"
    payload = verify_record(doc["evaluations"]["pooled"], trust)
    assert payload["kind"] == "evaluation" and payload["weights_sha256"] == sha
    assert payload["site"] == "site-t" and 0.0 <= payload["auc"] <= 1.0
    assert payload["request_id"] == "req-1" and payload["run_tag"] == "run-1"
    assert "sensitivity" not in payload  # no site threshold set: AUC and its CI only
    check_numbers_only(payload)
    assert doc["baseline"] is None  # this site never ran a baseline
    # Weights changed in transit: refused, nothing evaluated.
    bad = ask(keyed_site, {**req, "weights-sha256": "0" * 64, "request-id": "req-2"},
              "evaluate", {"pooled": data})
    assert bad["status"] == "refused" and "changed in transit" in bad["reason"]


def test_numbers_only_guard_refuses_per_image_data() -> None:
    check_numbers_only({"auc": 0.8, "ci": [0.7, 0.9], "n": 40})
    with pytest.raises(RequestRefusedError, match="per-image"):
        check_numbers_only({"scores": list(np.linspace(0, 1, 500))})
    with pytest.raises(RequestRefusedError, match="cannot leave"):
        check_numbers_only({"pixels": np.zeros((4, 4))})
    with pytest.raises(RequestRefusedError):
        check_request({"protocol": PROTOCOL, "action": "evaluate", "real": json.dumps([1])})
