"""`filter`: measure every image-caption pair, then keep or drop it by the recipe's thresholds.

Two steps, so that a threshold change never needs the images again:

1. `measure(meta, images, cfg)`: per record, the caption's language and confidence (fastText
   lid.176, `mmdata.langid`), word and character counts, an uninformative-AltText score and the
   rule that fired, the original image's min side and aspect, and the perceptual hashes and colour
   thumbnails `dedup` reads (`mmdata.phash`).
2. `decide(measures, cfg)`: `drop_reason` per record from those columns alone, the first failing
   rule in `RULES` order; null when kept.

Writes `{workdir}/filter/{id}.parquet` (one row per input record, `key` + columns) and stats; the
engine writes the funnel, `_funnel.json` (`mmdata.decisions`), in rule order. Records the download did not
fetch are kept as rows with `drop_reason = not_downloaded`, so every input record is accounted for.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmdata import decisions, fsio, samples
from mmdata.config import FilterConfig, Pipeline
from mmdata.decisions import Rule
from mmdata.engine import Report, Shard, Stage, map_shards
from mmdata.store import ShardSet

# rule order: the funnel counts each dropped record under the first rule it fails
RULES = ("not_downloaded", "undecodable", "lang_not_allowed", "too_few_words", "too_few_chars", "too_small",
         "extreme_aspect", "uninformative")


# ---------------------------------------------------------------------------------------------
# uninformative AltText


@dataclass(frozen=True)
class Uninformative:
    """Scores AltText that says nothing about its image: file names, boilerplate, bare numbers."""

    phrases: frozenset[str]

    _FILE = re.compile(r"^[\w\-. ]*\.(jpe?g|png|gif|webp|bmp|tiff?|svg)$", re.IGNORECASE)
    _CAMERA = re.compile(r"^(img|dsc|dscn|dcim|pxl|photo|image|pic|screenshot|untitled)[\s_\-]*\d+$", re.IGNORECASE)
    _NUMBERS = re.compile(r"^[\d\W_]+$")

    def score(self, caption: str | None) -> tuple[float, str | None]:
        """(score 0-1, rule): 1 = certainly uninformative; the rule names why."""
        text = " ".join((caption or "").split()).strip()
        low = text.lower().strip(" .:!-|")
        if not low:
            return 1.0, "empty"
        if self._FILE.match(low):
            return 1.0, "file_name"
        if self._CAMERA.match(low):
            return 1.0, "camera_name"
        if self._NUMBERS.match(low):
            return 1.0, "no_words"
        if low in self.phrases:
            return 1.0, "boilerplate"
        # a boilerplate phrase with a little around it ("click here to enlarge")
        words = low.split()
        if len(words) <= 6 and any(p in low for p in self.phrases if " " in p):
            return 0.7, "boilerplate_phrase"
        return 0.0, None


# ---------------------------------------------------------------------------------------------
# step 1: measure


def caption_measures(captions: list, cfg: FilterConfig) -> pd.DataFrame:
    from mmdata import langid

    langs, scores = zip(*(langid.detect(c, cfg.langid_max_chars) for c in captions)) if captions else ((), ())
    judge = Uninformative(frozenset(p.lower() for p in cfg.uninformative_phrases))
    uninf, rule = zip(*(judge.score(c) for c in captions)) if captions else ((), ())
    text = [" ".join((c or "").split()) for c in captions]
    return pd.DataFrame({
        "lang": pd.Series(langs, dtype="string"),
        "lang_score": np.asarray(scores, dtype=np.float32),
        "n_words": np.array([len(t.split()) for t in text], dtype=np.int32),
        "n_chars": np.array([len(t) for t in text], dtype=np.int32),
        "uninformative": np.asarray(uninf, dtype=np.float32),
        "uninformative_rule": pd.Series(rule, dtype="string"),
    })


def image_measures(data: bytes, cfg: FilterConfig) -> dict:
    from PIL import Image

    from mmdata import phash as ph

    with Image.open(io.BytesIO(data)) as im:
        hashes, colour = ph.measure(im, cfg.crop_scales, cfg.colour_grid)
    return {"phash": int(hashes[0]), "phash_variants": hashes.tolist(), "colour": colour}


def measure(meta: pd.DataFrame, images: dict[str, bytes], cfg: FilterConfig) -> pd.DataFrame:
    """Measurement columns for every metadata row; `images` maps key -> image bytes."""
    out = pd.DataFrame({"key": meta["key"].astype(str).to_numpy()})
    out = pd.concat([out, caption_measures(meta["caption"].tolist(), cfg)], axis=1)
    w = pd.to_numeric(meta.get("original_width", meta.get("width")), errors="coerce").to_numpy(dtype=float)
    h = pd.to_numeric(meta.get("original_height", meta.get("height")), errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["min_side"] = pd.array(np.where(np.isnan(w) | np.isnan(h), np.nan, np.fmin(w, h)), dtype="Int32")
        out["aspect"] = (np.fmax(w, h) / np.fmin(w, h)).astype(np.float32)
    rows, errors = [], []
    for key, status in zip(out["key"], meta["status"]):
        data = images.get(key) if status == "success" else None
        row, err = {"phash": None, "phash_variants": None, "colour": None}, None
        if status == "success":
            if data is None:
                err = "no image in the shard tar"
            else:
                try:
                    row = image_measures(data, cfg)
                except Exception as e:  # noqa: BLE001  (any decoder error is this sample's problem, not the shard's)
                    err = f"{type(e).__name__}: {e}"
        rows.append(row)
        errors.append(err)
    out["phash"] = pd.array([r["phash"] for r in rows], dtype="Int64")
    out["phash_variants"] = [r["phash_variants"] for r in rows]
    out["colour"] = [r["colour"] for r in rows]
    out["error_message"] = pd.Series(errors, dtype="string")
    out["downloaded"] = meta["status"].eq("success").to_numpy()
    return out


# ---------------------------------------------------------------------------------------------
# step 2: decide


def rules(cfg: FilterConfig) -> list[Rule]:
    """The thresholds as rules over the measurement columns, in RULES order."""
    want = cfg.language

    def lang_not_allowed(m: pd.DataFrame) -> pd.Series:
        wrong = False if want.languages is None else ~m["lang"].isin(want.languages).fillna(False).astype(bool)
        return wrong | (m["lang_score"] < want.min_score)

    return [
        Rule("not_downloaded", lambda m: ~m["downloaded"]),
        Rule("undecodable", lambda m: m["downloaded"] & m["error_message"].notna()),
        Rule("lang_not_allowed", lang_not_allowed),
        Rule("too_few_words", lambda m: m["n_words"] < cfg.min_words),
        Rule("too_few_chars", lambda m: m["n_chars"] < cfg.min_chars),
        Rule("too_small", lambda m: m["min_side"] < cfg.min_side),
        Rule("extreme_aspect", lambda m: m["aspect"] > cfg.max_aspect_ratio),
        Rule("uninformative", lambda m: (m["uninformative"] >= cfg.uninformative_threshold) & cfg.drop_uninformative),
    ]


def decide(m: pd.DataFrame, cfg: FilterConfig) -> pd.Series:
    """drop_reason per record: the first failing rule in RULES order, null when kept."""
    return decisions.decide(m, rules(cfg)).astype("string")


# ---------------------------------------------------------------------------------------------
# the stage


class Filter(Stage):
    name = "filter"
    reasons = RULES

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def settings(self) -> FilterConfig:
        return self.cfg

    def setup(self) -> None:
        from mmdata import langid

        langid.load()

    def process(self, shard: Shard, out: str) -> dict:
        meta = fsio.read_parquet(shard.input.meta)
        images: dict[str, bytes] = {}
        if fsio.exists(shard.input.tar):
            for sample in samples.read_shard(shard.input.tar):
                if (data := samples.image_member(sample)) is not None:
                    images[sample["__key__"]] = data
        m = measure(meta, images, self.cfg)
        m["drop_reason"] = decide(m, self.cfg)
        fsio.write_parquet(fsio.join(out, f"{shard.id}.parquet"), m)
        dropped = decisions.counts(m["drop_reason"].dropna())
        kept = int(m["drop_reason"].isna().sum())
        return {"count": len(m), "successes": kept, "status_dict": {**dropped, "kept": kept}, "dropped": dropped}


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> Report:
    cfg = pipeline.section("filter")
    shards = ShardSet(cfg.input or pipeline.output("download")).require("filter")
    return map_shards(Filter(cfg), shards, pipeline.stage_dir("filter"), pipeline.engine, client=client,
                      overwrite=overwrite, root=pipeline.workdir)
