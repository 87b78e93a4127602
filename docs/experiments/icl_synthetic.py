"""Can the tiny MM1 learn in-context induction at all? (docs/eval.md, "In-context learning", reading 6)

Trains a saved MM1 (`MM1.from_pretrained`) with its own loss on clean synthetic episodes, no pipeline:
10 (key, "Name.") pairs of 2 classes (`--pairs`, `--ways`), names from the demo's LABELS drawn afresh per episode, and asks
every `--every` steps how often the right name of a query key scores above the other
(log-probability of the whole name, as the `icl` task scores; 100 episodes, 8 demonstrations):

- `--keys repeat`: the key is a rendered demo picture, the query the very same picture as a
  demonstration (the easiest form of the task: match the picture, copy what followed it);
- `--keys picture`: a new picture of the class (the `icl` task's form);
- `--keys text`: the key is a one-token word instead of a picture (text-only induction);
- `--keys word`: the same word and its name on one line ("key Name."), the query the key alone.

`--fresh-decoder` re-initialises the decoder; `--induction N` first pretrains it N steps to copy from
its context, as `mmdata.demo.tiny_lm` does (docs/eval.md, reading 7).

Keys of 250 classes train; the reported accuracy is on 50 classes never trained (and on training
classes every 3rd report). `spread` is the share of the image tokens' energy that differs between
pictures (`mmdata.eval.galleries`), `norm` their mean norm.

    .venv/bin/python docs/experiments/icl_synthetic.py work/ablate/runs/4-tokens/seed0/model --steps 3000
    ... --fresh-connector                    # the connector re-initialised
    ... --fresh-connector --freeze-connector  # and kept as initialised (encoder frozen too)
    ... --keys picture --fresh-decoder --induction 800 --fresh-connector  # reading 7: 94% at 150 steps
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmdata.demo import images as im
from mmdata.demo import tasks, tiny_lm
from mmdata.mm1 import MM1
from mmdata.mm1.config import LanguagePretraining
from mmdata.mm1.connector import build_connector
from mmdata.mm1.pack import Packer

PAIRS, SHOTS, CLASSES, TRAIN_CLASSES, VIEWS = 10, 8, 300, 250, 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--keys", choices=("repeat", "picture", "text", "word"), default="repeat")
    ap.add_argument("--fresh-connector", action="store_true")
    ap.add_argument("--freeze-connector", action="store_true")
    ap.add_argument("--ways", type=int, default=2, help="classes per training episode (the evaluation stays 2-way)")
    ap.add_argument("--pairs", type=int, default=PAIRS, help="(key, name) pairs per training episode")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--induction", type=int, default=0,
                    help="first train the decoder this many steps on repeated random token runs (text-only induction)")
    ap.add_argument("--fresh-decoder", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = MM1.from_pretrained(a.model)
    if a.fresh_connector:
        torch.manual_seed(0)
        model.connector = build_connector(model.cfg.connector, model.encoder.grid(model.image.size) ** 2,
                                          model.encoder.width, model.decoder.get_input_embeddings().embedding_dim)
    if a.fresh_decoder:
        torch.manual_seed(0)
        fresh = type(model.decoder)(model.decoder.config)
        model.decoder.load_state_dict(fresh.state_dict())
    if a.induction:
        vocab = model.decoder.get_input_embeddings().num_embeddings
        tiny_lm.pretrain(model.decoder, LanguagePretraining(config={}, vocab_size=vocab, steps=a.induction), print)
    if a.freeze_connector:
        model.connector.requires_grad_(False)
        model.encoder.requires_grad_(False)
    size, enc = model.image.size, model.codec
    r = np.random.default_rng(0)
    concepts: list = []
    while len(concepts) < CLASSES:
        c = im.random_concept(r)
        if all(im.differs(c, d) for d in concepts[-50:]):
            concepts.append(c)

    def pixels(c, i: int, k: int) -> torch.Tensor:
        img = im.render(c, 96, 80, np.random.default_rng([i, k])).convert("RGB").resize((size, size))
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()

    pool = [[pixels(c, i, k) for k in range(VIEWS)] for i, c in enumerate(concepts)]
    words = [w for t in range(300, len(enc.tok)) if (w := enc.tok.decode([t])).strip() and enc.text(w) == [t]]
    if len(words) < CLASSES:
        raise SystemExit(f"the tokenizer has {len(words)} one-token words, {CLASSES} needed")
    names, packer = list(tasks.LABELS), Packer(enc, 256, 16)
    none = torch.zeros(0, 3, size, size, dtype=torch.uint8)

    def key(c: int, view: int):
        return words[c] if a.keys in ("text", "word") else pool[c][0 if a.keys == "repeat" else view]

    def episode(rg, classes) -> tuple[list, list[str], list[int]]:
        cls = rg.choice(classes, a.ways, replace=False)
        nm = [names[i] for i in rg.choice(len(names), a.ways, replace=False)]
        order = list(range(a.ways)) * 2 + [int(x) for x in rg.integers(a.ways, size=a.pairs - 2 * a.ways)]
        rg.shuffle(order)
        if a.keys == "word":  # key and name on one line: "word Name." (no line break between them)
            return [f"{key(int(cls[c]), 0)} {nm[c]}." for c in order], nm, [int(x) for x in cls]
        return [x for c in order for x in (key(int(cls[c]), int(rg.integers(VIEWS))), f"{nm[c]}.")], nm, [int(x) for x in cls]

    def batch(rg) -> dict:
        slots, images = [], []
        for _ in range(16):
            seq, _, _ = episode(rg, range(TRAIN_CLASSES))
            row = []
            for x in seq:
                if isinstance(x, torch.Tensor):
                    row.append(len(images))
                    images.append(x)
                else:
                    row.append(x)
            slots.append(row)
        return packer({"slots": slots, "images": torch.stack(images) if images else none})

    @torch.no_grad()
    def accuracy(classes, seed: int, n: int = 100) -> float:
        model.eval()
        rg, right = np.random.default_rng(seed), 0
        for _ in range(n):
            cls = rg.choice(classes, 2, replace=False)
            nm = [names[i] for i in rg.choice(len(names), 2, replace=False)]
            order = [0, 1] * (SHOTS // 2)
            rg.shuffle(order)
            views = [list(rg.permutation(VIEWS)) for _ in range(2)]
            shown: list[list[int]] = [[], []]
            ctx: list = []
            for c in order:
                v = int(views[c].pop())
                shown[c].append(v)
                ctx += [f"{key(int(cls[c]), v)} {nm[c]}."] if a.keys == "word" else [key(int(cls[c]), v), f"{nm[c]}."]
            q = int(rg.integers(2))
            qkey = key(int(cls[q]), shown[q][0] if a.keys == "repeat" else int(views[q].pop()))
            prompt = ctx if a.keys == "word" else ctx + [qkey]
            imgs = [x for x in prompt if isinstance(x, torch.Tensor)]
            scores = []
            for name in nm:
                e = enc.encode(prompt + [f"{qkey} {name}." if a.keys == "word" else f"{name}."], eos=False)
                logits = model(torch.tensor([e.ids]), torch.arange(len(e.ids))[None], None,
                               torch.stack(imgs) if imgs else none, return_logits=True)[0]
                toks = enc.text(f" {name}." if a.keys == "word" else f"{name}.")
                assert e.ids[-len(toks):] == toks
                lp = torch.log_softmax(logits[len(e.ids) - len(toks) - 1 : -1].float(), -1)
                scores.append(float(lp[torch.arange(len(toks)), torch.tensor(toks)].sum()))
            right += int(np.argmax(scores) == q)
        model.train()
        return right / n

    @torch.no_grad()
    def spread() -> tuple[float, float]:
        x = model.image_tokens(torch.stack([pool[c][0] for c in range(0, CLASSES, 5)])).double()
        flat = x.flatten(1)
        return float(1 - (flat.mean(0) ** 2).sum() / (flat * flat).sum(1).mean()), float(x.norm(dim=-1).mean())

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.05)
    rg, t0 = np.random.default_rng(1), time.time()
    for step in range(1, a.steps + 1):
        b = batch(rg)
        out = model(b["input_ids"], b["position_ids"], b["targets"], b["pixels"])
        loss = out["loss_sum"] / out["targets"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.every == 0:
            s, norm = spread()
            line = (f"step {step} loss {loss.item():.3f} spread {100 * s:.1f}% norm {norm:.1f} "
                    f"unseen keys {100 * accuracy(range(TRAIN_CLASSES, CLASSES), 7):.0f}%")
            if step % (3 * a.every) == 0:
                line += f" training keys {100 * accuracy(range(TRAIN_CLASSES), 8):.0f}%"
            print(f"{line} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
