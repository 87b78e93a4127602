"""The shard format: samples as webdataset has them, in deterministic tar files.

A sample is a dict `{"__key__": key, ext: value, ...}`: `jpg`, `txt`, `json`, and for interleaved
documents `0.jpg`, `1.jpg`, ... Values are bytes on read; on write str and dict/list are encoded
(utf-8, json). Tars are written deterministically (fixed mtime, owner and mode, members in a fixed
order) so that the same samples give the same bytes. Writes are atomic (`mmdata.fsio`); tar bytes
go through the one codec, `mmdata.tar`, which also makes any damage an error naming the shard and
byte offset. Pickle is never decoded: values stay bytes unless asked for through `decode`.

A training shard `00000.tar` has its member index `00000.members.json` beside it (written with it
by `TarSink(members=True)`): line 1 a header (`format`, `shard`, `count` samples, `bytes`, `hash`),
line 2 one `[name, data offset, size, xxh3_64]` per member in tar order. A reader given it
(`iter_samples(expect=...)`) checks every member's name, offset and size against it and the xxh3 of
every member's data it reads, so the bytes it returns are the bytes that were written, or it raises
`DamagedShard` naming the shard and offset. xxh3 because it runs at memory speed (the check costs
what `benchmarks/bench_mix.py --mode raw` measures, in docs/mixture.md); the manifest's sha256 of
the index file authenticates the index itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Self

import xxhash

from mmdata import fsio, tar
from mmdata.tar import ShardError

META_KEYS = ("__key__", "__url__")
MEMBERS_FORMAT = "mmdata.members/1"
MEMBERS_SUFFIX = ".members.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


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


def split_name(name: str) -> tuple[str, str]:
    """`00010003.0.jpg` -> (`00010003`, `0.jpg`): the key is up to the first dot."""
    key, _, ext = name.partition(".")
    return key, ext


def iter_samples(f: BinaryIO, source: str = "<stream>", start: int = 0, stop: int | None = None, *,
                 data: bool = True, limit: int | None = None, expect: Members | None = None,
                 count: int | None = None) -> Iterator[dict]:
    """Samples [start, stop) of a tar stream (uncompressed or gz/bz2/xz), grouping members by key.
    `data=False` gives every value as b"" (counting, planning); samples before `start` are skipped
    without reading their data where the file can seek. A key whose members are not consecutive,
    or a field twice, is a damaged shard: `mmdata.tar.DamagedShard`.

    `expect` (the shard's member index) checks every member against what was written: name, offset,
    size, and the xxh3 of the data read. `count` (samples the catalogue lists) checks that the
    shard holds exactly that many, as far as [start, stop) reaches: a shard that ends early or goes
    on past `count` is damaged, never a shorter or longer read."""
    reader = tar.Reader(f, source, limit=limit)
    index, key_now, current, seen = -1, None, None, set()
    rows = expect.rows if expect is not None else None
    ordinal = -1
    for m in reader:
        ordinal += 1
        if rows is not None:
            if ordinal >= len(rows):
                raise tar.DamagedShard(source, m.offset - tar.BLOCK, f"member {m.name!r} is not in the shard's index "
                                       f"({len(rows)} members)")
            want = rows[ordinal]
            if m.name != want[0] or m.offset != want[1] or m.size != want[2]:
                raise tar.DamagedShard(source, m.offset - tar.BLOCK, f"member {m.name!r} ({m.size} bytes at {m.offset}) "
                                       f"differs from the index ({want[0]!r}, {want[2]} bytes at {want[1]})")
        key, _, ext = m.name.partition(".")
        if key != key_now:
            if key in seen:
                raise tar.DamagedShard(source, m.offset - tar.BLOCK, f"key {key!r} appears again after other samples")
            seen.add(key)
            if current is not None:
                yield current
            index, key_now = index + 1, key
            if count is not None and index >= count:
                raise tar.DamagedShard(source, m.offset - tar.BLOCK, f"holds more than the {count} samples its "
                                       f"catalogue lists")
            if stop is not None and index >= stop:
                return
            current = {"__key__": key, "__url__": source} if index >= start else None
        if current is not None:
            if ext in current:
                raise tar.DamagedShard(source, m.offset - tar.BLOCK, f"member {m.name!r} appears twice")
            value = reader.read() if data else b""
            if rows is not None and data and xxhash.xxh3_64_intdigest(value) != rows[ordinal][3]:
                raise tar.ChangedBytes(source, m.offset, f"member {m.name!r}: its {m.size} bytes differ from what was "
                                       f"written (xxh3 {xxhash.xxh3_64_hexdigest(value)}, index "
                                       f"{rows[ordinal][3]:016x})")
            current[ext] = value
    if rows is not None and ordinal + 1 != len(rows):
        raise tar.DamagedShard(source, reader.pos, f"ends after {ordinal + 1} members, its index lists {len(rows)}")
    if count is not None and index + 1 != count:
        raise tar.DamagedShard(source, reader.pos, f"holds {index + 1} samples, its catalogue lists {count}")
    if current is not None:
        yield current


def read_shard(url: str, start: int = 0, stop: int | None = None, *, data: bool = True,
               limit: int | None = None, expect: Members | None = None, count: int | None = None) -> Iterator[dict]:
    """Samples [start, stop) of the shard at `url` (local, s3://, http://); see `iter_samples`."""
    with tar.open_url(url) as f:
        yield from iter_samples(f, url, start, stop, data=data, limit=limit, expect=expect, count=count)


def count_samples(url: str) -> int:
    """Samples in one shard, from its headers (data is skipped, by seeking where the file allows)."""
    return sum(1 for _ in read_shard(url, data=False))


def index_shard(url: str) -> dict[str, list[tuple[str, int, int]]]:
    """key -> [(ext, data offset, size)] of an uncompressed shard, from its headers only."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    last = None
    for m in tar.index(url):
        key, ext = split_name(m.name)
        if key != last and key in out:
            raise tar.DamagedShard(url, m.offset - tar.BLOCK, f"key {key!r} appears again after other samples")
        out.setdefault(key, []).append((ext, m.offset, m.size))
        last = key
    return out


def members_url(tar_url: str) -> str:
    """`.../00000.tar` -> `.../00000.members.json`."""
    return tar_url.removesuffix(".tar") + MEMBERS_SUFFIX


@dataclass(frozen=True)
class Members:
    """A shard's member index: what its writer put in it."""

    url: str
    count: int  # samples
    bytes: int  # of the tar
    rows: list  # [name, data offset, size, xxh3_64] per member, in tar order


def _members_header(url: str, line: bytes) -> dict:
    try:
        head = json.loads(line)
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != MEMBERS_FORMAT:
        raise ShardError(f"{url}: not a member index ({MEMBERS_FORMAT})")
    return head


def members_header(url: str) -> dict:
    """The index's first line (format, shard, count, bytes, hash): what a catalogue check needs,
    without reading the member rows."""
    fs, path = fsio.fs_path(url)
    with fs.open(path, "rb", block_size=1 << 12) as f:
        return _members_header(url, f.read(1 << 12).partition(b"\n")[0])


def read_members(url: str, sha256: str | None = None) -> Members:
    """The member index at `url`; with `sha256` (the manifest's), an index that differs is refused."""
    raw = fsio.read_bytes(url)
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ShardError(f"{url}: the member index differs from the one the manifest lists (sha256)")
    line, _, rest = raw.partition(b"\n")
    head = _members_header(url, line)
    try:
        rows = json.loads(rest)
    except ValueError as e:
        raise ShardError(f"{url}: member rows do not parse: {e}") from None
    return Members(url, int(head["count"]), int(head["bytes"]), rows)


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
    members: str | None = None  # the member index's URL (TarSink(members=True))
    members_sha256: str | None = None


class TarSink:
    """One shard: samples go to a temp file; `commit()` makes it appear, `discard()` drops it.

    The bytes are those of `tarfile` in PAX format with fixed owner, mode and mtime (readable by
    every tar reader), made by `mmdata.tar`.
    An empty sink commits nothing (Energon and others refuse empty tars), so `commit()` returns None.
    `checksum=False` skips the running sha256 (a hot path that never publishes it); `members=True`
    writes the member index (`members_url`) after the tar, for readers that check every member.
    """

    def __init__(self, url: str, checksum: bool = True, members: bool = False):
        self.url = url
        self.count = 0
        self.size = 0
        self._file: fsio.AtomicFile | None = None
        self._hash = hashlib.sha256() if checksum else None
        self._rows: list | None = [] if members else None

    def _write(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def write(self, sample: dict) -> None:
        members = sample_members(sample)
        if self._file is None:
            self._file = fsio.AtomicFile(self.url)
        parts = []
        at = self.size
        for name, data in members:
            head = tar.header(name, len(data))
            parts += (head, data, tar.padding(len(data)))
            if self._rows is not None:
                at += len(head)
                self._rows.append([name, at, len(data), xxhash.xxh3_64_intdigest(data)])
                at += len(data) + len(parts[-1])
        self._write(b"".join(parts))
        self.count += 1

    def commit(self) -> ShardInfo | None:
        if self._file is None:
            return None
        self._write(tar.end(self.size))  # end-of-archive, then pad to a whole record as tarfile does
        self._file.commit()
        info = ShardInfo(self.url, self.count, self.size, self._hash.hexdigest() if self._hash is not None else None)
        if self._rows is not None:
            head = {"format": MEMBERS_FORMAT, "shard": self.url.rsplit("/", 1)[-1], "count": self.count,
                    "bytes": self.size, "hash": "xxh3_64"}
            raw = json.dumps(head).encode() + b"\n" + json.dumps(self._rows, separators=(",", ":")).encode() + b"\n"
            info.members, info.members_sha256 = members_url(self.url), hashlib.sha256(raw).hexdigest()
            fsio.atomic_write(info.members, raw)
        return info

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
        members: bool = False,
    ):
        if not max_samples and not max_bytes:
            raise ValueError("ShardWriter needs max_samples or max_bytes")
        self.dest, self.max_samples, self.max_bytes = dest.rstrip("/"), max_samples, max_bytes
        self.index, self.name, self.members = start, name, members
        self.shards: list[ShardInfo] = []
        self._sink: TarSink | None = None

    def write(self, sample: dict) -> None:
        if self._sink is None:
            self._sink = TarSink(f"{self.dest}/{self.name(self.index)}.tar", members=self.members)
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
