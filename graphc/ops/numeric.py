"""numpy's values of graphc's scalar functions, without sympy: the stable forms the reference evaluator's lambdify
uses (graphc.ops.scalar.NUMPY), and `evaluate`, a formula term (graphc.ir.formula) computed with numpy, which is how
the compiler folds an elementwise op of constants without building or importing its sympy formula."""

from __future__ import annotations

import functools
import math
import operator

import numpy as np

from graphc.ir.formula import Term


def keep_bit(i, key, salt, threshold):
    from graphc.ops.random import bits24

    return bits24(int(key), int(salt), i) < np.uint32(int(threshold))


def rand_uniform(low, scale, i, key, salt):
    """gc.random.uniform's value at the element indices `i`: low + scale * u, u = bits24 / 2^24 in [0, 1) (exact
    in float32), rounded twice in low's dtype (the native code does not fuse the two into an FMA)."""
    from graphc.ops.random import bits24

    low = np.asarray(low)
    u = bits24(int(key), int(salt), i).astype(low.dtype) * low.dtype.type(2.0 ** -24)
    return low + np.asarray(scale, low.dtype) * u


def rand_normal(mean, std, i, key, salt):
    """gc.random.normal's value at the element indices `i`, by Box-Muller on two 24-bit uniforms of the counter
    hash (salts `salt` and `second_salt(salt)`), computed in float64 and rounded once to mean's dtype:
    mean + std * sqrt(-2 log u1) * cos(2 pi u2) with u1 in (0, 1], u2 in [0, 1)."""
    from graphc.ops.random import bits24, second_salt

    mean = np.asarray(mean)
    u1 = (bits24(int(key), int(salt), i).astype(np.float64) + 1.0) * 2.0 ** -24
    u2 = bits24(int(key), second_salt(int(salt)), i).astype(np.float64) * 2.0 ** -24
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return (np.float64(mean) + np.float64(std) * z).astype(mean.dtype)


def sigmoid(x):
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x):
    x = np.asarray(x)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def relu(x):
    return np.maximum(x, np.zeros((), dtype=np.asarray(x).dtype))


_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    x = np.asarray(x)
    return np.asarray(_erf(x), dtype=x.dtype if x.dtype.kind == "f" else np.float64)


def heaviside(x, h0=0.5):
    x = np.asarray(x)
    return np.heaviside(x, np.asarray(h0, dtype=x.dtype if x.dtype.kind == "f" else np.float64))


# formula ops -> numpy functions of their arguments (the ops with a value or a special form are in `_apply`);
# Python's operators where lambdify's code has them, so that a Python number stays one (of the arrays' dtype)
_FUNCTIONS = {
    "neg": operator.neg, "div": operator.truediv, "sqrt": np.sqrt, "rsqrt": lambda x: x ** -0.5, "pow": operator.pow,
    "select": np.where, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "eq": np.equal, "ne": np.not_equal, "not": np.logical_not, "relu": relu, "abs": np.abs, "sign": np.sign,
    "rint": np.rint, "floor": np.floor, "ceil": np.ceil, "floor_divide": np.floor_divide,
    "remainder": np.remainder, "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1,
    "tanh": np.tanh, "sigmoid": sigmoid, "softplus": softplus, "erf": erf, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "log2": np.log2, "log10": np.log10,
    "exp2": np.exp2, "atan2": np.arctan2, "hypot": np.hypot,
}
# ops of one or more arguments: numpy's binary function, folded left to right
_FOLDS = {"mul": operator.mul, "and": np.logical_and, "or": np.logical_or, "max": np.maximum, "min": np.minimum}


def evaluate(term: Term, env: dict):
    """`term` computed with numpy, its symbols bound by name by `env` (arrays). Numbers are Python numbers, which
    take the arrays' dtype (as the literals of lambdify's code do), so a float32 formula is computed in float32."""
    memo: dict[int, object] = {}
    stack = [(term, False)]
    while stack:  # iterative: a long formula must not meet the recursion limit
        t, ready = stack.pop()
        if id(t) in memo:
            continue
        if not ready:
            stack.append((t, True))
            stack.extend((a, False) for a in t.args if id(a) not in memo)
            continue
        memo[id(t)] = _apply(t, [memo[id(a)] for a in t.args], env)
    return memo[id(term)]


def _apply(t: Term, args: list, env: dict):
    op = t.op
    if op == "sym":
        return env[t.value]
    if op in ("num", "bool"):
        return t.value
    if op == "add":  # the first `value` terms added, the rest subtracted
        k = t.value
        acc = args[0] if k else -args[0]
        for j, a in enumerate(args[1:], 1):
            acc = acc + a if j < k else acc - a
        return acc
    if op == "powi":
        return args[0] ** t.value
    if op == "heaviside":
        return heaviside(args[0], t.value)
    if op == "keep_bit":
        i, key, threshold = args
        return keep_bit(i, key, t.value, threshold)
    if op in ("rand_uniform", "rand_normal"):
        return (rand_uniform if op == "rand_uniform" else rand_normal)(*args, t.value)
    if op in _FOLDS:
        return functools.reduce(_FOLDS[op], args)
    return _FUNCTIONS[op](*args)
