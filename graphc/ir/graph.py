"""A Graph value: the outputs of a program and its signature (every input and parameter it was built from).

Passes map Graph -> Graph. The signature is kept even when a pass removes the last reader of an input, so a
later stage still knows what the caller feeds (and which inputs bind the symbolic dims)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from graphc.ir.node import Node, as_nodes, topo_order
from graphc.ir.printing import to_text


@dataclass(frozen=True, eq=False)
class Graph:
    outputs: tuple[Node, ...]
    inputs: tuple[Node, ...]

    @staticmethod
    def of(outputs: Node | Iterable[Node]) -> Graph:
        outs = tuple(as_nodes(outputs))
        leaves = tuple(n for n in topo_order(outs) if getattr(n.op, "leaf", False))
        return Graph(outs, leaves)

    def nodes(self) -> list[Node]:
        return topo_order(self.outputs)

    def with_outputs(self, outputs: Iterable[Node]) -> Graph:
        return Graph(tuple(outputs), self.inputs)

    def __str__(self) -> str:
        return to_text(self.outputs)

    def __len__(self) -> int:
        return len(self.nodes())

    @property
    def summary(self) -> str:
        return f"{len(self)} nodes"
