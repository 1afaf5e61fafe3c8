"""The coordinator's job as plain functions, one per step, whatever carries the messages.

Why one module: the Flower run (:mod:`coordinator.phases`, over :mod:`coordinator.server_app`
or the in-process :mod:`coordinator.local_transport`) and the air-gapped commands
(``synthlearn coordinator pool | train | report``) used to implement these steps twice and
drifted apart (CNN defaults, a silent site called ``dropped`` on one path and ``failed`` on
the other, a reply's site checked on one path only). Now both call:

1. :func:`pool_step`: verify, de-duplicate, balance; every verdict recorded in the state;
2. :func:`train_step`: the downstream CNN on the pooled synthetic set (+ one per site on its
   own synthetic images), its resolved config written next to the weights;
3. :func:`request_evaluations`: one evaluation request per site, bound to the weights' SHA-256;
4. :func:`accept_reply`: verify one reply against the request sent to that site;
5. :func:`report_step`: one row per site under one status rule, then HTML + JSON.

The transports only move bytes; nothing here knows Flower or the file layout of a request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from coordinator.state import CoordinatorState
from shared.names import safe_name

Log = Callable[[str], None]

ROLES = ("pooled", "own", "baseline")
"""What one evaluation reply may carry, in report order."""


def _quiet(_: str) -> None:
    return None


def mark(state: CoordinatorState, run: str, site: str, status: str, reason: str,
         log: Log = _quiet) -> None:
    """Record a site's verdict (``ok``, ``excluded``, ``refused``, ``failed``, ``dropped``)."""
    log(f"site {site}: {status} ({reason})")
    state.set_site_status(run, site, status, reason)


# -- 1. verify + pool --------------------------------------------------------------------------
def pool_step(state: CoordinatorState, run: str, paths: Iterable[Path], trust_dir: Path,
              work: Path, *, sent_by: Mapping[str, str] | None = None, balance: bool = True,
              seed: int = 0, log: Log = _quiet, folder: str = "pool") -> dict[str, Any]:
    """Verify every bundle, pool the accepted ones into ``work/<folder>`` (round 2 pools
    into its own folder: round 1's pool stays, its CNNs are candidates too); the pool
    summary, which names the folder.

    ``sent_by`` maps a bundle path to the site that sent it (known over a transport); a
    rejected bundle is otherwise attributed to the site its unverified manifest names, or to
    its file name. Raises :class:`coordinator.errors.PoolError` when nothing can be pooled.
    """
    from coordinator.pool import pool_bundles, require_pool

    paths = [Path(p) for p in paths]
    res = pool_bundles(paths, trust_dir, state, run, balance=balance, seed=seed,
                       out_dir=work / folder)
    for rej in res.rejected:
        site = ((sent_by or {}).get(rej["path"]) or rej.get("site")
                or Path(rej["path"]).name)
        mark(state, run, str(site)[:64], "excluded",
             f"bundle rejected [{rej['reason']}]: {rej['message']}", log)
    for acc in res.accepted:
        state.set_site_status(run, acc["site"], "ok")
    require_pool(res, paths[0].parent if paths else work / "bundles")
    summary = res.summary()
    summary["trust_dir"] = str(Path(trust_dir).absolute())
    summary["folder"] = folder
    log(f"pooled {summary['images']} synthetic images from {len(res.accepted)} site(s); "
        f"{len(res.rejected)} bundle(s) rejected")
    return summary


# -- 2. train ---------------------------------------------------------------------------------
def train_step(pool: Mapping[str, Any], work: Path, cfg: Any, *, own: bool = True,
               trust_dir: Path | None = None, progress: bool = False,
               log: Log = _quiet, members: int = 1,
               round1: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pooled CNN (and, with ``own``, one CNN per accepted site on its own synthetic
    images); ``cfg`` is the resolved :class:`shared.cnn_train.ClassifierConfig`, written to
    ``work/cnn/cnn-config.json`` so every number in the report traces to it. Own sets are
    re-read from the accepted bundles, verified against ``trust_dir`` (default: the folder
    the pool was verified with).

    ``round1``: in a two-round run (:func:`training_pools`), round 1's pool while ``pool``
    is round 2's: the candidate file then holds CNNs of both, and each site chooses."""
    from coordinator.train import train_pooled
    from shared.config import write_resolved
    from shared.data_parallel import ProcessGroup
    from shared.errors import ClassifierTrainingError

    cnn_dir = work / "cnn"
    # Under torchrun every process trains (its share of each batch); rank 0 alone writes.
    group = ProcessGroup()
    main = group.main
    last = _pooled_set(pool, work)
    if round1 is None:
        first, second = last, None
    else:  # a two-round run: round 1's CNNs are candidates too
        first, second = _pooled_set(round1, work), last
    result: dict[str, Any] = {
        "pooled": train_pooled(first, cnn_dir / "pooled-cnn.npz", cfg, progress=progress,
                               members=members, round2=second),
        "own": {}}
    if main:
        write_resolved(cfg, cnn_dir, "cnn-config.json")
        log(f"pooled CNN: {result['pooled']['n_images']} synthetic images, {members} "
            f"seed(s), {result['pooled']['candidates']} candidate(s), "
            f"{result['pooled']['seconds']} s")
    trust_dir = Path(trust_dir or str(pool.get("trust_dir", "")))
    for acc in pool.get("accepted", []) if own else []:
        own_set = _own_set(Path(acc["path"]), trust_dir)
        if own_set is None:
            continue
        path = cnn_dir / f"own-{safe_name(acc['site'])}.npz"
        try:
            own_cnn = train_pooled(own_set, path, cfg, role="own", progress=progress,
                                   members=members)
        except Exception as exc:  # e.g. a site with one class: report it, go on
            if group.active and not isinstance(exc, ClassifierTrainingError | ValueError):
                raise  # one process failed mid-training: stop the job, not drift apart
            if main:
                log(f"own-synthetic CNN for {acc['site']} not trained: {exc}")
            continue
        if main:
            result["own"][acc["site"]] = own_cnn
    return result


def _pooled_set(pool: Mapping[str, Any], work: Path) -> Any:
    """The pooled images a pool summary names, read batch by batch from disk (a summary from
    before pools named their folder: ``work/pool``)."""
    from shared.synthetic import SyntheticSet

    folder = str(pool.get("folder") or "pool")
    if folder not in ("pool", "pool-round2"):  # the state is ours, but it names a path
        raise ValueError(f"pool folder {folder[:64]!r} is not one the coordinator writes")
    return SyntheticSet.load(work / folder / "pooled", on_disk=True)


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


def round2_payloads(pool: Mapping[str, Any], trust_dir: Path, max_images: int,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """site → its round-2 pretraining set: the synthetic images of every *other* accepted
    site, re-read from their verified bundles (so, by construction, nothing but what the sites
    exported), encoded by :func:`shared.pretrain_set.encode`. At most ``max_images`` each (a
    per-class proportional sample, seeded, when the others hold more). A site alone in the
    pool gets nothing: it keeps its round-1 bundle."""
    import numpy as np

    from shared import pretrain_set
    from shared.files import sha256_bytes

    sets = {}
    for acc in pool.get("accepted", []):
        own = _own_set(Path(acc["path"]), trust_dir)
        if own is not None:
            sets[str(acc["site"])] = own
    out: dict[str, dict[str, Any]] = {}
    for site in sets:
        names = [o for o in sorted(sets) if o != site]
        if not names:
            continue
        others = [sets[o] for o in names]
        images = np.concatenate([o.images for o in others])
        labels = np.concatenate([o.labels for o in others])
        if len(labels) > max_images:
            keep = _stratified(labels, max_images, seed)
            images, labels = images[keep], labels[keep]
        data = pretrain_set.encode(images, labels, list(others[0].class_names))
        out[site] = {"data": data, "sha256": sha256_bytes(data), "images": len(labels),
                     "from_sites": names}
    return out


def _stratified(labels: Any, n: int, seed: int) -> Any:
    """Sorted indices of a per-class proportional sample of ``n`` rows (each class ≥ 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(int)
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(q, k), replace=False)
             for c, q, k in zip(classes, quota, counts, strict=True)]
    return np.sort(np.concatenate(picks))[:n] if picks else np.arange(0)


def training_pools(state: CoordinatorState, run: str
                   ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the pool the run ended with, round 1's pool when its CNNs are candidates too).

    The first is round 2's pool when the run had one, else round 1's: the report shows it,
    the sites' own-synthetic CNNs come from its bundles, and the CNN trains on it.

    After a round 2 in which at least one site's second bundle was pooled, the candidates
    come from both pools: each site then keeps round 2's networks only where they score
    better on its real train split. Neither round alone was dependable under DP (ratio ≥ 0.90
    in two seeds of five for round 1, one for round 2); the choice among both met it in all
    five (BENCHMARKS.md § DP ε = 10 with round 2)."""
    first = state.phase_result(run, "pool")
    second = state.phase_result(run, "round2") or {}
    if not second.get("accepted"):
        return first, None
    if second.get("folder") != "pool-round2" or not any(
            a.get("round") == "2" for a in second["accepted"]):
        return second, None  # no second bundle pooled, or a state from before pool-round2
    return second, first


# -- 3. request evaluations ---------------------------------------------------------------------
def request_evaluations(run: str, trained: Mapping[str, Any], sites: Iterable[str],
                        n_boot: int) -> dict[str, dict[str, Any]]:
    """site → evaluation request (bound to the pooled and, if any, the site's own weights)."""
    from shared.protocol import make_request

    own = trained.get("own") or {}
    out = {}
    for site in sites:
        own_rec = own.get(site)
        out[site] = make_request(run, trained["pooled"]["weights_sha256"],
                                 own_rec["weights_sha256"] if own_rec else None, n_boot)
    return out


def weights_for(trained: Mapping[str, Any], site: str) -> dict[str, Path]:
    """role → weights file that the request for ``site`` names."""
    files = {"pooled": Path(trained["pooled"]["weights"])}
    own_rec = (trained.get("own") or {}).get(site)
    if own_rec:
        files["own"] = Path(own_rec["weights"])
    return files


# -- 4. collect replies -----------------------------------------------------------------------
def accept_reply(state: CoordinatorState, run: str, site: str, doc: Mapping[str, Any],
                 request: Mapping[str, Any], trained: Mapping[str, Any], trust_dir: Path,
                 log: Log = _quiet) -> bool:
    """Verify one reply from ``site`` against the request sent to it; store what verifies.

    A reply must answer the request this run sent to that site (its request id, signed into
    every record with the run tag), and its signed records must name that site and be signed
    by that site's key: a site cannot answer for another one, nor replay an old reply. Each
    signed record is checked on its own (:func:`shared.protocol.verify_reply`) and stored with
    its signature. A malformed reply marks this site ``failed`` with the reason; it never
    stops the run for the others.
    """
    from shared.protocol import verify_reply

    try:
        if str(doc.get("request_id", "")) != str(request.get("request-id")):
            mark(state, run, site, "failed", f"reply answers request "
                 f"{str(doc.get('request_id'))[:64]!r}, not the one sent to {site}", log)
            return False
        expected = {"pooled": str(request["weights-sha256"])}
        if request.get("own-weights-sha256"):
            expected["own"] = str(request["own-weights-sha256"])
        binding = {"request_id": str(request.get("request-id")),
                   "run_tag": str(request.get("run-tag"))}
        verified = verify_reply(dict(doc), trust_dir, expected, binding)
    except Exception as exc:  # a hostile or broken reply: this site fails, the run goes on
        mark(state, run, site, "failed", f"malformed evaluation reply "
             f"({type(exc).__name__}: {str(exc)[:300]})", log)
        return False
    if verified["site"] != site:
        mark(state, run, site, "failed", f"reply names site {verified['site']!r}", log)
        return False
    for role in ROLES:
        if role in verified:
            state.add_evaluation(run, site, role, verified[role])
    if verified["problems"]:
        state.add_evaluation(run, site, "problems", {"problems": verified["problems"]})
    log(f"{site}: {', '.join(r for r in ROLES if r in verified) or 'nothing'} verified"
        + (f"; problems: {'; '.join(verified['problems'])}" if verified["problems"] else ""))
    return True


# -- 5. report --------------------------------------------------------------------------------
def site_rows(state: CoordinatorState, run: str,
              pool: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """One row per site. The one status rule: a site still ``ok`` without a verified pooled
    evaluation is ``failed`` when it replied (its records did not verify) and ``dropped``
    when no reply arrived."""
    evals = state.evaluations(run)
    statuses = state.site_statuses(run)
    accepted = {a["site"]: a for a in (pool or {}).get("accepted", [])}
    rows: dict[str, dict[str, Any]] = {}
    for site in sorted(set(statuses) | set(evals)):
        st = statuses.get(site, {"status": "ok", "reason": ""})
        e = evals.get(site, {})
        status, reason = st["status"], st["reason"]
        if status == "ok" and "pooled" not in e:
            status, reason = (("failed", "its reply held no verified pooled-CNN evaluation")
                              if e else ("dropped", "no evaluation reply received"))
        rows[site] = {"status": status, "reason": reason, "baseline": e.get("baseline"),
                      "own": e.get("own"), "pooled": e.get("pooled"),
                      "problems": (e.get("problems") or {}).get("problems", []),
                      "bundle": accepted.get(site)}
    return rows


def report_step(state: CoordinatorState, run: str, work: Path, *, mode: str, transport: str,
                log: Log = _quiet) -> dict[str, Any]:
    """``work/report/report.html`` and ``report.json``; their paths."""
    from coordinator.report import build_report, write_report

    pool, round1 = training_pools(state, run)
    trained = state.phase_result(run, "train") or {}
    report = build_report(run=run, sites=site_rows(state, run, pool), pool=pool,
                          cnn=trained.get("pooled"), phases=state.phase_times(run), mode=mode,
                          transport=transport, samples=bundle_samples(pool),
                          pool_round1=round1)
    html_path, json_path = write_report(report, work / "report")
    log(f"report: {html_path}")
    return {"html": str(html_path), "json": str(json_path)}


def bundle_samples(pool: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """site → class → inline PNG grid of its synthetic images, re-read from its verified
    bundle (a bundle that no longer verifies shows no pictures)."""
    from coordinator.report import sample_grids

    trust_dir = Path(str((pool or {}).get("trust_dir", "")))
    out: dict[str, dict[str, str]] = {}
    for acc in (pool or {}).get("accepted", []):
        own = _own_set(Path(acc["path"]), trust_dir)
        if own is not None:
            out[str(acc["site"])] = sample_grids(own.images, own.labels, list(own.class_names))
    return out
