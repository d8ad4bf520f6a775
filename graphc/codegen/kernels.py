"""The loop-level kernel IR between the graph and LLVM: buffers, scalar expressions over loop indices, and the
three kernel forms (elementwise loops, reductions, matrix products with epilogues).

Fusion decides what goes into a kernel (schedule.py); emission decides how a kernel becomes machine code
(emit.py). This IR is what they agree on, and it prints, so either side can be read on its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from graphc.ir.node import Node
from graphc.ir.shapes import Dim, Shape, fmt_dim, fmt_shape

# -------------------------------------------------------------------------------------------------- buffers


@dataclass(frozen=True, eq=False)
class Buffer:
    """A row-major array in memory. `kind` says who owns it: the caller ("input", "param", "output"), the
    compiled function ("const": folded data it carries; "temp": a slot in the arena)."""

    index: int
    label: str
    shape: Shape
    dtype: str
    kind: str
    node: Node | None = None

    def __repr__(self) -> str:
        return f"b{self.index}:{self.label}"

    def strides(self) -> tuple[Dim, ...]:
        out: list[Dim] = []
        acc: Dim = 1
        for d in reversed(self.shape):
            out.append(acc)
            acc = acc * d
        return tuple(reversed(out))


# -------------------------------------------------------------------------------------------------- expressions
# An Expr is a scalar computed at every point of a kernel's loop domain. Loads address buffers by an affine map
# of the loop indices: offset + sum(stride[j] * i[j]); a stride of 0 is a broadcast.


class Expr:
    dtype: str

    def axes(self) -> frozenset[int]:
        """The loop axes this value depends on (for hoisting out of inner loops)."""
        raise NotImplementedError

    def children(self) -> tuple[Expr, ...]:
        return ()


@dataclass(frozen=True)
class Load(Expr):
    buf: Buffer
    strides: tuple[Dim, ...]  # one per loop axis of the kernel's domain
    dtype: str

    def axes(self) -> frozenset[int]:
        return frozenset(j for j, s in enumerate(self.strides) if not (isinstance(s, int) and s == 0))

    def __repr__(self) -> str:
        return f"{self.buf!r}[{','.join(fmt_dim(s) for s in self.strides)}]"


@dataclass(frozen=True)
class Const(Expr):
    value: Any
    dtype: str

    def axes(self) -> frozenset[int]:
        return frozenset()

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class DimValue(Expr):
    """A run-time dim expression (e.g. N) as a value of `dtype`."""

    expr: sympy.Expr
    dtype: str

    def axes(self) -> frozenset[int]:
        return frozenset()

    def __repr__(self) -> str:
        return f"dim({self.expr})"


@dataclass(frozen=True)
class Index(Expr):
    """The loop index along `axis`, as an integer of `dtype` (iota)."""

    axis: int
    dtype: str

    def axes(self) -> frozenset[int]:
        return frozenset({self.axis})

    def __repr__(self) -> str:
        return f"i{self.axis}"


@dataclass(frozen=True)
class Apply(Expr):
    """An elementwise op (its sympy formula is emitted) applied to argument expressions."""

    op: Any
    attrs: tuple[tuple[str, Any], ...]
    args: tuple[Expr, ...]
    dtype: str

    def axes(self) -> frozenset[int]:
        out: frozenset[int] = frozenset()
        for a in self.args:
            out |= a.axes()
        return out

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def __repr__(self) -> str:
        attrs = "".join(f"[{k}={v}]" for k, v in self.attrs if k != "dtype")
        return f"{self.op.name}{attrs}({', '.join(map(repr, self.args))})"


@dataclass(frozen=True)
class Dropout(Expr):
    """x * mask / keep where mask hashes (key, salt, flat index); flat = sum(flat_strides[j] * i[j]). The keep
    probability is `keep_prob`, or the value of `keep` (a float32 scalar expression) when that is given."""

    x: Expr
    key: Expr
    salt: int
    keep_prob: float | None
    flat_strides: tuple[Dim, ...]
    dtype: str
    keep: Expr | None = None

    def axes(self) -> frozenset[int]:
        own = frozenset(j for j, s in enumerate(self.flat_strides) if not (isinstance(s, int) and s == 0))
        return own | self.x.axes() | self.key.axes() | (self.keep.axes() if self.keep is not None else frozenset())

    def children(self) -> tuple[Expr, ...]:
        return (self.x, self.key) if self.keep is None else (self.x, self.key, self.keep)

    def __repr__(self) -> str:
        return f"dropout[keep={self.keep_prob} salt={self.salt}]({self.x!r})"


@dataclass(frozen=True)
class Acc(Expr):
    """The accumulated value of a reduction or matrix product, in its epilogue."""

    dtype: str

    def axes(self) -> frozenset[int]:
        return frozenset({-1})  # never hoisted

    def __repr__(self) -> str:
        return "acc"


# -------------------------------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class Store:
    """buf[row-major position of the loop point] = value (the buffer has the kernel's output shape)."""

    buf: Buffer
    value: Expr


@dataclass(eq=False)
class Kernel:
    name: str
    reads: list[Buffer] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)  # the graph nodes this kernel computes (fused into it)

    @property
    def writes(self) -> list[Buffer]:
        raise NotImplementedError


@dataclass(eq=False)
class LoopKernel(Kernel):
    """for i in domain: buf_k[i] = value_k(i) for each store (all stores share the domain)."""

    domain: Shape = ()
    stores: list[Store] = field(default_factory=list)

    @property
    def writes(self) -> list[Buffer]:
        return [s.buf for s in self.stores]

    def __str__(self) -> str:
        lines = [f"{self.name}: loop over {fmt_shape(self.domain)}"]
        lines += [f"  {s.buf!r} = {s.value!r}" for s in self.stores]
        return "\n".join(lines)


@dataclass(eq=False)
class ReduceKernel(Kernel):
    """acc[kept] = reduce_{axes} body(i); then each epilogue store (over the kept positions, reading `Acc`).

    The output positions are the domain with the reduced axes dropped (row-major)."""

    domain: Shape = ()
    axes: tuple[int, ...] = ()
    op: str = "sum"  # "sum" or "max"
    body: Expr | None = None
    stores: list[Store] = field(default_factory=list)  # expressions over Acc and loads in the kept space

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.domain)) if a not in self.axes)

    @property
    def writes(self) -> list[Buffer]:
        return [s.buf for s in self.stores]

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.op} over axes {self.axes} of {fmt_shape(self.domain)} of {self.body!r}"]
        lines += [f"  {s.buf!r} = {s.value!r}" for s in self.stores]
        return "\n".join(lines)


@dataclass(eq=False)
class GemmKernel(Kernel):
    """acc = op(A) @ op(B) (M x K times K x N); each epilogue store is an expression of Acc and loads over the
    (M, N) domain. When the product itself is needed, one store is `Acc` alone."""

    a: Buffer | None = None
    b: Buffer | None = None
    ta: bool = False
    tb: bool = False
    m: Dim = 1
    n: Dim = 1
    k: Dim = 1
    lda: Dim = 1  # row strides of the stored operands (a reshape view may differ from its storage's shape)
    ldb: Dim = 1
    stores: list[Store] = field(default_factory=list)

    @property
    def writes(self) -> list[Buffer]:
        return [s.buf for s in self.stores]

    def __str__(self) -> str:
        ta = "ᵀ" if self.ta else ""
        tb = "ᵀ" if self.tb else ""
        lines = [f"{self.name}: gemm {fmt_dim(self.m)}x{fmt_dim(self.n)}x{fmt_dim(self.k)}: "
                 f"acc = {self.a!r}{ta} @ {self.b!r}{tb}"]
        lines += [f"  {s.buf!r} = {s.value!r}" for s in self.stores]
        return "\n".join(lines)


def walk(expr: Expr):
    """Every sub-expression once, children before parents (iteratively)."""
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        e, done = stack.pop()
        if done:
            yield e
            continue
        if id(e) in seen:
            continue
        seen.add(id(e))
        stack.append((e, True))
        for c in reversed(e.children()):
            stack.append((c, False))
