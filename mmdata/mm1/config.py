"""Typed MM1 training recipes (`pipelines/mm1-*.yaml`), validated at the edge like every recipe.

A recipe names the model (image encoder, connector, decoder LLM, tokenizer), the data (a mixture
YAML or an inline mixture, sequence length, packing), the optimiser and schedule, and where the
run writes. Ablations vary any field in YAML (`connector.type`, `connector.tokens`,
`mixture.decode.image_size`, the mixture's weights) or with `--set dotted.path=value`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from mmdata.config import Mixture, Strict


class VisionPretraining(Strict):
    """A tiny CLIP ViT pretrained in code on freshly rendered demo scenes (`mmdata.demo.tiny_vision`):
    the stand-in for MM1's pretrained encoder where no weights can be downloaded (tests, the demo)."""

    image_size: int = Field(64, ge=8)
    patch_size: int = Field(8, ge=1)
    width: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    images: int = Field(8000, ge=64, description="scenes rendered once, reused across steps")
    steps: int = Field(4000, ge=1)
    attribute_weight: float = Field(
        0.1, ge=0, description="weight of the class token's colour, background and count losses; shape's is 1")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    seed: int = 0


class EncoderConfig(Strict):
    """Image encoder: any Hugging Face CLIP / SigLIP vision tower."""

    model: str | None = Field(None, description="hub id or local path (a full CLIP/SigLIP or a vision-only checkpoint)")
    config: dict[str, Any] | None = Field(
        None, description="random init from a vision config instead, e.g. {model_type: clip_vision_model, hidden_size: 64, ...}")
    pretrain: VisionPretraining | None = Field(
        None, description="build `model` (a local folder) with this recipe first when it is not there yet")
    feature_layer: int = Field(-1, description="hidden state fed to the connector: -1 last, -2 penultimate (LLaVA)")
    freeze: bool = Field(False, description="MM1 trains everything; freeze to train connector (+ LLM) only")

    @model_validator(mode="after")
    def _one_source(self) -> EncoderConfig:
        if (self.model is None) == (self.config is None):
            raise ValueError("set exactly one of model (hub id / path) or config (random init)")
        if self.pretrain is not None and self.model is None:
            raise ValueError("pretrain writes a local folder: set model to its path")
        return self


class ConnectorConfig(Strict):
    """Vision-language connector: patch grid -> `tokens` image tokens at the LLM's width."""

    type: Literal["c-abstractor", "avgpool", "attnpool"] = Field(
        "c-abstractor", description="c-abstractor (Honeybee); avgpool = the same module with no blocks; attnpool = learned queries")
    tokens: int = Field(144, ge=1, description="image tokens per image (MM1: 64 or 144); a square for c-abstractor/avgpool")
    depth: int = Field(3, ge=0, description="c-abstractor: RegNet bottleneck blocks per stage (Honeybee: 3)")
    hidden: int | None = Field(1024, ge=1, description="c-abstractor / attnpool width; None = the encoder's width")
    mlp_depth: int = Field(2, ge=1, description="readout MLP layers (Linear, SiLU, Linear)")
    pos_emb: bool | None = Field(None, description="learned position embedding on the patches; default on except avgpool")
    heads: int = Field(8, ge=1, description="attnpool: attention heads")
    freeze: bool = False

    @model_validator(mode="after")
    def _square(self) -> ConnectorConfig:
        if self.type != "attnpool" and math.isqrt(self.tokens) ** 2 != self.tokens:
            raise ValueError(f"tokens={self.tokens}: {self.type} pools to a square grid; use a square (64, 144, ...)")
        return self


class TokenizerTraining(Strict):
    """A byte-level BPE trained in code on the mixture's own text (tests and the demo)."""

    vocab_size: int = Field(1024, ge=300)
    samples: int = Field(2000, ge=1, description="samples read per source for training")


class LanguagePretraining(Strict):
    """A tiny LLM pretrained in code to copy from its context (induction heads) on random-token runs
    (`mmdata.demo.tiny_lm`): the stand-in for MM1's text-pretrained LLM where none can be downloaded."""

    config: dict[str, Any] = Field(..., description="the LM's config, e.g. {model_type: llama, hidden_size: 128, ...}")
    vocab_size: int = Field(1024, ge=64, description="token ids it learns; the run's tokenizer must not have more")
    steps: int = Field(800, ge=1)
    length: int = Field(128, ge=32, description="tokens per row")
    min_period: int = Field(4, ge=2)
    max_period: int = Field(24, ge=2)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _periods(self) -> LanguagePretraining:
        if not self.min_period <= self.max_period <= self.length // 2:
            raise ValueError(f"periods {self.min_period}-{self.max_period} must rise and fit twice in length {self.length}")
        return self


class DecoderConfig(Strict):
    """Decoder LLM: any Hugging Face causal LM; its own tokenizer unless `tokenizer` says otherwise."""

    model: str | None = Field(None, description="hub id or local path (AutoModelForCausalLM.from_pretrained)")
    config: dict[str, Any] | None = Field(
        None, description="random init from a config instead, e.g. {model_type: llama, hidden_size: 128, ...}; "
        "vocab_size comes from the tokenizer")
    tokenizer: str | None = Field(None, description="hub id or path; default: the model's own")
    train_tokenizer: TokenizerTraining | None = Field(None, description="train a BPE on the mixture's text instead")
    pretrain: LanguagePretraining | None = Field(
        None, description="build `model` (a local folder) with this recipe first when it is not there yet")
    attn_implementation: str = Field("sdpa", description="sdpa, eager, flex_attention, flash_attention_2 (where installed)")
    freeze: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> DecoderConfig:
        if (self.model is None) == (self.config is None):
            raise ValueError("set exactly one of model (hub id / path) or config (random init)")
        if self.model is None and self.tokenizer is None and self.train_tokenizer is None:
            raise ValueError("a decoder built from a config needs a tokenizer (path) or train_tokenizer")
        if self.pretrain is not None:
            if self.model is None:
                raise ValueError("pretrain writes a local folder: set model to its path")
            if self.tokenizer is None and self.train_tokenizer is None:
                raise ValueError("a pretrained tiny LM has no tokenizer of its own: set tokenizer or train_tokenizer")
            if self.train_tokenizer is not None and self.train_tokenizer.vocab_size > self.pretrain.vocab_size:
                raise ValueError(f"train_tokenizer.vocab_size {self.train_tokenizer.vocab_size} is more than the "
                                 f"pretrained LM's {self.pretrain.vocab_size}")
        return self


class ModelConfig(Strict):
    encoder: EncoderConfig
    connector: ConnectorConfig = ConnectorConfig()
    decoder: DecoderConfig
    image_token: str = Field("<image>", description="placeholder token; each image becomes `connector.tokens` of them")


class DataConfig(Strict):
    seq_len: int = Field(4096, ge=8, description="tokens per packed sequence (MM1: 4096)")
    max_images: int | None = Field(None, ge=1, description="images per sequence; default the mixture's decode.max_images (MM1: 16)")
    pack: bool = Field(True, description="several samples per sequence (document mask, positions restart); off: one per sequence")
    long: Literal["split", "truncate"] = Field(
        "split", description="a sample over seq_len tokens or max_images images: split into several documents (no text "
        "lost), or keep its first part (open_flamingo cuts documents to 256 tokens)")
    micro_batch: int = Field(8, ge=1, description="sequences per forward; a step's sequences run in micro-batches (accumulated)")
    num_workers: int = Field(2, ge=0, description="DataLoader workers per data rank (tokenise and pack there); must divide lanes")
    prefetch: int = Field(4, ge=1, description="batches each worker prepares ahead")
    data_ranks: int | None = Field(
        None, ge=1, description="sampler ranks (the mixture's world size); default the process count. A multiple of it: "
        "each process reads data_ranks / world_size of them, so 1 process can continue a 2-GPU run's exact stream")


class OptimConfig(Strict):
    """AdamW with per-part learning rates; cosine decay to `min_lr_ratio` after a linear warm-up."""

    lr: float | Literal["mm1"] = Field(
        "mm1", description="peak LR, or mm1: exp(-0.4214 ln N - 0.5535) with N the decoder's parameters (MM1)")
    connector_lr: float | None = Field(None, gt=0, description="default: lr")
    encoder_lr: float | None = Field(None, gt=0, description="default: lr")
    decoder_lr: float | None = Field(None, gt=0, description="default: lr")
    weight_decay: float | Literal["mm1"] = Field("mm1", description="mm1: 0.1 x the peak LR")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = Field(2000, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine ends at this share of the peak (MM1: 10%)")
    grad_clip: float | None = Field(1.0, gt=0)


class TrainConfig(Strict):
    steps: int = Field(..., ge=1, description="optimizer steps; one step = one global batch of the mixture")
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the encoder and decoder")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="with several processes: ddp, or fsdp (fully_shard)")
    backend: str | None = Field(None, description="torch.distributed backend; default nccl on CUDA, gloo on CPU")
    checkpoint_every: int = Field(1000, ge=1)
    keep: int = Field(3, ge=1, description="checkpoints kept (the newest)")
    log_every: int = Field(1, ge=1)
    progress: bool = Field(True, description="a progress bar on rank 0")
    tensorboard: bool = Field(True, description="TensorBoard events too, when tensorboard is installed")
    peak_tflops: float | None = Field(None, gt=0, description="device dense bf16 peak for MFU; default from the device table")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default torch's)")


class TrainRecipe(Strict):
    """A whole MM1 training run: `mmdata train --config pipelines/mm1-tiny.yaml`."""

    name: str = "mm1"
    out: str = Field(..., description="run folder (local or fsspec URL): checkpoints/, log.jsonl, model/")
    mixture: str | Mixture = Field(..., description="a mixture YAML path or an inline mixture")
    mixture_overrides: list[str] = Field(default_factory=list, description="--set style overrides of the mixture YAML")
    model: ModelConfig
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig
