"""Image libraries for download's decode + resize + encode: CPU per image and quality.

Every path turns the same JPEGs into 256 px keep_ratio JPEGs at quality 95 (img2dataset's output),
and each stored image is compared (PSNR, dB, over RGB) against one reference: the full decode,
resized with Lanczos in floating point, never encoded. CPU is `time.process_time` per image in one
process (no threads), best of `--rounds` rounds over the whole set.

Paths: mmdata's current `images.process` (and with Pillow's filters); img2dataset's own (OpenCV full decode + INTER_AREA +
imencode); Pillow with reduced-scale decoding (draft) and different filters; OpenCV reduced
decoding; simplejpeg (libjpeg-turbo) scaled decoding, also at M/8 scales; libvips' shrink-on-load
thumbnail and its lanczos3 resize after OpenCV's reduced decode.

Run: `.venv/bin/python benchmarks/bench_resize.py [--photos N] [--demo N]`.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SIDE, QUALITY = 256, 95


def target(w: int, h: int) -> tuple[int, int]:
    s = SIDE / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def reference(body: bytes) -> np.ndarray:
    # upright, as a correct downloader stores it (the demo corpus has EXIF-rotated JPEGs)
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(body))).convert("RGB")
    size = target(*img.size)
    # Lanczos on float planes: no rounding before the comparison
    planes = [Image.fromarray(np.asarray(img, np.float32)[..., c], "F").resize(size, Image.Resampling.LANCZOS)
              for c in range(3)]
    return np.stack([np.asarray(p) for p in planes], -1)


def psnr(stored: bytes, ref: np.ndarray) -> float:
    got = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), np.float32)
    if got.shape != ref.shape:  # stored sideways: the path ignored the EXIF orientation
        return math.nan
    mse = float(np.mean((got - np.clip(ref, 0, 255)) ** 2))
    return 10 * math.log10(255**2 / mse) if mse else 99.0


# ---------------------------------------------------------------------------------------------
# paths: body -> stored JPEG bytes


def mmdata_path(cfg):
    from mmdata.images import process

    return lambda body: process(body, cfg).data


def pil_encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def pil(draft_factor: float | None, flt, reducing_gap: float | None = None):
    """Pillow: draft to at least `draft_factor` x the target (None: full decode), then `flt`."""

    def run(body: bytes) -> bytes:
        img = Image.open(io.BytesIO(body))
        tw, th = target(*img.size)
        if draft_factor:
            img.draft("RGB", (math.ceil(tw * draft_factor), math.ceil(th * draft_factor)))
        img = ImageOps.exif_transpose(img).convert("RGB")
        tw, th = target(*img.size)
        return pil_encode(img.resize((tw, th), flt, reducing_gap=reducing_gap))

    return run


def cv2_reduced(body: bytes, factor: float) -> tuple[np.ndarray, tuple[int, int]]:
    """OpenCV's reduced decode (1/2, 1/4, 1/8) to >= factor x the target; the image and the target."""
    import cv2

    w, h = Image.open(io.BytesIO(body)).size
    tw, th = target(w, h)
    k = max((f for f in (1, 2, 4, 8) if w // f >= tw * factor and h // f >= th * factor), default=1)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[k]
    return cv2.imdecode(np.frombuffer(body, np.uint8), flag), (tw, th)


def cv2_encode_444(arr: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1].tobytes()


def cv2_path(reduced: bool):
    import cv2

    def run(body: bytes) -> bytes:
        if reduced:
            img, (tw, th) = cv2_reduced(body, 1)
        else:
            img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            tw, th = target(img.shape[1], img.shape[0])
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()

    return run


def simplejpeg_path(factor: int, flt):
    def run(body: bytes) -> bytes:
        import simplejpeg  # not installed: the path is reported as such

        h, w, _, _ = simplejpeg.decode_jpeg_header(body)
        tw, th = target(w, h)
        arr = simplejpeg.decode_jpeg(body, colorspace="RGB", min_width=tw * factor, min_height=th * factor)
        img = Image.fromarray(arr).resize((tw, th), flt)
        return simplejpeg.encode_jpeg(np.asarray(img), quality=QUALITY, colorsubsampling="420")

    return run


def simplejpeg_area(factor: float):
    """libjpeg-turbo's finer scales (any M/8, not just 1/2^k) to >= factor x the target, then an area average."""

    def run(body: bytes) -> bytes:
        import cv2
        import simplejpeg

        h, w, _, _ = simplejpeg.decode_jpeg_header(body)
        tw, th = target(w, h)
        arr = simplejpeg.decode_jpeg(body, colorspace="BGR", min_width=math.ceil(tw * factor),
                                     min_height=math.ceil(th * factor))
        return cv2_encode_444(cv2.resize(arr, (tw, th), interpolation=cv2.INTER_AREA))

    return run


def cv2_vips_resize(factor: float):
    """OpenCV's reduced decode to >= factor x the target, libvips' lanczos3 for the rest, OpenCV's encode."""

    def run(body: bytes) -> bytes:
        import pyvips

        a, (tw, th) = cv2_reduced(body, factor)
        v = pyvips.Image.new_from_memory(a.data, a.shape[1], a.shape[0], 3, "uchar")
        return cv2_encode_444(v.resize(tw / a.shape[1], vscale=th / a.shape[0], kernel="lanczos3").numpy())

    return run


def vips_path():
    def run(body: bytes) -> bytes:
        import pyvips

        head = pyvips.Image.new_from_buffer(body, "", access="sequential")
        tw, th = target(head.width, head.height)
        img = pyvips.Image.thumbnail_buffer(body, tw, height=th, size="force")
        return img.jpegsave_buffer(Q=QUALITY)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--demo", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import tempfile

    from bench_download import photo_corpus

    from mmdata.config import ImageConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-resize-"))
    truth = photo_corpus(tmp, args.photos)
    sets = {"web photos": [(tmp / "pairs" / f).read_bytes() for f in truth["file"]]}
    if args.demo:
        from mmdata.demo.corpus import build
        from mmdata.demo.pairs import NoiseRates

        build(tmp / "demo", n_pairs=args.demo, n_docs=1, seed=0, rates=NoiseRates(fault=0, robots=0), workers=1)
        files = sorted((tmp / "demo" / "pairs" / "images").rglob("*.jpg"))
        sets["demo corpus jpgs"] = [f.read_bytes() for f in files]

    L, B = Image.Resampling.LANCZOS, Image.Resampling.BOX
    paths = {
        "mmdata (images.process: OpenCV area)": mmdata_path(ImageConfig(image_size=SIDE, resize_mode="keep_ratio")),
        "mmdata, 4:2:0": mmdata_path(ImageConfig(image_size=SIDE, resize_mode="keep_ratio", jpeg_subsampling="4:2:0")),
        "mmdata, Pillow bicubic (before)": mmdata_path(ImageConfig(image_size=SIDE, resize_mode="keep_ratio",
                                                                   downscale_filter="bicubic")),
        "mmdata, Pillow bilinear": mmdata_path(ImageConfig(image_size=SIDE, resize_mode="keep_ratio",
                                                           downscale_filter="bilinear")),
        "img2dataset: cv2 full decode + INTER_AREA": cv2_path(False),
        "cv2 reduced decode >=1x + INTER_AREA": cv2_path(True),
        "Pillow full decode + lanczos": pil(None, L, None),
        "Pillow full decode + box": pil(None, B),
        "Pillow draft >=1x + box (mmdata before)": pil(1, B),
        "Pillow draft >=2x + box": pil(2, B),
        "Pillow draft >=1x + lanczos": pil(1, L),
        "Pillow draft >=1x + bicubic": pil(1, Image.Resampling.BICUBIC),
        "Pillow draft >=1.5x + lanczos": pil(1.5, L),
        "Pillow draft >=1.5x + bicubic": pil(1.5, Image.Resampling.BICUBIC),
        "Pillow draft >=2x + lanczos": pil(2, L),
        "Pillow draft >=2x + bicubic": pil(2, Image.Resampling.BICUBIC),
        "Pillow draft >=2x + bilinear": pil(2, Image.Resampling.BILINEAR),
        "Pillow draft >=2x + hamming": pil(2, Image.Resampling.HAMMING),
        "simplejpeg scaled >=2x + Pillow box": simplejpeg_path(2, B),
        "simplejpeg scaled >=2x + Pillow lanczos": simplejpeg_path(2, L),
        "simplejpeg M/8 scale >=2x + INTER_AREA, 4:4:4": simplejpeg_area(2),
        "cv2 reduced >=1.5x + libvips lanczos3, 4:4:4": cv2_vips_resize(1.5),
        "libvips thumbnail (shrink-on-load)": vips_path(),
    }
    for name, bodies in sets.items():
        refs = [reference(b) for b in bodies]
        print(f"\n== {name}: {len(bodies)} JPEGs, {np.mean([len(b) for b in bodies]) / 1024:.0f} KiB mean; "
              f"256 px keep_ratio, jpg q{QUALITY}; PSNR vs Lanczos from the full decode")
        print(f"{'path':45s} {'ms/img':>7s} {'PSNR dB':>8s} {'min':>6s} {'KiB':>6s}")
        for label, fn in paths.items():
            try:
                outs = [fn(b) for b in bodies]
            except ImportError as e:
                print(f"{label:45s} not installed ({e})")
                continue
            best = math.inf
            for _ in range(args.rounds):
                t0 = time.process_time()
                for b in bodies:
                    fn(b)
                best = min(best, time.process_time() - t0)
            q = np.array([psnr(o, r) for o, r in zip(outs, refs)])
            sideways = int(np.isnan(q).sum())
            print(f"{label:45s} {1000 * best / len(bodies):7.2f} {np.nanmean(q):8.2f} {np.nanmin(q):6.2f} "
                  f"{np.mean([len(o) for o in outs]) / 1024:6.1f}" + (f"  ({sideways} stored sideways)" if sideways else ""),
                  flush=True)


if __name__ == "__main__":
    main()
