"""Mode passes: a program is compiled for one mode. Both modes resolve each training_switch to its branch and
strip with_updates (an update is computed only where the caller passes it as one); inference also removes
dropout (the identity outside training)."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node
from graphc.ops.control import TRAINING_SWITCH, WITH_UPDATES
from graphc.ops.random import DROPOUT
from graphc.passes.rewrite import rewrite


def no_dropout(n: Node) -> Node | None:
    return n.inputs[0] if n.op is DROPOUT else None


def no_state_updates(n: Node) -> Node | None:
    return n.inputs[0] if n.op is WITH_UPDATES else None


def training_branch(n: Node) -> Node | None:
    return n.inputs[0] if n.op is TRAINING_SWITCH else None


def inference_branch(n: Node) -> Node | None:
    return n.inputs[1] if n.op is TRAINING_SWITCH else None


def inference(graph: Graph) -> Graph:
    return rewrite(graph, (no_dropout, inference_branch, no_state_updates), "inference")


def training(graph: Graph) -> Graph:
    return rewrite(graph, (training_branch, no_state_updates), "training")
