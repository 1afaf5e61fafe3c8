"""The teaching gallery (Finlayson et al.): synthetic images only, by class, on demand.

Trainees browse the site's synthetic sets (``SITE/synthetic/<name>/``) class by class, ask the
site's trained generator for N new images of a class at a chosen truncation ψ, and save a
contact sheet. Nothing here can reach a real image: sets are looked up by name among the
folders under ``SITE/synthetic/`` (a name is never used as a path), and new images come from
the generator alone. New batches live in memory while the server runs; they are teaching
material, not a set to export.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import ReaderStudyError
from shared.errors import SynthlearnError
from shared.synthetic import SyntheticSet

MAX_BATCHES = 16
MAX_NEW = 64
SHEET_MAX = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Gallery:
    """Synthetic sets on disk plus batches drawn during this session (``new-1``, ``new-2`` …)."""

    def __init__(self, site_dir: Path, run_name: str = "default") -> None:
        self.site_dir = Path(site_dir)
        self.run_name = run_name
        self._loaded: dict[str, tuple[float, SyntheticSet]] = {}
        self._new: OrderedDict[str, SyntheticSet] = OrderedDict()
        self._generator: tuple[Any, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._count = 0

    def set_names(self) -> list[str]:
        root = self.site_dir / "synthetic"
        disk = sorted(p.name for p in root.iterdir() if (p / "set.json").exists()
                      and _NAME_RE.match(p.name)) if root.is_dir() else []
        return disk + list(self._new)

    def get(self, name: str) -> SyntheticSet:
        """A set by name; only names listed by :meth:`set_names` are ever opened."""
        if name in self._new:
            return self._new[name]
        if name not in self.set_names():
            raise ReaderStudyError(f"no synthetic set named {name!r} under "
                                   f"{self.site_dir / 'synthetic'}")
        folder = self.site_dir / "synthetic" / name
        mtime = (folder / "images.npy").stat().st_mtime
        cached = self._loaded.get(name)
        if cached is None or cached[0] != mtime:
            try:
                cached = (mtime, SyntheticSet.load(folder))
            except SynthlearnError as exc:
                raise ReaderStudyError(str(exc)) from None
            self._loaded[name] = cached
        return cached[1]

    def listing(self, name: str, class_name: str | None) -> dict[str, Any]:
        s = self.get(name)
        if class_name is not None and class_name not in s.class_names:
            raise ReaderStudyError(f"class {class_name!r} is not one of {s.class_names}")
        idx = [i for i, lab in enumerate(s.labels.tolist())
               if class_name is None or s.class_names[lab] == class_name]
        return {"set": name, "class_names": s.class_names, "counts": s.counts(),
                "indices": idx, "labels": [s.class_names[s.labels[i]] for i in idx],
                "truncation": s.info.get("truncation")}

    def image(self, name: str, index: int) -> npt.NDArray[np.uint8]:
        s = self.get(name)
        if not 0 <= index < len(s):
            raise ReaderStudyError(f"set {name!r} has {len(s)} images; no image {index}")
        return s.images[index]

    def generate(self, class_name: str, n: int, truncation: float, seed: int | None) -> str:
        """Draw ``n`` new images of one class from the site's generator; returns the batch name."""
        from node.generate import load_generator, sample_class

        if not 1 <= n <= MAX_NEW:
            raise ReaderStudyError(f"ask for 1–{MAX_NEW} new images at a time, not {n}")
        with self._lock:  # one generation at a time: the generator is shared
            if self._generator is None:
                try:
                    self._generator = load_generator(self.site_dir, self.run_name)
                except SynthlearnError as exc:
                    raise ReaderStudyError(
                        f"no trained generator for new images ({exc}); train one with "
                        f"`synthlearn node train --site-dir {self.site_dir}`") from None
            G, meta = self._generator
            self._count += 1
            seed = self._count if seed is None else seed
            try:
                s = sample_class(G, meta, class_name, n, truncation=truncation, seed=seed)
            except SynthlearnError as exc:
                raise ReaderStudyError(str(exc)) from None
            s.info["generator_run"] = self.run_name
            name = f"new-{self._count}"
            self._new[name] = s
            while len(self._new) > MAX_BATCHES:
                self._new.popitem(last=False)
        return name


def contact_sheet(images: npt.NDArray[np.uint8], labels: list[str], title: str,
                  cols: int = 10) -> bytes:
    """A labelled grid as PNG, headed "SYNTHETIC" so a printed sheet cannot pass for patients."""
    from PIL import Image, ImageDraw

    if len(images) == 0:
        raise ReaderStudyError("nothing to put on a contact sheet: this class has no images")
    images = images[:SHEET_MAX]
    n, _, w = images.shape
    tile = max(96, w)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    pad, label_h, head = 6, 14, 28
    sheet = Image.new("L", (cols * (tile + pad) + pad, head + rows * (tile + label_h + pad)), 255)
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 8), f"SYNTHETIC images (no patient) - {title}", fill=0)
    for i, (img, lab) in enumerate(zip(images, labels, strict=False)):
        r, c = divmod(i, cols)
        x, y = pad + c * (tile + pad), head + r * (tile + label_h + pad)
        sheet.paste(Image.fromarray(img).resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        draw.text((x, y + tile + 1), lab[:18], fill=0)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
