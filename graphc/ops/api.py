"""Python operators on tensors, wired to the ops (kept apart so each op's module stays about that op)."""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphcError
from graphc.ir.shapes import as_dtype
from graphc.ops import compose, linalg, movement, reduce
from graphc.ops import pointwise as ew
from graphc.ops.core import Tensor, as_tensor, located


def _r(fn):
    return lambda self, other: fn(other, self)


# numpy's ufuncs by their __name__ -> graphc's function of that name unless renamed here (np.abs is np.absolute,
# np.true_divide np.divide, np.mod np.remainder, np.pow np.power, np.acos np.arccos: aliases share the name)
_UFUNC_RENAMES = {"absolute": "abs", "fabs": "abs", "rint": "round"}


def _array_ufunc(self, ufunc, method, *inputs, **kwargs):
    """numpy's ufuncs on tensors build graph ops: np.exp(x), np.maximum(x, 0), np.float32(2) * x and
    `numpy_array + x` (numpy calls this for an array on the left: the same op as x's reflected operator) are gc.exp,
    gc.maximum, ... A ufunc graphc has no counterpart of, a ufunc method (np.add.reduce) or out=/where=/dtype= is
    a GraphcError naming what to use."""
    import graphc

    name = getattr(ufunc, "__name__", str(ufunc))
    if method != "__call__":
        raise GraphcError(f"np.{name}.{method} on a graphc tensor is not supported: use graphc's reductions and ops "
                          f"(gc.sum, gc.max, gc.cumsum, ...) on the tensor")
    given = sorted(k for k, v in kwargs.items() if v is not None and not (k == "where" and v is True)
                   and not (k == "casting" and v == "same_kind") and not (k == "order" and v == "K")
                   and not (k == "subok" and v is True))
    if given:
        raise GraphcError(f"np.{name}(..., {'=, '.join(given)}=) on a graphc tensor: numpy's "
                          f"{', '.join(given)} argument{'s are' if len(given) > 1 else ' is'} not supported: a graph's "
                          f"tensors are never written into; use gc.{_UFUNC_RENAMES.get(name, name)}(...) and cast "
                          "with gc.cast")
    if name == "positive":
        return inputs[0]
    if name in ("equal", "not_equal"):  # `x == y` between tensors is identity (nodes are dict keys): no operator
        raise GraphcError(f"`array {'==' if name == 'equal' else '!='} tensor` (np.{name}) with a graphc tensor: "
                          f"== and != do not build graph ops; use gc.{name}(a, b) for the elementwise comparison")
    fn = getattr(graphc, _UFUNC_RENAMES.get(name, name), None)
    if fn is None or not callable(fn) or ufunc.nin != len(inputs):
        raise GraphcError(f"np.{name} has no graphc counterpart: graphc tensors take the ufuncs that graphc has as "
                          "gc functions (np.exp is gc.exp, np.maximum gc.maximum, ...); write np." + name +
                          " from those, or evaluate the tensor first")
    return fn(*inputs)


def _np_pad(array, pad_width, mode="constant", constant_values=0):
    if mode != "constant":
        raise GraphcError(f"np.pad(..., mode={mode!r}) on a graphc tensor: graphc pads with a constant only "
                          "(gc.pad(x, pad_width, constant_values=...))")
    import graphc

    return graphc.pad(array, pad_width, constant_values=constant_values)


def _np_functions() -> dict:
    """numpy's non-ufunc functions that graphc has, each with numpy's signature (np.take's axis=None flattens, as
    numpy's; gc.take's default is axis 0). Built once, on the first call: graphc's functions are imported by then."""
    import graphc

    g = graphc
    return {
        np.concatenate: lambda arrays, axis=0: g.concatenate(arrays, axis),
        np.stack: lambda arrays, axis=0: g.stack(arrays, axis),
        np.where: lambda condition, x, y: g.where(condition, x, y),
        np.einsum: lambda subscripts, *operands: g.einsum(subscripts, *operands),
        np.expand_dims: lambda a, axis: g.expand_dims(a, axis),
        np.outer: lambda a, b: g.outer(a, b),
        np.tile: lambda A, reps: g.tile(A, reps),
        np.repeat: lambda a, repeats, axis=None: g.repeat(a, repeats, axis),
        np.split: lambda ary, indices_or_sections, axis=0: g.split(ary, indices_or_sections, axis),
        np.pad: _np_pad,
        np.take: lambda a, indices, axis=None: g.take(a, indices, axis),
        np.take_along_axis: lambda arr, indices, axis: g.take_along_axis(arr, indices, axis),
        np.tril: lambda m, k=0: g.tril(m, k),
        np.triu: lambda m, k=0: g.triu(m, k),
        np.flip: lambda m, axis=None: g.flip(m, axis),
        np.broadcast_to: lambda array, shape: g.broadcast_to(array, shape),
        np.zeros_like: lambda a: g.zeros_like(a),
        np.ones_like: lambda a: g.ones_like(a),
        np.full_like: lambda a, fill_value: g.full_like(a, fill_value),
        np.dot: lambda a, b: _np_dot(a, b),
        np.ravel: lambda a, order="C": _flatten(as_tensor(a), order),
        np.cumprod: lambda a, axis=None: g.cumprod(a, axis),
        np.nan_to_num: _np_nan_to_num,
        np.isclose: lambda a, b, rtol=1e-05, atol=1e-08, equal_nan=False: g.isclose(a, b, rtol, atol, equal_nan),
        np.nansum: lambda a, axis=None, keepdims=False: g.nansum(a, axis, keepdims),
        np.nanmean: lambda a, axis=None, keepdims=False: g.nanmean(a, axis, keepdims),
        np.hstack: lambda tup: g.hstack(tup),
        np.vstack: lambda tup: g.vstack(tup),
        np.diagonal: lambda a, offset=0, axis1=0, axis2=1: g.diagonal(a, offset, axis1, axis2),
        np.trace: lambda a, offset=0, axis1=0, axis2=1: g.trace(a, offset, axis1, axis2),
        np.moveaxis: lambda a, source, destination: g.moveaxis(a, source, destination),
    }


def _np_nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    import graphc

    return graphc.nan_to_num(x, nan, posinf, neginf)  # a graph never writes into its input: copy has no effect


_NP_FUNCTIONS: dict = {}


def _array_function(self, func, types, args, kwargs):
    """numpy's other functions on tensors (NEP 18): those graphc has (np.concatenate, np.stack, np.where,
    np.einsum, np.dot, np.pad, np.take, ...) build its op; the rest run numpy's own code as before, which calls the
    tensor's method of that name (np.sum(x) is x.sum()). One that would convert a tensor to an array (np.sort,
    np.linalg.norm) is a GraphcError naming it and what to use, not 'tensors cannot be iterated'."""
    import inspect

    import graphc

    if not all(issubclass(t, (Tensor, np.ndarray)) for t in types):
        return NotImplemented
    if not _NP_FUNCTIONS:
        _NP_FUNCTIONS.update(_np_functions())
    sub = (getattr(func, "__module__", None) or "numpy").split(".")
    name = f"np.{sub[1]}.{func.__name__}" if len(sub) > 1 and sub[1] in ("linalg", "fft") else f"np.{func.__name__}"
    fn = _NP_FUNCTIONS.get(func)
    if fn is not None:
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as err:
            raise GraphcError(f"{name} on a graphc tensor: {err} (graphc's gc.{func.__name__} takes no out=, dtype= "
                              "or other arguments a graph cannot honour; a one-argument np.where has a data-dependent "
                              "shape)") from None
        return fn(*args, **kwargs)
    use = f"use gc.{func.__name__}" if callable(getattr(graphc, func.__name__, None)) else \
        "graphc has no counterpart: write it from graphc's ops"
    why = (f"{name} on a graphc tensor: numpy would convert the tensor to an array, and a tensor holds no values "
           f"while the graph is built; {use}, or evaluate the tensor first")
    impl = getattr(func, "_implementation", None)
    module = getattr(impl, "__module__", "") or ""
    if impl is None or not (module.endswith("fromnumeric") or module == "numpy") or \
            not hasattr(Tensor, {"amax": "max", "amin": "min", "around": "round"}.get(func.__name__, func.__name__)):
        # numpy's own code would run on a 0-d object array holding the tensor: an error at best, and at worst a
        # tensor of the wrong value (np.linalg.norm(x) squared x elementwise and took the square root: |x|)
        raise GraphcError(why)
    try:  # numpy's fromnumeric functions call the tensor's method of their name: np.sum(x) is x.sum()
        out = impl(*args, **kwargs)
    except GraphcError as err:
        if not str(err).startswith("tensors cannot be iterated"):
            raise
        raise GraphcError(f"{why} ({err})") from None
    except Exception as err:  # numpy's own code on a 0-d object array holding the tensor (np.sort's AxisError)
        raise GraphcError(f"{why} (numpy: {type(err).__name__}: {err})") from None
    if isinstance(out, np.ndarray) and out.dtype == object:  # the tensor wrapped in an array: never a result
        raise GraphcError(why)
    return out


Tensor.__array_ufunc__ = _array_ufunc
Tensor.__array_function__ = _array_function
Tensor.__add__ = ew.add
Tensor.__radd__ = _r(ew.add)
Tensor.__sub__ = ew.subtract
Tensor.__rsub__ = _r(ew.subtract)
Tensor.__mul__ = ew.multiply
Tensor.__rmul__ = _r(ew.multiply)
Tensor.__truediv__ = ew.divide
Tensor.__rtruediv__ = _r(ew.divide)
Tensor.__floordiv__ = ew.floor_divide_
Tensor.__rfloordiv__ = _r(ew.floor_divide_)
Tensor.__mod__ = ew.remainder_
Tensor.__rmod__ = _r(ew.remainder_)
Tensor.__pow__ = ew.power
Tensor.__rpow__ = _r(ew.power)
Tensor.__matmul__ = linalg.matmul
Tensor.__rmatmul__ = _r(linalg.matmul)
Tensor.__neg__ = ew.negative
Tensor.__pos__ = lambda self: self
Tensor.__abs__ = ew.abs_
Tensor.__lt__ = ew.less
Tensor.__le__ = ew.less_equal
Tensor.__gt__ = ew.greater
Tensor.__ge__ = ew.greater_equal
Tensor.__invert__ = ew.logical_not
Tensor.__and__ = ew.logical_and
Tensor.__or__ = ew.logical_or
Tensor.T = property(lambda self: movement.transpose(self))


def _size(self) -> int:
    """numpy's ndarray.size: the number of elements, an int where every dim is static."""
    if not all(isinstance(d, int) for d in self.shape):
        raise GraphcError(f"x.size of a tensor with symbolic dims ({self.type_str}) has no value while the graph is "
                          "built; gc.dim_value(math.prod(x.shape), x) is it as a scalar tensor in the graph")
    return int(np.prod(self.shape, dtype=np.int64))


Tensor.size = property(_size)
Tensor.__getitem__ = movement.getitem
Tensor.__round__ = lambda self, ndigits=None: ew.round_(self, ndigits or 0)

# numpy's ndarray methods with ndarray's signatures, each the gc function of the same name: numpy's functions call
# them (np.sum(x) is x.sum(axis=None, out=None), np.std(x) is x.std(axis=None, dtype=None, out=None, ddof=0)), and
# a positional x.sum(0, np.float64) is numpy's (axis, dtype). A dtype casts x first; the arguments a graph has no
# use for (out=, where=, initial=, ...) are refused by name.
_UNSET = object()  # an argument the caller did not give


def _numpy_args(x: Tensor, method: str, dtype=None, out=None, **given) -> Tensor:
    """x cast to `dtype` (None: x itself), once `out` and the arguments in `given` are checked to be unset. The
    errors are GraphcErrors but not TypeErrors: numpy's dispatch takes a TypeError from a method for a signature
    mismatch and retries on np.asarray(x), which would hide the message."""
    if out is not None:
        raise located(GraphcError(f"out= is not supported: a graph's tensors are never written into; use the tensor "
                                  f"{method} returns (y = x.{method}(...))"), (x,), method)
    for name, value in given.items():
        if value is not _UNSET and not (name == "where" and value is True):
            raise located(GraphcError(f"numpy's {name}= argument is not supported (got {value!r}); leave it out"),
                          (x,), method)
    if dtype is None:
        return x
    if isinstance(dtype, (bool, np.bool_)):
        raise located(GraphcError(f"dtype={dtype!r} is not a dtype: the second positional argument of "
                                  f"x.{method}(axis, dtype, ...) is numpy's dtype; pass keepdims={dtype!r} by name"),
                      (x,), method)
    try:
        return ew.cast(x, as_dtype(dtype, "dtype"))
    except GraphcError as err:
        raise located(GraphcError(str(err)), (x,), method) from None


def _in_dtype(result: Tensor, dtype) -> Tensor:
    """A mean, var or std (computed in float) in `dtype` where one was asked for, as numpy's."""
    return result if dtype is None else ew.cast(result, as_dtype(dtype))


def _sum(self, axis=None, dtype=None, out=None, keepdims=False, initial=_UNSET, where=True):
    return reduce.sum(_numpy_args(self, "sum", dtype, out, initial=initial, where=where), axis, keepdims)


def _prod(self, axis=None, dtype=None, out=None, keepdims=False, initial=_UNSET, where=True):
    return reduce.prod(_numpy_args(self, "prod", dtype, out, initial=initial, where=where), axis, keepdims)


def _max(self, axis=None, out=None, keepdims=False, initial=_UNSET, where=True):
    return reduce.max(_numpy_args(self, "max", None, out, initial=initial, where=where), axis, keepdims)


def _min(self, axis=None, out=None, keepdims=False, initial=_UNSET, where=True):
    return reduce.min(_numpy_args(self, "min", None, out, initial=initial, where=where), axis, keepdims)


def _mean(self, axis=None, dtype=None, out=None, keepdims=False, *, where=True):
    return _in_dtype(compose.mean(_numpy_args(self, "mean", dtype, out, where=where), axis, keepdims), dtype)


def _var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=True, mean=_UNSET):
    x = _numpy_args(self, "var", dtype, out, where=where, mean=mean)
    return _in_dtype(compose.var(x, axis, keepdims, ddof), dtype)


def _std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=True, mean=_UNSET):
    x = _numpy_args(self, "std", dtype, out, where=where, mean=mean)
    return _in_dtype(compose.std(x, axis, keepdims, ddof), dtype)


def _any(self, axis=None, out=None, keepdims=False, *, where=True):
    return compose.any(_numpy_args(self, "any", None, out, where=where), axis, keepdims)


def _all(self, axis=None, out=None, keepdims=False, *, where=True):
    return compose.all(_numpy_args(self, "all", None, out, where=where), axis, keepdims)


def _argmax(self, axis=None, out=None, *, keepdims=False):
    return compose.argmax(_numpy_args(self, "argmax", None, out), axis, keepdims)


def _argmin(self, axis=None, out=None, *, keepdims=False):
    return compose.argmin(_numpy_args(self, "argmin", None, out), axis, keepdims)


def _cumsum(self, axis=None, dtype=None, out=None):
    return reduce.cumsum(_numpy_args(self, "cumsum", dtype, out), axis)


def _clip(self, min=None, max=None, out=None, **kwargs):  # noqa: A002 - numpy's names
    return compose.clip(_numpy_args(self, "clip", None, out, **kwargs), min, max)


def _round(self, decimals=0, out=None):
    return ew.round_(_numpy_args(self, "round", None, out), decimals)


def _order(x: Tensor, method: str, order) -> None:
    if order not in ("C", "A", "K"):
        raise located(GraphcError(f"order={order!r} is not supported: graphc's tensors are row-major (order='C')"),
                      (x,), method)


def _reshape(self, *shape, order="C", copy=None):  # copy: a graph has no views, every result is its own
    _order(self, "reshape", order)
    return movement.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)


def _flatten(self, order="C"):
    _order(self, "flatten", order)
    return movement.reshape(self, (-1,))


def _transpose(self, *axes):
    if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
        axes = axes[0]  # x.transpose((1, 0)), and np.transpose(x)'s x.transpose(None)
    return movement.transpose(self, axes or None)


def _dot(self, b, out=None):
    return _np_dot(_numpy_args(self, "dot", None, out), b)


def _np_dot(a, b):
    """numpy's dot: a product with a scalar; else a sum over a's last axis and b's second-to-last. That is matmul's
    product except where a has 2 axes or more and b 3 or more: dot pairs every row of a with every matrix of b
    ((2, 3, 4)·(2, 4, 5) is (2, 3, 2, 5)) where matmul broadcasts the batch ((2, 3, 5)): an einsum there."""
    if any((v.ndim if isinstance(v, Tensor) else np.ndim(v)) == 0 for v in (a, b)):
        return ew.multiply(a, b)
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim < 2 or b.ndim < 3:
        return linalg.matmul(a, b)
    letters = "abcdefghijklmnopqrstuvwxyABCDEFGHIJKLMNOPQRSTUVWXY"  # z: the summed axis
    if a.ndim + b.ndim - 1 > len(letters):
        raise located(GraphcError(f"dot of ranks {a.ndim} and {b.ndim}: more axes than einsum has letters"), (a, b),
                      "dot")
    la, lb = letters[:a.ndim - 1], letters[a.ndim - 1:a.ndim + b.ndim - 2]
    return linalg.einsum(f"{la}z,{lb[:-1]}z{lb[-1]}->{la}{lb}", a, b)


Tensor.sum, Tensor.prod, Tensor.max, Tensor.min, Tensor.mean = _sum, _prod, _max, _min, _mean
Tensor.var, Tensor.std, Tensor.any, Tensor.all = _var, _std, _any, _all
Tensor.argmax, Tensor.argmin, Tensor.cumsum, Tensor.clip, Tensor.round = _argmax, _argmin, _cumsum, _clip, _round
Tensor.reshape, Tensor.flatten, Tensor.transpose, Tensor.dot = _reshape, _flatten, _transpose, _dot
Tensor.ravel = _flatten  # ndarray's ravel: a graph has no views, so it is flatten
Tensor.astype = ew.cast
Tensor.squeeze = lambda self, axis=None: movement.squeeze(self, axis)
Tensor.swapaxes = lambda self, axis1, axis2: movement.swapaxes(self, axis1, axis2)
Tensor.cumprod = lambda self, axis=None: compose.cumprod(self, axis)
Tensor.diagonal = lambda self, offset=0, axis1=0, axis2=1: compose.diagonal(self, offset, axis1, axis2)
Tensor.trace = lambda self, offset=0, axis1=0, axis2=1: compose.trace(self, offset, axis1, axis2)
