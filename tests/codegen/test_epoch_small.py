"""Small products (a batch of 1..16 rows, or a weight gradient over such a batch): the GEMM reads A in place
with narrow kernels instead of packing it into 12-row panels. Every element must be the same fmuladd chain as
on the packed path: bitwise equal results, for any thread count, with epilogues, accumulation and several K
blocks; and a per-sample SGD epoch must still follow the reference evaluator."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest
from llvmlite import ir

import graphc as gc
from graphc.codegen import gemm
from graphc.codegen.target import compile_ir, host_target

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32


def _bias_relu(ctx: gemm.EpilogueContext) -> ir.Value:
    b = ctx.builder
    v = b.fadd(ctx.acc, ctx.load(ctx.extra_args[0], ctx.col))
    zero = ir.Constant(ctx.acc.type, None)
    return b.select(b.fcmp_ordered(">", v, zero), v, zero)


SPECS = {f"g{ta}{tb}{acc}{epi}": dict(trans_a=bool(ta), trans_b=bool(tb), accumulate=bool(acc),
                                      epilogue=_bias_relu if epi else None,
                                      extra_args=[ir.PointerType()] if epi else [])
         for ta in (0, 1) for tb in (0, 1) for acc in (0, 1) for epi in (0, 1)}
SMALL_KC = gemm.GemmConfig(mr=12, nr=32, kc=16, mc=24, nc=64, direct_b_max_ld=512, direct_b_max_m=256)


def _build(small: bool, monkeypatch):
    if not small:  # the packed path everywhere
        monkeypatch.setattr(gemm, "SMALL_M", -1)
        monkeypatch.setattr(gemm, "SMALL_K", -1)
    mod = ir.Module()
    t = host_target()
    for name, spec in SPECS.items():
        gemm.emit_gemm(mod, name, target=t, M=None, N=None, K=None, **spec)
        gemm.emit_gemm(mod, name + "_kc", target=t, M=None, N=None, K=None, config=SMALL_KC, **spec)
    monkeypatch.undo()
    eng = compile_ir(str(mod), t)
    return {n: eng.function(n, None, _P, _P, _P, *[_I64] * 6, _P, _I32, _I32, _P) for n in [*SPECS, *[
        s + "_kc" for s in SPECS]]}


@pytest.fixture(scope="module")
def kernels():
    mp = pytest.MonkeyPatch()
    try:
        return _build(True, mp), _build(False, mp)
    finally:
        mp.undo()


def _run(fn, A, B, C, M, N, K, bias, nthreads, config=None):
    ws_bytes = gemm.workspace_bytes(M, N, K, nthreads, host_target(), config=config)
    raw = np.zeros(ws_bytes + 64, np.uint8)
    ws = raw[(-raw.ctypes.data) % 64:][:ws_bytes]
    args = (A.ctypes.data, B.ctypes.data, C.ctypes.data, M, N, K, A.shape[1], B.shape[1], C.shape[1], ws.ctypes.data)
    ts = [threading.Thread(target=fn, args=(*args, t, nthreads, bias.ctypes.data)) for t in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_small_products_are_bitwise_the_packed_ones(kernels, name):
    small, packed = kernels
    rng = np.random.default_rng(len(name) + sum(map(ord, name)))
    ta, tb = SPECS[name]["trans_a"], SPECS[name]["trans_b"]
    shapes = [(1, 32, 64), (1, 10, 32), (1, 32, 10), (64, 32, 1), (32, 10, 1), (16, 33, 40), (9, 1, 300),
              (17, 20, 5), (3, 70, 17), (100, 16, 16), (130, 40, 3), (5, 600, 9)]
    for M, N, K in shapes:
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        C0 = rng.standard_normal((M, N)).astype(np.float32)
        for suffix, cfg in (("", None), ("_kc", SMALL_KC)):  # one K block; several (kc = 16)
            ref = None
            for kern, nth in ((packed, 1), (small, 1), (small, 2), (small, 3)):
                C = C0.copy()
                _run(kern[name + suffix], A, B, C, M, N, K, bias, nth, cfg)
                if ref is None:
                    ref = C
                    want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
                    if SPECS[name]["accumulate"]:
                        want += C0
                    if SPECS[name]["epilogue"] is not None:
                        want = np.maximum(want + bias, 0)
                    np.testing.assert_allclose(C, want, rtol=1e-4, atol=1e-4 * np.sqrt(K))
                else:
                    assert np.array_equal(C.view(np.uint32), ref.view(np.uint32)), (M, N, K, nth, suffix)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_small_batch_epoch_follows_the_reference(batch):
    x = gc.input("x", ("N", 20))
    y = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [24, 5], name=f"sb{batch}"), y)
    params = gc.nn.parameters(loss)
    updates = {p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)}
    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    rng = np.random.default_rng(batch)
    X = rng.standard_normal((40, 20)).astype(np.float32)
    Y = rng.integers(0, 5, 40).astype(np.int32)
    state = gc.nn.init_params(params, seed=2)
    ref = {k: v.copy() for k, v in state.items()}
    stats = ef.run_epoch(X, Y, state, batch=batch, scalars={"lr": 0.05})
    order = stats.permutation
    for s in range(stats.steps):
        idx = order[s * batch:(s + 1) * batch]
        out = gc.evaluate([loss, *updates.values()], dict(ref, x=X[idx], y=Y[idx], lr=np.float32(0.05)))
        assert stats.losses[s] == pytest.approx(float(out[0]), rel=1e-4, abs=1e-5)
        ref = {p.name: v for p, v in zip(updates, out[1:], strict=True)}
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _thin_cases():
    """(name, build) pairs: build() -> (outputs, updates, feeds(batch, rng)) of graphs whose products are thin (one
    row of op(A), or K = 1) at batch 1: forward with bias and relu, x.W^T, a rank-1 SGD update, odd sizes, K past
    one K block, float64."""

    def dense(k, n, dtype="float32"):
        def build():
            x = gc.input("x", ("N", k), dtype)
            w = gc.input("w", (k, n), dtype)
            b = gc.input("b", (n,), dtype)
            return [gc.relu(x @ w + b)], None, lambda N, r: {"x": r.standard_normal((N, k)).astype(dtype),
                                                                 "w": r.standard_normal((k, n)).astype(dtype),
                                                                 "b": r.standard_normal(n).astype(dtype)}
        return build

    def dense_t(k, n):
        def build():
            g = gc.input("g", ("N", k))
            w = gc.input("w", (n, k))
            return [g @ w.T], None, lambda N, r: {"g": r.standard_normal((N, k)).astype(np.float32),
                                                  "w": r.standard_normal((n, k)).astype(np.float32)}
        return build

    def rank1(m, n):  # W <- W - lr x^T g: K is the batch
        def build():
            x = gc.input("x", ("N", m))
            g = gc.input("g", ("N", n))
            w = gc.input("w", (m, n))
            lr = gc.input("lr", (), "float32")
            return [gc.sum(g)], {w: w - lr * (x.T @ g)}, lambda N, r: {
                "x": r.standard_normal((N, m)).astype(np.float32), "g": r.standard_normal((N, n)).astype(np.float32),
                "w": r.standard_normal((m, n)).astype(np.float32), "lr": np.float32(0.1)}
        return build

    return [("dense64x32", dense(64, 32)), ("dense32x10", dense(32, 10)), ("dense7x37", dense(7, 37)),
            ("dense300x5", dense(300, 5)), ("dense9x20f64", dense(9, 20, "float64")), ("gwT10x32", dense_t(10, 32)),
            ("gwT5x21", dense_t(5, 21)), ("rank64x32", rank1(64, 32)), ("rank32x10", rank1(32, 10)),
            ("rank13x3", rank1(13, 3)), ("rank5x40", rank1(5, 40))]


@pytest.mark.parametrize("name,build", _thin_cases(), ids=[c[0] for c in _thin_cases()])
def test_thin_products_are_bitwise_the_gemm_ones(name, build, monkeypatch):
    """A product with one row of op(A) or K = 1 runs as inline loops in its kernel instead of a GEMM call: its
    results (epilogue and in-place update included) are bitwise the GEMM path's, on 1 and 2 threads, and follow
    the reference evaluator at batch 1 and at small batches (where the GEMM runs)."""
    from graphc.codegen.emit import ModuleEmitter

    outs, updates, feeds = build()
    thin = gc.compile(outs, updates=updates, cache=False)
    assert ("thin.k" in thin.llvm_ir) == (name != "dense300x5")  # K = 300: two K blocks, the GEMM's
    monkeypatch.setattr(ModuleEmitter, "_thin_condition", staticmethod(lambda fe, k, cfg: None))
    gemm_only = gc.compile(outs, updates=updates, cache=False)
    assert "thin.k" not in gemm_only.llvm_ir  # (emitted here, with the thin path off)
    monkeypatch.undo()
    rng = np.random.default_rng(len(name))
    for batch in (1, 2, 3, 5):
        vals = feeds(batch, rng)
        ref = gc.evaluate([*outs, *(updates or {}).values()], vals)
        tol = 1e-9 if vals["w"].dtype == np.float64 else 2e-5
        for threads in (1, 2):
            got = []
            for fn in (thin, gemm_only):
                v = {k: np.array(a) for k, a in vals.items()}  # updates write their inputs in place
                res = fn(v, threads=threads)
                got.append([*(res if isinstance(res, list) else [res]), *([v["w"]] if updates else [])])
            for a, b, r in zip(got[0], got[1], ref, strict=True):
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (batch, threads)
                np.testing.assert_allclose(a, r, rtol=tol, atol=tol * 10)


def test_large_products_get_no_thin_path():
    """The thin loops are code LLVM compiles whether or not a batch of 1 comes: a program gets them only when
    every product is small enough for the GEMM's set-up to weigh (a 128 x 10 layer's forward and rank-1 update
    do; a 784 x 256 one's do not, nor the small layer's beside it, whose step the large product dominates)."""
    from graphc.codegen.emit import THIN_WORK

    def program(*sizes):
        x = gc.input("x", ("N", sizes[0]))
        lr = gc.input("lr", (), "float32")
        outs, updates, h = [], {}, x
        for i, (m, n) in enumerate(zip(sizes, sizes[1:], strict=False)):
            w, g = gc.input(f"w{i}", (m, n)), gc.input(f"g{i}", ("N", n))
            updates[w] = w - lr * (h.T @ g)
            h = h @ w
            outs.append(h)
        return gc.compile(outs, updates=updates, cache=False)

    assert 128 * 10 <= THIN_WORK < 784 * 256
    assert "thin.k" in program(128, 10).llvm_ir
    assert "thin.k" not in program(784, 256).llvm_ir
    assert "thin.k" not in program(784, 128, 10).llvm_ir


@pytest.mark.parametrize("target", ["x86-64", "x86-64-v3"])
def test_thin_products_on_narrower_vectors(target, monkeypatch):
    """The thin loops on SSE (4 lanes) and AVX2 (8 lanes): forward with an epilogue, x.W^T (gathers), a rank-1
    update; bitwise the GEMM path's for the same target, and the reference's values."""
    import platform

    from graphc.codegen.emit import ModuleEmitter

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 targets")
    x, w, b = gc.input("x", ("N", 7)), gc.input("w", (7, 37)), gc.input("b", (37,))
    g, w2, lr = gc.input("g", ("N", 37)), gc.input("w2", (5, 37)), gc.input("lr", (), "float32")
    outs, updates = [gc.relu(x @ w + b), g @ w2.T], {w: w - lr * (x.T @ g)}
    thin = gc.compile(outs, updates=updates, target=target, cache=False)
    assert "thin.k" in thin.llvm_ir
    monkeypatch.setattr(ModuleEmitter, "_thin_condition", staticmethod(lambda fe, k, cfg: None))
    gemm_only = gc.compile(outs, updates=updates, target=target, cache=False)
    assert "thin.k" not in gemm_only.llvm_ir
    monkeypatch.undo()
    r = np.random.default_rng(7)
    for n in (1, 2):
        vals = {"x": r.standard_normal((n, 7)), "w": r.standard_normal((7, 37)), "b": r.standard_normal(37),
                "g": r.standard_normal((n, 37)), "lr": 0.1, "w2": r.standard_normal((5, 37))}
        vals = {k: np.asarray(v, np.float32) for k, v in vals.items()}
        ref = gc.evaluate([*outs, *updates.values()], vals)
        for threads in (1, 2):
            got = []
            for fn in (thin, gemm_only):
                v = {k: a.copy() for k, a in vals.items()}
                got.append([*fn(v, threads=threads), v["w"]])
            for a, c, e in zip(*got, ref, strict=True):
                assert a.tobytes() == c.tobytes(), (n, threads)
                np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-5)
