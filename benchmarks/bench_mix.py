"""Mixture sampler throughput: mmdata.mix vs a raw webdataset read vs Megatron-Energon's blend.

Writes three sources of webdataset shards (captions 45, interleaved 45, text 10) into a temp folder,
prepares them for Energon with its own API (`energon prepare`'s index + a CrudeWebdataset
dataset.yaml + a blend metadataset), then reads the same number of samples with each contender in
one process (num_workers=0, no image decoding: the sampler's own cost is what is compared), best of
`--rounds`, and prints samples/s and the ratios. Goal: >= 95% of raw webdataset and >= Energon.

    .venv/bin/python benchmarks/bench_mix.py [--samples 30000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mmdata.samples import ShardWriter

BATCH = 256
WEIGHTS = {"captions": 45, "interleaved": 45, "text": 10}


def build(root: Path, scale: float) -> dict[str, list[str]]:
    rs = np.random.default_rng(0)
    blob = rs.bytes(1 << 20)
    pick = lambda n: blob[(o := int(rs.integers(0, len(blob) - n))): o + n]
    plan = {"captions": (20, 1000), "interleaved": (16, 500), "text": (8, 1000)}
    out = {}
    for name, (shards, per) in plan.items():
        shards = max(1, int(shards * scale))
        with ShardWriter(str(root / name), max_samples=per) as w:
            for i in range(shards * per):
                key = f"{i // per:05d}{i % per:04d}"
                if name == "captions":
                    w.write({"__key__": key, "jpg": pick(6000), "txt": f"caption {i} " * 3,
                             "json": {"key": key, "kind": "pair", "caption": f"caption {i}"}})
                elif name == "interleaved":
                    slots = [{"type": "text", "text": "para " * 40}, {"type": "image", "index": 0},
                             {"type": "text", "text": "more " * 40}, {"type": "image", "index": 1}]
                    w.write({"__key__": key, "0.jpg": pick(6000), "1.jpg": pick(6000),
                             "json": {"key": key, "kind": "interleaved", "slots": slots}})
                else:
                    w.write({"__key__": key, "txt": pick(1500).hex(), "json": {"key": key, "kind": "text"}})
        out[name] = [str(root / name / f"{s:05d}.tar") for s in range(shards)]
        # the `shards` stage writes this beside every stream; the sampler plans from it without opening tars
        entries = [{"name": f"{s:05d}.tar", "count": per} for s in range(shards)]
        (root / name / "manifest.json").write_text(json.dumps({"shards": entries}))
    return out


def energon_prepare(root: Path, urls: dict[str, list[str]]) -> Path:
    import yaml
    from megatron.energon.flavors.webdataset.base_webdataset import BaseWebdatasetFactory

    for name, files in urls.items():
        folder = root / name
        BaseWebdatasetFactory.prepare_dataset(folder, [Path(f).name for f in files],
                                              split_parts_patterns=[("train", r".*\.tar$")], shuffle_seed=None, workers=2)
        spec = {"__module__": "megatron.energon", "__class__": "CrudeWebdataset", "subflavors": {"source": name}}
        (folder / ".nv-meta" / "dataset.yaml").write_text(yaml.safe_dump(spec))
    meta = {"__module__": "megatron.energon", "__class__": "MetadatasetV2",
            "splits": {"train": {"blend": [{"weight": w, "path": f"./{n}"} for n, w in WEIGHTS.items()]}}}
    path = root / "blend.yaml"
    path.write_text(yaml.safe_dump(meta))
    return path


def count(it, n: int) -> tuple[int, float]:
    t, seen = time.perf_counter(), 0
    for batch in it:
        seen += batch
        if seen >= n:
            break
    return seen, time.perf_counter() - t


def raw_webdataset(urls: dict[str, list[str]], n: int):
    import webdataset as wds

    # every shard of every source, read straight through: the I/O + tar parsing floor
    flat = [u for us in zip(*[us * (n // 1000 + 1) for us in urls.values()]) for u in us]
    ds = wds.WebDataset(flat, shardshuffle=False, empty_check=False)
    return count((1 for _ in ds), n)


def energon(meta: Path, n: int):
    from megatron.energon import (
        Cooker,
        DefaultTaskEncoder,
        WorkerConfig,
        get_loader,
        get_train_dataset,
        stateless,
    )

    @stateless
    def as_is(sample):
        return sample

    class Raw(DefaultTaskEncoder):
        cookers = (Cooker(as_is),)
        decoder = None  # raw bytes, like the other two

        def batch(self, samples):
            return samples

    wc = WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = get_train_dataset(meta, batch_size=BATCH, shuffle_buffer_size=None, max_samples_per_sequence=None,
                           worker_config=wc, task_encoder=Raw())
    return count((len(b) for b in get_loader(ds)), n)


def mmdata_mix(urls: dict[str, list[str]], n: int):
    from mmdata.config import Mixture
    from mmdata.mix import loader

    sources = {k: {"shards": v, "weight": WEIGHTS[k]} for k, v in urls.items()}
    mix = Mixture.model_validate({"sources": sources, "global_batch": BATCH, "total": 100})
    return count((len(b["keys"]) for b in loader(mix, num_workers=0, decode=False)), n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="shard count multiplier")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mix-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        urls = build(root, args.scale)
        meta = energon_prepare(root, urls)
        size = sum(os.path.getsize(u) for us in urls.values() for u in us) / 1e6
        print(f"data: {sum(map(len, urls.values()))} shards, {size:.0f} MB, built in {time.perf_counter() - t:.1f}s; "
              f"reading {args.samples} samples per contender, batch {BATCH}, num_workers=0, best of {args.rounds}")
        runs = {"webdataset (raw read)": lambda: raw_webdataset(urls, args.samples),
                "energon (blend)": lambda: energon(meta, args.samples),
                "mmdata.mix (exact)": lambda: mmdata_mix(urls, args.samples)}
        best = {k: 0.0 for k in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                seen, dt = fn()
                best[name] = max(best[name], seen / dt)
        for name, rate in best.items():
            print(f"{name:<24}{rate:>10.0f} samples/s")
        ours = best["mmdata.mix (exact)"]
        print(f"mmdata.mix / webdataset = {ours / best['webdataset (raw read)']:.2f}  (goal >= 0.95)")
        print(f"mmdata.mix / energon    = {ours / best['energon (blend)']:.2f}  (goal >= 1.00)")


if __name__ == "__main__":
    main()
