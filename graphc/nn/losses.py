"""The lecture's losses (each the negative log-likelihood of its task, averaged over the batch) and penalties.

- regression, Gaussian likelihood with fixed sigma  ->  mean squared error
- binary, Bernoulli with P(y|x) = sigmoid((2y-1) f)  ->  softplus((1-2y) f)
- multiclass, categorical with softmax               ->  logsumexp(z) - z_y
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from graphc import ops
from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir.node import Node
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, dims_equal, fmt_shape


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


def mse(pred, y) -> ops.Tensor:
    """Mean over all elements of (pred - y)^2: the Gaussian negative log-likelihood up to constants."""
    pred = ops.as_tensor(pred)
    pred, y = _match(pred, _as_float_target(y, pred), "mse")
    return ops.mean((pred - y) ** 2)


def binary_cross_entropy(logits, y) -> ops.Tensor:
    """Batch mean of softplus((1 - 2y) f): -log sigmoid((2y - 1) f) for labels y in {0, 1}, from logits f."""
    logits = ops.as_tensor(logits)
    logits, y = _match(logits, _as_float_target(y, logits), "binary_cross_entropy")
    return ops.mean(ops.softplus((1.0 - 2.0 * y) * logits))


def softmax_cross_entropy(logits, labels) -> ops.Tensor:
    """Batch mean of -log softmax(z)_y = logsumexp(z) - z_y, for integer labels in [0, C)."""
    logits = ops.as_tensor(logits)
    labels = ops.as_tensor(labels)
    if logits.ndim != 2:
        raise ShapeError(f"softmax_cross_entropy: logits must be (N, C), got {fmt_shape(logits.shape)}")
    if labels.dtype not in INT_DTYPES:
        raise DTypeError(f"softmax_cross_entropy: labels must be integer class indices, got {labels.dtype}")
    if labels.ndim != 1 or not dims_equal(labels.shape[0], logits.shape[0]):
        raise ShapeError(f"softmax_cross_entropy: labels {fmt_shape(labels.shape)} do not match logits "
                         f"{fmt_shape(logits.shape)}; expected ({logits.shape[0]},)")
    classes = logits.shape[1]
    if not isinstance(classes, int):
        raise ShapeError("softmax_cross_entropy: the number of classes must be a known int")
    picked = ops.sum(ops.one_hot(labels, classes, logits.dtype) * logits, axis=1)
    return ops.mean(ops.logsumexp(logits, axis=1) - picked)


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


def l2(params, nu) -> ops.Tensor:
    """nu/2 * ||θ||² over the given parameters (weight decay; MAP with a Gaussian prior). nu may be a scalar
    tensor (an input set at run time)."""
    total = _sum_terms([ops.sum(p * p) for p in _params(params)], nu)
    return (nu / 2.0 if isinstance(nu, Node) else float(nu) / 2.0) * total


def l1(params, nu) -> ops.Tensor:
    """nu * ||θ||₁ over the given parameters (sparsity; MAP with a Laplace prior). Subgradient: nu*sign(θ)."""
    total = _sum_terms([ops.sum(ops.abs(p)) for p in _params(params)], nu)
    return (nu if isinstance(nu, Node) else float(nu)) * total
