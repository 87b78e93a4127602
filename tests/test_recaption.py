"""`recaption`: VeCap synthetic captions on the demo corpus, with the tiny LLaVA captioner and the tiny
fusion LM (trained once per session on the corpus, `tiny_recaption`), on the demo pairs as the download
stage fetched them (`downloaded`), scored with the clipscore stage's model (the tiny CLIP)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmdata import fsio, samples
from mmdata.config import ConfigError, FuseConfig, GuardConfig, Pipeline
from mmdata.demo.tiny_recaption import TINY_FUSE_PROMPT, TINY_FUSE_VERSION
from mmdata.models.device import rotated
from mmdata.models.fuse import entities, guard, instructions, rule_fuse
from mmdata.stages import recaption
from mmdata.store import ShardSet

# Most tests here start real Dask workers that load the models; the first also waits for the tiny
# models' training (a shared session fixture): more than the suite's 300 s on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
TINY_FUSE = {"system": None, "prompt": TINY_FUSE_PROMPT, "prompt_version": TINY_FUSE_VERSION}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdata", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300, check=False)


def recipe(work: Path, downloaded: Pipeline, models, **options) -> Pipeline:
    rc = {"describe": {"model": str(models.captioner), "batch_size": 32, "decode_threads": 2}, **options}
    return Pipeline(workdir=str(work), engine={"progress": False}, download=downloaded.download,
                    clipscore={"model": str(models.clip), "batch_size": 64, "top_fraction": 0.8,
                               "pool_after": ["filter"]},
                    filter={}, recaption=rc)


def sidecars(pipe: Pipeline) -> pd.DataFrame:
    out = Path(pipe.stage_dir("recaption"))
    ids = ShardSet(pipe.download.output).ids()
    return pd.concat([pd.read_parquet(out / f"{i}.parquet") for i in ids], ignore_index=True)


def meta(downloaded: Pipeline) -> pd.DataFrame:
    s = ShardSet(downloaded.download.output)
    return pd.concat([s.read_meta(i) for i in s.ids()], ignore_index=True)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, downloaded, client) -> Path:
    """The filter stage's sidecars (uninformative scores, languages) over the downloaded demo pairs."""
    from mmdata.stages import filter as filter_stage

    work = tmp_path_factory.mktemp("filtered")
    pipe = Pipeline(workdir=str(work), engine={"progress": False}, download=downloaded.download, filter={})
    assert filter_stage.run(pipe, client=client).ok
    return work / "filter"


def workdir(tmp_path: Path, filtered: Path, copy: bool = False) -> Path:
    work = tmp_path / "w"
    work.mkdir()
    if copy:  # this test changes the filter's sidecars
        shutil.copytree(filtered, work / "filter")
    else:
        (work / "filter").symlink_to(filtered, target_is_directory=True)
    return work


# ---------------------------------------------------------------------------------------------
# the parts: entities, rule-based fusion, guards, GPU pinning


def test_entities_are_names_not_sentence_starts():
    assert entities("JY-AYA Royal Jordanian Airbus A320 landing at Heathrow") == [
        "JY-AYA Royal Jordanian Airbus A320", "Heathrow"]
    assert entities('Two red circles with the word "CAFE"') == ["CAFE"]
    assert entities("The Statue of Liberty at dusk") == ["Statue of Liberty"]
    assert entities("Photo of two red circles, free download") == []
    assert entities("IMG_1234.jpg") == [] and entities(None) == []
    text, _ = rule_fuse("JY-AYA, a Royal Jordanian Airbus A320, at Heathrow", "a white plane on a runway", FuseConfig())
    assert text == "a white plane on a runway (JY-AYA, Royal Jordanian Airbus A320, Heathrow)"
    # what the description already says is not repeated
    assert rule_fuse("Red circle by Acme", "a red circle by acme", FuseConfig()) == ("a red circle by acme", [])


def test_guards_name_what_is_wrong():
    g = GuardConfig()
    told = instructions(FuseConfig())
    assert guard("", g) == "empty" and guard("  ,. ", g) == "empty" and guard("circle", g) == "empty"
    assert guard(" ".join(["word"] * 3), g) == "repeated"
    assert guard("a red circle and a red circle and a red circle and a red circle", g) == "repeated"
    assert guard(" ".join(f"w{i}" for i in range(61)), g) == "too_long"
    assert guard("Merge them into one fluent sentence instead of putting one after the other", g, told) == "echo"
    assert guard("one red circle on a plain blue background with a sign that says CAFE", g, told) is None


def test_each_worker_pins_its_own_gpu(client):
    assert rotated(["0", "1", "2", "3"], 2) == ["2", "3", "0", "1"] and rotated([], 1) == []

    def pin() -> tuple:
        from mmdata.models import device

        old, saved = os.environ.get("CUDA_VISIBLE_DEVICES"), list(device._pinned)
        device._pinned.clear()
        os.environ["CUDA_VISIBLE_DEVICES"] = "3,5"
        try:
            got = device.pin_worker_gpu()
            return got, os.environ["CUDA_VISIBLE_DEVICES"], device.pin_worker_gpu()
        finally:
            device._pinned[:] = saved
            if old is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = old

    # as a task on each LocalCluster worker (named 0 and 1), where the engine calls it
    got = [client.submit(pin, workers=[w], pure=False).result() for w in client.scheduler_info()["workers"]]
    assert sorted(got) == [("3", "3,5", "3"), ("5", "5,3", "5")]


def _llava_next(folder: Path) -> None:
    """A random tiny LLaVA-NeXT: image tiling, so the prompt's length depends on the image (processor path)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from mmdata.demo.tiny_recaption import CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer(["one red circle on a blue background"] * 20, 300)
    pins = [[28, 28], [28, 56], [56, 28], [56, 56]]
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = LlavaNextConfig(vision_config=CLIPVisionConfig(**tiny, image_size=28, patch_size=14),
                          text_config=LlamaConfig(**tiny, vocab_size=len(tok), num_key_value_heads=2,
                                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pins,
                          vision_feature_layer=-1, vision_feature_select_strategy="default")
    LlavaNextForConditionalGeneration(cfg).save_pretrained(folder)
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                        image_grid_pinpoints=pins)
    LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                       num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE).save_pretrained(folder)


def _blip(folder: Path) -> None:
    """A random tiny BLIP captioner: no chat template, unconditional or with a text prefix (fixed path)."""
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from mmdata.demo.tiny_clip import build_tokenizer

    wp = build_tokenizer(["one red circle on a blue background", "a photography of"] * 20, 200)
    tok = BertTokenizerFast(tokenizer_object=wp.backend_tokenizer, bos_token="[BOS]", eos_token="[EOS]",
                            pad_token="[PAD]", unk_token="[UNK]", sep_token="[EOS]", cls_token="[BOS]")
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = BlipConfig(text_config={**tiny, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                                  "bos_token_id": tok.bos_token_id, "sep_token_id": tok.sep_token_id,
                                  "eos_token_id": tok.sep_token_id},
                     vision_config={**tiny, "image_size": 32, "patch_size": 8})
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(folder)


def test_any_hf_captioner_batches_like_one_by_one(tmp_path, downloaded):
    """LLaVA-NeXT (chat template, image tiling: prompts of different lengths, left-padded) and BLIP
    (continuing a text prefix, on the fixed uint8 path): a batch describes each image exactly as alone."""
    from mmdata.config import DescribeConfig
    from mmdata.models.captioner import Captioner

    src = ShardSet(downloaded.download.output)
    datas = [samples.image_member(x) for x in list(src.samples(src.ids()[0]))[:3]]
    import io

    from PIL import Image

    wide = io.BytesIO()
    Image.new("RGB", (400, 90), (200, 30, 30)).save(wide, "PNG")
    datas.append(wide.getvalue())  # a banner: another tiling than the photos
    _llava_next(tmp_path / "next")
    _blip(tmp_path / "blip")
    for model, style, path in (("next", "auto", "processor"), ("blip", "prefix", "fixed")):
        cap = Captioner.load(DescribeConfig(model=str(tmp_path / model), prompt_style=style, max_new_tokens=5,
                                            prompt="a photography of" if style == "prefix" else DescribeConfig().prompt))
        assert cap.path == path and cap.style == {"next": "chat", "blip": style.replace("auto", "none")}[model]
        if model == "next":  # the prompts really differ in length, so left padding is exercised
            lengths = cap.prepare_all(datas).inputs["attention_mask"].sum(1)
            assert len(set(lengths.tolist())) > 1
        batched = [c[0] for c in cap.describe(cap.prepare_all(datas))]
        alone = [cap.describe(cap.prepare_all([d]))[0][0] for d in datas]
        assert batched == alone and all(isinstance(t, str) for t in batched)
        assert not any(t.lower().startswith("a photography of") for t in batched)


# ---------------------------------------------------------------------------------------------
# uninformative AltText: the captioner earns its keep


def test_synthetic_captions_beat_uninformative_alttext(tmp_path, downloaded, tiny_recaption, filtered, client):
    work = workdir(tmp_path, filtered, copy=True)
    pipe = recipe(work, downloaded, tiny_recaption, target="uninformative", fraction=0.06, pool_after=[])
    report = recaption.run(pipe, client=client)
    assert report.ok, report.summary()
    side = sidecars(pipe)
    m = meta(downloaded)
    uninf = pd.concat([pd.read_parquet(p) for p in sorted(filtered.glob("0*.parquet"))], ignore_index=True)
    df = m.merge(side, on="key", validate="one_to_one").merge(uninf[["key", "uninformative"]], on="key")
    assert len(side) == len(m) and side["key"].is_unique  # one row per input record

    pool = df["status_x"].eq("success")
    k = int(np.ceil(0.06 * pool.sum()))
    selected = ~df["status_y"].isin(["skipped_not_selected", "skipped_not_downloaded", "skipped_not_in_pool"])
    assert selected.sum() == k == report.selection["selected"]
    flagged = pool & (df["uninformative"] >= 0.5)
    assert 10 <= flagged.sum() <= k and (selected | ~flagged).all(), "the most uninformative AltTexts come first"

    got = df[flagged]
    assert got["status_y"].eq("success").all()
    # nothing in the AltText to keep: the synthetic caption is the description, flagged why
    assert (got["fusion"] == "description").all() and (got["flags"] == "alt_uninformative").all()
    assert (got["synthetic_caption"] == got["description"]).all()
    assert (got["caption"] != got["synthetic_caption"]).all(), "the AltText is kept beside, never replaced"
    better = float((got["synthetic_score"] > got["alt_score"]).mean())
    print(f"\nsynthetic caption beats the uninformative AltText on {better:.0%} of {len(got)} "
          f"(mean CLIP {got['synthetic_score'].mean():.3f} vs {got['alt_score'].mean():.3f})")
    assert better >= 0.8

    # and the descriptions are right, judged against the corpus' truth rather than by CLIP
    from mmdata.demo.tiny_recaption import accuracy, concept, load_truth

    truth = load_truth(Path(downloaded.download.input).parent.parent).set_index("sample_id")
    done = df[df["status_y"].eq("success")]
    right = accuracy(done["description"].tolist(), [concept(r) for r in truth.loc[done["sample_id"]].reset_index().to_dict("records")])
    print(f"descriptions of {len(done)} images name the right " + ", ".join(f"{k} {v:.0%}" for k, v in right.items()))
    # chance: 1/8 each for colour, background and shape; from the pretrained tiny tower the shape is
    # learned too, less well than colours (docs/recaption.md)
    assert right["colour"] >= 0.6 and right["background"] >= 0.8 and right["shape"] >= 0.25

    # an upstream sidecar changes (the filter re-run, now calling one more AltText uninformative): the
    # shards whose selection changed are redone, the others stay finished; nothing is "already done" wrongly
    was = df[~selected & pool & df["caption"].notna()].iloc[0]
    shard = str(was["key"])[:5]
    side_url = work / "filter" / f"{shard}.parquet"
    f = pd.read_parquet(side_url)
    f.loc[f["key"] == was["key"], "uninformative"] = 1.0
    f.to_parquet(side_url)
    before = {p.name: p.read_bytes() for p in (work / "recaption" / "_select").glob("*.parquet")}
    again = recaption.run(pipe, client=client)
    after = {p.name: p.read_bytes() for p in (work / "recaption" / "_select").glob("*.parquet")}
    changed = sorted(n[:-8] for n in after if after[n] != before[n])
    assert shard in changed and sorted(again.redone) == changed == sorted(again.done)
    assert sorted(again.skipped) == sorted(set(ShardSet(downloaded.download.output).ids()) - set(changed))
    now = sidecars(pipe).set_index("key").loc[was["key"]]
    assert now["status"] == "success" and now["flags"] == "alt_uninformative"


# ---------------------------------------------------------------------------------------------
# fusion: rule-based keeps names; the LLM path end to end; a guard falls back


@pytest.fixture(scope="module")
def few(tmp_path_factory, downloaded) -> Path:
    """One downloaded shard where only 12 records count as fetched, four with a name injected into the AltText."""
    src = ShardSet(downloaded.download.output)
    sid = src.ids()[0]
    dst = tmp_path_factory.mktemp("few") / "download"
    dst.mkdir()
    shutil.copy(Path(src.url) / f"{sid}.tar", dst / f"{sid}.tar")
    stats = json.loads((Path(src.url) / f"{sid}_stats.json").read_text())
    stats.pop("lineage", None)  # the metadata below is not what download wrote: readers hash the files
    (dst / f"{sid}_stats.json").write_text(json.dumps(stats))
    m = src.read_meta(sid)
    ok = m.index[m["status"].eq("success")][:12]
    m.loc[~m.index.isin(ok), "status"] = "failed_to_download"
    names = ["at the Louvre Museum in Paris", "by Annie Leibovitz", "seen from JY-AYA", "for Vogue Italia"]
    for i, name in zip(ok[:4], names):
        m.loc[i, "caption"] = f"{m.loc[i, 'caption']} {name}"
    fsio.write_parquet(str(dst / f"{sid}.parquet"), m)
    return dst


def few_recipe(work: Path, few: Path, models, describe: dict | None = None, **options) -> Pipeline:
    return Pipeline(workdir=str(work), engine={"progress": False}, download={"input": "unused", "output": str(few)},
                    clipscore={"model": str(models.clip)},
                    recaption={"pool_after": [], "describe": {"model": str(models.captioner), "batch_size": 8,
                                                                "decode_threads": 2, **(describe or {})}, **options})


def test_rule_based_fusion_keeps_injected_names(tmp_path, few, tiny_recaption, client):
    mine = tmp_path / "in" / "download"
    shutil.copytree(few, mine)
    # the accelerator's pipeline on CPU: batches prepared on the decode threads while the model
    # generates, the model and its inputs in bfloat16 (what `auto` picks on a GPU)
    pipe = few_recipe(tmp_path, mine, tiny_recaption, describe={"overlap_decode": True, "dtype": "bfloat16"})
    assert recaption.run(pipe, client=client).ok
    side = pd.read_parquet(next((tmp_path / "recaption").glob("0*.parquet")))
    done = side[side["status"].eq("success")].reset_index(drop=True)
    assert len(done) == 12 and side["status"].eq("skipped_not_downloaded").sum() == len(side) - 12
    for name in ("Louvre Museum", "Paris", "Annie Leibovitz", "JY-AYA", "Vogue Italia"):
        hit = done[done["synthetic_caption"].str.contains(name, regex=False)]
        assert len(hit) == 1, name
        row = hit.iloc[0]
        assert row["fusion"] == "rule" and row["synthetic_caption"].startswith(row["description"])
        assert name in row["entities"]
    assert (done["llm"].isna() & done["prompt_version"].eq("rule") & done["captioner"].eq(str(tiny_recaption.captioner))).all()
    assert done["captioner_revision"].str.match(r"^local:[0-9a-f]{16}$").all()

    # the input shard changes in place (another AltText names someone): redone, not "already done"
    meta_url = next(mine.glob("0*.parquet"))
    m = pd.read_parquet(meta_url)
    row = m.index[m["key"].eq(done["key"].iloc[-1])][0]
    m.loc[row, "caption"] = f"{m.loc[row, 'caption']} photographed by Dorothea Lange"
    m.to_parquet(meta_url)
    again = recaption.run(pipe, client=client)
    assert again.ok and list(again.redone) == list(again.done) and len(again.done) == 1
    side = pd.read_parquet(next((tmp_path / "recaption").glob("0*.parquet"))).set_index("key")
    assert "Dorothea Lange" in side.loc[done["key"].iloc[-1], "synthetic_caption"]


def test_llm_fusion_end_to_end_and_a_guard_falls_back(tmp_path, few, tiny_recaption, client):
    fuse = {"model": str(tiny_recaption.fuser), **TINY_FUSE}
    pipe = few_recipe(tmp_path, few, tiny_recaption, fuse=fuse)
    assert recaption.run(pipe, client=client).ok
    side = pd.read_parquet(next((tmp_path / "recaption").glob("0*.parquet")))
    alts = pd.read_parquet(next(few.glob("0*.parquet")))[["key", "caption"]]
    done = side[side["status"].eq("success")].merge(alts, on="key", validate="one_to_one")
    fusable = done[done["flags"].isna() | ~done["flags"].fillna("").str.startswith("alt_")]
    assert len(fusable) >= 8
    assert set(fusable["fusion"]) <= {"llm", "description"} and (fusable["fusion"] == "llm").mean() >= 0.5
    llm = fusable[fusable["fusion"] == "llm"]
    assert (llm["synthetic_caption"] != llm["caption"]).all()
    assert (done["llm"] == str(tiny_recaption.fuser)).all() and (done["prompt_version"] == TINY_FUSE_VERSION).all()
    assert done["llm_revision"].str.startswith("local:").all()
    print("\n" + "\n".join(f"  {a!r}\n  + {d!r}\n  = {s!r}" for a, d, s in
                           llm[["caption", "description", "synthetic_caption"]].head(3).itertuples(index=False)))

    # one new token cannot be a caption: every fusion falls back to the description, flagged `llm_empty`
    short = few_recipe(tmp_path, few, tiny_recaption, fuse={**fuse, "max_new_tokens": 1})
    with pytest.raises(ConfigError, match="rerun with --overwrite"):  # changed settings over finished shards
        recaption.run(short, client=client)
    report = recaption.run(short, client=client, overwrite=True)
    assert report.ok and len(report.done) == 1
    again = pd.read_parquet(next((tmp_path / "recaption").glob("0*.parquet"))).set_index("key")
    fell = again.loc[fusable["key"]]
    assert (fell["fusion"] == "description").all() and (fell["flags"] == "llm_empty").all()
    assert (fell["synthetic_caption"] == fell["description"]).all()
    assert "llm_empty" in report.summary()


# ---------------------------------------------------------------------------------------------
# resume after a real kill


def test_killed_mid_stage_resumes_without_loss_or_duplicates(tmp_path, downloaded, tiny_recaption, filtered):
    work = workdir(tmp_path, filtered)
    pipe = recipe(work, downloaded, tiny_recaption, target="fraction", fraction=0.25, pool_after=["filter"])
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(pipe.model_dump(mode="json", exclude_none=True)))
    out = work / "recaption"
    ids = ShardSet(downloaded.download.output).ids()
    proc = subprocess.Popen([sys.executable, "-m", "mmdata", "recaption", "-c", str(path), "--workers", "1"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not list(out.glob("*_stats.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its cluster and its worker, mid-stage
        proc.wait()
    done_at_kill = {p.name: p.read_bytes() for p in out.glob("*_stats.json")}
    assert 1 <= len(done_at_kill) < len(ids)

    r = cli("recaption", "-c", str(path), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert f"{len(ids) - len(done_at_kill)} shards done, {len(done_at_kill)} already done" in r.stdout
    for name, before in done_at_kill.items():  # finished shards were not redone
        assert (out / name).read_bytes() == before
    side = sidecars(pipe)
    assert side["key"].is_unique and sorted(side["key"]) == sorted(meta(downloaded)["key"])
    chosen = json.loads((out / "_selection.json").read_text())
    made = side["status"].isin(["success", "failed_description", "failed_to_decode", "failed_to_find_image"])
    assert made.sum() == chosen["selected"] == np.ceil(0.25 * chosen["pool"])
    assert side.loc[made, "status"].eq("success").mean() > 0.9



def test_bad_recipes_exit_2_in_one_line(tmp_path, downloaded, tiny_recaption):
    pipe = recipe(tmp_path, downloaded, tiny_recaption, target="uninformative", fraction=0.1, pool_after=[])
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(pipe.model_dump(mode="json", exclude_none=True)))
    r = cli("recaption", "-c", str(path))  # no filter sidecars in this workdir
    assert r.returncode == 2 and "run filter first" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("recaption", "-c", str(path), "--set", "recaption.target=all")
    assert r.returncode == 2 and "target all takes the whole pool" in r.stderr


# ---------------------------------------------------------------------------------------------
# into the training shards and the mixture


def test_training_shards_carry_vecap_captions_and_the_mixture_delivers_its_share(
        tmp_path, downloaded, tiny_recaption, filtered, client):
    from mmdata.mix import stats as mix_stats
    from mmdata.stages import clipscore, training_shards

    work = workdir(tmp_path, filtered)
    pipe = recipe(work, downloaded, tiny_recaption, pool_after=["filter", "clipscore"])
    pipe = Pipeline(**{**pipe.model_dump(), "shards": {"shard_samples": 64, "energon": False,
                                                        "captions": {"sidecars": ["filter", "clipscore", "recaption"]},
                                                        "interleaved": {"enabled": False},
                                                        "text": {"enabled": False}}})
    assert clipscore.run(pipe, client=client).ok
    report = recaption.run(pipe, client=client)
    assert report.ok and "CLIP: synthetic caption beats the AltText" in report.summary()
    assert training_shards.run(pipe, client=client).ok

    # the stage scored with the clipscore stage's model: the same AltText scores
    side = sidecars(pipe)
    cs = pd.concat([pd.read_parquet(p) for p in sorted((work / "clipscore").glob("0*.parquet"))])
    both = side.merge(cs[["key", "score"]], on="key")
    both = both[both["alt_score"].notna()]
    assert len(both) > 100 and np.allclose(both["alt_score"], both["score"], atol=2e-3)

    records = []
    for tar in sorted((work / "shards" / "captions").glob("*.tar")):
        records += [json.loads(s["json"]) for s in samples.read_shard(str(tar))]
    assert records and all(r["synthetic_caption"] for r in records)  # target all: every kept pair
    for r in records:
        info = r["recaption"]
        assert info["captioner"] == str(tiny_recaption.captioner) and info["captioner_revision"].startswith("local:")
        assert info["llm"] is None and info["prompt_version"] == "rule" and info["fusion"] in ("rule", "description")
        assert r["synthetic_caption"] != r["caption"] and not any(k.startswith("recaption.") for k in r["scores"])
    by_key = side.set_index("key")
    assert all(by_key.loc[r["key"], "synthetic_caption"] == r["synthetic_caption"] for r in records)

    mix = tmp_path / "mix.yaml"
    mix.write_text(json.dumps({"name": "vecap", "global_batch": 64, "lanes": 2, "sources": {"captions": {
        "shards": str(work / "shards" / "captions" / "manifest.json"), "weight": 1, "synthetic_share": 0.3}}}))
    st = mix_stats.run(mix, 12)
    row = st.rows()[0]
    share = row["synthetic"] / row["samples"]
    print(f"\nmix-stats: {row['synthetic']} of {row['samples']} caption samples used the VeCap caption ({share:.1%}, "
          "YAML 30%)")
    # one seeded coin per key, so repeats add no information: 4 standard errors over the distinct keys
    distinct = row["samples"] - row["repeats"]
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / distinct), (share, distinct)
