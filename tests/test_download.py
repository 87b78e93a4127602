"""The download stage end to end: real demo web server, Dask LocalCluster, CLI, check stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmdata import fsio, inputs, samples
from mmdata.config import Pipeline
from mmdata.demo.server import DemoServer
from mmdata.demo.urls import IMAGE_HOSTS, ROBOTS_DISALLOW, fault_url
from mmdata.stages import check, download
from mmdata.store import ShardSet

ROOT = Path(__file__).resolve().parents[1]
H1, H2 = IMAGE_HOSTS[0], IMAGE_HOSTS[1]
OTHER = "photos.example.test"  # any non-demo host: the server answers image paths with stand-ins
ROBOTS_HOST = next(iter(ROBOTS_DISALLOW))


@pytest.fixture(scope="module")
def server():
    with DemoServer() as srv:
        yield srv


def recipe(tmp: Path, server, input, **download) -> dict:
    fetch = {"allow": ["127.0.0.1"], "connect_to": {"*": f"127.0.0.1:{server.port}"}, "retries": 1, "backoff_base": 0.05,
                 "first_byte_timeout": 2.5}  # headroom for a loaded 2-core machine
    fetch |= download.pop("fetch", {})
    return {"name": "t", "workdir": str(tmp / "work"), "engine": {"progress": False},
            "download": {"input": str(input), "samples_per_shard": 8, "fetch": fetch, **download}, "check": {}}


def all_meta(out: str) -> pd.DataFrame:
    s = ShardSet(out)
    return pd.concat([s.read_meta(i) for i in s.ids()], ignore_index=True)


def assert_valid(pipe: Pipeline, client):
    report = check.run(pipe, client=client, overwrite=True)
    assert report.ok and report.totals()["count"] == report.totals()["successes"], report.totals()


@pytest.mark.parametrize("threads", [0, 2])  # images processed in the event loop's thread, or in a pool
def test_fault_modes_through_the_stage(tmp_path, server, client, threads):
    server.reset()
    cases = [
        (f"http://{OTHER}/img/a.jpg", "success"),
        (fault_url(H1, "404", "a.jpg"), "failed_to_download"),
        (fault_url(H1, "500", "b.jpg"), "failed_to_download"),
        (fault_url(H1, "429", "c.jpg", retry_after=1, after=1), "success"),
        (fault_url(H1, "503", "d.jpg", after=1), "success"),
        (fault_url(H1, "truncated", "e.jpg"), "failed_to_download"),
        (fault_url(H1, "not_image", "f.jpg"), "failed_to_decode"),
        (fault_url(H1, "wrong_type", "g.jpg"), "success"),
        (fault_url(H2, "redirect", "h.jpg", hops=2), "success"),
        (fault_url(H2, "redirect_loop", "i.jpg"), "failed_to_download"),
        (fault_url(H2, "bomb", "j.png"), "failed_to_decode"),
        (fault_url(H2, "oversized", "k.jpg", mb=2), "failed_to_download"),
        (fault_url(H2, "noai", "l.jpg"), "skipped_x_robots_tag"),
        (fault_url(H2, "slow_first_byte", "m.jpg", delay=6), "failed_to_download"),
        (fault_url(H2, "slow_first_byte", "n.jpg", delay=0.2), "success"),
        (fault_url(H2, "slow_drip", "o.jpg", seconds=0.5, chunks=4), "success"),
        (f"http://{ROBOTS_HOST}{ROBOTS_DISALLOW[ROBOTS_HOST]}p.jpg", "skipped_robots"),
        ("http://img.optout.example/q.jpg", "skipped_opt_out"),
        ("http://10.11.12.13/r.jpg", "skipped_ssrf"),
        ("", "skipped_invalid_url"),
    ]
    src = pd.DataFrame({"URL": [u for u, _ in cases], "alt": [f"caption {i}" for i in range(len(cases))],
                        "row": range(len(cases)), "status": "carried"})  # a carried column named like ours
    src.to_csv(tmp_path / "urls.csv.gz", index=False)
    (tmp_path / "opt_out.txt").write_text("# never fetch\noptout.example\n")
    cfg = recipe(tmp_path, server, tmp_path / "urls.csv.gz", url_col="URL", caption_col="alt",
                 threads=threads, fetch={"max_bytes": 2**20, "opt_out": str(tmp_path / "opt_out.txt")})
    pipe = Pipeline.model_validate(cfg)
    report = download.run(pipe, client=client)
    assert report.ok and len(report.done) == 3  # 20 rows, 8 per shard

    meta = all_meta(download.output(pipe))
    meta["row"] = meta["row"].astype(int)  # csv columns come through as strings, never guessed
    meta = meta.sort_values("row")
    assert list(meta["row"]) == list(range(len(cases)))  # every input row exactly once
    assert list(meta["status"]) == [s for _, s in cases]
    assert meta.loc[meta.status != "success", "error_message"].notna().all()
    assert (meta["input_status"] == "carried").all()  # renamed, not clobbering ours
    ok = meta[meta.status == "success"]
    assert (ok[["width", "height"]].min(axis=1) == 256).all()  # keep_ratio 256 by default
    assert ok["sha256"].str.fullmatch("[0-9a-f]{64}").all()
    assert report.totals()["successes"] == len(ok)

    got = {s["__key__"]: samples.decode(s) for sid in ShardSet(download.output(pipe)).ids()
               for s in ShardSet(download.output(pipe)).samples(sid)}
    assert set(got) == set(ok["key"])
    first = got[ok["key"].iloc[0]]
    assert first["txt"] == "caption 0" and first["json"]["row"] == "0" and first["json"]["url"] == cases[0][0]
    assert_valid(pipe, client)


def test_retry_failed_refetches_only_failures(tmp_path, server, client):
    good = [fault_url(H1, "wrong_type", f"ok{i}.jpg") for i in range(6)]
    flaky = [fault_url(H2, "500", f"flaky{i}.jpg", after=1) for i in range(3)]  # fail once, then serve
    gone = [fault_url(H2, "404", "gone.jpg")]
    robots = [f"http://{ROBOTS_HOST}{ROBOTS_DISALLOW[ROBOTS_HOST]}x.jpg"]
    urls = good[:3] + flaky + gone + robots + good[3:]
    pd.DataFrame({"url": urls, "caption": "c"}).to_parquet(tmp_path / "urls.parquet")
    pipe = Pipeline.model_validate(recipe(tmp_path, server, tmp_path / "urls.parquet", fetch={"retries": 0}))
    download.run(pipe, client=client)
    first = all_meta(download.output(pipe)).set_index("url")
    assert (first.loc[flaky, "status"] == "failed_to_download").all()

    before = server.stats()["by_url"]  # no reset: the fault counters must remember the first failure
    report = download.run(pipe, client=client, retry_failed=True)  # the CLI's --retry-failed
    assert report.ok and list(report.done) == ["00000"] and report.skipped == ["00001"]  # 00001 had no failures
    assert report.totals()["successes"] == 6
    hits = server.stats()["by_url"]
    fetched = {u for u, n in hits.items() if n > before.get(u, 0) and not u.endswith("/robots.txt")}
    assert fetched == set(flaky + gone)  # successes and skips were not asked for again

    after = all_meta(download.output(pipe)).set_index("url")
    assert len(after) == len(urls)
    assert (after.loc[flaky + good, "status"] == "success").all()
    assert after.loc[gone[0], "status"] == "failed_to_download"
    assert after.loc[robots[0], "status"] == "skipped_robots"
    assert list(after.loc[good, "sha256"]) == list(first.loc[good, "sha256"])
    assert_valid(pipe, client)


def test_killed_run_resumes_without_refetching(tmp_path, server, client):
    urls = [fault_url(H1, "slow_first_byte", f"k{i}.jpg", delay=1.0) for i in range(24)]  # 3 shards, ~1 s each
    pd.DataFrame({"url": urls, "caption": [f"c{i}" for i in range(24)]}).to_parquet(tmp_path / "urls.parquet")
    cfg = recipe(tmp_path, server, tmp_path / "urls.parquet", fetch={"first_byte_timeout": 5.0})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    pipe = Pipeline.model_validate(cfg)
    out = download.output(pipe)
    server.reset()
    proc = subprocess.Popen([sys.executable, "-m", "mmdata", "download", "--config", str(tmp_path / "r.yaml"),
                             "--workers", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not ShardSet(out).ids() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask workers, mid-run
        proc.wait()
    done_before = set(ShardSet(out).ids())
    assert 1 <= len(done_before) < 3, done_before

    server.reset()
    report = download.run(pipe, client=client)
    assert report.ok and set(report.skipped) == done_before
    assert set(report.done) == {"00000", "00001", "00002"} - done_before
    refetched = set(server.stats()["by_url"])
    for sid in done_before:
        shard_urls = set(fsio.read_parquet(f"{out}/_inputs/{sid}.parquet")["url"])
        assert not shard_urls & refetched  # finished shards were not downloaded again
    meta = all_meta(out)
    assert sorted(meta["url"]) == sorted(urls) and meta["key"].is_unique  # nothing lost, nothing doubled
    assert (meta["status"] == "success").all()
    assert_valid(pipe, client)


def test_demo_corpus_statuses_match_truth(downloaded, demo_corpus, client, tmp_path):
    meta = all_meta(download.output(downloaded))
    truth = pd.read_parquet(demo_corpus / "pairs" / "truth.parquet")
    m = meta.merge(truth, on="sample_id", suffixes=("", "_truth"), validate="one_to_one")
    assert len(m) == len(meta) == len(truth)  # every sample exactly once
    assert (m.loc[m.robots_disallowed, "status"] == "skipped_robots").all()
    fetchable = m.expect_ok & ~m.robots_disallowed
    assert (m.loc[fetchable, "status"] == "success").all()
    assert (m.loc[~m.expect_ok, "status"] != "success").all()
    assert (m.loc[m.fault == "noai", "status"] == "skipped_x_robots_tag").all()
    ok = m[m.status == "success"]
    # original sizes are the upright ones, EXIF-rotated files included
    assert (ok["original_width"] == ok["width_truth"]).all() and (ok["original_height"] == ok["height_truth"]).all()
    assert set(meta.columns) >= {"source", "sample_id", "http_status"}
    check_pipe = Pipeline(workdir=str(tmp_path), engine={"progress": False}, check={"input": download.output(downloaded)})
    assert_valid(check_pipe, client)


def test_inputs_every_format(tmp_path, s3):
    rows = pd.DataFrame({"link": [f"http://h/{i}.jpg" for i in range(5)], "text": list("abcde"), "n": range(5)})
    folder = tmp_path / "in"
    folder.mkdir()
    rows.iloc[:1].to_parquet(folder / "0.parquet")
    rows.iloc[1:2].to_csv(folder / "1.csv.gz", index=False)
    rows.iloc[2:3].to_csv(folder / "2.tsv", sep="\t", index=False)
    rows.iloc[3:4].to_json(folder / "3.jsonl", orient="records", lines=True)
    rows.iloc[4:5].to_json(folder / "4.json", orient="records")
    (folder / "_ignored.csv").write_text("link,text\nx,y\n")
    got = pd.concat([t.to_pandas() for t in inputs.rows(str(folder), url_col="link", caption_col="text", columns=["n"])],
                    ignore_index=True)
    assert list(got["url"]) == list(rows["link"]) and list(got["caption"]) == list(rows["text"])
    assert [int(v) for v in got["n"]] == list(range(5))
    assert got[inputs.ROW_ERROR].isna().all()
    (tmp_path / "urls.txt").write_text("http://h/1.jpg\n\nhttp://h/2.jpg\n")
    txt = next(inputs.rows(str(tmp_path / "urls.txt"))).to_pandas()
    assert list(txt["url"]) == ["http://h/1.jpg", "http://h/2.jpg"] and txt["caption"].isna().all()
    cut = [b.num_rows for b in inputs.batches(str(folder), size=2, url_col="link", caption_col="text")]
    assert cut == [2, 2, 1]
    fsio.write_parquet("s3://mmdata-test/urls/part.parquet", rows)
    remote = next(inputs.rows("s3://mmdata-test/urls/", url_col="link", caption_col="text"))
    assert remote.column("url").to_pylist() == list(rows["link"])
    with pytest.raises(inputs.InputError, match="no url column"):
        next(inputs.rows(str(folder / "0.parquet")))


def test_partition_happens_once(tmp_path, server):
    pd.DataFrame({"url": [f"http://h/{i}.jpg" for i in range(20)], "caption": "c"}).to_parquet(tmp_path / "u.parquet")
    pipe = Pipeline.model_validate(recipe(tmp_path, server, tmp_path / "u.parquet"))
    out = download.output(pipe)
    ids = download.partition(pipe.download, out)
    first = fsio.read_bytes(f"{out}/_inputs/00001.parquet")
    assert ids == ["00000", "00001", "00002"]
    assert download.partition(pipe.download, out) == ids and fsio.read_bytes(f"{out}/_inputs/00001.parquet") == first
    changed = pipe.download.model_copy(update={"samples_per_shard": 5})
    with pytest.raises(Exception, match="samples_per_shard"):
        download.partition(changed, out)
    assert json.loads(Path(out, "_inputs", "_manifest.json").read_text())["rows"] == 20
