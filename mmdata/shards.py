"""Shard I/O over fsspec: atomic writes, webdataset tars, brace patterns.

A sample is a dict `{"__key__": key, ext: value, ...}` as webdataset has it: `jpg`, `txt`, `json`,
and for interleaved documents `0.jpg`, `1.jpg`, ... Values are bytes on read; on write str and
dict/list are encoded (utf-8, json). Tars are written deterministically (fixed mtime, owner and
mode, members in a fixed order) so that the same samples give the same bytes.

Every write is atomic: local files go to a temp name in the target folder and are renamed; object
stores get one upload of a finished local file, so a reader never sees a half-written object.
Pickle is never decoded: values stay bytes unless asked for through `decode`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import braceexpand
import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

TAR_MTIME = 0  # fixed so that identical samples give identical shard bytes
META_KEYS = ("__key__", "__url__")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardError(Exception):
    """A shard that cannot be read or written, with the shard named."""


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


class _AtomicFile:
    """A writable binary file that appears at `url` only on commit.

    Local: a hidden temp file beside the target, renamed on commit (same filesystem, so atomic).
    Remote: a local temp file uploaded in one put on commit.
    """

    def __init__(self, url: str):
        self.url = url
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

    def commit(self) -> None:
        self.file.close()
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
    f = _AtomicFile(url)
    try:
        f.file.write(data)
    except BaseException:
        f.discard()
        raise
    f.commit()


def write_json(url: str, obj: Any) -> None:
    atomic_write(url, json.dumps(obj, indent=1, sort_keys=True, default=_json_default).encode())


def _json_default(o: Any) -> Any:
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


# ---------------------------------------------------------------------------------------------
# samples <-> tar members


def check_key(key: str) -> str:
    if not key or "." in key or "/" in key or "\\" in key or key.startswith("_"):
        raise ShardError(f"invalid sample key {key!r}: no dots, slashes or leading underscore")
    return key


def encode_value(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=_json_default).encode()
    raise ShardError(f"cannot encode a {type(value).__name__} into a shard")


def _member_order(ext: str) -> tuple:
    # json first (readers that index a tar see the metadata early), then the rest by name with
    # numbered image slots in numeric order.
    head, _, tail = ext.partition(".")
    return (ext != "json", int(head) if head.isdigit() else -1, tail if head.isdigit() else ext)


def sample_members(sample: dict) -> list[tuple[str, bytes]]:
    key = check_key(str(sample["__key__"]))
    exts = sorted((k for k in sample if k not in META_KEYS), key=_member_order)
    if not exts:
        raise ShardError(f"sample {key} has no fields")
    out = []
    for ext in exts:
        if not ext or "/" in ext or ".." in ext or ext.startswith("."):
            raise ShardError(f"sample {key}: invalid field name {ext!r}")
        out.append((f"{key}.{ext}", encode_value(sample[ext])))
    return out


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


# Everything of a member header but its name, size and checksum is fixed, so the header is
# assembled from constant parts: tarfile's generic header code was most of a shard's write time.
_HEAD_MODE_IDS = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)
_HEAD_TAIL = (
    b"0"  # regular file
    + bytes(100)  # linkname
    + tarfile.POSIX_MAGIC
    + bytes(32 + 32)  # uname, gname
    + bytes(8 + 8)  # devmajor, devminor (empty for regular files, as tarfile writes them)
    + bytes(155 + 12)  # prefix, padding to 512
)


def member_header(name: str, size: int) -> bytes:
    """The tar header tarfile would write for this member (PAX format, fixed owner/mode/mtime)."""
    raw = name.encode("utf-8")
    if not name.isascii() or len(raw) > 100:  # tarfile needs a PAX extended header for these
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, TAR_MTIME, 0o644, 0, 0, "", ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    head = raw.ljust(100, b"\0") + _HEAD_MODE_IDS + _octal(size, 12) + _octal(TAR_MTIME, 12)
    checksum = sum(head) + 8 * 32 + sum(_HEAD_TAIL)  # the checksum field counts as spaces
    return head + b"%06o\0 " % checksum + _HEAD_TAIL


def safe_member(name: str) -> bool:
    """Only plain relative names: no absolute paths, no parent references, no drive letters."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return False
    return ".." not in name.split("/")


def split_name(name: str) -> tuple[str, str]:
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def iter_tar(fileobj, source: str = "<stream>") -> Iterator[dict]:
    """Stream samples out of an (optionally compressed) tar, grouping members by key."""
    current: dict | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if not safe_member(member.name):
                    log.warning("%s: skipped unsafe tar member %r", source, member.name)
                    continue
                key, ext = split_name(member.name)
                if not ext:
                    continue
                data = tar.extractfile(member).read()
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": source}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{source}: unreadable tar: {e}") from e
    if current is not None:
        yield current


def read_shard(url: str) -> Iterator[dict]:
    with fsspec.open(url, "rb") as f:
        yield from iter_tar(f, url)


def read_shards(patterns: str | Iterable[str]) -> Iterator[dict]:
    """Every sample of every shard named by `patterns` (local, s3://, http://, brace patterns)."""
    for url in expand(patterns):
        yield from read_shard(url)


def image_member(sample: dict, index: int | None = None) -> bytes | None:
    """A sample's image bytes (`jpg`, `png`, ...), or an interleaved slot's (`{index}.jpg`); None if absent."""
    prefix = "" if index is None else f"{index}."
    return next((sample[prefix + e] for e in IMAGE_EXTS if prefix + e in sample), None)


def decode(sample: dict) -> dict:
    """json -> object and txt -> str; everything else stays bytes (pickle is never decoded)."""
    out = {}
    for k, v in sample.items():
        if k in META_KEYS:
            out[k] = v
        elif k == "json" or k.endswith(".json"):
            out[k] = json.loads(v)
        elif k == "txt" or k.endswith(".txt"):
            out[k] = v.decode("utf-8")
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# writers


@dataclass
class ShardInfo:
    url: str
    count: int
    bytes: int
    sha256: str | None  # None from a sink made with checksum=False


class TarSink:
    """One shard: samples go to a temp file; `commit()` makes it appear, `discard()` drops it.

    The bytes are those of `tarfile` in PAX format with fixed owner, mode and mtime (readable by
    every tar reader); headers are built directly because that is most of the cost of writing.
    An empty sink commits nothing (Energon and others refuse empty tars), so `commit()` returns None.
    `checksum=False` skips the running sha256 (a hot path that never publishes it).
    """

    def __init__(self, url: str, checksum: bool = True):
        self.url = url
        self.count = 0
        self.size = 0
        self._file: _AtomicFile | None = None
        self._hash = hashlib.sha256() if checksum else None

    def _write(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._file.file.write(data)
        self.size += len(data)

    def write(self, sample: dict) -> None:
        members = sample_members(sample)
        if self._file is None:
            self._file = _AtomicFile(self.url)
        parts = []
        for name, data in members:
            parts += (member_header(name, len(data)), data)
            if len(data) % tarfile.BLOCKSIZE:
                parts.append(bytes(tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
        self._write(b"".join(parts))
        self.count += 1

    def commit(self) -> ShardInfo | None:
        if self._file is None:
            return None
        self._write(bytes(2 * tarfile.BLOCKSIZE))  # end-of-archive, then pad to a whole record as tarfile does
        if self.size % tarfile.RECORDSIZE:
            self._write(bytes(tarfile.RECORDSIZE - self.size % tarfile.RECORDSIZE))
        self._file.commit()
        return ShardInfo(self.url, self.count, self.size, self._hash.hexdigest() if self._hash is not None else None)

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.info = self.commit()
        else:
            self.discard()


class ShardWriter:
    """Writes samples into numbered shards under `dest`, rolling at a sample count or byte size.

    Shard n is `dest/{name(n)}.tar`. Finished shards are committed as they roll; on error the
    shard in progress is discarded, never left half-written.
    """

    def __init__(
        self,
        dest: str,
        *,
        max_samples: int | None = 10_000,
        max_bytes: int | None = None,
        start: int = 0,
        name: Callable[[int], str] = "{:05d}".format,
    ):
        if not max_samples and not max_bytes:
            raise ValueError("ShardWriter needs max_samples or max_bytes")
        self.dest, self.max_samples, self.max_bytes = dest.rstrip("/"), max_samples, max_bytes
        self.index, self.name = start, name
        self.shards: list[ShardInfo] = []
        self._sink: TarSink | None = None

    def write(self, sample: dict) -> None:
        if self._sink is None:
            self._sink = TarSink(f"{self.dest}/{self.name(self.index)}.tar")
        self._sink.write(sample)
        full = (self.max_samples and self._sink.count >= self.max_samples) or (
            self.max_bytes and self._sink.size >= self.max_bytes
        )
        if full:
            self._roll()

    def _roll(self) -> None:
        if self._sink is not None:
            info = self._sink.commit()
            if info is not None:
                self.shards.append(info)
                self.index += 1
            self._sink = None

    def close(self) -> list[ShardInfo]:
        self._roll()
        return self.shards

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._sink is not None:
            self._sink.discard()
