"""`dedup`: duplicates removed globally, across every shard, with the kept copy named.

Reads the download metadata (url, caption, sha256 of the original bytes, original size) and the
`filter` sidecars (pHashes and colour thumbnails, computed there so images are decoded once; and
filter's decisions: only what download fetched and filter kept takes part). Rules, in the recipe's
order, each applied to what the earlier ones kept:

- `eval_set`: an image of the evaluation set (sha256 equal, or pHash within `eval_set.phash_threshold`).
- `url`: the same URL again.            -> `duplicate_url_of:<key>`
- `pair`: the same caption and image.   -> `duplicate_pair_of:<key>`
- `image`: the same image bytes.        -> `duplicate_image_of:<key>`
- `near`: a perceptual near-duplicate.  -> `near_duplicate_of:<key>`

Exact rules shuffle the records by their hash (a Dask shuffle: each group lands in one partition)
and keep the smallest key of each group. Near-duplicates: every record's pHashes (whole image and
centre crops) are cut into bands, the bands shuffled by value, and pairs within the threshold found
inside each bucket (`mmdata.phash`); candidates are then checked for colour and aspect, and a
greedy pass in key order keeps the smallest key of each cluster. Every decision depends on the set
of records only, never on shard order or worker count.

A global step of the engine (`engine.run_global`): the reduce writes `_decisions.parquet` (the
global result, reused when a run resumes) and `_keep.parquet` (keys kept after download, filter and
dedup); the write-back writes `{id}.parquet` per shard (key, considered, drop_reason, duplicate_of)
+ stats; `_step.json` marks the whole step done, last; `_funnel.json` counts the records that were
in the running.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd

from mmdata import decisions, fsio
from mmdata import phash as ph
from mmdata.config import ConfigError, DedupConfig, Pipeline
from mmdata.engine import GlobalStep, Report, Shard, Stage, finished, run_global
from mmdata.store import ShardSet

REASONS = {"eval_set": "eval_set", "url": "duplicate_url_of", "pair": "duplicate_pair_of",
           "image": "duplicate_image_of", "near": "near_duplicate_of"}
EXACT = {"url": "url", "pair": "pair_hash", "image": "sha256"}
DECISIONS = "_decisions.parquet"


# ---------------------------------------------------------------------------------------------
# loading: one partition per shard


def load_shard(sid: str, meta_url: str, filter_url: str | None) -> pd.DataFrame:
    """The columns dedup needs of one shard's records that are still in the running."""
    meta = fsio.read_parquet(meta_url)
    w = meta["original_width"] if "original_width" in meta else meta["width"]
    h = meta["original_height"] if "original_height" in meta else meta["height"]
    df = pd.DataFrame({
        "key": meta["key"].astype(np.int64),
        "shard": sid,
        "alive": meta["status"].eq("success").to_numpy(),
        "url": meta["url"].astype("string"),
        "sha256": meta["sha256"].astype("string"),
        "aspect": pd.to_numeric(w, errors="coerce").astype(float) / pd.to_numeric(h, errors="coerce").astype(float),
    })
    captions = meta["caption"].fillna("").astype(str)
    df["pair_hash"] = [_pair_hash(c, s) for c, s in zip(captions, meta["sha256"].fillna(""))]
    if filter_url:
        side = fsio.read_parquet(filter_url, columns=["key", "drop_reason", "phash_variants", "colour"])
        side["key"] = side["key"].astype(np.int64)
        df = df.merge(side, on="key", how="left", validate="one_to_one")
        df["alive"] &= df["drop_reason"].isna().to_numpy()
        df = df.drop(columns="drop_reason")
    else:
        df["phash_variants"], df["colour"] = None, None
    return df.astype({"url": object, "sha256": object})


def _pair_hash(caption: str, sha: str) -> str:
    return hashlib.blake2b(f"{sha}\0{caption}".encode(), digest_size=12).hexdigest()


# ---------------------------------------------------------------------------------------------
# the rules (each on a Dask DataFrame of the records still alive)


def first_of_groups(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """(key, of) for every record of a group but its smallest key; runs on one shuffled partition."""
    df = df[df[col].notna()]
    first = df.groupby(col)["key"].transform("min")
    dup = df["key"] != first
    return pd.DataFrame({"key": df["key"][dup].to_numpy(np.int64), "of": first[dup].to_numpy(np.int64)})


def band_rows(df: pd.DataFrame, bands: int, rounds: int, seed: int) -> pd.DataFrame:
    """One row per (record, hash variant, band): what the near-duplicate shuffle moves."""
    df = df[df["phash_variants"].notna()]
    counts = np.fromiter((len(v) for v in df["phash_variants"]), dtype=np.int64, count=len(df))
    if not counts.sum():
        return pd.DataFrame({c: np.empty(0, np.int64) for c in ("bucket", "key", "var", "hash")})
    hashes = np.concatenate([np.asarray(v, dtype=np.int64) for v in df["phash_variants"]])
    keys = np.repeat(df["key"].to_numpy(np.int64), counts)
    var = np.concatenate([np.arange(c) for c in counts])
    buckets = ph.band_keys(hashes, bands, rounds, seed)
    width = buckets.shape[1]
    return pd.DataFrame({"bucket": buckets.ravel(), "key": np.repeat(keys, width), "var": np.repeat(var, width),
                         "hash": np.repeat(hashes, width)})


def pairs_in(df: pd.DataFrame, threshold: int) -> pd.DataFrame:
    p = ph.close_pairs(df["bucket"], df["key"], df["hash"], threshold, df["var"])
    return pd.DataFrame(p, columns=["a", "b", "va", "vb"])


def eval_matches(df: pd.DataFrame, shas: frozenset, ev_hashes: np.ndarray, threshold: int) -> pd.DataFrame:
    """(key, how) of the records matching the evaluation set; runs per partition (the set is broadcast)."""
    hit_sha = df["sha256"].isin(shas).to_numpy()
    out = [pd.DataFrame({"key": df["key"][hit_sha].to_numpy(np.int64), "how": "sha256"})]
    rest = band_rows(df[~hit_sha], threshold + 1, 1, 0)  # threshold+1 bands: every match is found
    if len(rest) and len(ev_hashes):
        ev = ph.band_keys(ev_hashes, threshold + 1)
        ids = -1 - np.arange(len(ev_hashes))  # below every record key
        bucket = np.r_[rest["bucket"], ev.ravel()]
        idx = np.r_[rest["key"], np.repeat(ids, ev.shape[1])]
        hashes = np.r_[rest["hash"], np.repeat(ev_hashes, ev.shape[1])]
        var = np.r_[rest["var"], np.zeros(ev.size, np.int64)]
        p = ph.close_pairs(bucket, idx, hashes, threshold, var)
        hit = np.unique(p[(p[:, 0] < 0) & (p[:, 1] >= 0), 1])
        out.append(pd.DataFrame({"key": hit, "how": "phash"}))
    return pd.concat(out, ignore_index=True)


def read_eval_set(path: str) -> tuple[frozenset, np.ndarray]:
    fmt = path.rsplit(".", 1)[-1].lower()
    with fsspec.open(path, "rb") as f:
        ev = pd.read_parquet(f) if fmt == "parquet" else pd.read_csv(f) if fmt == "csv" else pd.read_json(f, lines=True)
    shas = frozenset(ev["sha256"].dropna().astype(str).str.lower()) if "sha256" in ev else frozenset()
    hashes = np.empty(0, np.int64)
    if "phash" in ev:
        col = ev["phash"].dropna()
        hashes = np.array([ph.from_hex(v) if isinstance(v, str) else int(v) for v in col], dtype=np.int64)
    return shas, hashes


def verify_near(pairs: pd.DataFrame, info: pd.DataFrame, cfg) -> pd.DataFrame:
    """Candidate (a, b, va, vb) rows that also agree in colour (aligned thumbnails) and aspect."""
    if pairs.empty:
        return pairs
    info = info.set_index("key")
    ok = np.ones(len(pairs), dtype=bool)
    if cfg.max_aspect_change is not None:
        ra = info["aspect"].reindex(pairs["a"]).to_numpy() / info["aspect"].reindex(pairs["b"]).to_numpy()
        ok &= np.abs(np.log(ra)) <= np.log(cfg.max_aspect_change)
    if cfg.max_colour_distance is not None:
        n_var = info["phash_variants"].map(len)

        def thumbs(keys, var):
            rows = []
            for k, v in zip(keys, var):
                raw = np.frombuffer(info.at[k, "colour"], dtype=np.uint8)
                rows.append(raw.reshape(n_var[k], -1)[v].astype(np.float32))
            return np.stack(rows)

        dist = np.abs(thumbs(pairs["a"], pairs["va"]) - thumbs(pairs["b"], pairs["vb"])).mean(axis=1)
        ok &= dist <= cfg.max_colour_distance
    return pairs[ok]


class Decider:
    """The global step: records of every shard in, {key: (reason, of)} out."""

    def __init__(self, cfg: DedupConfig, client, partitions: int):
        self.cfg, self.client, self.partitions = cfg, client, partitions

    def compute(self, x):
        return self.client.compute(x).result()

    def run(self, ddf) -> pd.DataFrame:
        decided: list[pd.DataFrame] = []
        alive = ddf[ddf["alive"]]
        gone: np.ndarray = np.empty(0, np.int64)
        for rule in self.cfg.rules:
            if rule == "eval_set" and self.cfg.eval_set is None:
                continue
            if rule == "near" and not self.cfg.near.enabled:
                continue
            live = alive[~alive["key"].isin(gone)] if len(gone) else alive
            found = getattr(self, f"_{rule}")(live)
            decided.append(found.assign(rule=rule))
            gone = np.union1d(gone, found["key"].to_numpy(np.int64))
        if not decided:
            return pd.DataFrame({"key": np.empty(0, np.int64), "of": np.empty(0, np.int64), "rule": []})
        return pd.concat(decided, ignore_index=True).sort_values("key", ignore_index=True)

    def _exact(self, live, col: str) -> pd.DataFrame:
        groups = live[["key", col]].shuffle(on=col, npartitions=self.partitions, shuffle_method="tasks")
        meta = pd.DataFrame({"key": np.empty(0, np.int64), "of": np.empty(0, np.int64)})
        return self.compute(groups.map_partitions(first_of_groups, col, meta=meta))

    def _url(self, live):
        return self._exact(live, "url")

    def _pair(self, live):
        return self._exact(live, "pair_hash")

    def _image(self, live):
        return self._exact(live, "sha256")

    def _eval_set(self, live) -> pd.DataFrame:
        ev = self.cfg.eval_set
        shas, hashes = read_eval_set(ev.path)
        meta = pd.DataFrame({"key": np.empty(0, np.int64), "how": pd.Series([], dtype=object)})
        hits = self.compute(live.map_partitions(eval_matches, shas, hashes, ev.phash_threshold, meta=meta))
        return pd.DataFrame({"key": hits["key"].to_numpy(np.int64), "of": pd.array([pd.NA] * len(hits), dtype="Int64"),
                             "how": hits["how"].to_numpy()})

    def _near(self, live) -> pd.DataFrame:
        cfg = self.cfg.near
        empty = pd.DataFrame({c: np.empty(0, np.int64) for c in ("bucket", "key", "var", "hash")})
        rows = live[["key", "phash_variants"]].map_partitions(band_rows, cfg.bands, cfg.rounds, 0, meta=empty)
        rows = rows.shuffle(on="bucket", npartitions=self.partitions, shuffle_method="tasks")
        meta = pd.DataFrame({c: np.empty(0, np.int64) for c in ("a", "b", "va", "vb")})
        pairs = self.compute(rows.map_partitions(pairs_in, cfg.threshold, meta=meta)).drop_duplicates()
        involved = np.unique(pairs[["a", "b"]].to_numpy())
        cols = ["key", "aspect", "phash_variants", "colour"]
        info = self.compute(live[cols].map_partitions(lambda d: d[d["key"].isin(involved)], meta=live[cols]._meta))
        edges = verify_near(pairs, info, cfg)[["a", "b"]].drop_duplicates()
        dropped = ph.greedy_keep(edges["a"].to_numpy(), edges["b"].to_numpy())
        return pd.DataFrame({"key": np.fromiter(dropped, np.int64, len(dropped)),
                             "of": np.fromiter(dropped.values(), np.int64, len(dropped))})


# ---------------------------------------------------------------------------------------------
# per-shard sidecars from the global decisions


@dataclass(frozen=True)
class DedupInput:
    """What dedup reads of one shard: the download metadata and, when filter ran, its sidecar."""

    meta: str
    filter: str | None = None


@dataclass(frozen=True)
class ShardDecisions:
    """What the write-back reads for one shard: its inputs and the global decisions table."""

    meta: str
    filter: str | None
    decisions: str


class WriteDecisions(Stage):
    name = "dedup"
    reasons = ("eval_set_sha256", "eval_set_phash", "duplicate_url_of", "duplicate_pair_of", "duplicate_image_of",
               "near_duplicate_of")

    def process(self, shard: Shard[ShardDecisions], out: str) -> dict:
        import pyarrow.parquet as pq

        with fsspec.open(shard.input.decisions, "rb") as f:
            mine = pq.read_table(f, filters=[("shard", "=", shard.id)]).to_pandas()
        base = load_shard(shard.id, shard.input.meta, shard.input.filter)[["key", "alive"]]
        df = base.merge(mine[["key", "drop_reason", "duplicate_of"]], on="key", how="left", validate="one_to_one")
        width = max(9, int(df["key"].astype(str).str.len().max() or 9))
        side = pd.DataFrame({
            "key": df["key"].astype(str).str.zfill(width),
            "considered": df["alive"].to_numpy(),
            "drop_reason": df["drop_reason"].astype("string"),
            "duplicate_of": df["duplicate_of"].astype("string"),
        })
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), side)
        reasons = side["drop_reason"].str.split(":").str[0]
        status = reasons.where(side["considered"], "not_considered").fillna("kept")
        considered = side[side["considered"]]
        return {
            "count": len(considered),  # the funnel counts what was in the running
            "successes": int(considered["drop_reason"].isna().sum()),
            "status_dict": {k: int(v) for k, v in status.value_counts().items()},
            "dropped": decisions.counts(considered["drop_reason"].dropna()),
        }


def decisions_table(found: pd.DataFrame, shard_of: pd.Series, width: int) -> pd.DataFrame:
    of = pd.Series(found["of"], dtype="Int64").astype("string").str.zfill(width)
    how = found["how"] if "how" in found else pd.Series(pd.NA, index=found.index)
    reason = [
        f"eval_set_{h}" if r == "eval_set" else f"{REASONS[r]}:{o}"
        for r, o, h in zip(found["rule"], of, how)
    ]
    return pd.DataFrame({
        "key": found["key"].to_numpy(np.int64),
        "shard": shard_of.reindex(found["key"]).to_numpy(),
        "rule": found["rule"].to_numpy(),
        "drop_reason": reason,
        "duplicate_of": of.to_numpy(),
    })


class Dedup(GlobalStep):
    """The global step: every shard's records in, `_decisions.parquet` and `_keep.parquet` out,
    then one sidecar per shard."""

    name = "dedup"

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg

    def reduce(self, client, shards: list[Shard[DedupInput]], out: str) -> dict:
        import dask
        import dask.dataframe as dd

        ids = [s.id for s in shards]
        # dask would turn every object column into strings: hash lists and thumbnails are not text
        with dask.config.set({"dataframe.convert-string": False}):
            ddf = dd.from_map(load_shard, ids, [s.input.meta for s in shards], [s.input.filter for s in shards])
            ddf = client.persist(ddf)
            found = Decider(self.cfg, client, self.cfg.partitions or len(ids)).run(ddf)
            keys = client.compute(ddf[["key", "shard", "alive"]]).result()
            width = max(9, len(str(int(keys["key"].max()))) if len(keys) else 9)
            table = decisions_table(found, keys.set_index("key")["shard"], width)
        fsio.write_parquet(fsio.join(out, DECISIONS), table)
        kept = keys[keys["alive"] & ~keys["key"].isin(table["key"])].sort_values("key")
        fsio.write_parquet(fsio.join(out, "_keep.parquet"), pd.DataFrame({
            "key": kept["key"].astype(str).str.zfill(width).to_numpy(), "shard": kept["shard"].to_numpy()}))
        counts = table["rule"].value_counts()
        return {"considered": int(keys["alive"].sum()), "kept": len(kept),
                "dropped": {REASONS[r]: int(counts.get(r, 0)) for r in self.cfg.rules}}

    def write_back(self, shards: list[Shard[DedupInput]], out: str) -> tuple[Stage, list[Shard]]:
        table = fsio.join(out, DECISIONS)
        return WriteDecisions(), [Shard(s.id, ShardDecisions(s.input.meta, s.input.filter, table)) for s in shards]


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> Report:
    cfg = pipeline.section("dedup")
    source = ShardSet(cfg.input or pipeline.output("download"))
    filter_dir = cfg.filter or pipeline.stage_dir("filter")
    ids = [s.id for s in source.require("dedup")]
    use_filter = bool(finished(filter_dir))
    if use_filter and (missing := sorted(set(ids) - finished(filter_dir))):
        raise ConfigError(f"dedup: filter has not finished shards {', '.join(missing[:5])} (run `filter` first)")
    shards = [Shard(i, DedupInput(source.meta(i), fsio.join(filter_dir, f"{i}.parquet") if use_filter else None)) for i in ids]
    return run_global(Dedup(cfg), shards, pipeline.stage_dir("dedup"), pipeline.engine, client=client,
                      overwrite=overwrite, root=pipeline.workdir)
