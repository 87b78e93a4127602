"""The demo's tiny models (CLIP, captioner + fusion LM, the MM1's tower) are built once and reused
only with the recipe they were built from (`mmdata.demo.built`): a changed setting, corpus or tower
builds them again and says so; a pace knob (progress bar, threads) does not. Toy-sized builds."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from mmdata.demo import built
from mmdata.demo import tiny_vision as tv
from mmdata.demo.tiny_clip import TinyClipConfig, ensure_tiny_clip
from mmdata.demo.tiny_recaption import TinyRecaptionConfig, ensure_tiny_recaption
from mmdata.mm1.config import VisionPretraining


def stamps(*folders: Path) -> list[int]:
    return [(f / "model.safetensors").stat().st_mtime_ns for f in folders]


def rebuilt(said: list[str], name: str, folder: Path) -> bool:
    return any(line == f"{name} {folder}: built with another recipe (or unfinished); building again" for line in said)


def test_the_captioner_is_rebuilt_when_its_settings_corpus_or_tower_change(demo_corpus, tmp_path):
    tower, cap, fus = tmp_path / "tower", tmp_path / "captioner", tmp_path / "fuser"
    tv.ensure(tower, VisionPretraining(images=64, steps=2))
    cfg = TinyRecaptionConfig(captioner_steps=1, fuser_steps=1, rendered=16, vision=str(tower))
    said: list[str] = []

    def ensure(c: TinyRecaptionConfig, corpus: Path = demo_corpus) -> None:
        said.clear()
        assert ensure_tiny_recaption(corpus, cap, fus, c, echo=said.append) == (str(cap), str(fus))

    ensure(cfg)
    recipe = built.recipe_of(cap)
    assert recipe == built.recipe_of(fus) and recipe["vision"] == built.recipe_of(tower)
    assert recipe["captioner_steps"] == 1 and recipe["corpus"] == built.corpus_id(demo_corpus)
    first = stamps(cap, fus)
    ensure(dataclasses.replace(cfg, progress=True, threads=1))  # pace knobs: reused as it is
    assert stamps(cap, fus) == first and not said

    ensure(dataclasses.replace(cfg, captioner_steps=2))  # a setting
    assert rebuilt(said, "tiny captioner", cap) and stamps(cap, fus) != first
    assert built.recipe_of(cap)["captioner_steps"] == 2

    cfg = dataclasses.replace(cfg, captioner_steps=2)
    tv.ensure(tower, VisionPretraining(images=64, steps=3))  # the tower it starts from, built again
    before = stamps(cap, fus)
    ensure(cfg)
    assert rebuilt(said, "tiny captioner", cap) and stamps(cap, fus) != before

    shutil.rmtree(fus)  # one of the two missing (a build cut short): both again
    ensure(cfg)
    assert rebuilt(said, "tiny captioner", cap) and (fus / "config.json").is_file()


def test_the_tiny_clip_is_rebuilt_for_another_corpus_or_settings(demo_corpus, tmp_path):
    clip, other = tmp_path / "clip", tmp_path / "corpus"
    said: list[str] = []
    cfg = TinyClipConfig(steps=2)
    ensure_tiny_clip(demo_corpus, clip, cfg, echo=said.append)
    first = stamps(clip)
    assert not rebuilt(said, "tiny CLIP", clip) and built.recipe_of(clip)["corpus"] == built.corpus_id(demo_corpus)
    said.clear()
    ensure_tiny_clip(demo_corpus, clip, dataclasses.replace(cfg, progress=True), echo=said.append)
    assert stamps(clip) == first and not said
    ensure_tiny_clip(demo_corpus, clip, dataclasses.replace(cfg, steps=3), echo=said.append)
    assert rebuilt(said, "tiny CLIP", clip) and built.recipe_of(clip)["steps"] == 3

    # the same files under another corpus manifest (another seed or size): another corpus
    shutil.copytree(demo_corpus / "pairs", other / "pairs")
    manifest = json.loads((demo_corpus / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "seed": 1}))
    said.clear()
    ensure_tiny_clip(other, clip, dataclasses.replace(cfg, steps=3), echo=said.append)
    assert rebuilt(said, "tiny CLIP", clip) and built.recipe_of(clip)["corpus"] == built.corpus_id(other)


def test_a_folder_from_before_the_stamp_is_built_again(demo_corpus, tmp_path):
    clip = tmp_path / "clip"
    ensure_tiny_clip(demo_corpus, clip, TinyClipConfig(steps=2))
    (clip / built.STAMP).unlink()  # weights without a recipe: an older or unfinished build
    said: list[str] = []
    ensure_tiny_clip(demo_corpus, clip, TinyClipConfig(steps=2), echo=said.append)
    assert rebuilt(said, "tiny CLIP", clip) and built.recipe_of(clip) is not None
