"""Training recipe: learns separable data, validation carved from training, never test data."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from shared.cnn_train import (
    ClassifierConfig,
    ClassifierTrainingError,
    adapt_batchnorm,
    augment_batch,
    augmentation_experiment,
    intensity_batch,
    mix_real_synthetic,
    predict_scores,
    stratified_holdout,
    train_classifier,
)
from shared.config import from_mapping
from tests.conftest import blob_images

FAST = ClassifierConfig(epochs=2, width=4, batch=16, patience=0)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, lesions = blob_images(n, 32, seed)
    return images, np.array([0 if s == "No finding" else 1 for s in lesions], np.int64)


def test_learns_separable_classes_and_returns_eval_model() -> None:
    x, y = _data(96, 1)
    # GroupNorm: with BatchNorm, 3 tiny epochs leave running statistics unsettled.
    cfg = ClassifierConfig(epochs=3, width=8, batch=16, patience=0, norm="group")
    trained = train_classifier(x, y, 2, cfg, progress=False)
    assert not trained.model.training
    assert trained.threshold is not None and 0.0 <= trained.threshold <= 1.0
    assert len(trained.history) == 3
    xt, yt = _data(40, 2)
    p = predict_scores(trained.model, xt)
    assert p.shape == (40, 2) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(yt, p[:, 1]) > 0.8


def test_multiclass_runs() -> None:
    x, _ = _data(48, 3)
    y = np.arange(48) % 3
    trained = train_classifier(x, y, 3, FAST, progress=False)
    assert trained.threshold is None
    assert predict_scores(trained.model, x[:5]).shape == (5, 3)


def test_validation_is_carved_from_training_rows_only() -> None:
    y = np.array([0] * 30 + [1] * 10)
    mask = stratified_holdout(y, 0.1, seed=0)
    assert mask.sum() == 4 and y[mask].sum() == 1  # stratified: 3 + 1
    eligible = np.arange(40) < 20
    mask = stratified_holdout(y, 0.5, seed=0, eligible=eligible)
    assert not mask[~eligible].any()


def test_train_classifier_cannot_receive_a_test_split() -> None:
    """By construction: the signature has no place for test data."""
    params = set(inspect.signature(train_classifier).parameters)
    assert not any("test" in p for p in params)
    assert params == {"images", "labels", "num_classes", "cfg", "progress", "device",
                      "val_eligible", "soft_labels", "on_epoch", "group"}


def test_an_epoch_observer_sees_every_epoch_and_changes_nothing() -> None:
    """``on_epoch`` only watches (benchmarks score each epoch elsewhere with it): the weights
    returned are the same with and without it."""
    x, y = _data(48, 7)
    cfg = ClassifierConfig(epochs=3, width=4, batch=16, patience=0)
    seen: list[int] = []

    def watch(epoch: int, model: torch.nn.Module) -> None:
        assert not model.training
        predict_scores(model, x[:8])
        seen.append(epoch)

    watched = train_classifier(x, y, 2, cfg, progress=False, on_epoch=watch)
    plain = train_classifier(x, y, 2, cfg, progress=False)
    assert seen == [1, 2, 3]
    for a, b in zip(watched.model.state_dict().values(), plain.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_time_budget_stops_training() -> None:
    x, y = _data(64, 4)
    cfg = ClassifierConfig(epochs=50, width=4, batch=16, patience=0, max_minutes=1e-6)
    trained = train_classifier(x, y, 2, cfg, progress=False)
    assert trained.stopped == "time-budget" and len(trained.history) == 1


def test_step_budget_counts_steps_across_epochs() -> None:
    x, y = _data(64, 4)  # 58 training images, batch 16: 3 steps an epoch
    cfg = ClassifierConfig(epochs=50, width=4, batch=16, patience=0, max_steps=5)
    trained = train_classifier(x, y, 2, cfg, progress=False)
    assert trained.stopped == "step-budget" and len(trained.history) == 2
    with pytest.raises(ValueError, match="max_steps"):
        ClassifierConfig(max_steps=0)


def test_early_stopping_stops_before_max_epochs() -> None:
    x, y = _data(64, 5)
    cfg = ClassifierConfig(epochs=30, width=4, batch=16, patience=1, lr=1e-2)
    trained = train_classifier(x, y, 2, cfg, progress=False)
    assert trained.stopped == "early-stopping" and len(trained.history) < 30


def test_augmentation_keeps_shape_and_range_and_is_identity_without_change() -> None:
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, gen)
    assert out.shape == x.shape and out.min() >= -1.0001 and out.max() <= 1.0001
    same = augment_batch(x, gen, hflip_p=0.0, rotation_deg=0.0, crop_scale_min=1.0)
    torch.testing.assert_close(same, x, atol=1e-4, rtol=0)
    flipped = augment_batch(x, gen, hflip_p=1.0, rotation_deg=0.0, crop_scale_min=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-4, rtol=0)


def test_intensity_augmentation_is_per_image_monotone_and_off_at_zero() -> None:
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(intensity_batch(x, gen), x, atol=1e-5, rtol=0)
    out = intensity_batch(x, torch.Generator().manual_seed(1), gamma_jitter=0.5,
                          contrast_jitter=0.0, noise_std=0.0)
    assert out.shape == x.shape and out.min() >= -1.0 and out.max() <= 1.0
    assert not torch.allclose(out, x, atol=1e-3)
    # A gamma curve changes brightness, never the order of pixels within an image: the
    # anatomy (what is brighter than what) survives.
    for i in range(len(x)):
        order = x[i].flatten().argsort()
        assert (out[i].flatten()[order].diff() >= 0).all()
    again = intensity_batch(x, torch.Generator().manual_seed(1), gamma_jitter=0.5)
    torch.testing.assert_close(again, out)  # the generator fixes every draw
    noisy = intensity_batch(x, torch.Generator().manual_seed(2), noise_std=0.2)
    assert (noisy - x).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="gamma_jitter"):
        ClassifierConfig(gamma_jitter=-0.1)
    with pytest.raises(ValueError, match="noise_std"):
        ClassifierConfig(noise_std=float("nan"))


def test_bad_inputs_raise_clear_errors() -> None:
    x, y = _data(16, 6)
    with pytest.raises(ClassifierTrainingError, match="single class"):
        train_classifier(x, np.zeros(16, np.int64), 2, FAST, progress=False)
    with pytest.raises(ClassifierTrainingError, match="uint8"):
        train_classifier(x.astype(np.float32), y, 2, FAST, progress=False)
    with pytest.raises(Exception, match="unknown key"):
        from_mapping(ClassifierConfig, {"epoch": 3})


def test_mix_and_augmentation_experiment() -> None:
    x, y = _data(48, 7)
    sx, sy = _data(48, 8)
    mx, my, is_real = mix_real_synthetic(x, y, sx, sy, 0.5)
    assert len(mx) == 96 and is_real.sum() == 48 and len(my) == 96
    tx, ty = _data(32, 9)
    rows = augmentation_experiment(x, y, sx, sy, tx, ty, 2, FAST, synthetic_shares=(0.0, 0.5),
                                   n_boot=50, progress=False)
    assert [r["n_synthetic"] for r in rows] == [0, 48]
    assert all(r["ci_low"] <= r["auc"] <= r["ci_high"] for r in rows)


def test_a_pool_on_disk_trains_batch_by_batch_to_the_same_model(tmp_path) -> None:
    """The coordinator's pool stays on disk: training reads only batches (never the whole
    set) and gives exactly what training from memory gives."""
    from shared.image_rows import NpyImageRows

    x, y = _data(120, 3)
    path = tmp_path / "images.npy"
    np.save(path, x)
    largest: list[int] = []

    class Counting(NpyImageRows):
        def take(self, idx):  # type: ignore[no-untyped-def]
            largest.append(len(idx))
            return super().take(idx)

    cfg = ClassifierConfig(epochs=2, width=4, batch=16, patience=0, seed=5)
    mem = train_classifier(x, y, 2, cfg, progress=False)
    disk = train_classifier(Counting(path), y, 2, cfg, progress=False)
    mapped = train_classifier(np.load(path, mmap_mode="r"), y, 2, cfg, progress=False)
    n_train = len(y) - len(y) // 10  # the 10 % validation part is carved out first
    assert max(largest) <= 256 and len(largest) >= 2 * (n_train // 16)  # ≥ one read a batch
    for other in (disk, mapped):
        assert [h["train_loss"] for h in other.history] == [h["train_loss"] for h in mem.history]
        assert other.threshold == mem.threshold
        for k, v in mem.model.state_dict().items():
            assert torch.equal(v, other.model.state_dict()[k]), k
    xt, _ = _data(30, 4)
    np.save(tmp_path / "test.npy", xt)
    assert np.allclose(predict_scores(mem.model, xt),
                       predict_scores(mem.model, NpyImageRows(tmp_path / "test.npy"), batch=7),
                       atol=1e-6)


def test_min_steps_raises_epochs_and_holds_off_early_stopping() -> None:
    """A small data set still gets the steps it asked for (SpineGAN's S at a small site)."""
    x, y = _data(64, 4)  # 58 training images, batch 16: 3 steps an epoch
    trained = train_classifier(x, y, 2, ClassifierConfig(epochs=1, width=4, batch=16, patience=0,
                                                         min_steps=10), progress=False)
    assert len(trained.history) == 4  # ceil(10 / 3) epochs, not 1
    trained = train_classifier(x, y, 2, ClassifierConfig(epochs=30, width=4, batch=16,
                                                         patience=1, lr=1e-2, min_steps=30),
                               progress=False)
    assert len(trained.history) >= 10
    with pytest.raises(ValueError, match="min_steps"):
        ClassifierConfig(min_steps=-1)


def test_adapt_batchnorm_re_estimates_statistics_on_the_given_images_only() -> None:
    from shared.classifier import ResNetClassifier
    from shared.cnn_train import to_tensor_range

    torch.manual_seed(0)
    model = ResNetClassifier(2, width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = _data(70, 3)
    x = (x // 2 + 100).astype(np.uint8)  # other intensities than the stats the net holds
    adapted = adapt_batchnorm(model, x, batch=32)  # three batches, the last one short

    for k, v in model.state_dict().items():  # the sender's network is untouched
        assert torch.equal(v, before[k]), k
    # The stem's BatchNorm now holds the mean/variance of the stem's output over all 70 images.
    with torch.no_grad():
        feats = model.stem(to_tensor_range(torch.from_numpy(x)).unsqueeze(1))
    mean = feats.mean((0, 2, 3))
    var = feats.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(adapted.stem_bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapted.stem_bn.running_var, var, rtol=0.05, atol=1e-5)
    assert not torch.equal(adapted.stem_bn.running_mean, model.stem_bn.running_mean)
    # Only the statistics changed: every learned weight is the sender's.
    for (k, v), (k2, v2) in zip(model.named_parameters(), adapted.named_parameters(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert not adapted.training
    assert predict_scores(adapted, x).shape == (70, 2)


def test_adapt_batchnorm_refuses_no_images_and_copies_a_net_without_batchnorm() -> None:
    from shared.classifier import ResNetClassifier

    model = ResNetClassifier(2, width=4, norm="group").eval()
    with pytest.raises(ClassifierTrainingError, match="N ≥ 1"):
        adapt_batchnorm(model, np.zeros((0, 32, 32), np.uint8))
    x, _ = _data(8, 4)
    copy = adapt_batchnorm(model, x)
    assert copy is not model
    np.testing.assert_array_equal(predict_scores(copy, x), predict_scores(model, x))


def test_adapt_batchnorm_statistics_do_not_depend_on_the_images_order() -> None:
    """Images grouped by scanner (dark first, bright after, as a store in ingest order may
    hold them) must give the variance over all images, not the mean of per-batch variances."""
    from shared.classifier import ResNetClassifier
    from shared.cnn_train import to_tensor_range

    torch.manual_seed(0)
    model = ResNetClassifier(2, width=4).eval()
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.integers(0, 60, (300, 32, 32)), rng.integers(190, 255, (300, 32, 32))
                        ]).astype(np.uint8)
    adapted = adapt_batchnorm(model, x, batch=256)
    with torch.no_grad():
        feats = model.stem(to_tensor_range(torch.from_numpy(x)).unsqueeze(1))
    torch.testing.assert_close(adapted.stem_bn.running_var, feats.var((0, 2, 3)), rtol=0.05,
                               atol=1e-6)
