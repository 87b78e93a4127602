"""A tiny pretrained LLM for the tiny MM1: a causal LM built from a config and pretrained in about a
minute on CPU to copy from its context, saved with `save_pretrained` and loaded by the tiny MM1
through the decoder's `from_pretrained` path.

MM1's decoder is a pretrained LLM, and its few-shot learning rests on what text pretraining gave
that LLM: heads that find where the current token occurred before and copy what followed it
(induction heads, Olsson et al. 2022). The tiny decoder trained from nothing on the demo mixture
never forms them in the steps 2 cores give, not even on clean synthetic episodes (docs/eval.md,
"In-context learning", reading 7), so it is pretrained first, on the classic synthetic task: a
random run of tokens with a random period (4-24) repeated to the end of the row. Every token after
the first period is predictable only by copying. A fixed period would be learnt by a positional head
instead (in 200 steps, with no induction); with random periods the loss stays at ln(vocab) for about
400 steps and then drops within 200 (the induction phase change).

The weights learn no language: they see token ids only, so any tokenizer of at most `vocab_size`
tokens fits them (the tiny MM1 trains its BPE on the mixture's text afterwards). The check, echoed
and kept in `built.json`: two copies of a random run at random places among random tokens, a form
never trained on; the share of the second copy predicted (chance: 1 / vocab).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmdata.demo import built
from mmdata.mm1.config import LanguagePretraining

log = logging.getLogger(__name__)

FIRST = 4  # ids below are the tokenizer's special tokens (pad, BOS, EOS, image): never in the runs


def periodic(g, cfg: LanguagePretraining):
    """A batch of rows, each a random run repeated with a random period; targets -100 where nothing
    can be known yet (the first period)."""
    import torch

    at = torch.arange(cfg.length)
    period = torch.randint(cfg.min_period, cfg.max_period + 1, (cfg.batch_size, 1), generator=g)
    run = torch.randint(FIRST, cfg.vocab_size, (cfg.batch_size, cfg.max_period), generator=g)
    seq = torch.gather(run, 1, at[None] % period)
    tgt = torch.where(at[None] + 1 >= period, seq.roll(-1, 1), -100)
    tgt[:, -1] = -100
    return seq, tgt


def two_copies(g, cfg: LanguagePretraining, rows: int = 64):
    """Random tokens with one random run (4-32 tokens) shown twice at random places: targets on the
    second copy only."""
    import torch

    n = cfg.length
    seq = torch.randint(FIRST, cfg.vocab_size, (rows, n), generator=g)
    tgt = torch.full_like(seq, -100)
    for r in range(rows):
        k = int(torch.randint(4, min(32, n // 2) + 1, (1,), generator=g))
        a = int(torch.randint(0, n - 2 * k + 1, (1,), generator=g))
        b = int(torch.randint(a + k, n - k + 1, (1,), generator=g))
        seq[r, b : b + k] = seq[r, a : a + k]
        tgt[r, b : b + k - 1] = seq[r, b + 1 : b + k]
    return seq, tgt


def copied(model, seq, tgt) -> float:
    """Share of the targets that are the model's top prediction."""
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        hit = tgt != -100
        share = float((model(seq).logits.argmax(-1)[hit] == tgt[hit]).float().mean())
    model.train(was)
    return share


def pretrain(model, cfg: LanguagePretraining, echo=log.info) -> dict:
    """Train `model` (a causal LM of at least `cfg.vocab_size` tokens) in place on the periodic runs;
    what the check measured."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    g, check = torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1)
    held = two_copies(check, cfg)
    t0, loss, share = time.time(), float("nan"), 0.0
    model.train()
    for step in range(1, cfg.steps + 1):
        seq, tgt = periodic(g, cfg)
        out = torch.nn.functional.cross_entropy(model(seq).logits.flatten(0, 1), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        out.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warm.step()
        loss = out.item()
        if step % max(1, cfg.steps // 4) == 0 or step == cfg.steps:
            share = copied(model, *held)  # the last one is also what built.json keeps
            echo(f"tiny LM step {step}/{cfg.steps}: loss {loss:.3f}, two copies {100 * share:.0f}% "
                 f"of the second copy predicted ({time.time() - t0:.0f}s)")
    return {"loss": loss, "two_copies": share, "seconds": round(time.time() - t0, 1)}


def train(out_dir: str | Path, cfg: LanguagePretraining, echo=log.info) -> Path:
    """Build the LM from `cfg.config`, pretrain it and save_pretrained into `out_dir` (+ built.json)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    kw = dict(cfg.config)
    conf = AutoConfig.for_model(kw.pop("model_type", "llama"), **{**kw, "vocab_size": cfg.vocab_size})
    model = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    info = pretrain(model, cfg, echo)
    model.config.use_cache = False
    return built.save(out_dir, [model], recipe(cfg), info)


def recipe(cfg: LanguagePretraining) -> dict:
    return {"model": "tiny-lm", **cfg.model_dump()}


def ensure(out_dir: str | Path, cfg: LanguagePretraining, echo=log.info) -> str:
    """The LM in `out_dir` (a `decoder.model` folder), pretrained first when it is missing,
    unfinished or built with another recipe (never silently reused)."""
    built.ensure([out_dir], recipe(cfg), lambda: train(out_dir, cfg, echo), "decoder.model", echo)
    return str(out_dir)
