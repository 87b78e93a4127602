"""The demo web server: corpus files by Host header, every fault mode, stand-ins for real pages."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import pandas as pd
import pytest
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

from mmdata.demo import corpus
from mmdata.demo.server import DemoServer
from mmdata.demo.urls import IMAGE_HOSTS, ROBOTS_DISALLOW, fault_url, via_local, via_local_all

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HOST = IMAGE_HOSTS[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    corpus.build(out, n_pairs=120, n_docs=12, seed=1, workers=2)
    return out


@pytest.fixture(scope="module")
def server(root):
    with DemoServer(root) as srv:
        yield srv


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes, reads: int):
        self.status, self.headers, self.body, self.reads = status, headers, body, reads

    def image(self) -> Image.Image:
        img = Image.open(io.BytesIO(self.body))
        img.load()
        return img


def fetch(server: DemoServer, url: str, timeout: float = 10) -> Reply:
    """GET ``url`` from the demo server with the URL's own Host header (the downloader's connect_to)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        target = quote(parts.path + (f"?{parts.query}" if parts.query else ""), safe="/?&=%:;@+,()!*'~$-._")
        conn.request("GET", target, headers={"Host": parts.netloc})
        resp = conn.getresponse()
        chunks = []
        while piece := resp.read1(1 << 16):
            chunks.append(piece)
        if resp.length:  # bytes promised by Content-Length that never came
            raise http.client.IncompleteRead(b"".join(chunks), resp.length)
        return Reply(resp.status, resp.headers, b"".join(chunks), len(chunks))
    finally:
        conn.close()


def test_serves_every_pair_file_by_host_header(server, root):
    truth = pd.read_parquet(root / "pairs" / "truth.parquet")
    served = truth[truth["file"].notna() & truth["fault"].isna()]
    assert len(served) > 80
    for row in served.itertuples():
        reply = fetch(server, row.url)
        assert reply.status == 200, row.url
        assert reply.body == (root / "pairs" / row.file).read_bytes()
        assert reply.headers["Content-Type"] == f"image/{row.format.lower()}"


def test_serves_pages_and_their_images(server, root):
    pages = [json.loads(line) for line in (root / "docs" / "truth.jsonl").read_text().splitlines()]
    for page in pages:
        reply = fetch(server, page["url"])
        assert reply.status == 200 and reply.body == (root / "docs" / page["file"]).read_bytes()
        assert reply.headers["Content-Type"].startswith("text/html")
        for url in page["images"] + [d for d in page["decoys"] if d.startswith("http")]:
            reply = fetch(server, url)
            assert reply.status == 200, url
            reply.image()


def test_host_prefix_form_matches_host_header(server, root):
    truth = pd.read_parquet(root / "pairs" / "truth.parquet")
    urls = truth.loc[truth["file"].notna() & truth["fault"].isna(), "url"].head(5).tolist()
    local = via_local_all(urls, server.url)
    assert local[0].startswith(f"{server.url}/_host/")
    for url, rewritten in zip(urls, local):
        with urllib.request.urlopen(rewritten, timeout=10) as resp:
            assert resp.read() == fetch(server, url).body


def test_unknown_paths_and_hosts(server):
    assert fetch(server, f"http://{HOST}/photos/nope.jpg").status == 404
    assert fetch(server, "http://www.example.org/about/team").status == 404


def test_robots_txt(server):
    ((blocked_host, prefix),) = ROBOTS_DISALLOW.items()
    assert f"Disallow: {prefix}" in fetch(server, f"http://{blocked_host}/robots.txt").body.decode()
    assert "Disallow" not in fetch(server, f"http://{HOST}/robots.txt").body.decode()


@pytest.mark.parametrize("mode", ["404", "500", "429", "503"])
def test_status_modes(server, mode):
    reply = fetch(server, fault_url(HOST, mode, f"status-{mode}"))
    assert reply.status == int(mode) and "Retry-After" not in reply.headers
    reply = fetch(server, fault_url(HOST, mode, f"status-ra-{mode}", retry_after=2))
    assert reply.status == int(mode) and reply.headers["Retry-After"] == "2"


def test_fails_n_times_then_succeeds(server):
    url = fault_url(HOST, "429", "flaky-1", after=2, retry_after=1)
    assert [fetch(server, url).status for _ in range(4)] == [429, 429, 200, 200]
    fetch(server, url).image()
    other = fault_url(HOST, "503", "flaky-2", after=1)
    assert [fetch(server, other).status for _ in range(2)] == [503, 200]


def test_slow_first_byte(server):
    url = fault_url(HOST, "slow_first_byte", "slow-1", delay=2)
    with pytest.raises(socket.timeout):
        fetch(server, url, timeout=0.2)
    reply = fetch(server, url, timeout=30)
    assert reply.status == 200
    reply.image()


def test_slow_drip_sends_the_image_in_pieces(server):
    reply = fetch(server, fault_url(HOST, "slow_drip", "drip-1", chunks=4, seconds=0.8))
    assert reply.status == 200 and reply.reads >= 2
    assert len(reply.body) == int(reply.headers["Content-Length"])
    reply.image()


def test_truncated_body(server):
    with pytest.raises(http.client.IncompleteRead) as err:
        fetch(server, fault_url(HOST, "truncated", "trunc-1"))
    assert 0 < len(err.value.partial) < len(err.value.partial) + err.value.expected


def test_wrong_type_and_not_image(server):
    reply = fetch(server, fault_url(HOST, "wrong_type", "wt-1"))
    assert reply.headers["Content-Type"].startswith("text/html")
    reply.image()
    reply = fetch(server, fault_url(HOST, "not_image", "ni-1"))
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/jpeg"
    with pytest.raises(Image.UnidentifiedImageError):
        reply.image()


def test_redirects(server):
    url = fault_url(HOST, "redirect", "redir-1.jpg", hops=2)
    hops = []
    while (reply := fetch(server, url)).status in (301, 302):
        hops.append(reply.headers["Location"])
        url = urljoin(url, reply.headers["Location"])
    assert len(hops) == 2 and not hops[0].startswith("http")
    reply.image()
    # Relative Location keeps the /_host/ form working through redirects.
    with urllib.request.urlopen(
        via_local(fault_url(HOST, "redirect", "redir-2.jpg", hops=3), server.url), timeout=10
    ) as resp:
        Image.open(io.BytesIO(resp.read())).load()


def test_redirect_loop(server):
    url = fault_url(HOST, "redirect_loop", "loop-1.jpg")
    seen = []
    for _ in range(6):
        reply = fetch(server, url)
        assert reply.status == 302
        url = urljoin(url, reply.headers["Location"])
        seen.append(url)
    assert len(set(seen)) == 2
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(
            via_local(fault_url(HOST, "redirect_loop", "loop-2.jpg"), server.url), timeout=10
        )


def test_decompression_bomb(server):
    reply = fetch(server, fault_url(HOST, "bomb", "bomb-1.png"))
    assert reply.status == 200 and len(reply.body) < 200_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(reply.body))


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body(server, chunked):
    params = {"mb": 3, "chunked": 1} if chunked else {"mb": 3}
    reply = fetch(server, fault_url(HOST, "oversized", f"big-{chunked}", **params))
    assert reply.status == 200 and len(reply.body) == 3 * 2**20
    assert reply.body[:3] == b"\xff\xd8\xff"
    if chunked:
        assert "Content-Length" not in reply.headers and reply.headers["Transfer-Encoding"] == "chunked"
    else:
        assert reply.headers["Content-Length"] == str(3 * 2**20)


def test_noai_header(server):
    reply = fetch(server, fault_url(HOST, "noai", "noai-1"))
    assert "noai" in reply.headers["X-Robots-Tag"]
    reply.image()


def test_corpus_fault_urls_serve_their_own_image(server, root):
    truth = pd.read_parquet(root / "pairs" / "truth.parquet")
    row = truth[truth["fault"] == "503"].iloc[0]
    assert row.expect_ok and "after=1" in row.url
    assert fetch(server, row.url).status == 503
    assert fetch(server, row.url).body == (root / "pairs" / row.file).read_bytes()


def test_fault_url_rejects_unknown_modes():
    with pytest.raises(ValueError):
        fault_url(HOST, "teapot", 1)


def _img_urls(page_url: str, html: str) -> list[str]:
    srcs = re.findall(r"""<img[^>]*?\ssrc=["']([^"']+)""", html)
    return [urljoin(page_url, s.replace("&amp;", "&")) for s in srcs if not s.startswith("data:")]


REAL_PAGES = {
    "theverge.com.ios13.html": "https://www.theverge.com/2019/6/3/18650857/ios-13",
    "befifty.montauk.html": "https://www.befifty.de/home/2017/7/12/montauk",
    "en.wikipedia.org.tsne.html": "https://en.wikipedia.org/wiki/T-distributed_stochastic_neighbor_embedding",
}


@pytest.mark.parametrize("name", sorted(REAL_PAGES))
def test_real_pages_get_stand_in_images(server, name):
    urls = _img_urls(REAL_PAGES[name], (REAL / "html" / name).read_text(errors="replace"))
    replies = [fetch(server, u) for u in urls]
    ok = [r for r in replies if r.status == 200]
    assert len(ok) >= 0.9 * len(urls)
    for reply in ok:
        if reply.headers["Content-Type"] == "image/svg+xml":
            assert reply.body.startswith(b"<svg")
        else:
            reply.image()
    assert fetch(server, urls[0]).body == replies[0].body


def test_stand_in_sizes_follow_the_url(server):
    photo = fetch(server, "https://cdn.vox-cdn.com/uploads/chorus_asset/file/18/ios13.jpg").image()
    logo = fetch(server, "https://www.luxuriousmagazine.com/wp-content/uploads/2015/08/site-logo.png").image()
    pixel = fetch(server, "https://pixel.wp.com/b.gif?v=noscript").image()
    assert 300 <= photo.width <= 1200 and max(logo.size) < 200 and pixel.size == (1, 1)
    assert fetch(server, "https://www.example.org/static/app.js").status == 404


def test_real_warc_image_urls_are_served(server):
    with open(REAL / "warc" / "sample-0000.warc.gz", "rb") as f:
        for record in ArchiveIterator(f):
            if record.rec_type == "response" and "html" in (
                record.http_headers.get_header("Content-Type") or ""
            ):
                page_url = record.rec_headers.get_header("WARC-Target-URI").strip("<>")
                urls = _img_urls(page_url, record.content_stream().read().decode("utf-8", "replace"))
                if urls:
                    break
    images = [u for u in urls if re.search(r"\.(jpe?g|png|gif|webp)", u, re.IGNORECASE)][:5]
    assert images
    for url in images:
        reply = fetch(server, url)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("image/")


def test_stats_and_reset(root):
    # A server of its own: other tests' requests would muddle the counts.
    with DemoServer(root) as srv:
        for _ in range(3):
            fetch(srv, f"http://{HOST}/robots.txt")
        stats = srv.stats()
        assert stats["by_host"] == {HOST: 3}
        assert stats["by_url"] == {f"http://{HOST}/robots.txt": 3}
        assert stats["max_inflight"][HOST] >= 1
        srv.reset()
        assert srv.stats()["requests"] == 0
