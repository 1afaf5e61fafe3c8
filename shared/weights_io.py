"""CNN weights as plain npz state dicts with JSON metadata: what crosses between sites.

Why not ``torch.save``: a pickle executes code when loaded, and weights travel from the
coordinator to every hospital. An npz of numeric arrays read with ``allow_pickle=False``
cannot. The metadata (architecture, class mode, threshold, provenance) rides inside the same
file as a UTF-8 JSON byte array under the reserved key ``__meta__``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from shared.classifier import ResNetClassifier
from shared.errors import WeightsError
from shared.files import atomic_write_bytes

META_KEY = "__meta__"
FORMAT = "synthlearn-weights-1"

MAX_MEMBER_BYTES = 64 << 20
"""Largest inflated npz member. A width-128 classifier's largest tensor is ~2.4 MB; weights
arrive from outside the site, and a deflated member can inflate 1000-fold."""
MAX_TOTAL_BYTES = 256 << 20
"""Largest sum of inflated member sizes."""
MAX_MEMBERS = 1024
MAX_META_BYTES = 1 << 20
ARCH_BOUNDS = {"num_classes": (2, 16), "width": (1, 128), "in_channels": (1, 1)}
"""What a ResNetClassifier in a weights file may declare: wider nets are refused before any
tensor is allocated (a width of 4096 would build ~170 GiB of parameters)."""
ARCH_KEYS = frozenset({"name", "num_classes", "width", "in_channels", "norm"})


def save_weights(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``meta`` (JSON-serialisable) to ``path`` atomically.

    A :class:`ResNetClassifier` also records its architecture so :func:`load_classifier`
    can rebuild it.
    """
    full = dict(meta)
    full["format"] = FORMAT
    if isinstance(model, ResNetClassifier):
        full.setdefault("architecture", model.architecture())
    try:
        meta_bytes = json.dumps(full, sort_keys=True).encode("utf-8")
    except TypeError as exc:
        raise WeightsError(f"{path}: metadata is not JSON-serialisable ({exc})") from None
    arrays: dict[str, npt.NDArray[Any]] = {
        k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
    }
    if META_KEY in arrays:
        raise WeightsError(f"a parameter is named {META_KEY!r}, which is reserved")
    arrays[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(Path(path), buf.getvalue())


def load_weights(path: Path) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """(state dict as numpy arrays, meta) from an npz written by :func:`save_weights`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(
            f"{path}: not an npz state dict without pickles ({exc}); ask the sender for the "
            "npz written by synthlearn"
        ) from None
    raw = arrays.pop(META_KEY, None)
    if raw is None:
        raise WeightsError(f"{path}: no {META_KEY} entry; not written by synthlearn")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: unknown weights format {meta.get('format')!r}")
    return arrays, meta


def check_npz_sizes(path: Path) -> None:
    """Refuse an npz whose zip headers declare members too large to inflate (a zip bomb), or
    too many of them, before anything is decompressed. The sizes are checked again while
    reading (:func:`numpy.load` trusts the npy header; a member that inflates past its
    declared size fails the CRC/length check in :mod:`zipfile`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise WeightsError(f"{path}: not an npz (zip) file ({exc})") from None
    if len(infos) > MAX_MEMBERS:
        raise WeightsError(f"{path}: {len(infos)} members; a weights file has at most "
                           f"{MAX_MEMBERS}")
    total = 0
    for info in infos:
        limit = MAX_META_BYTES if info.filename == META_KEY + ".npy" else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise WeightsError(
                f"{path}: member {info.filename[:80]!r} inflates to {info.file_size} bytes, "
                f"over the {limit}-byte cap for a weights member (an inflation bomb?); refused "
                "before decompressing")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise WeightsError(f"{path}: members inflate to {total} bytes in all, over the "
                           f"{MAX_TOTAL_BYTES}-byte cap; refused before decompressing")


def check_architecture(arch: Any, path: Path | str = "weights") -> dict[str, Any]:
    """The architecture record, checked against :data:`ARCH_BOUNDS` before anything is built."""
    if not isinstance(arch, dict) or arch.get("name") != "ResNetClassifier":
        raise WeightsError(f"{path}: does not describe a ResNetClassifier (meta {arch!r:.200})")
    extra = sorted(set(arch) - ARCH_KEYS)
    if extra:
        raise WeightsError(f"{path}: architecture sets unknown keys {extra} (depth, layers… "
                           "are fixed by this synthlearn version)")
    for key, (lo, hi) in ARCH_BOUNDS.items():
        value = arch.get(key, 1 if key == "in_channels" else None)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise WeightsError(f"{path}: architecture {key} = {value!r:.40} is outside "
                               f"{lo}..{hi}; refused before building the network")
    if arch.get("norm", "batch") not in ("batch", "group"):
        raise WeightsError(f"{path}: architecture norm {arch.get('norm')!r:.40} is unknown")
    return arch


def load_classifier(path: Path) -> ResNetClassifier:
    """Rebuild the :class:`ResNetClassifier` stored in ``path`` (eval mode, CPU)."""
    arrays, meta = load_weights(path)
    arch = check_architecture(meta.get("architecture"), path)
    try:
        model = ResNetClassifier(
            num_classes=int(arch["num_classes"]),
            width=int(arch["width"]),
            in_channels=int(arch.get("in_channels", 1)),
            norm=str(arch.get("norm", "batch")),
        )
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: bad architecture record ({exc})") from None
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path}: weights do not fit the network ({first})") from None
    model.eval()
    return model
