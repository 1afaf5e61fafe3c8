"""`node train --init-from PATH`: start a new run from knowledge that crossed sites.

Two kinds of PATH, both things a site may legitimately hold:

* a **checkpoint** (``checkpoint.pt`` of an earlier run, this site's or one shared with it):
  G, D and the EMA generator start from its weights; optimisers, ADA and the image count start
  fresh (it is a new run, not a resume);
* a **synthetic set** folder (``set.json`` + ``images.npy`` + ``labels.csv``, e.g. the pooled
  synthetic images of the other sites that the coordinator sends back after a first round):
  the GAN is first trained on it for ``cfg.init_pretrain_kimg`` (no real image is read, so
  under DP this costs the site no ε — the images are already DP outputs of other sites), then
  fine-tuned on the site's real images (transfer learning, as GIST and Gupta et al. did).

Everything is checked **before** the run folder is created: a file of another resolution,
network shape or class set, or a corrupt file, is a :class:`InitFromError` naming the file and
what differs, and the site's runs and checkpoints are untouched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.errors import CheckpointError
from node.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from node.training.config import GanConfig
from shared.config import to_dict
from shared.synthetic import SyntheticSet, SyntheticSetError, load_matching

SHAPE_FIELDS = ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base",
                "channel_max", "channel_min", "d_norm", "mbstd", "d_recon")
"""What a checkpoint's networks must share with the new run for its weights to load.

``d_projected`` is not among them: the projected heads read the site's own classifier S, which
the source run (or a pretraining on synthetic images) never had, so they start fresh."""


class InitFromError(CheckpointError):
    """``--init-from`` names something this run cannot start from."""


@dataclass
class InitSource:
    """A checked ``--init-from`` source: exactly one of ``checkpoint`` / ``synthetic``."""

    path: Path
    checkpoint: dict[str, Any] | None = None
    synthetic: SyntheticSet | None = None

    def describe(self) -> dict[str, Any]:
        if self.checkpoint is not None:
            return {"kind": "checkpoint", "path": str(self.path),
                    "source_kimg": self.checkpoint.get("nimg", 0) / 1000}
        assert self.synthetic is not None
        return {"kind": "synthetic-set", "path": str(self.path), "images": len(self.synthetic),
                "counts": self.synthetic.counts()}


def load_init_source(path: Path, cfg: GanConfig, class_names: list[str],
                     store_size: int) -> InitSource:
    """Read and check ``path`` against the run about to start (``cfg`` resolved)."""
    path = Path(path)
    if not path.exists():
        raise InitFromError(f"{path}: --init-from names nothing (no such file or folder)")
    if path.is_dir() and (path / CHECKPOINT_NAME).exists():
        path = path / CHECKPOINT_NAME  # a run folder: its checkpoint
    if path.is_dir():
        return _synthetic_source(path, class_names, store_size)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise InitFromError(str(exc)) from None
    missing = [k for k in ("config", "class_names", "G", "D", "G_ema") if k not in ckpt]
    if missing:
        raise InitFromError(f"{path}: not a synthlearn GAN checkpoint (missing {missing})")
    diffs = checkpoint_differences(ckpt, cfg, class_names)
    if diffs:
        raise InitFromError(f"{path}: cannot start this run from it ({'; '.join(diffs)})")
    return InitSource(path, checkpoint=ckpt)


def checkpoint_differences(ckpt: dict[str, Any], cfg: GanConfig,
                           class_names: list[str]) -> list[str]:
    """Why a checkpoint's networks do not fit the run ``cfg`` (empty when they do)."""
    old = ckpt.get("config") or {}
    eff = to_dict(cfg.effective())
    # The checkpoint's own effective shape (a DP run forces GroupNorm D, no minibatch-std).
    if old.get("dp_epsilon") is not None:
        old = {**old, "d_norm": "group", "mbstd": False}
    out = [f"{k}: file has {old.get(k)!r}, this run needs {eff.get(k)!r}"
           for k in SHAPE_FIELDS if old.get(k) != eff.get(k)]
    if list(ckpt.get("class_names") or []) != list(class_names):
        out.insert(0, f"classes: file has {ckpt.get('class_names')}, this site has {class_names}")
    return out


def _synthetic_source(folder: Path, class_names: list[str], store_size: int) -> InitSource:
    if not (folder / "set.json").exists():
        raise InitFromError(f"{folder}: neither a checkpoint nor a synthetic set (no set.json)")
    try:
        syn = load_matching(folder, class_names, store_size)
    except SyntheticSetError as exc:
        raise InitFromError(str(exc)) from None
    present = set(np.unique(syn.labels).tolist())
    if len(syn) == 0 or len(present) < 2:
        raise InitFromError(f"{folder}: needs images of at least two classes to pretrain on")
    return InitSource(folder, synthetic=syn)


def pretrain_config(cfg: GanConfig) -> GanConfig:
    """The run's network shape (DP's forced settings included), without DP, for pretraining.

    Pretraining reads only shared synthetic images, so it spends no ε; it keeps the shape the
    DP fine-tune will have so the weights load. It stops at ``init_pretrain_kimg`` or at the
    run's own ``max_minutes``, whichever comes first: a site's time cap per request
    (``max_train_minutes``) then bounds each of the two stages, so a request cannot make
    the site pretrain without end by asking for a huge ``init_pretrain_kimg``.
    """
    eff = cfg.effective()
    return dataclasses.replace(eff, dp_epsilon=None, dp_delta=None, kimg=cfg.init_pretrain_kimg,
                               max_minutes=cfg.max_minutes, min_class_images=1,
                               warn_class_images=0,
                               model="gan", d_projected=False)


def apply_checkpoint(trainer: Any, ckpt: dict[str, Any], path: Path) -> None:
    """Load G, D and the EMA generator from ``ckpt``; everything else stays fresh."""
    try:
        with torch.no_grad():
            trainer.G.load_state_dict(ckpt["G"])
            _load_d_weights(trainer._D_raw, ckpt["D"])
            trainer.G_ema.load_state_dict(ckpt["G_ema"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise InitFromError(
            f"{path}: weights do not fit this run ({str(exc).splitlines()[0][:200]})") from None


def _load_d_weights(D: torch.nn.Module, state: dict[str, Any]) -> None:
    """Strict load of D except its projected heads (``proj.*``), which always start fresh: they
    were fitted to the source's classifier S, and this run trains its own S."""
    state = {k: v for k, v in state.items() if not k.startswith("proj.")}
    missing, unexpected = D.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("proj.")]
    if missing or unexpected:
        raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]} in D")


__all__ = ["InitFromError", "InitSource", "apply_checkpoint", "checkpoint_differences",
           "load_init_source", "pretrain_config"]
