"""The `shards` stage: the kept samples of each stream into shuffled, sized training shards with a manifest.

Streams: `captions` (the download shard set joined with the filter/dedup/clipscore/recaption
sidecars), `interleaved` and `text`. For each stream:

1. **Index** (one Dask task per input shard): join the sidecars (`store.table`), decide kept or
   dropped with the first reason (the record's status, else `<stage>:<drop_reason>`), and read the
   tar's member offsets. Every kept sample gets a sort key `xxh64(key, seed)`.
2. **Plan** (client): sort the kept samples by that key (a seeded global shuffle that does not
   depend on how the input was sharded or listed) and cut contiguous output shards by sample count
   and/or bytes. Each output shard's rows go to `_state/{stream}/plan/{name}.parquet`; every input
   record with its reason or its place goes to `_ledger.parquet`; `_plan.json` holds a digest.
3. **Write** (one engine task per output shard): read the members by byte range straight from the
   input tars (no re-encode, one read per byte, local or s3://), add provenance, scores and the
   synthetic caption to each json, and write the tar atomically, then its member index
   (`00000.members.json`: every member's offset, size and xxh3, checked by the sampler as it reads). The engine's stats file is the
   per-shard done marker, so a killed run redoes only unfinished shards, byte for byte the same.
4. **Manifest** from the shards' stats, `manifest.parquet`, and the Energon folder.

Why not a Dask dataframe shuffle: it would move every image through worker memory and lose the
per-output-shard resume; reading by tar offset moves each byte once and makes any output shard
computable on its own.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmdata import decisions, fsio, samples, tar
from mmdata import manifest as mf
from mmdata.config import ConfigError, Pipeline, ShardsConfig, StreamConfig
from mmdata.engine import (
    GlobalStep,
    Report,
    Shard,
    Stage,
    client_for,
    finished,
    in_progress,
    kill_point,
    map_parts,
    run_global,
)
from mmdata.store import ShardSet, table

STREAMS = ("captions", "interleaved", "text")
LEDGER = "_ledger.parquet"
PLAN = "_plan.json"
READ_BATCH = 256  # samples read together (one ranged read per input tar on object stores)


# ---------------------------------------------------------------------------------------------
# index: one input shard -> a row per record


_SKIP = object()


def _scalar(value: Any) -> Any:
    """A parquet cell as a JSON scalar (NaN/NA -> None); `_SKIP` for lists, arrays and bytes, which
    stay in the sidecars (hash variants, thumbnails, embeddings have no place in every sample)."""
    if isinstance(value, bytes | bytearray | list | tuple | dict | np.ndarray):
        return _SKIP
    if value is None or pd.isna(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def _tar_bytes(members: list[tuple[str, int, int]]) -> int:
    """A sample's size inside a tar: a 512-byte header per member plus its data padded to 512."""
    return sum(512 + math.ceil(size / 512) * 512 for _, _, size in members)


def index_shard(source: str, shard_id: str, sidecars: dict[str, str], synthetic: str, seed: int,
                score_columns: tuple[str, ...] = ("*",)) -> pd.DataFrame:
    """Every record of one input shard: kept (with members, size, sort key, extras) or its drop reason."""
    import xxhash

    base = ShardSet(source)
    df = table(base, shard_id, sidecars)
    reason = decisions.first_reason(df, sidecars)  # the one place a record is kept or dropped
    keep = reason.isna()

    tar_url = base.tar(shard_id)
    members = samples.index_shard(tar_url) if keep.any() and fsio.exists(tar_url) else {}
    # the synthetic caption's own stage (recaption) describes it: model ids, prompt version, its scores;
    # those columns travel with the caption in one json object named after the stage, not in `scores`
    syn_stage = synthetic.split(".", 1)[0] + "." if "." in synthetic else None
    provenance = [c for c in df.columns if syn_stage and c.startswith(syn_stage) and c != synthetic
                  and c[len(syn_stage):] not in ("drop_reason", "status", "error_message")]
    scored = [c for c in df.columns if "." in c and not c.endswith(".drop_reason") and c != synthetic
              and not (syn_stage and c.startswith(syn_stage))
              and any(fnmatch.fnmatchcase(c, p) for p in score_columns)]
    # a stage's decision about part of a document: image members to leave out (clipscore_docs)
    dropping = [c for c in df.columns if c.endswith(".drop_images")]
    rows = []
    for i, rec in zip(df.index, df.to_dict("records")):
        key = str(rec["key"])
        why = reason[i]
        row = {"source": shard_id, "key": key, "drop_reason": None if pd.isna(why) else why, "order": 0,
               "nbytes": 0, "members": None, "extra": None}
        if row["drop_reason"] is None:
            parts = members.get(key)
            gone = sorted({int(i) for c in dropping if isinstance(rec[c], list | tuple | np.ndarray) for i in rec[c]})
            if gone:
                names = {str(i) for i in gone}
                parts = [p for p in parts or [] if p[0].split(".", 1)[0] not in names]
            if not parts:
                row["drop_reason"] = "missing_from_tar"
            else:
                scores = {c: _scalar(rec[c]) for c in scored}
                extra = {"scores": {c: v for c, v in scores.items() if v is not _SKIP}}
                if gone:
                    extra["drop_images"] = gone
                if synthetic in rec and _scalar(rec[synthetic]) not in (None, _SKIP):
                    extra["synthetic_caption"] = rec[synthetic]
                    info = {c[len(syn_stage):]: _scalar(rec[c]) for c in provenance}
                    if info:
                        extra["synthetic"] = {syn_stage[:-1]: {k: v for k, v in info.items() if v is not _SKIP}}
                row.update(order=xxhash.xxh64_intdigest(key.encode(), seed=seed & (2**64 - 1)), nbytes=_tar_bytes(parts),
                           members=json.dumps(parts), extra=json.dumps(extra, sort_keys=True, ensure_ascii=False))
        rows.append(row)
    out = pd.DataFrame(rows, columns=["source", "key", "drop_reason", "order", "nbytes", "members", "extra"])
    out["order"] = out["order"].astype("uint64")
    return out


# ---------------------------------------------------------------------------------------------
# plan: the global shuffle and the cut into output shards


def cut(nbytes: np.ndarray, max_samples: int | None, max_bytes: int | None) -> np.ndarray:
    """Output shard number per sample, in order: a shard closes once it reaches either limit."""
    if not max_bytes:
        return np.arange(len(nbytes)) // max_samples
    out = np.empty(len(nbytes), dtype=np.int64)
    shard = n = size = 0
    for i, b in enumerate(nbytes.tolist()):
        out[i] = shard
        n, size = n + 1, size + b
        if (max_samples and n >= max_samples) or size >= max_bytes:
            shard, n, size = shard + 1, 0, 0
    return out


def shard_name(n: int) -> str:
    return f"{n:05d}"


def plan(records: pd.DataFrame, cfg: ShardsConfig) -> pd.DataFrame:
    """The kept records in output order, with `shard` (output shard name) and `position`."""
    keep = records[records["drop_reason"].isna()].sort_values(["order", "source", "key"], kind="stable")
    keep = keep.reset_index(drop=True)
    numbers = cut(keep["nbytes"].to_numpy(), cfg.shard_samples, int(cfg.shard_bytes) if cfg.shard_bytes else None)
    keep["shard"] = [shard_name(n) for n in numbers]
    keep["position"] = keep.groupby("shard").cumcount()
    return keep


def digest(records: pd.DataFrame, order: pd.DataFrame) -> str:
    import hashlib

    h = hashlib.sha256()
    for frame, cols in ((records, ["source", "key", "drop_reason"]),
                        (order, ["shard", "position", "source", "key", "members", "extra"])):
        h.update(pd.util.hash_pandas_object(frame[cols].astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# write: one output shard


def read_members(source: ShardSet, rows: list[dict]) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} for a batch of plan rows, one read per input tar."""
    by_tar: dict[str, list[tuple[str, str, int, int]]] = {}
    for row in rows:
        for ext, offset, size in json.loads(row["members"]):
            by_tar.setdefault(row["source"], []).append((row["key"], ext, offset, size))
    out: dict[str, dict[str, bytes]] = {}
    for shard_id, wanted in by_tar.items():
        wanted.sort(key=lambda w: w[2])
        url = source.tar(shard_id)
        blobs = tar.read_ranges(url, [(off, size) for _, _, off, size in wanted])
        for (key, ext, _, _), blob in zip(wanted, blobs):
            out.setdefault(key, {})[ext] = blob
    return out


def training_sample(row: dict, parts: dict[str, bytes], set_name: str) -> dict:
    """The input sample's members as they are, its json enriched with provenance and scores."""
    sample = {"__key__": row["key"], **parts}
    if "json" in parts:
        record = json.loads(parts["json"])
        extra = json.loads(row["extra"])
        record["source"] = {"set": set_name, "shard": row["source"], "key": row["key"]}
        if extra["scores"]:
            record["scores"] = extra["scores"]
        if extra.get("synthetic_caption") is not None:
            record["synthetic_caption"] = extra["synthetic_caption"]
            record.update(extra.get("synthetic", {}))  # e.g. "recaption": {captioner, llm, prompt_version, ...}
        if extra.get("drop_images"):  # their members were left out when the plan was made
            gone = set(extra["drop_images"])
            record["slots"] = [s for s in record["slots"] if s.get("type") != "image" or s.get("index") not in gone]
        sample["json"] = record
    return sample


@dataclass(frozen=True)
class PlanFile:
    """An output shard's rows of the plan, in order (`_state/{stream}/plan/{name}.parquet`)."""

    url: str


class WriteTrainingShard(Stage):
    """Writes one output shard from its plan file."""

    name = "shards"

    def __init__(self, source: str, set_name: str, dest: str):
        self.source, self.set_name, self.dest = source, set_name, dest

    def output_dirs(self, out: str) -> list[str]:
        return [out, self.dest]  # a killed write leaves its temp tar beside the published shards

    def process(self, shard: Shard, out: str) -> dict:
        rows = fsio.read_parquet(shard.input.url).sort_values("position").to_dict("records")
        if not rows:
            raise samples.ShardError(f"plan for {shard.id} is empty")
        source = ShardSet(self.source)
        sink = samples.TarSink(fsio.join(self.dest, f"{shard.id}.tar"), members=True)
        try:
            for i in range(0, len(rows), READ_BATCH):
                batch = rows[i : i + READ_BATCH]
                parts = read_members(source, batch)
                for row in batch:
                    sink.write(training_sample(row, parts[row["key"]], self.set_name))
                kill_point("shards:writing")  # test hook: a kill with a half-written tar in the output
        except BaseException:
            sink.discard()
            raise
        info = sink.commit()
        return {"count": info.count, "successes": info.count, "status_dict": {"written": info.count},
                "name": f"{shard.id}.tar", "bytes": info.bytes, "sha256": info.sha256, "url": info.url,
                "members": info.members.rsplit("/", 1)[-1], "members_sha256": info.members_sha256}


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class ShardsReport(Report):
    streams: dict[str, dict] = field(default_factory=dict)  # stream -> what happened to it

    def summary(self) -> str:
        written = sum(st["count"] for st in self.done.values())
        lines = [(f"shards: {len(self.done)} training shards written ({written} samples), {len(self.skipped)} "
                  f"already done, {len(self.failed)} failed ({self.duration:.1f}s) -> {self.out}")]
        lines += [f"  {what} FAILED: {err}" for what, err in sorted(self.failed.items())]
        for stream, s in self.streams.items():
            if "skipped" in s:
                lines.append(f"  {stream}: skipped ({s['skipped']})")
                continue
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["dropped"].items(), key=lambda x: -x[1]))
            lines.append(
                f"  {stream}: {s['records']} records, {s['kept']} kept -> {s['shards']} shards "
                f"({s['bytes'] / 1e6:.1f} MB) {s.get('manifest', '(no manifest)')}"
                + (f"; dropped: {reasons}" if reasons else "")
            )
            if s.get("sidecars_absent"):
                lines.append(f"    sidecars not found (not applied): {', '.join(s['sidecars_absent'])}")
            if s.get("energon"):
                lines.append(f"    energon: {s['energon']}")
        return "\n".join(lines)


def _folder(pipeline: Pipeline, name_or_url: str) -> str:
    """A path/URL as given, or a stage's output folder (its section's `output`, else under workdir)."""
    if "/" in name_or_url or "://" in name_or_url:
        return name_or_url.rstrip("/")
    return pipeline.output(name_or_url)


@dataclass(frozen=True)
class IndexInput:
    """What the plan reads of one input shard: the shard set's tar and metadata, and the sidecars."""

    source: str
    sidecars: tuple[tuple[str, str], ...]  # (stage, folder)

    def files_for(self, shard_id: str) -> list[str]:
        base = ShardSet(self.source)
        return [base.tar(shard_id), base.meta(shard_id), *(fsio.join(f, f"{shard_id}.parquet") for _, f in self.sidecars)]


@dataclass(frozen=True)
class InputShard:
    """One input shard of a stream (its files, for lineage) and where to find it."""

    id: str
    index: IndexInput

    def files(self) -> list[str]:
        return self.index.files_for(self.id)


def _index(shard: Shard[InputShard], synthetic: str, seed: int, score_columns: tuple[str, ...]) -> pd.DataFrame:
    return index_shard(shard.input.index.source, shard.id, dict(shard.input.index.sidecars), synthetic, seed,
                       score_columns)


class PlanRefused(Exception):
    """The plan differs from the one the published shards were written with, and no --overwrite."""


class Plan(GlobalStep):
    """A stream's training shards: index every input shard (map), shuffle and cut into output
    shards (reduce: the plan files, `_ledger.parquet`, `_plan.json`), write each output shard."""

    name = "shards"

    def __init__(self, stream: str, cfg: ShardsConfig, seed: int, set_name: str, source: str, dest: str,
                 overwrite: bool):
        self.stream, self.seed, self.set_name, self.source, self.dest = stream, seed, set_name, source, dest
        self.rule = {"shard_samples": cfg.shard_samples, "shard_bytes": cfg.shard_bytes,
                     "synthetic_caption": cfg.synthetic_caption, "score_columns": list(cfg.score_columns)}
        self.cfg, self.overwrite = cfg, overwrite

    def settings(self) -> dict:
        return {"stream": self.stream, "seed": self.seed, "set": self.set_name, "dest": self.dest, **self.rule}

    def reduce(self, client, shards: list[Shard[InputShard]], state: str) -> dict:
        parts = map_parts(client, _index, shards, self.cfg.synthetic_caption, self.seed, tuple(self.cfg.score_columns))
        records = pd.concat([parts[s.id] for s in shards], ignore_index=True)
        order = plan(records, self.cfg)
        fingerprint = digest(records, order)
        previous = fsio.read_json(fsio.join(state, PLAN)) if fsio.exists(fsio.join(state, PLAN)) else None
        names = sorted(order["shard"].unique())
        if previous and previous["digest"] != fingerprint:
            if not self.overwrite:
                raise PlanRefused("inputs, decisions, seed or shard size changed since the last run "
                                  f"(plan {previous['digest'][:12]} -> {fingerprint[:12]}); rerun with --overwrite")
            # the old manifest describes bytes about to change: readers must not trust it meanwhile
            fsio.rm(fsio.join(self.dest, mf.MANIFEST))
            _remove_stale(state, self.dest, previous.get("shards", []), names)
        for name, rows in order.groupby("shard", sort=True):
            fsio.write_parquet(fsio.join(state, "plan", f"{name}.parquet"), rows.reset_index(drop=True))
        ledger = records[["source", "key", "drop_reason"]].merge(
            order[["source", "key", "shard", "position"]], on=["source", "key"], how="left")
        fsio.write_parquet(fsio.join(state, LEDGER), ledger)
        fsio.write_json(fsio.join(state, PLAN), {"digest": fingerprint, "seed": self.seed, "shards": names,
                                                 "records": len(records), "kept": len(order)})
        funnel = {"stage": f"shards/{self.stream}", "records": len(records), "kept": len(order),
                  "dropped": [[r, n] for r, n in sorted(decisions.counts(records["drop_reason"]).items(),
                                                          key=lambda x: -x[1])]}
        fsio.write_json(fsio.join(state, decisions.FUNNEL), funnel)
        return {"digest": fingerprint, "shards": names, "funnel": funnel}

    def write_back(self, shards: list[Shard[InputShard]], state: str) -> tuple[Stage, list[Shard]]:
        names = fsio.read_json(fsio.join(state, PLAN))["shards"]
        writer = WriteTrainingShard(self.source, self.set_name, self.dest)
        return writer, [Shard(n, PlanFile(fsio.join(state, "plan", f"{n}.parquet"))) for n in names]


def _run_stream(pipeline: Pipeline, cfg: ShardsConfig, stream: str, scfg: StreamConfig, client,
                overwrite: bool, report: ShardsReport) -> None:
    source = ShardSet(_folder(pipeline, scfg.input))
    if why := in_progress(source.url):
        report.failed[stream] = f"{source.url} is incomplete ({why}); rerun the stage that writes it first"
        return
    ids = source.ids()
    if not ids:
        report.streams[stream] = {"skipped": f"no finished shards under {source.url}"}
        return
    sidecars, absent = {}, []
    for stage in scfg.sidecars:
        folder = _folder(pipeline, stage)
        if not fsio.exists(folder):
            absent.append(stage)
            continue
        if why := in_progress(folder):
            report.failed[stream] = f"stage '{stage}' is incomplete ({why}); rerun it first"
            return
        missing = sorted(set(ids) - finished(folder))
        if missing:  # partial decisions would let dropped samples through
            report.failed[stream] = (f"stage '{stage}' has not finished input shards {', '.join(missing[:10])}"
                                     f"{' ...' if len(missing) > 10 else ''}; run it first or drop it from "
                                     f"shards.{stream}.sidecars")
            return
        sidecars[stage.rsplit("/", 1)[-1]] = folder

    seed = pipeline.seed if cfg.seed is None else cfg.seed
    state = fsio.join(pipeline.stage_dir("shards"), "_state", stream)
    dest = fsio.join(cfg.output or pipeline.stage_dir("shards"), stream)
    index = IndexInput(source.url, tuple(sidecars.items()))
    step = Plan(stream, cfg, seed, scfg.input, source.url, dest, overwrite)
    try:
        sub = run_global(step, [Shard(i, InputShard(i, index)) for i in ids], state, pipeline.engine, client=client,
                         overwrite=overwrite, root=pipeline.workdir)
    except PlanRefused as e:
        report.failed[stream] = str(e)
        return
    report.done.update({f"{stream}/{k}": v for k, v in sub.done.items()})
    report.skipped += [f"{stream}/{k}" for k in sub.skipped]
    report.failed.update({f"{stream}/{k}": v for k, v in sub.failed.items()})
    if not sub.ok:
        return
    funnel, names = sub.step["funnel"], sub.step["shards"]
    info = {"records": funnel["records"], "kept": funnel["kept"], "dropped": dict(funnel["dropped"]),
            "funnel": funnel, "shards": len(names), "bytes": 0, "sidecars": list(sidecars), "sidecars_absent": absent}
    report.streams[stream] = info
    stats = [fsio.read_json(fsio.join(state, f"{n}_stats.json")) for n in names]
    m = mf.build(stream, stats, seed=seed, plan=sub.step["digest"], sources={"input": source.url, "sidecars": sidecars},
                 recipe=mf.recipe(pipeline.model_dump(mode="json")))
    info.update(bytes=m["bytes"], manifest=mf.write(dest, m))
    if cfg.energon and names:
        if fsio.is_local(dest):
            mf.energon_export(dest, workers=pipeline.engine.n_workers)
            info["energon"] = f"{dest}/.nv-meta"
        else:
            info["energon"] = "not exported: the output is not a local folder (run `energon prepare` where it is mounted)"


def _remove_stale(state: str, dest: str, old: list[str], new: list[str]) -> None:
    """Output shards of an earlier plan that the new plan does not have (their markers first)."""
    for name in sorted(set(old) - set(new)):
        for url in (fsio.join(state, f"{name}_stats.json"), fsio.join(dest, f"{name}.tar"),
                    fsio.join(dest, f"{name}{samples.MEMBERS_SUFFIX}"), fsio.join(state, "plan", f"{name}.parquet")):
            fsio.rm(url)


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False, streams: list[str] | None = None) -> ShardsReport:
    """Training shards for each enabled stream (or only `streams`) that has input."""
    cfg: ShardsConfig = pipeline.section("shards")
    unknown = set(streams or ()) - set(STREAMS)
    if unknown:
        raise ConfigError(f"shards: unknown streams {', '.join(sorted(unknown))}; known: {', '.join(STREAMS)}")
    wanted = [s for s in (streams or STREAMS) if getattr(cfg, s).enabled]
    report = ShardsReport("shards", cfg.output or pipeline.stage_dir("shards"))
    t0 = time.time()
    with client_for(pipeline.engine, client) as c:
        for s in wanted:
            _run_stream(pipeline, cfg, s, getattr(cfg, s), c, overwrite, report)
    report.duration = time.time() - t0
    return report
