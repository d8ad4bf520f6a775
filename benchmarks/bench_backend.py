"""The native backend against its peers, measured in one run (medians of repeats):

- a fused elementwise chain over 4M float32 against a plain memory copy of the same bytes (numpy copyto);
- graphc's vector exp against numpy's np.exp (4M and 64K float32);
- one training step of a 784-256-128-10 ReLU MLP with softmax cross-entropy and an SGD update (batch 128),
  graphc against PyTorch eager and jax.jit, on 1 and 2 threads; graphc's 2-thread scaling back to back and with
  1 or 3 ms of Python work before each step (the thread team's workers idle in between);
- compile time of that step: cold (LLVM included) and from the disk cache in a new process.

The gemm figures (against OpenBLAS, and the FMA peak) are benchmarks/bench_gemm.py. Run with

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_backend.py [--quick] [--smoke]

`--smoke` (tests/test_benchmarks.py): every figure once, quickly: 64K/4K elements, a 64-32-10 step at batch 16
(and 64), one short sample each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import graphc as gc  # noqa: E402

SIZES = (784, 256, 128, 10)
BATCH = 128
SMOKE = {"SIZES": (64, 32, 10), "BATCH": 16, "N": 1 << 16, "SMALL": 4096, "REPEATS": 1, "MIN_SECONDS": 0.001,
         "GAP_STEPS": 3, "BIG_BATCH": 64}
N, SMALL, REPEATS, MIN_SECONDS, GAP_STEPS, BIG_BATCH = 4 * 1024 * 1024, 65536, 15, 0.02, 60, 1024


def median_time(fn, repeats: int | None = None, min_seconds: float | None = None) -> float:
    repeats = REPEATS if repeats is None else repeats
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= min_seconds or n >= 1 << 16:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples)


def elementwise(threads: int) -> dict:
    n = N
    x = gc.input("x", (n,))
    y = gc.maximum(x * 1.5 + 0.5, 0.0) * x - 0.25
    fn = gc.compile(y, threads=threads)
    xv = np.random.default_rng(0).normal(size=n).astype(np.float32)
    out = np.empty_like(xv)
    mine = np.empty_like(xv)  # graphc writes into a preallocated output too (out=), as numpy does here
    t_chain = median_time(lambda: fn({"x": xv}, out=mine))
    t_copy = median_time(lambda: np.copyto(out, xv))
    e = gc.exp(x)
    fexp = gc.compile(e, threads=threads)
    t_exp = median_time(lambda: fexp({"x": xv}, out=mine))
    t_npexp = median_time(lambda: np.exp(xv, out=out))
    small = SMALL
    xs = gc.input("xs", (small,))
    fsmall = gc.compile(gc.exp(xs), threads=threads)
    xsv = xv[:small].copy()
    outs = np.empty_like(xsv)
    mines = np.empty_like(xsv)
    t_exp_s = median_time(lambda: fsmall({"xs": xsv}, out=mines))
    t_npexp_s = median_time(lambda: np.exp(xsv, out=outs))
    return {"chain_ms": t_chain * 1e3, "copy_ms": t_copy * 1e3, "chain_over_copy": t_chain / t_copy,
            "exp_ns": t_exp / n * 1e9, "np_exp_ns": t_npexp / n * 1e9, "exp_speedup": t_npexp / t_exp,
            "exp_speedup_64k": t_npexp_s / t_exp_s}


def step_graph(sizes=None):
    sizes = SIZES if sizes is None else sizes
    x = gc.input("x", ("N", sizes[0]))
    y = gc.input("y", ("N",), "int32")
    logits = gc.nn.mlp(x, list(sizes[1:]), name="bench")
    loss = gc.nn.softmax_cross_entropy(logits, y)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    return x, y, loss, params, {p: p - 0.01 * g for p, g in zip(params, grads, strict=True)}


def graphc_step(threads: int, batch: int = BATCH, gap: float = 0.0) -> float:
    """Median time of one step; `gap` seconds of Python work (a busy loop) before each timed call, as a
    training loop that loads or augments data between steps does (the team's workers have gone idle)."""
    x, y, loss, params, updates = step_graph()
    fn = gc.compile(loss, updates=updates, threads=threads)
    rng = np.random.default_rng(1)
    values = gc.nn.init_params(params, seed=0)
    values.update(x=rng.normal(size=(batch, SIZES[0])).astype(np.float32),
                  y=rng.integers(0, SIZES[-1], batch).astype(np.int32))
    if not gap:
        return median_time(lambda: fn(values))
    times = []
    for _ in range(GAP_STEPS):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < gap:
            pass
        t0 = time.perf_counter()
        fn(values)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


COMPILE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    t = time.perf_counter()
    import graphc as gc
    from bench_backend import step_graph
    t1 = time.perf_counter()
    x, y, loss, params, updates = step_graph({sizes!r})
    fn = gc.compile(loss, updates=updates, cache={cache})
    print(time.perf_counter() - t1, fn.from_cache, t1 - t)
""")


def compile_times() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, GRAPHC_CACHE_DIR=d)
        out = {}
        for label, cache in (("cold", "False"), ("first", "True"), ("cached", "True")):
            p = subprocess.run([sys.executable, "-c", COMPILE.format(here=here, cache=cache, sizes=SIZES)], env=env,
                               capture_output=True, text=True, check=True)
            seconds, from_cache, import_s = p.stdout.split()
            out[label] = float(seconds)
            out[f"{label}_from_cache"] = from_cache == "True"
            out["import_seconds"] = float(import_s)
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the peers")
    ap.add_argument("--smoke", action="store_true", help="a quick run of every figure (tests): tiny sizes, 1 sample")
    args = ap.parse_args(argv)
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        globals().update(SMOKE)
    name = "-".join(map(str, SIZES))
    peer_repeats = 1 if args.smoke else 9
    from peers import describe, step_time_jax, step_time_torch

    info = describe()
    print(f"# {time.strftime('%Y-%m-%d')}  {info.get('cpu', '?')}  numpy {info.get('numpy')}  torch "
          f"{info.get('torch')}  jax {info.get('jax')}  OpenBLAS kernel {info.get('openblas_kernel', '?')}  "
          f"load {info.get('loadavg')}")
    ew = elementwise(1)
    print(f"fused elementwise chain, {N:,} float32: {ew['chain_ms']:.2f} ms; memory copy {ew['copy_ms']:.2f} ms; "
          f"ratio {ew['chain_over_copy']:.2f}x (target <= 1.3x)")
    print(f"vector exp: {ew['exp_ns']:.3f} ns/element vs np.exp {ew['np_exp_ns']:.3f}: {ew['exp_speedup']:.2f}x "
          f"at {N:,}, {ew['exp_speedup_64k']:.2f}x at {SMALL:,} (target >= 4x)")
    rows = []
    for threads in (1, 2):
        g = graphc_step(threads)
        t = j = float("nan")
        if not args.quick:
            try:
                t = step_time_torch(SIZES, BATCH, threads=threads, repeats=peer_repeats)
            except ImportError as e:
                print(f"  (torch: {e})")
            try:
                j = step_time_jax(SIZES, BATCH, threads=threads, repeats=peer_repeats)
            except ImportError as e:
                print(f"  (jax: {e})")
        rows.append((threads, g, t, j))
        print(f"training step {name}, batch {BATCH}, {threads} thread(s): graphc {g * 1e3:.3f} ms, "
              f"torch {t * 1e3:.3f} ms ({t / g:.2f}x), jax {j * 1e3:.3f} ms ({j / g:.2f}x)")
    print(f"graphc step scaling, 2 threads over 1: {rows[0][1] / rows[1][1]:.2f}x at batch {BATCH}, "
          f"{graphc_step(1, BIG_BATCH) / graphc_step(2, BIG_BATCH):.2f}x at batch {BIG_BATCH}")
    gaps = ", ".join(f"{graphc_step(1, gap=g) / graphc_step(2, gap=g):.2f}x with {g * 1e3:.0f} ms"
                     for g in (1e-3, 3e-3))
    print(f"                  with Python work between steps: {gaps}")
    c = compile_times()
    print(f"compile of that step: cold {c['cold']:.2f} s (LLVM included), from the disk cache in a new process "
          f"{c['cached']:.3f} s (cache hit: {c['cached_from_cache']}); import graphc {c['import_seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
