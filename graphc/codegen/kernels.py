"""The loop-level kernel IR between the graph and LLVM: buffers, scalar expressions over loop indices, and the
kernel forms (elementwise loops, reductions and scans, matrix products with epilogues, scatter-adds).

Fusion decides what goes into a kernel (schedule.py); emission decides how a kernel becomes machine code
(emit.py). This IR is what they agree on, and it prints, so either side can be read on its own.

Addressing. A kernel runs over a loop domain with indices i0, i1, ... (`LOOP`). A load reads
`buf[offset + sum_j strides[j] * i_j + sum_t stride_t * e_t]`: an affine part (`strides`, one per loop axis, 0 for
a broadcast) and non-affine terms `e_t`, integer expressions (graphc.ir.index) of the loop indices (floor division for
dilated reads) and of gathered values (`Gather`: an index read from another expression, bounds-checked).
A `checked` load never touches memory outside its buffer (lanes outside read 0): loads under a `Guard` (padding,
concatenation) are checked, so a guard's value may be computed anywhere without a wild read."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from graphc.ir import index as ix
from graphc.ir.dims import Dim as _Dim
from graphc.ir.formula import Term
from graphc.ir.node import Node
from graphc.ir.shapes import Dim, Shape, dims_equal, fmt_shape, size

LOOP = tuple(ix.var(f"_i{k}") for k in range(32))  # loop indices, outermost first
LOOP_AXIS = {s: k for k, s in enumerate(LOOP)}


def loop_axes(e) -> frozenset[int]:
    """The loop axes an integer index expression (or condition) depends on."""
    if not isinstance(e, (_Dim, ix.Rel, ix.And)):
        return frozenset()
    return frozenset(LOOP_AXIS[s] for s in e.free_symbols if s in LOOP_AXIS)


def show_index(e) -> str:
    return ix.show(e).replace("_i", "i")


def fmt_dim(d) -> str:
    """A dim or index coefficient as the kernel IR prints it (as sympy printed it)."""
    return ix.show(d)

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

    def size(self) -> Dim:
        n: Dim = 1
        for d in self.shape:
            n = n * d
        return n


# -------------------------------------------------------------------------------------------------- expressions


class Expr:
    dtype: str

    def axes(self) -> frozenset[int]:
        """The loop axes this value depends on (for hoisting out of inner loops)."""
        raise NotImplementedError

    def children(self) -> tuple[Expr, ...]:
        return ()


@dataclass(frozen=True)
class Gather:
    """An index read from memory: `sym` in a load's terms stands for the value of `index`, which must lie in
    [0, bound); a value outside sets the program's error code `site` and reads element 0 instead."""

    sym: Dim  # an index variable (graphc.ir.index.var)
    index: Expr
    bound: Dim
    site: int


@dataclass(frozen=True)
class Load(Expr):
    buf: Buffer
    strides: tuple[Dim, ...]  # one per loop axis of the kernel's domain
    dtype: str
    offset: Dim = 0
    terms: tuple[tuple[Any, Dim], ...] = ()  # (integer expression of loop indices and gathered values, stride)
    gathers: tuple[Gather, ...] = ()
    checked: bool = False

    @property
    def affine(self) -> bool:
        """A plain strided read: no non-affine terms, no bounds masking."""
        return not self.terms and not self.checked

    def axes(self) -> frozenset[int]:
        out = frozenset(j for j, s in enumerate(self.strides) if not (isinstance(s, int) and s == 0))
        for e, _ in self.terms:
            out |= loop_axes(e)
        for g in self.gathers:
            out |= g.index.axes()
        return out

    def children(self) -> tuple[Expr, ...]:
        return tuple(g.index for g in self.gathers)

    def __repr__(self) -> str:
        parts = [fmt_dim(s) for s in self.strides]
        extra = ""
        if not (isinstance(self.offset, int) and self.offset == 0):
            extra += f" +{fmt_dim(self.offset)}"
        for e, s in self.terms:
            extra += f" +{fmt_dim(s)}*({show_index(e)})"
        for g in self.gathers:
            extra += f" {ix.show(g.sym)}={g.index!r}<{fmt_dim(g.bound)}"
        return f"{self.buf!r}[{','.join(parts)}{extra}]" + ("?" if self.checked else "")


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

    expr: Dim
    dtype: str

    def axes(self) -> frozenset[int]:
        return frozenset()

    def __repr__(self) -> str:
        return f"dim({ix.show(self.expr)})"


@dataclass(frozen=True)
class Index(Expr):
    """An integer expression of the loop indices (iota, a flat element number), as a value of `dtype`; it may
    use gathered values (an iota read through a take), as a load's terms do."""

    expr: Any
    dtype: str
    gathers: tuple[Gather, ...] = ()

    def axes(self) -> frozenset[int]:
        out = loop_axes(self.expr)
        for g in self.gathers:
            out |= g.index.axes()
        return out

    def children(self) -> tuple[Expr, ...]:
        return tuple(g.index for g in self.gathers)

    def __repr__(self) -> str:
        extra = "".join(f" {ix.show(g.sym)}={g.index!r}<{fmt_dim(g.bound)}" for g in self.gathers)
        return f"idx({show_index(self.expr)}{extra})"


@dataclass(frozen=True)
class Formula:
    """A scalar function given by a formula term over the arguments named `syms` (what an elementwise op lowers
    to; see graphc.ir.formula)."""

    name: str
    expr: Term
    syms: tuple[str, ...]

    def __repr__(self) -> str:
        return self.name


REPR_CHARS = 400  # the longest a fused formula prints (fn.kernels): its start, then "…"


@dataclass(frozen=True)
class Apply(Expr):
    """A formula applied to argument expressions."""

    fn: Formula
    args: tuple[Expr, ...]
    dtype: str

    def axes(self) -> frozenset[int]:
        # memoized: a fused formula is a DAG (shared subexpressions), walked as a tree it is exponential
        out = self.__dict__.get("_axes")
        if out is None:
            out = frozenset()
            for a in self.args:
                out |= a.axes()
            object.__setattr__(self, "_axes", out)
        return out

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def __repr__(self) -> str:
        # memoized and bounded: a DAG printed as a tree would be exponentially long (shared subexpressions)
        out = self.__dict__.get("_repr")
        if out is None:
            out = f"{self.fn.name}({', '.join(map(repr, self.args))})"
            if len(out) > REPR_CHARS:
                out = out[:REPR_CHARS - 2] + "…)"
            object.__setattr__(self, "_repr", out)
        return out


@dataclass(frozen=True)
class Convert(Expr):
    """A value converted to `dtype` with numpy's astype semantics."""

    x: Expr
    dtype: str

    def axes(self) -> frozenset[int]:
        return self.x.axes()

    def children(self) -> tuple[Expr, ...]:
        return (self.x,)

    def __repr__(self) -> str:
        return f"{self.dtype}({self.x!r})"


@dataclass(frozen=True)
class Guard(Expr):
    """`value` where every condition (integer relations of the loop indices) holds, else `otherwise`:
    padding, concatenation, dilation. The conditions may use gathered values, as a load's terms do (a take
    from a concatenation tests the index it read)."""

    conds: tuple[Any, ...]
    value: Expr
    otherwise: Expr
    dtype: str
    gathers: tuple[Gather, ...] = ()

    def axes(self) -> frozenset[int]:
        out = self.value.axes() | self.otherwise.axes()
        for c in self.conds:
            out |= loop_axes(c)
        for g in self.gathers:
            out |= g.index.axes()
        return out

    def children(self) -> tuple[Expr, ...]:
        return (self.value, self.otherwise, *(g.index for g in self.gathers))

    def __repr__(self) -> str:
        conds = " & ".join(show_index(c) for c in self.conds)
        extra = "".join(f" {ix.show(g.sym)}={g.index!r}<{fmt_dim(g.bound)}" for g in self.gathers)
        return f"({self.value!r} if {conds}{extra} else {self.otherwise!r})"


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


@dataclass(frozen=True)
class Reduction:
    """How a reduction combines: `combine` is a formula of (accumulated, next) and `identity` the value an empty
    (or masked) position contributes (0.0, or -inf / inf: for integers the dtype's smallest / largest value)."""

    label: str
    combine: Formula
    identity: float


@dataclass(eq=False)
class ReduceKernel(Kernel):
    """acc[kept] = reduce_{axes} body(i); then each epilogue store (over the kept positions, reading `Acc`).

    The output positions are the domain with the reduced axes dropped (row-major). A *scan* (one axis) stores the
    running value at every point of that axis instead (output shaped like the domain), from its end when
    `reverse`."""

    domain: Shape = ()
    axes: tuple[int, ...] = ()
    reduction: Reduction | None = None
    body: Expr | None = None
    stores: list[Store] = field(default_factory=list)  # expressions over Acc and loads in the kept space
    scan: bool = False
    reverse: bool = False

    @property
    def kept(self) -> tuple[int, ...]:
        if self.scan:
            return tuple(range(len(self.domain)))
        return tuple(a for a in range(len(self.domain)) if a not in self.axes)

    @property
    def writes(self) -> list[Buffer]:
        return [s.buf for s in self.stores]

    def __str__(self) -> str:
        what = ("reverse " if self.reverse else "") + ("scan" if self.scan else "reduce")
        lines = [f"{self.name}: {self.reduction.label} {what} over axes {self.axes} of {fmt_shape(self.domain)} "
                 f"of {self.body!r}"]
        lines += [f"  {s.buf!r} = {s.value!r}" for s in self.stores]
        return "\n".join(lines)


@dataclass(eq=False)
class GemmKernel(Kernel):
    """acc = op(A) @ op(B) (M x K times K x N); each epilogue store is an expression of Acc and loads over the
    (M, N) domain. When the product itself is needed, one store is `Acc` alone. With `batch` dims the product runs
    once per batch point, the operands and the output advanced by their batch strides (0: broadcast)."""

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
    batch: Shape = ()
    a_batch: tuple[Dim, ...] = ()  # element strides per batch dim
    b_batch: tuple[Dim, ...] = ()
    c_batch: tuple[Dim, ...] = ()
    # op(A) read through a view of `a` (no batch): (offset, rows, cols), op(A)[r, k] = a[offset + sum of
    # stride * digit over r's digits in `rows` and k's in `cols`, ((size, stride), outermost first; an outermost
    # size of 0 is known only at run time)] -- an im2col matrix packed straight from its image. ta is False then.
    a_view: tuple | None = None
    # the last store's buffer is C only for the K blocks' partial sums (the raw product, which nothing reads: an
    # epilogue updates a parameter in place, so C cannot be the parameter's buffer): its final value is not stored
    c_scratch: bool = False
    # "winograd": a 3x3 stride-1 convolution's product computed as Winograd F(2x2, 3x3) (see codegen.gemm): 2.25x
    # fewer multiply-adds; "expanded": a one-channel convolution's few-filter gradient along (pixel, filter) vectors;
    # "rows": a one-channel convolution's few-filter forward along output rows; all within float rounding of the
    # packed product's. "": the packed product
    algorithm: str = ""
    # op(B) packed ahead of time into this buffer by a PackKernel (B loop-invariant: packed once before the loop
    # whose step runs this product, not on every step); None: the driver packs B itself where it needs to
    b_packed: Buffer | None = None

    @property
    def writes(self) -> list[Buffer]:
        return [s.buf for s in self.stores]

    def __str__(self) -> str:
        ta = "ᵀ" if self.ta else ""
        tb = "ᵀ" if self.tb else ""
        batch = f"{fmt_shape(self.batch)} x " if self.batch else ""
        a = f"{self.a!r}{ta}"
        if self.a_view is not None:
            off, rows, cols = self.a_view
            show = lambda ds: "(" + ", ".join(f"{d or '?'}:{st}" for d, st in ds) + ")"  # noqa: E731
            a = f"view {self.a!r}[{off} + rows {show(rows)} + cols {show(cols)}]"
        how = {"winograd": " (Winograd F(2x2,3x3))",
               "expanded": " (expanded image: (pixel, filter) vectors)",
               "rows": " (along output rows, one channel)"}.get(self.algorithm, "")
        lines = [f"{self.name}: gemm{how} {batch}{fmt_dim(self.m)}x{fmt_dim(self.n)}x{fmt_dim(self.k)}: "
                 f"acc = {a} @ {self.b!r}{tb}" + (f" (packed before the loop: {self.b_packed!r})"
                                                  if self.b_packed is not None else "")]
        lines += [f"  {s.buf!r} = {s.value!r}" + ("  (scratch: partial sums only)" if self.c_scratch and s is
                                                      self.stores[-1] else "") for s in self.stores]
        return "\n".join(lines)


@dataclass(eq=False)
class PackKernel(Kernel):
    """`dst` = op(B) of the loop's product `gemm` (B = `src`, loop-invariant) packed into the GEMM's panels, once
    before the loop (see GemmKernel.b_packed); the threads pack disjoint column panels."""

    src: Buffer | None = None
    dst: Buffer | None = None
    gemm: GemmKernel | None = None  # the product (in the loop's body) that reads `dst`: its N, K, ldb, dtype, tb

    @property
    def domain(self) -> Shape:
        return (self.gemm.k, self.gemm.n)

    @property
    def writes(self) -> list[Buffer]:
        return [self.dst]

    def __str__(self) -> str:
        tb = "ᵀ" if self.gemm.tb else ""
        return f"{self.name}: pack {self.src!r}{tb} into {self.dst!r} for {self.gemm.name}"


@dataclass(eq=False)
class ScatterKernel(Kernel):
    """target[.., index(i), ..] += value(i) for every point i of `domain` (the updates' shape), in place.

    The domain is (lead axes, index axes, trail axes): lead and trail axes address the target directly, the
    index axes through `index`. Threads split the lead and trail positions; each walks the index axes in
    order, so duplicate indices accumulate in one fixed order on any thread count."""

    domain: Shape = ()
    target: Buffer | None = None
    shape: Shape = ()  # the target as the scatter sees it (its buffer may hold it under another shape: a reshape)
    lead: int = 0
    nidx: int = 1
    index: Expr | None = None
    value: Expr | None = None
    bound: Dim = 1
    site: int = 0

    @property
    def writes(self) -> list[Buffer]:
        return [self.target]

    def __str__(self) -> str:
        return (f"{self.name}: scatter-add over {fmt_shape(self.domain)} into {self.target!r} axis {self.lead} "
                f"at {self.index!r} (< {fmt_dim(self.bound)}) of {self.value!r}")


def walk(expr: Expr, into_guards: bool = True):
    """Every sub-expression once, children before parents (iteratively). With `into_guards` False the values
    under a Guard are not visited (they are computed only where the guard holds)."""
    return walk_all((expr,), into_guards)


def walk_all(exprs, into_guards: bool = True, skip=()):
    """Every sub-expression of any of `exprs` once (a sub-expression they share too), children before parents,
    in the order of `exprs`: the stores of a fused loop share most of their values, and walking each store's
    value on its own visits the shared part once per store (quadratic in a long fused chain). Expressions
    whose id is in `skip` (values already emitted) are neither visited nor entered."""
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(e, False) for e in reversed(list(exprs))]
    while stack:
        e, done = stack.pop()
        if done:
            yield e
            continue
        if id(e) in seen or id(e) in skip:
            continue
        seen.add(id(e))
        stack.append((e, True))
        if not into_guards and isinstance(e, Guard):
            continue
        for c in reversed(e.children()):
            stack.append((c, False))


def rebuild(e: Expr, fn, memo: dict[int, Expr] | None = None) -> Expr:
    """e with every sub-expression x replaced by fn(x, rebuilt children) (children first, shared ones once; x
    itself where its children came back unchanged). `memo` (id of a sub-expression -> its replacement), shared by
    several calls with the same `fn`, keeps a sub-expression that several expressions share one object in all of
    them (the emitter computes it once)."""
    from dataclasses import replace

    memo = {} if memo is None else memo
    for x in walk_all((e,), skip=memo):
        kids = x.children()
        new = tuple(memo[id(k)] for k in kids)
        if all(a is b for a, b in zip(new, kids, strict=True)):
            y = x
        elif isinstance(x, Apply):
            y = replace(x, args=new)
        elif isinstance(x, Convert):
            y = replace(x, x=new[0])
        elif isinstance(x, Guard):
            y = replace(x, value=memo[id(x.value)], otherwise=memo[id(x.otherwise)],
                        gathers=tuple(replace(g, index=memo[id(g.index)]) for g in x.gathers))
        elif isinstance(x, (Load, Index)):
            y = replace(x, gathers=tuple(replace(g, index=memo[id(g.index)]) for g in x.gathers))
        else:
            y = x
        memo[id(x)] = fn(y)
    return memo[id(e)]


@dataclass(frozen=True)
class Bind:
    """Where a loop body's buffer lives at step j of the loop: the parent's buffer `parent` advanced by `step`
    elements per step. `by` says which step count: "index" (the time index t: j, or T-1-j when the loop runs in
    reverse), "every" (j // every: a checkpoint slot), or "none" (the same storage on every step)."""

    parent: Buffer
    step: Dim = 0
    by: str = "none"


@dataclass(eq=False)
class ScanKernel(Kernel):
    """A loop in the program (a scan): for j in range(length), the kernels of `body` (a Program over buffers of
    its own, each bound to a parent buffer by `binds`) run in order, in the same generated function, with all
    threads meeting where a body kernel needs another's results (`body_barriers`) and at the top of every step.
    `every_kernels` (the first ones of body.kernels) run only on steps j % every == 0 (storing a checkpoint).
    Nothing is unrolled: the body is emitted once, whatever the length."""

    length: Dim = 1
    reverse: bool = False
    body: Any = None  # graphc.codegen.schedule.Program
    binds: list[Bind] = field(default_factory=list)  # one per body buffer
    every: int = 1
    every_kernels: int = 0
    out: list[Buffer] = field(default_factory=list)  # parent buffers the loop writes
    domain: Shape = ()  # (length, elements of work per step): the thread heuristic's estimate

    @property
    def writes(self) -> list[Buffer]:
        return list(self.out)

    def __str__(self) -> str:
        lines = [f"{self.name}: loop j in [0, {fmt_dim(self.length)})" + (" reversed" if self.reverse else "")]
        for i, b in enumerate(self.binds):
            step = "" if b.by == "none" else f" + {fmt_dim(b.step)}·{'t' if b.by == 'index' else f'(j//{self.every})'}"
            lines.append(f"  body b{i} = {b.parent!r}{step}")
        for k in self.body.kernels:
            lines += ["  " + ln for ln in str(k).splitlines()]
        return "\n".join(lines)


def kernel_work(k: Kernel):
    """Elements of work a kernel does (a matrix product's multiply-adds count 1/8: they run at GEMM speed), a
    dim expression (rational coefficients)."""
    if isinstance(k, GemmKernel):
        n = size((*k.batch, k.m, k.n, k.k))
        return n / 8 if isinstance(n, _Dim) else ix.norm(Fraction(n, 8))
    if isinstance(k, ScanKernel):
        return k.length * k.domain[1]
    return size(getattr(k, "domain", ()))


def all_kernels(kernels):
    """The kernels and, inside loops, their bodies' kernels (depth first)."""
    for k in kernels:
        yield k
        if isinstance(k, ScanKernel):
            yield from all_kernels(k.body.kernels)


# ----------------------------------------------------------------------------------------- row-split loops


def split_rows(k: ScanKernel) -> tuple[Dim, dict[int, int]] | None:
    """Whether the threads may run loop `k` on disjoint row ranges of its batch, each thread the whole loop over
    its rows with no barrier inside (a recurrent layer's sequences are independent): (the batch dim D, the row
    size in elements of every body buffer whose rows are rows of D), else None.

    It holds when D is a run-time symbol, every buffer the body writes has D rows (and static rows), and every
    body kernel keeps to its own rows: an elementwise loop or a row-wise reduction whose outermost axis runs over
    D, reading D-row buffers at that row and other buffers (loop-invariant: weights, biases) without it; a
    matrix product whose A and C are D-row buffers (A not transposed, no view) and whose B is loop-invariant.
    No kernel may read D itself, the row index as a value, or guard on it (each thread's rows count from 0).
    Decided once per loop (the emitter and the memory plan both ask)."""
    if "_split_rows" not in k.__dict__:
        k.__dict__["_split_rows"] = _split_rows(k)
    return k.__dict__["_split_rows"]


def _split_rows(k: ScanKernel) -> tuple[Dim, dict[int, int]] | None:
    body = k.body
    kernels = body.kernels
    if not kernels or any(isinstance(kk, (ScanKernel, ScatterKernel)) for kk in kernels):
        return None
    written = {b.index for kk in kernels for b in kk.writes}
    shape = body.buffers[min(written)].shape if written else ()
    D = shape[0] if shape else None
    if not (isinstance(D, _Dim) and D.is_symbol):
        return None
    rows: dict[int, int] = {}
    for buf in body.buffers:
        shape = buf.shape
        if any(_has(d, D) for d in shape[1:]):
            return None
        if shape and dims_equal(shape[0], D):
            if not all(isinstance(d, int) for d in shape[1:]):
                return None
            rows[buf.index] = size(shape[1:])
        elif buf.index in written:
            return None

    def loads_ok(exprs) -> bool:
        for e in exprs:
            for x in walk(e):
                if isinstance(x, DimValue) and _has(x.expr, D):
                    return False
                if isinstance(x, Index) and 0 in x.axes():
                    return False
                if isinstance(x, Guard) and any(0 in loop_axes(c) for c in x.conds):
                    return False
                if isinstance(x, Load):
                    if any(0 in loop_axes(t) for t, _ in x.terms):
                        return False
                    s0 = x.strides[0] if x.strides else 0
                    if x.buf.index in rows:
                        if x.gathers or not (isinstance(s0, int) and s0 == rows[x.buf.index]):
                            return False
                    elif not (isinstance(s0, int) and s0 == 0):
                        return False
        return True

    def stores_ok(stores, per_row: Dim) -> bool:
        return all(s.buf.index in rows and dims_equal(rows[s.buf.index], per_row) for s in stores)

    for kk in kernels:
        if isinstance(kk, LoopKernel):
            dom = kk.domain
            if not dom or not dims_equal(dom[0], D) or any(_has(d, D) for d in dom[1:]):
                return None
            per_row = size(dom[1:])
            if not stores_ok(kk.stores, per_row) or not loads_ok([s.value for s in kk.stores]):
                return None
        elif isinstance(kk, ReduceKernel):
            dom = kk.domain
            if (not dom or 0 in kk.axes or not dims_equal(dom[0], D)
                    or any(_has(d, D) for d in dom[1:])):
                return None
            per_row = size([dom[a] for a in kk.kept if a != 0])
            if not stores_ok(kk.stores, per_row) or not loads_ok([kk.body, *(s.value for s in kk.stores)]):
                return None
        elif isinstance(kk, GemmKernel):
            if (kk.batch or kk.a_view is not None or kk.ta or not dims_equal(kk.m, D)
                    or not isinstance(kk.n, int) or not isinstance(kk.k, int)
                    or kk.a.index not in rows or not dims_equal(kk.lda, rows[kk.a.index])
                    or kk.b.index in rows or kk.b.index in written):
                return None
            if not stores_ok(kk.stores, kk.n) or not loads_ok([s.value for s in kk.stores]):
                return None
        else:
            return None
    return D, rows


def _has(d, sym: Dim) -> bool:
    return isinstance(d, _Dim) and sym in d.free_symbols
