"""Pixel semantics of DICOM → store: the display chain and every header-level skip reason."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from node import dicom_pixels as dp
from node.phantoms import dataset_bytes, render


def make_ds(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
            **tags: Any) -> Dataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    return ds


def roundtrip(ds: Dataset) -> Dataset:
    return dp.dataset_from_bytes(dataset_bytes(ds), "test.dcm")


@pytest.fixture(scope="module")
def image12() -> np.ndarray:
    img = render(np.random.default_rng(3), "Surgical implant", 160)
    return np.rint(img * 4095).astype(np.uint16)


def test_monochrome1_equals_the_same_image_stored_as_monochrome2(image12: np.ndarray) -> None:
    mono2 = roundtrip(make_ds(image12))
    mono1 = roundtrip(make_ds((4095 - image12).astype(np.uint16), "MONOCHROME1"))
    a, _ = dp.store_pixels(mono2, 64, "m2")
    b, _ = dp.store_pixels(mono1, 64, "m1")
    assert np.array_equal(a, b)
    # Bone stays bright: the implant (brightest in the rendering) is bright in both.
    assert a.max() == 255 and b.max() == 255
    # With a window too (LINEAR_EXACT is exactly mirror-symmetric about 2047.5).
    w2 = make_ds(image12, WindowCenter="2047.5", WindowWidth="3000",
                 VOILUTFunction="LINEAR_EXACT")
    w1 = make_ds((4095 - image12).astype(np.uint16), "MONOCHROME1", WindowCenter="2047.5",
                 WindowWidth="3000", VOILUTFunction="LINEAR_EXACT")
    assert np.array_equal(dp.store_pixels(w2, 64, "w2")[0], dp.store_pixels(w1, 64, "w1")[0])
    assert not np.array_equal(dp.store_pixels(w2, 64, "w2")[0], a)  # the window mattered


def test_narrow_voi_window_is_applied() -> None:
    ramp = np.tile(np.linspace(0, 4095, 256).round().astype(np.uint16), (256, 1))
    ds = roundtrip(make_ds(ramp, WindowCenter="2048", WindowWidth="1025"))
    out = dp.normalised(ds)
    x = ramp.astype(np.float64)
    expected = np.clip((x - 2047.5) / 1024 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 LINEAR
    assert np.allclose(out, expected, atol=1e-5)
    assert (out == 0).mean() > 0.3 and (out == 1).mean() > 0.3  # clipped both sides
    no_window = dp.normalised(roundtrip(make_ds(ramp)))
    assert np.allclose(no_window, x / 4095, atol=1e-5)  # min–max when there is no window


def test_first_window_of_several_is_the_one_used() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint16) * 16, (200, 1))
    ds = make_ds(ramp, WindowCenter=[1000, 3000], WindowWidth=[501, 4000])
    out = dp.normalised(ds)
    expected = np.clip((ramp.astype(np.float64) - 999.5) / 500 + 0.5, 0, 1)
    assert np.allclose(out, expected, atol=1e-5)


def test_rescale_slope_intercept_is_applied() -> None:
    stored = np.full((160, 160), 600, np.int16)
    stored[:, 40:80], stored[:, 80:120], stored[:, 120:] = 900, 1050, 2000
    ds = roundtrip(make_ds(stored, bits_stored=16, RescaleSlope="2", RescaleIntercept="-1000",
                           WindowCenter="1000.5", WindowWidth="401"))
    out = dp.normalised(ds)
    modality = stored.astype(np.float64) * 2 - 1000
    expected = np.clip((modality - 1000) / 400 + 0.5, 0, 1)
    assert np.allclose(out, expected, atol=1e-5)
    assert out[0, 100] == pytest.approx(0.75, abs=1e-4)  # 1050 → 1100 → 0.75, not 0.625
    assert out[0, 50] == 0.0  # 900 → 800 is below the window; without rescale it would not be


def test_jpeg2000_and_rle_equal_their_uncompressed_original(image12: np.ndarray,
                                                            tmp_path: Path) -> None:
    plain = make_ds(image12)
    outs = {}
    for name, syntax in (("plain", None), ("rle", RLELossless), ("j2k", JPEG2000Lossless)):
        ds = copy.deepcopy(plain)
        if syntax is not None:
            ds.compress(syntax, image12)
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(dataset_bytes(ds))
        img, _, read = dp.load_file(path, 64)
        assert read.file_meta.TransferSyntaxUID == (syntax or ExplicitVRLittleEndian)
        outs[name] = img
    assert np.array_equal(outs["plain"], outs["rle"])
    assert np.array_equal(outs["plain"], outs["j2k"])


def test_centre_crop_and_antialiased_resize() -> None:
    # Rectangular image: the kept square is the centred one; stripes outside are dropped.
    arr = np.tile(np.linspace(1000, 1100, 200).round().astype(np.uint16), (300, 1))
    arr[:50] = 4000
    arr[-50:] = 0
    img, geom = dp.store_pixels(make_ds(arr, WindowCenter="2048", WindowWidth="4096"), 32, "r")
    assert (geom.top, geom.left, geom.side) == (50, 0, 200)
    # only the centre (1000..1100 → grey 62..69) survives; a stripe would add 0s or 255s
    assert 60 <= img.min() < img.max() <= 71
    # A one-pixel checkerboard must average to grey, not alias to black/white stripes.
    checker = ((np.indices((256, 256)).sum(0) % 2) * 4095).astype(np.uint16)
    out, _ = dp.store_pixels(make_ds(checker), 32, "c")
    assert abs(float(out.mean()) - 127.5) < 3 and out.std() < 3
    assert geom.map_bbox((0, 100, 100, 150)) == (0.0, 8.0, 16.0, 16.0)
    assert geom.map_bbox((0, 0, 100, 40)) is None  # entirely in the cropped-away band


def test_too_small_colour_multiframe_and_missing_pixels_are_skipped() -> None:
    small = make_ds(np.zeros((100, 300), np.uint16))
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(small, 32, "small.dcm")
    assert e.value.reason == dp.TOO_SMALL and "small.dcm" in e.value.detail
    rgb = make_ds(np.zeros((200, 200), np.uint16))
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation = 3, "RGB"
    with pytest.raises(dp.SkipFileError, match="RGB") as e:
        dp.check_image(rgb, "rgb.dcm")
    assert e.value.reason == dp.COLOUR
    multi = make_ds(np.zeros((200, 200), np.uint16))
    multi.NumberOfFrames = 3
    with pytest.raises(dp.SkipFileError) as e:
        dp.check_image(multi, "multi.dcm")
    assert e.value.reason == dp.MULTI_FRAME
    nopix = make_ds(np.zeros((200, 200), np.uint16))
    del nopix.PixelData
    with pytest.raises(dp.SkipFileError) as e:
        dp.check_image(roundtrip(nopix), "nopix.dcm")
    assert e.value.reason == dp.MISSING_PIXELS


def test_rows_columns_disagreeing_with_data_length_is_skipped() -> None:
    ds = make_ds(np.zeros((200, 200), np.uint16))
    ds.Rows = 220
    with pytest.raises(dp.SkipFileError) as e:
        dp.store_pixels(roundtrip(ds), 32, "len.dcm")
    assert e.value.reason == dp.LENGTH_MISMATCH
    assert "220×200" in e.value.detail and "len.dcm" in e.value.detail


def test_truncated_and_not_dicom_files_are_skipped(image12: np.ndarray) -> None:
    data = dataset_bytes(make_ds(image12))
    with pytest.raises(dp.SkipFileError) as e:
        dp.dataset_from_bytes(data[: len(data) * 2 // 3], "cut.dcm")
    assert e.value.reason == dp.TRUNCATED and "cut.dcm" in e.value.detail
    with pytest.raises(dp.SkipFileError) as e:
        dp.dataset_from_bytes(b"%PDF-1.4 this is not an image" * 20, "doc.pdf")
    assert e.value.reason == dp.NOT_DICOM


def test_syntax_without_decoder_is_skipped_as_no_codec(
    image12: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_ds(image12)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    with pytest.raises(dp.SkipFileError) as e:
        dp.check_image(ds, "video.dcm")
    assert e.value.reason == dp.NO_CODEC and "MPEG2" in e.value.detail
    # A normally supported syntax whose plugin is not installed (simulated).
    j2k = copy.deepcopy(make_ds(image12))
    j2k.compress(JPEG2000Lossless, image12)
    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "get_decoder",
                        lambda uid: SimpleNamespace(is_available=False))
    with pytest.raises(dp.SkipFileError) as e:
        dp.check_image(j2k, "j2k.dcm")
    assert e.value.reason == dp.NO_CODEC and "JPEG 2000" in e.value.detail


def test_voi_lut_sequence_takes_precedence_over_window() -> None:
    from pydicom.sequence import Sequence

    arr = np.tile(np.arange(256, dtype=np.uint16), (160, 1))
    ds = make_ds(arr, bits_stored=8, WindowCenter="128", WindowWidth="256")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = [255 - i for i in range(256)]  # an inverting display curve
    ds.VOILUTSequence = Sequence([item])
    out = dp.normalised(ds)
    assert out[0, 0] == pytest.approx(1.0) and out[0, 255] == pytest.approx(0.0)


def test_unusable_window_falls_back_to_min_max() -> None:
    ramp = np.tile(np.linspace(100, 3000, 200).round().astype(np.uint16), (160, 1))
    ds = make_ds(ramp, WindowCenter="1000", WindowWidth="0")  # width 0: invalid
    out = dp.normalised(ds)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    assert np.allclose(out, (ramp - 100.0) / 2900.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Review fixes: VOI LUT usability and scaling, padding, LINEAR width 1, odd syntaxes, rescale


def _voi_item(descriptor: list[int], data: Any, vr: str | None = None) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    if vr is None:
        item.LUTData = data
    else:
        item.add_new(0x00283006, vr, data)  # LUT Data as raw words/bytes
    return item


def _with_voi_lut(ds: Dataset, item: Dataset) -> Dataset:
    from pydicom.sequence import Sequence

    ds.VOILUTSequence = Sequence([item])
    return ds


RAMP8 = np.tile(np.arange(256, dtype=np.uint16), (160, 1))


@pytest.mark.parametrize("item", [
    _voi_item([256, 0, 8], [77] * 256),  # flat: every entry equal
    _voi_item([256, 0, 8], [1, 2, 3]),  # fewer entries than declared
    _voi_item([256, 0, 16], b"\x01\x02\x03", "OW"),  # odd byte count for 16-bit words
])
def test_unusable_voi_lut_falls_back_to_a_real_min_max(item: Dataset) -> None:
    ds = _with_voi_lut(make_ds(RAMP8, bits_stored=8), item)
    out = dp.normalised(ds)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)  # not a blank (all-1) image
    assert np.allclose(out, RAMP8 / 255.0, atol=1e-6)
    assert dp.voi_lut(ds) is None


def test_voi_lut_is_normalised_by_its_declared_bit_depth() -> None:
    half = _with_voi_lut(make_ds(RAMP8, bits_stored=8),
                         _voi_item([256, 0, 8], [i // 2 for i in range(256)]))
    out = dp.normalised(half)
    assert out.max() == pytest.approx(127 / 255) and out.min() == 0.0  # not stretched to 1
    # A table exceeding 2^bits − 1 (vendor error) is scaled by its own maximum instead.
    over = _with_voi_lut(make_ds(RAMP8, bits_stored=8),
                         _voi_item([256, 0, 8], [4 * i for i in range(256)]))
    assert np.allclose(dp.normalised(over), RAMP8 / 255.0, atol=1e-6)


def test_8_bit_voi_lut_entries_in_16_bit_words_and_in_bytes() -> None:
    entries = np.arange(255, -1, -1, dtype=np.uint16)  # inverting curve
    words = _with_voi_lut(make_ds(RAMP8, bits_stored=8),
                          _voi_item([256, 0, 8], entries.astype("<u2").tobytes(), "OW"))
    expected = (255 - RAMP8) / 255.0
    assert np.allclose(dp.normalised(roundtrip(words)), expected, atol=1e-6)
    packed = _with_voi_lut(make_ds(RAMP8, bits_stored=8),
                           _voi_item([256, 0, 8], entries.astype(np.uint8).tobytes(), "OB"))
    assert np.allclose(dp.normalised(packed), expected, atol=1e-6)


def test_linear_window_of_width_one_is_a_step_at_c_minus_half() -> None:
    arr = np.tile(np.arange(95, 105, dtype=np.uint16), (160, 16))
    out = dp.normalised(make_ds(arr, WindowCenter="100.5", WindowWidth="1"))
    assert np.array_equal(out, np.where(arr > 100, 1.0, 0.0).astype(np.float32))


def test_pixel_padding_is_excluded_from_min_max_and_shown_black() -> None:
    inner = np.tile(np.linspace(0, 1000, 128).round().astype(np.int16), (128, 1))
    arr = np.full((160, 160), -2000, np.int16)
    arr[16:144, 16:144] = inner
    expected = np.zeros((160, 160))
    expected[16:144, 16:144] = inner / 1000.0
    ds = roundtrip(make_ds(arr, bits_stored=16, PixelPaddingValue=-2000))
    assert np.allclose(dp.normalised(ds), expected, atol=1e-6)
    # MONOCHROME1: the image is inverted, the padding stays black.
    mono1 = roundtrip(make_ds(arr, "MONOCHROME1", bits_stored=16, PixelPaddingValue=-2000))
    expected1 = np.where(expected > 0, 1.0 - expected, 0.0)
    expected1[16:144, 16:144] = 1.0 - inner / 1000.0
    assert np.allclose(dp.normalised(mono1), expected1, atol=1e-6)
    # A padding range [value, limit] (here a noisy border) is excluded as a whole.
    noisy = arr.copy()
    noisy[:16] = -1990
    rng = make_ds(noisy, bits_stored=16, PixelPaddingValue=-2000, PixelPaddingRangeLimit=-1900)
    assert np.allclose(dp.normalised(roundtrip(rng)), expected, atol=1e-6)
    assert dp.store_pixels(ds, 32, "pad")[0][0, 0] == 0


def test_file_without_meta_header_decodes(image12: np.ndarray, tmp_path: Path) -> None:
    reference = dp.store_pixels(make_ds(image12), 32, "ref")[0]
    for implicit in (True, False):
        ds = make_ds(image12)
        del ds.file_meta
        path = tmp_path / f"bare-{implicit}.dcm"
        ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        assert b"DICM" not in path.read_bytes()[:132]
        image, _, read = dp.load_file(path, 32)
        assert np.array_equal(image, reference)
        assert read.file_meta.TransferSyntaxUID.is_implicit_VR is implicit


def test_private_transfer_syntax_is_skipped_as_no_codec(image12: np.ndarray) -> None:
    ds = make_ds(image12)
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.99.1.2")
    with pytest.raises(dp.SkipFileError) as e:
        dp.check_image(ds, "private.dcm")
    assert e.value.reason == dp.NO_CODEC
    assert "1.2.826.0.1.3680043.99.1.2" in e.value.detail and "private.dcm" in e.value.detail


def test_empty_modality_lut_sequence_does_not_stop_the_rescale() -> None:
    from pydicom.sequence import Sequence

    stored = np.full((160, 160), 100, np.uint16)
    stored[:, 80:] = 300
    ds = make_ds(stored, RescaleSlope="2", WindowCenter="400.5", WindowWidth="801")
    ds.ModalityLUTSequence = Sequence([])
    out = dp.normalised(ds)  # 100 → 200 → 0.25, 300 → 600 → 0.75 (intercept missing = 0)
    assert out[0, 0] == pytest.approx(0.25, abs=1e-3) and out[0, 100] == pytest.approx(0.75,
                                                                                       abs=1e-3)
