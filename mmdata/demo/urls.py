"""Virtual hosts and the fault-URL scheme of the demo web.

Every demo URL is an absolute URL on a reserved ``.test`` host that never resolves, so a corpus on
disk does not depend on the port its server happens to get. The server (``mmdata.demo.server``)
dispatches on the ``Host`` header (port stripped). Two ways to reach it:

* ``connect_to``: send the request to ``127.0.0.1:PORT`` with the URL's own ``Host`` header
  (like ``curl --connect-to``).
* ``/_host/`` form: ``http://127.0.0.1:PORT/_host/<host><path>?<query>``, for tools that cannot
  set ``Host``; :func:`via_local` rewrites a URL into it. Relative redirects keep working in
  this form because the server only ever sends relative ``Location`` headers.

Fault scheme: ``http://<host>/fault/<mode>/<name>?<params>``, built by :func:`fault_url`. The
body served by the non-failing modes is the corpus file stored under the same path, or a small
default image when there is none (so any ``<name>`` works). Modes and their parameters:

==================  ========================================================================
``404`` ``500``     answer with that status.
``429`` ``503``     that status; ``retry_after=S`` adds ``Retry-After: S``.
``slow_first_byte`` wait ``delay`` seconds (default 3) before the status line, then the image.
``slow_drip``       the image in ``chunks`` pieces (default 20) spread over ``seconds`` (default 3).
``truncated``       ``Content-Length`` of the whole image, half of it sent, connection closed.
``wrong_type``      the image bytes with ``Content-Type: text/html`` (or ``type=...``).
``not_image``       200, ``Content-Type: image/jpeg``, an HTML error page as body.
``redirect``        ``hops`` (default 1) relative redirects (status ``code``, default 302), then
                    the image; with ``to=URL``, one redirect to that (absolute) URL.
``redirect_loop``   redirects forever between ``?leg=0`` and ``?leg=1``.
``bomb``            a small PNG declaring ``side`` x ``side`` pixels (default 20000: 400 Mpx,
                    beyond Pillow's decompression-bomb limit).
``oversized``       a body of ``mb`` MiB (default 64) starting with the image; ``chunked=1``
                    leaves out ``Content-Length``.
``gzip_bomb``       ``Content-Encoding: gzip``: a small body that inflates to ``mb`` MiB of zeros
                    (default 64); its ``Content-Length`` is the small size.
``noai``            the image with ``X-Robots-Tag: noai, noimageai`` (or ``value=...``).
==================  ========================================================================

Any mode takes ``after=N``: the first N requests of that exact URL fail as above, later ones get
the plain image (a 429/503 that succeeds on retry). The server counts attempts per URL (host,
path and query), so tests that use ``after`` should give each URL its own name.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit

DEMO_DOMAIN = "demo.mmdata.test"
IMAGE_HOSTS = tuple(f"img{i}.{DEMO_DOMAIN}" for i in range(1, 9))
NEWS_HOST = f"news.{DEMO_DOMAIN}"
TRACK_HOST = f"track.{DEMO_DOMAIN}"
ADS_HOST = f"ads.{DEMO_DOMAIN}"
DEMO_HOSTS = frozenset((*IMAGE_HOSTS, NEWS_HOST, TRACK_HOST, ADS_HOST))
LOCAL_HOSTS = frozenset(("127.0.0.1", "localhost", "::1"))

# One host keeps part of its site away from crawlers so robots.txt support can be tested.
ROBOTS_DISALLOW = {IMAGE_HOSTS[-1]: "/private/"}

PAGES_PREFIX = "/articles/"
FAULT_PREFIX = "/fault/"
LOCAL_PREFIX = "/_host/"

STATUS_MODES = ("404", "500", "429", "503")
FAULT_MODES = STATUS_MODES + (
    "slow_first_byte",
    "slow_drip",
    "truncated",
    "wrong_type",
    "not_image",
    "redirect",
    "redirect_loop",
    "bomb",
    "oversized",
    "gzip_bomb",
    "noai",
)
# Modes whose bytes are a valid image that a patient, redirect-following downloader gets. `noai`
# is not among them: a downloader that honours X-Robots-Tag (mmdata's default) must not keep it.
RECOVERABLE_MODES = frozenset(("slow_first_byte", "slow_drip", "wrong_type", "redirect"))


def fault_url(host: str, mode: str, name: str | int, **params) -> str:
    """URL on ``host`` that fails in ``mode``; an int ``name`` becomes ``<name>.jpg``."""
    if mode not in FAULT_MODES:
        raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
    if isinstance(name, int):
        name = f"{name}.jpg"
    query = f"?{urlencode(params)}" if params else ""
    return f"http://{host}{FAULT_PREFIX}{mode}/{name}{query}"


def expect_ok(mode: str | None, params: dict | None = None) -> bool:
    """Whether a correct downloader (retries, follows redirects, no tight timeout, honours
    X-Robots-Tag) ends with an image."""
    if mode is None:
        return True
    return mode in RECOVERABLE_MODES or "after" in (params or {})


def via_local(url: str, base: str) -> str:
    """Rewrite ``url`` to the ``/_host/`` form on the server at ``base`` (``http://127.0.0.1:PORT``)."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{base.rstrip('/')}{LOCAL_PREFIX}{parts.hostname}{parts.path or '/'}{query}"


def via_local_all(urls, base: str) -> list[str]:
    return [via_local(u, base) for u in urls]


def site_path(url: str) -> str:
    """Where a demo URL's file lives under a site folder: ``<host><path>``, query dropped."""
    parts = urlsplit(url)
    return f"{parts.hostname}{parts.path}"


def robots_txt(host: str) -> str:
    blocked = ROBOTS_DISALLOW.get(host)
    rule = f"Disallow: {blocked}" if blocked else "Allow: /"
    return f"User-agent: *\n{rule}\n"


_IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|webp|svg|avif|bmp|ico)(\b|$)", re.IGNORECASE)
_OTHER_EXT = re.compile(r"\.(html?|php|aspx?|jsp|js|css|json|xml|txt|pdf)$", re.IGNORECASE)
_IMAGE_SEGMENTS = frozenset(
    (
        "img",
        "image",
        "images",
        "media",
        "thumbor",
        "svg",
        "png",
        "jpg",
        "photos",
        "static",
        "uploads",
        "avatar",
        "thumb",
        "thumbs",
    )
)


def looks_like_image(path_and_query: str) -> bool:
    """Heuristic for URLs of real pages (CDN paths often hide the extension or put it mid-path)."""
    if _IMAGE_EXT.search(path_and_query):
        return True
    path = path_and_query.split("?")[0]
    if _OTHER_EXT.search(path):
        return False
    return any(seg.lower() in _IMAGE_SEGMENTS for seg in path.split("/"))
