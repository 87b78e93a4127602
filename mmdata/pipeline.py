"""Run a whole recipe: its `stages` in order, on one Dask cluster shared by all of them."""

from __future__ import annotations

import importlib
import logging

from mmdata.config import ConfigError, Pipeline
from mmdata.engine import Report, StageFailed, client_for

log = logging.getLogger(__name__)

# stage name -> module under mmdata.stages; the order is the order a full run uses
STAGES = {
    "download": "download",
    "filter": "filter",
    "dedup": "dedup",
    "interleaved": "interleaved",
    "text": "text",
    "clipscore": "clipscore",  # after interleaved: it scores the documents' images too
    "recaption": "recaption",  # after clipscore: its decision forms the pool, its model scores the captions
    "shards": "training_shards",
    "check": "check",
}


def stage_module(name: str):
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    return importlib.import_module(f"mmdata.stages.{STAGES[name]}")


def run_one(pipeline: Pipeline, name: str, *, client=None, overwrite: bool = False, **options) -> Report:
    """One stage through its library function; raises StageFailed when any shard failed."""
    pipeline.section(name)  # a clear error before any work when the recipe lacks the section
    report = stage_module(name).run(pipeline, client=client, overwrite=overwrite, **options)
    if isinstance(report, Report) and not report.ok:
        raise StageFailed(report)
    return report


def run(pipeline: Pipeline, stages: list[str] | None = None, *, overwrite: bool = False, echo=print) -> list:
    names = stages or pipeline.stages
    if not names:
        raise ConfigError(f"recipe '{pipeline.name}' lists no stages to run")
    for name in names:
        stage_module(name)
        pipeline.section(name)
    reports = []
    with client_for(pipeline.engine) as client:
        for name in names:
            report = run_one(pipeline, name, client=client, overwrite=overwrite)
            reports.append(report)
            echo(report.summary() if hasattr(report, "summary") else f"{name}: {report}")
    return reports
