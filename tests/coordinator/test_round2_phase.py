"""Round 2 of a federated run: each site receives exactly the other sites' exported synthetic
images (nothing else, no real image of anyone), the second bundles replace the first in the
pool, and a site whose second round fails keeps its first bundle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.local_transport import LocalTransport
from coordinator.phases import Run, RunSettings, settings_from_run_config
from shared import pretrain_set
from shared.protocol import PROTOCOL, Outcome
from tests.coordinator.fedutil import audited_stand_in, make_keyed_site, trust_folder

SITES = ("site-a", "site-b", "site-c")
RISK = "test stand-ins: 16 px phantoms look alike; no patient exists"


class TwoRounds(LocalTransport):
    """Pings and evaluations in-process; the bundle rounds return bundles the sites exported
    earlier, and the round-2 requests and payloads are kept for the test to inspect."""

    def __init__(self, sites: Mapping[str, Mapping[str, Any]],
                 first: dict[str, Path], second: dict[str, Path]) -> None:
        super().__init__(sites)
        self.first, self.second = first, second
        self.names = {i + 1: name for i, name in enumerate(sites)}
        self.round2: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]:
        if kind != "train":
            return super().exchange(kind, requests, weights, timeout)
        out = {}
        for n, req in requests.items():
            site = self.names[n]
            bundles = self.first
            if req.get("round") == 2:
                self.round2[site] = (dict(req), dict((weights or {}).get(n) or {}))
                bundles = self.second
            if site not in bundles:  # this site's second round failed at the site
                out[n] = Outcome(n, config={"protocol": PROTOCOL, "action": "export-bundle",
                                            "status": "failed", "site": site,
                                            "reason": "TrainingError: out of time"})
                continue
            out[n] = Outcome(n, config={"protocol": PROTOCOL, "action": "export-bundle",
                                        "status": "ok", "site": site},
                             bundle=bundles[site].read_bytes())
        return out


def _export(site: Path, name: str, seed: int, out: Path) -> Path:
    from node.export import export_bundle

    audited_stand_in(site, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_bundle(site, out, accept_risk=RISK, site=name, key_dir=site / "keys")
    return out


def _hashes(images: np.ndarray) -> list[str]:
    return sorted(_hashes_in_order(images))


def _labelled(images: np.ndarray, labels: np.ndarray) -> list[tuple[str, int]]:
    return sorted(zip(_hashes_in_order(images), labels.tolist(), strict=True))


def _hashes_in_order(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def _bundle_set(path: Path, trust: Path) -> Any:
    from shared.bundle import verify_bundle

    return verify_bundle(path, trust).synthetic


def _bundle_images(path: Path, trust: Path) -> np.ndarray:
    return _bundle_set(path, trust).images


def _exported(tmp_path: Path, names: tuple[str, ...], second_for: tuple[str, ...]
              ) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path], Path]:
    """(site folders, round-1 bundles, round-2 bundles of the sites in ``second_for``, trust
    folder): phantom sites, each bundle exported by the site's own code and key."""
    sites = {name: make_keyed_site(tmp_path / "sites", name, n=60, size=16, seed=i)
             for i, name in enumerate(names)}
    first = {name: _export(site, name, i, tmp_path / "r1" / f"{name}.slbundle")
             for i, (name, site) in enumerate(sites.items())}
    second = {name: _export(sites[name], name, 10 + i, tmp_path / "r2" / f"{name}.slbundle")
              for i, name in enumerate(names) if name in second_for}
    return sites, first, second, trust_folder(tmp_path, sites)


def test_round2_sends_only_the_other_sites_exported_images(tmp_path: Path) -> None:
    import torch

    from node.store import SiteStore

    torch.set_num_threads(1)
    # site-c's second round fails at the site: it must keep its first bundle.
    sites, first, second, trust = _exported(tmp_path, SITES, SITES[:2])
    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(trust), "mode": "train",
           "rounds": 2, "round2-gan-config": json.dumps({"dp_epsilon": 3.0}),
           "gan-config": json.dumps({"kimg": 1.0, "dp_epsilon": 7.0}),
           "expected-sites": 3, "cnn-epochs": 1, "cnn-width": 8, "cnn-batch": 16,
           "cnn-members": 1, "n-boot": 200, "own-synthetic": False, "node-wait-s": 1.0}
    node_cfg = {name: {"site-dir": str(site), "accept-risk": RISK}
                for name, site in sites.items()}
    transport = TwoRounds(node_cfg, first, second)
    logs: list[str] = []
    report = Run(settings_from_run_config(cfg), transport, log=logs.append).execute()

    assert sorted(transport.round2) == list(SITES)
    real = {h for site in sites.values() for split in ("train", "test")
            for h in _hashes(SiteStore.open(site).load(split, "binary")[0])}
    for name, (req, arrays) in transport.round2.items():
        assert set(arrays) == {"pretrain"}  # nothing but the pretraining set travels
        data = arrays["pretrain"]
        assert req["pretrain-sha256"] == hashlib.sha256(data).hexdigest()
        gan = json.loads(req["gan-config"])
        assert gan == {"kimg": 1.0, "dp_epsilon": 3.0}  # round 2's share, over round 1's
        images, labels, names = pretrain_set.decode(data, max_images=10_000)
        others = [_bundle_set(first[o], trust) for o in SITES if o != name]
        # exactly the others' exported images, each with the label its site gave it
        assert _labelled(images, labels) == _labelled(
            np.concatenate([o.images for o in others]),
            np.concatenate([o.labels for o in others]))
        assert not set(_hashes(images)) & set(_hashes(_bundle_images(first[name], trust)))
        assert not set(_hashes(images)) & real  # and no stored real image of any site
        assert names == ["normal", "abnormal"]

    state = Run(settings_from_run_config(cfg), transport).state
    result = state.phase_result("run", "round2") or {}
    used = {a["site"]: (a["path"], a["round"]) for a in result["accepted"]}
    assert used["site-a"][1] == used["site-b"][1] == "2"
    assert used["site-c"][1].startswith("1 (round 2: TrainingError: out of time")
    # the failed site keeps round 1
    assert Path(used["site-c"][0]).read_bytes() == first["site-c"].read_bytes()
    pooled = np.load(tmp_path / "work" / "pool-round2" / "pooled" / "images.npy")
    want = np.concatenate([_bundle_images(second["site-a"], trust),
                           _bundle_images(second["site-b"], trust),
                           _bundle_images(first["site-c"], trust)])
    assert set(_hashes(pooled)) <= set(_hashes(want))
    assert not set(_hashes(pooled)) & set(_hashes(_bundle_images(first["site-a"], trust)))
    # round 1's pool stays on disk, untouched: its CNNs are candidates too
    pooled1 = np.load(tmp_path / "work" / "pool" / "pooled" / "images.npy")
    assert set(_hashes(pooled1)) <= set(_hashes(np.concatenate(
        [_bundle_images(first[s], trust) for s in SITES])))
    assert set(_hashes(pooled1)) & set(_hashes(_bundle_images(first["site-a"], trust)))
    html = Path(report["html"]).read_text()
    assert "Two rounds" in html and "<th>Round</th>" in html
    doc = json.loads(Path(report["json"]).read_text())
    assert {a["site"]: a["round"] for a in doc["pool"]["accepted"]}["site-a"] == "2"


def test_after_round2_the_sites_choose_among_both_rounds_cnns(tmp_path: Path) -> None:
    """The candidate file holds CNNs trained on round 1's pool and on round 2's, each saying
    its round; every site chooses among all of them and signs which rounds its picks came
    from; the report says so."""
    import torch

    from shared.weights_io import load_candidates

    torch.set_num_threads(1)
    sites, first, second, trust = _exported(tmp_path, SITES[:2], SITES[:2])
    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(trust), "mode": "train",
           "rounds": 2, "expected-sites": 2, "cnn-epochs": 2, "cnn-patience": 0,
           "cnn-width": 8, "cnn-batch": 16, "cnn-members": 2, "n-boot": 200,
           "own-synthetic": False, "node-wait-s": 1.0}
    node_cfg = {name: {"site-dir": str(site), "accept-risk": RISK}
                for name, site in sites.items()}
    run = Run(settings_from_run_config(cfg), TwoRounds(node_cfg, first, second))
    report = run.execute()

    trained = run.state.phase_result("run", "train") or {}
    pooled = trained["pooled"]
    _, meta = load_candidates(Path(pooled["weights"]))
    # 2 members × 2 epochs on each round's pool, in round order
    assert [(c["round"], c["seed"], c["epoch"]) for c in meta["candidates"]] == [
        (r, s, e) for r in (1, 2) for s in (0, 1) for e in (1, 2)]
    assert pooled["candidate_rounds"] == [1] * 4 + [2] * 4
    r1 = run.state.phase_result("run", "pool") or {}
    r2 = run.state.phase_result("run", "round2") or {}
    assert [r["bundle_ids"] for r in meta["rounds"]] == [
        [a["bundle_id"] for a in r1["accepted"]], [a["bundle_id"] for a in r2["accepted"]]]
    assert meta["n_images"] == r1["images"] + r2["images"]
    # the default, for a site that cannot choose: each run's best epoch, both rounds
    assert {meta["candidates"][i]["round"] for i in meta["default"]} == {1, 2}
    doc = json.loads(Path(report["json"]).read_text())
    for row in doc["sites"]:
        sel = row["pooled"]["selection"]
        assert sel["candidates"] == 8 and sel["on_train"]
        assert sum(sel["from_round"].values()) == sel["distinct"]
    for site in SITES[:2]:
        signed = run.state.evaluations("run")[site]["pooled"]
        picks = signed["payload"]["selection"] if "payload" in signed else signed["selection"]
        rounds = [meta["candidates"][i]["round"] for i in picks["picked"]]
        assert picks["picked_rounds"] == rounds
    html = Path(report["html"]).read_text()
    assert "Candidates from both rounds" in html and "from round 2" in html
    # round 1's bundles trained half the candidates: their signed facts are shown and audited
    assert [a["bundle_id"] for a in doc["pool_round1"]["accepted"]] == [
        a["bundle_id"] for a in r1["accepted"]]
    assert "Round 1&#x27;s bundles" in html or "Round 1's bundles" in html
    assert all(a["bundle_id"][:13] in html for a in r1["accepted"])
    from shared.report_verify import check_report

    assert check_report(doc, trust) == []
    doc["pool_round1"]["accepted"][0]["images"] += 1
    assert [path for path, _ in check_report(doc, trust)] == ["$.pool_round1.accepted[0].images"]


def test_a_run_whose_round2_pooled_nothing_new_trains_on_round1_alone(tmp_path: Path) -> None:
    """Every site's round 2 failed: the pool is round 1's again, and training on it twice
    would only double the candidates."""
    from coordinator.pipeline import training_pools
    from coordinator.state import CoordinatorState

    state = CoordinatorState(tmp_path / "state.db")
    state.start_phase("run", "pool")
    state.finish_phase("run", "pool", {"accepted": [{"site": "a", "round": "1"}],
                                       "folder": "pool"})
    state.start_phase("run", "round2")
    state.finish_phase("run", "round2", {"accepted": [{"site": "a", "round": "1 (failed)"}],
                                         "folder": "pool-round2"})
    pool, round1 = training_pools(state, "run")
    assert round1 is None and pool is not None and pool["folder"] == "pool-round2"


def test_candidates_of_two_rounds_that_no_site_would_accept_stop_the_run_before_it_starts(
        tmp_path: Path) -> None:
    """8 members at width 48 fit one candidate file (8 of 15 at most), but a two-round run
    trains them on each pool: 16 networks. Refused when the run is set up, not after every
    site has trained two GANs and the coordinator reaches its train phase."""
    from shared.errors import ConfigError

    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(tmp_path), "mode": "train",
           "cnn-width": 48, "cnn-members": 8}
    settings_from_run_config(cfg).cnn_config()  # one round: fits
    two = settings_from_run_config({**cfg, "rounds": 2})
    with pytest.raises(ConfigError, match="cnn-members or cnn-width"):
        two.cnn_config()
    transport = TwoRounds({}, {}, {})
    asked: list[str] = []
    transport.exchange = lambda kind, *a, **k: asked.append(kind) or {}  # type: ignore[method-assign]
    transport.node_ids = lambda: asked.append("nodes") or []  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="cnn-members or cnn-width"):
        Run(two, transport).execute()
    assert asked == []  # no site was asked for anything


def test_one_round_skips_round2_and_pools_once(tmp_path: Path) -> None:
    sites, first, _, trust = _exported(tmp_path, SITES[:2], ())
    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(trust), "mode": "train",
           "expected-sites": 2, "node-wait-s": 1.0, "stop-after": "round2"}
    transport = TwoRounds({n: {"site-dir": str(s)} for n, s in sites.items()}, first, {})
    run = Run(settings_from_run_config(cfg), transport)
    run.execute()
    assert transport.round2 == {}
    assert run.state.phase_result("run", "round2") == {"skipped": "rounds = 1"}


@pytest.mark.parametrize("bad, why", [
    ({"rounds": 3}, "rounds must be 1 or 2"),
    ({"rounds": 2, "mode": "collect"}, "needs mode 'train'"),
    ({"round2_gan_config": "[1]"}, "must be a JSON object"),
    ({"round2_max_images": 0}, "round2_max_images"),
])
def test_bad_round2_settings_are_refused(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        RunSettings(work_dir="w", trust_dir="t", **bad)


def _two_site_round2(tmp_path: Path, *, fail: tuple[str, ...] = (),
                     resend: tuple[str, ...] = (), forge: tuple[str, ...] = ()
                     ) -> tuple[Run, dict[str, Path], dict[str, Path], Path]:
    """Two sites, round 1 and round 2 pooled (stopping there); ``fail``: sites whose second
    round fails at the site; ``resend``: sites that answer round 2 with their round-1
    bundle; ``forge``: sites whose round-2 answer is the other site's round-2 bundle."""
    sites, first, second, trust = _exported(
        tmp_path, SITES[:2], tuple(n for n in SITES[:2] if n not in fail + resend))
    second.update({name: first[name] for name in resend})
    second.update({name: second[next(o for o in SITES[:2] if o != name)] for name in forge})
    cfg = {"work-dir": str(tmp_path / "work"), "trust-dir": str(trust), "mode": "train",
           "rounds": 2, "expected-sites": 2, "node-wait-s": 1.0, "stop-after": "round2"}
    transport = TwoRounds({n: {"site-dir": str(s)} for n, s in sites.items()}, first, second)
    run = Run(settings_from_run_config(cfg), transport)
    run.execute()
    return run, first, second, trust


def test_round1_bundles_stay_replay_protected_after_round2(tmp_path: Path) -> None:
    """Re-pooling for round 2 must not forget that the round-1 bundles were pooled: a later
    run that is handed one of them again refuses it as a replay."""
    from coordinator.pool import pool_bundles
    from shared.bundle import verify_bundle

    run, first, _, trust = _two_site_round2(tmp_path)
    ids = {verify_bundle(p, trust).bundle_id for p in first.values()}
    assert ids <= run.state.pooled_ids()
    later = pool_bundles([first["site-a"]], trust, run.state, "a-later-run")
    assert [r["reason"] for r in later.rejected] == ["replayed"]


def test_air_gapped_repool_replaces_a_stale_round2_pool(tmp_path: Path) -> None:
    """`coordinator pool` run again under a run name that had a round 2: `coordinator train`
    and the report must use the new pool (the one on disk), not the stale round-2 summary."""
    import shutil

    from typer.testing import CliRunner

    from coordinator.pipeline import training_pools
    from shared.cli import app

    run, first, _, trust = _two_site_round2(tmp_path)
    carried = tmp_path / "carried"
    carried.mkdir()
    shutil.copy(first["site-b"], carried)
    res = CliRunner().invoke(app, ["coordinator", "pool", str(carried), "--trust", str(trust),
                                   "--work", str(tmp_path / "work"), "--run-name", "run"])
    assert res.exit_code == 0, res.output
    pool = training_pools(run.state, "run")[0] or {}
    assert [a["site"] for a in pool["accepted"]] == ["site-b"]


def test_a_site_resending_its_round1_bundle_is_not_reported_as_round2(tmp_path: Path) -> None:
    run, _, _, _ = _two_site_round2(tmp_path, resend=("site-a",))
    result = run.state.phase_result("run", "round2") or {}
    rounds = {a["site"]: a["round"] for a in result["accepted"]}
    assert rounds["site-b"] == "2"
    assert rounds["site-a"].startswith("1 (round 2: ")
    assert result["round2"]["rounds"]["site-a"] == rounds["site-a"]


def test_a_round2_bundle_that_does_not_verify_keeps_the_sites_round1_bundle(
        tmp_path: Path) -> None:
    """A bad second bundle (here signed for the other site) is rejected, but the site's
    verified first bundle stays in the pool and the site is not excluded."""
    run, first, _, _ = _two_site_round2(tmp_path, forge=("site-a",))
    result = run.state.phase_result("run", "round2") or {}
    rounds = {a["site"]: a["round"] for a in result["accepted"]}
    assert rounds["site-b"] == "2"
    assert rounds["site-a"].startswith("1 (round 2: bundle rejected: it is signed for site "
                                       "'site-b'")
    path = {a["site"]: a["path"] for a in result["accepted"]}["site-a"]
    assert Path(path).read_bytes() == first["site-a"].read_bytes()
    assert run.state.site_statuses("run")["site-a"]["status"] == "ok"
