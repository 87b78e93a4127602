"""CIDEr-D and VQA accuracy against hand-computed values and pycocoevalcap; `mmdata eval score`."""

from __future__ import annotations

import json
import math
import random

import pytest
from typer.testing import CliRunner

from mmdata.cli import app
from mmdata.eval import formats as fm
from mmdata.eval.metrics import cider, mean_ci, normalize_answer, tokenize, vqa_accuracy, wilson


def test_cider_hand_computed():
    # Two images, so idf = ln 2 for every n-gram that occurs in one image's references only.
    refs = {"A": ["a b c"], "B": ["d e f"]}
    score, per = cider(refs, {"A": "a b", "B": "x"})
    # A: unigrams a, b against a, b, c: 2 ln2^2 / (sqrt2 ln2 * sqrt3 ln2); bigrams (a b) against
    # (a b), (b c): 1 / sqrt2; no 3- or 4-grams in the prediction; lengths 1 vs 2 bigrams.
    a = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert per["A"] == pytest.approx(a, abs=1e-12)
    assert per["B"] == 0.0  # no shared n-gram
    assert score == pytest.approx(a / 2, abs=1e-12)


def test_cider_ngram_in_every_image_weighs_nothing():
    # "a" occurs in both images' references: idf = ln2 - ln2 = 0, so predicting only it scores 0
    _, per = cider({"A": ["a b c d"], "B": ["a x y z"]}, {"A": "a", "B": "a"})
    assert per == {"A": 0.0, "B": 0.0}


def test_perfect_captions_score_the_maximum():
    # one reference of >= 4 words each and no n-gram shared by all images: every order's cosine is 1
    refs = {i: [f"w{i} q{i} r{i} s{i} t"] for i in range(5)}
    score, per = cider(refs, {i: r[0] for i, r in refs.items()})
    assert score == pytest.approx(10.0) and all(v == pytest.approx(10.0) for v in per.values())
    worse, _ = cider(refs, {i: r[0].rsplit(" ", 1)[0] for i, r in refs.items()})
    assert worse < score


def test_cider_equals_pycocoevalcap_on_plain_captions():
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    vocab = ("a", "an", "the", "red", "blue", "green", "circle", "square", "star", "on", "of", "two", "three",
             "with", "background", "plain", "sign")

    def sentence():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12)))

    refs = {i: [sentence() for _ in range(rng.randint(1, 5))] for i in range(200)}
    preds = {i: sentence() for i in refs}
    theirs, their_per = Cider().compute_score(refs, {i: [p] for i, p in preds.items()})
    ours, per = cider(refs, preds)  # our tokenizer: on such captions it is whitespace splitting
    assert abs(ours - theirs) < 1e-6
    assert max(abs(per[i] - s) for i, s in zip(refs, their_per)) < 1e-6


def test_tokenize_like_ptb_without_java():
    assert tokenize("A dog's ball, don't you think?") == "a dog 's ball do n't you think"
    assert tokenize('The "big" T-shirt (and/or) costs $3.50...') == "the big t-shirt and/or costs $ 3.50"
    assert tokenize("two red circles on a plain blue background") == "two red circles on a plain blue background"


@pytest.mark.parametrize("raw, norm", [
    ("Two.", "2"), ("ten", "10"), ("none", "0"),           # number words, trailing period
    ("the dog", "dog"), ("An apple, please", "apple please"),  # articles, free-standing comma
    ("t-shirt", "t shirt"), ("1,000", "1000"), ("3.5", "3.5"),  # glued punctuation, numbers
    ("Yes!", "yes"), ("dont", "don't"), ("couldnt've", "couldn't've"),  # contractions restored
    ("  red\tcar \n", "red car"),
])
def test_vqa_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_leave_one_out():
    assert vqa_accuracy("red", ["red"] * 10) == 1.0
    # 3 matches: the 3 subsets without one of them have 2 (2/3 each), the other 7 have 3 (1 each)
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0  # normalised on both sides
    assert vqa_accuracy("green", ["blue"] * 10) == 0.0


def test_intervals():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert mean_ci([5.0]) == (5.0, None, None)
    lo, hi = wilson(0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.1923, abs=1e-3)


# --- the score command ---------------------------------------------------------------------------


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _coco(tmp_path):
    caps = {1: ["two red circles on a blue background", "a pair of red circles"],
            2: ["one green star on a white wall", "green star on white"],
            3: ["three yellow squares over black", "yellow squares on a black background"]}
    anns = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in caps],
            "annotations": [{"image_id": i, "id": 10 * i + k, "caption": c} for i, cs in caps.items()
                            for k, c in enumerate(cs)]}
    return caps, _write(tmp_path / "captions.json", anns)


def _score(*args):
    res = CliRunner().invoke(app, ["eval", "score", *args])
    return res.exit_code, res.output


def test_score_captions_cli_matches_library(tmp_path):
    caps, refs = _coco(tmp_path)
    preds = _write(tmp_path / "p.json", [{"image_id": 1, "caption": "two red circles"},
                                         {"image_id": 2, "caption": "a green star"},
                                         {"image_id": 3, "caption": "yellow squares"}])
    code, out = _score("--task", "caption", "-p", preds, "-r", refs)
    assert code == 0, out
    result = json.loads(out)
    expect, _ = cider(caps, {1: "two red circles", 2: "a green star", 3: "yellow squares"})
    assert result["task"] == "caption" and result["n"] == 3 and result["missing_predictions"] == 0
    assert result["score"] == pytest.approx(100 * expect)
    assert result["ci95"][0] < result["score"] < result["ci95"][1]


def test_score_karpathy_split(tmp_path):
    images = [{"cocoid": i, "split": "test" if i < 3 else "train", "filepath": "val2014",
               "filename": f"{i}.jpg", "sentences": [{"raw": f"Caption number {i} here."}]} for i in range(5)]
    refs = _write(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    caps = fm.read_captions(refs, split="test")
    assert sorted(caps.refs) == ["0", "1", "2"] and caps.files["1"] == "val2014/1.jpg"
    preds = _write(tmp_path / "p.json", [{"image_id": i, "caption": f"caption number {i} here"} for i in range(3)])
    code, out = _score("--task", "caption", "-p", preds, "-r", refs, "--split", "test")
    assert code == 0 and json.loads(out)["score"] == pytest.approx(1000.0)  # perfect: CIDEr 10 = 1000%
    code, out = _score("--task", "caption", "-p", preds, "-r", refs, "--split", "restval")
    assert code == 2 and "no images in split 'restval'" in out


def test_score_vqa_cli(tmp_path):
    qs = {"data_subtype": "val2014", "questions": [
        {"question_id": 11, "image_id": 1, "question": "What colour are the circles?"},
        {"question_id": 12, "image_id": 1, "question": "How many circles are there?"}]}
    anns = {"annotations": [
        {"question_id": 11, "image_id": 1, "answer_type": "other", "answers": [{"answer": "red", "answer_id": k + 1} for k in range(10)]},
        {"question_id": 12, "image_id": 1, "answer_type": "number",
         "answers": [{"answer": "2", "answer_id": k + 1} for k in range(9)] + [{"answer": "3", "answer_id": 10}]}]}
    q, a = _write(tmp_path / "q.json", qs), _write(tmp_path / "a.json", anns)
    perfect = _write(tmp_path / "p.json", [{"question_id": 11, "answer": "Red."}, {"question_id": 12, "answer": "two"}])
    code, out = _score("--task", "vqa", "-p", perfect, "-r", a, "-q", q)
    assert code == 0, out
    result = json.loads(out)
    assert result["score"] == 100.0 and result["by_answer_type"] == {"number": 100.0, "other": 100.0}
    half = _write(tmp_path / "h.json", [{"question_id": 11, "answer": "blue"}, {"question_id": 12, "answer": "3"}])
    result = json.loads(_score("--task", "vqa", "-p", half, "-r", a)[1])
    assert result["score"] == pytest.approx(100 * (0 + 9 * (1 / 3) / 10) / 2)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1"),
    ({"a": 1}, "top level must be a list"),
    ([{"image_id": 1}], "p.json: [0]: missing field 'caption'"),
    ([{"image_id": 1, "caption": 5}], "p.json: [0].caption: must be a string"),
    ([{"image_id": 1, "caption": "x"}, {"image_id": "1", "caption": "y"}], "a second caption for image_id '1'"),
    ([{"image_id": 99, "caption": "x"}], "image_id '99' which has no reference captions"),
])
def test_score_bad_files_exit_2_with_one_line(tmp_path, content, message):
    _, refs = _coco(tmp_path)
    p = tmp_path / "p.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    code, out = _score("--task", "caption", "-p", str(p), "-r", refs)
    assert code == 2
    assert out.count("\n") == 1 and message in out and "Traceback" not in out


def test_score_bad_references(tmp_path):
    preds = _write(tmp_path / "p.json", [{"image_id": 1, "caption": "x"}])
    code, out = _score("--task", "caption", "-p", preds, "-r", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json: file not found" in out
    bad = _write(tmp_path / "r.json", {"annotations": [{"image_id": 1, "caption": "ok"}, {"caption": "x"}]})
    code, out = _score("--task", "caption", "-p", preds, "-r", bad)
    assert code == 2 and "r.json: annotations[1]: missing field 'image_id'" in out
    code, out = _score("--task", "vqa", "-p", preds, "-r", bad)
    assert code == 2 and "missing field 'question_id'" in out
    code, out = _score("--task", "bleu", "-p", preds, "-r", bad)
    assert code == 2 and "caption or vqa" in out


def test_images_from_a_folder_pattern_and_from_webdataset_shards(tmp_path):
    import io

    from PIL import Image

    from mmdata import samples

    def jpeg(colour):
        buf = io.BytesIO()
        Image.new("RGB", (20, 10), colour).save(buf, "JPEG")
        return buf.getvalue()

    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(jpeg("red"))
    folder = fm.Images(str(tmp_path / "val2014"), "COCO_val2014_{image_id:012d}.jpg")
    assert folder.open("42").getpixel((5, 5))[0] > 200
    with pytest.raises(fm.FormatError, match="image '7' not found"):
        folder.open("7")
    with samples.TarSink(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "000000001", "jpg": jpeg("blue"), "json": {"image_id": 42}})
        sink.write({"__key__": "000000002", "png": jpeg("green")})
    shards = fm.Images(str(tmp_path / "0000{0..0}.tar"))
    shards.load(["42", "000000002"])  # by the json's image_id, or by the key
    assert shards.open("42").getpixel((5, 5))[2] > 200 and shards.open("000000002").getpixel((5, 5))[1] > 100
    with pytest.raises(fm.FormatError, match="no image for id '9'"):
        shards.load(["9"])
