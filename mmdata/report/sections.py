"""The report's sections. Each reads what the stages wrote and returns its HTML, or the note that
says which file it would have read (a section never invents what a workdir lacks)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape

import numpy as np
import pandas as pd

from mmdata import decisions, samples
from mmdata.engine import in_progress
from mmdata.report import plots
from mmdata.report.workdir import MIX_STATS, Workdir

GRID_SHARDS = 16  # the sample grid reads at most this many download shards (counts come from the funnels)
PER_REASON = 6
KEPT_SHOWN = 8
CLUSTERS = 8
DOCUMENTS = 3
DOC_SHARDS = 64  # interleaved shards whose metadata the document picker reads at most
SLOTS = 14  # of a document shown


@dataclass
class Section:
    id: str
    title: str
    body: str | None = None  # HTML
    note: str | None = None  # why the section is absent


def omitted(id: str, title: str, note: str) -> Section:
    return Section(id, title, note=note)


# -- small HTML helpers ---------------------------------------------------------------------------


def num(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    if isinstance(n, int | np.integer):
        return f"{int(n):,}"
    return f"{float(n):,.4g}" if abs(float(n)) < 1000 else f"{float(n):,.0f}"


def table(head: Iterable[str], rows: Iterable[Iterable], cls: str = "", attrs: str = "",
          fields: Iterable[str] | None = None) -> str:
    """`fields`: a name per row, its `data-field` (what tests and scripts read a number by)."""
    out = [f'<table class="{cls}"{attrs}><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    names = iter(fields) if fields is not None else None
    for row in rows:
        tag = f'<tr data-field="{escape(next(names))}">' if names is not None else "<tr>"
        out.append(tag + "".join(f'<td class="n">{num(c)}</td>' if c is None or isinstance(c, int | float | np.number)
                                    else f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def img(uri: str, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'


def text(value, limit: int = 300) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="none">none</span>'
    s = str(value)
    return escape(s if len(s) <= limit else s[:limit] + "…")


# -- funnel ---------------------------------------------------------------------------------------


def funnel_table(folder: str, f: dict, unfinished: str | None = None) -> str:
    """The funnel as `decisions.funnel_lines` prints it: records in, each reason with what is left, kept."""
    warn = (f'<tr><td colspan="3" class="warn">{escape(folder)} is incomplete ({escape(unfinished)}): these '
            "are the counts of its last finished run</td></tr>") if unfinished else ""
    rows = [warn, f'<tr class="records"><th>records in</th><td class="n" data-field="records">{num(f["records"])}</td><td></td></tr>']
    left = f["records"]
    for reason, n in f["dropped"]:
        left -= n
        rows.append(f'<tr class="drop" data-reason="{escape(reason)}"><th>− {escape(reason)}</th>'
                    f'<td class="n" data-field="dropped">{num(n)}</td><td class="n left">→ {num(left)}</td></tr>')
    rows.append(f'<tr class="kept"><th>= kept</th><td class="n" data-field="kept">{num(f["kept"])}</td>'
                f'<td class="n">{f["kept"] / f["records"]:.1%}</td></tr>' if f["records"] else
                f'<tr class="kept"><th>= kept</th><td class="n" data-field="kept">{num(f["kept"])}</td><td></td></tr>')
    return (f'<table class="funnel" data-folder="{escape(folder)}" data-stage="{escape(f["stage"])}">'
            f'<caption>{escape(f["stage"])} <span class="path">{escape(folder)}/_funnel.json</span></caption>'
            + "".join(rows) + "</table>")


def funnel(w: Workdir) -> Section:
    title = "Funnel of every stage"
    if not w.funnels:
        return omitted("funnel", title, "no stage wrote a _funnel.json in this workdir")
    named = [(f["stage"], f) for _, f in w.funnels]
    intro = ("<p>Records in, each drop reason in the order the stage applies it (with what is left), and what "
             "is kept: each stage's <code>_funnel.json</code>, the sum of its shards' stats. A stage counts the "
             "records that reached it; <code>shards/captions</code> is the whole path of the image-caption pairs, "
             "every record's first reason from <code>mmdata.decisions.first_reason</code>.</p>")
    bars = img(plots.funnel_bars(named), "funnel of every stage", "plot")
    tables = '<div class="funnels">' + "".join(
        funnel_table(folder, f, in_progress(w.join(folder))) for folder, f in w.funnels) + "</div>"
    return Section("funnel", title, intro + bars + tables)


# -- throughput -----------------------------------------------------------------------------------


def throughput(w: Workdir) -> Section:
    title = "Throughput per stage"
    if not w.steps:
        return omitted("throughput", title, "no shard stats (*_stats.json) in this workdir")
    rows = []
    for s in w.steps:
        wall = s.wall_seconds
        rate = s.records / wall if wall else None
        statuses = ", ".join(f"{escape(k)} {num(n)}" for k, n in sorted(s.statuses().items(), key=lambda x: -x[1]))
        rows.append([f"<code>{escape(s.path)}</code>", len(s.stats), s.records, s.kept,
                     round(wall, 2) if wall is not None else None, round(s.task_seconds, 2),
                     round(rate, 1) if rate is not None else None, f'<span class="small">{statuses}</span>'])
    note = ("<p>From each shard's stats: wall time spans the first shard task's start to the last one's end "
            "(a resumed stage spans both runs), task seconds add up every shard's own duration; records/s = "
            "records / wall time. A global step's reduce is not a shard task: its time shows as the gap between "
            "its passes.</p>")
    return Section("throughput", title, note + table(
        ["step", "shards", "records", "kept", "wall s", "task s", "records/s", "statuses"], rows, "throughput"))


# -- CLIP scores ----------------------------------------------------------------------------------


def clip_scores(w: Workdir) -> Section:
    title = "CLIP scores"
    if not w.has("clipscore/_decision.json"):
        return omitted("clip", title, "no clipscore/_decision.json: the clipscore stage did not run here")
    d = w.json("clipscore/_decision.json")
    stages = w.sidecars()
    if "clipscore" not in stages:
        return omitted("clip", title, "clipscore/_decision.json exists but not every download shard has its clipscore sidecar")
    df = pd.concat(w.many(lambda i: w.pair_table(i, stages), w.pair_shards), ignore_index=True)
    scored = df[df["clipscore.score"].notna()]
    reason = scored["reason"]
    low = f"clipscore:{decisions_low()}"
    kept = scored.loc[reason.isna(), "clipscore.score"].to_numpy()
    dropped = scored.loc[reason.eq(low), "clipscore.score"].to_numpy()
    other = scored.loc[reason.notna() & reason.ne(low), "clipscore.score"].to_numpy()
    rule, thr = d.get("rule"), d.get("threshold")
    after = d.get("pool_after") or []
    if rule == "top_fraction":
        how = f"the top {d['top_fraction']:.0%} of a pool of {num(d.get('pool'))}" + (
            f" (what {', '.join(after)} kept)" if after else "")
    elif rule == "threshold":
        how = "an absolute cosine threshold"
    else:
        how = "no score rule (scores only)"
    body = [(f"<p>Decision (<code>clipscore/_decision.json</code>): {escape(how)}; threshold "
             f'<b class="threshold">{"none" if thr is None else f"{thr:.4f}"}</b>. {num(len(scored))} records '
             "scored (<code>clipscore/{id}.parquet</code>), split by each record's first reason: kept, dropped by "
             "the score, dropped by an earlier stage (outside the pool).</p>"),
            img(plots.score_histogram(kept, dropped, other, thr, "dropped before clipscore"), "CLIP score histogram", "plot")]
    stats = [["kept", len(kept), _mean(kept)], ["low_clip_score", len(dropped), _mean(dropped)],
             ["dropped before clipscore", len(other), _mean(other)]]
    body.append(table(["decision", "records", "mean score"], stats, "small-table"))
    body.append(synthetic_scores(w, df))
    return Section("clip", title, "".join(body))


def decisions_low() -> str:
    from mmdata.stages.clipscore import LOW

    return LOW


def _mean(a) -> float | None:
    return float(np.mean(a)) if len(a) else None


def synthetic_scores(w: Workdir, df: pd.DataFrame) -> str:
    """AltText vs VeCap scores: the recaption stage's own scores (same CLIP model), else the
    clipscore stage's `synthetic_score` of a synthetic caption that came with the input."""
    if "recaption.alt_score" in df and "recaption.synthetic_score" in df:
        both = df[df["recaption.alt_score"].notna() & df["recaption.synthetic_score"].notna()]
        src = "the recaption stage's <code>alt_score</code> and <code>synthetic_score</code>"
        return _syn_block(both["recaption.alt_score"].to_numpy(), both["recaption.synthetic_score"].to_numpy(), src)
    if "clipscore.synthetic_score" in df:
        both = df[df["clipscore.score"].notna() & df["clipscore.synthetic_score"].notna()]
        src = "the clipscore stage's <code>score</code> and <code>synthetic_score</code>"
        return _syn_block(both["clipscore.score"].to_numpy(), both["clipscore.synthetic_score"].to_numpy(), src)
    return ('<p class="note">Synthetic vs AltText: no synthetic captions scored in this workdir '
            "(no recaption sidecars, no <code>synthetic_score</code> column).</p>")


def _syn_block(alt: np.ndarray, syn: np.ndarray, src: str) -> str:
    if not len(alt):
        return f'<p class="note">Synthetic vs AltText: {src} hold no record with both scores.</p>'
    better = float(np.mean(syn > alt))
    return (f'<h3>VeCap (synthetic) vs AltText captions</h3><p class="vecap-scores">From {src}: '
            f'<span data-field="n">{num(len(alt))}</span> records with both; mean AltText '
            f'<span data-field="alt">{np.mean(alt):.4f}</span>, mean VeCap <span data-field="synthetic">'
            f'{np.mean(syn):.4f}</span>; VeCap scores higher on <span data-field="better">{better:.1%}</span>.</p>'
            + img(plots.alt_vs_synthetic(alt, syn), "AltText vs VeCap CLIP scores", "plot"))


# -- sample grid ----------------------------------------------------------------------------------


def _grid_rows(w: Workdir) -> tuple[pd.DataFrame, list[str], int]:
    stages = w.sidecars()
    ids = w.pair_shards[:GRID_SHARDS]
    frames = w.many(lambda i: w.pair_table(i, stages).assign(_shard=i), ids)
    return pd.concat(frames, ignore_index=True), stages, len(ids)


def sample_card(row: dict, thumb: str | None, *, show_reason: bool) -> str:
    parts = ['<div class="card">']
    if thumb:
        parts.append(img(thumb, f"sample {row['key']}", "thumb"))
    else:
        parts.append('<div class="noimg"><span>no image</span></div>')
    parts.append(f'<div class="meta"><code>{escape(str(row["key"]))}</code>')
    if show_reason and isinstance(row.get("reason"), str):
        parts.append(f' <span class="reason">{escape(row["reason"])}</span>')
    score = row.get("clipscore.score")
    if score is not None and not (isinstance(score, float) and math.isnan(score)):
        parts.append(f' <span class="score">CLIP {score:.3f}</span>')
    parts.append("</div>")
    parts.append(f'<div class="cap"><b>AltText</b> {text(row.get("caption"))}</div>')
    if "recaption.synthetic_caption" in row:
        parts.append(f'<div class="cap vecap"><b>VeCap</b> {text(row.get("recaption.synthetic_caption"))}</div>')
    if isinstance(row.get("error_message"), str) and row.get("status") != "success":
        parts.append(f'<div class="err">{text(row["error_message"], 160)}</div>')
    parts.append("</div>")
    return "".join(parts)


def samples_grid(w: Workdir) -> Section:
    title = "Kept and dropped samples"
    if not w.pair_shards:
        return omitted("samples", title, "no download shards: no image-caption pairs in this workdir")
    df, stages, n_read = _grid_rows(w)
    df["group"] = df["reason"].map(lambda r: decisions.code(r) if isinstance(r, str) else "kept")
    groups = ["kept"] + sorted((g for g in df["group"].unique() if g != "kept"),
                               key=lambda g: (_stage_rank(g, stages), -int((df["group"] == g).sum()), g))
    picks = {}
    for g in groups:
        rows = df[df["group"] == g]
        n = KEPT_SHOWN if g == "kept" else PER_REASON
        picks[g] = rows.sample(min(n, len(rows)), random_state=0).sort_values("key") if len(rows) else rows
    wanted = pd.concat(picks.values())
    thumbs: dict[str, str | None] = {}
    for sid, part in wanted.groupby("_shard"):
        blobs = w.images("download", sid, part.loc[part["status"] == "success", "key"].astype(str))
        thumbs.update({k: plots.thumbnail(b) for k, b in blobs.items()})
    body = [(f"<p>Each record's first reason (its download status, then {escape(', '.join(stages) or 'no sidecar')} "
             f"in order), as the shards stage decides; drawn (seeded) from the first {n_read} of "
             f"{len(w.pair_shards)} download shards. AltText is the record's own caption; VeCap the recaption "
             "stage's synthetic caption where there is one.</p>")]
    for g in groups:
        rows = picks[g]
        total = int((df["group"] == g).sum())
        body.append(f'<h3 class="group" data-group="{escape(g)}">{escape(g)} '
                    f'<span class="small">({num(total)} in the shards read, {len(rows)} shown)</span></h3>')
        body.append('<div class="grid">' + "".join(
            sample_card(r, thumbs.get(str(r["key"])), show_reason=g != "kept") for r in rows.to_dict("records")) + "</div>")
    return Section("samples", title, "".join(body))


def _stage_rank(group: str, stages: list[str]) -> int:
    head = group.split(":", 1)[0]
    return stages.index(head) + 1 if head in stages else 0


# -- dedup clusters -------------------------------------------------------------------------------


def dedup_clusters(w: Workdir) -> Section:
    title = "Dedup clusters"
    step = w.step("dedup")
    if step is None:
        return omitted("dedup", title, "no dedup shard stats: the dedup stage did not run here")
    ids = sorted(s["shard"] for s in step.stats)
    cols = ["key", "drop_reason", "duplicate_of"]
    side = pd.concat([f.assign(_shard=i) for i, f in zip(ids, w.many(lambda i: w.parquet(f"dedup/{i}.parquet", cols), ids))],
                     ignore_index=True)
    dups = side[side["duplicate_of"].notna()].copy()
    if dups.empty:
        return omitted("dedup", title, "dedup dropped no record as a duplicate of another")
    dups["code"] = dups["drop_reason"].map(decisions.code)
    sizes = dups.groupby("duplicate_of").size().sort_values(ascending=False, kind="stable")
    chosen, per_code = [], {}
    for kept_key in sizes.index:  # the largest clusters, at most two led by each rule
        code = dups.loc[dups["duplicate_of"] == kept_key, "code"].iloc[0]
        if per_code.get(code, 0) < 2:
            chosen.append(kept_key)
            per_code[code] = per_code.get(code, 0) + 1
        if len(chosen) >= CLUSTERS:
            break
    members = dups[dups["duplicate_of"].isin(chosen)]
    where = dict(zip(side["key"], side["_shard"]))
    thumbs = _thumbs(w, {str(k): where.get(k) for k in [*chosen, *members["key"]]})
    body = [(f"<p>From the dedup sidecars (<code>dedup/{{id}}.parquet</code>): {num(len(dups))} records dropped as "
             f"duplicates of {num(len(sizes))} others; the largest clusters, at most two per rule. Left: the record "
             "each names as its <code>duplicate_of</code>; right: the records dropped as its duplicates.</p>")]
    for kept_key in chosen:
        mine = members[members["duplicate_of"] == kept_key].sort_values("key")
        cells = [_dup_cell(str(kept_key), thumbs, "kept copy", "keep")]
        cells += [_dup_cell(str(r["key"]), thumbs, r["code"], "dup") for r in mine.to_dict("records")[:7]]
        more = f'<span class="small">+{len(mine) - 7} more</span>' if len(mine) > 7 else ""
        body.append(f'<div class="cluster" data-kept="{escape(str(kept_key))}">' + "".join(cells) + more + "</div>")
    return Section("dedup", title, "".join(body))


def _dup_cell(key: str, thumbs: dict, label: str, cls: str) -> str:
    t = thumbs.get(key)
    pic = img(t, f"record {key}", "thumb") if t else '<div class="noimg"><span>no image</span></div>'
    return f'<div class="dupcell {cls}">{pic}<div class="small"><code>{escape(key)}</code><br>{escape(label)}</div></div>'


def _thumbs(w: Workdir, shard_of: dict[str, str | None]) -> dict[str, str | None]:
    """Thumbnails of the download set's images, by key (`shard_of`: key -> its shard id)."""
    by_shard: dict[str, list[str]] = {}
    for k, sid in shard_of.items():
        if sid is not None:
            by_shard.setdefault(sid, []).append(k)
    out: dict[str, str | None] = {}
    for sid, ks in sorted(by_shard.items()):
        out.update({k: plots.thumbnail(b) for k, b in w.images("download", sid, ks).items()})
    return out


# -- interleaved documents ------------------------------------------------------------------------


def documents(w: Workdir) -> Section:
    title = "Interleaved documents"
    step = w.step("interleaved")
    tars = [f"interleaved/{s['shard']}.tar" for s in (step.stats if step else []) if s.get("successes")]
    tars = [t for t in sorted(tars) if w.has(t)]
    if not tars:
        return omitted("documents", title, "no interleaved shard with a kept document in this workdir")
    docs: list[dict] = []
    scores: dict[str, tuple[dict, set]] = {}
    for sid, keys in _pick_documents(w, [t.rsplit("/", 1)[1][: -len(".tar")] for t in tars]).items():
        found = w.members("interleaved", sid, keys)
        docs += [{"__key__": k, **found[k]} for k in keys if k in found]
        scores.update(_doc_scores(w, sid))
    body = [(f"<p>{len(docs)} kept documents of <code>interleaved/{{id}}.tar</code>, the first of each site (domain) "
             "in shard order, so a workdir that mixes sources shows each; rendered in their order of text and "
             "images, as the trainer reads them.</p>"), doc_score_block(w)]
    for s in docs:
        mine, gone = scores.get(str(s["__key__"]), ({}, set()))
        rec = json.loads(s["json"])
        parts = [(f'<article class="doc" data-key="{escape(str(s["__key__"]))}"><h3>{text(rec.get("title") or "untitled")}</h3>'
                  f'<div class="small"><code>{escape(str(s["__key__"]))}</code> {text(rec.get("url"))} · '
                  f'{text(rec.get("language"))}</div>')]
        slots = rec.get("slots", [])
        parts.append('<div class="slots">')
        for slot in slots[:SLOTS]:
            if slot.get("type") == "text":
                parts.append(f'<p class="slot">{text(slot.get("text"), 400)}</p>')
            elif slot.get("type") == "image":
                data = samples.image_member(s, slot.get("index"))
                t = plots.thumbnail(data, 200) if data else None
                pic = (img(t, f"image {slot.get('index')} of {s['__key__']}", "docimg") if t else
                       '<div class="noimg"><span>image not decodable</span></div>')
                idx = slot.get("index")
                label = ""
                if idx in mine:
                    sc = mine[idx]
                    label = f'<figcaption class="small">CLIP {"–" if sc is None else f"{sc:.3f}"}' + (
                        ' <span class="reason">dropped</span>' if idx in gone else "") + "</figcaption>"
                parts.append(f'<figure class="slot">{pic}{label}</figure>')
        parts.append("</div>")
        n_img = sum(1 for x in slots if x.get("type") == "image")
        more = f"; the first {SLOTS} shown" if len(slots) > SLOTS else ""
        parts.append(f'<div class="small">{len(slots)} slots ({n_img} images){more}</div></article>')
        body.append("".join(parts))
    return Section("documents", title, "".join(body))


def _pick_documents(w: Workdir, ids: list[str]) -> dict[str, list[str]]:
    """shard id -> keys of the documents shown: the first kept document of each domain, topped up
    with the next kept ones, DOCUMENTS in all, in shard order; from each shard's metadata
    (`interleaved/{id}.parquet`), reading at most DOC_SHARDS shards."""
    firsts, rest, seen = [], [], set()
    for sid in ids[:DOC_SHARDS]:
        meta = w.parquet(f"interleaved/{sid}.parquet", ["key", "domain", "status"])
        for key, domain in meta.loc[meta["status"] == "success", ["key", "domain"]].itertuples(index=False):
            if domain not in seen:
                firsts.append((len(firsts) + len(rest), sid, str(key)))
                seen.add(domain)
            elif len(rest) < DOCUMENTS:
                rest.append((len(firsts) + len(rest), sid, str(key)))
        if len(firsts) >= DOCUMENTS:
            break
    picked: dict[str, list[str]] = {}
    for _, sid, key in sorted((firsts + rest)[:DOCUMENTS]):
        picked.setdefault(sid, []).append(key)
    return picked


def _doc_scores(w: Workdir, shard_id: str) -> dict[str, tuple[dict, set]]:
    """key -> ({image index: its best sentence cosine}, image indexes the rule drops), from the
    document CLIP sidecar (`clipscore_docs/{id}.parquet`) when there is one."""
    rel = f"clipscore_docs/{shard_id}.parquet"
    if not w.has(rel):
        return {}
    out = {}
    for row in w.parquet(rel).to_dict("records"):
        index, score = row.get("image_index"), row.get("image_score")
        if index is None or score is None:
            continue
        vals = {int(i): (None if v is None or math.isnan(v) else float(v)) for i, v in zip(index, score)}
        drop = row.get("drop_images")
        out[str(row["key"])] = (vals, {int(i) for i in (drop if drop is not None else [])})
    return out


def doc_score_block(w: Workdir) -> str:
    """The document images' CLIP scores (each image's best sentence) and the rule's threshold."""
    if not w.has("clipscore_docs/_decision.json"):
        return ""
    rule = w.json("clipscore_docs/_decision.json")
    rels = sorted(f for f in w.files if f.startswith("clipscore_docs/") and f.count("/") == 1
                  and f.endswith(".parquet") and not f.rsplit("/", 1)[1].startswith("_"))
    values = [float(v) for f in rels for sc in w.parquet(f, ["image_score"])["image_score"]
              if sc is not None for v in sc if v is not None and not math.isnan(v)]
    thr = rule.get("threshold")
    if not values:
        return '<p class="note">Document CLIP scores: the clipscore_docs sidecars hold no scored image.</p>'
    below = sum(v < thr for v in values) if thr is not None else 0
    return (f"<h3>Document images: CLIP score with their best sentence</h3><p>From <code>clipscore_docs/</code>: "
            f"{num(len(values))} images scored; threshold "
            f'<b class="doc-threshold">{"none (scores only)" if thr is None else f"{thr:.4f}"}</b>'
            + (f", {num(below)} below it" if thr is not None else "") + ".</p>"
            + img(plots.histogram(values, thr, "CLIP cosine (image, best sentence of its document)"),
                  "document image CLIP scores", "plot"))


# -- mixture --------------------------------------------------------------------------------------


def mixture(w: Workdir) -> Section:
    title = "Mixture: target vs realized"
    if not w.has(MIX_STATS):
        return omitted("mixture", title, f"no {MIX_STATS} (written by `mmdata mix-stats --out` and by the demo)")
    m = w.json(MIX_STATS)
    rows = m["rows"]
    srcs = [r["source"] for r in rows]
    plot = plots.shares(srcs, {"target": [r["target"] for r in rows], "samples": [r["share"] for r in rows],
                               "tokens": [r["token_share"] for r in rows]})
    mix = m.get("mixture", {})
    cfg_src = mix.get("sources", {})
    trows = []
    for r in rows:
        want = (cfg_src.get(r["source"]) or {}).get("synthetic_share")
        vecap = r["synthetic"] / r["samples"] if r["samples"] else None
        trows.append([escape(r["source"]), r["weight"], f"{r['target']:.2%}", r["samples"], f"{r['share']:.2%}",
                      r["tokens"], f"{r['token_share']:.2%}", r["synthetic"],
                      "–" if vecap is None or not (want or r["synthetic"]) else
                      f"{vecap:.2%}" + (f" (target {want:.0%})" if want else ""),
                      r["passes"], r["repeats"]])
    head = (f"<p><code>{escape(MIX_STATS)}</code>: {num(m.get('batches'))} global batches of "
            f"{num(mix.get('global_batch'))} from mixture <b>{escape(str(mix.get('name')))}</b> "
            f"(ratios in {escape(str(mix.get('unit')))}, {escape(str(mix.get('guarantee')))}){escape(m.get('end') or '')}. "
            "VeCap share: the caption samples that carry the synthetic caption.</p>")
    return Section("mixture", title, head + img(plot, "mixture shares", "plot") + table(
        ["source", "weight", "target", "samples", "share", "~tokens", "token share", "VeCap", "VeCap share",
         "passes", "repeats"], trows, "mix"))


# -- training and evaluation ----------------------------------------------------------------------


def training(w: Workdir) -> Section:
    title = "Training"
    runs = w.training_runs()
    if not runs:
        return omitted("training", title, "no training run (log.jsonl beside recipe.json) in this workdir")
    body = []
    for folder in runs:
        rel = f"{folder}/log.jsonl" if folder else "log.jsonl"
        recs = [r for r in w.jsonl(rel) if "step" in r and "loss" in r]
        if not recs:
            body.append(f'<p class="note"><code>{escape(rel)}</code> has no step yet.</p>')
            continue
        steps = [r["step"] for r in recs]
        panels = [("loss", [r["loss"] for r in recs]), ("tokens/s", [r.get("tokens_per_s") or 0 for r in recs]),
                  ("data wait (share of step)", [r.get("data_share") or 0 for r in recs])]
        if any(r.get("mfu") is not None for r in recs):
            panels.append(("MFU", [r.get("mfu") or 0 for r in recs]))
        last = recs[-1]
        def mean(k: str, recs: list[dict] = recs) -> float | None:
            values = [r[k] for r in recs if r.get(k) is not None]
            return float(np.mean(values)) if values else None

        summary = {"steps": ["steps logged", len(recs)], "last_step": ["last step", last["step"]],
                   "first_loss": ["first loss", recs[0]["loss"]], "last_loss": ["last loss", last["loss"]],
                   "tokens_per_s": ["mean tokens/s", mean("tokens_per_s")],
                   "images_per_s": ["mean images/s", mean("images_per_s")],
                   "data_share": ["mean data wait share", mean("data_share")], "mfu": ["mean MFU", mean("mfu")],
                   "tokens": ["tokens in the logged steps", sum(r.get("tokens", 0) for r in recs)]}
        ck = w.checkpoint(folder)
        model = f"{folder}/model" if w.has(f"{folder}/model/mm1.json") else None
        where = (f'<p class="small">checkpoint <code>{escape(ck or "none complete")}</code> · exported model '
                 f'<code>{escape(model or "none")}</code> · log <code>{escape(rel)}</code></p>')
        body.append(f'<h3 class="run" data-run="{escape(folder)}"><code>{escape(folder or ".")}</code></h3>' + where
                    + img(plots.lines(steps, panels), f"training curves of {folder}", "plot")
                    + table(["", "value"], summary.values(), "small-table training", fields=summary))
    return Section("training", title, "".join(body))


def evaluation(w: Workdir) -> Section:
    title = "Evaluation"
    found = w.named("results.jsonl")
    if not found:
        return omitted("evaluation", title, "no evaluation results (results.jsonl) in this workdir")
    body = []
    for rel in found:
        rows = []
        for r in w.jsonl(rel):
            ci = r.get("ci95")
            rows.append([escape(str(r.get("task"))), r.get("shots"), escape(str(r.get("metric"))), r.get("score"),
                         "–" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]", r.get("chance"), r.get("n"),
                         r.get("seconds")])
        body.append(f"<h3><code>{escape(rel)}</code></h3>" + table(
            ["task", "shots", "metric", "score", "95% CI", "chance", "n", "seconds"], rows, "eval",
            f' data-file="{escape(rel)}"'))
    return Section("evaluation", title, "".join(body))


SECTIONS: tuple[Callable[[Workdir], Section], ...] = (
    funnel, throughput, clip_scores, samples_grid, dedup_clusters, documents, mixture, training, evaluation)
