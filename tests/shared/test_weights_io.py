"""Weights travel as npz state dicts with JSON meta, never pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.classifier import ResNetClassifier
from shared.weights_io import WeightsError, load_classifier, load_weights, save_weights


def test_round_trip_is_exact(tmp_path: Path) -> None:
    net = ResNetClassifier(num_classes=3, width=4, norm="group").eval()
    path = tmp_path / "cnn.npz"
    save_weights(net, path, {"classes": "lesion", "threshold": None})
    _arrays, meta = load_weights(path)
    assert meta["classes"] == "lesion" and meta["architecture"]["num_classes"] == 3
    back = load_classifier(path)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(back(x), net(x))
    with np.load(path, allow_pickle=False) as npz:  # readable without pickle
        assert "__meta__" in npz.files


def test_pickles_and_garbage_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "evil.npz"
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WeightsError):
        load_weights(junk)
    with pytest.raises(WeightsError, match="no such"):
        load_weights(tmp_path / "missing.npz")


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cnn.npz"
    save_weights(ResNetClassifier(num_classes=2, width=4), path, {})
    arrays, meta = load_weights(path)
    meta["architecture"]["width"] = 8
    import json

    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError, match="do not fit"):
        load_classifier(path)


def _rewrite(path: Path, arrays: dict, meta: dict) -> None:
    import json

    arrays = dict(arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def test_candidate_files_round_trip_every_network(tmp_path: Path) -> None:
    from shared.weights_io import load_candidates, save_candidates

    torch.manual_seed(0)
    nets = [ResNetClassifier(num_classes=2, width=4, norm="group").eval() for _ in range(3)]
    path = tmp_path / "cands.npz"
    save_candidates(nets, path, {"classes": "binary"},
                    [{"member": 0, "seed": 0, "epoch": e, "synthetic_val_auc": 1.0}
                     for e in (1, 2, 3)], default=[2])
    back, meta = load_candidates(path)
    assert len(back) == 3 and meta["default"] == [2] and meta["candidates"][1]["epoch"] == 2
    x = torch.randn(2, 1, 32, 32)
    for a, b in zip(nets, back, strict=True):
        torch.testing.assert_close(b(x), a(x))
    with pytest.raises(WeightsError, match="load_candidates"):
        load_classifier(path)  # one-network readers never take a set by mistake
    single = tmp_path / "one.npz"
    save_weights(nets[0], single, {})
    one, meta = load_candidates(single)  # a plain file is a set of one
    assert len(one) == 1 and meta["default"] == [0]


def test_hostile_candidate_files_are_refused_before_any_network_is_built(tmp_path: Path
                                                                         ) -> None:
    from shared.weights_io import load_candidates, save_candidates

    nets = [ResNetClassifier(num_classes=2, width=4).eval() for _ in range(2)]
    path = tmp_path / "cands.npz"
    save_candidates(nets, path, {}, [{"epoch": 1}, {"epoch": 2}], default=[0])
    arrays, meta = load_weights(path)
    cases = {
        "default": {**meta, "default": [5]},
        "numbers": {**meta, "candidates": [{"epoch": "<script>"}, {"epoch": 2}]},
        "stacked for 3": {**meta, "candidates": [{"epoch": 1}] * 3},
    }
    for match, bad in cases.items():
        _rewrite(path, arrays, bad)
        with pytest.raises(WeightsError, match=match):
            load_candidates(path)
    # one tensor stacked for fewer networks than the file claims
    name = next(iter(arrays))
    _rewrite(path, {**arrays, name: arrays[name][:1]}, meta)
    with pytest.raises(WeightsError, match="not stacked"):
        load_candidates(path)
    _rewrite(path, arrays, meta)
    with pytest.raises(WeightsError, match="at most 1"):
        load_candidates(path, max_candidates=1)


def test_half_precision_candidates_halve_the_file_and_keep_the_predictions(tmp_path: Path
                                                                          ) -> None:
    from shared.weights_io import load_candidates, save_candidates

    torch.manual_seed(1)
    nets = [ResNetClassifier(num_classes=2, width=8).eval() for _ in range(2)]
    full, half = tmp_path / "full.npz", tmp_path / "half.npz"
    for path, h in ((full, False), (half, True)):
        save_candidates(nets, path, {}, [{"epoch": 1}, {"epoch": 2}], default=[1], half=h)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    back, _ = load_candidates(half)
    x = torch.randn(4, 1, 32, 32)
    for a, b in zip(nets, back, strict=True):
        assert next(b.parameters()).dtype == torch.float32  # computed in float32 as before
        torch.testing.assert_close(torch.softmax(b(x), 1), torch.softmax(a(x), 1),
                                   atol=5e-3, rtol=0)


@pytest.mark.parametrize("dtype", ["U3", "M8[s]", "complex64", "bool"])
def test_tensors_that_are_not_real_numbers_are_refused(tmp_path: Path, dtype: str) -> None:
    """A hostile sender's str/datetime arrays used to escape as TypeError tracebacks from
    torch.from_numpy; complex and bool were cast silently into a different network."""
    path = tmp_path / "cnn.npz"
    save_weights(ResNetClassifier(num_classes=2, width=4).eval(), path, {})
    arrays, meta = load_weights(path)
    name = "fc.weight"
    value = arrays[name].astype(np.int64).astype(dtype) if dtype == "M8[s]" else \
        arrays[name].astype(dtype)
    _rewrite(path, {**arrays, name: value}, meta)
    with pytest.raises(WeightsError, match="real numbers"):
        load_classifier(path)


def test_non_finite_weights_are_refused_and_big_endian_ones_read(tmp_path: Path) -> None:
    from shared.weights_io import load_candidates

    path = tmp_path / "cnn.npz"
    net = ResNetClassifier(num_classes=2, width=4).eval()
    save_weights(net, path, {})
    arrays, meta = load_weights(path)
    for bad in (np.nan, np.inf):
        w = arrays["fc.weight"].copy()
        w[0, 0] = bad
        _rewrite(path, {**arrays, "fc.weight": w}, meta)
        with pytest.raises(WeightsError, match="NaN or infinite"):
            load_candidates(path)
    _rewrite(path, {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}, meta)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(load_classifier(path)(x), net(x))


def test_half_precision_keeps_float32_where_a_value_would_overflow(tmp_path: Path) -> None:
    from shared.weights_io import load_candidates, save_candidates

    net = ResNetClassifier(num_classes=2, width=4).eval()
    with torch.no_grad():
        net.fc.weight[0, 0] = 7e4  # beyond float16's 65504
    path = tmp_path / "cands.npz"
    save_candidates([net, net], path, {}, [{"epoch": 1}, {"epoch": 2}], default=[0], half=True)
    back, _ = load_candidates(path)  # the site refuses inf, so it must not be written
    assert back[0].fc.weight[0, 0].item() == 7e4
    arrays, _ = load_weights(path)
    assert arrays["fc.weight"].dtype == np.float32 and arrays["fc.bias"].dtype == np.float16
