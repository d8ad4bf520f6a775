"""The peer side of graphc's benchmarks: numpy (OpenBLAS), PyTorch eager (CPU), JAX (``jax.jit``, CPU) and
scikit-learn's MLPClassifier/MLPRegressor, measured in the same process run as graphc so that a benchmark script
can print ratios taken under one machine state.

Import it with ``benchmarks/`` on ``sys.path`` (``from peers import ...``), or run it::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/peers.py            # quick self-check
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/peers.py figures    # the figures in README.md
    python benchmarks/peers.py rss numpy 784,256,128,10 60000 128 [--threads 1] [--epochs 1]   # peak RSS, MB
    python benchmarks/peers.py --smoke     # tests: the self-check and every figure once, at the smallest sizes

Every peer is imported lazily; a missing one raises :class:`PeerUnavailable` (an ``ImportError``) naming the
package and the install command. All timings are medians of repeats (the machine is shared: one busy neighbour
halves a 2-thread run).

The network and the math are the same for every peer:

* an MLP of ``sizes = (d_in, h1, ..., d_out)``: ``h = relu(h @ W + b)`` for the hidden layers, logits
  ``h @ W + b`` at the end; W is stored (fan_in, fan_out) as in graphc, float32 throughout;
* loss (``loss=`` of the epoch functions): ``"cross_entropy"`` (the default), the mean softmax cross-entropy over
  the batch with integer labels; or ``"mse"``, the mean over all elements of ``(pred - y)**2`` (no 1/2, as
  ``gc.nn.mse``) with real targets y of shape (N,) for one output or (N, d_out); relu'(0) = 0;
* one step = forward + loss + backward + plain SGD ``p -= lr * grad`` on every W and b (no momentum, no decay);
* the same initial parameters (:func:`init_params`: He-normal W, zero b, from a numpy seed) and, for epochs, the
  same shuffles (:func:`epoch_permutations`: one seeded numpy permutation per epoch, the last partial batch
  included), so numpy, torch and JAX train to the same parameters up to float32 rounding (the self-check
  verifies it). scikit-learn keeps its own initialisation (Glorot-uniform) and shuffles.

Threads. :func:`set_threads` pins every peer to n threads: torch (intra- and inter-op), numpy's BLAS and the
OpenMP runtimes through threadpoolctl, and XLA through the environment. XLA reads its thread count once, when
JAX's CPU backend starts (the first JAX computation after ``import jax``), so :func:`set_threads` must run before
that; the JAX functions here call it themselves before importing jax. What counts on jaxlib 0.10 (checked by
watching per-thread CPU time): the CPU client sizes its intra-op pool ("tf_XLAEigen" threads) from the ``NPROC``
environment variable, else from the CPU count; ``--xla_cpu_multi_thread_eigen=false`` alone leaves two threads
busy on a 2-vCPU machine, and ``intra_op_parallelism_threads`` is not an XLA flag (``--intra_op_parallelism_threads``
aborts with "Unknown flag in XLA_FLAGS"; without the dashes it is silently ignored). So we set ``NPROC=n`` and,
for n == 1, ``--xla_cpu_multi_thread_eigen=false`` in ``XLA_FLAGS``. When a JAX function is asked for a thread
count other than the one the running backend was started with, it runs itself in a fresh Python process
(same arguments, pickled through a temporary file) and returns that process's result.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "PeerUnavailable",
    "set_threads",
    "describe",
    "sgemm_gflops_numpy",
    "step_time_torch",
    "step_time_jax",
    "step_time_numpy",
    "epoch_jax_scan",
    "epoch_jax_step",
    "epoch_torch",
    "epoch_torch_compile",
    "epoch_numpy",
    "sklearn_mlp",
    "init_params",
    "mlp_evaluate",
    "mlp_mse",
    "epoch_permutations",
    "LOSSES",
    "synthetic_classification",
    "load_digits_split",
    "peak_rss_mb",
    "current_rss_mb",
    "peer_peak_rss",
    "others_cpu",
]

_INSTALL = "python -m pip install -e '.[bench]'"
_PACKAGES = {
    "torch": "torch (CPU wheel: pip install torch==2.13.0)",
    "jax": "jax and jaxlib (pip install jax jaxlib)",
    "sklearn": "scikit-learn (pip install scikit-learn)",
    "threadpoolctl": "threadpoolctl (pip install threadpoolctl)",
}


class PeerUnavailable(ImportError):
    """A peer (or a helper package) the benchmark needs is not installed."""


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise PeerUnavailable(
            f"benchmark peer {_PACKAGES.get(top, top)!s} is not importable ({e}); install the peers with {_INSTALL}"
        ) from e


# ---------------------------------------------------------------------------------------------------- threads

_STATE: dict = {"threads": None, "jax_threads": None, "limiter": None}


def _xla_env(n: int) -> dict[str, str]:
    """The environment that makes a JAX CPU backend started afterwards use n threads (see the module doc)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_multi_thread_eigen")]
    if n == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    env = {"NPROC": str(n), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS") or "cpu"}
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def _thread_env(n: int) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": str(n), "OPENBLAS_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
    env.update(_xla_env(n))
    return env


def _jax_backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume the worst
        return True


def _jax_threads_now() -> int | None:
    """Threads of the running JAX CPU backend (None when it has not started)."""
    if not _jax_backend_started():
        return None
    if _STATE["jax_threads"] is not None:
        return _STATE["jax_threads"]
    try:  # started by someone else: what the environment says now (best effort)
        return int(os.environ["NPROC"])
    except (KeyError, ValueError):
        return os.cpu_count()


def set_threads(n: int) -> None:
    """Pin every peer to n threads.

    * the environment (OMP/OPENBLAS/MKL_NUM_THREADS, NPROC, XLA_FLAGS): for libraries loaded later and for child
      processes; for JAX only if its CPU backend has not started yet (the JAX functions here then measure other
      thread counts in a fresh process; :func:`describe` shows the running backend's count as jax_threads);
    * threadpoolctl ``threadpool_limits(n)`` on every BLAS and OpenMP runtime loaded now (numpy's OpenBLAS,
      scipy's, torch's MKL and OpenMP): call again after importing a peer that brings its own (the functions here
      do);
    * torch, if imported: ``set_num_threads(n)`` and, where still allowed, ``set_num_interop_threads(n)``.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _STATE["threads"] = n
    now = _jax_threads_now()
    for k, v in _thread_env(n).items():
        if k in ("NPROC", "XLA_FLAGS") and now is not None:
            continue  # leave the description of the running backend alone
        os.environ[k] = v
    threadpoolctl = _require("threadpoolctl")
    _STATE["limiter"] = threadpoolctl.threadpool_limits(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        with contextlib.suppress(RuntimeError):  # only once, and only before inter-op work started
            torch.set_num_interop_threads(n)


def _import_torch(threads: int):
    torch = _require("torch")
    set_threads(threads)
    return torch


def _import_jax(threads: int):
    """jax configured for `threads`, or None when the running backend has another count (use a subprocess)."""
    now = _jax_threads_now()
    if now is not None and now != threads:
        return None
    if now is None:
        os.environ.update(_xla_env(threads))
    jax = _require("jax")
    set_threads(threads)
    if now is None:
        jax.devices()  # start the backend now, with this environment
        _STATE["jax_threads"] = threads
    return jax


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    return set()


def describe() -> dict:
    """Versions of the peers (read from package metadata: nothing heavy is imported), the BLAS/OpenMP libraries
    loaded now with their kernel and thread count (threadpoolctl), the CPU, thread settings and machine load."""
    flags = _cpu_flags()
    info: dict = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "sklearn": _version("scikit-learn"),
        "threadpoolctl": _version("threadpoolctl"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "threads_pinned": _STATE["threads"],
        "jax_threads": _jax_threads_now(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "env": {
            k: os.environ.get(k)
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NPROC",
                      "XLA_FLAGS")
        },
    }
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer",
                                   "prefix", "filepath")}
            for p in threadpoolctl.threadpool_info()
        ]
        blas = [p for p in info["threadpools"] if p["internal_api"] == "openblas"]
        info["openblas_kernel"] = blas[0]["architecture"] if blas else None
    except ImportError:
        info["threadpools"] = None
        info["openblas_kernel"] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = (torch.get_num_threads(), torch.get_num_interop_threads())
        info["torch_mkl"] = bool(torch.backends.mkl.is_available())
    return info


# ---------------------------------------------------------------------------------------------------- timing


def _median_seconds(run: Callable[[int], None], min_sample: float = 0.05, repeats: int = 9, warmup: int = 2) -> float:
    """Median over `repeats` samples of the seconds one call takes; `run(n)` makes n calls (and synchronizes).
    Each sample runs enough calls to last about `min_sample` seconds."""
    run(max(1, warmup))
    t0 = time.perf_counter()
    run(1)
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, math.ceil(min_sample / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(inner)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def interleaved_medians(runs: dict[str, Callable[[], None]], min_sample: float = 0.2, rounds: int = 7,
                        warmup: int = 2, pause: float = 0.02) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Seconds per call of each of `runs` (label -> a call that synchronizes), measured in rounds: every round
    takes one sample of each, in turn, so a change in the machine's speed (these VMs drift by 20-40% within
    minutes) lands on every contender alike instead of on whoever happened to run in the slow minute. Returns
    the median per label and the samples per round (for per-round ratios). `pause` lets other runtimes' spinning
    worker threads (OpenMP, XLA) go idle before the next contender's sample."""
    inner: dict[str, int] = {}
    for label, fn in runs.items():
        for _ in range(max(1, warmup)):
            fn()
        t0 = time.perf_counter()
        fn()
        inner[label] = max(1, math.ceil(min_sample / max(time.perf_counter() - t0, 1e-7)))
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(rounds):
        for label, fn in runs.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            for _ in range(inner[label]):
                fn()
            samples[label].append((time.perf_counter() - t0) / inner[label])
    return {label: statistics.median(s) for label, s in samples.items()}, samples


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


@contextlib.contextmanager
def others_cpu() -> Iterator[dict]:
    """Context manager measuring how many CPUs *other* processes kept busy, on average, while the block ran
    (/proc/stat busy time minus the CPU time of this process and of its children reaped meanwhile, over the wall
    time): ``with others_cpu() as load: ...``
    then ``load["others_cpu"]``. 0.0 on an idle machine; 1.0 means a whole vCPU was taken from us. Kernel ticks
    are 10 ms: only blocks of half a second or more give a meaningful figure."""
    out: dict = {}
    hz = os.sysconf("SC_CLK_TCK")
    b0, c0, t0 = _busy_jiffies(), os.times(), time.perf_counter()
    try:
        yield out
    finally:
        b1, c1, t1 = _busy_jiffies(), os.times(), time.perf_counter()
        mine = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user", "children_system"))
        out["wall_seconds"] = t1 - t0
        others = ((b1 - b0) / hz - mine) / max(t1 - t0, 1e-9)
        out["others_cpu"] = round(min(max(0.0, others), float(os.cpu_count() or 1)), 2)


# ---------------------------------------------------------------------------------------------------- data, params


def init_params(sizes: Sequence[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W, b), ...] float32: W (fan_in, fan_out) He-normal (std sqrt(2/fan_in)), b zero. Shared by all peers."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        W = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        params.append((W, np.zeros(fan_out, np.float32)))
    return params


def mlp_evaluate(params, X: np.ndarray, y: np.ndarray, chunk: int = 8192) -> tuple[float, float]:
    """(mean softmax cross-entropy, accuracy) of the MLP `params` ([(W, b), ...], numpy) on X, y; float32 math
    in chunks, float64 sums. Use it on any peer's returned params (or graphc's) for test figures."""
    X = np.asarray(X, np.float32)
    y = np.asarray(y)
    loss = 0.0
    correct = 0
    for i in range(0, len(X), chunk):
        h = X[i : i + chunk]
        for W, b in params[:-1]:
            h = np.maximum(h @ W + b, 0)
        z = h @ params[-1][0] + params[-1][1]
        yy = y[i : i + chunk]
        m = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
        loss += float(np.sum(lse.astype(np.float64) - z[np.arange(len(z)), yy]))
        correct += int(np.sum(z.argmax(axis=1) == yy))
    return loss / len(X), correct / len(X)


def mlp_mse(params, X: np.ndarray, y: np.ndarray, chunk: int = 8192) -> float:
    """Mean over all elements of (pred - y)^2 of the MLP `params` on X (y (N,) for one output, or (N, d_out));
    float32 math in chunks, float64 sums."""
    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.float32).reshape(len(X), -1)
    total = 0.0
    for i in range(0, len(X), chunk):
        h = X[i : i + chunk]
        for W, b in params[:-1]:
            h = np.maximum(h @ W + b, 0)
        d = h @ params[-1][0] + params[-1][1] - y[i : i + chunk]
        total += float(np.sum(np.square(d), dtype=np.float64))
    return total / max(y.size, 1)


def epoch_permutations(n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """The shuffle of each epoch: ``default_rng(seed).permutation(n)`` drawn `epochs` times, as int64."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        yield rng.permutation(n)


def synthetic_classification(rows: int, sizes: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (rows, sizes[0]) standard normal float32 and int64 labels in [0, sizes[-1]) from a random linear teacher
    (learnable, roughly balanced). Built in float32 chunks so that no float64 copy inflates peak RSS."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, sizes[0]), dtype=np.float32)
    teacher = rng.standard_normal((sizes[0], sizes[-1]), dtype=np.float32)
    y = np.empty(rows, np.int64)
    for i in range(0, rows, 8192):
        y[i : i + 8192] = (X[i : i + 8192] @ teacher).argmax(axis=1)
    return X, y


def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    """sklearn's 8x8 digits (1797 x 64, 10 classes), shuffled with `seed`, split, standardized with the training
    mean and std (std 0 -> 1): X_train, y_train, X_test, y_test (float32, int64)."""
    datasets = _require("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(X))
    X, y = X[perm], y[perm].astype(np.int64)
    n_test = int(round(len(X) * test_fraction))
    Xtr, Xte, ytr, yte = X[n_test:], X[:n_test], y[n_test:], y[:n_test]
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    sd[sd == 0] = 1.0
    return ((Xtr - mu) / sd).astype(np.float32), ytr, ((Xte - mu) / sd).astype(np.float32), yte


def _fixed_batch(sizes: Sequence[int], batch: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], batch)


LOSSES = ("cross_entropy", "mse")


def _targets(y, sizes, loss: str) -> np.ndarray:
    """The targets as every peer takes them: int64 labels (N,) for cross-entropy; float32 (N, d_out) for mse."""
    if loss == "cross_entropy":
        return np.asarray(y, np.int64)
    if loss == "mse":
        y = np.asarray(y, np.float32)
        if y.ndim == 1 and sizes[-1] == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != sizes[-1]:
            raise ValueError(f"mse targets must be (N,) for one output or (N, {sizes[-1]}), got shape {y.shape}")
        return np.ascontiguousarray(y)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _check_data(X, y, sizes, batch, epochs, loss: str = "cross_entropy"):
    if batch < 1 or epochs < 1:
        raise ValueError(f"batch and epochs must be >= 1, got {batch} and {epochs}")
    if X.ndim != 2 or X.shape[1] != sizes[0]:
        raise ValueError(f"X has shape {X.shape}, the network takes {sizes[0]} features")
    if loss == "mse":
        if len(y) != len(X) or not np.all(np.isfinite(y)):
            raise ValueError(f"y must hold {len(X)} rows of finite targets")
    elif len(y) != len(X) or (len(y) and (y.min() < 0 or y.max() >= sizes[-1])):
        raise ValueError(f"y must hold {len(X)} labels in [0, {sizes[-1]})")


# ---------------------------------------------------------------------------------------------------- sgemm


def sgemm_gflops_numpy(m: int, n: int, k: int, ta: bool = False, tb: bool = False, repeats: int = 9) -> float:
    """Median GFLOP/s of numpy's float32 ``C(m,n) = op(A) @ op(B)`` into a preallocated C, at the current thread
    pinning. With ta, A is stored (k, m) and passed as ``a.T`` (likewise B stored (n, k) for tb), so numpy hands
    BLAS the transposed operand (sgemm with 'T') instead of copying it."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    A = a.T if ta else a
    B = b.T if tb else b
    c = np.empty((m, n), np.float32)

    def run(calls: int) -> None:
        for _ in range(calls):
            np.matmul(A, B, out=c)

    return 2.0 * m * n * k / _median_seconds(run, repeats=repeats) / 1e9


# ---------------------------------------------------------------------------------------------------- numpy MLP


class _NumpyMLP:
    """Hand-written forward/backward with numpy matmuls into buffers cached per batch size; in-place SGD."""

    def __init__(self, params, lr: float, loss: str = "cross_entropy"):
        self.loss = loss
        self.W = [np.array(W, np.float32) for W, _ in params]
        self.b = [np.array(b, np.float32) for _, b in params]
        self.lr = np.float32(lr)
        self.sizes = [self.W[0].shape[0]] + [W.shape[1] for W in self.W]
        self.gW = [np.empty_like(W) for W in self.W]
        self.gb = [np.empty_like(b) for b in self.b]
        self._bufs: dict[int, tuple] = {}

    def _buffers(self, B: int):
        if B not in self._bufs:
            z = [np.empty((B, s), np.float32) for s in self.sizes[1:]]  # layer outputs (post-relu), logits last
            d = [np.empty((B, s), np.float32) for s in self.sizes[1:-1]]  # deltas into hidden outputs
            mask = [np.empty((B, s), bool) for s in self.sizes[1:-1]]
            self._bufs[B] = (z, d, mask, np.arange(B))
        return self._bufs[B]

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        B = len(x)
        z, d, mask, rows = self._buffers(B)
        L = len(self.W)
        acts = [x]
        for i in range(L):
            np.matmul(acts[i], self.W[i], out=z[i])
            z[i] += self.b[i]
            if i < L - 1:
                np.maximum(z[i], 0, out=z[i])
            acts.append(z[i])
        p = z[-1]  # outputs -> dLoss/doutputs, in place
        if self.loss == "mse":  # mean over all elements of (p - y)^2: d/dp = 2 (p - y) / p.size
            p -= y
            loss = float(np.mean(np.square(p)))
            p *= np.float32(2.0 / p.size)
        else:  # logits -> probabilities -> dLoss/dlogits
            p -= p.max(axis=1, keepdims=True)
            zy = p[rows, y]
            np.exp(p, out=p)
            s = p.sum(axis=1, keepdims=True)
            loss = float(np.mean(np.log(s[:, 0]) - zy))
            p /= s
            p[rows, y] -= 1
            p *= np.float32(1.0 / B)
        delta = p
        for i in range(L - 1, -1, -1):
            np.matmul(acts[i].T, delta, out=self.gW[i])
            np.sum(delta, axis=0, out=self.gb[i])
            if i > 0:  # delta into acts[i] (the relu output of layer i-1), before W[i] changes
                nxt = d[i - 1]
                np.matmul(delta, self.W[i].T, out=nxt)
                np.greater(acts[i], 0, out=mask[i - 1])
                np.multiply(nxt, mask[i - 1], out=nxt)
                delta = nxt
            self.gW[i] *= self.lr
            self.W[i] -= self.gW[i]
            self.gb[i] *= self.lr
            self.b[i] -= self.gb[i]
        return loss

    def params(self):
        return [(W.copy(), b.copy()) for W, b in zip(self.W, self.b, strict=True)]


def step_time_numpy(sizes: Sequence[int], batch: int, threads: int = 1, lr: float = 0.01, repeats: int = 9) -> float:
    """Median seconds of one numpy training step (forward, softmax CE, backward, in-place SGD) on a fixed batch."""
    set_threads(threads)
    net = _NumpyMLP(init_params(sizes), lr)
    x, y = _fixed_batch(sizes, batch)

    def run(calls: int) -> None:
        for _ in range(calls):
            net.step(x, y)

    return _median_seconds(run, repeats=repeats, warmup=3)


def _result(peer, N, epoch_seconds, losses, params, compile_seconds, threads, batch, X, y, evaluate,
            loss: str = "cross_entropy") -> dict:
    med = statistics.median(epoch_seconds)
    out = {
        "peer": peer,
        "threads": threads,
        "batch": batch,
        "rows": N,
        "batches_per_epoch": math.ceil(N / batch),
        "epochs": len(epoch_seconds),
        "samples_per_second": N / med,
        "samples_per_second_total": N * len(epoch_seconds) / sum(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "compile_seconds": compile_seconds,
        "epoch_losses": losses,
        "last_epoch_loss": losses[-1],
        "params": params,
    }
    if evaluate and loss == "mse":
        out["final_train_loss"] = mlp_mse(params, X, y)
    elif evaluate:
        out["final_train_loss"], out["train_accuracy"] = mlp_evaluate(params, X, y)
    return out


def epoch_numpy(X, y, sizes, batch, lr, epochs, seed=0, threads: int = 1, evaluate: bool = True,
                   loss: str = "cross_entropy") -> dict:
    """Mini-batch SGD with numpy for `epochs` epochs (see :func:`epoch_torch` for the result)."""
    set_threads(threads)
    X = np.ascontiguousarray(X, np.float32)
    y = _targets(y, sizes, loss)
    _check_data(X, y, sizes, batch, epochs, loss)
    N = len(X)
    net = _NumpyMLP(init_params(sizes, seed), lr, loss)
    secs, losses = [], []
    for perm in epoch_permutations(N, epochs, seed):
        t0 = time.perf_counter()
        total = 0.0
        for i in range(0, N, batch):
            idx = perm[i : i + batch]
            total += net.step(X[idx], y[idx]) * len(idx)
        secs.append(time.perf_counter() - t0)
        losses.append(total / N)
    return _result("numpy", N, secs, losses, net.params(), 0.0, threads, batch, X, y, evaluate, loss)


# ---------------------------------------------------------------------------------------------------- torch


def _torch_model(torch, params):
    layers = []
    for i, (W, b) in enumerate(params):
        lin = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _torch_params(model) -> list[tuple[np.ndarray, np.ndarray]]:
    lins = [m for m in model if hasattr(m, "weight")]
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in lins]


def _torch_stepper(torch, model, lr, loss: str = "cross_entropy"):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    ce = torch.nn.functional.mse_loss if loss == "mse" else torch.nn.functional.cross_entropy

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = ce(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def step_time_torch(sizes: Sequence[int], batch: int, threads: int = 1, lr: float = 0.01, repeats: int = 9) -> float:
    """Median seconds of one PyTorch eager step (nn.Linear/ReLU, F.cross_entropy, backward, optim.SGD)."""
    torch = _import_torch(threads)
    model = _torch_model(torch, init_params(sizes))
    step = _torch_stepper(torch, model, lr)
    xn, yn = _fixed_batch(sizes, batch)
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)

    def run(calls: int) -> None:
        for _ in range(calls):
            step(x, y)

    return _median_seconds(run, repeats=repeats, warmup=3)


def epoch_torch(X, y, sizes, batch, lr, epochs, seed=0, threads: int = 1, evaluate: bool = True,
                   loss: str = "cross_entropy") -> dict:
    """Mini-batch SGD in PyTorch eager for `epochs` epochs on the shared shuffles.

    Returns a dict: samples_per_second (rows / median epoch seconds; samples_per_second_total is rows*epochs /
    total seconds), epoch_seconds, compile_seconds (0 for eager peers), epoch_losses (the mean over the rows of
    the loss each batch had when it was stepped on), last_epoch_loss, params ([(W, b), ...] as numpy, W
    (fan_in, fan_out)), and when `evaluate`: final_train_loss and train_accuracy of the final params on X
    (numpy, :func:`mlp_evaluate`, outside the timing; for ``loss="mse"`` final_train_loss only, :func:`mlp_mse`).
    `loss`: "cross_entropy" (y integer labels) or "mse" (y real, (N,) for one output or (N, d_out)); see the
    module docstring."""
    torch = _import_torch(threads)
    X = np.ascontiguousarray(X, np.float32)
    y = _targets(y, sizes, loss)
    _check_data(X, y, sizes, batch, epochs, loss)
    N = len(X)
    model = _torch_model(torch, init_params(sizes, seed))
    step = _torch_stepper(torch, model, lr, loss)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    secs, losses = [], []
    for perm in epoch_permutations(N, epochs, seed):
        t0 = time.perf_counter()
        p = torch.from_numpy(perm)
        total = torch.zeros((), dtype=torch.float32)
        for i in range(0, N, batch):
            idx = p[i : i + batch]
            total += step(Xt.index_select(0, idx), yt.index_select(0, idx)) * len(idx)
        mean_loss = float(total) / N
        secs.append(time.perf_counter() - t0)
        losses.append(mean_loss)
    return _result("torch", N, secs, losses, _torch_params(model), 0.0, threads, batch, X, y, evaluate, loss)


def epoch_torch_compile(X, y, sizes, batch, lr, epochs, seed=0, threads: int = 1, evaluate: bool = True,
                           loss: str = "cross_entropy") -> dict:
    """As :func:`epoch_torch`, with the step (forward, loss, backward, SGD update) compiled by ``torch.compile``
    (inductor, ``dynamic=False``): one compiled graph per batch shape, i.e. the full batches and, when rows %
    batch != 0, the last partial one. Both are compiled before the timing (warm-up steps on copies of the
    parameters, reported as compile_seconds); epochs then run the compiled step from Python."""
    torch = _import_torch(threads)
    X = np.ascontiguousarray(X, np.float32)
    y = _targets(y, sizes, loss)
    _check_data(X, y, sizes, batch, epochs, loss)
    N = len(X)
    params0 = init_params(sizes, seed)
    Ws = [torch.from_numpy(np.array(W, np.float32)).requires_grad_(False) for W, _ in params0]
    bs = [torch.from_numpy(np.array(b, np.float32)).requires_grad_(False) for _, b in params0]

    lossf = torch.nn.functional.mse_loss if loss == "mse" else torch.nn.functional.cross_entropy

    def step(Ws, bs, x, t):
        ps = [p.detach().requires_grad_(True) for p in (*Ws, *bs)]
        h = x
        L = len(Ws)
        for i in range(L):
            h = h @ ps[i] + ps[L + i]
            if i < L - 1:
                h = torch.relu(h)
        value = lossf(h, t)
        grads = torch.autograd.grad(value, ps)
        with torch.no_grad():
            for k, p in enumerate((*Ws, *bs)):
                p.sub_(lr * grads[k])
        return value.detach()

    cstep = torch.compile(step, dynamic=False)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    t0 = time.perf_counter()
    for B in sorted({batch, N % batch} - {0}):  # compile each batch shape on throwaway copies
        cstep([W.clone() for W in Ws], [b.clone() for b in bs], Xt[:B].clone(), yt[:B].clone())
    compile_seconds = time.perf_counter() - t0
    secs, losses = [], []
    for perm in epoch_permutations(N, epochs, seed):
        t0 = time.perf_counter()
        p = torch.from_numpy(perm)
        total = torch.zeros((), dtype=torch.float32)
        for i in range(0, N, batch):
            idx = p[i : i + batch]
            total += cstep(Ws, bs, Xt.index_select(0, idx), yt.index_select(0, idx)) * len(idx)
        losses.append(float(total) / N)
        secs.append(time.perf_counter() - t0)
    params = [(W.numpy().copy(), b.numpy().copy()) for W, b in zip(Ws, bs, strict=True)]
    return _result("torch.compile", N, secs, losses, params, compile_seconds, threads, batch, X, y, evaluate, loss)


# ---------------------------------------------------------------------------------------------------- JAX


def _in_subprocess(fn_name: str, kwargs: dict, threads: int):
    """Run ``fn_name(**kwargs)`` of this module in a fresh Python pinned to `threads`; return its result."""
    with tempfile.TemporaryDirectory(prefix="graphc-peers-") as d:
        inp, out = os.path.join(d, "in.pkl"), os.path.join(d, "out.pkl")
        with open(inp, "wb") as f:
            pickle.dump(kwargs, f, protocol=pickle.HIGHEST_PROTOCOL)
        env = dict(os.environ)
        env.update(_thread_env(threads))
        cmd = [sys.executable, os.path.abspath(__file__), "_call", fn_name, inp, out, str(threads)]
        subprocess.run(cmd, env=env, check=True)
        with open(out, "rb") as f:
            return pickle.load(f)


def _jax_fns(jax, lr: float, loss: str = "cross_entropy"):
    jnp = jax.numpy

    def forward(params, x):
        h = x
        for W, b in params[:-1]:
            h = jax.nn.relu(h @ W + b)
        W, b = params[-1]
        return h @ W + b

    def ce(params, x, y):  # per-row softmax cross-entropy
        z = forward(params, x)
        return jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]

    def se(params, x, y):  # elementwise squared error
        return jnp.square(forward(params, x) - y)

    per = se if loss == "mse" else ce

    def sgd_step(params, x, y):
        value, g = jax.value_and_grad(lambda p: jnp.mean(per(p, x, y)))(params)
        return jax.tree.map(lambda p, gp: p - lr * gp, params, g), value

    return forward, sgd_step


def _jax_params(jax, params):
    return jax.device_put([(W, b) for W, b in params])


def step_time_jax(sizes: Sequence[int], batch: int, threads: int = 1, lr: float = 0.01, repeats: int = 9) -> float:
    """Median seconds of one ``jax.jit``-compiled step (params a pytree of [(W, b), ...], donated); compile
    excluded (warm-up); each timed sample ends with block_until_ready. Runs in a fresh process when the JAX
    backend of this one was started with another thread count."""
    jax = _import_jax(threads)
    if jax is None:
        return _in_subprocess("step_time_jax", dict(sizes=sizes, batch=batch, threads=threads, lr=lr,
                                                    repeats=repeats), threads)
    _, sgd_step = _jax_fns(jax, lr)
    step = jax.jit(sgd_step, donate_argnums=0)
    params = _jax_params(jax, init_params(sizes))
    xn, yn = _fixed_batch(sizes, batch)
    x, y = jax.device_put(xn), jax.device_put(yn.astype(np.int32))

    def run(calls: int) -> None:
        nonlocal params
        loss = None
        for _ in range(calls):
            params, loss = step(params, x, y)
        jax.block_until_ready((params, loss))

    return _median_seconds(run, repeats=repeats, warmup=3)


def epoch_jax_scan(X, y, sizes, batch, lr, epochs, seed=0, threads: int = 1, evaluate: bool = True,
                      loss: str = "cross_entropy") -> dict:
    """Mini-batch SGD in JAX, each epoch one call of a ``jax.jit`` (params donated) that runs ``lax.scan`` over
    the full batches and then, when ``rows % batch`` is not 0, one more step on the partial last batch (a
    second, statically shaped step in the same jitted function: the same math as the eager peers, no padding
    and no wasted rows). X and y go to the device once; each epoch passes the shuffle's row indices (int32,
    reshaped (full_batches, batch) plus the remainder) and the scan body gathers its batch from X, so no
    shuffled copy of X is made. The compile (``jit(...).lower(...).compile()``) is timed apart as
    compile_seconds; epoch times end with block_until_ready. Result as for :func:`epoch_torch`. Runs in a fresh
    process when the JAX backend of this one was started with another thread count."""
    jax = _import_jax(threads)
    if jax is None:
        kw = dict(X=X, y=y, sizes=sizes, batch=batch, lr=lr, epochs=epochs, seed=seed, threads=threads,
                  evaluate=evaluate, loss=loss)
        return _in_subprocess("epoch_jax_scan", kw, threads)
    jnp = jax.numpy
    X = np.ascontiguousarray(X, np.float32)
    y = _targets(y, sizes, loss)
    _check_data(X, y, sizes, batch, epochs, loss)
    N = len(X)
    full, rem = divmod(N, batch)
    _, sgd_step = _jax_fns(jax, lr, loss)

    def epoch(params, Xd, yd, idx_full, idx_rem):
        def body(p, idx):
            xb = jnp.take(Xd, idx, axis=0, mode="clip")
            yb = jnp.take(yd, idx, axis=0, mode="clip")
            return sgd_step(p, xb, yb)

        total = jnp.zeros((), jnp.float32)
        if full:
            params, batch_losses = jax.lax.scan(body, params, idx_full)
            total = jnp.sum(batch_losses) * batch
        if rem:
            params, loss = body(params, idx_rem)
            total = total + loss * rem
        return params, total / N

    fn = jax.jit(epoch, donate_argnums=0)
    params = _jax_params(jax, init_params(sizes, seed))
    Xd, yd = jax.device_put(X), jax.device_put(y if loss == "mse" else y.astype(np.int32))  # jnp.asarray: 2 copies

    def split(perm):
        perm = perm.astype(np.int32)
        return jax.device_put(perm[: full * batch].reshape(full, batch)), jax.device_put(perm[full * batch :])

    perms = list(epoch_permutations(N, epochs, seed))
    t0 = time.perf_counter()
    compiled = fn.lower(params, Xd, yd, *split(perms[0])).compile()
    compile_seconds = time.perf_counter() - t0
    secs, losses = [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
        for perm in perms:
            t0 = time.perf_counter()
            params, value = compiled(params, Xd, yd, *split(perm))
            jax.block_until_ready((params, value))
            secs.append(time.perf_counter() - t0)
            losses.append(float(value))
    out_params = [(np.asarray(W), np.asarray(b)) for W, b in params]
    return _result("jax", N, secs, losses, out_params, compile_seconds, threads, batch, X, y, evaluate, loss)


def epoch_jax_step(X, y, sizes, batch, lr, epochs, seed=0, threads: int = 1, evaluate: bool = True,
                      loss: str = "cross_entropy") -> dict:
    """Mini-batch SGD with one ``jax.jit`` step per batch (params donated), driven from Python: the batch is
    gathered on the host (numpy fancy indexing) and passed to the step, which returns the new params and the loss.
    The step is compiled for the full and the partial batch shape before the timing (compile_seconds); each
    epoch ends with block_until_ready. Result as for :func:`epoch_torch`."""
    jax = _import_jax(threads)
    if jax is None:
        kw = dict(X=X, y=y, sizes=sizes, batch=batch, lr=lr, epochs=epochs, seed=seed, threads=threads,
                  evaluate=evaluate, loss=loss)
        return _in_subprocess("epoch_jax_step", kw, threads)
    X = np.ascontiguousarray(X, np.float32)
    y = _targets(y, sizes, loss)
    _check_data(X, y, sizes, batch, epochs, loss)
    N = len(X)
    y32 = y if loss == "mse" else y.astype(np.int32)
    _, sgd_step = _jax_fns(jax, lr, loss)
    step = jax.jit(sgd_step, donate_argnums=0)
    params = _jax_params(jax, init_params(sizes, seed))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
        for B in sorted({batch, N % batch} - {0}):
            p2 = _jax_params(jax, init_params(sizes, seed))
            jax.block_until_ready(step(p2, X[:B], y32[:B]))
        compile_seconds = time.perf_counter() - t0
        secs, losses = [], []
        for perm in epoch_permutations(N, epochs, seed):
            t0 = time.perf_counter()
            batch_losses = []
            for i in range(0, N, batch):
                idx = perm[i : i + batch]
                params, value = step(params, X[idx], y32[idx])
                batch_losses.append((value, len(idx)))
            jax.block_until_ready(params)
            secs.append(time.perf_counter() - t0)
            losses.append(sum(float(v) * n for v, n in batch_losses) / N)
    out_params = [(np.asarray(W), np.asarray(b)) for W, b in params]
    return _result("jax step", N, secs, losses, out_params, compile_seconds, threads, batch, X, y, evaluate, loss)


# ---------------------------------------------------------------------------------------------------- sklearn


def sklearn_mlp(X_train, y_train, X_test, y_test, task: str = "classification", hidden: Sequence[int] = (256, 128),
                epochs: int = 10, batch: int = 128, lr: float = 0.01, seed: int = 0, alpha: float = 0.0,
                threads: int = 1) -> dict:
    """scikit-learn's MLPClassifier (task "classification") or MLPRegressor ("regression"), ReLU, plain SGD
    (solver="sgd", constant learning_rate_init=lr, momentum=0, no Nesterov, L2 `alpha`, batch_size=batch,
    shuffle=True with random_state=seed), made to run exactly `epochs` epochs (max_iter=epochs, tol=0,
    n_iter_no_change=epochs+1, no early stopping; the ConvergenceWarning at the end is silenced). Its own
    Glorot-uniform init and shuffles; loss is mean log-loss (classification) or half the mean squared error
    (regression). Returns test_accuracy or test_mse, samples_per_second (rows*epochs / fit seconds),
    wall_seconds (the fit), n_iter, final_train_loss (sklearn's loss_ of the last epoch) and the model."""
    nn = _require("sklearn.neural_network")
    exceptions = _require("sklearn.exceptions")
    set_threads(threads)  # again: scipy/sklearn may have loaded their own BLAS or OpenMP
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    cls = nn.MLPClassifier if task == "classification" else nn.MLPRegressor
    model = cls(hidden_layer_sizes=tuple(hidden), activation="relu", solver="sgd", learning_rate="constant",
                learning_rate_init=lr, momentum=0.0, nesterovs_momentum=False, alpha=alpha, batch_size=batch,
                max_iter=epochs, shuffle=True, random_state=seed, tol=0.0, n_iter_no_change=epochs + 1,
                early_stopping=False)
    X_train = np.asarray(X_train, np.float32)
    X_test = np.asarray(X_test, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(X_train, y_train)
        wall = time.perf_counter() - t0
    out = {
        "peer": "sklearn",
        "task": task,
        "threads": threads,
        "batch": batch,
        "rows": len(X_train),
        "n_iter": model.n_iter_,
        "wall_seconds": wall,
        "samples_per_second": len(X_train) * model.n_iter_ / wall,
        "final_train_loss": float(model.loss_),
        "model": model,
    }
    pred = model.predict(X_test)
    if task == "classification":
        out["test_accuracy"] = float(np.mean(pred == np.asarray(y_test)))
    else:
        out["test_mse"] = float(np.mean((np.asarray(pred, np.float64) - np.asarray(y_test, np.float64)) ** 2))
    return out


# ---------------------------------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB. On Linux this is VmHWM from /proc/self/status: unlike
    getrusage's ru_maxrss, it starts afresh at exec, so a child started by a big parent does not inherit the
    parent's peak. (Not graphc.fitting's: importing graphc in a peer's process would add its own memory to
    the peer's figure.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def current_rss_mb() -> float:
    """Resident set size of this process now, MB (/proc/self/status VmRSS; the peak where that is missing)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return peak_rss_mb()


def fma_peak(seconds: float = 0.2) -> float:
    """The measured FP32 FMA peak of one core, GFLOP/s (graphc's peak kernel from bench_gemm, best of 3 samples
    of `seconds`): what bench_conv and bench_rnn report shares of."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_gemm import fma_peak_kernel

    from graphc.codegen.target import host_target

    sample = fma_peak_kernel(host_target())
    return max(sample(seconds) for _ in range(3))


def memory_marks() -> dict:
    """This process's resident set now and its peak so far, MB: a memory child records them once after its
    imports and data (the baseline) and once after training; the training's own memory is peak - baseline rss."""
    return {"rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb()}


def memory_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run a memory child (a fresh Python process, so no earlier allocation counts) and return the JSON object
    it prints last: {"baseline": memory_marks(), "after": memory_marks(), ...}, with "train_mb" added (peak
    after training minus the baseline's resident set)."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"memory child {' '.join(cmd[1:])} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["train_mb"] = r["after"]["peak_rss_mb"] - r["baseline"]["rss_mb"]
    return r


def print_memory_rows(rows: dict[str, dict]) -> None:
    """One line per memory child: peak RSS, the post-import baseline, and the training's own memory."""
    for label, r in rows.items():
        extra = f"; {r['note']}" if r.get("note") else ""
        print(f"  {label:28s} peak RSS {r['after']['peak_rss_mb']:7.1f} MB   baseline after imports + data "
              f"{r['baseline']['rss_mb']:7.1f} MB   training's own (peak - baseline) {r['train_mb']:7.1f} MB{extra}")


_EPOCH = {"numpy": "epoch_numpy", "torch": "epoch_torch", "jax": "epoch_jax_scan"}
_RSS_PEERS = ("none", "numpy", "torch", "jax", "sklearn")


def _rss_run(peer: str, sizes, rows: int, batch: int, threads: int, epochs: int, lr: float, seed: int) -> dict:
    """In this (fresh) process: import the peer, make the synthetic data, train, report RSS figures in MB."""
    if peer not in _RSS_PEERS:
        raise ValueError(f"peer must be one of {_RSS_PEERS}, got {peer!r}")
    set_threads(threads)
    if peer == "torch":
        _import_torch(threads)
    elif peer == "jax":
        _import_jax(threads)
    elif peer == "sklearn":
        _require("sklearn.neural_network")
    X, y = synthetic_classification(rows, sizes, seed)
    before_peak, before_now = peak_rss_mb(), current_rss_mb()
    t0 = time.perf_counter()
    if peer in _EPOCH:
        globals()[_EPOCH[peer]](X, y, sizes, batch, lr, epochs, seed, threads=threads, evaluate=False)
    elif peer == "sklearn":
        sklearn_mlp(X, y, X[:1000], y[:1000], "classification", sizes[1:-1], epochs, batch, lr, seed,
                    threads=threads)
    return {
        "peer": peer,
        "sizes": list(sizes),
        "rows": rows,
        "batch": batch,
        "threads": threads,
        "epochs": epochs,
        "data_mb": (X.nbytes + y.nbytes) / 2**20,
        "rss_before_training_mb": before_now,
        "peak_before_training_mb": before_peak,
        "peak_rss_mb": peak_rss_mb(),
        "train_seconds": time.perf_counter() - t0,
    }


def peer_peak_rss(peer: str, sizes: Sequence[int], rows: int, batch: int, threads: int = 1, epochs: int = 1,
                  lr: float = 0.01, seed: int = 0) -> dict:
    """Peak RSS of one peer's training run on synthetic data (:func:`synthetic_classification`), measured in a
    fresh Python process (``peers.py rss ... --json``), so that no other library or earlier run counts. peer
    "none" measures the baseline: Python, numpy and the data alone. Returns the dict the child prints:
    peak_rss_mb, rss_before_training_mb (after imports and data), data_mb, train_seconds, ..."""
    cmd = [sys.executable, os.path.abspath(__file__), "rss", peer, ",".join(map(str, sizes)), str(rows), str(batch),
           "--threads", str(threads), "--epochs", str(epochs), "--lr", str(lr), "--seed", str(seed), "--json"]
    env = dict(os.environ)
    env.update(_thread_env(threads))
    res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- CLI


def _fmt_describe(info: dict) -> str:
    lines = [
        f"cpu: {info['cpu']} ({info['cpus_usable']} usable of {info['cpu_count']}; {' '.join(info['isa'])}); "
        f"load average {info['loadavg']}",
        f"python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, jax {info['jax']} "
        f"(jaxlib {info['jaxlib']}), scikit-learn {info['sklearn']}, threadpoolctl {info['threadpoolctl']}",
        f"threads pinned: {info['threads_pinned']}, jax backend threads: {info['jax_threads']}, "
        f"env: {info['env']}",
    ]
    for p in info.get("threadpools") or []:
        lines.append(f"  {p['internal_api']} {p['version']} kernel={p['architecture']} threads={p['num_threads']} "
                     f"{os.path.basename(p['filepath'] or '')}")
    return "\n".join(lines)


def _available(peer: str) -> bool:
    """Whether the peer imports (found is not enough: a broken or blocked install is found and fails)."""
    mod = {"torch": "torch", "jax": "jax", "sklearn": "sklearn"}[peer]
    try:
        importlib.import_module(mod)
    except ImportError:
        return False
    return True


def _selfcheck(smoke: bool = False) -> int:
    set_threads(1)
    print(_fmt_describe(describe()))
    ok = True
    repeats = 1 if smoke else 5
    g = sgemm_gflops_numpy(256, 256, 256, repeats=repeats)
    print(f"numpy sgemm 256^3: {g:.1f} GFLOP/s")
    sizes, batch = (64, 32, 10), 32
    for name, fn in (("numpy", step_time_numpy), ("torch", step_time_torch), ("jax", step_time_jax)):
        if name != "numpy" and not _available(name):
            print(f"{name}: not installed ({_INSTALL})")
            continue
        print(f"step {name} {sizes} batch {batch}: {fn(sizes, batch, 1, repeats=repeats) * 1e6:.1f} us")
    if not _available("sklearn"):
        print(f"sklearn: not installed ({_INSTALL}); digits checks skipped")
        return 0
    Xtr, ytr, Xte, yte = load_digits_split()
    sizes = (64, 64, 10)
    res = {}
    for name in ("numpy", "torch", "jax"):
        if name != "numpy" and not _available(name):
            continue
        r = globals()[_EPOCH[name]](Xtr, ytr, sizes, 32, 0.05, 3, seed=0, threads=1)
        res[name] = r
        acc = mlp_evaluate(r["params"], Xte, yte)[1]
        print(f"digits {name}: {r['samples_per_second']:.0f} samples/s, epoch losses "
              f"{[round(x, 4) for x in r['epoch_losses']]}, test accuracy {acc:.3f}")
        ok &= r["epoch_losses"][-1] < r["epoch_losses"][0] and acc > 0.9
    for name, r in res.items():  # same init, shuffles and math: same parameters up to float32 rounding
        diff = max(float(np.max(np.abs(a - b))) for pa, pb in zip(r["params"], res["numpy"]["params"], strict=True)
                   for a, b in zip(pa, pb, strict=True))
        print(f"max |params({name}) - params(numpy)| after 3 epochs: {diff:.2e}")
        ok &= diff < 1e-3
    # mean squared error on a synthetic regression (y = tanh of a random projection): the same agreement
    rng = np.random.default_rng(0)
    Xr = rng.standard_normal((300, 10), dtype=np.float32)
    yr = np.tanh(Xr @ rng.standard_normal(10, dtype=np.float32) / 3).astype(np.float32)
    reg = {}
    for name in ("numpy", "torch", "jax"):
        if name != "numpy" and not _available(name):
            continue
        r = reg[name] = globals()[_EPOCH[name]](Xr, yr, (10, 32, 1), 16, 0.05, 3, seed=0, threads=1, loss="mse")
        diff = max(float(np.max(np.abs(a - b))) for pa, pb in zip(r["params"], reg["numpy"]["params"], strict=True)
                   for a, b in zip(pa, pb, strict=True))
        print(f"mse {name}: epoch losses {[round(x, 4) for x in r['epoch_losses']]}, final train mse "
              f"{r['final_train_loss']:.4f}, max |params - numpy's| {diff:.2e}")
        ok &= r["epoch_losses"][-1] < r["epoch_losses"][0] and diff < 1e-4
        ok &= abs(r["final_train_loss"] - reg["numpy"]["final_train_loss"]) < 1e-4
    s = sklearn_mlp(Xtr, ytr, Xte, yte, "classification", (64,), 3, 32, 0.05)
    print(f"digits sklearn: {s['samples_per_second']:.0f} samples/s, n_iter {s['n_iter']}, "
          f"test accuracy {s['test_accuracy']:.3f}")
    ok &= s["n_iter"] == 3 and s["test_accuracy"] > 0.9
    print("self-check", "ok" if ok else "FAILED")
    return 0 if ok else 1


def _skipped(name: str, e: ImportError) -> None:
    print(f"  {name:6s} not measured: {e}", flush=True)


def _figures(sections: set[str], smoke: bool = False) -> None:
    """The measurements reported in benchmarks/README.md (each section well under a minute); `smoke`: each once,
    at the smallest sizes, 1 thread. A peer that is not installed is skipped, with a line saying so."""

    def load() -> str:
        return "loadavg " + " ".join(f"{x:.2f}" for x in os.getloadavg())

    threads = (1,) if smoke else (1, 2)
    repeats = 1 if smoke else 9
    big = (64, 32, 10) if smoke else (784, 256, 128, 10)
    set_threads(1)
    print(_fmt_describe(describe()), flush=True)
    if "sgemm" in sections:
        print(f"\n[sgemm numpy, 1 thread] {load()}")
        cases = ((256, 256, 256, 0, 0), (512, 512, 512, 0, 0), (1024, 1024, 1024, 0, 0),
                 (128, 256, 784, 0, 0), (784, 256, 128, 1, 0), (128, 784, 256, 0, 1))
        for m, n, k, ta, tb in cases[:1] + cases[4:] if smoke else cases:
            with others_cpu() as oc:
                g = sgemm_gflops_numpy(m, n, k, bool(ta), bool(tb), repeats=repeats)
            print(f"  {m}x{k}{'(T)' if ta else ''} . {k}x{n}{'(T)' if tb else ''}: {g:7.1f} GFLOP/s   "
                  f"(others used {oc['others_cpu']} CPUs)", flush=True)
    if "step" in sections:
        sizes, batch = big, 16 if smoke else 128
        print(f"\n[step {'-'.join(map(str, sizes))} batch {batch}] {load()}")
        for t in threads:
            for name, fn in (("torch", step_time_torch), ("jax", step_time_jax), ("numpy", step_time_numpy)):
                try:
                    with others_cpu() as oc:
                        s = fn(sizes, batch, t, repeats=repeats)
                except ImportError as e:
                    _skipped(name, e)
                    continue
                print(f"  {name:6s} {t} thread(s): {s * 1e3:7.3f} ms/step   (others used {oc['others_cpu']} CPUs)",
                      flush=True)
    if "digits" in sections:
        Xtr, ytr, Xte, yte = load_digits_split()
        sizes, epochs, lr = (64, 64, 10), 2 if smoke else 30, 0.05
        print(f"\n[digits {len(Xtr)} train rows, {'-'.join(map(str, sizes))} ReLU, {epochs} epochs, lr {lr}, "
              f"1 thread] {load()}")
        for batch in (128,) if smoke else (32, 128):
            for name in ("jax", "torch", "numpy"):
                try:
                    with others_cpu() as oc:
                        r = globals()[_EPOCH[name]](Xtr, ytr, sizes, batch, lr, epochs, seed=0, threads=1)
                except ImportError as e:
                    _skipped(name, e)
                    continue
                acc = mlp_evaluate(r["params"], Xte, yte)[1]
                print(f"  batch {batch:3d} {name:6s}: {r['samples_per_second']:10.0f} samples/s  compile "
                      f"{r['compile_seconds']:.2f}s  train loss {r['final_train_loss']:.4f}  test acc {acc:.3f}   "
                      f"(others used {oc['others_cpu']} CPUs)", flush=True)
            with others_cpu() as oc:
                s = sklearn_mlp(Xtr, ytr, Xte, yte, "classification", sizes[1:-1], epochs, batch, lr, threads=1)
            print(f"  batch {batch:3d} sklearn: {s['samples_per_second']:10.0f} samples/s  (whole fit, {s['n_iter']}"
                  f" epochs)  train loss {s['final_train_loss']:.4f}  test acc {s['test_accuracy']:.3f}   "
                  f"(others used {oc['others_cpu']} CPUs)", flush=True)
    if "synthetic" in sections:
        sizes, rows, batch, epochs, lr = big, 2000 if smoke else 60000, 128, 1 if smoke else 3, 0.01
        X, y = synthetic_classification(rows, sizes)
        print(f"\n[synthetic {rows} x {sizes[0]}, {'-'.join(map(str, sizes))}, batch {batch}, {epochs} epochs "
              f"(median epoch)] {load()}")
        for t in threads:
            for name in ("jax", "torch", "numpy"):
                try:
                    with others_cpu() as oc:
                        r = globals()[_EPOCH[name]](X, y, sizes, batch, lr, epochs, seed=0, threads=t)
                except ImportError as e:
                    _skipped(name, e)
                    continue
                print(f"  {name:6s} {t} thread(s): {r['samples_per_second']:8.0f} samples/s  compile "
                      f"{r['compile_seconds']:.2f}s  train loss {r['final_train_loss']:.4f}  "
                      f"acc {r['train_accuracy']:.3f}   (others used {oc['others_cpu']} CPUs)", flush=True)
    if "rss" in sections:
        sizes, rows, batch = big, 2000 if smoke else 60000, 128
        print(f"\n[peak RSS, fresh process each, 1 epoch synthetic {rows} x {sizes[0]}, batch {batch}, 1 thread] "
              f"{load()}")
        for name in _RSS_PEERS:
            if name in ("torch", "jax", "sklearn") and not _available(name):
                print(f"  {name:7s}: not installed ({_INSTALL})", flush=True)
                continue
            r = peer_peak_rss(name, sizes, rows, batch, threads=1, epochs=1)
            print(f"  {name:7s}: peak {r['peak_rss_mb']:7.1f} MB   after imports+data "
                  f"{r['rss_before_training_mb']:7.1f} MB   (data {r['data_mb']:.1f} MB)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_call"]:  # internal: python peers.py _call FN IN OUT THREADS
        _, fn, inp, out, threads = argv
        set_threads(int(threads))
        with open(inp, "rb") as f:
            kwargs = pickle.load(f)
        result = globals()[fn](**kwargs)
        with open(out, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every code path (tests): the self-check, then every figure at the smallest "
                         "sizes, 1 thread (with a subcommand: that one, at the smallest sizes)")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("check", help="quick self-check (the default)")
    sub.add_parser("describe", help="versions, BLAS kernels, CPU (JSON)")
    f = sub.add_parser("figures", help="the figures reported in README.md")
    f.add_argument("sections", nargs="*", default=["sgemm", "step", "digits", "synthetic", "rss"])
    r = sub.add_parser("rss", help="peak RSS (MB) of one peer's training run, in this fresh process")
    r.add_argument("peer", choices=_RSS_PEERS)
    r.add_argument("sizes", help="layer sizes, e.g. 784,256,128,10")
    r.add_argument("rows", type=int)
    r.add_argument("batch", type=int)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--epochs", type=int, default=1)
    r.add_argument("--lr", type=float, default=0.01)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    args = ap.parse_args(argv)
    if args.cmd is None and args.smoke:
        rc = _selfcheck(smoke=True)
        _figures({"sgemm", "step", "digits", "synthetic", "rss"}, smoke=True)
        return rc
    if args.cmd in (None, "check"):
        return _selfcheck(args.smoke)
    if args.cmd == "describe":
        print(json.dumps(describe(), indent=1))
        return 0
    if args.cmd == "figures":
        _figures(set(args.sections), args.smoke)
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(","))
    res = _rss_run(args.peer, sizes, args.rows, args.batch, args.threads, args.epochs, args.lr, args.seed)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['peak_rss_mb']:.1f}")
        print(f"# {args.peer} {args.sizes} rows={args.rows} batch={args.batch} threads={args.threads} "
              f"epochs={args.epochs}: peak RSS {res['peak_rss_mb']:.1f} MB (after imports and data "
              f"{res['rss_before_training_mb']:.1f} MB; data {res['data_mb']:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
