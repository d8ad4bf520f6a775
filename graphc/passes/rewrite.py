"""The rewrite engine: apply local rules bottom-up until nothing changes, with an iteration cap.

A rule is a function node -> replacement node (or None). The engine checks that a replacement keeps the node's
shape and dtype and names the rule when one misbehaves or the rules never settle."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from graphc.errors import CompileError
from graphc.ir.graph import Graph
from graphc.ir.node import Node, derived_from
from graphc.ops.core import Tensor, apply

Rule = Callable[[Node], Node | None]


def rebuild(n: Node, inputs: tuple[Node, ...]) -> Node:
    """The node `n` over new inputs (same op and attributes), keeping n's source."""
    if all(a is b for a, b in zip(inputs, n.inputs, strict=True)):
        return n
    with derived_from(n.source, n.source.made_by):
        return apply(n.op, inputs, meta=n.meta, **n.attrs)


def rewrite(graph: Graph, rules: Sequence[Rule], name: str, max_sweeps: int = 20) -> Graph:
    outputs = graph.outputs
    fired: list[str] = []
    for _ in range(max_sweeps):
        fired = []
        memo: dict[int, Node] = {}
        for n in graph.with_outputs(outputs).nodes():
            m = rebuild(n, tuple(memo[id(i)] for i in n.inputs))
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
