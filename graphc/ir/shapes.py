"""Shapes and dtypes: a dim is an int or a `Dim` (graphc.ir.dims: a polynomial in symbols such as the batch `N`,
without sympy); a dtype is one of a few names. The compiler's index algebra meets dims as sympy expressions
(`Dim._sympy_`), and a dim it computes may come back as one: every function here takes either."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from functools import cache

import numpy as np

from graphc.errors import DTypeError, ShapeError
from graphc.ir import dims as _dims

Dim = int | _dims.Dim
Shape = tuple[Dim, ...]

DTYPES = ("float32", "float64", "int32", "int64", "bool")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")
SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}


def float_for(*dtypes: str) -> str:
    """The float dtype ints and bools become where they meet a float or a float function: float64 where an int64
    is among them (no int above 2**24 is rounded first), else float32, the default float (as JAX: int32 as
    float32, int64 as float64)."""
    return "float64" if "int64" in dtypes else "float32"


def symbol(name: str) -> _dims.Dim:
    """The dim symbol called `name`: a positive integer."""
    return _dims.symbol(name)


def is_sympy(d) -> bool:
    """A sympy expression (sympy is only imported where the compiler or the user brought it in)."""
    # a module another thread is still importing may lack Basic yet; no value of this thread is a sympy one then
    basic = getattr(sys.modules.get("sympy"), "Basic", None)
    return basic is not None and isinstance(d, basic)


def as_dim(d, where: str = "shape") -> Dim:
    if isinstance(d, bool):
        raise ShapeError(f"{where}: a dim must be a non-negative int or a symbol name, not {d!r}")
    if isinstance(d, (int, np.integer)):
        if d < 0:
            raise ShapeError(f"{where}: dims must be >= 0, got {int(d)}")
        return int(d)
    if isinstance(d, str):
        if not d.isidentifier():
            raise ShapeError(f"{where}: symbolic dim {d!r} must be an identifier such as 'N'")
        return symbol(d)
    if isinstance(d, _dims.Dim):
        if not d.is_integral:
            raise ShapeError(f"{where}: a dim must be a whole number for every value of its symbols, got {d}")
        return d
    if is_sympy(d):
        for s in getattr(d, "free_symbols", ()):
            if not (s.is_integer and s.is_positive):
                raise ShapeError(f"{where}: the sympy symbol {s} in the dim {d!r} is not declared a positive integer; "
                                 f"name the dim with a string (e.g. '{s}'), or make it sympy.Symbol('{s}', "
                                 "integer=True, positive=True)")
        try:
            out = _dims.from_sympy(d)
        except ValueError as e:
            raise ShapeError(f"{where}: {e}") from None
        if isinstance(out, (int, _dims.Dim)):
            return as_dim(out, where)
    raise ShapeError(f"{where}: a dim must be an int or a symbol name such as 'N', not {type(d).__name__} {d!r}")


def as_shape(shape, where: str = "shape") -> Shape:
    if isinstance(shape, (int, str, np.integer, _dims.Dim)) or is_sympy(shape):
        shape = (shape,)
    try:
        items = tuple(shape)
    except TypeError:
        raise ShapeError(f"{where}: a shape must be a tuple of dims, not {shape!r}") from None
    return tuple(as_dim(d, where) for d in items)


def as_dtype(dtype, where: str = "dtype") -> str:
    if dtype is None:
        return "float32"
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in DTYPES:
        raise DTypeError(f"{where}: unsupported dtype {dtype!r}; graphc supports {', '.join(DTYPES)}")
    return name


def fmt_dim(d: Dim) -> str:
    return str(d)


def fmt_shape(shape: Shape) -> str:
    return "[" + ",".join(fmt_dim(d) for d in shape) + "]"


def fmt_type(shape: Shape, dtype: str) -> str:
    return f"{SHORT[dtype]}{fmt_shape(shape)}"


def dims_equal(a: Dim, b: Dim) -> bool:
    """Whether two dims are equal for every value of their symbols. Polynomials are equal exactly when their
    canonical forms are; dims with floors, ceilings or maxima that differ in form are compared by sympy (its
    first call in a process imports sympy: only shapes like a strided conv's over a symbolic size get there)."""
    if a == b:
        return True
    if isinstance(a, int) and isinstance(b, int):
        return False
    if not is_sympy(a) and not is_sympy(b) and all(
            isinstance(d, int) or d.is_polynomial for d in (a, b)):
        return False
    import sympy

    d = sympy.expand(sympy.sympify(a) - sympy.sympify(b))
    if d == 0:
        return True
    if d.is_number or d.is_polynomial():
        return False
    return sympy.simplify(d) == 0


def size(shape: Shape) -> Dim:
    out: Dim = 1
    for d in shape:
        out = out * d
    if is_sympy(out):
        import sympy

        return sympy.expand(out)
    return out


def is_static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def free_symbols(shape: Shape) -> set:
    """The dim symbols of a shape (as `Dim`s; a sympy dim's symbols are equal to them and hash alike)."""
    out: set = set()
    for d in shape:
        if not isinstance(d, int):
            out |= d.free_symbols
    return out


def broadcast_shapes(shapes: Iterable[Shape], what: str) -> Shape:
    """numpy's broadcasting over symbolic dims. Distinct symbols, or a symbol and an int other than 1, do not
    unify: that is nearly always a batch dim meeting a feature dim, so it is an error, not a runtime check."""
    shapes = list(shapes)
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dim: Dim = 1
        for s in shapes:
            k = axis - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(dim, int) and dim == 1:
                dim = d
            elif not dims_equal(dim, d):
                sym = next((v for v in (dim, d) if not isinstance(v, int)), None)
                num = next((v for v in (dim, d) if isinstance(v, int)), None)
                hint = ""
                if sym is not None and num is not None:  # a batch dim meeting a fixed size: say why and what to do
                    hint = (f"; {fmt_dim(sym)} is symbolic (any size, bound when called), so it meets only itself or "
                            f"1: give the other side 1 on this axis to broadcast it, or declare the input with "
                            f"{num} here if it always has {num}")
                elif all(fmt_dim(v).isidentifier() for v in (dim, d)):
                    hint = "; distinct symbolic dims are different sizes to graphc: use one name for one size"
                raise ShapeError(
                    f"{what}: shapes {' and '.join(fmt_shape(x) for x in shapes)} do not broadcast "
                    f"(axis {axis - rank}: {fmt_dim(dim)} vs {fmt_dim(d)}){hint}"
                )
        out.append(dim)
    return tuple(out)


def bind(shape: Shape, actual: tuple[int, ...], env: dict, what: str, owner: Mapping | None = None) -> None:
    """Check an actual shape against a declared one, binding the declared symbols in `env` (symbol -> int).

    `owner` maps each symbol to a description of where it was first bound, for the error message."""
    if len(shape) != len(actual):
        raise ShapeError(f"{what}: expected rank {len(shape)} {fmt_shape(shape)}, got shape {tuple(actual)}")
    for axis, (d, a) in enumerate(zip(shape, actual, strict=True)):
        if isinstance(d, int):
            if d != a:
                raise ShapeError(
                    f"{what}: expected shape {fmt_shape(shape)}, got {tuple(actual)} (axis {axis}: {a} != {d})"
                )
            continue
        if _is_symbol(d):
            if d in env and env[d] != a:
                first = f" (bound by {owner[d]})" if owner and d in owner else ""
                raise ShapeError(
                    f"{what}: dim {d} is {env[d]}{first} but this value has {a} on axis {axis} "
                    f"(shape {tuple(actual)}); every input must agree on {d}"
                )
            env[d] = a
            if owner is not None and d not in owner:
                owner[d] = what  # type: ignore[index]
            continue
        missing = d.free_symbols - set(env)
        if missing:
            names = ", ".join(sorted(map(str, missing)))
            raise ShapeError(f"{what}: axis {axis} is {d}, but no input gives {names} a value on its own; declare "
                             f"an input with {names} as a dim of its own (or this one's shape with a new name)")
        value = eval_dim(d, env)
        if value != a:
            raise ShapeError(f"{what}: axis {axis} should be {d} = {value}, got {a}")


def _is_symbol(d) -> bool:
    return d.is_symbol if isinstance(d, _dims.Dim) else bool(getattr(d, "is_Symbol", False))


def eval_dim(d: Dim, env: Mapping) -> int:
    if isinstance(d, int):
        return d
    missing = d.free_symbols - set(env)
    if missing:
        raise ShapeError(f"dim {d} needs a value for {', '.join(sorted(map(str, missing)))}")
    if isinstance(d, _dims.Dim):
        return d.evaluate(env)
    return int(_dim_evaluator(d)(env))


@cache
def _dim_evaluator(d):
    """env -> the exact value of the sympy dim expression `d` (one the compiler computed: ints and fractions,
    floor and ceiling of them), microseconds a call where sympy's subs takes a millisecond; subs for the rest."""
    from fractions import Fraction

    import sympy

    if d.is_Symbol:
        return lambda env: env[d]
    if d.is_Integer:
        v = int(d)
        return lambda env: v
    if d.is_Rational:
        v = Fraction(int(d.p), int(d.q))
        return lambda env: v
    parts = [_dim_evaluator(a) for a in d.args]
    if d.is_Add:
        return lambda env: sum(f(env) for f in parts)
    if d.is_Mul:
        def product(env):
            out = 1
            for f in parts:
                out = out * f(env)
            return out
        return product
    if d.is_Pow and d.exp.is_Integer and d.exp >= 0:
        base, e = parts[0], int(d.exp)
        return lambda env: base(env) ** e
    if isinstance(d, sympy.floor):
        return lambda env: math.floor(parts[0](env))
    if isinstance(d, sympy.ceiling):
        return lambda env: math.ceil(parts[0](env))
    if isinstance(d, sympy.Max):
        return lambda env: max(f(env) for f in parts)
    if isinstance(d, sympy.Min):
        return lambda env: min(f(env) for f in parts)
    return lambda env: d.subs(env)


def eval_shape(shape: Shape, env: Mapping) -> tuple[int, ...]:
    return tuple(eval_dim(d, env) for d in shape)
