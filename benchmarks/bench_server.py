"""Requests per second the demo server sustains against concurrent aiohttp clients.

    python benchmarks/bench_server.py [--root DIR] [--requests 5000] [--concurrency 64]

Without --root it builds a small demo corpus in a temporary folder first. Requests go to
127.0.0.1 with the corpus URL's Host header (the way the downloader's connect_to works), cycling
over the served pair images.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pandas as pd

from mmdata.demo.corpus import build
from mmdata.demo.server import DemoServer


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), to show how busy the server itself was."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hammer(
    port: int, targets: list[tuple[str, str]], n: int, concurrency: int
) -> tuple[float, int, int]:
    queue = iter(range(n))
    ok = nbytes = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, nbytes
        for k in queue:
            host, path = targets[k % len(targets)]
            async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as resp:
                body = await resp.read()
                ok += resp.status == 200
                nbytes += len(body)

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - start, ok, nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an existing demo corpus (default: build 500 pairs in a temp folder)")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = tmp
            build(root, n_pairs=500, n_docs=10, seed=0)
        truth = pd.read_parquet(f"{root}/pairs/truth.parquet")
        served = truth[truth["file"].notna() & truth["fault"].isna()]
        targets = [(u.hostname, u.path) for u in map(urlsplit, served["url"])]
        with DemoServer(root) as srv:
            asyncio.run(hammer(srv.port, targets, min(500, args.requests), args.concurrency))  # warm-up
            cpu0 = cpu_seconds(srv.proc.pid)
            took, ok, nbytes = asyncio.run(hammer(srv.port, targets, args.requests, args.concurrency))
            cpu1 = cpu_seconds(srv.proc.pid)
    print(
        f"demo server: {args.requests / took:,.0f} requests/s, {nbytes / took / 2**20:,.1f} MiB/s "
        f"({args.requests} requests, {args.concurrency} concurrent, {ok} ok, mean body {nbytes / max(ok, 1) / 1024:.1f} KiB)"
    )
    if cpu0 is not None and cpu1 > cpu0:
        # The client shares the machine; this is what one server core could do on its own.
        print(
            f"server CPU: {cpu1 - cpu0:.2f} s busy of {took:.2f} s, capacity ~{args.requests / (cpu1 - cpu0):,.0f} requests/s per core"
        )
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
