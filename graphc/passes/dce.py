"""Dead-code elimination for native code: values that are read only for their shape are not computed.

broadcast_like, full_like and dim read an input's shape, not its values; in compiled code the dims are known
from the signature, so these become shape-only forms and whatever produced their input may die. stop_gradient
is the identity once gradients exist."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node
from graphc.ops import pointwise as ew
from graphc.ops.control import STOP_GRADIENT
from graphc.ops.core import apply, constant
from graphc.ops.movement import broadcast_to
from graphc.ops.sources import DIM
from graphc.passes.rewrite import rewrite


def shape_only(n: Node) -> Node | None:
    if n.op is ew.BROADCAST_LIKE:
        return broadcast_to(n.inputs[0], n.shape)
    if n.op is ew.FULL_LIKE:
        return broadcast_to(constant(n.attrs["p"], n.dtype), n.shape)
    if n.op is DIM and n.inputs:
        return apply(DIM, (), **n.attrs)
    if n.op is STOP_GRADIENT:
        return n.inputs[0]
    return None


def dce(graph: Graph) -> Graph:
    return rewrite(graph, (shape_only,), "dce")
