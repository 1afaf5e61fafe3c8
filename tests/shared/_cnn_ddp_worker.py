"""One process of a torchrun job in tests/shared/test_cnn_data_parallel.py and
tests/coordinator/test_train_data_parallel.py: train the CNN (``cnn``) or the coordinator's
candidate CNNs (``pooled``) on DIR/data.npz, then write what this rank saw and ended with."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.cnn_train import ClassifierConfig, train_classifier
from shared.data_parallel import ProcessGroup


def main() -> None:
    out, mode, max_minutes = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    data = np.load(out / "data.npz")
    rank = os.environ.get("RANK", "0")
    shards: list[list[int]] = []
    original = ProcessGroup.shard

    def shard(self: ProcessGroup, idx: torch.Tensor) -> torch.Tensor:
        part = original(self, idx)
        shards.append([int(v) for v in part])
        return part

    ProcessGroup.shard = shard  # type: ignore[method-assign]
    if mode == "skew" and rank == "1":
        # This process's clock alone runs out after a few readings: both must still stop on
        # the same step (rank 0's clock has minutes left).
        import types

        import shared.cnn_train as cnn_train

        calls = [0]

        def monotonic() -> float:
            calls[0] += 1
            return time.monotonic() + (1e6 if calls[0] > 2 else 0.0)

        cnn_train.time = types.SimpleNamespace(monotonic=monotonic)  # type: ignore[assignment]
    cfg = ClassifierConfig(epochs=3, batch=8, width=8, patience=0, seed=3,
                           max_minutes=max_minutes if max_minutes > 0 else None)
    if mode in ("cnn", "skew"):
        trained = train_classifier(data["x"], data["y"], 2, cfg, progress=False,
                                   group=ProcessGroup())
        flat = torch.cat([v.detach().double().flatten()
                          for v in trained.model.state_dict().values()])
        doc = {"sum": float(flat.sum()), "abs": float(flat.abs().sum()),
               "epochs": len(trained.history), "best": trained.val_metrics["best_epoch"],
               "stopped": trained.stopped, "shards": shards}
    else:
        from coordinator.train import train_pooled
        from shared.synthetic import SyntheticSet

        pooled = SyntheticSet(data["x"], data["y"], ["normal", "abnormal"],
                              {"synthetic_only": True, "bundle_ids": ["b"], "sites": ["s"]})
        record = train_pooled(pooled, out / f"cand-{rank}.npz", cfg, progress=False,
                              members=2)
        doc = {"weights": record["weights"], "shards": len(shards)}
    ProcessGroup().stop()
    (out / f"rank{rank}.json").write_text(json.dumps(doc))


if __name__ == "__main__":
    main()
