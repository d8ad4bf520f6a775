"""Seeing graphs: SVG/PNG drawings of graphs and compiled kernels (`draw`), and the maths they compute (`latex`).

Names are imported on first use: a learning-curve plot (`graphc.viz.plot`) needs neither the drawing code nor
sympy, which the LaTeX view is written in."""

import importlib

_WHERE = {"Latex": "latex", "latex": "latex", "to_sympy": "latex", "SVG": "svg", "draw": "svg", "to_svg": "svg"}

__all__ = ["SVG", "draw", "to_svg", "Latex", "latex", "to_sympy"]


def __getattr__(name: str):
    if name in _WHERE:
        where = _WHERE[name]
        mod = importlib.import_module(f"graphc.viz.{where}")
        # bound here, over the submodule the import just set as an attribute (`latex`: the module and its function
        # share the name; the function is what graphc.viz.latex means)
        globals().update({n: getattr(mod, n) for n, m in _WHERE.items() if m == where})
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
