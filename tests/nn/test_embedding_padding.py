"""gc.nn.embedding(padding_idx=...) against a numpy reference of PyTorch's nn.Embedding(padding_idx=...): the
padding row starts at zero (numpy and native initialization alike), its lookups give zero rows and it gets no
gradient, so training leaves it at zero; a negative padding_idx counts from the end; bad ones are refused at
the user's line."""

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.init import reference, spec_for
from graphc.fitting import fit
from graphc.nn.train import TrainConfig, Trainer

VOCAB, DIM = 6, 3
IDS = np.array([[2, 0, 5, 0], [0, 1, 2, 0]])  # the padding id 0 several times, 2 twice


def torch_embedding(E, ids, g, padding_idx):
    """PyTorch's nn.Embedding forward and weight gradient for the cotangent g: the rows themselves, and the
    scatter-add of g except into the padding row (embedding_backward skips it)."""
    out = E[ids]
    dE = np.zeros_like(E)
    keep = ids != padding_idx
    np.add.at(dE, ids[keep], g[keep])
    return out, dE


def _model(padding_idx, name="emb"):
    ids = gc.input("ids", ("N", 4), "int64")
    w = gc.input("w", ("N", 4, DIM))
    e = gc.nn.embedding(ids, VOCAB, DIM, name=name, padding_idx=padding_idx)
    loss = gc.sum(gc.sin(e) * w)
    return e, loss, gc.nn.parameters(e)[0]


def test_output_and_gradient_match_pytorch_evaluated_and_compiled():
    e, loss, table = _model(0)
    values = gc.nn.init_params([table], seed=3)
    E = values["emb.E"]
    assert np.all(E[0] == 0) and np.all(E[1:] != 0)  # PyTorch zeroes the padding row at init
    w = np.random.default_rng(0).normal(size=IDS.shape + (DIM,)).astype(np.float32)
    feed = {"emb.E": E, "ids": IDS, "w": w}
    want_out, want_dE = torch_embedding(E, IDS, np.cos(E[IDS]) * w, 0)
    assert np.any(want_dE[2] != 0) and np.all(want_dE[0] == 0)
    g = gc.grad(loss, table)
    got_out, got_dE = gc.evaluate([e, g], feed)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-6)
    np.testing.assert_allclose(got_dE, want_dE, rtol=1e-5, atol=1e-6)
    c_out, c_dE = gc.compile([e, g])(feed)
    np.testing.assert_allclose(c_out, want_out, rtol=1e-6)
    np.testing.assert_allclose(c_dE, want_dE, rtol=1e-5, atol=1e-6)
    assert np.all(c_dE[0] == 0)
    # the choice documented: the padding id reads zeros even if the row is written nonzero (PyTorch: the row)
    E2 = E.copy()
    E2[0] = 7.0
    assert np.all(gc.evaluate(e, dict(feed, **{"emb.E": E2}))[IDS == 0] == 0)


def test_sgd_steps_leave_the_padding_row_zero_as_pytorch():
    _, loss, table = _model(0)
    g = gc.grad(loss, table)
    lr = 0.3
    fn = gc.compile([loss], updates={table: table - lr * g})
    values = gc.nn.init_params([table], seed=1)
    E = values["emb.E"].astype(np.float64)
    rng = np.random.default_rng(2)
    for _ in range(3):
        w = rng.normal(size=IDS.shape + (DIM,)).astype(np.float32)
        fn({**values, "ids": IDS, "w": w})  # updates emb.E in place
        _, dE = torch_embedding(E, IDS, np.cos(E[IDS]) * w, 0)
        E = E - lr * dE
    np.testing.assert_allclose(values["emb.E"], E, rtol=1e-4, atol=1e-5)
    assert np.all(values["emb.E"][0] == 0)


def test_negative_padding_idx_counts_from_the_end():
    e, loss, table = _model(-2, name="neg")
    values = gc.nn.init_params([table], seed=0)
    E = values["neg.E"]
    assert np.all(E[VOCAB - 2] == 0) and np.count_nonzero(np.all(E == 0, axis=1)) == 1
    ids = np.array([[4, 4, 1, 5]])
    w = np.ones((1, 4, DIM), np.float32)
    g = gc.evaluate(gc.grad(loss, table), {"neg.E": E, "ids": ids, "w": w})
    _, want = torch_embedding(E, ids, np.cos(E[ids]) * w, VOCAB - 2)
    np.testing.assert_allclose(g, want, rtol=1e-6)
    assert np.all(g[4] == 0) and np.all(g[5] != 0)


def test_native_initialization_zeroes_the_row_too():
    """The initializer a gc.fit run and a standalone binary use (graphc.codegen.init) zeroes the same row."""

    def model(tokens, n_outputs):
        e = gc.nn.embedding(tokens, VOCAB, DIM, name="emb", padding_idx=VOCAB - 1)
        return gc.nn.dense(gc.mean(e, axis=0), n_outputs, name="out")

    tr = Trainer(model, "multiclass", 4, 2, TrainConfig(), log=lambda m: None)
    assert tr.native_init
    E = tr.init_state(5)["emb.E"]
    (p,) = [p for p in tr.params if p.name == "emb.E"]
    want = reference(spec_for(0, p.name, p.shape, p.meta["init"]), 5).reshape(p.shape)
    np.testing.assert_array_equal(E, want)
    assert np.all(E[-1] == 0) and np.all(E[:-1] != 0)


@pytest.mark.parametrize("bad, msg", [
    (6, r"padding_idx 6 is out of range for vocab 6; use a row in \[0, 6\) or count from the end in \[-6, -1\]"),
    (-7, r"padding_idx -7 is out of range for vocab 6"),
    (1.0, r"padding_idx must be an int \(a row of the table\) or None, got 1.0"),
    (True, r"padding_idx must be an int .* got True"),
])
def test_bad_padding_idx_names_the_layer_and_the_line(bad, msg):
    ids = gc.input("ids", ("N",), "int64")
    with pytest.raises(gc.GraphcError, match=rf"embedding 'tok': {msg}.* \(at test_embedding_padding.py:\d+"):
        gc.nn.embedding(ids, VOCAB, DIM, name="tok", padding_idx=bad)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fit_on_padded_tokens_keeps_the_padding_row_zero(optimizer):
    rng = np.random.default_rng(0)
    n, T = 120, 5
    X = rng.integers(1, VOCAB, size=(n, T))
    lengths = rng.integers(1, T + 1, size=n)
    X[np.arange(T) >= lengths[:, None]] = 0  # id 0 pads each sequence after its length
    y = (X == 3).any(axis=1).astype(np.int64)

    def model(tokens, n_outputs):
        e = gc.nn.embedding(tokens, VOCAB, DIM, name="emb", padding_idx=0)  # (T, N, DIM)
        return gc.nn.dense(gc.sum(e, axis=0), n_outputs, name="out")

    extra = {"weight_decay": 0.1} if optimizer == "adamw" else {}
    r = fit(model, (X, y), progress=False, epochs=3, lr=0.05, optimizer=optimizer, seed=0, **extra)
    E = r.params["emb.E"]
    assert np.all(E[0] == 0)
    start = Trainer(model, "multiclass", T, 2, TrainConfig(), log=lambda m: None).init_state(0)["emb.E"]
    moved = np.abs(E - start).max(axis=1)
    assert np.all(moved[1:] > 0) and moved.max() < 0.6  # the other rows trained from the same start (9 steps)


def test_the_mask_keeps_an_sgd_step_sparse():
    """The masked cotangent still reaches the table as scatter_add(0, ids, r): the update is applied in place at
    the ids (no kernel loops over the whole vocab x dim table), and the padding row does not move."""
    vocab = 301
    ids = gc.input("ids", ("N", 3), "int64")
    lr = gc.input("lr", ())
    e = gc.nn.embedding(ids, vocab, 8, name="sparse", padding_idx=7)
    loss = gc.sum(gc.tanh(gc.mean(e, axis=1) @ gc.param("sparse_w", (8, 4))) ** 2)
    E, W = gc.nn.parameters(loss)
    gE, gW = gc.grad(loss, [E, W])
    fn = gc.compile([loss], updates={E: E - lr * gE, W: W - lr * gW}, cache=False)
    assert "scatter-add" in fn.kernels and "over [301,8]" not in fn.kernels, fn.kernels
    values = gc.nn.init_params([E, W], seed=0)
    before = values["sparse.E"].copy()
    idv = np.array([[7, 5, 7], [1, 7, 0]])
    want = gc.evaluate(E - lr * gE, {**values, "ids": idv, "lr": np.float32(0.3)})
    fn({**values, "ids": idv, "lr": np.float32(0.3)})
    np.testing.assert_allclose(values["sparse.E"], want, rtol=2e-6, atol=1e-6)
    assert np.all(values["sparse.E"][7] == 0) and not np.array_equal(values["sparse.E"][5], before[5])


@pytest.mark.parametrize("form", ["square", "sin"])
def test_an_update_whose_gradient_reads_the_gathered_rows_stays_sparse_and_reads_the_old_rows(form):
    """E <- E - lr * grad, where the gradient reads the rows the step adds to (d/dE of sum(E[ids]**2) or
    sum(sin(E[ids]))): the in-place add was a hazard (a repeated id would read a row already updated), so the
    whole vocab x dim table was copied, scatter-added and copied back. The updates are now computed first, at
    the batch's size, and added in place; with repeated ids every row's gradient reads the old rows, bitwise on
    1-3 threads."""
    vocab = 401
    ids = gc.input("ids", ("N",), "int32")
    e = gc.nn.embedding(ids, vocab, 16, name="rows")
    (E,) = gc.nn.parameters(e)
    loss = gc.sum(e * e) if form == "square" else gc.sum(gc.sin(e))
    fn = gc.compile([loss], updates={E: E - 0.1 * gc.grad(loss, E)}, cache=False)
    assert "scatter-add" in fn.kernels and "over [401,16]" not in fn.kernels, fn.kernels
    start = gc.nn.init_params([E], seed=1)["rows.E"]
    idv = np.array([3, 9, 3, 3, 400, 9, 0], np.int32)
    want = gc.evaluate(E - 0.1 * gc.grad(loss, E), {"ids": idv, "rows.E": start})
    got = []
    for threads in (1, 2, 3):
        table = gc.nn.init_params([E], seed=1)["rows.E"]
        fn({"ids": idv, "rows.E": table}, threads=threads)
        got.append(table)
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-7)
    assert all(np.array_equal(g, got[0]) for g in got[1:])
    untouched = np.setdiff1d(np.arange(vocab), idv)
    assert np.array_equal(got[0][untouched], start[untouched])


def padded_model(tokens, n_outputs):
    e = gc.nn.embedding(tokens, VOCAB, DIM, name="emb", padding_idx=0)  # (T, N, DIM)
    return gc.nn.dense(gc.tanh(gc.sum(e, axis=0)), n_outputs, name="out")


def test_a_training_binary_keeps_the_padding_row_zero_and_export_predicts_as_gc_load(tmp_path):
    """Through `graphc build` (the binary initializes and trains the table natively, Adam's moments included) the
    padding row is zero after training while the others move; `graphc export` of the binary's run computes what
    gc.load(run).predict does, bitwise, the padding id reading zeros."""
    import ctypes
    import subprocess

    from graphc.aot import build, export
    from graphc.fitting import load

    rng = np.random.default_rng(0)
    n, T = 96, 5
    X = rng.integers(1, VOCAB, size=(n, T))
    X[np.arange(T) >= rng.integers(1, T + 1, size=n)[:, None]] = 0  # id 0 pads each sequence after its length
    y = (X == 3).any(axis=1).astype(np.int64)
    np.savez(tmp_path / "tok.npz", X=X, y=y)
    binary = build(tmp_path / "train-pad", model=padded_model, data=str(tmp_path / "tok.npz"), optimizer="adam",
                   lr=0.05, max_batch=64).path
    np.save(tmp_path / "x.npy", X.astype(np.int32))
    np.save(tmp_path / "y.npy", y.astype(np.float32))  # two classes: a binary task, 0/1 targets
    start = Trainer(padded_model, "binary", T, 1, TrainConfig(optimizer="adam"),
                    log=lambda m: None).init_state(0)["emb.E"]
    trained = {}
    for tag, lr in (("still", "1e-30"), ("run", "0.05")):  # 1e-30 moves no float32: the binary's initial table
        out = tmp_path / tag
        p = subprocess.run([str(binary), "--x-train", str(tmp_path / "x.npy"), "--y-train", str(tmp_path / "y.npy"),
                            "--epochs", "3", "--batch-size", "16", "--lr", lr, "--quiet", "--out", str(out)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        trained[tag] = np.load(out / "emb.E.npy")
    np.testing.assert_array_equal(trained["still"], start)
    E = trained["run"]
    assert np.all(start[0] == 0) and np.all(E[0] == 0) and np.all(np.abs(E - start).max(axis=1)[1:] > 0)
    want = load(out, model=padded_model).predict(X.astype(np.float32))
    lib = export(tmp_path / "libpad.so", out, model=padded_model)
    rows = np.ascontiguousarray(X, np.float32)
    got = np.full(want.shape, -7.0, np.float32)
    rc = ctypes.CDLL(str(lib.path)).pad_predict(rows.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n),
                                               got.ctypes.data_as(ctypes.c_void_p))
    assert rc == 0
    np.testing.assert_array_equal(got, want)
