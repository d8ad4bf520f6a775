"""Data-movement ops: transpose, reshape, broadcast_to. They lower to index maps, not to copies, when fused."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sympy

from graphc.errors import ShapeError
from graphc.ir.node import Node
from graphc.ir.shapes import as_shape, dims_equal, eval_shape, fmt_shape, size
from graphc.ops.core import Op, Tensor, apply, as_tensor, register


class Transpose(Op):
    name = "transpose"
    kind = "movement"

    def infer(self, inputs, attrs):
        (x,) = inputs
        perm = attrs["perm"]
        if sorted(perm) != list(range(x.ndim)):
            raise ShapeError(f"perm {perm} is not a permutation of the {x.ndim} axes of {fmt_shape(x.shape)}")
        return tuple(x.shape[p] for p in perm), x.dtype

    def reference(self, node, args, ctx):
        return np.transpose(args[0], node.attrs["perm"])

    def vjp(self, node, g):
        inv = tuple(int(i) for i in np.argsort(node.attrs["perm"]))
        return (transpose(g, inv),)

    def lower(self, node, lx):
        index = [0] * node.ndim
        for k, p in enumerate(node.attrs["perm"]):
            index[p] = lx.out[k]
        return lx.at(0, index)


TRANSPOSE = register(Transpose())


def transpose(x, perm: Sequence[int] | None = None) -> Tensor:
    """Permute axes (default: reverse them, so a matrix's transpose)."""
    x = as_tensor(x)
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(int(p) % max(x.ndim, 1) for p in perm)
    if perm == tuple(range(x.ndim)):
        return x
    return apply(TRANSPOSE, (x,), perm=perm)


class Reshape(Op):
    name = "reshape"
    kind = "movement"
    hidden_attrs = ("shape",)

    def infer(self, inputs, attrs):
        (x,) = inputs
        shape = attrs["shape"]
        if not dims_equal(size(x.shape), size(shape)):
            raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} ({size(x.shape)} elements) to "
                             f"{fmt_shape(shape)} ({size(shape)} elements)")
        return shape, x.dtype

    def reference(self, node, args, ctx):
        return np.reshape(args[0], eval_shape(node.shape, ctx.dims))

    def vjp(self, node, g):
        return (reshape(g, node.inputs[0].shape),)

    def is_view(self, node):
        return True

    def needs_memory(self, node):
        return () if _squeeze_map(node.inputs[0].shape, node.shape) is not None else (0,)

    def lower(self, node, lx):
        sq = _squeeze_map(node.inputs[0].shape, node.shape)
        if sq is None:  # the elements regroup: read the input's storage at this row-major position
            return lx.flat(0)
        return lx.at(0, [0 if j is None else lx.out[j] for j in sq])


def _squeeze_map(src, dst) -> list[int | None] | None:
    """For a reshape that only adds or drops size-1 dims: for each src axis, the dst axis it equals (or None
    for a dropped 1). None when the reshape really regroups elements."""
    one = lambda d: isinstance(d, int) and d == 1  # noqa: E731
    a = [i for i, d in enumerate(src) if not one(d)]
    b = [i for i, d in enumerate(dst) if not one(d)]
    if len(a) != len(b) or any(src[i] != dst[j] for i, j in zip(a, b, strict=True)):
        return None
    out: list[int | None] = [None] * len(src)
    for i, j in zip(a, b, strict=True):
        out[i] = j
    return out


RESHAPE = register(Reshape())


def reshape(x, shape) -> Tensor:
    """Reshape; one dim may be -1 (inferred)."""
    x = as_tensor(x)
    raw = shape if isinstance(shape, (tuple, list)) else (shape,)
    if sum(1 for d in raw if isinstance(d, (int, np.integer)) and d == -1) > 1:
        raise ShapeError(f"reshape to {tuple(raw)}: at most one dim may be -1")
    if any(isinstance(d, (int, np.integer)) and d == -1 for d in raw):
        known = [d for d in raw if not (isinstance(d, (int, np.integer)) and d == -1)]
        rest = sympy.simplify(sympy.sympify(size(x.shape)) / sympy.sympify(size(as_shape(known))))
        if not (rest.is_integer or (rest.is_Integer)):
            raise ShapeError(f"reshape {fmt_shape(x.shape)} to {tuple(raw)}: -1 does not divide evenly")
        raw = [rest if (isinstance(d, (int, np.integer)) and d == -1) else d for d in raw]
    shape = as_shape(raw, "reshape")
    if shape == x.shape:
        return x
    if isinstance(x, Node) and x.op is RESHAPE:  # reshape of a reshape is one reshape
        x = x.inputs[0]
        if shape == x.shape:
            return x
    return apply(RESHAPE, (x,), shape=shape)


class BroadcastTo(Op):
    name = "broadcast_to"
    kind = "movement"
    hidden_attrs = ("shape",)

    def infer(self, inputs, attrs):
        (x,) = inputs
        shape = attrs["shape"]
        if x.ndim > len(shape):
            raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to the lower-rank {fmt_shape(shape)}")
        for d, t in zip(reversed(x.shape), reversed(shape), strict=False):
            if not (d == 1 or dims_equal(d, t)):
                raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(shape)}")
        return shape, x.dtype

    def reference(self, node, args, ctx):
        return np.broadcast_to(args[0], eval_shape(node.shape, ctx.dims))

    def vjp(self, node, g):
        from graphc.ops.reduce import sum_to_shape

        return (sum_to_shape(g, node.inputs[0].shape),)

    def lower(self, node, lx):
        return lx.input(0)


BROADCAST = register(BroadcastTo())


def broadcast_to(x, shape) -> Tensor:
    x = as_tensor(x)
    shape = as_shape(shape, "broadcast_to")
    if shape == x.shape:
        return x
    return apply(BROADCAST, (x,), shape=shape)


def expand_dims(x, axis: int) -> Tensor:
    """x with a new axis of length 1 at `axis` (in [-(rank+1), rank], as numpy's)."""
    x = as_tensor(x)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim - 1 <= axis <= x.ndim:
        raise ShapeError(f"expand_dims: axis {axis!r} is out of range for a rank-{x.ndim} tensor (a new axis goes "
                         f"at {-x.ndim - 1} to {x.ndim})")
    axis = int(axis) % (x.ndim + 1)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])
