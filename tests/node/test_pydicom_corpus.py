"""Every file of pydicom's bundled test data and of the `pydicom-data` package, in one run.

Real-world DICOM is messy; this corpus holds truncated files, odd syntaxes, colour, multi-frame,
DICOMDIRs, non-DICOM READMEs and the RG1/RG3 radiographs. The run must not crash, must account
for every file (accepted, or skipped with a known reason naming it), must store each DICOM
instance once (the corpus holds one instance in several transfer syntaxes) and must accept
the radiographs, which decode identically whether raw or JPEG 2000 lossless.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from node import dicom_pixels as dp
from node.ingest import preprocess
from node.store import SiteStore

KNOWN_REASONS = {
    dp.NOT_DICOM, dp.TRUNCATED, dp.MISSING_PIXELS, dp.LENGTH_MISMATCH, dp.NO_CODEC,
    dp.TOO_SMALL, dp.TOO_LARGE, dp.UNLABELLED, dp.UNREADABLE, dp.MULTI_FRAME, dp.COLOUR,
    dp.UNSUPPORTED, dp.DECODE_ERROR, dp.DUPLICATE_INSTANCE,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    from pydicom.data import get_testdata_files

    files = sorted(f for f in get_testdata_files() if os.path.isfile(f))
    roots = {str(Path(f).parent) for f in files}
    assert any("data_store" in r for r in roots), "the pydicom-data package is not installed"
    root = tmp_path_factory.mktemp("corpus")
    d = root / "dicom"
    d.mkdir()
    names = []
    lines = ["image_id,label"]
    for i, f in enumerate(files):
        name = f"{i:03d}-{os.path.basename(f)}"
        (d / name).symlink_to(f)
        names.append(name)
        lines.append(f"{Path(name).stem},{'1' if 'RG' in name else '0'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return d, root / "labels.csv", names


@pytest.fixture(scope="module")
def corpus_run(corpus: tuple[Path, Path, list[str]],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    d, labels, _ = corpus
    site = tmp_path_factory.mktemp("corpus-site") / "site"
    report = preprocess(d, labels, site, size=64, workers=2, progress=False)
    return report, site


def test_every_corpus_file_is_accepted_or_skipped_with_a_known_reason(
    corpus: tuple[Path, Path, list[str]], corpus_run: tuple[dict[str, object], Path]
) -> None:
    _, _, names = corpus
    report, site = corpus_run
    store = SiteStore.open(site)
    skipped = {s.source_key: s for s in store.skipped()}
    import sqlite3

    con = sqlite3.connect(site / "store" / "catalog.sqlite")
    accepted = {r[0] for r in con.execute("SELECT source_key FROM images")}
    con.close()
    assert len(names) > 200
    assert accepted | set(skipped) == set(names)
    assert not accepted & set(skipped)
    assert report["processed"] == len(names)
    for name, s in skipped.items():
        assert s.reason in KNOWN_REASONS, (name, s.reason, s.detail)
        assert name in s.detail and "\n" not in s.detail
    reasons = {s.reason for s in skipped.values()}
    # The corpus exercises most bad-input kinds on real files.
    assert {dp.NOT_DICOM, dp.TRUNCATED, dp.MISSING_PIXELS, dp.TOO_SMALL, dp.MULTI_FRAME,
            dp.COLOUR} <= reasons
    assert len(accepted) >= 20


def _instance_uid(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception:
        return None
    return str(ds.get("SOPInstanceUID", "") or "").strip() or None


def test_each_dicom_instance_is_stored_once(
    corpus: tuple[Path, Path, list[str]], corpus_run: tuple[dict[str, object], Path]
) -> None:
    """pydicom ships one instance in several transfer syntaxes under one SOP Instance UID; a
    store that kept them all would hold copies that the patient split cannot keep apart."""
    d, _, names = corpus
    _, site = corpus_run
    store = SiteStore.open(site)
    accepted = {s.image_id for s in store.samples()}
    reason = {s.source_key: s.reason for s in store.skipped()}
    groups: dict[str, list[str]] = {}
    for name in names:
        if (uid := _instance_uid(d / name)) is not None:
            groups.setdefault(uid, []).append(name)
    shared = {uid: g for uid, g in groups.items() if len(g) > 1}
    assert len(shared) >= 3  # the corpus does exercise this
    copies_skipped = 0
    for uid, group in groups.items():
        kept = [n for n in group if Path(n).stem in accepted]
        assert len(kept) <= 1, (uid, kept)
        copies_skipped += sum(reason.get(n) == dp.DUPLICATE_INSTANCE for n in group)
        if any(reason.get(n) == dp.DUPLICATE_INSTANCE for n in group):
            assert kept, (uid, group)  # skipped as a copy of an image that is stored
    assert copies_skipped >= 3


def test_radiographs_are_accepted_and_codec_independent(
    corpus: tuple[Path, Path, list[str]], corpus_run: tuple[dict[str, object], Path]
) -> None:
    d, _, names = corpus
    _, site = corpus_run
    store = SiteStore.open(site)
    by_id = {s.image_id: s for s in store.samples()}
    radiographs = [n for n in names if "RG1_" in n or "RG3_" in n]
    assert len(radiographs) == 8
    by_uid: dict[str | None, list[str]] = {}
    for n in radiographs:
        by_uid.setdefault(_instance_uid(d / n), []).append(Path(n).stem)
    # UNCR, J2KR and J2KI are three instances; UNCI is J2KI decoded, under J2KI's UID.
    assert sorted(len(g) for g in by_uid.values()) == [1, 1, 1, 1, 2, 2]
    for group in by_uid.values():
        (kept,) = [rid for rid in group if rid in by_id]  # one copy of each instance stored
        assert by_id[kept].array.std() > 10, f"{kept} is flat"
        assert by_id[kept].label == 1

    def stored(suffix: str) -> np.ndarray:
        """The store image of the instance that ``suffix``'s file holds, whichever copy of
        it was stored (so ingest's own decoding is what is compared)."""
        (name,) = [n for n in radiographs if Path(n).stem.endswith(suffix)]
        (group,) = [g for g in by_uid.values() if Path(name).stem in g]
        (kept,) = [rid for rid in group if rid in by_id]
        return by_id[kept].array

    for series in ("RG1", "RG3"):
        # JPEG 2000 lossless gives the same store image as the raw original (UNCR); the
        # lossy J2KI is stored once, and equals the decode of its other copy (UNCI).
        assert np.array_equal(stored(f"{series}_J2KR"), stored(f"{series}_UNCR")), series
        (unci,) = [n for n in radiographs if Path(n).stem.endswith(f"{series}_UNCI")]
        (j2ki,) = [n for n in radiographs if Path(n).stem.endswith(f"{series}_J2KI")]
        for other in (unci, j2ki):
            image, _, _ = dp.load_file(d / other, 64, other)
            assert np.array_equal(stored(f"{series}_J2KI"), image), (series, other)


def test_codecs_without_an_encoder_here_decode_real_files() -> None:
    """JPEG-LS, JPEG Lossless SV1, RLE, JPEG 2000 and big endian copies of one MR image give
    the same store image; no installed plugin can encode JPEG-LS or JPEG Lossless to make one."""
    from pydicom.data import get_testdata_file

    def load(name: str) -> tuple[np.ndarray, str]:
        path = get_testdata_file(name)
        assert path is not None, name
        image, _, ds = dp.load_file(Path(str(path)), 64, name, min_side=1)
        return image, str(ds.file_meta.TransferSyntaxUID)

    reference, _ = load("MR_small.dcm")
    syntaxes = set()
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                 "MR_small_jp2klossless.dcm"):
        image, syntax = load(name)
        assert np.array_equal(image, reference), name
        syntaxes.add(syntax)
    assert syntaxes == {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.2",
                        "1.2.840.10008.1.2.4.90"}
    for name in ("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG-LL.dcm"):  # pydicom-data
        image, syntax = load(name)
        assert syntax == "1.2.840.10008.1.2.4.70" and image.std() > 10, name
