"""Label sheets against the lesion vocabulary: unknown names, mixed spellings, two lesions on
one image, unusable boxes, and the site's label map; each handled as node/labels.py says, with
one line naming the sheet row, and nothing already in the store lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.errors import IngestError
from node.ingest import preprocess
from node.labels import LABEL_MAP, load_label_map, load_labels
from node.store import SiteStore
from tests.node.test_dicom_pixels import make_ds

HEADER = "image_id,lesion_type,xmin,ymin,xmax,ymax\n"


def sheet(tmp_path: Path, body: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def dicoms(folder: Path, names: list[str], side: int = 160) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    for i, name in enumerate(names):
        ds = make_ds(rng.integers(0, 4000, (side, side)).astype(np.uint16), PatientID=f"P{i}")
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)


def test_mixed_spellings_of_one_class_are_one_class(tmp_path: Path) -> None:
    s = load_labels(sheet(tmp_path, "a,osteophyte,,,,\nb,OSTEOPHYTES,,,,\nc, Osteophytes ,,,,\n"
                                    "d,no_finding,,,,\ne,Normal,,,,\nf,Disc Space Narrowing,,,,\n"))
    assert {k: r.lesion for k, r in s.rows.items()} == {
        "a": "Osteophytes", "b": "Osteophytes", "c": "Osteophytes", "d": "No finding",
        "e": "No finding", "f": "Disc space narrowing"}
    assert s.classes() == {"Disc space narrowing": 1, "No finding": 2, "Osteophytes": 3}
    assert s.notes == [] and s.rejected == {}


def test_unknown_names_are_left_out_naming_the_row(tmp_path: Path) -> None:
    s = load_labels(sheet(tmp_path, "a,DSN,,,,\nb,Osteophytes,,,,\nb,Schmorl node,,,,\n"
                                    "c,No finding,,,,\n"))
    assert set(s.rows) == {"b", "c"}
    assert s.rejected == {"a": "labels.csv:2: lesion type 'DSN' is not a VinDr-SpineXR class; "
                               "add it to the site's label-map.csv to use it"}
    # An unknown row beside a usable one: the image keeps the usable row; the line says so.
    assert s.rows["b"].lesion == "Osteophytes"
    assert s.notes == ["labels.csv:4: lesion type 'Schmorl node' is not a VinDr-SpineXR class; "
                       "add it to the site's label-map.csv to use it; row ignored, the image "
                       "keeps its other rows"]


def test_the_site_label_map_maps_local_words(tmp_path: Path) -> None:
    (tmp_path / LABEL_MAP).write_text("label,class\nDSN,disc space narrowing\n"
                                      "Schmorl nodes,Other lesions\nPneumonia,abnormal\n")
    words = load_label_map(tmp_path / LABEL_MAP)
    s = load_labels(sheet(tmp_path, "a,dsn,,,,\nb,schmorl node,,,,\nc,Pneumonia,,,,\n"), words)
    assert {k: r.lesion for k, r in s.rows.items()} == {
        "a": "Disc space narrowing", "b": "Other lesions", "c": "Abnormal"}
    assert load_label_map(tmp_path / "missing.csv") == {}


@pytest.mark.parametrize(("body", "match"), [
    ("label,class\nDSN,Disc narrowing thing\n", r"label-map.csv:2: maps 'DSN' to 'Disc narrowing"),
    ("label,class\nDSN,Osteophytes\ndsn,Other lesions\n", r"label-map.csv:3: 'dsn' is already"),
    ("word,target\nDSN,Osteophytes\n", "needs columns label and class"),
])
def test_a_bad_label_map_stops_the_run_naming_file_and_row(tmp_path: Path, body: str,
                                                           match: str) -> None:
    (tmp_path / LABEL_MAP).write_text(body)
    with pytest.raises(IngestError, match=match):
        load_label_map(tmp_path / LABEL_MAP)


def test_two_lesions_on_one_image_keep_the_rarest_whatever_the_row_order(tmp_path: Path) -> None:
    rows = ["x,Osteophytes,1,1,5,5", "x,Vertebral collapse,10,10,20,20", "x,No finding,,,,",
            "y,Osteophytes,,,,", "z,Osteophytes,,,,"]
    a = load_labels(sheet(tmp_path, "\n".join(rows) + "\n", "a.csv"))
    b = load_labels(sheet(tmp_path, "\n".join(reversed(rows)) + "\n", "b.csv"))
    for s in (a, b):
        row = s.rows["x"]
        # Vertebral collapse: 1 image in the sheet, Osteophytes: 3; its own box comes along.
        assert (row.lesion, row.bbox) == ("Vertebral collapse", (10.0, 10.0, 20.0, 20.0))
        (note,) = s.notes
        assert "image x has several lesion types" in note and "kept 'Vertebral collapse'" in note
    assert a.notes[0].startswith("a.csv: image x has several lesion types (rows 2 (Osteophytes), "
                                 "3 (Vertebral collapse))")


@pytest.mark.parametrize(("box", "why"), [
    ("5,5,5,9", "has zero area"), ("9,5,4,9", "has zero area"),
    ("-3,5,20,20", "lies outside the image"), ("1,2,,", "are not four numbers"),
    ("1,2,three,4", "are not four numbers"),
])
def test_an_unusable_box_keeps_the_image_and_class_without_it(tmp_path: Path, box: str,
                                                              why: str) -> None:
    s = load_labels(sheet(tmp_path, f"a,Osteophytes,{box}\n"))
    assert (s.rows["a"].lesion, s.rows["a"].bbox) == ("Osteophytes", None)
    (note,) = s.notes
    assert note.startswith("labels.csv:2: box") and why in note and "image kept" in note


def test_preprocess_skips_unknown_labels_keeps_the_store_and_retries_after_a_map(
        tmp_path: Path) -> None:
    src, site = tmp_path / "dicom", tmp_path / "site"
    dicoms(src, ["a", "b"])
    labels = sheet(tmp_path, "a,Osteophytes,10,10,40,40\nb,No finding,,,,\n")
    first = preprocess(src, labels, site, size=32, workers=1, progress=False, min_side=32)
    assert first["accepted"] == 2
    before = {s.image_id: (s.lesion, s.array.tobytes()) for s in SiteStore.open(site)}
    # New files: one with a word outside the vocabulary, one with a box beyond its image.
    dicoms(src, ["a", "b", "c", "d"])
    labels = sheet(tmp_path, "a,DSN,,,,\nb,No finding,,,,\nc,DSN,,,,\n"
                             "d,Spondylolisthesis,100,100,900,120\n")
    lines: list[str] = []
    second = preprocess(src, labels, site, size=32, workers=1, progress=False, min_side=32,
                        echo=lines.append)
    assert second["accepted"] == 1 and second["skip_reasons"] == {"unknown-label": 1}
    (skip,) = second["skipped_files"]
    assert skip["detail"] == ("c.dcm: labels.csv:4: lesion type 'DSN' is not a VinDr-SpineXR "
                              "class; add it to the site's label-map.csv to use it")
    assert second["label_notes"] == ["labels.csv:5: box (100, 100, 900, 120) reaches beyond the "
                                     "160×160 image; image kept without a box"]
    assert any(line.startswith("skipped [unknown-label] c.dcm: labels.csv:4") for line in lines)
    assert any(line.startswith("label note: labels.csv:5: box") for line in lines)
    store = SiteStore.open(site)
    by_id = {s.image_id: s for s in store}
    assert (by_id["d"].lesion, by_id["d"].bbox) == ("Spondylolisthesis", None)
    # Nothing already in the store was lost or relabelled by the new sheet.
    assert {k: (by_id[k].lesion, by_id[k].array.tobytes()) for k in before} == before
    assert store.lesion_classes()[3] == "Osteophytes"  # the vocabulary's ids, all eight
    # The admin maps the word: the skipped file is retried and accepted on the next run.
    (site / LABEL_MAP).write_text("label,class\nDSN,Disc space narrowing\n")
    third = preprocess(src, labels, site, size=32, workers=1, progress=False, min_side=32)
    assert third["accepted"] == 1 and third["skipped"] == 0
    assert {s.image_id: s.lesion for s in SiteStore.open(site)}["c"] == "Disc space narrowing"
    assert third["label_sheet"]["label_map"] == str((site / LABEL_MAP).resolve())
