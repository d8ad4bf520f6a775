"""Stability rewrites: user formulas that overflow or lose precision become the stable ops.

log(exp(x)) -> x (so log(softmax) -> log_softmax), log(sigmoid(x)) -> -softplus(-x), log(1 - sigmoid(x)) ->
-softplus(x), log(1 + exp(x)) -> softplus(x), log(1 + x) -> log1p(x), exp(x) - 1 -> expm1(x),
1 / (1 + exp(-x)) -> sigmoid(x), exp(x) / sum(exp(x)) -> softmax(x), log(sum(exp(x))) -> logsumexp(x)."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node
from graphc.ops import compose
from graphc.ops import pointwise as ew
from graphc.ops.control import STOP_GRADIENT
from graphc.ops.reduce import SUM
from graphc.passes.rewrite import rewrite
from graphc.passes.simplify import _scalar


def _one_plus(n: Node) -> Node | None:
    """x when n is 1 + x or x + 1 (with a scalar constant 1), else None."""
    if n.op is ew.ADD:
        a, b = n.inputs
        if _scalar(a) == 1.0 and a.shape == ():
            return b
        if _scalar(b) == 1.0 and b.shape == ():
            return a
    return None


def _is_shifted(x: Node) -> bool:
    """x - stop_gradient(max(...)): already the stable form of a log-sum-exp argument."""
    if x.op is not ew.SUB:
        return False
    m = x.inputs[1]
    while m.op.name in ("broadcast_to", "reshape"):
        m = m.inputs[0]
    return m.op is STOP_GRADIENT


def stable_log(n: Node) -> Node | None:
    if n.op is not ew.LOG:
        return None
    (a,) = n.inputs
    if a.op is ew.EXP:
        return a.inputs[0]
    if a.op is ew.SIGMOID:
        return -ew.softplus_(-a.inputs[0])
    if a.op is ew.SUB and _scalar(a.inputs[0]) == 1.0 and a.inputs[1].op is ew.SIGMOID and a.inputs[0].shape == ():
        return -ew.softplus_(a.inputs[1].inputs[0])
    x = _one_plus(a)
    if x is not None:
        if x.op is ew.EXP:
            return ew.softplus_(x.inputs[0])
        if x.shape == n.shape:
            return ew.log1p_(x)
    if a.op is SUM and a.inputs[0].op is ew.EXP and not _is_shifted(a.inputs[0].inputs[0]):
        x = a.inputs[0].inputs[0]
        return compose.logsumexp(x, a.attrs["axes"], keepdims=a.attrs["keepdims"])
    return None


def stable_exp(n: Node) -> Node | None:
    if n.op is ew.SUB and n.inputs[0].op is ew.EXP and _scalar(n.inputs[1]) == 1.0 and n.inputs[1].shape == ():
        return ew.expm1_(n.inputs[0].inputs[0])
    if n.op is ew.DIV:
        a, b = n.inputs
        x = _one_plus(b)
        if _scalar(a) == 1.0 and a.shape == () and x is not None and x.op is ew.EXP and x.inputs[0].op is ew.NEG:
            return ew.sigmoid_(x.inputs[0].inputs[0])
        if a.op is ew.EXP and b.op is SUM and b.attrs["keepdims"] and b.inputs[0] is a and len(b.attrs["axes"]) == 1:
            if not _is_shifted(a.inputs[0]):
                return compose.softmax(a.inputs[0], b.attrs["axes"][0])
    return None


RULES = (stable_log, stable_exp)


def stability(graph: Graph) -> Graph:
    return rewrite(graph, RULES, "stability")
