"""Per-sample and small-batch SGD against every peer, in one run: graphc's epoch (gc.EpochFunction) against
numpy, PyTorch eager, torch.compile, jax.jit per step and a JAX epoch as one lax.scan, on the digits data (and a
regression on the diabetes data: workloads SIZES:BATCH:diabetes).

Every peer trains the same MLP (ReLU, W stored (fan_in, fan_out)) with plain SGD on the mean softmax
cross-entropy (digits) or the mean squared error (diabetes: one real output, gc.nn.mse's mean of (pred - y)^2, on
the targets standardized as graphc.data.load gives them) from the same initial parameters (`peers.init_params`)
in the same sample order (`peers.epoch_permutations`, the last partial batch trained): graphc gets that order
through `order=`. They end at the same parameters up to float32 rounding (printed: the largest difference from
numpy's). Throughput is rows per second of the median epoch (and of the best epoch: the machine is shared), on 1
thread; compile time is not counted. `--baseline DIR` also runs graphc from another checkout (e.g. the main
branch) in a fresh process, the same way, so that before and after are measured in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_small.py [--baseline /path/to/graphc]
        [--epochs 10] [--workloads 64-32-10:1,...,10-64-64-1:16:diabetes] [--peers numpy,torch,...] [--smoke]

`--smoke` (tests/test_benchmarks.py): 1 epoch of two workloads (64-32-10 at batch 1, the diabetes regression).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PEERS = ("numpy", "torch", "torch.compile", "jax step", "jax scan")
WORKLOADS = "64-32-10:1,64-32-10:16,64-32-10:32,64-128-10:32,10-64-64-1:16:diabetes"
DATASETS = {"digits": "cross_entropy", "diabetes": "mse"}  # SIZES:BATCH[:DATASET] -> the loss it trains
LR = 0.05  # batch 1: LR_SAMPLE (per-sample SGD at 0.05 is chaotic: float32 rounding differences grow)
LR_SAMPLE = 0.01


def lr_for(batch: int) -> float:
    return LR_SAMPLE if batch == 1 else LR


def dataset(name: str = "digits"):
    """The bundled data set's training split as graphc loads it (features standardized, regression targets too)."""
    from graphc import data

    ds = data.load(name)
    y = ds.y_train.astype(np.float32 if DATASETS[name] == "mse" else np.int64)
    return np.ascontiguousarray(ds.X_train, np.float32), y


def graphc_epochs(X, y, sizes, batch, epochs, seed=0, loss="cross_entropy") -> dict:
    """graphc's epoch on `peers`' parameters and orders. With the public API (gc.EpochFunction, order=) the
    order is passed; an older graphc (no public epoch) trains on X permuted outside the timing, in order."""
    from peers import epoch_permutations, init_params

    import graphc as gc

    x = gc.input("x", ("N", sizes[0]))
    mse = loss == "mse"
    t = gc.input("y", ("N",), "float32" if mse else "int32")
    lr = gc.input("lr", (), "float32")
    logits = gc.nn.mlp(x, list(sizes[1:]), name="mlp", bias_init="zeros")
    loss = gc.nn.mse(logits, t) if mse else gc.nn.softmax_cross_entropy(logits, t)
    params = gc.nn.parameters(loss)
    updates = {p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)}
    t0 = time.perf_counter()
    public = hasattr(gc, "EpochFunction")
    if public:
        ef = gc.EpochFunction(loss, updates, x=x, y=t, threads=1)
    else:
        from graphc.runtime.epoch import EpochFunction

        ef = EpochFunction(loss, updates, x=x, y=t, training=False, threads=1)
    compile_seconds = time.perf_counter() - t0
    def aligned_empty(shape, dtype):  # 64-byte aligned, as gc.nn.init_params gives them
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = np.empty(n + 64, np.uint8)
        off = (-raw.ctypes.data) % 64
        return raw[off:off + n].view(dtype).reshape(shape)

    state = {}
    for i, (W, b) in enumerate(init_params(sizes, seed)):
        for name, v in ((f"mlp.{i}.W", W), (f"mlp.{i}.b", b)):
            state[name] = aligned_empty(v.shape, np.float32)
            state[name][...] = v
    y32 = y.astype(np.float32 if mse else np.int32)
    secs, losses = [], []
    for e, perm in enumerate(epoch_permutations(len(X), epochs, seed)):
        if public:
            t0 = time.perf_counter()
            st = ef.run_epoch(X, y32, state, batch=batch, order=perm, scalars={"lr": lr_for(batch)})
        else:
            Xp, yp = np.ascontiguousarray(X[perm]), np.ascontiguousarray(y32[perm])
            t0 = time.perf_counter()
            st = ef.run_epoch(Xp, yp, state, batch=batch, epoch=e, seed=seed, step0=0, scalars={"lr": lr_for(batch)},
                              shuffle=False)
        secs.append(time.perf_counter() - t0)
        losses.append(st.mean_loss)
    out = [(state[f"mlp.{i}.W"].copy(), state[f"mlp.{i}.b"].copy()) for i in range(len(sizes) - 1)]
    return {"epoch_seconds": secs, "compile_seconds": compile_seconds, "losses": losses, "params": out}


def _rates(rows: int, secs: list[float]) -> tuple[float, float]:
    return rows / statistics.median(secs), rows / min(secs)


def run_peer(name, X, y, sizes, batch, epochs, loss="cross_entropy"):
    import peers

    fn = {"numpy": peers.epoch_numpy, "torch": peers.epoch_torch, "torch.compile": peers.epoch_torch_compile,
          "jax step": peers.epoch_jax_step, "jax scan": peers.epoch_jax_scan}[name]
    r = fn(X, y, sizes, batch, lr_for(batch), epochs, seed=0, threads=1, evaluate=False, loss=loss)
    return {"epoch_seconds": r["epoch_seconds"], "compile_seconds": r["compile_seconds"], "params": r["params"]}


def _baseline(path: str, workloads: str, epochs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, os.path.abspath(__file__), "--graphc-only", "--workloads", workloads, "--epochs",
           str(epochs)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _key(sizes, batch, ds) -> str:
    return f"{'-'.join(map(str, sizes))}:{batch}" + (f":{ds}" if ds != "digits" else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=WORKLOADS,
                    help="SIZES:BATCH[:DATASET],... (sizes joined by '-'; DATASET digits (default) or diabetes)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--baseline", metavar="DIR", help="also run graphc from this checkout (fresh process)")
    ap.add_argument("--graphc-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every code path (tests): 1 epoch, 64-32-10:1 and the diabetes workload")
    args = ap.parse_args(argv)
    if args.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        args.epochs = 1
        if args.workloads == WORKLOADS:
            args.workloads = "64-32-10:1,10-64-64-1:16:diabetes"
    work = [(tuple(int(v) for v in w.split(":")[0].split("-")), int(w.split(":")[1]), (w.split(":") + ["digits"])[2])
            for w in args.workloads.split(",")]  # (sizes, batch, data set)
    for w in work:
        if w[2] not in DATASETS:
            ap.error(f"unknown data set {w[2]!r} in --workloads: one of {', '.join(DATASETS)}")
    data = {name: dataset(name) for name in {w[2] for w in work}}
    if args.graphc_only:  # the --baseline child: graphc's rates only, as JSON
        out = {}
        for sizes, batch, ds in work:
            X, y = data[ds]
            r = graphc_epochs(X, y, sizes, batch, args.epochs, loss=DATASETS[ds])
            out[_key(sizes, batch, ds)] = [*_rates(len(X), r["epoch_seconds"]), r["compile_seconds"]]
        print(json.dumps(out))
        return 0
    import peers

    peers.set_threads(1)
    info = peers.describe()
    print(f"CPU {info.get('cpu', '?')}; load average {os.getloadavg()[0]:.2f} (the machine is shared); "
          f"{', '.join(f'{k} {len(v[0])} rows' for k, v in data.items())},"
          f" lr {LR} ({LR_SAMPLE} at batch 1), {args.epochs} epochs, 1 thread; "
          "samples/s of the median epoch (best epoch in brackets)")
    base = _baseline(args.baseline, args.workloads, args.epochs) if args.baseline else {}
    names = [p for p in args.peers.split(",") if p]
    for sizes, batch, ds in work:
        key = _key(sizes, batch, ds)
        X, y = data[ds]
        g = graphc_epochs(X, y, sizes, batch, args.epochs, loss=DATASETS[ds])
        rows = {"graphc": (*_rates(len(X), g["epoch_seconds"]), g["compile_seconds"])}
        ref = None
        diffs = {}
        for name in names:
            try:
                r = run_peer(name, X, y, sizes, batch, args.epochs, DATASETS[ds])
            except ImportError as e:
                print(f"  ({name}: {e})")
                continue
            rows[name] = (*_rates(len(X), r["epoch_seconds"]), r["compile_seconds"])
            if ref is None:
                ref = r["params"]
            diffs[name] = max(float(np.max(np.abs(a - b))) for pr, pp in zip(ref, r["params"], strict=True)
                              for a, b in zip(pr, pp, strict=True))
        if ref is not None:
            diffs["graphc"] = max(float(np.max(np.abs(a - b))) for pr, pp in zip(ref, g["params"], strict=True)
                                  for a, b in zip(pr, pp, strict=True))
        peers_only = {k: v for k, v in rows.items() if k != "graphc"}
        print(f"\n{key.replace(':', ', batch ', 1).replace(':', ', ')}"
              f"{f', {len(X)} rows, mean squared error' if DATASETS[ds] == 'mse' else ''}:")
        for k, (med, best, comp) in rows.items():
            extra = f", compile {comp:.2f} s" if comp else ""
            print(f"  {k:14s} {med / 1e6:7.3f} M/s  [{best / 1e6:.3f}]{extra}"
                  + (f"  (max |param - {names[0]}'s| {diffs[k]:.1e})" if k in diffs else ""))
        if key in base:
            med, best, comp = base[key]
            print(f"  {'graphc before':14s} {med / 1e6:7.3f} M/s  [{best / 1e6:.3f}], compile {comp:.2f} s "
                  f"({args.baseline})")
        if peers_only:
            fm = max(peers_only, key=lambda k: peers_only[k][0])
            fb = max(peers_only, key=lambda k: peers_only[k][1])
            line = (f"  graphc / fastest peer: {rows['graphc'][0] / peers_only[fm][0]:.2f}x median ({fm}), "
                    f"{rows['graphc'][1] / peers_only[fb][1]:.2f}x best ({fb})")
            if key in base:
                line += (f"; before: {base[key][0] / peers_only[fm][0]:.2f}x median, "
                         f"{base[key][1] / peers_only[fb][1]:.2f}x best")
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
