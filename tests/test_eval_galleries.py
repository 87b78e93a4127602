"""The gallery probe (mmdata.eval.galleries): the demo's few-shot pages as the trainer sees them."""

from __future__ import annotations

import json
import math

from mmdata.demo.tasks import LABELS
from mmdata.eval.galleries import gallery_probe


def test_gallery_probe_scores_every_name_as_trained(mm1_tiny, demo_shards, demo_corpus):
    from mmdata.mm1 import MM1

    model = MM1.from_pretrained(mm1_tiny.model)
    pages = [json.loads(line) for line in (demo_corpus / "docs" / "truth.jsonl").read_text().splitlines()]
    galleries = {p["url"]: p for p in pages if p.get("kind") == "gallery"}
    probe = gallery_probe(model, str(demo_shards), limit=4)
    print("\n".join(probe.lines()))
    assert 0 < probe.galleries <= len(galleries) and probe.docs > probe.galleries and probe.scored == min(4, probe.galleries)
    assert sum(probe.name_tokens.values()) == len(LABELS)
    # whole pages fit 512 tokens: every picture, and a name after each (but paragraphs the dedup stage dropped)
    assert 8 <= probe.pictures <= 14 and 0.8 * probe.pictures <= probe.names <= probe.pictures
    (mf, nf), (mr, nr) = probe.loss["first"], probe.loss["repeat"]
    assert nf + nr == round(probe.names * probe.scored) and nr > nf  # every class recurs on its page
    assert nf >= 2 * probe.scored and all(math.isfinite(x) and x > 0 for x in (mf, mr))
    assert 0 < probe.choice["repeat"][1] <= nr
    # the trainer's cuts: 4 images per sequence keep 4 pictures; 128 tokens keep fewer names
    assert gallery_probe(model, str(demo_shards), max_images=4, limit=4).pictures == 4
    short = gallery_probe(model, str(demo_shards), seq_len=128, limit=4)
    assert short.names < probe.names and short.pictures < probe.pictures


def test_gallery_probe_measures_how_far_apart_the_pictures_reach_the_decoder(mm1_tiny, demo_shards):
    import torch

    from mmdata.mm1 import MM1

    model = MM1.from_pretrained(mm1_tiny.model)
    probe = gallery_probe(model, str(demo_shards), limit=3)
    print(probe.lines()[-1])
    assert 0 < probe.image_spread < 1 and -1 <= probe.image_cosine < 1 - 1e-6
    assert probe.image_norm > 0 and probe.text_norm > 0
    assert probe.lines()[-1].startswith(f"image tokens: {100 * probe.image_spread:.1f}% of their energy")
    # a connector that ignores its input puts the same vector over every picture: nothing differs
    last = model.connector.readout[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)
    flat = gallery_probe(model, str(demo_shards), limit=3)
    assert abs(flat.image_spread) < 1e-9 and abs(flat.image_cosine - 1) < 1e-9
    assert abs(flat.image_norm - 0.5 * last.bias.numel() ** 0.5) < 1e-5
