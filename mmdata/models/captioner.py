"""Any Hugging Face image-to-text or vision-language model as a batched, greedy image describer.

`Captioner.load(DescribeConfig)` goes through `AutoProcessor` and `AutoModelForImageTextToText`
`from_pretrained` (BLIP, BLIP-2, Florence-2, SmolVLM, LLaVA, Qwen2-VL, VisionEncoderDecoder, ...).
The prompt is sent the way the model expects it (`prompt_style`): inside a user turn of the
processor's chat template (VLMs), as a text prefix the caption continues (BLIP, Florence-2 task
tokens), or not at all (unconditional captioners). Batches are left-padded, so every prompt ends
where generation starts.

Two ways to prepare a batch, both on the decode threads:

- **fixed**: the model's image processor resizes to one fixed size (CLIP-, SigLIP-, BLIP-style)
  and the prompt's tokens do not depend on the image. Then the decode threads return uint8 HWC
  (`clip.Preprocess`, the same maths as the processor, checked at load time on two test images),
  the prompt is tokenised once per worker, and the batch goes to the device as uint8 and is
  normalised there: a quarter of the bytes, no float maths on the CPU.
- **processor**: anything else (dynamic resolution, image tiling: Qwen2-VL, SmolVLM, LLaVA-NeXT).
  The decode threads run the model's own processor on each batch of images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmdata.config import DescribeConfig
from mmdata.images import open_rgb
from mmdata.models.clip import Preprocess, run_adaptive
from mmdata.models.device import free_cache, is_oom, pick_device, pick_dtype

log = logging.getLogger(__name__)

TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class Batch:
    """Prepared inputs for one generate call: `images` (uint8 arrays on the fixed path, RGB PIL
    images on the processor path) and, on the processor path, the processor's tensors."""

    images: list
    inputs: Any = None


class Captioner:
    """One loaded model. `prepare` is thread-safe (decode threads); `describe` runs on one thread."""

    def __init__(self, cfg: DescribeConfig, model: Any, processor: Any, tokenizer: Any, device: str, dtype: Any,
                 revision: str):
        self.cfg, self.model, self.processor, self.tokenizer = cfg, model, processor, tokenizer
        self.device, self.dtype, self.revision = device, dtype, revision
        self.batch_size = cfg.batch_size
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
            gen.pad_token_id = tokenizer.pad_token_id  # batched generation pads finished rows with it
        self.nested = False  # images passed to the processor as one list per prompt
        self.style = self._style()
        self.text = self._prompt_text()
        self.prep: Preprocess | None = None
        self.fixed: dict | None = None  # the prompt's tensors for one sample, on the fixed path
        self._check_fixed()

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, cfg: DescribeConfig) -> Captioner:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from mmdata.memory import keep_freed_memory
        from mmdata.models.hub import resolved_revision

        hf_logging.disable_progress_bar()
        device = pick_device(cfg.device)
        dtype = pick_dtype(device, cfg.dtype)
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
        elif device == "cpu":
            keep_freed_memory()
        kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        processor = AutoProcessor.from_pretrained(cfg.model, **kw)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:  # a bare image processor (VisionEncoderDecoder folders often have one)
            tokenizer = AutoTokenizer.from_pretrained(cfg.model, **kw)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype, **kw)
        model = model.to(device).eval()
        return cls(cfg, model, processor, tokenizer, device, dtype, resolved_revision(cfg.model, cfg.revision, model))

    def _style(self) -> str:
        style = self.cfg.prompt_style
        has_chat = bool(getattr(self.processor, "chat_template", None))
        if style == "auto":
            return "chat" if has_chat else "none"
        if style == "chat" and not has_chat:
            raise ValueError(f"describe.model {self.cfg.model}: prompt_style chat, but its processor has no chat "
                             "template (use prefix or none)")
        return style

    def _prompt_text(self) -> str | None:
        if self.style == "chat":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.cfg.prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.cfg.prompt if self.style == "prefix" else None

    @property
    def image_processor(self) -> Any:
        return getattr(self.processor, "image_processor", self.processor)

    def _run_processor(self, images: list[Image.Image]) -> Any:
        if self.text is None:
            if hasattr(self.processor, "image_processor"):
                return self.processor(images=images, return_tensors="pt")
            return self.image_processor(images, return_tensors="pt")
        texts = [self.text] * len(images)
        if not self.nested:
            try:
                return self.processor(images=images, text=texts, padding=True, return_tensors="pt")
            except (ValueError, TypeError):  # Idefics3/SmolVLM-style processors want one list of images per text
                self.nested = True
        return self.processor(images=[[im] for im in images], text=texts, padding=True, return_tensors="pt")

    def _check_fixed(self) -> None:
        """Use the fixed path only where it gives exactly the processor's inputs (two test images
        of different sizes: same text tensors, same pixels within rounding)."""
        try:
            prep = Preprocess.from_processor(self.image_processor)
        except (ValueError, AttributeError, TypeError):
            return
        if prep.shape is None:
            return
        rng = np.random.default_rng(0)
        tests = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((240, 320), (301, 173))]
        try:
            outs = [self._run_processor([im]) for im in tests]
        except Exception as e:  # noqa: BLE001 - the processor path will report it on real data
            log.warning("%s: processor failed on a test image (%s)", self.cfg.model, e)
            return
        import torch

        keys = set(outs[0].keys())
        if keys - {"pixel_values", *TEXT_KEYS} or "pixel_values" not in keys or keys != set(outs[1].keys()):
            return
        for k in keys & set(TEXT_KEYS):
            if not torch.equal(outs[0][k], outs[1][k]):
                return
        for im, out in zip(tests, outs):
            mine = prep.pixels(torch.from_numpy(np.array(prep(im)[None])), torch.float32)
            theirs = out["pixel_values"].to(torch.float32)
            if mine.shape != theirs.shape or float((mine - theirs).abs().max()) > 0.02:
                return
        self.prep = prep
        self.fixed = {k: outs[0][k] for k in keys & set(TEXT_KEYS)}

    @property
    def path(self) -> str:
        return "fixed" if self.prep is not None else "processor"

    # -- preparing (decode threads) -------------------------------------------------------------

    def decode(self, data: bytes) -> Image.Image:
        """Image bytes -> an upright RGB image (EXIF applied, alpha on white). Raises when unreadable."""
        return open_rgb(data)

    def item(self, img: Image.Image) -> Any:
        """What a batch holds per image: model-ready uint8 on the fixed path, the image otherwise."""
        return self.prep(img) if self.prep is not None else img

    def collate(self, items: list) -> Batch:
        """A batch of items -> inputs; the processor path runs the model's processor here."""
        return Batch(items, None if self.prep is not None else self._run_processor(items))

    # -- generating (model thread) --------------------------------------------------------------

    def _inputs(self, batch: Batch) -> dict:
        import torch

        if self.prep is None:
            inputs = batch.inputs if batch.inputs is not None else self._run_processor(batch.images)
            out = {}
            for k, v in inputs.items():
                if torch.is_tensor(v):
                    v = v.to(self.device, non_blocking=True)
                    if v.is_floating_point():
                        v = v.to(self.dtype)
                out[k] = v
            return out
        n = len(batch.images)
        if self.device.startswith("cuda"):
            # one copy into pinned memory, then an asynchronous upload of uint8 (a quarter of float32)
            pixels = torch.empty((n, *batch.images[0].shape), dtype=torch.uint8, pin_memory=True)
            np.stack(batch.images, out=pixels.numpy())
            pixels = pixels.to(self.device, non_blocking=True)
        else:
            pixels = torch.from_numpy(np.stack(batch.images)).to(self.device)
        out = {k: v.repeat(n, 1).to(self.device) for k, v in self.fixed.items()}  # a copy: BLIP writes into them
        out["pixel_values"] = self.prep.pixels(pixels, self.dtype)
        return out

    def _generate(self, batch: Batch, candidates: int, seed: int | None) -> list[list[str]]:
        import torch

        inputs = self._inputs(batch)
        kw: dict = {"max_new_tokens": self.cfg.max_new_tokens, "num_beams": 1}
        if candidates > 1:
            kw.update(do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                      num_return_sequences=candidates)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kw.update(do_sample=False)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kw)
        texts = self._new_text(out, inputs.get("input_ids"), candidates)
        return [texts[i * candidates : (i + 1) * candidates] for i in range(len(batch.images))]

    def _new_text(self, out: Any, input_ids: Any, repeat: int) -> list[str]:
        """Generated text only: decoder-only models echo the prompt (sliced off by length); others
        return the decoder's sequence, which may start with a text prefix (removed as text)."""
        if input_ids is not None and out.shape[1] >= input_ids.shape[1]:
            prompt = input_ids.repeat_interleave(repeat, dim=0) if repeat > 1 else input_ids
            if bool((out[:, : prompt.shape[1]] == prompt.to(out.device)).all()):
                return self.tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        if self.style == "prefix":
            p = self.cfg.prompt.strip().lower()
            texts = [t.strip()[len(p) :] if t.strip().lower().startswith(p) else t for t in texts]
        return texts

    def describe(self, batch: Batch, candidates: int = 1, seed: int | None = None) -> list[list[str]]:
        """Per image, `candidates` raw descriptions (greedy when 1). On out-of-memory the batch
        size halves and the batch is re-collated in halves (kept for later batches)."""
        try:
            if len(batch.images) <= self.batch_size:
                return self._generate(batch, candidates, seed)
        except Exception as e:
            if not is_oom(e) or len(batch.images) == 1:
                raise
            self.batch_size = max(1, len(batch.images) // 2)
            log.warning("out of memory on %s: describe batch size down to %d", self.device, self.batch_size)
            free_cache(self.device)
        parts, self.batch_size = run_adaptive(
            lambda items: self._generate(self.collate(list(items)), candidates, seed), batch.images, self.batch_size,
            self.device)
        return [d for p in parts for d in p]

    def prepare_all(self, datas: Sequence[bytes]) -> Batch:
        """Decode and collate in the calling thread (tests, benchmarks)."""
        return self.collate([self.item(self.decode(d)) for d in datas])
