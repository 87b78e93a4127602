"""Extraction and MinHash speed, side by side with the peers, on the same real pages in one run.

1. Extraction: the three real WARCs in shared/data/warc, concatenated REPEAT times into one
   WARC.gz (about 1300 records). mmdata: its WARC reader + decode + lexbor DOM walk to ordered
   text and image slots. trafilatura: `trafilatura.extract(html, include_images=True)` on the same
   decoded pages (its reading time is not even counted). Pages per second, single process.
2. MinHash: datatrove's parameters (5-grams, 14 x 8) on the extracted pages, each with 20 edited
   copies (0-30% of words replaced): mmdata (rensa as the permutation kernel) vs rensa fed shingle
   strings vs mmdata's former numpy permutations vs datasketch (update_batch + MinHashLSH). Docs/s
   and recall of pairs with exact Jaccard >= 0.8 (false positives: pairs < 0.5 sharing a band).

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

    unique = texts[: len(texts) // repeat]  # one copy of each page: the edited copies come next
    minhash(unique)


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


def near_duplicates(texts: list[str], copies: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Each text plus `copies` edited copies (0-30% of words replaced), and the (original, copy)
    pairs plus as many random cross pairs: the pairs whose exact Jaccard is measured."""
    import numpy as np

    rng = np.random.default_rng(seed)
    docs, pairs = [], []
    for t in texts:
        ws = t.split()
        if len(ws) < 20:
            continue
        first = len(docs)
        docs.append(t)
        for _ in range(copies):
            w = list(ws)
            for j in rng.choice(len(w), int(len(w) * rng.choice([0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.3])), replace=False):
                w[j] = f"edit{rng.integers(10**9)}"
            docs.append(" ".join(w))
            pairs.append((first, len(docs) - 1))
    for _ in range(len(pairs)):
        i, j = (int(x) for x in rng.integers(len(docs), size=2))
        if i != j:
            pairs.append((min(i, j), max(i, j)))
    return docs, pairs


def minhash(texts: list[str], copies: int = 20, rounds: int = 3) -> None:
    """Near-duplicate detection, 5-gram shingles, 14 bands x 8 (112 permutations), side by side:
    mmdata (rensa kernel), rensa fed shingle strings, mmdata's former numpy permutations,
    datasketch. Recall: pairs with exact Jaccard >= 0.8 sharing a band; false positives: pairs
    with Jaccard < 0.5 sharing one."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH
    from rensa import RMinHash

    from mmdata.minhash import _WORD, MinHasher, clusters, jaccard

    docs, pairs = near_duplicates(texts, copies)
    exact = np.array([jaccard(docs[i], docs[j]) for i, j in pairs])
    mh = MinHasher()

    def grams(t):
        ws = _WORD.findall(t.lower())
        n = min(5, len(ws))
        return [" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)]

    def ours():
        bands = mh.band_hashes(docs)
        clusters(bands)
        return bands

    def rensa_strings():
        mat = RMinHash.digest_matrix_from_token_sets([grams(t) for t in docs], mh.num_perm, 1)
        bands = mh.bands(np.array(mat.to_rows(), dtype=np.uint32))
        clusters(bands)
        return bands

    def numpy_perms():  # the permutation step mmdata used before rensa: multiply-shift over uint64
        rng = np.random.default_rng(1)
        a = rng.integers(1, 2**63, mh.num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, mh.num_perm, dtype=np.uint64)
        sigs = np.empty((len(docs), mh.num_perm), dtype=np.uint32)
        for i in range(0, len(docs), 64):
            flat, off = mh.shingles(docs[i : i + 64])
            ph = np.multiply.outer(flat, a)
            ph += b
            ph >>= np.uint64(32)
            sigs[i : i + 64] = np.minimum.reduceat(ph, off[:-1].astype(np.int64), axis=0)
        bands = mh.bands(sigs)
        clusters(bands)
        return bands

    def datasketch():
        lsh = MinHashLSH(num_perm=mh.num_perm, params=(mh.buckets, mh.per_bucket))
        sigs = []
        for i, t in enumerate(docs):
            m = MinHash(num_perm=mh.num_perm)
            m.update_batch([g.encode() for g in grams(t)])
            lsh.query(m)
            lsh.insert(str(i), m)
            sigs.append(m.hashvalues.astype(np.uint32))
        return mh.bands(np.array(sigs))

    methods = {"mmdata (rensa kernel)": ours, "rensa (shingle strings)": rensa_strings,
               "mmdata before (numpy permutations)": numpy_perms, "datasketch": datasketch}
    best = dict.fromkeys(methods, float("inf"))
    bands = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            bands[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    near, far = exact >= 0.8, exact < 0.5
    print(f"minhash-lsh: {len(docs)} documents ({copies} edited copies each), 5-grams, {mh.buckets} bands x "
          f"{mh.per_bucket}; {near.sum()} pairs with Jaccard >= 0.8, {far.sum()} < 0.5; best of {rounds} rounds")
    for name, secs in best.items():
        b = bands[name]
        hit = np.array([(b[i] == b[j]).any() for i, j in pairs])
        print(f"  {name:<36} {len(docs) / secs:9.1f} docs/s  recall {hit[near].mean():.4f}  "
              f"false positives {hit[far].mean():.4f}")
    print(f"  ratio mmdata / rensa:        {best['rensa (shingle strings)'] / best['mmdata (rensa kernel)']:7.2f}x")
    print(f"  ratio mmdata / datasketch:   {best['datasketch'] / best['mmdata (rensa kernel)']:7.2f}x")


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
