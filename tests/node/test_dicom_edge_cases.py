"""Real-world DICOM edge cases, one small pydicom-made file each (PS3.3 / PS3.5).

Every case either gives the image the standard defines or is skipped with a reason naming the
file; none may raise anything but :class:`~node.dicom_pixels.SkipFileError`.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

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
