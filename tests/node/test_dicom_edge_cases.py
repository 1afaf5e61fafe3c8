"""Real-world DICOM edge cases, one small pydicom-made file each (PS3.3 / PS3.5).

Every case either gives the image the standard defines or is skipped with a reason naming the
file; none may raise anything but :class:`~node.dicom_pixels.SkipFileError`.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from node import dicom_pixels as dp
from node.phantoms import dataset_bytes
from tests.node.test_dicom_pixels import make_ds, roundtrip

RAMP12 = np.tile(np.linspace(0, 4095, 160).round().astype(np.uint16), (160, 1))
"""A left-to-right ramp over the 12-bit range: left dark, right bright when not inverted."""


@pytest.mark.parametrize(("photometric", "shape", "inverted"), [
    ("MONOCHROME2", None, False),
    ("MONOCHROME2", "IDENTITY", False),
    ("MONOCHROME2", "INVERSE", True),  # PS3.3 C.11.6: output after inversion is P-values
    ("MONOCHROME1", None, True),
    ("MONOCHROME1", "INVERSE", True),  # the DX pairing: one inversion, not two
    ("MONOCHROME1", "IDENTITY", True),  # non-conformant: the Photometric Interpretation wins
])
def test_presentation_lut_shape_inverts_once(photometric: str, shape: str | None,
                                             inverted: bool) -> None:
    tags = {} if shape is None else {"PresentationLUTShape": shape}
    out = dp.normalised(roundtrip(make_ds(RAMP12, photometric, **tags)))
    expected = RAMP12 / 4095.0
    assert np.allclose(out, 1.0 - expected if inverted else expected, atol=1e-6)


def _patched(ds: Dataset, old: bytes, new: bytes, name: str = "edge.dcm") -> Dataset:
    """The dataset written, with one byte string replaced (to write what pydicom refuses to)."""
    data = dataset_bytes(ds)
    assert data.count(old) == 1 and len(old) == len(new)
    return dp.dataset_from_bytes(data.replace(old, new), name)


@pytest.mark.parametrize("keyword", ["SamplesPerPixel", "PhotometricInterpretation",
                                     "BitsStored", "PixelRepresentation"])
def test_missing_image_pixel_elements_take_their_defaults(keyword: str) -> None:
    reference = dp.store_pixels(roundtrip(make_ds(RAMP12, bits_stored=16)), 32, "ref")[0]
    ds = make_ds(RAMP12, bits_stored=16)
    delattr(ds, keyword)
    image, _ = dp.store_pixels(roundtrip(ds), 32, "old.dcm")
    assert np.array_equal(image, reference)


def test_photometric_interpretation_in_lower_case_or_padded_is_read() -> None:
    reference = dp.store_pixels(roundtrip(make_ds(RAMP12, "MONOCHROME1")), 32, "ref")[0]
    lower = _patched(make_ds(RAMP12, "MONOCHROME1"), b"MONOCHROME1", b"monochrome1")
    padded = roundtrip(make_ds(RAMP12, "MONOCHROME1"))
    padded.PhotometricInterpretation = " MONOCHROME1"
    for ds in (lower, padded):
        assert np.array_equal(dp.store_pixels(ds, 32, "case.dcm")[0], reference)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_header_number_that_is_not_a_number_is_skipped_naming_the_element() -> None:
    ds = _patched(make_ds(RAMP12, NumberOfFrames="1"), b"\x02\x001 ", b"\x02\x001A")
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(ds, 32, "frames.dcm")
    assert e.value.reason == dp.UNSUPPORTED
    assert "frames.dcm" in e.value.detail and "NumberOfFrames" in e.value.detail
    slope = _patched(make_ds(RAMP12, RescaleSlope="1.50"), b"1.50", b"1,50")
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(slope, 32, "slope.dcm")
    assert e.value.reason == dp.UNSUPPORTED
    assert "slope.dcm" in e.value.detail and "RescaleSlope" in e.value.detail


def test_rescale_slope_zero_is_ignored_and_a_multi_valued_slope_uses_the_first() -> None:
    stored = np.full((160, 160), 100, np.uint16)
    stored[:, 80:] = 300
    # Slope 0 is invalid (a flat image): no rescale, the window applies to stored values.
    zero = make_ds(stored, RescaleSlope="0", RescaleIntercept="1000", WindowCenter="200.5",
                   WindowWidth="401")
    out = dp.normalised(roundtrip(zero))
    assert out[0, 0] == pytest.approx(0.25, abs=1e-3) and out[0, 100] == pytest.approx(0.75,
                                                                                       abs=1e-3)
    multi = make_ds(stored, RescaleSlope=["2", "3"], RescaleIntercept="0",
                    WindowCenter="400.5", WindowWidth="801")
    out = dp.normalised(roundtrip(multi))  # 100 → 200 → 0.25, 300 → 600 → 0.75
    assert out[0, 0] == pytest.approx(0.25, abs=1e-3) and out[0, 100] == pytest.approx(0.75,
                                                                                       abs=1e-3)


def test_huge_declared_size_is_skipped_before_decoding() -> None:
    # A compressed file's header can declare any size; the decoder would allocate it (60000² at
    # 16 bits is 7 GB) before finding that the codestream is 160².
    ds = make_ds(RAMP12)
    ds.compress(RLELossless, RAMP12)
    ds.Rows = ds.Columns = 60000
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(roundtrip(ds), 32, "huge.dcm")
    assert e.value.reason == dp.TOO_LARGE and "60000×60000" in e.value.detail
    assert "huge.dcm" in e.value.detail
    # Uncompressed and under the limit, but the data is cut short: a length mismatch.
    cut = make_ds(RAMP12)
    cut.Rows = cut.Columns = 4000
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(roundtrip(cut), 32, "cut.dcm")
    assert e.value.reason == dp.LENGTH_MISMATCH and "4000×4000" in e.value.detail


@pytest.mark.parametrize("keep", [132, 140, 200])
def test_file_cut_inside_its_file_meta_header_is_truncated(keep: int) -> None:
    data = dataset_bytes(make_ds(RAMP12))
    with pytest.raises(dp.SkipFileError) as e:
        dp.dataset_from_bytes(data[:keep], "cut.dcm")
    assert e.value.reason == dp.TRUNCATED and "cut.dcm" in e.value.detail


# ---------------------------------------------------------------------------------------------
# Cases that were already right, pinned (each assertion fails if the behaviour regresses)


def test_signed_bits_stored_below_allocated_are_sign_extended_and_unsigned_high_bits_masked(
) -> None:
    signed = np.tile(np.linspace(-2048, 2047, 160).round().astype(np.int16), (160, 1))
    ds = make_ds(signed, bits_stored=12)
    ds.PixelData = (signed.astype(np.int32) & 0x0FFF).astype(np.uint16).tobytes()  # 12-bit
    out = dp.normalised(roundtrip(ds))  # two's complement, upper 4 bits left zero
    assert np.allclose(out, (signed + 2048) / 4095.0, atol=1e-6)
    garbage = RAMP12.copy()
    garbage[::2] |= 0xF000  # overlay / garbage bits above Bits Stored (PS3.5 8.1.1)
    ds = make_ds(RAMP12)
    ds.PixelData = garbage.tobytes()
    assert np.allclose(dp.normalised(roundtrip(ds)), RAMP12 / 4095.0, atol=1e-6)


@pytest.mark.parametrize(("keyword", "vr", "dtype"), [("FloatPixelData", "OF", np.float32),
                                                      ("DoubleFloatPixelData", "OD", np.float64)])
def test_float_pixel_data_is_skipped_as_unsupported(keyword: str, vr: str, dtype: type) -> None:
    ds = make_ds(RAMP12)
    del ds.PixelData
    ds.BitsAllocated = np.dtype(dtype).itemsize * 8
    for kw in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, kw)
    ds.add_new(keyword, vr, RAMP12.astype(dtype).tobytes())
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(roundtrip(ds), 32, "float.dcm")
    assert e.value.reason == dp.UNSUPPORTED
    assert "float.dcm" in e.value.detail and keyword in e.value.detail


def _ds_element(tag: int, value: bytes) -> bytes:
    """One explicit VR little endian DS element, byte for byte (pydicom refuses bad DS)."""
    value += b" " * (len(value) % 2)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"DS", len(value)) + value


def _with_window(center: bytes, width: bytes, **tags: Any) -> Dataset:
    """RAMP12 with Window Center (0028,1050) / Width (0028,1051) written as given."""
    data = dataset_bytes(make_ds(RAMP12, WindowCenter="0", WindowWidth="1", **tags))
    for tag, placeholder, value in ((0x00281050, b"0", center), (0x00281051, b"1", width)):
        assert data.count(_ds_element(tag, placeholder)) == 1
        data = data.replace(_ds_element(tag, placeholder), _ds_element(tag, value))
    return dp.dataset_from_bytes(data, "window.dcm")


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(("center", "width", "window"), [
    (b"1000\\3000", b"501 \\4000", (1000.0, 501.0)),  # several windows: the first
    (b" 1000 ", b"501 ", (1000.0, 501.0)),  # spaces around the value
    (b"1e3 ", b"5.01E2", (1000.0, 501.0)),  # exponent notation
    (b"1000\\", b"501\\", (1000.0, 501.0)),  # trailing backslash (an empty second value)
    (b"1000,5", b"501 ", None),  # decimal comma: not a DS, no window
    (b"1000", b"abc ", None),  # not a number
    (b"1000", b"0 ", None),  # width 0
    (b"1000", b"-50 ", None),  # negative width
])
def test_odd_window_values_give_the_first_valid_window_or_min_max(
    center: bytes, width: bytes, window: tuple[float, float] | None
) -> None:
    out = dp.normalised(_with_window(center, width))
    x = RAMP12.astype(np.float64)
    if window is None:  # no usable window: min–max of the image
        expected = (x - x.min()) / (x.max() - x.min())
    else:
        c, w = window
        expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    assert np.allclose(out, expected, atol=1e-5)


def test_voi_lut_functions_sigmoid_and_linear_exact() -> None:
    x = RAMP12.astype(np.float64)
    sigmoid = dp.normalised(_with_window(b"2000", b"800 ", VOILUTFunction="SIGMOID"))
    assert np.allclose(sigmoid, 1 / (1 + np.exp(-4 * (x - 2000) / 800)), atol=1e-5)  # C.11.2.1.3
    exact = dp.normalised(_with_window(b"2000", b"800 ", VOILUTFunction="LINEAR_EXACT"))
    assert np.allclose(exact, np.clip((x - 2000) / 800 + 0.5, 0, 1), atol=1e-5)
    # LINEAR_EXACT and SIGMOID allow a width under 1 (LINEAR does not).
    narrow = dp.normalised(_with_window(b"2000", b"0.5 ", VOILUTFunction="LINEAR_EXACT"))
    assert np.array_equal(narrow, np.clip((x - 2000) / 0.5 + 0.5, 0, 1).astype(np.float32))


def _jpeg_baseline(ramp8: np.ndarray) -> Dataset:
    """An 8-bit JPEG Baseline file, the codestream made by Pillow (pydicom has no encoder)."""
    buf = io.BytesIO()
    Image.fromarray(ramp8).save(buf, "JPEG", quality=95)
    ds = make_ds(ramp8, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def test_transfer_syntaxes_give_the_same_store_image() -> None:
    reference = dp.store_pixels(roundtrip(make_ds(RAMP12)), 32, "ref")[0]
    deflated = make_ds(RAMP12)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    big = make_ds(RAMP12)
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big.PixelData = RAMP12.astype(">u2").tobytes()
    fragmented = []
    for syntax in (RLELossless, JPEG2000Lossless):  # one frame split over 3 fragments
        ds = make_ds(RAMP12)
        ds.compress(syntax, RAMP12)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate([frame], fragments_per_frame=3)
        fragmented.append(ds)
    for ds in (deflated, big, *fragmented):
        read = roundtrip(ds)
        assert read.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert np.array_equal(dp.store_pixels(read, 32, "ts.dcm")[0], reference)
    # Lossy: JPEG 2000 at 10:1 and JPEG Baseline stay within a few grey levels.
    lossy = make_ds(RAMP12)
    lossy.compress(JPEG2000, RAMP12, j2k_cr=[10])
    assert np.abs(dp.store_pixels(roundtrip(lossy), 32, "j2k.dcm")[0].astype(int)
                  - reference).max() <= 2
    ramp8 = (RAMP12 >> 4).astype(np.uint8)
    reference8 = dp.store_pixels(roundtrip(make_ds(ramp8, bits_stored=8)), 32, "ref8")[0]
    jpeg = roundtrip(_jpeg_baseline(ramp8))
    assert jpeg.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert np.abs(dp.store_pixels(jpeg, 32, "jpeg.dcm")[0].astype(int) - reference8).max() <= 2


def test_files_that_are_not_dicom_are_skipped_naming_them(tmp_path: Path) -> None:
    jpg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(jpg, "JPEG")
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(png, "PNG")
    files = {"photo.jpg": jpg.getvalue(), "scan.png": png.getvalue(), "empty.dcm": b"",
             "notes.txt": b"patient list\r\n" * 40, "DI": b"DI",
             "noise.bin": np.random.default_rng(0).bytes(4096), "zeros.dcm": bytes(4096)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(dp.SkipFileError) as e:
            dp.load_file(tmp_path / name, 32, name)
        assert e.value.reason == dp.NOT_DICOM and name in e.value.detail, name


def _modality_lut(descriptor: list[int], data: list[int] | None) -> Dataset:
    from pydicom.sequence import Sequence

    ds = make_ds(RAMP12)
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    if data is not None:
        item.add_new(0x00283006, "US", data)  # LUT Data
    item.ModalityLUTType = "OD"
    ds.ModalityLUTSequence = Sequence([item])
    return roundtrip(ds)


@pytest.mark.parametrize(("descriptor", "data"), [
    ([4096, 0, 16], [1, 2, 3]),  # fewer entries than the descriptor declares
    ([0, 0, 16], list(range(100))),  # 0 declares 65536 entries (PS3.3 C.11.1.1.1)
    ([4096, 0, 16], None),  # no LUT Data at all
    ([4096, 0], list(range(4096))),  # descriptor with two values, not three
])
def test_unusable_modality_lut_sequence_is_skipped_naming_the_file(
    descriptor: list[int], data: list[int] | None
) -> None:
    ds = _modality_lut(descriptor, data)
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(ds, 32, "mlut.dcm")
    assert e.value.reason == dp.UNSUPPORTED
    assert "mlut.dcm" in e.value.detail and "Modality LUT" in e.value.detail


def test_usable_modality_lut_sequence_is_applied() -> None:
    # An inverting modality LUT: high stored values → low modality values (dark).
    ds = _modality_lut([4096, 0, 16], [4095 - i for i in range(4096)])
    dp.check_image(ds, "mlut.dcm")
    assert np.allclose(dp.normalised(ds), 1.0 - RAMP12 / 4095.0, atol=1e-6)


@pytest.mark.parametrize(("sop_class", "intent"), [
    ("1.2.840.10008.5.1.4.1.1.1.1", "FOR PROCESSING"),  # DX SOP class for presentation, but
    ("1.2.840.10008.5.1.4.1.1.1.1.1", "FOR PROCESSING"),  # the series says for processing
    ("1.2.840.10008.5.1.4.1.1.1.2.1", None),  # MG For Processing, intent missing
    ("1.2.840.10008.5.1.4.1.1.1.3.1", None),  # Intra-oral For Processing
])
def test_for_processing_images_are_skipped(sop_class: str, intent: str | None) -> None:
    # PS3.3 C.8.11.1.1.1: FOR PROCESSING images are detector-corrected raw data meant to be
    # processed before display; the FOR PRESENTATION copy of the same exposure is the image.
    tags = {"PresentationIntentType": intent} if intent else {}
    ds = make_ds(RAMP12, **tags)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(roundtrip(ds), 32, "raw.dcm")
    assert e.value.reason == dp.FOR_PROCESSING and "raw.dcm" in e.value.detail


def test_for_presentation_images_are_ingested() -> None:
    ds = make_ds(RAMP12, PresentationIntentType="FOR PRESENTATION")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    assert dp.store_pixels(roundtrip(ds), 32, "dx.dcm")[0].std() > 10


@pytest.mark.parametrize("implicit", [False, True])
def test_a_file_cut_anywhere_in_its_header_is_reported_as_cut(tmp_path: Path,
                                                              implicit: bool) -> None:
    """Every cut between the end of the preamble and the pixel values gives ``truncated``;
    only a cut exactly between two elements (which leaves a shorter, well-formed header) can
    be missing-pixel-data, and then its detail says the file may be cut short."""
    from pydicom.uid import ImplicitVRLittleEndian

    ds = make_ds(RAMP12, WindowCenter="2000", WindowWidth="4000", RescaleSlope="1",
                 RescaleIntercept="0")
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = dataset_bytes(ds)
    pixels = data.index(b"\xe0\x7f\x10\x00")
    path = tmp_path / "cut.dcm"
    wrong = []
    for keep in range(132, pixels + 16):
        path.write_bytes(data[:keep])
        try:
            dp.check_image(dp.read_dataset(path, "cut.dcm"), "cut.dcm")
            wrong.append((keep, "accepted"))
        except dp.SkipFileError as e:
            assert "cut.dcm" in e.detail and "\n" not in e.detail
            if e.reason == dp.MISSING_PIXELS and "cut short" in e.detail:
                continue
            if e.reason != dp.TRUNCATED:
                wrong.append((keep, e.reason))
    assert not wrong, wrong


def _out_of_range_voi_lut() -> Dataset:
    """A VOI LUT whose first mapped value (60000) lies above every 12-bit value, e.g. a
    negative first value written as US: every pixel takes its first entry."""
    from pydicom.sequence import Sequence

    ds = make_ds(RAMP12)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 60000, 16])
    item.add_new(0x00283006, "US", list(range(0, 65536, 16)))
    ds.VOILUTSequence = Sequence([item])
    return roundtrip(ds)


@pytest.mark.parametrize("ds", [
    roundtrip(make_ds(np.full((160, 160), 700, np.uint16))),  # a flat exposure
    roundtrip(make_ds(np.full((160, 160), 0, np.uint16), PixelPaddingValue=0)),  # all padding
    roundtrip(make_ds(RAMP12, WindowCenter="9000", WindowWidth="100")),  # window above all
    _out_of_range_voi_lut(),
], ids=["flat", "all-padding", "window-outside", "voi-lut-outside"])
def test_an_image_that_displays_as_one_grey_level_is_skipped_as_blank(ds: Dataset) -> None:
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(ds, 32, "blank.dcm")
    assert e.value.reason == dp.BLANK and "blank.dcm" in e.value.detail
