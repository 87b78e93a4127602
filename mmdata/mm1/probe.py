"""A quick check that a model trained on the demo corpus sees its images: greedy captions of freshly
rendered demo images (never in any corpus: new concepts, new random placement) must name the
shape's colour and the shape. Chance is 1/8 for each (8 colours, 8 shapes). The full evaluation
(CIDEr, VQA, few-shot) is `mmdata eval`; this probe is what the demo and the trainer's test print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmdata.demo import images as im

SHAPE_WORDS = {s: re.compile(rf"\b{s}(e?s)?\b") for s in im.SHAPES}
COLOUR_WORDS = re.compile(r"\b(" + "|".join(im.COLOURS) + r")\b")


@dataclass
class ProbeResult:
    n: int
    colour: float  # share of captions whose first colour word is the shape's colour
    shape: float  # share naming the right shape (and no other)
    both: float
    background: float  # share whose second colour word is the background's
    examples: list[tuple[str, str]]  # (truth, generated), the first few

    def line(self) -> str:
        return (f"held-out demo images, greedy captions: colour {100 * self.colour:.0f}%, shape {100 * self.shape:.0f}%, "
                f"both {100 * self.both:.0f}%, background {100 * self.background:.0f}% of {self.n} "
                f"(chance 12.5% / 12.5% / 1.6% / 12.5%)")


def images(n: int, seed: int = 0) -> list[tuple[im.Concept, object]]:
    """`n` (concept, PIL image) pairs, drawn as the demo draws its pictures (one to three shapes, the
    probe's own seeds: never in any corpus)."""
    out = []
    for i in range(n):
        rng = im.seeded_rng("mm1-probe", seed, i)
        c = im.random_concept(rng)
        w, h = int(rng.integers(220, 400)), int(rng.integers(200, 360))
        out.append((c, im.render(c, w, h, rng)))
    return out


def parse(caption: str) -> tuple[str | None, str | None, str | None]:
    """(first colour word, the one shape named or None, second colour word: the background's)."""
    text = caption.lower()
    colours = COLOUR_WORDS.findall(text)
    shapes = [s for s, pat in SHAPE_WORDS.items() if pat.search(text)]
    return (colours[0] if colours else None), (shapes[0] if len(shapes) == 1 else None), \
        (colours[1] if len(colours) > 1 else None)


def caption_probe(model, n: int = 64, seed: int = 0, batch_size: int = 32) -> ProbeResult:
    data = images(n, seed)
    captions = model.generate([[img] for _, img in data], max_new_tokens=16, batch_size=batch_size)
    hits_c = hits_s = hits_b = hits_g = 0
    for (c, _), cap in zip(data, captions):
        colour, shape, ground = parse(cap)
        hits_c += colour == c.colour
        hits_s += shape == c.shape
        hits_b += colour == c.colour and shape == c.shape
        hits_g += ground == c.background
    return ProbeResult(n, hits_c / n, hits_s / n, hits_b / n, hits_g / n,
                       [(im.true_caption(c), cap) for (c, _), cap in list(zip(data, captions))[:5]])
