"""CNN weights as plain npz state dicts with JSON metadata: what crosses between sites.

Why not ``torch.save``: a pickle executes code when loaded, and weights travel from the
coordinator to every hospital. An npz of numeric arrays read with ``allow_pickle=False``
cannot. The metadata (architecture, class mode, threshold, provenance) rides inside the same
file as a UTF-8 JSON byte array under the reserved key ``__meta__``.

A file holds either one network (:func:`save_weights` / :func:`load_classifier`) or a
**candidate set** (:func:`save_candidates` / :func:`load_candidates`): K networks of one
architecture, each tensor stacked along a leading axis of length K, and ``meta["candidates"]``
describing each (which CNN seed, which epoch). The coordinator's CNN trained on synthetic
images cannot tell on its own synthetic validation images which of its epochs and seeds
transfer to real radiographs (they all score AUC 1.0 there); a site can, on its real *train*
split, so the coordinator sends candidates and each site chooses (:mod:`node.selection`).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
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
MAX_CANDIDATES = 64
"""Most networks one candidate file may hold (a site's policy may accept fewer:
``max_candidates``)."""
CANDIDATE_KEYS = frozenset({"member", "seed", "epoch", "synthetic_val_auc", "round"})
"""What describes one candidate (numbers only: the file travels to every site). ``round``:
which round's pool trained it, in a two-round run's file."""


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
    if "candidates" in meta:
        raise WeightsError(f"{path}: holds a set of candidate networks, not one; read it with "
                           "shared.weights_io.load_candidates (synthlearn node evaluate does)")
    return _build(arrays, meta, path)


def _build(arrays: dict[str, npt.NDArray[Any]], meta: dict[str, Any],
           path: Path) -> ResNetClassifier:
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
    state = {k: _tensor(k, v, path) for k, v in arrays.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path}: weights do not fit the network ({first})") from None
    model.eval()
    return model


def _tensor(name: str, value: npt.NDArray[Any], path: Path) -> torch.Tensor:
    """One stored array as a tensor, refused unless it is what a trained network holds: real
    numbers (float or integer, not str/datetime/complex/bool, which ``load_state_dict`` would
    cast silently or ``torch.from_numpy`` refuses with a TypeError) and finite (a NaN or inf
    weight makes the network's scores NaN, which crashes the AUC later, inside the site)."""
    if value.dtype.kind not in "fiu":
        raise WeightsError(f"{path}: tensor {name[:80]!r} has dtype {value.dtype}; weights are "
                           "real numbers")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise WeightsError(f"{path}: tensor {name[:80]!r} holds NaN or infinite values")
    # np.array(..., dtype=native) also turns a big-endian array into one torch can read
    return torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("=")))


def save_candidates(models: Sequence[torch.nn.Module], path: Path, meta: dict[str, Any],
                    candidates: list[dict[str, Any]], default: list[int],
                    half: bool = False) -> None:
    """Write K networks of one architecture as one candidate file.

    ``candidates[i]`` describes ``models[i]`` (keys of :data:`CANDIDATE_KEYS`); ``default`` is
    the sender's own choice (indices, used as an ensemble) for a site that cannot choose (no
    real train split of both classes). ``half``: floating-point tensors are stored as
    float16, half the bytes every site receives (K networks travel to each site); a site
    evaluates exactly the rounded networks the file holds, which its SHA-256 binds.
    """
    if not 1 <= len(models) <= MAX_CANDIDATES or len(candidates) != len(models):
        raise WeightsError(f"{path}: {len(models)} networks with {len(candidates)} "
                           f"descriptions; a candidate file holds 1..{MAX_CANDIDATES}")
    states = [m.state_dict() for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise WeightsError(f"{path}: candidate networks differ in their parameters")
    arch = models[0].architecture() if isinstance(models[0], ResNetClassifier) else None
    full = {**meta, "candidates": candidates, "default": list(default)}
    if arch is not None:
        full["architecture"] = arch
    _check_candidate_meta(full, len(models), path)
    stacked = {k: torch.stack([s[k].detach().cpu() for s in states]) for k in states[0]}
    full["format"] = FORMAT
    if META_KEY in stacked:
        raise WeightsError(f"a parameter is named {META_KEY!r}, which is reserved")
    meta_bytes = json.dumps(full, sort_keys=True).encode("utf-8")
    arrays: dict[str, npt.NDArray[Any]] = {
        k: (_half(v) if half and v.is_floating_point() else v).numpy()
        for k, v in stacked.items()}
    arrays[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(Path(path), buf.getvalue())


def _half(value: torch.Tensor) -> torch.Tensor:
    """float16 where every value fits (|x| ≤ 65504); otherwise the tensor stays as it is: a
    value that overflowed to inf would be a different network (and a site refuses inf)."""
    fits = value.numel() == 0 or bool(value.abs().max() <= torch.finfo(torch.float16).max)
    return value.half() if fits else value


def _check_candidate_meta(meta: dict[str, Any], k: int, path: Path | str) -> None:
    cands, default = meta.get("candidates"), meta.get("default")
    if not isinstance(cands, list) or not 1 <= len(cands) <= MAX_CANDIDATES or len(cands) != k:
        raise WeightsError(f"{path}: 'candidates' must list the {k} networks the file holds "
                           f"(at most {MAX_CANDIDATES})")
    for i, c in enumerate(cands):
        if not isinstance(c, dict) or set(c) - CANDIDATE_KEYS or not all(
                v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                for v in c.values()):
            raise WeightsError(f"{path}: candidate {i}'s description {c!r:.120} is not numbers "
                               f"under {sorted(CANDIDATE_KEYS)}")
    if (not isinstance(default, list) or not 1 <= len(default) <= k
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < k
                       for i in default)):
        raise WeightsError(f"{path}: 'default' must list 1..{k} candidate indices, got "
                           f"{default!r:.80}")


def load_candidates(path: Path, max_candidates: int = MAX_CANDIDATES
                    ) -> tuple[list[ResNetClassifier], dict[str, Any]]:
    """(networks, meta) from a candidate file; a one-network file is a set of one.

    Every stacked tensor must have the same leading length K as the descriptions, and K at
    most ``max_candidates`` (the site's policy); checked before any network is built.
    """
    arrays, meta = load_weights(path)
    if "candidates" not in meta:
        return [_build(arrays, meta, path)], {**meta, "candidates": [{}], "default": [0]}
    cands = meta.get("candidates")
    k = len(cands) if isinstance(cands, list) else -1
    if not 1 <= k <= max_candidates:
        raise WeightsError(f"{path}: holds {k} candidate networks; this site accepts at most "
                           f"{max_candidates} (site policy max_candidates)")
    _check_candidate_meta(meta, k, path)
    check_architecture(meta.get("architecture"), path)
    bad = [name for name, a in arrays.items() if a.ndim < 1 or a.shape[0] != k]
    if bad:
        raise WeightsError(f"{path}: tensor {bad[0][:80]!r} is not stacked for {k} candidates")
    models = [_build({n: a[i] for n, a in arrays.items()}, meta, path) for i in range(k)]
    return models, meta
