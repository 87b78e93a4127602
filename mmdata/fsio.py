"""File-system I/O over fsspec: paths, brace patterns, reads, and atomic writes.

Every write is atomic: local files go to a temp name in the target folder and are renamed; object
stores get one upload of a finished local file, so a reader never sees a half-written object.
Temp names are `.{name}.{8 hex}.tmp` beside the target (`sweep_temp` removes a killed run's).
"""

from __future__ import annotations

import glob
import io
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import braceexpand
import fsspec
import xxhash
from fsspec.implementations.local import LocalFileSystem

# ---------------------------------------------------------------------------------------------
# paths and patterns


def fs_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(fs_path(url)[0], LocalFileSystem)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def expand(patterns: str | Iterable[str]) -> list[str]:
    """Brace patterns (`shards/{00000..00099}.tar`, `{a,b}`) and, on listable filesystems, globs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            if any(ch in url for ch in "*?[") and not url.startswith(("http://", "https://")):
                fs, path = fs_path(url)
                protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
                urls.extend(protocol + p if protocol else p for p in sorted(fs.glob(path)))
            else:
                urls.append(url)
    return urls


def exists(url: str) -> bool:
    fs, path = fs_path(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


# ---------------------------------------------------------------------------------------------
# atomic writes


# Digests of what this thread commits while a `recording()` is open: the engine's record of each
# shard's outputs (lineage), taken as the bytes are written instead of reading them back.
_recording = threading.local()


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@contextmanager
def recording() -> Iterator[dict[str, str]]:
    """Collects {url: digest} of every file this thread commits inside the block."""
    outer = getattr(_recording, "written", None)
    written: dict[str, str] = {}
    _recording.written = written
    try:
        yield written
    finally:
        _recording.written = outer
        if outer is not None:
            outer.update(written)


class AtomicFile:
    """A writable binary file that appears at `url` only on commit.

    Local: a hidden temp file beside the target, renamed on commit (same filesystem, so atomic).
    Remote: a local temp file uploaded in one put on commit. `write` keeps a running digest (xxh3,
    ~10 GB/s) that a `recording()` collects on commit.
    """

    def __init__(self, url: str):
        self.url = url
        self._hash = xxhash.xxh3_128()
        self.fs, self.path = fs_path(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            folder, name = os.path.split(self.path)
            os.makedirs(folder or ".", exist_ok=True)
            self.tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
            # closed by commit() or discard(): the file outlives this call on purpose
            self.file = open(self.tmp, "wb")  # noqa: SIM115
        else:
            self.file = tempfile.NamedTemporaryFile(prefix="mmdata-", suffix=".part", delete=False)  # noqa: SIM115
            self.tmp = self.file.name

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        written = getattr(_recording, "written", None)
        if written is not None:
            written[self.url] = self._hash.hexdigest()
        if self.local:
            os.replace(self.tmp, self.path)
        else:
            try:
                self.fs.put_file(self.tmp, self.path)
            finally:
                os.unlink(self.tmp)

    def discard(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def atomic_write(url: str, data: bytes) -> None:
    f = AtomicFile(url)
    try:
        f.write(data)
    except BaseException:
        f.discard()
        raise
    f.commit()


def write_json(url: str, obj: Any) -> None:
    atomic_write(url, json.dumps(obj, indent=1, sort_keys=True, default=json_default).encode())


def json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(url: str, table: Any) -> None:
    """Write a pandas DataFrame or pyarrow Table atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write(url, buf.getvalue())


def read_parquet(url: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        return pq.read_table(f, columns=columns).to_pandas()


def rm(url: str) -> None:
    """Remove a file if it is there."""
    fs, path = fs_path(url)
    if fs.exists(path):
        fs.rm(path)


def sweep_temp(folder: str, prefix: str = "") -> int:
    """Remove the temp files a killed writer left in a local folder (names starting with `prefix`);
    an object store never sees temp names. Returns how many went."""
    if not is_local(folder):
        return 0
    path = fs_path(folder)[1]
    gone = 0
    for tmp in glob.glob(os.path.join(glob.escape(path), f".{glob.escape(prefix)}*.tmp")):
        os.unlink(tmp)
        gone += 1
    return gone
