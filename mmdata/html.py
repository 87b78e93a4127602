"""HTML -> an ordered list of text and image slots (OBELICS-style DOM simplification and walk).

The page is parsed with lexbor (selectolax), which is far faster than the lxml-based extractors.
Then:

1. the **headline** is found: the `<h1>` (else `<h2>`) whose words match the page's `og:title` /
   `<title>` best. It anchors every later decision: the block holding it is never boilerplate;
   another story's `<h1>` marks a block as not this article (infinite-scroll pages append the next
   stories inside the same `<article>`).
2. the **main container** is chosen: the largest of `<article>`, `<main>`, `[role=main]`,
   `[itemprop=articleBody]`, else `<body>`; then, the way readability and resiliparse decide, the
   walk descends into the child that holds most (`content_share`) of the paragraph text (text
   outside links), as long as that child still holds the headline. A page without semantic
   containers ends at the column holding title, lead image and body, not at `<body>`.
3. **boilerplate** is removed by tag (script, nav, footer, forms, aside, ...), by visibility
   (`hidden`, `display:none`, screen-reader-only classes), by the words of class and id names
   (split at `-`, `_` and camelCase, and as prefix or suffix of compounds: `relatedContent`,
   `jp-relatedposts`, `theiaStickySidebar`, `right-rail`) and, since a word list always misses
   the next site, by **structure**: a block with `min_links` or more links whose text is mostly
   link text (menus, teaser and "more stories" lists, tag clouds, pagination) or whose links are
   bare images pointing to other sites (logo walls, social icons). A block holding the headline or
   `boilerplate_max_share` of the container's text is never removed (layout wrappers).
4. the container is walked in document order. Block elements end a paragraph; inline text joins
   it; `<br>` is a line break. An image ends the paragraph before it and becomes an image slot;
   every occurrence is a slot (an image used twice is downloaded once, later).

Image slots take their URL from srcset (the best candidate: the smallest at least `srcset_width`
wide, else the largest), then lazy-load attributes, then `src`; `data:` URIs are skipped;
`<picture>` falls back to its `<source>` srcsets; everything is resolved against `<base href>`
(when it is a real URL) or the page URL. A lazy `<img>` and its `<noscript>` copy are one image:
the copy is used when the `<img>` has nothing but a `src` (a `data:` URI or a small blurred
placeholder that scripts replace). Not content: decorative images (`aria-hidden` or
`role=presentation` without alt text, tiny or beside a link's own label; an `aria-hidden` formula
with its TeX as alt is content), tracking pixels (a declared side of 2 px or less), author and
comment avatars. An image inside `<figure>` gets the `<figcaption>` text as its `caption`; the
caption also stays in the text flow, where a reader sees it. Each text slot keeps the number of
its characters that were link text, so navigation-like blocks can be filtered later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

# Dropped with their whole subtree: never article content.
DROP_TAGS = frozenset(
    ["script", "style", "template", "svg", "canvas", "iframe", "object", "embed", "form", "button", "input", "select", "textarea", "nav", "footer", "aside", "dialog", "menu", "head", "link", "meta", "map", "audio", "video"]
)
# End the current paragraph (on entry and on exit).
BLOCK_TAGS = frozenset(
    ["p", "div", "section", "article", "main", "header", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "td", "th", "blockquote", "pre", "figure", "figcaption", "hr", "address", "details", "summary", "center", "caption", "body", "html"]
)
HEADINGS = frozenset(["h1", "h2", "h3", "h4", "h5", "h6"])
CONTAINERS = ("article", "main", '[role="main"]', '[itemprop="articleBody"]')
# text blocks whose words measure where the article's prose is
PROSE = "p, pre, blockquote"
_PROSE_TAGS = frozenset(["p", "pre", "blockquote"])
SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "srcset")
LAZY_ATTRS = (
    "data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src",
    "data-full-src", "data-orig-file", "data-image", "src",
)
IMAGE_FILE = re.compile(r"\.(?:jpe?g|png|gif|webp|avif|bmp|tiff?)(?:$|[?#])", re.IGNORECASE)
_WS = re.compile(r"\s+")
_WORDS = re.compile(r"\w+")
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden")
# utility classes that hide an element from sight (text for screen readers only)
_SHOWN = re.compile(r"(?:^|\s)d-(?:sm|md|lg|xl|xxl)-(?!none)")
_SR_ONLY = re.compile(r"(?:^|\s)(?:sr-only|visually-hidden|screen-reader-text|screen-reader-only|u-hidden-text|hidden-text)(?:$|\s)")
# class/id name -> words: `-`/`_`/digits separate, and so does a lower-to-upper case change
_NAME_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
# an <img> named so is a picture of a commenter or author, or an icon
_AVATAR = frozenset(["avatar", "avatars", "gravatar", "userpic", "profilepic"])
_DECOR = _AVATAR | frozenset(["icon", "icons", "emoji", "spinner", "loader"])
# "authored", "shared": a word with an ending is not the compound it starts
_ENDINGS = frozenset(["ed", "ing", "ity"])


@dataclass
class Rules:
    """Extraction knobs (config.ExtractConfig mirrors these at the YAML edge)."""

    # words of class/id names that mark a block as boilerplate; a word matches a whole name part
    # (or the part with an `s` added), and a word of 5+ letters also the start or end of one
    boilerplate: tuple[str, ...] = (
        "cookie", "consent", "gdpr", "newsletter", "subscribe", "subscription", "signup", "share", "sharing",
        "social", "related", "recommended", "recommend", "recirc", "trending", "popular", "comment", "sidebar",
        "rail", "widget", "breadcrumb", "menu", "navbar", "navbox", "nav", "promo", "advert", "ad",
        "sponsored", "sponsor", "popup", "modal", "footer", "masthead", "paywall", "outbrain", "taboola",
        "byline", "author", "tags", "pagination", "pager", "toc", "disqus", "avatar", "logo", "references",
    )
    srcset_width: int = 1024
    main_content: bool = True
    # a class like "l-sidebar-fixed" can name the layout wrapper of the article itself: an element
    # holding this share of the container's text is content, whatever its class or links say
    boilerplate_max_share: float = 0.5
    # main container: descend into a child holding this share of the container's prose
    content_share: float = 0.8
    # a block with min_links links or more, whose link text is this share of its text, is a link list
    max_link_share: float | None = 0.5
    min_links: int = 3

    def __post_init__(self):
        words = [w.lower() for w in self.boilerplate]
        self._exact = frozenset(words) | frozenset(w + "s" for w in words)
        long = "|".join(sorted({w for w in words if len(w) >= 5}, key=len, reverse=True))
        self._prefix = re.compile(rf"(?:{long})(.+)") if long else None
        self._suffix = re.compile(rf".(?:{long})s?") if long else None
        self._seen: dict[str, bool] = {}

    def boilerplate_name(self, names: str) -> bool:
        hit = self._seen.get(names)  # class names repeat across a page and a site
        if hit is None:
            if len(self._seen) > 100_000:
                self._seen.clear()
            hit = self._seen[names] = self._match(names)
        return hit

    def _match(self, names: str) -> bool:
        for part in _NAME_PART.findall(names):
            part = part.lower()
            if part in self._exact:
                return True
            if self._prefix is not None:
                m = self._prefix.fullmatch(part)
                if (m and m.group(1) not in _ENDINGS) or self._suffix.fullmatch(part):
                    return True
        return False

    def is_boilerplate(self, node: LexborNode) -> bool:
        attrs = node.attributes
        names = f"{attrs.get('class') or ''} {attrs.get('id') or ''}"
        return bool(names.strip()) and self.boilerplate_name(names)


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


def image_url(attrs: dict, base: str, rules: Rules, sources: list[dict] = (), lazy_only: bool = False) -> str | None:
    """The URL to fetch for an <img>; `lazy_only`: only what a script would swap in (srcset and
    lazy-load attributes), not a plain `src`."""
    for name in SRCSET_ATTRS:
        if attrs.get(name):
            best = best_srcset(attrs[name], rules.srcset_width)
            if best and (url := resolve(best, base)):
                return url
    for name in LAZY_ATTRS[:-1] if lazy_only else LAZY_ATTRS:
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
# headline, main container and the page's link structure


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def headline(tree: LexborHTMLParser, title: str | None) -> LexborNode | None:
    """The article's own heading: the h1 or h2 whose words match og:title or <title> best (Dice
    coefficient; a site name in an <h1> matches a few title words but not the title)."""
    node = tree.css_first('meta[property="og:title"]')
    refs = [set(_words(t)) for t in ((node.attributes.get("content") or "") if node is not None else "", title or "")]
    refs = [r for r in refs if r]
    best, best_score = None, 0.4
    h1s = tree.css("h1")
    for h in h1s + tree.css("h2"):
        words = set(_words(h.text()))
        if not words:
            continue
        score = max((2 * len(words & r) / (len(words) + len(r)) for r in refs), default=0.0)
        score += 0.05 * (h.tag == "h1")
        if score > best_score:
            best, best_score = h, score
    if best is not None:
        return best
    texts = [h for h in h1s if h.text(strip=True)]
    return texts[0] if len(texts) == 1 else None


def _ancestors(node: LexborNode | None, stop: int | None = None) -> list[int]:
    out = []
    node = node.parent if node is not None else None
    while node is not None and node.mem_id != stop:
        out.append(node.mem_id)
        node = node.parent
    return out


class _Chains:
    """Each element's ancestors under the container (mem_ids, nearest first), built once per
    element and shared by its descendants: links and paragraphs cluster, so most of a chain is
    known when the next one is asked for. `gone`: the element or an ancestor is dropped anyway."""

    def __init__(self, root: LexborNode, rules: Rules):
        self.stop = root.parent.mem_id if root.parent is not None else None
        self.rules = rules
        self.memo: dict[int, tuple[int, ...]] = {}
        self.gone: dict[int, bool] = {}

    def above(self, node: LexborNode) -> tuple[tuple[int, ...], bool]:
        """(the ancestors of node, whether one of them is dropped)."""
        path = []
        n = node.parent
        while n is not None and n.mem_id != self.stop and n.mem_id not in self.memo:
            path.append(n)
            n = n.parent
        known = n is not None and n.mem_id != self.stop
        chain = self.memo[n.mem_id] if known else ()
        gone = self.gone[n.mem_id] if known else False
        for x in reversed(path):
            mid = x.mem_id
            chain = (mid, *chain)
            gone = gone or _dropped(x, self.rules)
            self.memo[mid], self.gone[mid] = chain, gone
        parent = node.parent
        if parent is None or parent.mem_id == self.stop:
            return (), False
        return self.memo[parent.mem_id], self.gone[parent.mem_id]


def _prose(root: LexborNode, chains: _Chains) -> dict[int, int]:
    """Characters of prose (text outside links in p/pre/blockquote) held under each element, not
    counting prose inside what the walk drops anyway (forms, asides, hidden or boilerplate blocks)."""
    held: dict[int, int] = {}
    for p in root.css(PROSE):
        n = len(p.text(strip=True)) - sum(len(a.text(strip=True)) for a in p.css("a"))
        if n <= 0:
            continue
        chain, gone = chains.above(p)
        if gone:
            continue
        for mid in (p.mem_id, *chain):
            held[mid] = held.get(mid, 0) + n
    return held


def _dropped(node: LexborNode, rules: Rules) -> bool:
    """Removed by tag, visibility or name (the walk's first checks)."""
    if node.tag in DROP_TAGS:
        return True
    attrs = node.attributes
    return ("hidden" in attrs or bool(_HIDDEN.search(attrs.get("style") or "")) or _hidden_class(attrs.get("class"))
            or rules.is_boilerplate(node))


def _hidden_class(names: str | None) -> bool:
    if not names:
        return False
    if _SR_ONLY.search(names):
        return True
    # Bootstrap's d-none hides an element unless a breakpoint class shows it again
    return "d-none" in names.split() and not _SHOWN.search(names)


@dataclass
class _Links:
    """Per element under the container: its links (not links to image files) and their characters,
    its items (children holding links: list entries, cards, or the links themselves), and its
    images linked to other sites."""

    count: dict[int, int] = field(default_factory=dict)
    chars: dict[int, int] = field(default_factory=dict)
    items: dict[int, int] = field(default_factory=dict)
    images_out: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, root: LexborNode, host: str, chains: _Chains) -> _Links:
        out = cls()
        count, chars, items, images_out = out.count, out.chars, out.items, out.images_out
        last: dict[int, int] = {}  # the child of an element on the path to its latest link
        for a in root.css("a[href]"):
            href = (a.attributes.get("href") or "").strip()
            if IMAGE_FILE.search(href):
                continue  # a lightbox link to the image itself is not navigation
            n = len(a.text(strip=True))
            away = 0
            if not n and a.css_first("img") is not None:
                # to another site, or mail: social icons and logo walls, not a gallery's own pages
                parts = urlsplit(href)
                away = int(parts.scheme in ("mailto", "tel") or bool(parts.hostname and parts.hostname.removeprefix("www.") != host))
            child = a.mem_id
            for mid in chains.above(a)[0]:
                count[mid] = count.get(mid, 0) + 1
                chars[mid] = chars.get(mid, 0) + n
                if last.get(mid) != child:
                    last[mid] = child
                    items[mid] = items.get(mid, 0) + 1
                if away:
                    images_out[mid] = images_out.get(mid, 0) + 1
                child = mid
        return out


def _main(tree: LexborHTMLParser, head: LexborNode | None, rules: Rules, host: str = ""
          ) -> tuple[LexborNode | None, dict[int, int], _Links]:
    body = tree.body
    if body is None:
        return None, {}, _Links()
    best, best_len = None, 0
    for sel in CONTAINERS:
        for node in tree.css(sel):
            n = len(node.text(strip=True))
            if n > best_len:
                best, best_len = node, n
    if best is None or best_len < 200 or (_listing(best) and not _inside(head, best)):
        best = body  # no container, or one entry of a list of posts: decide from the whole page
    else:
        # a nested candidate that holds most of the text is tighter (article inside main)
        for sel in CONTAINERS:
            nested = next((n for n in best.css(sel) if len(n.text(strip=True)) >= 0.6 * best_len), None)
            if nested is not None:
                best = nested
                break
        # the title just outside the container (a page header above an <article>): take the
        # element holding both when that adds little besides
        if head is not None and not _inside(head, best):
            both = head.parent
            while both is not None and not _inside(best, both):
                both = both.parent
            if (both is not None and both.tag not in ("body", "html")
                    and len(both.text(strip=True)) <= 1.5 * len(best.text(strip=True)) + 300):
                best = both
    chains = _Chains(best, rules)
    held = _prose(best, chains)
    links = _Links.of(best, host, chains)
    share, total = rules.content_share, held.get(best.mem_id, 0)
    anchor = set(_ancestors(head)) | ({head.mem_id} if head is not None else set())

    def plain(n: LexborNode) -> int:  # text outside links: what a list of links does not have
        return len(n.text(strip=True)) - links.chars.get(n.mem_id, 0)

    node = best
    while total >= 200:
        nxt = next((c for c in node.iter() if held.get(c.mem_id, 0) >= share * total), None)
        if nxt is None or nxt.tag in _PROSE_TAGS or (node.mem_id in anchor and nxt.mem_id not in anchor):
            break
        # most of the prose, but not most of the text: the rest is lists, tables or divs of
        # content (a publication list beside the "About" paragraphs), so stay
        if 2 * plain(nxt) < plain(node):
            break
        node, total = nxt, held[nxt.mem_id]
    return node, held, links


def _listing(node: LexborNode) -> bool:
    """One of several sibling <article>s (a list of posts), not the page's article."""
    parent = node.parent
    if node.tag != "article" or parent is None:
        return False
    return sum(c.tag == "article" for c in parent.iter()) >= 3


def _inside(node: LexborNode | None, top: LexborNode) -> bool:
    while node is not None:
        if node.mem_id == top.mem_id:
            return True
        node = node.parent
    return False


def main_container(tree: LexborHTMLParser, head: LexborNode | None = None, rules: Rules | None = None) -> LexborNode | None:
    """The element holding the article: see the module docstring, step 2."""
    return _main(tree, head, rules or Rules())[0]


def _stories(root: LexborNode, head: LexborNode | None, anchor: set[int], held: dict[int, int]) -> set[int]:
    """Blocks that begin with another story's <h1>: from that heading up to the largest ancestor
    with (almost) no prose before it, and not holding our headline."""
    out: set[int] = set()
    if head is None or head.tag != "h1":
        return out
    for h in root.css("h1"):
        if h.mem_id == head.mem_id or not h.text(strip=True):
            continue
        node, before, top = h, 0, None
        while node is not None and node.mem_id != root.mem_id and node.mem_id not in anchor:
            top = node
            sib = node.prev
            while sib is not None:
                before += held.get(sib.mem_id, 0)
                sib = sib.prev
            if before >= 100:
                break
            node = node.parent
        if top is not None:
            out.add(top.mem_id)
    return out


def _element_sibling(node: LexborNode, forward: bool) -> LexborNode | None:
    node = node.next if forward else node.prev
    while node is not None and (node.tag in ("-comment", None) or (node.tag == "-text" and not node.text(deep=False).strip())):
        node = node.next if forward else node.prev
    return node if node is not None and node.tag not in ("-text", "-comment") else None


def _noscript_pairs(root: LexborNode, rules: Rules, base: str) -> tuple[set[int], set[int], set[int]]:
    """A lazy <img> and its <noscript> copy beside it are one image: which of the two to skip.

    The <img> wins when it carries what a script would load (srcset, data-src, ...); otherwise its
    `src` is a placeholder (a data: URI, a blurred 60-px thumbnail) and the copy is the image."""
    skip_img: set[int] = set()
    skip_copy: set[int] = set()
    paired: set[int] = set()
    for ns in root.css("noscript"):
        copy = ns.css("img")
        if len(copy) != 1:
            continue
        for forward in (False, True):
            sib = _element_sibling(ns, forward)
            if sib is None or sib.tag == "noscript":
                continue
            imgs = [sib] if sib.tag == "img" else sib.css("img")
            if len(imgs) != 1:
                continue
            img = imgs[0]
            sources = [s.attributes for s in img.parent.css("source")] if img.parent is not None and img.parent.tag == "picture" else []
            if image_url(img.attributes, base, rules, sources, lazy_only=True):
                skip_copy.add(ns.mem_id)
            else:
                skip_img.add(img.mem_id)
                paired.add(ns.mem_id)
            break
    return skip_img, skip_copy, paired


def _declared_small(attrs: dict, side: int) -> bool:
    w, h = _int(attrs.get("width")), _int(attrs.get("height"))
    return (w is not None and w <= side) or (h is not None and h <= side)


# ---------------------------------------------------------------------------------------------
# the walk


class _Walker:
    def __init__(self, root: LexborNode, base: str, rules: Rules, head: LexborNode | None,
                 held: dict[int, int], links: _Links):
        self.base, self.rules = base, rules
        root_chars = len(root.text(strip=True))
        self.max_boilerplate = rules.boilerplate_max_share * root_chars
        self.slots: list[Slot] = []
        self.buf: list[str] = []
        self.link_chars = 0
        self.in_link = 0
        self.link_label = 0  # characters of text in the links around the current node
        self.heading = 0
        self.article = 0  # a <header> inside an article holds its title and lead image; elsewhere it is site chrome
        stop = root.parent.mem_id if root.parent is not None else None
        self.anchor = set(_ancestors(head, stop)) | ({head.mem_id} if head is not None else set())
        # another story's headline: blocks holding one (and not ours) are not this article
        self.foreign = _stories(root, head, self.anchor, held)
        self.links = links
        self.skip_img, self.skip_copy, self.paired = _noscript_pairs(root, rules, base)

    def flush(self) -> None:
        if self.buf:
            text = "".join(self.buf)
            lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
            text = "\n".join(line for line in lines if line)
            if text:
                self.slots.append(Slot("text", text=text, link_chars=min(self.link_chars, len(text)),
                                       heading=self.heading > 0))
        self.buf, self.link_chars = [], 0

    def link_list(self, node: LexborNode) -> bool:
        """Menus, teaser lists, tag clouds, logo walls: a run of items that are mostly links (an
        attribution caption's few links sit in one item and do not count)."""
        mid = node.mem_id
        links = self.links.count.get(mid, 0)
        if self.rules.max_link_share is None or links < self.rules.min_links or self.links.items[mid] < 2:
            return False
        chars = self.links.chars.get(mid, 0)
        if chars:
            text = len(node.text(strip=True))
            if chars < self.rules.max_link_share * text or text >= self.max_boilerplate:
                return False
            # links inside a sentence ("“River” by Ann, licensed CC BY") are prose, not a list
            own = " ".join(c.text(deep=False) for c in node.iter(include_text=True) if c.tag == "-text")
            return len(_WORDS.findall(own)) < 2
        out = self.links.images_out.get(mid, 0)
        return 2 * out >= links and len(node.text(strip=True)) <= 5 * out

    def decorative(self, node: LexborNode, attrs: dict) -> bool:
        if _declared_small(attrs, 2):
            return True  # tracking pixel
        names = f"{attrs.get('class') or ''} {attrs.get('id') or ''}"
        if any(p.lower() in _DECOR for p in _NAME_PART.findall(names)):
            return True
        if attrs.get("aria-hidden") == "true" or attrs.get("role") in ("presentation", "none"):
            # hidden from screen readers: an icon, unless it renders content with its own alt text
            # (a formula whose MathML sits beside it)
            alt = (attrs.get("alt") or "").strip()
            return not alt or self.link_label > 0 or _declared_small(attrs, 48)
        return False

    def image(self, node: LexborNode, caption: str | None, sources: list[dict] = ()) -> None:
        attrs = node.attributes
        if node.mem_id in self.skip_img or self.decorative(node, attrs):
            return
        url = image_url(attrs, self.base, self.rules, sources)
        if url is None:
            return
        parts = urlsplit(url)
        if (parts.hostname or "").endswith("gravatar.com") or any(p in _AVATAR for p in _words(parts.path)):
            return
        last = self.slots[-1] if self.slots and not self.buf else None
        if last is not None and last.type == "image" and last.url == url:
            return  # the same image twice in a row: a lazy copy not paired above
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
            if attrs:
                cls = attrs.get("class")
                if "hidden" in attrs or ("style" in attrs and _HIDDEN.search(attrs["style"] or "")) or _hidden_class(cls):
                    continue
            mid = child.mem_id
            if mid in self.foreign:
                continue
            if mid not in self.anchor:
                if (attrs and ("id" in attrs or cls) and self.rules.boilerplate_name(f"{cls or ''} {attrs.get('id') or ''}")
                        and len(child.text(strip=True)) < self.max_boilerplate):
                    continue
                if self.link_list(child):
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
            elif tag == "noscript":
                # what browsers without scripts show: the image of a lazy <img> beside it (paired
                # above); alone, mostly tracking pixels and ad fallbacks, so only a described or
                # sizeable image
                if mid in self.skip_copy:
                    continue
                for img in child.css("img"):
                    a = img.attributes
                    sized = _int(a.get("width")) or _int(a.get("height"))
                    if mid in self.paired or (a.get("alt") or "").strip() or (sized and not _declared_small(a, 99)):
                        self.image(img, caption)
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
                label = len(child.text(strip=True))
                self.link_label += label
                self.walk(child, caption)
                self.link_label -= label
                self.in_link -= 1
            else:
                self.walk(child, caption)


_DEFAULT = Rules()


def extract(html: str, url: str, rules: Rules | None = None) -> Page:
    """The page's title and its text and image slots in document order."""
    rules = rules or _DEFAULT
    tree = LexborHTMLParser(html)
    # their text would count as content when containers are compared by text length
    tree.strip_tags(["script", "style", "template", "svg"])
    doc_url, base = page_base(tree, url)
    title_node = tree.css_first("title")
    title = _WS.sub(" ", title_node.text()).strip() or None if title_node is not None else None
    html_node = tree.css_first("html")
    lang = (html_node.attributes.get("lang") or None) if html_node is not None else None
    page = Page(doc_url, title, lang=lang)
    head = headline(tree, title)
    host = (urlsplit(doc_url).hostname or "").removeprefix("www.")
    if rules.main_content:
        root, held, links = _main(tree, head, rules, host)
    else:
        root = tree.body
        chains = _Chains(root, rules) if root is not None else None
        held = _prose(root, chains) if root is not None else {}
        links = _Links.of(root, host, chains) if root is not None else _Links()
    if root is None:
        return page
    walker = _Walker(root, base, rules, head, held, links)
    walker.article = int(root.tag == "article")
    walker.walk(root)
    walker.flush()
    page.slots = walker.slots
    return page
