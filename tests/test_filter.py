"""`filter`: measurements into columns, decisions from YAML thresholds, funnel, resume, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmdata import fsio, samples
from mmdata.config import Pipeline
from mmdata.stages import filter as filt
from mmdata.store import ShardSet, table

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# a download-format shard set, made by hand (what the download stage writes)


def picture(seed: int, size=(320, 240), fmt="JPEG", quality=90) -> bytes:
    """A textured random picture: distinct seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=quality)
    return buf.getvalue()


def write_download_set(folder: Path, shards: dict[str, list[dict]]) -> ShardSet:
    """shards: id -> rows with url, caption, and `image` bytes (None = a failed download)."""
    for sid, rows in shards.items():
        meta = []
        with samples.TarSink(str(folder / f"{sid}.tar")) as sink:
            for i, row in enumerate(rows):
                key = row.get("key") or f"{int(sid):05d}{i:04d}"
                data = row.get("image")
                rec = {"key": key, "status": "success", "error_message": None, "url": row["url"],
                       "caption": row["caption"], "width": None, "height": None, "original_width": None,
                       "original_height": None, "sha256": None, "exif": None, "ext": None,
                       "sample_id": row.get("sample_id", i)}
                if data is None:
                    rec.update(status="failed_to_download", error_message="HTTP 404")
                else:
                    with Image.open(io.BytesIO(data)) as im:
                        w, h = im.size
                    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[Image.open(io.BytesIO(data)).format]
                    rec.update(width=w, height=h, original_width=w, original_height=h,
                               sha256=hashlib.sha256(data).hexdigest(), ext=ext)
                    sink.write({"__key__": key, ext: data, "txt": row["caption"] or "",
                                "json": {k: v for k, v in rec.items() if v is not None} | {"kind": "pair", "schema_version": 1}})
                meta.append(rec)
        fsio.write_parquet(str(folder / f"{sid}.parquet"), pd.DataFrame(meta))
        fsio.write_json(str(folder / f"{sid}_stats.json"), {"count": len(meta), "successes": 0, "status_dict": {}})
    return ShardSet(str(folder))


EN = "A red kite flying high over a green summer meadow"
ROWS = [
    {"url": "http://a/0.jpg", "caption": EN, "image": picture(0)},                                   # kept
    {"url": "http://a/1.jpg", "caption": "Ein roter Drachen fliegt hoch über einer grünen Sommerwiese", "image": picture(1)},
    {"url": "http://a/2.jpg", "caption": "red kite", "image": picture(2)},                           # 2 words
    {"url": "http://a/3.jpg", "caption": "a b c", "image": picture(3)},                              # 5 chars
    {"url": "http://a/4.jpg", "caption": EN, "image": picture(4, (150, 400))},                      # min side 150
    {"url": "http://a/5.jpg", "caption": EN, "image": picture(5, (700, 210))},                      # aspect 3.33
    {"url": "http://a/6.jpg", "caption": EN, "image": None},                                         # not downloaded
    {"url": "http://a/7.jpg", "caption": "IMG_4032.jpg", "image": picture(7)},                      # uninformative, 1 word
    {"url": "http://a/8.jpg", "caption": EN, "image": b"\xff\xd8\xff not really a jpeg"},           # undecodable
    {"url": "http://a/9.jpg", "caption": "Click here to see the photo", "image": picture(9, fmt="PNG")},  # uninformative, kept
]


def recipe(tmp: Path, src: Path, **filter_cfg) -> Pipeline:
    return Pipeline(workdir=str(tmp / "work"), engine={"progress": False},
                    filter={"input": str(src), **filter_cfg})


@pytest.fixture
def pairs(tmp_path) -> Path:
    src = tmp_path / "download"
    rows = [dict(r) for r in ROWS]
    rows[8]["image"] = picture(8)
    write_download_set(src, {"00000": rows[:5], "00001": rows[5:]})
    # then corrupt one tar member behind the metadata's back, as real data has
    originals = list(samples.read_shard(str(src / "00001.tar")))
    with samples.TarSink(str(src / "00001.tar")) as sink:
        for s in originals:
            if s["__key__"] == "000010003":
                s["jpg"] = ROWS[8]["image"]
            sink.write(s)
    return src


def test_measures_then_decisions_with_datacomp_defaults(tmp_path, pairs, client):
    pipe = recipe(tmp_path, pairs)
    report = filt.run(pipe, client=client)
    assert report.ok and len(report.done) == 2
    ds = ShardSet(str(pairs))
    df = pd.concat([table(ds, sid, {"filter": pipe.stage_dir("filter")}) for sid in ds.ids()], ignore_index=True)
    reasons = df.set_index("url")["filter.drop_reason"].astype(object).where(lambda s: s.notna(), None).to_dict()
    assert reasons == {
        "http://a/0.jpg": None,
        "http://a/1.jpg": "lang_not_allowed",
        "http://a/2.jpg": "too_few_words",
        "http://a/3.jpg": "too_few_chars",
        "http://a/4.jpg": "too_small",
        "http://a/5.jpg": "extreme_aspect",
        "http://a/6.jpg": "not_downloaded",
        "http://a/7.jpg": "lang_not_allowed",  # a file name is no language: the first failing rule
        "http://a/8.jpg": "undecodable",
        "http://a/9.jpg": None,
    }
    row = df.set_index("url")
    assert row.at["http://a/1.jpg", "filter.lang"] == "de" and row.at["http://a/0.jpg", "filter.lang"] == "en"
    assert row.at["http://a/0.jpg", "filter.lang_score"] > 0.5
    assert row.at["http://a/2.jpg", "filter.n_words"] == 2 and row.at["http://a/3.jpg", "filter.n_chars"] == 5
    assert row.at["http://a/4.jpg", "filter.min_side"] == 150
    assert row.at["http://a/5.jpg", "filter.aspect"] == pytest.approx(700 / 210, rel=1e-4)
    # uninformative AltText is a score with its rule, not a drop (recaptioning targets it)
    assert row.at["http://a/7.jpg", "filter.uninformative"] == 1.0
    assert row.at["http://a/7.jpg", "filter.uninformative_rule"] == "file_name"
    assert row.at["http://a/9.jpg", "filter.uninformative"] >= 0.5
    assert row.at["http://a/0.jpg", "filter.uninformative"] == 0.0
    assert "cannot identify" in row.at["http://a/8.jpg", "filter.error_message"]
    # hashes for dedup: the whole image plus its crops, and colour thumbnails to match
    assert pd.isna(row.at["http://a/6.jpg", "filter.phash"])
    variants = row.at["http://a/0.jpg", "filter.phash_variants"]
    assert len(variants) == 9 and variants[0] == row.at["http://a/0.jpg", "filter.phash"]
    assert len(row.at["http://a/0.jpg", "filter.colour"]) == 9 * 4 * 4 * 3
    # funnel: every record once, in rule order
    funnel = json.loads((Path(pipe.stage_dir("filter")) / "_funnel.json").read_text())
    assert [r for r, _ in funnel["dropped"]][:3] == ["not_downloaded", "undecodable", "lang_not_allowed"]
    assert funnel["records"] == 10 and funnel["kept"] == 2
    assert funnel["kept"] + sum(n for _, n in funnel["dropped"]) == 10
    assert "filter funnel: 10 records in" in report.summary()


def test_thresholds_come_from_the_recipe_and_rerun_resumes(tmp_path, pairs, client):
    pipe = recipe(tmp_path, pairs, min_side=100, max_aspect_ratio=4.0, drop_uninformative=True, language={"languages": ["en", "de"]})
    filt.run(pipe, client=client)
    side = pd.concat(pd.read_parquet(p) for p in sorted(Path(pipe.stage_dir("filter")).glob("0*.parquet")))
    reasons = dict(zip(side["key"], side["drop_reason"].astype(object).where(side["drop_reason"].notna(), None)))
    assert reasons["000000001"] is None and reasons["000000004"] is None and reasons["000010000"] is None
    assert reasons["000010004"] == "uninformative"
    again = filt.run(pipe, client=client)
    assert again.skipped == ["00000", "00001"] and not again.done


def test_uninformative_rules():
    judge = filt.Uninformative(frozenset(["click here", "image", "read more"]))
    assert judge.score("DSC01234") == (1.0, "camera_name")
    assert judge.score("photo_2019-05-01.JPG")[1] == "file_name"
    assert judge.score("Image") == (1.0, "boilerplate")
    assert judge.score("12 / 345") == (1.0, "no_words")
    assert judge.score("  ") == (1.0, "empty")
    assert judge.score("Click here to see the photo")[0] == 0.7
    assert judge.score("A photo of the harbour at dawn") == (0.0, None)


def test_cli_filter_then_dedup(tmp_path, pairs):
    (tmp_path / "r.yaml").write_text(
        f"workdir: {tmp_path / 'cli'}\nengine: {{n_workers: 1, progress: false}}\n"
        f"filter: {{input: {pairs}}}\ndedup: {{input: {pairs}}}\n")
    for stage in ("filter", "dedup"):
        done = subprocess.run([sys.executable, "-m", "mmdata", stage, "--config", str(tmp_path / "r.yaml")],
                              cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
        assert f"{stage} funnel: " in done.stdout
    assert "lang_not_allowed" in done.stdout or (tmp_path / "cli" / "dedup" / "_keep.parquet").exists()
    keep = pd.read_parquet(tmp_path / "cli" / "dedup" / "_keep.parquet")
    assert sorted(keep["key"]) == ["000000000", "000010004"]
