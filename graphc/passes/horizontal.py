"""Horizontal fusion of matrix products: products that share their left operand become one product of that
operand with the right operands side by side, and each result a slice of it (XLA's horizontal fusion).

An LSTM step written with one weight matrix per gate, `h @ Wi, h @ Wf, h @ Wg, h @ Wo`, then runs as one GEMM of
four times the width, which packs `h` once and keeps the microkernel busy (small products are dominated by
packing and edges). Products merge only when none of their right operands depends on another of them (that
would make a cycle) and their widths are known."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node, derived_from, topo_order
from graphc.ops.linalg import MATMUL, matmul
from graphc.ops.movement import concatenate
from graphc.passes.rewrite import rebuild


def _key(n: Node):
    if n.op is not MATMUL or n.ndim != 2:
        return None
    a, b = n.inputs
    if b.ndim != 2 or not isinstance(n.shape[1], int):
        return None
    return (id(a), n.attrs["ta"], n.attrs["tb"], n.dtype)


def merge_products(graph: Graph) -> Graph:
    order = graph.nodes()
    groups: dict[tuple, list[Node]] = {}
    for n in order:
        k = _key(n)
        if k is not None and n.inputs[1] not in [m.inputs[1] for m in groups.get(k, [])]:
            groups.setdefault(k, []).append(n)
    group_of: dict[int, list[Node]] = {}
    for members in groups.values():
        ids = {id(m) for m in members}
        # a right operand computed from another product of the group would make the merged product its own input
        members = [m for m in members if not any(id(x) in ids for x in topo_order(m.inputs[1]) if x is not m)]
        if len(members) >= 2:
            for m in members:
                group_of[id(m)] = members
    if not group_of:
        return graph
    memo: dict[int, Node] = {}

    def get(root: Node) -> Node:
        """root over the merged products (its ancestors rebuilt first, iteratively)."""
        for n in topo_order(root):
            if id(n) in memo:
                continue
            members = group_of.get(id(n))
            if members is None:
                memo[id(n)] = rebuild(n, tuple(memo[id(i)] for i in n.inputs))
                continue
            first = members[0]
            ta, tb = first.attrs["ta"], first.attrs["tb"]
            a = get(first.inputs[0])
            bs = [get(m.inputs[1]) for m in members]
            with derived_from(first.source, "rewrite: merge_products"):
                wide = matmul(a, concatenate(bs, axis=0 if tb else 1), ta=ta, tb=tb)
                off = 0
                for m in members:
                    memo[id(m)] = wide[:, off:off + m.shape[1]]
                    off += m.shape[1]
        return memo[id(root)]

    return graph.with_outputs(tuple(get(o) for o in graph.outputs))
