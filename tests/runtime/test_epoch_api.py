"""gc.EpochFunction, the public epoch: any loss and update graph, seeded shuffles or a caller's order, per-step
losses, a default thread count, and a non-finite loss raised with the state of the last finite step."""

from __future__ import annotations

import math
import textwrap
import warnings

import numpy as np
import pytest

import graphc as gc


def _net(hidden=8, n_in=5, n_out=3, name="ep"):
    x = gc.input("x", ("N", n_in))
    y = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    logits = gc.nn.mlp(x, [hidden, n_out], name=name)
    loss = gc.nn.softmax_cross_entropy(logits, y)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    updates = {p: p - lr * g for p, g in zip(params, grads, strict=True)}
    return x, y, loss, params, updates


def _data(n=37, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    y = rng.integers(0, n_out, n).astype(np.int32)
    return X, y


def _reference(loss, params, updates, state, X, y, order, batch, lr):
    """Plain SGD steps through the numpy reference evaluator: the oracle."""
    state = {k: v.copy() for k, v in state.items()}
    losses = []
    for lo in range(0, len(order), batch):
        idx = order[lo:lo + batch]
        vals = dict(state, x=X[idx], y=y[idx], lr=np.float32(lr))
        out = gc.evaluate([loss, *updates.values()], vals)
        losses.append(float(out[0]))
        for p, v in zip(updates, out[1:], strict=True):
            state[p.name] = v.astype(np.float32)
    return state, losses


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_caller_order_matches_reference_steps(batch):
    x, y, loss, params, updates = _net()
    ef = gc.EpochFunction(loss, updates=updates, x=x, y=y)
    X, Y = _data()
    state = gc.nn.init_params(params, seed=1)
    order = np.random.default_rng(3).integers(0, len(X), 23)  # any index sequence: repeats, not all rows
    ref, ref_losses = _reference(loss, params, updates, state, X, Y, order, batch, 0.1)
    stats = ef.run_epoch(X, Y, state, batch=batch, order=order, scalars={"lr": 0.1})
    assert stats.steps == math.ceil(len(order) / batch) == len(stats.losses)
    np.testing.assert_allclose(stats.losses, ref_losses, rtol=2e-5, atol=1e-6)
    assert stats.mean_loss == pytest.approx(
        sum(v * len(order[i * batch:(i + 1) * batch]) for i, v in enumerate(ref_losses)) / len(order), rel=2e-5)
    np.testing.assert_array_equal(stats.permutation, order)
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_seeded_shuffle_defaults_and_counters():
    """epoch, seed and step0 are optional: consecutive epochs get fresh shuffles; the order is graphc's
    seeded permutation of that epoch."""
    from graphc.codegen.epoch import permutation

    x, y, loss, params, updates = _net(name="sh")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=30)
    state = gc.nn.init_params(params, seed=0)
    s0 = ef.run_epoch(X, Y, state, batch=7, scalars={"lr": 0.05})
    s1 = ef.run_epoch(X, Y, state, batch=7, scalars={"lr": 0.05})
    assert list(s0.permutation) == permutation(0, 0, 30) and list(s1.permutation) == permutation(0, 1, 30)
    assert ef.epochs_done == 2 and ef.steps_done == 2 * 5
    s2 = ef.run_epoch(X, Y, state, batch=7, scalars={"lr": 0.05}, shuffle=False)
    assert list(s2.permutation) == list(range(30))
    # the same as a caller-given order of that permutation
    a = gc.nn.init_params(params, seed=4)
    b = gc.nn.init_params(params, seed=4)
    ef.run_epoch(X, Y, a, batch=4, epoch=9, seed=2, scalars={"lr": 0.05})
    ef.run_epoch(X, Y, b, batch=4, order=np.array(permutation(2, 9, 30)), scalars={"lr": 0.05})
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_nonfinite_loss_raises_with_the_last_finite_state():
    x, y, loss, params, updates = _net(name="nf")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=20)
    X[13, 2] = np.inf  # row 13 is the 6th step in this order
    order = np.array([0, 1, 2, 3, 4, 13, 5, 6], np.int64)
    state = gc.nn.init_params(params, seed=0)
    expect = gc.nn.init_params(params, seed=0)
    ef.run_epoch(X, Y, expect, batch=1, order=order[:5], scalars={"lr": 0.1})
    with pytest.raises(gc.NumericalError, match=r"non-finite .* at step 6 of the epoch") as e:
        ef.run_epoch(X, Y, state, batch=1, order=order, scalars={"lr": 0.1})
    assert isinstance(e.value, gc.GraphcError)
    for k in state:
        assert np.all(np.isfinite(state[k])), k
        np.testing.assert_array_equal(state[k], expect[k], err_msg=k)
    stats = ef.run_epoch(X, Y, state, batch=1, order=order, scalars={"lr": 0.1}, on_nonfinite="stop")
    assert stats.nonfinite_step == 5 and stats.steps == 5


def test_an_update_that_overflows_with_finite_losses_is_raised_with_the_epochs_start():
    """A loss can be finite while its update overflows the parameters: the last step's shows in no loss, an
    earlier one's only in the next loss, after which 'the last finite step' held inf weights."""
    x, y, loss, params, updates = _net(name="ovf")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=32)
    X *= 100
    start = gc.nn.init_params(params, seed=0)
    for batch in (32, 8):
        state = {k: v.copy() for k, v in start.items()}
        with pytest.raises(gc.NumericalError, match="epoch's start"):
            ef.run_epoch(X, Y, state, batch=batch, scalars={"lr": 1e38}, epoch=0, step0=0)
        for k in state:
            np.testing.assert_array_equal(state[k], start[k], err_msg=k)
    stats = ef.run_epoch(X, Y, state, batch=8, scalars={"lr": 0.01}, epoch=0, step0=0)  # usable afterwards
    assert stats.steps == 4 and np.isfinite(stats.mean_loss) and stats.nonfinite_param is None
    # on_nonfinite="stop" returned such a state with nothing flagged: nonfinite_param names the array now
    state = {k: v.copy() for k, v in start.items()}
    stats = ef.run_epoch(X, Y, state, batch=32, scalars={"lr": 1e38}, epoch=0, step0=0, on_nonfinite="stop")
    assert stats.nonfinite_step is None and stats.nonfinite_param in state
    assert not np.isfinite(state[stats.nonfinite_param]).all()


def _saturating(name: str, n: int, inf_at: tuple[int, int]):
    """A tanh MLP (it saturates: a loss stays finite when a feature is inf, its update is NaN (inf · 0)) with inputs
    of its own names (no node shared with the other tests' nets), data with one inf, the parameters at the start
    and after the first 2 steps of 4 rows in index order."""
    x = gc.input(f"x_{name}", ("N", 5))
    y = gc.input(f"y_{name}", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [8, 3], "tanh", name=name), y)
    params = gc.nn.parameters(loss)
    updates = {p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)}
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=n)
    X[inf_at] = np.inf
    start = gc.nn.init_params(params, seed=0)
    after2 = {k: v.copy() for k, v in start.items()}
    ef.run_epoch(X, Y, after2, batch=4, order=np.arange(8), scalars={"lr": 0.1})
    return ef, X, Y, {k: v.copy() for k, v in start.items()}, after2


def test_an_update_that_overflows_at_the_last_step_keeps_the_state_before_it():
    """The last step's update overflows with its loss finite (it shows in no loss): the state before it, named."""
    ef, X, Y, state, after2 = _saturating("last", 12, (9, 1))  # row 9: the last of three steps of 4
    with pytest.raises(gc.NumericalError, match=r"every loss of its 3 steps was finite .* after the step before the "
                                                r"last \(2 steps this epoch\)"):
        ef.run_epoch(X, Y, state, batch=4, order=np.arange(12), scalars={"lr": 0.1})
    for k in state:
        np.testing.assert_array_equal(state[k], after2[k], err_msg=k)


def test_an_update_that_overflows_mid_epoch_is_named_with_the_state_before_it():
    """An inf feature in step 3's batch: step 3's loss is finite, but its update makes the first layer NaN and
    step 4's loss NaN. The error named step 4 and went back to the epoch's start; it names step 3's update now,
    with the state after step 2 (the last finite one)."""
    ef, X, Y, state, after2 = _saturating("sat", 20, (8, 2))  # row 8: step 3
    with pytest.raises(gc.NumericalError, match=r"at step 4 of the epoch .* the update of step 3 \(whose loss was "
                                                r"finite\) had already made sat\.0\.\w+ non-finite: .* after the "
                                                r"step before it \(2 steps this epoch\)"):
        ef.run_epoch(X, Y, state, batch=4, order=np.arange(20), scalars={"lr": 0.1})
    for k in state:
        np.testing.assert_array_equal(state[k], after2[k], err_msg=k)


@pytest.mark.parametrize("threads,on_nonfinite", [(1, "raise"), (2, "stop")])
def test_a_label_out_of_range_stops_the_epoch_at_its_step_with_the_last_good_state(threads, on_nonfinite):
    """The step's index check (a label outside [0, C)) is read after every step of the native epoch: an
    InputError naming the step, its rows and the loss's line, whatever on_nonfinite says, with the state of
    the last good step; the error is cleared, so the next epoch trains normally."""
    x, y, loss, params, updates = _net(name="lab")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=20)
    Y[13] = 3  # 3 classes: row 13 is in the 3rd step of this order
    order = np.array([0, 1, 2, 3, 4, 13, 5, 6], np.int64)
    state = gc.nn.init_params(params, seed=0)
    expect = gc.nn.init_params(params, seed=0)
    ef.run_epoch(X, Y, expect, batch=2, order=order[:4], scalars={"lr": 0.1}, threads=threads)
    # (the line is the first to build this hash-consed check: another test's, when the suite runs together)
    with pytest.raises(gc.InputError, match=r"step 3 of the epoch .*label out of range \[0, 3\) at "
                                            r"\w+\.py:\d+( \(also built at [^)]*\))?, in the batch of rows 4, 13; "
                                            r".*2 steps"):
        ef.run_epoch(X, Y, state, batch=2, order=order, scalars={"lr": 0.1}, threads=threads,
                     on_nonfinite=on_nonfinite)
    for k in state:
        np.testing.assert_array_equal(state[k], expect[k], err_msg=k)
    Y[13] = 2
    ef.run_epoch(X, Y, state, batch=2, order=order, scalars={"lr": 0.1}, threads=threads)
    ef.run_epoch(X, Y, expect, batch=2, order=order, scalars={"lr": 0.1}, threads=threads)
    for k in state:
        np.testing.assert_array_equal(state[k], expect[k], err_msg=k)


def test_a_token_id_out_of_range_is_an_error_of_the_epoch():
    ids = gc.input("ids", ("N", 3), "int32")
    y = gc.input("y", ("N",), "int32")
    h = gc.mean(gc.nn.embedding(ids, 5, 4, name="tok"), axis=1)
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(h, 2, name="cls"), y)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    ef = gc.EpochFunction(loss, {p: p - 0.1 * g for p, g in zip(params, grads, strict=True)}, x=ids, y=y)
    X = np.random.default_rng(0).integers(0, 5, (10, 3)).astype(np.int32)
    X[7, 1] = 5
    state = gc.nn.init_params(params, seed=0)
    before = {k: v.copy() for k, v in state.items()}
    with pytest.raises(gc.InputError, match=r"step 1 of the epoch .*embedding 'tok': id out of range \[0, 5\)"):
        ef.run_epoch(X, np.zeros(10, np.int32), state, batch=10, shuffle=False)
    for k in state:
        np.testing.assert_array_equal(state[k], before[k], err_msg=k)


def test_bad_orders_and_arguments_are_graphc_errors():
    x, y, loss, params, updates = _net(name="bad")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=10)
    state = gc.nn.init_params(params, seed=0)
    for order, msg in ((np.array([0, 10]), r"order\[1\] = 10 is not a row"), (np.array([-1]), "order"),
                       (np.array([0.5]), "int row indices"), (np.zeros((2, 2), int), "1-D"),
                       (np.array([], int), "non-empty")):
        with pytest.raises(gc.GraphcError, match=msg):
            ef.run_epoch(X, Y, state, batch=2, order=order, scalars={"lr": 0.1})
    with pytest.raises(gc.GraphcError, match="no value for the input 'lr'.*scalars="):
        ef.run_epoch(X, Y, state, batch=2)
    with pytest.raises(gc.GraphcError, match="Y must have one row per row of X"):
        ef.run_epoch(X, Y[:5], state, batch=2, scalars={"lr": 0.1})
    with pytest.raises(gc.GraphcError, match="batch size"):
        ef.run_epoch(X, Y, state, batch=0, scalars={"lr": 0.1})
    with pytest.raises(gc.GraphcError, match="on_nonfinite"):
        ef.run_epoch(X, Y, state, batch=2, scalars={"lr": 0.1}, on_nonfinite="ignore")
    for kw, msg in (({"max_steps": 2.5}, "max_steps must be an int"), ({"max_steps": -2}, "max_steps must be"),
                    ({"drop_last": "1"}, "drop_last must be True or False"),
                    ({"shuffle": "no"}, "shuffle must be True or False")):  # 2.5 steps looped forever
        with pytest.raises(gc.InputError, match=msg):
            ef.run_epoch(X, Y, state, batch=2, scalars={"lr": 0.1}, **kw)
    with pytest.raises(gc.GraphcError, match="float32 scalar"):
        gc.EpochFunction(x, updates, x=x, y=y)
    with pytest.raises(gc.GraphcError, match="updates must be a dict"):
        gc.EpochFunction(loss, list(updates.values()), x=x, y=y)
    with pytest.raises(gc.InputError, match="state must be a dict of name -> array"):
        ef.run_epoch(X, Y, list(state.values()), batch=2, scalars={"lr": 0.1})
    with pytest.raises(gc.InputError, match=r"scalars \['rl'\] are not scalar inputs of the step \(its scalar "
                                            r"inputs: lr\)$"):
        ef.run_epoch(X, Y, state, batch=2, scalars={"rl": 0.1})  # a typo is not silently ignored
    param_name = next(k for k in state)
    with pytest.raises(gc.InputError, match=rf"'{param_name}' is a f32\[.*\] input: give its array in `state`"):
        ef.run_epoch(X, Y, state, batch=2, scalars={"lr": 0.1, param_name: 1.0})  # an array input as a scalar
    with pytest.raises(gc.GraphcError, match="batch dim must be symbolic"):
        gc.EpochFunction(loss, updates, x=gc.input("x", (4, 5)), y=y)
    # a scalar that is not one number, state arrays that cannot be trained in place: said in words
    for lr, got in ((np.array([0.1, 0.2]), r"an array of float64, shape \(2,\)"), ("fast", "'fast'"), (None, "None")):
        with pytest.raises(gc.InputError, match=rf"scalars\['lr'\] must be one number \(f32\[\]\), got {got}"):
            ef.run_epoch(X, Y, state, batch=2, scalars={"lr": lr})
    name = params[0].name
    frozen = np.array(state[name])
    frozen.flags.writeable = False
    fortran = np.asfortranarray(state[name])
    for arr, got in ((frozen, r"a read-only array \(copy it"), (fortran, "an array that is not C-contiguous"),
                     (state[name].astype(np.float64), "an array of float64"), (list(state[name]), "list")):
        if arr is fortran and fortran.flags.c_contiguous:
            continue  # a vector is both
        with pytest.raises(gc.InputError, match=rf"state '{name}' must be a writable contiguous .* got {got}"):
            ef.run_epoch(X, Y, dict(state, **{name: arr}), batch=2, scalars={"lr": 0.1})


def test_default_threads_follow_the_step_size():
    x, y, loss, params, updates = _net(name="thr")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    assert ef.threads_for_batch(1) == 1  # tiny GEMMs: barriers would cost more than they save
    big = gc.EpochFunction(loss, updates, x=x, y=y, threads=2)
    assert big.threads_for_batch(1) == 2  # an explicit count is obeyed
    x2 = gc.input("x", ("N", 512))
    y2 = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    l2 = gc.nn.softmax_cross_entropy(gc.nn.mlp(x2, [512, 10], name="thr2"), y2)
    ps = gc.nn.parameters(l2)
    ef2 = gc.EpochFunction(l2, {p: p - lr * g for p, g in zip(ps, gc.grad(l2, ps), strict=True)}, x=x2, y=y2)
    from graphc.runtime.jit import default_threads

    assert ef2.threads_for_batch(1) == 1 and ef2.threads_for_batch(256) == default_threads()


def test_misaligned_state_and_strided_data_are_said_once():
    x, y, loss, params, updates = _net(hidden=32, name="mis")
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    X, Y = _data(n=16)
    a = gc.nn.init_params(params, seed=0)
    b = {}
    for k, v in a.items():
        raw = np.zeros(v.size + 16, np.float32)
        off = next(i for i in range(1, 16) if (raw.ctypes.data + 4 * i) % 64)
        b[k] = raw[off:off + v.size].reshape(v.shape)
        b[k][...] = v
    with pytest.warns(UserWarning, match="not 64-byte aligned"):
        ef.run_epoch(X, Y, b, batch=4, epoch=0, scalars={"lr": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ef.run_epoch(X, Y, b, batch=4, epoch=1, scalars={"lr": 0.1})  # said once
    c = ef.aligned(b)
    assert all(v.ctypes.data % 64 == 0 for v in c.values())
    Xs = np.zeros((16, 10), np.float32)
    Xs[:, ::2] = X
    with pytest.warns(UserWarning, match="X is not C-contiguous"):
        ef.run_epoch(Xs[:, ::2], Y, c, batch=4, epoch=2, scalars={"lr": 0.1})


def test_readme_epoch_example_runs():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
              if "gc.EpochFunction" in b]
    assert blocks, "README has no EpochFunction example"
    p = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, cwd=root, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    assert [ln.split()[0] for ln in lines[:5]] == ["0", "1", "2", "3", "4"] and lines[0].split()[2] == "1000"


def test_profiled_epoch_is_not_the_cached_plain_module():
    """A profiled EpochFunction of a graph already compiled without profiling has its own module (its counters):
    the cache key says so, and the report holds the epoch's kernel times."""
    import time

    x, y, loss, params, updates = _net(name="prof")
    gc.EpochFunction(loss, updates, x=x, y=y, threads=1)  # the plain module, cached
    ef = gc.EpochFunction(loss, updates, x=x, y=y, threads=1, profile=True)
    X, Y = _data()
    state = gc.nn.init_params(params, seed=0)
    t0 = time.perf_counter()
    ef.run_epoch(X, Y, state, batch=4, scalars={"lr": 0.1})
    wall = time.perf_counter() - t0
    rows = ef.profile_report()
    assert {name for name, _, _ in rows} == {k.name for k in ef.program.kernels}
    spent = sum(s + w for _, s, w in rows)
    assert 0 < spent <= wall


@pytest.mark.parametrize("threads", [1, 2])
def test_epoch_flushes_denormals_and_keeps_the_callers_environment(threads):
    """The epoch driver sets FTZ/DAZ once for the whole epoch on every thread (not around each step): a step's
    denormal results are 0 there as in gc.compile's programs, and the caller's environment is back afterwards."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("FTZ/DAZ is set on x86-64 only; other targets keep IEEE denormals")
    x = gc.input("x", ("N", 3))
    w = gc.input("w", (4096,))
    scale = gc.input("scale", (), "float32")
    loss = gc.sum(x) + gc.sum(w) * 0.0
    ef = gc.EpochFunction(loss, {w: w * scale}, x=x, threads=threads)
    tiny = np.float32(1e-38)  # normal; half of it is denormal
    state = ef.aligned({"w": np.full(4096, tiny, np.float32)})
    state["w"][1::2] = 4e-38
    X = np.ones((5, 3), np.float32)
    ef.run_epoch(X, None, state, batch=5, order=np.arange(5), scalars={"scale": 0.5})
    assert np.all(state["w"][::2] == 0)  # IEEE: 5e-39
    assert np.all(state["w"][1::2] == np.float32(2e-38))
    assert np.float32(tiny) * np.float32(0.5) != 0  # the caller's MXCSR is back to IEEE


def test_an_epoch_in_several_native_calls_is_bitwise_one_call():
    """Chunked epochs (Ctrl-C is seen between the calls) continue the order, the global step and the dropout
    keys: the parameters, losses and mean loss are bitwise those of one call, with a shuffle, the last partial
    batch, dropout and Adam's step counter."""
    x = gc.input("x", ("N", 5))
    y = gc.input("y", ("N",), "int32")
    logits = gc.nn.mlp(x, [8, 3], name="chunk", dropout_keep=0.8)
    loss = gc.nn.softmax_cross_entropy(logits, y)
    params = gc.nn.parameters(loss)
    from graphc.nn.optim import make

    opt = make("adam")
    state_in = opt.state_inputs(params)
    step = gc.input("step", ())
    updates = {}
    for p, g in zip(params, gc.grad(loss, params), strict=True):
        new_p, new_state = opt.step(p, g, state_in, step, gc.constant(0.01))
        updates[p] = new_p
        updates.update({state_in[n]: v for n, v in new_state.items()})
    X, Y = _data(n=53)
    runs = []
    for chunk_seconds in (None, 0.0):  # one call; then one step a call
        ef = gc.EpochFunction(loss, updates, x=x, y=y, training=True)
        if chunk_seconds is not None:
            ef.CHUNK_SECONDS = chunk_seconds  # 0: one step a call, whatever a step takes
            ef._step_seconds[5, 1] = 1.0  # as if measured: no first call of 16 steps
        state = gc.nn.init_params(params, seed=2)
        state.update({n: np.zeros(leaf.shape, np.float32) for n, leaf in state_in.items()})
        stats = [ef.run_epoch(X, Y, state, batch=5, seed=4, threads=1) for _ in range(2)]
        runs.append((state, stats, ef.steps_done))
    (a, sa, na), (b, sb, nb) = runs
    assert na == nb == 22
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for s1, s2 in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(s1.losses, s2.losses)
        assert s1.loss_sum == pytest.approx(s2.loss_sum, rel=1e-12) and s1.steps == s2.steps == 11


def test_an_interrupt_between_native_calls_leaves_the_state_at_a_step_boundary():
    """A KeyboardInterrupt between two calls of a chunked epoch: the caller's (misaligned, so trained on an
    aligned copy) arrays hold the parameters after the steps that ran, as an epoch of that many steps gives them,
    and steps_done counts them."""
    x, y, loss, params, updates = _net(name="intr")
    X, Y = _data(n=40)
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    ef.CHUNK_SECONDS = 0.0  # one step a call
    ef._step_seconds[4, 1] = 1.0  # as if measured: no first call of 16 steps
    calls = {"n": 0}
    real = ef._epoch

    def interrupted(*args):
        real(*args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    ef._epoch = interrupted
    raw = np.zeros(sum(int(np.prod(p.shape)) for p in params) + 1, np.float32)
    state, off = {}, 1  # views one float off a 64-byte boundary: trained on aligned copies
    for p, v in gc.nn.init_params(params, seed=5).items():
        state[p] = raw[off:off + v.size].reshape(v.shape)
        state[p][...] = v
        off += v.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            ef.run_epoch(X, Y, state, batch=4, seed=1, scalars={"lr": 0.1}, threads=1)
    assert ef.steps_done == 3
    want = gc.nn.init_params(params, seed=5)
    gc.EpochFunction(loss, updates, x=x, y=y).run_epoch(X, Y, want, batch=4, seed=1, scalars={"lr": 0.1},
                                                        max_steps=3)
    for k in want:
        np.testing.assert_array_equal(state[k], want[k], err_msg=k)


def test_ctrl_c_stops_a_long_epoch_within_a_chunk(tmp_path):
    """SIGINT to a process in a ~20 s native epoch: it stops between two calls of ~0.2 s, not at the epoch's end."""
    script = tmp_path / "long_epoch.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import numpy as np
        import graphc as gc
        x = gc.input("x", ("N", 16)); y = gc.input("y", ("N",), "int32")
        loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [1024, 1024, 10], name="long"), y)
        params = gc.nn.parameters(loss)
        updates = {p: p - 0.001 * g for p, g in zip(params, gc.grad(loss, params))}
        ef = gc.EpochFunction(loss, updates, x=x, y=y, threads=1)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((200_000, 16)).astype(np.float32); Y = rng.integers(0, 10, 200_000).astype(np.int32)
        state = gc.nn.init_params(params, seed=0)
        ef.run_epoch(X[:64], Y[:64], state, batch=1)  # compiled, and a step measured
        print("ready", flush=True)
        try:
            ef.run_epoch(X, Y, state, batch=1)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted", ef.steps_done, flush=True)
    """))
    import signal
    import subprocess
    import sys
    import time

    # SIGINT at its default in the child: a suite started in the background (`pytest &`) hands it down ignored, and
    # Python then raises no KeyboardInterrupt (the whole ~20 s epoch ran and the check failed)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        t = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
        waited = time.perf_counter() - t
    finally:
        p.kill()
    assert out.startswith("interrupted"), out
    assert 64 < int(out.split()[1]) < 200_064  # stopped inside the epoch, on a step
    assert waited < 5.0, waited  # the whole epoch takes ~20 s; a chunk ~0.2 s


def test_a_failed_check_after_the_first_step_is_named_right():
    """The run-time check named is the one that failed, at any step (the replay to the last good step ran the
    driver again, which cleared the failed check's number: the message named the program's last check)."""
    x = gc.input("x", ("N", 3), "int32")
    y = gc.input("y", ("N",), "int32")
    e = gc.nn.embedding(x, 9, 4, name="emb")  # a second run-time check: ids in [0, 9)
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.reshape(e, ("N", 12)), 3, name="out"), y)
    ps = gc.nn.parameters(loss)
    ef = gc.EpochFunction(loss, {p: p - 0.1 * g for p, g in zip(ps, gc.grad(loss, ps), strict=True)}, x=x, y=y)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 9, (40, 3)).astype(np.int32)
    Y = rng.integers(0, 3, 40).astype(np.int32)
    Y[25] = 7  # a label out of range in the fourth batch of 8; every id is fine
    state = gc.nn.init_params(ps, seed=0)
    with pytest.raises(gc.InputError, match=r"step 4 of the epoch .*softmax_cross_entropy: label out of range.*"
                                            r"after the last good step \(3 steps this epoch\)"):
        ef.run_epoch(X, Y, state, batch=8, order=np.arange(40))


def _unlabelled_epoch():
    """An epoch function of a loss that reads no labels (built without y=), and its initial state."""
    x = gc.input("x", ("N", 4))
    loss = gc.mean(gc.nn.dense(x, 1, name="d") ** 2)
    ps = gc.nn.parameters(loss)
    ef = gc.EpochFunction(loss, {p: p - 0.1 * g for p, g in zip(ps, gc.grad(loss, ps), strict=True)}, x=x)
    return ef, gc.nn.init_params(ps, seed=0)


def test_labels_given_to_an_epoch_without_labels_and_an_epoch_of_no_steps():
    ef, state = _unlabelled_epoch()
    X = np.ones((8, 4), np.float32)
    with pytest.raises(gc.InputError, match="Y was given, but this epoch function was built without y="):
        ef.run_epoch(X, np.ones(8, np.int32), state, batch=4)
    st = ef.run_epoch(X, None, state, batch=4, max_steps=0)
    assert st.steps == 0 and math.isnan(st.mean_loss)


def test_a_misspelt_state_name_is_suggested():
    ef, state = _unlabelled_epoch()
    state["d.w"] = state.pop("d.W")
    with pytest.raises(gc.InputError, match=r"no value for the input 'd.W' .*it holds 'd.w': a misspelling"):
        ef.run_epoch(np.ones((8, 4), np.float32), None, state, batch=4)


def test_an_int_scalar_is_checked_as_evaluate_checks_it_and_the_seed_is_an_int():
    """scalars={'k': 2**40} for an int32 input was numpy's bare OverflowError, 1.7 was silently 1, and seed=None
    a bare TypeError from inside the epoch."""
    x, y, k = gc.input("x", ("N", 4)), gc.input("y", ("N",), "int32"), gc.input("k", (), "int32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(x, 3, name="kint"), y) * gc.cast(k, "float32")
    params = gc.nn.parameters(loss)
    ef = gc.EpochFunction(loss, {p: p - 0.1 * g for p, g in zip(params, gc.grad(loss, params), strict=True)}, x=x, y=y)
    X, Y = np.ones((8, 4), np.float32), np.zeros(8, np.int32)
    state = gc.nn.init_params(params, seed=0)
    with pytest.raises(gc.InputError, match=r"scalars\['k'\]: the value for input 'k' .* holds 1099511627776 at "
                                            r"index \(\), outside int32's range"):
        ef.run_epoch(X, Y, state, batch=4, scalars={"k": 2**40})
    with pytest.raises(gc.DTypeError, match=r"scalars\['k'\]: .* has dtype float64; pass integers"):
        ef.run_epoch(X, Y, state, batch=4, scalars={"k": 1.7})
    with pytest.raises(gc.InputError, match=r"seed must be an int in \[0, 2\*\*63\), got None"):
        ef.run_epoch(X, Y, state, batch=4, scalars={"k": 1}, seed=None)
    for good in (1, np.int64(1), np.int32(1)):
        assert ef.run_epoch(X, Y, state, batch=4, scalars={"k": good}).steps == 2


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_the_step_input_is_fed_in_its_declared_dtype(dtype):
    """`step` (the global step, 1 for the first) reaches the graph as the number it is, whatever scalar dtype it
    was declared with: an int32 counter (optax's choice) was fed a float32's bits (1 read as 1065353216), which
    made Adam's bias correction 1 from the first step, silently."""
    x = gc.input("x", ("N", 1))
    w = gc.param("w", (2,))
    t = gc.input("step", (), dtype)
    seen = gc.cast(t, "float32")
    ef = gc.EpochFunction(gc.sum(x) * w[0], updates={w: gc.stack([seen, w[1] + seen])}, x=x, threads=1)
    state = ef.aligned({"w": np.zeros(2, np.float32)})
    ef.run_epoch(np.ones((5, 1), np.float32), None, state, batch=2, order=np.arange(5))  # steps 1, 2, 3
    np.testing.assert_array_equal(state["w"], [3.0, 6.0])
    ef.run_epoch(np.ones((4, 1), np.float32), None, state, batch=4, order=np.arange(4))  # the count goes on: 4
    np.testing.assert_array_equal(state["w"], [4.0, 10.0])


def test_a_step_input_the_driver_cannot_feed_is_refused_by_name():
    x = gc.input("x", ("N", 1))
    w = gc.param("w", (1,))
    for bad in (gc.input("step", (2,)), gc.input("step", (), "bool")):
        with pytest.raises(gc.GraphcError, match=r"the input 'step' is the global step number .*test_epoch_api"):
            gc.EpochFunction(gc.sum(x * w), updates={w: w + gc.cast(bad, "float32")[..., None][0] * 0}, x=x)


def test_state_trained_in_place_must_not_share_memory_with_other_state_or_the_data():
    """One array for two parameters, or a parameter that is X's memory, trained silently wrong; a compiled call
    refuses the same arrays. Both are refused by name."""
    x, y = gc.input("x", ("N", 4)), gc.input("y", ("N",), "int32")
    w1, w2 = gc.param("w1", (4, 4)), gc.param("w2", (4, 4))
    loss = gc.nn.softmax_cross_entropy(gc.tanh(x @ w1) @ w2, y)
    g1, g2 = gc.grad(loss, [w1, w2])
    ef = gc.EpochFunction(loss, updates={w1: w1 - 0.5 * g1, w2: w2 - 0.5 * g2}, x=x, y=y, threads=1)
    rng = np.random.default_rng(0)
    X, Y = rng.random((6, 4), np.float32), rng.integers(0, 4, 6).astype(np.int32)
    st = ef.aligned({"w1": rng.random((4, 4), np.float32), "w2": rng.random((4, 4), np.float32)})
    with pytest.raises(gc.InputError, match=r"state 'w1', trained in place, shares memory with state 'w2'"):
        ef.run_epoch(X, Y, {"w1": st["w1"], "w2": st["w1"]}, batch=2)
    with pytest.raises(gc.InputError, match=r"state 'w1', trained in place, shares memory with X"):
        ef.run_epoch(st["w1"], Y[:4], st, batch=2)
    ef.run_epoch(X, Y, st, batch=2)  # apart: trains
