"""Issue 11 findings 6 and 7 at the site: burned-in text, compressed frames that lie about
their size, pictures in formats import-png does not document or that would inflate beyond
one radiograph, and error messages that would carry a patient's folder name off the site."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node import dicom_pixels as dp
from node.federation import scrub_paths
from tests.node.test_dicom_pixels import make_ds


# -- burned-in annotation ----------------------------------------------------------------------
def test_burned_in_annotation_is_skipped_unless_the_admin_allows_it() -> None:
    ds = make_ds(np.zeros((200, 200), np.uint16), BurnedInAnnotation="YES")
    with pytest.raises(dp.SkipFileError) as err:
        dp.check_image(ds, "IMG1.dcm")
    assert err.value.reason == "burned-in-annotation"
    assert err.value.detail == ("IMG1.dcm: BurnedInAnnotation is YES (identifying text may be "
                                "part of the pixels); skipped unless --allow-burned-in")
    dp.check_image(ds, "IMG1.dcm", allow_burned_in=True)
    dp.check_image(make_ds(np.zeros((200, 200), np.uint16), BurnedInAnnotation="NO"), "x")


def test_ingest_skips_burned_in_files_and_retries_them_when_allowed(tmp_path: Path) -> None:
    from node.ingest import preprocess

    src = tmp_path / "dicom"
    src.mkdir()
    rows = ["image_id,lesion_type"]
    rng = np.random.default_rng(0)
    for i in range(4):
        ds = make_ds(rng.integers(0, 4000, (160, 160)).astype(np.uint16),
                     PatientID=f"P{i}", **({"BurnedInAnnotation": "YES"} if i == 0 else {}))
        ds.save_as(src / f"img{i}.dcm", enforce_file_format=True)
        rows.append(f"img{i},No finding")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    report = preprocess(src, tmp_path / "labels.csv", tmp_path / "site", size=32, workers=1,
                        progress=False, min_side=32)
    assert report["accepted"] == 3
    assert report["skipped_files"] == [{
        "file": "img0.dcm", "reason": "burned-in-annotation",
        "detail": "img0.dcm: BurnedInAnnotation is YES (identifying text may be part of the "
                  "pixels); skipped unless --allow-burned-in"}]
    again = preprocess(src, tmp_path / "labels.csv", tmp_path / "site", size=32, workers=1,
                       progress=False, min_side=32, allow_burned_in=True)
    assert again["accepted"] == 1 and again["skipped"] == 0


# -- compressed frames that declare another size --------------------------------------------------
def _jpeg_header(rows: int, cols: int) -> bytes:
    sof = b"\xff\xc1" + struct.pack(">HBHHB", 11, 12, rows, cols, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 4) + b"JF" + sof + b"\xff\xd9"


def _j2k_header(rows: int, cols: int) -> bytes:
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, cols, rows, 0, 0, cols, rows, 0, 0, 1)
    return b"\xff\x4f\xff\x51" + siz + b"\x0b\x01\x01"


@pytest.mark.parametrize("frame, rows, cols", [
    (_jpeg_header(60000, 60000), 60000, 60000), (_j2k_header(40000, 50000), 40000, 50000)])
def test_codestream_size_is_read_from_the_frame_header(frame: bytes, rows: int,
                                                       cols: int) -> None:
    assert dp.codestream_size(frame) == (rows, cols)


@pytest.mark.parametrize("frame, reason", [
    (_jpeg_header(60000, 60000), "the compressed frame declares 60000×60000 px, over the"),
    (_jpeg_header(512, 300), "the compressed frame declares 512×300 px but Rows×Columns is "
                             "256×256"),
])
def test_a_compressed_frame_that_lies_about_its_size_is_not_decoded(frame: bytes,
                                                                    reason: str) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGExtended12Bit

    ds = make_ds(np.zeros((256, 256), np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    with pytest.raises(dp.SkipFileError) as err:
        dp.check_image(ds, "f.dcm")
    assert reason in err.value.detail
    assert err.value.reason in ("too-large", "frame-size-mismatch")


# -- import-png ---------------------------------------------------------------------------------
def _png_declaring(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG header declaring ``width × height`` (the data is one row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


def test_import_png_reads_only_its_documented_formats_and_skips_bombs(tmp_path: Path) -> None:
    from node.importers import import_png

    d = tmp_path / "png"
    d.mkdir()
    img = np.random.default_rng(0).integers(0, 255, (160, 160), dtype=np.uint8)
    Image.fromarray(img).save(d / "good.png")
    Image.fromarray(img).save(d / "gif_as.png", format="GIF")  # a GIF named .png
    Image.fromarray(img).save(d / "bmp.bmp", format="BMP")     # not a documented format
    (d / "bomb.png").write_bytes(_png_declaring(20000, 20000))  # Pillow's bomb error
    (d / "big.png").write_bytes(_png_declaring(10000, 10000))   # over Pillow's warning line
    names = ["good", "gif_as", "bmp", "bomb", "big"]
    (tmp_path / "l.csv").write_text("image_id,label\n" + "".join(f"{n},0\n" for n in names))
    report = import_png(d, tmp_path / "l.csv", tmp_path / "site", size=32, progress=False)
    assert report["accepted"] == 1
    why = {Path(s["file"]).stem: (s["reason"], s["detail"]) for s in report["skipped_files"]}
    assert why["gif_as"] == ("not-image", "gif_as.png: not a PNG/JPEG/TIFF image (the formats "
                                          "import-png reads)")
    assert why["bmp"][0] == "not-image"
    assert why["bomb"][0] == "too-large" and "bomb.png" in why["bomb"][1]
    assert why["big"][0] == "too-large"


# -- error text leaving the site -----------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("/data/St Marys Hospital/Smith John/IMG1.dcm: not DICOM",
     "<path>: not DICOM"),
    ("cannot read /data/St Marys Hospital/Smith John/IMG 1.dcm; skipped",
     "cannot read <path>; skipped"),
    (r"C:\PACS\Smith John\study 2\IMG1.dcm is truncated", "<path> is truncated"),
    ("/srv/site a/store: no test images (see /srv/site a/store/manifest.json)",
     "<path>: no test images (see <path>)"),
])
def test_scrubbing_hides_paths_with_spaces_completely(text: str, expected: str) -> None:
    assert scrub_paths(text) == expected
    assert "Smith" not in scrub_paths(text) and "Marys" not in scrub_paths(text)


HOSTILE_JSON = {"huge-int": '{"request": ' + "1" * 5000 + "}", "deep": "[" * 100_000,
                "twice": '{"request": {}, "request": {"action": "evaluate"}}'}


@pytest.mark.parametrize("label", sorted(HOSTILE_JSON))
def test_a_request_that_is_not_plain_json_is_refused_by_name(label: str,
                                                            tmp_path: Path) -> None:
    """A coordinator's request file or JSON field with an integer over 4300 digits (a bare
    ValueError) or deep nesting (RecursionError) was a traceback, not a refusal."""
    from node.federation import _json_field, answer_request_file
    from shared.errors import RequestRefusedError

    request = tmp_path / "request.json"
    request.write_text(HOSTILE_JSON[label])
    with pytest.raises(RequestRefusedError, match=r"request\.json: not a readable evaluation"):
        answer_request_file(request, tmp_path)
    with pytest.raises(RequestRefusedError, match="gan-config: "):
        _json_field({"gan-config": HOSTILE_JSON[label]}, "gan-config")
