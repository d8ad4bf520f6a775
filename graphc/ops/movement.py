"""Data-movement ops: transpose, reshape, broadcast_to, slice, pad, concat and sliding windows. They lower to
index maps (offsets, strides, bounds), not to copies, when fused."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir import index as ix
from graphc.ir.dims import Dim as SymbolicDim
from graphc.ir.dims import ceil_div, exact_div, from_sympy, size_max0
from graphc.ir.index import rel
from graphc.ir.lowering import floordiv
from graphc.ir.node import Node
from graphc.ir.shapes import (
    INT_DTYPES,
    Dim,
    Shape,
    as_shape,
    dims_equal,
    eval_dim,
    eval_shape,
    fmt_shape,
    is_sympy,
    size,
)
from graphc.ops.core import Op, Tensor, apply, as_tensor, describe, located, register


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

    def moves_inner_axis(self, node):
        return node.ndim > 0 and node.attrs["perm"][-1] != node.ndim - 1

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
        src, dst = node.inputs[0].shape, node.shape
        return () if _squeeze_map(src, dst) is not None or _regroups_a_transpose(node) else (0,)

    def lower(self, node, lx):
        src, dst = node.inputs[0].shape, node.shape
        sq = _squeeze_map(src, dst)
        if sq is not None:
            return lx.at(0, [0 if j is None else lx.out[j] for j in sq])
        groups = _inner_regroup(src, dst) if _regroups_a_transpose(node) else None
        if groups is None or lx.in_memory(0):  # read the input's storage at this row-major position
            return lx.flat(0)
        # outer axes regroup, the innermost stays: the input's index digits from this point's (floor divisions
        # and remainders of the outer indices; the vectorized innermost axis stays affine), so an expression
        # (a pooling gradient routed back to its windows, say) need not be stored first
        index: list = [0] * len(src)
        for si, dj in groups:
            flat = 0
            for j in dj:
                flat = flat * dst[j] + lx.out[j]
            for i in reversed(si[1:]):
                index[i] = ix.mod(flat, src[i])
                flat = floordiv(flat, src[i])
            if si:
                index[si[0]] = flat
        return lx.at(0, index)


def _regroups_a_transpose(node) -> bool:
    """A reshape merging or splitting the outer axes of a transpose that keeps the innermost axis (a pooling
    window's gradient routed back to its image: (N, OH, KH, OW, KW, C) -> (N, H, W, C)) reads the transpose's
    input by index arithmetic instead of storing the transpose first. Other regroups keep reading their input's
    storage (a matrix product's output, an image packed as an im2col view: where storing is what is wanted)."""
    x = node.inputs[0]
    return (x.op is TRANSPOSE and x.attrs["perm"][-1] == x.ndim - 1
            and _inner_regroup(x.shape, node.shape) is not None)


def _inner_regroup(src, dst) -> list[tuple[list[int], list[int]]] | None:
    """For a reshape that regroups adjacent outer axes and keeps the innermost axis: the groups (src axes, dst
    axes) of equal size (an axis of size 1 may stand alone), outermost first; within a group only the outermost
    axis of each side may be symbolic (the batch: (N, 16, 2, 16, 2, C) -> (1024·N, C)). None otherwise."""
    one = lambda d: isinstance(d, int) and d == 1  # noqa: E731
    groups: list[tuple[list[int], list[int]]] = []
    i, j = len(src) - 1, len(dst) - 1
    while i >= 0 or j >= 0:  # from the innermost axis out
        if i >= 0 and one(src[i]):
            groups.append(([i], []))
            i -= 1
        elif j >= 0 and one(dst[j]):
            groups.append(([], [j]))
            j -= 1
        elif i < 0 or j < 0:
            return None
        elif dims_equal(src[i], dst[j]):
            groups.append(([i], [j]))
            i, j = i - 1, j - 1
        else:
            si, dj = [i], [j]
            ps, pd = src[i], dst[j]
            while isinstance(ps, int) and isinstance(pd, int) and ps != pd:
                if ps < pd:
                    i -= 1
                    if i < 0:
                        return None
                    si.insert(0, i)
                    ps *= src[i]
                else:
                    j -= 1
                    if j < 0:
                        return None
                    dj.insert(0, j)
                    pd *= dst[j]
            if not (isinstance(ps, int) and isinstance(pd, int)):  # a symbolic dim: the rest is one group
                si, dj = list(range(si[-1] + 1)), list(range(dj[-1] + 1))
                if (not dims_equal(size([src[a] for a in si]), size([dst[b] for b in dj]))
                        or any(not isinstance(src[a], int) for a in si[1:])
                        or any(not isinstance(dst[b], int) for b in dj[1:])):
                    return None
            groups.append((si, dj))
            i, j = si[0] - 1, dj[0] - 1
    groups.reverse()
    last = next((g for g in reversed(groups) if g[0] and g[1]), None)
    if last is None or len(last[0]) != 1 or len(last[1]) != 1 or not any(len(g[0]) + len(g[1]) > 2 for g in groups):
        return None
    return groups


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


def _reshape_target(x: Tensor, shape) -> Shape:
    """The shape a reshape of x asks for, its -1 inferred."""
    raw = shape if isinstance(shape, (tuple, list)) else (shape,)
    if sum(1 for d in raw if isinstance(d, (int, np.integer)) and d == -1) > 1:
        raise ShapeError(f"to {tuple(raw)}: at most one dim may be -1")
    if any(isinstance(d, (int, np.integer)) and d == -1 for d in raw):
        known = [d for d in raw if not (isinstance(d, (int, np.integer)) and d == -1)]
        part = size(as_shape(known, "shape"))
        rest = exact_div(size(x.shape), part) if not (isinstance(part, int) and part == 0) else None
        if rest is None:
            raise ShapeError(f"{fmt_shape(x.shape)} to {tuple(raw)}: -1 does not divide evenly")
        raw = [rest if (isinstance(d, (int, np.integer)) and d == -1) else d for d in raw]
    return as_shape(raw, "shape")


def reshape(x, shape) -> Tensor:
    """Reshape; one dim may be -1 (inferred)."""
    x = as_tensor(x)
    try:
        shape = _reshape_target(x, shape)
    except ShapeError as err:
        raise located(err, (x,), "reshape") from None
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


def expand_dims(x, axis) -> Tensor:
    """x with a new axis of length 1 at `axis` (in [-(rank+1), rank], as numpy's), or at each axis of a tuple of
    them, counted in the result (numpy's: a (2, 3, 4) tensor with axis (0, 2) becomes (1, 2, 1, 3, 4))."""
    x = as_tensor(x)
    many = isinstance(axis, (tuple, list))
    axes = tuple(axis) if many else (axis,)
    rank = x.ndim + len(axes)  # the result's
    problem = None
    if any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes):
        problem = f"axis must be an int or a tuple of ints, got {axis!r}"
    elif not many and not -rank <= axis < rank:
        problem = f"axis {axis!r} is out of range for a rank-{x.ndim} tensor (a new axis goes at {-rank} to {rank - 1})"
    elif many and any(not -rank <= a < rank for a in axes):
        bad = next(int(a) for a in axes if not -rank <= a < rank)
        problem = (f"axis {bad} in {tuple(int(a) for a in axes)} is out of range: the axes are counted in the "
                   f"rank-{rank} result (from {-rank} to {rank - 1})")
    elif len({int(a) % rank for a in axes}) != len(axes):
        problem = (f"repeated axis in {tuple(int(a) for a in axes)}: each must be a different axis of the rank-{rank} "
                   f"result (from {-rank} to {rank - 1})")
    if problem:
        raise located(ShapeError(problem), (x,), "expand_dims")
    new = {int(a) % rank for a in axes}
    dims = iter(x.shape)
    return reshape(x, tuple(1 if i in new else next(dims) for i in range(rank)))


def squeeze(x, axis=None) -> Tensor:
    """x without axes of length 1 (`axis`: those axes only, each of which must have length 1), as numpy's."""
    x = as_tensor(x)
    if axis is None:
        drop = {a for a, d in enumerate(x.shape) if isinstance(d, int) and d == 1}
    else:
        from graphc.ops.reduce import normalize_axes

        drop = set(normalize_axes(x, axis, "squeeze"))
        bad = [a for a in sorted(drop) if not (isinstance(x.shape[a], int) and x.shape[a] == 1)]
        if bad:
            raise located(ShapeError(f"axis {bad[0]} of {fmt_shape(x.shape)} has length {x.shape[bad[0]]}, not 1: "
                                     "only axes of length 1 can be squeezed"), (x,), "squeeze")
    return reshape(x, tuple(d for a, d in enumerate(x.shape) if a not in drop))


def flip(x, axis=None) -> Tensor:
    """x with the order of its elements reversed along `axis` (None: every axis), as numpy.flip."""
    from graphc.ops.reduce import normalize_axes

    x = as_tensor(x)
    axes = normalize_axes(x, axis, "flip")
    return getitem(x, tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(x.ndim)))


def swapaxes(x, axis1: int, axis2: int) -> Tensor:
    """x with two axes interchanged, as numpy.swapaxes."""
    x = as_tensor(x)
    try:
        a, b = _axis(axis1, x.ndim), _axis(axis2, x.ndim)
    except ShapeError as err:
        raise _fail(err, [x], "swapaxes") from None
    perm = list(range(x.ndim))
    perm[a], perm[b] = b, a
    return transpose(x, perm)


# ---------------------------------------------------------------------------------------------------------
# slice <-> pad, concat, windows: index maps with offsets and strides


def _dim(d) -> Dim:
    """A dim (or a signed bound) from arithmetic on dims: an int, a `Dim`, or a sympy expression a user passed."""
    if isinstance(d, (int, np.integer)):
        return int(d)
    if isinstance(d, SymbolicDim):
        return d
    if isinstance(d, Fraction) and d.denominator == 1:
        return int(d)
    if is_sympy(d):
        return from_sympy(d)
    raise ShapeError(f"{d!r} is not a whole number of elements")


def _static(d) -> bool:
    return isinstance(d, int)


def _ints(v, n: int, what: str, lo: int | None = 0) -> tuple:
    if len(v) != n:
        raise ShapeError(f"{what} has {len(v)} entries for {n} axes")
    for k in v:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or (lo is not None and k < lo):
            raise ShapeError(f"{what} must be ints >= {lo}, got {tuple(v)}")
    return tuple(int(k) for k in v)


class Slice(Op):
    """out[i] = x[start + step*i] on every axis (i < the output's dim): numpy's basic slicing, strided, any sign.

    attrs `start`, `stop`, `step` hold one entry per axis in Python `range` form, normalized so one selection
    has one node: `start` is the first index read, `stop` = last index read + sign(step) (so -1 when a negative
    step reads index 0), step != 0; an empty selection is (0, 0, 1). On a symbolic axis (the batch N, a length T)
    the bounds are dims (x[1:] is (1, N, 1) of N - 1 elements, x[-1] is (N-1, N, 1)) and are not clipped to the
    axis as numpy's are: that they lie inside it is checked when the dims are known (`check_dims`)."""

    name = "slice"
    kind = "movement"

    def infer(self, inputs, attrs):
        (x,) = inputs
        start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
        if not len(start) == len(stop) == len(step) == x.ndim:
            raise ShapeError(f"start/stop/step need one entry for each of the {x.ndim} axes of {fmt_shape(x.shape)}")
        out = []
        for axis, (d, a, b, s) in enumerate(zip(x.shape, start, stop, step, strict=True)):
            if isinstance(s, bool) or not isinstance(s, int) or s == 0:
                raise ShapeError(f"axis {axis}: step must be a non-zero int, got {s!r}")
            if all(_static(v) for v in (d, a, b)):
                n = len(range(a, b, s))
                if n and not (0 <= a < d and 0 <= a + s * (n - 1) < d):
                    raise ShapeError(f"axis {axis}: range({a}, {b}, {s}) reads outside [0, {d}) of "
                                     f"{fmt_shape(x.shape)}")
                out.append(n)
                continue
            q = exact_div(b - (1 if s > 0 else -1) - a, s)
            n = None if q is None else _dim(q + 1)
            if n is None:
                raise ShapeError(f"axis {axis} ({d}): range({a}, {b}, {s}) is not a whole number of steps")
            out.append(n)
        return tuple(out), x.dtype

    def check_dims(self, node, env) -> str | None:
        """Why the selection does not fit the input at these dims (None when it does): a symbolic axis shorter
        than its bounds need."""
        x = node.inputs[0]
        a_ = node.attrs
        for axis, (d, n, a, s) in enumerate(zip(x.shape, node.shape, a_["start"], a_["step"], strict=True)):
            if _static(d) and _static(n) and _static(a):
                continue
            d, n, a = eval_dim(d, env), eval_dim(n, env), eval_dim(a, env)
            if n < 0 or n > 0 and not (0 <= a < d and 0 <= a + s * (n - 1) < d):
                dims = ", ".join(f"{k} = {env[k]}" for k in sorted(_free(x.shape[axis], node.shape[axis]), key=str))
                what = f"index {a}" if n == 1 else f"indices {a} to {a + s * (n - 1)} by {s}" if n > 0 else \
                    f"the elements from index {a} on"
                return (f"{node.op.name} at {node.where()}: axis {axis} of {fmt_shape(x.shape)} has "
                        f"{d} element(s) at {dims}, and the selection needs {what}; on a symbolic axis slice "
                        "bounds and indices are not clipped to its size as numpy's are: pass a longer axis or "
                        "select less")
        return None

    def reference(self, node, args, ctx):
        why = self.check_dims(node, ctx.dims)
        if why is not None:
            raise ShapeError(why)
        key = []
        for a, b, s in zip(node.attrs["start"], node.attrs["stop"], node.attrs["step"], strict=True):
            a, b = eval_dim(a, ctx.dims), eval_dim(b, ctx.dims)
            # a stop below 0 is "before index 0": to the start when reading backwards, an empty range forwards
            key.append(slice(a, b if b >= 0 else (None if s < 0 else 0), s))
        return args[0][tuple(key)]

    def vjp(self, node, g):
        x = node.inputs[0]
        low, high, interior = [], [], []
        flip = [False] * x.ndim
        for axis, (d, n, a, s) in enumerate(zip(x.shape, node.shape, node.attrs["start"], node.attrs["step"],
                                                strict=True)):
            if _static(n) and n == 0:
                low.append(d), high.append(0), interior.append(0)
                continue
            if s < 0:  # read backwards: the cotangent reversed is a forward read from the last index
                flip[axis] = True
                a, s = _dim(a + s * (n - 1)), -s
            low.append(_dim(a))
            interior.append(s - 1)
            # the rest of the axis after n elements with s - 1 values between each two (the pad's own count,
            # max(n - 1, 0): an empty selection of a symbolic axis pads to d too)
            high.append(_dim(d - a - n - size_max0(n - 1) * (s - 1)))
        if any(flip):
            g = _reverse(g, [i for i, f in enumerate(flip) if f])
        return (_pad(g, low, high, interior, 0),)

    def lower(self, node, lx):
        a = node.attrs
        return lx.at(0, [st + sp * o for st, sp, o in zip(a["start"], a["step"], lx.out, strict=True)])


SLICE = register(Slice())


def _reverse(x: Tensor, axes) -> Tensor:
    start = tuple(_dim(d - 1) if i in axes else 0 for i, d in enumerate(x.shape))
    stop = tuple(-1 if i in axes else d for i, d in enumerate(x.shape))
    step = tuple(-1 if i in axes else 1 for i in range(x.ndim))
    return apply(SLICE, (x,), start=start, stop=stop, step=step)


def _slice(x: Tensor, start, stop, step) -> Tensor:
    """The op on already normalized per-axis ranges; the identity selection is x itself."""
    start, stop, step = list(map(_norm_dim, start)), list(map(_norm_dim, stop)), list(step)
    for i, (a, b, s) in enumerate(zip(start, stop, step, strict=True)):
        if _static(a) and _static(b) and not len(range(a, b, s)):
            start[i], stop[i], step[i] = 0, 0, 1
    start, stop, step = tuple(start), tuple(stop), tuple(step)
    if all(s == 1 and a == 0 and dims_equal(b, d) for a, b, s, d in zip(start, stop, step, x.shape, strict=True)):
        return x
    return apply(SLICE, (x,), start=start, stop=stop, step=step)


def _free(*dims) -> set:
    return set().union(*(d.free_symbols for d in dims if not _static(d)))


def _norm_dim(d):
    return int(d) if isinstance(d, (int, np.integer)) else _dim(d)


def _range(d, s: slice, axis: int, x: Tensor) -> tuple:
    """numpy's normalization of `s` on an axis of dim d, as (start, stop, step) in the Slice op's form."""
    if _static(d):
        a, b, k = s.indices(d)
        n = len(range(a, b, k))
        if n == 0:
            return 0, 0, 1
        return a, a + k * (n - 1) + (1 if k > 0 else -1), k
    k = 1 if s.step is None else int(s.step)

    def bound(v, default):  # numpy's meaning of a negative bound, without its clipping
        return default if v is None else int(v) if v >= 0 else _dim(d + v)

    if k > 0:
        a, b = bound(s.start, 0), bound(s.stop, d)
        n = _dim(ceil_div(b - a, k))
    else:
        a = bound(s.start, _dim(d - 1))
        b = -1 if s.stop is None else bound(s.stop, None)
        n = _dim(ceil_div(a - b, -k))
    if _static(n) and n <= 0:
        return 0, 0, 1
    return a, _dim(a + k * (n - 1) + (1 if k > 0 else -1)), k


def _fmt_slice(s: slice) -> str:
    parts = ["" if v is None else str(v) for v in (s.start, s.stop, s.step)]
    return ":".join(parts[:2]) + (f":{parts[2]}" if s.step is not None else "")


def _is_int(k) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _fail(err: GraphcError, inputs, op_name: str) -> GraphcError:
    from graphc.ops.core import located

    return located(err, inputs, op_name)


def getitem(x: Tensor, key) -> Tensor:
    """numpy's basic indexing: ints (drop the axis), slices with any step, None (a new axis), one Ellipsis; and
    one integer tensor at an axis whose other indices are all `:` (`xs[i]`, `x[:, idx]`): gc.take along that axis
    (an index outside [0, n) is an error, not counted from the end)."""
    key = key if isinstance(key, tuple) else (key,)
    tensors = [i for i, k in enumerate(key) if isinstance(k, Node)]
    if len(tensors) == 1 and key[tensors[0]].dtype in INT_DTYPES:
        t = tensors[0]
        rest = key[:t] + key[t + 1:]
        full = all(isinstance(k, slice) and k == slice(None) for k in rest)
        if full and Ellipsis not in key and len(key) <= x.ndim:
            from graphc.ops.gather import take

            return take(x, key[t], axis=t)
    for k in key:
        if not (_is_int(k) or isinstance(k, slice) or k is None or k is Ellipsis):
            what = describe(k) if isinstance(k, Node) else f"{type(k).__name__} {k!r}"[:80]
            raise _fail(GraphcError(
                f"index {what}: only basic indexing (ints, slices, None, ...) is supported; to select by an "
                "index array use gc.take(x, indices, axis)"), (x,), "indexing")
        if isinstance(k, slice):
            for v in (k.start, k.stop, k.step):
                if v is not None and not _is_int(v):
                    raise _fail(GraphcError(f"slice bounds must be ints or None, got {_fmt_slice(k)}"), (x,),
                                "indexing")
            if k.step == 0:
                raise _fail(ShapeError("slice step cannot be zero"), (x,), "indexing")
    if sum(k is Ellipsis for k in key) > 1:
        raise _fail(GraphcError("an index can only have a single ellipsis ('...')"), (x,), "indexing")
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    if used > x.ndim:
        raise _fail(ShapeError(f"too many indices: {used} for a rank-{x.ndim} tensor {fmt_shape(x.shape)}"), (x,),
                    "indexing")
    if Ellipsis in key:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - used) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - used)
    start, stop, step = [], [], []
    layout = []  # per output axis: None for a new axis, else the input axis (sliced, not indexed) it comes from
    axis = 0
    for k in key:
        if k is None:
            layout.append(None)
            continue
        d = x.shape[axis]
        try:
            if isinstance(k, slice):
                a, b, s = _range(d, k, axis, x)
            else:
                if not _static(d):  # inside the axis: checked when its size is known (Slice.check_dims)
                    a = int(k) if k >= 0 else _dim(d + int(k))
                elif not -d <= k < d:
                    raise ShapeError(f"index {int(k)} is out of range for axis {axis} with size {d} "
                                     f"(of {fmt_shape(x.shape)})")
                else:
                    a = int(k) % d
                b, s = _dim(a + 1), 1
        except ShapeError as err:
            raise _fail(err, (x,), "indexing") from None
        start.append(a), stop.append(b), step.append(s)
        if isinstance(k, slice):
            layout.append(axis)
        axis += 1
    out = _slice(x, start, stop, step)
    return reshape(out, tuple(1 if a is None else out.shape[a] for a in layout))


class Pad(Op):
    """XLA's pad: on each axis `low` values before, `high` after and `interior` between neighbouring elements,
    all equal to `value`; the input lands at out[low + (interior+1)*i]. attrs `low`, `high` (per axis, dims: ints
    >= 0, or expressions of the symbolic dims where the gradient of a slice of a symbolic axis needs them),
    `interior` (ints >= 0) and `value` (a Python number)."""

    name = "pad"
    kind = "movement"

    def infer(self, inputs, attrs):
        (x,) = inputs
        low = _widths(attrs["low"], x.ndim, "low")
        high = _widths(attrs["high"], x.ndim, "high")
        interior = _ints(attrs["interior"], x.ndim, "interior")
        if x.dtype == "bool":
            raise DTypeError("pad of a bool tensor; cast it first")
        out = []
        for d, lo, hi, i in zip(x.shape, low, high, interior, strict=True):
            # interior values go between elements only (XLA's pad): none on an empty axis, also a symbolic one
            # whose size is 0 when the program runs (where (d - 1) * i took i values away)
            inner = size_max0(d - 1) * i
            out.append(_dim(d + inner + lo + hi))
        return tuple(out), x.dtype

    def reference(self, node, args, ctx):
        (x,) = args
        out = np.full(eval_shape(node.shape, ctx.dims), node.attrs["value"], dtype=x.dtype)
        low = eval_shape(node.attrs["low"], ctx.dims)
        key = tuple(slice(lo, lo + d * (i + 1), i + 1) for lo, d, i in
                    zip(low, x.shape, node.attrs["interior"], strict=True))
        out[key] = x
        return out

    def vjp(self, node, g):
        x = node.inputs[0]
        start, stop, step = [], [], []
        for d, lo, i in zip(x.shape, node.attrs["low"], node.attrs["interior"], strict=True):
            if _static(d) and d == 0:
                start.append(0), stop.append(0), step.append(1)
                continue
            start.append(lo)
            stop.append(_dim(lo + (d - 1) * (i + 1) + 1))
            step.append(i + 1)
        return (_slice(g, start, stop, step),)

    def lower(self, node, lx):
        """x where the position is one of its elements (low + (interior + 1) * i), else the pad value."""
        a = node.attrs
        index = [floordiv(o - lo, r + 1) for o, lo, r in zip(lx.out, a["low"], a["interior"], strict=True)]
        padded = [k for k in range(node.ndim) if a["low"][k] or a["high"][k] or a["interior"][k]]
        # between two elements: the position's offset is no multiple of interior + 1. Said here, not left to
        # in_range to find in the floor division, which a position known to be a number has already evaluated
        # (floordiv(1, 2) is 0: the padding between elements 0 and 1 read as element 0)
        whole = [ix.eq(ix.mod(o - lo, r + 1), 0)
                 for o, lo, r in zip(lx.out, a["low"], a["interior"], strict=True) if r]
        conds = lx.in_range([index[k] for k in padded], [node.inputs[0].shape[k] for k in padded])
        return lx.guard(tuple(dict.fromkeys((*whole, *conds))), lx.at(0, index), lx.const(a["value"], node.dtype))


PAD = register(Pad())


def _widths(v, n: int, what: str) -> tuple:
    """Pad widths: ints >= 0, or dims of the symbolic ones (nonnegative where the graph is consistent)."""
    if len(v) != n:
        raise ShapeError(f"{what} has {len(v)} entries for {n} axes")
    return tuple(_dim(k) if isinstance(k, SymbolicDim) or is_sympy(k) else _ints((k,), 1, what)[0] for k in v)


def _pad(x: Tensor, low, high, interior, value) -> Tensor:
    low, high = tuple(map(_norm_dim, low)), tuple(map(_norm_dim, high))
    if not any(low) and not any(high) and not any(interior):
        return x
    value = int(value) if x.dtype in ("int32", "int64") else float(value)  # one value, one node
    return apply(PAD, (x,), low=tuple(low), high=tuple(high), interior=tuple(interior), value=value)


def pad(x, pad_width, constant_values=0, *, interior=None) -> Tensor:
    """numpy.pad in "constant" mode: pad_width is an int, a (before, after) pair, or one pair per axis.
    `interior` (an int or one per axis) inserts that many values between neighbouring elements, as XLA's pad
    (the gradient of a strided slice)."""
    x = as_tensor(x)
    try:
        low, high = _pad_width(pad_width, x.ndim)
        if interior is None:
            inner = (0,) * x.ndim
        elif _is_int(interior):
            inner = (int(interior),) * x.ndim
        else:
            inner = tuple(interior)
        inner = _ints(inner, x.ndim, "interior")
        if isinstance(constant_values, (bool, np.bool_)) or not isinstance(
                constant_values, (int, float, np.integer, np.floating)):
            raise GraphcError(f"constant_values must be a number, got {type(constant_values).__name__}")
        if x.dtype in ("int32", "int64"):
            if float(constant_values) != int(constant_values):
                raise DTypeError(f"constant_values {constant_values} does not fit an {x.dtype} tensor")
            value = int(constant_values)
        else:
            value = float(constant_values)
    except GraphcError as err:
        raise _fail(err, (x,), "pad") from None
    return _pad(x, low, high, inner, value)


def _pad_width(pw, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    bad = ShapeError(f"pad_width must be an int, a (before, after) pair or {ndim} such pairs of ints >= 0, "
                     f"got {pw!r}")
    try:  # numpy's rule: pad_width broadcasts to one (before, after) pair per axis
        pairs = np.broadcast_to(np.asarray(pw, dtype=object), (ndim, 2)).tolist()
    except ValueError:
        raise bad from None
    for p in pairs:
        for v in p:
            if not _is_int(v) or v < 0:
                raise bad
    return tuple(int(p[0]) for p in pairs), tuple(int(p[1]) for p in pairs)


class Concat(Op):
    """Inputs joined along `axis` (attr, >= 0); all other dims and the dtype agree."""

    name = "concat"
    kind = "movement"

    def infer(self, inputs, attrs):
        axis = attrs["axis"]
        if not inputs:
            raise ShapeError("needs at least one tensor")
        first = inputs[0]
        if not 0 <= axis < max(first.ndim, 1) or first.ndim == 0:
            raise ShapeError(f"axis {axis} is out of range for rank-{first.ndim} tensors")
        total: Dim = 0
        for k, x in enumerate(inputs):
            if x.dtype != first.dtype:
                raise DTypeError(f"tensors have dtypes {first.dtype} and {x.dtype} (input {k}); graphc does not "
                                 "mix dtypes silently: cast one of them")
            if x.ndim != first.ndim or not all(
                    i == axis or dims_equal(a, b) for i, (a, b) in enumerate(zip(first.shape, x.shape, strict=True))):
                raise ShapeError(f"shapes {fmt_shape(first.shape)} and {fmt_shape(x.shape)} (input {k}) differ off "
                                 f"the concatenation axis {axis}")
            total = total + x.shape[axis]
        return first.shape[:axis] + (_dim(total),) + first.shape[axis + 1:], first.dtype

    def reference(self, node, args, ctx):
        return np.concatenate(args, axis=node.attrs["axis"])

    def vjp(self, node, g):
        axis = node.attrs["axis"]
        out = []
        offset: Dim = 0
        for x in node.inputs:
            end = _dim(offset + x.shape[axis])
            start = tuple(offset if i == axis else 0 for i in range(g.ndim))
            stop = tuple(end if i == axis else d for i, d in enumerate(g.shape))
            out.append(_slice(g, start, stop, (1,) * g.ndim))
            offset = end
        return out

    def lower(self, node, lx):
        """The piece whose range holds the position: a guard per piece, the last one read where none holds."""
        axis = node.attrs["axis"]
        o = lx.out[axis]
        starts, off = [], 0
        for x in node.inputs:
            starts.append(off)
            off = off + x.shape[axis]
        value = lx.const(0, node.dtype)
        for k in reversed(range(len(node.inputs))):
            x = node.inputs[k]
            index = [*lx.out[:axis], o - starts[k], *lx.out[axis + 1:]]
            # conditions of the kernel IR also where the position is a constant and the bounds are dims
            value = lx.guard((rel(">=", o - starts[k], 0), rel("<", o - starts[k], x.shape[axis])), lx.at(k, index),
                             value)
        return value


CONCAT = register(Concat())


def _axis(axis, ndim: int, extra: int = 0) -> int:
    if not _is_int(axis) or not -(ndim + extra) <= axis < ndim + extra:
        raise ShapeError(f"axis {axis!r} is out of range for a rank-{ndim} tensor")
    return int(axis) % (ndim + extra)


def concatenate(xs, axis: int | None = 0) -> Tensor:
    """numpy.concatenate: tensors joined along an existing axis (None: flattened first)."""
    if isinstance(xs, Node) or not isinstance(xs, (list, tuple)):
        raise GraphcError(f"concatenate: takes a list of tensors, got {type(xs).__name__}")
    if not xs:
        raise GraphcError("concatenate: needs at least one tensor")
    ts = [as_tensor(x, next((t for t in xs if isinstance(t, Node)), None)) for x in xs]
    if axis is None:
        ts = [reshape(t, (-1,)) for t in ts]
        axis = 0
    try:
        axis = _axis(axis, ts[0].ndim)
    except ShapeError as err:
        raise _fail(err, ts, "concat") from None
    if len(ts) == 1:
        return ts[0]
    return apply(CONCAT, ts, axis=axis)


concat = concatenate  # numpy 2's and jax.numpy's name


def stack(xs, axis: int = 0) -> Tensor:
    """numpy.stack: same-shape tensors joined along a new axis."""
    if isinstance(xs, Node) or not isinstance(xs, (list, tuple)) or not xs:
        raise GraphcError("stack: takes a non-empty list of tensors")
    ts = [as_tensor(x, next((t for t in xs if isinstance(t, Node)), None)) for x in xs]
    for k, t in enumerate(ts):
        if t.ndim != ts[0].ndim or not all(dims_equal(a, b) for a, b in zip(t.shape, ts[0].shape, strict=True)):
            raise _fail(ShapeError(f"all tensors must have the same shape: {fmt_shape(ts[0].shape)} and "
                                   f"{fmt_shape(t.shape)} (tensor {k})"), ts, "stack")
    try:
        axis = _axis(axis, ts[0].ndim, extra=1)
    except ShapeError as err:
        raise _fail(err, ts, "stack") from None
    return concatenate([expand_dims(t, axis) for t in ts], axis)


def split(x, indices_or_sections, axis: int = 0) -> list[Tensor]:
    """numpy.split: `sections` equal parts (an error if they do not divide the axis), or the parts between
    the given indices (clipped to the axis, as numpy's; on a symbolic axis not clipped, as its slices: a call
    whose axis is shorter than an index is a ShapeError)."""
    x = as_tensor(x)
    try:
        axis = _axis(axis, x.ndim)
        d = x.shape[axis]
        if not _static(d) and _is_int(indices_or_sections):
            raise ShapeError(f"axis {axis} of {fmt_shape(x.shape)} is symbolic ({d}): it cannot be split into "
                             "equal sections, only at indices (a list)")
        if _is_int(indices_or_sections):
            n = int(indices_or_sections)
            if n <= 0 or d % n:
                raise ShapeError(f"{n} sections do not divide axis {axis} of size {d} equally")
            bounds = [d // n * k for k in range(1, n)]
        else:
            bounds = list(indices_or_sections)
            if not all(_is_int(b) for b in bounds):
                raise GraphcError(f"indices_or_sections must be an int or a list of ints, got {indices_or_sections!r}")
    except GraphcError as err:
        raise _fail(err, (x,), "split") from None
    edges = [None, *bounds, None]
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        ranges = [_range(d, slice(a, b) if i == axis else slice(None), i, x) for i, d in enumerate(x.shape)]
        out.append(_slice(x, *zip(*ranges, strict=True)))
    return out


class Windows(Op):
    """Sliding windows (the im2col view). attrs: `axes` (sorted, distinct), and per windowed axis `window` (K),
    `strides` (s) and `dilation` (d), all ints >= 1. Each windowed axis of dim D becomes its window count
    O = (D - d*(K-1) - 1)//s + 1, and the window offsets (K, one axis per windowed axis, in order) are inserted
    after the last windowed axis: x (N,H,W,C), axes (1,2) -> (N,OH,OW,KH,KW,C) with
    out[n,oh,ow,kh,kw,c] = x[n, s0*oh + d0*kh, s1*ow + d1*kw, c]."""

    name = "windows"
    kind = "movement"

    def infer(self, inputs, attrs):
        (x,) = inputs
        axes = attrs["axes"]
        if list(axes) != sorted(set(axes)) or not axes or axes[0] < 0 or axes[-1] >= x.ndim:
            raise ShapeError(f"axes {axes} must be distinct axes of {fmt_shape(x.shape)}, in order")
        window = _ints(attrs["window"], len(axes), "window", 1)
        strides = _ints(attrs["strides"], len(axes), "strides", 1)
        dilation = _ints(attrs["dilation"], len(axes), "dilation", 1)
        shape = list(x.shape)
        for a, k, s, d in zip(axes, window, strides, dilation, strict=True):
            dim = x.shape[a]
            if not _static(dim):
                raise ShapeError(f"axis {a} of {fmt_shape(x.shape)} is symbolic ({dim}); windows need a fixed size")
            span = d * (k - 1) + 1
            if span > dim:
                raise ShapeError(f"window {k}" + (f" (dilated to {span})" if d > 1 else "") + f" is larger than "
                                 f"axis {a} of size {dim} of {fmt_shape(x.shape)}; pad it first (gc.pad)")
            shape[a] = (dim - span) // s + 1
        last = axes[-1] + 1
        return tuple(shape[:last]) + window + tuple(shape[last:]), x.dtype

    def reference(self, node, args, ctx):
        (x,) = args
        a = node.attrs
        res = x
        for ax, k, s, d, o in sorted(zip(a["axes"], a["window"], a["strides"], a["dilation"],
                                         (node.shape[i] for i in a["axes"]), strict=True), reverse=True):
            idx = s * np.arange(o)[:, None] + d * np.arange(k)[None, :]
            res = np.take(res, idx, axis=ax)  # (.., O, K, ..)
        src = [ax + j + 1 for j, ax in enumerate(a["axes"])]
        dst = [a["axes"][-1] + 1 + j for j in range(len(a["axes"]))]
        return np.moveaxis(res, src, dst)

    def vjp(self, node, g):
        # every window offset k reads x at s*o + d*k: its cotangent is g at that offset, spread back by a pad
        # (low d*k, interior s-1): dx is the sum of those pads
        x = node.inputs[0]
        a = node.attrs
        axes, nk = a["axes"], len(a["axes"])
        koff = axes[-1] + 1  # where the window offset axes start in the output
        if all(s == k for s, k in zip(a["strides"], a["window"], strict=True)) and all(d == 1 for d in a["dilation"]):
            # windows that tile the axis (a pooling's): each element of x is in one window at most, so dx is g
            # with each offset axis moved beside its window axis, the pairs merged, and the uncovered end zero
            pos = lambda ax: ax if ax < koff else ax + nk  # noqa: E731 - an input axis's place in g
            perm, shape, high = [], [], []
            for ax in range(x.ndim):
                if ax in axes:
                    j = axes.index(ax)
                    perm += [pos(ax), koff + j]
                    shape.append(node.shape[ax] * a["window"][j])
                    high.append(x.shape[ax] - shape[-1])
                else:
                    perm.append(pos(ax))
                    shape.append(x.shape[ax])
                    high.append(0)
            return (_pad(reshape(transpose(g, perm), tuple(shape)), [0] * x.ndim, high, [0] * x.ndim, 0),)
        total = None
        for ks in np.ndindex(*a["window"]):
            start = [0] * g.ndim
            stop = list(g.shape)
            for j, k in enumerate(ks):
                start[koff + j], stop[koff + j] = k, k + 1
            part = _slice(g, start, stop, [1] * g.ndim)
            part = reshape(part, g.shape[:koff] + g.shape[koff + nk:])
            low, high, interior = [0] * x.ndim, [0] * x.ndim, [0] * x.ndim
            for j, ax in enumerate(axes):
                s, d, o = a["strides"][j], a["dilation"][j], node.shape[ax]
                low[ax] = d * ks[j]
                interior[ax] = s - 1
                high[ax] = x.shape[ax] - low[ax] - s * (o - 1) - 1
            part = _pad(part, low, high, interior, 0)
            total = part if total is None else total + part
        return (total,)

    def lower(self, node, lx):
        """x at s*o + d*k along each windowed axis: an index map, no copy (unless a reshape regroups it)."""
        a = node.attrs
        axes, nk = a["axes"], len(a["axes"])
        koff = axes[-1] + 1
        out = list(lx.out)
        outer = out[:koff] + out[koff + nk:]  # the output's axes that are the input's (counts in place of dims)
        index = list(outer)
        for j, ax in enumerate(axes):
            index[ax] = a["strides"][j] * outer[ax] + a["dilation"][j] * out[koff + j]
        return lx.at(0, index)


WINDOWS = register(Windows())


def windows(x, window, strides=1, dilation=1, axes=None) -> Tensor:
    """Sliding windows over `axes` (default: the axes between the first (batch) and the last (channels), as
    for channels-last data). `window`, `strides` and `dilation` are an int or one per axis; only whole windows
    are taken (pad first for "same" output). For x (N, H, W, C) and window (KH, KW) the result is
    (N, OH, OW, KH, KW, C); see the Windows op for the general layout."""
    x = as_tensor(x)
    try:
        if axes is None:
            n = 1 if _is_int(window) else len(window)
            if x.ndim < n + 2:
                raise ShapeError(f"a {n}-D window over channels-last data needs rank >= {n + 2}, got "
                                 f"{fmt_shape(x.shape)}; pass axes=")
            axes = tuple(range(1, n + 1))
        elif _is_int(axes):
            axes = (axes,)
        axes = tuple(_axis(ax, x.ndim) for ax in axes)
        if len(set(axes)) != len(axes):
            raise ShapeError(f"repeated axis in {axes}")

        def per_axis(v, what):
            v = (v,) * len(axes) if _is_int(v) else tuple(v)
            return _ints(v, len(axes), what, 1)

        window, strides, dilation = (per_axis(window, "window"), per_axis(strides, "strides"),
                                     per_axis(dilation, "dilation"))
    except (GraphcError, TypeError) as err:
        raise _fail(err if isinstance(err, GraphcError) else ShapeError(str(err)), (x,), "windows") from None
    order = sorted(range(len(axes)), key=lambda j: axes[j])
    pick = lambda v: tuple(v[j] for j in order)  # noqa: E731
    return apply(WINDOWS, (x,), axes=pick(axes), window=pick(window), strides=pick(strides),
                 dilation=pick(dilation))


def tile(x, reps) -> Tensor:
    """numpy.tile: x repeated `reps` times along each axis (an int, or one count per axis; more counts than axes
    prepend axes of length 1, as numpy's). A broadcast and a reshape: its gradient sums the copies."""
    x = as_tensor(x)
    counts = (reps,) if _is_int(reps) else tuple(reps) if isinstance(reps, (tuple, list)) else None
    if counts is None or not counts or not all(_is_int(r) and r >= 0 for r in counts):
        raise located(GraphcError(f"reps must be a non-negative int or a non-empty tuple of them, got {reps!r}"),
                      (x,), "tile")
    counts = tuple(int(r) for r in counts)
    if len(counts) > x.ndim:
        x = reshape(x, (1,) * (len(counts) - x.ndim) + tuple(x.shape))
    counts = (1,) * (x.ndim - len(counts)) + counts
    if all(r == 1 for r in counts):
        return x
    # (r0, d0, r1, d1, ...): each axis's copies go before its elements, so (r*d) reads copy-major as numpy's
    spread = reshape(x, tuple(v for d in x.shape for v in (1, d)))
    big = broadcast_to(spread, tuple(v for r, d in zip(counts, x.shape, strict=True) for v in (r, d)))
    return reshape(big, tuple(r * d for r, d in zip(counts, x.shape, strict=True)))


def repeat(x, repeats, axis=None) -> Tensor:
    """numpy.repeat with one count for every element: each element `repeats` times in a row along `axis` (None:
    of the flattened x). Per-element counts would give a data-dependent shape: refused."""
    x = as_tensor(x)
    if not _is_int(repeats) or repeats < 0:
        raise located(GraphcError(f"repeats must be a non-negative int (one count for every element), got "
                                  f"{repeats!r}: per-element counts give a shape that depends on the values"),
                      (x,), "repeat")
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    try:
        axis = _axis(axis, x.ndim)
    except ShapeError as err:
        raise _fail(err, (x,), "repeat") from None
    wide = broadcast_to(expand_dims(x, axis + 1), (*x.shape[:axis + 1], int(repeats), *x.shape[axis + 1:]))
    return reshape(wide, (*x.shape[:axis], x.shape[axis] * int(repeats), *x.shape[axis + 1:]))


def outer(a, b) -> Tensor:
    """numpy.outer: every element of a (flattened) times every element of b (flattened), as a matrix."""
    a, b = as_tensor(a), as_tensor(b)
    a = reshape(a, (-1, 1))
    b = reshape(b, (1, -1))
    return a * b


def _triangle(x, k, keep_lower: bool, what: str) -> Tensor:
    from graphc.ops.pointwise import greater_equal, less_equal, where
    from graphc.ops.sources import iota

    x = as_tensor(x)
    if x.ndim < 2:
        raise located(ShapeError(f"{what} takes a tensor of rank 2 or more (the last two axes are the matrix), got "
                                 f"{fmt_shape(x.shape)}"), (x,), what)
    if not _is_int(k):
        raise located(GraphcError(f"k must be an int (the diagonal: 0 main, > 0 above, < 0 below), got {k!r}"),
                      (x,), what)
    rows = expand_dims(iota(x.shape[-2], "int64", of=x), 1)
    cols = expand_dims(iota(x.shape[-1], "int64", of=x), 0)
    diff = cols - rows  # j - i: in the lower triangle when <= k, the upper when >= k
    keep = less_equal(diff, int(k)) if keep_lower else greater_equal(diff, int(k))
    return where(keep, x, 0)


def tril(x, k: int = 0) -> Tensor:
    """numpy.tril: x with the elements above the k-th diagonal of its last two axes zeroed (a causal mask)."""
    return _triangle(x, k, True, "tril")


def triu(x, k: int = 0) -> Tensor:
    """numpy.triu: x with the elements below the k-th diagonal of its last two axes zeroed."""
    return _triangle(x, k, False, "triu")
