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
from graphc.ops.pointwise import ADD
from graphc.passes.rewrite import rebuild


def _merge_groups(groups: dict, roots, arrange=None) -> dict[int, list[Node]]:
    """node id -> the members of its group that merge: those none of whose `roots(member)` is computed from another
    member (the merged node would be its own input), groups of two or more, put in order by `arrange`."""
    group_of: dict[int, list[Node]] = {}
    for members in groups.values():
        ids = {id(m) for m in members}
        members = [m for m in members if not any(id(x) in ids for x in topo_order(roots(m)) if x is not m)]
        if arrange is not None:
            arrange(members)
        if len(members) >= 2:
            for m in members:
                group_of[id(m)] = members
    return group_of


def _key(n: Node):
    if n.op is not MATMUL or n.ndim != 2:
        return None
    a, b = n.inputs
    if b.ndim != 2 or not isinstance(n.shape[1], int):
        return None
    return (id(a), n.attrs["ta"], n.attrs["tb"], n.dtype)


def _stack_index(x: Node) -> int | None:
    """The output number when x is a loop's stacked output (or a reshape of one)."""
    from graphc.ops.movement import RESHAPE
    from graphc.ops.scan import SCAN_OUTPUT

    if x.op is RESHAPE:
        x = x.inputs[0]
    return x.attrs["index"] if x.op is SCAN_OUTPUT else None


def _by_stack_index(members: list[Node]) -> None:
    """Right operands that are one loop's stacked outputs side by side in output order: the order in which the
    loop's body puts the same values side by side (merge_product_sums), so passes.loops.stacked_concats can
    read the body's concatenation stacked instead of concatenating the stacks after the loop."""
    keys = [_stack_index(m.inputs[1]) for m in members]
    if None not in keys:
        order = sorted(range(len(members)), key=keys.__getitem__)
        members[:] = [members[i] for i in order]


def merge_products(graph: Graph) -> Graph:
    order = graph.nodes()
    groups: dict[tuple, list[Node]] = {}
    for n in order:
        k = _key(n)
        if k is not None and n.inputs[1] not in [m.inputs[1] for m in groups.get(k, [])]:
            groups.setdefault(k, []).append(n)
    # a right operand computed from another product of the group would make the merged product its own input
    group_of = _merge_groups(groups, lambda m: [m.inputs[1]], _by_stack_index)
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


def merge_product_sums(outputs: list[Node], step: set[int]) -> list[Node]:
    """Inside a loop body: a sum of products `A_1·B_1 + ... + A_n·B_n` of step values A_k and loop-invariant B_k
    (nodes that depend on none of the placeholders in `step`) becomes ONE product `[A_1 ... A_n]·[B_1; ...; B_n]`
    (the contraction runs over the K's side by side). The backward step of an LSTM written with one weight per
    gate, `Σ_g dz_g·Wh_gᵀ`, is then one GEMM of K = 4H, not four GEMMs of K = H and three additions; the stacked
    weights are loop-invariant, so they are computed once, before the loop. Products merge when each is read only
    by the sum, is 2-D, not transposed on the left, has a static K and an A computed in the step. Returns
    `outputs` itself when nothing merges."""
    order = topo_order(outputs)
    dep: set[int] = set(step)
    n_users: dict[int, int] = {}
    for n in order:
        if any(id(i) in dep for i in n.inputs):
            dep.add(id(n))
        for i in n.inputs:
            n_users[id(i)] = n_users.get(id(i), 0) + 1
    for o in outputs:
        n_users[id(o)] = n_users.get(id(o), 0) + 1

    def terms(n: Node) -> list[Node]:
        out = []
        for i in n.inputs:
            if i.op is ADD and i.shape == n.shape and n_users.get(id(i), 0) == 1:
                out += terms(i)
            else:
                out.append(i)
        return out

    def mergeable(t: Node, shape) -> bool:
        if t.op is not MATMUL or t.ndim != 2 or t.attrs["ta"] or t.shape != shape or n_users.get(id(t), 0) != 1:
            return False
        a, b = t.inputs
        # A computed in the step, not a placeholder itself: x_t·W leaves the loop (one product over all steps)
        return id(a) in dep and id(a) not in step and id(b) not in dep and b.ndim == 2 and isinstance(a.shape[1], int)

    out_pos = {id(o): q for q, o in reversed(list(enumerate(outputs)))}
    inner: set[int] = set()
    plans: dict[int, tuple[list[Node], list[Node]]] = {}
    for n in reversed(order):
        if n.op is not ADD or id(n) in inner or n.ndim != 2:
            continue
        ts = terms(n)
        groups: dict[tuple, list[Node]] = {}
        for t in ts:
            if mergeable(t, n.shape):
                groups.setdefault((t.attrs["tb"], t.dtype), []).append(t)
        merged = [g for g in groups.values() if len(g) >= 2]
        for g in merged:  # left operands that are step outputs side by side in output order (see _by_stack_index)
            if all(id(t.inputs[0]) in out_pos for t in g):
                g.sort(key=lambda t: out_pos[id(t.inputs[0])])
        if not merged:
            continue
        plans[id(n)] = (ts, merged)
        stack = [i for i in n.inputs]
        while stack:  # the additions flattened into this sum are not roots of their own
            i = stack.pop()
            if i.op is ADD and i.shape == n.shape and n_users.get(id(i), 0) == 1:
                inner.add(id(i))
                stack.extend(i.inputs)
    if not plans:
        return outputs
    memo: dict[int, Node] = {}
    for n in order:
        if id(n) not in plans:
            memo[id(n)] = rebuild(n, tuple(memo[id(i)] for i in n.inputs))
            continue
        ts, merged = plans[id(n)]
        used = {id(t) for g in merged for t in g}
        with derived_from(n.source, "rewrite: merge_product_sums"):
            parts = []
            for g in merged:
                tb = g[0].attrs["tb"]
                a = concatenate([memo[id(t.inputs[0])] for t in g], axis=1)
                b = concatenate([memo[id(t.inputs[1])] for t in g], axis=1 if tb else 0)
                parts.append(matmul(a, b, tb=tb))
            parts += [memo[id(t)] for t in ts if id(t) not in used]
            total = parts[0]
            for p in parts[1:]:
                total = total + p
        memo[id(n)] = total
    return [memo[id(o)] for o in outputs]
