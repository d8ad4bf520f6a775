"""Scalar functions for elementwise ops, as sympy functions with stable numpy implementations.

An elementwise op is a sympy expression over these (and sympy's own exp, log, tanh, Abs, sign, Max, Min,
Piecewise, erf, ...). sympy differentiates them (through `fdiff`), numpy evaluates them (through `NUMPY`, used by
lambdify), and the native backend emits them. Functions whose naive formula overflows carry stable forms here.
"""

from __future__ import annotations

import math

import numpy as np
import sympy
from sympy.codegen.cfunctions import expm1, log1p

__all__ = ["sigmoid", "softplus", "relu", "log1p", "expm1", "rint", "keep_bit", "floor_divide", "remainder", "NUMPY"]


class sigmoid(sympy.Function):  # noqa: N801 - sympy function names are lower case
    """1 / (1 + exp(-x)), evaluated without overflow."""

    def fdiff(self, argindex=1):
        # s(x) s(-x), not s (1 - s): 1 - s(x) rounds to 0 for x > 17 in float32, losing the whole tail
        return sigmoid(self.args[0]) * sigmoid(-self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))

    def _eval_is_real(self):
        return self.args[0].is_real


class softplus(sympy.Function):  # noqa: N801
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): finite and accurate for any x."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sympy.log(1 + sympy.exp(x))

    def _eval_rewrite_as_log(self, x, **kwargs):
        return sympy.log(1 + sympy.exp(x))

    def _eval_is_real(self):
        return self.args[0].is_real


class relu(sympy.Function):  # noqa: N801
    """max(x, 0), with the subgradient convention relu'(0) = 0."""

    def fdiff(self, argindex=1):
        # written on the output, relu(x) > 0 (the same as x > 0): backprop then reads the activation it must
        # keep anyway, and the pre-activation need not be stored
        return sympy.Heaviside(relu(self.args[0]), 0)

    def _eval_rewrite_as_Max(self, x, **kwargs):
        return sympy.Max(x, 0)

    def _eval_is_real(self):
        return self.args[0].is_real


class rint(sympy.Function):  # noqa: N801
    """Round to the nearest integer, ties to even (IEEE rint)."""


class floor_divide(sympy.Function):  # noqa: N801
    """numpy's floor_divide (Python's //): floats as numpy computes them, through fmod (1 // 0.1 is 9, as the
    float 0.1 is a little over 1/10) and x // 0 = x / 0; ints rounded down, x // 0 = 0. Piecewise constant."""

    nargs = 2

    def fdiff(self, argindex=1):
        return sympy.Integer(0)

    def _latex(self, printer):
        a, b = (printer._print(v) for v in self.args)
        return rf"\left\lfloor \frac{{{a}}}{{{b}}} \right\rfloor"


class remainder(sympy.Function):  # noqa: N801
    """numpy's remainder (Python's %): a - b * floor_divide(a, b), with the sign of b; x % 0 is nan for floats and
    0 for ints."""

    nargs = 2

    def fdiff(self, argindex=1):
        return sympy.Integer(1) if argindex == 1 else -floor_divide(*self.args)

    def _latex(self, printer):
        a, b = (printer.parenthesize(v, 50) for v in self.args)
        return rf"{a} \bmod {b}"


class keep_bit(sympy.Function):  # noqa: N801
    """Dropout's mask bit keep_bit(i, key, salt, threshold): whether element i (an integer) is kept by the counter
    hash of (key, salt, i) against `threshold` (the top-24-bit cut, an integer-valued float); see
    graphc.ops.random."""

    nargs = 4


def _np_keep_bit(i, key, salt, threshold):
    from graphc.ops.random import GOLDEN, lowbias32, stream

    s = np.uint32(stream(int(key), int(salt)))
    with np.errstate(over="ignore"):
        ii = np.asarray(i).astype(np.uint64).astype(np.uint32)
        h = lowbias32(lowbias32(ii * np.uint32(GOLDEN) + s) ^ s)
    return (h >> np.uint32(8)) < np.uint32(int(threshold))


def _np_sigmoid(x):
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _np_softplus(x):
    x = np.asarray(x)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _np_relu(x):
    return np.maximum(x, np.zeros((), dtype=np.asarray(x).dtype))


_erf = np.frompyfunc(math.erf, 1, 1)


def _np_erf(x):
    x = np.asarray(x)
    return np.asarray(_erf(x), dtype=x.dtype if x.dtype.kind == "f" else np.float64)


def _np_heaviside(x, h0=0.5):
    x = np.asarray(x)
    return np.heaviside(x, np.asarray(h0, dtype=x.dtype if x.dtype.kind == "f" else np.float64))


# The lambdify namespace: our functions and the stable forms of sympy's own, before numpy's defaults.
NUMPY = {
    "sigmoid": _np_sigmoid,
    "softplus": _np_softplus,
    "relu": _np_relu,
    "erf": _np_erf,
    "Heaviside": _np_heaviside,
    "heaviside": _np_heaviside,
    "rint": np.rint,
    "floor_divide": np.floor_divide,
    "remainder": np.remainder,
    "floor": np.floor,
    "ceiling": np.ceil,
    "keep_bit": _np_keep_bit,
}
