"""MM1: image encoder -> connector -> image tokens in place of the placeholders -> decoder LLM.

`forward` takes packed sequences (mmdata.mm1.pack) and returns the summed cross-entropy over the
target tokens and their count, so a trainer can normalise over a whole global batch (micro-batches,
ranks) and a sequence without targets adds 0, never NaN. Images arrive as uint8 (normalised here,
on the device, with the mixture's mean/std) or already-normalised floats.

`generate(sequences)` captions / answers: a sequence is a list of text strings and images (tensors,
PIL images or encoded image bytes) in reading order, so few-shot prompts interleave them.
`save_pretrained(dir)` / `MM1.from_pretrained(dir)` keep the parts in Hugging Face format
(`encoder/`, `decoder/` with the tokenizer) beside `connector.safetensors` and `mm1.json`.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mmdata.images import upright_rgb
from mmdata.mix.decode import normalize
from mmdata.mm1 import decoder as dec
from mmdata.mm1 import tokenizer as tk
from mmdata.mm1.config import ModelConfig
from mmdata.mm1.connector import build_connector
from mmdata.mm1.encoder import ImageEncoder
from mmdata.mm1.pack import IGNORE

PARTS = ("encoder", "connector", "decoder")


@dataclass
class ImageSpec:
    """How images were prepared in training (the mixture's decode settings)."""

    size: int = 336
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resize: str = "center_crop"
    draft: float = 1.0

    @classmethod
    def from_decode(cls, d) -> ImageSpec:
        return cls(d.image_size, tuple(d.mean), tuple(d.std), d.resize, d.draft)

    def decoder(self):
        """The mixture's own image decoder with these settings (prompts prepared as training images were)."""
        from mmdata.config import MixDecodeConfig
        from mmdata.mix.decode import Decoder

        return Decoder(MixDecodeConfig(image_size=self.size, resize=self.resize, mean=self.mean, std=self.std,
                                       draft=self.draft))


class MM1(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer, image: ImageSpec, *, check_packing: bool = True):
        super().__init__()
        self.cfg, self.tokenizer, self.image = cfg, tokenizer, image
        with quiet_loading():
            self.encoder = ImageEncoder(cfg.encoder)
            self.decoder = dec.build_decoder(cfg.decoder, len(tokenizer))
        width = self.decoder.get_input_embeddings().embedding_dim
        patches = self.encoder.grid(image.size) ** 2
        self.connector = build_connector(cfg.connector, patches, self.encoder.width, width)
        self.codec = tk.Encoder(tokenizer, cfg.image_token, cfg.connector.tokens)
        self.register_buffer("mean", torch.tensor(image.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image.std).view(1, 3, 1, 1), persistent=False)
        for part in PARTS:
            if getattr(cfg, part).freeze:
                getattr(self, part).requires_grad_(False)
        if check_packing:
            dec.check_packing(self.decoder)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # -- pieces of the forward

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,S,S] (what the mixture hands over) -> normalised float32 on the model's device, the
        maths done there; floats (already normalised, e.g. by `mix.decode.Normalize`) pass through."""
        if x.dtype == torch.uint8:
            return normalize(x, (self.image.mean, self.image.std), self.mean.device)
        return x.to(self.mean.device, torch.float32, non_blocking=True)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N,3,S,S] -> [N, Q, llm width]."""
        return self.connector(self.encoder(self.pixels(pixels)))

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings with each image's Q tokens written over its placeholder run; also returns
        a zero-valued term touching every vision parameter when there are no images (below)."""
        emb = self.decoder.get_input_embeddings()(input_ids)
        slots = input_ids == self.codec.image_id
        n = int(slots.sum())
        if pixels.shape[0] == 0:
            if n:
                raise ValueError(f"{n} image placeholder tokens but no images")
            # every rank runs the same modules each micro-batch (DDP reducer, FSDP all-gathers): a
            # black image through the vision path, weighted 0
            if self.training and torch.is_grad_enabled():
                s = self.image.size
                ghost = self.image_tokens(torch.zeros(1, 3, s, s, dtype=torch.uint8, device=emb.device))
                return emb, ghost.sum() * 0.0
            return emb, emb.new_zeros(())
        feats = self.image_tokens(pixels)
        if feats.shape[0] * feats.shape[1] != n:
            raise ValueError(f"{pixels.shape[0]} images x {feats.shape[1]} tokens do not fill {n} placeholders")
        emb = emb.masked_scatter(slots.unsqueeze(-1), feats.to(emb.dtype).reshape(-1, emb.shape[-1]))
        return emb, emb.new_zeros(())

    def forward(self, input_ids, position_ids, targets, pixels, *, return_logits: bool = False):
        """Packed sequences -> {"loss_sum", "targets"} (or full logits). The loss is summed over
        target tokens: divide by the global count of targets."""
        emb, ghost = self.embed(input_ids, pixels)
        h = dec.hidden_states(self.decoder, emb, position_ids)
        if return_logits:
            return dec.logits(self.decoder, h)
        keep = targets != IGNORE
        # the LM head only where there is something to predict: [targets, vocab] instead of [S*T, vocab]
        logits = dec.logits(self.decoder, h[keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum") + ghost
        return {"loss_sum": loss, "targets": keep.sum()}

    # -- generation

    def prepare_image(self, x) -> torch.Tensor:
        """A prompt image (PIL, encoded bytes, or a [3, S, S] tensor) -> [3, S, S] uint8 or normalised
        float, resized exactly as the training decoder resized (the mixture's decode settings)."""
        if isinstance(x, torch.Tensor):
            if x.shape[-1] != self.image.size or x.shape[-2] != self.image.size:
                raise ValueError(f"image tensor {tuple(x.shape)} is not {self.image.size} px; pass PIL images or bytes "
                                 "to have them resized as in training")
            return x
        if not isinstance(x, bytes | bytearray):  # a PIL image: the training decoder's resize, as its file's would be
            return self.image.decoder().pixels(upright_rgb(x)).contiguous()
        return self.image.decoder().image(bytes(x)).contiguous()

    _image = prepare_image  # the name the evaluation first used

    @torch.no_grad()
    def generate(self, sequences: list[list], *, max_new_tokens: int = 20, num_beams: int = 1,
                 stop: list[str] | None = None, batch_size: int = 16) -> list[str]:
        """Continue each sequence (a list of str and images, in order) greedily (or with beams);
        returns the generated text, cut at EOS and at the first of `stop` (e.g. ["\\n"])."""
        out: list[str] = []
        for i in range(0, len(sequences), batch_size):
            out += self._generate(sequences[i : i + batch_size], max_new_tokens, num_beams)
        for s in stop or []:
            out = [o.split(s, 1)[0] for o in out]
        return [o.strip() for o in out]

    def _generate(self, seqs: list[list], max_new_tokens: int, num_beams: int) -> list[str]:
        was = self.training
        self.eval()
        device = self.mean.device
        encs, images = [], []
        for seq in seqs:
            slots = []
            for x in seq:
                if isinstance(x, str):
                    slots.append(x)
                else:
                    slots.append(len(images))
                    images.append(self.prepare_image(x))
            encs.append(self.codec.encode(slots, eos=False))
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.codec.pad, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        order: list[int] = []
        for r, e in enumerate(encs):  # left padding: every prompt ends where generation starts
            ids[r, width - len(e.ids):] = torch.tensor(e.ids)
            mask[r, width - len(e.ids):] = 1
            order += e.images
        pix = torch.stack([images[j] for j in order]) if order else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
        ids, mask = ids.to(device), mask.to(device)
        with _autocast(device):
            emb, _ = self.embed(ids, pix.to(device) if order else pix[:0].to(device))
            gen = self.decoder.generate(
                inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                do_sample=False, eos_token_id=self.codec.eos, pad_token_id=self.codec.pad,
                suppress_tokens=[self.codec.image_id], use_cache=True)
        self.train(was)
        return [self.codec.decode(_cut(g.tolist(), self.codec.eos)) for g in gen]

    # -- parameters

    def parts(self) -> dict[str, nn.Module]:
        return {p: getattr(self, p) for p in PARTS}

    def counts(self) -> dict[str, dict[str, int]]:
        """Parameters per part: trainable and frozen (for MFU and the MM1 LR formula)."""
        out = {}
        for name, m in self.parts().items():
            ps = list(m.parameters())
            out[name] = {"trainable": sum(p.numel() for p in ps if p.requires_grad),
                         "frozen": sum(p.numel() for p in ps if not p.requires_grad)}
        return out

    # -- persistence (Hugging Face layout per part)

    def save_pretrained(self, url: str) -> str:
        """Write encoder/, decoder/ (+ tokenizer), connector.safetensors and mm1.json under `url`
        (local path or fsspec URL; remote targets are written locally, then uploaded)."""
        from safetensors.torch import save_file

        from mmdata import fsio as io_

        fs, path = io_.fs_path(url)
        local = io_.is_local(url)
        with tempfile.TemporaryDirectory(prefix="mm1-export-") as tmp:
            root = path if local else tmp
            os.makedirs(root, exist_ok=True)
            self.encoder.tower.save_pretrained(os.path.join(root, "encoder"))
            self.decoder.save_pretrained(os.path.join(root, "decoder"))
            self.tokenizer.save_pretrained(os.path.join(root, "decoder"))
            state = {k: v.detach().cpu().contiguous() for k, v in self.connector.state_dict().items()}
            save_file(state, os.path.join(root, "connector.safetensors"))
            cfg = self.cfg.model_dump(mode="json")
            cfg["encoder"].update(model="encoder", config=None, pretrain=None)  # the parts now live beside mm1.json
            cfg["decoder"].update(model="decoder", config=None, tokenizer=None, train_tokenizer=None, pretrain=None)
            meta = {"format": "mmdata.mm1/1", "model": cfg, "image": asdict(self.image)}
            with open(os.path.join(root, "mm1.json"), "w") as f:
                json.dump(meta, f, indent=1)
            if not local:
                fs.put(tmp + "/", path, recursive=True)
        return url

    @classmethod
    def from_pretrained(cls, url: str, *, device: str | None = None) -> MM1:
        """Load what `save_pretrained` wrote (a local folder or an fsspec URL)."""
        from safetensors.torch import load_file

        from mmdata import fsio as io_

        with tempfile.TemporaryDirectory(prefix="mm1-load-") as tmp:
            if io_.is_local(url):
                root = url
            else:
                fs, path = io_.fs_path(url)
                fs.get(path.rstrip("/") + "/", tmp, recursive=True)
                root = tmp
            with open(os.path.join(root, "mm1.json")) as f:
                meta = json.load(f)
            data = meta["model"]
            data["encoder"]["model"] = os.path.join(root, "encoder")
            data["decoder"]["model"] = os.path.join(root, "decoder")
            cfg = ModelConfig.model_validate(data)
            image = ImageSpec(**{**meta["image"], "mean": tuple(meta["image"]["mean"]), "std": tuple(meta["image"]["std"])})
            model = cls(cfg, tk.load(cfg.decoder.model, cfg.image_token), image, check_packing=False)
            model.connector.load_state_dict(load_file(os.path.join(root, "connector.safetensors")))
        model.eval()
        return model.to(device) if device else model


@contextmanager
def quiet_loading():
    """transformers' load reports list every weight a vision tower leaves out of a full CLIP checkpoint
    (its text half): expected here, so only errors are shown while the parts load."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _cut(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def _autocast(device):
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
