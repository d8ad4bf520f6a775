"""Benchmark graphc.codegen.vmath's float32 math functions against numpy's float32 ufuncs.

Each function is JIT-compiled as a loop `void f(const float* x, float* y, i64 n)` over explicit SIMD vectors of
the target's width, then timed on N float32 elements next to the numpy equivalent writing into a
preallocated output. Prints ns/element (median of the repeats), the speed-up over numpy, and the max relative
error of both against float64 on the benchmark's inputs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_vmath.py [--sizes N,M] [--repeats R]
        [--target native|x86-64|x86-64-v3|x86-64-v4] [--smoke]

`--smoke` (tests/test_benchmarks.py): the same tables at 4K and 1K elements, one timed repeat.

At 4M elements (16 MB in, 16 MB out) the cheap functions run at the memory bandwidth limit, printed as the
"memory floor" under each table; the 64K table (in L2) shows the compute cost.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time

import numpy as np
from llvmlite import ir

from graphc.codegen import vmath
from graphc.codegen.target import compile_ir, host_target, level_target

try:
    from scipy import special as _sp
except ImportError:  # scipy is optional: erf and sigmoid then have no (or a composed) reference
    _sp = None


def _sigmoid_np(x, out):
    # numpy has no sigmoid: use scipy's expit where available, else the usual composition.
    if _sp is not None:
        return _sp.expit(x, out=out)
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def _softplus_np(x, out):
    return np.logaddexp(np.float32(0), x, out=out)


# name: (input range, numpy float32 reference writing into `out` or None, float64 truth)
CASES = {
    "exp": ((-80, 80), lambda x, out: np.exp(x, out=out), np.exp),
    "log": ((1e-3, 1e3), lambda x, out: np.log(x, out=out), np.log),
    "log1p": ((-0.9, 100), lambda x, out: np.log1p(x, out=out), np.log1p),
    "expm1": ((-20, 20), lambda x, out: np.expm1(x, out=out), np.expm1),
    "tanh": ((-10, 10), lambda x, out: np.tanh(x, out=out), np.tanh),
    "sigmoid": ((-20, 20), _sigmoid_np, lambda x: 0.5 * (1 + np.tanh(0.5 * x))),
    "softplus": ((-20, 20), _softplus_np, lambda x: np.logaddexp(0.0, x)),
    "erf": ((-4, 4), (lambda x, out: _sp.erf(x, out=out)) if _sp is not None else None, None),
    "sqrt": ((0, 1e4), lambda x, out: np.sqrt(x, out=out), np.sqrt),
}
if _sp is not None:
    CASES["erf"] = (CASES["erf"][0], CASES["erf"][1], _sp.erf)


def build(target, lanes: int):
    m = ir.Module(name="bench_vmath")
    for name, emitter in vmath.EMITTERS.items():
        vmath.emit_unary_kernel(m, f"k_{name}", emitter, vmath.F32, lanes, target)
    engine = compile_ir(str(m), target)
    p = ctypes.c_void_p
    return {name: engine.function(f"k_{name}", None, p, p, ctypes.c_int64) for name in vmath.EMITTERS}


def median_ns(fn, repeats: int) -> float:
    fn()  # warm up: page in the output, fill caches and branch predictors
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times)


def max_rel(y, truth):
    if truth is None:
        return float("nan")
    ok = np.isfinite(truth) & (np.abs(truth) >= np.finfo(np.float32).tiny)
    return float(np.max(np.abs(y[ok].astype(np.float64) - truth[ok]) / np.abs(truth[ok])))


def table(kernels, n: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    y = np.empty(n, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    header = (
        f"{'function':9s} {'graphc ns/el':>13s} {'numpy ns/el':>12s} {'speed-up':>9s} "
        f"{'graphc err':>11s} {'numpy err':>10s}"
    )
    print(header)
    print("-" * len(header))
    for name, ((lo, hi), ref, truth_fn) in CASES.items():
        x = rng.uniform(lo, hi, n).astype(np.float32)
        kern = kernels[name]
        px, py = x.ctypes.data, y.ctypes.data  # cache pointers: each lookup costs ~1 us
        ours = median_ns(lambda kern=kern, px=px, py=py: kern(px, py, n), repeats) / n
        truth = None
        if truth_fn is not None:
            with np.errstate(all="ignore"):
                truth = truth_fn(x.astype(np.float64))
        err_ours = max_rel(y, truth)
        if ref is not None:
            theirs = median_ns(lambda ref=ref, x=x: ref(x, out), repeats) / n
            err_theirs = max_rel(out, truth)
            print(f"{name:9s} {ours:13.3f} {theirs:12.3f} {theirs / ours:8.1f}x {err_ours:11.2e} {err_theirs:10.2e}")
        else:
            print(f"{name:9s} {ours:13.3f} {'-':>12s} {'-':>9s} {err_ours:11.2e} {'-':>10s}")
    x = rng.uniform(0, 1, n).astype(np.float32)
    copy = median_ns(lambda: np.copyto(out, x), repeats) / n
    print(f"memory floor: np.copyto(out, x) {copy:.3f} ns/el (read + write of {n:,} float32)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        default=f"{4 * 1024 * 1024},{64 * 1024}",
        help="comma-separated element counts, one table each (default 4M, the target, and 64K, in cache)",
    )
    ap.add_argument("--repeats", type=int, default=11, help="timed repeats per function (median; >= 7)")
    ap.add_argument("--target", default="native", help="native, x86-64, x86-64-v3 or x86-64-v4")
    ap.add_argument("--smoke", action="store_true", help="a quick run of every code path (tests): tiny sizes, 1 repeat")
    args = ap.parse_args()
    repeats = max(7, args.repeats)
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        args.sizes, repeats = "4096,1024", 1

    target = host_target() if args.target == "native" else level_target(args.target)
    lanes = target.f32_lanes
    t0 = time.perf_counter()
    kernels = build(target, lanes)
    compile_s = time.perf_counter() - t0
    print(
        f"target {target.name} (cpu {target.cpu}, <{lanes} x float>), median of {repeats}, numpy {np.__version__}; "
        f"compile of {len(kernels)} kernels {compile_s:.2f} s"
    )
    print("err: max relative error against float64 on the timed inputs (erf/sigmoid reference: scipy if present)")
    for n in (int(v) for v in args.sizes.split(",")):
        print(f"\nn = {n:,} float32")
        table(kernels, n, repeats)


if __name__ == "__main__":
    main()
