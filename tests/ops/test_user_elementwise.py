import numpy as np
import pytest
import sympy

import graphc as gc
from graphc.autodiff.check import check_grad


def test_declare_activation_in_one_line_and_get_its_gradient():
    swish = gc.elementwise("swish", lambda z: z / (1 + sympy.exp(-z)))
    x = gc.input("x", ("N", 5), "float64")
    y = swish(x)
    v = np.linspace(-3, 3, 10).reshape(2, 5)
    np.testing.assert_allclose(gc.evaluate(y, {"x": v}), v / (1 + np.exp(-v)), rtol=1e-14)
    check_grad(gc.sum(y * y), [x], {"x": v}, rtol=1e-6)
    # the derivative graph is sympy's derivative, made of ordinary ops
    z = sympy.Symbol("z", real=True)
    d_sym = sympy.lambdify(z, sympy.diff(z / (1 + sympy.exp(-z)), z))
    np.testing.assert_allclose(gc.evaluate(gc.grad(gc.sum(y), x), {"x": v}), d_sym(v), rtol=1e-12)
    used = {n.op.name for n in gc.topo_order(gc.grad(gc.sum(y), x))}
    assert "sigmoid" in used and not any(name.startswith("fn<") for name in used), used


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_formula_with_exp_that_overflows_has_a_finite_gradient(dtype):
    # 1 / (1 + exp(-z)) is read as sigmoid(z), log(1 + exp(z)) as softplus(z): the derivative of swish was
    # (z + exp(z) + 1) / (4 cosh(z/2)**2), NaN beyond z = 88 in float32
    swish = gc.elementwise("swish", lambda z: z / (1 + sympy.exp(-z)))
    sp2 = gc.elementwise("softplus_twice", lambda z: 2 * sympy.log(1 + sympy.exp(z)))
    x = gc.input("x", (8,), dtype)
    v = np.array([-800, -100, -3, 0, 2, 50, 100, 800], dtype)
    s = 0.5 * (1 + np.tanh(v.astype(np.float64) / 2))
    want = [s + v * s * (1 - s), 2 * s]
    outs = [gc.grad(gc.sum(swish(x)), x), gc.grad(gc.sum(sp2(x)), x)]
    for got in (gc.evaluate(outs, {"x": v}), gc.compile(outs, cache=False)({"x": v})):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.astype(dtype), rtol=1e-5, atol=1e-30)


def test_redeclaring_same_formula_is_fine_but_a_conflict_is_an_error():
    f1 = gc.elementwise("cube_plus", lambda z: z**3 + z)
    f2 = gc.elementwise("cube_plus", lambda z: z**3 + z)
    x = gc.input("x", (2,))
    assert f1(x) is f2(x)
    with pytest.raises(gc.GraphcError, match="already"):
        gc.elementwise("cube_plus", lambda z: z**3)
    with pytest.raises(gc.GraphcError, match="already"):
        gc.elementwise("exp", lambda z: z)


def test_user_functions_compose_with_builtin_scalar_functions():
    mish = gc.elementwise("mish", lambda z: z * sympy.tanh(gc.sym.softplus(z)))
    x = gc.input("x", (7,), "float64")
    v = np.linspace(-4, 4, 7)
    np.testing.assert_allclose(gc.evaluate(mish(x), {"x": v}), v * np.tanh(np.log1p(np.exp(v))), rtol=1e-12)
    check_grad(gc.sum(mish(x)), [x], {"x": v}, rtol=1e-6)


def test_two_argument_function():
    hyp = gc.elementwise("hypot2", lambda a, b: sympy.sqrt(a * a + b * b))
    a = gc.input("a", (3,), "float64")
    b = gc.input("b", (3,), "float64")
    va, vb = np.array([3.0, 1.0, 2.0]), np.array([4.0, 1.0, -1.0])
    np.testing.assert_allclose(gc.evaluate(hyp(a, b), {"a": va, "b": vb}), np.hypot(va, vb))
    check_grad(gc.sum(hyp(a, b)), [a, b], {"a": va, "b": vb}, rtol=1e-6)


def test_bad_declarations():
    with pytest.raises(gc.GraphcError):
        gc.elementwise("not an identifier", lambda z: z)
    with pytest.raises(gc.GraphcError, match="unknown symbols"):
        gc.elementwise("leaky", lambda z: z * sympy.Symbol("alpha"))
    f = gc.elementwise("twice", lambda z: 2 * z)
    with pytest.raises(gc.GraphcError, match="takes 1"):
        f(gc.input("x", (2,)), gc.input("y", (2,)))


@pytest.mark.parametrize("fn, words", [
    (lambda z: np.exp(z), "ufunc"),  # numpy's exp on a sympy symbol: the usual mistake
    (lambda z: gc.sigmoid(z), "DTypeError"),  # a graphc tensor function instead of gc.sym.sigmoid
    (lambda z: z.foo(), "AttributeError"),
], ids=["numpy", "graphc", "typo"])
def test_a_formula_that_fails_on_symbols_is_a_clear_error(fn, words):
    with pytest.raises(gc.GraphcError, match=f"elementwise\\('bad_formula'\\): the formula failed on sympy symbols "
                                             f"\\(.*{words}.*write it with sympy"):
        gc.elementwise("bad_formula", fn)
    with pytest.raises(gc.GraphcError, match="nargs must be a non-negative int"):
        gc.elementwise("bad_nargs", lambda z: z, nargs=-1)


def test_iota_expand_dims_and_scope_check_their_arguments():
    x = gc.input("x", ("N", 4))
    for bad, why in ((-1, "dims must be >= 0"), (1.5, "not float 1.5"), (True, "not True"),
                     ("T", "the symbolic length T needs of=")):
        with pytest.raises(gc.ShapeError, match=f"iota: .*{why}"):
            gc.iota(bad)
    np.testing.assert_array_equal(gc.evaluate(gc.iota(3), {}), [0, 1, 2])
    # a symbolic length, its symbols bound by a tensor's shape (a loop's steps, positions along the batch)
    r = gc.iota(gc.dim("N") * 2 - 1, "int64", of=x)
    assert r.shape == (gc.dim("N") * 2 - 1,) and r.dtype == "int64"
    for n in (1, 5):
        v = {"x": np.zeros((n, 4), np.float32)}
        np.testing.assert_array_equal(gc.evaluate(r, v), np.arange(2 * n - 1))
        np.testing.assert_array_equal(gc.compile(r, cache=False)(v), np.arange(2 * n - 1))
    with pytest.raises(gc.ShapeError, match=r"iota of length M uses \['M'\], which are not dims of \[N,4\]"):
        gc.iota("M", of=x)
    for ax in (3, -4):
        with pytest.raises(gc.ShapeError, match="expand_dims: axis .* out of range for a rank-2 tensor"):
            gc.expand_dims(x, ax)
    for ax in (1.0, None, (0, 1.0)):
        with pytest.raises(gc.ShapeError, match="expand_dims: axis must be an int or a tuple of ints"):
            gc.expand_dims(x, ax)
    assert gc.expand_dims(x, -3).shape[0] == 1 and gc.expand_dims(x, 2).shape[2] == 1
    # a tuple of axes, as numpy's: counted in the result, negative ones from its end, each once
    v = np.zeros((2, 3, 4), np.float32)
    a = gc.input("a", (2, 3, 4))
    for axes in [(0, 2), (0, -1), (-1, 0), [1], (), (4, 0, 2), (-5, -3)]:
        out = gc.expand_dims(a, axes)
        assert out.shape == np.expand_dims(v, axes).shape, axes
        assert gc.evaluate(out, {"a": v}).shape == np.expand_dims(v, axes).shape
    assert gc.expand_dims(x, (0, -1)).shape == (1, gc.dim("N"), 4, 1)
    with pytest.raises(gc.ShapeError, match=r"expand_dims: repeated axis in \(0, -5\).*rank-5 result"):
        gc.expand_dims(a, (0, -5))
    with pytest.raises(gc.ShapeError, match=r"expand_dims: axis 5 in \(0, 5\) is out of range.*rank-5 result"):
        gc.expand_dims(a, (0, 5))
    with pytest.raises(gc.GraphcError, match="scope: a name must be a string"), gc.scope(3):
        pass


def test_floor_and_ceiling_in_a_formula_differentiate_as_steps():
    """sympy leaves d/dx floor(x) unevaluated (and wraps ceiling(x/2)'s in a Subs): the gradient held a
    Derivative no backend can compute; it is 0 almost everywhere, as gc.floor's."""
    stepped = gc.elementwise("stepped_sq", lambda z: sympy.floor(z) + z ** 2 + sympy.ceiling(z / 2) * z)
    x = gc.input("x", ("N",), "float64")
    g = gc.grad(gc.sum(stepped(x)), x)
    v = {"x": np.array([-2.5, -0.5, 0.3, 1.7])}
    want = 2 * v["x"] + np.ceil(v["x"] / 2)
    np.testing.assert_allclose(gc.evaluate(g, v), want)
    np.testing.assert_allclose(gc.compile(g, cache=False)(v), want)


@pytest.mark.parametrize("name, fn", [
    ("relu6_u", lambda z: sympy.Min(sympy.Max(z, 0), 6)),
    ("hswish_u", lambda z: z * sympy.Min(sympy.Max(z + 3, 0), 6) / 6),
    ("max3_u", lambda z: sympy.Max(z, 0, sympy.cos(z) - 1)),
    ("band_u", lambda z: sympy.Piecewise((z ** 2, sympy.And(z > -1, z < 1)), (sympy.Abs(z), True))),
])
def test_gradients_of_formulas_with_max_min_and_conjunctions(name, fn):
    """Their derivatives hold conditions that simplify to False, and conjunctions: both failed to become graph
    ops ("cannot lower the condition False")."""
    op = gc.elementwise(name, fn)
    x = gc.input("x", ("N",), "float64")
    g = gc.grad(gc.sum(op(x)), x)
    v = {"x": np.array([-4.3, -2.1, -0.6, 0.4, 2.2, 7.7])}
    eps = 1e-6
    f = lambda a: gc.evaluate(gc.sum(op(x)), {"x": a})  # noqa: E731
    fd = np.array([(f(v["x"] + eps * e) - f(v["x"] - eps * e)) / (2 * eps) for e in np.eye(6)])
    np.testing.assert_allclose(gc.evaluate(g, v), fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gc.compile(g, cache=False)(v), fd, rtol=1e-6, atol=1e-8)


_WIDE = np.array([-3e38, -1e30, -1e26, -1e20, -1e15, -1e6, -30.0, -2.0, -1.0, -0.5, -1e-3, -1e-30, -0.0, 0.0,
                  1e-30, 1e-3, 0.5, 1.0, 2.0, 30.0, 1e6, 1e15, 1e20, 1e26, 1e30, 3e38])


@pytest.mark.parametrize("name, fn", [
    ("abs_pow15_u", lambda z: sympy.Abs(z) ** 1.5),
    ("abs_pow25_u", lambda z: sympy.Abs(z) ** 2.5),
    ("abs_pow43_u", lambda z: sympy.Abs(z) ** sympy.Rational(4, 3)),
    ("abs_cube_u", lambda z: sympy.Abs(z) ** 3),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_derivative_is_finite_wherever_the_plain_derivative_is(name, fn, dtype):
    """The smallest form of a derivative is not always safe: |x|**1.5's was 1.5 y**(1/3) sign(x), written with the op's
    output y = |x|**1.5, which overflows float32 from |x| = 5e25 while the derivative 1.5 sqrt(|x|) is 1.5e13 there;
    |x|**3's was 3 x**3 / |x|, inf from |x| = 7e12. Checked against sympy's plain derivative in float64."""
    op = gc.elementwise(name, fn)
    x = gc.input("x", ("N",), dtype)
    g = gc.grad(gc.sum(op(x)), x)
    v = _WIDE.astype(dtype)
    z = sympy.Symbol("z", real=True)
    with np.errstate(all="ignore"):
        want = sympy.lambdify(z, sympy.diff(fn(z), z), "numpy")(v.astype(np.float64)).astype(dtype)
    finite = np.isfinite(want)
    assert finite[v.size // 2 - 9:v.size // 2 + 9].all()
    for got in (gc.evaluate(g, {"x": v}), gc.compile(g, cache=False)({"x": v})):
        assert np.isfinite(got[finite]).all(), v[finite & ~np.isfinite(got)]
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5 if dtype == "float32" else 1e-12,
                                   atol=1e-30)


def test_a_smaller_form_that_is_not_finite_for_negatives_is_not_chosen():
    """sympy.simplify may return a form such as 1.5 x / |sqrt(x)| (no derivative of |x|**1.5 for x < 0: a root
    of a negative number): among forms of a derivative the first safe one is kept, however small the others."""
    from graphc.ops.pointwise import _safest, formula_names

    s = formula_names()
    expr = sympy.Abs(s.x0) ** 1.5
    plain = sympy.diff(expr, s.x0)
    unsafe = 1.5 * s.x0 / sympy.Abs(s.x0 ** 0.5)
    assert _safest(expr, (s.x0,), plain, [unsafe, plain]) == plain
    assert _safest(expr, (s.x0,), plain, [plain, unsafe]) == plain
    # every form misses somewhere: the one missing fewest points
    assert _safest(expr, (s.x0,), plain, [unsafe, s.Y ** sympy.Rational(1, 3) * 1.5 * sympy.sign(s.x0)]) != unsafe


@pytest.mark.parametrize("name, fn, value, slope", [
    ("times_huge_u", lambda z: z * sympy.Integer(10) ** 400, lambda v: v * np.inf, lambda v: np.full_like(v, np.inf)),
    ("times_tiny_u", lambda z: z * sympy.Rational(1, 10 ** 400), lambda v: v * 0.0, lambda v: np.zeros_like(v)),
    ("plus_tiny_u", lambda z: z + sympy.Rational(1, 10 ** 400), lambda v: v, lambda v: np.ones_like(v)),
    # the derivative's coefficient (10**400 + 1)/10**400 is 1.0, not inf/inf
    ("near_one_power_u", lambda z: sympy.Abs(z) ** sympy.Rational(10 ** 400 + 1, 10 ** 400), np.abs, np.sign),
    # 10**400 appears only in the derivative: 2 * 10**400 * z
    ("square_huge_u", lambda z: (10 ** 200 * z) ** 2, lambda v: v * v * np.inf, lambda v: 2 * v * np.inf),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_and_tiny_rational_constants_are_their_ieee_values(name, fn, value, slope, dtype):
    """A constant beyond a double's range in a formula (or its derivative) is what float arithmetic makes of it:
    10**400 is inf, 1/10**400 is 0 (as numpy's float32(1e39) is inf). As Python ints they raised OverflowError in
    the reference and in the emitter, and the coefficient (10**400 + 1)/10**400 became inf/inf = nan."""
    op = gc.elementwise(name, fn)
    x = gc.input("x", ("N",), dtype)
    y = op(x)
    g = gc.grad(gc.sum(y), x)
    v = np.array([-2.0, -0.0, 0.0, 1.5, np.inf], dtype)
    with np.errstate(all="ignore"):
        want = [value(v).astype(dtype), slope(v).astype(dtype)]
        for got in (gc.evaluate([y, g], {"x": v}), gc.compile([y, g], cache=False)({"x": v})):
            for a, w in zip(got, want, strict=True):
                assert a.dtype == dtype
                np.testing.assert_array_equal(a, w)
