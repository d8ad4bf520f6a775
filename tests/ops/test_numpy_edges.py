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
    base = np.array([-7, -2, 0, -1, -0.0, 2, -2, -2, np.nan, 1, -0.5, -3, 1.1, -1.3, 0, 0, 3, -1], dtype)
    expo = np.array([2, 3, 0, 0, -1, 0.5, 0.5, np.inf, 0, np.nan, np.inf, -3, 70, 63, 2, -2, 1e9, 1e9 + 1], dtype)
    x, y = gc.input("x", (len(base),), dtype), gc.input("y", (len(base),), dtype)
    with np.errstate(all="ignore"):
        want = base ** expo
    for got in both(x ** y, x=base, y=expo):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=2e-6 if dtype == "float32" else 1e-13)
        exact = (np.abs(expo) < 8) & (expo == np.floor(expo))  # small integer exponents are exact, as numpy's (7 ** 2 = 49, not 48.999992)
        np.testing.assert_array_equal(got[exact & np.isfinite(want)], want[exact & np.isfinite(want)])


def test_the_gradient_of_a_power_with_a_negative_base_and_an_integer_exponent():
    x, y = gc.input("x", (4,), "float64"), gc.input("y", (4,), "float64")
    vx, vy = np.array([-1.5, -2.0, 0.7, -0.3]), np.array([3.0, 2.0, 1.7, 5.0])
    dx = gc.grad(gc.sum(x ** y), [x])[0]
    for got in both(dx, x=vx, y=vy):
        np.testing.assert_allclose(got, vy * vx ** (vy - 1), rtol=1e-12)
    gc.check_grad(gc.sum(x ** gc.stop_gradient(y)), [x], {"x": vx, "y": vy})
