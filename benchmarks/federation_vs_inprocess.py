"""Does the real federation give the same answer as running the same code in one process?

Makes the demo's phantom sites twice (same seeds), runs the whole train-mode flow once over a
loopback Flower SuperLink + SuperNodes and once in-process (:class:`LocalTransport`: the same
node handlers, no Flower), and compares each site's AUCs (local real, own synthetic, pooled
synthetic): agreement means the 95 % CIs overlap. Prints JSON and writes it to OUT/compare.json.

    python benchmarks/federation_vs_inprocess.py --out /tmp/fl-compare --gan-minutes 1

``--data pneumoniamnist`` uses the multi-site benchmark's three PneumoniaMNIST sites instead
(``benchmarks/multisite.py``'s seeded partition, each site's own real test split). With
``--gan-kimg K`` every site trains exactly K thousand images in both transports (a wall-clock
budget would give the parallel SuperNodes less training per site than the sequential
in-process run)::

    python benchmarks/federation_vs_inprocess.py --out /tmp/fl-pmnist --data pneumoniamnist \
        --gan-kimg 6
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any


def _aucs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for row in report["sites"]:
        out[row["site"]] = {role: (None if not row.get(role) else
                                   [row[role]["auc"], row[role]["ci_low"], row[role]["ci_high"]])
                            for role in ("baseline", "own", "pooled")}
    return out


def pneumoniamnist_sites(root: Path) -> tuple[dict[str, Path], Path]:
    """The multi-site benchmark's three PneumoniaMNIST site stores, with keys and trust."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from multisite import DATA, SITES, load_split, partition, write_site

    from coordinator.demo import keys_and_trust

    images, labels = load_split(DATA, "train")
    parts = partition(labels, seed=0)
    sites: dict[str, Path] = {}
    for spec in SITES:
        sites[f"site-{spec.name}"] = root / "sites" / f"site-{spec.name}"
        write_site(sites[f"site-{spec.name}"], images, labels, parts[spec.name])
    return sites, keys_and_trust(sites, root / "coordinator" / "trust")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/synthlearn-fl-compare"))
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--gan-minutes", type=float, default=1.0)
    parser.add_argument("--cnn-minutes", type=float, default=1.0)
    parser.add_argument("--data", choices=("phantoms", "pneumoniamnist"), default="phantoms")
    parser.add_argument("--gan-kimg", type=float, default=None,
                        help="train exactly this many kimg per site (overrides the minutes)")
    parser.add_argument("--n-synthetic", type=int, default=200)
    args = parser.parse_args()

    from coordinator.demo import demo_node_config, demo_run_config, prepare_sites
    from coordinator.launch import submit_and_watch
    from coordinator.local_transport import LocalTransport
    from coordinator.phases import Run, settings_from_run_config
    from shared.flower_proc import loopback_federation

    if args.out.exists():
        shutil.rmtree(args.out)
    result: dict[str, Any] = {}
    for how in ("flower", "inprocess"):
        root = args.out / how
        if args.data == "pneumoniamnist":
            sites, trust = pneumoniamnist_sites(root)
        else:
            sites, trust = prepare_sites(root, sites=args.sites)
        work = root / "coordinator"
        cfg = demo_run_config(work, trust, sites=len(sites), gan_minutes=args.gan_minutes,
                              n_synthetic=args.n_synthetic, cnn_minutes=args.cnn_minutes)
        node_cap = args.gan_minutes
        if args.gan_kimg is not None:
            gan = json.loads(cfg["gan-config"])
            gan.update(kimg=args.gan_kimg, max_minutes=600.0)
            cfg["gan-config"] = json.dumps(gan)
            cfg["bundle-timeout-s"] = 7200.0
            node_cap = 300.0  # the site's cap (minutes × 2) must not cut the kimg budget
        node_cfg = demo_node_config(sites, node_cap)
        t0 = time.monotonic()
        if how == "flower":
            with loopback_federation(root / "flower", node_cfg) as fed:
                submit_and_watch(fed.connection, fed.cli_home, cfg, timeout=3600,
                                 echo=lambda *a, **k: None)
        else:
            Run(settings_from_run_config(cfg), LocalTransport(node_cfg),
                log=lambda m: None).execute()
        report = json.loads((work / "report" / "report.json").read_text())
        result[how] = {"seconds": round(time.monotonic() - t0, 1), "aucs": _aucs(report)}
    agree = {}
    for site, roles in result["flower"]["aucs"].items():
        other = result["inprocess"]["aucs"].get(site, {})
        agree[site] = {role: (None if not v or not other.get(role) else
                              bool(v[1] <= other[role][2] and other[role][1] <= v[2]))
                       for role, v in roles.items()}
    result["ci_overlap"] = agree
    (args.out / "compare.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
