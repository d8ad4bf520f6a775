"""Walk the op table: every op has its rules, and every differentiable op's gradient matches central finite
differences in float64 on hypothesis-generated shapes and values."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, mutually_broadcastable_shapes

import graphc as gc
from graphc.autodiff.check import check_grad
from graphc.ops.core import KINDS, OPS, Op

F = st.floats(-3, 3, allow_nan=False, width=64)


def _leaves(shapes, prefix="a", dtype="float64"):
    return [gc.input(f"{prefix}{i}", s, dtype) for i, s in enumerate(shapes)]


def _vals(draw, shapes, elements=F):
    return [draw(arrays(np.float64, s, elements=elements)) for s in shapes]


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


@st.composite
def reduction(draw, fn):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    n = int(np.prod(shape))
    # distinct values so max has no ties (ties are tested on their own)
    perm = np.array(draw(st.permutations(list(range(n)))), dtype=np.float64)
    vals = (perm * 0.37 - 1.0).reshape(shape)
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.sets(st.integers(0, len(shape) - 1), min_size=1).map(tuple)))
    keep = draw(st.booleans())
    (x,) = _leaves([shape])
    return fn(x, axis, keep), {"a0": vals}, [x]


@st.composite
def matmul_case(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a_shape = (k, m) if ta else (m, k)
    b_shape = (n, k) if tb else (k, n)
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
    out, vals, xs = draw(elementwise(lambda x: gc.cast(x, "float32"), 1))
    return out, vals, xs


@st.composite
def dropout_case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
    keep = draw(st.sampled_from([0.2, 0.5, 0.8]))
    (x,) = _leaves([shape])
    key = draw(st.integers(0, 2**40))
    return gc.dropout(x, keep), {"a0": _vals(draw, [shape])[0], "rng_key": np.int64(key)}, [x]


@st.composite
def source_case(draw, kind):
    if kind == "input":
        x = gc.input("s", (2, 3))
        return x * 1.0, {"s": np.ones((2, 3))}, [x]
    if kind == "param":
        p = gc.param("p_src", (2,), init="ones", dtype="float64")
        return p * p, {"p_src": np.array([1.5, -2.0])}, [p]
    if kind == "constant":
        return gc.constant(np.arange(3.0)), {}, []
    if kind == "iota":
        return gc.iota(draw(st.integers(1, 5))), {}, []
    x = gc.input("d", ("N", 2))
    return gc.mean(x, 0), {"d": np.arange(6.0).reshape(3, 2)}, [x]


@st.composite
def stop_case(draw):
    out, vals, xs = draw(elementwise(lambda x: gc.stop_gradient(x) * x, 1))
    return out, vals, xs


CASES = {
    "input": source_case("input"),
    "param": source_case("param"),
    "constant": source_case("constant"),
    "iota": source_case("iota"),
    "dim": source_case("dim"),
    "add": elementwise(gc.add, 2),
    "sub": elementwise(gc.subtract, 2),
    "mul": elementwise(gc.multiply, 2),
    "div": elementwise(gc.divide, 2, check=lambda a, b: np.all(np.abs(b) > 0.2)),
    "neg": elementwise(gc.negative, 1),
    "pow": elementwise(gc.power, 2, check=lambda a, b: np.all(a > 0.2)),
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
    "matmul": matmul_case(),
    "stop_gradient": stop_case(),
    "dropout": dropout_case(),
}


def builtin_ops():
    return {name: op for name, op in OPS.items() if not getattr(op, "user", False) and not name.startswith("fn<")}


def test_every_op_has_its_rules_and_a_case():
    ops = builtin_ops()
    assert set(ops) == set(CASES), f"ops without test cases: {set(ops) - set(CASES)}"
    for name, op in ops.items():
        assert op.kind in KINDS, name
        cls = type(op)
        for rule in ("infer", "reference"):
            assert getattr(cls, rule) is not getattr(Op, rule), f"{name} lacks {rule}"
        if op.differentiable:
            assert cls.vjp is not Op.vjp, f"{name} lacks a vjp"


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=50)
@given(data=st.data())
def test_op_gradient_matches_finite_differences(name, data):
    out, values, wrt = data.draw(CASES[name])
    training = "rng_key" in values
    ops_used = {n.op.name for n in gc.topo_order(out)}
    assert name in ops_used, f"the case for {name} does not use it"
    # the shape rule agrees with what the reference computes
    res = gc.evaluate(out, values, training=training)
    dims = {}
    for n in gc.topo_order(out):
        if n.op.name == "input" and n.name in values:
            for d, a in zip(n.shape, np.shape(values[n.name]), strict=True):
                if not isinstance(d, int):
                    dims[d] = a
    assert res.shape == tuple(int(d.subs(dims)) if not isinstance(d, int) else d for d in out.shape)
    if out.dtype not in ("float32", "float64") or not wrt:
        return
    # a random cotangent checks the whole Jacobian, not just its column sums
    r = np.random.default_rng(len(name)).normal(size=res.shape)
    y = gc.sum(out * gc.constant(r, out.dtype))
    if name == "stop_gradient":  # d/dx [stop(x) * x] = stop(x): the stopped factor contributes nothing
        g = gc.evaluate(gc.grad(y, wrt[0]), values)
        np.testing.assert_allclose(g, values["a0"] * r)
        return
    check_grad(y, wrt, values, rtol=1e-5, atol=1e-6, training=training)
