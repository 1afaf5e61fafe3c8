"""`synthlearn audit verify FILE --trust KEYS_DIR`: an auditor's offline check.

(Exit codes are raised as ``SystemExit``, not ``typer.Exit``: the root CLI runs click with
``standalone_mode=False``, where click *returns* a ``typer.Exit`` code instead of exiting.)

FILE is a bundle (``*.slbundle``) or a JSON file holding signed records (a metric record, an
evaluation reply, a report with signed records inside). Exit status: 0 everything verified and
every gate passed; 1 verification failed (the message names the check: bad-signature,
unknown-key, hash-mismatch, …) or a gate failed with no override; 3 authentic, but the
site's audit failed and the site signed an accepted-risk reason (the reason is printed).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import typer

EXIT_FAILED = 1
EXIT_ACCEPTED_RISK = 3


def _fail(what: str, message: str, as_json: bool,
          extra: dict[str, Any] | None = None) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({"ok": False, "failed": what, "message": message, **(extra or {})},
                              indent=2, sort_keys=True))
    else:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]VERDICT: FAILED[/] — {escape(what)}: "
                                   f"{escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(EXIT_FAILED)


def print_gates(summary: dict[str, Any]) -> None:
    """One table of gate values and verdicts (shared with `audit verify`)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Memorization audit gates")
    for col in ("gate", "value", "limit", "verdict"):
        table.add_column(col)
    for name, g in (summary.get("gates") or {}).items():
        if not isinstance(g, dict):
            continue
        value = g.get("value")
        shown = "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(
            value)
        verdict = "[green]PASS[/]" if g.get("passed") else "[bold red]FAIL[/]"
        if g.get("note"):
            verdict += f" ({escape(str(g['note']))})"
        limit = g.get("max")
        # A derived limit (data_copying: level / cells) printed 0.0019047619047619048.
        limit_shown = f"{limit:.4g}" if isinstance(limit, float) else str(limit)
        table.add_row(escape(str(name)), escape(shown), escape(f"≤ {limit_shown}"), verdict)
    Console().print(table)


def _verify_bundle(path: Path, trust: Path, seen: set[str], as_json: bool) -> None:
    from rich.console import Console
    from rich.markup import escape as e

    from shared.bundle import BundleError, verify_bundle

    try:
        vb = verify_bundle(path, trust, seen, require_gates=False)
    except BundleError as exc:
        _fail(exc.reason, str(exc), as_json)
    m = vb.manifest
    audit = m.get("audit") if isinstance(m.get("audit"), dict) else None
    gates = (audit or {}).get("gates") or {}
    failed = [k for k, g in gates.items() if not g.get("passed")]
    risk = m.get("accepted_risk")
    if as_json:
        verdict = {"ok": not failed and audit is not None, "kind": "bundle",
                   "bundle_id": vb.bundle_id, "site": vb.site, "key": vb.key_name,
                   "key_fingerprint": vb.key_fingerprint, "format_version": m["format_version"],
                   "images": m["image_count"], "counts": m["counts"], "failed_gates": failed,
                   "accepted_risk": risk, "dp": m.get("dp"), "audit": audit}
        typer.echo(json.dumps(verdict, indent=2, sort_keys=True))
    else:
        con = Console(soft_wrap=True)
        # Every value below was chosen by the site: escaped, so no rich markup of theirs runs.
        con.print(f"[green]signature[/]  OK — key {e(vb.key_name)} ({vb.key_fingerprint})")
        con.print(f"[green]format[/]     OK — {e(str(m['format']))} v{m['format_version']}, "
                  f"made by synthlearn {e(str(m.get('software_version')))} at "
                  f"{e(str(m.get('created_at')))}")
        con.print(f"[green]members[/]    OK — {len(m['members'])} SHA-256 hashes match; "
                  f"{m['image_count']} images {e(str(m['counts']))}")
        con.print(f"site {e(vb.site)} · bundle {e(vb.bundle_id)} · config digest "
                  f"{e(str(m.get('config_digest'))[:16])}…")
        dp = m.get("dp")
        con.print(e(f"DP: ε {dp.get('epsilon_spent')} at δ {dp.get('delta')}") if
                  isinstance(dp, dict) else
                  "DP: none — training was not differentially private (no ε bound)")
        ledger = m.get("privacy_ledger")
        con.print(e(f"privacy ledger: cumulative ε {ledger.get('cumulative_epsilon')} "
                    f"(δ {ledger.get('cumulative_delta')}) over {ledger.get('dp_runs')} DP "
                    f"run(s), basic composition; lifetime budget "
                    f"{ledger.get('lifetime_epsilon') or 'not set'}")
                  if isinstance(ledger, dict) else
                  "privacy ledger: not in this bundle (made before ledgers were signed in)")
        if audit is not None:
            print_gates(audit)
    if audit is None:
        _fail("no-audit", "the bundle carries no memorization-audit summary", as_json)
    if failed and not risk:
        _fail("gates", f"audit gate(s) failed: {', '.join(failed)}", as_json)
    if failed:
        if not as_json:
            Console(stderr=True).print(
                f"[bold yellow]VERDICT: AUTHENTIC, AUDIT FAILED[/] — gate(s) "
                f"{e(', '.join(failed))} failed; the site accepted the risk: "
                f"{e(repr((risk or {}).get('reason')))}", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_ACCEPTED_RISK)
    if not as_json:
        Console().print("[bold green]VERDICT: VALID[/] — signature, hashes, format and gates "
                        "all pass")


def _records(obj: Any, where: str = "$") -> list[tuple[str, dict[str, Any]]]:
    """Every signed record inside a JSON document, with its JSON path."""
    from shared.signing import is_signed_record

    if is_signed_record(obj):
        return [(where, obj)]
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _records(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _records(v, f"{where}[{i}]")
    return found


def _verify_records(path: Path, trust: Path, as_json: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from shared.files import UntrustedJSONError, loads_untrusted
    from shared.signing import SignatureError, SigningError, load_trust, trusted_names
    from shared.signing import verify_record as verify

    try:
        doc = loads_untrusted(path.read_bytes())
    except (OSError, UntrustedJSONError) as exc:
        _fail("corrupt", f"{path}: neither a bundle nor readable JSON ({exc})", as_json)
    records = _records(doc)
    if not records:
        _fail("not-signed", f"{path}: no signed record inside (need payload, signature, "
                            "key_fingerprint)", as_json)
    try:
        trusted = load_trust(trust)
        names = trusted_names(trust)
    except SigningError as exc:
        _fail(exc.reason, str(exc), as_json)
    rows, failures = [], []
    for where, rec in records:
        try:
            payload = verify(rec, trust, trusted=trusted)
            rows.append((where, str(payload.get("kind", "?")), names.get(
                str(rec["key_fingerprint"]), "?"), "OK"))
            raw_gates = payload.get("gates")
            gates: dict[str, Any] = raw_gates if isinstance(raw_gates, dict) else {}
            bad = [k for k, g in gates.items() if isinstance(g, dict) and not g.get("passed")]
            if bad:
                failures.append(f"{where}: gate(s) failed: {', '.join(bad)}")
        except SignatureError as exc:
            rows.append((where, "?", str(rec.get("key_fingerprint"))[:19] + "…", exc.reason))
            failures.append(f"{where}: {exc.reason}: {exc}")
    from shared.report_verify import check_report, is_report

    if is_report(doc):
        # A report: every site-attested number must equal the signed record it came from.
        failures += [f"{where}: {what}" for where, what in check_report(doc, trust)]
    if as_json:
        typer.echo(json.dumps({"ok": not failures, "kind": "records", "records": [
            {"path": w, "kind": k, "key": n, "verdict": v} for w, k, n, v in rows],
            "failures": failures}, indent=2, sort_keys=True))
    else:
        table = Table(title=f"Signed records in {path.name}")
        for col in ("where", "kind", "key", "verdict"):
            table.add_column(col)
        for w, k, n, v in rows:
            table.add_row(escape(w), escape(k), escape(n),
                          "[green]OK[/]" if v == "OK" else f"[bold red]{escape(v)}[/]")
        Console().print(table)
    if failures:
        if not as_json:
            Console(stderr=True).print("[bold red]VERDICT: FAILED[/] — "
                                       + escape("; ".join(failures)),
                                       highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_FAILED)
    if not as_json:
        what = (" and every site-attested number in the report matches its signature"
                if is_report(doc) else "")
        Console().print(f"[bold green]VERDICT: VALID[/] — {len(rows)} signed record(s) "
                        f"verified{what}")


def command(
    file: Path = typer.Argument(..., help="A bundle (.slbundle) or a JSON file of signed "
                                          "records / a report."),
    trust: Path = typer.Option(..., "--trust", help="Folder of trusted site public keys (*.pub)."),
    seen: Path | None = typer.Option(None, "--seen",
                                     help="Text file of bundle ids already pooled (one per line):"
                                          " a bundle listed there fails as a replay."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Check signature, member hashes, format version and audit gates; exit non-zero if any
    fails (1), or 3 when authentic but the site overrode a failed gate."""
    if not file.exists():
        _fail("not-found", f"{file}: no such file", as_json)
    seen_ids: set[str] = set()
    if seen is not None and seen.exists():
        seen_ids = {ln.strip() for ln in seen.read_text().splitlines() if ln.strip()}
    with file.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK") or file.suffix == ".slbundle" or zipfile.is_zipfile(file):
        _verify_bundle(file, trust, seen_ids, as_json)
    else:
        _verify_records(file, trust, as_json)
