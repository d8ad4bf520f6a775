"""gc.nn.batch_norm against a numpy reference of PyTorch's BatchNorm formulas: both modes, evaluate and compile,
gradients, the running statistics over compiled steps and the native epoch, gc.fit / gc.load / the CLI, errors."""

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pytorch_reference import batch_norm as reference  # PyTorch's BatchNorm, checked against torch elsewhere

import graphc as gc
from graphc import data
from graphc.nn.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]


LAYOUTS = [(("N", 3), (6, 3), -1), (("N", 4, 5, 3), (2, 4, 5, 3), -1), (("N", 3, 5), (4, 3, 5), 1)]


@pytest.mark.parametrize("decl, shape, axis", LAYOUTS, ids=["rows", "images-nhwc", "channels-first"])
def test_both_modes_match_pytorchs_formulas_evaluated_and_compiled(decl, shape, axis):
    rng = np.random.default_rng(0)
    x = gc.input("x", decl, "float64")
    y = gc.nn.batch_norm(x, axis=axis, momentum=0.3, name="bn")
    assert [p.name for p in gc.nn.parameters(y)] == ["bn.gamma", "bn.beta"]
    updates = gc.nn.state_updates(y)
    assert [leaf.name for leaf in updates] == ["bn.running_mean", "bn.running_var"]
    init = gc.nn.init_params(y)
    c = shape[axis]
    assert set(init) == {"bn.gamma", "bn.beta", "bn.running_mean", "bn.running_var"}
    assert np.all(init["bn.gamma"] == 1) and np.all(init["bn.beta"] == 0)
    assert np.all(init["bn.running_mean"] == 0) and np.all(init["bn.running_var"] == 1)
    X = rng.normal(size=shape) * 3 + 2
    vals = {"x": X, "bn.gamma": rng.normal(size=c), "bn.beta": rng.normal(size=c),
            "bn.running_mean": rng.normal(size=c), "bn.running_var": rng.uniform(0.5, 2, size=c)}
    for training in (True, False):
        want, rm, rv = reference(X, axis, vals["bn.gamma"], vals["bn.beta"], vals["bn.running_mean"],
                                 vals["bn.running_var"], training, momentum=0.3)
        np.testing.assert_allclose(gc.evaluate(y, vals, training=training), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gc.compile(y, training=training)(vals), want, rtol=1e-12,
                                   atol=1e-12)
        if training:
            new = gc.evaluate(list(updates.values()), vals)
            np.testing.assert_allclose(new[0], rm, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(new[1], rv, rtol=1e-12, atol=1e-12)


def test_gradients_by_finite_differences_and_none_through_the_running_statistics():
    rng = np.random.default_rng(1)
    x = gc.input("x", ("N", 2, 3), "float64")
    y = gc.nn.batch_norm(x, name="bn_g")
    loss = gc.sum(gc.tanh(y) * rng.normal(size=(2, 3)))
    vals = dict(gc.nn.init_params(y), x=rng.normal(size=(3, 2, 3)) * 2 + 1)
    vals["bn_g.gamma"] = rng.normal(size=3)
    vals["bn_g.beta"] = rng.normal(size=3)
    vals["bn_g.running_var"] = rng.uniform(0.5, 2, size=3)
    wrt = [x, *gc.nn.parameters(y)]
    for training in (True, False):
        gc.check_grad(loss, wrt, vals, rtol=1e-6, atol=1e-8, training=training)
    running = list(gc.nn.state_updates(y))
    # the running statistics get no gradient in training (the batch's are used) and one in inference
    g_train = gc.evaluate(gc.grad(loss, running), vals, training=True)
    assert all(np.all(g == 0) for g in g_train)
    assert all(np.any(g != 0) for g in gc.evaluate(gc.grad(loss, running), vals))
    # nothing is differentiated through the updates: the training gradient is the same with them in the graph
    # of a loss that reads them too, and their nodes carry no cotangent back into x
    g1 = gc.evaluate(gc.grad(loss, x), vals, training=True)
    g2 = gc.evaluate(gc.grad(loss + 0.0 * gc.sum(gc.stop_gradient(y)), x), vals, training=True)
    np.testing.assert_allclose(g1, g2, rtol=1e-14)


def test_running_statistics_after_compiled_steps_equal_the_reference():
    """A step compiled with the running statistics and an SGD update of the parameters as in-place updates, run
    on 4 batches, against numpy's running statistics (on the hidden layer the updated weights make)."""
    rng = np.random.default_rng(2)
    x = gc.input("x", ("N", 4), "float64")
    t = gc.input("t", ("N", 3), "float64")
    h = gc.nn.dense(x, 3, name="bn_fc", dtype="float64", init="xavier_normal")
    y = gc.nn.batch_norm(h, name="bn_s", momentum=0.2)
    loss = gc.mean((y - t) ** 2)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    step = gc.compile(loss, training=True, updates={**gc.nn.state_updates(loss),
                                                   **{p: p - 0.1 * g for p, g in zip(params, grads, strict=True)}},
                      cache=False)
    state = gc.nn.init_params(loss, seed=3)
    ref = {k: v.copy() for k, v in state.items()}
    for _ in range(4):
        X, T = rng.normal(size=(5, 4)) * 2 + 1, rng.normal(size=(5, 3))
        g_ref = gc.evaluate(grads, dict(ref, x=X, t=T), training=True)  # the oracle's gradients
        H = X @ ref["bn_fc.W"] + ref["bn_fc.b"]
        _, ref["bn_s.running_mean"], ref["bn_s.running_var"] = reference(
            H, -1, ref["bn_s.gamma"], ref["bn_s.beta"], ref["bn_s.running_mean"], ref["bn_s.running_var"], True,
            momentum=0.2)
        for p, g in zip(params, g_ref, strict=True):
            ref[p.name] = ref[p.name] - 0.1 * g
        step(dict(state, x=X, t=T))
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=1e-12, atol=1e-12, err_msg=k)
    assert np.all(state["bn_s.running_var"] != 1)


def bn_mlp(x, n_outputs):
    h = gc.relu(gc.nn.batch_norm(gc.nn.dense(x, 16, name="fc"), name="bn"))
    return gc.nn.dense(h, n_outputs, name="out")


def test_the_native_epoch_updates_the_running_statistics_as_compiled_steps_do():
    ds = data.load("digits")
    X, Y = ds.X_train[:100], ds.y_train[:100].astype(np.int32)
    tr = Trainer(bn_mlp, "multiclass", 64, 10, TrainConfig(batch_size=32, lr=0.1, threads=1), log=lambda m: None)
    assert tr.training_mode and {b.name for b in tr.buffers} == {"bn.running_mean", "bn.running_var"}
    state = tr.init_state(0)
    steps = {k: v.copy() for k, v in state.items()}
    stats = tr.epoch_fn.run_epoch(X, Y, state, batch=32, scalars=tr.scalars(0), epoch=0, seed=0, step0=0, threads=1)
    one = gc.compile(tr.loss, updates=tr.updates, training=True, threads=1)
    for s in range(stats.steps):
        idx = stats.permutation[s * 32:(s + 1) * 32]
        one(dict(steps, x=X[idx], y=Y[idx], step=np.float32(s + 1), lr=np.float32(0.1)))
    for k in state:
        np.testing.assert_allclose(state[k], steps[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(state["bn.running_mean"], 0)



def test_an_epoch_function_of_a_batch_norm_trains_in_training_mode_by_default():
    """gc.EpochFunction took training from the key input alone (dropout's), so a batch-norm model without
    dropout ran its epochs in inference: normalized with the running statistics while updating them. Its loss
    is now the training-mode loss (the batch's statistics); training=False still gives inference."""
    rng = np.random.default_rng(0)
    x, y = gc.input("x", ("N", 3)), gc.input("y", ("N",), "int32")
    with gc.nn.model_build():
        loss = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.nn.batch_norm(x, name="bn"), 2, name="out"), y)
    X = (rng.normal(size=(6, 3)) * 3 + 5).astype(np.float32)  # far from the running statistics' 0 and 1
    Y = rng.integers(0, 2, 6).astype(np.int32)
    state = gc.nn.init_params(loss, seed=0)
    want = {mode: gc.evaluate(loss, dict(state, x=X, y=Y), training=mode) for mode in (True, False)}
    assert abs(want[True] - want[False]) > 0.1
    for training in (None, False):  # an inference epoch takes no state updates (see the next test)
        ef = gc.EpochFunction(loss, updates=gc.nn.state_updates(loss) if training is None else {}, x=x, y=y,
                              training=training, threads=1)
        st = {k: v.copy() for k, v in state.items()}
        stats = ef.run_epoch(X, Y, st, batch=6, order=np.arange(6))
        mode = training is None
        assert ef.training == mode
        np.testing.assert_allclose(stats.losses[0], want[mode], rtol=1e-5)


def test_state_updates_in_a_program_compiled_for_inference_are_refused():
    """gc.compile(loss, updates=gc.nn.state_updates(loss)) without training=True wrote the batch's statistics
    into the running ones while normalizing with the running ones (PyTorch's eval() updates nothing): a
    GraphcError naming the state and both ways out, for gc.compile and gc.EpochFunction(training=False)."""
    x, y = gc.input("x", ("N", 3)), gc.input("y", ("N",), "int32")
    with gc.nn.model_build():
        loss = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.nn.batch_norm(x, name="bn"), 2, name="out"), y)
    ups = gc.nn.state_updates(loss)
    words = r"update of 'bn.running_mean' is a layer's training-mode state update.*training=True.*leave"
    with pytest.raises(gc.GraphcError, match=words):
        gc.compile(loss, updates=ups)
    with pytest.raises(gc.GraphcError, match=words):
        gc.EpochFunction(loss, updates=ups, x=x, y=y, training=False)
    state = gc.nn.init_params(loss, seed=0)
    X, Y = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 0, 1], np.int32)
    gc.compile(loss, updates=ups, training=True, cache=False)(dict(state, x=X, y=Y))
    np.testing.assert_allclose(state["bn.running_mean"], 0.1 * X.mean(0), rtol=1e-6)  # a training step updates

BN_CNN = '''
import graphc as gc

OPTIONS = {"epochs": 3, "batch_size": 32, "lr": 0.05, "optimizer": "momentum"}


def model(images, n_outputs):
    h = gc.nn.conv2d(images, 4, 3, activation=None, bias=False, name="conv")
    h = gc.nn.max_pool2d(gc.relu(gc.nn.batch_norm(h, name="bn1")), 2)
    h = gc.relu(gc.nn.batch_norm(gc.nn.dense(gc.nn.flatten(h), 16, name="fc"), name="bn2"))
    return gc.nn.dense(h, n_outputs, name="out")
'''


def test_fit_trains_a_cnn_predicts_with_running_statistics_and_round_trips(tmp_path):
    model = tmp_path / "bn_cnn.py"
    model.write_text(BN_CNN)
    r = gc.fit(str(model), "digits", out=tmp_path / "run", progress=False, threads=1)
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < losses[0] * 0.5 and r.metrics["test_accuracy"] > 0.85
    for name, init in (("bn1.running_mean", 0), ("bn1.running_var", 1), ("bn2.running_mean", 0)):
        assert r.params[name].shape == ((4,) if name.startswith("bn1") else (16,))
        assert not np.allclose(r.params[name], init), name  # updated by the compiled epoch
    assert r.metrics["parameters"] == 3 * 3 * 4 + 2 * 4 + 64 * 16 + 16 + 2 * 16 + 16 * 10 + 10  # trainable only
    X = data.load("digits").X_test[:40]
    # inference: each row's outputs do not depend on the rest of the batch (batch statistics would make them)
    np.testing.assert_allclose(r.predict(X[:1]), r.predict(X)[:1], rtol=1e-6, atol=1e-6)
    # and they are the running statistics' formula, by the reference evaluator
    with gc.nn.model_build():
        images = gc.input("x", ("N", 8, 8, 1))
        ns: dict = {}
        exec(BN_CNN, ns)
        logits = ns["model"](images, 10)
    want = gc.evaluate(logits, dict(r.params, x=X.reshape(-1, 8, 8, 1)))
    np.testing.assert_allclose(r.predict(X), want, rtol=1e-4, atol=1e-4)
    w = np.load(tmp_path / "run" / "weights.npz")
    assert {"bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"} <= set(w.files)
    loaded = gc.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.predict(X), r.predict(X))
    # resuming from the checkpoint restores the running statistics with the parameters
    more = gc.fit(str(model), "digits", out=tmp_path / "run", resume=True, epochs=4, progress=False, threads=1)
    assert len(more.history) == 4 and not np.array_equal(more.params["bn1.running_var"], r.params["bn1.running_var"])


def test_cli_trains_predicts_builds_a_binary_and_exports(tmp_path):
    model = tmp_path / "bn_mlp.py"
    model.write_text("import graphc as gc\n\nOPTIONS = {'epochs': 2}\n\n\ndef model(x, n_outputs):\n"
                     "    h = gc.relu(gc.nn.batch_norm(gc.nn.dense(x, 16, name='fc'), name='bn'))\n"
                     "    return gc.nn.dense(h, n_outputs, name='out')\n")
    cli = [sys.executable, "-m", "graphc.cli"]
    p = subprocess.run([*cli, "train", "--model", str(model), "--out", str(tmp_path / "run"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] > 0.8
    ds = data.load("digits")
    rows = tmp_path / "rows.csv"
    raw = ds.X_test[:20] * ds.x_std + ds.x_mean
    np.savetxt(rows, raw, delimiter=",", header=",".join(ds.feature_names), comments="")
    p = subprocess.run([*cli, "predict", "--run", str(tmp_path / "run"), "--data", str(rows)], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    labels = [int(line.split(",")[0]) for line in p.stdout.splitlines()[1:]]
    assert labels == list(gc.load(tmp_path / "run").predict_labels(raw))
    if shutil.which("cc") is not None:  # graphc build and export link with the system C compiler
        # the binary carries the running statistics (tests/aot/test_aot_binary.py trains one against gc.fit)
        p = subprocess.run([*cli, "build", "--model", str(model), "-o", str(tmp_path / "bin")], capture_output=True,
                           text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        info = subprocess.run([str(tmp_path / "bin"), "--info"], capture_output=True, text=True).stdout
        assert "bn.running_mean (16,)" in info and "bn.running_var (16,)" in info
        lib = tmp_path / "libbn.so"
        p = subprocess.run([*cli, "export", "--weights", str(tmp_path / "run"), "-o", str(lib)], capture_output=True,
                           text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        X = np.ascontiguousarray(ds.X_test[:20], dtype=np.float32)
        out = np.zeros((20, 10), np.float32)
        rc = ctypes.CDLL(str(lib)).bn_predict_standardized(X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(20),
                                                           out.ctypes.data_as(ctypes.c_void_p))
        assert rc == 0
        np.testing.assert_allclose(out, gc.load(tmp_path / "run").predict(X), rtol=1e-5, atol=1e-5)


def test_a_binary_refuses_float64_running_statistics(tmp_path):
    """A standalone binary keeps float32 arrays: a batch norm of float64 features is refused, naming the state."""
    from graphc.aot.build import build

    def model(x, n_outputs):
        h = gc.nn.batch_norm(gc.cast(gc.nn.dense(x, 8, name="fc"), "float64"), name="bn")
        return gc.nn.dense(gc.cast(h, "float32"), n_outputs, name="out")

    with pytest.raises(gc.GraphcError, match="state 'bn.running_mean' as f64.*float32 state only"):
        build(tmp_path / "bin", model)
    assert not (tmp_path / "bin").exists()


def test_bad_input_is_a_graphc_error_naming_the_layer():
    x = gc.input("x", ("N", 4, 3), "float32")
    for kw, words in (({"axis": 0}, "axis 0 is the batch axis"), ({"axis": 3}, "axis must be one axis"),
                      ({"axis": 1.0}, "axis must be one axis"), ({"eps": 0}, "eps must be a positive number"),
                      ({"momentum": 1.5}, r"momentum must be a number in \[0, 1\]")):
        with pytest.raises(gc.GraphcError, match=f"batch_norm 'bad': {words}.*test_batch_norm.py"):
            gc.nn.batch_norm(x, name="bad", **kw)
    with pytest.raises(gc.GraphcError, match="batch_norm 'bad': needs a float tensor, got i32"):
        gc.nn.batch_norm(gc.input("i", ("N", 3), "int32"), name="bad")
    with pytest.raises(gc.GraphcError, match="batch_norm 'bad': needs a batch axis and a channel axis"):
        gc.nn.batch_norm(gc.input("v", ("N",), "float32"), name="bad")
    with pytest.raises(gc.GraphcError, match="batch_norm 'bad': .* has 1 value per channel"):
        gc.nn.batch_norm(gc.input("one", (1, 3), "float32"), name="bad")
    # two layers of one name on different inputs would update one running mean twice
    a = gc.nn.batch_norm(x, name="twice")
    b = gc.nn.batch_norm(x * 2.0, name="twice")
    with pytest.raises(gc.GraphcError, match="'twice.running_mean' is updated by two layers"):
        gc.nn.state_updates(a + b)
    assert gc.nn.state_updates(gc.nn.dense(gc.input("x", ("N", 3)), 2, name="plain")) == {}


def test_a_training_batch_of_one_row_is_refused_before_training():
    from dataclasses import replace

    X = np.random.default_rng(0).normal(size=(33, 4)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.int32)
    tr = Trainer(bn_mlp, "multiclass", 4, 2, TrainConfig(epochs=1, threads=1, batch_size=32, drop_last=True),
                 log=lambda m: None)
    ok = tr.config
    for cfg, words in (({"batch_size": 32, "drop_last": False}, "leave a last batch of 1"),
                       ({"batch_size": 1}, "batch of 1 row")):
        tr.config = replace(ok, **cfg)  # the check reads the run's options before any step
        with pytest.raises(gc.GraphcError, match=f"batch_norm 'bn' .*{words}.*drop_last"):
            tr.run(X, Y, None, None)
    tr.config = ok
    assert np.isfinite(tr.run(X, Y, None, None)["state"]["bn.running_var"]).all()


def test_the_example_model_file_normalizes_each_convolution():
    from graphc.fitting import load_model_file

    fn, options = load_model_file(str(ROOT / "examples" / "cnn_bn_digits.py"))
    with gc.nn.model_build():
        out = fn(gc.input("images", ("N", 8, 8, 1)), 10)
    assert sorted(leaf.name for leaf in gc.nn.state_updates(out)) == [
        "bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"]
    assert out.shape == (gc.dim("N"), 10) and options["epochs"] >= 1


@pytest.mark.parametrize("shape", [(1, 3), (1, 1, 1, 3)])
def test_one_value_per_channel_outside_gc_fit_updates_finite_statistics(shape):
    """gc.fit refuses a training batch of one value per channel (as PyTorch); through gc.compile or evaluate it
    gave a NaN running variance (n / (n - 1) = 1 / 0 times the variance 0): now the variance 0 is added as is."""
    x = gc.input("x", ("N", *shape[1:]))
    y = gc.nn.batch_norm(x, name="one")
    ups = gc.nn.state_updates(y)
    fn = gc.compile([y, *ups.values()], training=True)
    vals = {"x": np.random.default_rng(1).normal(size=shape).astype(np.float32),
            "one.running_mean": np.zeros(3, np.float32), "one.running_var": np.ones(3, np.float32),
            "one.gamma": np.ones(3, np.float32), "one.beta": np.zeros(3, np.float32)}
    out, new_mean, new_var = fn(vals)
    ref = gc.evaluate([y, *ups.values()], vals, training=True)
    np.testing.assert_allclose(new_var, np.full(3, 0.9, np.float32), rtol=1e-6)
    np.testing.assert_allclose(new_mean, 0.1 * vals["x"].reshape(3), rtol=1e-6)
    for a, b in zip((out, new_mean, new_var), ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
