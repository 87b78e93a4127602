"""One rule for the demo's tiny models (CLIP, captioner and fusion LM, the MM1's pretrained tower):
built once into their folder and reused, but only with the recipe they were built from.

A folder is written whole (`save_pretrained` into a temp folder beside it, then a rename) with
`built.json`: the recipe (the settings that shape the weights and the identity of what they learn
from: the corpus, a tower they start from) and what the build measured. A folder built from another
recipe, or one without that file (unfinished, or older than it), is built again, and said so in one
line: a changed YAML, corpus or tower never reuses old weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

STAMP = "built.json"


def _plain(recipe: dict) -> dict:
    return json.loads(json.dumps(recipe, sort_keys=True, default=str))  # tuples, paths: as read back


def save(out_dir: str | Path, parts: Iterable, recipe: dict, info: dict | None = None) -> Path:
    """Each of `parts` (model, processor, tokenizer) `save_pretrained` into `out_dir`, atomically,
    with `built.json` = {"recipe": recipe, **info}."""
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        for part in parts:
            part.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps({"recipe": _plain(recipe), **(info or {})}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read(folder: str | Path) -> dict | None:
    """`built.json` of `folder`, or None when there is none."""
    try:
        return json.loads((Path(folder) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def recipe_of(folder: str | Path) -> dict | None:
    """The recipe `folder` was built from, or None (not built by this module, or unfinished)."""
    return (read(folder) or {}).get("recipe")


def ensure(folders: list[str | Path | None], recipe: dict, build: Callable[[], object], name: str, echo) -> None:
    """Run `build` unless every folder (None: not asked for) holds a build of `recipe`. Processes
    asking at once (parallel ablation runs, test workers) build it once: the others wait on a lock
    beside the first folder and then find it built."""
    folders = [Path(f) for f in folders if f is not None]
    want = _plain(recipe)
    if all(recipe_of(f) == want for f in folders):
        return
    lock = folders[0].parent / f".{folders[0].name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if all(recipe_of(f) == want for f in folders):
            return
        if any(f.exists() for f in folders):
            echo(f"{name} {folders[0]}: built with another recipe (or unfinished); building again")
        build()


def corpus_id(corpus_dir: str | Path) -> str:
    """A demo corpus's identity: the digest of its manifest (seed, sizes, generator version), else its path."""
    try:
        return hashlib.sha256((Path(corpus_dir) / "manifest.json").read_bytes()).hexdigest()[:16]
    except OSError:
        return str(Path(corpus_dir).resolve())
