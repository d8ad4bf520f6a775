"""Data-parallel training run for real: `mpirun -n P` on localhost, compared with single-process training."""

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

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
sys.path.insert(0, str(WORKER.parent))
from worker import config, dataset  # noqa: E402

from graphc.nn.train import Trainer  # noqa: E402


def env(**extra) -> dict:
    e = dict(os.environ, **extra)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    return e


def mpirun(n: int, *args, timeout: float = 240, launcher=(), **extra) -> subprocess.CompletedProcess:
    return subprocess.run([MPIRUN, *launcher, "-n", str(n), *args], capture_output=True, text=True, timeout=timeout,
                          env=env(**extra), cwd=ROOT)


def run_jobs(tmp_path: Path, n: int, jobs: list[dict], tag: str, shared: bool = True) -> list:
    """Rank 0's results per job; `shared=False` takes the MPI_Allreduce path (as ranks on several machines do)
    instead of the shared-memory one."""
    r = mpirun(n, sys.executable, str(WORKER), str(tmp_path / tag), json.dumps(jobs),
               GRAPHC_MPI_SHARED="1" if shared else "0")
    assert r.returncode == 0, r.stdout + r.stderr
    return [np.load(tmp_path / f"{tag}-{i}.npz") for i in range(len(jobs))]


def single(job: dict) -> dict:
    X, y = dataset(job["data"])
    tr = Trainer(None, "multiclass", X.shape[1], 10, config(job), log=lambda m: None)
    return tr.run(X, y, None, None)["state"]


def params(npz) -> dict:
    return {k[len("param/"):]: npz[k] for k in npz.files if k.startswith("param/")}


def assert_close(ref: dict, got: dict, tol: float = 1e-5) -> None:
    assert got and set(got) <= set(ref)
    for name in got:
        a, b = ref[name], got[name]
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel <= tol, f"{name}: max |difference| / max |value| = {rel:.3g}"


DIGITS = {"data": "digits", "epochs": 1, "batch": 32}
DROPOUT = {"data": "digits", "epochs": 1, "batch": 30, "opts": {"dropout": [0.8, 0.7]}}  # masks by global row
W2 = {"data": "synthetic", "epochs": 1, "batch": 128, "opts": {"lr": 0.05, "optimizer": "momentum",
                                                                 "momentum": 0.9, "l2": 1e-3}}


@pytest.mark.parametrize("shared", [True, False], ids=["shared-memory", "allreduce"])
def test_two_ranks_equal_single_process_and_are_bitwise_reproducible(tmp_path, shared):
    jobs = [DIGITS, W2, DROPOUT]
    first = run_jobs(tmp_path, 2, jobs, "a", shared)
    again = run_jobs(tmp_path, 2, jobs, "b", shared)
    for job, got, rep in zip(jobs, first, again, strict=True):
        assert len(set(got["digests"])) == 1  # every rank ended with the same parameters
        n = len(dataset(job["data"])[0])
        assert got["samples"].sum() == n and abs(int(got["samples"][0]) - int(got["samples"][1])) <= n // job["batch"]
        assert_close(single(job), params(got))
        for k in got.files:
            if k.startswith("param/"):
                assert np.array_equal(got[k], rep[k]), f"{k}: not bitwise reproducible"
        assert got["digests"][0] == rep["digests"][0]


def test_three_and_four_ranks_with_uneven_shares_equal_single_process(tmp_path):
    # 30 rows per batch over 4 ranks: shares 8, 8, 7, 7; the last partial batches (1257 mod 30 = 27 digits rows,
    # 600 mod 30 = 0 synthetic) split likewise; P = 4 oversubscribes the two cores, which is fine for semantics
    # AdamW's decay (a strong one, halving lr each epoch) is applied once per step to the summed gradient's
    # update, not once per rank: three times the decay would be ~1e-2 off. Gradient clipping scales by the norm
    # of the whole summed gradient (penalty included): on the allreduce path every rank computes it, on the
    # shared-memory one each rank sums the squares of its share and the ranks add those before any update
    three = [DROPOUT, {"data": "synthetic", "epochs": 1, "batch": 100, "opts": {"optimizer": "nesterov",
                                                                                   "momentum": 0.9, "lr": 0.02}},
             {"data": "digits", "epochs": 2, "batch": 128, "opts": {"optimizer": "adamw", "weight_decay": 0.5,
                                                                    "lr": 0.01, "schedule": "step", "step_every": 1,
                                                                    "step_gamma": 0.5, "clip_grad_norm": 0.05}}]
    four = [{"data": "digits", "epochs": 2, "batch": 30, "opts": {"l1": 1e-4, "clip_grad_norm": 0.5}},
            {"data": "synthetic", "epochs": 1, "batch": 30, "opts": {"lr": 0.02}}]
    for n, jobs, shared in ((3, three, False), (4, four, True)):
        for job, got in zip(jobs, run_jobs(tmp_path, n, jobs, f"p{n}", shared), strict=True):
            assert len(set(got["digests"])) == 1 and len(got["samples"]) == n
            assert got["samples"].sum() == len(dataset(job["data"])[0]) * job["epochs"]
            ref = single(job)
            assert_close(ref, params(got))
            if "clip_grad_norm" in job["opts"]:  # the clip acts: without it the single process trains otherwise
                unclipped = single({**job, "opts": {k: v for k, v in job["opts"].items() if k != "clip_grad_norm"}})
                assert max(np.abs(ref[k] - unclipped[k]).max() for k in params(got)) > 1e-3


def train_cli(n: int, out: Path, *flags, launcher=()) -> subprocess.CompletedProcess:
    return mpirun(n, sys.executable, "-m", "graphc.cli", "train", "--dataset", "digits", "--out", str(out),
                  *flags, launcher=launcher)


def test_graphc_train_under_mpirun_writes_once_and_resumes_under_other_rank_counts(tmp_path):
    from graphc import fit

    out = tmp_path / "run"
    opts = ("--seed", "3", "--l2", "1e-4", "--early-stopping", "5")  # validation decided on every rank alike
    r = train_cli(2, out, "--epochs", "2", *opts)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test accuracy") == 1 and r.stdout.count("epoch    2/2") == 1  # rank 0 alone reports
    m = json.loads((out / "metrics.json").read_text())
    assert m["ranks"] == 2 and m["threads_per_rank"] == 1 and sum(m["samples_per_rank"]) == 2 * 1257
    r = train_cli(3, out, "--epochs", "3", *opts, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming from ckpt-1-000002.gcp" in r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["ranks"] == 3 and m["epochs"] == 3 and sum(m["samples_per_rank"]) == 1257  # this run's one epoch
    ref = fit(None, "digits", epochs=3, seed=3, l2=1e-4, early_stopping=5, threads=1, progress=False).params
    got = np.load(out / "weights.npz")
    assert_close(ref, {k: got[k] for k in got.files})
    # a checkpoint that rank 0 refuses (another --lr) stops every rank at once, not after the watchdog's timeout
    t0 = time.monotonic()
    r = mpirun(2, sys.executable, "-m", "graphc.cli", "train", "--dataset", "digits", "--out", str(out), "--epochs",
               "4", *opts, "--lr", "0.2", "--resume", timeout=60, GRAPHC_MPI_TIMEOUT="40")
    assert r.returncode == 2 and time.monotonic() - t0 < 30, r.stderr
    assert r.stderr.count("belongs to a different model, dataset or options") == 1, r.stderr
    assert "no progress" not in r.stderr and (out / "checkpoints" / "ckpt-1-000003.gcp").is_file()


def test_a_launcher_of_another_mpi_than_mpi4pys_is_refused_instead_of_training_alone(tmp_path):
    """Open MPI's mpirun starting an mpi4py built with MPICH (or the reverse): each process is a world of one. It
    trained the whole run alone, every one writing --out, as if data-parallel; it must stop, saying why."""
    fake = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}
    r = subprocess.run([sys.executable, "-m", "graphc.cli", "train", "--epochs", "1", "--threads", "1", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120, env=env(**fake),
                       cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "OMPI_COMM_WORLD_SIZE=2" in r.stderr and "a world of 1" in r.stderr and "mpirun" in r.stderr, r.stderr
    assert "epoch" not in r.stderr and not (tmp_path / "run" / "weights.npz").exists()


CHECKPOINT_FAILS = """
import errno, sys
from graphc.cli import main
from graphc.nn.train import Trainer
save = Trainer.save_checkpoint
def full_disk(self, ck_dir, s, *a, **k):  # rank 0 alone writes checkpoints: the second one finds the disk full
    if s["epoch"] == 2:
        raise OSError(errno.ENOSPC, "No space left on device", str(ck_dir))
    return save(self, ck_dir, s, *a, **k)
Trainer.save_checkpoint = full_disk
sys.exit(main(["train", "--epochs", "4", "--threads", "1", "--quiet", "--out", sys.argv[1]]))
"""


def test_a_checkpoint_rank_0_cannot_write_stops_every_rank_at_once(tmp_path):
    """The other ranks waited in the next epoch for rank 0 until the watchdog's timeout, then blamed a rank that
    'stopped answering' (exit 6); now rank 0 names the error and stops them with its status."""
    t0 = time.monotonic()
    r = mpirun(2, sys.executable, "-c", CHECKPOINT_FAILS, str(tmp_path / "run"), timeout=120, GRAPHC_MPI_TIMEOUT="60")
    assert r.returncode == 2 and time.monotonic() - t0 < 50, r.stderr
    assert "No space left on device" in r.stderr and "no progress" not in r.stderr, r.stderr
    assert (tmp_path / "run" / "checkpoints" / "ckpt-1-000001.gcp").is_file()


FIT_RANK_FAILS = """
import errno, sys
import graphc as gc
from graphc import distributed
run_epoch = distributed.DataParallelStep.run_epoch
def unreadable(self, *a, epoch, **k):  # one rank's file system fails it in the second epoch
    if epoch == 1 and self.dist.rank == int(sys.argv[1]):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/rank-only")
    return run_epoch(self, *a, epoch=epoch, **k)
distributed.DataParallelStep.run_epoch = unreadable
gc.fit(None, "digits", epochs=3, hidden=[8], threads=1, progress=False, distributed=True)
"""


@pytest.mark.parametrize("rank", [0, 1])
def test_an_os_error_on_one_rank_of_gc_fit_stops_every_rank_at_once(tmp_path, rank):
    """gc.fit(distributed=True) in a script (not graphc train, whose main() aborts): a rank's OSError left the
    others waiting in their next collective for the watchdog (exit 6, 'no progress'); the failing rank now names
    itself and the error and stops every rank with graphc train's status for it."""
    r = mpirun(2, sys.executable, "-c", FIT_RANK_FAILS, str(rank), timeout=200, GRAPHC_MPI_TIMEOUT="100")
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"graphc: error: rank {rank}: [Errno 13] Permission denied: '/data/rank-only'; stopping every rank"
            in r.stderr) and "no progress" not in r.stderr, r.stderr


def test_gc_fit_without_distributed_under_mpirun_says_each_rank_trains_alone(tmp_path):
    """A DDP user's script under mpirun that forgets distributed=True trained P independent runs, silently."""
    r = mpirun(2, sys.executable, "-c", "import graphc as gc; gc.fit(None, 'digits', epochs=1, hidden=[8], "
               "threads=1, progress=False)", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("gc.fit was called without distributed=True: each trains the whole run alone") == 2


def test_gc_fit_that_fails_stops_its_watchdog(tmp_path):
    """A sweep that catches a diverged gc.fit(distributed=True) and goes on: the failed run's watchdog thread
    stayed, still watching the peers, and would stop the process (exit 6) when one left."""
    script = ("import threading, time, graphc as gc, numpy as np\n"
              "X = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)\n"
              "try:\n    gc.fit(None, (X, (X[:, 0] > 0).astype(np.int32)), epochs=2, lr=1e4, batch_size=4, threads=1,"
              " distributed=True, progress=False)\nexcept gc.NumericalError:\n    pass\n"
              "time.sleep(0.5)\nprint(sorted(t.name for t in threading.enumerate()))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env(),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['MainThread']", r.stdout + r.stderr


def test_a_rank_that_cannot_read_its_data_stops_every_rank_before_training(tmp_path):
    good = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(good, X=rng.standard_normal((40, 3)).astype(np.float32), y=rng.integers(0, 2, 40))
    args = [sys.executable, "-m", "graphc.cli", "train", "--epochs", "1", "--out", str(tmp_path / "o")]
    r = subprocess.run([MPIRUN, "-n", "1", *args, "--dataset", str(good), ":", "-n", "1", *args, "--dataset",
                        str(tmp_path / "missing.npz")], capture_output=True, text=True, timeout=120, env=env(),
                       cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("reading the data failed on rank 1") == 1 and "no rank trained" in r.stderr  # rank 0 says it
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_model_whose_batch_slices_do_not_fit_a_ranks_share_stops_every_rank_before_a_step(tmp_path):
    """x[3:] needs 4 rows a batch: a global batch of 7 fits one process but not 2 ranks' shares of 4 and 3 (nor the
    last batch's 2 and 2); every rank refuses alike before the first step, naming the share and the slice."""
    (tmp_path / "roll.py").write_text("import graphc as gc\ndef model(x, n):\n"
                                      "    x = x + gc.concatenate([x[3:], x[:3]], axis=0)\n"
                                      "    return gc.nn.dense(x, n, name='out')\n")
    r = mpirun(2, sys.executable, "-m", "graphc.cli", "train", "--model", str(tmp_path / "roll.py"), "--epochs", "1",
               "--batch-size", "7", "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("training on 2 ranks (each takes its share of a batch): a batch of 2 row(s)") == 2
    assert "roll.py:3" in r.stderr and "epoch" not in r.stdout and not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize("flag, first, second, said", [
    ("--lr", "0.1", "0.2", "lr: 0.1 on rank 0, 0.2 on rank 1"), ("--epochs", "1", "2", "epochs: 1 on rank 0"),
    ("--seed", "0", "1", "(no seed + rank)"),  # a DDP habit: each rank seeded apart
    # a DDP habit too: each rank given its own shard of the rows (DistributedSampler)
    ("--dataset", "shard0.npz", "shard1.npz", "shard0.npz (28, 3), (6, 3), (6, 3) on rank 0, shard1.npz (26, 3), "
     "(6, 3), (6, 3) on rank 1; every rank must run the same command (same model, data and options). Give every "
     "rank the whole dataset")])
def test_ranks_that_disagree_on_the_options_refuse_to_start(tmp_path, flag, first, second, said):
    """Which option or data shape differs is named, with what to do for the two habits of PyTorch DDP users."""
    rng = np.random.default_rng(0)
    for name, n in ((first, 40), (second, 38)):
        if name.endswith(".npz"):
            np.savez(tmp_path / name, X=rng.standard_normal((n, 3)).astype(np.float32), y=rng.integers(0, 2, n))
    args = [sys.executable, "-m", "graphc.cli", "train", "--hidden", "16"]
    args += ["--epochs", "1"] if flag != "--epochs" else []
    r = subprocess.run([MPIRUN, "-n", "1", *args, flag, first, ":", "-n", "1", *args, flag, second],
                       capture_output=True, text=True, timeout=120, env=env(), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("ranks 1 disagree with rank 0 on the model, options and data") == 1
    assert said in r.stderr, r.stderr
    assert "epoch" not in r.stdout


def test_a_diverging_data_parallel_run_says_so_once_naming_the_kept_checkpoint(tmp_path):
    """Every rank sees the reduced loss turn non-finite at the same step; each printed its own error, rank 1's
    saying no checkpoint had been written while rank 0 named the one it kept."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((40, 3)).astype(np.float32), y=rng.integers(0, 2, 40))
    r = mpirun(2, sys.executable, "-m", "graphc.cli", "train", "--dataset", str(tmp_path / "d.npz"), "--epochs", "5",
               "--lr", "1e4", "--batch-size", "4", "--quiet", "--out", str(tmp_path / "o"), timeout=180)
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stderr.count("training diverged") == 1, r.stderr
    assert "No checkpoint had been written" not in r.stderr
    kept = sorted((tmp_path / "o" / "checkpoints").glob("ckpt-*.gcp"))
    assert kept and kept[-1].name in r.stderr


def test_ranks_reading_other_contents_under_one_file_name_refuse_to_start(tmp_path):
    """Two working directories, one file name and shape, other labels: each rank trained on its own rows and the
    gradients mixed two datasets, exit 0. The ranks compare a hash of the data too now."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    for d, labels in (("a", y), ("b", 1 - y)):
        (tmp_path / d).mkdir()
        np.savez(tmp_path / d / "d.npz", X=X, y=labels)
    args = [sys.executable, "-m", "graphc.cli", "train", "--epochs", "1", "--dataset", "d.npz", "--out",
            str(tmp_path / "o")]
    r = subprocess.run([MPIRUN, "-n", "1", "-wdir", str(tmp_path / "a"), *args, ":", "-n", "1", "-wdir",
                        str(tmp_path / "b"), *args], capture_output=True, text=True, timeout=120, env=env(), cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ranks 1 disagree with rank 0 on the data's contents" in r.stderr and "epoch" not in r.stdout
    assert "Give every rank the whole dataset" in r.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def train_model_file(tmp_path, source: str, *flags, timeout: float = 120, **extra) -> subprocess.CompletedProcess:
    """`mpirun -n 2 graphc train --model m.py --epochs 1 FLAGS` with m.py holding `source`."""
    (tmp_path / "m.py").write_text(source)
    return mpirun(2, sys.executable, "-m", "graphc.cli", "train", "--model", str(tmp_path / "m.py"), "--epochs", "1",
                  *flags, timeout=timeout, **extra)


def test_a_model_that_fails_on_one_rank_stops_every_rank_before_the_step(tmp_path):
    # rank 0 waited in the step's collectives for rank 1, which had failed: the job hung, the watchdog unarmed
    r = train_model_file(tmp_path, "import os, graphc as gc\ndef model(x, n):\n"
                                   "    if os.environ.get('PMI_RANK') == '1':\n"
                                   "        raise RuntimeError('no such file on this host')\n"
                                   "    return gc.nn.dense(x, n)\n", "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("building the model and its step failed on rank 1") == 1
    assert "m.py:4" in r.stderr and not (tmp_path / "o" / "metrics.json").exists()


def test_a_model_file_that_raises_on_loading_on_one_rank_stops_every_rank_at_once(tmp_path):
    # the file was loaded outside the shared error path: rank 1 exited, rank 0 waited for the watchdog (exit 6)
    r = train_model_file(tmp_path, "import os, graphc as gc\nif os.environ.get('PMI_RANK') == '1':\n"
                                   "    raise RuntimeError('boom at import')\n"
                                   "def model(x, n):\n    return gc.nn.dense(x, n)\n", timeout=60,
                         GRAPHC_MPI_TIMEOUT="50")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("loading the model file failed on rank 1") == 1 and "boom at import" in r.stderr


def test_ranks_whose_models_have_other_parameters_refuse_before_sizing_the_step(tmp_path):
    # the shared step's window was sized from rank 0's parameters: rank 1 crashed (ValueError), rank 0 waited
    r = train_model_file(tmp_path, "import os, graphc as gc\ndef model(x, n):\n"
                                   "    k = 8 if os.environ.get('PMI_RANK') == '1' else 4\n"
                                   "    return gc.nn.dense(gc.nn.dense(x, k, name='h'), n, name='out')\n",
                         timeout=60, GRAPHC_MPI_TIMEOUT="50")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "disagree with rank 0 on the model's parameters" in r.stderr and "Traceback" not in r.stderr


def test_a_dropout_whose_input_is_not_batch_first_is_warned_about_under_several_ranks(tmp_path):
    r = train_model_file(tmp_path, "import graphc as gc\ndef model(x, n):\n    h = gc.nn.dense(x, 8, name='h')\n"
                                   "    h = gc.transpose(gc.nn.dropout(gc.transpose(h), 0.5))\n"
                                   "    return gc.nn.dense(h, n, name='out')\n", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.count("graphc: warning: a dropout (m.py:4) acts on a tensor whose first axis is not the batch") == 1


def test_a_bad_timeout_setting_is_said_before_anything_runs(tmp_path):
    r = mpirun(2, sys.executable, "-m", "graphc.cli", "train", "--epochs", "1", timeout=120,
               GRAPHC_MPI_TIMEOUT="abc")
    assert r.returncode == 2 and "GRAPHC_MPI_TIMEOUT='abc'" in r.stderr and "Traceback" not in r.stderr, r.stderr


REPLICA_CHECK = """
import sys
import numpy as np
import graphc.distributed as D
from graphc.errors import GraphcError
from graphc.nn.train import Trainer, TrainConfig

real = D.DataParallelStep.check_replicas
def corrupt_then_check(self, state, epoch):  # rank 1's first parameter drifts by one float32 ulp after epoch 1
    if self.dist.rank == 1:
        name = sorted(state)[0]
        state[name].flat[0] = np.nextafter(state[name].flat[0], np.float32(np.inf))
    real(self, state, epoch)
D.DataParallelStep.check_replicas = corrupt_then_check

from graphc import data
ds = data.load("digits")
tr = Trainer(None, "multiclass", 64, 10, TrainConfig(epochs=3, batch_size=32, threads=1), log=lambda m: None,
             distributed=D.Distributed())
try:
    tr.run(ds.X_train, ds.y_train.astype(np.int32), None, None)
except GraphcError as e:
    print(f"rank {tr.dist_step.dist.rank}: {e}", file=sys.stderr)
    sys.exit(3)
"""


def test_ranks_whose_parameters_drift_apart_stop_after_the_epoch_naming_the_rank(tmp_path):
    """The per-epoch hash of the parameters: one ulp of one parameter on rank 1 (the MPI_Allreduce path, where
    each rank keeps its own copy) stops both ranks after epoch 1, each naming rank 1."""
    r = mpirun(2, sys.executable, "-c", REPLICA_CHECK, GRAPHC_MPI_SHARED="0", timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    for rank in (0, 1):
        assert (f"rank {rank}: distributed training: after epoch 1 the parameters of rank(s) 1 differ from rank "
                "0's") in r.stderr, r.stderr


def _await_checkpoint(out: Path, deadline: float) -> None:
    """Until the run in `out` has written its first checkpoint (it is training), or the deadline."""
    while not list((out / "checkpoints").glob("ckpt-*.gcp")) and time.monotonic() < deadline:
        time.sleep(0.05)


def _reap(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.communicate()


def test_a_killed_rank_stops_the_others_within_seconds_and_is_named(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([MPIRUN, "-n", "2", sys.executable, "-m", "graphc.cli", "train", "--dataset", "digits",
                          "--epochs", "100000", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        pid = None
        err = []
        deadline = time.monotonic() + 120
        while pid is None and time.monotonic() < deadline:
            line = p.stderr.readline()
            err.append(line)
            found = re.search(r"1=pid (\d+)", line)  # graphc's first line maps pids to ranks
            pid = int(found.group(1)) if found else None
        assert pid is not None, "".join(err)
        _await_checkpoint(out, deadline)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        stdout, stderr = p.communicate(timeout=30)
        stopped = time.monotonic() - t0
    finally:
        _reap(p)
    assert p.returncode != 0 and stopped < 10
    # the lost process is named: by the launcher (stdout), or by graphc's watchdog when rank 0 notices first and
    # the launcher has no process left to report (a loaded machine)
    assert (f"PID {pid} " in stdout or f"rank 1 (pid {pid} " in stderr
            or ("BAD TERMINATION" in stdout and "Killed (signal 9)" in stdout)), stdout + "".join(err) + stderr
    assert list((out / "checkpoints").glob("ckpt-*.gcp"))  # the last good checkpoint is kept
    assert not (out / "metrics.json").exists()


def test_ctrl_c_to_mpirun_stops_every_rank_at_once(tmp_path):
    """SIGINT reached one rank, which said "interrupted" and waited in MPI_Finalize while the other spun in the
    step's barrier until the watchdog (120 s by default): the interrupted rank now aborts the job."""
    out = tmp_path / "run"
    p = subprocess.Popen([MPIRUN, "-n", "2", sys.executable, "-m", "graphc.cli", "train", "--dataset", "digits",
                          "--epochs", "100000", "--batch-size", "1", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(GRAPHC_MPI_TIMEOUT="100"),
                         cwd=ROOT)
    try:
        _await_checkpoint(out, time.monotonic() + 120)
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        stdout, stderr = p.communicate(timeout=60)
        stopped = time.monotonic() - t0
    finally:
        _reap(p)
    assert p.returncode != 0 and stopped < 30 and "interrupted" in stderr, (stopped, stderr)
    assert "no progress" not in stderr  # not the watchdog


def test_a_rank_that_stops_answering_times_out_instead_of_hanging(tmp_path):
    # SIGSTOP: the process lives on, so only the collective's timeout can notice
    p = subprocess.Popen([MPIRUN, "-n", "2", sys.executable, "-m", "graphc.cli", "train", "--dataset", "digits",
                          "--epochs", "100000", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env(GRAPHC_MPI_TIMEOUT="2"), cwd=ROOT)
    try:
        line, deadline = "", time.monotonic() + 120
        while "1=pid" not in line and time.monotonic() < deadline:
            line = p.stderr.readline()
        pid = int(re.search(r"1=pid (\d+)", line).group(1))
        time.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        rest = p.communicate(timeout=30)[1]
        stopped = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0 and stopped < 15
    assert re.search(r"rank 0: no progress for 2 s in .* \(a rank stopped answering; set GRAPHC_MPI_TIMEOUT",
                     rest), rest


BATCH_NORM_RANKS = """
import sys
import numpy as np
import graphc as gc
from graphc import data
from graphc.distributed import Distributed, params_digest
from graphc.nn.train import Trainer, TrainConfig

def model(x, n_outputs):
    h = gc.relu(gc.nn.batch_norm(gc.nn.dense(x, 16, name="fc"), name="bn"))
    return gc.nn.dense(h, n_outputs, name="out")

dist = Distributed()
ds = data.load("digits")
X, Y = ds.X_train[:300], ds.y_train[:300].astype(np.int32)
tr = Trainer(model, "multiclass", 64, 10, TrainConfig(epochs=1, batch_size=32, threads=1), log=lambda m: None,
             distributed=dist)
state = tr.init_state(0)
tr.dist_step.run_epoch(X, Y, state, batch=32, epoch=0, seed=0, step0=0, scalars=tr.scalars(0))
stats = ["bn.running_mean", "bn.running_var"]
own = dist.allgather({n: state[n].copy() for n in stats})
tr.dist_step.check_replicas(state, 1)
synced = dist.allgather(params_digest(state, stats))
if dist.rank == 0:
    print("own-differ", not np.array_equal(own[0]["bn.running_mean"], own[1]["bn.running_mean"]))
    print("synced-equal", synced[0] == synced[1])
    print("rank0-kept", np.array_equal(state["bn.running_var"], own[0]["bn.running_var"]))
    print("updated", bool(np.all(np.isfinite(state["bn.running_var"])) and not np.allclose(state["bn.running_var"], 1)))
"""


@pytest.mark.parametrize("shared", ["1", "0"], ids=["shared-memory", "allreduce"])
def test_batch_norm_ranks_keep_their_own_running_statistics_then_take_rank_0s(shared):
    """PyTorch DDP's default: during the epoch each rank's running statistics come from its own share of the
    batch (they differ); after it every rank holds rank 0's, so nothing saved or evaluated depends on the rank."""
    r = mpirun(2, sys.executable, "-c", BATCH_NORM_RANKS, GRAPHC_MPI_SHARED=shared, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("own-differ True", "synced-equal True", "rank0-kept True", "updated True"):
        assert line in r.stdout, r.stdout + r.stderr
