"""Build a demo corpus: image-caption pairs and interleaved documents with known truth, offline.

Layout of ``out_dir`` (the contract other stages rely on)::

    pairs/images/<host>/<path>   image files, as the demo server serves them
    pairs/urls.parquet           url, caption, sample_id, source  (also urls.csv, urls.jsonl, urls.txt)
    pairs/truth.parquet          one row per sample_id: labels (see mmdata.demo.pairs)
    docs/pages/<slug>.html       generated articles, served at http://news.demo.mmdata.test/articles/<slug>.html
    docs/pages.warc.gz           the same pages as WARC response records
    docs/images/<host>/<path>    images the pages embed (and their decoys)
    docs/truth.jsonl             per page: images in order, decoys, paragraphs, labels
    manifest.json                seed, counts, sizes

Same arguments, same bytes: every file is a pure function of the seed and the sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from mmdata.demo.docs import build_docs
from mmdata.demo.pairs import NoiseRates, build_pairs
from mmdata.demo.urls import DEMO_HOSTS, FAULT_MODES, ROBOTS_DISALLOW

OWNED = ("pairs", "docs", "manifest.json")


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(
    out_dir: str | os.PathLike,
    n_pairs: int = 2000,
    n_docs: int = 200,
    seed: int = 0,
    rates: NoiseRates | None = None,
    workers: int | None = None,
) -> dict:
    """Build the corpus into ``out_dir`` (replacing a previous demo corpus there); returns the manifest."""
    rates = rates or NoiseRates()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    workers = workers or min(4, os.cpu_count() or 1)
    (out / "pairs").mkdir()
    pairs = build_pairs(out / "pairs", n_pairs, seed, rates, workers)
    docs = build_docs(out / "docs", n_docs, seed, workers)
    manifest = {
        "generator": "mmdata.demo",
        "seed": seed,
        "n_pairs": n_pairs,
        "n_docs": n_docs,
        "noise_rates": dataclasses.asdict(rates),
        "pairs": pairs | {"bytes": _tree_bytes(out / "pairs")},
        "docs": docs | {"bytes": _tree_bytes(out / "docs")},
        "hosts": sorted(DEMO_HOSTS),
        "robots_disallow": ROBOTS_DISALLOW,
        "fault_modes": list(FAULT_MODES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmdata demo-data", description="Build the offline demo corpus.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pairs", type=int, default=2000, help="image-caption pairs (default 2000)")
    parser.add_argument("--docs", type=int, default=200, help="interleaved documents (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, default=None, help="threads encoding images (default: up to 4)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = build(args.out, args.pairs, args.docs, args.seed, workers=args.workers)
    took = time.perf_counter() - start
    size = (manifest["pairs"]["bytes"] + manifest["docs"]["bytes"]) / 2**20
    print(
        f"demo corpus in {args.out}: {args.pairs} pairs, {args.docs} docs, {size:.1f} MiB, {took:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
