"""The shard format: samples as webdataset has them, in deterministic tar files.

A sample is a dict `{"__key__": key, ext: value, ...}`: `jpg`, `txt`, `json`, and for interleaved
documents `0.jpg`, `1.jpg`, ... Values are bytes on read; on write str and dict/list are encoded
(utf-8, json). Tars are written deterministically (fixed mtime, owner and mode, members in a fixed
order) so that the same samples give the same bytes. Writes are atomic (`mmdata.fsio`). Pickle is
never decoded: values stay bytes unless asked for through `decode`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import fsspec

from mmdata import fsio

log = logging.getLogger(__name__)

TAR_MTIME = 0  # fixed so that identical samples give identical shard bytes
META_KEYS = ("__key__", "__url__")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardError(Exception):
    """A shard that cannot be read or written, with the shard named."""


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
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=fsio.json_default).encode()
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
    for url in fsio.expand(patterns):
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
        self._file: fsio.AtomicFile | None = None
        self._hash = hashlib.sha256() if checksum else None

    def _write(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._file.file.write(data)
        self.size += len(data)

    def write(self, sample: dict) -> None:
        members = sample_members(sample)
        if self._file is None:
            self._file = fsio.AtomicFile(self.url)
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
