import numpy as np
import pytest

import graphc as gc


def test_mlp_builder_shapes_names_and_init():
    x = gc.input("x", ("N", 20))
    logits = gc.nn.mlp(x, [16, 8, 3], name="net")
    params = gc.nn.parameters(logits)
    assert [p.name for p in params] == ["net.0.W", "net.0.b", "net.1.W", "net.1.b", "net.2.W", "net.2.b"]
    assert logits.shape == (gc.dim("N"), 3)
    a = gc.nn.init_params(logits, seed=0)
    b = gc.nn.init_params(params, seed=0)
    c = gc.nn.init_params(params, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["net.0.W"], c["net.0.W"])
    assert np.all(a["net.0.b"] == 0)
    assert all(v.ctypes.data % 64 == 0 for v in a.values())  # compiled code reads and updates them in place


def test_he_and_xavier_scales():
    big = gc.param("he_big", (2000, 500), init="he_normal")
    xav = gc.param("xav_big", (2000, 500), init="xavier_uniform")
    v = gc.nn.init_params([big, xav], seed=3)
    assert v["he_big"].std() == pytest.approx(np.sqrt(2 / 2000), rel=0.02)
    lim = np.sqrt(6 / 2500)
    assert v["xav_big"].max() <= lim and v["xav_big"].min() >= -lim
    assert v["xav_big"].std() == pytest.approx(lim / np.sqrt(3), rel=0.02)
    assert v["he_big"].dtype == np.float32


def test_explicit_distributions_and_biases_like_the_weights():
    u = gc.param("u_big", (4000,), init=gc.nn.Uniform(0.25))
    n = gc.param("n_big", (4000,), init=gc.nn.Normal(2.0))
    v = gc.nn.init_params([u, n], seed=0)
    assert v["u_big"].max() <= 0.25 and v["u_big"].min() >= -0.25
    assert v["u_big"].std() == pytest.approx(0.25 / np.sqrt(3), rel=0.05)
    assert v["n_big"].std() == pytest.approx(2.0, rel=0.05)
    x = gc.input("x", ("N", 30))
    out = gc.nn.dense(x, 20, "tanh", name="lw", bias_init="like_weights")
    b = next(p for p in gc.nn.parameters(out) if p.name == "lw.b")
    assert b.meta["init"] == gc.nn.Uniform(float(np.sqrt(6 / 50)))  # Glorot uniform for tanh, fans (30, 20)
    zero = gc.nn.dense(x, 20, "tanh", name="lw")
    assert gc.nn.parameters(zero)[1].meta["init"] == "zeros" and zero is not out  # the init is identity
    s = gc.nn.init_params([gc.param("scalar_p", (), init=0.5)])["scalar_p"]
    assert s.shape == () and s == 0.5  # a 0-d parameter stays 0-d
    with pytest.raises(gc.GraphcError, match="limit must be a finite number"):
        gc.nn.Uniform(float("nan"))
    with pytest.raises(gc.GraphcError, match="like_weights"):
        gc.nn.dense(x, 2, init=lambda rng, s: np.zeros(s), bias_init="like_weights", name="fnb")


def test_param_redeclared_with_other_init_is_another_param():
    first = gc.param("p_twice", (2,), init="zeros")
    second = gc.param("p_twice", (2,), init="ones")  # another parameter, not a conflict...
    assert first is not second and gc.param("p_twice", (2,), init="zeros") is first
    with pytest.raises(gc.GraphcError, match="two different tensors are named 'p_twice'"):
        gc.evaluate(first + second, {"p_twice": np.ones(2, np.float32)})  # ...until both meet in one graph
    with pytest.raises(gc.GraphcError, match="two different tensors are named 'p_twice'"):
        gc.nn.init_params(first + second)  # one value by name for two parameters: refused here too
    with pytest.raises(gc.GraphcError, match="concrete"):
        gc.param("p_sym", ("N", 2))
    with pytest.raises(gc.GraphcError, match="unknown init"):
        gc.param("p_bad", (2,), init="glorot")


def _vals(**kw):
    return {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v) for k, v in kw.items()}


def test_losses_match_their_formulas():
    rng = np.random.default_rng(0)
    pred, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    p = gc.input("p", ("N", 2), "float64")
    t = gc.input("t", ("N", 2), "float64")
    assert gc.evaluate(gc.nn.mse(p, t), _vals(p=pred, t=y)) == pytest.approx(np.mean((pred - y) ** 2))
    f = rng.normal(size=5) * 3
    yb = rng.integers(0, 2, 5)
    fi = gc.input("f", ("N",), "float64")
    yi = gc.input("yb", ("N",), "int32")
    want = np.mean(-np.log(1 / (1 + np.exp(-(2 * yb - 1) * f))))
    assert gc.evaluate(gc.nn.binary_cross_entropy(fi, yi), _vals(f=f, yb=yb)) == pytest.approx(want)
    # (N, 1) predictions against (N,) targets are matched, not broadcast to (N, N)
    p1 = gc.input("p1", ("N", 1), "float64")
    t1 = gc.input("t1", ("N",), "float64")
    assert gc.evaluate(gc.nn.mse(p1, t1), _vals(p1=pred[:, :1], t1=y[:, 0])) == pytest.approx(
        np.mean((pred[:, 0] - y[:, 0]) ** 2))
    with pytest.raises(gc.ShapeError, match="predictions"):
        gc.nn.mse(p, t1)
    with pytest.raises(gc.DTypeError):
        gc.nn.softmax_cross_entropy(p, t1)


def test_penalties():
    w1 = gc.param("pen.W1", (2, 2))
    w2 = gc.param("pen.W2", (3,))
    v = {"pen.W1": np.array([[1.0, -2.0], [0.5, 0.0]]), "pen.W2": np.array([3.0, -1.0, 0.0])}
    l2 = gc.evaluate(gc.nn.l2([w1, w2], 0.1), v)
    l1 = gc.evaluate(gc.nn.l1([w1, w2], 0.1), v)
    assert l2 == pytest.approx(0.05 * (1 + 4 + 0.25 + 9 + 1))
    assert l1 == pytest.approx(0.1 * (1 + 2 + 0.5 + 3 + 1))
    g1 = gc.evaluate(gc.grad(gc.nn.l1([w1, w2], 0.1), w1), v)
    np.testing.assert_allclose(g1, 0.1 * np.sign(v["pen.W1"]))  # sign subgradient, 0 at 0
    g2 = gc.evaluate(gc.grad(gc.nn.l2([w1, w2], 0.1), w2), v)
    np.testing.assert_allclose(g2, 0.1 * v["pen.W2"])


def test_dense_errors():
    with pytest.raises(gc.GraphcError, match=r"\(batch, features\)"):
        gc.nn.dense(gc.input("x0", ()), 5)
    with pytest.raises(gc.GraphcError, match="activation"):
        gc.nn.dense(gc.input("x2", (2, 3)), 5, activation="swishy")


def test_dense_applies_to_the_last_axis_of_any_rank():
    """(T, N, F) -> (T, N, units), as Keras' Dense and PyTorch's Linear: the same parameters and values as the
    2-D layer on the rows, one product (T*N rows) in the graph; gradients by finite differences; compiled."""
    xs = gc.input("xs", (3, "N", 4), "float64")
    out = gc.nn.dense(xs, 5, "tanh", name="per_step", bias_init="like_weights")
    assert out.shape == (3, gc.dim("N"), 5)
    products = [n for n in gc.topo_order(out) if n.op.name == "matmul"]
    assert len(products) == 1 and products[0].inputs[0].shape == (3 * gc.dim("N"), 4)
    params = gc.nn.parameters(out)
    assert [p.name for p in params] == ["per_step.W", "per_step.b"]
    vals = dict(gc.nn.init_params(params, seed=0), xs=np.random.default_rng(0).normal(size=(3, 2, 4)))
    want = np.tanh(vals["xs"] @ vals["per_step.W"] + vals["per_step.b"])
    np.testing.assert_allclose(gc.evaluate(out, vals), want, rtol=1e-12)
    loss = gc.sum(out * out)
    gc.check_grad(loss, [xs, *params], vals)
    np.testing.assert_allclose(gc.compile(out)(vals), want, rtol=1e-12)
    with pytest.raises(gc.GraphcError, match=r"\(batch, features\) or \(\.\.\., features\)"):
        gc.nn.dense(gc.input("v", (4,)), 2, name="one_d")


@pytest.mark.parametrize("axis, feat", [(-1, (6,)), ((1, 2), (4, 6))])
def test_layer_norm_matches_pytorch_compiles_and_differentiates(axis, feat):
    from pytorch_reference import layer_norm  # nn.LayerNorm in numpy, checked against torch elsewhere

    rng = np.random.default_rng(0)
    x = gc.input("x", ("N", 4, 6), "float64")
    y = gc.nn.layer_norm(x, axis=axis, name="ln")
    assert [p.name for p in gc.nn.parameters(y)] == ["ln.gamma", "ln.beta"]
    weight, bias = rng.normal(size=feat), rng.normal(size=feat)  # nn.LayerNorm(feat)'s
    X = rng.normal(size=(3, 4, 6)) * 3 + 1
    vals = {"x": X, "ln.gamma": weight, "ln.beta": bias}
    want = layer_norm(X, weight, bias)
    np.testing.assert_allclose(gc.evaluate(y, vals), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gc.compile(y, cache=False)(vals), want, rtol=1e-12, atol=1e-12)
    gc.check_grad(gc.sum(y * rng.normal(size=(4, 6))), [x, *gc.nn.parameters(y)], vals)
    init = gc.nn.init_params(gc.nn.parameters(y))
    assert np.all(init["ln.gamma"] == 1) and np.all(init["ln.beta"] == 0)


def test_layer_norm_refuses_what_it_cannot_normalize():
    x = gc.input("x", ("N", 4), "float32")
    for kw, words in (({"axis": 0}, "trailing axes of known size"), ({"axis": 2}, "axis must be an axis"),
                      ({"eps": 0}, "eps must be a positive number")):
        with pytest.raises(gc.GraphcError, match=words):
            gc.nn.layer_norm(x, **kw)
    with pytest.raises(gc.GraphcError, match="needs a float tensor"):
        gc.nn.layer_norm(gc.input("i", ("N", 4), "int32"))
    assert gc.nn.parameters(gc.nn.layer_norm(x, scale=False, center=False)) == []
