"""Compile time: LLVM time for modules of 1, 2, 4 and 8 GEMMs, and the cold compile of an MLP training step.

    python benchmarks/bench_compile.py [--repeats R] [--profile]

Part 1 builds llvmlite modules holding 1, 2, 4 and 8 GEMMs (runtime dims) with different fused epilogues
(none, bias + relu, an in-place SGD-style update of another buffer, bias + row term with accumulate) and all
four transpositions, and times each stage on its own: IR emission (Python), ``parse`` (text to LLVM module,
with verification), ``optimize`` (graphc's O3 pipeline) and ``codegen`` (`TargetMachine.emit_object`), all
through `graphc.codegen.target`. It prints the IR text size too: a good proxy for what LLVM must chew on.

Part 2 runs, in a fresh Python process each time (so it is a cold compile: imports and LLVM set-up done, no
compile cache, no warm LLVM state), the constructor of ``gc.compile`` for the 784-256-128-10 training step
(forward, backward and SGD update; ``cache=False``), and splits its time into graph lowering + scheduling
(Python), module emission (Python, `ModuleEmitter.emit`), parse, optimize, codegen and object loading. With
``--profile`` it also prints the top of a cProfile of that constructor.

``--baseline path/to/old/gemm.py`` runs both parts a second time with another version of
`graphc.codegen.gemm` (e.g. ``git show HEAD~1:graphc/codegen/gemm.py > /tmp/gemm_old.py``), installed in
place of the current one, for before/after figures from one command.

``--smoke`` (tests/test_benchmarks.py): every part once, quickly: modules of 1 and 2 GEMMs, one process per
figure (no warm-up process: the helper library may be compiled in the first), the LSTM (with `--lstm`) at T=5.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from llvmlite import ir

from graphc.codegen import gemm as gemm_new
from graphc.codegen import target as tgt
from graphc.codegen.gemm import EpilogueContext

_PTR = ir.PointerType()


# ------------------------------------------------------------------------------------------ epilogues


def _bias_relu(ctx: EpilogueContext) -> ir.Value:
    b = ctx.builder
    v = b.fadd(ctx.acc, ctx.load(ctx.extra_args[0], ctx.col))
    zero = ir.Constant(ctx.acc.type, None)
    return b.select(b.fcmp_ordered(">", v, zero), v, zero)


def _sgd(ctx: EpilogueContext) -> ir.Value:
    """W[row, col] -= 0.1 * acc stored to another buffer (masked), C = acc * (1 - tanh'(...)) style math."""
    b = ctx.builder
    w = ctx.extra_args[0]
    ld = b.load(ctx.extra_args[1], typ=ir.IntType(64))
    idx = b.add(b.mul(ctx.row, ld), ctx.col)
    old = ctx.load(w, idx)
    new = b.fsub(old, b.fmul(ctx.splat(ir.Constant(ctx.elem_type, 0.1)), ctx.acc))
    p = b.gep(w, [idx], inbounds=True, source_etype=ctx.elem_type)
    if ctx.mask is None:
        b.store(new, p, align=4)
    else:
        mstore = ctx.builder.module.globals.get(f"llvm.masked.store.v{ctx.lanes}f32.p0")
        if mstore is None:
            mstore = ir.Function(ctx.builder.module, ir.FunctionType(ir.VoidType(), [ctx.acc.type, _PTR, ir.IntType(32),
                                 ir.VectorType(ir.IntType(1), ctx.lanes)]), f"llvm.masked.store.v{ctx.lanes}f32.p0")
        b.call(mstore, [new, p, ir.Constant(ir.IntType(32), 4), ctx.mask])
    one = ctx.splat(ir.Constant(ctx.elem_type, 1.0))
    return b.fmul(ctx.acc, b.fsub(one, b.fmul(old, old)))


def _row_col(ctx: EpilogueContext) -> ir.Value:
    b = ctx.builder
    colb = ctx.load(ctx.extra_args[0], ctx.col)
    rp = b.gep(ctx.extra_args[1], [ctx.row], inbounds=True, source_etype=ctx.elem_type)
    return b.fadd(b.fadd(ctx.acc, colb), ctx.splat(b.load(rp, typ=ctx.elem_type)))


# (epilogue, extra args, trans_a, trans_b, accumulate)
SPECS = [
    (_bias_relu, [_PTR], False, False, False),
    (_sgd, [_PTR, _PTR], True, False, False),
    (None, [], False, True, False),
    (_row_col, [_PTR, _PTR], True, True, True),
    (_bias_relu, [_PTR], False, True, False),
    (_sgd, [_PTR, _PTR], False, False, False),
    (None, [], True, False, True),
    (_row_col, [_PTR, _PTR], False, False, False),
]


def gemm_module(n: int, target, impl=gemm_new) -> ir.Module:
    mod = ir.Module(name=f"gemms{n}")
    mod.triple = target.triple
    for i in range(n):
        epi, extra, ta, tb, acc = SPECS[i % len(SPECS)]
        impl.emit_gemm(mod, f"g{i}", target=target, M=None, N=None, K=None, trans_a=ta, trans_b=tb,
                       accumulate=acc, epilogue=epi, extra_args=extra)
    return mod


def load_impl(path: str):
    """Another version of graphc/codegen/gemm.py, imported from a file."""
    spec = importlib.util.spec_from_file_location("gemm_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def time_stages(text: str, target) -> dict[str, float]:
    t0 = time.perf_counter()
    mod = tgt.parse(text, target)
    t1 = time.perf_counter()
    tgt.optimize(mod, target)
    t2 = time.perf_counter()
    tm = target.create_target_machine(jit=True)
    mod.data_layout = str(tm.target_data)
    tm.emit_object(mod)
    t3 = time.perf_counter()
    return {"parse": t1 - t0, "optimize": t2 - t1, "codegen": t3 - t2, "llvm": t3 - t0}


def bench_gemms(repeats: int, impl=gemm_new, counts=(1, 2, 4, 8)) -> None:
    target = tgt.host_target()
    tgt.ensure_llvm()
    time_stages(str(gemm_module(1, target, impl)), target)  # warm LLVM's one-time set-up
    print(f"{'gemms':>5s} {'IR KB':>7s} {'emit s':>7s} {'parse s':>8s} {'opt s':>7s} {'codegen s':>9s} "
          f"{'LLVM s':>7s} {'LLVM/gemm':>9s} {'each added':>10s}")
    first = None
    for n in counts:
        rows = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            text = str(gemm_module(n, target, impl))
            emit = time.perf_counter() - t0
            st = time_stages(text, target)
            st["emit"] = emit
            rows.append(st)
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        first = med["llvm"] if first is None else first
        added = f"{(med['llvm'] - first) / (n - 1):10.3f}" if n > 1 else f"{'':10s}"
        print(f"{n:5d} {len(text) / 1024:7.0f} {med['emit']:7.3f} {med['parse']:8.3f} {med['optimize']:7.3f} "
              f"{med['codegen']:9.3f} {med['llvm']:7.3f} {med['llvm'] / n:9.3f} {added}", flush=True)


# ------------------------------------------------------------------------------------ training step

_CHILD = r"""
import cProfile, io, json, pstats, sys, time
t_import = time.perf_counter()
if BASELINE:  # another gemm.py as graphc.codegen.gemm, in sys.modules before anything imports that
    import importlib.util
    spec = importlib.util.spec_from_file_location("graphc.codegen.gemm", BASELINE)
    mod = importlib.util.module_from_spec(spec); sys.modules["graphc.codegen.gemm"] = mod
    spec.loader.exec_module(mod)  # imports graphc, whose emitter takes this module from sys.modules
    import graphc.codegen
    graphc.codegen.gemm = mod
import graphc as gc
from graphc.codegen import emit as _emit
assert _emit.gemm_mod is sys.modules["graphc.codegen.gemm"]
if BASELINE:
    assert _emit.gemm_mod.__file__ == BASELINE
from graphc.codegen import emit as emit_mod
from graphc.codegen import stages, target as tgt
from graphc.runtime import jit
t_import = time.perf_counter() - t_import
tgt.host_target()
times = {"emit": 0.0, "helpers": 0.0, "parse": 0.0, "optimize": 0.0, "codegen": 0.0, "load": 0.0, "wait": 0.0}
sizes = {}
orig_emit = emit_mod.ModuleEmitter.emit
def timed_emit(self, *a, **k):
    t0 = time.perf_counter(); text = orig_emit(self, *a, **k); times["emit"] += time.perf_counter() - t0
    return text
# a split compile (graphc.codegen.parallel): the time this process waits for the helper process's object
from graphc.codegen import parallel
orig_result = parallel.Pending.result
def timed_result(self):
    t0 = time.perf_counter(); r = orig_result(self); times["wait"] += time.perf_counter() - t0; return r
parallel.Pending.result = timed_result
# parse/optimize are timed inside target.emit_object (the program's module; the GEMM helper library's time,
# from the disk cache or compiled, is "helpers"); codegen is the rest of emit_object
inner = {"parse": 0.0, "optimize": 0.0}
orig_parse, orig_optimize, orig_helper, orig_object = tgt.parse, tgt.optimize, tgt._helper_object, tgt.emit_object
def timed_parse(*a, **k):
    t0 = time.perf_counter(); r = orig_parse(*a, **k); inner["parse"] += time.perf_counter() - t0; return r
def timed_optimize(*a, **k):
    t0 = time.perf_counter(); r = orig_optimize(*a, **k); inner["optimize"] += time.perf_counter() - t0; return r
def timed_helper(*a, **k):
    t0 = time.perf_counter(); p0, o0 = inner["parse"], inner["optimize"]
    r = orig_helper(*a, **k)
    inner["parse"], inner["optimize"] = p0, o0
    times["helpers"] += time.perf_counter() - t0; return r
def timed_object(*a, **k):
    inner["parse"] = inner["optimize"] = 0.0
    t0 = time.perf_counter(); h0 = times["helpers"]; obj = orig_object(*a, **k); t = time.perf_counter() - t0
    times["parse"] += inner["parse"]; times["optimize"] += inner["optimize"]
    times["codegen"] += t - inner["parse"] - inner["optimize"] - (times["helpers"] - h0) - times["wait"]
    sizes["obj_bytes"] = len(obj); return obj
tgt.parse, tgt.optimize, tgt._helper_object = timed_parse, timed_optimize, timed_helper
stages.emit_object = timed_object
orig_load = tgt.Engine.from_object.__func__
def timed_load(cls, obj, target):
    t0 = time.perf_counter(); e = orig_load(cls, obj, target); times["load"] += time.perf_counter() - t0; return e
emit_mod.ModuleEmitter.emit = timed_emit
jit.Engine.from_object = classmethod(timed_load)
if WORKLOAD == "mlp":
    x = gc.input("x", ("N", 784)); y = gc.input("y", ("N",), "int32")
    logits = gc.nn.mlp(x, [256, 128, 10]); loss = gc.nn.softmax_cross_entropy(logits, y)
    ps = gc.nn.parameters(loss); gs = gc.grad(loss, ps)
    upd = {p: p - 0.1 * g for p, g in zip(ps, gs)}
    make = lambda: gc.compile(loss, updates=upd, cache=False)
elif WORKLOAD == "epoch":  # the same step as a whole-epoch function (gc.EpochFunction)
    x = gc.input("x", ("N", 784)); y = gc.input("y", ("N",), "int32")
    logits = gc.nn.mlp(x, [256, 128, 10]); loss = gc.nn.softmax_cross_entropy(logits, y)
    ps = gc.nn.parameters(loss); gs = gc.grad(loss, ps)
    upd = {p: p - 0.1 * g for p, g in zip(ps, gs)}
    make = lambda: gc.EpochFunction(loss, upd, x=x, y=y, cache=False)
else:  # benchmarks/bench_rnn.py's LSTM training step (loss and every gradient), T=LSTM_T (50)
    xs = gc.input("xs", (LSTM_T, "N", 32)); y = gc.input("y", ("N",), "int32")
    h = gc.nn.lstm(xs, 128, name="lstm")
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(h, 10, name="out"), y)
    ps = gc.nn.parameters(loss)
    make = lambda: gc.compile([loss, *gc.grad(loss, ps)], threads=1, cache=False)
prof = cProfile.Profile() if PROFILE else None
t0 = time.perf_counter()
if prof: prof.enable()
fn = make()
if prof: prof.disable()
total = time.perf_counter() - t0
kinds = {}
for k in fn.program.kernels:
    kinds[type(k).__name__] = kinds.get(type(k).__name__, 0) + 1
module = fn.compilation.module()
sizes["ir_bytes"] = len(module.text) + sum(map(len, module.parts))
out = {"total": total, "import": t_import, **times, **sizes, "kernels": kinds, "parts": len(module.parts),
       "helper_served": parallel.served}
if prof:
    s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    out["profile"] = s.getvalue()
print("RESULT" + json.dumps(out))
"""


_JAX_CHILD = r"""
import json, sys, time
sys.path.insert(0, HERE)
import bench_rnn
_, s = bench_rnn.jax_step(LSTM_T, 1)
print("RESULT" + json.dumps({"total": s}))
"""

_KEYS = ("total", "emit", "helpers", "parse", "optimize", "codegen", "wait", "load", "ir_bytes", "obj_bytes",
         "import")


def _child(code: str, **extra) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=os.environ.get("GRAPHC_CACHE_DIR", "/tmp/graphc-bench-nocache"), **extra)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[6:])


def bench_training_step(repeats: int, profile: bool, baseline: str | None = None, workload: str = "mlp",
                        lstm_t: int = 50, warm: bool = True) -> float:
    """The cold compile of a training step in fresh processes, the GEMM helper library in the disk cache (a
    first, uncounted process puts it there); its median total."""
    def code(prof: bool) -> str:
        return (_CHILD.replace("PROFILE", repr(prof)).replace("BASELINE", repr(baseline))
                .replace("WORKLOAD", repr(workload)).replace("LSTM_T", str(lstm_t)))
    if warm:
        _child(code(False))  # warm: the helper library compiled into the disk cache, the OS file cache
    runs, one = [], []
    for r in range(repeats):  # alternated: as the program is compiled by default, and by this process alone
        runs.append(_child(code(profile and r == 0)))
        one.append(_child(code(False), GRAPHC_COMPILE_PROCESSES="1"))
    if profile and "profile" in runs[0]:
        print(runs[0]["profile"])
    med = {k: statistics.median(r[k] for r in runs) for k in _KEYS}
    other = med["total"] - sum(med[k] for k in ("emit", "helpers", "parse", "optimize", "codegen", "wait", "load"))
    what = {"mlp": "training step 784-256-128-10 (forward, backward, SGD update), gc.compile",
            "epoch": "the same step as an epoch function, gc.EpochFunction",
            "lstm": f"LSTM training step (input 32, hidden 128, T={lstm_t}, loss and gradients; bench_rnn's)"}[workload]
    print(f"{what}\n  kernels: {runs[0]['kernels']}\n  cold (cache=False), helper library cached, "
          f"median of {repeats} fresh processes{' (one profiled)' if profile else ''}:")
    split = runs[0]["parts"] and runs[0]["helper_served"]
    print(f"  total {med['total']:.3f} s = lowering/scheduling {other:.3f} + emit {med['emit']:.3f} + helpers "
          f"{med['helpers']:.3f} + parse {med['parse']:.3f} + optimize {med['optimize']:.3f} + codegen "
          f"{med['codegen']:.3f} + waiting for the helper process {med['wait']:.3f} + link/load {med['load']:.3f}"
          + (f" (in this process: the program's module and the parts it kept of {runs[0]['parts']}; the helper "
             "process compiled the others meanwhile)" if split else " (one module, no helper process)"))
    print(f"  IR text {med['ir_bytes'] / 1024:.0f} KB, object {med['obj_bytes'] / 1024:.0f} KB; "
          f"(import graphc: {med['import']:.2f} s, not counted)")
    print("  per run total: " + ", ".join(f"{r['total']:.3f}" for r in runs))
    print(f"  LLVM in this process only (GRAPHC_COMPILE_PROCESSES=1), alternated: median "
          f"{statistics.median(r['total'] for r in one):.3f} s; per run: "
          + ", ".join(f"{r['total']:.3f}" for r in one))
    return med["total"]


def bench_jax_lstm(repeats: int, lstm_t: int = 50) -> float | None:
    """jax.jit's first call of bench_rnn's LSTM step (trace + XLA compile + run), fresh processes."""
    try:
        here = repr(os.path.dirname(os.path.abspath(__file__)))
        code = _JAX_CHILD.replace("HERE", here).replace("LSTM_T", str(lstm_t))
        runs = [_child(code)["total"] for _ in range(repeats)]
    except (RuntimeError, StopIteration) as e:
        print(f"  jax.jit: not measured ({str(e).strip().splitlines()[-1] if str(e).strip() else e})")
        return None
    med = statistics.median(runs)
    print(f"  jax.jit first call (same step, fresh processes): median {med:.3f} s; per run: "
          + ", ".join(f"{r:.3f}" for r in runs))
    return med


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats per figure (median reported)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one training-step compile")
    ap.add_argument("--skip-gemms", action="store_true")
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--lstm", action="store_true", help="also the LSTM step (T=50) against jax.jit's first call")
    ap.add_argument("--baseline", metavar="GEMM_PY", help="also measure with this version of gemm.py")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every part (tests): 1 and 2 GEMMs, one repeat (with --lstm: T=5)")
    args = ap.parse_args(argv)
    counts, lstm_t = (1, 2, 4, 8), 50
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        args.repeats, counts, lstm_t = 1, (1, 2), 5
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers

    print(f"CPU {peers.describe().get('cpu', '?')}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    versions = [("current graphc/codegen/gemm.py", None)]
    if args.baseline:
        versions.append((f"baseline {args.baseline}", args.baseline))
    for label, path in versions:
        print(f"\n== {label}")
        if not args.skip_gemms:
            bench_gemms(args.repeats, load_impl(path) if path else gemm_new, counts)
        if not args.skip_step:
            mlp = bench_training_step(args.repeats, args.profile, path, warm=not args.smoke)
            print(f"  goal: under 0.5 s -> {'met' if mlp < 0.5 else 'not met'}")
            epoch = bench_training_step(args.repeats, False, path, "epoch", warm=not args.smoke)
            print(f"  goal: under 0.5 s -> {'met' if epoch < 0.5 else 'not met'}")
        if args.lstm:
            lstm = bench_training_step(args.repeats, args.profile, path, "lstm", lstm_t, warm=not args.smoke)
            jx = bench_jax_lstm(args.repeats, lstm_t)
            if jx:
                print(f"  graphc cold / jax.jit first call = {lstm / jx:.2f} (goal: at most 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
