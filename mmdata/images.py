"""Verify, decode, orient, resize and re-encode one downloaded image.

`process(body, cfg) -> ImageResult` never raises for a bad image: the result carries a status.

Quality, then speed (measured in docs/download.md, `benchmarks/bench_resize.py`): a JPEG much
larger than the target decodes at 1/2, 1/4 or 1/8 scale (DCT scaling inside libjpeg-turbo), to the
smallest such size still 2x the target (1.5x before Pillow's sharper filters), so a 2000 px photo
shrunk to 256 px never exists at full size in memory; an anti-aliasing filter does the rest. By
default (`downscale_filter: area`) a colour JPEG stored as jpg goes through OpenCV alone: reduced
decode, an exact area average, the EXIF turn on the small image, encode, in BGR with no copy between
libraries (enlarging too, with OpenCV's kernel of `upscale_filter`'s name); every other image (PNG,
WebP, grey, CMYK, alpha, Pillow's shrinking filters, png or webp output) goes through Pillow.
Stored without chroma subsampling at quality >= 90 (4:4:4, as libvips does). Against a Lanczos
resize of the full decode this is above img2dataset's quality (OpenCV full decode + area, 4:2:0)
for three quarters of its CPU on web-size photos and the same on small images. What made mmdata's
images worse before (28 dB against img2dataset's 35): decoding down to just above the target (DCT scaling is blockwise,
so what it leaves must be filtered again over a few pixels), and Pillow's BOX filter, which is no
area average at fractional factors (each source pixel counts whole or not at all).

Statuses:
  success                   data holds the encoded image
  failed_to_decode          not an image Pillow can read, truncated, or over the bomb limit
  failed_to_resize          decoding, resizing or encoding failed midway
  skipped_too_small         shorter original side < min_side
  skipped_too_large         original area > max_image_area
  skipped_aspect_ratio      long/short side > max_aspect_ratio
Sizes: original_* are the upright size (EXIF orientation applied), width/height the output's.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

from mmdata.config import ImageConfig

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Pillow's filters; "area" is OpenCV's INTER_AREA, an exact area average (Pillow's BOX is not one)
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
# reduced JPEG decoding stops at this multiple of the target size (see above); an area average is
# a weaker low-pass than bicubic over what DCT scaling leaves, so it needs more room to stay
# above img2dataset's quality (measured in docs/download.md)
DRAFT_HEADROOM = {"area": 2.0, "bilinear": 1.5, "bicubic": 1.5, "lanczos": 1.5}
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_CV_SAMPLING = {"4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}
# enlarging needs no anti-aliasing, so these match Pillow's filters of the same names (lanczos: 4 lobes, not 3)
_CV_FILTERS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
               "lanczos": cv2.INTER_LANCZOS4}
_CV_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
               8: cv2.IMREAD_REDUCED_COLOR_8}
# one download worker per core is the engine's shape: OpenCV's own thread pool would oversubscribe it
cv2.setNumThreads(1)
# EXIF orientation -> the same turn as Pillow's exif_transpose, on an (h, w, c) array
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
# Pillow imports its ~40 format plugins at the first image that is not JPEG/PNG/GIF/BMP/PPM, mid-
# shard; done at import, forked workers inherit them.
Image.init()
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_SKIP = {"MakerNote", "UserComment", "PrintImageMatching", "ComponentsConfiguration"}


@dataclass
class ImageResult:
    status: str
    error_message: str | None = None
    data: bytes | None = None
    ext: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None
    exif: str | None = None
    format: str | None = None  # of the original: JPEG, PNG, WEBP, ...

    @property
    def ok(self) -> bool:
        return self.status == "success"


def exif_json(img: Image.Image) -> str | None:
    """Readable EXIF tags as a JSON object string (img2dataset keeps EXIF as text too)."""
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not lose the image
        return None
    out = {}
    for tag, value in exif.items():
        name = ExifTags.TAGS.get(tag, str(tag))
        if name in _EXIF_SKIP or isinstance(value, bytes):
            continue
        out[name] = str(value)[:200]
    return json.dumps(out, sort_keys=True, ensure_ascii=False) if out else None


def target_size(w: int, h: int, cfg: ImageConfig) -> tuple[int, int]:
    """Size the whole image is scaled to before any crop or border."""
    side = cfg.image_size
    if cfg.resize_mode in ("keep_ratio", "center_crop"):
        scale = side / min(w, h)
    elif cfg.resize_mode in ("keep_ratio_largest", "border"):
        scale = side / max(w, h)
    else:
        return w, h
    if cfg.resize_only_if_bigger and scale >= 1:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def _rgb(img: Image.Image, keep_alpha: bool) -> Image.Image:
    if img.mode in ("RGB", "L") or (keep_alpha and img.mode in ("RGBA", "LA")):
        return img
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        if keep_alpha:
            return img
        flat = Image.new("RGB", img.size, (255, 255, 255))  # transparent areas become white, not black
        flat.paste(img, mask=img.getchannel("A"))
        return flat
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# reading a stored image back: one preparation for every consumer (CLIP scoring, the sampler),
# so what is scored is what is trained on


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB; alpha (or a palette's transparent colour) flattened on white, as transformers'
    `convert_rgb` does: CLIP scoring must equal the Hugging Face processor bit for bit."""
    if img.mode == "RGB" and img.info.get("transparency") is None:
        return img  # convert() would copy
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def open_rgb(data: bytes, draft: int | None = None) -> Image.Image:
    """Stored image bytes -> the upright RGB image every consumer starts from: EXIF orientation
    applied (what a viewer, and the caption's writer, saw), alpha flattened on white.

    `draft`: a JPEG decodes at the smallest 1/2, 1/4 or 1/8 scale whose sides stay >= `draft` px
    (DCT scaling inside libjpeg): 1.5-2x cheaper on large images, but not bit-equal to a full
    decode, so the trainer's path uses it and CLIP scoring (which must equal the processor) does not.
    """
    img = Image.open(io.BytesIO(data))
    if draft:
        img.draft("RGB", (draft, draft))  # a square target: the same scale whatever the orientation
    img.load()
    return upright_rgb(img, in_place=True)  # in place: no copy when there is nothing to turn


def upright_rgb(img: Image.Image, in_place: bool = False) -> Image.Image:
    """A decoded image -> what `open_rgb` makes of its file: EXIF orientation applied, alpha on white."""
    if in_place:
        ImageOps.exif_transpose(img, in_place=True)
    else:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


_local = threading.local()


def _scratch():
    """This thread's in-memory file (Linux), else None. Pillow encodes without holding the GIL only
    into a real file descriptor; into BytesIO, JPEG encoding holds it, and two threads encoding
    ran slower than one (measured: 0.84x), stalling the event loop that feeds them."""
    if not hasattr(_local, "file"):
        try:
            _local.file = os.fdopen(os.memfd_create("mmdata-encode", os.MFD_CLOEXEC), "w+b")
        except (AttributeError, OSError):
            _local.file = None
    return _local.file


def _subsampling(cfg: ImageConfig) -> str:
    if cfg.jpeg_subsampling == "auto":
        return "4:4:4" if cfg.encode_quality >= 90 else "4:2:0"
    return cfg.jpeg_subsampling


def _encode(img: Image.Image, cfg: ImageConfig) -> bytes:
    fmt = FORMATS[cfg.encode_format]
    if fmt == "JPEG":
        opts = {"quality": cfg.encode_quality, "subsampling": SUBSAMPLING[_subsampling(cfg)]}
    elif fmt == "PNG":
        opts = {"compress_level": cfg.png_compression}
    else:
        opts = {"quality": cfg.encode_quality, "method": 4}
    f = _scratch()
    if f is None:
        buf = io.BytesIO()
        img.save(buf, fmt, **opts)
        return buf.getvalue()
    f.seek(0)
    f.truncate()
    img.save(f, fmt, **opts)
    f.seek(0)
    return f.read()


def _draft_size(stored: tuple[int, int], scale: float, flt: str) -> tuple[int, int]:
    """The size a reduced JPEG decode must still cover: the headroom times the target (stored orientation)."""
    room = scale * DRAFT_HEADROOM[flt]
    return math.ceil(stored[0] * room), math.ceil(stored[1] * room)


def _crop_box(w: int, h: int, side: int) -> tuple[int, int, int, int]:
    cw, ch = min(w, side), min(h, side)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def _jpeg_opencv(body: bytes, stored: tuple[int, int], orientation: int, size: tuple[int, int], flt: str,
                 cfg: ImageConfig) -> tuple[bytes, tuple[int, int]] | None:
    """A colour JPEG resized into a jpg with OpenCV alone: the reduced decode Pillow's draft would
    choose, `flt` (area when shrinking), the EXIF turn on the small image, crop or border, encode. Channels stay BGR from decode to encode, with no copy
    between libraries. None: OpenCV could not decode it."""
    sw, sh = stored
    tw, th = size[::-1] if orientation in _TRANSPOSED else size
    need_w, need_h = _draft_size(stored, tw / sw, "area")
    fit = min(sw // need_w, sh // need_h)  # Pillow's rule in JpegImageFile.draft
    k = next((f for f in (8, 4, 2) if fit >= f), 1)
    a = cv2.imdecode(np.frombuffer(body, np.uint8), _CV_REDUCED[k] | cv2.IMREAD_IGNORE_ORIENTATION)
    if a is None or a.shape != (-(-sh // k), -(-sw // k), 3):
        return None
    a = cv2.resize(a, (tw, th), interpolation=_CV_FILTERS[flt])
    if orientation in _ORIENT:
        a = _ORIENT[orientation](a)
    h, w = a.shape[:2]
    side = cfg.image_size
    if cfg.resize_mode == "center_crop":
        left, top, right, bottom = _crop_box(w, h, side)
        a = a[top:bottom, left:right]
    elif cfg.resize_mode == "border" and (w, h) != (side, side):
        canvas = np.empty((side, side, 3), np.uint8)
        canvas[:] = cfg.border_color[::-1]
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = a
        a = canvas
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(a), [
        cv2.IMWRITE_JPEG_QUALITY, cfg.encode_quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _CV_SAMPLING[_subsampling(cfg)]])
    if not ok:
        raise ValueError("OpenCV could not encode the image")
    return buf.tobytes(), (a.shape[1], a.shape[0])


def process(body: bytes, cfg: ImageConfig | None = None) -> ImageResult:
    cfg = cfg or ImageConfig()
    res = ImageResult("failed_to_decode", sha256=hashlib.sha256(body).hexdigest())
    if Image.MAX_IMAGE_PIXELS is not None and cfg.max_pixels > Image.MAX_IMAGE_PIXELS:
        # Pillow refuses at twice its own limit before ours is asked; ours is checked below
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))  # reads the header only
        res.format = img.format
        stored_w, stored_h = img.size
        if stored_w * stored_h > cfg.max_pixels:
            res.error_message = f"decompression bomb: {stored_w}x{stored_h} > max_pixels {cfg.max_pixels}"
            return res
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1) if img.format in ("JPEG", "WEBP", "PNG", "TIFF") else 1
    except Image.DecompressionBombError as e:
        res.error_message = f"decompression bomb: {e}"
        return res
    except Image.UnidentifiedImageError:
        res.error_message = "not an image: unidentified format"
        return res
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises, it is a bad image
        res.error_message = f"not an image: {type(e).__name__}: {e}"[:300]
        return res
    w, h = (stored_h, stored_w) if orientation in _TRANSPOSED else (stored_w, stored_h)
    res.original_width, res.original_height = w, h
    if min(w, h) < cfg.min_side:
        res.status, res.error_message = "skipped_too_small", f"{w}x{h}: shorter side < min_side {cfg.min_side}"
        return res
    if cfg.max_image_area is not None and w * h > cfg.max_image_area:
        res.status, res.error_message = "skipped_too_large", f"{w}x{h}: area > max_image_area {cfg.max_image_area:g}"
        return res
    if cfg.max_aspect_ratio is not None and max(w, h) / min(w, h) > cfg.max_aspect_ratio:
        res.status, res.error_message = "skipped_aspect_ratio", f"{w}x{h}: aspect > max_aspect_ratio {cfg.max_aspect_ratio:g}"
        return res
    res.exif = exif_json(img)
    tw, th = target_size(w, h, cfg)
    if (cfg.resize_mode == "no" and cfg.skip_reencode and orientation == 1
            and img.format == FORMATS[cfg.encode_format]):
        res.status, res.data, res.ext, res.width, res.height = "success", body, cfg.encode_format, w, h
        return res
    shrink = tw * th < w * h
    if ((tw, th) != (w, h) and (cfg.downscale_filter == "area" or not shrink) and cfg.encode_format == "jpg"
            and img.format == "JPEG" and img.mode == "RGB" and body.endswith(b"\xff\xd9")):
        # the common case, kept off Pillow: 1.2-1.6x less CPU than its bicubic (docs/download.md). A body
        # without its end marker (truncated?) goes to Pillow, which refuses what libjpeg would pad with grey.
        try:
            out = _jpeg_opencv(body, (stored_w, stored_h), orientation, (tw, th),
                               "area" if shrink else cfg.upscale_filter, cfg)
        except Exception as e:  # noqa: BLE001
            res.status, res.error_message = "failed_to_resize", f"{type(e).__name__}: {e}"[:300]
            return res
        if out is not None:
            res.status, res.ext, res.data, (res.width, res.height) = "success", "jpg", *out
            return res
        # OpenCV could not decode it: Pillow's decode below says why
    try:
        if img.format == "JPEG" and (tw, th) != (w, h):
            img.draft("RGB" if img.mode in ("RGB", "YCbCr") else None, _draft_size((stored_w, stored_h), tw / w, cfg.downscale_filter))
        img.load()
    except Exception as e:  # noqa: BLE001
        res.error_message = f"decode: {type(e).__name__}: {e}"[:300]
        return res
    res.status = "failed_to_resize"
    try:
        if orientation != 1:  # exif_transpose copies the image even when there is nothing to turn
            img = ImageOps.exif_transpose(img)
        img = _rgb(img, keep_alpha=cfg.encode_format != "jpg")
        if img.size != (tw, th):
            flt = cfg.downscale_filter if shrink else cfg.upscale_filter
            if flt == "area":
                img = Image.fromarray(cv2.resize(np.asarray(img), (tw, th), interpolation=cv2.INTER_AREA))
            else:  # large shrinks first average whole blocks (Image.reduce, exact), then filter what is left
                img = img.resize((tw, th), FILTERS[flt], reducing_gap=3.0)
        side = cfg.image_size
        if cfg.resize_mode == "center_crop" and (tw, th) != (min(tw, side), min(th, side)):
            img = img.crop(_crop_box(tw, th, side))
        elif cfg.resize_mode == "border" and (tw, th) != (side, side) and not (cfg.resize_only_if_bigger and max(w, h) <= side):
            fill = cfg.border_color if img.mode in ("RGB", "RGBA") else 255
            canvas = Image.new(img.mode, (side, side), fill if img.mode != "RGBA" else (*fill, 255))
            canvas.paste(img, ((side - tw) // 2, (side - th) // 2))
            img = canvas
        res.data = _encode(img, cfg)
    except Exception as e:  # noqa: BLE001
        res.error_message = f"{type(e).__name__}: {e}"[:300]
        return res
    res.status, res.ext = "success", cfg.encode_format
    res.width, res.height = img.size
    return res
