"""The numpy reference evaluator: runs any graph at any stage, plainly. Every backend is tested against it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.ir.node import (
    Node,
    capture_source,
    live_leaf_names,
    nodes_in_mode,
    nodes_within,
    output_nodes,
    shaped_like,
    topo_order,
)
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, bind, eval_shape, fmt_type
from graphc.ops.core import EvalContext
from graphc.ops.random import KEY_NAME


def leaves_by_name(order: list[Node]) -> dict[str, Node]:
    """The graph's inputs and parameters by name; two different tensors may not share a name."""
    out: dict[str, Node] = {}
    for n in order:
        if n.op.name not in ("input", "param"):
            continue
        other = out.get(n.name)
        if other is not None and other is not n:
            if (n.op.name == other.op.name == "param" and n.shape == other.shape and n.dtype == other.dtype
                    and n.attrs.get("init") != other.attrs.get("init")):
                # the one difference is the initializer: most likely a weight meant to be shared (tied) by name
                raise GraphcError(
                    f"two different tensors are named {n.name!r}: the parameter {fmt_type(n.shape, n.dtype)} is "
                    f"declared twice with different initializers, {_init_desc(other)} at {other.source.where()} "
                    f"and {_init_desc(n)} at {n.source.where()}, so they are two parameters of one name; to "
                    f"share one (tying, e.g. an embedding's table as the output layer's weights) use the tensor "
                    f"itself, gc.nn.parameters(layer_output) gives a layer's, or declare it again with the same init=; "
                    f"else give them distinct names")
            raise GraphcError(
                f"two different tensors are named {n.name!r}: {other.op.name} {fmt_type(other.shape, other.dtype)} "
                f"declared at {other.source.where()} and {n.op.name} {fmt_type(n.shape, n.dtype)} declared at "
                f"{n.source.where()}; give them distinct names"
                + (" (a layer's parameters are named after it: gc.nn.dense(x, units, name='hidden1'); or build "
                   "the model inside `with gc.nn.model_build():`, which names unnamed layers dense, dense_1, ...)"
                   if n.op.name == "param" and other.op.name == "param" else "")
            )
        out[n.name] = n
    _unnamed_layers_apart(order, out)
    return out


def _init_desc(n: Node) -> str:
    init = n.attrs.get("init")
    return f"init={init!r}" if isinstance(init, (str, int, float)) else f"init={init}"


def _unnamed_layers_apart(order: list[Node], leaves: dict[str, Node]) -> None:
    """Two unnamed layers built outside a model build got one name and, of one shape, one parameter: refused
    when both are in the graph (see graphc.nn.layers.note_unnamed_use)."""
    present = None
    for p in leaves.values():
        uses = p.meta.get("unnamed_layer_uses") if p.op.name == "param" else None
        if not uses or len(uses) < 2:
            continue
        if present is None:  # the graph's nodes, its loops' bodies included
            present = {id(n) for n in nodes_within(order)}
        here = []  # per layer, the first of what it built that this graph holds
        for u in uses:
            hit = next((n for n in (r() for r in u) if n is not None and id(n) in present), None)
            if hit is not None:
                here.append(hit)
        if len(here) >= 2:
            layer = p.name.rsplit(".", 1)[0]
            raise GraphcError(
                f"two unnamed layers share the parameter {p.name!r} ({fmt_type(p.shape, p.dtype)}): the layers built "
                f"at {here[0].source.where()} and at {here[1].source.where()}. Outside `with gc.nn.model_build():` "
                f"an unnamed layer is named {layer!r} whatever came before, so layers of one shape would train one "
                "set of weights; name them (name='hidden1', ...) or build the model inside "
                "`with gc.nn.model_build():`, which names them dense, dense_1, ... (to tie weights on purpose, give "
                "both layers the same name)")


def _declared(n: Node) -> str:
    return f"{n.op.name} {n.name!r} ({fmt_type(n.shape, n.dtype)}, declared at {n.source.where()})"


def check_value(n: Node, value: Any, what: str = "", exact: bool = False) -> np.ndarray:
    """The value as an array of a dtype acceptable for `n`, or a located error. Float declarations accept
    float32 and float64 (float64 evaluates the whole graph in float64); ints accept any integer dtype.
    `exact`: for a compiled function, which takes only the declared dtype (its advice says so)."""
    pre = f"{what}: " if what else ""
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise InputError(f"{pre}the value for {_declared(n)} is not array-like: {e}") from None
    kind = arr.dtype.kind
    if n.dtype in FLOAT_DTYPES:
        if kind in "iuf" and not isinstance(value, (np.ndarray, np.generic)):  # a Python list of numbers: as a
            return arr.astype(n.dtype)  # Python number is, taken in the declared dtype
        if kind == "f" and arr.dtype.itemsize >= 4:
            return arr
        raise DTypeError(f"{pre}the value for {_declared(n)} has dtype {arr.dtype}; " + (
            f"a compiled function takes exactly its declared dtype {n.dtype} (pass .astype(np.{n.dtype}))" if exact
            else "pass float32 (or float64 to evaluate in double precision)"))
    if n.dtype in INT_DTYPES:
        if kind in "iu":
            fits, have = np.iinfo(n.dtype), np.iinfo(arr.dtype)
            if arr.size and (have.min < fits.min or have.max > fits.max):  # would wrap when evaluated as n.dtype
                bad = (arr < fits.min) | (arr > fits.max)
                if bad.any():
                    where = tuple(int(i) for i in np.argwhere(bad)[0])
                    raise InputError(f"{pre}the value for {_declared(n)} holds {arr[where]} at index {where}, "
                                     f"outside {n.dtype}'s range [{fits.min}, {fits.max}]")
            return arr
        raise DTypeError(f"{pre}the value for {_declared(n)} has dtype {arr.dtype}; pass integers")
    if kind != "b":
        raise DTypeError(f"{pre}the value for {_declared(n)} has dtype {arr.dtype}; pass booleans")
    return arr


def key_hint(draws: bool) -> str:
    """What a missing `rng_key` is for, said after its name: `draws` where a gc.random draw reads it."""
    return (" (the key of gc.random's draws: pass an int seed for it, e.g. rng_key=0)" if draws else
            " (the dropout key: pass an int seed for it in training mode)")


def bind_values(order: list[Node], values: Mapping, *, training: bool, allow_unused: bool,
                what: str, exact: bool = False, reads_key: bool | None = None, roots: Sequence[Node] | None = None,
                computed: list[Node] | None = None) -> tuple[dict[int, np.ndarray], dict, bool]:
    """Match `values` (keys: names or tensors) to the graph's leaves, check dtypes and shapes, bind dims.
    `reads_key`: whether the program reads the key, where its compiled stages know (a later pass may drop the last
    reader), and then `order` is the compiled program's signature, every other leaf read; None: the evaluator's
    rule below, the leaves what the outputs compute in this mode reads (`roots`: the outputs, where one may be read
    by another: nodes_in_mode; `computed`: that list, where the caller has it already).

    Returns (leaf id -> array, dim env, whether any float value is a float64 array)."""
    if not isinstance(values, Mapping):
        raise InputError(f"{what}: values must be a dict of name (or tensor) -> array, got {type(values).__name__}")
    by_name = leaves_by_name(order)
    ids = {id(n) for n in by_name.values()}
    given: dict[int, Any] = {}
    unknown = []
    for key, val in values.items():
        if isinstance(key, Node):
            if id(key) not in ids:
                kind = "a computed tensor" if key.op.name not in ("input", "param") else "not part of this graph"
                raise InputError(f"{what}: values has a key {key!r} that is {kind}; feed inputs and parameters only")
            given[id(key)] = val
        elif isinstance(key, str):
            n = by_name.get(key)
            if n is None:
                if key != KEY_NAME:
                    unknown.append(key)
                continue
            if id(n) in given:
                raise InputError(f"{what}: {key!r} is given twice (by name and by tensor)")
            given[id(n)] = val
        else:
            raise InputError(f"{what}: values keys must be names or tensors, got {type(key).__name__} {key!r}")
    if unknown and not allow_unused:
        # a value for an input this graph happens not to read is fine; a name nothing carries is a typo
        unknown = sorted(set(unknown) - live_leaf_names())
        if unknown:
            names = ", ".join(sorted(by_name)) or "(none)"
            raise InputError(f"{what}: unknown name(s) {', '.join(map(repr, unknown))} in values: no input or "
                             f"parameter has that name; the graph reads: {names}")
    # the key is needed where this mode reads it, as in the compiled program: a draw or (training) a dropout in
    # what the outputs compute, in loops too, not in a training_switch's other branch
    if computed is None:
        computed = nodes_in_mode(order, training, roots)
    draws = any(n.op.name == "random" for n in computed)
    # the evaluator demands the leaves this mode reads (a training_switch's other branch may read inputs of its
    # own), as a compiled program of the mode is made without the others
    live = {id(n) for n in computed} if reads_key is None else None
    if reads_key is None:
        reads_key = draws or training and any(n.op.name == "dropout" for n in computed)  # else the identity
    needed = [n for n in by_name.values() if (live is None or id(n) in live) and (reads_key or n.name != KEY_NAME)]
    missing = [n for n in needed if id(n) not in given]
    if missing:
        lines = "; ".join(_declared(n) for n in missing)
        hint = ""
        if any(n.name == KEY_NAME for n in missing):
            hint = key_hint(draws)
        raise InputError(f"{what}: missing value(s) for {lines}{hint}")
    env: dict = {}
    owner: dict = {}
    arrays: dict[int, np.ndarray] = {}
    wide = False
    # inputs whose dims are ints and plain symbols first: they bind the symbols that a derived dim (an input
    # declared with a reshape's N*T, say) is then checked against, whatever order the graph lists them in
    for n in sorted(needed, key=lambda n: not all(isinstance(d, int) or d.is_symbol for d in n.shape)):
        arr = check_value(n, given[id(n)], what, exact)
        bind(n.shape, arr.shape, env, f"{what}: {_declared(n)}", owner)
        if n.dtype in FLOAT_DTYPES and arr.dtype == np.float64 and isinstance(given[id(n)], (np.ndarray, np.generic)):
            wide = True  # a float64 array; a Python float (a learning rate) takes the declared dtype
        arrays[id(n)] = arr
    return arrays, env, wide


def check_dims_bound(order: list[Node], bound, what: str) -> None:
    """A ShapeError naming the first node whose shape has a symbolic dim that no input of the graph binds (a
    gc.zeros(("N", 3)) in a graph that reads no input with N): nothing could give it a value."""
    for n in order:
        loop = n.op.name == "scan"  # its length, which no shape of its own may show (a scan over no xs)
        for d in (n.attrs["length"],) if loop else n.shape:
            if isinstance(d, int):
                continue
            free = sorted((s for s in d.free_symbols if s not in bound), key=str)
            if free:
                s = free[0]
                what_n = f"the length {d} of the scan" if loop else f"{n.op.name} ({fmt_type(n.shape, n.dtype)})"
                raise ShapeError(f"{what}: {what_n} at {n.source.where()} has the dim {s}, but no input the graph "
                                 f"reads has {s} in its shape, so nothing gives it a value; read an input with that "
                                 "dim, or give the " + ("length as an int" if loop else "shape in ints"))


def evaluate(outputs, values: Mapping | None = None, *, training: bool = False, allow_unused: bool = False):
    """Evaluate `outputs` (a tensor or a list of tensors) given `values` for the graph's inputs and parameters.

    Keys of `values` are names or the tensors themselves. A name that no input or parameter carries is an error
    (a typo); values for inputs this graph does not read are ignored (`allow_unused=True` ignores any extra).
    If any float value is a float64 array (or the graph declares float64), every float is computed in float64;
    Python numbers take the declared dtype. `values` may be left out for a graph of constants.
    `training=True` applies dropout (the `rng_key` input must then be given); otherwise dropout is the identity.
    Returns an array, a list of arrays for a list, or a dict of arrays (the same keys) for a dict {key: tensor}."""
    outs = output_nodes(outputs, "evaluate")
    values = {} if values is None else values
    where = f"evaluate at {capture_source().where()}"
    order = topo_order(outs)
    computed = nodes_in_mode(order, training, outs)  # what this mode computes: not a training_switch's other branch
    arrays, env, wide = bind_values(order, values, training=training, allow_unused=allow_unused, what=where,
                                    roots=outs, computed=computed)
    live = {id(n) for n in computed}
    order = [n for n in order if id(n) in live]
    check_dims_bound(order, env, where)
    if any(n.dtype == "float64" for n in order):
        wide = True
    ctx = EvalContext(np.dtype("float64" if wide else "float32"), training, env)
    vals: dict[int, np.ndarray] = {}
    for n in order:
        if id(n) in arrays:
            vals[id(n)] = arrays[id(n)].astype(ctx.dtype(n.dtype), copy=False)
            continue
        if n.op.name in ("input", "param"):  # the dropout key outside training: never read
            vals[id(n)] = np.zeros((), dtype=n.dtype)
            continue
        instead = n.op.in_mode(n, training)
        if instead is not None:  # a switch, or dropout in inference: the input it is in this mode
            vals[id(n)] = vals[id(instead)]
            continue
        try:
            out = n.op.reference(n, [vals[id(i)] for i in n.inputs], ctx)
        except GraphcError:
            raise
        except Exception as e:  # an op's reference failing is a graphc bug or an unsupported case: locate it
            raise GraphcError(f"evaluate: {n.op.name} ({fmt_type(n.shape, n.dtype)}) at {n.source.where()} "
                              f"failed: {type(e).__name__}: {e}") from e
        if getattr(n.op, "multi_output", False):  # a tuple (a scan): its projections read it
            vals[id(n)] = out
            continue
        out = np.asarray(out)
        assert out.shape == eval_shape(n.shape, env), (
            f"{n.op.name} produced {out.shape} for {n.type_str}")
        vals[id(n)] = out
    results = [np.array(vals[id(o)], dtype=ctx.dtype(o.dtype), copy=True) for o in outs]
    return shaped_like(outputs, results)


__all__ = ["evaluate", "ShapeError"]
