"""Training recipe for the downstream CNN, shared by baselines, pooled CNNs and benchmarks.

The recipe is the seed paper's, so our numbers can be set beside it: horizontal flip p=0.3,
rotation ±5°, random resized crop (scale 0.8–1.0, ratio 1), Adam lr 1e-3, batch 32.

**The test split never reaches this module.** :func:`train_classifier` takes only training
images; early stopping and the decision threshold use a validation part carved (stratified,
seeded) from those training images. Callers load their test split *after* training and
score it with :func:`predict_scores`. Nothing here can peek at a test set because no test set
is ever passed in — that is the guarantee, by construction, and tests assert it.

Device: CUDA with automatic mixed precision when available, else CPU (float32).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from shared.classifier import ResNetClassifier
from shared.data_parallel import ProcessGroup, local_cuda
from shared.errors import ClassifierTrainingError
from shared.image_rows import ImageRows, image_rows
from shared.metrics.auc import class_auc
from shared.synthetic import to_tensor_range


@dataclass(frozen=True)
class ClassifierConfig:
    """Downstream CNN settings. Defaults are the seed paper's recipe."""

    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    """Stratified share of the *training* data held out for early stopping + threshold."""
    patience: int = 5
    """Stop after this many epochs without a better validation AUC (0 = never stop early)."""
    seed: int = 0
    width: int = 64
    norm: str = "batch"
    augment: bool = True
    hflip_p: float = 0.3
    rotation_deg: float = 5.0
    crop_scale_min: float = 0.8
    gamma_jitter: float = 0.0
    """Intensity augmentation (:func:`intensity_batch`): each image's gamma is drawn
    log-uniformly from [e^-g, e^g]. 0 = off (the seed paper's recipe)."""
    contrast_jitter: float = 0.0
    """Each image's contrast about its mean is scaled log-uniformly in [e^-c, e^c]; 0 = off."""
    noise_std: float = 0.0
    """Gaussian noise of a standard deviation drawn per image from [0, noise_std] (in the
    [0, 1] intensity range); 0 = off."""
    max_minutes: float | None = None
    """Wall-clock budget for the training loop; the best epoch so far is kept."""
    max_steps: int | None = None
    """Work budget: stop after this many optimizer steps in all (the epoch they end in is then
    validated as usual). For bounded runs whose cost must not depend on the machine's load
    (benchmarks, smoke tests), where ``max_minutes`` would."""
    label_smoothing: float = 0.0
    min_steps: int = 0
    """Train for at least this many optimizer steps: ``epochs`` is raised (and early stopping
    held off) until they are done. ``epochs`` alone makes the amount of training depend on the
    data size: 3 epochs are 45 steps on 500 images but 21 on 220 (batch 32), and SpineGAN's S at
    the demo's small site stayed at chance (val AUC 0.53-0.64 in three seeds) on those 21."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if self.batch < 2:
            raise ValueError(f"batch must be ≥ 2, got {self.batch}")
        if self.width < 1:
            raise ValueError(f"width must be ≥ 1, got {self.width}")
        if self.patience < 0:
            raise ValueError(f"patience must be ≥ 0 (0 = never stop early), got {self.patience}")
        if self.seed < 0:
            raise ValueError(f"seed must be ≥ 0, got {self.seed}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be ≥ 0, got {self.min_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be ≥ 1, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if not 0.0 < self.val_fraction < 0.9:
            raise ValueError(f"val_fraction must be in (0, 0.9), got {self.val_fraction}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        for name in ("gamma_jitter", "contrast_jitter", "noise_std"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} must be in [0, 1] (0 = off), got {v}")

    @property
    def intensity(self) -> bool:
        """Whether any intensity augmentation is on."""
        return self.gamma_jitter > 0 or self.contrast_jitter > 0 or self.noise_std > 0


@dataclass
class TrainedClassifier:
    """A trained CNN (eval mode, best validation epoch) plus how it was chosen."""

    model: ResNetClassifier
    threshold: float | None
    """Binary: probability of class 1 that maximises Youden's J on the validation part."""
    history: list[dict[str, Any]]
    config: ClassifierConfig
    num_classes: int
    val_metrics: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    stopped: str = "epochs"
    """Why training ended: 'epochs', 'early-stopping', 'time-budget' or 'step-budget'."""
    n_train: int = 0
    n_val: int = 0
    steps: int = 0
    """Optimizer steps taken in all (a small set's few epochs can be very few steps)."""


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU. Under ``torchrun`` each
    process takes the GPU of its ``LOCAL_RANK``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return local_cuda(torch.device(device))


def stratified_holdout(
    labels: npt.NDArray[np.int64],
    fraction: float,
    seed: int,
    eligible: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Boolean mask of a seeded, per-class validation part (≥ 1 per class with ≥ 2 rows).

    ``eligible`` restricts which rows may be held out (e.g. only the real rows of a
    real + synthetic mix, so early stopping is judged on real images).
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    ok = np.ones(len(labels), bool) if eligible is None else np.asarray(eligible, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & ok)
        if len(idx) < 2:
            continue
        k = max(1, round(fraction * len(idx)))
        k = min(k, len(idx) - 1)
        mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    hflip_p: float = 0.3,
    rotation_deg: float = 5.0,
    crop_scale_min: float = 0.8,
) -> torch.Tensor:
    """Flip, rotate and random-resized-crop a batch in [-1, 1] with one affine warp each.

    One ``grid_sample`` per batch instead of three per image keeps CPU training fast. Pixels
    coming from outside the image are black (-1), like torchvision's default fill.
    """
    n = x.shape[0]
    r = torch.rand(n, 5, generator=gen)
    angle = (r[:, 0] * 2 - 1) * math.radians(rotation_deg)
    side = torch.sqrt(crop_scale_min + (1 - crop_scale_min) * r[:, 1])  # area → side, ratio 1
    tx = (r[:, 2] * 2 - 1) * (1 - side)
    ty = (r[:, 3] * 2 - 1) * (1 - side)
    flip = torch.where(r[:, 4] < hflip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(device=x.device, dtype=torch.float32, non_blocking=True)  # no stream sync on a GPU
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float() + 1.0, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return (out - 1.0).to(x.dtype)


def intensity_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    gamma_jitter: float = 0.0,
    contrast_jitter: float = 0.0,
    noise_std: float = 0.0,
) -> torch.Tensor:
    """Per-image gamma, contrast and noise on a batch in [-1, 1]: the exposure and detector
    differences between sites, which a CNN trained on a few generators' images has seen
    little of. Random numbers come from ``gen`` (CPU), so runs repeat on any device.
    """
    n = x.shape[0]
    r = torch.rand(n, 3, generator=gen)
    shape = (n,) + (1,) * (x.dim() - 1)
    u = ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)
    if gamma_jitter > 0:
        gamma = torch.exp((r[:, 0] * 2 - 1) * gamma_jitter).to(x.device).view(shape)
        u = u.clamp_min(1e-6) ** gamma
    if contrast_jitter > 0:
        c = torch.exp((r[:, 1] * 2 - 1) * contrast_jitter).to(x.device).view(shape)
        mean = u.mean(dim=tuple(range(1, u.dim())), keepdim=True)
        u = mean + (u - mean) * c
    if noise_std > 0:
        sd = (r[:, 2] * noise_std).to(x.device).view(shape)
        u = u + sd * torch.randn(u.shape, generator=gen).to(x.device)
    return (u.clamp(0.0, 1.0) * 2.0 - 1.0).to(x.dtype)


def _to_input(batch_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    x: torch.Tensor = to_tensor_range(batch_u8.to(device, non_blocking=True))
    return x.unsqueeze(1)


def predict_scores(
    model: torch.nn.Module, images: npt.NDArray[np.uint8] | ImageRows, batch: int = 256,
    index: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.float64]:
    """Softmax probabilities (N, classes) as float64, in eval mode, on the model's device.

    ``images`` may be an on-disk pool (:mod:`shared.image_rows`): it is read ``batch`` rows
    at a time; ``index`` scores only those rows, in that order.
    """
    rows = image_rows(images)
    if len(rows.shape) != 3:
        raise ClassifierTrainingError(f"images must be (N, H, W) uint8, got {rows.shape}")
    idx = np.arange(len(rows)) if index is None else np.asarray(index, np.int64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[npt.NDArray[np.float64]] = []
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            chunk = torch.from_numpy(rows.take(idx[i : i + batch]))
            logits = model(_to_input(chunk, device)).float()
            out.append(torch.softmax(logits, 1).double().cpu().numpy())
    if was_training:
        model.train()
    if not out:
        n_cls = int(getattr(model, "num_classes", 2))
        return np.zeros((0, n_cls), np.float64)
    return np.concatenate(out)


def adapt_batchnorm(
    model: torch.nn.Module, images: npt.NDArray[np.uint8] | ImageRows, batch: int = 256,
) -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``images`` (AdaBN,
    Li et al. 2016); the weights are untouched and ``model`` itself is not changed.

    Why: a CNN trained on synthetic images normalises each layer with the synthetic images'
    means and variances. Re-estimating them on a site's own real images (no labels needed)
    aligns the layers with the images the site will score. A network without BatchNorm is
    returned as a plain copy.
    """
    import copy

    rows = image_rows(images)
    if len(rows.shape) != 3 or len(rows) == 0:
        raise ClassifierTrainingError(f"images must be (N, H, W) uint8, N ≥ 1, got {rows.shape}")
    out = copy.deepcopy(model)
    bns = [m for m in out.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return out
    out.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.train()
    device = next(out.parameters()).device
    # A seeded shuffle: the running variance averages each batch's own variance, which leaves
    # out how far the batch means differ, so batches of one scanner or date each (a store in
    # ingest order) would understate it.
    order = np.random.default_rng(0).permutation(len(rows))
    seen = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = torch.from_numpy(rows.take(np.sort(order[i : i + batch])))
            seen += len(chunk)
            for m in bns:  # a running mean weighted by images, not by batches
                m.momentum = len(chunk) / seen
            out(_to_input(chunk, device))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    out.eval()
    return out


def youden_threshold(y_true: npt.NDArray[np.int64], p1: npt.NDArray[np.float64]) -> float:
    """Threshold on P(class 1) maximising sensitivity + specificity − 1 (Youden's J)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, p1)
    j = tpr - fpr
    best = int(np.argmax(j))
    t = float(thr[best])
    return min(max(t, 0.0), 1.0)  # roc_curve's first threshold is +inf


def train_classifier(
    images: npt.NDArray[np.uint8] | ImageRows,
    labels: npt.NDArray[np.int64],
    num_classes: int,
    cfg: ClassifierConfig,
    progress: bool = True,
    device: str | None = None,
    val_eligible: npt.NDArray[np.bool_] | None = None,
    soft_labels: npt.NDArray[np.floating[Any]] | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    group: ProcessGroup | None = None,
) -> TrainedClassifier:
    """Train the CNN on *training* images only; return the best-validation-epoch model.

    ``on_epoch(epoch, model)`` (optional) is called after each epoch's validation, with the
    model in eval mode; it must not change the model. Benchmarks use it to follow what each
    epoch's weights do elsewhere (``benchmarks/pool_replay.py``).

    ``val_eligible`` (optional bool mask over ``images``) limits which training rows may be
    carved off as the validation part; by default any row may.

    ``soft_labels`` (optional (N, classes) rows summing to 1): train on these probabilities
    instead of one-hot ``labels`` (knowledge distillation: a synthetic image labelled by the
    site classifier's belief, not only by the class it was drawn for). Early stopping and the
    threshold still use the hard ``labels`` of the validation part.

    ``group`` (optional): train as one process of a ``torchrun`` job (several GPUs), each
    process on its share of every batch; the coordinator's CNN passes it. Opt-in, not read
    from the environment: a site's S trains on rank 0 alone inside a multi-GPU GAN job, and a
    job's other callers (baselines, scoring) must stay single-process.

    ``images`` may stay on disk (a pool opened with ``np.load(..., mmap_mode="r")`` or an
    :class:`shared.image_rows.ImageRows`): each step reads only its batch, so memory does not
    grow with the number of images (the coordinator's pool at consortium scale).
    """
    images = image_rows(images)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if images.dtype != np.uint8 or len(images.shape) != 3:
        raise ClassifierTrainingError(
            f"training images must be uint8 (N, H, W), got {images.dtype} {images.shape}"
        )
    if len(images) != len(labels):
        raise ClassifierTrainingError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) < 4:
        raise ClassifierTrainingError(f"need at least 4 training images, got {len(labels)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ClassifierTrainingError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    if len(np.unique(labels)) < 2:
        raise ClassifierTrainingError(
            "training data holds a single class; a classifier needs at least two"
        )
    if soft_labels is not None:
        soft_labels = np.asarray(soft_labels, dtype=np.float32)
        if soft_labels.shape != (len(labels), num_classes):
            raise ClassifierTrainingError(
                f"soft labels must be ({len(labels)}, {num_classes}), got {soft_labels.shape}")
        if (not np.isfinite(soft_labels).all() or soft_labels.min() < 0
                or np.abs(soft_labels.sum(1) - 1.0).max() > 1e-3):
            raise ClassifierTrainingError("soft labels must be probabilities (rows sum to 1)")
    dev = pick_device(device)
    # bf16 where the GPU has it (no loss scaling, so no per-step check for inf on the host);
    # fp16 with a GradScaler on older GPUs; fp32 on CPU.
    amp_dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() \
        else torch.float16
    use_amp = dev.type == "cuda"
    val_mask = stratified_holdout(labels, cfg.val_fraction, cfg.seed, val_eligible)
    # Indices, not copies: the training rows are read batch by batch (see ``images`` above).
    tr_idx, va_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    tr_y = torch.from_numpy(labels[tr_idx])
    tr_soft = None if soft_labels is None else torch.from_numpy(soft_labels[tr_idx])
    va_y = labels[va_idx]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ResNetClassifier(num_classes, width=cfg.width, norm=cfg.norm).to(dev)
    # Under torchrun every process holds the same network (same seed) and the same epoch
    # order (same generator), takes its share of each batch, and DistributedDataParallel
    # averages the gradients, so the networks stay identical; every decision that could
    # differ by a rounding (the best epoch, early stopping, the clock) is rank 0's. Alone,
    # this is the single-process loop unchanged.
    group = group if group is not None and group.active else ProcessGroup.single()
    step_model: torch.nn.Module = model
    if group.active:
        if min(cfg.batch, len(tr_idx)) < 2 * group.world:
            raise ClassifierTrainingError(
                f"batch {min(cfg.batch, len(tr_idx))} cannot be split over {group.world} "
                f"processes (at least 2 rows each); raise the batch to ≥ {2 * group.world}")
        group.start(dev)
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=dev.type == "cuda" or None)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    # Augmentation draws per process (each augments other images); alone, the one generator.
    aug_gen = gen if not group.active else torch.Generator().manual_seed(
        cfg.seed + 1 + 7919 * (group.rank + 1))

    n = len(tr_y)
    steps_per_epoch = max(1, n // cfg.batch) if n >= cfg.batch else 1
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    history: list[dict[str, Any]] = []
    best_key: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    best_probs = np.zeros((0, num_classes))
    best_epoch = 0
    stopped = "epochs"
    total_steps = 0
    start = time.monotonic()
    deadline = start + cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf

    from shared.progress import optional_progress

    with optional_progress(progress, "img") as bar:
        task = (
            bar.add_task("CNN", total=epochs * steps_per_epoch * cfg.batch, status="")
            if bar is not None
            else None
        )
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            # The loss stays on the device until the epoch ends (or the bar shows it): reading
            # it every step would make the host wait for the GPU every step.
            loss_sum = torch.zeros((), device=dev)
            n_steps = 0
            for s in range(steps_per_epoch):
                idx = perm[s * cfg.batch : (s + 1) * cfg.batch]
                if len(idx) < 2 * group.world:  # the same decision on every process
                    continue
                n_global = len(idx)
                idx = group.shard(idx)
                x = _to_input(torch.from_numpy(images.take(tr_idx[idx.numpy()])), dev)
                y = tr_y[idx].to(dev) if tr_soft is None else tr_soft[idx].to(dev)
                if cfg.augment:
                    x = augment_batch(x, aug_gen, cfg.hflip_p, cfg.rotation_deg,
                                      cfg.crop_scale_min)
                    if cfg.intensity:
                        x = intensity_batch(x, aug_gen, cfg.gamma_jitter, cfg.contrast_jitter,
                                            cfg.noise_std)
                with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
                    loss = F.cross_entropy(step_model(x), y,
                                           label_smoothing=cfg.label_smoothing)
                # DDP averages the processes' mean losses; weighting each by its share makes
                # that the global batch's mean when the shares differ by a row.
                weight = len(idx) * group.world / n_global
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss * weight if group.active else loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach().float()
                n_steps += 1
                if bar is not None and task is not None:
                    bar.update(task, advance=n_global)
                    if n_steps % 50 == 1:
                        bar.update(task, status=f"ep {epoch} loss {float(loss_sum) / n_steps:.3f}")
                total_steps += 1
                # Several processes agree on the clock every 16 steps (a host read each time).
                if ((not group.active or total_steps % 16 == 0)
                        and group.any_(time.monotonic() > deadline, dev)):
                    stopped = "time-budget"
                    break
                if cfg.max_steps is not None and total_steps >= cfg.max_steps:
                    stopped = "step-budget"
                    break
            group.broadcast_module(model)  # every process validates the same network
            probs = (predict_scores(model, images, index=va_idx) if len(va_y)
                     else np.zeros((0, num_classes)))
            val_loss = (
                float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)),
                                 torch.from_numpy(va_y)))
                if len(va_y)
                else float("nan")
            )
            val_auc = class_auc(va_y, probs) if len(va_y) else float("nan")
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": float(loss_sum) / n_steps if n_steps else float("nan"),
                    "val_loss": val_loss,
                    "val_auc": val_auc,
                    "seconds": round(time.monotonic() - start, 2),
                }
            )
            key = (
                val_auc if not math.isnan(val_auc) else -math.inf,
                -val_loss if not math.isnan(val_loss) else -math.inf,
            )
            if on_epoch is not None:
                model.eval()
                on_epoch(epoch, model)
            improved = best_state is None or key > best_key
            if group.active:
                improved = group.any_(improved and group.main, dev)
            if improved:
                best_key, best_epoch, best_probs = key, epoch, probs
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if stopped in ("time-budget", "step-budget"):
                break
            if (cfg.patience > 0 and epoch - best_epoch >= cfg.patience
                    and total_steps >= cfg.min_steps):
                stopped = "early-stopping"
                break
            if group.any_(time.monotonic() > deadline, dev):
                stopped = "time-budget"
                break

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    threshold: float | None = None
    val_metrics: dict[str, Any] = {"best_epoch": best_epoch, "n_val": len(va_y)}
    if len(va_y):
        # The best epoch's validation scores, kept from that epoch: the same weights on the
        # same images, so a second pass over the validation part (10 % of a pool of any
        # size) would only repeat them.
        probs = best_probs
        val_metrics["val_auc"] = class_auc(va_y, probs)
        if num_classes == 2:
            threshold = youden_threshold(va_y, probs[:, 1])
    elif num_classes == 2:
        threshold = 0.5
    return TrainedClassifier(
        model=model,
        threshold=threshold,
        history=history,
        config=cfg,
        num_classes=num_classes,
        val_metrics=val_metrics,
        device=str(dev),
        stopped=stopped,
        n_train=int(n),
        n_val=len(va_y),
        steps=total_steps,
    )


def mix_real_synthetic(
    real_images: npt.NDArray[np.uint8],
    real_labels: npt.NDArray[np.int64],
    synth_images: npt.NDArray[np.uint8],
    synth_labels: npt.NDArray[np.int64],
    synthetic_share: float,
    seed: int = 0,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Real images plus synthetic ones making up ``synthetic_share`` of the mixed set.

    Returns (images, labels, is_real). ``synthetic_share`` s in [0, 1): the number of synthetic
    images added is s / (1 − s) × n_real, capped by what is available (sampled without
    replacement, seeded).
    """
    if not 0.0 <= synthetic_share < 1.0:
        raise ValueError(f"synthetic_share must be in [0, 1), got {synthetic_share}")
    n_real = len(real_labels)
    want = round(synthetic_share / (1.0 - synthetic_share) * n_real)
    want = min(want, len(synth_labels))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(synth_labels), size=want, replace=False) if want else np.array([], int)
    images = np.concatenate([real_images, synth_images[pick]]) if want else real_images
    labels = np.concatenate([real_labels, synth_labels[pick]]) if want else real_labels
    is_real = np.zeros(len(labels), bool)
    is_real[:n_real] = True
    return images, np.asarray(labels, np.int64), is_real


def augmentation_experiment(
    real_images: npt.NDArray[np.uint8],
    real_labels: npt.NDArray[np.int64],
    synth_images: npt.NDArray[np.uint8],
    synth_labels: npt.NDArray[np.int64],
    test_images: npt.NDArray[np.uint8],
    test_labels: npt.NDArray[np.int64],
    num_classes: int,
    cfg: ClassifierConfig,
    synthetic_shares: tuple[float, ...] = (0.0, 0.5),
    n_boot: int = 1000,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Real + synthetic vs real alone (Finlayson et al.; Gupta et al.), one row per share.

    Share 0.0 is the real-only control. Validation is carved from the *real* rows only, so
    every arm stops on the same kind of evidence; the test set is scored only after training.
    """
    from shared.metrics.auc import class_auc_with_ci

    rows: list[dict[str, Any]] = []
    for share in synthetic_shares:
        x, y, is_real = mix_real_synthetic(
            real_images, real_labels, synth_images, synth_labels, share, cfg.seed
        )
        t0 = time.monotonic()
        trained = train_classifier(x, y, num_classes, cfg, progress=progress,
                                   val_eligible=is_real)
        probs = predict_scores(trained.model, test_images)
        res = class_auc_with_ci(test_labels, probs, n_boot=n_boot, seed=cfg.seed)
        rows.append(
            {
                "synthetic_share": share,
                "n_real": int(is_real.sum()),
                "n_synthetic": int((~is_real).sum()),
                **res.to_dict(),
                "seconds": round(time.monotonic() - t0, 2),
                "stopped": trained.stopped,
            }
        )
    return rows
