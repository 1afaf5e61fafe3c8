"""A labelled set of synthetic images: what `node generate` writes and everything after reads.

On disk (a folder)::

    images.npy        uint8 (N, H, W), never pickled
    labels.csv        index,label,class_name
    set.json          class names, class mode, provenance (generator run, seed, ψ, filter)
    teacher.npy       optional float32 (N, classes): the site classifier's probabilities for
                      each image (soft "teacher" labels, see ``SyntheticSet.soft``)

Pixel convention everywhere in synthlearn: uint8 0–255 on disk, float in [-1, 1] in tensors
(``to_tensor_range``/``from_tensor_range``), bone bright.

>>> import tempfile, numpy as np
>>> s = SyntheticSet(np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), ["normal", "abnormal"])
>>> d = Path(tempfile.mkdtemp()) / "set"
>>> s.save(d); SyntheticSet.load(d).labels.tolist()
[0, 1]
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import SyntheticSetError
from shared.files import atomic_write_bytes


def to_tensor_range(images: Any) -> Any:
    """uint8 0–255 → float32 in [-1, 1]: the one place the model range is defined.

    Takes a NumPy array or a torch tensor (same type back), so the GAN loop, DP-SGD, the
    encoders and the CNN all convert alike. Shapes are unchanged.

    >>> to_tensor_range(np.array([0, 255], dtype=np.uint8)).tolist()
    [-1.0, 1.0]
    """
    if hasattr(images, "float"):  # a torch tensor (no torch import here: numpy users)
        return images.float() / 127.5 - 1.0
    return np.asarray(images).astype(np.float32) / 127.5 - 1.0


def from_tensor_range(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """float in [-1, 1] → uint8 0–255 (clipped, rounded)."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_u8(images: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    """uint8 (N, S, S) → uint8 (N, size, size): bilinear, antialiased when shrinking, in
    chunks to bound memory. The one resize for images that come from elsewhere (a site's
    test split for a CNN of another input size, a round-2 pretraining set of another size)."""
    import torch
    from torch.nn import functional as F

    out = []
    for i in range(0, len(images), 256):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + 256])).float().unsqueeze(1)
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[-1])
        out.append(y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size), np.uint8)


@dataclass
class SyntheticSet:
    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    soft: npt.NDArray[np.float32] | None = None
    """Optional teacher labels: per image, the probabilities the site's classifier S (trained
    on the site's real images; under DP with DP-SGD inside the run's ε) gives each class.
    Post-processing of S, so they cost no extra privacy. The pooled CNN can learn from them
    (distilling every site's real-data classifier) instead of from the hard labels alone."""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.soft is not None:
            self.soft = check_soft_labels(self.soft, len(self.labels), len(self.class_names))
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise SyntheticSetError(f"images must be uint8 (N, H, W), got {self.images.dtype} "
                                    f"{self.images.shape}")
        if len(self.images) != len(self.labels):
            raise SyntheticSetError(
                f"{len(self.images)} images but {len(self.labels)} labels"
            )
        n_classes = len(self.class_names)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= n_classes):
            raise SyntheticSetError("a label is outside the class list")

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {n: int((self.labels == i).sum()) for i, n in enumerate(self.class_names)}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, self.images, allow_pickle=False)
        atomic_write_bytes(folder / "images.npy", buf.getvalue())
        self.save_labels(folder)

    def save_labels(self, folder: Path) -> None:
        """Everything but ``images.npy`` (labels, teacher labels, set.json): for a writer that
        streams the images to ``images.npy`` itself (the coordinator's pool)."""
        folder.mkdir(parents=True, exist_ok=True)
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["index", "label", "class_name"])
        for i, lab in enumerate(self.labels.tolist()):
            w.writerow([i, lab, self.class_names[lab]])
        atomic_write_bytes(folder / "labels.csv", out.getvalue().encode())
        if self.soft is not None:
            buf = io.BytesIO()
            np.save(buf, self.soft, allow_pickle=False)
            atomic_write_bytes(folder / "teacher.npy", buf.getvalue())
        elif (folder / "teacher.npy").exists():
            (folder / "teacher.npy").unlink()
        meta = {"class_names": self.class_names, "count": len(self), "info": self.info}
        atomic_write_bytes(folder / "set.json", (json.dumps(meta, indent=2) + "\n").encode())

    @classmethod
    def load(cls, folder: Path, *, on_disk: bool = False) -> SyntheticSet:
        """Read a set; ``on_disk`` leaves the images in the file (a read-only memory map that
        :mod:`shared.cnn_train` reads batch by batch) instead of loading them all."""
        for name in ("images.npy", "labels.csv", "set.json"):
            if not (folder / name).exists():
                raise SyntheticSetError(
                    f"{folder / name}: missing; run `synthlearn node generate` first"
                )
        meta = json.loads((folder / "set.json").read_text())
        images = np.load(folder / "images.npy", allow_pickle=False,
                         mmap_mode="r" if on_disk else None)
        with (folder / "labels.csv").open(newline="") as fh:
            labels = np.array([int(r["label"]) for r in csv.DictReader(fh)], dtype=np.int64)
        soft = None
        if (folder / "teacher.npy").exists():
            try:
                soft = np.load(folder / "teacher.npy", allow_pickle=False)
            except ValueError as exc:
                raise SyntheticSetError(f"{folder / 'teacher.npy'}: unreadable ({exc})") from None
        try:
            return cls(images, labels, list(meta["class_names"]), dict(meta.get("info", {})),
                       soft=soft)
        except SyntheticSetError as exc:
            raise SyntheticSetError(f"{folder}: {exc}") from None


def load_matching(folder: Path, class_names: list[str], size: int) -> SyntheticSet:
    """Load a set that must fit a site (same class names, ``size``² images), or say why not.

    For sets a site receives (a pooled set sent back, another site's images): every error is a
    :class:`SyntheticSetError` naming the folder and what differs.
    """
    try:
        syn = SyntheticSet.load(folder)
    except SyntheticSetError:
        raise
    except (ValueError, OSError, KeyError) as exc:
        raise SyntheticSetError(f"{folder}: unreadable synthetic set ({exc})") from None
    if list(syn.class_names) != list(class_names):
        raise SyntheticSetError(f"{folder}: classes {syn.class_names} differ from this site's "
                                f"{class_names}")
    if syn.images.shape[1:] != (size, size):
        raise SyntheticSetError(f"{folder}: images are {syn.images.shape[1]}×"
                                f"{syn.images.shape[2]}, this site's store is {size}×{size}")
    return syn


def check_soft_labels(soft: Any, n: int, n_classes: int) -> npt.NDArray[np.float32]:
    """Teacher probabilities as float32 (n, n_classes), finite, in [0, 1], rows summing to 1.

    They may come from another site's bundle, so every property is checked, not assumed.
    """
    arr = np.asarray(soft)
    if arr.dtype.kind != "f" or arr.shape != (n, n_classes):
        raise SyntheticSetError(
            f"teacher labels must be float ({n}, {n_classes}), got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise SyntheticSetError("teacher labels must be finite probabilities in [0, 1]")
    if n and np.abs(arr.sum(axis=1) - 1.0).max() > 1e-3:
        raise SyntheticSetError("teacher labels of an image must sum to 1")
    return arr
