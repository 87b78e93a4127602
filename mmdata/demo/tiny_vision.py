"""A tiny pretrained image encoder for the demo's world: a CLIP ViT (`CLIPVisionModel`) trained in
about a minute on CPU to see what the demo's pictures show, saved with `save_pretrained` (weights,
config, image processor) and loaded by the tiny MM1 through the encoder's `from_pretrained` path.

MM1 starts from a pretrained image encoder; the tiny MM1 cannot download one, and a ViT trained
from scratch on a few hundred corpus captions learns colours but never which shape is drawn
(docs/trainer.md, "What the tiny model learns"). So the encoder is pretrained first, on scenes
rendered by the demo's own generator (`mmdata.demo.images`: fresh concepts and placements, never
the probe's seeds), with supervised heads:

- on the class token: the shape, its colour, the background colour and the count;
- on every patch token: which shape covers that patch (or none), and the colour under it (the
  shape's or the background's), so the patch tokens, which are what MM1's connector reads, carry
  both.

Colours are learned in a few hundred steps, shapes slowly (docs/trainer.md, "What the tiny model
learns"), so the class token's colour, background and count losses are weighted down
(`attribute_weight`) and the scenes are turned by multiples of 90 degrees and mirrored (the same
shapes, eight times the pictures).

A share of the scenes is easy (one shape on a plain background, no sign), a curriculum that gets
the shape features started. The held-out accuracy per attribute is echoed and kept, with the
recipe, in `built.json` beside the weights (`mmdata.demo.built`: a folder built with another recipe
is built again).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from mmdata.demo import built
from mmdata.memory import keep_freed_memory
from mmdata.mm1.config import VisionPretraining

log = logging.getLogger(__name__)

ATTRIBUTES = ("shape", "colour", "background", "count")
EASY = 0.3  # share of one-shape, plain-background scenes
COVERED = 0.15  # a patch is labelled with the shape when the shape covers this share of it


def _processor(size: int):
    from mmdata.demo.tiny_clip import _image_processor

    return _image_processor()(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def scenes(n: int, cfg: VisionPretraining, key: str, scale: float = 1.0):
    """`n` rendered scenes prepared as the image processor (and MM1's decoder) prepare a picture:
    uint8 [n, S, S, 3], labels [n, 4] (shape, colour, background, count - 1) and the patch labels
    [n, grid * grid] (shape index, 8 = no shape). `scale` < 1 draws smaller pictures: cheaper, the
    same scenes after the resize."""
    from dataclasses import replace

    from PIL import Image

    from mmdata.demo import images as im
    from mmdata.models.clip import Preprocess

    prep = Preprocess.from_processor(_processor(cfg.image_size))
    grid = cfg.image_size // cfg.patch_size
    colours = list(im.COLOURS)
    pixels = np.zeros((n, cfg.image_size, cfg.image_size, 3), np.uint8)
    labels = np.zeros((n, len(ATTRIBUTES)), np.int64)
    patches = np.full((n, grid * grid), len(im.SHAPES), np.int64)
    for i in range(n):
        rng = im.seeded_rng("tiny-vision", key, cfg.seed, i)
        c = im.random_concept(rng)
        if key == "train" and rng.random() < EASY:
            c = replace(c, count=1, texture="plain", word=None)
        # the probe's picture sizes, times `scale`
        w, h = int(rng.integers(220, 400) * scale), int(rng.integers(200, 360) * scale)
        img = im.render(c, w, h, rng)
        pixels[i] = prep(img)
        # shapes are drawn in their exact colour, which no background pixel has
        fg = (np.asarray(img) == np.array(im.COLOURS[c.colour], np.uint8)).all(-1)
        cover = prep(Image.fromarray(fg.astype(np.uint8) * 255))[..., 0] / 255.0
        share = cover[: grid * cfg.patch_size, : grid * cfg.patch_size].reshape(
            grid, cfg.patch_size, grid, cfg.patch_size).mean((1, 3))
        patches[i][share.reshape(-1) > COVERED] = im.SHAPES.index(c.shape)
        labels[i] = (im.SHAPES.index(c.shape), colours.index(c.colour), colours.index(c.background), c.count - 1)
    return pixels, labels, patches


def build_tower(cfg: VisionPretraining):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=2 * cfg.width, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size))


def accuracy(tower, head, pixels, labels) -> dict[str, float]:
    """Share right per attribute, from the class-token heads."""
    import torch

    tower.eval()
    with torch.inference_mode():
        out = torch.cat([head(tower(pixel_values=pixels[i : i + 128]).last_hidden_state[:, 0])
                         for i in range(0, len(pixels), 128)])
    tower.train()
    return {a: float((part.argmax(1) == labels[:, k]).float().mean()) for k, (a, part) in
            enumerate(zip(ATTRIBUTES, out.split(_SIZES, dim=1)))}


_SIZES = (8, 8, 8, 3)  # shapes, colours, background colours, counts


def train(out_dir: str | Path, cfg: VisionPretraining, echo=log.info) -> Path:
    """Pretrain and save_pretrained into `out_dir` (tower + image processor + built.json)."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    from transformers.utils import logging as hf_logging

    from mmdata.models.clip import Preprocess

    hf_logging.disable_progress_bar()
    keep_freed_memory()
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    processor = _processor(cfg.image_size)
    prep = Preprocess.from_processor(processor)
    x, y, dense = scenes(cfg.images, cfg, "train", scale=0.5)
    hx, hy, _ = scenes(256, cfg, "held-out")  # full-size pictures, as the probe draws them
    x, hx = (prep.pixels(torch.from_numpy(a), torch.float32) for a in (x, hx))
    y, dense, hy = (torch.from_numpy(a) for a in (y, dense, hy))
    echo(f"tiny-vision: {cfg.images} rendered scenes ({100 * float((dense < 8).float().mean()):.0f}% of patches on a "
         f"shape), prepared in {time.time() - t0:.1f}s")

    tower = build_tower(cfg)
    head = nn.Linear(cfg.width, sum(_SIZES))
    patch_head = nn.Linear(cfg.width, _SIZES[0] + 1)  # a shape, or none
    colour_head = nn.Linear(cfg.width, _SIZES[1])
    params = [*tower.parameters(), *head.parameters(), *patch_head.parameters(), *colour_head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    grid = cfg.image_size // cfg.patch_size
    curve = []
    tower.train()
    for step in range(cfg.steps):
        idx = torch.from_numpy(rng.integers(0, cfg.images, cfg.batch_size))
        # a mirrored or quarter-turned scene shows the same shapes
        flip = torch.from_numpy(rng.random(cfg.batch_size) < 0.5)
        turn = int(rng.integers(4))
        xb = torch.where(flip.view(-1, 1, 1, 1), x[idx].flip(-1), x[idx]).rot90(turn, (2, 3))
        db = dense[idx].view(-1, grid, grid)
        db = torch.where(flip.view(-1, 1, 1), db.flip(-1), db).rot90(turn, (1, 2)).reshape(len(idx), -1)
        h = tower(pixel_values=xb).last_hidden_state
        parts = head(h[:, 0]).split(_SIZES, dim=1)
        loss = sum(F.cross_entropy(p, y[idx, k]) * (1.0 if k == 0 else cfg.attribute_weight)
                   for k, p in enumerate(parts))
        under = torch.where(db < _SIZES[0], y[idx, 1:2], y[idx, 2:3])  # the shape's colour, else the background's
        loss = loss + F.cross_entropy(patch_head(h[:, 1:]).reshape(-1, _SIZES[0] + 1), db.reshape(-1)) \
            + F.cross_entropy(colour_head(h[:, 1:]).reshape(-1, _SIZES[1]), under.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, cfg.steps // 5) == 0 or step == cfg.steps - 1:
            right = accuracy(tower, head, hx, hy)
            curve.append({"step": step + 1, "images": (step + 1) * cfg.batch_size, "loss": round(loss.item(), 4),
                          **{k: round(v, 4) for k, v in right.items()}})
            echo(f"tiny-vision: step {step + 1}/{cfg.steps} loss {loss.item():.2f}, held-out "
                 + ", ".join(f"{k} {v:.0%}" for k, v in right.items())
                 + f" ({time.process_time() - c0:.0f} CPU s)")
    tower.eval()
    info = {"held_out_images": len(hy), "final": curve[-1], "curve": curve,
            "cpu_seconds": round(time.process_time() - c0, 1)}
    return built.save(out_dir, (tower, processor), recipe(cfg), info)


def recipe(cfg: VisionPretraining) -> dict:
    return {"model": "tiny-vision", **cfg.model_dump()}


def built_with(out_dir: str | Path) -> dict | None:
    """The pretrain recipe the tower in `out_dir` was built with, or None when there is none."""
    got = built.recipe_of(out_dir)
    return {k: v for k, v in got.items() if k != "model"} if got else None


def ensure(out_dir: str | Path, cfg: VisionPretraining, echo=log.info) -> str:
    """The tower in `out_dir` (an `encoder.model` folder), pretrained first when it is missing,
    unfinished or built with another recipe (never silently reused)."""
    built.ensure([out_dir], recipe(cfg), lambda: train(out_dir, cfg, echo), "encoder.model", echo)
    return str(out_dir)
