"""Research importers: MedMNIST npz (the shared PneumoniaMNIST file) and PNG folder + CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.errors import IngestError
from node.importers import import_npz, import_png
from node.phantoms import render_with_bbox
from node.store import SiteStore

PNEUMONIA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pneumoniamnist" \
    / "pneumoniamnist_trainval.npz"


@pytest.mark.skipif(not PNEUMONIA.exists(), reason="../shared/data/pneumoniamnist not present")
def test_pneumoniamnist_imports_with_its_splits_and_labels(tmp_path: Path) -> None:
    site = tmp_path / "pn"
    report = import_npz(PNEUMONIA, site, class_names=["No finding", "Pneumonia"],
                        progress=False)
    assert report["splits"] == {"train": 4682, "val": 524}
    store = SiteStore.open(site)
    assert store.size == 28 and len(store) == 5206
    with np.load(PNEUMONIA) as npz:
        train_x, train_y = npz["train_images"], npz["train_labels"][:, 0]
        val_x = npz["val_images"]
    x, y = store.load("train")
    assert y.mean() == pytest.approx(train_y.mean())  # ~74 % pneumonia, as the README says
    # Images arrive unchanged and in order (image ids sort like the array index).
    assert np.array_equal(x, train_x)
    xt, _ = store.load("test")
    assert np.array_equal(xt, val_x)  # val is the held-out test split, never trained on
    assert store.class_names("lesion") == ["No finding", "Pneumonia"]
    again = import_npz(PNEUMONIA, site, progress=False)
    assert again["accepted"] == 0 and again["already_in_store"] == 5206


def test_npz_resize_colour_and_bad_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
    path = tmp_path / "toy.npz"
    np.savez(path, train_images=rgb, train_labels=np.array([0, 1, 2, 0, 1, 2]),
             test_images=rgb[:2], test_labels=np.array([[1], [0]]))
    import_npz(path, tmp_path / "s", size=16, progress=False)
    store = SiteStore.open(tmp_path / "s")
    assert store.size == 16 and len(store) == 8
    assert store.lesion_classes() == ["No finding", "class-1", "class-2"]
    # Too few names (a `;` where the CLI splits on `,`) used to fill in `class-2` silently.
    with pytest.raises(IngestError, match=r"toy\.npz: --class-names gives 2 name\(s\) "
                                          r"\(No finding;A, B\) but the labels run 0…2"):
        import_npz(path, tmp_path / "s4", class_names=["No finding;A", "B"], progress=False)
    assert not (tmp_path / "s4").exists()
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=rgb[..., 0], train_labels=np.zeros((6, 3)))
    with pytest.raises(IngestError, match="multi-label"):
        import_npz(bad, tmp_path / "s2", progress=False)
    np.savez(bad, x=rgb)
    with pytest.raises(IngestError, match="MedMNIST layout"):
        import_npz(bad, tmp_path / "s3", progress=False)


def test_png_folder_with_labels(tmp_path: Path) -> None:
    d = tmp_path / "png"
    (d / "sub").mkdir(parents=True)
    img, box = render_with_bbox(np.random.default_rng(1), "Vertebral collapse", 160)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(d / "a.png")
    Image.fromarray((img * 65535).round().astype(np.uint16)).save(d / "sub" / "b16.png")
    Image.fromarray(np.stack([(img * 255).astype(np.uint8)] * 3, -1)).save(d / "c_rgb.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / "tiny.png")
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(d / "nolabel.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    (d / "readme.txt").write_text("notes")
    labels = tmp_path / "labels.csv"
    x0, y0, x1, y1 = box  # type: ignore[misc]
    labels.write_text(
        "image_id,lesion_type,xmin,ymin,xmax,ymax,patient_id\n"
        f"a,Vertebral collapse,{x0},{y0},{x1},{y1},P1\n"
        "b16,No finding,,,,,P1\nc_rgb,No finding,,,,,P2\ntiny,No finding,,,,,P3\n"
        "broken,No finding,,,,,P4\n"
    )
    report = import_png(d, labels, tmp_path / "site", size=32, progress=False)
    assert report["accepted"] == 3
    assert report["skip_reasons"] == {"not-image": 1, "too-small": 1, "unlabelled": 1,
                                      "unreadable": 1}  # readme.txt; damaged broken.png
    store = SiteStore.open(tmp_path / "site")
    by_id = {s.image_id: s for s in store.samples()}
    assert set(by_id) == {"a", "b16", "c_rgb"}
    # 8-bit, 16-bit and RGB copies of one picture land on (almost) the same store image.
    assert np.abs(by_id["a"].array.astype(int) - by_id["b16"].array).max() <= 1
    assert np.abs(by_id["a"].array.astype(int) - by_id["c_rgb"].array).max() <= 1
    assert by_id["a"].split == by_id["b16"].split  # same patient, same side
    assert by_id["a"].bbox is not None and by_id["a"].bbox[2] <= 32
    again = import_png(d, labels, tmp_path / "site", size=32, progress=False)
    assert again["accepted"] == 0 and again["processed"] == 1  # only the unlabelled retried
