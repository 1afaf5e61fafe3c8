"""`node preprocess` end to end on phantom DICOMs: labels, split, PHI, bad input, resume."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.errors import IngestError
from node.ingest import REPORT_NAME, preprocess
from node.phantoms import FAKE_PHI, make_site, phi_strings
from node.store import NORMAL, SiteStore

SIZE = 32
SYNTHLEARN = [sys.executable, "-c", "from shared.cli import main; main()"]


@pytest.fixture(scope="module")
def phantom_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 phantom DICOMs of site a at 192 px (all variants), with labels.csv."""
    return make_site(tmp_path_factory.mktemp("phantoms"), 0, seed=5, scale=0.2, size=192)


@pytest.fixture(scope="module")
def reference(phantom_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted, parallel run (2 workers) over the phantom site."""
    site = tmp_path_factory.mktemp("ref") / "site"
    site.mkdir()
    # A fixed salt pins the patient split: with ~20 patients a random one leaves the test
    # split empty about once in a hundred runs.
    (site / "salt").write_text("ingest-test-salt")
    preprocess(phantom_site / "dicom", phantom_site / "labels.csv", site, size=SIZE,
               workers=2, progress=False)
    return site


def labels_of(site: Path) -> dict[str, str]:
    with open(site / "labels.csv") as fh:
        return {r["image_id"]: r["lesion_type"] for r in csv.DictReader(fh)}


def store_view(site: Path) -> list[tuple[object, ...]]:
    """Everything the read API exposes, for store-equality checks."""
    return [(s.image_id, s.array.tobytes(), s.label, s.lesion, s.split, s.bbox)
            for s in SiteStore.open(site).samples()]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNTHLEARN, *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_phantom_site_is_ingested_with_labels_split_and_boxes(
    phantom_site: Path, reference: Path
) -> None:
    expected = labels_of(phantom_site)
    store = SiteStore.open(reference)
    samples = list(store.samples())
    assert {s.image_id: s.lesion for s in samples} == expected
    assert all(s.array.shape == (SIZE, SIZE) and s.array.dtype == np.uint8 for s in samples)
    assert all(s.label == (0 if s.lesion == NORMAL else 1) for s in samples)
    for s in samples:  # lesion boxes are carried into store pixels, normals have none
        if s.lesion == NORMAL:
            assert s.bbox is None
        else:
            assert s.bbox is not None and 0 <= s.bbox[0] < s.bbox[2] <= SIZE
    # Patient-level split: every image of a PatientID on one side.
    pid = {p.stem: str(pydicom.dcmread(p, stop_before_pixels=True).PatientID)
           for p in (phantom_site / "dicom").glob("*.dcm")}
    sides: dict[str, set[str]] = {}
    for s in samples:
        sides.setdefault(pid[s.image_id], set()).add(s.split)
    assert all(len(v) == 1 for v in sides.values())
    assert len(sides) < len(samples)  # some patients really have several images
    assert {s.split for s in samples} == {"train", "test"}
    report = (reference / "store" / REPORT_NAME).read_text()
    assert '"accepted": 40' in report and '"skipped": 0' in report
    assert store.report() is not None and store.report()["accepted"] == 40  # type: ignore[index]
    # The local provenance map ties each image to its source file; iteration = samples().
    assert store.provenance() == {i: f"{i}.dcm" for i in expected}
    assert [s.image_id for s in store] == sorted(expected)


def test_no_phi_value_appears_in_any_byte_under_the_site_dir(
    phantom_site: Path, reference: Path
) -> None:
    phi = phi_strings(phantom_site / "dicom")
    kinds = {kw for kw in FAKE_PHI}
    assert len(phi) > 40 and kinds  # names, IDs, dates, institution, accession, UIDs
    blobs = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    assert any(p.name == "catalog.sqlite" for p in blobs)
    for path, blob in blobs.items():
        for value in phi:
            assert value.encode() not in blob, f"PHI {value!r} found in {path}"
    # And the PatientID is not there in plain form either: only the salted hash.
    con = sqlite3.connect(reference / "store" / "catalog.sqlite")
    keys = {r[0] for r in con.execute("SELECT patient_key FROM images")}
    con.close()
    assert all(len(k) == 64 for k in keys)


def test_parallel_killed_and_resumed_runs_equal_the_uninterrupted_one(
    phantom_site: Path, reference: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(reference / "salt", site / "salt")  # same salt → same patient split
    args = ["node", "preprocess", str(phantom_site / "dicom"), "--labels",
            str(phantom_site / "labels.csv"), "--site-dir", str(site), "--size", str(SIZE),
            "--workers", "1", "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen([*SYNTHLEARN, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = site / "store" / "catalog.sqlite"
    done = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if catalog.exists():
            try:
                con = sqlite3.connect(catalog, timeout=1)
                done = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                done = 0
            if done >= 4:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = SiteStore.open(site)
    assert 0 < len(partial) < 40, "the run was not interrupted mid-way"
    assert all(s.array.shape == (SIZE, SIZE) for s in partial.samples())  # consistent
    result = cli(*args[:-1])
    assert result.returncode == 0, result.stderr
    assert "already in the store" in result.stdout
    assert store_view(site) == store_view(reference)


def test_rerun_is_incremental_and_picks_up_new_files_and_labels(
    phantom_site: Path, tmp_path: Path
) -> None:
    dicom = tmp_path / "dicom"
    files = sorted((phantom_site / "dicom").glob("*.dcm"))[:6]
    dicom.mkdir()
    for f in files[:4]:
        shutil.copy(f, dicom / f.name)
    full = labels_of(phantom_site)
    labels = tmp_path / "labels.csv"

    def write_labels(stems: list[str]) -> None:
        labels.write_text("image_id,lesion_type\n" + "".join(f"{s},{full[s]}\n" for s in stems))

    write_labels([f.stem for f in files[:3]])  # the 4th file has no row yet
    site = tmp_path / "site"
    first = preprocess(dicom, labels, site, size=SIZE, workers=1, progress=False)
    assert (first["accepted"], first["skip_reasons"]) == (3, {"unlabelled": 1})
    before = store_view(site)
    again = preprocess(dicom, labels, site, size=SIZE, workers=1, progress=False)
    assert again["accepted"] == 0 and again["already_in_store"] == 3
    assert store_view(site) == before  # nothing lost, nothing redone
    for f in files[4:]:
        shutil.copy(f, dicom / f.name)
    write_labels([f.stem for f in files])
    third = preprocess(dicom, labels, site, size=SIZE, workers=1, progress=False)
    assert third["processed"] == 3 and third["accepted"] == 3  # 2 new + the now-labelled one
    assert len(SiteStore.open(site)) == 6
    assert store_view(site)[:0] == before[:0] and set(before) <= set(store_view(site))


def _plain(path: Path) -> pydicom.FileDataset:
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    return ds


def _bad_folder(phantom_site: Path, root: Path) -> tuple[Path, Path, dict[str, str]]:
    """One good file plus one file per bad-input kind; returns (dir, labels, name→reason)."""
    src = sorted((phantom_site / "dicom").glob("*.dcm"))
    good = src[0]
    d = root / "dicom"
    d.mkdir()
    shutil.copy(good, d / "good.dcm")
    data = good.read_bytes()
    (d / "notes.txt").write_text("this is not a DICOM file\n" * 20)
    (d / "cut.dcm").write_bytes(data[: len(data) // 2])
    ds = pydicom.dcmread(src[1])
    del ds.PixelData
    ds.save_as(d / "nopixels.dcm")
    ds = _plain(src[2])
    ds.Rows = ds.Rows + 7
    ds.save_as(d / "badlength.dcm")
    ds = _plain(src[3])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds.save_as(d / "video.dcm")
    ds = _plain(src[4])
    arr = ds.pixel_array[:100, :100].copy()
    ds.Rows, ds.Columns, ds.PixelData = 100, 100, arr.tobytes()
    ds.save_as(d / "small.dcm")
    shutil.copy(src[5], d / "nolabel.dcm")
    (d / "dangling.dcm").symlink_to(root / "does-not-exist.dcm")
    labels = root / "labels.csv"
    stems = ["good", "notes", "cut", "nopixels", "badlength", "video", "small", "dangling"]
    labels.write_text("image_id,lesion_type\n" + "".join(f"{s},No finding\n" for s in stems))
    reasons = {"notes.txt": "not-dicom", "cut.dcm": "truncated",
               "nopixels.dcm": "missing-pixel-data", "badlength.dcm": "length-mismatch",
               "video.dcm": "no-codec", "small.dcm": "too-small", "nolabel.dcm": "unlabelled",
               "dangling.dcm": "unreadable"}
    return d, labels, reasons


def test_every_bad_input_is_skipped_with_a_one_line_reason_naming_the_file(
    phantom_site: Path, tmp_path: Path
) -> None:
    d, labels, reasons = _bad_folder(phantom_site, tmp_path)
    site = tmp_path / "site"
    result = cli("node", "preprocess", str(d), "--labels", str(labels), "--site-dir",
                 str(site), "--size", str(SIZE), "--workers", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for name, reason in reasons.items():
        hits = [ln for ln in lines if name in ln]
        assert len(hits) == 1 and f"[{reason}]" in hits[0], (name, reason, hits)
    store = SiteStore.open(site)
    assert [s.image_id for s in store.samples()] == ["good"]
    assert {s.source_key: s.reason for s in store.skipped()} == reasons
    assert "1 accepted" in result.stdout and "8 skipped" in result.stdout
    # Nothing already in the store is lost when a later run meets only bad files.
    (d / "good.dcm").unlink()
    again = cli("node", "preprocess", str(d), "--labels", str(labels), "--site-dir",
                str(site), "--size", str(SIZE), "--workers", "1")
    assert again.returncode == 0 and len(SiteStore.open(site)) == 1


def test_non_images_without_a_label_row_are_skipped_for_what_they_are(
    phantom_site: Path, tmp_path: Path
) -> None:
    """A hospital export holds SRs, presentation states, a DICOMDIR, colour and multi-frame
    objects that no label sheet names: they are not 'unlabelled' (add a row), but not images."""
    from pydicom.data import get_testdata_file

    src = sorted((phantom_site / "dicom").glob("*.dcm"))
    d = tmp_path / "dicom"
    d.mkdir()
    shutil.copy(src[0], d / "good.dcm")
    for name, sop_class in (("report.dcm", "1.2.840.10008.5.1.4.1.1.88.11"),  # Basic Text SR
                            ("state.dcm", "1.2.840.10008.5.1.4.1.1.11.1")):  # GSPS
        ds = pydicom.dcmread(src[1])
        del ds.PixelData
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.save_as(d / name)
    shutil.copy(str(get_testdata_file("DICOMDIR")), d / "DICOMDIR")
    ds = _plain(src[2])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(d / "cine.dcm")
    ds = _plain(src[3])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * 3)
    ds.save_as(d / "photo.dcm")
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,lesion_type\ngood,No finding\n")
    report = preprocess(d, labels, tmp_path / "site", size=SIZE, workers=1, progress=False)
    got = {s["file"]: s for s in report["skipped_files"]}
    assert {k: v["reason"] for k, v in got.items()} == {
        "report.dcm": "missing-pixel-data", "state.dcm": "missing-pixel-data",
        "DICOMDIR": "missing-pixel-data", "cine.dcm": "multi-frame", "photo.dcm": "colour"}
    assert all(name in s["detail"] for name, s in got.items())
    assert report["accepted"] == 1


def test_a_run_that_accepts_nothing_exits_non_zero_with_a_clear_message(
    phantom_site: Path, tmp_path: Path
) -> None:
    d, labels, _ = _bad_folder(phantom_site, tmp_path)
    (d / "good.dcm").unlink()
    result = cli("node", "preprocess", str(d), "--labels", str(labels), "--site-dir",
                 str(tmp_path / "site"), "--size", str(SIZE), "--workers", "1")
    assert result.returncode != 0
    assert "no image was accepted" in result.stderr
    assert "Traceback" not in result.stderr


def test_generic_label_sheet_and_unusable_inputs(phantom_site: Path, tmp_path: Path) -> None:
    dicom = tmp_path / "d"
    dicom.mkdir()
    files = sorted((phantom_site / "dicom").glob("*.dcm"))[:2]
    for f in files:
        shutil.copy(f, dicom / f.name)
    generic = tmp_path / "generic.csv"
    generic.write_text(f"image_id,label\n{files[0].stem},0\n{files[1].stem},1\n")
    report = preprocess(dicom, generic, tmp_path / "site", size=SIZE, workers=1,
                        progress=False)
    assert report["accepted"] == 2
    assert SiteStore.open(tmp_path / "site").lesion_classes() == ["No finding", "Abnormal"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,diagnosis\na,b\n")
    with pytest.raises(IngestError, match="image_id and lesion_type"):
        preprocess(dicom, bad, tmp_path / "s2", size=SIZE, progress=False)
    with pytest.raises(IngestError, match="not a folder"):
        preprocess(tmp_path / "missing", generic, tmp_path / "s3", size=SIZE, progress=False)


def test_a_worker_dying_on_one_file_skips_that_file_and_the_run_finishes(
    phantom_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node import ingest
    from tests.node import _crashing_worker

    dicom = tmp_path / "dicom"
    dicom.mkdir()
    files = sorted((phantom_site / "dicom").glob("*.dcm"))[:5]
    for f in files:
        shutil.copy(f, dicom / f.name)
    full = labels_of(phantom_site)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,lesion_type\n" + "".join(f"{f.stem},{full[f.stem]}\n"
                                                          for f in files))
    crash = files[1].name
    monkeypatch.setenv(_crashing_worker.CRASH_ON, crash)
    monkeypatch.setattr(ingest, "process_file", _crashing_worker.process_file)
    report = preprocess(dicom, labels, tmp_path / "site", size=SIZE, workers=2,
                        progress=False)
    assert report["accepted"] == 4 and report["skip_reasons"] == {"decode-error": 1}
    (skip,) = report["skipped_files"]
    assert skip["file"] == crash and "worker process died while decoding" in skip["detail"]
    assert crash in skip["detail"]
    store = SiteStore.open(tmp_path / "site")
    assert sorted(s.image_id for s in store.samples()) == sorted(f.stem for f in files
                                                                 if f.name != crash)


@pytest.mark.parametrize(("data", "expected"), [
    # UTF-8 BOM, CRLF, spaces around cells, several rows per image (a lesion row wins).
    ("\ufeffimage_id , lesion_type\r\n img1 , No finding \r\nimg2,No finding\r\n"
     "img2, Osteophytes\r\n".encode(), {"img1": NORMAL, "img2": "Osteophytes"}),
    # Excel "CSV" on a Western European Windows: cp1252, semicolons, empty rows at the end.
    ("Image_ID;Lesion_Type\r\nimg1;Fracture vertébrale\r\nimg2;No finding\r\n;\r\n;\r\n"
     .encode("cp1252"), {"img1": "Vertebral collapse", "img2": NORMAL}),
    # Excel "Unicode text": UTF-16 with a BOM, tab separated; generic duplicates 0 then 1.
    ("image_id\tlabel\nimg1\t0\nimg1\t1\nimg2\t0\n".encode("utf-16"),
     {"img1": "Abnormal", "img2": NORMAL}),
], ids=["utf8-bom-crlf-spaces", "cp1252-semicolon", "utf16-tab"])
def test_label_sheets_as_spreadsheets_save_them(tmp_path: Path, data: bytes,
                                                expected: dict[str, str]) -> None:
    from node.labels import load_labels
    from shared.vocabulary import spelling_key

    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    # A site word outside the vocabulary counts only through the site's label map.
    words = {spelling_key("Fracture vertébrale"): "Vertebral collapse"}
    assert {k: r.lesion for k, r in load_labels(path, words).rows.items()} == expected


def _instance_copies(src: Path) -> tuple[pydicom.Dataset, Path]:
    """IMG1 and IMG2 (two instances of patient P1), IMG1 again as b/export_0001, and a sheet
    keyed by file name that puts the copy on the other side of the split."""
    from tests.node.test_dicom_pixels import make_ds

    for sub in ("a", "b", "c"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ds = make_ds(rng.integers(0, 4000, (160, 160)).astype(np.uint16), PatientID="P1")
    ds.save_as(src / "a" / "IMG1.dcm", enforce_file_format=True)
    ds.save_as(src / "b" / "export_0001.dcm", enforce_file_format=True)
    make_ds(rng.integers(0, 4000, (160, 160)).astype(np.uint16), PatientID="P1").save_as(
        src / "a" / "IMG2.dcm", enforce_file_format=True)
    labels = src.parent / "labels.csv"
    labels.write_text("image_id,lesion_type,split\nIMG1,No finding,train\n"
                      "export_0001,No finding,test\nIMG2,No finding,train\n"
                      "late_copy,No finding,test\n")
    return ds, labels


def test_one_dicom_instance_under_several_names_is_stored_once(tmp_path: Path) -> None:
    """A copy of a train image labelled 'test' would put the same radiograph on both sides of
    the split: every baseline and audit would then score an image the model trained on."""
    src = tmp_path / "dicom"
    ds, labels = _instance_copies(src)
    site = tmp_path / "site"
    report = preprocess(src, labels, site, size=SIZE, workers=1, progress=False)
    assert report["accepted"] == 2
    (dup,) = report["skipped_files"]
    assert dup["file"] == "b/export_0001.dcm" and dup["reason"] == "duplicate-instance"
    assert "b/export_0001.dcm" in dup["detail"] and "'IMG1'" in dup["detail"]
    assert str(ds.SOPInstanceUID) not in dup["detail"]  # UIDs can name the hospital
    # A copy arriving in a later run is recognised too, and nothing stored changes.
    before = store_view(site)
    ds.save_as(src / "c" / "late_copy.dcm", enforce_file_format=True)
    again = preprocess(src, labels, site, size=SIZE, workers=1, progress=False)
    assert again["accepted"] == 0 and again["skip_reasons"] == {"duplicate-instance": 1}
    assert store_view(site) == before
    assert {s.image_id: s.split for s in SiteStore.open(site).samples()} == {
        "IMG1": "train", "IMG2": "train"}
    raw = b"".join(p.read_bytes() for p in site.rglob("*") if p.is_file())
    assert str(ds.SOPInstanceUID).encode() not in raw


def test_a_store_from_before_instances_were_kept_is_indexed_on_its_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores made by earlier versions have no instance table: the next run reads the stored
    files' headers once, then refuses new copies, and names pairs that were stored twice."""
    import dataclasses

    import node.ingest
    from node.store import Accepted

    src = tmp_path / "dicom"
    ds, labels = _instance_copies(src)
    site = tmp_path / "site"
    real = node.ingest.process_file

    def old_version(rel: str) -> object:  # read no SOP Instance UID
        result = real(rel)
        return dataclasses.replace(result, instance_uid=None) if isinstance(
            result, Accepted) else result

    with monkeypatch.context() as m:
        m.setattr(node.ingest, "process_file", old_version)
        assert preprocess(src, labels, site, size=SIZE, workers=1,
                          progress=False)["accepted"] == 3
    con = sqlite3.connect(site / "store" / "catalog.sqlite")
    with con:
        con.execute("DELETE FROM instances")
        con.execute("DELETE FROM meta WHERE key = 'instances_indexed'")
    con.close()
    ds.save_as(src / "c" / "late_copy.dcm", enforce_file_format=True)
    report = preprocess(src, labels, site, size=SIZE, workers=1, progress=False)
    assert report["accepted"] == 0 and report["skip_reasons"] == {"duplicate-instance": 1}
    (twice,) = [n for n in report["label_notes"] if "stored twice" in n]
    assert "'IMG1'" in twice and "'export_0001'" in twice
    # Indexed once: a further run reads no stored header again.
    monkeypatch.setattr("node.ingest._index_instances",
                        lambda *a: pytest.fail("re-indexed an indexed store"))
    later = preprocess(src, labels, site, size=SIZE, workers=1, progress=False)
    assert later["processed"] == 0
    assert twice in later["label_notes"]  # the leak is named on every run, not just once


def _as_before_instances(site: Path) -> None:
    """Make ``site`` look like a store from before SOP Instance UIDs were kept."""
    con = sqlite3.connect(site / "store" / "catalog.sqlite")
    with con:
        con.execute("DELETE FROM instances")
        con.execute("DELETE FROM unindexed")
        con.execute("DELETE FROM meta WHERE key LIKE 'instances_%'")
    con.close()


def test_a_copy_known_by_its_file_meta_uid_alone_is_a_duplicate(tmp_path: Path) -> None:
    """Some exports drop SOPInstanceUID from the dataset and keep the file meta's copy."""
    src = tmp_path / "dicom"
    ds, labels = _instance_copies(src)
    del ds.SOPInstanceUID
    ds.save_as(src / "b" / "export_0001.dcm", enforce_file_format=True)
    report = preprocess(src, labels, tmp_path / "site", size=SIZE, workers=1, progress=False)
    assert report["accepted"] == 2 and report["skip_reasons"] == {"duplicate-instance": 1}
    assert report["skipped_files"][0]["file"] == "b/export_0001.dcm"


def test_copies_are_stored_once_with_parallel_workers(tmp_path: Path) -> None:
    src = tmp_path / "dicom"
    ds, labels = _instance_copies(src)
    for i in range(3):
        ds.save_as(src / "c" / f"copy{i}.dcm", enforce_file_format=True)
    labels.write_text(labels.read_text()
                      + "".join(f"copy{i},No finding,test\n" for i in range(3)))
    report = preprocess(src, labels, tmp_path / "site", size=SIZE, workers=2, progress=False)
    assert report["accepted"] == 2 and report["skip_reasons"] == {"duplicate-instance": 4}
    kept = {s.image_id for s in SiteStore.open(tmp_path / "site").samples()}
    # Which copy is kept follows completion order; exactly one of them is.
    assert "IMG2" in kept and len(kept - {"IMG2"}) == 1


def test_indexing_an_older_store_reads_every_file_ingest_reads_and_waits_for_missing_ones(
    tmp_path: Path,
) -> None:
    """Indexing must not mark the store checked while a stored file is not there to re-read
    (the copy of it would then pass for good), and must read what ingest reads: a DICOM
    without the 128-byte preamble, read by force."""
    import io

    src = tmp_path / "dicom"
    ds, labels = _instance_copies(src)
    (src / "b" / "export_0001.dcm").unlink()
    raw = pydicom.dcmread(src / "a" / "IMG1.dcm")
    del raw.file_meta
    raw.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    (src / "a" / "IMG1.dcm").write_bytes(buf.getvalue())  # no preamble, no file meta
    site = tmp_path / "site"
    assert preprocess(src, labels, site, size=SIZE, workers=1, progress=False)["accepted"] == 2
    _as_before_instances(site)
    img2 = pydicom.dcmread(src / "a" / "IMG2.dcm")
    (src / "a" / "IMG2.dcm").rename(tmp_path / "IMG2.away")
    if hasattr(os, "mkfifo"):  # a special file in its place: reading it would never end
        os.mkfifo(src / "a" / "IMG2.dcm")
    (src / "b" / "export_0001.dcm").write_bytes(buf.getvalue())  # copy of IMG1
    img2.save_as(src / "c" / "late_copy.dcm", enforce_file_format=True)  # copy of IMG2
    report = preprocess(src, labels, site, size=SIZE, workers=1, progress=False)
    assert report["skipped_files"][0]["file"] == "b/export_0001.dcm"
    assert report["skip_reasons"] == {"duplicate-instance": 1}
    assert report["accepted"] == 1  # IMG2 could not be re-read: its copy is not recognised …
    assert any("1 image(s) stored before" in n for n in report["label_notes"])  # … and said
    # The file is back: the next run indexes it and names the pair stored twice.
    (src / "a" / "IMG2.dcm").unlink(missing_ok=True)
    (tmp_path / "IMG2.away").rename(src / "a" / "IMG2.dcm")
    again = preprocess(src, labels, site, size=SIZE, workers=1, progress=False)
    assert not any("image(s) stored before" in n for n in again["label_notes"])
    (twice,) = [n for n in again["label_notes"] if "stored twice" in n]
    assert "'IMG2'" in twice and "'late_copy'" in twice
    raw_bytes = b"".join(p.read_bytes() for p in site.rglob("*") if p.is_file())
    assert str(ds.SOPInstanceUID).encode() not in raw_bytes
    assert str(img2.SOPInstanceUID).encode() not in raw_bytes
