"""Image encoder: a Hugging Face CLIP / SigLIP vision tower, from a hub id, a local path or a config.

Returns the patch tokens of one hidden layer as a square grid's worth of tokens [N, P, D], without
CLIP's class token (the connector pools patches spatially). Any resolution works: position
embeddings are interpolated when the images differ from the checkpoint's size (MM1 trains at
224 / 336 / 378 px).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmdata.mm1.config import EncoderConfig

# full image-text models whose vision tower we take
_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def vision_config(cfg: EncoderConfig):
    from transformers import AutoConfig

    if cfg.config is not None:
        kw = dict(cfg.config)
        return AutoConfig.for_model(kw.pop("model_type", "clip_vision_model"), **kw)
    full = AutoConfig.from_pretrained(cfg.model)
    return getattr(full, "vision_config", full)


def build_tower(cfg: EncoderConfig) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    if cfg.config is not None:
        return AutoModel.from_config(vision_config(cfg))
    full = AutoConfig.from_pretrained(cfg.model)
    name = _TOWERS.get(full.model_type)
    if name is None:  # already a vision-only checkpoint (clip_vision_model, siglip_vision_model, ...)
        name = type(AutoModel.from_config(full)).__name__ if full.model_type.endswith("vision_model") else None
    if name is None:
        raise ValueError(f"encoder {cfg.model!r}: model_type {full.model_type!r} is not a CLIP/SigLIP (vision) model")
    return getattr(transformers, name).from_pretrained(cfg.model)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, tower: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.tower = tower if tower is not None else build_tower(cfg)
        c = self.tower.config
        self.width = c.hidden_size
        self.patch = c.patch_size
        self.native = c.image_size
        vm = getattr(self.tower, "vision_model", self.tower)
        # CLIP prepends a class token; SigLIP has none
        self.has_cls = hasattr(vm.embeddings, "class_embedding")
        self._keep_used(vm, cfg.feature_layer)

    def _keep_used(self, vm: nn.Module, layer: int) -> None:
        """Drop what never reaches the connector: layers above `feature_layer`, the pooling head, and
        the final LayerNorm unless it is applied to the features (SigLIP's, at the last layer). Their
        parameters would get no gradient, which DDP and FSDP reject (and it saves their compute).
        Deterministic from the config, so a saved encoder reloads to the same module."""
        layers = vm.encoder.layers
        if not -len(layers) - 1 <= layer <= -1:
            raise ValueError(f"feature_layer {layer}: the encoder has {len(layers)} layers (use -1 .. -{len(layers)})")
        vm.encoder.layers = layers[: len(layers) + 1 + layer]
        if self.has_cls or layer != -1:  # CLIP's post-LayerNorm only feeds the pooled class token
            vm.post_layernorm = nn.Identity()
        if getattr(vm, "head", None) is not None:  # SigLIP's attention-pooling head
            vm.head = None
            vm.use_head = False

    def grid(self, image_size: int) -> int:
        if image_size % self.patch:
            raise ValueError(f"image size {image_size} is not a multiple of the encoder's patch size {self.patch}")
        return image_size // self.patch

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, S, S] (normalised) -> patch tokens [N, (S/patch)^2, width]."""
        size = pixels.shape[-1]
        kw = {"interpolate_pos_encoding": True} if size != self.native else {}
        h = self.tower(pixel_values=pixels, **kw).last_hidden_state  # the kept layers' output (see _keep_used)
        if self.has_cls:
            h = h[:, 1:]
        n = self.grid(size) ** 2
        if h.shape[1] != n or math.isqrt(n) ** 2 != n:
            raise ValueError(f"encoder gave {h.shape[1]} patch tokens for {size} px images, expected {n}")
        return h
