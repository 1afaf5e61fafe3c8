"""Flower's own cost per round, measured apart from any ML work.

Starts a loopback SuperLink + N SuperNodes (tiny keyed sites), then submits the synthlearn
app with ``stop-after = "ping"`` several times: each run is one round of small messages, so
its round time is pure transport + polling + ClientApp start-up. Prints JSON with the start-up
time of the federation, each run's submit-to-finished time and each round's seconds.

    python benchmarks/federation_overhead.py --sites 3 --runs 3 --out /tmp/fl-overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/synthlearn-fl-overhead"))
    args = parser.parse_args()

    import shutil

    from coordinator.demo import keys_and_trust
    from coordinator.launch import submit_and_watch
    from node.phantoms import phantom_store
    from shared.flower_proc import loopback_federation

    if args.out.exists():
        shutil.rmtree(args.out)
    site_dirs = {}
    for i in range(args.sites):
        name = f"site-{chr(97 + i)}"
        site_dirs[name] = phantom_store(args.out / "sites" / name, n=8, size=16, seed=i)
    # Pings are signed: each site's key must be in the trust folder under its pseudonym.
    trust = keys_and_trust(site_dirs, args.out / "trust")
    sites = {name: {"site-dir": str(site)} for name, site in site_dirs.items()}
    t0 = time.monotonic()
    results: dict[str, object] = {"sites": args.sites}
    with loopback_federation(args.out / "flower", sites) as fed:
        results["federation_start_s"] = round(time.monotonic() - t0, 2)
        runs = []
        for r in range(args.runs):
            work = args.out / f"run-{r}"
            t1 = time.monotonic()
            submit_and_watch(fed.connection, fed.cli_home,
                             {"work-dir": str(work), "trust-dir": str(trust),
                              "expected-sites": args.sites, "stop-after": "ping",
                              "run-name": f"ping-{r}"},
                             timeout=600, echo=lambda *a, **k: None, poll=1.0)
            total = time.monotonic() - t1
            rounds = [json.loads(x) for x in (work / "rounds.jsonl").read_text().splitlines()]
            runs.append({"run_s": round(total, 2), "round_s": rounds[0]["seconds"]})
        t2 = time.monotonic()
    results["federation_stop_s"] = round(time.monotonic() - t2, 2)
    results["runs"] = runs
    results["round_s_median"] = statistics.median(r["round_s"] for r in runs)
    results["run_s_median"] = statistics.median(r["run_s"] for r in runs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
