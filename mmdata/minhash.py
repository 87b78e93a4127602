"""MinHash-LSH near-duplicate detection, vectorised with numpy and global across shards.

Defaults are datatrove's (FineWeb): word 5-gram shingles, 14 bands x 8 hashes. What differs is the
arithmetic: each word is hashed once (xxh3, cached), a shingle hash mixes its words' hashes in
numpy, and the 112 permutations are multiply-shift hashes over a whole batch of documents at once,
reduced per document with `np.minimum.reduceat`. No Python loop runs per shingle or permutation.

The global step needs only each document's 14 band hashes (112 bytes), which the per-shard
measure pass stores; `clusters(bands)` links documents that share any band (vectorised
label propagation with pointer jumping, no Python union-find) and returns, per document, the
index of the document it duplicates (itself when it is the first of its cluster).
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _step(j: int) -> np.uint64:
    return np.uint64((j * 0x9E3779B97F4A7C15) % 2**64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: every output bit depends on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M2
    x = x ^ (x >> np.uint64(27))
    x = x * _M3
    return x ^ (x >> np.uint64(31))


class MinHasher:
    def __init__(self, ngram: int = 5, buckets: int = 14, per_bucket: int = 8, seed: int = 1, batch_shingles: int = 1 << 12):
        self.ngram, self.buckets, self.per_bucket = ngram, buckets, per_bucket
        self.num_perm = buckets * per_bucket
        rng = np.random.default_rng(seed)
        # multiply-shift hashing: h(x) = (a*x + b) >> 32 over uint64, a odd
        self.a = rng.integers(1, 2**63, self.num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64)
        self.batch = batch_shingles
        self._words: dict[str, int] = {}

    def shingles(self, text: str) -> np.ndarray:
        """uint64 hashes of the word n-grams of the normalised text (lower case, words only)."""
        cache = self._words
        if len(cache) > 1_000_000:
            cache.clear()
        ids = []
        for w in _WORD.findall(text.lower()):
            h = cache.get(w)
            if h is None:
                h = cache[w] = xxhash.xxh3_64_intdigest(w.encode())
            ids.append(h)
        if not ids:
            return np.zeros(1, dtype=np.uint64)
        w = np.array(ids, dtype=np.uint64)
        n = min(self.ngram, len(w))
        m = len(w) - n + 1
        h = np.zeros(m, dtype=np.uint64)
        for j in range(n):  # position-dependent mix, so "a b" and "b a" differ
            h = _mix(h ^ (w[j : j + m] + _step(j)))
        return np.unique(h)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        pending: list[np.ndarray] = []
        start = size = 0
        for i, t in enumerate(texts):
            s = self.shingles(t)
            pending.append(s)
            size += len(s)
            if size >= self.batch:
                out[start : i + 1] = self._minhash(pending)
                pending, start, size = [], i + 1, 0
        if pending:
            out[start:] = self._minhash(pending)
        return out

    def _minhash(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        flat = np.concatenate(shingle_sets)
        offsets = np.cumsum([0] + [len(s) for s in shingle_sets[:-1]])
        # in place: a (shingles x 112) uint64 block is the only big array; fresh temporaries per
        # operation would cost more in page faults than the arithmetic itself
        ph = np.multiply.outer(flat, self.a)
        ph += self.b
        ph >>= np.uint64(32)
        return np.minimum.reduceat(ph, offsets, axis=0).astype(np.uint32)

    def bands(self, sigs: np.ndarray) -> np.ndarray:
        """(n, buckets) uint64: one hash per band of `per_bucket` signature values."""
        n = sigs.shape[0]
        rows = sigs.reshape(n, self.buckets, self.per_bucket).astype(np.uint64)
        h = np.zeros((n, self.buckets), dtype=np.uint64)
        for j in range(self.per_bucket):
            h = _mix(h ^ (rows[:, :, j] + _step(j + 1)))
        # the band index goes in too: equal values in different bands must not collide
        return _mix(h ^ np.arange(self.buckets, dtype=np.uint64)[None, :] * _M2)

    def band_hashes(self, texts: list[str]) -> np.ndarray:
        return self.bands(self.signatures(texts))


def clusters(bands: np.ndarray) -> np.ndarray:
    """For each row, the smallest row index it is linked to through shared band hashes.

    Rows are documents in priority order (the one to keep first). A row whose result is itself is
    kept; any other is a near-duplicate of the row named.
    """
    n = bands.shape[0]
    labels = np.arange(n, dtype=np.int64)
    if n < 2:
        return labels
    us, vs = [], []
    for b in range(bands.shape[1]):
        col = bands[:, b]
        order = np.argsort(col, kind="stable")
        sorted_col = col[order]
        starts = np.r_[True, sorted_col[1:] != sorted_col[:-1]]
        group_first = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
        linked = group_first != order
        us.append(order[linked])
        vs.append(group_first[linked])
    u = np.concatenate(us)
    v = np.concatenate(vs)
    if not len(u):
        return labels
    while True:
        m = np.minimum(labels[u], labels[v])
        before = labels.copy()
        np.minimum.at(labels, u, m)
        np.minimum.at(labels, v, m)
        labels = labels[labels]  # pointer jumping
        if np.array_equal(labels, before):
            return labels
