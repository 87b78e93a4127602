"""Tiny recaptioning models trained on the demo corpus on CPU, so that the `recaption` stage runs
offline on the same code path as a real VLM and a real chat LLM.

Both are saved with `save_pretrained` and load back through `from_pretrained`:

- a **captioner**: a LLaVA (`LlavaForConditionalGeneration`: a small CLIP-style vision tower at
  64 px, LLaVA's projector, a 2-layer Llama) with a `LlavaProcessor` and a chat template. It is
  prompted like a real VLM (VeCap's "Describe the image concisely, less than 20 words.") and
  learns, end to end, each image's visible content from the corpus' truth: count, colour, shape,
  texture, background, and that there is a sign. It cannot read the sign, as a real captioner
  misses names: that is what fusion is for. Training reports its accuracy per attribute on
  held-out images.
- a **fusion LM** (optional): a 2-layer `LlamaForCausalLM` with the same byte-level BPE tokenizer
  and chat template, prompted with a short template (`TINY_FUSE_PROMPT`). It learns to copy the
  description and add the sign's word when the AltText names it. Copying is hard for so small a
  model in so few steps: it exercises the LLM path (tests); its captions are not good ones.

Targets come from the corpus' known truth (`truth.parquet`), never from the noisy AltText alone.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmdata.demo import built
from mmdata.memory import keep_freed_memory

log = logging.getLogger(__name__)

VECAP_PROMPT = "Describe the image concisely, less than 20 words."
# ids 0..6, in this order
SPECIALS = ("<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<image>")
# A minimal chat template in the shape real ones have: roles, an image placeholder inside a user
# turn's content list, an end-of-turn token that is also the model's EOS.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>"
    "{% elif m['role'] == 'user' %}<|user|>"
    "{% else %}<|assistant|>{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinyRecaptionConfig:
    image_size: int = 64
    patch_size: int = 16  # 16 image tokens
    vision_width: int = 96
    vision_layers: int = 2
    text_width: int = 96
    text_layers: int = 2
    heads: int = 4
    vocab_size: int = 600
    captioner_steps: int = 300
    fuser_steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    # scenes rendered by the corpus' own generator beside the corpus' images: 400 photos are too few
    # for a ViT to learn eight shapes from scratch; the held-out check stays on corpus images
    rendered: int = 2000
    # a pretrained tiny CLIP vision tower (mmdata.demo.tiny_vision's folder) to start from, kept frozen:
    # its size replaces the one above. Trained from scratch in the captioner's minute, a tower learns
    # colours but not shapes (docs/recaption.md)
    vision: str | None = None
    threads: int | None = None  # torch threads while training (None: torch's default)
    progress: bool = False  # a bar over the steps (the demo) instead of a line every 50
    seed: int = 0


# The tiny fusion LM's prompt: short, so that it trains in seconds. Real chat LLMs get the recipe's
# default (config.FUSE_PROMPT); recipes that use this model name this template and its version.
TINY_FUSE_PROMPT = "AltText: {alttext}\nDescription: {description}\nMerge them into one caption."
TINY_FUSE_VERSION = "tiny-fuse-v1"


# ---------------------------------------------------------------------------------------------
# what the models learn


def describe(c) -> str:
    """What a captioner can see of a concept: its true caption, the sign's word left out ("with a sign")."""
    from mmdata.demo.images import Concept, true_caption

    text = true_caption(Concept(c.shape, c.colour, c.count, c.background, c.texture, None))
    return text + (" with a sign" if c.word else "")


def fuse_target(description: str, word: str | None, alttext: str | None) -> str:
    """The fusion target: the description as given, plus the sign's word when the AltText names it."""
    if word and alttext and description.endswith(" with a sign") and re.search(rf"\b{re.escape(word)}\b", alttext):
        return f"{description} that says {word}"
    return description


def accuracy(descriptions: list[str], concepts: list) -> dict[str, float]:
    """Share of descriptions that name each attribute of their concept right (and the whole of it)."""
    from mmdata.demo.images import COUNT_WORDS

    def says(text: str, c) -> dict[str, bool]:
        t = f" {text.strip().lower()} "
        subject = t.split(" on ")[0] + " "
        return {"colour": f" {c.colour} " in subject, "shape": re.search(rf" {c.shape}(e?s)? ", subject) is not None,
                "count": t.startswith(f" {COUNT_WORDS[c.count]} "), "background": f" {c.background} background" in t,
                "exact": text.strip() == describe(c)}

    rows = [says(d, c) for d, c in zip(descriptions, concepts)]
    return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in ("colour", "shape", "count", "background", "exact")}


def concept(row: dict):
    from mmdata.demo.images import Concept

    word = row["word"] if isinstance(row.get("word"), str) else None
    return Concept(row["shape"], row["colour"], int(row["count"]), row["background"], row["texture"], word)


def load_truth(corpus_dir: str | Path) -> pd.DataFrame:
    """Served images of the demo corpus with their truth rows (concept columns, AltText, file)."""
    pairs = Path(corpus_dir) / "pairs"
    truth = pd.read_parquet(pairs / "truth.parquet")
    truth = truth[truth["file"].notna()].reset_index(drop=True)
    truth = truth[[(pairs / f).is_file() for f in truth["file"]]].reset_index(drop=True)
    if truth.empty:
        raise FileNotFoundError(f"{pairs}: no images of truth.parquet found (is this a demo corpus?)")
    return truth


# ---------------------------------------------------------------------------------------------
# tokenizer, processor, models


def build_tokenizer(texts: list[str], vocab_size: int):
    """A cased byte-level BPE (names keep their case) with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|end|>",
        additional_special_tokens=list(SPECIALS[3:]), model_max_length=512, padding_side="left",
    )
    out.chat_template = CHAT_TEMPLATE
    return out


def build_processor(tokenizer, cfg: TinyRecaptionConfig):
    from transformers import LlavaProcessor

    try:  # transformers 5: the PIL backend (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as Images
    except ImportError:
        from transformers import CLIPImageProcessor as Images
    images = Images(size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def _llama(cfg: TinyRecaptionConfig, tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "hidden_size": cfg.text_width, "intermediate_size": 2 * cfg.text_width,
            "num_hidden_layers": cfg.text_layers, "num_attention_heads": cfg.heads,
            "num_key_value_heads": cfg.heads, "max_position_embeddings": 256, "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None, "tie_word_embeddings": True}


def build_captioner(cfg: TinyRecaptionConfig, tokenizer):
    """A LLaVA: a small CLIP vision tower, LLaVA's projector, a 2-layer Llama."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    pretrained = None
    if cfg.vision:
        from transformers import CLIPVisionModel

        pretrained = CLIPVisionModel.from_pretrained(cfg.vision)
        tower = pretrained.config
    else:
        tower = CLIPVisionConfig(hidden_size=cfg.vision_width, intermediate_size=2 * cfg.vision_width,
                                 num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.heads,
                                 image_size=cfg.image_size, patch_size=cfg.patch_size)
    config = LlavaConfig(vision_config=tower, text_config=LlamaConfig(**_llama(cfg, tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(tower.image_size // tower.patch_size) ** 2,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlavaForConditionalGeneration(config)
    if pretrained is not None:
        vision = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
        vision.load_state_dict(pretrained.state_dict())
        vision.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_fuser(cfg: TinyRecaptionConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**_llama(cfg, tokenizer)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# ---------------------------------------------------------------------------------------------
# training


def _chat(prompt_messages: list[dict], tokenizer) -> str:
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)


def _sequences(prompts: list[list[int]], targets: list[str], tokenizer):
    """Right-padded (input_ids, attention_mask, labels): loss only on the target and its end token."""
    import torch

    ends = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    width = max(len(p) + len(e) for p, e in zip(prompts, ends))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), -100, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, (p, e) in enumerate(zip(prompts, ends)):
        ids[i, : len(p) + len(e)] = torch.tensor(p + e)
        labels[i, len(p) : len(p) + len(e)] = torch.tensor(e)
        mask[i, : len(p) + len(e)] = 1
    return ids, mask, labels


def _fit(model, steps: int, lr: float, batches, echo, name: str, t0: float, progress: bool) -> None:
    import torch

    from mmdata.demo.tiny_clip import steps_bar

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = steps_bar(name, steps, progress)
    for step in range(steps):
        loss = model(**batches(step)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        elif step % 50 == 0 or step == steps - 1:
            echo(f"{name}: step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    if bar is not None:
        bar.close()
        echo(f"{name}: {steps} steps, loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()


def train(corpus_dir: str | Path, captioner_dir: str | Path, fuser_dir: str | Path | None = None,
          cfg: TinyRecaptionConfig = TinyRecaptionConfig(), echo=log.info) -> tuple[Path, Path | None]:
    """Train the captioner (and the fusion LM when `fuser_dir` is given) on `corpus_dir`, a demo corpus;
    save_pretrained each; returns the folders. The captioner's accuracy per attribute on held-out
    images is reported through `echo`."""
    import dataclasses

    import torch
    from transformers.utils import logging as hf_logging

    from mmdata.config import FuseConfig
    from mmdata.demo.images import random_concept

    hf_logging.disable_progress_bar()
    keep_freed_memory()
    stamp = recipe(corpus_dir, cfg)
    if cfg.vision:  # the processor and the image tokens follow the pretrained tower's geometry
        from transformers import CLIPVisionConfig

        tower = CLIPVisionConfig.from_pretrained(cfg.vision)
        cfg = dataclasses.replace(cfg, image_size=tower.image_size, patch_size=tower.patch_size)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    truth = load_truth(corpus_dir)
    concepts = [concept(r) for r in truth.to_dict("records")]
    descriptions = [describe(c) for c in concepts]
    alts = [c if isinstance(c, str) else "" for c in truth["caption"]]
    # The fusion LM sees each AltText with the true description and with two wrong ones (captioners
    # err): the target always follows the description (the image), so it learns to copy it and to add
    # the sign's word when the AltText names it, never to take shapes or colours from the AltText.
    f_desc, f_alt = [], []
    for c, d, alt in zip(concepts, descriptions, alts):
        wrong = [describe(dataclasses.replace(random_concept(rng), word=c.word)) for _ in range(2)]
        f_desc += [d, *wrong]
        f_alt += [alt] * 3
    f_target = [fuse_target(d, c.word, a) for d, c, a in zip(f_desc, np.repeat(concepts, 3), f_alt)]
    fuse_cfg = FuseConfig(system=None, prompt=TINY_FUSE_PROMPT, prompt_version=TINY_FUSE_VERSION)
    tokenizer = build_tokenizer(f_desc + f_target + alts + [TINY_FUSE_PROMPT, VECAP_PROMPT], cfg.vocab_size)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, corpus_dir, truth, captioner_dir, fuser_dir, echo, t0, rng, tokenizer, concepts,
                      descriptions, f_alt, f_desc, f_target, fuse_cfg, stamp)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, corpus_dir, truth, captioner_dir, fuser_dir, echo, t0, rng, tokenizer, concepts, descriptions, f_alt, f_desc,
           f_target, fuse_cfg, stamp):
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from mmdata.demo.images import random_concept, render
    from mmdata.images import open_rgb
    from mmdata.models.clip import Preprocess
    from mmdata.models.fuse import render_prompt


    # captioner: image + VeCap prompt -> description, end to end (the vision tower is tuned too)
    processor = build_processor(tokenizer, cfg)
    captioner = build_captioner(cfg, tokenizer)
    prep = Preprocess.from_processor(processor.image_processor)
    pairs = Path(corpus_dir) / "pairs"
    with ThreadPoolExecutor(4) as pool:
        images = np.stack(list(pool.map(lambda f: prep(open_rgb((pairs / f).read_bytes())), truth["file"])))
    extra = [random_concept(rng) for _ in range(cfg.rendered)]
    sizes = rng.integers(prep.shape[0], 2 * prep.shape[0], (cfg.rendered, 2))  # drawn small: cheap, then as served
    drawn = [prep(render(c, int(w), int(h), rng)) for c, (w, h) in zip(extra, sizes)]
    pixels = prep.pixels(torch.from_numpy(np.stack([*images, *drawn])), torch.float32)
    echo(f"tiny-recaption: {len(concepts)} corpus images and {len(extra)} rendered scenes, vocab {len(tokenizer)}, "
         f"prepared in {time.time() - t0:.1f}s")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": VECAP_PROMPT}]}]
    prompt_ids = processor(images=[images[0]], text=[_chat(messages, tokenizer)], return_tensors="pt")["input_ids"][0]
    said_right = descriptions + [describe(c) for c in extra]
    cap_ids, cap_mask, cap_labels = _sequences([prompt_ids.tolist()] * len(said_right), said_right, tokenizer)
    # a tenth of the corpus' images (at most 200) are held out: the accuracy reported is on images it never saw
    order = rng.permutation(len(concepts))
    held = order[: min(200, max(1, len(order) // 10))]
    train_idx = np.concatenate([order[len(held) :], np.arange(len(concepts), len(said_right))])
    n = len(train_idx)
    bs = min(cfg.batch_size, n)

    def caption_batch(step: int) -> dict:
        idx = torch.from_numpy(train_idx[rng.choice(n, bs, replace=False)])
        flip = torch.from_numpy(rng.random(bs) < 0.5)  # a mirrored scene has the same description
        x = torch.where(flip.view(-1, 1, 1, 1), pixels[idx].flip(-1), pixels[idx])
        return {"input_ids": cap_ids[idx], "attention_mask": cap_mask[idx], "labels": cap_labels[idx],
                "pixel_values": x}

    _fit(captioner, cfg.captioner_steps, cfg.lr, caption_batch, echo, "tiny-captioner", t0, cfg.progress)
    said = []
    with torch.inference_mode():
        for i in range(0, len(held), 64):
            part = torch.from_numpy(held[i : i + 64])
            out = captioner.generate(input_ids=cap_ids[part, : len(prompt_ids)], pixel_values=pixels[part],
                                     max_new_tokens=32, do_sample=False)
            said += tokenizer.batch_decode(out[:, len(prompt_ids) :], skip_special_tokens=True)
    right = accuracy(said, [concepts[i] for i in held])
    echo("tiny-captioner: on held-out images, right " + ", ".join(f"{k} {v:.0%}" for k, v in right.items()))
    captioner_dir = built.save(captioner_dir, (captioner, processor), stamp, {"held_out": right})
    del captioner
    if fuser_dir is None:
        return captioner_dir, None

    # fusion LM: chat(AltText, description) -> fused caption
    fuse_ids = [tokenizer(_chat(render_prompt(fuse_cfg, a, d), tokenizer), add_special_tokens=False)["input_ids"]
                for a, d in zip(f_alt, f_desc)]
    f_ids, f_mask, f_labels = _sequences(fuse_ids, f_target, tokenizer)
    fuser = build_fuser(cfg, tokenizer)
    m = len(f_ids)

    def fuse_batch(step: int) -> dict:
        idx = torch.from_numpy(rng.choice(m, bs, replace=False))
        width = int(f_mask[idx].sum(1).max())
        return {"input_ids": f_ids[idx, :width], "attention_mask": f_mask[idx, :width],
                "labels": f_labels[idx, :width]}

    _fit(fuser, cfg.fuser_steps, cfg.lr, fuse_batch, echo, "tiny-fuser", t0, cfg.progress)
    return captioner_dir, built.save(fuser_dir, (fuser, tokenizer), stamp)


def recipe(corpus_dir: str | Path, cfg: TinyRecaptionConfig) -> dict:
    """What the weights depend on (built.json's recipe): the settings but the pace knobs, the corpus, and
    the tower it starts from (that tower's own recipe: the same folder rebuilt otherwise is another tower)."""
    got = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "threads")}
    if cfg.vision:
        got["vision"] = built.recipe_of(cfg.vision) or str(Path(cfg.vision).resolve())
    return {"model": "tiny-recaption", **got, "corpus": built.corpus_id(corpus_dir)}


def ensure_tiny_recaption(corpus_dir: str | Path, captioner_dir: str | Path, fuser_dir: str | Path | None = None,
                          cfg: TinyRecaptionConfig = TinyRecaptionConfig(), echo=log.info) -> tuple[str, str | None]:
    """The tiny captioner (and fusion LM) at those folders, trained on `corpus_dir` first unless they are
    there, built from this corpus, these settings and this tower (`mmdata.demo.built`)."""
    built.ensure([captioner_dir, fuser_dir], recipe(corpus_dir, cfg),
                 lambda: train(corpus_dir, captioner_dir, fuser_dir, cfg, echo), "tiny captioner", echo)
    return str(captioner_dir), (str(fuser_dir) if fuser_dir else None)
