"""The versioned record formats in `schemas/`, and validation against them."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import jsonschema

VERSION = 1
KINDS = ("pair", "interleaved", "text", "shard_meta", "pair_meta", "shard_stats")


def schema_dir() -> Path:
    env = os.environ.get("MMDATA_SCHEMAS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "schemas" / f"v{VERSION}"


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    schema = json.loads((schema_dir() / f"{kind}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(kind: str, record: dict) -> list[str]:
    """Every way `record` breaks the `kind` schema, as 'path: message' lines (empty when valid)."""
    out = []
    for e in sorted(validator(kind).iter_errors(record), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in e.path) or "(record)"
        out.append(f"{where}: {e.message}")
    return out


_ARROW = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}


@cache
def arrow_schema(kind: str):
    """The parquet columns of `kind` (its required properties, in order), typed from the JSON
    types: a column empty in one shard is still typed, so every shard of a set has one schema."""
    import pyarrow as pa

    spec = json.loads((schema_dir() / f"{kind}.schema.json").read_text())
    fields = []
    for name in spec["required"]:
        types = spec["properties"][name]["type"]
        types = [types] if isinstance(types, str) else types
        (json_type,) = [t for t in types if t != "null"]
        fields.append(pa.field(name, getattr(pa, _ARROW[json_type])(), nullable="null" in types))
    return pa.schema(fields)
