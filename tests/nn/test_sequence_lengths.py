"""Padded sequences of different lengths through the training front ends: a .npz's `lengths` (or (X, y, lengths)
in memory) reach a model that takes a parameter `lengths`, with their rows through shuffling, batches, the
validation split, early stopping, the refit, evaluation and prediction. What the padding holds never changes a
result; bad lengths are refused naming the file, key, row and value (the CLI exits 2 and writes nothing)."""

import re
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc import data
from graphc.data import DataError
from graphc.fitting import fit, load
from graphc.nn.train import TrainConfig, Trainer

V, T = 7, 6


def tok_model(tokens, lengths, n_outputs):
    e = gc.nn.embedding(tokens, V, 4, name="emb")  # (T, N, 4)
    return gc.nn.dense(gc.nn.gru(e, 6, lengths=lengths, name="g"), n_outputs, name="out")


def seq_model(sequences, lengths, n_outputs):
    return gc.nn.dense(gc.nn.rnn(sequences, 6, lengths=lengths, name="r"), n_outputs, name="out")


MODEL_FILE = '''import graphc as gc


def model(tokens, lengths, n_outputs):
    e = gc.nn.embedding(tokens, 7, 4, name="emb")
    return gc.nn.dense(gc.nn.gru(e, 6, lengths=lengths, name="g"), n_outputs, name="out")
'''


def _token_data(n=90, seed=0):
    """Ids (n, T) padded with -1 past each row's length; the label: does the sequence hold a 3?"""
    rng = np.random.default_rng(seed)
    L = rng.integers(1, T + 1, n)
    X = rng.integers(0, V, (n, T))
    pad = np.arange(T)[None, :] >= L[:, None]
    y = ((X == 3) & ~pad).any(axis=1).astype(np.int64)
    return np.where(pad, -1, X), y, L, pad


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "graphc.cli", *map(str, args)], capture_output=True, text=True)


def test_the_padding_never_changes_training():
    """Garbage in the padding (pad ids -1, 99; NaN, 1e30 in float sequences) trains the same trajectory and
    weights as zeros there: it is neither read, checked nor standardized."""
    X, y, L, pad = _token_data()
    runs = [fit(tok_model, (np.where(pad, v, X), y, L), progress=False, epochs=2, batch_size=16, lr=0.2)
            for v in (0, -1, 99)]
    for r in runs[1:]:
        assert [h["train_loss"] for h in r.history] == [h["train_loss"] for h in runs[0].history]
        for k, w in runs[0].params.items():
            np.testing.assert_array_equal(r.params[k], w, err_msg=k)
    rng = np.random.default_rng(1)
    S = rng.normal(3.0, 2.0, (90, T, 2))
    ys = (np.where(pad[..., None], 0, S).sum(axis=(1, 2)) > 3.0 * L).astype(np.int64)
    seq = [fit(seq_model, (np.where(pad[..., None], v, S), ys, L), progress=False, epochs=2, batch_size=16)
           for v in (0.0, np.nan, 1e30)]
    for r in seq[1:]:
        assert [h["train_loss"] for h in r.history] == [h["train_loss"] for h in seq[0].history]
        for k, w in seq[0].params.items():
            np.testing.assert_array_equal(r.params[k], w, err_msg=k)
    # the statistics are the real steps' (per feature, over every step): not dragged towards the padding's zeros
    real = S[~pad]
    ds = seq[1].dataset
    np.testing.assert_allclose(ds.x_mean[:2], S[ds.source_rows["training"]][~pad[ds.source_rows["training"]]]
                               .mean(0), rtol=1e-12)
    assert abs(ds.x_mean[0] - real.mean(0)[0]) < 0.5 and np.all(ds.x_mean.reshape(T, 2) == ds.x_mean[:2])
    assert np.all(ds.X_train.reshape(-1, T, 2)[pad[ds.source_rows["training"]]] == 0)


def test_the_model_reads_no_padding_loss_gradients_and_each_row_alone():
    """Below the data's boundary too: the step's loss and gradients (the numpy reference evaluator) are the same
    with garbage or zeros in the padding, and each row's prediction is that of the sequence alone, run at its own
    length without lengths."""
    X, y, L, pad = _token_data(n=12)
    tr = Trainer(tok_model, "multiclass", T, 2, TrainConfig(), vocab=V)
    state = tr.init_state(0)
    params = tr.param_values(state)
    rows = [data.with_lengths(np.where(pad, v, X), L) for v in (0, 5, 2)]
    got = [gc.evaluate([tr.loss, *tr.grads], dict(params, x=r, y=y.astype(np.int32))) for r in rows]
    for g in got[1:]:
        for a, b in zip(g, got[0], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    r = fit(tok_model, (X, y, L), progress=False, epochs=3, batch_size=16)
    out = r.predict(np.where(pad, 4, X), lengths=L)
    for i in range(len(X)):
        x = gc.ops.input("x", (1, int(L[i])), "int32")
        alone = tok_model(gc.ops.transpose(x, (1, 0)), None, r.dataset.n_outputs)
        ref = gc.evaluate(alone, dict(r.params, x=X[i:i + 1, :L[i]].astype(np.int32)))
        np.testing.assert_allclose(out[i], ref[0], rtol=1e-5, atol=1e-6, err_msg=f"row {i}, length {L[i]}")


def test_lengths_travel_with_their_rows_through_every_split():
    """A label given by the length alone, learnt by a model that reads only the lengths: only lengths that stay
    beside their rows through the shuffles, the validation split, early stopping, the refit and evaluation can be
    learnt (misaligned lengths would leave the labels at chance)."""
    rng = np.random.default_rng(3)
    L = rng.integers(1, T + 1, 300)
    X = rng.integers(0, V, (300, T))
    y = (L > 3).astype(np.int64)

    def by_length(tokens, lengths, n_outputs):
        f = gc.ops.expand_dims(gc.ops.cast(lengths, "float32"), 1) - 3.5
        return gc.nn.dense(f, n_outputs, name="out")

    r = fit(by_length, (X, y, L), progress=False, epochs=30, batch_size=8, lr=0.5, early_stopping=3, refit=True)
    assert r.metrics["test_accuracy"] == 1.0 and r.metrics["train_accuracy"] == 1.0, r.metrics
    assert r.metrics["refit_epochs"] >= 1
    np.testing.assert_array_equal(r.predict_labels(X, lengths=L), y)


def test_fit_and_graphc_train_give_the_same_weights_and_load_predicts_them(tmp_path):
    X, y, L, pad = _token_data()
    np.savez(tmp_path / "seq.npz", X=X, y=y, lengths=L)
    (tmp_path / "m.py").write_text(MODEL_FILE)
    r = fit(str(tmp_path / "m.py"), str(tmp_path / "seq.npz"), progress=False, epochs=2, out=tmp_path / "a")
    p = _cli("train", "--model", tmp_path / "m.py", "--dataset", tmp_path / "seq.npz", "--epochs", 2, "--quiet",
             "--out", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "a" / "weights.npz"), np.load(tmp_path / "b" / "weights.npz")
    assert sorted(a) == sorted(b) and "g.Wx" in a or "emb.E" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    back = load(tmp_path / "b")
    np.testing.assert_array_equal(back.predict(np.where(pad, 3, X), lengths=L), r.predict(X, lengths=L))
    p = _cli("predict", "--run", tmp_path / "b", "--data", tmp_path / "seq.npz", "--proba", "-o", tmp_path / "p.csv")
    assert p.returncode == 0, p.stderr
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("label,") and len(rows) == len(X) + 1
    assert [int(line.split(",")[0]) for line in rows[1:]] == r.predict_labels(X, lengths=L).tolist()
    np.savez(tmp_path / "nolen.npz", X=X, y=y)
    p = _cli("predict", "--run", tmp_path / "b", "--data", tmp_path / "nolen.npz", "-o", tmp_path / "q.csv")
    assert p.returncode == 2 and "has no array `lengths`" in p.stderr and not (tmp_path / "q.csv").exists()
    with pytest.raises(gc.InputError, match=r"the model takes `lengths`.*predict\(X, lengths=...\)"):
        back.predict(X)


BAD = [
    (np.full(90, 2.0), r"lengths hold float64 values, not integers"),
    (np.ones(90, bool), r"lengths hold True/False values, not integers"),
    (np.ones((90, 1), np.int64), r"lengths must be \(N,\) = \(90,\), one length per sequence of X, got shape "
                                 r"\(90, 1\)"),
    (np.ones(89, np.int64), r"lengths must be \(N,\) = \(90,\)"),
    (np.r_[np.ones(40, np.int64), T + 1, np.ones(49, np.int64)], rf"lengths\[40\] \(row 40\) is {T + 1}, outside "
                                                                 rf"\[0, {T}\]"),
    (np.r_[np.ones(7, np.int64), -2, np.ones(82, np.int64)], rf"lengths\[7\] \(row 7\) is -2, outside \[0, {T}\]"),
]


@pytest.mark.parametrize("bad,msg", BAD)
def test_bad_lengths_are_refused_in_every_form(tmp_path, bad, msg):
    X, y, L, pad = _token_data()
    with pytest.raises(DataError, match=r"^arrays: " + msg):
        fit(tok_model, (X, y, bad), progress=False, epochs=1)
    path = tmp_path / "bad.npz"
    np.savez(path, X=X, y=y, lengths=bad)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + msg):
        fit(tok_model, str(path), progress=False, epochs=1)
    (tmp_path / "m.py").write_text(MODEL_FILE)
    p = _cli("train", "--model", tmp_path / "m.py", "--dataset", path, "--epochs", 1, "--quiet", "--out",
             tmp_path / "run")
    assert p.returncode == 2 and re.search(msg, p.stderr) and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_lengths_missing_or_unasked_are_refused(tmp_path):
    X, y, L, pad = _token_data()
    with pytest.raises(DataError, match=r"arrays: the model takes `lengths`.*pass \(X, y, lengths\)"):
        fit(tok_model, (X, y), progress=False, epochs=1)

    def plain(tokens, n_outputs):
        return gc.nn.dense(gc.nn.gru(gc.nn.embedding(tokens, V, 4), 6), n_outputs)

    with pytest.raises(DataError, match=r"gives padded sequences' lengths, but the model takes none"):
        fit(plain, (X, y, L), progress=False, epochs=1)
    np.savez(tmp_path / "s.npz", X=np.maximum(X, 0), y=y, lengths=L)
    with pytest.raises(DataError, match=r"s.npz: the file holds padded sequences' `lengths`, but the model takes "
                                        r"none: its padding would be read as data"):
        fit(plain, str(tmp_path / "s.npz"), progress=False, epochs=1)
    np.savez(tmp_path / "n.npz", X=X, y=y)
    with pytest.raises(DataError, match=r"n.npz: the model takes `lengths` .* the file has no array `lengths`"):
        fit(tok_model, str(tmp_path / "n.npz"), progress=False, epochs=1)
    ds = data.load((np.maximum(X, 0), y), tokens=True)
    with pytest.raises(gc.GraphcError, match=r"takes `lengths` .* but arrays gives none"):
        fit(tok_model, ds, progress=False, epochs=1)

    def rows_with_lengths(x, lengths, n_outputs):
        return gc.nn.dense(x, n_outputs)

    with pytest.raises(gc.GraphcError, match=r"takes `lengths` .* name it `sequences`"):
        fit(rows_with_lengths, (np.ones((20, 3, 2)), np.arange(20) % 2, np.ones(20, np.int64)), progress=False)
    with pytest.raises(DataError, match=r"lengths .* go with sequences \(N, T, F\); X has shape \(20, 3\)"):
        data.load((np.ones((20, 3)), np.arange(20) % 2, np.ones(20, np.int64)))


def test_predict_checks_lengths_and_ignores_the_padding():
    X, y, L, pad = _token_data()
    r = fit(tok_model, (X, y, L), progress=False, epochs=1)
    base = r.predict(np.where(pad, 0, X), lengths=L)
    np.testing.assert_array_equal(r.predict(np.where(pad, 1e9, X), lengths=L), base)  # not even an id
    np.testing.assert_array_equal(r.predict_proba(np.where(pad, -5, X), lengths=L).argmax(1),
                                  r.predict_labels(X, lengths=L))
    with pytest.raises(DataError, match=rf"predict: lengths\[3\] \(row 3\) is {T + 1}, outside \[0, {T}\]"):
        r.predict(X, lengths=np.r_[L[:3], T + 1, L[4:]])
    with pytest.raises(DataError, match=r"predict: lengths hold float64 values"):
        r.predict(X, lengths=L.astype(float))
    plain = fit(None, (np.ones((30, 4)), np.arange(30) % 2), progress=False, epochs=1)
    with pytest.raises(gc.InputError, match=r"lengths= given, but the model takes no `lengths`"):
        plain.predict(np.ones((2, 4)), lengths=[1, 2])


def test_a_training_binary_takes_lengths_and_trains_as_gc_fit(tmp_path):
    """graphc build of a model that takes lengths: --lengths-train/-val/-test beside --x-*, the padding zeroed
    before the ids are checked, and bitwise the weights and history of gc.fit on the same splits (with early
    stopping: the lengths travel with their rows through the binary's shuffles and evaluations too)."""
    from graphc.aot import build

    X, y, L, pad = _token_data(n=120)
    np.savez(tmp_path / "seq.npz", X=X, y=y, lengths=L)
    (tmp_path / "m.py").write_text(MODEL_FILE)
    opts = dict(epochs=3, batch_size=16, lr=0.3, early_stopping=2, seed=4)
    ref = fit(str(tmp_path / "m.py"), str(tmp_path / "seq.npz"), progress=False, **opts)
    ds = ref.dataset
    exe = build(tmp_path / "train-seq", model=tmp_path / "m.py", data=str(tmp_path / "seq.npz"), max_batch=64).path
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True).stdout
    assert "--lengths-train F" in help_text and f"each in [0, {T}]" in help_text, help_text
    args = []
    for s in ("train", "val", "test"):
        rows = ds.source_rows[{"train": "training", "val": "validation", "test": "test"}[s]]
        ids = X[rows]  # the user's own ids, with their -1 padding: the binary zeroes it as graphc train does
        for kind, arr in (("x", ids.astype(np.int64)), ("y", getattr(ds, f"y_{s}")),
                          ("lengths", getattr(ds, f"lengths_{s}"))):
            np.save(tmp_path / f"{kind}_{s}.npy", arr)
            args += [f"--{kind}-{s}", str(tmp_path / f"{kind}_{s}.npy")]
    base = [str(exe), *args, "--epochs", "3", "--batch-size", "16", "--lr", "0.3", "--early-stopping", "2",
            "--seed", "4", "--quiet"]
    p = subprocess.run([*base, "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for name, want in ref.params.items():
        got = np.load(tmp_path / "o" / f"{name}.npy")
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    lines = (tmp_path / "o" / "history.csv").read_text().splitlines()
    col = lines[0].split(",").index("val_loss")
    assert [float(r.split(",")[col]) for r in lines[1:]] == [h["val_loss"] for h in ref.history]
    back = load(tmp_path / "o", model=str(tmp_path / "m.py"))
    np.testing.assert_array_equal(back.predict(X, lengths=L), ref.predict(X, lengths=L))
    bad = L[ds.source_rows["validation"]].copy()
    bad[2] = T + 3
    np.save(tmp_path / "lengths_val.npy", bad)
    p = subprocess.run([*base, "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert p.returncode == 2 and f"length {T + 3} at row 2 is outside [0, {T}]" in p.stderr, p.stderr
    np.save(tmp_path / "lengths_val.npy", bad.astype(np.float32))
    p = subprocess.run([*base, "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert p.returncode == 2 and "lengths must be int32 or int64" in p.stderr, p.stderr
    p = subprocess.run([str(exe), *args[:4], "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert p.returncode == 2 and "--x-train and --lengths-train go together" in p.stderr, p.stderr
    assert not (tmp_path / "bad").exists()


SEQ_MODEL_FILE = '''import graphc as gc


def model(sequences, lengths, n_outputs):
    return gc.nn.dense(gc.nn.rnn(sequences, 6, lengths=lengths, name="r"), n_outputs, name="out")
'''


def test_a_training_binary_standardizes_padded_sequences_with_their_real_steps_statistics(tmp_path):
    """--standardize for a model that takes lengths (it was refused): per feature, the mean and standard deviation
    of the training rows' real steps, tiled over the steps, the padding left at 0 (whatever the file held there),
    as graphc train standardizes them: data.json's statistics equal gc.fit's to rounding, and the run trains as
    gc.fit on the same splits does (to rounding: the sums run in another order)."""
    import json

    from graphc.aot import build

    rng = np.random.default_rng(3)
    n, F = 120, 2
    L = rng.integers(1, T + 1, n)
    pad = np.arange(T)[None, :] >= L[:, None]
    S = rng.normal(3.0, 2.0, (n, T, F)) * np.array([1.0, 40.0])
    y = (np.where(pad[..., None], 0, S[..., :1]).sum(axis=(1, 2)) > 3.0 * L).astype(np.int64)
    S = np.where(pad[..., None], 1e6, S)  # garbage in the padding: never read
    np.savez(tmp_path / "seq.npz", X=S.astype(np.float32), y=y, lengths=L)
    (tmp_path / "m.py").write_text(SEQ_MODEL_FILE)
    opts = dict(epochs=3, batch_size=16, lr=0.1, seed=2)
    ref = fit(str(tmp_path / "m.py"), str(tmp_path / "seq.npz"), progress=False, **opts)
    ds = ref.dataset
    exe = build(tmp_path / "train-seqf", model=tmp_path / "m.py", data=str(tmp_path / "seq.npz"), max_batch=64).path
    args = []
    for split, key in (("train", "training"), ("val", "validation"), ("test", "test")):
        rows = ds.source_rows[key]
        if not len(rows):
            continue
        for kind, arr in (("x", S[rows].reshape(len(rows), -1).astype(np.float32)), ("y", getattr(ds, f"y_{split}")),
                          ("lengths", L[rows])):
            np.save(tmp_path / f"{kind}_{split}.npy", arr)
            args += [f"--{kind}-{split}", str(tmp_path / f"{kind}_{split}.npy")]
    p = subprocess.run([str(exe), *args, "--epochs", "3", "--batch-size", "16", "--lr", "0.1", "--seed", "2",
                        "--standardize", "--quiet", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "o" / "data.json").read_text())
    np.testing.assert_allclose(d["x_mean"], ds.x_mean, rtol=1e-12)
    np.testing.assert_allclose(d["x_std"], ds.x_std, rtol=1e-12)
    assert len(d["x_mean"]) == T * F and np.ptp(np.reshape(d["x_std"], (T, F)), axis=0).max() == 0  # tiled
    for name, want in ref.params.items():
        np.testing.assert_allclose(np.load(tmp_path / "o" / f"{name}.npy"), want, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    back = load(tmp_path / "o", model=str(tmp_path / "m.py"))  # data.json's statistics: raw rows predict
    np.testing.assert_allclose(back.predict(S, lengths=L), ref.predict(S, lengths=L), rtol=1e-4, atol=1e-5)


def _library(res, upper, width, n_out):
    import ctypes

    fn = getattr(ctypes.CDLL(str(res.path)), f"{upper.lower()}_predict")

    def call(rows):
        rows = np.ascontiguousarray(rows, np.float32)
        assert rows.shape[1] == width
        out = np.full((len(rows), n_out), -7.0, np.float32)
        rc = fn(rows.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(rows)), out.ctypes.data_as(ctypes.c_void_p))
        return rc, out

    return call


def test_the_exported_library_takes_each_rows_length_after_its_features(tmp_path):
    """graphc export of a run that took lengths: a row is the features and then its length (SEQ_ROW floats); the
    padding is never read (garbage or NaN there predicts as gc.load(run).predict does), a bad length or an id
    outside the vocabulary in a real step is NAME_ERR_INPUT with out untouched."""
    from graphc.aot import export

    X, y, L, pad = _token_data()
    r = fit(tok_model, (X, y, L), progress=False, epochs=2, out=tmp_path / "run")
    res = export(tmp_path / "libseq.so", tmp_path / "run", model=tok_model)
    header = res.header.read_text()
    assert "#define SEQ_LENGTHS 1" in header and "#define SEQ_ROW (SEQ_N_FEATURES + 1)" in header, header
    assert res.row == res.n_features + 1 == T + 1  # what `graphc export` says a row holds
    call = _library(res, "SEQ", T + 1, 1)
    want = np.asarray(r.predict_raw(X, lengths=L), np.float32).reshape(len(X), -1)
    for v in (0, -1, 1e9, np.nan):
        rc, out = call(data.with_lengths(np.where(pad, v, X), L))
        assert rc == 0, v
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    for bad in (T + 1, -1, 2.5, np.nan):
        rows = data.with_lengths(X, L)
        rows[4, T] = bad
        rc, out = call(rows)
        assert rc == 8 and np.all(out == -7.0), bad
    rows = data.with_lengths(X, L)
    rows[0, 0] = V  # the first step is always a real one
    assert call(rows)[0] == 8

    # float sequences, standardized inside the library with the real steps' statistics
    rng = np.random.default_rng(5)
    S = rng.normal(1.0, 3.0, (90, T, 2))
    ys = (np.where(pad[..., None], 0, S).sum(axis=(1, 2)) > L).astype(np.int64)
    np.savez(tmp_path / "s.npz", X=np.where(pad[..., None], np.nan, S), y=ys, lengths=L)
    rs = fit(seq_model, str(tmp_path / "s.npz"), progress=False, epochs=2, out=tmp_path / "srun")
    res = export(tmp_path / "libsq.so", tmp_path / "srun", model=seq_model)
    header = res.header.read_text()
    assert "x[row * SQ_ROW + t * 2 + k]" in header and "features per input row, then its length" in header, header
    call = _library(res, "SQ", 2 * T + 1, 1)
    raw = np.where(pad[..., None], 1e30, S).reshape(90, -1)
    want = np.asarray(rs.predict_raw(raw, lengths=L), np.float32).reshape(90, -1)
    rc, out = call(data.with_lengths(raw, L))
    assert rc == 0
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(load(tmp_path / "srun", model=seq_model).predict_raw(S.reshape(90, -1), lengths=L),
                                  rs.predict_raw(raw, lengths=L))


def test_the_example_makes_padded_data_and_its_model_takes_the_lengths(tmp_path):
    from pathlib import Path

    from graphc.fitting import load_model_file

    example = Path(__file__).resolve().parents[2] / "examples" / "token_lengths.py"
    p = subprocess.run([sys.executable, str(example), str(tmp_path / "seq.npz")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    z = np.load(tmp_path / "seq.npz")
    X, L = z["X"], z["lengths"]
    assert X.shape[0] == len(L) == len(z["y"]) and L.min() >= 1 and L.max() <= X.shape[1]
    assert np.all((np.arange(X.shape[1])[None, :] >= L[:, None]) == (X == -1))  # padded with -1, and only there
    r = fit(str(example), str(tmp_path / "seq.npz"), progress=False, epochs=1)
    assert load_model_file(str(example))[1]["optimizer"] == "adam"
    assert 0.0 <= r.metrics["test_accuracy"] <= 1.0 and r.predict(X[:3], lengths=L[:3]).shape == (3, 1)
