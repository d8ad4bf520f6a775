"""Benchmark graphc's GEMM kernels against numpy's BLAS and the machine's FP32 FMA peak.

Run (single-threaded BLAS, OpenBLAS's own core detection)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 python benchmarks/bench_gemm.py

Every figure is the median of repeats; graphc and numpy samples alternate so that drift in the machine's
speed (shared hosts) hits both. A repeat during which other processes used the CPUs is retried a few times
(and counted as "busy" if it stays busy), because on a 2-vCPU machine one busy neighbour halves a 2-thread
run. The peak is a kernel of independent FMA chains (24 on AVX-512, 12 on AVX2) on registers (no memory
traffic), emitted here.

Columns: ``rt`` runtime dims, ``st`` static dims, ``epi`` runtime dims with a fused bias + relu epilogue (run
out of line, on each finished tile while it is in L1), ``numpy`` (OpenBLAS sgemm; it does not apply the
epilogue), ``epi/rt`` the cost of the epilogue pass. ``--baseline path/to/old/gemm.py`` also builds the same
kernels with another version of `graphc.codegen.gemm` (e.g. ``git show HEAD~1:graphc/codegen/gemm.py >
/tmp/gemm_old.py``), times them alternately with the others, and reports new/old for rt and epi.

``--smoke`` (tests/test_benchmarks.py): every code path once, quickly: three small cases, the 2-thread run and the
peak re-measure at 256 instead of 1024, one short sample per figure.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from llvmlite import ir

from graphc.codegen import gemm as gemm_new
from graphc.codegen.gemm import default_config, workspace_bytes
from graphc.codegen.target import compile_ir, host_target

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32

# (label, M, N, K, trans_a, trans_b)
CASES = [
    ("square 256", 256, 256, 256, False, False),
    ("square 512", 512, 512, 512, False, False),
    ("square 1024", 1024, 1024, 1024, False, False),
    ("mlp1 X.W 128x784.784x256", 128, 256, 784, False, False),
    ("mlp1 Xt.dZ 784x128.128x256", 784, 256, 128, True, False),
    ("mlp1 dZ.Wt 128x256.(784x256)t", 128, 784, 256, False, True),
    ("mlp2 X.W 128x256.256x128", 128, 128, 256, False, False),
    ("mlp2 Xt.dZ 256x128.128x128", 256, 128, 128, True, False),
    ("mlp2 dZ.Wt 128x128.(256x128)t", 128, 256, 128, False, True),
    # the LSTM step of bench_rnn (batch 64, hidden 128, four gates, T = 50): the recurrent product of a step,
    # its input gradient, and the weight gradient over all steps
    ("lstm h.Wh 64x128.128x512", 64, 512, 128, False, False),
    ("lstm dZ.Wht 64x512.(128x512)t", 64, 128, 512, False, True),
    ("lstm Ht.dZ 128x3200.3200x512", 128, 512, 3200, True, False),
]


# ------------------------------------------------------------------------------------- quiet check


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


class Quiet:
    """Runs a sample; retries (up to `tries`) while other processes used more than ~5% of a CPU."""

    def __init__(self, tries: int):
        self.tries = max(1, tries)  # a sample is always taken: --quiet-tries 0 is one try, busy or not
        self.hz = os.sysconf("SC_CLK_TCK")
        self.samples = 0
        self.busy = 0

    def run(self, fn):
        for attempt in range(self.tries):
            b0, c0, t0 = _busy_jiffies(), os.times(), time.monotonic()
            r = fn()
            b1, c1, t1 = _busy_jiffies(), os.times(), time.monotonic()
            mine = (c1.user - c0.user) + (c1.system - c0.system)
            other = (b1 - b0) / self.hz - mine
            if other <= 0.05 * (t1 - t0) + 2.0 / self.hz:
                break
            if attempt + 1 < self.tries:
                time.sleep(0.3)
        else:
            self.busy += 1
        self.samples += 1
        return r


# --------------------------------------------------------------------------------------- the peak


def fma_peak_kernel(target):
    """`void peak(ptr out, i64 n)`: n iterations of 4 x C independent vector FMAs (register only): C = 24 of AVX-512's
    32 registers, 12 of AVX2's 16 (24 chains there spilled to the stack and measured half the peak: 39 GFLOP/s on a
    Zen 3 whose sgemm ran at 70)."""
    lanes = target.f32_lanes
    f32 = ir.FloatType()
    vt = ir.VectorType(f32, lanes)
    i64 = ir.IntType(64)
    m = ir.Module()
    fma = ir.Function(m, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ir.PointerType(), i64]), "peak")
    out, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    chains, unroll = (24 if target.vector_bits >= 512 else 12), 4
    x = ir.Constant(vt, [1.0000001] * lanes)
    y = ir.Constant(vt, [0.9999999] * lanes)
    pre = b.block
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), pre)
    phis = [b.phi(vt) for _ in range(chains)]
    for k, p in enumerate(phis):
        p.add_incoming(ir.Constant(vt, [float(k)] * lanes), pre)
    cur = list(phis)
    for _ in range(unroll):
        cur = [b.call(fma, [c, x, y]) for c in cur]
    for p, c in zip(phis, cur, strict=True):
        p.add_incoming(c, loop)
    i2 = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(i2, loop)
    b.cbranch(b.icmp_signed("<", i2, n), loop, done)
    b.position_at_end(done)
    s = cur[0]
    for c in cur[1:]:
        s = b.fadd(s, c)
    b.store(s, out, align=4)
    b.ret_void()
    eng = compile_ir(str(m), target)
    f = eng.function("peak", None, _P, _I64)
    buf = np.zeros(lanes, np.float32)
    flops_per_iter = chains * unroll * lanes * 2

    def sample(seconds: float) -> float:
        n = 20000
        t0 = time.perf_counter()
        calls = 0
        while True:
            f(buf.ctypes.data, n)
            calls += 1
            el = time.perf_counter() - t0
            if el >= seconds:
                return calls * n * flops_per_iter / el / 1e9

    return sample


# ----------------------------------------------------------------------------------------- kernels


def _aligned(nbytes: int) -> np.ndarray:
    raw = np.zeros(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + nbytes]


def rate(call, flops: float, seconds: float) -> float:
    """GFLOP/s of `call()` repeated for about `seconds`."""
    t0 = time.perf_counter()
    n = 0
    while True:
        call()
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds:
            return n * flops / el / 1e9


class Team:
    """Persistent Python threads calling the kernel with tid = 0..n-1 (ctypes releases the GIL)."""

    def __init__(self, n: int):
        self.n = n
        self.pool = ThreadPoolExecutor(n) if n > 1 else None

    def __call__(self, fn, args):
        if self.n == 1:
            fn(*args, 0, 1)
            return
        futs = [self.pool.submit(fn, *args, t, self.n) for t in range(self.n)]
        for fu in futs:
            fu.result()


def bias_relu(ctx) -> ir.Value:
    """The benchmark's epilogue: C = relu(acc + bias[col]), bias the first extra argument."""
    b = ctx.builder
    v = b.fadd(ctx.acc, ctx.load(ctx.extra_args[0], ctx.col))
    zero = ir.Constant(ctx.acc.type, None)
    return b.select(b.fcmp_ordered(">", v, zero), v, zero)


def build_all(target, cases, impl=gemm_new, indices=None):
    """rt{i} (runtime dims), st{i} (static dims), ep{i} (runtime dims, bias + relu epilogue) for every case (or
    the cases[i] of `indices`), with the `emit_gemm` of `impl`; returns the engine and the compile time (parse +
    optimize + codegen)."""
    mod = ir.Module()
    for i in range(len(cases)) if indices is None else indices:
        _, M, N, K, ta, tb = cases[i]
        impl.emit_gemm(mod, f"rt{i}", target=target, M=None, N=None, K=None, trans_a=ta, trans_b=tb)
        impl.emit_gemm(mod, f"st{i}", target=target, M=M, N=N, K=K, trans_a=ta, trans_b=tb)
        impl.emit_gemm(mod, f"ep{i}", target=target, M=None, N=None, K=None, trans_a=ta, trans_b=tb,
                       epilogue=bias_relu, extra_args=[ir.PointerType()])
    t0 = time.perf_counter()
    eng = compile_ir(str(mod), target)
    return eng, time.perf_counter() - t0


def load_impl(path: str):
    """Another version of graphc/codegen/gemm.py, imported from a file."""
    spec = importlib.util.spec_from_file_location("gemm_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def operands(M, N, K, ta, tb):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return A, B


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11, help="samples per figure (median reported)")
    ap.add_argument("--seconds", type=float, default=0.08, help="length of one sample")
    ap.add_argument("--quiet-tries", type=int, default=4, help="retries of a sample while other processes run")
    ap.add_argument("--no-threads", action="store_true", help="skip the 2-thread scaling run")
    ap.add_argument("--baseline", metavar="GEMM_PY", help="also time kernels from this version of gemm.py")
    ap.add_argument("--cases", help="comma-separated indices of CASES to run (default: all)")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every code path (tests): small cases, one short sample per figure")
    args = ap.parse_args(argv)
    square = 2  # the CASES index of the 2-thread run and of the peak re-measured alongside (1024)
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        square = 0
        args.repeats, args.seconds, args.quiet_tries = 1, 0.002, 1
        args.cases = args.cases or "0,7,8"
    selected = [int(x) for x in args.cases.split(",")] if args.cases else list(range(len(CASES)))
    built = sorted(set(selected) | ({square} if not args.no_threads else set()))
    S = CASES[square][1]

    target = host_target()
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_info = threadpool_limits = None
    print(f"target: cpu={target.cpu} vector_bits={target.vector_bits}  config: {default_config(target)}")
    print("env: " + " ".join(f"{k}={os.environ.get(k, '<unset>')}"
                             for k in ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")))
    if threadpool_limits is not None:
        # the table compares single-threaded: hold BLAS to one thread whatever OPENBLAS_NUM_THREADS says (the
        # 2-thread scaling run below raises the limit for its own calls)
        _one_blas_thread = threadpool_limits(1)  # noqa: F841 - active while referenced
    elif os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        print("warning: without threadpoolctl, set OPENBLAS_NUM_THREADS=1 for a single-threaded numpy column")
    if threadpool_info is not None:
        for info in threadpool_info():
            print("blas: " + ", ".join(f"{k}={info.get(k)}" for k in
                                       ("internal_api", "version", "architecture", "num_threads", "filepath")))
    else:
        print("blas: threadpoolctl not installed")

    quiet = Quiet(args.quiet_tries)
    peak = fma_peak_kernel(target)
    peaks = [quiet.run(lambda: peak(args.seconds)) for _ in range(args.repeats)]
    peak_med = float(np.median(peaks))
    chains = 24 if target.vector_bits >= 512 else 12
    print(f"FP32 FMA peak (1 thread, {target.f32_lanes}-lane FMAs, {chains} chains): {peak_med:.1f} GFLOP/s "
          f"(min {min(peaks):.1f}, max {max(peaks):.1f})")

    eng, ctime = build_all(target, CASES, indices=built)
    print(f"compiled {3 * len(built)} kernels in {ctime:.2f} s")
    base = None
    if args.baseline:
        base, btime = build_all(target, CASES, load_impl(args.baseline), indices=built)
        print(f"baseline {args.baseline}: compiled {3 * len(built)} kernels in {btime:.2f} s")
    one = Team(1)
    hdr = f"{'case':34s} {'M':>5s} {'N':>5s} {'K':>5s} {'rt GF/s':>8s} {'st GF/s':>8s} {'epi GF/s':>8s} " \
          f"{'numpy':>8s} {'rt/np':>6s} {'st/np':>6s} {'epi/rt':>6s} {'rt/peak':>7s}"
    if base is not None:
        hdr += f" {'old rt':>7s} {'old epi':>7s} {'rt/old':>6s} {'epi/old':>7s}"
    print(hdr)
    print("-" * len(hdr))
    keep = []
    proto = (None, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I32, _I32)
    for i in selected:
        label, M, N, K, ta, tb = CASES[i]
        A, B = operands(M, N, K, ta, tb)
        C = np.zeros((M, N), np.float32)
        Cn = np.zeros((M, N), np.float32)
        An = A.T if ta else A
        Bn = B.T if tb else B
        bias = np.random.default_rng(1).standard_normal(N).astype(np.float32)
        ws = _aligned(workspace_bytes(M, N, K, 2, target))
        keep.append((A, B, C, Cn, ws, bias))
        fns = {"rt": eng.function(f"rt{i}", *proto), "st": eng.function(f"st{i}", *proto),
               "epi": eng.function(f"ep{i}", *proto, _P)}
        if base is not None:
            fns["old rt"] = base.function(f"rt{i}", *proto)
            fns["old epi"] = base.function(f"ep{i}", *proto, _P)
        kargs = (A.ctypes.data, B.ctypes.data, C.ctypes.data, M, N, K, A.shape[1], B.shape[1], N, ws.ctypes.data)
        flops = 2.0 * M * N * K
        # correctness first
        ref = An.astype(np.float64) @ Bn.astype(np.float64)
        scale = (np.abs(An).astype(np.float64) @ np.abs(Bn)).max()
        for key, f in fns.items():
            C[:] = np.nan
            if "epi" in key:
                f(*kargs, 0, 1, bias.ctypes.data)
                want = np.maximum(ref + bias, 0)
            else:
                one(f, kargs)
                want = ref
            err = np.abs(C - want).max() / scale
            assert err < 1e-5, f"{label} {key}: wrong result (rel err {err:.2g})"
        # single-thread calls go straight to the ctypes function (a partial adds no Python frame), like numpy's
        calls = {key: partial(f, *kargs, 0, 1, *((bias.ctypes.data,) if "epi" in key else ()))
                 for key, f in fns.items()}
        calls["numpy"] = partial(np.matmul, An, Bn, out=Cn)
        samples: dict[str, list[float]] = {key: [] for key in calls}
        rp = []
        for _ in range(args.repeats):
            for key, c in calls.items():
                samples[key].append(quiet.run(lambda c=c, fl=flops: rate(c, fl, args.seconds)))
            if M == N == K == S:
                rp.append(quiet.run(lambda: peak(args.seconds / 2)))
        med = {key: float(np.median(v)) for key, v in samples.items()}
        rt_m, st_m, ep_m, np_m = med["rt"], med["st"], med["epi"], med["numpy"]
        pk = float(np.median(rp)) if rp else peak_med
        line = (f"{label:34s} {M:5d} {N:5d} {K:5d} {rt_m:8.1f} {st_m:8.1f} {ep_m:8.1f} {np_m:8.1f} "
                f"{rt_m / np_m:6.2f} {st_m / np_m:6.2f} {ep_m / rt_m:6.3f} {100 * rt_m / pk:6.1f}%")
        if base is not None:
            line += (f" {med['old rt']:7.1f} {med['old epi']:7.1f} {rt_m / med['old rt']:6.3f} "
                     f"{ep_m / med['old epi']:7.3f}")
        print(line, flush=True)
        if rp:
            print(f"{'':34s} (peak re-measured alongside {S}: {pk:.1f} GFLOP/s; static {100 * st_m / pk:.1f}%)")

    if not args.no_threads:
        M = N = K = S
        A, B = operands(M, N, K, False, False)
        C = np.zeros((M, N), np.float32)
        ws = _aligned(workspace_bytes(M, N, K, 2, target))
        fr = eng.function(f"rt{square}", None, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I32, _I32)
        kargs = (A.ctypes.data, B.ctypes.data, C.ctypes.data, M, N, K, K, N, N, ws.ctypes.data)
        two = Team(2)
        flops = 2.0 * M * N * K
        g1, g2, n1, n2 = [], [], [], []
        for _ in range(args.repeats):
            g1.append(quiet.run(lambda: rate(partial(fr, *kargs, 0, 1), flops, args.seconds * 2)))
            g2.append(quiet.run(lambda: rate(lambda: two(fr, kargs), flops, args.seconds * 2)))
            if threadpool_limits is not None:
                with threadpool_limits(1):
                    n1.append(quiet.run(lambda: rate(lambda: np.matmul(A, B, out=C), flops, args.seconds * 2)))
                with threadpool_limits(2):
                    n2.append(quiet.run(lambda: rate(lambda: np.matmul(A, B, out=C), flops, args.seconds * 2)))
        g1m, g2m = float(np.median(g1)), float(np.median(g2))
        print(f"\n2 threads at {S} (Python threads, tid=0/1): graphc 1T {g1m:.1f}  2T {g2m:.1f} GFLOP/s  "
              f"scaling {g2m / g1m:.2f}x")
        if n1:
            n1m, n2m = float(np.median(n1)), float(np.median(n2))
            print(f"                                         numpy  1T {n1m:.1f}  2T {n2m:.1f} GFLOP/s  "
                  f"scaling {n2m / n1m:.2f}x")
    print(f"\nsamples taken while other processes kept a CPU busy: {quiet.busy} of {quiet.samples}"
          f" (load average now {os.getloadavg()[0]:.2f}; {threading.active_count()} Python threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
