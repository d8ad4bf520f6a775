"""Contraction: matmul with transpose flags, so backprop's A·B, Aᵀ·B and A·Bᵀ need no transposed copies, and
numpy-style broadcast batch dims."""

from __future__ import annotations

import functools
import operator

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
        if b.ndim == 2 and a.ndim > 2 and not ta:
            # a matrix shared by a batch ((B, T, D) @ (D, F): a layer over a sequence): its gradient is one product
            # over all B·T rows, not B products and a sum of B copies of it (1.44x slower)
            from graphc.ops.movement import reshape

            rows = functools.reduce(operator.mul, a.shape[:-1])
            a2, g2 = reshape(a, (rows, a.shape[-1])), reshape(g, (rows, g.shape[-1]))
            return sum_to_shape(da, a.shape), (matmul(g2, a2, ta=True) if tb else matmul(a2, g2, ta=True))
        db = matmul(g, a, ta=True, tb=ta) if tb else matmul(a, g, ta=not ta, tb=False)
        # batch dims that broadcast are summed back to the operand's shape
        return sum_to_shape(da, a.shape), sum_to_shape(db, b.shape)

    def needs_memory(self, node):
        return (0, 1)

    def contract_rule(self, node):
        from graphc.ir.lowering import ContractRule

        return ContractRule(node.attrs["ta"], node.attrs["tb"])


MATMUL = register(MatMul())


def _empty_product(a: Tensor, b: Tensor, ta: bool, tb: bool) -> Tensor:
    from graphc.ops.movement import transpose
    from graphc.ops.reduce import sum as reduce_sum

    def swap(x: Tensor) -> Tensor:
        return transpose(x, tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2))

    rows = reduce_sum(a, -2 if ta else -1, keepdims=True)  # (..., M, 1) of zeros
    cols = reduce_sum(b, -1 if tb else -2, keepdims=True)  # (..., 1, N)
    return (swap(rows) if ta else rows) + (swap(cols) if tb else cols)


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
    k = a.shape[-2 if ta else -1]
    if isinstance(k, int) and k == 0:  # an empty contraction: zeros of the product's shape (numpy's), built
        out = _empty_product(a, b, ta, tb)  # from the operands so that a symbolic M or N is read from them
    if squeeze:
        drop = {out.ndim + i for i in squeeze}
        out = reshape(out, tuple(d for i, d in enumerate(out.shape) if i not in drop))
    return out


def _diagonals(t: Tensor, term: str) -> tuple[Tensor, str]:
    """t with each letter repeated in its term reduced to one axis, the diagonal of those axes (their sizes are
    equal: einsum checked): the pair moved last, flattened to n·n, and every (n+1)-th entry taken."""
    from graphc.ops.gather import take
    from graphc.ops.movement import reshape, transpose
    from graphc.ops.sources import dim_value, iota

    while len(set(term)) != len(term):
        c = next(ch for ch in term if term.count(ch) > 1)
        a = term.index(c)
        b = term.index(c, a + 1)
        rest = [i for i in range(t.ndim) if i not in (a, b)]
        n = t.shape[a]
        t = transpose(t, rest + [a, b])
        t = reshape(t, (*t.shape[:-2], n * n))
        step = n + 1 if isinstance(n, int) else dim_value(n + 1, t, "int64")
        t = take(t, iota(n, "int64", of=t) * step, axis=t.ndim - 1)
        term = "".join(term[i] for i in rest) + c
    return t, term


def _one(d) -> bool:
    return isinstance(d, int) and d == 1


def einsum(subscripts: str, *operands) -> Tensor:
    """numpy.einsum for one or two operands, e.g. `gc.einsum("bhqd,bhkd->bhqk", q, k)`: letters name axes; with
    `->` the output's order, without it numpy's implicit output (the letters used once, in alphabetical order).
    It is a composition — sums over axes used by one operand only, transposes and reshapes, and one batched
    matmul for the contracted letters (a broadcast product where none are) — so its gradient and native code are
    those ops'. A letter twice in one operand takes the diagonal of those axes first ('ii->' is the trace,
    'ii->i' the diagonal, as numpy), a gather whose gradient is a scatter into the diagonal. Not supported (an
    error): '...', three or more operands (nest two-operand calls). A letter of size 1 in one operand broadcasts
    to its size in the other, as numpy's ('bij,bjk' of (2, 3, 4) and (1, 4, 5))."""
    from graphc.errors import GraphcError
    from graphc.ops.core import located
    from graphc.ops.movement import broadcast_to, reshape, transpose
    from graphc.ops.reduce import sum as reduce_sum

    if not isinstance(subscripts, str):
        raise GraphcError(f"einsum: subscripts must be a string such as 'ij,jk->ik', got {subscripts!r}")
    spec = subscripts.replace(" ", "")
    ts = [as_tensor(x, next((t for t in operands if isinstance(t, Tensor)), None)) for x in operands]

    def fail(msg: str):
        return located(ShapeError(f"{spec!r}: {msg}"), tuple(ts), "einsum")

    if "." in spec:
        raise fail("'...' is not supported: name every axis with a letter")
    lhs, arrow, out = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ts) or not 1 <= len(ts) <= 2:
        raise fail(f"{len(terms)} operand term(s) for {len(ts)} operand(s); einsum takes one or two operands "
                   "(nest two-operand calls for more)")
    sizes: dict[str, object] = {}
    for k, (term, t) in enumerate(zip(terms, ts, strict=True)):
        if not all(c.isalpha() for c in term):
            raise fail(f"operand {k}'s term {term!r} must be letters only")
        if len(term) != t.ndim:
            raise fail(f"operand {k}'s term {term!r} names {len(term)} axes, but it is {fmt_shape(t.shape)}")
        own: dict[str, object] = {}
        for c, d in zip(term, t.shape, strict=True):
            if c in own and not dims_equal(own[c], d):  # a diagonal's two axes must agree
                raise fail(f"letter {c!r} has sizes {own[c]} and {d}")
            own.setdefault(c, d)
        for c, d in own.items():  # between operands a size 1 broadcasts, as numpy's and jax's einsum
            if c in sizes and not dims_equal(sizes[c], d) and not _one(d):
                if not _one(sizes[c]):
                    raise fail(f"letter {c!r} has sizes {sizes[c]} and {d}")
                sizes[c] = d
            sizes.setdefault(c, d)
    for k, term in enumerate(terms):
        want = tuple(sizes[c] for c in term)
        if not all(dims_equal(d, w) for d, w in zip(ts[k].shape, want, strict=True)):
            ts[k] = broadcast_to(ts[k], want)
    if not arrow:
        out = "".join(sorted(c for c in sizes if sum(term.count(c) for term in terms) == 1))
    for k, term in enumerate(terms):
        ts[k], terms[k] = _diagonals(ts[k], term)
    if not all(c.isalpha() for c in out) or len(set(out)) != len(out) or not set(out) <= set(sizes):
        raise fail(f"the output {out!r} must name distinct letters of the operands")
    if len(ts) == 2 and ts[0].dtype != ts[1].dtype:
        raise DTypeError(f"einsum {spec!r}: operands have dtypes {ts[0].dtype} and {ts[1].dtype}; cast one of them")

    def drop_unused(t, term: str, keep: set) -> tuple[Tensor, str]:
        gone = tuple(i for i, c in enumerate(term) if c not in keep)
        if gone:
            t = reduce_sum(t, gone)
            term = "".join(c for c in term if c in set(term) & keep)
        return t, term

    def arrange(t, term: str, order: str) -> Tensor:
        return t if term == order else transpose(t, [term.index(c) for c in order])

    def product(letters: str):
        n = 1
        for c in letters:
            n = n * sizes[c]
        return n

    if len(ts) == 1:
        t, term = drop_unused(ts[0], terms[0], set(out))
        return arrange(t, term, out)
    (a, ta), (b, tb) = (drop_unused(t, term, set(out) | set(other)) for t, term, other in
                        ((ts[0], terms[0], terms[1]), (ts[1], terms[1], terms[0])))
    batch = "".join(c for c in ta if c in tb and c in out)
    contracted = "".join(c for c in ta if c in tb and c not in out)
    a_only = "".join(c for c in ta if c not in tb)
    b_only = "".join(c for c in tb if c not in ta)
    if not contracted:  # an elementwise or outer product: broadcast both to the output's axes
        def spread(t, term: str):
            t = arrange(t, term, "".join(c for c in out if c in term))
            return reshape(t, tuple(sizes[c] if c in term else 1 for c in out))
        return spread(a, ta) * spread(b, tb)
    a = reshape(arrange(a, ta, batch + a_only + contracted),
                (*(sizes[c] for c in batch), product(a_only), product(contracted)))
    b = reshape(arrange(b, tb, batch + contracted + b_only),
                (*(sizes[c] for c in batch), product(contracted), product(b_only)))
    c = reshape(matmul(a, b), tuple(sizes[ch] for ch in batch + a_only + b_only))
    return arrange(c, batch + a_only + b_only, out)
