"""The maths a graph computes, as LaTeX: `latex(y, wrt)` writes y and each gradient ∂y/∂w, as simplified sympy
formulas in the user's names for small scalar graphs, or in chain-rule matrix form (z₁ = x W₁ + b₁, δ₁ = ...)
read off the gradient graph for larger ones. `to_sympy` turns a small static-shaped graph into sympy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from graphc.errors import GraphcError
from graphc.ir.node import Node, output_nodes, topo_order
from graphc.ir.shapes import FLOAT_DTYPES
from graphc.ops.pointwise import ElementwiseOp
from graphc.viz.chainrule import ChainRule, Printer, _number, latex_name

SCALAR_MAX_ELEMENTS = 4  # "scalar-ish": every value in the graph has at most this many elements
SIMPLIFY_MAX_OPS = 400  # sympy.simplify is slow on big expressions; above this, formulas are shown as built
# sympy.simplify folds a sum of k Piecewise into 2**k branches and simplifies each condition: the gradient of a
# 4-element max (ties split evenly: 1 / the number of maxima) took 3 minutes. With more Piecewise than this, only
# the parts without one are simplified
SIMPLIFY_MAX_PIECEWISE = 2


class NoFormula(GraphcError):
    """to_sympy meets an op it has no element formula for (gc.latex's auto mode then writes the matrix form)."""

    def __init__(self, n: Node):
        self.what = f"{n.label} ({n.type_str}, at {n.source.where()})"
        super().__init__(f"to_sympy: {self.what} has no element formula; gc.latex(y, mode='matrix') writes the chain "
                         "rule of a scalar y with it")


class Latex:
    """Equations `lhs = rhs` as LaTeX. `str()` is the source (an aligned block); notebooks render it."""

    def __init__(self, lines: list[tuple[str, str]], mode: str, exprs: dict[str, Any] | None = None):
        self.lines = lines
        self.mode = mode  # "scalar" or "matrix"
        self.exprs = exprs or {}  # scalar mode: the sympy value of y and of each gradient, by LaTeX name

    @property
    def source(self) -> str:
        body = " \\\\\n".join(f"{lhs} &= {rhs}" for lhs, rhs in self.lines)
        return "\\begin{aligned}\n" + body + "\n\\end{aligned}"

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        return f"<graphc Latex ({self.mode}), {len(self.lines)} equations>"

    def _repr_latex_(self) -> str:
        return "$$\n" + self.source + "\n$$"


def latex(y: Node, wrt: Node | Sequence[Node] | None = None, *, mode: str = "auto", name: str | None = None,
          simplify: bool = True) -> Latex:
    """y and its gradients as equations. `wrt`: the tensors to differentiate by (default: y's parameters, or
    its float inputs if it has none; [] for y alone). `mode`: "scalar" (sympy formulas in the user's names,
    for graphs whose values have a few elements at most), "matrix" (the chain rule in matrix notation, for
    a scalar y) or "auto" (scalar when it fits). `name`: y's name in the equations (default L in matrix form)."""
    if not isinstance(y, Node):
        raise GraphcError(f"latex: y must be a tensor, got {type(y).__name__}")
    order = topo_order(y)
    if wrt is None:
        params = [n for n in order if n.op.name == "param"]
        wrt_nodes = params or [n for n in order if n.op.name == "input" and n.dtype in FLOAT_DTYPES]
    else:
        wrt_nodes = output_nodes(wrt, "latex", "wrt")
        for w in wrt_nodes:
            if not isinstance(w, Node):
                raise GraphcError(f"latex: wrt must hold tensors, got {type(w).__name__}")
    if mode not in ("auto", "scalar", "matrix"):
        raise GraphcError(f"latex: mode must be 'auto', 'scalar' or 'matrix', got {mode!r}")
    depth = _depth(order)
    if depth > MAX_DEPTH:
        raise GraphcError(f"latex: y is {depth} operations deep (the longest chain from a leaf); equations for graphs "
                          f"deeper than {MAX_DEPTH} are not written (sympy builds and prints them recursively, and no "
                          "one reads them): look at it with gc.show(y) or gc.draw(y), or write the equations of a "
                          "shallower model")
    if mode == "auto":
        mode = "scalar" if scalar_ish(order) else "matrix"
        if mode == "scalar":
            try:
                return _scalar(y, wrt_nodes, name, simplify)
            except NoFormula as e:  # a cumsum, a scan: the chain rule in matrix form names them
                if y.shape != () and int(np.prod(y.shape, dtype=np.int64)) != 1:
                    raise GraphcError(f"latex: {e.what} has no element formula, so y ({y.type_str}) cannot be "
                                      "written element by element, and the chain-rule form (mode='matrix') is "
                                      "written for a scalar y: reduce y first (gc.sum(y)), or look at the graph "
                                      "with gc.show(y)") from None
                mode = "matrix"
    if mode == "scalar":
        return _scalar(y, wrt_nodes, name, simplify)
    chain = ChainRule(y, wrt_nodes, name or "L")
    names = [chain.names.get(id(w)) or latex_name(w.name or w.op.name) for w in wrt_nodes]
    return Latex(chain.equations(names), "matrix")


MAX_DEPTH = 250  # operations on the longest path from a leaf to y that gc.latex writes out


def _depth(order: list[Node]) -> int:
    d: dict[int, int] = {}
    for n in order:
        d[id(n)] = 1 + max((d[id(i)] for i in n.inputs), default=-1)
    return max(d.values(), default=0)


def scalar_ish(order: list[Node]) -> bool:
    for n in order:
        if not all(isinstance(d, int) for d in n.shape) or int(np.prod(n.shape, dtype=np.int64)) > SCALAR_MAX_ELEMENTS:
            return False
    return True


def _scalar(y: Node, wrt: list[Node], name: str | None, simplify: bool) -> Latex:
    from graphc.autodiff.grad import grad

    if y.dtype not in FLOAT_DTYPES:
        raise GraphcError(f"latex: y must be a float tensor, got {y.type_str}")
    # one backward pass per element of y (a row of the Jacobian), each seeded with that element's indicator
    size = int(np.prod(y.shape, dtype=np.int64))
    rows: list[list[Node]] = []
    for i in range(size if wrt else 0):
        seed = None
        if y.shape != ():
            seed = np.zeros(size, dtype=y.dtype)
            seed[i] = 1
            seed = seed.reshape([int(d) for d in y.shape])
        out = grad(y, wrt, seed=seed)
        rows.append(list(out) if isinstance(out, list) else [out])
    flat = [g for row in rows for g in row]
    converted = to_sympy([y] + flat, as_list=True)
    values = [converted[0]]
    for k in range(len(wrt)):
        per_row = [converted[1 + i * len(wrt) + k] for i in range(size)]
        if size == 1:
            values.append(per_row[0])
        else:
            values.append(sympy.Matrix([list(r) if isinstance(r, sympy.MatrixBase) else [r] for r in per_row]))
    leaves = [n for n in topo_order([y] + flat) if n.op.name in ("input", "param")]
    printer = Printer({}, set())
    for leaf in leaves:
        for s in np.ravel(_leaf_symbols(leaf)):
            printer.names[s] = _element_tex(leaf, s)
    y_tex = name or (latex_name(y.name) if y.name else "L")  # "y" would clash with the usual target input
    tidy = _tidy if simplify else (lambda e: e)
    lines, exprs = [], {}
    v = tidy(values[0])
    lines.append((y_tex, printer.doprint(v)))
    exprs[y_tex] = v
    for w, g in zip(wrt, values[1:], strict=True):
        w_tex = latex_name(w.name) if w.name else w.op.name
        lhs = rf"\frac{{\partial {y_tex}}}{{\partial {w_tex}}}"
        gv = tidy(g)
        lines.append((lhs, printer.doprint(gv)))
        exprs[lhs] = gv
    return Latex(lines, "scalar", exprs)


def _tidy(e):
    if isinstance(e, sympy.MatrixBase):
        return e.applyfunc(_tidy)
    if sympy.count_ops(e) > SIMPLIFY_MAX_OPS:
        return e
    if len(e.atoms(sympy.Piecewise)) > SIMPLIFY_MAX_PIECEWISE:
        return _tidy_parts(e)
    candidates = [e]
    for f in (sympy.simplify, sympy.factor):
        try:
            candidates.append(f(e))
        except Exception:  # a simplifier giving up leaves the others, and the formula as built is still right
            continue
    return min(candidates, key=lambda c: (sympy.count_ops(c), len(sympy.srepr(c))))


def _tidy_parts(e):
    """e with its largest parts that hold no Piecewise simplified (each branch's value, a condition's sides)."""
    if e.is_Atom:
        return e
    if not e.has(sympy.Piecewise):
        return _tidy(e) if isinstance(e, sympy.Expr) else e
    return e.func(*[_tidy_parts(a) for a in e.args])


# ------------------------------------------------------------------------------------------------ to sympy


def _element_tex(leaf: Node, s: sympy.Symbol) -> str:
    base = latex_name(leaf.name)
    if leaf.shape == () or int(np.prod(leaf.shape)) == 1:
        return base
    idx = str(s.name)[len(leaf.name) + 1:]
    return f"{{{base}}}_{{{idx}}}"


def _leaf_symbols(leaf: Node) -> np.ndarray:
    """The sympy symbols of an input or parameter: its name when it holds one number, else name_i (name_ij)
    per element, counted from 1."""
    shape = tuple(int(d) for d in leaf.shape)
    out = np.empty(shape, dtype=object)
    if out.size == 1:
        out.reshape(-1)[0] = sympy.Symbol(leaf.name, real=True)
        return out
    sep = "," if any(d > 9 for d in shape) else ""
    for idx in np.ndindex(*shape):
        out[idx] = sympy.Symbol(f"{leaf.name}_" + sep.join(str(i + 1) for i in idx), real=True)
    return out


def to_sympy(outputs: Node | Sequence[Node], symbols: Mapping[str, Any] | None = None, *, as_list: bool = False):
    """sympy values of small graphs with static shapes: a 0-d or one-element tensor gives an expression, a
    vector or matrix a sympy Matrix. Inputs and parameters become real symbols named after them (`w`, or
    `w_1`, `w_2`, ... per element); `symbols` may bind names to other sympy values instead."""
    single = isinstance(outputs, Node)
    outs = output_nodes(outputs, "to_sympy")
    vals: dict[int, np.ndarray] = {}
    binds = dict(symbols or {})
    for n in topo_order(outs):
        if not all(isinstance(d, int) for d in n.shape):
            raise GraphcError(f"to_sympy: {n.op.name} has the symbolic shape {n.type_str}; bind the dims "
                              "(use concrete sizes) to write element formulas, or use gc.latex(..., mode='matrix')")
        vals[id(n)] = _value(n, [vals[id(i)] for i in n.inputs], binds)
    res = [_as_sympy(vals[id(o)]) for o in outs]
    return res[0] if single and not as_list else res


def _as_sympy(a: np.ndarray):
    if a.ndim == 0 or a.size == 1:
        return a.reshape(-1)[0]
    if a.ndim == 1:
        return sympy.Matrix(list(a))
    if a.ndim == 2:
        return sympy.Matrix(a.tolist())
    return sympy.Array(a.tolist())


def _value(n: Node, args: list[np.ndarray], binds: dict) -> np.ndarray:
    name = n.op.name
    shape = tuple(n.shape)
    if name in ("input", "param"):
        if n.name in binds:
            return np.broadcast_to(np.asarray(binds[n.name], dtype=object), shape).copy()
        return _leaf_symbols(n)
    if name == "constant":
        a = n.attrs["value"].array
        out = np.empty(a.shape, dtype=object)
        for idx in np.ndindex(*a.shape):
            out[idx] = _number(a[idx], n.dtype)
        return out
    if name == "iota":
        return np.array([sympy.Integer(i) for i in range(n.attrs["n"])], dtype=object)
    if name == "dim":
        return np.array(sympy.sympify(n.attrs["expr"]), dtype=object).reshape(())
    if name in ("stop_gradient",):
        return args[0]
    if name == "reshape":
        return args[0].reshape(shape)
    if name == "broadcast_to":
        return np.broadcast_to(args[0], shape).copy()
    if name == "transpose":
        return np.transpose(args[0], n.attrs["perm"])
    if name == "matmul":
        a, b = args
        a = a.T if n.attrs["ta"] else a
        b = b.T if n.attrs["tb"] else b
        out = np.empty(shape, dtype=object)
        for i in range(shape[0]):
            for j in range(shape[1]):
                out[i, j] = sympy.Add(*(a[i, k] * b[k, j] for k in range(a.shape[1])))
        return out
    if name in ("sum", "max"):
        fn = sympy.Add if name == "sum" else sympy.Max
        return _reduce(args[0], n.attrs["axes"], n.attrs["keepdims"], fn)
    if name == "cast":
        x = n.inputs[0]
        out = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            v = args[0][idx]
            if x.dtype == "bool":
                v = sympy.Piecewise((1, v), (0, True))
            elif n.dtype not in FLOAT_DTYPES and x.dtype in FLOAT_DTYPES:
                v = sympy.sign(v) * sympy.floor(sympy.Abs(v))
            out[idx] = v
        return out
    if isinstance(n.op, ElementwiseOp):
        op = n.op
        expr = op.expr_for(n.attrs)
        ins = [np.broadcast_to(a, shape) for a in args]
        out = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            sub = {s: ins[k][idx] for k, s in enumerate(op.args) if k not in op.shape_inputs}
            out[idx] = expr.xreplace(sub)
        return out
    raise NoFormula(n)


def _reduce(a: np.ndarray, axes: tuple[int, ...], keepdims: bool, fn) -> np.ndarray:
    keep = [i for i in range(a.ndim) if i not in axes]
    moved = np.transpose(a, keep + list(axes))
    lead = moved.shape[:len(keep)]
    flat = moved.reshape(lead + (-1,))
    out = np.empty(lead, dtype=object)
    for idx in np.ndindex(*lead):
        out[idx] = fn(*flat[idx])
    if keepdims:
        out = out.reshape(tuple(1 if i in axes else d for i, d in enumerate(a.shape)))
    return out
