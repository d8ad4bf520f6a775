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
        first = int(np.flatnonzero(bad.ravel())[0])
        msg = _out_of_range(node.attrs, int(idx.ravel()[first]), n, first if idx.ndim == 1 else None)
        raise InputError(f"{msg} at {node.where()}" if node.attrs.get("what") else
                         f"{node.op.name}: {msg} at {node.where()}")


def _out_of_range(attrs, v: int, n: int, row: int | None = None) -> str:
    """The words for index v outside [0, n): a sequence length's (`steps`: said in steps, see checked_labels), a
    checked value's (`what`, shifted by `low`) or a plain index's. `row`: where v sits in a 1-d index."""
    what = attrs.get("what")
    low = attrs.get("low", 0)
    if attrs.get("steps"):
        return _length_words(what, v + low, n + low - 1, low, row)
    if what:
        return f"{what} {v + low} is out of range [{low}, {n + low})"
    return (f"index {v} is out of range for axis {attrs['axis']} with size {n} (indices must be in [0, {n}); "
            "negative indices are not counted from the end)")


def _length_words(what: str, length: int, steps: int, low: int, row: int | None) -> str:
    """A sequence length outside [low, steps], in the user's terms: the steps of their sequences, not a table."""
    at = f" at row {row}" if row is not None else ""
    if length > steps:
        problem = f"is more than the {steps} step{'s' if steps != 1 else ''}"
    else:
        problem = "is negative" if length < 0 else f"is less than {low}"
    return f"{what}: length {length}{at} {problem} (lengths must lie in [{low}, T] = [{low}, {steps}])"


def check_words(node, bound) -> str:
    """What a failed bounds check of the gather `node` (a table of `bound` rows, maybe symbolic) says in compiled
    code, where the bad value is not known: the message is fixed when the program is compiled."""
    what = node.attrs.get("what")
    low = node.attrs.get("low", 0)
    if node.attrs.get("steps"):
        steps = bound + low - 1
        known = not getattr(steps, "free_symbols", None)  # an int (or sympy's) when T is static
        shown = f"[{low}, T] = [{low}, {steps}] (T" if known else f"[{low}, {steps}] ({steps}"
        return f"{what}: a length is outside {shown}: the steps of the sequences) at {node.where()}"
    if what:
        return f"{what} out of range [{low}, {bound + low}) at {node.where()}"
    return f"{node.op.name} ({node.type_str}) at {node.where()}: an index is out of range [0, {bound})"


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


def checked_labels(labels, n, what: str, low: int = 0, steps: bool = False) -> Tensor:
    """`labels` themselves, each checked to lie in [low, low + n) where evaluated or compiled (an error naming
    `what`, e.g. "softmax_cross_entropy: label", and the user's line): a take of [low, low + n) at labels - low.
    `n` may be a symbolic dim (the steps of a sequence). `steps`: the labels are sequence lengths in [low, T]
    (n = T + 1 - low), said so in an error ("length 6 at row 2 is more than the 5 steps"), and `what` names the
    layer or loss that takes them. Labels known now (a constant) are checked now, at the user's line."""
    from graphc.ir.node import capture_source
    from graphc.ops.core import constant
    from graphc.ops.movement import broadcast_to
    from graphc.ops.reduce import cumsum
    from graphc.ops.sources import iota

    labels = as_tensor(labels)
    _check_indices(labels)
    if labels.op.name == "constant" and isinstance(n, int):
        arr = np.asarray(labels.attrs["value"].array).astype(np.int64) - low
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            first = int(np.flatnonzero(bad.ravel())[0])
            attrs = {"what": what, "low": low, "steps": steps, "axis": 0}
            raise ShapeError(f"{_out_of_range(attrs, int(arr.ravel()[first]), n, first if arr.ndim == 1 else None)}"
                             f" at {capture_source().where()}")
    extra = {"steps": True} if steps else {}
    if isinstance(n, int):
        table = iota(n, labels.dtype)
    else:  # 0, 1, ..., n-1 for a dim known at run time
        table = cumsum(broadcast_to(constant(1, labels.dtype), (n,)), axis=0) - constant(1, labels.dtype)
    if not low:
        return apply(TAKE, (table, labels), axis=0, what=what, **extra)
    shift = constant(low, labels.dtype)
    return apply(TAKE, (table + shift, labels - shift), axis=0, what=what, low=low, **extra)


def scatter_add(x, indices, updates, axis: int = 0) -> Tensor:
    """x with `updates` added at `indices` along `axis` (repeated indices accumulate, as np.add.at); updates has
    shape x.shape[:axis] + indices.shape + x.shape[axis+1:]. The gradient pair of take."""
    x = as_tensor(x)
    updates = as_tensor(updates, x)
    x, indices, axis = _args("scatter_add", x, indices, axis, (updates,))
    return apply(SCATTER_ADD, (x, indices, updates), axis=axis)


