"""The demo corpus's evaluation tasks and the pages that teach them (galleries, quizzes, guides)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pandas as pd
from typer.testing import CliRunner

from mmdata.cli import app
from mmdata.demo import tasks
from mmdata.eval import formats as fm


def _file(root, url: str) -> bytes:
    return (root / "docs" / "images" / url.removeprefix("http://")).read_bytes()


def _pages(root):
    return [json.loads(line) for line in (root / "docs" / "truth.jsonl").read_text().splitlines()]


def test_eval_images_are_held_out(demo_corpus):
    root = demo_corpus
    hashes = pd.read_parquet(root / "eval" / "hashes.parquet")
    files = {p.relative_to(root / "eval").as_posix() for p in (root / "eval" / "images").rglob("*") if p.is_file()}
    assert set(hashes["file"]) == files and len(files) > 100
    for row in hashes.itertuples():
        assert hashlib.sha256((root / "eval" / row.file).read_bytes()).hexdigest() == row.sha256
    training = {hashlib.sha256(p.read_bytes()).hexdigest()
                for sub in ("pairs", "docs") for p in (root / sub / "images").rglob("*") if p.is_file()}
    assert not training & set(hashes["sha256"])
    assert hashes["sha256"].is_unique


def test_caption_and_vqa_files_in_the_real_formats(demo_corpus):
    ev = demo_corpus / "eval"
    for split in ("train", "test"):
        caps = fm.read_captions(str(ev / f"captions_{split}.json"))
        assert len(caps.refs) >= 20 and all(len(r) == 5 for r in caps.refs.values())
        images = fm.Images(str(ev / "images"), files=caps.files)
        some = next(iter(caps.refs))
        assert min(images.open(some).size) >= 200
        vqa = fm.read_vqa(str(ev / f"vqa_{split}_annotations.json"), str(ev / f"vqa_{split}_questions.json"))
        assert len(vqa.questions) == 3 * len(caps.refs) and all(len(a) == 10 for a in vqa.answers.values())
        assert {q["image_id"] for q in vqa.questions.values()} == set(caps.refs)
        assert set(vqa.answer_types.values()) == {"number", "other"}
    # the canonical caption names what the answers say
    caps = fm.read_captions(str(ev / "captions_test.json")).refs
    for qid, q in vqa.questions.items():
        if q["question"].startswith("What colour"):
            assert vqa.answers[qid][0] in caps[q["image_id"]][0]


def test_perfect_vqa_predictions_score_100(demo_corpus, tmp_path):
    ev = demo_corpus / "eval"
    anns = json.loads((ev / "vqa_test_annotations.json").read_text())["annotations"]
    preds = [{"question_id": a["question_id"], "answer": a["multiple_choice_answer"]} for a in anns]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    res = CliRunner().invoke(app, ["eval", "score", "--task", "vqa", "-p", str(tmp_path / "p.json"),
                                   "-r", str(ev / "vqa_test_annotations.json"), "-q", str(ev / "vqa_test_questions.json")])
    assert res.exit_code == 0 and json.loads(res.output)["score"] == 100.0


def test_icl_items_need_the_demonstrations(demo_corpus):
    icl = json.loads((demo_corpus / "eval" / "icl_test.json").read_text())
    assert icl["chance"] == 0.5 and len(icl["items"]) >= 20
    answers = Counter()
    gallery_classes = {c for p in _pages(demo_corpus) if p.get("kind") == "gallery" for c in p["classes"]}
    for it in icl["items"]:
        labels = Counter(s["label"] for s in it["support"])
        assert set(labels) == set(it["choices"]) and set(labels.values()) == {tasks.ICL_SUPPORT}
        assert it["answer"] in it["choices"] and it["query"] not in {s["image"] for s in it["support"]}
        assert not set(it["classes"]) & gallery_classes  # classes no training page shows
        answers[it["choices"].index(it["answer"])] += 1
    assert min(answers.values()) >= len(icl["items"]) // 4  # the answer is not always the first choice
    # label mappings are new per episode: the same name is not tied to one class
    by_label = {}
    for it in icl["items"]:
        for name, cls in zip(it["choices"], it["classes"]):
            by_label.setdefault(name, set()).add(cls)
    assert len(by_label) > 10


def test_galleries_are_bursty_episodes_with_repeats(demo_corpus):
    galleries = [p for p in _pages(demo_corpus) if p.get("kind") == "gallery"]
    assert len(galleries) >= 10
    repeated = 0
    for g in galleries:
        n = Counter(g["labels"])
        assert 2 <= len(n) <= 3 and min(n.values()) >= 2  # every class recurs on its page
        assert len(g["labels"]) == len(g["images"]) and 8 <= len(g["images"]) <= 14
        # the text after each picture starts with its name
        names = [p.split(".")[0] for p in g["paragraphs"][1:]]
        assert names == g["labels"]
        # one name, one class on a page
        assert all(len({c for c, lab in zip(g["classes"], g["labels"]) if lab == name}) == 1 for name in n)
        for url, first in g["repeat_of"].items():  # the same picture again, byte for byte
            assert _file(demo_corpus, url) == _file(demo_corpus, first) and url in g["images"]
        repeated += len(g["repeat_of"])
    assert repeated >= len(galleries) // 2
    # many rare labels: a name seldom recurs on another page
    per_page = [lab for g in galleries for lab in set(g["labels"])]
    assert len(set(per_page)) >= 0.8 * len(per_page)


def test_quizzes_and_guides_teach_the_eval_tasks(demo_corpus):
    pages = _pages(demo_corpus)
    quizzes = [p for p in pages if p.get("kind") == "quiz"]
    assert quizzes and all(p["images"] for p in quizzes)
    assert all(any(par.startswith(f"Question: {q} Short answer: {a}.") for par in p["paragraphs"])
               for p in quizzes for q, a in p["questions"])
    guides = [p for p in pages if p.get("kind") == "guide"]
    assert guides and not any(p["images"] for p in guides)  # text-only: only the text stream has them
    text = json.loads((demo_corpus / "eval" / "text_test.json").read_text())
    halls = tasks.hall_of(json.loads((demo_corpus / "manifest.json").read_text())["seed"])
    facts = {w.format(shapes=tasks.plural(s), hall=h) for s, h in halls.items() for w in tasks.GUIDE_FACTS}
    said = {f for f in facts if any(f in " ".join(p["paragraphs"]) for p in guides)}
    for it in text["items"]:
        answer = it["choices"][it["answer"]]
        assert halls[it["shape"]] == answer and len(set(it["choices"])) == 4
        assert it["context"].format() in {w.format(shapes=tasks.plural(it["shape"]), hall="").rstrip(" .")
                                          for w in tasks.GUIDE_FACTS}
        # every guide states the fact, in one of the wordings the test uses
        assert any(tasks.plural(it["shape"]) in f and answer in f for f in said)
