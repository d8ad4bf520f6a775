"""Scheduling: group a lowered graph's nodes into kernels.

Which nodes get a buffer (are *materialized*) decides the fusion: matrix products, reductions and outputs
always do; an elementwise node does when several kernels would otherwise recompute something expensive, when
it is broadcast into a bigger kernel and is costly, or when a matrix product needs it as an operand.
Everything else is inlined into the kernels that read it, through index maps (broadcasts, transposes and
size-1 reshapes are strides, not copies). Then elementwise kernels that read a matrix product's result
element for element become that product's epilogue (bias, activation, the activation's derivative)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy

from graphc.codegen.kernels import (
    Acc,
    Apply,
    Buffer,
    Const,
    DimValue,
    Dropout,
    Expr,
    GemmKernel,
    Index,
    Kernel,
    Load,
    LoopKernel,
    ReduceKernel,
    Store,
    walk,
)
from graphc.errors import CompileError
from graphc.ir.graph import Graph
from graphc.ir.node import Node, topo_order, users
from graphc.ir.shapes import Dim, Shape, free_symbols
from graphc.ops.pointwise import ElementwiseOp

AxisMap = tuple[int | None, ...]  # for each axis of a node: the kernel loop axis it follows, or None (index 0)

EXPENSIVE = {"exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "erf", "pow", "powc", "sqrt", "div"}
MAX_INLINE_DEPTH = 48


@dataclass
class Program:
    """The scheduled program: buffers, kernels in execution order, and the signature."""

    graph: Graph
    buffers: list[Buffer]
    kernels: list[Kernel]
    inputs: list[Buffer]  # one per graph.inputs (signature order)
    outputs: list[Buffer]  # one per graph.outputs (may repeat)
    symbols: list[sympy.Symbol]  # run-time dims, in the order the native code reads them
    consts: dict[int, np.ndarray] = field(default_factory=dict)  # const buffer index -> data

    def __str__(self) -> str:
        lines = []
        for b in self.buffers:
            lines.append(f"{b!r}: {b.kind} {b.dtype}{list(b.shape)}")
        for k in self.kernels:
            lines.append(str(k))
        return "\n".join(lines)


def _rowmajor(shape: Shape) -> tuple[Dim, ...]:
    out: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        out.append(acc)
        acc = acc * d
    return tuple(reversed(out))


def _is_one(d: Dim) -> bool:
    return isinstance(d, int) and d == 1


def _squeeze_map(src: Shape, dst: Shape) -> list[int | None] | None:
    """For a reshape that only adds or drops size-1 dims: for each src axis, the dst axis it equals (or None
    for a dropped 1). None when the reshape really regroups elements."""
    a = [i for i, d in enumerate(src) if not _is_one(d)]
    b = [i for i, d in enumerate(dst) if not _is_one(d)]
    if len(a) != len(b) or any(src[i] != dst[j] for i, j in zip(a, b, strict=True)):
        return None
    out: list[int | None] = [None] * len(src)
    for i, j in zip(a, b, strict=True):
        out[i] = j
    return out


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
        self.ndomain = 0

    # ------------------------------------------------------------------ buffers
    def new_buffer(self, label: str, shape: Shape, dtype: str, kind: str, node: Node | None) -> Buffer:
        b = Buffer(len(self.buffers), label, tuple(shape), dtype, kind, node)
        self.buffers.append(b)
        return b

    def label(self, n: Node) -> str:
        return n.name or f"{n.op.name}{self.position[id(n)]}"

    # ------------------------------------------------------------------ materialization
    def decide(self) -> set[int]:
        mat: set[int] = {id(o) for o in self.graph.outputs if o.op.name not in ("input", "param")}
        cost: dict[int, int] = {}
        depth: dict[int, int] = {}
        for n in self.order:
            kind = n.op.kind
            if kind in ("reduce", "contract"):
                mat.add(id(n))
            if kind == "contract":
                for x in n.inputs:
                    if not _in_memory(x, mat):
                        mat.add(id(x))
            if n.op.name == "reshape" and _squeeze_map(n.inputs[0].shape, n.shape) is None:
                if not _in_memory(n.inputs[0], mat):
                    mat.add(id(n.inputs[0]))
        # costs and depths of inline regions, deciding on the way who must be materialized
        for n in self.order:
            if n.op.kind == "source" or id(n) in mat:
                cost[id(n)], depth[id(n)] = 0, 0
                continue
            own = 8 if n.op.name in EXPENSIVE else 1
            c = own + sum(cost[id(i)] for i in n.inputs)
            d = 1 + max((depth[id(i)] for i in n.inputs), default=0)
            readers = self.users[id(n)]
            bigger = any(self._size_gt(u.shape, n.shape) for u in readers if u.op.kind != "reduce")
            if d > MAX_INLINE_DEPTH or (c >= 8 and (len(readers) > 1 or bigger)):
                mat.add(id(n))
                c, d = 0, 0
            cost[id(n)], depth[id(n)] = c, d
        return mat

    @staticmethod
    def _size_gt(a: Shape, b: Shape) -> bool:
        return len(a) > len(b) or any(not _is_one(x) and _is_one(y) for x, y in zip(a[::-1], b[::-1], strict=False))


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

    def _load(self, n: Node, buf: Buffer, amap: AxisMap, ndomain: int) -> Load:
        strides: list[Dim] = [0] * ndomain
        for k, s in zip(amap, _rowmajor(n.shape), strict=True):
            if k is not None:
                strides[k] = strides[k] + s
        return Load(buf, tuple(strides), buf.dtype)

    def _expr(self, n: Node, amap: AxisMap) -> Expr:
        nd = self.ndomain
        buf = self.buf_of.get(id(n))
        if buf is not None:
            return self._load(n, buf, amap, nd)
        op = n.op
        name = op.name
        if name == "constant":
            arr = n.attrs["value"].array
            if arr.size == 1:
                return Const(arr.reshape(()).item(), n.dtype)
            return self._load(n, self._const_buffer(n), amap, nd)
        if name == "iota":
            return Index(amap[0], n.dtype) if amap[0] is not None else Const(0, n.dtype)
        if name == "dim":
            return DimValue(n.attrs["expr"], n.dtype)
        if name in ("stop_gradient",):
            return self.expr(n.inputs[0], amap)
        if name == "broadcast_to" or name == "broadcast_like":
            x = n.inputs[0]
            off = n.ndim - x.ndim
            sub = tuple(None if _is_one(x.shape[k]) else amap[k + off] for k in range(x.ndim))
            return self.expr(x, sub)
        if name == "transpose":
            perm = n.attrs["perm"]
            sub: list[int | None] = [None] * n.ndim
            for k, p in enumerate(perm):
                sub[p] = amap[k]
            return self.expr(n.inputs[0], tuple(sub))
        if name == "reshape":
            x = n.inputs[0]
            sq = _squeeze_map(x.shape, n.shape)
            if sq is not None:
                return self.expr(x, tuple(None if j is None else amap[j] for j in sq))
            xb = self._storage(x)
            return self._load(n, xb, amap, nd)
        if name == "dropout":
            x, key = n.inputs[:2]
            flat: list[Dim] = [0] * nd
            for k, s in zip(amap, _rowmajor(n.shape), strict=True):
                if k is not None:
                    flat[k] = flat[k] + s
            keep = self.expr(n.inputs[2], ()) if len(n.inputs) == 3 else None
            return Dropout(self.expr(x, amap), self.expr(key, ()), n.attrs["salt"], n.attrs.get("keep_prob"),
                           tuple(flat), n.dtype, keep)
        if isinstance(op, ElementwiseOp):
            args = []
            for pos, x in enumerate(n.inputs):
                if pos in op.shape_inputs:  # read for its shape only: not an argument of the formula
                    continue
                off = n.ndim - x.ndim
                sub = tuple(None if _is_one(x.shape[k]) else amap[k + off] for k in range(x.ndim))
                args.append(self.expr(x, sub))
            attrs = tuple(sorted((k, v) for k, v in n.attrs.items()))
            return Apply(op, attrs, tuple(args), n.dtype)
        raise CompileError(f"cannot inline {name} ({n.type_str}) at {n.source.where()} into a kernel")

    def _const_buffer(self, n: Node) -> Buffer:
        b = self.buf_of.get(id(n))
        if b is None:
            b = self.new_buffer(f"const{len(self.consts)}", n.shape, n.dtype, "const", n)
            self.consts[b.index] = np.ascontiguousarray(n.attrs["value"].array)
            self.buf_of[id(n)] = b
        return b

    def _storage(self, x: Node) -> Buffer:
        """The buffer holding x's elements in row-major order (following reshape views)."""
        while x.op.name == "reshape" and id(x) not in self.buf_of:
            x = x.inputs[0]
        if x.op.name == "constant":
            return self._const_buffer(x)
        b = self.buf_of.get(id(x))
        if b is None:
            raise CompileError(f"internal: {x.op.name} at {x.source.where()} was expected in memory")
        return b

    # ------------------------------------------------------------------ kernels
    def build(self, updates: dict[int, int] | None = None) -> Program:
        """`updates` maps an output position to a signature position: that output is written in place into the
        input's own buffer (a parameter update), after every kernel that reads the old value."""
        g = self.graph
        for leaf in g.inputs:
            self.buf_of[id(leaf)] = self.new_buffer(leaf.name, leaf.shape, leaf.dtype, leaf.op.name, leaf)
        self.mat = self.decide()
        updates = dict(updates or {})
        outputs: list[Buffer] = []
        out_ids: dict[int, Buffer] = {}
        in_place: set[int] = set()
        copies: list[tuple[Buffer, Node]] = []
        for pos, o in enumerate(g.outputs):
            if pos in updates:
                leaf = g.inputs[updates[pos]]
                if leaf.shape != o.shape or leaf.dtype != o.dtype:
                    raise CompileError(f"update of {leaf.name!r} ({leaf.type_str}) with a {o.type_str} value")
                target = self.buf_of[id(leaf)]
                if o is leaf:
                    outputs.append(target)
                    continue
                if id(o) in out_ids or o.op.name in ("input", "param"):
                    raise CompileError(f"the new value of {leaf.name!r} must be computed, and not also be "
                                       "another output or update")
                in_place.add(target.index)
                outputs.append(target)
                if self.users[id(o)]:
                    # other nodes read the new value (momentum's velocity feeds the parameter's update): keep it
                    # in its own buffer and copy it over the old one once nothing reads the old one
                    self.mat.add(id(o))
                    copies.append((target, o))
                    continue
                out_ids[id(o)] = target
                continue
            if id(o) in out_ids:
                outputs.append(out_ids[id(o)])
                continue
            b = self.new_buffer(f"out{len(out_ids)}", o.shape, o.dtype, "output", o)
            out_ids[id(o)] = b
            outputs.append(b)
        # an output that only reshapes a computed value takes that value's storage: no copy kernel
        aliased: set[int] = set()
        for o in g.outputs:
            b = out_ids.get(id(o))
            if b is None or b.kind != "output" or o.op.name != "reshape":
                continue
            src = o.inputs[0]
            if (id(src) in self.mat and id(src) not in out_ids and src.op.kind in ("reduce", "contract", "elementwise")
                    and all(u is o for u in self.users[id(src)])):
                out_ids[id(src)] = b
                aliased.add(id(o))
        for n in self.order:
            if id(n) in aliased:
                self.buf_of[id(n)] = out_ids[id(n)]
                continue
            if id(n) not in self.mat and id(n) not in out_ids:
                continue
            if n.op.name in ("input", "param") and id(n) not in out_ids:
                continue
            buf = out_ids.get(id(n)) or self.new_buffer(self.label(n), n.shape, n.dtype, "temp", n)
            self._kernel_for(n, buf)
            if n.op.name not in ("input", "param"):  # an output that is a leaf is a copy; the leaf stays
                self.buf_of[id(n)] = buf
        for target, o in copies:
            src = self.buf_of[id(o)]
            load = Load(src, _rowmajor(o.shape), src.dtype)
            self.kernels.append(LoopKernel(f"k{len(self.kernels)}_update_{target.label}", reads=[src], nodes=[],
                                           domain=o.shape, stores=[Store(target, load)]))
        _after_readers(self.kernels, in_place)
        fuse_epilogues(self.kernels)
        symbols = sorted(set().union(*(free_symbols(b.shape) for b in self.buffers)) if self.buffers else set(),
                         key=str)
        inputs = [self.buf_of[id(leaf)] for leaf in g.inputs]
        return Program(g, self.buffers, self.kernels, inputs, outputs, symbols, self.consts)

    def _kernel_for(self, n: Node, buf: Buffer) -> None:
        self.fused, self.fused_ids = [], set()
        self._make_kernel(n, buf)
        k = self.kernels[-1]
        k.nodes = [x for x in self.fused if x is not n] + [n]

    def _make_kernel(self, n: Node, buf: Buffer) -> None:
        name = f"k{len(self.kernels)}_{n.op.name}"
        if n.op.kind == "contract":
            a, b = n.inputs
            ta, tb = n.attrs["ta"], n.attrs["tb"]
            m, nn = n.shape
            k = a.shape[0] if ta else a.shape[1]
            kern = GemmKernel(name, a=self._storage(a), b=self._storage(b), ta=ta, tb=tb, m=m, n=nn, k=k,
                              lda=a.shape[1], ldb=b.shape[1], stores=[Store(buf, Acc(n.dtype))])
            kern.reads = [kern.a, kern.b]
            self.kernels.append(kern)
            return
        if n.op.kind == "reduce":
            x = n.inputs[0]
            self.ndomain = x.ndim
            self.exprs = {}
            body = self.expr(x, tuple(range(x.ndim)))
            kern = ReduceKernel(name, domain=x.shape, axes=n.attrs["axes"], op=n.op.name, body=body,
                                stores=[Store(buf, Acc(n.dtype))])
            kern.reads = _loads(body)
            self.kernels.append(kern)
            return
        self.ndomain = n.ndim
        self.exprs = {}
        # a node defined here is computed, not loaded from the buffer it is about to fill (leaves are copied)
        was = self.buf_of.pop(id(n), None) if n.op.kind != "source" else None
        value = self.expr(n, tuple(range(n.ndim)))
        if was is not None:
            self.buf_of[id(n)] = was
        kern = LoopKernel(name, domain=n.shape, stores=[Store(buf, value)])
        kern.reads = _loads(value)
        self.kernels.append(kern)


def _in_memory(x: Node, mat: set[int]) -> bool:
    """Whether x will sit in memory as a row-major array: a leaf, a materialized node, or a reshape of one."""
    while x.op.name == "reshape":
        x = x.inputs[0]
    return x.op.name in ("input", "param") or id(x) in mat or (x.op.name == "constant" and x.shape != ())


def _loads(e: Expr) -> list[Buffer]:
    out: list[Buffer] = []
    for x in walk(e):
        if isinstance(x, Load) and x.buf not in out:
            out.append(x.buf)
    return out


def _substitute(e: Expr, table: dict[Buffer, Expr], identity: tuple[Dim, ...]) -> Expr | None:
    """e with identity loads of the buffers in `table` replaced by their expressions; None if one of those
    buffers is read any other way."""
    memo: dict[int, Expr] = {}
    for x in walk(e):
        if isinstance(x, Load) and x.buf in table:
            if tuple(x.strides) != identity:
                return None
            memo[id(x)] = table[x.buf]
        elif isinstance(x, Apply):
            memo[id(x)] = Apply(x.op, x.attrs, tuple(memo.get(id(a), a) for a in x.args), x.dtype)
        elif isinstance(x, Dropout):
            keep = memo.get(id(x.keep), x.keep) if x.keep is not None else None
            memo[id(x)] = Dropout(memo.get(id(x.x), x.x), memo.get(id(x.key), x.key), x.salt, x.keep_prob,
                                  x.flat_strides, x.dtype, keep)
    return memo.get(id(e), e)


def _epilogue_friendly(e: Expr) -> bool:
    """Loads in an epilogue are vectors along the columns: stride 1 (a row) or 0 (a broadcast) there."""
    for x in walk(e):
        if isinstance(x, (Dropout, Index)):
            return False
        if isinstance(x, Load):
            col = x.strides[1] if len(x.strides) > 1 else 0
            if not (isinstance(col, int) and col in (0, 1)):
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


def fuse_epilogues(kernels: list[Kernel]) -> None:
    """Move elementwise kernels that read a matrix product's result element for element into its epilogue.

    A fused kernel must only read buffers written before the product; the product's own buffer is dropped
    when nothing else reads it."""
    i = 0
    while i < len(kernels):
        g = kernels[i]
        if not isinstance(g, GemmKernel):
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
                g.stores.extend(new)
                g.nodes = g.nodes + [x for x in lk.nodes if x not in g.nodes]
                g.reads = list(dict.fromkeys(g.reads + [b for b in lk.reads if b not in table]))
                del kernels[j]
                changed = True
                break
        # a temporary whose readers were all fused (the raw product, say) need not be stored at all
        readers = {b for k in kernels if k is not g for b in k.reads}
        kept = [s for s in g.stores if not (s.buf.kind == "temp" and s.buf not in readers)]
        g.stores = kept or g.stores[-1:]
        i += 1


def schedule(graph: Graph, updates: dict[int, int] | None = None) -> Program:
    return Scheduler(graph).build(updates)
