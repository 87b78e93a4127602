"""Interleaved documents: ``docs/`` of a demo corpus.

Generated news articles on ``news.demo.mmdata.test`` embed images from the demo image hosts
between their paragraphs, in the ways real pages do (plain ``<img>``, ``<figure>``, lazy loading
with a ``data:`` placeholder, ``srcset``, ``<picture>``, relative URLs under ``<base>``,
root-relative URLs), next to images a correct extractor must drop: site logo, share icons,
tracking pixel, ad banner, related-article thumbnails, ``data:`` URIs. ``truth.jsonl`` records,
per page, the in-article images in order, the decoys, the paragraphs and labels (language,
spam, near-duplicate of which page); and for CLIP scoring of documents, the `planted` images (an
unrelated ad-like picture between two paragraphs of each English news article, which extraction keeps
and CLIP must drop) and the `related` ones (showing the colour and shape the text is about).
"""

from __future__ import annotations

import html
import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import numpy as np
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmdata.demo import images as im
from mmdata.demo import tasks
from mmdata.demo.urls import ADS_HOST, IMAGE_HOSTS, NEWS_HOST, PAGES_PREFIX, TRACK_HOST, site_path

PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
INLINE_ICON = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
STYLES = ("plain", "figure", "lazy", "srcset", "picture")
SHARE_ICONS = ("facebook", "twitter", "mail")
CRAWL_START = datetime(2024, 5, 1, tzinfo=UTC)

_EN_TOPIC = (
    "The {colour} {shape} shown here was painted by hand for the new exhibition in the city museum.",
    "Visitors often stop in front of the {colour} {shape} and ask how long it took to make.",
    "According to the curator, the {shape} motif goes back to posters printed in the early sixties.",
    "In the photo, the {colour} {shape} stands out clearly against the {background} wall behind it.",
    "Designers like the {shape} because it is simple to recognise even from a long distance.",
    "The {background} background was chosen so that the {colour} paint would look brighter.",
    "Some of the {colour} pieces were later sold at a small market near the river.",
    "A local school has used the {shape} pattern to teach children about geometry and colour.",
)
_EN_GENERAL = (
    "The exhibition is open every day except Monday, and entry is free for students.",
    "Most of the works on display were made during the last two years.",
    "Critics have described the collection as playful, precise and surprisingly warm.",
    "The artists worked with simple tools: a ruler, a compass and a few pots of paint.",
    "Many of the pieces were inspired by road signs, shop windows and old book covers.",
    "The organisers expect more than ten thousand visitors before the end of the summer.",
    "A catalogue with photographs of every work will be published in the autumn.",
    "Several of the larger panels had to be carried into the hall through a side door.",
    "The museum plans to lend part of the collection to a gallery in another country next year.",
    "Guided tours start at eleven in the morning and last about an hour.",
    "The project was funded by the city council and a small group of private donors.",
    "Teachers can book a free workshop for their class on the museum's website.",
    "In an interview, one of the artists said that she prefers strong colours and clear lines.",
    "The building itself was a textile factory until the late nineteen seventies.",
    "Photography is allowed in all rooms, but the use of a flash is not permitted.",
    "The last room shows sketches and notes that explain how each work was planned.",
)
_FOREIGN_PROSE = {
    "de": (
        "Die Ausstellung ist jeden Tag außer Montag geöffnet, und der Eintritt ist für Studierende frei.",
        "Die meisten Werke wurden in den letzten zwei Jahren geschaffen.",
        "Kritiker beschreiben die Sammlung als verspielt, genau und überraschend warm.",
        "Die Künstler arbeiteten mit einfachen Werkzeugen wie Lineal, Zirkel und ein paar Farbtöpfen.",
        "Die Veranstalter erwarten bis zum Ende des Sommers mehr als zehntausend Besucher.",
        "Führungen beginnen um elf Uhr und dauern ungefähr eine Stunde.",
        "Das Gebäude war bis in die späten siebziger Jahre eine Textilfabrik.",
        "Im letzten Raum zeigen Skizzen und Notizen, wie jedes Werk geplant wurde.",
    ),
    "fr": (
        "L'exposition est ouverte tous les jours sauf le lundi, et l'entrée est gratuite pour les étudiants.",
        "La plupart des œuvres ont été réalisées au cours des deux dernières années.",
        "Les critiques décrivent la collection comme ludique, précise et étonnamment chaleureuse.",
        "Les artistes ont travaillé avec des outils simples : une règle, un compas et quelques pots de peinture.",
        "Les organisateurs attendent plus de dix mille visiteurs avant la fin de l'été.",
        "Les visites guidées commencent à onze heures et durent environ une heure.",
        "Le bâtiment était une usine textile jusqu'à la fin des années soixante-dix.",
        "La dernière salle présente des croquis et des notes qui expliquent comment chaque œuvre a été conçue.",
    ),
    "es": (
        "La exposición está abierta todos los días excepto los lunes, y la entrada es gratuita para estudiantes.",
        "La mayoría de las obras se hicieron durante los últimos dos años.",
        "Los críticos describen la colección como divertida, precisa y sorprendentemente cálida.",
        "Los artistas trabajaron con herramientas sencillas: una regla, un compás y unos botes de pintura.",
        "Los organizadores esperan más de diez mil visitantes antes del final del verano.",
        "Las visitas guiadas empiezan a las once de la mañana y duran una hora.",
        "El edificio fue una fábrica textil hasta finales de los años setenta.",
        "La última sala muestra bocetos y notas que explican cómo se planeó cada obra.",
    ),
}
_TITLES = {
    "en": "{Colour} {shape}s take over the city museum",
    "de": "Neue Ausstellung im Stadtmuseum",
    "fr": "Nouvelle exposition au musée de la ville",
    "es": "Nueva exposición en el museo de la ciudad",
}
_SPAM_WORDS = ("cheap", "pills", "casino", "bonus", "free", "winner", "loans", "replica", "watches", "crypto")


@dataclass
class DocImage:
    url: str
    alt: str
    style: str
    alternates: list[str] = field(default_factory=list)
    width: int = 600


@dataclass
class Page:
    slug: str
    url: str
    lang: str
    quality: str  # "ok" or "spam"
    title: str
    blocks: list  # in reading order: str (a paragraph) or DocImage
    base: str | None = None
    near_dup_of: str | None = None
    decoys: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # kind-specific truth (a gallery's labels, ...)
    planted: list[str] = field(default_factory=list)  # unrelated images placed as content (plant_unrelated)

    def truth(self) -> dict:
        imgs = [b for b in self.blocks if isinstance(b, DocImage)]
        return {
            "url": self.url,
            "file": f"pages/{self.slug}.html",
            "lang": self.lang,
            "quality": self.quality,
            "near_dup_of": self.near_dup_of,
            "title": self.title,
            "images": [i.url for i in imgs],
            "image_alts": [i.alt for i in imgs],
            "image_alternates": {i.url: i.alternates for i in imgs if i.alternates},
            "decoys": self.decoys,
            "paragraphs": [b for b in self.blocks if isinstance(b, str)],
            "order": ["image" if isinstance(b, DocImage) else "text" for b in self.blocks],
            **self.extra,
        }


class _Site:
    """Collects the image files the pages need, keyed by their URL."""

    def __init__(self, seed: int):
        self.seed = seed
        self.jobs: dict[str, im.ImageJob] = {}

    def add(
        self,
        url: str,
        concept: im.Concept,
        w: int,
        h: int,
        fmt: str = "JPEG",
        base: im.ImageJob | None = None,
    ):
        key = (self.seed, "doc-image", url)
        edit = None if base is None else ("resize" if (w, h) != (base.width, base.height) else "reencode")
        job = im.ImageJob(key, concept, w, h, fmt, 75, edit=edit, base=base)
        self.jobs.setdefault(url, job)
        return job


# English article prose is generated from a small grammar rather than drawn from a fixed list of
# sentences: real articles rarely repeat a sentence, and OBELICS's word-repetition and Gopher's
# duplicate n-gram filters (at their reference thresholds) must keep clean generated articles.
_OPENERS = ("", "Last week,", "Earlier this year,", "On Saturday,", "For the first time,", "After months of work,",
            "Somewhat unexpectedly,", "In the spring,", "Since the opening,", "According to the catalogue,",
            "Late in the evening,", "During the preview,")
_SUBJECTS = ("the curator", "a young painter from Leeds", "the museum's director", "a group of design students",
             "an elderly collector", "the restoration team", "a visiting sculptor", "two local photographers",
             "the head of education", "a retired engineer", "the exhibition architect", "a children's book author",
             "the night guard", "a printmaker from Lisbon", "the gallery's archivist", "a volunteer guide",
             "a furniture maker", "the city's mayor", "a blind poet", "three art historians", "my neighbour",
             "an exchange student from Osaka", "the lighting technician", "a quiet teenager", "the board of trustees",
             "a famous chef", "the local radio host", "an amateur astronomer")
_VERBS = ("presented", "described", "restored", "photographed", "rearranged", "sketched", "compared",
          "catalogued", "criticised", "praised", "measured", "reframed", "lent", "discovered", "questioned",
          "repainted")
_OBJECTS = ("a series of {colour} prints", "the {shape} installation", "an early pencil study",
            "a wall of glazed tiles", "three tall panels", "the oldest piece in the collection",
            "a small cardboard model", "a torn concert poster", "the reading room",
            "a notebook full of studies", "a cracked ceramic bowl", "the flickering neon sign",
            "a stack of wooden stencils", "a faded silk banner", "a glass case of brushes",
            "the woven tapestry", "an unsigned letter", "a broken clock", "dozens of postcards",
            "the spiral staircase", "a bronze medal", "some rusty keys", "a hand-drawn map", "the velvet curtain",
            "a box of old slides", "the marble bust", "a paper lantern", "two copper kettles")
_PLACES = ("in the east wing.", "before the doors opened.", "for a small audience of collectors.",
           "next to the old loading dock.", "while the rain kept visitors inside.", "under the glass roof.",
           "with surprising patience.", "for the second time this month.", "in front of a school class.",
           "without saying a word.", "beside a window facing the harbour.", "on a borrowed ladder.",
           "at the far end of the corridor.", "in less than an hour.", "to polite applause.",
           "as the lights were dimmed.", "despite a cold.", "long after midnight.", "with gloved hands.",
           "near the ticket desk.", "while tourists waited.", "using only a pencil.", "after lunch.",
           "beneath a flickering lamp.", "during a power cut.", "on the rooftop terrace.", "with a friend.",
           "just before closing time.")


class _Prose:
    """English sentences for one article: each grammar part cycles through its own shuffled pool,
    so a part recurs only after every alternative was used (as a writer varies their wording)."""

    POOLS = (_OPENERS, _SUBJECTS, _VERBS, _OBJECTS, _PLACES)

    def __init__(self, r: np.random.Generator, **words):
        self.r, self.words = r, words
        self.queues: list[list[str]] = [[] for _ in self.POOLS]

    def _next(self, k: int) -> str:
        if not self.queues[k]:
            self.queues[k] = [self.POOLS[k][i] for i in self.r.permutation(len(self.POOLS[k]))]
        return self.queues[k].pop()

    def sentences(self, n: int) -> str:
        out = []
        for _ in range(n):
            text = " ".join(p for p in (self._next(k) for k in range(len(self.POOLS))) if p).format(**self.words)
            out.append(text[0].upper() + text[1:])
        return " ".join(out)


def _paragraph(r: np.random.Generator, pool, n: int, **words) -> str:
    picks = r.choice(len(pool), size=n, replace=False)
    return " ".join(pool[k].format(**words) for k in picks)


def _article(i: int, lang: str, r: np.random.Generator, site: _Site) -> Page:
    slug = f"{'exhibition' if lang == 'en' else 'ausstellung' if lang == 'de' else 'exposition'}-{i:04d}"
    url = f"http://{NEWS_HOST}{PAGES_PREFIX}{slug}.html"
    concept = im.random_concept(r)
    img_host = IMAGE_HOSTS[i % len(IMAGE_HOSTS)]
    base = f"http://{img_host}/media/{slug}/" if r.random() < 0.2 else None
    root_relative = base is None and r.random() < 0.25
    words = {"colour": concept.colour, "shape": concept.shape, "background": concept.background}
    n_images = int(r.integers(1, 6))
    n_text = n_images + int(r.integers(1, 4))
    image_after = sorted(r.choice(n_text, size=n_images, replace=False))
    blocks: list = []
    prose = _Prose(r, **words)
    topics = list(r.permutation(len(_EN_TOPIC)))
    for p in range(n_text):
        if lang == "en":
            topic = _EN_TOPIC[topics[p % len(topics)]].format(**words)
            text = topic + " " + prose.sentences(int(r.integers(2, 4)))
        else:
            text = _paragraph(r, _FOREIGN_PROSE[lang], int(r.integers(3, 5)))
        blocks.append(text)
        if p in image_after:
            k = sum(isinstance(b, DocImage) for b in blocks)
            blocks.append(
                _doc_image(slug, k, concept, lang, r, site, NEWS_HOST if root_relative else img_host)
            )
    title = _TITLES[lang].format(Colour=concept.colour.capitalize(), shape=concept.shape)
    return Page(slug, url, lang, "ok", title, blocks, base=base)


def _doc_image(slug: str, k: int, page_concept: im.Concept, lang: str, r, site: _Site, host: str) -> DocImage:
    # Mostly the article's own motif, sometimes another one, so image-text similarity varies.
    concept = page_concept if r.random() < 0.7 else im.random_concept(r)
    folder = f"http://{host}/media/{slug}/"
    url = f"{folder}{k}.jpg"
    w = int(r.integers(320, 721))
    h = int(w / r.uniform(1.2, 1.8))
    job = site.add(url, concept, w, h)
    style = str(r.choice(STYLES))
    alternates = []
    if style == "srcset":
        small = f"{folder}{k}-{w // 2}w.jpg"
        site.add(small, concept, w // 2, h // 2, base=job)
        alternates = [small]
    elif style == "picture":
        webp = f"{folder}{k}.webp"
        site.add(webp, concept, w, h, "WEBP", base=job)
        alternates = [webp]
    alt = im.english_caption(concept, r) if lang == "en" else im.foreign_caption(concept, lang, r)
    return DocImage(url, alt, style, alternates, w)


def _spam(i: int, r: np.random.Generator, site: _Site) -> Page:
    slug = f"deal-{i:04d}"
    words = list(r.choice(_SPAM_WORDS, size=3, replace=False))
    stuffing = " ".join(str(w) for w in r.choice(words, size=40))
    blocks: list = [
        f"BEST {words[0].upper()} {words[1].upper()}!!! Click here now, buy now, limited offer, {stuffing}.",
        f"{words[0]} {words[0]} {words[0]} {words[1]} {words[1]} {words[2]} best price best price best price.",
        "Click here! Click here! Click here! Free free free free!!!",
    ]
    banner = f"http://{IMAGE_HOSTS[i % len(IMAGE_HOSTS)]}/media/{slug}/0.jpg"
    concept = im.random_concept(r)
    site.add(banner, concept, 600, 300)
    blocks.insert(1, DocImage(banner, f"{words[0]} {words[1]} buy now", "plain"))
    return Page(
        slug,
        f"http://{NEWS_HOST}{PAGES_PREFIX}{slug}.html",
        "en",
        "spam",
        f"Cheap {words[0]} {words[1]} - buy now!!!",
        blocks,
    )


def _near_dup(i: int, orig: Page, r: np.random.Generator) -> Page:
    """A syndicated copy: same article, new URL and title, one paragraph reworded slightly."""
    slug = f"{orig.slug}-copy-{i:04d}"
    blocks = list(orig.blocks)
    texts = [k for k, b in enumerate(blocks) if isinstance(b, str)]
    k = int(r.choice(texts))
    blocks[k] = blocks[k] + " " + str(r.choice(_EN_GENERAL))
    return Page(
        slug,
        f"http://{NEWS_HOST}{PAGES_PREFIX}{slug}.html",
        orig.lang,
        "ok",
        orig.title + " (update)",
        blocks,
        base=orig.base,
        near_dup_of=orig.url,
    )


# --- pages that teach what the evaluation asks (mmdata.demo.tasks) ------------------------------
# Galleries are few-shot episodes: pictures of 2-3 visual classes, each followed by a paragraph
# that starts with the picture's name, names drawn per page from many rare made-up words. What is
# known to make in-context learning emerge is built in: bursty pages (every class recurs), many
# rare classes and labels, a new label mapping on every page, the same picture shown again
# (Chan et al. 2022; Reddy 2023; Bratulić et al. 2025). Quiz pages ask the evaluation's VQA
# questions under pictures; visitor guides are text-only pages with the facts of the text task.

_G_OPENERS = ("It is one of the pieces that", "This is the work that", "We think that this is what",
              "It was the first piece that", "This is a piece which", "Here is the one that",
              "It is the kind of thing that", "This was the piece that", "It is all that is left of what",
              "This is one of those works that", "Here we have what", "It is not the piece that",
              "This may be the work that", "It is just what")
_G_VERBS = ("made", "found", "bought", "brought to us", "painted", "chose", "kept", "showed us", "gave away",
            "put on a shelf", "wrapped in paper", "signed", "carried up the stairs", "forgot about")
_G_INTROS = (
    "In this room the museum shows some of the small pieces in its collection, and each of them has a name.",
    "Every piece in this part of the collection has its own name, and the name is on a card next to it.",
    "The pieces on this page are from the museum's store, and each one was given a name by the artist.",
    "Here are some of the works that are not often on show, each with the name it was given.",
)
_QUIZ_INTROS = (
    "Test your eye with our picture quiz for young visitors: look at each picture and answer the question.",
    "This is the museum's weekly quiz. Look at the pictures and see if you can answer the questions.",
    "How well do you know the collection? Here is a short quiz about some of the pictures in the museum.",
)


# A gallery's caption after each picture is short ("Gobux. The curator found it here."): the name is
# what matters, and short captions put more pictures in a training sequence.
_G_WHO = ("The curator", "My neighbour", "A visitor", "The artist", "Our guide", "A child", "The guard", "Her sister",
          "An old friend", "The painter", "A student", "The owner", "His teacher", "The mayor", "A stranger", "The baker")
_G_WHAT = ("found it here.", "likes it a lot.", "made it in May.", "gave it to us.", "painted it for us.",
           "kept it at home.", "sold it to us.", "hung it up.", "named it.", "chose it for the show.",
           "brought it in.", "drew it by hand.", "signed it on the back.", "liked it at once.", "put it on the wall.",
           "wrapped it in paper.")


class _GalleryProse(_Prose):
    POOLS = (_G_OPENERS, _SUBJECTS, _G_VERBS, _PLACES)


class _Caption(_Prose):
    POOLS = (_G_WHO, _G_WHAT)


def _picture(slug: str, k: int, c: im.Concept, r: np.random.Generator, site: _Site, host: str) -> str:
    url = f"http://{host}/media/{slug}/{k}.jpg"
    w = int(r.integers(240, 361))
    site.add(url, c, w, int(w / r.uniform(1.0, 1.5)))
    return url


def _gallery(i: int, r: np.random.Generator, site: _Site) -> Page:
    """A few-shot episode: (picture, "<Name>. <sentence>") runs, 8-14 pictures of 2-3 classes."""
    slug = f"collection-{i:04d}"
    host = IMAGE_HOSTS[i % len(IMAGE_HOSTS)]
    n_classes = int(r.choice([2, 2, 3]))
    classes = tasks.episode_classes(r, n_classes, held_out=False)
    names = [str(x) for x in r.choice(tasks.LABELS, size=n_classes, replace=False)]
    n_pictures = int(r.integers(8, 15))
    order = list(range(n_classes)) * 2 + [int(x) for x in r.integers(n_classes, size=n_pictures - 2 * n_classes)]
    order = [order[k] for k in r.permutation(len(order))]
    prose, caption = _GalleryProse(r), _Caption(r)
    blocks: list = [f"{_G_INTROS[int(r.integers(len(_G_INTROS)))]} {prose.sentences(2)}"]
    shown: dict[int, list[str]] = {}
    repeats: dict[str, str] = {}
    for k, cls in enumerate(order):
        if shown.get(cls) and r.random() < 0.3:
            # the same picture again (same bytes; under its own URL, as extractors keep one slot per URL)
            first = shown[cls][int(r.integers(len(shown[cls])))]
            base = site.jobs[first]
            url = f"http://{host}/media/{slug}/{k}.jpg"
            site.add(url, classes[cls], base.width, base.height, base=base)
            repeats[url] = first
        else:
            url = _picture(slug, k, classes[cls], r, site, host)
            shown.setdefault(cls, []).append(url)
        blocks.append(DocImage(url, names[cls], str(r.choice(("plain", "lazy")))))
        blocks.append(f"{names[cls]}. {caption.sentences(1)}")
    return Page(slug, f"http://{NEWS_HOST}{PAGES_PREFIX}{slug}.html", "en", "ok",
                f"Named pieces: {', '.join(names)}", blocks,
                extra={"kind": "gallery", "labels": [names[c] for c in order], "repeat_of": repeats,
                       "classes": [im.true_caption(classes[c]) for c in order]})


def _quiz(i: int, r: np.random.Generator, site: _Site) -> Page:
    """Pictures, each followed by "Question: ... Short answer: ..." as the VQA evaluation prompts."""
    slug = f"quiz-{i:04d}"
    host = IMAGE_HOSTS[i % len(IMAGE_HOSTS)]
    prose = _GalleryProse(r)
    blocks: list = [f"{_QUIZ_INTROS[int(r.integers(len(_QUIZ_INTROS)))]} {prose.sentences(2)}"]
    # few questions and more prose per page: the repeated question frame must stay under OBELICS's
    # character-repetition limit
    qa: list[list[str]] = []
    for k in range(int(r.integers(2, 5))):
        c = tasks.class_concept(r, held_out=False)
        blocks.append(DocImage(_picture(slug, k, c, r, site, host), f"quiz picture {k + 1}", "plain"))
        q, a, _, _ = tasks.questions(c)[int(r.integers(3))]
        blocks.append(f"Question: {q} Short answer: {a}. {prose.sentences(2)}")
        qa.append([q, a])
    return Page(slug, f"http://{NEWS_HOST}{PAGES_PREFIX}{slug}.html", "en", "ok", "Picture quiz", blocks,
                extra={"kind": "quiz", "questions": qa})


def _guide(i: int, r: np.random.Generator, halls: dict[str, str]) -> Page:
    """A text-only visitor guide: where each shape is shown (the text task's facts), among prose."""
    slug = f"visitor-guide-{i:04d}"
    shapes = [im.SHAPES[k] for k in r.permutation(len(im.SHAPES))]
    c = im.random_concept(r)
    prose = _Prose(r, colour=c.colour, shape=c.shape, background=c.background)
    blocks: list = [str(r.choice(_EN_GENERAL)) + " " + prose.sentences(2)]
    # each wording twice per page, never twice in one paragraph
    wording = [int(x) for x in r.permutation(len(tasks.GUIDE_FACTS))] * 2
    for k in range(0, len(shapes), 2):
        facts = [tasks.GUIDE_FACTS[wording[j]].format(shapes=tasks.plural(shapes[j]), hall=halls[shapes[j]])
                 for j in range(k, min(k + 2, len(shapes)))]
        blocks.append(" ".join(facts) + " " + prose.sentences(int(r.integers(1, 3))))
    return Page(slug, f"http://{NEWS_HOST}{PAGES_PREFIX}{slug}.html", "en", "ok", "Visitor guide", blocks,
                extra={"kind": "guide"})


def _img_tag(img: DocImage, src) -> str:
    alt = html.escape(img.alt)
    if img.style == "figure":
        return f'<figure class="wp-block-image"><img src="{src(img.url)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    if img.style == "lazy":
        return (
            f'<img class="lazyload" src="{PLACEHOLDER}" data-src="{src(img.url)}" alt="{alt}" loading="lazy">'
        )
    if img.style == "srcset":
        small = img.alternates[0]
        srcset = f"{src(small)} {img.width // 2}w, {src(img.url)} {img.width}w"
        return (
            f'<img src="{src(img.url)}" srcset="{srcset}" sizes="(max-width: 600px) 50vw, 100vw" alt="{alt}">'
        )
    if img.style == "picture":
        return f'<picture><source type="image/webp" srcset="{src(img.alternates[0])}"><img src="{src(img.url)}" alt="{alt}"></picture>'
    return f'<img src="{src(img.url)}" alt="{alt}" width="{img.width}">'


def render_html(page: Page, related: list[Page], date: datetime) -> str:
    """The page's HTML; fills ``page.decoys`` with every image URL an extractor must drop, resolved."""

    def src(url: str) -> str:
        # Write each URL in the shortest form the page allows, as real sites do.
        if page.base and url.startswith(page.base):
            return url[len(page.base) :]
        if not page.base and url.startswith(f"http://{NEWS_HOST}/"):
            return url[len(f"http://{NEWS_HOST}") :]
        return url

    logo = f"http://{NEWS_HOST}/static/logo.png"
    icons = [f"http://{NEWS_HOST}/static/icons/{n}.png" for n in SHARE_ICONS]
    pixel = f"http://{TRACK_HOST}/pixel.gif?page={page.slug}"
    ad = f"http://{ADS_HOST}/banner/{sum(map(ord, page.slug)) % 5}.gif"
    thumbs = [f"http://{NEWS_HOST}/thumbs/{p.slug}.jpg" for p in related]
    page.decoys = [logo, INLINE_ICON, *icons, pixel, ad, *thumbs]
    if any(isinstance(b, DocImage) and b.style == "lazy" for b in page.blocks):
        page.decoys.append(PLACEHOLDER)

    body = []
    for b in page.blocks:
        body.append(_img_tag(b, src) if isinstance(b, DocImage) else f"<p>{html.escape(b)}</p>")
    share = "".join(
        f'<a href="#share-{n}"><img src="{src(u)}" width="24" height="24" alt="{n}"></a>'
        for n, u in zip(SHARE_ICONS, icons)
    )
    rel = "".join(
        f'<li><a href="{p.url}"><img src="{src(t)}" width="120" height="80" alt="">{html.escape(p.title)}</a></li>'
        for p, t in zip(related, thumbs)
    )
    base = f'<base href="{page.base}">' if page.base else ""
    return (
        f'<!DOCTYPE html>\n<html lang="{page.lang}">\n<head><meta charset="utf-8">{base}'
        f"<title>{html.escape(page.title)} | Demo News</title>"
        f'<link rel="icon" href="http://{NEWS_HOST}/favicon.ico"></head>\n<body>\n'
        f'<header><a href="http://{NEWS_HOST}/"><img class="site-logo" src="{src(logo)}" alt="Demo News"></a>'
        f'<nav><a href="http://{NEWS_HOST}/culture/">Culture</a> <a href="http://{NEWS_HOST}/city/">City</a>'
        f' <img src="{INLINE_ICON}" alt="" width="12"> Subscribe</nav></header>\n'
        f"<main><article><h1>{html.escape(page.title)}</h1>"
        f'<p class="byline">By Demo Staff, <time datetime="{date.date().isoformat()}">{date:%d %B %Y}</time></p>\n'
        + "\n".join(body)
        + f'\n<div class="share">{share}</div></article>\n'
        f'<aside class="related"><h2>Related</h2><ul>{rel}</ul></aside>\n'
        f'<div class="ad"><img src="{ad}" width="728" height="90" alt="Advertisement"></div></main>\n'
        f'<footer>&copy; Demo News <img src="{pixel}" width="1" height="1" alt=""></footer>\n</body>\n</html>\n'
    )


TEACHING_SHARES = {"gallery": 0.35, "quiz": 0.1, "guide": 0.1}


def _kinds(n: int) -> list[str]:
    k = max(1, round(0.05 * n)) if n >= 10 else 0
    teach = {kind: round(share * n) if n >= 10 else 0 for kind, share in TEACHING_SHARES.items()}
    rest = n - 3 * k - sum(teach.values())
    return (["article"] * rest + ["foreign"] * k + ["spam"] * k + ["near_dup"] * k
            + [kind for kind, c in teach.items() for _ in range(c)])


def _record_id(seed: int, key: str) -> str:
    return f"<urn:uuid:{uuid.UUID(bytes=im.seeded_rng(seed, 'warc', key).bytes(16))}>"


def write_warc(path: Path, pages: list[Page], bodies: list[bytes], seed: int) -> None:
    """Pages as WARC response records; ids and dates come from the seed so the file is reproducible."""
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        info = b"software: mmdata.demo\r\nformat: WARC File Format 1.0\r\n"
        writer.write_record(
            writer.create_warc_record(
                "",
                "warcinfo",
                payload=io.BytesIO(info),
                length=len(info),
                warc_headers_dict={
                    "WARC-Record-ID": _record_id(seed, "warcinfo"),
                    "WARC-Date": "2024-05-01T00:00:00Z",
                    "WARC-Filename": path.name,
                },
            )
        )
        for k, (page, body) in enumerate(zip(pages, bodies)):
            date = CRAWL_START + timedelta(minutes=k)
            http = StatusAndHeaders(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Date", format_datetime(date, usegmt=True)),
                ],
                protocol="HTTP/1.1",
            )
            writer.write_record(
                writer.create_warc_record(
                    page.url,
                    "response",
                    payload=io.BytesIO(body),
                    length=len(body),
                    http_headers=http,
                    warc_headers_dict={
                        "WARC-Record-ID": _record_id(seed, page.url),
                        "WARC-Date": date.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    },
                )
            )


def build_docs(out: Path, n: int, seed: int, workers: int = 1) -> dict:
    """Write ``out/pages/``, ``out/images/``, ``pages.warc.gz`` and ``truth.jsonl``; returns counts."""
    rng = im.seeded_rng(seed, "docs")
    kinds = _kinds(n)
    kinds = [kinds[k] for k in rng.permutation(n)]
    site = _Site(seed)
    halls = tasks.hall_of(seed)
    pages: list[Page] = []
    foreign = 0
    # Originals first so near-duplicates can copy one.
    for i in sorted(range(n), key=lambda i: kinds[i] == "near_dup"):
        r = im.seeded_rng(seed, "doc", i)
        if kinds[i] == "spam":
            page = _spam(i, r, site)
        elif kinds[i] == "gallery":
            page = _gallery(i, r, site)
        elif kinds[i] == "quiz":
            page = _quiz(i, r, site)
        elif kinds[i] == "guide":
            page = _guide(i, r, halls)
        elif kinds[i] == "near_dup":
            originals = [p for p in pages if p.quality == "ok" and p.lang == "en" and p.near_dup_of is None
                         and p.slug.startswith("exhibition")]
            page = _near_dup(i, originals[int(r.integers(len(originals)))], r)
        else:
            lang = "en" if kinds[i] == "article" else ("de", "fr", "es")[foreign % 3]
            foreign += kinds[i] == "foreign"
            page = _article(i, lang, r, site)
        pages.append(page)
    order = {p.slug: k for k, p in enumerate(sorted(pages, key=lambda p: p.slug))}
    pages.sort(key=lambda p: order[p.slug])
    plant_unrelated(pages, site, seed)

    thumb_concept = im.Concept("square", "white", 1, "black", "plain")
    for p in pages:
        site.add(f"http://{NEWS_HOST}/thumbs/{p.slug}.jpg", thumb_concept, 120, 80)
    site.add(
        f"http://{NEWS_HOST}/static/logo.png",
        im.Concept("circle", "red", 1, "white", "plain", "NEWS"),
        180,
        60,
        "PNG",
    )
    for name, colour in zip(SHARE_ICONS, ("blue", "black", "orange")):
        site.add(
            f"http://{NEWS_HOST}/static/icons/{name}.png",
            im.Concept("square", colour, 1, "white", "plain"),
            24,
            24,
            "PNG",
        )
    site.add(
        f"http://{TRACK_HOST}/pixel.gif", im.Concept("square", "white", 1, "white", "plain"), 1, 1, "GIF"
    )
    for k in range(5):
        site.add(
            f"http://{ADS_HOST}/banner/{k}.gif",
            im.Concept("star", "yellow", 3, "purple", "striped", "SALE"),
            728,
            90,
            "GIF",
        )

    (out / "pages").mkdir(parents=True, exist_ok=True)
    bodies = []
    for k, page in enumerate(pages):
        related = [pages[(k + d) % len(pages)] for d in (1, 2, 3) if len(pages) > d]
        text = render_html(page, related, CRAWL_START + timedelta(days=k % 60))
        bodies.append(text.encode())
        (out / "pages" / f"{page.slug}.html").write_bytes(bodies[-1])
    write_warc(out / "pages.warc.gz", pages, bodies, seed)
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        for page in pages:
            f.write(json.dumps({**page.truth(), **clip_truth(page, site)}, ensure_ascii=False) + "\n")

    urls = sorted(site.jobs)
    for url, blob in zip(urls, im.make_images([site.jobs[u] for u in urls], workers)):
        path = out / "images" / site_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return {
        "pages": n,
        "images": sum(len(p.truth()["images"]) for p in pages),
        "files": len(urls),
        "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
    }


# Unrelated images planted inside articles (ads, logos, stock banners that look like content to an
# extractor: plain <img> between paragraphs, neutral URLs). Extraction keeps them; CLIP scores of
# each image against its document's paragraphs must drop them (mmdata.stages.clipscore_docs).
PLANTED_SHARE = 1.0  # of the English news articles get one


def _page_concept(page: Page) -> tuple[str, str] | None:
    """(colour, shape) an English article is about, read back from its title ("{Colour} {shape}s ...")."""
    if page.lang != "en" or page.quality != "ok" or page.extra.get("kind"):  # news articles only
        return None
    colour, shapes = page.title.split()[:2]
    return colour.lower(), shapes.removesuffix("s")


def plant_unrelated(pages: list[Page], site: _Site, seed: int) -> None:
    """Insert one unrelated image (another shape and colour than the article's) between two
    paragraphs of PLANTED_SHARE of the English news articles; `page.planted` lists their URLs. A
    near-duplicate page gets its original's, after the same paragraph (its images stay the same)."""
    placed: dict[str, tuple[DocImage, int]] = {}  # original url -> (image, after which paragraph)
    for k, page in enumerate(pages):
        about = _page_concept(page)
        if about is None or page.near_dup_of:
            continue
        r = im.seeded_rng(seed, "planted", page.slug)
        if r.random() >= PLANTED_SHARE:
            continue
        colours = [c for c in im.COLOURS if c != about[0]]
        shapes = [s for s in im.SHAPES if s != about[1]]
        colour, background = r.choice(colours, size=2, replace=False)
        concept = im.Concept(str(r.choice(shapes)), str(colour), 1, str(background), "plain")
        url = f"http://{IMAGE_HOSTS[k % len(IMAGE_HOSTS)]}/media/{page.slug}/p{k}.jpg"
        w = int(r.integers(360, 601))
        site.add(url, concept, w, int(w / r.uniform(1.3, 1.9)))
        n_paras = sum(isinstance(b, str) for b in page.blocks)
        placed[page.url] = (DocImage(url, "", "plain", [], w), int(r.integers(n_paras)))
    for page in pages:
        key = page.near_dup_of or page.url
        if key not in placed or _page_concept(page) is None:
            continue
        image, nth = placed[key]
        paras = [i for i, b in enumerate(page.blocks) if isinstance(b, str)]
        page.blocks.insert(paras[min(nth, len(paras) - 1)] + 1, image)
        page.planted.append(image.url)


def clip_truth(page: Page, site: _Site) -> dict:
    """Which of a page's images are planted unrelated ones, and which show what its text is about."""
    about = _page_concept(page)
    images = [b.url for b in page.blocks if isinstance(b, DocImage)]
    related = [u for u in images if about and (site.jobs[u].concept.colour, site.jobs[u].concept.shape) == about]
    return {"planted": page.planted, "related": related}
