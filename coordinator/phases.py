"""The coordinator's run, phase by phase, independent of the transport.

:mod:`coordinator.server_app` supplies a :class:`Transport` over Flower; tests may supply
another. Phases (recorded in :class:`coordinator.state.CoordinatorState`):

1. ``bundles``: ask every site for a fresh signed bundle (``collect`` or ``train`` mode);
2. ``pool``: verify, de-duplicate and balance (:func:`coordinator.pool.pool_bundles`);
3. ``train``: the downstream CNN on the pooled synthetic set (+ one per site on its own);
4. ``evaluate``: send the weights; each site replies with signed AUCs and its baseline;
5. ``report``: HTML + JSON.

A restarted coordinator with the same work folder and run name skips every phase already
marked done and continues from the next one; bundles already received are kept on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from coordinator.state import PHASES, CoordinatorState
from shared.protocol import PROTOCOL, Transport


@dataclass(frozen=True)
class RunSettings:
    """Run config (``[tool.flwr.app.config]``, hyphens become underscores)."""

    work_dir: str = ""
    trust_dir: str = ""
    run_name: str = "run"
    mode: Literal["collect", "train"] = "train"
    expected_sites: int = 3
    min_sites: int = 1
    node_wait_s: float = 120.0
    ping_timeout_s: float = 120.0
    bundle_timeout_s: float = 1800.0
    eval_timeout_s: float = 900.0
    gan_config: str = "{}"
    """JSON object of GanConfig overrides sent to sites in ``train`` mode."""
    baseline_config: str = "{}"
    """JSON object of ClassifierConfig values (+ "classes") for a site's missing baseline."""
    n_synthetic: int = 200
    seed: int = 0
    cnn_epochs: int = 10
    cnn_width: int = 16
    cnn_batch: int = 32
    cnn_patience: int = 3
    cnn_max_minutes: float = 5.0
    own_synthetic: bool = True
    balance: bool = True
    n_boot: int = 1000
    stop_after: str = ""
    """'' = all phases; 'ping' = one ping round only (plumbing check); or a phase name (the
    run stops after it; a later run with the same name continues)."""

    def __post_init__(self) -> None:
        if self.min_sites < 1:
            raise ValueError("min_sites must be ≥ 1")
        for key in ("gan_config", "baseline_config"):
            try:
                doc = json.loads(getattr(self, key))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{key} is not JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{key} must be a JSON object")

    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    def cnn_config(self) -> Any:
        from shared.cnn_train import ClassifierConfig

        return ClassifierConfig(epochs=self.cnn_epochs, width=self.cnn_width,
                                batch=self.cnn_batch, patience=self.cnn_patience,
                                max_minutes=self.cnn_max_minutes, seed=self.seed)


def settings_from_run_config(config: Mapping[str, Any]) -> RunSettings:
    from shared.config import from_mapping

    data = {str(k).replace("-", "_"): v for k, v in config.items()}
    settings = from_mapping(RunSettings, data, source="run config")
    if not settings.work_dir or not settings.trust_dir:
        from coordinator.errors import CoordinatorError

        raise CoordinatorError("run config: work-dir and trust-dir must be set (flwr run "
                               "--run-config 'work-dir=\"…\" trust-dir=\"…\"'), or use "
                               "`synthlearn coordinator run`")
    return settings


Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(f"[synthlearn] {msg}", flush=True)


def _safe_name(site: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in site)[:64] or "site"


class Run:
    """One coordinator run over a transport, resumable from its state file."""

    def __init__(self, settings: RunSettings, transport: Transport,
                 state: CoordinatorState | None = None, log: Log = _print) -> None:
        self.s = settings
        self.t = transport
        self.work = settings.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.state = state or CoordinatorState(self.work / "state.db")
        self.log = log
        self.run = settings.run_name
        self._sites: dict[int, str] | None = None

    # -- nodes ---------------------------------------------------------------------------------
    def wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.s.node_wait_s
        ids = self.t.node_ids()
        while len(ids) < self.s.expected_sites and time.monotonic() < deadline:
            time.sleep(1.0)
            ids = self.t.node_ids()
        self.log(f"{len(ids)} SuperNode(s) connected (expected {self.s.expected_sites})")
        return ids

    def sites(self) -> dict[int, str]:
        """node id → site name, by one ``ping`` round (cached for the rest of the run)."""
        if self._sites is not None:
            return self._sites
        ids = self.wait_for_nodes()
        req = {"protocol": PROTOCOL, "action": "ping", "run-tag": self.run}
        out = self.t.exchange("query", {n: req for n in ids}, None, self.s.ping_timeout_s)
        self._sites = {}
        known = self.state.site_statuses(self.run)
        for node, o in out.items():
            if o.ok:
                site = str(o.config.get("site"))
                self._sites[node] = site
                if site not in known:  # a resumed run keeps earlier verdicts
                    self.state.set_site_status(self.run, site, "ok")
        self.log(f"sites: {', '.join(sorted(self._sites.values())) or 'none'}")
        return self._sites

    # -- phases --------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        done = self.state.completed_phases(self.run)
        if done:
            self.log(f"resuming run {self.run}: phases already done: {', '.join(done)}")
        if self.s.stop_after == "ping":
            sites = self.sites()
            (self.work / "ping.json").write_text(json.dumps(
                {str(k): v for k, v in sites.items()}, indent=2, sort_keys=True) + "\n")
            return {"ping": sites}
        for phase in PHASES:
            if phase in done:
                continue
            t0 = time.monotonic()
            self.log(f"phase {phase} …")
            self.state.start_phase(self.run, phase)
            result = getattr(self, f"phase_{phase}")()
            self.state.finish_phase(self.run, phase, result)
            self.log(f"phase {phase} done in {time.monotonic() - t0:.1f} s")
            if phase == self.s.stop_after:
                self.log(f"stopping after phase {phase} as asked (stop-after)")
                return {"stopped_after": phase}
        report = self.state.phase_result(self.run, "report") or {}
        return report

    def _mark(self, site: str, status: str, reason: str) -> None:
        self.log(f"site {site}: {status} ({reason})")
        self.state.set_site_status(self.run, site, status, reason)

    def phase_bundles(self) -> dict[str, Any]:
        sites = self.sites()
        if len(sites) < self.s.min_sites:
            from coordinator.errors import CoordinatorError

            raise CoordinatorError(f"only {len(sites)} site(s) answered the ping; the run "
                                   f"needs at least {self.s.min_sites}")
        req: dict[str, Any] = {"protocol": PROTOCOL, "action": "export-bundle",
                               "run-tag": self.run, "mode": self.s.mode,
                               "n-synthetic": self.s.n_synthetic, "seed": self.s.seed}
        if self.s.mode == "train":
            req["gan-config"] = self.s.gan_config
            req["baseline-config"] = self.s.baseline_config
        out = self.t.exchange("train", {n: req for n in sites}, None, self.s.bundle_timeout_s)
        bundle_dir = self.work / "bundles"
        bundle_dir.mkdir(parents=True, exist_ok=True)
        received: dict[str, str] = {}
        for node, site in sites.items():
            o = out.get(node)
            if o is None or o.error is not None:
                why = o.error if o is not None else "no reply before the round's timeout"
                self._mark(site, "dropped", f"bundle round: {why}")
                continue
            if not o.ok or o.bundle is None:
                status = "refused" if o.config.get("status") == "refused" else "failed"
                self._mark(site, status, f"bundle round: {o.config.get('reason', 'no bundle')}")
                continue
            path = bundle_dir / f"{_safe_name(site)}.slbundle"
            path.write_bytes(o.bundle)
            received[site] = str(path)
        self.log(f"received {len(received)} bundle(s)")
        return {"bundles": received, "sites": {str(k): v for k, v in sites.items()}}

    def phase_pool(self) -> dict[str, Any]:
        from coordinator.pool import pool_bundles, require_pool

        got = self.state.phase_result(self.run, "bundles") or {}
        paths = [Path(p) for p in (got.get("bundles") or {}).values()]
        if not paths:
            from coordinator.errors import PoolError

            why = "; ".join(f"{site}: {st['status']} ({st['reason']})" for site, st in
                            self.state.site_statuses(self.run).items()) or "no site answered"
            raise PoolError(f"no site sent a bundle: {why}")
        res = pool_bundles(paths, Path(self.s.trust_dir), self.state, self.run,
                           balance=self.s.balance, seed=self.s.seed,
                           out_dir=self.work / "pool")
        by_path = {p: s for s, p in (got.get("bundles") or {}).items()}
        for rej in res.rejected:
            site = by_path.get(rej["path"]) or rej.get("site") or rej["path"]
            self._mark(site, "excluded", f"bundle rejected [{rej['reason']}]: {rej['message']}")
        require_pool(res, self.work / "bundles")
        self.log(f"pooled {len(res.pooled or [])} synthetic images from "
                 f"{len(res.accepted)} site(s); {len(res.rejected)} bundle(s) rejected")
        return res.summary()

    def phase_train(self) -> dict[str, Any]:
        from coordinator.train import train_pooled
        from shared.synthetic import SyntheticSet

        pooled = SyntheticSet.load(self.work / "pool" / "pooled")
        cfg = self.s.cnn_config()
        cnn_dir = self.work / "cnn"
        result: dict[str, Any] = {"pooled": train_pooled(pooled, cnn_dir / "pooled-cnn.npz", cfg,
                                                         progress=False)}
        self.log(f"pooled CNN: {result['pooled']['n_images']} synthetic images, "
                 f"{result['pooled']['seconds']} s")
        own: dict[str, Any] = {}
        if self.s.own_synthetic:
            pool = self.state.phase_result(self.run, "pool") or {}
            for acc in pool.get("accepted", []):
                own_set = _own_set(Path(acc["path"]), Path(self.s.trust_dir))
                if own_set is None:
                    continue
                path = cnn_dir / f"own-{_safe_name(acc['site'])}.npz"
                try:
                    own[acc["site"]] = train_pooled(own_set, path, cfg, role="own",
                                                    progress=False)
                except Exception as exc:  # e.g. a site with one class: report, go on
                    self.log(f"own-synthetic CNN for {acc['site']} not trained: {exc}")
        result["own"] = own
        return result

    def phase_evaluate(self) -> dict[str, Any]:
        from shared.protocol import make_request, verify_reply

        trained = self.state.phase_result(self.run, "train") or {}
        pooled = trained["pooled"]
        pooled_bytes = Path(pooled["weights"]).read_bytes()
        own = trained.get("own") or {}
        statuses = self.state.site_statuses(self.run)
        sites = {n: s for n, s in self.sites().items()
                 if statuses.get(s, {}).get("status") in (None, "ok", "excluded")}
        for site, st in statuses.items():
            if st["status"] in ("ok", "excluded") and site not in sites.values():
                self._mark(site, "dropped", "evaluation round: the site's SuperNode did not "
                           "answer the ping before it (no reply within the round's timeout)")
        requests, weights = {}, {}
        for node, site in sites.items():
            own_rec = own.get(site)
            requests[node] = make_request(self.run, pooled["weights_sha256"],
                                          own_rec["weights_sha256"] if own_rec else None,
                                          self.s.n_boot)
            weights[node] = {"pooled": pooled_bytes}
            if own_rec:
                weights[node]["own"] = Path(own_rec["weights"]).read_bytes()
        out = self.t.exchange("evaluate", requests, weights, self.s.eval_timeout_s)
        answered = 0
        for node, site in sites.items():
            o = out.get(node)
            if o is None or o.error is not None:
                why = o.error if o is not None else "no reply before the round's timeout"
                self._mark(site, "dropped", f"evaluation round: {why}")
                continue
            if not o.ok:
                self._mark(site, "failed", f"evaluation: {o.config.get('reason')}")
                continue
            doc = json.loads(str(o.config.get("reply-json", "{}")))
            expected = {"pooled": pooled["weights_sha256"]}
            if site in own:
                expected["own"] = own[site]["weights_sha256"]
            verified = verify_reply(doc, Path(self.s.trust_dir), expected)
            if verified["site"] != site:
                self._mark(site, "failed", f"reply names site {verified['site']!r}")
                continue
            for role in ("pooled", "own", "baseline"):
                if role in verified:
                    self.state.add_evaluation(self.run, site, role, verified[role])
            if verified["problems"]:
                self.state.add_evaluation(self.run, site, "problems",
                                          {"problems": verified["problems"]})
            answered += 1
        self.log(f"{answered} site(s) returned signed evaluations")
        return {"answered": answered}

    def phase_report(self) -> dict[str, Any]:
        from coordinator.report import build_report, write_report

        pool = self.state.phase_result(self.run, "pool")
        trained = self.state.phase_result(self.run, "train") or {}
        evals = self.state.evaluations(self.run)
        statuses = self.state.site_statuses(self.run)
        accepted = {a["site"]: a for a in (pool or {}).get("accepted", [])}
        sites: dict[str, dict[str, Any]] = {}
        for site in sorted(set(statuses) | set(evals)):
            st = statuses.get(site, {"status": "ok", "reason": ""})
            e = evals.get(site, {})
            status = st["status"]
            if status == "ok" and "pooled" not in e:
                status, st = "failed", {"status": "failed",
                                        "reason": "no verified pooled-CNN evaluation"}
            sites[site] = {"status": status, "reason": st["reason"],
                           "baseline": e.get("baseline"), "own": e.get("own"),
                           "pooled": e.get("pooled"),
                           "problems": (e.get("problems") or {}).get("problems", []),
                           "bundle": accepted.get(site)}
        phases = self.state.phase_times(self.run)
        report = build_report(run=self.run, sites=sites, pool=pool,
                              cnn=trained.get("pooled"), phases=phases, mode=self.s.mode)
        html_path, json_path = write_report(report, self.work / "report")
        self.log(f"report: {html_path}")
        return {"html": str(html_path), "json": str(json_path)}


def _own_set(bundle: Path, trust_dir: Path) -> Any:
    """A site's own synthetic set, re-read from its (already verified) bundle."""
    from shared.bundle import BundleError, verify_bundle

    try:
        vb = verify_bundle(bundle, trust_dir)
    except BundleError:
        return None
    s = vb.synthetic
    s.info = {"bundle_ids": [vb.bundle_id], "sites": [vb.site], "synthetic_only": True}
    return s
