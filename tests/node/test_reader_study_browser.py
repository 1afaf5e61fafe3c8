"""End to end in headless Chromium (Playwright): a reader answers every image of a study,
reloads in the middle, survives a server stop, finishes; what is stored and summarised equals
what was clicked, and the page never asks any other host for anything.

Needs the ``playwright`` package and a Chromium binary (Debian: ``apt-get install chromium``;
never ``playwright install``, which downloads a browser). Skipped, with that hint, where absent.

Set ``READER_STUDY_SCREENSHOTS=DIR`` to also save the README's screenshots into DIR.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.errors import ReaderStudyError
from node.reader_study.gallery import Gallery
from node.reader_study.server import create_app
from node.reader_study.session import ReaderStudy
from node.reader_study.statistics import Answer, reader_result
from tests.chromium import chromium_path
from tests.node.reader_study_site import LiveServer, build_site

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="headless Chromium not installed (Debian: apt-get install "
    "chromium); the browser test runs where it is")


def _answer_current(page: Any, rng: np.random.Generator, classes: list[str],
                    clicks: dict[int, dict[str, Any]], how: str = "click") -> None:
    """Answer the image on screen at random (call, maybe a class, maybe a confidence), with a
    click, an impatient double click, or the keyboard (R / S)."""
    page.wait_for_selector(".call:not([disabled])")
    position = int(page.get_attribute("#image", "data-position"))
    call = "real" if rng.random() < 0.5 else "synthetic"
    cls = classes[int(rng.integers(len(classes)))] if rng.random() < 0.7 else None
    conf = int(rng.integers(1, 6)) if rng.random() < 0.7 else None
    if cls is not None:
        page.check(f"input[name=class][value='{cls}']")
    if conf is not None:
        page.check(f"input[name=confidence][value='{conf}']")
    if how == "dblclick":
        page.dblclick(f"#call-{call}")
    elif how == "key":
        page.keyboard.press(call[0])
    else:
        page.click(f"#call-{call}")
    clicks[position] = {"call": call, "class_call": cls, "confidence": conf}


def test_reader_answers_everything_through_reload_and_server_stop(tmp_path: Path) -> None:
    shots = os.environ.get("READER_STUDY_SCREENSHOTS")
    # The README's screenshots show a generator trained a little longer than the test needs.
    site = build_site(tmp_path, kimg=2.0) if shots else build_site(tmp_path)
    study = ReaderStudy.open(site, readers=["Ann", "Bob"])
    app = create_app(study, Gallery(site))
    server = LiveServer(app).start()
    requests: list[str] = []
    clicks: dict[int, dict[str, Any]] = {}
    rng = np.random.default_rng(4)
    n = len(study.items)
    try:
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=FLAGS)
            # CSP bypassed on purpose: the server's CSP would hide a request the page itself
            # tries to make to another host; here the page must make none of its own accord.
            page = browser.new_page(viewport={"width": 1100, "height": 760}, bypass_csp=True)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(server.url)
            page.click("button[data-reader='Ann']")
            for i in range(n // 2):
                how = "dblclick" if i == 0 else "key" if i == 1 else "click"
                _answer_current(page, rng, study.class_names, clicks, how)
            page.wait_for_function(f"document.getElementById('pos').textContent == '{n // 2 + 1}'")
            if shots:
                page.wait_for_selector(".call:not([disabled])")
                page.screenshot(path=str(Path(shots) / "reader-study.png"))
            page.reload()  # resumes with the same reader, at the first unanswered image
            page.wait_for_function(f"document.getElementById('pos').textContent == '{n // 2 + 1}'")
            assert page.inner_text("#who") == "Ann"

            server.stop()  # the server stops mid-study: the page says so, nothing is lost
            _answer_current(page, rng, study.class_names, clicks)
            page.wait_for_selector("#alert:not([hidden])")
            assert "server stopped" in page.inner_text("#alert-text")
            assert len(study.db.answer_rows("default")) == n // 2
            server.start()
            page.click("#retry")
            page.wait_for_function(f"document.getElementById('pos').textContent == '{n // 2 + 2}'")

            while len(clicks) < n:
                _answer_current(page, rng, study.class_names, clicks)
            page.wait_for_selector("#done:not([hidden])")

            page.click("#tab-results")
            page.wait_for_selector("#results-table tbody tr.pooled")
            verdict_on_page = page.inner_text("#verdict")
            if shots:
                page.screenshot(path=str(Path(shots) / "reader-study-results.png"))

            page.click("#tab-gallery")
            page.wait_for_selector("#g-grid figure")
            page.select_option("#g-class", "abnormal")
            page.fill("#g-n", "6")
            page.fill("#g-psi", "0.5")
            page.click("#g-generate")
            page.wait_for_function("document.getElementById('g-set').value == 'new-1'")
            page.wait_for_function("document.querySelectorAll('#g-grid figure').length == 6")
            page.wait_for_function("[...document.querySelectorAll('#g-grid img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            captions = page.eval_on_selector_all("#g-grid figcaption",
                                                 "els => els.map(e => e.textContent)")
            assert captions == ["abnormal"] * 6
            with page.expect_download() as dl:
                page.click("#g-sheet")
            sheet = tmp_path / "sheet.png"
            dl.value.save_as(sheet)
            if shots:
                page.screenshot(path=str(Path(shots) / "gallery.png"))

            # With an access token: refused without it, and the token URL opens the study.
            guarded = LiveServer(create_app(study, Gallery(site), token="k" * 20)).start()
            try:
                other = browser.new_page(bypass_csp=True)
                other.on("request", lambda r: requests.append(r.url))
                assert other.goto(guarded.url).status == 401
                other.goto(guarded.url + "?token=" + "k" * 20)
                other.click("button[data-reader='Bob']")
                other.wait_for_selector(".call:not([disabled])")
                assert other.inner_text("#total") == str(n)
            finally:
                guarded.stop()
            browser.close()
    finally:
        server.stop()
    with pytest.raises(ReaderStudyError, match="needs an access token"):
        create_app(study, Gallery(site), host="0.0.0.0")

    # What was stored equals what was clicked, each image once.
    rows = study.db.answer_rows("default")
    assert {r["position"]: {k: r[k] for k in ("call", "class_call", "confidence")}
            for r in rows if r["reader"] == "Ann"} == clicks
    assert len(rows) == n
    # The summary equals the statistics of the clicks, recomputed here from the truth.
    truth = {p: study.items[study.db.item_at("default", "Ann", p)] for p in clicks}
    mine = reader_result([Answer(truth[p].truth, c["call"], truth[p].class_name,
                                 c["class_call"], c["confidence"]) for p, c in clicks.items()],
                         total=n)
    summary = study.summary()
    assert summary["per_reader"]["reader-1"]["accuracy"]["k"] == mine.accuracy.k
    assert summary["per_reader"]["reader-1"]["synthetic_called_real"]["k"] == \
        mine.synthetic_called_real.k
    assert summary["pooled"]["accuracy"]["n"] == n  # Bob has not finished: not pooled
    assert summary["verdict"] == mine.verdict == verdict_on_page
    # The page asked nothing of any other host.
    local = (server.url, guarded.url)
    assert requests and all(u.startswith(local) for u in requests), \
        [u for u in requests if not u.startswith(local)]
    from PIL import Image

    assert Image.open(sheet).size[0] > 6 * 96
