"""A Hugging Face CLIP or SigLIP dual encoder, fed uint8 images from a decode thread pool.

`ClipEncoder.load(id_or_path)` goes through `AutoModel` / `AutoImageProcessor` / `AutoTokenizer`
`from_pretrained`, so any CLIP-like checkpoint with `get_image_features` / `get_text_features`
works (CLIP, SigLIP, the tiny demo CLIP).

Images are prepared in two halves. `Preprocess.__call__` runs in decode threads on the upright RGB
image that `mmdata.images.open_rgb` gives every consumer (EXIF orientation, alpha on white; the
mixture sampler trains on the same), resizes and centre-crops it with PIL exactly as the model's
image processor does (so no JPEG draft here, unlike the sampler), and returns uint8 HWC.
`Preprocess.pixels` runs on the batch, on the model's device: uint8 -> float, rescale, normalise,
cast to the model dtype. Shipping uint8 moves a quarter of the bytes to the GPU
and keeps float maths off the decode threads. The two halves together equal the processor's output
(asserted in the tests).

Embeddings come back L2-normalised in float32; `cosine` of two of them is the exact score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np
from PIL import Image

from mmdata.images import open_rgb, to_rgb
from mmdata.memory import keep_freed_memory
from mmdata.models.device import free_cache, is_oom, pick_device, pick_dtype

log = logging.getLogger(__name__)


def _field(size: Any, name: str) -> Any:
    # transformers 5 gives a SizeDict, 4.x a plain dict
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


@dataclass(frozen=True)
class Preprocess:
    """An image processor's recipe: `short` (resize the short side to it) or `exact` (h, w), then `crop`."""

    short: int | None = None
    exact: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    resample: int = Image.Resampling.BICUBIC
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @classmethod
    def from_processor(cls, ip: Any) -> Preprocess:
        short = exact = crop = None
        if getattr(ip, "do_resize", True):
            size = ip.size
            if _field(size, "shortest_edge") and not _field(size, "longest_edge"):
                short = int(_field(size, "shortest_edge"))
            elif _field(size, "height") and _field(size, "width"):
                exact = (int(_field(size, "height")), int(_field(size, "width")))
            else:
                raise ValueError(f"{type(ip).__name__}: unsupported resize rule {size}")
        if getattr(ip, "do_center_crop", False):
            crop = (int(_field(ip.crop_size, "height")), int(_field(ip.crop_size, "width")))
        normalize = getattr(ip, "do_normalize", True)
        return cls(
            short=short,
            exact=exact,
            crop=crop,
            resample=int(getattr(ip, "resample", None) or Image.Resampling.BILINEAR),
            scale=float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0,
            mean=tuple(float(x) for x in ip.image_mean) if normalize else (0.0, 0.0, 0.0),
            std=tuple(float(x) for x in ip.image_std) if normalize else (1.0, 1.0, 1.0),
        )

    @property
    def shape(self) -> tuple[int, int] | None:
        """(h, w) of every output, when fixed."""
        return self.crop or self.exact

    def __call__(self, img: Image.Image) -> np.ndarray:
        """PIL image -> uint8 (H, W, 3), resized and cropped as the processor does."""
        img = to_rgb(img)
        w, h = img.size
        if self.short:
            lo, hi = (w, h) if w <= h else (h, w)
            long = int(self.short * hi / lo)
            size = (self.short, long) if w <= h else (long, self.short)
            img = img.resize(size, resample=self.resample)
        elif self.exact:
            img = img.resize((self.exact[1], self.exact[0]), resample=self.resample)
        arr = np.asarray(img)
        return _center_crop(arr, self.crop) if self.crop else arr

    def pixels(self, batch: Any, dtype: Any) -> Any:
        """uint8 (N, H, W, 3) tensor -> normalised (N, 3, H, W) in `dtype`, on the batch's device."""
        import torch

        x = batch.permute(0, 3, 1, 2).to(torch.float32).mul_(self.scale)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std).to(dtype)


def _center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = arr.shape[:2]
    ch, cw = size
    if h < ch or w < cw:  # smaller than the crop: centred on zeros, as transformers pads
        H, W = max(h, ch), max(w, cw)
        top, left = ceil((H - h) / 2), ceil((W - w) / 2)
        padded = np.zeros((H, W, arr.shape[2]), dtype=arr.dtype)
        padded[top : top + h, left : left + w] = arr
        arr, h, w = padded, H, W
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(arr[top : top + ch, left : left + cw])


def run_adaptive(fn: Callable[[Sequence], Any], items: Sequence, batch_size: int, device: str = "cpu"):
    """`fn` over `items` in chunks; on out-of-memory the chunk size halves and the chunk is retried.

    Returns (list of fn's results, the batch size that worked), so callers keep the smaller size.
    """
    out, i = [], 0
    while i < len(items):
        chunk = items[i : i + batch_size]
        try:
            out.append(fn(chunk))
        except Exception as e:
            if not is_oom(e) or batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory on %s: batch size down to %d", device, batch_size)
            free_cache(device)
            continue
        i += len(chunk)
    return out, batch_size


def _pooled(out: Any) -> Any:
    import torch

    # transformers 5 returns a model output with the projected embedding as pooler_output
    return out if torch.is_tensor(out) else out.pooler_output


class ClipEncoder:
    """One loaded model. Not thread-safe: one encoder per worker process, used from one thread."""

    def __init__(self, model: Any, prep: Preprocess, tokenizer: Any, device: str, dtype: Any,
                 batch_size: int = 256, max_tokens: int | None = None):
        self.model, self.prep, self.tokenizer = model, prep, tokenizer
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        text_cfg = getattr(model.config, "text_config", model.config)
        self.max_tokens = max_tokens or int(text_cfg.max_position_embeddings)
        # SigLIP was trained on texts padded to the full length and no attention mask
        self.pad_to_max = model.config.model_type.startswith("siglip")

    @classmethod
    def load(cls, name: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 256,
             max_tokens: int | None = None) -> ClipEncoder:
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        device = pick_device(device)
        torch_dtype = pick_dtype(device, dtype)
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True  # only matters for float32 runs
        elif device == "cpu":
            keep_freed_memory()  # activations live in host memory: reuse them, do not page-fault them anew
        model = AutoModel.from_pretrained(name, dtype=torch_dtype)
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(model, method):
                raise TypeError(f"{name}: {type(model).__name__} has no {method}; not a CLIP-like dual encoder")
        model = model.to(device).eval()
        prep = Preprocess.from_processor(AutoImageProcessor.from_pretrained(name))
        if prep.shape is None:
            raise ValueError(f"{name}: its image processor gives no fixed size (no crop), so images cannot batch")
        tokenizer = AutoTokenizer.from_pretrained(name)
        return cls(model, prep, tokenizer, device, torch_dtype, batch_size, max_tokens)

    # -- images and pairs ----------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        """Image bytes -> model-ready uint8 (H, W, 3). Thread-safe; raises on an unreadable image."""
        return self.prep(open_rgb(data))

    def _image_features(self, arrays: Sequence[np.ndarray]) -> Any:
        import torch

        if self.device.startswith("cuda"):
            # one copy into pinned memory (the caching host allocator reuses it once the copy is done),
            # then an asynchronous upload: the GPU gets uint8, a quarter of float32's bytes
            batch = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=True)
            np.stack(arrays, out=batch.numpy())
            batch = batch.to(self.device, non_blocking=True)
        else:
            batch = torch.from_numpy(np.stack(arrays)).to(self.device)
        with torch.inference_mode():
            return _pooled(self.model.get_image_features(pixel_values=self.prep.pixels(batch, self.dtype)))

    def _text_features(self, texts: Sequence[str]) -> Any:
        import torch

        enc = {k: v.to(self.device, non_blocking=True) for k, v in self.tokenize(texts).items()}
        with torch.inference_mode():
            return _pooled(self.model.get_text_features(**enc))

    def _pairs(self, pairs: Sequence[tuple[np.ndarray, str]]) -> tuple[np.ndarray, np.ndarray]:
        # on a GPU the image forward is queued, then the captions tokenise while it runs
        img = self._image_features([a for a, _ in pairs])
        txt = self._text_features([t for _, t in pairs])
        return _unit(img), _unit(txt)

    def embed_pairs(self, arrays: Sequence[np.ndarray], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed uint8 images and their captions -> two (N, D) float32 unit-length arrays."""
        parts, self.batch_size = run_adaptive(self._pairs, list(zip(arrays, texts)), self.batch_size, self.device)
        if not parts:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, self.dim), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def embed_images(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocessed uint8 images -> (N, D) float32, unit length."""
        parts, self.batch_size = run_adaptive(lambda c: _unit(self._image_features(c)), arrays, self.batch_size,
                                              self.device)
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    # -- texts ---------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict:
        enc = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max else True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) float32, unit length (truncated to the model's text length)."""
        parts, self.batch_size = run_adaptive(lambda c: _unit(self._text_features(c)), texts, self.batch_size,
                                              self.device)
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim if hasattr(self.model.config, "projection_dim")
                   else self.model.config.text_config.hidden_size)


def _unit(emb: Any) -> np.ndarray:
    # normalise in float32 whatever the model dtype: the score is a float32 cosine of these
    e = emb.float()
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return e.cpu().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit vectors, float32."""
    return np.einsum("nd,nd->n", a, b, dtype=np.float32)
