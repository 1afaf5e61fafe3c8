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

DEMO_DEFAULTS: dict[str, Any] = {
    "sites": 3, "scale": 1.0, "size": 32, "model": "spinegan", "gan_minutes": 4.0,
    "n_synthetic": 1000, "cnn_minutes": 1.5, "classes": "binary", "seed": 0, "rounds": 1,
}
"""The one table of the demo's defaults (the command's options read it). Budgets are sized
for ≤ 10 minutes on a 2-core CPU with the three sites training in parallel."""


_D = DEMO_DEFAULTS


def run_demo(out: Path, *, sites: int = _D["sites"], scale: float = _D["scale"],
             size: int = _D["size"], model: str = _D["model"],
             gan_minutes: float = _D["gan_minutes"], n_synthetic: int = _D["n_synthetic"],
             cnn_minutes: float = _D["cnn_minutes"], classes: str = _D["classes"],
             seed: int = _D["seed"], rounds: int = _D["rounds"], fresh: bool = True,
             timeout: float = 1800.0) -> dict[str, Any]:
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
        site_dirs, trust = prepare_sites(out, sites=sites, scale=scale, size=size, seed=seed)
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
                                         cnn_minutes=cnn_minutes, classes=classes, seed=seed,
                                         rounds=rounds)
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
    flower_rounds = [json.loads(line)
                     for line in (work / "rounds.jsonl").read_text().splitlines()]
    total = round(time.monotonic() - t_all, 2)
    doc = {"total_seconds": total, "steps_seconds": timing, "run_phases_seconds": phases,
           "flower_rounds": flower_rounds, "run_id": row.get("run_id"),
           "flower_status": row.get("status"), "sites": sites, "scale": scale, "size": size,
           "model": model, "gan_minutes": gan_minutes, "n_synthetic": n_synthetic,
           "cnn_minutes": cnn_minutes, "classes": classes, "seed": seed, "rounds": rounds}
    atomic_write_json(out / "demo-timing.json", doc, sort_keys=False)
    report_json = work / "report" / "report.json"
    if report_json.exists():
        print_site_table(json.loads(report_json.read_text()))
    return {"report_html": str(work / "report" / "report.html"), "total_seconds": total,
            "timing": doc}


def site_table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The report's per-site numbers as text cells (the terminal table at the end)."""
    def auc(rec: dict[str, Any] | None) -> str:
        if not rec or rec.get("auc") is None:
            return "–"
        return f"{rec['auc']:.3f} [{rec.get('ci_low', 0):.2f}, {rec.get('ci_high', 0):.2f}]"

    rows = []
    for r in report.get("sites", []):
        gain = r.get("gain")
        rows.append([r["site"], r["status"], auc(r.get("baseline")), auc(r.get("own")),
                     auc(r.get("pooled")),
                     f"{gain['delta']:+.3f} ({_p_text(gain.get('p_value'))})" if gain
                     else "–",
                     str((r.get("pooled") or r.get("baseline") or {}).get("n_test", "–"))])
    return rows


def _p_text(p: Any) -> str:
    if p is None:
        return "p –"
    return "p < 0.001" if float(p) < 0.001 else f"p = {float(p):.3g}"


def print_site_table(report: dict[str, Any]) -> None:
    """Print the per-site AUC table (real test split of each site) and the gain sentences."""
    from rich.console import Console
    from rich.table import Table

    from coordinator.report import gain_sentence

    table = Table(title="AUC on each site's real test split (95 % CI), computed at the site")
    for col in ("site", "status", "local real", "own synthetic", "pooled synthetic",
                "gain by joining", "test images"):
        table.add_column(col)
    for row in site_table_rows(report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for r in report.get("sites", []):
        if r.get("gain"):
            n = (r.get("pooled") or {}).get("n_test")
            console.print(gain_sentence(r["site"], r["gain"], n), highlight=False)
    chose = [f"{r['site']} {sel['distinct']} of {sel['candidates']}" for r in
             report.get("sites", []) if isinstance(sel := (r.get("pooled") or {}).get("selection"),
                                                   dict) and sel.get("on_train")]
    if chose:
        console.print("pooled synthetic: each site chose its ensemble among the coordinator's "
                      f"candidate CNNs on its own real train split ({', '.join(chose)})",
                      highlight=False)


def prepare_sites(out: Path, *, sites: int = 3, scale: float = 1.0, size: int = 32,
                  seed: int = 0) -> tuple[dict[str, Path], Path]:
    """Phantom DICOMs → preprocessed site stores with keys; the coordinator's trust folder.

    The sites are :data:`node.phantoms.DEMO_PROFILES` (two large hospitals, one small)."""
    from node.ingest import preprocess
    from node.phantoms import DEMO_PROFILES, make_sites, site_profile

    raw = make_sites(out / "raw", sites=sites, seed=seed, scale=scale, size=max(size, 48),
                     profiles=DEMO_PROFILES)
    site_dirs: dict[str, Path] = {}
    for i, src in enumerate(raw):
        site = out / "sites" / src.name
        if not (site / "site.json").exists():
            preprocess(src / "dicom", src / "labels.csv", site, size=size, workers=1,
                       progress=False, min_side=min(size, 32),
                       test_fraction=site_profile(i, seed, DEMO_PROFILES).test_fraction)
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
    # (a hospital's default policy refuses both: node.site_policy). They also take the
    # coordinator's baseline recipe, sized for the demo's 10 minutes, instead of their own.
    return {name: {"site-dir": str(site), "max-train-minutes": gan_minutes * 2,
                   "allow-train": True, "require-dp": False, "baseline-recipe": "request",
                   "accept-risk": "built-in phantom demo data: no patient exists; tiny "
                                  "training budget"}
            for name, site in site_dirs.items()}


def demo_run_config(work: Path, trust: Path, *, sites: int = 3, size: int = 32,
                    model: str = "gan", gan_minutes: float = 1.5, n_synthetic: int = 200,
                    cnn_minutes: float = 1.5, classes: str = "binary",
                    seed: int = 0, rounds: int = 1) -> dict[str, Any]:
    """The demo's run config (train mode, small budgets; ``classes`` binary or lesion)."""
    if classes not in ("binary", "lesion"):
        from coordinator.errors import CoordinatorError

        raise CoordinatorError(f"classes must be 'binary' or 'lesion', not {classes!r}")
    # Batch 16, not 32: a 4-minute GAN on a shared 2-core CPU sees ≈ 12 kimg, which is only
    # ≈ 370 optimizer steps at 32; twice the steps at 16 made far more faithful images
    # (precision 0.56-0.77 against 0.01-0.06 at equal kimg, BENCHMARKS.md § Batch size). On
    # PneumoniaMNIST at equal compute it was no better, so GanConfig's default stays 64.
    gan = {"model": model, "resolution": size, "max_minutes": gan_minutes,
           "min_class_images": 10, "batch": 16, "classes": classes, "seed": seed}
    # The local real CNN is bounded by epochs, the wall clock only as a safety net: with a
    # 1-minute cap, three sites sharing two cores (and GANs training beside them) stopped it
    # after 1–2 epochs, and the "local real" column showed contention, not the data. No early
    # stopping (the best epoch on the validation part is still the one kept): at the small
    # site that part is ≈ 20 images, too few to stop on. At least 200 steps: 12 epochs are
    # only 84 at the small site, which under-trains a CNN that a fair comparison needs at its
    # best (early-disease phantoms measured the difference, BENCHMARKS.md § demo).
    baseline = {"epochs": 12, "width": 16, "max_minutes": 4.0, "patience": 0, "seed": seed,
                "min_steps": 200, "classes": classes}
    return {
        "work-dir": str(work), "trust-dir": str(trust), "run-name": "demo",
        "mode": "train", "expected-sites": sites, "node-wait-s": 60.0,
        "bundle-timeout-s": gan_minutes * 60 * 4 + 600, "eval-timeout-s": 600.0,
        "gan-config": json.dumps(gan), "baseline-config": json.dumps(baseline),
        # Three CNN seeds of 3 epochs each (≈ the cost of one CNN of 9-10 epochs): each site
        # picks its ensemble among the 9 candidates on its real train split (node.selection).
        "n-synthetic": n_synthetic, "seed": seed, "cnn-epochs": 3, "cnn-width": 16,
        "cnn-max-minutes": cnn_minutes, "cnn-patience": 4, "cnn-members": 3,
        # Each site already signs its GAN-train score (a CNN on its own synthetic images,
        # AUC on its real test split) into its bundle, and the report shows it in the "own
        # synthetic" column: three more CNNs at the coordinator would repeat that measurement
        # and take ≈ 2 of the demo's 10 minutes from the GANs.
        "own-synthetic": False,
        # Round 2 (--rounds 2) takes about as long as round 1: half the GAN budget pretrains
        # on the other sites' images, half fine-tunes on the site's own.
        "rounds": rounds,
        "round2-gan-config": json.dumps({"max_minutes": gan_minutes / 2,
                                         "init_pretrain_kimg": 8.0}),
    }
