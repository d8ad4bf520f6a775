"""Training against its peers, measured in one run (medians where repeated):

1. digits, the CLI default (64-128-10 ReLU, 30 epochs, batch 32, plain SGD lr 0.1): test accuracy against
   scikit-learn's MLPClassifier with the same settings (mean over seeds), and training throughput (samples/s,
   compile excluded) against jax.jit of the whole epoch (lax.scan), PyTorch eager, a numpy loop and
   scikit-learn, all on the same thread count.
2. 784-256-128-10 ReLU on 60,000 synthetic rows, batch 128: samples/s (median of 3 epochs; then the median of 3
   rounds that each run graphc and every peer once, against drift) against the peers on 1 and 2 threads, and the
   peak RSS of each run in a fresh process (with graphc's arena peak); graphc both in process and as a
   standalone training binary (`graphc build`, the same step without the compiler loaded).
3. diabetes (regression) and breast cancer (binary) defaults: test MSE / accuracy against MLPRegressor /
   MLPClassifier with the same settings (mean over seeds). scikit-learn's regression loss is half the mean
   squared error, so it gets twice graphc's learning rate: the same steps.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py [--quick] [--smoke]

`--smoke` (tests/test_benchmarks.py): every part once, quickly: 1 seed, 2 epochs, 2,000 synthetic rows, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SEEDS = tuple(range(16))  # small test splits: means over seeds, not single runs
EPOCHS = 3  # the 784 run: each figure is the median epoch of this many (peak RSS: of the whole run)
ROUNDS = 3  # the 784 run: graphc and every peer, this many times over, alternated
SMALL_EPOCHS = 30  # digits, diabetes, breast cancer
ROWS = 60000  # the 784 run
THREADS = (1, 2)  # the 784 run's thread counts (each a fresh process)
SMOKE = {"SEEDS": (0,), "EPOCHS": 1, "ROUNDS": 1, "SMALL_EPOCHS": 2, "ROWS": 2000, "THREADS": (1,)}


def graphc_fit(**kw):
    from graphc.fitting import fit

    return fit(progress=False, checkpoint_every=0, **kw)


def digits(threads: int, quick: bool) -> None:
    from peers import epoch_jax_scan, epoch_numpy, epoch_torch, sklearn_mlp

    from graphc import data

    ds = data.load("digits")
    accs, rates = [], []
    for seed in SEEDS:
        r = graphc_fit(data="digits", seed=seed, threads=threads, epochs=SMALL_EPOCHS)
        accs.append(r.metrics["test_accuracy"])
        rates.append(np.median([h["samples_per_second"] for h in r.history]))
    g_rate = float(np.median(rates))
    compile_s = r.metrics["compile_seconds"]
    sk = [sklearn_mlp(ds.X_train, ds.y_train, ds.X_test, ds.y_test, hidden=(128,), epochs=SMALL_EPOCHS, batch=32,
                      lr=0.1,
                      seed=s, threads=threads) for s in SEEDS]
    sk_acc = float(np.mean([s["test_accuracy"] for s in sk]))
    print(f"digits default: graphc test accuracy {np.mean(accs):.4f} {[round(a, 4) for a in accs]}, "
          f"sklearn MLPClassifier {sk_acc:.4f} {[round(s['test_accuracy'], 4) for s in sk]}")
    peers = {"sklearn": float(np.median([s["samples_per_second"] for s in sk]))}
    if not quick:
        sizes = (64, 128, 10)
        y = ds.y_train.astype(np.int64)
        for name, fn in (("jax scan", epoch_jax_scan), ("torch", epoch_torch), ("numpy", epoch_numpy)):
            try:
                peers[name] = fn(ds.X_train, y, sizes, 32, 0.1, SMALL_EPOCHS, seed=0, threads=threads,
                                 evaluate=False)["samples_per_second"]
            except ImportError as e:
                print(f"  ({name}: {e})")
    print(f"digits throughput ({threads} thread): graphc {g_rate / 1e6:.2f}M samples/s (compile {compile_s:.2f} s "
          f"once); " + ", ".join(f"{k} {v / 1e6:.3f}M ({g_rate / v:.2f}x)" for k, v in peers.items()))


RSS = """
import sys, json, time
sys.path.insert(0, {here!r})
import numpy as np
from peers import synthetic_classification
import graphc as gc
from graphc.nn.train import TrainConfig, Trainer
X, y = synthetic_classification({rows}, (784, 256, 128, 10), seed=0)
y = y.astype(np.int32)
cfg = TrainConfig(hidden=[256, 128], batch_size={batch}, lr=0.01, epochs=1, threads={threads})
tr = Trainer(None, "multiclass", 784, 10, cfg, log=lambda m: None)
state = tr.init_state(0)
tr.epoch_fn.run_epoch(X[:1024], y[:1024], state, batch={batch}, epoch=99, seed=0, step0=0,
                      scalars=tr.scalars(0), threads={threads})
secs = []
for e in range({epochs}):  # the median epoch, as for the peers
    t = time.perf_counter()
    st = tr.epoch_fn.run_epoch(X, y, state, batch={batch}, epoch=e, seed=0, step0=0, scalars=tr.scalars(0),
                               threads={threads})
    secs.append(time.perf_counter() - t)
dt = sorted(secs)[len(secs) // 2]
from peers import peak_rss_mb
plan = tr.epoch_fn.memory_plan
print(json.dumps({{"samples_per_second": len(X) / dt, "peak_rss_mb": peak_rss_mb(), "arena_bytes": plan.arena_bytes,
    "workspace_bytes": plan.workspace_bytes, "loss": st.mean_loss}}))
"""


_BINARY: dict = {}


def binary_run(X, y, threads: int, batch: int) -> dict | None:
    """The same 784-256-128-10 run (EPOCHS epochs) by a standalone training binary (`graphc build`, built
    once): its metrics.json (peak_rss_mb: the binary's own VmHWM, arena_bytes) with the median epoch's
    samples/s from its history.csv. None where no C compiler is found."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    if "exe" not in _BINARY:
        if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
            print("  (binary: no C compiler)")
            _BINARY["exe"] = None
        else:
            from graphc.aot import build

            work = Path(tempfile.mkdtemp(prefix="bench-train-"))
            atexit.register(shutil.rmtree, work, True)  # 190 MB of synthetic data: not left behind
            np.save(work / "x.npy", X)
            np.save(work / "y.npy", y.astype(np.int32))
            _BINARY.update(work=work, exe=build(work / "train-784", task="multiclass", n_features=784, n_outputs=10,
                                                hidden=[256, 128]).path)
    if _BINARY["exe"] is None:
        return None
    work = _BINARY["work"]
    out = work / f"out-{threads}-{len(list(work.glob('out-*')))}"  # a run directory of its own: one per round
    subprocess.run([str(_BINARY["exe"]), "--x-train", str(work / "x.npy"), "--y-train", str(work / "y.npy"),
                    "--epochs", str(EPOCHS), "--batch-size", str(batch), "--lr", "0.01", "--threads", str(threads),
                    "--quiet", "--out", str(out)], check=True, capture_output=True)
    m = json.loads((out / "metrics.json").read_text())
    rows = (out / "history.csv").read_text().splitlines()
    col = rows[0].split(",").index("samples_per_second")
    m["median_samples_per_second"] = float(np.median([float(r.split(",")[col]) for r in rows[1:]]))
    return m


def big(threads: int, quick: bool, rows: int | None = None, batch: int = 128) -> None:
    """graphc in process (a fresh Python process: imports, compile from the cache, EPOCHS epochs) and as a
    standalone binary, against the peers, in ROUNDS rounds that each run every one of them once (this VM's speed
    drifts by 30% over a minute: a figure is the median of its rounds, and the ratios are also given per round);
    each peer's peak RSS measured once, in a fresh process of its own."""
    from peers import epoch_jax_scan, epoch_numpy, epoch_torch, peer_peak_rss, synthetic_classification

    rows = ROWS if rows is None else rows
    here = os.path.dirname(os.path.abspath(__file__))
    code = RSS.format(here=here, rows=rows, batch=batch, threads=threads, epochs=EPOCHS)
    X, y = synthetic_classification(rows, (784, 256, 128, 10), seed=0)
    sizes = (784, 256, 128, 10)
    peers = {} if quick else {"jax scan": epoch_jax_scan, "torch": epoch_torch, "numpy": epoch_numpy}
    rates: dict[str, list[float]] = {"in process": [], "binary": [], **{name: [] for name in peers}}
    g = b = None
    for _ in range(ROUNDS):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        g = json.loads(p.stdout.strip().splitlines()[-1])
        rates["in process"].append(g["samples_per_second"])
        b = binary_run(X, y, threads, batch)
        if b is not None:
            rates["binary"].append(b["median_samples_per_second"])
        for name, fn in list(peers.items()):
            try:
                rates[name].append(fn(X, y, sizes, batch, 0.01, EPOCHS, seed=0, threads=threads,
                                      evaluate=False)["samples_per_second"])
            except ImportError as e:
                print(f"  ({name}: {e})")
                del peers[name], rates[name]
    med = {k: float(np.median(v)) for k, v in rates.items() if v}
    print(f"784-256-128-10, {rows} rows, batch {batch}, {threads} thread(s), medians of {ROUNDS} round(s):")
    print(f"  graphc in process: {med['in process'] / 1e3:.1f}k samples/s, peak RSS {g['peak_rss_mb']:.0f} MB "
          f"(arena {g['arena_bytes'] / 1e6:.2f} MB, gemm workspace {g['workspace_bytes'] / 1e6:.2f} MB)")
    if b is not None:
        print(f"  graphc binary: {med['binary'] / 1e3:.1f}k samples/s, peak RSS "
              f"{b['peak_rss_mb']:.0f} MB (arenas {b['arena_bytes'] / 1e6:.2f} MB)")
    if not peers:
        return
    best_rss = None
    for name in peers:
        peer = name.split()[0]
        rss = peer_peak_rss(peer, sizes, rows, batch, threads=threads)["peak_rss_mb"]
        if peer == "numpy":
            best_rss = rss
        print(f"  {name}: {med[name] / 1e3:.1f}k samples/s ({med['in process'] / med[name]:.2f}x), peak RSS "
              f"{rss:.0f} MB")
    best = max(med[name] for name in peers)
    fastest = [max(rates[name][r] for name in peers) for r in range(ROUNDS)]
    rounds = ", ".join(f"{g_r / f:.2f}" for g_r, f in zip(rates["in process"], fastest, strict=True))
    print(f"  over the fastest peer: in process {med['in process'] / best:.2f}x"
          + (f", binary {med['binary'] / best:.2f}x" if b is not None else "") + f" (each round: {rounds})")
    if best_rss:
        print(f"  peak RSS over the numpy loop's: in process {g['peak_rss_mb'] / best_rss:.2f}x"
              + (f", binary {b['peak_rss_mb'] / best_rss:.2f}x" if b is not None else ""))


def small_tasks(threads: int) -> None:
    from peers import sklearn_mlp

    from graphc import data
    from graphc.fitting import DATASET_DEFAULTS

    for name, task in (("diabetes", "regression"), ("breast_cancer", "classification")):
        ds = data.load(name)
        d = {"lr": 0.1, "hidden": [128], "epochs": 30, **DATASET_DEFAULTS[name]}
        if SMALL_EPOCHS != 30:  # --smoke
            d["epochs"] = SMALL_EPOCHS
        key = "test_mse" if task == "regression" else "test_accuracy"
        ours = [graphc_fit(data=name, seed=s, threads=threads, epochs=d["epochs"]).metrics[key] for s in SEEDS]
        sk_lr = d["lr"] * (2 if task == "regression" else 1)
        theirs = [sklearn_mlp(ds.X_train, ds.y_train.astype(np.int64) if task != "regression" else ds.y_train,
                              ds.X_test, ds.y_test, task=task, hidden=tuple(d["hidden"]), epochs=d["epochs"],
                              batch=32, lr=sk_lr, seed=s, threads=threads)[key] for s in SEEDS]
        a, b = float(np.mean(ours)), float(np.mean(theirs))
        rel = (a - b) / b
        print(f"{name}: graphc {key} {a:.4f} {[round(v, 4) for v in ours]}, sklearn {b:.4f} "
              f"{[round(v, 4) for v in theirs]} ({rel * 100:+.1f}%)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="graphc and scikit-learn only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every part (tests): 1 seed, 2 epochs, 2,000 synthetic rows, 1 thread")
    args = ap.parse_args(argv)
    if args.smoke:
        import tempfile

        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        globals().update(SMOKE)
    from peers import describe

    info = describe()
    print(f"# {time.strftime('%Y-%m-%d')}  {info.get('cpu')}  torch {info.get('torch')}  jax {info.get('jax')}  "
          f"sklearn {info.get('sklearn')}  OpenBLAS {info.get('openblas_kernel')}  load {info.get('loadavg')}")
    digits(args.threads, args.quick)
    small_tasks(args.threads)
    for t in THREADS:
        big(t, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
