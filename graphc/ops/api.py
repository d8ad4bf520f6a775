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
