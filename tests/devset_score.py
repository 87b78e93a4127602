"""Scores an extraction against the labelled dev set in tests/devset/ (see its README).

Per page: image recall and precision (an emitted URL matches a true image when it contains the
image's key; each true occurrence is matched at most once, so an image used twice must be
emitted twice), order (the longest in-order run of the matched images over the matched count)
and bag-of-words text F1 (lower-cased words, counted with multiplicity). Macro over pages.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from pathlib import Path

DEVSET = Path(__file__).resolve().parent / "devset"
_WORD = re.compile(r"\w+")


def load() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(DEVSET.glob("*.json"))]


def match(urls: list[str], keys: list[str]) -> list[int]:
    """Truth index matched by each emitted URL (-1: none). In order where the page allows it."""
    free = [True] * len(keys)
    out, last = [], -1
    for url in urls:
        hits = [j for j, k in enumerate(keys) if free[j] and k in url]
        j = next((j for j in hits if j > last), hits[0] if hits else -1)
        if j >= 0:
            free[j] = False
            last = j
        out.append(j)
    return out


def _lis(seq: list[int]) -> int:
    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        tails[i:i + 1] = [x]
    return len(tails)


def f1(pred: str, truth: str) -> float:
    p, t = Counter(_WORD.findall(pred.lower())), Counter(_WORD.findall(truth.lower()))
    common = sum((p & t).values())
    if not common:
        return 0.0
    prec, rec = common / sum(p.values()), common / sum(t.values())
    return 2 * prec * rec / (prec + rec)


def score_page(truth: dict, urls: list[str], text: str) -> dict:
    m = match(urls, truth["images"])
    hit = [j for j in m if j >= 0]
    return {
        "page": truth["page"],
        "truth": len(truth["images"]),
        "emitted": len(urls),
        "recall": len(hit) / len(truth["images"]) if truth["images"] else None,
        "precision": len(hit) / len(urls) if urls else None,
        "order": _lis(hit) / len(hit) if hit else None,
        "text_f1": f1(text, "\n".join(truth["text"])),
        "missed": [k for j, k in enumerate(truth["images"]) if j not in hit],
        "extra": [u for u, j in zip(urls, m) if j < 0],
    }


def macro(rows: list[dict]) -> dict:
    out = {}
    for k in ("recall", "precision", "order", "text_f1"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = sum(vals) / len(vals) if vals else 0.0
    return out


def table(rows: list[dict]) -> str:
    def fmt(v):
        return "  -  " if v is None else f"{v:5.3f}"

    lines = [f"{'page':<36} {'true':>4} {'out':>4} {'recall':>6} {'prec':>6} {'order':>6} {'textF1':>6}"]
    for r in rows:
        lines.append(f"{r['page']:<36} {r['truth']:>4} {r['emitted']:>4} {fmt(r['recall']):>6} {fmt(r['precision']):>6} "
                     f"{fmt(r['order']):>6} {fmt(r['text_f1']):>6}")
    m = macro(rows)
    lines.append(f"{'macro':<46} {m['recall']:6.3f} {m['precision']:6.3f} {m['order']:6.3f} {m['text_f1']:6.3f}")
    return "\n".join(lines)
