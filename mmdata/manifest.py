"""Training-shard manifests: write, read, verify, and export (parquet, Energon).

A stream's training shards live in one folder with `manifest.json` beside them:

    {"schema_version": 1, "stream": "captions", "kind": "pair", "count": N, "bytes": B,
     "shards": [{"name": "00000.tar", "count": .., "bytes": .., "sha256": ..,
                 "members": "00000.members.json", "members_sha256": ..}, ...],
     "recipe": {"mmdata": "0.1.0", "git_commit": "...", "config": {...}}, ...}

Names are relative to the manifest's folder, so a copied or synced folder still verifies. The
manifest carries no timestamp: the same inputs and seed give the same manifest bytes too.
`manifest.parquet` holds the same shard table (one row per shard) for pandas / duckdb users.
`members` names the shard's member index (`mmdata.samples`: every member's offset, size, xxh3);
a manifest without it (an older or hand-made one) is still read, counted from the tar headers.

`verify` checks, per shard: quick (what the sampler checks before its first batch) that it is
there, its size, and its sample count (from the member index's header, else by walking the tar's
headers); full (the `verify` command) also the whole file's sha256, every header, the count walked,
and every member's name, offset, size and xxh3 against the index.
"""

from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mmdata import __version__, fsio, samples, tar

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLE = "manifest.parquet"
KINDS = {"captions": "pair", "interleaved": "interleaved", "text": "text"}


@dataclass(frozen=True)
class Problem:
    """One shard that does not match its manifest."""

    shard: str
    what: str  # missing | size | count | structure | index | checksum | unreadable
    detail: str

    def __str__(self) -> str:
        return f"{self.shard}: {self.what}: {self.detail}"


@cache
def git_commit() -> str | None:
    """The commit of the code that runs, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def recipe(config: dict) -> dict:
    return {"mmdata": __version__, "git_commit": git_commit(), "config": config}


def manifest_url(url: str) -> str:
    """Accept a stream folder or the manifest itself."""
    return url if url.endswith(".json") else fsio.join(url, MANIFEST)


def folder_of(url: str) -> str:
    return url.rsplit("/", 1)[0] if url.endswith(".json") else url.rstrip("/")


def build(stream: str, shards: list[dict], **extra) -> dict:
    """A manifest for `shards` (dicts with name, count, bytes, sha256), in their order."""
    rows = [{k: s[k] for k in ("name", "count", "bytes", "sha256", "members", "members_sha256") if s.get(k) is not None}
            for s in shards]
    return {
        "schema_version": SCHEMA_VERSION,
        "stream": stream,
        "kind": KINDS.get(stream, stream),
        "count": sum(r["count"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "shards": rows,
        **extra,
    }


def write(folder: str, manifest: dict) -> str:
    """`manifest.json` and `manifest.parquet` into `folder`; returns the json's URL."""
    fsio.write_parquet(fsio.join(folder, TABLE), to_frame(manifest, folder))
    url = fsio.join(folder, MANIFEST)
    fsio.write_json(url, manifest)  # last: its presence means the stream is complete
    return url


def read(url: str) -> dict:
    m = fsio.read_json(manifest_url(url))
    if m.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{manifest_url(url)}: schema_version {m.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return m


def urls(url: str) -> list[str]:
    """Full URLs of a manifest's shards, in manifest order."""
    folder = folder_of(url)
    return [fsio.join(folder, s["name"]) for s in read(url)["shards"]]


def to_frame(manifest: dict, folder: str):
    """One row per shard, with the stream-wide fields repeated (handy for SQL over many streams)."""
    import pandas as pd

    r = manifest.get("recipe", {})
    return pd.DataFrame(
        [
            {"stream": manifest["stream"], "kind": manifest["kind"], "name": s["name"],
             "url": fsio.join(folder, s["name"]), "count": s["count"], "bytes": s["bytes"], "sha256": s["sha256"],
             "members": s.get("members"), "members_sha256": s.get("members_sha256"),
             "schema_version": manifest["schema_version"], "mmdata": r.get("mmdata"),
             "git_commit": r.get("git_commit")}
            for s in manifest["shards"]
        ],
        columns=["stream", "kind", "name", "url", "count", "bytes", "sha256", "members", "members_sha256",
                 "schema_version", "mmdata", "git_commit"],
    )


class _Hashing:
    """A read-only stream that hashes what is read through it (the tar reader then reads every byte)."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _damage(entry: dict, e: tar.ShardError) -> Problem:
    if isinstance(e, tar.ChangedBytes):
        return Problem(entry["name"], "checksum", f"damaged tar at byte {e.offset}: {e.what}")
    if isinstance(e, tar.DamagedShard):
        return Problem(entry["name"], "structure", f"damaged tar at byte {e.offset}: {e.what}")
    return Problem(entry["name"], "index", str(e))


def check_shard(folder: str, entry: dict, *, full: bool = True) -> Problem | None:
    """The first way the shard of a manifest entry differs from it, or None (see the module doc)."""
    url = fsio.join(folder, entry["name"])
    fs, path = fsio.fs_path(url)
    index = fsio.join(folder, entry["members"]) if entry.get("members") else None
    try:
        if not fs.exists(path):
            return Problem(entry["name"], "missing", f"{url} does not exist")
        size = fs.size(path)
        if size != entry["bytes"]:
            return Problem(entry["name"], "size", f"{size} bytes, manifest says {entry['bytes']}")
        if not full:
            if index is None:  # no index: the count is the tar's, walked header by header
                n = samples.count_samples(url)
            else:
                head = samples.members_header(index)
                if head.get("bytes") != entry["bytes"]:
                    return Problem(entry["name"], "index", f"index {entry['members']} describes a tar of "
                                   f"{head.get('bytes')} bytes, manifest says {entry['bytes']}")
                n = head.get("count")
            if n != entry["count"]:
                return Problem(entry["name"], "count", f"{n} samples, manifest says {entry['count']}")
            return None
        expect = samples.read_members(index, entry.get("members_sha256")) if index else None
        with fs.open(path, "rb") as raw:
            f = _Hashing(raw)
            n = sum(1 for _ in samples.iter_samples(f, url, data=expect is not None, expect=expect))
            while f.read(1 << 22):  # the end-of-archive padding
                pass
        digest = f.h.hexdigest()
    except FileNotFoundError as e:
        return Problem(entry["name"], "missing", f"{e}")
    except tar.ShardError as e:
        return _damage(entry, e)
    except OSError as e:
        return Problem(entry["name"], "unreadable", f"{type(e).__name__}: {e}")
    if digest != entry["sha256"]:
        return Problem(entry["name"], "checksum", f"sha256 {digest}, manifest says {entry['sha256']}")
    if n != entry["count"]:
        return Problem(entry["name"], "count", f"{n} samples, manifest says {entry['count']}")
    if expect is not None and expect.count != entry["count"]:
        return Problem(entry["name"], "index", f"index {entry['members']} lists {expect.count} samples, "
                       f"manifest says {entry['count']}")
    return None


def verify(url: str, *, checksums: bool = True, threads: int = 8) -> list[Problem]:
    """Every shard of the manifest at `url` that is missing, resized, damaged, miscounted or
    corrupted (empty = all good); `checksums=False` is the quick check (no data read)."""
    m = read(url)
    folder = folder_of(url)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = pool.map(lambda e: check_shard(folder, e, full=checksums), m["shards"])
        return [p for p in found if p is not None]


# ---------------------------------------------------------------------------------------------
# Energon

# dataset.yaml per stream kind: the sample type and how its fields come out of a sample's members
ENERGON_TYPES = {
    "pair": {"sample_type": {"__module__": "megatron.energon", "__class__": "CaptioningSample"},
             "field_map": {"image": "jpg,png,webp", "caption": "txt"}},
    "text": {"sample_type": {"__module__": "megatron.energon", "__class__": "TextSample"},
             "field_map": {"text": "txt"}},
    "interleaved": {"sample_type": {"__module__": "megatron.energon", "__class__": "InterleavedSample"},
                    "sample_loader": "sample_loader.py:sample_loader", "part_filter": "sample_loader.py:part_filter"},
}

# An interleaved document is its json's slots in order: text slots as str, image slot i as the
# decoded member `i.<ext>`.
INTERLEAVED_LOADER = '''\
"""Written by mmdata: builds an InterleavedSample's sequence from the document's slots."""


def sample_loader(raw: dict) -> dict:
    sequence = []
    for slot in raw["json"]["slots"]:
        if slot["type"] == "text":
            sequence.append(slot["text"])
        else:
            i = slot["index"]
            sequence.append(next(raw[f"{i}.{ext}"] for ext in ("jpg", "png", "webp") if f"{i}.{ext}" in raw))
    return dict(__key__=raw["__key__"], sequence=sequence)


def part_filter(part: str) -> bool:
    return True
'''


def energon_export(url: str, *, workers: int = 4) -> str:
    """Make a stream folder an Energon dataset (`.nv-meta/` beside the shards); returns the folder.

    Uses Energon's own preparation (the index `energon prepare` builds), with every manifest shard
    in the `train` split, then writes the dataset.yaml for the stream's kind. Local folders only.
    Skipped when `.nv-meta/` was made from the same shards (the index holds byte offsets, so any
    change of shard bytes redoes it).
    """
    import contextlib
    import json
    from io import StringIO

    import yaml
    from megatron.energon.flavors.webdataset.base_webdataset import BaseWebdatasetFactory
    from megatron.energon.flavors.webdataset.config import MAIN_FOLDER_NAME

    m = read(url)
    folder = folder_of(url)
    if not fsio.is_local(folder):
        raise ValueError(f"{folder}: Energon export needs a local folder (run `energon prepare` where it is mounted)")
    if not m["shards"]:
        raise ValueError(f"{folder}: no shards to export (Energon refuses an empty dataset)")
    names = [s["name"] for s in m["shards"]]
    root = Path(fsio.fs_path(folder)[1])
    meta = root / MAIN_FOLDER_NAME
    made_from = hashlib.sha256(json.dumps(m["shards"], sort_keys=True).encode()).hexdigest()
    marker = meta / "mmdata.json"
    if marker.exists() and (meta / "dataset.yaml").exists() and json.loads(marker.read_text()).get("shards") == made_from:
        return folder
    with contextlib.redirect_stdout(StringIO()):  # energon prints progress notes
        BaseWebdatasetFactory.prepare_dataset(
            root, names, split_parts_patterns=[("train", r".*\.tar$")], shuffle_seed=None,
            workers=max(1, min(workers, len(names))),
        )
    spec = ENERGON_TYPES[m["kind"]]
    if "sample_loader" in spec:
        fsio.atomic_write(str(meta / "sample_loader.py"), INTERLEAVED_LOADER.encode())
    fsio.atomic_write(str(meta / "dataset.yaml"), yaml.safe_dump(spec, sort_keys=False).encode())
    fsio.write_json(str(marker), {"shards": made_from, "manifest": MANIFEST})
    return folder


