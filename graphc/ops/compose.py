"""Functions built from primitives: mean, logsumexp, softmax, log_softmax, one_hot, var, argmax, argmin, and
numpy's square, std, logaddexp, isnan, isinf, isfinite, any, all.

They are compositions, not ops: their gradients come from the primitives' rules, and their stable forms come
from the way they are composed (the max is subtracted before exp, and held constant by stop_gradient)."""

from __future__ import annotations

import builtins

import numpy as np

from graphc.errors import DTypeError, GraphcError
from graphc.ir.node import capture_source
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, float_for, fmt_shape
from graphc.ops import reduce
from graphc.ops.control import stop_gradient
from graphc.ops.core import Tensor, as_tensor, describe, located
from graphc.ops.movement import broadcast_to, expand_dims
from graphc.ops.pointwise import cast, equal, exp, log
from graphc.ops.sources import dim_value, iota


def _float(x, what: str) -> Tensor:
    x = as_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
        if x.dtype in INT_DTYPES or x.dtype == "bool":
            return cast(x, float_for(x.dtype))
        raise DTypeError(f"{what}: needs a float tensor, got {describe(x)}")
    return x


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    """The mean over axes; over a symbolic dim (the batch N) the count is read at run time."""
    x = _float(x, "mean")
    axes = reduce.normalize_axes(x, axis, "mean")
    keepdims = reduce.check_keepdims(keepdims, x, "mean")
    return reduce.sum(x, axes, keepdims) / dim_value(_size(x, axes), x, x.dtype)


def _size(x: Tensor, axes: tuple[int, ...]):
    """The number of elements over `axes` of x (a dim expression where they are symbolic)."""
    count = 1
    for a in axes:
        count = count * x.shape[a]
    return count


def logsumexp(x, axis=None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) over `axis` (default None: every axis, as scipy.special.logsumexp, jax.nn.logsumexp and
    graphc's own sum and max; it reduced only the last axis, so a JAX user's logsumexp(x) of a matrix was silently a
    vector) computed as m + log(sum(exp(x - m))) with m = max(x): finite for any finite x; inf for a
    row holding +inf, -inf for a row of -inf (as scipy and jax): m is clamped to the finite floats, so x - m is
    inf or -inf there, not inf - inf."""
    from graphc.ops.pointwise import clip_finite

    x = _float(x, "logsumexp")
    axes = reduce.normalize_axes(x, axis, "logsumexp")
    keepdims = reduce.check_keepdims(keepdims, x, "logsumexp")
    m = stop_gradient(clip_finite(reduce.max(x, axis, keepdims=True)))
    s = reduce.sum(exp(x - broadcast_to(m, x.shape)), axis, keepdims=True)
    out = m + log(s)
    if not keepdims:
        from graphc.ops.movement import reshape

        out = reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return out


def log_softmax(x, axis=-1) -> Tensor:
    """(x - m) - log(sum(exp(x - m))): subtracting m first keeps the result exact where x - lse would round
    (in float32 near |x| = 1e4 the ulp is 1e-3)."""
    x = _float(x, "log_softmax")
    reduce.normalize_axes(x, axis, "log_softmax")
    m = stop_gradient(reduce.max(x, axis, keepdims=True))
    shifted = x - broadcast_to(m, x.shape)
    return shifted - broadcast_to(log(reduce.sum(exp(shifted), axis, keepdims=True)), x.shape)


def softmax(x, axis=-1) -> Tensor:
    x = _float(x, "softmax")
    reduce.normalize_axes(x, axis, "softmax")
    return exp(log_softmax(x, axis))


def one_hot(labels, depth: int, dtype: str = "float32") -> Tensor:
    """Rows of `depth` zeros with a one at each label (labels outside [0, depth) give a zero row)."""
    labels = as_tensor(labels)
    if labels.dtype not in INT_DTYPES:
        raise DTypeError(f"one_hot: labels must be int32 or int64, got {describe(labels)}")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise located(GraphcError(f"depth must be a positive int, got {depth!r}"), (labels,), "one_hot")
    depth = int(depth)
    return cast(equal(expand_dims(labels, -1), iota(depth, labels.dtype)), dtype)


def var(x, axis=None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """The variance over axes, numpy's: the mean square deviation, its sum divided by n - ddof (ddof=1: the
    unbiased estimate); n - ddof <= 0 gives inf or nan, as numpy (with no warning)."""
    x = _float(x, "var")
    axes = reduce.normalize_axes(x, axis, "var")
    keepdims = reduce.check_keepdims(keepdims, x, "var")
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise located(GraphcError(f"ddof must be a non-negative int, got {ddof!r}"), (x,), "var")
    mu = mean(x, axis, keepdims=True)
    sq = (x - broadcast_to(mu, x.shape)) ** 2
    if not ddof:
        return mean(sq, axis, keepdims)
    return reduce.sum(sq, axes, keepdims) / dim_value(_size(x, axes) - int(ddof), x, x.dtype)


def clip(x, lo=None, hi=None, **bounds) -> Tensor:
    """numpy.clip: minimum(maximum(x, lo), hi) (so hi wins where lo > hi); a bound that is None is not applied. The
    bounds may be given by numpy's keywords, a_min/a_max or (numpy 2.1, jnp.clip) min/max."""
    from graphc.ops.pointwise import maximum, minimum

    names = {"a_min": "lo", "min": "lo", "a_max": "hi", "max": "hi"}
    for k, v in bounds.items():
        if k not in names:
            raise GraphcError(f"clip: unexpected keyword {k}=; the bounds are lo/hi, or numpy's a_min/a_max or "
                              f"min/max (at {capture_source().where()})")
        if v is None:
            continue
        if (lo if names[k] == "lo" else hi) is not None:
            raise GraphcError(f"clip: the {'lower' if names[k] == 'lo' else 'upper'} bound is given twice "
                              f"({k}= and another) (at {capture_source().where()})")
        lo, hi = (v, hi) if names[k] == "lo" else (lo, v)
    x = as_tensor(x)
    if lo is not None:
        x = maximum(x, lo)
    return x if hi is None else minimum(x, hi)


def _arg_extremum(x, axis, keepdims: bool, what: str, extremum) -> Tensor:
    from graphc.errors import ShapeError
    from graphc.ir.node import composite
    from graphc.ops.core import located
    from graphc.ops.movement import reshape
    from graphc.ops.pointwise import logical_or, not_equal, where

    x = as_tensor(x)
    keepdims = reduce.check_keepdims(keepdims, x, what)
    if x.dtype == "bool":
        x = cast(x, "int32")
    rank = x.ndim
    flat = axis is None
    if flat:
        x = reshape(x, (-1,))
        axis = 0
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise located(ShapeError(f"axis {axis!r} is out of range for a rank-{x.ndim} tensor (one axis, or None)"),
                      (x,), what)
    axis %= x.ndim
    n = x.shape[axis]
    if isinstance(n, int) and n == 0:
        raise located(ShapeError(f"axis {axis} of {fmt_shape(x.shape)} is empty: it has no {what}"), (x,), what)
    m = broadcast_to(extremum(x, axis, keepdims=True), x.shape)
    hit = equal(x, m)
    if x.dtype in FLOAT_DTYPES:  # numpy: the first NaN wins (the max is then NaN, equal to nothing)
        hit = logical_or(hit, not_equal(x, x))
    pos = broadcast_to(reshape(iota(n, "int64", of=x), tuple(n if i == axis else 1 for i in range(x.ndim))), x.shape)
    past = dim_value(n, x, "int64")
    out = reduce.min(where(hit, pos, past), axis, keepdims=keepdims)
    return composite(reshape(out, (1,) * rank) if flat and keepdims else out, what)


def argmax(x, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """numpy.argmax: the index (int64) of the largest entry along `axis` (None: of the flattened tensor); the
    first one on ties, the first NaN if there is one. Not differentiable (its result is an integer)."""
    return _arg_extremum(x, axis, keepdims, "argmax", reduce.max)


def argmin(x, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """numpy.argmin: as argmax, for the smallest entry."""
    return _arg_extremum(x, axis, keepdims, "argmin", reduce.min)


def square(x) -> Tensor:
    """x * x, elementwise (numpy.square)."""
    x = as_tensor(x)
    return x * x


def std(x, axis=None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """The standard deviation over axes, sqrt(var(x, axis, keepdims, ddof)) (numpy's default ddof=0); its
    gradient is infinite where the variance is 0, as in numpy and JAX."""
    from graphc.ops.pointwise import sqrt

    return sqrt(var(x, axis, keepdims, ddof))


def logaddexp(a, b) -> Tensor:
    """log(exp(a) + exp(b)) as max(a, b) + log1p(exp(-|a - b|)): finite where exp overflows, -inf for two -inf
    (numpy.logaddexp); at a == b each input gets half the cotangent."""
    from graphc.ops.pointwise import _promote, abs_, log1p_, maximum, where

    a, b = _promote([a, b])
    a, b = _float(a, "logaddexp"), _float(b, "logaddexp")
    d = where(equal(a, b), 0.0, a - b)  # a - b is NaN for two equal infinities
    return maximum(a, b) + log1p_(exp(-abs_(d)))


def isnan(x) -> Tensor:
    """Where x is NaN (never, for ints and bools)."""
    from graphc.ops.pointwise import not_equal

    x = as_tensor(x)
    return not_equal(x, x)


def isinf(x) -> Tensor:
    """Where x is +-inf."""
    from graphc.ops.pointwise import abs_

    x = as_tensor(x)
    return equal(abs_(x), np.inf) if x.dtype in FLOAT_DTYPES else isnan(x)


def isfinite(x) -> Tensor:
    """Where x is neither NaN nor +-inf."""
    from graphc.ops.pointwise import abs_, less

    x = as_tensor(x)
    return less(abs_(x), np.inf) if x.dtype in FLOAT_DTYPES else equal(x, x)


def _count(x, axis, keepdims: bool, truth: bool) -> Tensor:
    """How many elements over the axes are true (nonzero) when `truth`, else false (zero): a count, so that an
    empty axis (a batch of 0 rows) gives 0 where a max or min has no value."""
    from graphc.ops.pointwise import not_equal

    x = as_tensor(x)
    op = "any" if truth else "all"
    axes, keepdims = reduce.normalize_axes(x, axis, op), reduce.check_keepdims(keepdims, x, op)
    if x.dtype != "bool":
        x = not_equal(x, 0 if x.dtype in INT_DTYPES else 0.0)
    if not truth:
        x = equal(x, False)
    return reduce.sum(cast(x, "int64"), axes, keepdims)


def any(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - numpy's name
    """Whether any element over the axes is true (nonzero), as numpy.any (False over an empty axis)."""
    from graphc.ops.pointwise import greater

    return greater(_count(x, axis, keepdims, True), 0)


def all(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - numpy's name
    """Whether every element over the axes is true (nonzero), as numpy.all (True over an empty axis)."""
    return equal(_count(x, axis, keepdims, False), 0)


# ---------------------------------------------------------------------------------------------------------
# more of numpy's names, as compositions (exact: selections, sums, index maps)


def nan_to_num(x, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None) -> Tensor:
    """numpy's nan_to_num: NaN as `nan`, +inf as `posinf` and -inf as `neginf` (by default the largest and the
    lowest finite value of x's dtype, as numpy's). Ints and bools are returned as they are. Its gradient is 1 where
    x is finite, 0 where it was replaced."""
    from graphc.ops.pointwise import equal as eq
    from graphc.ops.pointwise import where

    x = as_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
        return x
    info = np.finfo(x.dtype)
    values = {}
    for what, v, default in (("nan", nan, 0.0), ("posinf", posinf, float(info.max)),
                             ("neginf", neginf, float(info.min))):
        v = default if v is None else v
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise located(GraphcError(f"nan_to_num: {what} must be a number or None, got {v!r}"), (x,), "nan_to_num")
        values[what] = float(v)
    out = where(eq(x, float("inf")), values["posinf"], x)
    out = where(eq(x, float("-inf")), values["neginf"], out)
    return where(isnan(x), values["nan"], out)


def isclose(a, b, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Tensor:
    """numpy's isclose: |a - b| <= atol + rtol·|b| where b is finite, a == b for infinities (inf is close to inf
    only), NaN close to NaN only with equal_nan. Ints are compared as floats (numpy's too). A bool tensor."""
    from graphc.ops.pointwise import _promote, abs_, equal, less_equal, logical_and, logical_or

    for what, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise GraphcError(f"isclose: {what} must be a number, got {v!r} (at {capture_source().where()})")
    a, b = _promote([a, b])
    if a.dtype not in FLOAT_DTYPES:
        to = float_for(a.dtype, b.dtype) if a.dtype != "bool" else "float32"
        a, b = cast(a, to), cast(b, to)
    close = logical_and(less_equal(abs_(a - b), abs_(b) * float(rtol) + float(atol)), isfinite(b))
    out = logical_or(close, equal(a, b))
    if equal_nan:
        out = logical_or(out, logical_and(isnan(a), isnan(b)))
    return out


def nansum(x, axis=None, keepdims: bool = False) -> Tensor:
    """numpy's nansum: the sum with NaNs counted as 0 (an all-NaN slice sums to 0). Its gradient is 1 at the numbers,
    0 at the NaNs."""
    from graphc.ops.pointwise import where

    x = as_tensor(x)
    if x.dtype in FLOAT_DTYPES:
        x = where(isnan(x), 0.0, x)
    return reduce.sum(x, axis, keepdims)


def nanmean(x, axis=None, keepdims: bool = False) -> Tensor:
    """numpy's nanmean: the mean of the numbers, NaNs left out (an all-NaN slice is NaN, as numpy's, which also
    warns). Ints are averaged as floats (int32 as float32, int64 as float64)."""
    from graphc.ops.pointwise import logical_not

    x = _float(x, "nanmean")
    count = reduce.sum(cast(logical_not(isnan(x)), x.dtype), axis, keepdims)
    return nansum(x, axis, keepdims) / count


def _axes(x: Tensor, axes, what: str) -> tuple[int, ...]:
    """Distinct int axes of x (negative ones from the end), as numpy's normalize_axis_tuple; else a ShapeError."""
    from graphc.errors import ShapeError

    one = isinstance(axes, (int, np.integer)) and not isinstance(axes, bool)
    seq = (axes,) if one else tuple(axes) if isinstance(axes, (tuple, list)) else None
    r = len(x.shape)
    if seq is None or builtins.any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -r <= a < r
                          for a in seq):
        raise located(ShapeError(f"{what}: {axes!r} is not an axis (or a sequence of axes) of a rank-{r} tensor "
                                 f"{fmt_shape(x.shape)}"), (x,), what)
    out = tuple(int(a) % r for a in seq)
    if len(set(out)) != len(out):
        raise located(ShapeError(f"{what}: repeated axis in {axes!r}"), (x,), what)
    return out


def moveaxis(x, source, destination) -> Tensor:
    """numpy's moveaxis: the axes `source` moved to the positions `destination` (ints or sequences of the same
    length), the others kept in order. A transpose, so free in compiled code (an index map)."""
    from graphc.errors import ShapeError
    from graphc.ops.movement import transpose

    x = as_tensor(x)
    src, dst = _axes(x, source, "moveaxis"), _axes(x, destination, "moveaxis")
    if len(src) != len(dst):
        raise located(ShapeError(f"moveaxis: source {source!r} and destination {destination!r} must have the same "
                                 "number of axes"), (x,), "moveaxis")
    order = [a for a in range(len(x.shape)) if a not in src]
    for d, s in sorted(zip(dst, src, strict=True)):
        order.insert(d, s)
    return x if order == list(range(len(x.shape))) else transpose(x, order)


def _tensors(xs, what: str) -> list[Tensor]:
    if isinstance(xs, Tensor) or not isinstance(xs, (list, tuple)) or not xs:
        raise GraphcError(f"{what}: takes a non-empty list or tuple of tensors, got {type(xs).__name__} "
                          f"(at {capture_source().where()})")
    like = next((t for t in xs if isinstance(t, Tensor)), None)
    return [as_tensor(t, like) for t in xs]


def hstack(xs) -> Tensor:
    """numpy's hstack: 1-D tensors joined end to end, others along axis 1 (0-d ones as 1-D of length 1)."""
    from graphc.ops.movement import concatenate, reshape

    ts = [reshape(t, (1,)) if not t.shape else t for t in _tensors(xs, "hstack")]
    return concatenate(ts, axis=0 if len(ts[0].shape) == 1 else 1)


def vstack(xs) -> Tensor:
    """numpy's vstack: rows stacked, a 1-D tensor of length n as a (1, n) row (a 0-d one as (1, 1))."""
    from graphc.ops.movement import concatenate, reshape

    ts = [reshape(t, (1,) * (2 - len(t.shape)) + tuple(t.shape)) if len(t.shape) < 2 else t
          for t in _tensors(xs, "vstack")]
    return concatenate(ts, axis=0)


def _static_number(v, what: str, fn: str):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GraphcError(f"{fn}: {what} must be a Python number (graphc's shapes are static), got {v!r} "
                          f"(at {capture_source().where()})")
    return v.item() if isinstance(v, np.generic) else v


def arange(start, stop=None, step=None, dtype: str | None = None) -> Tensor:
    """numpy's arange with static numbers: [start, start + step, ...) below stop (above it for a negative step);
    `arange(n)` is [0, n). Ints give an int32 tensor (graphc's, and jnp's, default int; int64 where a value needs
    it), floats float32 (graphc's default float), or `dtype`. Ints are an iota (no constant array in the program);
    floats numpy's own values. Not differentiable (a constant)."""
    from graphc.ir.shapes import as_dtype
    from graphc.ops.core import constant

    if stop is None:
        start, stop = 0, start
    start, stop = _static_number(start, "start", "arange"), _static_number(stop, "stop", "arange")
    step = 1 if step is None else _static_number(step, "step", "arange")
    if step == 0:
        raise GraphcError(f"arange: step must not be 0 (numpy refuses it too) (at {capture_source().where()})")
    ints = builtins.all(isinstance(v, int) for v in (start, stop, step))
    if dtype is None:
        wide = ints and not builtins.all(-(2**31) <= v < 2**31 for v in (start, stop - step))
        dtype = ("int64" if wide else "int32") if ints else "float32"
    dtype = as_dtype(dtype, "arange")
    if ints and dtype in INT_DTYPES:
        n = max(0, -((start - stop) // step))
        if n == 0:
            return constant(np.zeros(0, dtype))
        out = iota(n, dtype)
        return out * step + start if (step, start) != (1, 0) else out
    values = np.arange(start, stop, step, dtype=np.float64 if dtype in FLOAT_DTYPES else None)
    return constant(values.astype(dtype))


def eye(n: int, m: int | None = None, k: int = 0, dtype: str = "float32") -> Tensor:
    """numpy's eye: an (n, m) matrix (m defaults to n) of ones on the k-th diagonal (k > 0 above the main one),
    zeros elsewhere, float32 by default (graphc's default float, as jnp.eye's). Built from two iotas."""
    from graphc.ir.shapes import as_dtype
    from graphc.ops.movement import reshape

    m = n if m is None else m
    for what, v in (("n", n), ("m", m), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (what != "k" and v < 0):
            raise GraphcError(f"eye: {what} must be {'an' if what == 'k' else 'a non-negative'} int, got {v!r} "
                              f"(at {capture_source().where()})")
    n, m, k = int(n), int(m), int(k)
    rows = reshape(iota(n, "int64"), (n, 1)) + k
    cols = reshape(iota(m, "int64"), (1, m))
    return cast(equal(broadcast_to(rows, (n, m)), broadcast_to(cols, (n, m))), as_dtype(dtype, "eye"))


def diagonal(x, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """numpy's diagonal: the elements x[..., i, i + offset, ...] of the axes axis1, axis2, as the last axis of the
    result (the other axes first, in order). A slice and einsum's diagonal, so its gradient (the diagonal written
    back into zeros) and native code are theirs. The two axes' lengths must be ints, or the same dim."""
    from graphc.errors import ShapeError
    from graphc.ops.linalg import einsum

    x = as_tensor(x)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise GraphcError(f"diagonal: offset must be an int, got {offset!r} (at {capture_source().where()})")
    if len(x.shape) < 2:
        raise located(ShapeError(f"diagonal: needs at least 2 axes, got {fmt_shape(x.shape)}"), (x,), "diagonal")
    a1, a2 = _axes(x, (axis1, axis2), "diagonal")
    y = moveaxis(x, (a1, a2), (-2, -1))
    r, c = y.shape[-2], y.shape[-1]
    offset = int(offset)
    if offset or r != c:
        if not (isinstance(r, int) and isinstance(c, int)):
            raise located(ShapeError(f"diagonal: axes of lengths {r} and {c} (offset {offset}): a diagonal of "
                                     "symbolic axes needs them equal and offset 0"), (x,), "diagonal")
        lo_r, lo_c = max(0, -offset), max(0, offset)
        size = max(0, min(r - lo_r, c - lo_c))
        y = y[..., lo_r:lo_r + size, lo_c:lo_c + size]
    letters = "abcdefghijklmnopqrstuvwxy"[:len(y.shape) - 2]
    return einsum(f"{letters}zz->{letters}z", y)


def trace(x, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """numpy's trace: the sum of `diagonal(x, offset, axis1, axis2)` along it."""
    return reduce.sum(diagonal(x, offset, axis1, axis2), -1)


def cumprod(x, axis: int | None = None) -> Tensor:
    """numpy's cumprod: running products along `axis` (None: over the flattened tensor, as numpy's). A `gc.scan`
    multiplying step by step in numpy's order, so it is exact (numpy's values bit for bit) and its gradient is the
    reverse loop of the chain rule, exact at zeros too (no division by x, as exp(cumsum(log x)) or cumsum-based
    forms would need). Ints stay ints."""
    from graphc.ops.movement import reshape
    from graphc.ops.scan import ones_like, scan

    x = as_tensor(x)
    if axis is None:
        x, axis = reshape(x, (-1,)) if len(x.shape) != 1 else x, 0
    (a,) = _axes(x, axis, "cumprod")
    y = moveaxis(x, a, 0)

    def step(c, xt):
        c = c * xt
        return c, c

    _, ys = scan(step, ones_like(y[0]), y)
    return moveaxis(ys, 0, a)
