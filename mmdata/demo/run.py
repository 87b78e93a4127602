"""`make demo`: build the demo corpus (once), serve it on 127.0.0.1, run every stage of the recipe,
then the MM1 mixture over the training shards, a short run of the tiny MM1 trainer on them, and the
evaluation of the model it exports (pipelines/eval-demo.yaml on a small seeded subset of the
corpus's held-out tasks; `{workdir}/eval/results.jsonl`, which `mmdata report` tabulates).

The recipe reaches the corpus and the server through `${MMDATA_DEMO_CORPUS}` and
`${MMDATA_DEMO_PORT}`, so the same YAML works whatever port the server got, and the real pages and
WARCs that the interleaved and text stages read beside the generated ones through `${MMDATA_SHARED}`
(`shared_folder`), so it works from any directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mmdata import config, fsio
from mmdata import pipeline as pl
from mmdata.config import ConfigError
from mmdata.demo.corpus import VERSION, build
from mmdata.demo.server import DemoServer
from mmdata.report.workdir import MIX_STATS

ROOT = Path(__file__).resolve().parents[2]
SHARED_STAGES = ("interleaved", "text")  # the stages of pipelines/demo.yaml that read the real pages


def shared_folder() -> Path:
    """The folder holding the real pages and WARCs (`data/html/*.html`, `data/warc/*.warc.gz`):
    `$MMDATA_SHARED`, else `shared/` beside the checkout (where CI puts it, as for the tests). A
    missing one is an error rather than a demo of generated pages only that says it used real ones."""
    env = os.environ.get("MMDATA_SHARED")
    folder = Path(env).resolve() if env else ROOT.parent / "shared"
    data = folder / "data"
    if not (any(data.glob("html/*.html")) and any(data.glob("warc/*.warc.gz"))):
        raise ConfigError(f"{data}: no real pages (html/*.html) and WARCs (warc/*.warc.gz) for the demo; "
                          "set MMDATA_SHARED to the folder holding data/")
    return folder


def ensure_corpus(folder: Path, n_pairs: int, n_docs: int, seed: int, echo=print) -> bool:
    """Build the corpus unless one of the same generator version, size and seed is already there
    (builds are deterministic, so an existing one is exactly what a rebuild would give)."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if (m.get("version"), m.get("n_pairs"), m.get("n_docs"), m.get("seed")) == (VERSION, n_pairs, n_docs, seed):
            return False
    echo(f"building the demo corpus in {folder}: {n_pairs} pairs, {n_docs} documents")
    with bar("demo corpus", 3, "part") as parts:
        build(folder, n_pairs=n_pairs, n_docs=n_docs, seed=seed,
              done=lambda part: (parts.set_postfix_str(f"{part} written", refresh=False), parts.update(1)))
    return True


def bar(desc: str, total: int, unit: str):
    """A progress bar for a long step that is not a stage (the stages have the engine's)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def run(
    recipe: str | os.PathLike = "pipelines/demo.yaml",
    overrides: list[str] = (),
    *,
    corpus: str | os.PathLike | None = None,
    n_pairs: int = 2000,
    n_docs: int = 200,
    seed: int = 0,
    stages: list[str] | None = None,
    overwrite: bool = False,
    mixture: str | os.PathLike | None = "pipelines/mixtures/mm1.yaml",
    mix_batches: int = 20,
    train: str | os.PathLike | None = "pipelines/mm1-tiny.yaml",
    evaluation: str | os.PathLike | None = "pipelines/eval-demo.yaml",
    echo=print,
) -> list:
    folder = Path(corpus or os.environ.get("MMDATA_DEMO_CORPUS") or "work/demo-corpus").resolve()
    if set(stages or SHARED_STAGES) & set(SHARED_STAGES):
        os.environ["MMDATA_SHARED"] = str(shared_folder())
    rebuilt = ensure_corpus(folder, n_pairs, n_docs, seed, echo)
    with DemoServer(folder) as server:
        os.environ["MMDATA_DEMO_CORPUS"] = str(folder)
        os.environ["MMDATA_DEMO_PORT"] = str(server.port)
        echo(f"demo web serving {folder} at {server.url}")
        pipe = config.load(recipe, config.Pipeline, list(overrides))
        if rebuilt and Path(pipe.workdir).is_dir():
            # every output there (tiny CLIP included) came from the old corpus; resume would keep it
            echo(f"new corpus: clearing {pipe.workdir}")
            shutil.rmtree(pipe.workdir)
        if "clipscore" in (stages or pipe.stages):
            # no CLIP weights can be downloaded here: a tiny one learns the demo corpus in seconds
            from mmdata.demo.tiny_clip import TinyClipConfig, ensure_tiny_clip

            ensure_tiny_clip(folder, pipe.section("clipscore").model, TinyClipConfig(progress=True), echo=echo)
        if "recaption" in (stages or pipe.stages):
            # a tiny LLaVA captioner (and, when the recipe names one, a tiny chat LM) learn the corpus
            from mmdata.demo.tiny_recaption import TinyRecaptionConfig, ensure_tiny_recaption

            rc = pipe.section("recaption")
            cfg = TinyRecaptionConfig(progress=True, vision=tiny_tower(train, echo) if train else None)
            ensure_tiny_recaption(folder, rc.describe.model, rc.fuse.model, cfg, echo=echo)
        reports = pl.run(pipe, stages, overwrite=overwrite, echo=echo)
    if mixture and "shards" in (stages or pipe.stages):
        # the training side: the MM1 mixture over the shards just written, small batches for a small corpus
        from mmdata.mix import stats as mix_stats

        os.environ["MMDATA_SHARDS"] = pipe.stage_dir("shards")
        counted = mix_stats.run(mixture, mix_batches, overrides=["global_batch=64", "lanes=2"])
        echo(counted.table())
        counted.write(fsio.join(pipe.workdir, MIX_STATS))
        if train:
            model = train_tiny(train, pipe.stage_dir("shards"), pipe.workdir, echo)
            if evaluation:
                evaluate_tiny(evaluation, model, pipe.workdir, echo=echo)
    where(pipe, echo)
    return reports


def tiny_tower(recipe: str | os.PathLike, echo=print) -> str | None:
    """The tiny MM1's pretrained image encoder (`encoder.pretrain` of `recipe`), built now when missing:
    the tiny captioner starts from it too, and the MM1 run reuses it."""
    from mmdata.demo import tiny_vision as tv
    from mmdata.mm1.train import load_recipe

    enc = load_recipe(recipe).model.encoder
    return tv.ensure(enc.model, enc.pretrain, echo) if enc.pretrain else None


def where(pipe: config.Pipeline, echo=print) -> None:
    """The report of the workdir, then where everything is."""
    from mmdata.report import build
    from mmdata.report.workdir import Workdir

    report = build(pipe.workdir)
    w = Workdir.open(pipe.workdir)
    echo("demo outputs:")
    for manifest in w.named("manifest.json"):
        if manifest.startswith("shards/"):
            echo(f"  {manifest.split('/')[1] + ' shards':<20}{w.join(manifest)}")
    for run in w.training_runs():
        echo(f"  {'checkpoint':<20}{w.join(w.checkpoint(run)) if w.checkpoint(run) else 'none complete'}")
        if w.has(f"{run}/model/mm1.json"):
            echo(f"  {'model':<20}{w.join(run + '/model')}")
    for results in w.named("results.jsonl"):
        echo(f"  {'evaluation':<20}{w.join(results)}")
    echo(f"  {'report':<20}{report}")


def train_tiny(recipe: str | os.PathLike, shards: str, workdir: str, echo=print) -> str:
    """The reference trainer on the shards just written: the tiny MM1, then its captions of held-out
    images; the folder of the exported model."""
    from mmdata.mm1 import MM1, train
    from mmdata.mm1.probe import caption_probe

    echo(f"training the tiny MM1 ({recipe}) on {shards}")
    result = train.run(train.load_recipe(recipe, [f"out={workdir.rstrip('/')}/mm1-tiny"]), echo=echo)
    probe = caption_probe(MM1.from_pretrained(result.model), n=64)
    echo(f"mm1-tiny: {probe.line()}")
    for truth, said in probe.examples[:3]:
        echo(f"  image of {truth!r} -> {said!r}")
    return result.model


# items per (task, shots): the demo shows the evaluation running end to end in seconds; the numbers
# it measures need `make eval` (100 items) or `make ablate` (several seeds) to mean much
DEMO_EVAL_ITEMS = 16


def evaluate_tiny(recipe: str | os.PathLike, model: str, workdir: str, *, max_items: int = DEMO_EVAL_ITEMS,
                  echo=print) -> str:
    """`mmdata eval` with `recipe` on `model` over the demo corpus's held-out tasks (MMDATA_DEMO_CORPUS),
    a seeded subset of `max_items` per task; results in `{workdir}/eval/results.jsonl`, returned."""
    from mmdata.eval import run as ev
    from mmdata.eval.harness import plan

    out = fsio.join(workdir, "eval")
    echo(f"evaluating {model} ({recipe}, {max_items} items per task and shot count)")
    overrides = [f"checkpoint={model}", f"out={out}", f"max_items={max_items}"]
    with bar("eval", len(plan(ev.load_config(recipe, overrides))), "task") as done:
        results = ev.run(recipe, overrides, echo=lambda line: (
            done.set_postfix_str("{task} {shots}-shot".format(**json.loads(line)), refresh=False), done.update(1)))
    echo(f"  {'task':<8}{'shots':>5}  {'metric':<14}{'score':>7}  {'95% CI':<16}chance")
    for r in (r.line() for r in results):
        ci, chance = r.get("ci95"), r.get("chance")
        echo(f"  {r['task']:<8}{r['shots']:>5}  {r['metric']:<14}{r['score']:>7.1f}  "
             f"{'' if not ci else f'[{ci[0]:.1f}, {ci[1]:.1f}]':<16}{'' if chance is None else chance}")
    return fsio.join(out, "results.jsonl")
