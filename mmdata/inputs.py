"""URL lists in every common format, read in a deterministic order, in bounded memory.

Formats (from the extension when `input_format` is auto; `.gz` on top of any is decompressed):
parquet, csv, tsv, jsonl, json (an array of objects), txt (one URL a line). `input` is a file, a
folder (every file of a known format inside, recursively, sorted by path), a glob or a brace
pattern, local or any fsspec URL. Rows come out in file order, then row order, so cutting them into
shards gives the same shards on every run.
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import pandas as pd

from mmdata import fsio

FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
_CHUNK = 50_000


def detect(path: str, input_format: str = "auto") -> str:
    if input_format != "auto":
        return input_format
    name = path.lower().removesuffix(".gz")
    ext = name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
    if ext == "ndjson":
        return "jsonl"
    if ext not in FORMATS:
        raise ValueError(f"{path}: cannot tell the format from the extension; set input_format")
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
            raise FileNotFoundError(f"input {url} does not exist")
    if not out:
        raise FileNotFoundError(f"no input files in {spec}")
    return out


def _known(path: str) -> bool:
    try:
        detect(path)
        return True
    except ValueError:
        return False


def _open(url: str):
    return fsspec.open(url, "rb", compression="gzip" if url.lower().endswith(".gz") else None)


def read_file(url: str, fmt: str, url_col: str = "url") -> Iterator[pd.DataFrame]:
    """One file as DataFrame chunks; strings stay strings (no number guessing on csv)."""
    with _open(url) as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(f).iter_batches(batch_size=_CHUNK):
                yield batch.to_pandas()
        elif fmt in ("csv", "tsv"):
            yield from pd.read_csv(f, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False,
                                   na_values=[""], chunksize=_CHUNK)
        elif fmt == "jsonl":
            yield from pd.read_json(f, lines=True, dtype=False, chunksize=_CHUNK)
        elif fmt == "json":
            yield pd.read_json(f, dtype=False)
        elif fmt == "txt":
            lines = [s.strip() for s in f.read().decode("utf-8").splitlines()]
            yield pd.DataFrame({url_col: [s for s in lines if s]})
        else:
            raise ValueError(f"unknown input format {fmt!r}; known: {', '.join(FORMATS)}")


def rows(spec: str | list[str], *, input_format: str = "auto", url_col: str = "url", caption_col: str | None = "caption",
         columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Chunks with `url`, `caption` (None where the input has none) and the carried columns."""
    for path in files(spec, input_format):
        fmt = detect(path, input_format)
        for chunk in read_file(path, fmt, url_col):
            if url_col not in chunk.columns:
                raise ValueError(f"{path}: no url column {url_col!r} (columns: {', '.join(map(str, chunk.columns))})")
            if caption_col and fmt != "txt" and caption_col not in chunk.columns:
                raise ValueError(f"{path}: no caption column {caption_col!r} (set caption_col: null for none)")
            extra = columns if columns is not None else [c for c in chunk.columns if c not in (url_col, caption_col)]
            missing = [c for c in extra if c not in chunk.columns]
            if missing:
                raise ValueError(f"{path}: save_additional_columns not in the input: {', '.join(missing)}")
            out = pd.DataFrame({
                "url": chunk[url_col].astype(object).where(chunk[url_col].notna(), None),
                "caption": (chunk[caption_col].astype(object).where(chunk[caption_col].notna(), None)
                            if caption_col and caption_col in chunk.columns else None),
            })
            for c in extra:
                out[str(c)] = chunk[c].to_numpy()
            yield out


def batches(spec, *, size: int, **kw) -> Iterator[pd.DataFrame]:
    """`rows` cut into frames of exactly `size` rows (the last may be shorter), across files."""
    buf: list[pd.DataFrame] = []
    held = 0
    for chunk in rows(spec, **kw):
        buf.append(chunk)
        held += len(chunk)
        while held >= size:
            merged = pd.concat(buf, ignore_index=True)
            yield merged.iloc[:size].reset_index(drop=True)
            rest = merged.iloc[size:]
            buf, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield pd.concat(buf, ignore_index=True)
