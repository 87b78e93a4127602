"""What a workdir holds, read from the files its stages wrote (never recomputed another way).

One listing of the workdir (local or any fsspec URL) classifies every file the report reads:
each folder of `{id}_stats.json` files is a step (`download`, `clipscore/_scores`,
`shards/_state/captions`, ...), each `_funnel.json` a funnel, `_decision.json` clipscore's
threshold, `log.jsonl` beside `recipe.json` a training run, `results.jsonl` an evaluation,
`mixture/stats.json` the mixture sampler's count. Stage folders are found by what they hold, so a
workdir made by any recipe (or several) reads the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from mmdata import decisions, fsio, samples, tar
from mmdata.pipeline import STAGES

STATS = "_stats.json"
MIX_STATS = "mixture/stats.json"  # written by `mmdata mix-stats --out` and the demo
CAPTION_SIDECARS = ("filter", "dedup", "clipscore", "recaption")  # stages that add columns to the pairs, in order


@dataclass
class Step:
    """One folder of shard stats: a stage's per-shard task (or a pass of it)."""

    path: str  # relative to the workdir
    stats: list[dict]

    @property
    def stage(self) -> str:
        return next((s["stage"] for s in self.stats if s.get("stage")), self.path.split("/")[0])

    @property
    def records(self) -> int:
        return sum(int(s.get("count", 0)) for s in self.stats)

    @property
    def kept(self) -> int:
        return sum(int(s.get("successes", 0)) for s in self.stats)

    @property
    def task_seconds(self) -> float:
        return sum(float(s.get("duration", 0.0)) for s in self.stats)

    @property
    def wall_seconds(self) -> float | None:
        """From the first shard task's start to the last one's end."""
        starts = [s["started"] for s in self.stats if "started" in s]
        ends = [s["finished"] for s in self.stats if "finished" in s]
        return max(ends) - min(starts) if starts and ends else None

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stats:
            for k, n in (s.get("status_dict") or {}).items():
                out[k] = out.get(k, 0) + int(n)
        return out


def _order(path: str) -> tuple:
    """Pipeline order: a stage's passes before its own folder's decision, the streams in order."""
    parts = path.split("/")
    names = list(STAGES)
    first = names.index(parts[0]) if parts[0] in names else len(names)
    return first, parts[0], 0 if len(parts) > 1 else 1, path


@dataclass
class Workdir:
    url: str
    files: list[str] = field(default_factory=list)  # every file, relative to url
    _tables: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, url: str) -> Workdir:
        url = url.rstrip("/")
        fs, path = fsio.fs_path(url)
        if not fs.isdir(path):
            raise FileNotFoundError(f"{url}: no such workdir")
        base = path.rstrip("/") + "/"
        files = sorted(p[len(base):] for p in fs.find(path) if p.startswith(base))
        return cls(url, files)

    def join(self, rel: str) -> str:
        return fsio.join(self.url, rel)

    def has(self, rel: str) -> bool:
        return rel in self._fileset

    @cached_property
    def _fileset(self) -> set[str]:
        return set(self.files)

    def json(self, rel: str):
        return fsio.read_json(self.join(rel))

    def jsonl(self, rel: str) -> list[dict]:
        text = fsio.read_bytes(self.join(rel)).decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def parquet(self, rel: str, columns: list[str] | None = None) -> pd.DataFrame:
        return fsio.read_parquet(self.join(rel), columns)

    def many(self, fn, items: Iterable) -> list:
        items = list(items)
        with ThreadPoolExecutor(8) as pool:  # small files, mostly waiting on the file system
            return list(pool.map(fn, items))

    # -- steps and funnels -----------------------------------------------------------------------

    @cached_property
    def steps(self) -> list[Step]:
        folders: dict[str, list[str]] = {}
        for f in self.files:
            folder, _, name = f.rpartition("/")
            if name.endswith(STATS) and folder:
                folders.setdefault(folder, []).append(f)
        out = []
        for folder in sorted(folders, key=_order):
            stats = [s for s in self.many(self.json, folders[folder]) if isinstance(s, dict) and "count" in s]
            if stats:
                out.append(Step(folder, stats))
        return out

    def step(self, path: str) -> Step | None:
        return next((s for s in self.steps if s.path == path), None)

    @cached_property
    def funnels(self) -> list[tuple[str, dict]]:
        """(folder, funnel) for every `_funnel.json`, in pipeline order."""
        rels = [f for f in self.files if f.rsplit("/", 1)[-1] == decisions.FUNNEL]
        rels.sort(key=lambda r: _order(r.rsplit("/", 1)[0]))
        return [(r.rsplit("/", 1)[0], self.json(r)) for r in rels]

    # -- the caption stream ------------------------------------------------------------------

    @cached_property
    def pair_shards(self) -> list[str]:
        """Ids of the download shard set's finished shards."""
        step = self.step("download")
        return sorted(s["shard"] for s in step.stats) if step else []

    def sidecars(self) -> list[str]:
        """The caption stream's sidecar stages present for every download shard, in pipeline order."""
        ids = self.pair_shards
        return [s for s in CAPTION_SIDECARS if ids and all(self.has(f"{s}/{i}.parquet") for i in ids)]

    def pair_table(self, shard_id: str, stages: list[str]) -> pd.DataFrame:
        """The download metadata of a shard joined with each sidecar's columns (`stage.col`), with
        each record's first reason (`mmdata.decisions.first_reason`, what the shards stage keeps)."""
        key = (shard_id, tuple(stages))
        if key not in self._tables:
            self._tables[key] = self._pair_table(shard_id, stages)
        return self._tables[key]

    def _pair_table(self, shard_id: str, stages: list[str]) -> pd.DataFrame:
        df = self.parquet(f"download/{shard_id}.parquet")
        for stage in stages:
            side = self.parquet(f"{stage}/{shard_id}.parquet")
            side = side.rename(columns={c: f"{stage}.{c}" for c in side.columns if c != "key"})
            df = df.merge(side, on="key", how="left", validate="one_to_one")
        df["reason"] = decisions.first_reason(df, [s for s in stages if f"{s}.drop_reason" in df])
        return df

    def images(self, folder: str, shard_id: str, keys: Iterable[str]) -> dict[str, bytes]:
        """key -> image bytes, read by byte range from `{folder}/{id}.tar` (absent keys are left out)."""
        found = self.members(folder, shard_id, keys, lambda ext: ext in samples.IMAGE_EXTS)
        return {k: next(iter(m.values())) for k, m in found.items() if m}

    def members(self, folder: str, shard_id: str, keys: Iterable[str], wanted=lambda ext: True) -> dict[str, dict]:
        """key -> {ext: bytes} of its members whose extension `wanted` accepts, read by byte range
        from `{folder}/{id}.tar`, in shard order; absent keys are left out."""
        rel = f"{folder}/{shard_id}.tar"
        if not self.has(rel):
            return {}
        url = self.join(rel)
        index = samples.index_shard(url)
        picks = []
        for k in keys:
            if k in index:
                mine = [(e, off, size) for e, off, size in index[k] if wanted(e)]
                picks += [(k, e, off, size) for e, off, size in mine]
        blobs = tar.read_ranges(url, [(o, n) for _, _, o, n in picks]) if picks else []
        out: dict[str, dict] = {}
        for (k, e, _, _), b in zip(picks, blobs):
            out.setdefault(k, {})[e] = b
        return out

    # -- everything else -------------------------------------------------------------------------

    def named(self, name: str, beside: str | None = None) -> list[str]:
        """Files called `name` (with `beside` in the same folder), shallowest first."""
        out = []
        for f in self.files:
            folder, _, base = f.rpartition("/")
            if base == name and (beside is None or self.has(f"{folder}/{beside}" if folder else beside)):
                out.append(f)
        return sorted(out, key=lambda f: (f.count("/"), f))

    # -- training runs -------------------------------------------------------------------------

    def training_runs(self) -> list[str]:
        """Folders (relative) of the trainer's runs: a `log.jsonl` beside a `recipe.json`."""
        return [f.rpartition("/")[0] for f in self.named("log.jsonl", beside="recipe.json")]

    def checkpoint(self, run: str) -> str | None:
        """The run's newest complete checkpoint folder (`checkpoints/step-N/done.json` is written last)."""
        prefix = f"{run}/checkpoints/" if run else "checkpoints/"
        done = [f.rpartition("/")[0] for f in self.files
                if f.startswith(prefix) and f.endswith("/done.json") and f.count("/") == prefix.count("/") + 1]
        return max(done) if done else None
