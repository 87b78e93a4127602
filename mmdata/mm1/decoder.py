"""Decoder LLM: any Hugging Face causal LM (hub id, local path, or a config for random init).

Packed sequences reach it as `inputs_embeds` with `position_ids` that restart at 0 for every
sample and no attention mask: transformers then derives the block-diagonal (document) mask from
the positions for whichever attention kernel is configured (sdpa and eager: a materialised mask;
flex_attention: a block mask; flash_attention_2: variable-length sequences). That only holds for
models built on transformers' mask utilities and only without a KV cache, so `check_packing` runs
a two-document probe when the decoder is built and refuses a model whose samples would see each
other.
"""

from __future__ import annotations

import torch
from torch import nn

from mmdata.mm1.config import DecoderConfig


class PackingError(RuntimeError):
    """The decoder lets packed samples attend to each other."""


def build_decoder(cfg: DecoderConfig, vocab: int) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.config is not None:
        kw = dict(cfg.config)
        conf = AutoConfig.for_model(kw.pop("model_type", "llama"), **{**kw, "vocab_size": vocab})
        model = AutoModelForCausalLM.from_config(conf, attn_implementation=cfg.attn_implementation)
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, attn_implementation=cfg.attn_implementation,
                                                     dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings < vocab:  # the image token was added to the tokenizer
        model.resize_token_embeddings(vocab, mean_resizing=True)
    model.config.use_cache = False  # training: a cache would switch off the packed-sequence mask
    return model


def hidden_states(decoder: nn.Module, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Last hidden states of packed sequences (no cache, document mask from the positions)."""
    return decoder.base_model(inputs_embeds=embeds, position_ids=positions, use_cache=False).last_hidden_state


def logits(decoder: nn.Module, h: torch.Tensor) -> torch.Tensor:
    out = decoder.get_output_embeddings()(h)
    cap = getattr(decoder.config, "final_logit_softcapping", None)  # Gemma 2
    if cap:
        out = torch.tanh(out / cap) * cap
    return out


@torch.no_grad()
def check_packing(decoder: nn.Module, tol: float = 1e-3) -> None:
    """Two short documents packed in one row must give each the hidden states it has alone."""
    p = next(decoder.parameters())
    emb = decoder.get_input_embeddings()
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, emb.num_embeddings, (1, n), generator=g).to(p.device) for n in (5, 3))
    pos = torch.cat([torch.arange(5), torch.arange(3)]).unsqueeze(0).to(p.device)
    was = decoder.training
    decoder.eval()
    try:
        both = hidden_states(decoder, emb(torch.cat([a, b], 1)), pos)[:, 5:]
        alone = hidden_states(decoder, emb(b), pos[:, 5:])
    finally:
        decoder.train(was)
    err = (both.float() - alone.float()).abs().max().item()
    scale = alone.float().abs().max().item() + 1e-6
    if err > tol * max(1.0, scale):
        raise PackingError(
            f"decoder {type(decoder).__name__} ({decoder.config._attn_implementation}) lets packed samples attend to "
            f"each other (max difference {err:.3g}); use a model built on transformers' mask utilities, or data.pack: false")
