"""Source ops, the leaves of a graph: inputs, parameters, constants, index ranges and runtime dim values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc.errors import GraphcError, ShapeError
from graphc.ir.node import ArrayValue
from graphc.ir.shapes import FLOAT_DTYPES, as_dim, as_dtype, as_shape, eval_dim, fmt_shape, is_static
from graphc.ops.core import Op, Tensor, apply, register


class _Leaf(Op):
    kind = "source"
    hidden_attrs = ("shape", "dtype")

    def infer(self, inputs, attrs):
        return attrs["shape"], attrs["dtype"]

    def reference(self, node, args, ctx):
        raise AssertionError("leaves are bound by the evaluator")

    def vjp(self, node, g):
        return ()


class Input(_Leaf):
    name = "input"
    leaf = True


class Param(_Leaf):
    name = "param"
    leaf = True
    hidden_attrs = ("shape", "dtype", "init")


INPUT = register(Input())
PARAM = register(Param())


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise GraphcError(f"{what}: a name must be a non-empty string, got {name!r}")
    if not name.isprintable():  # a newline or an escape code breaks every listing (gc.show, kernels, headers)
        raise GraphcError(f"{what}: the name {name!r} holds an unprintable character (a newline, a tab, an escape, "
                          "a lone surrogate); use printable characters")
    return name


def input(name: str, shape, dtype: str = "float32") -> Tensor:  # noqa: A001 - the DSL's word
    """A graph input fed at run time, e.g. `gc.input("x", ("N", 784))`; string dims are symbols."""
    _check_name(name, "gc.input")
    shape = as_shape(shape, f"gc.input({name!r})")
    return apply(INPUT, (), name=name, shape=shape, dtype=as_dtype(dtype, f"gc.input({name!r})"))


Init = str | float | int | np.ndarray | Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def param(name: str, shape, init: Init = "he_normal", dtype: str = "float32") -> Tensor:
    """A trainable parameter with a concrete shape. `init` is a scheme name ("he_normal", "he_uniform",
    "xavier_normal", "xavier_uniform", "zeros", "ones"), a number, `gc.nn.Uniform(limit)` /
    `gc.nn.Normal(std)`, an array, or `f(rng, shape) -> array`;
    values are drawn by `gc.nn.init_params(..., seed)`."""
    _check_name(name, "gc.param")
    where = f"gc.param({name!r})"
    shape = as_shape(shape, where)
    if not is_static(shape):
        raise ShapeError(f"{where}: parameters need concrete int dims, got {fmt_shape(shape)}")
    dtype = as_dtype(dtype, where)
    if dtype not in FLOAT_DTYPES:
        raise GraphcError(f"{where}: parameters must be float32 or float64, not {dtype}")
    from graphc.ops.init import check_init

    check_init(init, shape, where)
    # the initializer is part of the parameter's identity: declaring "W" again with another init (a tanh net
    # after a ReLU one, in the same notebook) makes another parameter, not a conflict
    return apply(PARAM, (), meta={"init": init}, name=name, shape=shape, dtype=dtype, init=_init_key(init))


def _init_key(init: Init):
    from graphc.ops.init import Normal, Uniform, ZeroRow

    if isinstance(init, (str, int, float, Uniform, Normal, ZeroRow)) and not isinstance(init, bool):
        return init
    if isinstance(init, np.ndarray):
        return ArrayValue(init)
    return f"fn:{getattr(init, '__module__', '')}.{getattr(init, '__qualname__', type(init).__name__)}@{id(init):x}"


class Constant(Op):
    name = "constant"
    kind = "source"

    def infer(self, inputs, attrs):
        arr = attrs["value"].array
        return tuple(arr.shape), as_dtype(arr.dtype)

    def reference(self, node, args, ctx):
        return node.attrs["value"].array.astype(ctx.dtype(node.dtype))

    def vjp(self, node, g):
        return ()

    def constant_array(self, node):
        return node.attrs["value"].array

    def lower(self, node, lx):
        return lx.constant(node.attrs["value"].array, node.dtype)


CONSTANT = register(Constant())


class Iota(Op):
    """0, 1, ..., n-1: n an int, or a dim expression over the shape of its one input (whose shape binds the
    symbols, as dim_value's: the positions along a symbolic axis, a loop's steps)."""

    name = "iota"
    kind = "source"
    hidden_attrs = ("dtype",)
    differentiable = False

    def infer(self, inputs, attrs):
        from graphc.ir.shapes import free_symbols

        n = attrs["n"]
        if len(inputs) > 1 or (isinstance(n, int) and inputs):
            raise ShapeError("iota takes one input (binding its symbolic length) or none")
        missing = set() if not inputs else n.free_symbols - free_symbols(inputs[0].shape)
        if missing:
            raise ShapeError(f"iota of length {n} uses {sorted(map(str, missing))}, which are not dims of "
                             f"{fmt_shape(inputs[0].shape)}")
        return (n,), attrs["dtype"]

    def reference(self, node, args, ctx):
        return np.arange(eval_dim(node.attrs["n"], ctx.dims), dtype=ctx.dtype(node.dtype))

    def lower(self, node, lx):
        return lx.index(lx.out[0], node.dtype)

    def vjp(self, node, g):
        return (None,) * len(node.inputs)


IOTA = register(Iota())


def iota(n, dtype: str = "int32", of: Tensor | None = None) -> Tensor:
    """[0, 1, ..., n-1]. `n` is an int, or a dim expression (`"T"`, `min(k, T)`) over the shape of tensor `of`,
    which binds its symbols."""
    d = as_dim(n, "gc.iota")
    if isinstance(d, int):
        return apply(IOTA, (), n=d, dtype=as_dtype(dtype))
    if of is None:
        raise ShapeError(f"gc.iota: the symbolic length {d} needs of=, a tensor whose shape binds "
                         f"{', '.join(sorted(map(str, d.free_symbols)))}")
    return apply(IOTA, (of,), n=d, dtype=as_dtype(dtype))


class DimValue(Op):
    """The run-time value of a dim expression over the shape of its input (e.g. the batch size N in a mean).

    It reads only its input's shape, but taking the input keeps whatever binds N inside the graph, so a
    gradient graph that needs N (1/N in d mean/dx) still has it when evaluated or compiled on its own."""

    name = "dim"
    kind = "source"
    differentiable = False
    hidden_attrs = ("dtype",)

    def infer(self, inputs, attrs):
        from graphc.ir.shapes import free_symbols

        if len(inputs) > 1:
            raise ShapeError("dim takes at most one input")
        # with no input (after dead-code elimination) the dims come from the compiled function's signature
        missing = set() if not inputs else attrs["expr"].free_symbols - free_symbols(inputs[0].shape)
        if missing:
            raise ShapeError(f"dim {attrs['expr']} uses {sorted(map(str, missing))}, which are not dims of "
                             f"{fmt_shape(inputs[0].shape)}")
        return (), attrs["dtype"]

    def reference(self, node, args, ctx):
        return np.asarray(eval_dim(node.attrs["expr"], ctx.dims), dtype=ctx.dtype(node.dtype))

    def lower(self, node, lx):
        return lx.dim(node.attrs["expr"], node.dtype)

    def vjp(self, node, g):
        return (None,) * len(node.inputs)


DIM = register(DimValue())


def dim_value(d, of, dtype: str = "float32") -> Tensor:
    """A scalar holding the dim expression `d` over the shape of tensor `of` (an int gives a constant)."""
    d = as_dim(d, "gc.dim_value")
    if isinstance(d, int):
        return apply(CONSTANT, (), value=ArrayValue(np.asarray(d, dtype=dtype)))
    return apply(DIM, (of,), expr=d, dtype=as_dtype(dtype))


__all__ = ["input", "param", "iota", "dim_value", "ArrayValue"]
