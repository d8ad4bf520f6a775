"""What a drawing shows, before any geometry: boxes with their text and kind, and the edges between them.

A view is built from tensors (one box per node, layers collapsed by scope when the graph is large, constants
folded into their readers' labels) or from a compiled function (one box per fused kernel, edges by buffers)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from graphc.errors import GraphcError
from graphc.ir.node import Node, topo_order, users
from graphc.ir.printing import format_attrs
from graphc.ir.shapes import fmt_shape, fmt_type
from graphc.viz import style

Span = tuple[str, str]  # (text, role); role is "name", "op", "type" or "plain"

FOLDABLE = ("constant", "iota", "dim")
LEAVES = ("input", "param")
MAX_FOLD_CONST = 4  # constants with at most this many elements read well inline


@dataclass(frozen=True)
class Line:
    spans: tuple[Span, ...]
    size: str = "main"

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.spans)

    @property
    def width(self) -> float:
        return style.text_width(self.text, self.size)


def line(text: str, role: str = "plain", size: str = "main") -> Line:
    return Line(((text, role),), size)


@dataclass
class Box:
    lines: list[Line]
    kind: str  # a key of style.PAINTS
    group: bool = False  # a collapsed scope (drawn as a stack)
    reused: bool = False  # a forward value that gradient nodes read (drawn with a double border)
    output: bool = False
    tooltip: str = ""
    nodes: list[Node] = field(default_factory=list)  # the graph nodes it stands for
    name: str = ""  # a stable identifier for the SVG (node key)
    floating: bool = False  # a leaf, or computed from constants only: the layout may sink it to its readers

    @property
    def width(self) -> float:
        return max((ln.width for ln in self.lines), default=0.0) + 2 * style.PAD_X

    @property
    def height(self) -> float:
        return sum(style.line_height(ln.size) for ln in self.lines) + 2 * style.PAD_Y


@dataclass
class Edge:
    src: int
    dst: int
    style: str = "plain"  # a key of style.EDGE_COLOURS
    tooltip: str = ""


@dataclass
class View:
    boxes: list[Box]
    edges: list[Edge]
    collapsed: list[str] = field(default_factory=list)  # scopes drawn as one box

    def legend(self) -> list[str]:
        """The legend entries this view needs, in a fixed order."""
        kinds = {b.kind for b in self.boxes}
        out = [k for k in style.PAINTS if k in kinds]
        if any(b.group for b in self.boxes):
            out.append("group")
        if any(b.reused for b in self.boxes):
            out.append("reused")
        styles = {e.style for e in self.edges}
        out += [f"edge-{s}" for s in ("reuse", "shape") if s in styles]
        return out


# ------------------------------------------------------------------------------------------------ from tensors


def is_grad(n: Node) -> bool:
    return n.source.made_by.startswith("grad")


def as_outputs(x: Any) -> tuple[list[Node], list[str]]:
    """The nodes to draw and a label for each (the dict key, or its position in a list)."""
    if isinstance(x, Node):
        return [x], [""]
    if isinstance(x, Mapping):
        items = list(x.items())
        if not all(isinstance(v, Node) for _, v in items):
            raise GraphcError("draw: a dict to draw must map names to tensors")
        return [v for _, v in items], [str(k) for k, _ in items]
    if isinstance(x, Sequence) and not isinstance(x, str):
        outs = list(x)
        if not outs or not all(isinstance(v, Node) for v in outs):
            raise GraphcError("draw: expected a tensor, a non-empty list or dict of tensors, or a compiled function; "
                              f"got {_describe(x)}")
        return outs, [f"out[{i}]" for i in range(len(outs))] if len(outs) > 1 else [""]
    raise GraphcError("draw: expected a tensor, a list or dict of tensors, or a compiled function (gc.compile); "
                      f"got {_describe(x)}")


def _describe(x: Any) -> str:
    return f"a {type(x).__name__}"


def _foldable(n: Node) -> bool:
    name = n.op.name
    if name == "constant":
        return n.attrs["value"].array.size <= MAX_FOLD_CONST
    return name in ("iota", "dim")


def _fold_text(n: Node) -> str:
    name = n.op.name
    if name == "constant":
        a = n.attrs["value"].array
        return repr(a.item()) if a.size == 1 else repr(n.attrs["value"])
    if name == "iota":
        return f"iota({n.attrs['n']})"
    return str(n.attrs["expr"])  # a run-time dim, e.g. N


def _top_scope(scope: str) -> str:
    return scope.split("/", 1)[0]


def _expanded(scope: str, expand) -> bool:
    if expand is True:
        return True
    if expand is None or expand is False:
        return False
    names = [expand] if isinstance(expand, str) else list(expand)
    return any(scope == s or scope.startswith(s + "/") or s.startswith(scope + "/") for s in names)


def _check_expand(expand, order: list[Node]) -> None:
    """`expand` as graph_view takes it, every scope it names one the graph has (a misspelt name would silently
    leave its layer collapsed)."""
    if expand is None or isinstance(expand, bool):
        return
    names = [expand] if isinstance(expand, str) else expand
    if not isinstance(names, Iterable) or isinstance(names, (bytes, Mapping)):
        raise GraphcError(f"draw: expand must be None, True, False, a scope name or a list of them, got {expand!r}")
    names = list(names)
    have = sorted({n.source.scope for n in order if n.source.scope})
    for s in names:
        if not isinstance(s, str):
            raise GraphcError(f"draw: expand must list scope names (str), got {s!r} in {expand!r}")
        if not any(h == s or h.startswith(s + "/") for h in have):
            tops = list(dict.fromkeys(_top_scope(h) for h in have))
            raise GraphcError(f"draw: expand names the scope {s!r}, which this graph has none of; its scopes: "
                              + (", ".join(tops[:20]) + (" ..." if len(tops) > 20 else "") if tops else "none"))


def graph_view(x: Any, *, expand=None, collapse_over: int = 60, fold: bool = True, sources: bool = True) -> View:
    """One box per node (leaves labelled with the user's names), or per layer when the graph is large.

    `expand`: None collapses every scope when the graph has more than `collapse_over` nodes; True never
    collapses; False always does; a list of scope names keeps those expanded and collapses the others."""
    outs, out_labels = as_outputs(x)
    if isinstance(collapse_over, bool) or not isinstance(collapse_over, numbers.Integral) or collapse_over < 0:
        raise GraphcError(f"draw: collapse_over must be a node count (an int >= 0), got {collapse_over!r}")
    order = topo_order(outs)
    _check_expand(expand, order)
    readers = users(order)
    out_names: dict[int, list[str]] = {}
    for o, lab in zip(outs, out_labels, strict=True):
        out_names.setdefault(id(o), []).append(lab)
    folded = {id(n) for n in order if fold and _foldable(n) and id(n) not in out_names}
    drawn = [n for n in order if id(n) not in folded]
    # a forward value backprop reads (not just for its shape) is kept from the forward pass: that reuse is what
    # makes backprop dynamic programming
    reused: set[int] = set()
    for u in order:
        if not is_grad(u):
            continue
        skip = _shape_only(u)
        for k, i in enumerate(u.inputs):
            if k not in skip and not is_grad(i) and i.op.name not in LEAVES + FOLDABLE:
                reused.add(id(i))

    scopes = [_top_scope(n.source.scope) for n in drawn if n.op.name not in LEAVES and n.source.scope]
    scopes = list(dict.fromkeys(scopes))
    if expand is None:
        collapse = scopes if len(order) > collapse_over else []
    elif expand is True:
        collapse = []
    else:
        collapse = [s for s in scopes if not _expanded(s, expand)]
    collapse_set = set(collapse)

    def key_of(n: Node):
        if n.op.name in LEAVES or n.op.name in FOLDABLE:
            return id(n)
        s = _top_scope(n.source.scope)
        return (s, is_grad(n)) if s in collapse_set else id(n)

    # Collapsing a scope must not close a cycle (a layer's forward and backward are apart for that reason);
    # should a user's scoping still make one, the groups on it are drawn expanded.
    while True:
        keys = {id(n): key_of(n) for n in drawn}
        qg = nx.DiGraph()
        qg.add_nodes_from(dict.fromkeys(keys.values()))
        for n in drawn:
            for i in n.inputs:
                if id(i) in keys and keys[id(i)] != keys[id(n)]:
                    qg.add_edge(keys[id(i)], keys[id(n)])
        bad = {k for comp in nx.strongly_connected_components(qg) if len(comp) > 1 for k in comp
               if isinstance(k, tuple)}
        if not bad:
            break
        collapse_set -= {k[0] for k in bad}
    collapse = [s for s in collapse if s in collapse_set]

    # values made of constants only (1/N in a gradient, say) belong next to their readers, not at the top
    const_like: set[int] = set()
    for n in drawn:
        skip = _shape_only(n)
        if n.op.name not in LEAVES and n.op.name != "constant" and all(
                id(i) in folded or id(i) in const_like for k, i in enumerate(n.inputs) if k not in skip):
            const_like.add(id(n))

    members: dict[Any, list[Node]] = {}
    for n in drawn:
        members.setdefault(keys[id(n)], []).append(n)
    index = {k: i for i, k in enumerate(members)}
    boxes: list[Box] = []
    for k, nodes in members.items():
        if isinstance(k, tuple):
            boxes.append(_group_box(k[0], k[1], nodes, keys, readers, out_names, reused))
        else:
            boxes.append(_node_box(nodes[0], folded, out_names.get(id(nodes[0]), []), id(nodes[0]) in reused,
                                   sources))
        boxes[-1].name = f"n{len(boxes) - 1}"
        boxes[-1].floating = all(n.op.name in LEAVES or id(n) in const_like for n in nodes)

    edges: dict[tuple[int, int], Edge] = {}
    rank = {"plain": 0, "grad": 1, "reuse": 2, "shape": -1}
    for n in drawn:
        shape_only = _shape_only(n)
        for pos, i in enumerate(n.inputs):
            if id(i) in folded:
                continue
            a, b = index[keys[id(i)]], index[keys[id(n)]]
            if a == b:
                continue
            if pos in shape_only:
                kind = "shape"
            elif is_grad(n) and not is_grad(i):
                kind = "reuse" if i.op.name not in LEAVES else "grad"
            elif is_grad(n):
                kind = "grad"
            else:
                kind = "plain"
            old = edges.get((a, b))
            if old is None or rank[kind] > rank[old.style]:
                edges[(a, b)] = Edge(a, b, kind)
    return View(boxes, list(edges.values()), collapse)


def _shape_only(n: Node) -> set[int]:
    """Positions of the inputs n reads for their shape only (broadcast_like's model, a run-time dim's source)."""
    if n.op.name == "dim":
        return set(range(len(n.inputs)))
    return set(getattr(n.op, "shape_inputs", ()))


def _node_box(n: Node, folded: set[int], outs: list[str], reused: bool, sources: bool) -> Box:
    name = n.op.name
    if name in LEAVES:
        lines = [Line(((n.name, "name"), ("  " + n.type_str, "type")))]
        kind = name
    elif name in FOLDABLE:
        lines = [Line(((f"{name} {_fold_text(n)}", "op"), ("  " + n.type_str, "type")))]
        kind = "const"
    else:
        lines = [Line(((name + format_attrs(n), "op"), ("  " + n.type_str, "type")))]
        kind = "grad" if is_grad(n) else "forward"
        if any(id(i) in folded for i in n.inputs):
            args = ", ".join(_fold_text(i) if id(i) in folded else "·" for i in n.inputs)
            lines.append(line(f"{name}({args})", size="small"))
        if sources:
            where = [n.source.scope] if n.source.scope else []
            if is_grad(n):
                where.append(n.source.made_by)
            if where:
                lines.append(line(" · ".join(where), size="small"))
    body = n.attrs.get("body") if "body" in n.attrs else None
    if body is not None and hasattr(body, "args"):  # a loop: its body drawn inside its box, one line a node
        from graphc.ir.printing import _body_text

        lines[0] = Line(((f"↻ {name}" + format_attrs(n), "op"),))
        lines.extend(line(t.replace("  ", " ", 1), size="small") for t in _body_text(body, False).splitlines())
    for o in outs:
        lines.append(line(f"⇒ {o}" if o else "⇒ output", size="small"))
    tip = f"{n.op.name}: {n.type_str} at {n.source.where()}"
    if n.source.function:
        tip += f" in {n.source.function}()"
    return Box(lines, kind, group=body is not None, reused=reused, output=bool(outs), tooltip=tip, nodes=[n])


def _group_box(scope: str, grad: bool, nodes: list[Node], keys, readers, out_names, reused: set[int]) -> Box:
    ops = list(dict.fromkeys(n.op.name for n in nodes))
    summary = " · ".join(ops[:5]) + (f" · +{len(ops) - 5}" if len(ops) > 5 else "")
    me = keys[id(nodes[0])]
    leaving = [n for n in nodes if id(n) in out_names or any(keys.get(id(u), me) != me for u in readers[id(n)])]
    types = list(dict.fromkeys(n.type_str for n in leaving))
    lines = [line(("∂ " if grad else "") + scope, "name"), line(summary, size="small"),
             line(f"{len(nodes)} nodes" + (" → " + ", ".join(types[:3]) if types else ""), size="small")]
    outs = [o for n in nodes for o in out_names.get(id(n), [])]
    for o in outs:
        lines.append(line(f"⇒ {o}" if o else "⇒ output", size="small"))
    tip = f"scope {scope}{' (gradient)' if grad else ''}: {len(nodes)} nodes; draw with expand=[{scope!r}] to open"
    return Box(lines, "grad" if grad else "forward", group=True, reused=any(id(n) in reused for n in nodes),
               output=bool(outs), tooltip=tip, nodes=list(nodes))


# ------------------------------------------------------------------------------------------------ from kernels


def program_of(x: Any):
    """The scheduled program of a compiled function (or the program itself), or None."""
    prog = getattr(x, "program", x)
    if hasattr(prog, "kernels") and hasattr(prog, "buffers") and isinstance(prog.kernels, list):
        return prog
    return None


def kernel_view(program) -> View:
    """One box per kernel listing the ops fused into it; leaf and output buffers as boxes; edges by buffers."""
    boxes: list[Box] = []
    edges: dict[tuple[int, int], Edge] = {}
    writer: dict[int, int] = {}  # buffer index -> box
    leaf_box: dict[int, int] = {}

    def buffer_box(buf) -> int:
        if buf.index not in leaf_box:
            kind = buf.kind if buf.kind in ("input", "param") else "const"
            boxes.append(Box([Line(((buf.label, "name"), ("  " + fmt_type(buf.shape, buf.dtype), "type")))], kind,
                             tooltip=f"{buf!r}: {buf.kind} {buf.dtype}{fmt_shape(buf.shape)}", name=f"b{buf.index}",
                             floating=True))
            leaf_box[buf.index] = len(boxes) - 1
        return leaf_box[buf.index]

    def connect(a: int, b: int, buf, kind: str) -> None:
        e = edges.get((a, b))
        if e is None:
            edges[(a, b)] = Edge(a, b, kind, repr(buf))
        elif repr(buf) not in e.tooltip.split(", "):
            e.tooltip += f", {buf!r}"

    for kern in program.kernels:
        me = len(boxes)
        grads = [is_grad(n) for n in kern.nodes]
        kind = "grad" if grads and all(grads) else "mixed" if any(grads) else "forward"
        boxes.append(_kernel_box(kern, kind))
        boxes[-1].floating = not kern.reads
        for buf in kern.reads:
            if buf.index in writer:
                connect(writer[buf.index], me, buf, "grad" if kind == "grad" else "plain")
            else:
                connect(buffer_box(buf), me, buf, "plain")
        for buf in kern.writes:
            writer[buf.index] = me
    for k, buf in enumerate(program.outputs):
        if buf.index not in writer:  # an output that is an input, copied
            continue
        boxes.append(Box([line(f"⇒ {buf.label}", "name"), line(fmt_type(buf.shape, buf.dtype), "type", "small")],
                         "output", output=True, tooltip=f"output {k}: {buf!r}", name=f"o{k}"))
        connect(writer[buf.index], len(boxes) - 1, buf, "plain")
    return View(boxes, list(edges.values()))


def _kernel_box(kern, kind: str) -> Box:
    cls = type(kern).__name__
    if cls == "GemmKernel":
        ta, tb = ("ᵀ" if kern.ta else ""), ("ᵀ" if kern.tb else "")
        what = f"gemm {kern.a.label}{ta}·{kern.b.label}{tb}"
    elif cls == "ReduceKernel":
        what = f"{kern.reduction.label}{' scan' if kern.scan else ''}{list(kern.axes)} over {fmt_shape(kern.domain)}"
    elif cls == "ScatterKernel":
        what = f"scatter-add over {fmt_shape(kern.domain)}"
    elif cls == "LoopKernel":
        what = f"loop over {fmt_shape(kern.domain)}"
    else:
        what = cls
    ops = [n.op.name for n in kern.nodes]
    chunks = [" → ".join(ops[i:i + 4]) for i in range(0, len(ops), 4)] or ["(copy)"]
    lines = [Line(((kern.name, "name"), ("  " + what, "type")))]
    lines += [line(c, "op", "small") for c in chunks[:4]]
    if len(chunks) > 4:
        lines.append(line(f"… {len(ops) - 16} more", size="small"))
    scopes = list(dict.fromkeys(n.source.scope for n in kern.nodes if n.source.scope))
    if scopes:
        lines.append(line("in " + ", ".join(scopes[:3]), size="small"))
    lines.append(line("writes " + ", ".join(b.label for b in kern.writes), size="small"))
    return Box(lines, kind, tooltip=str(kern), nodes=list(kern.nodes), name=kern.name)


def build_view(x: Any, **kw) -> View:
    prog = program_of(x)
    if prog is not None:
        return kernel_view(prog)
    outputs = getattr(x, "outputs", None)  # a Graph value
    if outputs is not None and not isinstance(x, (Node, Mapping, Sequence)):
        x = list(outputs)
    return graph_view(x, **kw)
