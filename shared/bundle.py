"""The signed bundle: the only thing that leaves a site (DESIGN §2, §3).

One zip file (``*.slbundle``) with exactly these members, in this order::

    manifest.json    canonical JSON (sorted keys, no spaces, UTF-8): everything below
    manifest.sig     JSON: {"algorithm": "ed25519", "bundle_format": 1, "key_fingerprint",
                     "signature"}; the base64 Ed25519 signature over the exact bytes of
                     manifest.json
    labels.csv       file,label,class_name — one row per image
    teacher.csv      OPTIONAL: file,p_0,…,p_{K-1} — per image, the site classifier's class
                     probabilities (soft "teacher" labels; same row order as labels.csv)
    images/NNNNNN.png

Why PNG, one file per image (and not an npz): an auditor can open any image with any viewer,
and the encoder here writes only the three chunks an 8-bit grayscale PNG needs (IHDR, IDAT,
IEND), so no text, time, gamma or physical-size chunk can carry metadata out; the reader
rejects any other chunk. Images are *stored* (PNG is already deflated), so a flipped byte in
one image changes that image's SHA-256 and nothing else.

``manifest.json`` holds: ``format`` and ``format_version``, ``bundle_id`` (UUID4), ``site``
(the admin's pseudonym), ``key_fingerprint``, ``created_at`` (UTC), ``software_version``,
``config`` and ``config_digest`` (SHA-256 of its canonical JSON), ``classes`` with
``class_ids`` and ``vocabulary`` (the lesion vocabulary's fixed ids, :mod:`shared.vocabulary`;
null for a site-defined class list), ``counts`` per class, ``image_count``, ``image_size``,
``members`` (SHA-256 of every other member), ``metrics``, ``audit`` (the exportable audit
summary), ``dp`` (the DP accounting, or null), and ``accepted_risk`` (null, or the admin's
signed override reason and the gates it overrides).

Verification (:func:`verify_bundle`) fails with a :class:`BundleError` whose ``reason`` is one
of: ``not-found``, ``truncated``, ``corrupt``, ``unsafe-member`` (path traversal, links,
encryption, zip-bomb sizes), ``missing-signature``, ``bad-signature``, ``unknown-key``,
``format-version``, ``bad-manifest``, ``extra-member``, ``missing-member``, ``hash-mismatch``,
``bad-content``, ``class-mismatch`` (class ids that do not fit the names), ``replayed``,
``gates-failed``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os
import re
import struct
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import BundleError
from shared.files import UntrustedJSONError, loads_untrusted, sha256_bytes
from shared.names import SITE_RE
from shared.signing import (
    SignatureError,
    SigningError,
    canonical_json,
    check_signer,
    load_trust,
    sanitize_json,
    sign_bytes,
    trusted_names,
    verify_bytes,
)
from shared.synthetic import SyntheticSet
from shared.vocabulary import VOCABULARY, class_ids, describe

FORMAT = "synthlearn-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LABELS = "labels.csv"
TEACHER = "teacher.csv"
"""Optional member (format 1 still): bundles with and without it verify; see ARCHITECTURE.md."""
SUFFIX = ".slbundle"

MAX_MEMBERS = 500_000
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 8 * 1024 * 1024 * 1024
MAX_RATIO = 200
"""Uncompressed/compressed ratio above which a (large) member is treated as a zip bomb."""
MAX_SIDE = 4096
MAX_PIXEL_BYTES = 2 * 1024 * 1024 * 1024
"""Largest decoded image array one bundle may make (checked from the signed image_size and the
member count before anything is allocated; the pool holds several of them)."""
_MEMBER_RE = re.compile(
    r"^(manifest\.json|manifest\.sig|labels\.csv|teacher\.csv|images/[0-9]{6,7}\.png)$")
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, key, format, members and contents all checked out."""

    manifest: dict[str, Any]
    synthetic: SyntheticSet
    site: str
    bundle_id: str
    key_fingerprint: str
    key_name: str
    """Name of the trust-folder file holding the signing key (e.g. ``site-a.pub``)."""
    signed_manifest: dict[str, str] | None = None
    """The manifest's exact bytes (base64) with its signature and key: what a report carries
    so an auditor can check each bundle number it shows (:func:`verify_signed_manifest`)."""


# -- PNG without metadata ---------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """An 8-bit grayscale PNG with only IHDR, IDAT and IEND (no metadata can ride along).

    >>> data = encode_png(np.arange(12, dtype=np.uint8).reshape(3, 4))
    >>> decode_png(data).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"need a uint8 (H, W) image, got {image.dtype} {image.shape}")
    h, w = image.shape
    raw = np.zeros((h, w + 1), np.uint8)  # filter byte 0 ("None") on every row
    raw[:, 1:] = image
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (_PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + _chunk(b"IEND", b""))


def decode_png(data: bytes, name: str = "image") -> npt.NDArray[np.uint8]:
    """Decode what :func:`encode_png` writes; anything else (other chunks, filters, colour
    types, oversize) is refused, so the parser the auditor runs stays tiny."""

    def bad(msg: str) -> BundleError:
        return BundleError(f"{name}: {msg}", "bad-content")

    if not data.startswith(_PNG_SIG):
        raise bad("not a PNG")
    pos, kinds, idat = len(_PNG_SIG), [], bytearray()
    w = h = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise bad("truncated PNG chunk")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc_bytes = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc_bytes) != 4:
            raise bad("truncated PNG chunk")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", crc_bytes)[0]:
            raise bad(f"PNG chunk {kind!r} fails its CRC")
        kinds.append(kind)
        if kind == b"IHDR":
            if length != 13:
                raise bad("bad IHDR")
            w, h, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", body)
            if (depth, ctype, comp, filt, inter) != (8, 0, 0, 0, 0):
                raise bad("only 8-bit grayscale, non-interlaced PNGs are allowed")
            if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                raise bad(f"image size {w}×{h} out of range")
        elif kind == b"IDAT":
            idat += body
        elif kind != b"IEND":
            raise bad(f"PNG chunk {kind.decode('latin-1')!r} is not allowed (metadata?)")
        pos += 12 + length
        if kind == b"IEND":
            break
    if pos != len(data) or kinds[:1] != [b"IHDR"] or kinds[-1:] != [b"IEND"]:
        raise bad("PNG structure is not IHDR, IDAT…, IEND")
    expected = h * (w + 1)
    dec = zlib.decompressobj()
    try:
        raw = dec.decompress(bytes(idat), expected + 1)
    except zlib.error as exc:
        raise bad(f"PNG data does not decompress ({exc})") from None
    if len(raw) != expected or dec.unconsumed_tail:
        raise bad("PNG data has the wrong length")
    rows = np.frombuffer(raw, np.uint8).reshape(h, w + 1)
    if rows[:, 0].any():
        raise bad("PNG uses a row filter other than 0")
    return rows[:, 1:].copy()


# -- helpers -------------------------------------------------------------------------------------
def config_digest(config: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(sanitize_json(config)))


def software_version() -> str:
    try:
        from importlib.metadata import version

        return version("synthlearn")
    except Exception:  # not installed as a distribution (e.g. a source checkout on PYTHONPATH)
        return "unknown"


def image_name(i: int) -> str:
    return f"images/{i:06d}.png"


def _zip_info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def _labels_csv(synthetic: SyntheticSet) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["file", "label", "class_name"])
    for i, lab in enumerate(synthetic.labels.tolist()):
        w.writerow([image_name(i), lab, synthetic.class_names[lab]])
    return out.getvalue().encode("utf-8")


def _teacher_csv(synthetic: SyntheticSet) -> bytes:
    assert synthetic.soft is not None
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["file", *[f"p_{k}" for k in range(len(synthetic.class_names))]])
    for i, row in enumerate(synthetic.soft.tolist()):
        w.writerow([image_name(i), *[f"{v:.6g}" for v in row]])
    return out.getvalue().encode("utf-8")


# -- writing -------------------------------------------------------------------------------------
def write_bundle(
    out: Path,
    synthetic: SyntheticSet,
    *,
    site: str,
    key_dir: Path,
    metrics: dict[str, Any],
    audit: dict[str, Any],
    dp: dict[str, Any] | None,
    config: dict[str, Any],
    accepted_risk: str | None = None,
    privacy_ledger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a signed bundle to ``out`` (atomically) and return its manifest.

    ``privacy_ledger`` is the site's cumulative DP spend (:mod:`node.privacy_ledger`), signed
    in so the coordinator and auditors see the total, not only this run's ε.

    The caller decides *whether* to export (``node.export`` applies the audit gates); this
    function only makes sure what it writes is exactly what the manifest says, signed.
    ``accepted_risk`` is the admin's reason for exporting despite failed gates; it is stored
    with the names of the failed gates, under the signature.
    """
    out = Path(out)
    if not SITE_RE.match(site):
        raise BundleError(
            f"site pseudonym {site!r} must be 1–64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (choose a pseudonym, not the hospital's name)",
            "bad-site", out)
    if len(synthetic) == 0:
        raise BundleError("no synthetic images to export; run `synthlearn node generate`",
                          "empty", out)
    from shared.signing import load_private_key, public_key_fingerprint

    fingerprint = public_key_fingerprint(load_private_key(key_dir).public_key())
    members: dict[str, bytes] = {LABELS: _labels_csv(synthetic)}
    if synthetic.soft is not None:
        members[TEACHER] = _teacher_csv(synthetic)
    for i, img in enumerate(synthetic.images):
        members[image_name(i)] = encode_png(np.ascontiguousarray(img))
    failed = [k for k, v in (audit.get("gates") or {}).items()
              if isinstance(v, dict) and v.get("passed") is False]
    clean_config = sanitize_json(config)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_id": str(uuid.uuid4()),
        "site": site,
        "key_fingerprint": fingerprint,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software_version": software_version(),
        "config": clean_config,
        "config_digest": sha256_bytes(canonical_json(clean_config)),
        "classes": list(synthetic.class_names),
        "class_ids": class_ids(synthetic.class_names),
        "vocabulary": VOCABULARY if class_ids(synthetic.class_names) else None,
        "counts": synthetic.counts(),
        "image_count": len(synthetic),
        "image_size": [int(synthetic.images.shape[1]), int(synthetic.images.shape[2])],
        "image_format": "png-gray8",
        "members": {name: sha256_bytes(data) for name, data in members.items()},
        "metrics": sanitize_json(metrics),
        "audit": sanitize_json(audit),
        "dp": sanitize_json(dp) if dp is not None else None,
        "privacy_ledger": sanitize_json(privacy_ledger) if privacy_ledger else None,
        "accepted_risk": (
            {"reason": accepted_risk, "failed_gates": failed} if accepted_risk else None
        ),
    }
    manifest_bytes = canonical_json(manifest)
    sig, fp = sign_bytes(manifest_bytes, key_dir)
    sig_doc = {"algorithm": "ed25519", "bundle_format": FORMAT_VERSION, "key_fingerprint": fp,
               "signature": base64.b64encode(sig).decode("ascii")}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            zf.writestr(_zip_info(MANIFEST, zipfile.ZIP_DEFLATED), manifest_bytes)
            zf.writestr(_zip_info(SIGNATURE, zipfile.ZIP_DEFLATED),
                        canonical_json(sig_doc) + b"\n")
            for name, data in members.items():
                kind = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
                zf.writestr(_zip_info(name, kind), data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


# -- reading and verifying ---------------------------------------------------------------------
def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise BundleError("no such bundle file", "not-found", path)
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with path.open("rb") as fh:
            head = fh.read(4)
        if head == b"PK\x03\x04":
            raise BundleError(
                "the file is cut short (zip directory missing): the copy was interrupted; "
                "copy the bundle again from the site", "truncated", path) from None
        raise BundleError(f"not a synthlearn bundle (not a zip file: {exc})", "corrupt",
                          path) from None
    except OSError as exc:
        raise BundleError(f"cannot read the bundle ({exc})", "corrupt", path) from None


def _check_members(zf: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """Refuse anything a careless extractor could be hurt by, before reading a byte."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{len(infos)} members is more than the limit {MAX_MEMBERS}",
                          "unsafe-member", path)
    by_name: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if not _MEMBER_RE.match(name):
            reason = ("unsafe-member" if (name.startswith("/") or ".." in name or "\\" in name
                                          or ":" in name) else "extra-member")
            raise BundleError(f"member {name!r} is not part of the bundle format", reason, path)
        if name in by_name:
            raise BundleError(f"member {name!r} appears twice", "unsafe-member", path)
        if info.flag_bits & 0x1:
            raise BundleError(f"member {name!r} is encrypted", "unsafe-member", path)
        if stat_is_link(info):
            raise BundleError(f"member {name!r} is a symbolic link", "unsafe-member", path)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleError(f"member {name!r} uses an unsupported compression",
                              "unsafe-member", path)
        if info.file_size > MAX_MEMBER_BYTES:
            raise BundleError(f"member {name!r} claims {info.file_size} bytes (limit "
                              f"{MAX_MEMBER_BYTES})", "unsafe-member", path)
        if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size // max(info.compress_size, 1)
            raise BundleError(f"member {name!r} expands {ratio}× (zip bomb?)", "unsafe-member",
                              path)
        total += info.file_size
        by_name[name] = info
    if total > MAX_TOTAL_BYTES:
        raise BundleError(f"members total {total} bytes (limit {MAX_TOTAL_BYTES})",
                          "unsafe-member", path)
    return by_name


def stat_is_link(info: zipfile.ZipInfo) -> bool:
    import stat

    return stat.S_ISLNK(info.external_attr >> 16)


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """Read one member, never more than it declared (a lying header cannot inflate memory)."""
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise BundleError(f"member {info.filename!r} is damaged ({exc}); copy the bundle again",
                          "corrupt", path) from None
    if len(data) != info.file_size:
        raise BundleError(f"member {info.filename!r} is not the size it declares", "corrupt",
                          path)
    return data


def read_manifest_unverified(path: Path) -> dict[str, Any]:
    """The manifest without any check: for error messages and tooling only, never trust it."""
    with _open_zip(Path(path)) as zf:
        infos = _check_members(zf, Path(path))
        if MANIFEST not in infos:
            raise BundleError("no manifest.json", "missing-member", path)
        try:
            doc = loads_untrusted(_read(zf, infos[MANIFEST], Path(path)))
        except UntrustedJSONError as exc:
            raise BundleError(f"manifest.json is {exc}", "bad-manifest", path) from None
    if not isinstance(doc, dict):
        raise BundleError("manifest.json is not an object", "bad-manifest", path)
    return doc


def verify_bundle(
    path: Path,
    trust_dir: Path,
    seen_ids: Collection[str] = (),
    *,
    require_gates: bool = True,
) -> VerifiedBundle:
    """Check a bundle end to end and return its contents, or raise :class:`BundleError`.

    Order matters: structure and zip safety first (nothing is decompressed before the sizes are
    checked), then the signature over the manifest's exact bytes (nothing in the manifest is
    believed before that), then format version, the member list, every member's SHA-256, the
    contents, replay and the gates. ``require_gates`` rejects a bundle whose own audit failed
    without a signed accepted-risk override.
    """
    path = Path(path)
    try:
        trusted = load_trust(trust_dir)
    except SigningError as exc:
        raise BundleError(str(exc), exc.reason, path) from None
    with _open_zip(path) as zf:
        infos = _check_members(zf, path)
        if SIGNATURE not in infos:
            raise BundleError("manifest.sig is missing: the bundle is not signed",
                              "missing-signature", path)
        if MANIFEST not in infos:
            raise BundleError("manifest.json is missing", "missing-member", path)
        sig_doc = _parse_sig(_read(zf, infos[SIGNATURE], path), path)
        if sig_doc.get("bundle_format") != FORMAT_VERSION:
            raise _format_error(sig_doc.get("bundle_format"), path)
        manifest_bytes = _read(zf, infos[MANIFEST], path)
        fingerprint = str(sig_doc.get("key_fingerprint"))
        try:
            signature = base64.b64decode(str(sig_doc.get("signature")), validate=True)
            verify_bytes(manifest_bytes, signature, fingerprint, trusted, what="manifest.json")
        except binascii.Error:
            raise BundleError("manifest.sig: signature is not base64", "bad-signature",
                              path) from None
        except SignatureError as exc:
            raise BundleError(str(exc), exc.reason, path) from None
        try:
            manifest = loads_untrusted(manifest_bytes)
        except UntrustedJSONError as exc:
            raise BundleError(f"manifest.json is signed but not plain JSON: {exc}",
                              "bad-manifest", path) from None
        if not isinstance(manifest, dict):
            raise BundleError("manifest.json is not a JSON object", "bad-manifest", path)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise _format_error(manifest.get("format_version"), path, manifest.get("format"))
        if manifest.get("key_fingerprint") != fingerprint:
            raise BundleError(
                f"manifest names key {manifest.get('key_fingerprint')} but was signed with "
                f"{fingerprint}", "bad-signature", path)
        declared = manifest.get("members")
        if not isinstance(declared, dict):
            raise BundleError("manifest.json has no member list", "bad-manifest", path)
        present = set(infos) - {MANIFEST, SIGNATURE}
        extra = sorted(present - set(declared))
        missing = sorted(set(declared) - present)
        if extra:
            raise BundleError(f"member(s) not listed in the signed manifest: {_few(extra)}",
                              "extra-member", path)
        if missing:
            raise BundleError(f"member(s) listed in the manifest but absent: {_few(missing)}",
                              "missing-member", path)

        def read_checked(name: str) -> bytes:
            data = _read(zf, infos[name], path)
            if sha256_bytes(data) != declared[name]:
                raise BundleError(
                    f"member {name!r} does not match its SHA-256 in the signed manifest: it was "
                    "changed after signing", "hash-mismatch", path)
            return data

        # Streaming: the small members are read (and hash-checked) first; each image is then
        # read, hash-checked and decoded one at a time, so a bundle never sits in memory twice
        # (once compressed, once decoded) and the pool can verify any number of sites.
        small = {name: read_checked(name) for name in sorted(declared)
                 if not name.startswith("images/")}
        image_names = sorted(name for name in declared if name.startswith("images/"))
        try:
            synthetic = _decode_contents(manifest, small, image_names, read_checked, path)
        except BundleError:
            raise
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, csv.Error) as exc:
            raise BundleError(f"signed contents are malformed ({type(exc).__name__}: {exc})",
                              "bad-content", path) from None
    if not isinstance(manifest.get("site"), str) or not SITE_RE.match(manifest["site"]):
        raise BundleError(f"manifest site pseudonym {str(manifest.get('site'))[:64]!r} is "
                          "invalid", "bad-manifest", path)
    try:
        check_signer(manifest["site"], fingerprint, trust_dir, "the bundle")
    except SignatureError as exc:
        raise BundleError(str(exc), exc.reason, path) from None
    if not isinstance(manifest.get("audit"), dict) or not manifest["audit"]:
        raise BundleError("the bundle carries no memorization-audit summary; a site exports "
                          "only audited sets (`synthlearn node audit`)", "no-audit", path)
    bundle_id = str(manifest.get("bundle_id"))
    if bundle_id in seen_ids:
        raise BundleError(
            f"bundle id {bundle_id} was already pooled; a site must export a new bundle rather "
            "than resend an old one", "replayed", path)
    audit = manifest.get("audit") or {}
    if require_gates and isinstance(audit, dict) and audit.get("gates_passed") is False \
            and not manifest.get("accepted_risk"):
        raise BundleError("the site's memorization audit failed and no accepted-risk reason "
                          "was signed", "gates-failed", path)
    names = trusted_names(trust_dir)
    return VerifiedBundle(manifest=manifest, synthetic=synthetic, site=str(manifest["site"]),
                          bundle_id=bundle_id, key_fingerprint=fingerprint,
                          key_name=names.get(fingerprint, "?"),
                          signed_manifest={
                              "manifest_b64": base64.b64encode(manifest_bytes).decode("ascii"),
                              "signature": str(sig_doc.get("signature")),
                              "key_fingerprint": fingerprint})


def verify_signed_manifest(signed: Any, trust_dir: Path) -> dict[str, Any]:
    """The manifest inside a report's ``signed_manifest``, or :class:`SignatureError`: its
    signature by a trusted key, and the site it names is that key's site."""
    if not isinstance(signed, dict):
        raise SignatureError("no signed manifest", reason="not-signed")
    try:
        data = base64.b64decode(str(signed.get("manifest_b64")), validate=True)
        sig = base64.b64decode(str(signed.get("signature")), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signed manifest is not base64", reason="bad-signature") from None
    fp = str(signed.get("key_fingerprint"))
    verify_bytes(data, sig, fp, load_trust(trust_dir), what="bundle manifest")
    try:
        manifest = loads_untrusted(data)
    except UntrustedJSONError as exc:
        raise SignatureError(f"signed manifest is {exc}", reason="malformed") from None
    if not isinstance(manifest, dict):
        raise SignatureError("signed manifest is not an object", reason="malformed")
    check_signer(manifest.get("site"), fp, trust_dir, "bundle manifest")
    return manifest


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _format_error(version: Any, path: Path, fmt: Any = FORMAT) -> BundleError:
    if fmt != FORMAT:
        return BundleError(f"not a synthlearn bundle (format {fmt!r})", "format-version", path)
    if isinstance(version, int) and version > FORMAT_VERSION:
        what = "newer than this synthlearn understands; upgrade synthlearn to read it"
    else:
        what = (f"older or unknown; only version {FORMAT_VERSION} is accepted (older formats "
                "lack checks this version relies on); ask the site to export again")
    return BundleError(f"bundle format version {version!r} is {what}", "format-version", path)


def _parse_sig(data: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = loads_untrusted(data)
    except UntrustedJSONError as exc:
        raise BundleError(f"manifest.sig is not a signature document ({exc})",
                          "bad-signature", path) from None
    if not isinstance(doc, dict) or doc.get("algorithm") != "ed25519":
        raise BundleError("manifest.sig is not an Ed25519 signature document", "bad-signature",
                          path)
    return doc


def _decode_contents(manifest: dict[str, Any], contents: dict[str, bytes],
                     image_names: list[str], read_image: Callable[[str], bytes],
                     path: Path) -> SyntheticSet:
    """Labels, teacher labels and images; ``contents`` holds every member but the images,
    which ``read_image`` reads (hash-checked) one by one, in labels.csv order."""
    def bad(msg: str) -> BundleError:
        return BundleError(msg, "bad-content", path)

    classes = manifest.get("classes")
    size = manifest.get("image_size")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad("manifest has no class list")
    if "class_ids" in manifest or "vocabulary" in manifest:  # absent in older bundles
        ids = class_ids(classes)
        if manifest.get("class_ids") != ids or manifest.get("vocabulary") != (
                VOCABULARY if ids else None):
            raise BundleError(
                f"the manifest's class ids {manifest.get('class_ids')!r} (vocabulary "
                f"{manifest.get('vocabulary')!r}) do not fit its classes {describe(classes)}",
                "class-mismatch", path)
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise bad("manifest has no image size")
    if not all(1 <= v <= MAX_SIDE for v in size):
        raise bad(f"manifest image size {size[0]}×{size[1]} is outside 1..{MAX_SIDE}")
    n_images = len(image_names)
    if n_images * size[0] * size[1] > MAX_PIXEL_BYTES:
        raise bad(f"{n_images} images of {size[0]}×{size[1]} would need "
                  f"{n_images * size[0] * size[1]} bytes, over the {MAX_PIXEL_BYTES}-byte cap")
    if LABELS not in contents:
        raise BundleError("labels.csv is missing", "missing-member", path)
    rows = list(csv.reader(io.StringIO(contents[LABELS].decode("utf-8", errors="strict"))))
    if not rows or rows[0] != ["file", "label", "class_name"]:
        raise bad("labels.csv has the wrong header")
    known = set(image_names)
    if len(rows) - 1 != len(image_names):
        raise bad(f"labels.csv has {len(rows) - 1} rows for {len(image_names)} images")
    h, w = int(size[0]), int(size[1])
    images = np.empty((len(image_names), h, w), np.uint8)
    labels = np.empty(len(image_names), np.int64)
    seen: set[str] = set()
    for i, row in enumerate(rows[1:]):
        if len(row) != 3 or row[0] not in known or row[0] in seen:
            raise bad(f"labels.csv row {i + 2} is malformed or names an unknown/duplicate image")
        seen.add(row[0])
        try:
            lab = int(row[1])
        except ValueError:
            raise bad(f"labels.csv row {i + 2}: label {row[1]!r} is not an integer") from None
        if not 0 <= lab < len(classes) or classes[lab] != row[2]:
            raise bad(f"labels.csv row {i + 2}: label {lab} / class {row[2]!r} do not match the "
                      "class list")
        img = decode_png(read_image(row[0]), row[0])
        if img.shape != (h, w):
            raise bad(f"{row[0]} is {img.shape}, manifest says {h}×{w}")
        images[i], labels[i] = img, lab
    soft = _decode_teacher(contents, [r[0] for r in rows[1:]], len(classes), bad)
    synthetic = SyntheticSet(images, labels, list(classes),
                             {"bundle_id": manifest.get("bundle_id"), "site": manifest.get("site")},
                             soft=soft)
    if synthetic.counts() != manifest.get("counts"):
        raise bad("per-class counts in the manifest do not match labels.csv")
    return synthetic


def _decode_teacher(contents: dict[str, bytes], files: list[str], n_classes: int,
                    bad: Any) -> npt.NDArray[np.float32] | None:
    """teacher.csv → (N, K) probabilities in labels.csv order, or None when absent.

    A hostile sender controls every byte: the header, the file order, every value (NaN, inf,
    negative, rows not summing to 1) is checked, and the first problem rejects the bundle.
    """
    if TEACHER not in contents:
        return None
    from shared.synthetic import SyntheticSetError, check_soft_labels

    rows = list(csv.reader(io.StringIO(contents[TEACHER].decode("utf-8", errors="strict"))))
    header = ["file", *[f"p_{k}" for k in range(n_classes)]]
    if not rows or rows[0] != header:
        raise bad(f"teacher.csv has the wrong header (expected {','.join(header)})")
    if len(rows) - 1 != len(files):
        raise bad(f"teacher.csv has {len(rows) - 1} rows for {len(files)} images")
    soft = np.empty((len(files), n_classes), np.float64)
    for i, (row, name) in enumerate(zip(rows[1:], files, strict=True)):
        if len(row) != n_classes + 1 or row[0] != name:
            raise bad(f"teacher.csv row {i + 2} does not match labels.csv row {i + 2}")
        try:
            soft[i] = [float(v) for v in row[1:]]
        except ValueError:
            raise bad(f"teacher.csv row {i + 2}: a probability is not a number") from None
    try:
        return check_soft_labels(soft, len(files), n_classes)
    except SyntheticSetError as exc:
        raise bad(f"teacher.csv: {exc}") from None


def iter_bundle_files(folder: Path) -> Iterator[Path]:
    """Bundles in a folder (``*.slbundle``, then ``*.zip``), in name order."""
    yield from sorted(Path(folder).glob(f"*{SUFFIX}"))
    yield from sorted(Path(folder).glob("*.zip"))
