"""GEMM kernel generator: correctness against numpy, epilogues, thread-count invariance, portable targets."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import replace

import numpy as np
import pytest
from llvmlite import ir

from graphc.codegen import gemm as gemm_mod
from graphc.codegen.gemm import (
    EpilogueContext,
    GemmConfig,
    _edge_rows,
    config_for,
    default_config,
    emit_gemm,
    small_rows,
    workspace_bytes,
)
from graphc.codegen.target import compile_ir, host_target, level_target

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_RNG = np.random.default_rng(1234)

# Shapes (M, N, K) covering 1, 3, 7, 17, 33, 64 and 255 in each dimension, K above the K block (so the
# epilogue must wait for the last block), M above the M block, N above the N block, and exact tiles.
SHAPES = [
    (1, 3, 7),
    (3, 7, 17),
    (7, 17, 33),
    (17, 33, 64),
    (33, 64, 255),
    (64, 255, 1),
    (255, 1, 3),
    (1, 1, 1),
    (255, 255, 64),
    (24, 64, 384),
    (37, 70, 1000),
    (500, 33, 7),
    (3, 3100, 5),
    (128, 40, 300),  # a batch of 128: ten 12-row tiles and one of 8 (the narrower kernel, its full-tile store)
    (20, 33, 9),  # 12 + 8
]


# ------------------------------------------------------------------------------------------ helpers


def bias_relu(ctx: EpilogueContext) -> ir.Value:
    """C = relu(acc + bias[col]) with bias the first extra argument."""
    b = ctx.builder
    v = b.fadd(ctx.acc, ctx.load(ctx.extra_args[0], ctx.col))
    zero = ir.Constant(ctx.acc.type, None)
    return b.select(b.fcmp_ordered(">", v, zero), v, zero)


def row_col_bias(ctx: EpilogueContext) -> ir.Value:
    """C = acc + colbias[col] + rowbias[row]: checks the row and column indices the epilogue is given."""
    b = ctx.builder
    colb = ctx.load(ctx.extra_args[0], ctx.col)
    rp = b.gep(ctx.extra_args[1], [ctx.row], inbounds=True, source_etype=ctx.elem_type)
    rowb = ctx.splat(b.load(rp, typ=ctx.elem_type))
    return b.fadd(b.fadd(ctx.acc, colb), rowb)


def _aligned_workspace(nbytes: int) -> np.ndarray:
    raw = np.zeros(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + nbytes]


class Kernel:
    def __init__(self, engine, name, spec, target):
        self.spec = spec
        self.target = target
        self.dtype = np.dtype(spec.get("dtype", "float32"))
        nextra = len(spec.get("extra_args", ()))
        self.fn = engine.function(name, None, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I32, _I32,
                                  *([_P] * nextra))

    def __call__(self, A, B, C, M, N, K, nthreads=1, extras=()):
        ws = _aligned_workspace(workspace_bytes(M, N, K, nthreads, self.target, self.dtype.name))
        dims = [0 if self.spec.get(d) is not None else v for d, v in (("M", M), ("N", N), ("K", K))]
        args = (A.ctypes.data, B.ctypes.data, C.ctypes.data, *dims,
                A.strides[0] // A.itemsize, B.strides[0] // B.itemsize, C.strides[0] // C.itemsize,
                ws.ctypes.data)
        ex = tuple(x.ctypes.data for x in extras)
        if nthreads == 1:
            self.fn(*args, 0, 1, *ex)
        else:
            ts = [threading.Thread(target=self.fn, args=(*args, t, nthreads, *ex)) for t in range(nthreads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        return C


def _build(specs: dict[str, dict], target) -> dict[str, Kernel]:
    mod = ir.Module()
    for name, spec in specs.items():
        kw = {k: v for k, v in spec.items()}
        kw.setdefault("M", None)
        kw.setdefault("N", None)
        kw.setdefault("K", None)
        emit_gemm(mod, name, target=target, **kw)
    eng = compile_ir(str(mod), target)
    return {name: Kernel(eng, name, spec, target) for name, spec in specs.items()}


def _operands(M, N, K, ta, tb, dtype, strided=False):
    pad = 5 if strided else 0
    a_shape = (K, M) if ta else (M, K)
    b_shape = (N, K) if tb else (K, N)
    A = _RNG.standard_normal((a_shape[0], a_shape[1] + pad)).astype(dtype)[:, : a_shape[1]]
    B = _RNG.standard_normal((b_shape[0], b_shape[1] + pad)).astype(dtype)[:, : b_shape[1]]
    return A, B


def _ref(A, B, ta, tb):
    a = A.astype(np.float64)
    b = B.astype(np.float64)
    a = a.T if ta else a
    b = b.T if tb else b
    return a @ b, np.abs(a) @ np.abs(b)


def _check(C, ref, bound, K, dtype, extra_terms=2):
    """|C - ref| <= (K + extra) * eps * (|A||B| + |other terms|): the standard dot-product error bound."""
    eps = np.finfo(dtype).eps
    tol = (K + extra_terms) * eps * bound + np.finfo(dtype).tiny
    err = np.abs(C.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max err {err.max():.3g}, worst ratio {(err / tol).max():.3g}"


# ----------------------------------------------------------------------------------------- fixtures

STATIC = {
    "st_00_33_17_255": dict(M=33, N=17, K=255),
    "st_01_7_64_33": dict(M=7, N=64, K=33, trans_b=True),
    "st_10_64_3_17": dict(M=64, N=3, K=17, trans_a=True),
    "st_11_255_33_1": dict(M=255, N=33, K=1, trans_a=True, trans_b=True),
    "st_00_1_1_1": dict(M=1, N=1, K=1),
    "st_00_100_96_800": dict(M=100, N=96, K=800),
}


@pytest.fixture(scope="module")
def host():
    specs: dict[str, dict] = {}
    for ta in (0, 1):
        for tb in (0, 1):
            specs[f"rt_{ta}{tb}"] = dict(trans_a=bool(ta), trans_b=bool(tb))
    specs.update(STATIC)
    specs["acc_00"] = dict(accumulate=True)
    specs["acc_11"] = dict(accumulate=True, trans_a=True, trans_b=True)
    specs["epi_00"] = dict(epilogue=bias_relu, extra_args=[ir.PointerType()])
    specs["epi_acc_01"] = dict(epilogue=bias_relu, extra_args=[ir.PointerType()], accumulate=True, trans_b=True)
    specs["epi_rc_10"] = dict(epilogue=row_col_bias, extra_args=[ir.PointerType(), ir.PointerType()],
                              trans_a=True)
    specs["f64_00"] = dict(dtype="float64")
    specs["f64_11"] = dict(dtype="float64", trans_a=True, trans_b=True)
    specs["f64_st_01"] = dict(dtype="float64", M=17, N=33, K=64, trans_b=True)
    # tiny blocks: many N, K and M blocks on small problems; the other loop order
    small = GemmConfig(mr=12, nr=32, kc=16, mc=24, nc=64, direct_b_max_ld=512, direct_b_max_m=256)
    specs["small_00"] = dict(config=small, epilogue=bias_relu, extra_args=[ir.PointerType()])
    specs["small_11"] = dict(config=small, trans_a=True, trans_b=True, accumulate=True)
    specs["jrir_10"] = dict(config=replace(default_config(host_target()), loop_order="jr_ir"), trans_a=True)
    return _build(specs, host_target())


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_runtime_dims_all_transposes(host, ta, tb):
    k = host[f"rt_{ta}{tb}"]
    for M, N, K in SHAPES:
        A, B = _operands(M, N, K, ta, tb, np.float32)
        C = np.full((M, N), np.nan, np.float32)
        k(A, B, C, M, N, K)
        ref, bound = _ref(A, B, ta, tb)
        _check(C, ref, bound, K, np.float32)


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 1)])
def test_strided_operands(host, ta, tb):
    """lda/ldb/ldc larger than the row length; C's padding is left alone."""
    k = host[f"rt_{ta}{tb}"]
    for M, N, K in [(17, 33, 64), (33, 70, 500), (5, 3, 1)]:
        A, B = _operands(M, N, K, ta, tb, np.float32, strided=True)
        Cfull = np.full((M, N + 7), -3.0, np.float32)
        C = Cfull[:, :N]
        k(A, B, C, M, N, K)
        ref, bound = _ref(A, B, ta, tb)
        _check(C, ref, bound, K, np.float32)
        assert np.all(Cfull[:, N:] == -3.0)


@pytest.mark.parametrize("name", sorted(STATIC))
def test_static_dims(host, name):
    spec = STATIC[name]
    M, N, K = spec["M"], spec["N"], spec["K"]
    ta, tb = spec.get("trans_a", False), spec.get("trans_b", False)
    A, B = _operands(M, N, K, ta, tb, np.float32)
    C = np.full((M, N), np.nan, np.float32)
    host[name](A, B, C, M, N, K)  # the runtime M, N, K arguments are passed as 0: they must be ignored
    ref, bound = _ref(A, B, ta, tb)
    _check(C, ref, bound, K, np.float32)


@pytest.mark.parametrize("N", [1, 6, 8])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_few_columns_run_half_width_vectors_bitwise_as_full_ones(N, dtype):
    """A product at most half a vector wide runs on vectors of half the lanes (`config_for`): 6 of 8 lanes work,
    not 6 of 16. Each element is the same fmuladd chain, so C is bitwise the full-width config's, on 1-3
    threads, with K in two blocks, edge rows, either transposition and an accumulating product."""
    t = host_target()
    lanes = t.f32_lanes if dtype == "float32" else t.f64_lanes
    half = config_for(t, dtype, N)
    if t.vector_bits >= 512 and N <= lanes // 2:
        assert (half.lanes, half.nr) == (lanes // 2, lanes // 2)
    else:
        assert half.lanes == 0
    full = config_for(t, dtype, lanes)
    M, K = 103, 300
    specs = {}
    for ta, tb in ((False, False), (True, True)):
        for tag, cfg in (("half", half), ("full", full)):
            specs[f"{tag}_{int(ta)}{int(tb)}"] = dict(dtype=dtype, N=N, trans_a=ta, trans_b=tb, config=cfg,
                                                      accumulate=ta)
    mods = _build(specs, t)
    for ta, tb in ((False, False), (True, True)):
        A, B = _operands(M, N, K, ta, tb, np.dtype(dtype))
        C0 = _RNG.standard_normal((M, N)).astype(dtype)
        want = mods[f"full_{int(ta)}{int(tb)}"](A, B, C0.copy(), M, N, K)
        ref, bound = _ref(A, B, ta, tb)
        _check(want - (C0 if ta else 0), ref, bound + (np.abs(C0) if ta else 0), K, np.dtype(dtype))
        for nt in (1, 2, 3):
            got = mods[f"half_{int(ta)}{int(tb)}"](A, B, C0.copy(), M, N, K, nthreads=nt)
            assert np.array_equal(got, want), (ta, tb, nt)


@pytest.mark.parametrize("name,ta,tb", [("acc_00", 0, 0), ("acc_11", 1, 1)])
def test_accumulate(host, name, ta, tb):
    for M, N, K in [(17, 33, 64), (37, 70, 1000), (1, 1, 1), (255, 64, 7)]:
        A, B = _operands(M, N, K, ta, tb, np.float32)
        C0 = _RNG.standard_normal((M, N)).astype(np.float32)
        C = C0.copy()
        host[name](A, B, C, M, N, K)
        ref, bound = _ref(A, B, ta, tb)
        _check(C, ref + C0, bound + np.abs(C0), K, np.float32)


def test_epilogue_bias_relu(host):
    for M, N, K in [(17, 33, 64), (37, 70, 1000), (1, 1, 1), (64, 255, 7), (255, 17, 3)]:
        A, B = _operands(M, N, K, 0, 0, np.float32)
        bias = _RNG.standard_normal(N).astype(np.float32)
        C = np.full((M, N), np.nan, np.float32)
        host["epi_00"](A, B, C, M, N, K, extras=(bias,))
        ref, bound = _ref(A, B, 0, 0)
        pre = ref + bias
        _check(C, np.maximum(pre, 0), bound + np.abs(bias), K, np.float32)
        assert np.all(C >= 0)


def test_epilogue_bias_relu_accumulate(host):
    """With accumulate=True the epilogue sees acc + old C, after the last K block only."""
    for M, N, K in [(17, 33, 64), (37, 70, 1000), (3, 100, 1)]:
        A, B = _operands(M, N, K, 0, 1, np.float32)
        bias = _RNG.standard_normal(N).astype(np.float32)
        C0 = _RNG.standard_normal((M, N)).astype(np.float32)
        C = C0.copy()
        host["epi_acc_01"](A, B, C, M, N, K, extras=(bias,))
        ref, bound = _ref(A, B, 0, 1)
        _check(C, np.maximum(ref + C0 + bias, 0), bound + np.abs(C0) + np.abs(bias), K, np.float32, 3)


def test_epilogue_row_and_column_indices(host):
    for M, N, K in [(17, 33, 64), (255, 70, 500), (1, 3, 1)]:
        A, B = _operands(M, N, K, 1, 0, np.float32)
        colb = np.arange(N, dtype=np.float32) * 1000
        rowb = np.arange(M, dtype=np.float32) * 7
        C = np.full((M, N), np.nan, np.float32)
        host["epi_rc_10"](A, B, C, M, N, K, extras=(colb, rowb))
        ref, bound = _ref(A, B, 1, 0)
        full = ref + colb[None, :] + rowb[:, None]
        _check(C, full, bound + np.abs(full), K, np.float32, 3)


@pytest.mark.parametrize("name,ta,tb", [("f64_00", 0, 0), ("f64_11", 1, 1)])
def test_float64(host, name, ta, tb):
    for M, N, K in [(1, 3, 7), (17, 33, 64), (33, 64, 255), (255, 17, 3), (37, 70, 1000), (64, 255, 1)]:
        A, B = _operands(M, N, K, ta, tb, np.float64)
        C = np.full((M, N), np.nan, np.float64)
        host[name](A, B, C, M, N, K)
        ref, bound = _ref(A, B, ta, tb)
        _check(C, ref, bound, K, np.float64)


def test_float64_static(host):
    A, B = _operands(17, 33, 64, 0, 1, np.float64)
    C = np.full((17, 33), np.nan, np.float64)
    host["f64_st_01"](A, B, C, 17, 33, 64)
    ref, bound = _ref(A, B, 0, 1)
    _check(C, ref, bound, 64, np.float64)


@pytest.mark.parametrize("name", ["rt_00", "rt_01", "rt_10", "rt_11", "epi_00", "st_00_100_96_800", "f64_11"])
def test_thread_count_is_bitwise_invariant(host, name):
    k = host[name]
    spec = k.spec
    ta, tb = spec.get("trans_a", False), spec.get("trans_b", False)
    dtype = k.dtype
    if "M" in spec:
        shapes = [(spec["M"], spec["N"], spec["K"])]
    else:  # a split along M, one along N, an uneven one, and fewer tiles than threads
        shapes = [(255, 64, 800), (33, 255, 17), (100, 100, 400), (7, 700, 50), (1, 1, 1)]
    for M, N, K in shapes:
        A, B = _operands(M, N, K, ta, tb, dtype)
        extras = (_RNG.standard_normal(N).astype(dtype),) if spec.get("extra_args") else ()
        outs = []
        for nt in (1, 2, 3):
            C = np.full((M, N), np.nan, dtype)
            k(A, B, C, M, N, K, nthreads=nt, extras=extras)
            outs.append(C)
        ref, bound = _ref(A, B, ta, tb)
        if not extras:
            _check(outs[0], ref, bound, K, dtype)
        for C in outs[1:]:
            assert np.array_equal(C.view(f"u{dtype.itemsize}"), outs[0].view(f"u{dtype.itemsize}"))


def _im2col(X, k, pads):
    """The im2col matrix (N*OH*OW, KH*KW*C) of channels-last images X padded by `pads` (every side), stride 1."""
    Xp = np.pad(X, ((0, 0), (pads, pads), (pads, pads), (0, 0)))
    n, hp, wp, c = Xp.shape
    oh, ow = hp - k + 1, wp - k + 1
    cols = np.stack([Xp[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)], axis=3)
    return Xp, cols.reshape(n * oh * ow, k * k * c)


@pytest.mark.parametrize("n, h, c, k, f", [(3, 7, 5, 3, 6), (2, 9, 32, 3, 40), (1, 5, 1, 5, 3), (4, 6, 13, 1, 17),
                                           (2, 30, 3, 3, 33), (2, 16, 8, 3, 20), (2, 16, 32, 3, 20),
                                           (1, 32, 4, 3, 7),
                                           # filter gradients whose window rows (5 and 6 taps) are tiles of
                                           # their own: threads share M in whole groups (LeNet's first layer)
                                           (2, 12, 1, 5, 6), (3, 10, 2, 3, 8)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_view_is_the_product_over_the_materialized_matrix_bitwise(n, h, c, k, f, dtype):
    """op(A) read through a view (a padded image's im2col matrix, rows (n, oh, ow) and columns (kh, kw, c); and
    its transpose, as the filter gradient reads it) gives bitwise the product over the materialized matrix,
    whichever way it is read (in place by the view's own tiles — whole tiles inside an image row, a K block
    splitting a run — with the other tiles packed; or packed row-major along K, or k-major along M), on 1-3
    threads (sharing M in whole groups where a group is a tile), with K and M spanning several blocks."""
    X = _RNG.standard_normal((n, h, h, c)).astype(dtype)
    Xp, cols = _im2col(X, k, 1)
    _, hp, wp, _ = Xp.shape
    oh = hp - k + 1
    rows = ((0, hp * wp * c), (oh, wp * c), (oh, c))
    taps = ((k, wp * c), (k * c, 1))  # kw and c merge: one run of k*c per kernel row
    M, K = cols.shape
    G = _RNG.standard_normal((M, f)).astype(dtype)
    W = _RNG.standard_normal((K, f)).astype(dtype)
    in_place = {name: gemm_mod._view_tile_ok(v) for name, v in (("fwd", (0, rows, taps)), ("dw", (0, taps, rows)))}
    # in place where the runs are long enough, unless its groups (an output row; a window row's taps) are so short
    # that the view's tiles would run mostly empty (VIEW_TILE_MIN_GROUP)
    short = lambda g: g < gemm_mod.VIEW_TILE_MIN_GROUP  # noqa: E731
    assert in_place == {"fwd": k * c >= 5 and not short(oh), "dw": oh >= 5 and not short(k * c)}
    mods = _build({"fwd": dict(dtype=dtype, a_view=(0, rows, taps)), "dw": dict(dtype=dtype, a_view=(0, taps, rows)),
                   "plain": dict(dtype=dtype), "plain_t": dict(dtype=dtype, trans_a=True)}, host_target())
    for name, (Aview, B, mm, nn, kk, plain, Ab) in {
            "fwd": (Xp, W, M, f, K, "plain", cols), "dw": (Xp, G, K, f, M, "plain_t", cols)}.items():
        want = mods[plain](Ab, B, np.full((mm, nn), np.nan, dtype), mm, nn, kk)
        ref, bound = _ref(Ab, B, name == "dw", False)
        _check(want, ref, bound, kk, np.dtype(dtype))
        flat = np.ascontiguousarray(Aview).reshape(-1, 1)  # the view reads the image's storage
        for nt in (1, 2, 3):
            got = mods[name](flat, B, np.full((mm, nn), np.nan, dtype), mm, nn, kk, nthreads=nt)
            assert np.array_equal(got, want), (name, nt)


@pytest.mark.parametrize("level", ["x86-64", "x86-64-v3"])
def test_portable_targets(level):
    target = level_target(level)
    cfg = default_config(target)
    assert cfg.nr == 2 * target.f32_lanes
    ks = _build(
        {
            "p_epi_00": dict(epilogue=bias_relu, extra_args=[ir.PointerType()]),
            "p_acc_11": dict(accumulate=True, trans_a=True, trans_b=True),
            "p_f64_10": dict(dtype="float64", trans_a=True),
        },
        target,
    )
    for M, N, K in [(1, 3, 7), (17, 33, 64), (7, 17, 33), (64, 255, 1), (255, 7, 300)]:
        A, B = _operands(M, N, K, 0, 0, np.float32)
        bias = _RNG.standard_normal(N).astype(np.float32)
        C = np.full((M, N), np.nan, np.float32)
        ks["p_epi_00"](A, B, C, M, N, K, extras=(bias,))
        ref, bound = _ref(A, B, 0, 0)
        _check(C, np.maximum(ref + bias, 0), bound + np.abs(bias), K, np.float32)

        A, B = _operands(M, N, K, 1, 1, np.float32)
        C0 = _RNG.standard_normal((M, N)).astype(np.float32)
        C = C0.copy()
        ks["p_acc_11"](A, B, C, M, N, K, nthreads=2)
        ref, bound = _ref(A, B, 1, 1)
        _check(C, ref + C0, bound + np.abs(C0), K, np.float32)

        A, B = _operands(M, N, K, 1, 0, np.float64)
        C = np.full((M, N), np.nan, np.float64)
        ks["p_f64_10"](A, B, C, M, N, K)
        ref, bound = _ref(A, B, 1, 0)
        _check(C, ref, bound, K, np.float64)


def test_workspace_bytes():
    t = host_target()
    one = workspace_bytes(1024, 1024, 1024, 1, t)
    assert one % 64 == 0 and one > 0
    assert workspace_bytes(1024, 1024, 1024, 3, t) == 3 * one
    assert workspace_bytes(5, 5, 5, 1, t) < one  # small problems need small slices
    assert workspace_bytes(5, 5, 5, 1, t, "float64") > workspace_bytes(5, 5, 5, 1, t)
    with pytest.raises(ValueError):
        workspace_bytes(4, 4, 4, 0, t)


def test_rejects_bad_arguments():
    t = host_target()
    with pytest.raises(ValueError):
        emit_gemm(ir.Module(), "g", target=t, M=4, N=4, K=0)
    with pytest.raises(ValueError):
        emit_gemm(ir.Module(), "g", target=t, M=None, N=None, K=None, dtype="int8")
    with pytest.raises(ValueError):
        GemmConfig(mr=12, nr=32, kc=250, mc=480, nc=3072, unroll=4)
    with pytest.raises(ValueError):
        emit_gemm(ir.Module(), "g", target=t, M=None, N=None, K=None,
                  config=GemmConfig(mr=4, nr=12, kc=64, mc=64, nc=96))


def test_b_in_place_and_packed_agree_bitwise(host):
    """Narrow B is read in place, wide B (ldb > 512 here) is packed: the same arithmetic either way."""
    k = host["rt_00"]
    for M, N, K in [(100, 70, 300), (7, 33, 17), (256, 255, 64)]:
        A, _ = _operands(M, N, K, 0, 0, np.float32)
        B_wide = _RNG.standard_normal((K, 600)).astype(np.float32)
        B_narrow = np.ascontiguousarray(B_wide[:, :N])
        C1 = np.full((M, N), np.nan, np.float32)
        C2 = np.full((M, N), np.nan, np.float32)
        k(A, B_narrow, C1, M, N, K)
        k(A, B_wide[:, :N], C2, M, N, K)
        assert np.array_equal(C1.view(np.uint32), C2.view(np.uint32))
        ref, bound = _ref(A, B_narrow, 0, 0)
        _check(C1, ref, bound, K, np.float32)


def test_resident_b_sums_the_same_k_blocks_in_the_same_order(host):
    """With several K blocks and M blocks and a B block that fits in L2, a thread packs all of B first and runs
    M blocks outside K blocks (C stays in L2 while its K blocks are summed): each row is bitwise the row that a
    product of fewer rows (one M block: the usual order) computes, with and without an epilogue, on 1-3 threads."""
    from graphc.codegen.gemm import _resident

    cfg = default_config(host_target())
    M, N, K = 500, 40, 600
    assert _resident(M, N, K, cfg, 4) and not _resident(200, N, K, cfg, 4)
    for name, ta, tb in (("rt_00", 0, 0), ("rt_11", 1, 1), ("epi_00", 0, 0)):
        k = host[name]
        A, B = _operands(M, N, K, ta, tb, np.float32)
        extras = (_RNG.standard_normal(N).astype(np.float32),) if name.startswith("epi") else ()
        few = np.ascontiguousarray(A[:, :200] if ta else A[:200])
        C_few = np.full((200, N), np.nan, np.float32)
        k(few, B, C_few, 200, N, K, extras=extras)
        for nt in (1, 2, 3):
            C = np.full((M, N), np.nan, np.float32)
            k(A, B, C, M, N, K, nthreads=nt, extras=extras)
            assert np.array_equal(C[:200].view(np.uint32), C_few.view(np.uint32)), (name, nt)
        if not extras:
            ref, bound = _ref(A, B, ta, tb)
            _check(C, ref, bound, K, np.float32)


@pytest.mark.parametrize("name,ta,tb", [("rt_00", 0, 0), ("rt_10", 1, 0), ("rt_11", 1, 1), ("acc_00", 0, 0),
                                         ("epi_rc_10", 1, 0), ("epi_acc_01", 0, 1)])
def test_last_rows_and_a_in_place_bitwise_as_whole_panels(host, name, ta, tb):
    """An M range that leaves 13-16 rows after its 12-row panels runs them as two 8-row tiles reading A in
    place (the first storing only the rows the second does not); a transposed A is read in place, its last
    1-11 rows by an 8-row tile and single rows. Each row is bitwise the row a product with whole panels computes
    (the same rows of A and one more panel), through accumulation, epilogues given the row and column, strided
    A, several K blocks and 1-3 threads (whose ranges end in such rows too)."""
    k = host[name]
    for M, N, K in [(25, 40, 70), (28, 33, 600), (64, 70, 300), (100, 65, 33), (20, 33, 40), (33, 40, 600),
                    (47, 65, 300)]:
        big = -(-M // 12) * 12
        A, B = _operands(big, N, K, ta, tb, np.float32, strided=True)
        A_m = A[:, :M] if ta else A[:M]
        extras = ()
        if name.startswith("epi_rc"):
            extras = (_RNG.standard_normal(N).astype(np.float32), _RNG.standard_normal(big).astype(np.float32))
        elif name.startswith("epi"):
            extras = (_RNG.standard_normal(N).astype(np.float32),)
        C0 = _RNG.standard_normal((big, N)).astype(np.float32)
        whole = C0.copy()
        k(A, B, whole, big, N, K, extras=extras)
        for nt in (1, 2, 3):
            C = C0[:M].copy()
            k(A_m, B, C, M, N, K, nthreads=nt, extras=extras)
            assert np.array_equal(C.view(np.uint32), whole[:M].view(np.uint32)), (name, M, nt)
        if not extras:
            ref, bound = _ref(A_m, B, ta, tb)
            old = C0[:M] if name.startswith("acc") else 0
            _check(C, ref + old, bound + np.abs(old), K, np.float32)


@pytest.mark.parametrize("name,ta,tb", [("rt_00", 0, 0), ("rt_10", 1, 0), ("rt_01", 0, 1), ("acc_00", 0, 0),
                                        ("epi_00", 0, 0), ("epi_rc_10", 1, 0), ("f64_00", 0, 0)])
def test_one_panel_of_columns_is_bitwise_those_columns_of_a_wider_product(host, name, ta, tb):
    """A product whose columns fit one B panel (N <= NR: an output layer's 10 classes) reads A in place with the
    narrow kernels (A packed would serve one panel), whose last rows on AVX2 run as 4-row tiles (`small_split`):
    each element is still the same fmuladd chain over the same K blocks, so its columns are bitwise those columns
    of a product several panels wide (packed A), for row counts that leave every remainder of the 6- and 4-row
    groups, through accumulation, epilogues given the row and column, strided operands, several K blocks and
    1-3 threads."""
    k = host[name]
    dtype = np.float64 if name.startswith("f64") else np.float32
    bits = np.uint64 if dtype == np.float64 else np.uint32
    for M, n, K in [(7, 10, 40), (9, 12, 50), (31, 16, 300), (64, 3, 33), (99, 10, 257), (200, 8, 70), (26, 1, 600)]:
        wide = 3 * 32 + 5
        A, B = _operands(M, wide, K, ta, tb, dtype, strided=True)
        B_n = B[:n] if tb else B[:, :n]
        extras = ()
        if name.startswith("epi_rc"):
            extras = (_RNG.standard_normal(wide).astype(dtype), _RNG.standard_normal(M).astype(dtype))
        elif name.startswith("epi"):
            extras = (_RNG.standard_normal(wide).astype(dtype),)
        C0 = _RNG.standard_normal((M, wide)).astype(dtype)
        whole = C0.copy()
        k(A, B, whole, M, wide, K, extras=extras)
        for nt in (1, 2, 3):
            C = np.ascontiguousarray(C0[:, :n])
            k(A, B_n, C, M, n, K, nthreads=nt, extras=tuple(e[:n] if len(e) == wide else e for e in extras))
            assert np.array_equal(C.view(bits), whole[:, :n].view(bits)), (name, M, n, K, nt)


@pytest.mark.parametrize("name,ta", [("rt_00", 0), ("rt_10", 1), ("acc_00", 0), ("epi_00", 0), ("epi_rc_10", 1),
                                     ("small_00", 0), ("f64_00", 0)])
def test_a_few_rows_are_bitwise_those_rows_of_a_batch(host, name, ta):
    """Up to four rows of op(A) against a stored B run as GEMVs (B streamed row by row, nothing packed). Each
    element is still the GEMM's sum (the same K blocks, each one fmuladd chain from zero), so rows computed
    alone are bitwise those rows of a batch: through accumulation, epilogues given the row and column, strided operands,
    several K blocks, columns past a chunk of the GEMV and partial vectors, on 1-3 threads."""
    k = host[name]
    dtype = np.float64 if name.startswith("f64") else np.float32
    bits = np.uint64 if dtype == np.float64 else np.uint32
    for M, N, K in [(13, 70, 600), (5, 2100, 40), (4, 33, 257), (4, 1, 300), (4, 4099, 3)]:
        A, B = _operands(M, N, K, ta, 0, dtype, strided=True)
        C0 = _RNG.standard_normal((M, N)).astype(dtype)
        extras = ()
        if name.startswith("epi_rc"):
            extras = (_RNG.standard_normal(N).astype(dtype), _RNG.standard_normal(M).astype(dtype))
        elif name.startswith("epi") or name == "small_00":  # a bias and relu
            extras = (_RNG.standard_normal(N).astype(dtype),)
        whole = C0.copy()
        k(A, B, whole, M, N, K, extras=extras)
        for r, m in ((0, 1), (M - 1, 1), (0, min(M, 2)), (M - 3, 3), (M - 4, 4)):  # up to GEMV_MAX_ROWS rows
            part = extras if not name.startswith("epi_rc") else (extras[0], extras[1][r:r + m])
            for nt in (1, 2, 3):
                C = C0[r:r + m].copy()
                k(A[:, r:r + m] if ta else A[r:r + m], B, C, m, N, K, nthreads=nt, extras=part)
                assert np.array_equal(C.view(bits), whole[r:r + m].view(bits)), (name, M, N, K, r, m, nt)
        if not extras:
            ref, bound = _ref(A, B, ta, 0)
            old = C0 if name.startswith("acc") else 0
            _check(whole, ref + old, bound + np.abs(old), K, np.dtype(dtype))


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_b_packed_ahead_of_time_gives_the_packed_products_bits(tb, dtype):
    """`emit_prepack` packs op(B) once (a loop-invariant weight matrix, before the loop); `emit_gemm(...,
    prepacked_b=True)` then reads its panels instead of packing B. Every element is the same K-blocked sum, so
    C is bitwise the ordinary product's: any M (the GEMV rows, the narrow kernels, whole panels, several M
    blocks), N not a multiple of NR, K over several K blocks, an epilogue and accumulation, 1-3 threads for the
    packing and for the product."""
    t = host_target()
    mod = ir.Module()
    for name, pre in (("plain", False), ("pre", True)):
        emit_gemm(mod, name, target=t, M=None, N=None, K=None, trans_b=tb, dtype=dtype, accumulate=True,
                  epilogue=bias_relu, extra_args=[ir.PointerType()], prepacked_b=pre)
    gemm_mod.emit_prepack(mod, "prepack", target=t, N=None, K=None, trans_b=tb, dtype=dtype)
    eng = compile_ir(str(mod), t)
    plain = Kernel(eng, "plain", {"dtype": dtype, "extra_args": [0]}, t)
    pre = eng.function("pre", None, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I32, _I32, _P, _P)
    pack = eng.function("prepack", None, _P, _P, _I64, _I64, _I64, _I32, _I32)

    def run_threads(fn, args, nt, after=()):  # fn(*args, tid, nt, *after) on nt threads
        ts = [threading.Thread(target=fn, args=(*args, tid, nt, *after)) for tid in range(nt)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()

    for M, N, K in [(1, 70, 600), (3, 1100, 40), (13, 33, 257), (64, 100, 300), (300, 17, 64)]:
        A, B = _operands(M, N, K, False, tb, np.dtype(dtype), strided=True)
        bias = _RNG.standard_normal(N).astype(dtype)
        C0 = _RNG.standard_normal((M, N)).astype(dtype)
        want = plain(A, B, C0.copy(), M, N, K, extras=(bias,))
        ldb = B.strides[0] // B.itemsize
        for nt in (1, 2, 3):
            packed = _aligned_workspace(gemm_mod.prepacked_elements(N, K, t, dtype) * np.dtype(dtype).itemsize)
            packed[:] = 0xFF  # every element the product reads must be written by the packing (else NaN)
            run_threads(pack, (packed.ctypes.data, B.ctypes.data, N, K, ldb), nt)
            C = C0.copy()
            ws = _aligned_workspace(workspace_bytes(M, N, K, nt, t, dtype))
            run_threads(pre, (A.ctypes.data, B.ctypes.data, C.ctypes.data, M, N, K, A.strides[0] // A.itemsize, ldb,
                              N, ws.ctypes.data), nt, (packed.ctypes.data, bias.ctypes.data))
            assert np.array_equal(C, want, equal_nan=True), (M, N, K, nt)
            assert np.isfinite(C).all()


def test_small_blocks_and_other_loop_order(host):
    for M, N, K in [(50, 200, 70), (3, 65, 33), (255, 64, 17)]:
        for nt in (1, 3):
            A, B = _operands(M, N, K, 0, 0, np.float32)
            bias = _RNG.standard_normal(N).astype(np.float32)
            C = np.full((M, N), np.nan, np.float32)
            host["small_00"](A, B, C, M, N, K, nthreads=nt, extras=(bias,))
            ref, bound = _ref(A, B, 0, 0)
            _check(C, np.maximum(ref + bias, 0), bound + np.abs(bias), K, np.float32)

            A, B = _operands(M, N, K, 1, 1, np.float32)
            C0 = _RNG.standard_normal((M, N)).astype(np.float32)
            C = C0.copy()
            host["small_11"](A, B, C, M, N, K, nthreads=nt)
            ref, bound = _ref(A, B, 1, 1)
            _check(C, ref + C0, bound + np.abs(C0), K, np.float32)

            A, B = _operands(M, N, K, 1, 0, np.float32)
            C1 = np.full((M, N), np.nan, np.float32)
            C2 = np.full((M, N), np.nan, np.float32)
            host["jrir_10"](A, B, C1, M, N, K, nthreads=nt)
            host["rt_10"](A, B, C2, M, N, K)
            assert np.array_equal(C1.view(np.uint32), C2.view(np.uint32))


# ----------------------------------------------------------------------------------- shared helpers


def _defined(mod: ir.Module) -> list[str]:
    return [f.name for f in mod.functions if f.blocks]


def test_helpers_are_emitted_once_per_module():
    """Every GEMM of a module shares one driver, one microkernel and the packing routines it needs; only the
    epilogue pass is per GEMM, and the epilogue callback runs once per GEMM (not per register and path)."""
    t = host_target()
    mod = ir.Module()
    calls: dict[str, int] = {}

    def counting(tag):
        def epi(ctx: EpilogueContext) -> ir.Value:
            calls[tag] = calls.get(tag, 0) + 1
            return bias_relu(ctx)
        return epi

    for i, (ta, tb) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (0, 0)]):
        emit_gemm(mod, f"g{i}", target=t, M=None, N=None, K=None, trans_a=bool(ta), trans_b=bool(tb),
                  epilogue=counting(f"g{i}"), extra_args=[ir.PointerType()])
    emit_gemm(mod, "plain", target=t, M=64, N=64, K=64)
    emit_gemm(mod, "f64", target=t, M=None, N=None, K=None, dtype="float64")
    names = _defined(mod)
    assert calls == {f"g{i}": 1 for i in range(5)}
    c32, c64 = default_config(t), default_config(t, "float64")
    s32, s64 = f"f32x{t.f32_lanes}", f"f64x{t.f64_lanes}"
    want = []
    for s, c in ((s32, c32), (s64, c64)):
        base = f"graphc.gemm.ukernel.{s}.{c.mr}x{c.nr}.k{c.unroll}.pf{c.prefetch_c}"
        e = _edge_rows(c)  # the narrower kernel for a last tile of <= e rows (AVX-512: 8 of 12; AVX2: 4 of 6)
        want += [base] + ([f"{base}.r{e}"] if e else [])
        want += [f"{base}.r{r}.sa" if r != c.mr else f"{base}.sa" for r in small_rows(c)]  # A in place, small products
        want += [f"{base}.sa"] if c.mr > 8 else []  # a transposed A in place, whole tiles
        want += [f"{base}.rm{c.kc}"] + ([f"{base}.r{e}.rm{c.kc}"] if e else [])  # row-major view blocks
    assert sorted(n for n in names if "ukernel" in n) == sorted(want)
    assert len([n for n in names if ".driver." in n]) == 2  # one per dtype (config)
    assert sorted(n for n in names if ".pack_" in n) == sorted([
        f"graphc.gemm.pack_copy.{s32}.w{c32.mr}", f"graphc.gemm.pack_copy.{s32}.w{c32.nr}",
        f"graphc.gemm.pack_trans.{s32}.w{c32.mr}", f"graphc.gemm.pack_trans.{s32}.w{c32.nr}",
        f"graphc.gemm.pack_trans.{s64}.w{c64.mr}", f"graphc.gemm.pack_copy.{s64}.w{c64.nr}"])
    assert sorted(n for n in names if n.endswith(".epilogue")) == [f"g{i}.epilogue" for i in range(5)]
    # a GEMM without epilogue adds only its wrapper
    before = set(names)
    emit_gemm(mod, "plain2", target=t, M=None, N=None, K=None, trans_b=True)
    assert set(_defined(mod)) - before == {"plain2"}


def test_helper_name_taken_by_something_else():
    t = level_target("x86-64-v4")
    mod = ir.Module()
    ir.Function(mod, ir.FunctionType(ir.VoidType(), []), "graphc.gemm.ukernel.f32x16.12x32.k4.pf3")
    with pytest.raises(ValueError, match="not the GEMM helper"):
        emit_gemm(mod, "g", target=t, M=None, N=None, K=None)


def test_compile_cost_grows_slowly_with_gemms():
    """The IR of 8 GEMMs with different epilogues and transpositions is well under twice that of one (it used
    to be 8 times: a microkernel, with the epilogue in every store path, per GEMM)."""
    t = host_target()

    def module(n):
        mod = ir.Module()
        for i in range(n):
            emit_gemm(mod, f"g{i}", target=t, M=None, N=None, K=None, trans_a=bool(i & 1), trans_b=bool(i & 2),
                      accumulate=bool(i & 4), epilogue=(bias_relu, row_col_bias)[i % 2],
                      extra_args=[ir.PointerType()] * (1 + i % 2))
        return len(str(mod))

    assert module(8) < 1.7 * module(1)


def test_epilogue_mask_only_where_columns_can_be_partial():
    t = host_target()
    nr = default_config(t).nr
    seen = {}

    def probe(tag):
        def epi(ctx: EpilogueContext) -> ir.Value:
            seen[tag] = ctx.mask
            return ctx.acc
        return epi

    mod = ir.Module()
    emit_gemm(mod, "full", target=t, M=None, N=4 * nr, K=None, epilogue=probe("full"))
    emit_gemm(mod, "edge", target=t, M=None, N=4 * nr + 1, K=None, epilogue=probe("edge"))
    emit_gemm(mod, "rt", target=t, M=None, N=None, K=None, epilogue=probe("rt"))
    assert seen["full"] is None
    assert seen["edge"] is not None and seen["rt"] is not None


def scale_to_other(ctx: EpilogueContext) -> ir.Value:
    """Stores 2*acc into a second matrix (extra arg 0, row stride in extra arg 1), masked; C = acc + 1."""
    b = ctx.builder
    ld = b.load(ctx.extra_args[1], typ=ir.IntType(64))
    p = b.gep(ctx.extra_args[0], [b.add(b.mul(ctx.row, ld), ctx.col)], inbounds=True, source_etype=ctx.elem_type)
    two = b.fmul(ctx.acc, ctx.splat(ir.Constant(ctx.elem_type, 2.0)))
    if ctx.mask is None:
        b.store(two, p, align=4)
    else:
        name = f"llvm.masked.store.v{ctx.lanes}f32.p0"
        fn = b.module.globals.get(name) or ir.Function(
            b.module, ir.FunctionType(ir.VoidType(), [ctx.acc.type, ir.PointerType(), ir.IntType(32), ctx.mask.type]),
            name)
        b.call(fn, [two, p, ir.Constant(ir.IntType(32), 4), ctx.mask])
    return b.fadd(ctx.acc, ctx.splat(ir.Constant(ctx.elem_type, 1.0)))


def test_epilogue_stores_to_another_buffer():
    """An epilogue writing a second output (like graphc's fused in-place updates): every element exactly once,
    nothing outside the matrix, bitwise the same for any thread count, with K over several K blocks."""
    t = host_target()
    ks = _build({"other": dict(epilogue=scale_to_other, extra_args=[ir.PointerType(), ir.PointerType()],
                               accumulate=True)}, t)
    k = ks["other"]
    for M, N, K in [(17, 33, 64), (37, 70, 1000), (1, 1, 1), (255, 7, 300)]:
        A, B = _operands(M, N, K, 0, 0, np.float32)
        C0 = _RNG.standard_normal((M, N)).astype(np.float32)
        ref, bound = _ref(A, B, 0, 0)
        outs = []
        for nt in (1, 3):
            C = C0.copy()
            D = np.full((M, N + 3), -7.0, np.float32)
            ld = np.array([N + 3], np.int64)
            k(A, B, C, M, N, K, nthreads=nt, extras=(D, ld))
            assert np.all(D[:, N:] == -7.0)
            _check(D[:, :N], 2 * (ref + C0), 2 * (bound + np.abs(C0)), K, np.float32)
            assert np.array_equal(C, (D[:, :N] / 2 + 1).astype(np.float32))
            outs.append((C, D))
        assert np.array_equal(outs[0][0].view(np.uint32), outs[1][0].view(np.uint32))
        assert np.array_equal(outs[0][1].view(np.uint32), outs[1][1].view(np.uint32))
