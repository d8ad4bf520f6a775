"""The compile cache as shared objects: a program found in the cache runs without LLVM (no llvmlite.binding,
no libllvmlite mapped), loaded by the system's dynamic loader; bad entries are rebuilt, never loaded; without
a C compiler the cache falls back to MCJIT objects."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    import graphc as gc
    x = gc.input("x", ("N", 6))
    y = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [7, 3], name="so"), y)
    params = gc.nn.parameters(loss)
    ef = gc.EpochFunction(loss, {p: p - lr * g for p, g in zip(params, gc.grad(loss, params))}, x=x, y=y)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 6)).astype(np.float32)
    Y = rng.integers(0, 3, 20).astype(np.int32)
    state = gc.nn.init_params(params, seed=0)
    stats = ef.run_epoch(X, Y, state, batch=4, seed=1, scalars={"lr": 0.1})
    maps = open("/proc/self/maps").read()
    print(ef.from_cache, type(ef._engine).__name__, "llvmlite.binding" in sys.modules, "libllvmlite" in maps,
          repr(stats.mean_loss), repr(float(state["so.0.W"].sum())))
""")


def _run(tmp_path, **env):
    e = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path), **env)
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=e)
    assert p.returncode == 0, p.stderr
    cached, kind, binding, mapped, loss, wsum = p.stdout.split()
    return cached == "True", kind, binding == "True", mapped == "True", (float(loss), float(wsum))


def test_cached_program_runs_without_llvm(tmp_path):
    first = _run(tmp_path)
    assert first[:4] == (False, "SharedObject", True, True)  # compiled here: LLVM was needed
    sos = list(tmp_path.glob("*.so"))
    assert len(sos) == 1 and len(list(tmp_path.glob("*.sum"))) == 1 and not list(tmp_path.glob("*.o"))
    second = _run(tmp_path)
    assert second == (True, "SharedObject", False, False, first[4])  # the same results, LLVM never loaded
    # a corrupt shared object is detected by its checksum, deleted and rebuilt, never loaded
    data = bytearray(sos[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    sos[0].write_bytes(bytes(data))
    assert _run(tmp_path)[0] is False
    assert _run(tmp_path)[:2] == (True, "SharedObject")
    # a truncated one, and a checksum file of another key
    sos[0].write_bytes(sos[0].read_bytes()[:1000])
    assert _run(tmp_path)[0] is False
    summ = next(tmp_path.glob("*.sum"))
    summ.write_bytes(summ.read_bytes().replace(b"GRAPHCSO1", b"GRAPHCSO1" + b"0" * 4)[:-4])
    assert _run(tmp_path)[0] is False
    assert _run(tmp_path)[:3] == (True, "SharedObject", False)
    # a host description that does not parse is rewritten by LLVM, not trusted
    host = next(tmp_path.glob("host-*.txt"))
    host.write_text("garbage")
    assert _run(tmp_path)[:3] == (True, "SharedObject", True)
    good = host.read_text()
    assert good.startswith("graphc-host-2\n")
    # one that parses but was damaged (a feature this CPU lacks: SIGILL in every program compiled for it) or
    # names another machine: its checksum and triple are checked, so it is rebuilt, not trusted
    for edit in (lambda t: t.replace(",-", ",+", 1),
                 lambda t: t.replace("x86_64-", "aarch64-")):
        host.write_text(edit(good))
        assert host.read_text() != good
        assert _run(tmp_path)[:3] == (True, "SharedObject", True)
        assert host.read_text() == good


def test_a_failed_link_caches_nothing_it_cannot_load_again(tmp_path):
    # a C compiler that cannot link: the object (without the GEMM helpers it calls) was cached, and every later
    # process segfaulted in the first call
    first = _run(tmp_path, CC="/bin/false")
    assert first[0] is False
    assert not list(tmp_path.glob("*.o")) and not list(tmp_path.glob("*.so"))
    again = _run(tmp_path)
    assert again[0] is False and again[4] == first[4]
    assert _run(tmp_path)[:2] == (True, "SharedObject")


def test_without_a_c_compiler_the_cache_holds_mcjit_objects(tmp_path):
    first = _run(tmp_path, CC="/nonexistent/cc")
    assert first[:2] == (False, "Engine")
    assert len(list(tmp_path.glob("*.o"))) == 1 and not list(tmp_path.glob("*.so"))
    second = _run(tmp_path, CC="/nonexistent/cc")
    assert second[:2] == (True, "Engine") and second[4] == first[4]
    # with a compiler again, the object entry still serves (and is not a shared object)
    assert _run(tmp_path)[:2] == (True, "Engine")


def test_each_load_is_a_private_copy(tmp_path, monkeypatch):
    """Two functions of one graph (the second from the cache) each get their own copy of the code: their own
    globals and thread team, so freeing one leaves the other working."""
    import gc as pygc

    import numpy as np

    import graphc as gc

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    x = gc.input("x", ("N",))
    f1 = gc.compile(gc.exp(x) * 2.0)
    f2 = gc.compile(gc.exp(x) * 2.0)
    assert not f1.from_cache and f2.from_cache
    assert type(f2._engine).__name__ == "SharedObject" and f1._engine.lib._handle != f2._engine.lib._handle
    a = np.linspace(-3, 3, 200_000, dtype=np.float32)
    want = f1({"x": a}, threads=2)
    del f1
    pygc.collect()
    np.testing.assert_array_equal(f2({"x": a}, threads=2), want)
    np.testing.assert_allclose(want, np.exp(a) * 2, rtol=1e-6)


def test_gemm_helpers_compile_once_and_bad_entries_are_rebuilt(tmp_path, monkeypatch):
    """The GEMM helpers (drivers, microkernels, packing) are compiled once per config into a library kept in the
    cache and linked with each program; a corrupt library entry is rebuilt, never linked."""
    import numpy as np

    import graphc as gc
    from graphc.codegen import gemm
    from graphc.codegen import target as tgt

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tgt, "_HELPERS", {})
    x = gc.input("x", ("N", 20))
    w = gc.param("w", (20, 9))
    y = gc.relu(x @ w)
    fn = gc.compile(y, cache=False)
    text, drivers = gemm.split_helpers(fn.llvm_ir)
    assert drivers and 'declare void @"graphc.gemm.driver.' in text and "define internal void @\"graphc.gemm." \
        not in text
    libs = list(tmp_path.glob("*.bin"))
    assert len(libs) == len(drivers)
    X = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    W = np.random.default_rng(1).standard_normal((20, 9)).astype(np.float32)
    want = gc.evaluate(y, {"x": X, "w": W})
    np.testing.assert_allclose(fn({"x": X, "w": W}), want, rtol=1e-5, atol=1e-6)
    for p in libs:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    monkeypatch.setattr(tgt, "_HELPERS", {})
    fn2 = gc.compile(gc.relu(x @ w) * 2.0, cache=False)
    np.testing.assert_allclose(fn2({"x": X, "w": W}), 2 * want, rtol=1e-5, atol=1e-6)
    from graphc.runtime import cache

    assert all(cache.load_blob(p.stem) is not None for p in tmp_path.glob("*.bin"))  # rebuilt, checked


def test_jit_module_declares_gemm_helpers_and_falls_back_whole(tmp_path, monkeypatch):
    """The module compiled for this process only declares its GEMM helpers (their library is linked), while
    `fn.llvm_ir` shows them defined; where the library cannot be had, the module is emitted whole again."""
    import numpy as np

    import graphc as gc
    from graphc.codegen import target as tgt

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tgt, "_HELPERS", {})
    x = gc.input("x", ("N", 20))
    w = gc.param("w", (20, 9))
    y = gc.relu(x @ w)
    fn = gc.compile(y, cache=False)
    module = fn.compilation.module()
    assert module.helpers_declared
    assert 'declare void @"graphc.gemm.driver.' in module.text and 'define internal void @"graphc.gemm.' \
        not in module.text
    assert 'define internal void @"graphc.gemm.driver.' in fn.llvm_ir
    X = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    W = np.random.default_rng(1).standard_normal((20, 9)).astype(np.float32)
    want = gc.evaluate(y, {"x": X, "w": W})

    def no_library(target, driver):
        raise OSError("no helper library here")

    monkeypatch.setattr(tgt, "_helper_object", no_library)
    fn2 = gc.compile(gc.relu(x @ w) * 2.0, cache=False)
    assert fn2.compilation.module().helpers_declared
    assert not fn2.compilation.object_code().data.helpers  # compiled whole: no library linked
    np.testing.assert_allclose(fn2({"x": X, "w": W}), 2 * want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn({"x": X, "w": W}), want, rtol=1e-5, atol=1e-6)


def test_a_cache_hit_lists_the_same_stages_as_a_fresh_compile(tmp_path, monkeypatch):
    """A program found in the cache ran no code stages; `fn.stages` still ends with the LLVM module (emitted when
    asked) and the machine code (read back from the cache), as the README lists them."""
    import graphc as gc

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    x = gc.input("x", ("N", 4))
    y = gc.input("y", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [8, 3], name="st"), y)
    params = gc.nn.parameters(loss)
    fresh = gc.compile([loss, *gc.grad(loss, params)])
    hit = gc.compile([loss, *gc.grad(loss, params)])
    assert not fresh.from_cache and hit.from_cache
    names = [n for n, _ in fresh.stages]
    assert names[-5:] == ["schedule", "fusion", "memory", "llvm", "object"]
    assert [n for n, _ in hit.stages] == names
    (_, module), (_, code) = hit.stages[-2:]
    assert module.text == fresh.stages[-2][1].text
    assert code.cached and code.data == next(tmp_path.glob("*.so")).read_bytes()
    assert "from the compile cache" in str(code)
