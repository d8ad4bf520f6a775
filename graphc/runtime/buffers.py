"""Aligned host buffers (numpy only): what compiled code reads and updates in place, allocated so that vector
loads and stores never straddle cache lines. Below the JIT, so layers and optimizers can allocate without
loading LLVM."""

from __future__ import annotations

import numpy as np

ALIGN = 64


def aligned_bytes(nbytes: int, align: int = ALIGN) -> np.ndarray:
    """A zeroed byte buffer whose data pointer is `align`-aligned (what the kernels promise for the arena)."""
    raw = np.zeros(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes]


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialized array whose data is 64-byte aligned (numpy promises 16): vectors read or written in
    place by compiled code then never straddle cache lines."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return aligned_bytes(n).view(dt).reshape(shape)
