"""The demo federation as a library: phantom sites, keys and trust, run config, one run.

``synthlearn demo`` (:mod:`coordinator.commands.demo`) is a thin caller; the federation
benchmarks build their sites with the same functions. This is the one coordinator module
(with :mod:`coordinator.local_transport`) that imports :mod:`node`: a demo plays every site
on one machine, so it must run the hospital's ingestion too.

What it does, in order (each step timed; the breakdown lands in ``OUT/demo-timing.json``):

1. phantom DICOMs for 3 non-IID sites (fake PHI included, so you can grep for it), ingested
   into each site's store exactly as a hospital would (``node preprocess``);
2. a site key per site and the coordinator's trust folder (the hand-copied ``site.pub`` files);
3. a Flower SuperLink and 3 SuperNodes on 127.0.0.1, each with its own port and ``FLWR_HOME``
   (``--insecure`` is acceptable here only because nothing leaves loopback);
4. one Flower run in ``train`` mode with a small budget: each site trains its GAN, generates,
   audits and exports a signed bundle; the coordinator pools, trains the CNN on synthetic
   images only, and each site evaluates it on its real test split;
5. the report (``OUT/coordinator/report/report.html``).

Every process it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any


def run_demo(out: Path, *, sites: int = 3, scale: float = 1.0, size: int = 32,
             model: str = "spinegan", gan_minutes: float = 2.5, n_synthetic: int = 500,
             cnn_minutes: float = 1.5,
             fresh: bool = True, timeout: float = 1800.0) -> dict[str, Any]:
    from coordinator.launch import ConsoleEcho, submit_and_watch
    from shared.files import atomic_write_json
    from shared.flower_proc import loopback_federation

    out = out.absolute()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t_all = time.monotonic()
    with ConsoleEcho() as echo:
        t0 = time.monotonic()
        echo(f"[bold]1/4[/] phantom DICOMs for {sites} sites → {out / 'raw'}; "
             "site keys and the coordinator's trust folder")
        site_dirs, trust = prepare_sites(out, sites=sites, scale=scale, size=size)
        timing["data_and_keys"] = round(time.monotonic() - t0, 2)

        t0 = time.monotonic()
        echo("[bold]2/4[/] Flower SuperLink + SuperNodes on 127.0.0.1 (loopback only)")
        node_cfg = demo_node_config(site_dirs, gan_minutes)
        work = out / "coordinator"
        # As in a real deployment, every SuperNode runs only apps the operator's key signed.
        from shared.app_signing import write_trusted_entities
        from shared.flower_keys import make_app_signing_key

        app_key, app_pub = make_app_signing_key(out / "coordinator" / "keys")
        trusted = write_trusted_entities(app_pub, out / "flower" / "trusted-entities.yaml")
        with loopback_federation(out / "flower", node_cfg, trusted_entities=trusted) as fed:
            timing["federation_start"] = round(time.monotonic() - t0, 2)
            echo(f"      SuperLink 127.0.0.1:{fed.superlink.port}, SuperNodes "
                 + ", ".join(f"{n}:{p.port}" for n, p in fed.supernodes.items()))
            echo("[bold]3/4[/] Flower run (train mode): sites train, generate, audit, export; "
                 "coordinator pools, trains the CNN, sites evaluate it")
            t0 = time.monotonic()
            run_config = demo_run_config(work, trust, sites=sites, size=size,
                                         model=model, gan_minutes=gan_minutes,
                                         n_synthetic=n_synthetic,
                                         cnn_minutes=cnn_minutes)
            row = submit_and_watch(fed.connection, fed.cli_home, run_config, timeout=timeout,
                                   echo=echo, signing=(fed.database, app_key))
            timing["flower_run"] = round(time.monotonic() - t0, 2)
            t0 = time.monotonic()
        timing["federation_stop"] = round(time.monotonic() - t0, 2)
        echo("[bold]4/4[/] all Flower processes stopped")
    from coordinator.state import CoordinatorState

    state = CoordinatorState(work / "state.db")
    phases = state.phase_times("demo")
    state.close()
    rounds = [json.loads(line) for line in (work / "rounds.jsonl").read_text().splitlines()]
    total = round(time.monotonic() - t_all, 2)
    doc = {"total_seconds": total, "steps_seconds": timing, "run_phases_seconds": phases,
           "flower_rounds": rounds, "run_id": row.get("run_id"),
           "flower_status": row.get("status"), "sites": sites, "scale": scale, "size": size,
           "model": model, "gan_minutes": gan_minutes, "n_synthetic": n_synthetic,
           "cnn_minutes": cnn_minutes}
    atomic_write_json(out / "demo-timing.json", doc, sort_keys=False)
    return {"report_html": str(work / "report" / "report.html"), "total_seconds": total,
            "timing": doc}


def prepare_sites(out: Path, *, sites: int = 3, scale: float = 1.0, size: int = 32,
                  seed: int = 0) -> tuple[dict[str, Path], Path]:
    """Phantom DICOMs → preprocessed site stores with keys; the coordinator's trust folder."""
    from node.ingest import preprocess
    from node.phantoms import make_sites

    raw = make_sites(out / "raw", sites=sites, seed=seed, scale=scale, size=max(size, 48))
    site_dirs: dict[str, Path] = {}
    for src in raw:
        site = out / "sites" / src.name
        if not (site / "site.json").exists():
            preprocess(src / "dicom", src / "labels.csv", site, size=size, workers=1,
                       progress=False, min_side=min(size, 32))
        site_dirs[src.name] = site
    return site_dirs, keys_and_trust(site_dirs, out / "coordinator" / "trust")


def keys_and_trust(site_dirs: dict[str, Path], trust: Path) -> Path:
    """Each site's key and pseudonym (what `node keygen` leaves, made once) and the
    coordinator's trust folder of their public keys."""
    from shared.signing import generate_keypair

    trust.mkdir(parents=True, exist_ok=True)
    for name, site in site_dirs.items():
        if not (site / "keys" / "site.key").exists():
            generate_keypair(site / "keys")
            (site / "keys" / "pseudonym").write_text(name)
        shutil.copyfile(site / "keys" / "site.pub", trust / f"{name}.pub")
    return trust


def demo_node_config(site_dirs: dict[str, Path], gan_minutes: float) -> dict[str, dict[str, Any]]:
    """What each demo site's admin would pass to `synthlearn node join`."""
    # The demo's admins allow training on request without DP: phantom data, no patient
    # (a hospital's default policy refuses both: node.site_policy).
    return {name: {"site-dir": str(site), "max-train-minutes": gan_minutes * 2,
                   "allow-train": True, "require-dp": False,
                   "accept-risk": "built-in phantom demo data: no patient exists; tiny "
                                  "training budget"}
            for name, site in site_dirs.items()}


def demo_run_config(work: Path, trust: Path, *, sites: int = 3, size: int = 32,
                    model: str = "gan", gan_minutes: float = 1.5, n_synthetic: int = 200,
                    cnn_minutes: float = 1.5) -> dict[str, Any]:
    """The demo's run config (train mode, small budgets)."""
    gan = {"model": model, "resolution": size, "max_minutes": gan_minutes,
           "min_class_images": 10, "batch": 32}
    baseline = {"epochs": 8, "width": 16, "max_minutes": 1.0, "classes": "binary"}
    return {
        "work-dir": str(work), "trust-dir": str(trust), "run-name": "demo",
        "mode": "train", "expected-sites": sites, "node-wait-s": 60.0,
        "bundle-timeout-s": gan_minutes * 60 * 4 + 600, "eval-timeout-s": 600.0,
        "gan-config": json.dumps(gan), "baseline-config": json.dumps(baseline),
        "n-synthetic": n_synthetic, "cnn-epochs": 10, "cnn-width": 16,
        "cnn-max-minutes": cnn_minutes, "cnn-patience": 4,
    }
