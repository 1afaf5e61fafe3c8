"""The site's hardware: which device trains, whether a preset fits it, and several GPUs.

Why a module of its own: the training loop should read as "one GAN step", not as CUDA
plumbing. Everything that depends on what the hospital's machine has lives here:

* :func:`pick_device`: CUDA when present; asking for CUDA on a machine without it is a
  :class:`DeviceError` (one line, exit 2), never a silent fall-back to a CPU run of days;
* :func:`enable_fast_math`: TF32 matmuls/convolutions on Ampere and newer (bf16 autocast is
  switched on by the loop; both are no-ops on CPU);
* :func:`estimate_memory` / :func:`check_memory`: a preset that cannot fit the GPU is refused
  *before* training, with the memory it needs and the largest batch that fits;
* :class:`Distributed`: several GPUs on one machine under ``torchrun``; each process draws
  ``batch / world`` images and gradients are averaged across processes after every backward
  (what DistributedDataParallel does; done by hand, as in StyleGAN2-ADA, because the GAN
  step freezes D for G's step and differentiates D twice for R1, which DDP's reducer does not
  follow).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from node.errors import DeviceError
from shared.data_parallel import ProcessGroup, local_cuda

CUDA_CONTEXT_BYTES = 1 << 30
"""CUDA context, cuDNN workspaces and allocator slack that no tensor accounts for (~1 GiB)."""

ALLOCATOR_MARGIN = 1.25
"""Fragmentation margin on the activation estimate (the caching allocator rounds blocks up)."""


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU with every core.

    Unless ``OMP_NUM_THREADS`` is set: then whoever started this process (a loopback
    federation running several sites on one machine, a SLURM job) has shared the cores out,
    and taking all of them would make the sites' OpenMP threads spin against each other.
    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.
    """
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise DeviceError(f"--device {requested!r}: not a device (cpu, cuda, cuda:N)") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError(
                    f"--device {requested}: CUDA was asked for but this machine has none usable "
                    f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                    "install a CUDA build of torch or train with --device cpu")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise DeviceError(f"--device {requested}: only {torch.cuda.device_count()} "
                                  "GPU(s) present")
        return local_cuda(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")


def enable_fast_math(device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions (Ampere+: ~8× the fp32 rate, 10-bit mantissa,
    ample for GAN training), and cuDNN autotuning for the fixed shapes of a GAN step."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 autocast where the GPU supports it (no loss scaling needed, unlike fp16)."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def adam(params: Iterable[nn.Parameter], device: torch.device, **kwargs: Any) -> torch.optim.Adam:
    """Adam, fused into one kernel per step on CUDA (one launch instead of one per tensor)."""
    return torch.optim.Adam(params, fused=device.type == "cuda" or None, **kwargs)


# -- memory ------------------------------------------------------------------------------

def gpu_memory_bytes(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes on ``device`` (a seam tests monkeypatch)."""
    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total)


@dataclass(frozen=True)
class MemoryEstimate:
    fixed_bytes: int
    """Weights, EMA copy, gradients, Adam moments, the training images, CUDA context."""
    per_image_bytes: int
    """Activations kept for backward per image in the batch (G step, D step or R1, the max)."""

    def needed(self, batch: int) -> int:
        return self.fixed_bytes + batch * self.per_image_bytes

    def largest_batch(self, available: int) -> int:
        return max(0, (available - self.fixed_bytes) // max(self.per_image_bytes, 1))


def _activation_elements(module_call: Any) -> int:
    """Elements of every tensor an op creates while ``module_call()`` runs on the meta device
    (views and in-place results excluded): the activations autograd would keep."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            returns = func._schema.returns
            if returns and returns[0].alias_info is None and isinstance(out, torch.Tensor):
                Count.total += out.numel()
            return out

    with Count():
        module_call()
    return Count.total


def estimate_memory(cfg: Any, num_classes: int, n_images: int) -> MemoryEstimate:
    """What one training step of ``cfg`` needs on a GPU, from the networks built on the meta
    device (no memory, no compute): exact parameter counts and per-op activation sizes."""
    from node.training.networks import Discriminator, Generator

    res = int(cfg.resolution)
    e = cfg.effective()
    with torch.device("meta"):
        G = Generator(res, num_classes, z_dim=e.z_dim, w_dim=e.w_dim,
                      mapping_layers=e.mapping_layers, channel_base=e.channel_base,
                      channel_max=e.channel_max, channel_min=e.channel_min)
        D = Discriminator(res, num_classes, channel_base=e.channel_base,
                          channel_max=e.channel_max, channel_min=e.channel_min,
                          norm=e.d_norm, mbstd=e.mbstd, mbstd_group=1)
        z = torch.empty(1, e.z_dim)
        c = torch.zeros(1, dtype=torch.long)
        x = torch.empty(1, 1, res, res)
        g_elems = _activation_elements(lambda: G.synthesize(torch.empty(1, e.w_dim)))
        d_elems = _activation_elements(lambda: D.features(x))
        del z, c
    p_g = sum(p.numel() for p in G.parameters())
    p_d = sum(p.numel() for p in D.parameters())
    # fp32 weights; G: weights, EMA copy, grads, 2 Adam moments; D: weights, grads, 2 moments.
    fixed = 4 * (5 * p_g + 4 * p_d) + n_images * res * res + CUDA_CONTEXT_BYTES
    # bf16 under autocast except the reductions autocast keeps in fp32 (pixel norm): ~3 bytes.
    act_bytes = 3 if cfg.amp else 4
    # G step keeps G's and D's activations; D step two D passes; R1 a D pass with its graph
    # (double backward ≈ 3 passes). Counting every op's output over-counts what autograd keeps
    # by about what backward needs in transient buffers, so no further factor.
    per_pass = max(g_elems + d_elems, 3 * d_elems)
    per_image = int(per_pass * act_bytes * ALLOCATOR_MARGIN)
    return MemoryEstimate(int(fixed), per_image)


def check_memory(cfg: Any, num_classes: int, n_images: int, device: torch.device,
                 world: int = 1) -> MemoryEstimate | None:
    """Refuse, before training, a configuration whose step cannot fit the GPU's free memory."""
    if device.type != "cuda":
        return None
    est = estimate_memory(cfg, num_classes, n_images)
    free, total = gpu_memory_bytes(device)
    per_gpu_batch = math.ceil(cfg.batch / world)
    need = est.needed(per_gpu_batch)
    if need > free:
        fits = est.largest_batch(free) * world
        gib = 1 << 30
        hint = (f"--batch {fits}" if fits >= 2 else
                "a smaller preset or --resolution (not even a batch of 2 fits)")
        raise DeviceError(
            f"preset {cfg.preset!r} at {cfg.resolution}² with batch {cfg.batch} needs about "
            f"{need / gib:.1f} GiB on {device} but only {free / gib:.1f} GiB of "
            f"{total / gib:.1f} GiB is free; the largest batch that fits is {fits}: use {hint}")
    return est


# -- several GPUs on one machine ---------------------------------------------------------

class Distributed(ProcessGroup):
    """This process's place in a ``torchrun`` job (or a job of one when not under torchrun),
    with the GAN's own gradient averaging (see the module docstring)."""

    def local_batch(self, batch: int) -> int:
        if batch % self.world:
            raise DeviceError(f"batch {batch} does not split evenly over {self.world} "
                              "processes; pick a multiple of the GPU count")
        return batch // self.world

    def average_gradients(self, module: nn.Module) -> None:
        """All-reduce every gradient (one flat buffer, one collective) and divide by world."""
        if not self.active:
            return
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
        torch.distributed.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))  # type: ignore[union-attr]
            offset += n

    def average_(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over processes, in place (ADA's statistic, G's class w averages)."""
        if self.active:
            torch.distributed.all_reduce(t)
            t.div_(self.world)
        return t
