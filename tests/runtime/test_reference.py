import sys

import numpy as np
import pytest

import graphc as gc


def _model():
    x = gc.input("x", ("N", 3))
    lab = gc.input("labels", ("N",), "int32")
    w = gc.param("ref.W", (3, 2))
    return x, lab, w, gc.nn.softmax_cross_entropy(x @ w, lab)


def test_evaluate_by_name_and_by_tensor():
    x, lab, w, loss = _model()
    rng = np.random.default_rng(0)
    xv, wv, lv = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32), [0, 1, 1, 0]
    a = gc.evaluate(loss, {"x": xv, "ref.W": wv, "labels": np.array(lv)})
    b = gc.evaluate(loss, {x: xv, w: wv, lab: np.array(lv, np.int64)})
    assert a.dtype == np.float32 and a == b
    z = xv @ wv
    want = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(4), lv])
    assert a == pytest.approx(want, rel=1e-6)
    both = gc.evaluate([loss, x @ w], {"x": xv, "ref.W": wv, "labels": np.array(lv)}, allow_unused=True)
    assert isinstance(both, list) and both[1].shape == (4, 2)


def test_float64_values_evaluate_in_float64():
    x = gc.input("x", (3,))
    y = gc.exp(x) * 3.0
    assert gc.evaluate(y, {"x": np.ones(3, np.float32)}).dtype == np.float32
    out = gc.evaluate(y, {"x": np.ones(3)})
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, 3 * np.e, rtol=1e-15)


def test_missing_name():
    x, lab, w, loss = _model()
    with pytest.raises(gc.InputError) as e:
        gc.evaluate(loss, {"x": np.ones((2, 3), np.float32), "labels": np.zeros(2, np.int32)})
    line = sys._getframe().f_lineno - 1
    msg = str(e.value)
    assert "missing" in msg and "'ref.W'" in msg and "f32[3,2]" in msg and f"test_reference.py:{line}" in msg


def test_unknown_name():
    x = gc.input("x", (2,))
    with pytest.raises(gc.InputError, match="unknown name.*'y_typo'.*reads: x"):
        gc.evaluate(x * 2, {"x": np.ones(2, np.float32), "y_typo": 1.0})
    assert gc.evaluate(x * 2, {"x": np.ones(2, np.float32), "y_typo": 1.0}, allow_unused=True).shape == (2,)
    other = gc.input("other_input", (3,))  # noqa: F841 - exists, but this graph does not read it: fine
    assert gc.evaluate(x * 2, {"x": np.ones(2, np.float32), "other_input": np.ones(3)}).shape == (2,)
    with pytest.raises(gc.InputError, match="computed tensor"):
        gc.evaluate(x * 2, {x * 2: np.ones(2, np.float32)})


def test_shape_mismatch_and_inconsistent_batch():
    x, lab, w, loss = _model()
    wv = np.ones((3, 2), np.float32)
    with pytest.raises(gc.ShapeError, match=r"input 'x'.*expected shape \[N,3\], got \(4, 5\)"):
        gc.evaluate(loss, {"x": np.ones((4, 5), np.float32), "ref.W": wv, "labels": np.zeros(4, np.int32)})
    with pytest.raises(gc.ShapeError, match="rank"):
        gc.evaluate(loss, {"x": np.ones(4, np.float32), "ref.W": wv, "labels": np.zeros(4, np.int32)})
    with pytest.raises(gc.ShapeError) as e:
        gc.evaluate(loss, {"x": np.ones((4, 3), np.float32), "ref.W": wv, "labels": np.zeros(5, np.int32)})
    msg = str(e.value)
    assert "dim N is 4" in msg and "'x'" in msg and "'labels'" in msg and "has 5 on axis 0" in msg


def test_dtype_mismatch():
    x, lab, w, loss = _model()
    ok = {"x": np.ones((2, 3), np.float32), "ref.W": np.ones((3, 2), np.float32)}
    with pytest.raises(gc.DTypeError, match="labels.*float32.*integers"):
        gc.evaluate(loss, dict(ok, labels=np.zeros(2, np.float32)))
    with pytest.raises(gc.DTypeError, match="float16"):
        gc.evaluate(loss, dict(ok, labels=np.zeros(2, np.int32), x=np.ones((2, 3), np.float16)))
    with pytest.raises(gc.GraphcError, match="labels"):
        gc.evaluate(loss, dict(ok, labels=object()))


def test_integers_that_do_not_fit_the_declared_dtype_are_an_error_not_wrapped():
    """The oracle took int64 labels/ids for an int32 input and wrapped them (2**32 + 1 read as id 1) where the
    compiled function refuses them."""
    x, lab, w, loss = _model()
    ok = {"x": np.ones((2, 3), np.float32), "ref.W": np.ones((3, 2), np.float32)}
    for bad, at in (([2**32 + 1, 0], 0), ([1, -2**31 - 1], 1), (np.array([0, 2**63 + 5], np.uint64), 1)):
        with pytest.raises(gc.InputError, match=rf"'labels' .* holds {np.asarray(bad)[at]} at index \({at},\), "
                                                r"outside int32's range \[-2147483648, 2147483647\]"):
            gc.evaluate(loss, dict(ok, labels=np.asarray(bad)))
    want = gc.evaluate(loss, dict(ok, labels=np.array([1, 0], np.int32)))
    assert gc.evaluate(loss, dict(ok, labels=np.array([1, 0], np.int64))) == want  # int64 that fits: fine
    assert gc.evaluate(loss, dict(ok, labels=np.array([1, 0], np.uint8))) == want


def test_a_dim_no_input_binds_is_an_error_naming_the_tensor_that_has_it():
    """gc.zeros(("N", 3)) takes N from an input with N; a graph that reads none has nothing to give it a value:
    evaluate and compile say so, naming the tensor and its line (evaluate said 'dim N needs a value for N', and
    compile accepted the graph and failed at every call)."""
    h0 = gc.zeros(("N", 3), "float32")
    _, ys = gc.scan(lambda h, _: (h + 1.0, h), h0, length=2)
    words = r"broadcast_to \(f32\[N,3\]\) at test_reference.py:\d+ has the dim N, but no input the graph reads has N"
    with pytest.raises(gc.ShapeError, match=rf"evaluate at test_reference.py:\d+: {words}"):
        gc.evaluate(ys, {})
    with pytest.raises(gc.ShapeError, match=rf"compile: {words}"):
        gc.compile(ys)
    xs = gc.input("xs", (2, "N", 3))  # with an input that has N, the same scan runs
    _, ys = gc.scan(lambda h, x: (h + x, h), h0, xs)
    assert gc.compile(ys)({"xs": np.ones((2, 4, 3), np.float32)}).shape == (2, 4, 3)


def test_duplicate_names_are_an_error():
    a = gc.input("dup", (2,))
    b = gc.input("dup", (3,))
    with pytest.raises(gc.GraphcError, match="two different tensors are named 'dup'"):
        gc.evaluate(gc.sum(a) + gc.sum(b), {"dup": np.ones(2, np.float32)})


def test_outputs_must_be_tensors():
    with pytest.raises(gc.GraphcError):
        gc.evaluate(3.0, {})
    with pytest.raises(gc.InputError):
        gc.evaluate(gc.input("x", (1,)), [1.0])


def test_results_do_not_alias_inputs():
    x = gc.input("x", (2,))
    v = np.ones(2, np.float32)
    out = gc.evaluate(x, {"x": v})
    out[0] = 5
    assert v[0] == 1


def test_dropout_inference_identity_and_training_masks():
    x = gc.input("x", ("N", 1000))
    y = gc.nn.dropout(x, 0.8)
    v = np.ones((4, 1000), np.float32)
    np.testing.assert_array_equal(gc.evaluate(y, {"x": v}), v)  # inference: identity, no key needed
    a = gc.evaluate(y, {"x": v, "rng_key": 7}, training=True)
    b = gc.evaluate(y, {"x": v, "rng_key": 7}, training=True)
    c = gc.evaluate(y, {"x": v, "rng_key": 8}, training=True)
    np.testing.assert_array_equal(a, b)  # same key, same mask
    assert (a != c).any()  # a fresh key, a fresh mask
    kept = a != 0
    assert abs(kept.mean() - 0.8) < 0.01
    np.testing.assert_allclose(a[kept], 1 / 0.8)  # inverted scaling
    # two layers get different masks under the same key
    h = gc.nn.dropout(x * 2.0, 0.8)
    m2 = gc.evaluate(h, {"x": v, "rng_key": 7}, training=True) != 0
    assert (m2 != kept).any()
    # the gradient is masked and scaled the same way
    g = gc.evaluate(gc.grad(gc.sum(y), x), {"x": v, "rng_key": 7}, training=True)
    np.testing.assert_array_equal(g, a)
    with pytest.raises(gc.InputError, match="rng_key"):
        gc.evaluate(y, {"x": v}, training=True)
    with pytest.raises(gc.GraphcError, match="keep_prob"):
        gc.nn.dropout(x, 0.0)


def test_dropout_takes_pytorchs_drop_probability_by_keyword():
    """dropout(x, keep) keeps `keep`; p= is PyTorch's probability of dropping (keyword only): the same mask as
    dropout(x, 1 - p); both or neither given is an error, as is a p outside [0, 1)."""
    x = gc.input("x", (4000,))
    v = {"x": np.ones(4000, np.float32), "rng_key": 7}
    by_p = gc.evaluate(gc.nn.dropout(x, p=0.25, salt=1), v, training=True)
    by_keep = gc.evaluate(gc.nn.dropout(x, 0.75, salt=1), v, training=True)
    np.testing.assert_array_equal(by_p, by_keep)
    assert 0.72 < (by_p > 0).mean() < 0.78
    assert gc.nn.dropout(x, p=0.0) is x
    for kw in ({}, {"keep_prob": 0.5, "p": 0.5}):
        with pytest.raises(gc.GraphcError, match="one of them"):
            gc.nn.dropout(x, **kw)
    for bad in (1.0, -0.1, "0.2", True):
        with pytest.raises(gc.GraphcError, match=r"p \(the probability of dropping an element\) must be"):
            gc.nn.dropout(x, p=bad)


def test_evaluate_asks_only_for_the_inputs_its_mode_reads():
    """A training_switch's training branch may read inputs of its own (a target, a scale, a layer's parameters):
    evaluate in inference asked for them though it never computes that branch. Now it asks for what the mode
    reads, as gc.compile's program does (its inputs, and the dims only they bind), and in training for all of
    them; a fitted model's predict, gc.compile and gc.evaluate agree without the training-only parameters."""
    x = gc.input("x_sw", ("N", 3))
    t = gc.input("t_sw", ("M", 3))
    s = gc.input("s_sw", ())
    y = gc.nn.training_switch(x * gc.sum(t, axis=0) + s, x * 2.0)
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(gc.evaluate(y, {"x_sw": X}), X * 2)
    np.testing.assert_array_equal(gc.compile([y])({"x_sw": X})[0], X * 2)
    T = np.ones((5, 3), np.float32)
    np.testing.assert_array_equal(gc.evaluate(y, {"x_sw": X, "t_sw": T, "s_sw": 1.0}, training=True), X * 5 + 1)
    with pytest.raises(gc.InputError, match=r"missing value\(s\) for input 't_sw'.*input 's_sw'"):
        gc.evaluate(y, {"x_sw": X}, training=True)

    def model(x, n_outputs):
        h = gc.nn.training_switch(gc.tanh(gc.nn.dense(x, 4, name="noise")) + x, x)  # trained, never predicted by
        return gc.nn.dense(h, n_outputs, name="out")

    rng = np.random.default_rng(0)
    Xf = rng.normal(size=(64, 4)).astype(np.float32)
    r = gc.fit(model, (Xf, Xf @ np.arange(4.0, dtype=np.float32)), epochs=2, batch_size=16, progress=False)
    out = model(gc.input("x", ("N", 4)), 1)
    kept = {"x": Xf, "out.W": r.params["out.W"], "out.b": r.params["out.b"]}
    want = gc.evaluate(out, kept)
    np.testing.assert_allclose(want, Xf @ r.params["out.W"] + r.params["out.b"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gc.compile([out])(kept)[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.predict(Xf), want, rtol=1e-5, atol=1e-5)
