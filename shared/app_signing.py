"""Flower app (FAB) signatures in the form Flower's SuperNode checks (``--trusted-entities``).

The coordinator operator signs each app bundle with an Ed25519 key; every site passes the
operator's public key to ``node join --app-key`` and its SuperNode then runs only apps that
key signed (Flower's own check, before any code from the bundle runs). The record format is
Flower 1.41's: ``fab.verifications[key_id] = {"signature": base64url(Ed25519(8-byte
big-endian signed_at ‖ sha256(fab))), "signed_at": unix seconds}`` plus ``valid_license``,
which the SuperNode requires to be non-empty before it looks at any signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.errors import FlowerProcessError


def load_app_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The operator's app-signing public key (OpenSSH ``ssh-ed25519 …``), or a clear error."""
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise FlowerProcessError(f"{path}: not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise FlowerProcessError(f"{path}: the app-signing key must be Ed25519 (ssh-ed25519)")
    return key


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """A stable name for the key in Flower's verification records (from its raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "synthlearn-" + hashlib.sha256(raw).hexdigest()[:16]


def write_trusted_entities(public_key_path: Path, out: Path) -> Path:
    """Flower's ``--trusted-entities`` YAML with exactly the operator's key."""
    key = load_app_public_key(public_key_path)
    line = key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode("ascii")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{key_id(key)}: {json.dumps(line)}\n", encoding="utf-8")
    return out


def load_app_private_key(private_key_path: Path) -> ed25519.Ed25519PrivateKey:
    """The operator's app-signing private key (OpenSSH, Ed25519), or a clear error.

    Refused when other users can read it (as the site key is): whoever reads it can make
    every site run code."""
    try:
        key = serialization.load_ssh_private_key(Path(private_key_path).read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise FlowerProcessError(f"{private_key_path}: not an OpenSSH private key ({exc})"
                                 ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise FlowerProcessError(f"{private_key_path}: the app-signing key must be Ed25519")
    mode = stat.S_IMODE(Path(private_key_path).stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise FlowerProcessError(f"{private_key_path}: the app-signing key is readable by "
                                 f"other users (mode {mode:o}); run `chmod 600 "
                                 f"{private_key_path}` and consider making a new one")
    return key


def sign_fab(fab: bytes, private_key_path: Path, signed_at: int | None = None
             ) -> dict[str, str]:
    """The ``verifications`` map for one FAB, signed with the operator's key."""
    key = load_app_private_key(private_key_path)
    when = int(time.time()) if signed_at is None else signed_at
    message = when.to_bytes(8, "big") + hashlib.sha256(fab).digest()
    signature = base64.urlsafe_b64encode(key.sign(message)).rstrip(b"=").decode("ascii")
    return {key_id(key.public_key()): json.dumps({"signature": signature, "signed_at": when}),
            "valid_license": "Valid"}
