"""Benchmark: the `shards` stage vs a plain copy of the same bytes into tars (the ceiling).

Input: a download-style shard set (tars + metadata parquet + stats) with a filter sidecar that drops
about 10% of the records. Three writers produce the same kept samples in tars of the same size:

- mmdata `shards`: sidecar join, seeded global shuffle, ranged reads, json enrichment, atomic
  writes, checksums and the manifest, on a 2-worker Dask LocalCluster (started and warmed up
  before the clock starts, as in a pipeline run);
- plain copy (the ceiling): one process streams the input tars in order and copies the kept
  samples' members into output tars with `tarfile`: no shuffle, no join, no json rewrite;
- webdataset: the same in-order copy through `webdataset.WebDataset` + `ShardWriter`, what many
  users write by hand.

MB/s = output tar bytes / wall seconds. Run: `python benchmarks/bench_shards.py [--samples N]`.
"""

from __future__ import annotations

import argparse
import io as pyio
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mmdata import fsio, samples
from mmdata.config import EngineConfig, Pipeline, parse
from mmdata.engine import cluster
from mmdata.stages import training_shards as stage

PER_SHARD = 500
OUT_SAMPLES = 1000


def images(n: int, side: int) -> list[bytes]:
    """Noise JPEGs (incompressible, like photos) of roughly 20-40 KB each."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = pyio.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def make_input(work: Path, n: int) -> int:
    pool = images(64, 112)
    kept = 0
    for s in range(n // PER_SHARD):
        sid = f"{s:05d}"
        meta, side = [], []
        recorded = fsio.recording()
        written = recorded.__enter__()  # the digests the stages record as they write (their lineage)
        with samples.TarSink(str(work / "download" / f"{sid}.tar")) as sink:
            for i in range(PER_SHARD):
                key = f"{sid}{i:04d}"
                img = pool[(s * PER_SHARD + i) % len(pool)]
                meta.append({"key": key, "status": "success", "error_message": None, "url": f"http://x/{key}.jpg"})
                sink.write({"__key__": key, "jpg": img, "txt": f"caption of {key}",
                            "json": {"key": key, "kind": "pair", "schema_version": 1, "url": f"http://x/{key}.jpg",
                                     "caption": f"caption of {key}", "status": "success", "width": 112, "height": 112}})
                drop = "lang_not_en" if i % 10 == 7 else None
                side.append({"key": key, "lang_score": 0.9, "drop_reason": drop})
                kept += drop is None
        fsio.write_parquet(str(work / "download" / f"{sid}.parquet"), pd.DataFrame(meta))
        fsio.write_parquet(str(work / "filter" / f"{sid}.parquet"), pd.DataFrame(side))
        recorded.__exit__(None, None, None)
        for folder in ("download", "filter"):
            outputs = {f"{folder}/{u.rsplit('/', 1)[1]}": d for u, d in written.items() if f"/{folder}/" in u}
            fsio.write_json(str(work / folder / f"{sid}_stats.json"), {"count": PER_SHARD, "successes": PER_SHARD,
                                                                     "status_dict": {}, "lineage": {"outputs": outputs}})
    return kept


def kept_keys(work: Path) -> set[str]:
    keys = set()
    for p in sorted((work / "filter").glob("*.parquet")):
        df = pd.read_parquet(p)
        keys |= set(df.loc[df["drop_reason"].isna(), "key"])
    return keys


def plain_copy(work: Path, out: Path) -> int:
    """The ceiling: kept members copied in input order into tars of OUT_SAMPLES samples."""
    keep = kept_keys(work)
    out.mkdir(parents=True)
    total, n, shard, tar = 0, 0, 0, None
    for src in sorted((work / "download").glob("*.tar")):
        with tarfile.open(src, "r:") as t:
            last = None
            for m in t:
                key = m.name.split(".", 1)[0]
                if key not in keep:
                    continue
                if key != last:
                    if tar is None or n == OUT_SAMPLES:
                        if tar is not None:
                            tar.close()
                        tar, n, shard = tarfile.open(out / f"{shard:05d}.tar", "w"), 0, shard + 1  # noqa: SIM115 (rolled by hand)
                    n, last = n + 1, key
                tar.addfile(m, t.extractfile(m))
    tar.close()
    total = sum(p.stat().st_size for p in out.glob("*.tar"))
    return total


def wds_copy(work: Path, out: Path) -> int:
    import webdataset as wds

    keep = kept_keys(work)
    out.mkdir(parents=True)
    urls = [str(p) for p in sorted((work / "download").glob("*.tar"))]
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=OUT_SAMPLES, verbose=0) as sink:
        for sample in wds.WebDataset(urls, shardshuffle=False):
            if sample["__key__"] in keep:
                sink.write({k: v for k, v in sample.items() if k != "__url__"})
    return sum(p.stat().st_size for p in out.glob("*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        work = root / "in"
        kept = make_input(work, args.samples)
        in_mb = sum(p.stat().st_size for p in (work / "download").glob("*.tar")) / 1e6
        print(f"input: {args.samples} samples in {args.samples // PER_SHARD} tars ({in_mb:.1f} MB), {kept} kept")

        engine = EngineConfig(n_workers=2, threads_per_worker=1, progress=False)
        with cluster(engine) as client:
            def recipe(wd: Path) -> Pipeline:
                return parse(Pipeline, {
                    "workdir": str(wd), "seed": 0, "engine": engine.model_dump(),
                    "shards": {"shard_samples": OUT_SAMPLES, "energon": False,
                               "captions": {"input": str(work / "download"), "sidecars": [str(work / "filter")]},
                               "interleaved": {"enabled": False}, "text": {"enabled": False}}}, "bench")

            stage.run(recipe(root / "warmup"), client=client)  # imports on the workers, off the clock
            t = time.perf_counter()
            report = stage.run(recipe(root / "mmdata"), client=client)
            t_mm = time.perf_counter() - t
            assert report.ok, report.summary()
        mm_bytes = report.streams["captions"]["bytes"]

        t = time.perf_counter()
        plain_bytes = plain_copy(work, root / "plain")
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        wds_bytes = wds_copy(work, root / "wds")
        t_wds = time.perf_counter() - t

        rows = [("mmdata shards (2 Dask workers, shuffled)", mm_bytes, t_mm),
                ("plain tar copy (1 process, input order)", plain_bytes, t_plain),
                ("webdataset ShardWriter (1 process, input order)", wds_bytes, t_wds)]
        for name, b, s in rows:
            print(f"{name:50s} {b / 1e6:7.1f} MB  {s:6.2f} s  {b / 1e6 / s:7.1f} MB/s  {kept / s:8.0f} samples/s")
        print(f"ratio mmdata / plain copy (MB/s): {(mm_bytes / t_mm) / (plain_bytes / t_plain):.2f}")
        print(f"ratio mmdata / webdataset (MB/s): {(mm_bytes / t_mm) / (wds_bytes / t_wds):.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
