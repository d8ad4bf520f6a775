"""Stable forms: values and gradients stay finite and accurate for inputs up to ±1e4 in float32 and float64;
subgradient conventions at kinks."""

import math

import numpy as np
import pytest
import sympy

import graphc as gc

BIG = np.array([-1e4, -100.0, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 30.0, 100.0, 1e4])


def exact_softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def exact_sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "fn, value, deriv",
    [
        (gc.softplus, exact_softplus, exact_sigmoid),
        (gc.sigmoid, exact_sigmoid, lambda v: exact_sigmoid(v) * exact_sigmoid(-v)),
    ],
    ids=["softplus", "sigmoid"],
)
def test_elementwise_stable(dtype, fn, value, deriv):
    x = gc.input("x", (len(BIG),), dtype)
    y = fn(x)
    g = gc.grad(gc.sum(y), x)
    got, dg = gc.evaluate([y, g], {"x": BIG.astype(dtype)})
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(dg))
    tol = 1e-6 if dtype == "float32" else 1e-14
    want = np.array([value(v) for v in BIG])
    np.testing.assert_allclose(got, want, rtol=tol, atol=1e-30)
    np.testing.assert_allclose(dg, [deriv(v) for v in BIG], rtol=tol * 10, atol=1e-30)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_log_softmax_softmax_stable(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4 + 1, -1e4 + 2], [3.0, 1.0, 2.0]])
    x = gc.input("x", (3, 3), dtype)
    lse = gc.logsumexp(x, axis=1)
    lsm = gc.log_softmax(x, axis=1)
    sm = gc.softmax(x, axis=1)
    r = np.random.default_rng(0).normal(size=(3, 3))
    gl = gc.grad(gc.sum(lsm * gc.constant(r, dtype)) + gc.sum(lse), x)
    vals = gc.evaluate([lse, lsm, sm, gl], {"x": z.astype(dtype)})
    for v in vals:
        assert np.all(np.isfinite(v))
    m = z.max(1, keepdims=True)
    want_lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    tol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(vals[0], want_lse, rtol=tol)
    want_lsm = (z - m) - np.log(np.exp(z - m).sum(1, keepdims=True))
    np.testing.assert_allclose(vals[1], want_lsm, rtol=tol, atol=tol)
    np.testing.assert_allclose(vals[2].sum(1), 1.0, rtol=tol)
    p = np.exp(z - want_lse[:, None])
    want_g = r - p * r.sum(1, keepdims=True) + p
    np.testing.assert_allclose(vals[3], want_g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropies_stable(dtype):
    f = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    y = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    logits = gc.input("f", (5,), dtype)
    t = gc.input("t", (5,), dtype)
    bce = gc.nn.binary_cross_entropy(logits, t)
    gb = gc.grad(bce, logits)
    loss, g = gc.evaluate([bce, gb], {"f": f.astype(dtype), "t": y.astype(dtype)})
    want = np.mean([exact_softplus((1 - 2 * yi) * fi) for fi, yi in zip(f, y, strict=True)])
    assert loss == pytest.approx(want, rel=1e-6)
    want_g = [(exact_sigmoid(fi) - yi) / 5 for fi, yi in zip(f, y, strict=True)]
    np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-12)

    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]])
    x = gc.input("z", (2, 3), dtype)
    lab = gc.input("lab", (2,), "int32")
    ce = gc.nn.softmax_cross_entropy(x, lab)
    gz = gc.grad(ce, x)
    loss, g = gc.evaluate([ce, gz], {"z": z.astype(dtype), "lab": np.array([1, 1])})
    assert loss == pytest.approx(2e4 / 2, rel=1e-6)  # first row: -log softmax = 2e4, second: ~0
    np.testing.assert_allclose(g, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_takes_soft_targets(dtype):
    """Targets in [0, 1] (label smoothing): -y log s(f) - (1 - y) log(1 - s(f)), gradient s(f) - y, as torch's
    binary_cross_entropy_with_logits; softplus((1 - 2y) f) was right for y in {0, 1} only (y = 0.5: log 2 and a
    zero gradient whatever the logit). Tiny losses of confident right answers keep their digits."""
    f = np.array([2.0, -1.0, 3.0, 0.5, 30.0, -30.0, 0.0, 1e4])
    y = np.array([0.5, 0.9, 0.1, 0.5, 1.0, 0.0, 0.25, 0.95])
    logits, t = gc.input("f", (8,), dtype), gc.input("t", (8,), dtype)
    bce = gc.nn.binary_cross_entropy(logits, t)
    per = y * np.array([exact_softplus(-v) for v in f]) + (1 - y) * np.array([exact_softplus(v) for v in f])
    want_g = (np.array([exact_sigmoid(v) for v in f]) - y) / 8
    feed = {"f": f.astype(dtype), "t": y.astype(dtype)}
    for got in (gc.evaluate([bce, gc.grad(bce, logits)], feed),
                gc.compile([bce, gc.grad(bce, logits)])(feed)):
        assert float(got[0]) == pytest.approx(per.mean(), rel=1e-6)
        np.testing.assert_allclose(got[1], want_g, rtol=1e-5, atol=1e-12)
    # the confident right answers alone: losses ~9.4e-14 each, not 0
    one = gc.evaluate(bce, {"f": np.array([30.0, -30.0] * 4, dtype), "t": np.array([1.0, 0.0] * 4, dtype)})
    assert float(one) == pytest.approx(exact_softplus(-30.0), rel=1e-5)


def _grad_at(fn, v, dtype="float64"):
    x = gc.input("x", np.shape(v), dtype)
    return gc.evaluate(gc.grad(gc.sum(fn(x)), x), {"x": np.asarray(v, dtype)})


def test_subgradient_conventions():
    # relu'(0) = 0, abs'(0) = sign(0) = 0
    np.testing.assert_array_equal(_grad_at(gc.relu, [-1.0, 0.0, 1.0]), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(_grad_at(gc.abs, [-2.0, 0.0, 2.0]), [-1.0, 0.0, 1.0])
    x = gc.input("x", (3,), "float64")
    np.testing.assert_array_equal(gc.evaluate(gc.sign(x), {"x": np.array([-2.0, 0.0, 2.0])}), [-1, 0, 1])
    np.testing.assert_array_equal(_grad_at(gc.sign, [-2.0, 0.0, 2.0]), [0.0, 0.0, 0.0])
    # maximum / minimum ties split the cotangent evenly between the two arguments
    a = gc.input("a", (3,), "float64")
    b = gc.input("b", (3,), "float64")
    ga, gb = gc.grad(gc.sum(gc.maximum(a, b)), [a, b])
    va, vb = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    np.testing.assert_array_equal(gc.evaluate([ga, gb], {"a": va, "b": vb}), [[1, 0.5, 0], [0, 0.5, 1]])
    ga, gb = gc.grad(gc.sum(gc.minimum(a, b)), [a, b])
    np.testing.assert_array_equal(gc.evaluate([ga, gb], {"a": va, "b": vb}), [[0, 0.5, 1], [1, 0.5, 0]])
    # max over an axis: tied maxima share the cotangent evenly
    m = gc.input("m", (2, 3), "float64")
    gm = gc.grad(gc.sum(gc.max(m, axis=1)), m)
    got = gc.evaluate(gm, {"m": np.array([[1.0, 3.0, 3.0], [4.0, 4.0, 4.0]])})
    np.testing.assert_allclose(got, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    # max(x, x) is x: the two halves add back to one
    np.testing.assert_array_equal(_grad_at(lambda z: gc.maximum(z, z), [1.0, -1.0]), [1.0, 1.0])


def test_floor_divide_and_remainder_are_numpys_bit_for_bit_on_special_values_and_ints():
    """x // y and x % y (gc.floor_divide, gc.remainder) as numpy computes them — through fmod, so 1 // 0.1 is 9 —
    with signed zeros, infinities, nan and a zero divisor, compiled and in the reference; ints rounded down, with
    x // 0 = x % 0 = 0 as numpy gives and INT_MIN // -1 wrapping instead of trapping."""
    import warnings

    v = np.array([0.0, -0.0, 1.0, -1.0, 0.1, 1e-30, 7.5, -7.5, 3.0, np.inf, -np.inf, np.nan, 1e30, 2.5], np.float64)
    for dt in ("float32", "float64"):
        A, B = (m.ravel().astype(dt) for m in np.meshgrid(v, v))
        a, b = gc.input("a", ("N",), dt), gc.input("b", ("N",), dt)
        outs = [a // b, a % b, gc.floor(a), gc.ceil(a)]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            want = [np.floor_divide(A, B), np.remainder(A, B), np.floor(A), np.ceil(A)]
            for got in (gc.compile(outs)({"a": A, "b": B}), gc.evaluate(outs, {"a": A, "b": B})):
                for g, w in zip(got, want, strict=True):
                    assert g.dtype == w.dtype
                    np.testing.assert_array_equal(g, w)
                    assert np.array_equal(np.signbit(g), np.signbit(w))  # -0.0 where numpy gives it
    for dt in ("int32", "int64"):
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        A, B = (m.ravel() for m in np.meshgrid(np.array([0, 1, -1, 7, -7, 3, -3, lo, hi], dt), np.array(
            [1, -1, 2, -2, 3, -7, 0, lo, hi], dt)))
        a, b = gc.input("ai", ("N",), dt), gc.input("bi", ("N",), dt)
        with np.errstate(all="ignore"):
            want = [np.floor_divide(A, B), np.remainder(A, B)]
        for g, w in zip(gc.compile([a // b, a % b])({"ai": A, "bi": B}), want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    x = gc.input("x", (3,), "float64")  # d(x % c)/dx = 1, d(c % x)/dx = -(c // x), floor and // are flat
    loss = gc.sum(x % 0.7 + 2.0 % x + x // 0.3 + gc.floor(x) * x)
    g = gc.evaluate(gc.grad(loss, x), {"x": np.array([1.0, 0.7, -1.3])})
    np.testing.assert_allclose(g, 1 - np.floor_divide(2.0, [1.0, 0.7, -1.3]) + np.floor([1.0, 0.7, -1.3]))
    tex = str(gc.latex(loss))
    assert r"\bmod" in tex and r"\left\lfloor \frac{" in tex and "operatorname" not in tex


def _phi(v):
    return math.exp(-v * v / 2) / math.sqrt(2 * math.pi)


_xgauss = gc.elementwise("xgauss", lambda t: t * sympy.exp(-t ** 2))
SECOND = {  # f, f', f'' (exact, in float64: exp of a large negative number is 0, never inf)
    "erf": (gc.erf, lambda v: 2 / math.sqrt(math.pi) * math.exp(-v * v),
            lambda v: -4 * v / math.sqrt(math.pi) * math.exp(-v * v)),
    "gelu": (gc.nn.gelu, lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))) + v * _phi(v),
             lambda v: _phi(v) * (2 - v * v)),
    "x*exp(-x^2)": (_xgauss, lambda v: (1 - 2 * v * v) * math.exp(-v * v),
                    lambda v: (4 * v ** 3 - 6 * v) * math.exp(-v * v)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(SECOND))
def test_second_derivatives_of_gaussian_tails_are_finite_for_every_input(dtype, name):
    # erf's derivative 2/sqrt(pi)*exp(-x^2) was built as 2/(sqrt(pi)*exp(x^2)): exp(x^2) overflowed (|x| > 9.4 in
    # float32, 26.7 in float64) and its own derivative multiplied 0 by inf, so erf'' and gelu'' were nan there
    fn, d1, d2 = SECOND[name]
    v = np.concatenate([BIG, [-26.0, -10.0, -9.0, 3.0, 9.0, 10.0, 13.0, 20.0, 27.0]])
    x = gc.input("x", v.shape, dtype)
    g1 = gc.grad(gc.sum(fn(x)), x)
    g2 = gc.grad(gc.sum(g1), x)
    want = [np.array([d(t) for t in v]) for d in (d1, d2)]
    rtol, atol = (1e-4, 1e-36) if dtype == "float32" else (1e-10, 1e-300)
    for got in (gc.evaluate([g1, g2], {"x": v.astype(dtype)}), gc.compile([g1, g2])({"x": v.astype(dtype)})):
        for k in range(2):
            assert np.all(np.isfinite(got[k])), (k + 1, v[~np.isfinite(got[k])])
            np.testing.assert_allclose(got[k], want[k].astype(dtype), rtol=rtol, atol=atol)
