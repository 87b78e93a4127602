"""Near-duplicate dedup: throughput and peak memory at 10k, 100k and 1M records, mmdata vs pandas.

Input: synthetic 64-bit pHashes, 95% random and 5% planted near-duplicates (0-6 bits flipped from
a random record), written as a download + filter shard set of 10k records per shard.
- mmdata: `mmdata.stages.dedup.run` with only the `near` rule (threshold 8, 4 bands x 2 rounds),
  on an in-process Dask cluster (2 worker threads), so one process holds all of its memory.
- peer: plain pandas, the same banding: per band a self-merge on the band value, then the exact
  Hamming check, duplicate pairs dropped, the same greedy keep (in memory, one process).
Each (size, system) runs in a fresh subprocess; peak RSS is that process's ru_maxrss. Recall is
of the planted pairs. Run: `python benchmarks/bench_dedup.py [sizes...]`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (10_000, 100_000, 1_000_000)
THRESHOLD, BANDS, ROUNDS = 8, 4, 2
PER_SHARD = 10_000


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """hashes (n,), and for each planted copy the index of its source (-1 for originals)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64).view(np.uint64)
    copies = rng.choice(n, n // 20, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), copies), len(copies))
    flips = np.zeros(len(copies), dtype=np.uint64)
    for k in range(6):
        on = rng.random(len(copies)) < 0.5
        flips ^= np.where(on, np.uint64(1) << rng.integers(0, 64, len(copies)).astype(np.uint64), np.uint64(0))
    hashes[copies] = hashes[sources] ^ flips
    source = np.full(n, -1)
    source[copies] = sources
    return hashes.view(np.int64), source


def recall(dropped: dict[int, int], hashes, source) -> float:
    from mmdata.phash import hamming

    copies = np.flatnonzero(source >= 0)
    want = copies[hamming(hashes[copies], hashes[source[copies]]) <= THRESHOLD]
    # a planted pair is found when either side went (the smaller key of the two is kept)
    found = sum(1 for c in want if c in dropped or source[c] in dropped)
    return found / max(len(want), 1)


def write_shards(folder: Path, hashes: np.ndarray) -> None:
    import pandas as pd

    from mmdata import fsio

    for s, lo in enumerate(range(0, len(hashes), PER_SHARD)):
        h = hashes[lo:lo + PER_SHARD]
        keys = [f"{s:05d}{i:04d}" for i in range(len(h))]
        sid = f"{s:05d}"
        fsio.write_parquet(str(folder / "download" / f"{sid}.parquet"), pd.DataFrame({
            "key": keys, "status": "success", "url": [f"http://x/{k}" for k in keys], "caption": "",
            "sha256": keys, "original_width": 400, "original_height": 300}))
        fsio.write_json(str(folder / "download" / f"{sid}_stats.json"), {"count": len(h)})
        fsio.write_parquet(str(folder / "work" / "filter" / f"{sid}.parquet"), pd.DataFrame({
            "key": keys, "drop_reason": pd.Series([None] * len(h), dtype="string"),
            "phash_variants": [[int(x)] for x in h], "colour": [b""] * len(h)}))
        fsio.write_json(str(folder / "work" / "filter" / f"{sid}_stats.json"), {"count": len(h)})


def run_mmdata(n: int) -> dict:
    from mmdata.config import Pipeline
    from mmdata.engine import cluster
    from mmdata.stages import dedup

    hashes, source = synthetic(n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp, hashes)
        pipe = Pipeline(workdir=str(tmp / "work"), engine={"progress": False, "n_workers": 1, "threads_per_worker": 2,
                                                             "processes": False},
                        dedup={"input": str(tmp / "download"), "rules": ["near"], "near": {
                            "threshold": THRESHOLD, "bands": BANDS, "rounds": ROUNDS,
                            "max_colour_distance": None, "max_aspect_change": None}})
        import dask.dataframe  # noqa: F401  (a one-off ~3-5 s import; not what grows with records)

        with cluster(pipe.engine) as client:
            t0 = time.perf_counter()
            dedup.run(pipe, client=client)
            seconds = time.perf_counter() - t0
        import pandas as pd

        dec = pd.read_parquet(tmp / "work" / "dedup" / "_decisions.parquet")
    to_idx = lambda k: int(k[:5]) * PER_SHARD + int(k[5:])
    dropped = {to_idx(f"{k:09d}"): to_idx(o) for k, o in zip(dec["key"], dec["duplicate_of"])}
    return {"seconds": seconds, "recall": recall(dropped, hashes, source), "dropped": len(dropped)}


def run_pandas(n: int) -> dict:
    import pandas as pd

    from mmdata.phash import band_keys, greedy_keep, hamming

    hashes, source = synthetic(n)
    t0 = time.perf_counter()
    keys = band_keys(hashes, BANDS, ROUNDS)
    found = []
    for b in range(keys.shape[1]):
        df = pd.DataFrame({"band": keys[:, b], "id": np.arange(n), "h": hashes})
        m = df.merge(df, on="band", suffixes=("_a", "_b"))
        m = m[(m["id_a"] < m["id_b"]) & (hamming(m["h_a"].to_numpy(), m["h_b"].to_numpy()) <= THRESHOLD)]
        found.append(m[["id_a", "id_b"]])
    pairs = pd.concat(found).drop_duplicates()
    dropped = greedy_keep(pairs["id_a"].to_numpy(), pairs["id_b"].to_numpy())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "recall": recall(dropped, hashes, source), "dropped": len(dropped)}


def child(system: str, n: int) -> None:
    result = (run_mmdata if system == "mmdata" else run_pandas)(n)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main(sizes) -> None:
    print(f"near-dup dedup, threshold {THRESHOLD}, {BANDS} bands x {ROUNDS} rounds; 5% planted near-duplicates")
    print(f"{'records':>9} {'system':<7} {'seconds':>8} {'rec/s':>10} {'peak MB':>8} {'recall':>7}")
    rows = {}
    for n in sizes:
        for system in ("mmdata", "pandas"):
            done = subprocess.run([sys.executable, __file__, "--child", system, str(n)], capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{n:>9} {system:<7} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows[n, system] = r
            print(f"{n:>9} {system:<7} {r['seconds']:>8.2f} {n / r['seconds']:>10.0f} {r['peak_mb']:>8.0f} {r['recall']:>7.3f}")
        if (n, "mmdata") in rows and (n, "pandas") in rows:
            a, b = rows[n, "mmdata"], rows[n, "pandas"]
            print(f"{n:>9} ratio   time mmdata/pandas {a['seconds'] / b['seconds']:.2f}, "
                  f"peak memory mmdata/pandas {a['peak_mb'] / b['peak_mb']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main([int(a) for a in sys.argv[1:]] or SIZES)
