"""Readers for the files evaluation users already have, with one-line errors naming file and field.

- Captions: COCO caption annotations (``{"images": [...], "annotations": [{"image_id", "caption"}]}``)
  or a Karpathy split file (``{"images": [{"split", "sentences": [{"raw"}], "cocoid" | "imgid",
  "filepath", "filename"}]}``, pick a ``split``).
- Caption results (COCO results format): ``[{"image_id", "caption"}]``.
- VQAv2: questions (``{"questions": [{"question_id", "image_id", "question"}], "data_subtype"}``)
  and annotations (``{"annotations": [{"question_id", "image_id", "answers": [{"answer"}]}]}``);
  results ``[{"question_id", "answer"}]``.
- Images: a folder (local or any fsspec URL) with the file names the annotations give, or a name
  pattern (``COCO_val2014_{image_id:012d}.jpg``), or webdataset shards (the image whose key, or
  whose json ``image_id``, is the id).

Ids are compared as strings, so ``42`` and ``"42"`` name the same image.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mmdata import fsio, samples


class FormatError(ValueError):
    """A user's file is not what it should be; the message is one line naming file and field."""


def load_json(url: str) -> Any:
    try:
        data = fsio.read_bytes(str(url))
    except FileNotFoundError:
        raise FormatError(f"{url}: file not found") from None
    except (IsADirectoryError, PermissionError, OSError) as e:
        raise FormatError(f"{url}: cannot read: {e}") from None
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise FormatError(f"{url}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{url}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None


def _id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise FormatError(f"{where}: must be an integer or a non-empty string, got {value!r}")
    return str(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: must be a string, got {type(value).__name__}")
    return value


def _list(data: Any, key: str | None, url: str) -> list:
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise FormatError(f"{url}: no {key!r} list at the top level")
        data = data[key]
    if not isinstance(data, list):
        raise FormatError(f"{url}: {'top level' if key is None else repr(key)} must be a list")
    return data


def _rows(url: str, rows: list, fields: tuple[str, ...], name: str):
    for i, row in enumerate(rows):
        where = f"{url}: {name}[{i}]"
        if not isinstance(row, dict):
            raise FormatError(f"{where}: must be an object")
        for f in fields:
            if f not in row:
                raise FormatError(f"{where}: missing field {f!r}")
        yield where, row


# --- captions ----------------------------------------------------------------------------------


@dataclass
class Captions:
    """One captioning split: reference captions and, where the file names them, image files."""

    refs: dict[str, list[str]]
    files: dict[str, str] = field(default_factory=dict)


def read_captions(url: str, split: str | None = None) -> Captions:
    data = load_json(url)
    if isinstance(data, dict) and "annotations" in data:
        return _coco_captions(url, data)
    if isinstance(data, dict) and isinstance(data.get("images"), list) and any(
        isinstance(x, dict) and "sentences" in x for x in data["images"]
    ):
        return _karpathy(url, data, split)
    raise FormatError(f"{url}: neither COCO caption annotations ('annotations') nor a Karpathy split "
                      "('images' with 'sentences')")


def _coco_captions(url: str, data: dict) -> Captions:
    refs: dict[str, list[str]] = {}
    for where, row in _rows(url, _list(data, "annotations", url), ("image_id", "caption"), "annotations"):
        refs.setdefault(_id(row["image_id"], f"{where}.image_id"), []).append(
            _text(row["caption"], f"{where}.caption"))
    files = {}
    for where, row in _rows(url, data.get("images") or [], ("id",), "images"):
        if "file_name" in row:
            files[_id(row["id"], f"{where}.id")] = _text(row["file_name"], f"{where}.file_name")
    if not refs:
        raise FormatError(f"{url}: 'annotations' is empty")
    return Captions(refs, files)


def _karpathy(url: str, data: dict, split: str | None) -> Captions:
    refs, files = {}, {}
    splits = Counter()
    for where, row in _rows(url, data["images"], ("sentences",), "images"):
        splits[row.get("split")] += 1
        if split is not None and row.get("split") != split:
            continue
        key = row.get("cocoid", row.get("imgid"))
        if key is None:
            raise FormatError(f"{where}: missing field 'cocoid' (or 'imgid')")
        iid = _id(key, f"{where}.cocoid")
        sents = _list(row["sentences"], None, f"{where}.sentences")
        caps = []
        for j, s in enumerate(sents):
            if not isinstance(s, dict) or "raw" not in s:
                raise FormatError(f"{where}.sentences[{j}]: missing field 'raw'")
            caps.append(_text(s["raw"], f"{where}.sentences[{j}].raw"))
        if not caps:
            raise FormatError(f"{where}: no sentences")
        refs[iid] = caps
        if "filename" in row:
            files[iid] = "/".join(p for p in (row.get("filepath"), row["filename"]) if p)
    if not refs:
        have = ", ".join(f"{k}: {v}" for k, v in sorted(splits.items(), key=str))
        raise FormatError(f"{url}: no images in split {split!r} (splits: {have})")
    return Captions(refs, files)


def read_caption_predictions(url: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for where, row in _rows(url, _list(load_json(url), None, url), ("image_id", "caption"), ""):
        iid = _id(row["image_id"], f"{where}.image_id")
        if iid in out:
            raise FormatError(f"{where}: a second caption for image_id {row['image_id']!r}")
        out[iid] = _text(row["caption"], f"{where}.caption")
    if not out:
        raise FormatError(f"{url}: no predictions")
    return out


# --- VQA ---------------------------------------------------------------------------------------


@dataclass
class VQA:
    """VQAv2-style questions with their human answers (when annotations were given)."""

    questions: dict[str, dict]  # question_id -> {"image_id", "question"}
    answers: dict[str, list[str]] = field(default_factory=dict)
    answer_types: dict[str, str] = field(default_factory=dict)
    subtype: str | None = None  # data_subtype of the questions file, e.g. "val2014"


def read_vqa(annotations: str | None, questions: str | None = None) -> VQA:
    if annotations is None and questions is None:
        raise FormatError("VQA needs an annotations file, a questions file or both")
    out = VQA({})
    if questions is not None:
        data = load_json(questions)
        for where, row in _rows(questions, _list(data, "questions", questions),
                                ("question_id", "image_id", "question"), "questions"):
            qid = _id(row["question_id"], f"{where}.question_id")
            if qid in out.questions:
                raise FormatError(f"{where}: question_id {row['question_id']!r} appears twice")
            out.questions[qid] = {"image_id": _id(row["image_id"], f"{where}.image_id"),
                                  "question": _text(row["question"], f"{where}.question")}
        out.subtype = data.get("data_subtype") if isinstance(data, dict) else None
    if annotations is not None:
        data = load_json(annotations)
        for where, row in _rows(annotations, _list(data, "annotations", annotations),
                                ("question_id", "answers"), "annotations"):
            qid = _id(row["question_id"], f"{where}.question_id")
            if qid in out.answers:
                raise FormatError(f"{where}: question_id {row['question_id']!r} appears twice")
            answers = _list(row["answers"], None, f"{where}.answers")
            texts = []
            for j, a in enumerate(answers):
                if not isinstance(a, dict) or "answer" not in a:
                    raise FormatError(f"{where}.answers[{j}]: missing field 'answer'")
                texts.append(_text(a["answer"], f"{where}.answers[{j}].answer"))
            if not texts:
                raise FormatError(f"{where}: no answers")
            out.answers[qid] = texts
            if isinstance(row.get("answer_type"), str):
                out.answer_types[qid] = row["answer_type"]
            if questions is None:
                out.questions[qid] = {"image_id": _id(row.get("image_id", ""), f"{where}.image_id"),
                                      "question": ""}
            elif qid not in out.questions:
                raise FormatError(f"{where}: question_id {row['question_id']!r} is not in {questions}")
    return out


def read_vqa_predictions(url: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for where, row in _rows(url, _list(load_json(url), None, url), ("question_id", "answer"), ""):
        qid = _id(row["question_id"], f"{where}.question_id")
        if qid in out:
            raise FormatError(f"{where}: a second answer for question_id {row['question_id']!r}")
        out[qid] = _text(row["answer"], f"{where}.answer")
    if not out:
        raise FormatError(f"{url}: no predictions")
    return out


# --- images ------------------------------------------------------------------------------------


class Images:
    """Images by id from a folder (file names, or a pattern) or from webdataset shards."""

    def __init__(self, source: str, pattern: str | None = None, files: dict[str, str] | None = None):
        self.source, self.pattern, self.files = str(source), pattern, files or {}
        self._shards = any(str(source).endswith(e) for e in (".tar", "}")) or "*" in str(source)
        self._cache: dict[str, bytes] = {}

    def name(self, image_id: str) -> str:
        if self.pattern:
            try:
                num = int(image_id)
            except ValueError:
                num = image_id
            return self.pattern.format(image_id=num)
        if image_id in self.files:
            return self.files[image_id]
        raise FormatError(f"no file name for image {image_id!r}: the annotations name none; set an image pattern")

    def load(self, ids) -> None:
        """Read the given images from the shards in one pass (folders are read on demand)."""
        if not self._shards:
            return
        want = {str(i) for i in ids} - set(self._cache)
        if not want:
            return
        from mmdata.mix.decode import parse

        for sample in samples.read_shards(self.source):
            data = samples.image_member(sample)
            if data is None:
                continue
            rid = str(parse(sample).get("image_id", sample["__key__"]))
            for cand in (rid, sample["__key__"]):
                if cand in want:
                    self._cache[cand] = data
        missing = want - set(self._cache)
        if missing:
            raise FormatError(f"{self.source}: no image for id {min(missing)!r} "
                              f"({len(missing)} of {len(want)} missing)")

    def bytes(self, image_id: str) -> bytes:
        image_id = str(image_id)
        if self._shards:
            if image_id not in self._cache:
                self.load([image_id])
            return self._cache[image_id]
        url = fsio.join(self.source, self.name(image_id))
        try:
            return fsio.read_bytes(url)
        except FileNotFoundError:
            raise FormatError(f"{url}: image {image_id!r} not found") from None

    def open(self, image_id: str):
        from PIL import Image

        img = Image.open(io.BytesIO(self.bytes(image_id)))
        return img.convert("RGB")
