"""Disjoint reading: each source's samples split among readers (rank x lane), streamed from shards.

A source is a list of shards with sample counts (its catalogue): from the `manifest.json` beside the
shards when there is one (read through `mmdata.manifest`, schema version checked), otherwise counted
by reading their headers. Before the first batch every manifest shard is checked (present, its size,
its sample count from its member index, or its headers walked when it has none: the manifest's quick
`verify`), and while reading every member is checked against the shard's member index (name, offset,
size, xxh3 of its bytes) and every shard against its count; a shard read without an index is still
checked for structure and count. A damaged shard stops the job with one line naming the shard and
the byte offset (`damaged: stop`), or is skipped and counted (`damaged: skip`): never served.

Every epoch the shards
are put in a seeded order and the concatenated samples are cut into `ranks x lanes` equal ranges
(sizes differ by at most one), so no sample is read twice in an epoch by any rank or worker, and a
reader never runs dry before the others: fewer shards than readers just means ranges inside shards.
A reader reads its range in pieces (one per shard it touches); each pass over the range visits the
pieces in a new seeded order. A range that starts inside a shard skips the shard's first samples
(read, not decoded).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mmdata import fsio, samples
from mmdata import manifest as mf
from mmdata.mix.plan import MixDamaged, MixError, rng, tag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of one shard."""

    url: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardRef:
    """What reading one shard checks: its sample count and its member index (None: structure only)."""

    count: int
    members: str | None = None
    members_sha256: str | None = None


@dataclass
class Catalogue:
    shards: list[tuple[str, int]]  # (url, samples), in pattern / manifest order; empty shards left out
    refs: dict[str, ShardRef]
    damaged: list[dict]  # shards left out under `damaged: skip`: {source, shard, error, skipped}


def _manifest(name: str, url: str, *, required: bool = True) -> dict | None:
    try:
        m = mf.read(url)
    except FileNotFoundError:
        if not required:
            return None
        raise MixError(f"source '{name}': no manifest at {url}") from None
    except (OSError, ValueError) as e:
        raise MixError(f"source '{name}': cannot read manifest {url}: {e}") from None
    try:
        for s in m["shards"]:
            s["name"], s["count"], s["bytes"] = str(s["name"]), int(s["count"]), int(s["bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise MixError(f"source '{name}': manifest {url} has a shard entry without name, count and bytes ({e})") from None
    return m


def _ref(folder: str, entry: dict) -> ShardRef:
    members = fsio.join(folder, entry["members"]) if entry.get("members") else None
    return ShardRef(entry["count"], members, entry.get("members_sha256"))


def catalogue(name: str, patterns: str | list[str], *, damaged: str = "stop", threads: int = 16) -> Catalogue:
    """A source's shards with their counts, each checked before the first batch (module doc)."""
    if isinstance(patterns, str) and patterns.endswith(".json"):  # a manifest names the shards itself
        folder, where = mf.folder_of(patterns), patterns
        entries = {fsio.join(folder, s["name"]): s for s in _manifest(name, patterns)["shards"]}
        urls = list(entries)
    else:
        urls = fsio.expand(patterns)
        if not urls:
            raise MixError(f"source '{name}': {patterns!r} matched no shards")
        folder = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
        where = fsio.join(folder, mf.MANIFEST)
        m = _manifest(name, where, required=False)
        by_name = {s["name"]: s for s in m["shards"]} if m else {}
        entries = {u: by_name[posixpath.basename(u)] for u in urls if posixpath.basename(u) in by_name}

    def check(url: str) -> tuple[int | None, str | None]:
        """(samples, None) or (None, why the shard cannot be read as listed)."""
        if url in entries:
            problem = mf.check_shard(folder, entries[url], full=False)
            return (entries[url]["count"], None) if problem is None else (None, f"{url}: {problem.what}: {problem.detail}")
        try:  # no manifest entry: the count is the tar's, walked header by header
            return samples.count_samples(url), None
        except FileNotFoundError:
            return None, f"{url}: missing"
        except (samples.ShardError, OSError) as e:
            return None, str(e) if str(e).startswith(url) else f"{url}: unreadable: {e}"

    with ThreadPoolExecutor(max(1, min(threads, len(urls)))) as pool:
        found = list(pool.map(check, urls))
    bad = [(u, why) for u, (_, why) in zip(urls, found) if why is not None]
    if bad and damaged == "stop":
        more = f"; {len(bad) - 1} more of {len(urls)} shards differ" if len(bad) > 1 else ""
        raise MixDamaged(f"source '{name}': {bad[0][1]}{more} (damaged: stop; `python -m mmdata verify -m {where}` "
                         f"lists every problem)")
    events = []
    for u, why in bad:
        entry = entries.get(u)
        events.append({"source": name, "shard": u, "error": why, "skipped": entry["count"] if entry else None})
        log.warning("source '%s': skipping %s (damaged: skip)", name, why)
    shards = [(u, n) for u, (n, why) in zip(urls, found) if why is None and n > 0]
    if not shards and bad:
        raise MixDamaged(f"source '{name}': every shard is damaged or missing, first {bad[0][1]}")
    refs = {u: _ref(folder, entries[u]) if u in entries else ShardRef(n) for u, n in shards}
    return Catalogue(shards, refs, events)


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


class Shards:
    """Reads pieces of a source's shards, checking each against its `ShardRef` (member indexes are
    loaded once per process, a few at a time, authenticated by the manifest's sha256)."""

    def __init__(self, source: str, refs: dict[str, ShardRef], *, checksums: bool = True, damaged: str = "stop"):
        self.source, self.refs, self.checksums, self.policy = source, refs, checksums, damaged
        self._members: dict[str, samples.Members] = {}

    def members(self, url: str) -> samples.Members | None:
        ref = self.refs.get(url)
        if ref is None or ref.members is None or not self.checksums:
            return None
        if url not in self._members:
            if len(self._members) >= 8:
                self._members.pop(next(iter(self._members)))
            index = samples.read_members(ref.members, ref.members_sha256)
            if index.count != ref.count:
                raise samples.ShardError(f"{url}: its member index lists {index.count} samples, the catalogue {ref.count}")
            self._members[url] = index
        return self._members[url]

    def read(self, piece: Piece) -> Iterator[dict]:
        """The piece's samples, through the one tar codec (samples before the piece are skipped
        without reading their data where the file can seek)."""
        ref = self.refs.get(piece.url)
        return samples.read_shard(piece.url, piece.start, piece.stop, expect=self.members(piece.url),
                                  count=None if ref is None else ref.count)

    def damage(self, piece: Piece, served: int, e: Exception) -> dict:
        """One line for a shard that failed while read; raises under `damaged: stop`."""
        if isinstance(e, FileNotFoundError):
            why = f"{piece.url}: missing"
        elif isinstance(e, samples.ShardError) and str(e).startswith(piece.url):
            why = str(e)
        else:
            why = f"{piece.url}: unreadable: {type(e).__name__}: {e}"
        if self.policy == "stop":
            raise MixDamaged(f"source '{self.source}': {why} (damaged: stop)")
        log.warning("source '%s': skipping the rest of %s (damaged: skip)", self.source, why)
        return {"source": self.source, "shard": piece.url, "error": why, "skipped": len(piece) - served}


def read_piece(piece: Piece) -> Iterator[dict]:
    """A piece's samples, checked for structure only (no catalogue at hand)."""
    return samples.read_shard(piece.url, piece.start, piece.stop)


def stream(pieces: list[Piece], start: int, key: tuple[int, ...], shards: Shards | None = None,
           events: list[dict] | None = None) -> Iterator[tuple[int, dict]]:
    """(pass, sample) from position `start` on, forever: pass p visits the pieces in order seeded by
    `key + (p,)`. The caller decides when to stop; nothing is read before it asks. A piece that
    fails raises `MixDamaged` (damaged: stop) or is skipped from there on, its event appended to
    `events` and the shard not read again by this stream (damaged: skip)."""
    size = sum(len(p) for p in pieces)
    npass, skip = divmod(start, size)
    bad: set[str] = set()
    while True:
        if bad and all(p.url in bad for p in pieces):
            raise MixDamaged(f"source '{shards.source}': every shard of a reader's range is damaged "
                             f"({', '.join(sorted(bad))})")
        for j in rng(*key, npass).permutation(len(pieces)):
            piece = pieces[j]
            if skip >= len(piece):
                skip -= len(piece)
                continue
            part = Piece(piece.url, piece.start + skip, piece.stop)
            skip = 0
            if part.url in bad:
                continue
            if shards is None:
                for sample in read_piece(part):
                    yield npass, sample
                continue
            served = 0
            try:
                for sample in shards.read(part):
                    yield npass, sample
                    served += 1
            except (samples.ShardError, OSError) as e:
                event = shards.damage(part, served, e)
                bad.add(part.url)
                if events is not None:
                    events.append(event)
        npass += 1
