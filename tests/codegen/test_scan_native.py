"""Native loops: a scan compiles to a loop around its body's kernels in the generated function, matches the
reference (forward, gradient, checkpointed gradient, reverse, nested, tuples, T=0), is bitwise equal on 1-3
threads, and its compile time does not depend on the sequence length."""

import re

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.kernels import GemmKernel, ReduceKernel, ScanKernel


def _rnn(T="T", reverse=False, checkpoint=None, grad=True):
    xs = gc.input("xs", (T, "N", 3))
    W, U = gc.param("W", (3, 4)), gc.param("U", (4, 4))
    h0 = gc.input("h0", ("N", 4))

    def step(h, x):
        h = gc.tanh(x @ W + h @ U)
        return h, h * 2.0

    hT, ys = gc.scan(step, h0, xs, reverse=reverse, checkpoint=checkpoint)
    loss = gc.sum(hT * hT) + gc.sum(ys * ys)
    return [loss, hT, ys] + (gc.grad(loss, [W, U, xs, h0]) if grad else [])


def _values(T, N=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"xs": rng.normal(size=(T, N, 3)).astype(np.float32), "W": rng.normal(size=(3, 4)).astype(np.float32),
            "U": (0.5 * rng.normal(size=(4, 4))).astype(np.float32),
            "h0": rng.normal(size=(N, 4)).astype(np.float32)}


def _reference_and_bitwise(fns, outs, v):
    """Every compiled function (1, 2, 3 threads) on v: the reference's values (evaluated in float64), and bitwise
    the same results whatever the thread count."""
    want = gc.evaluate(outs, {k: a.astype(np.float64) for k, a in v.items()})
    runs = [fn(v) for fn in fns]
    _close(runs[0], want)
    for r in runs[1:]:
        for a, b in zip(runs[0], r, strict=True):
            np.testing.assert_array_equal(a, b)


def _close(got, want):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * (1 + np.abs(w).max()))


@pytest.mark.parametrize(("reverse", "checkpoint"), [(False, None), (True, None), (False, 3), (True, 3)])
def test_scan_and_its_gradient_match_the_reference_and_are_bitwise_on_1_to_3_threads(reverse, checkpoint):
    """The length is symbolic, bound at call time: a checkpointed scan's ceil(T/k) stored carries are a dim
    expression computed at run time, for lengths k divides and lengths it does not, shorter than k too."""
    outs = _rnn(T="T", reverse=reverse, checkpoint=checkpoint)
    fns = [gc.compile(outs, threads=n) for n in (1, 2, 3)]
    for T in ((1, 3, 7) if checkpoint else (7,)):
        v = _values(T)
        _reference_and_bitwise(fns, outs, v)


@pytest.mark.parametrize("reverse", [False, True])
def test_stacked_ys_of_several_rows_reshaped_into_an_output_are_placed_by_step(reverse):
    """The ys of a step that are (2, 4) stacked to (3, 2, 4) and reshaped to the (6, 4) output share its
    storage: step t advances by its own 8 elements, not by the output's row of 4. The checkpointed gradient
    with respect to xs is such a reshape when k divides T (its blocks (T/k, k, ...) are the whole gradient)."""
    xs = gc.input("xs", (3, 2, 4), "float64")

    def step(c, x):
        return c + 1.0, x * 2.0 + c

    _, ys = gc.scan(step, gc.zeros((), "float64"), xs, reverse=reverse)
    out = gc.reshape(ys, (6, 4))
    v = {"xs": np.arange(24.0).reshape(3, 2, 4)}
    np.testing.assert_array_equal(gc.compile(out)(v), gc.evaluate(out, v))
    outs = _rnn(T=6, reverse=reverse, checkpoint=3)
    v = _values(6)
    _close(gc.compile(outs)(v), gc.evaluate(outs, {k: a.astype(np.float64) for k, a in v.items()}))


def test_the_loop_is_one_kernel_holding_its_body():
    f = gc.compile(_rnn(grad=False)[1:])
    loops = [k for k in f.program.kernels if isinstance(k, ScanKernel)]
    assert len(loops) == 1
    text = f.kernels
    assert "loop j in [0, T)" in text and "gemm" in text
    # one copy of the body in the LLVM IR, whatever T: the loop is a loop
    for k in loops[0].body.kernels:
        assert f.llvm_ir.count(f'define internal void @"{k.name}"') == 1, k.name


def test_profiling_counts_the_body_kernels_of_a_loop():
    outs = _rnn(grad=False)[1:]
    f = gc.compile(outs, profile=True)
    v = _values(40)
    f(v)
    rows = {name: (s, w) for name, s, w in f.profile_report()}
    loop = next(k for k in f.program.kernels if isinstance(k, ScanKernel))
    body = [k.name for k in loop.body.kernels]
    assert set(body) <= set(rows) and loop.name in rows
    # the loop's time holds its body's; each body kernel ran (40 steps of a gemm take cycles)
    assert rows[loop.name][0] >= sum(rows[n][0] + rows[n][1] for n in body) > 0
    assert all(rows[n][0] > 0 for n in body)


def test_a_cell_with_one_weight_per_gate_runs_one_recurrent_gemm_and_projects_its_inputs_before_the_loop():
    F, H = 3, 5
    xs = gc.input("xs", ("T", "N", F))
    Wx = {g: gc.param(f"Wx_{g}", (F, H)) for g in "ifgo"}
    Wh = {g: gc.param(f"Wh_{g}", (H, H)) for g in "ifgo"}
    b = {g: gc.param(f"b_{g}", (H,)) for g in "ifgo"}

    def step(carry, x):
        h, c = carry
        z = {g: x @ Wx[g] + h @ Wh[g] + b[g] for g in "ifgo"}
        c = gc.sigmoid(z["f"]) * c + gc.sigmoid(z["i"]) * gc.tanh(z["g"])
        h = gc.sigmoid(z["o"]) * gc.tanh(c)
        return (h, c), None

    h0 = gc.input("h0", ("N", H))
    (h, _), _ = gc.scan(step, (h0, h0), xs)
    loss = gc.sum(h * h)
    params = [*Wx.values(), *Wh.values(), *b.values()]
    outs = [loss, *gc.grad(loss, params)]
    f = gc.compile(outs)
    fwd = next(k for k in f.program.kernels if isinstance(k, ScanKernel))
    gemms = [k for k in fwd.body.kernels if isinstance(k, GemmKernel)]
    assert [(k.n, k.k) for k in gemms] == [(4 * H, H)]  # h·[Wi Wf Wg Wo], inside; x·W: one product before
    # after it, the gates, the cell update, the stored intermediates and the carry copies: one loop, not a dozen
    assert [type(k).__name__ for k in fwd.body.kernels] == ["GemmKernel", "LoopKernel"]
    before = f.program.kernels[:f.program.kernels.index(fwd)]
    assert [(k.n, k.k) for k in before if isinstance(k, GemmKernel)] == [(4 * H, F)]
    # the reverse loop's Σ_g dz_g·Wh_gᵀ is one product over the four gates (K = 4H), reading the stacked weights
    # transposed once, before it (not repacked every step)
    rev = [k for k in f.program.kernels if isinstance(k, ScanKernel)][1]
    assert [(k.n, k.k, k.tb) for k in rev.body.kernels if isinstance(k, GemmKernel)] == [(H, 4 * H, False)]
    # the four bias gradients: no sum over the batch in the loop (its rows stay independent: split_rows), one
    # column sum each after it over the stacked dz, which the loop stores side by side as the product reads them
    # (no concatenation of four stacks after the loop)
    from graphc.codegen.kernels import LoopKernel, split_rows

    assert not [k for k in rev.body.kernels if isinstance(k, ReduceKernel)]
    assert split_rows(fwd) is not None and split_rows(rev) is not None
    after = f.program.kernels[f.program.kernels.index(rev) + 1:]
    assert not [k for k in after if isinstance(k, LoopKernel) and "concat" in k.name]
    stacked = {k.b.index for k in after if isinstance(k, GemmKernel) and k.ta}
    assert len(stacked) == 1 and rev.out and stacked <= {b.index for b in rev.out}
    sums = [k for k in after if isinstance(k, ReduceKernel)]
    assert len(sums) == 4 and all(k.domain[1] == H for k in sums)
    rng = np.random.default_rng(4)
    v = {"xs": rng.normal(size=(6, 2, F)), "h0": rng.normal(size=(2, H))}
    v.update({p.name: 0.5 * rng.normal(size=p.shape) for p in params})
    v = {k: a.astype(np.float32) for k, a in v.items()}
    want = gc.evaluate(outs, {k: a.astype(np.float64) for k, a in v.items()})
    runs = [f(v, threads=n) for n in (1, 2, 3)]
    _close(runs[0], want)
    for r in runs[1:]:
        for a, b in zip(runs[0], r, strict=True):
            np.testing.assert_array_equal(a, b)


def test_lengths_bound_at_call_time():
    f = gc.compile(_rnn(grad=False)[1:])
    for T in (1, 2, 5):  # (a compiled function refuses a zero dim, T included)
        v = _values(T)
        want = gc.evaluate(_rnn(grad=False)[1:], v)
        _close(f(v), want)


def test_tuples_int_carries_none_ys_and_nested_scans():
    xs = gc.input("xs", ("T", 4, 2))
    W = gc.param("W", (2, 2))

    def outer(c, x):
        h, count = c

        def inner(d, row):
            return gc.tanh(d @ W + row), None

        d, _ = gc.scan(inner, h, gc.reshape(x, (4, 1, 2)))
        return (d, count + 1), (d * h, None)

    (hT, n), (ys, none) = gc.scan(outer, (gc.input("c0", (1, 2)), gc.constant(0, "int32")), xs)
    assert none is None
    loss = gc.sum(ys * ys) + gc.sum(hT)
    outs = [hT, n, ys, *gc.grad(loss, [W, xs])]
    rng = np.random.default_rng(1)
    v = {"xs": rng.normal(size=(5, 4, 2)).astype(np.float32), "W": (0.5 * rng.normal(size=(2, 2))).astype(np.float32),
         "c0": rng.normal(size=(1, 2)).astype(np.float32)}
    got = gc.compile(outs)(v)
    want = gc.evaluate(outs, v)
    assert got[1] == 5
    _close(got, want)


def test_compile_time_does_not_depend_on_the_length():
    """The step is compiled once, whatever the length: the programs for T = 10 and T = 10,000 are the same kernels
    up to the constants (the trip count, the stored sequences' sizes), and the same LLVM IR up to them and a few
    vector tails (10,000 rows are whole vectors, 10 are not), so compiling them costs the same. (A structural
    check: a timed one failed whenever the machine was loaded.)"""
    def code(T):
        fn = gc.compile(_rnn(T=T), cache=False)
        return re.sub(r"\d+", "#", fn.llvm_ir), re.sub(r"\d+", "#", fn.kernels)

    (ir_short, k_short), (ir_long, k_long) = code(10), code(10_000)
    assert k_short == k_long
    short, long = len(ir_short.splitlines()), len(ir_long.splitlines())
    assert abs(short - long) <= 0.01 * short, (short, long)


def test_a_long_sequence_runs_natively():
    outs = _rnn(grad=False)[1:]
    f = gc.compile(outs)
    v = _values(3000, N=1)
    _close(f(v), gc.evaluate(outs, v))


def _scans(fn):
    from graphc.codegen.kernels import all_kernels

    return [k for k in all_kernels(fn.program.kernels) if isinstance(k, ScanKernel)]


@pytest.mark.parametrize("batch", [1, 5, 19, 40])
def test_independent_sequences_run_on_row_ranges_without_barriers_bitwise_on_1_to_3_threads(batch):
    """An LSTM's forward and reverse loops are row-separable: each thread runs the whole loop over its own rows
    (no barrier per step). Batches smaller than the threads, not a multiple of the split, and several tiles."""
    from graphc.codegen.kernels import split_rows

    xs = gc.input("xs", (6, "N", 5))
    y = gc.input("y", ("N",), "int32")
    h = gc.nn.lstm(xs, 16, name="l")
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(h, 3, name="o"), y)
    params = gc.nn.parameters(loss)
    outs = [loss, h, *gc.grad(loss, params)]
    v = gc.nn.init_params(params, seed=0)
    rng = np.random.default_rng(batch)
    v["xs"] = rng.normal(size=(6, batch, 5)).astype(np.float32)
    v["y"] = rng.integers(0, 3, batch).astype(np.int32)
    fns = [gc.compile(outs, threads=n) for n in (1, 2, 3)]
    scans = _scans(fns[1])
    assert len(scans) == 2 and all(split_rows(k) is not None and str(split_rows(k)[0]) == "N" for k in scans)
    runs = [f(v) for f in fns]
    want = gc.evaluate(outs, {k: a.astype(np.float64) if a.dtype == np.float32 else a for k, a in v.items()})
    _close(runs[0], want)
    for r in runs[1:]:
        for a, b in zip(runs[0], r, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_loop_that_mixes_rows_is_not_split_and_stays_right_on_several_threads():
    """A step that reads across the batch (a mean over the rows fed back into every row) must not run on row
    ranges: the threads meet inside the loop as before, and the result matches the reference."""
    from graphc.codegen.kernels import split_rows

    xs = gc.input("xs", (5, "N", 3))
    W = gc.param("W", (3, 4))
    h0 = gc.input("h0", ("N", 4))

    def step(h, x):
        h = gc.tanh(x @ W + h - gc.mean(h, axis=0, keepdims=True))
        return h, None

    hT, _ = gc.scan(step, h0, xs)
    loss = gc.sum(hT * hT)
    outs = [loss, hT, *gc.grad(loss, [W, xs])]
    rng = np.random.default_rng(0)
    v = {"xs": rng.normal(size=(5, 9, 3)).astype(np.float32), "W": rng.normal(size=(3, 4)).astype(np.float32),
         "h0": rng.normal(size=(9, 4)).astype(np.float32)}
    fn = gc.compile(outs, threads=2)
    assert all(split_rows(k) is None for k in _scans(fn))
    _close(fn(v), gc.evaluate(outs, {k: a.astype(np.float64) for k, a in v.items()}))


@pytest.mark.parametrize("reads", [(2, 0, 1), (0, 0, 1), (1, 2, 0), (3, 0, 1, 2), (1, 0, 3, 2)])
def test_every_carry_update_reads_the_old_carries_however_the_loops_fuse(reads):
    """Carry k's new value reads the old carry reads[k] (and its own). The body's loop and the copies of the new
    carries fuse into one pass; a copy that read a carry another copy had already overwritten in that pass gave
    a running sum of the wrong step's values (a Welford mean/variance, the gradient of two elementwise weights:
    silently wrong before)."""
    n = len(reads)
    xs = gc.input("xs", ("T", 3), "float64")
    z = gc.zeros((3,), "float64")

    def step(c, x):
        return tuple(gc.tanh(c[k]) * 0.5 + c[r] + x * (k + 1) for k, r in enumerate(reads)), None

    carry, _ = gc.scan(step, tuple(z + float(k + 1) for k in range(n)), xs)
    v = {"xs": np.random.default_rng(0).normal(size=(5, 3))}
    want = gc.evaluate(list(carry), v)
    for threads in (1, 2):
        got = gc.compile(list(carry), threads=threads, cache=False)(v)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12)


def test_the_gradient_of_two_elementwise_weights_through_a_scan():
    """The reverse scan carries (dh, dw, du), all of one shape: dw was wrong (see above); jax's values."""
    xs = gc.input("xs", ("T", 3), "float64")
    w, u = gc.input("w", (3,), "float64"), gc.input("u", (3,), "float64")
    (h,), _ = gc.scan(lambda c, x: ((gc.tanh(c[0] * w + x + u),), None), (gc.zeros((3,), "float64"),), xs)
    loss = gc.sum(h)
    rng = np.random.default_rng(1)
    v = {"xs": rng.normal(size=(6, 3)), "w": rng.normal(size=3), "u": rng.normal(size=3)}
    outs = gc.grad(loss, [w, u])
    want = gc.evaluate(outs, v)
    got = gc.compile(outs, cache=False)(v)
    for g, ww in zip(got, want, strict=True):
        np.testing.assert_allclose(g, ww, rtol=1e-12)
    eps = 1e-6  # and finite differences of the loss in w
    f = gc.compile(loss, cache=False)
    num = [(f({**v, "w": v["w"] + eps * e}) - f({**v, "w": v["w"] - eps * e})) / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(np.ravel(num), got[0], rtol=1e-6)


def test_a_loop_over_constants_compiles():
    """A scan whose every input is a constant (a decay table, a fixed recurrence) was a raw numpy ValueError from
    constant folding (a loop is not one value); it stays a loop, and its result is the reference's."""
    z = gc.zeros((3,), "float64")
    (c, s), ys = gc.scan(lambda c, _: ((c[0] * 0.5, c[1] + c[0]), c[0]), (z + 1.0, z), length=4)
    f = gc.fori_loop(0, 4, lambda i, c: c * 0.5 + 1.0, z)
    x = gc.input("x", (3,), "float64")
    outs = [s, ys, f, s * x]
    v = {"x": np.arange(3.0)}
    for got, want in zip(gc.compile(outs, cache=False)(v), gc.evaluate(outs, v), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-15)


def test_a_length_nothing_binds_and_a_negative_length_are_errors_naming_the_loop():
    w = gc.input("w", (3,), "float64")
    c, _ = gc.scan(lambda c, _: (c * w, None), gc.ones((3,), "float64"), length="T")
    for run in (lambda: gc.evaluate(c, {"w": np.ones(3)}), lambda: gc.compile(c, cache=False)):
        with pytest.raises(gc.ShapeError, match=r"the length T of the scan at .*test_scan_native.py:\d+ has the dim T"):
            run()
    xs = gc.input("xs", ("T", 2), "float64")
    f = gc.fori_loop(3, "T", lambda i, c: c + xs[i], gc.zeros((2,), "float64"))
    fn = gc.compile(f, cache=False)
    for T in (0, 2):  # T - 3 steps: -3 (a call with an empty dim: the reference's path) and -1 (the native one's)
        v = {"xs": np.ones((T, 2))}
        for run in (lambda v=v: gc.evaluate(f, v), lambda v=v: fn(v)):
            with pytest.raises(gc.ShapeError, match=rf"its length T - 3 is {T - 3} for T = {T}"):
                run()
    np.testing.assert_array_equal(fn({"xs": np.ones((5, 2))}), [2.0, 2.0])
    with pytest.raises(gc.GraphcError, match="reverse must be True or False, got 'no'"):
        gc.scan(lambda c, x: (c + x, None), gc.zeros((2,)), gc.input("q", (4, 2)), reverse="no")


@pytest.mark.parametrize("cell", ["conv1d", "reshape_product", "dense3d"])
def test_weight_gradients_of_a_product_over_a_reshaped_step_value(cell):
    """A step whose product reads a regrouped view of a computed value (a convolution's im2col windows, a dense
    layer on (N, L, C), reshape(x + h) @ P): the gradient stores that view per step for the weights' product
    after the loop, so the step must keep it in memory (it failed to compile: 'was expected in memory')."""
    rng = np.random.default_rng(0)
    if cell == "conv1d":
        xs = gc.input("xs", ("T", "N", 6, 2))
        w = gc.param("w", (3, 2, 2))
        h0 = gc.zeros(("N", 6, 2))
        f = lambda z: gc.conv1d(z, w, padding="same")  # noqa: E731
        v = {"xs": rng.normal(size=(4, 3, 6, 2)), "w": rng.normal(size=(3, 2, 2)) * 0.3}
    elif cell == "reshape_product":
        xs = gc.input("xs", ("T", 3, 4, 5))
        w = gc.param("w", (5, 5))
        h0 = gc.zeros((3, 4, 5))
        f = lambda z: gc.reshape(gc.reshape(z, (12, 5)) @ w, (3, 4, 5))  # noqa: E731
        v = {"xs": rng.normal(size=(4, 3, 4, 5)), "w": rng.normal(size=(5, 5)) * 0.3}
    else:
        xs = gc.input("xs", ("T", "N", 4, 5))
        w = gc.param("w", (5, 5))
        h0 = gc.zeros(("N", 4, 5))
        f = lambda z: z @ w  # noqa: E731 - a product over (N, 4) rows, as gc.nn.dense on a 3-D value
        v = {"xs": rng.normal(size=(4, 3, 4, 5)), "w": rng.normal(size=(5, 5)) * 0.3}
    v = {k: a.astype(np.float32) for k, a in v.items()}
    h, _ = gc.scan(lambda c, x: (gc.tanh(f(x + c)), None), h0, xs)
    loss = gc.sum(h * h)
    outs = [loss, *gc.grad(loss, [w, xs])]
    for got, want in zip(gc.compile(outs, cache=False)(v), gc.evaluate(outs, v), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("form", ["wide", "transposed", "checkpointed", "deep"])
def test_a_loop_invariant_weight_the_gemm_would_pack_is_packed_once_before_the_loop(form):
    """A step's product whose B is loop-invariant (at least PACK_MIN_ELEMENTS) and would be packed by the GEMM on
    every step (B wider than the driver reads in place, transposed, or, "deep", rows 256 bytes apart whose K blocks
    of 200 rows span 51 KB, which AVX2's driver packs as an LSTM's backward dZ·Whᵀ) reads a copy packed once,
    before the loop (a PackKernel outside it; with a checkpoint, once per segment's recomputation at most): the
    listing says so, and the results are the reference's, bitwise alike on 1-3 threads and over batches of 1
    (the GEMV, which reads B itself), 5 and 40."""
    W = gc.param("W", (32, 600))
    V = gc.param("V", (600, 32))
    D = gc.param("D", (600, 64))
    xs = gc.input("xs", ("T", "N", 600))

    def step(h, x):
        if form == "deep":  # a per-step left operand (not hoisted as the input projection would be)
            z = (x * (1.0 + gc.sum(h, axis=1, keepdims=True))) @ D
            return gc.tanh(z[:, :32] + x[:, :32] + 0.5 * h), gc.sum(z * x[:, :64], axis=1)
        z = h @ V.T if form == "transposed" else h @ W
        return gc.tanh(z[:, :32] + x[:, :32] + 0.5 * h), gc.sum(z * x, axis=1)

    h0 = gc.input("h0", ("N", 32))
    hT, ys = gc.scan(step, h0, xs, checkpoint=3 if form == "checkpointed" else None)
    loss = gc.sum(hT * hT) + gc.sum(ys)
    wrt = [{"transposed": V, "deep": D}.get(form, W), h0]
    outs = [loss, hT, *gc.grad(loss, wrt)]
    fns = [gc.compile(outs, threads=n) for n in (1, 2, 3)]
    listing = fns[1].kernels
    packs = re.findall(r"^(k\d+_scan\w*_pack\d+): pack b\d+:(\w+)", listing, re.M)
    # W itself, or the transpose of V the compiler hoists out of the loop (then 600 wide too)
    want = {"transposed": set(), "deep": {"D"}}.get(form, {"W"})
    assert want <= {p[1] for p in packs} and packs, listing
    assert "(packed before the loop:" in listing
    rng = np.random.default_rng(3)
    for n in (1, 5, 40):
        v = {"W": (0.05 * rng.normal(size=(32, 600))).astype(np.float32),
             "D": (0.05 * rng.normal(size=(600, 64))).astype(np.float32),
             "V": (0.05 * rng.normal(size=(600, 32))).astype(np.float32),
             "xs": rng.normal(size=(7, n, 600)).astype(np.float32), "h0": rng.normal(size=(n, 32)).astype(np.float32)}
        _reference_and_bitwise(fns, outs, v)
