"""The lecture's losses (each the negative log-likelihood of its task, averaged over the batch) and penalties.

- regression, Gaussian likelihood with fixed sigma  ->  mean squared error
- binary, Bernoulli with P(y|x) = sigmoid((2y-1) f)  ->  softplus((1-2y) f)
- multiclass, categorical with softmax               ->  logsumexp(z) - z_y

Sequences padded to one length: every loss takes `mask=` (bool, or float weights, over the targets' leading
dims: (T, N) for (T, N) labels or (T, N, F) predictions) and/or `lengths=` ((N,) real steps per sequence, time on
`time_axis`, 0 by default as graphc's layers are time-major); softmax_cross_entropy also `ignore_index=` as
PyTorch's. The loss is then the mean over the counted elements only: sum(loss * mask) / sum(mask), as Keras'
masked losses and PyTorch's `ignore_index` (a mask that counts nothing gives 0, not NaN).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from graphc import ops
from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir.node import Node
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, dims_equal, fmt_shape
from graphc.nn.sequence import _lengths, kept, sequence_mask
from graphc.ops.core import describe
from graphc.ops.gather import checked_labels


def _match(pred: ops.Tensor, y: ops.Tensor, what: str) -> tuple[ops.Tensor, ops.Tensor]:
    """Targets of shape (N,) against predictions of shape (N, 1) are reshaped; other mismatches are errors
    (broadcasting (N, 1) against (N,) would silently make an N x N loss)."""
    if pred.shape == y.shape:
        return pred, y
    if pred.ndim == 2 and y.ndim == 1 and pred.shape[1] == 1 and dims_equal(pred.shape[0], y.shape[0]):
        return ops.reshape(pred, (pred.shape[0],)), y
    if y.ndim == 2 and pred.ndim == 1 and y.shape[1] == 1 and dims_equal(pred.shape[0], y.shape[0]):
        return pred, ops.reshape(y, (y.shape[0],))
    raise ShapeError(f"{what}: predictions {fmt_shape(pred.shape)} and targets {fmt_shape(y.shape)} differ; "
                     "they must have the same shape (or (N, 1) against (N,))")


def _as_float_target(y, pred: ops.Tensor) -> ops.Tensor:
    y = ops.as_tensor(y, pred)
    if y.dtype != pred.dtype:
        y = ops.cast(y, pred.dtype)
    return y


def _counted(per_of, shape, dtype: str, mask, lengths, time_axis: int, what: str, ignored=None) -> ops.Tensor:
    """The mean of the elementwise loss over the elements that count: all of them (no mask), else
    sum(per * w) / sum(w) with w the product of `mask`, the lengths' mask and `ignored` (bool: not counted),
    broadcast over the loss's trailing dims (`shape`). `per_of(keep)` computes the loss, reading its inputs only
    where `keep` (a bool tensor of `shape`, None for everywhere) holds: a padded step's values (NaN, inf, garbage)
    enter neither the loss nor its gradient, as with PyTorch's ignore_index and packed sequences. A mask that
    counts nothing gives 0, not NaN."""
    if mask is None and lengths is None and ignored is None:
        return ops.mean(per_of(None))
    ndim = len(shape)
    w = None

    def fold(m: ops.Tensor, src: str) -> None:
        nonlocal w
        if m.dtype not in ("bool", *FLOAT_DTYPES, *INT_DTYPES):
            raise DTypeError(f"{what}: {src} must be bool or numbers, got {describe(m)}")
        k = m.ndim
        if k > ndim or not all(dims_equal(a, b) for a, b in zip(m.shape, shape[:k], strict=False)):
            raise ShapeError(f"{what}: {src} {fmt_shape(m.shape)} does not fit the loss's elements "
                             f"{fmt_shape(shape)}: it must have their shape or their leading dims (e.g. (T, N) for "
                             f"(T, N, F)) (made at {m.source.where()})")
        m = ops.cast(m, dtype)
        for _ in range(ndim - k):
            m = ops.expand_dims(m, -1)
        if k < ndim:
            m = ops.broadcast_to(m, shape)
        w = m if w is None else w * m

    if mask is not None:
        fold(ops.as_tensor(mask), "mask")
    if lengths is not None:
        if ndim < 2:
            raise ShapeError(f"{what}: lengths need a time axis and a batch axis in the targets, got "
                             f"{fmt_shape(shape)}")
        if time_axis not in (0, 1):
            raise ShapeError(f"{what}: time_axis must be 0 (time-major, (T, N, ...)) or 1 (batch-major), got "
                             f"{time_axis!r}")
        lengths = ops.as_tensor(lengths)
        batch = shape[1 - time_axis]
        if lengths.ndim != 1 or not dims_equal(lengths.shape[0], batch):
            raise ShapeError(f"{what}: lengths must be (N,) = ({batch},), one count per sequence of targets "
                             f"{fmt_shape(shape)} (time on axis {time_axis}), got {describe(lengths)} (made at "
                             f"{lengths.source.where()})")
        lengths = _lengths(lengths, what, shape[time_axis])  # each in [0, T]
        fold(sequence_mask(lengths, shape[time_axis], time_axis=time_axis), "lengths")
    if ignored is not None:
        fold(ops.logical_not(ignored), "ignore_index")
    total = ops.sum(per_of(ops.not_equal(w, 0.0)) * w)  # the loss read zeros where w is 0: finite, times 0
    count = ops.sum(w)
    counted = ops.not_equal(count, 0.0)  # nothing counted: 0, not 0 / 0
    return ops.where(counted, total / ops.where(counted, count, ops.ones_like(count)), ops.zeros_like(total))


def mse(pred, y, *, mask=None, lengths=None, time_axis: int = 0) -> ops.Tensor:
    """Mean over all elements of (pred - y)^2: the Gaussian negative log-likelihood up to constants. With
    mask/lengths, the mean over the counted elements only (see the module's docstring)."""
    pred = ops.as_tensor(pred)
    pred, y = _match(pred, _as_float_target(y, pred), "mse")
    return _counted(lambda keep: (kept(pred, keep) - kept(y, keep)) ** 2, pred.shape, pred.dtype, mask, lengths,
                    time_axis, "mse")


def mae(pred, y, *, mask=None, lengths=None, time_axis: int = 0) -> ops.Tensor:
    """Mean absolute error, mean of |pred - y| (torch.nn.L1Loss; the Laplace negative log-likelihood up to
    constants; its gradient at pred = y is 0, as torch's). With mask/lengths, over the counted elements only."""
    pred = ops.as_tensor(pred)
    pred, y = _match(pred, _as_float_target(y, pred), "mae")
    return _counted(lambda keep: ops.abs(kept(pred, keep) - kept(y, keep)), pred.shape, pred.dtype, mask, lengths,
                    time_axis, "mae")


def huber(pred, y, *, delta: float = 1.0, mask=None, lengths=None, time_axis: int = 0) -> ops.Tensor:
    """Huber loss (torch.nn.HuberLoss): the mean of d^2 / 2 where |d| < delta, else delta (|d| - delta / 2), with
    d = pred - y: quadratic near the target, linear (outliers weigh less) beyond delta > 0. With mask/lengths,
    over the counted elements only."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < float(delta) < float("inf")):
        raise GraphcError(f"huber: delta must be a positive number, got {delta!r}")
    pred = ops.as_tensor(pred)
    pred, y = _match(pred, _as_float_target(y, pred), "huber")
    delta = float(delta)

    def per(keep):
        d = kept(pred, keep) - kept(y, keep)
        a = ops.abs(d)
        return ops.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))

    return _counted(per, pred.shape, pred.dtype, mask, lengths, time_axis, "huber")


def binary_cross_entropy(logits, y, *, mask=None, lengths=None, time_axis: int = 0) -> ops.Tensor:
    """Batch mean of -y log sigmoid(f) - (1 - y) log(1 - sigmoid(f)) from logits f, computed as
    y softplus(-f) + (1 - y) softplus(f): both terms without cancellation, so a confident right answer's tiny loss
    keeps its digits. Targets are probabilities in [0, 1]: hard labels {0, 1} or soft ones (label smoothing), as
    torch's binary_cross_entropy_with_logits takes them. With mask/lengths, the mean over the counted elements
    only."""
    logits = ops.as_tensor(logits)
    logits, y = _match(logits, _as_float_target(y, logits), "binary_cross_entropy")

    def per(keep):
        f, t = kept(logits, keep), kept(y, keep)
        return t * ops.softplus(-f) + (1.0 - t) * ops.softplus(f)

    return _counted(per, logits.shape, logits.dtype, mask, lengths, time_axis, "binary_cross_entropy")


def softmax_cross_entropy(logits, labels, *, mask=None, lengths=None, time_axis: int = 0,
                          ignore_index: int | None = None, label_smoothing: float = 0.0) -> ops.Tensor:
    """Mean of -log softmax(z)_y = logsumexp(z) - z_y, for integer labels in [0, C): logits (N, C) and labels
    (N,), or per token, logits (..., C) and labels (...) (e.g. (T, N, C) and (T, N) for a sequence model).

    Padded steps: `mask` (labels' shape or leading dims; bool, or float weights), `lengths` ((N,) real steps per
    sequence, time on `time_axis`) or `ignore_index` (a label value that does not count, as PyTorch's) make the
    loss the mean over the counted tokens only, as torch.nn.CrossEntropyLoss(ignore_index=...).
    `label_smoothing` = e in [0, 1] (PyTorch's): the target is (1 - e)·one_hot(y) + e/C, the loss
    logsumexp(z) - sum_c target_c·z_c."""
    logits = ops.as_tensor(logits)
    labels = ops.as_tensor(labels)
    if logits.ndim < 2:
        raise ShapeError(f"softmax_cross_entropy: logits must be (N, C) (or (..., C) per token), got "
                         f"{fmt_shape(logits.shape)}")
    if labels.dtype not in INT_DTYPES:
        raise DTypeError(f"softmax_cross_entropy: labels must be integer class indices, got {labels.dtype}")
    lead = logits.shape[:-1]
    if labels.ndim != len(lead) or not all(dims_equal(a, b) for a, b in zip(labels.shape, lead, strict=True)):
        raise ShapeError(f"softmax_cross_entropy: labels {fmt_shape(labels.shape)} do not match logits "
                         f"{fmt_shape(logits.shape)}; expected {fmt_shape(lead)}")
    classes = logits.shape[-1]
    if not isinstance(classes, int):
        raise ShapeError("softmax_cross_entropy: the number of classes must be a known int")
    axis = logits.ndim - 1
    ignored = None
    checked = labels
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise GraphcError(f"softmax_cross_entropy: ignore_index must be an int label value, got {ignore_index!r}")
        ignored = ops.equal(labels, ops.constant(ignore_index, labels.dtype))
        checked = ops.where(ignored, ops.constant(0, labels.dtype), labels)  # not counted: any class will do
    # a label outside [0, C) is an error (evaluated or compiled), not a silent zero row of the one-hot
    checked = checked_labels(checked, classes, "softmax_cross_entropy: label")
    hot = ops.one_hot(checked, classes, logits.dtype)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= float(label_smoothing) <= 1.0:
        raise GraphcError(f"softmax_cross_entropy: label_smoothing must be a number in [0, 1], got "
                          f"{label_smoothing!r}")
    if label_smoothing:
        e = float(label_smoothing)
        hot = hot * (1.0 - e) + e / classes

    def per(keep):
        z = kept(logits, keep)
        return ops.logsumexp(z, axis=axis) - ops.sum(hot * z, axis=axis)

    return _counted(per, lead, logits.dtype, mask, lengths, time_axis, "softmax_cross_entropy", ignored)


def _params(params) -> list[Node]:
    if isinstance(params, Node):
        return [params]
    if isinstance(params, Mapping):
        params = list(params.values())
    out = list(params) if isinstance(params, Iterable) else None
    if not out or not all(isinstance(p, Node) for p in out):
        raise GraphcError("penalty: params must be a tensor or a non-empty list of tensors")
    for p in out:
        if p.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"penalty: {p!r} is not a float tensor")
    return out


def _sum_terms(terms: list, nu) -> ops.Tensor:
    """The penalty terms' sum in one float dtype: nu's if it is a tensor, else float32 if any parameter is
    float32 (a model may keep some parameters in float64)."""
    dtype = nu.dtype if isinstance(nu, Node) else (
        "float32" if any(t.dtype == "float32" for t in terms) else terms[0].dtype)
    total = None
    for t in terms:
        t = t if t.dtype == dtype else ops.cast(t, dtype)
        total = t if total is None else total + t
    return total


def _strength(nu, what: str):
    """A penalty's strength: a scalar float tensor, or a finite number >= 0."""
    if isinstance(nu, Node):
        if nu.shape != () or nu.dtype not in ("float32", "float64"):
            raise GraphcError(f"{what}: nu must be a number or a float scalar tensor, got {nu.type_str}")
        return nu
    if isinstance(nu, (bool, np.bool_)) or not isinstance(nu, (int, float, np.integer, np.floating)) \
            or not np.isfinite(nu) or nu < 0:
        raise GraphcError(f"{what}: nu must be a finite number >= 0 (or a scalar tensor), got {nu!r}")
    return nu


def l2(params, nu) -> ops.Tensor:
    """nu/2 * ||θ||² over the given parameters (weight decay; MAP with a Gaussian prior). nu may be a scalar
    tensor (an input set at run time)."""
    nu = _strength(nu, "l2")
    total = _sum_terms([ops.sum(p * p) for p in _params(params)], nu)
    return (nu / 2.0 if isinstance(nu, Node) else float(nu) / 2.0) * total


def l1(params, nu) -> ops.Tensor:
    """nu * ||θ||₁ over the given parameters (sparsity; MAP with a Laplace prior). Subgradient: nu*sign(θ)."""
    nu = _strength(nu, "l1")
    total = _sum_terms([ops.sum(ops.abs(p)) for p in _params(params)], nu)
    return (nu if isinstance(nu, Node) else float(nu)) * total
