"""Graph drawings as self-contained SVG (no graphviz, no external resources): `draw`, `to_svg` and the `SVG`
object that notebooks display inline. The geometry comes from graphc.viz.layout; PNG reuses it (raster.py)."""

from __future__ import annotations

import numbers
import os
import re
from typing import Any
from xml.sax.saxutils import escape as _xml_escape
from xml.sax.saxutils import quoteattr as _xml_quoteattr

from graphc.errors import GraphcError
from graphc.viz import style
from graphc.viz.layout import SWATCH_H, SWATCH_W, Layout, edge_geometry, layout
from graphc.viz.view import Box, View, build_view

FORMATS = ("svg", "png")


class SVG:
    """A drawing: `str(svg)` is the SVG markup; notebooks show it inline; `save(path)` writes .svg or .png."""

    def __init__(self, text: str, view: View, geometry: Layout):
        self.text = text
        self.view = view
        self.layout = geometry

    @property
    def width(self) -> float:
        return self.layout.width

    @property
    def height(self) -> float:
        return self.layout.height

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<graphc SVG {self.width}x{self.height}, {len(self.view.boxes)} boxes>"

    def _repr_svg_(self) -> str:
        return self.text

    def png(self, dpi: float = 144) -> bytes:
        """The same drawing rasterized (needs matplotlib)."""
        from graphc.viz.raster import render_png

        if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not 0 < dpi <= 2400:
            raise GraphcError(f"png: dpi must be a number of dots per inch in (0, 2400], got {dpi!r}")

        return render_png(self.view, self.layout, dpi=dpi)

    def save(self, path: str | os.PathLike, format: str | None = None, *, dpi: float = 144) -> str:  # noqa: A002
        """Write the drawing; the format is `format` or the file's suffix (.svg, .png)."""
        path = os.fspath(path)
        fmt = _format(path, format)
        _check_folder(path)
        data = self.png(dpi) if fmt == "png" else self.text.encode("utf-8")
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise GraphcError(f"draw: cannot write the drawing to {path!r}: {e.strerror or e}; choose a path in a "
                              "folder you can write to") from None
        return path


# characters XML 1.0 does not allow in a document (a name may hold them: gc.input("a\x1bb")), shown escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _printable(text: str) -> str:
    return _NOT_XML.sub(lambda m: ascii(m.group())[1:-1], text)


def escape(text: str) -> str:
    return _xml_escape(_printable(text))


def quoteattr(text: str) -> str:
    return _xml_quoteattr(_printable(text))


def _check_folder(path: str) -> None:
    """A drawing's folder must exist (checked before the layout, which may take seconds)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise GraphcError(f"draw: cannot write the drawing to {path!r}: {folder!r} is a file, not a folder; "
                              "choose another path")
        raise GraphcError(f"draw: cannot write the drawing to {path!r}: its folder {folder!r} does not exist; create "
                          f"it first (os.makedirs({folder!r}, exist_ok=True)) or choose another path")


def _format(path: str | None, format: str | None) -> str:  # noqa: A002
    fmt = format
    if fmt is None:
        ext = os.path.splitext(path or "")[1].lower().lstrip(".")
        if ext and ext not in FORMATS:  # as matplotlib's savefig: an unknown suffix is not silently SVG
            raise GraphcError(f"draw: cannot write a .{ext} file: name it .svg or .png, or pass format='svg'")
        fmt = ext or "svg"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise GraphcError(f"draw: format must be 'svg' or 'png', got {format!r}")
    return fmt


def draw(x: Any, path: str | os.PathLike | None = None, format: str | None = None, *,  # noqa: A002
         expand=None, collapse_over: int = 60, fold: bool = True, sources: bool = True, edges: str = "curved",
         legend: bool = True, engine: str = "builtin", dpi: float = 144, max_boxes: int | None = 2000) -> SVG:
    """Draw a tensor, a list or dict of tensors (say a loss and its gradients) or a compiled function's kernels.

    Returns an `SVG` (shown inline by notebooks); with `path`, also writes the file as `format` ("svg" or
    "png"; default from the suffix; PNG needs matplotlib). `expand`: None collapses each layer (scope) into one
    box (forward and gradient apart) when the graph has more than `collapse_over` nodes; True never collapses;
    False always does; a list of scope names keeps those open and collapses the rest. `fold` writes small
    constants and index ops into their readers' labels. `sources` adds each node's scope and the rule that built
    it. `edges` is "curved", "straight" or "orthogonal". `engine="dot"` lays out with graphviz's dot when it is
    installed; the default "builtin" needs nothing. `max_boxes`: a drawing with more boxes is refused (None: no
    limit): laying out a few thousand boxes takes minutes and gives a picture of tens of MB no one can read."""
    fmt = _format(os.fspath(path) if path is not None else None, format)
    if path is not None:
        _check_folder(os.fspath(path))
    if max_boxes is not None and (isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1):
        raise GraphcError(f"draw: max_boxes must be a positive int or None, got {max_boxes!r}")
    view = build_view(x, expand=expand, collapse_over=collapse_over, fold=fold, sources=sources)
    if max_boxes is not None and len(view.boxes) > max_boxes:
        raise GraphcError(f"draw: the drawing would have {len(view.boxes)} boxes, over max_boxes={max_boxes} (a "
                          "picture that size takes minutes to lay out and is not readable): draw a part of the "
                          "graph (gc.draw(h) for an intermediate value h), build layers under gc.scope(name) so "
                          "they collapse into one box each, or pass max_boxes=None to draw it all")
    geometry = layout(view, edges=edges, legend=legend, engine=engine)
    out = SVG(render(view, geometry), view, geometry)
    if path is not None:
        out.save(path, fmt, dpi=dpi)
    return out


def to_svg(x: Any, **kw) -> str:
    """The SVG markup of `draw(x, **kw)`."""
    return draw(x, **kw).text


# ------------------------------------------------------------------------------------------------ rendering


def _n(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _attrs(**kw: Any) -> str:
    out = []
    for k, v in kw.items():
        if v is None or v == "":
            continue
        if isinstance(v, float):
            v = _n(v)
        out.append(f"{k.rstrip('_').replace('_', '-')}={quoteattr(str(v))}")
    return " ".join(out)


def render(view: View, geo: Layout) -> str:
    w, h = geo.width, geo.height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" {_attrs(width=w, height=h, viewBox=f"0 0 {w} {h}")} '
        f'{_attrs(font_family=style.FONT_FAMILY, font_size=style.SIZES["main"])} role="img">',
        f"<title>graphc drawing: {len(view.boxes)} boxes, {len(view.edges)} edges</title>",
        f'<rect {_attrs(x=0, y=0, width=w, height=h, fill=style.BACKGROUND)}/>',
    ]
    if geo.legend:
        parts.append('<g class="legend">')
        for it in geo.legend:
            parts.append(_legend_item(it.key, it.x, it.y, it.text))
        parts.append("</g>")
    parts.append('<g class="edges">')
    for r in geo.routes:
        e = view.edges[r.edge]
        cmds, arrow = edge_geometry(r, geo.edges)
        colour = style.EDGE_COLOURS[e.style]
        d = " ".join(c + " " + " ".join(_n(v) for v in args) for c, args in cmds)
        tip = f"<title>{escape(e.tooltip)}</title>" if e.tooltip else ""
        path = _attrs(d=d, fill="none", stroke=colour, stroke_width=1.2, stroke_dasharray=style.EDGE_DASH[e.style])
        points = " ".join(f"{_n(x)},{_n(y)}" for x, y in arrow)
        head = _attrs(points=points, fill=colour)
        parts.append(f'<g class="edge {e.style}">{tip}<path {path}/><polygon {head}/></g>')
    parts.append("</g>")
    parts.append('<g class="nodes">')
    for box, p in zip(view.boxes, geo.boxes, strict=True):
        parts.append(_box(box, p.x, p.y, p.w, p.h))
    parts.append("</g></svg>")
    return "\n".join(parts)


def _rect(x: float, y: float, w: float, h: float, paint: style.Paint, width: float = 1.2, fill: str | None = None,
          rounded: float | None = None) -> str:
    r = paint.rounded if rounded is None else rounded
    return (f'<rect {_attrs(x=x, y=y, width=w, height=h, rx=min(r, h / 2), fill=fill or paint.fill)} '
            f'{_attrs(stroke=paint.stroke, stroke_width=width, stroke_dasharray=paint.dash)}/>')


def _box(box: Box, x: float, y: float, w: float, h: float) -> str:
    paint = style.PAINTS[box.kind]
    cls = " ".join(["node", box.kind] + (["group"] if box.group else []) + (["reused"] if box.reused else [])
                   + (["output"] if box.output else []))
    out = [f'<g class="{cls}" data-name={quoteattr(box.name)}><title>{escape(box.tooltip)}</title>']
    if box.group:  # a stack of cards: this box stands for many nodes
        out.append(_rect(x + 4, y + 4, w, h, paint))
    out.append(_rect(x, y, w, h, paint, 2.4 if box.output else 1.2))
    if box.reused:
        out.append(_rect(x + 3, y + 3, w - 6, h - 6, paint, 1.0, fill="none", rounded=max(paint.rounded - 3, 1)))
    cy = y + style.PAD_Y
    for ln in box.lines:
        lh = style.line_height(ln.size)
        size = style.SIZES[ln.size]
        base = cy + lh / 2 + size * 0.35
        colour = style.SMALL_COLOUR if ln.size == "small" else paint.text
        spans = []
        for text, role in ln.spans:
            a = {"font_weight": "bold"} if role in ("name", "op") and ln.size == "main" else {}
            if role == "type":
                a["fill"] = style.TYPE_COLOUR
            spans.append(f"<tspan {_attrs(**a)}>{escape(text)}</tspan>" if a else escape(text))
        out.append(f'<text {_attrs(x=x + w / 2, y=base, text_anchor="middle", font_size=size, fill=colour)} '
                   f'xml:space="preserve">{"".join(spans)}</text>')
        cy += lh
    out.append("</g>")
    return "".join(out)


def _legend_item(key: str, x: float, y: float, text: str) -> str:
    sy = y + (18 - SWATCH_H) / 2
    out = ['<g class="legend-item">']
    if key.startswith("edge-"):
        kind = key[5:]
        ym = sy + SWATCH_H / 2
        out.append(f'<line {_attrs(x1=x, y1=ym, x2=x + SWATCH_W, y2=ym, stroke=style.EDGE_COLOURS[kind])} '
                   f'{_attrs(stroke_width=1.6, stroke_dasharray=style.EDGE_DASH[kind])}/>')
    else:
        paint = style.PAINTS.get(key, style.PAINTS["forward"])
        if key in ("group", "reused"):
            paint = style.Paint("#ffffff", "#555555")
        if key == "group":
            out.append(_rect(x + 3, sy + 3, SWATCH_W - 3, SWATCH_H - 3, paint, 1.0))
        out.append(_rect(x, sy, SWATCH_W - (3 if key == "group" else 0), SWATCH_H - (3 if key == "group" else 0),
                         paint, 1.0, rounded=3))
        if key == "reused":
            out.append(_rect(x + 2.5, sy + 2.5, SWATCH_W - 5, SWATCH_H - 5, paint, 1.0, fill="none", rounded=2))
    out.append(f'<text {_attrs(x=x + SWATCH_W + 6, y=y + 9 + style.SIZES["small"] * 0.35)} '
               f'{_attrs(font_size=style.SIZES["small"], fill=style.SMALL_COLOUR)}>{escape(text)}</text></g>')
    return "".join(out)
