"""Colours, fonts and text metrics shared by every renderer (SVG, PNG), so both draw the same picture."""

from __future__ import annotations

from dataclasses import dataclass

FONT_FAMILY = "DejaVu Sans Mono, Menlo, Consolas, ui-monospace, monospace"
MPL_FONT = "DejaVu Sans Mono"  # matplotlib ships it, so PNG text has exactly the widths the layout assumed
CHAR_W = 0.602  # advance of a monospace glyph, in ems (DejaVu Sans Mono; Menlo and Consolas are within 5%)
SIZES = {"main": 12.0, "small": 10.0}
LINE_H = 1.35  # line height, in ems
PAD_X, PAD_Y = 10.0, 5.0


@dataclass(frozen=True)
class Paint:
    fill: str
    stroke: str
    text: str = "#1a1a1a"
    dash: str = ""
    rounded: float = 4.0


# One entry per kind of box a view can hold; the legend shows the ones a drawing uses.
PAINTS: dict[str, Paint] = {
    "input": Paint("#e6f4e6", "#3c8f47", rounded=12.0),
    "param": Paint("#f1e7fa", "#8552b5", rounded=12.0),
    "const": Paint("#f2f2f2", "#8a8a8a", rounded=12.0),
    "forward": Paint("#e4eefa", "#3a72b8"),
    "grad": Paint("#fde9dc", "#cf6a22"),
    "mixed": Paint("#fbf3cf", "#a88a12"),
    "output": Paint("#ffffff", "#333333", rounded=12.0),
}

LEGEND_TEXT = {
    "input": "input",
    "param": "parameter",
    "const": "constant",
    "forward": "forward",
    "grad": "gradient (built by grad)",
    "mixed": "kernel mixing forward and gradient",
    "output": "output buffer",
    "group": "collapsed layer (scope)",
    "reused": "forward value reused by backprop",
    "edge-reuse": "forward value read by a gradient",
    "edge-shape": "read for its shape only",
}

EDGE_COLOURS = {"plain": "#6b6b6b", "grad": "#cf6a22", "reuse": "#cf6a22", "shape": "#a9a9a9"}
EDGE_DASH = {"plain": "", "grad": "", "reuse": "5,3", "shape": "2,3"}
TYPE_COLOUR = "#4d4d4d"
SMALL_COLOUR = "#6b6b6b"
BACKGROUND = "#ffffff"


def text_width(text: str, size: str = "main") -> float:
    return len(text) * CHAR_W * SIZES[size]


def line_height(size: str = "main") -> float:
    return SIZES[size] * LINE_H
