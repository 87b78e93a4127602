"""The Dask engine: shard-by-shard tasks, set-up once per worker, isolated and retried failures,
resume from stats files (also after SIGKILL), and the same output on an external scheduler."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from copystage import Copy, make_pairs

from mmdata import fsio, samples, schema
from mmdata.config import EngineConfig, Pipeline, parse
from mmdata.engine import map_shards
from mmdata.stages import check
from mmdata.store import ShardSet

HERE = Path(__file__).resolve().parent
CFG = EngineConfig(n_workers=2, retries=2, progress=False)


def all_keys(folder: Path) -> list[str]:
    return sorted(s["__key__"] for s in samples.read_shards(str(folder / "*.tar")))


def test_stage_runs_per_shard_and_resumes(tmp_path, client):
    make_pairs(str(tmp_path / "in"), n_shards=5)
    out = tmp_path / "copy"
    report = map_shards(Copy(), ShardSet(str(tmp_path / "in")).shards(), str(out), CFG, client=client)
    assert report.ok and sorted(report.done) == [f"{i:05d}" for i in range(5)]
    assert report.totals()["count"] == 25 and report.totals()["successes"] == 20
    assert all_keys(out) == all_keys(tmp_path / "in")
    for sid in report.done:
        stats = json.loads((out / f"{sid}_stats.json").read_text())
        assert schema.errors("shard_stats", stats) == []
        assert stats["shard"] == sid and stats["stage"] == "copy"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = map_shards(Copy(), ShardSet(str(tmp_path / "in")).shards(), str(out), CFG, client=client)
    assert again.skipped == sorted(report.done) and not again.done
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # nothing rewritten

    redo = map_shards(Copy(), ShardSet(str(tmp_path / "in")).shards(), str(out), CFG, client=client, overwrite=True)
    assert sorted(redo.done) == sorted(report.done) and not redo.skipped
    assert all_keys(out) == all_keys(tmp_path / "in")


def test_failures_are_isolated_retried_and_named(tmp_path, client):
    make_pairs(str(tmp_path / "in"), n_shards=4)
    (tmp_path / "marks").mkdir()
    out = tmp_path / "copy"
    stage = Copy(fail_on=("00002",), flaky_dir=str(tmp_path / "marks"))
    report = map_shards(stage, ShardSet(str(tmp_path / "in")).shards(), str(out), CFG, client=client)
    assert not report.ok
    assert list(report.failed) == ["00002"]
    assert report.failed["00002"] == "ValueError: bad data in shard 00002"
    assert "shard 00002 FAILED: ValueError: bad data in shard 00002" in report.summary()
    # every other shard finished, each after one transient failure that the retry absorbed
    assert sorted(report.done) == ["00000", "00001", "00003"]
    assert (tmp_path / "marks/00000.attempts").read_text() == "xx"
    assert (tmp_path / "marks/00002.failures").read_text() == "x" * 2  # attempts 2 and 3 (retries=2)
    assert not (out / "00002_stats.json").exists()


def test_setup_runs_once_per_worker(tmp_path, client):
    make_pairs(str(tmp_path / "in"), n_shards=8, per=2)
    log = tmp_path / "setup.log"
    report = map_shards(Copy(setup_log=str(log)), ShardSet(str(tmp_path / "in")).shards(), str(tmp_path / "o"), CFG, client=client)
    assert report.ok and len(report.done) == 8
    pids = log.read_text().split()
    assert len(pids) == len(set(pids)) <= 2  # one set-up per worker process, not per shard
    # what set-up left behind is frozen out of the cyclic collector's walks
    import gc

    assert all(n > 10_000 for n in client.run(gc.get_freeze_count).values())


def test_local_workers_skip_the_task_profiler_unless_asked(client):
    import dask

    from mmdata.config import EngineConfig
    from mmdata.engine import cluster

    def profiling():
        return dask.config.get("distributed.worker.profile.enabled")

    assert set(client.run(profiling).values()) == {False}
    with cluster(EngineConfig(n_workers=1, progress=False, task_profiler=True)) as c:
        assert set(c.run(profiling).values()) == {True}


def test_workers_fork_only_from_a_process_without_torch(tmp_path, monkeypatch):
    import types

    from mmdata import engine
    from mmdata.engine import cluster, start_method

    linux = sys.platform.startswith("linux")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert start_method(EngineConfig()) == ("fork" if linux else "spawn")
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # may hold CUDA or OpenMP state
    assert start_method(EngineConfig()) == "spawn"
    assert start_method(EngineConfig(start_method="forkserver")) == "forkserver"
    if not linux:
        return
    # a forked worker starts from this process's memory; a spawned one imports anew
    make_pairs(str(tmp_path / "in"), n_shards=2, per=3, fail_every=0)
    monkeypatch.setattr(engine, "_probe", f"set-in-{os.getpid()}", raising=False)
    for method, seen in (("fork", f"set-in-{os.getpid()}"), ("spawn", None)):
        with cluster(EngineConfig(n_workers=1, progress=False, start_method=method)) as c:
            probe = c.run(lambda: getattr(sys.modules.get("mmdata.engine"), "_probe", None))
            assert list(probe.values()) == [seen], method
            report = map_shards(Copy(), ShardSet(str(tmp_path / "in")).shards(), str(tmp_path / method), client=c)
            assert report.ok and len(report.done) == 2
            # one BLAS thread per worker either way, not the parent's machine-wide pool (OpenMP's
            # thread count is per thread and set at load: the reason `auto` spawns once torch is in)
            pools = c.run(lambda: {p["num_threads"] for p in __import__("threadpoolctl").threadpool_info()
                                   if p["user_api"] == "blas"})
            assert list(pools.values()) == [{1}], method
            if method == "fork":  # a worker restarted mid-run is spawned, away from this process's threads
                c.restart_workers(list(c.scheduler_info()["workers"]))
                probe = c.run(lambda: getattr(sys.modules.get("mmdata.engine"), "_probe", None))
                assert list(probe.values()) == [None]
    assert all_keys(tmp_path / "fork") == all_keys(tmp_path / "spawn") == all_keys(tmp_path / "in")


def test_sigkill_midway_then_resume_loses_and_duplicates_nothing(tmp_path):
    make_pairs(str(tmp_path / "in"), n_shards=12, per=4, fail_every=0)
    out = tmp_path / "copy"
    cmd = [sys.executable, str(HERE / "engine_script.py"), str(tmp_path / "in"), str(out), "0.1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*_stats.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and both workers
    proc.wait()
    done_before = {p.name[:5]: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    assert 3 <= len(done_before) < 12, "the kill should land midway"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done_before)} already done" in rerun.stdout
    for sid, mtime in done_before.items():  # finished shards were not redone
        assert (out / f"{sid}_stats.json").stat().st_mtime_ns == mtime
    assert all_keys(out) == all_keys(tmp_path / "in")  # nothing lost, nothing twice
    assert len(list(out.glob("*_stats.json"))) == 12
    assert not list(out.glob(".*.tmp"))  # the killed run's temp files were swept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def external_scheduler(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    dask = str(Path(sys.executable).with_name("dask"))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    for _ in range(2):
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    from distributed import Client

    with Client(address, timeout="60s") as c:
        c.wait_for_workers(2, timeout=60)
    yield address
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=30)


def test_external_scheduler_gives_the_same_output(tmp_path, external_scheduler):
    make_pairs(str(tmp_path / "download"), n_shards=4)
    recipe = tmp_path / "p.yaml"
    recipe.write_text(f"name: t\nworkdir: {tmp_path}\ncheck: {{}}\n")
    local = subprocess.run([sys.executable, "-m", "mmdata", "check", "-c", str(recipe), "--workers", "2"],
                           capture_output=True, text=True, timeout=300, check=False)
    assert local.returncode == 0, local.stderr
    first = {p.name: pd.read_parquet(p) for p in (tmp_path / "check").glob("*.parquet")}
    remote = subprocess.run([sys.executable, "-m", "mmdata", "check", "-c", str(recipe), "--overwrite",
                             "--scheduler", external_scheduler], capture_output=True, text=True, timeout=300,
                            check=False)
    assert remote.returncode == 0, remote.stderr
    assert "4 shards done" in remote.stdout
    second = {p.name: pd.read_parquet(p) for p in (tmp_path / "check").glob("*.parquet")}
    assert first.keys() == second.keys() and len(first) == 4
    for name, df in first.items():
        pd.testing.assert_frame_equal(df, second[name])
    assert all(df["valid"].all() for df in second.values())


def test_check_catches_tar_and_metadata_disagreeing(tmp_path, client):
    make_pairs(str(tmp_path / "download"), n_shards=2)
    meta = fsio.read_parquet(str(tmp_path / "download/00001.parquet"))
    meta.loc[0, "status"] = "failed_to_download"  # the tar still holds this sample
    fsio.write_parquet(str(tmp_path / "download/00001.parquet"), meta)
    pipe = parse(Pipeline, {"workdir": str(tmp_path), "check": {}, "engine": {"progress": False}}, "test")
    report = check.run(pipe, client=client)
    assert report.totals()["invalid"] == 1
    bad = pd.read_parquet(tmp_path / "check/00001.parquet").set_index("key")
    assert bad.loc["000010000", "error"] == "sample in tar but metadata status is not success"
    assert pd.read_parquet(tmp_path / "check/00000.parquet")["valid"].all()
    assert list(report.failed) == ["00001"] and "1 invalid records, first 000010000" in report.failed["00001"]
    # the command exits 1 naming the shard, also when the shards were checked by an earlier run
    from typer.testing import CliRunner

    from mmdata.cli import app

    recipe = tmp_path / "p.yaml"
    recipe.write_text(f"name: t\nworkdir: {tmp_path}\ncheck: {{}}\nengine: {{progress: false}}\n")
    again = CliRunner().invoke(app, ["check", "-c", str(recipe), "--scheduler", client.scheduler.address])
    assert again.exit_code == 1 and "shard 00001 FAILED: 1 invalid records" in again.output
    assert "0 shards done, 2 already done" in again.output


def test_resume_refuses_shards_written_with_other_settings(tmp_path, client):
    from mmdata.config import ConfigError

    make_pairs(str(tmp_path / "in"), n_shards=3)
    shards, out = ShardSet(str(tmp_path / "in")).shards(), str(tmp_path / "copy")
    assert map_shards(Copy(delay=0.0), shards[:2], out, CFG, client=client).ok
    # the same settings resume (and finish the third shard); other settings must not mix in silently
    assert sorted(map_shards(Copy(delay=0.0), shards, out, CFG, client=client).done) == ["00002"]
    with pytest.raises(ConfigError, match=r"copy: shard 00000 under .* was written with other settings "
                                          r"\(delay 0.0 -> 0.001\) \(and 2 more shards\); rerun with --overwrite"):
        map_shards(Copy(delay=0.001), shards, out, CFG, client=client)
    redo = map_shards(Copy(delay=0.001), shards, out, CFG, client=client, overwrite=True)
    assert len(redo.done) == 3
    assert not map_shards(Copy(delay=0.001), shards, out, CFG, client=client).done  # the new settings are now the record


def test_fingerprint_ignores_pace_but_not_results():
    from mmdata.config import DownloadConfig
    from mmdata.engine import digest

    base = DownloadConfig(input="u.parquet", fetch={"connect_to": {"*": "127.0.0.1:8000"}})
    # a new server port, more concurrency or threads: same outputs, so a resumed run may change them
    retuned = DownloadConfig(input="u.parquet", threads=8, fetch={"connect_to": {"*": "127.0.0.1:9999"}, "concurrency": 256})
    assert digest(base) == digest(retuned)
    for changed in ({"image": {"image_size": 384}}, {"fetch": {"max_bytes": 1000}}, {"caption_col": "alt"}):
        assert digest(base) != digest(base.model_copy(update={k: type(getattr(base, k)).model_validate(v)
                                                               if isinstance(v, dict) else v for k, v in changed.items()}))
