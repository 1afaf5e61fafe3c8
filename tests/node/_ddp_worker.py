"""One process of a torchrun job in tests/node/test_multi_process.py: train the tiny GAN (or
SpineGAN) on the arrays in DIR/data.npz into DIR/run, then write this rank's weight checksum.
Model ``init``: the tiny GAN started from the synthetic set DIR/syn (pretrained on it first,
as round 2 does at a site)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.training.config import GanConfig
from node.training.loop import Trainer, train_arrays

TINY = {"batch": 4, "min_class_images": 1, "resolution": 8, "channel_base": 64,
        "channel_max": 16, "channel_min": 8, "z_dim": 8, "w_dim": 8, "r1_interval": 2,
        "grid_per_class": 1, "log_every": 1}


def main() -> None:
    out, kimg = Path(sys.argv[1]), float(sys.argv[2])
    model = sys.argv[3] if len(sys.argv) > 3 else "gan"
    extra = ({"model": "spinegan", "resolution": 16, "spine_epochs": 1, "spine_min_steps": 2}
             if model == "spinegan" else {})
    init_from = None
    if model == "init":
        extra, init_from = {"init_pretrain_kimg": 0.008}, out / "syn"
    torch.set_num_threads(1)
    data = np.load(out / "data.npz")
    seen: dict[str, Trainer] = {}
    original = Trainer.step

    def step(self: Trainer) -> dict[str, float]:
        seen["t"] = self
        return original(self)

    Trainer.step = step  # type: ignore[method-assign]
    if os.environ.get("RANK", "0") == "0":  # rank 0 writes the run's summary late
        import time

        import node.training.loop as loop

        write = loop.atomic_write_bytes

        def slow(path: Path, data: bytes) -> None:
            if path.name == "metrics.json":
                time.sleep(1.5)
            write(path, data)

        loop.atomic_write_bytes = slow  # type: ignore[assignment]
    train_arrays(data["x"], data["y"], ["a", "b"], GanConfig(kimg=kimg, **{**TINY, **extra}),
                 out / "run", progress=False, init_from=init_from)
    # what `node train` prints on every rank once training returns
    summary_seen = (out / "run" / "metrics.json").exists()
    tr = seen["t"]
    flat = torch.cat([p.detach().flatten() for p in tr.G.parameters()] +
                     [p.detach().flatten() for p in tr.D.parameters()])
    rank = os.environ.get("RANK", "0")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "sum": float(flat.double().sum()), "abs": float(flat.double().abs().sum()),
        "nimg": tr.nimg, "local_batch": tr.local_batch, "world": tr.dist.world,
        # left alive, gloo's threads can abort the process at exit (SIGABRT)
        "group_alive": torch.distributed.is_initialized(), "summary_seen": summary_seen}))


if __name__ == "__main__":
    main()
