"""The mixture as a PyTorch IterableDataset of local batches, resumable mid-epoch.

The dataset yields whole local batches (one per global batch, this rank's slice). With DataLoader
workers, worker w makes batches start+w, start+w+K, ...; the DataLoader takes them round robin,
so the trainer sees batches in order. Batch b reads from lane b % lanes and K must divide lanes, so
each lane belongs to one worker and the stream is the same for any K that divides `lanes`.

The stream is a pure function of (mixture, catalogue, world size, rank, epoch, batch index): the
state is just (epoch, batch) plus, for checking, each source's per-lane positions. `MixLoader`
counts the batches the trainer has taken (not what workers prefetched), so a state saved at any
point restores exactly, whatever the number of workers before and after.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash
from torch.utils.data import IterableDataset, get_worker_info

from mmdata import config as cfgmod
from mmdata.config import MixSource, Mixture
from mmdata.mix import reader
from mmdata.mix.decode import Decoder, estimate_tokens, parse
from mmdata.mix.plan import MixDamaged, MixError, MixExhausted, Plan, tag
from mmdata.tar import ShardError

FORMAT = "mmdata.mix/1"


@dataclass
class Source:
    name: str
    cfg: MixSource
    shards: list[tuple[str, int]]
    weight: float  # what the plan allocates by: samples share (unit=tokens: divided by tokens/sample)
    reads: reader.Shards  # reads its shards, checking each against the catalogue
    tokens: float | None = None  # tokens per sample (estimate)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.shards)


def load_mixture(mixture: Mixture | str | Path, overrides: list[str] = ()) -> Mixture:
    return mixture if isinstance(mixture, Mixture) else cfgmod.load(mixture, Mixture, overrides)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MixDataset(IterableDataset):
    """This rank's local batches of a mixture. `decode=False` yields raw samples (bytes) instead of
    tensors. `num_workers` is the DataLoader's, checked against `lanes` before anything starts.
    `transform(batch) -> batch`, when given, runs on every batch inside the worker that made it
    (`decode.Normalize` for float images on CPU; the trainer tokenises and packs there); it must
    keep `epoch`, `batch` and `sources` (and `caption`, `tokens` for MixLoader's counts)."""

    def __init__(self, mixture: Mixture | str | Path, *, rank: int | None = None, world_size: int | None = None,
                 num_workers: int = 0, decode: bool = True, transform: Callable[[dict], dict] | None = None):
        self.mix = m = load_mixture(mixture)
        auto = _distributed()
        self.rank = auto[0] if rank is None else rank
        self.world = auto[1] if world_size is None else world_size
        self.num_workers, self.decode, self.transform = num_workers, decode, transform
        if not 0 <= self.rank < self.world:
            raise MixError(f"rank {self.rank} is outside world_size {self.world}")
        self._check_workers(max(1, num_workers))
        self.readers = self.world * m.lanes
        self.damaged: list[dict] = []  # shards left out before the first batch (damaged: skip)
        self.sources = [self._source(n, s) for n, s in m.sources.items() if s.weight > 0]
        self.idle = [n for n, s in m.sources.items() if s.weight == 0]
        self.plan = Plan([s.weight for s in self.sources], m.global_batch, self.world, seed=m.seed,
                         guarantee=m.guarantee)
        self.decoder = Decoder(m.decode)
        self.epoch, self.batch = 0, 0
        # where DataLoader workers start: they hold copies of this object, and persistent ones outlive
        # an iter(), so the main process publishes (epoch, batch) through shared memory before each
        # iter() (`_publish`), and never while workers may still be starting
        self._start = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._pieces: dict[int, list[list[list[reader.Piece]]]] = {}
        self._ends: dict[int, tuple[int | None, str | None]] = {}

    # -- set-up

    def _check_workers(self, k: int) -> None:
        if self.mix.lanes % k:
            raise MixError(f"DataLoader num_workers={k} does not divide the mixture's lanes={self.mix.lanes}; "
                           f"use a divisor of {self.mix.lanes} or change `lanes` (which changes the stream)")

    def _source(self, name: str, cfg: MixSource) -> Source:
        cat = reader.catalogue(name, cfg.shards, damaged=self.mix.damaged)
        self.damaged += cat.damaged
        reads = reader.Shards(name, cat.refs, checksums=self.mix.checksums, damaged=self.mix.damaged)
        src = Source(name, cfg, cat.shards, cfg.weight, reads)
        if src.total < self.readers:
            raise MixError(f"source '{name}' has {src.total} samples, fewer than its {self.readers} readers "
                           f"(world_size {self.world} x lanes {self.mix.lanes}); every reader needs one: "
                           f"lower `lanes` or add data")
        if self.mix.unit == "tokens":
            src.tokens = cfg.tokens_per_sample or self._probe(src)
            src.weight = cfg.weight / src.tokens
        return src

    def _probe(self, src: Source) -> float:
        """Mean estimated tokens per sample over the first `token_probe` samples (catalogue order,
        so every rank gets the same number)."""
        seen: list[int] = []
        for url, n in src.shards:
            piece = reader.Piece(url, 0, n)
            try:
                for sample in src.reads.read(piece):
                    seen.append(estimate_tokens(sample, self.mix.decode))
                    if len(seen) >= self.mix.token_probe:
                        return float(np.mean(seen))
            except (ShardError, OSError) as e:
                src.reads.damage(piece, 0, e)  # raises under damaged: stop
        if not seen:
            raise MixDamaged(f"source '{src.name}': no sample could be read to estimate its tokens per sample")
        return float(np.mean(seen))

    def pieces(self, epoch: int) -> list[list[list[reader.Piece]]]:
        """[source][reader] -> pieces; reader = rank * lanes + lane."""
        if epoch not in self._pieces:
            self._pieces = {epoch: [reader.split(s.shards, self.readers, self.mix.seed, s.name, epoch)
                                    for s in self.sources]}
        return self._pieces[epoch]

    def sizes(self, epoch: int) -> np.ndarray:
        """[sources, ranks, lanes]: samples each reader holds this epoch."""
        out = np.array([[sum(len(p) for p in ps) for ps in src] for src in self.pieces(epoch)], dtype=np.int64)
        return out.reshape(len(self.sources), self.world, self.mix.lanes)

    def end(self, epoch: int) -> tuple[int | None, str | None]:
        """(batches in this epoch or None = endless, error to raise at that batch or None)."""
        if epoch not in self._ends:
            m = self.mix
            stop, error = m.steps_per_epoch, None
            if m.exhaustion != "cycle":
                hit = self.plan.exhaustion(epoch, self.sizes(epoch), m.steps_per_epoch)
                if hit is not None:
                    b, s, r, lane = hit
                    stop = b
                    if m.exhaustion == "error":
                        error = (f"source '{self.sources[s].name}' ran out at global batch {b} of epoch {epoch} "
                                 f"(rank {r}, lane {lane} holds {self.sizes(epoch)[s, r, lane]} samples); "
                                 f"exhaustion: error")
            self._ends[epoch] = (stop, error)
        return self._ends[epoch]

    # -- iteration

    def __iter__(self):
        info = get_worker_info()
        k, w = (info.num_workers, info.id) if info else (1, 0)
        self._check_workers(k)
        m = self.mix
        epoch, start = (int(x) for x in self._start.tolist()) if info else (self.epoch, self.batch)
        stop, error = self.end(epoch)
        lanes = m.lanes
        mine = [lane for lane in range(lanes) if (lane - start - w) % k == 0]
        used = self.plan.consumed(epoch, start, self.rank, lanes)
        pieces = self.pieces(epoch)
        events: list[dict] = []  # shards skipped while reading (damaged: skip), reported with the next batch
        streams = {
            (s, lane): reader.stream(pieces[s][self.rank * lanes + lane], int(used[s, lane]),
                                     (m.seed, tag(src.name), epoch, self.rank, lane), src.reads, events)
            for s, src in enumerate(self.sources) for lane in mine
        }
        b = start + w
        try:
            while stop is None or b < stop:
                lane = b % lanes
                picks = [(s, *next(streams[(s, lane)])) for s in self.plan.order(epoch, b, self.rank)]
                if m.exhaustion != "cycle" and any(p for _, p, _ in picks):
                    s = next(s for s, p, _ in picks if p)
                    raise MixDamaged(f"source '{self.sources[s].name}' ran out at global batch {b} of epoch {epoch} "
                                     f"(rank {self.rank}, lane {lane}) after skipping damaged shards (damaged: skip); "
                                     f"exhaustion: {m.exhaustion} never reads a sample twice in an epoch")
                batch = self._batch(epoch, b, picks)
                batch["damaged"], events[:] = events[:], []
                self.epoch, self.batch = epoch, b + 1  # in-process use: the state follows what was yielded
                yield batch
                b += k
            if error is not None and b == stop:  # only the worker whose turn it is raises, so it comes in order
                raise MixExhausted(error)
        except MixError as e:
            if info is None:
                raise
            # a DataLoader worker: the error travels as the batch of its turn, so the trainer gets this
            # one line (MixLoader raises it), not a worker traceback wrapped in another
            yield {"__error__": (type(e).__name__, str(e)), "epoch": epoch, "batch": b}
            return
        finally:
            for g in streams.values():
                g.close()
        self.epoch, self.batch = epoch + 1, 0

    def _batch(self, epoch: int, b: int, picks: list[tuple[int, int, dict]]) -> dict:
        names = [self.sources[s].name for s, _, _ in picks]
        samples = [x for _, _, x in picks]
        records = [parse(x) for x in samples]  # the only json.loads of a sample on this path
        synthetic = [self._synthetic(self.sources[s], epoch, x, r) for (s, _, x), r in zip(picks, records)]
        if self.decode:
            out = self.decoder.batch(samples, names, synthetic, epoch, b, records)
        else:
            out = {"samples": samples, "records": records, "sources": names, "keys": [x["__key__"] for x in samples],
                   "synthetic": synthetic, "tokens": [estimate_tokens(x, self.mix.decode, r) for x, r in zip(samples, records)],
                   "epoch": epoch, "batch": b}
        out["passes"] = [p for _, p, _ in picks]
        return out if self.transform is None else self.transform(out)

    def _synthetic(self, src: Source, epoch: int, sample: dict, record: dict) -> bool:
        """VeCap share: a seeded coin per (source, epoch, sample), the same on every rank and worker."""
        share = src.cfg.synthetic_share
        if share <= 0:
            return False
        h = xxhash.xxh64_intdigest(f"{self.mix.seed}/{src.name}/{epoch}/{sample['__key__']}".encode())
        return h / 2**64 < share and bool(record.get("synthetic_caption"))  # no VeCap caption: AltText

    # -- state

    def fingerprint(self) -> str:
        """What the stream depends on. Shard base names, not URLs: the same shards moved from local disk
        to S3 restore fine."""
        m = self.mix
        data = {
            "seed": m.seed, "global_batch": m.global_batch, "guarantee": m.guarantee, "unit": m.unit,
            "exhaustion": m.exhaustion, "lanes": m.lanes, "steps_per_epoch": m.steps_per_epoch,
            "sources": {s.name: {"units": u, "synthetic_share": s.cfg.synthetic_share,
                                 "shards": [[posixpath.basename(url), n] for url, n in s.shards]}
                        for s, u in zip(self.sources, self.plan.units)},
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def positions(self, epoch: int | None = None, batch: int | None = None) -> dict[str, list[int]]:
        """Samples each source's lanes of this rank have delivered before `batch`."""
        epoch = self.epoch if epoch is None else epoch
        batch = self.batch if batch is None else batch
        used = self.plan.consumed(epoch, batch, self.rank, self.mix.lanes)
        return {s.name: used[i].tolist() for i, s in enumerate(self.sources)}

    def state_dict(self) -> dict:
        return {
            "format": FORMAT, "mixture": self.mix.name, "fingerprint": self.fingerprint(),
            "world_size": self.world, "rank": self.rank, "lanes": self.mix.lanes, "num_workers": self.num_workers,
            "epoch": self.epoch, "batch": self.batch, "positions": self.positions(),
            # all randomness is counter-based: drawn from these, nothing else to save
            "rng": {"seed": self.mix.seed, "keys": "seed, source, epoch, batch, rank, lane, pass"},
        }

    def load_state_dict(self, state: dict) -> None:
        problems = []
        if state.get("format") != FORMAT:
            raise MixError(f"not a mixture sampler state (format {state.get('format')!r}, expected {FORMAT!r})")
        if state["world_size"] != self.world or state["rank"] != self.rank:
            problems.append(f"saved by rank {state['rank']} of world_size {state['world_size']}, this is rank "
                            f"{self.rank} of {self.world}: re-sharding across ranks is not supported; resume "
                            f"with world_size {state['world_size']} or start a new epoch")
        if state["lanes"] != self.mix.lanes:
            problems.append(f"saved with lanes={state['lanes']}, the mixture now has lanes={self.mix.lanes}")
        if state["fingerprint"] != self.fingerprint():
            problems.append("the mixture (weights, seed, batch, policy) or its shards changed since the state was saved")
        if problems:
            raise MixError("cannot restore the sampler state: " + "; ".join(problems))
        if self.positions(state["epoch"], state["batch"]) != state["positions"]:
            raise MixError("cannot restore the sampler state: its per-source positions disagree with the plan")
        self.epoch, self.batch = state["epoch"], state["batch"]
        self._publish()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0
        self._publish()

    def _publish(self) -> None:
        """Where the next iter()'s workers start: call before iter(DataLoader), never during one (a
        worker still starting would read a later batch)."""
        self._start[0], self._start[1] = self.epoch, self.batch


class MixLoader:
    """A DataLoader over a MixDataset that knows what the trainer has consumed.

    `state_dict()` at any point describes the batches handed out so far (prefetched ones are made
    again after a restore); `realized` counts samples per source, `synthetic` VeCap captions used.
    Defaults, each overridable through kwargs: memory pinned when CUDA is available; with workers,
    `persistent_workers` (they survive the end of an epoch or a `break`, and start the next iter()
    where the trainer stands) and `prefetch_factor` 2.
    """

    def __init__(self, dataset: MixDataset, *, num_workers: int = 0, **kwargs):
        dataset._check_workers(max(1, num_workers))
        self.dataset, self.num_workers, self.kwargs = dataset, num_workers, kwargs
        self.realized: Counter = Counter()
        self.synthetic: Counter = Counter()
        self.tokens: Counter = Counter()
        self.damaged: list[dict] = list(dataset.damaged)  # shards skipped (damaged: skip), never served
        self._dl = None

    def _loader(self):
        if self._dl is None:
            from torch.utils.data import DataLoader

            opts: dict = {"pin_memory": torch.cuda.is_available()}
            if self.num_workers:
                opts.update(persistent_workers=True, prefetch_factor=2)
            opts.update(self.kwargs)
            self._dl = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=as_is,
                                  **opts)
        return self._dl

    def __iter__(self):
        ds = self.dataset
        ds.num_workers = self.num_workers
        epoch = ds.epoch
        ds._publish()  # before iter(): fresh or persistent workers start from it
        for batch in self._loader():
            if "__error__" in batch:
                kind, message = batch["__error__"]
                raise _ERRORS.get(kind, MixError)(message)
            ds.epoch, ds.batch = batch["epoch"], batch["batch"] + 1
            self._tally(batch)
            yield batch
        ds.epoch, ds.batch = epoch + 1, 0  # the epoch ran to its end

    def _tally(self, batch: dict) -> None:
        self.damaged += batch.get("damaged", ())
        self.realized.update(batch["sources"])
        flags = batch.get("synthetic") or [c == "synthetic" for c in batch.get("caption", [])]
        self.synthetic.update(s for s, f in zip(batch["sources"], flags) if f)
        for s, t in zip(batch["sources"], batch.get("tokens", [])):
            self.tokens[s] += t

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


_ERRORS = {"MixDamaged": MixDamaged, "MixExhausted": MixExhausted}


def as_is(batch: dict) -> dict:
    """Batches are made whole in the dataset; torch's default_convert would walk every raw sample."""
    return batch


def loader(mixture: Mixture | str | Path, *, rank: int | None = None, world_size: int | None = None,
           num_workers: int = 2, decode: bool = True, transform: Callable[[dict], dict] | None = None,
           **kwargs) -> MixLoader:
    """The trainer's entry point: `for batch in loader("pipelines/mixtures/mm1.yaml"): ...`.
    rank and world_size default to torch.distributed's; `transform` runs on each batch in the
    worker (picklable; see MixDataset); kwargs go to the DataLoader."""
    ds = MixDataset(mixture, rank=rank, world_size=world_size, num_workers=num_workers, decode=decode,
                    transform=transform)
    return MixLoader(ds, num_workers=num_workers, **kwargs)
