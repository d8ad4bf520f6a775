"""Recurrent layers: parity with PyTorch's nn.RNN / nn.GRU / nn.LSTM (same weights; their equations in numpy,
tests/pytorch_reference.py, checked against torch in tests/test_references_match_pytorch.py), bidirectional and
return_sequences shapes, gradients by finite differences, native compilation, and embeddings."""

import numpy as np
import pytest
import pytorch_reference as ref

import graphc as gc
from graphc.autodiff.check import check_grad

T, N, F, H = 5, 3, 4, 6


def _pytorch_layer(kind, bidirectional):
    """A PyTorch layer's parameters, as its state_dict names and lays them out (weight_ih_l0 (G*H, F), ...)."""
    return ref.recurrent_weights(kind, F, H, bidirectional, seed=0)


def _weights(kind, layer, name, suffix=""):
    """graphc's parameters for PyTorch's: Wx = weight_ih.T, Wh = weight_hh.T, one bias (the GRU keeps both)."""
    g = lambda a: layer[f"{a}{suffix}"]  # noqa: E731
    out = {f"{name}.Wx": g("weight_ih_l0").T.copy(), f"{name}.Wh": g("weight_hh_l0").T.copy()}
    if kind == "gru":
        out[f"{name}.b"], out[f"{name}.bh"] = g("bias_ih_l0"), g("bias_hh_l0")
    else:
        out[f"{name}.b"] = g("bias_ih_l0") + g("bias_hh_l0")
    return out


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_pytorch(kind, bidirectional):
    layer = _pytorch_layer(kind, bidirectional)
    xs_np = np.random.default_rng(1).normal(size=(T, N, F))
    out, hn, _ = ref.recurrent(kind, xs_np, layer, bidirectional=bidirectional)
    xs = gc.input("xs", ("T", "N", F), "float64")
    fn = getattr(gc.nn, kind)
    seq = fn(xs, H, return_sequences=True, bidirectional=bidirectional, name=kind)
    last = fn(xs, H, bidirectional=bidirectional, name=kind)
    values = {"xs": xs_np, **_weights(kind, layer, kind)}
    if bidirectional:
        values.update(_weights(kind, layer, f"{kind}_reverse", "_reverse"))
    got_seq, got_last = gc.evaluate([seq, last], values)
    np.testing.assert_allclose(got_seq, out, rtol=1e-10, atol=1e-12)
    want_last = np.concatenate([hn[0], hn[1]], axis=1) if bidirectional else hn[0]
    np.testing.assert_allclose(got_last, want_last, rtol=1e-10, atol=1e-12)
    assert seq.shape[2] == (2 * H if bidirectional else H)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_padded_batches_with_lengths_match_pytorchs_packed_sequences(kind, bidirectional=True):
    """lengths=: past its end a sequence's carry is held and its outputs are 0, as PyTorch's packed sequences
    give them: the last h is each sequence's own last real step, the reverse pass starts from each own end; the
    same compiled, with symbolic T, and with checkpoint=2; gradients by finite differences."""
    layer = _pytorch_layer(kind, bidirectional)
    xs_np = np.random.default_rng(2).normal(size=(T, 4, F))
    lens = np.array([5, 2, 1, 4], np.int32)
    want_seq, hn, _ = ref.recurrent(kind, xs_np, layer, bidirectional=bidirectional, lengths=lens)
    want_last = np.concatenate([hn[0], hn[1]], axis=1) if bidirectional else hn[0]
    xs, L = gc.input("xs", ("T", "N", F), "float64"), gc.input("lengths", ("N",), "int32")
    values = {"xs": xs_np, "lengths": lens, **_weights(kind, layer, kind)}
    if bidirectional:
        values.update(_weights(kind, layer, f"{kind}_reverse", "_reverse"))
    fn = getattr(gc.nn, kind)
    for checkpoint in ((None, 2) if kind == "lstm" else (None,)):  # the masked step is one code path for all
        seq = fn(xs, H, return_sequences=True, bidirectional=bidirectional, name=kind, lengths=L,
                 checkpoint=checkpoint)
        last = fn(xs, H, bidirectional=bidirectional, name=kind, lengths=L, checkpoint=checkpoint)
        for got_seq, got_last in (gc.evaluate([seq, last], values),
                                  gc.compile([seq, last], threads=2, cache=False)(values)):
            np.testing.assert_allclose(got_seq, want_seq, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(got_last, want_last, rtol=1e-10, atol=1e-12)
    if kind == "rnn":  # the masked step is the same for every cell: the cheapest one checks its gradient
        check_grad(gc.sum(last * last) + gc.sum(seq * 0.5), [xs, *gc.nn.parameters(last)], values)
    with pytest.raises(gc.GraphcError, match="lengths has 3 sequences but xs"):
        fn(gc.input("x3", ("T", 4, F), "float64"), H, lengths=gc.input("l3", (3,), "int32"), name="bad")


def test_lstm_parameters_are_fused_and_named():
    xs = gc.input("xs", ("T", "N", F))
    h = gc.nn.lstm(xs, H, name="enc")
    shapes = {p.name: p.shape for p in gc.nn.parameters(h)}
    assert shapes == {"enc.Wx": (F, 4 * H), "enc.Wh": (H, 4 * H), "enc.b": (4 * H,)}


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_gradients_by_finite_differences(kind):
    xs = gc.input("xs", (3, 2, 2), "float64")
    out = getattr(gc.nn, kind)(xs, 3, return_sequences=True, name="r")
    loss = gc.sum(out * out)
    params = gc.nn.parameters(loss)
    values = {k: v.astype(np.float64) for k, v in gc.nn.init_params(params, seed=2).items()}
    values["xs"] = np.random.default_rng(3).normal(size=(3, 2, 2))
    check_grad(loss, [xs, *params], values, rtol=1e-6, atol=1e-8)


def test_the_input_projection_is_one_product_before_the_loop():
    xs = gc.input("xs", ("T", "N", F))
    h = gc.nn.lstm(xs, H)
    scan = next(n for n in gc.topo_order(h) if n.op.name == "scan")
    body = scan.attrs["body"]
    assert sum(1 for n in body.order() if n.op.name == "matmul") == 1  # only h @ Wh inside
    assert any(n.op.name == "matmul" and n.shape[0] == gc.dim("T") * gc.dim("N") for n in gc.topo_order(h))


def test_compiled_lstm_training_step_matches_the_reference():
    xs = gc.input("xs", ("T", "N", F))
    y = gc.input("y", ("N",), "int32")
    logits = gc.nn.dense(gc.nn.lstm(xs, H, name="l"), 3, name="out")
    loss = gc.nn.softmax_cross_entropy(logits, y)
    params = gc.nn.parameters(loss)
    outs = [loss, *gc.grad(loss, params)]
    values = gc.nn.init_params(params, seed=0)
    values.update(xs=np.random.default_rng(0).normal(size=(7, N, F)).astype(np.float32),
                  y=np.array([0, 2, 1], np.int32))
    got = gc.compile(outs, threads=2)(values)
    want = gc.evaluate(outs, values)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_checkpointed_layer_matches_the_default_and_keeps_no_sequence_sized_buffer(kind):
    """checkpoint=k moves the input projection into the step: loss and every gradient (xs included) are the
    default layer's, by finite differences too, and the compiled program holds no (T, N, G*H) buffer."""
    t, gh = 12, {"rnn": 1, "gru": 3, "lstm": 4}[kind] * H
    xs = gc.input("xs", (t, N, F), "float64")
    losses = {}
    for ck in (None, 4):
        out = getattr(gc.nn, kind)(xs, H, name="r", checkpoint=ck)
        losses[ck] = gc.sum(gc.tanh(out) * out)
    params = gc.nn.parameters(losses[None])
    values = {k: v.astype(np.float64) for k, v in gc.nn.init_params(params, seed=2).items()}
    values["xs"] = np.random.default_rng(3).normal(size=(t, N, F))
    outs = {ck: [loss, *gc.grad(loss, [xs, *params])] for ck, loss in losses.items()}
    want = gc.evaluate(outs[None], values)
    fn = gc.compile(outs[4], threads=1)
    for g, w in zip(fn(values), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)
    sizes = [size for _, _, size in fn.memory_plan.placement()]
    assert max(sizes) < t * N * gh * 8 / 2, sizes
    check_grad(losses[4], [xs, *params], values, rtol=1e-6, atol=1e-8)


def test_lstm_training_input_projection_gradient_reuses_the_projection():
    """The reverse loop reads the stored residuals (8 (T, N, H) values: i, f, o and their pre-activations, whose
    accurate gradient s(x)s(-x) reads them, tanh(g), tanh(c)) and the h, c histories, not the (T, N, 4H) input
    projection, so the projection's gradient takes its storage: 10 + 4 = 14 (T, N, H) buffers, not 10 + 2 x 4."""
    t, n, f, h = 40, 8, 4, 16
    xs = gc.input("xs", (t, "N", f))
    y = gc.input("y", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.nn.lstm(xs, h, name="l"), 3, name="out"), y)
    params = gc.nn.parameters(loss)
    outs = [loss, *gc.grad(loss, params)]
    values = gc.nn.init_params(params, seed=0)
    values.update(xs=np.random.default_rng(0).normal(size=(t, n, f)).astype(np.float32),
                  y=np.arange(n, dtype=np.int32) % 3)
    fn = gc.compile(outs, threads=1)
    for g, w in zip(fn(values), gc.evaluate(outs, values), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    per_step = t * n * h * 4
    assert fn.memory_plan.arena_bytes < 15 * per_step, (fn.memory_plan.arena_bytes / per_step, fn.memory_plan)


def test_embedding_gathers_rows_and_accumulates_gradients():
    ids = gc.input("ids", ("N", 3), "int64")
    e = gc.nn.embedding(ids, 5, 2, name="emb")
    assert e.shape == (gc.dim("N"), 3, 2)
    table = np.arange(10.0).reshape(5, 2)
    idv = np.array([[0, 4, 4], [1, 0, 0]])
    np.testing.assert_array_equal(gc.evaluate(e, {"ids": idv, "emb.E": table}), table[idv])
    g = gc.evaluate(gc.grad(gc.sum(e), gc.nn.parameters(e)[0]), {"ids": idv, "emb.E": table})
    np.testing.assert_array_equal(g[:, 0], [3, 1, 0, 0, 2])  # duplicates add up
    with pytest.raises(gc.GraphcError, match=r"embedding 'emb': id 5 is out of range \[0, 5\) at test_recurrent.py"):
        gc.evaluate(e, {"ids": np.array([[0, 5, 1]]), "emb.E": table})
    with pytest.raises(gc.InputError, match=r"embedding 'emb': id 5 is out of range \[0, 5\) at test_recurrent.py"
                                             r".*nothing was run"):  # an input's ids: checked before the call
        gc.compile([e])({"ids": np.array([[0, 5, 1]]), "emb.E": table.astype(np.float32)})
    computed = gc.nn.embedding(gc.maximum(ids, -100), 5, 2, name="emb")  # checked in the kernel
    with pytest.raises(gc.InputError, match=r"embedding 'emb': id out of range \[0, 5\) at test_recurrent.py"):
        gc.compile([computed])({"ids": np.array([[0, 5, 1]]), "emb.E": table.astype(np.float32)})
    with pytest.raises(gc.DTypeError, match="ids must be int32 or int64"):
        gc.nn.embedding(gc.input("f", (2,)), 5, 2)


def test_a_computed_id_out_of_range_leaves_the_parameters_and_out_arrays_as_they_were():
    """A computed index is checked in the kernel, after the call has run: the step used to leave the embedding
    table and the other parameters updated in place by that run (and out= written). They are now restored."""
    ids = gc.input("ids", ("N", 3), "int64")
    e = gc.nn.embedding(gc.maximum(ids, -100), 5, 2, name="emb")
    loss = gc.sum(gc.nn.dense(e, 1, name="head"))
    params = gc.nn.parameters(loss)
    fn = gc.compile([loss], updates={p: p - 0.5 * g for p, g in zip(params, gc.grad(loss, params), strict=True)})
    values = gc.nn.init_params(params, seed=0)
    before = {k: v.copy() for k, v in values.items()}
    out = np.full((), 7.0, np.float32)
    fn({**values, "ids": np.array([[0, 1, 2]])}, out=[out])  # a good call updates everything
    assert all(not np.array_equal(values[k], before[k]) for k in ("emb.E", "head.W"))
    good, first = {k: v.copy() for k, v in values.items()}, out.copy()
    assert first != 7.0
    with pytest.raises(gc.InputError, match=r"id out of range \[0, 5\) at test_recurrent.py.*hold their values "
                                             r"from before the call"):
        fn({**values, "ids": np.array([[0, 5, 1]])}, out=[out])
    for k, v in values.items():
        np.testing.assert_array_equal(v, good[k], err_msg=k)
    assert out == first  # out= keeps the first call's loss


def test_a_tied_embedding_is_one_parameter_and_a_redeclaration_with_another_init_says_so():
    """Tying the input embedding to the output layer (logits = h @ E.T, PyTorch's `decoder.weight =
    encoder.weight`): the table taken from gc.nn.parameters is one parameter whose gradient sums both uses;
    declaring it again by name with the default init makes a second parameter of the same name, refused with a
    message that names the two initializers and the way to share it (it said only "give them distinct names")."""
    ids = gc.input("ids", ("N",), "int64")
    x = gc.nn.embedding(ids, 5, 3, name="emb")
    (table,) = gc.nn.parameters(x)
    loss = gc.sum(gc.sin(x @ gc.transpose(table)))
    E = np.random.default_rng(0).normal(size=(5, 3))
    idv = np.array([1, 4, 1])
    g = gc.evaluate(gc.grad(loss, table), {"ids": idv, "emb.E": E})
    c = np.cos(E[idv] @ E.T)  # d loss / d logits
    want = c.T @ E[idv]  # through the output layer
    np.add.at(want, idv, c @ E)  # through the gathered rows
    np.testing.assert_allclose(g, want, rtol=1e-12)
    assert gc.nn.parameters(loss) == [table]
    again = gc.param("emb.E", (5, 3))  # he_normal: another parameter
    with pytest.raises(gc.GraphcError, match=r"two different tensors are named 'emb.E': the parameter "
                       r"f32\[5,3\] is declared twice with different initializers, init=Normal\(std=1.0\) at "
                       r"test_recurrent.py:\d+ in emb and init='he_normal' .*gc.nn.parameters\(layer_output\)"):
        gc.evaluate(x @ gc.transpose(again), {"ids": idv, "emb.E": E.astype(np.float32)})


def test_bad_layer_inputs():
    with pytest.raises(gc.GraphcError, match=r"time-major \(T, N, F\)"):
        gc.nn.lstm(gc.input("x2", ("N", F)), H)
    with pytest.raises(gc.GraphcError, match="hidden must be a positive int"):
        gc.nn.gru(gc.input("xs", ("T", "N", F)), 0)
    # batch-first data (PyTorch's batch_first=True) read as time-major would loop over the batch, silently
    for kind in ("rnn", "gru", "lstm"):
        for shape in (("N", "T", F), ("N", 7, F)):
            with pytest.raises(gc.GraphcError, match=r"its first axis is the batch dim N .*batch_first=True.*"
                                                     r"gc.transpose\(xs, \(1, 0, 2\)\)"):
                getattr(gc.nn, kind)(gc.input("bf", shape), H, name="bf")
    assert gc.nn.lstm(gc.transpose(gc.input("bf", ("N", "T", F)), (1, 0, 2)), H, name="bf").shape == (gc.dim("N"), H)


def test_the_digits_rows_example_trains_natively():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "lstm_digits_rows.py"
    res = gc.fit(str(path), "digits", progress=False, epochs=8, seed=0)
    assert res.metrics["test_accuracy"] > 0.9, res.metrics


def test_a_recurrent_model_exports_and_predicts_as_in_process(tmp_path):
    import ctypes
    import subprocess
    import sys
    from pathlib import Path

    from graphc.fitting import load_model_file

    path = Path(__file__).resolve().parents[2] / "examples" / "lstm_digits_rows.py"
    gc.fit(str(path), "digits", progress=False, epochs=2, seed=0, out=tmp_path / "run")
    lib = tmp_path / "librows.so"
    p = subprocess.run([sys.executable, "-m", "graphc.cli", "export", "--model", str(path), "--weights",
                        str(tmp_path / "run"), "-o", str(lib)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    X = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    out = np.zeros((5, 10), np.float32)
    so = ctypes.CDLL(str(lib))
    # features as the model sees them (standardized); rows_predict would standardize raw ones first
    so.rows_predict_standardized.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    assert so.rows_predict_standardized(X.ctypes.data, 5, out.ctypes.data) == 0
    from graphc.nn.train import model_input

    model, _ = load_model_file(str(path))
    x = gc.input("x", ("N", 64))
    y = model(model_input(model, x, (8, 8, 1)), 10)  # the digits' rows as time-major sequences (8, N, 8)
    weights = dict(np.load(tmp_path / "run" / "weights.npz"))
    want = gc.compile(y, threads=1)({**weights, "x": X})
    np.testing.assert_array_equal(out, want)


def test_layer_flags_and_names_are_checked():
    """return_sequences="no" and bidirectional="yes" were taken as true; name="" made parameters '.Wx'."""
    xs = gc.input("xs", (4, "N", 3))
    for kw, words in ((dict(return_sequences="no"), "return_sequences must be True or False, got 'no'"),
                      (dict(bidirectional="yes"), "bidirectional must be True or False, got 'yes'"),
                      (dict(name=""), "name must be a non-empty string"), (dict(name=3), "name must be")):
        for layer in (gc.nn.rnn, gc.nn.gru, gc.nn.lstm):
            with pytest.raises(gc.GraphcError, match=words):
                layer(xs, 2, **kw)
    with pytest.raises(gc.GraphcError, match="dense: name must be a non-empty string"):
        gc.nn.dense(gc.input("x", ("N", 3)), 2, name=" ")


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_initial_and_final_states_are_pytorchs(kind, bidirectional):
    """initial_state (PyTorch's h0, or (h0, c0)) starts the carry; return_state gives (output, final state), the
    state PyTorch returns as h_n (and c_n) — an encoder's state for a decoder. Compiled, with its gradient into
    the initial state by finite differences."""
    layer = _pytorch_layer(kind, bidirectional)
    rng = np.random.default_rng(7)
    xs_np = rng.normal(size=(T, N, F))
    nd = 2 if bidirectional else 1
    h0_np, c0_np = rng.normal(size=(nd, N, H)), rng.normal(size=(nd, N, H))
    out, hn, cn = ref.recurrent(kind, xs_np, layer, bidirectional=bidirectional, h0=h0_np, c0=c0_np)
    xs = gc.input("xs", ("T", "N", F), "float64")
    h0, c0 = gc.input("h0", (nd, "N", H), "float64"), gc.input("c0", (nd, "N", H), "float64")

    def state(d):
        return (h0[d], c0[d]) if kind == "lstm" else h0[d]

    init = (state(0), state(1)) if bidirectional else state(0)
    seq, fin = getattr(gc.nn, kind)(xs, H, return_sequences=True, bidirectional=bidirectional, name=kind,
                                    initial_state=init, return_state=True)
    finals = list(fin) if bidirectional else [fin]
    flat = [f[j] for f in finals for j in range(2)] if kind == "lstm" else finals
    values = {"xs": xs_np, "h0": h0_np, "c0": c0_np, **_weights(kind, layer, kind)}
    if bidirectional:
        values.update(_weights(kind, layer, f"{kind}_reverse", "_reverse"))
    if kind != "lstm":
        del values["c0"]
    got = gc.compile([seq, *flat])(values)
    np.testing.assert_allclose(got[0], out, rtol=1e-10, atol=1e-12)
    hn_t = [hn, cn] if kind == "lstm" else [hn]
    for d in range(nd):
        for j, want in enumerate(hn_t):
            np.testing.assert_allclose(got[1 + d * len(hn_t) + j], want[d], rtol=1e-10, atol=1e-12)
    check_grad(gc.sum(gc.tanh(seq)), [h0], values, rtol=1e-6, atol=1e-9)


def test_a_bad_initial_state_is_named():
    xs = gc.input("xs", (T, "N", F))
    with pytest.raises(gc.GraphcError, match=r"lstm 'enc': initial_state must be a pair \(h0, c0\)"):
        gc.nn.lstm(xs, H, name="enc", initial_state=gc.zeros(("N", H)))
    with pytest.raises(gc.GraphcError, match=r"gru 'g': initial_state must be h0, each float32 \(N, H\) = \(N, 6\)"):
        gc.nn.gru(xs, H, name="g", initial_state=gc.zeros(("N", H + 1)))
    with pytest.raises(gc.GraphcError, match=r"a bidirectional layer's initial_state is a pair"):
        gc.nn.rnn(xs, H, name="r", bidirectional=True, initial_state=gc.zeros(("N", H)))
    with pytest.raises(gc.GraphcError, match=r"return_state must be True or False"):
        gc.nn.rnn(xs, H, name="r2", return_state="yes")
