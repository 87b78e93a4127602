"""Checkpoints that resume exactly: model, optimizer, scheduler, RNG, step and the sampler's state.

    {out}/checkpoints/step-00000100/
        model.pt         full model state dict (unsharded, also under FSDP), written by rank 0
        optim.pt         full optimizer state, keyed by parameter name (so DDP / FSDP / plain agree)
        rank-00000.pt    per process: its RNG states and the sampler state_dict of each data rank it reads
        train.json       step, scheduler state, world size, data ranks, the recipe's fingerprint
        done.json        written last: a folder without it is incomplete and is never loaded

Every file is written atomically through fsspec (local: temp + rename; s3:// and others: one put
of a finished file), so a kill at any moment leaves either the previous checkpoint or a complete
new one. Older complete checkpoints beyond `keep` are removed after the new one is done.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import torch

from mmdata import fsio as io

STEP_DIR = re.compile(r"step-(\d{8})$")


def step_url(root: str, step: int) -> str:
    return io.join(root, f"step-{step:08d}")


def complete(root: str) -> list[tuple[int, str]]:
    """[(step, url)] of the complete checkpoints under `root`, oldest first."""
    fs, path = io.fs_path(root)
    if not fs.exists(path):
        return []
    out = []
    for entry in fs.ls(path, detail=False):
        m = STEP_DIR.search(entry.rstrip("/"))
        if m and fs.exists(f"{entry.rstrip('/')}/done.json"):
            out.append((int(m.group(1)), io.join(root, m.group(0))))
    return sorted(out)


def latest(root: str) -> tuple[int, str] | None:
    done = complete(root)
    return done[-1] if done else None


def save_torch(url: str, obj) -> None:
    f = io.AtomicFile(url)  # streamed into a temp file: a large state dict is never held twice in memory
    try:
        torch.save(obj, f.file)
    except BaseException:
        f.discard()
        raise
    f.commit()


def load_torch(url: str):
    import fsspec

    with fsspec.open(url, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prune(root: str, keep: int) -> list[str]:
    """Remove all but the newest `keep` complete checkpoints, and incomplete ones older than them."""
    fs, path = io.fs_path(root)
    done = complete(root)
    removed = []
    for _, url in done[:-keep] if keep else done:
        fs.rm(io.fs_path(url)[1], recursive=True)
        removed.append(url)
    newest = done[-1][0] if done else None
    for entry in fs.ls(path, detail=False) if fs.exists(path) else []:
        m = STEP_DIR.search(entry.rstrip("/"))
        if m and newest is not None and int(m.group(1)) < newest and not fs.exists(f"{entry.rstrip('/')}/done.json"):
            fs.rm(entry, recursive=True)  # a save killed half-way, superseded since
            removed.append(entry)
    return removed


def write_meta(url: str, meta: dict) -> None:
    io.write_json(url, meta)


def read_meta(url: str) -> dict:
    return json.loads(io.read_bytes(url))
