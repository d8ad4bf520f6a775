"""Scalar functions for elementwise ops, as sympy functions with stable numpy implementations.

An elementwise op is a sympy expression over these (and sympy's own exp, log, tanh, Abs, sign, Max, Min,
Piecewise, erf, ...). sympy differentiates them (through `fdiff`), numpy evaluates them (through `NUMPY`, used by
lambdify), and the native backend emits them (as graphc's formula terms: `to_term`). Functions whose naive formula
overflows carry stable forms here.
"""

from __future__ import annotations

import numpy as np
import sympy
from sympy.codegen.cfunctions import exp2, expm1, hypot, log1p, log2, log10

from graphc.errors import CompileError
from graphc.ir import formula
from graphc.ir.formula import Term
from graphc.ops import numeric

__all__ = ["sigmoid", "softplus", "relu", "log1p", "expm1", "log2", "log10", "exp2", "hypot", "rint", "keep_bit",
           "floor_divide", "remainder", "NUMPY"]


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


# The lambdify namespace: our functions and the stable forms of sympy's own, before numpy's defaults.
NUMPY = {
    "sigmoid": numeric.sigmoid,
    "softplus": numeric.softplus,
    "relu": numeric.relu,
    "erf": numeric.erf,
    "Heaviside": numeric.heaviside,
    "heaviside": numeric.heaviside,
    "rint": np.rint,
    "floor_divide": np.floor_divide,
    "remainder": np.remainder,
    "floor": np.floor,
    "ceiling": np.ceil,
    "keep_bit": numeric.keep_bit,
}


# a rational constant with a numerator or denominator of more bits than this is beyond a double's range
_DOUBLE_BITS = 1000


def double_constants(expr: sympy.Expr) -> sympy.Expr:
    """`expr` with every rational constant whose numerator or denominator is beyond a double's range (10**400,
    1/10**400, a derivative's (10**400 + 1)/10**400) as a sympy Float of its value, which sympy keeps finite and
    exact enough, and which every conversion to code reads as its IEEE double: +-inf, +-0.0 or the nearest double
    (then rounded to the dtype, as numpy rounds a float32 literal: 1e39 is inf). As Python ints they raised
    OverflowError in numpy and in the emitter, and as a quotient of two infinities a finite constant became nan.
    What a float32 or float64 program computes from such a formula is then what that arithmetic gives."""
    def huge(e) -> bool:
        return (isinstance(e, sympy.Rational) and max(abs(int(e.p)), int(e.q)).bit_length() > _DOUBLE_BITS)

    big = {e for e in expr.atoms(sympy.Rational) if huge(e)} if isinstance(expr, sympy.Basic) else set()
    return expr.xreplace({e: sympy.Float(e, precision=64) for e in big}) if big else expr


def numer_denom(e: sympy.Mul) -> tuple[sympy.Expr, sympy.Expr]:
    """The numerator and denominator a product's code divides: below the line go only the factors written as a
    power with a negative number for exponent (x**-2, pi**(-1/2)) and a rational's denominator. exp(-a) and
    b**(-a) stay above it as written: sympy.fraction writes them 1/exp(a), which for a large a overflows to inf
    where exp(-a) is 0, and the derivative of that quotient multiplies 0 by inf (erf's 2/(sqrt(pi)*exp(x**2))
    made erf'' nan beyond |x| = 9.4 in float32)."""
    numer, denom = [], []
    for t in e.args:
        if t.is_Pow and t.exp.is_Number and t.exp.is_negative:
            denom.append(t.base ** -t.exp)
        elif t.is_Rational and not t.is_Integer:
            if t.p != 1:
                numer.append(sympy.Integer(t.p))
            denom.append(sympy.Integer(t.q))
        else:
            numer.append(t)
    return sympy.Mul(*numer), sympy.Mul(*denom)


def to_term(expr: sympy.Expr) -> Term:
    """`expr` as a graphc formula term (graphc.ir.formula), in the shape its native code takes: a sum's terms
    that carry a minus sign are subtracted, a product with a denominator divides, x ** 0.5 is sqrt, a Piecewise
    is nested selects. sympy's argument order is kept (the code is emitted in it). CompileError for a function
    with no native code."""
    memo: dict = {}
    named: dict[str, sympy.Symbol] = {}

    def go(e) -> Term:
        t = memo.get(e)
        if t is None:
            t = memo[e] = _term(e)
        return t

    def _term(e) -> Term:
        if isinstance(e, sympy.Symbol):
            if named.setdefault(e.name, e) != e:
                raise CompileError(f"the formula {expr} has two different symbols named {e.name}")
            return formula.sym(e.name)
        if e is sympy.true or e is sympy.false:
            return Term("bool", (), bool(e))
        if e.is_Number or e in (sympy.pi, sympy.E):
            return formula.num(int(e) if e.is_Integer else float(e))
        if e.is_Add:
            pos = [t for t in e.args if not t.could_extract_minus_sign()]
            neg = [-t for t in e.args if t.could_extract_minus_sign()]
            return Term("add", tuple(go(t) for t in pos + neg), len(pos))
        if e.is_Mul:
            if e.could_extract_minus_sign():
                return Term("neg", (go(-e),))
            n, d = numer_denom(e)
            if d != 1:
                return Term("div", (go(n), go(d)))
            return Term("mul", tuple(go(t) for t in e.args))
        if e.is_Pow:
            base, p = e.args
            if p.is_Integer:
                return Term("powi", (go(base),), int(p))
            if p.is_Number and float(p) == 0.5:
                return Term("sqrt", (go(base),))
            if p.is_Number and float(p) == -0.5:
                return Term("rsqrt", (go(base),))
            return Term("pow", (go(base), formula.num(float(p)) if p.is_Number else go(p)))
        if isinstance(e, sympy.Piecewise):
            (val, cond), rest = e.args[0], e.args[1:]
            if cond is sympy.true or not rest:
                return go(val)
            return Term("select", (go(cond), go(val), go(sympy.Piecewise(*rest))))
        if isinstance(e, sympy.core.relational.Relational) and type(e) in _COMPARES:
            return Term(_COMPARES[type(e)], (go(e.lhs), go(e.rhs)))
        if isinstance(e, sympy.Heaviside):
            return Term("heaviside", (go(e.args[0]),), float(e.args[1]) if len(e.args) > 1 else 0.5)
        if isinstance(e, keep_bit):
            i, key, salt, thresh = e.args
            return Term("keep_bit", (go(i), go(key), go(thresh)), int(salt))
        op = _OPS.get(type(e))
        if op is not None:
            return Term(op, tuple(go(a) for a in e.args))
        raise CompileError(f"the function {type(e).__name__} in {e} has no native code; use exp, log, log1p, "
                           "expm1, tanh, sigmoid, softplus, erf, sqrt, abs, sign, max, min, powers, piecewise, "
                           f"floor, ceiling, {', '.join(formula.LIBM_FUNCTIONS + formula.LIBM_BINARY)}")

    return go(double_constants(sympy.sympify(expr)))


_COMPARES = {sympy.StrictLessThan: "lt", sympy.LessThan: "le", sympy.StrictGreaterThan: "gt",
             sympy.GreaterThan: "ge", sympy.Equality: "eq", sympy.Unequality: "ne"}
# sympy's function classes (and graphc's) -> the formula op of the same arguments
_OPS = {sympy.Not: "not", sympy.And: "and", sympy.Or: "or", sympy.Max: "max", sympy.Min: "min", relu: "relu",
        sympy.Abs: "abs", sympy.sign: "sign", rint: "rint", sympy.floor: "floor", sympy.ceiling: "ceil",
        floor_divide: "floor_divide", remainder: "remainder", sympy.exp: "exp", sympy.log: "log", log1p: "log1p",
        expm1: "expm1", sympy.tanh: "tanh", sigmoid: "sigmoid", softplus: "softplus", sympy.erf: "erf",
        log2: "log2", log10: "log10", exp2: "exp2", sympy.atan2: "atan2", hypot: "hypot",
        **{getattr(sympy, name): name for name in formula.LIBM_FUNCTIONS if hasattr(sympy, name)}}
