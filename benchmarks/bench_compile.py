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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
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


def bench_gemms(repeats: int, impl=gemm_new) -> None:
    target = tgt.host_target()
    tgt.ensure_llvm()
    time_stages(str(gemm_module(1, target, impl)), target)  # warm LLVM's one-time set-up
    print(f"{'gemms':>5s} {'IR KB':>7s} {'emit s':>7s} {'parse s':>8s} {'opt s':>7s} {'codegen s':>9s} "
          f"{'LLVM s':>7s} {'LLVM/gemm':>9s} {'each added':>10s}")
    first = None
    for n in (1, 2, 4, 8):
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
from graphc.codegen import target as tgt
from graphc.runtime import jit
t_import = time.perf_counter() - t_import
tgt.host_target()
times = {"emit": 0.0, "parse": 0.0, "optimize": 0.0, "codegen": 0.0, "load": 0.0}
sizes = {}
orig_emit = emit_mod.ModuleEmitter.emit
def timed_emit(self, *a, **k):
    t0 = time.perf_counter(); text = orig_emit(self, *a, **k); times["emit"] += time.perf_counter() - t0
    sizes["ir_bytes"] = len(text); return text
def timed_object(text, target, *, jit=False):
    t0 = time.perf_counter(); mod = tgt.parse(text, target); t1 = time.perf_counter()
    tgt.optimize(mod, target); t2 = time.perf_counter()
    tm = target.create_target_machine(jit=jit); mod.data_layout = str(tm.target_data); obj = tm.emit_object(mod)
    t3 = time.perf_counter()
    times["parse"] += t1 - t0; times["optimize"] += t2 - t1; times["codegen"] += t3 - t2
    sizes["obj_bytes"] = len(obj); return obj
orig_load = tgt.Engine.from_object.__func__
def timed_load(cls, obj, target):
    t0 = time.perf_counter(); e = orig_load(cls, obj, target); times["load"] += time.perf_counter() - t0; return e
emit_mod.ModuleEmitter.emit = timed_emit
jit.emit_object = timed_object
jit.Engine.from_object = classmethod(timed_load)
x = gc.input("x", ("N", 784)); y = gc.input("y", ("N",), "int32")
logits = gc.nn.mlp(x, [256, 128, 10]); loss = gc.nn.softmax_cross_entropy(logits, y)
ps = gc.nn.parameters(loss); gs = gc.grad(loss, ps)
upd = {p: p - 0.1 * g for p, g in zip(ps, gs)}
prof = cProfile.Profile() if PROFILE else None
t0 = time.perf_counter()
if prof: prof.enable()
fn = gc.compile(loss, updates=upd, cache=False)
if prof: prof.disable()
total = time.perf_counter() - t0
kinds = {}
for k in fn.program.kernels:
    kinds[type(k).__name__] = kinds.get(type(k).__name__, 0) + 1
out = {"total": total, "import": t_import, **times, **sizes, "kernels": kinds}
if prof:
    s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    out["profile"] = s.getvalue()
print("RESULT" + json.dumps(out))
"""


def bench_training_step(repeats: int, profile: bool, baseline: str | None = None) -> None:
    runs = []
    for r in range(repeats):
        code = _CHILD.replace("PROFILE", "True" if profile and r == 0 else "False")
        code = code.replace("BASELINE", repr(baseline))
        env = dict(os.environ, GRAPHC_CACHE_DIR=os.environ.get("GRAPHC_CACHE_DIR", "/tmp/graphc-bench-nocache"))
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT"))
        runs.append(json.loads(line[6:]))
    if profile and "profile" in runs[0]:
        print(runs[0]["profile"])
    med = {k: statistics.median(r[k] for r in runs) for k in ("total", "emit", "parse", "optimize", "codegen",
                                                               "load", "ir_bytes", "obj_bytes", "import")}
    other = med["total"] - med["emit"] - med["parse"] - med["optimize"] - med["codegen"] - med["load"]
    print(f"training step 784-256-128-10 (kernels: {runs[0]['kernels']}), cold gc.compile(cache=False), "
          f"median of {repeats} fresh processes:")
    print(f"  total {med['total']:.3f} s = lowering/scheduling {other:.3f} + emit {med['emit']:.3f} + parse "
          f"{med['parse']:.3f} + optimize {med['optimize']:.3f} + codegen {med['codegen']:.3f} + load "
          f"{med['load']:.3f}")
    print(f"  IR text {med['ir_bytes'] / 1024:.0f} KB, object {med['obj_bytes'] / 1024:.0f} KB; "
          f"(import graphc: {med['import']:.2f} s, not counted)")
    print("  per run total: " + ", ".join(f"{r['total']:.3f}" for r in runs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats per figure (median reported)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one training-step compile")
    ap.add_argument("--skip-gemms", action="store_true")
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--baseline", metavar="GEMM_PY", help="also measure with this version of gemm.py")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    versions = [("current graphc/codegen/gemm.py", None)]
    if args.baseline:
        versions.append((f"baseline {args.baseline}", args.baseline))
    for label, path in versions:
        print(f"\n== {label}")
        if not args.skip_gemms:
            bench_gemms(args.repeats, load_impl(path) if path else gemm_new)
        if not args.skip_step:
            bench_training_step(args.repeats, args.profile, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
