"""`mix-stats`: read N global batches of a mixture (every simulated rank) and count what came out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmdata.config import Mixture


@dataclass
class Stats:
    mixture: Mixture
    batches: int = 0  # global batches read
    samples: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    synthetic: Counter = field(default_factory=Counter)
    passes: Counter = field(default_factory=Counter)  # highest pass reached per source (1 = first)
    repeats: Counter = field(default_factory=Counter)  # samples seen again within the run
    damaged: list = field(default_factory=list)  # shards skipped (damaged: skip): {source, shard, error, skipped}
    end: str = ""

    def rows(self) -> list[dict]:
        weights = {n: s.weight for n, s in self.mixture.sources.items()}
        wsum, n, t = sum(weights.values()), sum(self.samples.values()) or 1, sum(self.tokens.values()) or 1
        return [{"source": k, "weight": w, "target": w / wsum, "samples": self.samples[k],
                 "share": self.samples[k] / n, "tokens": self.tokens[k], "token_share": self.tokens[k] / t,
                 "synthetic": self.synthetic[k], "passes": self.passes[k], "repeats": self.repeats[k]}
                for k, w in weights.items()]

    def table(self) -> str:
        unit = self.mixture.unit
        head = (f"{self.mixture.name}: {self.batches} global batches of {self.mixture.global_batch} "
                f"({self.mixture.guarantee}, ratios in {unit}, exhaustion {self.mixture.exhaustion}){self.end}")
        lines = [head, (f"{'source':<16}{'weight':>8}{'target':>8}{'samples':>10}{'share':>8}"
                        f"{'~tokens':>12}{'tok.share':>10}{'vecap':>8}{'passes':>8}{'repeats':>9}")]
        for r in self.rows():
            lines.append(f"{r['source']:<16}{r['weight']:>8g}{r['target']:>8.2%}{r['samples']:>10}{r['share']:>8.2%}"
                         f"{r['tokens']:>12}{r['token_share']:>10.2%}{r['synthetic']:>8}{r['passes']:>8}"
                         f"{r['repeats']:>9}")
        for d in self.damaged:
            lines.append(f"skipped (damaged: skip, never served): {d['error']}"
                         + (f" ({d['skipped']} samples)" if d.get("skipped") is not None else ""))
        return "\n".join(lines)

    def record(self) -> dict:
        """What was read, as plain data: the mixture as configured and each source's counts."""
        return {"mixture": self.mixture.model_dump(mode="json"), "batches": self.batches, "end": self.end,
                "rows": self.rows(), "damaged": self.damaged}

    def write(self, url: str) -> str:
        """`record()` as JSON at `url` (atomic; `mmdata report` reads `{workdir}/mixture/stats.json`)."""
        from mmdata import fsio

        fsio.write_json(url, self.record())
        return url


def run(mixture: Mixture | str | Path, batches: int, *, world_size: int = 1, num_workers: int = 0,
        overrides: list[str] = ()) -> Stats:
    """Read `batches` global batches (every rank in turn, raw samples, images not decoded)."""
    from mmdata.mix.dataset import MixDataset, MixLoader, load_mixture
    from mmdata.mix.plan import MixExhausted

    mix = load_mixture(mixture, overrides)
    out = Stats(mix)
    seen: set[tuple[str, str]] = set()
    reached = 0
    for rank in range(world_size):
        ds = MixDataset(mix, rank=rank, world_size=world_size, num_workers=num_workers, decode=False)
        n = 0
        ld = MixLoader(ds, num_workers=num_workers)
        if rank:
            ld.damaged = []  # the catalogue's skips are the same on every rank: counted once
        try:
            for batch in ld:
                for src, x, p, syn, tok in zip(batch["sources"], batch["samples"], batch["passes"], batch["synthetic"],
                                               batch["tokens"]):
                    out.samples[src] += 1
                    out.tokens[src] += tok
                    out.synthetic[src] += syn
                    out.passes[src] = max(out.passes[src], p + 1)
                    ident = (src, f"{x['__url__'].rsplit('/', 1)[-1]}/{x['__key__']}")
                    out.repeats[src] += ident in seen
                    seen.add(ident)
                n += 1
                if n >= batches:
                    break
        except MixExhausted as e:
            out.end = f"; stopped: {e}"
        out.damaged += ld.damaged
        reached = max(reached, n)
    out.batches = reached
    if reached < batches and not out.end:
        out.end = f"; the epoch ended after {reached} batches (exhaustion: {mix.exhaustion})"
    return out
