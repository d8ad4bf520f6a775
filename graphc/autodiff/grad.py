"""Reverse mode as dynamic programming: one backward sweep in reverse topological order, each node's adjoint
summed once from its users' contributions and then pushed through its op's vector-Jacobian rule.

The result is made of ordinary nodes in the same IR (hash-consed with the forward graph, so forward values are
reused, not recomputed): it can be printed, evaluated, compiled, and differentiated again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from graphc.errors import DTypeError, GradError, ShapeError
from graphc.ir.node import Node, capture_source, derived_from, shaped_like, topo_order
from graphc.ir.shapes import FLOAT_DTYPES, fmt_shape
from graphc.ops.core import Tensor, as_tensor, constant, describe
from graphc.ops.movement import broadcast_to
from graphc.ops.pointwise import add, full_like


def zeros_like(x: Node) -> Tensor:
    """The gradient of a tensor y does not depend on: zeros of its shape and dtype. With a static shape they are a
    constant, so evaluating or compiling the gradient needs no value for x (a parameter the loss never reads);
    a symbolic dim is read from x."""
    if all(isinstance(d, int) for d in x.shape):
        return broadcast_to(constant(0.0, x.dtype), x.shape) if x.shape else constant(0.0, x.dtype)
    return full_like(x, 0.0)


def grad(y: Node, wrt: Node | Sequence[Node], seed=None) -> Tensor | list[Tensor]:
    """Gradients of `y` with respect to each tensor in `wrt`, as graph tensors.

    `y` must be a float scalar, unless `seed` (the cotangent of y, same shape) is given: then the result is
    the vector-Jacobian product seedᵀ·∂y/∂wrt. A tensor that `y` does not depend on gets zeros of its shape."""
    here = capture_source().where()
    if not isinstance(y, Node):
        raise GradError(f"grad: y must be a tensor, got {type(y).__name__} (at {here})")
    if not isinstance(wrt, (Node, list, tuple, Mapping)) and isinstance(wrt, Iterable) \
            and not isinstance(wrt, (str, bytes)):
        wrt = list(wrt)  # a generator: read once, the result a list
    targets = _wrt_targets(wrt, "grad", here)
    for w in targets:
        if w.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"grad: cannot differentiate with respect to {describe(w)}, an integer/bool "
                             f"tensor declared at {w.source.where()} (at {here})")
    if y.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"grad: y ({describe(y)}, from {y.label} at {y.source.where()}) is not a float "
                         f"tensor: an integer or bool result has no gradient; differentiate a float tensor (at {here})")
    if seed is None:
        if y.shape != ():
            raise GradError(
                f"grad: y ({describe(y)}, from {y.label} at {y.source.where()}) is not a scalar; reduce it "
                f"(e.g. gc.sum or gc.mean) or pass seed=<cotangent of shape {fmt_shape(y.shape)}> (at {here})"
            )
        seed_node = constant(1.0, y.dtype)
    else:
        if isinstance(seed, np.ndarray) or not isinstance(seed, Node):
            seed_node = constant(np.asarray(seed), y.dtype) if not isinstance(seed, Node) else seed
        else:
            seed_node = seed
        seed_node = as_tensor(seed_node)
        if seed_node.dtype != y.dtype:
            raise DTypeError(f"grad: seed is {seed_node.dtype}, y is {y.dtype} (at {here})")
        if seed_node.shape != y.shape:
            if seed_node.shape == ():
                seed_node = broadcast_to(seed_node, y.shape)
            else:
                raise ShapeError(f"grad: seed has shape {fmt_shape(seed_node.shape)} but y ({describe(y)}) has "
                                 f"{fmt_shape(y.shape)} (at {here})")

    total = _sweep([(y, seed_node)], targets)
    out = [total[id(w)] if id(w) in total else zeros_like(w) for w in targets]
    return shaped_like(wrt, out)


def vjp(seeds: Sequence[tuple[Node, Node]], wrt: Sequence[Node], leaves: Sequence[Node] = ()) -> list[Tensor]:
    """One reverse sweep with several seeded outputs: sum_k seed_kᵀ·∂out_k/∂w for each w in `wrt` (zeros where
    nothing flows). A scan's gradient builds its reverse body with one call of this over the body.

    `leaves`: nodes taken as variables of their own: the sweep does not go on past them to what they are
    computed from. A loop's gradient sweeps its body so, its captures the leaves: W and sum(W) are two inputs of
    the loop, and the sweep outside the loop carries sum(W)'s share on to W (here it would be counted twice)."""
    total = _sweep(list(seeds), list(wrt), leaves)
    return [total[id(w)] if id(w) in total else zeros_like(w) for w in wrt]


def _sweep(seeds: list[tuple[Node, Node]], targets: list[Node], leaves: Sequence[Node] = ()) -> dict[int, Node]:
    """The reverse sweep: the summed adjoint of every node on a path from a target to a seeded output (none
    past a leaf).

    A multi-output node (a scan: `op.multi_output`) is read through projections (`op.projection`, with an
    `index` attribute): a projection's adjoint goes to its tuple node tagged with the index, and the tuple
    node's `vjp_multi(node, [adjoint or None per output])` gives its inputs' cotangents."""
    order = topo_order([o for o, _ in seeds])
    wanted = {id(w) for w in targets}
    stop = {id(x) for x in leaves}
    # only nodes on a path from some wrt to y carry adjoints worth computing
    live: set[int] = set()
    for n in order:
        if id(n) in wanted or any(id(i) in live for i in n.inputs):
            live.add(id(n))
    contributions: dict[int, list] = {}
    for o, s in seeds:
        contributions.setdefault(id(o), []).append(s)
    total: dict[int, Node] = {}
    for n in reversed(order):
        parts = contributions.pop(id(n), None)
        if parts is None or id(n) not in live:
            continue
        if getattr(n.op, "multi_output", False):
            gs: list = [None] * max(len(n.op.output_types(n)), 1 + max(k for k, _ in parts))
            with derived_from(n.source, f"grad of {n.op.name}"):
                for k, p in parts:
                    gs[k] = p if gs[k] is None else add(gs[k], p)
                cts = n.op.vjp_multi(n, gs, vjp, [id(i) in live for i in n.inputs])
        else:
            g = parts[0]
            with derived_from(n.source, f"grad of {n.op.name}"):
                for p in parts[1:]:
                    g = add(g, p)
            total[id(n)] = g
            if not n.inputs or not n.op.differentiable or not any(id(i) in live for i in n.inputs) \
                    or id(n) in stop:
                continue
            if getattr(n.op, "projection", False):
                contributions.setdefault(id(n.inputs[0]), []).append((n.attrs["index"], g))
                continue
            with derived_from(n.source, f"grad of {n.op.name}"):
                cts = n.op.vjp(n, g)
        assert len(cts) == len(n.inputs), f"{n.op.name}.vjp returned {len(cts)} cotangents"
        for x, ct in zip(n.inputs, cts, strict=True):
            if ct is None or id(x) not in live:
                continue
            assert ct.shape == x.shape and ct.dtype == x.dtype, (
                f"{n.op.name}.vjp gave {ct.type_str} for an input of {x.type_str}")
            contributions.setdefault(id(x), []).append(ct)
    return total


JACOBIAN_ROWS = 4096  # reverse mode costs one backward sweep per element of y: beyond this, reduce y first


def jacobian(y: Node, wrt: Node | Sequence[Node]) -> Tensor | list[Tensor]:
    """∂y/∂wrt as a tensor of shape y.shape + wrt.shape (a list of them for a list of wrt): one vector-Jacobian
    product per element of y (reverse mode, as jax.jacrev and PyTensor's jacobian), each row seeded by a one-hot
    cotangent and stacked. The backward sweeps share the forward graph (hash-consed); the graph grows with the
    size of y, which must be static and at most JACOBIAN_ROWS elements."""
    from graphc.ops.movement import reshape, stack

    here = capture_source().where()
    if not isinstance(y, Node):
        raise GradError(f"jacobian: y must be a tensor, got {type(y).__name__} (at {here})")
    if not all(isinstance(d, int) for d in y.shape):
        raise GradError(f"jacobian: y ({describe(y)}) has a symbolic dim; its Jacobian has a row per element, so "
                        f"its shape must be known (at {here})")
    n = int(np.prod(y.shape, dtype=np.int64))
    if n > JACOBIAN_ROWS:
        raise GradError(f"jacobian: y ({describe(y)}) has {n} elements, one backward sweep each; at most "
                        f"{JACOBIAN_ROWS}: reduce y first, or use grad with seed= for vector-Jacobian products "
                        f"(at {here})")
    targets = _wrt_targets(wrt, "jacobian", here)
    eye = np.eye(max(n, 1), dtype=np.float64)
    rows = [grad(y, targets, seed=constant(eye[i].reshape(y.shape), y.dtype)) for i in range(n)]
    out = [reshape(stack([r[k] for r in rows], 0), (*y.shape, *w.shape)) if n else
           broadcast_to(constant(0.0, w.dtype), (*y.shape, *w.shape)) for k, w in enumerate(targets)]
    return shaped_like(wrt, out)


def _wrt_targets(wrt, fn: str, here: str) -> list[Node]:
    """The tensors of `wrt`, depth first: a tensor, or lists, tuples and dicts of them, nested as a JAX pytree (a
    Flax-style {"dense": {"W": W, "b": b}}, the [(W1, b1), (W2, b2)] of a JAX MLP); the result takes wrt's form
    (shaped_like: a dict for a dict, the top level a list, nested tuples, lists and dicts as they were)."""
    targets: list[Node] = []
    stack = [wrt]
    while stack:
        t = stack.pop()
        if isinstance(t, Node):
            targets.append(t)
        elif isinstance(t, (list, tuple, Mapping)):
            stack.extend(reversed(list(t.values() if isinstance(t, Mapping) else t)))
        else:
            raise GradError(f"{fn}: wrt must be a tensor, or a list or dict of tensors, got {type(t).__name__}"
                            f"{'' if t is wrt else ' in it'} (lists, tuples and dicts of tensors may nest) (at {here})")
    return targets


def hessian(f: Node, wrt: Node | Sequence[Node]) -> Tensor | list[list[Tensor]]:
    """∂²f/∂wrt² for a scalar f: the Jacobian of grad(f, wrt), shape wrt.shape + wrt.shape. For a list of wrt,
    every block, as jax.hessian with a tuple of argnums: H[i][j] = ∂²f/∂wrt_i∂wrt_j, shape wrt_i.shape +
    wrt_j.shape (the cross terms included). For a large wrt, a Hessian-vector product (grad of grad · v) is
    cheaper."""
    here = capture_source().where()
    if isinstance(f, Node) and f.shape != ():
        raise GradError(f"hessian: f ({describe(f)}) must be a scalar (at {here})")
    g = grad(f, _wrt_targets(wrt, "hessian", here))
    # block (i, j) = ∂g_i/∂wrt_j, each row in wrt's form: one tensor, a list of lists, a dict of dicts (jax's)
    return shaped_like(wrt, [jacobian(gk, wrt) for gk in g])
