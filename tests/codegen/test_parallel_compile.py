"""Compiling on two cores (graphc.codegen.parallel): a large program's kernels are emitted as modules of their
own, a helper process compiles about half of them, and the objects are linked into one shared object. The code
computes exactly what the program compiled as one module computes; a helper that cannot start, dies or answers an
error leaves the compile to this process, with the same result."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import graphc as gc
from graphc.codegen import parallel
from graphc.codegen.target import links_helpers

pytestmark = pytest.mark.skipif(not links_helpers(), reason="split compiles link shared objects with a C compiler")


@pytest.fixture
def split(monkeypatch):
    """Every program split (the helper's own threshold is for large ones), as on a machine of two CPUs."""
    monkeypatch.setattr(parallel, "MIN_KERNELS", 1)
    monkeypatch.setattr(parallel, "available", lambda: True)


def _mlp_epoch():
    x = gc.input("x", ("N", 12))
    y = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [16, 8, 3], name="pc"), y)
    params = gc.nn.parameters(loss)
    return loss, params, {p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)}, x, y


def _train(ef, params):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((37, 12)).astype(np.float32)
    Y = rng.integers(0, 3, 37).astype(np.int32)
    state = gc.nn.init_params(params, seed=0)
    stats = ef.run_epoch(X, Y, state, batch=5, seed=1, scalars={"lr": 0.1})
    return [stats.mean_loss] + [state[p.name] for p in params]


def _parts(fn) -> tuple:
    return fn.compilation.module().parts


def test_a_split_epoch_computes_what_one_module_computes(split, monkeypatch):
    loss, params, updates, x, y = _mlp_epoch()
    served = parallel.served
    ef = gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    assert len(_parts(ef)) >= 10  # a module per kernel
    assert parallel.served == served + 1  # the helper compiled some of them
    got = _train(ef, params)
    monkeypatch.setattr(parallel, "available", lambda: False)
    whole = gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    assert _parts(whole) == ()
    for a, b in zip(got, _train(whole, params), strict=True):
        np.testing.assert_array_equal(a, b)
    # what inspection shows is one module: the kernels defined in it
    assert "define internal void @\"k0_" in ef.llvm_ir and "declare hidden" not in ef.llvm_ir


def test_a_split_scan_with_a_checked_gather_agrees_and_reports_its_errors(split, monkeypatch):
    """Kernels of a loop's body in modules of their own, and the error word a gather's check sets: defined by
    the program's module, set by a kernel compiled in another object."""
    ids = gc.input("ids", ("T", "N"), "int32")
    # computed ids (an input's are checked before the call): the check in the kernel is what this tests
    xs = gc.nn.embedding(gc.maximum(ids, -100), 7, 5, name="pe")
    h = gc.nn.lstm(xs, 6, name="pl")
    loss = gc.sum(h * h)
    params = gc.nn.parameters(loss)
    outs = [loss, *gc.grad(loss, params)]
    rng = np.random.default_rng(3)
    values = {p.name: (0.4 * rng.standard_normal(p.shape)).astype(np.float32) for p in params}
    values["ids"] = rng.integers(0, 7, (9, 4)).astype(np.int32)
    fn = gc.compile(outs, threads=2, cache=False)
    assert _parts(fn)
    got = fn(values)
    monkeypatch.setattr(parallel, "available", lambda: False)
    whole = gc.compile(outs, threads=2, cache=False)
    assert _parts(whole) == ()
    for a, b in zip(got, whole(values), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got, gc.evaluate(outs, values), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    values["ids"][5, 2] = 7
    with pytest.raises(gc.InputError, match=r"embedding 'pe': id out of range \[0, 7\)"):
        fn(values)


# helpers that fail; each gets the file descriptor of its answers as its last argument
_OUT = "import os, sys; out = os.fdopen(int(sys.argv[-1]), 'wb'); "


@pytest.mark.parametrize("helper", [
    "import sys; sys.exit(3)",  # dies at once
    _OUT + "sys.stdin.buffer.readline(); out.write(b'\\x01\\xff'); sys.exit(0)",  # a short answer, and dies
    _OUT + "sys.stdin.buffer.readline(); out.write(b'\\x01' + b'\\xff' * 8); out.flush(); sys.stdin.buffer.read()",
    # an error answer: (False, n) and n bytes of message
    _OUT + "import struct; sys.stdin.buffer.readline(); out.write(struct.pack('<?Q', 0, 2) + b'no'); out.flush();"
    " sys.stdin.buffer.read()",
    "import sys, time; sys.stdin.buffer.readline(); time.sleep(60)",  # never answers
    "print('a line from a sitecustomize'); import sys; sys.exit(0)",  # prints: its stdout is not the answers
])
def test_a_failing_helper_leaves_the_compile_to_this_process(split, monkeypatch, helper):
    monkeypatch.setattr(parallel, "COMMAND", [sys.executable, "-c", helper])
    monkeypatch.setattr(parallel, "ANSWER_SECONDS", 2.0)
    parallel.shutdown()
    loss, params, updates, x, y = _mlp_epoch()
    served = parallel.served
    ef = gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    assert _parts(ef) and parallel.served == served
    got = _train(ef, params)
    parallel.shutdown()
    monkeypatch.setattr(parallel, "available", lambda: False)
    whole = gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    assert _parts(whole) == ()
    for a, b in zip(got, _train(whole, params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_helper_that_died_between_compiles_is_started_again(split):
    loss, params, updates, x, y = _mlp_epoch()
    gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    first = parallel._proc
    first.kill()
    first.wait()
    gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    assert parallel._proc is not None and parallel._proc is not first and parallel._proc.poll() is None


def test_an_interrupt_while_waiting_for_the_helper_does_not_leave_its_answer_for_the_next_compile(split, monkeypatch):
    """A KeyboardInterrupt (or a signal handler's exception) in this process while the helper compiles: the
    helper is stopped, so that the next compile does not read the interrupted one's object as its own."""
    loss, params, updates, x, y = _mlp_epoch()
    real = parallel.select.select

    def interrupted(*a, **k):
        real(*a, **k)  # the answer is there: an interrupt now would leave it in the pipe
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel.select, "select", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gc.EpochFunction(loss, updates, x=x, y=y, cache=False)
    monkeypatch.setattr(parallel.select, "select", real)
    assert parallel._proc is None
    served = parallel.served
    ef = gc.EpochFunction(loss * 1.0, updates, x=x, y=y, cache=False)  # another program
    assert parallel.served == served + 1
    monkeypatch.setattr(parallel, "available", lambda: False)
    whole = gc.EpochFunction(loss * 1.0, updates, x=x, y=y, cache=False)
    for a, b in zip(_train(ef, params), _train(whole, params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_helper_imports_graphc_from_where_this_process_has_it(tmp_path, monkeypatch):
    """Not from its working directory (which `python -m` would put first on its path)."""
    (tmp_path / "graphc").mkdir()
    (tmp_path / "graphc" / "__init__.py").write_text("raise ImportError('the graphc of the working directory')")
    monkeypatch.chdir(tmp_path)
    parallel.shutdown()
    parallel.prestart()
    proc = parallel._proc
    assert proc is not None
    pending = parallel.submit([_tiny_module()], gc.codegen.target.host_target())
    assert pending is not None and pending.result()[:4] == b"\x7fELF"


def _tiny_module() -> str:
    from graphc.codegen.target import host_target

    return (f'target triple = "{host_target().triple}"\n'
            'define hidden void @"k_tiny"(ptr %p) {\n  store i32 1, ptr %p\n  ret void\n}\n')


def test_one_cpu_or_turned_off_compiles_one_module(monkeypatch):
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0})
    assert not parallel.available()
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1})
    assert parallel.available()
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # two ranks of an MPI job on this machine's two CPUs
    assert not parallel.available()
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")
    assert parallel.available()
    monkeypatch.setenv("GRAPHC_COMPILE_PROCESSES", "1")
    assert not parallel.available()
