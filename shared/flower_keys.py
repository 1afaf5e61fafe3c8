"""Key pairs Flower itself checks: a SuperNode's auth key and the operator's app-signing key.

Both are OpenSSH-format files (what Flower reads), private parts 0600, and each is made where
its private half stays: the SuperNode key *at the site* (``synthlearn node join
--make-auth-key``; only the ``.pub`` goes to the coordinator to be registered), the
app-signing key *at the coordinator* (``synthlearn coordinator app-key``; only the ``.pub``
goes to every site, which passes it to ``node join --app-key``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.signing import _write_private


def _write_pair(out: Path, name: str,
                key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> tuple[Path, Path]:
    """``out/<name>`` (private, OpenSSH, 0600) and ``out/<name>.pub`` (OpenSSH line)."""
    priv_path, pub_path = out / name, out / f"{name}.pub"
    out.mkdir(parents=True, exist_ok=True)
    _write_private(priv_path, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.OpenSSH,
                                                serialization.NoEncryption()))
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH)
                         + b"\n")
    return priv_path, pub_path


def make_supernode_key(out: Path, name: str) -> tuple[Path, Path]:
    """``out/<name>`` (ECDSA P-384 private, 0600) and ``out/<name>.pub`` (to register)."""
    return _write_pair(out, name, ec.generate_private_key(ec.SECP384R1()))


def make_app_signing_key(out: Path, name: str = "app-signing") -> tuple[Path, Path]:
    """``out/<name>`` (Ed25519 private, 0600) and ``out/<name>.pub`` (to every site)."""
    return _write_pair(out, name, ed25519.Ed25519PrivateKey.generate())
