"""`mmdata eval --config pipelines/eval-demo.yaml` / `make eval`: load a model, run the harness."""

from __future__ import annotations

import os
from collections.abc import Callable

from mmdata import config as cfgmod
from mmdata import fsio
from mmdata.eval import formats as fm
from mmdata.eval.harness import EvalConfig, Evaluator, Result


class EvalError(RuntimeError):
    """An evaluation that cannot run as configured, phrased for the user."""


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> EvalConfig:
    return cfgmod.load(path, EvalConfig, list(overrides))


def load_model(path: str, device: str | None = None):
    """The exported model of the bundled trainer (`MM1.save_pretrained`)."""
    from mmdata.eval.models import MM1Model

    if not fsio.exists(fsio.join(path, "mm1.json")):
        raise EvalError(f"{path}: no exported model here (mm1.json missing); train first, or point --model at "
                        "a run's model/ folder")
    return MM1Model.load(path, device=device)


def evaluate(cfg: EvalConfig, model, tasks: list[str] | None = None, echo: Callable[[str], None] = print) -> list[Result]:
    try:
        return Evaluator(cfg, model, echo=echo).run(tasks)
    except fm.FormatError as e:
        raise EvalError(str(e)) from None


def run(path: str | os.PathLike, overrides: list[str] = (), *, model: str | None = None,
        tasks: list[str] | None = None, echo: Callable[[str], None] = print) -> list[Result]:
    cfg = load_config(path, overrides)
    where = model or cfg.checkpoint
    if where is None:
        raise EvalError(f"{path}: no model to evaluate: set checkpoint, or pass --model")
    return evaluate(cfg, load_model(where), tasks, echo)
