"""Datasets of sequences for gc.fit / graphc train: a model asks for `sequences` (time-major (T, N, F): the
digits' 8 rows, a .npz whose X is (N, T, F)) or `tokens` (time-major int32 ids (T, N) from a .npz whose X is
(N, T) integers); bad data (ids not integers, ids outside the vocabulary, ragged sequences) is refused naming
the array, row and step (or the model's embedding and its line), and the CLI exits 2 writing nothing."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import data
from graphc.fitting import fit
from graphc.nn.train import TrainConfig, Trainer

VOCAB = 7


def seq_model(sequences, n_outputs):
    return gc.nn.dense(gc.nn.rnn(sequences, 8, name="r"), n_outputs, name="out")


def token_model(tokens, n_outputs):
    e = gc.nn.embedding(tokens, VOCAB, 4, name="emb")  # (T, N, 4)
    return gc.nn.dense(gc.nn.gru(e, 8, name="g"), n_outputs, name="out")


def _tokens(tmp_path, n=80, T=6, **extra):
    rng = np.random.default_rng(0)
    X = rng.integers(0, VOCAB, size=(n, T))
    y = (X == 3).any(axis=1).astype(np.int64)  # does the sequence hold a 3?
    path = tmp_path / "tok.npz"
    np.savez(path, X=X, y=y, **extra)
    return path, X, y


@pytest.fixture(scope="module")
def token_binary(tmp_path_factory):
    """The training binary of token_model for _tokens' data (a binary task on (rows, 6) ids), built once for the
    two tests that run it (each built the same program, options and data shape)."""
    from graphc.aot import build

    d = tmp_path_factory.mktemp("token-binary")
    return build(d / "train-tok", model=token_model, data=str(_tokens(d)[0])).path


def test_digits_as_sequences_of_their_rows():
    seen = []

    def model(sequences, n_outputs):
        seen.append(sequences)
        return seq_model(sequences, n_outputs)

    Trainer(model, "multiclass", 64, 10, TrainConfig(), log=lambda m: None, grid=data.load("digits").grid)
    xs = seen[0]
    assert xs.shape == (8, gc.dim("N"), 8) and xs.dtype == "float32"
    X = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    got = gc.evaluate(xs, {"x": X})
    np.testing.assert_array_equal(got[:, 1], X[1].reshape(8, 8))  # step t of example 1 is its row t
    with pytest.raises(gc.GraphcError, match="asks for sequences.*breast_cancer has no grid"):
        fit(seq_model, "breast_cancer", progress=False, epochs=1)
    with pytest.raises(gc.GraphcError, match=r"asks for sequences \(T, N, F\).*grid \(8, 7, 2\).*`images`"):
        Trainer(seq_model, "multiclass", 112, 2, TrainConfig(), log=lambda m: None, grid=(8, 7, 2))


def test_npz_sequences_train_and_predict(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 5, 3)).astype(np.float32)
    y = (X[:, :, 0].sum(1) > 0).astype(np.int64)
    np.savez(tmp_path / "seq.npz", X=X, y=y)
    ds = data.load(str(tmp_path / "seq.npz"))
    assert ds.grid == (5, 3, 1) and ds.n_features == 15 and not ds.tokens
    r = fit(seq_model, str(tmp_path / "seq.npz"), task="multiclass", progress=False, epochs=2, lr=0.05)
    assert np.isfinite(r.metrics["test_loss"])
    assert r.predict(ds.X_test).shape == (len(ds.X_test), 2)


def test_token_ids_train_unstandardized_and_learn(tmp_path):
    path, X, y = _tokens(tmp_path, n=300, vocab=np.int64(VOCAB))
    ds = data.load(str(path), tokens=True)
    assert ds.tokens and ds.vocab == VOCAB and ds.x_mean is None
    assert ds.X_train.dtype == np.float32 and set(np.unique(ds.X_train)) <= set(range(VOCAB))
    r = fit(token_model, str(path), progress=False, epochs=25, lr=0.05, optimizer="adam", seed=1)
    assert r.metrics["test_accuracy"] > 0.85, r.metrics  # a majority guess gets about 0.6
    # the ids the model sees are the file's, time-major
    seen = []

    def model(tokens, n_outputs):
        seen.append(tokens)
        return token_model(tokens, n_outputs)

    Trainer(model, "multiclass", 6, 2, TrainConfig(), log=lambda m: None)
    assert seen[0].dtype == "int32" and seen[0].shape == (6, gc.dim("N"))
    np.testing.assert_array_equal(gc.evaluate(seen[0], {"x": ds.X_train[:3]}), ds.X_train[:3].T.astype(np.int32))


def test_bad_token_data_is_refused_by_name(tmp_path):
    path, X, y = _tokens(tmp_path)
    np.savez(tmp_path / "float.npz", X=X.astype(np.float64), y=y)
    with pytest.raises(data.DataError, match=r"float.npz: token ids X hold float64 values, not integers; save "
                                             r"them as int32 or int64 \(e.g. X.astype\(np.int32\)\)"):
        fit(token_model, str(tmp_path / "float.npz"), progress=False, epochs=1)
    # the same ids passed in memory: nothing was saved, so the fix is how they are passed
    with pytest.raises(data.DataError, match=r"^arrays: token ids X hold float64 values, not integers; pass them as "
                                             r"integers \(X.astype\(np.int32\)\)$"):
        fit(token_model, (X.astype(np.float64), y), progress=False, epochs=1)
    bad = X.copy()
    bad[4, 2] = VOCAB + 2
    np.savez(tmp_path / "big.npz", X=bad, y=y, vocab=np.int64(VOCAB))
    with pytest.raises(data.DataError, match=r"token id 9 in row 4, step 2 of X: outside the vocabulary \[0, 7\) "
                                             "the file declares"):
        fit(token_model, str(tmp_path / "big.npz"), progress=False, epochs=1)
    neg = X.copy()
    neg[1, 0] = -1
    np.savez(tmp_path / "neg.npz", X=neg, y=y)
    with pytest.raises(data.DataError, match=r"token id -1 in row 1, step 0 of X: token ids are >= 0"):
        data.load(str(tmp_path / "neg.npz"), tokens=True)
    # no vocabulary in the file: the model's embedding is the limit, named with its line
    np.savez(tmp_path / "over.npz", X=bad, y=y)
    line = token_model.__code__.co_firstlineno + 1
    with pytest.raises(gc.InputError, match=rf"token id 9 in row 4 of the data \(\w+ split row \d+\), step 2 is "
                                            rf"outside the vocabulary \[0, 7\) "
                                            rf"of the model's embedding 'emb.E' \(made at test_sequence_data.py:"
                                            rf"{line}\b"):
        fit(token_model, str(tmp_path / "over.npz"), progress=False, epochs=1)
    np.savez(tmp_path / "wide.npz", X=X, y=y, vocab=np.int64(50))
    with pytest.raises(gc.GraphcError, match=r"declares a vocabulary of 50 token ids but the model's embedding "
                                             rf"'emb.E' \(made at test_sequence_data.py:{line}\b.*\) has 7 rows"):
        fit(token_model, str(tmp_path / "wide.npz"), progress=False, epochs=1)
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.arange(3), np.arange(5), np.arange(2)]
    np.savez(tmp_path / "ragged.npz", X=ragged, y=np.arange(3))
    for tokens in (True, False):
        with pytest.raises(data.DataError, match=r"ragged.npz: array 'X' cannot be read: .*different lengths "
                                                 r"\(ragged\): pad them to one length T"):
            data.load(str(tmp_path / "ragged.npz"), tokens=tokens)
    with pytest.raises(gc.GraphcError, match="holds token ids.*does not ask for tokens"):
        fit(seq_model, data.load(str(path), tokens=True), progress=False, epochs=1)
    with pytest.raises(data.DataError, match="asks for tokens.*'digits' is a bundled dataset"):
        fit(token_model, "digits", progress=False, epochs=1)


@pytest.mark.parametrize("split", ["training", "validation", "test"])
def test_an_id_outside_the_vocabulary_in_any_split_is_refused_before_training(tmp_path, split, monkeypatch):
    """The test rows were checked only when the trained model was measured on them: every epoch ran, then a
    compiled-code error without a row. Every split is checked first, and the row is the one in the user's data."""
    path, X, y = _tokens(tmp_path)
    r = int(data.load(str(path), tokens=True).source_rows[split][0])
    bad = X.copy()
    bad[r, 3] = VOCAB
    np.savez(tmp_path / "bad.npz", X=bad, y=y)
    monkeypatch.setattr(Trainer, "init_state", lambda *a, **k: pytest.fail("trained on data with a bad id"))
    with pytest.raises(gc.InputError, match=rf"{split} data: token id 7 in row {r} of the data \({split} split row "
                                            r"\d+\), step 3 is outside the vocabulary \[0, 7\)"):
        fit(token_model, str(tmp_path / "bad.npz"), progress=False, epochs=1)


def test_cli_refuses_bad_sequence_data_with_exit_2_and_writes_nothing(tmp_path):
    path, X, y = _tokens(tmp_path)
    model = tmp_path / "tok_model.py"
    model.write_text("import graphc as gc\n\n\ndef model(tokens, n_outputs):\n"
                     "    e = gc.nn.embedding(tokens, 7, 4, name='emb')\n"
                     "    return gc.nn.dense(gc.nn.lstm(e, 8, name='l'), n_outputs, name='out')\n")
    cmd = [sys.executable, "-m", "graphc.cli", "train", "--model", str(model), "--epochs", "2", "--quiet"]
    out = tmp_path / "run"
    p = subprocess.run([*cmd, "--dataset", str(path), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (out / "weights.npz").exists() and "emb.E" in np.load(out / "weights.npz")
    bad = X.copy()
    bad[2, 5] = 11
    np.savez(tmp_path / "over.npz", X=bad, y=y)
    np.savez(tmp_path / "float.npz", X=X + 0.5, y=y)
    for name, msg in (("over.npz", r"token id 11 in row 2 of the data \(\w+ split row \d+\), step 5 is outside the "
                                   r"vocabulary \[0, 7\) of the "
                                   r"model's embedding 'emb.E' \(made at .*tok_model.py:5\b"),
                      ("float.npz", "token ids X hold float64 values, not integers")):
        dest = tmp_path / f"run-{name}"
        p = subprocess.run([*cmd, "--dataset", str(tmp_path / name), "--out", str(dest)], capture_output=True,
                           text=True)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert p.stderr.count("\n") <= 2 and "Traceback" not in p.stderr
        import re

        assert re.search(msg, p.stderr), p.stderr
        assert not dest.exists()


def test_the_rows_example_asks_for_sequences():
    from graphc.fitting import load_model_file
    from graphc.nn.train import model_layout

    fn, _ = load_model_file(str(Path(__file__).resolve().parents[2] / "examples" / "lstm_digits_rows.py"))
    assert model_layout(fn) == "sequences"


def test_arrays_in_memory_are_the_dataset_the_same_npz_gives(tmp_path):
    """gc.fit(model, (X, y)): features, images and token ids given as arrays load, split, standardize and train
    exactly as the same arrays saved to a .npz; what cannot be a dataset is a DataError saying why."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "yes", "no")  # text labels, as a .npz may hold
    imgs = rng.normal(size=(60, 4, 4)).astype(np.float32)
    ids = rng.integers(0, VOCAB, size=(80, 6))
    for arrays, tokens in (((X, y), False), ((imgs, (imgs[:, 0, 0] > 0).astype(np.int64)), False),
                           ((ids, (ids == 3).any(axis=1).astype(np.int64)), True)):
        np.savez(tmp_path / "same.npz", X=arrays[0], y=arrays[1])
        a = data.load(list(arrays) if tokens else arrays, tokens=tokens)
        b = data.load(tmp_path / "same.npz", tokens=tokens)
        assert a.name == "arrays" and (a.task, a.classes, a.grid, a.tokens) == (b.task, b.classes, b.grid, b.tokens)
        for k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "x_mean", "x_std"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    r_arrays = fit(None, (X, y), progress=False, epochs=2)
    np.savez(tmp_path / "xy.npz", X=X, y=y)
    r_file = fit(None, str(tmp_path / "xy.npz"), progress=False, epochs=2)
    assert r_arrays.metrics["test_loss"] == r_file.metrics["test_loss"]
    assert r_arrays.metrics["test_confusion_labels"] == ["no", "yes"]
    for bad, msg in ((X, r"a pair \(X, y\) of arrays, got ndarray \(give the labels too"),
                     ((X,), r"must be a pair \(X, y\) of arrays, got a tuple of 1"),
                     ((X, y[:7]), "X has 120 rows but y has 7"), ((X, "abc"), "y has none"),
                     (([[1.0, 2.0], [3.0]], [0, 1]), "X cannot be made an array"),
                     ((X[:, 0], y), "X must be 2-D"), ({"X": X, "y": y}, "got dict")):
        with pytest.raises(data.DataError, match=msg):
            fit(None, bad, progress=False, epochs=1)
    with pytest.raises(data.DataError, match="select the columns yourself"):
        data.load((X, y), label="y")


def test_the_exported_library_refuses_token_ids_outside_the_vocabulary(tmp_path):
    """The library takes token ids as floats: one outside [0, vocab), or not an integer, or NaN, was fed to the
    model as id 0 (or truncated) and the call returned OK; it is now the error code NAME_ERR_INPUT, out untouched."""
    import ctypes

    from graphc.aot import export

    path, X, _ = _tokens(tmp_path)
    r = fit(token_model, str(path), progress=False, epochs=1, out=str(tmp_path / "run"))
    res = export(tmp_path / "libtok.so", tmp_path / "run", model=token_model)
    header = res.header.read_text()
    assert "#define TOK_ERR_INPUT 8" in header
    # the header says what a row is: STEPS token ids below VOCAB (it spoke of unstandardized features)
    assert f"#define TOK_STEPS {X.shape[1]}" in header and f"#define TOK_VOCAB {VOCAB}" in header
    assert "token ids" in header and "standardization" not in header
    fn = ctypes.CDLL(str(res.path)).tok_predict
    want = np.asarray(r.predict_raw(X[:4].astype(np.float32)), np.float32).reshape(4, -1)

    def call(rows):
        rows = np.ascontiguousarray(rows, np.float32)
        out = np.full((len(rows), want.shape[1]), -7.0, np.float32)
        rc = fn(rows.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(rows)), out.ctypes.data_as(ctypes.c_void_p))
        return rc, out

    rc, out = call(X[:4])
    assert rc == 0
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    for bad in (VOCAB, -1, 2.5, np.nan, np.inf, 1e9):
        rows = X[:4].astype(np.float32)
        rows[2, 3] = bad
        rc, out = call(rows)
        assert rc == 8 and np.all(out == -7.0), bad


def test_fractional_token_ids_are_refused_by_predict_and_the_training_binary(tmp_path, token_binary):
    """predict_raw (and graphc predict) and a training binary read a fractional id as its integer part (the model
    casts them): 2.5 became 2, trained on and predicted with exit 0. Both refuse it now, naming row and step, and
    the binary refuses --standardize (which would make every id fractional)."""
    import subprocess

    path, X, y = _tokens(tmp_path)
    r = fit(token_model, str(path), progress=False, epochs=1)
    bad = X[:4].astype(np.float32)
    bad[1, 3] = 2.5
    with pytest.raises(gc.InputError, match=r"token id 2.5 at row 1, step 3 is not an integer in \[0, 7\)"):
        r.predict_raw(bad)
    binary = token_binary
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True).stdout
    assert "reads token ids" in help_text and "[0, 7), saved as int32 or int64" in help_text, help_text
    assert "--x-train F     token ids: int32, int64 or float32 (rows, 6)" in help_text, help_text
    xs = X.astype(np.float32)
    xs[3, 4] = 2.5
    np.save(tmp_path / "x.npy", xs)
    np.save(tmp_path / "y.npy", y.astype(np.float32))  # a binary task: 0/1 targets
    base = [str(binary), "--x-train", str(tmp_path / "x.npy"), "--y-train", str(tmp_path / "y.npy"), "--quiet"]
    p = subprocess.run([*base, "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2 and "token id 2.5 at row 3, step 4 is not an integer in [0, 7)" in p.stderr, p.stderr
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    p = subprocess.run([*base, "--standardize", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2 and "--standardize: this model reads token ids" in p.stderr
    p = subprocess.run([*base, "--epochs", "1", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_the_training_binary_reads_integer_token_ids_as_graphc_train_does(tmp_path, token_binary):
    """A token model's binary asked for the ids as float32 .npy while graphc train reads them as integers (and
    says "save them as int32"): it takes int32/int64 ids now, range-checked, and trains exactly as on the same ids
    saved as float32."""
    import subprocess

    path, X, y = _tokens(tmp_path)
    binary = token_binary
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    trained = {}
    for dtype in (np.float32, np.int32, np.int64):
        np.save(tmp_path / "x.npy", X.astype(dtype))
        out = tmp_path / f"o-{np.dtype(dtype).name}"
        p = subprocess.run([str(binary), "--x-train", str(tmp_path / "x.npy"), "--y-train", str(tmp_path / "y.npy"),
                            "--epochs", "1", "--quiet", "--out", str(out)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        trained[dtype] = {f.name: np.load(f) for f in sorted(out.glob("*.npy"))}
    assert trained[np.float32], "no parameters written"
    for dtype in (np.int32, np.int64):
        assert trained[dtype].keys() == trained[np.float32].keys()
        for name, w in trained[np.float32].items():
            np.testing.assert_array_equal(trained[dtype][name], w, err_msg=name)
    base = [str(binary), "--x-train", str(tmp_path / "x.npy"), "--y-train", str(tmp_path / "y.npy"), "--quiet",
            "--out", str(tmp_path / "bad")]
    for v in (VOCAB, -3):
        ids = X.astype(np.int64)
        ids[5, 1] = v
        np.save(tmp_path / "x.npy", ids)
        p = subprocess.run(base, capture_output=True, text=True)
        assert p.returncode == 2 and (f"x.npy: token id {v} at row 5, step 1 is not in [0, {VOCAB}) (the model's "
                                      "vocabulary)") in p.stderr, p.stderr
    np.save(tmp_path / "x.npy", X.astype(np.float64))
    p = subprocess.run(base, capture_output=True, text=True)
    assert p.returncode == 2 and ("dtype float64: token ids must be integers (int32 or int64, as graphc train reads "
                                  "them) or float32 integers (save x.astype(np.int32))") in p.stderr, p.stderr
    assert not (tmp_path / "bad").exists()
