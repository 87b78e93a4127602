"""Download benchmark: mmdata vs img2dataset on the same URL list from the local demo web server.

Both download and resize to 256 px keep_ratio, jpg quality 95, into webdataset shards, with 2
worker processes on this machine. Each tool runs as its own process tree; its peak memory is the
largest sum of RSS over that tree (sampled every 0.2 s: at 20 Hz the sampler's own CPU cost
the tool it watched about 5% of its images/s on 2 cores). Also measured: the ceiling, i.e. the
same decode + resize + encode (mmdata.images.process) over the same image bytes read from local
disk in 2 processes, no network.

img2dataset cannot set a Host header, so both get the server's `http://127.0.0.1:PORT/_host/...`
form of the URLs. It is installed on first use (see ../shared/ENVIRONMENT.md for why --no-deps).

Two workloads: the demo corpus (synthetic images, mostly 200-800 px) and web-photo-sized JPEGs
(1024-2048 px, like CC12M/LAION), where decoding and resizing large images is what costs. Each
prints wall-clock images/s (start-up and teardown included) and steady-state images/s (first
shard start to last shard end, from each tool's own per-shard stats). The tools and the ceiling
take turns for `--rounds` rounds and the median of each is printed: this machine's speed drifts.
Each tool's stored images are also scored (PSNR against a Lanczos resize of the full decode), so a
speed-up cannot hide a loss of quality.

Run: `make bench` or `.venv/bin/python benchmarks/bench_download.py [--pairs N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
PY = sys.executable
I2D_DEPS = ["fire", "exifread-nocycle", "opencv-python-headless", "albumentations==1.4.24", "wandb"]


def ensure_img2dataset() -> None:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    if subprocess.run([PY, "-c", "import img2dataset"], check=False, env=env, capture_output=True).returncode == 0:
        return
    print("installing img2dataset 1.47.0 (--no-deps) and its runtime deps ...", flush=True)
    pip = [PY, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, "--no-deps", "img2dataset==1.47.0"], check=True, env=env)
    subprocess.run([*pip, *I2D_DEPS], check=True, env=env)


def tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def timed(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, int, str]:
    """(wall seconds, peak RSS of the process tree, output tail) of one command."""
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.communicate()[0]
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, peak[0], out[-2000:]


def successes(folder: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in folder.glob("*_stats.json"))


def steady_rate(folder: Path, start: str, end: str) -> float:
    """Successes per second between the first shard's start and the last shard's end, from each
    tool's own per-shard stats: throughput without process start-up and teardown."""
    stats = [json.loads(p.read_text()) for p in folder.glob("*_stats.json")]
    window = max(s[end] for s in stats) - min(s[start] for s in stats)
    return sum(s["successes"] for s in stats) / window


_CEILING_CFG = None


def _process_file(path: str) -> bool:
    global _CEILING_CFG
    from mmdata.config import ImageConfig
    from mmdata.images import process

    _CEILING_CFG = _CEILING_CFG or ImageConfig(image_size=256, resize_mode="keep_ratio")  # built once per process, as the stage does
    return process(Path(path).read_bytes(), _CEILING_CFG).ok


def ceiling(files: list[Path], workers: int) -> float:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_process_file, map(str, files[:20])))  # warm up imports
        t0 = time.perf_counter()
        ok = sum(pool.map(_process_file, map(str, files), chunksize=16))
        return ok / (time.perf_counter() - t0)


def photo_corpus(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """Web-photo-sized JPEGs (1024-2048 px, as CC12M and LAION mostly are), laid out as a demo corpus
    so the same server serves them. Returns the truth-like table (url, caption, file)."""
    import numpy as np

    from mmdata.demo import images as im

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = im.random_concept(rng)
        c = im.Concept(c.shape, c.colour, c.count, c.background, "grainy", c.word)  # photo-like entropy
        w = int(rng.integers(1024, 2049))
        h = int(w / rng.uniform(1.2, 1.6))
        rel = f"images/img{i % 8 + 1}.demo.mmdata.test/photos/{i:06d}.jpg"
        path = root / "pairs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(im.encode(im.render(c, w, h, rng), "JPEG", quality=90))
        rows.append({"url": f"http://img{i % 8 + 1}.demo.mmdata.test/photos/{i:06d}.jpg",
                     "caption": im.true_caption(c), "file": rel})
    return pd.DataFrame(rows)


def stored_quality(folder: Path, by_url: dict[str, Path], limit: int = 150) -> float:
    """Mean PSNR (dB) of a tool's stored images against the Lanczos resize of the full decode of
    their sources (benchmarks/bench_resize.py's reference), over up to `limit` samples."""
    import io
    import tarfile

    from bench_resize import psnr, reference
    from PIL import Image

    scores = []
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name in sorted(members):
                if not name.endswith(".json") or len(scores) >= limit:
                    continue
                key = name[:-5]
                meta = json.loads(tf.extractfile(members[name]).read())
                img = next((members[f"{key}.{e}"] for e in ("jpg", "png", "webp") if f"{key}.{e}" in members), None)
                src = by_url.get(meta.get("url"))
                if img is None or src is None:
                    continue
                stored = tf.extractfile(img).read()
                ref = reference(src.read_bytes())
                if ref.shape[:2] != Image.open(io.BytesIO(stored)).size[::-1]:
                    continue  # rounding of the target size differs by a pixel: not comparable
                scores.append(psnr(stored, ref))
    return sum(scores) / len(scores) if scores else float("nan")


def run_case(name: str, corpus: Path, truth: pd.DataFrame, workers: int, tmp: Path, rounds: int) -> None:
    """img2dataset, mmdata and the ceiling on the same URL list from the demo server, `rounds` times
    in turn; each figure is the median of its rounds (this machine's speed drifts by 10-20% over
    minutes, and alternating keeps a slow spell from landing on one tool only)."""
    import statistics

    import psutil
    import yaml

    from mmdata.demo.server import DemoServer
    from mmdata.demo.urls import via_local_all

    tmp.mkdir(parents=True, exist_ok=True)
    files = [corpus / "pairs" / f for f in truth["file"].dropna()]
    mb = sum(f.stat().st_size for f in files) / 2**20
    per_shard = -(-len(truth) // (4 * workers))
    seen: dict[str, list[float]] = {}
    peak = {"img2dataset": 0, "mmdata": 0}
    ok = {}
    server_cpu = {"img2dataset": 0.0, "mmdata": 0.0}

    def keep(key: str, value: float) -> None:
        seen.setdefault(key, []).append(value)

    with DemoServer(corpus) as srv:
        urls = pd.DataFrame({"url": via_local_all(truth["url"], srv.url), "caption": truth["caption"]})
        urls.to_parquet(tmp / "urls.parquet")
        print(f"\n== {name}: {len(urls)} URLs, {mb:.0f} MiB of images from {srv.url}; "
              f"{workers} worker processes each; {os.cpu_count()} CPUs; best of {rounds} rounds", flush=True)
        env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
        server = psutil.Process(srv.proc.pid)
        for r in range(rounds):
            i2d_out = tmp / f"img2dataset-{r}"
            i2d = [PY, "-c", (
                "from img2dataset import download; download("
                f"url_list={str(tmp / 'urls.parquet')!r}, input_format='parquet', url_col='url', caption_col='caption', "
                f"output_folder={str(i2d_out)!r}, output_format='webdataset', processes_count={workers}, "
                f"thread_count=64, image_size=256, resize_mode='keep_ratio', encode_format='jpg', encode_quality=95, "
                f"number_sample_per_shard={per_shard}, distributor='multiprocessing', enable_wandb=False)"
            )]
            cpu0 = sum(server.cpu_times()[:2])
            i2d_wall, mem, _ = timed(i2d, env)
            cpu1 = sum(server.cpu_times()[:2])
            ok["img2dataset"] = successes(i2d_out)
            i2d_steady = steady_rate(i2d_out, "start_time", "end_time")
            keep("img2dataset wall", ok["img2dataset"] / i2d_wall)
            keep("img2dataset steady", i2d_steady)
            peak["img2dataset"] = max(peak["img2dataset"], mem)

            workdir = tmp / f"mmdata-{r}"
            recipe = {"name": "bench", "workdir": str(workdir),
                      "engine": {"n_workers": workers, "threads_per_worker": 1, "progress": False},
                      "download": {"input": str(tmp / "urls.parquet"), "samples_per_shard": per_shard,
                                   "image": {"image_size": 256, "resize_mode": "keep_ratio", "encode_format": "jpg",
                                             "encode_quality": 95},
                                   # one local server stands in for thousands of hosts: no per-host cap
                                   # here, as img2dataset has none
                                   "fetch": {"allow": ["127.0.0.1"], "concurrency": 64, "per_host": 64}}}
            (tmp / "bench.yaml").write_text(yaml.safe_dump(recipe))
            mm_wall, mem, _ = timed([PY, "-m", "mmdata", "download", "--config", str(tmp / "bench.yaml")])
            cpu2 = sum(server.cpu_times()[:2])
            ok["mmdata"] = successes(workdir / "download")
            mm_steady = steady_rate(workdir / "download", "started", "finished")
            keep("mmdata wall", ok["mmdata"] / mm_wall)
            keep("mmdata steady", mm_steady)
            peak["mmdata"] = max(peak["mmdata"], mem)
            server_cpu["img2dataset"] += (cpu1 - cpu0) / rounds
            server_cpu["mmdata"] += (cpu2 - cpu1) / rounds
            keep("ceiling", ceil := ceiling(files, workers))
            print(f"  round {r + 1}: img2dataset {ok['img2dataset'] / i2d_wall:.1f} images/s (steady {i2d_steady:.1f}), "
                  f"mmdata {ok['mmdata'] / mm_wall:.1f} (steady {mm_steady:.1f}), ceiling {ceil:.1f}", flush=True)

    best = {k: statistics.median(v) for k, v in seen.items()}
    ceil = best["ceiling"]
    src = {u: corpus / "pairs" / f for u, f in zip(urls["url"], truth["file"]) if isinstance(f, str)}
    quality = {"img2dataset": stored_quality(tmp / f"img2dataset-{rounds - 1}", src),
               "mmdata": stored_quality(tmp / f"mmdata-{rounds - 1}" / "download", src)}
    print(f"median of the {rounds} rounds:")
    for tool in ("img2dataset", "mmdata"):
        label = "img2dataset 1.47.0" if tool == "img2dataset" else "mmdata download   "
        print(f"{label} : {best[tool + ' wall']:7.1f} images/s  successes {ok[tool]}/{len(urls)}  "
              f"peak memory {peak[tool] / 2**20:6.0f} MiB  stored quality {quality[tool]:.2f} dB PSNR "
              "(vs Lanczos from the full decode)")
    print(f"ceiling (decode+resize+encode from local disk, {workers} processes, warm): {ceil:7.1f} images/s")
    mm, i2 = best["mmdata wall"], best["img2dataset wall"]
    print(f"wall clock (each tool's start-up and teardown included): ratio mmdata / img2dataset {mm / i2:.2f}x   "
          f"mmdata / ceiling {mm / ceil:.0%}")
    mm, i2 = best["mmdata steady"], best["img2dataset steady"]
    print(f"steady state (first shard start to last shard end): img2dataset {i2:.1f} images/s, mmdata {mm:.1f} "
          f"images/s; ratio {mm / i2:.2f}x   mmdata / ceiling {mm / ceil:.0%}")
    print(f"the local server's own CPU on these {os.cpu_count()} cores, per run: {server_cpu['img2dataset']:.1f}s "
          f"during img2dataset's, {server_cpu['mmdata']:.1f}s during mmdata's (the ceiling has no server to feed)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3000)  # enough that start-up is not the story
    ap.add_argument("--photos", type=int, default=800, help="web-photo-sized images in the second case (0: skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each tool, alternating; the median reported")
    args = ap.parse_args()
    ensure_img2dataset()

    from mmdata.demo.corpus import build
    from mmdata.demo.pairs import NoiseRates

    tmp = Path(tempfile.mkdtemp(prefix="bench-download-"))
    corpus = tmp / "corpus"
    # a clean corpus: fault modes (slow, 429 ...) are the tests' business, not throughput's
    build(corpus, n_pairs=args.pairs, n_docs=1, seed=0, rates=NoiseRates(fault=0, robots=0), workers=2)
    truth = pd.read_parquet(corpus / "pairs" / "truth.parquet")
    run_case("demo corpus (synthetic images, mostly 200-800 px)", corpus, truth, args.workers, tmp / "demo", args.rounds)
    if args.photos:
        photos = tmp / "photos"
        run_case("web-photo sizes (JPEG, 1024-2048 px)", photos, photo_corpus(photos, args.photos), args.workers,
                 tmp / "photos-run", args.rounds)


if __name__ == "__main__":
    main()
