"""Which exact weights a model name means: recorded beside every output a model writes.

A hub id resolves to the commit `from_pretrained` loaded (`config._commit_hash`), else the asked
revision. A local folder has no commit, so its revision is a digest of its files: retraining the
tiny demo models under the same path changes it, and resume refuses to mix the two (the stage
fingerprints include it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
_SMALL = 256 * 2**20  # hashed whole below this; above, its size and first and last MiB


def local_revision(path: str | os.PathLike) -> str:
    """`local:<16 hex>` over the folder's config, tokenizer and weight files."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(root).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= _SMALL or not f.name.endswith(_WEIGHTS):
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return f"local:{h.hexdigest()[:16]}"


def is_local(name: str) -> bool:
    return Path(name).is_dir()


def declared_revision(name: str | None, revision: str | None) -> str | None:
    """What the recipe pins, as seen from here: a local folder's digest, else the revision or `main`."""
    if not name:
        return None
    return local_revision(name) if is_local(name) else (revision or "main")


def resolved_revision(name: str, revision: str | None, model: Any = None) -> str:
    """What was loaded: the hub commit when known, else as `declared_revision`."""
    if is_local(name):
        return local_revision(name)
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return commit or revision or "main"
