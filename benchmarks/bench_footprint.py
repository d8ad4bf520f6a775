"""graphc's footprint in process, each figure from fresh Python processes:

1. the compile of the 784-256-128-10 training epoch (gc.EpochFunction: step, updates, native driver): cold (not
   in the cache: LLVM included, and the link into a shared object; the GEMM helper library, compiled once per
   machine, cached, and also with an empty cache) and from the disk cache, with whether LLVM was loaded at all
   (llvmlite.binding imported, libllvmlite mapped);
2. the peak RSS of a 1-epoch run on 60,000 synthetic rows, batch 128, 1 thread, with the program cached, next
   to the numpy loop's and a baseline process holding only Python, numpy and the data (`peers.py rss`).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_footprint.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {here!r})
    t0 = time.perf_counter()
    import numpy as np
    import graphc as gc
    t_import = time.perf_counter() - t0
    from peers import peak_rss_mb, synthetic_classification
    sizes = (784, 256, 128, 10)
    X, y = synthetic_classification({rows}, sizes, seed=0) if {rows} else (None, None)
    x = gc.input("x", ("N", 784)); t = gc.input("y", ("N",), "int32"); lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [256, 128, 10]), t)
    params = gc.nn.parameters(loss)
    updates = {{p: p - lr * g for p, g in zip(params, gc.grad(loss, params))}}
    t1 = time.perf_counter()  # the compile proper: the graph and its gradient are built
    ef = gc.EpochFunction(loss, updates, x=x, y=t, threads=1)
    t_compile = time.perf_counter() - t1
    out = {{"import": t_import, "compile": t_compile, "from_cache": ef.from_cache,
            "llvm_loaded": "llvmlite.binding" in sys.modules or "libllvmlite" in open("/proc/self/maps").read()}}
    if X is not None:
        state = gc.nn.init_params(params, seed=0)
        t2 = time.perf_counter()
        st = ef.run_epoch(X, y.astype(np.int32), state, batch=128, scalars={{"lr": 0.01}})
        out.update(train_seconds=time.perf_counter() - t2, loss=st.mean_loss, peak_rss_mb=peak_rss_mb(),
                   sympy_loaded="sympy" in sys.modules)
    print("RESULT" + json.dumps(out))
""")


def child(cache: str, rows: int = 0) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache)
    p = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, rows=rows)], env=env, capture_output=True,
                       text=True, check=True)
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT"))[6:])


def peer_rss(peer: str, rows: int) -> float:
    p = subprocess.run([sys.executable, os.path.join(HERE, "peers.py"), "rss", peer, "784,256,128,10", str(rows),
                        "128", "--json"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=60000)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} (the machine is shared); medians of {args.repeats} processes")
    first, cold, cached, imports = [], [], [], []
    llvm_cached = set()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            c = child(d)  # an empty cache: the GEMM helper library is compiled too
            assert not c["from_cache"]
            for p in Path(d).glob("*.s[ou]*"):  # the program's entry (KEY.so, KEY.sum), not the helper library
                p.unlink()
            c2 = child(d)
            assert not c2["from_cache"]
            w = child(d)
            assert w["from_cache"]
            first.append(c["compile"])
            cold.append(c2["compile"])
            cached.append(w["compile"])
            imports.append(w["import"])
            llvm_cached.add(w["llvm_loaded"])
    print(f"784-256-128-10 epoch function: cold compile {statistics.median(cold):.3f} s "
          f"({', '.join(f'{v:.3f}' for v in cold)}; with an empty cache, the GEMM helper library compiled too: "
          f"{statistics.median(first):.3f} s), from the cache {statistics.median(cached):.3f} s; "
          f"LLVM loaded on a cached run: {sorted(llvm_cached)}; import graphc {statistics.median(imports):.3f} s")
    with tempfile.TemporaryDirectory() as d:
        child(d)  # populate the cache
        g = [child(d, args.rows) for _ in range(args.repeats)]
    g_rss = statistics.median(r["peak_rss_mb"] for r in g)
    np_rss = statistics.median(peer_rss("numpy", args.rows) for _ in range(args.repeats))
    none_rss = statistics.median(peer_rss("none", args.rows) for _ in range(args.repeats))
    print(f"peak RSS, {args.rows} rows, batch 128, 1 epoch, 1 thread, program cached: graphc {g_rss:.1f} MB "
          f"(LLVM loaded: {g[0]['llvm_loaded']}, sympy loaded: {g[0]['sympy_loaded']}), numpy loop {np_rss:.1f} MB, "
          f"Python + numpy + data {none_rss:.1f} MB: graphc / numpy {g_rss / np_rss:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
