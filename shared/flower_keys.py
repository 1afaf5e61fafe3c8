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


def _write_pair(priv_path: Path, private_bytes: bytes, public_bytes: bytes) -> tuple[Path, Path]:
    pub_path = priv_path.with_name(priv_path.name + ".pub")
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(priv_path, private_bytes)
    pub_path.write_bytes(public_bytes + b"\n")
    return priv_path, pub_path


def make_supernode_key(out: Path, name: str) -> tuple[Path, Path]:
    """``out/<name>`` (ECDSA P-384 private, 0600) and ``out/<name>.pub`` (to register)."""
    key = ec.generate_private_key(ec.SECP384R1())
    return _write_pair(out / name,
                       key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()),
                       key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))


def make_app_signing_key(out: Path, name: str = "app-signing") -> tuple[Path, Path]:
    """``out/<name>`` (Ed25519 private, 0600) and ``out/<name>.pub`` (to every site)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return _write_pair(out / name,
                       key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()),
                       key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
