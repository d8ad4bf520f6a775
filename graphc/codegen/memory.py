"""The memory plan: temporaries share one arena, placed by liveness; barriers go where threads could race.

Sizes can depend on the batch dim N; a plan is made for concrete dims and stays valid for any smaller batch
(offsets are fixed, buffers only shrink)."""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc.codegen import gemm as gemm_mod
from graphc.codegen.emit import ITEMSIZE
from graphc.codegen.kernels import GemmKernel, ScanKernel, all_kernels, split_rows
from graphc.codegen.schedule import Program
from graphc.codegen.target import Target
from graphc.ir.shapes import eval_dim

ALIGN = 64
# Temporaries of a page or more start at distinct offsets modulo a page (STAGGER lines apart, an odd count, so the
# first 64 get 64 distinct residues). A loop that streams many such buffers at the same index (an LSTM step
# writes ten per-step histories) otherwise meets all of them in one L1 set and with 4K-aliased addresses:
# placed page-aligned, the LSTM's forward cell ran 25% slower on Zen 4. The cost is under a page per buffer.
PAGE = 4096
STAGGER = 17 * ALIGN


def _nbytes(buf, env) -> int:
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


def liveness(program: Program) -> dict[int, tuple[int, int]]:
    """temp buffer index -> (first kernel that writes it, last kernel that touches it)."""
    live: dict[int, list[int]] = {}
    for i, k in enumerate(program.kernels):
        for b in k.writes + k.reads:
            if b.kind == "temp":
                span = live.setdefault(b.index, [i, i])
                span[0] = min(span[0], i)
                span[1] = max(span[1], i)
    return {k: (v[0], v[1]) for k, v in live.items()}


def barriers(program: Program) -> list[bool]:
    """For each kernel, whether all threads must meet before it starts: it reads what a kernel since the last
    barrier wrote, or writes what one read or wrote. Matrix products also share the packing workspace.

    Decided on buffers, not addresses, so it holds for any batch size; the arena plan then only lets two
    temporaries share storage when a barrier separates their lifetimes."""
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


def rows_workspace_bytes(k: ScanKernel, target: Target) -> int:
    """One thread's GEMM workspace slice in a row-split loop (`split_rows`: each thread runs the body's products
    alone over its rows, in its own slice): enough for any row count (the slice grows with the rows up to the M
    block), 64-byte aligned."""
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


def plan(program: Program, env: dict, nthreads: int, target: Target, flags: list[bool] | None = None) -> MemoryPlan:
    flags = barriers(program) if flags is None else flags
    live = liveness(program)
    sizes = {i: _nbytes(program.buffers[i], env) for i in live}
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
                shares.append((program.buffers[j].label, program.buffers[idx].label))
                break
        placed.append((off, off + size, span, idx))
    arena = max((e for _, e, *_ in placed), default=0)
    ws = 0
    for k in all_kernels(program.kernels):  # loops' bodies included
        if isinstance(k, ScanKernel) and split_rows(k) is not None:
            ws = max(ws, nthreads * rows_workspace_bytes(k, target))
        if isinstance(k, GemmKernel):
            m, n, kk = (eval_dim(d, env) for d in (k.m, k.n, k.k))
            cfg = gemm_mod.config_for(target, k.a.dtype, k.n if isinstance(k.n, int) else None)
            ws = max(ws, gemm_mod.workspace_bytes(m, n, kk, nthreads, target, k.a.dtype, cfg, k.a_view,
                                                     k.algorithm))
    return MemoryPlan(dict(env), offsets, sizes, (arena + ALIGN - 1) // ALIGN * ALIGN, ws, sum(sizes.values()),
                      sorted(shares), {i: program.buffers[i].label for i in offsets})
