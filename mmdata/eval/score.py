"""Score prediction files the way pycocoevalcap / the VQA evaluation do (`mmdata eval score`).

Scores are in percent, as papers print them (CIDEr 79.3 is pycocoevalcap's 0.793). Only ids with a
prediction are scored (as COCOEvalCap does, so Karpathy-test predictions score against the full
val2014 annotations); how many reference items had none is reported, never hidden. A prediction
for an id the references lack is an error.
"""

from __future__ import annotations

from collections import defaultdict

from mmdata.eval import formats as fm
from mmdata.eval.metrics import cider, mean_ci, vqa_accuracy


def _summary(metric: str, per_item: list[float], **extra) -> dict:
    m, lo, hi = mean_ci(per_item)
    return {"metric": metric, "score": 100 * m, "n": len(per_item),
            "ci95": None if lo is None else [100 * lo, 100 * hi], **extra}


def caption_scores(predictions: dict[str, str], refs: dict[str, list[str]]) -> tuple[dict, dict[str, float]]:
    unknown = [i for i in predictions if i not in refs]
    if unknown:
        raise fm.FormatError(f"prediction for image_id {unknown[0]!r} which has no reference captions "
                             f"({len(unknown)} such)")
    _, per = cider(refs, predictions)
    out = _summary("CIDEr", [per[i] for i in predictions], missing_predictions=len(set(refs) - set(predictions)))
    return out, per


def vqa_scores(predictions: dict[str, str], vqa: fm.VQA) -> tuple[dict, dict[str, float]]:
    unknown = [q for q in predictions if q not in vqa.answers]
    if unknown:
        raise fm.FormatError(f"answer for question_id {unknown[0]!r} which has no annotation ({len(unknown)} such)")
    per = {q: vqa_accuracy(a, vqa.answers[q]) for q, a in predictions.items()}
    by_type = defaultdict(list)
    for q, acc in per.items():
        if q in vqa.answer_types:
            by_type[vqa.answer_types[q]].append(acc)
    extra = {"missing_predictions": len(set(vqa.answers) - set(predictions))}
    if by_type:
        extra["by_answer_type"] = {t: round(100 * sum(v) / len(v), 4) for t, v in sorted(by_type.items())}
    return _summary("VQA accuracy", list(per.values()), **extra), per


def score(task: str, predictions: str, references: str, questions: str | None = None,
          split: str | None = None) -> dict:
    """The metric of a prediction file against its references, as a JSON-ready dict."""
    if task == "caption":
        preds = fm.read_caption_predictions(predictions)
        result, _ = caption_scores(preds, fm.read_captions(references, split).refs)
    elif task == "vqa":
        preds = fm.read_vqa_predictions(predictions)
        result, _ = vqa_scores(preds, fm.read_vqa(references, questions))
    else:
        raise fm.FormatError(f"unknown task {task!r}: caption or vqa")
    return {"task": task, **result}
