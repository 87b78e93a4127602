"""CIDEr-D scoring: mmdata's scorer vs pycocoevalcap's `Cider`, on COCO Karpathy-test size.

Input: 5000 images x 5 reference captions and one prediction each, lower-case words from a
COCO-like vocabulary (so both see identical tokens and must agree to 1e-6). Rounds alternate
between the two scorers in one process; the ratio is of the median times. Run:
`python benchmarks/bench_eval.py [images] [rounds]`.
"""

from __future__ import annotations

import random
import statistics
import sys
import time


def data(n: int, seed: int = 0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf, as caption words are

    def sentence():
        return " ".join(rng.choices(vocab, weights, k=rng.randint(8, 14)))

    refs = {i: [sentence() for _ in range(5)] for i in range(n)}
    preds = {i: sentence() for i in range(n)}
    return refs, preds


def main(n: int = 5000, rounds: int = 3) -> None:
    from pycocoevalcap.cider.cider import Cider

    from mmdata.eval.metrics import cider

    refs, preds = data(n)
    theirs_in = {i: [p] for i, p in preds.items()}
    times = {"mmdata": [], "pycocoevalcap": []}
    scores = {}
    for _ in range(rounds):
        t = time.perf_counter()
        scores["mmdata"], _ = cider(refs, preds, tokenized=True)
        times["mmdata"].append(time.perf_counter() - t)
        t = time.perf_counter()
        scores["pycocoevalcap"], _ = Cider().compute_score(refs, theirs_in)
        times["pycocoevalcap"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in times:
        print(f"{k:>14}: CIDEr {scores[k]:.6f}, median {med[k]:.2f}s over {rounds} rounds "
              f"({n / med[k]:.0f} images/s)")
    print(f"ratio (pycocoevalcap time / mmdata time): {med['pycocoevalcap'] / med['mmdata']:.2f}x; "
          f"|difference| {abs(scores['mmdata'] - scores['pycocoevalcap']):.2e}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
