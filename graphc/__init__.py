"""graphc: declare a network as a static graph, differentiate it symbolically, compile it to native code.

    import graphc as gc
    x = gc.input("x", ("N", 784))
    logits = gc.nn.mlp(x, [256, 128, 10])
    loss = gc.nn.softmax_cross_entropy(logits, gc.input("labels", ("N",), "int32"))
    grads = gc.grad(loss, gc.nn.parameters(loss))

`import graphc` loads nothing heavy: each public name is imported on first use, so the reference evaluator and
drawing never load LLVM, and sympy comes with the first graph (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib

from graphc.errors import CompileError as CompileError
from graphc.errors import DTypeError as DTypeError
from graphc.errors import GradError as GradError
from graphc.errors import GraphcError as GraphcError
from graphc.errors import InputError as InputError
from graphc.errors import NumericalError as NumericalError
from graphc.errors import ShapeError as ShapeError

__version__ = "0.1.0"

# public name -> (module, attribute; None: the module itself). The DSL's functions come from graphc.ops.
_LAZY = {
    "nn": ("graphc.nn", None),
    "sym": ("graphc.sym", None),
    "random": ("graphc.ops.random", None),
    "grad": ("graphc.autodiff.grad", "grad"),
    "jacobian": ("graphc.autodiff.grad", "jacobian"),
    "hessian": ("graphc.autodiff.grad", "hessian"),
    "check_grad": ("graphc.autodiff.check", "check_grad"),
    "numeric_grad": ("graphc.autodiff.check", "numeric_grad"),
    "evaluate": ("graphc.runtime.reference", "evaluate"),
    "load": ("graphc.fitting", "load"),
    "compile": ("graphc.runtime.jit", "compile"),
    "CompiledFunction": ("graphc.runtime.jit", "CompiledFunction"),
    "EpochFunction": ("graphc.runtime.epoch", "EpochFunction"),
    "EpochStats": ("graphc.runtime.epoch", "EpochStats"),
    "Node": ("graphc.ir.node", "Node"),
    "scope": ("graphc.ir.node", "scope"),
    "topo_order": ("graphc.ir.node", "topo_order"),
    "to_networkx": ("graphc.ir.printing", "to_networkx"),
    "to_text": ("graphc.ir.printing", "to_text"),
    "dim": ("graphc.ir.shapes", "symbol"),
}
_OWN = ["show", "draw", "latex", "fit", "GraphcError", "ShapeError", "DTypeError", "InputError", "GradError",
        "CompileError", "NumericalError", "__version__"]


def __getattr__(name: str):
    if name == "__all__":
        from graphc.ops import __all__ as ops_all

        return [*ops_all, *_LAZY, *_OWN]
    spec = _LAZY.get(name)
    if spec is not None:
        mod = importlib.import_module(spec[0])
        value = mod if spec[1] is None else getattr(mod, spec[1])
    elif name.startswith("__"):
        raise AttributeError(name)
    else:
        ops = importlib.import_module("graphc.ops")
        if name not in ops.__all__:
            import difflib

            close = difflib.get_close_matches(name, [*ops.__all__, *_LAZY, *_OWN], n=3, cutoff=0.75)
            hint = f"; did you mean {' or '.join(f'gc.{c}' for c in close)}?" if close else ""
            raise AttributeError(f"module 'graphc' has no attribute {name!r}{hint}")
        value = getattr(ops, name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    """The public names (what `from graphc import *` gives), not the module's own imports."""
    return sorted(set(__getattr__("__all__")) | {n for n in globals() if n.startswith("__") and n.endswith("__")})


def show(outputs, *, sources: bool = True) -> None:
    """Print a graph (see `to_text`)."""
    from graphc.ir.printing import to_text

    print(to_text(outputs, sources=sources, what="show"))


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
