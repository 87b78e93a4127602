"""`clipscore`: exact cosine + embeddings per sample, a pool-wide decision, the tiny demo CLIP.

The tiny CLIP is trained once (through the `tiny-clip` CLI) on the demo corpus; the stage runs on
the demo corpus as the download stage fetched it from the demo web server (`downloaded`).
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmdata import fsio, samples
from mmdata.config import ConfigError, Pipeline, parse
from mmdata.images import open_rgb
from mmdata.models import clip as mclip
from mmdata.models.device import DeviceError, pick_device, pick_dtype
from mmdata.stages import clipscore
from mmdata.store import ShardSet, kept, table

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdata", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=240, check=False, **kw)


# ---------------------------------------------------------------------------------------------
# fixtures


def recipe(workdir: Path, downloaded: Pipeline, model: Path, **options) -> Pipeline:
    return Pipeline(workdir=str(workdir), engine={"progress": False}, download=downloaded.download,
                    clipscore={"model": str(model), "batch_size": 32, "decode_threads": 2, **options})


@pytest.fixture(scope="module")
def scored(tmp_path_factory, downloaded, tiny_clip, client):
    """The stage on the downloaded demo pairs, 2 workers, keeping the pool's top half."""
    pipe = recipe(tmp_path_factory.mktemp("scored"), downloaded, tiny_clip, top_fraction=0.5)
    report = clipscore.run(pipe, client=client)
    assert report.ok, report.summary()
    return pipe, report


def sidecars(pipe: Pipeline) -> pd.DataFrame:
    out = pipe.stage_dir("clipscore")
    ids = ShardSet(pipe.download.output).ids()
    return pd.concat([fsio.read_parquet(fsio.join(out, f"{i}.parquet")) for i in ids], ignore_index=True)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties half."""
    pos, neg = pos[:, None], neg[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


# ---------------------------------------------------------------------------------------------
# preprocessing, device, batching


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 255, (500, 203, 3), dtype=np.uint8))
    tiny = Image.fromarray(rng.integers(0, 255, (20, 31, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (90, 120, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 255, (77, 100), dtype=np.uint8), "L")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 3
    jpeg = io.BytesIO()
    rgb.save(jpeg, "JPEG", quality=80)
    return [rgb, tall, tiny, rgba, grey, pal, open_rgb(jpeg.getvalue())]


@pytest.mark.parametrize("kind", ["clip224", "clip336", "siglip"])
def test_own_preprocessing_equals_the_model_processor(kind):
    import torch
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    ip = {
        "clip224": lambda: CLIPImageProcessorPil(),
        "clip336": lambda: CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        "siglip": lambda: SiglipImageProcessorPil(size={"height": 224, "width": 224}),
    }[kind]()
    prep = mclip.Preprocess.from_processor(ip)
    for img in _images():
        want = ip(images=img, return_tensors="pt")["pixel_values"]
        got = prep.pixels(torch.from_numpy(np.stack([prep(img)])), torch.float32)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_device_and_dtype_choice():
    import torch

    if torch.cuda.is_available():
        assert pick_device("auto") == "cuda"
        assert pick_dtype("cuda") in (torch.bfloat16, torch.float16)
    else:
        assert pick_device("auto") in ("mps", "cpu")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            pick_device("cuda")
    assert pick_device("cpu") == "cpu"
    assert pick_dtype("cpu") == torch.float32
    with pytest.raises(DeviceError):
        pick_dtype("cpu", "float16")


def test_batch_size_halves_on_out_of_memory_and_keeps_order():
    import torch

    calls = []

    def fn(chunk):
        calls.append(len(chunk))
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in chunk]

    parts, size = mclip.run_adaptive(fn, list(range(11)), 16)
    assert [x for p in parts for x in p] == [x * 10 for x in range(11)]
    assert size == 2 and calls[:4] == [11, 8, 4, 2]

    def broken(chunk):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        mclip.run_adaptive(broken, [1, 2], 2)


def test_recipe_takes_one_rule():
    base = {"workdir": "w"}
    with pytest.raises(ConfigError, match="top_fraction or threshold"):
        parse(Pipeline, {**base, "clipscore": {"top_fraction": 0.3, "threshold": 0.28}}, "r.yaml")
    p = parse(Pipeline, {**base, "clipscore": {"threshold": 0.28}}, "r.yaml")
    assert p.clipscore.threshold == 0.28 and p.clipscore.top_fraction is None
    assert parse(Pipeline, {**base, "clipscore": {}}, "r.yaml").clipscore.top_fraction == 0.3


# ---------------------------------------------------------------------------------------------
# exact cosine, CLIP and SigLIP through the same loading path


def _siglip(tmp: Path, tokenizer) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    model = SiglipModel(SiglipConfig(
        text_config=dict(common, vocab_size=len(tokenizer), max_position_embeddings=16),
        vision_config=dict(common, image_size=32, patch_size=8)))
    model.save_pretrained(tmp)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


def test_the_tiny_clip_is_trained_once_and_then_reused(tiny_clip, demo_corpus):
    from mmdata.demo.tiny_clip import TinyClipConfig, ensure_tiny_clip

    assert (tiny_clip / "config.json").is_file() and (tiny_clip / "model.safetensors").is_file()
    stamp = (tiny_clip / "model.safetensors").stat().st_mtime_ns
    # already there, from the same corpus and settings: not trained again (tests/test_demo_models.py: when not)
    assert ensure_tiny_clip(demo_corpus, tiny_clip, TinyClipConfig(steps=60, progress=True)) == str(tiny_clip)
    assert (tiny_clip / "model.safetensors").stat().st_mtime_ns == stamp


def test_score_is_the_models_own_cosine_for_clip_and_siglip(tiny_clip, tmp_path):
    import torch
    from transformers import AutoTokenizer

    texts = ["two red circles on a plain blue background", "one green star", "a sign that says STOP"]
    imgs = [im for im in _images()[:3]]
    siglip = _siglip(tmp_path / "siglip", AutoTokenizer.from_pretrained(tiny_clip))
    for path in (tiny_clip, siglip):
        enc = mclip.ClipEncoder.load(str(path), batch_size=2)
        score = mclip.cosine(enc.embed_images([enc.prep(im) for im in imgs]), enc.embed_texts(texts))
        # the model's own forward: logits = exp(scale) * cosine (+ bias for SigLIP)
        pixels = enc.prep.pixels(torch.from_numpy(np.stack([enc.prep(im) for im in imgs])), torch.float32)
        with torch.no_grad():
            out = enc.model(pixel_values=pixels, **enc.tokenize(texts))
        bias = getattr(enc.model, "logit_bias", torch.zeros(1))
        want = ((out.logits_per_image - bias) / enc.model.logit_scale.exp()).diagonal().detach().numpy()
        np.testing.assert_allclose(score, want, atol=1e-5)
    assert mclip.ClipEncoder.load(str(siglip)).pad_to_max  # SigLIP texts padded to full length


# ---------------------------------------------------------------------------------------------
# the stage on the demo corpus


def test_tiny_clip_separates_mismatched_captions_and_top_fraction_drops_them(scored, demo_corpus):
    pipe, report = scored
    base = ShardSet(pipe.download.output)
    df = pd.concat([table(base, i, {"clip": pipe.stage_dir("clipscore")}) for i in base.ids()], ignore_index=True)
    truth = pd.read_parquet(demo_corpus / "pairs" / "truth.parquet")
    df = df.merge(truth[["sample_id", "mismatched", "uninformative", "lang"]], on="sample_id", validate="one_to_one")
    assert len(df) == len(truth)  # every input record once

    ok = df["status"].eq("success")
    assert df.loc[ok, "clip.score"].notna().all() and df.loc[~ok, "clip.score"].isna().all()
    assert (df.loc[~ok, "clip.status"] == "skipped_not_downloaded").all()
    scored_ = df[ok]
    matched = scored_[~scored_["mismatched"] & ~scored_["uninformative"] & scored_["lang"].eq("en")]
    mismatched = scored_[scored_["mismatched"]]
    assert len(mismatched) >= 20
    assert auc(matched["clip.score"].to_numpy(), mismatched["clip.score"].to_numpy()) >= 0.9

    # the top half of the whole pool, exactly: one global threshold, not one per shard
    d = json.loads((Path(pipe.stage_dir("clipscore")) / "_decision.json").read_text())
    assert d["rule"] == "top_fraction" and d["pool"] == len(scored_)
    keep = scored_["clip.drop_reason"].isna()
    assert keep.sum() == math.ceil(0.5 * len(scored_)) == report.funnel["kept"]
    assert scored_.loc[keep, "clip.score"].min() == pytest.approx(d["threshold"])
    assert (scored_.loc[~keep, "clip.drop_reason"] == "low_clip_score").all()
    assert (scored_.loc[~keep, "clip.score"] < d["threshold"]).all()
    assert mismatched["clip.drop_reason"].eq("low_clip_score").mean() >= 0.9
    assert kept(df).sum() == keep.sum()
    assert f"decision (top 50% of a pool of {len(scored_)})" in report.summary()


def test_embeddings_are_saved_with_their_keys(scored):
    pipe, _ = scored
    out = Path(pipe.stage_dir("clipscore"))
    for sid in ShardSet(pipe.download.output).ids():
        side = fsio.read_parquet(str(out / f"{sid}.parquet"))
        with np.load(out / "_scores" / f"{sid}.emb.npz", allow_pickle=False) as z:
            keys, img, txt = z["key"], z["image"], z["text"]
        s = side.set_index("key").loc[keys, "score"].to_numpy()
        assert list(keys) == side.loc[side["score"].notna(), "key"].tolist()
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (len(keys), 64)
        np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=2e-3)
        np.testing.assert_allclose(mclip.cosine(img.astype(np.float32), txt.astype(np.float32)), s, atol=3e-3)


def test_one_worker_resumed_after_a_kill_gives_the_same_result(scored, tmp_path, downloaded, tiny_clip):
    """Also the accelerator's schedule (decoding overlapped with the model) on CPU: the same scores."""
    pipe2, _ = scored
    work = tmp_path / "w"
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe(work, downloaded, tiny_clip, top_fraction=0.5, batch_size=4, decode_threads=1,
                                      overlap_decode=True).model_dump(mode="json", exclude_none=True)))
    out = work / "clipscore" / "_scores"  # the scoring pass, shard by shard
    ids = ShardSet(pipe2.download.output).ids()
    proc = subprocess.Popen([sys.executable, "-m", "mmdata", "clipscore", "-c", str(path), "--workers", "1"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(out.glob("*_stats.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its cluster and its workers, mid-run
        proc.wait()
    done_at_kill = {p.name: p.read_bytes() for p in out.glob("*_stats.json")}
    assert 1 <= len(done_at_kill) < len(ids)

    r = cli("clipscore", "-c", str(path), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert f"{len(ids) - len(done_at_kill)} shards done, {len(done_at_kill)} already done" in r.stdout
    for name, before in done_at_kill.items():  # finished shards were not redone
        assert (out / name).read_bytes() == before
    one, two = sidecars(Pipeline(workdir=str(work), download=downloaded.download)), sidecars(pipe2)
    assert one["key"].is_unique and one["key"].tolist() == two["key"].tolist()
    np.testing.assert_allclose(one["score"], two["score"], atol=1e-6, equal_nan=True)
    assert one["drop_reason"].fillna("-").tolist() == two["drop_reason"].fillna("-").tolist()


def test_changing_the_rule_redecides_without_rescoring(scored, tmp_path, client):
    import shutil

    pipe, _ = scored
    work = tmp_path / "w"
    shutil.copytree(pipe.stage_dir("clipscore"), work / "clipscore")
    stats = {p.name: p.read_bytes() for p in (work / "clipscore" / "_scores").glob("*_stats.json")}
    again = Pipeline(workdir=str(work), engine={"progress": False}, download=pipe.download,
                     clipscore={**pipe.clipscore.model_dump(), "top_fraction": None, "threshold": 0.3})
    report = clipscore.run(again, client=client)
    assert not report.scoring.done and len(report.scoring.skipped) == len(stats)
    assert {p.name: p.read_bytes() for p in (work / "clipscore" / "_scores").glob("*_stats.json")} == stats
    assert len(report.done) == len(stats)  # every shard's decisions written again
    df = sidecars(again)
    s = df["score"].notna()
    assert (df.loc[s, "drop_reason"].eq("low_clip_score") == (df.loc[s, "score"] < 0.3)).all()
    assert report.step["rule"] == "threshold" and report.step["threshold"] == 0.3


# ---------------------------------------------------------------------------------------------
# per-sample outcomes, synthetic captions


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def test_every_record_has_one_outcome_and_synthetic_captions_are_scored(tmp_path, tiny_clip, client):
    src = tmp_path / "download"
    rows = [  # key, status, caption, synthetic, tar image
        ("000000000", "success", "one red circle", "one red circle on a plain blue background", _jpeg(0)),
        ("000000001", "success", "two green stars", None, _jpeg(1)),
        ("000000002", "success", None, None, _jpeg(2)),
        ("000000003", "success", "three black squares", None, b"\xff\xd8\xff not a jpeg"),
        ("000000004", "success", "one white ring", None, None),
        ("000000005", "failed_to_download", "one blue cross", None, None),
    ]
    with samples.TarSink(str(src / "00000.tar")) as sink:
        for key, _, cap, _, img in rows:
            if img is not None:
                sink.write({"__key__": key, "jpg": img, "txt": cap or "", "json": {"key": key}})
    fsio.write_parquet(str(src / "00000.parquet"), pd.DataFrame(
        {"key": [r[0] for r in rows], "status": [r[1] for r in rows],
         "error_message": [None if r[1] == "success" else "HTTP 404" for r in rows],
         "caption": [r[2] for r in rows], "synthetic_caption": [r[3] for r in rows]}))
    fsio.write_json(str(src / "00000_stats.json"), {"count": len(rows)})
    pipe = Pipeline(workdir=str(tmp_path), engine={"progress": False},
                    clipscore={"input": str(src), "model": str(tiny_clip), "batch_size": 2, "threshold": -1.0})
    report = clipscore.run(pipe, client=client)
    assert report.ok, report.summary()
    side = fsio.read_parquet(str(tmp_path / "clipscore" / "00000.parquet")).set_index("key")
    assert side["status"].tolist() == ["success", "success", "skipped_no_caption", "failed_to_decode",
                                       "failed_to_find_image", "skipped_not_downloaded"]
    assert side["drop_reason"].fillna("-").tolist() == ["-", "-", "no_caption", "undecodable_image",
                                                       "missing_image", "-"]
    assert side["score"].notna().tolist() == [True, True, False, False, False, False]
    assert side["synthetic_score"].notna().tolist() == [True, False, False, False, False, False]
    assert side.loc["000000003", "error_message"]
    with np.load(tmp_path / "clipscore" / "_scores" / "00000.emb.npz") as z:
        assert z["key"].tolist() == ["000000000", "000000001"]
        syn = z["synthetic_text"].astype(np.float32)
        assert not np.isnan(syn[0]).any() and np.isnan(syn[1]).all()
        assert mclip.cosine(z["image"][:1].astype(np.float32), syn[:1])[0] == pytest.approx(
            side.loc["000000000", "synthetic_score"], abs=3e-3)
    assert report.scoring.totals()["count"] == len(rows)
    assert report.funnel == {"stage": "clipscore", "records": 5, "kept": 2, "dropped": [
        ["no_caption", 1], ["undecodable_image", 1], ["missing_image", 1]]}


def test_pool_after_takes_the_quantile_over_what_earlier_stages_kept(scored, tmp_path, client):
    import shutil

    pipe, _ = scored
    work = tmp_path / "w"
    shutil.copytree(pipe.stage_dir("clipscore"), work / "clipscore")
    base = ShardSet(pipe.download.output)
    for sid in base.ids():  # an earlier stage's decisions, in the sidecar contract: every 3rd record dropped
        keys = base.read_meta(sid)["key"]
        fsio.write_parquet(str(work / "dedup" / f"{sid}.parquet"), pd.DataFrame(
            {"key": keys, "drop_reason": [("duplicate" if int(k) % 3 == 0 else None) for k in keys]}))
    again = Pipeline(workdir=str(work), engine={"progress": False}, download=pipe.download,
                     clipscore={**pipe.clipscore.model_dump(), "top_fraction": 0.25, "pool_after": ["dedup"]})
    d = clipscore.run(again, client=client).step
    df = sidecars(again)
    pool = df[df["score"].notna() & (df["key"].astype(int) % 3 != 0)]["score"].to_numpy()
    k = math.ceil(0.25 * len(pool))
    assert d["pool"] == len(pool) and d["threshold"] == pytest.approx(float(np.sort(pool)[::-1][k - 1]))
    kept_pool = pool >= d["threshold"]
    assert kept_pool.sum() == k  # exactly the top quarter of the pool
