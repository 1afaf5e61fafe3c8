"""TLS + SuperNode authentication: registered SuperNodes join; an unregistered one is refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.certs import make_ca_and_server
from shared.flower_keys import make_supernode_key
from shared.flower_proc import (
    TlsFiles,
    register_supernode,
    start_superlink,
    start_supernode,
    write_connection,
)
from tests.coordinator.fedutil import start_refused_supernode

pytestmark = [pytest.mark.flower]


def test_certificates_name_the_address_and_keys_are_private(tmp_path: Path) -> None:
    from cryptography import x509

    paths = make_ca_and_server(tmp_path, ["coordinator.example.org", "10.1.2.3"])
    cert = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coordinator.example.org" in san.get_values_for_type(x509.DNSName)
    # loopback names are always there: the SuperLink itself listens on 127.0.0.1 behind the proxy
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3",
                                                                          "127.0.0.1"]
    assert paths["server_key"].stat().st_mode & 0o077 == 0
    priv, pub = make_supernode_key(tmp_path, "site-a")
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert priv.stat().st_mode & 0o077 == 0


def test_registered_supernodes_join_and_an_unregistered_one_is_refused(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    paths = make_ca_and_server(tls_dir, ["localhost", "127.0.0.1"])
    tls = TlsFiles(paths["ca_cert"], paths["server_cert"], paths["server_key"])
    keys = {name: make_supernode_key(tmp_path / "node-keys", name)
            for name in ("site-a", "site-b", "intruder")}
    started = []
    try:
        link = start_superlink(tmp_path / "link", tls=tls, auth=True)
        started.append(link)
        address = f"127.0.0.1:{link.port}"
        cli_home = tmp_path / "cli-home"
        write_connection(cli_home, "fed", address, root_cert=paths["ca_cert"])
        for name in ("site-a", "site-b"):
            register_supernode(keys[name][1], "fed", cli_home)
        for name in ("site-a", "site-b"):
            started.append(start_supernode(
                tmp_path / "nodes", name, address, {"site-dir": str(tmp_path)},
                root_cert=paths["ca_cert"], auth_key=keys[name][0], max_wait=20))
        intruder = start_refused_supernode(
            tmp_path / "nodes", "intruder", address, {"site-dir": str(tmp_path)},
            root_cert=paths["ca_cert"], auth_key=keys["intruder"][0], max_wait=20)
        if intruder is not None:
            started.append(intruder)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            activated = link.log_text().count("[Fleet.ActivateNode] Activated")
            if activated >= 2 and (intruder is None or "2004" in intruder.log_text()
                                   or not intruder.alive()):
                break
            time.sleep(0.5)
        time.sleep(2.0)  # give a wrongly admitted intruder time to show up in the log
        assert link.log_text().count("[Fleet.ActivateNode] Activated") == 2
        if intruder is not None:
            assert "SuperNode ID" not in intruder.log_text()
        for proc in started[1:3]:
            assert "SuperNode ID" in proc.log_text(), proc.tail()
    finally:
        for proc in reversed(started):
            proc.stop()


def test_make_certs_register_with_a_missing_pub_is_one_line(tmp_path: Path) -> None:
    """A mistyped --node-pub was a FileNotFoundError traceback."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "deploy" / "make_certs.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "certs"), "--register",
                          "127.0.0.1:1", "--node-pub", str(tmp_path / "site-a.pub")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2, res.stderr
    assert "site-a.pub: cannot read it" in res.stderr and "Traceback" not in res.stderr


def test_make_certs_makes_no_site_key_and_sites_make_their_own(tmp_path: Path) -> None:
    """The coordinator never holds a site's SuperNode private key: make_certs refuses the old
    --nodes, and `node join --make-auth-key` makes the pair at the site (private 0600)."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from shared.cli import app

    script = Path(__file__).resolve().parents[2] / "deploy" / "make_certs.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "certs"), "--nodes",
                          "site-a"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "sites make their own" in res.stderr
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "certs")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    made = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert made == ["app-signing", "app-signing.pub", "ca.crt", "ca.key", "server.key",
                    "server.pem"]
    assert (tmp_path / "certs" / "app-signing.pub").read_text().startswith("ssh-ed25519 ")
    site = tmp_path / "site"
    out = CliRunner().invoke(app, ["node", "join", "--make-auth-key", "--site-dir", str(site)])
    assert out.exit_code == 0, out.output
    priv, pub = site / "keys" / "supernode", site / "keys" / "supernode.pub"
    assert priv.stat().st_mode & 0o077 == 0
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    before = priv.read_bytes()
    again = CliRunner().invoke(app, ["node", "join", "--make-auth-key", "--site-dir", str(site)])
    assert again.exit_code != 0 and "exists" in str(again.exception)
    assert priv.read_bytes() == before  # an existing key is never overwritten
