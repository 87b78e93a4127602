"""`make ablate`: MM1's data and architecture ablations at toy scale, end to end.

The demo corpus goes through the real pipeline (`pipelines/demo.yaml`: download, filter, dedup,
CLIP score, interleaved, text, shards); every row of `pipelines/ablate.yaml` trains the bundled MM1
trainer on those training shards through the mixture sampler, once per seed, and is evaluated on
the demo's held-out tasks (0-shot captioning CIDEr, 4- and 8-shot accuracy on the in-context task,
few-shot VQA, the text task). The table gives mean ± 95% interval over seeds (Student t) and, under
it, one line per MM1 finding: reproduced or not, with the numbers. Every seed listed is run and
counted: a finding is never rescued by dropping a seed.

Rows differ from the baseline (45:45:10 with VeCap, C-Abstractor, the baseline's resolution and
token count) only by their overrides, so each finding compares the baseline with one change.
Every run is resumable: a finished run (model exported, results written) is skipped, a killed one
continues from its last checkpoint, and the trainer refuses a folder trained with other settings.

`--scale S` multiplies training steps, corpus size and evaluated items (for a GPU).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field

from mmdata import config as cfgmod
from mmdata import fsio, samples
from mmdata.config import Strict
from mmdata.eval.metrics import mean_ci, t95

# the table's columns: (key, header, task, shots); `vqa_shots` picks the VQA column's shots
COLUMNS = (("caption0", "CIDEr 0-shot", "caption", 0), ("icl4", "ICL 4-shot %", "icl", 4),
           ("icl8", "ICL 8-shot %", "icl", 8), ("vqa", "VQA %", "vqa", None), ("text", "text %", "text", 0))


class DataSpec(Strict):
    """The demo corpus and the pipeline that turns it into training shards."""

    recipe: str = "pipelines/demo.yaml"
    workdir: str = Field("work/ablate/data", description="the pipeline's workdir (its shards/ feed every run)")
    corpus: str = "work/ablate/corpus"
    pairs: int = Field(2000, ge=100)
    docs: int = Field(3000, ge=20)
    seed: int = 0


class Row(Strict):
    name: str
    mixture: list[str] = Field(default_factory=list, description="overrides of the mixture YAML")
    train: list[str] = Field(default_factory=list, description="overrides of the training recipe")


class AblateConfig(Strict):
    name: str = "ablate"
    out: str = "work/ablate"
    data: DataSpec = DataSpec()
    train: str = "pipelines/mm1-tiny.yaml"
    train_overrides: list[str] = Field(default_factory=list, description="for every run (steps, sizes)")
    mixture_overrides: list[str] = Field(default_factory=list)
    eval: str = "pipelines/eval-demo.yaml"
    eval_overrides: list[str] = Field(default_factory=list)
    vqa_shots: int = 4
    seeds: list[int] = Field([0, 1, 2], min_length=2, description="every seed is run and counted")
    jobs: int = Field(2, ge=1, description="runs trained at once, each in its own process (a tiny run keeps about "
                      "one core busy: 2 on a 2-core machine; 1 on a GPU)")
    rows: list[Row]
    baseline: str = Field("45:45:10", description="the row every finding compares against")


# --- running -----------------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def scaled(cfg: AblateConfig, scale: float) -> AblateConfig:
    """Steps, corpus and evaluated items times `scale`."""
    if scale == 1:
        return cfg
    from mmdata.mm1.train import load_recipe

    base = load_recipe(cfg.train, cfg.train_overrides)
    ev = load_eval(cfg)
    data = cfg.data.model_copy(update={"pairs": int(cfg.data.pairs * scale), "docs": int(cfg.data.docs * scale),
                                       "corpus": f"{cfg.data.corpus}-x{scale:g}", "workdir": f"{cfg.data.workdir}-x{scale:g}"})
    extra = [f"train.steps={max(1, round(base.train.steps * scale))}"]
    ev_extra = [f"max_items={max(1, round((ev.max_items or 100) * scale))}"]
    return cfg.model_copy(update={"data": data, "out": f"{cfg.out}-x{scale:g}",
                                  "train_overrides": cfg.train_overrides + extra,
                                  "eval_overrides": cfg.eval_overrides + ev_extra})


def load_eval(cfg: AblateConfig, extra: list[str] = ()):
    from mmdata.eval.run import load_config

    return load_config(cfg.eval, cfg.eval_overrides + list(extra))


def own_workdir(cfg: AblateConfig) -> None:
    """Point `MMDATA_WORKDIR` at the ablation's data workdir, for this process and the runs it spawns:
    the tiny models the demo recipes place under it (`tiny-clip`, `tiny-captioner`, `tiny-vision`) are
    then the ablation's own. Under `make demo`'s work/demo they would be rebuilt on this corpus, and
    `make demo` would then find its later stages made with another model and refuse them."""
    os.environ["MMDATA_WORKDIR"] = os.path.abspath(cfg.data.workdir) if fsio.is_local(cfg.data.workdir) else cfg.data.workdir


def prepare_data(cfg: AblateConfig, echo, overwrite: bool = False) -> str:
    """Run the pipeline over the demo corpus (resumable: finished stages are skipped unless `overwrite`);
    the shards folder."""
    from mmdata.demo import run as demo_run

    d = cfg.data
    pipe = cfgmod.load(d.recipe, cfgmod.Pipeline, [f"workdir={d.workdir}"])
    demo_run.run(d.recipe, [f"workdir={d.workdir}"], corpus=d.corpus, n_pairs=d.pairs, n_docs=d.docs, seed=d.seed,
                 stages=list(pipe.stages), mixture=None, overwrite=overwrite, echo=echo)
    return os.path.abspath(pipe.stage_dir("shards")) if fsio.is_local(pipe.workdir) else pipe.stage_dir("shards")


@dataclass
class Run:
    row: str
    seed: int
    out: str
    scores: dict = field(default_factory=dict)  # column key -> score
    results: list = field(default_factory=list)
    steps: int = 0
    loss: float | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)  # what made it (`settings_of`): a run made otherwise is redone


def recipe_for(cfg: AblateConfig, row: Row, seed: int, out: str):
    """The training recipe of one row and seed (its mixture overrides included), writing to `out`."""
    from mmdata.mm1.train import load_recipe

    recipe = load_recipe(cfg.train, [*cfg.train_overrides, *row.train, f"out={out}", f"train.seed={seed}",
                                     "train.progress=false", "train.tensorboard=false"])
    recipe.mixture_overrides = [*recipe.mixture_overrides, *cfg.mixture_overrides, *row.mixture, f"seed={seed}"]
    return recipe


def data_id(url: str) -> bytes:
    """What a run read from `url`: a manifest's shards (names, sizes, content digests), else the names
    a pattern matches. Not the manifest's provenance: it records the recipe that wrote it, the demo
    server's port and the git commit included, which a re-run of the pipeline rewrites with the same
    shards (every run was then trained again)."""
    if url.endswith(".json") and fsio.exists(url):
        return json.dumps(json.loads(fsio.read_bytes(url)).get("shards"), sort_keys=True).encode()
    return "\n".join(fsio.expand(url)).encode()


def settings_of(recipe, ev) -> dict:
    """A run's identity: its training recipe's fingerprint (the trainer's: mixture resolved, pace
    knobs left out), its evaluation's settings, and the training shards' manifests."""
    from mmdata.mm1.train import fingerprint, mixture_of

    mix = mixture_of(recipe)
    shards = {name: fsio.digest_bytes(b"".join(data_id(u) for u in ([src.shards] if isinstance(src.shards, str) else src.shards)))
              for name, src in sorted(mix.sources.items())}
    return {"train": fingerprint(recipe, mix)[0], "eval": ev.model_dump(mode="json"), "shards": shards}


def run_one(cfg: AblateConfig, row: Row, seed: int, echo) -> Run:
    from mmdata.eval.harness import Evaluator
    from mmdata.eval.models import MM1Model
    from mmdata.mm1.train import run as train

    out = fsio.join(cfg.out, "runs", slug(row.name), f"seed{seed}")
    done = fsio.join(out, "run.json")
    recipe = recipe_for(cfg, row, seed, out)
    ev = load_eval(cfg, [f"out={fsio.join(out, 'eval')}", f"seed={seed}"])
    wanted = [(task, cfg.vqa_shots if k is None else k) for _, _, task, k in COLUMNS]
    ev.shots = sorted({k for _, k in wanted})
    settings = settings_of(recipe, ev)
    marker = fsio.join(out, "settings.json")  # written before training: what a killed run was making
    stale = None
    if fsio.exists(done):
        data = fsio.read_json(done)
        if data.get("settings") == settings:
            return Run(**data)
        stale = "was made with other settings"
    elif fsio.exists(out) and (not fsio.exists(marker) or fsio.read_json(marker) != settings):
        stale = "holds an unfinished run with other settings"
    if stale:
        # the YAML (or the data) changed since: its checkpoints and scores are another experiment's
        echo(f"  {row.name} seed {seed}: {out} {stale}; training it again")
        fs, path = fsio.fs_path(out)
        fs.rm(path, recursive=True)
    fsio.write_json(marker, settings)
    t0 = time.perf_counter()
    result = train(recipe, echo=lambda s: None)
    model = MM1Model.load(result.model)
    results = Evaluator(ev, model, echo=lambda s: None).run(only=wanted)  # the table's columns, nothing more
    by = {(r.task, r.shots): r for r in results}
    scores = {key: by[w].score for (key, *_), w in zip(COLUMNS, wanted) if w in by}
    run = Run(row.name, seed, out, scores, [r.line() for r in results], result.step, result.loss,
              time.perf_counter() - t0, settings)
    fsio.write_json(done, vars(run))
    echo(f"  {row.name} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items())
         + f" ({run.seconds:.0f}s)")
    return run


def _child(cfg: AblateConfig, row: Row, seed: int) -> Run:
    import multiprocessing as mp

    # a spawned process makes spawn its children's default too: the trainer's loader workers would
    # then import torch and mmdata again (~2 s a run, on the core the other run trains on)
    mp.set_start_method("fork", force=True)
    return run_one(cfg, row, seed, lambda s: print(s, flush=True))


def _build_lm(cfg: AblateConfig, row: Row) -> None:
    """The runs' tiny LM (`decoder.pretrain`), built on one core while the data step runs: it needs
    no data, and the data step leaves a core idle for much of its time. The runs then find it built
    (`tiny_lm.ensure`: same folder, same recipe)."""
    import torch

    from mmdata.demo import tiny_lm

    torch.set_num_threads(1)
    part = recipe_for(cfg, row, 0, fsio.join(cfg.out, "runs")).model.decoder
    if part.pretrain is not None and fsio.is_local(part.model):
        tiny_lm.ensure(part.model, part.pretrain, lambda s: print(s, flush=True))


def run_all(cfg: AblateConfig, todo: list[tuple[Row, int]], echo) -> list[Run]:
    """Every (row, seed) of `todo`, `cfg.jobs` at a time in fresh processes (spawned: no forked
    torch or Dask state); the runs in `todo`'s order. A run that fails stops the table: its error
    is raised once the runs in flight have finished (their results are kept for the next try);
    runs not started yet are not."""
    if cfg.jobs == 1 or len(todo) == 1:
        return [run_one(cfg, row, seed, echo) for row, seed in todo]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(cfg.jobs, len(todo)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_child, cfg, row, seed) for row, seed in todo]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def synthetic_captions(shards: str) -> tuple[int, int]:
    """(pairs with a VeCap caption, pairs) in the captions training shards."""
    from mmdata.mix.decode import parse

    with_syn = total = 0
    for url in fsio.expand(fsio.join(shards, "captions", "*.tar")):
        for sample in samples.read_shard(url):
            total += 1
            with_syn += bool(parse(sample).get("synthetic_caption"))
    return with_syn, total


# --- the table and the findings ----------------------------------------------------------------


def summary(runs: list[Run]) -> dict:
    """row -> column -> {mean, lo, hi, n, values}."""
    out: dict = {}
    for r in runs:
        for key, v in r.scores.items():
            out.setdefault(r.row, {}).setdefault(key, []).append(v)
    table = {}
    for row, cols in out.items():
        table[row] = {}
        for key, vals in cols.items():
            m, lo, hi = mean_ci(vals)
            table[row][key] = {"mean": m, "lo": lo, "hi": hi, "n": len(vals), "values": vals}
    return table


def diff_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) with its 95% Welch interval."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:
        return ma - mb, ma - mb, ma - mb
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1) or 1e-12)
    half = t95(max(1, math.floor(df))) * math.sqrt(se2)
    return ma - mb, ma - mb - half, ma - mb + half


@dataclass
class Finding:
    claim: str
    verdict: str  # "reproduced" | "not reproduced" | "not run"
    detail: str

    def line(self) -> str:
        return f"- **{self.claim}**: {self.verdict}. {self.detail}"


def _fmt(c: dict) -> str:
    return f"{c['mean']:.1f}" + ("" if c["lo"] is None else f" [{c['lo']:.1f}, {c['hi']:.1f}]")


def _better(table: dict, hi_row: str, lo_row: str, col: str, claim: str, what: str) -> Finding:
    if hi_row not in table or lo_row not in table or col not in table[hi_row] or col not in table[lo_row]:
        return Finding(claim, "not run", f"needs rows '{hi_row}' and '{lo_row}'")
    a, b = table[hi_row][col], table[lo_row][col]
    d, lo, hi = diff_ci(a["values"], b["values"])
    ok = lo > 0
    why = "" if ok else (" (the difference is within the noise of the seeds)" if hi > 0 else " (the opposite holds)")
    return Finding(claim, "reproduced" if ok else "not reproduced",
                   f"{what}: {hi_row} {_fmt(a)} vs {lo_row} {_fmt(b)}; difference {d:+.1f} [{lo:+.1f}, {hi:+.1f}]{why}")


def icl_by_run(runs: list[Run], chance: float, caps: str = "captions only") -> str | None:
    """In-context learning run by run: how many runs have every in-context column's 95% interval
    (over the evaluated items) above chance, captions-only runs apart from those with interleaved
    documents. The finding above compares seed means; a skill that appears abruptly, at a step that
    varies with the seed, shows here first."""
    shots = {k for _, _, task, k in COLUMNS if task == "icl"}
    counts: dict[str, list[int]] = {}
    for r in runs:
        cis = [x["ci95"] for x in r.results if x["task"] == "icl" and x["shots"] in shots and x["ci95"]]
        if len(cis) < len(shots):
            continue
        n_k = counts.setdefault(caps if r.row == caps else "others", [0, 0])
        n_k[0] += 1
        n_k[1] += all(lo > chance for lo, _ in cis)
    if not counts:
        return None
    said = {caps: "captions-only runs", "others": "runs with interleaved documents"}
    parts = [f"{counts[g][1]} of {counts[g][0]} {said[g]}" for g in ("others", caps) if g in counts]
    return (f"in-context, run by run ({' and '.join(f'{k}-shot' for k in sorted(shots))} intervals all above "
            f"chance {chance:.0f}): " + "; ".join(parts))


def findings(table: dict, base: str, chance: float) -> list[Finding]:
    out = []
    # interleaved data drives few-shot: chance without it, above chance with it (the baseline mixes
    # interleaved documents too: it stands in when the captions+interleaved row was not run)
    caps, inter = "captions only", "captions+interleaved"
    mixed = inter if inter in table or base not in table else base
    if caps in table and mixed in table and "icl4" in table[caps]:
        parts, ok = [], True
        for col, label in (("icl4", "4-shot"), ("icl8", "8-shot")):
            c, i = table[caps].get(col), table[mixed].get(col)
            if c is None or i is None:
                continue
            at_chance = c["lo"] is not None and c["lo"] <= chance <= c["hi"]
            above = i["lo"] is not None and i["lo"] > chance
            ok = ok and at_chance and above
            parts.append(f"{label}: {caps} {_fmt(c)} ({'interval holds' if at_chance else 'interval misses'} chance "
                         f"{chance:.0f}), {mixed} {_fmt(i)} ({'above' if above else 'not above'} chance)")
        out.append(Finding("Interleaved data drives few-shot (in-context) learning",
                           ("reproduced" if ok else "not reproduced") if parts else "not run",
                           "; ".join(parts) or f"no in-context scores for '{mixed}'"))
    else:
        out.append(Finding("Interleaved data drives few-shot (in-context) learning", "not run",
                           f"needs rows '{caps}' and '{inter}'"))
    out.append(_better(table, caps, base, "caption0", "Caption data drives zero-shot captioning",
                       "0-shot CIDEr"))
    out.append(_better(table, base, inter, "text", "Text-only data keeps text skills", "text task accuracy"))
    out.append(_better(table, base, "no VeCap", "vqa", "Synthetic (VeCap) captions help few-shot",
                       "few-shot VQA accuracy"))
    low_res = next((r for r in table if r.endswith(" px")), None)
    out.append(_better(table, base, low_res or "low resolution", "caption0", "Image resolution matters",
                       "0-shot CIDEr"))
    few = next((r for r in table if r.endswith(" tokens")), None)
    out.append(_better(table, base, few or "fewer tokens", "caption0", "Image-token count matters", "0-shot CIDEr"))
    conns = [r for r in (base, "avg-pool", "attention-pool") if r in table and "caption0" in table[r]]
    if len(conns) == 3 and few in table:
        means = {r: table[r]["caption0"]["mean"] for r in conns}
        spread = max(means.values()) - min(means.values())
        tok = table[base]["caption0"]["mean"] - table[few]["caption0"]["mean"]
        pair_sig = []
        for i, a in enumerate(conns):
            for b in conns[i + 1 :]:
                d, lo, hi = diff_ci(table[a]["caption0"]["values"], table[b]["caption0"]["values"])
                if lo > 0 or hi < 0:
                    pair_sig.append(f"{a} vs {b} {d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        ok = spread < abs(tok) and not pair_sig
        detail = (f"0-shot CIDEr {', '.join(f'{r} {means[r]:.1f}' for r in conns)}: spread {spread:.1f} vs the token-count "
                  f"effect {tok:+.1f}" + (f"; significant: {'; '.join(pair_sig)}" if pair_sig else "; no pair differs beyond noise"))
        out.append(Finding("The connector type matters little (at equal tokens)", "reproduced" if ok else "not reproduced",
                           detail))
    else:
        out.append(Finding("The connector type matters little (at equal tokens)", "not run",
                           "needs the avg-pool, attention-pool and fewer-tokens rows"))
    return out


def markdown(cfg: AblateConfig, table: dict, found: list[Finding], runs: list[Run], command: str, chance: float,
             notes: list[str], wall: float) -> str:
    heads = [h for _, h, _, _ in COLUMNS]
    lines = [f"# Ablations at toy scale ({len(cfg.seeds)} seeds: {', '.join(map(str, cfg.seeds))})", "",
             f"`{command}`", "",
             "Mean [95% interval over seeds]. ICL chance: " + f"{chance:.0f}%. VQA at {cfg.vqa_shots} shots.", "",
             "| row | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for row in [r.name for r in cfg.rows]:
        cells = [(_fmt(table[row][k]) if row in table and k in table[row] else "–") for k, _, _, _ in COLUMNS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "## MM1's findings", ""] + [f.line() for f in found]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    secs = sum(r.seconds for r in runs)  # runs overlap (cfg.jobs at a time): this is not wall time
    lines += ["", (f"{len(runs)} runs, {secs / 60:.1f} min of training and evaluation summed over runs "
                   f"({cfg.jobs} at a time; runs read back count their first time); {wall / 60:.1f} min wall for "
                   "this call, the data step included.")]
    return "\n".join(lines) + "\n"


def _nice(v: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above v (an axis maximum)."""
    if v <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 2, 5, 10) if m * k >= v)


def svg(cfg: AblateConfig, table: dict, chance: float) -> str:
    """Grouped bars (one panel per column) with the 95% intervals: a plot with no plotting library."""
    rows = [r.name for r in cfg.rows if r.name in table]
    pw, ph, pad, top = 230, 220, 40, 30
    width = pad + len(COLUMNS) * (pw + pad)
    height = top + ph + 130
    palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            'font-size="11">'), f'<rect width="{width}" height="{height}" fill="white"/>']
    for c, (key, head, _, _) in enumerate(COLUMNS):
        x0 = pad + c * (pw + pad)
        vals = [table[r][key] for r in rows if key in table[r]]
        vmax = max([v["hi"] if v["hi"] is not None else v["mean"] for v in vals] + [chance if key.startswith("icl") else 0])
        vmax = _nice(1.05 * vmax)

        def y(v: float, vmax: float = vmax) -> float:
            return top + ph - max(0.0, min(v, vmax)) / vmax * ph

        out.append(f'<text x="{x0 + pw / 2}" y="{top - 10}" text-anchor="middle" font-weight="bold">{head}</text>')
        out.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + pw}" y2="{top + ph}" stroke="black"/>')
        out.append(f'<text x="{x0 - 4}" y="{top + 4}" text-anchor="end">{vmax:g}</text>')
        out.append(f'<text x="{x0 - 4}" y="{top + ph}" text-anchor="end">0</text>')
        bw = pw / max(1, len(rows))
        for k, r in enumerate(rows):
            if key not in table[r]:
                continue
            v = table[r][key]
            bx = x0 + k * bw + 2
            out.append(f'<rect x="{bx:.1f}" y="{y(v["mean"]):.1f}" width="{bw - 4:.1f}" height="{top + ph - y(v["mean"]):.1f}" '
                       f'fill="{palette[k % len(palette)]}"/>')
            if v["lo"] is not None:
                cx = bx + (bw - 4) / 2
                out.append(f'<line x1="{cx:.1f}" y1="{y(v["lo"]):.1f}" x2="{cx:.1f}" y2="{y(v["hi"]):.1f}" stroke="black"/>')
        if key.startswith("icl"):
            out.append(f'<line x1="{x0}" y1="{y(chance):.1f}" x2="{x0 + pw}" y2="{y(chance):.1f}" stroke="grey" '
                       'stroke-dasharray="4 3"/>')
            out.append(f'<text x="{x0 + pw}" y="{y(chance) - 3:.1f}" text-anchor="end" fill="grey">chance</text>')
    for k, r in enumerate(rows):  # legend
        lx, ly = pad + (k % 4) * 260, top + ph + 30 + (k // 4) * 18
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{palette[k % len(palette)]}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly}">{r}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def run(path: str | os.PathLike = "pipelines/ablate.yaml", overrides: list[str] = (), *, scale: float = 1.0,
        rows: list[str] | None = None, overwrite: bool = False, echo: Callable[[str], None] = print) -> dict:
    cfg = scaled(cfgmod.load(path, AblateConfig, list(overrides)), scale)
    names = [r.name for r in cfg.rows]
    if cfg.baseline not in names:
        raise cfgmod.ConfigError(f"{path}: baseline {cfg.baseline!r} is not a row ({', '.join(names)})")
    if rows:
        unknown = [r for r in rows if r not in names]
        if unknown:
            raise cfgmod.ConfigError(f"{path}: no row {unknown[0]!r} (rows: {', '.join(names)})")
    start = time.perf_counter()
    echo(f"ablate: data through {cfg.data.recipe} ({cfg.data.pairs} pairs, {cfg.data.docs} pages)")
    own_workdir(cfg)
    import multiprocessing as mp

    # if it fails, the first run builds the LM again and reports why
    lm = mp.get_context("spawn").Process(target=_build_lm, args=(cfg, next(r for r in cfg.rows if r.name == cfg.baseline)))
    lm.start()
    try:
        shards = prepare_data(cfg, echo, overwrite)
    except BaseException:
        lm.terminate()  # an unfinished LM folder is built again next time (`built.ensure`)
        raise
    finally:
        lm.join()
    os.environ["MMDATA_SHARDS"] = shards
    os.environ["MMDATA_DEMO_CORPUS"] = os.path.abspath(cfg.data.corpus)
    chance = 100.0 / 2
    todo = [(row, seed) for row in cfg.rows if not rows or row.name in rows for seed in cfg.seeds]
    runs = run_all(cfg, todo, echo)
    table = summary(runs)
    found = findings(table, cfg.baseline, chance)
    notes = []
    with_syn, pairs = synthetic_captions(shards)
    if with_syn == 0:
        notes.append(f"none of the {pairs} training pairs carries a VeCap caption (the pipeline has no recaption "
                     "stage): the with / without VeCap rows train on the same data")
    else:
        notes.append(f"{with_syn} of {pairs} training pairs carry a VeCap caption")
    by_run = icl_by_run(runs, chance)
    if by_run:
        notes.append(by_run)
    command = f"make ablate{' ARGS=--scale ' + format(scale, 'g') if scale != 1 else ''}"
    wall = time.perf_counter() - start
    md = markdown(cfg, table, found, runs, command, chance, notes, wall)
    result = {"config": cfg.model_dump(mode="json"), "scale": scale, "table": table,
              "findings": [vars(f) for f in found], "runs": [vars(r) for r in runs], "notes": notes,
              "seconds": wall}
    fsio.write_json(fsio.join(cfg.out, "table.json"), result)
    fsio.atomic_write(fsio.join(cfg.out, "table.md"), md.encode())
    fsio.atomic_write(fsio.join(cfg.out, "table.svg"), svg(cfg, table, chance).encode())
    echo(md)
    return result
