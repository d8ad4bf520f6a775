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
