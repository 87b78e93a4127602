"""CIDEr-D, VQA accuracy and confidence intervals, in plain Python (no Java, no torch).

**Tokenisation** (what pycocoevalcap's Java PTB tokenizer does to captions, in Python): lower-case;
a word keeps inner hyphens, periods, slashes and ampersands (``t-shirt``, ``3.5``, ``and/or``); the
clitics ``n't 's 're 've 'll 'd 'm`` become their own tokens (``don't`` -> ``do n't``); the
punctuation pycocoevalcap drops after PTB tokenisation (. , ? ! : ; - -- ... quotes, brackets) is
dropped; other symbols ($ % # + = * @ …) are tokens of their own. On lower-case captions without
punctuation it is whitespace splitting, so scores equal pycocoevalcap's on its own tokens.

**CIDEr-D** (Vedantam et al. 2015, as pycocoevalcap computes it): n-grams 1-4 as tf-idf vectors,
the idf from the *evaluated set's* references (so the set must stay fixed between compared runs),
per n the clipped cosine ``sum_g min(h_g, r_g) r_g / (|h| |r|)`` times a Gaussian length penalty
``exp(-(l_h - l_r)^2 / 72)`` (σ = 6; lengths counted as pycocoevalcap does, in bigrams), averaged
over n and over references, × 10.

**VQA accuracy** (Antol et al. 2015, the official VQA evaluation): prediction and each of the 10
human answers normalised (punctuation, number words -> digits, articles dropped, contractions
restored); accuracy = the mean over the 10 leave-one-out subsets of min(1, matches / 3). Unlike the
official script, normalisation is applied even when all human answers agree (its quirk gives
"Two" 0 against ten "2"); on VQAv2's already-normalised answers the two agree otherwise.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import product

# --- tokenisation ------------------------------------------------------------------------------

_WORD = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[a-z0-9]+(?:[-./&][a-z0-9]+)*|\S")
# what pycocoevalcap's PTBTokenizer removes after tokenising (its PUNCTUATIONS, before PTB escapes)
_DROP = frozenset(".?!,:;-'\"`()[]{}…–—")


def tokenize(text: str) -> str:
    """A caption as space-separated tokens, the way pycocoevalcap sees it after PTB tokenisation."""
    s = text.lower().replace("’", "'").replace("‘", "'")
    # split clitics off their word before matching: "don't" -> "do n't", "dog's" -> "dog 's"
    s = re.sub(r"([a-z0-9])n't\b", r"\1 n't", s)
    s = re.sub(r"([a-z0-9])'(s|re|ve|ll|d|m)\b", r"\1 '\2", s)
    return " ".join(t for t in _WORD.findall(s) if t not in _DROP)


# --- CIDEr-D -----------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            c[tuple(tokens[i : i + k])] += 1
    return c


def cider(
    references: Mapping[object, Sequence[str]],
    predictions: Mapping[object, str],
    n: int = 4,
    sigma: float = 6.0,
    tokenized: bool = False,
) -> tuple[float, dict]:
    """(corpus CIDEr-D, {id: score}) over the ids of ``predictions`` (each must have references).

    ``tokenized=True`` takes the texts as already tokenised (split on whitespace only).
    """
    ids = list(predictions)
    if not ids:
        raise ValueError("no predictions to score")
    tok = (lambda s: s.split()) if tokenized else (lambda s: tokenize(s).split())
    refs = {}
    for i in ids:
        if i not in references or not references[i]:
            raise ValueError(f"no reference captions for id {i!r}")
        refs[i] = [_ngrams(tok(r), n) for r in references[i]]
    # document frequency: in how many images' reference sets an n-gram occurs
    df: Counter = Counter()
    for rs in refs.values():
        df.update(set().union(*rs))
    log_n = math.log(len(ids))

    def vec(counts: Counter):
        v: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            w = tf * (log_n - math.log(max(1.0, df.get(g, 0))))
            v[k][g] = w
            norm[k] += w * w
            if k == 1:  # pycocoevalcap's length is its bigram count
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = {}
    for i in ids:
        hv, hn, hl = vec(_ngrams(tok(predictions[i]), n))
        total = [0.0] * n
        for r in refs[i]:
            rv, rn, rl = vec(r)
            penalty = math.exp(-((hl - rl) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(w, rv[k].get(g, 0.0)) * rv[k].get(g, 0.0) for g, w in hv[k].items())
                if hn[k] and rn[k]:
                    dot /= hn[k] * rn[k]
                total[k] += dot * penalty
        scores[i] = 10.0 * (sum(total) / n) / len(refs[i])
    return sum(scores.values()) / len(scores), scores


# --- VQA accuracy ------------------------------------------------------------------------------

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# Contractions as the VQA evaluation restores them: any spelling with some apostrophes left out
# (`dont`, `couldnt've`, `couldn'tve`) becomes the full form.
_CONTRACTED_TEXT = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll it's let's ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd "
    "she'd've she'll she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll "
    "somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't "
    "we'd we'd've we're we've weren't what'll what're what's what've when's where'd where's where've "
    "who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all "
    "y'all'll y'all'd've you'd you'd've you'll you're you've"
)
_CONTRACTED = _CONTRACTED_TEXT.split()


def _variants(word: str) -> Iterable[str]:
    parts = word.split("'")
    for keep in product((False, True), repeat=len(parts) - 1):
        out = parts[0]
        for k, p in zip(keep, parts[1:]):
            out += ("'" if k else "") + p
        yield out


CONTRACTIONS = {v: w for w in _CONTRACTED for v in _variants(w) if v != w}
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern: a period not followed by a digit


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # punctuation beside a space (or anywhere in text with a "1,000" number) is removed; glued
        # punctuation becomes a space ("t-shirt" -> "t shirt")
        if (p + " " in text or " " + p in text) or _COMMA_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation: punctuation, number words, articles, contractions."""
    text = " ".join(answer.replace("\n", " ").replace("\t", " ").split())
    words = []
    for w in _punctuation(text).lower().split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """min(1, matches / 3) averaged over the leave-one-out subsets of the human answers."""
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    hits = [g == pred for g in gts]
    total = sum(hits)
    return sum(min(1.0, (total - h) / 3.0) for h in hits) / len(gts)


# --- confidence intervals ----------------------------------------------------------------------

# Student t, two-sided 95%, for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def mean_ci(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the 95% Student-t interval of the mean; no interval from one value."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    if n == 1:
        return m, None, None
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (keeps inside [0, 1] and works at 0 or n)."""
    if n <= 0:
        raise ValueError("no trials")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
