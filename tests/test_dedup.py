"""`dedup`: global rules across shards, smallest key kept, eval-set leaks, order/worker invariance."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_filter import picture, write_download_set

from mmdata import phash as ph
from mmdata.config import Pipeline
from mmdata.stages import dedup
from mmdata.stages import filter as filt

CAP = "A photograph of a quiet harbour with fishing boats number {}"


def variant(data: bytes, *, scale=1.0, crop=0.0, fmt="JPEG", quality=60) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if crop:
        img = img.crop((int(w * crop), int(h * crop * 0.6), w - int(w * crop * 0.8), h - int(h * crop)))
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=quality)
    return buf.getvalue()


P = {i: picture(100 + i, (400, 300)) for i in range(8)}
SHARDS = {
    "00000": [
        {"url": "http://x/0", "caption": CAP.format(0), "image": P[0]},                    # 000000000 kept
        {"url": "http://x/1", "caption": CAP.format(1), "image": P[1]},                    # 000000001 kept
        {"url": "http://x/2", "caption": CAP.format(2), "image": P[2]},                    # 000000002 eval (phash)
        {"url": "http://x/3", "caption": CAP.format(3), "image": P[3]},                    # 000000003 kept
    ],
    "00001": [
        {"url": "http://x/0", "caption": CAP.format(10), "image": P[4]},                   # 000010000 same url as 0
        {"url": "http://y/1", "caption": CAP.format(1), "image": P[1]},                    # 000010001 same pair as 1
        {"url": "http://y/3", "caption": CAP.format(13), "image": P[3]},                   # 000010002 same image as 3
        {"url": "http://y/5", "caption": CAP.format(5), "image": P[5]},                    # 000010003 eval (sha256)
        {"url": "http://y/6", "caption": CAP.format(6), "image": variant(P[6], scale=0.8)},  # 000010004 kept (smallest)
    ],
    "00002": [
        {"url": "http://z/0", "caption": CAP.format(20), "image": variant(P[0], scale=0.7, quality=50)},  # near 0
        {"url": "http://z/1", "caption": CAP.format(21), "image": variant(P[1], fmt="PNG")},              # near 1
        {"url": "http://z/6", "caption": CAP.format(22), "image": P[6]},                                  # near 000010004
        {"url": "http://z/7", "caption": CAP.format(23), "image": variant(P[3], crop=0.04)},             # near 3 (crop)
        {"url": "http://z/8", "caption": "Ein Hafen mit Fischerbooten am frühen Morgen im Sommer", "image": P[7]},  # filtered
        {"url": "http://z/9", "caption": CAP.format(29), "image": P[7]},                                  # kept: the German one is gone
    ],
}
EXPECTED = {
    "000010000": "duplicate_url_of:000000000",
    "000010001": "duplicate_pair_of:000000001",
    "000010002": "duplicate_image_of:000000003",
    "000000002": "eval_set_phash",
    "000010003": "eval_set_sha256",
    "000020000": "near_duplicate_of:000000000",
    "000020001": "near_duplicate_of:000000001",
    "000020002": "near_duplicate_of:000010004",
    "000020003": "near_duplicate_of:000000003",
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dedup-src")
    write_download_set(folder / "download", SHARDS)
    import hashlib

    with Image.open(io.BytesIO(variant(P[2], scale=0.9))) as im:
        leaked = ph.to_hex(ph.phash(im))
    pd.DataFrame({"sha256": [hashlib.sha256(P[5]).hexdigest(), None], "phash": [None, leaked]}).to_parquet(
        folder / "eval.parquet")
    return folder


def recipe(work: Path, src: Path, shards: Path | None = None, **engine) -> Pipeline:
    return Pipeline(workdir=str(work), engine={"progress": False, **engine}, filter={"input": str(shards or src / "download")},
                    dedup={"input": str(shards or src / "download"), "eval_set": {"path": str(src / "eval.parquet")}})


def decisions(pipe: Pipeline) -> dict:
    out = Path(pipe.stage_dir("dedup"))
    side = pd.concat(pd.read_parquet(p) for p in sorted(out.glob("0*.parquet")))
    return {k: r for k, r in zip(side["key"], side["drop_reason"]) if isinstance(r, str)}


def test_rules_reasons_and_keep_list(tmp_path, source, client):
    pipe = recipe(tmp_path / "w", source)
    filt.run(pipe, client=client)
    report = dedup.run(pipe, client=client)
    lines = report.summary().splitlines()
    assert report.ok and len(report.done) == 3
    assert decisions(pipe) == EXPECTED
    out = Path(pipe.stage_dir("dedup"))
    side = pd.concat(pd.read_parquet(p) for p in sorted(out.glob("0*.parquet")))
    assert len(side) == 15 and side["key"].is_unique  # every input record, once
    assert not side.set_index("key").at["000020004", "considered"]  # dropped by filter: not a candidate
    keep = pd.read_parquet(out / "_keep.parquet")
    assert list(keep["key"]) == ["000000000", "000000001", "000000003", "000010004", "000020005"]
    funnel = json.loads((out / "_funnel.json").read_text())  # the records that were in the running
    assert funnel == {"stage": "dedup", "records": 14, "kept": 5, "dropped": [
        ["eval_set_sha256", 1], ["eval_set_phash", 1], ["duplicate_url_of", 1], ["duplicate_pair_of", 1],
        ["duplicate_image_of", 1], ["near_duplicate_of", 4]]}
    assert any("near_duplicate_of" in line for line in lines)
    # resume: nothing recomputed, nothing rewritten
    again = dedup.run(pipe, client=client)
    assert again.skipped == ["00000", "00001", "00002"] and not again.done


def test_same_result_with_1_or_4_workers_and_shards_in_another_order(tmp_path, source, client):
    base = recipe(tmp_path / "base", source)
    filt.run(base, client=client)
    # the same records under shard ids that sort the other way round
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for old, new in (("00000", "00009"), ("00001", "00008"), ("00002", "00007")):
        for suffix in (".tar", ".parquet", "_stats.json"):
            shutil.copy(source / "download" / f"{old}{suffix}", renamed / f"{new}{suffix}")
    results = []
    for workers, shards in ((1, None), (4, None), (4, renamed)):
        pipe = recipe(tmp_path / f"w{workers}{'r' if shards else ''}", source, shards, n_workers=workers, processes=False)
        if shards:
            filt.run(pipe)
        else:
            shutil.copytree(base.stage_dir("filter"), pipe.stage_dir("filter"))
        dedup.run(pipe)  # its own LocalCluster with that many workers
        results.append(decisions(pipe))
    assert results[0] == results[1] == results[2] == EXPECTED


def test_banded_search_finds_what_brute_force_finds():
    rng = np.random.default_rng(7)
    base = rng.integers(-2**63, 2**63 - 1, 3000, dtype=np.int64)
    flips = [rng.choice(64, size=rng.integers(0, 4), replace=False) for _ in range(300)]
    near = np.array([int(np.bitwise_xor.reduce([np.uint64(1) << np.uint64(b) for b in f] + [np.uint64(0)])) for f in flips],
                    dtype=np.uint64).view(np.int64) ^ base[:300]
    hashes = np.r_[base, near]
    ids = np.arange(len(hashes))
    found = ph.near_duplicates(ids, hashes, threshold=3, bands=4)  # 4 bands: distance < 4 always found
    d = ph.hamming(hashes[:, None], hashes[None, :])
    i, j = np.nonzero(np.triu(d <= 3, k=1))
    brute = ph.greedy_keep(i, j)
    assert found == brute and len(found) >= 300


def test_phash_matches_imagehash():
    import imagehash

    with Image.open(io.BytesIO(P[0])) as im:
        assert ph.to_hex(ph.phash(im)) == str(imagehash.phash(im))
