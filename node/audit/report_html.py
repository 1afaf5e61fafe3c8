"""The local audit report: closest synthetic/real pairs side by side, histograms, verdicts.

This file shows *real training images*. It is written to ``SITE/audit/report.html`` for the
site's own reviewers, its first line says it must stay on site, and nothing in ``node export``
reads it. Everything is inline (PNG data URIs), so the file opens offline in any browser and
does not fetch anything.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from node.audit.memorization import AuditResult, View

FIRST_LINE = ("<!-- LOCAL ONLY: this report contains real patient images of this site. It must "
              "stay on site: never export, e-mail or upload it. -->")


def _png_uri(image: npt.NDArray[np.uint8]) -> str:
    from shared.bundle import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(view: View) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    unit = "correlation (higher = closer)" if view.metric == "correlation" else \
        "distance (lower = closer)"
    syn, held = view.value(view.syn_closeness), view.value(view.held_closeness)
    bins = np.histogram_bin_edges(np.r_[syn, held], bins=40)
    ax = axes[0]
    ax.hist(held, bins=bins, alpha=0.6, density=True, label="held-out real → train")
    ax.hist(syn, bins=bins, alpha=0.6, density=True, label="synthetic → train")
    ax.axvline(float(view.value(np.array([view.tau]))[0]), color="red", ls="--",
               label="copy threshold τ")
    ax.set_xlabel(f"nearest-train {unit}")
    ax.set_title(f"{view.space}: nearest training image")
    ax.legend(fontsize=8)
    ax = axes[1]
    mem, non = view.value(view.member_closeness), view.value(view.nonmember_closeness)
    bins = np.histogram_bin_edges(np.r_[mem, non], bins=40)
    ax.hist(non, bins=bins, alpha=0.6, density=True, label="held-out (non-members) → synthetic")
    ax.hist(mem, bins=bins, alpha=0.6, density=True, label="train (members) → synthetic")
    ax.set_xlabel(f"nearest-synthetic {unit}")
    ax.set_title(f"{view.space}: membership-inference score")
    ax.legend(fontsize=8)
    return _figure_uri(fig)


def _pairs(result: AuditResult, view: View, k: int) -> str:
    order = np.argsort(-view.syn_closeness)[:k]
    names = result.class_names
    cells = []
    for i in order:
        j = int(view.syn_nn[i])
        value = float(view.value(np.array([view.syn_closeness[i]]))[0])
        lab = int(result.synthetic_labels[i])
        cls = names[lab] if 0 <= lab < len(names) else str(lab)
        flag = '<b class="bad">COPY</b>' if view.is_copy[i] else "ok"
        cells.append(
            f'<div class="pair"><img src="{_png_uri(result.synthetic[i])}" title="synthetic">'
            f'<img src="{_png_uri(result.train[j])}" title="nearest real training image">'
            f"<div>{html.escape(view.metric)} {value:.4f} · {flag}<br>"
            f"synthetic #{int(i)} ({html.escape(cls)})</div></div>")
    return "\n".join(cells)


def _flagged(result: AuditResult, limit: int = 200) -> str:
    """Every flagged synthetic image (up to ``limit``, closest first) beside the training image
    it copies, as stored and with the transform found applied, and the transform in words."""
    from node.audit.matcher import apply

    m, view = result.matches, result.views[0]
    if m is None or result.near is None or result.per_image_p is None:
        return ""
    flagged = np.flatnonzero(view.is_copy | result.near)
    if len(flagged) == 0:
        return "<p class=\"ok\">No synthetic image is flagged.</p>"
    order = flagged[np.argsort(-m.similarity[flagged])][:limit]
    redone = apply(result.train[m.index[order]], m.flip[order], m.zoom[order], m.shift[order])
    cells = []
    for k, i in enumerate(order):
        kind = "NEAR-EXACT COPY" if result.near[i] else "copy (closer than τ)"
        cells.append(
            f'<div class="pair three"><img src="{_png_uri(result.synthetic[i])}" title="synthetic">'
            f'<img src="{_png_uri(result.train[m.index[i]])}" title="training image">'
            f'<img src="{_png_uri(redone[k])}" title="training image, transform applied">'
            f'<div><b class="bad">{kind}</b> · r = {m.similarity[i]:.4f} · per-image p = '
            f"{result.per_image_p[i]:.3g}<br>synthetic #{int(i)} ← training #{int(m.index[i])}"
            f"<br>transform: {html.escape(m.describe(int(i)))}</div></div>")
    more = (f"<p>… and {len(flagged) - limit} more.</p>" if len(flagged) > limit else "")
    return "\n".join(cells) + more


def render_report(result: AuditResult, title: str = "Memorization audit") -> str:
    s = result.summary
    rows = []
    for name, g in s["gates"].items():
        verdict = '<b class="ok">PASS</b>' if g["passed"] else '<b class="bad">FAIL</b>'
        if g.get("note"):
            verdict += f" ({html.escape(str(g['note']))})"
        value = "n/a" if g["value"] is None else f"{g['value']:.4f}"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{value}</td><td>≤ {g['max']}</td>"
                    f"<td>{verdict}</td></tr>")
    overall = ('<p class="ok big">All gates passed.</p>' if s["gates_passed"] else
               '<p class="bad big">At least one gate FAILED: export is refused unless an '
               "accepted-risk reason is recorded.</p>")
    sections = []
    for v in result.views:
        pv = s["views"][v.space]
        sections.append(f"""
<h2>{html.escape(v.space)} ({html.escape(v.metric)})</h2>
<p>τ = {pv['tau']:.4f} · copy rate {pv['copy_rate']:.4f} ({pv['copies']} of
{s['n_synthetic']}; {pv['copy_rate_if_novel']:.4f} expected of a novel generator, p =
{pv['copy_p_value']:.3g}) · training images with a copy {pv['train_with_copy']:.4f} ·
MIA AUC {pv['mia']['auc']:.3f} (95% CI {pv['mia']['ci_low']:.3f}–{pv['mia']['ci_high']:.3f}) ·
member-only control AUC {pv['mia_control']['auc']:.3f} · split-bias baseline AUC
{_auc_text(pv.get('split_bias_baseline'))}</p>
<img class="hist" src="{_histogram(v)}">
<h3>Closest synthetic / real training pairs (left synthetic, right real)</h3>
<div class="pairs">{_pairs(result, v, int(s['config']['pairs_in_report']))}</div>""")
    flagged_html = _flagged(result)
    shift = s.get("heldout_shift") or {}
    shift_line = ""
    if shift.get("shifted"):
        shift_line = (
            '<p class="bad big">The held-out set is shifted: a blind attack that never looks at '
            "the synthetic images separates training from held-out images by themselves (raw-pixel "
            f"baseline AUC {_auc_text(shift.get('raw_pixel_baseline'))}; intensity statistics "
            f"AUC {_auc_text(shift.get('intensity_statistics'))}). The copy and "
            "membership comparisons use histogram-equalised images and the blind baseline, so an "
            "exposure or window difference does not fail an honest generator; a different anatomy "
            "mix or scanner resolution still widens τ.</p>")
    dp = s.get("dp")
    dp_line = (f"DP-SGD: ε spent {dp['epsilon_spent']:.3f} at δ {dp['delta']}" if dp else
               "Training was not differentially private (no ε bound).")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""{FIRST_LINE}
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1200px; }}
.banner {{ background: #fee; border: 2px solid #c00; padding: .6em; font-weight: bold; }}
.ok {{ color: #070; }} .bad {{ color: #c00; }} .big {{ font-size: 1.2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
.pairs {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.pair {{ border: 1px solid #ddd; padding: 4px; font-size: 12px; width: 210px; }}
.pair img {{ width: 100px; height: 100px; image-rendering: pixelated; }}
.pair.three {{ width: 320px; }}
img.hist {{ max-width: 100%; }}
</style></head><body>
<div class="banner">LOCAL ONLY — real patient images below. This report must stay on site.
Only <code>summary.json</code> (numbers only) may be exported, inside a signed bundle.</div>
<h1>{html.escape(title)}</h1>
<p>{when} · {s['n_synthetic']} synthetic images (of {s['n_synthetic_total']}) against
{s['n_train']} training and {s['n_heldout']} held-out real images · encoder
{html.escape(str(s['encoder']))} · {html.escape(dp_line)}</p>
{overall}
{shift_line}
<table><tr><th>gate</th><th>value</th><th>limit</th><th>verdict</th></tr>
{''.join(rows)}</table>
<p>A <em>copy</em> is a synthetic image closer to its nearest training image than
{s['copy_percentile']:g}% of held-out real images are (threshold τ calibrated on real data
only); an honest generator whose samples are as novel as new patients has an expected copy
rate of {s['expected_copy_rate_if_novel']:.2f}. Membership-inference AUC should be ≈0.5; the
member-only control shows the AUC's noise at this sample size, and the split-bias baseline (a
blind attack that never looks at the synthetic images) shows how far training and held-out
images differ by themselves: an MIA AUC at or below it is not evidence of leakage. The
significance tests of the copy-rate, data-copying and MIA gates form one family (Holm, level
{s['family_significance']:g}): a generator as novel as new patients fails any of them in at
most {100 * s['family_significance']:g}% of audits. A near-exact copy fails on its own.</p>
<h2>Flagged synthetic images</h2>
<p>Left: synthetic. Middle: the training image it matches. Right: that training image with the
transform found applied (flip, crop-and-rescale, shift; intensity edits are not redone). The
per-image p is the share of held-out patients at least as close to the training set.</p>
<div class="pairs">{flagged_html}</div>
{''.join(sections)}
</body></html>
"""


def _auc_text(r: dict[str, float] | None) -> str:
    if not r:
        return "n/a"
    return f"{r['auc']:.3f} (95% CI {r['ci_low']:.3f}–{r['ci_high']:.3f})"
