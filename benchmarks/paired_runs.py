"""Two ``multisite.py`` runs compared arm by arm on the same test images: does a GAN lever help?

``multisite.py`` saves every arm's test scores (``scores.npz``). Two runs with the same
``--seed`` share the partition, so their test images are the same and the local-real CNNs
are the same (deterministic on one machine); when only the generators differ (a
``--gan-set`` lever), the pooled arms differ only through the synthetic images. DeLong's
paired test on the same images is then far more sensitive than comparing two bootstrap CIs
(on a 92-image site test the paired SE of a difference is about half a CI's half-width).

For each seed given (a pair of folders: baseline, variant) and each pooled arm both runs
have, every test (each site's own test split and the common val) gets AUC(variant) −
AUC(baseline) with DeLong's SE and p. The runs are refused if their labels differ (not the
same partition), and the local-real arms are checked to match (a different CNN recipe or
machine would make the comparison unfair; it is reported, not hidden).

Across seeds the table gives each difference per seed, the mean and how many are positive.
The seeds' tests overlap (the common val is the same images in every seed), so no pooled
p-value is given: a lever counts as a win when it is positive across seeds and significant
somewhere, never on one seed's point estimate.

``--vs-local``: the issue's per-site target (pooled synthetic ≥ the site's local real CNN)
judged over several generator runs instead of one. One run moves a 92-image site by ±0.04, so
one run's sign says little. Runs are grouped by partition seed (same test images); for each
seed, arm and test the table gives each run's pooled − local, their mean with DeLong's SE over
the test images (:func:`shared.metrics.paired.delong_contrast`, the runs held fixed), the SD
between runs, and a 95 % CI from both (SE² + SD²/R: test images and generator runs), with a
t quantile whose degrees of freedom come from the run term (Welch-Satterthwaite: R − 1 when
the runs' spread dominates, as it does on a small site; 12.7 × SE for two runs, not 1.96).
A seed with one run is refused: it says nothing about the spread between runs.

``--ceiling``: how much a site could gain at all. The centralised CNN, trained on every site's
*real* train images, is what pooled synthetic data imitates; its AUC on a site's own test
minus the local CNN's (DeLong paired, same images) is the headroom the per-site target
needs. Where even all the real data gains < 0.02 over the local CNN, the small site's
"+0.02" asks the synthetic set to beat real data. One run per seed suffices (both CNNs
depend on the partition only); several runs of a seed are checked to agree.

Run::

    python benchmarks/paired_runs.py --pair /tmp/ms-s0 /tmp/ms-ada0 --pair /tmp/ms-s1 \\
        /tmp/ms-ada1 --out /tmp/paired-ada.json
    python benchmarks/paired_runs.py --twins /tmp/ab-s1 /tmp/ab-s2   # runs with --adapt-bn
    python benchmarks/paired_runs.py --vs-local /tmp/ms-s1 /tmp/ms-rep1 /tmp/ms-rep1b
    python benchmarks/paired_runs.py --candidates /tmp/ei-dp-s5   # per candidate, --adapt-bn
    python benchmarks/paired_runs.py --ceiling /tmp/ms-s0 /tmp/ms-s1 /tmp/ms-s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.metrics.paired import delong_contrast, delong_paired, z_and_p

ARMS = ("pooled", "pooled-selected")
TWIN_SUFFIXES = ("-adabn", "-either")
"""The twin arms ``multisite.py --adapt-bn`` writes (its ``TWINS``)."""


def _scores(run: Path) -> dict[str, np.ndarray]:
    path = run / "scores.npz"
    if not path.is_file():
        raise SystemExit(f"{path}: no scores.npz (a multisite.py run that finished writes one)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def compare(base: Path, variant: Path, arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    """AUC(variant) − AUC(baseline) per pooled arm and test, DeLong-paired. Refused (SystemExit
    naming the run) when the runs' tests differ, or an arm is in one run only: a comparison
    that silently dropped a test or an arm would read as complete."""
    a, b = _scores(base), _scores(variant)
    tests = sorted(k.split("/", 1)[1] for k in a if k.startswith("labels/"))
    tests_b = sorted(k.split("/", 1)[1] for k in b if k.startswith("labels/"))
    if tests != tests_b:
        raise SystemExit(f"{variant}: tests {tests_b} differ from {base}'s {tests}")
    for t in tests:
        if not np.array_equal(a[f"labels/{t}"], b[f"labels/{t}"]):
            raise SystemExit(f"{variant}: test {t!r} differs from {base}'s (give runs with the "
                             "same --seed and --data)")
    local = [k for k in a if k.startswith("local-")]
    out: dict[str, Any] = {"baseline": str(base), "variant": str(variant),
                           "local_real_identical": bool(local) and all(
                               k in b and np.array_equal(a[k], b[k]) for k in local),
                           "arms": {}}
    for arm in arms:
        has = [all(f"{arm}/{t}" in run for t in tests) for run in (a, b)]
        if has[0] != has[1]:
            raise SystemExit(f"{variant if has[0] else base}: no {arm!r} scores, which "
                             f"{base if has[0] else variant} has (run both with the same arms)")
        if has[0]:
            out["arms"][arm] = {t: delong_paired(a[f"labels/{t}"], a[f"{arm}/{t}"],
                                                 b[f"{arm}/{t}"]).to_dict() for t in tests}
    if not out["arms"]:
        raise SystemExit(f"{base}, {variant}: neither pooled arm ({', '.join(arms)}) is in both")
    return out


def compare_twins(run: Path, suffixes: tuple[str, ...] = TWIN_SUFFIXES) -> dict[str, Any]:
    """Within one run: every arm that has a ``<arm><suffix>`` twin (``multisite.py
    --adapt-bn``: the same candidate CNNs, adapted or chosen among sent and adapted) against
    that twin, per test, DeLong paired; twin − arm, keyed by the twin's name. Refused when
    the run has no twin at all."""
    z = _scores(run)
    tests = sorted(k.split("/", 1)[1] for k in z if k.startswith("labels/"))
    arms = sorted({k.split("/", 1)[0] for k in z} - {"labels"})
    out: dict[str, Any] = {"run": str(run), "arms": {}}
    for arm in arms:
        for suffix in suffixes:
            if arm.endswith(suffixes) or arm + suffix not in arms:
                continue
            out["arms"][arm + suffix] = {
                t: delong_paired(z[f"labels/{t}"], z[f"{arm}/{t}"],
                                 z[f"{arm}{suffix}/{t}"]).to_dict() for t in tests}
    if not out["arms"]:
        raise SystemExit(f"{run}: no arm has a twin ({', '.join(suffixes)}; run "
                         "multisite.py with --adapt-bn)")
    return out


def candidate_table(run: Path) -> dict[str, Any]:
    """Every candidate's own test AUC, as sent and adapted, with what each BatchNorm mode
    picked (``multisite.py --adapt-bn`` saves both): does a twin's gain or loss come from
    how each candidate scores after adaptation, or from which candidates the choice took?
    Per selected arm and test: ``sent``/``site`` (AUC per candidate), ``picks`` (mode →
    picked indices, and under "either" whether each pick was the adapted copy)."""
    from sklearn.metrics import roc_auc_score

    path = run / "candidate-scores.npz"
    if not path.is_file():
        raise SystemExit(f"{path}: no per-candidate scores (run multisite.py with --adapt-bn)")
    z = _scores(run)
    with np.load(path) as c:
        cand = {k: c[k] for k in c.files}
    try:
        doc = json.loads((run / "results.json").read_text())
        selection = doc["selection"] if doc.get("selection_format") == 2 else None
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{run}/results.json: no selection record ({exc})") from None
    if selection is None:
        raise SystemExit(f"{run}/results.json: selection record of an older multisite.py "
                         "(no per-mode picks); re-run it with --reuse-gans --adapt-bn")
    out: dict[str, Any] = {"run": str(run), "arms": {}}
    for key in sorted(cand):
        arm, _, test, how, i = key.split("/")
        cell = out["arms"].setdefault(arm, {}).setdefault(test, {"sent": {}, "site": {}})
        cell[how][int(i)] = float(roc_auc_score(z[f"labels/{test}"], cand[key]))
    for arm, tests in out["arms"].items():
        for test, cell in tests.items():
            cell["sent"] = [cell["sent"][i] for i in sorted(cell["sent"])]
            cell["site"] = [cell["site"][i] for i in sorted(cell["site"])]
            cell["picks"] = selection.get(arm, {}).get(test, {})
    return out


def versus_local(runs: list[Path], arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    """Pooled − local real per site, over generator runs of one partition seed (module
    docstring). Refused when the runs' test labels differ (not one partition) or an arm is
    missing from a run. The common val has no local CNN: there the runs' pooled ÷
    centralised ratios are given instead."""
    from scipy.stats import t as student_t

    if len(runs) < 2:
        raise SystemExit(f"{', '.join(map(str, runs))}: one generator run of this seed says "
                         "nothing about the spread between runs; give ≥ 2 per seed")
    zs = [_scores(r) for r in runs]
    tests = sorted(k.split("/", 1)[1] for k in zs[0] if k.startswith("labels/"))
    for r, z in zip(runs[1:], zs[1:], strict=True):
        for t in tests:
            if f"labels/{t}" not in z or not np.array_equal(z[f"labels/{t}"],
                                                            zs[0][f"labels/{t}"]):
                raise SystemExit(f"{r}: test {t!r} differs from {runs[0]}'s (group runs of "
                                 "one --seed and --data)")
    sites = [t for t in tests if t.startswith("site-")]
    out: dict[str, Any] = {"runs": [str(r) for r in runs], "arms": {}}
    for arm in arms:
        missing = [str(r) for r, z in zip(runs, zs, strict=True)
                   if not all(f"{arm}/{t}" in z for t in tests)]
        if missing:
            if len(missing) == len(runs):
                continue
            raise SystemExit(f"{', '.join(missing)}: no {arm!r} scores, which the other runs "
                             "have (give runs with the same arms)")
        cells: dict[str, Any] = {}
        for t in sites:
            y, local = zs[0][f"labels/{t}"], f"local-{t.removeprefix('site-')}/{t}"
            vecs = [z[local] for z in zs] + [z[f"{arm}/{t}"] for z in zs]
            r_n = len(runs)
            per_run = [delong_paired(y, z[local], z[f"{arm}/{t}"]).delta for z in zs]
            _, mean, se_img = delong_contrast(y, vecs, [-1 / r_n] * r_n + [1 / r_n] * r_n)
            sd = float(np.std(per_run, ddof=1))
            run_var = sd ** 2 / r_n
            se = float(np.sqrt(se_img ** 2 + run_var))
            # Welch-Satterthwaite: the image term's df is large (hundreds of images), the
            # run term's is R − 1.
            df = (se ** 4 / (run_var ** 2 / (r_n - 1))) if run_var > 0 else float("inf")
            q = float(student_t.ppf(0.975, df)) if np.isfinite(df) else 1.959964
            p = (float(2 * student_t.sf(abs(mean) / se, df)) if se > 0 and np.isfinite(df)
                 else z_and_p(mean, se)[1])
            cells[t] = {"per_run": per_run, "mean": mean, "se_images": se_img,
                        "sd_runs": sd, "se": se, "df": df,
                        "ci": [mean - q * se, mean + q * se], "p_value": p, "n_runs": r_n}
        if "common-val" in tests and all("centralised/common-val" in z for z in zs):
            from sklearn.metrics import roc_auc_score

            y = zs[0]["labels/common-val"]
            ratios = [roc_auc_score(y, z[f"{arm}/common-val"])
                      / roc_auc_score(y, z["centralised/common-val"]) for z in zs]
            cells["common-val"] = {"ratio_per_run": ratios,
                                   "ratio_mean": float(np.mean(ratios))}
        out["arms"][arm] = cells
    if not out["arms"]:
        raise SystemExit(f"{runs[0]}: none of the arms {', '.join(arms)} is in the runs")
    return out


def ceiling(runs: list[Path]) -> dict[str, Any]:
    """Centralised real − local real per site and seed (module docstring), with the pooled
    arms' mean gap beside it for scale. Runs of one seed must carry the same local and
    centralised scores (else they are not the same partition and recipe)."""
    out: dict[str, Any] = {}
    for seed, group in _by_seed(runs).items():
        zs = [_scores(r) for r in group]
        sites = sorted(k.split("/", 1)[1] for k in zs[0]
                       if k.startswith("labels/site-"))
        cells: dict[str, Any] = {}
        for t in sites:
            local, central = f"local-{t.removeprefix('site-')}/{t}", f"centralised/{t}"
            for r, z in zip(group[1:], zs[1:], strict=True):
                for key in (f"labels/{t}", local, central):
                    if key not in z or not np.array_equal(z[key], zs[0][key]):
                        raise SystemExit(f"{r}: {key!r} differs from {group[0]}'s (another "
                                         "partition, machine or CNN recipe)")
            if local not in zs[0] or central not in zs[0]:
                raise SystemExit(f"{group[0]}: no {local!r} or {central!r} scores")
            y = zs[0][f"labels/{t}"]
            d = delong_paired(y, zs[0][local], zs[0][central])
            cell: dict[str, Any] = {"local": d.auc_a, "centralised": d.auc_b,
                                    "headroom": d.delta, "se": d.se, "p_value": d.p_value}
            for arm in ARMS:
                if all(f"{arm}/{t}" in z for z in zs):
                    cell[f"{arm}_minus_local"] = float(np.mean(
                        [delong_paired(y, z[local], z[f"{arm}/{t}"]).delta for z in zs]))
            cells[t] = cell
        out[str(seed)] = {"runs": [str(r) for r in group], "sites": cells}
    return out


def _seed(run: Path) -> int | None:
    try:
        seed = json.loads((run / "results.json").read_text())["partition"]["seed"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return int(seed)


def _by_seed(runs: list[Path]) -> dict[int | None, list[Path]]:
    """Runs grouped by partition seed (same test images), in the order given."""
    groups: dict[int | None, list[Path]] = {}
    for run in runs:
        groups.setdefault(_seed(run), []).append(run)
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--pair", nargs=2, action="append", type=Path,
                     metavar=("BASELINE", "VARIANT"), help="two multisite.py runs, same --seed")
    how.add_argument("--twins", nargs="+", type=Path, metavar="RUN",
                     help="within each run, every arm against its '-adabn' and '-either' "
                          "twins")
    how.add_argument("--candidates", type=Path, metavar="RUN",
                     help="each candidate's test AUC as sent and adapted, and each mode's "
                          "picks (a multisite.py --adapt-bn run)")
    how.add_argument("--vs-local", nargs="+", type=Path, metavar="RUN",
                     help="pooled − local real per site over generator runs, grouped by "
                          "partition seed")
    how.add_argument("--ceiling", nargs="+", type=Path, metavar="RUN",
                     help="centralised real − local real per site: the most pooling could "
                          "give (one run per seed suffices)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.ceiling:
        found = ceiling(args.ceiling)
        print("| seed | runs | test | local real | centralised real | headroom (SE, p) | "
              + " | ".join(f"{arm} − local (mean)" for arm in ARMS) + " |\n"
              "|---|---|---|---|---|---|" + "---|" * len(ARMS))
        for seed, res in found.items():
            for t, c in res["sites"].items():
                print(f"| {seed} | {len(res['runs'])} | {t} | {c['local']:.3f} | "
                      f"{c['centralised']:.3f} | {c['headroom']:+.3f} ({c['se']:.3f}, "
                      f"{c['p_value']:.3f}) | "
                      + " | ".join(f"{c[f'{arm}_minus_local']:+.3f}"
                                   if f"{arm}_minus_local" in c else "–" for arm in ARMS)
                      + " |")
        if args.out is not None:
            args.out.write_text(json.dumps({"ceiling": found}, indent=2) + "\n")
        return 0
    if args.candidates:
        table = candidate_table(args.candidates)
        for arm, tests in table["arms"].items():
            for test, cell in tests.items():
                print(f"{arm} {test}: candidate AUC sent / adapted")
                for i, (a_, b_) in enumerate(zip(cell["sent"], cell["site"], strict=True)):
                    print(f"  {i:2d}  {a_:.3f} / {b_:.3f}  {b_ - a_:+.3f}")
                for mode, rec in cell["picks"].items():
                    print(f"  picks ({mode}): {rec.get('picked')}"
                          + (f" adapted {rec['adapted']}" if "adapted" in rec else ""))
        if args.out is not None:
            args.out.write_text(json.dumps(table, indent=2) + "\n")
        return 0
    if args.vs_local:
        found = {seed: versus_local(runs) for seed, runs in _by_seed(args.vs_local).items()}
        print("| seed | runs | arm | test | pooled − local per run | mean (95 % CI) | p |\n"
              "|---|---|---|---|---|---|---|")
        for seed, res in found.items():
            for arm, cells in res["arms"].items():
                for t, c in cells.items():
                    if t == "common-val":
                        print(f"| {seed} | {len(res['runs'])} | {arm} | common-val ratio | "
                              + " / ".join(f"{x:.3f}" for x in c["ratio_per_run"])
                              + f" | {c['ratio_mean']:.3f} | |")
                        continue
                    print(f"| {seed} | {c['n_runs']} | {arm} | {t} | "
                          + " / ".join(f"{d:+.3f}" for d in c["per_run"])
                          + f" | {c['mean']:+.3f} ({c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}) "
                          f"| {c['p_value']:.3f} |")
        if args.out is not None:
            args.out.write_text(json.dumps({"vs_local": {str(k): v for k, v in found.items()}},
                                           indent=2) + "\n")
        return 0
    if args.twins:
        twins = [compare_twins(run) for run in args.twins]
        print("| run | twin | test | twin − arm (p) |\n|---|---|---|---|")
        for r in twins:
            for arm, cells in r["arms"].items():
                for t, c in cells.items():
                    print(f"| {r['run']} | {arm} | {t} | {c['delta']:+.3f} "
                          f"(p {c['p_value']:.3f}) |")
        if args.out is not None:
            args.out.write_text(json.dumps({"twins": twins}, indent=2) + "\n")
        return 0
    seeds = [_seed(base) for base, _ in args.pair]
    known = [x for x in seeds if x is not None]
    if len(known) != len(set(known)):  # one seed given twice would count as two
        raise SystemExit(f"--pair: each pair must be another partition seed, got {seeds}")
    runs = [compare(base, var) for base, var in args.pair]
    for r in runs:
        if not r["local_real_identical"]:
            print(f"warning: {r['variant']}: local-real scores missing or differ from the "
                  "baseline's (another machine or CNN recipe?)", file=sys.stderr)
    arms = [arm for arm in ARMS if all(arm in r["arms"] for r in runs)]
    summary: dict[str, Any] = {}
    print("| arm | test | " + " | ".join(f"seed pair {i}" for i in range(len(runs)))
          + " | mean Δ | positive |")
    print("|---|---|" + "---|" * len(runs) + "---|---|")
    for arm in arms:
        for t in runs[0]["arms"][arm]:
            cells = [r["arms"][arm][t] for r in runs]
            deltas = [c["delta"] for c in cells]
            summary.setdefault(arm, {})[t] = {"mean_delta": float(np.mean(deltas)),
                                              "positive": sum(d > 0 for d in deltas),
                                              "n": len(deltas)}
            print(f"| {arm} | {t} | " + " | ".join(
                f"{c['delta']:+.3f} (p {c['p_value']:.3f})" for c in cells)
                + f" | {np.mean(deltas):+.3f} | {sum(d > 0 for d in deltas)}/{len(deltas)} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
