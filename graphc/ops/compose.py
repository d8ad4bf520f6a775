"""Functions built from primitives: mean, logsumexp, softmax, log_softmax, one_hot, var, argmax, argmin, and
numpy's square, std, logaddexp, isnan, isinf, isfinite, any, all.

They are compositions, not ops: their gradients come from the primitives' rules, and their stable forms come
from the way they are composed (the max is subtracted before exp, and held constant by stop_gradient)."""

from __future__ import annotations

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
