"""Seeing graphs: SVG/PNG drawings of graphs and compiled kernels (`draw`), and the maths they compute (`latex`)."""

from graphc.viz.latex import Latex, latex, to_sympy
from graphc.viz.svg import SVG, draw, to_svg

__all__ = ["SVG", "draw", "to_svg", "Latex", "latex", "to_sympy"]
