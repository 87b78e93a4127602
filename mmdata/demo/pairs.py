"""Image-caption pairs with labelled noise: ``pairs/`` of a demo corpus.

Each sample gets at most one noise label (the label sets are disjoint), so every filter's
precision and recall can be read straight off ``truth.parquet``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmdata.demo import images as im
from mmdata.demo.urls import IMAGE_HOSTS, ROBOTS_DISALLOW, expect_ok, fault_url, site_path

MIN_SIDE = 200
MAX_ASPECT = 3.0


@dataclass(frozen=True)
class NoiseRates:
    """Share of samples carrying each label; the rest are clean."""

    mismatched: float = 0.08
    uninformative: float = 0.05
    foreign: float = 0.05
    dup: float = 0.03
    near_dup: float = 0.05
    too_small: float = 0.04
    extreme_aspect: float = 0.03
    fault: float = 0.05
    exif_rotated: float = 0.03
    robots: float = 0.02


# Faults planted in the corpus, cycled in this order. Slow modes stay short so `make demo` stays quick.
CORPUS_FAULTS = (
    ("404", {}),
    ("500", {}),
    ("429", {"retry_after": 1}),
    ("503", {"after": 1}),
    ("truncated", {}),
    ("not_image", {}),
    ("redirect", {"hops": 2}),
    ("redirect_loop", {}),
    ("bomb", {}),
    ("oversized", {"mb": 16}),
    ("noai", {}),
    ("wrong_type", {}),
    ("429", {}),
    ("slow_first_byte", {"delay": 0.5}),
)
NEAR_DUP_KINDS = ("reencode", "resize", "crop")
_FORMATS = ("JPEG", "PNG", "WEBP")
_FORMAT_P = (0.7, 0.18, 0.12)


def _labels(n: int, rates: NoiseRates, rng: np.random.Generator) -> list[str]:
    counts = {k: round(v * n) for k, v in dataclasses.asdict(rates).items()}
    if sum(counts.values()) > n:
        raise ValueError(f"noise rates add up to more than all {n} samples")
    labels = [k for k, c in counts.items() for _ in range(c)]
    labels += ["clean"] * (n - len(labels))
    return [labels[i] for i in rng.permutation(n)]


def _size(label: str, rng: np.random.Generator) -> tuple[int, int]:
    if label == "too_small":
        return int(rng.integers(64, MIN_SIDE - 10)), int(rng.integers(64, MIN_SIDE - 10))
    if label == "extreme_aspect":
        long, ratio = int(rng.integers(800, 1601)), rng.uniform(3.3, 4.0)
        size = (long, int(long / ratio))
        return size if rng.random() < 0.7 else size[::-1]
    top = 2000 if rng.random() < 0.03 else 800
    w = int(rng.integers(MIN_SIDE, top + 1))
    h = int(np.clip(w / rng.uniform(0.6, 1.8), MIN_SIDE, top))
    return w, h


def _near_dup(job: im.ImageJob, kind: str, key: tuple, rng: np.random.Generator) -> im.ImageJob:
    w, h = job.width, job.height
    if kind == "reencode":
        fmt = "JPEG" if job.fmt != "JPEG" else str(rng.choice(["JPEG", "WEBP"]))
        return im.ImageJob(
            key, job.concept, w, h, fmt, quality=int(rng.integers(55, 75)), edit=kind, base=job
        )
    if kind == "resize":
        # Shrink, but not below MIN_SIDE, so the near-dup is not also a too-small image.
        scale = max(rng.uniform(0.6, 0.85), MIN_SIDE / min(w, h))
        if scale >= 0.95:
            scale = rng.uniform(1.2, 1.4)
        size = (round(w * scale), round(h * scale))
        return im.ImageJob(key, job.concept, *size, fmt=job.fmt, edit=kind, base=job)
    dx, dy = (int(d * rng.uniform(0.015, 0.04)) for d in (w, h))
    box = (dx, dy, w - int(dx * rng.uniform(0.5, 1.5)), h - int(dy * rng.uniform(0.5, 1.5)))
    return im.ImageJob(
        key, job.concept, box[2] - box[0], box[3] - box[1], job.fmt, edit=kind, base=job, box=box
    )


def build_pairs(out: Path, n: int, seed: int, rates: NoiseRates | None = None, workers: int = 1) -> dict:
    """Write ``out/images/``, ``urls.*`` and ``truth.parquet``; returns counts for the manifest."""
    rng = im.seeded_rng(seed, "pairs")
    labels = _labels(n, rates or NoiseRates(), rng)
    clean = [i for i, lab in enumerate(labels) if lab == "clean"]
    if not clean and any(lab in ("dup", "near_dup") for lab in labels):
        raise ValueError("duplicates need at least one clean sample to copy")
    robots_host = next(iter(ROBOTS_DISALLOW))

    jobs: dict[int, im.ImageJob] = {}
    rows = []
    n_faults = n_near = 0
    # Originals first, so duplicates can point at their jobs.
    for i in sorted(range(n), key=lambda i: labels[i] in ("dup", "near_dup")):
        label = labels[i]
        r = im.seeded_rng(seed, "pair", i)
        row = {
            "sample_id": i,
            "label": label,
            "fault": None,
            "fault_params": None,
            "dup_of": None,
            "near_dup_of": None,
            "near_dup_kind": None,
        }
        if label in ("dup", "near_dup"):
            orig = int(r.choice(clean))
            if label == "dup":
                job, row["dup_of"] = jobs[orig], orig
            else:
                kind = NEAR_DUP_KINDS[n_near % len(NEAR_DUP_KINDS)]
                n_near += 1
                job = _near_dup(jobs[orig], kind, (seed, "pair", i), r)
                row["near_dup_of"], row["near_dup_kind"] = orig, kind
        else:
            w, h = _size(label, r)
            fmt = str(r.choice(_FORMATS, p=_FORMAT_P))
            orientation = None
            if label == "exif_rotated":
                fmt, orientation = "JPEG", int(r.choice([3, 6, 8]))
            job = im.ImageJob(
                (seed, "pair", i), im.random_concept(r), w, h, fmt, int(r.integers(70, 90)), orientation
            )
        jobs[i] = job
        concept = job.concept
        ext = im.FORMAT_EXT[job.fmt]
        host = IMAGE_HOSTS[i % len(IMAGE_HOSTS)]
        name = f"{i:06d}.{ext}"
        if label == "fault":
            mode, params = CORPUS_FAULTS[n_faults % len(CORPUS_FAULTS)]
            n_faults += 1
            row.update(fault=mode, fault_params=params or None)
            url = fault_url(host, mode, name, **params)
        elif label == "robots":
            url = f"http://{robots_host}{ROBOTS_DISALLOW[robots_host]}{name}"
        else:
            query = "?w=640" if r.random() < 0.1 else ""
            url = f"http://{host}/photos/{i // 100:04d}/{name}{query}"
        if label == "mismatched":
            other = im.random_concept(r)
            while not im.differs(other, concept):
                other = im.random_concept(r)
            caption, lang = im.english_caption(other, r), "en"
        elif label == "uninformative":
            caption, lang = im.uninformative_caption(r), None
        elif label == "foreign":
            lang = im.FOREIGN_LANGS[i % len(im.FOREIGN_LANGS)]
            caption = im.foreign_caption(concept, lang, r)
        else:
            caption, lang = im.english_caption(concept, r), "en"
        ok = expect_ok(row["fault"], row["fault_params"])
        w, h = job.width, job.height  # upright size: EXIF-rotated files store the pixels turned
        row.update(
            url=url,
            caption=caption,
            true_caption=im.true_caption(concept),
            lang=lang,
            mismatched=label == "mismatched",
            uninformative=label == "uninformative",
            too_small=min(w, h) < MIN_SIDE,
            extreme_aspect=max(w, h) / min(w, h) > MAX_ASPECT,
            exif_rotated=job.orientation is not None,
            robots_disallowed=label == "robots",
            expect_ok=ok,
            width=w,
            height=h,
            format=job.fmt,
            file=f"images/{site_path(url)}" if ok else None,
            **dataclasses.asdict(concept),
        )
        rows.append(row)

    rows.sort(key=lambda r: r["sample_id"])
    served = [r for r in rows if r["file"]]
    blobs = im.make_images([jobs[r["sample_id"]] for r in served], workers)
    for r, blob in zip(served, blobs):
        path = out / r["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)

    truth = pd.DataFrame(rows)
    truth["fault_params"] = truth["fault_params"].map(
        lambda p: None if p is None else json.dumps(p, sort_keys=True)
    )
    for col in ("dup_of", "near_dup_of"):
        truth[col] = truth[col].astype("Int64")
    truth = truth[_TRUTH_COLUMNS]
    truth.to_parquet(out / "truth.parquet", index=False)
    urls = truth[["url", "caption", "sample_id"]].assign(
        source=[f"crawl-{i % 3}" for i in truth["sample_id"]]
    )
    urls.to_parquet(out / "urls.parquet", index=False)
    urls.to_csv(out / "urls.csv", index=False)
    urls.to_json(out / "urls.jsonl", orient="records", lines=True, force_ascii=False)
    (out / "urls.txt").write_text("".join(u + "\n" for u in urls["url"]))
    return {
        "samples": n,
        "served_files": len(served),
        "labels": {k: int(v) for k, v in truth["label"].value_counts().sort_index().items()},
        "faults": {k: int(v) for k, v in truth["fault"].value_counts().sort_index().items()},
    }


_TRUTH_COLUMNS = [
    "sample_id",
    "url",
    "caption",
    "true_caption",
    "label",
    "fault",
    "fault_params",
    "expect_ok",
    "mismatched",
    "uninformative",
    "lang",
    "dup_of",
    "near_dup_of",
    "near_dup_kind",
    "too_small",
    "extreme_aspect",
    "exif_rotated",
    "robots_disallowed",
    "width",
    "height",
    "format",
    "file",
    "shape",
    "colour",
    "count",
    "background",
    "texture",
    "word",
]
