"""`clipscore` on interleaved documents (MMC4): every image against its document's sentences.

Run by the `clipscore` stage when its recipe has a `documents` section; writes the sidecar set
`{workdir}/clipscore_docs/` beside the interleaved shard set. The same two steps as for pairs
(mmdata.stages.clipscore), on the same engine mechanisms:

1. **Score** (`map_shards`, the model loaded once per worker) into `_scores/`. For each kept
   document: each distinct image member decoded and embedded once (an image used twice is scored
   once), its sentences (of text slots; fewer than `min_words` words left out) embedded, the cosine
   of every image with every sentence; documents are grouped so a forward sees `batch_size` images.
   Per shard `_scores/{id}.parquet`, one row per input record: key, status (`success`,
   `skipped_not_kept`, `failed_to_decode`), error_message, `n_images` (image slots), `image_index`
   (the distinct image members, in order of first use), `image_score` (each one's best cosine with
   any sentence; null when the document has no sentence to match), `image_paragraph` (the slot
   position of the text slot holding that sentence), `min_image_score`; and `_scores/{id}.emb.npz`:
   unit-length float16 `image` rows keyed by `image_key` + `image_index`, `text` rows (one per
   sentence) keyed by `text_key` + `text_slot`.
2. **Decide** (`run_global`: the rule into `_decision.json` with its counts, then every shard
   written back): images whose best cosine is below `documents.threshold` (or that have no sentence
   to match) go to `drop_images` (member indexes); `drop_reason` (`mmdata.decisions`) is
   `undecodable_image` for a document with an image that does not decode and `no_related_image` for
   one left with fewer than `documents.min_images` images. `{id}.parquet` holds the scores with
   those two columns; the `shards` stage leaves the listed images out of each document (slots and
   members) and drops the documents with a reason. A new threshold redoes only this step.
"""

from __future__ import annotations

import io
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmdata import decisions, fsio, samples
from mmdata.config import ClipScoreConfig, Pipeline
from mmdata.engine import GlobalStep, Report, Shard, Stage, StepReport, map_parts, map_shards, run_global
from mmdata.stages.clipscore import DECISION, SCORES, chunks, prefetch
from mmdata.store import ShardFiles, ShardSet

OUTPUT = "clipscore_docs"  # the sidecar folder under the workdir
UNDECODABLE = "undecodable_image"
NOT_RELATED = "no_related_image"
NOT_KEPT = "skipped_not_kept"  # the interleaved stage dropped the record already
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


# ---------------------------------------------------------------------------------------------
# step 1: scores


@dataclass
class _Doc:
    row: dict
    texts: list[tuple[int, str]]  # (slot position, sentence)
    images: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (member index, pixels), decoded


def sentences(slots: list[dict], min_words: int) -> list[tuple[int, str]]:
    """(slot position, sentence) of a document's text slots, as MMC4 matched them: a paragraph's
    topic sentence is not drowned by the rest; headings and labels (< min_words) are left out."""
    return [(k, s) for k, slot in enumerate(slots) if slot["type"] == "text"
            for s in _SENTENCE.split(slot["text"]) if len(s.split()) >= min_words]


class DocClipScore(Stage):
    name = OUTPUT

    def __init__(self, cfg: ClipScoreConfig):
        self.opts = cfg.model_dump()  # the clipscore section; `documents` says what to score

    def settings(self) -> dict:
        # what scores and embeddings depend on; the threshold is the decision step's, batch size
        # and threads only change speed
        o, d = self.opts, self.opts["documents"]
        return {**{k: o[k] for k in ("model", "device", "dtype", "max_tokens", "embeddings")},
                "input": d["input"], "min_words": d["min_words"]}

    def setup(self) -> None:
        from mmdata.stages.clipscore import load_scorer

        self.encoder, self.pool = load_scorer(self.opts)

    def _decode(self, item: tuple[_Doc, int, bytes | None]) -> tuple[_Doc, int, np.ndarray | None, str | None]:
        doc, i, data = item
        if data is None:
            return doc, i, None, "no image member in the shard tar"
        try:
            return doc, i, self.encoder.decode(data), None
        except Exception as e:  # noqa: BLE001 - an unreadable image is its document's outcome
            return doc, i, None, f"{type(e).__name__}: {e}"[:500]

    def process(self, shard: Shard[ShardFiles], out: str) -> dict:
        o, d = self.opts, self.opts["documents"]
        meta = fsio.read_parquet(shard.input.meta, columns=["key", "status"])
        rows = {str(k): {"key": str(k), "status": "success" if s == "success" else NOT_KEPT, "error_message": None,
                         "n_images": 0, "image_index": None, "image_score": None, "image_paragraph": None,
                         "min_image_score": None} for k, s in zip(meta["key"], meta["status"])}

        def images() -> Iterator[tuple[_Doc, int, bytes | None]]:
            """(document, member index, bytes) of every distinct image of every kept document."""
            if not fsio.exists(shard.input.tar):
                return
            for sample in samples.read_shard(shard.input.tar):
                row = rows.get(sample["__key__"])
                if row is None or row["status"] != "success" or "json" not in sample:
                    continue
                slots = samples.decode({"json": sample["json"]})["json"]["slots"]
                members = list(dict.fromkeys(s["index"] for s in slots if s["type"] == "image"))
                row["n_images"], row["image_index"] = sum(s["type"] == "image" for s in slots), members or None
                doc = _Doc(row, sentences(slots, d["min_words"]))
                for i in members:
                    yield doc, i, samples.image_member(sample, i)

        self.emb = {"image": [], "image_key": [], "image_index": [], "text": [], "text_key": [], "text_slot": []}
        self.model_s = 0.0
        bs = o["batch_size"]
        enc = self.encoder
        overlap = o["overlap_decode"] if o["overlap_decode"] is not None else enc.device != "cpu"
        if overlap:  # the accelerator works while the cores decode the next images
            decoded = prefetch(self.pool, self._decode, images(), ahead=2 * bs)
        else:  # on CPU, decode a batch on every core between forwards (see clipscore.ClipScore)
            decoded = (x for items in chunks(images(), bs) for x in self.pool.map(self._decode, items))
        ready: list[_Doc] = []  # documents whose images are all decoded, waiting for a forward
        current, waiting = None, 0
        for doc, i, arr, err in decoded:
            if doc is not current:  # a document's images come together: the one before is complete
                if current is not None and current.row["status"] == "success":
                    ready.append(current)
                    waiting += len(current.images)
                if waiting >= bs:
                    self._score(ready)
                    ready, waiting = [], 0
                current = doc
            if err is not None:
                if doc.row["status"] == "success":
                    doc.row.update(status="failed_to_decode", error_message=f"image {i}: {err}")
                doc.images.clear()
            elif doc.row["status"] == "success":
                doc.images.append((i, arr))
        if current is not None and current.row["status"] == "success":
            ready.append(current)
        if ready:
            self._score(ready)

        if o["embeddings"]:
            e = self.emb
            arrays = {"image": _stack(e["image"]), "image_key": np.array(e["image_key"], dtype=str),
                      "image_index": np.array(e["image_index"], dtype=np.int32), "text": _stack(e["text"]),
                      "text_key": np.array(e["text_key"], dtype=str), "text_slot": np.array(e["text_slot"], dtype=np.int32)}
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            fsio.atomic_write(fsio.join(out, f"{shard.id}.emb.npz"), buf.getvalue())
        side = pd.DataFrame(list(rows.values()))
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), side)
        counts = Counter(side["status"])
        return {"count": len(side), "successes": counts.get("success", 0), "status_dict": dict(sorted(counts.items())),
                "images": int(sum(len(x) for x in side["image_index"] if x is not None)),
                "batch_size": enc.batch_size, "model_seconds": round(self.model_s, 4)}

    def _score(self, docs: list[_Doc]) -> None:
        """Embed the images and sentences of a group of documents; each image's best sentence."""
        enc = self.encoder
        flat = [(doc, i, arr) for doc in docs for i, arr in doc.images]
        texts = [(doc, k, t) for doc in docs for k, t in doc.texts]
        t0 = time.perf_counter()
        img = enc.embed_images([arr for _, _, arr in flat]) if flat else None
        txt = enc.embed_texts([t for _, _, t in texts]) if texts else None
        self.model_s += time.perf_counter() - t0
        at_img, at_txt = 0, 0
        for doc in docs:
            ni, nt = len(doc.images), len(doc.texts)
            ir, tr = slice(at_img, at_img + ni), slice(at_txt, at_txt + nt)
            at_img, at_txt = at_img + ni, at_txt + nt
            doc.images = []  # pixels are not needed past the forward
            if not ni:
                continue
            row = doc.row
            if nt:
                sim = img[ir] @ txt[tr].T  # unit vectors: images x sentences cosines
                best = sim.argmax(axis=1)
                row["image_score"] = [float(sim[j, b]) for j, b in enumerate(best)]
                row["image_paragraph"] = [doc.texts[b][0] for b in best]
                row["min_image_score"] = min(row["image_score"])
            if self.opts["embeddings"]:
                e = self.emb
                e["image"].append(img[ir].astype(np.float16))
                e["image_key"] += [row["key"]] * ni
                e["image_index"] += row["image_index"]
                if nt:
                    e["text"].append(txt[tr].astype(np.float16))
                    e["text_key"] += [row["key"]] * nt
                    e["text_slot"] += [k for k, _ in doc.texts]


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)


# ---------------------------------------------------------------------------------------------
# step 2: the decision


def decide(side: pd.DataFrame, threshold: float | None, min_images: int) -> pd.DataFrame:
    """The scores with `drop_images` (member indexes below the threshold, or with no sentence to
    match) and `drop_reason` (decisions.Rule, first that fires); scores stay as they are."""
    side = side.copy()
    gone = []
    for status, index, scores in zip(side["status"], side["image_index"], side["image_score"]):
        if status != "success" or index is None or threshold is None:
            gone.append([])
        elif scores is None:  # nothing in the document to relate its images to
            gone.append([int(i) for i in index])
        else:
            gone.append([int(i) for i, s in zip(index, scores) if s < threshold])
    side["drop_images"] = pd.Series(gone, index=side.index, dtype=object)
    left = np.array([0 if i is None else len(i) for i in side["image_index"]]) - side["drop_images"].map(len).to_numpy()
    had = side["image_index"].notna().to_numpy()
    rules = [decisions.Rule(UNDECODABLE, lambda m: m["status"].eq("failed_to_decode")),
             decisions.Rule(NOT_RELATED, lambda m: m["status"].eq("success") & had & (left < min_images))]
    reason = decisions.decide(side, rules)
    side["drop_reason"] = reason.astype(object).where(reason.notna(), None)
    return side


def _counts(shard: Shard, threshold: float | None, min_images: int) -> dict:
    side = decide(fsio.read_parquet(shard.input), threshold, min_images)
    scored = side["image_index"].notna() & side["status"].eq("success")
    return {"documents": int(scored.sum()), "images": int(side.loc[scored, "image_index"].map(len).sum()),
            "images_dropped": int(side["drop_images"].map(len).sum()), "dropped": decisions.counts(side["drop_reason"])}


@dataclass(frozen=True)
class Scored:
    """What the write-back reads for one shard: its scores and the rule."""

    scores: str
    decision: str


class ApplyDecision(Stage):
    """Each shard's sidecar: its scores with `drop_images` and `drop_reason` from the rule."""

    name = OUTPUT
    reasons = (UNDECODABLE, NOT_RELATED)

    def process(self, shard: Shard[Scored], out: str) -> dict:
        rule = fsio.read_json(shard.input.decision)
        side = decide(fsio.read_parquet(shard.input.scores), rule["threshold"], rule["min_images"])
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), side)
        running = side[side["status"] != NOT_KEPT]  # the interleaved stage dropped those already
        return {"count": len(running), "successes": int(running["drop_reason"].isna().sum()),
                "status_dict": dict(sorted(Counter(side["status"]).items())),
                "dropped": decisions.counts(running["drop_reason"]),
                "images_dropped": int(side["drop_images"].map(len).sum())}


class Decide(GlobalStep):
    """The rule and its counts over every shard (`_decision.json`), then every shard's decisions."""

    name = OUTPUT

    def __init__(self, cfg: ClipScoreConfig):
        self.rule = {k: getattr(cfg.documents, k) for k in ("threshold", "min_images")}

    def reduce(self, client, shards: list[Shard[str]], out: str) -> dict:
        total: Counter = Counter()
        dropped: Counter = Counter()
        for part in map_parts(client, _counts, shards, **self.rule).values():
            total.update({k: part[k] for k in ("documents", "images", "images_dropped")})
            dropped.update(part["dropped"])
        decision = {**self.rule, "documents": 0, "images": 0, "images_dropped": 0, **total,
                    "dropped": dict(sorted(dropped.items())), "shards": len(shards)}
        fsio.write_json(fsio.join(out, DECISION), decision)
        return decision

    def write_back(self, shards: list[Shard[str]], out: str) -> tuple[Stage, list[Shard]]:
        decision = fsio.join(out, DECISION)
        return ApplyDecision(), [Shard(s.id, Scored(s.input, decision)) for s in shards]


# ---------------------------------------------------------------------------------------------
# entry point (from clipscore.run)


@dataclass
class DocClipReport(StepReport):
    scoring: Report | None = None

    def summary(self) -> str:
        lines = [self.scoring.summary()] if self.scoring is not None else []
        d = self.step
        if d and self.ok:
            lines.append(f"  documents decision (threshold {d['threshold']}, min_images {d['min_images']}): "
                         f"{d['images_dropped']} of {d['images']} images in {d['documents']} documents dropped")
        if self.scoring is None or self.scoring.ok:
            lines.append(super().summary())
        return "\n".join(lines)


def run(pipeline: Pipeline, cfg: ClipScoreConfig, *, client, overwrite: bool = False) -> DocClipReport:
    """Score the interleaved shard set's documents, then decide; `cfg` is the clipscore section."""
    source = ShardSet(cfg.documents.input or pipeline.output("interleaved"))
    shards = source.require("clipscore (documents)")
    out = pipeline.stage_dir(OUTPUT)
    scores_dir = fsio.join(out, SCORES)
    scoring = map_shards(DocClipScore(cfg), shards, scores_dir, pipeline.engine, client=client, overwrite=overwrite,
                         root=pipeline.workdir)
    if not scoring.ok:
        return DocClipReport(OUTPUT, out, failed=dict(scoring.failed), scoring=scoring)
    scored = [Shard(s.id, fsio.join(scores_dir, f"{s.id}.parquet")) for s in shards]
    report = run_global(Decide(cfg), scored, out, pipeline.engine, client=client, overwrite=overwrite,
                        root=pipeline.workdir)
    return DocClipReport(**vars(report), scoring=scoring)
