"""Filter and dedup on the demo corpus, scored against its injected ground truth (printed, asserted)."""

from __future__ import annotations

import pandas as pd

from mmdata.config import Pipeline
from mmdata.stages import dedup
from mmdata.stages import filter as filt
from mmdata.store import ShardSet, table


def prf(pred: pd.Series, true: pd.Series) -> tuple[float, float, int]:
    tp = int((pred & true).sum())
    return tp / max(int(pred.sum()), 1), tp / max(int(true.sum()), 1), int(true.sum())


def test_filters_and_dedup_against_ground_truth(tmp_path, demo_corpus, downloaded, client):
    pipe = Pipeline(workdir=str(tmp_path), engine={"progress": False}, download=downloaded.download,
                    filter={}, dedup={})
    for stage in (filt, dedup):
        report = stage.run(pipe, client=client)
        print(report.summary())
        assert report.ok
    ds = ShardSet(downloaded.download.output)
    df = pd.concat([table(ds, s, {"filter": pipe.stage_dir("filter"), "dedup": pipe.stage_dir("dedup")}) for s in ds.ids()],
                   ignore_index=True)
    truth = pd.read_parquet(demo_corpus / "pairs" / "truth.parquet")
    assert len(df) == len(truth)  # every input record accounted for, once
    df = df.merge(truth, on="sample_id", suffixes=("", ".truth"), validate="one_to_one")
    got = df[df["status"] == "success"]

    lines = []
    # caption language: anything not English, among captions that are sentences at all
    sentences = ~got["uninformative"]
    p, r, n = prf((got["filter.lang"] != "en")[sentences], (got["label"] == "foreign")[sentences])
    lines.append(f"non-English captions  precision {p:.3f} recall {r:.3f} (n={n})")
    assert r >= 0.9 and p >= 0.9
    # each rule on its own column (the drop_reason names only the first rule a record fails)
    for rule, fails in (("too_small", got["filter.min_side"] < 200), ("extreme_aspect", got["filter.aspect"] > 3)):
        p, r, n = prf(fails.fillna(False).astype(bool), got[rule])
        lines.append(f"{rule:<21} precision {p:.3f} recall {r:.3f} (n={n})")
        assert p == 1.0 and r == 1.0  # exact measurements of the original size
    p, r, n = prf(got["filter.uninformative"] >= 0.5, got["uninformative"])
    lines.append(f"uninformative AltText precision {p:.3f} recall {r:.3f} (n={n})")
    assert r >= 0.9 and p >= 0.9

    # duplicates: a truth group is an original with its copies; under "smallest key kept" each group
    # of g considered members should lose g - 1, each pointing inside its group
    seen = got[got["dedup.considered"].astype(bool)].copy()
    seen["group"] = seen["near_dup_of"].fillna(seen["dup_of"]).fillna(seen["sample_id"]).astype(int)
    group_of = dict(zip(seen["key"], seen["group"]))
    reason = seen["dedup.drop_reason"].fillna("")
    seen["rule"] = reason.str.split(":").str[0]
    seen["target_group"] = reason.str.split(":").str[1].map(group_of)
    seen["right"] = seen["target_group"].eq(seen["group"])
    try:
        check_duplicates(seen, lines)
    finally:
        print("\n".join(lines))


def check_duplicates(seen: pd.DataFrame, lines: list[str]) -> None:
    dup_rules = ("duplicate_pair_of", "duplicate_image_of", "near_duplicate_of")
    for kinds, rules in ((("exact",), dup_rules[:2]), (("reencode", "resize", "crop"), dup_rules[2:])):
        kind = seen["near_dup_kind"].fillna(seen["dup_of"].notna().map({True: "exact", False: ""}))
        groups = set(seen.loc[kind.isin(kinds), "group"])
        in_groups = seen[seen["group"].isin(groups)]
        expected = len(in_groups) - in_groups["group"].nunique()
        found = int((in_groups["rule"].isin(dup_rules) & in_groups["right"]).sum())
        dropped = seen[seen["rule"].isin(rules)]
        precision = dropped["right"].mean() if len(dropped) else 1.0
        recall = found / max(expected, 1)
        lines.append(f"{' / '.join(rules):<40} precision {precision:.3f} recall {recall:.3f} "
                     f"(copies {expected}: {', '.join(kinds)})")
        for k in kinds:
            copies = set(seen.loc[kind == k, "group"])
            hit = set(in_groups.loc[in_groups["right"], "group"])
            lines.append(f"    {k:<8} groups {len(copies)}, found {len(copies & hit)}")
        assert recall >= 0.9 and precision >= 0.95
