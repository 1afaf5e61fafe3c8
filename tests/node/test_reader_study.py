"""The reader study: blinded, each image once per reader, answers counted once, resumable,
honest statistics, a numbers-only summary, a locked-down server, and a gallery that can only
show synthetic images."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from node.errors import ReaderStudyError
from node.reader_study.gallery import Gallery
from node.reader_study.server import check_bind, create_app
from node.reader_study.session import SUMMARY_PATH, ReaderStudy
from node.reader_study.statistics import Answer, Proportion, reader_result, verdict, wilson
from node.store import SiteStore
from shared.bundle import decode_png
from shared.synthetic import SyntheticSet
from tests.node.reader_study_site import build_site, copy_site


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("reader-template"))


@pytest.fixture
def site(template: Path, tmp_path: Path) -> Path:
    return copy_site(template, tmp_path / "site")


def client(study: ReaderStudy, **kw: object) -> TestClient:
    app = create_app(study, Gallery(study.site_dir), **kw)  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1")


# -- statistics ------------------------------------------------------------------------------
def test_wilson_matches_published_values_and_verdicts_follow_the_ci() -> None:
    # Newcombe (1998), Table I: 81/263 → 0.2553–0.3662; 0/10 → 0–0.2775.
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert verdict(Proportion.of(53, 100)).startswith("readers could not tell them apart")
    assert verdict(Proportion.of(80, 100)).startswith("readers told real from synthetic better")
    assert verdict(Proportion.of(20, 100)).startswith("readers took synthetic for real")
    assert verdict(Proportion.of(0, 0)) == "no answers yet"
    assert verdict(Proportion.of(8, 16)).startswith("too few answers to tell")


def test_reader_result_counts_each_rate_on_its_own_denominator() -> None:
    a = [Answer("real", "real", "normal", "normal", 5),
         Answer("real", "synthetic", "abnormal", None, None),
         Answer("synthetic", "real", "abnormal", "abnormal", 3),
         Answer("synthetic", "real", "normal", "abnormal", 1),
         Answer("synthetic", "synthetic", "normal", None, None)]
    r = reader_result(a, total=6)
    assert (r.accuracy.k, r.accuracy.n) == (2, 5)
    assert (r.synthetic_called_real.k, r.synthetic_called_real.n) == (2, 3)
    assert (r.real_called_synthetic.k, r.real_called_synthetic.n) == (1, 2)
    assert (r.class_agreement_synthetic.k, r.class_agreement_synthetic.n) == (1, 2)
    assert (r.class_agreement_real.k, r.class_agreement_real.n) == (1, 1)
    assert r.mean_confidence == 3.0 and not r.finished


def test_pooled_ci_allows_for_readers_sharing_images() -> None:
    """Two readers who agree on every image carry little more information than one: the
    pooled CI must not shrink as if 2n answers were independent."""
    from node.reader_study.statistics import pooled_result

    answers = [Answer("real" if i % 2 else "synthetic", "real", None, None, None, item=i)
               for i in range(40)]
    one = reader_result(answers, total=40)
    pooled = pooled_result([(one, answers), (one, answers)])
    naive = Proportion.of(40, 80)
    assert (pooled.accuracy.k, pooled.accuracy.n) == (40, 80)
    assert pooled.accuracy.ci_high - pooled.accuracy.ci_low > \
        1.25 * (naive.ci_high - naive.ci_low)
    alone = pooled_result([(one, answers)])  # one finished reader: the reader's own numbers
    assert alone.accuracy == one.accuracy


# -- the study -------------------------------------------------------------------------------
def test_study_is_real_test_images_and_class_matched_synthetic(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann"])
    test_ids = {x.image_id for x in SiteStore.open(site).samples("test")}
    real = [it for it in s.items.values() if it.truth == "real"]
    syn = [it for it in s.items.values() if it.truth == "synthetic"]
    assert {it.ref for it in real} <= test_ids and len(real) == len(test_ids) == 8
    assert sorted(it.class_name for it in real) == sorted(it.class_name for it in syn)
    order = [s.db.item_at("default", "Ann", p) for p in range(len(s.items))]
    assert sorted(order) == sorted(s.items)  # each image exactly once per reader


def test_api_is_blind_and_serves_the_item_pixels(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann"])
    c = client(s)
    p = c.get("/api/reader/Ann").json()
    assert p == {"reader": "Ann", "answered": 0, "total": 16, "next": 0, "finished": False}
    r = c.get("/api/reader/Ann/image/0.png")
    item = s.items[s.db.item_at("default", "Ann", 0)]
    assert np.array_equal(decode_png(r.content), s.sources.pixels(item))
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    text = json.dumps([c.get("/api/study").json(), p, c.get("/api/results").json()])
    for it in s.items.values():
        if it.truth == "real":
            assert it.ref not in text  # no real image id leaks


def test_double_submit_counts_once_and_a_second_opinion_is_refused(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann"])
    c = client(s)
    body = {"reader": "Ann", "position": 0, "call": "real", "class_name": "normal",
            "confidence": 4}
    first, again = c.post("/api/answer", json=body), c.post("/api/answer", json=body)
    assert first.json()["stored"] and again.json()["duplicate"] and again.json()["answered"] == 1
    other = c.post("/api/answer", json={**body, "call": "synthetic"})
    assert other.status_code == 409 and "already answered" in other.json()["error"]
    rows = s.db.answer_rows("default")
    assert [(r["position"], r["call"]) for r in rows] == [(0, "real")]


def test_two_readers_and_two_windows_at_once_lose_nothing_and_count_once(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann", "Bob"])
    c = client(s)
    n = len(s.items)
    errors: list[int] = []

    def answer_all(reader: str, call: str) -> None:
        for pos in range(n):
            r = c.post("/api/answer", json={"reader": reader, "position": pos, "call": call})
            if r.status_code not in (200, 409):
                errors.append(r.status_code)

    threads = [threading.Thread(target=answer_all, args=args) for args in
               (("Ann", "real"), ("Bob", "synthetic"), ("Ann", "real"), ("Bob", "synthetic"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = s.db.answer_rows("default")
    assert len(rows) == 2 * n
    assert {r["call"] for r in rows if r["reader"] == "Ann"} == {"real"}
    res = s.results()
    assert all(r["finished"] for r in res["readers"])
    assert res["pooled"]["accuracy"]["n"] == 2 * n and res["pooled"]["accuracy"]["k"] == n


def test_resume_after_restart_keeps_order_and_answers(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann"])
    for pos in range(3):
        s.answer("Ann", pos, "real", None, None)
    order = [s.db.item_at("default", "Ann", p) for p in range(len(s.items))]
    again = ReaderStudy.open(site, readers=["Ann"])  # a new server process
    assert again.progress("Ann")["next"] == 3 and again.progress("Ann")["answered"] == 3
    assert [again.db.item_at("default", "Ann", p) for p in range(len(s.items))] == order


def test_regenerated_synthetic_set_is_noticed(site: Path) -> None:
    ReaderStudy.open(site, readers=["Ann"])
    syn = SyntheticSet.load(site / "synthetic" / "default")
    syn.images[0] = 255 - syn.images[0]
    syn.save(site / "synthetic" / "default")
    with pytest.raises(ReaderStudyError, match="changed since study 'default' began"):
        ReaderStudy.open(site)


def test_unfinished_readers_results_stay_hidden(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann"])
    s.answer("Ann", 0, "real", None, None)
    shown = client(s).get("/api/results").json()
    assert shown["readers"] == [{"reader": "Ann", "answered": 1, "total": 16, "finished": False}]
    assert shown["pooled"]["answered"] == 0 and shown["verdict"] == "no answers yet"


# -- bad input -------------------------------------------------------------------------------
def test_reader_name_with_markup_is_refused_clearly(site: Path) -> None:
    from shared.cli import app

    res = CliRunner().invoke(app, ["node", "reader-study", "--site-dir", str(site), "--reader",
                                   "<img src=x onerror=alert(1)>", "--results"])
    assert res.exit_code != 0
    assert "is not allowed" in str(res.exception) and "no markup" in str(res.exception)
    s = ReaderStudy.open(site, readers=["Zoë O'Neil"])
    r = client(s).get("/api/reader/%3Cb%3Ex")
    assert r.status_code == 400 and "is not a reader" in r.json()["error"]


def test_no_test_split_or_no_synthetic_set_is_a_clear_error(tmp_path: Path) -> None:
    from node.store import Accepted, StoreWriter

    site = tmp_path / "s"
    with StoreWriter(site, size=16) as w:
        w.add_batch([Accepted(f"i{i}", np.zeros((16, 16), np.uint8), "No finding", f"s{i}",
                              split="train") for i in range(4)])
    with pytest.raises(ReaderStudyError, match=r"no synthetic set here.*node generate"):
        ReaderStudy.open(site)
    SyntheticSet(np.zeros((4, 16, 16), np.uint8), np.zeros(4), ["normal", "abnormal"]).save(
        site / "synthetic" / "default")
    with pytest.raises(ReaderStudyError, match="no test split"):
        ReaderStudy.open(site)
    SyntheticSet(np.zeros((4, 8, 8), np.uint8), np.zeros(4), ["normal", "abnormal"]).save(
        site / "synthetic" / "small")
    with pytest.raises(ReaderStudyError, match="same resolution"):
        ReaderStudy.open(site, "other", synthetic_name="small")
    with pytest.raises(ReaderStudyError, match="no site store"):
        ReaderStudy.open(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # a mistyped --site-dir leaves nothing behind


def test_non_loopback_bind_needs_a_token(site: Path) -> None:
    from shared.cli import app

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    for host in ("0.0.0.0", "10.1.2.3", "reader.hospital.example"):
        with pytest.raises(ReaderStudyError, match="needs an access token"):
            check_bind(host, None)
    with pytest.raises(ReaderStudyError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    res = CliRunner().invoke(app, ["node", "reader-study", "--site-dir", str(site),
                                   "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "needs an access token" in str(res.exception)
    assert not (site / "reader_study").exists()  # refused before anything was created


def test_token_cookie_host_and_json_guards(site: Path) -> None:
    token = "t" * 24
    s = ReaderStudy.open(site, readers=["Ann"])
    c = client(s, host="10.0.0.5", token=token)
    assert c.get("/api/study").status_code == 401
    assert c.get("/?token=wrong-token-wrong-token").status_code == 401
    r = c.get(f"/?token={token}", follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert c.get("/api/study").status_code == 200  # the cookie now rides along
    assert c.get("/api/study", headers={"host": "attacker.example"}).status_code == 400
    anywhere = client(s, host="0.0.0.0", token=token)  # readers use the machine's own name
    assert anywhere.get("/api/study", headers={"host": "reader-pc.hospital:8765",
                                               "x-reader-token": token}).status_code == 200
    assert anywhere.get("/api/study", headers={"host": "reader-pc.hospital:8765"}
                        ).status_code == 401
    local = client(s)
    assert local.get("/api/study", headers={"host": "attacker.example"}).status_code == 400
    form = local.post("/api/answer", content="reader=Ann&position=0&call=real",
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and s.db.answer_rows("default") == []


# -- summary, export, report -----------------------------------------------------------------
def test_summary_is_numbers_only_and_the_cli_writes_it(site: Path) -> None:
    from shared.cli import app

    s = ReaderStudy.open(site, readers=["Ann Secret-Name"])
    for pos in range(len(s.items)):
        s.answer("Ann Secret-Name", pos, "real", "normal", 3)
    res = CliRunner().invoke(app, ["node", "reader-study", "--site-dir", str(site), "--results"])
    assert res.exit_code == 0, res.output
    text = (site / SUMMARY_PATH).read_text()
    doc = json.loads(text)
    assert doc["kind"] == "reader_study" and doc["readers_finished"] == 1
    assert doc["pooled"]["accuracy"]["value"] == 0.5
    assert doc["verdict"].startswith("too few answers to tell: accuracy 0.50")
    assert "Secret" not in text and "phantom" not in text  # no name, no image id
    assert set(doc["per_reader"]) == {"reader-1"}


# -- gallery ---------------------------------------------------------------------------------
def test_gallery_serves_synthetic_only_and_draws_new_images_of_a_class(site: Path) -> None:
    s = ReaderStudy.open(site, readers=["Ann"])
    c = client(s)
    assert c.get("/api/gallery").json() == {"sets": ["default"]}
    listing = c.get("/api/gallery/default?class_name=abnormal").json()
    syn = SyntheticSet.load(site / "synthetic" / "default")
    assert listing["indices"] == [i for i, lab in enumerate(syn.labels) if lab == 1]
    img = decode_png(c.get(f"/api/gallery/default/image/{listing['indices'][0]}.png").content)
    assert np.array_equal(img, syn.images[listing["indices"][0]])
    for bad in ("..", "..%2Fstore", "store", "%2Fetc"):
        assert c.get(f"/api/gallery/{bad}/image/0.png").status_code in (400, 404)
    new = c.post("/api/gallery/generate",
                 json={"class_name": "abnormal", "n": 5, "truncation": 0.5}).json()
    assert new["set"] == "new-1" and new["labels"] == ["abnormal"] * 5
    assert c.get("/api/gallery").json()["sets"] == ["default", "new-1"]
    real = SiteStore.open(site).load()[0]
    for i in range(5):
        px = decode_png(c.get(f"/api/gallery/new-1/image/{i}.png").content)
        assert not any(np.array_equal(px, r) for r in real)
    sheet = c.get("/api/gallery/new-1/sheet.png")
    assert sheet.headers["content-disposition"].startswith("attachment")
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(sheet.content)).size[0] > 5 * 96
    bad = c.post("/api/gallery/generate", json={"class_name": "<b>", "n": 5, "truncation": 0.5})
    assert bad.status_code == 400 and "not one of" in bad.json()["error"]
    assert c.post("/api/gallery/generate",
                  json={"class_name": "normal", "n": 500, "truncation": 0.5}).status_code == 422


def test_gallery_without_a_trained_generator_says_what_to_do(site: Path) -> None:
    import shutil

    shutil.rmtree(site / "runs")
    with pytest.raises(ReaderStudyError, match="node train"):
        Gallery(site).generate("normal", 2, 0.7, None)


def test_the_cli_serves_on_loopback_and_stops_on_ctrl_c(site: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from shared.cli import main; main()", "node", "reader-study",
         "--site-dir", str(site), "--reader", "Ann", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/study", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
                time.sleep(0.2)
        assert info["readers"] == ["Ann"] and info["images"] == {"real": 8, "synthetic": 8}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            page = r.read().decode()
        assert "http" not in page.replace('name="viewport"', "")  # no other host referenced
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"open http://127.0.0.1:{port}/" in out


def test_results_without_a_study_says_how_to_start_one(site: Path) -> None:
    from shared.cli import app

    res = CliRunner().invoke(app, ["node", "reader-study", "--site-dir", str(site), "--results"])
    assert res.exit_code != 0 and "no study 'default' yet" in str(res.exception)
    assert not (site / SUMMARY_PATH).exists()
