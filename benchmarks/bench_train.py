"""MM1 trainer throughput: tokens/s, data-wait share, MFU.

CPU (always): the tiny MM1 (pipelines/mm1-tiny.yaml) on shards of rendered demo images and text,
packed sequences vs one sample per sequence (what loaders without packing do: open_flamingo,
nanoVLM before its packing), alternating rounds in one run. Prints useful (non-padding) tokens/s,
images/s and the data-wait share of step time for each, and the packing speed-up. Goal: data-wait
<= 5% of step time.

GPU (when CUDA is present): CLIP ViT-L/14 at 336 px + a ~1.2B Llama (Llama-3.2-1B's shape) built
from configs with random weights, C-Abstractor to 144 tokens, bf16, packed 4096-token sequences
with up to 16 images: tokens/s, MFU against the device's dense bf16 peak, data-wait share.
The same `gpu_recipe` runs in the tests at toy size on CPU (tests/test_mm1_train.py).

    .venv/bin/python benchmarks/bench_train.py [--steps 30] [--rounds 2] [--gpu-only] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mmdata import manifest
from mmdata.samples import ShardWriter

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 5  # steps left out of every average: worker start-up, allocator warm-up, compilation


def build_shards(root: Path, n_pairs: int = 600, n_docs: int = 120, n_text: int = 120, seed: int = 0) -> Path:
    """captions/, interleaved/, text/ (+ manifest.json each) of rendered demo images and English text."""
    import io

    import numpy as np

    from mmdata.demo import images as im

    rng = np.random.default_rng(seed)

    def jpeg(c) -> bytes:
        buf = io.BytesIO()
        im.render(c, int(rng.integers(240, 400)), int(rng.integers(220, 360)), rng).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    def paragraph(c) -> str:
        pool = [f"The {c.colour} {c.shape} stands out against the {c.background} wall of the gallery.",
                f"Visitors often stop in front of the {c.shape} and ask how long it took to paint.",
                "The exhibition is open every day except Monday, and entry is free for students.",
                "Most of the works on display were made during the last two years by local artists.",
                "Guided tours start at eleven in the morning and last about an hour."]
        return " ".join(rng.choice(pool, size=int(rng.integers(3, 7))))

    streams = {"captions": n_pairs, "interleaved": n_docs, "text": n_text}
    for name, n in streams.items():
        with ShardWriter(str(root / name), max_samples=200, members=True) as w:
            for i in range(n):
                key = f"{i // 200:05d}{i % 200:04d}"
                c = im.random_concept(rng)
                if name == "captions":
                    cap = im.english_caption(c, rng)
                    w.write({"__key__": key, "jpg": jpeg(c), "txt": cap, "json": {"key": key, "kind": "pair", "caption": cap}})
                elif name == "interleaved":
                    sample, slots = {"__key__": key}, []
                    for j in range(int(rng.integers(2, 6))):
                        cj = im.random_concept(rng)
                        slots += [{"type": "text", "text": paragraph(cj)}, {"type": "image", "index": j}]
                        sample[f"{j}.jpg"] = jpeg(cj)
                    slots.append({"type": "text", "text": paragraph(c)})
                    sample["json"] = {"key": key, "kind": "interleaved", "slots": slots}
                    w.write(sample)
                else:
                    text = "\n\n".join(paragraph(im.random_concept(rng)) for _ in range(int(rng.integers(3, 9))))
                    w.write({"__key__": key, "txt": text, "json": {"key": key, "kind": "text"}})
        # what the `shards` stage writes beside every stream, member indexes included
        entries = [{"name": Path(s.url).name, "count": s.count, "bytes": s.bytes, "sha256": s.sha256,
                    "members": Path(s.members).name, "members_sha256": s.members_sha256} for s in w.shards]
        manifest.write(str(root / name), manifest.build(name, entries))
    return root


def summarise(log: str, skip: int = WARMUP) -> dict:
    from mmdata.mm1.metrics import read_log

    recs = read_log(log)[skip:]
    t = sum(r["step_s"] for r in recs)
    out = {"steps": len(recs), "tokens_per_s": sum(r["tokens"] for r in recs) / t,
           "images_per_s": sum(r["images"] for r in recs) / t,
           "data_share": sum(r["data_s"] for r in recs) / t,
           "step_s": statistics.median(r["step_s"] for r in recs),
           "padding_share": 1 - sum(r["tokens"] for r in recs) / max(1, sum(r["sequences"] for r in recs) * _seq_len(log))}
    if recs and recs[0].get("mfu") is not None:
        out["mfu"] = statistics.median(r["mfu"] for r in recs)
    return out


def _seq_len(log: str) -> int:
    return json.loads(Path(log).with_name("recipe.json").read_text())["recipe"]["data"]["seq_len"]


def cpu(shards: Path, work: Path, steps: int, rounds: int, threads: int | None) -> dict:
    from mmdata.mm1 import tiny, train

    common = [f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.progress=false", "data.num_workers=2"]
    if threads:
        common.append(f"train.threads={threads}")
    tok = None
    best: dict[str, dict] = {}
    for r in range(rounds):
        for pack in (True, False):
            name = "packed" if pack else "one sample per sequence"
            over = [*common, f"data.pack={str(pack).lower()}"]
            if tok:
                over += ["model.decoder.train_tokenizer=null", f"model.decoder.tokenizer={tok}"]
            res = train.run(tiny.recipe(shards, work / f"cpu-{r}-{int(pack)}", over), echo=lambda *_: None)
            tok = tok or f"{res.out}/tokenizer"
            s = summarise(res.log)
            print(f"  round {r + 1} {name:<24} {s['tokens_per_s']:>8.0f} tokens/s {s['images_per_s']:>7.1f} images/s "
                  f"data-wait {100 * s['data_share']:4.1f}%  padding {100 * s['padding_share']:4.1f}%", flush=True)
            if name not in best or s["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = s
    return best


# -- GPU

VIT_L_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
             "num_attention_heads": 16, "image_size": 336, "patch_size": 14}
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
            "tie_word_embeddings": True, "rope_theta": 500000.0}


def gpu_recipe(shards: Path, out: Path, *, steps: int, encoder: dict = VIT_L_336, decoder: dict = LLAMA_1B,
               image_size: int = 336, seq_len: int = 4096, global_batch: int = 64, micro_batch: int = 4,
               device: str = "cuda", precision: str = "bf16", compile: bool = True, attn: str = "sdpa",
               vocab: int = 8192, num_workers: int = 6, peak_tflops: float | None = None, connector_hidden: int = 1024):
    """MM1's ablation scale (ViT-L/14 336 px, C-Abstractor 144 tokens, ~1B LLM, 4096 tokens, <= 16 images)."""
    from mmdata.mm1.config import TrainRecipe

    return TrainRecipe.model_validate({
        "name": "bench-gpu", "out": str(out),
        "mixture": {"name": "bench", "global_batch": global_batch, "lanes": num_workers or 1, "total": 100,
                    "sources": {s: {"shards": f"{shards}/{s}/manifest.json", "weight": w}
                                for s, w in (("captions", 45), ("interleaved", 45), ("text", 10))},
                    "decode": {"image_size": image_size, "max_images": 16, "image_tokens": 144}},
        "model": {"encoder": {"config": encoder},
                  "connector": {"type": "c-abstractor", "tokens": 144, "depth": 3, "hidden": connector_hidden},
                  "decoder": {"config": decoder, "train_tokenizer": {"vocab_size": vocab, "samples": 400},
                              "attn_implementation": attn}},
        "data": {"seq_len": seq_len, "micro_batch": micro_batch, "num_workers": num_workers, "prefetch": 4},
        "optim": {"lr": "mm1", "warmup_steps": 10},
        "train": {"steps": steps, "checkpoint_every": 10**9, "device": device, "precision": precision,
                  "compile": compile, "progress": False, "tensorboard": False, "peak_tflops": peak_tflops},
    })


def gpu(shards: Path, work: Path, steps: int) -> dict:
    from mmdata.mm1 import train

    res = train.run(gpu_recipe(shards, work / "gpu", steps=steps), echo=print)
    s = summarise(res.log)
    print(f"  GPU ViT-L/14-336 + 1.2B LLM, bf16, 4096-token packed sequences: {s['tokens_per_s']:.0f} tokens/s, "
          f"{s['images_per_s']:.0f} images/s, MFU {100 * s.get('mfu', float('nan')):.1f}%, "
          f"data-wait {100 * s['data_share']:.1f}%, {s['step_s']:.2f} s/step", flush=True)
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    ap.add_argument("--gpu-steps", type=int, default=30)
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--json", default=None, help="append the results as JSON lines here")
    args = ap.parse_args()
    import torch

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        t = time.perf_counter()
        shards = build_shards(Path(tmp) / "shards")
        print(f"data: rendered demo shards in {time.perf_counter() - t:.1f}s", flush=True)
        if not args.gpu_only:
            print("CPU, tiny MM1 (pipelines/mm1-tiny.yaml):")
            best = cpu(shards, Path(tmp), args.steps, args.rounds, args.threads)
            p, u = best["packed"], best["one sample per sequence"]
            print(f"packed: {p['tokens_per_s']:.0f} tokens/s, data-wait {100 * p['data_share']:.1f}% of step time (goal <= 5%)")
            print(f"packed / one sample per sequence = {p['tokens_per_s'] / u['tokens_per_s']:.2f}x tokens/s")
            results["cpu"] = best
        if torch.cuda.is_available():
            results["gpu"] = gpu(shards, Path(tmp), args.gpu_steps)
        elif args.gpu_only:
            print("no CUDA device: GPU benchmark skipped")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"bench": "train", **results}) + "\n")


if __name__ == "__main__":
    main()
