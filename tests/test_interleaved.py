"""The `interleaved` stage end to end: generated pages with known truth, real WARCs and HTML, a
broken WARC, resume, the check stage on its output, MinHash against datasketch."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from mmdata import fsio, samples
from mmdata.config import Pipeline, parse
from mmdata.stages import check, interleaved
from mmdata.warc import read_warc


@pytest.fixture(scope="module")
def demo_docs(demo_corpus, demo_server):
    """The session's demo corpus (its docs/ part) and the server over it."""
    return demo_corpus, demo_server


def _pipe(workdir, srv, section: dict, **extra) -> Pipeline:
    fetch = {"connect_to": {"*": f"127.0.0.1:{srv.port}"}, "allow": ["127.0.0.1"]}
    return parse(Pipeline, {"workdir": str(workdir), "engine": {"progress": False},
                            "interleaved": {"fetch": fetch, **section}, **extra}, "test")


def _outputs(out):
    meta = pd.concat([fsio.read_parquet(f) for f in fsio.expand(f"{out}/0*.parquet")], ignore_index=True)
    docs = [samples.decode(s) for f in fsio.expand(f"{out}/0*.tar") for s in samples.read_shard(f)]
    return meta, docs


def test_demo_pages_truth_recall_order_and_decoys(demo_docs, client, tmp_path):
    root, srv = demo_docs
    # the generated articles reuse sentences from a small pool: relax word repetition as demo.yaml does
    pipe = _pipe(tmp_path, srv, {"input": str(root / "docs" / "pages.warc.gz")},
                 check={"input": str(tmp_path / "interleaved")})
    report = interleaved.run(pipe, client=client)
    assert report.ok
    truth = {t["url"]: t for t in map(json.loads, (root / "docs" / "truth.jsonl").read_text().splitlines())}
    meta, docs_out = _outputs(tmp_path / "interleaved")
    # every WARC record accounted for: warcinfo + one response per page
    assert len(meta) == len(truth) + 1 and meta["key"].is_unique
    assert report.funnel["records"] == len(meta)
    assert report.funnel["kept"] + sum(n for _, n in report.funnel["dropped"]) == len(meta)
    outcome = dict(zip(meta["url"], meta["drop_reason"].where(meta["status"] != "success", "kept")))
    for url, t in truth.items():
        if t["lang"] != "en":
            assert outcome[url] == "lang_not_en"
        elif t["quality"] == "spam":
            assert outcome[url] not in ("kept", None)
    # a syndicated copy and its original: exactly one of the pair is kept
    for url, t in truth.items():
        if t["near_dup_of"]:
            assert (outcome[url] == "kept") != (outcome[t["near_dup_of"]] == "kept")
    expected = found = 0
    for s in docs_out:
        rec = s["json"]
        t = truth[rec["url"]]
        slots = [x for x in rec["slots"] if x["type"] == "image"]
        got = [x["url"] for x in slots]
        assert not set(got) & set(t["decoys"]), "a logo, icon, pixel, ad or thumbnail got through"
        hits = [u for u in got if u in t["images"]]
        assert hits == [u for u in t["images"] if u in hits], "images out of order"
        expected += len(t["images"])
        found += len(hits)
        for x in slots:  # every image slot has its member, decoded from what the server sent
            assert f"{x['index']}.{x['ext']}" in s and x["original_width"] >= 150
        paras = [x["text"] for x in rec["slots"] if x["type"] == "text"]
        assert all(any(p in x for x in paras) for p in t["paragraphs"])
    assert len(docs_out) >= 15 and found / expected >= 0.95
    # the check stage validates the shard set: schemas, tar and parquet agree
    rep = check.run(pipe, client=client)
    assert rep.ok and rep.totals()["count"] == len(meta) and rep.totals().get("invalid", 0) == 0
    # resume: nothing is redone
    again = interleaved.run(pipe, client=client)
    assert not again.done and set(again.skipped) == report.done.keys() | set(report.skipped)


def test_real_warcs_and_html(shared_data, demo_docs, client, tmp_path):
    """Real pages: every record accounted for; article text and in-article images in order.

    Their images are https:// URLs on the real web; the demo server is their plain-HTTP mirror
    (connect_to 'http://...'), answering with stand-in images, so documents come out whole.
    """
    _, srv = demo_docs
    inputs = [str(shared_data / "warc" / "*.warc.gz"), str(shared_data / "html" / "*.html")]
    mirror = {"connect_to": {"*": f"http://127.0.0.1:{srv.port}"}, "allow": ["127.0.0.1"], "retries": 0, "connect_timeout": 1}
    pipe = _pipe(tmp_path, srv, {"input": inputs, "files_per_shard": 10, "fetch": mirror})
    report = interleaved.run(pipe, client=client)
    assert report.ok
    meta, docs_out = _outputs(tmp_path / "interleaved")
    n_warc = sum(1 for f in (shared_data / "warc").glob("*.warc.gz") for _ in read_warc(str(f)))
    assert len(meta) == n_warc + 17  # every WARC record and every HTML file has its row
    assert meta["status"].notna().all() and meta["key"].is_unique
    assert (meta["status"].str.startswith("skipped_warc_")).sum() > 0
    measured = pd.concat([fsio.read_parquet(f) for f in fsio.expand(f"{tmp_path}/interleaved/_measure/0*.parquet")])
    by_url = {r["url"]: r for r in measured.to_dict("records")}
    nature = by_url["https://www.nature.com/articles/d41586-019-02790-3"]
    assert pd.isna(nature["drop_reason"]) and nature["lang"] == "en"
    slots = json.loads(nature["slots"])
    assert [x["url"] for x in slots if x["type"] == "image"] == [
        "https://media.nature.com/lw800/magazine-assets/d41586-019-02790-3/d41586-019-02790-3_17178384.jpg"]
    order = [x.get("text", "IMAGE")[:30] for x in slots]
    # the lead image, then the article body in order
    assert order.index("IMAGE") < order.index("The world’s largest single-dis") < order.index("The Five-hundred-meter Apertur")
    assert not any("track" in x.get("url", "") for x in slots)  # the tracking pixel (width=1)
    phys = json.loads(by_url["https://phys.org/news/2019-10-flint-flake-tool-partially-birch.html"]["slots"])
    assert [x["url"] for x in phys if x["type"] == "image"] == ["https://scx1.b-cdn.net/csz/news/800/2016/neanderthal.png"]
    assert phys[0]["type"] == "image" and "Zandmotor beach" in " ".join(x.get("text", "") for x in phys)
    mission = json.loads(by_url["https://creativecommons.org/mission/"]["slots"])
    imgs = [x["url"] for x in mission if x["type"] == "image"]
    assert imgs[:2] == ["https://creativecommons.org/wp-content/uploads/2020/06/cc.xlarge-300x300.png",
                        "https://creativecommons.org/wp-content/uploads/2023/09/wispies_by_fictargraphics_d92tl3a-fullview.jpg"]
    # the final documents: text and the fetched images, in the extracted order
    docs = {x["json"]["url"]: x for x in docs_out}
    nature_doc = docs["https://www.nature.com/articles/d41586-019-02790-3"]
    images = [x for x in nature_doc["json"]["slots"] if x["type"] == "image"]
    assert [x["url"] for x in images] == [x["url"] for x in slots if x["type"] == "image"]
    assert f"0.{images[0]['ext']}" in nature_doc
    final_order = [x.get("text", "IMAGE")[:30] for x in nature_doc["json"]["slots"]]
    assert final_order.index("IMAGE") < final_order.index("The world’s largest single-dis")
    mission_doc = docs["https://creativecommons.org/mission/"]
    assert [x["url"] for x in mission_doc["json"]["slots"] if x["type"] == "image"][:2] == imgs[:2]
    german = meta[meta["url"].str.contains("correctiv.org", na=False)]
    assert german["drop_reason"].tolist() == ["lang_not_en"]
    funnel = fsio.read_json(str(tmp_path / "interleaved" / "_funnel.json"))
    assert funnel["records"] == len(meta) and funnel["kept"] == len(docs_out)


def test_malformed_warc_is_counted_not_fatal(shared_data, tmp_path):
    raw = gzip.decompress((shared_data / "warc" / "sample-0001.warc.gz").read_bytes())
    records = [b"WARC/1.0\r\n" + r for r in raw.split(b"WARC/1.0\r\n")[1:]]
    members = [gzip.compress(r) for r in records]
    members[5] = members[5][:40] + b"\x00" * 30 + members[5][70:]  # a corrupt gzip member
    bad = tmp_path / "broken.warc.gz"
    bad.write_bytes(b"".join(members) + b"garbage at the end")
    recs = list(read_warc(str(bad)))
    # one row for the broken member (at its offset), one for the garbage, every other record read
    failed = [r for r in recs if r.status.startswith("failed")]
    offset = sum(len(m) for m in members[:5])
    assert [(r.status, r.source.rsplit("@", 1)[1]) for r in failed] == [
        ("failed_to_read", str(offset)), ("failed_to_read", str(offset + sum(len(m) for m in members[5:])))]
    assert "does not decompress" in failed[0].error_message and "18 bytes" in failed[1].error_message
    assert len(recs) == len(records) + 1
    intact = list(read_warc(str(shared_data / "warc" / "sample-0001.warc.gz")))
    assert [r.url for r in recs if r.status == "success"] == [r.url for i, r in enumerate(intact)
                                                              if r.status == "success" and i != 5]


def test_url_list_pages_fetched_politely(demo_docs, client, tmp_path):
    """A URL list: pages come through the download stage's client (robots.txt, statuses), then
    extraction as for WARC records; every URL has its row."""
    from mmdata.demo.urls import ROBOTS_DISALLOW, fault_url

    root, srv = demo_docs
    truth = [json.loads(line) for line in (root / "docs" / "truth.jsonl").read_text().splitlines()]
    good = [t for t in truth if t["lang"] == "en" and t["quality"] == "ok" and not t.get("near_dup_of")][:8]
    robots_host, prefix = next(iter(ROBOTS_DISALLOW.items()))
    blocked = f"http://{robots_host}{prefix}page.html"
    missing = fault_url("news.demo.mmdata.test", "404", "gone.html")
    (tmp_path / "pages.txt").write_text("\n".join([t["url"] for t in good] + [blocked, missing]) + "\n")
    srv.reset()
    pipe = _pipe(tmp_path, srv, {"input": str(tmp_path / "pages.txt")})
    assert interleaved.run(pipe, client=client).ok
    meta, docs_out = _outputs(tmp_path / "interleaved")
    by_url = meta.set_index("url")
    assert len(meta) == len(good) + 2 and set(by_url.index) == {t["url"] for t in good} | {blocked, missing}
    assert by_url.loc[blocked, "status"] == "skipped_robots"
    assert by_url.loc[missing, "status"] == "failed_to_download"
    docs = {s["json"]["url"]: s["json"] for s in docs_out}
    assert set(docs) == {t["url"] for t in good}
    for t in good:
        got = [x["url"] for x in docs[t["url"]]["slots"] if x["type"] == "image"]
        assert [u for u in got if u in t["images"]] == [u for u in t["images"] if u in got] and got
    seen = srv.stats()["by_url"]
    assert all(seen.get(t["url"], 0) == 1 for t in good) and seen.get(blocked, 0) == 0  # robots.txt honoured


def test_image_used_twice_is_fetched_once_and_stored_once(demo_docs, client, tmp_path):
    """An image used twice in an article stays in both places; it is fetched once and stored as one
    member that both slots reference."""
    root, srv = demo_docs
    truth = [json.loads(line) for line in (root / "docs" / "truth.jsonl").read_text().splitlines()]
    t = next(t for t in truth if t["lang"] == "en" and t["quality"] == "ok" and len(t["images"]) >= 2
             and len(t["paragraphs"]) >= 3 and not t["near_dup_of"])
    a, b = t["images"][:2]
    p = t["paragraphs"]
    (tmp_path / "twice.html").write_text(
        f'<html><head><title>{t["title"]}</title><link rel="canonical" href="http://news.demo.mmdata.test/x/twice.html">'
        f'</head><body><article><h1>{t["title"]}</h1><p>{p[0]}</p><img src="{a}" alt="first"><p>{p[1]}</p>'
        f'<img src="{b}" alt="second"><p>{p[2]}</p><img src="{a}" alt="first, again"></article></body></html>')
    srv.reset()
    pipe = _pipe(tmp_path, srv, {"input": str(tmp_path / "twice.html")})
    assert interleaved.run(pipe, client=client).ok
    _, written = _outputs(tmp_path / "interleaved")
    (doc,) = written
    images = [x for x in doc["json"]["slots"] if x["type"] == "image"]
    assert [x["url"] for x in images] == [a, b, a] and [x["index"] for x in images] == [0, 1, 0]
    assert [x["alt"] for x in images] == ["first", "second", "first, again"]
    assert sorted(k for k in doc if k[0].isdigit()) == sorted([f"0.{images[0]['ext']}", f"1.{images[1]['ext']}"])
    assert srv.stats()["by_url"][a] == 1
