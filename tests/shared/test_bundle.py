"""The signed bundle: round trip and every tamper case a coordinator must reject."""

from __future__ import annotations

import base64
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from shared.bundle import (
    FORMAT_VERSION,
    LABELS,
    MANIFEST,
    SIGNATURE,
    BundleError,
    decode_png,
    encode_png,
    verify_bundle,
    write_bundle,
)
from shared.signing import PUBLIC_NAME, canonical_json, generate_keypair, sign_bytes
from shared.synthetic import SyntheticSet

IMG = "images/000002.png"


def synthetic(n: int = 6, seed: int = 0) -> SyntheticSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 12), dtype=np.uint8)
    return SyntheticSet(images, np.arange(n) % 2, ["normal", "abnormal"], {"seed": seed})


def make(env: dict[str, Path], name: str = "a.slbundle", **kw: object) -> Path:
    out = env["tmp"] / name
    args: dict[str, object] = dict(site="site-a", key_dir=env["keys"],
                                   metrics={"baseline": {"auc": 0.9, "ci_low": float("nan")}},
                                   audit={"gates_passed": True, "copy_rate": 0.0},
                                   dp={"epsilon_spent": 9.5, "delta": 1e-3}, config={"kimg": 1})
    syn = kw.pop("syn", None) or synthetic()
    args.update(kw)
    write_bundle(out, syn, **args)  # type: ignore[arg-type]
    return out


def rewrite(src: Path, dst: Path, replace: dict[str, bytes | None] | None = None,
            add: dict[str, bytes] | None = None) -> Path:
    """Copy a bundle member by member (valid zip, CRCs recomputed), changing some members."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def reason(path: Path, env: dict[str, Path], **kw: object) -> tuple[str, str]:
    with pytest.raises(BundleError) as err:
        verify_bundle(path, env["trust"], **kw)  # type: ignore[arg-type]
    return err.value.reason, str(err.value)


def test_roundtrip_keeps_images_labels_and_manifest(env: dict[str, Path]) -> None:
    syn = synthetic()
    path = make(env, syn=syn, accepted_risk=None)
    vb = verify_bundle(path, env["trust"])
    assert np.array_equal(vb.synthetic.images, syn.images)
    assert vb.synthetic.labels.tolist() == syn.labels.tolist()
    m = vb.manifest
    assert m["format_version"] == FORMAT_VERSION and vb.site == "site-a"
    assert m["counts"] == {"normal": 3, "abnormal": 3} and m["image_count"] == 6
    assert m["metrics"]["baseline"]["ci_low"] is None  # NaN made canonical
    assert m["dp"]["epsilon_spent"] == 9.5 and len(m["config_digest"]) == 64
    assert set(m["members"]) == {LABELS} | {f"images/{i:06d}.png" for i in range(6)}
    assert vb.key_name == "site-a.pub"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[:2] == [MANIFEST, SIGNATURE]


def test_png_has_no_metadata_chunks() -> None:
    png = encode_png(np.full((4, 5), 7, np.uint8))
    pos, kinds = 8, []
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kinds.append(png[pos + 4:pos + 8])
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    crc = zlib.crc32(b"tEXtabcd").to_bytes(4, "big")
    with_text = png[:-12] + b"\x00\x00\x00\x04tEXtabcd" + crc + png[-12:]
    with pytest.raises(BundleError, match="not allowed"):
        decode_png(with_text)


def test_byte_flip_in_an_image_is_a_hash_mismatch(env: dict[str, Path]) -> None:
    path = make(env)
    bad = rewrite(path, env["tmp"] / "bad.slbundle", {IMG: flip(member(path, IMG), 60)})
    code, msg = reason(bad, env)
    assert code == "hash-mismatch" and IMG in msg


def test_byte_flip_in_labels_is_a_hash_mismatch(env: dict[str, Path]) -> None:
    path = make(env)
    labels = member(path, LABELS).replace(b",0,normal", b",1,normal", 1)
    code, msg = reason(rewrite(path, env["tmp"] / "bad.slbundle", {LABELS: labels}), env)
    assert code == "hash-mismatch" and LABELS in msg


def test_byte_flip_in_the_manifest_breaks_the_signature(env: dict[str, Path]) -> None:
    path = make(env)
    manifest = member(path, MANIFEST).replace(b'"site":"site-a"', b'"site":"site-b"')
    code, msg = reason(rewrite(path, env["tmp"] / "bad.slbundle", {MANIFEST: manifest}), env)
    assert code == "bad-signature" and "changed after signing" in msg


def test_raw_byte_flip_in_the_file_is_caught(env: dict[str, Path]) -> None:
    path = make(env)
    raw = path.read_bytes()
    at = raw.index(b"IDAT", raw.index(IMG.encode())) + 20  # inside image 2's pixel data
    path.write_bytes(flip(raw, at))
    code, msg = reason(path, env)
    assert code in ("corrupt", "hash-mismatch") and IMG in msg


def test_swapped_signature_is_rejected(env: dict[str, Path]) -> None:
    a, b = make(env, "a.slbundle"), make(env, "b.slbundle", syn=synthetic(seed=1))
    swapped = rewrite(a, env["tmp"] / "bad.slbundle", {SIGNATURE: member(b, SIGNATURE)})
    assert reason(swapped, env)[0] == "bad-signature"


def test_unknown_key_is_rejected(env: dict[str, Path]) -> None:
    path = make(env)
    other = env["tmp"] / "other-trust"
    other.mkdir()
    generate_keypair(env["tmp"] / "k2")
    (other / "site-z.pub").write_bytes((env["tmp"] / "k2" / PUBLIC_NAME).read_bytes())
    with pytest.raises(BundleError) as err:
        verify_bundle(path, other)
    assert err.value.reason == "unknown-key" and "not in the trust folder" in str(err.value)


def test_removed_extra_and_unsafe_members(env: dict[str, Path]) -> None:
    path = make(env)
    removed = rewrite(path, env["tmp"] / "r.slbundle", {IMG: None})
    code, msg = reason(removed, env)
    assert code == "missing-member" and IMG in msg
    extra = rewrite(path, env["tmp"] / "e.slbundle", add={"images/000099.png": member(path, IMG)})
    code, msg = reason(extra, env)
    assert code == "extra-member" and "000099" in msg
    assert reason(rewrite(path, env["tmp"] / "x.slbundle", add={"notes.txt": b"hi"}),
                  env)[0] == "extra-member"
    trav = rewrite(path, env["tmp"] / "t.slbundle", add={"../../etc/evil": b"x"})
    assert reason(trav, env)[0] == "unsafe-member"
    no_sig = rewrite(path, env["tmp"] / "s.slbundle", {SIGNATURE: None})
    assert reason(no_sig, env)[0] == "missing-signature"


def test_zip_bomb_member_is_refused_before_inflating(env: dict[str, Path]) -> None:
    path = make(env)
    bomb = env["tmp"] / "bomb.slbundle"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename != LABELS:
                zout.writestr(info, zin.read(info.filename))
        zout.writestr(LABELS, b"\0" * (8 << 20))
    code, msg = reason(bomb, env)
    assert code == "unsafe-member" and "zip bomb" in msg


def _resign(path: Path, env: dict[str, Path], dst: str, **changes: object) -> Path:
    manifest = json.loads(member(path, MANIFEST))
    manifest.update(changes)
    data = canonical_json(manifest)
    sig, _fp = sign_bytes(data, env["keys"])
    sig_doc = json.loads(member(path, SIGNATURE))
    sig_doc["signature"] = base64.b64encode(sig).decode()
    return rewrite(path, env["tmp"] / dst, {MANIFEST: data,
                                            SIGNATURE: canonical_json(sig_doc)})


def test_downgraded_format_version(env: dict[str, Path]) -> None:
    path = make(env)
    # Edited without the key: the signature catches it.
    edited = member(path, MANIFEST).replace(b'"format_version":1', b'"format_version":0')
    assert reason(rewrite(path, env["tmp"] / "d.slbundle", {MANIFEST: edited}),
                  env)[0] == "bad-signature"
    # Genuinely signed, but an old version: refused by the version check itself.
    code, msg = reason(_resign(path, env, "old.slbundle", format_version=0), env)
    assert code == "format-version" and "only version 1" in msg
    code, msg = reason(_resign(path, env, "new.slbundle", format_version=2), env)
    assert code == "format-version" and "upgrade" in msg


def test_truncated_and_non_zip_files(env: dict[str, Path]) -> None:
    path = make(env)
    raw = path.read_bytes()
    cut = env["tmp"] / "cut.slbundle"
    cut.write_bytes(raw[: len(raw) // 2])
    code, msg = reason(cut, env)
    assert code == "truncated" and "copy" in msg
    junk = env["tmp"] / "junk.slbundle"
    junk.write_bytes(b"hello world" * 10)
    assert reason(junk, env)[0] == "corrupt"
    assert reason(env["tmp"] / "absent.slbundle", env)[0] == "not-found"
    assert path.read_bytes() == raw  # verification never modifies the file


def test_replayed_bundle_id(env: dict[str, Path]) -> None:
    path = make(env)
    vb = verify_bundle(path, env["trust"])
    code, msg = reason(path, env, seen_ids={vb.bundle_id})
    assert code == "replayed" and vb.bundle_id in msg


def test_failed_gates_need_a_signed_override(env: dict[str, Path]) -> None:
    audit = {"gates_passed": False, "gates": {"copy_rate": {"passed": False, "value": 0.2}}}
    path = make(env, "f.slbundle", audit=audit)
    assert reason(path, env)[0] == "gates-failed"
    ok = make(env, "g.slbundle", audit=audit, accepted_risk="reviewed pairs by hand")
    m = verify_bundle(ok, env["trust"]).manifest
    assert m["accepted_risk"] == {"reason": "reviewed pairs by hand", "failed_gates": ["copy_rate"]}


def test_bad_site_pseudonym_and_missing_key(env: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match="pseudonym"):
        make(env, site="St. Mary's Hospital")
    from shared.signing import KeyMissingError

    with pytest.raises(KeyMissingError):
        make(env, key_dir=env["tmp"] / "nokeys")
    assert not (env["tmp"] / "a.slbundle").exists()


def test_signed_but_malformed_contents_are_a_clean_error(env: dict[str, Path]) -> None:
    path = make(env)
    code, _ = reason(_resign(path, env, "m1.slbundle", image_size=["x", 4]), env)
    assert code == "bad-content"
    code, _ = reason(_resign(path, env, "m2.slbundle", counts={"normal": 99}), env)
    assert code == "bad-content"
    code, _ = reason(_resign(path, env, "m3.slbundle", site="../evil"), env)
    assert code == "bad-manifest"



def _resign_bytes(path: Path, env: dict[str, Path], dst: str, manifest: bytes) -> Path:
    """``manifest`` as the exact signed bytes: a hostile site signs whatever bytes it likes."""
    sig, _fp = sign_bytes(manifest, env["keys"])
    sig_doc = json.loads(member(path, SIGNATURE))
    sig_doc["signature"] = base64.b64encode(sig).decode()
    return rewrite(path, env["tmp"] / dst, {MANIFEST: manifest,
                                            SIGNATURE: canonical_json(sig_doc)})


HOSTILE_JSON = {"huge-int": b"1" * 5000, "deep": b"[" * 100_000, "nested": b"[" * 70 + b"]" * 70}


def test_hostile_json_in_the_signature_or_manifest_is_a_bundle_error(
        env: dict[str, Path]) -> None:
    """Python's parser raises RecursionError on deep nesting and a bare ValueError on an
    integer over 4300 digits; either used to escape verify_bundle and stop the whole pool.
    manifest.sig is read before any signature check, so anyone on the path could do that."""
    from coordinator.pool import pool_bundles
    from coordinator.state import CoordinatorState

    path = make(env)
    text = member(path, MANIFEST)
    for label, value in HOSTILE_JSON.items():
        unsigned = rewrite(path, env["tmp"] / f"sig-{label}.slbundle",
                           {SIGNATURE: b'{"algorithm":"ed25519","x":' + value + b"}"})
        code, msg = reason(unsigned, env)
        assert code == "bad-signature" and "manifest.sig" in msg, (label, msg)
        signed = _resign_bytes(path, env, f"man-{label}.slbundle",
                               text[:-1] + b',"zz":' + value + b"}")
        code, msg = reason(signed, env)
        assert code == "bad-manifest" and "manifest.json" in msg, (label, msg)
    # Two values for one key: another parser could believe the other one.
    twice = _resign_bytes(path, env, "dup.slbundle", text[:-1] + b',"site":"site-b"}')
    code, msg = reason(twice, env)
    assert code == "bad-manifest" and "'site' appears twice" in msg
    # The pool records them as rejected and goes on with the good bundle.
    state = CoordinatorState(env["tmp"] / "state.db")
    res = pool_bundles([path, env["tmp"] / "sig-deep.slbundle", twice], env["trust"], state,
                       "hostile-json")
    assert [a["path"] for a in res.accepted] == [str(path)]
    assert sorted(r["reason"] for r in res.rejected) == ["bad-manifest", "bad-signature"]

def _with_teacher(n: int = 6) -> SyntheticSet:
    syn = synthetic(n)
    p1 = np.linspace(0.1, 0.9, n, dtype=np.float32)
    syn.soft = np.stack([1 - p1, p1], axis=1)
    return syn


def _resign_member(path: Path, env: dict[str, Path], dst: str, name: str, data: bytes) -> Path:
    """What a hostile site (holding its own key) can send: any member content, signed."""
    from shared.files import sha256_bytes

    manifest = json.loads(member(path, MANIFEST))
    manifest["members"][name] = sha256_bytes(data)
    tmp = rewrite(path, env["tmp"] / f"tmp-{dst}", {name: data})
    return _resign(tmp, env, dst, members=manifest["members"])


def test_teacher_labels_roundtrip_and_old_bundles_still_verify(env: dict[str, Path]) -> None:
    syn = _with_teacher()
    vb = verify_bundle(make(env, "t.slbundle", syn=syn), env["trust"])
    assert vb.synthetic.soft is not None
    assert np.allclose(vb.synthetic.soft, syn.soft, atol=1e-5)
    plain = verify_bundle(make(env, "p.slbundle"), env["trust"])  # no teacher.csv
    assert plain.synthetic.soft is None


def test_hostile_teacher_labels_are_rejected(env: dict[str, Path]) -> None:
    path = make(env, "t.slbundle", syn=_with_teacher())
    good = member(path, "teacher.csv").decode().splitlines()
    cases = {
        "nan": [good[0], "images/000000.png,nan,nan", *good[2:]],
        "over-one": [good[0], "images/000000.png,1.5,-0.5", *good[2:]],
        "not-summing": [good[0], "images/000000.png,0.9,0.9", *good[2:]],
        "reordered": [good[0], good[2], good[1], *good[3:]],
        "short": good[:-1],
        "header": ["file,p_a,p_b", *good[1:]],
    }
    for label, lines in cases.items():
        bad = _resign_member(path, env, f"{label}.slbundle", "teacher.csv",
                             ("\n".join(lines) + "\n").encode())
        code, msg = reason(bad, env)
        assert code == "bad-content" and "teacher.csv" in msg, (label, code, msg)
