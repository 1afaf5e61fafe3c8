"""`synthlearn node keygen`: one key per site, private part 0600, never silently replaced."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from shared.cli import app
from shared.errors import SynthlearnError
from shared.signing import load_private_key, public_key_fingerprint


def test_keygen_prints_fingerprint_and_protects_the_key(tmp_path: Path) -> None:
    runner = CliRunner()
    site = tmp_path / "site"
    r = runner.invoke(app, ["node", "keygen", "--site-dir", str(site), "--name", "site-a"])
    assert r.exit_code == 0, r.output
    fp = public_key_fingerprint(load_private_key(site / "keys").public_key())
    assert f"fingerprint: {fp}" in r.output
    assert stat.S_IMODE((site / "keys" / "site.key").stat().st_mode) == 0o600
    assert (site / "keys" / "pseudonym").read_text().strip() == "site-a"
    r = runner.invoke(app, ["node", "keygen", "--site-dir", str(site)])
    assert isinstance(r.exception, SynthlearnError) and "already exists" in str(r.exception)
    r = runner.invoke(app, ["node", "keygen", "--site-dir", str(site), "--name", "St Mary's"])
    assert isinstance(r.exception, SynthlearnError)
    assert public_key_fingerprint(load_private_key(site / "keys").public_key()) == fp
