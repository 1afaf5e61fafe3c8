"""The run report: one self-contained HTML page people open, plus the same facts as JSON.

Per site, side by side (DESIGN §4): the **local real** baseline (the site's CNN on its own real
images), **own synthetic** (same recipe on the site's own synthetic images) and **pooled
synthetic** (the coordinator's CNN), each as AUC with its bootstrap 95 % CI, measured on that
site's real test split and signed by the site's key. The **utility ratio** is pooled / local
real (and pooled / centralised real when a benchmark supplies that upper bound). Sites that
dropped out or were excluded are listed with the reason, never silently omitted.

What people would rather look at than read: the **gain by joining** in words and as a chart
(pooled − local real on the same real test images, DeLong's paired test computed and signed
at the site), a **grid of each site's synthetic images per class** (from its verified
bundle) and each site's **synthetic-quality scores** (GAN-train, GAN-test, distribution
scores: numbers the site computed on its real images and signed into its bundle).

The page needs no network (inline CSS and SVG, no scripts), so it opens the same inside a
hospital network as on the coordinator.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any

from shared.files import atomic_write_bytes
from shared.report_verify import DERIVED_VIEWS, OWN_FROM_BUNDLE

RECORD_KEYS = ("auc", "ci_low", "ci_high", "n_test", "n_pos", "n_neg", "n_boot", "verified",
               "key_fingerprint", "weights_sha256", "sensitivity", "specificity", "classes",
               "class_names", "class_ids", "per_class_auc", "absent_classes", "paired_vs_local",
               "recipe", "optimizer_steps", "signed")
"""What the report keeps of a verified evaluation record."""

ROLES = (("baseline", "Local real"), ("own", "Own synthetic"), ("pooled", "Pooled synthetic"))
COLOURS = {"baseline": "#4c72b0", "own": "#dd8452", "pooled": "#55a868"}


def is_number(x: Any) -> bool:
    """A real, finite number (not a bool, not a string): every site-supplied number is
    checked with this before it is formatted or plotted."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any, digits: int = 3) -> str:
    """A number for the page; anything else a site may have signed (a string, NaN) is "–"."""
    v = _finite(x)
    return "–" if v is None else f"{v:.{digits}f}"


def _finite(x: Any) -> float | None:
    import math

    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _text(x: Any) -> str:
    """Any value a site may have chosen, as escaped HTML text."""
    return html.escape(str(x))


def utility_ratio(pooled: dict[str, Any] | None, reference: dict[str, Any] | None) -> float | None:
    """pooled AUC / reference AUC, or None when either is missing."""
    if not pooled or not reference:
        return None
    a, b = pooled.get("auc"), reference.get("auc")
    if not is_number(a) or not is_number(b) or not b:
        return None
    return round(float(a) / float(b), 4)  # type: ignore[arg-type]


def build_report(*, run: str, sites: dict[str, dict[str, Any]], pool: dict[str, Any] | None,
                 cnn: dict[str, Any] | None, phases: dict[str, float] | None = None,
                 mode: str = "", transport: str = "flower",
                 centralised: dict[str, Any] | None = None,
                 samples: dict[str, dict[str, str]] | None = None,
                 pool_round1: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report document. ``sites`` maps a site name to ``{"status", "reason", "baseline",
    "own", "pooled", "problems", "bundle"}`` (verified records or None); ``samples`` maps a
    site to its class → PNG data URI sample grids (:func:`sample_grids`), shown in the HTML
    only. ``pool_round1``: a two-round run's first pool when its CNNs are among the
    candidates (its bundles' signed facts are shown and audited like the final pool's)."""
    from shared import __version__

    rows = []
    for name in sorted(sites):
        s = sites[name]
        row = {
            "site": name,
            "status": s.get("status", "ok"),
            "reason": s.get("reason", ""),
            "bundle": s.get("bundle"),
            "problems": list(s.get("problems", [])),
        }
        for role, _ in ROLES:
            rec = s.get(role)
            row[role] = None if not rec else {k: rec.get(k) for k in RECORD_KEYS if k in rec}
            if row[role] is not None and rec:
                for key, view in DERIVED_VIEWS.items():  # reduced: they come from a peer
                    row[role][key] = view(rec.get(key))
        row["utility_ratio"] = utility_ratio(row["pooled"], row["baseline"])
        row["gain"] = gain_by_joining(row["pooled"])
        row["quality"] = quality_scores(row["bundle"])
        if row["own"] is None and (row["quality"] or {}).get("gan_train"):
            # Without a coordinator-side own-synthetic CNN (run config own-synthetic = false,
            # as in the demo), the site's signed GAN-train score is the same measurement: a
            # CNN trained on the site's own synthetic images, AUC on its real test split.
            gt = row["quality"]["gan_train"]
            nums = {k: _finite(gt.get(k)) for k in ("auc", "ci_low", "ci_high", "n_test")} \
                if isinstance(gt, dict) else {}
            if nums.get("auc") is not None:
                row["own"] = {**{k: v for k, v in nums.items() if v is not None},
                              "source": OWN_FROM_BUNDLE}
        if centralised:
            row["utility_ratio_centralised"] = utility_ratio(row["pooled"], centralised)
        rows.append(row)
    return {
        "format": "synthlearn-report",
        "run": run,
        "mode": mode,
        "transport": transport,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software_version": __version__,
        "sites": rows,
        "pool": pool,
        "pool_round1": pool_round1,
        "cnn": cnn,
        "centralised": centralised,
        "phases_seconds": phases or {},
        "samples": samples or {},
    }


def gain_by_joining(pooled: dict[str, Any] | None) -> dict[str, Any] | None:
    """The site's paired comparison pooled − local real (signed inside the pooled record)."""
    paired = (pooled or {}).get("paired_vs_local")
    if not isinstance(paired, dict) or _finite(paired.get("delta")) is None:
        return None
    # Signed by the site, still the site's word: only finite numbers reach the page.
    out: dict[str, Any] = {k: _finite(paired.get(k)) for k in (
        "delta", "p_value", "auc_a", "auc_b", "ci_low", "ci_high", "se")}
    out["test"] = str(paired.get("test", "paired test"))[:80]
    return out


def gain_sentence(site: str, gain: dict[str, Any], n_test: Any = None) -> str:
    """"site-c: +0.09 AUC by joining (0.82 → 0.91), p = 0.004 (DeLong …)"."""
    d, p = float(gain["delta"]), gain.get("p_value")
    verb = "by joining"
    p_txt = "" if p is None else (f", p = {float(p):.3f}" if float(p) >= 0.001 else ", p < 0.001")
    n_txt = f" on {n_test} real test images" if n_test else ""
    return (f"{site}: {d:+.2f} AUC {verb} ({_num(gain.get('auc_a'), 2)} → "
            f"{_num(gain.get('auc_b'), 2)}){p_txt} ({gain.get('test', 'paired test')}{n_txt}, "
            "computed at the site)")


def quality_scores(bundle: dict[str, Any] | None) -> dict[str, Any] | None:
    """The synthetic-quality numbers a site signed into its bundle, if it sent any."""
    metrics = (bundle or {}).get("metrics") or {}
    q = metrics.get("synthetic-quality") if isinstance(metrics, dict) else None
    return q if isinstance(q, dict) else None


def sample_grids(images: Any, labels: Any, class_names: list[str], per_class: int = 8,
                 scale: int = 3) -> dict[str, str]:
    """class name → PNG data URI of up to ``per_class`` synthetic images side by side."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    x, y = np.asarray(images), np.asarray(labels)
    out: dict[str, str] = {}
    for c, name in enumerate(class_names):
        picked = x[y == c][:per_class]
        if len(picked) == 0:
            continue
        strip = np.concatenate([np.pad(im, 1, constant_values=255) for im in picked], axis=1)
        img = Image.fromarray(strip.astype(np.uint8))
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out[name] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    facts = {k: v for k, v in report.items() if k != "samples"}  # pictures: HTML only
    atomic_write_bytes(json_path, (json.dumps(facts, indent=2, sort_keys=True, default=str)
                                   + "\n").encode())
    atomic_write_bytes(html_path, render_html(report).encode("utf-8"))
    return html_path, json_path


# -- HTML -------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.3rem}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{padding:.45rem .6rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f7f9;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}
.warn{color:#9a6700;font-weight:600}.pill{display:inline-block;border-radius:1rem;
padding:.05rem .55rem;font-size:.8rem;background:#eef}.legend span{margin-right:1.2rem}
.sw{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;
vertical-align:middle}.note{background:#f6f7f9;border-left:4px solid #4c72b0;
padding:.6rem .9rem;font-size:.9rem}code{font-size:.85rem;word-break:break-all}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{flex:1;min-width:180px;border:1px solid #e3e3e3;
border-radius:8px;padding:.8rem 1rem}.card b{font-size:1.5rem;display:block}
table.grid{width:auto}table.grid img{image-rendering:pixelated;display:block}
"""


def _auc_cell(rec: dict[str, Any] | None) -> str:
    if not rec or not is_number(rec.get("auc")):
        return '<td class="n">–</td>'
    mark = ' <span title="signature verified">✔</span>' if rec.get("verified") else ""
    return (f'<td class="n">{_num(rec["auc"])}{mark}<br><small>[{_num(rec.get("ci_low"))}, '
            f'{_num(rec.get("ci_high"))}]</small>{_selection_note(rec)}{_recipe_note(rec)}</td>')


RECIPE_OWNERS = {"site": "the site's own recipe", "request": "the coordinator's recipe"}
"""How the report names who chose a local baseline's recipe (the record's signed ``recipe``)."""


def _recipe_note(rec: dict[str, Any]) -> str:
    """Whose recipe trained a local baseline and for how many optimizer steps, as its site
    signed them: a yardstick the coordinator chose, or one stopped after a few steps, makes
    a gain by joining look larger than it is. Records from before either field say nothing."""
    owner = rec.get("recipe")
    parts = [RECIPE_OWNERS[owner]] if isinstance(owner, str) and owner in RECIPE_OWNERS else []
    steps = _finite(rec.get("optimizer_steps"))
    if steps is not None and steps == int(steps) and 0 < steps < 1e9:
        parts.append(f"{int(steps)} steps")
    return f"<br><small>{', '.join(parts)}</small>" if parts else ""


def _selection_note(rec: dict[str, Any]) -> str:
    """How the site narrowed the coordinator's candidate CNNs, as it signed it (reduced by
    :func:`shared.report_verify.selection_view`): "2 of 9 candidates, chosen on 520 train
    images"."""
    sel = rec.get("selection")
    if not isinstance(sel, dict) or sel.get("candidates", 1) <= 1:
        return ""
    where = (f"on {_num(sel.get('n_images'), 0)} train images" if sel.get("on_train")
             else "by the coordinator's default")
    rounds = sel.get("from_round")
    if isinstance(rounds, dict):
        where += (f" ({_num(rounds.get('1'), 0)} from round 1, {_num(rounds.get('2'), 0)} "
                  "from round 2)")
    return (f"<br><small>{sel['distinct']} of {sel['candidates']} candidates, chosen "
            f"{html.escape(where)}</small>")


def _forest_svg(rows: list[dict[str, Any]]) -> str:
    """AUC with CI per site and role, on a shared 0.4–1.0 axis (inline SVG, no scripts)."""
    shown = [r for r in rows if any(r.get(role) for role, _ in ROLES)]
    if not shown:
        return ""
    left, width, row_h, lo, hi = 130, 560, 18, 0.4, 1.0
    height = 30 + len(shown) * (row_h * 3 + 14)

    def x(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * width

    parts = [f'<svg role="img" aria-label="AUC with 95% CI per site" width="{left + width + 20}"'
             f' height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="12">']
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="15" y2="{height - 5}" '
                     f'stroke="#eee"/><text x="{x(t):.1f}" y="11" text-anchor="middle" '
                     f'fill="#666">{t:.1f}</text>')
    y = 30
    for r in shown:
        parts.append(f'<text x="0" y="{y + row_h + 4}" font-weight="600">'
                     f'{html.escape(r["site"])}</text>')
        for i, (role, _) in enumerate(ROLES):
            rec = r.get(role)
            cy = y + i * row_h + 9
            if rec and is_number(rec.get("auc")):
                c = COLOURS[role]
                if is_number(rec.get("ci_low")) and is_number(rec.get("ci_high")):
                    parts.append(f'<line x1="{x(float(rec["ci_low"])):.1f}" '
                                 f'x2="{x(float(rec["ci_high"])):.1f}" y1="{cy}" y2="{cy}" '
                                 f'stroke="{c}" stroke-width="2"/>')
                parts.append(f'<circle cx="{x(float(rec["auc"])):.1f}" cy="{cy}" r="4.5" '
                             f'fill="{c}"/>')
        y += row_h * 3 + 14
    parts.append("</svg>")
    return "".join(parts)


def _gain_svg(rows: list[dict[str, Any]]) -> str:
    """Per-site gain (pooled − local real AUC) with its paired 95 % CI, around a zero line."""
    shown = [r for r in rows if r.get("gain")]
    if not shown:
        return ""
    left, width, row_h = 130, 560, 26
    lo = min(-0.1, *(r["gain"]["ci_low"] if r["gain"].get("ci_low") is not None
                     else r["gain"]["delta"] for r in shown))
    hi = max(0.1, *(r["gain"]["ci_high"] if r["gain"].get("ci_high") is not None
                    else r["gain"]["delta"] for r in shown))
    lo, hi = max(lo, -1.0), min(hi, 1.0)
    height = 34 + len(shown) * row_h

    def x(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * width

    parts = [f'<svg role="img" aria-label="gain in AUC by joining, per site" '
             f'width="{left + width + 140}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg" font-size="12">',
             f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="14" y2="{height - 4}" stroke="#999"/>',
             f'<text x="{x(0):.1f}" y="11" text-anchor="middle" fill="#666">0 (no gain)</text>']
    for i, r in enumerate(shown):
        g = r["gain"]
        d = float(g["delta"])
        cy = 30 + i * row_h
        sig = g.get("p_value") is not None and g["p_value"] < 0.05
        colour = "#1a7f37" if d > 0 and sig else ("#b42318" if d < 0 and sig else "#9a9a9a")
        x0, x1 = sorted((x(0), x(d)))
        parts.append(f'<text x="0" y="{cy + 4}" font-weight="600">{html.escape(r["site"])}'
                     '</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{cy - 7}" width="{max(x1 - x0, 1):.1f}" '
                     f'height="14" fill="{colour}" opacity="0.8"/>')
        if g.get("ci_low") is not None and g.get("ci_high") is not None:
            parts.append(f'<line x1="{x(float(g["ci_low"])):.1f}" '
                         f'x2="{x(float(g["ci_high"])):.1f}" y1="{cy}" y2="{cy}" '
                         'stroke="#222" stroke-width="1.5"/>')
        p = g.get("p_value")
        label = f"{d:+.3f}" + ("" if p is None else "  p<0.001" if float(p) < 0.001
                                else f"  p={float(p):.3g}")
        parts.append(f'<text x="{left + width + 6}" y="{cy + 4}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _gain_section(rows: list[dict[str, Any]]) -> list[str]:
    esc = html.escape
    out = ["<h2>Gain by joining (paired, at each site)</h2>"]
    with_gain = [r for r in rows if r.get("gain")]
    if not with_gain:
        out.append("<p>No site sent a paired comparison (a site needs its local real CNN "
                   "to compute one).</p>")
        return out
    out.append("<ul>")
    for r in with_gain:
        n = (r.get("pooled") or {}).get("n_test")
        out.append(f"<li>{esc(gain_sentence(r['site'], r['gain'], n))}</li>")
    out.append("</ul><p class='sub'>Bar: pooled synthetic AUC minus the site's local real "
               "AUC on the same real test images; line: the paired 95 % CI; green / red: "
               "p &lt; 0.05.</p>")
    out.append(_gain_svg(rows))
    return out


def _quality_section(rows: list[dict[str, Any]]) -> list[str]:
    esc = html.escape
    out = ["<h2>Synthetic quality, measured at each site</h2>",
           "<p class='sub'>GAN-train: a CNN trained on the site's synthetic images, AUC on its "
           "real test split. GAN-test: the site's local real CNN, AUC on its synthetic "
           "images. FD / precision / recall: real train vs synthetic images in the named "
           "encoder's space. Signed into the site's bundle.</p>",
           "<table><tr><th>Site</th><th>GAN-train AUC</th><th>GAN-test AUC</th><th>FD</th>"
           "<th>Precision</th><th>Recall</th><th>Encoder</th></tr>"]
    for r in rows:
        q = r.get("quality")
        if not q:
            out.append(f"<tr><td>{esc(r['site'])}</td><td colspan='6'>no scores in its bundle"
                       "</td></tr>")
            continue
        dist = q.get("distribution") or {}
        out.append(f"<tr><td>{esc(r['site'])}</td>{_auc_cell(q.get('gan_train'))}"
                   f"{_auc_cell(q.get('gan_test'))}<td class='n'>{_num(dist.get('fd'), 2)}</td>"
                   f"<td class='n'>{_num(dist.get('precision'), 2)}</td>"
                   f"<td class='n'>{_num(dist.get('recall'), 2)}</td>"
                   f"<td>{esc(str(dist.get('encoder', '–')))}</td></tr>")
    out.append("</table>")
    return out


def _samples_section(samples: dict[str, dict[str, str]]) -> list[str]:
    esc = html.escape
    if not samples:
        return []
    out = ["<h2>Synthetic images per site and class (from the verified bundles)</h2>",
           "<table class='grid'>"]
    for site in sorted(samples):
        for i, (cls, uri) in enumerate(samples[site].items()):
            if not uri.startswith("data:image/png;base64,"):
                continue  # only inline PNGs: the page loads nothing from anywhere
            head = f"<td rowspan='{len(samples[site])}'><b>{esc(site)}</b></td>" if i == 0 \
                else ""
            out.append(f"<tr>{head}<td>{esc(cls)}</td><td><img alt='{esc(site)} {esc(cls)} "
                       f"synthetic samples' src='{uri}'></td></tr>")
    out.append("</table>")
    return out


def _per_class_section(rows: list[dict[str, Any]]) -> list[str]:
    """Lesion mode: each class's one-vs-rest AUC per site and model. A class a site has no
    test image of reads "absent" there (the site said so in its signed record), never 0."""
    esc = html.escape
    names: list[str] = []
    for r in rows:
        for role, _ in ROLES:
            per = (r.get(role) or {}).get("per_class_auc")
            for name in per if isinstance(per, dict) else ():
                if isinstance(name, str) and name not in names:
                    names.append(name)
    if not names:
        return []
    out = ["<h2>Per-class AUC (one vs rest, real test split)</h2><p>“absent”: the site has "
           "no test image of that class, so it has no AUC for it (the macro AUC averages the "
           "classes it has).</p><table><tr><th>Site</th><th>Model</th>"
           + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"]
    for r in rows:
        for role, label in ROLES:
            rec = r.get(role) or {}
            per = rec.get("per_class_auc")
            if not per or not isinstance(per, dict):
                continue
            absent = rec.get("absent_classes")
            absent = set(a for a in absent if isinstance(a, str)) \
                if isinstance(absent, list) else set()
            out.append(f"<tr><td>{esc(r['site'])}</td><td>{esc(label)}</td>" + "".join(
                "<td class='n'>absent</td>" if n in absent
                else f"<td class='n'>{_num(per.get(n))}</td>" for n in names) + "</tr>")
    out.append("</table>")
    return out


def _lesion_mode(rows: list[dict[str, Any]]) -> bool:
    return any((r.get(role) or {}).get("classes") == "lesion" for r in rows for role, _ in ROLES)


def _status(row: dict[str, Any]) -> str:
    st = row["status"]
    cls = "ok" if st == "ok" else ("warn" if st == "dropped" else "bad")
    return f'<span class="{cls}">{html.escape(st)}</span>'


def _bundle_table(acc: list[Any], two_rounds: bool = False) -> list[str]:
    """One row per pooled bundle: what its site signed (counts, audit gates, ε, ledger, key);
    the Round column in a two-round run."""
    if not acc:
        return []
    esc = html.escape
    out = ["<table><tr><th>Site</th>" + ("<th>Round</th>" if two_rounds else "")
           + "<th>Bundle id</th><th>Images</th><th>Per class</th>"
           "<th>Audit gates</th><th>DP ε</th><th>Site's Σε<br><small>privacy "
           "ledger</small></th><th>Key</th></tr>"]
    for a in acc:
        audit: dict[str, Any] = a["audit"] if isinstance(a.get("audit"), dict) else {}
        gates = audit.get("gates_passed")
        gate_txt = ("passed" if gates else "overridden" if a.get("accepted_risk")
                    else "failed" if gates is False else "–")
        gates_doc: dict[str, Any] = (audit["gates"] if isinstance(audit.get("gates"), dict)
                                     else {})
        notes = [f"{k}: {g['note']}" for k, g in gates_doc.items()
                 if isinstance(g, dict) and g.get("note")]
        if notes:  # passed, but only because the sample could not show significance
            gate_txt += "<br><small>" + esc("; ".join(notes)) + "</small>"
        dp = a.get("dp") or {}
        eps = dp.get("epsilon_spent", dp.get("epsilon")) if isinstance(dp, dict) else None
        a_counts: dict[str, Any] = a["counts"] if isinstance(a.get("counts"), dict) else {}
        counts = ", ".join(f"{_text(k)}: {_text(v)}" for k, v in a_counts.items())
        ledger = a.get("privacy_ledger") if isinstance(a.get("privacy_ledger"), dict) else {}
        round_cell = f"<td>{esc(str(a.get('round', '1')))}</td>" if two_rounds else ""
        out.append(f"<tr><td>{esc(str(a.get('site')))}</td>{round_cell}<td><code>"
                   f"{esc(str(a.get('bundle_id'))[:13])}…</code></td><td class='n'>"
                   f"{_num(a.get('images'), 0)}</td><td>{counts}</td><td>{gate_txt}</td>"
                   f"<td class='n'>{_num(eps, 2) if is_number(eps) else 'not private'}"
                   f"</td><td class='n'>{_num(ledger.get('cumulative_epsilon'), 2)}</td>"
                   f"<td><code>{esc(str(a.get('key_fingerprint'))[:19])}…</code>"
                   "</td></tr>")
    out.append("</table>")
    return out


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    rows: list[dict[str, Any]] = report["sites"]
    ok = [r for r in rows if r["status"] == "ok"]
    pooled = [r["pooled"]["auc"] for r in ok if r.get("pooled")
              and is_number(r["pooled"].get("auc"))]
    ratios = [r["utility_ratio"] for r in ok if is_number(r.get("utility_ratio"))]
    pool = report.get("pool") or {}
    cnn = report.get("cnn") or {}
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width,initial-scale=1'>",
           f"<title>synthlearn report — {esc(str(report['run']))}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>synthlearn federation report</h1><p class='sub'>run <code>"
           f"{esc(str(report['run']))}</code> · "
           + (f"{esc(str(report['mode']))} mode · " if report.get("mode") else "")
           + f"over {esc(str(report.get('transport')))} · "
           f"{esc(str(report['created_at']))} · "
           f"synthlearn {esc(str(report['software_version']))}</p>",
           "<div class='cards'>",
           f"<div class='card'>Sites evaluated<b>{len(ok)} / {len(rows)}</b></div>",
           f"<div class='card'>Pooled synthetic images<b>{_text(pool.get('images', '–'))}</b>"
           "</div>",
           "<div class='card'>Mean pooled AUC<b>"
           f"{_num(sum(pooled) / len(pooled)) if pooled else '–'}</b></div>",
           "<div class='card'>Mean utility ratio<b>"
           f"{_num(sum(ratios) / len(ratios), 2) if ratios else '–'}</b></div></div>",
           "<p class='note'>Every AUC below was computed <b>at the site</b>, on its own real "
           "test split, and signed with the site's key (✔ = signature verified here against "
           "the trust folder). The pooled CNN was trained by the coordinator on synthetic "
           "images only; no real image left any site. Where the coordinator sent several "
           "candidate networks (CNN seeds × epochs), each site chose its ensemble among them "
           "on its own real <i>train</i> split, the split its local real CNN trained on; the "
           "test split scored it once.</p>",
           f"<h2>{'Macro AUC (one vs rest)' if _lesion_mode(rows) else 'AUC'} per site "
           "(95 % bootstrap CI)</h2><table><tr><th>Site</th><th>Status</th>"
           "<th>Local real</th><th>Own synthetic</th><th>Pooled synthetic</th>"
           "<th>Utility ratio<br><small>pooled / local</small></th><th>Test images</th></tr>"]
    for r in rows:
        ref = r.get("pooled") or r.get("baseline") or {}
        util = r.get("utility_ratio")
        out.append(f"<tr><td><b>{_text(r['site'])}</b></td><td>{_status(r)}</td>"
                   f"{_auc_cell(r.get('baseline'))}{_auc_cell(r.get('own'))}"
                   f"{_auc_cell(r.get('pooled'))}<td class='n'>"
                   f"{_num(util, 2) if util is not None else '–'}</td>"
                   f"<td class='n'>{_num(ref.get('n_test'), 0)}</td></tr>")
    out.append("</table>")
    legend = "".join(f"<span><i class='sw' style='background:{COLOURS[k]}'></i>{esc(v)}</span>"
                     for k, v in ROLES)
    out.extend(_per_class_section(rows))
    out.extend(_gain_section(rows))
    out.extend(_samples_section(report.get("samples") or {}))
    out.append(f"<h2>AUC per site, as a chart</h2><p class='legend'>{legend}</p>"
               f"{_forest_svg(rows)}")
    out.extend(_quality_section(rows))
    gone = [r for r in rows if r["status"] != "ok" or r.get("problems")]
    out.append("<h2>Dropped, excluded and refused sites</h2>")
    if gone:
        out.append("<table><tr><th>Site</th><th>Status</th><th>Reason</th></tr>")
        for r in gone:
            reason = r.get("reason") or ""
            if r.get("problems"):
                reason = (reason + "; " if reason else "") + "; ".join(r["problems"])
            out.append(f"<tr><td>{_text(r['site'])}</td><td>{_status(r)}</td>"
                       f"<td>{_text(reason)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None: every site sent a verified bundle and signed evaluations.</p>")
    out.append("<h2>Pooled synthetic set</h2>")
    acc = pool.get("accepted") or []
    two_rounds = isinstance(pool.get("round2"), dict)
    if two_rounds:
        sent = pool["round2"].get("pretrain_images")
        sent = sent if isinstance(sent, dict) else {}
        out.append("<p>Two rounds: after pooling round 1, each site received the other "
                   "sites' synthetic images (" + ", ".join(
                       f"{esc(str(k))}: {_num(v, 0)}" for k, v in sent.items())
                   + "), pretrained a new GAN on them and fine-tuned it on its own real "
                   "images. The pool below holds each site's round-2 bundle, or its round-1 "
                   "bundle where round 2 failed (column Round). A site's \"own synthetic\" "
                   "score is then that of the bundle pooled here: in round 2 its GAN also "
                   "learnt from the other sites' images.</p>")
    out.extend(_bundle_table(acc, two_rounds))
    pool_counts: dict[str, Any] = pool["counts"] if isinstance(pool.get("counts"), dict) else {}
    counts = ", ".join(f"{_text(k)}: {_text(v)}" for k, v in pool_counts.items())
    out.append(f"<p>Pooled: {_text(pool.get('images', 0))} images ({counts}); "
               f"{_text(pool.get('duplicates_dropped', 0))} duplicate images and "
               f"{_text(pool.get('balanced_dropped', 0))} for class balance dropped.</p>")
    out.append(_reader_studies_html(acc))
    if cnn:
        out.append(f"<h2>Downstream CNN</h2><p>Trained on <b>{cnn.get('n_images')} synthetic "
                   f"images</b> only ({cnn.get('epochs_run')} epochs, stopped by "
                   f"{esc(str(cnn.get('stopped')))}, {cnn.get('seconds')} s on "
                   f"{esc(str(cnn.get('device')))}); weights SHA-256 <code>"
                   f"{esc(str(cnn.get('weights_sha256')))}</code>.</p>")
        rounds = cnn.get("rounds")
        if isinstance(rounds, list) and rounds:
            out.append("<p>Candidates from both rounds: " + "; ".join(
                f"round {_text(r.get('round'))}: {_num(r.get('n_images'), 0)} images from "
                f"{_num(len(r.get('bundle_ids') or []), 0)} bundle(s)"
                for r in rounds if isinstance(r, dict))
                + ". The coordinator trained its CNNs on each round's pool; each site chose "
                "among all of them on its own train split (the AUC cells say how many of "
                "its picks came from each round), so it keeps round 2 only where it helped "
                "there.</p>")
            first = report.get("pool_round1")
            first_acc = (first.get("accepted") if isinstance(first, dict) else None) or []
            if isinstance(first_acc, list) and first_acc:
                out.append("<p>Round 1's bundles, whose CNNs are among the candidates:</p>")
                out.extend(_bundle_table([a for a in first_acc if isinstance(a, dict)]))
    phases = report.get("phases_seconds") or {}
    if phases:
        out.append("<h2>Run phases</h2><table><tr><th>Phase</th><th>Seconds</th></tr>")
        out.extend(f"<tr><td>{esc(p)}</td><td class='n'>{s}</td></tr>"
                   for p, s in phases.items())
        out.append("</table>")
    out.append("<p class='sub'>Machine-readable copy: <code>report.json</code> (same folder)."
               "</p></body></html>")
    return "\n".join(out)


def _share(p: Any) -> str:
    """A signed proportion as "0.53 [0.45, 0.61] (k/n)"; '–' for anything that is not one
    (a bundle is a hostile sender's message: never trust its types)."""
    if not isinstance(p, dict):
        return "–"
    vals = [p.get(k) for k in ("value", "ci_low", "ci_high")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
               for v in vals):
        return "–"
    k, n = p.get("k"), p.get("n")
    counts = f" ({k}/{n})" if isinstance(k, int) and isinstance(n, int) else ""
    return f"{vals[0]:.2f} [{vals[1]:.2f}, {vals[2]:.2f}]{counts}"


def _reader_studies_html(accepted: list[dict[str, Any]]) -> str:
    """The sites' blind real-vs-synthetic reader studies (``node reader-study``), if any
    bundle carries one: numbers only, signed with the bundle."""
    esc = html.escape
    rows = []
    for a in accepted:
        metrics = a.get("metrics")
        rs = metrics.get("reader_study") if isinstance(metrics, dict) else None
        if not isinstance(rs, dict):
            continue
        pooled = rs["pooled"] if isinstance(rs.get("pooled"), dict) else {}
        images = rs["images"] if isinstance(rs.get("images"), dict) else {}
        match = rs.get("matches_bundle_set")
        same = ("yes" if match is True else
                "<span class='warn'>no: another set</span>" if match is False else "–")
        rows.append(
            f"<tr><td>{esc(str(a.get('site')))}</td>"
            f"<td class='n'>{esc(str(rs.get('readers_finished', '–')))}</td>"
            f"<td class='n'>{esc(str(images.get('real', '–')))} / "
            f"{esc(str(images.get('synthetic', '–')))}</td>"
            f"<td class='n'>{esc(_share(pooled.get('accuracy')))}</td>"
            f"<td class='n'>{esc(_share(pooled.get('synthetic_called_real')))}</td>"
            f"<td class='n'>{esc(_share(pooled.get('class_agreement_synthetic')))}</td>"
            f"<td>{esc(str(rs.get('verdict', '')))}</td><td>{same}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Reader studies (blind, real vs synthetic)</h2><p>Clinicians at the site were "
            "shown the site's real test images and synthetic images, shuffled, and asked which "
            "is which. Accuracy near 0.5 means they could not tell them apart. Pooled over "
            "the site's finished readers, with 95 % CIs; signed with the bundle.</p>"
            "<table><tr><th>Site</th><th>Readers</th><th>Images real / synthetic</th>"
            "<th>Accuracy</th><th>Synthetic called real</th><th>Class agreement "
            "(synthetic)</th><th>Verdict</th><th>Study on the pooled set</th></tr>"
            + "".join(rows) + "</table>")
