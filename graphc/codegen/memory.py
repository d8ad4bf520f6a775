"""The memory plan: temporaries share one arena, placed by liveness; barriers go where threads could race.

Sizes can depend on the batch dim N; a plan is made for concrete dims and stays valid for any smaller batch
(offsets are fixed, buffers only shrink). A plan is made at run time from a `ProgramSpec`, what the run time
needs of a compiled program (its buffers, dims, checks, the memory plan's and the cost model's inputs): built
from the scheduled program when it is compiled, and kept beside its machine code in the compile cache, so that a
program found there runs without the compiler's stages (and without sympy). This module imports the kernel IR
only to build a spec."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphc.codegen import gemm as gemm_mod
from graphc.codegen.target import Target
from graphc.ir.shapes import ITEMSIZE, Dim, Shape, eval_dim

ALIGN = 64
# Temporaries of a page or more start at distinct offsets modulo a page (STAGGER lines apart, an odd count, so the
# first 64 get 64 distinct residues). A loop that streams many such buffers at the same index (an LSTM step
# writes ten per-step histories) otherwise meets all of them in one L1 set and with 4K-aliased addresses:
# placed page-aligned, the LSTM's forward cell ran 25% slower on Zen 4. The cost is under a page per buffer.
PAGE = 4096
STAGGER = 17 * ALIGN


@dataclass(frozen=True)
class BufferSpec:
    index: int
    label: str
    shape: Shape
    dtype: str
    kind: str


@dataclass(frozen=True)
class GemmSpec:
    """A matrix product's dims and what sizes its packing workspace."""

    m: Dim
    n: Dim
    k: Dim
    dtype: str
    a_view: tuple | None
    algorithm: str


@dataclass
class ProgramSpec:
    """What running a compiled program needs of it, in ints, names and dims (no kernel IR, no sympy)."""

    buffers: list[BufferSpec]
    inputs: list[int]  # buffer index of each signature input
    outputs: list[int]  # buffer index of each output
    symbols: list  # the run-time dims (Dim symbols), in the order the native code reads them
    consts: dict[int, np.ndarray]
    checks: list[str]  # error code k+1: what the run-time check k found
    barriers: list[bool]  # per top-level kernel: all threads meet before it
    spans: dict[int, tuple[int, int]]  # temporary buffer -> (first, last) kernel that touches it
    kernel_names: list[str]  # every kernel, loops' bodies included (depth first): the profile counters' order
    gemms: list[GemmSpec]  # every matrix product, loops' bodies included (the workspace is the largest's)
    rows_workspace: list[int]  # per thread, of each loop split by rows
    costs: list[tuple[str, Shape]]  # per top-level kernel: ("gemm", batch + (m, n, k)) or ("loop", its domain)
    # signature positions of inputs the compiled graph does not read (a training signature is kept whole: its key
    # is unread where the only draw or dropout sits in a training_switch's inference branch); set by the JIT
    unread: tuple[int, ...] = ()


def _dim_of(d):
    """A dim the compiler computed (a `Dim`, an int, or a tuple of them in a GEMM's A view), numpy ints as ints."""
    if isinstance(d, tuple):
        return tuple(_dim_of(x) for x in d)
    return int(d) if isinstance(d, np.integer) else d


def describe(program, barrier_flags: list[bool], target: Target) -> ProgramSpec:
    """The run-time spec of a scheduled program (graphc.codegen.schedule.Program) with its barriers."""
    from graphc.codegen.kernels import GemmKernel, ScanKernel, all_kernels, split_rows

    def shape(s):
        return tuple(_dim_of(d) for d in s)

    every = list(all_kernels(program.kernels))
    costs = []
    for k in program.kernels:
        if isinstance(k, GemmKernel):
            costs.append(("gemm", shape((*k.batch, k.m, k.n, k.k))))
        else:
            costs.append(("loop", shape(getattr(k, "domain", ()))))
    return ProgramSpec(
        buffers=[BufferSpec(b.index, b.label, shape(b.shape), b.dtype, b.kind) for b in program.buffers],
        inputs=[b.index for b in program.inputs],
        outputs=[b.index for b in program.outputs],
        symbols=[_dim_of(s) for s in program.symbols],
        consts={i: np.ascontiguousarray(a) for i, a in program.consts.items()},
        checks=list(program.checks),
        barriers=list(barrier_flags),
        spans=liveness(program),
        kernel_names=[k.name for k in every],
        gemms=[GemmSpec(_dim_of(k.m), _dim_of(k.n), _dim_of(k.k), k.a.dtype, _dim_of(k.a_view), k.algorithm)
               for k in every if isinstance(k, GemmKernel)],
        rows_workspace=[rows_workspace_bytes(k, target) for k in every
                        if isinstance(k, ScanKernel) and split_rows(k) is not None],
        costs=costs,
    )


def _nbytes(buf: BufferSpec, env) -> int:
    n = 1
    for d in buf.shape:
        n *= eval_dim(d, env)
    return n * ITEMSIZE[buf.dtype]


@dataclass
class MemoryPlan:
    """Where each temporary lives in the arena, for the dims in `env`."""

    env: dict
    offsets: dict[int, int]  # temp buffer index -> byte offset
    sizes: dict[int, int]  # temp buffer index -> bytes
    arena_bytes: int  # peak: the arena's size
    workspace_bytes: int  # matrix-product packing buffers (per call, all threads)
    unshared_bytes: int  # what the temporaries would take without sharing
    shares: list[tuple[str, str]] = field(default_factory=list)  # (a, b): b reuses a's storage
    labels: dict[int, str] = field(default_factory=dict)  # temp buffer index -> its label

    def placement(self) -> list[tuple[str, int, int]]:
        """(label, byte offset, bytes) of every temporary, by offset."""
        return sorted(((self.labels.get(i, f"b{i}"), o, self.sizes[i]) for i, o in self.offsets.items()),
                      key=lambda t: t[1])

    def __str__(self) -> str:
        lines = [f"arena: {self.arena_bytes} bytes peak for {len(self.offsets)} temporaries "
                 f"({self.unshared_bytes} bytes unshared), gemm workspace {self.workspace_bytes} bytes"]
        lines += [f"  {b} reuses the storage of {a}" for a, b in self.shares]
        return "\n".join(lines)


def liveness(program) -> dict[int, tuple[int, int]]:
    """temp buffer index -> (first kernel that writes it, last kernel that touches it)."""
    live: dict[int, list[int]] = {}
    for i, k in enumerate(program.kernels):
        for b in k.writes + k.reads:
            if b.kind == "temp":
                span = live.setdefault(b.index, [i, i])
                span[0] = min(span[0], i)
                span[1] = max(span[1], i)
    return {k: (v[0], v[1]) for k, v in live.items()}


def barriers(program) -> list[bool]:
    """For each kernel, whether all threads must meet before it starts: it reads what a kernel since the last
    barrier wrote, or writes what one read or wrote. Matrix products also share the packing workspace.

    Decided on buffers, not addresses, so it holds for any batch size; the arena plan then only lets two
    temporaries share storage when a barrier separates their lifetimes."""
    from graphc.codegen.kernels import GemmKernel, ScanKernel

    need: list[bool] = []
    reads: set = set()
    writes: set = set()
    for i, k in enumerate(program.kernels):
        r = {b.index for b in k.reads}
        w = {b.index for b in k.writes}
        if isinstance(k, (GemmKernel, ScanKernel)):  # a loop's body may hold matrix products
            r.add("ws")
            w.add("ws")
        hazard = i > 0 and bool((r & writes) or (w & (reads | writes)))
        need.append(hazard)
        if hazard:
            reads, writes = set(), set()
        reads |= r
        writes |= w
    return need


def rows_workspace_bytes(k, target: Target) -> int:
    """One thread's GEMM workspace slice in a row-split loop (`split_rows`: each thread runs the body's products
    alone over its rows, in its own slice): enough for any row count (the slice grows with the rows up to the M
    block), 64-byte aligned."""
    from graphc.codegen.kernels import GemmKernel, all_kernels

    out = 64
    for g in all_kernels(k.body.kernels):
        if isinstance(g, GemmKernel):
            cfg = gemm_mod.config_for(target, g.a.dtype, g.n)
            out = max(out, gemm_mod.workspace_bytes(1 << 30, g.n, g.k, 1, target, g.a.dtype, cfg, g.a_view,
                                                        g.algorithm))
    return (out + ALIGN - 1) // ALIGN * ALIGN


def _fit(off: int, residue: int | None) -> int:
    """The first offset from `off` that is 64-byte aligned and, for a staggered buffer, `residue` modulo a page."""
    off = (off + ALIGN - 1) // ALIGN * ALIGN
    return off if residue is None else off + (residue - off) % PAGE


def plan(spec: ProgramSpec, env: dict, nthreads: int, target: Target) -> MemoryPlan:
    flags = spec.barriers
    live = spec.spans
    sizes = {i: _nbytes(spec.buffers[i], env) for i in live}
    sync_points = [i for i, f in enumerate(flags) if f]

    def separated(first_done: int, later_start: int) -> bool:
        """A barrier between the last use of one buffer and the first write of the other."""
        return any(first_done < m <= later_start for m in sync_points)

    def apart(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return (a[1] < b[0] and separated(a[1], b[0])) or (b[1] < a[0] and separated(b[1], a[0]))

    placed: list[tuple[int, int, tuple[int, int], int]] = []  # (offset, end, lifetime, buffer)
    offsets: dict[int, int] = {}
    shares: list[tuple[str, str]] = []
    staggered = 0
    # biggest first, then by first use: the classic greedy that keeps the peak low
    for idx in sorted(live, key=lambda i: (-sizes[i], live[i][0], i)):
        span = live[idx]
        size = max(sizes[idx], 1)
        residue = None
        if size >= PAGE:
            residue, staggered = staggered * STAGGER % PAGE, staggered + 1

        conflicts = sorted((o, e) for o, e, other, _ in placed if not apart(span, other))
        off = _fit(0, residue)
        for o, e in conflicts:
            if off + size <= o:
                break
            off = max(off, _fit(e, residue))
        offsets[idx] = off
        for o, e, _, j in placed:
            if o < off + size and off < e:
                shares.append((spec.buffers[j].label, spec.buffers[idx].label))
                break
        placed.append((off, off + size, span, idx))
    arena = max((e for _, e, *_ in placed), default=0)
    ws = max((nthreads * b for b in spec.rows_workspace), default=0)
    for g in spec.gemms:  # loops' bodies included
        m, n, kk = (eval_dim(d, env) for d in (g.m, g.n, g.k))
        cfg = gemm_mod.config_for(target, g.dtype, g.n if isinstance(g.n, int) else None)
        ws = max(ws, gemm_mod.workspace_bytes(m, n, kk, nthreads, target, g.dtype, cfg, g.a_view, g.algorithm))
    return MemoryPlan(dict(env), offsets, sizes, (arena + ALIGN - 1) // ALIGN * ALIGN, ws, sum(sizes.values()),
                      sorted(shares), {i: spec.buffers[i].label for i in offsets})
