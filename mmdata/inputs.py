"""URL lists in every common format, read in a deterministic order, in bounded memory.

Formats (from the extension when `input_format` is auto; `.gz` on top of any is decompressed):
parquet, csv, tsv, jsonl, json (an array of objects), txt (one URL a line). `input` is a file, a
folder (every file of a known format inside, recursively, sorted by path), a glob or a brace
pattern, local or any fsspec URL. Rows come out in file order, then row order, so cutting them into
shards gives the same shards on every run.

A bad row is that row's problem, never the whole input's: bytes that are not UTF-8, a line that is
not JSON, a url that is missing, not a string, longer than `max_url_length` or holding bytes that
are not UTF-8, a csv line with more fields than its header (in a caption, such bytes become U+FFFD). Such a row comes out with its problem in the `ROW_ERROR` column
("line 7: not JSON: ..."), and the download stage records it as `skipped_invalid_url`. Text lines
are read at most `max_line_bytes` at a time, so one 1 GB line costs 1 MB of memory. A file that
cannot be read at all (not parquet, no url column, no header) raises `InputError`: one line naming
the file and the problem; the CLI exits 2.

Chunks are pyarrow Tables (`url`, `caption`, the carried columns, `ROW_ERROR`): arrow keeps an
integer column integer where pandas would turn it into floats at its first null.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator

import fsspec
import pyarrow as pa

from mmdata import fsio
from mmdata.config import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
ROW_ERROR = "_row_error"  # why a row is unusable; null for a good row
_CHUNK = 50_000
_OVERLONG = "\ufffe"  # stands in for a line over max_line_bytes (a noncharacter: never in real text)


class InputError(ConfigError):
    """An input file that cannot be read at all, phrased as one line naming the file."""


def detect(path: str, input_format: str = "auto") -> str:
    if input_format != "auto":
        return input_format
    name = path.lower().removesuffix(".gz")
    ext = name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
    if ext == "ndjson":
        return "jsonl"
    if ext not in FORMATS:
        raise InputError(f"{path}: cannot tell the format from the extension; set input_format")
    return ext


def files(spec: str | list[str], input_format: str = "auto") -> list[str]:
    """The input files a spec names; a folder means every file of a known format under it."""
    out: list[str] = []
    for url in fsio.expand(spec):
        fs, path = fsio.fs_path(url)
        if fs.isdir(path):
            protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
            found = sorted(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
            found = [p for p in found if input_format != "auto" or _known(p)]
            out += [protocol + p if protocol else p for p in found]
        elif fs.exists(path):
            out.append(url)
        else:
            raise InputError(f"input {url} does not exist")
    if not out:
        raise InputError(f"no input files in {spec}")
    return out


def _known(path: str) -> bool:
    try:
        detect(path)
        return True
    except InputError:
        return False


def _open(url: str):
    return fsspec.open(url, "rb", compression="gzip" if url.lower().endswith(".gz") else None)


# ---------------------------------------------------------------------------------------------
# bounded lines


def _lines(f, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, text) per line, each read at most max_line_bytes at a time. A longer line is
    skipped in pieces and comes out as `_OVERLONG`. Bytes that are not UTF-8 become U+FFFD: in a
    url that makes the row invalid (`_check_urls`), in a caption it stays visible."""
    n = 0
    while True:
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        n += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
            yield n, _OVERLONG + "\n"
            continue
        yield n, raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# readers: each yields (rows as dicts or a Table, per-row problems, positions) chunk by chunk


class _Rows:
    """One chunk of a text format: column -> values, plus each row's problem and position."""

    def __init__(self):
        self.cols: dict[str, list] = {}
        self.errors: list[str | None] = []
        self.where: list[str] = []
        self.n = 0

    def add(self, row: dict, where: str, problem: str | None = None) -> None:
        for k, v in row.items():
            col = self.cols.get(k)
            if col is None:
                col = self.cols[k] = [None] * self.n
            col.append(v)
        self.n += 1
        for col in self.cols.values():
            if len(col) < self.n:
                col.append(None)
        self.errors.append(f"{where}: {problem}" if problem else None)
        self.where.append(where)


def _csv(f, path: str, sep: str, max_line_bytes: int) -> Iterator[_Rows]:
    csv.field_size_limit(max(csv.field_size_limit(), max_line_bytes))
    overlong: set[int] = set()

    def text():
        for n, line in _lines(f, max_line_bytes):
            if line.startswith(_OVERLONG):
                overlong.add(n)
            yield line

    reader = csv.reader(text(), delimiter=sep)
    try:
        header = next(reader)
    except StopIteration:
        log.warning("%s: empty file, no rows", path)
        return
    except csv.Error as e:
        raise InputError(f"{path}: line 1: unreadable header: {e}") from None
    if not header or header == [_OVERLONG]:
        raise InputError(f"{path}: line 1: no header row")
    chunk, first = _Rows(), 2
    chunk.cols = {h: [] for h in header}  # a header without rows still names its columns
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a quote left open to the end of the file
            chunk.add({}, f"line {first}", str(e))
            first = reader.line_num + 1
            continue
        last = reader.line_num
        where = f"line {first}" if last == first else f"lines {first}-{last}"
        span = range(first, last + 1)
        first = last + 1
        if not fields:
            continue  # a blank line is no row
        problem = None
        if any(n in overlong for n in span):
            problem, fields = f"longer than max_line_bytes ({max_line_bytes})", []
        elif len(fields) > len(header):
            problem = f"{len(fields)} fields, the header has {len(header)}"
        chunk.add(dict(zip(header, fields)), where, problem)
        if chunk.n >= _CHUNK:
            yield chunk
            chunk = _Rows()
    if chunk.n or chunk.cols:
        yield chunk


def _jsonl(f, max_line_bytes: int) -> Iterator[_Rows]:
    chunk = _Rows()
    for n, line in _lines(f, max_line_bytes):
        if not line.strip():
            continue
        row, problem = {}, None
        if line.startswith(_OVERLONG):
            problem = f"longer than max_line_bytes ({max_line_bytes})"
        else:
            try:
                value = json.loads(line)
            except ValueError as e:
                value, problem = None, f"not JSON: {e}"
            if isinstance(value, dict):
                row = value
            elif problem is None:
                problem = f"a JSON {type(value).__name__}, not an object"
        chunk.add(row, f"line {n}", problem)
        if chunk.n >= _CHUNK:
            yield chunk
            chunk = _Rows()
    if chunk.n:
        yield chunk


def _json(f, path: str) -> Iterator[_Rows]:
    try:
        doc = json.load(io.TextIOWrapper(f, "utf-8", errors="strict"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON document: {e}") from None
    if not isinstance(doc, list):
        raise InputError(f"{path}: a JSON {type(doc).__name__}, expected an array of objects")
    chunk = _Rows()
    for i, value in enumerate(doc):
        if isinstance(value, dict):
            chunk.add(value, f"item {i + 1}")
        else:
            chunk.add({}, f"item {i + 1}", f"a JSON {type(value).__name__}, not an object")
    yield chunk


def _txt(f, url_col: str, max_line_bytes: int) -> Iterator[_Rows]:
    chunk = _Rows()
    for n, line in _lines(f, max_line_bytes):
        url = line.strip()
        if not url:
            continue
        if url.startswith(_OVERLONG):
            chunk.add({}, f"line {n}", f"longer than max_line_bytes ({max_line_bytes})")
        else:
            chunk.add({url_col: url}, f"line {n}")
        if chunk.n >= _CHUNK:
            yield chunk
            chunk = _Rows()
    if chunk.n:
        yield chunk


def _parquet(f, path: str) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from None
    try:
        empty = True
        for batch in pf.iter_batches(batch_size=_CHUNK):
            empty = False
            yield pa.Table.from_batches([batch])
        if empty:  # no rows: its columns are still checked
            yield pf.schema_arrow.empty_table()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: damaged parquet file: {e}") from None


# ---------------------------------------------------------------------------------------------
# columns


def _values_array(values: list) -> pa.Array:
    """An arrow array of JSON-ish values: one type where they share one, else their text."""
    plain = [json.dumps(v, ensure_ascii=False, sort_keys=True) if isinstance(v, dict | list) else v for v in values]
    try:
        return pa.array(plain)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in plain], pa.string())


def _texts(values: Iterable) -> list[str | None]:
    return [None if v is None else v if isinstance(v, str) else str(v) for v in values]


def _check_urls(urls: list, errors: list[str | None], positions: list[str], max_url_length: int) -> list[str | None]:
    """Row problems of the url column joined into `errors`; returns the urls to keep (capped)."""
    out = []
    for i, u in enumerate(urls):
        if errors[i] is None:
            if u is None or (isinstance(u, str) and not u.strip()):
                errors[i] = f"{positions[i]}: no url"
            elif not isinstance(u, str):
                errors[i] = f"{positions[i]}: url is a {type(u).__name__}, not a string: {str(u)[:100]}"
            elif len(u) > max_url_length:
                errors[i] = f"{positions[i]}: url of {len(u)} characters > max_url_length {max_url_length}"
            elif "\ufffd" in u:
                errors[i] = f"{positions[i]}: url has bytes that are not UTF-8"
        out.append(u[:max_url_length] if isinstance(u, str) else None if u is None else str(u)[:max_url_length])
    return out


def _table(path: str, fmt: str, chunk, first_row: int, *, url_col: str, caption_col: str | None,
           columns: list[str] | None, max_url_length: int) -> pa.Table:
    """One chunk as the standard columns: url, caption, carried..., ROW_ERROR."""
    if isinstance(chunk, pa.Table):
        names = chunk.column_names
        get = lambda c: chunk.column(c).to_pylist()
        arrays = lambda c: chunk.column(c)
        n, errors = chunk.num_rows, [None] * chunk.num_rows
        positions = [f"row {first_row + i + 1}" for i in range(n)]
    else:
        names = list(chunk.cols)
        get = lambda c: chunk.cols[c]
        arrays = lambda c: _values_array(chunk.cols[c])
        n, errors = chunk.n, list(chunk.errors)
        positions = chunk.where
    if url_col not in names and fmt != "txt" and (fmt in ("parquet", "csv", "tsv") or any(e is None for e in errors)):
        raise InputError(f"{path}: no url column {url_col!r} (columns: {', '.join(map(str, names)) or 'none'})")
    if caption_col and fmt not in ("txt", "jsonl", "json") and caption_col not in names:
        raise InputError(f"{path}: no caption column {caption_col!r} (set caption_col: null for none)")
    urls = get(url_col) if url_col in names else [None] * n
    if fmt == "parquet" and url_col in names and not pa.types.is_string(chunk.column(url_col).type) \
            and not pa.types.is_large_string(chunk.column(url_col).type):
        kind = chunk.column(url_col).type
        errors = [f"{positions[i]}: url column is {kind}, not text" for i in range(n)]
    urls = _check_urls(urls, errors, positions, max_url_length)
    caption = _texts(get(caption_col)) if caption_col and caption_col in names else [None] * n
    extra = columns if columns is not None else [c for c in names if c not in (url_col, caption_col)]
    if columns is not None and fmt in ("parquet", "csv", "tsv"):
        missing = [c for c in extra if c not in names]
        if missing:
            raise InputError(f"{path}: save_additional_columns not in the input: {', '.join(missing)}")
    out = {"url": pa.array(urls, pa.string()), "caption": pa.array(caption, pa.string())}
    for c in extra:
        if str(c) in out or str(c) == ROW_ERROR:
            continue
        out[str(c)] = arrays(c) if c in names else pa.nulls(n)
    out[ROW_ERROR] = pa.array([f"{path}: {e}" if e else None for e in errors], pa.string())
    return pa.table(out)


def read_file(url: str, fmt: str, *, url_col: str = "url", caption_col: str | None = "caption",
              columns: list[str] | None = None, max_url_length: int = 4096,
              max_line_bytes: int = 1 << 20) -> Iterator[pa.Table]:
    """One file as standard chunks (see `_table`)."""
    if fmt not in FORMATS:
        raise InputError(f"{url}: unknown input format {fmt!r}; known: {', '.join(FORMATS)}")
    kw = {"url_col": url_col, "caption_col": caption_col, "columns": columns, "max_url_length": max_url_length}
    try:
        with _open(url) as f:
            if fmt == "parquet":
                chunks = _parquet(f, url)
            elif fmt in ("csv", "tsv"):
                chunks = _csv(f, url, "," if fmt == "csv" else "\t", max_line_bytes)
            elif fmt == "jsonl":
                chunks = _jsonl(f, max_line_bytes)
            elif fmt == "json":
                chunks = _json(f, url)
            else:
                chunks = _txt(f, url_col, max_line_bytes)
            seen = 0
            for chunk in chunks:
                table = _table(url, fmt, chunk, seen, **kw)
                seen += table.num_rows
                yield table
    except (OSError, EOFError) as e:  # gzip and fsspec errors: the file itself is unreadable
        raise InputError(f"{url}: cannot read: {type(e).__name__}: {e}") from None


def rows(spec: str | list[str], *, input_format: str = "auto", url_col: str = "url", caption_col: str | None = "caption",
         columns: list[str] | None = None, max_url_length: int = 4096, max_line_bytes: int = 1 << 20) -> Iterator[pa.Table]:
    """Standard chunks (`url`, `caption`, carried columns, `ROW_ERROR`) of every input file in order."""
    for path in files(spec, input_format):
        yield from read_file(path, detect(path, input_format), url_col=url_col, caption_col=caption_col,
                             columns=columns, max_url_length=max_url_length, max_line_bytes=max_line_bytes)


# ---------------------------------------------------------------------------------------------
# one schema for chunks that disagree


def unify(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """One schema for tables whose columns differ in presence or type: null columns take the
    others' type, integers and floats become floats, any other disagreement becomes text."""
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            types.setdefault(f.name, []).append(f.type)
    fields = []
    for name, ts in types.items():
        known = {t for t in ts if not pa.types.is_null(t)}
        if not known:
            t = pa.string()  # never a null-typed column: readers of the set would disagree with later sets
        elif len(known) == 1:
            t = known.pop()
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in known):
            t = pa.float64()
        else:
            t = pa.string()
        fields.append(pa.field(name, t))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in order: missing ones null, others cast."""
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            if pa.types.is_string(f.type) and not pa.types.is_string(col.type):
                col = pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                                for v in col.to_pylist()], pa.string())
            else:
                col = col.cast(f.type)
        cols.append(col)
    return pa.table(cols, schema=schema)


def batches(spec, *, size: int, **kw) -> Iterator[pa.Table]:
    """`rows` cut into tables of exactly `size` rows (the last may be shorter), across files."""
    buf: list[pa.Table] = []
    held = 0
    for chunk in rows(spec, **kw):
        buf.append(chunk)
        held += chunk.num_rows
        while held >= size:
            merged = _concat(buf)
            yield merged.slice(0, size)
            rest = merged.slice(size)
            buf, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield _concat(buf)


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    schema = unify(t.schema for t in tables)
    return pa.concat_tables([conform(t, schema) for t in tables]).combine_chunks()
