"""The native backend against the reference evaluator: every op, random graphs (forward and gradient) at
batch sizes 1, 7, 64 and 1000, odd feature sizes, thread counts, generic x86-64 targets, bad input."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import make_cases, mlp_like
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc

CASES32 = make_cases("float32")


def _close(got, ref, rtol, atol):
    got, ref = np.asarray(got), np.asarray(ref)
    if got.dtype.kind == "f" and ref.dtype.kind == "f":  # the reference widens to float64 if any value is
        ref = ref.astype(got.dtype)
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, got.dtype, ref.shape, ref.dtype)
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, ref)
    else:
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("name", sorted(CASES32))
@settings(max_examples=5)
@given(data=st.data())
def test_every_op_compiles_and_matches_the_reference(name, data):
    out, values, wrt = data.draw(CASES32[name])
    training = "rng_key" in values
    outs = [out]
    if out.dtype in ("float32", "float64") and wrt and name != "stop_gradient":
        r = np.random.default_rng(1).normal(size=gc.evaluate(out, values, training=training).shape)
        outs += gc.grad(gc.sum(out * gc.constant(r, out.dtype)), wrt)
    fn = gc.compile(outs, training=training, cache=False)
    got = fn(values, threads=1)
    ref = gc.evaluate(outs, values, training=training)
    for g, r_ in zip(got, ref, strict=True):
        _close(g, r_, rtol=2e-5, atol=2e-6)
    for g, t in zip(got, fn(values, threads=3), strict=True):  # the thread team: bitwise the same
        np.testing.assert_array_equal(g, t)


@settings(max_examples=25)
@given(data=st.data())
def test_random_graphs_forward_and_gradient_match_at_several_batch_sizes(data):
    batch = data.draw(st.sampled_from([1, 7, 64, 1000]))
    loss, params, values = data.draw(mlp_like("float32", batch=batch))
    outs = [loss, *gc.grad(loss, params)]
    fn = gc.compile(outs, cache=False)
    got = fn(values, threads=1)
    ref = gc.evaluate(outs, values)
    for g, r in zip(got, ref, strict=True):
        _close(g, r, rtol=2e-4, atol=2e-5)
    for threads in (2, 3):  # the thread team, with every barrier of a random program: bitwise the same
        for g, t in zip(got, fn(values, threads=threads), strict=True):
            np.testing.assert_array_equal(g, t)


def _mlp(features: int, hidden: int, classes: int, tag: str):
    x = gc.input("x", ("N", features))
    labels = gc.input("labels", ("N",), "int32")
    logits = gc.nn.mlp(x, [hidden, classes], activation="tanh", name=f"odd{tag}")
    loss = gc.nn.softmax_cross_entropy(logits, labels)
    params = gc.nn.parameters(loss)
    return x, labels, loss, params


@pytest.mark.parametrize("features, hidden, classes", [(1, 3, 2), (3, 17, 3), (17, 33, 5), (33, 255, 7),
                                                      (255, 1, 3)])
def test_odd_feature_sizes_and_batch_sizes(features, hidden, classes):
    x, labels, loss, params = _mlp(features, hidden, classes, f"{features}_{hidden}")
    outs = [loss, *gc.grad(loss, params)]
    fn = gc.compile(outs, cache=False)
    rng = np.random.default_rng(features)
    values = gc.nn.init_params(params, seed=3)
    for n in (1, 7, 64, 1000):
        values.update(x=rng.normal(size=(n, features)).astype(np.float32),
                      labels=rng.integers(0, classes, n).astype(np.int32))
        for g, r in zip(fn(values), gc.evaluate(outs, values), strict=True):
            _close(g, r, rtol=2e-4, atol=2e-5)


def _train_step(lr=0.1):
    x = gc.input("x", ("N", 64))
    labels = gc.input("labels", ("N",), "int32")
    logits = gc.nn.mlp(x, [48, 10], name="step")
    loss = gc.nn.softmax_cross_entropy(logits, labels)
    params = gc.nn.parameters(loss)
    new = [p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)]
    return loss, params, new


def _step_values(n=200):
    rng = np.random.default_rng(0)
    loss, params, new = _train_step()
    values = gc.nn.init_params(params, seed=0)
    values.update(x=rng.normal(size=(n, 64)).astype(np.float32), labels=rng.integers(0, 10, n).astype(np.int32))
    return loss, params, new, values


def test_results_are_bitwise_independent_of_thread_count():
    loss, params, new, values = _step_values()
    fn = gc.compile([loss, *new], cache=False)
    one = fn(values, threads=1)
    for t in (2, 3):
        for a, b in zip(one, fn(values, threads=t), strict=True):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(one, gc.evaluate([loss, *new], values), strict=True):
        _close(a, b, rtol=1e-4, atol=1e-5)


def test_scalar_inputs_take_python_numbers_weakly_and_numpy_scalars_exactly():
    """A Python number for a 0-d input adopts its dtype (as in JAX); a numpy scalar must have it; a float for
    an int input or a bool is refused. The same with check_finite (the checked path)."""
    lr = gc.input("lr", ())
    k = gc.input("k", (), "int32")
    x = gc.input("x", ("N",))
    a = np.ones(3, np.float32)
    for check in (False, True):
        fn = gc.compile(x * lr + gc.cast(k, "float32"), check_finite=check)
        for v_lr, v_k in ((0.5, 1), (np.float32(0.5), np.int32(1)), (np.float32(0.5), 1)):
            np.testing.assert_array_equal(fn({"x": a, "lr": v_lr, "k": v_k}), np.full(3, 1.5, np.float32))
        for bad in ({"lr": np.float64(0.5), "k": 1}, {"lr": True, "k": 1}, {"lr": 0.5, "k": 0.5},
                    {"lr": 0.5, "k": np.int64(1)}):
            with pytest.raises(gc.DTypeError):
                fn({"x": a, **bad})
        # one piece of advice for any wrong array dtype: the declared one (an int array was told "pass float32
        # (or float64 ...)", and float64 was then refused)
        for arr in (np.ones(3, np.int32), np.ones(3, np.float64)):
            with pytest.raises(gc.DTypeError, match=r"compiled function takes exactly its declared dtype float32 "
                                                    r"\(pass .astype\(np.float32\)\)"):
                fn({"x": arr, "lr": 0.5, "k": 1})
        # a Python int outside the input's range: evaluate's InputError (it was numpy's bare OverflowError)
        for big in (2**40, -2**31 - 1):
            want = rf"the value for input 'k' \(i32\[\].*holds {big} at index \(\), outside int32's range"
            for call in (fn, fn.bind):
                with pytest.raises(gc.InputError, match="compiled function .*" + want):
                    call({"x": a, "lr": 0.5, "k": big})
            with pytest.raises(gc.InputError, match="evaluate .*" + want):
                gc.evaluate(x * lr + gc.cast(k, "float32"), {"x": a, "lr": 0.5, "k": big})


class _Sub(np.ndarray):
    """An ndarray subclass (its instances extend the array object: the data pointer stays where it was)."""


def test_data_address_reads_every_kind_of_array():
    """The per-call address read (from the array object, where that layout was verified at import) agrees with
    numpy's own for views, offsets, subclasses, read-only and empty arrays."""
    from graphc.runtime.jit import _DATA_OFFSET, data_address

    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    ro = base.copy()
    ro.flags.writeable = False
    cases = [base, base[2:], base[:, 3:], base[1::2, 5:], base.T, ro, np.empty(0, np.float64), np.float32(2) * base,
             base.view(np.int32), base[1:].view(_Sub), np.frombuffer(bytearray(64), np.float32)[3:],
             np.array(1.5, np.float32)]
    for a in cases:
        assert data_address(a) == a.__array_interface__["data"][0], a
    if sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)():
        assert _DATA_OFFSET is not None  # a standard CPython: the fast read is in use


def test_out_arrays_are_written_in_place_and_checked():
    """fn(values, out=...) writes into the caller's arrays (as numpy's out=), for every output or some."""
    x = gc.input("x", ("N", 3))
    y = gc.sum(gc.exp(x), axis=1)
    fn = gc.compile([y, x * 2.0, y], cache=False)
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    ref = fn({"x": a})
    o = [np.empty(5, np.float32), np.empty((5, 3), np.float32), np.empty(5, np.float32)]
    got = fn({"x": a}, out=o)
    assert all(g is b for g, b in zip(got, o, strict=True))  # the same arrays back, the repeated one too
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, r)
    some = fn({"x": a}, out=[None, o[1], None])
    assert some[1] is o[1] and some[0] is not o[0]
    single = gc.compile(gc.exp(x), cache=False)
    buf = np.empty((5, 3), np.float32)
    assert single({"x": a}, out=buf) is buf
    np.testing.assert_array_equal(buf, np.asarray(single({"x": a})))
    for bad, words in ((np.empty((5, 4), np.float32), "float32\\[5, 3\\]"), (np.empty((5, 3)), "float64"),
                       (np.empty((3, 5), np.float32).T, "C-contiguous"), (a, "shares memory with an input"),
                       ([buf, buf], "expected an array|a list of 1")):
        with pytest.raises(gc.InputError, match=words):
            single({"x": a}, out=bad)
    with pytest.raises(gc.InputError, match="shares memory with out\\[0\\]"):
        fn({"x": a}, out=[o[0], None, o[0]])
    # overlap is decided on the bytes: an output right after the input is fine, one element into it is not
    mem = np.zeros(31, np.float32)
    mem[:15] = a.ravel()
    inp = mem[:15].reshape(5, 3)
    np.testing.assert_array_equal(single({"x": inp}, out=mem[15:30].reshape(5, 3)), single({"x": a}))
    with pytest.raises(gc.InputError, match="shares memory with an input"):
        single({"x": inp}, out=mem[14:29].reshape(5, 3))
    with pytest.raises(gc.InputError, match="shares memory with out\\[0\\]"):
        fn({"x": a}, out=[mem[:5], None, mem[4:9]])
    fn({"x": a}, out=[mem[:5], None, mem[5:10]])
    np.testing.assert_array_equal(mem[:5], mem[5:10])


def test_large_outputs_the_caller_dropped_are_recycled():
    """A large output array of the last call is reused by the next one only where nothing refers to it any more
    (fresh pages fault in on the first write; see `_new_output`): never while the caller holds it, a view of
    it, a weak reference to it, or passes it back as an input; small outputs are always new arrays."""
    import weakref

    x = gc.input("x", ("N", 300))
    fn = gc.compile([x * 2.0, gc.sum(x)], cache=False, threads=2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 300)).astype(np.float32)
    import tracemalloc

    y, s = fn({"x": a})
    first = id(y)
    del y
    b = a + 1
    tracemalloc.start()  # numpy reports its data allocations to tracemalloc
    try:
        before = tracemalloc.get_traced_memory()[0]
        y, s2 = fn({"x": b})
        grew = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert id(y) == first and grew < y.nbytes // 2  # dropped: recycled (no new 120 kB), and rewritten
    np.testing.assert_array_equal(y, b * 2.0)
    assert s2 is not s  # a 0-d output is not worth recycling
    view = y[:5]
    del y
    y2, _ = fn({"x": a})
    assert not np.shares_memory(view, y2)
    np.testing.assert_array_equal(view, (a[:5] + 1) * 2.0)  # the caller's view still holds the old values
    held = y2
    y3, _ = fn({"x": a - 1})
    assert y3 is not held and not np.shares_memory(y3, held)
    np.testing.assert_array_equal(held, a * 2.0)
    del held, y2
    w, addr = weakref.ref(y3), y3.ctypes.data
    del y3
    y4, _ = fn({"x": a})  # weakly referenced: a new array (made before the old one is let go)
    assert y4.ctypes.data != addr and w() is None
    del y4
    x2 = gc.input("x2", ("N", 300))
    g = gc.compile(x2 * 2.0, cache=False)
    out1 = g({"x2": a})
    again = g({"x2": out1})  # its own last output as the input: a new array, never written over the input
    assert again is not out1
    np.testing.assert_array_equal(again, a * 4.0)


def test_a_bound_call_is_checked_once_and_runs_on_the_current_contents():
    """fn.bind(values, out=...) checks the arguments as a call does (the same errors) and returns a call that
    runs on the same arrays, reading what they hold at each run; updates write in place as in a call."""
    x = gc.input("x", ("N", 4))
    p = gc.param("p", (4,))
    fn = gc.compile([gc.sum(x * p, axis=1)], updates={p: p + 1.0}, cache=False)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    pv = np.zeros(4, np.float32)
    out = np.empty(3, np.float32)
    run = fn.bind({"x": a, "p": pv}, out=[out])
    for _ in range(3):
        a += 1.0
        before = pv.copy()
        got = run()
        assert got[0] is out
        np.testing.assert_allclose(out, (a * before).sum(1))
        np.testing.assert_array_equal(pv, before + 1.0)
    with pytest.raises(gc.DTypeError, match="bound at .*float32"):
        fn.bind({"x": a.astype(np.float64), "p": pv})
    with pytest.raises(gc.InputError, match="shares memory with an input"):
        fn.bind({"x": a, "p": pv}, out=[a.reshape(-1)[:3]])
    with pytest.raises(ValueError):
        a.resize((4, 4))  # the bound call holds the array: its shape cannot change under it


def test_bad_thread_counts_are_refused_before_native_code():
    """threads= at compile and at call time: an int from 1 to 256 (the team's limit) or None; a float, a bool,
    0, a negative count or 1000 is an InputError naming the value (a float used to reach ctypes, a negative
    count ran silently on one thread, 1000 started 255 workers)."""
    x = gc.input("x", ("N",))
    fn = gc.compile(gc.exp(x), cache=False)
    a = np.ones(4, np.float32)
    for bad in (0, -1, 1.5, True, 257, 1000, "2"):
        with pytest.raises(gc.InputError, match="threads must be an int from 1 to 256"):
            fn({"x": a}, threads=bad)
        with pytest.raises(gc.InputError, match="threads must be an int from 1 to 256"):
            gc.compile(gc.exp(x), threads=bad, cache=False)
    np.testing.assert_array_equal(fn({"x": a}, threads=np.int64(2)), fn({"x": a}, threads=1))
    assert fn.last_threads == 1


def test_default_thread_count_shrinks_for_small_calls():
    """threads=None: a call too small to pay for starting a thread runs on one; a big one uses them all. An
    explicit count is obeyed whatever the size."""
    x = gc.input("x", ("N",))
    fn = gc.compile(gc.exp(x) * 2.0, threads=None)
    fn.threads = 3  # as on a 3-CPU machine
    small, big = np.ones(16, np.float32), np.ones(1 << 22, np.float32)
    fn({"x": small})
    assert fn.last_threads == 1
    fn({"x": big})
    assert fn.last_threads == 3  # ~2 ms of work: worth two extra threads
    fn({"x": small}, threads=2)
    assert fn.last_threads == 2
    fixed = gc.compile(gc.exp(x) * 2.0, threads=2)
    fixed({"x": small})
    assert fixed.last_threads == 2


@pytest.mark.parametrize("level", ["x86-64", "x86-64-v3"])
def test_generic_targets(level):
    loss, params, new, values = _step_values(37)
    fn = gc.compile([loss, *new], target=level, cache=False)
    assert fn.target.name == level
    for a, b in zip(fn(values), gc.evaluate([loss, *new], values), strict=True):
        _close(a, b, rtol=1e-4, atol=1e-5)


def test_inspection():
    loss, params, new, values = _step_values(8)
    fn = gc.compile([loss, *new], cache=False)
    assert [name for name, _ in fn.stages][0] == "input" and len(fn.stages) >= 4
    assert "after simplify" in fn.stages_text()
    assert "gemm" in fn.kernels and "loop over" in fn.kernels
    assert "define" in fn.llvm_ir and "graphc_run" in fn.llvm_ir
    asm = fn.asm
    assert "vfmadd" in asm or "fmadd" in asm or "mulps" in asm
    plan = fn.memory_plan
    assert plan.arena_bytes > 0 and plan.arena_bytes <= plan.unshared_bytes
    fn(values)
    assert "arena" in str(fn.memory_plan)
    labels = [label for label, _, _ in fn.memory_plan.placement()]
    assert labels and all(isinstance(label, str) for label in labels)


def test_compile_cache_across_processes(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, graphc as gc, sys
        x = gc.input("x", ("N", 5))
        w = gc.param("w", (5, 3))
        y = gc.sum(gc.tanh(x @ w))
        fn = gc.compile([y, gc.grad(y, w)])
        out = fn({"x": np.ones((4, 5), np.float32), "w": np.full((5, 3), 0.1, np.float32)})
        print(fn.from_cache, float(out[0]))
    """)
    # no C compiler: entries are MCJIT objects (tests/runtime/test_cache_so.py: shared objects)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path), CC="/nonexistent/cc")

    def run():
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        cached, value = p.stdout.split()
        return cached == "True", float(value)

    first = run()
    second = run()
    assert first[0] is False and second[0] is True and first[1] == second[1]
    entries = list(tmp_path.glob("*.o"))
    assert len(entries) == 1
    # a corrupt entry is detected, removed and rebuilt, never loaded
    data = bytearray(entries[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    assert run() == (False, first[1])
    # a truncated one too
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    assert run() == (False, first[1])
    assert run()[0] is True


BAD_INPUT = textwrap.dedent("""
    import numpy as np, graphc as gc, sys
    x = gc.input("x", ("N", 4))
    labels = gc.input("labels", ("N",), "int32")
    w = gc.param("w", (4, 3))
    loss = gc.nn.softmax_cross_entropy(x @ w, labels)
    fn = gc.compile([loss, gc.grad(loss, w)], check_finite=True, cache=False)
    good = {"x": np.ones((5, 4), np.float32), "labels": np.zeros(5, np.int32), "w": np.ones((4, 3), np.float32)}
    case = sys.argv[1]
    v = dict(good)
    if case == "shape":
        v["x"] = np.ones((5, 7), np.float32)
    elif case == "dtype":
        v["x"] = np.ones((5, 4))
    elif case == "layout":
        v["x"] = np.ones((4, 5), np.float32).T
    elif case == "missing":
        del v["labels"]
    elif case == "batch":
        v["labels"] = np.zeros(6, np.int32)
    elif case == "nonfinite":
        v["x"] = np.ones((5, 4), np.float32); v["x"][2, 1] = np.nan
    elif case == "unaligned":
        raw = np.zeros(5 * 4 * 4 + 1, np.uint8)
        v["x"] = np.frombuffer(raw.data, dtype=np.float32, count=20, offset=1).reshape(5, 4)
    try:
        fn(v)
        print("NO ERROR")
    except gc.GraphcError as e:
        print(type(e).__name__, "|", e)
    out = fn(good)  # the process is alive and still computes
    print("alive", float(out[0]) > 0)
""")


@pytest.mark.parametrize("case, kind, words", [
    ("shape", "ShapeError", "[N,4]"),
    ("dtype", "DTypeError", "float64"),
    ("layout", "InputError", "non-contiguous"),
    ("missing", "InputError", "labels"),
    ("batch", "ShapeError", "dim N"),
    ("nonfinite", "NumericalError", "(2, 1)"),
    ("unaligned", "InputError", "aligned"),
])
def test_bad_input_is_a_clean_error_in_a_live_process(case, kind, words):
    p = subprocess.run([sys.executable, "-c", BAD_INPUT, case], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.strip().splitlines()
    assert first.startswith(kind), first
    assert words in first
    assert second == "alive True"


def test_products_followed_by_a_dtype_change():
    """A cast or comparison right after a matrix product stays a loop of its own (the product's epilogue writes
    the product's dtype): these failed to compile ('GEMM epilogue must return a <16 x float>')."""
    x = gc.input("x", ("N", 5))
    w = gc.input("w", (5, 3))
    p = x @ w
    outs = [gc.cast(p, "int32"), p > 0.5, gc.relu(p), gc.cast(p, "float64")]
    fn = gc.compile(outs, cache=False)
    rng = np.random.default_rng(4)
    v = {"x": rng.normal(size=(7, 5)).astype(np.float32), "w": rng.normal(size=(5, 3)).astype(np.float32)}
    got, ref = fn(v), gc.evaluate(outs[:3], v)
    assert [a.dtype for a in got] == [np.int32, np.bool_, np.float32, np.float64]
    prod = (v["x"] @ v["w"]).astype(np.float32)
    assert np.array_equal(got[2], ref[2])
    near = np.abs(prod - np.round(prod)) < 1e-4  # truncation of values within rounding of an integer may differ
    half = np.abs(prod - 0.5) < 1e-4
    assert np.array_equal(got[0][~near], ref[0][~near]) and np.array_equal(got[1][~half], ref[1][~half])
    np.testing.assert_allclose(got[3], prod, rtol=1e-6, atol=1e-6)


# what may follow a matrix product: (name, fn(t) -> tensor or None where it does not apply to t)
_AFTER = [
    ("relu", gc.relu), ("tanh", gc.tanh), ("sigmoid", gc.sigmoid), ("abs", gc.abs),
    ("square", lambda t: t * t), ("gauss", lambda t: gc.exp(-t * t)),
    ("where", lambda t: gc.where(t > 0, t, t * 0.5)), ("mask", lambda t: gc.cast(t > 0, "float32") * t),
    ("sum0", lambda t: gc.sum(t, axis=0) if t.ndim else None),
    ("sum1", lambda t: gc.sum(t, axis=-1) if t.ndim else None),
    ("max1", lambda t: gc.max(t, axis=-1) if t.ndim else None),
    ("mean0", lambda t: gc.mean(t, axis=0) if t.ndim else None),
    ("softmax", lambda t: gc.softmax(t, axis=-1) if t.ndim else None),
    ("logsumexp", lambda t: gc.logsumexp(t, axis=-1) if t.ndim else None),
    ("transpose", lambda t: gc.transpose(t) if t.ndim == 2 else None),
    ("gram", lambda t: gc.transpose(t) @ t if t.ndim == 2 else None),
    ("to_int", lambda t: gc.cast(t * 3.0, "int32")), ("compare", lambda t: t > 0.1),
    ("to_f64", lambda t: gc.cast(t, "float64")),
]


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_random_chains_after_products_match_the_reference(data):
    """Chains of ops after x @ W (+ b), dtype changes included, several outputs at once, 1-3 threads: the
    compiled results equal the reference's (a cast after a product once failed to compile)."""
    n, f, h = (data.draw(st.sampled_from(v)) for v in ((1, 7, 17), (1, 3, 17, 33), (1, 3, 17)))
    x, w, b = gc.input("x", ("N", f)), gc.input("w", (f, h)), gc.input("b", (h,))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    v = {"x": rng.normal(size=(n, f)).astype(np.float32), "w": rng.normal(size=(f, h)).astype(np.float32),
         "b": rng.normal(size=h).astype(np.float32)}
    pool, outs = [x @ w, x @ w + b], []
    for _ in range(data.draw(st.integers(1, 4))):
        name, fn = data.draw(st.sampled_from(_AFTER))
        t = fn(data.draw(st.sampled_from(pool)))
        if t is None:
            continue
        outs.append(t)
        if t.dtype == "float32":
            pool.append(t)
    outs = outs or pool[-1:]
    got = gc.compile(outs, cache=False, threads=data.draw(st.integers(1, 3)))(v)
    ref = gc.evaluate(outs, v)  # (in float64 throughout when the graph holds a float64 cast)
    for o, g, r in zip(outs, got, ref, strict=True):
        assert g.shape == r.shape, o
        if o.dtype in ("float32", "float64"):
            np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4, err_msg=repr(o))
        else:  # integers and bools of float values: equal except within rounding of a threshold
            assert g.dtype == r.dtype and np.mean(g != r) <= 0.05, o


@pytest.mark.parametrize("threads", [1, 2])
def test_denormals_are_flushed_inside_the_program_and_the_callers_environment_is_kept(threads):
    """Compiled code runs with x86 FTZ and DAZ (as XLA does): a denormal result is 0 and a denormal operand reads
    as 0, on every thread; the caller's floating-point environment is restored (numpy still makes denormals)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("FTZ/DAZ is set on x86-64 only; other targets keep IEEE denormals")
    x = gc.input("x", ("N",))
    fn = gc.compile([x * 0.5, x * 1e10], threads=threads)
    tiny = np.float32(1e-38)  # normal; half of it is denormal
    X = np.full(100_000, tiny, np.float32)
    X[1::2] = 1e-39  # denormal input: DAZ reads it as 0
    half, big = fn({"x": X})
    assert np.all(half == 0)  # IEEE: 5e-39 and 5e-40
    assert np.all(big[1::2] == 0) and np.allclose(big[::2], 1e-28, rtol=1e-6)  # IEEE: 1e-29 for the odd ones
    assert np.float32(tiny) * np.float32(0.5) != 0  # the caller's MXCSR is back to IEEE
    ref = gc.evaluate(x * 0.5, {"x": X})
    assert np.all(ref[::2] > 0)  # the reference keeps them: the two agree to 1e-38 absolute


def test_a_gradient_seeded_with_broadcast_ones_does_not_copy_the_cotangent():
    """d/dx sum(f(x) * g) seeds the backward with ones broadcast to f's shape: x * ones folds away instead of
    becoming a kernel that copies g (a pass over a 25 MB cotangent per conv layer)."""
    x = gc.input("x", ("N", 6, 6, 2))
    w = gc.input("w", (3, 3, 2, 2))
    g = gc.input("g", ("N", 6, 6, 2))
    y = gc.conv2d(x, w, padding="same")
    fn = gc.compile([y, *gc.grad(gc.sum(y * g), [x, w])])
    kinds = [k.name.split("_", 1)[1] for k in fn.program.kernels]
    assert "mul" not in kinds, kinds
    rng = np.random.default_rng(0)
    vals = {"x": rng.normal(size=(2, 6, 6, 2)).astype(np.float32), "w": rng.normal(size=(3, 3, 2, 2)).astype(
        np.float32), "g": rng.normal(size=(2, 6, 6, 2)).astype(np.float32)}
    for got, ref in zip(fn(vals), gc.evaluate([y, *gc.grad(gc.sum(y * g), [x, w])], vals), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_elementwise_loops_over_one_domain_merge_unless_one_reads_the_other_elsewhere():
    from graphc.codegen.kernels import LoopKernel

    x = gc.input("x", ("N", 8))
    y = gc.input("y", (8, 8))
    a = gc.exp(x)
    b = a * 2.0 + gc.tanh(x)  # reads a at its own point: one loop stores a and b
    c = gc.exp(y)
    d = gc.transpose(c) + 1.0  # reads c at another point (another thread's): a loop of its own
    outs = [a, b, c, d]
    rng = np.random.default_rng(0)
    v = {"x": rng.normal(size=(5, 8)).astype(np.float32), "y": rng.normal(size=(8, 8)).astype(np.float32)}
    f = gc.compile(outs)
    loops = [k for k in f.program.kernels if isinstance(k, LoopKernel)]
    by_store = {s.buf.index: k for k in loops for s in k.stores}
    out = f.program.outputs
    assert by_store[out[0].index] is by_store[out[1].index]
    assert by_store[out[2].index] is not by_store[out[3].index]
    want = gc.evaluate(outs, {k: a.astype(np.float64) for k, a in v.items()})
    runs = [f(v, threads=n) for n in (1, 2, 3)]
    for g, w in zip(runs[0], want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    for r in runs[1:]:
        for p, q in zip(runs[0], r, strict=True):
            np.testing.assert_array_equal(p, q)


def test_a_call_with_an_empty_dim_gives_what_the_reference_gives():
    """No rows (N = 0) or no steps (T = 0): outputs of their shapes, sums over nothing 0, means NaN, a scan's
    final carry its initial one, updates written in place, the same through out= and a bound call; a max over
    nothing is a GraphcError as in numpy."""
    xs = gc.input("xs", ("T", "N", 3))
    w = gc.param("w_empty", (3, 3))
    hT, ys = gc.scan(lambda h, x: (gc.tanh(x @ w + h), gc.sum(h, axis=1)), gc.zeros(("N", 3)) + 0.5, xs)
    loss = gc.mean(gc.sum(hT, axis=1)) + gc.sum(ys)
    outs = [loss, hT, ys, *gc.grad(loss, [w])]
    fn = gc.compile(outs)
    upd = gc.compile([loss], updates={w: w - 0.1 * gc.grad(loss, [w])[0]})
    wv = np.full((3, 3), 0.2, np.float32)
    for T, N in ((0, 2), (3, 0), (0, 0)):
        vals = {"w_empty": wv, "xs": np.ones((T, N, 3), np.float32)}
        want = gc.evaluate(outs, vals)
        got = fn(vals)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        if T == 0 and N:
            np.testing.assert_array_equal(got[1], np.full((N, 3), 0.5, np.float32))
        assert got[2].shape == (T, N) and (np.isnan(got[0]) == (N == 0))
        given = [np.empty(a.shape, a.dtype) for a in got]
        assert fn(vals, out=given)[3] is given[3]
        np.testing.assert_array_equal(given[3], want[3])
        np.testing.assert_array_equal(fn.bind(vals)()[3], want[3])
        state = wv.copy()
        upd({"w_empty": state, "xs": vals["xs"]})
        np.testing.assert_array_equal(state, wv - np.float32(0.1) * want[3])
    x = gc.input("x", ("N", 3))
    with pytest.raises(gc.GraphcError, match="zero-size array to reduction operation maximum"):
        gc.compile(gc.max(x, axis=0))({"x": np.zeros((0, 3), np.float32)})
    np.testing.assert_array_equal(gc.compile(gc.sum(x, axis=0))({"x": np.zeros((0, 3), np.float32)}), np.zeros(3))


def test_outputs_given_as_a_dict_come_back_as_a_dict():
    """evaluate and compile take {key: tensor} (gc.grad returns one for a dict of parameters) and return
    {key: array} with the same keys in the same order; out= may be a dict of the keys it fills."""
    x = gc.input("x", ("N", 3))
    w, b = gc.param("w_d", (3, 2)), gc.param("b_d", (2,))
    loss = gc.sum(gc.tanh(x @ w + b))
    outs = {"loss": loss, **gc.grad(loss, {"dw": w, "db": b})}
    vals = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "w_d": np.ones((3, 2), np.float32),
            "b_d": np.zeros(2, np.float32)}
    want = gc.evaluate(outs, vals)
    assert list(want) == ["loss", "dw", "db"]
    np.testing.assert_array_equal(want["dw"], gc.evaluate(gc.grad(loss, w), vals))
    fn = gc.compile(outs)
    got = fn(vals)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    given = {"db": np.empty(2, np.float32)}
    assert fn(vals, out=given)["db"] is given["db"]
    assert list(fn.bind(vals)()) == ["loss", "dw", "db"]
    with pytest.raises(gc.InputError, match="out: 'grad' is not a key of the outputs"):
        fn(vals, out={"grad": np.empty(2, np.float32)})


def test_values_that_are_not_a_dict_are_an_input_error():
    x = gc.input("x", ("N", 3))
    out = gc.sum(x)
    fn = gc.compile(out)
    for bad in ([1, 2], (np.ones((2, 3), np.float32),), np.ones((2, 3), np.float32), "x"):
        for call in (fn, fn.bind, lambda v: gc.evaluate(out, v)):
            with pytest.raises(gc.InputError, match=r"values must be a dict of name \(or tensor\) -> array, got"):
                call(bad)


@pytest.mark.parametrize("dtype, shape, axes", [("float32", (5, 9, 48), (0, 1)), ("float32", (37, 40), (0,)),
                                                 ("float64", (6, 3, 20), (0,)), ("float32", (11, 3, 2, 16), (0, 2))])
def test_a_short_kept_axis_of_an_outer_reduction_sums_each_output_in_order(dtype, shape, axes):
    """A reduction over outer axes whose kept inner axis is shorter than a block of vectors (a depthwise filter
    gradient's channels) sums all its whole vectors side by side in one pass, then the tail vector masked: each
    output still summed in order over the reduced axes, bitwise, on any thread count."""
    x = gc.input("x", ("N", *shape[1:]), dtype)
    y = gc.sum(x * 2.0, axis=axes)
    v = {"x": np.random.default_rng(3).standard_normal(shape).astype(dtype)}
    twice = np.moveaxis(v["x"] * np.asarray(2.0, dtype), axes, range(len(axes)))
    want = np.zeros(twice.shape[len(axes):], dtype)
    for idx in np.ndindex(*twice.shape[:len(axes)]):  # each output summed in order over the reduced axes
        want += twice[idx]
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(gc.compile(y, threads=threads, cache=False)(v), want)


@pytest.mark.parametrize("op", ["cumsum", "sum"])
def test_sums_of_products_are_bitwise_the_same_on_any_thread_count(op):
    """acc + x*x was fused into one FMA in some loops and not in others (LLVM's vectorized body or its remainder,
    chosen by the rows a thread gets): cumsum(x * x) on 9 rows differed on 3 threads. Sums add rounded values."""
    x = gc.input("x", ("N", 5), "float64")
    y = gc.cumsum(x * x, axis=1) if op == "cumsum" else gc.sum(x * x, axis=1)
    fns = [gc.compile(y, threads=threads, cache=False) for threads in (1, 2, 3)]
    for n in (9, 13, 31):
        v = {"x": np.random.default_rng(n).standard_normal((n, 5))}
        want = fns[0](v)
        if op == "cumsum":  # sequential, as numpy's (a row sum adds in lanes: its own order)
            np.testing.assert_array_equal(want, gc.evaluate(y, v))
        for fn in fns[1:]:
            np.testing.assert_array_equal(fn(v), want)


@pytest.mark.parametrize("width", [3, 6, 10, 13])
def test_narrow_rows_stored_whole_keep_their_neighbours(width):
    """Rows narrower than a vector (a GEMM epilogue's tile at column 0 with N < NR, an elementwise loop's row
    tails): where masked stores are slow they are stored whole, the lanes past the row written back as read.
    A training step with an in-place update of a (20, width) weight in the product's epilogue and elementwise
    loops over (N, width), at 1-3 threads and batch sizes that split tiles and thread shares unevenly: bitwise
    the same at every thread count, and the reference's values (a wrong lane would be another row's number)."""
    x = gc.input("x", ("N", 20))
    y = gc.input("y", ("N", width))
    W = gc.param("W", (20, width))
    b = gc.param("b", (width,))
    h = gc.tanh(x @ W + b)
    loss = gc.mean(gc.sum((h - y) ** 2 * (h + 2.0), axis=1))
    gW, gb = gc.grad(loss, [W, b])
    updates = {W: W - 0.1 * gW, b: b - 0.1 * gb}
    fn = gc.compile([loss, h], updates=updates, cache=False)
    rng = np.random.default_rng(width)
    for n in (1, 5, 7, 13, 50):
        values = {"x": rng.normal(size=(n, 20)).astype(np.float32), "y": rng.normal(size=(n, width)).astype(np.float32),
                  "W": rng.normal(size=(20, width)).astype(np.float32), "b": rng.normal(size=width).astype(np.float32)}
        want = gc.evaluate([loss, h, W - 0.1 * gW, b - 0.1 * gb], values)
        ref = None
        for t in (1, 2, 3):
            vals = {k: v.copy() for k, v in values.items()}
            got = [*fn(vals, threads=t), vals["W"], vals["b"]]  # the updates are written in place
            if ref is None:
                ref = got
                for a, w in zip(got, want, strict=True):
                    _close(a, w, rtol=1e-4, atol=1e-5)
            else:
                for a, r in zip(got, ref, strict=True):
                    np.testing.assert_array_equal(a, r)
