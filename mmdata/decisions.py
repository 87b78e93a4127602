"""One decision contract, in the spirit of datatrove's filters and data-juicer's stats/process split.

1. Measure: a stage computes its measurements into columns (a score, a language, a hash).
2. Decide: `Rule`s map a row to a reason or None; a record's `drop_reason` is the first rule in
   order that fires (`decide`), null when kept. A reason is a short snake_case code, optionally
   with the key it points to after a colon (`near_duplicate_of:000120003`); `code()` drops it.
3. Count: a shard's stats carry `dropped` ({code: n}, from `counts`); the engine sums them over every
   shard of a stage into the one funnel format, `{out}/_funnel.json`:

       {"stage": "filter", "records": 2000, "kept": 1550,
        "dropped": [["not_downloaded", 120], ["lang_not_allowed", 200], ...]}

   and `funnel_lines` is the one printer of it.
4. Keep: over the joined table of a shard set and its sidecars, `first_reason` says why a record is
   out (its own status, its set's own decision, then each stage's `drop_reason` in order) and
   `kept` is where there is none: the one place "kept" is computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

FUNNEL = "_funnel.json"
_PARTNER = re.compile(r":\d+$")


@dataclass(frozen=True)
class Rule:
    """`reason` where `fails(frame)` is True (vectorised over the measurement columns)."""

    reason: str
    fails: Callable[[pd.DataFrame], pd.Series]


def decide(m: pd.DataFrame, rules: Iterable[Rule]) -> pd.Series:
    """drop_reason per row: the first rule that fails, null (None) when every rule passes."""
    reason = pd.Series(None, index=m.index, dtype=object)
    for rule in rules:
        hit = reason.isna().to_numpy() & pd.Series(rule.fails(m), index=m.index).fillna(False).to_numpy(dtype=bool)
        reason[hit] = rule.reason
    return reason


def code(reason: str) -> str:
    """A reason less the key it names: `near_duplicate_of:000120003` -> `near_duplicate_of`
    (`skipped_filter:lang_not_en` stays whole: its detail is a reason too)."""
    return _PARTNER.sub("", reason)


def counts(reasons: Iterable) -> dict[str, int]:
    """{code: n} of the non-null reasons."""
    out: dict[str, int] = {}
    for r in reasons:
        if isinstance(r, str):
            c = code(r)
            out[c] = out.get(c, 0) + 1
    return out


def funnel(stage: str, stats: Iterable[dict], order: Iterable[str] = ()) -> dict:
    """The stage's funnel from its shards' stats (`count`, `successes`, `dropped`)."""
    records = kept = 0
    dropped: dict[str, int] = {}
    for s in stats:
        records += s["count"]
        kept += s["successes"]
        for r, n in (s.get("dropped") or {}).items():
            dropped[r] = dropped.get(r, 0) + n
    order = list(order)

    def rank(r: str) -> tuple[int, str]:  # by the first reason of `order` that is r or begins it
        return next((i for i, o in enumerate(order) if r.startswith(o)), len(order)), r

    ranked = sorted(dropped, key=rank)
    return {"stage": stage, "records": records, "kept": kept, "dropped": [[r, dropped[r]] for r in ranked if dropped[r]]}


def funnel_lines(f: dict) -> list[str]:
    """The one printer of a funnel: records in, each reason with what is left, kept."""
    left = f["records"]
    lines = [f"{f['stage']} funnel: {left} records in"]
    for reason, n in f["dropped"]:
        left -= n
        lines.append(f"  - {reason:<32} {n:>9}  -> {left}")
    lines.append(f"  = kept {f['kept']}")
    return lines


def first_reason(df: pd.DataFrame, stages: Iterable[str] = ()) -> pd.Series:
    """Why each record of a joined table is out, or None: a non-success `status` (with the set's
    own `drop_reason` when it has one: `skipped_filter:lang_not_en`), then each stage's
    `<stage>.drop_reason` in the given order (default: the table's column order)."""
    reason = pd.Series(None, index=df.index, dtype=object)
    failed = df["status"].ne("success").to_numpy()
    reason[failed] = df.loc[failed, "status"]
    if "drop_reason" in df:  # a shard set that filters itself (interleaved, text) says why
        why = failed & df["drop_reason"].notna().to_numpy()
        reason[why] = df.loc[why, "status"] + ":" + df.loc[why, "drop_reason"].astype(str)
    stages = list(stages) or [c[: -len(".drop_reason")] for c in df.columns if c.endswith(".drop_reason")]
    for stage in stages:
        col = f"{stage}.drop_reason"
        if col in df:
            hit = reason.isna().to_numpy() & df[col].notna().to_numpy()
            reason[hit] = stage + ":" + df.loc[hit, col].astype(str)
    return reason


def kept(df: pd.DataFrame, stages: Iterable[str] = ()) -> pd.Series:
    """True where the record was fetched and no stage's decision dropped it."""
    return first_reason(df, stages).isna()
