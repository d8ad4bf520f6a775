"""Convolutional networks against their peers, measured in one run (medians of repeats; peers in the same run):

1. a 3x3 convolution, 64 -> 64 channels, 56x56, batch 32, 'same' padding: forward, and forward + both gradients
   (input and filter), as GFLOP/s and as a share of the measured FP32 FMA peak (one core), against PyTorch's CPU
   convolution (oneDNN, NCHW as PyTorch prefers) and jax.jit of lax.conv_general_dilated (NHWC/HWIO);
2. a LeNet-5-shaped training step (28x28x1, conv5x5x6 -> pool -> conv5x5x16 -> pool -> 120 -> 84 -> 10,
   batch 64, plain SGD): samples/s of graphc's native epoch against PyTorch eager, torch.compile and jax.jit;
3. a CIFAR-shaped step (32x32x3; conv3x3x32, conv3x3x32, pool, conv3x3x64, conv3x3x64, pool, dense 10, batch 64);
4. graphc's compile time of those steps, cold (no disk cache) and cached;
5. with --strided: strided convolution layers (a 7x7 stride-2 stem, 5x5 and 3x3 stride 2, 11x11 stride 4), one
   training step's forward + input and filter gradients (and a stem's filter gradient alone: a first layer's input
   is data), against PyTorch on 1 thread, interleaved medians;
6. with --grouped: grouped and depthwise layers (groups=: MobileNet's 3x3 depthwise at stride 1 and 2, a channel
   multiplier of 2, 2 and 32 groups of several channels), measured as --strided's.

Each thread count runs in its own process (XLA fixes its thread count when it starts), and the parent prints
the table. graphc lowers a convolution to pad -> the packed GEMM reading the padded image through a view (its
tiles in place, no im2col copy); a 3x3 stride-1 convolution whose channels and filters fill whole vectors and
tiles runs as Winograd F(2x2, 3x3), its filter gradient as F(3x3, 2x2) (2.25x fewer multiplications: GFLOP/s
count the direct convolution's 2*9*C*F per output pixel, so they may exceed the FMA peak); `--profile` prints
which kernels a conv training step spends its time in (gc.compile(profile=True)).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py [--threads 1,2] [--quick]
    python benchmarks/bench_conv.py --accuracy     # examples/cnn_digits.py over seeds 0-7, and the default MLP
    python benchmarks/bench_conv.py --smoke        # tests: 1 thread, a batch-1 conv layer, 128 rows, one sample each
                                                   # (and two batch-1 strided layers)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py --strided [--profile]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py --grouped [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402

ROWS = 1024  # rows of synthetic data per training epoch measured
REPEATS, MIN_SAMPLE, PEAK_SECONDS = 5, 0.05, 0.2
SMOKE = {"ROWS": 128, "REPEATS": 1, "MIN_SAMPLE": 0.001, "PEAK_SECONDS": 0.05}


def _median(run, warmup: int = 2) -> float:
    return peers._median_seconds(run, min_sample=MIN_SAMPLE, repeats=REPEATS, warmup=warmup)


# ------------------------------------------------------------------------------------------- networks


def lenet(gc, x, n_out):
    h = gc.nn.conv2d(x, 6, 5, padding="valid", name="c1")  # 24x24x6
    h = gc.nn.max_pool2d(h, 2)  # 12x12x6
    h = gc.nn.conv2d(h, 16, 5, padding="valid", name="c2")  # 8x8x16
    h = gc.nn.max_pool2d(h, 2)  # 4x4x16
    h = gc.nn.dense(gc.nn.flatten(h), 120, "relu", name="f1")
    h = gc.nn.dense(h, 84, "relu", name="f2")
    return gc.nn.dense(h, n_out, name="out")


def cifar(gc, x, n_out):
    h = gc.nn.conv2d(x, 32, 3, name="c1")
    h = gc.nn.conv2d(h, 32, 3, name="c2")
    h = gc.nn.max_pool2d(h, 2)
    h = gc.nn.conv2d(h, 64, 3, name="c3")
    h = gc.nn.conv2d(h, 64, 3, name="c4")
    h = gc.nn.max_pool2d(h, 2)
    return gc.nn.dense(gc.nn.flatten(h), n_out, name="out")


NETS = {"lenet": (lenet, (28, 28, 1)), "cifar": (cifar, (32, 32, 3))}


def torch_net(torch, name):
    nn = torch.nn
    if name == "lenet":
        return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84),
                             nn.ReLU(), nn.Linear(84, 10))
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 64, 10))


def jax_net(jax, name):
    """(init(key), apply(params, x)) of the same network in NHWC with lax convolutions."""
    jnp, lax = jax.numpy, jax.lax

    def conv(x, w, b, pad):
        y = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + b)

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    if name == "lenet":
        convs, pad, dense = [(5, 1, 6), (5, 6, 16)], "VALID", [(256, 120), (120, 84), (84, 10)]
    else:
        convs, pad, dense = [(3, 3, 32), (3, 32, 32), (3, 32, 64), (3, 64, 64)], "SAME", [(4096, 10)]

    def init(seed):
        r = np.random.default_rng(seed)
        p = [(r.normal(0, np.sqrt(2 / (k * k * c)), (k, k, c, f)).astype(np.float32), np.zeros(f, np.float32))
             for k, c, f in convs]
        p += [(r.normal(0, np.sqrt(2 / i), (i, o)).astype(np.float32), np.zeros(o, np.float32)) for i, o in dense]
        return [(jnp.asarray(w), jnp.asarray(b)) for w, b in p]

    def apply(params, x):
        h = x
        for i, (w, b) in enumerate(params[:len(convs)]):
            h = conv(h, w, b, pad)
            if name == "lenet" or i % 2 == 1:
                h = pool(h)
        h = h.reshape(h.shape[0], -1)
        rest = params[len(convs):]
        for i, (w, b) in enumerate(rest):
            h = h @ w + b
            if i < len(rest) - 1:
                h = jax.nn.relu(h)
        return h

    return init, apply


# ------------------------------------------------------------------------------------------- measurements


def conv_layer(threads: int, quick: bool, notes: list[str], smoke: bool = False) -> dict:
    """GFLOP/s of the 56x56 64->64 3x3 conv, forward and forward + both gradients (batch 1 under --smoke); a peer
    that is not installed is left out, with a line in `notes`."""
    import graphc as gc

    n, hw, c = (1 if smoke else 8 if quick else 32), 56, 64
    flops = 2.0 * n * hw * hw * 9 * c * c
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, hw, hw, c)).astype(np.float32)
    W = (rng.standard_normal((3, 3, c, c)) * 0.05).astype(np.float32)
    G = rng.standard_normal((n, hw, hw, c)).astype(np.float32)
    out = {}
    x = gc.input("x", ("N", hw, hw, c))
    w = gc.input("w", (3, 3, c, c))
    g = gc.input("g", ("N", hw, hw, c))
    y = gc.conv2d(x, w, padding="same")
    fwd = gc.compile(y, threads=threads)
    # the forward output is an output too: a gradient alone would let dead-code elimination drop the forward
    # convolution (the cotangent g does not depend on it), and PyTorch's side below runs it
    both = gc.compile([y, *gc.grad(gc.sum(y * g), [x, w])], threads=threads)
    vals = {"x": X, "w": W, "g": G}

    def rep(f):
        def run(k):
            for _ in range(k):
                f()
        return run

    t = _median(rep(lambda: fwd(vals)))
    tb = _median(rep(lambda: both(vals)))
    out["graphc"] = (flops / t / 1e9, 3 * flops / tb / 1e9)
    try:  # a peer that is not installed (peers.PeerUnavailable) is noted, not fatal
        out["torch"] = _torch_conv(threads, X, W, G, flops, rep)
    except ImportError as e:
        notes.append(f"torch: {e}")
    try:
        jax = peers._import_jax(threads)
    except ImportError as e:
        notes.append(f"jax: {e}")
        jax = None
    if jax is not None:
        out["jax.jit"] = _jax_conv(jax, X, W, G, flops, rep)
    return out


def _torch_conv(threads: int, X, W, G, flops: float, rep) -> tuple[float, float]:
    torch = peers._import_torch(threads)
    xt = torch.tensor(X).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.tensor(W).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    gt = torch.tensor(G).permute(0, 3, 1, 2).contiguous()

    def tfwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, padding=1)

    def tboth():
        xt.grad = wt.grad = None
        torch.nn.functional.conv2d(xt, wt, padding=1).backward(gt)

    return flops / _median(rep(tfwd)) / 1e9, 3 * flops / _median(rep(tboth)) / 1e9


def _jax_conv(jax, X, W, G, flops: float, rep) -> tuple[float, float]:
    lax = jax.lax

    def jconv(a, b):
        return lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    jf = jax.jit(jconv)

    def jboth(a, b, gg):  # the forward output returned as well, so XLA cannot drop it
        yy, back = jax.vjp(jconv, a, b)
        return yy, back(gg)

    jb = jax.jit(jboth)
    xa, wa, ga = map(jax.numpy.asarray, (X, W, G))
    return (flops / _median(rep(lambda: jf(xa, wa).block_until_ready())) / 1e9,
            3 * flops / _median(rep(lambda: jax.block_until_ready(jb(xa, wa, ga)))) / 1e9)


STRIDED = {  # name: (N, H, W, C, K, F, stride, padding); the filter gradient alone too where C is an image's 3
    "7x7/2 stem 224x224 3->64 b4": (4, 224, 224, 3, 7, 64, 2, 3),
    "7x7/2 64x64 3->32 b16": (16, 64, 64, 3, 7, 32, 2, 3),
    "5x5/2 32x32 16->32 b16": (16, 32, 32, 16, 5, 32, 2, 2),
    "3x3/2 56x56 64->128 b8": (8, 56, 56, 64, 3, 128, 2, 1),
    "3x3/2 32x32 3->32 b16": (16, 32, 32, 3, 3, 32, 2, 1),
    "11x11/4 64x64 3->32 b8": (8, 64, 64, 3, 11, 32, 4, 2),
}
STRIDED_SMOKE = {"7x7/2 16x16 3->8 b1": (1, 16, 16, 3, 7, 8, 2, 3), "3x3/2 8x8 8->8 b1": (1, 8, 8, 8, 3, 8, 2, 1)}
GROUPED = {  # as STRIDED, and the groups
    "dw 3x3 56x56 64 b16": (16, 56, 56, 64, 3, 64, 1, 1, 64),
    "dw 3x3/2 56x56 128 b16": (16, 56, 56, 128, 3, 128, 2, 1, 128),
    "dw 3x3 28x28 32->64 b16": (16, 28, 28, 32, 3, 64, 1, 1, 32),
    "g2 3x3 28x28 64->64 b16": (16, 28, 28, 64, 3, 64, 1, 1, 2),
    "g32 3x3 14x14 128->128 b16": (16, 14, 14, 128, 3, 128, 1, 1, 32),
}
GROUPED_SMOKE = {"dw 3x3 8x8 8 b1": (1, 8, 8, 8, 3, 8, 1, 1, 8), "g2 3x3 8x8 8->8 b1": (1, 8, 8, 8, 3, 8, 1, 1, 2)}


def strided(smoke: bool = False, profile: bool = False, grouped: bool = False) -> None:
    """Strided convolution layers on 1 thread: loss = sum(relu(conv(x, w)) * R), its value and the gradients of x
    and w (the filter's alone for a 3-channel stem, whose input is data), graphc against PyTorch (NCHW, as it
    prefers), each case's contenders measured in alternating rounds; graphc's cold compile of the step. With
    `grouped`, the grouped and depthwise layers instead."""
    import graphc as gc

    peers.set_threads(1)
    try:
        torch = peers._import_torch(1)
    except ImportError as e:
        torch = None
        print(f"  (not measured: torch: {e})")
    what = "grouped" if grouped else "strided"
    print(f"# {what} convolutions, 1 thread; CPU {peers._cpu_model()}; medians of interleaved rounds (ms)")
    rng = np.random.default_rng(0)
    cases = (GROUPED_SMOKE if smoke else GROUPED) if grouped else (STRIDED_SMOKE if smoke else STRIDED)
    for name, (n, h, wd, c, k, f, s, p, *groups) in cases.items():
        g = groups[0] if groups else 1
        X = rng.standard_normal((n, h, wd, c)).astype(np.float32)
        W = (rng.standard_normal((k, k, c // g, f)) / np.sqrt(k * k * c // g)).astype(np.float32)
        x, w = gc.input("x", X.shape), gc.input("w", W.shape)
        y = gc.relu(gc.conv2d(x, w, stride=s, padding=p, groups=g))
        R = rng.standard_normal(tuple(int(d) for d in y.shape)).astype(np.float32)
        loss = gc.sum(y * gc.input("R", R.shape))
        vals = {"x": X, "w": W, "R": R}
        variants = {"fwd+dx+dW": [x, w]} | ({"fwd+dW": [w]} if c == 3 else {})
        runs, compiled = {}, {}
        for label, wrt in variants.items():
            outs = [loss, *gc.grad(loss, wrt)]
            before = os.environ.get("GRAPHC_CACHE_DIR")
            with tempfile.TemporaryDirectory(prefix="graphc-cold-") as cold_dir:
                os.environ["GRAPHC_CACHE_DIR"] = cold_dir
                try:  # the GEMM helpers compiled first (once per cache directory): the step's own compile timed
                    xs, ws = gc.input("xs", (1, 8, 8, c)), gc.input("ws", (3, 3, c, 4))
                    gc.compile(gc.grad(gc.sum(gc.conv2d(xs, ws, stride=2, padding=1) ** 2), [xs, ws]), threads=1)
                    t0 = time.perf_counter()
                    fn = gc.compile(outs, threads=1)
                    compiled[label] = time.perf_counter() - t0
                finally:
                    if before is None:
                        os.environ.pop("GRAPHC_CACHE_DIR")
                    else:
                        os.environ["GRAPHC_CACHE_DIR"] = before
            runs[f"graphc {label}"] = (lambda b: lambda: b())(fn.bind(vals))
            if profile:
                pf = gc.compile(outs, threads=1, profile=True)
                for _ in range(5):
                    pf(vals)
                pf.profile_report()
                for _ in range(10):
                    pf(vals)
                rows = sorted(pf.profile_report(), key=lambda r: -r[1])
                print(f"  {name} {label} kernels (ms a call): " +
                      ", ".join(f"{kn} {ks / 10 * 1e3:.2f}" for kn, ks, _ in rows[:8]))
            if torch is not None:
                tx = torch.tensor(X.transpose(0, 3, 1, 2).copy(), requires_grad=True)
                tw = torch.tensor(W.transpose(3, 2, 0, 1).copy(), requires_grad=True)
                tR = torch.tensor(R.transpose(0, 3, 1, 2).copy())
                targets = [tx, tw] if len(wrt) == 2 else [tw]

                def tstep(targets=targets, tx=tx, tw=tw, tR=tR, s=s, p=p, g=g):
                    t = (torch.relu(torch.nn.functional.conv2d(tx, tw, stride=s, padding=p, groups=g)) * tR).sum()
                    return torch.autograd.grad(t, targets)

                runs[f"torch {label}"] = tstep
        med, _ = peers.interleaved_medians(runs, min_sample=0.001 if smoke else 0.15, rounds=1 if smoke else 7,
                                           warmup=1)
        for label in variants:
            g = med[f"graphc {label}"]
            t = med.get(f"torch {label}")
            vs = f", torch {t * 1e3:.2f} ms: {g / t:.2f}x" if t else ""
            print(f"{name} {label}: graphc {g * 1e3:.2f} ms{vs}; compile cold {compiled[label]:.1f} s", flush=True)


def graphc_step(name: str, threads: int, batch: int, profile: bool) -> dict:
    import graphc as gc
    from graphc.nn.train import TrainConfig, Trainer

    build, grid = NETS[name]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, int(np.prod(grid)))).astype(np.float32)
    y = rng.integers(0, 10, ROWS).astype(np.int32)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.01, threads=threads)
    model = lambda images, n: build(gc, images, n)  # noqa: E731
    before = os.environ.get("GRAPHC_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="graphc-cold-") as cold_dir:
        os.environ["GRAPHC_CACHE_DIR"] = cold_dir  # cold: nothing cached
        try:
            t0 = time.perf_counter()
            tr = Trainer(model, "multiclass", X.shape[1], 10, cfg, log=lambda m: None, grid=grid)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            Trainer(model, "multiclass", X.shape[1], 10, cfg, log=lambda m: None, grid=grid)
            cached = time.perf_counter() - t0
        finally:
            if before is None:
                os.environ.pop("GRAPHC_CACHE_DIR")
            else:
                os.environ["GRAPHC_CACHE_DIR"] = before
    state = tr.init_state(0)
    scalars = tr.scalars(1)

    def run(k):
        for e in range(k):
            tr.epoch_fn.run_epoch(X, y, state, batch=batch, epoch=e + 1, seed=0, step0=0, scalars=scalars,
                                  threads=threads)

    t = _median(run, warmup=1)
    res = {"samples_per_s": ROWS / t, "compile_cold_s": cold, "compile_cached_s": cached}
    if profile:  # kernels of one forward+backward (the step's math, without the epoch driver)
        xin = tr.x
        grads = gc.grad(tr.data_loss, tr.params)
        fn = gc.compile([tr.data_loss, *grads], threads=threads, profile=True)
        vals = {**{p.name: state[p.name] for p in tr.params}, xin.name: X[:batch], "y": y[:batch]}
        for _ in range(20):
            fn(vals)
        rows = sorted(fn.profile_report(), key=lambda r: -r[1])
        total = sum(r[1] + r[2] for r in rows) or 1.0
        res["profile"] = [(k, round(100 * (s + b) / total, 1)) for k, s, b in rows[:8]]
    return res


def torch_step(name: str, threads: int, batch: int, compiled: bool) -> dict:
    torch = peers._import_torch(threads)
    torch.manual_seed(0)
    net = torch_net(torch, name)
    grid = NETS[name][1]
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((ROWS, grid[2], grid[0], grid[1])).astype(np.float32))
    y = torch.tensor(rng.integers(0, 10, ROWS).astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    if compiled:
        step = torch.compile(step)
        step(X[:batch], y[:batch])
    cold = time.perf_counter() - t0

    def run(k):
        for _ in range(k):
            for lo in range(0, ROWS, batch):
                step(X[lo:lo + batch], y[lo:lo + batch])

    return {"samples_per_s": ROWS / _median(run, warmup=1), "compile_cold_s": cold}


def jax_step(name: str, threads: int, batch: int) -> dict | None:
    jax = peers._import_jax(threads)
    if jax is None:
        return None
    jnp = jax.numpy
    init, apply = jax_net(jax, name)
    params = init(0)

    def loss(p, xb, yb):
        logits = apply(p, xb)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(xb.shape[0]), yb])

    @jax.jit
    def step(p, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        return jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)

    grid = NETS[name][1]
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((ROWS, *grid)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, ROWS).astype(np.int32))
    t0 = time.perf_counter()
    params = jax.block_until_ready(step(params, X[:batch], y[:batch]))
    cold = time.perf_counter() - t0
    box = [params]

    def run(k):
        for _ in range(k):
            for lo in range(0, ROWS, batch):
                box[0] = step(box[0], X[lo:lo + batch], y[lo:lo + batch])
        jax.block_until_ready(box[0])

    return {"samples_per_s": ROWS / _median(run, warmup=1), "compile_cold_s": cold}


def child(threads: int, quick: bool, profile: bool, compile_torch: bool, nets: list[str], smoke: bool = False) -> dict:
    peers.set_threads(threads)
    notes: list[str] = []
    res: dict = {"threads": threads, "peak_gflops_1core": peers.fma_peak(PEAK_SECONDS),
                 "conv": conv_layer(threads, quick, notes, smoke), "notes": notes}
    for name in nets:
        r = {"graphc": graphc_step(name, threads, 64, profile)}
        try:  # a peer that is not installed (peers.PeerUnavailable) is reported as unavailable, not fatal
            r["torch eager"] = torch_step(name, threads, 64, False)
            if compile_torch:
                try:
                    r["torch.compile"] = torch_step(name, threads, 64, True)
                except ImportError:
                    raise
                except Exception as e:  # noqa: BLE001 - a peer that cannot compile here is reported, not fatal
                    r["torch.compile"] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        except ImportError as e:
            r["torch"] = {"error": str(e)}
        try:
            j = jax_step(name, threads, 64)
        except ImportError as e:
            j = {"error": str(e)}
        if j is not None:
            r["jax.jit"] = j
        res[name] = r
    return res


def report(results: list[dict]) -> None:
    info = peers.describe()
    print(f"# {info.get('cpu', '')}; the machine is shared (medians of repeats; noisy)")
    for res in results:
        t, peak = res["threads"], res["peak_gflops_1core"]
        print(f"\n## {t} thread(s); FP32 FMA peak {peak:.0f} GFLOP/s per core ({peak * t:.0f} for {t})")
        for note in res.get("notes", []):
            print(f"  (not measured: {note})")
        print("3x3 conv 64->64, 56x56, 'same':   forward GFLOP/s (%peak)   fwd+dx+dW GFLOP/s (%peak)  "
          "[direct-convolution FLOPs / time]")
        g = res["conv"]["graphc"]
        for peer, (f, b) in res["conv"].items():
            print(f"  {peer:14s} {f:8.1f} ({100 * f / (peak * t):4.1f}%)        {b:8.1f} ({100 * b / (peak * t):4.1f}%)"
                  + ("" if peer == "graphc" else f"   graphc/peer: {g[0] / f:.2f}x, {g[1] / b:.2f}x"))
        for name in NETS:
            if name not in res:
                continue
            r = res[name]
            best = max((v["samples_per_s"] for k, v in r.items() if k != "graphc" and "samples_per_s" in v),
                       default=float("nan"))
            print(f"{name} training step, batch 64: samples/s   (graphc / fastest peer: "
                  f"{r['graphc']['samples_per_s'] / best:.2f}x)")
            for peer, v in r.items():
                if "error" in v:
                    print(f"  {peer:14s} unavailable: {v['error']}")
                    continue
                extra = f"  compile cold {v['compile_cold_s']:.1f} s"
                if "compile_cached_s" in v:
                    extra += f", cached {v['compile_cached_s']:.2f} s"
                print(f"  {peer:14s} {v['samples_per_s']:9.0f}{extra}")
            if "profile" in r["graphc"]:
                print("  graphc kernels (share of a forward+backward): " +
                      ", ".join(f"{k} {p}%" for k, p in r["graphc"]["profile"]))


def memory_child(which: str, name: str = "cifar", batch: int = 64) -> dict:
    """In a fresh process on 1 thread: the baseline after imports and the data (ROWS synthetic rows), then one
    training epoch over them (graphc: the native epoch, program from the cache; PyTorch eager: its SGD loop),
    then the peak."""
    grid = NETS[name][1]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, int(np.prod(grid)))).astype(np.float32)
    y = rng.integers(0, 10, ROWS).astype(np.int32)
    if which == "torch eager":
        torch = peers._import_torch(1)
        Xt, yt = torch.from_numpy(X.reshape(ROWS, *grid).transpose(0, 3, 1, 2).copy()), torch.from_numpy(y).long()
        base = peers.memory_marks()
        torch.manual_seed(0)
        net = torch_net(torch, name)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for lo in range(0, ROWS, batch):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(Xt[lo:lo + batch]), yt[lo:lo + batch]).backward()
            opt.step()
        return {"baseline": base, "after": peers.memory_marks()}
    import sympy  # noqa: F401 - building any graph imports it (symbolic dims): an import, in the baseline

    import graphc as gc
    from graphc.nn.train import TrainConfig, Trainer

    base = peers.memory_marks()
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.01, threads=1)
    tr = Trainer(lambda images, n: NETS[name][0](gc, images, n), "multiclass", X.shape[1], 10, cfg,
                 log=lambda m: None, grid=grid)
    state = tr.init_state(0)
    tr.epoch_fn.run_epoch(X, y, state, batch=batch, epoch=1, seed=0, step0=0, scalars=tr.scalars(1), threads=1)
    plan = tr.epoch_fn.memory_plan
    return {"baseline": base, "after": peers.memory_marks(), "from_cache": tr.epoch_fn.from_cache,
            "note": f"graphc arena {plan.arena_bytes / 2**20:.1f} MB ({plan.unshared_bytes / 2**20:.1f} MB unshared), "
                    f"GEMM workspace {plan.workspace_bytes / 2**20:.2f} MB, program from the cache: "
                    f"{tr.epoch_fn.from_cache}"}


def memory() -> None:
    """Peak memory of the CIFAR-shaped training (one epoch of ROWS rows, batch 64, 1 thread), each in a fresh
    process: graphc (the program cached by a first run) and PyTorch eager."""
    env = {**os.environ, **peers._thread_env(1)}
    rows = {}
    for which in ("graphc", "torch eager"):
        cmd = [sys.executable, __file__, "--memory-child", which]
        if which == "graphc":
            peers.memory_child(cmd, env)  # fills the compile cache
        rows[which] = peers.memory_child(cmd, env)
    print(f"# bench_conv --memory: CIFAR-shaped training, {ROWS} rows, batch 64, 1 thread, fresh process each; "
          f"CPU {peers._cpu_model()}")
    peers.print_memory_rows(rows)
    g, t = rows["graphc"], rows["torch eager"]
    r = g["train_mb"] / t["train_mb"]
    print(f"What decides: the training's own memory (peak - post-import baseline; torch's import alone is "
          f"{t['baseline']['rss_mb']:.0f} MB, "
          f"graphc's with sympy, which building any graph imports, {g['baseline']['rss_mb']:.0f} MB)\n"
          f"  graphc / PyTorch: {r:.2f}x  -> {'met' if r <= 1 else 'short'} (goal <= 1); by peak RSS "
          f"{g['after']['peak_rss_mb'] / t['after']['peak_rss_mb']:.2f}x")


def accuracy(seeds=range(8)) -> None:
    """examples/cnn_digits.py with its own options: test accuracy per seed and the mean (the issue asks >= 0.985),
    against the default MLP."""
    from graphc.fitting import fit

    example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "cnn_digits.py")
    for label, model in (("examples/cnn_digits.py", example), ("default MLP", None)):
        accs, secs = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            r = fit(model, "digits", seed=seed, progress=False, checkpoint_every=0)
            secs.append(time.perf_counter() - t0)
            accs.append(r.metrics["test_accuracy"])
        print(f"{label}: test accuracy {' '.join(f'{a:.4f}' for a in accs)}; mean {np.mean(accs):.4f}; "
              f"wall per run {np.median(secs):.1f} s (median)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="batch 8 for the conv layer")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of graphc's conv steps")
    ap.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile (slow to compile)")
    ap.add_argument("--accuracy", action="store_true", help="only: the example CNN's test accuracy over 8 seeds")
    ap.add_argument("--nets", default=",".join(NETS), help="training steps to measure ('' for the conv layer only)")
    ap.add_argument("--memory", action="store_true", help="only: peak memory of the CIFAR-shaped training")
    ap.add_argument("--memory-child", choices=["graphc", "torch eager"], help=argparse.SUPPRESS)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--strided", action="store_true", help="only: strided convolution layers against PyTorch")
    ap.add_argument("--grouped", action="store_true", help="only: grouped and depthwise layers against PyTorch")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every code path (tests): 1 thread, conv batch 1, 128 rows, one sample each")
    a = ap.parse_args(argv)
    if a.smoke:
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        globals().update(SMOKE)
        if a.threads == "1,2":
            a.threads = "1"
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child)))
        return 0
    if a.memory:
        memory()
        return 0
    if a.strided or a.grouped:
        strided(a.smoke, a.profile, grouped=a.grouped)
        return 0
    nets = [n for n in a.nets.split(",") if n]
    if set(nets) - set(NETS):
        ap.error(f"--nets: unknown {sorted(set(nets) - set(NETS))}; known: {', '.join(NETS)}")
    if a.accuracy:
        accuracy()
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.quick, a.profile, not a.no_torch_compile, nets, a.smoke)))
        return 0
    results = []
    for t in map(int, a.threads.split(",")):
        env = {**os.environ, **peers._thread_env(t), **peers._xla_env(t)}
        cmd = [sys.executable, __file__, "--child", str(t)] + ["--quick"] * a.quick + ["--profile"] * a.profile + \
            ["--no-torch-compile"] * a.no_torch_compile + ["--nets", a.nets] + ["--smoke"] * a.smoke
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    report(results)
    if a.smoke:
        strided(smoke=True)
        strided(smoke=True, grouped=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
