"""`make demo` runs every stage that exists, end to end, on the demo corpus and the real pages and
WARCs of the shared data."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmdata import config, fsio, samples
from mmdata.fetch import ROBOTS, SSRF, fetch_all
from mmdata.pipeline import STAGES

ROOT = Path(__file__).resolve().parent.parent
REAL = "demo.mmdata.test"  # the generated pages' domain: any other host is a real page's


def test_demo_recipe_runs_every_stage_in_pipeline_order():
    recipe = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    assert recipe["stages"] == list(STAGES), "a stage that exists must join the demo, in pipeline order"


def demo_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdata", "demo", "--config", "pipelines/demo.yaml", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.mark.timeout(900)
def test_demo_reads_the_real_pages_and_warcs_beside_the_generated_ones(demo_corpus, shared_data, tmp_path):
    """`mmdata demo`'s interleaved and text stages (pipelines/demo.yaml as it is) on the session's demo
    corpus: the real pages and WARCs come out as documents beside the generated ones, their https
    images fetched from the demo web's stand-ins, and the report renders one of them."""
    work = tmp_path / "work"
    n = yaml.safe_load((demo_corpus / "manifest.json").read_text())  # the corpus as built: reused, not rebuilt
    done = demo_cli("--corpus", str(demo_corpus), "--pairs", str(n["n_pairs"]), "--docs", str(n["n_docs"]),
                    "--stage", "interleaved", "--stage", "text", "--no-train", MMDATA_WORKDIR=str(work),
                    MMDATA_SHARED=str(shared_data.parent))
    assert done.returncode == 0, done.stderr[-3000:]

    def outputs(stage: str) -> tuple[pd.DataFrame, list[dict]]:
        meta = pd.concat([fsio.read_parquet(f) for f in fsio.expand(f"{work}/{stage}/0*.parquet")], ignore_index=True)
        docs = [samples.decode(s) for f in fsio.expand(f"{work}/{stage}/0*.tar") for s in samples.read_shard(f)]
        return meta, docs

    n_html = len(list((shared_data / "html").glob("*.html")))
    sources = {"nature": "https://www.nature.com/articles/d41586-019-02790-3",  # a saved page
               "allenai": "https://allenai.org/"}  # a page of a wget crawl's WARC
    for stage in ("interleaved", "text"):
        meta, docs = outputs(stage)
        real = meta[~meta["source"].str.startswith(str(demo_corpus))]
        # every real page and WARC record has its row; real and generated documents are both kept
        assert real["source"].str.contains("/html/").sum() == n_html, stage
        assert {p.name for p in (shared_data / "warc").glob("*.warc.gz")} == {
            Path(s.split("@")[0]).name for s in real["source"] if ".warc.gz@" in s}, stage
        urls = {d["json"]["url"] for d in docs}
        assert set(sources.values()) <= urls, stage
        assert sum(REAL in u for u in urls) > 10 and sum(REAL not in u for u in urls) > 10, stage
        if stage == "interleaved":
            nature = next(d for d in docs if d["json"]["url"] == sources["nature"])
            slots = [x for x in nature["json"]["slots"] if x["type"] == "image"]
            assert slots and all(x["url"].startswith("https://") for x in slots)  # the real host's URL, kept
            assert all(samples.image_member(nature, x["index"]) for x in slots)  # its bytes: the stand-in
        else:
            assert "Five-hundred-meter Aperture Spherical" in next(d["txt"] for d in docs if d["json"]["url"] == sources["nature"])
    # the report the demo ends with shows a real page beside a generated one
    html = (work / "report.html").read_text()
    section = html[html.index('<section id="documents"'):]
    shown = section[: section.index("</section>")]
    assert shown.count('<article class="doc"') == 3 and REAL in shown and "https://" in shown


def test_demo_fetch_maps_every_host_to_the_demo_web_and_keeps_its_guards(demo_server, monkeypatch, tmp_path):
    """The demo's document fetch sends every host to the demo web (real pages' https image URLs
    included), and robots.txt and the SSRF guard still decide as they do on the web."""
    from mmdata.demo.urls import IMAGE_HOSTS, ROBOTS_DISALLOW

    monkeypatch.setenv("MMDATA_DEMO_PORT", str(demo_server.port))
    monkeypatch.setenv("MMDATA_WORKDIR", str(tmp_path))
    fetch = config.load(ROOT / "pipelines" / "demo.yaml", config.Pipeline).section("interleaved").fetch
    host = next(h for h in IMAGE_HOSTS if h in ROBOTS_DISALLOW)
    got = fetch_all(["https://media.nature.com/lw800/magazine-assets/d41586-019-02790-3/x.jpg",
                     f"http://{host}{ROBOTS_DISALLOW[host]}a.jpg", "http://10.1.2.3/a.jpg", "http://[fd00::1]/a.jpg"],
                    fetch.model_copy(update={"retries": 0}))
    assert [r.status for r in got] == ["success", ROBOTS, SSRF, SSRF], [(r.status, r.error_message) for r in got]
    from PIL import Image

    assert min(Image.open(io.BytesIO(got[0].body)).size) >= 200  # the demo web's stand-in for a photo


def test_demo_without_the_real_data_says_where_it_looked(tmp_path):
    done = demo_cli("--stage", "text", MMDATA_SHARED=str(tmp_path / "nowhere"), MMDATA_WORKDIR=str(tmp_path / "w"),
                    MMDATA_DEMO_CORPUS=str(tmp_path / "corpus"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        (f"error: {tmp_path / 'nowhere' / 'data'}: no real pages (html/*.html) and WARCs (warc/*.warc.gz) for the "
         "demo; set MMDATA_SHARED to the folder holding data/")]
    assert not (tmp_path / "corpus").exists()  # it says so before building anything


@pytest.mark.timeout(1800)  # the session's tiny MM1 trains first when no earlier test asked for it
def test_demo_evaluates_the_tiny_model_and_the_report_tabulates_it(tiny_eval, tmp_path):
    """The demo's last step (`demo.run.evaluate_tiny`, what `make demo` calls after training) runs
    pipelines/eval-demo.yaml on the session's trained tiny MM1 (`tiny_eval`): every task at every shot
    count, on the demo's subset, into the workdir, where `mmdata report` shows it."""
    from mmdata.demo import run as demo_run

    lines = [json.loads(x) for x in tiny_eval.results.read_text().splitlines()]
    assert {(r["task"], r["shots"]) for r in lines} == {
        ("caption", 0), ("caption", 4), ("caption", 8), ("vqa", 0), ("vqa", 4), ("vqa", 8),
        ("icl", 4), ("icl", 8), ("text", 0)}
    assert all(r["n"] == demo_run.DEMO_EVAL_ITEMS for r in lines), lines
    by = {(r["task"], r["shots"]): r for r in lines}
    assert by[("icl", 4)]["chance"] == 50 and by[("text", 0)]["chance"] == 25
    # the model learnt to caption (tests/test_mm1_train.py): its 0-shot CIDEr is not nil
    assert by[("caption", 0)]["metric"].lower().startswith("cider") and by[("caption", 0)]["score"] > 0
    assert any(line.lstrip().startswith("icl") for line in tiny_eval.said), tiny_eval.said  # the table is printed too

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "mmdata", "report", str(tiny_eval.work), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    section = html[html.index('<section id="evaluation" class="present"'):]
    section = section[: section.index("</section>")]
    assert section.count("<tr>") == len(lines) + 1  # the header and one row per (task, shots)
