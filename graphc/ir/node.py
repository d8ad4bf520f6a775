"""Graph IR nodes: immutable, hash-consed by structure, carrying the user's source position.

A node is (op, inputs, attrs, shape, dtype) plus source information. Building the same structure twice gives the
same object, so common subexpressions exist once by construction and `a is b` is structural equality. The op
is any object with a `name` (the op families live in graphc.ops); this module knows nothing about them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.ir.shapes import Shape, fmt_type

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLI = os.path.join(_PKG_DIR, "cli.py")
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep  # np.sum(x) calls x.sum from numpy's code


@dataclass(frozen=True)
class SourceInfo:
    """Where a node came from: the user's file and line, the enclosing scope (layer) names, and for nodes built
    by a transformation (grad, a rewrite) which transformation made it and from which node's op."""

    file: str = "(built by graphc)"
    line: int = 0
    function: str = ""
    scope: str = ""
    made_by: str = ""  # "" for user-built nodes; e.g. "grad of matmul", "rewrite: log_softmax"

    def where(self) -> str:
        base = os.path.basename(self.file)
        if "ipykernel_" in self.file or base.startswith("<ipython-input"):
            loc = f"notebook cell, line {self.line}"  # Jupyter runs each cell from a temporary file
        else:
            loc = f"{base}:{self.line}" if self.line else self.file
        parts = [loc]
        if self.scope:
            parts.append(f"in {self.scope}")
        if self.made_by:
            parts.append(f"({self.made_by})")
        return " ".join(parts)

    @property
    def is_derived(self) -> bool:
        return bool(self.made_by)

    @property
    def is_gradient(self) -> bool:
        """Whether gc.grad built this node (it belongs to a gradient graph, not the forward pass)."""
        return self.made_by.startswith("grad of")


_scope: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("graphc_scope", default=())
_made_by: contextvars.ContextVar[tuple[SourceInfo, str] | None] = contextvars.ContextVar(
    "graphc_made_by", default=None
)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Name the nodes built inside (a layer name, say): `with gc.scope("dense1"): ...`."""
    if not isinstance(name, str):
        from graphc.errors import GraphcError

        raise GraphcError(f"scope: a name must be a string, got {type(name).__name__} {name!r}")
    token = _scope.set(_scope.get() + (name,))
    try:
        yield
    finally:
        _scope.reset(token)


@contextlib.contextmanager
def derived_from(source: SourceInfo, made_by: str) -> Iterator[None]:
    """Nodes built inside inherit `source` (the user's line of the node being transformed) and say who made
    them; this is how grad and rewrites pass source positions on without threading them by hand."""
    token = _made_by.set((source, made_by))
    try:
        yield
    finally:
        _made_by.reset(token)


def current_scope() -> str:
    return "/".join(_scope.get())


ALSO_AT = 4  # the most other lines a node remembers building it again


def _also_built(node: Node) -> None:
    """A hash-consing hit from another line of the user's: remembered (node.meta["also_at"], at most ALSO_AT), so
    a run-time error in a shared node names every line that built it."""
    src = capture_source()
    if src.made_by or not src.line or (src.file, src.line) == (node.source.file, node.source.line):
        return
    sites = node.meta.setdefault("also_at", [])
    if len(sites) < ALSO_AT and all((s.file, s.line) != (src.file, src.line) for s in sites):
        sites.append(src)


def capture_source() -> SourceInfo:
    derived = _made_by.get()
    if derived is not None:
        src, made_by = derived
        return SourceInfo(src.file, src.line, src.function, src.scope, made_by)
    f = sys._getframe(1)
    inner = None
    while f is not None and f.f_code.co_filename.startswith((_PKG_DIR, _NUMPY_DIR)):
        inner, f = f, f.f_back
    if f is None or (inner is not None and inner.f_code.co_filename == _CLI):
        # no user code on the stack: graphc's own (the CLI's default MLP), not the console script's line
        return SourceInfo(scope=current_scope())
    return SourceInfo(f.f_code.co_filename, f.f_lineno, f.f_code.co_name, current_scope())


class FrozenDict(dict):
    """An immutable, hashable dict for node attributes."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))

    def _immutable(self, *a, **k):
        raise TypeError("node attributes are immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable  # type: ignore


class ArrayValue:
    """A hashable, immutable wrapper of a numpy array, for constant nodes (keyed by dtype, shape and bytes)."""

    __slots__ = ("array", "_key")

    def __init__(self, array: np.ndarray):
        a = np.array(array, copy=True, order="C")
        a.setflags(write=False)
        self.array = a
        self._key = (a.dtype.str, a.shape, a.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArrayValue) and self._key == other._key

    def __repr__(self) -> str:
        a = self.array
        if a.size <= 6:
            return np.array2string(a, separator=",", threshold=6).replace("\n", "")
        return f"<array {a.dtype}{list(a.shape)}>"


_intern: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_intern_lock = threading.Lock()


class Node:
    """An immutable graph node. Create nodes through `Node.make` (or an op's constructor), never directly."""

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "source", "meta", "_digest", "__weakref__")

    op: Any
    inputs: tuple[Node, ...]
    attrs: FrozenDict
    shape: Shape
    dtype: str
    source: SourceInfo
    meta: dict  # side information that is not part of the node's identity (e.g. a parameter's initializer)

    @classmethod
    def make(
        cls,
        op: Any,
        inputs: Sequence[Node],
        shape: Shape,
        dtype: str,
        attrs: dict | None = None,
        meta: dict | None = None,
    ) -> Node:
        """The node with this structure: an existing one if it was built before (its first source is kept)."""
        inputs = tuple(inputs)
        fattrs = FrozenDict(attrs or {})
        key = (op, tuple(id(i) for i in inputs), fattrs, tuple(shape), dtype)
        with _intern_lock:
            node = _intern.get(key)
            if node is not None:
                _also_built(node)
                return node
            node = object.__new__(cls)
            object.__setattr__(node, "op", op)
            object.__setattr__(node, "inputs", inputs)
            object.__setattr__(node, "attrs", fattrs)
            object.__setattr__(node, "shape", tuple(shape))
            object.__setattr__(node, "dtype", dtype)
            object.__setattr__(node, "source", capture_source())
            object.__setattr__(node, "meta", dict(meta or {}))
            object.__setattr__(node, "_digest", None)
            _intern[key] = node
            return node

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("graph nodes are immutable")

    def where(self) -> str:
        """Where the user built this node, and the other lines that built the same node again (hash-consing
        returns the first one: a check shared by two losses is reported with both lines)."""
        here = self.source.where()
        also = [w for w in dict.fromkeys(s.where() for s in self.meta.get("also_at", ())) if w != here]
        return f"{here} (also built at {', '.join(also)})" if also else here

    def __reduce__(self):
        raise TypeError("graph nodes are not picklable; save parameters as arrays instead")

    __hash__ = object.__hash__

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def name(self) -> str | None:
        """The user's name for inputs and parameters; None for computed nodes."""
        return self.attrs.get("name")

    @property
    def type_str(self) -> str:
        return fmt_type(self.shape, self.dtype)

    @property
    def label(self) -> str:
        """What messages call this node's operation: the function the user called where graphc built its result
        from other ops (argmax's is a min over positions, `composite`), else its op's name."""
        return self.meta.get("composite") or self.op.name

    def digest(self) -> str:
        """A structural hash, stable across processes: what a compile cache keys on."""
        if self._digest is None:
            for n in topo_order([self]):
                if n._digest is not None:
                    continue
                h = hashlib.sha256()
                h.update(op_fingerprint(n.op).encode())
                h.update(repr(sorted((k, _attr_repr(v)) for k, v in n.attrs.items())).encode())
                h.update(f"{n.shape}|{n.dtype}".encode())
                for i in n.inputs:
                    h.update(i._digest.encode())
                object.__setattr__(n, "_digest", h.hexdigest())
        return self._digest

    def __repr__(self) -> str:
        label = self.name or self.label
        return f"<{type(self).__name__} {label}: {self.type_str}>"


def composite(node: Node, what: str) -> Node:
    """`node`, the result of the user's function `what` built from other ops, named `what` in messages and listings
    (the first function to build a node names it)."""
    node.meta.setdefault("composite", what)
    return node


def live_leaf_names() -> set[str]:
    """Names of every input and parameter that exists in this process (to tell a typo from an unused name)."""
    with _intern_lock:
        nodes = list(_intern.values())
    return {n.name for n in nodes if n.op.name in ("input", "param")}


def op_fingerprint(op: Any) -> str:
    fp = getattr(op, "fingerprint", None)
    return fp() if callable(fp) else op.name


def _attr_repr(v: Any) -> str:
    if isinstance(v, ArrayValue):
        return hashlib.sha256(repr(v._key).encode()).hexdigest()
    return repr(v)


def as_nodes(outputs: Node | Iterable[Node]) -> list[Node]:
    if isinstance(outputs, Node):
        return [outputs]
    return list(outputs)


def output_nodes(outputs, what: str, noun: str = "outputs") -> list[Node]:
    """A user's `outputs` (a tensor, an iterable of tensors, or a dict {key: tensor}: its values in order, and
    these nested: `gc.hessian(f, [a, b])`'s list of lists) as a flat list, depth first; anything else is a
    GraphcError naming `what` was called with it (and the argument, `noun`)."""
    from graphc.errors import GraphcError

    if isinstance(outputs, Node):
        return [outputs]
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    array = hasattr(outputs, "__array__")
    if isinstance(outputs, (str, bytes)) or not isinstance(outputs, Iterable) or array:
        hint = " (an array holds values, not graph nodes: pass the tensors built with gc.input, gc.param, ...)"
        raise GraphcError(f"{what}: {noun} must be a tensor, a list of tensors or a dict of them, got "
                          f"{type(outputs).__name__}" + (hint if array else ""))
    outs: list[Node] = []
    for o in outputs:
        if isinstance(o, Node):
            outs.append(o)
        elif isinstance(o, (list, tuple, Mapping)):
            outs += output_nodes(o, what, noun)
        else:
            raise GraphcError(f"{what}: {noun} must be tensors (or lists, tuples or dicts of them), got "
                              f"{type(o).__name__} in the list")
    return outs


def output_form(outputs):
    """What `shaped_like` needs of `outputs` kept apart from the caller's containers (which may change after):
    the tensor itself, else the same nesting of lists, tuples and dicts; an iterable of another kind is a list."""
    if isinstance(outputs, Node):
        return outputs
    if isinstance(outputs, Mapping):
        return {k: output_form(v) for k, v in outputs.items()}
    if isinstance(outputs, tuple):
        inner = [output_form(o) for o in outputs]
        return type(outputs)(*inner) if hasattr(outputs, "_fields") else tuple(inner)
    return [output_form(o) for o in outputs]


def shaped_like(outputs, results: list):
    """`results` (one per output, in `output_nodes`' order) in the form the user gave `outputs`: one array for a
    tensor, a dict with the same keys for a dict, else a list; nested lists, tuples and dicts as they were."""
    if isinstance(outputs, Node):
        return results[0]
    if outputs is None or isinstance(outputs, Iterator):  # a generator, consumed: the results as a list
        return list(results)
    if isinstance(outputs, Mapping):
        return _take(outputs, iter(results))
    return [_take(f, it) for it in (iter(results),) for f in outputs]  # the top level a list, a tuple too


def _take(form, it):
    """`form`'s nesting filled from the iterator `it`, in output_nodes' order. (A function of its own, not a
    closure over `it`: a recursive closure is a reference cycle that kept the results, large output arrays a
    compiled function recycles, alive until the garbage collector ran.)"""
    if isinstance(form, Node):
        return next(it)
    if isinstance(form, Mapping):
        return {k: _take(v, it) for k, v in form.items()}
    inner = [_take(f, it) for f in form]
    if isinstance(form, tuple):  # a named tuple stays one, as a JAX pytree's
        return type(form)(*inner) if hasattr(form, "_fields") else tuple(inner)
    return inner


def topo_order(outputs: Node | Iterable[Node]) -> list[Node]:
    """All nodes the outputs depend on, inputs before users, iteratively (deep graphs never recurse)."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in output_nodes(outputs, "topo_order"):
        if id(root) in seen:
            continue
        stack: list[tuple[Node, int]] = [(root, 0)]
        seen.add(id(root))
        while stack:
            node, k = stack[-1]
            if k < len(node.inputs):
                stack[-1] = (node, k + 1)
                child = node.inputs[k]
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    return order


def nodes_within(order: list[Node]) -> list[Node]:
    """The nodes of `order` (a topo_order) and of every loop body they hold (a node's `body` attribute, nested
    bodies too): what a question about the whole program ("does it draw random numbers?") must look at, where a
    topo_order sees a scan as one node."""

    def bodies(n: Node) -> list[Node]:
        body = n.attrs.get("body")
        return list(reversed(body.order())) if body is not None and hasattr(body, "order") else []

    return _walk(list(reversed(order)), bodies)


def _walk(stack: list[Node], more) -> list[Node]:
    """Each node reached from `stack` (popped from its end) once, in the order reached; `more(n)` gives what a node
    leads to next."""
    out, seen = [], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(more(n))
    return out


def nodes_in_mode(order: list[Node], training: bool, roots: Sequence[Node] | None = None) -> list[Node]:
    """The nodes of `order` (a topo_order) and of the loop bodies they hold that a program of one mode computes:
    those its roots (the outputs; by default the nodes nothing in `order` reads) reach, where a mode-dependent
    node leads only to what it is in that mode (`op.in_mode`: a training_switch's branch; in inference, dropout's
    input). nodes_within, as the compiled program of that mode sees it."""
    if roots is not None:
        return _walk(list(reversed(roots)), lambda n: _in_mode(n, training))
    read = {id(i) for n in order for i in n.inputs}
    return _walk([n for n in order if id(n) not in read], lambda n: _in_mode(n, training))


def _in_mode(n: Node, training: bool) -> list[Node]:
    """What a program of one mode computes `n` from: the input it is in that mode, or its inputs, and its loop
    body's outputs."""
    instead = n.op.in_mode(n, training)
    body = n.attrs.get("body")
    return [*((instead,) if instead is not None else n.inputs),
            *(body.outputs if body is not None and hasattr(body, "outputs") else ())]


def needs_training_mode(order: list[Node]) -> bool:
    """Whether a graph (a topo_order) holds an op whose value depends on the mode or on the key training feeds
    (the op's `training_mode`: dropout, batch norm's switch, gc.random's draws), in a loop's body too: the one
    answer gc.fit's trainer and EpochFunction give."""
    return any(n.op.training_mode for n in nodes_within(order))


def users(order: Sequence[Node]) -> dict[int, list[Node]]:
    """For each node id in `order`, the nodes in `order` that take it as an input (once per use)."""
    out: dict[int, list[Node]] = {id(n): [] for n in order}
    for n in order:
        for i in n.inputs:
            if id(i) in out:
                out[id(i)].append(n)
    return out
