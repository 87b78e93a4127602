"""Shard sets and the columns later stages add to them.

A shard set is a folder of `{id}.tar` + `{id}.parquet` + `{id}_stats.json`. Later stages never
rewrite it: each writes `{workdir}/{stage}/{id}.parquet` (a `key` column plus its own columns) and
`{id}_stats.json`. `table()` joins them; sidecar columns come back prefixed with their stage
(`filter.lang`, `clip.score`), so two stages can never clobber each other's columns. A stage that
decides writes `drop_reason` (null when it keeps the record); `mmdata.decisions.kept` applies every
decision (re-exported here as `kept`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mmdata import fsio, samples
from mmdata.config import ConfigError
from mmdata.decisions import kept
from mmdata.engine import Shard, finished, in_progress

__all__ = ["ShardFiles", "ShardSet", "kept", "table"]


@dataclass(frozen=True)
class ShardFiles:
    """What a stage reads of one shard of a shard set: its tar (absent when every record failed)
    and its metadata parquet (one row per input record)."""

    tar: str
    meta: str


@dataclass(frozen=True)
class ShardSet:
    url: str

    def tar(self, shard_id: str) -> str:
        return fsio.join(self.url, f"{shard_id}.tar")

    def meta(self, shard_id: str) -> str:
        return fsio.join(self.url, f"{shard_id}.parquet")

    def stats(self, shard_id: str) -> str:
        return fsio.join(self.url, f"{shard_id}_stats.json")

    def ids(self) -> list[str]:
        """Finished shards only: a shard without its stats file is still being written."""
        return sorted(finished(self.url))

    def shards(self) -> list[Shard[ShardFiles]]:
        return [Shard(i, ShardFiles(self.tar(i), self.meta(i))) for i in self.ids()]

    def require(self, stage: str) -> list[Shard[ShardFiles]]:
        """The finished shards `stage` reads; none is a recipe problem, said in one line."""
        if why := in_progress(self.url):
            raise ConfigError(f"{stage}: {self.url} is incomplete ({why}); rerun the stage that writes it first")
        shards = self.shards()
        if not shards:
            raise ConfigError(f"{stage}: no finished shards under {self.url} (run the stage that writes them first, "
                              f"or point {stage}.input elsewhere)")
        return shards

    def read_meta(self, shard_id: str) -> pd.DataFrame:
        return fsio.read_parquet(self.meta(shard_id))

    def samples(self, shard_id: str):
        """Samples of one shard; a shard whose records all failed has no tar."""
        url = self.tar(shard_id)
        return samples.read_shard(url) if fsio.exists(url) else iter(())


def table(base: ShardSet, shard_id: str, stage_dirs: dict[str, str]) -> pd.DataFrame:
    """The base metadata of a shard with each stage's columns joined on `key`, prefixed."""
    df = base.read_meta(shard_id)
    for stage, folder in stage_dirs.items():
        side = fsio.read_parquet(fsio.join(folder, f"{shard_id}.parquet"))
        side = side.rename(columns={c: f"{stage}.{c}" for c in side.columns if c != "key"})
        df = df.merge(side, on="key", how="left", validate="one_to_one")
    return df
