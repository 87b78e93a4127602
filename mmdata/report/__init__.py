"""`mmdata report WORKDIR`: one self-contained HTML page of what a workdir's stages did.

Every number comes from the files the stages wrote (`mmdata.report.workdir` says which); plots
are matplotlib PNGs and sample images JPEG thumbnails, both inlined as data URIs, and the page's
Content-Security-Policy forbids loading anything else, so the file opens anywhere, offline, as is.
A section whose inputs a workdir lacks is left out with a note saying what it would have read.
"""

from __future__ import annotations

import time
from html import escape

from mmdata import fsio
from mmdata.report.sections import SECTIONS, Section
from mmdata.report.workdir import Workdir

__all__ = ["ReportError", "build", "render"]

REPORT = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header{background:#12355b;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header code{color:#cfe3ff}nav{padding:8px 28px;background:#e8eef5;font-size:13px}nav a{margin-right:14px;color:#12355b}
main{padding:8px 28px 40px;max-width:1400px}section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;
padding:12px 18px;margin:16px 0}h2{margin:4px 0 8px;font-size:18px}h3{font-size:15px;margin:14px 0 6px}
.note{color:#6b6b6b;font-style:italic}img.plot{max-width:100%;display:block;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.funnels{display:flex;flex-wrap:wrap;gap:10px 28px;align-items:flex-start}table.funnel caption{text-align:left;font-weight:600;padding:4px 0}
table.funnel tr.kept th,table.funnel tr.kept td{font-weight:600;border-top:1px solid #999}.path{font-weight:400;
color:#888;font-size:11px}.grid{display:flex;flex-wrap:wrap;gap:10px}.card{width:200px;border:1px solid #ddd;
border-radius:4px;padding:6px;font-size:12px;background:#fff}.card img.thumb{max-width:188px;max-height:160px;
display:block;margin:auto}.noimg{width:150px;height:90px;display:flex;align-items:center;justify-content:center;
text-align:center;background:#f0f0f0;color:#777;font-size:11px;margin:auto}.meta{margin:4px 0}.reason{color:#c62828;word-break:break-all}
.score{color:#1565c0}.cap{margin-top:3px}.vecap b{color:#1565c0}.err{color:#a33;font-size:11px;margin-top:3px}
.none{color:#aaa}.warn{color:#b26a00;font-size:12px;max-width:360px}.small{font-size:11px;color:#666}.cluster{display:flex;gap:8px;align-items:flex-start;
margin:8px 0;padding:6px;border-bottom:1px dashed #ddd}.dupcell{text-align:center;width:130px}
.dupcell img{max-width:120px;max-height:120px}.dupcell.keep{border-right:3px solid #2e7d32;padding-right:8px}
article.doc{border-left:3px solid #12355b;padding:4px 14px;margin:12px 0}
.slots{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}p.slot{max-width:260px;margin:0;font-size:13px}
img.docimg{max-width:200px;max-height:200px}figure.slot{margin:0}footer{color:#888;font-size:12px;padding:0 28px 20px}
"""


class ReportError(Exception):
    """A report that cannot be written, phrased for the user."""


def render(workdir: str) -> str:
    """The report page of `workdir` (local path or fsspec URL) as HTML text."""
    w = Workdir.open(workdir)
    sections: list[Section] = []
    for make in SECTIONS:
        try:
            sections.append(make(w))
        except Exception as e:  # named for the user: the section and what failed
            raise ReportError(f"{workdir}: the {make.__name__} section failed: {type(e).__name__}: {e}") from e
    nav = "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections if s.body is not None)
    body = []
    for s in sections:
        inner = s.body if s.body is not None else f'<p class="note omitted">Omitted: {escape(s.note or "")}.</p>'
        body.append(f'<section id="{s.id}" class="{"present" if s.body is not None else "absent"}">'
                    f"<h2>{escape(s.title)}</h2>{inner}</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>mmdata report: {escape(workdir)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>mmdata report</h1>workdir <code>{escape(workdir)}</code> · {len(w.steps)} steps · "
            f"written {stamp}</header><nav>{nav}</nav><main>{''.join(body)}</main>"
            f"<footer>Every number on this page is read from the files the stages wrote under the workdir "
            f"(stats, funnels, sidecars, logs); nothing is recomputed another way.</footer></body></html>")


def build(workdir: str, out: str | None = None) -> str:
    """Write the report of `workdir` to `out` (default `{workdir}/report.html`), atomically; returns `out`."""
    if not fsio.exists(workdir):
        raise ReportError(f"{workdir}: no such workdir")
    out = out or fsio.join(workdir, REPORT)
    page = render(workdir)
    fsio.atomic_write(out, page.encode("utf-8"))
    return out
