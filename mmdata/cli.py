"""`python -m mmdata <command>`: every stage as a command over its library function.

Common options: `--config` (a recipe in pipelines/), `--set dotted.path=value` (repeatable),
`--overwrite` (redo finished shards), `--scheduler tcp://host:port`, `--workers N`, `--threads N`.
Exit codes: 0 done, 1 some shard failed (each named on stderr), 2 bad recipe or arguments.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmdata import config as cfgmod
from mmdata.config import ConfigError, Pipeline
from mmdata.engine import StageFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mmdata: the data engine for MM1-style multimodal pre-training.")

Config = Annotated[Path, typer.Option("--config", "-c", help="pipeline recipe (YAML)")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe value: dotted.path=value")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="redo shards that are already finished")]
Scheduler = Annotated[Optional[str], typer.Option("--scheduler", help="tcp://host:port of a running Dask scheduler")]
Workers = Annotated[Optional[int], typer.Option("--workers", help="LocalCluster worker processes")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="threads per worker")]


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


def run_stage_command(name: str, config, sets, overwrite, scheduler, workers, threads, **options) -> None:
    from mmdata import pipeline as pl

    try:
        pipe = load_pipeline(config, sets, scheduler, workers, threads)
        report = pl.run_stage(pipe, name, overwrite=overwrite, **options)
    except ConfigError as e:
        fail(str(e))
    except StageFailed as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1)
    typer.echo(report.summary() if hasattr(report, "summary") else str(report))


@app.command()
def run(config: Config, sets: Sets = None, overwrite: Overwrite = False, scheduler: Scheduler = None,
        workers: Workers = None, threads: Threads = None,
        stage: Annotated[Optional[list[str]], typer.Option("--stage", help="run only these stages")] = None):
    """Run the recipe's stages in order on one Dask cluster."""
    from mmdata import pipeline as pl

    try:
        pipe = load_pipeline(config, sets, scheduler, workers, threads)
        pl.run(pipe, stage or None, overwrite=overwrite, echo=typer.echo)
    except ConfigError as e:
        fail(str(e))
    except StageFailed as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1)


@app.command()
def check(config: Config, sets: Sets = None, overwrite: Overwrite = False, scheduler: Scheduler = None,
          workers: Workers = None, threads: Threads = None):
    """Validate every record of a shard set against the schemas; tar and parquet must agree."""
    run_stage_command("check", config, sets, overwrite, scheduler, workers, threads)


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
    app()
