"""A program found in the compile cache runs from its machine code and its stored run-time spec: the second
process builds the graph and its gradient, finds the program and trains without importing sympy, the compiler's
stages or LLVM, and gets the first process's numbers exactly."""

import json
import os
import subprocess
import sys

import numpy as np

MODELS = r"""
import json, sys
import numpy as np
import graphc as gc

out = {}
rng = np.random.default_rng(0)

# an MLP's training epoch (the native driver), softmax cross-entropy, SGD updates in place
x = gc.input("x", ("N", 12)); t = gc.input("y", ("N",), "int32"); lr = gc.input("lr", (), "float32")
loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [16, 8, 3]), t)
params = gc.nn.parameters(loss)
ef = gc.EpochFunction(loss, {p: p - lr * g for p, g in zip(params, gc.grad(loss, params))}, x=x, y=t, threads=1)
state = gc.nn.init_params(params, seed=0)
X = rng.normal(size=(50, 12)).astype(np.float32); Y = rng.integers(0, 3, 50).astype(np.int32)
st = ef.run_epoch(X, Y, state, batch=8, scalars={"lr": 0.1})
out["mlp"] = [float(st.mean_loss)] + [float(v.sum()) for v in state.values()]
out["mlp_cached"] = ef.from_cache

# a small CNN's loss and gradients through gc.compile (conv, pooling, dense; symbolic batch)
img = gc.input("img", ("N", 8, 8, 1)); lab = gc.input("lab", ("N",), "int32")
h = gc.nn.max_pool2d(gc.nn.conv2d(img, 4, 3, name="c1"))
cl = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.reshape(h, ("N", -1)), 3, name="o"), lab)
cp = gc.nn.parameters(cl)
fn = gc.compile([cl, *gc.grad(cl, cp)], threads=2)
vals = gc.nn.init_params(cp, seed=1)
vals["img"] = rng.normal(size=(5, 8, 8, 1)).astype(np.float32); vals["lab"] = rng.integers(0, 3, 5).astype(np.int32)
out["cnn"] = [float(np.asarray(v).sum()) for v in fn(vals)]
out["cnn_cached"] = fn.from_cache

# an LSTM over a symbolic length (gc.scan and backprop through time)
xs = gc.input("xs", ("T", "N", 3)); yy = gc.input("yy", ("N",), "int32")
ll = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.nn.lstm(xs, 5, name="r"), 2, name="ro"), yy)
lp = gc.nn.parameters(ll)
rf = gc.compile([ll, *gc.grad(ll, lp)], threads=1)
rv = gc.nn.init_params(lp, seed=2)
rv["xs"] = rng.normal(size=(4, 3, 3)).astype(np.float32); rv["yy"] = rng.integers(0, 2, 3).astype(np.int32)
out["lstm"] = [float(np.asarray(v).sum()) for v in rf(rv)]
out["lstm_cached"] = rf.from_cache
out["memory_plan_arena"] = rf.memory_plan.arena_bytes

# constant subexpressions, folded while compiling: exp of a constant, a product of scalar constants, a sigmoid of
# a constant vector (folding once evaluated them through the formula's sympy lambdify)
c = gc.input("c", ("N", 3))
folded = gc.sum(gc.exp(gc.constant(2.0)) * c * (gc.constant(0.5) * 3.0) + gc.sigmoid(gc.constant([1.0, -2.0, 0.0])))
kf = gc.compile(folded)
out["folded"] = float(kf({"c": np.arange(6, dtype=np.float32).reshape(2, 3)}))
out["folded_cached"] = kf.from_cache
out["loaded"] = sorted(m for m in ("sympy", "graphc.codegen.schedule", "graphc.codegen.emit", "graphc.ops.scalar",
                                   "llvmlite.binding") if m in sys.modules)
print("RESULT" + json.dumps(out))
"""


def _run(cache_dir) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir))
    r = subprocess.run([sys.executable, "-c", MODELS], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))[6:])


def test_a_cached_program_runs_without_sympy_or_the_compiler_and_gives_the_same_numbers(tmp_path):
    first = _run(tmp_path)
    assert not first["mlp_cached"] and not first["cnn_cached"] and not first["lstm_cached"]
    assert not first["folded_cached"]
    assert "sympy" in first["loaded"]  # the first process compiled: the stages, sympy and LLVM were needed
    second = _run(tmp_path)
    assert second["mlp_cached"] and second["cnn_cached"] and second["lstm_cached"] and second["folded_cached"]
    assert second["loaded"] == [], second["loaded"]
    for k in ("mlp", "cnn", "lstm", "memory_plan_arena", "folded"):
        assert second[k] == first[k], k


def test_inspecting_a_cached_program_runs_its_stages_on_demand(tmp_path, monkeypatch):
    import numpy as np

    import graphc as gc

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    x = gc.input("x", ("N", 3))
    y = gc.sum(gc.tanh(x @ gc.param("cached.W", (3, 4))))
    a = gc.compile(y)
    b = gc.compile(y)
    assert not a.from_cache and b.from_cache and b._compilation is None  # nothing ran for the call
    vals = {"x": np.ones((2, 3), np.float32), "cached.W": np.full((3, 4), 0.5, np.float32)}
    assert a(vals) == b(vals)
    assert b.kernels == a.kernels and b.memory_plan.arena_bytes == a.memory_plan.arena_bytes
    assert [n for n, _ in b.stages] == [n for n, _ in a.stages]


def test_a_damaged_run_time_spec_is_rebuilt(tmp_path, monkeypatch):
    import numpy as np

    import graphc as gc
    from graphc.runtime import cache

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    x = gc.input("x", ("N", 2))
    y = gc.sum(gc.exp(x) * 3.0)
    a = gc.compile(y)
    spec = tmp_path / f"{cache._spec_key(a.cache_key)}.bin"
    assert spec.exists()
    spec.write_bytes(spec.read_bytes()[:-7] + b"garbage")
    b = gc.compile(y)
    assert not b.from_cache and spec.exists()  # compiled again, and the spec written again
    c = gc.compile(y)
    assert c.from_cache
    v = {"x": np.ones((3, 2), np.float32)}
    assert a(v) == b(v) == c(v)


def test_a_cached_programs_run_time_check_names_the_lines_of_the_graph_that_called_it(tmp_path):
    """The cache key is the graph's structure, not its source lines: a program compiled for one file, then found
    for the same graph built on other lines, names the lines of the graph that ran (it named the first file's)."""
    body = ("import numpy as np, graphc as gc\n"
            "z = gc.input('z', ('N', 3)); lab = gc.input('lab', ('N',), 'int32')\n"
            "loss = gc.nn.softmax_cross_entropy(z, gc.abs(lab))\n"  # computed labels: checked in the kernel
            "try:\n    gc.compile(loss)({'z': np.zeros((2, 3), 'f4'), 'lab': np.array([0, 7], 'i4')})\n"
            "except gc.InputError as e:\n    print('ERR', e)\n")
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path / "cache"))
    seen = []
    for name, pad in (("first.py", 0), ("second.py", 5)):
        (tmp_path / name).write_text("# a comment\n" * pad + body)
        r = subprocess.run([sys.executable, str(tmp_path / name)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        seen.append(next(ln for ln in r.stdout.splitlines() if ln.startswith("ERR")))
    assert "label out of range [0, 3) at first.py:3" in seen[0]
    assert "label out of range [0, 3) at second.py:8" in seen[1], seen[1]


def test_a_cold_compile_with_this_machines_derivatives_needs_no_sympy(tmp_path):
    """With the derivatives (and formulas) computed once on this machine, a program missing from the cache
    compiles without importing sympy: the kernel IR's index algebra and scalar formulas are graphc's own, and
    constant folding computes an elementwise op's formula term with numpy."""
    first = _run(tmp_path)
    for p in tmp_path.iterdir():  # the programs' entries, not the per-machine derivative file
        if p.suffix in (".so", ".sum", ".bin"):
            p.unlink()
    cold = _run(tmp_path)
    assert not cold["mlp_cached"] and not cold["cnn_cached"] and not cold["lstm_cached"] and not cold["folded_cached"]
    assert "sympy" not in cold["loaded"] and "graphc.codegen.emit" in cold["loaded"], cold["loaded"]
    for k in ("mlp", "cnn", "lstm", "memory_plan_arena", "folded"):
        assert cold[k] == first[k], k
    sig = 1 / (1 + np.exp(-np.array([1.0, -2.0, 0.0])))
    assert np.isclose(first["folded"], np.exp(2.0) * 1.5 * 15 + 2 * sig.sum(), rtol=1e-6)
