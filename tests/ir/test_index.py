"""graphc's integer index algebra (graphc.ir.index) against Python's integer arithmetic: index variables take any
integer (0 and negatives too), dims any positive one; floor division and remainder by positive ints are exact;
conditions decide only what holds everywhere; the printed form and the operand order are sympy's, as the kernel
IR always showed and computed them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphc.ir import index as ix
from graphc.ir.dims import symbol

I0, I1, G0 = ix.var("_i0"), ix.var("_i1"), ix.var("_g0")
N, M = symbol("N"), symbol("M")
VARS, DIMS = (I0, I1, G0), (N, M)


def _leaf():
    """(expression, its value by Python's integer arithmetic)."""
    atom = st.sampled_from(VARS + DIMS).map(lambda v: (v, lambda env, v=v: env[v]))
    num = st.integers(-6, 6).map(lambda c: (c, lambda env, c=c: c))
    return st.one_of(atom, num)


def _extend(children):
    ints = st.integers(-5, 5)
    pos = st.integers(1, 9)
    return st.one_of(
        st.tuples(children, children).map(lambda t: (t[0][0] + t[1][0], lambda env: t[0][1](env) + t[1][1](env))),
        st.tuples(children, children).map(lambda t: (t[0][0] - t[1][0], lambda env: t[0][1](env) - t[1][1](env))),
        st.tuples(children, ints).map(lambda t: (t[0][0] * t[1], lambda env: t[0][1](env) * t[1])),
        st.tuples(children, st.sampled_from(DIMS)).map(
            lambda t: (t[0][0] * t[1], lambda env: t[0][1](env) * env[t[1]])),
        st.tuples(children, pos).map(lambda t: (ix.fdiv(t[0][0], t[1]), lambda env: t[0][1](env) // t[1])),
        st.tuples(children, pos).map(lambda t: (ix.mod(t[0][0], t[1]), lambda env: t[0][1](env) % t[1])),
    )


PAIRS = st.recursive(_leaf(), _extend, max_leaves=8)
EXPRS = PAIRS.map(lambda p: p[0])
ENVS = st.fixed_dictionaries({I0: st.integers(-20, 20), I1: st.integers(-20, 20), G0: st.integers(-20, 20),
                              N: st.integers(1, 9), M: st.integers(1, 9)})


@settings(max_examples=300, deadline=None)
@given(PAIRS, ENVS)
def test_an_expression_has_the_value_python_computes_step_by_step(pair, env):
    """The canonical form (sums collected, remainders simplified) keeps the value of what was built."""
    e, fn = pair
    assert ix.evaluate(e, env) == fn(env)


@settings(max_examples=300, deadline=None)
@given(PAIRS, PAIRS, st.integers(1, 7), ENVS)
def test_operations_agree_with_python_integers(pa, pb, q, env):
    (a, fa), (b, fb) = pa, pb
    x, y = fa(env), fb(env)
    assert ix.evaluate(a + b, env) == x + y
    assert ix.evaluate(a - b, env) == x - y
    assert ix.evaluate(a * 3 - b * N, env) == 3 * x - y * env[N]
    assert ix.evaluate(ix.fdiv(a, q), env) == x // q
    assert ix.evaluate(ix.mod(a, q), env) == x % q
    assert ix.evaluate(ix.mod(a * q + b, q), env) == y % q
    # the digits of a number in a mixed radix give it back
    assert ix.evaluate(ix.mod(a, q) + q * ix.fdiv(a, q), env) == x


@settings(max_examples=200, deadline=None)
@given(EXPRS, EXPRS)
def test_equal_values_are_equal_objects(a, b):
    """Canonical form: the same polynomial is the same object (hash and equality), whichever way it was built."""
    assert a + b == b + a and hash(a + b) == hash(b + a)
    assert (a + b) - b == a
    assert a * 2 == a + a
    assert ix.norm(a - a) == 0


@settings(max_examples=200, deadline=None)
@given(EXPRS, EXPRS, ENVS)
def test_substitution_is_evaluation_at_the_substituted_value(a, b, env):
    s = ix.subs(a, {I0: b, I1: I0})  # simultaneous: _i1 becomes _i0, not b
    env2 = {**env, I0: ix.evaluate(b, env), I1: env[I0]}
    assert ix.evaluate(s, env) == ix.evaluate(a, env2)


@settings(max_examples=300, deadline=None)
@given(EXPRS, EXPRS, st.sampled_from(["<", "<=", ">", ">=", "=="]), ENVS)
def test_conditions_hold_exactly_where_the_comparison_does(a, b, op, env):
    c = ix.rel(op, a, b)
    x, y = ix.evaluate(a, env), ix.evaluate(b, env)
    want = {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "==": x == y}[op]
    assert ix.evaluate(c, env) == want
    # decided only where it holds for every value: TRUE / FALSE agree with this point too
    if c is ix.TRUE or c is ix.FALSE:
        assert bool(c) == want
    both = ix.conj(c, ix.rel(">=", a, b))
    assert ix.evaluate(both, env) == (want and x >= y)


def test_index_variables_may_be_zero_or_negative():
    """Nothing assumes an index is positive (a dim is): i >= 0 and i - 1 >= 0 stay conditions, N - 1 >= 0 holds,
    a remainder is never negative, a floor division rounds down."""
    assert isinstance(ix.rel(">=", I0, 0), ix.Rel) and isinstance(I0 - 1 >= 0, ix.Rel)
    assert ix.rel(">=", N - 1, 0) is ix.TRUE and ix.rel("<", N, 1) is ix.FALSE
    assert ix.rel(">=", ix.mod(I0, 4), 0) is ix.TRUE
    assert isinstance(ix.rel("<", ix.mod(I0, 4), 4), ix.Rel)  # true, but undecided (as sympy left it)
    assert ix.evaluate(ix.fdiv(I0 - 1, 2), {I0: 0}) == -1
    assert ix.evaluate(ix.mod(I0 - 1, 3), {I0: 0}) == 2
    assert ix.fdiv(-7, 2) == -4 and ix.mod(-7, 3) == 2 and ix.fdiv(I0, 1) == I0
    with pytest.raises(TypeError):
        bool(I0 >= 0)  # a condition has no truth value of its own
    with pytest.raises(TypeError):
        N >= 1  # noqa: B015 - dims alone still only compare for equality


def test_remainders_simplify_as_sympy_did():
    assert ix.mod(I0 + 3, 2) == ix.mod(I0 + 1, 2)
    assert ix.mod(2 * I0 + 2, 4) == 2 * ix.mod(I0 + 1, 2)
    assert ix.mod(4 * I0, 2) == 0 and ix.mod(6, 4) == 2
    assert ix.mod(-I0, 4) == ix.mod(3 * I0, 4)
    assert ix.mod(ix.mod(I0, 8), 4) == ix.mod(I0, 4) and ix.mod(ix.mod(I0, 2), 4) == ix.mod(I0, 2)
    assert ix.eq(ix.mod(2 * I0, 2), 0) is ix.TRUE


@pytest.mark.parametrize("build, text", [
    (lambda: I0 + 2 * I1 - 1, "_i0 + 2*_i1 - 1"),
    (lambda: 3 * N * I1 + 2 * I0 + N, "3*N*_i1 + N + 2*_i0"),
    (lambda: I1 + 6 * ix.mod(I0, 4) + 12 * ix.fdiv(I0, 4), "_i1 + 6*(Mod(_i0, 4)) + 12*floordiv(_i0, 4)"),
    (lambda: -N * ix.mod(I0, 4), "-N*Mod(_i0, 4)"),
    (lambda: 1 - I1, "1 - _i1"),
    (lambda: N * G0 - N + 2 * I0, "N*_g0 - N + 2*_i0"),
    (lambda: ix.eq(ix.mod(I0 - 1, 2), 0), "Eq(Mod(_i0 + 1, 2), 0)"),
    (lambda: I0 - 2 < N, "_i0 - 2 < N"),
    (lambda: 0 <= I0 - N, "-N + _i0 >= 0"),
])
def test_prints_as_the_kernel_ir_always_read(build, text):
    assert ix.show(build()) == text


# sympy is the reference for the printed form and the operand order (the kernel IR's text, the emitted code's
# order): a family of the expressions lowering makes (sums of index variables, dims and their products, floor
# divisions and remainders of such sums)
sympy = pytest.importorskip("sympy")
_SYM = {I0: sympy.Symbol("_i0", integer=True), I1: sympy.Symbol("_i1", integer=True),
        G0: sympy.Symbol("_g0", integer=True), N: sympy.sympify(N), M: sympy.sympify(M)}


class _floordiv(sympy.Function):  # what the kernel IR's floordiv was
    nargs = 2
    is_integer = True

    @classmethod
    def eval(cls, a, b):
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(int(a) // int(b))
        if b == 1:
            return a
        return None


_floordiv.__name__ = "floordiv"


def _linear():
    term = st.tuples(st.integers(-4, 4), st.sampled_from([I0, I1, G0, N, M, N * I1, M * I0, 1]))
    return st.lists(term, min_size=1, max_size=4)


def _pair(terms):
    g = sum((c * t for c, t in terms), 0)
    s = sum((c * (_SYM[t] if t in _SYM else (sympy.sympify(t) if not isinstance(t, int) else t)) for c, t in terms),
            sympy.Integer(0))
    return g, sympy.expand(s)


_KERNELISH = st.lists(st.tuples(st.integers(-3, 3), _linear(), st.sampled_from(["id", "fdiv", "mod"]),
                                st.integers(2, 6)), min_size=1, max_size=3)


def _build(parts):
    g, s = 0, sympy.Integer(0)
    for c, terms, kind, q in parts:
        pg, ps = _pair(terms)
        if kind == "fdiv":
            pg, ps = ix.fdiv(pg, q), _floordiv(ps, q)
        elif kind == "mod":
            pg, ps = ix.mod(pg, q), sympy.Mod(ps, q)
        g, s = g + c * pg, s + c * ps
    return g, sympy.expand(s)


@settings(max_examples=300, deadline=None)
@given(_KERNELISH)
def test_prints_and_orders_operands_as_sympy(parts):
    g, s = _build(parts)
    assert ix.show(g) == str(s)
    if not isinstance(ix.norm(g), int):
        kind, args = ix.sympy_args(g)
        if kind in ("add", "mul"):
            assert [ix.show(a) for a in args] == [str(a) for a in s.args]
