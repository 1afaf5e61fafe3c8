"""Images by row, from memory or from an ``.npy`` file on disk, for training that streams.

Why: the coordinator's pooled set grows with the consortium (100 sites × 2,000 images is
200,000 images; at 256² that is 13 GB). The CNN needs one batch at a time, so the pool stays
on disk (``pooled/images.npy``) and :class:`NpyImageRows` reads just the rows of a batch with
``os.pread``. It deliberately does not index a memory map: every page a map touches stays
mapped, so one shuffled epoch would pull the whole pool into the process's resident memory,
which is exactly what streaming is meant to avoid.

>>> import tempfile, numpy as np
>>> path = Path(tempfile.mkdtemp()) / "images.npy"
>>> np.save(path, np.arange(24, dtype=np.uint8).reshape(6, 2, 2))
>>> rows = NpyImageRows(path)
>>> len(rows), rows.take(np.array([5, 0]))[:, 0, 0].tolist()
(6, [20, 0])
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from shared.errors import SyntheticSetError


class ImageRows(Protocol):
    """(N, H, W) uint8 images that can hand out any rows by index."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __len__(self) -> int: ...

    def take(self, idx: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]: ...


class ArrayImageRows:
    """Rows of an array already in memory (the small sets: a site's own images, tests)."""

    def __init__(self, images: npt.NDArray[np.uint8]) -> None:
        self.images = images
        self.shape: tuple[int, ...] = tuple(images.shape)
        self.dtype: np.dtype[Any] = images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
        return np.ascontiguousarray(self.images[idx])


class NpyImageRows:
    """Rows of a uint8 (N, H, W) C-order ``.npy`` file, read on demand (never memory-mapped).

    The header is parsed with NumPy's own reader (no pickle) and the file's size is checked
    against it, so a truncated pool fails here, naming the file, not in the middle of an epoch.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                self.offset = fh.tell()
        except (OSError, ValueError) as exc:
            raise SyntheticSetError(
                f"{self.path}: not a readable .npy image file ({exc})") from None
        if dtype != np.uint8 or fortran or len(shape) != 3:
            raise SyntheticSetError(f"{self.path}: need uint8 (N, H, W) in C order, got {dtype} "
                                    f"{shape}{' Fortran order' if fortran else ''}")
        self.shape: tuple[int, ...] = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.dtype: np.dtype[Any] = np.dtype(np.uint8)
        self.row_bytes = self.shape[1] * self.shape[2]
        size = self.path.stat().st_size
        if size != self.offset + self.shape[0] * self.row_bytes:
            raise SyntheticSetError(f"{self.path}: {size} bytes, but its header promises "
                                    f"{self.shape[0]} images of {self.shape[1]}×{self.shape[2]}"
                                    " (cut short?)")

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.uint8]:
        """The rows ``idx`` in that order: one ``pread`` per run of consecutive rows."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row index out of range 0..{self.shape[0] - 1}")
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(idx), self.row_bytes)
        order = np.argsort(idx, kind="stable")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start, stop in _runs(idx[order]):
                first = int(idx[order[start]])
                n = stop - start
                data = os.pread(fd, n * self.row_bytes, self.offset + first * self.row_bytes)
                if len(data) != n * self.row_bytes:
                    raise SyntheticSetError(f"{self.path}: short read (file changed?)")
                flat[order[start:stop]] = np.frombuffer(data, np.uint8).reshape(n, -1)
        finally:
            os.close(fd)
        return out

    def chunks(self, size: int) -> Iterator[npt.NDArray[np.uint8]]:
        """Consecutive blocks of at most ``size`` rows, in file order."""
        for i in range(0, len(self), size):
            yield self.take(np.arange(i, min(i + size, len(self))))


def _runs(sorted_idx: npt.NDArray[np.int64]) -> Iterator[tuple[int, int]]:
    """(start, stop) positions of the runs of consecutive values in a sorted array (a repeated
    row starts a new run, so every run is one contiguous block of the file)."""
    bounds = [0, *(np.flatnonzero(np.diff(sorted_idx) != 1) + 1).tolist(), len(sorted_idx)]
    yield from ((a, b) for a, b in pairwise(bounds) if b > a)


def image_rows(images: Any) -> ImageRows:
    """Rows for ``images``: a whole ``.npy`` opened with ``np.load(mmap_mode="r")`` is read
    from its file (see the module's docstring); any other array is used as it is."""
    if isinstance(images, NpyImageRows | ArrayImageRows):
        return images
    if (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
            and images.filename and images.flags.c_contiguous):
        rows = NpyImageRows(Path(images.filename))
        if rows.shape == images.shape and rows.offset == images.offset:
            return rows
    return ArrayImageRows(np.asarray(images))
