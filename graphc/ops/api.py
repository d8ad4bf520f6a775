"""Python operators on tensors, wired to the ops (kept apart so each op's module stays about that op)."""

from __future__ import annotations

from graphc.ops import compose, linalg, movement, reduce
from graphc.ops import pointwise as ew
from graphc.ops.core import Tensor


def _r(fn):
    return lambda self, other: fn(other, self)


Tensor.__array_ufunc__ = None  # numpy arrays on the left defer to our reflected operators
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
Tensor.sum = lambda self, axis=None, keepdims=False: reduce.sum(self, axis, keepdims)
Tensor.mean = lambda self, axis=None, keepdims=False: compose.mean(self, axis, keepdims)
Tensor.max = lambda self, axis=None, keepdims=False: reduce.max(self, axis, keepdims)
Tensor.min = lambda self, axis=None, keepdims=False: reduce.min(self, axis, keepdims)
Tensor.__getitem__ = movement.getitem
Tensor.reshape = lambda self, *shape: movement.reshape(
    self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
Tensor.astype = ew.cast
# numpy's ndarray methods (each the gc function of the same name)
Tensor.std = lambda self, axis=None, keepdims=False, ddof=0: compose.std(self, axis, keepdims, ddof)
Tensor.var = lambda self, axis=None, keepdims=False, ddof=0: compose.var(self, axis, keepdims, ddof)
Tensor.prod = lambda self, axis=None, keepdims=False: reduce.prod(self, axis, keepdims)
Tensor.any = lambda self, axis=None, keepdims=False: compose.any(self, axis, keepdims)
Tensor.all = lambda self, axis=None, keepdims=False: compose.all(self, axis, keepdims)
Tensor.argmax = lambda self, axis=None, keepdims=False: compose.argmax(self, axis, keepdims)
Tensor.argmin = lambda self, axis=None, keepdims=False: compose.argmin(self, axis, keepdims)
Tensor.cumsum = lambda self, axis=None: reduce.cumsum(self, axis)
Tensor.clip = lambda self, lo, hi: compose.clip(self, lo, hi)
Tensor.flatten = lambda self: movement.reshape(self, (-1,))
Tensor.squeeze = lambda self, axis=None: movement.squeeze(self, axis)
Tensor.swapaxes = lambda self, axis1, axis2: movement.swapaxes(self, axis1, axis2)
Tensor.transpose = lambda self, *axes: movement.transpose(
    self, (axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes) or None)
Tensor.dot = linalg.matmul
Tensor.__round__ = lambda self, ndigits=None: ew.round_(self, ndigits or 0)
