"""The second round's payload: the other sites' synthetic images, as one npz that crosses to a site.

Why a format of its own: after round 1 the coordinator holds every site's verified bundle, and
their synthetic images are shareable by design (DESIGN §2). In round 2 it sends each site the
images of the *other* sites, so the site can pretrain its GAN on them before fine-tuning on its
own real images (:mod:`node.training.init_from`). The coordinator builds the payload only from
verified bundles (:func:`coordinator.pipeline.round2_payloads`), so no real image of any site
can be in it; the site still treats every byte as hostile, because a coordinator may be
compromised.

Layout: an uncompressed npz (``np.savez``) of exactly three members::

    images.npy    uint8 (N, H, W)
    labels.npy    int64 (N,)  class ids into classes
    classes.npy   unicode (K,)  the class names, in id order

No pickles (``allow_pickle=False``), no compression; each member's declared size is checked
against the byte cap, and its npy header against the member's size, before any array is
allocated, so a small message cannot make a site allocate gigabytes.

>>> import numpy as np
>>> data = encode(np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), ["normal", "abnormal"])
>>> x, y, names = decode(data, max_images=10)
>>> x.shape, y.tolist(), names
((2, 4, 4), [0, 1], ['normal', 'abnormal'])
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import SyntheticSetError

MEMBERS = ("images.npy", "labels.npy", "classes.npy")
"""The only members a payload may hold."""

MAX_SIDE = 1024
"""Largest image side a payload may carry (the largest model resolution is 512)."""

MAX_CLASSES = 64


def encode(images: npt.NDArray[np.uint8], labels: Any, class_names: list[str]) -> bytes:
    """The payload's bytes (the coordinator's side)."""
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise SyntheticSetError(f"a pretraining set needs uint8 (N, H, W) images and N labels, "
                                f"got {images.dtype} {images.shape} and {labels.shape}")
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, classes=np.asarray(class_names, dtype=str))
    return buf.getvalue()


def decode(data: bytes, *, max_images: int,
           ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], list[str]]:
    """(images, labels, class names) from a payload, or :class:`SyntheticSetError` saying what
    is wrong (the site's side: nothing in ``data`` is trusted)."""
    if max_images < 1:
        raise SyntheticSetError("this site accepts no pretraining images (site policy "
                                "max_pretrain_images = 0)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise SyntheticSetError(f"pretraining set is not an npz file ({exc})") from None
    listed = sorted(i.filename for i in zf.infolist())  # a duplicate name counts twice
    if listed != sorted(MEMBERS):
        raise SyntheticSetError(f"pretraining set holds {listed[:8]}, expected exactly "
                                f"{list(MEMBERS)}")
    budget = max_images * (MAX_SIDE * MAX_SIDE + 8) + MAX_CLASSES * 4 * 256 + 4096
    total = sum(i.file_size for i in infos.values())
    if total > budget:
        raise SyntheticSetError(f"pretraining set unpacks to {total} bytes, more than "
                                f"{max_images} images can take (site policy "
                                "max_pretrain_images)")
    arrays: dict[str, Any] = {}
    for name in MEMBERS:
        info = infos[name]
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            # np.savez stores; a deflated member could unpack to far more than crossed.
            raise SyntheticSetError(f"pretraining set: {name} is compressed; the format is an "
                                    "uncompressed npz (np.savez)")
        if info.flag_bits & 0x1:
            raise SyntheticSetError(f"pretraining set: {name} is encrypted; the format is a "
                                    "plain npz (np.savez)")
        try:
            with zf.open(info) as fh:
                _check_header(fh, name, info.file_size)
            with zf.open(info) as fh:
                arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise SyntheticSetError(f"pretraining set: {name} is unreadable ({exc})") from None
    images, labels, classes = (arrays[m] for m in MEMBERS)
    if images.dtype != np.uint8 or images.ndim != 3 or not 0 < images.shape[1] <= MAX_SIDE \
            or images.shape[1] != images.shape[2]:
        raise SyntheticSetError(f"pretraining set: images must be uint8 (N, S, S) with S ≤ "
                                f"{MAX_SIDE}, got {images.dtype} {images.shape}")
    if len(images) > max_images:
        raise SyntheticSetError(f"pretraining set has {len(images)} images, more than this "
                                f"site accepts ({max_images}, site policy max_pretrain_images)")
    if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
        raise SyntheticSetError(f"pretraining set: labels must be {len(images)} integers, got "
                                f"{labels.dtype} {labels.shape}")
    if classes.dtype.kind != "U" or classes.ndim != 1 or not 2 <= len(classes) <= MAX_CLASSES:
        raise SyntheticSetError(f"pretraining set: classes must be 2..{MAX_CLASSES} names, got "
                                f"{classes.dtype} {classes.shape}")
    names = [str(c) for c in classes]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise SyntheticSetError(f"pretraining set: labels outside 0..{len(names) - 1}")
    return images, labels.astype(np.int64), names


def _check_header(fh: Any, name: str, size: int) -> None:
    """Refuse a member whose npy header declares more bytes than the member holds: numpy
    allocates the whole array from the header before reading any data, so a 200-byte member
    claiming (10⁷, 1024, 1024) would otherwise be a MemoryError, not a refusal."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise SyntheticSetError(f"pretraining set: {name} has npy format {version}, "
                                "expected 1.0 or 2.0")
    if dtype.hasobject:
        raise SyntheticSetError(f"pretraining set: {name} is unreadable (it holds Python "
                                "objects: a pickle)")
    claimed = math.prod(int(d) for d in shape) * dtype.itemsize
    if claimed != size - fh.tell():
        raise SyntheticSetError(f"pretraining set: {name}'s header declares {claimed} bytes of "
                                f"data, the member holds {size - fh.tell()}")


__all__ = ["MEMBERS", "decode", "encode"]
