"""Disjoint reading: each source's samples split among readers (rank x lane), streamed from shards.

A source is a list of shards with sample counts (its catalogue): from a `manifest.json` beside the
shards when there is one (no tar is opened), otherwise counted by reading. Every epoch the shards
are put in a seeded order and the concatenated samples are cut into `ranks x lanes` equal ranges
(sizes differ by at most one), so no sample is read twice in an epoch by any rank or worker, and a
reader never runs dry before the others: fewer shards than readers just means ranges inside shards.
A reader reads its range in pieces (one per shard it touches); each pass over the range visits the
pieces in a new seeded order. A range that starts inside a shard skips the shard's first samples
(read, not decoded).
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BufferedReader

import fsspec

from mmdata import fsio, samples
from mmdata.mix.plan import MixError, rng, tag

MANIFEST = "manifest.json"
_NAME_KEYS = ("name", "url", "path", "file", "shard")
_COUNT_KEYS = ("count", "samples", "n_samples", "num_samples")


@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of one shard."""

    url: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def manifest_counts(data) -> dict[str, int]:
    """{shard file name: samples} from a manifest: `{"shards": [{"name": ..., "count": ...}]}`,
    a bare list of such entries, or a `{name: count}` mapping."""
    entries = data.get("shards", data) if isinstance(data, dict) else data
    if isinstance(entries, dict):
        return {posixpath.basename(k): int(v) for k, v in entries.items() if isinstance(v, int)}
    out = {}
    for e in entries or []:
        name = next((e[k] for k in _NAME_KEYS if k in e), None)
        count = next((e[k] for k in _COUNT_KEYS if k in e), None)
        if name is not None and count is not None:
            out[posixpath.basename(str(name))] = int(count)
    return out


def count_samples(url: str) -> int:
    """Samples in one tar, from its headers (data is skipped, by seeking where the file allows)."""
    return sum(1 for _ in read_tar(url, 0, None, data=False))


def catalogue(name: str, patterns: str | list[str]) -> list[tuple[str, int]]:
    """[(shard url, samples)] of a source, in pattern order; empty shards left out."""
    if isinstance(patterns, str) and patterns.endswith(".json"):  # a manifest names the shards itself
        base = patterns.rsplit("/", 1)[0]
        counts = manifest_counts(_read_manifest(name, patterns))
        return [(fsio.join(base, k), v) for k, v in counts.items() if v > 0]
    urls = fsio.expand(patterns)
    if not urls:
        raise MixError(f"source '{name}': {patterns!r} matched no shards")
    known: dict[str, int] = {}
    beside = fsio.join(urls[0].rsplit("/", 1)[0], MANIFEST) if "/" in urls[0] else MANIFEST
    try:
        known = manifest_counts(fsio.read_json(beside))
    except (FileNotFoundError, OSError, ValueError):
        pass  # no manifest: count by reading
    todo = [u for u in urls if posixpath.basename(u) not in known]
    try:
        with ThreadPoolExecutor(8) as pool:
            counted = dict(zip(todo, pool.map(count_samples, todo)))
    except FileNotFoundError as e:
        raise MixError(f"source '{name}': shard not found: {e}") from None
    except (tarfile.TarError, OSError) as e:
        raise MixError(f"source '{name}': unreadable shard: {e}") from None
    out = [(u, counted[u] if u in counted else known[posixpath.basename(u)]) for u in urls]
    return [(u, n) for u, n in out if n > 0]


def _read_manifest(name: str, url: str):
    try:
        return fsio.read_json(url)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise MixError(f"source '{name}': cannot read manifest {url}: {e}") from None


def split(shards: list[tuple[str, int]], readers: int, seed: int, source: str, epoch: int) -> list[list[Piece]]:
    """Cut the source into `readers` disjoint ranges of (almost) equal size for this epoch."""
    order = rng(seed, tag(source), epoch).permutation(len(shards))
    total = sum(n for _, n in shards)
    bounds = [k * total // readers for k in range(readers + 1)]
    out: list[list[Piece]] = [[] for _ in range(readers)]
    k, pos = 0, 0  # pos: index of the first sample of the current shard in the concatenation
    for i in order:
        url, n = shards[i]
        lo = pos
        while lo < pos + n:
            while bounds[k + 1] <= lo:
                k += 1
            hi = min(pos + n, bounds[k + 1])
            out[k].append(Piece(url, lo - pos, hi - pos))
            lo = hi
        pos += n
    return out


def read_piece(piece: Piece) -> Iterator[dict]:
    return read_tar(piece.url, piece.start, piece.stop)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    return int(field, 8) if field else 0


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[pos:pos + length].split(b" ", 1)[1].rstrip(b"\n").partition(b"=")
        out[key.decode()] = value.decode("utf-8", "replace")
        pos += length
    return out


def read_tar(url: str, start: int = 0, stop: int | None = None, *, data: bool = True) -> Iterator[dict]:
    """Samples [start, stop) of an uncompressed tar as `mmdata.samples` gives them (same keys, same
    unsafe-name rule), parsing only the header fields a sample needs and seeking over the data of
    samples before `start`. Compressed tars go through `mmdata.samples.read_shard`."""
    with fsspec.open(url, "rb") as f:
        head = f.read(512)
        if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
            f.close()
            for i, sample in enumerate(samples.read_shard(url)):
                if stop is not None and i >= stop:
                    return
                if i >= start:
                    yield sample
            return
        local = isinstance(f, BufferedReader)
        index, last, current, pax = -1, None, None, {}
        while len(head) == 512 and head != _ZERO:
            size = int(pax["size"]) if "size" in pax else _octal(head[124:136])
            kind = head[156:157]
            padded = (size + 511) & ~511
            if kind in (b"x", b"L"):  # pax / GNU long name: the next member's real name or size
                ext = f.read(padded)[:size]
                pax = _pax(ext) if kind == b"x" else {"path": ext.rstrip(b"\0").decode("utf-8", "replace")}
                head = f.read(512)
                continue
            name = pax.get("path") or _name(head)
            pax = {}
            key, ext = samples.split_name(name) if kind in (b"0", b"\0") and samples.safe_member(name) else ("", "")
            if ext and key != last:
                index, last = index + 1, key
                if current is not None:
                    yield current
                if stop is not None and index >= stop:
                    return
                current = {"__key__": key, "__url__": url} if index >= start else None
            if ext and current is not None:
                value = f.read(padded)
                current[ext] = value[:size] if data else b""
            elif local:
                f.seek(padded, 1)
            elif padded:
                f.read(padded)
            head = f.read(512)
        if current is not None:
            yield current


_ZERO = bytes(512)


def _name(head: bytes) -> str:
    name = head[:100].split(b"\0", 1)[0]
    if head[257:262] == b"ustar" and head[345] != 0:
        name = head[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "replace")


def stream(pieces: list[Piece], start: int, key: tuple[int, ...]) -> Iterator[tuple[int, dict]]:
    """(pass, sample) from position `start` on, forever: pass p visits the pieces in order seeded by
    `key + (p,)`. The caller decides when to stop; nothing is read before it asks."""
    size = sum(len(p) for p in pieces)
    npass, skip = divmod(start, size)
    while True:
        for j in rng(*key, npass).permutation(len(pieces)):
            piece = pieces[j]
            if skip >= len(piece):
                skip -= len(piece)
                continue
            part = Piece(piece.url, piece.start + skip, piece.stop)
            skip = 0
            for sample in read_piece(part):
                yield npass, sample
        npass += 1
