"""The round-2 pretraining set as a site receives it: what a hostile coordinator could put in
the bytes is refused with the reason, before any large array is allocated."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from shared import pretrain_set
from shared.errors import SyntheticSetError

NAMES = ["normal", "abnormal"]


def _npz(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def test_round_trip_keeps_images_labels_and_class_order() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 1, 0, 1])
    images, labels, names = pretrain_set.decode(pretrain_set.encode(x, y, NAMES),
                                                max_images=7)
    assert np.array_equal(images, x) and labels.tolist() == y.tolist() and names == NAMES
    assert labels.dtype == np.int64


GOOD = {"images": np.zeros((4, 8, 8), np.uint8), "labels": np.array([0, 1, 0, 1]),
        "classes": np.array(NAMES)}


@pytest.mark.parametrize("data, why", [
    (b"not a zip at all", "not an npz"),
    (_npz(**GOOD, extra=np.zeros(3)), "expected exactly"),
    (_npz(images=GOOD["images"], labels=GOOD["labels"]), "expected exactly"),
    (_npz(**{**GOOD, "images": np.zeros((4, 8, 8), np.float32)}), "uint8"),
    (_npz(**{**GOOD, "images": np.zeros((4, 8, 6), np.uint8)}), "uint8"),
    (_npz(**{**GOOD, "labels": np.array([0, 1, 2, 1])}), "labels outside"),
    (_npz(**{**GOOD, "labels": np.array([0.0, 1.0, 0.0, 1.0])}), "integers"),
    (_npz(**{**GOOD, "labels": np.array([0, 1])}), "integers"),
    (_npz(**{**GOOD, "classes": np.array(["normal"])}), "classes must be"),
    (_npz(**{**GOOD, "classes": np.array([1, 2])}), "classes must be"),
    (_npz(**{**GOOD, "classes": np.array(NAMES, dtype=object)}), "unreadable"),  # a pickle
])
def test_hostile_payloads_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(SyntheticSetError, match=why):
        pretrain_set.decode(data, max_images=100)


def test_more_images_than_the_site_accepts_is_refused() -> None:
    data = pretrain_set.encode(np.zeros((5, 8, 8), np.uint8), np.arange(5) % 2, NAMES)
    with pytest.raises(SyntheticSetError, match="more than this site accepts"):
        pretrain_set.decode(data, max_images=4)
    with pytest.raises(SyntheticSetError, match="max_pretrain_images = 0"):
        pretrain_set.decode(data, max_images=0)


def test_a_compressed_bomb_is_refused_before_it_is_unpacked() -> None:
    """A few kilobytes that would unpack to 2 GB: refused on the members' declared sizes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in (("labels.npy", GOOD["labels"]), ("classes.npy", GOOD["classes"])):
            b = io.BytesIO()
            np.save(b, arr)
            zf.writestr(name, b.getvalue())
        with zf.open("images.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "|u1", "fortran_order": False, "shape": (2000, 1000, 1000)})
            block = bytes(1 << 20)
            for _ in range(2000):
                fh.write(block)
    assert len(buf.getvalue()) < 4 << 20
    with pytest.raises(SyntheticSetError, match="unpacks to"):
        pretrain_set.decode(buf.getvalue(), max_images=100)


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, body in members:
            zf.writestr(name, body)
    return buf.getvalue()


def _npy(arr: object) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)  # type: ignore[arg-type]
    return b.getvalue()


def _good_members() -> list[tuple[str, bytes]]:
    return [(f"{k}.npy", _npy(v)) for k, v in GOOD.items()]


def test_an_npy_header_that_claims_more_than_the_member_holds_is_refused() -> None:
    """A 200-byte member whose header declares 10 PB: numpy would allocate the array from the
    header before reading a byte (a MemoryError, not a refusal). The header must agree with
    the member's size."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 1024, 1024)})
    members = [m for m in _good_members() if m[0] != "images.npy"]
    data = _zip([("images.npy", header.getvalue() + bytes(64)), *members])
    with pytest.raises(SyntheticSetError, match="header"):
        pretrain_set.decode(data, max_images=100)


def test_a_compressed_member_is_refused() -> None:
    """The format is np.savez (stored): a deflated member could unpack to far more than the
    bytes that crossed (the byte budget allows ~1 MiB an image), so it is refused."""
    data = _zip(_good_members(), zipfile.ZIP_DEFLATED)
    with pytest.raises(SyntheticSetError, match="compressed"):
        pretrain_set.decode(data, max_images=100)


def test_duplicate_member_names_are_refused() -> None:
    members = _good_members()
    data = _zip([("images.npy", _npy(np.ones((4, 8, 8), np.uint8))), *members])
    with pytest.raises(SyntheticSetError, match="expected exactly"):
        pretrain_set.decode(data, max_images=100)


def test_an_encrypted_member_is_refused_not_a_crash() -> None:
    """zipfile raises RuntimeError (not BadZipFile) on a member flagged encrypted."""
    data = bytearray(pretrain_set.encode(GOOD["images"], GOOD["labels"], NAMES))
    for info in zipfile.ZipFile(io.BytesIO(bytes(data))).infolist():
        data[info.header_offset + 6] |= 1  # local header: general purpose flag, bit 0
    at = data.find(b"PK\x01\x02")
    while at >= 0:  # central directory entries: the same flag
        data[at + 8] |= 1
        at = data.find(b"PK\x01\x02", at + 4)
    with pytest.raises(SyntheticSetError, match="encrypted"):
        pretrain_set.decode(bytes(data), max_images=100)
