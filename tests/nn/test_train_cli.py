"""`graphc train` and the datasets: artifacts, bad input (clean errors, no tracebacks), checkpoint resume after
SIGKILL ending bitwise equal to an uninterrupted run."""

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from graphc_cli import run_in_process

from graphc import data

GRAPHC = [sys.executable, "-m", "graphc.cli"]


def run(*args, **kw):
    return subprocess.run([*GRAPHC, *args], capture_output=True, text=True, **kw)


def test_train_writes_its_artifacts(tmp_path):
    p = run("train", "--epochs", "3", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "test accuracy" in p.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "epochs", "train_samples_per_second", "seed", "compile_seconds", "threads"):
        assert key in m, key
    assert m["epochs"] == 3 and m["test_accuracy"] > 0.85
    assert m["arena_bytes"] > 0 and m["peak_rss_mb"] > 50  # the process's peak, with Python and numpy loaded
    hist = (tmp_path / "history.csv").read_text().splitlines()
    assert hist[0].startswith("phase,epoch,step,lr,train_loss") and len(hist) == 4
    w = np.load(tmp_path / "weights.npz")
    assert set(w.files) == {"mlp.0.W", "mlp.0.b", "mlp.1.W", "mlp.1.b"} and w["mlp.0.W"].shape == (64, 128)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "checkpoints").glob("ckpt-*.gcp"))


def test_activation_option_shapes_the_default_mlp(tmp_path):
    """--activation picks the hidden units of the default MLP (the lecture's sigmoid and tanh units)."""
    p = run("train", "--epochs", "2", "--activation", "tanh", "--hidden", "16", "--quiet", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["activation"] == "tanh"
    p = run_in_process("train", "--activation", "swishy")  # (swish is one now: jax.nn's name for silu)
    assert p.returncode != 0 and "invalid choice: 'swishy'" in p.stderr


def test_hidden_none_trains_a_linear_model(tmp_path):
    """--hidden none: no hidden layer (softmax regression on digits), as gc.fit(hidden=[]); the CLI could not say it."""
    p = run("train", "--epochs", "3", "--hidden", "none", "--quiet", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    w = np.load(tmp_path / "weights.npz")
    assert set(w.files) == {"mlp.0.W", "mlp.0.b"} and w["mlp.0.W"].shape == (64, 10)
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] > 0.85
    p = run_in_process("train", "--hidden", "nothing")
    assert p.returncode == 2 and "--hidden" in p.stderr and "Traceback" not in p.stderr


def test_progress_lines_when_not_a_terminal():
    p = run("train", "--epochs", "2", "--dataset", "breast_cancer")
    lines = [line for line in p.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "samples/s" in lines[0] and "val_accuracy" in lines[0]


MODEL = """
import graphc as gc

OPTIONS = {"epochs": 2}

def model(x, n_outputs):
    h = gc.nn.dense(x, 32, "tanh", name="first")
    return gc.nn.dense(h, n_outputs, name="out")
"""


def test_model_file_and_csv_dataset(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{'yes' if t else 'no'}" for r, t in zip(X, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    p = run("train", "--model", str(tmp_path / "m.py"), "--dataset", str(tmp_path / "d.csv"), "--label", "label",
            "--out", str(tmp_path / "o"), "--json")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout.strip().splitlines()[-1])
    assert m["task"] == "binary" and m["epochs"] == 2
    assert set(np.load(tmp_path / "o" / "weights.npz").files) == {"first.W", "first.b", "out.W", "out.b"}


def test_predict_writes_a_runs_labels_and_probabilities_for_a_files_rows(tmp_path):
    """graphc predict --run DIR --data FILE: the run's feature columns by name (its label column left out), one
    CSV row per input row, the labels and probabilities gc.load gives; regression in the target's units; a file
    without the run's features exits 2 naming them."""
    import graphc as gc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3)) * [1, 5, 20]
    names = np.array(["cat", "dog", "emu"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 2).astype(int)]
    lines = ["a,b,c,animal,price"] + [f"{r[0]},{r[1]},{r[2]},{t},{r[0] * 2 + 1}" for r, t in zip(X, names,
                                                                                             strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    p = run("train", "--dataset", str(tmp_path / "d.csv"), "--label", "animal", "--features", "a,b,c", "--epochs",
            "3", "--quiet", "--out", str(tmp_path / "cls"))
    assert p.returncode == 0, p.stderr
    p = run("predict", "--run", str(tmp_path / "cls"), "--data", str(tmp_path / "d.csv"), "--proba")
    assert p.returncode == 0, p.stderr
    rows = [ln.split(",") for ln in p.stdout.strip().splitlines()]
    assert rows[0] == ["label", "p(cat)", "p(dog)", "p(emu)"] and len(rows) == 121
    back = gc.load(tmp_path / "cls")
    assert [r[0] for r in rows[1:]] == list(back.predict_labels(X))
    np.testing.assert_allclose(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), back.predict_proba(X),
                               rtol=1e-5)
    p = run("train", "--dataset", str(tmp_path / "d.csv"), "--label", "price", "--features", "a,b,c", "--epochs",
            "3", "--quiet", "--out", str(tmp_path / "reg"))
    assert p.returncode == 0, p.stderr
    np.save(tmp_path / "x.npy", X[:7])
    p = run("predict", "--run", str(tmp_path / "reg"), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.csv"))
    assert p.returncode == 0 and "wrote 7 predictions" in p.stderr, p.stderr
    got = np.loadtxt(tmp_path / "o.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(got, gc.load(tmp_path / "reg").predict_raw(X[:7]).ravel(), rtol=1e-6)
    (tmp_path / "other.csv").write_text("a,b,z\n1,2,3\n")
    p = run_in_process("predict", "--run", str(tmp_path / "cls"), "--data", str(tmp_path / "other.csv"))
    assert p.returncode == 2 and "feature column(s) ['c'] are not there" in p.stderr and "Traceback" not in p.stderr
    p = run_in_process("predict", "--run", str(tmp_path / "reg"), "--data", str(tmp_path / "x.npy"), "--proba")
    assert p.returncode == 2 and "regression" in p.stderr


def test_predict_refuses_damaged_files_values_beyond_float32_and_examples_on_another_grid(tmp_path):
    """Each was a traceback or a silent wrong answer: a damaged .npz (zipfile's BadZipFile, a bad CRC) in train and
    predict; a CSV value that overflows float32 (NaN probabilities, exit 0); digits examples of another shape,
    (N, 8, 4, 2), flattened and predicted on the 8x8 grid. Each is exit 2 naming the file and what is wrong."""
    from graphc import data

    p = run("train", "--epochs", "1", "--quiet", "--hidden", "8", "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr
    X = data.load("digits").X_test[:5].astype(np.float64)
    np.save(tmp_path / "wrong_grid.npy", X.reshape(5, 8, 4, 2))
    np.save(tmp_path / "images.npy", X.reshape(5, 8, 8, 1))
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(tmp_path / "ok.npz", X=X, y=np.zeros(5, np.int64))
    flipped = bytearray((tmp_path / "ok.npz").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    big = X.copy()
    big[1, 6] = 1e40
    (tmp_path / "big.csv").write_text("\n".join(",".join(f"{v:g}" for v in r) for r in big) + "\n")
    for f, why in (("wrong_grid.npy", r"examples of shape \(8, 4, 2\), but the model reads \(8, 8, 1\) or \(8, 8\)"),
                   ("garbage.npz", "cannot read it: File is not a zip file"), ("flipped.npz", "cannot read it"),
                   ("big.csv", r"row 1 is .*e\+3\d .*beyond float32")):
        p = run_in_process("predict", "--run", tmp_path / "run", "--data", tmp_path / f, "-o", tmp_path / "o.csv")
        assert p.returncode == 2 and re.search(why, p.stderr) and "Traceback" not in p.stderr, (f, p.stderr)
        assert not (tmp_path / "o.csv").exists()
    p = run("predict", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "images.npy"))
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 6, p.stderr
    for f in ("garbage.npz", "flipped.npz"):
        p = run_in_process("train", "--dataset", str(tmp_path / f), "--epochs", "1", "--out", str(tmp_path / "t"))
        assert p.returncode == 2 and "cannot read it" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (tmp_path / "t").exists()


IMAGE_MODEL = """
import graphc as gc

OPTIONS = {"epochs": 1}


def model(images, n_outputs):
    h = gc.nn.conv2d(images, 4, 3, name="c")
    return gc.nn.dense(gc.nn.flatten(h), n_outputs, name="out")
"""


def test_grid_reshapes_flat_npy_rows_into_images_and_a_wrong_grid_exits_2_writing_nothing(tmp_path):
    (tmp_path / "m.py").write_text(IMAGE_MODEL)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6 * 5 * 2))
    y = (X[:, :30].sum(1) > 0).astype(float)
    np.save(tmp_path / "flat.npy", np.column_stack([X, y]).astype(np.float32))  # 60 features + the label
    base = ["train", "--model", str(tmp_path / "m.py"), "--dataset", str(tmp_path / "flat.npy"), "--label", "60",
            "--task", "binary"]
    p = run(*base, "--grid", "6,5,2", "--out", str(tmp_path / "o"), "--json")
    assert p.returncode == 0, p.stderr
    assert set(np.load(tmp_path / "o" / "weights.npz").files) == {"c.W", "c.b", "out.W", "out.b"}
    assert np.load(tmp_path / "o" / "weights.npz")["c.W"].shape == (3, 3, 2, 4)
    p = run_in_process(*base, "--grid", "7,5,2", "--out", str(tmp_path / "bad"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "60 features" in p.stderr and "(7, 5, 2)" in p.stderr, p.stderr
    assert not (tmp_path / "bad").exists()
    p = run_in_process(*base)  # rows without a grid: the model's images cannot be made
    assert p.returncode == 2 and "no grid" in p.stderr and "Traceback" not in p.stderr
    for bad in ("6,x,2", "6,0,10"):
        p = run_in_process(*base, "--grid", bad)
        assert p.returncode == 2 and "--grid" in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("args, words", [
    (["--dataset", "nope"], "no such file"),
    (["--dataset", "missing.csv"], "no such file"),
    (["--epochs", "0"], "epochs must be a positive int"),
    (["--lr", "-1"], "learning rate must be a positive number"),
    (["--batch-size", "0"], "batch size"),
    (["--dropout", "0"], "keep probabilities must be in (0, 1]"),
    (["--dropout", "1.2"], "keep probabilities must be in (0, 1]"),
    (["--momentum", "1.5"], "momentum"),
    (["--refit"], "--refit needs --early-stopping"),
    (["--resume"], "--resume needs --out"),
    (["--hidden", "12,x"], "--hidden"),
    (["--hidden", "16", "--dropout", "0.5,0.5,0.1"], "3 dropout keep probabilities given, but the MLP has 2"),
    (["--min-delta", "-1", "--early-stopping", "2"], "min_delta"),
    (["--min-delta", "nan", "--early-stopping", "2"], "min_delta"),
    (["--seed", str(2**64)], "seed must be an int in [0, 2**63)"),
    (["--seed", "-1"], "seed must be an int in [0, 2**63)"),
    (["--features", "0,1"], "the bundled dataset 'digits' has its own label"),
    (["--label", "3"], "the bundled dataset 'digits' has its own label"),
    (["--hidden", "12,,4"], "--hidden: expected comma-separated numbers"),
])
def test_bad_options_exit_cleanly(args, words):
    p = run_in_process("train", *args)
    assert p.returncode != 0
    assert words in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    # columns are found by name: training read them by position and predict by name (all f0s the first f0)
    (tmp_path / "dup.csv").write_text("f0,f1,f0,label\n1,2,3,0\n4,5,6,1\n7,8,9,0\n")
    for cmd in (["train", "--dataset", str(tmp_path / "dup.csv"), "--label", "label", "--out", str(tmp_path / "o")],):
        p = run_in_process(*cmd)
        assert p.returncode == 2 and "dup.csv:1: the header names column(s) 'f0' more than once" in p.stderr
        assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()


def test_build_and_export_refuse_an_output_path_that_cannot_be_written_before_compiling(tmp_path):
    for cmd in (["build", "-o", str(tmp_path)], ["export", "--weights", str(tmp_path), "-o", str(tmp_path)]):
        p = run_in_process(*cmd)
        assert p.returncode == 2 and f"-o {tmp_path}: a directory" in p.stderr, p.stderr


def test_a_model_that_calls_sys_exit_is_a_failing_model(tmp_path):
    (tmp_path / "m.py").write_text("import sys\ndef model(x, n):\n    sys.exit(3)\n")
    (tmp_path / "top.py").write_text("import sys\nsys.exit(0)\n")
    p = run_in_process("train", "--model", str(tmp_path / "m.py"), "--epochs", "1")
    assert p.returncode == 2 and "the model raised SystemExit: 3" in p.stderr and "m.py:3" in p.stderr, p.stderr
    p = run_in_process("train", "--model", str(tmp_path / "top.py"), "--epochs", "1")
    assert p.returncode == 2 and "top.py:2: running the file failed: SystemExit" in p.stderr, p.stderr


def test_drop_last_trains_a_model_that_needs_whole_batches(tmp_path):
    (tmp_path / "roll.py").write_text("import graphc as gc\ndef model(x, n):\n"
                                      "    h = gc.nn.dense(x, n)\n    return gc.concatenate([h[1:], h[:1]], axis=0)\n")
    args = ["train", "--model", str(tmp_path / "roll.py"), "--batch-size", "4", "--epochs", "1", "--quiet"]
    p = run_in_process(*args)
    assert p.returncode == 2 and "short last batch" in p.stderr, p.stderr
    p = run(*args, "--drop-last")
    assert p.returncode == 0, p.stderr


def test_out_that_is_not_a_directory_and_version(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    for out, words in ((tmp_path / "f.txt", "exists and is not a directory"),
                       (tmp_path / "f.txt" / "sub", "cannot create the directory")):
        p = run_in_process("train", "--epochs", "1", "--out", str(out))
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = run_in_process("--version")
    assert p.returncode == 0 and p.stdout.startswith("graphc ")


def test_bad_files_exit_cleanly(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,x\n3,oops,y\n")
    p = run_in_process("train", "--dataset", str(tmp_path / "bad.csv"), "--label", "label")
    assert p.returncode != 0 and "bad.csv:3" in p.stderr and "'oops'" in p.stderr and "Traceback" not in p.stderr
    p = run_in_process("train", "--dataset", str(tmp_path / "bad.csv"), "--label", "nolabel")
    assert p.returncode != 0 and "no label column named 'nolabel'" in p.stderr
    np.savez(tmp_path / "mismatch.npz", X=np.zeros((10, 3)), y=np.zeros(9))
    p = run_in_process("train", "--dataset", str(tmp_path / "mismatch.npz"))
    assert p.returncode != 0 and "10 rows" in p.stderr and "9" in p.stderr
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    p = run_in_process("train", "--dataset", str(tmp_path / "junk.npy"))
    assert p.returncode != 0 and "junk.npy" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "broken.py").write_text("def model(x, n):\n    return x +\n")
    p = run_in_process("train", "--model", str(tmp_path / "broken.py"))
    assert p.returncode != 0 and "broken.py:2: syntax error" in p.stderr
    (tmp_path / "nomodel.py").write_text("x = 1\n")
    p = run_in_process("train", "--model", str(tmp_path / "nomodel.py"))
    assert p.returncode != 0 and "defines no `model` function" in p.stderr
    (tmp_path / "wide.py").write_text("import graphc as gc\ndef model(x, n):\n    return gc.nn.dense(x, n + 1)\n")
    p = run_in_process("train", "--model", str(tmp_path / "wide.py"))
    assert p.returncode != 0 and "10 classes" in p.stderr
    np.savez(tmp_path / "frac.npz", X=np.ones((40, 3)), y=np.arange(40) * 0.5)
    p = run_in_process("train", "--dataset", str(tmp_path / "frac.npz"), "--task", "multiclass")
    assert p.returncode != 0 and "is not an integer" in p.stderr and "Traceback" not in p.stderr
    nan = np.ones((50, 4))
    nan[7, 2] = np.nan
    np.savez(tmp_path / "nan.npz", X=nan, y=np.arange(50) % 2)
    p = run_in_process("train", "--dataset", str(tmp_path / "nan.npz"))
    assert p.returncode != 0 and "not finite in row 7" in p.stderr


def test_datasets_split_fixed_and_standardized_on_train_only(tmp_path):
    a = data.load("digits")
    b = data.load("digits")
    np.testing.assert_array_equal(a.X_test, b.X_test)
    np.testing.assert_allclose(a.X_train.mean(0), 0, atol=1e-5)  # standardized with the training rows' stats
    assert np.abs(a.X_test.mean(0)).max() > 1e-3  # ...which the test rows do not share exactly
    assert a.task == "multiclass" and len(a.classes) == 10 and a.y_train.dtype == np.int32
    assert len(a.X_train) + len(a.X_val) + len(a.X_test) == 1797
    r = data.load("diabetes")
    assert r.task == "regression" and abs(float(r.y_train.mean())) < 1e-5
    arr = np.column_stack([np.random.default_rng(1).normal(size=(30, 2)), np.arange(30) % 3])
    np.save(tmp_path / "d.npy", arr)
    d = data.load(str(tmp_path / "d.npy"))
    assert d.task == "multiclass" and d.n_features == 2


def test_npy_data_is_read_in_row_chunks_with_the_same_result(tmp_path, monkeypatch):
    """A .npy dataset is read and standardized a few rows at a time: the same splits as the whole-array
    computation, non-finite values found in any chunk (named by row and column), non-numbers and truncated
    files refused."""
    rng = np.random.default_rng(2)
    arr = np.column_stack([rng.normal(size=(97, 2)) * 5 + 3, np.arange(97) % 4, rng.normal(size=(97, 3))])
    np.save(tmp_path / "d.npy", arr.astype(np.float32))
    monkeypatch.setattr(data, "CHUNK_ELEMENTS", 7)  # a row or two per chunk
    d = data.load(str(tmp_path / "d.npy"), label="2")
    X = np.delete(arr.astype(np.float32), 2, axis=1).astype(np.float64)
    tr, va, te = data.split_indices(97, 0, 0.15, 0.15)
    mu, sd = X[tr].mean(0), X[tr].std(0)
    for got, idx in ((d.X_train, tr), (d.X_val, va), (d.X_test, te)):
        np.testing.assert_allclose(got, ((X[idx] - mu) / sd).astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(d.y_train, (np.arange(97) % 4)[tr])
    np.save(tmp_path / "f.npy", np.asfortranarray(arr.astype(np.float32)))  # Fortran order: a memory map
    np.testing.assert_array_equal(data.load(str(tmp_path / "f.npy"), label="2").X_test, d.X_test)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "d.npy").read_bytes()[:-40])
    with pytest.raises(data.DataError, match="truncated"):
        data.load(str(tmp_path / "cut.npy"), label="2")
    bad = arr.copy()
    bad[90, 4] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(data.DataError, match="feature 'x3' is not finite in row 90"):
        data.load(str(tmp_path / "bad.npy"), label="2")
    np.save(tmp_path / "text.npy", np.array([["a", "b", "1"], ["c", "d", "0"]]))
    with pytest.raises(data.DataError, match="features must be numbers"):
        data.load(str(tmp_path / "text.npy"))
    # finite in the file (float64) but beyond float32 once standardized with the training rows' statistics
    huge = arr.copy()
    huge[va[0], 5] = 1e39
    np.save(tmp_path / "huge.npy", huge)
    with pytest.raises(data.DataError, match=f"feature 'x4' in row {va[0]} is 1e\\+39, .* beyond float32"):
        data.load(str(tmp_path / "huge.npy"), label="2")


RUN = ["train", "--dataset", "{data}", "--epochs", "200", "--batch-size", "16", "--hidden", "96", "--seed", "3",
       "--dropout", "0.9,0.7", "--optimizer", "momentum", "--checkpoint-every", "1", "--quiet", "--out", "{out}"]


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 24))  # big enough that a run takes seconds: the kill lands mid-way
    y = (X[:, :3].sum(1) > 0).astype(int) + (X[:, 3] > 1).astype(int)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    fill = {"data": str(tmp_path / "d.npz")}
    whole = [a.format(out=tmp_path / "whole", **fill) for a in RUN]
    p = run(*whole)
    assert p.returncode == 0, p.stderr
    cut = [a.format(out=tmp_path / "cut", **fill) for a in RUN]
    proc = subprocess.Popen([*GRAPHC, *cut], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(f.name.endswith("000008.gcp") for f in ck.glob("ckpt-*.gcp")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "weights.npz").exists()  # it was killed mid-way, before the end
    p = run(*cut, "--resume")
    assert p.returncode == 0, p.stderr
    assert "resuming from" in p.stderr
    a = np.load(tmp_path / "whole" / "weights.npz")
    b = np.load(tmp_path / "cut" / "weights.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    out = tmp_path / "o"
    assert run("train", "--epochs", "2", "--quiet", "--out", str(out)).returncode == 0
    files = sorted((out / "checkpoints").glob("ckpt-*.gcp"))
    newest = files[-1]
    data_ = bytearray(newest.read_bytes())
    data_[len(data_) // 2] ^= 0xFF
    newest.write_bytes(bytes(data_))
    p = run("train", "--epochs", "3", "--quiet", "--out", str(out), "--resume")
    assert p.returncode == 0, p.stderr
    assert "refusing checkpoint" in p.stderr and "corrupt" in p.stderr
    assert "resuming from ckpt-1-000001.gcp" in p.stderr  # the last good one
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_a_divergence_of_the_default_mlp_names_its_layer_not_the_console_scripts_line():
    p = run("train", "--lr", "1e6", "--epochs", "2", "--quiet")
    assert p.returncode != 0 and "at (built by graphc) in mlp." in p.stderr, p.stderr
    assert "cli.py" not in p.stderr and "runpy" not in p.stderr


def test_a_model_file_may_use_dataclasses_with_postponed_annotations(tmp_path):
    """The file runs as an imported module would (registered by name while it runs): a @dataclass under
    `from __future__ import annotations` resolves its string annotations (before: AttributeError)."""
    from graphc.fitting import load_model_file

    (tmp_path / "dc.py").write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\nimport graphc as gc\n\n"
        "@dataclass\nclass Config:\n    width: int = 8\n\n\n"
        "def model(x, n_outputs):\n    return gc.nn.dense(gc.nn.dense(x, Config().width, 'relu', name='h'), "
        "n_outputs, name='o')\n")
    import graphc as gc

    fn, options = load_model_file(str(tmp_path / "dc.py"))
    assert options == {} and fn(gc.input("x", ("N", 3)), 2).shape[1] == 2


def test_adamw_trains_from_the_command_line_as_gc_fit_and_bad_decays_exit_2_writing_nothing(tmp_path, capsys):
    """--optimizer adamw --weight-decay WD trains as gc.fit(optimizer="adamw", weight_decay=WD) (bitwise) and
    records the decay; a negative or non-finite decay, or one given to an optimizer without decoupled decay (which
    would otherwise be silently ignored), exits 2 before anything is written, naming --l2 for the coupled form."""
    from graphc.cli import main
    from graphc.fitting import fit

    out = tmp_path / "run"
    p = run("train", "--optimizer", "adamw", "--weight-decay", "0.05", "--epochs", "2", "--hidden", "32",
            "--quiet", "--checkpoint-every", "0", "--out", str(out))
    assert p.returncode == 0, p.stderr
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["optimizer"] == "adamw" and cfg["weight_decay"] == 0.05 and cfg["lr"] == 0.001
    ref = fit(None, "digits", optimizer="adamw", weight_decay=0.05, epochs=2, hidden=[32], progress=False).params
    got = np.load(out / "weights.npz")
    for name, value in ref.items():
        assert np.array_equal(got[name].view(np.uint32), value.view(np.uint32)), name
    for args, words in ((["--optimizer", "adamw", "--weight-decay", "-0.1"], "weight_decay must be a number >= 0"),
                        (["--optimizer", "adamw", "--weight-decay", "nan"], "weight_decay must be a number >= 0"),
                        (["--weight-decay", "0.05"], "and sgd has none: use optimizer 'adamw' (--optimizer adamw)"),
                        (["--optimizer", "adam", "--weight-decay", "0.05"], "(--l2 0.05")):
        bad = tmp_path / "bad"
        assert main(["train", *args, "--epochs", "1", "--out", str(bad)]) == 2  # in process: no interpreter start
        err = capsys.readouterr().err
        assert words in err and err.startswith("graphc: error: training option: "), err
        assert not bad.exists()


def test_predict_into_a_pipe_closed_early_stops_quietly_and_a_full_disk_is_an_error(tmp_path):
    """`graphc predict ... | head -1`: the reader goes after one line; predict stops with no message (Python's
    advice for EPIPE: exit 1 quietly), not "cannot write the predictions". -o on a full device (/dev/full) is
    still exit 2 naming it. The output is larger than a pipe's buffer, so the write meets the closed pipe."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 2))
    lines = ["a,b,y"] + [f"{r[0]:.4f},{r[1]:.4f},{r[0] - r[1]:.4f}" for r in X]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    p = run("train", "--dataset", str(tmp_path / "d.csv"), "--label", "y", "--epochs", "1", "--quiet", "--out",
            str(tmp_path / "reg"))
    assert p.returncode == 0, p.stderr
    pred = [*GRAPHC, "predict", "--run", str(tmp_path / "reg"), "--data", str(tmp_path / "d.csv")]
    proc = subprocess.Popen(pred, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().rstrip() == b"prediction"
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and err == "", err
    p = run("predict", "--run", str(tmp_path / "reg"), "--data", str(tmp_path / "d.csv"), "-o", "/dev/full")
    assert p.returncode == 2 and "-o /dev/full: cannot write the predictions (No space left on device)" in p.stderr
    assert "Traceback" not in p.stderr
    with open("/dev/full", "w") as full:  # `graphc predict ... > /dev/full`: standard output, not "-o None"
        p = subprocess.run(pred, stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 2 and "standard output: cannot write the predictions (No space left" in p.stderr, p.stderr


def test_the_step_schedule_and_the_penalized_parameters_are_command_line_options(tmp_path):
    """--schedule step --step-every E --step-gamma G runs torch's StepLR(step_size=E, gamma=G) (history.csv's lr) and
    --penalize all|NAMES chooses what --l2/--l1 reach, each as gc.fit's options (bitwise); --step-every without the
    step schedule, or a parameter the model lacks, exits 2 with nothing written."""
    from graphc.cli import main
    from graphc.fitting import fit

    out = tmp_path / "run"
    assert main(["train", "--schedule", "step", "--step-every", "3", "--step-gamma", "0.5", "--epochs", "7",
                 "--hidden", "16", "--l2", "0.01", "--penalize", "all", "--quiet", "--checkpoint-every", "0",
                 "--out", str(out)]) == 0
    rows = (out / "history.csv").read_text().splitlines()
    col = rows[0].split(",").index("lr")
    assert [float(r.split(",")[col]) for r in rows[1:]] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert (cfg["step_every"], cfg["step_gamma"], cfg["penalize"]) == (3, 0.5, "all")
    ref = fit(None, "digits", schedule="step", step_every=3, step_gamma=0.5, epochs=7, hidden=[16], l2=0.01,
              penalize="all", progress=False).params
    got = np.load(out / "weights.npz")
    for name, value in ref.items():
        assert np.array_equal(got[name].view(np.uint32), value.view(np.uint32)), name
    # penalizing the biases too changes them: the option reached the loss
    weights_only = fit(None, "digits", schedule="step", step_every=3, step_gamma=0.5, epochs=7, hidden=[16], l2=0.01,
                       progress=False).params
    assert not np.array_equal(weights_only["mlp.0.b"], ref["mlp.0.b"])
    assert np.array_equal(got["mlp.0.b"], ref["mlp.0.b"])

    named = tmp_path / "named"
    assert main(["train", "--epochs", "2", "--hidden", "16", "--l1", "0.01", "--penalize", "mlp.0.W,mlp.1.b",
                 "--quiet", "--checkpoint-every", "0", "--out", str(named)]) == 0
    assert json.loads((named / "metrics.json").read_text())["config"]["penalize"] == ["mlp.0.W", "mlp.1.b"]
    for args, words in ((["--step-every", "3"], "add schedule='step' (--schedule step)"),
                        (["--schedule", "cosine", "--step-gamma", "0.5"], "the schedule is 'cosine'"),
                        (["--step-every", "0", "--schedule", "step"], "step_every (epochs between"),
                        (["--l2", "0.1", "--penalize", "c1.W"], "unknown parameter(s) ['c1.W']"),
                        (["--l2", "0.1", "--penalize", ","], "--penalize: expected weights, all")):
        bad = tmp_path / "bad"
        p = run_in_process("train", *args, "--epochs", "1", "--out", str(bad))
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert not bad.exists()
