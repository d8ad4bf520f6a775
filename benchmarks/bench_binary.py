"""Standalone training binaries (`graphc build`) against in-process training (the JIT), measured in one run:

1. digits, the CLI default (64-128-10 ReLU, batch 32, lr 0.1): training throughput (samples/s, median over
   epochs) of the binary against `gc.fit`, both on the same splits and thread count. The binary's step always
   carries momentum, L2, L1 and dropout (fed 0 / keep 1 when unused), so it is compared twice: with the same
   features on in process (the same step: like for like), and with the in-process default (a smaller step).
2. 784-256-128-10 ReLU on 60,000 synthetic rows (benchmarks/peers.py), batch 128: the same comparison, on 1 and
   2 threads.
3. The binary's size and start-up time: `PATH --help`, and a whole one-epoch digits run (read and check the
   .npy files, initialize, train, evaluate, write the results), medians of repeated runs.

    python benchmarks/bench_binary.py [--quick] [--smoke]

`--smoke` (tests/test_benchmarks.py): every step once, quickly: 1 epoch, 1 repeat, 1 thread, and part 2 on 2,000
synthetic rows of the digits network's shape (64-128-10), with the binary already built (a build takes ~10 s).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ALL = dict(momentum=0.9, l2=1e-5, l1=1e-6)  # values that make the in-process step carry every feature


def binary_rates(exe: Path, paths: dict, out: Path, **kw) -> list[float]:
    args = [str(exe), "--x-train", str(paths["x_train"]), "--y-train", str(paths["y_train"]), "--quiet", "--overwrite",
            "--out", str(out)]
    for k, v in kw.items():
        args += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    with open(out / "history.csv") as f:
        return [float(r["samples_per_second"]) for r in csv.DictReader(f)]


def inprocess_rates(X, y, hidden, n_out, **cfg) -> list[float]:
    from graphc.nn.train import TrainConfig, Trainer

    tr = Trainer(None, "multiclass", X.shape[1], n_out, TrainConfig(hidden=hidden, checkpoint_every=0, **cfg),
                 log=lambda m: None)
    run = tr.run(X, y, None, None)
    return [h["samples_per_second"] for h in run["history"]]


def save_split(d: Path, X, y) -> dict:
    np.save(d / "x_train.npy", np.ascontiguousarray(X, np.float32))
    np.save(d / "y_train.npy", np.ascontiguousarray(y, np.int32))
    return {"x_train": d / "x_train.npy", "y_train": d / "y_train.npy"}


def compare(name: str, exe: Path, paths: dict, work: Path, X, y, hidden, n_out, threads: int, epochs: int, **cfg):
    drop = [1.0] * (len(hidden) + 1)
    b = statistics.median(binary_rates(exe, paths, work / f"{name}-{threads}", epochs=epochs, threads=threads,
                                       **cfg))
    same = statistics.median(inprocess_rates(X, y, hidden, n_out, epochs=epochs, threads=threads, dropout=drop,
                                             **ALL, **cfg))
    plain = statistics.median(inprocess_rates(X, y, hidden, n_out, epochs=epochs, threads=threads, **cfg))
    b_all = statistics.median(binary_rates(exe, paths, work / f"{name}-{threads}-all", epochs=epochs,
                                           threads=threads, dropout=drop, **ALL, **cfg))
    print(f"{name}, {threads} thread(s): binary {b:,.0f} samples/s; in process, default step {plain:,.0f} "
          f"(binary/in-process {b / plain:.2f}x); all features on both sides: binary {b_all:,.0f}, in process "
          f"{same:,.0f} ({b_all / same:.2f}x)")


def startup(exe: Path, paths: dict, work: Path, repeats: int) -> None:
    def timed(args) -> float:
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        return time.perf_counter() - t0

    help_s = statistics.median(timed([str(exe), "--help"]) for _ in range(repeats))
    one = [str(exe), "--x-train", str(paths["x_train"]), "--y-train", str(paths["y_train"]), "--x-val",
           str(paths["x_val"]), "--y-val", str(paths["y_val"]), "--epochs", "1", "--overwrite",
           "--out", str(work / "one")]
    run_s = statistics.median(timed(one) for _ in range(repeats))
    size = exe.stat().st_size
    print(f"binary: {size / 1024:.0f} KiB; start-up: `--help` {help_s * 1e3:.1f} ms, a whole 1-epoch digits run "
          f"(load, check, init, train, validate, write) {run_s * 1e3:.1f} ms (medians of {repeats})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs and repeats")
    ap.add_argument("--smoke", action="store_true", help="a quick run of every step (tests): tiny sizes, 1 repeat")
    args = ap.parse_args()
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
    with tempfile.TemporaryDirectory(prefix="bench-binary-") as d:  # 190 MB of synthetic data: not left behind
        run(Path(d), args.quick, args.smoke)


def run(work: Path, quick: bool, smoke: bool) -> None:
    from peers import synthetic_classification

    from graphc import data
    from graphc.aot import build

    epochs = 1 if smoke else 5 if quick else 30
    repeats = 1 if smoke else 5 if quick else 20
    ds = data.load("digits")
    dpaths = save_split(work, ds.X_train, ds.y_train)
    np.save(work / "x_val.npy", ds.X_val)
    np.save(work / "y_val.npy", ds.y_val)
    dpaths.update(x_val=work / "x_val.npy", y_val=work / "y_val.npy")
    t0 = time.perf_counter()
    exe = build(work / "train-digits", data="digits").path
    print(f"graphc build (digits default MLP): {time.perf_counter() - t0:.1f} s")
    startup(exe, dpaths, work, repeats)
    compare("digits 64-128-10, batch 32", exe, dpaths, work, ds.X_train, ds.y_train, [128], 10, 1, epochs,
            batch_size=32, lr=0.1)

    rows, sizes = (2_000, (64, 128, 10)) if smoke else (60_000, (784, 256, 128, 10))
    name = "-".join(map(str, sizes))
    X, y = synthetic_classification(rows, sizes)
    sd = work / "synthetic"
    sd.mkdir()
    spaths = save_split(sd, X, y)
    t0 = time.perf_counter()
    if smoke:  # the same network as the digits binary: no second build
        exe784 = exe
    else:
        exe784 = build(work / "train-784", task="multiclass", n_features=sizes[0], n_outputs=sizes[-1],
                       hidden=list(sizes[1:-1])).path
    print(f"graphc build ({name}): {time.perf_counter() - t0:.1f} s")
    for threads in (1,) if smoke else (1, 2):
        compare(f"{name} on {rows:,} rows, batch 128", exe784, spaths, work, X, y.astype(np.int32),
                list(sizes[1:-1]), sizes[-1], threads, 1 if smoke else 2 if quick else 3, batch_size=128, lr=0.05)
        peak_rss(exe784, spaths, work / f"rss-{threads}", threads)


def peak_rss(exe: Path, paths: dict, out: Path, threads: int) -> None:
    """The binary's peak RSS for one epoch (GNU time's maximum resident set size), to set against the peers'."""
    cmd = ["/usr/bin/time", "-f", "%M", str(exe), "--x-train", str(paths["x_train"]), "--y-train",
           str(paths["y_train"]), "--epochs", "1", "--batch-size", "128", "--lr", "0.05", "--threads", str(threads),
           "--quiet", "--overwrite", "--out", str(out)]
    if not os.path.exists(cmd[0]):
        print("  (peak RSS: /usr/bin/time is not installed)")
        return
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    kb = int(p.stderr.strip().splitlines()[-1])
    print(f"  binary peak RSS, one epoch on {threads} thread(s): {kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
