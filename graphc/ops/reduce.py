"""Reductions: sum, prod, max and min over axes, cumsum along one, and sum_to_shape, which undoes broadcasting in
gradients."""

from __future__ import annotations

import math

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir.formula import Term
from graphc.ir.lowering import ACC, NEXT, ReduceRule
from graphc.ir.shapes import FLOAT_DTYPES, Shape, fmt_shape
from graphc.ops.core import Op, Tensor, apply, as_tensor, located, register


def normalize_axes(x: Tensor, axis, op: str) -> tuple[int, ...]:
    """`axis` (an int, a sequence of ints or None: every axis) as sorted non-negative axes of `x`; anything else
    is a ShapeError naming `op`, `x` and the user's line."""
    if axis is None:
        return tuple(range(x.ndim))
    try:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    except TypeError:
        axes = None
    problem = None
    if axes is None or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes):
        problem = f"axis must be an int, a tuple of ints or None, got {axis!r}"
    elif any(not -x.ndim <= a < x.ndim for a in axes):
        bad = next(int(a) for a in axes if not -x.ndim <= a < x.ndim)
        problem = f"axis {bad} is out of range for a rank-{x.ndim} tensor (axes {-x.ndim} to {x.ndim - 1})"
    elif len({int(a) % x.ndim for a in axes}) != len(axes):
        problem = f"repeated axis in {tuple(int(a) for a in axes)}"
    if problem:
        raise located(ShapeError(problem), (x,), op)
    return tuple(sorted(int(a) % x.ndim for a in axes))


def check_keepdims(keepdims, x: Tensor, op: str) -> bool:
    """`keepdims` as a bool: a bool or an int, as numpy takes; anything else (a dtype passed where numpy's sum has
    its dtype and gc.sum its keepdims) is a GraphcError, not a silent keepdims=True."""
    if not isinstance(keepdims, (bool, np.bool_, int, np.integer)):
        raise located(GraphcError(f"keepdims must be a bool, got {keepdims!r} (gc.{op}'s third argument is "
                                  f"keepdims, not numpy's dtype: cast x first, gc.cast(x, dtype))"), (x,), op)
    return bool(keepdims)


def _reduced_shape(shape: Shape, axes: tuple[int, ...], keepdims: bool) -> Shape:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


class _Reduce(Op):
    kind = "reduce"

    def infer(self, inputs, attrs):
        (x,) = inputs
        if x.dtype == "bool" and self.name != "sum":
            raise DTypeError(f"{self.name} of a bool tensor; cast it first")
        out = "int32" if x.dtype == "bool" else x.dtype
        return _reduced_shape(x.shape, attrs["axes"], attrs["keepdims"]), out


class _Accumulate(_Reduce):
    """A sum or a product: numpy's, accumulated in the node's dtype."""

    numpy_fn: staticmethod

    def reference(self, node, args, ctx):
        return self.numpy_fn(args[0], axis=node.attrs["axes"], keepdims=node.attrs["keepdims"],
                             dtype=ctx.dtype(node.dtype))


class Sum(_Accumulate):
    name = "sum"
    numpy_fn = staticmethod(np.sum)

    def vjp(self, node, g):
        from graphc.ops.movement import reshape
        from graphc.ops.pointwise import broadcast_like

        x = node.inputs[0]
        kept = _reduced_shape(x.shape, node.attrs["axes"], True)
        return (broadcast_like(reshape(g, kept), x),)

    def reduce_rule(self, node):
        return ReduceRule("sum", ACC + NEXT, 0.0, node.attrs["axes"])


class _Extremum(_Reduce):
    """max or min over axes. Gradient convention: ties share the cotangent evenly."""

    pick: staticmethod

    def infer(self, inputs, attrs):
        (x,) = inputs
        for a in attrs["axes"]:
            if isinstance(x.shape[a], int) and x.shape[a] == 0:
                raise ShapeError(f"{self.name} over the empty axis {a} of {fmt_shape(x.shape)}")
        return super().infer(inputs, attrs)

    def reference(self, node, args, ctx):
        return self.pick(args[0], axis=node.attrs["axes"], keepdims=node.attrs["keepdims"])

    def vjp(self, node, g):
        from graphc.ops.movement import broadcast_to, reshape
        from graphc.ops.pointwise import cast, equal, logical_and, logical_or, not_equal, where

        x = node.inputs[0]
        axes = node.attrs["axes"]
        kept = _reduced_shape(x.shape, axes, True)
        m = broadcast_to(reshape(node, kept), x.shape)
        hit = equal(x, m)
        if x.dtype in FLOAT_DTYPES:  # a NaN is the max (min) it makes: the cotangent goes to it, as PyTorch's
            hit = logical_or(hit, logical_and(not_equal(x, x), not_equal(m, m)))
        count = sum(cast(hit, x.dtype), axes, keepdims=True)
        share = reshape(g, kept) / count
        return (where(hit, broadcast_to(share, x.shape), 0.0),)



class Max(_Extremum):
    name = "max"
    pick = staticmethod(np.max)

    def reduce_rule(self, node):
        # propagates nan, as numpy's max does (the native code's max is numpy's maximum)
        return ReduceRule("max", Term("max", (ACC, NEXT)), float("-inf"), node.attrs["axes"])


class Min(_Extremum):
    name = "min"
    pick = staticmethod(np.min)

    def reduce_rule(self, node):
        return ReduceRule("min", Term("min", (ACC, NEXT)), float("inf"), node.attrs["axes"])


EXCLUSIVE_MAX = 16  # reduced sizes up to this take the exclusive products by masking (exact to every order)


class Prod(_Accumulate):
    """The product over axes. Gradient: the product of the other elements, exact where x holds zeros, not
    prod / x. Over at most EXCLUSIVE_MAX elements (static) it is each element's product of the others, taken by
    masking that element to 1 (n products of n: cheap at that size), so it differentiates again exactly, zeros
    included (as jax's); over more, from the count of zeros (one zero: only its position gets the others'
    product; two or more: all zero): exact to first order, while a second derivative at a zero is not (PyTensor's
    rule)."""

    name = "prod"
    numpy_fn = staticmethod(np.prod)

    def vjp(self, node, g):
        from graphc.ops.movement import broadcast_to, reshape
        from graphc.ops.pointwise import cast, equal, logical_and, where

        x = node.inputs[0]
        axes = node.attrs["axes"]
        kept = _reduced_shape(x.shape, axes, True)
        sizes = [x.shape[a] for a in axes]
        if all(isinstance(d, int) for d in sizes) and 1 < math.prod(sizes) <= EXCLUSIVE_MAX:
            return (broadcast_to(reshape(g, kept), x.shape) * _exclusive_products(x, axes),)
        zero = equal(x, 0.0)
        nonzero = where(zero, 1.0, x)
        others = broadcast_to(prod(nonzero, axes, keepdims=True), x.shape)  # the product of the nonzero ones
        zeros = broadcast_to(sum(cast(zero, "int32"), axes, keepdims=True), x.shape)
        d = where(equal(zeros, 0), others / nonzero, where(logical_and(equal(zeros, 1), zero), others, 0.0))
        return (broadcast_to(reshape(g, kept), x.shape) * d,)

    def reduce_rule(self, node):
        return ReduceRule("prod", ACC * NEXT, 1.0, node.attrs["axes"])


class Cumsum(Op):
    """Running sums along `axis` (attr); `reverse` (attr) sums from the end: out[i] = sum(x[i:])."""

    name = "cumsum"
    kind = "reduce"

    def infer(self, inputs, attrs):
        (x,) = inputs
        if not 0 <= attrs["axis"] < x.ndim:
            raise ShapeError(f"axis {attrs['axis']} is out of range for {fmt_shape(x.shape)}")
        return x.shape, "int32" if x.dtype == "bool" else x.dtype

    def reference(self, node, args, ctx):
        x, axis = args[0], node.attrs["axis"]
        dtype = ctx.dtype(node.dtype)
        if node.attrs["reverse"]:
            return np.flip(np.cumsum(np.flip(x, axis), axis, dtype=dtype), axis)
        return np.cumsum(x, axis, dtype=dtype)

    def vjp(self, node, g):
        # out[i] = sum_{j<=i} x[j], so dx[j] = sum_{i>=j} g[i]: the cumsum the other way
        return (apply(CUMSUM, (g,), axis=node.attrs["axis"], reverse=not node.attrs["reverse"]),)

    def reduce_rule(self, node):
        # starting from -0.0, IEEE addition's identity (-0 + x is x, -0 included), not +0: numpy's cumsum starts
        # with the first element, and a running sum of -0.0 stays -0.0
        return ReduceRule("sum", ACC + NEXT, -0.0, (node.attrs["axis"],), scan=True, reverse=node.attrs["reverse"])


def _exclusive_products(x, axes) -> Tensor:
    """For each element of x, the product of the others along `axes` (static, small): the reduced axes moved
    last and flattened to n, x repeated as (..., n, n) with the diagonal set to 1, and a product over the last
    axis; then back to x's layout."""
    from graphc.ops.core import constant
    from graphc.ops.movement import broadcast_to, expand_dims, reshape, transpose
    from graphc.ops.pointwise import where

    rest = [a for a in range(x.ndim) if a not in axes]
    order = rest + list(axes)
    moved = transpose(x, order) if order != list(range(x.ndim)) else x
    lead = tuple(x.shape[a] for a in rest)
    sizes = tuple(x.shape[a] for a in axes)
    n = math.prod(sizes)
    flat = reshape(moved, (*lead, n))
    rows = broadcast_to(expand_dims(flat, -2), (*lead, n, n))
    eye = constant(np.eye(n, dtype=bool))
    excl = prod(where(broadcast_to(eye, (*lead, n, n)), 1.0, rows), (len(lead) + 1,))
    back = reshape(excl, (*lead, *sizes))
    inverse = [order.index(a) for a in range(x.ndim)]
    return transpose(back, inverse) if inverse != list(range(x.ndim)) else back


SUM = register(Sum())
MAX = register(Max())
MIN = register(Min())
CUMSUM = register(Cumsum())
PROD = register(Prod())


def sum(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - the DSL's word
    x = as_tensor(x)
    axes = normalize_axes(x, axis, "sum")
    keepdims = check_keepdims(keepdims, x, "sum")
    if not axes:
        return x
    return apply(SUM, (x,), axes=axes, keepdims=keepdims)


def max(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    x = as_tensor(x)
    axes = normalize_axes(x, axis, "max")
    keepdims = check_keepdims(keepdims, x, "max")
    if not axes:
        return x
    return apply(MAX, (x,), axes=axes, keepdims=keepdims)


def min(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    x = as_tensor(x)
    axes = normalize_axes(x, axis, "min")
    keepdims = check_keepdims(keepdims, x, "min")
    if not axes:
        return x
    return apply(MIN, (x,), axes=axes, keepdims=keepdims)


def prod(x, axis=None, keepdims: bool = False) -> Tensor:
    """numpy.prod: the product over axes (1 over an empty axis); bools are multiplied as int32."""
    from graphc.ops.pointwise import cast

    x = as_tensor(x)
    if x.dtype == "bool":
        x = cast(x, "int32")
    axes = normalize_axes(x, axis, "prod")
    keepdims = check_keepdims(keepdims, x, "prod")
    if not axes:
        return x
    return apply(PROD, (x,), axes=axes, keepdims=keepdims)


def cumsum(x, axis: int | None = None, *, reverse: bool = False) -> Tensor:
    """numpy.cumsum: running sums along `axis` (None: over the flattened tensor). `reverse=True` sums from the
    end (out[i] = x[i] + x[i+1] + ...)."""
    from graphc.ops.movement import reshape

    x = as_tensor(x)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise located(ShapeError(f"axis must be an int or None, got {axis!r}"), (x,), "cumsum")
    (axis,) = normalize_axes(x, axis, "cumsum")
    return apply(CUMSUM, (x,), axis=axis, reverse=bool(reverse))


def sum_to_shape(g: Tensor, shape: Shape) -> Tensor:
    """Sum `g` over the axes that broadcasting added or stretched, giving a tensor of `shape`."""
    from graphc.ops.movement import reshape

    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = list(range(lead))
    for i, d in enumerate(shape):
        if isinstance(d, int) and d == 1 and not (isinstance(g.shape[lead + i], int) and g.shape[lead + i] == 1):
            axes.append(lead + i)
    out = sum(g, tuple(axes), keepdims=True) if axes else g
    return reshape(out, shape)
