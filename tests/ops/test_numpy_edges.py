"""Edge values where a compiled result once differed from numpy's (and the reference's): a tensor exponent with a
negative base, long float32 sums, Python ints beyond the tensor's dtype, rows of infinities in logsumexp, empty
axes, an empty contraction. Each is checked in the reference and compiled, against numpy."""

import numpy as np
import pytest

import graphc as gc

rng = np.random.default_rng(11)


def both(outs, **values):
    fn = gc.compile(outs, threads=2, cache=False)
    return gc.evaluate(outs, values), fn({k: np.asarray(v) for k, v in values.items()})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_tensor_exponent_gives_numpys_power_for_any_base(dtype):
    base = np.array([-7, -2, 0, -1, -0.0, 2, -2, -2, np.nan, 1, -0.5, -3, 1.1, -1.3, 0, 0, 3, -1,
                     -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -1, -1, -0.0], dtype)
    expo = np.array([2, 3, 0, 0, -1, 0.5, 0.5, np.inf, 0, np.nan, np.inf, -3, 70, 63, 2, -2, 1e9, 1e9 + 1,
                     0.5, -0.5, 2.5, 3, -3, np.inf, -np.inf, -0.5], dtype)
    x, y = gc.input("x", (len(base),), dtype), gc.input("y", (len(base),), dtype)
    with np.errstate(all="ignore"):
        want = base ** expo
    for got in both(x ** y, x=base, y=expo):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=2e-6 if dtype == "float32" else 1e-13)
        # small integer exponents are exact, as numpy's (7 ** 2 = 49, not 48.999992)
        exact = (np.abs(expo) < 8) & (expo == np.floor(expo)) & np.isfinite(want)
        np.testing.assert_array_equal(got[exact], want[exact])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_tensor_exponent_is_accurate_to_an_ulp_up_to_overflow(dtype):
    """exp(y·log|x|) in the working precision carried log's rounding times |y·log x| into the result (float32
    up to 135 ulp near overflow, float64 1016 ulp); |x| ** y is now within an ulp of the truth everywhere."""
    rng = np.random.default_rng(0)
    n = 20000
    big = 85.0 if dtype == "float32" else 700.0
    x1 = np.exp(rng.uniform(-20, 20, n))
    y1 = rng.uniform(-4, 4, n)
    x2 = rng.uniform(0.5, 2, n)
    y2 = rng.uniform(-1, 1, n) * big / np.log(x2)  # results across the whole range, to near over- and underflow
    X, Y = np.concatenate([x1, x2]).astype(dtype), np.concatenate([y1, y2]).astype(dtype)
    x, y = gc.input("x", (2 * n,), dtype), gc.input("y", (2 * n,), dtype)
    got = gc.compile([x ** y], cache=False)({"x": X, "y": Y})[0]
    with np.errstate(all="ignore"):
        truth = np.power(X.astype(np.float64), Y.astype(np.float64)) if dtype == "float32" else np.power(X, Y)
    info = np.finfo(dtype)
    ok = np.isfinite(truth) & (truth > info.tiny) & (truth < info.max)
    ulps = np.abs(got[ok].astype(np.float64) - truth[ok]) / np.spacing(truth[ok].astype(dtype)).astype(np.float64)
    assert ok.sum() > n and ulps.max() <= 1.0, ulps.max()


@pytest.mark.parametrize("p", [-0.5, 2.5, -1.5, 0.25])
def test_constant_powers_at_signed_zeros_and_infinities_are_numpys(p):
    v = np.array([-np.inf, -0.0, 0.0, np.inf, -2.0, 4.0, np.nan], np.float32)
    x = gc.input("x", (7,))
    with np.errstate(all="ignore"):
        want = v ** np.float32(p)
    for got in both(x ** p, x=v):
        np.testing.assert_allclose(got, want, rtol=2e-6)
        number = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[number]), np.signbit(want[number]))


def test_the_gradient_of_a_power_with_a_negative_base_and_an_integer_exponent():
    x, y = gc.input("x", (4,), "float64"), gc.input("y", (4,), "float64")
    vx, vy = np.array([-1.5, -2.0, 0.7, -0.3]), np.array([3.0, 2.0, 1.7, 5.0])
    dx = gc.grad(gc.sum(x ** y), [x])[0]
    for got in both(dx, x=vx, y=vy):
        np.testing.assert_allclose(got, vy * vx ** (vy - 1), rtol=1e-12)
    gc.check_grad(gc.sum(x ** gc.stop_gradient(y)), [x], {"x": vx, "y": vy})


def test_long_float32_sums_are_as_accurate_as_numpys():
    # 2M values near 1000: a plain running float32 sum is off by ~1e-3 relative, the variance by 100x
    v = (rng.random(2_000_000) + 1000).astype(np.float32)
    y = gc.input("y", ("N",))
    m = gc.input("m", (2, "N"))
    exact = v.astype(np.float64)
    outs = [gc.sum(y), gc.mean(y), gc.var(y), gc.sum(m, axis=1)]
    for s, mean, var, rows in both(outs, y=v, m=np.stack([v, v[::-1]])):
        np.testing.assert_allclose(s, exact.sum(), rtol=1e-6)
        np.testing.assert_allclose(mean, exact.mean(), rtol=1e-6)
        np.testing.assert_allclose(var, exact.var(), rtol=1e-3)
        np.testing.assert_allclose(rows, [exact.sum()] * 2, rtol=1e-6)


def test_logsumexp_of_rows_with_infinities_is_scipys():
    x = gc.input("x", ("N", 3))
    v = np.array([[0, 1, np.inf], [-np.inf] * 3, [0, -np.inf, 1], [-np.inf, 0, -np.inf], [1e30, 1e30, -1e30]],
                 np.float32)
    want = [np.inf, -np.inf, np.logaddexp(0, 1), 0.0, 1e30 + np.log(2)]
    for got in both(gc.logsumexp(x, axis=1), x=v):
        np.testing.assert_allclose(got, np.float32(want), rtol=1e-6)


def test_logsumexp_without_an_axis_reduces_every_axis_as_scipys():
    """Its default axis was -1 (a matrix gave a vector); scipy's and jax's, like graphc's sum and max, is None."""
    x = gc.input("x", (2, 3), "float64")
    v = np.array([[0.5, -1.0, 2.0], [-np.inf, 3.0, 0.25]])
    want = np.log(np.sum(np.exp(v)))
    for got, kept in both([gc.logsumexp(x), gc.logsumexp(x, keepdims=True)], x=v):
        assert got.shape == () and kept.shape == (1, 1)
        np.testing.assert_allclose([got, kept[0, 0]], [want, want], rtol=1e-14)


def test_a_python_int_beyond_the_tensors_int_dtype_is_refused_in_arithmetic_and_compared_exactly():
    i = gc.input("i", (3,), "int32")
    v = np.array([1, 2, 3], np.int32)
    for build in (lambda: i + 2**40, lambda: gc.maximum(i, -(2**33)), lambda: gc.constant(2**40, "int32")):
        with pytest.raises(gc.DTypeError, match="1099511627776 does not fit int32|-8589934592 does not fit int32"):
            build()
    with pytest.raises(gc.DTypeError, match=r"test_numpy_edges.py:\d+"):
        i * 2**40
    outs = [i > 3_000_000_000, i < -3_000_000_000, gc.equal(i, 2**40), gc.not_equal(i, 2**40), i < 2.5,
            i + (2**31 - 4), gc.cast(i, "int64") + 2**40]
    with np.errstate(all="ignore"):
        want = [v > 3_000_000_000, v < -3_000_000_000, v == 2**40, v != 2**40, v < 2.5, v + (2**31 - 4),
                v.astype(np.int64) + 2**40]
    for got in both(outs, i=v):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    assert gc.constant(2**40).dtype == "int64" and int(gc.evaluate(gc.constant(2**40))) == 2**40


def test_a_python_float_for_a_float32_input_keeps_float32_in_the_reference():
    lr, x = gc.input("lr", ()), gc.input("x", (3,))
    ref = gc.evaluate(lr * x, {"lr": 0.1, "x": np.ones(3, np.float32)})
    compiled = gc.compile(lr * x)({"lr": 0.1, "x": np.ones(3, np.float32)})
    assert ref.dtype == compiled.dtype == np.float32
    assert gc.evaluate(lr * x, {"lr": np.float64(0.1), "x": np.ones(3, np.float32)}).dtype == np.float64


def test_integer_powers_of_integers_stay_exact_integers():
    a = gc.input("a", ("N",), "int64")
    v = np.array([100003, 3, -2, 0], np.int64)
    outs = [a ** 0, a ** 1, a ** 2, a ** 5, a ** 0.5]
    with np.errstate(all="ignore"):
        want = [v ** 0, v ** 1, v ** 2, v ** 5, v ** 0.5]
    for got in both(outs, a=v):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    with pytest.raises(gc.DTypeError, match="negative power -1"):
        a ** -1


def test_a_product_over_an_empty_axis_is_zeros():
    a, b = gc.input("a", ("M", 0)), gc.input("b", (5, 0))
    c = gc.input("c", (2, 0, "M"))
    va, vb, vc = np.zeros((3, 0), np.float32), np.zeros((5, 0), np.float32), np.zeros((2, 0, 3), np.float32)
    outs = [a @ b.T, gc.matmul(a, b, tb=True), gc.matmul(c, c, ta=True), a @ gc.zeros((0,), "float32")]
    want = [va @ vb.T, va @ vb.T, np.swapaxes(vc, 1, 2) @ vc, va @ np.zeros(0, np.float32)]
    for got in both(outs, a=va, b=vb, c=vc):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    grads = gc.compile(gc.grad(gc.sum(a @ b.T), [a, b]))({"a": va, "b": vb})
    assert [g.shape for g in grads] == [(3, 0), (5, 0)]


def test_any_and_all_over_an_empty_axis_are_numpys():
    x = gc.input("x", ("N", 3))
    v = np.zeros((0, 3), np.float32)
    outs = [gc.any(x > 0), gc.all(x > 0), gc.any(x, axis=0), gc.all(x, axis=0), gc.any(x, axis=1)]
    want = [np.any(v > 0), np.all(v > 0), np.any(v, axis=0), np.all(v, axis=0), np.any(v, axis=1)]
    for got in both(outs, x=v):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.bool_
            np.testing.assert_array_equal(g, w)
    z = gc.input("z", (0, 3))  # a static empty axis too
    assert gc.evaluate(gc.all(z), {"z": v}) and not gc.evaluate(gc.any(z), {"z": v})


def test_var_and_std_take_ddof_and_prod_is_numpys_with_an_exact_gradient_at_zeros():
    x = gc.input("x", ("N", 4), "float64")
    v = np.array([[1, 2, 3, 4], [0, 2, 3, 4], [0, 0, 3, 4], [-1.5, 2, 0.5, 3]])
    outs = [gc.var(x, axis=1, ddof=1), x.std(ddof=1), x.var(axis=0, keepdims=True, ddof=2), gc.prod(x),
            gc.prod(x, axis=1), x.prod(axis=0, keepdims=True), gc.prod(gc.cast(x, "int32"), axis=1),
            gc.prod(x > 0, axis=1)]
    want = [np.var(v, axis=1, ddof=1), np.std(v, ddof=1), np.var(v, axis=0, keepdims=True, ddof=2), np.prod(v),
            np.prod(v, axis=1), np.prod(v, axis=0, keepdims=True), np.prod(v.astype(np.int32), axis=1),
            np.prod(v > 0, axis=1)]
    for got in both(outs, x=v):
        for g, w in zip(got, want, strict=True):
            assert g.dtype.kind == w.dtype.kind
            np.testing.assert_allclose(g, w, rtol=1e-12)
    w = rng.normal(size=4)
    x4 = gc.input("x4", (4, 4), "float64")
    loss = gc.sum(gc.prod(x4, axis=1) * w)
    want = np.array([[w[i] * np.prod(np.delete(r, j)) for j in range(4)] for i, r in enumerate(v)])  # zeros too
    for got in both(gc.grad(loss, [x4])[0], x4=v):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    y = gc.input("y", (3, 4), "float64")
    vy = {"y": rng.normal(size=(3, 4))}
    gc.check_grad(gc.sum(gc.prod(y, axis=0) * rng.normal(size=4)) + gc.std(y, ddof=1), [y], vy)
    gc.check_grad(gc.sum(gc.grad(gc.sum(gc.prod(y, axis=0) ** 2), [y])[0] * vy["y"]), [y], vy)
    with pytest.raises(gc.GraphcError, match="ddof must be a non-negative int"):
        gc.var(x, ddof=-1)


def test_take_without_an_axis_takes_from_the_flattened_tensor():
    x = gc.input("x", (2, 3))
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    for got in both(gc.take(x, np.array([[5, 1], [0, 4]]), axis=None), x=v):
        np.testing.assert_array_equal(got, np.take(v, [[5, 1], [0, 4]]))
    with pytest.raises(gc.ShapeError, match="index 6 is out of range"):
        gc.take(x, [0, 6], axis=None)


def test_identities_that_would_change_a_signed_zero_are_not_applied():
    x = gc.input("x", (3,))
    v = np.array([-0.0, 1.0, -2.0], np.float32)
    outs = [1.0 / (x + 0.0), 1.0 / (0.0 + x), 1.0 / (0.0 - x), 1.0 / (x - 0.0), 1.0 / (x * 1.0)]
    with np.errstate(divide="ignore"):
        want = [1.0 / (v + 0.0), 1.0 / (0.0 + v), 1.0 / (0.0 - v), 1.0 / (v - 0.0), 1.0 / (v * 1.0)]
    for got in both(outs, x=v):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("n", [16, 17, 100, 5000])
def test_sums_holding_or_overflowing_to_infinity_are_numpys(n):
    # the compensated sum's correction was inf - inf: NaN where numpy's sum is inf
    x = gc.input("x", ("N",))
    rows = gc.input("rows", (3, "N"), "float64")
    one_inf = np.ones(n, np.float32)
    one_inf[n // 2] = np.inf
    overflow = np.full(n, 3e38, np.float32)
    both_signs = one_inf.copy()
    both_signs[0] = -np.inf
    r = np.ones((3, n))
    r[:, -1] = np.inf
    r[1, 0] = -np.inf
    for v in (one_inf, overflow, both_signs):
        with np.errstate(all="ignore"):
            want = [v.sum(dtype=np.float32), v.mean(dtype=np.float32)]
        for got in both([gc.sum(x), gc.mean(x)], x=v):
            np.testing.assert_array_equal(got, want)
    for got in both([gc.sum(rows, axis=1)], rows=r):
        np.testing.assert_array_equal(got[0], r.sum(axis=1))


def test_the_gradient_of_a_max_holding_a_nan_goes_to_the_nan():
    """A window (or axis) with a NaN has the max NaN; its cotangent went nowhere (NaN == NaN is false: a zero
    gradient hid the NaN from any check on gradients). It goes to the NaN now, as PyTorch's max_pool2d and max."""
    x = gc.input("x", (1, 2, 2, 1), "float64")
    xv = np.array([1.0, np.nan, 2.0, 3.0]).reshape(1, 2, 2, 1)
    for y in (gc.max_pool2d(x, 2), gc.max(x, axis=(1, 2))):
        for loss, at_nan in ((gc.sum(y * y), np.nan), (gc.sum(y), 1.0)):  # a NaN cotangent (2y), a finite one
            g = gc.grad(loss, x)
            for got in (gc.evaluate(g, {"x": xv}), gc.compile(g, cache=False)({"x": xv})):
                np.testing.assert_array_equal(got.ravel(), [0.0, at_nan, 0.0, 0.0])
    # ties still share evenly, and a min's NaN is its own
    g = gc.grad(gc.sum(gc.min(x, axis=(1, 2))), x)
    np.testing.assert_array_equal(gc.evaluate(g, {"x": xv}).ravel(), [0, 1, 0, 0])
    t = np.array([3.0, 1.0, 3.0, 2.0]).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(gc.evaluate(gc.grad(gc.sum(gc.max_pool2d(x, 2)), x), {"x": t}).ravel(),
                                  [0.5, 0, 0.5, 0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_maximum_and_minimum_are_numpys_at_signed_zeros_nans_and_infinities(dtype):
    """numpy's maximum(a, b) is b where a and b are equal (maximum(0.0, -0.0) is -0.0) and nan where either is;
    the native code's llvm.maximum ordered -0.0 below 0.0 (0.0 there, and minimum(-0.0, 0.0) gave -0.0)."""
    import itertools

    vals = [-0.0, 0.0, np.nan, -np.inf, np.inf, 1.0, -1.0]
    a, b = (np.array(v, dtype) for v in zip(*itertools.product(vals, vals), strict=True))
    x, y = gc.input("a", a.shape, dtype), gc.input("b", b.shape, dtype)
    outs = [gc.maximum(x, y), gc.minimum(x, y), gc.relu(x), gc.maximum(x, 0.0), gc.minimum(0.0, x)]
    want = [np.maximum(a, b), np.minimum(a, b), np.maximum(a, 0), np.maximum(a, 0.0),
            np.minimum(0.0, a)]
    for got in both(outs, a=a, b=b):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype
            np.testing.assert_array_equal(g, w)
            np.testing.assert_array_equal(np.signbit(g), np.signbit(w))


def test_an_int_exponent_beyond_float64_is_a_graphc_error():
    """x ** 10**400: float(10**400) raised OverflowError from inside graphc (numpy refuses it too)."""
    x = gc.input("x", (3,))
    with pytest.raises(gc.GraphcError, match="exponent, an int of 401 digits, is beyond float64's range"):
        x ** (10 ** 400)


def _edges(dtype):
    """0, ±0, ±inf, NaN, subnormals, the smallest normal, huge values, powers of 2 and 10, and a random sweep."""
    info = np.finfo(dtype)
    sub = [float(info.smallest_subnormal), float(info.smallest_subnormal) * 3, float(info.tiny) / 2]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, *sub, *(-s for s in sub), float(info.tiny), float(info.max),
               -float(info.max), float(info.max) / 3, 0.5, 1.0, -1.0, 2.0, 8.0, 1024.0, 0.125, 10.0, 1000.0, 1e-3,
               2.5, -2.5, 0.49999997, -0.5, 1.5, 3.0, -3.0]
    r = np.random.default_rng(7)
    sweep = np.exp(r.uniform(-80, 80, 400)) * r.choice([-1, 1], 400)
    return np.concatenate([special, sweep]).astype(dtype)


def _ulps(got, want, dtype):
    """|got - want| in ulps of want (as dtype), where want is finite; inf/nan and signed zeros must match."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    zero = want == 0
    np.testing.assert_array_equal(np.signbit(got[zero & fin]), np.signbit(want[zero & fin]))
    with np.errstate(over="ignore"):  # the spacing at the largest float is inf's distance
        spacing = np.spacing(np.abs(want[fin]).astype(dtype)).astype(np.float64)
    return np.max(np.abs(got[fin] - want[fin]) / spacing, initial=0.0)


# gc function, numpy's, arity; each checked against numpy (the reference: within an ulp of numpy's; compiled:
# within 1 ulp of the value in float64, rounded, so within ~1-2 ulp of numpy's). Compiled code flushes denormal
# results to 0, as documented; a denormal input to the C library's functions under DAZ gives what their branches
# make of it (float64 atan2(5e-324, 0) is pi/2, log2(5e-324) -1075), so the compiled check leaves those out
ELEMENTWISE = {
    "log2": (gc.log2, np.log2, 1), "log10": (gc.log10, np.log10, 1), "exp2": (gc.exp2, np.exp2, 1),
    "reciprocal": (gc.reciprocal, np.reciprocal, 1), "rsqrt": (gc.rsqrt, lambda v: v ** -0.5, 1),
    "trunc": (gc.trunc, np.trunc, 1), "arctan2": (gc.arctan2, np.arctan2, 2), "hypot": (gc.hypot, np.hypot, 2),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_numpys_elementwise_functions_at_edge_values_are_within_an_ulp(name, dtype):
    f, ref, arity = ELEMENTWISE[name]
    v = _edges(dtype)
    vals = [v, np.roll(v[::-1], 3)][:arity]
    if arity == 2:  # every pair of special values too
        k = 40
        a, b = np.meshgrid(v[:k], v[:k])
        vals = [np.concatenate([vals[0], a.ravel()]), np.concatenate([vals[1], b.ravel()])]
    xs = [gc.input(f"x{i}", ("N",), dtype) for i in range(arity)]
    out = f(*xs)
    env = {x.name: a for x, a in zip(xs, vals, strict=True)}
    with np.errstate(all="ignore"):
        want = ref(*vals)
        truth = ref(*(a.astype(np.float64) for a in vals)) if dtype == "float32" else want
        ref_got = gc.evaluate(out, env)
        assert ref_got.dtype == dtype
        assert _ulps(ref_got, want, dtype) <= 1.0  # the reference is numpy's own function or exact composition
        tiny = np.finfo(dtype).tiny
        normal = np.all([(np.abs(a) >= tiny) | (a == 0) | ~np.isfinite(a) for a in vals], axis=0)
        truth = np.where(np.abs(truth) < tiny, np.copysign(0, truth), truth)[normal]  # denormal results flushed
    got = gc.compile(out, cache=False, threads=2)({k: a[normal] for k, a in env.items()})
    assert got.dtype == dtype
    # float32 against the float64 truth: within an ulp (the C library in double, rounded once); float64: within
    # 1 ulp of numpy's (the same C library's function)
    with np.errstate(over="ignore"):  # beyond float32's range the truth rounds to inf, as the result must
        truth = truth.astype(dtype)
    assert _ulps(got, truth, dtype) <= 1.0, name
    if name in ("log2", "exp2"):  # exact at powers of 2, as numpy's
        p = np.array([0.125, 1.0, 2.0, 1024.0, 2.0 ** 100] if name == "log2" else [-3.0, 0.0, 1.0, 10.0, 100.0], dtype)
        xs1 = gc.input("p", (5,), dtype)
        for g in (gc.evaluate(f(xs1), {"p": p}), gc.compile(f(xs1), cache=False)({"p": p})):
            np.testing.assert_array_equal(g, ref(p))


@pytest.mark.parametrize("name", ["log2", "log10", "exp2", "reciprocal", "rsqrt", "arctan2", "hypot"])
def test_numpys_elementwise_functions_differentiate_twice_and_promote_ints_as_exp(name):
    """First and second derivatives by finite differences (float64, away from the poles and the origin); int inputs
    as gc.exp's (int32 as float32), except reciprocal, whose numpy int result is an int (refused)."""
    f, _, arity = ELEMENTWISE[name]
    r = np.random.default_rng(1)
    xs = [gc.input(f"x{i}", (6,), "float64") for i in range(arity)]
    vals = {x.name: r.uniform(0.5, 3, 6) * (r.choice([-1, 1], 6) if name in ("exp2", "arctan2") else 1) for x in xs}
    y = gc.sum(f(*xs) * r.normal(size=6))
    gc.check_grad(y, xs, vals)
    gs = gc.grad(y, xs)
    gc.check_grad(gc.sum(gs[0] * gs[-1]), xs, vals)
    ints = [gc.input(f"i{k}", (3,), "int32") for k in range(arity)]
    if name == "reciprocal":
        with pytest.raises(gc.DTypeError, match="reciprocal"):
            f(*ints)
    else:
        assert f(*ints).dtype == "float32" and gc.exp(ints[0]).dtype == "float32"


def test_trunc_keeps_ints_and_its_gradient_is_zero():
    i = gc.input("i", (3,), "int64")
    assert gc.trunc(i) is i and np.trunc(np.arange(3)).dtype == np.arange(3).dtype
    x = gc.input("x", (4,), "float64")
    np.testing.assert_array_equal(gc.evaluate(gc.grad(gc.sum(gc.trunc(x)), x), {"x": np.array([-1.5, 0.2, 3, 9])}),
                                  np.zeros(4))
