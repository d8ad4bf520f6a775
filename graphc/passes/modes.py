"""Mode passes: a program is compiled for one mode. Both modes resolve each training_switch to its branch and
strip with_updates (an update is computed only where the caller passes it as one); inference also removes
dropout (the identity outside training). What each op is in a mode is the op's own rule (`Op.in_mode`), which
the reference evaluator follows too."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node
from graphc.passes.rewrite import rewrite


def in_inference(n: Node) -> Node | None:
    return n.op.in_mode(n, False)


def in_training(n: Node) -> Node | None:
    return n.op.in_mode(n, True)


def inference(graph: Graph) -> Graph:
    return rewrite(graph, (in_inference,), "inference")


def training(graph: Graph) -> Graph:
    return rewrite(graph, (in_training,), "training")
