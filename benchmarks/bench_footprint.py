"""graphc's footprint in process, each figure from fresh Python processes:

1. the compile of the 784-256-128-10 training epoch (gc.EpochFunction: step, updates, native driver): cold (not
   in the cache: LLVM included, and the link into a shared object; the GEMM helper library, compiled once per
   machine, cached, and also with an empty cache) and from the disk cache, with whether LLVM was loaded at all
   (llvmlite.binding imported, libllvmlite mapped);
2. the peak RSS of a 1-epoch run on 60,000 synthetic rows, batch 128, 1 thread, with the program cached (and so
   its derivatives: such a run imports neither sympy nor the compiler's stages, which the output checks), next
   to the numpy loop's and a baseline process holding only Python, numpy and the data (`peers.py rss`), and
   where graphc's part goes (RSS after each phase: imports and data, the graph and its gradient, the cached
   epoch function, the epoch's peak). Every process imports modules from bytecode, as from an installed
   package (a private PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE lifted; `--from-source`: as the environment
   says): compiling graphc's sources in each process costs a few MB of peak RSS that no install pays.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_footprint.py [--repeats 3] [--smoke]

`--smoke` (tests/test_benchmarks.py): every figure once, quickly: a 64-32-10 network, 1,000 rows, one process each.
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
    from peers import current_rss_mb, peak_rss_mb, set_threads, synthetic_classification
    set_threads(1)  # numpy's BLAS too, as in the peers' processes (its second thread's buffers would count)
    sizes = {sizes!r}
    X, y = synthetic_classification({rows}, sizes, seed=0) if {rows} else (None, None)
    rss = {{"data": current_rss_mb()}}
    x = gc.input("x", ("N", sizes[0])); t = gc.input("y", ("N",), "int32"); lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, list(sizes[1:])), t)
    params = gc.nn.parameters(loss)
    updates = {{p: p - lr * g for p, g in zip(params, gc.grad(loss, params))}}
    rss["graph"] = current_rss_mb()
    t1 = time.perf_counter()  # the compile proper: the graph and its gradient are built
    ef = gc.EpochFunction(loss, updates, x=x, y=t, threads=1)
    t_compile = time.perf_counter() - t1
    rss["compiled"] = current_rss_mb()
    out = {{"import": t_import, "compile": t_compile, "from_cache": ef.from_cache,
            "llvm_loaded": "llvmlite.binding" in sys.modules or "libllvmlite" in open("/proc/self/maps").read()}}
    if X is not None:
        state = gc.nn.init_params(params, seed=0)
        t2 = time.perf_counter()
        st = ef.run_epoch(X, y.astype(np.int32), state, batch=128, scalars={{"lr": 0.01}})
        out.update(train_seconds=time.perf_counter() - t2, loss=st.mean_loss, peak_rss_mb=peak_rss_mb(), rss=rss,
                   loaded=[m for m in ("sympy", "llvmlite", "graphc.codegen.emit") if m in sys.modules])
    print("RESULT" + json.dumps(out))
""")


ENV: dict = dict(os.environ)
SIZES = (784, 256, 128, 10)


def child(cache: str, rows: int = 0, **extra) -> dict:
    env = dict(ENV, GRAPHC_CACHE_DIR=cache, **extra)
    p = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, rows=rows, sizes=SIZES)], env=env,
                       capture_output=True, text=True, check=True)
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT"))[6:])


def peer_rss(peer: str, rows: int) -> float:
    p = subprocess.run([sys.executable, os.path.join(HERE, "peers.py"), "rss", peer, ",".join(map(str, SIZES)),
                        str(rows), "128", "--json"], env=ENV, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=60000, help="rows of the RSS run (0: the compile figures only)")
    ap.add_argument("--from-source", action="store_true",
                    help="import modules as the environment says (PYTHONDONTWRITEBYTECODE: compiled in each process)")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every figure (tests): a 64-32-10 network, 1,000 rows, 1 repeat")
    args = ap.parse_args(argv)
    global SIZES
    if args.smoke:
        if not ENV.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            ENV["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        SIZES, args.repeats, args.rows = (64, 32, 10), 1, min(args.rows, 1000)
    name = "-".join(map(str, SIZES))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"cpu: {cpu}; load average {os.getloadavg()[0]:.2f} (the machine is shared); medians of {args.repeats} "
          "processes")
    pyc = None
    # the cache of the bytecode warm-up and of the RSS runs (whose program is cached: which cache does not matter):
    # one directory, so that the GEMM helper library is compiled once for both; under --smoke the caller's
    scratch = tempfile.TemporaryDirectory()
    warm = ENV["GRAPHC_CACHE_DIR"] if args.smoke else scratch.name
    if not args.from_source:
        pyc = tempfile.TemporaryDirectory()
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = pyc.name
        subprocess.run([sys.executable, "-c", "import compileall, graphc, os, sys; sys.exit(not compileall.compile_dir("
                        "os.path.dirname(graphc.__file__), quiet=1) or not compileall.compile_file(sys.argv[1], "
                        "quiet=1))", os.path.join(HERE, "peers.py")], env=ENV, check=True)
        child(warm, 1000)  # the prefix holds every module's bytecode: site-packages' too
        peer_rss("numpy", 1000)
    print("modules imported from bytecode (as an installed package's)" if pyc else
          f"modules imported as the environment says (PYTHONDONTWRITEBYTECODE="
          f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})")
    first, cold, cold1, cached, imports = [], [], [], [], []
    llvm_cached = set()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            c = child(d)  # an empty cache: the GEMM helper library is compiled too
            assert not c["from_cache"]
            for p in Path(d).glob("*.s[ou]*"):  # the program's entry (KEY.so, KEY.sum), not the helper library
                p.unlink()
            c2 = child(d)
            assert not c2["from_cache"]
            for p in Path(d).glob("*.s[ou]*"):
                p.unlink()
            c1 = child(d, GRAPHC_COMPILE_PROCESSES="1")  # LLVM in one process: no helper process
            assert not c1["from_cache"]
            w = child(d)
            assert w["from_cache"]
            cold1.append(c1["compile"])
            first.append(c["compile"])
            cold.append(c2["compile"])
            cached.append(w["compile"])
            imports.append(w["import"])
            llvm_cached.add(w["llvm_loaded"])
    print(f"{name} epoch function: cold compile {statistics.median(cold):.3f} s "
          f"({', '.join(f'{v:.3f}' for v in cold)}; LLVM in this process only, GRAPHC_COMPILE_PROCESSES=1: "
          f"{statistics.median(cold1):.3f} s; with an empty cache, the GEMM helper library compiled too: "
          f"{statistics.median(first):.3f} s), from the cache {statistics.median(cached):.3f} s; "
          f"LLVM loaded on a cached run: {sorted(llvm_cached)}; import graphc {statistics.median(imports):.3f} s")
    if args.rows <= 0:
        if pyc is not None:
            pyc.cleanup()
        scratch.cleanup()
        return 0
    child(warm)  # populate the cache
    g = [child(warm, args.rows) for _ in range(args.repeats)]
    scratch.cleanup()
    g_rss = statistics.median(r["peak_rss_mb"] for r in g)
    np_rss = statistics.median(peer_rss("numpy", args.rows) for _ in range(args.repeats))
    none_rss = statistics.median(peer_rss("none", args.rows) for _ in range(args.repeats))
    print(f"peak RSS, {args.rows} rows, batch 128, 1 epoch, 1 thread, program cached: graphc {g_rss:.1f} MB "
          f"(LLVM loaded: {g[0]['llvm_loaded']}; " + ", ".join(f"{m} {'' if m in g[0]['loaded'] else 'not '}loaded"
                                                           for m in ("sympy", "llvmlite", "graphc.codegen.emit"))
          + f"), numpy loop {np_rss:.1f} MB, Python + numpy + data {none_rss:.1f} MB: graphc / numpy "
          f"{g_rss / np_rss:.2f}x (goal 1.1x); graphc over the baseline {g_rss - none_rss:.1f} MB, the numpy loop "
          f"{np_rss - none_rss:.1f} MB")
    ph = {k: statistics.median(r["rss"][k] for r in g) for k in g[0]["rss"]}
    print(f"  graphc's process, RSS after each phase: imports and data {ph['data']:.1f} MB, graph and gradient "
          f"+{ph['graph'] - ph['data']:.1f} MB, cached epoch function "
          f"+{ph['compiled'] - ph['graph']:.1f} MB, the epoch's peak +{g_rss - ph['compiled']:.1f} MB")
    if pyc is not None:
        pyc.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
