"""`graphc build --mpi`: the standalone training binary under the real `mpirun -n P`, compared bit for bit with
`mpirun -n P graphc train` on the same splits and seed, and its refusals and faults."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the mpi extra is not installed (pip install 'graphc[mpi]'): mpi4py and an "
                                     "MPI library are needed to run ranks")
MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
if MPIRUN is None:
    pytest.skip("no mpirun on PATH (pip install 'graphc[mpi]' brings mpich's)", allow_module_level=True)
if shutil.which("cc") is None:
    pytest.skip("graphc build links with the system C compiler (cc), which mpicc wraps", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = "32"
FULL = ["--batch-size", "30", "--lr", "0.05", "--momentum", "0.9", "--l2", "1e-4", "--l1", "1e-5", "--dropout",
        "0.8,0.5", "--early-stopping", "2", "--schedule", "step", "--step-every", "1", "--step-gamma", "0.5"]
# every run-time feature: the binary's full step, masks by global row, the rate per epoch


def env(**extra) -> dict:
    e = dict(os.environ, **extra)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    return e


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A --mpi binary for the default MLP 64-32-10 on digits, and the digits splits as .npy files."""
    from graphc import data
    from graphc.aot import build

    d = tmp_path_factory.mktemp("mpi-binary")
    r = build(d / "train-digits", data="digits", hidden=[32], mpi=True)
    assert r.link_command[0].endswith("mpicc") and "-DGC_MPI=1" in r.link_command
    ds = data.load("digits")
    files = []
    for split in ("train", "val", "test"):
        for kind, arr in (("x", getattr(ds, f"X_{split}")), ("y", getattr(ds, f"y_{split}"))):
            np.save(d / f"{kind}_{split}.npy", arr)
            files += [f"--{kind}-{split}", str(d / f"{kind}_{split}.npy")]
    return r.path, files


def mpirun(cmd: list, timeout: float = 240, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([MPIRUN, *cmd], capture_output=True, text=True, timeout=timeout, env=env(**extra), cwd=ROOT)


def weights_of(binary_out: Path, train_out: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    ref = np.load(train_out / "weights.npz")
    return [(k, ref[k], np.load(binary_out / f"{k}.npy")) for k in ref.files]


def compare(trainer, tmp_path, n: int, flags: list, shared: bool) -> dict:
    """The binary and graphc train, each under mpirun -n n: bitwise the same weights and history; the binary's
    metrics.json."""
    binary, files = trainer
    sh = "1" if shared else "0"
    b = mpirun(["-n", str(n), str(binary), *files, *flags, "--out", str(tmp_path / "b")], GRAPHC_MPI_SHARED=sh)
    assert b.returncode == 0, b.stdout + b.stderr
    assert b.stdout.count("test accuracy") == 1 and b.stdout.count("epoch    1/") == 1  # rank 0 alone reports
    t = mpirun(["-n", str(n), sys.executable, "-m", "graphc.cli", "train", "--dataset", "digits", "--hidden", HIDDEN,
                *flags, "--out", str(tmp_path / "t")], GRAPHC_MPI_SHARED=sh)
    assert t.returncode == 0, t.stdout + t.stderr
    for name, ref, got in weights_of(tmp_path / "b", tmp_path / "t"):
        assert got.dtype == np.float32 and np.array_equal(ref.view(np.uint32), got.view(np.uint32)), name
    lines = (tmp_path / "b" / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]]
    hist = json.loads((tmp_path / "t" / "metrics.json").read_text())
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["epochs"] == hist["epochs"] == len(rows)
    ref_rows = [r.split(",") for r in (tmp_path / "t" / "history.csv").read_text().splitlines()]
    head = ref_rows[0]
    for mine, theirs in zip(rows, ref_rows[1:], strict=True):
        theirs = dict(zip(head, theirs, strict=True))
        assert float(mine["val_loss"]) == float(theirs["val_loss"])  # evaluated on bitwise equal weights
        assert abs(float(mine["train_loss"]) - float(theirs["train_loss"])) <= 1e-6 * float(theirs["train_loss"])
    assert m["ranks"] == n and m["threads_per_rank"] == 1 and len(m["samples_per_rank"]) == n
    assert m["gradient_exchange"] == ("shared memory" if shared else "allreduce")
    return m


def test_two_ranks_train_bitwise_as_graphc_train_under_mpirun(trainer, tmp_path):
    m = compare(trainer, tmp_path, 2, ["--epochs", "2", "--seed", "3", "--threads", "1"], shared=True)
    assert m["step"] == "plain" and sum(m["samples_per_rank"]) == 2 * 1257
    assert abs(m["samples_per_rank"][0] - m["samples_per_rank"][1]) <= 2 * (1257 // 32 + 1)


@pytest.mark.parametrize("n,shared", [(3, True), (2, False)], ids=["3-ranks-shared-memory", "2-ranks-allreduce"])
def test_every_feature_uneven_shares_and_the_allreduce_path_match_bitwise(trainer, tmp_path, n, shared):
    m = compare(trainer, tmp_path, n, ["--epochs", "3", "--seed", "7", "--threads", "1", *FULL], shared=shared)
    assert m["step"] == "full"
    assert sum(m["samples_per_rank"]) == m["epochs"] * 1257  # 30 rows over 3 ranks: 10 each; 1257 mod 30 = 27


def test_a_clipping_binary_built_by_the_cli_clips_as_graphc_train_under_mpirun(trainer, tmp_path):
    """`graphc build --clip-grad-norm 0.5 --mpi`: under mpirun the binary clips by the norm of the whole summed
    gradient (penalty included), bitwise as `mpirun graphc train --clip-grad-norm`: on 3 ranks sharing memory (each
    rank's share of the squares, added in rank order) and on the allreduce path; its --clip-grad-norm is a
    run-time value (1.5 here, the built 0.5 its default)."""
    r = subprocess.run([sys.executable, "-m", "graphc.cli", "build", "--dataset", "digits", "--hidden", HIDDEN,
                        "--clip-grad-norm", "0.5", "--mpi", "-o", str(tmp_path / "clip")], capture_output=True,
                       text=True, env=env(), cwd=ROOT, timeout=240)
    assert r.returncode == 0, r.stderr
    h = subprocess.run([str(tmp_path / "clip"), "--help"], capture_output=True, text=True)
    assert "--clip-grad-norm MAX" in h.stdout and "[0.5]" in h.stdout, h.stdout
    flags = ["--epochs", "1", "--seed", "5", "--threads", "1", "--batch-size", "30", "--l2", "1e-3"]
    for n, shared, extra in ((3, True, ["--clip-grad-norm", "1.5"]), (2, False, ["--clip-grad-norm", "0.5"])):
        d = tmp_path / f"p{n}"
        d.mkdir()
        compare((tmp_path / "clip", trainer[1]), d, n, [*flags, *extra], shared=shared)
    # the clip acts: the binary's default 0.5 trains otherwise than 1.5 (p3 and p2 differ in the rank count only
    # to tight tolerance, in the clip by far)
    a, b = (np.load(tmp_path / p / "b" / "mlp.1.W.npy") for p in ("p3", "p2"))
    assert np.abs(a - b).max() > 1e-3


BN_NOISE_MODEL = """
import graphc as gc

def model(x, n_outputs):  # noise on the input (keyed per rank) and a batch norm (each rank's statistics)
    h = gc.nn.dense(x + gc.random.normal_like(x, std=0.2, salt="input"), 16, name="fc")
    return gc.nn.dense(gc.relu(gc.nn.batch_norm(h, name="bn")), n_outputs, name="out")
"""


@pytest.fixture(scope="module")
def bn_noise(tmp_path_factory):
    """A --mpi binary for BN_NOISE_MODEL: (its model file, the binary)."""
    from graphc.aot import build

    d = tmp_path_factory.mktemp("bn-noise")
    model = d / "bn_noise.py"
    model.write_text(BN_NOISE_MODEL)
    return model, build(d / "train-bn-noise", str(model), "digits", mpi=True).path


def val_losses(out: Path) -> list[float]:
    import csv

    with open(out / "history.csv", newline="") as f:
        return [float(r["val_loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("shared", ["1", "0"], ids=["shared-memory", "allreduce"])
def test_batch_norm_and_random_draws_train_bitwise_as_graphc_train_under_mpirun(trainer, bn_noise, tmp_path, shared):
    """As mpirun graphc train: each rank keys its own draws (with the same warning) and keeps its own running
    statistics during an epoch, then takes rank 0's; the weights and the statistics saved are bitwise the same."""
    _, files = trainer
    model, binary = bn_noise
    flags = ["--epochs", "2", "--seed", "3", "--batch-size", "30", "--momentum", "0.9", "--threads", "1", "--quiet"]
    b = mpirun(["-n", "2", str(binary), *files, *flags, "--out", str(tmp_path / "b")], GRAPHC_MPI_SHARED=shared)
    assert b.returncode == 0, b.stdout + b.stderr
    assert b.stderr.count("each of the 2 ranks draws its own") == 1, b.stderr
    t = mpirun(["-n", "2", sys.executable, "-m", "graphc.cli", "train", "--model", str(model), "--dataset", "digits",
                *flags, "--out", str(tmp_path / "t")], GRAPHC_MPI_SHARED=shared)
    assert t.returncode == 0, t.stdout + t.stderr
    weights = weights_of(tmp_path / "b", tmp_path / "t")
    assert {name for name, _, _ in weights} >= {"bn.running_mean", "bn.running_var"}
    for name, ref, got in weights:
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), name
    assert val_losses(tmp_path / "b") == val_losses(tmp_path / "t")  # rank 0's statistics, the seed's draws


def test_a_rank_with_unreadable_data_stops_every_rank_before_training(trainer, tmp_path):
    binary, files = trainer
    out = tmp_path / "o"
    good = [str(binary), *files, "--out", str(out)]
    bad = [str(binary), *files, "--out", str(out)]
    bad[bad.index("--x-train") + 1] = str(tmp_path / "missing.npy")
    r = mpirun(["-n", "1", *good, ":", "-n", "1", *bad], timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "rank 1: --x-train" in r.stderr and "no such file" in r.stderr
    assert "reading the options or the data failed on rank 1" in r.stderr and "no rank trained" in r.stderr
    assert "epoch" not in r.stdout and not (out / "metrics.json").exists()


def test_ranks_that_disagree_on_the_options_refuse_to_start(trainer, tmp_path):
    binary, files = trainer
    cmd = [str(binary), *files, "--epochs", "1", "--out", str(tmp_path / "o")]
    r = mpirun(["-n", "1", *cmd, "--lr", "0.1", ":", "-n", "1", *cmd, "--lr", "0.2"], timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ranks 1 disagree with rank 0 on the model, options and data" in r.stderr
    assert "epoch" not in r.stdout


def test_a_launcher_of_another_mpi_is_refused_instead_of_training_alone(trainer, tmp_path):
    """Open MPI's mpirun starting the MPICH-linked binary: a world of one per process, each training alone."""
    binary, files = trainer
    r = subprocess.run([str(binary), *files, "--epochs", "1", "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=60, env=env(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="1"), cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "(OMPI_COMM_WORLD_SIZE=2)" in r.stderr and "a world of 1" in r.stderr and "epoch" not in r.stdout
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_ranks_that_read_other_contents_of_one_shape_refuse_to_start(trainer, tmp_path):
    """A y_train of the same shape holding other labels on rank 1: the ranks trained on two datasets, exit 0."""
    binary, files = trainer
    y = np.load(files[files.index("--y-train") + 1])
    np.save(tmp_path / "y_other.npy", (y + 1) % 10)
    cmd = [str(binary), *files, "--epochs", "1", "--out", str(tmp_path / "o")]
    other = list(cmd)
    other[other.index("--y-train") + 1] = str(tmp_path / "y_other.npy")
    r = mpirun(["-n", "1", *cmd, ":", "-n", "1", *other], timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ranks 1 disagree with rank 0 on the model, options and data" in r.stderr and "contents" in r.stderr
    assert "epoch" not in r.stdout


def _start(trainer, tmp_path, **extra) -> tuple[subprocess.Popen, int]:
    binary, files = trainer
    p = subprocess.Popen([MPIRUN, "-n", "2", str(binary), *files, "--epochs", "10000000", "--out",
                          str(tmp_path / "o")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(**extra), cwd=ROOT)
    line = p.stdout.readline()  # the binary's first line maps ranks to pids
    found = re.search(r"1=pid (\d+)", line)
    if found is None:
        p.kill()
        raise AssertionError(line + p.communicate()[1])
    while "epoch" not in line:  # training has begun
        line = p.stdout.readline()
        if not line:
            raise AssertionError(p.communicate()[1])
    return p, int(found.group(1))


def test_a_killed_rank_stops_the_others_within_seconds(trainer, tmp_path):
    p, pid = _start(trainer, tmp_path)
    try:
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        stdout, stderr = p.communicate(timeout=30)
        stopped = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0 and stopped < 10
    # mpich's launcher names the lost process (or, racing its own clean-up, the survivor it killed with signal 9),
    # else the survivor's watchdog names the rank
    assert (f"PID {pid} " in stdout or f"rank 1 (pid {pid} on" in stderr
            or ("BAD TERMINATION" in stdout and "Killed (signal 9)" in stdout)), stdout[-2000:] + stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_rank_that_stops_answering_times_out_instead_of_hanging(trainer, tmp_path):
    p, pid = _start(trainer, tmp_path, GRAPHC_MPI_TIMEOUT="2")  # SIGSTOP: only the timeout can notice
    try:
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _, stderr = p.communicate(timeout=30)
        stopped = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.kill(pid, signal.SIGCONT)
            p.kill()
            p.communicate()
    assert p.returncode != 0 and stopped < 15
    assert re.search(r"rank 0: no progress for 2 s in the .* \(a rank stopped answering; set GRAPHC_MPI_TIMEOUT",
                     stderr), stderr
