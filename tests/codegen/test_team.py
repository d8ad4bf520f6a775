"""The persistent thread team behind multi-threaded calls: started once, parked between calls, restarted in a
forked child, joined when the compiled function is freed, safe under concurrent callers."""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.target import host_target

pytestmark = pytest.mark.skipif("linux" not in host_target().triple, reason="the team needs futexes (Linux)")


def _fn():
    x = gc.input("x", ("N",))
    w = gc.input("w", (37,))
    return gc.compile(gc.tanh(gc.exp(x * 0.001)) + gc.sum(w), cache=False)


def test_team_results_match_one_thread_across_many_calls():
    fn = _fn()
    rng = np.random.default_rng(0)
    for n in (1, 5, 100, 4097, 200_000):
        vals = {"x": rng.standard_normal(n).astype(np.float32), "w": rng.standard_normal(37).astype(np.float32)}
        one = fn(vals, threads=1)
        for t in (2, 3, 2, 4):
            np.testing.assert_array_equal(fn(vals, threads=t), one)
            assert fn.last_threads == t


def test_concurrent_python_threads_share_a_function_and_use_others():
    fns = [_fn(), _fn()]
    rng = np.random.default_rng(1)
    vals = {"x": rng.standard_normal(50_000).astype(np.float32), "w": rng.standard_normal(37).astype(np.float32)}
    want = fns[0](vals, threads=1)
    errors = []

    def work(k):
        try:
            for i in range(40):
                got = fns[(k + i) % 2](vals, threads=2 + (i % 2))
                if not np.array_equal(got, want):
                    errors.append(f"thread {k} call {i} differs")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]


SCRIPT = textwrap.dedent("""
    import gc as pygc, os, sys
    import numpy as np
    import graphc as gc

    def tasks():
        return len(os.listdir("/proc/self/task"))

    x = gc.input("x", ("N",))
    fn = gc.compile(gc.exp(x) * 2.0, cache=False)
    a = np.random.default_rng(0).random(100_000).astype(np.float32)
    one = fn({"x": a}, threads=1)
    before = tasks()
    assert np.array_equal(fn({"x": a}, threads=3), one) and fn.last_threads == 3
    assert tasks() == before + 2, (before, tasks())  # two workers, started once...
    for _ in range(20):
        fn({"x": a}, threads=3)
    assert tasks() == before + 2  # ...and reused
    pid = os.fork()
    if pid == 0:  # the child has no workers: the team starts new ones
        ok = np.array_equal(fn({"x": a}, threads=3), one) and fn.last_threads == 3
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    held = tasks()  # (fork may also have stopped numpy's BLAS threads: count from here)
    del fn
    pygc.collect()
    assert tasks() == held - 2, (held, tasks())  # joined when the function was freed
    print("ok")
""")


def test_team_is_reused_restarted_after_fork_and_joined_when_freed():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


FORK_BUSY = textwrap.dedent("""
    import os, threading, time
    import numpy as np
    import graphc as gc

    x = gc.input("x", ("N",))
    fn = gc.compile(gc.tanh(gc.exp(x * 0.001)) * 3.0, cache=False)
    big = np.random.default_rng(0).random(4_000_000).astype(np.float32)
    small = big[:100_000].copy()
    want = fn({"x": small}, threads=1)
    stop = False

    def busy():  # keeps the team's lock taken most of the time
        while not stop:
            fn({"x": big}, threads=2)

    t = threading.Thread(target=busy)
    t.start()
    time.sleep(0.2)
    pid = os.fork()
    if pid == 0:  # the lock may be held by a thread that does not exist here
        ok = np.array_equal(fn({"x": small}, threads=2), want) and fn.last_threads == 2
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    stop = True
    t.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    print("ok")
""")


def test_fork_while_another_thread_runs_a_call():
    """fork() while a Python thread is inside a multi-threaded call: the child's first call must not wait for
    the parent's lock or workers."""
    p = subprocess.run([sys.executable, "-c", FORK_BUSY], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]

