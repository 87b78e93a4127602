"""Readers: WARC / WARC.gz, saved HTML files and URL lists -> one `Record` per input record.

Every record read comes out as a Record, whether it is a page or not, so a stage can account for
it: a warcinfo/request/metadata record is `skipped_warc_<type>`, a non-200 response
`skipped_http_status`, a non-HTML payload `skipped_not_html`, a malformed stretch of the file
`failed_to_read` (and reading resumes at the next record). FastWARC does the parsing (several times
faster than warcio); wget's `<angle-bracketed>` target URIs are unwrapped; the payload is decoded
with the HTTP charset, else the `<meta charset>`, else a detected one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec

HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


@dataclass
class Record:
    url: str
    html: str | None = None
    status: str = "success"
    error_message: str | None = None
    date: str | None = None
    source: str = ""  # file (and byte offset) the record came from


def decode(body: bytes, charset: str | None = None) -> str:
    """Bytes of an HTML page -> str, with the declared charset when it is a real one."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    enc = charset
    if not enc and (m := _META_CHARSET.search(body[:4096])):
        enc = m.group(1).decode("ascii", "replace")
    if enc:
        import codecs

        try:
            enc = codecs.lookup(enc).name
        except LookupError:
            enc = None
    return bytes_to_str(body, enc or detect_encoding(body))


def is_html(content_type: str | None, body: bytes) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower() in HTML_TYPES
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


# ---------------------------------------------------------------------------------------------
# WARC


def _resync(f, start: int, magic: bytes) -> int | None:
    """Offset of the next record start (`magic`) at or after `start`, or None at end of file."""
    f.seek(start)
    tail = b""
    pos = start
    while chunk := f.read(1 << 20):
        data = tail + chunk
        i = data.find(magic)
        if i >= 0:
            return pos - len(tail) + i
        tail = data[-(len(magic) - 1):]
        pos += len(chunk)
    return None


def read_warc(url: str, max_bytes: int = 10 << 20) -> Iterator[Record]:
    """Every record of a WARC or WARC.gz file, local or remote (fsspec)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with fsspec.open(url, "rb") as f:
        magic = GZIP_MAGIC if f.read(3) == GZIP_MAGIC else WARC_MAGIC
        offset = 0
        while offset is not None:
            f.seek(offset)
            last = offset
            try:
                for rec in ArchiveIterator(f, parse_http=False, record_types=WarcRecordType.any_type):
                    last = offset + rec.stream_pos
                    yield _warc_record(rec, f"{url}@{last}", max_bytes)
                offset = None
            except Exception as e:  # noqa: BLE001 -- FastWARC raises OSError/ValueError on garbage
                yield Record(url="", status="failed_to_read", error_message=f"malformed WARC data after offset {last}: {e}",
                             source=f"{url}@{last}")
                offset = _resync(f, last + 1, magic)


def _warc_record(rec, source: str, max_bytes: int) -> Record:
    h = rec.headers
    uri = (h.get("WARC-Target-URI") or "").strip().strip("<>")
    date = h.get("WARC-Date")
    kind = h.get("WARC-Type", "unknown").strip().lower()
    if kind != "response":
        rec.reader.consume() if hasattr(rec.reader, "consume") else rec.reader.read()
        return Record(uri, status=f"skipped_warc_{re.sub('[^a-z]', '_', kind)}", error_message=f"WARC {kind} record",
                      date=date, source=source)
    if rec.content_length > max_bytes:
        return Record(uri, status="skipped_too_large", error_message=f"{rec.content_length} bytes > {max_bytes}",
                      date=date, source=source)
    block = rec.reader.read()
    if not block.startswith(b"HTTP/"):
        return Record(uri, status="skipped_not_http", error_message="response record without an HTTP message",
                      date=date, source=source)
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = block.partition(b"\n\n")
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(maxsplit=2)
    code = parts[1] if len(parts) > 1 else "?"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if code != "200":
        return Record(uri, status="skipped_http_status", error_message=f"HTTP {code}", date=date, source=source)
    ctype = headers.get("content-type")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    if not is_html(ctype, body):
        return Record(uri, status="skipped_not_html", error_message=f"content type {ctype!r}", date=date, source=source)
    charset = None
    if ctype and (m := re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", ctype, re.IGNORECASE)):
        charset = m.group(1)
    try:
        return Record(uri, html=decode(body, charset), date=date, source=source)
    except Exception as e:  # noqa: BLE001
        return Record(uri, status="failed_to_decode", error_message=str(e), date=date, source=source)


def _dechunk(body: bytes) -> bytes:
    out, i = [], 0
    while i < len(body):
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        try:
            n = int(body[i:j].split(b";")[0], 16)
        except ValueError:
            return body  # not really chunked: keep what there is
        if n == 0:
            break
        out.append(body[j + 2 : j + 2 + n])
        i = j + 2 + n + 2
    return b"".join(out)


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
