"""Lineage: what each output was computed from, so that a changed input is redone, never skipped.

Every per-shard stats file (the shard's done-marker) holds a `lineage`:

    {"fingerprint": "9f2c...", "settings": {...the stage's settings, plain...},
     "inputs": {"download/00003.tar": "<digest>", "filter/00003.parquet": "<digest>", ...},
     "outputs": {"dedup/00003.parquet": "<digest>"}}

Paths under the workdir are written relative to it (`{workdir}` in settings), so a workdir that is
moved or copied elsewhere resumes. A digest is xxh3-128 of the file's bytes, taken as it was written
(`mmdata.fsio.recording`) and read back from its producer's stats, so checking a shard costs one
small json read, not a pass over the data. Files that no stage wrote (a URL list, WARC files, a
partition of the input) are hashed when small and local, else stamped by size and ETag/mtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from mmdata import fsio

WORKDIR = "{workdir}"
HASH_LIMIT = 256 << 20  # external local files up to this size are hashed; larger ones are stamped
ABSENT = "absent"


def normalize(url: str, root: str) -> str:
    """`url` relative to the workdir `root` when it lies inside it, else as given."""
    root = root.rstrip("/")
    if url == root:
        return ""
    if url.startswith(root + "/"):
        return url[len(root) + 1 :]
    if fsio.is_local(url) and fsio.is_local(root):
        absolute, base = os.path.abspath(fsio.fs_path(url)[1]), os.path.abspath(fsio.fs_path(root)[1])
        if absolute.startswith(base + os.sep):
            return os.path.relpath(absolute, base)
    return url


def plain(value: Any, root: str) -> Any:
    """Settings as plain JSON data: config models less their pace fields, paths inside the
    workdir as `{workdir}/...`."""
    if hasattr(value, "model_dump"):  # a config model, less the fields that only set the pace
        pace = getattr(value, "PACE", frozenset())
        return {k: plain(getattr(value, k), root) for k in type(value).model_fields if k not in pace}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), root) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(x, root) for k, x in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(x, root) for x in value]
    if isinstance(value, str) and root:
        rel = normalize(value, root)
        return value if rel == value else f"{WORKDIR}/{rel}".rstrip("/")
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def fingerprint(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def files_of(payload: Any) -> list[str]:
    """The files a shard's payload names: its `files()` when it has one, else its str fields and
    tuples of str (None: not read)."""
    if isinstance(payload, str):
        return [payload]
    if hasattr(payload, "files"):
        return list(payload.files())
    out: list[str] = []
    for f in dataclasses.fields(payload):
        v = getattr(payload, f.name)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, tuple | list):
            out += [x for x in v if isinstance(x, str)]
    return out


class Digests:
    """Digests of input files, each looked up once: from the stats of the shard that wrote the
    file (its `lineage.outputs`), else from the file itself."""

    def __init__(self, root: str):
        self.root = root
        self._files: dict[str, str] = {}
        self._stats: dict[str, dict] = {}

    def _recorded(self, url: str) -> str | None:
        folder, _, name = url.rpartition("/")
        stats = f"{folder}/{name.split('.', 1)[0]}_stats.json"
        if stats not in self._stats:
            try:
                outputs = (fsio.read_json(stats).get("lineage") or {}).get("outputs") or {}
            except (FileNotFoundError, ValueError):
                outputs = {}
            # keyed by folder/name: the producer may have had another workdir than this reader
            self._stats[stats] = {_tail(k): d for k, d in outputs.items()}
        return self._stats[stats].get(_tail(url))

    def __call__(self, url: str) -> str:
        if url not in self._files:
            self._files[url] = self._recorded(url) or stamp(url)
        return self._files[url]

    def inputs(self, payload: Any) -> dict[str, str]:
        return {normalize(u, self.root): self(u) for u in files_of(payload)}


def _tail(path: str) -> str:
    return "/".join(path.rstrip("/").rsplit("/", 2)[-2:])


def stamp(url: str) -> str:
    """A file's digest when no stage recorded one: its bytes' xxh3 when local and not huge, else
    its size and ETag (object stores) or mtime; `absent` when there is no such file."""
    fs, path = fsio.fs_path(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return ABSENT
    size = info.get("size")
    if fsio.is_local(url) and size is not None and size <= HASH_LIMIT:
        import xxhash

        h = xxhash.xxh3_128()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"size={size};tag={str(tag).strip(chr(34))}"


def changed(old: dict | None, fp: str, settings: Any, inputs: dict[str, str]) -> tuple[str, str] | None:
    """Why a finished shard with lineage `old` is stale now: ("settings" | "inputs", what), or None."""
    if not old:
        return "inputs", "it was written before lineage was recorded"
    if old.get("fingerprint") != fp:
        return "settings", describe_settings(old.get("settings"), settings) or f"fingerprint {old.get('fingerprint')} -> {fp}"
    before = old.get("inputs") or {}
    diff = sorted(k for k in set(before) | set(inputs) if before.get(k) != inputs.get(k))
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        return "inputs", f"changed since: {', '.join(diff[:3])}{more}"
    return None


def describe_settings(old: Any, new: Any, prefix: str = "") -> str:
    """`min_side 200 -> 300, language.languages ['en'] -> ['de']`: what differs, at most 3 items."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            diffs.append(f"{path or 'settings'} {a!r} -> {b!r}")

    if old is None:
        return ""
    walk(old, new, prefix)
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
