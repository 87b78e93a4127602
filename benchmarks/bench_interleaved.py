"""Extraction and MinHash speed, side by side with the peers, on the same real pages in one run.

1. Extraction: the three real WARCs in shared/data/warc, concatenated REPEAT times into one
   WARC.gz (about 1300 records). mmdata: its WARC reader + decode + lexbor DOM walk to ordered
   text and image slots. trafilatura: `trafilatura.extract(html, include_images=True)` on the same
   decoded pages (its reading time is not even counted). Pages per second, single process.
2. MinHash: datatrove's parameters (5-grams, 14 x 8) on the extracted texts: mmdata's vectorised
   signatures + LSH clusters vs datasketch MinHash (update_batch) + MinHashLSH insert/query.

3. WARC reading alone, on the same file: mmdata's reader (own gzip-member framing, checks for cut
   and swallowed records) vs FastWARC's ArchiveIterator, both handing every response block to the
   same HTTP parse and charset decoding. Records per second.
4. Quality on the labelled dev set (tests/devset/: 13 real English pages, article images in order
   and main text): image recall, precision, order and text F1, macro over pages, for both.

Run: .venv/bin/python benchmarks/bench_interleaved.py [REPEAT]  (default 10: ~1300 records)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARCS = sorted((ROOT.parent / "shared" / "data" / "warc").glob("*.warc.gz"))


def main(repeat: int = 10, rounds: int = 2) -> None:
    import trafilatura

    from mmdata.html import extract
    from mmdata.minhash import MinHasher, clusters
    from mmdata.warc import read_warc

    blob = b"".join(p.read_bytes() for p in WARCS) * repeat
    with tempfile.NamedTemporaryFile(suffix=".warc.gz") as f:
        f.write(blob)
        f.flush()
        htmls = [(rec.html, rec.url) for rec in read_warc(f.name) if rec.status == "success"]
        ours = theirs = float("inf")
        for _ in range(rounds):  # alternating, best of each
            t0 = time.perf_counter()
            records = pages = 0
            texts = []
            for rec in read_warc(f.name):
                records += 1
                if rec.status == "success":
                    page = extract(rec.html, rec.url)
                    pages += 1
                    texts.append("\n\n".join(page.texts))
            ours = min(ours, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for html, url in htmls:
                trafilatura.extract(html, url=url, include_images=True)
            theirs = min(theirs, time.perf_counter() - t0)
        print(f"extraction: {records} WARC records, {pages} HTML pages ({len(blob) / 2**20:.1f} MiB gz), "
              f"best of {rounds} rounds")
        print(f"  mmdata (read + lexbor walk):     {pages / ours:8.1f} pages/s  ({ours:.2f} s)")
        print(f"  trafilatura.extract (no reading): {pages / theirs:7.1f} pages/s  ({theirs:.2f} s)")
        print(f"  ratio mmdata / trafilatura:      {theirs / ours:8.1f}x")
        reading(f.name)

    # MinHash on the extracted texts (repeats make exact duplicates: both sides must find them)
    t0 = time.perf_counter()
    mh = MinHasher()
    rep = clusters(mh.band_hashes(texts))
    ours = time.perf_counter() - t0
    dups_ours = int((rep != range(len(texts))).sum())

    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    dups_theirs = 0
    for i, text in enumerate(texts):
        ws = text.lower().split()
        m = MinHash(num_perm=112)
        m.update_batch([" ".join(ws[j : j + 5]).encode() for j in range(max(1, len(ws) - 4))])
        if lsh.query(m):
            dups_theirs += 1
        lsh.insert(str(i), m)
    theirs = time.perf_counter() - t0
    print(f"minhash-lsh: {len(texts)} documents, 5-grams, 14 bands x 8 hashes")
    print(f"  mmdata (numpy, batch):   {len(texts) / ours:9.1f} docs/s  ({ours:.2f} s, {dups_ours} duplicates)")
    print(f"  datasketch:              {len(texts) / theirs:9.1f} docs/s  ({theirs:.2f} s, {dups_theirs} duplicates)")
    print(f"  ratio mmdata / datasketch: {theirs / ours:7.1f}x")


def reading(path: str, rounds: int = 3) -> None:
    """WARC records per second, ours and FastWARC's, alternating rounds; best of each."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from mmdata.warc import _record, read_warc

    def ours() -> int:
        return sum(1 for _ in read_warc(path))

    def fastwarc() -> int:
        n = 0
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f, parse_http=False, record_types=WarcRecordType.any_type):
                h = {k.lower(): v for k, v in rec.headers.items()}
                _record(h, rec.reader.read(), h.get("warc-target-uri", ""), h.get("warc-date"), path, 10 << 20)
                n += 1
        return n

    best = {"mmdata": float("inf"), "fastwarc": float("inf")}
    counts = {}
    for _ in range(rounds):
        for name, fn in (("mmdata", ours), ("fastwarc", fastwarc)):
            t0 = time.perf_counter()
            counts[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"warc reading: {counts['mmdata']} records (FastWARC: {counts['fastwarc']}), best of {rounds} rounds")
    for name, secs in best.items():
        print(f"  {name + ':':<32} {counts[name] / secs:8.1f} records/s  ({secs:.2f} s)")
    print(f"  ratio mmdata / fastwarc:         {best['fastwarc'] / best['mmdata']:8.2f}x")


def quality() -> None:
    import trafilatura
    from lxml import etree

    sys.path.insert(0, str(ROOT / "tests"))
    import devset_score as ds

    from mmdata.html import extract

    html_dir = ROOT.parent / "shared" / "data" / "html"
    ours, theirs = [], []
    for t in ds.load():
        path = html_dir / t["page"]
        html = path.read_text(encoding="utf-8", errors="replace")
        page = extract(html, str(path))
        ours.append(ds.score_page(t, [s.url for s in page.images], "\n".join(page.texts)))
        xml = trafilatura.extract(html, output_format="xml", include_images=True, include_tables=True)
        doc = etree.fromstring(xml.encode()) if xml else None
        urls = [g.get("src") for g in doc.iter("graphic") if g.get("src")] if doc is not None else []
        main = doc.find("main") if doc is not None else None
        text = (doc.get("title") or "") + "\n" + (" ".join(main.itertext()) if main is not None else "") if doc is not None else ""
        theirs.append(ds.score_page(t, urls, text))
    print(f"dev set ({len(ours)} real English pages), macro over pages:  recall  precision  order  text F1")
    for name, rows in (("mmdata", ours), ("trafilatura", theirs)):
        m = ds.macro(rows)
        print(f"  {name:<58} {m['recall']:6.3f} {m['precision']:10.3f} {m['order']:6.3f} {m['text_f1']:8.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    quality()
