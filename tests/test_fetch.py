"""mmdata.fetch against the real demo web server: fault modes, politeness, the SSRF guard."""

from __future__ import annotations

import asyncio

import pytest

from mmdata.config import FetchConfig
from mmdata.demo.server import DemoServer
from mmdata.demo.urls import IMAGE_HOSTS, ROBOTS_DISALLOW, fault_url
from mmdata.fetch import fetch_all, retry_after, x_robots_refused

H1, H2 = IMAGE_HOSTS[0], IMAGE_HOSTS[1]
OTHER = "photos.example.test"  # not a demo host: the server answers image paths with stand-ins
ROBOTS_HOST = next(iter(ROBOTS_DISALLOW))


@pytest.fixture(scope="module")
def server():
    with DemoServer() as srv:  # no corpus: fault modes and stand-in images
        yield srv


def cfg_for(server, **kw) -> FetchConfig:
    base = {"allow": ["127.0.0.1"], "connect_to": {"*": f"127.0.0.1:{server.port}"}, "retries": 2, "backoff_base": 0.05,
                "first_byte_timeout": 2.0, "total_timeout": 10.0}
    return FetchConfig(**(base | kw))


def test_fault_modes(server):
    server.reset()
    cases = {
        "plain": (f"http://{OTHER}/img/plain.jpg", "success"),
        "404": (fault_url(H1, "404", "a.jpg"), "failed_to_download"),
        "500": (fault_url(H1, "500", "b.jpg"), "failed_to_download"),
        "503_after": (fault_url(H1, "503", "c.jpg", after=1), "success"),
        "truncated": (fault_url(H1, "truncated", "d.jpg"), "failed_to_download"),
        "redirect": (fault_url(H2, "redirect", "e.jpg", hops=2), "success"),
        "loop": (fault_url(H2, "redirect_loop", "f.jpg"), "failed_to_download"),
        "oversized": (fault_url(H2, "oversized", "g.jpg", mb=3), "failed_to_download"),
        "oversized_chunked": (fault_url(H2, "oversized", "h.jpg", mb=3, chunked=1), "failed_to_download"),
        "gzip_bomb": (fault_url(H2, "gzip_bomb", "h2.jpg", mb=3), "failed_to_download"),
        "noai": (fault_url(H2, "noai", "i.jpg"), "skipped_x_robots_tag"),
        "slow": (fault_url(H2, "slow_first_byte", "j.jpg", delay=4), "failed_to_download"),
        "drip": (fault_url(H2, "slow_drip", "k.jpg", seconds=0.5, chunks=5), "success"),
        "robots": (f"http://{ROBOTS_HOST}{ROBOTS_DISALLOW[ROBOTS_HOST]}l.jpg", "skipped_robots"),
        "robots_ok": (fault_url(ROBOTS_HOST, "wrong_type", "m.jpg"), "success"),
        "opt_out": ("http://cdn.optout.example/img/n.jpg", "skipped_opt_out"),
        "invalid": ("not a url", "skipped_invalid_url"),
    }
    cfg = cfg_for(server, max_bytes=2**20, first_byte_timeout=0.5, opt_out=["optout.example"])
    results = fetch_all([u for u, _ in cases.values()], cfg)
    got = {name: r for name, r in zip(cases, results)}
    assert {n: r.status for n, r in got.items()} == {n: s for n, (_, s) in cases.items()}
    assert [r.url for r in results] == [u for u, _ in cases.values()]  # input order
    assert got["plain"].body[:2] == b"\xff\xd8" and got["plain"].http_status == 200
    assert got["404"].attempts == 1 and got["404"].http_status == 404  # permanent: not retried
    assert got["500"].attempts == 3 and got["truncated"].attempts == 3  # transient: retried
    assert got["503_after"].attempts == 2
    assert got["redirect"].final_url.endswith("hops=0")
    assert "too many redirects" in got["loop"].error_message
    assert "max_bytes" in got["oversized"].error_message and "max_bytes" in got["oversized_chunked"].error_message
    assert "body larger than max_bytes" in got["gzip_bomb"].error_message  # inflated size, not Content-Length
    assert "read timeout" in got["slow"].error_message
    assert got["noai"].error_message == "X-Robots-Tag: noai"
    stats = server.stats()
    assert "cdn.optout.example" not in stats["by_host"]  # opted-out hosts are never contacted
    assert stats["by_url"][f"http://{ROBOTS_HOST}/robots.txt"] == 1  # fetched once, cached


def test_retry_after_is_honoured(server):
    server.reset()
    url = fault_url(H1, "429", "ra.jpg", retry_after=1, after=1)
    too_long = fault_url(H1, "429", "ra2.jpg", retry_after=120)
    ok, refused = fetch_all([url, too_long], cfg_for(server, retry_after_max=30))
    assert ok.status == "success" and ok.attempts == 2
    assert ok.elapsed >= 1.0  # waited as the server asked before asking again
    assert refused.status == "failed_to_download" and refused.attempts == 1  # no hammering past the cap
    assert "Retry-After" in refused.error_message


def test_ssrf_guard(server):
    server.reset()
    urls = [f"http://{OTHER}/img/s.jpg", f"http://127.0.0.1:{server.port}/_host/{OTHER}/img/s.jpg",
            "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/a.jpg", "http://[::1]/a.jpg"]
    guarded = fetch_all(urls, cfg_for(server, allow=[], robots_txt=False))
    assert [r.status for r in guarded] == ["skipped_ssrf"] * 5
    assert server.stats()["requests"] == 0  # refused before any connection
    allowed = fetch_all(urls[:2], cfg_for(server, allow=["127.0.0.0/8"], robots_txt=False))
    assert [r.status for r in allowed] == ["success", "success"]
    by_host = fetch_all(urls[:1], cfg_for(server, allow=["*.example.test"], robots_txt=False))
    assert by_host[0].status == "success"


def test_per_host_cap(server):
    server.reset()
    urls = [fault_url(h, "slow_first_byte", f"cap{i}.jpg", delay=0.3) for h in (H1, H2) for i in range(12)]
    results = fetch_all(urls, cfg_for(server, per_host=3, concurrency=64, robots_txt=False))
    assert all(r.ok for r in results)
    peaks = server.stats()["max_inflight"]
    assert peaks[H1] == 3 and peaks[H2] == 3


def test_fetch_all_inside_a_running_loop(server):
    async def from_async_code():
        return fetch_all([f"http://{OTHER}/img/loop.jpg"], cfg_for(server))

    assert asyncio.run(from_async_code())[0].ok


def test_header_parsing():
    refused = ["noai", "noimageai", "noindex", "noimageindex"]
    assert x_robots_refused(["noai, noimageai"], refused, "mmdata") == "noai"
    assert x_robots_refused(["googlebot: noindex"], refused, "mmdata") is None
    assert x_robots_refused(["mmdata: noimageindex"], refused, "mmdata") == "noimageindex"
    assert x_robots_refused(["nofollow", "unavailable_after: 25 Jun 2010 15:00:00 PST"], refused, "mmdata") is None
    assert retry_after("7") == 7.0 and retry_after(None) is None and retry_after("soon") is None
    assert 0 <= retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1  # a date in the past: no wait


def test_plain_http_mirror_for_https_urls(server):
    """connect_to 'http://addr:port': https URLs are fetched from a plain-HTTP mirror, results keep
    the original URL, redirects resolve against it; a TLS target stays TLS (and fails here)."""
    import io

    from PIL import Image

    server.reset()
    urls = [f"https://{OTHER}/media/real.jpg", "https://" + fault_url(H2, "redirect", "m.jpg", hops=1).split("://", 1)[1]]
    mirror = cfg_for(server, connect_to={"*": f"http://127.0.0.1:{server.port}"})
    got = fetch_all(urls, mirror)
    assert [r.status for r in got] == ["success", "success"], [r.error_message for r in got]
    assert [r.url for r in got] == urls and got[1].final_url.startswith("https://")
    assert Image.open(io.BytesIO(got[0].body)).size[0] > 0
    seen = server.stats()["by_url"]  # the original hosts (Host header), robots.txt through the mirror too
    assert seen[f"http://{OTHER}/robots.txt"] == 1 and seen[f"http://{OTHER}/media/real.jpg"] == 1

    tls = fetch_all(urls[:1], cfg_for(server, retries=0))  # 'addr:port' keeps TLS: no handshake with a plain server
    assert tls[0].status == "failed_to_download"


def test_numeric_ipv4_hosts_are_ssrf_refusals(server):
    """Every spelling of 127.0.0.1 a resolver accepts is normalised before the guard: refused as
    SSRF (final), never a retryable failure; with the address allowed they are fetched."""
    from mmdata.fetch import ipv4_host

    assert {ipv4_host(h) for h in ("2130706433", "127.1", "017700000001", "0x7f.1", "0x7F000001", "127.0.0.1.")} == {"127.0.0.1"}
    assert ipv4_host("example.com") is None and ipv4_host("1.2.3.4") == "1.2.3.4"
    for bad in ("1.2.3.4.5", "256.1.1.1", "08.1.1.1", "1.2.3.0x100"):
        with pytest.raises(ValueError):
            ipv4_host(bad)
    server.reset()
    port = server.port
    urls = [f"http://2130706433:{port}/_host/{OTHER}/img/a.jpg", f"http://127.1:{port}/_host/{OTHER}/img/b.jpg",
            f"http://017700000001:{port}/_host/{OTHER}/img/c.jpg", "http://0x7f.1/d.jpg", "http://localhost./e.jpg",
            "http://256.1.1.1/f.jpg"]
    got = fetch_all(urls, cfg_for(server, allow=[], robots_txt=False))
    assert [r.status for r in got] == ["skipped_ssrf"] * 5 + ["skipped_invalid_url"], [r.error_message for r in got]
    assert got[0].attempts == 1 and "127.0.0.1" in got[0].error_message
    assert server.stats()["requests"] == 0
    allowed = fetch_all(urls[:3], cfg_for(server, allow=["127.0.0.1"], robots_txt=False, connect_to={}))
    assert [r.status for r in allowed] == ["success"] * 3, [r.error_message for r in allowed]
