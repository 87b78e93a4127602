"""Politeness that holds for the whole run: two Dask workers, several shards, one host. The demo
server's own timeline is the judge: requests in flight at once, requests per second, and requests
that arrived while the host had asked everyone to wait (Retry-After)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mmdata.config import Pipeline
from mmdata.demo.server import DemoServer
from mmdata.demo.urls import IMAGE_HOSTS, fault_url
from mmdata.stages import download

H1, H2, H3 = IMAGE_HOSTS[0], IMAGE_HOSTS[1], IMAGE_HOSTS[2]


@pytest.fixture(scope="module")
def server():
    with DemoServer() as srv:
        yield srv


@pytest.fixture
def scheduler_client():
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1 (what `--scheduler`
    connects to), and a client of it."""
    from distributed import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(2)]
    try:
        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=60)
            yield c
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


def run(tmp: Path, name: str, server, client, urls: list[str], **fetch) -> pd.DataFrame:
    pd.DataFrame({"url": urls, "caption": "c"}).to_parquet(tmp / f"{name}.parquet")
    fetch = {"allow": ["127.0.0.1"], "connect_to": {"*": f"127.0.0.1:{server.port}"}, "robots_txt": False,
             "retries": 2, "backoff_base": 0.05, "first_byte_timeout": 60.0, "total_timeout": 120.0} | fetch
    pipe = Pipeline.model_validate({"name": name, "workdir": str(tmp / name), "engine": {"progress": False},
                                    "download": {"input": str(tmp / f"{name}.parquet"), "samples_per_shard": 6,
                                                 "fetch": fetch, "image": {"image_size": 64}}})
    report = download.run(pipe, client=client)
    assert report.ok, report.summary()
    out = Path(download.output(pipe))
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))], ignore_index=True)


def peak_concurrency(events: list) -> int:
    edges = sorted([(e[0], 1) for e in events] + [(e[1], -1) for e in events], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_per_host_cap_and_rate_hold_across_workers(tmp_path, server, client):
    # control: limits per task only, two shards at a time on one host go over per_host
    server.reset()
    urls = [fault_url(H3, "slow_first_byte", f"c{i}.jpg", delay=1.0) for i in range(24)]
    meta = run(tmp_path, "per_task", server, client, urls, per_host=3, cluster_wide=False)
    assert (meta["status"] == "success").all()
    assert server.stats()["max_inflight"][H3] > 3  # each task kept 3 in flight: the bug this fixes

    server.reset()
    urls = [fault_url(H1, "slow_first_byte", f"r{i}.jpg", delay=0.3) for i in range(36)]  # 6 shards
    meta = run(tmp_path, "shared", server, client, urls, per_host=3, per_host_rate=8)
    assert (meta["status"] == "success").all() and len(meta) == 36
    events = server.timeline()[H1]
    assert len(events) == 36
    assert server.stats()["max_inflight"][H1] <= 3 and peak_concurrency(events) <= 3
    starts = sorted(e[0] for e in events)
    # at most 8 requests in any second (+1: each task's share may start at once when granted)
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert busiest <= 9, busiest
    assert (starts[-1] - starts[0]) >= (36 - 9) / 8  # the rate really paced the run


@pytest.mark.parametrize("where", ["local", "scheduler"])
def test_retry_after_pauses_the_host_for_every_worker(tmp_path, server, where, request):
    """On the LocalCluster and on an external scheduler (`--scheduler`)."""
    client = request.getfixturevalue("client" if where == "local" else "scheduler_client")
    server.reset()
    urls = [fault_url(H2, "slow_first_byte", f"p{i}.jpg", delay=0.05) for i in range(20)]
    for at, name in ((3, "a"), (14, "b")):  # each answers 429 Retry-After: 1 once, then the image
        urls.insert(at, fault_url(H2, "429", f"{name}.jpg", retry_after=1, after=1))
    meta = run(tmp_path, "pauses", server, client, urls, per_host=1)
    assert (meta["status"] == "success").all() and len(meta) == 22  # every row, once
    events = server.timeline()[H2]
    pauses = [(answered, answered + float(ra)) for _, answered, status, ra in events if status == 429]
    assert len(pauses) == 2
    for begin, end in pauses:
        inside = [e for e in events if begin < e[0] < end]
        assert not inside, f"{len(inside)} requests arrived during a Retry-After pause"
    assert peak_concurrency(events) == 1 and server.stats()["max_inflight"][H2] == 1


def test_a_shrunk_share_counts_until_the_task_has_been_told():
    """The coordinator alone: a task's share shrinks when another task wants the host, but the
    slots it may still act on are not granted to the other until its next call shows it knows."""
    import asyncio

    from mmdata.politeness import HostBudget

    async def go():
        hb = HostBudget()
        a = await hb.handle("A", 3, None, {"h": [3, 1]}, {}, 0, 0.0)
        assert a["hosts"]["h"][0] == 3  # alone: the whole budget
        b = await hb.handle("B", 3, None, {"h": [3, 0]}, {}, 0, 0.0)
        assert b["hosts"]["h"][0] == 0  # A may still start requests up to 3
        told = await hb.handle("A", 3, None, {"h": [3, 1]}, {}, a["seq"], 0.0)  # A has not seen the shrink yet
        assert told["hosts"]["h"][0] == 2 and told["seq"] > a["seq"]
        b = await hb.handle("B", 3, None, {"h": [3, 0]}, {}, b["seq"], 0.0)
        assert b["hosts"]["h"][0] == 0  # still not: A's answer may not have reached it
        await hb.handle("A", 3, None, {"h": [3, 1]}, {}, told["seq"], 0.0)  # now A acts on 2
        b = await hb.handle("B", 3, None, {"h": [3, 0]}, {}, b["seq"], 0.0)
        assert b["hosts"]["h"][0] == 1
        # a pause reaches every task of the host, with its remaining time
        await hb.handle("A", 3, None, {"h": [3, 1]}, {"h": 5.0}, told["seq"], 0.0)
        b = await hb.handle("B", 3, None, {"h": [3, 1]}, {}, b["seq"], 0.0)
        assert 4.0 < b["hosts"]["h"][1] <= 5.0

    asyncio.run(go())
