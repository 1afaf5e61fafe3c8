"""Check every site-attested number in a coordinator report against the signatures it holds.

Why: a report is the coordinator's document, not the sites'. What makes its numbers
trustworthy is that each one was signed by the site that measured it: every per-site AUC, CI
and count sits next to the signed record it came from (``sites[i].<role>.signed``), and every
pooled bundle's facts (images, classes, DP ε, the site's cumulative ε from its privacy ledger,
audit verdict, metrics such as a reader study) next to the bundle's signed manifest
(``pool.accepted[i].signed_manifest``). An own-synthetic column taken from the site's
GAN-train score (``own.source`` = :data:`OWN_FROM_BUNDLE`, run config ``own-synthetic =
false``, as in the demo) is checked against the signed manifest of the pooled bundle its row
names.
``synthlearn audit verify report.json --trust KEYS`` runs :func:`check_report`: a number that
differs from its signed source, a record signed by another site's key, or a number without a
signed source fails, named by its JSON path.

Not site-signed, and so not checked here: what the coordinator computed itself (the pooled
set's size after de-duplication and balancing, the downstream CNN's training summary, phase
times). The utility ratio is recomputed from the two signed AUCs it divides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROLES = ("baseline", "own", "pooled")
BUNDLE_FIELDS = {"site": "site", "bundle_id": "bundle_id", "images": "image_count",
                 "counts": "counts", "dp": "dp", "audit": "audit",
                 "accepted_risk": "accepted_risk", "privacy_ledger": "privacy_ledger",
                 "metrics": "metrics", "key_fingerprint": "key_fingerprint"}
"""Report field of a pooled bundle → the manifest field it must equal."""
UNSIGNED_ROLE_KEYS = frozenset({"verified", "key_fingerprint", "signed"})
ROLE_KINDS = {"baseline": "local_real_baseline", "own": "evaluation", "pooled": "evaluation"}
"""The kind of signed record each report column must hold."""
SHOWN_IF_SIGNED = {"baseline": ("recipe", "optimizer_steps")}
"""Fields a report must show when the site signed them: who chose the local baseline's recipe
and how long it trained. A report leaving them out would hide a yardstick the coordinator
chose, or one stopped after a few steps, behind numbers that all verify."""
OWN_FROM_BUNDLE = "site GAN-train score (signed in its bundle)"
"""``own.source`` of a row whose own-synthetic numbers are the site's GAN-train score (run
config ``own-synthetic = false``): they are backed by the bundle's signed manifest, not by a
record of their own."""
OWN_FROM_BUNDLE_KEYS = ("auc", "ci_low", "ci_high", "n_test")


def resize_view(value: object) -> dict[str, int] | None:
    """A site's record of resizing its test images for the CNN (node/evaluate.py), reduced to
    the two sides: it comes from a peer, so nothing else of it reaches the report."""
    if not isinstance(value, dict):
        return None
    sides = [value.get("from"), value.get("to")]
    if all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in sides):
        return {"from": int(sides[0]), "to": int(sides[1])}  # type: ignore[arg-type]
    return None


def selection_view(value: object) -> dict[str, Any] | None:
    """How a site chose among candidate CNNs (node/selection.py), reduced to its numbers:
    candidates, distinct picks, whether its train split chose them and on how many images
    (from a peer, like the resize)."""
    if not isinstance(value, dict):
        return None
    k, picked = value.get("candidates"), value.get("picked")
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 64
            and isinstance(picked, list) and picked
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < k
                    for i in picked)):
        return None
    n = value.get("n_images")  # a count: "chosen on -8 train images" is no count
    n_images = n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 24 else None
    view: dict[str, Any] = {"candidates": k, "distinct": len(set(picked)),
                            "on_train": value.get("split") == "train", "n_images": n_images}
    rounds = value.get("picked_rounds")  # a two-round run: distinct picks per round
    if (isinstance(rounds, list) and len(rounds) == len(picked)
            and all(r in (1, 2) and not isinstance(r, bool) for r in rounds)):
        distinct = dict(zip(picked, rounds, strict=True))
        view["from_round"] = {str(r): sum(1 for v in distinct.values() if v == r)
                              for r in (1, 2)}
    return view


DERIVED_VIEWS = {"resize": resize_view, "selection": selection_view}
"""Report keys that hold a reduced view of a signed field: the report shows the view, and
:func:`check_report` recomputes it from the signed record before comparing."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return bool(a == b)


def _binding_problems(payload: dict[str, Any], role: str, run: Any,
                      pooled_sha: Any) -> list[str]:
    """Why a genuine signed record does not belong in this report's ``role`` column: another
    kind or role (the site's own-synthetic or real-data AUC shown as the pooled CNN's),
    another run (an old reply), or other weights than the report's pooled CNN."""
    kind = ROLE_KINDS[role]
    if payload.get("kind") != kind:
        return [f"the signed record is a {str(payload.get('kind'))[:40]!r} record, not "
                f"{kind!r}"]
    out = []
    if kind == "evaluation" and payload.get("role") != role:
        out.append(f"the signed record evaluates the {str(payload.get('role'))[:40]!r} "
                   f"weights, not the {role!r} ones")
    if payload.get("run_tag") != run:
        out.append(f"the signed record is for run {str(payload.get('run_tag'))[:64]!r}, the "
                   f"report is run {str(run)[:64]!r}")
    if role == "pooled" and isinstance(pooled_sha, str) \
            and payload.get("weights_sha256") != pooled_sha:
        out.append(f"the signed record evaluates weights "
                   f"{str(payload.get('weights_sha256'))[:64]}, the report's pooled CNN is "
                   f"{pooled_sha[:64]}")
    return out


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a peer's field may be anything)."""
    return value if isinstance(value, dict) else {}


def _own_from_bundle(row: dict[str, Any], rec: dict[str, Any], path: str,
                     manifests: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """An own-synthetic column taken from the site's GAN-train score: every number must equal
    the score in the signed manifest of the bundle the row names, and that bundle must be a
    verified pooled bundle of the row's site."""
    bundle = _obj(row.get("bundle"))
    manifest = manifests.get(str(bundle.get("bundle_id")))
    if manifest is None or manifest.get("site") != row.get("site"):
        return [(path, "says it is the site's GAN-train score, but no verified pooled bundle "
                       "of this site in the report carries it")]
    signed = _obj(_obj(_obj(manifest.get("metrics")).get("synthetic-quality")).get("gan_train"))
    out = []
    for key, value in rec.items():
        if key == "source":
            continue
        if key not in OWN_FROM_BUNDLE_KEYS or not _same(value, signed.get(key)):
            out.append((f"{path}.{key}", f"the report says {value!r:.120}, the bundle's signed "
                                         f"GAN-train score says {signed.get(key)!r:.120}"))
    if "auc" not in rec:
        out.append((f"{path}.auc", "missing"))
    return out


def _site_numbers(row: dict[str, Any], where: str, trust: Path, run: Any = None,
                  pooled_sha: Any = None,
                  manifests: dict[str, dict[str, Any]] | None = None
                  ) -> list[tuple[str, str]]:
    from shared.signing import SigningError, check_signer, verify_record

    out: list[tuple[str, str]] = []
    site = row.get("site")
    signed_auc: dict[str, Any] = {}
    for role in ROLES:
        rec = row.get(role)
        if rec is None:
            continue
        path = f"{where}.{role}"
        if role == "own" and isinstance(rec, dict) and rec.get("source") == OWN_FROM_BUNDLE \
                and "signed" not in rec:
            out += _own_from_bundle(row, rec, path, manifests or {})
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("signed"), dict):
            out.append((path, "numbers without the signed record they came from"))
            continue
        try:
            payload = verify_record(rec["signed"], trust)
            check_signer(payload.get("site"), str(rec["signed"].get("key_fingerprint")), trust,
                         f"{path} record")
        except SigningError as exc:
            out.append((path, f"{getattr(exc, 'reason', 'signing')}: {exc}"))
            continue
        if payload.get("site") != site:
            out.append((path, f"signed for site {payload.get('site')!r}, the report row is "
                              f"{site!r}"))
        unbound = _binding_problems(payload, role, run, pooled_sha)
        if unbound:
            out += [(path, problem) for problem in unbound]
            continue
        for key, value in rec.items():
            if key in UNSIGNED_ROLE_KEYS:
                continue
            if key in DERIVED_VIEWS:
                signed = DERIVED_VIEWS[key](payload.get(key))
                if value != signed:
                    out.append((f"{path}.{key}", f"the report says {value!r:.200}, the signed "
                                                 f"record gives {signed!r:.200}"))
                continue
            if key not in payload or not _same(value, payload[key]):
                out.append((f"{path}.{key}", f"the report says {value!r}, the signed record "
                                             f"says {payload.get(key)!r}"))
        for key in SHOWN_IF_SIGNED.get(role, ()):
            if key in payload and key not in rec:
                out.append((f"{path}.{key}", f"the signed record says {payload[key]!r:.200}; "
                                             "the report leaves it out"))
        if rec.get("key_fingerprint") not in (None, rec["signed"].get("key_fingerprint")):
            out.append((f"{path}.key_fingerprint", "differs from the signing key"))
        signed_auc[role] = payload.get("auc")
    ratio = row.get("utility_ratio")
    a, b = signed_auc.get("pooled"), signed_auc.get("baseline")
    expected = (round(float(a) / float(b), 4)
                if isinstance(a, int | float) and isinstance(b, int | float) and b else None)
    if not _same(ratio, expected) and not (ratio is None and expected is None):
        out.append((f"{where}.utility_ratio", f"the report says {ratio!r}; the signed AUCs "
                                              f"give {expected!r}"))
    return out


def _bundle_numbers(acc: dict[str, Any], where: str, trust: Path
                    ) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
    """Problems with a pooled bundle's row, and its verified manifest (None if it failed)."""
    from shared.bundle import verify_signed_manifest
    from shared.signing import SigningError

    try:
        manifest = verify_signed_manifest(acc.get("signed_manifest"), trust)
    except (SigningError, ValueError) as exc:
        return [(f"{where}.signed_manifest",
                 f"{getattr(exc, 'reason', 'invalid')}: {exc}")], None
    out = []
    for field, mfield in BUNDLE_FIELDS.items():
        if field in acc and not _same(acc[field], manifest.get(mfield)):
            out.append((f"{where}.{field}", f"the report says {acc[field]!r:.120}, the signed "
                                            f"manifest says {manifest.get(mfield)!r:.120}"))
    return out, manifest


def is_report(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == "synthlearn-report"


def check_report(doc: dict[str, Any], trust: Path) -> list[tuple[str, str]]:
    """(JSON path, what is wrong) for every site-attested number that its signature does not
    back; empty when every one checks out."""
    out: list[tuple[str, str]] = []
    manifests: dict[str, dict[str, Any]] = {}  # bundle id → its verified signed manifest
    for key in ("pool", "pool_round1"):  # a two-round run's first pool trained CNNs too
        pool: dict[str, Any] = doc[key] if isinstance(doc.get(key), dict) else {}
        for i, acc in enumerate(pool.get("accepted") or []):
            if isinstance(acc, dict):
                problems, manifest = _bundle_numbers(acc, f"$.{key}.accepted[{i}]", trust)
                out += problems
                if manifest is not None and not problems:
                    manifests.setdefault(str(manifest.get("bundle_id")), manifest)
    cnn = _obj(doc.get("cnn"))
    rows = []
    for i, row in enumerate(doc.get("sites") or []):
        if isinstance(row, dict):
            rows += _site_numbers(row, f"$.sites[{i}]", trust, doc.get("run"),
                                  cnn.get("weights_sha256"), manifests)
        else:
            rows.append((f"$.sites[{i}]", "not a site row"))
    return rows + out
