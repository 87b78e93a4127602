"""Plots as PNG data URIs (matplotlib's Agg canvas, no pyplot state), and image thumbnails."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

KEPT, DROPPED, ACCENT, MUTED = "#2e7d32", "#c62828", "#1565c0", "#9e9e9e"
PALETTE = ("#c62828", "#ef6c00", "#f9a825", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#283593", "#558b2f",
           "#5d4037", "#d84315", "#37474f")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(width: float = 7.0, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return data_uri(buf.getvalue(), "image/png")


def thumbnail(data: bytes, size: int = 160) -> str | None:
    """A JPEG data URI of the image scaled to fit `size`, or None when it does not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except Exception:  # noqa: BLE001 (a thumbnail that cannot be made is shown as text)
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


def funnel_bars(funnels: Sequence[tuple[str, dict]]) -> str:
    """One horizontal bar per funnel: kept, then each drop reason, as segments of the records in."""
    def short(reason: str) -> str:
        return reason.split(":")[-1] if ":" in reason else reason

    n_codes = len({short(r) for _, f in funnels for r, _ in f["dropped"]}) + 1
    # tall enough for the legend too (one 7-pt line per reason), or constrained layout collapses the axes
    fig = figure(8.0, max(0.55 * len(funnels) + 1.4, 0.16 * n_codes + 0.8))
    ax = fig.add_subplot()
    colors: dict[str, str] = {}
    labels = []
    for row, (name, f) in enumerate(funnels):
        labels.append(name)
        ax.barh(row, f["kept"], color=KEPT, label="kept" if row == 0 else None)
        left = f["kept"]
        for reason, n in f["dropped"]:
            code = short(reason)
            new = code not in colors
            colors.setdefault(code, PALETTE[len(colors) % len(PALETTE)])
            ax.barh(row, n, left=left, color=colors[code], label=code if new else None)
            left += n
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("records")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return png(fig)


def score_histogram(kept, dropped, others, threshold: float | None, label_others: str) -> str:
    fig = figure()
    ax = fig.add_subplot()
    import numpy as np

    values = [v for v in (kept, dropped, others) if len(v)]
    lo = min(float(np.min(v)) for v in values) if values else -1.0
    hi = max(float(np.max(v)) for v in values) if values else 1.0
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 50)
    ax.hist([kept, dropped, others], bins=bins, stacked=True, color=[KEPT, DROPPED, MUTED],
            label=["kept", "low_clip_score", label_others])
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4f}")
    ax.set_xlabel("CLIP cosine (image, AltText)")
    ax.set_ylabel("records")
    ax.legend(fontsize=8, frameon=False)
    return png(fig)


def histogram(values, threshold: float | None, xlabel: str) -> str:
    fig = figure(7.0, 2.8)
    ax = fig.add_subplot()
    ax.hist(values, bins=40, color=ACCENT)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4f}")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    return png(fig)


def alt_vs_synthetic(alt, syn) -> str:
    import numpy as np

    fig = figure(8.0, 3.2)
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    both = np.concatenate([alt, syn]) if len(alt) + len(syn) else np.array([0.0, 1.0])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-6, 40)
    a1.hist(alt, bins=bins, alpha=0.6, color=MUTED, label=f"AltText (n={len(alt)})")
    a1.hist(syn, bins=bins, alpha=0.6, color=ACCENT, label=f"VeCap (n={len(syn)})")
    a1.set_xlabel("CLIP cosine with the image")
    a1.set_ylabel("records")
    a1.legend(fontsize=8, frameon=False)
    n = min(len(alt), len(syn))
    a2.scatter(alt[:n], syn[:n], s=5, alpha=0.5, color=ACCENT)
    lo, hi = float(bins[0]), float(bins[-1])
    a2.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--")
    a2.set_xlabel("AltText score")
    a2.set_ylabel("VeCap score")
    return png(fig)


def shares(sources: Sequence[str], series: dict[str, Sequence[float]]) -> str:
    import numpy as np

    fig = figure(7.0, 3.0)
    ax = fig.add_subplot()
    x = np.arange(len(sources))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name,
               color=(MUTED, ACCENT, KEPT, "#ef6c00")[i % 4])
    ax.set_xticks(x, sources)
    ax.set_ylabel("share")
    ax.legend(fontsize=8, frameon=False)
    return png(fig)


def lines(x, panels: Sequence[tuple[str, Sequence[float]]], xlabel: str = "step") -> str:
    """One small panel per series, side by side."""
    fig = figure(3.0 * len(panels), 2.8)
    for i, (label, y) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        ax.plot(x, y, color=ACCENT, linewidth=1.2, marker="." if len(x) < 40 else None)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel)
    return png(fig)
