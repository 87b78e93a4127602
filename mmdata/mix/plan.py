"""The deterministic allocation: which source each position of each global batch draws from.

`exact`: every global batch holds floor or ceil of weight x batch samples of each source. The floors
are fixed; the remainder seats go, batch after batch, to the sources with the largest accumulated
fractional credit (largest remainder, rotated), so that after n batches each source is within one
sample of its exact share. Integer arithmetic only: no float drift over millions of batches.
`expected`: each position draws its source independently (a multinomial per batch).

A global batch is dealt to ranks stratified: positions sorted by source are dealt round robin,
rotated by the batch index, so every rank gets the same number of samples and each source's count
per rank differs by at most one. Local batch `b` of a rank reads from lane `b % lanes`.
Randomness is counter-based (a seed sequence of seed, epoch, batch, rank), so any batch can be
planned without replaying the ones before it; there is no hidden RNG state to save.
"""

from __future__ import annotations

import zlib
from fractions import Fraction
from math import lcm

import numpy as np

_ORDER, _DRAW = 1, 2  # stream tags, so the shuffle and the expected-mode draws never share a seed


class MixError(Exception):
    """A mixture that cannot be served as configured, phrased for the user."""


class MixExhausted(MixError):
    """exhaustion: error, and a source ran out."""


class MixDamaged(MixError):
    """A shard that is missing, damaged, miscounted or differs from what was written (damaged: stop),
    phrased as one line naming the source, the shard and the byte offset."""


def tag(name: str) -> int:
    return zlib.crc32(name.encode())


def rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def integer_weights(weights: list[float]) -> list[int]:
    """Weights as integers with the same ratios (through fractions, so 0.07 stays 7/100)."""
    fr = [Fraction(w).limit_denominator(10**6) for w in weights]
    den = lcm(*(f.denominator for f in fr))
    ints = [int(f * den) for f in fr]
    g = np.gcd.reduce([i for i in ints if i]) if any(ints) else 1
    return [i // int(g) for i in ints]


class Plan:
    """Per-batch source counts (global and per rank) and each rank's sample order."""

    def __init__(self, weights: list[float], global_batch: int, world_size: int, *, seed: int = 0,
                 guarantee: str = "exact"):
        if global_batch % world_size:
            raise MixError(f"global_batch {global_batch} is not divisible by world_size {world_size}")
        self.n, self.batch, self.world, self.seed, self.guarantee = len(weights), global_batch, world_size, seed, guarantee
        self.units = integer_weights(weights)
        total = sum(self.units)
        self.p = np.array(self.units, dtype=float) / total
        self.base = [u * global_batch // total for u in self.units]
        self.rem = [u * global_batch % total for u in self.units]
        self.extra = sum(self.rem) // total  # remainder seats per batch
        self.total = total
        self._at, self._credit = 0, [0] * self.n
        self._ranks = np.arange(world_size)
        self._consumed: dict[tuple, tuple[int, np.ndarray]] = {}

    # -- global counts

    def counts(self, epoch: int, b: int) -> np.ndarray:
        """Samples of each source in global batch `b` of `epoch`."""
        if self.guarantee == "expected":
            return rng(self.seed, _DRAW, epoch, b).multinomial(self.batch, self.p)
        if b < self._at:  # rotation restarts every epoch; seeking back replays from 0
            self._at, self._credit = 0, [0] * self.n
        while self._at < b:
            self._step()
        credit = self._credit[:]
        out = self._step(credit)
        return np.array(out, dtype=np.int64)

    def _step(self, credit: list[int] | None = None) -> list[int]:
        advance = credit is None
        credit = self._credit if advance else credit
        for i, r in enumerate(self.rem):
            credit[i] += r
        top = sorted(range(self.n), key=lambda i: (-credit[i], -self.rem[i], i))[: self.extra]
        out = self.base[:]
        for i in top:
            credit[i] -= self.total
            out[i] += 1
        if advance:
            self._at += 1
        return out

    # -- per rank

    def rank_counts(self, epoch: int, b: int) -> np.ndarray:
        """[sources, ranks]: each rank's share of global batch `b`."""
        c = self.counts(epoch, b)
        start = np.concatenate([[0], np.cumsum(c)[:-1]])
        first = (start + b) % self.world  # the rank that gets each source's first position
        extra = ((self._ranks[None, :] - first[:, None]) % self.world) < (c % self.world)[:, None]
        return (c // self.world)[:, None] + extra

    def order(self, epoch: int, b: int, rank: int) -> np.ndarray:
        """Source index of every position of rank `rank`'s local batch `b`, shuffled."""
        labels = np.repeat(np.arange(self.n), self.rank_counts(epoch, b)[:, rank])
        return rng(self.seed, _ORDER, epoch, b, rank).permutation(labels)

    def consumed(self, epoch: int, b: int, rank: int, lanes: int) -> np.ndarray:
        """[sources, lanes]: samples a rank's lanes have read before local batch `b`."""
        key = (epoch, rank, lanes)
        at, out = self._consumed.get(key, (0, None))
        if out is None or at > b:  # cached walks forward only: state_dict() every N steps stays cheap
            at, out = 0, np.zeros((self.n, lanes), dtype=np.int64)
        out = out.copy()
        for i in range(at, b):
            out[:, i % lanes] += self.rank_counts(epoch, i)[:, rank]
        self._consumed[key] = (b, out)
        return out.copy()

    def exhaustion(self, epoch: int, sizes: np.ndarray, limit: int | None) -> tuple[int, int, int, int] | None:
        """First global batch that some reader cannot fill: (batch, source, rank, lane), or None.

        `sizes` is [sources, ranks, lanes]: samples each reader holds this epoch. Every rank computes
        the same answer from the same catalogue, so all ranks stop at the same batch (no DDP hang).
        """
        lanes = sizes.shape[2]
        used = np.zeros_like(sizes)
        b = 0
        while limit is None or b < limit:
            lane = b % lanes
            used[:, :, lane] += self.rank_counts(epoch, b)
            over = np.argwhere(used[:, :, lane] > sizes[:, :, lane])
            if len(over):
                s, r = over[0]
                return b, int(s), int(r), lane
            b += 1
        return None
