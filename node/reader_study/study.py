"""Which images make up a study, and their pixels.

A study is frozen when it is created: the item list (real test image ids and synthetic set
indices, with the truth and the class) goes into the study database, so a restarted server
shows every reader exactly the same images, and the synthetic set's SHA-256 is kept so a set
regenerated since is noticed instead of silently swapping images under the readers.

Design: real images come only from the store's **test** split (images the GAN never trained
on, so "real" does not mean "what the generator copied"); synthetic images are matched to the
real ones class by class, so the class is no cue for the real/synthetic call. Both are shown at
the store's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.errors import ReaderStudyError, StoreError
from node.store import ClassMode, SiteStore
from shared.errors import SyntheticSetError
from shared.synthetic import SyntheticSet

DEFAULT_IMAGES = 100


def open_store(site_dir: Path) -> SiteStore:
    """The site store, or a reader-study error saying how to make one."""
    try:
        return SiteStore.open(site_dir)
    except StoreError as exc:
        raise ReaderStudyError(str(exc)) from None


@dataclass(frozen=True)
class Item:
    """One image of the study. ``ref`` is the real image id or the synthetic set index; it
    never reaches the page (items are addressed by the reader's position)."""

    item_no: int
    truth: str          # "real" or "synthetic"
    ref: str
    class_name: str


@dataclass
class Sources:
    """The pixels behind a study's items: the real test split and the synthetic set."""

    site_dir: Path
    size: int
    real: dict[str, npt.NDArray[np.uint8]]
    real_classes: dict[str, str]
    synthetic: SyntheticSet
    synthetic_name: str

    @classmethod
    def open(cls, site_dir: Path, synthetic_name: str) -> Sources:
        """Load both, with a clear error when either is missing or they do not fit together."""
        site_dir = Path(site_dir)
        store = open_store(site_dir)
        syn_dir = site_dir / "synthetic" / synthetic_name
        if not (syn_dir / "set.json").exists():
            raise ReaderStudyError(
                f"{syn_dir}: no synthetic set here; run `synthlearn node generate --site-dir "
                f"{site_dir} -n 200 --out-name {synthetic_name}` first (or pick another set "
                "with --synthetic)")
        try:
            synthetic = SyntheticSet.load(syn_dir)
        except SyntheticSetError as exc:
            raise ReaderStudyError(str(exc)) from None
        if synthetic.images.shape[1:] != (store.size, store.size):
            raise ReaderStudyError(
                f"{syn_dir}: synthetic images are {synthetic.images.shape[2]}×"
                f"{synthetic.images.shape[1]} but the store holds {store.size}×{store.size}; "
                "readers must see both at the same resolution: generate a set from a run at "
                "the store's size")
        # The set's own class list says which labels to compare with (older sets carry no
        # class_mode): normal/abnormal is binary, anything else the store's lesion names.
        mode: ClassMode = "binary" if synthetic.class_names == store.class_names("binary") \
            else "lesion"
        names = store.class_names(mode)
        real: dict[str, npt.NDArray[np.uint8]] = {}
        real_classes: dict[str, str] = {}
        for s in store.samples("test"):
            real[s.image_id] = s.array
            real_classes[s.image_id] = names[s.label] if mode == "binary" else s.lesion
        if not real:
            raise ReaderStudyError(
                f"{site_dir}: the store has no test split (0 test images), and a reader study "
                "shows only held-out real images; re-import with a test fraction > 0")
        return cls(site_dir, store.size, real, real_classes, synthetic, synthetic_name)

    @property
    def class_names(self) -> list[str]:
        return list(self.synthetic.class_names)

    def pixels(self, item: Item) -> npt.NDArray[np.uint8]:
        if item.truth == "real":
            if item.ref not in self.real:
                raise ReaderStudyError(
                    f"{self.site_dir}: real test image {item.ref!r} of this study is no longer "
                    "in the store; start a new study with --study NAME")
            return self.real[item.ref]
        return self.synthetic.images[int(item.ref)]


def choose_items(sources: Sources, n_images: int, seed: int) -> list[Item]:
    """About ``n_images`` items, half real and half synthetic, matched class by class."""
    if n_images < 2:
        raise ReaderStudyError(f"--images must be at least 2 (one real, one synthetic), "
                               f"got {n_images}")
    rng = np.random.default_rng([seed, 1606])
    by_class: dict[str, list[str]] = {}
    for image_id, name in sorted(sources.real_classes.items()):
        by_class.setdefault(name, []).append(image_id)
    syn_by_class: dict[str, list[int]] = {}
    for i, label in enumerate(sources.synthetic.labels.tolist()):
        syn_by_class.setdefault(sources.class_names[label], []).append(i)
    total_real = sum(len(v) for v in by_class.values())
    want_real = min(n_images // 2, total_real)
    items: list[tuple[str, str, str]] = []
    for name, ids in by_class.items():
        share = round(want_real * len(ids) / total_real)
        syn = syn_by_class.get(name, [])
        k = min(share, len(ids), len(syn))
        for image_id in rng.permutation(ids)[:k].tolist():
            items.append(("real", str(image_id), name))
        for idx in rng.permutation(syn)[:k].tolist():
            items.append(("synthetic", str(idx), name))
    if not items:
        raise ReaderStudyError(
            f"{sources.site_dir}: no class has both real test images and synthetic images "
            f"(real: {sorted(by_class)}, synthetic: {sorted(syn_by_class)}); generate a set "
            "from a run trained on this store")
    return [Item(i, truth, ref, name) for i, (truth, ref, name) in enumerate(items)]
