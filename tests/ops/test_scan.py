"""gc.scan: the traced body, the reference loop, the reverse scan backprop builds, checkpointing, truncation,
second derivatives, and the errors a user can cause."""

import numpy as np
import pytest

import graphc as gc
from graphc.autodiff.check import check_grad
from graphc.ops.scan import SCAN


def _rnn_values(T=5, N=2, F=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"xs": rng.normal(size=(T, N, F)), "W": rng.normal(size=(F, H)), "U": 0.5 * rng.normal(size=(H, H)),
            "h0": rng.normal(size=(N, H))}


def _rnn(F=3, H=4, T="T", **kw):
    xs = gc.input("xs", (T, "N", F))
    W, U = gc.param("W", (F, H)), gc.param("U", (H, H))
    h0 = gc.input("h0", ("N", H))

    def step(h, x):
        h = gc.tanh(x @ W + h @ U)
        return h, h * 2.0

    hT, ys = gc.scan(step, h0, xs, **kw)
    return hT, ys, (xs, W, U, h0)


def _numpy_rnn(v, reverse=False):
    h, ys = v["h0"], [None] * len(v["xs"])
    order = range(len(v["xs"]) - 1, -1, -1) if reverse else range(len(v["xs"]))
    for t in order:
        h = np.tanh(v["xs"][t] @ v["W"] + h @ v["U"])
        ys[t] = 2 * h
    return h, np.stack(ys)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_a_numpy_loop(reverse):
    hT, ys, _ = _rnn(reverse=reverse)
    v = _rnn_values()
    got_h, got_y = gc.evaluate([hT, ys], v)
    want_h, want_y = _numpy_rnn(v, reverse)
    np.testing.assert_allclose(got_h, want_h, rtol=1e-12)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-12)
    assert ys.shape[0] == gc.dim("T")  # the symbolic length is bound at call time
    v7 = _rnn_values(T=7)
    assert gc.evaluate(ys, v7).shape == (7, 2, 4)


def test_tracing_twice_gives_the_same_node_and_digest():
    a, _, _ = _rnn()
    b, _, _ = _rnn()
    assert a is b
    c, _, _ = _rnn(H=5)
    assert c.digest() != a.digest()


def test_loop_invariant_work_is_hoisted_into_the_captures():
    xs = gc.input("xs", ("T", "N", 3))
    W = gc.param("W", (3, 4))

    def step(h, x):
        return h + x @ gc.transpose(gc.transpose(W) * 2.0), None

    (hT, ys) = gc.scan(step, gc.zeros(("N", 4)), xs)
    assert ys is None
    scan = hT.inputs[0]
    body = scan.attrs["body"]
    # W.T * 2 and its transpose depend on W only: computed once, outside the loop
    assert not any(n.op.name == "transpose" for n in body.order())
    assert any(i.op.name == "transpose" for i in scan.inputs)


def test_tuples_none_ys_and_no_xs():
    n = gc.input("n0", (), "float64")

    def step(c, _):
        a, b = c
        return (b, a + b), (a, None)

    (a, b), (ys, none) = gc.scan(step, (n, n * 1.0), length=6)
    assert none is None
    got = gc.evaluate([a, b, ys], {"n0": np.float64(1.0)})
    np.testing.assert_array_equal(got[2], [1, 1, 2, 3, 5, 8])
    assert got[0] == 13 and got[1] == 21


def test_dicts_and_named_tuples_as_carry_xs_and_ys():
    """JAX's pytree containers: a dict (keys in sorted order) or a named tuple as carry, xs and y_t come back as
    such, compiled as evaluated and differentiated; a step that changes the structure or a leaf's shape is named."""
    import collections

    xs = gc.input("xs", ("T", "N", 3), "float64")
    h0 = gc.zeros(("N", 3), "float64")

    def step(c, x):
        h = gc.tanh(c["h"] + x["a"] * x["b"])
        return {"s": c["s"] + h, "h": h}, {"out": h * 2.0}

    c, ys = gc.scan(step, {"s": h0, "h": h0}, {"a": xs, "b": xs * 0.5})
    assert sorted(c) == ["h", "s"] and list(ys) == ["out"]
    X = np.random.default_rng(3).normal(size=(4, 2, 3))
    h, s = np.zeros((2, 3)), np.zeros((2, 3))
    for t in range(4):
        h = np.tanh(h + X[t] * X[t] * 0.5)
        s = s + h
    got = gc.evaluate({"s": c["s"], "out": ys["out"]}, {"xs": X})
    np.testing.assert_allclose(got["s"], s, rtol=1e-12)
    np.testing.assert_allclose(got["out"][-1], 2 * h, rtol=1e-12)
    compiled = gc.compile([c["s"], ys["out"]])({"xs": X})
    np.testing.assert_allclose(compiled[0], s, rtol=1e-12)
    gc.check_grad(gc.sum(c["s"]), xs, {"xs": X})
    P = collections.namedtuple("P", "h s")
    c2, _ = gc.scan(lambda c, x: (P(gc.tanh(c.h + x), c.s + c.h), None), P(h0, h0), xs)
    assert type(c2) is P
    with pytest.raises(gc.GraphcError, match=r"another structure than init: \{'h': T, 'z': T\} for "
                                             r"\{'h': T, 's': T\}"):
        gc.scan(lambda c, x: ({"h": c["h"], "z": c["s"]}, None), {"s": h0, "h": h0}, xs)
    with pytest.raises(gc.ShapeError, match=r"carry 1 \(init\['s'\]\) goes into step as f64\[N,3\]"):
        gc.scan(lambda c, x: ({"h": c["h"], "s": gc.concatenate([c["s"], x], 1)}, None), {"s": h0, "h": h0}, xs)


def test_zeros_is_sized_by_the_batch():
    x = gc.input("x", ("N", 3))
    z = gc.zeros(("N", 5))
    out = gc.evaluate(x.sum() + z.sum(), {"x": np.ones((4, 3), np.float32)})
    assert out == 12.0
    assert gc.evaluate(z + gc.sum(x) * 0.0, {"x": np.ones((4, 3), np.float32)}).shape == (4, 5)


def test_show_prints_the_body_as_a_nested_block(capsys):
    hT, ys, _ = _rnn()
    gc.show([hT, ys])
    text = capsys.readouterr().out
    assert "body (c0: f32[N,4], x0: f32[N,3], w0: f32[3,4], w1: f32[4,4]) {" in text
    assert "return carry (%3), y (%4)" in text


def test_draw_boxes_the_body(tmp_path):
    hT, _, _ = _rnn()
    gc.draw(hT, tmp_path / "scan.svg")
    svg = (tmp_path / "scan.svg").read_text()
    assert "↻ scan" in svg and "tanh" in svg


@pytest.mark.parametrize("T", [5, "T"])  # a symbolic length: ceil(T/k) segments, the xs' rows sliced at run time
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("checkpoint", [None, 2, 3, 5, 8])
def test_gradient_through_time(reverse, checkpoint, T):
    hT, ys, (xs, W, U, h0) = _rnn(T=T, reverse=reverse, checkpoint=checkpoint)
    loss = gc.sum(hT * hT) + gc.sum(ys * ys)
    check_grad(loss, [xs, W, U, h0], _rnn_values(), rtol=1e-6, atol=1e-8)


def test_the_gradient_is_one_reverse_scan_over_the_body_gradient():
    hT, ys, (xs, W, U, h0) = _rnn()
    gW, gU = gc.grad(gc.sum(hT) + gc.sum(ys), [W, U])
    scans = [n for n in gc.topo_order([gW, gU]) if n.op is SCAN]
    assert len(scans) == 2  # the forward and one reverse
    rev = scans[1]
    assert rev.attrs["reverse"] and rev.attrs["length"] == gc.dim("T")
    body = rev.attrs["body"]
    # the carry: dL/dh only; W and U are used only as x·W, so dW = Σ_t x_tᵀ g_t is one product after the
    # loop over the stacked operands (the xs and the stored carries themselves), not a product per step
    assert [a.shape for a in body.args[:body.n_carry]] == [(gc.dim("N"), 4)]
    # the forward step is not run again: its tanh is stored per step by the forward scan and read back
    assert not [n for n in body.order() if n.op.name == "tanh"]
    assert [n.attrs["tb"] for n in body.order() if n.op.name == "matmul"] == [True]  # only dh = g·Uᵀ
    fwd = scans[0]
    stored = [i for i in rev.inputs if i.op.name == "scan_output" and i.inputs[0] is fwd
              and i.attrs["index"] >= len(fwd.op.output_types(fwd))]
    assert [fwd.attrs["body"].order()[i.attrs["index"] - 3].op.name for i in stored] == ["tanh"]
    for g in (gW, gU):
        assert g.op.name == "matmul" and g.attrs["ta"]
        assert g.inputs[0].shape[0] == gc.dim("T") * gc.dim("N")
    assert gW.inputs[0].inputs[0] is xs


def test_a_weight_used_otherwise_accumulates_in_the_reverse_carry():
    xs = gc.input("xs", (4, 2, 3))
    w = gc.param("w", (3,))

    def step(h, x):
        return gc.tanh(h * w + x), None

    hT, _ = gc.scan(step, gc.input("h0", (2, 3)), xs)
    gw = gc.grad(gc.sum(hT), w)
    rev = gw.inputs[0]
    assert rev.op is SCAN and rev.attrs["body"].n_carry == 2
    v = {"xs": np.random.default_rng(0).normal(size=(4, 2, 3)), "w": np.array([0.5, -0.3, 0.9]),
         "h0": np.ones((2, 3))}
    check_grad(gc.sum(hT), [w, xs], v, rtol=1e-7, atol=1e-9)


def test_checkpoint_stores_every_kth_carry():
    hT, ys, (xs, W, U, h0) = _rnn(T=7, checkpoint=3)
    g = gc.grad(gc.sum(hT), [U])
    hist = [n for n in gc.topo_order(g) if n.op.name == "scan_output" and n.attrs["index"] == 2]
    assert hist and hist[0].shape[0] == 3  # ceil(7/3) stored carries instead of 7


def _all_nodes(outs) -> int:
    """Nodes of a graph and of every loop body in it, nested bodies included."""
    seen, stack, count = set(), list(gc.topo_order(outs)), 0
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        count += 1
        body = n.attrs.get("body") if hasattr(n, "attrs") else None
        if body is not None:
            stack.extend(body.order())
    return count


def test_a_checkpointed_gradient_does_not_grow_with_k():
    """The gradient of checkpoint=k recomputes each segment with a loop of k steps, not k copies of the body:
    the graph (bodies included) is the same size for every k, so compile time does not grow with k (an LSTM step
    at T=100: k=5/10/25 compiled in 2.3/4.8/11.4 s with the copies, ~1.0 s each now; the loops are also kept
    from LLVM's full unrolling)."""
    sizes = []
    for k in (2, 5, 13):
        hT, _, (xs, W, U, h0) = _rnn(T=26, checkpoint=k)
        sizes.append(_all_nodes(gc.grad(gc.sum(hT), [W, U])))
    assert max(sizes) - min(sizes) <= 2, sizes  # a constant or a mask more where k divides T


def test_truncated_bptt_by_stop_gradient():
    xs = gc.input("xs", (6, 2, 3))
    W, U = gc.param("W", (3, 4)), gc.param("U", (4, 4))
    h0 = gc.input("h0", (2, 4))

    def step(h, x):
        return gc.tanh(x @ W + gc.stop_gradient(h) @ U), None

    hT, _ = gc.scan(step, h0, xs)
    v = _rnn_values(T=6)
    gW = gc.evaluate(gc.grad(gc.sum(hT), W), v)
    # only the last step contributes: d/dW sum(tanh(x5 W + h4 U)) with h4 fixed
    h = v["h0"]
    for t in range(5):
        h = np.tanh(v["xs"][t] @ v["W"] + h @ v["U"])
    z = np.tanh(v["xs"][5] @ v["W"] + h @ v["U"])
    np.testing.assert_allclose(gW, v["xs"][5].T @ (1 - z * z), rtol=1e-10)


@pytest.mark.parametrize("checkpoint", [None, 2, 3])
@pytest.mark.parametrize("T", [5, "T"])
def test_second_derivatives_through_a_scan(checkpoint, T):
    """Through stored carries, and through checkpoint=k's recomputed ones (k dividing T or not, a symbolic T):
    finite differences of the first derivative, and the same values whatever k."""
    hT, ys, (xs, W, U, h0) = _rnn(T=T, checkpoint=checkpoint)
    loss = gc.sum(hT * hT) + gc.sum(ys)
    gU = gc.grad(loss, U)
    v = _rnn_values(T=5)
    check_grad(gc.sum(gU * gU), [U, W, xs, h0], v, rtol=1e-5, atol=1e-7)
    plain, _, (xs0, W0, U0, h00) = _rnn(T=T)
    gU0 = gc.grad(gc.sum(plain * plain) + gc.sum(_), U0)
    want = gc.evaluate(gc.grad(gc.sum(gU0 * gU0), [U0, W0, xs0, h00]), v)
    got = gc.evaluate(gc.grad(gc.sum(gU * gU), [U, W, xs, h0]), v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


STEPS_READING_A_WEIGHT_TWICE = {
    "h@W + sum(W)": lambda W: lambda h, x: (gc.tanh(x + h @ W + gc.sum(W)), gc.sin(h)),
    "x@W + W[0]": lambda W: lambda h, x: (gc.tanh(x @ W + h + W[0]), gc.sin(h)),
    "h@W + h@W.T": lambda W: lambda h, x: (gc.tanh(x + h @ W + h @ gc.transpose(W)), gc.sin(h)),
}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("checkpoint", [None, 2, 3])
@pytest.mark.parametrize("step", list(STEPS_READING_A_WEIGHT_TWICE))
def test_a_weight_read_directly_and_through_a_loop_invariant_expression_of_it(step, checkpoint, reverse):
    """The body reads W and sum(W) (or W[0], Wᵀ), which runs once before the loop: two captures, one computed
    from the other. The body's sweep took the share that reached sum(W) on to W as well, and the sweep outside
    the loop carried it there again: checkpoint=k's gradient was off by 50-100%, and second derivatives
    through a loss on the ys too. First and second derivatives against finite differences."""
    xs = gc.input("xs", ("T", 2, 3))
    W = gc.param("W", (3, 3))
    h0 = gc.input("h0", (2, 3))
    hT, ys = gc.scan(STEPS_READING_A_WEIGHT_TWICE[step](W), h0, xs, reverse=reverse, checkpoint=checkpoint)
    loss = gc.sum(hT) + gc.sum(gc.sin(ys))
    rng = np.random.default_rng(3)
    v = {"xs": rng.normal(size=(5, 2, 3)), "W": 0.3 * rng.normal(size=(3, 3)), "h0": rng.normal(size=(2, 3))}
    check_grad(loss, [W, xs, h0], v, rtol=1e-6, atol=1e-8)
    gW = gc.grad(loss, W)
    check_grad(gc.sum(gW * gW), [W, xs], v, rtol=1e-5, atol=1e-7)


def test_nested_scans_and_their_gradient():
    xs = gc.input("xs", (3, 4, 2))
    W = gc.param("W", (2, 2))

    def outer(c, x):
        def inner(d, row):
            return gc.tanh(d @ W + row), None

        d, _ = gc.scan(inner, c, gc.reshape(x, (4, 1, 2)))
        return d, d * c

    cT, ys = gc.scan(outer, gc.input("c0", (1, 2)), xs)
    rng = np.random.default_rng(3)
    v = {"xs": rng.normal(size=(3, 4, 2)), "W": 0.5 * rng.normal(size=(2, 2)), "c0": rng.normal(size=(1, 2))}
    check_grad(gc.sum(cT) + gc.sum(ys * ys), [W, xs], v, rtol=1e-6, atol=1e-8)


def test_bad_inputs_are_located_errors():
    xs = gc.input("xs", ("T", "N", 3))
    h0 = gc.input("h0", ("N", 4))
    W = gc.param("W", (3, 5))
    with pytest.raises(gc.ShapeError, match=r"carry 0 goes into step as f32\[N,4\].*returns f32\[N,5\]"):
        gc.scan(lambda h, x: (x @ W, None), h0, xs)
    with pytest.raises(gc.ShapeError, match="carry 0.*f64"):
        gc.scan(lambda h, x: (gc.cast(h, "float64"), None), h0, xs)
    other = gc.input("other", (7, "N", 3))
    with pytest.raises(gc.ShapeError, match="xs 1 .*other.* has 7 steps but"):
        gc.scan(lambda h, x: (h, None), h0, (xs, other))
    with pytest.raises(gc.ShapeError, match="length"):
        gc.scan(lambda h, x: (h, None), h0, other, length=8)
    with pytest.raises(gc.ShapeError, match="number of steps is unknown"):
        gc.scan(lambda h, x: (h, None), h0)
    with pytest.raises(gc.GraphcError, match="must return a pair"):
        gc.scan(lambda h, x: h, h0, xs)
    with pytest.raises(gc.GraphcError, match="test_scan.py"):
        gc.scan(lambda h, x: (x @ W, None), h0, xs)
    with pytest.raises(gc.GraphcError, match="checkpoint must be a positive int"):
        gc.scan(lambda h, x: (h, None), h0, xs, checkpoint=0)



def test_a_python_number_as_the_initial_carry_is_named_in_the_dtype_error():
    """jax.lax.scan(f, 0.0, xs) takes 0.0 as weakly typed; here it is a float32 (0: int32) scalar, and the error
    (float32 + float64 in the step) said nothing of the init: it now names the number and the dtype to give it."""
    xs = gc.input("xs", ("T", 2), "float64")
    with pytest.raises(gc.DTypeError, match=r"different dtypes.*the initial carry holds the Python number 0.0 \(a "
                                            r"float32 scalar\): .*gc.full\(\(\), 0.0, 'float64'\) or np.float64"):
        gc.scan(lambda c, x: ({"s": c["s"] + gc.sum(x)}, None), {"s": 0.0}, xs)
    with pytest.raises(gc.DTypeError, match="Python number 1.5"):
        gc.fori_loop(0, 3, lambda i, c: c + gc.sum(xs), 1.5)
    with pytest.raises(gc.ShapeError, match=r"goes into step as i32\[\].*returns f64\[\].*Python number 0 \(an int32 "
                                            r"scalar\): .*gc.full\(\(\), 0, 'float64'\)"):
        gc.scan(lambda c, x: (c + gc.sum(x), None), 0, xs)
    c, _ = gc.scan(lambda c, x: (c + gc.sum(x), None), np.float64(0.0), xs)  # as the hint says
    assert gc.evaluate(c, {"xs": np.ones((3, 2))}) == 6.0


def test_fori_loop_is_a_scan_over_the_indices_with_static_or_symbolic_bounds():
    """gc.fori_loop(lower, upper, body, init) as jax.lax.fori_loop: body(i, carry) for i in [lower, upper), i an
    int32 scalar (xs[i] selects a step); bounds ints (negative too) or dims; compiled as one loop, differentiated
    as a scan; an empty range gives init; upper below lower is an error."""
    rng = np.random.default_rng(5)
    x, W = gc.input("x", (3,), "float64"), gc.input("W", (3, 3), "float64")
    h = gc.fori_loop(0, 5, lambda i, h: gc.tanh(W @ h) + gc.cast(i, "float64") * 0.01, x)
    X, Wv = rng.normal(size=3), rng.normal(size=(3, 3)) * 0.5
    want = X.copy()
    for i in range(5):
        want = np.tanh(Wv @ want) + i * 0.01
    np.testing.assert_allclose(gc.evaluate(h, {"x": X, "W": Wv}), want, rtol=1e-12)
    np.testing.assert_allclose(gc.compile(h, cache=False)({"x": X, "W": Wv}), want, rtol=1e-12)
    gc.check_grad(gc.sum(h * h), [x, W], {"x": X, "W": Wv})
    xs = gc.input("xs", ("T", 3), "float64")
    s = gc.fori_loop(1, "T", lambda i, c: c + xs[i] * gc.cast(i, "float64"), gc.zeros((3,), "float64"))
    for T in (1, 6):
        XS = rng.normal(size=(T, 3))
        want = sum((XS[i] * i for i in range(1, T)), np.zeros(3))
        np.testing.assert_allclose(gc.evaluate(s, {"xs": XS}), want, rtol=1e-12)
    XS = rng.normal(size=(6, 3))
    np.testing.assert_allclose(gc.compile(s, cache=False)({"xs": XS}), sum(XS[i] * i for i in range(1, 6)),
                               rtol=1e-12)
    count = gc.fori_loop(-2, 2, lambda i, c: c + gc.cast(i, "float64"), gc.constant(0.0, "float64"))
    assert gc.evaluate(count, {}) == -2.0
    assert gc.fori_loop(3, 3, lambda i, c: c + 1.0, x) is x
    with pytest.raises(gc.GraphcError, match="upper \\(1\\) is below lower \\(3\\)"):
        gc.fori_loop(3, 1, lambda i, c: c, x)
    big = gc.fori_loop(0, 10**9, lambda i, c: c * 0.5, x)  # the index is a carry: no array of 10**9 indices
    assert [n for n in gc.topo_order(big) if n.op.name == "scan"][0].attrs["length"] == 10**9
    with pytest.raises(gc.GraphcError, match="do not fit int32"):
        gc.fori_loop(0, 2**32, lambda i, c: c, x)


def test_graph_rewrites_reach_into_loop_bodies():
    """Inference drops a dropout inside a step (before: the compiled step read an unbound key and crashed the
    process), the stability rewrites apply in a step as outside one, and the gradient's stored intermediates
    follow the rewritten step (one the step no longer computes is stored as a y of its own)."""
    xs = gc.input("xs", ("T", "N", 4))
    w = gc.param("w", (4, 4))
    c, ys = gc.scan(lambda h, x: (gc.tanh(x + gc.nn.dropout(h, 0.5) @ w),) * 2, gc.zeros(("N", 4)), xs)
    loss = gc.sum(c) + gc.mean(ys)
    rng = np.random.default_rng(0)
    v = {"xs": rng.normal(size=(5, 3, 4)).astype(np.float32), "w": rng.normal(size=(4, 4)).astype(np.float32)}
    outs = [loss, *gc.grad(loss, [w, xs])]
    for got, want in zip(gc.compile(outs, cache=False)(v), gc.evaluate(outs, v), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    # a training epoch sees the step's dropout (it trains with it, feeding a key per step)
    x2 = gc.input("x2", ("N", 5, 4))
    y2 = gc.input("y2", ("N",), "int32")
    seq = gc.transpose(x2, (1, 0, 2))
    h, _ = gc.scan(lambda h, x: (gc.tanh(x + gc.nn.dropout(h, 0.5) @ w), None), gc.zeros(("N", 4)), seq)
    l2 = gc.nn.softmax_cross_entropy(h, y2)
    assert gc.EpochFunction(l2, {w: w - 0.1 * gc.grad(l2, w)}, x=x2, y=y2, cache=False).training

    big = gc.input("big", ("T", 3))
    sp = lambda z: gc.log(1.0 + gc.exp(z))  # noqa: E731 - a hand-written softplus: overflows unless rewritten
    inside, _ = gc.scan(lambda a, x: (a + sp(x) + 1.0 / (1.0 + gc.exp(-x)), None), gc.zeros((3,)), big)
    outside = gc.sum(sp(big) + 1.0 / (1.0 + gc.exp(-big)), axis=0)
    vb = {"big": np.array([[-100.0, 0.5, 100.0]] * 2, np.float32)}
    a, b = gc.compile([inside, outside, gc.grad(gc.sum(inside), big)], cache=False)(vb)[:2]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.isfinite(a)) and a[2] == np.float32(200.0) + np.float32(2.0)


@pytest.mark.parametrize("T", [10, "T"])
def test_a_checkpoint_longer_than_the_sequence_costs_no_more_than_the_sequence(T):
    """k > T: a static T clamps k when the scan is built; a symbolic T (only known at run time) sizes the
    segment loop by min(k, T): k = 100,000 at T = 10 allocated and ran 100,000 masked steps (232 MB of arena)."""
    xs = gc.input("xs", (T, "N", 8))
    w = gc.param("w", (8, 8))
    rng = np.random.default_rng(0)
    v = {"xs": rng.normal(size=(10, 3, 8)).astype(np.float32), "w": rng.normal(size=(8, 8)).astype(np.float32)}
    arenas, grads = [], []
    for k in (10, 1000, 100_000):
        h, _ = gc.scan(lambda c, x: (gc.tanh(x + c @ w), None), gc.zeros(("N", 8)), xs, checkpoint=k)
        fn = gc.compile(gc.grad(gc.sum(h), w), threads=1)
        grads.append(fn(v))
        arenas.append(fn.memory_plan.arena_bytes)
    assert arenas[0] == arenas[1] == arenas[2]
    assert np.array_equal(grads[0], grads[1]) and np.array_equal(grads[0], grads[2])
    np.testing.assert_allclose(grads[0], gc.evaluate(gc.grad(gc.sum(h), w), v), rtol=1e-4, atol=1e-5)
    with pytest.raises(gc.GraphcError, match="checkpoint must be a positive int below 2\\*\\*31"):
        gc.scan(lambda c, x: (c + x, None), gc.zeros(("N", 8)), xs, checkpoint=2**40)


def test_two_unnamed_layers_in_a_step_are_refused_as_outside_one():
    """Outside a model build, two unnamed layers of one shape get one parameter: refused outside a scan, and
    now inside a step too (it trained as one tied layer); one unnamed layer in a step is fine."""
    xs = gc.input("xs", ("T", "N", 4))
    h, _ = gc.scan(lambda h, x: (gc.nn.dense(gc.nn.dense(x, 4) + h, 4), None), gc.zeros(("N", 4)), xs)
    v = dict(gc.nn.init_params(gc.nn.parameters(h), seed=0), xs=np.ones((3, 2, 4), np.float32))
    with pytest.raises(gc.GraphcError, match="two unnamed layers share the parameter 'dense.W'"):
        gc.evaluate(h, v)
    with pytest.raises(gc.GraphcError, match="two unnamed layers share the parameter 'dense.W'"):
        gc.compile(h)(v)
    one, _ = gc.scan(lambda h, x: (gc.nn.dense(x, 4) + h, None), gc.zeros(("N", 4)), xs)
    w = dict(gc.nn.init_params(gc.nn.parameters(one), seed=0), xs=np.ones((3, 2, 4), np.float32))
    np.testing.assert_allclose(gc.compile(one)(w), gc.evaluate(one, w), rtol=1e-6)


def test_none_in_the_carry_or_xs_is_an_empty_part_as_in_jax():
    xs = gc.input("xs", ("T", 3), "float64")
    v = {"xs": np.arange(6.0).reshape(2, 3)}
    c, _ = gc.scan(lambda c, x: (c + x["a"], None), gc.zeros((3,), "float64"), {"a": xs, "b": None})
    np.testing.assert_array_equal(gc.compile(c)(v), [3.0, 5.0, 7.0])
    none, ys = gc.scan(lambda c, x: (None, x * 2), None, xs)
    assert none is None
    np.testing.assert_array_equal(gc.compile(ys)(v), v["xs"] * 2)
    (h, empty), _ = gc.scan(lambda c, x: ((c[0] * x + x, None), None), (gc.zeros((3,), "float64"), None), xs)
    assert empty is None
    g = gc.grad(gc.sum(h), xs)
    np.testing.assert_allclose(gc.compile(g)(v), gc.evaluate(g, v))
    with pytest.raises(gc.GraphcError, match=r"another structure than init: \(T, T\) for \(T, None\)"):
        gc.scan(lambda c, x: ((c[0] + x, x), None), (gc.zeros((3,), "float64"), None), xs)
