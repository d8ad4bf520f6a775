"""The rewrite engine: apply local rules bottom-up until nothing changes, with an iteration cap.

A rule is a function node -> replacement node (or None). The engine checks that a replacement keeps the node's
shape and dtype and names the rule when one misbehaves or the rules never settle. Rules apply inside loop bodies
too (a scan's step, and the loops nested in it): inference drops a dropout in a step as anywhere else, and a
step's log(1 + exp(x)) becomes softplus(x). The rewritten step is traced again (canonical placeholders, the
captures it still reads); the per-step intermediates the gradient stores follow their nodes into it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from graphc.errors import CompileError
from graphc.ir.graph import Graph
from graphc.ir.node import Node, derived_from, topo_order
from graphc.ops.core import Tensor, apply

Rule = Callable[[Node], Node | None]


def rebuild(n: Node, inputs: tuple[Node, ...]) -> Node:
    """The node `n` over new inputs (same op and attributes), keeping n's source."""
    if all(a is b for a, b in zip(inputs, n.inputs, strict=True)):
        return n
    with derived_from(n.source, n.source.made_by):
        return apply(n.op, inputs, meta=n.meta, **n.attrs)


def saved_positions(nodes: Sequence[Node]) -> dict[int, set[int]]:
    """{id(scan): the body positions of its saved intermediates that some scan_output reads}."""
    from graphc.ops.scan import SCAN, SCAN_OUTPUT

    saved: dict[int, set[int]] = {}
    for n in nodes:
        if n.op is SCAN_OUTPUT:
            s = n.inputs[0]
            base = len(SCAN.output_types(s))
            if n.attrs["index"] >= base:
                saved.setdefault(id(s), set()).add(n.attrs["index"] - base)
    return saved


def _rewrite_body(n: Node, rules: Sequence[Rule], name: str, saved: list[int]):
    """The scan `n` with `rules` applied in its body: (the new scan, {index of an output of `n`: the node reading
    it now}, for every output but the final carries and the ys, which keep their indices), or None when no rule
    fired. A stored intermediate that the rewritten step no longer computes (the gradient reads exp(x), the
    step now computes softplus(x)) is computed beside it, as one more stacked y."""
    from graphc.ops.scan import SCAN, Body, _level, make_body, output, substitute

    body = n.attrs["body"]
    nc, nx, no = body.n_carry, body.n_x, len(body.outputs)
    order = body.order()
    old = [*body.outputs, *(order[p] for p in saved)]
    new = list(rewrite(Graph(tuple(old), tuple(body.args)), rules, name).outputs)
    if all(a is b for a, b in zip(old, new, strict=True)):
        return None
    outer = n.inputs[nc + nx:]

    def step(carry_args, x_args):
        mapping = {id(a): v for a, v in zip(body.args, [*carry_args, *x_args, *outer], strict=True)}
        outs = substitute(new, mapping)
        return outs[:nc], outs[nc:]

    traced, captures, _, _ = make_body(step, [(a.shape, a.dtype) for a in body.args[:nc]],
                                       [(a.shape, a.dtype) for a in body.args[nc:nc + nx]],
                                       f"scan at {n.source.where()}")
    images = traced.outputs[no:]
    kept = {id(v) for v in topo_order(traced.outputs[:no])}
    arg = {id(a): k for k, a in enumerate(traced.args)}
    more = [v for v in dict.fromkeys(images) if id(v) not in kept and id(v) not in arg]
    new_body = Body(traced.args, (*traced.outputs[:no], *more), nc, nx)
    inputs = (*n.inputs[:nc + nx], *captures)
    with derived_from(n.source, f"rewrite: {name} in a loop body"):
        node = apply(SCAN, inputs, body=new_body, length=n.attrs["length"], reverse=n.attrs["reverse"],
                     checkpoint=n.attrs["checkpoint"], level=_level(new_body.order()))
    grow = len(more)
    reads: dict[int, Node] = {no + k: output(node, no + grow + k) for k in range(nc)}  # the carry histories
    base_old, base_new = no + nc, len(SCAN.output_types(node))
    position = {id(v): q for q, v in enumerate(new_body.order())}
    for p, v in zip(saved, images, strict=True):
        k = arg.get(id(v))
        if k is not None and k < nc:  # the carry each step received: its history
            reads[base_old + p] = output(node, no + grow + k)
        elif k is not None and k < nc + nx:  # a step's slice: the xs themselves
            reads[base_old + p] = inputs[k]
        elif k is not None:  # a capture: the same value at every step
            from graphc.ops.movement import broadcast_to, reshape

            reads[base_old + p] = broadcast_to(reshape(inputs[k], (1, *v.shape)), (n.attrs["length"], *v.shape))
        elif v in more:  # no longer part of the step's result: a y of its own
            reads[base_old + p] = output(node, no + more.index(v))
        else:
            reads[base_old + p] = output(node, base_new + position[id(v)])
    return node, reads


def rewrite(graph: Graph, rules: Sequence[Rule], name: str, max_sweeps: int = 20) -> Graph:
    from graphc.ops.scan import SCAN, SCAN_OUTPUT, output

    outputs = graph.outputs
    fired: list[str] = []
    for _ in range(max_sweeps):
        fired = []
        memo: dict[int, Node] = {}
        remaps: dict[int, dict[int, Node]] = {}  # id(old scan) -> {output index: the node reading it now}
        nodes = graph.with_outputs(outputs).nodes()
        saved = saved_positions(nodes) if any(n.op is SCAN for n in nodes) else {}
        for n in nodes:
            if n.op is SCAN_OUTPUT and id(n.inputs[0]) in remaps:
                s, k = n.inputs[0], n.attrs["index"]
                r = remaps[id(s)].get(k)
                memo[id(n)] = r if r is not None else output(memo[id(s)], k)
                continue
            m = rebuild(n, tuple(memo[id(i)] for i in n.inputs))
            if n.op is SCAN:
                rebodied = _rewrite_body(m, rules, name, sorted(saved.get(id(n), ())))
                if rebodied is not None:
                    m, remaps[id(n)] = rebodied
                    fired.append(f"{name} in a loop body")
            for _ in range(8):  # rules may chain on one node; each application must shrink or settle
                for rule in rules:
                    with derived_from(m.source, f"rewrite: {rule.__name__}"):
                        r = rule(m)
                    if r is None or r is m:
                        continue
                    if not isinstance(r, Tensor) or r.shape != m.shape or r.dtype != m.dtype:
                        got = r.type_str if isinstance(r, Node) else type(r).__name__
                        raise CompileError(f"pass {name}: rule {rule.__name__} replaced {m.op.name} ({m.type_str}) "
                                           f"at {m.source.where()} with {got}")
                    fired.append(rule.__name__)
                    m = r
                    break
                else:
                    break
            memo[id(n)] = m
        new_outputs = tuple(memo[id(o)] for o in outputs)
        if not fired:
            return graph.with_outputs(new_outputs)
        outputs = new_outputs
    raise CompileError(f"pass {name} did not settle after {max_sweeps} sweeps; rules still firing: "
                       f"{sorted(set(fired))}")
