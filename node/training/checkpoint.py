"""Atomic, self-describing training checkpoints (they never leave the site).

A checkpoint holds everything needed to continue *bit-for-bit* where the run stopped: the
resolved config, step / images shown, G, D, the EMA generator, both optimizers, the ADA state,
and the RNG states of torch (CPU and CUDA), NumPy and Python, plus the data-sampling
generator. It is written to a temporary file, fsynced and renamed over the previous one
(:func:`shared.files.atomic_write_bytes`), so a kill or Ctrl-C at any moment leaves the last
complete checkpoint in place.

Why ``torch.save`` here although nothing else in synthlearn pickles: a checkpoint is local
state, never exported, and is read with ``weights_only=True``, which refuses anything but
tensors and plain containers, so a planted file cannot execute code. NumPy / Python RNG
states are stored as JSON text to stay inside what ``weights_only`` accepts.

>>> import tempfile, torch
>>> p = Path(tempfile.mkdtemp()) / "c.pt"
>>> save_checkpoint(p, {"step": 3, "w": torch.ones(2)})
>>> load_checkpoint(p)["step"]
3
>>> _ = p.write_bytes(b"garbage")
>>> load_checkpoint(p)
Traceback (most recent call last):
...
node.errors.CheckpointError: ...c.pt: corrupt or unreadable checkpoint (...)...
"""

from __future__ import annotations

import io
import json
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.errors import CheckpointError
from shared.files import atomic_write_bytes

FORMAT = "synthlearn-gan-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` (tensors and plain containers only) and replace ``path`` atomically."""
    body = dict(state)
    body["format"] = FORMAT
    buf = io.BytesIO()
    torch.save(body, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; any problem is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint missing; train first with `synthlearn node train`, or check "
            "--run-name"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError, AttributeError, KeyError, IndexError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: corrupt or unreadable checkpoint ({msg[:200]}). Delete the run folder "
            "to start over, or restore the file from a backup"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a synthlearn GAN checkpoint (format {fmt!r}); delete the run folder "
            "to start over"
        )
    return state


def rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    """Every random stream a training step consumes."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "data": data_gen.get_state(),
        "numpy": json.dumps(_np_state()),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    np_state = json.loads(state["numpy"])
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _np_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
