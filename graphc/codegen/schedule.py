"""Scheduling: group a lowered graph's nodes into kernels.

Which nodes get a buffer (are *materialized*) decides the fusion: reductions, contractions, scatters and outputs
always do; an elementwise node does when several kernels would otherwise recompute something expensive, when
it is broadcast into a bigger kernel and is costly, or when an op needs it in memory (a matrix product's
operand, a regrouping reshape). Everything else is inlined into the kernels that read it: each op says what its
value is at a point of the loop nest (`Op.lower`, through the `Lowering` context below), so broadcasts,
transposes, slices, pads and gathers become index expressions, not copies. Then elementwise kernels that read a
matrix product's result element for element become that product's epilogue (bias, activation, the activation's
derivative).

The scheduler never looks at an op's name: what it knows of an op is its kind, its cost, and its rules."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

from graphc.codegen import gemm
from graphc.codegen.kernels import (
    LOOP,
    LOOP_AXIS,
    Acc,
    Apply,
    Bind,
    Buffer,
    Const,
    Convert,
    DimValue,
    Expr,
    Formula,
    Gather,
    GemmKernel,
    Guard,
    Index,
    Kernel,
    Load,
    LoopKernel,
    PackKernel,
    ReduceKernel,
    Reduction,
    ScanKernel,
    ScatterKernel,
    Store,
    all_kernels,
    kernel_work,
    rebuild,
    walk,
    walk_all,
)
from graphc.errors import CompileError
from graphc.ir import index as ix
from graphc.ir.dims import Dim as _Dim
from graphc.ir.dims import Func as _Func
from graphc.ir.formula import Term
from graphc.ir.graph import Graph
from graphc.ir.lowering import ACC, NEXT
from graphc.ir.node import Node, topo_order, users
from graphc.ir.shapes import Dim, Shape, dims_equal, free_symbols, is_sympy
from graphc.ops.gather import check_words

AxisMap = tuple  # for each axis of a node: its index as an integer expression of the loop indices (0: broadcast)

MAX_INLINE_DEPTH = 48
EXPENSIVE = 8  # an op this costly is computed once (materialized) when several kernels read it
TRANSPOSED_READS = 3  # an expression reading memory this often is materialized before a transpose moves its rows


@dataclass
class Program:
    """The scheduled program: buffers, kernels in execution order, and the signature."""

    graph: Graph
    buffers: list[Buffer]
    kernels: list[Kernel]
    inputs: list[Buffer]  # one per graph.inputs (signature order)
    outputs: list[Buffer]  # one per graph.outputs (may repeat)
    symbols: list[Dim]  # run-time dims, in the order the native code reads them
    consts: dict[int, np.ndarray] = field(default_factory=dict)  # const buffer index -> data
    checks: list[str] = field(default_factory=list)  # error code k+1: what the run-time check k found

    @property
    def summary(self) -> str:
        return f"{len(self.kernels)} kernels, {len(self.buffers)} buffers"

    def __str__(self) -> str:
        lines = []
        for b in self.buffers:
            lines.append(f"{b!r}: {b.kind} {b.dtype}{list(b.shape)}")
        for k in self.kernels:
            lines.append(str(k))
        return "\n".join(lines)


def _norm(d):
    """A dim or index coefficient as a Python int when it is one (a sympy dim a user passed as a `Dim`)."""
    if isinstance(d, (int, np.integer)):
        return int(d)
    if isinstance(d, Fraction):
        return int(d) if d.denominator == 1 else d
    if is_sympy(d):
        from graphc.ir.dims import from_sympy

        return _norm(from_sympy(d))
    return d


def _rowmajor(shape: Shape) -> tuple[Dim, ...]:
    out: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        out.append(_norm(acc))
        acc = acc * d
    return tuple(reversed(out))


def _is_one(d: Dim) -> bool:
    return isinstance(d, int) and d == 1


def merge_digits(e):
    """e with every c*Mod(q, r) + c*r*floordiv(q, r) put back together as c*q: a number's digits in a mixed radix
    recombined, as where a reshape splits an axis and another merges it again (a max-pool's gradient read back
    in a convolution product's (N*H*W, C) rows: Mod(i, 2)*6 + Mod(i//2, 12)*12 + ... is 6*i, an affine
    index and a contiguous vector load instead of a gather per lane). Exact for any integer q and r > 0."""
    e = _norm(e)
    if not isinstance(e, _Dim) or not any(isinstance(a, _Func) and a.kind == "floordiv"
                                          for m, _ in e.terms for a, _ in m):
        return e
    poly = dict(e.terms)
    merged = True
    while merged:
        merged = False
        for m, c in poly.items():
            if c == 0 or len(m) != 1 or m[0][1] != 1 or not (isinstance(m[0][0], _Func) and m[0][0].kind == "mod"):
                continue
            q, r = m[0][0].args
            whole = ix.fdiv(q, r)
            wm = whole.terms[0][0] if isinstance(whole, _Dim) and len(whole.terms) == 1 else None
            if wm is not None and whole.terms[0][1] == 1 and poly.get(wm, 0) == c * r:
                poly[m] = poly[wm] = 0
                for qm, qc in (q.terms if isinstance(q, _Dim) else (((), q),)):
                    poly[qm] = poly.get(qm, 0) + c * qc
                merged = True
                break
    return _norm(_Dim.make(poly))


def split_affine(e) -> tuple[dict[int, Dim], Dim] | None:
    """e = const + sum_j coeff_j * i_j with coefficients free of loop indices: ({j: coeff_j}, const); None when
    e is not affine in the loop indices (a floor division, a product of indices, a gathered value)."""
    e = merge_digits(e)
    if not isinstance(e, _Dim):
        return {}, e
    coeffs: dict[int, Dim] = {}
    const: Dim = 0
    for m, c in e.terms:
        rest = [f for f in m if not _dimlike(f[0])]
        if not rest:
            const = const + _Dim.make({m: c})
            continue
        (a, p), = rest if len(rest) == 1 else ((None, 0),)
        j = LOOP_AXIS.get(ix.var(a.name)) if isinstance(a, ix.Var) and p == 1 else None
        if j is None:
            return None  # a gathered value, a floor division, a product or power of indices
        coeffs[j] = _norm(coeffs.get(j, 0) + _Dim.make({tuple(f for f in m if f is not rest[0]): c}))
    return coeffs, _norm(const)


def _dimlike(a) -> bool:
    """A factor that is a dim: a dim symbol, or a function (floor, remainder, ...) of dims only."""
    if isinstance(a, ix.Symbol):
        return True
    return isinstance(a, _Func) and all(s.is_symbol for x in a.args for s in ix.free_symbols(x))


class Lowering:
    """What an op sees while it lowers one node at one point of a kernel's loop nest.

    `out` holds the node's index along each of its axes as an integer expression of the loop indices. The
    methods give the node's inputs at index expressions (`input`, `at`, `flat`), formulas over values
    (`formula`, `convert`), constants and indices, guards (`guard`, `in_range`) and gathered indices (`gather`).
    Values are kernel-IR expressions the op passes around without looking inside."""

    def __init__(self, sched: Scheduler, node: Node, amap: AxisMap):
        self.sched, self.node, self.out = sched, node, amap

    # inputs
    def input(self, k: int) -> Expr:
        """Input k broadcast numpy-style to this node's shape (trailing axes aligned, size-1 axes read at 0)."""
        x = self.node.inputs[k]
        off = self.node.ndim - x.ndim
        return self.sched.expr(x, tuple(0 if _is_one(x.shape[a]) else self.out[a + off] for a in range(x.ndim)))

    def at(self, k: int, index) -> Expr:
        """Input k at the given index expressions (one per axis of the input)."""
        x = self.node.inputs[k]
        assert len(index) == x.ndim, (self.node.op.name, index, x.shape)
        return self.sched.expr(x, tuple(_norm(i) for i in index))

    def in_memory(self, k: int) -> bool:
        """Whether input k sits in memory as a row-major array (a leaf, stored, or a view of one)."""
        return self.sched._in_memory(self.node.inputs[k], self.sched.mat)

    def flat(self, k: int) -> Expr:
        """Input k's storage (row-major) read at this node's row-major position: a regrouping reshape."""
        return self.sched.storage_load(self.node.inputs[k], self.node.shape, self.out)

    # values
    def formula(self, name: str, expr: Term, syms, args, dtype: str) -> Expr:
        """The formula term `expr` of the arguments named `syms`, applied to the values `args`."""
        return Apply(Formula(name, expr, tuple(syms)), tuple(args), dtype)

    def convert(self, x: Expr, dtype: str) -> Expr:
        return x if x.dtype == dtype else Convert(x, dtype)

    def const(self, value, dtype: str) -> Expr:
        return Const(value, dtype)

    def constant(self, array: np.ndarray, dtype: str) -> Expr:
        if array.size == 1:
            return Const(array.reshape(()).item(), dtype)
        return self.sched.load(self.node, self.sched.const_buffer(self.node), self.out)

    def index(self, expr, dtype: str) -> Expr:
        return self._index(_norm(expr), dtype)

    def flat_index(self, dtype: str = "int64") -> Expr:
        """This point's row-major position in the node's shape."""
        return self._index(_norm(sum((s * a for s, a in zip(_rowmajor(self.node.shape), self.out, strict=True)),
                                     0)), dtype)

    def _index(self, expr, dtype: str) -> Index:
        """An index value, with the gathered values it uses (an iota read through a take)."""
        known = self.sched.gathers
        used = [s for s in ix.free_symbols(expr) if s in known]
        return Index(expr, dtype, tuple(known[s] for s in sorted(used, key=str)))

    def dim(self, expr, dtype: str) -> Expr:
        return DimValue(_norm(expr), dtype)

    # guards and gathers
    def in_range(self, index, shape) -> tuple:
        """Conditions that each index lies in [0, dim) (and is whole: dilation's floor divisions leave no rest)."""
        conds = []
        for i, d in zip(index, shape, strict=True):
            i = _norm(i)
            num, den = ix.floor_parts(i)
            if den is not None:
                conds.append(ix.eq(ix.mod(num, den), 0))
            if isinstance(i, int):
                if not (0 <= i and (not isinstance(d, int) or i < d)):
                    conds.append(ix.FALSE)
                continue
            conds.append(ix.rel(">=", i, 0))
            conds.append(ix.rel("<", i, d))
        return tuple(c for c in conds if c is not ix.TRUE)

    def guard(self, conds, value: Expr, otherwise: Expr) -> Expr:
        """`value` where all `conds` hold, else `otherwise`; loads in `value` never read outside their buffers."""
        conds = tuple(c for c in conds if c is not ix.TRUE and c is not True)  # (an op's comparison of ints)
        if not conds:
            return value
        if any(c is ix.FALSE or c is False for c in conds):
            return otherwise
        checked = rebuild(value, lambda x: replace(x, checked=True) if isinstance(x, Load) else x)
        return Guard(conds, checked, otherwise, value.dtype, self.sched.gathers_in(conds))

    def gather(self, k: int, index, bound: Dim) -> Dim:
        """A symbol standing for the value of input k (integers) at `index`, which must lie in [0, bound): use it
        in index expressions passed to `at`, then pass the value through `checked`."""
        return self.sched.gather(self.at(k, index), bound, self.node)

    def checked(self, value: Expr, *syms: Dim) -> Expr:
        """`value`, with the range check of each gathered symbol in `syms` kept where value no longer reads it: a
        take from a broadcast reads the same element whatever the index (the index drops out of the address),
        yet an index out of range is still an error. Such a check rides on an argument the value ignores."""
        read = {g.sym for x in walk(value) if isinstance(x, (Load, Index, Guard)) for g in x.gathers}
        lost = [self.sched.gathers[s] for s in syms if s not in read]
        if not lost:
            return value
        index = Index(sum((g.sym for g in lost), 0), "int64", tuple(lost))
        return Apply(Formula("checked", Term("sym", (), "a"), ("a", "b")), (value, index), value.dtype)


class Scheduler:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = topo_order(graph.outputs)
        self.users = users(self.order)
        self.buffers: list[Buffer] = []
        self.buf_of: dict[int, Buffer] = {}
        self.consts: dict[int, np.ndarray] = {}
        self.kernels: list[Kernel] = []
        self.exprs: dict[tuple[int, AxisMap], Expr] = {}
        self.position = {id(n): i for i, n in enumerate(self.order)}
        self.fused: list[Node] = []
        self.fused_ids: set[int] = set()
        self.mat: set[int] = set()
        self.gathers: dict[Dim, Gather] = {}
        self.checks: list[str] = []

    # ------------------------------------------------------------------ buffers
    def new_buffer(self, label: str, shape: Shape, dtype: str, kind: str, node: Node | None) -> Buffer:
        b = Buffer(len(self.buffers), label, tuple(shape), dtype, kind, node)
        self.buffers.append(b)
        return b

    def label(self, n: Node) -> str:
        return n.name or f"{n.op.name}{self.position[id(n)]}"

    # ------------------------------------------------------------------ materialization
    def _own_kernel(self, n: Node) -> bool:
        return n.op.kind in ("reduce", "contract", "scatter", "loop")

    def _view_operands(self) -> tuple[set[int], set[int]]:
        """(matrix products whose A operand may be read through a view, the regrouping reshapes on the way).

        A product without batch dims whose A operand is a movement node, or a regrouping reshape of one (the
        im2col matrix of a convolution: windows -> reshape), need not have that operand in memory: `_contract`
        tries to read it as a view (see `_a_view`) and materializes it only when that fails."""
        prods = {id(n) for n in self.order if n.op.kind == "contract" and n.ndim == 2}
        chain: set[int] = set()
        outs = {id(o) for o in self.graph.outputs}  # an output is stored whoever reads it (a loop step's stored
        for n in reversed(self.order):  # intermediate: the gradient reads it after the loop)
            if not (n.op.kind == "movement" and n.op.is_view(n)) or id(n) in prods or id(n) in outs:
                continue
            readers = self.users[id(n)]
            if readers and all((id(u) in prods and u.inputs[0] is n and u.inputs[1] is not n) or id(u) in chain
                               for u in readers):
                chain.add(id(n))
        return prods, chain

    def decide(self) -> set[int]:
        mat: set[int] = {id(o) for o in self.graph.outputs if not o.op.leaf}
        cost: dict[int, int] = {}
        depth: dict[int, int] = {}
        prods, chain = self._view_operands()
        self.view_prods = prods
        for n in self.order:
            if self._own_kernel(n):
                mat.add(id(n))
            if n.op.kind in ("source",) or n.op.leaf:
                continue
            for k in n.op.needs_memory(n):
                x = n.inputs[k]
                if id(n) in chain or (k == 0 and id(n) in prods and
                                      (id(x) in chain or (x.op.kind == "movement" and not x.op.is_view(x)))):
                    continue  # an A operand that may be a view (decided when the product is scheduled)
                if not self._in_memory(x, mat):
                    mat.add(id(self._storage_node(x)))
        # costs and depths of inline regions, deciding on the way who must be materialized
        reads: dict[int, int] = {}  # loads of memory an inline region makes per element
        for n in self.order:
            x = n.inputs[0] if n.inputs else None
            if (n.op.kind == "movement" and n.op.moves_inner_axis(n) and id(x) not in mat
                    and (cost[id(x)] >= EXPENSIVE or reads[id(x)] >= TRANSPOSED_READS)):
                # an expression read across its rows (a transpose moving the last axis) would be computed at
                # strided points, every load a gather: when it is costly or reads much, it is computed once, in
                # vectors, and then moved (one gather per element)
                t = x
                while t.op.is_view(t) and id(t) not in mat:  # a reshape reads its input's buffer as it is
                    t = t.inputs[0]
                if t.op.kind != "source" and not t.op.leaf:
                    mat.add(id(t))
                cost[id(x)], depth[id(x)], reads[id(x)] = 0, 0, 1
            if n.op.kind == "source" or id(n) in mat:
                cost[id(n)], depth[id(n)], reads[id(n)] = 0, 0, 1
                continue
            reads[id(n)] = sum(reads[id(i)] for i in n.inputs) if n.inputs else 0
            c = n.op.cost + sum(cost[id(i)] for i in n.inputs)
            d = 1 + max((depth[id(i)] for i in n.inputs), default=0)
            readers = self.users[id(n)]
            bigger = any(self._size_gt(u.shape, n.shape) for u in readers if u.op.kind != "reduce")
            if d > MAX_INLINE_DEPTH or (c >= EXPENSIVE and (len(readers) > 1 or bigger)):
                mat.add(id(n))
                for k in n.op.needs_memory(n):  # a product's regrouped operand, now a kernel of its own
                    if not self._in_memory(n.inputs[k], mat):
                        mat.add(id(self._storage_node(n.inputs[k])))
                c, d = 0, 0
                reads[id(n)] = 1
            cost[id(n)], depth[id(n)] = c, d
        return mat

    @staticmethod
    def _size_gt(a: Shape, b: Shape) -> bool:
        return len(a) > len(b) or any(not _is_one(x) and _is_one(y) for x, y in zip(a[::-1], b[::-1], strict=False))

    def _storage_node(self, x: Node) -> Node:
        """The node whose buffer holds x's elements in row-major order (following views such as reshapes)."""
        while x.op.is_view(x) and id(x) not in self.mat and id(x) not in self.buf_of:
            x = x.inputs[0]
        return x

    def _in_memory(self, x: Node, mat: set[int]) -> bool:
        """Whether x will sit in memory as a row-major array: a leaf, a materialized node, or a view of one."""
        while x.op.is_view(x) and id(x) not in mat:
            x = x.inputs[0]
        arr = x.op.constant_array(x)
        return x.op.leaf or id(x) in mat or (arr is not None and arr.size > 1)

    # ------------------------------------------------------------------ expressions
    def expr(self, n: Node, amap: AxisMap) -> Expr:
        key = (id(n), amap)
        e = self.exprs.get(key)
        if e is None:
            e = self._expr(n, amap)
            self.exprs[key] = e
            if id(n) not in self.buf_of and n.op.kind != "source" and id(n) not in self.fused_ids:
                self.fused_ids.add(id(n))
                self.fused.append(n)
        return e

    def load(self, n: Node, buf: Buffer, amap: AxisMap) -> Load:
        """A load of n's elements (stored row-major in buf) at the index expressions amap."""
        return self._load_flat(buf, n.dtype, list(zip(_rowmajor(n.shape), amap, strict=True)))

    def _load_flat(self, buf: Buffer, dtype: str, parts) -> Load:
        """buf read at sum(stride * index) over parts [(stride, index expression)]."""
        strides: list[Dim] = [0] * len(LOOP)
        offset: Dim = 0
        terms: list = []
        for s, a in parts:
            aff = split_affine(a)
            if aff is None:
                terms.append((a, s))
                continue
            coeffs, const = aff
            offset = offset + s * const
            for j, c in coeffs.items():
                strides[j] = strides[j] + s * c
        return Load(buf, tuple(_norm(s) for s in strides[:self.ndomain]), buf.dtype, _norm(offset), tuple(terms),
                    self.gathers_in(e for e, _ in terms))

    def gathers_in(self, exprs) -> tuple[Gather, ...]:
        """The gathers whose symbols the index expressions `exprs` use, in order of first use."""
        used = [sym for e in exprs for sym in ix.symbols_in_order(e) if sym in self.gathers]
        return tuple(self.gathers[sym] for sym in dict.fromkeys(used))

    def storage_load(self, x: Node, shape: Shape, amap: AxisMap) -> Load:
        """x's storage read at the row-major position `amap` of `shape` (a reshape of x to `shape`)."""
        buf = self._storage(x)
        flat = _norm(sum((s * a for s, a in zip(_rowmajor(shape), amap, strict=True)), 0))
        return self._load_flat(buf, x.dtype, [(1, flat)])

    def gather(self, index: Expr, bound: Dim, node: Node) -> Dim:
        sym = ix.var(f"_g{len(self.gathers)}")
        site = len(self.checks)
        self.checks.append(check_words(node, bound))
        self.gathers[sym] = Gather(sym, index, _norm(bound), site + 1)
        return sym

    def _expr(self, n: Node, amap: AxisMap) -> Expr:
        buf = self.buf_of.get(id(n))
        if buf is not None:
            return self.load(n, buf, amap)
        if n.op.leaf:
            raise CompileError(f"internal: {n.op.name} {n.name!r} has no buffer")
        return n.op.lower(n, Lowering(self, n, amap))

    def const_buffer(self, n: Node) -> Buffer:
        b = self.buf_of.get(id(n))
        if b is None:
            b = self.new_buffer(f"const{len(self.consts)}", n.shape, n.dtype, "const", n)
            self.consts[b.index] = np.ascontiguousarray(n.op.constant_array(n))
            self.buf_of[id(n)] = b
        return b

    def _storage(self, x: Node) -> Buffer:
        """The buffer holding x's elements in row-major order (following views)."""
        while x.op.is_view(x) and id(x) not in self.buf_of:
            x = x.inputs[0]
        if x.op.constant_array(x) is not None:
            return self.const_buffer(x)
        b = self.buf_of.get(id(x))
        if b is None:
            raise CompileError(f"internal: {x.op.name} at {x.source.where()} was expected in memory")
        return b

    def _identity_map(self, shape: Shape) -> AxisMap:
        return tuple(0 if _is_one(d) else LOOP[k] for k, d in enumerate(shape))

    # ------------------------------------------------------------------ kernels
    def build(self, updates: dict[int, int] | None = None, fuse: bool = True,
              via_copy: frozenset[int] = frozenset()) -> Program:
        """`updates` maps an output position to a signature position: that output is written in place into the
        input's own buffer (a parameter update), after every kernel that reads the old value. The positions in
        `via_copy` (and updates whose value other nodes read) are computed into a buffer of their own and copied
        over the old value at the end. `self.hazards` lists the update positions whose in-place write would be
        seen by a read of the old value (W <- W.T, W <- W @ W, a <- 2b with b <- 2a)."""
        g = self.graph
        for leaf in g.inputs:
            label = leaf.name or f"{leaf.op.name}{len(self.buffers)}"  # a loop body's placeholders have no name
            self.buf_of[id(leaf)] = self.new_buffer(label, leaf.shape, leaf.dtype, leaf.op.name, leaf)
        self.mat = self.decide()
        updates = dict(updates or {})
        outputs: list[Buffer] = []
        out_ids: dict[int, Buffer] = {}
        in_place: set[int] = set()
        position: dict[int, int] = {}  # an updated buffer -> its output position
        copies: list[tuple[Buffer, Node, Buffer | None]] = []  # (target, value, the value's snapshot)
        snapshots: list[LoopKernel] = []
        shared = Counter(id(o) for o in g.outputs)
        for pos, o in enumerate(g.outputs):
            if pos in updates:
                leaf = g.inputs[updates[pos]]
                if leaf.shape != o.shape or leaf.dtype != o.dtype:
                    raise CompileError(f"update of {leaf.name!r} ({leaf.type_str}) with a {o.type_str} value")
                target = self.buf_of[id(leaf)]
                if o is leaf:
                    outputs.append(target)
                    continue
                in_place.add(target.index)
                outputs.append(target)
                position[target.index] = pos
                if o.op.leaf:  # another input's value ({a: b, b: a}): a snapshot of it first, copied at the end
                    snap = self.new_buffer(f"{target.label}_new", o.shape, o.dtype, "temp", o)
                    self.ndomain = o.ndim
                    load = self.load(o, self.buf_of[id(o)], self._identity_map(o.shape))
                    snapshots.append(LoopKernel(f"snapshot_{target.label}", reads=[self.buf_of[id(o)]], nodes=[],
                                                domain=o.shape, stores=[Store(snap, load)]))
                    copies.append((target, o, snap))
                    continue
                if self.users[id(o)] or pos in via_copy or shared[id(o)] > 1:
                    # other nodes read the new value (momentum's velocity feeds the parameter's update), or it is
                    # also another output or update: keep it in its own buffer and copy it over the old one once
                    # nothing reads the old one
                    self.mat.add(id(o))
                    copies.append((target, o, None))
                    continue
                out_ids[id(o)] = target
                continue
            if id(o) in out_ids:
                outputs.append(out_ids[id(o)])
                continue
            b = self.new_buffer(f"out{len(out_ids)}", o.shape, o.dtype, "output", o)
            out_ids[id(o)] = b
            outputs.append(b)
        # an output that only views a computed value takes that value's storage: no copy kernel
        aliased: set[int] = set()
        for o in g.outputs:
            b = out_ids.get(id(o))
            if b is None or b.kind != "output" or not o.op.is_view(o):
                continue
            src, via = o.inputs[0], o
            while (src.op.is_view(src) and id(src) not in self.mat and id(src) not in out_ids
                   and all(u is via for u in self.users[id(src)])):  # views of views: the same elements
                src, via = src.inputs[0], src
            if (id(src) in self.mat and id(src) not in out_ids and src.op.kind != "source" and not src.op.leaf
                    and all(u is via for u in self.users[id(src)])):
                out_ids[id(src)] = b
                aliased.add(id(o))
        for n in self.order:
            if id(n) in aliased:
                self.buf_of[id(n)] = out_ids[id(n)]
                continue
            if id(n) not in self.mat and id(n) not in out_ids:
                continue
            if n.op.leaf and id(n) not in out_ids:
                continue
            if n.op.kind == "loop":  # a loop fills the buffers of its projections; they have no kernel of their own
                if getattr(n.op, "multi_output", False):
                    self._loop(n, out_ids)
                continue
            buf = out_ids.get(id(n)) or self.new_buffer(self.label(n), n.shape, n.dtype, "temp", n)
            self._kernel_for(n, buf)
            if not n.op.leaf:  # an output that is a leaf is a copy; the leaf stays
                self.buf_of[id(n)] = buf
        self.kernels[0:0] = snapshots
        for target, o, snap in copies:
            src = snap or self.buf_of[id(o)]
            self.ndomain = o.ndim
            load = self.load(o, src, self._identity_map(o.shape))
            self.kernels.append(LoopKernel(f"k{len(self.kernels)}_update_{target.label}", reads=[src], nodes=[],
                                           domain=o.shape, stores=[Store(target, load)]))
        _after_readers(self.kernels, in_place)
        self.hazards = frozenset(position[i] for i in _in_place_hazards(self.kernels, in_place))
        if fuse:
            fuse_epilogues(self.kernels)
            fuse_loops(self.kernels)
        symbols = sorted(set().union(*(free_symbols(b.shape) for b in self.buffers)) if self.buffers else set(),
                         key=str)
        inputs = [self.buf_of[id(leaf)] for leaf in g.inputs]
        return Program(g, self.buffers, self.kernels, inputs, outputs, symbols, self.consts, self.checks)

    def _kernel_for(self, n: Node, buf: Buffer) -> None:
        self.fused, self.fused_ids = [], set()
        self._make_kernel(n, buf)
        k = self.kernels[-1]
        k.nodes = [x for x in self.fused if x is not n] + [n]

    def _make_kernel(self, n: Node, buf: Buffer) -> None:
        name = f"k{len(self.kernels)}_{n.op.name}"
        kind = n.op.kind
        if kind == "contract":
            self._contract(n, buf, name)
            return
        if kind == "reduce":
            self._reduce(n, buf, name)
            return
        if kind == "scatter":
            self._scatter(n, buf, name)
            return
        self.ndomain = n.ndim
        self.exprs = {}
        # a node defined here is computed, not loaded from the buffer it is about to fill (leaves are copied)
        was = self.buf_of.pop(id(n), None) if not n.op.leaf else None
        value = self.expr(n, self._identity_map(n.shape))
        if was is not None:
            self.buf_of[id(n)] = was
        kern = LoopKernel(name, domain=n.shape, stores=[Store(buf, value)])
        kern.reads = _loads(value)
        self.kernels.append(kern)

    def _reduce(self, n: Node, buf: Buffer, name: str) -> None:
        rule = n.op.reduce_rule(n)
        (x,) = n.inputs[:1]
        self.ndomain = x.ndim
        self.exprs = {}
        body = self.expr(x, self._identity_map(x.shape))
        if body.dtype != n.dtype:  # a sum of bools counts in int32
            body = Convert(body, n.dtype)
        if rule.scan and len(rule.axes) != 1:
            raise CompileError(f"internal: {n.op.name} scans over {rule.axes}; a scan runs over one axis")
        combine = Formula(rule.label, rule.combine, (ACC.value, NEXT.value))
        kern = ReduceKernel(name, domain=x.shape, axes=tuple(rule.axes),
                            reduction=Reduction(rule.label, combine, float(rule.identity)), body=body,
                            stores=[Store(buf, Acc(n.dtype))], scan=rule.scan, reverse=rule.reverse)
        kern.reads = _loads(body)
        self.kernels.append(kern)

    def _contract(self, n: Node, buf: Buffer, name: str) -> None:
        rule = n.op.contract_rule(n)
        a, b = n.inputs
        ta, tb = rule.ta, rule.tb
        m, nn = n.shape[-2:]
        k = a.shape[-2] if ta else a.shape[-1]
        batch = tuple(n.shape[:-2])

        def batch_strides(x: Node) -> tuple[Dim, ...]:
            """Element strides of x per batch dim of the output (0 where x broadcasts or lacks the dim)."""
            rm = _rowmajor(x.shape)
            off = len(batch) - (x.ndim - 2)
            return tuple(0 if j < off or _is_one(x.shape[j - off]) else rm[j - off] for j in range(len(batch)))

        view = self._a_view(a, ta) if id(n) in getattr(self, "view_prods", ()) else None
        if view is not None:
            abuf, a_view = view
            ta = False
        else:
            abuf, a_view = self._storage_or_materialize(a), None
        name = f"k{len(self.kernels)}_{n.op.name}"  # after any kernel made for the operand just now
        kern = GemmKernel(name, a=abuf, b=self._storage(b), ta=ta, tb=tb, m=m, n=nn, k=k,
                          lda=a.shape[-1], ldb=b.shape[-1], stores=[Store(buf, Acc(n.dtype))], batch=batch,
                          a_batch=batch_strides(a), b_batch=batch_strides(b), c_batch=_rowmajor(n.shape)[:len(batch)],
                          a_view=a_view,
                          algorithm=gemm.conv_algorithm(a_view, _norm(nn), _norm(k), tb, n.dtype, _norm(m)))
        kern.reads = [kern.a, kern.b]
        self.kernels.append(kern)

    # ------------------------------------------------------------------ operand views
    def _storage_or_materialize(self, x: Node) -> Buffer:
        """x's storage; a view candidate that could not be read as a view gets its kernel here, just before the
        product (its inputs are all computed by now)."""
        s = x
        while s.op.is_view(s) and id(s) not in self.buf_of:
            s = s.inputs[0]
        if id(s) not in self.buf_of and not s.op.leaf and s.op.constant_array(s) is None:
            self._materialize_now(s)
        return self._storage(x)

    def _materialize_now(self, x: Node) -> Buffer:
        """A kernel computing x into a new buffer, scheduled now (in the middle of building another kernel)."""
        saved = (self.fused, self.fused_ids, self.exprs, getattr(self, "ndomain", 0))
        buf = self.new_buffer(self.label(x), x.shape, x.dtype, "temp", x)
        self._kernel_for(x, buf)
        self.buf_of[id(x)] = buf
        self.mat.add(id(x))
        self.fused, self.fused_ids, self.exprs, self.ndomain = saved
        return buf

    def _trial(self, s: Node):
        """s lowered over its own shape, without side effects on the kernel being built: (the expression, the
        nodes inlined into it)."""
        saved = (self.fused, self.fused_ids, self.exprs, getattr(self, "ndomain", 0))
        self.fused, self.fused_ids, self.exprs, self.ndomain = [], set(), {}, s.ndim
        try:
            e = self.expr(s, self._identity_map(s.shape))
            return e, self.fused
        finally:
            self.fused, self.fused_ids, self.exprs, self.ndomain = saved

    @staticmethod
    def _plain(e) -> bool:
        return isinstance(e, Load) and not e.terms and not e.checked and not e.gathers and isinstance(e.offset, int)

    def _a_view(self, a: Node, ta: bool):
        """(buffer, (offset, rows, cols)) when the A operand `a` (stored rows x cols; op(A) = aᵀ when `ta`) is a
        regrouping of a node s whose value is a plain strided read of a buffer: s's leading axes make the rows,
        its trailing axes the columns. When s reads through a guard (the padding of a convolution), the movement
        node below it is materialized first if that makes the read plain and costs less than s itself (the
        padded image instead of its im2col matrix). None: no view."""
        s = a
        while s.op.is_view(s) and id(s) not in self.buf_of:
            s = s.inputs[0]
        if id(s) in self.buf_of or s.op.leaf or s.op.kind != "movement" or s.op.constant_array(s) is not None:
            return None
        rows_n = a.shape[-2]
        split = None
        acc: Dim = 1
        for j in range(1, s.ndim):
            acc = acc * s.shape[j - 1]
            if dims_equal(acc, rows_n):
                split = j
                break
        if split is None:
            return None
        e, inl = self._trial(s)
        if not self._plain(e):
            below = []
            node = s
            while len(node.inputs) == 1 and node.inputs[0].op.kind == "movement" and id(node.inputs[0]) not in \
                    self.buf_of and not node.inputs[0].op.leaf:
                node = node.inputs[0]
                below.append(node)
            for p in below:
                if not _smaller(p.shape, s.shape):
                    continue
                self.buf_of[id(p)] = Buffer(-1, "trial", p.shape, p.dtype, "temp", p)
                try:
                    ok = self._plain(self._trial(s)[0])
                finally:
                    del self.buf_of[id(p)]
                if ok:
                    self._materialize_now(p)
                    e, inl = self._trial(s)
                    break
            if not self._plain(e):
                return None
        digits = []
        for j, (d, st) in enumerate(zip(s.shape, e.strides, strict=True)):
            d, st = _norm(d), _norm(st)
            if not isinstance(st, int) or (not isinstance(d, int) and j not in (0, split)):
                return None
            digits.append((d if isinstance(d, int) else 0, st))
        rows, cols = _merge_digits(digits[:split]), _merge_digits(digits[split:])
        if ta:
            rows, cols = cols, rows
        if rows is None or cols is None:
            return None
        for x in inl:  # the view's nodes belong to the product (fn.kernels shows what the operand was)
            if id(x) not in self.fused_ids:
                self.fused_ids.add(id(x))
                self.fused.append(x)
        node = a
        while node is not s:
            if id(node) not in self.fused_ids:
                self.fused_ids.add(id(node))
                self.fused.append(node)
            node = node.inputs[0]
        return e.buf, (e.offset, rows, cols)

    def _scatter(self, n: Node, buf: Buffer, name: str) -> None:
        """out = x (a copy kernel), then the updates added in place at the indices."""
        rule = n.op.scatter_rule(n)
        x, idx, upd = n.inputs
        axis = rule.axis
        # copy x into the output
        self.ndomain = n.ndim
        self.exprs = {}
        value = self.expr(x, self._identity_map(n.shape))
        if not (isinstance(value, Load) and value.buf is buf and value.affine and not value.offset
                and value.strides == _rowmajor(n.shape)):  # x is the output's own buffer (an update in place)
            copy = LoopKernel(f"{name}_copy", domain=n.shape, stores=[Store(buf, value)])
            copy.reads = _loads(value)
            copy.nodes = [n]
            self.kernels.append(copy)
        # then accumulate over the updates' domain
        self.ndomain = upd.ndim
        self.exprs = {}
        umap = self._identity_map(upd.shape)
        index = self.expr(idx, umap[axis:axis + idx.ndim])
        value = self.expr(upd, umap)
        if buf in _loads(value) or buf in _loads(index):
            # the updates read the rows being added to (an embedding's SGD step whose gradient reads the gathered
            # rows: E <- E - lr * scatter(0, ids, 2 E[ids])): computed first into a buffer of the updates' size, so
            # a repeated index never reads a row already added to and the add stays in place, not a copy of x
            tmp = self.new_buffer(f"{name}_updates", upd.shape, upd.dtype, "temp", upd)
            first = LoopKernel(f"{name}_updates", domain=upd.shape, stores=[Store(tmp, value)])
            first.reads = _loads(value)
            first.nodes = []
            self.kernels.append(first)
            value = Load(tmp, tuple(0 if _is_one(d) else s for d, s in zip(upd.shape, _rowmajor(upd.shape),
                                                                              strict=True)), tmp.dtype)
        site = len(self.checks) + 1
        self.checks.append(f"{n.op.name} ({n.type_str}) at {n.where()}: an index is out of range "
                           f"[0, {x.shape[axis]})")
        kern = ScatterKernel(name, domain=upd.shape, target=buf, shape=n.shape, lead=axis, nidx=idx.ndim,
                             index=index, value=value, bound=x.shape[axis], site=site)
        kern.reads = list(dict.fromkeys(_loads(index) + _loads(value)))
        self.kernels.append(kern)


    # ------------------------------------------------------------------ loops
    def _copy(self, name: str, src: Buffer, dst: Buffer, shape: Shape) -> LoopKernel:
        strides = tuple(0 if _is_one(d) else s for d, s in zip(shape, _rowmajor(shape), strict=True))
        k = LoopKernel(name, domain=tuple(shape), stores=[Store(dst, Load(src, strides, src.dtype))])
        k.reads = [src]
        return k

    def _loop(self, n: Node, out_ids: dict[int, Buffer]) -> None:
        """A loop node (kind "loop", several outputs read through projections): its body is scheduled as a
        program of its own whose buffers are bound to the parent's, per step (see ScanKernel)."""
        rule = n.op.loop_rule(n)
        body, nc, nx = rule.body, rule.n_carry, rule.n_x
        types = n.op.output_types(n)
        ny = len(body.outputs) - nc
        name = f"k{len(self.kernels)}_{n.op.name}"
        projs: dict[int, Node] = {}
        for u in self.users[id(n)]:
            projs.setdefault(u.attrs["index"], u)

        def out_buf(k: int, label: str) -> Buffer:
            p = projs.get(k)
            if p is None:
                shape, dtype = types[k]
                return self.new_buffer(f"{name}_{label}", shape, dtype, "temp", None)
            b = out_ids.get(id(p)) or self.new_buffer(self.label(p), p.shape, p.dtype, "temp", p)
            self.buf_of[id(p)] = b
            return b

        inits, xs, caps = n.inputs[:nc], n.inputs[nc:nc + nx], n.inputs[nc + nx:]
        carry = [out_buf(k, f"carry{k}") for k in range(nc)]
        # a y nobody reads is not computed (unless the body needs it anyway), nor stored
        ys = {k: out_buf(nc + k, f"y{k}") for k in range(ny) if nc + k in projs}
        hist = {k: out_buf(nc + ny + k, f"hist{k}") for k in range(nc) if nc + ny + k in projs}
        # intermediates the gradient stores per step (scan_output past the history: body.order()[index - base])
        base = len(types)
        saved = {k: out_buf(k, f"saved{k - base}") for k in sorted(projs) if k >= base}
        order = body.order()
        for k, (x, c) in enumerate(zip(inits, carry, strict=True)):  # the initial carry (inlined: zeros cost nothing)
            self.ndomain = x.ndim
            self.exprs = {}
            v = self.expr(x, self._identity_map(x.shape))
            kern = LoopKernel(f"{name}_init{k}", domain=x.shape, stores=[Store(c, v)])
            kern.reads = _loads(v)
            kern.nodes = [n]
            self.kernels.append(kern)
        # the body as a program of its own; its run-time checks and constants join the parent's
        outputs = [*body.outputs[:nc], *(body.outputs[nc + k] for k in ys), *(order[k - base] for k in saved)]
        sub = Scheduler(Graph(tuple(outputs), tuple(body.args)))
        sub.checks = list(self.checks)
        prog = sub.build()
        self.checks = sub.checks
        binds: dict[int, Bind] = {}
        every = rule.checkpoint or 1
        for b in prog.buffers:
            if b.kind == "const":
                pb = self.new_buffer(f"{name}_{b.label}", b.shape, b.dtype, "const", b.node)
                self.consts[pb.index] = prog.consts[b.index]
                binds[b.index] = Bind(pb)
            elif b.kind == "temp":
                binds[b.index] = Bind(self.new_buffer(f"{name}_{b.label}", b.shape, b.dtype, "temp", b.node))
        for a, b in zip(body.args, prog.inputs, strict=True):
            k = a.attrs["index"]
            if k < nc:
                binds[b.index] = Bind(carry[k])
            elif k < nc + nx:
                x = xs[k - nc]
                binds[b.index] = Bind(self._storage(x), _norm(_size(x.shape[1:])), "index")
            else:
                binds[b.index] = Bind(self._storage(caps[k - nc - nx]))
        pre: list[Kernel] = []
        post: list[Kernel] = []
        extra: list[Buffer] = []

        def fresh(label: str, like: Buffer) -> Buffer:
            b = Buffer(len(prog.buffers) + len(extra), label, like.shape, like.dtype, "temp", None)
            extra.append(b)
            return b

        captured = {b.index for a, b in zip(body.args, prog.inputs, strict=True) if a.attrs["index"] >= nc + nx}
        packs: list[Kernel] = []
        for g in prog.kernels:  # a loop-invariant B the product would pack on every step: packed once, before
            if not (isinstance(g, GemmKernel) and g.b.index in captured and _packs_b(g)):
                continue
            cols = PACK_ROW_BYTES // (8 if g.b.dtype == "float64" else 4)
            npad = -(-g.n // cols) * cols  # whole panels of any config's NR (each divides it)
            src = binds[g.b.index].parent
            dst = self.new_buffer(f"{name}_packed_{src.label}", (g.k, npad), g.b.dtype, "temp", None)
            inner = Buffer(len(prog.buffers) + len(extra), f"packed_{g.b.label}", dst.shape, dst.dtype, "scan_arg",
                           None)  # read only in the loop, as its arguments are
            extra.append(inner)
            binds[inner.index] = Bind(dst)
            g.b_packed = inner
            g.reads = list(dict.fromkeys([*g.reads, inner]))
            pk = PackKernel(f"{name}_pack{len(packs)}", src=src, dst=dst, gemm=g)
            pk.reads, pk.nodes = [pk.src], [n]
            packs.append(pk)

        new_carry: list[Buffer] = []
        stacked = list(ys.values()) + list(saved.values())  # the body's outputs after the carries, per step
        for pos, b in enumerate(prog.outputs):
            if pos < nc:
                target = Bind(self.new_buffer(f"{name}_next{pos}", b.shape, b.dtype, "temp", None))
            else:
                # advanced by the step's own size: the parent may be a caller's output of another shape (a
                # reshape of the stacked ys, (T, k, ...) -> (T*k, ...), shares its storage), so not y.shape[1:]
                y = stacked[pos - nc]
                target = Bind(y, _norm(_size(b.shape)), "index")
            if b.index not in binds:
                binds[b.index] = target
                dst = b
            else:  # the same value is two outputs (a carry that is also y_t), or a loop argument: a copy
                dst = fresh(f"out{pos}", b)
                binds[dst.index] = target
                post.append(self._copy(f"{name}_dup{pos}", b, dst, b.shape))
            if pos < nc:
                new_carry.append(dst)
        arg_buf = {a.attrs["index"]: b for a, b in zip(body.args, prog.inputs, strict=True)}
        for k, hb in hist.items():  # the carry each step received (every `every`-th one with a checkpoint)
            dst = fresh(f"hist{k}", arg_buf[k])
            shape = arg_buf[k].shape  # the carry's, not hb.shape[1:] (hb may be a reshaped output, as above)
            binds[dst.index] = Bind(hb, _norm(_size(shape)), "index" if every == 1 else "every")
            pre.append(self._copy(f"{name}_store{k}", arg_buf[k], dst, shape))
        for k in range(nc):  # the next step's carry
            post.append(self._copy(f"{name}_carry{k}", new_carry[k], arg_buf[k], arg_buf[k].shape))
        if every == 1:  # the history copies, the body's elementwise kernels and the carry copies: one loop each
            body_kernels = pre + prog.kernels + post
            fuse_loops(body_kernels)
            pre = []
        else:  # the history copies run only every `every`-th step: they stay the first kernels
            fuse_loops(pre)
            body_kernels = prog.kernels + post
            fuse_loops(body_kernels)
        # a step's new carry that only its copy read, once the copy was fused into the loop that computes it (and
        # reads the value itself, see `_forward_stores`), need not be stored: the copy writes the carry directly
        read = {b for kern in pre + body_kernels for b in kern.reads}
        dead = {nb for nb in new_carry if nb not in read}
        for kern in body_kernels:
            if isinstance(kern, LoopKernel):
                dead -= _drop_stores(kern, dead)
        body_kernels = [kern for kern in body_kernels if not (isinstance(kern, LoopKernel) and not kern.stores)]
        prog = replace(prog, buffers=prog.buffers + extra, kernels=pre + body_kernels)
        for kern in all_kernels(prog.kernels):  # kernel names are function names: unique in the module
            kern.name = f"{name}_{kern.name}"
        bind_list = [binds[i] for i in range(len(prog.buffers))]
        writes = [b.parent for i, b in enumerate(bind_list)
                  if prog.buffers[i].kind not in ("const", "scan_arg") and prog.buffers[i] not in dead]
        writes += [carry[k] for k in range(nc)]
        work = sum((kernel_work(k) for k in prog.kernels), 0)
        kern = ScanKernel(name, length=rule.length, reverse=rule.reverse, body=prog, binds=bind_list, every=every,
                          every_kernels=len(pre), out=list(dict.fromkeys(writes)),
                          domain=(rule.length, _norm(work)))
        # a loop argument no body kernel touches (the forward xs of a gradient's reverse scan whose body reads
        # only stored values) is not a read: it may die before the loop, and its storage be reused (an LSTM's
        # input projection and its gradient, both (T, N, 4H), then share it)
        touched = {b.index for k in prog.kernels for b in k.reads + k.writes}
        unread = {i for i in range(len(bind_list)) if i not in touched}  # (a dropped new carry too)
        kern.reads = list(dict.fromkeys(b.parent for i, b in enumerate(bind_list) if i not in unread))
        kern.nodes = [n]
        self.kernels.extend(packs)
        self.kernels.append(kern)


# a packed B's rows are rounded up to a multiple of this many bytes (`PackKernel`): whole panels of any config
# (NR is at most two vectors of 64 bytes)
PACK_ROW_BYTES = 128
# a loop-invariant B of fewer elements is left to the driver (packed every step, in L1: a few microseconds a
# call, against a packed copy's arena and kernel)
PACK_MIN_ELEMENTS = 16384


def _packs_b(g: GemmKernel) -> bool:
    """Whether the GEMM driver would pack this loop product's B on every step (the product then reads a B packed
    once before the loop instead): B transposed, or wider than the driver reads in place (rows more than
    gemm.DIRECT_B_PACKED_IN_LOOPS apart: where any target's driver would pack it), with static N and K and at
    least PACK_MIN_ELEMENTS; not a batched product, a view of A or another algorithm. (B read in place, or a
    product of at most a few rows, the GEMV, packs nothing.)"""
    if g.batch or g.a_view is not None or g.algorithm or not isinstance(g.n, int) or not isinstance(g.k, int):
        return False
    esize = 8 if g.b.dtype == "float64" else 4
    big = g.n * g.k >= PACK_MIN_ELEMENTS
    return big and (g.tb or not isinstance(g.ldb, int) or gemm.packed_somewhere(g.ldb, g.k, esize))


def _merge_digits(digits: list) -> tuple | None:
    """(size, stride) digits, outermost first, without size-1 digits and with neighbours that are one run
    merged ((a, b*t), (b, t) -> (a*b, t)); an outermost size of 0 (known at run time) stays 0. None if a size
    other than the outermost is unknown."""
    out: list[tuple[int, int]] = []
    for k, (d, st) in enumerate(digits):
        if d == 0 and k > 0:
            return None
        if d == 1:
            continue
        if out and out[-1][1] == d * st:
            prev = out[-1][0]
            out[-1] = (prev * d if prev else 0, st)
        else:
            out.append((d, st))
    return tuple(out) or ((1, 0),)


def _smaller(a: Shape, b: Shape) -> bool:
    """Whether an array of shape a has fewer elements than one of shape b, for every value of the dims."""
    ratio = _ratio(_size(b), _size(a))
    return ratio is not None and ratio > 1


def _ratio(b, a) -> Fraction | None:
    """b / a when it is a number (b a constant multiple of a), else None."""
    if not isinstance(a, _Dim) and not isinstance(b, _Dim):
        return Fraction(b, a) if a else None
    if not (isinstance(a, _Dim) and isinstance(b, _Dim)):
        return None
    pa, pb = dict(a.terms), dict(b.terms)
    if set(pa) != set(pb):
        return None
    ratios = {Fraction(pb[m]) / pa[m] for m in pa}
    return ratios.pop() if len(ratios) == 1 else None


def _size(shape: Shape) -> Dim:
    out: Dim = 1
    for d in shape:
        out = out * d
    return out


def _loads(e: Expr) -> list[Buffer]:
    out: list[Buffer] = []
    for x in walk(e):
        if isinstance(x, Load) and x.buf not in out:
            out.append(x.buf)
    return out


def _substitute(e: Expr, table: dict[Buffer, Expr], identity: tuple[Dim, ...]) -> Expr | None:
    """e with identity loads of the buffers in `table` replaced by their expressions; None if one of those
    buffers is read any other way."""
    bad = []

    def sub(x: Expr) -> Expr:
        if isinstance(x, Load) and x.buf in table:
            if tuple(x.strides) != identity or not x.affine or x.offset != 0:
                bad.append(x)
                return x
            return table[x.buf]
        return x

    out = rebuild(e, sub)
    return None if bad else out


def _epilogue_friendly(e: Expr) -> bool:
    """Loads in an epilogue are vectors along the columns: stride 1 (a row) or 0 (a broadcast) there."""
    for x in walk(e):
        if isinstance(x, (Index, Guard)):
            return False
        if isinstance(x, Load):
            col = x.strides[1] if len(x.strides) > 1 else 0
            if not x.affine or not (isinstance(col, int) and col in (0, 1)):
                return False
    return True


def _after_readers(kernels: list[Kernel], in_place: set[int]) -> None:
    """A kernel that overwrites an input in place runs after every kernel that reads the old value."""
    for idx in in_place:
        writer = next(k for k in kernels if any(b.index == idx for b in k.writes))
        readers = [i for i, k in enumerate(kernels) if k is not writer and any(b.index == idx for b in k.reads)]
        if readers and kernels.index(writer) < readers[-1]:
            kernels.remove(writer)
            kernels.insert(readers[-1], writer)  # readers[-1] shifted down by one: this is just after it


def _in_place_hazards(kernels: list[Kernel], in_place: set[int]) -> set[int]:
    """The buffers written in place where a read of the old value could see the new one: a kernel after the
    first write reads it, or a writing kernel reads it at another element than the one it writes (fusion keeps
    this true: it merges only kernels that read each other's buffers at the same point)."""
    bad = set()
    for idx in in_place:
        writers = [i for i, k in enumerate(kernels) if any(b.index == idx for b in k.writes)]
        for i, k in enumerate(kernels):
            if not any(b.index == idx for b in k.reads):
                continue
            if i not in writers:
                if i > writers[0]:
                    bad.add(idx)
            elif not _reads_in_place(k, idx):
                bad.add(idx)
    return bad


def _reads_in_place(k: Kernel, idx: int) -> bool:
    """Whether kernel k, which writes buffer `idx`, reads it only at the elements it writes, each before writing
    it: an elementwise loop's same-point reads, or a reduction's epilogue reading at its output point."""
    if isinstance(k, LoopKernel):
        return _only_pointwise(k, {b for b in k.reads if b.index == idx})
    if isinstance(k, ReduceKernel) and not k.scan:
        if any(isinstance(x, Load) and x.buf.index == idx for x in walk(k.body)):
            return False
        kept = [a for a in range(len(k.domain)) if a not in k.axes]
        out = dict(zip(kept, _rowmajor([k.domain[a] for a in kept]), strict=True))
        at_output = tuple(0 if a not in out or _is_one(k.domain[a]) else out[a] for a in range(len(k.domain)))
        return _loads_only_at(k.stores, {b for b in k.reads if b.index == idx}, at_output)
    return False


def fuse_epilogues(kernels: list[Kernel]) -> None:
    """Move elementwise kernels that read a matrix product's result element for element into its epilogue.

    A fused kernel must only read buffers written before the product; the product's own buffer is dropped
    when nothing else reads it."""
    i = 0
    while i < len(kernels):
        g = kernels[i]
        if not isinstance(g, GemmKernel) or g.batch:
            i += 1
            continue
        identity = (g.n, 1)
        changed = True
        while changed:
            changed = False
            table = {s.buf: s.value for s in g.stores}
            for j in range(i + 1, len(kernels)):
                lk = kernels[j]
                if not isinstance(lk, LoopKernel) or len(lk.domain) != 2:
                    continue
                if tuple(lk.domain) != (g.m, g.n) or not any(b in table for b in lk.reads):
                    continue
                # a kernel between the product and this one must not write what it reads or read what it writes
                between = kernels[i + 1:j]
                if any(set(k.writes) & set(lk.reads) for k in between):
                    continue
                if any(set(lk.writes) & set(k.reads) for k in between):
                    continue
                if set(lk.writes) & {g.a, g.b}:  # other threads may still be packing that operand
                    continue
                if any(s.buf.dtype != g.a.dtype for s in lk.stores):  # C is the product's dtype (a cast, a
                    continue  # comparison stays a loop of its own)
                new = []
                ok = True
                for s in lk.stores:
                    v = _substitute(s.value, table, identity)
                    if v is None or not _epilogue_friendly(v):
                        ok = False
                        break
                    new.append(Store(s.buf, v))
                if not ok:
                    continue
                # the epilogue runs tile by tile: what it writes it may read only at the point it writes (an
                # in-place update reading the parameter flipped or rolled was computed aside by the scheduler;
                # fused here with the copy back, it would read rows other tiles had already written)
                written = {st.buf for st in [*g.stores, *new]}
                if not _loads_only_at([*g.stores, *new], written, identity):
                    continue
                g.stores.extend(new)
                g.nodes = g.nodes + [x for x in lk.nodes if x not in g.nodes]
                g.reads = list(dict.fromkeys(g.reads + [b for b in lk.reads if b not in table]))
                del kernels[j]
                changed = True
                break
        # a temporary whose readers were all fused (the raw product, say) need not be stored at all
        readers = {b for k in kernels if k is not g for b in k.reads}
        kept = [s for s in g.stores if not (s.buf.kind == "temp" and s.buf not in readers)]
        # C (the last store's buffer) holds the partial sums while K is summed in blocks: an epilogue that reads
        # C's buffer (an in-place update reads the parameter's old value) would read those sums instead. Then the
        # raw product keeps its own buffer as C, unless one K block covers K.
        if kept and kept[-1].buf in g.reads and not (isinstance(g.k, int) and g.k <= GEMM_KC):
            g.c_scratch = g.stores[0] not in kept  # kept only as C: its final value is never stored
            kept = [s for s in kept if s is not g.stores[0]] + [g.stores[0]]
        g.stores = kept or g.stores[-1:]
        i += 1


def _identity_strides(shape: Shape) -> tuple[Dim, ...]:
    return tuple(0 if _is_one(d) else s for d, s in zip(shape, _rowmajor(shape), strict=True))


def _only_pointwise(k: LoopKernel, bufs: set[Buffer], loads: list[Load] | None = None) -> bool:
    """Whether every load of k from one of `bufs` reads the element at the point it computes (the store's index):
    affine, unchecked, no offset, the domain's row-major strides. `loads`: k's loads, where the caller has them."""
    strides = _identity_strides(k.domain)
    return _loads_only_at(k.stores, bufs, strides) if loads is None else _pointwise_loads(loads, bufs, strides)


def _loads_of(stores: list[Store]) -> list[Load]:
    return [x for x in walk_all(s.value for s in stores) if isinstance(x, Load)]


def _loads_only_at(stores: list[Store], bufs: set[Buffer], strides: tuple) -> bool:
    """Whether every load in `stores` from one of `bufs` is affine, unchecked, without offset, with `strides`."""
    return _pointwise_loads(_loads_of(stores), bufs, strides)


def _pointwise_loads(loads, bufs: set[Buffer], strides: tuple) -> bool:
    for x in loads:
        if x.buf in bufs:
            if not x.affine or x.gathers or not (isinstance(x.offset, int) and x.offset == 0):
                return False
            if len(x.strides) != len(strides) or any(_norm(a) != _norm(b)
                                                     for a, b in zip(x.strides, strides, strict=True)):
                return False
    return True


def _mergeable(a: LoopKernel, b: LoopKernel, loads_a: list[Load], loads_b: list[Load]) -> bool:
    """Whether loop kernel `a` can run inside `b` (its stores first, at each point): the same domain and store
    dtypes (so one thread partition and one vector width), and what one writes the other reads only at the
    same point (so the thread that computes a point sees the values it needs, and no other thread's)."""
    if len(a.domain) == 0 or len(a.domain) != len(b.domain):
        return False
    if any(_norm(x) != _norm(y) for x, y in zip(a.domain, b.domain, strict=True)):
        return False
    if {s.buf.dtype for s in a.stores} != {s.buf.dtype for s in b.stores}:
        return False
    wa, wb = set(a.writes), set(b.writes)
    return _only_pointwise(b, wa | wb, loads_b) and _only_pointwise(a, wa | wb, loads_a)


# At most this many graph nodes in one fused loop: LLVM's passes over one function grow faster than its length (a
# 1000-layer elementwise chain fused whole took 14 s in LLVM), and past a few dozen operations a longer loop body
# saves no more memory traffic than it costs in registers. An LSTM step's cell fuses ~15.
MAX_FUSED_NODES = 128


def fuse_loops(kernels: list[Kernel]) -> None:
    """Merge elementwise loop kernels over the same domain into one loop with several stores (loop fusion): a
    kernel moves down to the next one it can merge with when no kernel in between touches what it writes or
    writes what it reads. A scan step's gate nonlinearities, cell update, stored intermediates and carry
    copies then run as one pass over (N, H) instead of a dozen, with a dozen fewer barriers per step. Each
    element is computed by the same expression as before: results are bitwise the same on any thread count."""
    loads: dict[int, list[Load]] = {}  # each loop's loads, kept across merges (walking a merged chain is long)

    def loads_of(k: LoopKernel) -> list[Load]:
        if id(k) not in loads:
            loads[id(k)] = _loads_of(k.stores)
        return loads[id(k)]

    i = 0
    while i < len(kernels):
        a = kernels[i]
        if not isinstance(a, LoopKernel):
            i += 1
            continue
        ra, wa = set(a.reads), set(a.writes)
        target = None
        for j in range(i + 1, len(kernels)):
            b = kernels[j]
            if (isinstance(b, LoopKernel) and len(a.nodes) + len(b.nodes) <= MAX_FUSED_NODES
                    and _mergeable(a, b, loads_of(a), loads_of(b))):
                target = j
                break
            if (set(b.writes) & (ra | wa)) or (set(b.reads) & wa):
                break  # a kills the move
        if target is None:
            i += 1
            continue
        b = kernels[target]
        memo: dict[int, Expr] = {}
        b.stores = _forward_stores(a.stores, b.stores, b.domain, memo)
        # the merged loop's loads: a's, and b's that were not forwarded (rebuilt where their indices were)
        merged = [*loads_of(a), *(memo[id(x)] for x in loads_of(b))]
        loads[id(b)] = list({id(x): x for x in merged if isinstance(x, Load)}.values())
        loaded = {x.buf for x in loads[id(b)]}
        b.reads = [r for r in dict.fromkeys(a.reads + b.reads) if r in loaded]
        had = set(a.nodes)
        b.nodes = a.nodes + [x for x in b.nodes if x not in had]
        del kernels[i]


def _drop_stores(k: LoopKernel, bufs: set[Buffer]) -> set[Buffer]:
    """Remove k's stores to `bufs` (buffers nothing reads) where that cannot change what the others compute: the
    emitter computes a value where the first store that uses it (itself or forwarded) stands, so a dropped store's
    value is computed at its next use instead, which must come before any store to a buffer it reads. Returns the
    buffers whose store had to stay."""
    kept: set[Buffer] = set()
    i = 0
    while i < len(k.stores):
        st = k.stores[i]
        if st.buf not in bufs:
            i += 1
            continue
        loads = {x.buf for x in walk(st.value) if isinstance(x, Load)}
        later = k.stores[i + 1:]
        use = next((j for j, o in enumerate(later) if any(x is st.value for x in walk(o.value))), len(later))
        if any(o.buf in loads for o in later[:use]):
            kept.add(st.buf)
            i += 1
            continue
        del k.stores[i]
    return kept


def _forward_stores(first: list[Store], then: list[Store], domain: tuple,
                    memo: dict[int, Expr] | None = None) -> list[Store]:
    """The stores of two loops merged into one (`first`'s, then `then`'s) with each read in `then` of a value an
    earlier store wrote at the same point replaced by that value itself (store-to-load forwarding): it stays in
    a register instead of being read back (from an address LLVM cannot prove unaliased by the stores in
    between). The same value, so the same bits.

    A sub-expression object stands for one value, computed where the first store that uses it stands (the
    emitter computes it once). So `first`'s stores, a loop already in its final form (merged before, maybe),
    are kept as they are, and `then`'s are rebuilt once, with one memo: a sub-expression they share keeps one
    object (it meant one value in `then`), while one shared with `first` that reads a buffer written since is a
    new object reading the new value (`then` ran after all of `first`). Rebuilding `first` again after a store
    had overwritten what its shared sub-expressions read would give those a later value: a step's carry
    update read another carry already updated in the same pass."""
    identity = _identity_strides(domain)
    table: dict[Buffer, Expr] = {}

    def note(buf: Buffer, value: Expr) -> None:
        if value.dtype == buf.dtype:
            table[buf] = value
        else:
            table.pop(buf, None)

    def forwarded(x: Expr) -> Expr:
        if isinstance(x, Load) and x.affine and not x.gathers and isinstance(x.offset, int) and x.offset == 0:
            v = table.get(x.buf)
            if v is not None and v.dtype == x.dtype and len(x.strides) == len(identity) and all(
                    _norm(a) == _norm(b) for a, b in zip(x.strides, identity, strict=True)):
                return v
        return x

    for st in first:
        note(st.buf, st.value)
    out = list(first)
    memo = {} if memo is None else memo  # each expression of `then` by id: what it became
    for st in then:
        value = rebuild(st.value, forwarded, memo)
        out.append(Store(st.buf, value))
        note(st.buf, value)
    return out


GEMM_KC = 256  # graphc.codegen.gemm.default_config's K block: a longer K passes partial sums through C


def schedule(graph: Graph, updates: dict[int, int] | None = None, fuse: bool = True) -> Program:
    s = Scheduler(graph)
    program = s.build(updates, fuse)
    if s.hazards:  # those updates computed aside and copied over the old values once nothing reads them
        hazards = s.hazards
        s = Scheduler(graph)
        program = s.build(updates, fuse, via_copy=hazards)
        if s.hazards:
            raise CompileError(f"in-place updates at outputs {sorted(s.hazards)} would read values they overwrite; "
                               "this is a graphc bug: please report it with the graph")
    return program
