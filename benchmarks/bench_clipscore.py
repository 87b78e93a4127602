"""Benchmark: the `clipscore` stage vs a bare forward loop of the same model, in one run.

Input: a download-style shard set of JPEG image-caption pairs (demo-corpus pictures, 320-640 px).

- bare forward (the ceiling): the same model's `get_image_features` + `get_text_features` over
  batches decoded, resized, normalised and tokenised beforehand and already on the device: nothing
  but the model runs while the clock runs.
- mmdata `clipscore`: the whole stage on a 1-worker Dask LocalCluster: tar reading, JPEG decoding
  and resizing in the decode thread pool, uint8 -> device, normalisation, tokenisation, the same
  forward, writing the parquet and the float16 embeddings. Samples/s over the shards' processing
  time (the `started`..`finished` of their stats; the model loads once per worker before that, as
  in any long run). A warm-up run starts the cluster and loads the model; then bare and stage runs
  alternate (`--rounds`), so load from others on a shared machine hits both alike, and the best
  of each is compared.

Configurations:
- CPU (default): CLIP ViT-B/32 at 224 px (CLIPConfig's defaults), random weights, float32, the
  same torch thread count in both. Goal: the stage within 10% of the bare forward.
- `--gpu`: CLIP ViT-L/14 at 336 px (the `openai/clip-vit-large-patch14-336` shape), random weights,
  bf16, reporting images/s and GPU utilisation (nvidia-smi samples during each phase). Anchor:
  clip-retrieval ~312 img/s per A100; goal >= 1000 img/s on one H100. Exits with an error when
  torch sees no CUDA GPU.

Run: `python benchmarks/bench_clipscore.py [--gpu] [--samples N] [--batch B] [--decode-threads T]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from mmdata import fsio, samples
from mmdata.config import Pipeline
from mmdata.demo import images as demo
from mmdata.engine import cluster
from mmdata.stages import clipscore

PER_SHARD = 128


def vit_l14_336() -> dict:
    return {
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
        "projection_dim": 768,
    }


def make_model(folder: Path, gpu: bool, captions: list[str]) -> Path:
    """A random-weight CLIP of the real shape, saved like any checkpoint (model, processor, tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
    from transformers.utils import logging as hf_logging

    from mmdata.demo.tiny_clip import build_tokenizer

    hf_logging.disable_progress_bar()
    tok = build_tokenizer(captions, vocab_size=2000, max_tokens=77)
    cfg = vit_l14_336() if gpu else {}
    config = CLIPConfig(**cfg)
    config.text_config.update({"vocab_size": len(tok), "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3})
    CLIPModel(config).save_pretrained(folder)
    side = config.vision_config.image_size
    CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def picture(i: int) -> tuple[bytes, str]:
    rng = demo.seeded_rng("bench-clipscore", i)
    concept = demo.random_concept(rng)
    w = int(rng.integers(320, 641))
    h = int(np.clip(w / rng.uniform(0.7, 1.5), 320, 640))
    return demo.encode(demo.render(concept, w, h, rng), "JPEG", 85), demo.english_caption(concept, rng)


def make_input(src: Path, n: int, threads: int) -> tuple[list[bytes], list[str]]:
    with ThreadPoolExecutor(threads) as pool:
        made = list(pool.map(picture, range(n)))
    for s in range((n + PER_SHARD - 1) // PER_SHARD):
        sid = f"{s:05d}"
        rows = []
        with samples.TarSink(str(src / f"{sid}.tar")) as sink:
            for i in range(s * PER_SHARD, min(n, (s + 1) * PER_SHARD)):
                key = f"{sid}{i % PER_SHARD:04d}"
                img, cap = made[i]
                sink.write({"__key__": key, "jpg": img, "txt": cap, "json": {"key": key, "caption": cap}})
                rows.append({"key": key, "status": "success", "error_message": None, "caption": cap})
        fsio.write_parquet(str(src / f"{sid}.parquet"), pd.DataFrame(rows))
        fsio.write_json(str(src / f"{sid}_stats.json"), {"count": len(rows)})
    return [m[0] for m in made], [m[1] for m in made]


class GpuMonitor:
    """nvidia-smi utilisation samples (every 100 ms) with their times, while running."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def mean(self, t0: float, t1: float) -> str:
        inside = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not inside:
            return "n/a"
        u = np.array(inside)
        return f"{u[:, 0].mean():.0f}% mean GPU utilisation, {u[:, 1].max() / 1024:.1f} GiB max used ({len(u)} samples)"

    def stop(self):
        self.proc.terminate()


class Bare:
    """The model alone over batches prepared beforehand (decoded, normalised, tokenised, on the device)."""

    def __init__(self, model_dir: Path, images: list[bytes], captions: list[str], batch: int, device: str):
        import torch

        from mmdata.models.clip import ClipEncoder

        self.enc = enc = ClipEncoder.load(str(model_dir), device=device, batch_size=batch)
        with ThreadPoolExecutor(8) as pool:
            arrays = list(pool.map(enc.decode, images))
        self.n = len(arrays)
        self.batches = []
        for i in range(0, len(arrays), batch):
            pixels = enc.prep.pixels(torch.from_numpy(np.stack(arrays[i : i + batch])).to(enc.device), enc.dtype)
            tok = {k: v.to(enc.device) for k, v in enc.tokenize(captions[i : i + batch]).items()}
            self.batches.append((pixels, tok))
        self.sync = torch.cuda.synchronize if enc.device.startswith("cuda") else (lambda: None)
        self.forward(*self.batches[0])  # warm-up: kernels, allocator
        self.sync()

    def forward(self, pixels, tok):
        import torch

        with torch.inference_mode():
            return self.enc.model.get_image_features(pixel_values=pixels), self.enc.model.get_text_features(**tok)

    def run(self) -> tuple[float, float, float]:
        """(samples/s, start, end)"""
        t0 = time.time()
        for pixels, tok in self.batches:
            self.forward(pixels, tok)
        self.sync()
        t1 = time.time()
        return self.n / (t1 - t0), t0, t1


def stage(pipe: Pipeline, client) -> tuple[float, float, float, float]:
    """(samples/s over the shards' processing, first start, last finish, wall) of one full run."""
    t = time.time()
    report = clipscore.run(pipe, client=client, overwrite=True)
    wall = time.time() - t
    if not report.ok:
        sys.exit(report.summary())
    stats = list(report.done.values())
    n = sum(s["count"] for s in stats)
    t0, t1 = min(s["started"] for s in stats), max(s["finished"] for s in stats)
    model = sum(s["model_seconds"] for s in stats)
    print(f"  stage: {n} samples in {t1 - t0:.2f}s of shard processing, {model:.2f}s of it in the model")
    return n / (t1 - t0), t0, t1, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true", help="ViT-L/14 at 336 px on CUDA (needs a GPU)")
    ap.add_argument("--samples", type=int, help="pairs (default 128 on CPU, 8192 on GPU)")
    ap.add_argument("--batch", type=int, help="batch size (default 32 on CPU, 256 on GPU)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating bare/stage rounds; best of each reported")
    ap.add_argument("--decode-threads", type=int, help="stage decode threads (default 2 on CPU, 12 on GPU)")
    args = ap.parse_args()

    import torch

    if args.gpu and not torch.cuda.is_available():
        sys.exit(f"error: --gpu needs a CUDA GPU, and torch {torch.__version__} sees none "
                 "(install a CUDA build: make install TORCH=... TORCH_INDEX=...)")
    device = "cuda" if args.gpu else "cpu"
    n = args.samples or (8192 if args.gpu else 128)
    batch = args.batch or (256 if args.gpu else 32)
    decode_threads = args.decode_threads or (12 if args.gpu else 2)
    torch_threads = None if args.gpu else torch.get_num_threads()

    tmp = Path(tempfile.mkdtemp(prefix="bench-clipscore-"))
    try:
        t = time.time()
        images, captions = make_input(tmp / "download", n, threads=16 if args.gpu else 2)
        model_dir = make_model(tmp / "model", args.gpu, captions)
        name = "ViT-L/14 @ 336 px" if args.gpu else "ViT-B/32 @ 224 px"
        mb = sum(len(b) for b in images) / 2**20
        print(f"input: {n} JPEG pairs ({mb:.0f} MiB) in {(n + PER_SHARD - 1) // PER_SHARD} shards; model {name}, "
              f"random weights, {device}, batch {batch}; torch threads {torch.get_num_threads()}; "
              f"prepared in {time.time() - t:.0f}s")
        pipe = Pipeline(workdir=str(tmp / "work"), engine={"n_workers": 1, "threads_per_worker": 1, "progress": False},
                        clipscore={"input": str(tmp / "download"), "model": str(model_dir), "batch_size": batch,
                                   "device": device, "decode_threads": decode_threads, "torch_threads": torch_threads})
        gpu = GpuMonitor() if args.gpu else None
        bare_runs, stage_runs = [], []
        try:
            with cluster(pipe.engine) as client:
                t = time.time()
                stage(pipe, client)  # warm-up: worker start, model load, first batches
                print(f"stage warm-up run (cluster start and model load included): {time.time() - t:.1f}s")
                ceiling = Bare(model_dir, images, captions, batch, device)
                # alternate, so that load from others on a shared machine hits both alike
                for r in range(args.rounds):
                    bare_runs.append(ceiling.run())
                    stage_runs.append(stage(pipe, client))
                    print(f"round {r + 1}: bare {bare_runs[-1][0]:.1f} samples/s, stage {stage_runs[-1][0]:.1f} samples/s")
        finally:
            if gpu:
                gpu.stop()
        b, st = max(bare_runs), max(stage_runs)
        print(f"bare forward (pre-decoded batches on {device}), best of {args.rounds}: {b[0]:8.1f} samples/s")
        print(f"mmdata clipscore (decode threads {decode_threads}), best of {args.rounds}: {st[0]:8.1f} samples/s "
              f"(whole run incl. decision pass: {n / st[3]:.1f} samples/s)")
        print(f"ratio stage / bare: {st[0] / b[0]:.3f}")
        if gpu:
            print(f"GPU during bare forward: {gpu.mean(b[1], b[2])}")
            print(f"GPU during the stage:    {gpu.mean(st[1], st[2])}")
            print("anchor: clip-retrieval ~312 img/s per A100 (ViT-L/14); goal >= 1000 img/s on one H100")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
