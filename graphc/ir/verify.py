"""The verifier: every node's shape and dtype are what its op's rule gives for its inputs and attributes."""

from __future__ import annotations

from graphc.errors import CompileError
from graphc.ir.graph import Graph


def verify(graph: Graph, stage: str = "") -> None:
    """Raise CompileError naming the stage and the node if the graph is inconsistent."""
    names: dict[str, object] = {}
    for n in graph.nodes():
        if getattr(n.op, "leaf", False):
            other = names.setdefault(n.name, n)
            if other is not n:
                raise CompileError(f"{stage}: two different leaves are named {n.name!r}")
            continue
        try:
            shape, dtype = n.op.infer(n.inputs, dict(n.attrs))
        except Exception as e:
            raise CompileError(f"{stage}: {n.op.name} at {n.source.where()} no longer type-checks: {e}") from e
        if tuple(shape) != n.shape or dtype != n.dtype:
            raise CompileError(f"{stage}: {n.op.name} at {n.source.where()} is {n.type_str} but its rule gives "
                               f"{dtype}{list(shape)}")
