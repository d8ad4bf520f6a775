"""A/B: the same workloads on two versions of graphc, alternating, in one run (for "nothing got slower").

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_ab.py [--base REV] [--repeats 5] [--smoke]

`--base` (default HEAD~1) is checked out into a temporary git worktree; each sample runs one workload in a fresh
process with PYTHONPATH pointing at that tree or this one, A and B alternating so drift hits both. Workloads:
a 784-256-128-10 training step (batch 128, 1 thread), a fused elementwise chain on 1M floats, a sum over rows,
the digits default epoch (64-128-10, batch 32, 1 thread) and the cold compile of the 784-256-128-10 step (no
disk cache). Prints medians and B/A ratios (below 1: the new version is faster), with the CPU model.

`--smoke` (tests/test_benchmarks.py; e.g. `--base HEAD --smoke`): every workload once on each tree, at tiny sizes
(a 64-32-10 step, 4K floats, 1 epoch), in the compile cache $GRAPHC_CACHE_DIR (a real run gives each process an
empty one)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOAD = r"""
import sys, time, json, os
import numpy as np
import graphc as gc
what = sys.argv[1]
smoke = sys.argv[2:] == ["smoke"]  # tiny sizes, one sample: the same code
rng = np.random.default_rng(0)
D, H, B, E, L, R = (64, [32, 10], 16, 1, 4096, 100) if smoke else (784, [256, 128, 10], 128, 10, 1 << 20, 1000)

def best(f, n):
    n = 1 if smoke else n
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

if what in ("step", "compile"):
    x = gc.input("x", ("N", D)); y = gc.input("y", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, H), y)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    t = time.perf_counter()
    fn = gc.compile(loss, updates={p: p - 0.01 * g for p, g in zip(params, grads)}, threads=1, cache=False)
    compile_s = time.perf_counter() - t
    if what == "compile":
        print(json.dumps(compile_s)); sys.exit()
    vals = dict(gc.nn.init_params(params, seed=0), x=rng.standard_normal((B, D)).astype(np.float32),
                y=rng.integers(0, 10, B).astype(np.int32))
    print(json.dumps(best(lambda: [fn(vals) for _ in range(20)], 7) / 20))
elif what == "chain":
    x = gc.input("x", ("N",))
    fn = gc.compile(gc.tanh(x * 2.0 + 1.0) * gc.sigmoid(x) - x, threads=1, cache=False)
    v = rng.standard_normal(L).astype(np.float32)
    out = np.empty_like(v)
    print(json.dumps(best(lambda: fn(x=v, out=out), 30)))
elif what == "rowsum":
    x = gc.input("x", ("N", 1000))
    fn = gc.compile(gc.sum(gc.exp(x), axis=1), threads=1, cache=False)
    v = rng.standard_normal((R, 1000)).astype(np.float32)
    print(json.dumps(best(lambda: fn(x=v), 30)))
elif what == "digits":
    r = gc.fit(None, "digits", epochs=E, threads=1, seed=0, progress=False)
    print(json.dumps(1.0 / r.metrics["train_samples_per_second"] * 1000))  # per 1000 samples
"""

WORKLOADS = ["step", "chain", "rowsum", "digits", "compile"]


def run(tree: Path, what: str, smoke: bool = False) -> float:
    if smoke:  # the caller's cache (its keys hold a hash of graphc's sources): not the GEMM helper library each time
        r = _workload(tree, what, os.environ["GRAPHC_CACHE_DIR"], ["smoke"])
    else:
        with tempfile.TemporaryDirectory(prefix="graphc-ab-") as cache:  # an empty cache: everything cold
            r = _workload(tree, what, cache, [])
    if r.returncode != 0:
        raise SystemExit(f"{what} failed in {tree}:\n{r.stderr[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def _workload(tree: Path, what: str, cache: str, extra: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree), GRAPHC_CACHE_DIR=cache)
    return subprocess.run([sys.executable, "-c", WORKLOAD, what, *extra], capture_output=True, text=True, env=env,
                          cwd=tree)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=WORKLOADS, choices=WORKLOADS)
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every workload on both trees (tests): tiny sizes, 1 repeat")
    args = ap.parse_args()
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        args.repeats = 1
    tmp = Path(tempfile.mkdtemp(prefix="graphc-base-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp), args.base], check=True,
                   capture_output=True)
    try:
        print(f"# {cpu_model()}, {os.cpu_count()} CPUs; A = {args.base}, B = the working tree; medians of "
              f"{args.repeats}")
        for what in args.only:
            a, b = [], []
            for _ in range(args.repeats):
                a.append(run(tmp, what, args.smoke))
                b.append(run(ROOT, what, args.smoke))
            ma, mb = statistics.median(a), statistics.median(b)
            unit = "s" if what == "compile" else "ms"
            scale = 1 if what == "compile" else 1e3
            print(f"{what:8} A {ma * scale:9.3f} {unit}  B {mb * scale:9.3f} {unit}  B/A {mb / ma:5.3f}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp)], capture_output=True)


if __name__ == "__main__":
    main()
