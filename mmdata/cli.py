"""`python -m mmdata <command>`: every stage as a command over its library function.

Common options: `--config` (a recipe in pipelines/), `--set dotted.path=value` (repeatable),
`--overwrite` (redo finished shards), `--scheduler tcp://host:port`, `--workers N`, `--threads N`.
Exit codes: 0 done, 1 some shard failed (each named on stderr), 2 bad recipe or arguments.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from mmdata import config as cfgmod
from mmdata.config import ConfigError, Pipeline
from mmdata.engine import StageFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mmdata: the data engine for MM1-style multimodal pre-training.")

Config = Annotated[Path, typer.Option("--config", "-c", help="pipeline recipe (YAML)")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="override a recipe value: dotted.path=value")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="redo shards that are already finished")]
Scheduler = Annotated[str | None, typer.Option("--scheduler", help="tcp://host:port of a running Dask scheduler")]
Workers = Annotated[int | None, typer.Option("--workers", help="LocalCluster worker processes")]
Threads = Annotated[int | None, typer.Option("--threads", help="threads per worker")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_pipeline(config: Path, sets: list[str] | None, scheduler=None, workers=None, threads=None) -> Pipeline:
    extra = list(sets or [])
    if scheduler:
        extra.append(f"engine.scheduler={scheduler}")
    if workers:
        extra.append(f"engine.n_workers={workers}")
    if threads:
        extra.append(f"engine.threads_per_worker={threads}")
    return cfgmod.load(config, Pipeline, extra)


@contextmanager
def reported():
    """A bad recipe exits 2 with one line per problem; failed shards exit 1, each named."""
    try:
        yield
    except ConfigError as e:
        fail(str(e))
    except StageFailed as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1)


def stage_command(name: str, config, sets, overwrite, scheduler, workers, threads, **options) -> None:
    from mmdata import pipeline as pl

    with reported():
        pipe = load_pipeline(config, sets, scheduler, workers, threads)
        report = pl.run_one(pipe, name, overwrite=overwrite, **options)
    typer.echo(report.summary() if hasattr(report, "summary") else str(report))


@app.command()
def run(config: Config, sets: Sets = None, overwrite: Overwrite = False, scheduler: Scheduler = None,
        workers: Workers = None, threads: Threads = None,
        stage: Annotated[list[str] | None, typer.Option("--stage", help="run only these stages")] = None):
    """Run the recipe's stages in order on one Dask cluster."""
    from mmdata import pipeline as pl

    with reported():
        pipe = load_pipeline(config, sets, scheduler, workers, threads)
        pl.run(pipe, stage or None, overwrite=overwrite, echo=typer.echo)


@app.command()
def download(config: Config, sets: Sets = None, overwrite: Overwrite = False, scheduler: Scheduler = None,
             workers: Workers = None, threads: Threads = None,
             retry_failed: Annotated[bool, typer.Option("--retry-failed", help="re-fetch only the failed rows of finished shards")] = False):
    """Download image-caption pairs from URL lists into img2dataset-compatible shards."""
    stage_command("download", config, sets, overwrite, scheduler, workers, threads, retry_failed=retry_failed)


# Stages whose command takes only the common options, in pipeline order.
PLAIN_STAGES = {
    "filter": "Measure captions and images into columns, then keep/drop by the recipe's thresholds; prints the funnel.",
    "dedup": "Drop duplicates across all shards (eval set, URL, caption+image, image, near-duplicate); writes a keep list.",
    "clipscore": "Score image-caption cosine with a CLIP/SigLIP model, save embeddings, keep the pool's top fraction; documents: each image against its sentences.",
    "recaption": "VeCap synthetic captions: a captioner describes the image, fused with the AltText (kept beside).",
    "interleaved": "Interleaved image-text documents from WARC files, saved HTML or page URL lists.",
    "text": "Text-only documents (Gopher/FineWeb-filtered) from WARC files, saved HTML or page URL lists.",
    "check": "Validate every record of a shard set against the schemas; tar and parquet must agree.",
}


def _plain_stage(name: str, doc: str):
    def command(config: Config, sets: Sets = None, overwrite: Overwrite = False, scheduler: Scheduler = None,
                workers: Workers = None, threads: Threads = None):
        stage_command(name, config, sets, overwrite, scheduler, workers, threads)

    command.__doc__ = doc
    return command


for _name, _doc in PLAIN_STAGES.items():
    app.command(_name)(_plain_stage(_name, _doc))


@app.command("tiny-clip")
def tiny_clip(corpus: Annotated[Path, typer.Option(help="a demo corpus folder (with pairs/truth.parquet)")],
              out: Annotated[Path, typer.Option(help="where to save_pretrained the model")],
              steps: Annotated[int | None, typer.Option(help="training steps (default: the library's)")] = None):
    """Train the tiny CLIP of the demo and the tests on a demo corpus (about a minute on CPU)."""
    import dataclasses

    from mmdata.demo import tiny_clip as tc

    cfg = tc.TinyClipConfig(progress=True)
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    try:
        path = tc.train(corpus, out, cfg, echo=typer.echo)
    except FileNotFoundError as e:
        fail(str(e))
    typer.echo(f"tiny CLIP saved to {path}")


@app.command("tiny-recaption")
def tiny_recaption(corpus: Annotated[Path, typer.Option(help="a demo corpus folder (with pairs/truth.parquet)")],
                   out: Annotated[Path, typer.Option(help="where to save_pretrained the captioner")],
                   fuser: Annotated[Path | None, typer.Option(help="where to save_pretrained the fusion LM (none: not trained)")] = None,
                   steps: Annotated[int | None, typer.Option(help="training steps of each model (default: the library's)")] = None):
    """Train the demo's tiny LLaVA captioner (and tiny fusion LM) on a demo corpus (a minute or two on CPU)."""
    import dataclasses

    from mmdata.demo import tiny_recaption as tr

    cfg = tr.TinyRecaptionConfig(progress=True)
    if steps is not None:
        cfg = dataclasses.replace(cfg, captioner_steps=steps, fuser_steps=steps)
    try:
        cap, fus = tr.train(corpus, out, fuser, cfg, echo=typer.echo)
    except FileNotFoundError as e:
        fail(str(e))
    typer.echo(f"tiny captioner saved to {cap}" + (f", tiny fusion LM to {fus}" if fus else ""))


@app.command()
def shards(config: Config, sets: Sets = None, overwrite: Overwrite = False, scheduler: Scheduler = None,
           workers: Workers = None, threads: Threads = None,
           stream: Annotated[list[str] | None, typer.Option("--stream", help="only these streams (captions, interleaved, text)")] = None):
    """Write the kept samples as shuffled, sized training shards with a manifest per stream."""
    stage_command("shards", config, sets, overwrite, scheduler, workers, threads, streams=stream or None)


@app.command()
def verify(manifest: Annotated[str, typer.Option("--manifest", "-m", help="manifest.json or its folder (local, s3://, ...)")],
           quick: Annotated[bool, typer.Option("--quick", help="presence, sizes and counts only (no data read)")] = False):
    """Check training shards against their manifest (presence, size, tar structure, sample count,
    sha256, every member against its index); exits 1 naming each shard that differs."""
    from mmdata import manifest as mf

    try:
        m = mf.read(manifest)
        problems = mf.verify(manifest, checksums=not quick)
    except (OSError, ValueError) as e:
        fail(f"{manifest}: cannot read the manifest: {e}")
    for p in problems:
        typer.echo(f"BAD {p}", err=True)
    if problems:
        typer.echo(f"{len(problems)} of {len(m['shards'])} shards failed verification", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {len(m['shards'])} shards, {m['count']} samples, {m['bytes']} bytes match {mf.manifest_url(manifest)}")


@app.command("mix-stats")
def mix_stats(mixture: Annotated[Path, typer.Option("--mixture", "-m", help="mixture YAML (pipelines/mixtures/)")],
              sets: Sets = None,
              batches: Annotated[int, typer.Option("--batches", "-n", help="global batches to read")] = 100,
              world_size: Annotated[int, typer.Option("--world-size", help="simulated ranks, read in turn")] = 1,
              workers: Annotated[int, typer.Option("--workers", help="DataLoader workers per rank")] = 0,
              out: Annotated[str | None, typer.Option("--out", help="also write the counts as JSON here "
                                                      "(WORKDIR/mixture/stats.json is what `mmdata report` shows)")] = None):
    """Read N global batches of a mixture and print per-source realized counts and shares.
    Exits 1 naming the shard (and byte offset) when a shard is missing, damaged or miscounted
    (`damaged: stop`), 2 for a mistake in the mixture or the arguments."""
    from mmdata.mix import MixDamaged, MixError, stats

    try:
        result = stats.run(mixture, batches, world_size=world_size, num_workers=workers, overrides=sets or [])
    except MixDamaged as e:
        fail(str(e), 1)
    except (ConfigError, MixError) as e:
        fail(str(e))
    typer.echo(result.table())
    if out:
        typer.echo(f"wrote {result.write(out)}")


@app.command()
def report(workdir: Annotated[str, typer.Argument(help="a workdir (local path or s3://..., http://...)")],
           out: Annotated[str | None, typer.Option("--out", "-o", help="the HTML file (default WORKDIR/report.html)")] = None):
    """Write one self-contained HTML report of what the stages wrote under WORKDIR."""
    from mmdata.report import ReportError, build

    try:
        path = build(workdir, out)
    except ReportError as e:
        fail(str(e), 1 if e.__cause__ is not None else 2)
    typer.echo(f"report: {path}")


@app.command()
def train(config: Annotated[Path, typer.Option("--config", "-c", help="training recipe (pipelines/mm1-*.yaml)")],
          sets: Sets = None,
          overwrite: Annotated[bool, typer.Option("--overwrite", help="delete the run folder and start over")] = False):
    """Train (or resume) the reference MM1 model on a mixture; under torchrun, one process per device."""
    from mmdata.mix import MixError
    from mmdata.mm1 import train as tr
    from mmdata.mm1.decoder import PackingError

    try:
        tr.run(config, sets or [], overwrite=overwrite, echo=typer.echo)
    except (ConfigError, MixError, tr.TrainError, PackingError) as e:
        fail(str(e))


@app.command()
def demo(config: Annotated[Path, typer.Option("--config", "-c", help="the demo recipe")] = Path("pipelines/demo.yaml"),
         sets: Sets = None, overwrite: Overwrite = False,
         corpus: Annotated[Path | None, typer.Option(help="demo corpus folder (default work/demo-corpus)")] = None,
         pairs: Annotated[int, typer.Option(help="image-caption pairs in the corpus")] = 2000,
         docs: Annotated[int, typer.Option(help="web pages in the corpus")] = 200,
         seed: int = 0,
         stage: Annotated[list[str] | None, typer.Option("--stage", help="run only these stages")] = None,
         train: Annotated[bool, typer.Option("--train/--no-train", help="train the tiny MM1 on the shards")] = True,
         evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="evaluate the trained model (pipelines/eval-demo.yaml)")] = True):
    """Build the offline demo corpus, serve it on 127.0.0.1 and run every stage of the recipe on it."""
    from mmdata.demo import run as demo_run

    with reported():
        demo_run.run(config, sets or [], corpus=corpus, n_pairs=pairs, n_docs=docs, seed=seed,
                     stages=stage or None, overwrite=overwrite, echo=typer.echo,
                     train="pipelines/mm1-tiny.yaml" if train else None,
                     evaluation="pipelines/eval-demo.yaml" if evaluate else None)


@app.command("demo-data")
def demo_data(out: Annotated[Path, typer.Option(help="output folder")],
              pairs: Annotated[int, typer.Option(help="image-caption pairs")] = 2000,
              docs: Annotated[int, typer.Option(help="web pages (HTML files + one WARC)")] = 200,
              seed: int = 0):
    """Build the offline demo corpus: pairs with labelled noise, web pages and a WARC, truth files."""
    from mmdata.demo.corpus import build

    m = build(out, n_pairs=pairs, n_docs=docs, seed=seed)
    typer.echo(f"demo corpus in {out}: {pairs} pairs, {docs} documents, "
               f"{(m['pairs']['bytes'] + m['docs']['bytes']) / 2**20:.1f} MiB")


@app.command()
def serve(root: Annotated[Path | None, typer.Option(help="a demo corpus folder (none: fault modes and stand-ins only)")] = None,
          host: str = "127.0.0.1", port: Annotated[int, typer.Option(help="0 picks a free port")] = 8000):
    """Serve a demo corpus over HTTP (virtual hosts by Host header, fault modes by URL) until Ctrl-C."""
    from mmdata.demo.server import serve as run_server

    run_server(root, host=host, port=port)


eval_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                       help="Evaluate a trained model few-shot (--config), or score prediction files (`score`).")
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
def eval_run(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="evaluation recipe (pipelines/eval-*.yaml)")] = None,
    sets: Sets = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="the exported model to evaluate (overrides checkpoint)")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="only these tasks: caption, vqa, icl, text")] = None,
):
    """Captioning, VQA, few-shot classification and the text task at every shot count of the recipe
    (OpenFlamingo's protocol); one JSON line per (task, shots), also written to {out}/results.jsonl."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        fail("give --config (an evaluation recipe), or a subcommand: score")
    from mmdata.eval import run as ev

    with reported():
        try:
            ev.run(config, sets or [], model=model, tasks=task or None, echo=typer.echo)
        except ev.EvalError as e:
            fail(str(e))


@eval_app.command("score")
def eval_score(
    task: Annotated[str, typer.Option("--task", help="caption (CIDEr) or vqa (VQA accuracy)")],
    predictions: Annotated[str, typer.Option("--predictions", "-p", help="results JSON: [{image_id, caption}] or [{question_id, answer}]")],
    references: Annotated[str, typer.Option("--references", "-r", help="COCO caption annotations / Karpathy split, or VQAv2 annotations")],
    questions: Annotated[str | None, typer.Option("--questions", "-q", help="VQAv2 questions (optional: checks ids, names question types)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Karpathy split to score against (test, val, ...)")] = None,
):
    """Score a prediction file against its references; prints the metric as JSON (scores in percent)."""
    import json

    from mmdata.eval.formats import FormatError
    from mmdata.eval.score import score

    if task not in ("caption", "vqa"):
        fail(f"--task must be caption or vqa, not {task!r}")
    try:
        result = score(task, predictions, references, questions=questions, split=split)
    except FormatError as e:
        fail(str(e))
    typer.echo(json.dumps(result))


@app.command()
def ablate(config: Annotated[Path, typer.Option("--config", "-c", help="ablation recipe")] = Path("pipelines/ablate.yaml"),
           sets: Sets = None,
           scale: Annotated[float, typer.Option(help="multiply training steps, corpus and evaluated items (a GPU: 10+)")] = 1.0,
           row: Annotated[list[str] | None, typer.Option("--row", help="run only these rows")] = None,
           overwrite: Annotated[bool, typer.Option("--overwrite", help="redo the data pipeline's finished stages "
                                                    "(runs whose shards change are retrained anyway)")] = False):
    """MM1's ablations at toy scale: the demo pipeline's shards, the trainer per row and seed, the
    evaluation; writes table.md, table.json and table.svg with one line per MM1 finding."""
    from mmdata.eval import ablate as ab
    from mmdata.eval.run import EvalError

    with reported():
        try:
            ab.run(config, sets or [], scale=scale, rows=row or None, overwrite=overwrite, echo=typer.echo)
        except EvalError as e:
            fail(str(e))


@app.command("config")
def show_config(config: Config, sets: Sets = None):
    """Validate a recipe and print it with every default filled in."""
    try:
        pipe = load_pipeline(config, sets)
    except ConfigError as e:
        fail(str(e))
    import yaml

    typer.echo(yaml.safe_dump(pipe.model_dump(mode="json", exclude_none=True), sort_keys=False))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        app()
    except SystemExit as e:  # how typer ends every command
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    else:
        code = 0
    exit_now(code)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: every output is written and closed by now, and
    freeing the heap of Dask, pandas and the stage modules object by object took 0.25 s, 4% of a
    3000-image download on 2 cores."""
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream
            pass
    os._exit(code)
