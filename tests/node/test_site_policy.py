"""A hostile coordinator: whatever it asks, the site's admin policy decides (issue 11, finding 3
and 4). Every refusal is a signed reply naming the reason, and nothing of the site leaks."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from node.client_app import answer_content, describe_reply
from shared.protocol import PROTOCOL


@pytest.fixture
def site(tiny_site: Path) -> Path:
    from shared.signing import generate_keypair

    generate_keypair(tiny_site / "keys")
    (tiny_site / "keys" / "pseudonym").write_text("site-t")
    return tiny_site


def ask(site: Path, request: dict[str, Any], kind: str, weights: dict[str, bytes] | None = None,
        node: dict[str, Any] | None = None) -> dict[str, Any]:
    content = RecordDict({"request": ConfigRecord(request)})
    if weights:
        content["weights"] = ArrayRecord({k: Array(np.frombuffer(v, np.uint8))
                                          for k, v in weights.items()})
    cfg = describe_reply(answer_content(content, {"site-dir": str(site), **(node or {})}, kind))
    if cfg["status"] != "ok":
        # Every refusal is signed by the site and carries the same reason; no local path.
        from shared.signing import verify_record

        signed = verify_record(cfg["reply-json"]["refusal"], site / "keys")
        assert signed["reason"] == cfg["reason"] and signed["site"] == "site-t"
        assert str(site) not in json.dumps(cfg)
    return cfg


def train_request(gan: dict[str, Any]) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "action": "export-bundle", "mode": "train",
            "run-tag": "r1", "gan-config": json.dumps(gan)}


# -- training ------------------------------------------------------------------------------------
def test_training_is_refused_unless_the_admin_turned_it_on(site: Path) -> None:
    cfg = ask(site, train_request({"dp_epsilon": 2.0, "kimg": 1}), "train")
    assert cfg["status"] == "refused"
    assert "does not train on request (site policy allow_train = false)" in cfg["reason"]


@pytest.mark.parametrize("gan, why", [
    ({"kimg": 1}, "trains only with differential privacy (site policy require_dp)"),
    ({"kimg": 1, "dp_epsilon": 1e6}, "requested ε = 1e+06 is above this site's limit of 10"),
])
def test_dp_off_or_epsilon_above_policy_is_refused(site: Path, gan: dict[str, Any],
                                                   why: str) -> None:
    cfg = ask(site, train_request(gan), "train", node={"allow-train": True})
    assert cfg["status"] == "refused" and why in cfg["reason"]
    assert not (site / "runs").exists()  # nothing trained


def test_a_request_past_the_lifetime_budget_is_refused(site: Path) -> None:
    from node.privacy_ledger import record_spend

    (site / "site.toml").write_text("[policy]\nallow_train = true\nlifetime_epsilon = 10.0\n")
    record_spend(site, 7.5, 1e-5, run="earlier")
    cfg = ask(site, train_request({"kimg": 1, "dp_epsilon": 4.0}), "train")
    assert cfg["status"] == "refused"
    assert ("has spent ε = 7.5 of its lifetime ε = 10; a run at ε = 4 would exceed it (2.5 "
            "left)") in cfg["reason"]


def test_time_caps_and_audit_gates_are_the_admins(site: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator asks for 600 minutes and loose gates; the site trains within its own
    caps and audits with the [audit] table of its site.toml."""
    import node.audit
    import node.baseline
    import node.generate
    import node.training

    (site / "site.toml").write_text(
        "[policy]\nallow_train = true\nmax_train_minutes = 3\nmax_spine_minutes = 2\n"
        "max_baseline_minutes = 1.5\n\n[audit]\nmax_copy_rate = 0.02\nencoder = \"none\"\n")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(node.training, "train", lambda s, cfg, **kw: seen.update(gan=cfg))
    monkeypatch.setattr(node.generate, "generate", lambda *a, **kw: None)

    def audit(*a: Any, cfg: Any = None, **kw: Any) -> None:
        seen["audit"] = cfg
        raise node.audit.AuditError("stop here")

    monkeypatch.setattr(node.audit, "run_audit", audit)
    cfg = ask(site, train_request({"kimg": 1, "dp_epsilon": 5.0, "max_minutes": 600,
                                   "spine_max_minutes": 600}), "train")
    assert cfg["status"] == "failed" and "stop here" in cfg["reason"]
    assert seen["gan"].max_minutes == 3 and seen["gan"].spine_max_minutes == 2
    assert seen["audit"].max_copy_rate == 0.02

    baseline: dict[str, Any] = {}

    def run_baseline(s: Path, cfg: Any, **kw: Any) -> None:
        baseline["cfg"] = cfg
        raise node.audit.AuditError("baseline stop")

    monkeypatch.setattr(node.audit, "run_audit", lambda *a, **kw: None)
    monkeypatch.setattr(node.baseline, "run_baseline", run_baseline)
    req = {**train_request({"kimg": 1, "dp_epsilon": 5.0}),
           "baseline-config": json.dumps({"max_minutes": 500})}
    cfg = ask(site, req, "train")
    assert "baseline stop" in cfg["reason"] and baseline["cfg"].max_minutes == 1.5


def _baseline_asked_for(site: Path, monkeypatch: pytest.MonkeyPatch, baseline_config: str,
                        node_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config and ``recipe`` a training request's baseline step was run with."""
    import node.audit
    import node.baseline
    import node.generate
    import node.training

    monkeypatch.setattr(node.training, "train", lambda *a, **kw: None)
    monkeypatch.setattr(node.generate, "generate", lambda *a, **kw: None)
    monkeypatch.setattr(node.audit, "run_audit", lambda *a, **kw: None)
    seen: dict[str, Any] = {}

    def run_baseline(s: Path, cfg: Any, **kw: Any) -> None:
        seen.update(cfg=cfg, **kw)
        raise node.audit.AuditError("baseline stop")

    monkeypatch.setattr(node.baseline, "run_baseline", run_baseline)
    req = {**train_request({"kimg": 1, "dp_epsilon": 5.0}), "baseline-config": baseline_config}
    reply = ask(site, req, "train", node=node_config)
    assert "baseline stop" in reply["reason"], reply
    return seen


def test_the_yardstick_is_trained_with_the_site_s_recipe_not_the_coordinator_s(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that wants joining to look good asks for a crippled local baseline (one
    epoch of a width-1 network at a vanishing learning rate). The site signs its baseline, so
    it trains its own recipe: SITE/site.toml's [classifier] over the 200-step floor, what
    `node baseline` trains. Only an admin's ``baseline_recipe = "request"`` hands it over."""
    from node.baseline import FEW_STEPS

    (site / "site.toml").write_text(
        "[policy]\nallow_train = true\nmax_baseline_minutes = 2\n\n"
        "[classifier]\nwidth = 8\nepochs = 3\n")
    crippled = json.dumps({"epochs": 1, "width": 1, "lr": 1e-9, "min_steps": 0,
                           "classes": "binary"})
    seen = _baseline_asked_for(site, monkeypatch, crippled)
    cfg = seen["cfg"]
    assert (cfg.width, cfg.epochs, cfg.lr, cfg.min_steps) == (8, 3, 1e-3, FEW_STEPS)
    assert cfg.max_minutes == 2 and seen["recipe"] == "site" and seen["classes"] == "binary"
    # Not even parsed: a recipe the site would refuse cannot stop its baseline.
    assert _baseline_asked_for(site, monkeypatch, json.dumps({"width": -5}))["recipe"] == "site"

    seen = _baseline_asked_for(site, monkeypatch, crippled,
                               node_config={"baseline-recipe": "request"})
    assert (seen["cfg"].width, seen["cfg"].lr, seen["cfg"].min_steps) == (1, 1e-9, 0)
    assert seen["recipe"] == "request" and seen["cfg"].max_minutes == 2



def test_a_policy_file_given_to_node_join_sets_the_yardstick_not_site_toml(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`node join --policy FILE` (node config policy-file): FILE's [classifier] trains the
    baseline, as its [policy] and [audit] apply; SITE/site.toml is not read."""
    (site / "site.toml").write_text("[policy]\nallow_train = true\n\n[classifier]\nwidth = 8\n")
    policy = tmp_path / "hospital-policy.toml"
    policy.write_text("[policy]\nallow_train = true\n\n[classifier]\nwidth = 16\n")
    seen = _baseline_asked_for(site, monkeypatch, json.dumps({"width": 1}),
                               node_config={"policy-file": str(policy)})
    assert seen["cfg"].width == 16 and seen["recipe"] == "site"

@pytest.mark.parametrize("earlier", [
    {"recipe": "request"},  # trained on an earlier request under baseline_recipe = "request"
    {},  # trained before records named their recipe's owner (the coordinator's, on request)
])
def test_a_yardstick_on_disk_that_the_site_did_not_choose_is_trained_again(
        site: Path, monkeypatch: pytest.MonkeyPatch, earlier: dict[str, Any]) -> None:
    """A coordinator that got its crippled recipe trained once (before this site upgraded, or
    while its admin had said "request") must not keep that yardstick for ever: under "site"
    a baseline on disk whose record does not say "site" is trained again, the site's way."""
    (site / "site.toml").write_text("[policy]\nallow_train = true\n\n[classifier]\nwidth = 8\n")
    (site / "metrics").mkdir(exist_ok=True)
    (site / "metrics" / "baseline.json").write_text(json.dumps(
        {"kind": "local_real_baseline", "auc": 0.5, "config": {"width": 1}, **earlier}))
    crippled = json.dumps({"epochs": 1, "width": 1})
    seen = _baseline_asked_for(site, monkeypatch, crippled)
    assert seen["cfg"].width == 8 and seen["recipe"] == "site"


def test_a_yardstick_the_site_chose_is_kept(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import node.audit
    import node.baseline
    import node.generate
    import node.quality
    import node.training

    (site / "site.toml").write_text("[policy]\nallow_train = true\n")
    (site / "metrics").mkdir(exist_ok=True)
    (site / "metrics" / "baseline.json").write_text(json.dumps(
        {"kind": "local_real_baseline", "auc": 0.8, "recipe": "site"}))
    monkeypatch.setattr(node.training, "train", lambda *a, **kw: None)
    monkeypatch.setattr(node.generate, "generate", lambda *a, **kw: None)
    monkeypatch.setattr(node.audit, "run_audit", lambda *a, **kw: None)
    trained: list[Any] = []
    monkeypatch.setattr(node.baseline, "run_baseline", lambda *a, **kw: trained.append(kw))

    def stop(*a: Any, **kw: Any) -> None:
        raise node.audit.AuditError("quality stop")

    monkeypatch.setattr(node.quality, "score_synthetic", stop)
    reply = ask(site, train_request({"kimg": 1, "dp_epsilon": 5.0}), "train")
    assert "quality stop" in reply["reason"] and trained == []
    # Under "request" the site keeps whatever it has: the admin handed the recipe over.
    (site / "metrics" / "baseline.json").write_text(json.dumps({"recipe": "request"}))
    reply = ask(site, train_request({"kimg": 1, "dp_epsilon": 5.0}), "train",
                node={"baseline-recipe": "request"})
    assert "quality stop" in reply["reason"] and trained == []


def _gan_train_recipe(site: Path, monkeypatch: pytest.MonkeyPatch, baseline_config: str,
                      node_config: dict[str, Any] | None = None) -> Any:
    """The recipe the GAN-train CNN of a training request was trained with."""
    import node.audit
    import node.baseline
    import node.generate
    import node.quality
    import node.training

    monkeypatch.setattr(node.training, "train", lambda *a, **kw: None)
    monkeypatch.setattr(node.generate, "generate", lambda *a, **kw: None)
    monkeypatch.setattr(node.audit, "run_audit", lambda *a, **kw: None)
    monkeypatch.setattr(node.baseline, "run_baseline", lambda *a, **kw: None)
    seen: dict[str, Any] = {}

    def score(site_dir: Path, name: str, cfg: Any = None, **kw: Any) -> None:
        seen["cfg"] = cfg
        raise node.audit.AuditError("quality stop")

    monkeypatch.setattr(node.quality, "score_synthetic", score)
    req = {**train_request({"kimg": 1, "dp_epsilon": 5.0}), "baseline-config": baseline_config}
    reply = ask(site, req, "train", node=node_config)
    assert "quality stop" in reply["reason"], reply
    return seen["cfg"]


def test_the_gan_train_cnn_follows_the_baseline_s_recipe_owner(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GAN-train is the site's signed "own synthetic" AUC (the report's column when the
    coordinator trains no own-synthetic CNN) and is read beside the local real AUC: under
    "site" the coordinator's crippled recipe must not train it either, and a recipe the site
    would refuse must not fail the export after the baseline."""
    (site / "site.toml").write_text("[policy]\nallow_train = true\n\n[classifier]\nwidth = 8\n")
    crippled = json.dumps({"epochs": 1, "width": 1, "lr": 1e-9, "max_minutes": 30})
    cfg = _gan_train_recipe(site, monkeypatch, crippled)
    assert (cfg.width, cfg.lr, cfg.max_minutes) == (8, 1e-3, 1.0)
    assert _gan_train_recipe(site, monkeypatch, json.dumps({"width": -5})).width == 8
    cfg = _gan_train_recipe(site, monkeypatch, crippled, {"baseline-recipe": "request"})
    assert (cfg.width, cfg.lr, cfg.max_minutes) == (1, 1e-9, 1.0)


@pytest.mark.parametrize("toml, baseline_config, node_config, why", [
    ("[classifier]\nwidht = 8\n", "{}", None, "unknown key 'widht'"),
    ("", json.dumps({"width": -5}), {"baseline-recipe": "request"}, "width must be ≥ 1"),
])
def test_a_bad_baseline_recipe_stops_a_training_request_before_the_gan_trains(
        site: Path, monkeypatch: pytest.MonkeyPatch, toml: str, baseline_config: str,
        node_config: dict[str, Any] | None, why: str) -> None:
    """A typo in the site's [classifier] (or a recipe it would refuse, under "request") used
    to surface only after up to an hour of GAN training and auditing."""
    import node.training

    (site / "site.toml").write_text("[policy]\nallow_train = true\n\n" + toml)
    trained: list[Any] = []
    monkeypatch.setattr(node.training, "train", lambda *a, **kw: trained.append(a))
    req = {**train_request({"kimg": 1, "dp_epsilon": 5.0}), "baseline-config": baseline_config}
    reply = ask(site, req, "train", node=node_config)
    assert reply["status"] == "failed" and why in reply["reason"], reply
    assert trained == []

def test_a_bad_site_recipe_or_recipe_owner_stops_with_the_file_and_key(site: Path) -> None:
    from node.baseline import site_recipe
    from node.federation import settings_from_node_config
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline_recipe must be one of site, request"):
        settings_from_node_config({"site-dir": str(site), "baseline-recipe": "coordinator"})
    (site / "site.toml").write_text("[classifier]\nwidht = 8\n")
    with pytest.raises(ConfigError, match=r"site\.toml \[classifier\].*unknown key 'widht'"):
        site_recipe(site)


def test_a_misspelt_table_in_the_site_toml_stops_instead_of_leaving_the_defaults(
        site: Path) -> None:
    """`[classifer]` used to be ignored: `node baseline` trained the default recipe (and a
    `[polcy]` left every limit at its default) while the admin believed theirs applied."""
    from node.baseline import site_recipe
    from node.site_policy import load_audit_config, load_policy
    from shared.errors import ConfigError

    (site / "site.toml").write_text("[classifer]\nwidth = 8\n")
    for load in (site_recipe, load_policy, load_audit_config):
        with pytest.raises(ConfigError, match=r"site\.toml: unknown table \[classifer\] "
                                              r"\(known: \[audit\], \[classifier\], \[policy\]\)"):
            load(site)
    (site / "site.toml").write_text("[policy]\nallow_train = true\n[audit]\n[classifier]\n"
                                    "width = 8\n")
    assert site_recipe(site).width == 8 and load_policy(site).allow_train is True


def test_node_config_overrides_the_site_toml_and_a_bad_policy_stops(site: Path) -> None:
    from node.federation import settings_from_node_config
    from shared.errors import ConfigError

    (site / "site.toml").write_text("[policy]\nallow_train = true\nmax_epsilon_per_run = 4\n")
    s = settings_from_node_config({"site-dir": str(site), "max-epsilon-per-run": 2.0})
    assert s.policy().allow_train is True and s.policy().max_epsilon_per_run == 2.0
    (site / "site.toml").write_text("[policy]\nallow_trian = true\n")
    with pytest.raises(ConfigError, match="unknown key 'allow_trian'"):
        settings_from_node_config({"site-dir": str(site)})


# -- evaluation ----------------------------------------------------------------------------------
def weights_file(tmp: Path, meta: dict[str, Any] | None = None, width: int = 8) -> bytes:
    from shared.classifier import ResNetClassifier
    from shared.weights_io import save_weights

    path = tmp / f"w-{width}-{len(meta or {})}.npz"
    save_weights(ResNetClassifier(2, width=width), path,
                 {"classes": "binary", "class_names": ["normal", "abnormal"], **(meta or {})})
    return path.read_bytes()


def eval_request(data: bytes, rid: str, tag: str = "run-1") -> dict[str, Any]:
    return {"protocol": PROTOCOL, "action": "evaluate", "request-id": rid, "run-tag": tag,
            "weights-sha256": hashlib.sha256(data).hexdigest(), "n-boot": 200}


def test_a_threshold_in_the_weights_metadata_is_refused(site: Path, tmp_path: Path) -> None:
    data = weights_file(tmp_path, {"threshold": 0.01})
    cfg = ask(site, eval_request(data, "r1"), "evaluate", {"pooled": data})
    assert cfg["status"] == "refused"
    assert ("pooled weights carry a decision threshold (0.01) in their metadata; this site "
            "uses its own threshold") in cfg["reason"]


def test_the_site_scores_at_its_own_threshold_only(site: Path, tmp_path: Path) -> None:
    data = weights_file(tmp_path)
    (site / "site.toml").write_text("[policy]\neval_threshold = 0.5\n")
    cfg = ask(site, eval_request(data, "r1"), "evaluate", {"pooled": data})
    payload = cfg["reply-json"]["evaluations"]["pooled"]["payload"]
    assert {"sensitivity", "specificity"} <= set(payload)


def test_an_unbounded_architecture_is_refused_before_building(site: Path,
                                                              tmp_path: Path) -> None:
    import io

    from shared.weights_io import META_KEY

    data = weights_file(tmp_path)
    arrays = dict(np.load(io.BytesIO(data)))
    meta = json.loads(arrays[META_KEY].tobytes())
    meta["architecture"]["width"] = 4096
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    hostile = buf.getvalue()
    cfg = ask(site, eval_request(hostile, "r1"), "evaluate", {"pooled": hostile})
    assert cfg["status"] == "refused"
    assert "architecture width = 4096 is outside 1..128; refused before building" in cfg["reason"]
    meta["architecture"].update(width=8, depth=50)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    cfg = ask(site, eval_request(buf.getvalue(), "r2"), "evaluate", {"pooled": buf.getvalue()})
    assert "architecture sets unknown keys ['depth']" in cfg["reason"]


def test_an_oversized_npz_member_is_refused_before_inflating(site: Path, tmp_path: Path) -> None:
    import io

    data = weights_file(tmp_path)
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.npy", b"\0" * (80 << 20))  # 80 MiB of zeros, ~80 kB deflated
    hostile = buf.getvalue()
    assert len(hostile) < 1 << 20
    cfg = ask(site, eval_request(hostile, "r1"), "evaluate", {"pooled": hostile})
    assert cfg["status"] == "refused"
    assert "member 'bomb.npy' inflates to 83886080 bytes, over the 67108864-byte cap" \
        in cfg["reason"] and "refused before decompressing" in cfg["reason"]


def test_evaluations_beyond_the_policy_and_replays_are_refused_and_logged(
        site: Path, tmp_path: Path) -> None:
    from node.evaluation_log import entries

    (site / "site.toml").write_text("[policy]\nmax_evaluations_per_run = 2\n"
                                    "max_evaluations_per_day = 3\n")
    data = weights_file(tmp_path)
    w = {"pooled": data}
    assert ask(site, eval_request(data, "a1"), "evaluate", w)["status"] == "ok"
    replay = ask(site, eval_request(data, "a1"), "evaluate", w)
    assert replay["status"] == "refused"
    assert "evaluation request a1 was already answered: a replayed request" in replay["reason"]
    assert ask(site, eval_request(data, "a2"), "evaluate", w)["status"] == "ok"
    third = ask(site, eval_request(data, "a3"), "evaluate", w)
    assert third["status"] == "refused"
    assert "at most 2 evaluation request(s) per run (policy max_evaluations_per_run); run " \
        "'run-1' has had 2" in third["reason"]
    assert ask(site, eval_request(data, "b1", "run-2"), "evaluate", w)["status"] == "ok"
    day = ask(site, eval_request(data, "c1", "run-3"), "evaluate", w)
    assert "at most 3 evaluation request(s) per day" in day["reason"]
    log = entries(site)
    assert [e["verdict"] for e in log] == ["answered", "refused", "answered", "refused",
                                           "answered", "refused"]
    assert [e["request_id"] for e in log] == ["a1", "a1", "a2", "a3", "b1", "c1"]


def test_an_evaluation_that_breaks_part_way_is_logged_and_counted(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights the sender can make fail on some images only would otherwise answer "is that
    image here?" outside the limits, which counted answered requests only."""
    from node import evaluate
    from node.evaluation_log import entries

    (site / "site.toml").write_text("[policy]\nmax_evaluations_per_run = 1\n")
    data = weights_file(tmp_path)

    def broken(*_: Any, **__: Any) -> None:
        raise ValueError("Input contains NaN")

    monkeypatch.setattr(evaluate, "evaluate_weights", broken)
    first = ask(site, eval_request(data, "f1"), "evaluate", {"pooled": data})
    assert first["status"] != "ok"
    monkeypatch.undo()
    second = ask(site, eval_request(data, "f2"), "evaluate", {"pooled": data})
    assert second["status"] == "refused" and "max_evaluations_per_run" in second["reason"]
    assert [e["verdict"] for e in entries(site)] == ["failed", "refused"]
    assert "Input contains NaN" in entries(site)[0]["reason"]


def test_the_site_s_policy_decides_whether_candidates_get_its_batchnorm_statistics(
        site: Path, tmp_path: Path) -> None:
    """A coordinator's candidate file is chosen among with adapted copies offered by default;
    an admin's ``batchnorm = "sent"`` turns that off for the signed reply; a value the
    policy does not offer stops with the choices."""
    from node.federation import settings_from_node_config
    from node.selection import DEFAULT_BATCHNORM
    from node.site_policy import SitePolicy
    from shared.classifier import ResNetClassifier
    from shared.errors import ConfigError
    from shared.weights_io import save_candidates

    assert SitePolicy().batchnorm == DEFAULT_BATCHNORM
    with pytest.raises(ValueError, match="batchnorm must be one of either, sent, got 'site'"):
        SitePolicy(batchnorm="site")
    with pytest.raises(ConfigError, match="batchnorm"):  # the node-config path too
        settings_from_node_config({"site-dir": str(site), "batchnorm": "site"}).policy()
    assert settings_from_node_config({"site-dir": str(site), "batchnorm": "sent"}
                                     ).policy().batchnorm == "sent"
    path = tmp_path / "candidates.npz"
    save_candidates([ResNetClassifier(2, width=4) for _ in range(2)], path,
                    {"classes": "binary", "class_names": ["normal", "abnormal"]},
                    [{"epoch": 1}, {"epoch": 2}], default=[0])
    data = path.read_bytes()
    cfg = ask(site, eval_request(data, "r1"), "evaluate", {"pooled": data})
    sel = cfg["reply-json"]["evaluations"]["pooled"]["payload"]["selection"]
    assert sel["batchnorm"].startswith("re-estimated on") and "adapted" in sel
    (site / "site.toml").write_text('[policy]\nbatchnorm = "sent"\n')
    cfg = ask(site, eval_request(data, "r2"), "evaluate", {"pooled": data})
    sel = cfg["reply-json"]["evaluations"]["pooled"]["payload"]["selection"]
    assert "batchnorm" not in sel and "adapted" not in sel


def test_a_policy_file_outside_the_site_binds_the_cli_and_air_gapped_evaluations(
        site: Path, tmp_path: Path) -> None:
    """An admin who keeps the policy outside ``SITE/site.toml`` (``node join --policy FILE``)
    gets the same limits from ``node evaluate --weights`` and ``--request``: before, both read
    only ``SITE/site.toml`` and fell back to the defaults."""
    from typer.testing import CliRunner

    from node.cli import app
    from node.federation import answer_request_file
    from shared.classifier import ResNetClassifier
    from shared.errors import ConfigError
    from shared.weights_io import save_candidates

    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nbatchnorm = "sent"\n')
    path = tmp_path / "candidates.npz"
    save_candidates([ResNetClassifier(2, width=4) for _ in range(2)], path,
                    {"classes": "binary", "class_names": ["normal", "abnormal"]},
                    [{"epoch": 1}, {"epoch": 2}], default=[0])

    def cli(*extra: str) -> dict[str, Any]:
        res = CliRunner().invoke(app, ["evaluate", "--site-dir", str(site), "--weights",
                                       str(path), "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["selection"]

    assert "adapted" in cli()  # the default offers adapted copies
    assert "adapted" not in cli("--policy", str(policy))

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"request": eval_request(path.read_bytes(), "f1"),
                                   "weights": {"pooled": path.name}}))
    reply = json.loads(answer_request_file(request, site, policy_file=policy).read_text())
    sel = reply["evaluations"]["pooled"]["payload"]["selection"]
    assert "batchnorm" not in sel and "adapted" not in sel
    with pytest.raises(ConfigError, match="policy file not found"):
        answer_request_file(request, site, policy_file=tmp_path / "missing.toml")


@pytest.mark.parametrize("in_policy_file", [False, True])
def test_node_join_stops_on_a_bad_site_recipe_before_the_supernode_starts(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        in_policy_file: bool) -> None:
    """The [classifier] table is read on a training request, maybe hours after `node join`:
    a typo in it stops `node join`, naming the file and key, the way a bad [policy] does."""
    from typer.testing import CliRunner

    import shared.flower_proc
    from shared.cli import app
    from shared.errors import ConfigError

    def start(*a: Any, **kw: Any) -> None:
        raise AssertionError("the SuperNode started")

    monkeypatch.setattr(shared.flower_proc, "start_supernode", start)
    bad = "[policy]\nallow_train = true\n\n[classifier]\nwidht = 8\n"
    policy = tmp_path / "hospital-policy.toml"
    (policy if in_policy_file else site / "site.toml").write_text(bad)
    args = ["node", "join", "--superlink", "127.0.0.1:9092", "--insecure", "--app-key",
            str(tmp_path / "app-signing.pub"), "--site-dir", str(site)]
    res = CliRunner().invoke(app, args + (["--policy", str(policy)] if in_policy_file else []))
    assert isinstance(res.exception, ConfigError), res.output
    where = "hospital-policy.toml" if in_policy_file else "site.toml"
    assert f"{where} [classifier]" in str(res.exception)
    assert "unknown key 'widht'" in str(res.exception)
