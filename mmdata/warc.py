"""Readers: WARC / WARC.gz, saved HTML files and URL lists -> one `Record` per input record.

Every record read comes out as a Record, whether it is a page or not, so a stage can account for
it: a warcinfo/request/metadata record is `skipped_warc_<type>`, a non-200 response
`skipped_http_status`, a non-HTML payload `skipped_not_html`, an oversized one `skipped_too_large`.
Damage is a row too, once, with the raw byte offset of the bad bytes in `source` and the message:

- `failed_truncated`: a record cut short: the file (or its gzip member) ends before the
  Content-Length it declares, or the declared length runs over the next record's header. Reading
  resumes at that next record.
- `failed_to_read`: bytes that are no WARC record (garbage between records, a header without
  Content-Length), or a gzip member that does not decompress (one row per member; reading resumes
  at the next member).
- `failed_to_decode`: an HTTP body whose Content-Encoding or chunked framing is broken.

The reader is our own, streaming, over gzip members with `zlib` (so it knows where each member
starts and ends) or over an uncompressed file; WARC/1.0, 1.1 and the older 0.17/0.18 (ClueWeb)
headers; CRLF or bare LF line ends in both WARC and HTTP headers. The HTTP body is de-chunked and
decoded (`Content-Encoding` gzip, deflate, br); the text's charset is, in order, a byte-order mark,
the HTTP header's, the page's `<meta>` one, else detected (a declared charset the bytes do not
decode with is ignored). wget's `<angle-bracketed>` target URIs are unwrapped.
"""

from __future__ import annotations

import bisect
import codecs
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec

HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MAGIC = b"\x1f\x8b\x08"
_RECORD = re.compile(rb"WARC/(?:1\.[01]|0\.1[78])\r?\n")
_BLANK = re.compile(rb"\r?\n\r?\n")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
MAX_HEADER = 1 << 16  # a WARC or HTTP header block longer than this is not one
CHUNK = 1 << 16
# labels browsers read as a superset (WHATWG Encoding): decoding with the label itself fails on
# bytes every browser shows
_SUPERSET = {"iso8859-1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
             "euc_kr": "cp949", "iso8859-9": "cp1254", "tis-620": "cp874", "iso8859-11": "cp874", "shift_jis": "cp932",
             "big5": "big5hkscs", "utf-16-le": "utf-8", "utf-16-be": "utf-8", "utf-16": "utf-8"}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


@dataclass
class Record:
    url: str
    html: str | None = None
    status: str = "success"
    error_message: str | None = None
    date: str | None = None
    source: str = ""  # file (and byte offset) the record came from


# ---------------------------------------------------------------------------------------------
# text


def _codec(label: str | bytes | None) -> str | None:
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "replace")
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return _SUPERSET.get(name, name)


def decode(body: bytes, charset: str | None = None) -> str:
    """Bytes of an HTML page -> str: BOM, else the declared (HTTP, then <meta>) charset when the
    bytes decode with it, else a detected one."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    for bom, enc in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(enc, "replace")
    meta = _META_CHARSET.search(body[:4096])
    for enc in (_codec(charset), _codec(meta.group(1)) if meta else None):
        if enc:
            try:
                return body.decode(enc)
            except UnicodeDecodeError:
                continue  # a wrong declaration: the bytes say otherwise
    return bytes_to_str(body, detect_encoding(body))


def is_html(content_type: str | None, body: bytes) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower() in HTML_TYPES
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


# ---------------------------------------------------------------------------------------------
# HTTP messages


class BodyError(ValueError):
    """An HTTP body whose framing or encoding is broken."""


def parse_http(block: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """(status code, lower-cased headers, body) of an HTTP response; the header block ends at the
    first empty line, whether lines end in CRLF or a bare LF."""
    m = _BLANK.search(block, 0, MAX_HEADER)
    head, body = (block[: m.start()], block[m.end():]) if m else (block, b"")
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(maxsplit=2) if lines else []
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            k = k.strip().lower()
            headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
    return code, headers, body


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body; a body that does not start with a chunk size is returned as
    it is (some crawlers store the payload de-chunked and keep the header)."""
    out, i, n = [], 0, len(body)
    first = True
    while True:
        j = body.find(b"\n", i)
        if j < 0:
            if first:
                return body
            raise BodyError(f"chunked body ends inside a chunk-size line at byte {i}")
        size = body[i:j].split(b";")[0].strip()
        try:
            length = int(size, 16)
        except ValueError:
            if first:
                return body
            raise BodyError(f"bad chunk size {size[:20]!r} at byte {i}") from None
        first = False
        if length == 0:
            return b"".join(out)
        start = j + 1
        if start + length > n:
            raise BodyError(f"chunk of {length} bytes at byte {start} runs past the end ({n} bytes)")
        out.append(body[start : start + length])
        i = start + length
        i += 2 if body.startswith(b"\r\n", i) else 1 if body.startswith(b"\n", i) else 0


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding (gzip, deflate, br, in the order applied); at most `limit` bytes out.
    A body that is markup already (a crawler that stored it decoded and kept the header) is kept."""
    for enc in reversed([e.strip().lower() for e in encoding.split(",") if e.strip()]):
        if enc in ("identity", "none") or body.lstrip()[:1] == b"<":
            continue
        if enc in ("gzip", "x-gzip", "deflate"):
            # deflate is zlib-wrapped per RFC, raw in practice; gzip may be several members
            for wbits in ((47,) if enc != "deflate" else (15, -15)):
                d = zlib.decompressobj(wbits)
                try:
                    out = d.decompress(body, limit + 1)
                    while d.eof and d.unused_data.startswith(b"\x1f\x8b") and len(out) <= limit:
                        rest = d.unused_data
                        d = zlib.decompressobj(wbits)
                        out += d.decompress(rest, limit + 1 - len(out))
                except zlib.error as e:
                    if wbits == 15:
                        continue
                    raise BodyError(f"{enc} body does not decompress: {e}") from None
                if len(out) > limit:
                    raise OverflowError(f"{enc} body inflates past {limit} bytes")
                if not d.eof:
                    raise BodyError(f"{enc} body is cut short ({len(body)} bytes in)")
                body = out
                break
        elif enc == "br":
            import brotli

            d = brotli.Decompressor()
            try:
                out = d.process(body, output_buffer_limit=limit + 1)
            except brotli.error as e:
                raise BodyError(f"br body does not decompress: {e}") from None
            if len(out) > limit:
                raise OverflowError(f"br body inflates past {limit} bytes")
            if not d.is_finished():
                raise BodyError(f"br body is cut short ({len(body)} bytes in)")
            body = out
        else:
            raise BodyError(f"unknown Content-Encoding {enc!r}")
    return body


# ---------------------------------------------------------------------------------------------
# WARC: a byte stream of records, from gzip members or a plain file


class _Break(Exception):
    """Where the bytes stop being readable: a gzip member that does not decompress or that the
    file's end cuts short."""

    def __init__(self, offset: int, message: str, truncated: bool = False):
        super().__init__(message)
        self.offset, self.truncated = offset, truncated


class _Stream:
    """The decompressed bytes of a WARC file, read forward, with the raw offset they came from.

    `buf[i]` is logical byte `base + i`. In a gzip file, `starts` holds the logical offset where
    each member's bytes begin and `raws` its raw offset. A member that does not decompress ends the
    readable bytes: `fill` stops there (`broken`) and `cross()`, after its one failed row, goes on at
    the next member that decompresses.
    """

    def __init__(self, f, gz: bool):
        self.f, self.gz = f, gz
        self.buf = bytearray()
        self.base = 0
        self.raw = 0  # raw offset of `pending[0]`
        self.pending = b""  # raw bytes read, not yet decompressed
        self.member: zlib._Decompress | None = None
        self.starts: list[int] = []
        self.raws: list[int] = []
        self.broken: _Break | None = None
        self.garbage: list[tuple[int, int]] = []  # (raw offset, size) of bytes between members that are none
        self.eof = False

    def _more(self) -> bool:
        data = self.f.read(CHUNK)
        if data:
            self.pending += data
        return bool(data)

    def _grow(self) -> bool:
        """One more piece into buf; False at the end of the data or at a break."""
        if self.broken is not None or self.eof:
            return False
        if not self.gz:
            if not self.pending and not self._more():
                self.eof = True
                return False
            self.buf += self.pending
            self.raw += len(self.pending)
            self.pending = b""
            return True
        while True:
            if self.member is None:
                while len(self.pending) < 3 and self._more():
                    pass
                if not self.pending:
                    self.eof = True
                    return False
                if not self.pending.startswith(GZIP_MAGIC):
                    self._skip_garbage()
                    continue
                self.member = zlib.decompressobj(31)
                self.starts.append(self.base + len(self.buf))
                self.raws.append(self.raw)
            if not self.pending and not self._more():
                self.broken = _Break(self.raws[-1], "gzip member cut short by the end of the file", truncated=True)
                return False
            data, self.pending = self.pending, b""
            try:
                out = self.member.decompress(data)
            except zlib.error as e:
                self.broken = _Break(self.raws[-1], f"gzip member does not decompress: {e}")
                return False
            if self.member.eof:
                self.pending = self.member.unused_data
                self.member = None
            self.raw += len(data) - len(self.pending)
            if out:
                self.buf += out
                return True

    def _skip_garbage(self) -> None:
        """Bytes between gzip members that start none: skip to the next member (or the end)."""
        off, n, blank = self.raw, 0, True
        while True:
            i = self.pending.find(GZIP_MAGIC)
            cut = i if i >= 0 else max(len(self.pending) - 2, 0)
            blank = blank and not self.pending[:cut].strip(b"\r\n\t \x00")
            n += cut
            self.raw += cut
            self.pending = self.pending[cut:]
            if i >= 0:
                break
            if not self._more():
                n += len(self.pending)
                blank = blank and not self.pending.strip(b"\r\n\t \x00")
                self.raw += len(self.pending)
                self.pending = b""
                break
        if not blank:  # padding at the end of a file is no damage
            self.garbage.append((off, n))

    def cross(self) -> None:
        """Past a broken member: drop what is buffered, go on at the next member that decompresses."""
        pos = self.broken.offset + 1
        self.broken, self.member, self.pending = None, None, b""
        self.base += len(self.buf)
        self.buf = bytearray()
        while (nxt := _find(self.f, pos, GZIP_MAGIC)) is not None:
            self.f.seek(nxt)
            head = self.f.read(CHUNK)
            try:  # a member's header and first bytes decompress; a chance match inside one does not
                zlib.decompressobj(31).decompress(head, 1)
            except zlib.error:
                pos = nxt + 1
                continue
            self.pending, self.raw = head, nxt
            return
        self.eof = True

    def fill(self, n: int) -> int:
        """At least n bytes in buf (fewer at the end or at a break); returns how many there are."""
        while len(self.buf) < n and self._grow():
            pass
        return len(self.buf)

    def consume(self, n: int) -> None:
        del self.buf[:n]
        self.base += n

    def search(self, pattern: re.Pattern, limit: int) -> re.Match | None:
        """First match of pattern in the first `limit` bytes, reading on as needed."""
        while True:
            m = pattern.search(self.buf, 0, limit)
            if m is not None or len(self.buf) >= limit or not self._grow():
                return m

    def raw_at(self, i: int) -> int:
        """Raw offset of buf[i]: the byte itself in a plain file, its gzip member's start otherwise."""
        logical = self.base + i
        if not self.gz:
            return logical
        k = bisect.bisect_right(self.starts, logical) - 1
        return self.raws[k] if k >= 0 else 0

    def next_record(self, lo: int, hi: int | None = None) -> int | None:
        """Index in buf of the first record header at or after lo (before hi; reading on when hi is
        None): at the start of a gzip member, or at a line start, followed by WARC- fields."""
        while True:
            end = len(self.buf) if hi is None else min(hi, len(self.buf))
            best = None
            k = bisect.bisect_left(self.starts, self.base + lo)
            while k < len(self.starts) and self.starts[k] - self.base < end:
                i = self.starts[k] - self.base
                if _RECORD.match(self.buf, i) and _fields(self.buf, i):
                    best = i
                    break
                k += 1
            for m in _RECORD.finditer(self.buf, lo, end):
                if best is not None and m.start() >= best:
                    break
                if _fields(self.buf, m.start()):
                    best = m.start()
                    break
            if best is not None or hi is not None or not self._grow():
                return best


def _fields(buf: bytearray, i: int) -> bool:
    """A record header starts at buf[i]: its first lines hold WARC-Type or WARC-Record-ID."""
    head = bytes(buf[i : i + 2048])
    m = _BLANK.search(head)
    head = head[: m.start()] if m else head
    return b"\nWARC-Type:" in head or b"\nWARC-Record-ID:" in head or b"\nwarc-type:" in head.lower()


def _find(f, start: int, magic: bytes) -> int | None:
    """Raw offset of the next `magic` at or after `start`, or None."""
    f.seek(start)
    tail, pos = b"", start
    while chunk := f.read(1 << 20):
        data = tail + chunk
        i = data.find(magic)
        if i >= 0:
            return pos - len(tail) + i
        tail = data[-(len(magic) - 1):]
        pos += len(chunk)
    return None


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    last = None
    for line in head.decode("utf-8", "replace").splitlines()[1:]:
        if line[:1] in (" ", "\t") and last:  # a folded continuation line
            out[last] += " " + line.strip()
            continue
        k, sep, v = line.partition(":")
        if sep:
            last = k.strip().lower()
            out[last] = v.strip()
    return out


def read_warc(url: str, max_bytes: int = 10 << 20) -> Iterator[Record]:
    """Every record of a WARC or WARC.gz file, local or remote (fsspec), and a row per damage."""
    with fsspec.open(url, "rb") as f:
        gz = f.read(3) == GZIP_MAGIC
        f.seek(0)
        yield from _records(_Stream(f, gz), url, max_bytes)


# a declared length this much past its payload's end is a miscount (ClueWeb's are often off by a
# few bytes), not a record cut short
_SLACK = 8


def _records(s: _Stream, url: str, max_bytes: int) -> Iterator[Record]:
    def row(status: str, message: str, at: int, uri: str = "", date: str | None = None) -> Record:
        where = f"gzip member at offset {at}" if s.gz else f"offset {at}"
        return Record(uri, status=status, error_message=f"{message} ({where})", date=date, source=f"{url}@{at}")

    def broken(uri: str = "", date: str | None = None) -> Record:
        b = s.broken
        s.cross()
        return row("failed_truncated" if b.truncated else "failed_to_read", str(b), b.offset, uri, date)

    def garbage() -> Iterator[Record]:
        for off, n in s.garbage:
            yield Record("", status="failed_to_read", error_message=f"{n} bytes that are no gzip member (offset {off})",
                         source=f"{url}@{off}")
        s.garbage.clear()

    while True:
        yield from garbage()
        while s.fill(1) and s.buf[0] in b"\r\n\t ":  # the blank lines that end the previous record
            s.consume(len(s.buf) - len(s.buf.lstrip(b"\r\n\t ")))
        if not s.buf:
            if s.broken is not None:
                yield broken()
                continue
            yield from garbage()
            return
        at = s.raw_at(0)
        s.fill(16)
        if not _RECORD.match(s.buf):
            nxt = s.next_record(1)
            if nxt is None and s.broken is not None:
                yield broken()
                continue
            end = len(s.buf) if nxt is None else nxt
            yield row("failed_to_read", f"{end} bytes that are no WARC record", at)
            s.consume(end)
            continue
        m = s.search(_BLANK, MAX_HEADER)
        if m is None:
            if s.broken is not None:
                yield broken()
                continue
            nxt = s.next_record(1)
            yield row("failed_truncated" if nxt is None else "failed_to_read",
                      "WARC header without its end" + ("" if nxt is None else " before the next record"), at)
            s.consume(len(s.buf) if nxt is None else nxt)
            continue
        h = _headers(bytes(s.buf[: m.start()]))
        start = m.end()
        uri = (h.get("warc-target-uri") or "").strip().strip("<>")
        date = h.get("warc-date")
        declared = h.get("content-length", "").strip()
        if not declared.isdigit():
            nxt = s.next_record(start)
            yield row("failed_to_read", f"WARC header without a valid Content-Length ({declared!r})", at, uri, date)
            s.consume(len(s.buf) if nxt is None else nxt)
            continue
        length = int(declared)
        if length > max_bytes:
            yield _skip(s, start, length, at, uri, date, max_bytes, row, broken, url)
            continue
        have = s.fill(start + length + 4 + _SLACK) - start
        end = start + length
        inner = s.next_record(start + 1, min(end, len(s.buf)))  # a record inside the declared block
        if inner is None and have >= length and _ends(s.buf, end):
            block = bytes(s.buf[start:end])
        elif inner is not None:
            stop = len(s.buf[:inner].rstrip(b"\r\n"))
            if stop < end - _SLACK:
                yield row("failed_truncated", f"record declares {length} bytes, the next record starts after "
                          f"{stop - start}", at, uri, date)
                s.consume(inner)
                continue
            block, end = bytes(s.buf[start:stop]), inner
        elif have < length:
            if s.broken is not None:
                yield broken(uri, date)
                continue
            yield row("failed_truncated", f"record declares {length} bytes, {have} present", at, uri, date)
            s.consume(len(s.buf))
            continue
        else:  # no blank line after the declared bytes: the payload runs on to the next record
            nxt = s.next_record(end)
            end = len(s.buf) if nxt is None else nxt
            block = bytes(s.buf[start:end]).rstrip(b"\r\n")
        rec = _record(h, block, uri, date, f"{url}@{at}", max_bytes)
        s.consume(end)
        yield rec


def _ends(buf: bytearray, end: int) -> bool:
    """A block is followed by the blank lines that end its record, or by the end of the data."""
    return end >= len(buf) or buf[end] in (10, 13)


def _skip(s: _Stream, start: int, length: int, at: int, uri: str, date: str | None, max_bytes: int, row, broken,
          url: str) -> Record:
    """An oversized record: read past its block without keeping it. A record header inside the
    declared block means this one was cut short."""
    s.consume(start)
    left = length
    while left > 0:
        have = s.fill(min(left, CHUNK) + 4 + _SLACK)
        if have == 0:
            if s.broken is not None:
                return broken(uri, date)
            return row("failed_truncated", f"record declares {length} bytes, {length - left} present", at, uri, date)
        inner = s.next_record(1, min(left, have))
        if inner is not None:
            stop = len(s.buf[:inner].rstrip(b"\r\n"))
            s.consume(inner)
            if stop < left - _SLACK:
                return row("failed_truncated", f"record declares {length} bytes, the next record starts after "
                           f"{length - left + stop}", at, uri, date)
            break
        # keep a few bytes: a record header may straddle the next read
        step = min(left, have) if have <= left or have < 64 else max(min(left, have) - 64, 1)
        s.consume(step)
        left -= step
    return Record(uri, status="skipped_too_large", error_message=f"{length} bytes > {max_bytes}", date=date,
                  source=f"{url}@{at}")


def _record(h: dict[str, str], block: bytes, uri: str, date: str | None, source: str, max_bytes: int) -> Record:
    kind = h.get("warc-type", "unknown").strip().lower()
    if kind != "response":
        return Record(uri, status=f"skipped_warc_{re.sub('[^a-z]', '_', kind)}", error_message=f"WARC {kind} record",
                      date=date, source=source)
    if not block.startswith(b"HTTP/"):
        return Record(uri, status="skipped_not_http", error_message="response record without an HTTP message",
                      date=date, source=source)
    code, headers, body = parse_http(block)
    if code != 200:
        return Record(uri, status="skipped_http_status", error_message=f"HTTP {code}", date=date, source=source)
    ctype = headers.get("content-type")
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = dechunk(body)
        if headers.get("content-encoding"):
            body = decode_content(body, headers["content-encoding"], max_bytes)
    except OverflowError as e:
        return Record(uri, status="skipped_too_large", error_message=str(e), date=date, source=source)
    except BodyError as e:
        return Record(uri, status="failed_to_decode", error_message=str(e), date=date, source=source)
    if not is_html(ctype, body):
        return Record(uri, status="skipped_not_html", error_message=f"content type {ctype!r}", date=date, source=source)
    charset = m.group(1) if ctype and (m := _HTTP_CHARSET.search(ctype)) else None
    try:
        return Record(uri, html=decode(body, charset), date=date, source=source)
    except Exception as e:  # noqa: BLE001
        return Record(uri, status="failed_to_decode", error_message=str(e), date=date, source=source)


# ---------------------------------------------------------------------------------------------
# HTML files and URL lists


def read_html(url: str) -> Record:
    """A saved page; its document URL comes from its canonical link when it has one (html.page_base)."""
    try:
        with fsspec.open(url, "rb", compression="infer") as f:
            body = f.read()
    except OSError as e:
        return Record(url, status="failed_to_read", error_message=str(e), source=url)
    page_url = url if "://" in url else f"file://{url}"
    try:
        return Record(page_url, html=decode(body), source=url)
    except Exception as e:  # noqa: BLE001
        return Record(page_url, status="failed_to_decode", error_message=str(e), source=url)


def read_url_list(url: str) -> list[str]:
    """Page URLs from a .txt (one per line) or .parquet/.csv/.jsonl (column `url`)."""
    if url.endswith((".txt", ".txt.gz", ".lst")):
        with fsspec.open(url, "rt", compression="infer") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    import pandas as pd

    with fsspec.open(url, "rb", compression="infer") as f:
        if url.endswith(".parquet"):
            df = pd.read_parquet(f)
        elif url.endswith((".jsonl", ".jsonl.gz")):
            df = pd.read_json(f, lines=True)
        else:
            df = pd.read_csv(f)
    return [str(u) for u in df["url"]]


def fetch_pages(urls: list[str], fetch: Callable[[list[str]], list]) -> Iterator[Record]:
    """Pages fetched through the download stage's client (politeness, SSRF guard, opt-out)."""
    results = fetch(urls)
    for url, res in zip(urls, results, strict=True):
        if res.status != "success":
            status = res.status if res.status.startswith(("failed_to_", "skipped_")) else f"failed_to_{res.status}"
            yield Record(url, status=status, error_message=res.error_message or res.status, source=url)
            continue
        body = res.body or b""
        ctype = getattr(res, "content_type", None)
        if not is_html(ctype, body):
            yield Record(url, status="skipped_not_html", error_message=f"content type {ctype!r}", source=url)
            continue
        yield Record(url, html=decode(body), source=url)
