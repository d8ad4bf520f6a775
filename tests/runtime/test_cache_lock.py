"""The compile lock: processes that miss the same cache entry at once (the ranks of an mpirun, pytest-xdist's
workers) compile it once, the others load what it stored; a lock left by a holder that died, a lock file removed
while held, or a cache directory that cannot be written never stops a compile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np

from graphc import cachedir

KEY = "{:064x}".format

# compiles a program new to the (fresh) cache; says "at-lock" on reaching the compile lock, then takes it only once
# the file argv[1] exists, so that the test can hold both processes there: both missed the cache before either
# compiled. Prints whether the program came from the cache, how many times this process built it, and its error.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import graphc as gc
    from graphc.runtime import cache, jit

    real_lock, real_build, builds = cache.compiling, jit.CompiledFunction._build, []

    def compiling(key):
        print("at-lock", flush=True)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.01)
        return real_lock(key)

    def build(self):
        builds.append(self.cache_key)
        return real_build(self)

    cache.compiling, jit.CompiledFunction._build = compiling, build
    x = gc.input("x", (4, 3))
    fn = gc.compile(gc.relu(x) * 3.0 + 1.0)
    X = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 7
    err = float(np.abs(fn({"x": X}) - (np.maximum(X, 0) * 3 + 1)).max())
    print("result", fn.from_cache, len(builds), err, flush=True)
""")


def test_two_processes_missing_the_same_program_compile_it_once(tmp_path):
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        for p in procs:  # both missed the cache and wait at the lock
            line = p.stdout.readline()
            assert line == "at-lock\n", line + p.communicate(timeout=60)[1]
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        _, cached, builds, error = out.split("\n")[-2].split()
        assert float(error) < 1e-6
        results.append((cached, int(builds)))
    assert sorted(results) == [("False", 1), ("True", 0)], results  # one compiled, the other loaded its entry
    assert not list(cache_dir.glob(".lock-*")), "a released lock leaves no file behind"


def _program():
    import graphc as gc

    x = gc.input("x", (5,))
    return gc.relu(x) * 2.0 - 1.0


def _check(fn):
    X = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(fn({"x": X}), np.maximum(X, 0) * 2 - 1, rtol=1e-6)


def test_a_lock_left_by_a_holder_that_died_does_not_block(tmp_path, monkeypatch):
    import graphc as gc

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cachedir, "LOCK_WAIT_S", 60)  # a failure is a compile without the lock, not a hang
    key = gc.compile(_program(), cache=False).cache_key
    holder = textwrap.dedent(f"""
        import os, signal
        from graphc import cachedir
        with cachedir.compiling({key!r}) as held:
            assert held
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", holder], env=dict(os.environ), capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    lock = tmp_path / f".lock-{key}"
    assert lock.exists()  # the holder died holding it: its file stays, its flock went with it
    fn = gc.compile(_program())
    assert not fn.from_cache
    _check(fn)
    assert not lock.exists(), "the lock was taken (and its file removed on release), not waited out"
    again = gc.compile(_program())
    assert again.from_cache
    _check(again)


def test_an_unwritable_cache_directory_still_compiles(tmp_path, monkeypatch):
    import graphc as gc

    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "file" / "cache"))  # cannot be made, even by root
    with cachedir.compiling(KEY(1)) as held:
        assert not held
    for _ in range(2):  # nothing stored: each compiles
        fn = gc.compile(_program())
        assert not fn.from_cache
        _check(fn)


def test_lock_files_are_graphcs_and_clear_removes_one_while_held(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    assert cachedir.is_ours(f".lock-{KEY(7)}") and not cachedir.is_ours(".lock-mine")
    with cachedir.compiling(KEY(7)) as held:
        assert held and (tmp_path / f".lock-{KEY(7)}").exists()
        n, _ = cachedir.clear()
        assert n == 1 and not any(tmp_path.iterdir())
        with cachedir.compiling(KEY(7)) as nested:  # this thread holds it already: no wait on itself
            assert not nested
    # its holder released it without error; the next one takes it
    with cachedir.compiling(KEY(7)) as held:
        assert held
    assert not any(tmp_path.iterdir())


def test_prune_removes_lock_files_left_long_ago(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    old, new = tmp_path / f".lock-{KEY(1)}", tmp_path / f".lock-{KEY(2)}"
    old.touch()
    new.touch()
    t = os.path.getmtime(old) - 2 * cachedir.STALE_TEMP_S
    os.utime(old, (t, t))
    cachedir.prune(limit=None)
    assert not old.exists() and new.exists()


def test_threads_of_one_process_take_turns(tmp_path, monkeypatch):
    """flock locks an open file, not a process: another thread waits for the holder as another process would."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    order, entered = [], threading.Event()

    def other():
        entered.wait()
        with cachedir.compiling(KEY(3)) as held:
            order.append(("other", held))

    t = threading.Thread(target=other)
    t.start()
    with cachedir.compiling(KEY(3)) as held:
        entered.set()
        t.join(0.2)  # not a timed assertion: the other thread must not have run its block either way
        order.append(("first", held))
    t.join()
    assert order == [("first", True), ("other", True)]


def test_a_wait_past_its_bound_compiles_without_the_lock(tmp_path, monkeypatch):
    """A holder that makes others wait LOCK_WAIT_S (stopped, hung) is waited out: the waiter compiles anyway."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cachedir, "LOCK_WAIT_S", 0)
    held, done = threading.Event(), threading.Event()

    def holder():
        with cachedir.compiling(KEY(4)):
            held.set()
            done.wait()

    t = threading.Thread(target=holder)
    t.start()
    try:
        held.wait()
        with cachedir.compiling(KEY(4)) as got:
            assert not got
    finally:
        done.set()
        t.join()
    assert not any(tmp_path.iterdir())
