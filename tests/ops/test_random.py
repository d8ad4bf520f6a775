"""gc.random's draws: their distributions, the same numbers in gc.evaluate and compiled code (any thread count,
any batch size), independent salts, symbolic shapes, the reparameterized gradient, fresh numbers per training
step, and the errors a user can cause. Every key is fixed, so every number (and statistic) is deterministic."""

import math

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.epoch_abi import KEY_MULT

KEY = {"rng_key": 7}
N = 100_000


def ks(x, cdf) -> float:
    x = np.sort(np.ravel(x).astype(np.float64))
    c, i = cdf(x), np.arange(1, x.size + 1)
    return float(max((i / x.size - c).max(), (c - (i - 1) / x.size).max()))


def test_distributions_of_1e5_draws():
    u = gc.random.uniform((1000, 100), low=-2.0, high=6.0, salt=1)
    z = gc.random.normal((1000, 100), salt=1)
    b = gc.random.bernoulli(0.3, (1000, 100))
    U, Z, B = gc.evaluate([u, z, b], KEY)
    assert U.dtype == Z.dtype == np.float32 and B.dtype == bool and U.shape == (1000, 100)
    assert U.min() >= -2.0 and U.max() < 6.0
    # sampling errors of 1e5 draws: mean ~ 1/sqrt(N) standard deviations; KS's 0.1% critical value 1.95/sqrt(N)
    assert abs(U.mean() - 2.0) < 0.03 and abs(U.var() - 64 / 12) < 0.03
    assert ks((U + 2) / 8, lambda x: x) < 0.004
    assert abs(Z.mean()) < 0.01 and abs(Z.var() - 1) < 0.01
    assert abs((Z ** 3).mean()) < 0.03 and abs((Z ** 4).mean() - 3) < 0.06
    erf = np.vectorize(math.erf)
    assert ks(Z, lambda x: 0.5 * (1 + erf(x / math.sqrt(2)))) < 0.005
    assert abs(B.mean() - 0.3) < 0.005
    # mean and std as numbers are baked into the draw
    Z2 = gc.evaluate(gc.random.normal((1000, 100), mean=3.0, std=0.5, salt=1), KEY)
    np.testing.assert_allclose(Z2, 3.0 + 0.5 * Z.astype(np.float64), rtol=0, atol=1e-6)


def _ulps64(got, ref):
    return np.abs(got - ref) / np.spacing(np.maximum(np.abs(ref), 1.0))


def test_compiled_equals_reference_at_any_thread_count_and_batch():
    x = gc.input("x", ("N", 24))
    outs = [gc.random.uniform(("N", 24), low=-1.5, high=2.25, salt="u"), gc.random.normal_like(x, salt="z"),
            gc.random.bernoulli(0.7, like=x), gc.random.normal_like(x, mean=1.0, std=2.0, dtype="float64"),
            gc.random.bernoulli(gc.input("p", (24,)), ("N", 24), salt=5)]
    p = np.linspace(0, 1, 24, dtype=np.float32)
    vals = {"x": np.zeros((700, 24), np.float32), "p": p, "rng_key": -123456789012345}
    ref = gc.evaluate(outs, vals)
    for threads in (1, 3):
        got = gc.compile(outs, threads=threads)(vals)
        for k in (0, 1, 2, 4):
            assert np.array_equal(got[k], ref[k]), (threads, k)
        assert _ulps64(got[3], ref[3]).max() <= 4  # float64 Box-Muller: the C library's log/cos vs numpy's
    # an element's numbers depend on its position, not on the batch size
    small = gc.compile(outs, threads=2)(dict(vals, x=vals["x"][:5]))
    for k in (0, 1, 2, 4):
        assert np.array_equal(small[k], ref[k][:5])
    assert abs(ref[4].mean(axis=0) - p).max() < 0.07  # a tensor p: its own probability per column


def test_salts_and_keys():
    def draw(salt, key=7, fn=gc.random.uniform):
        return gc.evaluate(fn((N,), salt=salt), {"rng_key": key})

    a, b = draw(1), draw(2)
    assert np.array_equal(a, draw(1))  # same salt and key: the same numbers
    assert np.array_equal(draw(None), draw(0)) and np.array_equal(draw("eps"), draw("eps"))
    for other in (b, draw(1, key=8), draw("1"), draw(1, fn=gc.random.normal)):
        assert abs(np.corrcoef(a, other)[0, 1]) < 0.01
    # a draw never shares a dropout mask's stream (whose salts are small layer numbers)
    mask = gc.evaluate(gc.dropout(gc.input("x", (N,)), 0.5, salt=1), {"x": np.ones(N, np.float32), **KEY},
                       training=True) > 0
    assert abs(np.corrcoef(a, mask)[0, 1]) < 0.01


def test_symbolic_shape_is_bound_by_an_input_or_refused():
    x = gc.input("x", ("N", 3))
    y = x + gc.random.normal(("N", 3), salt=1)
    got = gc.evaluate(y, {"x": np.zeros((4, 3), np.float32), **KEY})
    assert got.shape == (4, 3)
    with pytest.raises(gc.ShapeError, match="N"):
        gc.evaluate(gc.random.uniform(("N", 3)), KEY)


def test_reparameterized_gradient_matches_finite_differences():
    mu = gc.input("mu", (5, 3), "float64")
    log_sigma = gc.input("log_sigma", (3,), "float64")
    z = gc.random.normal((5, 3), mean=mu, std=gc.exp(log_sigma), dtype="float64", salt="eps")
    loss = gc.sum(z * z * gc.constant(np.arange(15.0).reshape(5, 3)))
    rng = np.random.default_rng(0)
    vals = {"mu": rng.normal(size=(5, 3)), "log_sigma": rng.normal(size=3) * 0.3, **KEY}
    gc.check_grad(loss, [mu, log_sigma], vals, rtol=1e-6, atol=1e-8)
    # and it is that arithmetic: the gradient wrt mu is 2 z c
    eps = gc.evaluate(gc.random.normal((5, 3), dtype="float64", salt="eps"), KEY)
    zv = vals["mu"] + np.exp(vals["log_sigma"]) * eps
    np.testing.assert_allclose(gc.evaluate(gc.grad(loss, mu), vals), 2 * zv * np.arange(15.0).reshape(5, 3),
                               rtol=1e-12)
    # the noise itself has no gradient wrt the tensor whose shape it takes
    x = gc.input("x", (4,), "float64")
    gx = gc.evaluate(gc.grad(gc.sum(gc.random.uniform_like(x)), x), {"x": np.zeros(4), **KEY})
    assert np.array_equal(gx, np.zeros(4))


def test_training_epoch_draws_fresh_numbers_each_step():
    x = gc.input("x", ("N", 2))
    acc = gc.input("acc", (4,))  # state updated in place: the sum of every step's draw
    w = gc.param("w", (2,), init="zeros")
    noise = gc.random.uniform((4,), salt="noise")
    loss = gc.mean(gc.sum(x * w, axis=1)) + 0.0 * gc.sum(noise)
    ef = gc.EpochFunction(loss, {acc: acc + noise, w: w - 0.1 * gc.grad(loss, w)}, x=x)
    state = {"w": np.zeros(2, np.float32), "acc": np.zeros(4, np.float32)}
    ef.run_epoch(np.ones((12, 2), np.float32), None, state, batch=4, seed=3, step0=0)
    keys = [np.int64(np.uint64((3 * KEY_MULT + s) % 2**64).view(np.int64)) for s in range(3)]
    draws = [gc.evaluate(noise, {"rng_key": k}) for k in keys]
    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_allclose(state["acc"], np.sum(draws, axis=0), rtol=1e-6)


def test_fit_trains_a_model_with_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def noisy(x, n_outputs):
        h = x + gc.random.normal_like(x, std=0.1, salt="input noise")
        return gc.nn.dense(h, n_outputs, name="out")

    r = gc.fit(noisy, (X, y), epochs=3, batch_size=16, progress=False, seed=1)
    assert np.isfinite(r.metrics["train_loss"])
    # predict draws too, keyed by the run's seed as its evaluation is (it failed: no rng_key)
    out = noisy(gc.input("x", ("N", 4)), 1)  # binary: one logit
    want = gc.evaluate(out, {**r.params, "x": X, "rng_key": 1})
    np.testing.assert_allclose(r.predict(X), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want, gc.evaluate(out, {**r.params, "x": X, "rng_key": 2}), atol=1e-3)


def test_a_draw_gated_by_gc_nn_training_switch_draws_in_training_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def gated(x, n_outputs):
        h = gc.nn.training_switch(x + gc.random.normal_like(x, std=0.5, salt="input noise"), x)
        return gc.nn.dense(h, n_outputs, name="out")

    out = gated(gc.input("x", ("N", 4)), 1)
    params = {"out.W": rng.normal(size=(4, 1)).astype(np.float32), "out.b": np.zeros(1, np.float32)}
    clean = X @ params["out.W"]
    np.testing.assert_allclose(gc.evaluate(out, {**params, "x": X, "rng_key": 3}), clean, rtol=1e-5, atol=1e-6)
    noisy = gc.evaluate(out, {**params, "x": X, "rng_key": 3}, training=True)
    assert not np.allclose(noisy, clean, atol=1e-2)
    r = gc.fit(gated, (X, y), epochs=2, batch_size=16, progress=False, seed=1)
    W, b = r.params["out.W"], r.params["out.b"]
    np.testing.assert_allclose(r.predict(X), X @ W + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: gc.random.uniform((3,), dtype="int32"), "float32 or float64"),
    (lambda: gc.random.uniform((3,), low=1.0, high=1.0), "below high"),
    (lambda: gc.random.uniform(gc.input("s", (2,))), "like="),
    (lambda: gc.random.uniform(), "give the shape"),
    (lambda: gc.random.normal((3,), like=gc.input("s", (3,))), "one of them"),
    (lambda: gc.random.normal((3,), std=-1.0), "std"),
    (lambda: gc.random.normal((3,), mean="0"), "mean must be"),
    (lambda: gc.random.normal((-2,)), ">= 0"),
    (lambda: gc.random.bernoulli(1.5, (3,)), r"\[0, 1\]"),
    (lambda: gc.random.bernoulli(gc.input("k", (), "int32"), (3,)), "float tensor"),
    (lambda: gc.random.uniform((3,), salt=1.5), "salt must be"),
])
def test_errors(call, match):
    with pytest.raises(gc.GraphcError, match=match):
        call()


def test_the_key_is_required_in_any_mode():
    u = gc.random.uniform((3,))
    with pytest.raises(gc.InputError, match="gc.random"):
        gc.evaluate(u)
    with pytest.raises(gc.InputError, match="rng_key"):
        gc.compile([u])({})


def test_the_key_is_required_only_where_the_mode_reads_it_as_compiled():
    """evaluate asked for rng_key in inference when the only draw sat in a training_switch's training branch,
    which the program compiled for inference never computes (and reads no key for): the key is needed where a
    draw, or in training a dropout, is what the outputs compute in that mode, in a loop's body too."""
    x = gc.input("x_mode_key", ("N", 3))
    v = {"x_mode_key": np.ones((2, 3), np.float32)}
    noisy = gc.nn.training_switch(x + gc.random.normal_like(x, salt="mode key"), x * 2.0)
    np.testing.assert_array_equal(gc.evaluate(noisy, v), 2.0)
    np.testing.assert_array_equal(gc.compile(noisy)(v)[0], 2.0)  # the compiled program agrees: no key read
    with pytest.raises(gc.InputError, match=r"missing value\(s\) for input 'rng_key'.*gc.random's draws"):
        gc.evaluate(noisy, v, training=True)
    # the other way round: a draw or a dropout in the inference branch is not computed in training
    for inference_only in (x + gc.random.uniform_like(x, salt="mode key 2"), gc.nn.dropout(x, 0.5)):
        y = gc.nn.training_switch(x * 3.0, inference_only)
        np.testing.assert_array_equal(gc.evaluate(y, v, training=True), 3.0)
    dropped = gc.nn.training_switch(gc.nn.dropout(x, 0.5), x)
    np.testing.assert_array_equal(gc.evaluate(dropped, v), 1.0)
    with pytest.raises(gc.InputError, match="the dropout key: pass an int seed for it in training mode"):
        gc.evaluate(dropped, v, training=True)

    # inside a loop body: the step's switch is resolved as well
    def step(c, xt):
        return c + gc.nn.training_switch(gc.random.normal(like=xt, salt="mode key 3"), xt), c

    h, _ = gc.scan(step, gc.zeros(("N", 3)), gc.input("xs_mode_key", (2, "N", 3)))
    vs = {"xs_mode_key": np.ones((2, 2, 3), np.float32)}
    np.testing.assert_array_equal(gc.evaluate(h, vs), 2.0)
    with pytest.raises(gc.InputError, match="rng_key"):
        gc.evaluate(h, vs, training=True)


def test_a_compiled_function_asks_for_the_key_only_where_its_mode_reads_it():
    """gc.compile(training=True) kept its whole input list, so it asked for rng_key where the only draw or dropout
    sat in the inference branch of a training_switch, which a training program never computes (gc.evaluate did
    not ask): the call now needs the key only where the compiled program reads it, in both modes, and a missing
    key is named as a draw's key or the dropout key by what reads it."""
    x = gc.input("x_compiled_key", ("N", 3))
    v = {"x_compiled_key": np.ones((2, 3), np.float32)}
    draw = x + gc.random.uniform_like(x, salt="compiled key")
    for other in (draw, gc.nn.dropout(x, 0.5)):
        fn = gc.compile(gc.nn.training_switch(x * 3.0, other), training=True, cache=False)
        assert [leaf.name for leaf in fn.signature.inputs] == ["x_compiled_key", "rng_key"]  # kept whole
        for _ in range(2):  # the checked call, then the fast path
            np.testing.assert_array_equal(fn(v), 3.0)
        np.testing.assert_array_equal(fn({**v, "rng_key": 7}), 3.0)
        np.testing.assert_array_equal(fn.bind(v)(), 3.0)
        with pytest.raises(gc.InputError, match="x_compiled_key"):
            fn({"rng_key": 7})  # the spare key never stands in for another input
    # where the mode computes the reader, the key is required, and said to be the draw's or the dropout's
    fn = gc.compile(gc.nn.training_switch(x * 3.0, draw), training=False, cache=False)
    with pytest.raises(gc.InputError, match=r"missing value\(s\) for input 'rng_key'.*the key of gc.random's draws"):
        fn(v)
    assert fn({**v, "rng_key": 1}).shape == (2, 3)
    fn = gc.compile(gc.nn.training_switch(draw, x * 3.0), training=True, cache=False)
    with pytest.raises(gc.InputError, match=r"'rng_key'.*the key of gc.random's draws"):
        fn(v)
    np.testing.assert_array_equal(gc.compile(gc.nn.training_switch(draw, x * 3.0), cache=False)(v), 3.0)
    dropped = gc.nn.training_switch(gc.nn.dropout(x, 0.5), x * 3.0)
    np.testing.assert_array_equal(gc.compile(dropped, cache=False)(v), 3.0)
    fn = gc.compile(dropped, training=True, cache=False)
    with pytest.raises(gc.InputError, match=r"'rng_key'.*the dropout key"):
        fn(v)
    kept = fn({**v, "rng_key": 5})
    assert set(np.unique(kept)) <= {0.0, 2.0}  # inverted dropout of ones at p=0.5


def test_a_draw_inside_a_scan_step_reads_the_key_fed_to_the_call():
    """A draw in a scan's step reads the rng_key given to the call (evaluate read 0 whatever was fed: it looked
    for draws outside loops only, so it neither required the key nor bound it), bitwise as compiled; the same
    numbers at every step (indexed within the step), as the README says."""
    xs = gc.input("xs", (3, "N", 4))

    def step(c, x):
        return c + gc.random.normal(like=x, salt="n"), c

    h, hist = gc.scan(step, gc.zeros(("N", 4)), xs)
    v = {"xs": np.zeros((3, 2, 4), np.float32)}
    with pytest.raises(gc.InputError, match="rng_key.*gc.random"):
        gc.evaluate(h, v)
    fn = gc.compile([h, hist], cache=False)
    for key in (0, 3):
        got, want = gc.evaluate([h, hist], {**v, "rng_key": key}), fn({**v, "rng_key": np.int64(key)})
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(got[1][2], 2 * got[1][1])  # one draw repeated: c_t = t * z
    assert not np.array_equal(gc.evaluate(h, {**v, "rng_key": 0}), gc.evaluate(h, {**v, "rng_key": 3}))
