"""Real-world DICOM edge cases, one small pydicom-made file each (PS3.3 / PS3.5).

Every case either gives the image the standard defines or is skipped with a reason naming the
file; none may raise anything but :class:`~node.dicom_pixels.SkipFileError`.
"""

from __future__ import annotations

import numpy as np
import pytest

from node import dicom_pixels as dp
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
