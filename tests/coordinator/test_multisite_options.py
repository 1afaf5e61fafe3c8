"""benchmarks/multisite.py's site-shift option: sites rendered as different scanners."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_benchmark

multisite = load_benchmark("multisite")


def test_exposures_parse_by_site_and_refuse_what_is_not_one() -> None:
    names = ["a", "b", "c"]
    assert multisite.parse_exposures("", names) == {}
    assert multisite.parse_exposures("a=0.8, c=1.25", names) == {"a": 0.8, "c": 1.25}
    with pytest.raises(ValueError, match="'d' is not a site"):
        multisite.parse_exposures("d=1.2", names)
    with pytest.raises(ValueError, match="must be a number"):
        multisite.parse_exposures("a=bright", names)
    with pytest.raises(ValueError, match=r"\[0.25, 4\]"):
        multisite.parse_exposures("b=0", names)


def test_exposure_is_a_monotone_intensity_map_that_keeps_black_and_white() -> None:
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert multisite.expose(x, 1.0) is x
    dark, bright = multisite.expose(x, 0.8), multisite.expose(x, 1.25)
    for y in (dark, bright):
        assert y.dtype == np.uint8 and y.shape == x.shape
        assert y.flat[0] == 0 and y.flat[-1] == 255
        assert (np.diff(y.ravel().astype(int)) >= 0).all()
    assert dark.mean() < x.mean() < bright.mean()


def test_a_folder_whose_stores_have_another_exposure_is_refused(tmp_path, capsys) -> None:
    """Stores already written keep their exposure: re-running into them with another one
    would expose the tests but not the GANs' training images."""
    (tmp_path / "sites").mkdir()
    with pytest.raises(SystemExit) as e:
        multisite.main(["--out", str(tmp_path), "--site-exposure", "a=0.8",
                        "--data", str(tmp_path / "absent.npz")])
    assert e.value.code == 2
    assert "written with none, not {'a': 0.8}" in capsys.readouterr().err
