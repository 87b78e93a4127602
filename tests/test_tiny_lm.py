"""The tiny MM1's pretrained LLM (`mmdata.demo.tiny_lm`, pipelines/mm1-tiny.yaml `decoder.pretrain`):
pretraining gives it induction heads, the copying that in-context learning rests on, and the tiny
MM1's decoder starts from those weights through `from_pretrained`."""

from __future__ import annotations

import pytest
import torch
from conftest import one_thread

from mmdata.demo import tiny_lm
from mmdata.mm1 import tiny
from mmdata.mm1.decoder import build_decoder
from mmdata.mm1.train import load_recipe


@pytest.mark.timeout(900)  # 800 steps on one thread: 3-4 minutes beside the other test worker
def test_the_tiny_lm_learns_to_copy_from_its_context(tmp_path):
    from transformers import AutoModelForCausalLM

    decoder = load_recipe(tiny.RECIPE, [f"model.decoder.model={tmp_path / 'lm'}"]).model.decoder
    pre = decoder.pretrain
    probe = tiny_lm.two_copies(torch.Generator().manual_seed(7), pre)  # a form it never trains on
    said: list[str] = []
    with one_thread():
        folder = tiny_lm.ensure(decoder.model, pre, said.append)
    lm = AutoModelForCausalLM.from_pretrained(folder)
    fresh = AutoModelForCausalLM.from_config(lm.config)
    assert tiny_lm.copied(fresh, *probe) < 0.02  # chance is 1 in 1020
    assert tiny_lm.copied(lm, *probe) >= 0.6, said  # measured: 90%
    stamp = (tmp_path / "lm" / "model.safetensors").stat().st_mtime_ns
    tiny_lm.ensure(folder, pre, said.append)  # the same recipe: reused, not built again
    assert (tmp_path / "lm" / "model.safetensors").stat().st_mtime_ns == stamp
    # the tiny MM1's decoder is these weights, for any tokenizer of up to vocab_size tokens
    built = build_decoder(decoder, pre.vocab_size)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), lm.state_dict().values()))
