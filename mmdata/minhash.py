"""MinHash-LSH near-duplicate detection, global across shards.

Defaults are datatrove's (FineWeb): word 5-gram shingles, 14 bands x 8 hashes (112 permutations).
Per batch of documents, with no Python loop per word, shingle or permutation:

1. words: lower-cased `\\w+` runs, each hashed to 64 bits by rensa (Rust);
2. shingles: the hashes of n consecutive words combined position-dependently ("a b" differs
   from "b a"), over the whole batch at once in numpy; a document shorter than n words is one
   shingle of all its words;
3. signatures: rensa's RMinHash over the shingle hashes (one flat buffer for the batch), about 15x
   faster than our former numpy multiply-shift permutations and 2.4x faster end to end than
   rensa fed with shingle strings, at the same recall (benchmarks/bench_interleaved.py).

The global step needs only each document's 14 band hashes (112 bytes), which the per-shard
measure pass stores; `clusters(bands)` links documents that share any band (vectorised label
propagation with pointer jumping, no Python union-find) and returns, per document, the index of
the document it duplicates (itself when it is the first of its cluster). Signatures depend on
rensa's algorithm: `ALGORITHM` names it, and a stage storing band hashes puts it in its
fingerprint, so hashes of two algorithms are never compared.
"""

from __future__ import annotations

import re

import numpy as np
from rensa import RMinHash

_WORD = re.compile(r"\w+")
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
ALGORITHM = f"rensa-rminhash-{RMinHash.ALGORITHM_VERSION}+mmdata-shingles-2"


def _step(j: int) -> np.uint64:
    return np.uint64((j * 0x9E3779B97F4A7C15) % 2**64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: every output bit depends on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M2
    x = x ^ (x >> np.uint64(27))
    x = x * _M3
    return x ^ (x >> np.uint64(31))


# odd multipliers per position: a shingle's hash is sum(word_j * K_j), then mixed once
_K = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
               0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3], dtype=np.uint64)


class MinHasher:
    def __init__(self, ngram: int = 5, buckets: int = 14, per_bucket: int = 8, seed: int = 1, batch_docs: int = 2048):
        if not 1 <= ngram <= len(_K):
            raise ValueError(f"ngram must be 1..{len(_K)}, not {ngram}")
        self.ngram, self.buckets, self.per_bucket, self.seed = ngram, buckets, per_bucket, seed
        self.num_perm = buckets * per_bucket
        self.batch = batch_docs

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 shingle hashes of every text, one after the other; offsets: len(texts)+1)."""
        words = RMinHash.hash_token_sets([_WORD.findall(t.lower()) for t in texts])
        lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        w = np.fromiter((x for ws in words for x in ws), dtype=np.uint64, count=int(lens.sum()))
        n = self.ngram
        # a text shorter than n words: one shingle of the words it has (an empty one: a fixed hash)
        pad = np.maximum(n - lens, 0)
        if pad.any():
            parts, start = [], 0
            for ln, p in zip(lens, pad):
                parts.append(w[start : start + ln])
                if p:
                    parts.append(np.zeros(p, dtype=np.uint64))
                start += ln
            w = np.concatenate(parts) if parts else w
            lens = lens + pad
        counts = lens - n + 1
        m = len(w) - n + 1
        h = np.zeros(max(m, 0), dtype=np.uint64)
        for j in range(n):
            h += w[j : j + m] * _K[j]
        h = _mix(h)
        # keep the shingles inside one text: drop the n-1 that straddle each boundary
        starts = np.cumsum(lens) - lens
        keep = np.ones(max(m, 0), dtype=bool)
        for j in range(1, n):
            cut = starts[1:] - j
            keep[cut[cut >= 0]] = False
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
        return h[keep], offsets

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for i in range(0, len(texts), self.batch):
            flat, offsets = self.shingles(texts[i : i + self.batch])
            mat = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, self.num_perm, self.seed)
            out[i : i + self.batch] = np.array(mat.to_rows(), dtype=np.uint32).reshape(-1, self.num_perm)
        return out

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


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' word n-gram sets (the quantity MinHash estimates)."""
    def grams(t: str) -> set[tuple[str, ...]]:
        ws = _WORD.findall(t.lower())
        n = min(ngram, len(ws))
        return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)} if ws else {()}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


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
