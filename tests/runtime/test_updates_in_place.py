"""Parameter updates are written in place, and every new value is computed from the values at call time (as
PyTensor's `updates`): an update that reads its parameter at other elements (W <- W.T, W <- W @ W, a roll), or
reads another updated parameter ({a: 2b, b: 2a}, a swap), gets the old values, as gc.evaluate does."""

import numpy as np
import pytest

import graphc as gc

rng = np.random.default_rng(5)


def _run(outputs, updates, values, threads=2):
    """(the compiled outputs and the updated values, the reference's) for one call."""
    fn = gc.compile(outputs, updates=updates, threads=threads, cache=False)
    arrays = {k: np.array(v) for k, v in values.items()}
    got = fn(arrays)
    ref = gc.evaluate([outputs] if not isinstance(outputs, list) else outputs, values)
    want = {p.name: gc.evaluate(u, values) for p, u in updates.items()}
    return got, {p.name: arrays[p.name] for p in updates}, ref, want


W8 = gc.param("W8", (8, 8))
W64 = gc.param("W64", (64, 64))
V = gc.param("V", (10,))
UPDATES = {
    "transpose": (W8, lambda: W8.T),
    "flip": (W8, lambda: gc.flip(W8, axis=0)),
    "minus its first row": (W8, lambda: W8 - W8[0]),
    "matmul 8": (W8, lambda: W8 @ W8),
    "matmul 64": (W64, lambda: W64 @ W64),
    "matmul 64 scaled": (W64, lambda: W64 @ W64 * 0.1),
    "roll": (V, lambda: gc.concatenate([V[5:], V[:5]])),
    "shift right": (V, lambda: gc.pad(V[:-1], ((1, 0),))),
    "permutation": (V, lambda: gc.take(V, rng.permutation(10))),
    "reverse cumsum": (V, lambda: gc.cumsum(V, reverse=True)),
    "centred": (V, lambda: V - gc.mean(V)),
}


@pytest.mark.parametrize("case", sorted(UPDATES))
def test_an_update_reading_its_parameter_elsewhere_sees_the_old_values(case):
    p, build = UPDATES[case]
    values = {p.name: rng.normal(size=p.shape).astype(np.float32)}
    _, new, _, want = _run(gc.sum(p), {p: build()}, values)
    np.testing.assert_allclose(new[p.name], want[p.name], rtol=1e-5, atol=1e-5)


def test_updates_that_read_each_other_and_swaps_use_the_old_values():
    a, b, c = gc.param("a", (4,)), gc.param("b", (4,)), gc.param("c", (4,))
    values = {"a": np.arange(4.0, dtype=np.float32), "b": np.arange(4.0, dtype=np.float32) + 10,
              "c": np.ones(4, np.float32)}
    for updates in ({a: b * 2.0, b: a * 2.0}, {a: b, b: a}, {a: b, b: c, c: a}, {a: c * 3.0, b: c * 3.0}):
        _, new, _, want = _run(gc.sum(a * b), updates, values)
        for k in new:
            np.testing.assert_array_equal(new[k], want[k])


def test_an_update_value_that_is_also_an_output():
    w = gc.param("w", (5,))
    values = {"w": np.arange(5.0, dtype=np.float32)}
    got, new, ref, want = _run([w * 2.0, w.T + 1.0], {w: w * 2.0}, values)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, r)
    np.testing.assert_array_equal(new["w"], want["w"])


def test_sgd_updates_stay_in_place_without_copies():
    x = gc.input("x", ("N", 6))
    t = gc.input("t", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [5, 3], name="net"), t)
    params = gc.nn.parameters(loss)
    updates = {p: p - 0.1 * g for p, g in zip(params, gc.grad(loss, params), strict=True)}
    fn = gc.compile(loss, updates=updates, cache=False)
    assert not [k for k in fn.program.kernels if "_update_" in k.name or k.name.startswith("snapshot_")]


def test_an_input_sharing_memory_with_an_updated_parameter_is_refused():
    x, w = gc.input("x", (16,)), gc.param("w", (16,))
    fn = gc.compile(gc.flip(x, axis=0), updates={w: w * 2.0}, cache=False)
    a = np.arange(32, dtype=np.float32)
    with pytest.raises(gc.InputError, match="'w', updated in place, shares memory with the one for 'x'"):
        fn({"x": a[:16], "w": a[:16]})
    with pytest.raises(gc.InputError, match="shares memory"):
        fn({"x": a[8:24], "w": a[:16]})
    fn({"x": a[16:], "w": a[:16]})  # adjacent, apart
    np.testing.assert_array_equal(a[:16], np.arange(16, dtype=np.float32) * 2)


def test_a_parameter_updated_but_not_read_is_an_input_of_the_call():
    """p <- 2x, which does not read p: the call did not bind p's array (the graph's nodes do not reach it), and
    wrote the update through a null address (a segfault), with p given or not. p is a checked input now."""
    p = gc.param("p_unread", (37,), dtype="float64")
    x = gc.input("x_unread", (37,), "float64")
    fn = gc.compile([gc.sum(x)], updates={p: x * 2.0}, threads=1, cache=False)
    pv = np.zeros(37)
    (total,) = fn({"x_unread": np.ones(37), "p_unread": pv})
    assert total == 37.0 and np.all(pv == 2.0)
    with pytest.raises(gc.InputError, match="missing value.* for param 'p_unread'"):
        fn({"x_unread": np.ones(37)})


@pytest.mark.parametrize("form", ["flip_rows", "slice_reversed", "times_flip"])
def test_an_update_through_a_product_reading_its_parameter_flipped(form):
    """p <- x @ x + p[::-1]: the scheduler computed it aside and copied it back, but fusing both into the product's
    epilogue wrote p tile by tile while reading rows other tiles had written (rows 2-3 wrong, on any thread count).
    The epilogue now takes only what reads its own outputs at the point it writes."""
    n = 4
    p = gc.param(f"p_{form}", (n, n), dtype="float64")
    x = gc.input(f"x_{form}", (n, n), "float64")
    new = {"flip_rows": x @ x + gc.flip(p, axis=0), "slice_reversed": x @ x + p[::-1],
           "times_flip": (x @ x) * p[::-1]}[form]
    for threads in (1, 2, 3):
        vals = {p.name: np.arange(n * n, dtype=np.float64).reshape(n, n), x.name: np.eye(n) + 0.5}
        want = gc.evaluate(new, vals)
        gc.compile([gc.sum(x)], updates={p: new}, threads=threads, cache=False)(vals)
        np.testing.assert_array_equal(vals[p.name], want)


@pytest.mark.parametrize("bad", [99, -1])
def test_an_id_out_of_range_in_an_input_changes_nothing(bad):
    """Ids and labels read straight from an input are checked before native code runs: a bad one is the evaluator's
    error, with no parameter updated and no out= array written (the kernels' own check found it only after the
    step had run, with the bad id read as row 0 and its gradient added there)."""
    ids = gc.input("ids", ("T", "N"), "int64")
    lab = gc.input("lab", ("N",), "int32")
    e = gc.nn.embedding(ids, 9, 4, name="emb")
    logits = gc.sum(e, axis=0)[:, :3]
    loss = gc.nn.softmax_cross_entropy(logits, lab)
    (E,) = gc.nn.parameters(loss)
    step = gc.compile([loss, e], updates={E: E - 0.1 * gc.grad(loss, E)}, cache=False)
    E0 = rng.normal(size=(9, 4)).astype(np.float32)
    good_ids, good_lab = np.array([[0, 1, 2], [3, 4, 8]]), np.array([0, 2, 1], np.int32)
    for feed, match in (({"ids": np.array([[0, 1, 2], [3, 4, bad]]), "lab": good_lab}, rf"embedding 'emb': id {bad} "),
                        ({"ids": good_ids, "lab": np.array([0, bad, 1], np.int32)}, rf"label {bad} ")):
        table = E0.copy()
        out = [np.full((), -7.0, np.float32), np.full((2, 3, 4), -7.0, np.float32)]
        with pytest.raises(gc.InputError, match=match + r"is out of range .* at .*test_updates_in_place.py.*nothing "
                                                         r"was run"):
            step({**feed, "emb.E": table}, out=out)
        np.testing.assert_array_equal(table, E0)
        assert np.all(out[0] == -7.0) and np.all(out[1] == -7.0)
        with pytest.raises(gc.InputError, match=match):  # as the reference says it
            gc.evaluate(loss, {**feed, "emb.E": E0})
    # a bound call re-reads its arrays' contents at every run: a bad id written into them is found before the run
    ids_arr, table = good_ids.copy(), E0.copy()
    bound = step.bind({"ids": ids_arr, "lab": good_lab, "emb.E": table})
    bound()
    moved = table.copy()
    assert not np.array_equal(moved, E0)
    ids_arr[1, 2] = bad
    with pytest.raises(gc.InputError, match=rf"embedding 'emb': id {bad} is out of range"):
        bound()
    np.testing.assert_array_equal(table, moved)


# ------------------------------------------------------------------ a gather's gradient stays sparse


def _dense_loops(fn, shape) -> list[str]:
    """The kernels of fn that loop over a whole table of `shape` (a dense gradient's fill, read or write)."""
    dims = ",".join(map(str, shape))
    return [line for line in fn.kernels.splitlines() if f"over [{dims}]" in line]


SPARSE_FORMS = {
    "p - lr*g": lambda p, g, lr: p - lr * g,
    "p - g*lr": lambda p, g, lr: p - g * lr,
    "p + (-lr)*g": lambda p, g, lr: p + (-lr) * g,
    "-lr*g + p": lambda p, g, lr: (-lr) * g + p,
    "p - 0.5*g": lambda p, g, lr: p - 0.5 * g,
    "p + -g": lambda p, g, lr: p + -g,
    "p - lr*(0.5*g)": lambda p, g, lr: p - lr * (0.5 * g),
}


@pytest.mark.parametrize("form", sorted(SPARSE_FORMS))
@pytest.mark.parametrize("threads", [1, 2])
def test_an_sgd_step_on_an_embedding_touches_only_the_rows_used(form, threads):
    """`p - lr * grad` on a gathered table adds -lr * (the rows' cotangents) at the ids, in place: no kernel
    fills, reads or writes a dense vocab x dim gradient, duplicate ids accumulate, untouched rows keep their
    bits (a -0.0 included), and the result is the reference's."""
    vocab, dim = 301, 8
    ids = gc.input("ids", ("N", 3), "int64")
    lr = gc.input("lr", ())
    E = gc.param("E", (vocab, dim))
    W = gc.param("W", (dim, 4))
    loss = gc.sum(gc.tanh(gc.mean(gc.take(E, ids), axis=1) @ W) ** 2)
    gE, gW = gc.grad(loss, [E, W])
    new_E = SPARSE_FORMS[form](E, gE, lr)
    fn = gc.compile(loss, updates={E: new_E, W: W - lr * gW}, threads=threads, cache=False)
    assert not _dense_loops(fn, (vocab, dim)), fn.kernels
    assert "scatter-add" in fn.kernels
    table = rng.normal(size=(vocab, dim)).astype(np.float32)
    table[200] = -0.0  # not used
    id_values = np.array([[0, 5, 5], [7, 5, 0], [300, 1, 2], [9, 9, 9], [299, 0, 3]])
    values = {"ids": id_values, "lr": np.float32(0.3), "E": table,
              "W": rng.normal(size=(dim, 4)).astype(np.float32)}
    want = gc.evaluate(new_E, values)
    arrays = {k: np.array(v) for k, v in values.items()}
    fn(arrays)
    np.testing.assert_allclose(arrays["E"], want, rtol=2e-6, atol=1e-6)  # repeated ids: summed in another order
    untouched = np.setdiff1d(np.arange(vocab), id_values)
    np.testing.assert_array_equal(arrays["E"][untouched].view(np.int32), table[untouched].view(np.int32))
    assert np.all(np.signbit(arrays["E"][200]))
    assert not np.array_equal(arrays["E"][5], table[5])


def test_a_tied_table_read_again_after_its_rows_move_gets_the_old_values():
    """An embedding tied to the output layer (logits = h @ Eᵀ): its gradient is the scatter plus a dense
    product, and the product reads E, so the update cannot start before every read of the old E is done."""
    vocab, dim = 40, 6
    ids = gc.input("ids", ("N",), "int32")
    E = gc.param("E", (vocab, dim))
    h = gc.tanh(gc.take(E, ids))
    loss = gc.nn.softmax_cross_entropy(h @ E.T, ids)
    (gE,) = gc.grad(loss, [E])
    values = {"ids": np.array([3, 3, 17, 0, 39], np.int32), "E": rng.normal(size=(vocab, dim)).astype(np.float32)}
    got, new, ref, want = _run(loss, {E: E - 0.5 * gE}, values)
    np.testing.assert_allclose(new["E"], want["E"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0] if isinstance(got, list) else got, ref[0], rtol=1e-5)


def test_an_update_that_reads_the_table_through_its_rows_is_not_torn():
    """The scattered values themselves read the table (the gradient of sum(rows²) is 2·rows): written in place
    row by row, a duplicate id would read a row already moved. They are computed from the old table."""
    ids = gc.input("ids", ("N",), "int32")
    E = gc.param("E", (9, 4))
    loss = gc.sum(gc.take(E, ids) ** 2)
    values = {"ids": np.array([1, 4, 1, 1, 8], np.int32), "E": rng.normal(size=(9, 4)).astype(np.float32)}
    _, new, _, want = _run(loss, {E: E - 0.1 * gc.grad(loss, E)}, values)
    np.testing.assert_allclose(new["E"], want["E"], rtol=1e-6, atol=1e-7)


def test_the_trainer_steps_an_embedding_sparsely():
    """A model with gc.nn.embedding trained by graphc's own loop (plain SGD): the compiled epoch step updates the
    table's used rows only (no vocab x dim loop); Adam's moments are dense by nature (as PyTorch's)."""
    from graphc.nn.train import TrainConfig, Trainer

    vocab = 5003

    def model(tokens, n_outputs):
        e = gc.nn.embedding(tokens, vocab, 16, name="emb")
        return gc.nn.dense(gc.mean(e, axis=0), n_outputs, name="out")

    sgd = Trainer(model, "multiclass", 6, 2, TrainConfig(), log=lambda m: None)
    assert not _dense_loops(sgd.epoch_fn, (vocab, 16)), sgd.epoch_fn.kernels
    adam = Trainer(model, "multiclass", 6, 2, TrainConfig(optimizer="adam"), log=lambda m: None)
    assert _dense_loops(adam.epoch_fn, (vocab, 16))


def test_a_value_updated_in_place_must_be_an_array_that_can_receive_it():
    """A list or a Python number for a parameter the call updates would be copied into an array the update then
    went to, lost to the caller: refused, saying what to pass. Inputs not updated take lists as numbers, in
    their declared dtype (a list of floats for a float32 input was refused as 'a float64 array')."""
    w = gc.param("w", (2,))
    s = gc.param("s", ())
    x = gc.input("x", (2,))
    fn = gc.compile(gc.sum(w * x) + s, updates={w: w * 2.0, s: s + 1.0}, cache=False)
    for values, name in (({"w": [1.0, 2.0], "s": np.zeros((), np.float32), "x": np.ones(2, np.float32)}, "w"),
                         ({"w": np.ones(2, np.float32), "s": 0.5, "x": np.ones(2, np.float32)}, "s")):
        with pytest.raises(gc.InputError, match=rf"param '{name}' .* is updated in place, so its value must be a "
                                                r"numpy array .* pass np\.array\(value, dtype=np\.float32\)"):
            fn(values)
    wa, sa = np.ones(2, np.float32), np.zeros((), np.float32)
    got = fn({"w": wa, "s": sa, "x": [0.5, 1.5]})  # a list of Python floats for a float32 input
    assert got == np.float32(2.0) and np.array_equal(wa, [2.0, 2.0]) and sa == 1.0
    assert gc.evaluate(x * 2.0, {"x": [0.25, 1.0]}).dtype == np.float32


def test_a_compile_option_given_to_a_call_is_named_as_one():
    x = gc.input("x", (2,))
    fn = gc.compile(x * 2.0, cache=False)
    with pytest.raises(gc.GraphcError, match=r"check_finite is an option of gc.compile, not of a call"):
        fn({"x": np.ones(2, np.float32)}, check_finite=True)
    with pytest.raises(gc.GraphcError, match=r"training is an option of gc.compile"):
        fn.bind(x=np.ones(2, np.float32), training=True)


def test_a_compiled_function_is_not_pickled_but_says_what_to_do():
    import copy
    import pickle

    x = gc.input("x", (2,))
    fn = gc.compile(x * 2.0, cache=False)
    with pytest.raises(gc.GraphcError, match=r"a compiled function cannot be pickled .* gc.compile it in the worker"):
        pickle.dumps(fn)
    np.testing.assert_array_equal(copy.copy(fn)({"x": np.ones(2, np.float32)}), [2.0, 2.0])


def test_a_call_from_inside_a_call_on_the_same_thread_is_an_error_not_a_deadlock():
    """A signal handler (or a callback run during the call) calling the function while the same thread is inside
    it waited on its own lock forever; it is a GraphcError, and the outer call is unharmed."""
    import signal

    x = gc.input("x", ("N", 64))
    w = gc.param("w", (64, 64))
    fn = gc.compile(gc.tanh(x @ w), cache=False)
    X, W = np.ones((512, 64), np.float32), np.full((64, 64), 1 / 64, np.float32)
    seen = []

    def handler(sig, frame):
        try:
            fn(x=X[:2], w=W)
            seen.append("ran")
        except gc.GraphcError as e:
            seen.append(str(e))

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        for _ in range(3000):
            got = fn(x=X, w=W)
            if any(s != "ran" for s in seen):
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    np.testing.assert_allclose(got, np.tanh(np.ones((512, 64))), rtol=1e-6)
    errors = [s for s in seen if s != "ran"]
    assert errors, "the handler never ran inside a call (timing): nothing tested"
    assert "called again from inside one of its own calls on the same thread" in errors[0]


def test_working_memory_follows_the_call_not_the_maxima_of_every_dim_seen():
    """The arena grew to each dim's largest value so far: after (A, B) = (2**21, 2), the call (2, 2**21) planned
    for (2**21, 2**21), 16 TiB, and failed with a MemoryError naming the wrong size. Both run; a size beyond any
    allocation is graphc's MemoryError naming the dims (numpy's own ValueError before)."""
    a = gc.input("a", ("A", 1))
    b = gc.input("b", (1, "B"))
    fn = gc.compile(gc.sum(gc.exp(a * b), axis=1), threads=1, cache=False)
    for na, nb in ((2**21, 2), (2, 2**21), (4, 4)):
        got = fn({"a": np.zeros((na, 1), np.float32), "b": np.zeros((1, nb), np.float32)})
        np.testing.assert_array_equal(got, np.full(na, nb, np.float32))
    c = gc.input("c", ("B", 1))
    huge = gc.compile((a * b) @ c, threads=1, cache=False)  # an (A, B) temporary, a small output
    with pytest.raises(MemoryError, match=r"working memory at A=2097152, B=2097152 .* GiB"):
        huge({"a": np.zeros((2**21, 1), np.float32), "b": np.zeros((1, 2**21), np.float32),
              "c": np.zeros((2**21, 1), np.float32)})
