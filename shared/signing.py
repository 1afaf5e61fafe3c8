"""Ed25519 site keys, fingerprints, canonical JSON and signed records.

Why Ed25519: small keys (32 bytes), deterministic signatures (no per-signature randomness that a
bad RNG could leak the key through), one obvious choice with no parameters to get wrong.

Key directory layout (``SITE/keys`` by default, made by ``synthlearn node keygen``)::

    site.key    PKCS#8 PEM private key, mode 0600, never leaves the site
    site.pub    SubjectPublicKeyInfo PEM public key, copied by hand to the coordinator's and
                auditors' trust folders (any ``*.pub`` file name there)
    retired/    earlier key pairs after ``keygen --rotate``, kept so old records stay checkable

A key is named by its *fingerprint*: SHA-256 of the 32 raw public-key bytes, written as 16
colon-separated groups of four hex digits, so two admins can read it to each other over the
phone.

Signed records (metric records, evaluation replies, reports) are ``{"payload", "signature",
"key_fingerprint"}``; the signature covers the *canonical JSON* of the payload: sorted keys, no
insignificant whitespace, UTF-8, no NaN/Infinity (which JSON cannot represent portably).

>>> canonical_json({"b": 1, "a": [1.5, "é"]})
b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'
>>> import tempfile
>>> keys, trust = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
>>> fp = generate_keypair(keys)
>>> _ = (trust / "site-a.pub").write_bytes((keys / PUBLIC_NAME).read_bytes())
>>> verify_record(sign_record({"auc": 0.91}, keys), trust)
{'auc': 0.91}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import KeyMissingError, SignatureError, SigningError
from shared.files import atomic_write_bytes

PRIVATE_NAME = "site.key"
PUBLIC_NAME = "site.pub"
RETIRED_DIR = "retired"


# -- canonical JSON ----------------------------------------------------------------------------
def _check_finite(obj: Any, where: str = "$") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise SigningError(
            f"cannot sign {where} = {obj}: NaN/Infinity has no canonical JSON form; "
            "replace it with null before signing",
            reason="not-canonical",
        )
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise SigningError(f"cannot sign {where}: key {k!r} is not a string",
                                   reason="not-canonical")
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON value is signed as (sorted keys, no spaces, UTF-8)."""
    _check_finite(obj)
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SigningError(f"cannot sign a value that is not plain JSON: {exc}",
                           reason="not-canonical") from None
    return text.encode("utf-8")


def sanitize_json(obj: Any) -> Any:
    """A copy of ``obj`` with NaN/Infinity replaced by None and tuples by lists.

    Metrics legitimately produce NaN (e.g. an AUC on one class); a signed record must still be
    canonical, so callers that *publish* numbers pass them through here first.

    >>> sanitize_json({"auc": float("nan"), "ci": (0.1, 0.2)})
    {'auc': None, 'ci': [0.1, 0.2]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [sanitize_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return sanitize_json(obj.item())
    return obj


# -- keys ----------------------------------------------------------------------------------------
def raw_public_bytes(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_fingerprint(pub: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, as 16 colon-separated groups of 4 hex digits."""
    digest = hashlib.sha256(raw_public_bytes(pub)).hexdigest()
    return ":".join(digest[i:i + 4] for i in range(0, 64, 4))


def _write_private(path: Path, data: bytes) -> None:
    """Create the private key file with mode 0600 from the first byte (no readable window)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_keypair(key_dir: Path, *, rotate: bool = False) -> str:
    """Make a new Ed25519 key pair in ``key_dir`` and return its fingerprint.

    An existing key is never overwritten silently (bundles and records signed with it would
    become unverifiable for anyone who trusts it): without ``rotate`` this raises; with it the
    old pair moves to ``retired/<fingerprint>.{key,pub}``.
    """
    key_dir = Path(key_dir)
    priv_path, pub_path = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if priv_path.exists() or pub_path.exists():
        if not rotate:
            raise SigningError(
                f"{priv_path}: a site key already exists (fingerprint "
                f"{_existing_fingerprint(key_dir)}); keep it, or pass --rotate to retire it "
                "and make a new one (then send the new .pub to the coordinator)",
                reason="key-exists",
            )
        old_fp = _existing_fingerprint(key_dir).replace(":", "")
        retired = key_dir / RETIRED_DIR
        retired.mkdir(parents=True, exist_ok=True, mode=0o700)
        for src, suffix in ((priv_path, ".key"), (pub_path, ".pub")):
            if src.exists():
                shutil.move(str(src), str(retired / f"{old_fp}{suffix}"))
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_private(priv_path, pem)
    pub = key.public_key()
    pub_pem = pub.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(pub_path, pub_pem)
    os.chmod(pub_path, 0o644)
    return public_key_fingerprint(pub)


def _existing_fingerprint(key_dir: Path) -> str:
    try:
        if (key_dir / PUBLIC_NAME).exists():
            return public_key_fingerprint(load_public_key(key_dir / PUBLIC_NAME))
        return public_key_fingerprint(load_private_key(key_dir).public_key())
    except SigningError:
        return "unreadable"


def load_private_key(key_dir: Path) -> Ed25519PrivateKey:
    """The site's private key; refuses a missing, unreadable or group/world-readable file."""
    path = Path(key_dir) / PRIVATE_NAME
    if not path.exists():
        raise KeyMissingError(
            f"{path}: no site private key. Run `synthlearn node keygen --site-dir SITE` once, "
            "then give the printed fingerprint and keys/site.pub to the coordinator"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise SigningError(
            f"{path}: private key is readable by other users (mode {mode:o}); run "
            f"`chmod 600 {path}` and consider rotating it (`synthlearn node keygen --rotate`)",
            reason="key-permissions",
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a readable PEM private key ({exc})",
                           reason="bad-key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key", reason="bad-key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file: PEM (what keygen writes) or an OpenSSH ``ssh-ed25519`` line."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read public key ({exc})", reason="bad-key") from None
    try:
        if data.lstrip().startswith(b"ssh-ed25519"):
            key: object = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SigningError(f"{path}: not a readable public key ({exc})",
                           reason="bad-key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key", reason="bad-key")
    return key


def load_trust(trust_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``*.pub`` in the trust folder, by fingerprint. A broken file is an error, loudly."""
    trust_dir = Path(trust_dir)
    if not trust_dir.is_dir():
        raise SigningError(
            f"{trust_dir}: trust folder not found; create it and copy each site's site.pub "
            "into it (check the fingerprint with the site admin)",
            reason="no-trust",
        )
    keys: dict[str, Ed25519PublicKey] = {}
    where: dict[str, str] = {}
    for path in sorted(trust_dir.glob("*.pub")):
        pub = load_public_key(path)
        fp = public_key_fingerprint(pub)
        if fp in where:
            raise SigningError(
                f"{trust_dir}: {where[fp]} and {path.name} hold the same key ({fp}); a key "
                "belongs to exactly one site pseudonym: remove the wrong file",
                reason="ambiguous-trust")
        keys[fp], where[fp] = pub, path.name
    return keys


def trusted_names(trust_dir: Path) -> dict[str, str]:
    """Fingerprint → trust-file name, for messages ('signed by site-a.pub')."""
    return {public_key_fingerprint(load_public_key(p)): p.name
            for p in sorted(Path(trust_dir).glob("*.pub"))}


def trusted_sites(trust_dir: Path) -> dict[str, str]:
    """Fingerprint → the site pseudonym the trust folder binds it to: the file name without
    ``.pub`` (``site-a.pub`` holds site-a's one key). A bundle, reply or ping is accepted as
    site X only when it is signed by the key in ``X.pub``."""
    load_trust(trust_dir)  # refuses one key under two names
    return {fp: name[:-len(".pub")] for fp, name in trusted_names(trust_dir).items()}


def check_signer(site: Any, fingerprint: str, trust_dir: Path, what: str = "record") -> None:
    """Raise :class:`SignatureError` (``site-mismatch``) unless ``site`` is the pseudonym
    whose trust file holds the key ``fingerprint``: site A's key cannot speak for site B."""
    owner = trusted_sites(trust_dir).get(fingerprint)
    if owner is None or owner != site:
        raise SignatureError(
            f"{what} claims site {str(site)[:64]!r} but is signed by the key of "
            f"{owner or 'no trusted site'!r} ({fingerprint}); a site may only speak for "
            "itself", reason="site-mismatch")


# -- signatures ---------------------------------------------------------------------------------
def sign_bytes(data: bytes, key_dir: Path) -> tuple[bytes, str]:
    """(signature, fingerprint) of ``data`` with the site key."""
    key = load_private_key(key_dir)
    return key.sign(data), public_key_fingerprint(key.public_key())


def verify_bytes(
    data: bytes, signature: bytes, fingerprint: str, trusted: dict[str, Ed25519PublicKey],
    what: str = "data",
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` over ``data`` is by a trusted key."""
    pub = trusted.get(fingerprint)
    if pub is None:
        raise SignatureError(
            f"{what}: signed by key {fingerprint}, which is not in the trust folder; if this "
            "site is expected, get its site.pub from its admin, compare the fingerprint, and "
            "add it",
            reason="unknown-key",
        )
    try:
        pub.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(
            f"{what}: signature does not match the signed content (key {fingerprint}); the "
            "content was changed after signing or the signature belongs to something else",
            reason="bad-signature",
        ) from None


def sign_record(payload: dict[str, Any], key_dir: Path) -> dict[str, Any]:
    """``{"payload", "signature", "key_fingerprint"}``; the signature is over canonical JSON."""
    sig, fp = sign_bytes(canonical_json(payload), key_dir)
    return {"payload": payload, "signature": base64.b64encode(sig).decode("ascii"),
            "key_fingerprint": fp}


def is_signed_record(obj: Any) -> bool:
    return isinstance(obj, dict) and {"payload", "signature", "key_fingerprint"} <= set(obj)


def verify_record(record: dict[str, Any], trust_dir: Path,
                  trusted: dict[str, Ed25519PublicKey] | None = None) -> dict[str, Any]:
    """The payload of a signed record, or :class:`SignatureError` saying why not."""
    if not is_signed_record(record):
        raise SignatureError(
            "not a signed record (needs payload, signature and key_fingerprint)",
            reason="not-signed",
        )
    payload = record["payload"]
    if not isinstance(payload, dict):
        raise SignatureError("signed record: payload is not a JSON object", reason="malformed")
    try:
        sig = base64.b64decode(str(record["signature"]), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signed record: signature is not base64",
                             reason="bad-signature") from None
    keys = trusted if trusted is not None else load_trust(trust_dir)
    try:
        data = canonical_json(payload)
    except SigningError as exc:
        raise SignatureError(f"signed record: {exc}", reason="bad-signature") from None
    verify_bytes(data, sig, str(record["key_fingerprint"]), keys, what="signed record")
    return payload
