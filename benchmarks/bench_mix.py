"""Mixture sampler throughput: decoded (what a trainer sees), raw (the sampler's own cost), and the
image path's cost and quality, each side by side with its peers in one run, alternating rounds.

decoded: three sources 45/45/10 of image-caption shards (captions: one JPEG each, 256 px short
side as `download` writes them; interleaved documents: two JPEGs each, 200-512 px as `interleaved`
keeps them; text-only), photo-like content, JPEG q95. Every contender yields batches of 64 with
uint8 images at 224 px, from 2 DataLoader workers:
  ceiling          decode + resize alone in 2 processes, no tar, no IPC, no batching: PIL full
                   decode, bilinear straight to 224x224, the peers' per-image work
  ceiling (mmdata) the same with mmdata's own image path (`Decoder.image`)
  webdataset       one WebDataset over every shard (sources alternate: 45/45/10 on average),
                   `.decode("pil")`, the ceiling's resize, `.batched(64)`
  wds RandomMix    one WebDataset per source, `RandomMix` 45/45/10
  energon          Megatron-Energon's blend (its own `prepare` index, CrudeWebdataset, "pil" decoder)
  wds + mmdata img webdataset calling mmdata's image path: what is the loader's, what the image path's
  mmdata           `mmdata.mix.loader`, exact 45/45/10 per batch
Rates are samples/s between batch 4 and batch 4 + `--batches` (worker start-up excluded), medians of
`--rounds`. Then the trainer's data-wait: a consumer whose step takes 1.1x mmdata's batch time (a
GPU slightly slower than the loader; measured on the same loader just before) and the share of its
time spent waiting for a batch.

raw: the same sampler with decode=False against a raw `webdataset.WebDataset` read and Energon's
blend on raw bytes (num_workers=0): the sampler's own cost, no image work.

quality: per image CPU time and PSNR/SSIM against Lanczos from a full decode (same crop) of the
image paths: the peers' (full decode, bilinear squash), mmdata's former one, mmdata's now at
draft 1 / 1.5 / 2 / 0, on photo-like JPEGs from 256 to 1600 px.

    .venv/bin/python benchmarks/bench_mix.py [--mode all|decoded|raw|quality] [--rounds 3] [--batches 40]
"""

from __future__ import annotations

import argparse
import gc
import io
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmdata.config import MixDecodeConfig
from mmdata.demo.images import photo_like
from mmdata.mix.decode import Decoder
from mmdata.samples import ShardWriter

WEIGHTS = {"captions": 45, "interleaved": 45, "text": 10}
SIZE, BATCH, WORKERS = 224, 64, 2


# ---------------------------------------------------------------------------------------------
# data


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def build_decoded(root: Path) -> dict[str, list[str]]:
    """Shards of 90 captions, 90 documents and 20 texts (45/45/10 within every shard triple)."""
    rs = np.random.default_rng(0)

    def pool(n: int, short: tuple[int, int], seed: int) -> list[bytes]:
        out = []
        for i in range(n):
            s = int(rs.integers(*short)) if short[0] < short[1] else short[0]
            long = int(s * rs.uniform(1.0, 1.6))
            w, h = (long, s) if rs.random() < 0.6 else (s, long)
            out.append(jpeg(photo_like(w, h, seed + i)))
        return out

    captions, figures = pool(24, (256, 256), 0), pool(24, (200, 513), 100)
    plan = {"captions": (8, 90), "interleaved": (8, 90), "text": (8, 20)}
    out = {}
    for name, (shards, per) in plan.items():
        with ShardWriter(str(root / name), max_samples=per, members=True) as w:
            for i in range(shards * per):
                key = f"{i // per:05d}{i % per:04d}"
                if name == "captions":
                    w.write({"__key__": key, "jpg": captions[i % 24], "txt": f"a photograph, number {i}",
                             "json": {"key": key, "kind": "pair", "caption": f"a photograph, number {i}"}})
                elif name == "interleaved":
                    slots = [{"type": "text", "text": "para " * 40}, {"type": "image", "index": 0},
                             {"type": "text", "text": "more " * 40}, {"type": "image", "index": 1}]
                    w.write({"__key__": key, "0.jpg": figures[i % 24], "1.jpg": figures[(i * 7 + 3) % 24],
                             "json": {"key": key, "kind": "interleaved", "slots": slots}})
                else:
                    w.write({"__key__": key, "txt": "a text-only document. " * 60,
                             "json": {"key": key, "kind": "text"}})
        out[name] = [str(root / name / f"{s:05d}.tar") for s in range(shards)]
        write_manifest(root / name, w.shards)
    return out


def build_raw(root: Path, scale: float) -> dict[str, list[str]]:
    rs = np.random.default_rng(0)
    blob = rs.bytes(1 << 20)
    pick = lambda n: blob[(o := int(rs.integers(0, len(blob) - n))): o + n]
    plan = {"captions": (20, 1000), "interleaved": (16, 500), "text": (8, 1000)}
    out = {}
    for name, (shards, per) in plan.items():
        shards = max(1, int(shards * scale))
        with ShardWriter(str(root / name), max_samples=per, members=True) as w:
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
        write_manifest(root / name, w.shards)
    return out


def write_manifest(folder: Path, shards) -> None:
    # what the `shards` stage writes beside every stream (member indexes included): the sampler
    # plans from it without opening tars, and checks every member it reads against the indexes
    from mmdata import manifest as mf

    entries = [{"name": Path(s.url).name, "count": s.count, "bytes": s.bytes, "sha256": s.sha256,
                "members": Path(s.members).name, "members_sha256": s.members_sha256} for s in shards]
    mf.write(str(folder), mf.build(folder.name, entries))


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


def mixture(urls: dict[str, list[str]], batch: int, checksums: bool = True, **decode):
    from mmdata.config import Mixture

    sources = {k: {"shards": v, "weight": WEIGHTS[k]} for k, v in urls.items()}
    return Mixture.model_validate({"sources": sources, "global_batch": batch, "total": 100, "checksums": checksums,
                                   "decode": decode})


# ---------------------------------------------------------------------------------------------
# the peers' per-image work and batches (uint8 out, as generous as mmdata's)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def peer_image(img: Image.Image):
    """A decoded PIL image -> uint8 [3, 224, 224]: bilinear straight to size (the issue's peers)."""
    import torch

    return torch.from_numpy(np.array(img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))).permute(2, 0, 1)


def is_image(key: str) -> bool:
    return key.rsplit(".", 1)[-1].lower() in IMAGE_KEYS


def peer_sample(sample: dict) -> dict:
    """A sample with PIL images (webdataset's / Energon's "pil" decoding) -> images + text."""
    images = [peer_image(sample[k]) for k in sorted(sample) if is_image(k)]
    return {"images": images, "text": sample.get("txt") or ""}


_own = Decoder(MixDecodeConfig(image_size=SIZE))


def own_sample(sample: dict) -> dict:
    """A raw sample -> images through mmdata's image path."""
    images = [_own.image(sample[k]) for k in sorted(sample) if is_image(k)]
    return {"images": images, "text": sample.get("txt", b"").decode()}


def collate(samples: list[dict]) -> dict:
    import torch

    images = [x for s in samples for x in s["images"]]
    return {"images": torch.stack(images) if images else torch.zeros((0, 3, SIZE, SIZE), dtype=torch.uint8),
            "texts": [s["text"] for s in samples], "n": len(samples)}


# ---------------------------------------------------------------------------------------------
# contenders (decoded)

WARM = 4


def timed(batches, n: int) -> tuple[float, int]:
    """samples/s between batch WARM and batch WARM + n; images counted too."""
    it = iter(batches)
    for _ in range(WARM):
        next(it)
    t, samples, images = time.perf_counter(), 0, 0
    for _ in range(n):
        b = next(it)
        samples += b["n"] if "n" in b else len(b["keys"])
        images += len(b["images"])
    return samples / (time.perf_counter() - t), images


def flat(urls: dict[str, list[str]], repeat: int) -> list[str]:
    return [u for _ in range(repeat) for us in zip(*urls.values()) for u in us]


def run_webdataset(urls, n):
    import webdataset as wds
    from torch.utils.data import DataLoader

    ds = (wds.WebDataset(flat(urls, 20), shardshuffle=False, empty_check=False)
          .decode("pil").map(peer_sample).batched(BATCH, collation_fn=collate))
    return timed(DataLoader(ds, batch_size=None, num_workers=WORKERS), n)


def run_randommix(urls, n):
    import webdataset as wds
    from torch.utils.data import DataLoader

    parts = [wds.WebDataset(urls[k] * 20, shardshuffle=False, empty_check=False).decode("pil").map(peer_sample)
             for k in WEIGHTS]
    mix = wds.RandomMix(parts, probs=[WEIGHTS[k] / 100 for k in WEIGHTS])
    ds = wds.DataPipeline(mix, wds.batched(BATCH, collation_fn=collate))
    return timed(DataLoader(ds, batch_size=None, num_workers=WORKERS), n)


def run_wds_own(urls, n):
    import webdataset as wds
    from torch.utils.data import DataLoader

    ds = (wds.WebDataset(flat(urls, 20), shardshuffle=False, empty_check=False)
          .map(own_sample).batched(BATCH, collation_fn=collate))
    return timed(DataLoader(ds, batch_size=None, num_workers=WORKERS), n)


def run_energon(meta: Path, n):
    from megatron.energon import (
        Cooker,
        DefaultTaskEncoder,
        SampleDecoder,
        WorkerConfig,
        get_loader,
        get_train_dataset,
        stateless,
    )

    @stateless
    def cook(sample):
        return peer_sample(sample)

    class Decoded(DefaultTaskEncoder):
        cookers = (Cooker(cook),)
        decoder = SampleDecoder(image_decode="pil")

        def batch(self, samples):
            return collate(samples)

    wc = WorkerConfig(rank=0, world_size=1, num_workers=WORKERS)
    ds = get_train_dataset(meta, batch_size=BATCH, shuffle_buffer_size=None, max_samples_per_sequence=None,
                           worker_config=wc, task_encoder=Decoded())
    return timed(get_loader(ds), n)


def run_mmdata(urls, n):
    from mmdata.mix import loader

    return timed(loader(mixture(urls, BATCH, image_size=SIZE), num_workers=WORKERS), n)


_images: list[bytes] = []


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # what a DataLoader worker does


def _decode_share(args: tuple[str, int]) -> int:
    path, k = args
    fn = (lambda d: peer_image(Image.open(io.BytesIO(d)))) if path == "peer" else _own.image
    mine = _images[k::WORKERS]
    for d in mine:
        fn(d)
    return len(mine)


def run_ceiling(pool, path: str, per_sample: float, n: int):
    t = time.perf_counter()
    done = sum(pool.map(_decode_share, [(path, k) for k in range(WORKERS)]))
    return done / (time.perf_counter() - t) / per_sample, done


def data_wait(urls, n: int) -> tuple[float, float]:
    """A consumer whose step takes 1.1x the loader's batch time, measured on the same loader just
    before (load on a shared machine drifts): (step seconds, share of its time spent in next())."""
    from mmdata.mix import loader

    it = iter(loader(mixture(urls, BATCH, image_size=SIZE), num_workers=WORKERS))
    for _ in range(WARM):
        next(it)
    t = time.perf_counter()
    for _ in range(n // 2):
        next(it)
    step = 1.1 * (time.perf_counter() - t) / (n // 2)
    waited, t0 = 0.0, time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        next(it)
        waited += time.perf_counter() - t
        time.sleep(step)  # the GPU's step; the CPU is free for the workers meanwhile
    return step, waited / (time.perf_counter() - t0)


def decoded(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mix-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        urls = build_decoded(root)
        meta = energon_prepare(root, urls)
        # the ceiling decodes the images of the same stream: 45/45/10 samples, 1 and 2 images
        per_sample = 1.35  # images per sample at 45 x 1 + 45 x 2 + 10 x 0
        _images[:] = [d for i in range(args.batches * BATCH // 100 + 1) for d in _stream_images(urls, i)]
        size = sum(os.path.getsize(u) for us in urls.values() for u in us) / 1e6
        print(f"decoded: {sum(map(len, urls.values()))} shards, {size:.0f} MB, built in {time.perf_counter() - t:.1f}s; "
              f"{args.batches} batches of {BATCH} per contender, {SIZE} px uint8, {WORKERS} workers, "
              f"median of {args.rounds} rounds; cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        pool = multiprocessing.get_context("fork").Pool(WORKERS, initializer=_one_thread)
        pool.map(abs, range(WORKERS))  # started before the clock
        runs = {
            "ceiling (PIL, bilinear)": lambda: run_ceiling(pool, "peer", per_sample, args.batches),
            "ceiling (mmdata image)": lambda: run_ceiling(pool, "own", per_sample, args.batches),
            "webdataset": lambda: run_webdataset(urls, args.batches),
            "wds RandomMix": lambda: run_randommix(urls, args.batches),
            "energon blend": lambda: run_energon(meta, args.batches),
            "wds + mmdata image": lambda: run_wds_own(urls, args.batches),
            "mmdata": lambda: run_mmdata(urls, args.batches),
        }
        rates: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:  # alternate the order: drift hits all alike
                rate, _ = runs[name]()
                rates[name].append(rate)
                gc.collect()  # workers of the last contender gone before the next starts
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        pool.close()
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{'reader':<26}{'samples/s':>10}{'images/s':>10}   rounds")
        for k, v in med.items():
            print(f"{k:<26}{v:>10.0f}{v * per_sample:>10.0f}   " + " ".join(f"{x:.0f}" for x in rates[k]))
        ours = med["mmdata"]
        print(f"mmdata / ceiling (PIL, bilinear)  = {ours / med['ceiling (PIL, bilinear)']:.2f}  (goal >= 0.75)")
        print(f"mmdata / ceiling (mmdata image)   = {ours / med['ceiling (mmdata image)']:.2f}  (the loader's own overhead)")
        print(f"mmdata / webdataset               = {ours / med['webdataset']:.2f}  (goal >= 1.3)")
        print(f"mmdata / wds RandomMix            = {ours / med['wds RandomMix']:.2f}")
        print(f"mmdata / energon blend            = {ours / med['energon blend']:.2f}")
        print(f"mmdata / wds + mmdata image       = {ours / med['wds + mmdata image']:.2f}  (same image path: loader vs loader)")
        step, wait = data_wait(urls, args.batches)
        print(f"trainer data-wait at {step * 1e3:.0f} ms/step (1.1x mmdata's batch time): {wait:.1%}  (goal <= 5%)")


def _stream_images(urls: dict[str, list[str]], i: int) -> list[bytes]:
    """The images of 100 samples in 45/45/10 proportion, as the ceiling decodes them."""
    from mmdata.samples import read_shard

    caps = [x["jpg"] for _, x in zip(range(45), read_shard(urls["captions"][i % len(urls["captions"])]))]
    docs = [x[k] for _, x in zip(range(45), read_shard(urls["interleaved"][i % len(urls["interleaved"])]))
            for k in ("0.jpg", "1.jpg")]
    return caps + docs


# ---------------------------------------------------------------------------------------------
# raw


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
    ds = wds.WebDataset(flat(urls, n // 1000 + 1), shardshuffle=False, empty_check=False)
    return count((1 for _ in ds), n)


def raw_energon(meta: Path, n: int):
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
    ds = get_train_dataset(meta, batch_size=256, shuffle_buffer_size=None, max_samples_per_sequence=None,
                           worker_config=wc, task_encoder=Raw())
    return count((len(b) for b in get_loader(ds)), n)


def raw_mmdata(urls: dict[str, list[str]], n: int, checksums: bool = True):
    from mmdata.mix import loader

    mix = mixture(urls, 256, checksums=checksums)
    return count((len(b["keys"]) for b in loader(mix, num_workers=0, decode=False)), n)


def raw(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mix-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        urls = build_raw(root, args.scale)
        meta = None if args.skip_peers else energon_prepare(root, urls)
        size = sum(os.path.getsize(u) for us in urls.values() for u in us) / 1e6
        print(f"raw: {sum(map(len, urls.values()))} shards, {size:.0f} MB, built in {time.perf_counter() - t:.1f}s; "
              f"reading {args.samples} samples per contender, batch 256, num_workers=0, median of {args.rounds}")
        runs = {"webdataset (raw read)": lambda: raw_webdataset(urls, args.samples),
                "energon (blend)": lambda: raw_energon(meta, args.samples),
                "mmdata.mix (exact)": lambda: raw_mmdata(urls, args.samples),
                "mmdata.mix, checksums off": lambda: raw_mmdata(urls, args.samples, checksums=False)}
        if args.skip_peers:
            runs = {k: v for k, v in runs.items() if k.startswith("mmdata")}
        rates: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                seen, dt = runs[name]()
                rates[name].append(seen / dt)
        med = {k: statistics.median(v) for k, v in rates.items()}
        for name, rate in med.items():
            print(f"{name:<24}{rate:>10.0f} samples/s   rounds " + " ".join(f"{x:.0f}" for x in rates[name]))
        ours = med["mmdata.mix (exact)"]
        # the member checks (every member's name, offset, size and xxh3 against the shard's index)
        # against the same sampler without them, same shards, alternating rounds
        off = med["mmdata.mix, checksums off"]
        print(f"member checksums: {ours:.0f} vs {off:.0f} samples/s unchecked = {ours / off:.3f} "
              f"({(off / ours - 1) * 100:+.1f}% time per sample)")
        if not args.skip_peers:
            print(f"mmdata.mix / webdataset = {ours / med['webdataset (raw read)']:.2f}  (goal >= 0.95)")
            print(f"mmdata.mix / energon    = {ours / med['energon (blend)']:.2f}  (goal >= 1.00)")


# ---------------------------------------------------------------------------------------------
# quality


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03), per channel."""
    from scipy.ndimage import gaussian_filter

    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = lambda x: gaussian_filter(x, sigma=(1.5, 1.5, 0), truncate=3.5)
    ma, mb = g(a), g(b)
    va, vb, cov = g(a * a) - ma**2, g(b * b) - mb**2, g(a * b) - ma * mb
    return float((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())


def _full_box(data: bytes, drafted: tuple[int, int], box: tuple[float, ...]) -> tuple[Image.Image, tuple]:
    """The full decode and `box` (in the drafted image's pixels) in its pixels."""
    from mmdata.images import open_rgb

    full = open_rgb(data)
    k = round(full.width / drafted[0])  # DCT scaling is by 1, 2, 4 or 8
    l, t, r, b = (v * k for v in box)
    return full, (l, t, min(r, full.width), min(b, full.height))


def old_path(data: bytes) -> tuple[np.ndarray, tuple, tuple]:
    """mmdata's image path before issue 18: draft, bicubic of the whole image, then crop."""
    from mmdata.images import open_rgb

    img = open_rgb(data, SIZE)
    w, h = img.size
    k = SIZE / min(w, h)
    nw, nh = max(SIZE, round(w * k)), max(SIZE, round(h * k))
    left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    out = np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC).crop((left, top, left + SIZE, top + SIZE)))
    kx, ky = nw / w, nh / h
    return out, img.size, (left / kx, top / ky, (left + SIZE) / kx, (top + SIZE) / ky)


def new_path(draft: float):
    from mmdata.images import open_rgb

    dec = Decoder(MixDecodeConfig(image_size=SIZE, draft=draft))

    def run(data: bytes) -> tuple[np.ndarray, tuple, tuple]:
        out = dec.image(data).permute(1, 2, 0).numpy()
        w, h = open_rgb(data, dec.draft).size
        m = min(w, h)
        left, top = (w - m) // 2, (h - m) // 2
        return out, (w, h), (left, top, left + m, top + m)
    return run, dec.image


def peer_path(data: bytes) -> tuple[np.ndarray, tuple, tuple]:
    img = Image.open(io.BytesIO(data))
    return peer_image(img).permute(1, 2, 0).numpy(), img.size, (0, 0, *img.size)


def peer_cost(data: bytes):
    return peer_image(Image.open(io.BytesIO(data)))


def quality(args) -> None:
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker: per-image cost on one core
    sizes = [(256, 341), (341, 256), (384, 512), (512, 384), (512, 683), (640, 480), (768, 1024), (1024, 768),
             (1600, 1200), (300, 900)]
    images = [jpeg(photo_like(w, h, 1000 + i), 90) for i, (w, h) in enumerate(sizes)]
    # name -> (what gives the pixels and the crop, what is timed)
    paths = {"peers: full decode, bilinear squash": (peer_path, peer_cost),
             "mmdata before: draft 1, bicubic, crop": (old_path, old_path),
             "mmdata: draft 1, crop, bicubic (default)": new_path(1), "mmdata: draft 1.5": new_path(1.5),
             "mmdata: draft 2": new_path(2), "mmdata: draft 0 (full decode)": new_path(0)}
    print(f"quality: {len(images)} photo-like JPEGs (q90) from {sizes[0]} to {sizes[8]}, {SIZE} px out; reference: "
          f"Lanczos from the full decode over the same crop; CPU ms per image (min of 3 x 5)")
    print(f"{'path':<42}{'ms/img':>8}{'PSNR med':>10}{'PSNR min':>10}{'SSIM med':>10}{'SSIM min':>10}")
    for name, (fn, cost_fn) in paths.items():
        ps, ss, cost = [], [], 0.0
        for data in images:
            out, drafted, box = fn(data)
            full, fbox = _full_box(data, drafted, box)
            ref = np.asarray(full.resize((SIZE, SIZE), Image.Resampling.LANCZOS, box=fbox))
            ps.append(psnr(out, ref))
            ss.append(ssim(out, ref))
            best = math.inf
            for _ in range(3):
                t = time.process_time()
                for _ in range(5):
                    cost_fn(data)
                best = min(best, (time.process_time() - t) / 5)
            cost += best
        print(f"{name:<42}{cost / len(images) * 1e3:>8.2f}{statistics.median(ps):>10.1f}{min(ps):>10.1f}"
              f"{statistics.median(ss):>10.4f}{min(ss):>10.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["all", "decoded", "raw", "quality"], default="all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=40, help="decoded: batches of 64 timed per contender")
    ap.add_argument("--samples", type=int, default=30_000, help="raw: samples per contender")
    ap.add_argument("--scale", type=float, default=1.0, help="raw: shard count multiplier")
    ap.add_argument("--skip-peers", action="store_true", help="raw: only mmdata, with and without member checksums")
    args = ap.parse_args()
    for mode in ("quality", "decoded", "raw"):
        if args.mode in (mode, "all"):
            globals()[mode](args)


if __name__ == "__main__":
    main()
