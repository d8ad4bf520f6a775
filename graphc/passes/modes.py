"""Mode passes: inference removes dropout (the identity outside training)."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node
from graphc.ops.random import DROPOUT
from graphc.passes.rewrite import rewrite


def no_dropout(n: Node) -> Node | None:
    return n.inputs[0] if n.op is DROPOUT else None


def inference(graph: Graph) -> Graph:
    return rewrite(graph, (no_dropout,), "inference")
