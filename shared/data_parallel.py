"""This process's place in a ``torchrun`` job: several GPUs (or CPU processes) training one
network, each on its share of every batch.

Why in ``shared/``: both sides train on several GPUs when a machine has them. A site's GAN
(:class:`node.training.hardware.Distributed` adds its hand-made gradient averaging) and the
coordinator's CNN (:func:`shared.cnn_train.train_classifier`, through PyTorch's
``DistributedDataParallel``). One home for the rank, the world size, starting the process
group and agreeing on when to stop.

Outside ``torchrun`` (no ``WORLD_SIZE`` above 1 in the environment) everything here is a
no-op, and training runs exactly as a single process always has.
"""

from __future__ import annotations

import os

import torch


def local_cuda(device: torch.device) -> torch.device:
    """A CUDA device without an index → the GPU of this process's ``LOCAL_RANK`` under
    ``torchrun`` (one GPU per process), the current GPU otherwise; other devices unchanged."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class ProcessGroup:
    """Rank and world size from ``torchrun``'s environment; a job of one otherwise."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1

    @classmethod
    def single(cls) -> ProcessGroup:
        """A job of one, whatever the environment says."""
        group = cls()
        group.world, group.rank, group.active = 1, 0, False
        return group

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, state and logs."""
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        """Join the job's process group (NCCL on GPUs, gloo on CPUs); once per process."""
        if not self.active or torch.distributed.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)

    def stop(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def any_(self, flag: bool, device: torch.device) -> bool:
        """True on every process if it is true on any: one process's clock running out stops
        all of them on the same step (otherwise the others wait forever in the next
        collective). A host read, so callers ask it every few steps, not every step."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's weights and buffers everywhere (start, resume, before validating: each
        process's batch-norm statistics saw only its own share of the last batch)."""
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's share of one global batch of row indices (strided, so the shares
        differ by at most one row)."""
        return idx[self.rank :: self.world] if self.active else idx
