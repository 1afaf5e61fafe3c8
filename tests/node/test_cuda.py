"""On a CUDA GPU: the presets' real widths train in bf16, fit the memory guard, and the
downstream CNN's step never waits on the host. Skipped without a GPU; benchmarks/gpu_check.sh
runs them with ``pytest -m cuda``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@contextmanager
def sync_errors_raised() -> Iterator[None]:
    """Any host synchronisation inside the block raises (torch's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _trainer(preset: str, batch: int = 4, **kw: object) -> object:
    from node.training.config import preset_config
    from node.training.loop import Trainer

    cfg = preset_config(preset, batch=batch, kimg=1.0, min_class_images=1, device="cuda", **kw)
    res = int(cfg.resolution or 32)
    x = np.random.default_rng(0).integers(0, 255, (16, res, res), dtype=np.uint8)
    return Trainer(x, np.arange(16) % 2, ["a", "b"], cfg, res, None, False)


@pytest.mark.parametrize("preset", ["gpu-64", "gpu-128", "gpu-256", "gpu-512"])
def test_preset_trains_in_bf16_on_cuda_within_its_memory_estimate(preset: str) -> None:
    """The memory guard's estimate is enough: the steps run with the allocator capped at it.

    (Comparing with max_memory_allocated() would not do: cuDNN's autotuner takes large
    transient workspaces when memory is free, 19 GiB at batch 4 on an H100, and skips such
    algorithms when it is not.)
    """
    torch.cuda.empty_cache()
    tr = _trainer(preset, r1_interval=2)
    assert tr.device.type == "cuda"  # type: ignore[attr-defined]
    if torch.cuda.is_bf16_supported():
        assert tr.amp_dtype == torch.bfloat16  # type: ignore[attr-defined]
    est = tr.memory  # type: ignore[attr-defined]
    assert est is not None
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, est.needed(4) / total))
    try:
        for _ in range(3):  # includes an R1 step
            tr.step()  # type: ignore[attr-defined]
        stats = tr.read_stats()  # type: ignore[attr-defined]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert stats and all(np.isfinite(v) for v in stats.values()), stats
    assert all(p.is_cuda and p.dtype == torch.float32
               for p in tr.G.parameters())  # type: ignore[attr-defined]


def test_tf32_and_fused_adam_are_on() -> None:
    tr = _trainer("gpu-64")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert tr.opt_G.defaults.get("fused") is True  # type: ignore[attr-defined]


def test_cnn_training_step_has_no_host_sync() -> None:
    """shared/cnn_train.py keeps the loss on the device; one short epoch under the sync
    debug mode (the validation pass at the epoch's end reads results back, outside it)."""
    from shared.classifier import ResNetClassifier
    from shared.cnn_train import _to_input, augment_batch

    model = ResNetClassifier(2, width=16).cuda()
    opt = torch.optim.Adam(model.parameters(), fused=True)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 255, (32, 64, 64), dtype=torch.uint8).pin_memory()
    loss_sum = torch.zeros((), device="cuda")
    # Set-up (model and optimiser onto the GPU) is outside the checked block.
    with sync_errors_raised():
        for i in range(0, 32, 8):
            x = augment_batch(_to_input(data[i:i + 8], torch.device("cuda")), gen, 0.3, 5.0, 0.8)
            y = torch.arange(8, device="cuda") % 2
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().float()


# The GAN training step's no-sync test lives with the step's other sync tests:
# tests/node/test_speed.py::test_training_step_makes_no_cuda_sync.
