"""The MM1 model parts through their public entry points: connectors, packing (document mask,
positions, targets), the loss, image normalisation, generation and save/load, the optimiser set-up.
Random tiny models; the training runs are in test_mm1_train.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mmdata.config import ConfigError, parse
from mmdata.mm1 import MM1, ImageSpec
from mmdata.mm1.config import ConnectorConfig, ModelConfig, TrainRecipe
from mmdata.mm1.connector import build_connector
from mmdata.mm1.pack import IGNORE, Packer
from mmdata.mm1.tokenizer import train_bpe
from mmdata.mm1.train import lr_lambda, mm1_lr, param_groups

TEXTS = ["one red circle on a striped blue background", "two green squares over grainy white",
         "The exhibition is open every day except Monday, and entry is free for students.",
         "Photo of three yellow stars against a black dotted backdrop"] * 20
SIZE, Q, T = 32, 4, 224


def tiny_config(**connector) -> ModelConfig:
    return ModelConfig.model_validate({
        "encoder": {"config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": SIZE, "patch_size": 8}},
        "connector": {"type": "c-abstractor", "tokens": Q, "depth": 1, "hidden": 32, **connector},
        "decoder": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256},
                    "tokenizer": "unused: the test passes one"},
    })


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, 300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return MM1(tiny_config(), tok, ImageSpec(size=SIZE)).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))


# -- connectors


@pytest.mark.parametrize("kind,tokens", [("c-abstractor", 4), ("c-abstractor", 9), ("c-abstractor", 16),
                                         ("avgpool", 1), ("avgpool", 16), ("attnpool", 5), ("attnpool", 64)])
def test_each_connector_gives_the_requested_token_count(kind, tokens):
    cfg = ConnectorConfig(type=kind, tokens=tokens, depth=2, hidden=48, heads=4)
    conn = build_connector(cfg, patches=36, width=40, out=24)
    out = conn(torch.randn(3, 36, 40))
    assert out.shape == (3, tokens, 24)
    assert torch.isfinite(out).all()


def test_c_abstractor_without_blocks_is_average_pooling_plus_the_mlp():
    torch.manual_seed(1)
    x = torch.randn(2, 64, 40)  # an 8x8 patch grid
    for cfg in (ConnectorConfig(type="c-abstractor", tokens=16, depth=0, pos_emb=False),
                ConnectorConfig(type="avgpool", tokens=16)):
        conn = build_connector(cfg, patches=64, width=40, out=24)
        assert conn.pos_emb is None and len(conn.s1) == len(conn.s2) == 0
        grid = x.transpose(1, 2).reshape(2, 40, 8, 8)
        pooled = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # 8x8 -> 4x4: 2x2 means
        lin1, lin2 = conn.readout[0], conn.readout[2]
        expected = lin2(F.silu(lin1(pooled)))
        torch.testing.assert_close(conn(x), expected, rtol=1e-5, atol=1e-6)
    # with its blocks it is something else: the stages are there and change the output
    full = build_connector(ConnectorConfig(type="c-abstractor", tokens=16, depth=3, hidden=32), 64, 40, 24)
    assert len(full.s1) == 3 and len(full.s2) == 3 and full.pos_emb.shape == (1, 64, 40)


def test_connector_token_count_must_be_square_for_pooling():
    with pytest.raises(ConfigError, match="tokens=10: c-abstractor pools to a square grid"):
        parse(ModelConfig, {**tiny_config().model_dump(), "connector": {"tokens": 10}}, "recipe.yaml")
    ConnectorConfig(type="attnpool", tokens=10)  # learned queries: any count


# -- packing


def batch_of(slots: list[list], n_images: int) -> dict:
    return {"slots": slots, "images": pixels(n_images), "sources": ["s"] * len(slots), "epoch": 0, "batch": 0}


SAMPLES = [[0, "one red circle on a striped blue background"],
           ["The exhibition is open every day except Monday, and entry is free for students."],
           ["Visitors often stop", 1, "two green squares over grainy white", 2, "and ask how long it took."],
           [3, "Photo of three yellow stars against a black dotted backdrop"]]


def test_a_packed_sample_has_the_logits_it_has_alone(model):
    packer = Packer(model.codec, seq_len=T, max_images=4)
    packed = packer(batch_of(SAMPLES, 4))
    assert packed["input_ids"].shape[0] == 1  # all four samples share one sequence
    seg = packed["segments"][0]
    logits = model(packed["input_ids"], packed["position_ids"], packed["targets"], packed["pixels"], return_logits=True)
    for sample in SAMPLES:
        rows = [x for x in sample if isinstance(x, int)]
        own = [rows.index(x) if isinstance(x, int) else x for x in sample]
        alone = packer({**batch_of([own], 0), "images": pixels(4)[torch.tensor(rows, dtype=torch.int64)]})
        n = int((alone["segments"][0] >= 0).sum())
        ids = alone["input_ids"][0, :n].tolist()
        k = next(k for k in range(4) if packed["input_ids"][0, seg == k].tolist() == ids)
        at = (seg == k).nonzero().flatten()
        assert packed["position_ids"][0, at].tolist() == list(range(n))
        solo = model(alone["input_ids"], alone["position_ids"], alone["targets"], alone["pixels"], return_logits=True)
        torch.testing.assert_close(logits[0, at], solo[0, :n], rtol=1e-4, atol=1e-5)
    # what the positions do matters: with continuous ones (nanoVLM's packing) later samples see earlier ones
    leaky = model(packed["input_ids"], torch.arange(T).unsqueeze(0), packed["targets"], packed["pixels"],
                  return_logits=True)
    first, later = (seg == 0).nonzero().flatten(), (seg > 0).nonzero().flatten()
    torch.testing.assert_close(leaky[0, first], logits[0, first], rtol=1e-4, atol=1e-5)
    assert (leaky[0, later] - logits[0, later]).abs().max() > 1e-3


def test_targets_are_text_of_the_same_document_only(model):
    packer = Packer(model.codec, seq_len=T, max_images=4)
    p = packer(batch_of(SAMPLES, 4))
    ids, tgt, seg = p["input_ids"][0], p["targets"][0], p["segments"][0]
    image_id = model.codec.image_id
    for t in range(T - 1):
        if tgt[t] != IGNORE:
            assert seg[t] == seg[t + 1] >= 0 and tgt[t] == ids[t + 1] != image_id
        elif seg[t] >= 0 and seg[t] == seg[t + 1]:
            assert ids[t + 1] == image_id  # the only tokens of a document not predicted are its images
    # every text token and EOS is a target exactly once; BOS, images and padding never
    n_text = sum(len(model.codec.encode(s).ids) - 1 - Q * sum(isinstance(x, int) for x in s) for s in SAMPLES)
    assert int((tgt != IGNORE).sum()) == n_text == p["pack"]["targets"]
    assert p["n_images"].tolist() == [4] and p["pixels"].dtype == torch.uint8


def test_long_samples_are_split_never_inside_an_image_and_within_the_image_budget(model):
    text = [f"{TEXTS[i % 4]} Part {i}: {TEXTS[(i + 1) % 4]}" for i in range(5)]  # no two pieces alike
    doc = [text[0], 0, text[1], 1, text[2], 2, text[3], 3, text[4]]
    packer = Packer(model.codec, seq_len=64, max_images=2)
    p = packer(batch_of([doc], 4))
    enc = model.codec.encode(doc)
    assert p["pack"]["split_samples"] == 1 and p["pack"]["pieces"] > 1
    assert (p["n_images"] <= 2).all() and int(p["n_images"].sum()) == 4  # every image kept, in order
    torch.testing.assert_close(p["pixels"], pixels(4))
    # the pieces, in order, are the sample's tokens: nothing lost, nothing repeated
    pieces = []
    for row in range(p["input_ids"].shape[0]):
        for k in p["segments"][row].unique().tolist():
            if k >= 0:
                at = (p["segments"][row] == k).nonzero().flatten()
                ids = p["input_ids"][row, at].tolist()
                assert len(ids) <= 64 and p["position_ids"][row, at].tolist() == list(range(len(at)))
                pieces.append(ids)
    joined = sorted(pieces, key=lambda ids: _find(enc.ids, ids))
    assert [t for piece in joined for t in piece] == enc.ids
    for piece in joined:  # image runs whole
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, np.equal(piece, model.codec.image_id), 0])))
        assert all(r % Q == 0 for r in runs[::2])
    truncated = Packer(model.codec, seq_len=64, max_images=2, long="truncate")(batch_of([doc], 4))
    assert truncated["pack"]["pieces"] == 1 and truncated["input_ids"].shape[0] == 1


def _find(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise AssertionError("piece not in the sample")


def test_a_sequence_without_targets_adds_zero_loss_not_nan(model):
    model.train()
    ids = torch.full((2, 16), model.codec.pad)
    pos = torch.arange(16).repeat(2, 1)
    out = model(ids, pos, torch.full((2, 16), IGNORE), pixels(0))
    assert out["targets"] == 0 and out["loss_sum"].item() == 0.0
    out["loss_sum"].backward()  # every trainable parameter is reached (DDP / FSDP need that), with zero gradient
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.zero_grad(set_to_none=True)
    model.eval()


def test_uint8_pixels_are_normalised_on_the_device_like_float_batches(model):
    packer = Packer(model.codec, seq_len=T, max_images=4)
    p = packer(batch_of(SAMPLES, 4))
    spec = model.image
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    floats = (p["pixels"].float() / 255 - mean) / std  # what today's mixture decoder hands over
    a = model(p["input_ids"], p["position_ids"], p["targets"], p["pixels"])
    b = model(p["input_ids"], p["position_ids"], p["targets"], floats)
    torch.testing.assert_close(a["loss_sum"], b["loss_sum"])
    assert a["targets"] == p["pack"]["targets"]
    assert math.isfinite(a["loss_sum"].item() / int(a["targets"]))


def test_generate_interleaved_prompts_and_save_load_round_trip(model, tmp_path):
    from PIL import Image

    img = Image.new("RGB", (50, 40), (200, 30, 30))
    prompts = [[img], [pixels(1)[0], "Photo of", pixels(1, 5)[0], "Output:"], ["one red"]]
    out = model.generate(prompts, max_new_tokens=6)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert model.generate(prompts[:1], max_new_tokens=6) == out[:1]  # left padding does not change a prompt's answer
    model.save_pretrained(str(tmp_path / "m"))
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"encoder", "decoder", "connector.safetensors", "mm1.json"}
    again = MM1.from_pretrained(str(tmp_path / "m"))
    assert again.generate(prompts, max_new_tokens=6) == out
    with pytest.raises(ValueError, match="not 32 px"):
        model.generate([[torch.zeros(3, 20, 20, dtype=torch.uint8)]])


def test_learning_rates_per_part_freezing_and_the_schedule(tok):
    base = {"name": "t", "out": "unused", "mixture": "unused.yaml", "model": tiny_config().model_dump(),
            "train": {"steps": 100}}
    recipe = TrainRecipe.model_validate({**base, "optim": {"lr": "mm1", "connector_lr": 1e-3}})
    model = MM1(recipe.model, tok, ImageSpec(size=SIZE), check_packing=False)
    groups, lrs = param_groups(model, recipe)
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    assert lrs["decoder"] == lrs["encoder"] == pytest.approx(math.exp(-0.4214 * math.log(n_dec) - 0.5535))
    assert lrs["connector"] == 1e-3
    assert mm1_lr(1.2e9) == pytest.approx(8.6e-5, rel=0.02)  # MM1's 1.2B ablation model
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}  # MM1's decay; none on biases and norms
    assert all(p.ndim < 2 for g in groups if g["weight_decay"] == 0 for p in g["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())

    frozen = TrainRecipe.model_validate({**base, "model": {**base["model"], "encoder": {
        **base["model"]["encoder"], "freeze": True}}, "optim": {"lr": 1e-3}})
    model = MM1(frozen.model, tok, ImageSpec(size=SIZE), check_packing=False)
    groups, lrs = param_groups(model, frozen)
    assert set(lrs) == {"connector", "decoder"}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert model.counts()["encoder"]["trainable"] == 0 < model.counts()["encoder"]["frozen"]

    sched = [lr_lambda(s, 10, 100, 0.1) for s in range(100)]
    assert sched[0] == pytest.approx(0.1) and sched[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(sched[10:]))
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_encoder_any_clip_or_siglip_tower_from_a_path_or_a_config(tmp_path):
    from transformers import CLIPConfig, CLIPModel, SiglipVisionConfig, SiglipVisionModel

    from mmdata.mm1.config import EncoderConfig
    from mmdata.mm1.encoder import ImageEncoder

    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
              "image_size": 32, "patch_size": 8}
    clip = CLIPModel(CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                             "num_hidden_layers": 1, "vocab_size": 99}, vision_config=vision))
    clip.save_pretrained(tmp_path / "clip")  # a full image-text checkpoint, as on the hub
    x = torch.randn(2, 3, 32, 32)
    full = clip.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
    for layer in (-1, -2):
        enc = ImageEncoder(EncoderConfig(model=str(tmp_path / "clip"), feature_layer=layer))
        assert len(getattr(enc.tower, "vision_model", enc.tower).encoder.layers) == 3 + 1 + layer
        torch.testing.assert_close(enc(x), full[layer][:, 1:])  # patch tokens, class token dropped
    # a larger resolution: position embeddings interpolated, more patches
    assert enc(torch.randn(1, 3, 48, 48)).shape == (1, 36, 32)

    sig = SiglipVisionModel(SiglipVisionConfig(**vision))
    sig.save_pretrained(tmp_path / "siglip")
    enc = ImageEncoder(EncoderConfig(model=str(tmp_path / "siglip")))
    torch.testing.assert_close(enc(x), sig(pixel_values=x).last_hidden_state)  # SigLIP: no class token, final LN
    assert ImageEncoder(EncoderConfig(config={"model_type": "siglip_vision_model", **vision}))(x).shape == (2, 16, 32)
    with pytest.raises(ValueError, match="feature_layer -5: the encoder has 3 layers"):
        ImageEncoder(EncoderConfig(config={"model_type": "clip_vision_model", **vision}, feature_layer=-5))


def test_production_recipes_name_hub_models_and_mm1_settings():
    from pathlib import Path

    from mmdata.mm1.train import load_recipe, mixture_of

    root = Path(__file__).resolve().parent.parent
    for name in ("mm1-ablation", "mm1-3b", "mm1-7b"):
        r = load_recipe(root / "pipelines" / f"{name}.yaml")
        mix = mixture_of(r)
        assert "/" in r.model.encoder.model and "/" in r.model.decoder.model  # hub ids
        assert r.model.connector.type == "c-abstractor" and r.model.connector.tokens == 144
        assert r.data.seq_len == 4096 and (r.data.max_images or mix.decode.max_images) == 16
        assert mix.global_batch == 512 and {k: s.weight for k, s in mix.sources.items()} == {
            "captions": 45, "interleaved": 45, "text": 10}
        assert r.optim.lr == "mm1" and r.optim.min_lr_ratio == 0.1 and r.optim.warmup_steps == 2000
        assert not any(getattr(r.model, p).freeze for p in ("encoder", "connector", "decoder"))
    assert mixture_of(load_recipe(root / "pipelines" / "mm1-ablation.yaml")).decode.image_size == 336
