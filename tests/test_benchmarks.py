"""Every benchmark script still runs: each at toy sizes (its `--smoke` mode, or its smallest options) in a fresh
process, with the peers (PyTorch, JAX) made unimportable so that the run is the same whether or not they are
installed (CI installs neither). Benchmarks are not run by anything else, and one broke unseen for days (the
training binary began refusing to overwrite an earlier --out). These are not measurements: no figure is checked,
only that the script ran through and printed the lines it exists for."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Not here, being minutes even at their smallest: bench_footprint.py (cold compiles in fresh processes, by design),
# bench_train.py (--quick still trains the 60,000-row epochs) and bench_mpi.py (--smoke: 40 s of mpirun and builds).
SCRIPTS = [  # (script and arguments, a line the output must hold)
    (["bench_ab.py", "--base", "HEAD", "--repeats", "1", "--only", "rowsum"], "B/A"),
    (["bench_backend.py", "--quick"], "compile of that step: cold"),
    (["bench_binary.py", "--smoke"], "binary peak RSS"),
    (["bench_compile.py", "--repeats", "1", "--skip-gemms"], "goal: under 0.5 s"),
    (["bench_conv.py", "--smoke"], "lenet training step, batch 64"),
    (["bench_gemm.py", "--cases", "0", "--repeats", "1", "--seconds", "0.01", "--no-threads"], "square 256"),
    (["bench_rnn.py", "--smoke"], "graphc lstm"),
    (["bench_small.py", "--epochs", "1"], "graphc / fastest peer"),
    (["bench_vmath.py", "--repeats", "7", "--sizes", "4096"], "sigmoid"),
    (["peers.py"], "self-check ok"),
]


@pytest.mark.parametrize("args, expect", SCRIPTS, ids=[s[0][0] for s in SCRIPTS])
def test_benchmark_script_runs(args, expect, tmp_path):
    blocked = tmp_path / "no-peers"
    blocked.mkdir()
    for mod in ("torch", "jax", "jaxlib"):  # an installed peer would be imported first: block it
        (blocked / f"{mod}.py").write_text("raise ImportError('the peers are blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(ROOT)]), TMPDIR=str(tmp_path))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert expect in p.stdout, p.stdout[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
