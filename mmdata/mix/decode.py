"""Samples -> trainer inputs: image tensors at a fixed resolution (PIL -> numpy -> torch), texts.

One batch is a plain dict (documented in docs/mixture.md):
  images        float32 [N, 3, S, S], normalised by the configured mean/std
  image_sample  int64 [N]: the sample (row of the lists below) each image belongs to
  slots         per sample, its sequence in reading order: str (text) or int (a row of `images`)
  texts         per sample: the caption (pair), the text (text doc), text slots joined (interleaved)
  kinds, sources, keys, caption ("alt" | "synthetic" | None), tokens (estimate), status, error
  epoch, batch  where this batch sits in the stream
A sample whose image does not decode keeps its place with status `failed_to_decode_image` and a
black image, so batch composition never depends on data faults.
"""

from __future__ import annotations

import io as _io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from mmdata.config import MixDecodeConfig
from mmdata.samples import IMAGE_EXTS, image_member


@dataclass
class Item:
    kind: str
    slots: list  # str | int (index into `images`)
    images: list[np.ndarray] = field(default_factory=list)
    caption: str | None = None
    status: str = "success"
    error: str | None = None


def meta(sample: dict) -> dict:
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        return json.loads(raw) if isinstance(raw, bytes | str) else raw
    except ValueError:
        return {}


def kind_of(sample: dict, record: dict) -> str:
    kind = record.get("kind")
    if kind in ("pair", "interleaved", "text"):
        return kind
    if any(e in sample for e in IMAGE_EXTS):
        return "pair"
    return "interleaved" if isinstance(record.get("slots"), list) else "text"


def _text(sample: dict, record: dict) -> str:
    if "txt" in sample:
        return sample["txt"].decode("utf-8", "replace")
    return record.get("caption") or record.get("text") or ""


def estimate_tokens(sample: dict, cfg: MixDecodeConfig) -> int:
    """Text characters / chars_per_token + images x image_tokens, without decoding images."""
    record = meta(sample)
    kind = kind_of(sample, record)
    if kind == "interleaved":
        slots = record.get("slots", [])
        chars = sum(len(s.get("text", "")) for s in slots if s.get("type") == "text")
        n_img = min(cfg.max_images, sum(s.get("type") == "image" for s in slots))
    else:
        chars, n_img = len(_text(sample, record)), int(kind == "pair")
    return math.ceil(chars / cfg.chars_per_token) + n_img * cfg.image_tokens


class Decoder:
    def __init__(self, cfg: MixDecodeConfig):
        self.cfg = cfg

    def image(self, data: bytes) -> np.ndarray:
        """uint8 [S, S, 3]."""
        from PIL import Image

        s = self.cfg.image_size
        img = Image.open(_io.BytesIO(data))
        img.draft("RGB", (s, s))  # JPEG: decode at reduced scale when the image is much larger
        img = img.convert("RGB")
        w, h = img.size
        if self.cfg.resize == "squash":
            img = img.resize((s, s), Image.Resampling.BICUBIC)
        elif self.cfg.resize == "center_crop":
            k = s / min(w, h)
            nw, nh = max(s, round(w * k)), max(s, round(h * k))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
        else:  # pad: fit inside, centre on the mean colour (zero after normalisation)
            k = s / max(w, h)
            nw, nh = max(1, round(w * k)), max(1, round(h * k))
            fill = tuple(round(255 * m) for m in self.cfg.mean)
            canvas = Image.new("RGB", (s, s), fill)
            canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), ((s - nw) // 2, (s - nh) // 2))
            img = canvas
        return np.asarray(img, dtype=np.uint8)

    def item(self, sample: dict, synthetic: bool) -> Item:
        record = meta(sample)
        kind = kind_of(sample, record)
        try:
            return self._item(sample, record, kind, synthetic)
        except Exception as e:  # noqa: BLE001 (a bad sample is data: it keeps its place, flagged)
            error = f"{type(e).__name__}: {e}"[:300]
            if kind == "pair":
                s = self.cfg.image_size
                return Item(kind, [0, _text(sample, record)], [np.zeros((s, s, 3), np.uint8)], "alt",
                            "failed_to_decode_image", error)
            texts = [x["text"] for x in record.get("slots", []) if x.get("type") == "text" and x.get("text")]
            return Item(kind, texts, status="failed_to_decode_image", error=error)

    def _item(self, sample: dict, record: dict, kind: str, synthetic: bool) -> Item:
        if kind == "text":
            return Item(kind, [_text(sample, record)])
        if kind == "pair":
            use_syn = synthetic and bool(record.get("synthetic_caption"))
            caption = record["synthetic_caption"] if use_syn else _text(sample, record)
            data = image_member(sample)
            if data is None:
                raise ValueError("pair without an image member")
            return Item(kind, [0, caption], [self.image(data)], "synthetic" if use_syn else "alt")
        item = Item(kind, [])
        for slot in record.get("slots", []):
            if slot.get("type") == "text":
                item.slots.append(slot["text"])
            elif slot.get("type") == "image" and len(item.images) < self.cfg.max_images:
                data = image_member(sample, slot.get("index"))
                if data is None:
                    raise ValueError(f"image slot {slot.get('index')} has no image member")
                item.slots.append(len(item.images))
                item.images.append(self.image(data))
        return item

    def batch(self, samples: list[dict], sources: list[str], synthetic: list[bool], epoch: int, b: int) -> dict:
        import torch

        items = [self.item(x, syn) for x, syn in zip(samples, synthetic)]
        images, owner, slots = [], [], []
        for row, it in enumerate(items):
            base = len(images)
            images += it.images
            owner += [row] * len(it.images)
            slots.append([x + base if isinstance(x, int) else x for x in it.slots])
        s = self.cfg.image_size
        pixels = torch.from_numpy(np.stack(images)) if images else torch.zeros((0, s, s, 3), dtype=torch.uint8)
        pixels = pixels.permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std).view(1, 3, 1, 1)
        return {
            "images": pixels.sub_(mean).div_(std),
            "image_sample": torch.tensor(owner, dtype=torch.int64),
            "slots": slots,
            "texts": ["\n\n".join(x for x in sl if isinstance(x, str)) for sl in slots],
            "kinds": [it.kind for it in items],
            "sources": sources,
            "keys": [x["__key__"] for x in samples],
            "caption": [it.caption for it in items],
            "tokens": [estimate_tokens(x, self.cfg) for x in samples],
            "status": [it.status for it in items],
            "error": [it.error for it in items],
            "epoch": epoch,
            "batch": b,
        }
