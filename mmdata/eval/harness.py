"""Few-shot evaluation, OpenFlamingo's protocol, over any model with `generate` and `score`.

The model interface (`EvalModel`) is two methods over *interleaved prompts* — lists whose items
are text (str) or images (PIL):

- ``generate(prompts, max_new_tokens, num_beams, length_penalty) -> list[str]``: the continuation
  of each prompt (greedy when ``num_beams`` is 1), stopping where the model ends a text;
- ``score(prompts, continuations) -> list[float]``: the summed log-probability of each
  continuation after its prompt (used for the classification tasks).

Protocol (Awadalla et al. 2023, open_flamingo/eval): a fixed **query pool** of ``query_pool``
training examples drawn once with the seed; every test item draws its **own k demonstrations**
from that pool (seeded by the seed, the task, k and the item id, so a run is reproducible and
two runs with different k differ only in k); prompts follow templates (``<image>Output: {caption}``
and ``<image>Question: {question} Short answer: {answer}`` by default) with demonstrations
joined by ``separator``. OpenFlamingo's "0-shot" shows 2 text-only demonstrations
(``zero_shot_text_demos``). Captions are cut at the first line break or "Output"; answers at
"Question" / "Answer" / "Short", a comma, a sentence end or a line break.

Tasks: ``caption`` (CIDEr), ``vqa`` (VQA accuracy), ``icl`` (few-shot classification: the
demonstrations are the item's own labelled pictures, k/way per class; accuracy by comparing the
choices' log-probabilities, so chance is 1/way) and ``text`` (multiple choice by log-probability,
no images). Each (task, shots) gives one result line with n and a 95% interval (Student t over
items for CIDEr and VQA, Wilson for accuracies), plus its predictions in the results format of the
benchmark, so `mmdata eval score` reproduces the number.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field

from mmdata import fsio
from mmdata.config import Strict
from mmdata.eval import formats as fm
from mmdata.eval import score as sc
from mmdata.eval.metrics import wilson

IMAGE = "<image>"
Prompt = list  # of str | PIL.Image.Image


class EvalModel(Protocol):
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, num_beams: int = 1,
                 length_penalty: float = 1.0) -> list[str]: ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[float]: ...


# --- configuration -----------------------------------------------------------------------------


class Decoding(Strict):
    num_beams: int = Field(3, ge=1, description="1 = greedy")
    max_new_tokens: int = Field(20, ge=1)
    length_penalty: float = 0.0  # OpenFlamingo's setting for captions and VQA


class Prompts(Strict):
    caption: str = f"{IMAGE}Output: {{caption}}"
    vqa: str = f"{IMAGE}Question: {{question}} Short answer: {{answer}}"
    icl: str = f"{IMAGE}{{label}}."
    text: str = "{context} {answer}"
    separator: str = Field("", description="between demonstrations (OpenFlamingo: <|endofchunk|>)")


class CaptionTask(Strict):
    test: str = Field(..., description="COCO caption annotations or a Karpathy split file")
    test_split: str | None = Field(None, description="Karpathy split of the test items (test)")
    test_images: str = Field(..., description="folder (or webdataset shards) with the test images")
    train: str = Field(..., description="annotations the demonstrations come from")
    train_split: str | None = None
    train_images: str
    image_pattern: str | None = Field(None, description="file names by id, e.g. COCO_val2014_{image_id:012d}.jpg")


class VQATask(Strict):
    test_questions: str
    test_annotations: str
    test_images: str
    train_questions: str
    train_annotations: str
    train_images: str
    test_image_pattern: str = Field("{image_id}.jpg", description="VQAv2: COCO_val2014_{image_id:012d}.jpg")
    train_image_pattern: str = "{image_id}.jpg"


class ItemsTask(Strict):
    items: str = Field(..., description="JSON of items (the demo corpus's icl_test.json / text_test.json)")
    images: str | None = Field(None, description="folder of the items' images; default: beside the file")


class Tasks(Strict):
    caption: CaptionTask | None = None
    vqa: VQATask | None = None
    icl: ItemsTask | None = None
    text: ItemsTask | None = None


class EvalConfig(Strict):
    """An evaluation recipe (pipelines/eval-*.yaml)."""

    name: str = "eval"
    checkpoint: str | None = Field(None, description="model to evaluate (the trainer's checkpoint folder)")
    out: str = Field(..., description="folder for results.jsonl and predictions")
    seed: int = 0
    shots: list[int] = Field([0, 4, 8], description="demonstrations per prompt, any list")
    query_pool: int = Field(2048, ge=1, description="seeded pool of training examples demonstrations come from")
    max_items: int | None = Field(None, ge=1, description="evaluate a seeded subset of the test items")
    zero_shot_text_demos: int = Field(2, ge=0, description="OpenFlamingo's 0-shot: text-only demonstrations")
    batch_size: int = Field(8, ge=1)
    caption_decoding: Decoding = Decoding(num_beams=3, max_new_tokens=20)
    vqa_decoding: Decoding = Decoding(num_beams=3, max_new_tokens=5)
    prompts: Prompts = Prompts()
    tasks: Tasks = Tasks()


# --- prompts -----------------------------------------------------------------------------------


def render(template: str, images: Sequence[Any], **fields) -> Prompt:
    """A template with its fields filled, `<image>` markers replaced by ``images`` in order."""
    parts = template.format(**fields).split(IMAGE)
    if len(parts) - 1 != len(images):
        raise ValueError(f"template {template!r} has {len(parts) - 1} {IMAGE} markers for {len(images)} images")
    out: Prompt = []
    for k, text in enumerate(parts):
        if k:
            out.append(images[k - 1])
        if text:
            out.append(text)
    return out


def split_query(template: str, field: str) -> tuple[str, str]:
    """(the query part of a template, the answer's continuation): ``<image>Output: {caption}``
    -> (``<image>Output:``, `` {caption}``). The space before the answer belongs to the answer,
    as tokenizers that mark word starts see it; what follows the answer is not part of it."""
    mark = "{" + field + "}"
    if mark not in template:
        raise ValueError(f"template {template!r} has no {mark}")
    head = template[: template.index(mark)]
    query = head.rstrip(" ")
    return query, head[len(query) :] + mark


def join(parts: Sequence[Prompt], separator: str) -> Prompt:
    out: Prompt = []
    for k, p in enumerate(parts):
        if k and separator:
            out.append(separator)
        out.extend(p)
    merged: Prompt = []  # adjacent texts as one string
    for x in out:
        if isinstance(x, str) and merged and isinstance(merged[-1], str):
            merged[-1] += x
        else:
            merged.append(x)
    return merged


def item_rng(seed: int, *key) -> random.Random:
    return random.Random(int.from_bytes(hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest(), "little"))


def subset(ids: list, n: int | None, seed: int, what: str) -> list:
    if n is None or n >= len(ids):
        return list(ids)
    keep = set(range(len(ids))) & set(item_rng(seed, what).sample(range(len(ids)), n))
    return [ids[k] for k in sorted(keep)]


_CAPTION_END = re.compile(r"\n|Output")
_ANSWER_END = re.compile(r"Question|Answer|Short|\n|, |\.(?:\s|$)")


def clean_caption(text: str) -> str:
    return _CAPTION_END.split(text, maxsplit=1)[0].strip()


def clean_answer(text: str) -> str:
    return _ANSWER_END.split(text, maxsplit=1)[0].strip()


# --- tasks -------------------------------------------------------------------------------------


@dataclass
class Result:
    task: str
    shots: int
    metric: str
    score: float
    n: int
    ci95: list[float] | None
    chance: float | None = None
    seconds: float = 0.0

    def line(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()} | {
            "ci95": None if self.ci95 is None else [round(x, 4) for x in self.ci95]}


def plan(cfg: EvalConfig, tasks: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(task, shots) of every evaluation `Evaluator.run` makes, in its order."""
    names = [n for n in ("caption", "vqa", "icl", "text") if getattr(cfg.tasks, n) is not None]
    if tasks:
        unknown = set(tasks) - set(names)
        if unknown:
            raise fm.FormatError(f"task {min(unknown)!r} is not configured (configured: {', '.join(names)})")
        names = [n for n in names if n in tasks]
    out = []
    for name in names:
        if name == "text":
            shot_list = [0]  # a text task has no pictures to show
        elif name == "icl":
            shot_list = [k for k in cfg.shots if k > 0]  # with no demonstrations there is no mapping
        else:
            shot_list = list(cfg.shots)
        out += [(name, k) for k in shot_list]
    return out


class Evaluator:
    CACHE = 1024  # decoded images kept (the query pool's are drawn again and again)

    def __init__(self, cfg: EvalConfig, model: EvalModel, echo: Callable[[str], None] = print):
        self.cfg, self.model, self.echo = cfg, model, echo
        self._images: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def image(self, source: fm.Images, image_id: str):
        key = (source.source, str(image_id))
        if key in self._images:
            self._images.move_to_end(key)
        else:
            self._images[key] = source.open(image_id)
            if len(self._images) > self.CACHE:
                self._images.popitem(last=False)
        return self._images[key]

    def _batches(self, seq: list):
        b = self.cfg.batch_size
        for i in range(0, len(seq), b):
            yield seq[i : i + b]

    def _pool(self, ids: list, what: str) -> list:
        ids = list(ids)
        return subset(ids, self.cfg.query_pool, self.cfg.seed, f"pool:{what}")

    def _demos(self, pool: list, shots: int, what: str, item_id: str, exclude=()) -> tuple[list, bool]:
        """(demonstration ids, with images?) for one item."""
        text_only = shots == 0 and self.cfg.zero_shot_text_demos > 0
        k = self.cfg.zero_shot_text_demos if text_only else shots
        if k == 0:
            return [], True
        rng = item_rng(self.cfg.seed, what, shots, str(item_id))
        cands = [p for p in pool if p not in exclude]
        if len(cands) < k:
            raise fm.FormatError(f"{what}: the query pool has {len(cands)} examples, {k} demonstrations needed")
        return rng.sample(cands, k), not text_only

    # captioning
    def caption(self, shots: int) -> tuple[Result, list[dict]]:
        t, p = self.cfg.tasks.caption, self.cfg.prompts
        test = fm.read_captions(t.test, t.test_split)
        train = fm.read_captions(t.train, t.train_split)
        test_img = fm.Images(t.test_images, t.image_pattern, test.files)
        train_img = fm.Images(t.train_images, t.image_pattern, train.files)
        ids = subset(sorted(test.refs, key=_num), self.cfg.max_items, self.cfg.seed, "test:caption")
        pool = self._pool(sorted(train.refs, key=_num), "caption")
        query, _ = split_query(p.caption, "caption")
        prompts = []
        for iid in ids:
            demos, with_images = self._demos(pool, shots, "caption", iid)
            parts = [self._demo(p.caption, train_img if with_images else None, d, caption=train.refs[d][0])
                     for d in demos]
            prompts.append(join([*parts, render(query, [self.image(test_img, iid)])], p.separator))
        dec = self.cfg.caption_decoding
        outs = self._generate(prompts, dec)
        preds = {iid: clean_caption(o) for iid, o in zip(ids, outs)}
        res, _ = sc.caption_scores(preds, {i: test.refs[i] for i in ids})
        return (Result("caption", shots, "CIDEr", res["score"], res["n"], res["ci95"]),
                [{"image_id": _num(i), "caption": c} for i, c in preds.items()])

    def _demo(self, template: str, images: fm.Images | None, image_id: str, **fields) -> Prompt:
        if images is None:  # a text-only demonstration
            return render(template.replace(IMAGE, ""), [], **fields)
        return render(template, [self.image(images, image_id)], **fields)

    def _generate(self, prompts: list[Prompt], dec: Decoding) -> list[str]:
        outs: list[str] = []
        for batch in self._batches(prompts):
            outs += self.model.generate(batch, max_new_tokens=dec.max_new_tokens, num_beams=dec.num_beams,
                                        length_penalty=dec.length_penalty)
        return outs

    # VQA
    def vqa(self, shots: int) -> tuple[Result, list[dict]]:
        t, p = self.cfg.tasks.vqa, self.cfg.prompts
        test = fm.read_vqa(t.test_annotations, t.test_questions)
        train = fm.read_vqa(t.train_annotations, t.train_questions)
        test_img = fm.Images(t.test_images, t.test_image_pattern)
        train_img = fm.Images(t.train_images, t.train_image_pattern)
        qids = subset(sorted(test.questions, key=_num), self.cfg.max_items, self.cfg.seed, "test:vqa")
        pool = self._pool(sorted(train.answers, key=_num), "vqa")
        query, _ = split_query(p.vqa, "answer")
        prompts = []
        for qid in qids:
            demos, with_images = self._demos(pool, shots, "vqa", qid)
            parts = []
            for d in demos:
                answer = Counter(train.answers[d]).most_common(1)[0][0]
                q = train.questions[d]
                parts.append(self._demo(p.vqa, train_img if with_images else None, q["image_id"],
                                        question=q["question"], answer=answer))
            q = test.questions[qid]
            parts.append(render(query, [self.image(test_img, q["image_id"])], question=q["question"]))
            prompts.append(join(parts, p.separator))
        outs = self._generate(prompts, self.cfg.vqa_decoding)
        preds = {qid: clean_answer(o) for qid, o in zip(qids, outs)}
        res, _ = sc.vqa_scores(preds, test)
        return (Result("vqa", shots, "VQA accuracy", res["score"], res["n"], res["ci95"]),
                [{"question_id": _num(q), "answer": a} for q, a in preds.items()])

    # few-shot classification over the item's own labelled pictures
    def icl(self, shots: int) -> tuple[Result, list[dict]]:
        t, p = self.cfg.tasks.icl, self.cfg.prompts
        data = fm.load_json(t.items)
        items = _items(data, t.items, ("id", "query", "answer", "choices", "support"))
        way = len(items[0]["choices"])
        if shots % way:
            raise fm.FormatError(f"{t.items}: {shots} shots do not split evenly over {way} classes")
        images = fm.Images(t.images or str(Path(t.items).parent / data.get("images", "images")), "{image_id}")
        items = subset(items, self.cfg.max_items, self.cfg.seed, "test:icl")
        query, cont = split_query(p.icl, "label")
        prompts, conts, meta = [], [], []
        for it in items:
            rng = item_rng(self.cfg.seed, "icl", shots, str(it["id"]))
            by_label: dict[str, list[str]] = {}
            for s in it["support"]:
                by_label.setdefault(s["label"], []).append(s["image"])
            demos = [(lab, f) for lab in it["choices"] for f in rng.sample(by_label[lab], shots // way)]
            rng.shuffle(demos)
            parts = [render(p.icl, [self.image(images, f)], label=lab) for lab, f in demos]
            parts.append(render(query, [self.image(images, it["query"])]))
            prompt = join(parts, p.separator)
            for c in it["choices"]:
                prompts.append(prompt)
                conts.append(cont.format(label=c))
            meta.append(it)
        scores = self._score(prompts, conts)
        preds, right = [], 0
        for k, it in enumerate(meta):
            s = scores[k * way : (k + 1) * way]
            choice = it["choices"][max(range(way), key=s.__getitem__)]
            right += choice == it["answer"]
            preds.append({"id": it["id"], "prediction": choice, "answer": it["answer"]})
        lo, hi = wilson(right, len(meta))
        return (Result("icl", shots, "accuracy", 100 * right / len(meta), len(meta), [100 * lo, 100 * hi],
                       chance=100 / way), preds)

    def text(self, shots: int) -> tuple[Result, list[dict]]:
        t, p = self.cfg.tasks.text, self.cfg.prompts
        items = _items(fm.load_json(t.items), t.items, ("id", "context", "choices", "answer"))
        items = subset(items, self.cfg.max_items, self.cfg.seed, "test:text")
        query, cont = split_query(p.text, "answer")
        prompts, conts = [], []
        for it in items:
            for c in it["choices"]:
                prompts.append([query.format(context=it["context"])])
                conts.append(cont.format(answer=c))
        scores = self._score(prompts, conts)
        right, preds, k = 0, [], 0
        for it in items:
            s = scores[k : k + len(it["choices"])]
            k += len(it["choices"])
            best = max(range(len(s)), key=s.__getitem__)
            right += best == it["answer"]
            preds.append({"id": it["id"], "prediction": best, "answer": it["answer"]})
        lo, hi = wilson(right, len(items))
        chance = 100 / len(items[0]["choices"])
        return Result("text", 0, "accuracy", 100 * right / len(items), len(items), [100 * lo, 100 * hi],
                      chance=chance), preds

    def _score(self, prompts: list[Prompt], conts: list[str]) -> list[float]:
        out: list[float] = []
        pairs = list(zip(prompts, conts))
        for batch in self._batches(pairs):
            out += self.model.score([b[0] for b in batch], [b[1] for b in batch])
        return out

    def run(self, tasks: Sequence[str] | None = None, only: Sequence[tuple[str, int]] | None = None) -> list[Result]:
        """Every configured task at every shot count (or just the (task, shots) pairs `only` names);
        writes results.jsonl and predictions."""
        cfg = self.cfg
        results = []
        todo = plan(cfg, tasks)
        if only is not None:
            only = set(only)
            todo = [x for x in todo if x in only]
        for name, k in todo:
            start = time.perf_counter()
            res, preds = getattr(self, name)(k)
            res.seconds = time.perf_counter() - start
            fsio.write_json(fsio.join(cfg.out, f"predictions_{name}_{k}shot.json"), preds)
            results.append(res)
            self.echo(json.dumps(res.line()))
        lines = "".join(json.dumps(r.line()) + "\n" for r in results)
        fsio.atomic_write(fsio.join(cfg.out, "results.jsonl"), lines.encode())
        return results


def _num(x: str):
    """Ids back as the numbers they were (COCO ids are integers), else the string."""
    return int(x) if isinstance(x, str) and x.isdigit() else x


def _items(data: Any, url: str, fields: tuple[str, ...]) -> list[dict]:
    rows = fm._list(data, "items", url)
    out = [row for _, row in fm._rows(url, rows, fields, "items")]
    if not out:
        raise fm.FormatError(f"{url}: 'items' is empty")
    return out


Task = Literal["caption", "vqa", "icl", "text"]
