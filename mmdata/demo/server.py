"""The demo web: one aiohttp server for every demo host, dispatched on the ``Host`` header.

What it answers (see :mod:`mmdata.demo.urls` for hosts, the ``/_host/`` form and the fault scheme):

* files of a demo corpus (``pairs/images/<host>/...``, ``docs/images/<host>/...``, and
  ``docs/pages/<slug>.html`` at ``http://news.demo.mmdata.test/articles/<slug>.html``), all
  preloaded into memory so the server is never a benchmark's bottleneck;
* ``/robots.txt`` of every demo host (one host disallows a prefix: ``ROBOTS_DISALLOW``);
* ``/fault/<mode>/<name>`` on any host: the fault modes;
* any other host (the real pages' image URLs after ``connect_to``): a stand-in image derived from
  host and path when the path looks like an image, else 404;
* on ``127.0.0.1``/``localhost`` only: ``GET /_stats`` (requests per host and per URL, the most
  requests in flight per host), ``GET /_timeline`` (per host, every request's arrival and answer
  times, status and Retry-After) and ``POST /_reset`` (clears both and the fault attempt counters).

:class:`DemoServer` runs it in a child process; :func:`main` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Self
from urllib.parse import urlencode
from urllib.request import Request, urlopen

from aiohttp import web

from mmdata.demo import images as im
from mmdata.demo.urls import (
    DEMO_HOSTS,
    FAULT_PREFIX,
    LOCAL_HOSTS,
    LOCAL_PREFIX,
    NEWS_HOST,
    PAGES_PREFIX,
    STATUS_MODES,
    looks_like_image,
    robots_txt,
)

SITE_DIRS = ("pairs/images", "docs/images")
NOT_IMAGE_BODY = b"<!DOCTYPE html><html><head><title>Not found</title></head><body><h1>Sorry, this image is gone</h1></body></html>"
_ZEROS = bytes(1 << 20)


def load_site(root: str | os.PathLike | None) -> dict[tuple[str, str], tuple[bytes, str]]:
    """All files of a corpus keyed by (host, path), with their content type."""
    files: dict[tuple[str, str], tuple[bytes, str]] = {}
    if root is None:
        return files
    root = Path(root)
    for site in SITE_DIRS:
        base = root / site
        if not base.is_dir():
            continue
        for f in base.rglob("*"):
            if f.is_file():
                host, path = f.relative_to(base).as_posix().split("/", 1)
                body = f.read_bytes()
                files[(host, "/" + path)] = (body, im.content_type(body))
    pages = root / "docs" / "pages"
    if pages.is_dir():
        for f in pages.glob("*.html"):
            files[(NEWS_HOST, PAGES_PREFIX + f.name)] = (f.read_bytes(), "text/html; charset=utf-8")
    return files


def bomb_png(side: int) -> bytes:
    """A PNG of ``side`` x ``side`` 1-bit pixels: a few kB on the wire, side**2 pixels to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits, all zero
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _hostname(header: str) -> str:
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class DemoSite:
    """Request handling and its state (attempt counters, stats); one per server process."""

    def __init__(self, root: str | os.PathLike | None):
        self.files = load_site(root)
        self.default = im.encode(
            im.render(im.Concept("circle", "blue", 1, "white", "plain"), 256, 256, im.seeded_rng(0)), "JPEG"
        )
        self.standins: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.bombs: dict[int, bytes] = {}  # side -> PNG, built once
        self.gzipped: dict[int, bytes] = {}  # inflated size -> gzip body, built once
        self.reset()

    def reset(self) -> None:
        self.attempts: Counter = Counter()
        self.hits: Counter = Counter()
        self.by_host: Counter = Counter()
        self.inflight: Counter = Counter()
        self.max_inflight: Counter = Counter()
        self.timeline: dict[str, list] = {}  # host -> [arrival, answered, status, Retry-After] (monotonic s)

    def stats(self) -> dict:
        return {
            "requests": sum(self.by_host.values()),
            "by_host": dict(self.by_host),
            "max_inflight": dict(self.max_inflight),
            "by_url": {f"http://{h}{p}": n for (h, p), n in self.hits.items()},
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = _hostname(request.host)
        path = request.rel_url.raw_path
        query = request.rel_url.raw_query_string
        if host in LOCAL_HOSTS:
            if path.startswith(LOCAL_PREFIX):
                host, _, rest = path[len(LOCAL_PREFIX) :].partition("/")
                path = "/" + rest
            elif path == "/_stats":
                return web.json_response(self.stats())
            elif path == "/_timeline":
                return web.json_response(self.timeline)
            elif path == "/_reset" and request.method == "POST":
                self.reset()
                return web.Response(text="ok\n")
        self.by_host[host] += 1
        self.hits[(host, f"{path}?{query}" if query else path)] += 1
        self.inflight[host] += 1
        self.max_inflight[host] = max(self.max_inflight[host], self.inflight[host])
        arrived, resp = time.monotonic(), None
        try:
            resp = await self._serve(request, host, path, query)
            return resp
        finally:
            self.inflight[host] -= 1
            events = self.timeline.setdefault(host, [])
            if len(events) < 200_000:
                ra = resp.headers.get("Retry-After") if resp is not None else None
                events.append([arrived, time.monotonic(), resp.status if resp is not None else None, ra])

    async def _serve(self, request, host: str, path: str, query: str) -> web.StreamResponse:
        if path.startswith(FAULT_PREFIX):
            return await self._fault(request, host, path, query)
        hit = self.files.get((host, path))
        if hit is not None:
            return web.Response(body=hit[0], headers={"Content-Type": hit[1]})
        if path == "/robots.txt" and host in DEMO_HOSTS:
            return web.Response(text=robots_txt(host))
        if host not in DEMO_HOSTS and looks_like_image(f"{path}?{query}"):
            key = (host, f"{path}?{query}")
            if key not in self.standins:
                if len(self.standins) >= 20_000:  # a crawl of arbitrary URLs must not grow memory forever
                    self.standins.clear()
                self.standins[key] = im.standin(*key)
            body, ctype = self.standins[key]
            return web.Response(body=body, headers={"Content-Type": ctype})
        return web.Response(status=404, text="not found\n")

    async def _fault(self, request, host: str, path: str, query: str) -> web.StreamResponse:
        mode = path[len(FAULT_PREFIX) :].split("/", 1)[0]
        params = request.rel_url.query
        self.attempts[(host, path, query)] += 1
        body, ctype = self.files.get((host, path)) or (self.default, "image/jpeg")
        plain = web.Response(body=body, headers={"Content-Type": ctype})
        if "after" in params and self.attempts[(host, path, query)] > int(params["after"]):
            return plain
        name = path.rsplit("/", 1)[1]
        if mode in STATUS_MODES:
            headers = {"Retry-After": params["retry_after"]} if "retry_after" in params else {}
            return web.Response(status=int(mode), text=f"fault {mode}\n", headers=headers)
        if mode == "slow_first_byte":
            await asyncio.sleep(float(params.get("delay", 3)))
            return plain
        if mode == "slow_drip":
            chunks = max(1, int(params.get("chunks", 20)))
            pause = float(params.get("seconds", 3)) / chunks
            size = -(-len(body) // chunks)
            return await self._stream(
                request, ctype, len(body), (body[k : k + size] for k in range(0, len(body), size)), pause
            )
        if mode == "truncated":
            resp = await self._stream(request, ctype, len(body), [body[: len(body) // 2]])
            # Close mid-body: the client has been promised more bytes than it will get.
            request.transport.close()
            return resp
        if mode == "wrong_type":
            return web.Response(
                body=body, headers={"Content-Type": params.get("type", "text/html; charset=utf-8")}
            )
        if mode == "not_image":
            return web.Response(body=NOT_IMAGE_BODY, headers={"Content-Type": "image/jpeg"})
        if mode in ("redirect", "redirect_loop"):
            if mode == "redirect" and "to" in params:
                return web.Response(status=int(params.get("code", 302)), headers={"Location": params["to"]})
            if mode == "redirect":
                hops = int(params.get("hops", 1))
                if hops <= 0:
                    return plain
                nxt = {**params, "hops": hops - 1}
            else:
                nxt = {**params, "leg": 1 - int(params.get("leg", 0))}
            # Relative Location: resolves on the same host in both the Host and the /_host/ form.
            return web.Response(
                status=int(params.get("code", 302)), headers={"Location": f"{name}?{urlencode(nxt)}"}
            )
        if mode == "bomb":
            side = int(params.get("side", 20000))
            if side not in self.bombs:
                self.bombs[side] = bomb_png(side)
            return web.Response(body=self.bombs[side], headers={"Content-Type": "image/png"})
        if mode == "oversized":
            total = int(float(params.get("mb", 64)) * 2**20)
            chunked = params.get("chunked") == "1"
            pieces = (
                [body]
                + [_ZEROS] * ((total - len(body)) // len(_ZEROS))
                + [_ZEROS[: (total - len(body)) % len(_ZEROS)]]
            )
            return await self._stream(request, ctype, None if chunked else total, pieces)
        if mode == "gzip_bomb":
            total = int(float(params.get("mb", 64)) * 2**20)
            if total not in self.gzipped:
                self.gzipped[total] = gzip.compress(bytes(total), compresslevel=9)
            return web.Response(body=self.gzipped[total], headers={"Content-Type": ctype, "Content-Encoding": "gzip"})
        if mode == "noai":
            return web.Response(
                body=body,
                headers={"Content-Type": ctype, "X-Robots-Tag": params.get("value", "noai, noimageai")},
            )
        return web.Response(status=400, text=f"unknown fault mode {mode!r}\n")

    @staticmethod
    async def _stream(
        request, ctype: str, length: int | None, pieces, pause: float = 0.0
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        if length is None:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = length
        await resp.prepare(request)
        try:
            for k, piece in enumerate(pieces):
                if k and pause:
                    await asyncio.sleep(pause)
                await resp.write(piece)
        except ConnectionError:
            pass  # the client gave up (a size cap or a timeout): exactly what these modes provoke
        return resp


async def _start(root, host: str, port: int) -> tuple[web.ServerRunner, int]:
    site = DemoSite(root)
    runner = web.ServerRunner(web.Server(site.handle), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    await web.SockSite(runner, sock, backlog=2048).start()
    return runner, sock.getsockname()[1]


def serve(
    root: str | os.PathLike | None, host: str = "127.0.0.1", port: int = 8000, orphan_exit: bool = False
) -> None:
    """Serve in the foreground until interrupted; prints the base URL on stdout once listening.

    ``orphan_exit``: quit when stdin closes, i.e. when the parent that holds its other end dies, so a
    killed test run leaves no server behind.
    """
    if orphan_exit:
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()

    async def run():
        runner, bound = await _start(root, host, port)
        print(f"http://{host}:{bound}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


class DemoServer:
    """The demo web in a child process (its own GIL), for tests, benchmarks and the demo.

    >>> with DemoServer("demo-corpus") as srv:
    ...     srv.url  # "http://127.0.0.1:PORT"
    """

    def __init__(self, root: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 0):
        self.root, self.host, self.port = root, host, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> DemoServer:
        cmd = [
            sys.executable,
            "-m",
            "mmdata.demo.server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--orphan-exit",
        ]
        if self.root is not None:
            cmd += ["--root", str(self.root)]
        env = dict(os.environ)
        # The child must import this very package even when it is not installed (a source checkout).
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("http://"):
            self.proc.wait(timeout=10)
            raise RuntimeError(f"demo server failed to start (exit {self.proc.returncode})")
        self.port = int(line.strip().rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            for pipe in (self.proc.stdin, self.proc.stdout):
                pipe.close()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict:
        with urlopen(f"{self.url}/_stats", timeout=10) as resp:
            return json.load(resp)

    def reset(self) -> None:
        urlopen(Request(f"{self.url}/_reset", method="POST"), timeout=10).close()

    def timeline(self) -> dict[str, list]:
        """Per host, each request as [arrival, answered, HTTP status, Retry-After], in the server's
        monotonic seconds: what politeness tests check pauses and concurrency against."""
        with urlopen(f"{self.url}/_timeline", timeout=10) as resp:
            return json.load(resp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmdata serve", description="Serve a demo corpus (and the fault modes) over HTTP."
    )
    parser.add_argument(
        "--root", default=None, help="demo corpus folder (default: none, only faults and stand-ins)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--orphan-exit", action="store_true", help="exit when stdin closes (used by DemoServer)"
    )
    args = parser.parse_args(argv)
    serve(args.root, args.host, args.port, args.orphan_exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
