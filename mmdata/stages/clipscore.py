"""`clipscore`: CLIP/SigLIP cosine of each image and its caption, embeddings, a pool-wide decision.

Two passes, scores first, decision later:

1. Score (shard by shard on the Dask engine). The model loads once per worker (`setup`); a thread
   pool decodes and resizes images ahead of the model so it never waits on JPEG decoding; batches
   go to the GPU as uint8 (pinned, non-blocking) and are normalised there in bf16/fp16. Per shard:
   `{id}.parquet` with one row per input record: key, status (`success`, `skipped_not_downloaded`,
   `skipped_no_caption`, `failed_to_decode`, `failed_to_find_image`), error_message, score (the exact
   float32 cosine of the model's embeddings, null when not scored), `synthetic_score` when the input
   has a `synthetic_caption` column, drop_reason; and `{id}.emb.npz` with the scored keys and their
   unit-length float16 `image`, `text` (and `synthetic_text`) embeddings.
2. Decide (whole pool). `top_fraction`: the threshold is the pool-wide quantile of every shard's
   score column, exact, computed with Dask in two passes over the columns (a fine histogram, then
   the values of the one bin that holds the quantile); `threshold`: an absolute cosine. Every
   sidecar is then rewritten with its `drop_reason` (`low_clip_score`, and per-sample `no_caption`,
   `undecodable_image`, `missing_image`), and `_decision.json` records the threshold and the funnel.
   Changing the rule in the recipe and rerunning only repeats this pass.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmdata import decisions, fsio, samples
from mmdata.config import ClipScoreConfig, Pipeline
from mmdata.decisions import kept
from mmdata.engine import (
    GlobalStep,
    Report,
    Shard,
    Stage,
    StepReport,
    client_for,
    map_parts,
    map_shards,
    run_global,
)
from mmdata.models.clip import cosine
from mmdata.store import ShardSet

log = logging.getLogger(__name__)

BINS = 1 << 16  # histogram resolution over [-1, 1]: ~3e-5 wide, so pass 2 reads very few values
# per-sample statuses that mean the record cannot be kept, and the drop reason each gives
REASONS = {"skipped_no_caption": "no_caption", "failed_to_decode": "undecodable_image",
           "failed_to_find_image": "missing_image"}
LOW = "low_clip_score"
SCORES = "_scores"  # pass 1's folder under the stage's
DECISION = "_decision.json"


# ---------------------------------------------------------------------------------------------
# pass 1: scores


def prefetch(pool, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """fn over items on `pool`, results in order, at most `ahead` in flight (bounded memory)."""
    window: deque = deque()
    for item in items:
        window.append(pool.submit(fn, item))
        if len(window) >= ahead:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


def chunks(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


class ClipScore(Stage):
    name = "clipscore"

    def __init__(self, cfg: ClipScoreConfig):
        self.opts = cfg.model_dump()  # plain data: tokenizes the same on every call

    def settings(self) -> dict:
        # what the scores and embeddings depend on; the decision rule is a separate step, and batch
        # size and threads only change speed
        return {k: self.opts[k] for k in ("input", "model", "device", "dtype", "max_tokens", "embeddings", "synthetic")}

    def setup(self) -> None:
        self.encoder, self.pool = load_scorer(self.opts)

    def _decode(self, item: tuple[str, bytes]) -> tuple[str, np.ndarray | None, str | None]:
        key, data = item
        try:
            return key, self.encoder.decode(data), None
        except Exception as e:  # noqa: BLE001 - an unreadable image is this sample's outcome, not the shard's
            return key, None, f"{type(e).__name__}: {e}"[:500]

    def process(self, shard: Shard, out: str) -> dict:
        o, enc = self.opts, self.encoder
        meta = fsio.read_parquet(shard.input.meta)
        keys = meta["key"].astype(str).tolist()
        n = len(keys)
        row = {k: i for i, k in enumerate(keys)}
        status = np.where(meta["status"].eq("success"), "success", "skipped_not_downloaded").astype(object)
        error = np.full(n, None, dtype=object)
        captions = [_text(c) for c in meta["caption"]] if "caption" in meta else [None] * n
        has_syn = o["synthetic"] and "synthetic_caption" in meta
        synthetic = [_text(c) for c in meta["synthetic_caption"]] if has_syn else [None] * n
        tar_captions = "caption" not in meta  # fall back on the tar's {key}.txt

        def images() -> Iterator[tuple[str, bytes]]:
            if not fsio.exists(shard.input.tar):
                return
            for sample in samples.read_shard(shard.input.tar):
                key = sample["__key__"]
                i = row.get(key)
                if i is None or status[i] != "success":
                    continue
                if tar_captions and "txt" in sample:
                    captions[i] = sample["txt"].decode("utf-8", "replace")
                if captions[i] is None or not captions[i].strip():
                    status[i] = "skipped_no_caption"
                    continue
                data = samples.image_member(sample)
                if data is None:
                    continue
                seen.add(key)
                yield key, data

        seen: set[str] = set()
        score = np.full(n, np.nan, dtype=np.float32)
        syn_score = np.full(n, np.nan, dtype=np.float32)
        emb_keys, emb_img, emb_txt, emb_syn = [], [], [], []
        bs = o["batch_size"]
        overlap = o["overlap_decode"] if o["overlap_decode"] is not None else enc.device != "cpu"
        if overlap:  # the accelerator works while the cores decode the next batches
            batches = chunks(prefetch(self.pool, self._decode, images(), ahead=2 * bs), bs)
        else:
            # a CPU forward already keeps every core busy: decoding beside it only preempts its
            # threads (measured: 3-5% slower); decode each batch on all cores between forwards instead
            batches = (list(self.pool.map(self._decode, items)) for items in chunks(images(), bs))
        model_s = 0.0  # time in the model; the rest of the shard's duration is reading, waiting, writing
        for batch in batches:
            good = []
            for key, arr, err in batch:
                if arr is None:
                    status[row[key]], error[row[key]] = "failed_to_decode", err
                else:
                    good.append((row[key], arr))
            if not good:
                continue
            idx = [i for i, _ in good]
            t0 = time.perf_counter()
            img, txt = enc.embed_pairs([a for _, a in good], [captions[i] for i in idx])
            score[idx] = cosine(img, txt)
            emb_keys += [keys[i] for i in idx]
            emb_img.append(img.astype(np.float16))
            emb_txt.append(txt.astype(np.float16))
            if has_syn:
                syn = np.full_like(txt, np.nan)
                with_syn = [j for j, i in enumerate(idx) if synthetic[i]]
                if with_syn:
                    syn[with_syn] = enc.embed_texts([synthetic[idx[j]] for j in with_syn])
                    syn_score[[idx[j] for j in with_syn]] = cosine(img[with_syn], syn[with_syn])
                emb_syn.append(syn.astype(np.float16))
            model_s += time.perf_counter() - t0
        for i in range(n):  # a `success` row whose sample the tar lacks
            if status[i] == "success" and keys[i] not in seen:
                status[i], error[i] = "failed_to_find_image", "no image member in the shard tar"

        if o["embeddings"]:
            arrays = {"key": np.array(emb_keys, dtype=str), "image": _stack(emb_img), "text": _stack(emb_txt)}
            if has_syn:
                arrays["synthetic_text"] = _stack(emb_syn)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            fsio.atomic_write(fsio.join(out, f"{shard.id}.emb.npz"), buf.getvalue())
        side = pd.DataFrame({"key": keys, "status": status, "error_message": error, "score": score})
        if has_syn:
            side["synthetic_score"] = syn_score
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), side)
        counts = Counter(side["status"])
        return {"count": n, "successes": counts.get("success", 0), "status_dict": dict(sorted(counts.items())),
                "batch_size": enc.batch_size, "model_seconds": round(model_s, 4)}


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)


# ---------------------------------------------------------------------------------------------
# pass 2: the decision, over every shard's score column


def _bin(scores: np.ndarray) -> np.ndarray:
    return np.clip(((scores.astype(np.float64) + 1.0) * (BINS / 2)).astype(np.int64), 0, BINS - 1)


@dataclass(frozen=True)
class PoolInput:
    """What the decision reads of one shard: its scores, and (for the `pool_after` stages) the
    shard set's metadata and those stages' sidecars."""

    scores: str
    meta: str
    after: tuple[tuple[str, str], ...] = ()  # (stage, its sidecar of this shard)

    def files(self) -> list[str]:
        return [self.scores, *((self.meta,) if self.after else ()), *(url for _, url in self.after)]


def _pool_scores(shard: Shard[PoolInput]) -> np.ndarray:
    """The shard's scores that belong to the pool: scored, and kept by the `pool_after` stages."""
    p = shard.input
    side = fsio.read_parquet(p.scores, columns=["key", "score"])
    if p.after:
        t = fsio.read_parquet(p.meta)
        for stage, url in p.after:
            extra = fsio.read_parquet(url)
            t = t.merge(extra.rename(columns={c: f"{stage}.{c}" for c in extra.columns if c != "key"}), on="key",
                        how="left", validate="one_to_one")
        side = side[side["key"].isin(set(t.loc[kept(t, [st for st, _ in p.after]), "key"]))]
    s = side["score"].to_numpy(np.float32)
    return s[~np.isnan(s)]


def _pool_size(shard) -> int:
    return len(_pool_scores(shard))


def _histogram(shard) -> np.ndarray:
    return np.bincount(_bin(_pool_scores(shard)), minlength=BINS)


def _in_bin(shard, b: int) -> np.ndarray:
    s = _pool_scores(shard)
    return s[_bin(s) == b]


def kth_largest(client, shards: list[Shard[PoolInput]], k: int) -> float:
    """The k-th largest pool score over all shards, exactly, reading only score columns."""
    counts = np.sum(list(map_parts(client, _histogram, shards).values()), axis=0)
    above = np.cumsum(counts[::-1])[::-1] - counts  # scores in higher bins than each bin
    b = int(np.nonzero((above < k) & (above + counts >= k))[0][0])
    vals = np.sort(np.concatenate(list(map_parts(client, _in_bin, shards, b).values())))[::-1]
    return float(vals[k - int(above[b]) - 1])


@dataclass(frozen=True)
class Scored:
    """What the write-back reads for one shard: its scores and the pool-wide decision."""

    scores: str
    decision: str


class ApplyDecision(Stage):
    """Each shard's sidecar: its scores with `drop_reason` from the pool-wide threshold."""

    name = "clipscore"
    reasons = (*REASONS.values(), LOW)

    def process(self, shard: Shard[Scored], out: str) -> dict:
        side = fsio.read_parquet(shard.input.scores)
        threshold = fsio.read_json(shard.input.decision)["threshold"]
        reason = side["status"].map(REASONS)
        if threshold is not None:
            reason = reason.mask(side["score"].notna() & (side["score"] < threshold), LOW)
        side["drop_reason"] = reason.astype(object).where(reason.notna(), None)
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), side)
        running = side[side["status"] != "skipped_not_downloaded"]  # download dropped those already
        dropped = decisions.counts(running["drop_reason"])
        return {"count": len(running), "successes": int(running["drop_reason"].isna().sum()),
                "status_dict": dict(sorted(Counter(side["status"]).items())), "dropped": dropped,
                "scored": int(side["score"].notna().sum())}


class Decide(GlobalStep):
    """The pool-wide threshold (`_decision.json`), then every shard's decisions."""

    name = "clipscore"

    def __init__(self, cfg: ClipScoreConfig):
        self.rule = {k: getattr(cfg, k) for k in ("top_fraction", "threshold", "pool_after")}

    def reduce(self, client, shards: list[Shard[PoolInput]], out: str) -> dict:
        top, pool = self.rule["top_fraction"], None
        if top is not None:
            pool = int(sum(map_parts(client, _pool_size, shards).values()))
            k = math.ceil(top * pool - 1e-9)
            threshold = kth_largest(client, shards, k) if k > 0 else None
            rule = "top_fraction"
        elif self.rule["threshold"] is not None:
            threshold, rule = float(self.rule["threshold"]), "threshold"
        else:
            threshold, rule = None, "none"
        decision = {"rule": rule, "top_fraction": top, "threshold": threshold, "pool": pool,
                    "pool_after": list(self.rule["pool_after"]), "shards": len(shards)}
        fsio.write_json(fsio.join(out, DECISION), decision)
        return decision

    def write_back(self, shards: list[Shard[PoolInput]], out: str) -> tuple[Stage, list[Shard]]:
        decision = fsio.join(out, DECISION)
        return ApplyDecision(), [Shard(s.id, Scored(s.input.scores, decision)) for s in shards]


# ---------------------------------------------------------------------------------------------
# entry point


@dataclass
class ClipReport(StepReport):
    scoring: Report | None = None
    documents: StepReport | None = None  # the interleaved documents' steps (mmdata.stages.clipscore_docs)

    @property
    def ok(self) -> bool:
        return not self.failed and (self.documents is None or self.documents.ok)

    def summary(self) -> str:
        lines = [self.scoring.summary()] if self.scoring is not None else []
        d = self.step
        if d and self.ok:
            t = "none" if d["threshold"] is None else f"{d['threshold']:.4f}"
            rule = d["rule"]
            if rule == "top_fraction":
                after = f" kept by {', '.join(d['pool_after'])}" if d["pool_after"] else ""
                rule = f"top {d['top_fraction']:.0%} of a pool of {d['pool']}{after}"
            lines.append(f"  decision ({rule}): threshold {t}")
        if self.scoring is None or self.scoring.ok:
            lines.append(super().summary())
        if self.documents is not None:
            lines.append(self.documents.summary())
        return "\n".join(lines)


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> StepReport:
    """The pairs (unless `pairs: false`), then the interleaved documents when the recipe has a
    `documents` section, on one cluster."""
    cfg = pipeline.section("clipscore")
    with client_for(pipeline.engine, client) as c:
        report = _pairs(pipeline, cfg, c, overwrite) if cfg.pairs else None
        if cfg.documents is not None and (report is None or report.ok):
            from mmdata.stages import clipscore_docs

            docs = clipscore_docs.run(pipeline, cfg, client=c, overwrite=overwrite)
            if report is None:
                return docs
            report.documents = docs
    return report


def _pairs(pipeline: Pipeline, cfg: ClipScoreConfig, client, overwrite: bool) -> ClipReport:
    source = ShardSet(cfg.input or pipeline.output("download"))
    shards = source.require("clipscore")
    out = pipeline.stage_dir("clipscore")
    scores_dir = fsio.join(out, SCORES)
    after = {s: pipeline.stage_dir(s) for s in cfg.pool_after}
    scoring = map_shards(ClipScore(cfg), shards, scores_dir, pipeline.engine, client=client, overwrite=overwrite,
                         root=pipeline.workdir)
    if not scoring.ok:
        return ClipReport("clipscore", out, failed=dict(scoring.failed), scoring=scoring)
    pool = [Shard(s.id, PoolInput(fsio.join(scores_dir, f"{s.id}.parquet"), s.input.meta,
                                  tuple((st, fsio.join(d, f"{s.id}.parquet")) for st, d in after.items())))
            for s in shards]
    report = run_global(Decide(cfg), pool, out, pipeline.engine, client=client, overwrite=overwrite, root=pipeline.workdir)
    return ClipReport(**vars(report), scoring=scoring)


def load_scorer(o: dict):
    """The CLIP model (once per worker) and the decode threads, for pairs and documents alike."""
    from concurrent.futures import ThreadPoolExecutor

    from mmdata.models.clip import ClipEncoder

    if o["torch_threads"]:
        import torch

        torch.set_num_threads(o["torch_threads"])
    encoder = ClipEncoder.load(o["model"], device=o["device"], dtype=o["dtype"],
                               batch_size=o["batch_size"], max_tokens=o["max_tokens"])
    return encoder, ThreadPoolExecutor(o["decode_threads"], thread_name_prefix="clip-decode")
