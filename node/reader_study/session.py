"""One reader study at one site: the glue between the frozen item list, the answers and the
results. The HTTP server and the CLI both go through :class:`ReaderStudy`, never around it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import ReaderStudyError
from node.reader_study.statistics import (
    ReaderResult,
    pooled_result,
    reader_result,
    result_dict,
    summary,
)
from node.reader_study.storage import StudyDB, check_reader_name, check_study_name
from node.reader_study.study import DEFAULT_IMAGES, Item, Sources, choose_items, open_store

SUMMARY_PATH = Path("metrics") / "reader_study.json"
"""Under SITE/: ``node export`` signs every ``SITE/metrics/*.json`` into the bundle."""


@dataclass
class ReaderStudy:
    site_dir: Path
    name: str
    db: StudyDB
    sources: Sources
    items: dict[int, Item]
    meta: dict[str, Any]

    @classmethod
    def open(cls, site_dir: Path, name: str = "default", *, synthetic_name: str | None = None,
             readers: list[str] | None = None, n_images: int = DEFAULT_IMAGES,
             seed: int = 0, create: bool = True) -> ReaderStudy:
        """Open study ``name`` (creating it from the store and synthetic set the first time,
        unless ``create`` is False) and name any new ``readers``. Reopening resumes: the items
        and orders are stored."""
        from node.audit import synthetic_digest

        site_dir = Path(site_dir)
        check_study_name(name)
        for r in readers or []:
            check_reader_name(r)
        open_store(site_dir)  # no store, no study: never create folders on a wrong path
        db = StudyDB(site_dir)
        meta = db.study(name)
        if meta is None and not create:
            raise ReaderStudyError(
                f"{db.path}: no study {name!r} yet; start one with `synthlearn node reader-study "
                f"--site-dir {site_dir} --reader NAME`")
        if meta is None:
            sources = Sources.open(site_dir, synthetic_name or "default")
            items = choose_items(sources, n_images, seed)
            db.create_study(name, synthetic_name=sources.synthetic_name,
                            synthetic_sha256=synthetic_digest(sources.synthetic),
                            size=sources.size, class_names=sources.class_names, seed=seed,
                            items=items)
            meta = db.study(name)
            assert meta is not None
        else:
            if synthetic_name is not None and synthetic_name != meta["synthetic_name"]:
                raise ReaderStudyError(
                    f"study {name!r} uses synthetic set {meta['synthetic_name']!r}, not "
                    f"{synthetic_name!r}; start another study with --study NEW_NAME")
            sources = Sources.open(site_dir, str(meta["synthetic_name"]))
            if synthetic_digest(sources.synthetic) != meta["synthetic_sha256"]:
                raise ReaderStudyError(
                    f"{site_dir / 'synthetic' / str(meta['synthetic_name'])}: the synthetic set "
                    f"changed since study {name!r} began (regenerated?), so its answers would "
                    "no longer match the images; start another study with --study NEW_NAME")
        for r in readers or []:
            db.add_reader(name, r, int(meta["seed"]))  # type: ignore[call-overload]
        return cls(site_dir, name, db, sources, db.items(name), meta)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def readers(self) -> list[str]:
        return self.db.readers(self.name)

    def progress(self, reader: str) -> dict[str, Any]:
        self.db.require_reader(self.name, reader)
        answered, total, nxt = self.db.progress(self.name, reader)
        return {"reader": reader, "answered": answered, "total": total, "next": nxt,
                "finished": nxt is None}

    def pixels(self, reader: str, position: int) -> npt.NDArray[np.uint8]:
        self.db.require_reader(self.name, reader)
        item = self.items[self.db.item_at(self.name, reader, position)]
        return self.sources.pixels(item)

    def answer(self, reader: str, position: int, call: str, class_call: str | None,
               confidence: int | None) -> bool:
        self.db.require_reader(self.name, reader)
        return self.db.record(self.name, reader, position, call, class_call, confidence,
                              self.class_names)

    def reader_results(self) -> list[tuple[str, ReaderResult]]:
        out = []
        for r in self.readers():
            answers = self.db.answers(self.name, r)
            _, total, _ = self.db.progress(self.name, r)
            out.append((r, reader_result(answers, total)))
        return out

    def results(self, reveal_unfinished: bool = False) -> dict[str, Any]:
        """Per reader and pooled. The page passes ``reveal_unfinished=False``: a reader who has
        not finished sees no running accuracy, which would unblind them image by image."""
        per = self.reader_results()
        pooled = pooled_result((res, self.db.answers(self.name, r)) for r, res in per)
        readers = []
        for name, res in per:
            d = result_dict(res)
            if not res.finished and not reveal_unfinished:
                d = {"answered": res.answered, "total": res.total, "finished": False}
            readers.append({"reader": name, **d})
        return {"study": self.name, "class_names": self.class_names, "readers": readers,
                "pooled": result_dict(pooled), "verdict": pooled.verdict,
                "images": self.counts()}

    def counts(self) -> dict[str, int]:
        real = sum(it.truth == "real" for it in self.items.values())
        return {"real": real, "synthetic": len(self.items) - real}

    def summary(self) -> dict[str, Any]:
        per = self.reader_results()
        pooled = pooled_result((res, self.db.answers(self.name, r)) for r, res in per)
        c = self.counts()
        return summary(study=self.name, synthetic_name=str(self.meta["synthetic_name"]),
                       synthetic_sha256=str(self.meta["synthetic_sha256"]), n_real=c["real"],
                       n_synthetic=c["synthetic"], class_names=self.class_names,
                       readers=[res for _, res in per], pooled=pooled,
                       created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def write_summary(self) -> Path:
        """Write the numbers-only summary where ``node export`` picks it up."""
        from shared.files import atomic_write_bytes

        path = self.site_dir / SUMMARY_PATH
        atomic_write_bytes(path, (json.dumps(self.summary(), indent=2) + "\n").encode())
        return path
