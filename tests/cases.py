"""Hypothesis strategies shared by the op-table, gradient and backend tests.

`make_cases(dtype)` gives, for every op in the table, a strategy drawing (output tensor, values, the float
inputs to differentiate) that exercises that op; `mlp_like(dtype)` draws random MLP-like graphs."""

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, mutually_broadcastable_shapes

import graphc as gc


def make_cases(dtype: str = "float64") -> dict:
    F = st.floats(-3, 3, allow_nan=False, width=64)


    def _leaves(shapes, prefix="a", dtype=dtype):
        return [gc.input(f"{prefix}{i}", s, dtype) for i, s in enumerate(shapes)]


    def _vals(draw, shapes, elements=F):
        # one strategy for every operand, or one per operand
        per = elements if isinstance(elements, (list, tuple)) else [elements] * len(shapes)
        return [draw(arrays(np.float64, s, elements=e)).astype(dtype) for s, e in zip(shapes, per, strict=True)]


    def _away(lo):  # magnitudes in [lo, 3] with either sign: away from a kink at 0
        return st.builds(lambda m, s: m * s, st.floats(lo, 3), st.sampled_from([-1.0, 1.0]))


    def elementwise(fn, arity, elements=F, same_shape=False, check=None):
        @st.composite
        def case(draw):
            if same_shape:
                s = draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
                shapes = [s] * arity
            else:
                shapes = draw(mutually_broadcastable_shapes(num_shapes=arity, max_dims=2, max_side=3)).input_shapes
            vals = _vals(draw, shapes, elements)
            if check is not None:
                assume(check(*vals))
            xs = _leaves(shapes)
            return fn(*xs), dict(zip([x.name for x in xs], vals, strict=True)), xs

        return case()


    def far_apart(a, b):
        a, b = np.broadcast_arrays(a, b)
        return bool(np.all(np.abs(a - b) > 1e-2))


    POS = st.floats(0.2, 3)
    OFF_INT = st.builds(lambda k, f: k + f, st.integers(-3, 2), st.floats(0.1, 0.9))  # away from a floor's step
    OFF_HALF = st.builds(lambda k, f: k + f, st.integers(-3, 3), st.floats(-0.4, 0.4))  # away from round's steps


    def off_integer(a, b):  # a / b away from an integer: floor_divide and remainder are smooth around it
        with np.errstate(all="ignore"):
            q = np.asarray(a, np.float64) / np.asarray(b, np.float64)
        f = q - np.floor(q)
        return bool(np.all((f > 0.05) & (f < 0.95)))


    @st.composite
    def reduction(draw, fn):
        shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
        n = int(np.prod(shape))
        # distinct values so max has no ties (ties are tested on their own)
        perm = np.array(draw(st.permutations(list(range(n)))), dtype=np.float64)
        vals = (perm * 0.37 - 1.0).reshape(shape).astype(dtype)
        axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                              st.sets(st.integers(0, len(shape) - 1), min_size=1).map(tuple)))
        keep = draw(st.booleans())
        (x,) = _leaves([shape])
        return fn(x, axis, keep), {"a0": vals}, [x]


    @st.composite
    def matmul_case(draw):
        m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
        ta, tb = draw(st.booleans()), draw(st.booleans())
        # leading batch dims that broadcast (half the draws are the plain 2-D product)
        batch_a, batch_b = draw(st.sampled_from([True, False]).flatmap(
            lambda b: mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3).map(lambda s: s.input_shapes)
            if b else st.just(((), ()))))
        a_shape = batch_a + ((k, m) if ta else (m, k))
        b_shape = batch_b + ((n, k) if tb else (k, n))
        a, b = _leaves([a_shape, b_shape])
        va, vb = _vals(draw, [a_shape, b_shape])
        return gc.matmul(a, b, ta=ta, tb=tb), {"a0": va, "a1": vb}, [a, b]


    @st.composite
    def transpose_case(draw):
        shape = tuple(draw(st.lists(st.integers(1, 3), min_size=2, max_size=3)))
        perm = draw(st.permutations(list(range(len(shape)))))
        assume(list(perm) != list(range(len(shape))))
        (x,) = _leaves([shape])
        return gc.transpose(x, perm), {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def reshape_case(draw):
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        n = int(np.prod(shape))
        target = draw(st.sampled_from([(n,), (1, n), (n, 1), (-1,)]))
        assume(target != shape and (n,) != shape or target in ((1, n), (n, 1)))
        (x,) = _leaves([shape])
        out = gc.reshape(x, target)
        assume(out is not x)
        return out, {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def broadcast_case(draw):
        shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=2)))
        lead = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
        target = lead + tuple(draw(st.integers(2, 3)) if d == 1 else d for d in shape)
        assume(target != shape)
        (x,) = _leaves([shape])
        return gc.broadcast_to(x, target), {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def where_case(draw):
        shapes = draw(mutually_broadcastable_shapes(num_shapes=3, max_dims=2, max_side=3)).input_shapes
        cond = draw(arrays(np.bool_, shapes[0]))
        c = gc.input("c", shapes[0], "bool")
        a, b = _leaves(shapes[1:])
        va, vb = _vals(draw, shapes[1:])
        return gc.where(c, a, b), {"c": cond, "a0": va, "a1": vb}, [a, b]


    @st.composite
    def cmp_case(draw, fn):
        out, vals, xs = draw(elementwise(fn, 2))
        return out, vals, []


    @st.composite
    def logical_case(draw, fn, arity):
        shapes = draw(mutually_broadcastable_shapes(num_shapes=arity, max_dims=2, max_side=3)).input_shapes
        xs = [gc.input(f"b{i}", s, "bool") for i, s in enumerate(shapes)]
        vals = {x.name: draw(arrays(np.bool_, s)) for x, s in zip(xs, shapes, strict=True)}
        return fn(*xs), vals, []


    @st.composite
    def cast_case(draw):
        other = "float32" if dtype == "float64" else "float64"
        out, vals, xs = draw(elementwise(lambda x: gc.cast(x, other), 1))
        return out, vals, xs


    @st.composite
    def dropout_case(draw):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
        keep = draw(st.sampled_from([0.2, 0.5, 0.8]))
        (x,) = _leaves([shape])
        key = draw(st.integers(0, 2**40))
        values = {"a0": _vals(draw, [shape])[0], "rng_key": np.int64(key)}
        if draw(st.booleans()):  # the keep probability as a run-time input
            values["keep"] = np.float32(keep)
            return gc.dropout(x, gc.input("keep", (), "float32")), values, [x]
        return gc.dropout(x, keep), values, [x]


    @st.composite
    def random_case(draw):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
        (x,) = _leaves([shape])
        values = {"a0": _vals(draw, [shape])[0], "rng_key": np.int64(draw(st.integers(0, 2**40)))}
        if draw(st.booleans()):
            return x * gc.random.normal_like(x, mean=0.5, std=2.0, salt=draw(st.integers(0, 9))), values, [x]
        return x * gc.random.uniform(shape, low=-1.0, high=3.0, dtype=dtype), values, [x]


    @st.composite
    def source_case(draw, kind):
        if kind == "input":
            x = gc.input("s", (2, 3), dtype)
            return x * 1.0, {"s": np.ones((2, 3), dtype)}, [x]
        if kind == "param":
            p = gc.param(f"p_src_{dtype}", (2,), init="ones", dtype=dtype)
            return p * p, {p.name: np.array([1.5, -2.0], dtype)}, [p]
        if kind == "constant":
            return gc.constant(np.arange(3.0)), {}, []
        if kind == "iota":
            return gc.iota(draw(st.integers(1, 5))), {}, []
        x = gc.input("d", ("N", 2), dtype)
        return gc.mean(x, 0), {"d": np.arange(6.0, dtype=dtype).reshape(3, 2)}, [x]


    @st.composite
    def stop_case(draw):
        out, vals, xs = draw(elementwise(lambda x: gc.stop_gradient(x) * x, 1))
        return out, vals, xs


    @st.composite
    def switch_case(draw):
        from graphc.ops.control import training_switch

        out, vals, xs = draw(elementwise(lambda a, b: training_switch(a * a, 3.0 * b), 2, same_shape=True))
        if draw(st.booleans()):  # the key makes the test evaluate in training: the other branch
            vals["rng_key"] = np.int64(0)
        return out, vals, xs


    @st.composite
    def updates_case(draw):
        from graphc.ops.control import with_updates

        out, vals, xs = draw(elementwise(lambda a, b: a * b, 2, same_shape=True))
        a, b = xs
        state = gc.input("u_state", a.shape, dtype)
        vals["u_state"] = np.zeros(a.shape, dtype)
        # the update reads a and b; their gradient comes from the value only
        return with_updates(out, {state: state + a * b * b}, {state: 0.0}), vals, xs


    def _shape(draw, min_dims=1, max_dims=3, lo=1, hi=4):
        return tuple(draw(st.lists(st.integers(lo, hi), min_size=min_dims, max_size=max_dims)))


    @st.composite
    def slice_case(draw):
        shape = _shape(draw, hi=5)
        bound = st.one_of(st.none(), st.integers(-6, 6))
        key = []
        for d in shape:
            if draw(st.integers(0, 4)) == 0:
                key.append(draw(st.integers(-d, d - 1)))
            else:
                key.append(slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, 3, -1, -2]))))
            if draw(st.integers(0, 5)) == 0:
                key.append(None)
        (x,) = _leaves([shape])
        out = x[tuple(key)]
        assume(any(n.op.name == "slice" for n in gc.topo_order(out)))
        return out, {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def pad_case(draw):
        shape = _shape(draw, lo=0)
        width = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in shape]
        interior = [draw(st.integers(0, 2)) for _ in shape]
        assume(any(map(any, width)) or any(interior))
        (x,) = _leaves([shape])
        out = gc.pad(x, width, draw(F), interior=interior)
        return out, {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def concat_case(draw):
        shape = _shape(draw)
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        sizes = draw(st.lists(st.integers(0, 3), min_size=2, max_size=3))
        shapes = [tuple(k if i == axis % len(shape) else d for i, d in enumerate(shape)) for k in sizes]
        xs = _leaves(shapes)
        vals = _vals(draw, shapes)
        return gc.concatenate(xs, axis), dict(zip([x.name for x in xs], vals, strict=True)), xs


    def _indices(draw, n, rank_max=2):
        idx_shape = _shape(draw, 0, rank_max, 0, 3)
        idx_dtype = draw(st.sampled_from(["int32", "int64"]))
        vals = draw(arrays(np.int64, idx_shape, elements=st.integers(0, n - 1))).astype(idx_dtype)
        return gc.input("idx", idx_shape, idx_dtype), vals


    @st.composite
    def take_case(draw):
        shape = _shape(draw)
        axis = draw(st.integers(0, len(shape) - 1))
        idx, iv = _indices(draw, shape[axis])
        (x,) = _leaves([shape])
        return gc.take(x, idx, axis), {"a0": _vals(draw, [shape])[0], "idx": iv}, [x]


    @st.composite
    def scatter_case(draw):
        shape = _shape(draw)
        axis = draw(st.integers(0, len(shape) - 1))
        idx, iv = _indices(draw, shape[axis])
        upd_shape = shape[:axis] + iv.shape + shape[axis + 1:]
        x, u = _leaves([shape, upd_shape])
        vx, vu = _vals(draw, [shape, upd_shape])
        return gc.scatter_add(x, idx, u, axis), {"a0": vx, "a1": vu, "idx": iv}, [x, u]


    @st.composite
    def windows_case(draw):
        shape = _shape(draw, 2, 4, 1, 6)
        axes = draw(st.sets(st.integers(0, len(shape) - 1), min_size=1, max_size=2).map(sorted))
        window, strides, dilation = [], [], []
        for a in axes:
            d = draw(st.integers(1, 2))
            k = draw(st.integers(1, (shape[a] - 1) // d + 1))
            window.append(k), dilation.append(d), strides.append(draw(st.integers(1, 3)))
        (x,) = _leaves([shape])
        out = gc.windows(x, window, strides, dilation, axes=axes)
        return out, {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def conv_case(draw):
        """A convolution (its product carries the conv op's gradient rule), 1-D or 2-D, strided, padded and dilated
        at random (a kernel shorter than the stride, or not a multiple of it, included), with the filter and the
        image both differentiated: 8 input channels take the transposed convolution (per phase at a stride), 2 the
        tap-major spread (conv.TRANSPOSED_MIN_CHANNELS)."""
        nsp = draw(st.integers(1, 2))
        sizes = [draw(st.integers(2, 5)) for _ in range(nsp)]
        n, c, f = draw(st.integers(1, 2)), draw(st.sampled_from([2, 8])), draw(st.integers(1, 2))
        dil = draw(st.integers(1, 2))
        stride = draw(st.integers(1, 3))
        ks = [draw(st.integers(1, min(4, (d - 1) // dil + 1))) for d in sizes]
        pad = draw(st.sampled_from(["valid", "same", 1, 2]))
        x, w = _leaves([(n, *sizes, c), (*ks, c, f)])
        conv = gc.conv2d if nsp == 2 else gc.conv1d
        out = conv(x, w, stride=stride, padding=pad, dilation=dil)
        return out, dict(zip(["a0", "a1"], _vals(draw, [(n, *sizes, c), (*ks, c, f)]), strict=True)), [x, w]


    @st.composite
    def cumsum_case(draw):
        shape = _shape(draw)
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        (x,) = _leaves([shape])
        out = gc.cumsum(x, axis, reverse=draw(st.booleans()))
        return out, {"a0": _vals(draw, [shape])[0]}, [x]


    @st.composite
    def scan_case(draw):
        T, N, F, H = (draw(st.integers(lo, 3)) for lo in (0, 1, 1, 1))
        xs, h0, W, U = _leaves([(T, N, F), (N, H), (F, H), (H, H)])
        vals = _vals(draw, [(T, N, F), (N, H), (F, H), (H, H)])
        vals[3] = vals[3] * 0.5

        def step(h, x):
            h = gc.tanh(x @ W + h @ U)
            return h, h * x[:, :1]

        reverse, ck = draw(st.booleans()), draw(st.sampled_from([None, 2]))
        hT, ys = gc.scan(step, h0, xs, reverse=reverse, checkpoint=ck)
        return ys + hT, dict(zip(["a0", "a1", "a2", "a3"], vals, strict=True)), [xs, h0, W, U]


    return {
        "scan": scan_case(),
        "scan_output": scan_case(),
        "input": source_case("input"),
        "param": source_case("param"),
        "constant": source_case("constant"),
        "iota": source_case("iota"),
        "dim": source_case("dim"),
        "add": elementwise(gc.add, 2),
        "sub": elementwise(gc.subtract, 2),
        "mul": elementwise(gc.multiply, 2),
        "div": elementwise(gc.divide, 2, elements=[F, _away(0.2)]),  # a divisor away from 0
        "neg": elementwise(gc.negative, 1),
        "pow": elementwise(gc.power, 2, elements=[POS, F]),  # a positive base: a real power and its log
        "powc": st.sampled_from([2, 3, 0.5, -1, 1.5, -2]).flatmap(
            lambda p: elementwise(lambda x: x ** p, 1, POS)),
        "exp": elementwise(gc.exp, 1),
        "log": elementwise(gc.log, 1, POS),
        "log1p": elementwise(gc.log1p, 1, st.floats(-0.8, 3)),
        "expm1": elementwise(gc.expm1, 1),
        "sqrt": elementwise(gc.sqrt, 1, POS),
        "abs": elementwise(gc.abs, 1, _away(0.05)),
        "sign": elementwise(gc.sign, 1, _away(0.05)),
        "tanh": elementwise(gc.tanh, 1),
        "sigmoid": elementwise(gc.sigmoid, 1),
        "softplus": elementwise(gc.softplus, 1),
        "relu": elementwise(gc.relu, 1, _away(0.05)),
        "erf": elementwise(gc.erf, 1),
        "sin": elementwise(gc.sin, 1),
        "cos": elementwise(gc.cos, 1),
        "tan": elementwise(gc.tan, 1, st.floats(-1.3, 1.3)),
        "arcsin": elementwise(gc.arcsin, 1, st.floats(-0.9, 0.9)),
        "arccos": elementwise(gc.arccos, 1, st.floats(-0.9, 0.9)),
        "arctan": elementwise(gc.arctan, 1),
        "sinh": elementwise(gc.sinh, 1),
        "cosh": elementwise(gc.cosh, 1),
        "arcsinh": elementwise(gc.arcsinh, 1),
        "arccosh": elementwise(gc.arccosh, 1, st.floats(1.1, 3)),
        "arctanh": elementwise(gc.arctanh, 1, st.floats(-0.9, 0.9)),
        "log2": elementwise(gc.log2, 1, POS),
        "log10": elementwise(gc.log10, 1, POS),
        "exp2": elementwise(gc.exp2, 1),
        "arctan2": elementwise(gc.arctan2, 2, elements=[_away(0.2), F]),  # away from the origin
        "hypot": elementwise(gc.hypot, 2, elements=[_away(0.2), F]),
        "round": elementwise(gc.round, 1, OFF_HALF),
        "floor": elementwise(gc.floor, 1, OFF_INT),
        "ceil": elementwise(gc.ceil, 1, OFF_INT),
        "floor_divide": elementwise(gc.floor_divide, 2, elements=[F, _away(0.2)], check=off_integer),
        "remainder": elementwise(gc.remainder, 2, elements=[F, _away(0.2)], check=off_integer),
        "maximum": elementwise(gc.maximum, 2, check=far_apart),
        "minimum": elementwise(gc.minimum, 2, check=far_apart),
        "where": where_case(),
        "lt": cmp_case(gc.less),
        "le": cmp_case(gc.less_equal),
        "gt": cmp_case(gc.greater),
        "ge": cmp_case(gc.greater_equal),
        "eq": cmp_case(gc.equal),
        "ne": cmp_case(gc.not_equal),
        "logical_not": logical_case(gc.logical_not, 1),
        "logical_and": logical_case(gc.logical_and, 2),
        "logical_or": logical_case(gc.logical_or, 2),
        "cast": cast_case(),
        "full_like": elementwise(lambda x: gc.full_like(x, 2.5) * x, 1),
        "broadcast_like": st.integers(1, 3).flatmap(lambda k: elementwise(
            lambda a, b: gc.broadcast_like(a, b) * b, 2, same_shape=False,
            check=lambda a, b: np.shape(a) != np.broadcast_shapes(np.shape(a), np.shape(b)))),
        "transpose": transpose_case(),
        "reshape": reshape_case(),
        "broadcast_to": broadcast_case(),
        "sum": reduction(gc.sum),
        "max": reduction(gc.max),
        "min": reduction(gc.min),
        "prod": reduction(gc.prod),
        "cumsum": cumsum_case(),
        "slice": slice_case(),
        "pad": pad_case(),
        "concat": concat_case(),
        "take": take_case(),
        "scatter_add": scatter_case(),
        "windows": windows_case(),
        "conv": conv_case(),
        "matmul": matmul_case(),
        "stop_gradient": stop_case(),
        "dropout": dropout_case(),
        "random": random_case(),
        "training_switch": switch_case(),
        "with_updates": updates_case(),
    }


ACTS = [gc.relu, gc.tanh, gc.sigmoid, gc.softplus, lambda z: z * gc.sigmoid(z), gc.exp,
        lambda z: gc.log1p(z * z), gc.abs]
COMBINE = [gc.add, gc.multiply, gc.maximum, gc.subtract]


@st.composite
def mlp_like(draw, dtype: str = "float64", batch=None):
    """A random MLP-like graph with a loss: (loss, params, values). `batch` fixes the batch size."""
    n = batch if batch is not None else draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    x = gc.input("x", ("N", widths[0]), dtype)
    h = x
    skip = x
    for i, w in enumerate(widths[1:] + [draw(st.integers(1, 3))]):
        h = gc.nn.dense(h, w, name=f"rand{i}_{h.shape[1]}_{w}_{dtype}", init="xavier_normal", dtype=dtype)
        h = draw(st.sampled_from(ACTS))(h)
        if draw(st.booleans()) and skip.shape == h.shape:
            h = draw(st.sampled_from(COMBINE))(h, skip)
        skip = h
    kind = draw(st.sampled_from(["mse", "bce", "ce", "lse", "mean", "max"]))
    if kind == "mse":
        loss = gc.nn.mse(h, gc.input("t", h.shape, dtype))
    elif kind == "bce":
        loss = gc.nn.binary_cross_entropy(gc.sum(h, 1), gc.input("t1", ("N",), dtype))
    elif kind == "ce":
        loss = gc.nn.softmax_cross_entropy(h, gc.input("lab", ("N",), "int32"))
    elif kind == "lse":
        loss = gc.mean(gc.logsumexp(h, 1))
    elif kind == "mean":
        loss = gc.mean(gc.log_softmax(h, 1) * 0.3 + gc.softmax(h, 1))
    else:
        loss = gc.sum(gc.max(h, 1) ** 2)
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    # random biases too: zero biases behind a relu put later relus exactly on their kink
    vals = {p.name: rng.normal(size=p.shape).astype(dtype) for p in gc.nn.parameters(loss)}
    for leaf in gc.topo_order(loss):
        if leaf.op.name == "input":
            shape = tuple(n if not isinstance(d, int) else d for d in leaf.shape)
            if leaf.dtype == "int32":
                vals[leaf.name] = rng.integers(0, leaf_classes(loss), shape).astype(np.int32)
            elif leaf.name == "t1":
                vals[leaf.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                vals[leaf.name] = rng.normal(size=shape).astype(dtype)
    return loss, gc.nn.parameters(loss), vals


def leaf_classes(loss):
    return next(n.attrs["n"] for n in gc.topo_order(loss) if n.op.name == "iota")
