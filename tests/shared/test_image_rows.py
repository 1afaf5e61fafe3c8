"""Images read by row from an .npy on disk: the same rows as the array, and a damaged file
refused by name before training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import SyntheticSetError
from shared.image_rows import ArrayImageRows, NpyImageRows, image_rows


def _saved(tmp_path: Path, n: int = 40) -> tuple[Path, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (n, 5, 7), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path, images


def test_any_rows_in_any_order_match_the_array(tmp_path: Path) -> None:
    path, images = _saved(tmp_path)
    rows = NpyImageRows(path)
    assert rows.shape == images.shape and len(rows) == 40
    rng = np.random.default_rng(1)
    for idx in (np.arange(40), rng.permutation(40), rng.integers(0, 40, 64),
                np.array([7, 7, 8, 9, 3]), np.array([], np.int64)):
        got = rows.take(idx)
        assert got.shape == (len(idx), 5, 7) and np.array_equal(got, images[idx])
    assert np.array_equal(np.concatenate(list(rows.chunks(16))), images)
    with pytest.raises(IndexError):
        rows.take(np.array([40]))


def test_a_whole_file_memory_map_is_read_from_the_file_and_a_view_is_not(tmp_path: Path) -> None:
    path, images = _saved(tmp_path)
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(image_rows(mapped), NpyImageRows)
    for view in (mapped[::-1], mapped[3:], images):
        rows = image_rows(view)
        assert isinstance(rows, ArrayImageRows)
        assert np.array_equal(rows.take(np.array([0, 2])), np.asarray(view)[[0, 2]])


def test_a_cut_short_or_wrong_typed_file_is_refused_naming_it(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SyntheticSetError, match=r"images\.npy.*cut short"):
        NpyImageRows(path)
    other = tmp_path / "float.npy"
    np.save(other, np.zeros((2, 3, 3), np.float32))
    with pytest.raises(SyntheticSetError, match=r"float\.npy.*uint8"):
        NpyImageRows(other)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(SyntheticSetError, match=r"junk\.npy.*not a readable"):
        NpyImageRows(junk)
