"""Dense layers and an MLP builder; parameter initialization from a seed."""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from graphc import ops
from graphc.errors import GraphcError
from graphc.ir.node import Node, as_nodes, capture_source, output_nodes, scope, topo_order
from graphc.nn import activations
from graphc.ops.conv import ROWS_HINT, one_axis_padding
from graphc.ops.init import SCHEMES, check_seed, draw, like, param_rng
from graphc.ops.random import dropout
from graphc.runtime.buffers import aligned_empty

ACTIVATIONS: dict[str, Callable | None] = {
    "relu": ops.relu,
    "tanh": ops.tanh,
    "sigmoid": ops.sigmoid,
    "softplus": ops.softplus,
    "leaky_relu": activations.leaky_relu,
    "elu": activations.elu,
    "gelu": activations.gelu,
    "silu": activations.silu,
    "swish": activations.swish,
    "relu6": activations.relu6,
    "hard_tanh": activations.hard_tanh,
    "hard_sigmoid": activations.hard_sigmoid,
    "hard_swish": activations.hard_swish,
    "hard_silu": activations.hard_silu,
    "selu": activations.selu,
    "celu": activations.celu,
    "mish": activations.mish,
    "softsign": activations.softsign,
    "linear": None,
    None: None,  # type: ignore[dict-item]
}


# the ReLU-like activations, initialized as relu (He); the bounded, tanh-like ones and selu (whose own LeCun
# scaling is close to Glorot's for square layers) Glorot
_HE = ("relu", "softplus", "leaky_relu", "elu", "gelu", "silu", "swish", "relu6", "hard_swish", "hard_silu", "celu",
       "mish")


def _located(msg: str) -> GraphcError:
    """A layer's error, at the user's line (the layer call in their code)."""
    return GraphcError(f"{msg} (at {capture_source().where()})")


def _activation(act) -> Callable | None:
    if callable(act):
        return act
    if act not in ACTIVATIONS:
        raise _located(f"unknown activation {act!r}; use one of {[k for k in ACTIVATIONS if k]} or a function")
    return ACTIVATIONS[act]


_build_counts: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("graphc_layer_names",
                                                                                     default=None)


@contextlib.contextmanager
def model_build() -> Iterator[None]:
    """Unnamed layers built inside are named per build, as Keras does: `dense`, `dense_1`, `dense_2`, ... in the
    order they are built, counted from the start for each build — so the same model function gives the same
    parameter names every time (weights, checkpoints and exported headers are keyed by them). graphc's trainer,
    `gc.fit`, `graphc build` and `graphc export` build the model inside one. Outside one an unnamed layer is
    `dense` (or `mlp`), whatever ran before in the process; two of them in one graph are refused at compile
    with a hint to name them or build inside `with gc.nn.model_build():`."""
    token = _build_counts.set({})
    try:
        yield
    finally:
        _build_counts.reset(token)


def unique_name(base: str) -> str:
    """`base` the first time in this model build, then `base_1`, `base_2`, ... (outside a build: `base`)."""
    counts = _build_counts.get()
    if counts is None:  # not in a model build: a count across the process would make names depend on history
        return base
    k = counts.get(base, 0)
    counts[base] = k + 1
    return base if k == 0 else f"{base}_{k}"


def layer_name(name: str | None, base: str) -> tuple[str, bool]:
    """A layer's name: the caller's, else `unique_name(base)`; and whether it is the fixed default of a layer
    built outside a model build (see `note_unnamed_use`)."""
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise _located(f"{base}: name must be a non-empty string (its parameters are called NAME.W, ...), "
                              f"got {name!r}")
        return name, False
    return unique_name(base), _build_counts.get() is None


def note_unnamed_use(param, *built) -> None:
    """Outside a model build an unnamed layer's parameters are `dense.W`, ... whatever came before, and
    parameters are hash-consed by name and shape: a second unnamed layer of the same shape would get the same
    tensors, its weights silently tied to the first's. The parameter remembers what each layer built on it
    computed (`built`: its product, or its outputs), and compiling or evaluating a graph that holds two of
    them is an error (`graphc.runtime.reference.leaves_by_name`)."""
    # weak references: a graph the user dropped is not kept alive by its parameters
    refs = tuple(weakref.ref(n) for n in built if n is not None)
    uses = param.meta.setdefault("unnamed_layer_uses", [])
    # a use is gone when nothing it built is alive: a recurrent layer's unused final carry (return_sequences)
    # dies at once while its outputs live on; pruning on it dropped the layer (when the collector had run)
    uses[:] = [u for u in uses if any(r() is not None for r in u)]
    if not any(len(u) == len(refs) and all(a() is b() for a, b in zip(u, refs, strict=True)) for u in uses):
        uses.append(refs)


def _default_init(act) -> str:
    return "he_normal" if act in _HE else "xavier_uniform"


def dense(x, units: int, activation=None, *, name: str | None = None, init=None, bias: bool = True,
          bias_init="zeros", dtype: str | None = None) -> ops.Tensor:
    """activation(x @ W + b) with W: (in, units) named `<name>.W` and b: (units,) named `<name>.b`, on the last
    axis of x ((batch, in), or (..., in) such as a sequence's (T, N, in): one product over all its rows). Without
    a name, the layers of a model are named `dense`, `dense_1`, ... in the order they are built (see
    `model_build`).

    `init` is W's initializer (default: He normal for ReLU/softplus, Glorot uniform otherwise); `bias_init` is
    b's: "zeros" (default), "like_weights" (drawn from W's distribution, as scikit-learn's MLP and PyTorch's
    Linear do), or any parameter initializer."""
    x = ops.as_tensor(x)
    name, unnamed = layer_name(name, "dense")
    if x.ndim < 2:
        raise _located(f"dense {name!r}: input must be (batch, features) or (..., features), got {x.type_str}")
    lead = None
    if x.ndim > 2:  # on the last axis, as Keras' Dense and PyTorch's Linear: one product over all leading rows
        lead = x.shape[:-1]
        rows = 1
        for d in lead:
            rows = rows * d
        x = ops.reshape(x, (rows, x.shape[-1]))
    fan_in = x.shape[1]
    if not isinstance(fan_in, int):
        raise _located(f"dense {name!r}: the feature dim of the input must be known, got {x.type_str}")
    if not isinstance(units, int) or units < 1:
        raise _located(f"dense {name!r}: units must be a positive int, got {units!r}")
    fn = _activation(activation)
    dtype = dtype or x.dtype
    with scope(name):
        w_init = init if init is not None else _default_init(activation)  # `init or` fails on an array
        w = ops.param(f"{name}.W", (fan_in, units), init=w_init, dtype=dtype)
        z = x @ w
        if unnamed:
            note_unnamed_use(w, z)
        if bias:
            if isinstance(bias_init, str) and bias_init == "like_weights":
                bias_init = like(w_init, fan_in, units)
            z = z + ops.param(f"{name}.b", (units,), init=bias_init, dtype=dtype)
        z = fn(z) if fn is not None else z
    return z if lead is None else ops.reshape(z, (*lead, units))


def mlp(x, sizes: Sequence[int], activation="relu", *, out_activation=None, name: str | None = None,
        init=None, bias_init="zeros", dropout_keep: Sequence[float] | float | None = None) -> ops.Tensor:
    """A feed-forward net: hidden layers of `sizes[:-1]` units with `activation`, an output layer of
    `sizes[-1]` units with `out_activation` (None: logits / linear). `dropout_keep` is a keep probability (a
    number, or a float32 scalar tensor set at run time) for
    the input and each hidden layer (one number for all hidden layers, or a list: input first). `init` and
    `bias_init` are as for `dense`."""
    h = ops.as_tensor(x)
    if name is None:  # layers named <name>.0, <name>.1, ...: mlp, then mlp_1, ... per model build
        name = unique_name("mlp")
    sizes = list(sizes)
    if not sizes:
        raise _located("mlp: sizes must list at least the output size")
    keeps: list[float | None]
    if dropout_keep is None:
        keeps = [None] * len(sizes)
    elif isinstance(dropout_keep, (int, float)):
        keeps = [None] + [float(dropout_keep)] * (len(sizes) - 1)
    else:
        keeps = list(dropout_keep) + [None] * (len(sizes) - len(dropout_keep))
    for i, units in enumerate(sizes):
        last = i == len(sizes) - 1
        k = keeps[i]
        if isinstance(k, Node) or (k is not None and k < 1.0):  # a Node: the keep probability read at run time
            h = dropout(h, k, salt=i + 1)
        h = dense(h, units, out_activation if last else activation, name=f"{name}.{i}",
                  init=init if init is not None else _default_init(out_activation if last else activation),
                  bias_init=bias_init)
    return h


def parameters(outputs: Node | Iterable[Node]) -> list[Node]:
    """The parameters the outputs depend on, in graph order."""
    return [n for n in topo_order(as_nodes(outputs)) if n.op.name == "param"]


def init_params(params_or_outputs, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial values for parameters (or for all parameters the given outputs use), by name, from `seed` (an int
    in [0, 2**63)). `params_or_outputs` is a tensor, a list of them or a dict of them (its values), as gc.grad's
    wrt. Each parameter draws from its own stream (seed, name), so values do not depend on declaration order.
    Given outputs (not parameters), it also holds the initial values of the state their layers update (batch
    norm's running statistics, see `init_state`): every array a call of the model reads besides its inputs."""
    nodes = output_nodes(params_or_outputs, "init_params", "params_or_outputs")
    seed = check_seed(seed, "init_params")
    params = [n for n in nodes if n.op.name == "param"]
    state: dict[str, np.ndarray] = {}
    if len(params) != len(nodes):
        params = parameters(nodes)
        state = init_state(nodes)
    from graphc.runtime.reference import leaves_by_name

    leaves_by_name(params)  # two parameters with one name would share one value: an error, as in evaluate
    out: dict[str, np.ndarray] = {}
    for p in params:
        v = draw(p.meta.get("init", "zeros"), p.shape, p.dtype, param_rng(seed, p.name))
        out[p.name] = aligned_empty(v.shape, v.dtype)  # 64-byte aligned: compiled code reads and updates it in place
        out[p.name][...] = v
    out.update(state)
    return out


# ---------------------------------------------------------------------------------------------------------
# convolutional layers (channels-last images (N, H, W, C); see graphc.ops.conv)


def conv2d(x, filters: int, kernel, stride=1, padding="same", activation="relu", *, dilation=1, groups=1,
           init=None, bias: bool = True, name: str | None = None, dtype: str | None = None) -> ops.Tensor:
    """activation(conv2d(x, W) + b) with W: (KH, KW, C, filters) named `<name>.W` and b: (filters,) named
    `<name>.b` (without a name: `conv`, `conv_1`, ... as for `dense`). `kernel` is an int or (KH, KW); `init`
    is W's initializer (default: He normal for ReLU/softplus, Glorot uniform otherwise), with fan-in KH*KW*C and
    fan-out KH*KW*filters. `groups` (PyTorch's nn.Conv2d groups; see gc.conv2d) makes W (KH, KW, C/groups,
    filters) and the fan-in KH*KW*C/groups; groups=C with filters=m*C is a depthwise convolution."""
    return _conv_layer(x, 2, filters, kernel, stride, padding, activation, dilation, init, bias, name, dtype,
                       groups)


def conv1d(x, filters: int, kernel, stride=1, padding="same", activation="relu", *, dilation=1, groups=1,
           init=None, bias: bool = True, name: str | None = None, dtype: str | None = None) -> ops.Tensor:
    """conv2d's layer over sequences x (N, T, C) (Keras' Conv1D): W (K, C/groups, filters) named `<name>.W`, b
    (filters,) named `<name>.b`, fan-in K*C/groups; `padding` a string, an int or one (before, after) pair."""
    padding = one_axis_padding(padding)
    return _conv_layer(x, 1, filters, kernel, stride, padding, activation, dilation, init, bias, name, dtype,
                       groups)


def _conv_layer(x, nsp: int, filters, kernel, stride, padding, activation, dilation, init, bias, name, dtype,
                groups=1):
    from graphc.ops.conv import _groups, _per_axis, conv_matrix

    what = f"conv{nsp}d"
    x = ops.as_tensor(x)
    name, unnamed = layer_name(name, "conv")
    if x.ndim != nsp + 2:
        grid = "(N, H, W, C) images" if nsp == 2 else "(N, T, C) sequences"
        hint = {(2, 3): " (gc.nn.conv2d on (N, H, W): add a channel axis with gc.expand_dims(x, -1))",
                (1, 2): " (gc.nn.conv1d on (N, T): add a channel axis with gc.expand_dims(x, -1))",
                (2, 2): ROWS_HINT[2]}
        raise _located(f"{what} {name!r}: input must be {nsp + 2}-D {grid}, channels last, got {x.type_str}"
                          + hint.get((nsp, x.ndim), ""))
    c = x.shape[-1]
    if not isinstance(c, int):
        raise _located(f"{what} {name!r}: the channel dim of the input must be known, got {x.type_str}")
    if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
        raise _located(f"{what} {name!r}: filters must be a positive int, got {filters!r}")
    try:
        ks = _per_axis(kernel, nsp, "kernel")
        g = _groups(groups)
    except GraphcError as err:
        raise _located(f"{what} {name!r}: {err}") from None
    if c % g or filters % g:
        raise _located(f"{what} {name!r}: groups={g} must divide both the input's channels C = {c} (input "
                       f"{x.type_str}) and filters = {filters}; pick groups dividing both (depthwise: groups = C, "
                       "filters a multiple of C)")
    fn = _activation(activation)
    dtype = dtype or x.dtype
    area = math.prod(ks)
    with scope(name):
        w_init = init if init is not None else _default_init(activation)  # `init or` fails on an array, drops 0.0
        if isinstance(w_init, str) and w_init in SCHEMES:  # the fans of a (K..., C, F) filter, not a matrix's
            w_init = like(w_init, area * c // g, area * filters)
        w = ops.param(f"{name}.W", (*ks, c // g, filters), init=w_init, dtype=dtype)
        # bias and activation on the (N*OH*OW, F) product, before its reshape to images: the GEMM's epilogue
        z, shape = conv_matrix(x, w, nsp, stride, padding, dilation, what, g)
        if unnamed:
            note_unnamed_use(w, z)
        if bias:
            z = z + ops.param(f"{name}.b", (filters,), init="zeros", dtype=dtype)
        return ops.reshape(fn(z) if fn is not None else z, shape)


def max_pool2d(x, window=2, stride=None, padding="valid") -> ops.Tensor:
    """The max over each window (stride defaults to the window); see gc.max_pool2d."""
    return ops.max_pool2d(x, window, stride, padding)


def avg_pool2d(x, window=2, stride=None, padding="valid") -> ops.Tensor:
    """The mean over each window, of real cells only; see gc.avg_pool2d."""
    return ops.avg_pool2d(x, window, stride, padding)


def max_pool1d(x, window=2, stride=None, padding="valid") -> ops.Tensor:
    """max_pool2d over sequences (N, T, C); see gc.max_pool1d."""
    return ops.max_pool1d(x, window, stride, padding)


def avg_pool1d(x, window=2, stride=None, padding="valid") -> ops.Tensor:
    """avg_pool2d over sequences (N, T, C); see gc.avg_pool1d."""
    return ops.avg_pool1d(x, window, stride, padding)


def layer_norm(x, *, axis=-1, eps: float = 1e-5, scale: bool = True, center: bool = True,
               name: str | None = None) -> ops.Tensor:
    """Layer normalization (Ba et al. 2016; PyTorch's LayerNorm, Keras' LayerNormalization): each row normalized
    over `axis` (the features: the last axis, or a tuple of trailing axes) to zero mean and unit variance (the
    biased variance, eps inside the square root), then scaled by `NAME.gamma` (ones) and shifted by `NAME.beta`
    (zeros), each of the normalized axes' shape. It is a composition: its gradient comes from mean and var's."""
    x = ops.as_tensor(x)
    name, unnamed = layer_name(name, "layer_norm")
    if x.dtype not in ("float32", "float64"):
        raise _located(f"layer_norm {name!r}: needs a float tensor, got {x.type_str}")
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    if not axes or any(isinstance(a, bool) or not isinstance(a, int) or not -x.ndim <= a < x.ndim for a in axes):
        raise _located(f"layer_norm {name!r}: axis must be an axis of {x.type_str} or a tuple of them, got "
                          f"{axis!r}")
    axes = tuple(sorted({a % x.ndim for a in axes}))
    if axes != tuple(range(x.ndim - len(axes), x.ndim)) or any(not isinstance(x.shape[a], int) for a in axes):
        raise _located(f"layer_norm {name!r}: normalizes trailing axes of known size (the features), got axis "
                          f"{axis!r} of {x.type_str}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise _located(f"layer_norm {name!r}: eps must be a positive number, got {eps!r}")
    feat = tuple(x.shape[a] for a in axes)
    with scope(name):
        mu = ops.mean(x, axes, keepdims=True)
        d = x - mu
        y = d / ops.sqrt(ops.mean(d * d, axes, keepdims=True) + eps)
        for on, pname, init, combine in ((scale, "gamma", "ones", ops.multiply), (center, "beta", "zeros", ops.add)):
            if on:
                p = ops.param(f"{name}.{pname}", feat, init=init, dtype=x.dtype)
                y = combine(y, p)
                if unnamed:
                    note_unnamed_use(p, y)
        return y



def training_switch(in_training, in_inference):
    """`in_training` where the model trains (gc.fit's and a training binary's steps, gc.evaluate(...,
    training=True)), `in_inference` elsewhere: evaluation, predict, graphc export (one shape and dtype). What
    gates a gc.random draw to training, as dropout is gated: `gc.nn.training_switch(x + 0.1 * gc.random.normal_like(x),
    x)` adds noise in training steps only, and inference then reads no rng_key."""
    from graphc.ops.control import training_switch as switch

    return switch(in_training, in_inference)


def batch_norm(x, *, axis=-1, momentum: float = 0.1, eps: float = 1e-5, scale: bool = True, center: bool = True,
               name: str | None = None) -> ops.Tensor:
    """Batch normalization (Ioffe & Szegedy 2015) with PyTorch's semantics (nn.BatchNorm1d/2d): each channel
    normalized over every axis but `axis` (the channels: the last axis by default, as graphc's conv layers and
    dense rows are channels-last, (N, C), (N, T, C), (N, H, W, C); give axis=1 for channels-first data), then
    scaled by `NAME.gamma` (ones) and shifted by `NAME.beta` (zeros), each of shape (C,).

    In training (`gc.evaluate(..., training=True)`, `gc.compile(..., training=True)`, `gc.fit`) it normalizes
    with the batch's mean and biased variance (eps inside the square root); in inference with the running
    statistics, the inputs `NAME.running_mean` and `NAME.running_var` (non-trainable state, initially 0 and 1).
    A training step updates them, as PyTorch: r <- (1 - momentum) r + momentum b, with b the batch's mean and
    its unbiased variance (a batch of one value per channel, which PyTorch and gc.fit refuse, adds its variance 0:
    Flax's biased rule). The updates ride on the result (no gradient flows through them): `gc.fit` applies
    them every step; with gc.compile, pass `updates={**gc.nn.state_updates(loss), ...}` and the running
    statistics' arrays (`gc.nn.init_params(loss)` gives their initial values beside the parameters')."""
    from graphc.ops.control import training_switch, with_updates
    from graphc.ops.sources import dim_value

    x = ops.as_tensor(x)
    name, unnamed = layer_name(name, "batch_norm")
    what = f"batch_norm {name!r}"
    if x.dtype not in ("float32", "float64"):
        raise _located(f"{what}: needs a float tensor, got {x.type_str}")
    if x.ndim < 2:
        raise _located(f"{what}: needs a batch axis and a channel axis ((N, C), (N, T, C), (N, H, W, C)), got "
                       f"{x.type_str}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise _located(f"{what}: axis must be one axis of {x.type_str} (the channels; -1 for channels-last), got "
                       f"{axis!r}")
    ax = axis % x.ndim
    if ax == 0:
        raise _located(f"{what}: axis {axis} is the batch axis of {x.type_str}; the channel axis is another one "
                       "(-1 for channels-last data, as graphc's conv layers make)")
    c = x.shape[ax]
    if not isinstance(c, int):
        raise _located(f"{what}: the channel dim (axis {axis}) must be known, got {x.type_str}")
    for label, v, ok in (("momentum", momentum, lambda v: 0.0 <= v <= 1.0), ("eps", eps, lambda v: v > 0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            rule = "a number in [0, 1] (PyTorch's: the new statistic's weight)" if label == "momentum" else \
                "a positive number"
            raise _located(f"{what}: {label} must be {rule}, got {v!r}")
    red = tuple(a for a in range(x.ndim) if a != ax)
    count = 1
    for a in red:
        count = count * x.shape[a]
    if isinstance(count, int) and count < 2:
        raise _located(f"{what}: {x.type_str} has {count} value per channel; batch statistics need more than one "
                       "(a larger batch, or normalize another axis)")
    bshape = tuple(c if a == ax else 1 for a in range(x.ndim))

    def channels(t):  # a (C,) tensor, broadcastable against x
        return t if ax == x.ndim - 1 else ops.reshape(t, bshape)

    with scope(name):
        running_mean = ops.input(f"{name}.running_mean", (c,), x.dtype)
        running_var = ops.input(f"{name}.running_var", (c,), x.dtype)
        mu = ops.mean(x, red, keepdims=True)
        d = x - mu
        var = ops.mean(d * d, red, keepdims=True)
        y = training_switch(d / ops.sqrt(var + eps),
                            (x - channels(running_mean)) / ops.sqrt(channels(running_var) + eps))
        for on, pname, init, combine in ((scale, "gamma", "ones", ops.multiply), (center, "beta", "zeros", ops.add)):
            if on:
                p = ops.param(f"{name}.{pname}", (c,), init=init, dtype=x.dtype)
                y = combine(y, channels(p))
                if unnamed:
                    note_unnamed_use(p, y)
        # the unbiased variance for the running estimate, as PyTorch: n / (n - 1) times the biased one; at one
        # value per channel (which gc.fit refuses, as PyTorch) the biased variance 0 as is (Flax's), not 0 / 0
        n = dim_value(count, x, x.dtype)
        unbiased = ops.reshape(var, (c,)) * (n / ops.maximum(dim_value(count - 1, x, x.dtype), 1.0))
        new_mean = (1.0 - momentum) * running_mean + momentum * ops.reshape(mu, (c,))
        new_var = (1.0 - momentum) * running_var + momentum * unbiased
        return with_updates(y, {running_mean: new_mean, running_var: new_var}, {running_mean: 0.0, running_var: 1.0})


def state_updates(outputs) -> dict[Node, Node]:
    """The non-trainable state the outputs' layers update in training — batch norm's running statistics — as
    {state input: its new value}, for `gc.compile(..., training=True, updates={**gc.nn.state_updates(loss),
    ...})` (Keras' layer.updates, Flax's mutable batch_stats). Nothing is differentiated through them. Empty
    for a model without such layers."""
    from graphc.ops.control import WITH_UPDATES

    nodes = output_nodes(outputs, "state_updates", "outputs")
    found: dict[int, tuple[Node, Node, Node]] = {}
    for n in topo_order(nodes):
        if n.op is not WITH_UPDATES:
            continue
        for leaf, new in WITH_UPDATES.pairs(n):
            prev = found.setdefault(id(leaf), (leaf, new, n))
            if prev[1] is not new:
                raise GraphcError(f"the state {leaf.name!r} is updated by two layers (at {prev[2].where()} and at "
                                  f"{n.where()}): each batch_norm needs a name of its own (name=...), or build "
                                  "the model inside `with gc.nn.model_build():`")
    return {leaf: new for leaf, new, _ in found.values()}


def init_state(outputs) -> dict[str, np.ndarray]:
    """Initial values of the non-trainable state the outputs' layers update (batch norm's running_mean 0 and
    running_var 1), by name: 64-byte aligned arrays, as compiled code updates them in place."""
    from graphc.ops.control import WITH_UPDATES

    out: dict[str, np.ndarray] = {}
    for n in topo_order(output_nodes(outputs, "init_state", "outputs")):
        if n.op is WITH_UPDATES:
            for (leaf, _), v in zip(WITH_UPDATES.pairs(n), n.attrs["init"], strict=True):
                a = aligned_empty(leaf.shape, np.dtype(leaf.dtype))
                a[...] = v
                out[leaf.name] = a
    return out


def flatten(x) -> ops.Tensor:
    """(N, d1, d2, ...) -> (N, d1*d2*...): feature maps into a dense layer's rows."""
    x = ops.as_tensor(x)
    if x.ndim < 2:
        raise _located(f"flatten: needs a batch axis and at least one more, got {x.type_str}")
    rest = 1
    for d in x.shape[1:]:
        if not isinstance(d, int):
            raise _located(f"flatten: only the batch dim may be symbolic, got {x.type_str}")
        rest *= d
    return ops.reshape(x, (x.shape[0], rest))
