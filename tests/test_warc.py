"""The WARC reader on WARCs these tests build byte by byte: line-end variants, damaged and cut
records, garbage, broken gzip members, encoded and chunked bodies, charsets. Every good record
comes out as a page; every bad stretch is one row with a reason and the offset of its bytes."""

from __future__ import annotations

import gzip
import uuid
import zlib

import brotli
import pytest

from mmdata.warc import read_warc

FRENCH = "Le café est fermé à midi; les élèves mangent à la cantine où l’on sert des crêpes."
RUSSIAN = "Москва — столица России, крупнейший по численности населения город страны и её политический центр."
JAPANESE = "東京は日本の首都であり、世界有数の大都市である。多くの人々がここで働き、学び、暮らしている。"


def page(i: int, text: str = "", crlf: bool = False) -> str:
    nl = "\r\n" if crlf else "\n"
    body = text or f"Paragraph {i} of a page that has enough words to be a page about topic number {i}."
    return nl.join([
        "<!DOCTYPE html>", f"<html><head><title>Page {i}</title></head>", "<body><article>", f"<h1>Page {i}</h1>",
        f"<p>{body}</p>", "", f'<img src="http://img.example.com/{i}.jpg" alt="picture {i}">', "",
        f"<p>The end of page {i}, after an empty line.</p>", "</article></body></html>"])


def http(body: bytes, headers: dict | None = None, eol: bytes = b"\r\n", status: bytes = b"200 OK") -> bytes:
    lines = [b"HTTP/1.1 " + status]
    for k, v in {"Content-Type": "text/html; charset=utf-8", **(headers or {})}.items():
        lines.append(f"{k}: {v}".encode())
    return eol.join(lines) + eol + eol + body


def record(uri: str, block: bytes, kind: str = "response", version: str = "WARC/1.0", eol: bytes = b"\r\n",
           length: int | None = None) -> bytes:
    head = [version, f"WARC-Type: {kind}", f"WARC-Target-URI: {uri}", "WARC-Date: 2024-05-01T00:00:00Z",
            f"WARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, uri + kind)}>",
            "Content-Type: application/http; msgtype=response",
            f"Content-Length: {len(block) if length is None else length}"]
    return eol.join(h.encode() for h in head) + eol + eol + block + eol + eol


def warcinfo() -> bytes:
    return record("", b"software: test\r\nformat: WARC File Format 1.0\r\n", kind="warcinfo")


def response(i: int, **kw) -> bytes:
    return record(f"http://site.example.com/{i}.html", http(page(i).encode()), **kw)


def write(tmp_path, name: str, parts: list[bytes], gz: bool) -> tuple[str, list[int]]:
    """The file and the raw offset of each part (a gzip member each when gz)."""
    offsets, out = [], b""
    for p in parts:
        offsets.append(len(out))
        out += gzip.compress(p) if gz else p
    path = tmp_path / name
    path.write_bytes(out)
    return str(path), offsets


def pages(recs):
    return [r for r in recs if r.status == "success"]


@pytest.mark.parametrize("gz", [False, True])
def test_lf_only_headers_and_clueweb_records(tmp_path, gz):
    """HTTP headers ending in bare LFs while the body has CRLF lines: split at the headers' end;
    WARC/0.18 records with LF-only WARC headers (ClueWeb) read as well."""
    crlf = record("http://site.example.com/1.html", http(page(1, crlf=True).encode()))
    lf_http = record("http://site.example.com/2.html", http(page(2, crlf=True).encode(), eol=b"\n"))
    clueweb = record("http://site.example.com/3.html", http(page(3).encode(), eol=b"\n"), version="WARC/0.18", eol=b"\n")
    path, _ = write(tmp_path, "lf.warc" + ".gz" * gz, [warcinfo(), crlf, lf_http, clueweb], gz)
    recs = list(read_warc(path))
    assert [r.status for r in recs] == ["skipped_warc_warcinfo", "success", "success", "success"]
    for i, r in zip((1, 2, 3), recs[1:]):
        assert r.html.startswith("<!DOCTYPE html>") and f"<title>Page {i}</title>" in r.html
        assert f"The end of page {i}" in r.html and f"/{i}.jpg" in r.html
    assert recs[2].html.replace("\r\n", "\n") == page(2)


@pytest.mark.parametrize("gz", [False, True])
def test_cut_records_are_failed_once_and_reading_resumes(tmp_path, gz):
    parts = [warcinfo(), response(1),
             response(2, length=len(http(page(2).encode())) + 500),  # declares more than there is
             response(3),
             response(4, length=len(http(page(4).encode())) + 2),  # a miscount of the blank lines
             response(5)]
    cut = response(6)
    parts.append(cut[: len(cut) // 2])  # the file ends inside the last record
    path, offsets = write(tmp_path, "cut.warc" + ".gz" * gz, parts, gz)
    recs = list(read_warc(path))
    assert [r.status for r in recs] == ["skipped_warc_warcinfo", "success", "failed_truncated", "success", "success",
                                        "success", "failed_truncated"]
    assert [r.url for r in pages(recs)] == [f"http://site.example.com/{i}.html" for i in (1, 3, 4, 5)]
    bad = [r for r in recs if r.status == "failed_truncated"]
    # the offset of the bad record (its gzip member), the URL it claimed, and why
    assert bad[0].source.endswith(f"@{offsets[2]}") and bad[0].url.endswith("/2.html")
    assert bad[1].source.endswith(f"@{offsets[6]}")
    assert all("declares" in r.error_message or "cut short" in r.error_message for r in bad)
    assert "Page 4" in recs[4].html and recs[4].html.rstrip().endswith("</html>")


def test_garbage_between_records_is_one_row(tmp_path):
    junk = b"\x00\x01garbage that is not a WARC record\r\n" * 20
    parts = [response(1), junk, response(2), b"\r\n\r\n", response(3), b"trailing junk"]
    path, offsets = write(tmp_path, "junk.warc", parts, gz=False)
    recs = list(read_warc(path))
    assert [r.status for r in recs] == ["success", "failed_to_read", "success", "success", "failed_to_read"]
    assert recs[1].source.endswith(f"@{offsets[1]}") and f"{len(junk)} bytes" in recs[1].error_message
    assert recs[4].source.endswith(f"@{offsets[5]}")


def test_broken_gzip_member_is_one_row(tmp_path):
    members = [gzip.compress(p) for p in (warcinfo(), response(1), response(2), response(3), response(4))]
    members[2] = members[2][:30] + bytes(40) + members[2][70:]  # corrupt deflate data
    blob, offsets = b"", []
    for m in members[:4]:
        offsets.append(len(blob))
        blob += m
    offsets.append(len(blob))
    blob += b"junk between members" + members[4] + b"\n"  # garbage, then a good member, then padding
    path = tmp_path / "broken.warc.gz"
    path.write_bytes(blob)
    recs = list(read_warc(str(path)))
    assert [r.status for r in recs] == ["skipped_warc_warcinfo", "success", "failed_to_read", "success",
                                        "failed_to_read", "success"]
    assert recs[2].source.endswith(f"@{offsets[2]}") and "does not decompress" in recs[2].error_message
    assert recs[4].source.endswith(f"@{offsets[4]}") and "20 bytes" in recs[4].error_message
    assert [r.url for r in pages(recs)] == [f"http://site.example.com/{i}.html" for i in (1, 3, 4)]


def test_whole_file_gzip_stream(tmp_path):
    """Some crawls compress the whole file as one gzip stream: records inside one member."""
    path = tmp_path / "one.warc.gz"
    path.write_bytes(gzip.compress(warcinfo() + response(1) + response(2) + response(3)))
    assert [r.status for r in read_warc(str(path))] == ["skipped_warc_warcinfo", "success", "success", "success"]


def test_encoded_and_chunked_bodies(tmp_path):
    html = page(7).encode()

    def deflate(data: bytes, raw: bool) -> bytes:
        c = zlib.compressobj(wbits=-15 if raw else 15)
        return c.compress(data) + c.flush()

    def chunked(data: bytes, eol: bytes = b"\r\n") -> bytes:
        out = b""
        for i in range(0, len(data), 100):
            piece = data[i : i + 100]
            out += f"{len(piece):x};ext=1".encode() + eol + piece + eol
        return out + b"0" + eol + b"X-Trailer: 1" + eol + eol

    bodies = {
        "gzip": (gzip.compress(html), {"Content-Encoding": "gzip"}),
        "deflate": (deflate(html, raw=False), {"Content-Encoding": "deflate"}),
        "raw-deflate": (deflate(html, raw=True), {"Content-Encoding": "deflate"}),
        "br": (brotli.compress(html), {"Content-Encoding": "br"}),
        "chunked": (chunked(html), {"Transfer-Encoding": "chunked"}),
        "chunked-lf": (chunked(html, b"\n"), {"Transfer-Encoding": "chunked"}),
        "chunked-gzip": (chunked(gzip.compress(html)), {"Transfer-Encoding": "chunked", "Content-Encoding": "gzip"}),
        "stored-dechunked": (html, {"Transfer-Encoding": "chunked"}),  # crawlers that store the payload
        "bad-gzip": (gzip.compress(html)[:-30], {"Content-Encoding": "gzip"}),
        "bad-br": (b"\x0bnot brotli at all", {"Content-Encoding": "br"}),
        "bad-chunked": (chunked(html)[:150], {"Transfer-Encoding": "chunked"}),
    }
    parts = [record(f"http://site.example.com/{name}.html", http(body, headers)) for name, (body, headers) in bodies.items()]
    path, _ = write(tmp_path, "enc.warc.gz", parts, gz=True)
    recs = {r.url.rsplit("/", 1)[1][:-5]: r for r in read_warc(path)}
    for name in bodies:
        r = recs[name]
        if name.startswith("bad-"):
            assert r.status == "failed_to_decode" and r.error_message, name
        else:
            assert r.status == "success" and r.html == page(7), name


def test_charsets_declared_meta_sniffed(tmp_path):
    def rec(name: str, body: bytes, ctype: str) -> bytes:
        return record(f"http://site.example.com/{name}.html", http(body, {"Content-Type": ctype}))

    def doc(text: str, meta: str = "") -> str:
        return f"<html><head>{meta}<title>t</title></head><body><p>{text}</p></body></html>"

    parts = [
        rec("http-cp1251", doc(RUSSIAN).encode("cp1251"), "text/html; charset=windows-1251"),
        rec("meta-1252", doc(FRENCH, '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">')
            .encode("cp1252"), "text/html"),
        rec("meta5-sjis", doc(JAPANESE, '<meta charset="shift_jis">').encode("shift_jis"), "text/html"),
        rec("sniffed-cp1251", doc(RUSSIAN * 3).encode("cp1251"), "text/html"),
        rec("sniffed-utf8", doc(JAPANESE).encode("utf-8"), "text/html"),
        rec("wrong-declared", doc(RUSSIAN * 3).encode("cp1251"), "text/html; charset=utf-8"),
        rec("bom", b"\xef\xbb\xbf" + doc(FRENCH).encode("utf-8"), "text/html; charset=iso-8859-1"),
        rec("gb2312", doc("中华人民共和国是一个位于东亚的国家，人口众多，历史悠久。").encode("gb18030"), "text/html; charset=gb2312"),
    ]
    path, _ = write(tmp_path, "cs.warc", parts, gz=False)
    got = {r.url.rsplit("/", 1)[1][:-5]: r.html for r in read_warc(path)}
    assert RUSSIAN in got["http-cp1251"] and RUSSIAN in got["sniffed-cp1251"] and RUSSIAN in got["wrong-declared"]
    assert FRENCH in got["meta-1252"] and JAPANESE in got["meta5-sjis"] and JAPANESE in got["sniffed-utf8"]
    assert FRENCH in got["bom"] and not got["bom"].startswith("\ufeff")
    assert "中华人民共和国" in got["gb2312"]


def test_oversized_records_skipped_and_swallowing_ones_failed(tmp_path):
    big = record("http://site.example.com/big.html", http(b"<html>" + b"x" * 5000 + b"</html>"))
    lying = response(9, length=50_000)  # declares far more than there is: runs over the next records
    path, offsets = write(tmp_path, "big.warc", [response(1), big, lying, response(2), response(3)], gz=False)
    recs = list(read_warc(path, max_bytes=2000))
    assert [r.status for r in recs] == ["success", "skipped_too_large", "failed_truncated", "success", "success"]
    assert recs[2].source.endswith(f"@{offsets[2]}")


def test_compressed_bodies_are_capped_and_stored_decoded_ones_kept(tmp_path):
    html = page(3).encode()
    bomb = b"<html>" + b" " * 3_000_000 + b"</html>"
    parts = [record("http://site.example.com/gz-bomb.html", http(gzip.compress(bomb), {"Content-Encoding": "gzip"})),
             record("http://site.example.com/br-bomb.html", http(brotli.compress(bomb), {"Content-Encoding": "br"})),
             # Common Crawl and others store the payload decoded but some keep the header
             record("http://site.example.com/stored.html", http(html, {"Content-Encoding": "gzip"}))]
    path, _ = write(tmp_path, "bomb.warc.gz", parts, gz=True)
    recs = {r.url.rsplit("/", 1)[1]: r for r in read_warc(path, max_bytes=1_000_000)}
    assert recs["gz-bomb.html"].status == recs["br-bomb.html"].status == "skipped_too_large"
    assert recs["stored.html"].status == "success" and recs["stored.html"].html == page(3)
