"""Document near-duplicate signatures (mmdata.minhash) against the exact Jaccard similarity of
the same word 5-gram sets, on sampled pairs of edited copies."""

from __future__ import annotations

import numpy as np
import pytest

from mmdata.minhash import MinHasher, clusters, jaccard


@pytest.fixture(scope="module")
def edited():
    """200 random texts, each with seven copies that have 0.5% to 30% of their words replaced."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    docs, pairs = [], []
    for _ in range(200):
        ws = list(rng.choice(vocab, 400))
        first = len(docs)
        docs.append(" ".join(ws))
        for frac in (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3):
            w = list(ws)
            for j in rng.choice(len(w), int(len(w) * frac), replace=False):
                w[j] = f"edit{rng.integers(10**9)}"
            docs.append(" ".join(w))
            pairs.append((first, len(docs) - 1))
    for _ in range(400):  # unrelated texts
        i, j = rng.choice(len(docs) // 8, size=2, replace=False) * 8
        pairs.append((int(i), int(j)))
    exact = np.array([jaccard(docs[i], docs[j]) for i, j in pairs])
    return docs, pairs, exact


def test_signatures_estimate_jaccard_and_bands_decide_like_it(edited):
    docs, pairs, exact = edited
    m = MinHasher()
    sigs = m.signatures(docs)
    est = np.array([(sigs[i] == sigs[j]).mean() for i, j in pairs])
    # an unbiased estimate: 112 permutations give a standard error of about 0.045 at J = 0.5
    assert abs((est - exact).mean()) < 0.01 and np.abs(est - exact).mean() < 0.04
    bands = m.bands(sigs)
    hit = np.array([(bands[i] == bands[j]).any() for i, j in pairs])
    # 14 bands x 8: the S-curve around J ~ 0.72
    assert hit[exact >= 0.9].all() and hit[exact >= 0.8].mean() >= 0.95
    assert hit[exact < 0.5].mean() <= 0.01 and not hit[exact < 0.2].any()
    # the global step: every copy within 2% edits joins its original's cluster, unrelated texts do not
    rep = clusters(bands)
    assert all(rep[j] == rep[i] for (i, j), e in zip(pairs, exact) if e >= 0.9)
    assert len(set(rep[::8])) == 200


def test_shingles_stay_inside_each_text():
    m = MinHasher()
    flat, offsets = m.shingles(["a b c d e f g", "x y", "", "A b, c d. E f g!"])
    assert offsets.tolist() == [0, 3, 4, 5, 8]  # 7 words: 3 shingles; short and empty texts: one
    assert flat[0:3].tolist() == flat[5:8].tolist()  # case and punctuation do not count
    assert len(set(flat[:3].tolist())) == 3
    # order matters, and the batch a text is hashed in does not
    one = m.signatures(["b a c d e f g"])
    assert not np.array_equal(one, m.signatures(["a b c d e f g"]))
    batch = MinHasher(batch_docs=2).signatures(["q r s t u v"] * 3 + ["b a c d e f g"])
    assert np.array_equal(batch[3], one[0])


def test_clusters_follow_links_to_the_first_document():
    bands = np.array([[1, 2], [3, 4], [1, 9], [8, 9], [5, 6]], dtype=np.uint64)
    assert clusters(bands).tolist() == [0, 1, 0, 0, 4]
