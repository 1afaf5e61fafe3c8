"""Preprocessing throughput and memory on large 12-bit radiographs.

Measures, on 2500×2048 12-bit phantom DICOMs (uncompressed and JPEG 2000 lossless):

* files/s of ``node.ingest.preprocess`` (1 and 2 workers, 256² store) against a raw
  ``pydicom.dcmread(f).pixel_array`` loop over the same files (the decode floor);
* peak RSS of a preprocessing run over N1 vs N2 files (target: flat, i.e. independent of N).

Sources: ``--distinct`` different phantom images are rendered and encoded once; the N files of
a run are hard links to them under distinct names (so the disk holds only the distinct
ones and every file is served from the page cache for both the raw loop and preprocess).

    python benchmarks/preprocess_bench.py --out /tmp/slbench
    python benchmarks/preprocess_bench.py --out /tmp/slbench --speed-files 40 --j2k-files 12 \
        --rss-files 200 2000

Prints a Markdown table and writes ``OUT/results.json``. Peak RSS is sampled from /proc every
20 ms: the sum over the preprocessing process and its pool workers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROWS, COLS = 2500, 2048


def make_sources(out: Path, distinct: int, kind: str) -> list[Path]:
    """``distinct`` 2500×2048 12-bit phantoms, encoded as ``kind`` (raw | j2k); cached."""
    from node.phantoms import LESION_CLASSES, VARIANTS, dataset_bytes, render, to_dataset

    src = out / f"sources-{kind}"
    src.mkdir(parents=True, exist_ok=True)
    base = next(v for v in VARIANTS if v.name == "dx12-mono2-explicit-window")
    variant = dataclasses.replace(base, syntax="explicit" if kind == "raw" else "j2k")
    paths = []
    for i in range(distinct):
        p = src / f"src-{i}.dcm"
        if not p.exists():
            rng = np.random.default_rng([11, i])
            img = render(rng, LESION_CLASSES[i % len(LESION_CLASSES)], COLS)
            full = np.full((ROWS, COLS), 0.02, np.float32)
            top = (ROWS - COLS) // 2
            full[top : top + COLS] = img
            tags = {"PatientID": f"BENCH{i}", "StudyID": f"S{i}", "PatientName": "BENCH^X"}
            p.write_bytes(dataset_bytes(to_dataset(full, variant, tags, f"bench:{i}")))
        paths.append(p)
    return paths


def make_folder(out: Path, sources: list[Path], n: int, name: str) -> tuple[Path, Path]:
    """A DICOM folder of ``n`` hard links (distinct names) cycling over ``sources``."""
    root = out / name
    d = root / "dicom"
    if d.exists() and len(list(d.iterdir())) == n:
        return d, root / "labels.csv"
    shutil.rmtree(root, ignore_errors=True)
    d.mkdir(parents=True)
    rows = ["image_id,lesion_type"]
    for i in range(n):
        target = d / f"img-{i:05d}.dcm"
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:
            shutil.copy(sources[i % len(sources)], target)
        rows.append(f"img-{i:05d},{'No finding' if i % 2 == 0 else 'Surgical implant'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return d, root / "labels.csv"


def raw_rate(folder: Path) -> float:
    import pydicom

    files = sorted(folder.iterdir())
    for f in files[:2]:  # warm imports and the page cache
        pydicom.dcmread(f).pixel_array  # noqa: B018
    t = time.perf_counter()
    for f in files:
        pydicom.dcmread(f).pixel_array  # noqa: B018
    return len(files) / (time.perf_counter() - t)


def preprocess_rate(folder: Path, labels: Path, site: Path, workers: int, size: int) -> float:
    from node.ingest import preprocess

    shutil.rmtree(site, ignore_errors=True)
    t = time.perf_counter()
    report = preprocess(folder, labels, site, size=size, workers=workers, progress=False)
    seconds = time.perf_counter() - t
    assert report["accepted"] == report["processed"], report["skip_reasons"]
    return report["processed"] / seconds


def _rss_kb(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[str]:
    kids: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += (task / "children").read_text().split()
    return kids


def rss_child(folder: str, labels: str, site: str, workers: int, size: int) -> None:
    """Run in a fresh interpreter: preprocess while a thread samples the RSS of this process
    plus its pool workers every 20 ms; print the peak of the sum.

    (``ru_maxrss`` is not used: Linux carries the pre-exec high-water mark of the forking
    parent into it, which would report the benchmark driver's memory, not ours.)
    """
    import threading

    from node.ingest import preprocess

    shutil.rmtree(site, ignore_errors=True)
    me = os.getpid()
    peak = {"total": 0, "main": 0, "worker": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            main_kb = _rss_kb(me)
            worker_kb = [_rss_kb(c) for c in _children(me)]
            peak["total"] = max(peak["total"], main_kb + sum(worker_kb))
            peak["main"] = max(peak["main"], main_kb)
            peak["worker"] = max([peak["worker"], *worker_kb])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    report = preprocess(Path(folder), Path(labels), Path(site), size=size, workers=workers,
                        progress=False)
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    print(json.dumps({
        "files": report["processed"],
        "seconds": round(seconds, 2),
        "total_rss_mb": round(peak["total"] / 1024, 1),
        "main_rss_mb": round(peak["main"] / 1024, 1),
        "worker_rss_mb": round(peak["worker"] / 1024, 1),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/synthlearn-preprocess-bench"))
    ap.add_argument("--distinct", type=int, default=4)
    ap.add_argument("--speed-files", type=int, default=40)
    ap.add_argument("--j2k-files", type=int, default=12)
    ap.add_argument("--rss-files", type=int, nargs=2, default=[200, 2000])
    ap.add_argument("--rss-workers", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-child", nargs=5, metavar=("DIR", "LABELS", "SITE", "W", "SIZE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        d, lab, site, w, size = args.rss_child
        rss_child(d, lab, site, int(w), int(size))
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{len(os.sched_getaffinity(0))} cores available, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "image": f"{ROWS}x{COLS} 12-bit (BitsAllocated 16), store size {args.size}",
        "speed": [], "rss": [],
    }
    for kind, n in (("raw", args.speed_files), ("j2k", args.j2k_files)):
        t = time.perf_counter()
        sources = make_sources(out, args.distinct, kind)
        folder, labels = make_folder(out, sources, n, f"speed-{kind}-{n}")
        print(f"[{kind}] sources ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        raw = raw_rate(folder)
        row: dict[str, Any] = {"syntax": "uncompressed" if kind == "raw" else "JPEG 2000 lossless",
                               "files": n, "raw_decode_files_per_s": round(raw, 2)}
        for w in args.workers:
            rate = preprocess_rate(folder, labels, out / f"site-{kind}-{w}", w, args.size)
            row[f"preprocess_w{w}_files_per_s"] = round(rate, 2)
            row[f"ratio_w{w}_per_worker"] = round(rate / w / raw, 3)
            print(f"[{kind}] raw {raw:.2f} files/s, preprocess x{w} {rate:.2f} files/s",
                  file=sys.stderr)
        results["speed"].append(row)
    if not args.skip_rss:
        sources = make_sources(out, args.distinct, "raw")
        for n in args.rss_files:
            folder, labels = make_folder(out, sources, n, f"rss-{n}")
            cmd = [sys.executable, __file__, "--rss-child", str(folder), str(labels),
                   str(out / f"site-rss-{n}"), str(args.rss_workers), str(args.size)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1])
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["workers"] = args.rss_workers
            results["rss"].append(row)
            print(f"[rss] {row}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"machine: {results['machine']}; {results['date']}; {results['image']}")
    print("\n| syntax | files | raw dcmread+pixel_array files/s | "
          + " | ".join(f"preprocess {w}w files/s | ratio/worker" for w in args.workers) + " |")
    print("|---|---|---|" + "---|---|" * len(args.workers))
    for r in results["speed"]:
        cells = " | ".join(f"{r[f'preprocess_w{w}_files_per_s']} | {r[f'ratio_w{w}_per_worker']}"
                           for w in args.workers)
        print(f"| {r['syntax']} | {r['files']} | {r['raw_decode_files_per_s']} | {cells} |")
    if results["rss"]:
        print("\n| files | workers | seconds | peak RSS main+workers MB | main MB | "
              "largest worker MB |")
        print("|---|---|---|---|---|---|")
        for r in results["rss"]:
            print(f"| {r['files']} | {r['workers']} | {r['seconds']} | {r['total_rss_mb']:.0f} "
                  f"| {r['main_rss_mb']:.0f} | {r['worker_rss_mb']:.0f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
