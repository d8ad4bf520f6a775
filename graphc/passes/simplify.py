"""Algebraic simplification: identities (x*1, x+0, x/1, --x), transposes folded into matmul flags, double
transposes, constant folding of small all-constant subgraphs, and sums into a scatter-add of zeros made sparse."""

from __future__ import annotations

import numpy as np

from graphc.ir.graph import Graph
from graphc.ir.node import Node
from graphc.ir.shapes import FLOAT_DTYPES, is_static
from graphc.ops import pointwise as ew
from graphc.ops.core import EvalContext, constant
from graphc.ops.gather import SCATTER_ADD, scatter_add
from graphc.ops.linalg import MATMUL, matmul
from graphc.ops.movement import TRANSPOSE, reshape, transpose
from graphc.passes.rewrite import rewrite

FOLD_LIMIT = 4096  # elements: folding bigger constants would bloat code and the cache for little gain


def _scalar(n: Node) -> float | None:
    """The value of a constant whose elements are all equal (also seen through the shape-only ops that copy it
    to a bigger shape: a gradient seeds `sum(y * g)` with ones broadcast to y's shape), else None."""
    while n.op.name in ("broadcast_to", "broadcast_like", "reshape") and n.inputs:
        n = n.inputs[0]
    if n.op.name != "constant":
        return None
    a = n.attrs["value"].array
    if a.size == 0:
        return None
    first = a.reshape(-1)[0]
    return float(first) if np.all(a == first) and a.dtype.kind in "fiu" else None


def _negative_zero(n: Node) -> bool:
    while n.op.name in ("broadcast_to", "broadcast_like", "reshape") and n.inputs:
        n = n.inputs[0]
    a = n.attrs["value"].array
    return a.dtype.kind == "f" and bool(np.all(np.signbit(a)))


def _zero_for_add(c: Node, n: Node) -> bool:
    """Whether adding constant c leaves every value of n's dtype unchanged: 0 for ints, -0.0 for floats."""
    return _scalar(c) == 0.0 and (n.dtype not in FLOAT_DTYPES or _negative_zero(c))


def _same(x: Node, like: Node) -> Node | None:
    """x standing in for `like`: only when nothing about shape or dtype changes."""
    return x if x.shape == like.shape and x.dtype == like.dtype else None


def identities(n: Node) -> Node | None:
    op = n.op
    if op is ew.MUL:
        a, b = n.inputs
        if _scalar(b) == 1.0:
            return _same(a, n)
        if _scalar(a) == 1.0:
            return _same(b, n)
    elif op is ew.ADD:
        # x + 0.0 is +0.0 for x = -0.0: only -0.0 (or an integer 0) leaves every float as it is
        a, b = n.inputs
        if _zero_for_add(b, n):
            return _same(a, n)
        if _zero_for_add(a, n):
            return _same(b, n)
    elif op is ew.SUB:
        a, b = n.inputs
        if _scalar(b) == 0.0 and not _negative_zero(b):  # x - 0.0 is x, -0.0 included
            return _same(a, n)
        if _scalar(a) == 0.0 and n.dtype not in FLOAT_DTYPES:  # 0.0 - x is +0.0 for x = 0.0, not -0.0
            return ew.negative(b) if b.shape == n.shape else None
    elif op is ew.DIV:
        if _scalar(n.inputs[1]) == 1.0:
            return _same(n.inputs[0], n)
    elif op is ew.NEG:
        (a,) = n.inputs
        if a.op is ew.NEG:
            return a.inputs[0]
    elif op is ew.POWC and n.attrs["p"] == 1:
        return n.inputs[0]
    elif op is ew.WHERE:
        c, a, b = n.inputs
        if a is b:
            return _same(a, n)
    elif op is ew.BROADCAST_LIKE:
        return _same(n.inputs[0], n)
    elif op is ew.CAST and n.inputs[0].dtype == n.dtype:
        return n.inputs[0]
    return None


def layouts(n: Node) -> Node | None:
    """transpose(transpose(x)) is one transpose; a transposed matmul operand becomes a flag (no copy)."""
    if n.op is TRANSPOSE and n.inputs[0].op is TRANSPOSE:
        inner = n.inputs[0]
        perm = tuple(inner.attrs["perm"][p] for p in n.attrs["perm"])
        return transpose(inner.inputs[0], perm)
    if n.op is MATMUL:
        a, b = n.inputs
        ta, tb = n.attrs["ta"], n.attrs["tb"]
        changed = False
        if a.op is TRANSPOSE and a.attrs["perm"] == (1, 0):
            a, ta, changed = a.inputs[0], not ta, True
        if b.op is TRANSPOSE and b.attrs["perm"] == (1, 0):
            b, tb, changed = b.inputs[0], not tb, True
        if changed:
            return matmul(a, b, ta=ta, tb=tb)
    return None


def fold_constants(n: Node) -> Node | None:
    if not n.inputs or n.op.kind == "random" or n.op.name == "dim" or getattr(n.op, "multi_output", False):
        return None  # a loop over constants is not one value (its projections read it): it stays a loop
    if not all(i.op.name == "constant" for i in n.inputs):
        return None
    if not is_static(n.shape) or int(np.prod(n.shape, dtype=np.int64)) > FOLD_LIMIT:
        return None
    ctx = EvalContext(np.dtype("float64" if n.dtype == "float64" else "float32"), False, {})
    args = [i.op.reference(i, [], ctx) for i in n.inputs]
    with np.errstate(all="ignore"):
        value = np.asarray(n.op.fold(n, args, ctx))
    return constant(value.astype(n.dtype) if n.dtype in FLOAT_DTYPES or n.dtype != "bool" else value, n.dtype)


def _zero_scatter(n: Node) -> bool:
    """Whether n is a scatter-add into zeros: a gather's gradient (an embedding table's, the rows a batch read)."""
    if n.op is not SCATTER_ADD:
        return False
    z = n.inputs[0]
    return (z.op is ew.FULL_LIKE and z.attrs["p"] == 0) or _scalar(z) == 0.0


def sparse_scatters(n: Node) -> Node | None:
    """A gather's gradient stays sparse through the update that reads it: with S = scatter_add(0, ids, r),
    `c * S` is scatter_add(0, ids, c * r) for a scalar c, `-S` is scatter_add(0, ids, -r), and `p + S` / `p - S`
    scatter into p itself: scatter_add(p, ids, ±r). So an SGD step `p - lr * g` on an embedding table adds
    -lr * r to the rows the batch used, in place, and no dense vocab x dim gradient is written or read (PyTorch's
    `sparse=True`, but for any update written this way). Untouched entries of p keep their bits (the dense form
    turns a -0.0 into +0.0); a row gathered more than once gets its terms one by one (p + a + b rather than
    p + (a + b): rounding may differ in the last bit, as between PyTorch's dense and sparse paths). A non-finite
    c no longer turns the untouched entries into NaN (c * 0)."""
    op = n.op
    if op in (ew.ADD, ew.SUB, ew.MUL):
        a, b = n.inputs
        pairs = [(a, b), (b, a)] if op is not ew.SUB else [(b, a)]
        for s, other in pairs:
            if not _zero_scatter(s) or s.shape != n.shape or s.dtype != n.dtype:
                continue
            z, ids, r = s.inputs
            axis = s.attrs["axis"]
            if op is ew.MUL:
                if other.dtype != n.dtype or not all(d == 1 for d in other.shape):
                    continue  # only a scalar factor scales the rows alike
                return scatter_add(z, ids, (reshape(other, ()) if other.ndim else other) * r, axis)
            if other.shape != n.shape or other.dtype != n.dtype:
                continue  # p broadcast to the sum's shape: the sum is dense anyway
            return scatter_add(other, ids, ew.negative(r) if op is ew.SUB else r, axis)
    elif op is ew.NEG and _zero_scatter(n.inputs[0]):
        z, ids, r = n.inputs[0].inputs
        return scatter_add(z, ids, ew.negative(r), n.inputs[0].attrs["axis"])
    return None


RULES = (identities, layouts, fold_constants, sparse_scatters)


def simplify(graph: Graph) -> Graph:
    return rewrite(graph, RULES, "simplify")
