"""Issue 15: defects a new user met (reused --out, 0-d parameters at resume, a gradient's inf reported a step
late, options that were silently ignored, unnamed layers colliding, labels and standardization lost, ...).
Each test failed before its fix."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from graphc_cli import run_in_process

import graphc as gc
from graphc import fit
from graphc.nn import checkpoint as ckpt

GRAPHC = [sys.executable, "-m", "graphc.cli"]
SMALL = ["--hidden", "8", "--quiet"]


def run(*args, **kw):
    return subprocess.run([*GRAPHC, *map(str, args)], capture_output=True, text=True, **kw)


def ckpt_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.gcp"))


# 1 -- a used --out is refused unless --resume or --overwrite; runs are never mixed
def test_reused_out_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "d"
    assert run("train", "--epochs", "4", *SMALL, "--out", out).returncode == 0
    before = (out / "metrics.json").read_bytes()
    p = run("train", "--epochs", "2", *SMALL, "--out", out)
    assert p.returncode == 2 and "already holds a run" in p.stderr and "--overwrite" in p.stderr, p.stderr
    assert (out / "metrics.json").read_bytes() == before and ckpt_names(out)[-1] == "ckpt-1-000004.gcp"
    p = run("train", "--epochs", "2", *SMALL, "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr
    assert ckpt_names(out) == ["ckpt-1-000001.gcp", "ckpt-1-000002.gcp"]  # none of the old run's are left
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    p = run("train", "--epochs", "3", *SMALL, "--out", out, "--resume")
    assert p.returncode == 0 and "resuming from ckpt-1-000002.gcp" in p.stderr, p.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
    assert not list(out.glob(".tmp-*")) and not (out / ".graphc-train.lock").exists()


def test_stale_newer_checkpoint_is_pruned_not_kept_as_newest(tmp_path):
    """A checkpoint named after the one just written (refused at resume, or another run's) is removed: pruning
    by name used to keep it as the 'newest' and a later --resume continued it."""
    out = tmp_path / "d"
    fit(data="breast_cancer", epochs=2, hidden=[4], out=out, progress=False)
    ck = out / "checkpoints"
    (ck / "ckpt-1-000009.gcp").write_bytes(b"GRAPHCKP1\n" + b"\0" * 64)  # corrupt, and named after the run's
    fit(data="breast_cancer", epochs=3, hidden=[4], out=out, resume=True, progress=False)
    assert ckpt_names(out) == ["ckpt-1-000002.gcp", "ckpt-1-000003.gcp"]


def test_resume_with_nothing_loadable_is_refused(tmp_path):
    out = tmp_path / "d"
    fit(data="breast_cancer", epochs=1, hidden=[4], out=out, progress=False)
    for f in (out / "checkpoints").glob("*.gcp"):
        f.write_bytes(b"junk")
    with pytest.raises(gc.GraphcError, match="no checkpoint there could be loaded"):
        fit(data="breast_cancer", epochs=2, hidden=[4], out=out, resume=True, progress=False)


# 2 -- 0-d parameters survive a checkpoint
SCALAR_MODEL = """
import graphc as gc

def model(x, n_outputs):
    temperature = gc.param("temperature", (), init=1.0)
    return gc.nn.dense(x, n_outputs) / temperature
"""


def test_resume_with_a_scalar_parameter_is_bitwise_equal(tmp_path):
    (tmp_path / "m.py").write_text(SCALAR_MODEL)
    opts = dict(data="breast_cancer", progress=False)
    whole = fit(str(tmp_path / "m.py"), epochs=3, **opts)
    fit(str(tmp_path / "m.py"), epochs=2, out=tmp_path / "cut", **opts)
    _, arrays = ckpt.load(sorted((tmp_path / "cut" / "checkpoints").glob("*.gcp"))[-1])
    assert arrays["state/temperature"].shape == ()
    first = (tmp_path / "cut" / "history.csv").read_text().splitlines()[0]
    resumed = fit(str(tmp_path / "m.py"), epochs=3, out=tmp_path / "cut", resume=True, **opts)
    for k, v in whole.params.items():
        np.testing.assert_array_equal(v, resumed.params[k])
    # history.csv keeps its column order (the rows that came back from the checkpoint had theirs sorted)
    assert (tmp_path / "cut" / "history.csv").read_text().splitlines()[0] == first
    assert first.startswith("phase,epoch,step,lr,train_loss,samples_per_second,val_loss,val_accuracy")


def test_old_checkpoint_with_a_1d_scalar_still_resumes(tmp_path):
    """Checkpoints written before the fix hold 0-d arrays as shape (1,): same values, reshaped at resume."""
    (tmp_path / "m.py").write_text(SCALAR_MODEL)
    opts = dict(data="breast_cancer", progress=False)
    fit(str(tmp_path / "m.py"), epochs=1, out=tmp_path / "o", **opts)
    path = sorted((tmp_path / "o" / "checkpoints").glob("*.gcp"))[-1]
    meta, arrays = ckpt.load(path)
    arrays = {k: v.reshape(1) if v.ndim == 0 else v for k, v in arrays.items()}
    ckpt.save(path, meta, arrays)
    r = fit(str(tmp_path / "m.py"), epochs=2, out=tmp_path / "o", resume=True, **opts)
    assert r.params["temperature"].shape == ()


# 5 -- a gradient's non-finite value is named at its step and its line
def test_backward_nonfinite_value_is_named_at_its_step_and_source_line(tmp_path):
    path = tmp_path / "sqrtm.py"
    path.write_text("import graphc as gc\n\n\ndef model(x, n_outputs):\n    b = gc.param('b', (), init=0.0)\n"
                    "    h = gc.nn.dense(x, n_outputs)\n    return h + gc.sqrt(b)\n")
    with pytest.raises(gc.NumericalError) as e:
        fit(str(path), data="digits", epochs=2, progress=False)
    msg = str(e.value)
    assert "epoch 1, step 1 of the epoch (global step 1)" in msg, msg
    assert "backward pass (grad of sqrt)" in msg and "sqrtm.py:7" in msg, msg
    assert "already in param" not in msg


def test_forward_nonfinite_value_is_named_in_the_forward_pass(tmp_path):
    path = tmp_path / "logm.py"
    path.write_text("import graphc as gc\n\n\ndef model(x, n_outputs):\n    h = gc.nn.dense(x, n_outputs)\n"
                    "    return h + gc.log(gc.sum(x * 0.0))\n")
    with pytest.raises(gc.NumericalError) as e:
        fit(str(path), data="digits", epochs=1, progress=False)
    msg = str(e.value)
    assert "step 1 of the epoch" in msg and "forward pass" in msg and "logm.py:6" in msg, msg


def test_a_max_pools_infinite_padding_is_not_named_as_where_a_divergence_started():
    """A max-pool pads with -inf on purpose; the diagnosis named that pad as the first non-finite value."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((61, 9, 7, 2)).astype(np.float32), rng.standard_normal(61)

    def cnn(images, n_outputs):
        h = gc.nn.conv2d(images, 4, 3, stride=2, name="c")
        h = gc.nn.max_pool2d(h, 2, padding="same")
        return gc.nn.dense(gc.nn.flatten(h), n_outputs, name="out")

    with pytest.raises(gc.NumericalError) as e:
        fit(cnn, (X, y), task="regression", epochs=5, batch_size=7, lr=0.1, progress=False)
    msg = str(e.value)
    assert "produced by pad" not in msg and "first produced by" in msg, msg


# 6 -- divergence on the command line: exit 5, no numpy warning, no false checkpoint claim, no empty --out
def test_divergence_exit_status_message_and_no_empty_out(tmp_path):
    out = tmp_path / "new"
    p = run("train", "--lr", "1e9", "--epochs", "2", "--quiet", "--out", out)
    assert p.returncode == 5, p.stderr
    assert "RuntimeWarning" not in p.stderr and "Traceback" not in p.stderr
    assert "No checkpoint had been written" in p.stderr and "last good checkpoint" not in p.stderr
    assert not out.exists()


# 7 -- options of the default MLP are refused with a model of one's own, and the record says what ran
@pytest.mark.parametrize("flag, value", [("--hidden", "16"), ("--dropout", "0.5"), ("--activation", "tanh")])
def test_mlp_options_with_a_model_file_are_refused(tmp_path, flag, value):
    (tmp_path / "m.py").write_text("import graphc as gc\ndef model(x, n):\n    return gc.nn.dense(x, n)\n")
    p = run_in_process("train", "--model", tmp_path / "m.py", flag, value, "--epochs", "1")
    assert p.returncode == 2 and flag in p.stderr and "default MLP only" in p.stderr, p.stderr


def test_metrics_record_the_model_that_ran(tmp_path):
    (tmp_path / "m.py").write_text("import graphc as gc\ndef model(x, n):\n    return gc.nn.dense(x, n)\n")
    r = fit(str(tmp_path / "m.py"), data="breast_cancer", epochs=1, progress=False, out=tmp_path / "o")
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["model"] == str(tmp_path / "m.py") and "hidden" not in m["config"] and "dropout" not in m["config"]
    assert r.metrics["config"]["lr"] == 0.05  # the dataset's default learning rate still applies
    d = fit(data="breast_cancer", epochs=1, progress=False)
    assert d.metrics["model"] == "default MLP" and d.metrics["config"]["hidden"] == [64]


# 8 -- help, defaults, usage and suggestions
def test_train_help_shows_real_defaults_and_every_option():
    p = run_in_process("train", "--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "(default: None)" not in text and "(default: relu) (default" not in text
    for words in ("--epochs N passes", "--seed S initialization", "--threads T threads", "--momentum M momentum",
                  "adagrad as PyTorch's (default: sgd)", "diabetes: --lr 0.01, --hidden 64, --epochs 50",
                  "--optimizer adam: --lr 0.001", "5 training diverged", "--overwrite"):
        assert words in text, words


def test_unknown_option_prints_the_subcommand_usage_and_datasets_are_suggested():
    p = run_in_process("train", "--epoch", "3", "--bogus")
    assert p.returncode == 2 and p.stderr.startswith("usage: graphc train") and "--bogus" in p.stderr, p.stderr
    p = run_in_process("train", "--dataset", "digit")
    assert p.returncode == 2 and "did you mean the bundled dataset 'digits'" in p.stderr, p.stderr
    p = run_in_process("train", "--out", "somewhere", "--resume", "--overwrite")
    assert p.returncode == 2 and "give one of them" in p.stderr, p.stderr


def test_adam_gets_its_own_default_learning_rate():
    from graphc.aot.build import model_spec

    r = fit(data="breast_cancer", optimizer="adam", epochs=1, progress=False)
    assert r.metrics["config"]["lr"] == 0.001
    assert fit(data="breast_cancer", optimizer="adam", lr=0.01, epochs=1, progress=False).config.lr == 0.01
    assert model_spec(None, "breast_cancer", optimizer="adam").config.lr == 0.001  # a binary's default too
    assert model_spec(None, "breast_cancer", optimizer="sgd").config.lr == 0.05


# 9b -- csv files as spreadsheets write them
@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
@pytest.mark.parametrize("header", [True, False])
def test_csv_delimiters_headerless_files_and_column_numbers(tmp_path, sep, header):
    """The delimiter is sniffed (a European spreadsheet's ';', tabs); a first row of numbers is data, its columns
    numbered from 0; a column number (negative from the end) works where no column has that name; a byte-order
    mark is skipped. All give the same arrays."""
    from graphc.data import _read_csv

    rng = np.random.default_rng(0)
    X = np.round(rng.normal(size=(30, 3)), 3)
    y = (X[:, 0] > 0).astype(int)
    lines = ([sep.join(["a", "b", "c", "y"])] if header else []) + [
        sep.join([*map(str, r), str(t)]) for r, t in zip(X, y, strict=True)]
    (tmp_path / "d.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    for label in (["y", "3", "-1"] if header else ["3", "-1"]):
        got_X, got_y, feats = _read_csv(str(tmp_path / "d.csv"), label, None)
        np.testing.assert_array_equal(got_X, X)
        np.testing.assert_array_equal(got_y, y)
        assert feats == (["a", "b", "c"] if header else ["0", "1", "2"])
    got_X, _, feats = _read_csv(str(tmp_path / "d.csv"), "-1", ["2", "0"] if not header else ["c", "0"])
    np.testing.assert_array_equal(got_X, X[:, [2, 0]])


# 10 -- messages that name the culprit
def test_messages_name_the_culprit(tmp_path, monkeypatch):
    (tmp_path / "gap.csv").write_text("a,b,label\n1,2,x\n3,4,\n5,6,y\n")
    with pytest.raises(gc.GraphcError, match=r"gap.csv:3: the label column 'label' is empty"):
        fit(data=str(tmp_path / "gap.csv"), label="label", epochs=1, progress=False)
    (tmp_path / "holes.csv").write_text("a,colour,label\n1,red,x\n,blue,y\n")
    with pytest.raises(gc.GraphcError, match=r"holes.csv:2: column 'colour' holds 'red', not a number: encode it"):
        fit(data=str(tmp_path / "holes.csv"), label="label", epochs=1, progress=False)
    with pytest.raises(gc.GraphcError, match=r"holes.csv:3: column 'a' is empty \(a missing value\): fill it in"):
        fit(data=str(tmp_path / "holes.csv"), label="label", features=["a"], epochs=1, progress=False)
    with pytest.raises(gc.GraphcError, match=r"no label column named 'lable' .*did you mean 'label'\?"):
        fit(data=str(tmp_path / "holes.csv"), label="lable", epochs=1, progress=False)
    with pytest.raises(gc.GraphcError, match=r"holes.csv: name the label column with --label \(gc.fit's label=\); "
                       r"a .csv has no default label column \(columns: a, colour, label\)"):
        fit(data=str(tmp_path / "holes.csv"), epochs=1, progress=False)
    np.savez(tmp_path / "d.npz", X=np.zeros((10, 3)), y=np.arange(10) % 2)
    with pytest.raises(gc.GraphcError, match=r"--label 'nosuch': the file has no array of that name \(arrays: X, y"):
        fit(data=str(tmp_path / "d.npz"), label="nosuch", epochs=1, progress=False)
    (tmp_path / "wide.py").write_text("import graphc as gc\n\ndef model(x, n):\n    return gc.nn.dense(x, n + 1)\n")
    with pytest.raises(gc.GraphcError, match=r"10 classes.*wide.py.*wide.py:4"):
        fit(str(tmp_path / "wide.py"), data="digits", epochs=1, progress=False)
    np.savez(tmp_path / "frac.npz", X=np.ones((40, 3)), y=np.arange(40) * 0.5)
    with pytest.raises(gc.GraphcError) as e:
        fit(data=str(tmp_path / "frac.npz"), task="multiclass", epochs=1, progress=False)
    assert "label 0.5 in row" in str(e.value) and "np." not in str(e.value)


def test_a_model_that_forgets_to_flatten_is_told_so_at_its_line(tmp_path):
    """The loss's own shape error came first ('labels [N] do not match logits [N,8,8,10]'), naming neither the
    model nor its line."""
    (tmp_path / "noflat.py").write_text("import graphc as gc\n\n\ndef model(images, n_outputs):\n"
                                        "    h = gc.nn.conv2d(images, 4, 3, name='c')\n"
                                        "    return gc.nn.dense(h, n_outputs, name='out')\n")
    with pytest.raises(gc.GraphcError, match=r"the model returns f32\[N,8,8,10\] \(made at noflat.py:6\): a "
                                             r"multiclass model returns \(N, 10\) logits \(flatten .*gc.nn.flatten"):
        fit(str(tmp_path / "noflat.py"), data="digits", epochs=1, progress=False)
    with pytest.raises(gc.GraphcError, match=r"the model returns f32\[N\] .*returns \(N, 10\) logits$"):
        fit(lambda x, n: gc.nn.dense(x, n, name="d")[:, 0], data="digits", epochs=1, progress=False)


def test_one_hot_and_other_2d_class_labels_are_refused_before_training(tmp_path):
    """One-hot labels (a Keras habit) read as a binary task of K outputs, trained, then crashed in the metrics
    with numpy's IndexError (the CLI: a traceback, exit 1)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 8)).astype(np.float32), rng.integers(0, 3, 60)
    with pytest.raises(gc.GraphcError, match=r"labels are one-hot rows \(shape \(60, 3\)\).*y.argmax\(axis=1\)"):
        fit(data=(X, np.eye(3)[y]), epochs=1, progress=False)
    for task in ("multiclass", "binary", None):
        with pytest.raises(gc.GraphcError, match=r"labels must be one per row \(shape \(N,\)\), got shape \(60, 2\)"):
            fit(data=(X, np.stack([y % 2, y // 2], 1)), task=task, epochs=1, progress=False)
    np.savez(tmp_path / "onehot.npz", X=X, y=np.eye(3)[y])
    p = run("train", "--dataset", tmp_path / "onehot.npz", "--out", tmp_path / "run", *SMALL)
    assert p.returncode == 2 and "one-hot" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_a_failed_checkpoint_write_says_what_and_which_is_the_last_good_one(tmp_path, monkeypatch):
    calls = []
    real = ckpt.save

    def full_disk(path, meta, arrays):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, meta, arrays)

    monkeypatch.setattr(ckpt, "save", full_disk)
    with pytest.raises(gc.GraphcError) as e:
        fit(data="breast_cancer", epochs=3, hidden=[4], out=tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "writing the checkpoint" in msg and "ckpt-1-000002.gcp" in msg and "No space left" in msg, msg
    assert "the last good checkpoint is" in msg and "ckpt-1-000001.gcp" in msg, msg
    assert ckpt_names(tmp_path / "o") == ["ckpt-1-000001.gcp"]


# 11 -- unnamed layers get unique, stable names
def test_unnamed_layers_are_named_per_build_and_stable(tmp_path):
    def model(x, n_outputs):
        return gc.nn.dense(gc.nn.dense(x, 16, "relu"), n_outputs)

    a = fit(model, data="breast_cancer", epochs=1, progress=False)
    b = fit(model, data="breast_cancer", epochs=1, progress=False)
    assert sorted(a.params) == sorted(b.params) == ["dense.W", "dense.b", "dense_1.W", "dense_1.b"]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])  # same names: same seeded initialization
    x = gc.input("x", ("N", 3))
    with gc.nn.model_build():
        names = [p.name for p in gc.nn.parameters(gc.nn.mlp(gc.nn.mlp(x, [4, 2]), [2]))]
    assert names == ["mlp.0.W", "mlp.0.b", "mlp.1.W", "mlp.1.b", "mlp_1.0.W", "mlp_1.0.b"]
    # outside a build an unnamed layer keeps its base name whatever ran before (no count across the process)
    assert [p.name for p in gc.nn.parameters(gc.nn.dense(x, 2))] == ["dense.W", "dense.b"]
    with pytest.raises(gc.GraphcError, match=r"named 'dense.W'.*gc.nn.model_build"):
        gc.compile(gc.sum(gc.nn.dense(gc.nn.dense(x, 4), 2)))


def test_two_unnamed_layers_of_one_shape_are_not_silently_one_layer():
    """Parameters are hash-consed by name and shape: outside a model build two unnamed layers of the same shape
    got the same weights (dense(dense(x, 4), 4) trained one 4x4 matrix twice), and conv2d, conv1d, rnn, gru,
    lstm and embedding had fixed default names, so even inside a build stacked layers shared their weights.
    Now every layer is named per build (conv, conv_1, ...; lstm, lstm_1, ...), and outside a build a graph
    holding two unnamed layers on one parameter is refused at compile and in evaluate; one layer, or layers
    named alike on purpose (tied weights), are as before."""
    x = gc.input("x", ("N", 4))
    img = gc.input("img", ("N", 6, 6, 4))
    seq = gc.input("seq", ("N", 5, 4))
    xs = gc.input("xs", (5, "N", 4))
    ids = gc.input("ids", ("N",), "int32")
    stacks = {
        "dense.W": lambda: gc.nn.dense(gc.nn.dense(x, 4), 4),
        "conv.W": lambda: gc.nn.conv2d(gc.nn.conv2d(img, 4, 3), 4, 3),
        "conv.W ": lambda: gc.nn.conv1d(gc.nn.conv1d(seq, 4, 3), 4, 3),
        "lstm.Wx": lambda: gc.nn.lstm(gc.nn.lstm(xs, 4, return_sequences=True), 4),
        "gru.Wx": lambda: gc.nn.gru(gc.nn.gru(xs, 4, return_sequences=True), 4),
        "rnn.Wx": lambda: gc.nn.rnn(gc.nn.rnn(xs, 4, return_sequences=True), 4),
        "layer_norm.gamma": lambda: gc.nn.layer_norm(gc.nn.layer_norm(x) * 2.0),
        "embedding.E": lambda: gc.nn.embedding(ids, 7, 3) + gc.nn.embedding(ids + 1, 7, 3),
    }
    for pname, build in stacks.items():
        with gc.nn.model_build():
            names = {p.name for p in gc.nn.parameters(build())}
        base = pname.strip().split(".")[0]
        assert any(n.startswith(base + "_1.") for n in names), (pname, names)  # two layers, two sets of weights
        out = gc.sum(build())
        with pytest.raises(gc.GraphcError, match=rf"two unnamed layers share the parameter '{pname.strip()}'.*name "
                                                 r"them .*model_build"):
            gc.compile([out])
        with pytest.raises(gc.GraphcError, match="two unnamed layers share"):
            gc.evaluate(out, {"x": np.ones((2, 4), np.float32), "img": np.ones((2, 6, 6, 4), np.float32),
                              "seq": np.ones((2, 5, 4), np.float32), "xs": np.ones((5, 2, 4), np.float32),
                              "ids": np.arange(2, dtype=np.int32), **gc.nn.init_params(out)})
    gc.compile([gc.sum(gc.nn.dense(x, 4))])  # one unnamed layer (its parameter also held the stack's uses)
    tied = gc.nn.dense(gc.nn.dense(x, 4, name="t"), 4, name="t")  # the same name on purpose: one matrix
    assert [p.name for p in gc.nn.parameters(tied)] == ["t.W", "t.b"]
    gc.compile([gc.sum(tied)])


@pytest.mark.parametrize("layer", [gc.nn.lstm, gc.nn.gru, gc.nn.rnn])
def test_stacked_unnamed_recurrent_layers_are_refused_after_a_garbage_collection(layer):
    """A layer's record held its final carry and its outputs; with return_sequences the carry is unused and dies
    once the collector runs, and the record was dropped with it: the stack then compiled with tied weights
    (the suite failed so, depending on when the collector ran)."""
    import gc as collector

    xs = gc.input("xs", (5, "N", 4))
    first = layer(xs, 4, return_sequences=True)
    collector.collect()
    out = gc.sum(layer(first, 4))
    with pytest.raises(gc.GraphcError, match="two unnamed layers share the parameter"):
        gc.compile([out])


# 3, 4 -- standardization and class labels travel with the weights; per-class metrics under the user's labels
def test_class_labels_and_standardization_are_saved(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)) * [1, 10, 100] + [0, 5, -50]
    names = np.array(["cat", "dog", "bird"])
    y = names[(X[:, 0] > 0).astype(int) + (X[:, 1] > 5).astype(int)]
    lines = ["a,b,c,animal"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    r = fit(data=str(tmp_path / "d.csv"), label="animal", epochs=2, hidden=[8], progress=False, out=tmp_path / "o")
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["classes"] == ["bird", "cat", "dog"] and sorted(m["test_per_class"]) == ["bird", "cat", "dog"]
    assert m["test_confusion_labels"] == ["bird", "cat", "dog"]
    d = json.loads((tmp_path / "o" / "data.json").read_text())
    assert d["classes"] == ["bird", "cat", "dog"] and d["features"] == ["a", "b", "c"]
    np.testing.assert_allclose(d["x_mean"], r.dataset.x_mean)
    np.testing.assert_allclose(d["x_std"], r.dataset.x_std)
    assert set(r.predict_labels(X[:50])) <= {"bird", "cat", "dog"}
    assert np.mean(r.predict_labels(X) == y) > 0.6
    proba = r.predict_proba(X[:50])  # columns in the order of the labels, each row a distribution
    assert proba.shape == (50, 3) and np.allclose(proba.sum(axis=1), 1.0) and np.all(proba >= 0)
    np.testing.assert_array_equal(np.asarray(r.dataset.classes)[proba.argmax(axis=1)], r.predict_labels(X[:50]))
    yb = np.where(X[:, 0] > 0, "yes", "no")
    rb = fit(data=(X, yb), epochs=2, hidden=[8], progress=False)
    pb = rb.predict_proba(X[:50])
    assert pb.shape == (50, 2) and np.allclose(pb.sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.asarray(rb.dataset.classes)[pb.argmax(axis=1)], rb.predict_labels(X[:50]))
    with pytest.raises(gc.GraphcError, match="predict_proba: this run is not a classification"):
        fit(data=(X, X[:, 0]), epochs=1, hidden=[4], progress=False).predict_proba(X[:2])
    np.savez(tmp_path / "s.npz", X=X, y=np.array([-1, 0, 1, 2])[np.arange(300) % 4])
    r = fit(data=str(tmp_path / "s.npz"), epochs=1, hidden=[4], progress=False)
    assert sorted(r.metrics["test_per_class"]) == ["-1", "0", "1", "2"] and r.metrics["classes"] == [-1, 0, 1, 2]


# 9 -- no validation metrics measured on rows the refit trained on; the refit drawn in loss.png
def test_refit_drops_validation_metrics_and_says_why(tmp_path):
    r = fit(data="breast_cancer", epochs=4, hidden=[4], early_stopping=1, refit=True, progress=False,
            out=tmp_path / "o")
    assert r.metrics["refit_epochs"] >= 1
    assert "val_accuracy" not in r.metrics and "refit" in r.metrics["val_note"]



# 12 -- the README's install gives a Jupyter front end to open the notebooks with
def test_the_notebooks_extra_has_a_jupyter_front_end_and_the_readme_installs_it():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.split(">")[0].split("=")[0] in ("notebook", "jupyterlab") for req in extras["notebooks"])
    assert "pip install -e '.[notebooks]' && jupyter notebook notebooks/" in (root / "README.md").read_text()


def test_values_too_large_to_standardize_are_refused_without_a_numpy_warning(tmp_path):
    """Found by the fuzz harness: a feature near 1e300 overflowed the variance with a RuntimeWarning and trained
    with that feature silently zeroed (std inf)."""
    import warnings

    X = np.ones((40, 3))
    X[5, 1] = 1e300
    np.savez(tmp_path / "big.npz", X=X, y=np.arange(40) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(gc.GraphcError, match="feature 'x1' has values too large to standardize"):
            fit(data=str(tmp_path / "big.npz"), epochs=1, progress=False)


def test_a_regression_metric_of_outputs_near_float32s_range_is_computed_without_overflow(tmp_path):
    """Found by the fuzz harness: a test row standardized to ~1e38 (legal: within float32) gave an output near
    1e38, whose squared error overflowed float32 in the metric with a RuntimeWarning (an error under -W error)
    and an MSE of inf. The metric is float64's (8.9e75 here), and the summary line prints it readably."""
    from graphc.nn.train import Trainer

    class _T:
        task = "regression"

    m = Trainer.metrics(_T(), np.array([[9.41398e37]], np.float32), np.array([3.0], np.float32), y_std=0.5)
    assert m["mse"] == pytest.approx((9.41398e37 - 3.0) ** 2, rel=1e-6) and np.isfinite(m["mse"])
    rng = np.random.default_rng(4 * 7 + 4)
    X = rng.normal(size=(4, 4)) * 3
    X[2, 0] = -1e39
    np.save(tmp_path / "d.npy", np.column_stack([X, np.arange(4) % 3]))
    p = run_in_process("train", "--dataset", tmp_path / "d.npy", "--epochs", "1", "--hidden", "3", "--out",
                       tmp_path / "o", warnings_as_errors=True)
    assert p.returncode == 0, p.stderr
    mse = json.loads((tmp_path / "o" / "metrics.json").read_text())["test_mse"]
    assert np.isfinite(mse) and mse > 1e70
    assert f"test MSE {mse:.4g} (RMSE" in p.stdout


def _png_pixels(data: bytes) -> np.ndarray:
    import struct
    import zlib

    w, h = struct.unpack(">II", data[16:24])
    raw = zlib.decompress(data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8])
    return np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)[:, 1:].reshape(h, w, 3)


def test_fallback_loss_png_has_title_axis_labels_and_legend_text():
    """Without matplotlib, loss.png had lines and numbers only: no title, axis labels or legend text."""
    from graphc.viz.plot import _builtin

    series = {"train loss": [3.0, 2.0, 1.0], "validation loss": [3.5, 2.5, 2.0]}
    bare = _png_pixels(_builtin(series))
    full = _png_pixels(_builtin(series, xlabel="epoch", ylabel="loss", title="digits: learning curves"))
    ink = (full.sum(2) == 0) & (bare.sum(2) != 0)  # black pixels only the labelled version has
    h, w = ink.shape
    assert ink[:20, w // 4:3 * w // 4].sum() > 100  # the title, centred on top
    assert ink[h - 20:, :].sum() > 30  # the x label, under the ticks
    assert ink[20:34, :60].sum() > 20  # the y label, over the y axis
    assert (full[34:70, w // 2:].sum(2) == 0).sum() > 100  # legend names (black) beside the colored swatches


def test_loss_png_says_when_the_train_curve_holds_a_penalty_or_dropout():
    """With l2 and dropout, loss.png drew the penalized objective (dropout on) as "train loss" above a
    "validation loss" that is the data loss in inference: train 1.0 against validation 0.4 on digits, the gap the
    penalty's alone."""
    from graphc.fitting import curve_series

    r = fit(data="breast_cancer", epochs=2, hidden=[4], l2=0.5, dropout=0.5, early_stopping=1, refit=True,
            progress=False)
    series = curve_series(r.history, r.config)
    train = "train loss (+ L2 penalty, dropout on)"
    assert list(series) == [train, "validation loss", f"refit {train} (train+validation)"]
    assert series[train] == [h["train_loss"] for h in r.history if h["phase"] == 1]
    plain = fit(data="breast_cancer", epochs=1, hidden=[4], progress=False)
    assert list(curve_series(plain.history, plain.config)) == ["train loss", "validation loss"]
    l1 = fit(data="breast_cancer", epochs=1, hidden=[4], l1=0.01, dropout=[1.0, 1.0], progress=False)
    assert list(curve_series(l1.history, l1.config))[0] == "train loss (+ L1 penalty)"


def test_build_and_export_refuse_mlp_options_with_a_model_file(tmp_path):
    from graphc.aot import AotError, build, export

    (tmp_path / "m.py").write_text("import graphc as gc\ndef model(x, n):\n    return gc.nn.dense(x, n)\n")
    with pytest.raises(AotError, match="--hidden shape"):
        build(tmp_path / "b", model=str(tmp_path / "m.py"), hidden=[16])
    with pytest.raises(AotError, match="--activation shape"):
        export(tmp_path / "libm.so", tmp_path, model=str(tmp_path / "m.py"), activation="tanh")


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path):
    """Found by the fuzz harness: --resume --epochs 2 on a 3-epoch run reported 'epochs: 3' as if asked for."""
    fit(data="breast_cancer", epochs=3, hidden=[4], out=tmp_path / "o", progress=False)
    with pytest.raises(gc.GraphcError, match="has done 3 epochs already, more than --epochs 2"):
        fit(data="breast_cancer", epochs=2, hidden=[4], out=tmp_path / "o", resume=True, progress=False)
    r = fit(data="breast_cancer", epochs=3, hidden=[4], out=tmp_path / "o", resume=True, progress=False)
    assert r.metrics["epochs"] == 3


def test_a_failed_results_write_says_what_and_where_the_state_is(tmp_path, monkeypatch):
    from graphc import fitting

    def full_disk(path, data, **kw):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fitting, "write_atomic", full_disk)
    with pytest.raises(gc.GraphcError) as e:
        fit(data="breast_cancer", epochs=2, hidden=[4], out=tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "writing the results into" in msg and "No space left" in msg and "metrics.json" in msg, msg
    assert "ckpt-1-000002.gcp" in msg and "--resume" in msg, msg


def test_a_finished_run_loads_back_and_predicts_as_after_training(tmp_path):
    """gc.load(out): the model rebuilt from what the run recorded (the default MLP's shape, or its model file),
    its weights, standardization and labels: predictions bitwise those fit returned; regression in the target's
    units; a run whose model file is gone asks for model=."""
    r = fit(data="digits", epochs=1, hidden=[24, 12], out=tmp_path / "a", progress=False)
    back = gc.load(tmp_path / "a")
    X = r.dataset.X_test[:9]
    assert np.array_equal(back.predict(X), r.predict(X)) and back.config.hidden == (24, 12)
    assert np.array_equal(back.predict_proba(X * 4), r.predict_proba(X * 4))
    assert back.metrics == json.loads((tmp_path / "a" / "metrics.json").read_text()) and len(back.history) == 1
    (tmp_path / "cnn.py").write_text("import graphc as gc\ndef model(images, n):\n"
                                     "    return gc.nn.dense(gc.nn.flatten(gc.nn.conv2d(images, 3, 3, name='c')), n)\n")
    r = fit(str(tmp_path / "cnn.py"), data="digits", epochs=1, out=tmp_path / "b", progress=False)
    assert np.array_equal(gc.load(tmp_path / "b").predict(X), r.predict(X))
    (tmp_path / "cnn.py").rename(tmp_path / "moved.py")
    with pytest.raises(gc.GraphcError, match=r"trained the model .*cnn.py.*not there now: pass model="):
        gc.load(tmp_path / "b")
    assert np.array_equal(gc.load(tmp_path / "b", model=str(tmp_path / "moved.py")).predict(X), r.predict(X))
    rng = np.random.default_rng(0)
    Xr = rng.normal(size=(80, 3)) * [1, 10, 100]
    r = fit(data=(Xr, Xr[:, 0] * 3 + 1), epochs=2, out=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(gc.load(tmp_path / "c").predict_raw(Xr[:5]), r.predict_raw(Xr[:5]))
    with pytest.raises(gc.GraphcError, match="no data.json there"):
        gc.load(tmp_path)


def test_loading_a_damaged_run_or_a_file_is_an_error_naming_what(tmp_path):
    """gc.load and graphc export --weights on what is not a finished run: a file instead of its directory, a
    damaged weights.npz, a data.json that is not a run's: each a GraphcError naming the file (were
    NotADirectoryError, numpy's ValueError about pickles, a KeyError)."""
    import shutil

    fit(data="digits", epochs=1, hidden=[8], out=tmp_path / "run", progress=False)
    with pytest.raises(gc.GraphcError, match=r"a file, not a directory: pass the --out directory .*: .*run\)"):
        gc.load(tmp_path / "run" / "weights.npz")
    for name, damage in (("npz", b"garbage"), ("cut", None)):
        bad = tmp_path / name
        shutil.copytree(tmp_path / "run", bad)
        raw = (bad / "weights.npz").read_bytes()
        (bad / "weights.npz").write_bytes(damage if damage is not None else raw[: len(raw) // 2])
        with pytest.raises(gc.GraphcError, match=r"weights\.npz.*(not a readable \.npz file|not readable)"):
            gc.load(bad)
    (tmp_path / "npz" / "data.json").write_text("[1, 2]")
    with pytest.raises(gc.GraphcError, match="data.json does not describe a graphc run"):
        gc.load(tmp_path / "npz")
    from graphc.aot.build import AotError, _load_weights

    with pytest.raises(AotError, match="a file, not a directory"):
        _load_weights(tmp_path / "run" / "weights.npz", [])


def test_empty_image_data_and_empty_rows_to_predict_are_said_in_words(tmp_path):
    """An .npz of zero images, or a file of zero rows to predict, was numpy's 'cannot reshape array of size 0'."""
    from graphc import data

    np.savez(tmp_path / "none.npz", X=np.zeros((0, 8, 8, 1), np.float32), y=np.zeros(0, int))
    with pytest.raises(gc.GraphcError, match=r"none.npz: features must be a non-empty array, got X of shape "
                                             r"\(0, 8, 8, 1\): no examples"):
        fit(data=str(tmp_path / "none.npz"), epochs=1, progress=False)
    # zero sequences (N, T, F): the file's own shape, not the flattened rows (0, T * F)
    np.savez(tmp_path / "noseq.npz", X=np.zeros((0, 6, 5), np.float32), y=np.zeros(0, int))

    def seq_model(sequences, n_outputs):
        return gc.nn.dense(gc.nn.gru(sequences, 3, name="g_empty"), n_outputs, name="o_empty")

    with pytest.raises(gc.GraphcError, match=r"noseq.npz: features must be a non-empty array, got X of shape "
                                             r"\(0, 6, 5\): no examples \(an empty first axis\)$"):
        fit(seq_model, str(tmp_path / "noseq.npz"), epochs=1, progress=False)
    np.save(tmp_path / "rows.npy", np.zeros((0, 64)))
    with pytest.raises(gc.GraphcError, match=r"rows.npy: no rows to predict \(X has shape \(0, 64\)\)"):
        data.read_features(tmp_path / "rows.npy", [], 64)


# outside-in round (CLI): inputs never overwritten, the label never a feature, odd model paths, modes, sizes
def test_build_and_export_refuse_to_write_over_what_they_read(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import graphc as gc\ndef model(x, n):\n    return gc.nn.dense(x, n)\n")
    source = model.read_bytes()
    p = run_in_process("build", "--model", model, "-o", model)
    assert p.returncode == 2 and "that is --model" in p.stderr and model.read_bytes() == source, p.stderr
    np.savez(tmp_path / "d.npz", X=np.zeros((8, 3), np.float32), y=np.arange(8) % 2)
    before = (tmp_path / "d.npz").read_bytes()
    p = run_in_process("build", "--dataset", tmp_path / "d.npz", "-o", tmp_path / "d.npz")
    assert p.returncode == 2 and "that is --dataset" in p.stderr and (tmp_path / "d.npz").read_bytes() == before
    fit(data="digits", epochs=1, hidden=[8], progress=False, out=str(tmp_path / "run"))
    meta = (tmp_path / "run" / "data.json").read_bytes()
    for header, words in ((tmp_path / "libm.so", "writes the same file"),
                          (tmp_path / "run" / "data.json", "overwrites data.json in the run directory")):
        p = run_in_process("export", "--weights", tmp_path / "run", "-o", tmp_path / "libm.so", "--header", header)
        assert p.returncode == 2 and words in p.stderr, p.stderr
    assert not (tmp_path / "libm.so").exists() and (tmp_path / "run" / "data.json").read_bytes() == meta


def test_the_label_is_never_a_feature_and_features_are_named_once(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    arr = np.column_stack([np.arange(20.0), np.arange(20.0) % 3, np.arange(20) % 2])
    np.save(tmp_path / "d.npy", arr)
    np.savez(tmp_path / "d.npz", X=arr[:, :2], y=arr[:, 2])
    for path, opts, words in (("d.csv", ("--label", "label", "--features", "a,label"), "includes the label 'label'"),
                              ("d.csv", ("--label", "label", "--features", "a,a"), "names 'a' more than once"),
                              ("d.npy", ("--label", "2", "--features", "0,2"), "includes the label '2'"),
                              ("d.npz", ("--label", "X"), "the same array 'X'")):
        p = run_in_process("train", "--dataset", tmp_path / path, *opts, "--epochs", "1", "--quiet", "--out",
                           tmp_path / "o")
        assert p.returncode == 2 and words in p.stderr and not (tmp_path / "o").exists(), (opts, p.stderr)
    r = fit(data=str(tmp_path / "d.npy"), label="2", features=["1"], epochs=1, progress=False)
    assert r.dataset.n_features == 1  # a .npy's --features picks its columns (they were ignored)
    np.savez(tmp_path / "nofeat.npz", X=np.zeros((10, 0), np.float32), y=np.arange(10) % 2)
    p = run_in_process("train", "--dataset", tmp_path / "nofeat.npz", "--epochs", "1", "--quiet")
    assert p.returncode == 2 and "no feature columns" in p.stderr, p.stderr


def test_model_files_by_any_name_and_clear_words_for_what_is_not_one(tmp_path):
    (tmp_path / "m.txt").write_text("import graphc as gc\ndef model(x, n):\n    return gc.nn.dense(x, n)\n")
    r = fit(str(tmp_path / "m.txt"), data="breast_cancer", epochs=1, progress=False)
    assert r.metrics["model"].endswith("m.txt")
    for path, words in ((tmp_path, "a directory"), ("/dev/null", "not a regular file"), (tmp_path / "no.py",
                                                                                         "no such file")):
        with pytest.raises(gc.GraphcError, match=f"--model {path}: {words}"):
            fit(str(path), data="breast_cancer", epochs=1, progress=False)


def test_run_files_follow_the_umask_and_sizes_beyond_memory_are_an_error(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        fit(data="breast_cancer", epochs=1, hidden=[4], progress=False, out=str(tmp_path / "run"))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
    p = run("train", "--hidden", "10000000000", "--epochs", "1", "--quiet")
    assert p.returncode == 2 and "out of memory" in p.stderr and "Traceback" not in p.stderr, p.stderr
    for flag in ("--out", "--dataset"):
        p = run_in_process("train", flag, "", "--epochs", "1", "--quiet")
        assert p.returncode == 2 and "an empty" in p.stderr, p.stderr
    with pytest.raises(gc.GraphcError, match="'out' is gc.fit's own argument"):
        from graphc.fitting import _config

        _config({"out": "x"})
    with pytest.raises(gc.GraphcError, match="epochs must be a positive int, got True"):
        fit(data="breast_cancer", epochs=True, progress=False)


def test_options_are_checked_before_training_and_numpy_scalars_are_numbers():
    for kw, words in (({"schedule": "step", "step_every": "2"}, "step_every .* must be an int >= 1"),
                      ({"schedule": "step", "step_gamma": -1.0}, "step_gamma .* must be a number > 0"),
                      ({"schedule": "step", "step_gamma": float("nan")}, "step_gamma"),
                      ({"drop_last": "False"}, "drop_last must be True or False"),
                      ({"refit": 1, "early_stopping": 2}, "refit must be True or False"),
                      ({"l2": 0.1, "penalize": []}, r"penalize=\[\] penalizes nothing")):
        with pytest.raises(gc.GraphcError, match=words):
            fit(data="breast_cancer", epochs=1, progress=False, **kw)
    r = fit(data="breast_cancer", epochs=np.int64(1), batch_size=np.int32(16), lr=np.float32(0.05),
            hidden=[np.int64(4)], seed=np.uint8(3), progress=False, l2=0.1, penalize="mlp.0.W")
    assert r.config.epochs == 1 and type(r.config.lr) is float and r.config.penalize == ["mlp.0.W"]
    json.dumps(r.metrics, default=str)


def test_adam_corrects_its_bias_as_pytorch_does():
    """1 - beta**t in float64 (PyTorch computes it in Python floats): in float32 each update was 1.3e-5 off."""
    from graphc.nn.optim import make

    p, g = gc.input("p", (64,)), gc.input("g", (64,))
    opt = make("adam")
    state = opt.state_inputs([p])
    t, lr = gc.input("t", (), "float32"), gc.input("lr", (), "float32")
    new_p, new_s = opt.step(p, g, state, t, lr)
    fn = gc.compile([new_p, *new_s.values()], cache=False)
    rng = np.random.default_rng(0)
    pv, m, v = rng.standard_normal(64).astype(np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32)
    for step in range(1, 6):
        gv = rng.standard_normal(64).astype(np.float32)
        feed = {"p": pv, "g": gv, "t": np.float32(step), "lr": np.float32(1.0)}  # updates of ~1: the error shows
        feed.update({s.name: a for s, a in zip(state.values(), (m, v), strict=True)})
        got, m_new, v_new = fn(feed)
        m64 = 0.9 * m.astype(np.float64) + 0.1 * gv
        v64 = 0.999 * v.astype(np.float64) + 0.001 * gv.astype(np.float64) ** 2
        want = pv - (m64 / (1 - 0.9 ** step)) / (np.sqrt(v64 / (1 - 0.999 ** step)) + 1e-8)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # float32 bias corrections: 1.3e-5 off
        pv, m, v = got, m_new, v_new


def test_the_task_is_inferred_from_labels_that_look_like_class_codes():
    """Whole numbers are classes only when they look like codes (few, dense, two rows a class on average): 45
    float32 house prices (whole above 2**24) trained as 45 classes with test accuracy 0 and no word."""
    from graphc import data

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    cases = [(np.float32(3e7) + np.float32(1e7) * X[:45, 0], "regression"),  # whole prices, one a row
             (rng.integers(0, 1_000_000, 200) * 1000, "regression"),  # sparse whole numbers: not codes
             (rng.integers(0, 3, 200), "multiclass"), (rng.integers(1, 11, 200).astype(np.float64), "multiclass"),
             (np.array([0, 2, 3, 5] * 50), "multiclass"), (rng.integers(0, 2, 200) * 7 + 3, "binary"),
             (np.where(X[:, 0] > 0, "cat", "dog"), "binary"), (X[:, 0] * 3, "regression")]
    for y, task in cases:
        assert data.load((X[:len(y)], y)).task == task, (y[:5], task)


def test_csv_cells_are_numbers_only_as_a_data_file_writes_them(tmp_path):
    """Python's float() reads '1_000' as 1000 and '١٢' (Arabic-Indic digits) as 12; a data file means text there."""
    from graphc import data

    ok = tmp_path / "ok.csv"
    ok.write_text("a,b,y\n1.,-.5,0\n 2e-3 ,+3,1\n.25,1E+2,0\n4,-7e-1,1\n5,6,0\n7,8,1\n", encoding="utf-8")
    assert data._float(" 2e-3 ") == 0.002 and data._float("-.5") == -0.5 and data._float("1E+2") == 100.0
    assert np.isnan(data._float("NaN")) and data._float("-Infinity") == -np.inf
    ds = data.load(str(ok), label="y")
    assert ds.feature_names == ["a", "b"] and ds.task == "binary"
    for cell in ("1_000", "١٢", "0x1p3", "1,5"):
        bad = tmp_path / "bad.csv"
        bad.write_text(f"a,y\n\"{cell}\",0\n2,1\n3,0\n4,1\n5,0\n6,1\n", encoding="utf-8")
        p = run_in_process("train", "--dataset", str(bad), "--label", "y", "--epochs", "1", "--quiet")
        assert p.returncode == 2 and f"bad.csv:2: column 'a' holds {cell!r}, not a number" in p.stderr, p.stderr


def test_text_labels_for_regression_are_named_as_text(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(tmp_path / "s.npz", X=X, y=np.where(X[:, 0] > 0, "cat", "dog"))
    p = run_in_process("train", "--dataset", tmp_path / "s.npz", "--task", "regression", "--epochs", "1", "--quiet")
    assert p.returncode == 2 and "regression targets must be numbers; the labels are text values (the first: " \
        "'cat')" in p.stderr, p.stderr


def test_predict_reads_a_bundled_dataset_by_name(tmp_path):
    """`graphc predict --data digits` said "unknown file type ''" (predict read files only, while train takes the
    bundled names): it now predicts the bundled rows, the same labels as those rows saved to a file."""
    from sklearn.datasets import load_digits

    fit(data="digits", epochs=2, hidden=[16], progress=False, out=str(tmp_path / "run"))
    X = load_digits().data
    np.save(tmp_path / "rows.npy", X)
    by_name = run("predict", "--run", tmp_path / "run", "--data", "digits")
    by_file = run("predict", "--run", tmp_path / "run", "--data", tmp_path / "rows.npy")
    assert by_name.returncode == 0 and by_file.returncode == 0, by_name.stderr + by_file.stderr
    assert by_name.stdout == by_file.stdout and len(by_name.stdout.splitlines()) == len(X) + 1
    p = run_in_process("predict", "--run", tmp_path / "run", "--data", tmp_path / "rows")
    assert p.returncode == 2 and "or a bundled dataset's name (digits" in p.stderr, p.stderr
    # lines end in \n, as Unix tools and pandas expect (csv's default \r\n left a \r in every `cut` field)
    assert run("predict", "--run", tmp_path / "run", "--data", "digits", "-o", tmp_path / "p.csv").returncode == 0
    for written in (tmp_path / "p.csv", tmp_path / "run" / "history.csv"):
        data = written.read_bytes()
        assert b"\r" not in data and data.endswith(b"\n"), written
