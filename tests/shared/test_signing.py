"""Site keys and signed records: what a coordinator and an auditor rely on."""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path

import pytest

from shared.signing import (
    PRIVATE_NAME,
    PUBLIC_NAME,
    KeyMissingError,
    SignatureError,
    SigningError,
    canonical_json,
    generate_keypair,
    load_private_key,
    load_public_key,
    public_key_fingerprint,
    sign_record,
    verify_record,
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, str]:
    key_dir, trust = tmp_path / "keys", tmp_path / "trust"
    fp = generate_keypair(key_dir)
    trust.mkdir()
    (trust / "site-a.pub").write_bytes((key_dir / PUBLIC_NAME).read_bytes())
    return key_dir, trust, fp


def test_keygen_private_key_is_0600_and_fingerprint_matches(keys: tuple[Path, Path, str]) -> None:
    key_dir, _, fp = keys
    assert stat.S_IMODE((key_dir / PRIVATE_NAME).stat().st_mode) == 0o600
    assert public_key_fingerprint(load_public_key(key_dir / PUBLIC_NAME)) == fp
    groups = fp.split(":")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    int(fp.replace(":", ""), 16)  # hex


def test_keygen_refuses_to_overwrite_and_rotation_retires(keys: tuple[Path, Path, str]) -> None:
    key_dir, _, fp = keys
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(key_dir)
    assert public_key_fingerprint(load_private_key(key_dir).public_key()) == fp
    fp2 = generate_keypair(key_dir, rotate=True)
    assert fp2 != fp
    assert (key_dir / "retired" / (fp.replace(":", "") + ".key")).exists()


def test_missing_and_loose_private_key(tmp_path: Path, keys: tuple[Path, Path, str]) -> None:
    with pytest.raises(KeyMissingError, match="node keygen"):
        load_private_key(tmp_path / "nowhere")
    key_dir = keys[0]
    os.chmod(key_dir / PRIVATE_NAME, 0o644)
    with pytest.raises(SigningError, match="chmod 600"):
        load_private_key(key_dir)


def test_canonical_json_is_order_independent_and_rejects_nan() -> None:
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1}) == b'{"a":2,"b":1}'
    with pytest.raises(SigningError, match="NaN"):
        canonical_json({"auc": float("nan")})


def test_record_roundtrip_and_tampering(keys: tuple[Path, Path, str], tmp_path: Path) -> None:
    key_dir, trust, fp = keys
    rec = sign_record({"kind": "evaluation", "auc": 0.9, "n_test": 40}, key_dir)
    assert rec["key_fingerprint"] == fp
    assert verify_record(rec, trust)["auc"] == 0.9

    changed = copy.deepcopy(rec)
    changed["payload"]["auc"] = 0.99
    with pytest.raises(SignatureError) as err:
        verify_record(changed, trust)
    assert err.value.reason == "bad-signature"

    other = tmp_path / "other"
    generate_keypair(other)
    foreign = sign_record(rec["payload"], other)
    with pytest.raises(SignatureError) as err:
        verify_record(foreign, trust)
    assert err.value.reason == "unknown-key"
    # A valid signature from another key, relabelled with the trusted fingerprint: still bad.
    forged = dict(foreign, key_fingerprint=fp)
    with pytest.raises(SignatureError) as err:
        verify_record(forged, trust)
    assert err.value.reason == "bad-signature"


def test_missing_trust_folder_says_what_to_do(keys: tuple[Path, Path, str],
                                              tmp_path: Path) -> None:
    rec = sign_record({"a": 1}, keys[0])
    with pytest.raises(SigningError, match="trust folder not found"):
        verify_record(rec, tmp_path / "no-trust")
