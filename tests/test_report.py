"""`mmdata report`: a real headless Chromium (the distribution's, driven by playwright over the
DevTools protocol) opens the report of a real workdir — demo pairs downloaded from the demo server,
then filter, dedup, clipscore, interleaved, text, shards and the mixture sampler — and checks that
every image renders, the console stays clean, nothing is fetched, and the funnel numbers on the
page are those of the stages' `_funnel.json` files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmdata import decisions
from mmdata.config import Pipeline
from mmdata.pipeline import run_one

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("filter", "dedup", "clipscore", "interleaved", "text", "shards")


def chromium() -> str:
    path = os.environ.get("MMDATA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on PATH: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_corpus, demo_server, downloaded, client) -> Path:
    from mmdata.demo.tiny_clip import untrained
    from mmdata.mix import stats as mix_stats
    from mmdata.report.workdir import MIX_STATS

    work = tmp_path_factory.mktemp("report") / "work"
    shutil.copytree(downloaded.download.output, work / "download")  # the shared set, inside this workdir
    model = untrained(demo_corpus, work.parent / "tiny-clip")  # scores without meaning, but real ones
    fetch = {"connect_to": {"*": f"127.0.0.1:{demo_server.port}"}, "allow": ["127.0.0.1"]}
    warc = str(demo_corpus / "docs" / "pages.warc.gz")
    pipe = Pipeline(workdir=str(work), engine={"progress": False},
                    download=downloaded.download.model_copy(update={"output": str(work / "download")}),
                    filter={}, dedup={}, clipscore={"model": str(model), "batch_size": 64, "top_fraction": 0.8,
                                                    "pool_after": ["filter", "dedup"]},
                    interleaved={"input": warc, "fetch": fetch}, text={"input": warc},
                    shards={"shard_samples": 64})
    for stage in STAGES:
        run_one(pipe, stage, client=client)
    old = os.environ.get("MMDATA_SHARDS")
    os.environ["MMDATA_SHARDS"] = str(work / "shards")
    try:
        counted = mix_stats.run(ROOT / "pipelines" / "mixtures" / "mm1.yaml", 4, overrides=["global_batch=64", "lanes=2"])
    finally:
        os.environ.pop("MMDATA_SHARDS") if old is None else os.environ.__setitem__("MMDATA_SHARDS", old)
    counted.write(str(work / MIX_STATS))
    return work


def report_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mmdata", "report", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def open_in_chromium(path: Path) -> dict:
    """The page as Chromium rendered it: console errors, requests other than the file, every image's
    natural size, the funnel tables and which sections are there."""
    from playwright.sync_api import sync_playwright

    url = path.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        page = browser.new_page()
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if r.url != url and not r.url.startswith("data:") else None)
        page.goto(url, wait_until="load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        seen = page.evaluate("""() => ({
          images: Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight]),
          funnels: Array.from(document.querySelectorAll('table.funnel')).map(t => ({
            folder: t.dataset.folder, stage: t.dataset.stage,
            records: t.querySelector('[data-field=records]').textContent,
            kept: t.querySelector('[data-field=kept]').textContent,
            dropped: Array.from(t.querySelectorAll('tr.drop')).map(r => [r.dataset.reason,
                                                                         r.querySelector('[data-field=dropped]').textContent])})),
          present: Array.from(document.querySelectorAll('section.present')).map(s => s.id),
          absent: Array.from(document.querySelectorAll('section.absent')).map(s => [s.id, s.innerText]),
          threshold: (document.querySelector('#clip .threshold') || {}).textContent,
          groups: Array.from(document.querySelectorAll('#samples h3.group')).map(h => h.dataset.group),
        })""")
        browser.close()
    return {**seen, "errors": errors, "requests": requests}


def as_int(text: str) -> int:
    return int(text.replace(",", "").strip())


@pytest.mark.slow
@pytest.mark.timeout(900)  # the fixture runs six stages; on a loaded machine that is minutes
def test_report_opens_in_chromium_with_every_image_and_the_stages_funnels(workdir, tmp_path):
    done = report_cli(str(workdir), "--out", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report: {tmp_path / 'report.html'}"
    page = open_in_chromium(tmp_path / "report.html")

    assert page["errors"] == [] and page["requests"] == []
    assert len(page["images"]) > 20  # plots, sample thumbnails, cluster pictures, document images
    assert all(w > 0 and h > 0 for _, w, h in page["images"]), [i for i in page["images"] if not i[1]]

    # the funnels on the page are every _funnel.json the stages wrote, number for number
    files = {str(p.parent.relative_to(workdir)): json.loads(p.read_text()) for p in workdir.rglob(decisions.FUNNEL)}
    assert {"download", "filter", "dedup", "clipscore", "interleaved", "text", "shards/_state/captions"} <= set(files)
    shown = {f["folder"]: f for f in page["funnels"]}
    assert set(shown) == set(files)
    for folder, f in files.items():
        s = shown[folder]
        assert s["stage"] == f["stage"]
        assert as_int(s["records"]) == f["records"] and as_int(s["kept"]) == f["kept"], folder
        assert [[r, as_int(n)] for r, n in s["dropped"]] == f["dropped"], folder
    assert any(f["dropped"] for f in files.values())

    decision = json.loads((workdir / "clipscore" / "_decision.json").read_text())
    assert page["threshold"] == f"{decision['threshold']:.4f}"
    assert page["groups"][0] == "kept" and "clipscore:low_clip_score" in page["groups"]
    assert any(g.startswith("dedup:") for g in page["groups"])
    assert {"funnel", "throughput", "clip", "samples", "dedup", "documents", "mixture"} <= set(page["present"])
    # no trainer ran here: those sections say what they would have read, and nothing is invented
    absent = dict(page["absent"])
    assert set(absent) == {"training", "evaluation"}
    assert "log.jsonl" in absent["training"] and "results.jsonl" in absent["evaluation"]


def test_report_of_a_download_only_workdir_omits_what_is_not_there(downloaded, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(downloaded.download.output, work / "download")
    done = report_cli(str(work))
    assert done.returncode == 0, done.stderr
    page = (work / "report.html").read_text()
    assert 'id="throughput" class="present"' in page and 'id="samples" class="present"' in page
    for section in ("clip", "dedup", "documents", "mixture", "training", "evaluation"):
        assert f'id="{section}" class="absent"' in page
    assert "no clipscore/_decision.json" in page


def test_report_of_a_missing_workdir_is_one_line_exit_2(tmp_path):
    done = report_cli(str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such workdir"
