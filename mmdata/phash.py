"""Perceptual hashes and the banded Hamming search that finds near-duplicates among millions.

`phash(image)` is the classic DCT hash (as imagehash's `phash`): grey, 32x32, 2-D DCT, the 8x8
lowest frequencies compared with their median -> 64 bits, returned as a signed int64 so that it
fits every columnar format (`to_hex` / `from_hex` for people).

Search (`band_keys` + `close_pairs`): a pair within Hamming distance t differs in at most t bits,
so when the 64 bits are cut into B > t disjoint bands, the pair agrees exactly on at least one
band (pigeonhole): bucketing by (band, value) and comparing only inside buckets finds every such
pair. Few, wide bands keep buckets small (linear work) but only guarantee distance < B; so the bits
are also cut several times under different seeded permutations (`rounds`), which finds pairs at
larger distances with high probability (each round is an independent chance). Candidates are then
checked exactly with a popcount, so precision never depends on the banding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BITS = 64
HASH_SIZE = 8
HIGHFREQ = 4  # the DCT sees a 32x32 image: 4x the hash side, as imagehash does


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix: the 2-D transform of X is D @ X @ D.T."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def variants(scales: list[float] | tuple[float, ...] = ()) -> list[tuple[float, float]]:
    """Crop boxes hashed per image, as (x, y) kept fractions around the centre; (1, 1) first.

    A crop of an image looks like one of the original's centre crops, so comparing one image's
    full hash with the other's variants finds crops that the full hashes alone miss. Per-axis
    scales because crops rarely keep the aspect ratio.
    """
    sides = [1.0, *sorted({float(s) for s in scales if 0 < s < 1}, reverse=True)]
    return [(x, y) for x in sides for y in sides]


def measure(image, scales=(), grid: int = 4, side: int = HASH_SIZE * HIGHFREQ) -> tuple[np.ndarray, bytes]:
    """(hashes int64 per variant, colour bytes): what near-duplicate search needs of one image.

    The colour part is a `grid` x `grid` RGB thumbnail per variant (box-averaged), so candidates
    that agree in structure (the hash is grey) can also be checked for colour.
    """
    from PIL import Image, ImageOps

    image.draft("RGB", (side * 4, side * 4))  # JPEG: decode at 1/2..1/8 scale, most of the time saved
    image = ImageOps.exif_transpose(image).convert("RGB")
    grey = image.convert("L")
    w, h = image.size
    squares, colours = [], []
    for sx, sy in variants(scales):
        dx, dy = w * (1 - sx) / 2, h * (1 - sy) / 2
        box = (dx, dy, w - dx, h - dy)
        squares.append(np.asarray(grey.resize((side, side), Image.Resampling.LANCZOS, box=box), dtype=np.float64))
        colours.append(np.asarray(image.resize((grid, grid), Image.Resampling.BOX, box=box), dtype=np.uint8))
    return phash_pixels(np.stack(squares)), np.stack(colours).tobytes()


def phash_pixels(grey: np.ndarray) -> np.ndarray:
    """Hashes of a batch of grey squares, shape (n, 32, 32) -> int64 (n,)."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim == 2:
        grey = grey[None]
    d = _dct_matrix(grey.shape[-1])
    low = (d @ grey @ d.T)[:, :HASH_SIZE, :HASH_SIZE].reshape(len(grey), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64).view(np.int64)


def phash(image) -> int:
    """64-bit perceptual hash of a PIL image (EXIF orientation applied), as a signed int64."""
    return int(measure(image)[0][0])


def to_hex(h: int) -> str:
    return f"{int(h) & (2**BITS - 1):016x}"


def from_hex(s: str) -> int:
    return int(np.uint64(int(s, 16)).view(np.int64))


def hamming(a, b) -> np.ndarray:
    """Bitwise distance between int64 hashes (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)).view(np.uint64)
    return np.bitwise_count(x).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# banded search


def _permutation(seed: int, rnd: int) -> np.ndarray:
    if rnd == 0:
        return np.arange(BITS)  # round 0 bands the bits as they are
    return np.random.default_rng([seed, rnd]).permutation(BITS)


def band_keys(hashes: np.ndarray, bands: int, rounds: int = 1, seed: int = 0) -> np.ndarray:
    """Bucket ids, shape (n, rounds * bands): each a (round, band, band value) packed into int64.

    Band b of round r holds bits perm_r[b::bands]; its value fits in 64 / bands bits, and the
    (round, band) index goes above bit 48, so keys of different bands never collide.
    """
    if not 1 <= bands <= 16 or rounds < 1:
        raise ValueError("bands must be 1..16 and rounds >= 1")
    if rounds * bands >= 2**15:
        raise ValueError("too many rounds x bands")
    h = np.asarray(hashes, dtype=np.int64).view(np.uint64)
    bits = np.unpackbits(h.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)  # (n, 64), MSB first
    out = np.empty((len(h), rounds * bands), dtype=np.int64)
    for r in range(rounds):
        perm = _permutation(seed, r)
        for b in range(bands):
            cols = perm[b::bands]
            weights = (1 << np.arange(len(cols) - 1, -1, -1, dtype=np.int64))
            value = bits[:, cols].astype(np.int64) @ weights
            out[:, r * bands + b] = ((r * bands + b) << 48) | value
    return out


def close_pairs(bucket, idx, hashes, threshold: int, var=None, max_bucket: int = 5000) -> np.ndarray:
    """Rows (i, j, vi, vj): entries of different records sharing a bucket within `threshold` bits.

    Parallel arrays, one entry per (record, variant, band): `bucket`, `idx` (a sortable record
    id), `hashes` and `var` (variant index, 0 = the whole image; default all 0). i < j; at least
    one side is a whole image (two crops of two images say nothing). Buckets larger than
    `max_bucket` (thousands of copies of one placeholder) are compared in blocks, so memory stays
    bounded.
    """
    bucket, idx, hashes = (np.asarray(a, dtype=np.int64) for a in (bucket, idx, hashes))
    var = np.zeros(len(idx), dtype=np.int64) if var is None else np.asarray(var, dtype=np.int64)
    order = np.lexsort((var, idx, bucket))
    bucket, idx, hashes, var = bucket[order], idx[order], hashes[order], var[order]
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(bucket) else np.empty(0, np.int64)
    sizes = np.diff(np.r_[starts, len(bucket)])
    found = []

    def keep(a, b):
        ok = (idx[a] != idx[b]) & ((var[a] == 0) | (var[b] == 0))
        a, b = a[ok], b[ok]
        ok = hamming(hashes[a], hashes[b]) <= threshold
        a, b = a[ok], b[ok]
        swap = idx[a] > idx[b]
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        found.append(np.stack([idx[a], idx[b], var[a], var[b]], axis=1))

    # small buckets, vectorised by size: every bucket of size s gives s*(s-1)/2 candidate pairs
    for s in np.unique(sizes[(sizes > 1) & (sizes <= max_bucket)]):
        first = starts[sizes == s]
        a, b = np.triu_indices(int(s), k=1)
        for chunk in np.array_split(first, len(first) * len(a) // 2_000_000 + 1):
            keep((chunk[:, None] + a[None, :]).ravel(), (chunk[:, None] + b[None, :]).ravel())
    for start, s in zip(starts[sizes > max_bucket], sizes[sizes > max_bucket]):
        for lo in range(start, start + s, max_bucket):
            rows = np.arange(lo, min(lo + max_bucket, start + s))
            for lo2 in range(lo, start + s, max_bucket):
                cols = np.arange(lo2, min(lo2 + max_bucket, start + s))
                a, b = np.meshgrid(rows, cols, indexing="ij")
                upper = a < b
                keep(a[upper], b[upper])
    if not found:
        return np.empty((0, 4), dtype=np.int64)
    # a pair seen in several buckets counts once
    return np.unique(np.concatenate(found), axis=0)


def greedy_keep(i: np.ndarray, j: np.ndarray) -> dict[int, int]:
    """Near-duplicate edges (i < j) -> {dropped: kept} with the smallest id of each group kept.

    Ids are visited in ascending order; an id is kept unless an already-kept, smaller neighbour
    exists, and then it points at the smallest such one. So every dropped record is within the
    threshold of the record it names (no long chains), and the result depends only on the edges.
    """
    order = np.lexsort((i, j))  # by j, then i: each j's smaller neighbours, smallest first
    i, j = np.asarray(i)[order], np.asarray(j)[order]
    dropped: dict[int, int] = {}
    for a, b in zip(i.tolist(), j.tolist()):
        if b not in dropped and a not in dropped:
            dropped[b] = a
    return dropped


def near_duplicates(ids, hashes, threshold: int, bands: int, rounds: int = 1, seed: int = 0) -> dict[int, int]:
    """The whole search in memory for one hash per record: {dropped id: kept id}."""
    ids, hashes = np.asarray(ids, dtype=np.int64), np.asarray(hashes, dtype=np.int64)
    keys = band_keys(hashes, bands, rounds, seed)
    width = keys.shape[1]
    pairs = close_pairs(keys.ravel(), np.repeat(ids, width), np.repeat(hashes, width), threshold)
    return greedy_keep(pairs[:, 0], pairs[:, 1])
