"""`recaption`: VeCap synthetic captions beside the AltText, which stays untouched.

VeCap (VeCLIP, arXiv 2310.07699): a captioner describes the **image alone**, then an LLM fuses that
description with the AltText, keeping the AltText's names and entities; training uses both captions.

Where it sits: after `filter`, `dedup` and `clipscore`, before `shards`. The pool is what those
stages keep (`pool_after`), so the captioner is only spent on images that will train; `low_clip`
ranks by the clipscore stage's scores, `uninformative` by the filter's. The stage scores its own
captions with the clipscore stage's model (`alt_score`, `description_score`, `synthetic_score`),
and `shards` carries the synthetic caption, its scores and its provenance into each sample's json.

Two passes:

1. **Select** (whole pool, cheap: sidecar columns only). Per shard, on the workers: pool membership,
   the ranking value and whether the AltText is worth fusing (the filter's verdicts: uninformative,
   language). On the client: `target` all, a seeded random `fraction`, the most `uninformative`
   AltTexts first, or the lowest CLIP scores first (`low_clip`), up to `fraction` of the pool (and
   past `threshold` when set). Written to `_select/{id}.parquet` when it changed; each shard's
   selection is an input of its caption task (its lineage), so a shard whose selection changed (an
   upstream sidecar, the fraction, the target) is redone and the others stay finished.
2. **Caption** (shard by shard on the Dask engine). The captioner, the fusion LLM and the CLIP model
   load once per worker (`setup`); a thread pool decodes and prepares images ahead of the model on
   accelerators (between batches on CPU); batches generate greedily with left padding (or
   `candidates` samples re-ranked by CLIP, LAION-COCO style); guards reject empty, over-long,
   repeated and prompt-echo outputs with a reason; fusion runs batched over the shard's
   descriptions. Writes `{id}.parquet`, one row per input record:

   key, status (`success`, `skipped_not_downloaded`, `skipped_not_in_pool`, `skipped_not_selected`,
   `failed_to_decode`, `failed_to_find_image`, `failed_description`), error_message,
   synthetic_caption, description, fusion (`llm` | `rule` | `description`), flags (why a fusion
   was not used, comma-separated), entities (rule-based), candidates, captioner,
   captioner_revision, describe_prompt, llm, llm_revision, prompt_version, alt_score,
   description_score, synthetic_score.

The stage never drops a record (no `drop_reason`): it only adds a caption.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmdata import fsio, samples
from mmdata.config import ConfigError, FilterConfig, Pipeline, RecaptionConfig
from mmdata.decisions import kept
from mmdata.engine import Report, Shard, Stage, client_for, digest, finished, map_parts, map_shards
from mmdata.stages.clipscore import chunks, prefetch
from mmdata.store import ShardSet
from mmdata.tar import ShardError

log = logging.getLogger(__name__)

SELECT = "_select"
SUCCESS = "success"


# ---------------------------------------------------------------------------------------------
# pass 1: which records


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


@dataclass(frozen=True)
class PoolInput:
    """What the selection reads of one shard: the shard set's metadata and the sidecars of the stages
    that define the pool and rank it."""

    meta: str
    sidecars: tuple[tuple[str, str], ...]  # (stage, its sidecar of this shard)


def shard_candidates(shard: Shard[PoolInput], after: tuple[str, ...], target: str, seed: int,
                     filter_cfg: FilterConfig) -> pd.DataFrame:
    """One shard's records: in the pool?, ranking value, tie-break, and a note when the AltText is
    not worth fusing (uninformative, another language, empty). Runs on a worker."""
    import xxhash

    from mmdata.stages.filter import Uninformative

    t = fsio.read_parquet(shard.input.meta)
    for stage, url in shard.input.sidecars:
        side = fsio.read_parquet(url)
        side = side.rename(columns={c: f"{stage}.{c}" for c in side.columns if c != "key"})
        t = t.merge(side, on="key", how="left", validate="one_to_one")
    keys = t["key"].astype(str)
    # fetched, and no pool_after stage dropped it (the one rule of "kept"); the decisions of stages
    # read only for their scores do not count
    pool = kept(t.drop(columns=[c for c in t.columns if c.endswith(".drop_reason") and c.split(".")[0] not in after]),
                after)
    captions = t["caption"] if "caption" in t else pd.Series([None] * len(t), index=t.index)
    if "filter.uninformative" in t:
        uninf = t["filter.uninformative"].astype(float).fillna(0.0)
    else:
        judge = Uninformative(frozenset(p.lower() for p in filter_cfg.uninformative_phrases))
        uninf = pd.Series([judge.score(_text(c))[0] for c in captions], index=t.index)
    note = pd.Series(None, index=t.index, dtype=object)
    langs = filter_cfg.language.languages
    if "filter.lang" in t and langs is not None:
        foreign = t["filter.lang"].notna() & ~t["filter.lang"].isin(langs)
        note[foreign] = "alt_lang"
    note[uninf >= filter_cfg.uninformative_threshold] = "alt_uninformative"
    note[captions.map(lambda c: not (_text(c) or "").strip())] = "alt_empty"
    if target == "uninformative":
        value = uninf
    elif target == "low_clip":
        value = t["clipscore.score"].astype(float)
    else:
        value = pd.Series(0.0, index=t.index)
    tie = [xxhash.xxh64_intdigest(k.encode(), seed=seed & (2**64 - 1)) / 2**64 for k in keys]
    return pd.DataFrame({"key": keys.to_numpy(), "pool": pool.to_numpy(bool), "value": value.to_numpy(float),
                         "tie": np.asarray(tie, dtype=float), "alt_note": note.to_numpy(object)})


def choose(frame: pd.DataFrame, cfg: RecaptionConfig) -> pd.Series:
    """`selected` for the whole pool: the target's ranking, cut at `fraction` (and `threshold`)."""
    pool = frame[frame["pool"]]
    k = len(pool) if cfg.target == "all" else math.ceil(cfg.fraction * len(pool) - 1e-9)
    if cfg.target == "uninformative":
        cand = pool if cfg.threshold is None else pool[pool["value"] >= cfg.threshold]
        order = cand.assign(v=-cand["value"]).sort_values(["v", "tie"], kind="stable")
    elif cfg.target == "low_clip":
        # no score (no caption to score) ranks first: it has the least to lose
        cand = pool if cfg.threshold is None else pool[~(pool["value"] >= cfg.threshold)]
        order = cand.assign(v=cand["value"].fillna(-np.inf)).sort_values(["v", "tie"], kind="stable")
    else:
        order = pool.sort_values("tie", kind="stable")
    selected = pd.Series(False, index=frame.index)
    selected[order.index[:k]] = True
    return selected


SELECT_COLUMNS = ["key", "pool", "selected", "alt_note"]


def select(client, cfg: RecaptionConfig, shards: list[Shard[PoolInput]], after: tuple[str, ...], seed: int,
           filter_cfg: FilterConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """Rank the pool, pick the records: ({shard id: its selection frame}, a summary)."""
    frames = map_parts(client, shard_candidates, shards, after, cfg.target, seed, filter_cfg)
    both = pd.concat([frames[s.id] for s in shards], ignore_index=True)
    both["selected"] = choose(both, cfg)
    per_shard, at = {}, 0
    for s in shards:
        n = len(frames[s.id])
        per_shard[s.id] = both.iloc[at : at + n][SELECT_COLUMNS].reset_index(drop=True)
        at += n
    summary = {"target": cfg.target, "fraction": cfg.fraction, "threshold": cfg.threshold,
               "pool_after": list(after), "records": len(both), "pool": int(both["pool"].sum()),
               "selected": int(both["selected"].sum())}
    return per_shard, summary


def write_selection(url: str, frame: pd.DataFrame) -> None:
    """A shard's selection, rewritten only when it changed: the caption pass's lineage reads its
    digest, so an unchanged selection keeps a finished shard finished, a changed one redoes it."""
    if fsio.exists(url):
        old = fsio.read_parquet(url)
        if list(old.columns) == SELECT_COLUMNS and old.equals(frame):
            return
    fsio.write_parquet(url, frame)


# ---------------------------------------------------------------------------------------------
# pass 2: describe, fuse, score


@dataclass(frozen=True)
class RecaptionInput:
    """One shard as this stage reads it: the shard set's tar and metadata, and its selection."""

    tar: str
    meta: str
    select: str


@dataclass
class Prepared:
    keys: list[str]
    errors: dict[str, str]  # key -> why the image could not be read
    batch: object  # captioner.Batch of the readable ones
    clip: list  # uint8 arrays for the CLIP model (None when not scoring)


class Recaption(Stage):
    name = "recaption"

    def __init__(self, cfg: RecaptionConfig, clip: dict | None, revisions: dict, seed: int):
        self.cfg, self.clip_opts, self.revisions, self.seed = cfg, clip, revisions, seed

    def settings(self) -> dict:
        # What writes the captions: models (local folders by the digest of their files), prompts,
        # guards, the scoring model, the sampling seed. A changed one is refused over finished shards.
        # Which records are captioned (target, fraction, the pool) reaches a shard through its
        # selection file, a lineage input: a shard whose selection changed is redone, the others kept.
        # Batch sizes and threads only set the pace (the configs' PACE fields).
        c = self.cfg
        clip = self.clip_opts and {k: self.clip_opts[k] for k in ("model", "device", "dtype", "max_tokens")}
        return {"describe": c.describe, "fuse": c.fuse, "guards": c.guards, "clip": clip, "revisions": self.revisions,
                "seed": self.seed}

    def cache_token(self) -> str:
        # the loaded models, not the selection: a new run on the same worker reuses them
        return f"{type(self).__module__}.Recaption-" + digest(
            {"describe": self.cfg.describe.model_dump(), "fuse": self.cfg.fuse.model_dump(), "clip": self.clip_opts,
             "revisions": self.revisions})

    def setup(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from mmdata.models.captioner import Captioner
        from mmdata.models.device import pick_device

        d = self.cfg.describe
        if d.torch_threads:
            import torch

            torch.set_num_threads(d.torch_threads)
        self.captioner = Captioner.load(d)
        self.fuser = None
        if self.cfg.fuse.model:
            from mmdata.models.fuse import LlmFuser

            self.fuser = LlmFuser.load(self.cfg.fuse, pick_device(self.cfg.fuse.device))
        self.encoder = None
        if self.clip_opts:
            from mmdata.models.clip import ClipEncoder

            o = self.clip_opts
            self.encoder = ClipEncoder.load(o["model"], device=o["device"], dtype=o["dtype"],
                                            batch_size=o["batch_size"], max_tokens=o["max_tokens"])
        self.pool = ThreadPoolExecutor(d.decode_threads, thread_name_prefix="recaption-decode")

    # -- decode threads

    def _read(self, item: tuple[str, bytes]) -> tuple[str, object, object, str | None]:
        key, data = item
        try:
            img = self.captioner.decode(data)
            clip = self.encoder.prep(img) if self.encoder is not None else None
            return key, self.captioner.item(img), clip, None
        except Exception as e:  # noqa: BLE001 - an unreadable image is this sample's outcome, not the shard's
            return key, None, None, f"{type(e).__name__}: {e}"[:500]

    def _prepare(self, items: list[tuple[str, bytes]], parallel: bool = False) -> Prepared:
        read = list(self.pool.map(self._read, items)) if parallel else [self._read(x) for x in items]
        good = [r for r in read if r[3] is None]
        errors = {k: err for k, _, _, err in read if err is not None}
        batch = self.captioner.collate([r[1] for r in good]) if good else None
        return Prepared([r[0] for r in good], errors, batch, [r[2] for r in good])

    # -- the shard

    def process(self, shard: Shard, out: str) -> dict:
        import xxhash

        from mmdata.models.clip import cosine
        from mmdata.models.fuse import clean, guard

        cfg, cap = self.cfg, self.captioner
        meta = fsio.read_parquet(shard.input.meta)
        sel = fsio.read_parquet(shard.input.select)
        keys = meta["key"].astype(str).tolist()
        if sel["key"].astype(str).tolist() != keys:
            raise ShardError(f"{shard.input.select}: selection does not match {shard.input.meta} (rerun)")
        n = len(keys)
        row = {k: i for i, k in enumerate(keys)}
        status = np.full(n, "pending", dtype=object)
        status[~meta["status"].eq("success").to_numpy()] = "skipped_not_downloaded"
        status[(status == "pending") & ~sel["pool"].to_numpy(bool)] = "skipped_not_in_pool"
        status[(status == "pending") & ~sel["selected"].to_numpy(bool)] = "skipped_not_selected"
        error = np.full(n, None, dtype=object)
        alts = [_text(c) for c in meta["caption"]] if "caption" in meta else [None] * n
        notes = [_text(x) for x in sel["alt_note"]]
        description = np.full(n, None, dtype=object)
        seen: set[str] = set()

        def images() -> Iterator[tuple[str, bytes]]:
            if not fsio.exists(shard.input.tar):
                return
            for sample in samples.read_shard(shard.input.tar):
                key = sample["__key__"]
                i = row.get(key)
                if i is None or status[i] != "pending" or key in seen:
                    continue
                data = samples.image_member(sample)
                if data is None:
                    continue
                if alts[i] is None and "txt" in sample:
                    alts[i] = sample["txt"].decode("utf-8", "replace")
                seen.add(key)
                yield key, data

        d = cfg.describe
        bs = d.batch_size
        overlap = d.overlap_decode if d.overlap_decode is not None else cap.device != "cpu"
        if overlap:  # the accelerator generates while the threads prepare the next batches
            batches = prefetch(self.pool, self._prepare, chunks(images(), bs), ahead=d.decode_threads)
        else:  # on CPU the model uses every core; prepare each batch on all of them between batches
            batches = (self._prepare(items, parallel=True) for items in chunks(images(), bs))

        emb: dict[int, np.ndarray] = {}  # row -> image embedding (scoring)
        n_cand = np.zeros(n, dtype=np.int32)
        t_model = t_clip = 0.0
        for b, prep in enumerate(batches):
            for key, err in prep.errors.items():
                status[row[key]], error[row[key]] = "failed_to_decode", err
            if not prep.keys:
                continue
            t0 = time.perf_counter()
            seed = xxhash.xxh64_intdigest(f"{self.seed}/{shard.id}/{b}".encode()) & (2**63 - 1)
            cands = cap.describe(prep.batch, d.candidates, seed=seed)
            t_model += time.perf_counter() - t0
            t0 = time.perf_counter()
            img = self.encoder.embed_images(prep.clip) if self.encoder is not None else None
            rerank: dict[int, list[str]] = {}  # batch position -> candidates that passed the guards
            for j, key in enumerate(prep.keys):
                i = row[key]
                texts = [clean(c) for c in cands[j]]
                why = [guard(t, cfg.guards, d.prompt) for t in texts]
                ok = list(dict.fromkeys(t for t, w in zip(texts, why) if w is None))
                n_cand[i] = len(texts)
                if img is not None:
                    emb[i] = img[j]
                if not ok:
                    status[i], error[i] = "failed_description", f"{why[0]}: {texts[0][:200]!r}"
                elif len(ok) > 1 and img is not None:
                    rerank[j] = ok
                else:
                    description[i], status[i] = ok[0], SUCCESS
            if rerank:  # LAION-COCO: the candidate closest to the image, all candidates in one text batch
                flat = [t for ts in rerank.values() for t in ts]
                text_emb = self.encoder.embed_texts(flat)
                at = 0
                for j, ts in rerank.items():
                    best = int(np.argmax(text_emb[at : at + len(ts)] @ img[j]))
                    at += len(ts)
                    i = row[prep.keys[j]]
                    description[i], status[i] = ts[best], SUCCESS
            t_clip += time.perf_counter() - t0
        for i in range(n):  # selected, downloaded, but not in the tar
            if status[i] == "pending":
                status[i], error[i] = "failed_to_find_image", "no image member in the shard tar"

        done = [i for i in range(n) if status[i] == SUCCESS]
        t0 = time.perf_counter()
        synthetic, fusion, flags, ents = self._fuse(done, alts, notes, description)
        t_fuse = time.perf_counter() - t0

        alt_score = np.full(n, np.nan, dtype=np.float32)
        desc_score = np.full(n, np.nan, dtype=np.float32)
        syn_score = np.full(n, np.nan, dtype=np.float32)
        t0 = time.perf_counter()
        scored = [i for i in done if i in emb]
        if scored and self.encoder is not None:
            img = np.stack([emb[i] for i in scored])
            with_alt = [j for j, i in enumerate(scored) if (alts[i] or "").strip()]
            if with_alt:
                alt_score[[scored[j] for j in with_alt]] = cosine(
                    img[with_alt], self.encoder.embed_texts([alts[scored[j]] for j in with_alt]))
            desc_score[scored] = cosine(img, self.encoder.embed_texts([description[i] for i in scored]))
            syn_score[scored] = cosine(img, self.encoder.embed_texts([synthetic[i] for i in scored]))
        t_clip += time.perf_counter() - t0

        llm = self.fuser
        side = pd.DataFrame({
            "key": keys, "status": status, "error_message": error,
            "synthetic_caption": pd.Series([synthetic.get(i) for i in range(n)], dtype=object),
            "description": description,
            "fusion": pd.Series([fusion.get(i) for i in range(n)], dtype=object),
            "flags": pd.Series([",".join(flags[i]) if flags.get(i) else None for i in range(n)], dtype=object),
            "entities": pd.Series([", ".join(ents[i]) if ents.get(i) else None for i in range(n)], dtype=object),
            "candidates": n_cand,
        })
        has = side["status"].eq(SUCCESS)
        for col, value in (("captioner", d.model), ("captioner_revision", cap.revision), ("describe_prompt",
                           cap.text and d.prompt), ("llm", cfg.fuse.model), ("llm_revision", llm and llm.revision),
                           ("prompt_version", cfg.fuse.prompt_version if llm else "rule")):
            side[col] = pd.Series(np.where(has, value, None), dtype=object)
        side["alt_score"], side["description_score"], side["synthetic_score"] = alt_score, desc_score, syn_score
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), side)

        counts = Counter(side["status"])
        both = has & side["alt_score"].notna() & side["synthetic_score"].notna()
        return {
            "count": n, "successes": counts.get(SUCCESS, 0), "status_dict": dict(sorted(counts.items())),
            "fusion": dict(Counter(side["fusion"].dropna())),
            "flags": dict(Counter(f for fl in side["flags"].dropna() for f in fl.split(","))),
            "scored_pairs": int(both.sum()),
            "synthetic_beats_alt": int((side["synthetic_score"] > side["alt_score"])[both].sum()),
            "sum_alt_score": float(side.loc[both, "alt_score"].sum()),
            "sum_synthetic_score": float(side.loc[both, "synthetic_score"].sum()),
            "batch_size": cap.batch_size, "input_path": cap.path,
            "model_seconds": round(t_model, 4), "fuse_seconds": round(t_fuse, 4), "clip_seconds": round(t_clip, 4),
        }

    def _fuse(self, done: list[int], alts: list, notes: list, description) -> tuple[dict, dict, dict, dict]:
        """Per captioned row: synthetic caption, fusion mode, flags, entities kept (rule-based)."""
        from mmdata.models.fuse import clean, guard, instructions, rule_fuse

        cfg = self.cfg
        synthetic, fusion, flags, ents = {}, {}, {}, {}
        llm_rows = []
        for i in done:
            if notes[i]:  # nothing worth keeping in the AltText
                synthetic[i], fusion[i], flags[i] = description[i], "description", [notes[i]]
            elif self.fuser is not None:
                llm_rows.append(i)
            else:
                text, kept_ents = rule_fuse(alts[i], description[i], cfg.fuse)
                if not kept_ents:
                    synthetic[i], fusion[i], flags[i] = description[i], "description", ["no_entities"]
                    continue
                why = guard(text, cfg.guards)
                if why:
                    synthetic[i], fusion[i], flags[i] = description[i], "description", [f"rule_{why}"]
                else:
                    synthetic[i], fusion[i], ents[i] = text, "rule", kept_ents
        if llm_rows:
            outs = self.fuser.fuse([(alts[i], description[i]) for i in llm_rows])
            told = instructions(cfg.fuse)
            for i, raw in zip(llm_rows, outs):
                text = clean(raw)
                why = guard(text, cfg.guards, told)
                if why:
                    synthetic[i], fusion[i], flags[i] = description[i], "description", [f"llm_{why}"]
                else:
                    synthetic[i], fusion[i] = text, "llm"
        return synthetic, fusion, flags, ents


# ---------------------------------------------------------------------------------------------
# entry point


@dataclass
class RecaptionReport(Report):
    selection: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [super().summary()]
        s = self.selection
        if s:
            lines.append(f"  selected {s['selected']} of a pool of {s['pool']} ({s['records']} records; target "
                         f"{s['target']}" + (f", fraction {s['fraction']:g}" if s["target"] != "all" else "")
                         + (f", threshold {s['threshold']:g}" if s["threshold"] is not None else "")
                         + (f", pool after {', '.join(s['pool_after'])}" if s["pool_after"] else "") + ")")
        if self.done:
            fusion, flags = Counter(), Counter()
            pairs = beats = 0
            alt = syn = 0.0
            for st in self.done.values():
                fusion.update(st.get("fusion", {}))
                flags.update(st.get("flags", {}))
                pairs += st.get("scored_pairs", 0)
                beats += st.get("synthetic_beats_alt", 0)
                alt += st.get("sum_alt_score", 0.0)
                syn += st.get("sum_synthetic_score", 0.0)
            if fusion:
                lines.append("  fusion: " + ", ".join(f"{k} {v}" for k, v in fusion.most_common())
                             + ("; flags: " + ", ".join(f"{k} {v}" for k, v in flags.most_common()) if flags else ""))
            if pairs:
                lines.append(f"  CLIP: synthetic caption beats the AltText on {beats} of {pairs} "
                             f"({beats / pairs:.0%}); mean {syn / pairs:.3f} vs {alt / pairs:.3f} (this run's shards)")
        return "\n".join(lines)


def _clip_opts(pipeline: Pipeline, cfg: RecaptionConfig) -> dict | None:
    cs = pipeline.clipscore
    model = cfg.clip_model or (cs.model if cs else None)
    if cfg.describe.candidates > 1 and not model:
        raise ConfigError("recaption.describe.candidates > 1 needs a CLIP model to rank them: set recaption.clip_model "
                          "or a clipscore section")
    if not model or not (cfg.score or cfg.describe.candidates > 1):
        return None
    return {"model": model, "device": cs.device if cs else "auto", "dtype": cs.dtype if cs else "auto",
            "batch_size": cs.batch_size if cs else 256, "max_tokens": cs.max_tokens if cs else None}


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> RecaptionReport:
    cfg: RecaptionConfig = pipeline.section("recaption")
    source = ShardSet(cfg.input or pipeline.output("download"))
    shards = source.require("recaption")
    ids = [s.id for s in shards]

    def ready(stage: str, why: str) -> str:
        folder = pipeline.stage_dir(stage)
        missing = sorted(set(ids) - finished(folder))
        if missing:
            raise ConfigError(f"recaption: {why} reads the {stage} stage's sidecars, but {len(missing)} shards have "
                              f"none under {folder} ({', '.join(missing[:5])}); run {stage} first")
        return folder

    read = {s: ready(s, "pool_after") for s in cfg.pool_after}
    if cfg.target == "uninformative":
        read.setdefault("filter", ready("filter", "target uninformative"))
    elif "filter" not in read and not (set(ids) - finished(pipeline.stage_dir("filter"))):
        read["filter"] = pipeline.stage_dir("filter")  # its AltText verdicts decide what is worth fusing
    if cfg.target == "low_clip":
        read.setdefault("clipscore", ready("clipscore", "target low_clip"))
    clip = _clip_opts(pipeline, cfg)
    from mmdata.models.hub import declared_revision

    revisions = {"describe": declared_revision(cfg.describe.model, cfg.describe.revision),
                 "fuse": declared_revision(cfg.fuse.model, cfg.fuse.revision),
                 "clip": clip and declared_revision(clip["model"], None)}
    seed = pipeline.seed if cfg.seed is None else cfg.seed
    out = pipeline.stage_dir("recaption")
    pool = [Shard(s.id, PoolInput(s.input.meta, tuple((st, fsio.join(d, f"{s.id}.parquet")) for st, d in read.items())))
            for s in shards]
    with client_for(pipeline.engine, client) as c:
        chosen, summary = select(c, cfg, pool, tuple(cfg.pool_after), seed, pipeline.filter or FilterConfig())
        todo = []
        for s in shards:
            url = fsio.join(out, SELECT, f"{s.id}.parquet")
            write_selection(url, chosen[s.id])
            todo.append(Shard(s.id, RecaptionInput(s.input.tar, s.input.meta, url)))
        fsio.write_json(fsio.join(out, "_selection.json"), summary)
        stage = Recaption(cfg, clip, revisions, seed)
        report = map_shards(stage, todo, out, pipeline.engine, client=c, overwrite=overwrite, root=pipeline.workdir)
    return RecaptionReport(**vars(report), selection=summary)
