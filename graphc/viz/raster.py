"""PNG drawings: the layout the SVG uses, painted with matplotlib (imported only here, and only when asked)."""

from __future__ import annotations

import io

from graphc.errors import GraphcError
from graphc.viz import style
from graphc.viz.layout import SWATCH_H, SWATCH_W, Layout, edge_geometry
from graphc.viz.view import View


def render_png(view: View, geo: Layout, *, dpi: float = 144) -> bytes:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
        from matplotlib.path import Path
    except ImportError:
        raise GraphcError("draw: PNG output needs matplotlib, which is not installed; pip install matplotlib, "
                          "or draw with format='svg' (needs nothing)") from None

    px = 1.0 / 96.0  # layout units are CSS pixels: 96 per inch
    fig = Figure(figsize=(geo.width * px, geo.height * px), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, geo.width)
    ax.set_ylim(geo.height, 0)
    ax.set_axis_off()
    fig.patch.set_facecolor(style.BACKGROUND)
    pt = 72.0 / 96.0  # font sizes: layout pixels to points

    def rect(x, y, w, h, paint: style.Paint, lw=1.2, fill=None, rounded=None, z=2):
        r = min(paint.rounded if rounded is None else rounded, h / 2)
        ax.add_patch(FancyBboxPatch((x + r, y + r), max(w - 2 * r, 0.01), max(h - 2 * r, 0.01),
                                    boxstyle=f"round,pad={r}", linewidth=lw * pt, edgecolor=paint.stroke,
                                    facecolor=fill or paint.fill, zorder=z))

    codes = {"M": Path.MOVETO, "L": Path.LINETO}
    for r in geo.routes:
        e = view.edges[r.edge]
        cmds, arrow = edge_geometry(r, geo.edges)
        verts, kinds = [], []
        for c, args in cmds:
            if c == "C":
                verts += [args[0:2], args[2:4], args[4:6]]
                kinds += [Path.CURVE4] * 3
            else:
                verts.append(args)
                kinds.append(codes[c])
        colour = style.EDGE_COLOURS[e.style]
        dash = style.EDGE_DASH[e.style]
        ls = (0, tuple(float(v) * pt for v in dash.split(","))) if dash else "solid"
        ax.add_patch(PathPatch(Path(verts, kinds), fill=False, edgecolor=colour, linewidth=1.2 * pt, linestyle=ls,
                               zorder=1))
        ax.add_patch(Polygon(arrow, closed=True, facecolor=colour, edgecolor="none", zorder=1))

    for box, p in zip(view.boxes, geo.boxes, strict=True):
        paint = style.PAINTS[box.kind]
        if box.group:
            rect(p.x + 4, p.y + 4, p.w, p.h, paint)
        rect(p.x, p.y, p.w, p.h, paint, 2.4 if box.output else 1.2)
        if box.reused:
            rect(p.x + 3, p.y + 3, p.w - 6, p.h - 6, paint, 1.0, fill="none", rounded=max(paint.rounded - 3, 1))
        cy = p.y + style.PAD_Y
        for ln in box.lines:
            lh = style.line_height(ln.size)
            x = p.x + (p.w - ln.width) / 2
            colour = style.SMALL_COLOUR if ln.size == "small" else paint.text
            for text, role in ln.spans:
                ax.text(x, cy + lh / 2, text, fontsize=style.SIZES[ln.size] * pt, family=style.MPL_FONT,
                        ha="left", va="center", zorder=3, color=style.TYPE_COLOUR if role == "type" else colour,
                        fontweight="bold" if role in ("name", "op") and ln.size == "main" else "normal")
                x += style.text_width(text, ln.size)
            cy += lh

    for it in geo.legend:
        sy = it.y + (18 - SWATCH_H) / 2
        if it.key.startswith("edge-"):
            kind = it.key[5:]
            dash = style.EDGE_DASH[kind]
            ls = (0, tuple(float(v) * pt for v in dash.split(","))) if dash else "solid"
            ax.plot([it.x, it.x + SWATCH_W], [sy + SWATCH_H / 2] * 2, color=style.EDGE_COLOURS[kind],
                    linewidth=1.6 * pt, linestyle=ls)
        else:
            paint = style.PAINTS.get(it.key, style.PAINTS["forward"])
            if it.key in ("group", "reused"):
                paint = style.Paint("#ffffff", "#555555")
            shrink = 3 if it.key == "group" else 0
            if it.key == "group":
                rect(it.x + 3, sy + 3, SWATCH_W - 3, SWATCH_H - 3, paint, 1.0, rounded=3)
            rect(it.x, sy, SWATCH_W - shrink, SWATCH_H - shrink, paint, 1.0, rounded=3)
            if it.key == "reused":
                rect(it.x + 2.5, sy + 2.5, SWATCH_W - 5, SWATCH_H - 5, paint, 1.0, fill="none", rounded=2)
        ax.text(it.x + SWATCH_W + 6, it.y + 9, it.text, fontsize=style.SIZES["small"] * pt, family=style.MPL_FONT,
                ha="left", va="center", color=style.SMALL_COLOUR)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=style.BACKGROUND)
    return buf.getvalue()
