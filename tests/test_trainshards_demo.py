"""The `shards` stage on the real upstream outputs: demo pairs downloaded from the demo server
(the shared `downloaded` fixture) and decided by the real `filter` stage."""

from __future__ import annotations

import json

import pandas as pd

from mmdata import manifest as mf
from mmdata import samples, schema
from mmdata.config import Pipeline
from mmdata.stages import dedup as dedup_stage
from mmdata.stages import filter as filter_stage
from mmdata.stages import training_shards as stage
from mmdata.store import ShardSet, kept, table


def test_demo_download_and_filter_to_training_shards(downloaded, client, tmp_path):
    pipe = Pipeline(workdir=str(tmp_path), seed=7, engine={"progress": False}, download=downloaded.download,
                    filter={"input": downloaded.download.output}, dedup={},
                    shards={"shard_samples": 64})
    assert filter_stage.run(pipe, client=client).ok
    assert dedup_stage.run(pipe, client=client).ok
    report = stage.run(pipe, client=client)
    assert report.ok, report.summary()
    assert report.streams["captions"]["sidecars"] == ["filter", "dedup"]
    # the funnel counts reason codes; which partner each duplicate points to is in the ledger
    funnel = report.streams["captions"]["dropped"]
    assert funnel.get("dedup:near_duplicate_of", 0) > 0 and not any(r[-1].isdigit() for r in funnel)
    assert "skipped" in report.streams["interleaved"] and "skipped" in report.streams["text"]

    # expected: what store.kept says over the download set joined with the filter's decisions
    source = ShardSet(downloaded.download.output)
    expected = set()
    for sid in source.ids():
        df = table(source, sid, {"filter": str(tmp_path / "filter"), "dedup": str(tmp_path / "dedup")})
        expected |= set(df.loc[kept(df), "key"])
    folder = str(tmp_path / "shards" / "captions")
    written = [s for url in mf.urls(folder) for s in samples.read_shard(url)]
    keys = [s["__key__"] for s in written]
    assert len(keys) == len(set(keys)) and set(keys) == expected and 0 < len(expected)
    assert mf.verify(folder) == []
    originals = {s["__key__"]: s for sid in source.ids() for s in source.samples(sid) if s["__key__"] in expected}
    for s in written:
        rec = json.loads(s["json"])
        assert schema.errors("pair", rec) == []
        assert "filter.lang" in rec["scores"] and rec["source"]["set"] == "download"
        image = next(ext for ext in ("jpg", "png", "webp") if ext in s)
        assert s[image] == originals[s["__key__"]][image]  # bytes as downloaded

    ledger = pd.read_parquet(tmp_path / "shards" / "_state" / "captions" / stage.LEDGER)
    n_records = sum(len(source.read_meta(i)) for i in source.ids())
    assert len(ledger) == n_records and ledger["drop_reason"].isna().sum() == len(expected)
    assert ledger["drop_reason"].str.startswith("filter:").any()
    assert ledger["drop_reason"].str.match(r"dedup:near_duplicate_of:\d+$").any()
