"""Indexed reads and writes along one axis: take (gather) and its gradient pair scatter_add.

Indices are int32 or int64 tensors of any rank and must lie in [0, size of the axis): unlike numpy, a negative
index is an error, not a count from the end (JAX clamps, PyTorch raises; an embedding id of -1 is far more
often a bug than a request for the last row)."""

from __future__ import annotations

import numpy as np

from graphc.errors import DTypeError, InputError, ShapeError
from graphc.ir.shapes import INT_DTYPES, dims_equal, fmt_shape
from graphc.ops.core import Op, Tensor, apply, as_tensor, describe, located, register


def _check_axis(x, axis) -> None:
    if not 0 <= axis < x.ndim:
        raise ShapeError(f"axis {axis} is out of range for {fmt_shape(x.shape)}")


def _check_indices(idx) -> None:
    if idx.dtype not in INT_DTYPES:
        raise DTypeError(f"indices must be int32 or int64, got {describe(idx)}")


def _gathered_shape(x, idx, axis):
    return x.shape[:axis] + idx.shape + x.shape[axis + 1:]


def _in_range(node, idx: np.ndarray, n: int) -> None:
    """The reference's bounds check: the first bad index, the axis and its size, and the op's line."""
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        msg = _out_of_range(node.attrs, int(idx[bad].flat[0]), n)
        raise InputError(f"{msg} at {node.where()}" if node.attrs.get("what") else
                         f"{node.op.name}: {msg} at {node.where()}")


def _out_of_range(attrs, v: int, n: int) -> str:
    """The words for index v outside [0, n): a checked value's (`what`, shifted by `low`: see checked_labels) or
    a plain index's."""
    what = attrs.get("what")
    if what:
        low = attrs.get("low", 0)
        return f"{what} {v + low} is out of range [{low}, {n + low})"
    return (f"index {v} is out of range for axis {attrs['axis']} with size {n} (indices must be in [0, {n}); "
            "negative indices are not counted from the end)")


class Take(Op):
    """out = x[..., indices, ...] along `axis` (attr): shape x.shape[:axis] + indices.shape + x.shape[axis+1:]."""

    name = "take"
    kind = "movement"

    def infer(self, inputs, attrs):
        x, idx = inputs
        axis = attrs["axis"]
        _check_axis(x, axis)
        _check_indices(idx)
        n = x.shape[axis]
        if idx.op.name == "constant" and isinstance(n, int):  # indices known now: an error now, not when run
            arr = np.asarray(idx.attrs["value"].array)
            bad = (arr < 0) | (arr >= n)
            if bad.any():
                raise ShapeError(_out_of_range(attrs, int(arr[bad].flat[0]), n))
        return _gathered_shape(x, idx, axis), x.dtype

    def reference(self, node, args, ctx):
        x, idx = args
        axis = node.attrs["axis"]
        _in_range(node, idx, x.shape[axis])
        return np.take(x, idx, axis=axis)

    def vjp(self, node, g):
        from graphc.ops.pointwise import full_like

        x, idx = node.inputs
        return scatter_add(full_like(x, 0.0), idx, g, node.attrs["axis"]), None

    def lower(self, node, lx):
        x, idx = node.inputs
        axis, k = node.attrs["axis"], idx.ndim
        j = lx.gather(1, lx.out[axis:axis + k], x.shape[axis])
        return lx.checked(lx.at(0, [*lx.out[:axis], j, *lx.out[axis + k:]]), j)


class ScatterAdd(Op):
    """x with `updates` added at `indices` along `axis` (attr); repeated indices accumulate (np.add.at).
    updates has shape x.shape[:axis] + indices.shape + x.shape[axis+1:]."""

    name = "scatter_add"
    kind = "scatter"

    def infer(self, inputs, attrs):
        x, idx, upd = inputs
        axis = attrs["axis"]
        _check_axis(x, axis)
        _check_indices(idx)
        if x.dtype == "bool" or upd.dtype != x.dtype:
            raise DTypeError(f"x and updates must share a numeric dtype, got {x.dtype} and {upd.dtype}")
        want = _gathered_shape(x, idx, axis)
        if len(want) != upd.ndim or not all(dims_equal(a, b) for a, b in zip(want, upd.shape, strict=True)):
            raise ShapeError(f"updates must have shape x.shape[:axis] + indices.shape + x.shape[axis+1:] = "
                             f"{fmt_shape(want)}, got {fmt_shape(upd.shape)}")
        return x.shape, x.dtype

    def reference(self, node, args, ctx):
        x, idx, upd = args
        axis = node.attrs["axis"]
        _in_range(node, idx, x.shape[axis])
        out = np.array(x, copy=True)
        # index axis first on both sides: out'[idx[j...]] += upd'[j..., rest]
        upd = np.moveaxis(upd, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
        np.add.at(np.moveaxis(out, axis, 0), idx, upd)
        return out

    def vjp(self, node, g):
        x, idx, upd = node.inputs
        return g, None, take(g, idx, node.attrs["axis"])

    def scatter_rule(self, node):
        from graphc.ir.lowering import ScatterRule

        return ScatterRule(node.attrs["axis"])


TAKE = register(Take())
SCATTER_ADD = register(ScatterAdd())


def _args(name, x, indices, axis, extra=()):
    x = as_tensor(x)
    indices = as_tensor(indices) if isinstance(indices, Tensor) else as_tensor(np.asarray(indices))
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise located(ShapeError(f"axis {axis!r} is out of range for a rank-{x.ndim} tensor"), (x, indices, *extra),
                      name)
    return x, indices, int(axis) % x.ndim


def take(x, indices, axis: int = 0) -> Tensor:
    """numpy.take with an axis: the entries of x at `indices` (an int32/int64 tensor, or array, of any rank)
    along `axis`; the result's shape is x.shape[:axis] + indices.shape + x.shape[axis+1:]. Indices must lie in
    [0, x.shape[axis]): an index out of range (negative ones included) is an error when evaluated. `axis=None`
    takes from the flattened x, as numpy."""
    if axis is None:
        from graphc.ops.movement import reshape

        x, axis = reshape(as_tensor(x), (-1,)), 0
    x, indices, axis = _args("take", x, indices, axis)
    return apply(TAKE, (x, indices), axis=axis)


def take_along_axis(arr, indices, axis) -> Tensor:
    """numpy.take_along_axis: out[..., j, ...] = arr[..., indices[..., j, ...], ...] along `axis`, indices of
    arr's rank whose other axes broadcast against arr's (the logit at each row's label: take_along_axis(z,
    labels[:, None], 1)). Indices must lie in [0, arr.shape[axis]) (checked, naming this line: a bad one never
    reads another row); `axis=None` takes from the flattened arr with 1-D indices. One gather of the flattened
    rows, so its gradient is one scatter-add."""
    from graphc.ir.shapes import broadcast_shapes
    from graphc.ops.movement import broadcast_to, expand_dims, reshape, transpose
    from graphc.ops.sources import dim_value, iota

    arr, indices = as_tensor(arr), as_tensor(indices) if isinstance(indices, Tensor) else as_tensor(np.asarray(indices))
    try:
        _check_indices(indices)
    except DTypeError as err:
        raise located(err, (arr, indices), "take_along_axis") from None
    if axis is None:
        if indices.ndim != 1:
            raise located(ShapeError(f"axis=None takes 1-D indices (into the flattened arr), got {describe(indices)}"),
                          (arr, indices), "take_along_axis")
        arr, axis = reshape(arr, (-1,)), 0
    if indices.ndim != arr.ndim:
        raise located(ShapeError(f"indices must have arr's rank {arr.ndim} (use expand_dims: labels[:, None]), got "
                                 f"{describe(indices)}"), (arr, indices), "take_along_axis")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -arr.ndim <= axis < arr.ndim:
        raise located(ShapeError(f"axis {axis!r} is out of range for a rank-{arr.ndim} tensor"), (arr, indices),
                      "take_along_axis")
    axis = int(axis) % arr.ndim
    n, k = arr.shape[axis], indices.shape[axis]
    ones = lambda s: tuple(1 if a == axis else d for a, d in enumerate(s))  # noqa: E731
    try:
        rest = broadcast_shapes([ones(arr.shape), ones(indices.shape)], "take_along_axis")
    except ShapeError as err:
        raise located(err, (arr, indices), "take_along_axis") from None
    perm = [a for a in range(arr.ndim) if a != axis] + [axis]  # the axis last, the others as rows
    a = transpose(broadcast_to(arr, tuple(n if i == axis else d for i, d in enumerate(rest))), perm)
    i = transpose(broadcast_to(indices, tuple(k if j == axis else d for j, d in enumerate(rest))), perm)
    lead = a.shape[:-1]
    rows = 1
    for d in lead:
        rows = rows * d
    flat = reshape(a, (-1,))
    i = reshape(checked_labels(i, n, "take_along_axis: index"), (rows, k))
    base = expand_dims(iota(rows, indices.dtype, of=flat) * dim_value(n, arr, indices.dtype), 1)
    out = reshape(take(flat, i + base, axis=0), (*lead, k))
    back = [perm.index(a) for a in range(arr.ndim)]
    return transpose(out, back)


def checked_labels(labels, n, what: str, low: int = 0) -> Tensor:
    """`labels` themselves, each checked to lie in [low, low + n) where evaluated or compiled (an error naming
    `what`, e.g. "softmax_cross_entropy: label", and the user's line): a take of [low, low + n) at labels - low.
    `n` may be a symbolic dim (the steps of a sequence)."""
    from graphc.ops.core import constant
    from graphc.ops.movement import broadcast_to
    from graphc.ops.reduce import cumsum
    from graphc.ops.sources import iota

    labels = as_tensor(labels)
    _check_indices(labels)
    if isinstance(n, int):
        table = iota(n, labels.dtype)
    else:  # 0, 1, ..., n-1 for a dim known at run time
        table = cumsum(broadcast_to(constant(1, labels.dtype), (n,)), axis=0) - constant(1, labels.dtype)
    if not low:
        return apply(TAKE, (table, labels), axis=0, what=what)
    shift = constant(low, labels.dtype)
    return apply(TAKE, (table + shift, labels - shift), axis=0, what=what, low=low)


def scatter_add(x, indices, updates, axis: int = 0) -> Tensor:
    """x with `updates` added at `indices` along `axis` (repeated indices accumulate, as np.add.at); updates has
    shape x.shape[:axis] + indices.shape + x.shape[axis+1:]. The gradient pair of take."""
    x = as_tensor(x)
    updates = as_tensor(updates, x)
    x, indices, axis = _args("scatter_add", x, indices, axis, (updates,))
    return apply(SCATTER_ADD, (x, indices, updates), axis=axis)


