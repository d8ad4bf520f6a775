"""Every documented initializer form on `gc.nn.dense` and `gc.param`: a scheme name, a number,
gc.nn.Uniform(limit), gc.nn.Normal(std), an array and a function (rng, shape) -> array."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

W0 = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _check(name, values, init):
    v = values[name]
    assert v.dtype == np.float32 and v.shape == (4, 3)
    if isinstance(init, np.ndarray):
        np.testing.assert_array_equal(v, init)
    elif isinstance(init, (int, float)):
        assert np.all(v == np.float32(init))
    elif isinstance(init, gc.nn.Uniform):
        assert np.all(np.abs(v) <= init.limit) and np.unique(v).size == v.size
    elif isinstance(init, gc.nn.Normal):
        assert np.unique(v).size == v.size and np.all(np.abs(v) < 8 * init.std)
    elif callable(init):
        np.testing.assert_array_equal(v, np.full((4, 3), 0.25, np.float32))
    elif init == "zeros":
        assert np.all(v == 0)
    elif init == "ones":
        assert np.all(v == 1)
    else:
        assert np.unique(v).size == v.size


FORMS = ["he_normal", "he_uniform", "xavier_normal", "xavier_uniform", "zeros", "ones", 0.5, 2,
         gc.nn.Uniform(0.1), gc.nn.Normal(0.2), W0, lambda rng, shape: np.full(shape, 0.25)]


@pytest.mark.parametrize("k", range(len(FORMS)))
def test_dense_and_param_take_every_init_form(k):
    init = FORMS[k]
    x = gc.input("x", ("N", 4))
    out = gc.nn.dense(x, 3, init=init, name=f"d{k}")
    p = gc.param(f"p{k}", (4, 3), init=init)
    values = gc.nn.init_params([out, p], seed=7)
    _check(f"d{k}.W", values, init)
    _check(f"p{k}", values, init)
    assert np.all(values[f"d{k}.b"] == 0)  # bias_init defaults to zeros
    # the initial values reach the compiled function and the reference alike
    X = np.ones((2, 4), np.float32)
    fn = gc.compile(out)
    np.testing.assert_allclose(fn(dict(values, x=X)), gc.evaluate(out, dict(values, x=X)), rtol=1e-6)


def test_dense_array_init_shape_is_checked_and_like_weights_needs_a_scheme():
    x = gc.input("x", ("N", 4))
    with pytest.raises(gc.GraphcError, match=r"init array has shape \(3, 4\), the parameter \(4, 3\)"):
        gc.nn.dense(x, 3, init=W0.T.copy(), name="bad_shape")
    with pytest.raises(gc.GraphcError, match="like_weights"):
        gc.nn.dense(x, 3, init=W0, bias_init="like_weights", name="bad_like")
    out = gc.nn.dense(x, 3, init=W0, bias_init=np.full(3, 0.5, np.float32), name="arr_b")
    v = gc.nn.init_params(out, seed=0)
    np.testing.assert_array_equal(v["arr_b.W"], W0)
    np.testing.assert_array_equal(v["arr_b.b"], np.full(3, 0.5, np.float32))


@pytest.mark.parametrize("init, words", [
    (True, r"init=True is not an initializer"),
    (float("nan"), r"init=nan: a constant initial value must be finite"),
    (float("inf"), r"init=inf: a constant initial value must be finite"),
    (np.full((4, 3), np.nan, np.float32), r"the init array holds nan at index \(0, 0\)"),
])
def test_an_init_that_is_no_initializer_or_not_finite_is_refused_when_the_layer_is_built(init, words):
    """NaN initial values were accepted (all-NaN weights) while Normal(nan) was refused; init=True passed the
    build and failed in init_params with Python's 'bool object is not callable'."""
    x = gc.input("x", ("N", 4))
    with pytest.raises(gc.GraphcError, match=words):
        gc.nn.dense(x, 3, init=init, name="bad")


@pytest.mark.parametrize("penalty", [gc.nn.l1, gc.nn.l2])
def test_a_penalty_strength_is_a_finite_number_at_least_zero_or_a_scalar_tensor(penalty):
    W = gc.param("pen.W", (2, 2), init=1.0)
    values = gc.nn.init_params([W])
    for nu in (-1.0, float("nan"), "abc", True):
        with pytest.raises(gc.GraphcError, match=rf"{penalty.__name__}: nu must be a finite number >= 0"):
            penalty([W], nu)
    with pytest.raises(gc.GraphcError, match="nu must be a number or a float scalar tensor, got f32\\[2\\]"):
        penalty([W], gc.input("nu", (2,)))
    want = 0.25 * 4 if penalty is gc.nn.l2 else 0.5 * 4
    assert gc.evaluate(penalty([W], np.float32(0.5)), values) == pytest.approx(want)
    nu = gc.input("nu", ())
    assert gc.evaluate(penalty([W], nu), dict(values, nu=np.float32(0.5))) == pytest.approx(want)


@pytest.mark.parametrize("layer", ["conv2d", "conv1d"])
def test_conv_layers_take_every_initializer_form_as_dense_does(layer):
    """`init or default` replaced init=0.0 by He normal and failed on an array (its truth value)."""
    shape = (2, 5, 5, 3) if layer == "conv2d" else (2, 5, 3)
    x = gc.input("x", shape)
    k = (3, 3) if layer == "conv2d" else (3,)
    w_shape = (*k, 3, 4)
    values = np.arange(np.prod(w_shape), dtype=np.float32).reshape(w_shape)
    for init, want in ((0.0, np.zeros(w_shape, np.float32)), (values, values)):
        y = getattr(gc.nn, layer)(x, 4, 3, init=init, name=f"c{layer}")
        params = gc.nn.parameters(y)
        got = gc.nn.init_params(params, seed=0)[f"c{layer}.W"]
        np.testing.assert_array_equal(got, want)


def test_the_whole_seed_picks_the_initial_weights():
    """Only its low 32 bits did: seeds 0 and 2**32 drew the same weights. Seeds below 2**32 draw as before."""
    import zlib

    from graphc.ops.init import param_rng

    assert param_rng(0, "w").random() != param_rng(2**32, "w").random()
    assert param_rng(7, "w").random() == np.random.default_rng([7, zlib.crc32(b"w")]).random()
    w = gc.param("sw", (3, 4))
    a, b = (gc.nn.init_params([w], seed=s)["sw"] for s in (1, 2**32 + 1))
    assert not np.array_equal(a, b)


def test_init_params_takes_a_dict_of_params_and_refuses_a_seed_that_is_no_non_negative_int():
    """A dict of params (as gc.grad's wrt and gc.nn.l2 take) was an AttributeError ('str' object has no attribute
    'op'); seed=None a bare TypeError, -1 and 'a' bare ValueErrors, and 1.5 silently drew seed 1's values."""
    p = gc.param("sd", (3,), init="he_normal")
    want = gc.nn.init_params([p], seed=5)["sd"]
    np.testing.assert_array_equal(gc.nn.init_params({"weights": p}, seed=5)["sd"], want)
    np.testing.assert_array_equal(gc.nn.init_params(p, seed=np.int64(5))["sd"], want)
    gc.nn.init_params([p], seed=2**63 - 1)
    for bad in (None, -1, "a", 1.5, 1.0, True, 2**63, np.float64(1)):
        with pytest.raises(gc.GraphcError, match=r"init_params: seed must be an int in \[0, 2\*\*63\), got"):
            gc.nn.init_params([p], seed=bad)
    with pytest.raises(gc.GraphcError, match="pass an int"):
        gc.nn.init_params([p], seed=None)
    for bad in ("sd", 3, [p, "sd"]):
        with pytest.raises(gc.GraphcError, match="init_params: params_or_outputs must be"):
            gc.nn.init_params(bad)
