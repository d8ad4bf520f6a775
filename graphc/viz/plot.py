"""Learning curves as PNG: with matplotlib when it is installed, otherwise a small built-in renderer (lines,
axes, numeric ticks, a title, axis labels and a legend in a 3x5 pixel font, encoded with zlib) so `graphc train`
needs no plotting library."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
# 3x5 pixel glyphs for tick labels: rows top to bottom, 3 bits each (MSB = left)
GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0),
    "e": (0, 7, 7, 4, 7), "+": (0, 2, 7, 2, 0),
    # capitals for titles, axis labels and the legend (text is drawn upper-cased)
    "A": (2, 5, 7, 5, 5), "B": (6, 5, 6, 5, 6), "C": (3, 4, 4, 4, 3), "D": (6, 5, 5, 5, 6), "E": (7, 4, 6, 4, 7),
    "F": (7, 4, 6, 4, 4), "G": (3, 4, 5, 5, 3), "H": (5, 5, 7, 5, 5), "I": (7, 2, 2, 2, 7), "J": (1, 1, 1, 5, 2),
    "K": (5, 5, 6, 5, 5), "L": (4, 4, 4, 4, 7), "M": (5, 7, 7, 5, 5), "N": (6, 5, 5, 5, 5), "O": (2, 5, 5, 5, 2),
    "P": (6, 5, 6, 4, 4), "Q": (2, 5, 5, 6, 3), "R": (6, 5, 6, 5, 5), "S": (3, 4, 2, 1, 6), "T": (7, 2, 2, 2, 2),
    "U": (5, 5, 5, 5, 7), "V": (5, 5, 5, 5, 2), "W": (5, 5, 7, 7, 5), "X": (5, 5, 2, 5, 5), "Y": (5, 5, 2, 2, 2),
    "Z": (7, 1, 2, 4, 7), ":": (0, 2, 0, 2, 0), "(": (1, 2, 2, 2, 1), ")": (4, 2, 2, 2, 4), "_": (0, 0, 0, 0, 7),
    "/": (1, 1, 2, 4, 4), ",": (0, 0, 0, 2, 4), "'": (2, 2, 0, 0, 0), "%": (5, 1, 2, 4, 5),
}


def learning_curves(series: dict[str, Sequence[float]], *, xlabel: str = "epoch", ylabel: str = "loss",
                    title: str = "") -> bytes:
    """A PNG of each named series against 1..len(series)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return _builtin(series, xlabel=xlabel, ylabel=ylabel, title=title)
    import io

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _builtin(series: dict[str, Sequence[float]], width: int = 640, height: int = 400, *, xlabel: str = "",
             ylabel: str = "", title: str = "") -> bytes:
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, width - 20, 34, height - 50
    if title:
        _text(img, title.upper(), (width - 8 * len(title)) // 2, 8)
    if ylabel:
        _text(img, ylabel.upper(), 6, top - 14)  # above the y axis: the font has no vertical text
    if xlabel:
        _text(img, xlabel.upper(), (left + right - 8 * len(xlabel)) // 2, height - 18)
    ys_all = [float(v) for ys in series.values() for v in ys if np.isfinite(v)]
    n = max((len(ys) for ys in series.values()), default=1)
    lo, hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    img[top:bottom + 1, left] = 0
    img[bottom, left:right + 1] = 0

    def px(i: float, v: float) -> tuple[int, int]:
        x = left + (i / max(n - 1, 1)) * (right - left)
        y = bottom - (v - lo) / (hi - lo) * (bottom - top)
        return int(round(x)), int(round(y))

    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, y = px(0, v)
        img[y, left - 4:left] = 0
        _text(img, f"{v:.3g}", left - 6, y - 5, align_right=True)
    for i in range(n):
        if n <= 10 or i % max(1, n // 10) == 0 or i == n - 1:
            x, _ = px(i, lo)
            img[bottom:bottom + 4, x] = 0
            _text(img, str(i + 1), x - 4, bottom + 8)
    for c, (name, ys) in enumerate(series.items()):
        color = COLORS[c % len(COLORS)]
        pts = [px(i, float(v)) for i, v in enumerate(ys) if np.isfinite(v)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
            _line(img, x0, y0, x1, y1, color)
        img[top + 4 + 14 * c:top + 10 + 14 * c, right - 40:right - 20] = color  # legend swatch, in series order
        _text(img, name.upper(), right - 46, top + 2 + 14 * c, align_right=True)
    return _png(img)


def _line(img, x0, y0, x1, y1, color) -> None:
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    for t in range(steps + 1):
        x = x0 + (x1 - x0) * t // steps
        y = y0 + (y1 - y0) * t // steps
        img[max(y - 1, 0):y + 1, max(x - 1, 0):x + 1] = color


def _text(img, s: str, x: int, y: int, align_right: bool = False, scale: int = 2) -> None:
    w = 4 * scale * len(s)
    if align_right:
        x -= w
    for ch in s:
        rows = GLYPHS.get(ch)
        if rows is not None:
            for r, bits in enumerate(rows):
                for c in range(3):
                    if bits & (4 >> c):
                        y0, x0 = y + r * scale, x + c * scale
                        if 0 <= y0 < img.shape[0] - scale and 0 <= x0 < img.shape[1] - scale:
                            img[y0:y0 + scale, x0:x0 + scale] = 0
        x += 4 * scale


def _png(img: np.ndarray) -> bytes:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
