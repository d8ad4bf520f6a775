"""Issue 15, concurrency: one compiled function called from several Python threads at once stays correct (its
call table and arena are shared state), and two `graphc train` runs on one --out refuse each other cleanly."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import graphc as gc


@pytest.mark.parametrize("threads", [1, 2])
def test_a_compiled_function_called_from_many_threads_at_once_is_correct(threads):
    x = gc.input("x", ("N", 24))
    w = gc.input("w", (24, 16))
    h = gc.tanh(x @ w)
    outs = [gc.sum(h * h, axis=1), gc.exp(-h)]
    fn = gc.compile(outs, threads=threads)
    rng = np.random.default_rng(threads)
    cases = [{"x": rng.normal(size=(n, 24)).astype(np.float32), "w": rng.normal(size=(24, 16)).astype(np.float32)}
             for n in (1, 7, 33, 64, 130, 200, 5, 90)]
    want = [fn(c) for c in cases]  # one at a time
    for c, got in zip(cases, want, strict=True):
        for a, b in zip(got, gc.evaluate(outs, c), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    errors: list = []
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        try:
            start.wait()
            for i in range(40):
                j = (k + i) % len(cases)  # different shapes at once: each call binds its own batch size
                got = fn(cases[j])
                for a, b in zip(got, want[j], strict=True):
                    if not np.array_equal(a, b):
                        errors.append((k, i, j))
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:5]


def test_two_trainings_on_one_out_refuse_each_other(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "graphc.cli", "train", "--epochs", "100000", "--hidden", "8", "--quiet",
           "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "checkpoints").glob("ckpt-*.gcp")):
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        for extra in (["--resume"], ["--overwrite"]):
            p = subprocess.run(cmd[:-2] + extra + ["--out", str(out)], capture_output=True, text=True)
            assert p.returncode == 2, p.stderr
            assert f"another graphc train (process {first.pid}) is writing there" in p.stderr, p.stderr
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait()
    # the lock dies with its process (even by SIGKILL): the directory can be used again now
    done = int(sorted((out / "checkpoints").glob("ckpt-*.gcp"))[-1].stem.split("-")[-1])
    p = subprocess.run([*cmd[:5], str(done + 1), *cmd[6:], "--resume"], capture_output=True, text=True)
    assert p.returncode == 0 and "resuming from" in p.stderr, p.stderr


def test_one_epoch_function_trained_from_two_threads_equals_training_alone():
    """run_epoch grew the arena outside the lock: a thread starting a larger batch freed the arena the other
    thread's epoch was still running on (a segfault). Epochs of one function now run one at a time."""
    x, y, lr = gc.input("x", ("N", 16)), gc.input("y", ("N",), "int32"), gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [32, 4], name="twin"), y)
    params = gc.nn.parameters(loss)
    updates = {p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)}
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((100000, 16)).astype(np.float32), rng.integers(0, 4, 100000).astype(np.int32)

    def train(ef, batch, delay=0.0):
        time.sleep(delay)
        state = gc.nn.init_params(params, seed=0)
        ef.run_epoch(X, Y, state, batch=batch, scalars={"lr": 0.01}, threads=1, epoch=0)
        return state

    ef = gc.EpochFunction(loss, updates, x=x, y=y)
    got = {}
    ths = [threading.Thread(target=lambda b=b, d=d: got.__setitem__(b, train(ef, b, d)))
           for b, d in ((2, 0.0), (100000, 0.05))]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    for b in (2, 100000):
        alone = train(gc.EpochFunction(loss, updates, x=x, y=y), b)
        for k in alone:
            np.testing.assert_array_equal(got[b][k], alone[k], err_msg=f"batch {b}: {k}")


def test_a_call_too_big_for_memory_leaves_the_function_usable():
    """The plan was replaced before its arena was allocated: after the MemoryError the next, smaller call ran on
    the old, too small arena (a heap overflow)."""
    a, b, w = gc.input("a", ("N",)), gc.input("b", ("M",)), gc.input("w", ("M", 4))
    out = gc.sum(gc.tanh((gc.reshape(a, ("N", 1)) * gc.reshape(b, (1, "M"))) @ w), axis=1)
    fn = gc.compile(out, cache=False)

    def values(n, seed=0):
        r = np.random.default_rng(seed)
        return {"a": r.standard_normal(n).astype(np.float32), "b": r.standard_normal(n).astype(np.float32),
                "w": r.standard_normal((n, 4)).astype(np.float32) / n}

    fn(values(10))
    with pytest.raises(MemoryError, match=r"working memory at M=1000000, N=1000000 .* GiB"):
        fn(values(1_000_000))
    v = values(3000, seed=1)
    np.testing.assert_allclose(fn(v), gc.evaluate(out, v), atol=1e-5)
