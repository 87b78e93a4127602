"""Typed pipeline recipes: YAML in `pipelines/`, validated by pydantic at the edge.

A recipe names a work directory, the Dask engine settings and one section per stage. Unknown keys
are errors: a misspelt threshold silently falling back to its default is the worst kind of bug in a
data pipeline. Errors come out as one line per problem, naming the file, the field path and what was
expected.

Strings may use `${VAR}` / `${VAR:-default}`: the demo and tests point recipes at a server whose
port is only known at run time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EngineConfig(Strict):
    """Where shard tasks run. No scheduler means a LocalCluster on this machine."""

    scheduler: str | None = Field(None, description="tcp://host:port of an existing Dask scheduler")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True
    memory_limit: str = "auto"
    retries: int = Field(2, ge=0, description="extra attempts for a failing shard task")
    progress: bool = True


class CheckConfig(Strict):
    """The `check` stage: validates every record of a shard set against its JSON schema."""

    input: str | None = Field(None, description="shard set to check; default {workdir}/download")


T = TypeVar("T", bound=BaseModel)


class Pipeline(Strict):
    """A whole recipe. Stage sections are optional; running a stage without one is an error."""

    name: str = "pipeline"
    workdir: str = Field(..., description="root (local path or fsspec URL) of every stage's output")
    seed: int = 0
    stages: list[str] = Field(default_factory=list, description="what `mmdata run` executes, in order")
    engine: EngineConfig = EngineConfig()
    check: CheckConfig | None = None

    def stage_dir(self, stage: str) -> str:
        return f"{self.workdir.rstrip('/')}/{stage}"

    def section(self, stage: str) -> Any:
        attr = stage.replace("-", "_")
        value = getattr(self, attr, None) if attr in type(self).model_fields else None
        if value is None:
            raise ConfigError(f"recipe '{self.name}' has no '{stage}' section")
        return value


class ConfigError(Exception):
    """A recipe problem, already phrased for the user (one line per problem)."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--set engine.n_workers=4 filter.min_side=256`: values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.path=value")
        path, raw = item.split("=", 1)
        node = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (not a field of this section)"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{loc}: {err['msg']}{shown}"


def parse(model: type[T], data: Any, source: str) -> T:
    """Validate already-loaded data; errors name `source` and each field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{source}: {_describe(err)}" for err in e.errors())) from None


def load(path: str | os.PathLike, model: type[T] = Pipeline, overrides: list[str] = ()) -> T:  # type: ignore[assignment]
    """Read a YAML recipe into `model`, with env expansion and `--set` overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such recipe file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    data = _expand_env(data, str(p))
    return parse(model, data, str(p))
