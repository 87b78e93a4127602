"""`text`: text-only documents (MM1's 10% text share) from the same readers as `interleaved`.

Same three resumable passes (measure -> global dedup -> write, see `mmdata.stages.interleaved`),
with the text stream's own measure and writer: the whole extracted article text (paragraphs
joined by blank lines), fastText language ID, then Gopher quality + repetition and FineWeb line
filters (datatrove's thresholds, all in YAML); dedup by URL and MinHash-LSH. Output: `{key}.txt`
+ `{key}.json` per schemas/v1/text.schema.json, one parquet row per input record, `_funnel.json`.
"""

from __future__ import annotations

from collections.abc import Iterator

from mmdata import html as htmlmod
from mmdata import textfilters as tf
from mmdata.config import Pipeline, TextConfig
from mmdata.engine import Report
from mmdata.stages.interleaved import SCHEMA_VERSION, Measure, Outcome, WriteDocuments, domain, run_passes


class TextMeasure(Measure):
    name = "text-measure"

    def measure(self, rec, row: dict) -> str | None:
        page = htmlmod.extract(rec.html, rec.url, self.rules)
        limit = self.cfg.max_link_density
        text = "\n\n".join(s.text for s in page.slots
                             if s.type == "text" and (limit is None or s.link_chars <= limit * len(s.text)))
        row.update(url=page.url, domain=domain(page.url), title=page.title, text=text)
        if not text.strip():
            row["drop_reason"] = "empty_page"
            return None
        m = {**tf.gopher(text), **tf.fineweb(text)}
        row.update({f"doc_{k}": v for k, v in m.items()})
        row["drop_reason"] = self.language(text, row) or tf.decide(m, self.cfg.filters, "text")
        return text


class WriteTextDocuments(WriteDocuments):
    name = "text"
    meta_columns = ("key", "url", "domain", "date", "source", "title", "lang", "lang_score", "doc_words",
                    "doc_line_punct", "doc_dup_lines")

    def documents(self, rows: list[dict]) -> Iterator[tuple[str, Outcome, dict | None]]:
        for row in rows:
            text = row["text"]
            record = {"key": row["key"], "kind": "text", "schema_version": SCHEMA_VERSION, "url": row["url"],
                      "title": row.get("title"), "language": row.get("lang"), "date": row.get("date"),
                      "n_chars": len(text)}
            yield row["key"], Outcome(), {"__key__": row["key"], "txt": text, "json": record}


def run(pipeline: Pipeline, *, client=None, overwrite: bool = False) -> Report:
    cfg: TextConfig = pipeline.section("text")
    return run_passes(pipeline, "text", cfg, TextMeasure(cfg), WriteTextDocuments(cfg), client=client, overwrite=overwrite)
