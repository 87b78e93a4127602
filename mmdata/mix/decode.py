"""Samples -> trainer inputs: uint8 image tensors at a fixed resolution, texts, token estimates.

One batch is a plain dict (documented in docs/mixture.md):
  images        uint8 [N, 3, S, S]: every image of the batch, resized, NOT normalised; the trainer
                normalises on its device with `normalize` (a quarter of float32's bytes through
                shared memory, pinned memory and PCIe), CPU users can pass `Normalize` as the
                loader's `transform`
  image_sample  int64 [N]: the sample (row of the lists below) each image belongs to
  slots         per sample, its sequence in reading order: str (text) or int (a row of `images`)
  texts         per sample: the caption (pair), the text (text doc), text slots joined (interleaved)
  kinds, sources, keys, caption ("alt" | "synthetic" | None), tokens (estimate), status, error
  epoch, batch  where this batch sits in the stream
A sample whose image does not decode keeps its place with status `failed_to_decode_image` and a
black image, so batch composition never depends on data faults.

The image path (measured in docs/mixture.md): `mmdata.images.open_rgb` (shared with CLIP scoring:
EXIF orientation, alpha on white) decodes JPEGs at a reduced DCT scale whose short side stays
>= `draft` x S, then ONE antialiased bicubic resize (torch's uint8 kernel, 2x PIL's speed here)
of exactly the pixels that are kept: a crop is cut before resizing, never after.
Each sample's json is parsed once (`parse`); the record then serves the kind, the token estimate,
the VeCap coin and the decoding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmdata.config import MixDecodeConfig
from mmdata.images import open_rgb
from mmdata.samples import IMAGE_EXTS, image_member


@dataclass
class Item:
    kind: str
    slots: list  # str | int (index into `images`)
    images: list = field(default_factory=list)  # uint8 tensors [3, S, S]
    caption: str | None = None
    status: str = "success"
    error: str | None = None


def parse(sample: dict) -> dict:
    """The sample's json record ({} when it has none or it is not JSON). The sampler calls this once
    per sample and hands the record to everything else."""
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        out = json.loads(raw) if isinstance(raw, bytes | str) else raw
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


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


def estimate_tokens(sample: dict, cfg: MixDecodeConfig, record: dict | None = None) -> int:
    """Text characters / chars_per_token + images x image_tokens, without decoding images.
    `record`: the already parsed json (parsed here when not given)."""
    record = parse(sample) if record is None else record
    kind = kind_of(sample, record)
    if kind == "interleaved":
        slots = record.get("slots", [])
        chars = sum(len(s.get("text", "")) for s in slots if s.get("type") == "text")
        n_img = min(cfg.max_images, sum(s.get("type") == "image" for s in slots))
    else:
        chars, n_img = len(_text(sample, record)), int(kind == "pair")
    return math.ceil(chars / cfg.chars_per_token) + n_img * cfg.image_tokens


# ---------------------------------------------------------------------------------------------
# normalisation: on the trainer's device, or in the loader for CPU users


def _mean_std(spec: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    spec = getattr(spec, "decode", spec)  # a Mixture -> its decode config
    if isinstance(spec, MixDecodeConfig):
        return tuple(spec.mean), tuple(spec.std)
    mean, std = spec
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def normalize(images: Any, spec: Any, device: Any = None, dtype: Any = None) -> Any:
    """uint8 [N, 3, S, S] -> (x / 255 - mean) / std in `dtype` (default float32) on `device`
    (default: where `images` are). `spec`: a Mixture, its `decode` config, or a (mean, std) pair.

    On a GPU: `normalize(batch["images"], mix, "cuda", torch.bfloat16)` uploads the uint8 pixels
    (asynchronously when the loader pinned them) and does the float maths there, in float32 before
    the final cast. Equals the former CPU float path to float32 rounding.
    """
    import torch

    mean, std = _mean_std(spec)
    x = images.to(device, non_blocking=True) if device is not None else images  # uint8 crosses PCIe
    x = x.to(torch.float32, copy=True)  # a new tensor even from float32: the maths below is in place
    # (x / 255 - mean) / std as one multiply and one subtract: x * (1 / (255 std)) - mean / std
    scale = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.mul_(scale).sub_(shift)
    return x if dtype is None or dtype == torch.float32 else x.to(dtype)


@dataclass(frozen=True)
class Normalize:
    """A loader `transform` (runs in the DataLoader workers) that turns `images` into normalised
    float tensors, for CPU training: `loader(mix, transform=Normalize.of(mix))`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str = "float32"

    @classmethod
    def of(cls, spec: Any, dtype: str = "float32") -> Normalize:
        mean, std = _mean_std(spec)
        return cls(mean, std, dtype)

    def __call__(self, batch: dict) -> dict:
        import torch

        if "images" in batch:
            batch["images"] = normalize(batch["images"], (self.mean, self.std), dtype=getattr(torch, self.dtype))
        return batch


# ---------------------------------------------------------------------------------------------
# decoding


def _resize(x: Any, h: int, w: int) -> Any:
    """uint8 [3, H, W] -> [3, h, w], antialiased bicubic (Pillow's filter, a = -0.5)."""
    import torch.nn.functional as F

    if tuple(x.shape[1:]) == (h, w):
        return x
    return F.interpolate(x[None], size=(h, w), mode="bicubic", antialias=True)[0]


class Decoder:
    def __init__(self, cfg: MixDecodeConfig):
        self.cfg = cfg
        s = cfg.image_size
        self.draft = math.ceil(cfg.draft * s) if cfg.draft else None
        self.fill = [round(255 * m) for m in cfg.mean]  # pad: the mean colour, zero after normalisation

    def image(self, data: bytes) -> Any:
        """Image bytes -> uint8 tensor [3, S, S] (channels-last in memory; `batch` stacks it)."""
        return self.pixels(open_rgb(data, self.draft))

    def pixels(self, img) -> Any:
        """An upright RGB PIL image (`open_rgb`'s) -> uint8 tensor [3, S, S], resized as `image` resizes."""
        import torch

        s = self.cfg.image_size
        # np.array, not asarray: a writable copy (asarray wraps read-only bytes, which torch warns about)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        h, w = x.shape[1:]
        if self.cfg.resize == "squash":
            return _resize(x, s, s)
        if self.cfg.resize == "center_crop":
            m = min(w, h)
            top, left = (h - m) // 2, (w - m) // 2
            return _resize(x[:, top:top + m, left:left + m], s, s)
        k = s / max(w, h)  # pad: fit inside, centred
        nw, nh = max(1, round(w * k)), max(1, round(h * k))
        out = torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1).repeat(1, s, s)
        top, left = (s - nh) // 2, (s - nw) // 2
        out[:, top:top + nh, left:left + nw] = _resize(x, nh, nw)
        return out

    def _black(self) -> Any:
        import torch

        s = self.cfg.image_size
        return torch.zeros((3, s, s), dtype=torch.uint8)

    def item(self, sample: dict, synthetic: bool, record: dict | None = None) -> Item:
        record = parse(sample) if record is None else record
        kind = kind_of(sample, record)
        try:
            return self._item(sample, record, kind, synthetic)
        except Exception as e:  # noqa: BLE001 (a bad sample is data: it keeps its place, flagged)
            error = f"{type(e).__name__}: {e}"[:300]
            if kind == "pair":
                return Item(kind, [0, _text(sample, record)], [self._black()], "alt", "failed_to_decode_image", error)
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

    def batch(self, samples: list[dict], sources: list[str], synthetic: list[bool], epoch: int, b: int,
              records: list[dict] | None = None) -> dict:
        records = [parse(x) for x in samples] if records is None else records
        items = [self.item(x, syn, rec) for x, syn, rec in zip(samples, synthetic, records)]
        images, owner, slots = [], [], []
        for row, it in enumerate(items):
            base = len(images)
            images += it.images
            owner += [row] * len(it.images)
            slots.append([x + base if isinstance(x, int) else x for x in it.slots])
        return {
            "images": self._stack(images),
            "image_sample": _tensor(owner),
            "slots": slots,
            "texts": ["\n\n".join(x for x in sl if isinstance(x, str)) for sl in slots],
            "kinds": [it.kind for it in items],
            "sources": sources,
            "keys": [x["__key__"] for x in samples],
            "caption": [it.caption for it in items],
            "tokens": [estimate_tokens(x, self.cfg, rec) for x, rec in zip(samples, records)],
            "status": [it.status for it in items],
            "error": [it.error for it in items],
            "epoch": epoch,
            "batch": b,
        }

    def _stack(self, images: list) -> Any:
        import torch
        from torch.utils.data import get_worker_info

        s = self.cfg.image_size
        shape = (len(images), 3, s, s)
        if get_worker_info() is None:
            out = torch.empty(shape, dtype=torch.uint8)
        else:  # in a DataLoader worker: straight into shared memory, as torch's default_collate does,
            # instead of a private tensor that pickling would copy there once more
            storage = torch.UntypedStorage._new_shared(math.prod(shape))
            out = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        return torch.stack(images, out=out) if images else out


def _tensor(values: list[int]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.int64)
