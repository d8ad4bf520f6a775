"""Every benchmark script (benchmarks/) runs in its --smoke mode: the code paths of a real run (graphc's side built,
compiled and timed, child processes and binaries launched, the table printed) at the smallest sizes, one repeat.
Nothing else runs the benchmarks in CI, so a script broken by a change elsewhere (an API it calls, a binary's
flags, a peer that is not installed) fails here instead of rotting unnoticed.

Each script runs in a subprocess with this checkout's graphc first on PYTHONPATH, the environment otherwise as
the tests have it (OPENBLAS_* and the thread settings untouched), a compile cache shared by these tests
($GRAPHC_CACHE_DIR, else one temporary directory for every xdist worker), and its own working directory. PyTorch
and JAX are made unimportable (CI installs neither): the scripts must skip a missing peer themselves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
TIMEOUT_S = 600  # a smoke run takes seconds of CPU; the margin is for a loaded 2-core machine under xdist


def _missing_mpi() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "the mpi extra is not installed (pip install 'graphc[mpi]'): mpi4py and an MPI library run the ranks"
    if not (shutil.which("mpirun") or shutil.which("mpiexec")):
        return "no mpirun on PATH (pip install 'graphc[mpi]' brings mpich's)"
    return _missing_cc()


def _missing_cc() -> str | None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "graphc build links with the system C compiler (cc)"
    return None


def _missing_git() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return "bench_ab.py checks a base revision out of this git checkout (no git, or not a checkout)"
    return None


NUM = r"[\d.,]+"
# script: (extra arguments, the figure lines its output must hold (regular expressions, multiline), a requirement
# check returning why it cannot run or None)
SCRIPTS: dict[str, tuple[list[str], list[str], object]] = {
    "bench_ab.py": (["--base", "HEAD"], [
        rf"^step +A +{NUM} ms +B +{NUM} ms +B/A {NUM}$",
        rf"^chain +A .* B/A {NUM}$", rf"^rowsum +A .* B/A {NUM}$", rf"^digits +A .* B/A {NUM}$",
        rf"^compile +A +{NUM} s +B +{NUM} s +B/A {NUM}$",
    ], _missing_git),
    "bench_backend.py": ([], [
        rf"^fused elementwise chain, .*: {NUM} ms; memory copy {NUM} ms",
        rf"^vector exp: {NUM} ns/element vs np.exp {NUM}",
        rf"^training step 64-32-10, batch 16, 1 thread\(s\): graphc {NUM} ms",
        rf"^training step 64-32-10, batch 16, 2 thread\(s\): graphc {NUM} ms",
        rf"^graphc step scaling, 2 threads over 1: {NUM}x",
        rf"^compile of that step: cold {NUM} s .* in a new process {NUM} s \(cache hit: \w+\)",
    ], None),
    "bench_binary.py": ([], [
        rf"^graphc build \(digits default MLP\): {NUM} s",
        rf"^binary: {NUM} KiB; start-up: `--help` {NUM} ms",
        rf"^digits 64-128-10, batch 32, 1 thread\(s\): binary {NUM} samples/s; in process, default step {NUM}",
        rf"^64-128-10 on 2,000 rows, batch 128, 1 thread\(s\): binary {NUM} samples/s",
    ], _missing_cc),
    "bench_compile.py": ([], [
        rf"^ +1 +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} +{NUM}", rf"^ +2 +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} +{NUM}",
        rf"^  total {NUM} s = lowering/scheduling {NUM}",
        rf"LLVM in this process only \(GRAPHC_COMPILE_PROCESSES=1\), alternated: median {NUM} s",
        r"^the same step as an epoch function",
    ], None),
    "bench_conv.py": ([], [
        rf"^## 1 thread\(s\); FP32 FMA peak {NUM} GFLOP/s",
        rf"^  graphc +{NUM} \( *{NUM}%\) +{NUM} \( *{NUM}%\)",
        rf"^lenet training step, batch 64: samples/s.*\n  graphc +{NUM}  compile cold {NUM} s, cached {NUM} s",
        rf"^cifar training step, batch 64: samples/s.*\n  graphc +{NUM}  compile cold {NUM} s, cached {NUM} s",
        rf"^7x7/2 16x16 3->8 b1 fwd\+dx\+dW: graphc {NUM} ms(, torch {NUM} ms: {NUM}x)?; compile cold {NUM} s",
        rf"^3x3/2 8x8 8->8 b1 fwd\+dx\+dW: graphc {NUM} ms(, torch {NUM} ms: {NUM}x)?; compile cold {NUM} s",
        rf"^dw 3x3 8x8 8 b1 fwd\+dx\+dW: graphc {NUM} ms(, torch {NUM} ms: {NUM}x)?; compile cold {NUM} s",
        rf"^g2 3x3 8x8 8->8 b1 fwd\+dx\+dW: graphc {NUM} ms(, torch {NUM} ms: {NUM}x)?; compile cold {NUM} s",
    ], None),
    "bench_footprint.py": ([], [
        rf"^64-32-10 epoch function: cold compile {NUM} s .* from the cache {NUM} s",
        rf"^peak RSS, 1000 rows, .*: graphc {NUM} MB .* numpy loop {NUM} MB",
        rf"^  graphc's process, RSS after each phase: imports and data {NUM} MB",
    ], None),
    "bench_gemm.py": ([], [
        rf"^FP32 FMA peak \(1 thread, .*\): {NUM} GFLOP/s",
        rf"^square 256 +256 +256 +256 +{NUM} +{NUM} +{NUM} +{NUM}",
        rf"^mlp2 Xt.dZ .* +{NUM} +{NUM} +{NUM} +{NUM}", r"peak re-measured alongside 256",
        rf"^2 threads at 256 \(Python threads, tid=0/1\): graphc 1T {NUM}  2T {NUM} GFLOP/s",
    ], None),
    "bench_mpi.py": ([], [
        rf"^  graphc, 1 process x 2 threads: +{NUM} k samples/s",
        rf"^  graphc, 2 ranks x 1 thread, +shared memory: +{NUM} k samples/s",
        rf"^  graphc, 2 ranks x 1 thread, MPI_Allreduce: +{NUM} k samples/s",
        rf"^  standalone binary \(graphc build --mpi\): 1 process x 2 threads {NUM} k samples/s, mpirun -n 2",
        rf"^  allreduce at P=2: W2 {NUM} ms", r"^    P=256: allreduce", r"^plot: ",
    ], _missing_mpi),
    "bench_rnn.py": ([], [
        rf"^T=5: graphc lstm: {NUM}  graphc lstm by hand: {NUM}  .*graphc gru: {NUM}",
        rf"^compile T=5: graphc cold {NUM} s",
        rf"^1 thread\(s\), median ms a step: graphc p - lr\*g: {NUM} ms",
    ], None),
    "bench_small.py": (["--baseline", str(ROOT)], [
        rf"^64-32-10, batch 1:\n  graphc +{NUM} M/s  \[{NUM}\], compile {NUM} s",
        rf"^10-64-64-1, batch 16, diabetes, .*mean squared error:\n  graphc +{NUM} M/s",
        rf"^  numpy +{NUM} M/s", rf"^  graphc before +{NUM} M/s", rf"^  graphc / fastest peer: {NUM}x median",
    ], None),
    "bench_train.py": ([], [
        rf"^digits default: graphc test accuracy {NUM}", rf"^digits throughput \(1 thread\): graphc {NUM}M samples/s",
        rf"^diabetes: graphc test_mse {NUM}", rf"^breast_cancer: graphc test_accuracy {NUM}",
        rf"^  graphc in process: {NUM}k samples/s, peak RSS {NUM} MB",
        rf"^  graphc binary: {NUM}k samples/s|^  \(binary: no C compiler\)", rf"^  numpy: {NUM}k samples/s",
    ], None),
    "bench_vmath.py": ([], [
        rf"^exp +{NUM} +{NUM} +{NUM}x +{NUM}e", rf"^erf +{NUM} ", rf"^memory floor: np.copyto\(out, x\) {NUM} ns/el",
    ], None),
    "peers.py": ([], [
        r"^self-check ok$", rf"^  numpy  1 thread\(s\): +{NUM} ms/step",
        rf"^  batch 128 numpy : +{NUM} samples/s", rf"^  numpy  1 thread\(s\): +{NUM} samples/s",
        rf"^  none   : peak +{NUM} MB", rf"^  numpy  : peak +{NUM} MB",
    ], None),
}


# Not run here, at 10-26 s of CPU each on top of the suite's budget (their --smoke modes are there to run by hand):
# bench_mpi (mpirun, two binary builds), bench_footprint (cold compiles in fresh processes, by design) and bench_ab
# (a second checkout of graphc). The others together take ~70 s of CPU.
BY_HAND = {"bench_mpi.py", "bench_footprint.py", "bench_ab.py"}


def test_every_script_is_covered():
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted(SCRIPTS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """$GRAPHC_CACHE_DIR, else one directory for all xdist workers (their base temp's parent is shared): the GEMM
    helper library is compiled once, not per script (the cache's writes are atomic)."""
    if os.environ.get("GRAPHC_CACHE_DIR"):
        return os.environ["GRAPHC_CACHE_DIR"]
    d = tmp_path_factory.getbasetemp().parent / "graphc-bench-cache"
    d.mkdir(exist_ok=True)
    return str(d)


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - BY_HAND))
def test_smoke(script, cache_dir, tmp_path):
    args, figures, missing = SCRIPTS[script]
    why = missing() if missing else None
    if why:
        pytest.skip(why)
    # the peers are made unimportable, as CI has them (not installed): the same run on every machine, and minutes
    # of torch.compile spared where they are installed
    blocked = tmp_path / "no-peers"
    blocked.mkdir()
    for mod in ("torch", "jax", "jaxlib"):
        (blocked / f"{mod}.py").write_text("raise ImportError('the peers are blocked in the smoke tests')\n")
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache_dir, PYTHONPATH=os.pathsep.join(
        [str(blocked), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, str(BENCH / script), "--smoke", *args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} --smoke ran over {TIMEOUT_S} s:\n{(e.stdout or b'')[-3000:]!r}")
    wall = time.perf_counter() - t0
    out = p.stdout
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{out[-3000:]}\n{p.stderr[-5000:]}"
    missing_lines = [f for f in figures if not re.search(f, out, re.MULTILINE)]
    assert not missing_lines, f"{script} --smoke printed none of {missing_lines} ({wall:.0f} s):\n{out[-5000:]}"
