"""`interleaved`: image-text documents (OBELICS-style) from WARC files, saved HTML or page URLs.

Map -> reduce -> write back, on the engine (`engine.map_shards`, then `engine.run_global`):

1. **measure** (one task per input shard) -> `{out}/_measure/{id}.parquet`: every input record as
   a row (its read status), the extracted slots, the paragraph and image-URL rule decisions,
   document measures and the filter decision (`drop_reason`), and for the candidates the keys the
   global step needs: MinHash band hashes, image-URL hashes, (domain, paragraph) hashes.
2. **dedup** (the reduce) -> `{out}/_dedup/_decisions.parquet` + `_banned.npz`: same URL / same
   image set (newest kept), MinHash-LSH near-duplicates over the whole corpus, then, over the
   surviving documents, image URLs seen more than `max_image_url_count` times and paragraphs seen
   more than `max_paragraph_count` times within a domain (removed from the documents).
3. **write** (the write-back, per shard) -> `{out}/{id}.tar|.parquet|_stats.json`: images fetched
   through `mmdata.fetch` (politeness, SSRF guard, opt-out) and verified/resized by
   `mmdata.images`, size and aspect rules, one sample per kept document (`{key}.json` +
   `{key}.{i}.jpg`), one parquet row per input record. `{out}/_step.json` marks the whole stage
   done, last; the engine writes `_funnel.json` (records per outcome, in pipeline order).

The text-only stream (`mmdata.stages.text`) reuses passes 1-3 with its own measure and writer.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pandas as pd
import xxhash

from mmdata import decisions, fsio, samples, warc
from mmdata import html as htmlmod
from mmdata import textfilters as tf
from mmdata.config import ExtractConfig, InterleavedConfig, Pipeline
from mmdata.engine import GlobalStep, Report, Shard, Stage, StepReport, client_for, map_shards, run_global
from mmdata.minhash import ALGORITHM as MINHASH_ALGORITHM
from mmdata.minhash import MinHasher, clusters

SCHEMA_VERSION = 1
WARC_EXT = (".warc", ".warc.gz", ".arc", ".arc.gz")
HTML_EXT = (".html", ".htm", ".html.gz", ".htm.gz", ".xhtml")
URLS_EXT = (".txt", ".lst", ".parquet", ".csv", ".jsonl", ".jsonl.gz", ".txt.gz")
# reasons in the order a record meets them, for the funnel
FUNNEL_ORDER = (
    "failed_to_read", "failed_truncated", "skipped_warc", "skipped_too_large", "skipped_not_http", "skipped_http_status", "skipped_not_html",
    "failed_to_decode", "failed_to_download", "skipped", "failed_to_extract", "empty_page", "lang", "paragraph", "doc",
    "text", "too_few_images", "too_many_images", "duplicate_url_of", "duplicate_images_of", "near_duplicate_of",
    "no_image_downloaded", "success",
)


# ---------------------------------------------------------------------------------------------
# inputs


def _kind(url: str, declared: str) -> str:
    if declared != "auto":
        return declared
    low = url.lower()
    for kind, exts in (("warc", WARC_EXT), ("html", HTML_EXT), ("urls", URLS_EXT)):
        if low.endswith(exts):
            return kind
    raise ValueError(f"cannot tell the input format of {url!r}; set input_format")


@dataclass(frozen=True)
class WarcFile:
    """A document shard read from one WARC file."""

    url: str


@dataclass(frozen=True)
class HtmlFiles:
    """A document shard read from saved HTML pages."""

    urls: tuple[str, ...]


@dataclass(frozen=True)
class PageUrls:
    """A document shard fetched from a slice [start, stop) of a URL list."""

    url: str
    start: int
    stop: int


def input_shards(cfg) -> list[Shard[WarcFile | HtmlFiles | PageUrls]]:
    """Deterministic shards: a WARC file each, HTML files in groups, URL lists in slices."""
    files = fsio.expand(cfg.input)
    if not files:
        raise FileNotFoundError(f"no input files match {cfg.input!r}")
    inputs: list[WarcFile | HtmlFiles | PageUrls] = []
    html_files: list[str] = []
    for url in files:
        kind = _kind(url, cfg.input_format)
        if kind == "warc":
            inputs.append(WarcFile(url))
        elif kind == "html":
            html_files.append(url)
        else:
            n = len(warc.read_url_list(url))
            inputs += [PageUrls(url, start, min(n, start + cfg.urls_per_shard)) for start in range(0, n, cfg.urls_per_shard)]
    inputs += [HtmlFiles(tuple(html_files[i : i + cfg.files_per_shard])) for i in range(0, len(html_files), cfg.files_per_shard)]
    return [Shard(f"{i:05d}", x) for i, x in enumerate(inputs)]


def read_records(shard: Shard, cfg) -> Iterator[warc.Record]:
    src = shard.input
    if isinstance(src, WarcFile):
        yield from warc.read_warc(src.url, cfg.extract.max_record_bytes)
    elif isinstance(src, HtmlFiles):
        for f in src.urls:
            yield warc.read_html(f)
    else:
        from mmdata.fetch import ACCEPT_PAGES, fetch_all

        urls = warc.read_url_list(src.url)[src.start : src.stop]
        yield from warc.fetch_pages(urls, lambda u: fetch_all(u, cfg.fetch, ACCEPT_PAGES))


def rules(cfg: ExtractConfig) -> htmlmod.Rules:
    kw = {"srcset_width": cfg.srcset_width, "main_content": cfg.main_content,
          "boilerplate_max_share": cfg.boilerplate_max_share, "content_share": cfg.content_share,
          "max_link_share": cfg.max_link_share, "min_links": cfg.min_links}
    if cfg.boilerplate is not None:
        kw["boilerplate"] = tuple(cfg.boilerplate)
    return htmlmod.Rules(**kw)


def domain(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    return host.removeprefix("www.")


def key64(*parts: str) -> int:
    return xxhash.xxh3_64_intdigest("\x00".join(parts).encode())


def para_key(dom: str, text: str) -> int:
    return key64(dom, " ".join(text.lower().split()))


def _u64(values) -> bytes:
    return np.asarray(values, dtype=np.uint64).tobytes()


def _from_u64(blob) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint64) if blob is not None else np.zeros(0, dtype=np.uint64)


# ---------------------------------------------------------------------------------------------
# pass 1: measure


class Measure(Stage):
    """Per shard: read, extract, measure, decide filters; rows for every record."""

    name = "interleaved-measure"

    def __init__(self, cfg):
        self.cfg = cfg

    def settings(self) -> dict:
        # band hashes stored by another MinHash algorithm never match this one's: redo, not mix
        return {**self.__dict__, "minhash": MINHASH_ALGORITHM}

    def setup(self) -> None:
        self.rules = rules(self.cfg.extract)
        mh = self.cfg.dedup.minhash
        self.hasher = MinHasher(mh.ngram, mh.buckets, mh.hashes_per_bucket, mh.seed) if mh else None
        words = getattr(self.cfg, "flagged_words", None)
        self.flagged = frozenset(w.lower() for w in words) if words is not None else tf.FLAGGED_WORDS
        tf.language("warm up")  # loads the fastText model once per worker

    def process(self, shard: Shard, out: str) -> dict:
        rows, texts = [], []
        for i, rec in enumerate(read_records(shard, self.cfg)):
            row = {"key": f"{int(shard.id):05d}{i:04d}", "url": rec.url, "domain": domain(rec.url), "date": rec.date,
                   "source": rec.source, "status": rec.status, "error_message": rec.error_message,
                   "drop_reason": None}
            if rec.status == "success":
                try:
                    text = self.measure(rec, row)
                except Exception as e:  # noqa: BLE001 -- a page that breaks the parser is data, not a crash
                    row.update(status="failed_to_extract", error_message=f"{type(e).__name__}: {e}")
                    text = None
                if row["status"] == "success" and row["drop_reason"] is None:
                    texts.append((row, text))
            rows.append(row)
        if self.hasher is not None and texts:
            bands = self.hasher.band_hashes([t for _, t in texts])
            for (row, _), b in zip(texts, bands):
                row["bands"] = b.tobytes()
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), pd.DataFrame(rows))
        outcome = Counter(r["drop_reason"] or r["status"] for r in rows)
        return {"count": len(rows), "successes": len(texts), "status_dict": dict(outcome)}

    # -- the interleaved flavour ----------------------------------------------------------------

    def language(self, text: str, row: dict) -> str | None:
        lang, score = tf.language(text)
        row.update(lang=lang, lang_score=score)
        want = self.cfg.language
        if want.languages is not None and lang not in want.languages:
            return f"lang_not_{'_'.join(want.languages)}"
        if score < want.min_score:
            return "lang_score_below_min"
        return None

    def image_reason(self, slot: htmlmod.Slot) -> str | None:
        r = self.cfg.images
        low = slot.url.lower()
        path = urlsplit(low).path
        ext = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
        if ext and ext not in r.formats:
            return "image_format"
        if r.ban_words and re.search(rf"(?<![a-z])(?:{'|'.join(map(re.escape, r.ban_words))})s?(?![a-z])", low):
            return "image_url_ban_word"
        side = r.min_declared_side
        if side and ((slot.width is not None and slot.width < side) or (slot.height is not None and slot.height < side)):
            return "image_declared_too_small"
        return None

    def measure(self, rec: warc.Record, row: dict) -> str | None:
        cfg = self.cfg
        page = htmlmod.extract(rec.html, rec.url, self.rules)
        row.update(url=page.url, domain=domain(page.url), title=page.title)
        if not page.slots:
            row["drop_reason"] = "empty_page"
            return None
        slots, dropped = [], Counter()
        for s in page.slots:
            if s.type == "text":
                m = tf.obelics(s.text, flagged=self.flagged)
                m["link_density"] = s.link_chars / max(1, len(s.text))
                why = tf.decide(m, cfg.paragraphs, "paragraph")
            else:
                why = self.image_reason(s)
            if why:
                dropped[why] += 1
            else:
                slots.append(s)
        text = "\n\n".join(s.text for s in slots if s.type == "text")
        images = [s for s in slots if s.type == "image"]
        doc = tf.obelics(text, flagged=self.flagged)
        row.update({f"doc_{k}": v for k, v in doc.items()})
        row.update(n_images=len(images), n_paragraphs=len(slots) - len(images), removed=json.dumps(dict(dropped)),
                   slots=json.dumps([s.to_dict() for s in slots], ensure_ascii=False))
        # language of the text that survived (menus and link lists blur it), else of the whole page:
        # a foreign page loses every paragraph to the English stop-word rule and must say why
        reason = self.language(text if doc["words"] >= 10 else "\n".join(page.texts), row)
        reason = reason or tf.decide(doc, cfg.document, "doc")
        if reason is None and len(images) < cfg.images.min_images:
            reason = "too_few_images"
        if reason is None and len(images) > cfg.images.max_images:
            reason = "too_many_images"
        row["drop_reason"] = reason
        if reason is None:
            urls = [s.url for s in images]
            row["image_keys"] = _u64([key64(u) for u in urls])
            row["image_set"] = key64(*sorted(set(urls))) if urls else None
            row["para_keys"] = _u64([para_key(row["domain"], s.text) for s in slots if s.type == "text"])
        return text


# ---------------------------------------------------------------------------------------------
# pass 2: global dedup


def _candidates(url: str, shard_id: str) -> pd.DataFrame:
    df = fsio.read_parquet(url)
    if "bands" not in df.columns:
        df["bands"] = None
    for col in ("image_set",):
        if col not in df.columns:
            df[col] = None
    ok = (df["status"] == "success") & df["drop_reason"].isna()
    out = df.loc[ok, ["key", "url", "date", "image_set", "bands"]].copy()
    out["shard"] = shard_id
    return out


def _counts(url: str, keep: set[str], col: str) -> tuple[np.ndarray, np.ndarray]:
    df = fsio.read_parquet(url)
    if col not in df.columns:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    blobs = df.loc[df["key"].isin(keep), col]
    # per document, a key counts once (a paragraph repeated inside one page is not site boilerplate)
    arr = np.concatenate([np.unique(_from_u64(b)) for b in blobs] or [np.zeros(0, np.uint64)])
    return np.unique(arr, return_counts=True)


def _sum_counts(parts: list[tuple[np.ndarray, np.ndarray]], limit: int) -> np.ndarray:
    keys = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.uint64)])
    counts = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)])
    if not len(keys):
        return keys
    uniq, inv = np.unique(keys, return_inverse=True)
    total = np.bincount(inv, weights=counts)
    return uniq[total > limit]


DECISIONS = "_dedup/_decisions.parquet"  # key, shard, drop_reason of every deduplicated document
BANNED = "_dedup/_banned.npz"  # image-URL and (domain, paragraph) keys seen too often


@dataclass(frozen=True)
class MeasureFile:
    url: str  # `_measure/{id}.parquet`


def global_dedup(client, shards: list[Shard[MeasureFile]], out: str, cfg) -> dict:
    """Corpus-wide decisions over the measured shards: `_dedup/_decisions.parquet` and `_banned.npz`."""
    urls = [s.input.url for s in shards]
    ids = [s.id for s in shards]
    parts = client.gather(client.map(_candidates, urls, ids, pure=False))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["key", "url", "date", "image_set", "bands", "shard"])
    # priority: newest first (OBELICS keeps the newest copy), then input order
    df["date"] = df["date"].fillna("")
    df = df.sort_values(["date", "key"], ascending=[False, True], kind="stable").reset_index(drop=True)
    reason = pd.Series([None] * len(df), dtype=object)
    if cfg.same_url and len(df):
        first = df.groupby("url")["key"].transform("first")
        hit = first != df["key"]
        reason[hit] = "duplicate_url_of:" + first[hit]
    if cfg.same_images and len(df):
        live = reason.isna() & df["image_set"].notna()
        first = df.loc[live].groupby("image_set")["key"].transform("first")
        hit = first != df.loc[live, "key"]
        reason[hit.index[hit]] = "duplicate_images_of:" + first[hit]
    if cfg.minhash is not None and len(df):
        live = np.flatnonzero(reason.isna().to_numpy() & df["bands"].notna().to_numpy())
        if len(live):
            bands = np.stack([_from_u64(b) for b in df["bands"].iloc[live]])
            rep = clusters(bands)
            dup = rep != np.arange(len(live))
            reason.iloc[live[dup]] = ["near_duplicate_of:" + k for k in df["key"].iloc[live[rep[dup]]]]
    keep = set(df.loc[reason.isna(), "key"])
    banned_images = banned_paras = np.zeros(0, np.uint64)
    # one future for the whole set: scatter() of a set scatters each element as its own future
    # (thousands of tiny tasks; with ~1000 documents the scheduler failed on them)
    [keep_f] = client.scatter([keep], broadcast=True)
    if cfg.max_image_url_count is not None:
        banned_images = _sum_counts(client.gather(client.map(_counts, urls, keep=keep_f, col="image_keys", pure=False)),
                                    cfg.max_image_url_count)
    if cfg.max_paragraph_count is not None:
        banned_paras = _sum_counts(client.gather(client.map(_counts, urls, keep=keep_f, col="para_keys", pure=False)),
                                   cfg.max_paragraph_count)
    hit = reason.notna().to_numpy()
    fsio.write_parquet(fsio.join(out, DECISIONS), pd.DataFrame(
        {"key": df["key"][hit].astype(str).to_numpy(), "shard": df["shard"][hit].astype(str).to_numpy(),
         "drop_reason": reason[hit].astype(str).to_numpy()}))
    buf = io.BytesIO()
    np.savez(buf, images=banned_images, paragraphs=banned_paras)
    fsio.atomic_write(fsio.join(out, BANNED), buf.getvalue())
    return {
        "candidates": len(df),
        "kept": len(keep),
        "dropped": decisions.counts(reason[hit]),
        "banned_image_urls": len(banned_images),
        "banned_paragraphs": len(banned_paras),
    }


# ---------------------------------------------------------------------------------------------
# pass 3: write


@dataclass
class Outcome:
    """What became of one record in the final pass."""

    status: str = "success"
    drop_reason: str | None = None
    error_message: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentDecisions:
    """What the write pass reads of one shard: its measure rows and the corpus-wide decisions."""

    measure: str
    decisions: str
    banned: str


def shard_decisions(p: DocumentDecisions, shard_id: str, df: pd.DataFrame) -> pd.DataFrame:
    """Per measured row: `dedup_reason`, and the image-URL / paragraph keys to remove from it."""
    import pyarrow.parquet as pq

    with fsspec.open(p.decisions, "rb") as f:
        mine = pq.read_table(f, filters=[("shard", "=", shard_id)]).to_pandas()
    reasons = dict(zip(mine["key"], mine["drop_reason"]))
    with fsspec.open(p.banned, "rb") as f, np.load(f) as z:
        images, paras = z["images"], z["paragraphs"]
    out = pd.DataFrame({"key": df["key"], "dedup_reason": [reasons.get(k) for k in df["key"]]})
    for col, src, banned in (("drop_images", "image_keys", images), ("drop_paragraphs", "para_keys", paras)):
        vals = df[src] if src in df.columns else [None] * len(df)
        out[col] = [None if v is None else _u64(_from_u64(v)[np.isin(_from_u64(v), banned)]) for v in vals]
    return out


class WriteDocuments(Stage):
    """Per shard: apply the dedup decisions, fetch the images, write the document shard."""

    name = "interleaved"
    reasons = FUNNEL_ORDER

    def __init__(self, cfg):
        self.cfg = cfg

    def process(self, shard: Shard, out: str) -> dict:
        df = fsio.read_parquet(shard.input.measure)
        df = df.merge(shard_decisions(shard.input, shard.id, df), on="key", how="left", validate="one_to_one")
        todo, outcomes = [], {}
        for row in df.to_dict("records"):
            row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            if row["status"] != "success":
                outcomes[row["key"]] = Outcome(row["status"], None, row["error_message"])
            elif row["drop_reason"]:
                outcomes[row["key"]] = Outcome("skipped_filter", row["drop_reason"], f"dropped by filter: {row['drop_reason']}")
            elif row["dedup_reason"]:
                outcomes[row["key"]] = Outcome("skipped_duplicate", row["dedup_reason"], f"dropped by dedup: {row['dedup_reason']}")
            else:
                todo.append(row)
        sink = samples.TarSink(fsio.join(out, f"{shard.id}.tar"))
        try:
            for key, outcome, sample in self.documents(todo):
                outcomes[key] = outcome
                if sample is not None:
                    sink.write(sample)
            info = sink.commit()
        except BaseException:
            sink.discard()
            raise
        meta = df[[c for c in self.meta_columns if c in df.columns]].copy()
        meta["status"] = [outcomes[k].status for k in meta["key"]]
        meta["drop_reason"] = [outcomes[k].drop_reason for k in meta["key"]]
        meta["error_message"] = [outcomes[k].error_message for k in meta["key"]]
        for col in sorted({c for o in outcomes.values() for c in o.extra}):
            meta[col] = [outcomes[k].extra.get(col) for k in meta["key"]]
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), meta)
        tally = Counter(decisions.code(o.drop_reason or o.status) for o in outcomes.values())
        kept = tally.pop("success", 0)
        return {"count": len(meta), "successes": kept, "status_dict": {**tally, "success": kept},
                "dropped": dict(tally), "bytes": info.bytes if info else 0}

    meta_columns = ("key", "url", "domain", "date", "source", "title", "lang", "lang_score", "n_images",
                    "n_paragraphs", "removed", "doc_words", "doc_stopwords", "doc_word_repetition")

    def documents(self, rows: list[dict]) -> Iterator[tuple[str, Outcome, dict | None]]:
        from mmdata.fetch import fetch_all
        from mmdata.images import process

        cfg, rules = self.cfg, self.cfg.images
        docs = []
        for row in rows:
            gone_img = {int(k) for k in _from_u64(row.get("drop_images"))}
            gone_par = {int(k) for k in _from_u64(row.get("drop_paragraphs"))}
            slots, removed = [], Counter()
            for s in json.loads(row["slots"]):
                if s["type"] == "image" and key64(s["url"]) in gone_img:
                    removed["image_url_too_common"] += 1
                elif s["type"] == "text" and para_key(row["domain"], s["text"]) in gone_par:
                    removed["paragraph_repeated_in_domain"] += 1
                else:
                    slots.append(s)
            docs.append((row, slots, removed))
        urls = sorted({s["url"] for _, slots, _ in docs for s in slots if s["type"] == "image"})
        fetched = dict(zip(urls, fetch_all(urls, cfg.fetch))) if urls else {}
        images: dict[str, object] = {}
        for url, res in fetched.items():
            images[url] = process(res.body, cfg.image) if res.status == "success" else res
        for row, slots, removed in docs:
            out_slots, members, failures = [], {}, Counter()
            index: dict[str, int] = {}  # an image used twice is one member, referenced by both slots
            for s in slots:
                if s["type"] == "text":
                    out_slots.append({"type": "text", "text": s["text"]})
                    continue
                res = images[s["url"]]
                why = self.image_problem(res, rules)
                if why:
                    failures[why] += 1
                    continue
                idx = index.setdefault(s["url"], len(index))
                members[f"{idx}.{res.ext}"] = res.data
                out_slots.append({**s, "index": idx, "ext": res.ext, "width": res.width, "height": res.height,
                                  "original_width": res.original_width, "original_height": res.original_height,
                                  "sha256": res.sha256})
            removed.update(failures)
            extra = {"removed_late": json.dumps(dict(removed)), "n_images_kept": len(members)}
            words = sum(len(s["text"].split()) for s in out_slots if s["type"] == "text")
            key = row["key"]
            if not members:
                fetch_fail = sum(v for k, v in failures.items() if k.startswith(("failed_", "skipped_")))
                if fetch_fail and fetch_fail == sum(failures.values()):
                    yield key, Outcome("failed_to_download", "no_image_downloaded",
                                       f"none of the document's images could be fetched: {dict(failures)}", extra), None
                else:
                    yield key, Outcome("skipped_filter", "too_few_images",
                                       f"no image left after image filters: {dict(removed)}", extra), None
                continue
            if len(members) < rules.min_images:
                yield key, Outcome("skipped_filter", "too_few_images", f"{len(members)} images left", extra), None
                continue
            if cfg.document.min_words is not None and words < cfg.document.min_words:
                yield key, Outcome("skipped_filter", "doc_words_below_min", f"{words} words left after dedup", extra), None
                continue
            record = {"key": key, "kind": "interleaved", "schema_version": SCHEMA_VERSION, "url": row["url"],
                      "title": row.get("title"), "language": row.get("lang"), "date": row.get("date"), "slots": out_slots}
            yield key, Outcome(extra=extra), {"__key__": key, "json": record, **members}

    @staticmethod
    def image_problem(res, rules) -> str | None:
        if res.status != "success":
            return res.status  # failed_to_download, skipped_robots, failed_to_decode, ...
        w, h = res.original_width, res.original_height
        if min(w, h) < rules.min_side:
            return "image_too_small"
        if max(w, h) > rules.max_side:
            return "image_too_large"
        if max(w, h) / min(w, h) > rules.max_aspect_ratio:
            return "image_aspect_ratio"
        return None


# ---------------------------------------------------------------------------------------------
# the three passes, resumable



class DocDedup(GlobalStep):
    """Corpus-wide document dedup over the measured shards, then each shard's documents written."""

    def __init__(self, name: str, cfg, write: Stage):
        self.name, self.cfg, self.write = name, cfg, write

    def settings(self) -> dict:
        return {"dedup": self.cfg.dedup}

    def reduce(self, client, shards: list[Shard[MeasureFile]], out: str) -> dict:
        return global_dedup(client, shards, out, self.cfg.dedup)

    def write_back(self, shards: list[Shard[MeasureFile]], out: str) -> tuple[Stage, list[Shard]]:
        dec, banned = fsio.join(out, DECISIONS), fsio.join(out, BANNED)
        return self.write, [Shard(s.id, DocumentDecisions(s.input.url, dec, banned)) for s in shards]


@dataclass
class DocReport(StepReport):
    measure: Report | None = None

    def summary(self) -> str:
        lines = [self.measure.summary()] if self.measure is not None else []
        if self.measure is None or self.measure.ok:
            lines.append(super().summary())
        return "\n".join(lines)


def run_passes(pipeline: Pipeline, name: str, cfg, measure: Stage, write: Stage, *, client=None,
               overwrite: bool = False) -> DocReport:
    """measure (per shard) -> corpus-wide dedup (reduce) -> write documents (per shard)."""
    out = pipeline.stage_dir(name)
    mdir = fsio.join(out, "_measure")
    shards = input_shards(cfg)
    with client_for(pipeline.engine, client) as c:
        first = map_shards(measure, shards, mdir, pipeline.engine, client=c, overwrite=overwrite, root=pipeline.workdir)
        if not first.ok:
            return DocReport(name, out, failed=dict(first.failed), measure=first)
        measured = [Shard(s.id, MeasureFile(fsio.join(mdir, f"{s.id}.parquet"))) for s in shards]
        report = run_global(DocDedup(name, cfg, write), measured, out, pipeline.engine, client=c, overwrite=overwrite,
                            root=pipeline.workdir)
    return DocReport(**vars(report), measure=first)


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> Report:
    cfg: InterleavedConfig = pipeline.section("interleaved")
    return run_passes(pipeline, "interleaved", cfg, Measure(cfg), WriteDocuments(cfg), client=client, overwrite=overwrite)
