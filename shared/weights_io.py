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


def load_classifier(path: Path) -> ResNetClassifier:
    """Rebuild the :class:`ResNetClassifier` stored in ``path`` (eval mode, CPU)."""
    arrays, meta = load_weights(path)
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") != "ResNetClassifier":
        raise WeightsError(f"{path}: does not describe a ResNetClassifier (meta {arch!r})")
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
