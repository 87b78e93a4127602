"""HTML -> an ordered list of text and image slots (OBELICS-style DOM simplification and walk).

The page is parsed with lexbor (selectolax), which is far faster than the lxml-based extractors.
Then:

1. the main container is chosen: the largest of `<article>`, `<main>`, `[role=main]`,
   `[itemprop=articleBody]`, preferring a nested one that still holds most of the text (an
   `<article>` inside `<main>` that also carries related-story rails), else `<body>`;
2. boilerplate is removed: non-content tags (script, nav, footer, forms, ...), hidden elements and
   elements whose class or id names them as cookie banners, share bars, sidebars, comments, ...;
3. the container is walked in document order. Block elements end a paragraph; inline text joins
   it; `<br>` is a line break. An image ends the paragraph before it and becomes an image slot.

Image slots take their URL from srcset (the best candidate: the smallest at least `srcset_width`
wide, else the largest), then lazy-load attributes, then `src`; `data:` URIs are skipped; `<picture>`
falls back to its `<source>` srcsets; everything is resolved against `<base href>` (when it is a
real URL) or the page URL. An image inside `<figure>` gets the `<figcaption>` text as its
`caption`; the caption also stays in the text flow, where a reader sees it. Each text slot keeps
the number of its characters that were link text, so navigation-like blocks can be filtered later
(scores first, decisions later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

# Dropped with their whole subtree: never article content.
DROP_TAGS = frozenset(
    ["script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed", "form", "button", "input", "select", "textarea", "nav", "footer", "aside", "dialog", "menu", "head", "link", "meta", "map", "audio", "video"]
)
# End the current paragraph (on entry and on exit).
BLOCK_TAGS = frozenset(
    ["p", "div", "section", "article", "main", "header", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "td", "th", "blockquote", "pre", "figure", "figcaption", "hr", "address", "details", "summary", "center", "caption", "body", "html"]
)
HEADINGS = frozenset(["h1", "h2", "h3", "h4", "h5", "h6"])
CONTAINERS = ("article", "main", '[role="main"]', '[itemprop="articleBody"]')
SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "srcset")
LAZY_ATTRS = (
    "data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src",
    "data-full-src", "data-orig-file", "data-image", "src",
)
_WS = re.compile(r"\s+")
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden")


@dataclass
class Rules:
    """Extraction knobs (config.ExtractConfig mirrors these at the YAML edge)."""

    boilerplate: tuple[str, ...] = (
        "cookie", "consent", "gdpr", "banner", "newsletter", "subscribe", "signup", "share", "sharing",
        "social", "related", "recommended", "comments?", "sidebar", "widget", "breadcrumbs?", "menu",
        "navbar", "nav", "promo", "advert", "ads?", "sponsored", "popup", "modal", "footer",
        "masthead", "paywall", "outbrain", "taboola", "byline", "author-bio", "tags", "pagination",
    )
    srcset_width: int = 1024
    main_content: bool = True
    # a class like "l-sidebar-fixed" can name the layout wrapper of the article itself: an element
    # holding this share of the container's text is content, whatever its class says
    boilerplate_max_share: float = 0.5

    def __post_init__(self):
        words = "|".join(self.boilerplate)
        # a whole class/id token, or a `-`/`_`-delimited part of one ("site-footer", "share_bar")
        self._pattern = re.compile(rf"(?:^|[-_])(?:{words})(?:$|[-_])", re.IGNORECASE)

    def is_boilerplate(self, node: LexborNode) -> bool:
        attrs = node.attributes
        names = f"{attrs.get('class') or ''} {attrs.get('id') or ''}".split()
        return any(self._pattern.search(n) for n in names)


@dataclass
class Slot:
    type: str  # "text" | "image"
    text: str = ""
    url: str = ""
    alt: str | None = None
    caption: str | None = None
    link_chars: int = 0
    heading: bool = False
    width: int | None = None  # declared in the tag, not measured
    height: int | None = None

    def to_dict(self) -> dict:
        if self.type == "text":
            return {"type": "text", "text": self.text}
        out = {"type": "image", "url": self.url, "alt": self.alt, "caption": self.caption}
        return out


@dataclass
class Page:
    url: str
    title: str | None
    slots: list[Slot] = field(default_factory=list)
    lang: str | None = None  # <html lang>, a hint only

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.slots if s.type == "text"]

    @property
    def images(self) -> list[Slot]:
        return [s for s in self.slots if s.type == "image"]


# ---------------------------------------------------------------------------------------------
# URLs


def best_srcset(value: str, target: int) -> str | None:
    """The srcset candidate to fetch: the smallest at least `target` px wide, else the largest."""
    widths: list[tuple[float, str]] = []
    densities: list[tuple[float, str]] = []
    for part in re.split(r",\s+(?=\S)", value.strip()):
        bits = part.strip().split()
        if not bits or bits[0].startswith("data:"):
            continue
        url, desc = bits[0].rstrip(","), (bits[1] if len(bits) > 1 else "1x")
        try:
            size = float(desc[:-1])
        except ValueError:
            size = 1.0
        (widths if desc.endswith("w") else densities).append((size, url))
    if widths:
        widths.sort()
        wide = [c for c in widths if c[0] >= target]
        return (wide[0] if wide else widths[-1])[1]
    return max(densities)[1] if densities else None


def resolve(src: str, base: str) -> str | None:
    src = src.strip()
    if not src or src.startswith(("data:", "javascript:", "about:", "blob:")):
        return None
    try:
        url = urljoin(base, src)
    except ValueError:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


def image_url(attrs: dict, base: str, rules: Rules, sources: list[dict] = ()) -> str | None:
    for name in SRCSET_ATTRS:
        if attrs.get(name):
            best = best_srcset(attrs[name], rules.srcset_width)
            if best and (url := resolve(best, base)):
                return url
    for name in LAZY_ATTRS:
        if attrs.get(name) and (url := resolve(attrs[name], base)):
            return url
    for src in sources:  # <picture><source srcset=...>: only when the <img> itself has nothing
        for name in SRCSET_ATTRS:
            best = best_srcset(src[name], rules.srcset_width) if src.get(name) else None
            if best and (url := resolve(best, base)):
                return url
    return None


def _int(value: str | None) -> int | None:
    if value and value.strip().isdigit():
        return int(value.strip())
    return None


def page_base(tree: LexborHTMLParser, url: str) -> tuple[str, str]:
    """(document URL, base for relative links). A saved file's URL falls back to its canonical link."""
    doc_url = url
    if not url.startswith(("http://", "https://")):
        for sel, attr in (('link[rel="canonical"]', "href"), ('meta[property="og:url"]', "content")):
            node = tree.css_first(sel)
            if node is not None and (href := (node.attributes.get(attr) or "").strip()).startswith("http"):
                doc_url = href
                break
    base = doc_url
    node = tree.css_first("base[href]")
    if node is not None and (href := (node.attributes.get("href") or "").strip()):
        base = urljoin(doc_url, href)
    return doc_url, base


# ---------------------------------------------------------------------------------------------
# the walk


class _Walker:
    def __init__(self, base: str, rules: Rules, root_chars: int):
        self.base, self.rules = base, rules
        self.max_boilerplate = rules.boilerplate_max_share * root_chars
        self.slots: list[Slot] = []
        self.buf: list[str] = []
        self.link_chars = 0
        self.in_link = 0
        self.heading = 0
        self.seen: set[str] = set()
        self.article = 0  # a <header> inside an article holds its title and lead image; elsewhere it is site chrome

    def flush(self) -> None:
        if self.buf:
            text = "".join(self.buf)
            lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
            text = "\n".join(line for line in lines if line)
            if text:
                self.slots.append(Slot("text", text=text, link_chars=min(self.link_chars, len(text)),
                                       heading=self.heading > 0))
        self.buf, self.link_chars = [], 0

    def image(self, node: LexborNode, caption: str | None, sources: list[dict] = ()) -> None:
        attrs = node.attributes
        if attrs.get("aria-hidden") == "true":
            return
        url = image_url(attrs, self.base, self.rules, sources)
        if url is None or url in self.seen:  # a lazy <img> and its <noscript> twin give one slot
            return
        self.seen.add(url)
        self.flush()
        alt = _WS.sub(" ", attrs.get("alt") or "").strip() or None
        self.slots.append(Slot("image", url=url, alt=alt, caption=caption,
                               width=_int(attrs.get("width")), height=_int(attrs.get("height"))))

    def walk(self, node: LexborNode, caption: str | None = None) -> None:
        for child in node.iter(include_text=True):
            tag = child.tag
            if tag == "-text":
                text = child.text(deep=False)
                if text:
                    self.buf.append(text)
                    if self.in_link:
                        self.link_chars += len(text.strip())
                continue
            if tag is None or tag.startswith("-") or tag in DROP_TAGS:
                continue
            attrs = child.attributes
            if "hidden" in attrs or _HIDDEN.search(attrs.get("style") or ""):
                continue
            if self.rules.is_boilerplate(child) and len(child.text(strip=True)) < self.max_boilerplate:
                continue
            if tag == "header" and not self.article:
                continue
            if tag == "img":
                self.image(child, caption)
            elif tag == "picture":
                img = child.css_first("img")
                sources = [s.attributes for s in child.css("source")]
                if img is not None:
                    self.image(img, caption, sources)
            elif tag == "br":
                self.buf.append("\n")
            elif tag == "figure":
                self.flush()
                cap = child.css_first("figcaption")
                text = _WS.sub(" ", cap.text()).strip() if cap is not None else ""
                self.walk(child, text or None)
                self.flush()
            elif tag in BLOCK_TAGS:
                self.flush()
                h, a = tag in HEADINGS, tag == "article"
                self.heading += h
                self.article += a
                self.walk(child, caption)
                self.flush()
                self.heading -= h
                self.article -= a
            elif tag == "a":
                self.in_link += 1
                self.walk(child, caption)
                self.in_link -= 1
            else:
                self.walk(child, caption)


def main_container(tree: LexborHTMLParser) -> LexborNode | None:
    body = tree.body
    if body is None:
        return None
    best, best_len = None, 0
    for sel in CONTAINERS:
        for node in tree.css(sel):
            n = len(node.text(strip=True))
            if n > best_len:
                best, best_len = node, n
    if best is None or best_len < 200:
        return body
    # a nested candidate that holds most of the text is tighter (article inside main)
    for sel in CONTAINERS:
        for node in best.css(sel):
            if len(node.text(strip=True)) >= 0.6 * best_len:
                return node
    return best


def extract(html: str, url: str, rules: Rules | None = None) -> Page:
    """The page's title and its text and image slots in document order."""
    rules = rules or Rules()
    tree = LexborHTMLParser(html)
    # their text would count as content when containers are compared by text length
    tree.strip_tags(["script", "style", "noscript", "template", "svg"])
    doc_url, base = page_base(tree, url)
    title_node = tree.css_first("title")
    title = _WS.sub(" ", title_node.text()).strip() or None if title_node is not None else None
    html_node = tree.css_first("html")
    lang = (html_node.attributes.get("lang") or None) if html_node is not None else None
    root = main_container(tree) if rules.main_content else tree.body
    page = Page(doc_url, title, lang=lang)
    if root is None:
        return page
    walker = _Walker(base, rules, len(root.text(strip=True)))
    walker.article = int(root.tag == "article")
    walker.walk(root)
    walker.flush()
    page.slots = walker.slots
    return page
