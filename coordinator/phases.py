"""The coordinator's run, phase by phase, independent of the transport.

:mod:`coordinator.server_app` supplies a :class:`Transport` over Flower; tests may supply
another. Phases (recorded in :class:`coordinator.state.CoordinatorState`):

1. ``bundles``: ask every site for a fresh signed bundle (``collect`` or ``train`` mode);
2. ``pool``: verify, de-duplicate and balance (:func:`coordinator.pool.pool_bundles`);
   ``round2`` (only with ``rounds = 2``): send each site the other sites' verified synthetic
   images, collect a second bundle trained from them, and pool again;
3. ``train``: the downstream CNN on the pooled synthetic set (+ one per site on its own);
4. ``evaluate``: send the weights; each site replies with signed AUCs and its baseline;
5. ``report``: HTML + JSON.

A restarted coordinator with the same work folder and run name skips every phase already
marked done and continues from the next one; bundles already received are kept on disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from coordinator.pipeline import (
    accept_reply,
    mark,
    pool_step,
    report_step,
    request_evaluations,
    round2_payloads,
    train_step,
    training_pools,
    weights_for,
)
from coordinator.state import PHASES, CoordinatorState
from shared.errors import ProtocolError
from shared.files import UntrustedJSONError, atomic_write_bytes, atomic_write_json, loads_untrusted
from shared.names import SITE_RE, safe_name
from shared.protocol import PROTOCOL, Outcome, Transport


@dataclass(frozen=True)
class RunSettings:
    """The one table of run-config defaults (Flower's run config: hyphens here become
    underscores). ``[tool.flwr.app.config]`` in pyproject.toml must list the same keys and
    values because Flower only accepts overrides of keys it declares; a test keeps the two
    equal, and a staged app (:func:`coordinator.launch.app_dir`) is generated from this
    table. The air-gapped commands take their CNN defaults from here too."""

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
    rounds: int = 1
    """2: after pooling round 1, each site receives the other sites' verified synthetic images,
    pretrains a new GAN on them, fine-tunes it on its own real images and exports a second
    bundle (``train`` mode only). The CNN candidates are then trained on both rounds' pools
    and each site chooses among them (:func:`coordinator.pipeline.training_pools`). Off by
    default: on PneumoniaMNIST it moved the pooled AUC 0.968 → 0.971 without DP, inside the
    CI, for a second GAN run at every site; under DP (ε split 7 + 3), the sites choosing
    among both rounds' candidates gave the best figures measured (BENCHMARKS.md § Round 2,
    § DP ε = 10 with round 2)."""
    round2_gan_config: str = "{}"
    """JSON object of GanConfig overrides for round 2, applied over ``gan_config`` (e.g. the
    DP share of the second round: ``{"dp_epsilon": 3}``). Each site's ledger counts both
    rounds against its lifetime ε and refuses a round that would pass it."""
    round2_max_images: int = 20_000
    """Most synthetic images sent to one site in round 2 (a stratified sample of the others'
    images when they hold more); each site's own cap is its ``max_pretrain_images``."""
    baseline_config: str = "{}"
    """JSON object of ClassifierConfig values (+ "classes") for a site's missing baseline and
    its GAN-train CNN. Advice: a site trains them with its own recipe (site policy
    ``baseline_recipe = "site"``, the default) and takes only ``classes`` from it."""
    n_synthetic: int = 200
    seed: int = 0
    cnn_epochs: int = 10
    cnn_width: int = 16
    cnn_batch: int = 32
    cnn_patience: int = 3
    cnn_max_minutes: float = 5.0
    cnn_members: int = 3
    """CNN seeds trained on the pool, one after another, sharing ``cnn_max_minutes``; every
    epoch of each is a candidate each site chooses among on its real train split
    (:mod:`node.selection`). 3 members of 3 epochs beat one CNN of 10 epochs at the same
    cost in replays of nine demo pools (BENCHMARKS.md § Candidates chosen at the site)."""
    own_synthetic: bool = True
    balance: bool = True
    n_boot: int = 1000
    record_messages: bool = False
    """Write every payload that crosses to ``work/messages/`` (tests, audits)."""
    stop_after: str = ""
    """'' = all phases; 'ping' = one ping round only (plumbing check); or a phase name (the
    run stops after it; a later run with the same name continues)."""

    def __post_init__(self) -> None:
        if self.min_sites < 1:
            raise ValueError("min_sites must be ≥ 1")
        if self.expected_sites < 1 or self.n_synthetic < 1:
            raise ValueError("expected_sites and n_synthetic must be ≥ 1")
        if self.rounds not in (1, 2):
            raise ValueError(f"rounds must be 1 or 2, got {self.rounds}")
        if self.rounds == 2 and self.mode != "train":
            raise ValueError("rounds = 2 needs mode 'train' (sites train the second round)")
        if not 1 <= self.round2_max_images <= 1_000_000:
            raise ValueError(f"round2_max_images must be in 1..1000000, got "
                             f"{self.round2_max_images}")
        if not 1 <= self.cnn_members <= 8:
            raise ValueError(f"cnn_members must be in 1..8, got {self.cnn_members}")
        if not 100 <= self.n_boot <= 100_000:
            raise ValueError(f"n_boot must be in 100..100000 (what a site accepts), "
                             f"got {self.n_boot}")
        for key in ("node_wait_s", "ping_timeout_s", "bundle_timeout_s", "eval_timeout_s"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("gan_config", "baseline_config", "round2_gan_config"):
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
        """The CNN recipe, refused (ConfigError) when ``cnn_members`` networks per pool, on
        each of ``rounds`` pools, would not fit one candidate file a site accepts: the train
        phase would refuse it too, after every site had trained its GANs."""
        from coordinator.train import candidates_per_run
        from shared.cnn_train import ClassifierConfig
        from shared.errors import ConfigError

        try:  # two classes: more only add a few output weights, checked again at train
            cfg = ClassifierConfig(epochs=self.cnn_epochs, width=self.cnn_width,
                                   batch=self.cnn_batch, patience=self.cnn_patience,
                                   max_minutes=self.cnn_max_minutes, seed=self.seed)
            candidates_per_run(cfg, self.cnn_members * self.rounds)
        except ValueError as exc:
            raise ConfigError(str(exc), "run config") from None
        return cfg


def run_config_defaults() -> dict[str, Any]:
    """:class:`RunSettings`' defaults as Flower run-config keys (``cnn-epochs`` …)."""
    import dataclasses

    return {f.name.replace("_", "-"): f.default for f in dataclasses.fields(RunSettings)}


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


def _unverified(bundle: Path, trust_dir: Path, site: str) -> str | None:
    """Why ``bundle`` (sent by ``site``) would not pool, or None: the checks of
    :func:`coordinator.pool.pool_bundles` that concern one bundle (signature, members,
    the site it names)."""
    from shared.bundle import BundleError, verify_bundle

    try:
        vb = verify_bundle(bundle, trust_dir)
    except BundleError as exc:
        return str(exc)
    if vb.site != site:
        return f"it is signed for site {vb.site!r}"
    return None


_logger = logging.getLogger("synthlearn.coordinator")
"""Libraries log (the output rule in ARCHITECTURE.md); the ServerApp sends this logger to its
log, which `flwr log` and `synthlearn coordinator run` show."""


def _print(msg: str) -> None:
    _logger.info(msg)


def reply_document(o: Outcome) -> dict[str, Any]:
    """A reply's ``reply-json`` as an object, or :class:`shared.errors.ProtocolError` saying
    why not. The site chose those bytes: a huge integer or deep nesting must fail this one
    reply (:func:`shared.files.loads_untrusted`), never the run."""
    try:
        doc = loads_untrusted(str(o.config.get("reply-json", "{}")))
    except UntrustedJSONError as exc:
        raise ProtocolError(f"reply-json is {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("reply-json is not a JSON object")
    return doc


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
        for node, o in sorted(out.items()):
            if not o.ok:
                continue
            site, problem = self._check_ping(o)
            if problem is None and site in self._sites.values():
                problem = f"node {node} also claims site {site!r}; only the first is used"
            if problem is not None:
                # Recorded under the node, not the name it claims: an impostor's ping must
                # not change the verdict of the site it pretends to be.
                # ("node #N" is no pseudonym, so it can never be taken for a site's row.)
                self._mark(f"node #{node}", "excluded", f"ping claiming site {site!r}: {problem}")
                continue
            self._sites[node] = site
            if site not in known:  # a resumed run keeps earlier verdicts
                self.state.set_site_status(self.run, site, "ok")
        self.log(f"sites: {', '.join(sorted(self._sites.values())) or 'none'}")
        return self._sites

    def _check_ping(self, o: Outcome) -> tuple[str, str | None]:
        """(claimed site, problem or None). A ping counts only when its signed record names
        the site the signing key belongs to in the trust folder, for this run; a known site
        whose key changed stops the run (:class:`coordinator.errors.KeyChangedError`)."""
        from shared.signing import SigningError, check_signer, verify_record

        claimed = str(o.config.get("site", ""))[:64]
        site = claimed if SITE_RE.match(claimed) else ""
        if not site:
            return "", f"site name {claimed!r} is not a pseudonym"
        try:
            record = reply_document(o).get("ping")
            payload = verify_record(record or {}, Path(self.s.trust_dir))
            check_signer(payload.get("site"), str(record["key_fingerprint"]),  # type: ignore[index]
                         Path(self.s.trust_dir), "ping")
        except (SigningError, ProtocolError, KeyError, TypeError) as exc:
            return site, (f"unsigned or untrusted ping [{getattr(exc, 'reason', 'malformed')}]: "
                          f"{str(exc)[:300]}")
        if payload.get("site") != site:
            return site, f"signed ping names {str(payload.get('site'))[:64]!r}"
        if payload.get("run_tag") != self.run:
            return site, f"signed ping is for run {str(payload.get('run_tag'))[:64]!r}"
        self.state.upsert_site(site, str(record["key_fingerprint"]))  # type: ignore[index]
        return site, None

    # -- phases --------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        done = self.state.completed_phases(self.run)
        if done:
            self.log(f"resuming run {self.run}: phases already done: {', '.join(done)}")
        if "train" not in done:
            self.s.cnn_config()  # a CNN recipe no site would accept stops the run here
        if self.s.stop_after == "ping":
            sites = self.sites()
            atomic_write_json(self.work / "ping.json", {str(k): v for k, v in sites.items()})
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
        mark(self.state, self.run, site, status, reason, self.log)

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
            path = bundle_dir / f"{safe_name(site)}.slbundle"
            atomic_write_bytes(path, o.bundle)
            received[site] = str(path)
        self.log(f"received {len(received)} bundle(s)")
        return {"bundles": received, "sites": {str(k): v for k, v in sites.items()}}

    def phase_pool(self) -> dict[str, Any]:
        got = self.state.phase_result(self.run, "bundles") or {}
        sent = got.get("bundles") or {}
        if not sent:
            from coordinator.errors import PoolError

            why = "; ".join(f"{site}: {st['status']} ({st['reason']})" for site, st in
                            self.state.site_statuses(self.run).items()) or "no site answered"
            raise PoolError(f"no site sent a bundle: {why}")
        return pool_step(self.state, self.run, [Path(p) for p in sent.values()],
                         Path(self.s.trust_dir), self.work,
                         sent_by={p: s for s, p in sent.items()}, balance=self.s.balance,
                         seed=self.s.seed, log=self.log)

    def phase_round2(self) -> dict[str, Any]:
        """Round 2 (``rounds = 2``): each site pretrains on the other sites' verified synthetic
        images and sends a second bundle; the pool is rebuilt from them. A site whose second
        round fails keeps its round-1 bundle in the pool (said in the log and the result)."""
        if self.s.rounds < 2:
            return {"skipped": "rounds = 1"}
        pool = self.state.phase_result(self.run, "pool") or {}
        payloads = round2_payloads(pool, Path(self.s.trust_dir), self.s.round2_max_images,
                                   self.s.seed)
        sites = {n: s for n, s in self.sites().items() if s in payloads}
        gan = {**json.loads(self.s.gan_config), **json.loads(self.s.round2_gan_config)}
        requests: dict[int, dict[str, Any]] = {}
        for node, site in sites.items():
            requests[node] = {"protocol": PROTOCOL, "action": "export-bundle",
                              "run-tag": self.run, "mode": "train", "round": 2,
                              "n-synthetic": self.s.n_synthetic, "seed": self.s.seed,
                              "gan-config": json.dumps(gan, sort_keys=True),
                              "baseline-config": self.s.baseline_config,
                              "pretrain-sha256": payloads[site]["sha256"]}
        out = self.t.exchange("train", requests,
                              {n: {"pretrain": payloads[s]["data"]} for n, s in sites.items()},
                              self.s.bundle_timeout_s)
        folder = self.work / "bundles-round2"
        folder.mkdir(parents=True, exist_ok=True)
        first_accepted = list(pool.get("accepted", []))
        first = {a["site"]: a["path"] for a in first_accepted}
        used: dict[str, str] = dict(first)
        rounds: dict[str, str] = {site: "1 (no other site's images to pretrain on)"
                                  for site in first if site not in payloads}
        for node, site in sites.items():
            o = out.get(node)
            if o is None or o.error is not None or not o.ok or o.bundle is None:
                why = ((o.error or o.config.get("reason")) if o is not None
                       else "no reply before the round's timeout")
                rounds[site] = f"1 (round 2: {str(why)[:300]})"
                self.log(f"site {site}: round 2 failed ({why}); its round-1 bundle stays")
                continue
            path = folder / f"{safe_name(site)}.slbundle"
            atomic_write_bytes(path, o.bundle)
            problem = _unverified(path, Path(self.s.trust_dir), site)
            if problem is not None:  # a bad second bundle must not cost the good first one
                rounds[site] = f"1 (round 2: bundle rejected: {problem[:300]})"
                self.log(f"site {site}: round-2 bundle rejected ({problem}); its round-1 "
                         "bundle stays")
                continue
            used[site] = str(path)
            rounds[site] = "2"
        result = pool_step(self.state, self.run, [Path(p) for p in used.values()],
                           Path(self.s.trust_dir), self.work,
                           sent_by={p: s for s, p in used.items()}, balance=self.s.balance,
                           seed=self.s.seed, log=self.log, folder="pool-round2")
        first_ids = {a["site"]: a["bundle_id"] for a in first_accepted}
        for acc in result.get("accepted", []):
            if acc["bundle_id"] == first_ids.get(acc["site"]) and rounds.get(acc["site"]) == "2":
                rounds[acc["site"]] = "1 (round 2: the site sent its round-1 bundle again)"
            acc["round"] = rounds.get(acc["site"], "1")
        kept = {acc["bundle_id"] for acc in result.get("accepted", [])}
        for acc in first_accepted:
            if acc["bundle_id"] not in kept:  # re-pooling forgot it: it stays a replay
                self.state.record_bundle(self.run, verdict="superseded",
                                         bundle_id=acc["bundle_id"], sha256=None,
                                         site=acc["site"], path=acc["path"],
                                         reason="round-2", images=acc.get("images"),
                                         message="pooled in round 1, replaced in round 2")
        result["round2"] = {"rounds": rounds,
                            "pretrain_images": {s: p["images"] for s, p in payloads.items()}}
        return result

    def phase_train(self) -> dict[str, Any]:
        pool, round1 = training_pools(self.state, self.run)
        return train_step(pool or {}, self.work, self.s.cnn_config(), own=self.s.own_synthetic,
                          trust_dir=Path(self.s.trust_dir), log=self.log,
                          members=self.s.cnn_members, round1=round1)

    def phase_evaluate(self) -> dict[str, Any]:
        trained = self.state.phase_result(self.run, "train") or {}
        statuses = self.state.site_statuses(self.run)
        sites = {n: s for n, s in self.sites().items()
                 if statuses.get(s, {}).get("status") in (None, "ok", "excluded")}
        for site, st in statuses.items():
            if not SITE_RE.match(site):  # a node refused at the ping is not a site
                continue
            if st["status"] in ("ok", "excluded") and site not in sites.values():
                self._mark(site, "dropped", "evaluation round: the site's SuperNode did not "
                           "answer the ping before it (no reply within the round's timeout)")
        by_site = request_evaluations(self.run, trained, sites.values(), self.s.n_boot)
        requests = {node: by_site[site] for node, site in sites.items()}
        weights = {node: {role: path.read_bytes()
                          for role, path in weights_for(trained, site).items()}
                   for node, site in sites.items()}
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
            try:
                doc = reply_document(o)
            except ProtocolError as exc:
                self._mark(site, "failed", f"evaluation: {exc}")
                continue
            answered += accept_reply(self.state, self.run, site, doc, requests[node], trained,
                                     Path(self.s.trust_dir), self.log)
        self.log(f"{answered} site(s) returned signed evaluations")
        return {"answered": answered}

    def phase_report(self) -> dict[str, Any]:
        return report_step(self.state, self.run, self.work, mode=self.s.mode,
                           transport=self.t.name, log=self.log)
