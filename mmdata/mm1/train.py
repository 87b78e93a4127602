"""The MM1 training loop: mixture batches -> packed sequences -> AdamW steps, resumable exactly.

One optimizer step is one global batch of the mixture (its exact source ratios). Each process
reads its data ranks' local batches, already tokenised and packed by the DataLoader workers
(`mmdata.mm1.pack.Packer` as the sampler's per-batch transform), runs them in micro-batches of
`data.micro_batch` sequences, and normalises the summed loss by the number of target tokens of the
whole global batch, so gradients do not depend on how sequences fall into micro-batches or ranks:
2 processes with DDP give the loss curve of 1 process reading both data ranks.

`run(recipe)` -> Result(out, log, checkpoint, model): the library entry point behind
`mmdata train` and `make train`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from mmdata import config as cfgmod
from mmdata import fsio as io
from mmdata.config import Mixture
from mmdata.memory import keep_freed_memory
from mmdata.mm1 import checkpoint as ck
from mmdata.mm1 import dist as dd
from mmdata.mm1 import tokenizer as tk
from mmdata.mm1.config import TrainRecipe
from mmdata.mm1.metrics import FlopCounter, StepLog, device_peak
from mmdata.mm1.model import MM1, ImageSpec
from mmdata.mm1.pack import IGNORE, Packer
from mmdata.samples import read_shard

log = logging.getLogger(__name__)

# knobs that change speed or bookkeeping, never the numbers a run produces: a resumed run may change them
PACE = {"name", "out", "data.num_workers", "data.prefetch", "data.micro_batch", "train.checkpoint_every", "train.keep",
        "train.log_every", "train.progress", "train.tensorboard", "train.peak_tflops", "train.threads", "train.compile",
        "train.device", "train.backend", "train.strategy"}


class TrainError(RuntimeError):
    """A run that cannot start or continue as configured, phrased for the user."""


@dataclass
class Result:
    out: str
    log: str  # log.jsonl
    checkpoint: str | None  # the newest complete checkpoint
    model: str | None  # the exported model (MM1.from_pretrained), written at the end of training
    step: int
    loss: float | None


# -- recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> TrainRecipe:
    return cfgmod.load(path, TrainRecipe, list(overrides))


def mixture_of(recipe: TrainRecipe) -> Mixture:
    if isinstance(recipe.mixture, Mixture):
        if recipe.mixture_overrides:
            raise TrainError("mixture_overrides apply to a mixture file; set the inline mixture's fields directly")
        return recipe.mixture
    return cfgmod.load(recipe.mixture, Mixture, recipe.mixture_overrides)


def fingerprint(recipe: TrainRecipe, mix: Mixture) -> tuple[str, dict]:
    """What decides a run's numbers: the recipe without PACE fields, with the mixture resolved."""
    data = recipe.model_dump(mode="json")
    data["mixture"] = mix.model_dump(mode="json")
    data.pop("mixture_overrides", None)
    for dotted in PACE:
        node, *rest = dotted.split(".")
        if rest:
            data.get(node, {}).pop(rest[0], None)
        else:
            data.pop(node, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16], data


def _diff(a: dict, b: dict, where: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{where}{k}.")
        elif x != y:
            out.append(f"{where}{k}: {x!r} -> {y!r}")
    return out


def mm1_lr(n: int) -> float:
    """MM1's peak learning rate for N parameters: exp(-0.4214 ln N - 0.5535)."""
    return math.exp(-0.4214 * math.log(n) - 0.5535)


def lr_lambda(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to the peak, then cosine to `floor` x peak at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: MM1, recipe: TrainRecipe) -> tuple[list[dict], dict[str, float]]:
    """Per part (encoder, connector, decoder): decayed weights and undecayed biases / norms /
    embeddings-as-vectors, each at the part's learning rate. Frozen parts have no group."""
    o = recipe.optim
    counts = model.counts()
    base = mm1_lr(counts["decoder"]["trainable"] + counts["decoder"]["frozen"]) if o.lr == "mm1" else float(o.lr)
    # MM1's decoupled decay of 0.1 x lr per step is torch AdamW's weight_decay=0.1 (torch multiplies by lr)
    wd = 0.1 if o.weight_decay == "mm1" else float(o.weight_decay)
    groups, lrs = [], {}
    for part, module in model.parts().items():
        lr = getattr(o, f"{part}_lr") or base
        decay, plain = [], []
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else plain).append(p)
        if not decay and not plain:
            continue
        lrs[part] = lr
        groups += [{"params": decay, "lr": lr, "weight_decay": wd, "part": part},
                   {"params": plain, "lr": lr, "weight_decay": 0.0, "part": part}]
    return [g for g in groups if g["params"]], lrs


# -- tokenizer and data


def sample_text(sample: dict) -> list[str]:
    """The text of a raw shard sample (caption, synthetic caption, document text), no images decoded."""
    from mmdata.mix.decode import kind_of, parse

    rec = parse(sample)
    kind = kind_of(sample, rec)
    if kind == "interleaved":
        return [s["text"] for s in rec.get("slots", []) if s.get("type") == "text" and s.get("text")]
    out = [sample["txt"].decode("utf-8", "replace")] if "txt" in sample else [rec.get("caption") or rec.get("text") or ""]
    if rec.get("synthetic_caption"):
        out.append(rec["synthetic_caption"])
    return [t for t in out if t]


def corpus(mix: Mixture, per_source: int):
    """Up to `per_source` samples' text from each source with a positive weight, catalogue order."""
    from mmdata.mix import reader

    for name, src in mix.sources.items():
        if src.weight <= 0:
            continue
        n = 0
        for url, _ in reader.catalogue(name, src.shards).shards:
            for sample in read_shard(url):
                yield from sample_text(sample)
                n += 1
                if n >= per_source:
                    break
            if n >= per_source:
                break


@contextmanager
def local_dir(url: str):
    """A local folder holding `url`'s files (the folder itself when local)."""
    if io.is_local(url):
        yield url
        return
    fs, path = io.fs_path(url)
    with tempfile.TemporaryDirectory(prefix="mm1-") as tmp:
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        yield tmp


def put_dir(local: str, url: str) -> None:
    if io.is_local(url):
        if os.path.abspath(local) != os.path.abspath(url):
            shutil.copytree(local, url, dirs_exist_ok=True)
        return
    fs, path = io.fs_path(url)
    fs.put(local.rstrip("/") + "/", path, recursive=True)


def tokenizer_for(recipe: TrainRecipe, mix: Mixture, d: dd.Dist, echo):
    dcfg = recipe.model.decoder
    image_token = recipe.model.image_token
    if dcfg.train_tokenizer is None:
        return tk.load(dcfg.tokenizer or dcfg.model, image_token)
    saved = io.join(recipe.out, "tokenizer")
    if d.main and not io.exists(io.join(saved, "tokenizer.json")):
        t0 = time.time()
        tok = tk.train_bpe(corpus(mix, dcfg.train_tokenizer.samples), dcfg.train_tokenizer.vocab_size, image_token)
        with tempfile.TemporaryDirectory(prefix="mm1-tok-") as tmp:
            tok.save_pretrained(tmp)
            put_dir(tmp, saved)
        echo(f"tokenizer: byte-level BPE, {len(tok)} tokens, trained on the mixture's text in {time.time() - t0:.1f}s")
    d.barrier()
    with local_dir(saved) as path:
        return tk.load(path, image_token)


def pretrain_parts(recipe: TrainRecipe, d: dd.Dist, echo) -> None:
    """`encoder.pretrain` and `decoder.pretrain`: the tiny tower and the tiny LM are pretrained into
    their `model` folders once, by the main process, and reused by every later run that names the
    same folder with the same recipe; a folder built with another recipe is built again (never
    silently reused)."""
    from mmdata.demo import tiny_lm, tiny_vision

    parts = [(p, part, build) for p, part, build in (("encoder", recipe.model.encoder, tiny_vision.ensure),
                                                      ("decoder", recipe.model.decoder, tiny_lm.ensure))
             if part.pretrain is not None]
    for p, part, _ in parts:
        if not io.is_local(part.model):
            raise TrainError(f"{p}.model {part.model}: pretrain writes a local folder")
    if d.main and parts:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # every other rank, or parallel run, waits for it meanwhile
        try:
            for _, part, build in parts:
                build(part.model, part.pretrain, echo)  # seeds torch itself; the run re-seeds right after
        finally:
            torch.set_num_threads(threads)
    d.barrier()


def make_loaders(recipe: TrainRecipe, mix: Mixture, d: dd.Dist, packer: Packer) -> list:
    from mmdata.mix import loader

    ranks = recipe.data.data_ranks or d.world
    if ranks % d.world:
        raise TrainError(f"data.data_ranks={ranks} is not a multiple of the {d.world} processes")
    per = ranks // d.world
    nw = recipe.data.num_workers
    kw = {"prefetch_factor": recipe.data.prefetch} if nw else {}
    if d.device.startswith("cuda"):
        kw["pin_memory"] = True
    return [loader(mix, rank=d.rank * per + i, world_size=ranks, num_workers=nw, transform=packer, **kw)
            for i in range(per)]


def merge(batches: list[dict]) -> dict:
    """This process's data ranks' packed batches as one."""
    if len(batches) == 1:
        return batches[0]
    out = {k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "targets", "position_ids", "segments",
                                                           "n_images", "pixels")}
    out["pack"] = {k: sum(b["pack"][k] for b in batches) for k in batches[0]["pack"]}
    out["sources"] = [s for b in batches for s in b["sources"]]
    out["epoch"], out["batch"] = batches[0]["epoch"], batches[0]["batch"]
    return out


def micro_batches(b: dict, size: int, count: int, pad: int) -> list[tuple]:
    """(input_ids, position_ids, targets, pixels) per micro-batch, padded to `count` with empty ones."""
    out = []
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), b["n_images"].cumsum(0)])
    S = b["input_ids"].shape[0]
    for i in range(0, S, size):
        j = min(S, i + size)
        out.append((b["input_ids"][i:j], b["position_ids"][i:j], b["targets"][i:j],
                    b["pixels"][int(starts[i]):int(starts[j])]))
    T = b["input_ids"].shape[1]
    while len(out) < count:  # this rank ran out of sequences: a row that predicts nothing
        out.append((torch.full((1, T), pad, dtype=torch.int64), torch.arange(T).unsqueeze(0),
                    torch.full((1, T), IGNORE, dtype=torch.int64), b["pixels"][:0]))
    return out


# -- the run


def run(recipe: TrainRecipe | str | os.PathLike, overrides: list[str] = (), *, overwrite: bool = False,
        echo=print) -> Result:
    """Train (or resume) the run `recipe.out` to `train.steps`; returns where everything is."""
    if not isinstance(recipe, TrainRecipe):
        recipe = load_recipe(recipe, overrides)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisers run in the DataLoader workers
    t = recipe.train
    d = dd.setup(t.device, t.strategy, t.backend)
    try:
        return _run(recipe, d, overwrite, echo if d.main else (lambda *_: None))
    finally:
        dd.shutdown()


def _run(recipe: TrainRecipe, d: dd.Dist, overwrite: bool, echo) -> Result:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t = recipe.train
    if t.threads:
        torch.set_num_threads(t.threads)
    # A process started after Dask set MALLOC_TRIM_THRESHOLD_ (make ablate's runs, ranks launched by
    # a pipeline process) page-faults every activation anew: 60 steps took 23.1 s (9.3 s system)
    # there, 13.7 s (0.8 s) with this.
    keep_freed_memory()
    mix = mixture_of(recipe)
    fp, fp_data = fingerprint(recipe, mix)
    ckroot = io.join(recipe.out, "checkpoints")
    if overwrite and d.main and io.exists(recipe.out):
        fs, path = io.fs_path(recipe.out)
        fs.rm(path, recursive=True)
    d.barrier()
    found = ck.latest(ckroot)
    meta = ck.read_meta(io.join(found[1], "train.json")) if found else None
    if meta is not None and meta["fingerprint"] != fp:
        changed = "; ".join(_diff(meta["recipe"], fp_data)[:6])
        raise TrainError(f"{recipe.out} holds a run with other settings ({changed}); resume with the same "
                         f"recipe, or start over with --overwrite or another out")

    pretrain_parts(recipe, d, echo)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    tok = tokenizer_for(recipe, mix, d, echo)
    model = MM1(recipe.model, tok, ImageSpec.from_decode(mix.decode))
    counts = model.counts()
    max_images = recipe.data.max_images or mix.decode.max_images
    packer = Packer(model.codec, recipe.data.seq_len, max_images, recipe.data.pack, recipe.data.long)
    model.to(d.device)
    cuda = d.device.startswith("cuda")
    bf16 = t.precision == "bf16" or (t.precision == "auto" and cuda)
    if t.compile:
        model.encoder.tower.compile()
        model.decoder.base_model.compile()
    wrapped = dd.wrap(model, d, bf16=bf16)
    groups, lrs = param_groups(model, recipe)  # after wrapping: fully_shard replaces the parameters
    if not groups:
        raise TrainError("every part is frozen: nothing to train")
    o = recipe.optim
    opt = torch.optim.AdamW(groups, betas=o.betas, eps=o.eps, fused=cuda or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, o.warmup_steps, t.steps, o.min_lr_ratio))
    loaders = make_loaders(recipe, mix, d, packer)
    data_ranks = recipe.data.data_ranks or d.world
    step = 0
    if found:
        step = _restore(found[1], meta, wrapped, opt, sched, loaders, d, data_ranks)
        echo(f"resumed {recipe.out} at step {step} ({found[1]})")
    torch.manual_seed(t.seed * 1000 + d.rank + step)  # dropout differs per rank; replaced by the saved RNG on resume
    if found:
        _restore_rng(found[1], d)

    patches = model.encoder.grid(model.image.size) ** 2 + int(model.encoder.has_cls)
    flops = FlopCounter(counts, patches)
    peak = device_peak(d.device, t.peak_tflops)
    n_total = {k: v["trainable"] + v["frozen"] for k, v in counts.items()}
    echo(f"mm1 {recipe.name}: " + ", ".join(f"{k} {n / 1e6:.2f}M{' (frozen)' if not counts[k]['trainable'] else ''}"
                                             for k, n in n_total.items())
         + "; lr " + ", ".join(f"{k} {v:.2e}" for k, v in lrs.items())
         + f"; {d.world} process(es) x {data_ranks // d.world} data rank(s), {d.device}, "
         f"{'bf16' if bf16 else 'fp32'}, strategy {d.strategy}")

    log_url = io.join(recipe.out, "log.jsonl")
    log_tmp = None if io.is_local(recipe.out) else tempfile.mkdtemp(prefix="mm1-log-")  # S3 has no append
    log_local = log_url if log_tmp is None else os.path.join(log_tmp, "log.jsonl")
    if d.main and not io.is_local(recipe.out) and io.exists(log_url):
        Path(log_local).write_bytes(io.read_bytes(log_url))
    logger = StepLog(log_local, t.steps, step, progress=t.progress, tensorboard=t.tensorboard) if d.main else None
    if d.main and step == 0:
        io.write_json(io.join(recipe.out, "recipe.json"), {"fingerprint": fp, "recipe": recipe.model_dump(mode="json")})

    def save(at: int) -> str:
        url = _save(ckroot, at, wrapped, opt, sched, loaders, d, data_ranks, fp, fp_data, t.keep)
        if d.main and log_tmp is not None:
            io.atomic_write(log_url, Path(log_local).read_bytes())
        return url

    params = [p for g in groups for p in g["params"]]
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    iters = [iter(ld) for ld in loaders]
    last_loss, last_ck = None, found[1] if found else None
    wrapped.train()
    try:
        while step < t.steps:
            t0 = time.perf_counter()
            batches = []
            for i, ld in enumerate(loaders):
                try:
                    batches.append(next(iters[i]))
                except StopIteration:  # exhaustion: stop ended the epoch (on every data rank at once)
                    iters[i] = iter(ld)
                    batches.append(next(iters[i]))
            b = merge(batches)
            t_data = time.perf_counter() - t0

            n_targets = d.sum(b["pack"]["targets"])
            n_micro = d.max(math.ceil(b["input_ids"].shape[0] / recipe.data.micro_batch))
            scale = d.world / max(n_targets, 1.0)  # DDP / FSDP average gradients over ranks: undo that
            opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            mbs = micro_batches(b, recipe.data.micro_batch, n_micro, model.codec.pad)
            for k, (ids, pos, tgt, pix) in enumerate(mbs):
                with dd.grad_sync(wrapped, d, k == len(mbs) - 1):
                    with autocast:
                        out = wrapped(ids.to(d.device, non_blocking=True), pos.to(d.device, non_blocking=True),
                                      tgt.to(d.device, non_blocking=True), pix)
                    (out["loss_sum"] * scale).backward()
                loss_sum += out["loss_sum"].detach().double()
            gnorm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip) if o.grad_clip else None
            opt.step()
            sched.step()
            step += 1
            # one all-reduce for the step's numbers; the .item() waits for the device
            loss, tokens, images, sequences = d.sums([
                loss_sum.item(), b["input_ids"].numel() - b["pack"]["padding"], int(b["n_images"].sum()),
                b["input_ids"].shape[0]])
            loss /= max(n_targets, 1.0)
            t_step = time.perf_counter() - t0
            last_loss = loss

            if step % t.log_every == 0 or step == t.steps:
                rec = {
                    "step": step, "loss": loss, "lr": {g["part"]: g["lr"] for g in opt.param_groups},
                    "grad_norm": None if gnorm is None else float(_full(gnorm)),
                    "tokens": int(tokens), "targets": int(n_targets), "images": int(images),
                    "sequences": int(sequences), "micro_batches": n_micro,
                    "tokens_per_s": tokens / t_step, "images_per_s": images / t_step,
                    "step_s": t_step, "data_s": t_data, "compute_s": t_step - t_data, "data_share": t_data / t_step,
                    "mfu": None if peak is None else flops.step(int(tokens), int(images)) / (t_step * peak * d.world),
                    "epoch": b["epoch"], "batch": b["batch"],
                }
                if logger is not None:
                    logger.write(rec)
            if step % t.checkpoint_every == 0 or step == t.steps:
                last_ck = save(step)
    finally:
        if logger is not None:
            logger.close()
        del iters
    model_url = io.join(recipe.out, "model")
    _export(wrapped, model, recipe, tok, mix, d, model_url)
    if d.main:
        if log_tmp is not None:
            io.atomic_write(log_url, Path(log_local).read_bytes())
            shutil.rmtree(log_tmp, ignore_errors=True)
        echo(f"done: step {step}, loss {last_loss if last_loss is None else round(last_loss, 4)}; "
             f"log {log_url}; checkpoint {last_ck}; model {model_url}")
    d.barrier()
    return Result(recipe.out, log_url, last_ck, model_url, step, last_loss)


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.full_tensor() if hasattr(x, "full_tensor") else x  # FSDP: a DTensor


# -- checkpoints


def _state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _save(root: str, step: int, model, opt, sched, loaders, d: dd.Dist, data_ranks: int, fp: str, fp_data: dict,
          keep: int) -> str:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    url = ck.step_url(root, step)
    msd = get_model_state_dict(model, options=_state_options())  # collective under FSDP
    osd = get_optimizer_state_dict(model, opt, options=_state_options())
    if d.main:
        ck.save_torch(io.join(url, "model.pt"), msd)
        ck.save_torch(io.join(url, "optim.pt"), osd)
        ck.write_meta(io.join(url, "train.json"), {
            "step": step, "scheduler": sched.state_dict(), "world_size": d.world, "data_ranks": data_ranks,
            "fingerprint": fp, "recipe": fp_data})
    per = data_ranks // d.world
    for i, ld in enumerate(loaders):
        io.write_json(io.join(url, f"sampler-{d.rank * per + i:05d}.json"), ld.state_dict())
    ck.save_torch(io.join(url, f"rng-{d.rank:05d}.pt"), ck.rng_state())
    d.barrier()
    if d.main:
        io.write_json(io.join(url, "done.json"), {"step": step})
        ck.prune(root, keep)
    d.barrier()
    return url


def _restore(url: str, meta: dict, model, opt, sched, loaders, d: dd.Dist, data_ranks: int) -> int:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if meta["data_ranks"] != data_ranks:
        raise TrainError(f"{url} was written with data_ranks={meta['data_ranks']}; this run has {data_ranks}: set "
                         f"data.data_ranks: {meta['data_ranks']} (a multiple of the process count) to continue its stream")
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ck.load_torch(io.join(url, "model.pt")), options=opts)
    set_optimizer_state_dict(model, opt, ck.load_torch(io.join(url, "optim.pt")), options=opts)
    sched.load_state_dict(meta["scheduler"])
    per = data_ranks // d.world
    for i, ld in enumerate(loaders):
        ld.load_state_dict(ck.read_meta(io.join(url, f"sampler-{d.rank * per + i:05d}.json")))
    return int(meta["step"])


def _restore_rng(url: str, d: dd.Dist) -> None:
    rng = io.join(url, f"rng-{d.rank:05d}.pt")
    if io.exists(rng):
        ck.set_rng_state(ck.load_torch(rng))
    else:  # a different process count: this rank's generator starts from the seed (dropout only)
        log.warning("%s has no RNG state for rank %d; seeded afresh", url, d.rank)


def _export(wrapped, model: MM1, recipe: TrainRecipe, tok, mix: Mixture, d: dd.Dist, url: str) -> None:
    """save_pretrained of the trained model (FSDP: gathered to rank 0 into an unsharded copy)."""
    if d.strategy != "fsdp":
        if d.main:
            model.save_pretrained(url)
        d.barrier()
        return
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(wrapped, options=_state_options())
    if d.main:
        copy = MM1(recipe.model, tok, ImageSpec.from_decode(mix.decode), check_packing=False)
        copy.load_state_dict(state)
        copy.save_pretrained(url)
    d.barrier()
