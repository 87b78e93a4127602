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
