"""Contraction: matmul with transpose flags, so backprop's A·B, Aᵀ·B and A·Bᵀ need no transposed copies, and
numpy-style broadcast batch dims."""

from __future__ import annotations

import numpy as np

from graphc.errors import DTypeError, ShapeError
from graphc.ir.shapes import FLOAT_DTYPES, broadcast_shapes, dims_equal, fmt_shape
from graphc.ops.core import Op, Tensor, apply, as_tensor, register


class MatMul(Op):
    """C = op(A) @ op(B), where op transposes the last two axes when `ta` / `tb` is set. Leading (batch) axes
    broadcast as numpy's matmul does; 2-D operands are the plain matrix product the GEMM serves."""

    name = "matmul"
    kind = "contract"

    def infer(self, inputs, attrs):
        a, b = inputs
        if a.ndim < 2 or b.ndim < 2:
            raise ShapeError(f"needs operands of rank >= 2, got {fmt_shape(a.shape)} and {fmt_shape(b.shape)}")
        if a.dtype != b.dtype or a.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"needs two float32 or two float64 operands, got {a.dtype} and {b.dtype}")
        m, ka = (a.shape[-1], a.shape[-2]) if attrs["ta"] else a.shape[-2:]
        kb, n = (b.shape[-1], b.shape[-2]) if attrs["tb"] else b.shape[-2:]
        if not dims_equal(ka, kb):
            ta = "ᵀ" if attrs["ta"] else ""
            tb = "ᵀ" if attrs["tb"] else ""
            raise ShapeError(f"inner dims differ: A{ta} is {m}x{ka}, B{tb} is {kb}x{n} "
                             f"(A {fmt_shape(a.shape)}, B {fmt_shape(b.shape)})")
        batch = broadcast_shapes([a.shape[:-2], b.shape[:-2]], "batch dims")
        return (*batch, m, n), a.dtype

    def reference(self, node, args, ctx):
        a, b = args
        a = np.swapaxes(a, -1, -2) if node.attrs["ta"] else a
        b = np.swapaxes(b, -1, -2) if node.attrs["tb"] else b
        return np.matmul(a, b)

    def vjp(self, node, g):
        from graphc.ops.reduce import sum_to_shape

        a, b = node.inputs
        ta, tb = node.attrs["ta"], node.attrs["tb"]
        # C = op(A) op(B):  dop(A) = g op(B)ᵀ,  dop(B) = op(A)ᵀ g; a transposed operand takes the transpose
        da = matmul(b, g, ta=tb, tb=True) if ta else matmul(g, b, ta=False, tb=not tb)
        db = matmul(g, a, ta=True, tb=ta) if tb else matmul(a, g, ta=not ta, tb=False)
        # batch dims that broadcast are summed back to the operand's shape
        return sum_to_shape(da, a.shape), sum_to_shape(db, b.shape)

    def needs_memory(self, node):
        return (0, 1)

    def contract_rule(self, node):
        from graphc.ir.lowering import ContractRule

        return ContractRule(node.attrs["ta"], node.attrs["tb"])


MATMUL = register(MatMul())


def matmul(a, b, ta: bool = False, tb: bool = False) -> Tensor:
    """numpy's matmul (`@`): leading dims are batch dims and broadcast; a 1-D operand is treated as a row
    (left) or a column (right) and squeezed back. `ta` / `tb` transpose the last two axes of an operand."""
    from graphc.ops.movement import reshape

    a, b = as_tensor(a), as_tensor(b, a)
    if isinstance(a, Tensor) and a.dtype != b.dtype:
        raise DTypeError(f"matmul: operands have dtypes {a.dtype} and {b.dtype}; cast one of them")
    squeeze = []
    if a.ndim == 1 and not ta:
        a = reshape(a, (1, a.shape[0]))
        squeeze.append(-2)
    if b.ndim == 1 and not tb:
        b = reshape(b, (b.shape[0], 1))
        squeeze.append(-1)
    out = apply(MATMUL, (a, b), ta=bool(ta), tb=bool(tb))
    if squeeze:
        drop = {out.ndim + i for i in squeeze}
        out = reshape(out, tuple(d for i, d in enumerate(out.shape) if i not in drop))
    return out
