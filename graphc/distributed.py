"""Data-parallel training on MPI (the optional extra `pip install graphc[mpi]`: mpi4py and the mpich wheel).

Every rank reads the data, computes the same seeded permutation and takes a fixed contiguous share of every global
mini-batch. A step is split in two compiled phases: the gradients of the data loss (weighted by the rank's share
of the batch) into one flat, 64-byte-aligned buffer, which the ranks sum with one MPI allreduce, then a compiled
in-place update (with the penalties' gradients, which need no communication) that every rank applies to the same
sum. The result equals single-process training with the global batch up to the order of the summation.

Batch norm follows PyTorch's DistributedDataParallel (its default; SyncBatchNorm is another layer): each rank
normalizes with the statistics of its own share of the batch and updates its own running statistics from them;
after every epoch rank 0's running statistics are broadcast to every rank (DDP broadcasts rank 0's buffers), so
the ranks evaluate, check, checkpoint and save the same ones. With a batch norm the result is therefore not
single-process training's (whose statistics are over the whole batch)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from graphc.errors import GraphcError, InputError

INSTALL_HINT = ("distributed training needs MPI: install the extra with `pip install 'graphc[mpi]'` (mpi4py and "
                "the mpich wheel, which brings mpirun), then start the ranks with `mpirun -n P graphc train ...`")
TIMEOUT_ENV = "GRAPHC_MPI_TIMEOUT"  # seconds a rank waits in one collective before it gives up (default 120)
RANK_ENVS = (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
             ("PMIX_SIZE", "PMIX_RANK"))
EXIT_LOST_RANK = 6
RANK_KEY = 0xD1B54A32D192ED03  # offsets a rank's dropout key


def timeout_seconds() -> float:
    """GRAPHC_MPI_TIMEOUT: a positive number of seconds (default 120); anything else is a GraphcError."""
    text = os.environ.get(TIMEOUT_ENV, "120")
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise GraphcError(f"{TIMEOUT_ENV}={text!r}: give the seconds a rank waits in one collective before it gives "
                          "up, a positive number (default 120)")
    return v


def launched_ranks() -> int:
    """How many ranks the MPI launcher started this process among (1 when not started by mpirun)."""
    for size, _ in RANK_ENVS:
        v = os.environ.get(size)
        if v and v.isdigit():
            return int(v)
    return 1


def launched_rank() -> int:
    """This process's rank as the MPI launcher numbered it (0 when not started by mpirun)."""
    for _, rank in RANK_ENVS:
        v = os.environ.get(rank)
        if v and v.isdigit():
            return int(v)
    return 0


def _check_launcher(MPI) -> None:
    """A launcher that started P > 1 processes whose MPI sees a world of one is another MPI than the one mpi4py
    was built with (Open MPI's mpirun for an MPICH mpi4py, or the reverse): each process would train the whole run
    alone, every one writing --out. A GraphcError instead, on every process (none waits for another)."""
    for size_env, _ in RANK_ENVS:
        launched = os.environ.get(size_env, "")
        if launched.isdigit() and int(launched) > 1:
            break
    else:
        return
    world = MPI.COMM_WORLD.Get_size()
    if world != int(launched):
        lib = MPI.Get_library_version().splitlines()[0].strip()
        raise GraphcError(
            f"distributed training: the launcher started {launched} processes ({size_env}={launched}) but MPI "
            f"({lib}, the one mpi4py was built with) sees a world of {world}: the mpirun is another MPI's, so "
            "every process would train alone. Start the ranks with the mpirun of mpi4py's MPI (`pip install "
            "'graphc[mpi]'` brings mpich's: `python -m pip show -f mpich` lists it), or rebuild mpi4py against "
            "your MPI (`pip install --no-binary mpi4py --force-reinstall mpi4py`)")


def shares(n: int, p: int) -> list[tuple[int, int]]:
    """[lo, hi) of each of p ranks in n rows: contiguous, near-equal, the first n mod p ranks one row more."""
    q, r = divmod(n, p)
    out, lo = [], 0
    for k in range(p):
        hi = lo + q + (1 if k < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


def rank_failure(error: BaseException) -> tuple[str, int]:
    """A failure of one rank alone (not a graphc error, which every rank decides together): what to say of it and
    the exit status `graphc train` gives for it, which MPI_Abort passes on to mpirun: the file system's refusal
    (OSError) or memory 2, an interrupt 130, anything else (a bug: its traceback) 1. Used by gc.fit's
    data-parallel training and by the CLI, so that the two give the same statuses."""
    if isinstance(error, OSError):
        return str(error), 2
    if isinstance(error, MemoryError):
        return f"out of memory ({error or 'an allocation failed'})", 2
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    import traceback

    return "".join(traceback.format_exception(error)).rstrip(), 1


class Distributed:
    """The communicator and the collective operations training needs, each with a watchdog: a wait longer than
    the timeout, or a peer process on this host that disappeared, stops the rank with a message naming the rank
    (MPI's own error handling otherwise: a launcher that sees a rank die stops the others)."""

    def __init__(self, comm=None):
        timeout = timeout_seconds()  # before any collective
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise GraphcError(f"{INSTALL_HINT} ({e})") from None
        self.MPI = MPI
        if comm is None:
            _check_launcher(MPI)
        # a duplicate of the caller's communicator, whose errors return to us (then named) instead of aborting
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.host = MPI.Get_processor_name()
        self.pids = self.comm.allgather((self.host, os.getpid()))
        self.timeout = timeout
        self.checkpoint_dir: Path | None = None  # where rank 0 keeps the checkpoints (named when a rank is lost)
        self._waiting_since: float | None = None
        self._what = ""
        self._stop = threading.Event()
        self._guard_obj = _Guard(self)
        self._watch = threading.Thread(target=self._watchdog, name="graphc-mpi-watchdog", daemon=True)
        self._watch.start()

    # -- fault handling
    def _watchdog(self) -> None:
        import select

        local = [(r, pid) for r, (h, pid) in enumerate(self.pids) if h == self.host and r != self.rank]
        poller, fds = select.poll(), {}
        for r, pid in local:  # a pidfd turns readable the moment its process ends: no polling delay
            try:
                fd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                continue
            fds[fd] = (r, pid)
            poller.register(fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                for fd, _ in poller.poll(200):
                    r, pid = fds[fd]
                    self._lost(f"rank {r} (pid {pid} on {self.host}) is gone")
                for r, pid in local:
                    if not _alive(pid):
                        self._lost(f"rank {r} (pid {pid} on {self.host}) is gone")
                since = self._waiting_since
                if since is not None and time.monotonic() - since > self.timeout:
                    self._lost(f"no progress for {self.timeout:g} s in {self._what} (a rank stopped answering; "
                               f"set {TIMEOUT_ENV} to wait longer)")
        finally:
            for fd in fds:
                os.close(fd)

    def _lost(self, why: str) -> None:
        if self._stop.is_set():
            return  # training is over: ranks may leave in any order
        last = "none written yet"
        if self.checkpoint_dir is not None:
            found = sorted(Path(self.checkpoint_dir).glob("ckpt-*.gcp"))
            if found:
                last = str(found[-1])
        sys.stderr.write(f"graphc: error: rank {self.rank}: {why}; stopping. The last good checkpoint: {last} "
                         "(continue with --resume, under any number of ranks)\n")
        sys.stderr.flush()
        os._exit(EXIT_LOST_RANK)

    def _guard(self, what: str) -> _Guard:
        """A context for one collective: the watchdog times it, and an MPI error in it names the lost rank."""
        g = self._guard_obj
        g.what = what
        return g

    def close(self) -> None:
        self._stop.set()

    def abort(self, error: BaseException) -> None:
        """A failure of this rank alone while training (a file it cannot write or read, memory, an interrupt, a
        bug): the other ranks would wait for it in their next collective until the watchdog's timeout, then blame
        a rank that 'stopped answering'. Say what failed, naming this rank, and stop every rank at once
        (MPI_Abort, as the --mpi training binary does) with the status graphc train gives for it."""
        if self.size == 1:
            return
        what, code = rank_failure(error)
        sys.stderr.write(f"graphc: error: rank {self.rank}: {what}; stopping every rank\n")
        sys.stderr.flush()
        self._stop.set()
        self.comm.Abort(code)

    # -- collectives
    def allreduce_(self, buf: np.ndarray, what: str = "the gradient allreduce") -> None:
        """Sum `buf` over the ranks, in place."""
        with self._guard(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def allgather(self, obj, what: str = "an allgather"):
        with self._guard(what):
            return self.comm.allgather(obj)

    def bcast(self, obj, what: str = "a broadcast"):
        with self._guard(what):
            return self.comm.bcast(obj, root=0)

    def agree(self, what: str, value: str, details: dict | None = None) -> None:
        """Every rank must hold the same `value` (a digest of the model and options): else a GraphcError naming
        the ranks that differ from rank 0 and, of `details` (named parts of the value), those that differ."""
        values = self.allgather((value, details or {}), f"comparing {what}")
        odd = [r for r, (v, _) in enumerate(values) if v != values[0][0]]
        if odd:
            mine, theirs = values[0][1], values[odd[0]][1]
            diff = [k for k in mine if mine[k] != theirs.get(k)]
            said = "".join(f"; {k}: {mine[k]} on rank 0, {theirs.get(k)} on rank {odd[0]}" for k in diff[:4])
            data = any(k.startswith("data") for k in diff) or "contents" in what
            raise _everywhere(GraphcError(
                f"distributed training: ranks {', '.join(map(str, odd))} disagree with rank 0 on {what}{said}; "
                "every rank must run the same command (same model, data and options)"
                + (". Give every rank the whole dataset: graphc splits each global batch over the ranks itself "
                   "(no per-rank sharding as with PyTorch's DistributedSampler)" if data else "")
                + (". Every rank must use the same seed: it draws the initial weights, the shuffle and the dropout "
                   "masks of the whole run (no seed + rank)" if "seed" in diff else "")))

    def all_ok(self, what: str, error: BaseException | None) -> None:
        """Every rank reports whether `what` worked; if one failed, every rank raises an InputError naming it."""
        msgs = self.allgather(None if error is None else str(error), what)
        bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if bad:
            r, m = bad[0]
            raise _everywhere(InputError(f"{what} failed on rank{'s' if len(bad) > 1 else ''} "
                                         f"{', '.join(str(b[0]) for b in bad)} (rank {r}: {m}); no rank trained"))

    def run_everywhere(self, what: str, fn):
        """fn() on every rank; if it raised a graphc error on any rank, every rank raises (so all exit 2 before
        training, none waits for the others in vain)."""
        try:
            value, error = fn(), None
        except GraphcError as e:
            value, error = None, e
        except Exception as e:  # any other failure too: a rank that leaves alone makes the others wait
            value, error = None, GraphcError(f"{type(e).__name__}: {e}")
        self.all_ok(what, error)
        return value

    def start_training(self, trainer, ds, out_dir: Path | None) -> None:
        """Before the first step: every rank must build the same graph with the same options and data shape."""
        shape = f"{ds.name}:{ds.task}:{ds.X_train.shape}:{ds.X_val.shape}:{ds.X_test.shape}"
        cfg = trainer.config
        details = {f.name: repr(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        details["data (training, validation, test rows)"] = \
            f"{ds.name} {ds.X_train.shape}, {ds.X_val.shape}, {ds.X_test.shape}"
        self.agree("the model, options and data (a hash of the step graph and the training options)",
                   f"{trainer.fingerprint()}:epochs {trainer.config.epochs}:{shape}", details)
        self.agree("the data's contents (a hash of the training, validation and test arrays; a file of the same "
                   "name and shape holding other values on some rank)", data_digest(ds))
        ck = self.bcast(str(Path(out_dir).resolve() / "checkpoints") if out_dir is not None else None)
        self.checkpoint_dir = Path(ck) if ck else None
        if self.rank == 0:
            trainer.log(f"distributed: {self.size} ranks x {trainer.threads} thread(s), global batch "
                        f"{trainer.config.batch_size}; ranks " +
                        ", ".join(f"{r}=pid {pid} on {h}" for r, (h, pid) in enumerate(self.pids)))

    def run_metrics(self, trainer) -> dict:
        samples = self.allgather(trainer.dist_step.samples if trainer.dist_step else 0, "gathering the metrics")
        return {"ranks": self.size, "threads_per_rank": trainer.threads, "samples_per_rank": samples,
                "mpi_library": self.MPI.Get_library_version().splitlines()[0].strip()}

    def default_threads(self) -> int:
        """Threads per rank when none are asked for: this host's cores shared by its ranks."""
        from graphc.runtime.jit import default_threads

        local = sum(1 for h, _ in self.pids if h == self.host)
        return max(1, default_threads() // local)


def _everywhere(err: GraphcError) -> GraphcError:
    """An error every rank raises with the same message (decided on gathered values): the CLI prints it on rank 0
    only, not once per rank."""
    err.on_every_rank = True
    return err


class _Guard:
    """Reused for every collective (a step makes two or three): no allocation on the per-step path."""

    def __init__(self, dist: Distributed):
        self.dist, self.what = dist, ""

    def __enter__(self):
        d = self.dist
        d._what, d._waiting_since = self.what, time.monotonic()

    def __exit__(self, kind, exc, tb):
        d = self.dist
        d._waiting_since = None
        if exc is not None and isinstance(exc, d.MPI.Exception):
            gone = [f"rank {r} (pid {pid} on {h})" for r, (h, pid) in enumerate(d.pids)
                    if h == d.host and r != d.rank and not _alive(pid)]
            d._lost((", ".join(gone) + " is gone") if gone else
                    f"{self.what} failed: {exc.Get_error_string().splitlines()[0]}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _with_row_offsets(loss):
    """`loss` with every dropout's element index offset by the rank's first row in the global batch times the
    row size (an int64 input `dropout_offset.<size>` per row size), so a rank's rows get the masks they have in
    single-process training. (loss, {row size: input}); (loss, None) when a dropout's input does not have the
    batch as its first dim and fixed dims after it (then each rank keys its masks apart instead)."""
    from graphc import ops
    from graphc.ir.node import derived_from, nodes_within, topo_order
    from graphc.ops.core import apply
    from graphc.passes.rewrite import rebuild

    nodes = topo_order(loss)
    if any(n.op.name == "random" for n in nodes_within(nodes)):  # draws follow no rows: each rank keys its own
        return loss, None
    drops = [n for n in nodes if n.op.name == "dropout" and not n.attrs.get("offset")]
    if not drops:
        return loss, {}
    for n in drops:
        shape = n.inputs[0].shape
        if not shape or isinstance(shape[0], int) or not all(isinstance(d, int) for d in shape[1:]):
            return loss, None
    offsets: dict[int, object] = {}
    memo: dict[int, object] = {}
    for n in nodes:
        ins = tuple(memo[id(i)] for i in n.inputs)
        if n.op.name == "dropout" and not n.attrs.get("offset"):
            size = int(np.prod(n.inputs[0].shape[1:], dtype=np.int64))
            off = offsets.setdefault(size, ops.input(f"dropout_offset.{size}", (), "int64"))
            with derived_from(n.source, n.source.made_by):
                memo[id(n)] = apply(n.op, (*ins, off), meta=n.meta, **n.attrs, offset=True)
        else:
            memo[id(n)] = rebuild(n, ins)
    return memo[id(loss)], offsets


def grad_program(trainer):
    """The gradient phase of a data-parallel step: the data loss weighted by the input `grad_weight` (a rank's
    rows over the global batch's) and its gradients, compiled; with the dropout offsets of `_with_row_offsets`.
    (compiled function, offsets). The standalone binary (`graphc build --mpi`) links the same program."""
    from graphc import ops
    from graphc.autodiff.grad import grad
    from graphc.nn.layers import state_updates
    from graphc.runtime.jit import CompiledFunction

    tr = trainer
    weight = ops.input("grad_weight", (), "float32")  # this rank's rows / the global batch's rows
    loss, offsets = _with_row_offsets(tr.data_loss)
    scaled = loss * weight
    data_grads = grad(scaled, tr.params)
    # batch norm's running statistics: each rank's from its own rows, updated in place (see the module's note)
    return CompiledFunction([scaled, *data_grads], training=tr.training_mode, threads=tr.threads,
                            updates=state_updates(loss)), offsets


def _share_gradients(tr, P: int):
    """The pieces of the update of a share of every parameter (see `slice_update_program`): (the share leaves, their
    optimizer state inputs by name, the P slot inputs per parameter, the penalty over the share or None, the total
    gradient of each share: the slots summed in rank order plus the penalties' gradients)."""
    from graphc import ops
    from graphc.autodiff.grad import grad
    from graphc.nn.losses import l1, l2

    leaves, pen_leaves, slot_in = [], [], []
    sub_state = {}
    for i, p in enumerate(tr.params):
        sym = f"S{i}"
        q = ops.input(p.name, (sym,), p.dtype)
        leaves.append(q)
        for n in tr.opt.state_names(p):
            sub_state[n] = ops.input(n, (sym,), p.dtype)
        slot_in.append([ops.input(f"slot{k}.{i}", (sym,), p.dtype) for k in range(P)])
        if p.name in tr.penalized_names:
            pen_leaves.append(q)
    pen = None
    if "l2" in tr.hyper:
        pen = l2(pen_leaves, tr.hyper["l2"])
    if "l1" in tr.hyper:
        term = l1(pen_leaves, tr.hyper["l1"])
        pen = term if pen is None else pen + term
    pen_grads = dict(zip([q.name for q in pen_leaves], grad(pen, pen_leaves), strict=True)) \
        if pen is not None else {}
    totals = []
    for q, gs in zip(leaves, slot_in, strict=True):
        g = gs[0]
        for k in range(1, P):  # rank order: a fixed summation order
            g = g + gs[k]
        if q.name in pen_grads:
            g = g + pen_grads[q.name]
        totals.append(g)
    return leaves, sub_state, slot_in, pen, totals


def slice_update_program(trainer, P: int):
    """The update of a share of every parameter from P gradient slots: each parameter, its optimizer state and
    its P slots flattened to 1-D inputs of one length symbol (`S<i>`); the slots are summed in rank order, the
    penalties' gradients added, the optimizer applied in place; the penalty over the share is the output.
    (compiled function, whether it has the penalty output, the slot input names per parameter). With P = 1 the
    one slot is the summed gradient (the standalone binary sums the slots itself, in the same order). With
    gradient clipping the gradients are scaled by clip_grad_norm's factor from the float32 input `grad_sumsq`:
    the sum of squares of the whole gradient (`slice_norm_program`'s outputs summed over the shares)."""
    from graphc import ops
    from graphc.nn.optim import clip_coefficient
    from graphc.runtime.jit import CompiledFunction

    tr = trainer
    leaves, sub_state, slot_in, pen, totals = _share_gradients(tr, P)
    if "clip_grad_norm" in tr.hyper:
        coef, _ = clip_coefficient(ops.input("grad_sumsq", (), "float32"), tr.hyper["clip_grad_norm"])
        totals = [g * ops.cast(coef, g.dtype) for g in totals]
    updates = {}
    for q, g in zip(leaves, totals, strict=True):
        new_p, new_state = tr.opt.step(q, g, sub_state, tr.t, tr.lr, tr.hyper)
        updates[q] = new_p
        for n, v in new_state.items():
            updates[sub_state[n]] = v
    fn = CompiledFunction([pen] if pen is not None else [], updates=updates, threads=tr.threads)
    return fn, pen is not None, [[leaf.name for leaf in gs] for gs in slot_in]


def slice_norm_program(trainer, P: int):
    """With gradient clipping, the sum of squares of a share of the total gradient (the same inputs as
    `slice_update_program`'s, less the optimizer's): one float32 output. A rank of a sharded update holds only
    its share of the summed gradient, so the global norm is these sums added over the ranks (in rank order)
    before any rank updates. None without clipping."""
    from graphc.nn.optim import grad_sumsq
    from graphc.runtime.jit import CompiledFunction

    tr = trainer
    if "clip_grad_norm" not in tr.hyper:
        return None
    *_, totals = _share_gradients(tr, P)
    return CompiledFunction([grad_sumsq(totals)], threads=tr.threads)


def data_digest(ds) -> str:
    """A hash of a dataset's arrays as training reads them (features standardized, labels), their dtypes and
    shapes: ranks that read files of one name and shape but other contents train on a mix of two datasets."""
    h = hashlib.blake2b(digest_size=16)
    for a in (ds.rows("train"), ds.y_train, ds.rows("val"), ds.y_val, ds.rows("test"), ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def params_digest(state: dict, names: list[str]) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(np.ascontiguousarray(state[n]).view(np.uint8).data)
    return h.hexdigest()


def per_rank_keys_warning(trainer, ranks) -> str:
    """What a data-parallel run of a model whose random numbers cannot follow the rows across ranks (a gc.random
    draw, or a dropout on a tensor whose first axis is not the batch: `grad_program`'s offsets are None) warns:
    each of the `ranks` ranks keys its own. (The standalone binary prints the same, with its rank count.)"""
    from graphc.ir.node import nodes_within, topo_order

    nodes = topo_order(trainer.data_loss)
    draws = [n for n in nodes_within(nodes) if n.op.name == "random"]
    drops = draws or [n for n in nodes if n.op.name == "dropout"]
    where = ", ".join(sorted({n.where() for n in drops})[:3])
    what = (f"gc.random draws ({where}) follow no rows across ranks" if draws else
            f"a dropout ({where}) acts on a tensor whose first axis is not the batch: its masks cannot follow "
            "the rows across ranks")
    return (f"graphc: warning: {what}, so each of the {ranks} ranks draws its own (independent) numbers; the run is "
            "reproducible for this number of ranks but its weights differ from single-process training's"
            + ("" if draws else " (apply dropout to (batch, ...) tensors to keep them equal)"))


class DataParallelStep:
    """The per-step path of data-parallel training for a Trainer: gradient phase, allreduce, update phase."""

    def __init__(self, trainer, dist: Distributed):
        self.trainer, self.dist = trainer, dist
        self.grad_fn, self.offsets = grad_program(trainer)
        if self.offsets is None and dist.size > 1 and dist.rank == 0:
            print(per_rank_keys_warning(trainer, dist.size), file=sys.stderr)
        self.grad_leaves = {leaf.name for leaf in self.grad_fn.signature.inputs}
        self.samples = 0  # rows this rank processed (all epochs)
        self._build_update()

    def _build_update(self) -> None:
        from graphc import ops
        from graphc.autodiff.grad import grad
        from graphc.nn.optim import clip_coefficient
        from graphc.runtime.buffers import aligned_empty
        from graphc.runtime.jit import CompiledFunction

        tr = self.trainer
        # the update: the summed data gradient (an input) plus the penalties' own gradients, then the optimizer
        self.g_in = [ops.input(f"allreduced.{i}", p.shape, p.dtype) for i, p in enumerate(tr.params)]
        pen = tr.penalty
        pen_grads = grad(pen, tr.params) if pen is not None else [None] * len(tr.params)
        totals = [g + pg if pen is not None and p.name in tr.penalized_names else g
                  for p, g, pg in zip(tr.params, self.g_in, pen_grads, strict=True)]
        # clipping: every rank holds the whole summed gradient and computes its norm itself, with the program the
        # standalone binary runs (slice_norm_program over the flattened arrays: the same summation order)
        self.norm_fn = slice_norm_program(tr, 1)
        self._sumsq = np.zeros((), np.float32)
        self._norm = None
        if self.norm_fn is not None:
            coef, _ = clip_coefficient(ops.input("grad_sumsq", (), "float32"), tr.hyper["clip_grad_norm"])
            totals = [g * ops.cast(coef, g.dtype) for g in totals]
        updates = {}
        for p, total in zip(tr.params, totals, strict=True):
            new_p, new_state = tr.opt.step(p, total, tr.state_inputs, tr.t, tr.lr, tr.hyper)
            updates[p] = new_p
            for name, v in new_state.items():
                updates[tr.state_inputs[name]] = v
        self.update_fn = CompiledFunction([pen] if pen is not None else [], updates=updates, threads=tr.threads)
        # one flat buffer: each gradient 64-byte aligned, the weighted loss in the last slot
        offs, off = [], 0
        for p in tr.params:
            offs.append(off)
            off += -(-int(np.prod(p.shape, dtype=np.int64)) // 16) * 16
        self.flat = aligned_empty((off + 16,), np.float32)
        self.flat[...] = 0
        self.loss_slot = off
        self.grad_views = [self.flat[o:o + int(np.prod(p.shape, dtype=np.int64))].reshape(p.shape)
                           for o, p in zip(offs, tr.params, strict=True)]
        self.outs = [self.flat[off:off + 1].reshape(()), *self.grad_views]
        self.update_leaves = {leaf.name for leaf in self.update_fn.signature.inputs}

    def run_epoch(self, X, Y, state, *, batch: int, epoch: int, seed: int, step0: int, scalars=None,
                  shuffle: bool = True, drop_last: bool = False, max_steps: int = -1, threads=None,
                  on_nonfinite: str = "stop"):
        """As EpochFunction.run_epoch with on_nonfinite="stop" (the Trainer's mode: the step is reported in the
        returned stats), data-parallel: the same order, batches and updates (summed gradients)."""
        if on_nonfinite != "stop":
            raise GraphcError(f"distributed training reports a non-finite loss in its stats (on_nonfinite='stop'), "
                              f"got on_nonfinite={on_nonfinite!r}")
        from graphc.codegen.epoch_abi import KEY_MULT
        from graphc.runtime.epoch import EpochStats

        tr, dist = self.trainer, self.dist
        n = int(X.shape[0])
        B = min(batch, n)
        # the epoch's order, computed by the native driver itself (a run of no steps): bitwise the same order
        perm = tr.epoch_fn.run_epoch(X, Y, state, batch=B, epoch=epoch, seed=seed, step0=step0, scalars=scalars,
                                     shuffle=shuffle, drop_last=drop_last, max_steps=0, threads=1).permutation
        nsteps = n // B + (1 if n % B and not drop_last else 0)
        if max_steps >= 0:
            nsteps = min(nsteps, max_steps)
        scalars = dict(scalars or {})
        width = max(hi - lo for lo, hi in shares(B, dist.size))
        # every rank's share of a full and of the last batch must fit the model (a slice of the batch axis needs
        # rows): checked on every rank alike, before any step, so all ranks stop together
        last = n % B if n % B and not drop_last else B
        rows = {hi - lo for size in {B, last} for lo, hi in shares(size, dist.size)} - {0}
        self.grad_fn.check_batches(rows, f"training on {dist.size} ranks (each takes its share of a batch)")
        xb = np.empty((max(width, 1), *X.shape[1:]), X.dtype)
        yb = np.empty((max(width, 1), *Y.shape[1:]), Y.dtype)
        step_arr = np.zeros((), np.float32)
        key_arr = np.zeros((), np.int64)
        w_arr = np.zeros((), np.float32)
        live = self._begin(state)  # the arrays the steps read and update
        gvals = {k: v for k, v in live.items() if k in self.grad_leaves}
        # running statistics are each rank's own (not in the shared memory of SharedMemoryStep)
        gvals.update({b.name: state[b.name] for b in tr.buffers if b.name in self.grad_leaves})
        gvals.update({k: np.asarray(v, np.float32).reshape(()) for k, v in scalars.items() if k in self.grad_leaves})
        gvals["grad_weight"] = w_arr
        offs = {size: np.zeros((), np.int64) for size in self.offsets or {}}
        gvals.update({node.name: offs[size] for size, node in (self.offsets or {}).items()})
        if "rng_key" in self.grad_leaves:
            gvals["rng_key"] = key_arr
        update = self._bind_update(self._update_values(live, scalars, step_arr))
        calls = {}  # rows -> the gradient call bound to this epoch's arrays (checked once, not every step)
        loss_sum, done, bad = 0.0, 0, None
        full = shares(B, dist.size)
        for s in range(nsteps):
            start = s * B
            nb = min(B, n - start)
            lo, hi = (full if nb == B else shares(nb, dist.size))[dist.rank]
            b = hi - lo
            # dropout: masks keyed by the element's index in the global batch (its rows' offset), as in one
            # process; a model whose dropout the offsets cannot reach gets a key per rank instead
            own = 0 if self.offsets is not None else dist.rank * RANK_KEY
            key = (seed * KEY_MULT + step0 + s + own) & (2**64 - 1)
            for size, a in offs.items():
                a[...] = lo * size
            key_arr[...] = key - 2**64 if key >= 2**63 else key
            step_arr[...] = step0 + s + 1
            if b:
                idx = perm[start + lo:start + hi]
                x, y = xb[:b], yb[:b]
                np.take(X, idx, axis=0, out=x)
                np.take(Y, idx, axis=0, out=y)
                w_arr[...] = np.float32(b / nb)
                call = calls.get(b)
                if call is None:
                    gvals["x"], gvals["y"] = x, y
                    call = calls[b] = self.grad_fn.bind(gvals, out=self.outs)
                call()
            else:  # more ranks than rows in this (last) batch: this rank adds nothing
                self.outs[0][...] = 0
                for g in self.grad_views:
                    g[...] = 0
            self.samples += b
            loss = self._reduce_and_update(update)
            if not np.isfinite(loss):
                bad = s
                break
            loss_sum += loss * nb
            done = s + 1
        self._end(state)
        samples = min(done * B, n)
        return EpochStats(loss_sum, done, samples, bad, perm)

    # -- the allreduce path: every rank holds its own copy of the state and applies the whole update
    def _begin(self, state: dict) -> dict:
        return state

    def _end(self, state: dict) -> None:
        pass

    def _update_values(self, live: dict, scalars: dict, step_arr: np.ndarray) -> dict:
        uvals = {k: v for k, v in live.items() if k in self.update_leaves}
        uvals.update({k: np.asarray(v, np.float32).reshape(()) for k, v in scalars.items()
                      if k in self.update_leaves})
        uvals.update({leaf.name: v for leaf, v in zip(self.g_in, self.grad_views, strict=True)})
        if "step" in self.update_leaves:
            uvals["step"] = step_arr
        self._pen_out = [np.zeros((), np.float32)] if self.trainer.penalty is not None else None
        if self.norm_fn is not None:
            uvals["grad_sumsq"] = self._sumsq
            nvals = {k: v for k, v in uvals.items() if np.ndim(v) == 0}
            for i, (p, g) in enumerate(zip(self.trainer.params, self.grad_views, strict=True)):
                nvals[p.name], nvals[f"slot0.{i}"] = live[p.name].reshape(-1), g.reshape(-1)
            nleaves = {leaf.name for leaf in self.norm_fn.signature.inputs}
            self._norm = self.norm_fn.bind({k: v for k, v in nvals.items() if k in nleaves}, out=[self._sumsq])
        return uvals

    def _bind_update(self, uvals: dict):
        """The update call on this epoch's arrays, checked once (`CompiledFunction.bind`)."""
        return self.update_fn.bind(uvals, out=self._pen_out)

    def _reduce_and_update(self, update) -> float:
        """Sum the gradients over the ranks, apply the update (`update`: from `_bind_update`); the step's loss
        (the same on every rank)."""
        self.dist.allreduce_(self.flat)
        loss = float(self.flat[self.loss_slot])
        if self._norm is not None:
            self._norm()
        update()
        if self._pen_out is not None:
            loss += float(self._pen_out[0])
        return loss

    def check_replicas(self, state: dict, epoch: int) -> None:
        """Parameters must be bitwise equal on every rank: a hash each epoch; a mismatch names the ranks. The
        layers' running statistics (each rank's own during the epoch) become rank 0's on every rank first."""
        names = [b.name for b in self.trainer.buffers]
        if names:
            stats = self.dist.bcast({n: state[n] for n in names} if self.dist.rank == 0 else None,
                                    "the running statistics")
            for n in names:
                state[n][...] = stats[n]
        names = sorted(p.name for p in self.trainer.params)
        digests = self.dist.allgather(params_digest(state, names), "the parameter check")
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise GraphcError(f"distributed training: after epoch {epoch} the parameters of rank(s) "
                              f"{', '.join(map(str, odd))} differ from rank 0's (a non-deterministic reduction or a "
                              "corrupted rank); stopping")


class SharedMemoryStep(DataParallelStep):
    """Ranks that share one machine (MPI-3 shared memory, `MPI_Win_allocate_shared`): one copy of the parameters
    and optimizer state for all of them, and a gradient slot per rank. A step: each rank writes its gradient into
    its slot; barrier; rank r sums the slots in rank order over its own 1/P of every parameter and applies the
    update to that share in place; barrier. No copy of the gradient goes anywhere and each element is updated
    once, so every rank reads bitwise the same parameters by construction (and a fixed P gives a fixed order)."""

    def __init__(self, trainer, dist: Distributed, node):
        self.node = node  # the node's communicator (every rank of the run)
        super().__init__(trainer, dist)

    def _build_update(self) -> None:
        tr, dist = self.trainer, self.dist
        P, r = dist.size, dist.rank
        MPI = dist.MPI
        sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in tr.params]
        seg = [-(-n // 16) * 16 for n in sizes]
        slot_len = sum(seg) + 16  # then the weighted data loss, and the update's penalty share
        state_names = [p.name for p in tr.params] + [n for p in tr.params for n in tr.opt.state_names(p)]
        state_shape = {p.name: p.shape for p in tr.params}
        for p in tr.params:
            for n in tr.opt.state_names(p):
                state_shape[n] = p.shape
        state_len = sum(-(-int(np.prod(state_shape[n], dtype=np.int64)) // 16) * 16 for n in state_names)
        total = P * slot_len + state_len + 16
        self.win = MPI.Win.Allocate_shared(total * 4 if r == 0 else 0, 4, comm=self.node)
        buf, _ = self.win.Shared_query(0)
        raw = np.frombuffer(buf, np.float32)
        base = (-(raw.ctypes.data // 4)) % 16  # 64-byte aligned start
        self.slots = [raw[base + q * slot_len: base + (q + 1) * slot_len] for q in range(P)]
        offs = np.cumsum([0, *seg])[:-1]
        self.slot_grads = [[sl[o:o + n].reshape(p.shape) for o, n, p in zip(offs, sizes, tr.params, strict=True)]
                           for sl in self.slots]
        mine = self.slots[r]
        self.grad_views = self.slot_grads[r]
        self.outs = [mine[slot_len - 16:slot_len - 15].reshape(()), *self.grad_views]
        self._pen_view = mine[slot_len - 15:slot_len - 14].reshape(())
        self._loss_at, self._pen_at = slot_len - 16, slot_len - 15
        # clipping: this rank's share of the gradient's sum of squares, then every rank adds them in rank order
        self._sumsq_view = mine[slot_len - 14:slot_len - 13].reshape(())
        self._sumsq_at = slot_len - 14
        self._sumsq = np.zeros((), np.float32)
        self.shared: dict[str, np.ndarray] = {}
        off = base + P * slot_len
        for n in state_names:
            k = int(np.prod(state_shape[n], dtype=np.int64))
            self.shared[n] = raw[off:off + k].reshape(state_shape[n])
            off += -(-k // 16) * 16
        self.win.Set_errhandler(MPI.ERRORS_RETURN)  # errors named by the guard, not a fatal abort
        self.win.Lock_all(MPI.MODE_NOCHECK)
        # the update over this rank's share of each parameter, flattened: 1-D inputs, one length symbol each
        self.bounds = [shares(n, P)[r] for n in sizes]
        self.update_fn, self._has_pen, self._slot_names = slice_update_program(tr, P)
        self.update_leaves = {leaf.name for leaf in self.update_fn.signature.inputs}
        self.norm_fn = slice_norm_program(tr, P)
        self._norm = None

    def _barrier(self, what: str) -> None:
        with self.dist._guard(what):
            self.win.Sync()
            self.node.Barrier()
            self.win.Sync()

    def _begin(self, state: dict) -> dict:
        if self.dist.rank == 0:
            for n, a in self.shared.items():
                a[...] = state[n]
        self._barrier("starting an epoch")
        return self.shared

    def _end(self, state: dict) -> None:
        for n, a in self.shared.items():
            state[n][...] = a
        self._barrier("ending an epoch")  # nobody writes the shared state again before all have copied it

    def _update_values(self, live: dict, scalars: dict, step_arr: np.ndarray) -> dict:
        uvals = {}
        for i, (p, (lo, hi)) in enumerate(zip(self.trainer.params, self.bounds, strict=True)):
            uvals[p.name] = self.shared[p.name].reshape(-1)[lo:hi]
            for n in self.trainer.opt.state_names(p):
                uvals[n] = self.shared[n].reshape(-1)[lo:hi]
            for k, name in enumerate(self._slot_names[i]):
                uvals[name] = self.slot_grads[k][i].reshape(-1)[lo:hi]
        uvals.update({k: np.asarray(v, np.float32).reshape(()) for k, v in scalars.items()
                      if k in self.update_leaves})
        if "step" in self.update_leaves:
            uvals["step"] = step_arr
        if self.norm_fn is not None:
            uvals["grad_sumsq"] = self._sumsq
            nleaves = {leaf.name for leaf in self.norm_fn.signature.inputs}
            self._norm = self.norm_fn.bind({k: v for k, v in uvals.items() if k in nleaves}, out=[self._sumsq_view])
        return uvals

    def _bind_update(self, uvals: dict):
        return self.update_fn.bind(uvals, out=[self._pen_view] if self._has_pen else None)

    def _reduce_and_update(self, update) -> float:
        self._barrier("the gradient exchange")
        loss = 0.0
        for sl in self.slots:  # rank order; read before anyone can start the next step's gradients
            loss += float(sl[self._loss_at])
        if self._norm is not None:  # the global norm before any rank changes a parameter
            self._norm()
            self._barrier("the gradient norm")
            self._sumsq[...] = np.float32(sum(float(sl[self._sumsq_at]) for sl in self.slots))
        update()
        self._barrier("the update")
        if self._has_pen:
            for sl in self.slots:
                loss += float(sl[self._pen_at])
        return loss


def make_step(trainer, dist: Distributed) -> DataParallelStep:
    """The shared-memory step when every rank is on this machine (and each rank's share of every parameter is
    non-empty), else the allreduce step. GRAPHC_MPI_SHARED=0 forces the allreduce step."""
    MPI = dist.MPI
    # the step's buffers are sized from the parameters: ranks whose models differ must not get that far
    dist.agree("the model's parameters (names and shapes)", repr([(p.name, p.shape) for p in trainer.params]))
    node = dist.comm.Split_type(MPI.COMM_TYPE_SHARED, dist.rank)
    sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in trainer.params]
    on = os.environ.get("GRAPHC_MPI_SHARED", "1") != "0"
    if on and node.Get_size() == dist.size and min(sizes) >= dist.size:
        node.Set_errhandler(MPI.ERRORS_RETURN)
        return SharedMemoryStep(trainer, dist, node)
    node.Free()
    return DataParallelStep(trainer, dist)
