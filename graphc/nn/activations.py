"""Activation functions beyond the graph's own elementwise ops (relu, tanh, sigmoid, softplus): the ReLU family
of jax.nn and torch.nn.functional, and log_sigmoid, each a composition of graph ops (so the compiler fuses it into
the layer's epilogue and differentiates it like any graph), with PyTorch's value and gradient at the kinks."""

from __future__ import annotations

import math

from graphc import ops
from graphc.errors import GraphcError
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


__all__ = ["leaky_relu", "elu", "gelu", "silu", "log_sigmoid"]
