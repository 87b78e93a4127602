"""`check`: validate a shard set against the record schemas, shard by shard.

For each shard: every sample's json must match its kind's schema and carry its payload (a pair
its image and text, an interleaved document one image member per image slot, a text document its
text); every metadata row must match the shard_meta schema; and the tar and the parquet must agree
exactly: one sample per 'success' row, no sample for any other row, no key twice.
Writes `{id}.parquet` (key, valid, error) and stats; `successes` counts valid records.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from mmdata import fsio, samples, schema
from mmdata.config import Pipeline
from mmdata.engine import Report, Shard, Stage, map_shards, stats_url
from mmdata.store import ShardSet


def sample_errors(sample: dict) -> tuple[str | None, list[str]]:
    """(key from json, problems) for one tar sample."""
    if "json" not in sample:
        return None, ["no json member"]
    try:
        record = json.loads(sample["json"])
    except ValueError as e:
        return None, [f"json member does not parse: {e}"]
    kind = record.get("kind", "pair")
    if kind not in ("pair", "interleaved", "text"):
        return record.get("key"), [f"unknown kind {kind!r}"]
    problems = schema.errors(kind, record)
    if record.get("key") != sample["__key__"]:
        problems.append(f"json key {record.get('key')!r} differs from member key {sample['__key__']!r}")
    if kind == "pair" and samples.image_member(sample) is None:
        problems.append("pair without an image member")
    if kind == "text" and "txt" not in sample:
        problems.append("text document without a txt member")
    if kind == "interleaved":
        for slot in record.get("slots", []):
            if slot.get("type") == "image" and samples.image_member(sample, slot.get("index")) is None:
                problems.append(f"image slot {slot.get('index')} has no image member")
    return record.get("key"), problems


class Check(Stage):
    name = "check"

    def process(self, shard: Shard, out: str) -> dict:
        meta = fsio.read_parquet(shard.input.meta)
        problems: dict[str, list[str]] = {k: [] for k in meta["key"]}
        for row in meta.to_dict("records"):
            row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            problems[row["key"]] += schema.errors("shard_meta", row)
        if meta["key"].duplicated().any():
            for key in meta.loc[meta["key"].duplicated(), "key"]:
                problems[key].append("key appears twice in metadata")
        success = set(meta.loc[meta["status"] == "success", "key"])
        seen: set[str] = set()
        tar = shard.input.tar
        for sample in samples.read_shard(tar) if fsio.exists(tar) else ():
            key = sample["__key__"]
            _, errs = sample_errors(sample)
            if key in seen:
                errs.append("sample appears twice in tar")
            if key not in problems:
                problems[key] = ["sample in tar has no metadata row"]
            elif key not in success:
                errs.append("sample in tar but metadata status is not success")
            problems[key] += errs
            seen.add(key)
        for key in success - seen:
            problems[key].append("status success but no sample in tar")
        keys = sorted(problems)
        errors = ["; ".join(problems[k]) or None for k in keys]
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), pd.DataFrame({"key": keys, "valid": [e is None for e in errors], "error": errors}))
        n_bad = sum(e is not None for e in errors)
        return {"count": len(keys), "successes": len(keys) - n_bad, "status_dict": {"valid": len(keys) - n_bad, "invalid": n_bad}}


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> Report:
    """Check every shard; a shard with an invalid record counts as failed (the CLI exits 1 naming
    it and its first problem), whether it was checked now or by an earlier run."""
    cfg = pipeline.section("check")
    shards = ShardSet(cfg.input or pipeline.output("download")).require("check")
    out = pipeline.stage_dir("check")
    report = map_shards(Check(), shards, out, pipeline.engine, client=client, overwrite=overwrite, root=pipeline.workdir)
    for sid in [*report.done, *report.skipped]:
        stats = report.done.get(sid) or fsio.read_json(stats_url(out, sid))
        n_bad = stats["status_dict"].get("invalid", 0)
        if n_bad:
            rows = fsio.read_parquet(fsio.join(out, f"{sid}.parquet"))
            first = rows[~rows["valid"]].iloc[0]
            report.failed[sid] = f"{n_bad} invalid records, first {first['key']}: {first['error']}"
    return report
