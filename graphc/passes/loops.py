"""Loop bodies: the rewrites that make a scan's step cheap, applied to each scan of the graph.

* **Input projections out of the loop**: a product `x_t @ W` of a step's slice of an xs and a weight the step
  closed over is, over all steps, ONE product `reshape(X, (T·N, F)) @ W` before the loop; the body reads its
  rows as a new xs. (An LSTM written with one weight matrix per gate then computes its four input projections
  before the loop, and the graph's horizontal fusion makes them one GEMM.)
* **Transposed weights stored once**: the gradient's `g @ Whᵀ` reads `Whᵀ` computed before the loop, so
  the GEMM of every step reads its weight in place instead of repacking a transposed one.
* **Horizontal fusion inside the body** (passes/horizontal.py): the products that share `h`, `h @ Wi, h @ Wf,
  h @ Wg, h @ Wo`, become one product with the weights side by side; the concatenated weights depend on the
  weights alone, so they are computed once per call, before the loop (they become a capture, as everything a
  step computes from its captures alone). Likewise a sum of products of step values and loop-invariant
  weights (the gradient's `Σ_g dz_g @ Wh_gᵀ`) becomes one product over the K's side by side. (The gradients of
  the weights and biases themselves are summed after the loop: graphc.ops.scan's `_hoistable`.)

The body is rebuilt by tracing it again (graphc.ops.scan), so its placeholders stay canonical. The scan's
stored intermediates (projections past its history, read by the gradient) follow their nodes into the new
body; one that became a hoisted product is read from that product directly."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.node import Node, derived_from, topo_order
from graphc.ir.shapes import dims_equal
from graphc.ops.core import apply
from graphc.ops.linalg import MATMUL, matmul
from graphc.ops.movement import reshape, transpose
from graphc.ops.scan import SCAN, SCAN_OUTPUT, Body, make_body, output, substitute
from graphc.passes.horizontal import merge_product_sums, merge_products
from graphc.passes.rewrite import rebuild, saved_positions


def _input_products(body: Body) -> list[Node]:
    """The body's products x_t @ W: x_t a step's slice (2-D) of an xs, W a capture (2-D), not transposed."""
    nc, nx = body.n_carry, body.n_x
    pos = {id(a): k for k, a in enumerate(body.args)}
    out = []
    for n in body.order():
        if n.op is not MATMUL or n.ndim != 2 or n.attrs["ta"]:
            continue
        a, w = n.inputs
        ka, kw = pos.get(id(a)), pos.get(id(w))
        if ka is not None and kw is not None and nc <= ka < nc + nx and kw >= nc + nx and a.ndim == 2:
            out.append(n)
    return out


def _transposed_weights(body: Body) -> bool:
    """Whether a product in the body reads a capture transposed (x·Wᵀ: the gradient's g·Whᵀ)."""
    caps = {id(a) for a in body.captures}
    return any(n.op is MATMUL and n.attrs["tb"] and id(n.inputs[1]) in caps for n in body.order())


def _pretransposed(outs: list[Node], placeholders: set[int]) -> list[Node]:
    """Products x·Wᵀ of a step value and a loop-invariant W read Wᵀ stored once, before the loop (a transposed
    operand would be repacked by every step's GEMM)."""
    dep = set(placeholders)
    memo: dict[int, Node] = {}
    for n in topo_order(outs):
        ins = tuple(memo.get(id(i), i) for i in n.inputs)
        if any(id(i) in dep for i in n.inputs):
            dep.add(id(n))
        if n.op is MATMUL and n.attrs["tb"] and id(n.inputs[1]) not in dep and ins[1].ndim == 2:
            with derived_from(n.source, "rewrite: transposed weight before the loop"):
                memo[id(n)] = matmul(ins[0], transpose(ins[1]), ta=n.attrs["ta"])
        else:
            memo[id(n)] = rebuild(n, ins)
    return [memo[id(o)] for o in outs]


def _retrace(n: Node, body: Body, inputs, extra: list[Node], hoist: list[Node], merge: bool,
             pretranspose: bool = False):
    """The body traced again over canonical placeholders, with the products in `hoist` read from new xs, with
    `merge` the products sharing a left operand merged, with `pretranspose` the weights read transposed
    stored transposed: (body, its captures, images of `extra`)."""
    nc, nx = body.n_carry, body.n_x

    def step(carry_args, x_args):
        mapping = {id(a): v for a, v in zip(body.args[:nc + nx], [*carry_args, *x_args[:nx]], strict=True)}
        mapping.update({id(m): x_args[nx + i] for i, m in enumerate(hoist)})
        mapping.update({id(a): inputs[k] for k, a in enumerate(body.args) if k >= nc + nx})
        outs = substitute([*body.outputs, *extra], mapping)
        if merge:
            step_args = {id(a) for a in [*carry_args, *x_args]}
            outs = merge_product_sums(outs, step_args)
            outs = list(merge_products(Graph.of(outs)).outputs)
        if pretranspose:
            outs = _pretransposed(outs, {id(a) for a in [*carry_args, *x_args]})
        return outs[:nc], outs[nc:]

    carry_types = [(a.shape, a.dtype) for a in body.args[:nc]]
    x_types = [(a.shape, a.dtype) for a in body.args[nc:nc + nx]] + [(m.shape, m.dtype) for m in hoist]
    traced, captures, _, _ = make_body(step, carry_types, x_types, f"scan at {n.source.where()}")
    no = len(body.outputs)
    return Body(traced.args, traced.outputs[:no], nc, nx + len(hoist)), captures, list(traced.outputs[no:])


def _optimize_scan(n: Node, inputs: tuple[Node, ...], saved: list[int]):
    """(the new scan node, {old saved position: the node that replaces its projection}), or None when no rewrite
    applies. First the products sharing a left operand merge (the four gates' x_t·W and h·W), then the input
    products x_t·W leave the loop."""
    body: Body = n.attrs["body"]
    nc, nx = body.n_carry, body.n_x
    T = n.attrs["length"]
    order = body.order()
    extra = [order[p] for p in saved]
    inputs = list(inputs)
    changed = False
    probe = Graph(tuple(body.outputs) + tuple(extra), tuple(body.args))
    outs = list(probe.outputs)
    step_args = {id(a) for a in body.args[:nc + nx]}
    if merge_product_sums(outs, step_args) is not outs or merge_products(probe) is not probe:
        body, caps, extra = _retrace(n, body, inputs, extra, [], True)
        inputs = inputs[:nc + nx] + list(caps)
        changed = True
    hoist = _input_products(body) if n.attrs["checkpoint"] is None else []
    projections = []
    if hoist:
        pos = {id(a): k for k, a in enumerate(body.args)}
        with derived_from(n.source, "rewrite: input projection before the loop"):
            for m in hoist:
                x, w = inputs[pos[id(m.inputs[0])]], inputs[pos[id(m.inputs[1])]]
                p = matmul(reshape(x, (T * x.shape[1], x.shape[2])), w, tb=m.attrs["tb"])
                projections.append(reshape(p, (T, x.shape[1], m.shape[1])))
        body, caps, extra = _retrace(n, body, inputs, extra, hoist, False)
        inputs = inputs[:nc + nx] + projections + list(caps)
        changed = True
    if _transposed_weights(body):
        body, caps, extra = _retrace(n, body, inputs, extra, [], False, True)
        inputs = inputs[:nc + body.n_x] + list(caps)
        changed = True
    if not changed:
        return None
    with derived_from(n.source, "rewrite: loop body"):
        node = apply(SCAN, inputs, body=body, length=T, reverse=n.attrs["reverse"],
                     checkpoint=n.attrs["checkpoint"], level=n.attrs["level"])
    base = len(SCAN.output_types(node))
    new_order = {id(v): q for q, v in enumerate(body.order())}
    arg_pos = {id(a): k for k, a in enumerate(body.args)}
    remap: dict[int, Node] = {}
    for p, v in zip(saved, extra, strict=True):
        k = arg_pos.get(id(v))
        if k is not None and nc <= k < nc + body.n_x:  # a hoisted product (or an xs): stored already
            remap[p] = inputs[k]
        else:
            remap[p] = output(node, base + new_order[id(v)])
    return node, remap


def optimize_loops(graph: Graph) -> Graph:
    nodes = graph.nodes()
    if not any(n.op is SCAN for n in nodes):
        return graph
    saved = saved_positions(nodes)
    memo: dict[int, Node] = {}
    remaps: dict[int, dict[int, Node]] = {}
    changed = False
    for n in nodes:
        ins = tuple(memo[id(i)] for i in n.inputs)
        if n.op is SCAN:
            got = _optimize_scan(n, ins, sorted(saved.get(id(n), ())))
            if got is not None:
                memo[id(n)], remaps[id(n)] = got
                changed = True
                continue
        if n.op is SCAN_OUTPUT and id(n.inputs[0]) in remaps:
            base = len(SCAN.output_types(n.inputs[0]))
            k = n.attrs["index"]
            memo[id(n)] = remaps[id(n.inputs[0])][k - base] if k >= base else output(ins[0], k)
            continue
        memo[id(n)] = rebuild(n, ins)
    if not changed:
        return graph
    return graph.with_outputs(tuple(memo[id(o)] for o in graph.outputs))


def stacked_concats(graph: Graph) -> Graph:
    """A concatenation of a loop's stacked outputs (`concat([ys_1, ..., ys_k], axis)`, axis past the time axis;
    or along the last axis of reshapes of them that keep it, as a product over all steps reads them) is the
    stacked concatenation of their per-step values. When the body computes that concatenation itself (an LSTM
    written with one weight per gate concatenates its four gate gradients for the one recurrent GEMM of its
    reverse step), the loop stores it per step and the concatenation after the loop, a copy of every step's
    values, disappears; the stacked outputs' other readers read slices of it, so the k stacks are not stored."""
    from graphc.ops.movement import CONCAT, RESHAPE

    def stack_of(x: Node) -> Node | None:
        """The scan output x is, or reshapes keeping its last axis."""
        if x.op is RESHAPE and x.inputs[0].op is SCAN_OUTPUT and x.ndim >= 1 and x.inputs[0].ndim >= 2 \
                and dims_equal(x.shape[-1], x.inputs[0].shape[-1]):
            return x.inputs[0]
        return x if x.op is SCAN_OUTPUT else None

    nodes = graph.nodes()
    plan: dict[int, tuple[Node, int, list[Node], int]] = {}  # concat -> (scan, body position, stacks, stack axis)
    for n in nodes:
        if n.op is not CONCAT or len(n.inputs) < 2:
            continue
        stacks = [stack_of(i) for i in n.inputs]
        if any(o is None for o in stacks) or any(o.inputs[0] is not stacks[0].inputs[0] for o in stacks):
            continue
        s = stacks[0].inputs[0]
        reshaped = any(o is not i for o, i in zip(stacks, n.inputs, strict=True))
        axis = stacks[0].ndim - 1 if reshaped else n.attrs["axis"]
        if (reshaped and n.attrs["axis"] != n.ndim - 1) or axis < 1 or s.attrs["checkpoint"] is not None:
            continue
        body: Body = s.attrs["body"]
        nc, ny = body.n_carry, len(body.outputs) - body.n_carry
        idx = [o.attrs["index"] for o in stacks]
        if any(not nc <= k < nc + ny for k in idx):
            continue
        ys = [body.outputs[k] for k in idx]
        pos = next((q for q, c in enumerate(body.order()) if c.op is CONCAT and c.attrs["axis"] == axis - 1
                    and len(c.inputs) == len(ys) and all(a is b for a, b in zip(c.inputs, ys, strict=True))), None)
        if pos is not None:
            plan[id(n)] = (s, pos, stacks, axis)
    if not plan:
        return graph
    # every stack of a planned concatenation becomes a slice of the stacked concatenation
    parts: dict[int, tuple[Node, int, int, int, int]] = {}  # stack id -> (scan, body position, axis, start, stop)
    for s, pos, stacks, axis in plan.values():
        off = 0
        for o in stacks:
            parts.setdefault(id(o), (s, pos, axis, off, off + o.shape[axis]))
            off += o.shape[axis]
    memo: dict[int, Node] = {}

    def stacked(s: Node, pos: int) -> Node:
        return output(memo[id(s)], len(SCAN.output_types(s)) + pos)

    for n in nodes:
        x = n.inputs[0] if n.op is RESHAPE else None
        if id(n) in plan:
            s, pos = plan[id(n)][:2]
            with derived_from(n.source, "rewrite: stacked concatenation"):
                whole = stacked(s, pos)
                memo[id(n)] = whole if whole.shape == n.shape else reshape(whole, n.shape)
        elif id(n) in parts:
            s, pos, axis, start, stop = parts[id(n)]
            with derived_from(n.source, "rewrite: stacked concatenation"):
                memo[id(n)] = stacked(s, pos)[(slice(None),) * axis + (slice(start, stop),)]
        elif (x is not None and id(x) in parts and parts[id(x)][2] == x.ndim - 1
              and dims_equal(n.shape[-1], x.shape[-1])):
            # a reshape of a stack keeping the last axis: columns of the reshaped stacked concatenation (a view)
            s, pos, _, start, stop = parts[id(x)]
            with derived_from(n.source, "rewrite: stacked concatenation"):
                whole = stacked(s, pos)
                wide = reshape(whole, (*n.shape[:-1], whole.shape[-1]))
                memo[id(n)] = wide[(slice(None),) * (n.ndim - 1) + (slice(start, stop),)]
        else:
            memo[id(n)] = rebuild(n, tuple(memo[id(i)] for i in n.inputs))
    return graph.with_outputs(tuple(memo[id(o)] for o in graph.outputs))
