"""mmdata.html on real saved pages (checked by eye) and on the constructs real pages use."""

from __future__ import annotations

from mmdata.html import Rules, best_srcset, extract


def _page(shared_data, name):
    html = (shared_data / "html" / name).read_text(encoding="utf-8", errors="replace")
    return extract(html, str(shared_data / "html" / name))


def test_verge_article_text_and_images_in_order(shared_data):
    page = _page(shared_data, "theverge.com.ios13.html")
    assert page.url.startswith("https://www.theverge.com/2019/7/3/20680681/")
    imgs = [s.url for s in page.images]
    # the three in-article images, in page order, each as its srcset candidate closest above 1024 px
    assert len(imgs) == 3
    assert "/1220x813/" in imgs[0] and imgs[0].endswith("/64664479/DSCF2931.0.jpg")
    assert "/1120x0/" in imgs[1] and imgs[1].endswith("/18278419/facetime_2__2_.jpg")
    assert imgs[2].endswith("/18278418/facetime__2_.jpg")
    kinds = [s.type for s in page.slots]
    text = "\n".join(page.texts)
    assert "iOS 13’s third developer beta includes a new feature that makes it look like" in text
    # the first image sits before the lead paragraph; the second after "Normally, video calls ..."
    lead = next(i for i, s in enumerate(page.slots) if s.text.startswith("iOS 13’s third developer beta"))
    normally = next(i for i, s in enumerate(page.slots) if s.text.startswith("Normally, video calls"))
    assert kinds.index("image") < lead < normally < [i for i, k in enumerate(kinds) if k == "image"][1]
    assert page.images[1].caption.startswith("Normally if you look at a portrait phone screen")


def test_nature_caption_and_lazy_squarespace(shared_data):
    page = _page(shared_data, "nature.com.telescope.html")
    first = page.images[0]
    assert first.url == "https://media.nature.com/lw800/magazine-assets/d41586-019-02790-3/d41586-019-02790-3_17178384.jpg"
    assert first.alt == "The giant FAST project."
    assert first.caption.startswith("FAST will enable highly sensitive measurements")
    assert any(t.startswith("The Five-hundred-meter Aperture Spherical Radio Telescope (FAST)") for t in page.texts)
    # befifty: the images are lazy-loaded (data-src only, no src)
    page = _page(shared_data, "befifty.montauk.html")
    urls = [s.url for s in page.images]
    assert len(urls) >= 20
    assert urls[0].startswith("https://images.squarespace-cdn.com/content/v1/576a60ce2e69cf8e27a0eebf/1560815149565-")
    assert "https://static1.squarespace.com/static/576a60ce2e69cf8e27a0eebf/t/596bb1921e5b6c3094cb7377/1560816768294/Montauk+Long+Island+USA" in urls


def test_boilerplate_removed_and_base_url(shared_data):
    page = _page(shared_data, "phys.org.tool.html")
    assert [s.url for s in page.images] == ["https://scx1.b-cdn.net/csz/news/800/2016/neanderthal.png"]
    assert any("Zandmotor beach near The Hague" in t for t in page.texts)
    html = """<html><head><base href="http://cdn.example.com/a/"></head><body>
      <header><img src="/logo.png"><nav>Home News</nav></header>
      <div class="cookie-banner">We use cookies to improve your experience on this website.</div>
      <main><article>
        <h1>Title here</h1>
        <p>First paragraph with <a href="x">a link</a> inside it.<img src="one.jpg" alt="One"></p>
        <figure><picture><source srcset="two.webp 1x, two@2x.webp 2x"><img alt="Two"></picture>
          <figcaption>Caption two</figcaption></figure>
        <p>Middle text.<br>Second line.</p>
        <img src="data:image/gif;base64,R0lGOD" data-src="//img.example.com/three.jpg">
        <img src="data:image/png;base64,AAAA">
        <a href="/big"><img srcset="four-400.jpg 400w, four-1600.jpg 1600w, four-1200.jpg 1200w"></a>
        <div class="share-bar"><img src="share.png"></div>
      </article><aside><img src="related.jpg"></aside></main>
      <footer>Copyright footer text</footer></body></html>"""
    page = extract(html, "http://www.example.com/post/1")
    assert [s.url for s in page.images] == [
        "http://cdn.example.com/a/one.jpg",
        "http://cdn.example.com/a/two@2x.webp",
        "http://img.example.com/three.jpg",
        "http://cdn.example.com/a/four-1200.jpg",
    ]
    assert page.images[1].caption == "Caption two"
    assert page.texts[:2] == ["Title here", "First paragraph with a link inside it."]
    assert "Middle text.\nSecond line." in page.texts
    assert not any("cookie" in t.lower() or "Copyright" in t or "Home" in t for t in page.texts)
    link = next(s for s in page.slots if s.type == "text" and "a link" in s.text)
    assert link.link_chars == len("a link")


def test_srcset_choice():
    assert best_srcset("a.jpg 320w, b.jpg 800w", 1024) == "b.jpg"
    assert best_srcset("a.jpg 320w, b.jpg 1100w, c.jpg 2000w", 1024) == "b.jpg"
    assert best_srcset("a.jpg, b.jpg 2x", 1024) == "b.jpg"
    assert best_srcset("data:image/png;base64,xx 1x", 1024) is None
    assert extract('<body><article><img srcset="s.jpg 400w, m.jpg 800w" src="x.jpg"></article></body>', "http://e.com/",
                   Rules(srcset_width=400)).images[0].url == "http://e.com/s.jpg"


# ---------------------------------------------------------------------------------------------
# one synthetic page per class of mistake (issue 20): each page mixes what must be kept with what
# must go, in the shapes real sites use


PROSE = ("The committee met on Tuesday to review the results of the survey, which covered more than two "
         "thousand households across the region and took almost a year to complete.")


def _urls(page):
    return [s.url.removeprefix("http://news.example.com") for s in page.images]


def test_aria_hidden_formulas_are_content_icons_are_not():
    html = f"""<html><head><title>Euler's identity, explained</title></head><body><article>
      <h1>Euler's identity, explained</h1>
      <p>The identity <span class="mwe-math-element"><span style="display: none;"><math alttext="e^{{i\\pi}}+1=0">
        <annotation>e^{{i\\pi}}+1=0</annotation></math></span><img src="/math/identity.svg" aria-hidden="true"
        alt="e^{{i\\pi}}+1=0" style="width:12ex"></span> links five constants: <img src="/math/e.svg" aria-hidden="true"
        alt="e">, <img src="/math/pi.svg" aria-hidden="true" alt="\\pi"> and three more. {PROSE}</p>
      <p>Raising <img src="/math/e.svg" aria-hidden="true" alt="e"> to an imaginary power turns it around the circle.</p>
      <p><a href="/share"><img src="/icons/share.png" aria-hidden="true" alt="share">Share this</a>
        <img src="/icons/star.png" aria-hidden="true" alt="star" width="16" height="16">
        <img src="/deco/divider.png" role="presentation" alt=""> <img src="/deco/flourish.png" aria-hidden="true"></p>
    </article></body></html>"""
    page = extract(html, "http://news.example.com/euler")
    # in place, the repeated formula twice; none of the icons
    assert _urls(page) == ["/math/identity.svg", "/math/e.svg", "/math/pi.svg", "/math/e.svg"]
    assert page.images[0].alt == "e^{i\\pi}+1=0"
    text = " ".join(page.texts)
    assert "annotation" not in text and "e^{i" not in text  # the hidden MathML stays hidden
    assert [s.type for s in page.slots[1:4]] == ["text", "image", "text"]  # the sentence flows around it


def test_noscript_copy_replaces_a_lazy_placeholder():
    html = f"""<html><head><title>Lazy pictures</title></head><body><article><h1>Lazy pictures</h1><p>{PROSE}</p>
      <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" class="lazyload" alt="A">
      <noscript><img src="/img/a-full.jpg" alt="A"></noscript>
      <p>{PROSE}</p>
      <img src="/img/b-60x40-blurred.jpg" class="js-progressive" alt="B">
      <noscript><img src="/img/b-1600.jpg" alt="B"></noscript>
      <noscript><img src="/img/c.jpg"></noscript><img class="thumb-image" data-src="/img/c-lazy.jpg" src="/static/ph.gif">
      <img data-src="/img/d.jpg" src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><noscript><img src="/img/d-copy.jpg"></noscript>
      <span class="frame"><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-cid="7"></span>
      <noscript><img src="/img/e.jpg" alt="E"></noscript>
      <p>{PROSE}</p>
      <noscript><img src="https://pixel.example.net/b.gif?v=noscript"></noscript>
      <noscript><img src="/img/f-chart.png" alt="Chart of the results"></noscript>
    </article></body></html>"""
    page = extract(html, "http://news.example.com/lazy")
    # each image once, in place: the copy when the <img> has only a placeholder src, the <img>
    # when it carries the real URL itself; a lone noscript pixel is not content, a described image is
    assert _urls(page) == ["/img/a-full.jpg", "/img/b-1600.jpg", "/img/c-lazy.jpg", "/img/d.jpg", "/img/e.jpg",
                           "/img/f-chart.png"]
    assert page.images[0].alt == "A"


def test_boilerplate_names_beyond_the_word_list_spelling():
    blocks = {
        "relatedContent": "camelCase",
        "jp-relatedposts": "plugin-prefixed compound",
        "right-rail": "rail column",
        "theiaStickySidebar": "camelCase compound",
        "mostPopularStories": "camelCase inside",
        "c-newsletter_signup_box": "underscore and dash",
    }
    boxes = "".join(f'<div class="{cls}"><img src="/thumb/{i}.jpg" alt="thumb"><p>{what}: {PROSE}</p></div>'
                    for i, (cls, what) in enumerate(blocks.items()))
    html = f"""<html><head><title>Budget vote delayed</title></head><body><main>
      <div class="l-sidebar-fixed l-article-body"><h1>Budget vote delayed</h1><p>{PROSE}</p>
        <figure class="e-image"><img src="/img/lead.jpg"><figcaption>The hall. Photo: A. Person</figcaption></figure>
        <p>{PROSE} {PROSE}</p>{boxes}<p>{PROSE}</p></div></main></body></html>"""
    page = extract(html, "http://news.example.com/budget")
    # the layout wrapper named "sidebar" holds the article: kept; the six boxes: gone
    assert _urls(page) == ["/img/lead.jpg"]
    assert not any(what in t for t in page.texts for what in blocks.values())
    assert "The hall. Photo: A. Person" in page.texts


def test_link_lists_removed_by_structure_not_name():
    cards = "".join(f'<div class="c7"><a href="/story-{i}"><img src="/t/{i}.jpg"><h3>Another story, number {i}</h3></a>'
                    f"<span>2 min read</span></div>" for i in range(4))
    logos = "".join(f'<li><a href="https://partner{i}.org/"><img src="/logos/p{i}.png" alt="p{i}"></a></li>' for i in range(5))
    gallery = "".join(f'<a href="/g/{i}.jpg"><img src="/g/{i}-thumb.jpg" alt="photo {i}"></a>' for i in range(3))
    links = "".join(f'<li><a href="/topic/{i}">Topic page number {i}</a></li>' for i in range(5))
    html = f"""<html><head><title>River cleanup draws volunteers</title></head><body><article>
      <h1>River cleanup draws volunteers</h1><p>{PROSE}</p>
      <figure><img src="/img/river.jpg"><figcaption>“<a href="https://flickr.com/p/1">River</a>” by
        <a href="/u/ann">Ann</a>, licensed <a href="https://creativecommons.org/licenses/by/2.0/">CC BY 2.0</a></figcaption></figure>
      <p>{PROSE}</p><div class="x1">{cards}</div><ul class="x2">{logos}</ul>
      <div class="x3">{gallery}</div><ul class="x4">{links}</ul><p>Finally, {PROSE}</p>
    </article></body></html>"""
    page = extract(html, "http://news.example.com/river")
    # teaser cards and the logo wall go (no class word names them); the lightbox gallery and the
    # figure whose caption carries three attribution links stay
    assert _urls(page) == ["/img/river.jpg", "/g/0.jpg".replace(".jpg", "-thumb.jpg"), "/g/1-thumb.jpg", "/g/2-thumb.jpg"]
    text = "\n".join(page.texts)
    assert "Another story" not in text and "Topic page number" not in text
    assert "licensed CC BY 2.0" in " ".join(text.split()) and text.endswith(f"Finally, {PROSE}")


def test_main_content_without_article_or_main():
    stories = "".join(f'<div class="item"><a href="/s{i}"><img src="/t/s{i}.jpg"></a><a href="/s{i}">Story {i} headline '
                      f"goes here</a></div>" for i in range(4))
    read = "".join(f'<li><a href="/r{i}"><img src="/t/r{i}.jpg" width="80" height="60">Most read {i}</a></li>' for i in range(5))
    html = f"""<html><head><title>Local bakery wins national bread prize | The Daily Example</title></head><body>
      <div class="top"><a href="/"><img src="/site.png" alt="The Daily Example"></a>
        <div class="links"><a href="/news">News</a> <a href="/sport">Sport</a> <a href="/culture">Culture</a></div></div>
      <div class="wrap"><div class="col-a">{stories}</div>
        <div class="col-b"><div class="kicker">Food</div><h1>Local bakery wins national bread prize</h1>
          <div class="by"><img src="https://secure.gravatar.com/avatar/ab12?s=64" alt="">By Jo Baker</div>
          <img src="/img/lead.jpg" alt="The bakery on Mill Street"><p>{PROSE}</p><p>{PROSE}</p>
          <img src="/img/loaves.jpg" alt="Loaves"><p>{PROSE}</p><p>{PROSE}</p></div>
        <div class="col-c"><h3>Most read</h3><ol>{read}</ol></div></div>
      <div class="bottom">© 2024 The Daily Example. <a href="/about">About</a> <a href="/contact">Contact</a>
        <a href="/privacy">Privacy</a></div></body></html>"""
    page = extract(html, "http://news.example.com/bakery")
    # the centre column: headline, lead image, body; not the story lists, logo, menu or footer
    assert _urls(page) == ["/img/lead.jpg", "/img/loaves.jpg"]
    text = "\n".join(page.texts)
    assert "Local bakery wins national bread prize" in text and "Story 1" not in text
    assert "Most read" not in text and "News" not in text and "Privacy" not in text
    assert page.slots[0].text in ("Food", "Local bakery wins national bread prize")


def test_same_image_twice_is_kept_in_both_places():
    html = f"""<html><head><title>Two views</title></head><body><article><h1>Two views</h1>
      <img src="/img/map.png" alt="Map"><p>{PROSE}</p><p>Here is the map again, for the second part.</p>
      <img src="/img/map.png" alt="Map"></article></body></html>"""
    page = extract(html, "http://news.example.com/views")
    assert _urls(page) == ["/img/map.png", "/img/map.png"]
    assert [s.type for s in page.slots] == ["text", "image", "text", "text", "image"]


def test_avatars_navbox_icons_and_next_stories_are_not_content():
    navbox = "".join(f'<tr><td><a href="/wiki/T{i}">Topic {i}</a> · <a href="/wiki/U{i}">Other {i}</a></td></tr>' for i in range(4))
    html = f"""<html><head><title>Kernel methods</title></head><body><article>
      <h1>Kernel methods</h1>
      <div class="entry-author"><img class="avatar avatar-96 photo" src="/wp/u/jane-96.jpg" width="96">Jane Doe</div>
      <table class="sidebar-box vertical-navbox"><tr><td><a href="/wiki/File:Kernel.svg"><img src="/up/Kernel.svg.png"
        width="220"></a></td></tr>{navbox}</table>
      <p>{PROSE}</p><figure><img src="/up/Decision_boundary.png" alt="A decision boundary"></figure><p>{PROSE}</p>
      <ol class="x"><li><img src="https://secure.gravatar.com/avatar/77?s=32" width="32"><p>{PROSE}</p></li>
        <li><img src="/u/profile.jpg" class="userpic"><p>Nice.</p></li></ol>
      <div class="next-story"><h1>Something else entirely happened today</h1><img src="/img/other.jpg"><p>{PROSE}</p></div>
    </article></body></html>"""
    page = extract(html, "http://news.example.com/kernel")
    assert _urls(page) == ["/up/Decision_boundary.png"]
    assert not any("Something else" in t or "Topic 1" in t for t in page.texts)
    # a newsletter box with its own <h1> after the body does not take the body with it
    html = f"""<html><head><title>Telescope opens</title></head><body><main><header><h1>Telescope opens</h1></header>
      <div class="col"><div class="body"><p>{PROSE}</p><img src="/img/dish.jpg"><p>{PROSE}</p></div>
      <div class="box"><h1>The Briefing</h1><p>Sign up for the daily briefing email.</p></div></div></main></body></html>"""
    page = extract(html, "http://news.example.com/telescope")
    assert _urls(page) == ["/img/dish.jpg"] and not any("Briefing" in t for t in page.texts)
