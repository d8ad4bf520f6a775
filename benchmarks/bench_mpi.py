"""Data-parallel training on MPI against one process and against PyTorch DDP, measured in one run (medians):

1. 784-256-128-10 ReLU (W2), 60,000 synthetic rows, global batch 128, plain SGD: samples/s of one graphc process on
   2 threads, of `mpirun -n 2` graphc ranks on 1 thread each, and of PyTorch DistributedDataParallel (gloo, 2
   processes, 1 thread each), each the median of EPOCHS epochs; with the ranks' time per step split into the
   gradient phase, the allreduce and the update. Then the same two ways for the standalone binary
   (`graphc build --mpi`), whose per-step loop is native.
2. The allreduce of the W2 gradient buffer and of a 784-2048-2048-10 one at P = 2 (median of repeats).
3. A projection of scaling efficiency to 8, 64 and 256 machines: an alpha-beta model of ring allreduce,
   T(P, n) = 2(P-1)·alpha + 2(P-1)/P · 4n / beta, with no overlap of communication and compute, fed by the measured
   one-thread gradient+update time per step as a function of the rows per rank; printed with the smallest global
   batch that keeps efficiency above 80%, and drawn to docs/mpi_scaling.png (--plot).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_mpi.py [--plot] [--epochs 3] [--smoke]

`--smoke` (tests/test_benchmarks.py): every part once, quickly: 2,048 rows, 1 epoch, a few timed repeats of each
phase, the plot drawn into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROWS, FEATURES, CLASSES, BATCH = 60_000, 784, 10, 128
W2 = [256, 128]
WIDE = [2048, 2048]
ALPHA = 5e-6  # s per message: an MPI latency over a 100 Gb/s InfiniBand or RoCE fabric, software included
BETA = 12.5e9  # bytes/s: 100 Gb/s per machine
REPS, REPS_WIDE = 300, 20  # timed repeats of a phase, of the wide allreduce
SMOKE = {"ROWS": 2048, "REPS": 3, "REPS_WIDE": 1}


def data(rows: int | None = None):
    rows = ROWS if rows is None else rows
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    return X, np.abs(X[:, :CLASSES]).argmax(axis=1).astype(np.int32)


def n_params(hidden: list[int]) -> int:
    sizes = [FEATURES, *hidden, CLASSES]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def one_process(epochs: int, threads: int) -> float:
    from graphc.nn.train import TrainConfig, Trainer

    X, y = data()
    tr = Trainer(None, "multiclass", FEATURES, CLASSES, TrainConfig(batch_size=BATCH, hidden=W2, lr=0.01,
                                                                    threads=threads), log=lambda m: None)
    state = tr.init_state(0)
    rates = []
    for e in range(epochs):
        t = time.perf_counter()
        tr.epoch_fn.run_epoch(X, y, state, batch=BATCH, epoch=e, seed=0, step0=0, scalars=tr.scalars(0),
                              threads=threads)
        rates.append(ROWS / (time.perf_counter() - t))
    return float(np.median(rates))


def rank_part(epochs: int, out: str) -> None:
    """Under mpirun: the distributed epoch, its phases, and the allreduce of both buffer sizes."""
    from graphc.distributed import Distributed, shares
    from graphc.nn.train import TrainConfig, Trainer

    dist = Distributed()
    X, y = data()
    tr = Trainer(None, "multiclass", FEATURES, CLASSES, TrainConfig(batch_size=BATCH, hidden=W2, lr=0.01, threads=1),
                 log=lambda m: None, distributed=dist)
    state = tr.init_state(0)
    ds = tr.dist_step
    rates = []
    for e in range(epochs):
        dist.comm.Barrier()
        t = time.perf_counter()
        ds.run_epoch(X, y, state, batch=BATCH, epoch=e, seed=0, step0=0, scalars=tr.scalars(0))
        rates.append(ROWS / (time.perf_counter() - t))
    b = shares(BATCH, dist.size)[dist.rank]
    b = b[1] - b[0]
    live = ds._begin(state)
    gv = {k: v for k, v in live.items() if k in ds.grad_leaves}
    gv.update(x=X[:b].copy(), y=y[:b].copy(), grad_weight=np.float32(0.5))
    uv = ds._bind_update(ds._update_values(live, {"lr": 0.0}, np.ones((), np.float32)))
    gcall = ds.grad_fn.bind(gv, out=ds.outs)

    def timed(fn, reps=None):
        reps = REPS if reps is None else reps
        ts = []
        for _ in range(reps):
            dist.comm.Barrier()
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    flat = np.zeros(n_params(W2), np.float32)
    phases = {"grad": timed(gcall),
              "exchange_update": timed(lambda: ds._reduce_and_update(uv)),
              "allreduce": timed(lambda: dist.allreduce_(flat))}
    wide = np.zeros(n_params(WIDE), np.float32)
    phases["allreduce_wide"] = timed(lambda: dist.allreduce_(wide), reps=REPS_WIDE)
    if dist.rank == 0:
        with open(out, "w") as f:
            json.dump({"rate": float(np.median(rates)), "rates": rates, "phases": phases,
                       "step": type(ds).__name__}, f)


def ranks(epochs: int, shared: bool, smoke: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
        subprocess.run([mpirun, "-n", "2", sys.executable, __file__, "--rank-part", out, "--epochs", str(epochs)]
                       + ["--smoke"] * smoke, check=True,
                       env=dict(os.environ, GRAPHC_MPI_SHARED="1" if shared else "0"))
        with open(out) as f:
            return json.load(f)


def binary(epochs: int) -> dict | None:
    """The standalone binary of the same W2 step: `graphc build` on 1 process x 2 threads against `graphc build
    --mpi` under `mpirun -n 2` x 1 thread, samples/s medians over epochs from their history.csv. None without a C
    compiler."""
    import csv

    from graphc.aot import build
    from graphc.errors import GraphcError

    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    with tempfile.TemporaryDirectory() as tmp:
        try:  # the same step twice: the plain binary (its whole epoch one native loop) and the MPI one
            built = {mpi: build(os.path.join(tmp, f"w2-{mpi}"), task="multiclass", n_features=FEATURES,
                                n_outputs=CLASSES, hidden=W2, mpi=mpi, batch_size=BATCH, lr=0.01)
                     for mpi in (False, True)}
        except GraphcError as e:
            print(f"  (standalone binary not built: {e})")
            return None
        X, y = data()
        np.save(os.path.join(tmp, "x.npy"), X)
        np.save(os.path.join(tmp, "y.npy"), y)
        files = ["--x-train", os.path.join(tmp, "x.npy"), "--y-train", os.path.join(tmp, "y.npy"), "--quiet",
                 "--epochs", str(epochs)]

        def rate(cmd: list, out: str) -> float:
            subprocess.run([*cmd, *files, "--out", os.path.join(tmp, out)], check=True, capture_output=True)
            with open(os.path.join(tmp, out, "history.csv")) as f:
                return float(np.median([float(row["samples_per_second"]) for row in csv.DictReader(f)]))

        return {"one": rate([str(built[False].path), "--threads", "2"], "one"),
                "ranks": rate([mpirun, "-n", "2", str(built[True].path), "--threads", "1"], "ranks")}


def _ddp_worker(rank: int, world: int, epochs: int, port: int, q, rows: int) -> None:
    import torch
    import torch.distributed as td

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, CLASSES))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    lossf = torch.nn.CrossEntropyLoss()
    X, y = data(rows)
    X, y = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    per = BATCH // world
    rates = []
    for e in range(epochs):
        perm = torch.randperm(rows, generator=torch.Generator().manual_seed(e))
        td.barrier()
        t = time.perf_counter()
        for s in range(0, rows, BATCH):
            idx = perm[s + rank * per:min(s + (rank + 1) * per, rows)]
            opt.zero_grad(set_to_none=True)
            lossf(ddp(X[idx]), y[idx]).backward()
            opt.step()
        rates.append(rows / (time.perf_counter() - t))
    if rank == 0:
        q.put(float(np.median(rates)))
    td.destroy_process_group()


def ddp(epochs: int) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, epochs, port, q, ROWS)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return q.get()


def step_seconds(rows_per_rank: float, phases: dict, b0: int) -> float:
    """Compute per step on one thread at `rows_per_rank`: the measured gradient time scaled by rows (the GEMMs'
    work is linear in the rows; an underestimate of the fixed cost at small shares), plus the update."""
    return phases["grad"] * rows_per_rank / b0 + phases["update"]


def ring(p: int, n: int) -> float:
    return 2 * (p - 1) * ALPHA + 2 * (p - 1) / p * 4 * n / BETA


def projection(phases: dict, b0: int, plot: bool, plot_dir: str | None = None) -> None:
    print(f"\nprojection: ring allreduce, alpha {ALPHA * 1e6:g} us, beta {BETA / 1e9:g} GB/s per machine (100 Gb/s), "
          f"no overlap; compute from the measured one-thread step at {b0} rows per rank "
          f"({phases['grad'] * 1e3:.3f} ms gradient + {phases['update'] * 1e3:.3f} ms update)")
    curves = {}
    for name, hidden, grad_scale in (("W2 784-256-128-10", W2, 1.0),
                                     ("784-2048-2048-10", WIDE, n_params(WIDE) / n_params(W2))):
        n = n_params(hidden)
        scaled = {"grad": phases["grad"] * grad_scale, "update": phases["update"] * grad_scale}  # flops ~ params
        print(f"  {name} ({n:,} parameters, {4 * n / 1e6:.2f} MB gradient):")
        for p in (8, 64, 256):
            need = None
            for batch in [2**k for k in range(3, 24)]:
                if batch < p:
                    continue
                c = step_seconds(batch / p, scaled, b0)
                if c / (c + ring(p, n)) >= 0.8:
                    need = batch
                    break
            at = {b: (c := step_seconds(b / p, scaled, b0)) / (c + ring(p, n)) for b in (128, 1024, 8192)}
            print(f"    P={p:>3}: allreduce {ring(p, n) * 1e3:.3f} ms; efficiency at global batch 128 / 1024 / 8192: "
                  + " / ".join(f"{at[b]:.0%}" for b in (128, 1024, 8192))
                  + f"; >= 80% from global batch {need:,}")
            curves[(name, p)] = [(b, step_seconds(b / p, scaled, b0) / (step_seconds(b / p, scaled, b0) + ring(p, n)))
                                 for b in [2**k for k in range(4, 21)] if b >= p]
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for (name, p), pts in curves.items():
            ax.plot([b for b, _ in pts], [e for _, e in pts], ls="-" if name.startswith("W2") else "--",
                    label=f"{name.split()[0]}, {p} machines")
        ax.axhline(0.8, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch")
        ax.set_ylabel("scaling efficiency")
        ax.set_title("Projected data-parallel efficiency (ring allreduce, 100 Gb/s, 5 us)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(plot_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs"),
                            "mpi_scaling.png")
        fig.savefig(path, dpi=100)
        print(f"plot: {os.path.normpath(path)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--rank-part", metavar="OUT")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every part (tests): 2,048 rows, 1 epoch, the plot in a temporary directory")
    args = ap.parse_args()
    plot_dir = None
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        globals().update(SMOKE)
        args.epochs, args.plot = 1, True
        if not args.rank_part:
            plot_dir = tempfile.mkdtemp(prefix="bench-mpi-plot-")
    if args.rank_part:
        rank_part(args.epochs, args.rank_part)
        return
    one = one_process(args.epochs, 2)
    r = ranks(args.epochs, shared=True, smoke=args.smoke)
    ra = ranks(args.epochs, shared=False, smoke=args.smoke)
    try:
        torch_rate = ddp(args.epochs)
    except ImportError:
        torch_rate = float("nan")
    ph = ra["phases"]
    ph["update"] = max(ph["exchange_update"] - ph["allreduce"], 0.0)  # the whole update on one rank
    print(f"W2, {ROWS:,} rows, global batch {BATCH} (median of {args.epochs} epochs; the machine may be shared):")
    print(f"  graphc, 1 process x 2 threads:  {one / 1e3:8.1f} k samples/s")
    for name, x in (("shared memory", r), ("MPI_Allreduce", ra)):
        print(f"  graphc, 2 ranks x 1 thread, {name:>13}: {x['rate'] / 1e3:8.1f} k samples/s  ({x['rate'] / one:.2f}x "
              f"one process, {x['rate'] / torch_rate:.2f}x DDP)  epochs {[round(v / 1e3, 1) for v in x['rates']]}; "
              f"per step: gradient phase {x['phases']['grad'] * 1e3:.3f} ms (64 rows, 1 thread), exchange + update "
              f"{x['phases']['exchange_update'] * 1e3:.3f} ms")
    print(f"  PyTorch DDP gloo, 2 x 1 thread: {torch_rate / 1e3:8.1f} k samples/s")
    b = binary(args.epochs)
    if b is not None:
        print(f"  standalone binary (graphc build --mpi): 1 process x 2 threads {b['one'] / 1e3:.1f} k samples/s, "
              f"mpirun -n 2 x 1 thread {b['ranks'] / 1e3:.1f} k ({b['ranks'] / b['one']:.2f}x one process, "
              f"{b['ranks'] / torch_rate:.2f}x DDP)")
    print(f"  allreduce at P=2: W2 {ph['allreduce'] * 1e3:.3f} ms ({4 * n_params(W2) / 1e6:.2f} MB), 784-2048-2048-10 "
          f"{ph['allreduce_wide'] * 1e3:.2f} ms ({4 * n_params(WIDE) / 1e6:.1f} MB)")
    projection(ph, BATCH // 2, args.plot, plot_dir)
    if plot_dir is not None:
        shutil.rmtree(plot_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
