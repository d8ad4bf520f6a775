"""A compiled training epoch: the step program (loss, gradients, in-place updates) plus the native driver that
shuffles, slices mini-batches and runs every step without returning to Python.

The caller owns the state arrays (parameters and optimizer state); they are updated in place."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from graphc.codegen import epoch as drv
from graphc.errors import GraphcError, InputError
from graphc.ir.node import Node
from graphc.runtime.buffers import aligned_bytes, aligned_empty
from graphc.runtime.jit import CompiledFunction, check_threads


@dataclass
class EpochStats:
    loss_sum: float  # sum over steps of (mean batch loss x batch size)
    steps: int
    samples: int
    nonfinite_step: int | None  # the step whose loss was not finite (the epoch stopped there)
    permutation: np.ndarray  # the sample order this epoch used

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


class EpochFunction(CompiledFunction):
    """`loss` over a batch of `x` and `y`, with `updates` applied in place after each step.

    Scalar inputs named `step` (the global step, from 1) and `rng_key` (dropout) are fed by the driver; any
    other scalar inputs (e.g. `lr`) are given per epoch."""

    def __init__(self, loss: Node, updates: Mapping, *, x: Node, y: Node | None, training: bool,
                 threads: int | None = None, target=None, cache: bool = True, params: list[Node] = ()):
        if loss.shape != () or loss.dtype != "float32":
            raise GraphcError("the training loss must be a float32 scalar")
        self._x, self._y = x, y
        self._params = list(params)
        for t, what in ((x, "x"), (y, "y")):
            if t is not None and not all(isinstance(d, int) for d in t.shape[1:]):
                raise GraphcError(f"training: the {what} input must have known dims after the batch dim")
        super().__init__([loss], updates=updates, training=training, threads=threads, target=target,
                         cache=cache)
        self._epoch = self._engine.function("graphc_epoch", ctypes.c_int32, *[ctypes.c_void_p] * 3,
                                             ctypes.c_int32)
        self._init = self._engine.function("graphc_init", None, ctypes.c_void_p, ctypes.c_int64) \
            if self._params else None

    def _init_specs(self) -> list:
        from graphc.codegen.init import spec_for

        slot = {id(leaf): buf.index for leaf, buf in zip(self.signature.inputs, self.program.inputs,
                                                          strict=True)}
        return [spec_for(slot[id(p)], p.name, p.shape, p.meta.get("init", "zeros")) for p in self._params]

    def init_params(self, state: Mapping[str, np.ndarray], seed: int) -> None:
        """Fill the parameters in `state` (float32, in place) with their initializers, natively: the same
        values a standalone training binary computes for this seed."""
        table = np.zeros(self._nbuf, dtype=np.uintp)
        for p, spec in zip(self._params, self._init_specs(), strict=True):
            a = state[p.name]
            if a.dtype != np.float32 or a.shape != p.shape or not a.flags.c_contiguous:
                raise InputError(f"init: {p.name!r} must be a contiguous float32 {p.type_str} array")
            table[spec.slot] = a.ctypes.data
        self._init(table.ctypes.data, int(np.int64(np.uint64(seed % 2**64).view(np.int64))))

    def _spec(self) -> drv.EpochSpec:
        prog = self.program
        n_sym = self._x.shape[0]
        leaves = {leaf.name: leaf for leaf in self.signature.inputs}
        step = leaves.get("step")
        return drv.EpochSpec(
            n_dim=list(prog.symbols).index(n_sym),
            x_row_bytes=_row_bytes(self._x),
            y_row_bytes=_row_bytes(self._y) if self._y is not None else 0,
            step_is_f64=step is not None and step.dtype == "float64",
            has_step=step is not None,
            has_key=self.training and "rng_key" in leaves,
        )

    def variant(self) -> str:
        return f"epoch:{self._spec()}:{self._init_specs() if self._params else ''}"

    def extras(self) -> tuple:
        from graphc.codegen.init import emit_init

        out = (drv.emit_epoch(self._spec()),)
        return out + (emit_init(self._init_specs()),) if self._params else out

    def run_epoch(self, X: np.ndarray, Y: np.ndarray | None, state: Mapping[str, np.ndarray], *, batch: int,
                  epoch: int, seed: int, step0: int, scalars: Mapping[str, float] | None = None,
                  shuffle: bool = True, drop_last: bool = False, max_steps: int = -1,
                  threads: int | None = None) -> EpochStats:
        """One epoch over (X, Y). `state` holds every parameter and optimizer-state array by name (updated in
        place); `scalars` the other scalar inputs (e.g. the learning rate)."""
        spec = self._spec()
        n = int(X.shape[0])
        if n < 1:
            raise InputError("training: the dataset is empty")
        if not isinstance(batch, int) or batch < 1:
            raise InputError(f"training: batch size must be a positive int, got {batch!r}")
        batch = min(batch, n)
        self._check_data(X, self._x, "x")
        if self._y is not None:
            if Y is None or Y.shape[0] != n:
                raise InputError("training: targets must have one row per sample")
            self._check_data(Y, self._y, "y")
        nthreads = check_threads(threads, "training") or self.threads
        env = [batch if s == self._x.shape[0] else 0 for s in self._symbols]
        self._ensure_plan(env, nthreads)
        table = self._base_table.copy()
        keep: list[np.ndarray] = []  # everything the native code points at stays alive during the call
        copy_back: list[tuple[np.ndarray, np.ndarray]] = []  # (caller's state array, the aligned one trained)

        def bind(leaf_name: str, arr: np.ndarray) -> None:
            spec_ = self._by_key.get(leaf_name)
            if spec_ is None:
                return
            table[spec_[1]] = arr.ctypes.data
            keep.append(arr)

        xb = aligned_bytes(batch * spec.x_row_bytes).view(self._x.dtype)
        yb = aligned_bytes(max(batch * spec.y_row_bytes, 8))
        bind(self._x.name, xb)
        if self._y is not None:
            bind(self._y.name, yb)
        step_buf = np.zeros(1, np.float64 if spec.step_is_f64 else np.float32)
        key_buf = np.zeros(1, np.int64)
        bind("step", step_buf)
        bind("rng_key", key_buf)
        scalars = dict(scalars or {})
        for leaf in self.signature.inputs:
            name = leaf.name
            if name in (self._x.name, getattr(self._y, "name", None), "step", "rng_key"):
                continue
            if not self.training and name == "rng_key":
                continue
            if name in scalars:
                arr = np.asarray(scalars[name], dtype=leaf.dtype).reshape(leaf.shape)
            elif name in state:
                arr = state[name]
                if (not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(leaf.dtype) or arr.shape != leaf.shape
                        or not arr.flags.c_contiguous or not arr.flags.writeable):
                    raise InputError(f"training: state {name!r} must be a writable contiguous {leaf.type_str} "
                                     f"array, got {getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}")
                if arr.ctypes.data % 64:
                    # numpy gives large arrays 16-byte alignment: a matrix read in place by a GEMM, or written by
                    # its fused update, would then split vector loads and stores across cache lines (measured
                    # 5-7% of a 784-256-128-10 epoch). Train on an aligned copy, copied back after the epoch.
                    aligned = aligned_empty(arr.shape, arr.dtype)
                    aligned[...] = arr
                    copy_back.append((arr, aligned))
                    arr = aligned
            else:
                raise InputError(f"training: no value for the input {name!r} ({leaf.type_str})")
            bind(name, arr)
        loss_buf = np.zeros(1, np.float32)
        table[self.program.outputs[0].index] = loss_buf.ctypes.data
        perm = np.empty(n, np.int64)
        dims = np.zeros(max(len(self._symbols), 1), np.int64)
        dims[spec.n_dim] = batch
        Xc = np.ascontiguousarray(X)
        Yc = np.ascontiguousarray(Y) if Y is not None else np.zeros(1, np.uint8)
        ctx = np.zeros(drv.CTX_SLOTS, np.int64)
        ctx[drv.TABLE] = table.ctypes.data
        ctx[drv.DIMS] = dims.ctypes.data
        ctx[drv.WS] = self._ws.ctypes.data
        ctx[drv.X], ctx[drv.Y] = Xc.ctypes.data, Yc.ctypes.data
        ctx[drv.NSAMP], ctx[drv.BATCH], ctx[drv.EPOCH] = n, batch, epoch
        ctx[drv.SEED] = np.int64(np.uint64(seed & (2**64 - 1)).view(np.int64)) if seed >= 2**63 else seed
        ctx[drv.PERM] = perm.ctypes.data
        ctx[drv.STEP0], ctx[drv.MAXSTEPS] = step0, max_steps
        ctx[drv.XB], ctx[drv.YB] = xb.ctypes.data, yb.ctypes.data
        ctx[drv.STEPBUF], ctx[drv.KEYBUF], ctx[drv.LOSSBUF] = step_buf.ctypes.data, key_buf.ctypes.data, \
            loss_buf.ctypes.data
        ctx[drv.SHUFFLE], ctx[drv.DROP_LAST] = int(shuffle), int(drop_last)
        with self._lock:
            self._epoch(ctx.ctypes.data, None, None, nthreads)
        for arr, aligned in copy_back:
            arr[...] = aligned
        steps = int(ctx[drv.STEPS_DONE])
        bad = int(ctx[drv.BAD_STEP]) if ctx[drv.STATUS] else None
        samples = min(steps * batch, n) if bad is None else steps * batch
        return EpochStats(float(ctx[drv.LOSS_SUM:drv.LOSS_SUM + 1].view(np.float64)[0]), steps, samples, bad, perm)

    def _check_data(self, A: np.ndarray, leaf: Node, what: str) -> None:
        if not isinstance(A, np.ndarray):
            raise InputError(f"training: {what} must be a numpy array")
        if A.dtype != np.dtype(leaf.dtype):
            raise InputError(f"training: {what} is {A.dtype}, the model's input {leaf.name!r} is {leaf.dtype}")
        if A.shape[1:] != tuple(leaf.shape[1:]):
            raise InputError(f"training: {what} rows have shape {A.shape[1:]}, the model's input {leaf.name!r} "
                             f"expects {tuple(leaf.shape[1:])}")


def _row_bytes(t: Node) -> int:
    n = 1
    for d in t.shape[1:]:
        n *= int(d)
    return n * np.dtype(t.dtype).itemsize
