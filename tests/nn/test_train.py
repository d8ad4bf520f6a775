"""Training: native epochs against the reference, optimizers, schedules, penalties, dropout, early stopping,
regularization effects, checkpoints and divergence diagnosis."""

import math
import re

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.epoch import permutation
from graphc.fitting import fit
from graphc.nn import checkpoint as ckpt
from graphc.nn.optim import Schedule
from graphc.nn.train import TrainConfig, Trainer


def blobs(n=150, f=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, f)) * 2
    y = rng.integers(0, classes, n).astype(np.int32)
    X = (centers[y] + rng.normal(size=(n, f))).astype(np.float32)
    return X, y


def trainer_for(X, y, **kw):
    cfg = TrainConfig(**{"hidden": [16], "epochs": 1, "batch_size": 32, "lr": 0.1, **kw})
    return Trainer(None, "multiclass", X.shape[1], int(y.max()) + 1, cfg, log=lambda m: None)


def reference_epoch(tr: Trainer, state, X, y, *, epoch, seed, step0, scalars, batch):
    """The same epoch stepped in Python through the reference evaluator."""
    state = {k: v.copy() for k, v in state.items()}
    order = permutation(seed, epoch, len(X))
    names = list(tr.updates)
    losses = []
    for s, lo in enumerate(range(0, len(X), batch)):
        idx = order[lo:lo + batch]
        vals = dict(state, x=X[idx], y=y[idx], step=np.float32(step0 + s + 1),
                    **{k: np.float32(v) for k, v in scalars.items()})
        out = gc.evaluate([tr.loss] + [tr.updates[k] for k in names], vals, allow_unused=True)
        losses.append(float(out[0]) * len(idx))
        for k, v in zip(names, out[1:], strict=True):
            state[k.name] = v.astype(np.float32)
    return state, sum(losses) / len(X)


@pytest.mark.parametrize("optimizer, momentum, pen", [("sgd", 0.0, {}), ("momentum", 0.9, {"l2": 0.01}),
                                                      ("nesterov", 0.9, {"l1": 0.001}), ("adam", 0.0, {}),
                                                      ("rmsprop", 0.0, {"l2": 0.01}), ("adagrad", 0.0, {}),
                                                      ("adamw", 0.0, {"weight_decay": 0.1, "l2": 0.01})])
def test_native_epoch_matches_reference_steps(optimizer, momentum, pen):
    X, y = blobs()
    tr = trainer_for(X, y, optimizer=optimizer, momentum=momentum, lr=0.01 if optimizer != "sgd" and momentum == 0
                     else 0.1, **pen)
    state = tr.init_state(3)
    scalars = tr.scalars(2)
    ref, ref_loss = reference_epoch(tr, state, X, y, epoch=2, seed=5, step0=7, scalars=scalars, batch=32)
    stats = tr.epoch_fn.run_epoch(X, y, state, batch=32, epoch=2, seed=5, step0=7, scalars=scalars)
    assert stats.steps == math.ceil(len(X) / 32)  # the last partial batch is trained on, not dropped
    assert stats.mean_loss == pytest.approx(ref_loss, rel=1e-5)
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_full_batch_gd_per_sample_sgd_and_drop_last():
    X, y = blobs(n=40)
    tr = trainer_for(X, y)
    state = tr.init_state(0)
    assert tr.epoch_fn.run_epoch(X, y, state, batch=1000, epoch=0, seed=0, step0=0, scalars={"lr": 0.1}).steps == 1
    assert tr.epoch_fn.run_epoch(X, y, state, batch=1, epoch=0, seed=0, step0=0, scalars={"lr": 0.01}).steps == 40
    st = tr.epoch_fn.run_epoch(X, y, state, batch=16, epoch=0, seed=0, step0=0, scalars={"lr": 0.1}, drop_last=True)
    assert st.steps == 2 and st.samples == 32
    for bad in (0, -2, 2.0, 300):
        with pytest.raises(gc.InputError, match="training: threads must be an int"):
            tr.epoch_fn.run_epoch(X, y, state, batch=16, epoch=0, seed=0, step0=0, scalars={"lr": 0.1}, threads=bad)


def _misaligned_copy(a: np.ndarray) -> np.ndarray:
    raw = np.zeros(a.size + 32, a.dtype)
    off = next(i for i in range(1, 32) if (raw.ctypes.data + i * a.itemsize) % 64)
    out = raw[off : off + a.size].reshape(a.shape)
    out[...] = a
    return out


def test_state_arrays_are_aligned_and_misaligned_ones_train_alike():
    """init_state gives 64-byte aligned arrays; a caller's misaligned arrays (numpy promises 16 bytes) are
    trained on an aligned copy and updated in place, with bitwise the same result."""
    X, y = blobs(n=90)
    tr = trainer_for(X, y, hidden=[20], optimizer="momentum", momentum=0.9)
    a = tr.init_state(3)
    assert all(v.ctypes.data % 64 == 0 for v in a.values())
    b = {k: _misaligned_copy(v) for k, v in a.items()}
    assert all(v.ctypes.data % 64 for v in b.values())
    before = {k: v.copy() for k, v in b.items()}
    sc = tr.scalars(0)
    for state in (a, b):
        tr.epoch_fn.run_epoch(X, y, state, batch=16, epoch=0, seed=1, step0=0, scalars=sc)
    for k in a:
        assert np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)), k
        assert not np.array_equal(b[k], before[k]), k  # updated in the caller's array


def test_schedules():
    assert Schedule("constant").lr(0.1, 7) == 0.1
    s = Schedule("step", gamma=0.5, every=3)
    assert [s.lr(1.0, e) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    c = Schedule("cosine", epochs=10, lr_min=0.0)
    assert c.lr(1.0, 0) == 1.0 and c.lr(1.0, 5) == pytest.approx(0.5) and c.lr(1.0, 10) == pytest.approx(0.0)
    with pytest.raises(gc.GraphcError):
        Schedule("linear")


def test_native_initialization_is_seeded_and_has_the_schemes_statistics():
    X, y = blobs(f=400)
    tr = trainer_for(X, y, hidden=[300], init="he_normal", bias_init="zeros")
    a, b, c = tr.init_state(1), tr.init_state(1), tr.init_state(2)
    np.testing.assert_array_equal(a["mlp.0.W"], b["mlp.0.W"])
    assert not np.array_equal(a["mlp.0.W"], c["mlp.0.W"])
    assert a["mlp.0.W"].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)  # He normal
    assert abs(float(a["mlp.0.W"].mean())) < 3e-3 and np.all(a["mlp.0.b"] == 0)
    x = trainer_for(X, y, hidden=[300]).init_state(1)  # the default: Xavier (Glorot) uniform, biases alike
    lim = np.sqrt(6 / (400 + 300))
    for name, rel in (("mlp.0.W", 0.02), ("mlp.0.b", 0.1)):
        assert x[name].max() <= lim and x[name].min() >= -lim
        assert x[name].std() == pytest.approx(lim / np.sqrt(3), rel=rel)
    hb = trainer_for(X, y, hidden=[300], init="he_normal").init_state(1)["mlp.0.b"]  # like He-normal weights
    assert hb.std() == pytest.approx(np.sqrt(2 / 400), rel=0.1) and hb.min() < -0.5 * np.sqrt(2 / 400)


def test_penalties_apply_to_weights_by_default_and_are_configurable():
    X, y = blobs()
    tr = trainer_for(X, y, l2=0.1)
    penalized = {n.name for n in gc.topo_order(tr.loss) if n.op.name == "param"}
    assert penalized == {p.name for p in tr.params}  # all params appear (in the loss)...
    sq = [n for n in gc.topo_order(tr.loss) if n.op.name == "mul" and n.inputs[0] is n.inputs[1]]
    assert {n.inputs[0].name for n in sq} == {"mlp.0.W", "mlp.1.W"}  # ...but only weights are squared
    tr2 = trainer_for(X, y, l1=0.1, penalize=["mlp.1.b"])
    absd = [n.inputs[0].name for n in gc.topo_order(tr2.loss) if n.op.name == "abs"]
    assert absd == ["mlp.1.b"]
    with pytest.raises(gc.GraphcError, match="unknown parameter"):
        trainer_for(X, y, l2=0.1, penalize=["nope"])


def test_l2_on_a_weight_vector_is_ridge_regression_and_never_silently_dropped():
    """The lecture's ridge regression, f(x) = x·w with J(w) + nu/2 ||w||^2: its w is 1-D, which the default
    selection (the parameters of 2 or more dimensions) leaves out, so l2 trained nothing (the training binary
    refused --l2 for such a model). It is refused, naming the parameters; with them named, full-batch gradient
    descent converges to the closed-form ridge solution."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=300)

    def linear(x, n_outputs):
        w = gc.param("w", (4,), init="zeros")
        return gc.reshape(x @ w, (x.shape[0], n_outputs))

    opts = dict(task="regression", epochs=400, batch_size=10**6, lr=0.1, progress=False, checkpoint_every=0)
    for pen in ({"l2": 1.0}, {"l1": 0.1}):
        with pytest.raises(gc.GraphcError, match=r"has none.*parameters are \['w'\].*penalize=\['w'\]"):
            fit(linear, (X, y), **opts, **pen)
    nu = 1.0
    r = fit(linear, (X, y), **opts, l2=nu, penalize=["w"])
    Xt, yt = r.dataset.X_train.astype(np.float64), r.dataset.y_train.astype(np.float64).reshape(-1)
    n = len(Xt)  # minimum of mean((Xw - y)^2) + nu/2 |w|^2: (2/n X'X + nu I) w = 2/n X'y
    ridge = np.linalg.solve(2 / n * Xt.T @ Xt + nu * np.eye(4), 2 / n * Xt.T @ yt)
    np.testing.assert_allclose(r.params["w"], ridge, atol=1e-5)
    assert np.abs(ridge - fit(linear, (X, y), **opts).params["w"]).max() > 0.1  # the penalty did act


def test_l2_says_which_weight_vectors_beside_matrices_it_leaves_out():
    """A 1-D weight that a product reads (x @ w) beside weight matrices: penalize='weights' leaves it out, which is
    said in the log, naming it and the penalize= list that would take it; biases (added) are not named; nothing is
    said without a penalty or with penalize= given."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    y = rng.normal(size=64)

    def model(x, n_outputs):
        w = gc.param("lin.w", (4,), init="zeros")
        h = gc.nn.dense(x, 3, "relu", name="h")
        return gc.nn.dense(h, n_outputs, name="out") + gc.reshape(x @ w, (x.shape[0], 1))

    opts = dict(task="regression", epochs=1, progress=False, checkpoint_every=0)
    said: list[str] = []
    fit(model, (X, y), **opts, l2=0.01, log=said.append)
    notes = [m for m in said if "leaves out" in m]
    assert len(notes) == 1 and "['lin.w']" in notes[0] and "penalize=['h.W', 'lin.w', 'out.W']" in notes[0], said
    assert "h.b" not in notes[0] and "out.b" not in notes[0]
    for pen in ({}, {"l2": 0.01, "penalize": ["h.W", "lin.w", "out.W"]}):
        said.clear()
        fit(model, (X, y), **opts, **pen, log=said.append)
        assert not [m for m in said if "leaves out" in m], said


def test_dropout_is_seeded_and_off_at_evaluation():
    X, y = blobs()
    results = []
    for seed in (1, 1, 2):
        tr = trainer_for(X, y, dropout=[0.8, 0.5], seed=seed)
        assert tr.training_mode
        assert not any(n.op.name == "dropout" for n in gc.topo_order(tr.eval_fn.graph.outputs))
        run = tr.run(X, y, None, None)
        results.append(run["state"]["mlp.0.W"])
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_three_learning_tasks_end_to_end():
    d = fit(data="digits", epochs=4, progress=False)
    assert d.metrics["test_accuracy"] > 0.9 and d.metrics["task"] == "multiclass"
    assert sum(v["n"] for v in d.metrics["test_per_class"].values()) == 270
    b = fit(data="breast_cancer", epochs=5, progress=False)
    assert b.metrics["test_accuracy"] > 0.9 and b.metrics["task"] == "binary"
    r = fit(data="diabetes", epochs=10, progress=False)
    assert r.metrics["task"] == "regression" and r.metrics["test_mse"] < 0.8
    assert r.metrics["test_rmse_original_units"] == pytest.approx(math.sqrt(r.metrics["test_mse"]) * 77.0, rel=0.1)
    assert d.predict(np.zeros((3, 64), np.float32)).shape == (3, 10)
    # predict takes standardized features, predict_raw the dataset's own; both check what they are given
    ds = d.dataset
    raw = ds.X_test[:5].astype(np.float64) * ds.x_std + ds.x_mean
    np.testing.assert_allclose(d.predict_raw(raw), d.predict(ds.X_test[:5]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.predict_raw(r.dataset.X_test[:3].astype(np.float64) * r.dataset.x_std
                                             + r.dataset.x_mean),
                               (r.predict(r.dataset.X_test[:3]) * r.dataset.y_std + r.dataset.y_mean)[:, 0], rtol=1e-5)
    for bad, words in ((np.full((2, 64), np.nan), "feature 0 of row 0 is nan"), (np.ones((2, 5)), "rows x 64"),
                       (np.ones(64), "rows x 64"), ("abc", "must be numbers"),
                       (np.array([[None] * 64]), "must be numbers")):
        with pytest.raises(gc.InputError, match=words):
            d.predict(bad)
    with pytest.raises(gc.InputError, match="predict_raw: features must be numbers"):
        d.predict_raw([["a"] * 64])


OVERFIT = dict(data="digits", train_fraction=0.08, hidden=[256], epochs=60, batch_size=16, lr=0.1, progress=False,
               checkpoint_every=0)


def gaps(result):
    """(accuracy gap, loss gap) between the training split and the test split, both in inference mode."""
    m = result.metrics
    return m["train_accuracy"] - m["test_accuracy"], m["test_loss"] - m["train_loss"]


def noisy_labels(path, n=900, f=20, noise=0.3, seed=0):
    """A linear rule with 30% of labels flipped: a wide net memorizes the noise unless regularized."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    y = (X @ rng.normal(size=f) > 0).astype(int)
    flip = rng.random(n) < noise
    y[flip] = 1 - y[flip]
    np.savez(path, X=X, y=y)
    return str(path)


def test_l2_and_dropout_shrink_the_train_test_gap(tmp_path):
    setting = dict(data=noisy_labels(tmp_path / "noisy.npz"), train_fraction=0.5, hidden=[512], epochs=100,
                   batch_size=16, lr=0.05, init="he_normal", progress=False, checkpoint_every=0)
    base = fit(**setting)
    l2 = fit(**setting, l2=0.05)
    drop = fit(**setting, dropout=[1.0, 0.3])
    acc0, loss0 = gaps(base)
    assert base.metrics["train_accuracy"] > 0.95 and acc0 > 0.3  # it memorized the flipped labels
    for reg in (l2, drop):
        acc, loss = gaps(reg)
        assert acc < acc0 - 0.05, (acc, acc0)
        assert loss < loss0, (loss, loss0)


def test_early_stopping_picks_an_epoch_before_validation_loss_rises_and_refit():
    r = fit(**{**OVERFIT, "epochs": 200}, early_stopping=5)
    m = r.metrics
    assert m["stopped_early"] and m["best_epoch"] < m["epochs"]
    vals = [h["val_loss"] for h in r.history]
    best = m["best_epoch"]
    assert vals[best - 1] == min(vals)
    assert vals[-1] > vals[best - 1]  # validation loss rose after the best epoch
    # the restored parameters are the best epoch's
    assert m["val_loss"] == pytest.approx(vals[best - 1], rel=1e-5)
    rf = fit(**{**OVERFIT, "epochs": 200}, early_stopping=5, refit=True)
    assert rf.metrics["steps"] == rf.metrics["best_step"] == m["best_step"]
    assert rf.metrics["refit_epochs"] >= 1


def test_divergence_names_epoch_step_and_node(tmp_path):
    import warnings

    with pytest.raises(gc.NumericalError) as e, warnings.catch_warnings():
        warnings.simplefilter("error")  # the replay that finds the step warned of graphc's own unaligned copies
        fit(data="digits", epochs=3, lr=1e9, out=tmp_path, progress=False, checkpoint_every=1)
    msg = str(e.value)
    assert "epoch 1" in msg and "step" in msg and "first produced by" in msg and "mlp" in msg
    assert "No checkpoint had been written" in msg  # it diverged in the first epoch, before any checkpoint


def test_optimizer_gd_is_full_batch_gradient_descent():
    """optimizer="gd" (the lecture's GD: every step on all of D) ran mini-batch SGD at the default batch of 32, 13
    steps an epoch on breast_cancer: it now takes the whole training set per step unless a batch size is given,
    which is then mini-batch SGD, with a note."""
    notes = []
    gd = fit(None, "breast_cancer", optimizer="gd", epochs=3, hidden=[8], progress=False, checkpoint_every=0,
             log=notes.append)
    n = len(gd.dataset.X_train)
    assert gd.config.batch_size == n and gd.metrics["steps"] == 3 and [r["step"] for r in gd.history] == [1, 2, 3]
    assert not notes
    full = fit(None, "breast_cancer", optimizer="sgd", batch_size=10**6, epochs=3, hidden=[8], progress=False,
               checkpoint_every=0)
    assert all(np.array_equal(gd.params[k], full.params[k]) for k in full.params)
    mini = fit(None, "breast_cancer", optimizer="gd", batch_size=32, epochs=1, hidden=[8], progress=False,
               checkpoint_every=0, log=notes.append)
    assert mini.metrics["steps"] == math.ceil(n / 32) and any("is mini-batch SGD" in m for m in notes)
    refit = fit(None, "breast_cancer", optimizer="gd", epochs=4, hidden=[8], early_stopping=2, refit=True,
                progress=False, checkpoint_every=0)
    assert refit.config.batch_size == n + len(refit.dataset.X_val)  # one step per refit epoch too
    assert [r["step"] for r in refit.history if r["phase"] == 2] == list(range(1, refit.metrics["steps"] + 1))


def test_a_learning_rate_too_large_diverges_with_its_curve_on_the_error():
    """The lecture's gradient step lowers J only for a small enough rate: gradient descent on least squares with
    lr·λ_max > 2 grows the loss geometrically until it overflows. The error carries the history of the epochs
    before (it was lost with the run: nothing to plot)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -1.0, 2.0])

    def linear(x, n_outputs):
        return x @ gc.param("w", (3, n_outputs), init="zeros")

    with pytest.raises(gc.NumericalError) as e:
        fit(linear, (X, y), task="regression", epochs=500, batch_size=10**6, lr=3.0, progress=False,
            checkpoint_every=0)
    h = e.value.history
    diverged_at = int(re.search(r"epoch (\d+)", str(e.value)).group(1))
    assert len(h) == diverged_at - 1 > 10 and [r["epoch"] for r in h] == list(range(1, diverged_at))
    losses = np.array([r["train_loss"] for r in h])
    assert np.all(np.isfinite(losses)) and np.all(np.diff(losses[2:]) > 0) and losses[-1] > 1e6 * losses[0]
    assert all(np.isfinite(r["val_loss"]) for r in h)


def test_checkpoint_files_are_checked(tmp_path):
    path = tmp_path / "ckpt-1-000001.gcp"
    ckpt.save(path, {"a": 1}, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    meta, arrays = ckpt.load(path)
    assert meta == {"a": 1} and arrays["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load(path)
    path.write_bytes(bytes(data[:30]))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)
    found, refused = ckpt.latest(tmp_path)
    assert found is None and refused


def test_bad_training_data_is_rejected_before_training():
    X, y = blobs()
    tr = trainer_for(X, y)
    with pytest.raises(gc.InputError, match="label 7 in row 0 is outside"):
        tr.run(X, np.full(len(X), 7, np.int32), None, None)
    with pytest.raises(gc.InputError, match="must be integers"):
        tr.run(X, y.astype(np.float32), None, None)
    bad = X.copy()
    bad[3, 2] = np.inf
    with pytest.raises(gc.InputError, match="feature 2 is not finite in row 3"):
        tr.run(bad, y, None, None)
    with pytest.raises(gc.InputError, match="features, the model takes"):
        tr.run(X[:, :3], y, None, None)
    with pytest.raises(gc.InputError, match="non-empty"):
        tr.run(X[:0], y[:0], None, None)


def test_model_errors_name_the_model():
    """A model that raises, or returns integers (a cast has no gradient: it used to train to chance), is a
    GraphcError naming the model's line or its output type."""
    def raises(x, n_outputs):
        return {}["no such key"]  # noqa: B018 - the user's bug

    def ints(x, n_outputs):
        return gc.cast(gc.nn.dense(x, n_outputs), "int32")

    with pytest.raises(gc.GraphcError, match=r"the model raised KeyError: 'no such key' \(at .*test_train.py:\d+\)"):
        fit(raises, data="digits", epochs=1, progress=False)
    with pytest.raises(gc.GraphcError, match=r"the model returns i32\[N,10\]: its outputs must be floats"):
        fit(ints, data="digits", epochs=1, progress=False)


def test_two_layers_of_one_explicit_name_are_a_clear_error_at_compile_and_fit():
    """Two gc.nn.dense layers given the same name share 'h.W': compile and fit say so and how to name them
    (fit used to fail later with "init: 'dense.W' must be a contiguous float32 f32[64,32] array"). Unnamed
    layers are named apart (dense, dense_1: tests/nn/test_reliability.py)."""
    def model(x, n_outputs):
        return gc.nn.dense(gc.nn.dense(x, 32, "relu", name="h"), n_outputs, name="h")

    x = gc.input("x", ("N", 64))
    for call in (lambda: gc.compile(gc.sum(model(x, 10))), lambda: fit(model, data="digits", epochs=1)):
        with pytest.raises(gc.GraphcError, match=r"two different tensors are named 'h.W'.*name='hidden1'"):
            call()

    def named(x, n_outputs):
        return gc.nn.dense(gc.nn.dense(x, 32, "relu", name="hidden"), n_outputs, name="out")

    assert fit(named, data="digits", epochs=2, progress=False).metrics["test_accuracy"] > 0.8


def test_predict_takes_no_rows_and_examples_on_the_data_grid():
    """predict / predict_raw / predict_labels: no rows give no outputs (of the right shape and dtype); data on a
    grid may come as (N, 8, 8, 1) or (N, 8, 8) images, the same as their flattened rows; other shapes name the
    ones accepted."""
    r = fit(None, "digits", progress=False, epochs=1)
    X = r.dataset.X_test[:5]
    want = r.predict(X)
    assert want.shape == (5, 10)
    for shaped in (X.reshape(5, 8, 8, 1), X.reshape(5, 8, 8)):
        np.testing.assert_array_equal(r.predict(shaped), want)
    none = r.predict(X[:0])
    assert none.shape == (0, 10) and none.dtype == want.dtype
    assert r.predict_raw(np.zeros((0, 8, 8))).shape == (0, 10)
    assert r.predict_labels(np.zeros((0, 64))).shape == (0,)
    with pytest.raises(gc.InputError, match=r"rows x 64 features or \(N, 8, 8, 1\) or \(N, 8, 8\), got shape "
                                            r"\(2, 8, 7\)"):
        r.predict(np.zeros((2, 8, 7), np.float32))
    with pytest.raises(gc.InputError, match=r"rows x 30 features, got shape \(3, 5\)$"):
        fit(None, "breast_cancer", progress=False, epochs=1, hidden=[4]).predict(np.zeros((3, 5)))


def test_options_of_the_wrong_type_are_graphc_errors_and_one_keep_probability_is_the_lectures_split():
    """gc.fit's keyword options: a string where a number goes, a float where an int goes, a train_fraction
    outside (0, 1] are GraphcErrors naming the option (some were TypeErrors from a comparison, and
    train_fraction=0 trained on 2 rows); one keep probability is the lecture's split, as --dropout 0.5 gives:
    0.8 on the inputs and 0.5 on each hidden layer (gc.fit took it as the input's alone)."""
    for kw, words in ((dict(momentum="x"), "momentum must be a number"), (dict(l2=None), "l2 must be a number"),
                      (dict(threads="2"), "threads must be an int"), (dict(early_stopping=1.5), "early_stopping must"),
                      (dict(checkpoint_every="1"), "checkpoint_every must be an int"),
                      (dict(dropout="0.5"), "dropout must be keep probabilities"),
                      (dict(train_fraction=0.0), r"train_fraction must be a number in \(0, 1\]"),
                      (dict(train_fraction=1.5), r"train_fraction must be a number in \(0, 1\]")):
        with pytest.raises(gc.GraphcError, match=words):
            fit(None, "digits", progress=False, epochs=1, **kw)
    r = fit(None, "digits", progress=False, epochs=1, dropout=0.5, hidden=[16, 8])
    assert r.config.dropout == [0.8, 0.5, 0.5]


def test_one_int_is_one_hidden_layer_and_other_hidden_values_are_named():
    """hidden=16 is one hidden layer of 16 (scikit-learn's hidden_layer_sizes=16); it, hidden=None and hidden=16
    with a dropout were bare TypeErrors ('int' object is not iterable) from the option checks."""
    for given in (16, np.int64(16), [16], (16,)):
        assert list(TrainConfig(hidden=given).hidden) == [16]
    assert TrainConfig(hidden=16, dropout=0.5).dropout == [0.8, 0.5]
    for bad in (None, "32", 16.0, True, [0], [16, "8"]):
        with pytest.raises(gc.GraphcError, match=r"hidden sizes must be positive ints .*\[\] for no hidden layer"):
            TrainConfig(hidden=bad, dropout=0.5).validate()
    X, y = blobs(60, 4)
    r = fit(None, (X, y), progress=False, epochs=1, hidden=16, dropout=0.5)
    assert r.config.hidden == [16] and r.config.dropout == [0.8, 0.5]
    with pytest.raises(gc.GraphcError, match=r"hidden sizes must be positive ints.*got None"):
        fit(None, (X, y), progress=False, epochs=1, hidden=None)


def test_momentum_is_recorded_as_it_ran_and_refused_where_no_optimizer_uses_it():
    """optimizer='momentum' without a value ran 0.9 and recorded 0.0; adam, rmsprop and adagrad ignored it."""
    from graphc.nn.train import TrainConfig

    assert TrainConfig(optimizer="momentum").momentum == 0.9 and TrainConfig(optimizer="nesterov").momentum == 0.9
    assert TrainConfig(optimizer="momentum", momentum=0.5).momentum == 0.5
    for opt in ("adam", "rmsprop", "adagrad"):
        with pytest.raises(gc.GraphcError, match=f"momentum 0.9 is for the optimizers sgd, momentum and nesterov; "
                                                 f"{opt} takes none"):
            fit(None, "digits", progress=False, epochs=1, optimizer=opt, momentum=0.9)


def test_an_optimizer_given_over_a_model_files_leaves_out_the_files_momentum_or_decay_it_takes_none_of(tmp_path):
    """Options given override the model file's OPTIONS: examples/cnn_bn_digits.py sets optimizer 'momentum' with
    momentum 0.9, and `--optimizer adamw` over it was refused with 'momentum 0.9 ... leave it out', a value the
    user never gave. The file's momentum (or weight_decay) is now left out with a note when the optimizer given
    takes none; one the caller gives is still refused, and an optimizer that takes it keeps it."""
    X, y = blobs(n=60, f=4)
    for opts in ('{"optimizer": "momentum", "momentum": 0.5}', '{"optimizer": "adamw", "weight_decay": 0.3}'):
        (tmp_path / "m.py").write_text(f"import graphc as gc\n\nOPTIONS = {opts}\n\n\ndef model(x, n_outputs):\n"
                                       "    return gc.nn.dense(x, n_outputs, name='out')\n")
        notes = []
        r = fit(str(tmp_path / "m.py"), (X, y), epochs=1, optimizer="adam", log=notes.append)
        assert r.metrics["config"]["momentum"] == 0.0 and r.metrics["config"]["weight_decay"] is None
        assert any("OPTIONS is for its optimizer" in n and "'adam', takes none: left out" in n for n in notes), notes
    with pytest.raises(gc.GraphcError, match="momentum 0.5 is for the optimizers sgd, momentum and nesterov"):
        fit(str(tmp_path / "m.py"), (X, y), progress=False, epochs=1, optimizer="adam", momentum=0.5)
    r = fit(str(tmp_path / "m.py"), (X, y), progress=False, epochs=1, optimizer="adamw", lr=0.01)
    assert r.metrics["config"]["weight_decay"] == 0.3  # the file's decay, for the optimizer that takes it


def test_an_unknown_option_suggests_the_name_meant_and_a_model_that_is_no_function_is_named():
    """A misspelt option, or a name from another library, gets the option meant (gc.fit's own arguments, such as
    progress, were not even listed); a model that is neither None, a function nor a path is refused by type (it
    was 'the model raised TypeError: int object is not callable')."""
    for kw, words in ((dict(epochz=1), r"'epochz': did you mean epochs\?"),
                      (dict(quiet=True), r"'quiet': did you mean progress=False\?"),
                      (dict(learning_rate=0.1), r"'learning_rate': did you mean lr\?"),
                      (dict(overwrit=True), r"'overwrit': did you mean overwrite\?")):
        with pytest.raises(gc.GraphcError, match=words + r".*gc.fit's own: out, resume, overwrite, progress"):
            fit(None, "digits", progress=False, **kw)
    with pytest.raises(gc.GraphcError, match=r"model must be None \(the default MLP\), a function .*got int 3"):
        fit(3, "digits", progress=False)


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad"])
def test_adaptive_optimizers_follow_pytorchs(name):
    """Five steps of graphc's update graph on the gradients of a fixed quadratic equal torch.optim's, the learning
    rate changing between steps as a schedule changes it (AdamW's decay uses the step's lr). torch.optim's steps in
    numpy: tests/pytorch_reference.py, checked against torch in tests/test_references_match_pytorch.py."""
    from pytorch_reference import OPTIMIZERS

    from graphc.nn.optim import make

    rng = np.random.default_rng(0)
    A, b0, w0 = rng.normal(size=(4, 4)), rng.normal(size=4), rng.normal(size=4)
    wd = {"weight_decay": 0.3} if name == "adamw" else {}
    opt = make(name, **wd)
    p = gc.input("p", (4,), "float64")
    g = gc.input("g", (4,), "float64")
    t, lr = gc.input("t", (), "float64"), gc.input("lr", (), "float64")
    st_in = {n: gc.input(n, (4,), "float64") for n in opt.state_names(p)}
    new_p, new_st = opt.step(p, g, st_in, t, lr)
    topt = OPTIMIZERS[name](w0, lr=0.05, **wd)  # torch.optim.Adam/AdamW/RMSprop/Adagrad([w0], lr=0.05, **wd)
    w, state = w0.copy(), {n: np.zeros(4) for n in st_in}
    for step in range(1, 6):
        rate = 0.05 * 0.5 ** (step // 2)
        grad = A @ w + b0
        vals = gc.evaluate([new_p, *new_st.values()], {"p": w, "g": grad, "t": float(step), "lr": rate, **state})
        w, state = vals[0], dict(zip(new_st, vals[1:], strict=True))
        topt.lr = rate
        want = topt.step(A @ topt.param + b0)  # its own iterate's gradient
        np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("y_cols", [None, 1, 2])
def test_regression_predictions_have_the_targets_shape(tmp_path, y_cols):
    """predict_raw gives one value per row for a 1-D target (the model's (N, 1) output made `pred - y` an N x N
    matrix silently, as scikit-learn users write it), (N, 1) for a target given as a column and (N, k) for k
    targets; gc.load of the run gives the same shape and values; the model's own output (predict) stays (N, k)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3.0
    if y_cols is not None:
        y = np.stack([y * (c + 1) for c in range(y_cols)], axis=1)
    r = fit(data=(X, y), task="regression", epochs=2, hidden=[8], progress=False, out=str(tmp_path / "run"))
    want = (5,) if y_cols is None else (5, y_cols)
    got = r.predict_raw(X[:5])
    assert got.shape == want and r.predict(r.dataset.X_test[:5]).shape == (5, y_cols or 1)
    assert (got - y[:5]).shape == want
    back = gc.load(tmp_path / "run").predict_raw(X[:5])
    assert back.shape == want
    np.testing.assert_array_equal(back, got)


def test_token_regression_predictions_are_in_the_targets_units(tmp_path):
    """A regression on token ids (no feature statistics: the ids stay ids) standardizes its targets like any other:
    predict_raw undoes that (it returned the standardized predictions), in the target's shape."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 20, size=(120, 6)).astype(np.int32)
    y = X.sum(1) * 10.0 + 1000.0
    np.savez(tmp_path / "tok.npz", X=X, y=y)

    def model(tokens, n_outputs):  # tokens time-major (T, N)
        return gc.nn.dense(gc.mean(gc.nn.embedding(tokens, 20, 4, name="emb"), axis=0), n_outputs, name="out")

    r = fit(model, data=str(tmp_path / "tok.npz"), task="regression", epochs=2, progress=False)
    assert r.dataset.tokens and r.dataset.x_mean is None and r.dataset.y_std > 1
    got = r.predict_raw(X[:4])
    assert got.shape == (4,)
    np.testing.assert_allclose(got, (r.predict(X[:4]) * r.dataset.y_std + r.dataset.y_mean)[:, 0], rtol=1e-6)


def adamw_reference(w, grads, rates, wd):
    """The AdamW steps of tests/pytorch_reference.py (PyTorch's documented algorithm, checked against torch there),
    the learning rate changed between steps as a schedule changes torch's param_groups."""
    from pytorch_reference import AdamW

    opt, out = AdamW(w, weight_decay=wd), []
    for g, lr in zip(grads, rates, strict=True):
        opt.lr = lr
        out.append(opt.step(g))
    return out


def test_adamw_follows_pytorchs_documented_algorithm_without_torch():
    """Six steps of AdamW's update graph, the learning rate and the decay fed as scalar inputs (a schedule's lr,
    a binary's --weight-decay), equal the documented algorithm in numpy; a coordinate whose gradient stays 0
    only decays, by (1 - lr·wd) a step (an L2 penalty through Adam would move it by lr at once); with
    weight_decay 0 AdamW is Adam, bitwise; a negative or non-finite decay is refused."""
    from graphc.nn.optim import AdamW, make

    rng = np.random.default_rng(1)
    A, b0, w0 = rng.normal(size=(5, 5)), rng.normal(size=5), rng.normal(size=5)
    A[4], b0[4] = 0.0, 0.0  # the last coordinate's gradient is always 0
    p, g = gc.input("p", (5,), "float64"), gc.input("g", (5,), "float64")
    t, lr, wd_in = gc.input("t", (), "float64"), gc.input("lr", (), "float64"), gc.input("wd", (), "float64")
    opt = make("adamw")
    assert isinstance(opt, AdamW) and opt.weight_decay == 0.01  # torch.optim.AdamW's defaults
    assert (opt.beta1, opt.beta2, opt.eps) == (0.9, 0.999, 1e-8)
    st_in = {n: gc.input(n, (5,), "float64") for n in opt.state_names(p)}
    new_p, new_st = opt.step(p, g, st_in, t, lr, {"weight_decay": wd_in})
    rates = [0.05 * 0.5 ** (k // 2) for k in range(6)]
    w, state, ours, grads = w0.copy(), {n: np.zeros(5) for n in st_in}, [], []
    for step, rate in enumerate(rates, start=1):
        grads.append(A @ w + b0)
        vals = gc.evaluate([new_p, *new_st.values()], {"p": w, "g": grads[-1], "t": float(step), "lr": rate,
                                                       "wd": 0.2, **state})
        w, state = vals[0], dict(zip(new_st, vals[1:], strict=True))
        ours.append(w)
    ref = adamw_reference(w0.copy(), grads, rates, 0.2)
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"step {k + 1}")
    assert ours[-1][4] == pytest.approx(w0[4] * np.prod([1 - r * 0.2 for r in rates]), rel=1e-14)
    # the decay is not an L2 penalty by another name: coupled, the same coefficient moves the weights elsewhere
    coupled = adamw_reference(w0.copy(), [gr + 0.2 * wv for gr, wv in zip(grads, [w0, *ours[:-1]], strict=True)],
                              rates, 0.0)
    assert np.abs(coupled[-1] - ours[-1]).max() > 1e-3
    # weight_decay 0: Adam's update, bitwise
    adam_p, _ = make("adam").step(p, g, st_in, t, lr)
    vals = {"p": w0, "g": grads[0], "t": 1.0, "lr": 0.05, **{n: np.full(5, 0.5) for n in st_in}}
    assert np.array_equal(gc.evaluate([AdamW(weight_decay=0.0).step(p, g, st_in, t, lr)[0]], vals)[0],
                          gc.evaluate([adam_p], vals)[0])
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(gc.GraphcError, match="weight_decay must be a finite number >= 0"):
            AdamW(weight_decay=bad)


def test_weight_decay_is_adamws_recorded_as_it_ran_and_refused_for_the_other_optimizers():
    """weight_decay defaults to torch's 0.01 under adamw and is recorded so; the schedule's lr of each epoch is
    what the step decays with; for the optimizers without decoupled decay a weight_decay is refused, naming the
    coupled form (l2), never ignored; 0 changes nothing and is allowed."""
    X, y = blobs(n=40)
    assert TrainConfig(optimizer="adamw").weight_decay == 0.01
    assert TrainConfig(optimizer="adamw", weight_decay=0.0).weight_decay == 0.0
    assert TrainConfig(optimizer="adam").weight_decay is None
    tr = trainer_for(X, y, optimizer="adamw", weight_decay=0.05, schedule="step", step_every=1, step_gamma=0.5)
    assert "weight_decay" in tr.hyper
    assert tr.scalars(0) == {"lr": 0.1, "weight_decay": 0.05} and tr.scalars(2)["lr"] == 0.025
    assert "weight_decay" not in trainer_for(X, y, optimizer="adam").hyper
    for opt in ("sgd", "momentum", "adam", "rmsprop", "adagrad"):
        with pytest.raises(gc.GraphcError, match=rf"weight_decay 0.01 is AdamW's decoupled decay .* {opt} has "
                                                 r"none: use optimizer 'adamw' .* l2=0.01 \(--l2 0.01"):
            fit(None, (X, y), progress=False, epochs=1, optimizer=opt, weight_decay=0.01)
    TrainConfig(optimizer="sgd", weight_decay=0.0).validate()
    for bad in (-1.0, "0.1", float("nan")):
        with pytest.raises(gc.GraphcError, match="weight_decay must be a number >= 0"):
            TrainConfig(optimizer="adamw", weight_decay=bad).validate()


def test_a_keep_probability_below_a_half_notes_pytorchs_drop_probability():
    """dropout=0.2 keeps 20% of the hidden units (the lecture's keep probability); a PyTorch user means
    nn.Dropout(p=0.2): the run says which it is and what to give for the other (0.5 and above: no note)."""
    for keep, noted in ((0.2, True), (0.5, False), ([0.8, 0.9], False)):
        lines = []
        fit(data="breast_cancer", epochs=1, hidden=[8], dropout=keep, progress=False, log=lines.append)
        note = [m for m in lines if "PyTorch's nn.Dropout" in m]
        assert bool(note) == noted, lines
        if noted:
            assert "keeps 0.2 of the hidden units" in note[0] and "dropout=0.8 (--dropout 0.8)" in note[0]


def test_an_optimizer_of_another_family_over_a_model_file_leaves_out_the_files_learning_rate(tmp_path):
    """`graphc train --model cnn_bn_digits.py --optimizer adamw` trained AdamW at the file's lr 0.05, set for
    momentum SGD (PyTorch's AdamW default is 1e-3): a file's lr is now left out, with a note naming the lr used,
    when the optimizer given defaults to another one; kept between optimizers that default alike, and an lr the
    caller gives wins."""
    X, y = blobs(n=60, f=4)
    (tmp_path / "m.py").write_text("import graphc as gc\n\nOPTIONS = {'optimizer': 'momentum', 'lr': 0.05}\n\n\n"
                                   "def model(x, n_outputs):\n    return gc.nn.dense(x, n_outputs, name='out')\n")
    notes = []
    r = fit(str(tmp_path / "m.py"), (X, y), epochs=1, optimizer="adamw", log=notes.append)
    assert r.metrics["config"]["lr"] == 0.001
    assert any("lr=0.05 in" in n and "(lr 0.001, 'adamw''s default; --lr / lr= chooses)" in n for n in notes), notes
    assert fit(str(tmp_path / "m.py"), (X, y), epochs=1, optimizer="nesterov",
               progress=False).metrics["config"]["lr"] == 0.05
    assert fit(str(tmp_path / "m.py"), (X, y), epochs=1, optimizer="adamw", lr=0.02,
               progress=False).metrics["config"]["lr"] == 0.02


def test_clip_grad_norm_is_pytorchs_without_torch():
    """gc.nn.clip_grad_norm scales every gradient by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the 2-norm of all of
    them together, as torch.nn.utils.clip_grad_norm_ (written out in numpy here), and returns that norm; under
    the limit the gradients are unchanged; max_norm may be a scalar input; a bad max_norm is refused."""
    rng = np.random.default_rng(0)
    gs = [rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.normal(size=())]
    ins = [gc.input(f"g{i}", g.shape, "float64") for i, g in enumerate(gs)]
    vals = {f"g{i}": g for i, g in enumerate(gs)}
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in gs))
    for max_norm in (0.5, 2.0, 100.0):
        clipped, total = gc.nn.clip_grad_norm(ins, max_norm)
        out = gc.evaluate([total, *clipped], vals)
        assert out[0] == pytest.approx(norm, rel=1e-14)
        coef = min(1.0, max_norm / (norm + 1e-6))
        for a, g in zip(out[1:], gs, strict=True):
            np.testing.assert_allclose(a, g * coef, rtol=1e-14)
        if max_norm < norm:
            assert math.sqrt(sum(float(np.sum(a * a)) for a in out[1:])) == pytest.approx(max_norm, rel=1e-5)
        else:
            assert all(np.array_equal(a, g) for a, g in zip(out[1:], gs, strict=True))
    limit = gc.input("max_norm", (), "float64")
    one, _ = gc.nn.clip_grad_norm(ins[0], limit)  # one tensor in, one out
    np.testing.assert_allclose(gc.evaluate(one, {"g0": gs[0], "max_norm": 0.1}),
                               gs[0] * 0.1 / (np.linalg.norm(gs[0]) + 1e-6), rtol=1e-14)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(gc.GraphcError, match="max_norm must be a finite number > 0"):
            gc.nn.clip_grad_norm(ins, bad)
    with pytest.raises(gc.GraphcError, match="non-empty list"):
        gc.nn.clip_grad_norm([], 1.0)


def test_the_clip_grad_norm_option_clips_every_native_step():
    """clip_grad_norm= (--clip-grad-norm): a full-batch step moves the parameters by lr times the clipped
    gradient (the reference's gradient, clipped in numpy as torch does), a mini-batch epoch equals the reference
    stepped in Python, a limit above the norm changes nothing, and the option is recorded and checked."""
    X, y = blobs(n=60)
    tr = trainer_for(X, y, clip_grad_norm=0.05, batch_size=60)
    state = tr.init_state(1)
    grads = gc.evaluate(gc.grad(tr.loss, tr.params), dict(state, x=X, y=y))
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert norm > 0.5  # so that 0.05 clips
    want = {p.name: state[p.name] - 0.1 * g * (0.05 / (norm + 1e-6)) for p, g in zip(tr.params, grads, strict=True)}
    tr.epoch_fn.run_epoch(X, y, state, batch=60, scalars=tr.scalars(0))
    for k, v in want.items():
        np.testing.assert_allclose(state[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    tr = trainer_for(X, y, clip_grad_norm=0.05, optimizer="momentum")
    state = tr.init_state(3)
    ref, ref_loss = reference_epoch(tr, state, X, y, epoch=0, seed=2, step0=0, scalars=tr.scalars(0), batch=16)
    stats = tr.epoch_fn.run_epoch(X, y, state, batch=16, epoch=0, seed=2, step0=0, scalars=tr.scalars(0))
    assert stats.mean_loss == pytest.approx(ref_loss, rel=1e-5)
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
    plain = fit(None, (X, y), progress=False, epochs=2, hidden=[8])
    loose = fit(None, (X, y), progress=False, epochs=2, hidden=[8], clip_grad_norm=1e6)
    tight = fit(None, (X, y), progress=False, epochs=2, hidden=[8], clip_grad_norm=1e-3)
    assert all(np.array_equal(plain.params[k], loose.params[k]) for k in plain.params)
    assert all(not np.array_equal(plain.params[k], tight.params[k]) for k in plain.params)
    for bad in (0.0, -1.0, float("inf"), "1"):
        with pytest.raises(gc.GraphcError, match="clip_grad_norm must be a number > 0"):
            fit(None, (X, y), progress=False, epochs=1, clip_grad_norm=bad)
