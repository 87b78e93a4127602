"""Evaluation tasks of the demo corpus, in the formats real benchmarks use: ``eval/`` of a corpus.

Every image here is rendered under its own seed key, so none is (byte- or pixel-) identical to a
training image; ``eval/hashes.parquet`` lists their sha256 for the dedup stage's ``eval_set`` rule.

Layout of ``eval/``::

    images/{train,test}/<id>.jpg          captioning / VQA images (train = the demonstration pool)
    images/icl/<id>.jpg                   few-shot episode images
    captions_{train,test}.json            COCO caption annotations, 5 correct captions per image
    vqa_{train,test}_questions.json       VQAv2 questions (what colour / how many / which shape)
    vqa_{train,test}_annotations.json     VQAv2 annotations, 10 answers per question
    icl_test.json                         few-shot classification episodes (below)
    text_test.json                        text-only multiple choice (below)
    hashes.parquet                        file, split, sha256 of every image above

**Few-shot (in-context) task**: 2-way episodes. Each episode draws two visual classes (a concept:
shape, colour, count, background, texture; its pictures differ in placement, size and turn) from
classes no training gallery uses, and names them with two words from `LABELS` assigned at random
per episode, so the mapping is new at test time and the answer can only come from the
demonstrations: chance is 50% without in-context learning. An item holds 4 labelled pictures per
class and a query picture of one of them (another picture of that class).

**Text task**: the museum's visitor guide (text-only pages of the corpus, no images, so only the
text stream carries them) says in which hall each shape is shown; an item is a sentence about one
shape with the hall left out and the 4 candidate halls (chance 25%).

The same module provides the vocabulary the corpus pages use (labels, halls, question templates),
so training pages and tasks stay consistent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmdata.demo import images as im

# --- shared vocabulary ---------------------------------------------------------------------------


def _labels() -> tuple[str, ...]:
    # Made-up names (consonant-vowel syllables): many rare labels, none an English word or a colour/shape.
    rng = np.random.default_rng(20221)
    cons, vows, ends = "bdfgklmnprstvz", "aeiou", ("", "n", "k", "l", "m", "s", "x")
    out: list[str] = []
    while len(out) < 240:
        w = (str(rng.choice(list(cons))) + str(rng.choice(list(vows))) + str(rng.choice(list(cons)))
             + str(rng.choice(list(vows))) + str(rng.choice(ends)))
        w = w.capitalize()
        if w not in out:
            out.append(w)
    return tuple(out)


LABELS = _labels()
HALLS = ("Amber Hall", "Cedar Hall", "Willow Hall", "Granite Hall", "Harbour Hall", "Orchard Hall",
         "Lantern Hall", "Meadow Hall")
ICL_WAY = 2
ICL_SUPPORT = 4  # labelled pictures per class in an item (8-shot uses all of them)


def held_out_class(c: im.Concept) -> bool:
    """One visual class in eight is kept for the few-shot test: no training gallery shows it."""
    key = f"{c.shape}|{c.colour}|{c.count}|{c.background}|{c.texture}".encode()
    return hashlib.blake2b(key, digest_size=2).digest()[0] % 8 == 0


def class_concept(r: np.random.Generator, held_out: bool) -> im.Concept:
    while True:
        c = im.random_concept(r)
        c = im.Concept(c.shape, c.colour, c.count, c.background, c.texture)  # no sign: the class is the picture
        if held_out_class(c) == held_out:
            return c


def episode_classes(r: np.random.Generator, n: int, held_out: bool) -> list[im.Concept]:
    """n classes that differ pairwise in shape and colour (visible at any resolution)."""
    out: list[im.Concept] = []
    while len(out) < n:
        c = class_concept(r, held_out)
        if all(c.shape != o.shape and c.colour != o.colour for o in out):
            out.append(c)
    return out


def hall_of(seed: int) -> dict[str, str]:
    """shape -> hall, the visitor guide's facts (fixed per corpus seed)."""
    order = im.seeded_rng(seed, "halls").permutation(len(HALLS))
    return {shape: HALLS[k] for shape, k in zip(im.SHAPES, order)}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def questions(c: im.Concept) -> list[tuple[str, str, str, str]]:
    """(question, answer, question_type, answer_type) about a picture, VQAv2 style (digits for counts)."""
    shapes = plural(c.shape) if c.count > 1 else c.shape
    be = "are" if c.count > 1 else "is"
    return [
        (f"What colour {be} the {shapes}?", c.colour, "what color is the", "other"),
        (f"How many {plural(c.shape)} are there?", str(c.count), "how many", "number"),
        ("Which shape is shown?", c.shape, "which", "other"),
    ]


GUIDE_FACTS = (
    "The {shapes} are shown in the {hall}.",
    "If you want to see the {shapes}, go to the {hall}.",
    "All of the museum's {shapes} hang in the {hall}.",
    "You will find the {shapes} in the {hall}.",
)
# the test asks with the guide's own wording, the hall left out
TEXT_PROMPTS = ("The {shapes} are shown in the", "If you want to see the {shapes}, go to the",
                "All of the museum's {shapes} hang in the", "You will find the {shapes} in the")


# --- building the eval folder --------------------------------------------------------------------


def _size(r: np.random.Generator) -> tuple[int, int]:
    w = int(r.integers(224, 321))
    return w, int(np.clip(w / r.uniform(0.75, 1.34), 200, 400))


def _render(key: tuple, c: im.Concept, r: np.random.Generator) -> bytes:
    w, h = _size(r)
    return im.make_image(im.ImageJob(key, c, w, h, "JPEG", 90))


def _refs(c: im.Concept, r: np.random.Generator) -> list[str]:
    """5 correct captions: the canonical one and 4 in the pairs' own phrasings."""
    caps = [im.true_caption(c)]
    while len(caps) < 5:
        cap = im.english_caption(c, r)
        if cap not in caps:
            caps.append(cap)
    return caps


def _coco(split: str, items: list[dict]) -> dict:
    return {
        "info": {"description": f"mmdata demo captions, {split}", "version": "1"},
        "images": [{"id": it["id"], "file_name": it["file"], "width": it["w"], "height": it["h"]} for it in items],
        "annotations": [{"id": it["id"] * 10 + k, "image_id": it["id"], "caption": cap}
                        for it in items for k, cap in enumerate(it["captions"])],
    }


def _vqa(split: str, items: list[dict]) -> tuple[dict, dict]:
    qs, anns = [], []
    for it in items:
        for k, (q, a, qtype, atype) in enumerate(it["questions"]):
            qid = it["id"] * 10 + k
            qs.append({"image_id": it["id"], "question": q, "question_id": qid})
            anns.append({"question_id": qid, "image_id": it["id"], "question_type": qtype, "answer_type": atype,
                         "multiple_choice_answer": a,
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]})
    head = {"info": {"description": f"mmdata demo VQA, {split}"}, "task_type": "Open-Ended", "data_type": "demo",
            "data_subtype": split}
    return {**head, "questions": qs}, {**head, "annotations": anns}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def build_eval(out: Path, n: int, seed: int, workers: int = 1) -> dict:
    """Write the eval folder: ``n`` test images (and as many in the demonstration pool), ``n``
    few-shot episodes over ``n / 2`` held-out classes, ``n`` text items. Returns counts."""
    from concurrent.futures import ThreadPoolExecutor

    jobs: list[tuple[str, tuple, im.Concept, np.random.Generator]] = []
    splits: dict[str, list[dict]] = {}
    for split in ("train", "test"):
        items = []
        for i in range(n):
            r = im.seeded_rng(seed, "eval", split, i)
            c = im.random_concept(r)
            iid = (1 if split == "train" else 2) * 100000 + i
            item = {"id": iid, "file": f"{split}/{iid}.jpg", "concept": c, "captions": _refs(c, r),
                    "questions": questions(c)}
            jobs.append((item["file"], (seed, "eval-image", split, i), c, r))
            items.append(item)
        splits[split] = items

    # few-shot: an album of pictures per held-out class; each episode pairs two albums
    rng = im.seeded_rng(seed, "eval", "icl")
    albums = []
    for a in range(max(4, n // 2)):
        c = class_concept(rng, held_out=True)
        files = []
        for j in range(ICL_SUPPORT + 2):
            f = f"icl/{a:05d}-{j}.jpg"
            jobs.append((f, (seed, "eval-icl", a, j), c, im.seeded_rng(seed, "eval-icl-size", a, j)))
            files.append(f)
        albums.append((c, files))
    episodes = []
    for e in range(n):
        first = int(rng.integers(len(albums)))
        others = [b for b, (c, _) in enumerate(albums)
                  if c.shape != albums[first][0].shape and c.colour != albums[first][0].colour]
        pick = [first, int(rng.choice(others))]
        names = [str(x) for x in rng.choice(LABELS, size=ICL_WAY, replace=False)]
        q = int(rng.integers(ICL_WAY))
        support, query = [], None
        for k, (b, name) in enumerate(zip(pick, names)):
            files = [albums[b][1][j] for j in rng.permutation(ICL_SUPPORT + 2)]
            support += [{"image": f, "label": name} for f in files[:ICL_SUPPORT]]
            if k == q:
                query = files[ICL_SUPPORT]
        episodes.append({"id": e, "query": query, "answer": names[q], "choices": names, "support": support,
                         "classes": [im.true_caption(albums[b][0]) for b in pick]})

    halls = hall_of(seed)
    rng = im.seeded_rng(seed, "eval", "text")
    text_items = []
    for t in range(n):
        shape = str(rng.choice(im.SHAPES))
        prompt = str(rng.choice(TEXT_PROMPTS)).format(shapes=plural(shape))
        wrong = [h for h in HALLS if h != halls[shape]]
        choices = [halls[shape], *(str(x) for x in rng.choice(wrong, size=3, replace=False))]
        order = rng.permutation(4)
        choices = [choices[k] for k in order]
        text_items.append({"id": t, "shape": shape, "context": prompt, "choices": choices,
                           "answer": choices.index(halls[shape])})

    img_dir = out / "images"
    files = [j[0] for j in jobs]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        blobs = list(pool.map(lambda j: _render(j[1], j[2], j[3]), jobs))
    sizes = {}
    for f, blob in zip(files, blobs):
        path = img_dir / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        from PIL import Image

        with Image.open(path) as img:
            sizes[f] = img.size
    for split, items in splits.items():
        for it in items:
            it["w"], it["h"] = sizes[it["file"]]
        _write_json(out / f"captions_{split}.json", _coco(split, items))
        qs, anns = _vqa(split, items)
        _write_json(out / f"vqa_{split}_questions.json", qs)
        _write_json(out / f"vqa_{split}_annotations.json", anns)
    _write_json(out / "icl_test.json", {"task": "fewshot_classification", "way": ICL_WAY, "chance": 1 / ICL_WAY,
                                        "images": "images", "items": episodes})
    _write_json(out / "text_test.json", {"task": "multiple_choice", "chance": 0.25, "items": text_items})
    pd.DataFrame({"file": [f"images/{f}" for f in files], "split": [f.split("/")[0] for f in files],
                  "sha256": [hashlib.sha256(b).hexdigest() for b in blobs]}).to_parquet(out / "hashes.parquet", index=False)
    return {"images": len(files), "caption_test": n, "vqa_test": 3 * n, "icl_test": n, "text_test": n}
