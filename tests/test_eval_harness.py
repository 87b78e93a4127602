"""The few-shot protocol on the demo corpus's eval tasks, with two simple models of the interface:
a nearest-neighbour reader of the demonstrations (in-context learning without training) and a
context-blind one. They check the protocol and that the tasks measure what they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmdata.cli import app
from mmdata.eval import harness as hz


def _pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((24, 24)), dtype=np.float32)


class NearestDemo:
    """Answers with the text that followed the demonstration picture closest to the query picture."""

    def __init__(self):
        self.prompts = []

    def _nearest(self, prompt):
        *context, query = [x for x in prompt if not isinstance(x, str)] or [None]
        if query is None or not context:
            return None
        follow = {}
        for k, x in enumerate(prompt[:-1]):
            if not isinstance(x, str) and isinstance(prompt[k + 1], str):
                follow[id(x)] = prompt[k + 1]
        q = _pixels(query)
        best = min(context, key=lambda im: float(np.abs(_pixels(im) - q).mean()))
        return follow.get(id(best), "")

    def generate(self, prompts, max_new_tokens, num_beams=1, length_penalty=1.0):
        self.prompts += prompts
        out = []
        for p in prompts:
            text = self._nearest(p) or ""
            # the demonstration's answer is what follows the query's own text in the template
            out.append(text.split("Output:", 1)[-1].split("Short answer:", 1)[-1])
        return out

    def score(self, prompts, continuations):
        self.prompts += prompts
        return [float(bool(self._nearest(p)) and self._nearest(p).strip(" .").startswith(c.strip(" .")))
                for p, c in zip(prompts, continuations)]


class Blind:
    """Ignores the context: prefers the alphabetically first choice."""

    def generate(self, prompts, max_new_tokens, num_beams=1, length_penalty=1.0):
        return ["red" for _ in prompts]

    def score(self, prompts, continuations):
        return [-ord(c.strip()[0]) for c in continuations]


def _config(corpus, out, **kw) -> hz.EvalConfig:
    ev = corpus / "eval"
    tasks = {
        "caption": {"test": str(ev / "captions_test.json"), "test_images": str(ev / "images"),
                    "train": str(ev / "captions_train.json"), "train_images": str(ev / "images")},
        "vqa": {"test_questions": str(ev / "vqa_test_questions.json"), "test_annotations": str(ev / "vqa_test_annotations.json"),
                "train_questions": str(ev / "vqa_train_questions.json"), "train_annotations": str(ev / "vqa_train_annotations.json"),
                "test_images": str(ev / "images/test"), "train_images": str(ev / "images/train")},
        "icl": {"items": str(ev / "icl_test.json")},
        "text": {"items": str(ev / "text_test.json")},
    }
    return hz.EvalConfig(out=str(out), tasks=tasks, **kw)


def test_protocol_prompts(demo_corpus, tmp_path):
    model = NearestDemo()
    cfg = _config(demo_corpus, tmp_path, shots=[0, 4], query_pool=16, max_items=10)
    ev = hz.Evaluator(cfg, model, echo=lambda s: None)
    ev.caption(4)
    prompts4 = list(model.prompts)
    assert len(prompts4) == 10
    for p in prompts4:
        images = [x for x in p if not isinstance(x, str)]
        texts = [x for x in p if isinstance(x, str)]
        assert len(images) == 5 and texts[-1] == "Output:" and texts[0].startswith("Output: ")
    # fresh demonstrations per item, from a fixed pool of 16 training images
    demo_sets = [tuple(id(x) for x in p[:-2] if not isinstance(x, str)) for p in prompts4]
    assert len(set(demo_sets)) == 10
    assert len({i for s in demo_sets for i in s}) <= 16
    queries = {id([x for x in p if not isinstance(x, str)][-1]) for p in prompts4}
    assert len(queries) == 10 and not queries & {i for s in demo_sets for i in s}
    # reproducible: the same seed draws the same demonstrations; another seed others
    model.prompts.clear()
    hz.Evaluator(cfg, model, echo=lambda s: None).caption(4)
    again = [[x for x in p if isinstance(x, str)] for p in model.prompts]
    assert again == [[x for x in p if isinstance(x, str)] for p in prompts4]
    model.prompts.clear()
    hz.Evaluator(cfg.model_copy(update={"seed": 1}), model, echo=lambda s: None).caption(4)
    assert [[x for x in p if isinstance(x, str)] for p in model.prompts] != again
    # OpenFlamingo's 0-shot: two text-only demonstrations, then the query image
    model.prompts.clear()
    ev.caption(0)
    p = model.prompts[0]
    assert [type(x).__name__ for x in p][-2:] != ["str", "str"] and sum(not isinstance(x, str) for x in p) == 1
    assert p[0].count("Output: ") == 2


def test_icl_task_needs_in_context_learning(demo_corpus, tmp_path):
    cfg = _config(demo_corpus, tmp_path, shots=[4, 8])
    near = {r.shots: r for r in hz.Evaluator(cfg, NearestDemo(), echo=lambda s: None).run(["icl"])}
    blind = {r.shots: r for r in hz.Evaluator(cfg, Blind(), echo=lambda s: None).run(["icl"])}
    for k in (4, 8):
        # reading the demonstrations solves it; ignoring them is chance (the interval holds 50%)
        assert near[k].score >= 90 and near[k].ci95[0] > 50
        assert blind[k].ci95[0] <= 50 <= blind[k].ci95[1] and blind[k].chance == 50


def test_results_lines_and_rescoring(demo_corpus, tmp_path):
    cfg = _config(demo_corpus, tmp_path, shots=[0, 2], max_items=12, zero_shot_text_demos=0)
    results = hz.Evaluator(cfg, NearestDemo(), echo=lambda s: None).run()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(x["task"], x["shots"]) for x in lines] == [
        ("caption", 0), ("caption", 2), ("vqa", 0), ("vqa", 2), ("icl", 2), ("text", 0)]
    assert all(x["n"] == 12 for x in lines)
    for x in lines:
        assert set(x) >= {"task", "shots", "metric", "score", "n", "ci95"}
    by = {(r.task, r.shots): r for r in results}
    assert by[("caption", 0)].score == 0.0 and by[("caption", 2)].score > 0  # nothing to copy at 0 shots
    ev = demo_corpus / "eval"
    for task, refs, extra in (("caption", ev / "captions_test.json", []),
                              ("vqa", ev / "vqa_test_annotations.json", ["-q", str(ev / "vqa_test_questions.json")])):
        res = CliRunner().invoke(app, ["eval", "score", "--task", task, "-p", str(tmp_path / f"predictions_{task}_2shot.json"),
                                       "-r", str(refs), *extra])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["score"] == pytest.approx(by[(task, 2)].score, abs=1e-3)
        assert json.loads(res.output)["missing_predictions"] > 0  # a subset was evaluated, and it says so


def test_templates():
    q, cont = hz.split_query("<image>Output: {caption}", "caption")
    assert (q, cont.format(caption="a dog")) == ("<image>Output:", " a dog")
    q, cont = hz.split_query("<image>{label}.", "label")
    assert (q, cont.format(label="Dax")) == ("<image>", "Dax")
    a, b = object(), object()  # pictures
    p = hz.join([hz.render("<image>Output: {caption}", [a], caption="x"), hz.render(q, [b])], "\n")
    assert p == [a, "Output: x\n", b]
    with pytest.raises(ValueError, match="markers"):
        hz.render("<image><image>{x}", [a], x=1)
    assert hz.clean_caption(" two red circles\nOutput: x") == "two red circles"
    assert hz.clean_answer(" red. Here we have what") == "red"
    assert hz.clean_answer("3.5 Question: x") == "3.5"
