"""Phantom spine radiographs: the embedded default data, written as real, varied DICOM files.

Why phantoms: the demo, the tests and a new hospital's first try all need data that (a) look
enough like lateral spine radiographs that every stage has something to learn, (b) carry
visible, labelled lesions, (c) exercise the DICOM variety real archives have, and (d) carry
PHI-shaped tag values that the tests can prove never leave the site. No real patient is
involved: every value is made up and deterministic by seed.

What is drawn (:func:`render`): a stack of vertebral bodies (cortical rim, trabecular texture,
pedicles, transverse processes) separated by discs, soft tissue, low-frequency and white noise,
and an exposure curve. Lesion classes, each a visible change:

* ``Surgical implant``: bright rods and pedicle screws across three levels;
* ``Vertebral collapse``: one body flattened to a third of its height, sclerotic;
* ``Spondylolisthesis``: the spine above one level slipped forward by almost half a body;
* ``Disc space narrowing``: one disc nearly closed, with sclerotic (bright) endplates.

Each lesion is sized to stay visible at the demo's 32² store size (a body there is about
6 px wide and 4 px tall): at 32² a subtler lesion could be learned neither by a CNN from a
site's few real images nor by a GAN within the demo's minutes. ``severity`` (per image, a
range per :class:`SiteProfile`) draws early disease instead: smaller deformations, closer to
normal anatomy (measured learning curves in BENCHMARKS.md § demo).

DICOM variety (:func:`make_sites`): 8/12/16-bit, signed and unsigned, MONOCHROME1 and 2,
windows (some narrower than the data), rescale slope/intercept, implicit and explicit VR,
RLE Lossless and JPEG 2000 Lossless (when an encoder is installed; otherwise the file is
written uncompressed and the variant name says so). Sites differ in matrix size and aspect,
exposure, and class mix (non-IID).

>>> import numpy as np
>>> img = render(np.random.default_rng(0), "Vertebral collapse", 64)
>>> img.shape, img.dtype, bool(0.0 <= img.min() and img.max() <= 1.0)
((64, 64), dtype('float32'), True)
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

LESION_CLASSES: tuple[str, ...] = (  # the vocabulary classes (shared.vocabulary) drawn here
    "No finding",
    "Surgical implant",
    "Vertebral collapse",
    "Spondylolisthesis",
    "Disc space narrowing",
)

FAKE_PHI: dict[str, str] = {
    "PatientName": "FAKE^PATIENT^{site}{patient:04d}",
    "PatientID": "FAKEPID-{site}-{patient:05d}",
    "PatientBirthDate": "19{yy:02d}0{mm}1{dd}",
    "StudyDate": "20{yy:02d}0{mm}2{dd}",
    "InstitutionName": "FAKE GENERAL HOSPITAL {site}",
    "AccessionNumber": "FAKEACC{site}{patient:05d}{image:03d}",
    "ReferringPhysicianName": "FAKE^DOCTOR^{site}",
    "StudyID": "FAKESTUDY{site}{patient:05d}",
    "StudyInstanceUID": "(generated UID)",
    "SOPInstanceUID": "(generated UID)",
}
"""Keyword → pattern of the fake PHI written into every phantom (UIDs are generated)."""

BoxT = tuple[float, float, float, float]
FloatImage = npt.NDArray[np.float32]


def phi_strings(dicom_dir: Path) -> set[str]:
    """Every fake PHI value present in the DICOM files under ``dicom_dir`` (read back)."""
    import pydicom

    found: set[str] = set()
    for path in sorted(Path(dicom_dir).rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in FAKE_PHI:
            value = ds.get(kw)
            if value is not None and str(value).strip():
                found.add(str(value).strip())
    return found


# ---------------------------------------------------------------------------------------------
# Pixels


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> FloatImage:
    from PIL import Image

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


@dataclass
class _Body:
    x: float
    y: float
    w: float
    h: float
    dense: float = 1.0


def render_with_bbox(
    rng: np.random.Generator, lesion: str, size: int, exposure: float = 1.0,
    severity: float = 1.0,
) -> tuple[FloatImage, BoxT | None]:
    """Like :func:`render`, also returning the lesion box (x0, y0, x1, y1) in pixels.

    ``severity`` in (0, 1] scales how far the lesion departs from normal anatomy: 1 is the
    textbook case (a body at a third of its height, a slip of almost half a body, a disc
    nearly closed), small values are early, subtle disease."""
    if not 0.0 < severity <= 1.0:  # also refuses NaN
        raise ValueError(f"severity must be in (0, 1], got {severity}")
    if lesion not in LESION_CLASSES:
        raise ValueError(f"unknown lesion {lesion!r}; known: {', '.join(LESION_CLASSES)}")
    n = 5
    span_top = 0.06 + rng.uniform(-0.02, 0.02)
    period = (0.88 + rng.uniform(-0.03, 0.03)) / n
    x0 = 0.5 + rng.uniform(-0.04, 0.04)
    tilt = rng.uniform(-0.06, 0.06)
    width = 0.30 + rng.uniform(-0.02, 0.02)
    bodies = []
    for j in range(n):
        y = span_top + period * (j + 0.5)
        bodies.append(
            _Body(
                x=x0 + tilt * (y - 0.5) + rng.normal(0, 0.004),
                y=y + rng.normal(0, 0.01 * period),
                w=width * (0.92 + 0.04 * j) * (1 + rng.normal(0, 0.03)),
                h=0.70 * period * (1 + rng.normal(0, 0.04)),
            )
        )
    k = int(rng.integers(1, n - 1))
    box: BoxT | None = None
    rods: list[tuple[float, float, float, float]] = []  # x, y0, y1, half-width
    screws: list[tuple[float, float, float, float]] = []  # x0, x1, y, half-height
    b = bodies[k]
    if lesion == "Vertebral collapse":
        bottom = b.y + b.h / 2
        height = 1.0 - 0.68 * severity
        full_h = b.h
        b.h *= height
        b.y = bottom - b.h / 2
        b.dense = 1.0 + 0.5 * severity
        box = (b.x - b.w / 2, bottom - full_h, b.x + b.w / 2, bottom)
    elif lesion == "Spondylolisthesis":
        shift = 0.45 * severity * width * rng.choice([-1.0, 1.0])
        for body in bodies[: k + 1]:
            body.x += shift
        lo, hi = bodies[k], bodies[k + 1]
        box = (min(lo.x, hi.x) - width / 2 - 0.02, lo.y - lo.h / 2,
               max(lo.x, hi.x) + width / 2 + 0.02, hi.y + hi.h / 2)
    elif lesion == "Disc space narrowing":
        lo, hi = bodies[k], bodies[k + 1]
        gap = (hi.y - hi.h / 2) - (lo.y + lo.h / 2)
        move = 0.47 * severity * gap
        lo.y += move
        hi.y -= move
        lo.dense = hi.dense = 1.0 + 0.45 * severity
        box = (min(lo.x, hi.x) - width / 2, lo.y, max(lo.x, hi.x) + width / 2, hi.y)
    elif lesion == "Surgical implant":
        levels = bodies[k - 1 : k + 2]
        for side in (-1.0, 1.0):
            rods.append((float(np.mean([lv.x for lv in levels])) + side * 0.40 * width,
                         levels[0].y - levels[0].h * 0.3, levels[-1].y + levels[-1].h * 0.3,
                         0.02))
            for lv in levels:
                xa = lv.x + side * 0.40 * width
                screws.append((min(xa, lv.x + side * 0.05), max(xa, lv.x + side * 0.05),
                               lv.y, 0.018))
        box = (min(r[0] for r in rods) - 0.03, levels[0].y - levels[0].h * 0.35,
               max(r[0] for r in rods) + 0.03, levels[-1].y + levels[-1].h * 0.35)

    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    xx = c[None, :]  # broadcasting instead of full grids: 5-10x faster at 512+ px
    dx0 = (xx - x0) / 0.46
    density = np.repeat(0.20 * np.sqrt(np.clip(1.0 - dx0**2, 0.0, 1.0)) + 0.05, size, axis=0)
    trabecular = _smooth_noise(rng, size, max(4, size // 12))
    for body in bodies:
        r0 = max(0, int((body.y - 0.75 * body.h) * size))
        r1 = min(size, int((body.y + 0.75 * body.h) * size) + 2)
        if r1 <= r0:
            continue
        yy = c[r0:r1, None]
        dx = (xx - body.x) / (body.w / 2)
        dy = (yy - body.y) / (body.h / 2)
        r = dx**4 + dy**4
        inside = np.clip((1.0 - r) * 6.0, 0.0, 1.0)
        rim = np.exp(-(((r - 0.8) / 0.18) ** 2)) * (r < 1.15)
        local = 0.38 * inside + 0.22 * rim + 0.04 * inside * trabecular[r0:r1]
        for side in (-1.0, 1.0):  # pedicles: small bright rings; transverse processes
            pr = ((xx - body.x - side * 0.30 * body.w) / (0.07 * body.w)) ** 2 + (
                (yy - body.y + 0.12 * body.h) / (0.16 * body.h)) ** 2
            local += 0.10 * np.exp(-(((pr - 0.8) / 0.35) ** 2)) / body.dense
            tp = (np.abs(yy - body.y + 0.10 * body.h) < 0.07 * body.h) & (
                side * (xx - body.x) > 0.5 * body.w) & (side * (xx - body.x) < 0.85 * body.w)
            local += 0.10 * tp / body.dense
        density[r0:r1] += body.dense * local
    yy_all = c[:, None]
    for x, y0, y1, hw in rods:
        density += 1.4 * ((np.abs(xx - x) < hw) & (yy_all > y0) & (yy_all < y1))
    for xa, xb, y, hh in screws:
        density += 1.4 * ((xx > xa) & (xx < xb) & (np.abs(yy_all - y) < hh))
    density += 0.03 * _smooth_noise(rng, size, 6)
    density += rng.normal(0.0, 0.018, (size, size)).astype(np.float32)
    gamma = 1.0 / max(float(exposure), 0.1)
    img = np.clip(density, 0.0, 1.0) ** gamma
    pixel_box = None
    if box is not None:
        pixel_box = tuple(round(float(min(max(v, 0.0), 1.0)) * size, 2) for v in box)
    return img.astype(np.float32), pixel_box  # type: ignore[return-value]


def render(rng: np.random.Generator, lesion: str, size: int, exposure: float = 1.0) -> FloatImage:
    """One phantom, float32 (size, size) in [0, 1], bone bright. Pure pixels, no DICOM."""
    return render_with_bbox(rng, lesion, size, exposure)[0]


# ---------------------------------------------------------------------------------------------
# DICOM


@dataclass(frozen=True)
class Variant:
    """How one phantom is encoded; names appear in the site manifest for debugging."""

    name: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    syntax: str  # "explicit" | "implicit" | "rle" | "j2k"
    window: str  # "none" | "fit" | "narrow"
    slope: float = 1.0
    intercept: float = 0.0


VARIANTS: tuple[Variant, ...] = (
    Variant("dx12-mono2-explicit-window", 16, 12, False, "MONOCHROME2", "explicit", "fit"),
    Variant("dx12-mono1-implicit", 16, 12, False, "MONOCHROME1", "implicit", "none"),
    Variant("8bit-mono2-explicit", 8, 8, False, "MONOCHROME2", "explicit", "none"),
    Variant("16bit-signed-rescale", 16, 16, True, "MONOCHROME2", "explicit", "fit",
            slope=0.5, intercept=-1000.0),
    Variant("dx12-narrow-window", 16, 12, False, "MONOCHROME2", "implicit", "narrow"),
    Variant("dx12-rle", 16, 12, False, "MONOCHROME2", "rle", "fit"),
    Variant("dx12-mono1-j2k", 16, 12, False, "MONOCHROME1", "j2k", "none"),
    Variant("16bit-rescale-j2k", 16, 16, False, "MONOCHROME2", "j2k", "fit",
            slope=2.0, intercept=-500.0),
)


def encoder_available(syntax: str) -> bool:
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, RLELossless

    uid = {"rle": RLELossless, "j2k": JPEG2000Lossless}.get(syntax)
    if uid is None:
        return True
    try:
        return bool(get_encoder(uid).is_available)
    except Exception:
        return False


def to_dataset(img: FloatImage, variant: Variant, tags: dict[str, str], uid_seed: str) -> Any:
    """Encode a displayed image (float [0, 1], bone bright) as a DICOM dataset.

    The stored values are chosen so that the display chain (rescale → window → MONOCHROME1
    inversion) of :mod:`node.dicom_pixels` gives back ``img`` up to quantisation (and clipping,
    for the narrow window).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
        generate_uid,
    )

    d = np.clip(img.astype(np.float64), 0.0, 1.0)
    if variant.photometric == "MONOCHROME1":
        d = 1.0 - d
    bits = variant.bits_stored
    s_min, s_max = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if variant.signed \
        else (0, (1 << bits) - 1)
    m_lo = s_min * variant.slope + variant.intercept
    m_hi = s_max * variant.slope + variant.intercept
    if variant.window == "none":
        x = m_lo + d * (m_hi - m_lo)
        window = None
    else:
        lo = m_lo + 0.1 * (m_hi - m_lo)
        hi = m_hi - 0.1 * (m_hi - m_lo)
        if variant.window == "narrow":  # data overflow the window by 10 % at both ends
            x = lo - 0.1 * (hi - lo) + d * 1.2 * (hi - lo)
        else:
            x = lo + d * (hi - lo)
        window = ((lo + hi) / 2 + 0.5, hi - lo + 1)
    stored = np.clip(np.rint((x - variant.intercept) / variant.slope), s_min, s_max)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[
        (variant.bits_allocated, variant.signed)]
    arr = stored.astype(dtype)

    syntax = variant.syntax if encoder_available(variant.syntax) else "explicit"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta.TransferSyntaxUID = UID(
        ImplicitVRLittleEndian if syntax == "implicit" else ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[tags["PatientID"], tags["StudyID"]])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = "DX"
    ds.BodyPartExamined = "SPINE"
    ds.Manufacturer = "synthlearn phantom"
    for kw, value in tags.items():
        setattr(ds, kw, value)
    ds.PatientSex = "O"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.BitsAllocated = variant.bits_allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if variant.signed else 0
    if variant.slope != 1.0 or variant.intercept != 0.0:
        ds.RescaleSlope = f"{variant.slope:g}"
        ds.RescaleIntercept = f"{variant.intercept:g}"
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = f"{window[0]:.1f}"
        ds.WindowWidth = f"{window[1]:.1f}"
    ds.PixelData = arr.tobytes()
    if syntax == "rle":
        ds.compress(RLELossless, arr, generate_instance_uid=False)
    elif syntax == "j2k":
        ds.compress(JPEG2000Lossless, arr, generate_instance_uid=False)
    return ds


def dataset_bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class SiteProfile:
    """What makes a site different from the others (non-IID)."""

    rows: int
    columns: int
    exposure: float
    images: int
    class_weights: tuple[float, ...]  # aligned with LESION_CLASSES
    test_fraction: float = 0.2
    """Share of patients the site holds out as its real test split (``node preprocess``)."""
    severity: tuple[float, float] = (1.0, 1.0)
    """Range each lesion's severity is drawn from, uniformly (:func:`render_with_bbox`). With
    only textbook lesions (1, 1) a CNN learns the task from 30 images, and no site can gain
    by joining; early disease makes data matter."""

    def __post_init__(self) -> None:
        lo, hi = self.severity
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"severity range must satisfy 0 < low <= high <= 1, got "
                             f"{self.severity}")


SITE_PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(512, 512, 1.00, 200, (0.50, 0.125, 0.125, 0.125, 0.125)),
    SiteProfile(448, 384, 0.75, 150, (0.60, 0.05, 0.20, 0.10, 0.05)),
    SiteProfile(560, 640, 1.30, 250, (0.40, 0.30, 0.05, 0.10, 0.15)),
)


DEMO_PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(512, 512, 1.00, 700, (0.50, 0.125, 0.125, 0.125, 0.125)),
    SiteProfile(448, 384, 0.80, 360, (0.50, 0.10, 0.15, 0.15, 0.10), test_fraction=0.35),
    SiteProfile(560, 640, 1.25, 600, (0.40, 0.20, 0.10, 0.15, 0.15)),
)
"""The demo's three sites: two large hospitals and a small one (site b) whose ≈ 230 training
images teach a CNN something but less than the pool does (with ≈ 100 a CNN from scratch stayed
at chance at 32², measured). Site b holds out 35 % (≈ 125 images) so that its gain by joining
can be tested with some power; 20 % would leave ≈ 70."""


def _profile(index: int, seed: int,
             profiles: tuple[SiteProfile, ...] = SITE_PROFILES) -> SiteProfile:
    if index < len(profiles):
        return profiles[index]
    rng = np.random.default_rng([seed, index, 7])
    w = rng.dirichlet(np.ones(len(LESION_CLASSES)))
    w = 0.5 * w + 0.5 * np.array([0.5, 0.125, 0.125, 0.125, 0.125])
    side = int(rng.integers(384, 641))
    return SiteProfile(side, int(side * rng.uniform(0.8, 1.2)), float(rng.uniform(0.7, 1.3)),
                       int(rng.integers(150, 251)), tuple(float(v) for v in w / w.sum()))


def site_profile(index: int, seed: int = 0,
                 profiles: tuple[SiteProfile, ...] = SITE_PROFILES) -> SiteProfile:
    """The profile :func:`make_site` uses for site ``index`` (e.g. for its test fraction)."""
    return _profile(index, seed, profiles)


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else f"s{i}"


def make_site(out: Path, index: int, seed: int = 0, scale: float = 1.0,
              size: int | None = None,
              profiles: tuple[SiteProfile, ...] = SITE_PROFILES) -> Path:
    """One site folder: ``dicom/*.dcm``, ``labels.csv`` (VinDr style + boxes)."""
    from shared.files import atomic_write_bytes

    prof = _profile(index, seed, profiles)
    letter = _letter(index)
    site = Path(out) / f"site-{letter}"
    dicom_dir = site / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    rows, cols = prof.rows, prof.columns
    if size is not None:
        f = size / min(rows, cols)
        rows, cols = max(size, round(rows * f)), max(size, round(cols * f))
    n = max(len(LESION_CLASSES), round(prof.images * scale))
    rng = np.random.default_rng([seed, index])
    weights = np.asarray(prof.class_weights) / sum(prof.class_weights)
    # Every class at least once, the rest by the site's mix.
    lesions = list(LESION_CLASSES) + list(rng.choice(LESION_CLASSES, n - len(LESION_CLASSES),
                                                     p=weights))
    rng.shuffle(lesions)
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    table: list[list[str]] = []
    patient = 0
    image_in_patient = 0
    for i, lesion in enumerate(lesions):
        if image_in_patient >= int(rng.integers(1, 4)):
            patient += 1
            image_in_patient = 0
        image_in_patient += 1
        exposure = float(prof.exposure * np.exp(rng.normal(0, 0.08)))
        lo, hi = prof.severity
        severity = float(rng.uniform(lo, hi)) if lo < hi else hi  # (1, 1): the stream as before
        img, box = render_with_bbox(rng, lesion, side, exposure, severity)
        if (rows, cols) != (side, side):  # collimated margin outside the anatomy square
            full = np.full((rows, cols), 0.02, np.float32)
            full += rng.normal(0, 0.01, (rows, cols)).astype(np.float32)
            full[top : top + side, left : left + side] = img
            img = np.clip(full, 0, 1)
            if box is not None:
                box = (box[0] + left, box[1] + top, box[2] + left, box[3] + top)
        yy, mm, dd = 30 + patient % 60, 1 + patient % 9, patient % 10
        fields = {"site": letter.upper(), "patient": patient, "image": i, "yy": yy, "mm": mm,
                  "dd": dd}
        tags = {kw: pat.format(**fields) for kw, pat in FAKE_PHI.items() if "{" in pat}
        image_id = hashlib.sha256(f"phantom:{seed}:{letter}:{i}".encode()).hexdigest()[:20]
        variant = VARIANTS[(i + index) % len(VARIANTS)]
        ds = to_dataset(img, variant, tags, uid_seed=f"{seed}:{letter}:{i}")
        atomic_write_bytes(dicom_dir / f"{image_id}.dcm", dataset_bytes(ds))
        coords = [f"{v:.1f}" for v in box] if box is not None else ["", "", "", ""]
        table.append([image_id, lesion, *coords])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "lesion_type", "xmin", "ymin", "xmax", "ymax"])
    writer.writerows(table)
    atomic_write_bytes(site / "labels.csv", buf.getvalue().encode())
    return site


def make_sites(out: Path, sites: int = 3, seed: int = 0, scale: float = 1.0,
               size: int | None = None, progress: bool = False,
               profiles: tuple[SiteProfile, ...] = SITE_PROFILES) -> list[Path]:
    """Write ``out/site-<letter>/{dicom/, labels.csv}`` for ``sites`` non-IID sites
    (``profiles``: the first sites' sizes, exposures and class mixes; more are drawn)."""
    if sites < 1:
        raise ValueError("need at least one site")
    if size is not None and size < 8:
        raise ValueError(f"size {size} is too small")
    if not progress:
        return [make_site(out, i, seed, scale, size, profiles) for i in range(sites)]
    from shared.progress import progress_bar

    result = []
    with progress_bar("sites") as bar:
        task = bar.add_task("phantom sites", total=sites, status="")
        for i in range(sites):
            result.append(make_site(out, i, seed, scale, size, profiles))
            bar.update(task, advance=1, status=f"site-{_letter(i)}")
    return result


def phantom_store(site_dir: Path, n: int, size: int, seed: int = 0,
                  classes: str = "binary") -> Path:
    """Fast path for other areas' tests and the demo: phantoms straight into a site store.

    ``binary``: half "No finding", half spread over the lesion classes; ``lesion``: all
    classes equally often. Two images per patient, so the patient-level split is exercised.
    Every fifth patient is held out: the salted patient hash would make the test split's size
    a coin toss (2 of 30 patients, now and then), and tests that need a calibrated held-out
    set would fail at random.
    """
    from node.store import Accepted, StoreWriter

    if classes not in ("binary", "lesion"):
        raise ValueError(f"classes must be 'binary' or 'lesion', not {classes!r}")
    rng = np.random.default_rng([seed, 99])
    batch: list[Accepted] = []
    with StoreWriter(site_dir, size=size, test_fraction=0.2) as writer:
        for i in range(n):
            if classes == "lesion":  # shifted every 5 patients so both splits see every class
                lesion = LESION_CLASSES[(i + i // 10) % len(LESION_CLASSES)]
            else:
                lesion = LESION_CLASSES[0] if i % 2 == 0 else \
                    LESION_CLASSES[1 + (i // 2) % (len(LESION_CLASSES) - 1)]
            img, box = render_with_bbox(rng, lesion, size, float(np.exp(rng.normal(0, 0.1))))
            pixels = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
            batch.append(Accepted(f"phantom-{seed}-{i:05d}", pixels, lesion,
                                  f"phantom:{seed}:{i}", patient_id=f"phantom-patient-{i // 2}",
                                  split="test" if (i // 2) % 5 == 4 else "train", bbox=box))
            if len(batch) == 256:
                writer.add_batch(batch)
                batch = []
        if batch:
            writer.add_batch(batch)
    return Path(site_dir)
