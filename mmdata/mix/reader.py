"""Disjoint reading: each source's samples split among readers (rank x lane), streamed from shards.

A source is a list of shards with sample counts (its catalogue): from the `manifest.json` beside the
shards when there is one (read through `mmdata.manifest`, schema version checked; no tar is
opened), otherwise counted by reading. Every epoch the shards
are put in a seeded order and the concatenated samples are cut into `ranks x lanes` equal ranges
(sizes differ by at most one), so no sample is read twice in an epoch by any rank or worker, and a
reader never runs dry before the others: fewer shards than readers just means ranges inside shards.
A reader reads its range in pieces (one per shard it touches); each pass over the range visits the
pieces in a new seeded order. A range that starts inside a shard skips the shard's first samples
(read, not decoded).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mmdata import fsio, samples
from mmdata import manifest as mf
from mmdata.mix.plan import MixError, rng, tag


@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of one shard."""

    url: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def manifest_counts(name: str, url: str, *, required: bool = True) -> dict[str, int] | None:
    """{shard file name: samples} from an mmdata manifest (`mmdata.manifest.read`: the schema
    version is checked); None when `required` is false and there is no manifest at `url`."""
    try:
        m = mf.read(url)
    except FileNotFoundError:
        if not required:
            return None
        raise MixError(f"source '{name}': no manifest at {url}") from None
    except (OSError, ValueError) as e:
        raise MixError(f"source '{name}': cannot read manifest {url}: {e}") from None
    try:
        return {posixpath.basename(s["name"]): int(s["count"]) for s in m["shards"]}
    except (KeyError, TypeError, ValueError) as e:
        raise MixError(f"source '{name}': manifest {url} has a shard entry without name and count ({e})") from None


def catalogue(name: str, patterns: str | list[str]) -> list[tuple[str, int]]:
    """[(shard url, samples)] of a source, in pattern order; empty shards left out."""
    if isinstance(patterns, str) and patterns.endswith(".json"):  # a manifest names the shards itself
        base = mf.folder_of(patterns)
        counts = manifest_counts(name, patterns)
        return [(fsio.join(base, k), v) for k, v in counts.items() if v > 0]
    urls = fsio.expand(patterns)
    if not urls:
        raise MixError(f"source '{name}': {patterns!r} matched no shards")
    beside = fsio.join(urls[0].rsplit("/", 1)[0], mf.MANIFEST) if "/" in urls[0] else mf.MANIFEST
    known = manifest_counts(name, beside, required=False) or {}  # no manifest: count by reading
    todo = [u for u in urls if posixpath.basename(u) not in known]
    try:
        with ThreadPoolExecutor(8) as pool:
            counted = dict(zip(todo, pool.map(samples.count_samples, todo)))
    except FileNotFoundError as e:
        raise MixError(f"source '{name}': shard not found: {e}") from None
    except (samples.ShardError, OSError) as e:
        raise MixError(f"source '{name}': unreadable shard: {e}") from None
    out = [(u, counted[u] if u in counted else known[posixpath.basename(u)]) for u in urls]
    return [(u, n) for u, n in out if n > 0]


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
    """The piece's samples, through the one tar codec (samples before the piece are skipped
    without reading their data where the file can seek)."""
    return samples.read_shard(piece.url, piece.start, piece.stop)


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
