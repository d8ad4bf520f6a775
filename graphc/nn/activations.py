"""Activation functions beyond the graph's own elementwise ops (relu, tanh, sigmoid, softplus): the ReLU family
of jax.nn and torch.nn.functional (with its hard, self-normalizing and gated members), log_sigmoid and
standardize, each a composition of graph ops (so the compiler fuses it into the layer's epilogue and
differentiates it like any graph), with PyTorch's value and gradient at the kinks."""

from __future__ import annotations

import math

from graphc import ops
from graphc.errors import DTypeError, GraphcError
from graphc.ir.node import capture_source


def _number(v, what: str, fn: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise GraphcError(f"{fn}: {what} must be a finite number, got {v!r} (at {capture_source().where()})")
    return float(v)


def leaky_relu(x, negative_slope: float = 0.01) -> ops.Tensor:
    """x where x > 0, else negative_slope·x (torch.nn.functional.leaky_relu: the gradient at 0 is the slope)."""
    a = _number(negative_slope, "negative_slope", "leaky_relu")
    x = ops.as_tensor(x)
    return ops.where(x > 0, x, x * a)


def elu(x, alpha: float = 1.0) -> ops.Tensor:
    """x where x > 0, else alpha·(exp(x) - 1) (jax.nn.elu, torch's ELU). The exponential only sees x <= 0: its
    derivative at a large positive x would be inf, and inf·0 a NaN gradient through the branch not taken (and
    not through a minimum, whose tie at 0 would halve the gradient there)."""
    a = _number(alpha, "alpha", "elu")
    x = ops.as_tensor(x)
    pos = x > 0
    return ops.where(pos, x, ops.expm1(ops.where(pos, 0.0, x)) * a)


def gelu(x, approximate: bool = False) -> ops.Tensor:
    """x·Φ(x), Φ the standard normal CDF: x/2·(1 + erf(x/√2)) (torch's default), or with `approximate=True`
    the tanh form x/2·(1 + tanh(√(2/π)(x + 0.044715x³))) (jax.nn.gelu's default, torch's approximate='tanh')."""
    if not isinstance(approximate, bool):
        raise GraphcError(f"gelu: approximate must be True or False, got {approximate!r} "
                          f"(at {capture_source().where()})")
    x = ops.as_tensor(x)
    if approximate:
        inner = (x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * 0.5 * (ops.tanh(inner) + 1.0)
    return x * 0.5 * (ops.erf(x * (1.0 / math.sqrt(2.0))) + 1.0)


def silu(x) -> ops.Tensor:
    """x·sigmoid(x) (swish with β = 1; jax.nn.silu, torch's SiLU)."""
    x = ops.as_tensor(x)
    return x * ops.sigmoid(x)


def log_sigmoid(x) -> ops.Tensor:
    """log(sigmoid(x)) as -softplus(-x) (jax.nn.log_sigmoid, torch's F.logsigmoid): finite and accurate for any x
    (log(sigmoid(x)) as written is -inf below -88 in float32 and 0 above 17), its gradient sigmoid(-x)."""
    return -ops.softplus(-ops.as_tensor(x))


def swish(x) -> ops.Tensor:
    """jax.nn.swish: an alias of silu, x·sigmoid(x)."""
    return silu(x)


def _float(x, fn: str) -> ops.Tensor:
    x = ops.as_tensor(x)
    if x.dtype not in ("float32", "float64"):  # the activations below are float functions (jax's refuse ints too)
        raise DTypeError(f"{fn}: needs a float tensor, got {x.dtype} (at {capture_source().where()}); "
                         "use gc.cast(x, 'float32') first")
    return x


def _clamp(x: ops.Tensor, lo: float, hi: float) -> ops.Tensor:
    """x clamped to [lo, hi] with the derivative 1 strictly inside and 0 at and beyond both ends (PyTorch's
    hardtanh/relu6 backward); NaN passes through with derivative 1 (graphc's NaN rule, as relu's)."""
    return ops.where(x <= lo, lo, ops.where(x >= hi, hi, x))


def relu6(x) -> ops.Tensor:
    """min(max(x, 0), 6) (jax.nn.relu6, torch's ReLU6). Its gradient is 1 on (0, 6) and 0 at both kinks
    (PyTorch's)."""
    return _clamp(_float(x, "relu6"), 0.0, 6.0)


def hard_tanh(x) -> ops.Tensor:
    """x clamped to [-1, 1] (jax.nn.hard_tanh, torch's Hardtanh). Its gradient is 1 on (-1, 1) and 0 at ±1
    (PyTorch's; JAX's is 1 there)."""
    return _clamp(_float(x, "hard_tanh"), -1.0, 1.0)


def hard_sigmoid(x) -> ops.Tensor:
    """relu6(x + 3) / 6 (jax.nn.hard_sigmoid, torch's Hardsigmoid). Its gradient is 1/6 on (-3, 3), 0 at ±3."""
    return relu6(_float(x, "hard_sigmoid") + 3.0) * (1.0 / 6.0)


def hard_swish(x) -> ops.Tensor:
    """x·hard_sigmoid(x) (jax.nn.hard_swish, torch's Hardswish). Its gradient at the kinks is the product rule's
    with hard_sigmoid'(±3) = 0: 0 at -3 and 1 at 3 (torch gives -0.5 and 1.5 there, its one-sided slopes)."""
    x = _float(x, "hard_swish")
    return x * hard_sigmoid(x)


hard_silu = hard_swish


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(x) -> ops.Tensor:
    """scale·elu(x, alpha) with the self-normalizing constants (jax.nn.selu, torch's SELU): alpha ≈ 1.6733,
    scale ≈ 1.0507. Its gradient at 0 is scale·alpha (elu's convention)."""
    return elu(_float(x, "selu"), _SELU_ALPHA) * _SELU_SCALE


def celu(x, alpha: float = 1.0) -> ops.Tensor:
    """x where x > 0, else alpha·(exp(x/alpha) - 1) (jax.nn.celu, torch's CELU); differentiable at 0 (slope 1).
    alpha must be a non-zero finite number."""
    a = _number(alpha, "alpha", "celu")
    if a == 0:
        raise GraphcError(f"celu: alpha must not be 0 (at {capture_source().where()})")
    x = _float(x, "celu")
    pos = x > 0
    return ops.where(pos, x, ops.expm1(ops.where(pos, 0.0, x) * (1.0 / a)) * a)


def mish(x) -> ops.Tensor:
    """x·tanh(softplus(x)) (jax.nn.mish, torch's Mish), finite for any x (softplus is the stable one)."""
    x = _float(x, "mish")
    return x * ops.tanh(ops.softplus(x))


def softsign(x) -> ops.Tensor:
    """x / (1 + |x|) (jax.nn.soft_sign, torch's Softsign)."""
    x = _float(x, "softsign")
    return x / (ops.abs(x) + 1.0)


soft_sign = softsign


def glu(x, axis: int = -1) -> ops.Tensor:
    """The gated linear unit (jax.nn.glu, torch's GLU): x split in two halves a, b along `axis` (whose length must
    be even), a·sigmoid(b)."""
    from graphc.errors import ShapeError

    x = _float(x, "glu")
    r = len(x.shape)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -r <= axis < r:
        raise GraphcError(f"glu: axis must be an int axis of a rank-{r} tensor, got {axis!r} "
                          f"(at {capture_source().where()})")
    n = x.shape[axis]
    if not isinstance(n, int) or n % 2:
        raise ShapeError(f"glu: axis {axis} has length {n}; it must be an even int to split in two halves "
                         f"(at {capture_source().where()})")
    a, b = ops.split(x, 2, axis)
    return a * ops.sigmoid(b)


def standardize(x, axis=-1, mean=None, variance=None, epsilon: float = 1e-5) -> ops.Tensor:
    """(x - mean) / sqrt(variance + epsilon) over `axis` (jax.nn.standardize; mean and variance computed over
    the axis when not given, the variance two-pass as gc.var: within rounding of jax's E[x²] - E[x]², without its
    cancellation)."""
    eps = _number(epsilon, "epsilon", "standardize")
    x = _float(x, "standardize")
    if mean is None:
        mean = ops.mean(x, axis, keepdims=True)
    if variance is None:
        variance = ops.var(x, axis, keepdims=True)
    return (x - mean) * ops.rsqrt(variance + eps)


__all__ = ["leaky_relu", "elu", "gelu", "silu", "log_sigmoid", "swish", "relu6", "hard_tanh", "hard_sigmoid",
           "hard_swish", "hard_silu", "selu", "celu", "mish", "softsign", "soft_sign", "glu", "standardize"]
