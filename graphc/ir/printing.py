"""Text form of a graph, one line per node with its type, in the spirit of a jaxpr; and a networkx view."""

from __future__ import annotations

from collections.abc import Iterable

from graphc.ir.node import ArrayValue, Node, output_nodes, topo_order
from graphc.ir.shapes import fmt_type

LEAF_OPS = ("input", "param")


def is_leaf(node: Node) -> bool:
    return node.op.name in LEAF_OPS


def is_inline_constant(node: Node) -> bool:
    return node.op.name == "constant" and node.attrs["value"].array.size == 1 and not node.shape


def _fmt_attr(v) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt_attr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, ArrayValue):
        return repr(v)
    return str(v)


def format_attrs(node: Node) -> str:
    hidden = getattr(node.op, "hidden_attrs", ())
    items = [(k, v) for k, v in node.attrs.items() if k not in hidden and k != "name" and v is not False]
    if not items:
        return ""
    return "[" + " ".join(k if v is True else f"{k}={_fmt_attr(v)}" for k, v in sorted(items)) + "]"


def to_text(outputs: Node | Iterable[Node], *, sources: bool = True, names: dict[int, str] | None = None,
            what: str = "to_text") -> str:
    """A readable listing: leaves first in the header, then one `%k: type = op[attrs] args` line per node.
    `what`: the public function named in errors."""
    outs = output_nodes(outputs, what)
    order = topo_order(outs)
    ref: dict[int, str] = dict(names or {})
    inputs = [n for n in order if n.op.name == "input"]
    params = [n for n in order if n.op.name == "param"]
    for n in inputs + params:
        ref.setdefault(id(n), n.name)
    header = []
    if inputs:
        header.append("inputs " + ", ".join(f"{n.name}: {n.type_str}" for n in inputs))
    if params:
        header.append("params " + ", ".join(f"{n.name}: {n.type_str}" for n in params))
    lines = ["graph {" + ("" if not header else "  " + ";  ".join(header))]
    width = 0
    body: list[tuple[str, str]] = []
    k = 0
    for n in order:
        if id(n) in ref and (n.op.name in LEAF_OPS or n.op.name == "scan_arg"):
            continue
        if is_inline_constant(n):
            ref[id(n)] = _fmt_attr(n.attrs["value"].array.item())
            continue
        name = ref.get(id(n)) or f"%{k}"
        k += 1
        ref[id(n)] = name
        args = " ".join(ref[id(i)] for i in n.inputs)
        text = f"  {name}: {_type_of(n)} = {n.op.name}{format_attrs(n)}" + (f" {args}" if args else "")
        note = ""
        if sources and n.source.line:
            note = n.source.where() + (f" ({n.label})" if n.label != n.op.name else "")
        body.append((text, note))
        if "body" in n.attrs and hasattr(n.attrs["body"], "args"):  # a loop: its body as a nested block
            body.extend((f"    {line}", "") for line in _body_text(n.attrs["body"], sources).splitlines())
        width = max(width, len(text))
    width = min(width, 72)
    for text, note in body:
        lines.append(f"{text.ljust(width)}  # {note}" if note else text.rstrip())
    lines.append("  return " + ", ".join(ref[id(o)] for o in outs))
    lines.append("}")
    return "\n".join(lines)


def _type_of(n: Node) -> str:
    types = getattr(n.op, "output_types", None)
    if getattr(n.op, "multi_output", False) and types is not None:  # a tuple node (a scan)
        return "(" + ", ".join(fmt_type(s, d) for s, d in types(n)) + ")"
    return fmt_type(n.shape, n.dtype)


def body_arg_names(body) -> dict[int, str]:
    """How a loop body's placeholders print: c0.. (carries), x0.. (per-step slices), w0.. (captures)."""
    names = {}
    for k, a in enumerate(body.args):
        if k < body.n_carry:
            names[id(a)] = f"c{k}"
        elif k < body.n_carry + body.n_x:
            names[id(a)] = f"x{k - body.n_carry}"
        else:
            names[id(a)] = f"w{k - body.n_carry - body.n_x}"
    return names


def _body_text(body, sources: bool) -> str:
    names = body_arg_names(body)
    text = to_text(list(body.outputs), sources=sources, names=names)
    sig = ", ".join(f"{names[id(a)]}: {a.type_str}" for a in body.args)
    nc = body.n_carry
    outs = [names.get(id(o)) for o in body.outputs]
    lines = text.splitlines()
    lines[0] = f"body ({sig}) {{"
    ret = lines[-2].strip()[len("return "):].split(", ") if lines[-2].strip().startswith("return") else outs
    lines[-2] = "  return carry (" + ", ".join(ret[:nc]) + "), y (" + ", ".join(ret[nc:]) + ")"
    return "\n".join(lines)


def to_networkx(outputs: Node | Iterable[Node]):
    """A networkx view (one graph node per IR node, keyed by id; an edge per input use, with its position).

    It is a view for algorithms and drawing: the IR itself stays the node objects."""
    import networkx as nx  # only here: importing it costs ~18 MB and 0.1 s that building graphs does not need

    g = nx.MultiDiGraph()
    for n in topo_order(output_nodes(outputs, "to_networkx")):
        g.add_node(
            id(n),
            node=n,
            op=n.op.name,
            label=n.name or n.op.name,
            shape=n.shape,
            dtype=n.dtype,
            source=n.source.where(),
            derived=n.source.is_derived,
        )
        for pos, i in enumerate(n.inputs):
            g.add_edge(id(i), id(n), position=pos)
    return g
