"""graphc: declare a network as a static graph, differentiate it symbolically, compile it to native code.

    import graphc as gc
    x = gc.input("x", ("N", 784))
    logits = gc.nn.mlp(x, [256, 128, 10])
    loss = gc.nn.softmax_cross_entropy(logits, gc.input("labels", ("N",), "int32"))
    grads = gc.grad(loss, gc.nn.parameters(loss))
"""

from __future__ import annotations

from graphc import nn, sym
from graphc.autodiff.check import check_grad, numeric_grad
from graphc.autodiff.grad import grad
from graphc.errors import (
    CompileError,
    DTypeError,
    GradError,
    GraphcError,
    InputError,
    NumericalError,
    ShapeError,
)
from graphc.ir.node import Node, scope, topo_order
from graphc.ir.printing import to_networkx, to_text
from graphc.ir.shapes import symbol as dim
from graphc.ops import *  # noqa: F403 - the DSL
from graphc.ops import __all__ as _ops_all
from graphc.runtime.jit import CompiledFunction, compile  # noqa: A004
from graphc.runtime.reference import evaluate

__version__ = "0.1.0"


def show(outputs, *, sources: bool = True) -> None:
    """Print a graph (see `to_text`)."""
    print(to_text(outputs, sources=sources))


def draw(x, path=None, format=None, **kw):  # noqa: A002 - the file format, as in matplotlib's savefig
    """Draw a tensor, a list of tensors, a gradient graph or a compiled function's kernels as SVG (or PNG);
    see graphc.viz.draw. Imported lazily: drawing is not needed to build or run graphs."""
    from graphc.viz import draw as _draw

    return _draw(x, path, format, **kw)


def fit(model=None, data="digits", **kw):
    """Train a model on a dataset (what `graphc train` does); see graphc.fitting.fit for the options."""
    from graphc.fitting import fit as _fit

    return _fit(model, data, **kw)


def latex(y, wrt=None, **kw):
    """The value and gradients of `y` as maths (scalar expressions, or the chain rule in matrix form); see
    graphc.viz.latex."""
    from graphc.viz import latex as _latex

    return _latex(y, wrt, **kw)


__all__ = [
    *_ops_all,
    "nn", "sym", "grad", "evaluate", "compile", "CompiledFunction", "check_grad", "numeric_grad", "scope", "dim",
    "to_text", "to_networkx", "show", "draw", "latex", "fit", "topo_order", "Node", "GraphcError", "ShapeError",
    "DTypeError", "InputError", "GradError", "CompileError", "NumericalError", "__version__",
]
