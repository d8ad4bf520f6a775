"""gc.scan: a loop in the graph.

`scan(step, init, xs)` traces the user's `step(carry, x_t) -> (carry, y_t)` ONCE into a **body**: a small
hash-consed graph whose leaves are `scan_arg` placeholders, in this order: the carries, the per-step slices of
the xs, and the captures (tensors of the enclosing graph the step closed over, e.g. weights, or anything
computed from them alone: that work is hoisted out of the loop by construction). The enclosing graph holds one
`scan` node (a tuple: it has no value of its own) whose inputs are init carries + xs + captures, and
`scan_output[index=k]` projections of it:

    k in [0, nc)                 the final carries
    k in [nc, nc+ny)             the stacked ys, (T,) + y_t's shape, in index order (also when reverse)
    k in [nc+ny, nc+ny+nc)       the carry history: the carry each step received, (T,) + carry shape in index
                                 order; with checkpoint=k only every k-th one (in processing order), (ceil(T/k),)
    k = nc+ny+nc + p             a saved intermediate: the value of body.order()[p] at every step, (T,) + its
                                 shape in index order (not with checkpoint=k: that scan recomputes instead)

The history and the saved intermediates are what the gradient reads (a projection nobody uses costs nothing
natively; the reference computes the intermediates by running the loop again, on first use). The body's
placeholders are canonical (index, level, shape, dtype), level being one more than the deepest scan nested
inside, so two traces of the same step give the same body, the same scan node, and the same structural digest
(what the compile cache keys on).

The gradient of a scan is a reverse scan whose body is the gradient of the forward body, built by ONE call of
the reverse-mode sweep (`graphc.autodiff.grad.vjp`) over the body with a seed per body output; gradients of the
captures (weights) accumulate in the reverse carry.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from graphc.errors import DTypeError, GradError, GraphcError, ShapeError
from graphc.ir.dims import ceil_div, dim_min
from graphc.ir.node import Node, capture_source, derived_from, topo_order
from graphc.ir.shapes import (
    FLOAT_DTYPES,
    as_dim,
    as_dtype,
    as_shape,
    dims_equal,
    eval_dim,
    eval_shape,
    fmt_type,
)
from graphc.ops.core import Op, Tensor, apply, as_tensor, constant, register

_temp_levels = itertools.count(1)


# ------------------------------------------------------------------------------------------------ the IR


class ScanArg(Op):
    """A body's placeholder (a carry, a step's slice of an xs, or a capture). Not in the op table: it exists
    only inside bodies, whose scan node binds it."""

    name = "scan_arg"
    kind = "source"
    leaf = True  # inside its body: bound by the loop, never computed
    differentiable = False
    hidden_attrs = ("shape", "dtype")

    def infer(self, inputs, attrs):
        return attrs["shape"], attrs["dtype"]

    def reference(self, node, args, ctx):
        raise GraphcError(f"a scan's placeholder ({node.type_str}) was evaluated outside its loop: a tensor built "
                          f"inside a scan's step function was used outside it (at {node.source.where()}); return "
                          "it from the step instead")

    def vjp(self, node, g):
        return ()


SCAN_ARG = ScanArg()


def _arg(index: int, level: int, shape, dtype: str) -> Tensor:
    return apply(SCAN_ARG, (), index=index, level=level, shape=tuple(shape), dtype=dtype)


class Body:
    """A traced step: `args` (scan_arg nodes: carries, x slices, captures) and `outputs` (new carries, then the
    ys that are not None). Equal bodies are the same nodes (hash-consing); the digest is structural."""

    __slots__ = ("args", "outputs", "n_carry", "n_x", "_digest", "_order")

    def __init__(self, args: Sequence[Node], outputs: Sequence[Node], n_carry: int, n_x: int):
        self.args = tuple(args)
        self.outputs = tuple(outputs)
        self.n_carry = n_carry
        self.n_x = n_x
        self._digest: str | None = None
        self._order: list[Node] | None = None

    @property
    def captures(self) -> tuple[Node, ...]:
        return self.args[self.n_carry + self.n_x:]

    def order(self) -> list[Node]:
        if self._order is None:
            self._order = topo_order(self.outputs)
        return self._order

    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256(f"{self.n_carry}|{self.n_x}".encode())
            for n in (*self.args, *self.outputs):
                h.update(n.digest().encode())
            self._digest = h.hexdigest()
        return self._digest

    def _key(self):
        return (tuple(map(id, self.args)), tuple(map(id, self.outputs)), self.n_carry, self.n_x)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Body) and self._key() == other._key()

    def __repr__(self) -> str:
        return f"body<{self.digest()[:12]}>"


def substitute(outputs: Sequence[Node], mapping: dict[int, Node]) -> list[Node]:
    """The graph of `outputs` with the nodes in `mapping` (id -> node of the same type) replaced, rebuilt
    bottom-up; nodes that depend on nothing replaced are kept as they are. Source lines are preserved."""
    new: dict[int, Node] = dict(mapping)
    for n in topo_order(outputs):
        if id(n) in new:
            continue
        ins = [new.get(id(i), i) for i in n.inputs]
        if all(a is b for a, b in zip(ins, n.inputs, strict=True)):
            continue
        with derived_from(n.source, n.source.made_by):
            new[id(n)] = Tensor.make(n.op, ins, n.shape, n.dtype, dict(n.attrs), n.meta)
    return [new.get(id(o), o) for o in outputs]


def _level(order: Sequence[Node]) -> int:
    inner = [n.attrs["level"] for n in order if n.op is SCAN]
    return 1 + max(inner, default=-1)


def _make_body(fn: Callable, carry_types, x_types, what: str):
    """Trace `fn(carries, xs) -> (new carries, ys with None)` once over temporary placeholders, find what it
    closed over, and canonicalize. Returns (body, captures (outer nodes), y_present mask, raw outputs)."""
    tmp_level = -next(_temp_levels)  # unique while tracing: nested traces never share a placeholder
    carry_args = [_arg(i, tmp_level, s, d) for i, (s, d) in enumerate(carry_types)]
    x_args = [_arg(len(carry_types) + i, tmp_level, s, d) for i, (s, d) in enumerate(x_types)]
    new_carry, ys = fn(carry_args, x_args)
    present = [y is not None for y in ys]
    outs = list(new_carry) + [y for y in ys if y is not None]
    order = topo_order(outs)
    mine = {id(a) for a in carry_args + x_args}
    dep: set[int] = set()
    for n in order:
        if id(n) in mine or any(id(i) in dep for i in n.inputs):
            dep.add(id(n))
    for n in order:  # a placeholder of another scan (or of an enclosing trace) is not a capture of ours
        if n.op is SCAN_ARG and id(n) not in mine and n.attrs["level"] < 0 and id(n) in dep:
            raise GraphcError(f"{what}: uses a tensor built inside another scan's step function")
    captures: list[Node] = []
    seen: set[int] = set()

    def capture(n: Node) -> None:
        if id(n) in seen or id(n) in dep:
            return
        if not n.inputs and not getattr(n.op, "leaf", False) and n.op is not SCAN_ARG:
            return  # constants, iota: stay inside the body
        seen.add(id(n))
        captures.append(n)

    for n in order:
        if id(n) in dep:
            for i in n.inputs:
                capture(i)
    for o in outs:
        capture(o)
    level = _level([n for n in order if id(n) in dep])
    nc, nx = len(carry_args), len(x_args)
    canon = [_arg(i, level, a.shape, a.dtype) for i, a in enumerate(carry_args + x_args)]
    canon += [_arg(nc + nx + j, level, c.shape, c.dtype) for j, c in enumerate(captures)]
    mapping = {id(a): c for a, c in zip(carry_args + x_args + captures, canon, strict=True)}
    body_outs = substitute(outs, mapping)
    _follow_unnamed_layers(order, dep, captures, mapping)
    return Body(canon, body_outs, nc, nx), captures, present, outs


def _follow_unnamed_layers(order: list[Node], dep: set[int], captures: list[Node], mapping: dict) -> None:
    """An unnamed layer built in the step noted what it computed on its parameter (graphc.nn.layers
    `note_unnamed_use`, which refuses two such layers on one parameter); those were the traced nodes, which the
    body replaces: the notes follow them into the body."""
    noted = [c for c in captures if c.meta.get("unnamed_layer_uses")]
    if not noted:
        return
    import weakref

    traced = [n for n in order if id(n) in dep]
    image = {id(a): b for a, b in zip(traced, substitute(traced, mapping), strict=True)}
    for p in noted:
        uses = p.meta["unnamed_layer_uses"]
        new: list[tuple] = []
        for u in uses:
            inside = [image[id(n)] for n in (r() for r in u) if n is not None and id(n) in image]
            if inside:  # a layer of this step: what it computes in the body (one that another traced twice
                u = tuple(weakref.ref(n) for n in inside)  # the same way is the same nodes: one use)
            if not any(len(v) == len(u) and all(a() is b() for a, b in zip(v, u, strict=True)) for v in new):
                new.append(u)
        uses[:] = new


make_body = _make_body  # the tracer, for the passes that rebuild a body (graphc.passes.loops)


class Scan(Op):
    """The loop: a tuple node (no value of its own; read it through scan_output projections)."""

    name = "scan"
    kind = "loop"
    multi_output = True
    hidden_attrs = ("body",)

    def infer(self, inputs, attrs):
        body: Body = attrs["body"]
        nc, nx = body.n_carry, body.n_x
        if len(inputs) != len(body.args):
            raise ShapeError(f"scan takes {len(body.args)} inputs (carries, xs, captures), got {len(inputs)}")
        for k, (i, a) in enumerate(zip(inputs, body.args, strict=True)):
            want = a.shape if not nc <= k < nc + nx else (attrs["length"], *a.shape)
            if i.dtype != a.dtype or len(i.shape) != len(want) or not all(
                    dims_equal(p, q) for p, q in zip(i.shape, want, strict=True)):
                raise ShapeError(f"scan input {k} is {i.type_str}, its body expects {fmt_type(want, a.dtype)}")
        return (), "bool"

    def output_types(self, node: Node) -> list[tuple[tuple, str]]:
        body: Body = node.attrs["body"]
        nc = body.n_carry
        T = node.attrs["length"]
        ck = node.attrs["checkpoint"]
        H = T if ck is None else ceil_div(T, ck)
        out = [(o.shape, o.dtype) for o in body.outputs[:nc]]
        out += [((T, *o.shape), o.dtype) for o in body.outputs[nc:]]
        out += [((H, *a.shape), a.dtype) for a in body.args[:nc]]
        return out

    def output_type(self, node: Node, k: int) -> tuple[tuple, str]:
        """The type of output k, saved intermediates included (see the module docstring)."""
        types = self.output_types(node)
        if 0 <= k < len(types):
            return types[k]
        order = node.attrs["body"].order()
        p = k - len(types)
        if not 0 <= p < len(order) or node.attrs["checkpoint"] is not None:
            raise ShapeError(f"scan_output index {k} is out of range (the scan has {len(types)} outputs"
                             + (" and stores no intermediates: it is checkpointed)" if p >= 0 else ")"))
        n = order[p]
        return (node.attrs["length"], *n.shape), n.dtype

    def reference(self, node, args, ctx):
        why = self.check_dims(node, ctx.dims)
        if why is not None:
            raise ShapeError(why)
        return run_scan(node, args, ctx)

    def check_dims(self, node, env) -> str | None:
        """Why the loop cannot run at these dims (None when it can): a symbolic length that is negative (a
        fori_loop whose upper bound is below its lower one)."""
        T = node.attrs["length"]
        if isinstance(T, int):
            return None
        n = eval_dim(T, env)
        if n >= 0:
            return None
        dims = ", ".join(f"{k} = {env[k]}" for k in sorted(T.free_symbols, key=str))
        return (f"scan at {node.source.where()}: its length {T} is {n} for {dims}; a loop runs a length >= 0 "
                "of steps (a fori_loop's upper bound must not be below its lower one)")

    def vjp(self, node, g):
        raise GradError("internal: a scan's gradient is taken through vjp_multi")

    def vjp_multi(self, node: Node, gs: list[Node | None], vjp, needed: Sequence[bool]) -> list[Node | None]:
        """`vjp(seeds, wrt)` is the reverse sweep (graphc.autodiff.grad.vjp), passed in: ops sit below autodiff.
        `needed[i]`: whether input i's cotangent is wanted (the reverse body computes only those)."""
        return scan_vjp(node, gs, vjp, needed)

    def loop_rule(self, node):
        from graphc.ir.lowering import LoopRule

        body: Body = node.attrs["body"]
        return LoopRule(body, body.n_carry, body.n_x, node.attrs["length"], node.attrs["reverse"],
                        node.attrs["checkpoint"])

    def needs_memory(self, node):
        """The xs (sliced per step) and the captures (read by the body's kernels) are arrays in memory; the
        initial carries are copied into the carry's storage, so they may be computed inline."""
        return tuple(range(node.attrs["body"].n_carry, len(node.inputs)))



class ScanOutput(Op):
    """Output `index` of a scan node (see the module docstring for the numbering)."""

    name = "scan_output"
    kind = "loop"
    projection = True

    def infer(self, inputs, attrs):
        (s,) = inputs
        if s.op is not SCAN:
            raise ShapeError(f"scan_output reads a scan node, got {s.op.name}")
        return SCAN.output_type(s, attrs["index"])

    def reference(self, node, args, ctx):
        value, k = args[0], node.attrs["index"]
        return value[k] if k < len(value) else value.saved(k - len(value))

    def vjp(self, node, g):
        raise GradError("internal: a scan_output's gradient is collected by its scan (grad's projection hook)")

    def loop_rule(self, node):
        return SCAN.loop_rule(node.inputs[0])


SCAN = register(Scan())
SCAN_OUTPUT = register(ScanOutput())


def output(node: Node, k: int) -> Tensor:
    return apply(SCAN_OUTPUT, (node,), index=k)


def saved_output(node: Node, n: Node) -> Tensor:
    """The stacked per-step values of body node `n` of scan `node` (what the gradient stores)."""
    body: Body = node.attrs["body"]
    return output(node, len(SCAN.output_types(node)) + body.order().index(n))


# ------------------------------------------------------------------------------------------------ reference


def run_body(body: Body, values: Sequence[np.ndarray], ctx) -> list[np.ndarray]:
    """One step of the body in numpy: the outputs for these placeholder values."""
    vals = run_body_all(body, values, ctx)
    return [np.asarray(vals[id(o)], dtype=ctx.dtype(o.dtype)) for o in body.outputs]


def run_body_all(body: Body, values: Sequence[np.ndarray], ctx) -> dict[int, np.ndarray]:
    """One step of the body in numpy: the value of every body node (by id)."""
    vals = {id(a): v for a, v in zip(body.args, values, strict=True)}
    for n in body.order():
        if id(n) in vals:
            continue
        try:
            out = n.op.reference(n, [vals[id(i)] for i in n.inputs], ctx)
        except GraphcError:
            raise
        except Exception as e:
            raise GraphcError(f"evaluate: {n.op.name} ({n.type_str}) inside a scan's step at {n.source.where()} "
                              f"failed: {type(e).__name__}: {e}") from e
        vals[id(n)] = out if getattr(n.op, "multi_output", False) else np.asarray(out)
    return vals


class ScanValue(tuple):
    """A scan's outputs in the reference evaluator; its saved intermediates (`saved(p)`: body.order()[p] at every
    step, index order) are computed on first use, by running the loop again."""

    def __new__(cls, items, replay):
        v = super().__new__(cls, items)
        v._replay, v._saved = replay, None
        return v

    def saved(self, p: int) -> np.ndarray:
        if self._saved is None:
            self._saved = self._replay()
        return self._saved[p]


def _replay(node: Node, args: list, ctx) -> list[np.ndarray]:
    body: Body = node.attrs["body"]
    nc, nx = body.n_carry, body.n_x
    T = eval_dim(node.attrs["length"], ctx.dims)
    xs, caps = args[nc:nc + nx], args[nc + nx:]
    carry = [np.asarray(c, dtype=ctx.dtype(a.dtype)) for c, a in zip(args[:nc], body.args[:nc], strict=True)]
    order = body.order()
    per: list[list[np.ndarray]] = [[] for _ in order]
    for t in (range(T - 1, -1, -1) if node.attrs["reverse"] else range(T)):
        vals = run_body_all(body, carry + [x[t] for x in xs] + list(caps), ctx)
        carry = [np.asarray(vals[id(o)], dtype=ctx.dtype(o.dtype)) for o in body.outputs[:nc]]
        for q, n in enumerate(order):
            per[q].append(vals[id(n)])
    out = []
    for q, n in enumerate(order):
        rows = per[q][::-1] if node.attrs["reverse"] else per[q]
        if getattr(n.op, "multi_output", False):
            out.append(None)
        elif rows:
            out.append(np.stack([np.asarray(r, dtype=ctx.dtype(n.dtype)) for r in rows]))
        else:
            out.append(np.zeros((0, *eval_shape(n.shape, ctx.dims)), dtype=ctx.dtype(n.dtype)))
    return out


def run_scan(node: Node, args: list, ctx) -> tuple:
    body: Body = node.attrs["body"]
    nc, nx = body.n_carry, body.n_x
    ny = len(body.outputs) - nc
    ck = node.attrs["checkpoint"] or 1
    T = eval_dim(node.attrs["length"], ctx.dims)
    xs, caps = args[nc:nc + nx], args[nc + nx:]
    for k, x in enumerate(xs):
        if x.shape[0] != T:
            raise ShapeError(f"scan at {node.source.where()}: xs {k} has {x.shape[0]} steps, the length is {T}")
    carry = [np.asarray(c, dtype=ctx.dtype(a.dtype)) for c, a in zip(args[:nc], body.args[:nc], strict=True)]
    steps = range(T - 1, -1, -1) if node.attrs["reverse"] else range(T)
    ys: list[list[np.ndarray]] = [[] for _ in range(ny)]
    hist: list[list[np.ndarray]] = [[] for _ in range(nc)]
    for j, t in enumerate(steps):
        if j % ck == 0:
            for k in range(nc):
                hist[k].append(carry[k])
        outs = run_body(body, carry + [x[t] for x in xs] + list(caps), ctx)
        carry = outs[:nc]
        for k in range(ny):
            ys[k].append(outs[nc + k])
    if node.attrs["reverse"]:
        ys = [y[::-1] for y in ys]
        if ck == 1:
            hist = [h[::-1] for h in hist]
    types = SCAN.output_types(node)

    def stacked(parts, k):
        shape, dtype = types[k]
        if not parts:
            return np.zeros(eval_shape(shape, ctx.dims), dtype=ctx.dtype(dtype))
        return np.stack(parts).astype(ctx.dtype(dtype), copy=False)

    items = tuple(carry) + tuple(stacked(y, nc + k) for k, y in enumerate(ys)) + tuple(
        stacked(h, nc + ny + k) for k, h in enumerate(hist))
    return ScanValue(items, lambda: _replay(node, args, ctx))


# ------------------------------------------------------------------------------------------------ the DSL


def _flatten(tree, what: str, allow_none: bool):
    """Tensors (or numbers) in nested tuples, lists, named tuples and dicts (keys in sorted order, as JAX's
    pytrees) -> (leaves, structure)."""
    if isinstance(tree, dict):
        keys = sorted(tree)
        parts = [_flatten(tree[k], what, allow_none) for k in keys]
        return [x for p in parts for x in p[0]], (dict, tuple(keys), [p[1] for p in parts])
    if isinstance(tree, (tuple, list)):
        parts = [_flatten(t, what, allow_none) for t in tree]
        leaves = [x for p in parts for x in p[0]]
        return leaves, (type(tree), None, [p[1] for p in parts])
    if tree is None:
        if not allow_none:  # a carry or xs part that is None holds no tensor (an empty pytree, as in JAX)
            return [], "none"
        return [None], None
    if isinstance(tree, Node):
        return [tree], "leaf"
    if isinstance(tree, (int, float, np.ndarray, np.generic)) and not isinstance(tree, bool):
        return [as_tensor(tree)], "leaf"
    raise GraphcError(f"{what}: expected a tensor or tuples, lists, named tuples or dicts of tensors, got "
                      f"{type(tree).__name__}")


def _raw_leaves(tree) -> list:
    """The leaves of `tree` as given (Python numbers not yet tensors), in _flatten's order."""
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in _raw_leaves(tree[k])]
    if isinstance(tree, (tuple, list)):
        return [v for t in tree for v in _raw_leaves(t)]
    return [] if tree is None else [tree]


def _number_hint(numbers: list, want: str | None = None) -> str:
    """Where an initial carry was a Python number: it made an int32 or float32 scalar (JAX's is weakly typed and
    takes the step's dtype; graphc's carry keeps the dtype it starts with). `want`: the dtype the step returned."""
    if not numbers:
        return ""
    said = ", ".join(f"{v!r} ({'an' if dt.startswith('int') else 'a'} {dt} scalar)" for _, v, dt in numbers)
    k, v, _ = numbers[0]
    dt = want or ("float64" if isinstance(v, float) else "int64")
    return (f"; the initial carry holds the Python number {said}: give it the dtype the step computes in, e.g. "
            f"gc.full((), {v!r}, {dt!r}) or np.{dt}({v!r})")


def _unflatten(struct, leaves: list):
    it = iter(leaves)

    def build(s):
        if s == "none":
            return None
        if s == "leaf" or s is None:
            return next(it)
        typ, keys, parts = s
        items = [build(p) for p in parts]
        if keys is not None:
            return dict(zip(keys, items, strict=True))
        return typ(*items) if hasattr(typ, "_fields") else typ(items)  # a named tuple takes its fields

    return build(struct)


def _paths(struct, prefix: str = "") -> list[str]:
    """Each leaf's place in the structure, as an index expression: ['h'], [1][0], or '' for a lone tensor."""
    if struct == "none":
        return []
    if struct == "leaf" or struct is None:
        return [prefix]
    _, keys, parts = struct
    names = [repr(k) for k in keys] if keys is not None else [str(i) for i in range(len(parts))]
    return [q for n, p in zip(names, parts, strict=True) for q in _paths(p, f"{prefix}[{n}]")]


def _shape_of(struct) -> str:
    """The structure as the user wrote it, tensors as T: {'h': T, 's': (T, T)}."""
    if struct == "leaf":
        return "T"
    if struct is None or struct == "none":
        return "None"
    typ, keys, parts = struct
    inner = [_shape_of(p) for p in parts]
    if keys is not None:
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(keys, inner, strict=True)) + "}"
    if typ is list:
        return "[" + ", ".join(inner) + "]"
    name = typ.__name__ if hasattr(typ, "_fields") else ""
    return f"{name}({', '.join(inner)}{',' if len(inner) == 1 else ''})"


def _same_struct(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return a[0] is b[0] and a[1] == b[1] and len(a[2]) == len(b[2]) and all(
        _same_struct(x, y) for x, y in zip(a[2], b[2], strict=True))


def full(shape, fill_value, dtype: str = "float32") -> Tensor:
    """`fill_value` in every element of `shape` (symbolic dims allowed: sized by whatever input binds them)."""
    from graphc.ops.movement import broadcast_to

    shape = as_shape(shape, "gc.full")
    dtype = as_dtype(dtype, "gc.full")
    if not isinstance(fill_value, (bool, int, float, np.number, np.bool_)):
        raise GraphcError(f"gc.full: fill_value must be a number, got {fill_value!r}")
    z = constant(fill_value, dtype)
    return broadcast_to(z, shape) if shape else z


def zeros(shape, dtype: str = "float32") -> Tensor:
    """Zeros of `shape` (symbolic dims allowed: `gc.zeros(("N", 128))` is sized by whatever input binds N), e.g.
    the initial carry of a recurrent network."""
    return full(shape, 0, dtype)


def ones(shape, dtype: str = "float32") -> Tensor:
    """Ones of `shape` (symbolic dims allowed)."""
    return full(shape, 1, dtype)


def zeros_like(x) -> Tensor:
    """Zeros of x's shape and dtype."""
    from graphc.ops.pointwise import full_like

    return full_like(x, 0)


def ones_like(x) -> Tensor:
    """Ones of x's shape and dtype."""
    from graphc.ops.pointwise import full_like

    return full_like(x, 1)


def _length(xs: list[Node], length, where: str):
    T = None
    if length is not None:
        T = as_dim(length, f"scan at {where}: length")
    for k, x in enumerate(xs):
        if x.ndim == 0:
            raise ShapeError(f"scan at {where}: xs {k} ({x.name or x.op.name}: {x.type_str}) is a scalar; xs are "
                             "sliced along their leading (time) axis")
        if T is None:
            T = x.shape[0]
        elif not dims_equal(T, x.shape[0]):
            first = "length" if length is not None else f"xs 0 ({xs[0].name or xs[0].op.name}: {xs[0].type_str})"
            raise ShapeError(f"scan at {where}: xs {k} ({x.name or x.op.name}: {x.type_str}) has {x.shape[0]} "
                             f"steps but {first} gives {T}; every xs must have the same leading (time) dim")
    if T is None:
        raise ShapeError(f"scan at {where}: the number of steps is unknown: pass xs (sliced along their leading "
                         "axis) or length=")
    return T


def scan(step: Callable, init, xs=None, length=None, reverse: bool = False, checkpoint: int | None = None):
    """A loop in the graph, as jax.lax.scan: `step(carry, x_t) -> (carry, y_t)` runs once per step t over the
    leading (time) axis of `xs`, and `scan` returns `(final carry, ys)` with the y_t stacked along a new leading
    axis. carry, xs and y_t may be tensors or nested tuples, lists, named tuples and dicts of them (dict keys in
    sorted order, as JAX's pytrees); y_t may be None (then ys is None).
    `length` is the number of steps (an int or a symbolic dim like "T"; needed when xs is None).
    `reverse=True` runs from the last step to the first (ys stay in index order). `checkpoint=k` makes the
    gradient store every k-th carry and recompute the others (less memory, one more forward pass).

    `step` is called ONCE, with placeholder tensors, to build the loop body; tensors it closes over (weights)
    become inputs of the loop, and whatever it computes from them alone runs once, before the loop."""
    src = capture_source()
    where = src.where()
    if not callable(step):
        raise GraphcError(f"scan at {where}: step must be a function (carry, x_t) -> (carry, y_t), got "
                          f"{type(step).__name__}")
    if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer))
                                   or not 1 <= checkpoint < 2**31):
        raise GraphcError(f"scan at {where}: checkpoint must be a positive int below 2**31 (store every k-th "
                          f"carry), got {checkpoint!r}")
    if not isinstance(reverse, (bool, np.bool_)):
        raise GraphcError(f"scan at {where}: reverse must be True or False, got {reverse!r}")
    reverse = bool(reverse)
    init_leaves, init_struct = _flatten(init, f"scan at {where}: init", False)
    numbers = [(k, v, leaf.dtype) for k, (v, leaf) in enumerate(zip(_raw_leaves(init), init_leaves, strict=True))
               if isinstance(v, (int, float)) and not isinstance(v, (bool, np.generic))]
    if xs is None:
        x_leaves, x_struct = [], None
    else:
        x_leaves, x_struct = _flatten(xs, f"scan at {where}: xs", False)
    T = _length(x_leaves, length, where)
    if checkpoint is not None and isinstance(T, int):
        # a segment longer than the sequence recomputes the whole sequence, as k = T does: its buffers are
        # k steps long, so a k past T would only cost memory
        checkpoint = min(int(checkpoint), max(T, 1))
    y_struct: list = []

    def fn(carry_args, x_args):
        carry_in = _unflatten(init_struct, carry_args)
        x_in = None if xs is None else _unflatten(x_struct, x_args)
        try:
            res = step(carry_in, x_in)
        except DTypeError as err:
            if not numbers:
                raise
            raise DTypeError(f"{err}{_number_hint(numbers)}") from None
        if not isinstance(res, tuple) or len(res) != 2:
            raise GraphcError(f"scan at {where}: step must return a pair (new carry, y_t), got "
                              f"{type(res).__name__}" + (f" of length {len(res)}" if isinstance(res, tuple) else ""))
        new_c, y = res
        c_leaves, c_struct = _flatten(new_c, f"scan at {where}: the carry step returns", False)
        if not _same_struct(c_struct, init_struct) or len(c_leaves) != len(carry_args):
            raise GraphcError(f"scan at {where}: step returns a carry of another structure than init: "
                              f"{_shape_of(c_struct)} for {_shape_of(init_struct)}; return the carry as it came in")
        out_c = []
        for k, (c, a, i0) in enumerate(zip(c_leaves, carry_args, init_leaves, strict=True)):
            if not isinstance(c, Node):
                c = as_tensor(c, a)
            same = c.ndim == a.ndim and all(dims_equal(p, q) for p, q in zip(c.shape, a.shape, strict=True))
            if not same or c.dtype != a.dtype:
                label = i0.name or i0.op.name
                path = _paths(init_struct)[k]
                path = f" (init{path})" if path else ""
                raise ShapeError(
                    f"scan at {where}: carry {k}{path} goes into step as {fmt_type(a.shape, a.dtype)} (init {label} at "
                    f"{i0.source.where()}) but step returns {c.type_str} (built at {c.source.where()}); a carry "
                    "must keep its shape and dtype from step to step"
                    + (_number_hint([n for n in numbers if n[0] == k], c.dtype) if c.dtype != a.dtype else ""))
            out_c.append(c)
        if y is None:
            y_struct.append(None)
            return out_c, []
        y_leaves, ys_ = _flatten(y, f"scan at {where}: y_t", True)
        y_struct.append(ys_)
        return out_c, [as_tensor(v) if v is not None else None for v in y_leaves]

    carry_types = [(c.shape, c.dtype) for c in init_leaves]
    x_types = [(x.shape[1:], x.dtype) for x in x_leaves]
    node, present = _build(fn, init_leaves, x_leaves, carry_types, x_types, T, reverse, checkpoint, src)
    nc = len(init_leaves)
    finals = [output(node, k) for k in range(nc)]
    ys_nodes: list = []
    k = nc
    for p in present:
        if p:
            ys_nodes.append(output(node, k))
            k += 1
        else:
            ys_nodes.append(None)
    carry_out = _unflatten(init_struct, finals)
    ys_out = None if y_struct[0] is None else _unflatten(y_struct[0], ys_nodes)
    return carry_out, ys_out


def _build(fn, init_leaves, x_leaves, carry_types, x_types, T, reverse, checkpoint, src):
    body, captures, present, _ = _make_body(fn, carry_types, x_types, f"scan at {src.where()}")
    inputs = list(init_leaves) + list(x_leaves) + list(captures)
    with derived_from(src, src.made_by):
        node = apply(SCAN, inputs, body=body, length=T, reverse=bool(reverse),
                     checkpoint=None if checkpoint in (None, 1) else int(checkpoint), level=_level(body.order()))
    return node, present


# ------------------------------------------------------------------------------------------------ gradient


def fori_loop(lower, upper, body: Callable, init, *, checkpoint: int | None = None):
    """jax.lax.fori_loop: `body(i, carry) -> carry` for i = lower, ..., upper - 1 (an int32 scalar tensor), and the
    final carry. The bounds are ints or dims (`"T"`, or a dim expression); the loop is a gc.scan of upper - lower
    steps whose carry holds the index beside the user's, so it compiles to one native loop, needs no array of
    indices, and differentiates as a scan (`checkpoint=` as there)."""
    from graphc.ops.sources import dim_value

    where = capture_source().where()
    if not callable(body):
        raise GraphcError(f"fori_loop at {where}: body must be a function (i, carry) -> carry, got "
                          f"{type(body).__name__}")
    if all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in (lower, upper)):
        lo, n = int(lower), int(upper) - int(lower)
        if n < 0:
            raise GraphcError(f"fori_loop at {where}: upper ({int(upper)}) is below lower ({lo})")
        if not (-2**31 <= lo and lo + n <= 2**31):
            raise GraphcError(f"fori_loop at {where}: the indices {lo}..{lo + n - 1} do not fit int32")
        if n == 0:
            return init
        first = constant(lo, "int32")
    else:
        lo, hi = (as_dim(b, f"fori_loop at {where}: bound") for b in (lower, upper))
        n = hi - lo
        if getattr(n, "is_negative", False):
            raise GraphcError(f"fori_loop at {where}: upper ({hi}) is below lower ({lo})")
        leaves, _ = _flatten(init, f"fori_loop at {where}: init", False)
        if isinstance(lo, int):
            first = constant(lo, "int32")
        elif leaves:  # a dim as a value needs a tensor whose shape binds it
            first = dim_value(lo, leaves[0], "int32")
        else:
            raise GraphcError(f"fori_loop at {where}: a symbolic lower bound needs a carry whose shape binds it")

    def step(carry, _):
        i, c = carry
        return (i + 1, body(i, c)), None

    (_, carry), _ = scan(step, (first, init), length=n, checkpoint=checkpoint)
    return carry


def scan_vjp(node: Node, gs: list[Node | None], vjp, needed: Sequence[bool] | None = None) -> list[Node | None]:
    """The cotangents of a scan's inputs given those of its outputs (None: zero): one reverse scan."""

    body: Body = node.attrs["body"]
    nc, nx = body.n_carry, body.n_x
    ny = len(body.outputs) - nc
    caps = node.inputs[nc + nx:]
    ck = node.attrs["checkpoint"]
    sweep = vjp

    def vjp(seeds, wrt):  # noqa: F811 - the body's sweeps: the captures are the loop's inputs, each a variable
        return sweep(seeds, wrt, leaves=caps)  # of its own (sum(W)'s share reaches W outside the loop)

    reach = {id(n) for n in body.order()}
    fc = [k for k in range(nc) if body.args[k].dtype in FLOAT_DTYPES]
    needed = [True] * len(node.inputs) if needed is None else list(needed)
    fx = [j for j in range(nx) if body.args[nc + j].dtype in FLOAT_DTYPES and id(body.args[nc + j]) in reach
          and needed[nc + j]]
    fw = [j for j, w in enumerate(caps) if w.dtype in FLOAT_DTYPES and id(body.args[nc + nx + j]) in reach
          and needed[nc + nx + j]]
    gy = [k for k in range(ny) if gs[nc + k] is not None]
    gh = [k for k in range(nc) if gs[nc + ny + k] is not None and k in fc]
    hist = [output(node, nc + ny + k) for k in range(nc)]
    nfc = len(fc)

    def grads_of_step(c_t, x_t, ct_c, gy_t):
        """One sweep over the forward body at (c_t, x_t): the cotangents of c_t, x_t (float) and captures."""
        outs = substitute(body.outputs, {id(a): v for a, v in zip(body.args, [*c_t, *x_t, *caps], strict=True)})
        seeds = [(outs[k], ct) for k, ct in zip(fc, ct_c, strict=True)]
        seeds += [(outs[nc + k], g) for k, g in zip(gy, gy_t, strict=True)]
        wrt = [c_t[k] for k in fc] + [x_t[j] for j in fx] + [caps[j] for j in fw]
        g = vjp(seeds, wrt)
        return g[:nfc], g[nfc:nfc + len(fx)], g[nfc + len(fx):], outs

    if ck is None:
        ct_init, acc, ct_xs = _reverse_scan(node, gs, body, fc, fx, fw, gy, gh, hist, vjp)
    else:
        ct_init, acc, ct_xs = _checkpointed_vjp(node, gs, body, fc, fx, fw, gy, gh, hist, vjp)
    out: list[Node | None] = [None] * len(node.inputs)
    for i, k in enumerate(fc):
        out[k] = ct_init[i]
    for i, j in enumerate(fx):
        out[nc + j] = ct_xs[i]
    for i, j in enumerate(fw):
        out[nc + nx + j] = acc[i]
    return out


def _hoistable(body: Body, j: int) -> list[Node] | None:
    """The uses of capture j when each is a product x·W (W 2-D) or a bias added to the rows of a 2-D value
    (x + b, b 1-D), x a per-step value: then dW = Σ_t x_tᵀ·g_t is ONE product after the loop over the stacked x_t
    and g_t (the uses' cotangents), and db = Σ_t Σ_rows g_t ONE column sum over the stacked g_t, not an add per
    step into a carry (a per-step sum over the batch would also tie the loop's rows together: see
    codegen.kernels.split_rows). None when the capture is used any other way."""
    from graphc.ops.linalg import MATMUL
    from graphc.ops.pointwise import ADD

    arg = body.args[body.n_carry + body.n_x + j]
    if arg.ndim not in (1, 2) or any(o is arg for o in body.outputs):
        return None
    step_args = {id(a) for a in body.args[:body.n_carry + body.n_x]}
    per_step: set[int] = set()
    uses = []
    for n in body.order():
        if id(n) in step_args or any(id(i) in per_step for i in n.inputs):
            per_step.add(id(n))
        if any(i is arg for i in n.inputs):
            if arg.ndim == 2:
                ok = (n.op is MATMUL and n.inputs[1] is arg and n.inputs[0] is not arg and not n.attrs["ta"]
                      and not n.attrs["tb"] and n.inputs[0].ndim == 2 and id(n.inputs[0]) in per_step)
            else:
                x = n.inputs[0] if n.inputs[1] is arg else n.inputs[1]
                ok = (n.op is ADD and x is not arg and n.ndim == 2 and x.ndim == 2 and x.shape == n.shape
                      and id(x) in per_step and dims_equal(n.shape[1], arg.shape[0]))
            if not ok:
                return None
            uses.append(n)
    return uses or None


def _cheap(n: Node) -> bool:
    """Worth recomputing in the reverse body rather than storing per step: movement (slices, reshapes,
    broadcasts, gathers) and elementwise formulas without a transcendental function or a division."""
    kind = getattr(n.op, "kind", None)
    return kind in ("movement", "identity") or (kind == "elementwise" and getattr(n.op, "cost", 8) <= 1)


def _size(n: Node) -> float:
    """Elements of n, symbolic dims counted as 1024 (to compare what storing costs)."""
    out = 1.0
    for d in n.shape:
        out *= float(eval_dim(d, dict.fromkeys(getattr(d, "free_symbols", ()), 1024)))
    return out


def _residuals(body: Body, fc, fx, fw_acc, products, gy, vjp) -> list[Node]:
    """The forward body's values the reverse body reads, to store per step (the gradient's residuals): one
    sweep over the body itself finds the forward nodes its gradient reads directly; cheap ones among them are
    recomputed from their inputs instead (which are then read), and loop arguments are at hand anyway (the
    carry history, the xs, the captures). The left operands of hoisted x·W products are stored too."""
    from graphc.ops.pointwise import ADD

    nc, nx = body.n_carry, body.n_x
    tmp = -next(_temp_levels)
    seeds = [(body.outputs[k], _arg(k, tmp, body.outputs[k].shape, body.outputs[k].dtype)) for k in fc]
    seeds += [(body.outputs[nc + k], _arg(nc + k, tmp, body.outputs[nc + k].shape, body.outputs[nc + k].dtype))
              for k in gy]
    wrt = [body.args[k] for k in fc] + [body.args[nc + j] for j in fx]
    wrt += [body.args[nc + nx + j] for j in fw_acc] + [m for _, m in products]
    if not seeds:
        return []
    g = vjp(seeds, wrt)
    fwd = {id(n) for n in body.order()}
    front: list[Node] = [o for o in g if id(o) in fwd]
    for n in topo_order(g):
        if id(n) not in fwd:
            front += [i for i in n.inputs if id(i) in fwd]
    lefts = [m.inputs[0] for _, m in products if m.op is not ADD]  # a hoisted product's stacked left operand
    front += lefts
    args = {id(a) for a in body.args}
    forced = {id(x) for x in lefts}

    def stored(n: Node) -> bool:  # at hand in the reverse body without storing it
        return id(n) in args or not n.inputs or getattr(n.op, "multi_output", False)

    def needs(n: Node) -> dict[int, Node]:
        """What recomputing cheap n reads that is not at hand: the first non-cheap values above it."""
        out: dict[int, Node] = {}
        stack, seen_ = list(n.inputs), set()
        while stack:
            x = stack.pop()
            if id(x) in seen_ or stored(x):
                continue
            seen_.add(id(x))
            if _cheap(x) and id(x) not in forced:
                stack.extend(x.inputs)
            else:
                out[id(x)] = x
        return out

    saved: dict[int, Node] = {}
    seen: set[int] = set()
    for n in front:
        if id(n) in seen or stored(n):
            continue
        seen.add(id(n))
        if not _cheap(n) or id(n) in forced:
            saved[id(n)] = n
            continue
        # recompute a cheap value when what it reads costs no more to store than itself (a slice of a stored
        # product, x·W + h·U + b from one stored sum rather than two stored products)
        new = {k: v for k, v in needs(n).items() if k not in saved}
        if sum(_size(v) for v in new.values()) > _size(n):
            saved[id(n)] = n
        else:
            saved.update(new)
    pos = {id(n): q for q, n in enumerate(body.order())}
    return sorted(saved.values(), key=lambda n: pos[id(n)])


def _reverse_scan(node, gs, body, fc, fx, fw, gy, gh, hist, vjp):
    """The default gradient: one reverse scan over the stored carries and the forward body's stored
    intermediates (see _residuals: the reverse body does not run the forward step again). Its body is the
    sweep over the forward body at (c_t, x_t) (one call of `vjp`), with the stored values read in place of
    their recomputation; the weights' gradients accumulate in its carry, except those of weights used only as
    x·W: those are one product after the loop (see _hoistable)."""
    from graphc.ops.linalg import matmul
    from graphc.ops.movement import reshape
    from graphc.ops.pointwise import ADD, add, full_like
    from graphc.ops.reduce import sum as reduce_sum

    nc, nx = body.n_carry, body.n_x
    init, xs, caps = node.inputs[:nc], node.inputs[nc:nc + nx], node.inputs[nc + nx:]
    T = node.attrs["length"]
    nfc = len(fc)
    empty = isinstance(T, int) and T == 0  # no steps: nothing to stack (an accumulator stays zero)
    hoist = {j: None if empty else _hoistable(body, j) for j in fw}
    fw_acc = [j for j in fw if hoist[j] is None]
    products = [(j, m) for j in fw if hoist[j] is not None for m in hoist[j]]
    arg_pos = {id(a): k for k, a in enumerate(body.args)}
    base = len(SCAN.output_types(node))
    # cotangents given for stored intermediates (a second derivative through a first one's reverse scan)
    g_saved = [(k, g) for k, g in enumerate(gs) if k >= base and g is not None]
    saved = [] if empty else _residuals(body, fc, fx, fw_acc, products, gy, vjp)
    seeded = [body.order()[k - base] for k, _ in g_saved]
    saved_ids = {id(n) for n in saved}
    y_slot: list[int] = []  # rev's ys: g_x then g_m, each the index of its stacked output

    def rev(rc, rx):
        ct_c, acc = rc[:nfc], rc[nfc:]
        c_t, x_t = rx[:nc], rx[nc:nc + nx]
        q = nc + nx
        gy_t, gh_t = rx[q:q + len(gy)], rx[q + len(gy):q + len(gy) + len(gh)]
        q += len(gy) + len(gh)
        s_t, gs_t = rx[q:q + len(saved)], rx[q + len(saved):]
        mapping = {id(a): v for a, v in zip(body.args, [*c_t, *x_t, *caps], strict=True)}
        sub = substitute([*body.outputs, *(m for _, m in products), *saved, *seeded], mapping)
        no, npr = len(body.outputs), len(products)
        outs, ms = sub[:no], sub[no:no + npr]
        images, seeded_images = sub[no + npr:no + npr + len(saved)], sub[no + npr + len(saved):]
        seeds = [(outs[k], ct) for k, ct in zip(fc, ct_c, strict=True)]
        seeds += [(outs[nc + k], g) for k, g in zip(gy, gy_t, strict=True)]
        seeds += list(zip(seeded_images, gs_t, strict=True))
        wrt = [c_t[k] for k in fc] + [x_t[j] for j in fx] + [caps[j] for j in fw_acc] + ms
        g = vjp(seeds, wrt)  # the one sweep over the body
        # read the stored intermediates instead of recomputing them (the recomputation is then dead code)
        g = substitute(g, {id(i): v for i, v in zip(images, s_t, strict=True)})
        a, b = nfc, nfc + len(fx)
        g_c, g_x, g_w, g_m = list(g[:a]), list(g[a:b]), g[b:b + len(fw_acc)], g[b + len(fw_acc):]
        for i, k in enumerate(gh):
            g_c[fc.index(k)] = add(g_c[fc.index(k)], gh_t[i])
        carry = g_c + [add(s, w) for s, w in zip(acc, g_w, strict=True)]
        # a cotangent that is also another output (dz as dxp and as the product's cotangent) is stacked once
        ys: list[Node] = []
        for v in g_x + list(g_m):
            if not any(v is u for u in ys):
                ys.append(v)
            y_slot.append(next(i for i, u in enumerate(ys) if u is v))
        return carry, ys

    r_init = [gs[k] if gs[k] is not None else full_like(init[k], 0.0) for k in fc]
    r_init += [full_like(caps[j], 0.0) for j in fw_acc]
    ny = len(body.outputs) - nc
    r_xs = hist + list(xs) + [gs[nc + k] for k in gy] + [gs[nc + ny + k] for k in gh]
    r_xs += [saved_output(node, n) for n in saved] + [g for _, g in g_saved]
    r_ctypes = [(r.shape, r.dtype) for r in r_init]
    r_xtypes = [(x.shape[1:], x.dtype) for x in r_xs]
    rnode, _ = _build(rev, r_init, r_xs, r_ctypes, r_xtypes, T, not node.attrs["reverse"], None, node.source)
    ct_init = [output(rnode, i) for i in range(nfc)]
    acc_out = {j: output(rnode, nfc + i) for i, j in enumerate(fw_acc)}
    ny0 = len(r_init)
    ct_xs = [output(rnode, ny0 + y_slot[i]) for i in range(len(fx))]
    g_stack = [output(rnode, ny0 + y_slot[len(fx) + i]) for i in range(len(products))]
    for (j, m), gm in zip(products, g_stack, strict=True):
        if m.op is ADD:  # a bias: its cotangents summed over every step's rows
            db = reduce_sum(reshape(gm, (T * m.shape[0], m.shape[1])), axis=0)
            acc_out[j] = db if j not in acc_out else add(acc_out[j], db)
            continue
        a = m.inputs[0]
        k = arg_pos.get(id(a))
        if k is None:
            assert id(a) in saved_ids
            p = saved_output(node, a)
        else:
            p = hist[k] if k < nc else xs[k - nc]
        rows = T * a.shape[0]
        dw = matmul(reshape(p, (rows, a.shape[1])), reshape(gm, (rows, m.shape[1])), ta=True)
        acc_out[j] = dw if j not in acc_out else add(acc_out[j], dw)
    return ct_init, [acc_out[j] for j in fw], ct_xs


def _checkpointed_vjp(node, gs, body, fc, fx, fw, gy, gh, hist, vjp):
    """checkpoint=k: the forward stored the carry entering every k-th step (processing order). The gradient
    is a reverse scan over those segments; each step of it recomputes its segment's k carries with a forward
    scan (a loop of k steps) from the stored one and then runs the k reverse steps (a second loop): the graph
    holds the body twice, not 2k times, whatever k. Steps past the end (k need not divide T) are masked: their
    carry passes through and they contribute nothing.

    Each reverse step differentiates the body at its recomputed carry, a slice of the inner loop's xs: the
    sweep sees only the step's own use of the weights (the recomputation's share reaches them through the
    carry's cotangent), while the gradient stays a function of the recomputed carries, so a second derivative
    flows through the recomputation too. A cotangent of the stored carries themselves (`gh`: a
    second derivative through a first one's reverse scan, which reads them) joins the carry's cotangent at
    its segment's start."""
    from graphc.ops.gather import take
    from graphc.ops.movement import broadcast_to, reshape
    from graphc.ops.pointwise import add, cast, full_like, less, minimum, where
    from graphc.ops.sources import dim_value, iota

    nc, nx = body.n_carry, body.n_x
    k = node.attrs["checkpoint"]
    T = node.attrs["length"]
    rev_fwd = node.attrs["reverse"]
    init, xs, caps = node.inputs[:nc], node.inputs[nc:nc + nx], node.inputs[nc + nx:]
    nfc = len(fc)
    S = ceil_div(T, k)
    # a segment's length: k, or T when the sequence is shorter (a symbolic T is only known at run time; the
    # inner loop and what it stores are sized by min(k, T), not by k)
    kk = k if isinstance(T, int) else dim_min(k, T)
    gys = [gs[nc + q] for q in gy]
    # the time index of processing position j: j (forward) or T-1-j (reverse); the sequences the segment
    # reads (xs, gys) stay whole, as captures, and each step gathers its row
    seqs = list(xs) + gys
    anchor = hist[0]
    ny = len(body.outputs) - nc
    ghs = [gs[nc + ny + q] for q in gh]  # (S, ...): the stored carries' cotangents, in hist's order
    Tn = dim_value(T, seqs[0] if seqs else anchor, "int32") if not isinstance(T, int) else constant(T, "int32")
    Kn = dim_value(kk, anchor, "int32") if not isinstance(kk, int) else constant(kk, "int32")
    ramp = iota(kk, "int32", of=anchor)

    def seg(rc, rx):
        ct_c, acc = rc[:nfc], rc[nfc:nfc + len(fw)]
        s = rc[-1]  # the segment's index, counting down
        c0 = rx[:nc]
        gh_s = rx[nc:nc + len(gh)]
        # the segment's k processing positions -> their time indices, and whether each is inside the sequence
        pos = s * Kn + ramp
        valid = less(pos, Tn)
        jc = minimum(pos, Tn - constant(1, "int32"))
        t_of = (Tn - constant(1, "int32") - jc) if rev_fwd else jc

        # the segment as a scan of its own: kk steps (a loop, not k copies of the body: compile time does not grow
        # with k) from the stored carry over the segment's rows, steps past the end passing the carry through.
        # Its gradient is the stored-residual reverse scan of any scan (scan_vjp), for k steps: the forward
        # runs twice in all (once in the forward pass, once here), and the weights' gradient over the segment
        # is one product over its k steps where the body allows (_hoistable). A second derivative flows back
        # through this recomputation like through any scan.
        x_seg = [take(x, t_of, 0) for x in xs]

        def fwd(c, row):
            x_t, ok = row[:nx], row[nx]
            outs = substitute(body.outputs, {id(a): v for a, v in zip(body.args, [*c, *x_t, *caps], strict=True)})
            nxt = [where(broadcast_to(ok, o.shape), o, a) if o.dtype != "bool" else o
                   for o, a in zip(outs[:nc], c, strict=True)]
            return nxt, [outs[nc + q] for q in gy]

        fnode, _ = _build(fwd, c0, [*x_seg, valid], [(c.shape, c.dtype) for c in c0],
                          [(x.shape[1:], x.dtype) for x in x_seg] + [((), "bool")], kk, False, None, node.source)

        def rows_mask(v):  # 1 at the segment's positions inside the sequence, 0 past its end, as v's (k, ...)
            m = reshape(cast(valid, v.dtype), (kk, *[1] * (v.ndim - 1)))
            return broadcast_to(m, v.shape)

        gy_seg = [take(g, t_of, 0) for g in gys]
        seeds = [(output(fnode, q), ct) for q, ct in zip(fc, ct_c, strict=True)]
        seeds += [(output(fnode, nc + i), g * rows_mask(g)) for i, g in enumerate(gy_seg)]
        grads = vjp(seeds, [c0[q] for q in fc] + [x_seg[j] for j in fx] + [caps[j] for j in fw])
        g_c = grads[:nfc]
        ys = [d * rows_mask(d) for d in grads[nfc:nfc + len(fx)]]  # (k, ...) in processing order
        acc = [add(a, w) for a, w in zip(acc, grads[nfc + len(fx):], strict=True)]
        for q, h in enumerate(gh):  # the stored carry entering this segment was read elsewhere too
            g_c[fc.index(h)] = add(g_c[fc.index(h)], gh_s[q])
        return g_c + acc + [s - constant(1, "int32")], ys

    r_init = [gs[q] if gs[q] is not None else full_like(init[q], 0.0) for q in fc]
    r_init += [full_like(caps[j], 0.0) for j in fw]
    r_init.append(dim_value(S - 1, anchor, "int32") if not isinstance(S, int) else constant(S - 1, "int32"))
    r_xs = list(hist) + ghs
    r_ctypes = [(r.shape, r.dtype) for r in r_init]
    r_xtypes = [(x.shape[1:], x.dtype) for x in r_xs]
    rnode, _ = _build(seg, r_init, r_xs, r_ctypes, r_xtypes, S, True, None, node.source)
    ct_init = [output(rnode, i) for i in range(nfc)]
    acc = [output(rnode, nfc + i) for i in range(len(fw))]
    ct_xs = []

    for q in range(len(fx)):
        blocks = output(rnode, len(r_init) + q)  # (S, kk, ...) in processing order
        flat = reshape(blocks, (S * kk, *blocks.shape[2:]))
        if rev_fwd:
            from graphc.ops.movement import getitem

            flat = getitem(flat, slice(None, None, -1))
            ct_xs.append(_rows(flat, S * kk - T, T))
        else:
            ct_xs.append(_rows(flat, 0, T))
    return ct_init, acc, ct_xs


def _rows(flat, start, T):
    """Rows [start, start+T) of `flat`, the leading axis a static or symbolic length (the slice's start and
    stop are dim expressions then, computed at run time)."""
    from graphc.ops.movement import _slice

    rest = flat.shape[1:]
    return _slice(flat, (start, *[0] * len(rest)), (start + T, *rest), (1,) * flat.ndim)


__all__ = ["scan", "zeros", "Body", "SCAN", "SCAN_OUTPUT", "substitute", "make_body", "output"]
