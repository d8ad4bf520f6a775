"""graphc's own symbolic dims (graphc.ir.dims) against sympy, the oracle for their algebra."""

import pickle
import subprocess
import sys

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from graphc.ir.dims import ceil_div, dim_max, dim_min, exact_div, floor_div, from_sympy, size_max0, symbol
from graphc.ir.shapes import dims_equal, eval_dim

N, T, K = symbol("N"), symbol("T"), symbol("K")
SYMS = (N, T, K)


@st.composite
def polynomials(draw, depth=2):
    """Random polynomials over N, T, K with small integer coefficients (what shapes are made of)."""
    out = draw(st.integers(-5, 5))
    for _ in range(draw(st.integers(1, 3))):
        term = draw(st.integers(-4, 4))
        for s in draw(st.lists(st.sampled_from(SYMS), min_size=1, max_size=depth)):
            term = term * s
        out = out + term
    return out


@st.composite
def dim_exprs(draw):
    """Polynomials, and floor / ceiling divisions, max and min of them."""
    p = draw(polynomials())
    kind = draw(st.sampled_from(["poly", "floor", "ceil", "max", "min", "mod"]))
    k = draw(st.integers(1, 7))
    if kind == "floor":
        return floor_div(p, k) + draw(polynomials(depth=1))
    if kind == "ceil":
        return ceil_div(p, k)
    if kind == "mod":
        return p % k
    if kind in ("max", "min"):
        q = draw(polynomials(depth=1))
        return (dim_max if kind == "max" else dim_min)(p, q)
    return p


def _sympy_value(d, env) -> int:
    return int(sympy.sympify(d).subs({s: v for s, v in env.items()}))


envs = st.fixed_dictionaries({N: st.integers(1, 40), T: st.integers(1, 40), K: st.integers(1, 40)})


@settings(max_examples=300, deadline=None)
@given(dim_exprs(), envs)
def test_dims_evaluate_as_sympy_does(d, env):
    mine = eval_dim(d, env) if not isinstance(d, int) else d
    assert mine == _sympy_value(d, env)


@settings(max_examples=200, deadline=None)
@given(dim_exprs())
def test_sympy_round_trip_is_the_same_dim(d):
    back = from_sympy(sympy.sympify(d))
    assert back == d and hash(back) == hash(d)


@settings(max_examples=200, deadline=None)
@given(polynomials(), polynomials())
def test_equal_polynomials_are_equal_dims(a, b):
    """Canonical forms: equality of dims is equality of the polynomials, for any way they were built."""
    assert (a == b) == (sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0)
    assert (a + b) - b == a and (a * b == b * a) and hash(a * b) == hash(b * a)


@settings(max_examples=200, deadline=None)
@given(polynomials(), st.integers(1, 6), envs)
def test_division_and_rounding(p, k, env):
    q = exact_div(p * k, k)
    assert q == p
    v = eval_dim(p, env) if not isinstance(p, int) else p
    assert _value(floor_div(p, k), env) == v // k
    assert _value(ceil_div(p, k), env) == -(-v // k)
    assert _value(p % k, env) == v % k


def _value(d, env):
    return d if isinstance(d, int) else eval_dim(d, env)


def test_printing_reads_as_sympy_prints_it():
    for d in (N, 50 * N, N * T, N + 1, 2 * N - 3, N ** 2 + T, -N + T, ceil_div(T, 10), dim_max(N, T)):
        assert str(d) == str(sympy.sympify(d)), d
    assert str(floor_div(N, 2) + 2) == "floor(N/2) + 2"
    assert str(ceil_div(T + 5, 10)) == "ceiling((T + 5)/10)"


def test_constant_results_are_ints_and_order_is_refused():
    assert (N - N) == 0 and isinstance(N - N, int) and isinstance((2 * N) / N, int)
    assert floor_div(2 * N + 4, 2) == N + 2 and ceil_div(3 * T, 3) == T
    assert exact_div(N * T + N, N) == T + 1 and exact_div(N + 1, 2) is None and exact_div(N + T, N) is None
    assert dim_max(N, 1) == N and dim_min(N, 1) == 1 and dim_max(N + 2, N) == N + 2  # symbols are >= 1
    with pytest.raises(TypeError, match="only compare for equality"):
        N < 3  # noqa: B015
    with pytest.raises(TypeError):
        int(N)
    with pytest.raises(ValueError, match="not a multiple"):
        (N + 1) / N



def test_a_count_that_an_empty_axis_makes_negative_stays_a_max():
    """max(N - 1, 0) is N - 1 for dim_max (symbols >= 1), but a run-time size may be 0: size_max0 keeps the max
    (the interior padding of an axis), and decides only what holds from 0 on."""
    assert size_max0(N + 2) == N + 2 and size_max0(2 * N) == 2 * N and size_max0(-3) == 0 and size_max0(4) == 4
    gaps = size_max0(N - 1)
    assert gaps != N - 1 and [eval_dim(gaps, {N: n}) for n in (0, 1, 5)] == [0, 0, 4]
    assert eval_dim(3 * gaps + N + 3, {N: 0}) == 3

def test_the_compilers_sympy_symbol_is_the_dim():
    """Index algebra is sympy; a dim symbol there is equal to the Dim and hashes alike, so environments and sets of
    symbols work with either."""
    s = sympy.sympify(N)
    assert s.is_integer and s.is_positive and s == N and N == s and hash(s) == hash(N)
    assert {N: 7}[s] == 7 and len({N, s}) == 1
    i = sympy.Symbol("i", integer=True)
    e = i * N + 3
    assert e.subs({N: 2, i: 5}) == 13
    assert dims_equal(sympy.sympify(floor_div(N + 4, 2)), floor_div(N, 2) + 2)
    assert floor_div(2 * N + 1, 2) == N and ceil_div(2 * N + 1, 2) == N + 1 and str(ceil_div(4 * N + 2, 8)) == \
        "ceiling((2*N + 1)/4)"
    assert dims_equal(dim_max(N, T), sympy.Max(sympy.sympify(T), sympy.sympify(N)))  # a sympy dim: sympy decides
    assert not dims_equal(floor_div(N, 2), N) and not dims_equal(N + 1, N)


def test_dims_pickle_across_processes():
    """String hashes differ between processes: an unpickled dim must rehash (an MPI rank, a checkpoint)."""
    d = floor_div(N * T + 3, 4) + dim_max(N, T)
    blob = pickle.dumps({d: 1, N: 2})
    code = ("import pickle, sys; from graphc.ir.dims import symbol, floor_div, dim_max; N, T = symbol('N'), "
            "symbol('T'); m = pickle.loads(sys.stdin.buffer.read()); "
            "assert m[floor_div(N * T + 3, 4) + dim_max(N, T)] == 1 and m[N] == 2")
    subprocess.run([sys.executable, "-c", code], input=blob, check=True, env={"PYTHONHASHSEED": "123"})


def test_dims_module_does_not_import_sympy():
    code = ("import sys; from graphc.ir.dims import symbol, floor_div; from graphc.ir.shapes import "
            "broadcast_shapes, eval_dim; N = symbol('N'); d = floor_div(3 * N + 1, 2); "
            "assert broadcast_shapes([(N, 1), (1, 5)], 'x') == (N, 5) and eval_dim(d, {N: 3}) == 5; "
            "assert 'sympy' not in sys.modules, 'sympy was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_input_declared_with_a_derived_dim_binds_in_any_order():
    """An input whose shape is another's reshaped (N*T rows) is checked once the plain symbols are bound, whichever
    the graph lists first; one whose symbols no input gives alone is refused naming it."""
    import numpy as np

    import graphc as gc

    t = gc.input("t", ("T", "N", 4))
    m = gc.input("m", gc.reshape(t, (-1, 4)).shape)
    y = gc.sum(m) + gc.sum(t)  # m comes first in the graph's inputs
    vals = {"t": np.ones((2, 3, 4), np.float32), "m": np.ones((6, 4), np.float32)}
    assert gc.evaluate(y, vals) == 48.0 and gc.compile(y, cache=False)(vals) == 48.0
    with pytest.raises(gc.ShapeError, match="axis 0 should be N\\*T = 6, got 5"):
        gc.evaluate(y, {"t": vals["t"], "m": np.ones((5, 4), np.float32)})
    alone = gc.sum(gc.input("alone", (N * T, 4)))
    with pytest.raises(gc.ShapeError, match="'alone'.*no input gives N, T a value on its own"):
        gc.evaluate(alone, {"alone": np.ones((6, 4), np.float32)})


def test_dims_that_are_not_whole_numbers_are_refused_where_declared():
    import graphc as gc

    s = sympy.Symbol("N", integer=True, positive=True)
    with pytest.raises(gc.ShapeError, match="whole number"):
        gc.input("half", (s / 2, 3))
    with pytest.raises(gc.ShapeError, match="whole number"):
        gc.input("half2", (N / 2, 3))
    b = gc.input("b", ("N", 3))
    with pytest.raises(gc.ShapeError, match="reshape: .*whole number.*inputs b"):
        gc.reshape(b, (N / 2, 6))
    with pytest.raises(gc.ShapeError, match="not declared a positive integer.*'M'"):
        gc.input("m", (sympy.Symbol("M"), 3))


def test_reshape_errors_name_the_input_and_the_line():
    import graphc as gc

    x = gc.input("x", ("N", 3))
    with pytest.raises(gc.ShapeError, match=r"reshape: .*-1 does not divide evenly \(inputs x: f32\[N,3\]\) at "
                                            r"test_dims.py:\d+"):
        gc.reshape(x, (-1, 2))
    with pytest.raises(gc.ShapeError, match=r"at most one dim may be -1 .*at test_dims.py"):
        gc.reshape(x, (-1, -1))


def test_a_rounded_division_keeps_its_constant_inside():
    """x[1::2] has ceiling((N - 1)/2) rows, printed so, not as the equal ceiling((N + 1)/2) - 1."""
    import graphc as gc

    assert str(gc.input("x", ("N", 3))[1::2].shape[0]) == "ceiling((N - 1)/2)"
    assert str(floor_div(N - 3, 2) + 1) == "floor((N - 1)/2)" and ceil_div(2 * N - 1, 2) == N


def test_a_symbolic_dim_in_arithmetic_with_a_tensor_is_its_value_at_the_call():
    """`gc.sum(x) / x.shape[0]` (JAX's x.shape[0] is an int) with a batch "N" was 'cannot make a graphc constant from
    object data'; the dim is now read from the shape of a tensor the other operand is computed from (a weak number,
    in that operand's dtype), evaluated, compiled and differentiated; where none has it, and int(dim), the errors
    say what to use (int() was a bare TypeError)."""
    import numpy as np

    import graphc as gc

    x = gc.input("x", ("N", 3), "float64")
    i = gc.input("i", ("M",), "int32")
    v = {"x": np.arange(12.0).reshape(4, 3), "i": np.arange(5, dtype=np.int32)}
    loss = gc.sum(x ** 2) / x.shape[0]
    outs = [loss, gc.grad(loss, x), i + i.shape[0], gc.sum(x) / (x.shape[0] * x.shape[1])]
    want = [(v["x"] ** 2).sum() / 4, 2 * v["x"] / 4, v["i"] + 5, v["x"].mean()]
    assert outs[2].dtype == "int32"
    for got in (gc.evaluate(outs, v), gc.compile(outs, cache=False)(v)):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-14)
    y = gc.input("y", (3,), "float64")
    for call, err, words in [(lambda: y * x.shape[0], gc.ShapeError, r"the symbolic dim N is used as a number, but "
                              r"no tensor it meets is computed from a tensor with N .*gc.dim_value\('N', x\)"),
                             (lambda: gc.constant(x.shape[0]), gc.ShapeError, r"gc.constant\(N\): .*gc.dim_value"),
                             (lambda: int(x.shape[0]), gc.DTypeError, "no int value until its symbols are bound")]:
        with pytest.raises(err, match=words):
            call()
