"""Variable-length sequences in a padded batch: masks from lengths, and the last real step of each sequence.

A batch of sequences of different lengths is padded to one length T; `lengths` (N,) says how many steps of
each are real. The losses take `mask=` / `lengths=` so that padded steps do not count (graphc.nn.losses), and a
many-to-one model reads each sequence's last real output with `last_step` (what PyTorch's packed sequences give
as h_n, and Keras' masking gives as the last output). Time is axis 0 (time-major, as gc.scan and gc.nn.lstm)
unless `time_axis=1` says the batch comes first."""

from __future__ import annotations

import numpy as np

from graphc import ops
from graphc.errors import DTypeError, ShapeError
from graphc.ir.dims import Dim
from graphc.ir.shapes import INT_DTYPES, fmt_shape
from graphc.ops.core import describe


def _lengths(lengths, what: str, steps=None, low: int = 0):
    """lengths as a tensor of step counts; with `steps`, each checked to lie in [low, steps] where evaluated or
    compiled (PyTorch's pack_padded_sequence refuses the same)."""
    lengths = ops.as_tensor(lengths)
    if lengths.dtype not in INT_DTYPES:
        raise DTypeError(f"{what}: lengths must be int32 or int64 step counts, got {describe(lengths)} (made at "
                         f"{lengths.source.where()})")
    if lengths.ndim != 1:
        raise ShapeError(f"{what}: lengths must be one count per sequence, shape (N,), got {describe(lengths)} "
                         f"(made at {lengths.source.where()})")
    if steps is not None:
        from graphc.ops.gather import checked_labels

        lengths = checked_labels(lengths, steps + 1 - low, what, low=low, steps=True)
    return lengths


def _positions(lengths, steps, time_axis: int):
    """The step index t of every (t, n) (time_axis 0) or (n, t) (time_axis 1) cell, of lengths' int dtype; steps
    may be symbolic (a cumulative sum of ones, so no int size is needed)."""
    n = lengths.shape[0]
    shape = (steps, n) if time_axis == 0 else (n, steps)
    ones = ops.broadcast_to(ops.constant(1, lengths.dtype), shape)
    return ops.cumsum(ones, axis=time_axis) - 1


def kept(x, keep):
    """x where `keep` (bool, x's shape or its leading dims; None: everywhere) holds, else 0: a padded element's
    value (NaN, inf, garbage) is not read, by the result nor by its gradient (a zero cotangent times the
    derivative at NaN would be NaN)."""
    if keep is None:
        return x
    while keep.ndim < x.ndim:
        keep = ops.expand_dims(keep, -1)
    return ops.where(ops.broadcast_to(keep, x.shape), x, ops.zeros_like(x))


def sequence_mask(lengths, steps, *, time_axis: int = 0):
    """A bool mask of the real steps: (steps, N) with mask[t, n] = t < lengths[n] (time_axis=0, time-major), or
    (N, steps) with time_axis=1 (tf.sequence_mask's layout). `steps` is an int or a dim (e.g. xs.shape[0])."""
    lengths = _lengths(lengths, "sequence_mask")
    if time_axis not in (0, 1):
        raise ShapeError(f"sequence_mask: time_axis must be 0 (time-major) or 1 (batch-major), got {time_axis!r}")
    if isinstance(steps, bool) or not (isinstance(steps, (int, np.integer)) and steps >= 0 or isinstance(steps, Dim)
                                       or isinstance(steps, str)):
        raise ShapeError(f"sequence_mask: steps must be an int >= 0 or a dim (e.g. xs.shape[0]), got {steps!r}")
    pos = _positions(lengths, steps, time_axis)
    return ops.less(pos, ops.expand_dims(lengths, time_axis))


def last_step(ys, lengths):
    """ys[lengths[n] - 1, n] for every sequence n: the output at each sequence's last real step, from time-major
    ys (T, N, ...) -> (N, ...). A gather (its gradient a scatter-add into the chosen steps only); a length outside
    [1, T] is an error when evaluated and a checked error in compiled code, as an out-of-range index."""
    ys = ops.as_tensor(ys)
    lengths = _lengths(lengths, "last_step")
    if ys.ndim < 2:
        raise ShapeError(f"last_step: ys must be time-major (T, N, ...), got {describe(ys)}")
    T, N, *rest = ys.shape
    from graphc.ir.shapes import dims_equal

    if not dims_equal(N, lengths.shape[0]):
        raise ShapeError(f"last_step: ys {fmt_shape(ys.shape)} has batch {N} but lengths has "
                         f"{fmt_shape(lengths.shape)}; they must agree (ys is time-major: (T, N, ...))")
    lengths = _lengths(lengths, "last_step", T, low=1)  # each in [1, T]
    flat = ops.reshape(ys, (T * N, *rest))
    seq = ops.cumsum(ops.full_like(lengths, 1), axis=0) - 1  # 0, 1, ..., N-1
    idx = (lengths - 1) * ops.dim_value(N, ys, lengths.dtype) + seq
    return ops.take(flat, idx, 0)


__all__ = ["sequence_mask", "last_step"]
