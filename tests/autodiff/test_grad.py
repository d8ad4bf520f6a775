import collections
import sys

import numpy as np
import pytest
import sympy
from cases import mlp_like
from hypothesis import given, settings

import graphc as gc
from graphc.autodiff.check import check_grad, numeric_grad


def _mlp_loss(depth: int, width: int = 4):
    x = gc.input("x", ("N", width))
    labels = gc.input("labels", ("N",), "int32")
    h = x
    for i in range(depth):
        h = gc.nn.dense(h, width, "tanh", name=f"lin{depth}_{i}")
    loss = gc.nn.softmax_cross_entropy(h, labels)
    return loss, gc.nn.parameters(loss)


def test_node_count_grows_linearly_with_depth():
    counts = []
    for depth in range(1, 9):
        loss, params = _mlp_loss(depth)
        grads = gc.grad(loss, params)
        counts.append(len(gc.topo_order([loss, *grads])))
    steps = np.diff(counts)
    assert len(set(steps.tolist())) == 1, counts  # a constant number of nodes per layer
    assert steps[0] < 30


def test_naive_symbolic_expansion_grows_exponentially():
    """The same derivative by sympy on the expanded scalar expression: each layer of a width-2 net uses every
    unit of the layer below, so the expression tree doubles per layer."""
    sizes = []
    for depth in range(1, 6):
        h = list(sympy.symbols("x0:2"))
        first = None
        for layer in range(depth):
            w = sympy.symbols(f"w{layer}_0:4")
            first = first or w[0]
            h = [sympy.tanh(w[0] * h[0] + w[1] * h[1]), sympy.tanh(w[2] * h[0] + w[3] * h[1])]
        d = sympy.diff(h[0] + h[1], first)
        sizes.append(sympy.count_ops(d, visual=False))
    ratios = [b / a for a, b in zip(sizes, sizes[1:], strict=False)]
    assert all(r > 1.8 for r in ratios[1:]), sizes


def test_backprop_reuses_forward_values():
    loss, params = _mlp_loss(3)
    forward = set(map(id, gc.topo_order(loss)))
    grads = gc.grad(loss, params)
    both = gc.topo_order([loss, *grads])
    reused = [n for n in both if id(n) in forward]
    assert len(reused) == len(forward)  # every forward node is shared, none recomputed
    tanh_nodes = [n for n in both if n.op.name == "tanh"]
    assert len(tanh_nodes) == 3  # tanh' = 1 - y^2 reads the forward tanh, no new tanh is built


def test_gradient_graph_is_a_normal_graph():
    loss, params = _mlp_loss(2)
    g = gc.grad(loss, params[0])
    assert "grad of matmul" in gc.to_text(g)
    rng = np.random.default_rng(0)
    vals = gc.nn.init_params(params, seed=1)
    vals.update(x=rng.normal(size=(5, 4)), labels=np.array([0, 1, 2, 3, 1]))
    check_grad(loss, params, vals, rtol=1e-5, atol=1e-8)


def test_second_derivative_of_elementwise_chain():
    x = gc.input("x", (7,), "float64")
    y = gc.sum(gc.tanh(gc.sigmoid(x) * x) + gc.softplus(x) ** 2)
    gx = gc.grad(y, x)
    v = np.linspace(-2, 2, 7)
    # d/dx of each component of gx, by finite differences of the first derivative
    h = 1e-5
    num = (gc.evaluate(gx, {"x": v + h}) - gc.evaluate(gx, {"x": v - h})) / (2 * h)
    second = gc.grad(gc.sum(gx), x)  # the Hessian is diagonal here, so this is its diagonal
    np.testing.assert_allclose(gc.evaluate(second, {"x": v}), num, rtol=1e-6, atol=1e-8)


def test_hessian_vector_product_of_small_mlp():
    x = gc.input("x", ("N", 3), "float64")
    y = gc.input("y", ("N",), "int32")
    logits = gc.nn.mlp(x, [4, 3], activation="tanh", name="hvp")
    w = gc.nn.parameters(logits)[0]
    loss = gc.nn.softmax_cross_entropy(logits, y)
    v = gc.input("v", w.shape, "float64")
    hv = gc.grad(gc.sum(gc.grad(loss, w) * v), w)
    rng = np.random.default_rng(3)
    vals = {k: a.astype(np.float64) for k, a in gc.nn.init_params(logits, seed=0).items()}
    vals.update(x=rng.normal(size=(6, 3)), y=rng.integers(0, 3, 6), v=rng.normal(size=w.shape))
    h = 1e-5
    gw = gc.grad(loss, w)
    plus = dict(vals, **{w.name: vals[w.name] + h * vals["v"]})
    minus = dict(vals, **{w.name: vals[w.name] - h * vals["v"]})
    num = (gc.evaluate(gw, plus, allow_unused=True) - gc.evaluate(gw, minus, allow_unused=True)) / (2 * h)
    np.testing.assert_allclose(gc.evaluate(hv, vals), num, rtol=1e-6, atol=1e-9)


def test_vjp_with_seed():
    x = gc.input("x", (3,), "float64")
    y = gc.exp(x) * 2.0
    seed = np.array([1.0, -2.0, 0.5])
    g = gc.grad(y, x, seed=seed)
    v = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(gc.evaluate(g, {"x": v}), seed * 2 * np.exp(v))


def test_grad_of_non_scalar_needs_a_seed():
    x = gc.input("x", ("N", 3))
    y = gc.exp(x)
    with pytest.raises(gc.GradError) as e:
        gc.grad(y, x)
    line = sys._getframe().f_lineno - 1
    msg = str(e.value)
    assert "exp" in msg and "f32[N,3]" in msg and "seed" in msg and f"test_grad.py:{line}" in msg


def test_grad_wrt_unrelated_tensor_is_zeros():
    x = gc.input("x", ("N", 3))
    other = gc.param("unrelated", (2, 2))
    loss = gc.sum(x * x)
    gx, go = gc.grad(loss, [x, gc.input("z", ("N", 3))]), gc.grad(loss, other)
    vals = {"x": np.ones((4, 3), np.float32)}
    np.testing.assert_array_equal(gc.evaluate(go, {"unrelated": np.ones((2, 2), np.float32)}), np.zeros((2, 2)))
    got = gc.evaluate(gx, dict(vals, z=np.ones((4, 3), np.float32)))
    np.testing.assert_array_equal(got[1], np.zeros((4, 3)))


def test_grad_errors():
    x = gc.input("x", (3,))
    i = gc.input("i", (3,), "int32")
    with pytest.raises(gc.DTypeError, match="integer"):
        gc.grad(gc.sum(x * i), i)
    with pytest.raises(gc.GradError):
        gc.grad(gc.sum(x), "x")
    with pytest.raises(gc.ShapeError):
        gc.grad(gc.exp(x), x, seed=np.ones(4))


def test_adjoints_of_reused_nodes_are_summed():
    x = gc.input("x", (), "float64")
    y = x * x * x + gc.exp(x) * x  # x used five times
    g = gc.grad(y, x)
    assert gc.evaluate(g, {"x": np.float64(1.5)}) == pytest.approx(3 * 1.5**2 + np.exp(1.5) * 2.5)


@settings(max_examples=60)
@given(case=mlp_like("float64"))
def test_random_composite_graphs_match_finite_differences(case):
    loss, params, vals = case
    check_grad(loss, params, vals, rtol=2e-5, atol=1e-7)


def test_numeric_grad_helper_agrees_with_analytic():
    x = gc.input("x", (2,), "float64")
    y = gc.sum(x**3)
    v = np.array([0.5, -1.0])
    np.testing.assert_allclose(numeric_grad(y, x, {"x": v}), 3 * v**2, rtol=1e-7)


def test_jacobian_and_hessian_match_finite_differences_and_their_closed_forms():
    """gc.jacobian stacks one vector-Jacobian product per output element (shape y.shape + wrt.shape, for each
    of several wrt); gc.hessian is the Jacobian of the gradient: a quadratic form's is A + Aᵀ; compiled alike."""
    rng = np.random.default_rng(0)
    x, W = gc.input("x", (4,), "float64"), gc.input("W", (3, 4), "float64")
    X, Wv = rng.normal(size=4), rng.normal(size=(3, 4))
    y = gc.tanh(W @ x)
    Jx, JW = gc.jacobian(y, [x, W])
    assert Jx.shape == (3, 4) and JW.shape == (3, 3, 4)
    jx, jw = gc.evaluate([Jx, JW], {"x": X, "W": Wv})
    np.testing.assert_allclose(jx, (1 - np.tanh(Wv @ X) ** 2)[:, None] * Wv, rtol=1e-12)
    eps = 1e-6
    for i in range(3):
        for j in range(4):
            d = np.zeros((3, 4))
            d[i, j] = eps
            num = (np.tanh((Wv + d) @ X) - np.tanh((Wv - d) @ X)) / (2 * eps)
            np.testing.assert_allclose(jw[:, i, j], num, rtol=1e-6, atol=1e-9)
    A = rng.normal(size=(4, 4))
    f = gc.sum(x * (gc.constant(A) @ x)) + gc.sum(gc.sin(x))
    H = gc.hessian(f, x)
    want = A + A.T - np.diag(np.sin(X))
    np.testing.assert_allclose(gc.evaluate(H, {"x": X}), want, rtol=1e-12)
    np.testing.assert_allclose(gc.compile(H, cache=False)({"x": X}), want, rtol=1e-12)
    # a list of wrt: every block, the cross terms included (jax.hessian with argnums=(0, 1))
    w = gc.input("w", (3,), "float64")
    B = rng.normal(size=(4, 3))
    Wv = rng.normal(size=3)
    f2 = gc.sum(x * (gc.constant(B) @ w)) ** 2 + gc.sum(w ** 3)
    blocks = gc.hessian(f2, [x, w])
    assert [[b.shape for b in row] for row in blocks] == [[(4, 4), (4, 3)], [(3, 4), (3, 3)]]
    bw = B @ Wv
    s = X @ bw
    want = [[2 * np.outer(bw, bw), 2 * (np.outer(bw, X @ B) + s * B)],
            [2 * (np.outer(X @ B, bw) + s * B.T), 2 * np.outer(X @ B, X @ B) + np.diag(6 * Wv)]]
    got = gc.evaluate([b for row in blocks for b in row], {"x": X, "w": Wv})
    for g, wnt in zip(got, [b for row in want for b in row], strict=True):
        np.testing.assert_allclose(g, wnt, rtol=1e-10)
    with pytest.raises(gc.GradError, match="has a symbolic dim"):
        gc.jacobian(gc.input("b", ("N",), "float64") * 2.0, x)
    with pytest.raises(gc.GradError, match="must be a scalar"):
        gc.hessian(y, x)


def test_second_derivatives_of_a_product_through_zeros():
    """d²prod/dx_i dx_k is the product of the others but i and k, zeros included: the zero-count gradient rule was
    exact only to first order (row 0 of the Hessian at x = [0, 3, -3, 2] right, column 0 all zeros). Small reduced
    sizes now take the exclusive products by masking, which differentiate again exactly (as jax's)."""
    def exact_hessian(v):
        n = len(v)
        return np.array([[0.0 if i == k else np.prod([v[j] for j in range(n) if j not in (i, k)]) for k in range(n)]
                         for i in range(n)])

    x = gc.input("x", (4,), "float64")
    H = gc.hessian(gc.prod(x), x)
    fn = gc.compile(H, cache=False)
    for v in ([0.0, 3.0, -3.0, 2.0], [1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.5, 2.0, -1.5, 3.0]):
        v = np.array(v)
        np.testing.assert_allclose(gc.evaluate(H, {"x": v}), exact_hessian(v), atol=1e-15)
        np.testing.assert_allclose(fn(x=v), exact_hessian(v), atol=1e-15)
    # over some axes of a matrix, rows holding zeros: the gradient of the gradient against finite differences
    m = gc.input("m", (3, 2, 4), "float64")
    y = gc.sum(gc.prod(m, axis=(0, 2)) ** 2)
    vm = np.random.default_rng(0).normal(size=(3, 2, 4))
    vm[0, 0, 1] = vm[2, 0, 3] = 0.0
    vm[1, 1, 2] = 0.0
    g = gc.grad(y, m)
    check_grad(gc.sum(g * g), [m], {"m": vm}, rtol=1e-6, atol=1e-9)
    # beyond the masking size, the zero-count rule: the first derivative stays exact
    big = gc.input("big", (40,), "float64")
    vb = np.linspace(0.9, 1.1, 40)
    vb[7] = 0.0
    gb = gc.evaluate(gc.grad(gc.prod(big), big), {"big": vb})
    assert gb[7] == np.prod(np.delete(vb, 7)) and np.all(np.delete(gb, 7) == 0.0)


def test_hessian_of_a_power_is_symmetric_and_finite_where_the_base_is_zero():
    """d/db a**b is 0 at a = 0 by its where(a = 0, 0, a**b log a); differentiating that where again put 0 * log(0)
    into the branch not taken, so d/da d/db was nan where d/db d/da is 0 (jax.hessian: [[2, 0], [0, 0]] at a = 0,
    b = 2). The log now reads 1 where a = 0. For b > 1 the mixed derivative a**(b-1) (1 + b log a) tends to 0."""
    a = gc.input("a", (), "float64")
    b = gc.input("b", (), "float64")
    H = gc.hessian(a ** b, [a, b])
    flat = [H[0][0], H[0][1], H[1][0], H[1][1]]
    fn = gc.compile(flat, cache=False)

    def exact(av, bv):
        if av == 0.0:
            return [bv * (bv - 1) * 0.0 ** (bv - 2), 0.0, 0.0, 0.0]
        la = np.log(av)
        return [bv * (bv - 1) * av ** (bv - 2), av ** (bv - 1) * (1 + bv * la), av ** (bv - 1) * (1 + bv * la),
                av ** bv * la * la]

    for av, bv in [(0.0, 2.0), (0.0, 3.0), (0.0, 2.5), (2.0, 3.0), (0.5, 2.5), (1e-300, 2.0)]:
        vals = {"a": av, "b": bv}
        for got in (gc.evaluate(flat, vals), fn(vals)):
            got = np.array(got, dtype=float)
            assert np.all(np.isfinite(got)) and (got[1] == got[2] or av != 0.0), (av, bv, got)
            # at a = 1e-300, a**b / a underflows in the second form (as in jax): ~1e-300 apart
            np.testing.assert_allclose(got, exact(av, bv), rtol=1e-12, atol=1e-299)


def test_errors_name_argmax_not_its_inner_min_and_numeric_grad_refuses_an_int_wrt_as_grad_does():
    x = gc.input("x", (3, 4), "float64")
    with pytest.raises(gc.DTypeError, match=r"grad: y \(argmax: i64\[3\], from argmax at test_grad.py:\d+\) is not a "
                                            "float tensor: an integer or bool result has no gradient"):
        gc.jacobian(gc.argmax(x, axis=1), x)
    assert "(argmin)" in gc.to_text(gc.argmin(x, axis=0)) and "argmax: i64[1,1]" in repr(gc.argmax(x, keepdims=True))
    # numeric_grad made the int value float64 itself and then blamed it ("has dtype float64; pass integers")
    i = gc.input("i", (3,), "int32")
    y = gc.sum(x[0, :3] * gc.cast(i, "float64"))
    vals = {"x": np.ones((3, 4)), "i": np.array([1, 2, 3], np.int32)}
    with pytest.raises(gc.DTypeError, match=r"numeric_grad: cannot differentiate with respect to i: i32\[3\], an "
                                            r"integer/bool tensor declared at test_grad.py:\d+: a derivative needs"):
        numeric_grad(y, i, vals)
    with pytest.raises(gc.DTypeError, match=r"numeric_grad: y \(argmax: i64\[\], .*\) is not a float tensor"):
        numeric_grad(gc.argmax(x), x, vals)


def test_jacobian_hessian_and_check_grad_take_a_dict_as_grad_does_and_numeric_grad_checks_its_arguments():
    """A dict of tensors for wrt failed in all three with grad's 'wrt must hold tensors, got str' (the keys)."""
    a = gc.input("a", (3,), "float64")
    b = gc.input("b", (2,), "float64")
    f = gc.sum(a * a) * gc.sum(b)
    v = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([0.5, -1.0])}
    J = gc.jacobian(a * 2.0, {"x": a, "y": b})
    assert set(J) == {"x", "y"} and J["x"].shape == (3, 3) and J["y"].shape == (3, 2)
    np.testing.assert_array_equal(gc.evaluate(J["x"], v), 2 * np.eye(3))
    H = gc.hessian(f, {"a": a, "b": b})
    Hab = gc.evaluate(H["a"]["b"], v)
    np.testing.assert_allclose(Hab, np.tile((2 * v["a"])[:, None], (1, 2)))
    np.testing.assert_allclose(gc.evaluate(H["b"]["a"], v), Hab.T)
    check_grad(f, {"first": a, "second": b}, v)
    for call, words in [(lambda: numeric_grad(a * 2.0, a, v), r"numeric_grad: y must be a scalar tensor, got mul"),
                        (lambda: numeric_grad(f, a, v, eps=0), "eps must be a finite number > 0, got 0"),
                        (lambda: numeric_grad(f, [a], v), "wrt must be one tensor"),
                        (lambda: gc.jacobian(f, {"a": "x"}), "jacobian: wrt must be a tensor, or a list or dict of "
                                                             "tensors, got str")]:
        with pytest.raises(gc.GradError, match=words):
            call()


def test_a_name_with_a_control_character_is_refused():
    for bad in ("a\nb", "x\t", "\x1b[31mred"):
        with pytest.raises(gc.GraphcError, match="holds an unprintable character"):
            gc.input(bad, (2,))
    assert gc.param("données.W", (2,)).name == "données.W"


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("T", [3, "T"])
def test_a_matrix_shared_by_a_batch_gets_one_product_over_all_rows_as_its_gradient(T, tb):
    """(B, T, D) @ (D, F): dW was B batched products and a sum of their B copies (1.44x the 2-D form's time)."""
    rng = np.random.default_rng(0)
    x = gc.input("x", (2, T, 4), "float64")
    w = gc.input("w", (5, 4) if tb else (4, 5), "float64")
    loss = gc.sum(gc.tanh(gc.matmul(x, w, tb=tb)) ** 2)
    v = {"x": rng.normal(size=(2, 3, 4)), "w": rng.normal(size=(5, 4) if tb else (4, 5))}
    check_grad(loss, [x, w], v)
    gw = gc.grad(loss, w)
    assert gw.op.name == "matmul" and gw.inputs[0].ndim == 2 and gw.inputs[1].ndim == 2
    np.testing.assert_allclose(gc.compile(gw, cache=False)(v), gc.evaluate(gw, v), rtol=1e-12, atol=1e-14)


def test_the_gradient_of_a_tensor_the_loss_never_reads_needs_no_value_for_it():
    """Iterating over all of a model's parameters, a PyTorch user asks for the gradient of one the loss does not
    use: zeros of its shape, and (its shape being static) evaluating or compiling them asks for no value of it."""
    x = gc.input("x", (2,))
    unused = gc.param("unused", (3, 2))
    gx, gu = gc.grad(gc.sum(x * x), [x, unused])
    v = {"x": np.array([1.0, -2.0], np.float32)}
    for got in (gc.evaluate([gx, gu], v), gc.compile([gx, gu])(v)):
        np.testing.assert_array_equal(got[0], [2.0, -4.0])
        np.testing.assert_array_equal(got[1], np.zeros((3, 2), np.float32))


def test_nested_outputs_come_back_nested():
    """gc.hessian(f, [a, b]) is a list of lists (JAX's nesting): gc.evaluate and gc.compile take nested lists,
    tuples and dicts of tensors and give the arrays back in the same nesting (a top-level tuple as a list)."""
    a, b = gc.input("a", (2,), "float64"), gc.input("b", (2,), "float64")
    H = gc.hessian(gc.sum(a * a * b), [a, b])
    v = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, -1.0])}
    want = [[np.diag(2 * v["b"]), np.diag(2 * v["a"])], [np.diag(2 * v["a"]), np.zeros((2, 2))]]
    for got in (gc.evaluate(H, v), gc.compile(H)(v)):
        assert isinstance(got, list) and all(isinstance(r, list) and len(r) == 2 for r in got)
        for i in range(2):
            for j in range(2):
                np.testing.assert_allclose(got[i][j], want[i][j])
    form = {"h": [a, (b, a * 2.0)], "s": gc.sum(b)}
    got = gc.compile(form)(v)
    assert set(got) == {"h", "s"} and isinstance(got["h"][1], tuple)
    np.testing.assert_array_equal(got["h"][1][1], 2 * v["a"])
    with pytest.raises(gc.GraphcError, match=r"must be tensors \(or lists, tuples or dicts of them\), got int"):
        gc.evaluate([a, [b, 3]], v)


def test_grad_jacobian_hessian_and_check_grad_take_wrt_nested_as_a_jax_pytree():
    """A JAX MLP's params [(W1, b1), (W2, b2)] or Flax's {"dense": {"W": W, "b": b}} were refused by grad ('wrt
    must hold tensors, got tuple'); the gradients now come in wrt's nesting (named tuples kept), compiled too."""
    Pair = collections.namedtuple("Pair", "W b")
    x = gc.input("x", (4, 3), "float64")
    W1, b1 = gc.input("W1", (3, 5), "float64"), gc.input("b1", (5,), "float64")
    W2, b2 = gc.input("W2", (5, 2), "float64"), gc.input("b2", (2,), "float64")
    loss = gc.sum((gc.tanh(x @ W1 + b1) @ W2 + b2) ** 2)
    r = np.random.default_rng(0)
    v = {k: r.standard_normal(t.shape) for k, t in dict(x=x, W1=W1, b1=b1, W2=W2, b2=b2).items()}
    flat = gc.evaluate(gc.grad(loss, [W1, b1, W2, b2]), v)
    g = gc.grad(loss, [(W1, b1), Pair(W2, b2)])
    assert isinstance(g, list) and type(g[0]) is tuple and isinstance(g[1], Pair)
    nested = gc.evaluate(g, v)
    assert isinstance(nested[1], Pair)
    for got, want in zip([*nested[0], *nested[1]], flat, strict=True):
        np.testing.assert_array_equal(got, want)
    d = gc.compile(gc.grad(loss, {"dense1": {"W": W1, "b": b1}, "dense2": {"W": W2, "b": b2}}), cache=False)(v)
    np.testing.assert_allclose(d["dense2"]["b"], flat[3], rtol=1e-12)
    H = gc.hessian(loss, {"a": (b1,), "b": b2})
    assert H["a"][0]["b"].shape == (5, 2) and H["b"]["a"][0].shape == (2, 5)
    np.testing.assert_allclose(gc.evaluate(H["a"][0]["b"], v), gc.evaluate(H["b"]["a"][0], v).T, rtol=1e-12)
    J = gc.jacobian(x @ W1, [(b1,), {"w": W1}])
    assert J[0][0].shape == (4, 5, 5) and J[1]["w"].shape == (4, 5, 3, 5)
    check_grad(loss, [(W1, b1), {"second": [W2, b2]}], v)
    with pytest.raises(gc.GradError, match=r"grad: wrt must be a tensor, or a list or dict of tensors, got str in "
                                           r"it \(lists, tuples and dicts of tensors may nest\)"):
        gc.grad(loss, [(W1, "b1")])
