"""`mmdata report`: a real headless Chromium (the distribution's, driven by playwright over the
DevTools protocol) opens the report of a real workdir — demo pairs downloaded from the demo server,
then filter, dedup, clipscore, interleaved, text, shards and the mixture sampler — and checks that
every image renders, the console stays clean, nothing is fetched, and the funnel numbers on the
page are those of the stages' `_funnel.json` files."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


@pytest.fixture(scope="module")
def trained(workdir, downloaded, tiny_recaption, mm1_tiny, tiny_eval, client, tmp_path_factory) -> Path:
    """`workdir` and what the demo adds to it after the data stages: the recaption stage's VeCap captions
    (the session's tiny captioner; the workdir's CLIP scores them), the session's tiny MM1 run
    (log.jsonl, checkpoints, exported model) and the demo's evaluation of it (`tiny_eval`)."""
    work = tmp_path_factory.mktemp("report-trained") / "work"
    shutil.copytree(workdir, work)
    clip = {"model": str(workdir.parent / "tiny-clip"), "batch_size": 64, "top_fraction": 0.8, "pool_after": ["filter", "dedup"]}
    pipe = Pipeline(workdir=str(work), engine={"progress": False},
                    download=downloaded.download.model_copy(update={"output": str(work / "download")}),
                    filter={}, dedup={}, clipscore=clip,
                    recaption={"describe": {"model": str(tiny_recaption.captioner), "batch_size": 32, "decode_threads": 2}})
    report = run_one(pipe, "recaption", client=client)
    assert report.ok, report.summary()
    shutil.copytree(Path(mm1_tiny.log).parent, work / "mm1-tiny")
    shutil.copytree(tiny_eval.work / "eval", work / "eval")
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
          training: Array.from(document.querySelectorAll('#training h3.run')).map(h => [h.dataset.run,
            Object.fromEntries(Array.from(h.parentElement.querySelectorAll('table.training tr[data-field]'))
              .filter(r => r.closest('section') === h.closest('section')).map(r => [r.dataset.field, r.cells[1].textContent]))]),
          evaluation: Array.from(document.querySelectorAll('#evaluation table.eval')).map(t => [t.dataset.file,
            Array.from(t.querySelectorAll('tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))]),
          vecap: Object.fromEntries(Array.from(document.querySelectorAll('#clip .vecap-scores [data-field]'))
            .map(e => [e.dataset.field, e.textContent])),
          cards: Array.from(document.querySelectorAll('#samples .card')).map(c => [c.querySelector('.meta code').textContent,
            c.querySelector('.vecap') ? c.querySelector('.vecap').textContent : null]),
        })""")
        browser.close()
    return {**seen, "errors": errors, "requests": requests}


def as_int(text: str) -> int:
    return int(text.replace(",", "").strip())


def shows(text: str, value: float) -> bool:
    """The page's rounded number (4 significant digits, thousands separators, maybe a %) is `value`."""
    t = text.replace(",", "").strip()
    shown = float(t.rstrip("%")) / (100 if t.endswith("%") else 1)
    return math.isclose(shown, value, rel_tol=1e-3, abs_tol=1e-4 if t.endswith("%") else 1e-12)


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


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the session's tiny captioner and tiny MM1 train first when no earlier test asked
def test_report_shows_recaption_training_and_evaluation_as_their_files_say(trained, tmp_path):
    done = report_cli(str(trained), "--out", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stderr
    page = open_in_chromium(tmp_path / "report.html")
    assert page["errors"] == [] and page["requests"] == [] and page["absent"] == []
    assert all(w > 0 and h > 0 for _, w, h in page["images"]), [i for i in page["images"] if not i[1]]
    alts = {a for a, _, _ in page["images"]}
    assert {"training curves of mm1-tiny", "AltText vs VeCap CLIP scores"} <= alts

    # training: the numbers of the trainer's log.jsonl
    log = [json.loads(x) for x in (trained / "mm1-tiny" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r and "loss" in r]
    assert [run for run, _ in page["training"]] == ["mm1-tiny"]
    shown = page["training"][0][1]
    assert as_int(shown["steps"]) == len(steps) and as_int(shown["last_step"]) == steps[-1]["step"]
    assert shows(shown["first_loss"], steps[0]["loss"]) and shows(shown["last_loss"], steps[-1]["loss"])
    for field in ("tokens_per_s", "data_share"):
        values = [r[field] for r in steps if r.get(field) is not None]
        assert values and shows(shown[field], sum(values) / len(values)), field
    assert as_int(shown["tokens"]) == sum(r.get("tokens", 0) for r in steps)

    # evaluation: one row per line of results.jsonl, in its order
    results = [json.loads(x) for x in (trained / "eval" / "results.jsonl").read_text().splitlines()]
    assert [f for f, _ in page["evaluation"]] == ["eval/results.jsonl"]
    rows = page["evaluation"][0][1]
    assert len(rows) == len(results) == 9
    for row, r in zip(rows, results):
        assert (row[0], int(row[1]), row[2], as_int(row[6])) == (r["task"], r["shots"], r["metric"], r["n"])
        assert shows(row[3], r["score"]), (row, r)
        assert row[5] == "–" if r.get("chance") is None else shows(row[5], r["chance"]), (row, r)

    # recaption: AltText vs VeCap scores and the samples' VeCap captions are the stage's sidecars
    side = pd.concat([pd.read_parquet(p) for p in sorted((trained / "recaption").glob("0*.parquet"))], ignore_index=True)
    both = side[side["alt_score"].notna() & side["synthetic_score"].notna()]
    vecap = page["vecap"]
    assert len(both) > 50 and as_int(vecap["n"]) == len(both)
    assert shows(vecap["alt"], both["alt_score"].mean()) and shows(vecap["synthetic"], both["synthetic_score"].mean())
    assert shows(vecap["better"], float((both["synthetic_score"] > both["alt_score"]).mean()))
    captions = dict(zip(side["key"].astype(str), side["synthetic_caption"]))
    cards = [(k, v.removeprefix("VeCap ")) for k, v in page["cards"] if v is not None]
    assert len(cards) == len(page["cards"])  # every card has its VeCap line
    said = [(k, v) for k, v in cards if v != "none"]
    assert len(said) >= 5
    for key, text in said:
        want = captions[key]
        assert text == (want if len(want) <= 300 else want[:300] + "…"), key
    assert all(not isinstance(captions.get(k), str) for k, v in cards if v == "none")
