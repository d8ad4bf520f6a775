"""A compiled training epoch: the step program (loss, gradients, in-place updates) plus the native driver that
shuffles, slices mini-batches and runs every step without returning to Python.

The caller owns the state arrays (parameters and optimizer state); they are updated in place."""

from __future__ import annotations

import ctypes
import difflib
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from graphc.codegen import epoch_abi as drv
from graphc.errors import GraphcError, InputError, NumericalError
from graphc.ir.node import Node, needs_training_mode, topo_order
from graphc.runtime.buffers import aligned_bytes, aligned_empty
from graphc.runtime.jit import CompiledFunction, check_threads, data_address
from graphc.runtime.reference import check_value


@dataclass
class EpochStats:
    """What one epoch did. `losses[s]` is step s's mean batch loss; `mean_loss` their mean over the samples."""

    loss_sum: float  # sum over steps of (mean batch loss x batch size)
    steps: int
    samples: int
    nonfinite_step: int | None  # the step whose loss was not finite (the epoch stopped there)
    permutation: np.ndarray  # the sample order this epoch used
    losses: np.ndarray | None = None  # float32, one per step done
    # on_nonfinite="stop": the first trained array holding a non-finite value after the epoch (an update that
    # overflowed while the losses stayed finite, or the failing step's), else None
    nonfinite_param: str | None = None

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.samples if self.samples else float("nan")  # no step: no mean (numpy's nan)


# One thread when a step's matrix products are too small to split (barriers would cost more than they save): the
# rule gc.fit uses (fewer than ~4 MFLOP of GEMM per step).
SMALL_STEP_FLOPS = 4e6


def _steps(k: int) -> str:
    return f"{k} step" if k == 1 else f"{k} steps"


STEP_DTYPES = ("float32", "float64", "int32", "int64")  # what the driver writes the step number as


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 20))
    except Exception:  # too hard to decide (interleaved strides): taken as overlapping
        return True


def _check_trained_apart(trained: Mapping[str, np.ndarray], state: Mapping, X, Y) -> None:
    """A state array trained in place must share no memory with another state array or the data: one array for
    two parameters trains as neither, and a parameter inside X changes the rows still to be read (a compiled
    call refuses the same, `_check_written_apart`)."""
    others = [(k, f"state {k!r}", a) for k, a in state.items()] + [(None, "X", X), (None, "Y", Y)]
    for name, arr in trained.items():
        for key, what, other in others:
            if key == name or not isinstance(other, np.ndarray):
                continue
            if np.may_share_memory(arr, other) and _overlap(arr, other):
                raise InputError(f"training: state {name!r}, trained in place, shares memory with {what}: the "
                                 "update would change it while it is read; pass a copy (np.array(...)) for one of "
                                 "them")


class EpochFunction(CompiledFunction):
    """A training step compiled with a native epoch driver: one call runs a whole epoch.

        ef = gc.EpochFunction(loss, updates={W: W - lr * dW, ...}, x=x, y=y)
        stats = ef.run_epoch(X, Y, state, batch=32, scalars={"lr": 0.1})

    `loss` is a float32 scalar over a batch of the inputs `x` (rows of `X`) and `y` (rows of `Y`, or None);
    `updates` maps parameters (and optimizer-state inputs) to their new values, written in place after each
    step. Scalar inputs named `step` (the global step, from 1) and `rng_key` (dropout) are fed by the driver;
    any other scalar inputs (a learning rate) are given per epoch in `scalars`. `training` (default: whether the
    graph has dropout, a random draw or a batch norm) keeps dropout and normalizes with the batch's statistics;
    `threads` fixes the thread count (default: chosen per batch size as `gc.fit` chooses it); `params` lists
    parameters that `init_params` fills natively; `profile=True` counts time per kernel over the epochs
    (`profile_report()`)."""

    def __init__(self, loss: Node, updates: Mapping | None = None, *, x: Node, y: Node | None = None,
                 training: bool | None = None, threads: int | None = None, target=None, cache: bool = True,
                 params: list[Node] = (), profile: bool = False):
        if not isinstance(loss, Node) or loss.shape != () or loss.dtype != "float32":
            raise GraphcError(f"EpochFunction: the training loss must be a float32 scalar tensor, got {loss!r} "
                              "(the native epoch driver trains float32 models; a float64 one trains through "
                              "gc.compile([loss], updates=...) called once per batch)")
        if not isinstance(x, Node) or x.op.name != "input" or not x.shape:
            raise GraphcError(f"EpochFunction: x must be an input whose first dim is the batch, got {x!r}")
        if isinstance(x.shape[0], int):
            raise GraphcError(f"EpochFunction: x's batch dim must be symbolic (e.g. gc.input('x', ('N', ...))), "
                              f"got {x.type_str}")
        if y is not None and (not isinstance(y, Node) or y.op.name != "input" or not y.shape
                              or y.shape[0] != x.shape[0]):
            raise GraphcError(f"EpochFunction: y must be an input with the batch dim of x ({x.shape[0]}) first, "
                              f"got {y!r}")
        self._x, self._y = x, y
        self._params = list(params)
        for t, what in ((x, "x"), (y, "y")):
            if t is not None and not all(isinstance(d, int) for d in t.shape[1:]):
                raise GraphcError(f"training: the {what} input must have known dims after the batch dim")
        if updates is not None and not isinstance(updates, Mapping):
            raise GraphcError(f"EpochFunction: updates must be a dict {{parameter or input: its new value}}, got "
                              f"{type(updates).__name__}")
        order = topo_order([loss, *(updates or {}).values()])
        inputs = {n.name: n for n in order if n.op.name == "input"}
        if training is None:
            # dropout, a batch norm's switch (without it the epoch normalized with the running statistics it was
            # updating) or a draw, a loop step's too
            training = needs_training_mode(order)
        step = inputs.get("step")
        if step is not None and (step.shape != () or step.dtype not in STEP_DTYPES):
            raise GraphcError(f"EpochFunction: the input 'step' is the global step number the driver feeds (1 for "
                              f"the first step), a scalar of {', '.join(STEP_DTYPES)}; got {step.type_str} "
                              f"(declared at {step.source.where()}): declare it gc.input('step', (), 'float32') "
                              "or 'int32', or give the input another name")
        super().__init__([loss], updates=updates, training=training, threads=threads, target=target,
                         cache=cache, profile=profile)
        if all(leaf is not x for leaf in self.signature.inputs):
            raise GraphcError(f"EpochFunction: the loss does not depend on x ({x.name!r})")
        self._epoch = self._engine.function("graphc_epoch", ctypes.c_int32, *[ctypes.c_void_p] * 3,
                                             ctypes.c_int32)
        self._init = self._engine.function("graphc_init", None, ctypes.c_void_p, ctypes.c_int64) \
            if self._params else None
        self._spec_memo = self._spec()
        self._threads_memo: dict[int, int] = {}
        # the state and scalar inputs a call binds: (name, table slot, leaf, updated in place)
        fed = (self._x.name, getattr(self._y, "name", None), "step", "rng_key")
        updated = {self.signature.inputs[i].name for i in self.updates.values()}
        self._bindings = [(leaf.name, self._by_key[leaf.name][1], leaf, np.dtype(leaf.dtype), leaf.name in updated)
                          for leaf in self.signature.inputs if leaf.name not in fed and leaf.name in self._by_key]
        self.epochs_done = 0  # epochs run (the default `epoch` of the next one: a fresh shuffle each time)
        self.steps_done = 0  # steps run (the default `step0`: the global step continues)
        self._warned_misaligned = False
        self._snapshot: dict[str, np.ndarray] = {}
        self._step_seconds: dict = {}  # (batch, threads) -> a step's time in the last native call: sizes the next

    def _init_specs(self, keyed: bool = False) -> list:
        """The native initializers of `params`, each with its parameter's table slot (`keyed`: its position among
        the compiled graph's inputs instead, for the cache key, which is made before the program is known)."""
        from graphc.codegen.init import spec_for

        if keyed:
            slot = {id(leaf): i for i, leaf in enumerate(self._graph.inputs)}
        else:
            slot = {id(leaf): buf for leaf, buf in zip(self.signature.inputs, self.rt.inputs, strict=True)}
        return [spec_for(slot[id(p)], p.name, p.shape, p.meta.get("init", "zeros")) for p in self._params]

    def init_params(self, state: Mapping[str, np.ndarray], seed: int) -> None:
        """Fill the parameters in `state` (float32, in place) with their initializers, natively: the same
        values a standalone training binary computes for this seed."""
        from graphc.ops.init import check_seed

        if self._init is None:
            raise GraphcError("init_params: this EpochFunction was built without params=[...]")
        seed = check_seed(seed, "init_params")
        table = np.zeros(self._nbuf, dtype=np.uintp)
        for p, spec in zip(self._params, self._init_specs(), strict=True):
            a = state[p.name]
            if a.dtype != np.float32 or a.shape != p.shape or not a.flags.c_contiguous:
                raise InputError(f"init: {p.name!r} must be a contiguous float32 {p.type_str} array")
            table[spec.slot] = a.ctypes.data
        self._init(table.ctypes.data, int(np.int64(np.uint64(seed % 2**64).view(np.int64))))

    def _spec(self, keyed: bool = False) -> drv.EpochSpec:
        """What the driver knows of the step (`keyed`: with the batch dim's name for its index in the program's
        dims, and the compiled graph's inputs for the call's, for the cache key)."""
        n_sym = self._x.shape[0]
        leaves = {leaf.name: leaf for leaf in (self._graph.inputs if keyed else self.signature.inputs)}
        step = leaves.get("step")
        return drv.EpochSpec(
            n_dim=str(n_sym) if keyed else list(self.rt.symbols).index(n_sym),
            x_row_bytes=_row_bytes(self._x),
            y_row_bytes=_row_bytes(self._y) if self._y is not None else 0,
            step_dtype=step.dtype if step is not None else "float32",
            has_step=step is not None,
            has_key=self.training and "rng_key" in leaves,
        )

    def variant(self) -> str:
        # the base's part too: a profiled module is another module (its counters), never the cached plain one
        init = self._init_specs(keyed=True) if self._params else ""
        return f"{super().variant()}epoch:{self._spec(keyed=True)}:{init}"

    def extras(self) -> tuple:
        from graphc.codegen.epoch import emit_epoch
        from graphc.codegen.init import emit_init

        out = (emit_epoch(self._spec()),)
        return out + (emit_init(self._init_specs()),) if self._params else out

    def threads_for_batch(self, batch: int) -> int:
        """The thread count a run with this batch size uses by default: one when the step's matrix products
        total fewer than SMALL_STEP_FLOPS (as gc.fit decides), else the thread count this function was built
        with (by default the CPUs this process may use)."""
        if not self._auto_threads:
            return self.threads
        n = self._threads_memo.get(batch)
        if n is not None:
            return n
        env = [batch if s == self._x.shape[0] else 1 for s in self._symbols]
        flops = 0
        for kind, dims in self.rt.costs:
            if kind == "gemm":
                flops += 2 * math.prod(self._dim_fn(d)(env) for d in dims)
        n = 1 if flops < SMALL_STEP_FLOPS else self.threads
        if len(self._threads_memo) < 4096:
            self._threads_memo[batch] = n
        return n

    def run_epoch(self, X: np.ndarray, Y: np.ndarray | None, state: Mapping[str, np.ndarray], *, batch: int,
                  order=None, scalars: Mapping[str, float] | None = None, epoch: int | None = None, seed: int = 0,
                  step0: int | None = None, shuffle: bool = True, drop_last: bool = False, max_steps: int = -1,
                  threads: int | None = None, on_nonfinite: str = "raise") -> EpochStats:
        """One epoch over (X, Y): mini-batches of `batch` rows in a seeded shuffled order (or in `order`, an int
        array of row indices: a permutation or any sequence, trained as given), the last partial batch included
        (unless `drop_last`), each step's `updates` written in place into `state`.

        `state` holds every parameter and optimizer-state array by name (float32, contiguous; updated in place);
        `scalars` the other scalar inputs (e.g. {"lr": 0.1}). `epoch` (default: the epochs this function has run)
        and `seed` pick the shuffle; `step0` (default: the steps run so far) is the global step before this
        epoch (Adam's bias correction, dropout masks). Returns EpochStats: `losses` per step, `mean_loss`.

        A non-finite loss raises a NumericalError naming the step, with `state` as it was after the last finite
        step, and so does an update that made a parameter non-finite while every loss stayed finite
        (`on_nonfinite="stop"`: return instead, with `nonfinite_step` set and the failing step applied, and
        `nonfinite_param` naming a trained array that holds a non-finite value, if one does). A
        failed run-time check (a label or token id out of range) always raises an InputError naming the step, its
        rows and the check, with `state` as it was after the last good step."""
        with self._lock:  # one epoch (or call) at a time: the arena, workspace and rollback snapshot are shared
            return self._run_epoch(X, Y, state, batch=batch, order=order, scalars=scalars, epoch=epoch, seed=seed,
                                   step0=step0, shuffle=shuffle, drop_last=drop_last, max_steps=max_steps,
                                   threads=threads, on_nonfinite=on_nonfinite)

    def _run_epoch(self, X, Y, state, *, batch, order, scalars, epoch, seed, step0, shuffle, drop_last, max_steps,
                   threads, on_nonfinite) -> EpochStats:
        """run_epoch's work, under the epoch lock."""
        spec = self._spec_memo
        if not isinstance(state, Mapping):
            raise InputError(f"training: state must be a dict of name -> array (the parameters and the optimizer's "
                             f"state), got {type(state).__name__}")
        if scalars is not None:
            if not isinstance(scalars, Mapping):
                raise InputError(f"training: scalars must be a dict of name -> number, got {type(scalars).__name__}")
            known = {name for name, _, leaf, _, _ in self._bindings if leaf.shape == ()}
            unknown = sorted(k for k in scalars if k not in known)
            if unknown:
                arrays = {name: leaf for name, _, leaf, _, _ in self._bindings if leaf.shape != ()}
                said = "; ".join(f"{k!r} is a {arrays[k].type_str} input: give its array in `state`"
                                 for k in unknown if k in arrays)
                raise InputError(f"training: scalars {unknown} are not scalar inputs of the step (its scalar inputs: "
                                 f"{', '.join(sorted(known)) or 'none'})" + (f"; {said}" if said else ""))
        if on_nonfinite not in ("raise", "stop"):
            raise InputError(f"training: on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
        if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
            raise InputError(f"training: batch size must be a positive int, got {batch!r}")
        batch = int(batch)
        for v, what in ((epoch, "epoch"), (step0, "step0"), (seed, "seed")):  # seed has no None: it is 0 by default
            if (v is not None or what == "seed") and (
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**63):
                raise InputError(f"training: {what} must be an int in [0, 2**63), got {v!r}")
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < -1:
            raise InputError(f"training: max_steps must be an int >= 0 (or -1: no limit), got {max_steps!r}")
        max_steps = int(max_steps)
        for v, what in ((shuffle, "shuffle"), (drop_last, "drop_last")):
            if not isinstance(v, (bool, np.bool_)):
                raise InputError(f"training: {what} must be True or False, got {v!r}")
        shuffle, drop_last = bool(shuffle), bool(drop_last)
        epoch = self.epochs_done if epoch is None else int(epoch)
        step0 = self.steps_done if step0 is None else int(step0)
        self._check_data(X, self._x, "x")
        n = int(X.shape[0])
        if n < 1:
            raise InputError("training: the dataset is empty")
        if self._y is not None:
            if Y is None or not hasattr(Y, "shape") or Y.shape[0] != n:
                raise InputError(f"training: Y must have one row per row of X ({n}), got "
                                 f"{getattr(Y, 'shape', type(Y).__name__)}")
            self._check_data(Y, self._y, "y")
        elif Y is not None:
            raise InputError("training: Y was given, but this epoch function was built without y= (its loss reads "
                             "no labels); pass Y=None, or build it with y=<the labels input>")
        if order is not None:
            perm = _check_order(order, n)
            mode, n_steps_rows = drv.ORDER_GIVEN, len(perm)
        else:
            perm = np.empty(n, np.int64)
            mode, n_steps_rows = (drv.ORDER_SHUFFLE if shuffle else drv.ORDER_IOTA), n
        batch = min(batch, n_steps_rows)
        nthreads = check_threads(threads, "training") or self.threads_for_batch(batch)
        env = [batch if s == self._x.shape[0] else 0 for s in self._symbols]
        self._ensure_plan(env, nthreads)
        table = self._base_table.copy()
        keep: list[np.ndarray] = []  # everything the native code points at stays alive during the call
        copy_back: list[tuple[np.ndarray, np.ndarray]] = []  # (caller's state array, the aligned one trained)
        trained: dict[str, np.ndarray] = {}  # the state arrays the step updates, by name

        def bind(leaf_name: str, arr: np.ndarray) -> None:
            spec_ = self._by_key.get(leaf_name)
            if spec_ is None:
                return
            table[spec_[1]] = data_address(arr)
            keep.append(arr)

        xb = aligned_bytes(batch * spec.x_row_bytes).view(self._x.dtype)
        yb = aligned_bytes(max(batch * spec.y_row_bytes, 8))
        bind(self._x.name, xb)
        if self._y is not None:
            bind(self._y.name, yb)
        step_buf = np.zeros(1, spec.step_dtype)
        key_buf = np.zeros(1, np.int64)
        bind("step", step_buf)
        bind("rng_key", key_buf)
        scalars = scalars or {}
        misaligned = []
        for name, slot, leaf, dtype, is_updated in self._bindings:
            if name in scalars and leaf.shape == ():
                value = scalars[name]
                arr = None
                if isinstance(value, (int, float, np.number, np.ndarray)) and not isinstance(value, bool) \
                        and np.asarray(value).dtype.kind in "iuf":
                    if dtype.kind in "iu":  # an int input: evaluate's check (ints only, in its dtype's range)
                        value = check_value(leaf, value, f"training: scalars[{name!r}]")
                    arr = np.asarray(value, dtype=dtype)
                if arr is None or arr.size != 1:
                    raise InputError(f"training: scalars[{name!r}] must be one number ({leaf.type_str}), got "
                                     f"{_brief(scalars[name])}")
                arr = arr.reshape(())
            elif name in state:
                arr = state[name]
                if (not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != leaf.shape
                        or not arr.flags.c_contiguous or not arr.flags.writeable):
                    raise InputError(f"training: state {name!r} must be a writable contiguous {leaf.type_str} "
                                     f"array (trained in place), got {_state_fault(arr, dtype, leaf.shape)}")
                if is_updated:
                    trained[name] = arr
                if data_address(arr) % 64 and arr.nbytes >= 64:
                    # numpy gives large arrays 16-byte alignment: a matrix read in place by a GEMM, or written by
                    # its fused update, would then split vector loads and stores across cache lines (measured
                    # 5-7% of a 784-256-128-10 epoch). Train on an aligned copy, copied back after the epoch.
                    aligned = aligned_empty(arr.shape, arr.dtype)
                    aligned[...] = arr
                    copy_back.append((arr, aligned))
                    misaligned.append(name)
                    arr = aligned
            else:
                where = "scalars" if leaf.shape == () else "state"
                given = [str(k) for k in (scalars or {} if leaf.shape == () else state)]
                close = difflib.get_close_matches(name, given, n=1)
                raise InputError(f"training: no value for the input {name!r} ({leaf.type_str}); pass it in "
                                 f"{where}=" + (f" (it holds {close[0]!r}: a misspelling?)" if close else ""))
            table[slot] = data_address(arr)
            keep.append(arr)
        _check_trained_apart(trained, state, X, Y)
        if misaligned and not self._warned_misaligned:
            self._warned_misaligned = True
            warnings.warn(f"run_epoch: the state arrays {misaligned[:4]}{' ...' if len(misaligned) > 4 else ''} "
                          "are not 64-byte aligned; each epoch trains on aligned copies and copies them back. "
                          "Pass ef.aligned(state) (or gc.nn.init_params' arrays) to avoid the copies",
                          stacklevel=3)  # the caller of run_epoch (through _run_epoch)
        if on_nonfinite == "raise" or self.rt.checks:  # the state at the start, to go back to the last good step
            snap = self._snapshot
            for name, arr in trained.items():
                s = snap.get(name)
                if s is None or s.shape != arr.shape or s.dtype != arr.dtype:
                    s = snap[name] = np.empty_like(arr)
                np.copyto(s, arr)
        loss_buf = np.zeros(1, np.float32)
        table[self.rt.outputs[0]] = data_address(loss_buf)
        full, rest = divmod(n_steps_rows, batch)
        steps_in_order = full + (1 if rest and not drop_last else 0)  # the driver's count of steps
        self.check_batches({batch, rest} if rest and not drop_last else {batch})
        losses = np.zeros(steps_in_order or 1, np.float32)
        dims = np.zeros(max(len(self._symbols), 1), np.int64)
        dims[spec.n_dim] = batch
        Xc, Yc = self._contiguous(X, "X"), (self._contiguous(Y, "Y") if Y is not None else np.zeros(1, np.uint8))
        ctx = np.zeros(drv.CTX_SLOTS, np.int64)
        ctx[drv.TABLE] = data_address(table)
        ctx[drv.DIMS] = data_address(dims)
        ctx[drv.WS] = data_address(self._ws)
        ctx[drv.X], ctx[drv.Y] = data_address(Xc), data_address(Yc)
        ctx[drv.NSAMP], ctx[drv.BATCH], ctx[drv.EPOCH] = n_steps_rows, batch, epoch
        ctx[drv.SEED] = seed  # < 2**63, checked above
        ctx[drv.PERM] = data_address(perm)
        ctx[drv.STEP0], ctx[drv.MAXSTEPS] = step0, max_steps
        ctx[drv.XB], ctx[drv.YB] = data_address(xb), data_address(yb)
        ctx[drv.STEPBUF], ctx[drv.KEYBUF], ctx[drv.LOSSBUF] = (data_address(step_buf), data_address(key_buf),
                                                               data_address(loss_buf))
        ctx[drv.SHUFFLE], ctx[drv.DROP_LAST] = mode, int(drop_last)
        total = min(steps_in_order, max_steps) if max_steps >= 0 else steps_in_order
        steps, loss_sum, status, bad = self._run_chunks(ctx, perm, losses, n_steps_rows, step0, total, mode, nthreads,
                                                         copy_back)
        bad_loss = float(loss_buf[0])
        check = int(ctx[drv.CHECK])  # which run-time check failed (a replay below runs the driver again)
        samples = min(steps * batch, n_steps_rows) if bad is None else steps * batch
        stats = EpochStats(loss_sum, steps, samples, bad, perm, losses[:steps].copy())

        def replay(k: int) -> None:  # the epoch's start, then its first k steps again
            self._restore(trained, copy_back)
            if k:
                ctx[drv.SHUFFLE], ctx[drv.MAXSTEPS] = drv.ORDER_GIVEN, k
                ctx[drv.PERM], ctx[drv.NSAMP], ctx[drv.STEP0] = data_address(perm), n_steps_rows, step0
                ctx[drv.LOSSES] = 0
                self._epoch(data_address(ctx), None, None, nthreads)
            for arr, aligned in copy_back:
                arr[...] = aligned

        def before_step(k: int) -> int:
            """After a non-finite state with finite losses: the state before step k (1-based), replayed, when the
            update of step k alone overflowed; else the epoch's start. The steps kept."""
            replay(k - 1)
            if self._nonfinite(trained):
                self._restore(trained, copy_back)
                return 0
            return k - 1

        if status == drv.STATUS_CHECK or (bad is not None and on_nonfinite == "raise"):
            # back to the state after the last finite step: the epoch's start, then its first `bad` steps again
            # (deterministic: the same order, dims and keys)
            replay(bad)
            self.epochs_done = max(self.epochs_done, epoch + 1)
            self.steps_done = step0 + bad
            overflowed = bad and self._nonfinite(trained)
            culprit = None
            if overflowed:  # an update overflowed before the loss showed it: step `bad`'s, or an earlier one's
                kept = before_step(bad)
                culprit = bad if kept == bad - 1 else None
                self.steps_done = step0 + kept
            if status == drv.STATUS_CHECK:
                rows = perm[bad * batch:min((bad + 1) * batch, n_steps_rows)]
                shown = ", ".join(str(int(r)) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
                raise InputError(
                    f"training: step {bad + 1} of the epoch (global step {step0 + bad + 1}, epoch {epoch}): "
                    f"{self.check_message(check)}, in the batch of rows {shown}; the state holds "
                    f"the parameters after the last good step ({_steps(bad)} this epoch). Check the data's labels / "
                    "ids")
            held = (f"the update of step {culprit} (whose loss was finite) had already made {overflowed} "
                    "non-finite: the state holds the parameters " + (
                        f"after the step before it ({_steps(culprit - 1)} this epoch)" if culprit > 1 else
                        "at the epoch's start") if culprit else
                    f"the state holds the parameters at the epoch's start: the update of an earlier step had "
                    f"already made {overflowed} non-finite" if overflowed else
                    f"the state holds the parameters after the last finite step ({_steps(bad)} this epoch)")
            raise NumericalError(
                f"training: the loss became non-finite ({bad_loss}) at step {bad + 1} of the epoch "
                f"(global step {step0 + bad + 1}, epoch {epoch}); {held}. Try a smaller learning rate or "
                f"standardized inputs")
        for arr, aligned in copy_back:
            arr[...] = aligned
        self.epochs_done = max(self.epochs_done, epoch + 1)
        self.steps_done = step0 + steps
        if on_nonfinite == "stop":  # the caller decides; it must see a state that is not finite
            stats.nonfinite_param = self._nonfinite(trained)
        if on_nonfinite == "raise" and bad is None:
            name = self._nonfinite(trained)
            if name:  # every loss finite, but an update overflowed (the last step's shows in no loss)
                kept = before_step(steps)  # the last step's update: the state before it
                held = f"after the step before the last ({_steps(kept)} this epoch)" if kept else "at the epoch's start"
                self.steps_done = step0 + kept
                raise NumericalError(
                    f"training: the parameter {name!r} became non-finite in epoch {epoch} while every loss of its "
                    f"{steps} steps was finite (an update overflowed); the state holds the parameters {held}. "
                    "Try a smaller learning rate or standardized inputs")
        return stats

    @staticmethod
    def _nonfinite(trained: dict) -> str | None:
        """The first trained array holding a non-finite value (None: all finite)."""
        for name, arr in trained.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                return name
        return None

    def _restore(self, trained: dict, copy_back: list) -> None:
        """The trained arrays back to the epoch's start (the snapshot), in the caller's arrays too."""
        for name, arr in trained.items():
            np.copyto(arr, self._snapshot[name])
        for arr, aligned in copy_back:
            aligned[...] = arr

    CHUNK_SECONDS = 0.2  # a native call runs about this long at most: Ctrl-C is seen between calls

    def _run_chunks(self, ctx: np.ndarray, perm: np.ndarray, losses: np.ndarray, rows: int, step0: int, total: int,
                    mode: int, nthreads: int, copy_back: list) -> tuple[int, float, int, int | None]:
        """The epoch's `total` steps as native calls of at most ~CHUNK_SECONDS each (the first computes the
        order; each next one continues it: the order from its step on, the global step counted on, so the steps,
        dropout keys and results are bitwise those of one call). Python runs between the calls, so a Ctrl-C
        stops the epoch at a step boundary: the KeyboardInterrupt leaves the state (copied back where it was
        trained on an aligned copy) after the last whole step and `steps_done` counting it. Returns (steps run,
        the summed loss x rows, status, the failing step or None)."""
        batch = int(ctx[drv.BATCH])
        base_perm, base_losses = data_address(perm), data_address(losses)
        done, loss_sum, status, bad = 0, 0.0, drv.STATUS_OK, None
        pending = False
        try:
            while True:
                k = total - done
                per_step = self._step_seconds.get((batch, nthreads))
                if per_step is None:
                    k = min(k, 16)  # the first call of this batch size and thread count measures a step
                elif per_step > 0:
                    k = min(k, max(1, int(self.CHUNK_SECONDS / per_step)))
                ctx[drv.SHUFFLE] = mode if done == 0 else drv.ORDER_GIVEN
                ctx[drv.PERM] = base_perm + done * batch * 8
                ctx[drv.NSAMP] = rows - done * batch
                ctx[drv.STEP0] = step0 + done
                ctx[drv.MAXSTEPS] = k
                ctx[drv.LOSSES] = base_losses + done * 4
                ctx[drv.STEPS_DONE] = 0
                t0 = time.perf_counter()
                pending = True
                self._epoch(data_address(ctx), None, None, nthreads)  # run_epoch holds self._lock
                ran = int(ctx[drv.STEPS_DONE])
                pending = False
                if ran:
                    self._step_seconds[batch, nthreads] = (time.perf_counter() - t0) / ran
                loss_sum += float(ctx[drv.LOSS_SUM:drv.LOSS_SUM + 1].view(np.float64)[0])
                status = int(ctx[drv.STATUS])
                if status != drv.STATUS_OK:
                    bad = done + int(ctx[drv.BAD_STEP])
                done += ran
                if status != drv.STATUS_OK or done >= total:
                    return done, loss_sum, status, bad
        except BaseException:
            if pending:
                done += int(ctx[drv.STEPS_DONE])
            for arr, aligned in copy_back:
                arr[...] = aligned
            self.steps_done = step0 + done
            raise

    def _contiguous(self, A: np.ndarray, what: str) -> np.ndarray:
        """The data as the driver reads it: C-contiguous rows. Anything else is copied, and said so once."""
        if A.flags.c_contiguous and data_address(A) % A.dtype.itemsize == 0:
            return A
        if not getattr(self, f"_warned_{what}", False):
            setattr(self, f"_warned_{what}", True)
            warnings.warn(f"run_epoch: {what} is not C-contiguous (or not aligned to its items); each epoch copies "
                          f"it. Pass np.ascontiguousarray({what}) once to avoid the copies", stacklevel=4)
        return np.ascontiguousarray(A)

    def aligned(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`state` as 64-byte-aligned float arrays (copies where needed): what run_epoch trains on in place."""
        out = {}
        for k, v in state.items():
            a = np.asarray(v)
            if a.ctypes.data % 64 or not a.flags.c_contiguous:
                b = aligned_empty(a.shape, a.dtype)
                b[...] = a
                a = b
            out[k] = a
        return out

    def _check_data(self, A: np.ndarray, leaf: Node, what: str) -> None:
        if not isinstance(A, np.ndarray):
            raise InputError(f"training: {what} must be a numpy array, got {type(A).__name__}")
        if A.dtype != np.dtype(leaf.dtype):
            raise InputError(f"training: {what} is {A.dtype}, the model's input {leaf.name!r} is {leaf.dtype}")
        if A.shape[1:] != tuple(leaf.shape[1:]):
            raise InputError(f"training: {what} rows have shape {A.shape[1:]}, the model's input {leaf.name!r} "
                             f"expects {tuple(leaf.shape[1:])}")


def _check_order(order, n: int) -> np.ndarray:
    """A caller's sample order as int64 row indices in [0, n) (checked; any length >= 1, repeats allowed)."""
    a = np.asarray(order)
    if a.ndim != 1 or a.dtype.kind not in "iu" or a.size < 1:
        raise InputError(f"training: order must be a non-empty 1-D array of int row indices, got "
                         f"{a.dtype} of shape {a.shape}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= n:
        i = int(np.argmax((a < 0) | (a >= n)))
        raise InputError(f"training: order[{i}] = {int(a[i])} is not a row of X (0 .. {n - 1})")
    return np.array(a, dtype=np.int64)  # a copy: the native driver reads it while the caller may change theirs


def _row_bytes(t: Node) -> int:
    n = 1
    for d in t.shape[1:]:
        n *= int(d)
    return n * np.dtype(t.dtype).itemsize


def _brief(v) -> str:
    """A value for an error message: an array by its dtype and shape, anything else by its repr (cut short)."""
    if isinstance(v, np.ndarray):
        return f"an array of {v.dtype}, shape {v.shape}"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _state_fault(arr, dtype, shape) -> str:
    """What is wrong with a state array, in words."""
    if not isinstance(arr, np.ndarray):
        return f"{type(arr).__name__} (not a numpy array)"
    if arr.dtype != dtype or arr.shape != tuple(shape):
        return f"an array of {arr.dtype}, shape {arr.shape}"
    if not arr.flags.writeable:
        return "a read-only array (copy it: np.array(a))"
    return "an array that is not C-contiguous (np.ascontiguousarray(a))"
