"""Phantoms: deterministic, varied as real archives are, non-IID across sites, learnable."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.phantoms import (
    FAKE_PHI,
    LESION_CLASSES,
    SiteProfile,
    make_sites,
    phantom_store,
    phi_strings,
    render,
    render_with_bbox,
)
from node.store import SiteStore


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_sites(tmp_path_factory.mktemp("ph"), sites=3, seed=1, scale=0.1, size=128)


def _digest(site: Path) -> str:
    h = hashlib.sha256((site / "labels.csv").read_bytes())
    for p in sorted((site / "dicom").glob("*.dcm")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_phantoms_are_deterministic_by_seed(tmp_path: Path) -> None:
    a = make_sites(tmp_path / "a", sites=1, seed=3, scale=0.05, size=128)[0]
    b = make_sites(tmp_path / "b", sites=1, seed=3, scale=0.05, size=128)[0]
    c = make_sites(tmp_path / "c", sites=1, seed=4, scale=0.05, size=128)[0]
    assert _digest(a) == _digest(b) != _digest(c)
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    assert np.array_equal(render(rng1, "Spondylolisthesis", 48),
                          render(rng2, "Spondylolisthesis", 48))


def test_dicom_variety_and_fake_phi(sites: list[Path]) -> None:
    seen: dict[str, set[object]] = {"syntax": set(), "bits": set(), "photometric": set(),
                                    "signed": set()}
    rescaled = windowed = 0
    for site in sites:
        for p in sorted((site / "dicom").glob("*.dcm")):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            seen["syntax"].add(ds.file_meta.TransferSyntaxUID.name)
            seen["bits"].add(int(ds.BitsStored))
            seen["photometric"].add(ds.PhotometricInterpretation)
            seen["signed"].add(int(ds.PixelRepresentation))
            rescaled += "RescaleSlope" in ds
            windowed += "WindowCenter" in ds
            for kw, pattern in FAKE_PHI.items():
                assert str(ds.get(kw, "")).strip(), f"{p.name} lacks {kw}"
                if "{" in pattern:
                    assert "FAKE" in str(ds.get(kw)) or kw.endswith("Date")
    assert {"Implicit VR Little Endian", "Explicit VR Little Endian", "RLE Lossless",
            "JPEG 2000 Image Compression (Lossless Only)"} <= seen["syntax"]
    assert {8, 12, 16} <= seen["bits"]
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["signed"] == {0, 1}
    assert rescaled > 0 and windowed > 0
    phi = phi_strings(sites[0] / "dicom")
    assert any(v.startswith("FAKE^PATIENT^A") for v in phi)
    assert any(v.startswith("FAKE GENERAL HOSPITAL") for v in phi)


def test_labels_have_every_class_and_boxes_for_lesions(sites: list[Path]) -> None:
    for site in sites:
        with open(site / "labels.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert set(rows[0]) == {"image_id", "lesion_type", "xmin", "ymin", "xmax", "ymax"}
        assert {r["lesion_type"] for r in rows} == set(LESION_CLASSES)
        stems = {p.stem for p in (site / "dicom").glob("*.dcm")}
        assert {r["image_id"] for r in rows} == stems
        for r in rows:
            has_box = bool(r["xmin"])
            assert has_box == (r["lesion_type"] != "No finding")
            if has_box:
                assert float(r["xmin"]) < float(r["xmax"]) and float(r["ymin"]) < float(r["ymax"])


def test_sites_are_non_iid(sites: list[Path]) -> None:
    shapes, mix = [], []
    for site in sites:
        ds = pydicom.dcmread(next((site / "dicom").glob("*.dcm")), stop_before_pixels=True)
        shapes.append((int(ds.Rows), int(ds.Columns)))
        with open(site / "labels.csv") as fh:
            lesions = [r["lesion_type"] for r in csv.DictReader(fh)]
        mix.append(lesions.count("No finding") / len(lesions))
    assert len(set(shapes)) == 3  # matrix size / aspect differ
    assert max(mix) - min(mix) > 0.1  # class mix differs
    rng = np.random.default_rng(0)
    dark = np.mean([render(rng, "No finding", 64, exposure=0.75).mean() for _ in range(4)])
    bright = np.mean([render(rng, "No finding", 64, exposure=1.3).mean() for _ in range(4)])
    assert bright - dark > 0.05  # exposure changes the picture


def test_lesions_change_the_image_where_the_box_says() -> None:
    for lesion in LESION_CLASSES[1:]:
        normal = render_with_bbox(np.random.default_rng(7), "No finding", 96)[0]
        img, box = render_with_bbox(np.random.default_rng(7), lesion, 96)
        assert box is not None
        x0, y0, x1, y1 = (round(v) for v in box)
        diff = np.abs(img - normal)
        inside = diff[y0:y1, x0:x1].mean()
        assert inside > 0.05, lesion
        assert inside > 1.5 * diff.mean(), lesion  # the change is concentrated in the box


def test_severity_scales_the_lesion_and_a_profile_draws_it() -> None:
    """Early disease: a lower severity departs less from the same patient's normal anatomy."""
    for lesion in LESION_CLASSES[2:]:  # the three deformations; an implant is all or nothing
        normal = render_with_bbox(np.random.default_rng(3), "No finding", 96)[0]
        change = [np.abs(render_with_bbox(np.random.default_rng(3), lesion, 96,
                                          severity=s)[0] - normal).sum()
                  for s in (0.1, 0.5, 1.0)]
        assert change[0] < change[1] < change[2], (lesion, change)
    for bad in (0.0, -0.2, 1.5, float("nan")):
        with pytest.raises(ValueError, match="severity"):
            render_with_bbox(np.random.default_rng(0), "Spondylolisthesis", 32, severity=bad)
    with pytest.raises(ValueError, match="severity"):
        SiteProfile(64, 64, 1.0, 10, (0.5, 0.5, 0.0, 0.0, 0.0), severity=(0.8, 0.2))


def test_phantom_store_fast_path(tmp_path: Path) -> None:
    site = phantom_store(tmp_path / "s", n=40, size=32, seed=2, classes="lesion")
    store = SiteStore.open(site)
    from shared.vocabulary import LESION_CLASSES as VOCABULARY

    # Lesion mode is always the whole vocabulary (classes a site lacks count 0).
    assert len(store) == 40 and store.lesion_classes() == list(VOCABULARY)
    x, y = store.load(classes="binary")
    assert x.shape == (40, 32, 32) and 0.1 < y.mean() < 0.9
    assert store.summary()["test"] > 0  # type: ignore[operator]
    for split in ("train", "test"):  # a lesion-mode test split that lacked classes hid bugs
        assert {s.lesion for s in store.samples(split)} == set(LESION_CLASSES), split


def test_a_small_cnn_separates_normal_from_abnormal_phantoms() -> None:
    """Far above chance (0.5): the classes are learnable, so GAN/CNN results mean something."""
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: extra threads only spin on a shared 2-core box

    def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for i in range(n):
            lesion = LESION_CLASSES[0] if i % 2 == 0 else LESION_CLASSES[1 + (i // 2) % 4]
            xs.append(render(rng, lesion, 48, float(np.exp(rng.normal(0, 0.15)))))
            ys.append(i % 2)
        return torch.tensor(np.stack(xs))[:, None] * 2 - 1, torch.tensor(ys)

    x_train, y_train = data(256, 1)
    x_test, y_test = data(160, 2)

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]

    features = nn.Sequential(*block(1, 8, 2), *block(8, 16, 2), *block(16, 32, 1),
                             nn.MaxPool2d(2), *block(32, 32, 1))
    head = nn.Linear(64, 2)

    def forward(x: torch.Tensor) -> torch.Tensor:
        z = features(x)
        return head(torch.cat([z.amax((2, 3)), z.mean((2, 3))], 1))

    params = list(features.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(6):
        features.train()
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(forward(x_train[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    features.eval()
    with torch.no_grad():
        scores = forward(x_test).softmax(1)[:, 1].numpy()
    torch.set_num_threads(threads)
    auc = roc_auc_score(y_test.numpy(), scores)
    assert auc > 0.85, f"AUC {auc:.3f}: phantom classes are not learnable"
