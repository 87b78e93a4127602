"""Nothing silently stale or mixed: real kills (SIGKILL of a CLI run at a chosen moment, through the
engine's MMDATA_KILL_AT hook), re-runs with and without --overwrite, upstream re-runs and a moved
workdir each end in a redo or a one-line refusal, and the training shards then equal those of an
uninterrupted run. And one run end to end through the public entry points, URL list to loader batch.

A small recipe: 120 demo pairs in 4 download shards, filter, dedup, clipscore (an untrained tiny
CLIP: deterministic scores are all a decision needs), training shards of 16.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmdata import config
from mmdata import pipeline as pl
from mmdata.decisions import kept
from mmdata.engine import StageFailed
from mmdata.stages import training_shards
from mmdata.store import ShardSet, table

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["download", "filter", "dedup", "clipscore", "shards"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, demo_corpus, demo_server) -> dict:
    from mmdata.demo.tiny_clip import untrained

    base = tmp_path_factory.mktemp("resume")
    urls = base / "urls.parquet"
    pd.read_parquet(demo_corpus / "pairs" / "urls.parquet").head(120).to_parquet(urls)
    return {"urls": urls, "clip": untrained(demo_corpus, base / "clip"), "port": demo_server.port}


def recipe(workdir: Path, inputs: dict, **sections) -> config.Pipeline:
    """The recipe, also written to `{workdir}.yaml` for the CLI."""
    data = {
        "name": "resume", "workdir": str(workdir), "engine": {"n_workers": 2, "progress": False},
        "download": {"input": str(inputs["urls"]), "samples_per_shard": 30,
                     "fetch": {"connect_to": {"*.demo.mmdata.test": f"127.0.0.1:{inputs['port']}"},
                               "allow": ["127.0.0.1"]}},
        "filter": {}, "dedup": {},
        "clipscore": {"model": str(inputs["clip"]), "batch_size": 64, "top_fraction": 0.5, "pool_after": ["filter", "dedup"]},
        "shards": {"shard_samples": 16, "energon": False},
    }
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    Path(f"{workdir}.yaml").write_text(yaml.safe_dump(data))
    return config.parse(config.Pipeline, data, f"{workdir}.yaml")


def run(pipe: config.Pipeline, stages: list[str], client, **kw) -> list:
    return [pl.run_one(pipe, name, client=client, **kw) for name in stages]


def killed(workdir: Path, stage: str, at: str, *args: str) -> None:
    """`mmdata <stage>` on `{workdir}.yaml`, SIGKILLed (with its cluster) at the engine's kill point `at`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MMDATA_KILL_AT": at}
    p = subprocess.run([sys.executable, "-m", "mmdata", stage, "-c", f"{workdir}.yaml", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False, start_new_session=True)
    assert p.returncode == -9, f"not killed at {at}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"


def training(workdir: Path) -> list[tuple[str, str]]:
    """(name, sha256) of every captions training shard, from its manifest."""
    m = json.loads((workdir / "shards" / "captions" / "manifest.json").read_text())
    return [(s["name"], s["sha256"]) for s in m["shards"]]


def copy(src: Path, dest: Path, *stages: str) -> None:
    for s in stages:
        shutil.copytree(src / s, dest / s)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs, client) -> tuple[Path, list]:
    """The uninterrupted run every case must end equal to."""
    work = tmp_path_factory.mktemp("ref") / "w"
    run(recipe(work, inputs), STAGES, client)
    return work, training(work)


def test_url_list_to_loader_batch_is_exactly_the_kept_set(reference, inputs):
    """End to end through the public entry points: what the trainer's loader yields is exactly what
    download, filter, dedup and clipscore kept, each once."""
    from mmdata.mix import loader

    work, shards = reference
    assert len(shards) >= 2
    base = ShardSet(str(work / "download"))
    sides = {s: str(work / s) for s in ("filter", "dedup", "clipscore")}
    df = pd.concat([table(base, i, sides) for i in base.ids()], ignore_index=True)
    assert len(df) == 120 and df["key"].is_unique  # every URL of the list, once
    expect = set(df.loc[kept(df), "key"])
    assert 0 < len(expect) < (df["status"] == "success").sum()  # each stage dropped some
    mixture = {"sources": {"captions": {"shards": str(work / "shards" / "captions" / "manifest.json"), "weight": 1}},
               "global_batch": 1, "lanes": 1, "exhaustion": "stop", "decode": {"image_size": 32}}
    got = [k for batch in loader(config.Mixture.model_validate(mixture), rank=0, world_size=1, num_workers=0)
           for k in batch["keys"]]
    assert len(got) == len(set(got)) and set(got) == expect


def test_kill_between_scoring_and_decision(reference, inputs, client, tmp_path):
    ref, expect = reference
    work = tmp_path / "w"
    copy(ref, work, "download", "filter", "dedup")
    pipe = recipe(work, inputs)
    killed(work, "clipscore", "clipscore:reduce")  # every shard scored, no decision yet
    assert len(list((work / "clipscore" / "_scores").glob("*_stats.json"))) == 4
    assert json.loads((work / "clipscore" / "_step.json").read_text())["state"] == "running"
    refused = training_shards.run(pipe, client=client)
    assert not refused.ok and "stage 'clipscore' is incomplete" in refused.failed["captions"]
    assert not (work / "shards" / "captions" / "manifest.json").exists()
    (score,) = run(pipe, ["clipscore"], client)
    assert len(score.scoring.skipped) == 4 and not score.scoring.done  # scores kept, decision made
    run(pipe, ["shards"], client)
    assert training(work) == expect


def test_killed_overwrite_stays_an_overwrite(reference, inputs, client, tmp_path):
    """filter --overwrite with a new threshold, killed after a shard, re-run without --overwrite:
    the old shards are redone, never mixed with the new ones."""
    ref, _ = reference
    work, clean = tmp_path / "w", tmp_path / "clean"
    copy(ref, work, "download", "filter")
    copy(ref, clean, "download")
    pipe = recipe(work, inputs, filter={"min_words": 5})
    killed(work, "filter", "filter:shard-done", "--overwrite", "--set", "filter.min_words=5")
    assert (work / "filter" / "_overwrite.json").exists()
    refused = training_shards.run(pipe, client=client)  # nothing downstream reads a half-overwritten stage
    assert not refused.ok and "interrupted --overwrite" in refused.failed["captions"]
    (again,) = run(pipe, ["filter"], client)
    assert again.skipped and again.done and len(again.done) + len(again.skipped) == 4
    assert all(why.startswith("settings min_words 3 -> 5") for why in again.redone.values())
    assert not (work / "filter" / "_overwrite.json").exists()
    run(pipe, ["shards"], client)
    run(recipe(clean, inputs, filter={"min_words": 5}), ["filter", "shards"], client)
    assert training(work) == training(clean)


def test_upstream_rerun_with_other_shards_is_redone_downstream(reference, inputs, client, tmp_path):
    """download --overwrite with another samples_per_shard: filter, dedup and clipscore redo what
    changed and drop what no longer exists; shards refuses until told to overwrite."""
    ref, _ = reference
    work, clean = tmp_path / "w", tmp_path / "clean"
    copy(ref, work, *STAGES)
    pipe = recipe(work, inputs, download={"samples_per_shard": 60})
    run(pipe, ["download"], client, overwrite=True)
    filt, dedup, clip = run(pipe, ["filter", "dedup", "clipscore"], client)
    assert sorted(filt.done) == ["00000", "00001"] and not filt.skipped
    assert all(why.startswith("inputs changed since: download/0000") for why in filt.redone.values())
    assert not list((work / "filter").glob("00002*")) and not list((work / "filter").glob("00003*"))
    assert sorted(dedup.done) == sorted(clip.done) == ["00000", "00001"]
    with pytest.raises(StageFailed, match="changed since the last run .* rerun with --overwrite"):
        run(pipe, ["shards"], client)
    run(pipe, ["shards"], client, overwrite=True)
    copy(work, clean, "download")
    run(recipe(clean, inputs, download={"samples_per_shard": 60}), STAGES[1:], client)
    assert training(work) == training(clean)


def test_killed_shards_run_leaves_no_temp_file_and_a_moved_workdir_resumes(reference, inputs, client, tmp_path):
    ref, expect = reference
    work, moved = tmp_path / "w", tmp_path / "elsewhere" / "w"
    copy(ref, work, "download", "filter", "dedup", "clipscore")
    recipe(work, inputs)
    killed(work, "shards", "shards:writing")  # a training tar half written, beside the published ones
    assert list((work / "shards" / "captions").glob(".*.tmp"))
    shutil.move(str(work), str(moved))
    (report,) = run(recipe(moved, inputs), ["shards"], client)
    assert report.done and not list((moved / "shards" / "captions").glob(".*.tmp"))
    assert training(moved) == expect


def test_a_copied_workdir_is_already_done(reference, inputs, client, tmp_path):
    """Lineage holds no absolute path: every stage of a copy finds its shards finished."""
    ref, expect = reference
    work = tmp_path / "copy"
    shutil.copytree(ref, work)
    reports = run(recipe(work, inputs), STAGES, client)
    assert [len(r.done) for r in reports] == [0] * len(STAGES), [r.summary() for r in reports]
    assert not reports[3].scoring.done and not any(r.redone for r in reports)
    assert training(work) == expect
