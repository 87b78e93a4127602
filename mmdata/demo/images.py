"""Synthetic images with known content, and captions that describe them.

A :class:`Concept` (shape x colour x count x background colour x texture, sometimes a word on a
sign) is drawn into an image and phrased as English (varied templates), German, French, Spanish
or Italian captions. Concepts differ in attributes a tiny CLIP can see, so matching caption and
image is learnable in a minute on CPU.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 210),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (135, 55, 175),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "ring", "cross", "diamond")
TEXTURES = ("plain", "striped", "dotted", "checkered", "gradient", "grainy")
WORDS = ("OPEN", "SALE", "CAFE", "EXIT", "HOTEL", "STOP", "BOOKS", "PIZZA", "TAXI", "MUSEUM")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Concept:
    shape: str
    colour: str
    count: int
    background: str
    texture: str
    word: str | None = None


def random_concept(rng: np.random.Generator) -> Concept:
    colour, background = rng.choice(list(COLOURS), size=2, replace=False)
    word = str(rng.choice(WORDS)) if rng.random() < 0.15 else None
    return Concept(
        shape=str(rng.choice(SHAPES)),
        colour=str(colour),
        count=int(rng.choice([1, 1, 2, 3])),
        background=str(background),
        texture=str(rng.choice(TEXTURES)),
        word=word,
    )


def differs(a: Concept, b: Concept) -> bool:
    """Visibly different: a caption of ``b`` is wrong for an image of ``a``."""
    return a.shape != b.shape or a.colour != b.colour


# --- drawing -------------------------------------------------------------------------------------


def _background(c: Concept, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(COLOURS[c.background], dtype=np.float32)
    # Texture strokes contrast with the background so textures are visible on white and black.
    other = np.where(base > 128, base * 0.6, base * 0.6 + 100).astype(np.uint8)
    period = max(8, min(w, h) // int(rng.integers(6, 14)))
    # Every pattern repeats every 2 periods: draw one tile and copy it, far cheaper than per-pixel maths.
    yy, xx = np.ogrid[0 : 2 * period, 0 : 2 * period]
    if c.texture == "striped":
        mask = ((xx + yy) // period) % 2 == 0
    elif c.texture == "checkered":
        mask = ((xx // period) + (yy // period)) % 2 == 0
    elif c.texture == "dotted":
        cx, cy = xx % period - period / 2, yy % period - period / 2
        mask = cx * cx + cy * cy < (period / 4) ** 2
    else:
        mask = np.zeros((1, 1), dtype=bool)
    tile = np.where(mask[..., None], other, base.astype(np.uint8))
    img = np.tile(tile, (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1))[:h, :w]
    if c.texture == "gradient":
        shade = np.linspace(0.55, 1.0, h, dtype=np.float32)[:, None, None]
        img = (img * shade).astype(np.uint8)
    elif c.texture == "grainy":
        # Coarse grain (4 px cells): visible, yet it does not blow up PNG sizes like per-pixel noise.
        cells = 20 * rng.standard_normal((h // 4 + 1, w // 4 + 1, 1), dtype=np.float32)
        noise = cells.repeat(4, axis=0).repeat(4, axis=1)[:h, :w]
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float = 0.0) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = np.deg2rad([-90, 30, 150]), [r] * 3
    elif shape == "square":
        angles, radii = np.deg2rad([-45, 45, 135, 225]), [r] * 4
    elif shape == "diamond":
        angles, radii = np.deg2rad([-90, 0, 90, 180]), [r, r * 0.7, r, r * 0.7]
    elif shape == "hexagon":
        angles, radii = np.deg2rad(np.arange(0, 360, 60)), [r] * 6
    elif shape == "star":
        angles, radii = np.deg2rad(np.arange(-90, 270, 36)), [r, r * 0.45] * 5
    else:
        raise ValueError(shape)
    return [(cx + rr * np.cos(a + turn), cy + rr * np.sin(a + turn)) for a, rr in zip(angles, radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, turn: float = 0.0) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.3)))
    elif shape == "cross":
        t = r * 0.35
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, turn), fill=fill)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render(c: Concept, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    img = Image.fromarray(_background(c, width, height, rng), "RGB")
    draw = ImageDraw.Draw(img)
    sign_h = height // 4 if c.word else 0
    area_h = height - sign_h
    slot = width / c.count
    # Each picture gets its own scale, placement and a slight turn, so two pictures of the same
    # concept are different images (as two photos of red circles are), not near-duplicates.
    r = rng.uniform(0.24, 0.4) * min(slot, area_h)
    turn = float(np.deg2rad(rng.uniform(-12, 12)))
    for i in range(c.count):
        cx = slot * (i + 0.5) + rng.uniform(-1, 1) * max(0.0, slot / 2 - r)
        cy = area_h / 2 + rng.uniform(-1, 1) * max(0.0, area_h / 2 - r)
        _draw_shape(draw, c.shape, cx, cy, r, COLOURS[c.colour], turn)
    if c.word:
        top = area_h + sign_h // 8
        draw.rectangle([width * 0.08, top, width * 0.92, height - sign_h // 8], fill=(250, 250, 240))
        font = _font(max(8, min(int(sign_h * 0.55), int(width * 0.8 / max(len(c.word), 1) * 1.6))))
        draw.text(
            (width / 2, (top + height - sign_h // 8) / 2), c.word, fill=(10, 10, 10), font=font, anchor="mm"
        )
    return img


# --- captions ------------------------------------------------------------------------------------

_TEXTURE_EN = {
    "plain": "plain",
    "striped": "striped",
    "dotted": "polka-dot",
    "checkered": "checkered",
    "gradient": "gradient",
    "grainy": "grainy",
}


def _plural(shape: str, n: int) -> str:
    if n == 1:
        return shape
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def true_caption(c: Concept) -> str:
    """The canonical, correct English description."""
    text = f"{COUNT_WORDS[c.count]} {c.colour} {_plural(c.shape, c.count)} on a {_TEXTURE_EN[c.texture]} {c.background} background"
    if c.word:
        text += f" with a sign that says {c.word}"
    return text


_EN_TEMPLATES = (
    "{a} {colour} {shapes} on a {texture} {bg} background",
    "Photo of {n} {colour} {shapes} against a {bg} {texture} backdrop",
    "{N} {colour} {shapes} over {texture} {bg}",
    "Close-up of {n} {colour} {shapes}, {bg} {texture} background",
    "Illustration: {n} {colour} {shapes} on {bg}",
    "{A} {colour} {shapes} set against a {texture} {bg} wall",
    "Stock image - {n} {colour} {shapes} on a {bg} surface with a {texture} pattern",
    "{n} {colour} {shapes} | {bg} {texture} background | free download",
)


def english_caption(c: Concept, rng: np.random.Generator) -> str:
    """A varied, AltText-like English caption that is still correct."""
    template = str(rng.choice(_EN_TEMPLATES))
    n = COUNT_WORDS[c.count]
    a = ("an" if c.colour[0] in "aeiou" else "a") if c.count == 1 else n
    text = template.format(
        a=a,
        A=a.capitalize(),
        n=n,
        N=n.capitalize(),
        colour=c.colour,
        shapes=_plural(c.shape, c.count),
        texture=_TEXTURE_EN[c.texture],
        bg=c.background,
    )
    if c.word:
        text += str(
            rng.choice([f' with the word "{c.word}"', f", sign reading {c.word}", f" and a {c.word} sign"])
        )
    return text


# Per language: colour words, (singular-with-article, plural) shape nouns, number words, templates,
# and a sentence of ordinary prose so language identification has enough to go on.
_FOREIGN = {
    "de": {
        "colour": {
            "red": "Rot",
            "green": "Grün",
            "blue": "Blau",
            "yellow": "Gelb",
            "orange": "Orange",
            "purple": "Lila",
            "black": "Schwarz",
            "white": "Weiß",
        },
        "shape": {
            "circle": ("ein Kreis", "Kreise"),
            "square": ("ein Quadrat", "Quadrate"),
            "triangle": ("ein Dreieck", "Dreiecke"),
            "star": ("ein Stern", "Sterne"),
            "hexagon": ("ein Sechseck", "Sechsecke"),
            "ring": ("ein Ring", "Ringe"),
            "cross": ("ein Kreuz", "Kreuze"),
            "diamond": ("eine Raute", "Rauten"),
        },
        "numbers": {2: "zwei", 3: "drei"},
        "template": "Auf dem Bild {verb} {shapes} in {colour} vor einem Hintergrund in {bg} zu sehen.",
        "prose": (
            "Das Foto stammt aus unserem Archiv.",
            "Die Aufnahme wurde im Sommer gemacht.",
            "Alle Rechte liegen beim Fotografen.",
        ),
    },
    "fr": {
        "colour": {
            "red": "rouge",
            "green": "vert",
            "blue": "bleu",
            "yellow": "jaune",
            "orange": "orange",
            "purple": "violet",
            "black": "noir",
            "white": "blanc",
        },
        "shape": {
            "circle": ("un cercle", "cercles"),
            "square": ("un carré", "carrés"),
            "triangle": ("un triangle", "triangles"),
            "star": ("une étoile", "étoiles"),
            "hexagon": ("un hexagone", "hexagones"),
            "ring": ("un anneau", "anneaux"),
            "cross": ("une croix", "croix"),
            "diamond": ("un losange", "losanges"),
        },
        "numbers": {2: "deux", 3: "trois"},
        "template": "Sur cette photo, on voit {shapes} de couleur {colour} sur un fond {bg}.",
        "prose": (
            "La photo provient de nos archives.",
            "Cette image a été prise pendant l'été.",
            "Tous droits réservés au photographe.",
        ),
    },
    "es": {
        "colour": {
            "red": "rojo",
            "green": "verde",
            "blue": "azul",
            "yellow": "amarillo",
            "orange": "naranja",
            "purple": "morado",
            "black": "negro",
            "white": "blanco",
        },
        "shape": {
            "circle": ("un círculo", "círculos"),
            "square": ("un cuadrado", "cuadrados"),
            "triangle": ("un triángulo", "triángulos"),
            "star": ("una estrella", "estrellas"),
            "hexagon": ("un hexágono", "hexágonos"),
            "ring": ("un anillo", "anillos"),
            "cross": ("una cruz", "cruces"),
            "diamond": ("un rombo", "rombos"),
        },
        "numbers": {2: "dos", 3: "tres"},
        "template": "En esta foto se ve {shapes} de color {colour} sobre un fondo {bg}.",
        "prose": (
            "La foto es de nuestro archivo.",
            "Esta imagen fue tomada durante el verano.",
            "Todos los derechos pertenecen al fotógrafo.",
        ),
    },
    "it": {
        "colour": {
            "red": "rosso",
            "green": "verde",
            "blue": "blu",
            "yellow": "giallo",
            "orange": "arancione",
            "purple": "viola",
            "black": "nero",
            "white": "bianco",
        },
        "shape": {
            "circle": ("un cerchio", "cerchi"),
            "square": ("un quadrato", "quadrati"),
            "triangle": ("un triangolo", "triangoli"),
            "star": ("una stella", "stelle"),
            "hexagon": ("un esagono", "esagoni"),
            "ring": ("un anello", "anelli"),
            "cross": ("una croce", "croci"),
            "diamond": ("un rombo", "rombi"),
        },
        "numbers": {2: "due", 3: "tre"},
        "template": "In questa foto si vede {shapes} di colore {colour} su uno sfondo {bg}.",
        "prose": (
            "La foto proviene dal nostro archivio.",
            "Questa immagine è stata scattata durante l'estate.",
            "Tutti i diritti appartengono al fotografo.",
        ),
    },
}
FOREIGN_LANGS = tuple(_FOREIGN)


def foreign_caption(c: Concept, lang: str, rng: np.random.Generator) -> str:
    v = _FOREIGN[lang]
    one, many = v["shape"][c.shape]
    shapes = one if c.count == 1 else f"{v['numbers'][c.count]} {many}"
    verb = "ist" if c.count == 1 else "sind"
    text = v["template"].format(
        verb=verb, shapes=shapes, colour=v["colour"][c.colour], bg=v["colour"][c.background]
    )
    return f"{text} {rng.choice(v['prose'])}"


_UNINFORMATIVE = (
    "IMG_{n}.jpg",
    "DSC{n}.JPG",
    "click here",
    "image",
    "photo",
    "untitled",
    "thumbnail",
    "banner",
    "Screenshot {n}",
    "pic{n}.png",
    "read more",
    "logo",
    "image{n}",
    "placeholder",
    "default",
)


def uninformative_caption(rng: np.random.Generator) -> str:
    return str(rng.choice(_UNINFORMATIVE)).format(n=int(rng.integers(1000, 9999)))


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """An RGB image with a photograph's statistics, for measuring resampling quality and decode cost:
    1/f amplitude noise (the spectrum of natural scenes) in correlated colours, hard-edged shapes,
    and 1 px lines, the detail a careless downscale aliases. Harder than most photos."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    planes = []
    for _ in range(3):
        x = np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f, s=(height, width))
        planes.append((x - x.mean()) / x.std())
    mixing = np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    pixels = np.clip(128 + 40 * np.tensordot(mixing, np.stack(planes), 1), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels.transpose(1, 2, 0))
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    for _ in range(6):
        x0, y0, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(short // 10, short // 3 + 1))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + r, y0 + r], fill=colour)
        else:
            draw.polygon([(x0, y0), (x0 + r, y0 + r // 3), (x0 + r // 4, y0 + r)], fill=colour)
    for _ in range(8):
        y = int(rng.integers(0, height))
        draw.line([(0, y), (width, y + int(rng.integers(-50, 51)))], fill=(250, 250, 250), width=1)
    return img


# --- encoding ------------------------------------------------------------------------------------

FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
ORIENTATION = 0x0112
# exif_transpose undoes these; the stored pixels are the upright image turned the other way.
_STORE_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def encode(img: Image.Image, fmt: str, quality: int = 88, orientation: int | None = None) -> bytes:
    """Encode; with ``orientation`` the pixels are stored turned and tagged so EXIF-aware readers see ``img``."""
    buf = io.BytesIO()
    kwargs = {}
    if orientation:
        img = img.transpose(_STORE_TURN[orientation])
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, **kwargs)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=1, **kwargs)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=quality, method=0, **kwargs)
    elif fmt == "GIF":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "GIF")
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def content_type(body: bytes) -> str:
    """Content type from magic bytes, the way a careful server would label its files."""
    if body[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if body[:4] == b"GIF8":
        return "image/gif"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    head = body[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "image/svg+xml"
    if head.startswith((b"<!doctype html", b"<html")):
        return "text/html; charset=utf-8"
    return "application/octet-stream"


def seeded_rng(*key) -> np.random.Generator:
    """A generator that depends only on ``key`` (strings hashed), so items can be made in any order."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


_SMALL_HINTS = ("logo", "icon", "sprite", "avatar", "badge", "flag", "favicon", "emoji", "button")
_PIXEL_HINTS = ("pixel", "transparent", "spacer", "blank.gif", "b.gif", "/tr?", "lazy_placeholder", "1x1")


def standin(host: str, path_and_query: str) -> tuple[bytes, str]:
    """A plausible image for any URL: size and format follow from a hash of host and path.

    Logos and icons come out small, tracking pixels 1x1, everything else 300-1200 px.
    """
    rng = seeded_rng("standin", host, path_and_query)
    low = path_and_query.lower()
    if any(h in low for h in _PIXEL_HINTS):
        w = h = 1
    elif any(h in low for h in _SMALL_HINTS):
        w, h = int(rng.integers(16, 64)), int(rng.integers(16, 64))
        if "logo" in low:
            w *= 3
    else:
        w = int(rng.integers(300, 1201))
        h = int(np.clip(w / rng.uniform(0.6, 1.9), 200, 1200))
    if ".svg" in low or "/svg/" in low:
        colour = COLOURS[str(rng.choice(list(COLOURS)))]
        body = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
            f'<rect width="{w}" height="{h}" fill="rgb{colour}"/></svg>'
        ).encode()
        return body, "image/svg+xml"
    fmt = "PNG" if ".png" in low else "GIF" if ".gif" in low else "WEBP" if ".webp" in low else "JPEG"
    if w == 1:
        body = encode(Image.new("RGB", (1, 1), (255, 255, 255)), fmt)
    else:
        body = encode(render(random_concept(rng), w, h, rng), fmt, quality=80)
    return body, content_type(body)


# --- batch production ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """Everything that determines one file's bytes, so files can be made in any process, in any order.

    ``edit`` (with ``base``) derives a near-duplicate from another job's pixels: ``reencode`` keeps
    the pixels, ``resize`` scales to ``width`` x ``height``, ``crop`` cuts ``box`` out.
    """

    key: tuple
    concept: Concept
    width: int
    height: int
    fmt: str = "JPEG"
    quality: int = 88
    orientation: int | None = None
    edit: str | None = None
    base: ImageJob | None = None
    box: tuple[int, int, int, int] | None = None


def make_image(job: ImageJob) -> bytes:
    src = job.base or job
    img = render(src.concept, src.width, src.height, seeded_rng(*src.key))
    if job.edit == "crop":
        img = img.crop(job.box)
    elif job.edit == "resize":
        img = img.resize((job.width, job.height), Image.Resampling.LANCZOS)
    return encode(img, job.fmt, job.quality, job.orientation)


def make_images(jobs: list[ImageJob], workers: int = 1) -> list[bytes]:
    if workers <= 1:
        return [make_image(j) for j in jobs]
    from concurrent.futures import ThreadPoolExecutor

    # Threads, not processes: numpy and Pillow's codecs release the GIL for most of the work, and
    # threads need no importable __main__ (spawned processes fail when called from stdin or -c).
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(make_image, jobs))
