"""The whole system over a real Flower SuperLink and 3 SuperNodes on loopback.

One federation (module fixture) serves every test here, because each Flower round costs
seconds of polling:

1. the full flow (bundles → pool → CNN → federated evaluation → report), recording every
   payload that crossed, then checking that no real pixel, PHI string or real file name is
   among them;
2. faults and restart: a site whose key the coordinator does not trust is excluded with the
   reason; the run stops after `pool` (a coordinator going down between phases); a second
   run with the same name continues from `train`, a SuperNode is SIGKILLed mid-run, and the
   evaluation round returns at its timeout; the dead site is marked dropped and the run
   completes with the others.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.coordinator.fedutil import read_json, run_app, trust_folder

pytestmark = [pytest.mark.flower, pytest.mark.slow]

SITES = ("site-a", "site-b", "site-c")


def _stand_in_synthetic(site: Path, seed: int) -> None:
    """What `node generate` leaves (freshly rendered phantoms, never a stored real image):
    the test of the transport must not depend on how good a 10-second GAN is."""
    from node.phantoms import LESION_CLASSES, render
    from shared.synthetic import SyntheticSet

    rng = np.random.default_rng([seed, 7])
    images, labels = [], []
    for i in range(40):
        lesion = LESION_CLASSES[0] if i % 2 == 0 else LESION_CLASSES[1 + (i // 2) % 4]
        images.append(np.clip(np.rint(render(rng, lesion, 32) * 255), 0, 255).astype(np.uint8))
        labels.append(i % 2)
    SyntheticSet(np.stack(images), np.array(labels), ["normal", "abnormal"],
                 {"generator": "test stand-in"}).save(site / "synthetic" / "default")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 sites from phantom DICOMs (with fake PHI), keyed, baselined, audited."""
    import torch

    from node.audit import run_audit
    from node.audit.config import AuditConfig
    from node.baseline import run_baseline
    from node.ingest import preprocess
    from node.phantoms import make_sites, phi_strings
    from shared.cnn_train import ClassifierConfig
    from shared.signing import generate_keypair

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fed")
    raw = make_sites(root / "raw", sites=3, seed=0, scale=0.6, size=48)
    sites: dict[str, Path] = {}
    phi: set[str] = set()
    for i, (name, src) in enumerate(zip(SITES, raw, strict=True)):
        site = root / "sites" / name
        site.mkdir(parents=True)
        (site / "salt").write_text(f"e2e-salt-{name}")  # a fixed salt pins the patient split
        preprocess(src / "dicom", src / "labels.csv", site, size=32, workers=1, progress=False,
                   min_side=32)
        generate_keypair(site / "keys")
        (site / "keys" / "pseudonym").write_text(name)
        run_baseline(site, ClassifierConfig(epochs=2, width=8, batch=16), progress=False,
                     n_boot=200)
        _stand_in_synthetic(site, i)
        run_audit(site, cfg=AuditConfig(encoder="none", n_boot=200, min_heldout=10), progress=False)
        sites[name] = site
        phi |= phi_strings(src / "dicom")
    return {"root": root, "sites": sites, "trust": trust_folder(root, sites), "phi": phi,
            "raw": raw}


@pytest.fixture(scope="module")
def federation(prepared: dict[str, Any]) -> Iterator[Any]:
    from shared.flower_proc import loopback_federation

    cfg = {name: {"site-dir": str(site)} for name, site in prepared["sites"].items()}
    with loopback_federation(prepared["root"] / "flower", cfg) as fed:
        pids = [p.pid for p in fed.processes()]
        yield fed
    # Every process we started is gone (its whole group, SuperExec children included).
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def _config(prepared: dict[str, Any], work: Path, **extra: Any) -> dict[str, Any]:
    cfg = {"work-dir": str(work), "trust-dir": str(prepared["trust"]), "mode": "collect",
           "expected-sites": 3, "cnn-epochs": 2, "cnn-width": 8, "cnn-batch": 16,
           "cnn-max-minutes": 1.0, "n-boot": 200, "ping-timeout-s": 60.0,
           "bundle-timeout-s": 120.0, "eval-timeout-s": 120.0, "node-wait-s": 30.0}
    cfg.update(extra)
    return cfg


def _payload_texts(messages: Path) -> list[tuple[str, bytes]]:
    """Every byte that crossed, with zip members (bundles) opened and decompressed."""
    out = []
    for path in sorted(messages.iterdir()):
        data = path.read_bytes()
        out.append((path.name, data))
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                out.extend((f"{path.name}:{n}", zf.read(n)) for n in zf.namelist())
    return out


def test_ping_round_trip_through_real_superlink_and_supernodes(
        prepared: dict[str, Any], federation: Any) -> None:
    work = prepared["root"] / "coord-ping"
    row = run_app(federation, _config(prepared, work, **{"stop-after": "ping"}))
    assert row["status"] == "finished:completed"
    assert sorted(read_json(work / "ping.json").values()) == list(SITES)


def test_three_sites_end_to_end_with_signed_aucs_and_nothing_real_crossing(
        prepared: dict[str, Any], federation: Any) -> None:
    from node.store import SiteStore
    from shared.bundle import verify_bundle
    from shared.protocol import REPLY_KEYS
    from shared.weights_io import load_weights

    work = prepared["root"] / "coord-e2e"
    row = run_app(federation, _config(prepared, work, **{"record-messages": True,
                                                         "run-name": "e2e"}), timeout=400)
    assert row["status"] == "finished:completed"

    report = read_json(work / "report" / "report.json")
    by_site = {r["site"]: r for r in report["sites"]}
    assert sorted(by_site) == list(SITES)
    for name, r in by_site.items():
        assert r["status"] == "ok", (name, r)
        for role in ("pooled", "baseline", "own"):
            rec = r[role]
            assert rec is not None and rec["verified"] is True, (name, role)
            assert 0.0 <= rec["auc"] <= 1.0 and rec["ci_low"] <= rec["auc"] <= rec["ci_high"]
        assert r["utility_ratio"] is not None
    assert "<svg" in (work / "report" / "report.html").read_text()

    # The pooled CNN saw synthetic images only: exactly the pooled bundles' images.
    _, meta = load_weights(work / "cnn" / "pooled-cnn.npz")
    pool = read_json(work / "pool" / "pool.json")
    assert meta["synthetic_only"] is True
    assert sorted(meta["bundle_ids"]) == sorted(a["bundle_id"] for a in pool["accepted"])
    assert meta["n_images"] == pool["images"] > 0
    real = {name: SiteStore.open(site).load()[0] for name, site in prepared["sites"].items()}
    real_rows = {img.tobytes() for imgs in real.values() for img in imgs}
    for acc in pool["accepted"]:
        vb = verify_bundle(Path(acc["path"]), prepared["trust"])
        assert not any(img.tobytes() in real_rows for img in vb.synthetic.images)

    # Every payload that crossed, both ways: only allowed fields, no PHI, no real file names.
    messages = work / "messages"
    payloads = _payload_texts(messages)
    kinds = {p.name.split("-")[1] for p in messages.iterdir()}
    assert {"query", "train", "evaluate"} <= kinds
    assert sum(1 for p in messages.glob("*-train-received-*-bundle.bin")) == 3
    forbidden = {s for s in prepared["phi"] if len(s) >= 6}
    assert len(forbidden) > 20  # the phantoms really carry fake PHI to look for
    for site in prepared["sites"].values():
        forbidden |= {s.image_id for s in SiteStore.open(site).samples()}
    forbidden |= {"dicom", ".dcm"}
    for label, data in payloads:
        for needle in forbidden:
            assert needle.encode() not in data, (label, needle)
        for name, imgs in real.items():
            for img in imgs[:40]:
                assert img.tobytes() not in data, (label, name)
    for path in messages.glob("*-received-*.json"):
        cfg = json.loads(path.read_text())
        assert set(cfg) <= REPLY_KEYS, path.name
        assert cfg["status"] == "ok", (path.name, cfg)


def test_tampered_trust_excludes_site_restart_resumes_and_killed_node_is_dropped(
        prepared: dict[str, Any], federation: Any) -> None:
    from coordinator.state import CoordinatorState
    from shared.flower_proc import flwr_run, wait_for_run
    from shared.signing import generate_keypair
    from tests.coordinator.fedutil import REPO

    root = prepared["root"]
    trust = root / "trust-faults"
    shutil.copytree(prepared["trust"], trust)
    stranger = root / "stranger-keys"
    generate_keypair(stranger)
    shutil.copyfile(stranger / "site.pub", trust / "site-b.pub")  # site-b's key is not trusted
    work = root / "coord-faults"
    cfg = _config(prepared, work, **{"trust-dir": str(trust), "run-name": "faults",
                                     "own-synthetic": False})

    # Run 1 stops after pooling, like a coordinator that went down between phases.
    first = run_app(federation, {**cfg, "stop-after": "pool"}, timeout=400)
    assert first["status"] == "finished:completed"
    state = CoordinatorState(work / "state.db")
    assert state.completed_phases("faults") == ["bundles", "pool"]
    status = state.site_statuses("faults")
    # site-b's ping is signed by a key the trust folder does not hold: its node is excluded
    # (under its node id: an unverified name must not change the named site's verdict).
    (impostor,) = [s for s, st in status.items() if st["status"] == "excluded"]
    assert impostor.startswith("node #") and "site-b" not in status
    assert "ping claiming site 'site-b'" in status[impostor]["reason"]
    assert "unknown-key" in status[impostor]["reason"]
    pooled_before = state.phase_result("faults", "pool")
    assert pooled_before is not None
    assert sorted(a["site"] for a in pooled_before["accepted"]) == ["site-a", "site-c"]
    bundles_before = sorted(p.read_bytes() for p in (work / "bundles").iterdir())

    # Run 2 (same name) continues at `train`; site-c's SuperNode is SIGKILLed as soon as the
    # run is submitted. The ServerApp has to start, train the CNN and ping before it asks any
    # site, so the evaluation round always meets a dead node (a kill tied to a poll of the
    # `train` phase raced the round: site-c sometimes answered first).
    run_id = flwr_run(REPO, federation.connection, federation.cli_home,
                      {**cfg, "eval-timeout-s": 50.0, "ping-timeout-s": 30.0})
    federation.supernodes["site-c"].kill()
    second = wait_for_run(federation.connection, federation.cli_home, run_id, timeout=400)
    assert second["status"] == "finished:completed"
    state = CoordinatorState(work / "state.db")
    assert state.completed_phases("faults") == ["bundles", "pool", "round2", "train",
                                                "evaluate", "report"]
    assert state.phase_result("faults", "pool") == pooled_before  # nothing pooled was lost
    assert sorted(p.read_bytes() for p in (work / "bundles").iterdir()) == bundles_before
    rounds = [json.loads(x) for x in (work / "rounds.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rounds] == ["query", "train", "query", "evaluate"]  # no re-export
    # Only site-a answers the evaluation: site-b was never asked, site-c is dead. The dead node
    # is either still listed by the SuperLink (a round returns at its timeout without it) or
    # already dropped by its heartbeat patience (the ping lists one node fewer than in run 1).
    assert rounds[-1]["replies"] == 1
    assert (any(r["replies"] < r["nodes"] for r in rounds[2:])
            or rounds[2]["nodes"] < rounds[0]["nodes"])
    assert state.site_statuses("faults")["site-c"]["reason"].startswith("evaluation round:")
    report = read_json(work / "report" / "report.json")
    by_site = {r["site"]: r for r in report["sites"]}
    assert by_site["site-a"]["status"] == "ok" and by_site["site-a"]["pooled"]["verified"]
    assert "site-b" not in by_site and by_site[impostor]["status"] == "excluded"
    assert "unknown-key" in by_site[impostor]["reason"]
    assert by_site["site-c"]["status"] == "dropped"
    html = (work / "report" / "report.html").read_text()
    assert "dropped" in html and "unknown-key" in html
