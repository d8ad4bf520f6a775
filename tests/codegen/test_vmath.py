"""Accuracy and special-value tests for graphc.codegen.vmath, JIT-compiled on the host and on generic x86-64
levels (SSE2 without FMA, AVX2 with FMA)."""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np
import pytest
from llvmlite import ir

from graphc.codegen import vmath
from graphc.codegen.target import assembly, compile_ir, host_target, level_target

NAMES = ["exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "erf", "sqrt"]
TINY32 = float(np.finfo(np.float32).tiny)
MAX32 = float(np.finfo(np.float32).max)
TOL32 = 2e-7

try:  # scipy is optional: fall back to math.erf lane by lane
    from scipy.special import erf as _erf64
except ImportError:  # pragma: no cover - depends on the environment
    _erf64 = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


TRUTH = {
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "tanh": np.tanh,
    "sigmoid": _sigmoid64,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "erf": _erf64,
    "sqrt": np.sqrt,
}


# ---------------------------------------------------------------------------------------------------------
# Kernels: one module (one compile) per (target, element type, lanes)
# ---------------------------------------------------------------------------------------------------------


class Kernels:
    def __init__(self, target=None, elem=vmath.F32, lanes=16):
        m = ir.Module(name="vmath_test")
        for nm in NAMES:
            vmath.emit_unary_kernel(m, f"k_{nm}", vmath.EMITTERS[nm], elem, lanes, target or host_target())
        self.ir = str(m)
        self.target = target
        self.engine = compile_ir(self.ir, target)
        p = ctypes.c_void_p
        self.fns = {nm: self.engine.function(f"k_{nm}", None, p, p, ctypes.c_int64) for nm in NAMES}
        self.dtype = np.float32 if elem == vmath.F32 else np.float64

    def __call__(self, name, x):
        x = np.ascontiguousarray(x, dtype=self.dtype)
        y = np.empty_like(x)
        self.fns[name](x.ctypes.data, y.ctypes.data, x.size)
        return y


@pytest.fixture(scope="module")
def k16():
    return Kernels(None, vmath.F32, 16)


@pytest.fixture(scope="module")
def k_small_widths():
    return {lanes: Kernels(None, vmath.F32, lanes) for lanes in (8, 4, 1)}


@pytest.fixture(scope="module")
def k_levels():
    return {
        "x86-64/4": Kernels(level_target("x86-64"), vmath.F32, 4),
        "x86-64/1": Kernels(level_target("x86-64"), vmath.F32, 1),
        "x86-64-v3/8": Kernels(level_target("x86-64-v3"), vmath.F32, 8),
    }


@pytest.fixture(scope="module")
def k64():
    return {lanes: Kernels(None, vmath.F64, lanes) for lanes in (8, 1)}


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


# Range limits and internal switch points of the float32 algorithms (and of the functions themselves).
THRESHOLDS = (88.72283, 88.8, 88.37626, -87.33654, -87.5, 87.5, -88.0, -103.97208, -104.0, -18.0, -17.3, 16.6, -16.6)
THRESHOLDS += (9.01, 9.1, 3.92, 4.0, 0.625, 0.75, 0.875, 0.41421357, -0.29289323, 1.4142135, 0.70710677, -1.0, 1.0)
THRESHOLDS += (TINY32, -TINY32)


def _around(values, k=2048):
    """k consecutive float32 values on each side of each value."""
    out = []
    for v in values:
        b = np.array([v], dtype=np.float32).view(np.int32)[0]
        out.append(np.arange(b - k, b + k, dtype=np.int64).astype(np.int32).view(np.float32))
    return np.concatenate(out)


def sweep(seed: int, n: int) -> np.ndarray:
    """About 6n float32 points: random bit patterns, wide and narrow uniform ranges, log-spaced magnitudes
    down to subnormals, every float in [0.5, 2) at a stride, and neighbourhoods of the functions' range
    limits and internal thresholds. NaN/inf are dropped (they have their own tests)."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.uniform(-110, 95, n).astype(np.float32),
        rng.uniform(-20, 20, n).astype(np.float32),
        rng.uniform(-5, 5, n).astype(np.float32),
        (10.0 ** rng.uniform(-45, 1, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32),
        np.arange(0x3F000000, 0x40000000, max(1, (1 << 24) // n), dtype=np.uint32).view(np.float32),
        _around(THRESHOLDS),
    ]
    x = np.concatenate(parts)
    return x[np.isfinite(x)]


@pytest.fixture(scope="module")
def big_sweep():
    x = sweep(1, 700_000)
    xd = x.astype(np.float64)
    with np.errstate(all="ignore"):
        truth = {nm: TRUTH[nm](xd) for nm in NAMES}
    return x, truth


@pytest.fixture(scope="module")
def small_sweep():
    x = sweep(2, 100_000)
    xd = x.astype(np.float64)
    with np.errstate(all="ignore"):
        truth = {nm: TRUTH[nm](xd) for nm in NAMES}
    return x, truth


def max_rel_err(y: np.ndarray, t: np.ndarray) -> tuple[float, int]:
    """Max relative error over the points whose true result is a normal float32 (and the index)."""
    ok = np.isfinite(t) & (np.abs(t) >= TINY32) & (np.abs(t) <= MAX32)
    with np.errstate(all="ignore"):
        rel = np.where(ok, np.abs(y.astype(np.float64) - t) / np.abs(t), 0.0)
    i = int(np.argmax(rel))
    return float(rel[i]), i


def assert_accurate(kern: Kernels, name: str, x, truth, tol=TOL32):
    y = kern(name, x)
    err, i = max_rel_err(y, truth)
    assert err <= tol, f"{name}: max rel err {err:.3e} at x={x[i]!r}: got {y[i]!r}, want {truth[i]!r}"
    # Where the truth is not a normal float: overflow gives inf, NaN gives NaN, underflow stays tiny.
    t = truth
    with np.errstate(all="ignore"):
        assert np.array_equal(np.isnan(y), np.isnan(t)), f"{name}: NaN mismatch"
        over = np.isfinite(t) & (np.abs(t) > MAX32 * (1 + 2**-24))
        assert np.all(y[over] == np.sign(t[over]) * np.inf), f"{name}: overflow must give inf"
        inf = np.isinf(t)
        assert np.all(y[inf] == t[inf]), f"{name}: infinite results must match"
        under = np.isfinite(t) & (np.abs(t) < TINY32)
        assert np.all(np.abs(y[under]) <= TINY32), f"{name}: underflow must give a subnormal or 0"
    return err


# ---------------------------------------------------------------------------------------------------------
# float32 accuracy
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_f32_accuracy_avx512_width(k16, big_sweep, name):
    x, truth = big_sweep
    assert x.size > 4_000_000
    assert_accurate(k16, name, x, truth[name])


def test_avx512_exp_form():
    """With an AVX-512 target, exp of <16 x float> is the vscalefps form (13 vector instructions); on AVX2 and
    at other widths it is the portable one, without calls. The accuracy sweeps above run whichever the host
    compiles: where the host has AVX-512, the k16 kernels are the vscalefps form."""
    def asm(level, lanes):
        m = ir.Module(name="expform")
        vmath.emit_unary_kernel(m, "k", vmath.exp, vmath.F32, lanes, level_target(level))
        return assembly(str(m), level_target(level))

    v4 = asm("x86-64-v4", 16)
    assert "vscalefps" in v4 and not CALL.search(v4)
    for level, lanes in (("x86-64-v3", 16), ("x86-64-v4", 8), ("x86-64", 4)):
        a = asm(level, lanes)
        assert "vscalef" not in a and not CALL.search(a), (level, lanes)


def test_avx512_exp_specials_and_subnormals():
    """The vscalefps exp on every float32 around its clamps and the subnormal range, where it differs most
    from the portable form (skipped where the host cannot run AVX-512 code)."""
    host = host_target()
    if host.vector_bits < 512:
        pytest.skip("the host has no AVX-512F: the vscalefps form cannot run here (its code is checked above)")
    k = Kernels(host, vmath.F32, 16)
    assert "vscalefps" in assembly(k.ir, host)
    lo = np.array([-110.0], np.float32).view(np.int32)[0]
    hi = np.array([-85.0], np.float32).view(np.int32)[0]
    x = np.concatenate([np.arange(hi, lo, dtype=np.int32).view(np.float32),  # every float in [-110, -85]
                        np.linspace(88.0, 90.0, 100_001, dtype=np.float32),
                        np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 3e38, -3e38, 0.0, -0.0], np.float32)])
    y = k("exp", x)
    with np.errstate(over="ignore"):
        t = np.exp(x.astype(np.float64))
    fin = np.isfinite(x)
    normal = fin & (t >= TINY32) & (t <= MAX32)
    assert np.max(np.abs(y[normal] - t[normal]) / t[normal]) <= TOL32
    sub = fin & (t < TINY32)  # subnormal results and zeros: rounded once
    assert np.all(np.abs(y[sub].astype(np.float64) - t[sub]) <= 2.0**-149 * 0.5 + 2e-7 * t[sub])
    assert np.all(y[fin & (t > MAX32)] == np.inf)
    assert np.isnan(y[np.isnan(x)]).all() and y[x == np.inf][0] == np.inf and y[x == -np.inf][0] == 0.0
    assert np.all(y[x == 0] == 1.0)


@pytest.mark.parametrize("lanes", [8, 4, 1])
def test_f32_accuracy_other_widths(k_small_widths, small_sweep, lanes):
    x, truth = small_sweep
    for name in NAMES:
        assert_accurate(k_small_widths[lanes], name, x, truth[name])


@pytest.mark.parametrize("level", ["x86-64/4", "x86-64/1", "x86-64-v3/8"])
def test_f32_accuracy_generic_levels(k_levels, small_sweep, level):
    """SSE2 (no FMA: `contract` products stay separate) and AVX2+FMA targets are as accurate."""
    x, truth = small_sweep
    for name in NAMES:
        assert_accurate(k_levels[level], name, x, truth[name])


def test_tail_lengths(k16):
    """Lengths that are not a multiple of the vector width use the scalar tail loop."""
    x = np.linspace(-3, 3, 37, dtype=np.float32)
    for n in (0, 1, 15, 16, 17, 33, 37):
        y = k16("exp", x[:n])
        np.testing.assert_allclose(y, np.exp(x[:n].astype(np.float64)), rtol=2e-7)


# ---------------------------------------------------------------------------------------------------------
# float32 special values
# ---------------------------------------------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")

SPECIAL = {
    "exp": [
        (-INF, 0.0),
        (INF, INF),
        (89.0, INF),
        (1e30, INF),
        (-104.0, 0.0),
        (-1e30, 0.0),
        (0.0, 1.0),
        (-0.0, 1.0),
        (NAN, NAN),
    ],
    "log": [
        (0.0, -INF),
        (-0.0, -INF),
        (-1.0, NAN),
        (-INF, NAN),
        (INF, INF),
        (NAN, NAN),
        (1.0, 0.0),
        (MAX32, math.log(MAX32)),
    ],
    "log1p": [
        (-1.0, -INF),
        (-1.5, NAN),
        (-INF, NAN),
        (INF, INF),
        (NAN, NAN),
        (0.0, 0.0),
        (-0.0, -0.0),
        (MAX32, math.log(MAX32)),
        (2.0**-100, 2.0**-100),
        (-(2.0**-100), -(2.0**-100)),
    ],
    "expm1": [
        (-INF, -1.0),
        (INF, INF),
        (89.0, INF),
        (-30.0, -1.0),
        (0.0, 0.0),
        (-0.0, -0.0),
        (NAN, NAN),
        (2.0**-100, 2.0**-100),
        (-(2.0**-100), -(2.0**-100)),
        (88.5, math.expm1(88.5)),
    ],
    "tanh": [
        (INF, 1.0),
        (-INF, -1.0),
        (20.0, 1.0),
        (-20.0, -1.0),
        (1e30, 1.0),
        (0.0, 0.0),
        (-0.0, -0.0),
        (NAN, NAN),
        (2.0**-100, 2.0**-100),
        (-(2.0**-100), -(2.0**-100)),
        (2.0**-140, 2.0**-140),
    ],
    "sigmoid": [
        (INF, 1.0),
        (-INF, 0.0),
        (20.0, 1.0),
        (100.0, 1.0),
        (1e30, 1.0),
        (-1e30, 0.0),
        (-100.0, 0.0),
        (0.0, 0.5),
        (NAN, NAN),
    ],
    "softplus": [
        (INF, INF),
        (-INF, 0.0),
        (2.0**100, 2.0**100),
        (-1e30, 0.0),
        (100.0, 100.0),
        (30.0, 30.0),
        (MAX32, MAX32),
        (0.0, math.log(2.0)),
        (NAN, NAN),
    ],
    "erf": [
        (INF, 1.0),
        (-INF, -1.0),
        (4.0, 1.0),
        (1e30, 1.0),
        (-1e30, -1.0),
        (0.0, 0.0),
        (-0.0, -0.0),
        (NAN, NAN),
        (2.0**-100, 2 / math.sqrt(math.pi) * 2.0**-100),
    ],
    "sqrt": [(INF, INF), (-1.0, NAN), (0.0, 0.0), (-0.0, -0.0), (NAN, NAN), (4.0, 2.0)],
}


def check_special(kern: Kernels, name: str, rtol: float, cases=None):
    cases = SPECIAL[name] if cases is None else cases
    xs = np.array([a for a, _ in cases], dtype=kern.dtype)
    want = np.array([b for _, b in cases], dtype=np.float64)
    # Repeat so that every case is seen by the vector body and by the scalar tail.
    ys = kern(name, np.concatenate([np.repeat(xs, 16), xs])).reshape(-1)
    got = np.concatenate([ys[: 16 * xs.size].reshape(xs.size, 16), ys[16 * xs.size :, None]], axis=1)
    for j, (x, w) in enumerate(zip(xs, want, strict=True)):
        row = got[j].astype(np.float64)
        if math.isnan(w):
            assert np.all(np.isnan(row)), f"{name}({x}) = {row[0]}, want nan"
        elif w == 0.0 or math.isinf(w):
            assert np.all(row == w), f"{name}({x}) = {row[0]}, want {w}"
            assert np.all(np.signbit(row) == np.signbit(w)), f"{name}({x}) = {row[0]}: sign of zero"
        else:
            np.testing.assert_allclose(row, w, rtol=rtol, err_msg=f"{name}({x})")


@pytest.mark.parametrize("name", NAMES)
def test_f32_special_values(k16, k_levels, name):
    check_special(k16, name, TOL32)
    check_special(k_levels["x86-64/4"], name, TOL32)


def test_f32_identities(k16):
    # sigmoid(+large) is exactly 1 and sigmoid(-large) decays to 0 without NaN.
    x = np.linspace(17, 1e4, 1000, dtype=np.float32)
    assert np.all(k16("sigmoid", x) == 1.0)
    y = k16("sigmoid", -x)
    assert np.all(np.isfinite(y)) and np.all(y >= 0) and np.all(np.diff(y) <= 0)
    # softplus(x) == x for large x, finite for |x| up to 1e30, and >= max(x, 0).
    x = np.concatenate([np.linspace(17, 1e4, 1000), np.geomspace(1e4, 1e30, 100)]).astype(np.float32)
    np.testing.assert_array_equal(k16("softplus", x), x)
    assert np.all(k16("softplus", -x) >= 0) and np.all(np.isfinite(k16("softplus", -x)))
    # tanh and erf are odd and bounded by 1.
    x = np.random.default_rng(3).standard_normal(10_000).astype(np.float32) * 5
    for name in ("tanh", "erf"):
        np.testing.assert_array_equal(k16(name, -x), -k16(name, x))
        assert np.all(np.abs(k16(name, x)) <= 1.0)


def test_f32_subnormal_log_inputs(k16):
    """log of subnormal inputs is accurate (they are pre-scaled by 2^23)."""
    x = (np.arange(1, 1 << 23, 97, dtype=np.uint32)).view(np.float32)
    y = k16("log", x)
    t = np.log(x.astype(np.float64))
    assert np.max(np.abs(y - t) / np.abs(t)) <= TOL32


def test_f32_subnormal_exp_results(k16):
    """exp produces subnormal results (rounded once, so within half a subnormal ulp of the truth)."""
    x = np.linspace(-103.9, -87.4, 10_000, dtype=np.float32)
    y = k16("exp", x).astype(np.float64)
    t = np.exp(x.astype(np.float64))
    assert np.all(np.abs(y - t) <= 2.0**-149 * 0.5 + 2e-7 * t)


# ---------------------------------------------------------------------------------------------------------
# float64 (per-lane libm calls)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lanes", [8, 1])
def test_f64_accuracy(k64, lanes):
    rng = np.random.default_rng(4)
    x = np.concatenate(
        [
            rng.uniform(-30, 30, 20_000),
            rng.uniform(-800, 800, 5_000),
            10.0 ** rng.uniform(-300, 2, 5_000) * rng.choice([-1, 1], 5_000),
            [0.0, -0.0],
        ]
    )
    for name in NAMES:
        with np.errstate(all="ignore"):
            t = TRUTH[name](x)
        y = k64[lanes](name, x)
        ok = np.isfinite(t) & (np.abs(t) >= np.finfo(np.float64).tiny)
        rel = np.abs(y[ok] - t[ok]) / np.abs(t[ok])
        assert rel.max() <= 1e-14, f"{name}: f64 max rel err {rel.max():.3e}"
        assert np.array_equal(np.isnan(y), np.isnan(t)), name
        assert np.array_equal(y[np.isinf(t)], t[np.isinf(t)]), name


@pytest.mark.parametrize("name", NAMES)
def test_f64_special_values(k64, name):
    """The cases that hold in both precisions: infinities, NaN, zeros, out-of-domain arguments."""
    cases = [
        (a, b)
        for a, b in SPECIAL[name]
        if not math.isfinite(a) or a == 0.0 or a < 0 and name in ("log", "log1p", "sqrt")
    ]
    assert len(cases) >= 4
    check_special(k64[8], name, 1e-14, cases)
    check_special(k64[1], name, 1e-14, cases)


# ---------------------------------------------------------------------------------------------------------
# Emitted code: straight-line, no libm calls for float32, no unsafe fast-math flags, any vector width
# ---------------------------------------------------------------------------------------------------------


def _function_with(name: str, ty: ir.Type) -> tuple[ir.Module, ir.Function]:
    m = ir.Module(name="one")
    fn = ir.Function(m, ir.FunctionType(ty, [ty]), name=f"f_{name}")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    y = vmath.EMITTERS[name](b, fn.args[0])
    assert y.type == ty
    b.ret(y)
    return m, fn


@pytest.mark.parametrize(
    "ty", [vmath.F32, ir.VectorType(vmath.F32, 4), ir.VectorType(vmath.F32, 7), ir.VectorType(vmath.F32, 16)], ids=str
)
def test_f32_emitted_ir_is_straight_line(ty):
    for name in NAMES:
        m, fn = _function_with(name, ty)
        assert len(fn.blocks) == 1
        text = str(m)
        for callee in re.findall(r"call [^@]*@([\w.]+)", text):
            assert callee.startswith("llvm."), f"{name} calls {callee}"
        for flag in ("nnan", "ninf", " fast ", "reassoc", "arcp", "afn"):
            assert flag not in text, f"{name} uses fast-math flag {flag.strip()}"


CALL = re.compile(r"^\s*(call\w*|jmp\s+[A-Za-z_][\w.]*@PLT)", re.M)  # calls, and tail calls to libraries


@pytest.mark.parametrize("level", ["x86-64", "x86-64-v3", None])
def test_f32_optimized_code_has_no_calls(level):
    """After optimization the float32 kernels contain no calls at all, with or without FMA hardware (an
    `llvm.fma` on SSE2 would become a call to fmaf; `contract` does not)."""
    m = ir.Module(name="asm")
    for nm in NAMES:
        vmath.emit_unary_kernel(m, f"k_{nm}", vmath.EMITTERS[nm], vmath.F32, 4)
    asm = assembly(str(m), level_target(level) if level else None)
    assert not CALL.search(asm)
    # ... and the pattern does find the libm calls of the float64 kernels.
    m = ir.Module(name="asm64")
    vmath.emit_unary_kernel(m, "k_exp", vmath.exp, vmath.F64, 4)
    assert CALL.search(assembly(str(m), level_target("x86-64")))


def test_odd_vector_width_and_double_vectors():
    """Emitters accept any lane count; <7 x float> and <3 x double> compile and run."""
    for ty, dt in ((ir.VectorType(vmath.F32, 7), np.float32), (ir.VectorType(vmath.F64, 3), np.float64)):
        m = ir.Module(name="odd")
        ptr = ir.PointerType()
        for nm in ("exp", "tanh", "erf"):
            fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ptr, ptr]), name=f"k_{nm}")
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            v = b.load(fn.args[0], typ=ty)
            v.align = 4
            st = b.store(vmath.EMITTERS[nm](b, v), fn.args[1])
            st.align = 4
            b.ret_void()
        eng = compile_ir(str(m))
        x = np.linspace(-2, 2, ty.count).astype(dt)
        for nm, ref in (("exp", np.exp), ("tanh", np.tanh), ("erf", _erf64)):
            y = np.empty_like(x)
            eng.function(f"k_{nm}", None, ctypes.c_void_p, ctypes.c_void_p)(x.ctypes.data, y.ctypes.data)
            np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=2e-7)


def test_helpers():
    v4 = ir.VectorType(vmath.F32, 4)
    assert str(vmath.const(vmath.F32, 1.5)) == "float 0x3ff8000000000000"
    assert vmath.const(v4, 2.0).type == v4
    m = ir.Module(name="h")
    f1 = vmath.intrinsic(m, "llvm.fma", ir.VectorType(vmath.F32, 16))
    assert f1.name == "llvm.fma.v16f32" and len(f1.function_type.args) == 3
    assert vmath.intrinsic(m, "llvm.fma", ir.VectorType(vmath.F32, 16)) is f1
    assert vmath.intrinsic(m, "llvm.sqrt", vmath.F64).name == "llvm.sqrt.f64"
    assert set(vmath.EMITTERS) == set(NAMES) | set(vmath.LIBM)  # the C library's ones: tests/ops/test_numpy_names.py
    with pytest.raises(TypeError):
        vmath.exp(ir.IRBuilder(), ir.Constant(ir.IntType(32), 1))
