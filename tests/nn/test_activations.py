"""The ReLU family beyond relu (leaky_relu, elu, gelu, silu): numpy's formulas, PyTorch's values and gradients at
the kinks, finite differences, compiled equal to the reference, no NaN from a branch not taken, and usable as a
layer's activation by name (the trainer, the CLI)."""

import math

import numpy as np
import pytest

import graphc as gc
from graphc.autodiff.check import check_grad

_erf = np.vectorize(math.erf)

FORMULAS = {  # numpy, in float64: what each computes
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "log_sigmoid": lambda x: -np.logaddexp(0, -x),  # jax.nn.log_sigmoid, which graphc lacked
    # jax.nn's others
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "hard_sigmoid": lambda x: np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "hard_swish": lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0))),
    "celu": lambda x: np.maximum(x, 0) + 0.5 * np.expm1(np.minimum(x, 0) / 0.5),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "glu": lambda x: x / (1 + np.exp(1 - 2 * x)),  # of the pairs (x, 2x - 1): x·sigmoid(2x - 1)
    "standardize": lambda x: (x - x.mean()) / np.sqrt(x.var() + 1e-5),
}


def act(name):
    if name == "gelu_tanh":
        return lambda x: gc.nn.gelu(x, approximate=True)
    if name == "celu":
        return lambda x: gc.nn.celu(x, 0.5)
    if name == "glu":
        return lambda x: gc.nn.glu(gc.stack([x, x * 2.0 - 1.0], axis=-1))[:, 0]
    return getattr(gc.nn, name)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_values_gradients_and_compiled(name):
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(size=40) * 3, [-100.0, -20.0, -1e-3, 1e-3, 20.0, 100.0]])
    x = gc.input("x", ("N",), "float64")
    y = act(name)(x)
    np.testing.assert_allclose(gc.evaluate(y, {"x": v}), FORMULAS[name](v), rtol=1e-12, atol=1e-300)
    # (atol: central differences lose ~1e-8 where gelu's tanh form cancels, at x = -3; the analytic value agrees
    # with mpmath's there to 1e-16)
    check_grad(gc.sum(y * y), [x], {"x": v[:40]}, rtol=1e-6, atol=1e-7)
    g = gc.grad(gc.sum(y), x)
    fn = gc.compile([y, g], cache=False)
    got_y, got_g = fn(x=v)
    ref_y, ref_g = gc.evaluate([y, g], {"x": v})
    np.testing.assert_allclose(got_y, ref_y, rtol=1e-12, atol=1e-300)
    # (standardize's gradient of the sum is 0 but for rounding, which differs in compiled code's sum order)
    np.testing.assert_allclose(got_g, ref_g, rtol=1e-12, atol=1e-15 if name == "standardize" else 1e-300)
    assert np.all(np.isfinite(got_g)), "a gradient through the branch not taken must not be NaN"
    # float32 too (the compiled layer's dtype): within float32 rounding of the float64 formula
    x32 = gc.input("x32", ("N",))
    y32 = gc.compile(act(name)(x32), cache=False)(x32=v.astype(np.float32))
    np.testing.assert_allclose(y32, FORMULAS[name](v.astype(np.float32).astype(np.float64)), rtol=3e-6, atol=1e-7)


def test_pytorchs_values_at_the_kinks_and_the_tails():
    """torch.nn.functional at 0 (values and gradients, from torch 2.13): leaky_relu'(0) = slope, elu'(0) = alpha,
    gelu'(0) = silu'(0) = 0.5; elu(-inf-ish) = -alpha; gelu(-10) underflows to -0.0 (torch: -0.)."""
    x = gc.input("x", (5,), "float64")
    v = np.array([0.0, -0.0, -50.0, 1e3, -10.0])
    cases = {  # name -> (values, gradients) as torch gives them
        "leaky_relu": (lambda t: gc.nn.leaky_relu(t, 0.2), [0, 0, -10, 1e3, -2], [0.2, 0.2, 0.2, 1, 0.2]),
        "elu": (lambda t: gc.nn.elu(t, 1.5), [0, 0, -1.5, 1e3, -1.5 * -np.expm1(-10)],
                [1.5, 1.5, 0.0, 1, 1.5 * np.exp(-10)]),  # torch: 2.9e-22 at -50; graphc's expm1' = expm1 + 1
        "silu": (gc.nn.silu, [0, 0, -50 / (1 + np.exp(50)), 1e3, -10 / (1 + np.exp(10))], None),
        "gelu": (gc.nn.gelu, [0, 0, 0, 1e3, None], None),
    }
    for name, (f, want_y, want_g) in cases.items():
        y, g = gc.evaluate([f(x), gc.grad(gc.sum(f(x)), x)], {"x": v})
        for i, w in enumerate(want_y):
            if w is not None:
                np.testing.assert_allclose(y[i], w, rtol=1e-12, atol=1e-300, err_msg=f"{name}({v[i]})")
        if want_g is not None:
            np.testing.assert_allclose(g, want_g, rtol=1e-12, atol=1e-21, err_msg=name)
        assert g[0] == 0.5 or name in ("leaky_relu", "elu")
        assert np.all(np.isfinite(g)), name


def test_gradients_at_the_kinks_follow_pytorch():
    """The clamps' gradients are 0 at their kinks and beyond, 1 (1/6) strictly inside (torch's hardtanh, relu6,
    hardsigmoid backward); hard_swish's is the product rule's there (0 at -3, 1 at 3; torch's one-sided -0.5, 1.5);
    selu'(0) = scale·alpha (elu's convention), celu'(0) = 1; at a NaN the gradient passes (relu's convention)."""
    x = gc.input("x", (9,), "float64")
    v = np.array([-3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 0.5, 7.0, np.nan])
    want = {"relu6": [0, 0, 0, 1, 1, 0, 1, 0, 1], "hard_tanh": [0, 0, 1, 0, 0, 0, 1, 0, 1],
            "hard_sigmoid": np.array([0, 1, 1, 1, 0, 0, 1, 0, 1]) / 6, "hard_swish": [0, 1 / 6, 0.5, 5 / 6, 1, 1,
                                                                                      2 / 3, 1, np.nan],
            "selu": [None, None, 1.0507009873554805 * 1.6732632423543772, 1.0507009873554805] + [None] * 5,
            "celu": [None, None, 1.0, 1.0] + [None] * 5}
    for name, w in want.items():
        g = gc.evaluate(gc.grad(gc.sum(getattr(gc.nn, name)(x)), x), {"x": v})
        keep = np.array([u is not None for u in w])
        np.testing.assert_allclose(g[keep], np.array(w, dtype=object)[keep].astype(float), rtol=1e-12, err_msg=name)


def test_arguments_are_checked():
    x = gc.input("x", (3,))
    here = __file__.rsplit("/", 1)[-1]
    for call, words in [(lambda: gc.nn.leaky_relu(x, "a"), "leaky_relu: negative_slope must be a finite number"),
                        (lambda: gc.nn.elu(x, float("nan")), "elu: alpha must be a finite number"),
                        (lambda: gc.nn.gelu(x, approximate="tanh"), "gelu: approximate must be True or False"),
                        (lambda: gc.nn.celu(x, 0.0), "celu: alpha must not be 0"),
                        (lambda: gc.nn.glu(x), "glu: axis -1 has length 3; it must be an even"),
                        (lambda: gc.nn.glu(x, axis=1), "glu: axis must be an int axis"),
                        (lambda: gc.nn.mish(gc.input("i", (3,), "int32")), "mish: needs a float tensor"),
                        (lambda: gc.nn.relu6(gc.input("i", (3,), "int32")), "relu6: needs a float tensor")]:
        with pytest.raises(gc.GraphcError, match=words) as e:
            call()
        assert here in str(e.value)


def test_activation_names_in_layers_and_training():
    """Each name is a layer activation (dense, mlp, conv, gc.fit) with He initialization, as relu."""
    for name in ("leaky_relu", "elu", "gelu", "silu", "swish", "relu6", "hard_tanh", "hard_sigmoid", "hard_swish",
                 "hard_silu", "selu", "celu", "mish", "softsign"):
        assert gc.nn.ACTIVATIONS[name] is getattr(gc.nn, name)
    assert gc.nn.hard_silu is gc.nn.hard_swish and gc.nn.soft_sign is gc.nn.softsign
    x = gc.input("x", ("N", 4))
    h = gc.nn.dense(x, 3, activation="gelu", name="d")
    v = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    w = gc.nn.init_params(gc.nn.parameters(h), seed=0)
    np.testing.assert_allclose(gc.evaluate(h, dict(w, x=v)),
                               FORMULAS["gelu"]((v @ w["d.W"] + w["d.b"]).astype(np.float64)), rtol=2e-6, atol=1e-7)
    for name in ("gelu", "silu"):
        r = gc.fit(data="digits", hidden=[32], activation=name, epochs=5, seed=0, progress=False)
        assert r.config.activation == name and r.metrics["test_accuracy"] > 0.9, (name, r.metrics["test_accuracy"])
