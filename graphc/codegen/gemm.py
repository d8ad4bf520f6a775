"""Packed, cache-blocked, register-blocked SIMD matrix multiply (GEMM) kernels in LLVM IR.

`emit_gemm` adds to an llvmlite module one function computing ``C = op(A) @ op(B)`` (or ``C += ...``), with
an optional fused epilogue applied to every element of C. The structure is BLIS's:

* K is cut into blocks of at most KC (balanced, rounded up to the unroll factor); the N range of a thread
  into blocks of at most NC columns; the M range into blocks of at most MC rows. Loop nest (default
  ``loop_order="ir_jr"``): N block > K block [pack B] > M block [pack A] > MR rows > NR columns > tile, so
  one A micro-panel stays in L1 while the B micro-panels of the packed B block stream past it from L2.
* For each (N block, K block) the thread packs op(B) into its workspace as KC x NR micro-panels
  (``Bp[k*NR + j]``), zero-padded to a multiple of NR columns; for each M block it packs op(A) as KC x MR
  micro-panels (``Ap[k*MR + i]``), zero-padded to a multiple of MR rows. Packing reads the stored layout
  directly, so Aᵀ·B and A·Bᵀ never materialize a transpose: the operand whose stored rows run along K
  (A, or B when ``trans_b``) is packed with in-register LxL transposes (shufflevector networks), the other
  (B, or A when ``trans_a``) by vector copies that walk each source row sequentially.
* Narrow non-transposed B (``ldb <= direct_b_max_ld``) in a thread with few A panels (M range
  ``<= direct_b_max_m``) is not packed: the microkernel reads full B panels in place (stride ldb) and only
  the partial edge panel is packed. Packing would be amortized over too few A panels to pay for itself.
* The microkernel keeps an MR x NR tile of C in MR * NR/L vector registers (L = SIMD lanes), and for each k
  broadcasts MR elements of the A panel against NR/L vectors of the B panel with fused multiply-adds. Edge
  tiles are computed in full on the zero padding; only the store is partial (rows checked, columns masked).
* Every element of C is a sum over k in increasing order, in blocks that depend on K only, accumulated with
  ``llvm.fmuladd`` (a fused FMA wherever the target has one). So the result does not depend on the thread
  count, on M/N blocking or on whether a tile is an edge tile: results are bitwise identical for any
  ``nthreads``.

Code layout (compile time): only the epilogue is specific to one GEMM. Everything else is emitted once per
module and shared by all its GEMMs, looked up in ``module.globals`` by canonical names (internal, noinline):
the driver (the loop nest above, with the transpositions, accumulate flag, packing routines and epilogue pass
passed at run time; ``graphc.gemm.driver.f32x16.12x32...`` for the config), the microkernel
(``graphc.gemm.ukernel.f32x16.12x32.k4.pf3``: dtype and lanes, MR x NR, unroll, C prefetch) and the packing
routines (``graphc.gemm.pack_copy.f32x16.w12`` / ``pack_trans``, only those some GEMM uses). `emit_gemm`'s
``name`` is a small wrapper calling the driver with its constants, and ``name.epilogue`` (with an epilogue)
is its epilogue pass. LLVM time (benchmarks/bench_compile.py, 2-vCPU Rocket Lake): ~0.14 s for the first
GEMM of a module (its shared code, two packing routines), then ~0.01-0.03 s per GEMM; it was ~0.3 s per GEMM
when each had its own microkernel with the epilogue inlined into every store path.

Emitted function (row-major storage; element strides; all dims in elements)::

    void name(ptr A, ptr B, ptr C, i64 M, i64 N, i64 K, i64 lda, i64 ldb, i64 ldc,
              ptr workspace, i32 tid, i32 nthreads, <extra_args...>)

* A is M x K (``trans_a``: stored K x M), B is K x N (``trans_b``: stored N x K), C is M x N; lda/ldb/ldc
  are the row strides of the stored matrices.
* A dimension given to `emit_gemm` as an int is a compile-time constant: the matching runtime argument is
  ignored. ``None`` means the runtime argument is used.
* K must be >= 1 (the caller rejects K = 0: the kernel would leave C untouched, which is not ``C = 0``).
  M or N = 0 is a no-op.
* Threads: the caller runs the same function concurrently with ``tid = 0 .. nthreads-1``. The MR x NR tile
  grid is split along M or N (whichever gives the smaller padded per-thread work; ties split the larger
  dimension, then M), K is never split, threads write disjoint tiles and pack into their own workspace
  slices, so there is no synchronization inside the kernel.
* ``workspace`` must be 64-byte aligned and at least `workspace_bytes` (M, N, K, nthreads) bytes, computed
  with the same target, dtype and config. A, B, C are only assumed element-aligned.

Epilogue: ``epilogue(ctx: EpilogueContext) -> ir.Value`` is called ONCE per `emit_gemm`, at code-generation time, to
emit the body of the loop of the GEMM's epilogue pass. After the last K block of each tile, the microkernel stores the
finished tile (already ``+ old C`` when ``accumulate=True`` or K spans several K blocks) to a per-thread MR x NR buffer
on the driver's stack, still in L1; the pass ``name.epilogue`` then walks its valid part (column vectors outer, rows
inner) and stores ``epilogue(ctx)`` to C. ``ctx.acc`` is ALWAYS a full ``<L x T>`` vector (L = ``ctx.lanes``, the
config's: `Target.f32_lanes` or ``f64_lanes``, or half of them), holding columns ``ctx.col .. ctx.col + L - 1`` of row
``ctx.row``. ``ctx.mask`` is an ``<L x i1>`` (a run-time value) telling which lanes are real columns: all set except on
the column edge. Lanes outside it are discarded by the masked store, but must not be used to touch memory: use
``ctx.load``, which masks. It is None only where every vector is full (N static and a multiple of NR). Rows outside M
are never passed. The epilogue must return an ``<L x T>`` vector, the value to store, or None: then C is scratch (the K
blocks' partial sums) and the pass leaves it as it is. ``ctx.extra_args`` are the function's extra arguments
(`extra_args` types, passed through to the pass), e.g. a bias pointer: arguments of ``ctx.builder.function``, so code
that uses only them may be hoisted into that function's entry block. Stores of other buffers made by the epilogue
(masked with ``ctx.mask``) are fine; it must not touch C through another pointer (C is noalias).

Cost of running the epilogue out of line: the tile makes one more round trip through L1 (24 vector stores and
loads per 12 x 32 tile, and a call): measured (bias + relu) 1.5-3% of a GEMM with K = 128, ~1% at K = 256-784,
nothing measurable at 1024.

Tuning (`GemmConfig`, chosen by `default_config`; measured on a 2-vCPU Sapphire-Rapids-class Xeon, 48 KB
L1d and 2 MB L2 per core): on AVX-512, MR x NR = 12 x 32 float32 (12 x 16 float64): 24 zmm accumulators + 2
B vectors + 1 broadcast = 27 of 32 registers, 14 loads per 24 FMAs. KC = 256: the A micro-panel (12 KB) stays
in L1 and a B micro-panel (32 KB) streams from L2 per tile; C is read and written once per K block.
NC = 1024 float32 (512 float64): the packed B block is 1 MB of the 2 MB L2. MC = 240 (only sets how much A
is packed at once in this loop order). Direct B: ldb <= 2 KB of elements (1 KB on AVX2), M range <= 256. With 16 vector
registers (AVX2, SSE): MR x NR = 6 x 2L, with a 4-row edge tile (`_edge_rows`). The microkernel alone runs at ~93%
of the FMA peak with its data in L1; at n = 1024 packing (bound by L3 bandwidth) and C traffic cost another ~10-15%.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from llvmlite import ir

from graphc.codegen.target import Target

__all__ = [
    "emit_prepack",
    "prepacked_elements",
    "EpilogueContext",
    "GemmConfig",
    "default_config",
    "emit_gemm",
    "workspace_bytes",
]

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_PTR = ir.PointerType()
_VOID = ir.VoidType()

_DTYPES = {"float32": (ir.FloatType, 4), "float64": (ir.DoubleType, 8)}


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GemmConfig:
    """Blocking parameters. nr must be a multiple of the SIMD lanes; kc/mc/nc multiples of unroll/mr/nr."""

    mr: int  # rows of the register tile (broadcast operand)
    nr: int  # columns of the register tile (vector operand), a multiple of the lanes
    kc: int  # K block: depth of the packed micro-panels
    mc: int  # M block: rows of A packed at once (the A block, kc x mc)
    nc: int  # N block: columns of B packed at once (the B block, kc x nc)
    unroll: int = 4  # k-loop unroll of the microkernel
    prefetch_c: int = 3  # prefetch the C tile before the k loop with this locality (3: L1, 2: L2; 0: off)
    loop_order: str = "ir_jr"  # inner loops: "jr_ir" (B panel in L1) or "ir_jr" (A panel in L1)
    # non-transposed B with ldb <= direct_b_max_ld, in a thread whose M range is <= direct_b_max_m rows (so
    # that packing would be reused by few A panels): full B panels are read in place, only the edge packed
    direct_b_max_ld: int = 0
    direct_b_max_m: int = 0
    direct_b_max_span: int = 0  # ... and whose K block spans at most this many bytes of B (0: any)
    lanes: int = 0  # lanes of the product's vectors (0: the target's; half of them for products a few columns wide)

    def __post_init__(self):
        if self.mr < 1 or self.nr < 1 or self.unroll < 1:
            raise ValueError(f"bad GEMM config {self}")
        if self.kc % self.unroll or self.mc % self.mr or self.nc % self.nr:
            raise ValueError(f"kc/mc/nc must be multiples of unroll/mr/nr: {self}")
        if self.loop_order not in ("jr_ir", "ir_jr"):
            raise ValueError(f"loop_order must be 'jr_ir' or 'ir_jr', not {self.loop_order!r}")


def _lanes(target: Target, dtype: str) -> int:
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported GEMM dtype {dtype!r}: use 'float32' or 'float64'")
    return target.f32_lanes if dtype == "float32" else target.f64_lanes


DEFAULT_KC = 256  # the A micro-panel (MR x KC) stays in L1 while B micro-panels stream past it from L2

# B rows up to this many bytes apart are read in place by the default config (`direct_b_max_ld`); wider, or
# transposed, B is packed. AVX2: 1 KB only. With 2 KB (an LSTM's dZ, 512 float32 columns) a K block's panel read in
# place spans 512 KB (128 pages, the whole L2 of a Zen 3): the LSTM step's Xᵀ·dZ ran 13% and Hᵀ·dZ 8% faster packed
# there (benchmarks/bench_rnn.py's step, four alternated runs); AVX-512 machines measured 2 KB as a win.
DIRECT_B_MAX_BYTES = 2048
DIRECT_B_MAX_BYTES_AVX2 = 1024
# ... and on AVX2 only where a K block's panel spans at most this many bytes of B (its rows ldb apart): a panel
# read in place takes one line per row, and rows ldb apart share few L1 sets (ldb = 1 KB: 4 of a 32 KB L1's 64),
# so a panel over 32 KB cannot stay in L1 beside the A panel. Zen 3, packed instead of read in place: 128x784 .
# 784x256 (panels of 196 rows 1 KB apart) 61-65 -> 72-75 GFLOP/s, 32 rows 62 -> 69; short panels (K = 32, 64)
# stay in place, where packing measured slower.
DIRECT_B_MAX_SPAN_AVX2 = 32 * 1024
# A loop-invariant B is packed once per call where any target's driver would pack it on every step (rows more than
# this many bytes apart, or a K block spanning more than DIRECT_B_MAX_SPAN_AVX2: `packed_somewhere`, asked by
# graphc.codegen.schedule._packs_b, which runs before a target is chosen)
DIRECT_B_PACKED_IN_LOOPS = min(DIRECT_B_MAX_BYTES, DIRECT_B_MAX_BYTES_AVX2)


def packed_somewhere(ldb: int, k: int, esize: int) -> bool:
    """Whether some target's default driver packs a non-transposed B of K rows ldb elements apart (esize bytes
    each) rather than reading it in place: rows too far apart (DIRECT_B_PACKED_IN_LOOPS), or, on AVX2, a K block
    (`_k_block` of the default KC) spanning more than DIRECT_B_MAX_SPAN_AVX2 bytes. An LSTM's backward product
    dZ·Whᵀ (Whᵀ 512 x 128: rows 512 bytes apart, K blocks of 256 rows spanning 128 KB) is the second kind."""
    if ldb * esize > DIRECT_B_PACKED_IN_LOOPS:
        return True
    kblock = _rup(_cdiv(k, _cdiv(k, DEFAULT_KC)), GemmConfig.unroll)
    return kblock * ldb * esize > DIRECT_B_MAX_SPAN_AVX2


def default_config(target: Target, dtype: str = "float32") -> GemmConfig:
    """The tuned blocking for `target` and `dtype` (see the module docstring)."""
    lanes = _lanes(target, dtype)
    esize = _DTYPES[dtype][1]
    if target.vector_bits >= 512:
        mr, nr = 12, 2 * lanes
    else:  # 16 vector registers: 12 accumulators + 2 B vectors + 1 broadcast
        mr, nr = 6, 2 * lanes
    kc = DEFAULT_KC
    nc = nr * max(1, (1 << 20) // (kc * esize * nr))  # the packed B block (KC x NC): 1 MB of the 2 MB L2
    mc = mr * max(1, 240 // mr)
    direct = DIRECT_B_MAX_BYTES if target.vector_bits >= 512 else DIRECT_B_MAX_BYTES_AVX2
    span = 0 if target.vector_bits >= 512 else DIRECT_B_MAX_SPAN_AVX2
    return GemmConfig(mr=mr, nr=nr, kc=kc, mc=mc, nc=nc, loop_order="ir_jr", direct_b_max_ld=direct // esize,
                      direct_b_max_m=256, direct_b_max_span=span)


def config_for(target: Target, dtype: str = "float32", N: int | None = None) -> GemmConfig:
    """The config for a product with static column count N: one vector wide (NR = lanes) when N fits in it (an
    output layer of 10 classes would otherwise compute 32 columns, 22 of them padding), half a vector wide
    (vectors of half the lanes) when N fits in that (a first convolution's 6 filters: 6 of 8 lanes work, not 6
    of 16; where a core runs two half-width FMAs per full one, as Zen 4 does, that doubles the product's
    speed, and elsewhere it costs nothing), else the default."""
    cfg = default_config(target, dtype)
    lanes = _lanes(target, dtype)
    if N is not None and N <= lanes // 2 and lanes >= 8 and target.vector_bits >= 512:
        half = lanes // 2
        return replace(cfg, nr=half, nc=half * (cfg.nc // cfg.nr), lanes=half)
    if N is not None and N <= lanes < cfg.nr:
        return replace(cfg, nr=lanes, nc=lanes * (cfg.nc // cfg.nr))
    return cfg


# -------------------------------------------------------------------------------------------- workspace


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _rup(a: int, b: int) -> int:
    return _cdiv(a, b) * b


# Resident B: when K spans several K blocks, M several M blocks, and all of a thread's packed B block (K x NC)
# fits in this many bytes (in L2), the thread packs every K block of B first and then runs M blocks outside K
# blocks, so that an M block's C tiles stay in L2 while its K blocks are summed. Otherwise (BLIS's order) every K
# block streams the thread's whole C range through memory again: a 3x3 convolution's product at batch 32 (C of
# 12.8 MB a thread, K = 576 in 3 blocks) ran 136 GFLOP/s instead of 170 at batch 8. Each element is the same sum
# over the same K blocks in the same order either way.
RESIDENT_B_BYTES = 512 * 1024


def _resident(M: int, N: int, K: int, cfg: GemmConfig, esize: int) -> bool:
    return K > cfg.kc and M > cfg.mc and _rup(K, cfg.unroll) * min(cfg.nc, _rup(N, cfg.nr)) * esize <= RESIDENT_B_BYTES


def _slice_elems(M: int, N: int, K: int, cfg: GemmConfig, esize: int) -> tuple[int, int]:
    """(A part, B part) of one thread's workspace slice, in elements. Mirrored in IR by `_ir_slice`."""
    align = 64 // esize
    kcmax = min(cfg.kc, _rup(K, cfg.unroll))
    a = _rup(min(cfg.mc, _rup(M, cfg.mr)) * cfg.kc, align)  # a row-major view block keeps rows KC apart
    cols = min(cfg.nc, _rup(N, cfg.nr))
    b = kcmax * cols
    if K > cfg.kc and M > cfg.mc:
        # room for a resident B of these dims or any smaller ones (a plan made for the largest batch serves every
        # smaller one: fewer rows K may make B resident): at most RESIDENT_B_BYTES, the last block rounded up
        b = max(b, min(RESIDENT_B_BYTES // esize, _rup(K, cfg.unroll) * cols) + cfg.unroll * cols)
    return a, _rup(b, align)


def workspace_bytes(
    M: int,
    N: int,
    K: int,
    nthreads: int,
    target: Target,
    dtype: str = "float32",
    config: GemmConfig | None = None,
    a_view: tuple | None = None,
    algorithm: str = "",
) -> int:
    """Bytes of 64-byte-aligned workspace the kernel needs for these (runtime) dims and thread count (a Winograd
    or direct product, with its A view, may need more)."""
    if min(M, N, K) < 0 or nthreads < 1:
        raise ValueError(f"bad GEMM workspace request M={M} N={N} K={K} nthreads={nthreads}")
    _lanes(target, dtype)
    cfg = config or default_config(target, dtype)
    esize = _DTYPES[dtype][1]
    a, b = _slice_elems(max(M, 1), max(N, 1), max(K, 1), cfg, esize)
    kind = _winograd_kind(a_view, N, K, M, False, False, cfg, cfg.lanes or _lanes(target, dtype)) \
        if algorithm == "winograd" else None
    if kind is not None:
        part = _wino_slice if kind[0] == "fwd" else _wino_dw_slice
        a, b = max(a + b, sum(part(kind[1][0], N, cfg, esize))), 0
    lanes = _lanes(target, dtype)
    geo = expanded_geometry(a_view, N, K, M, False, False, lanes, esize) if algorithm == "expanded" else None
    if geo is not None:
        a, b = max(a + b, _expanded_slice(geo, N, lanes, esize)), 0
    geo = rows_dw_geometry(a_view, N, K, M, False, False, lanes) if algorithm == "rows" else None
    if geo is not None:
        a, b = max(a + b, _rows_dw_slice(geo, N, lanes)), 0
    return nthreads * (a + b) * esize


# ------------------------------------------------------------------------------------------- epilogue


@dataclass
class EpilogueContext:
    """What an epilogue sees for the vector of C its loop body computes (see the module docstring)."""

    builder: ir.IRBuilder
    acc: ir.Value  # <lanes x T>: the finished sum (plus old C when accumulating)
    row: ir.Value  # i64 row of C
    col: ir.Value  # i64 first column of C covered by acc
    mask: ir.Value | None  # <lanes x i1> of valid columns (all set but on the N edge); None: always full
    extra_args: tuple[ir.Value, ...]
    lanes: int
    elem_type: ir.Type
    _gen: _Gen = field(repr=False, default=None)
    # i1, with a mask: the lanes past it at this row of C (and of row-major stores of C's shape) may be written
    # back as read (`blend_store`): they are the next row of the same tile or padding, this thread's
    whole_ok: ir.Value | None = None

    def load(self, base: ir.Value, index: ir.Value) -> ir.Value:
        """Load ``lanes`` elements at ``base[index ...]`` (masked by ``mask``, masked-off lanes read as 0)."""
        return self._gen.load_vec(self.builder, base, index, self.mask)

    def splat(self, scalar: ir.Value) -> ir.Value:
        """Broadcast a scalar of the element type to all lanes."""
        return self._gen.splat(self.builder, scalar)


# ------------------------------------------------------------------------------------------- IR helpers


def _c64(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


def slow_masked_stores(target: Target) -> bool:
    """Whether a masked vector store costs many plain ones: AVX2's vmaskmovps is microcoded on AMD's cores (~70% of
    a packing routine's and ~60% of a narrow convolution epilogue's time on Zen 3); AVX-512's masked stores are
    plain stores."""
    return target.vector_bits < 512 and target.triple.startswith("x86_64")


def _vector_bits_of(vty: ir.VectorType) -> int:
    e = vty.element
    width = {"float": 32, "double": 64}.get(str(e)) or getattr(e, "width", 0)
    return width * vty.count


def blend_store(b: ir.IRBuilder, val: ir.Value, ptr: ir.Value, align: int, mask: ir.Value, whole_ok, mstore) -> None:
    """Store the lanes of `val` that `mask` selects at `ptr`: where `whole_ok` (an i1: the other lanes' bytes are
    in bounds and no other thread writes them now), as one plain store of `val` blended with what memory holds
    (load, select, store: those lanes written back as read); else with the masked store `mstore`."""
    if _vector_bits_of(val.type) not in (128, 256):  # not one xmm/ymm register (the asm below needs one)
        b.call(mstore, [val, ptr, ir.Constant(_I32, align), mask])
        return
    with b.if_else(whole_ok) as (whole, masked):
        with whole:
            old = b.load(ptr, typ=val.type, align=align)
            # hidden from the optimizer (an empty asm passing the register through): LLVM turns a store of
            # select(mask, val, load of the same address) back into the masked store
            old = b.asm(ir.FunctionType(val.type, [val.type]), "", "=x,0", [old], False)
            b.store(b.select(mask, val, old), ptr, align=align)
        with masked:
            b.call(mstore, [val, ptr, ir.Constant(_I32, align), mask])


class _Gen:
    """Types, intrinsics and small emission helpers for one kernel."""

    def __init__(self, module: ir.Module, target: Target, dtype: str, cfg: GemmConfig, declare: bool = False):
        self.module = module
        self.cfg = cfg
        self.declare = declare  # the shared helpers declared only (they come from the helper library)
        self.L = cfg.lanes or _lanes(target, dtype)
        ety, self.esize = _DTYPES[dtype]
        self.T = ety()
        self.V = ir.VectorType(self.T, self.L)
        self.M = ir.VectorType(_I1, self.L)
        self.valign = min(64, self.L * self.esize)
        tsuf = "f32" if dtype == "float32" else "f64"
        self.tag = f"{tsuf}x{self.L}"  # in the names of the shared helpers
        vsuf = f"v{self.L}{tsuf}"
        self.fmuladd = self._declare(f"llvm.fmuladd.{vsuf}", self.V, [self.V, self.V, self.V])
        self.mload = self._declare(f"llvm.masked.load.{vsuf}.p0", self.V, [_PTR, _I32, self.M, self.V])
        self.mstore = self._declare(f"llvm.masked.store.{vsuf}.p0", _VOID, [self.V, _PTR, _I32, self.M])
        self.prefetch = self._declare("llvm.prefetch.p0", _VOID, [_PTR, _I32, _I32, _I32])
        self.zero = ir.Constant(self.V, None)
        self.slow_mstore = slow_masked_stores(target)

    def _declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    # pointers and memory
    def gep(self, b: ir.IRBuilder, base: ir.Value, idx: ir.Value, inbounds: bool = True) -> ir.Value:
        return b.gep(base, [idx], inbounds=inbounds, source_etype=self.T)

    def load_vec(self, b, base, idx, mask=None, align=None):
        p = self.gep(b, base, idx)
        if mask is None:
            return b.load(p, typ=self.V, align=align or self.esize)
        return b.call(self.mload, [p, ir.Constant(_I32, self.esize), mask, self.zero])

    def store_vec(self, b, val, base, idx, mask=None, align=None):
        p = self.gep(b, base, idx)
        if mask is None:
            b.store(val, p, align=align or self.esize)
        else:
            b.call(self.mstore, [val, p, ir.Constant(_I32, self.esize), mask])

    def splat(self, b: ir.IRBuilder, scalar: ir.Value) -> ir.Value:
        """Broadcast a scalar (of any type) to an L-lane vector."""
        vt = ir.VectorType(scalar.type, self.L)
        v = b.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(_I32, 0))
        zeros = ir.Constant(ir.VectorType(_I32, self.L), [0] * self.L)
        return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), zeros)

    def lane_mask(self, b: ir.IRBuilder, first: int, limit: ir.Value) -> ir.Value:
        """<L x i1>: lane l is set when first + l < limit (limit an i64 value)."""
        idx = ir.Constant(ir.VectorType(_I64, self.L), [first + i for i in range(self.L)])
        return b.icmp_signed("<", idx, self.splat(b, limit))

    def const_mask(self, width: int) -> ir.Constant:
        return ir.Constant(self.M, [1 if i < width else 0 for i in range(self.L)])

    def transpose(self, b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
        return lane_transpose(b, rows)


def lane_transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """LxL transpose of L vectors of L lanes (L a power of two) by log2(L) rounds of lo/hi interleaves:
    out[j] lane i = rows[i] lane j."""
    L = len(rows)
    h = L // 2
    lo = ir.Constant(ir.VectorType(_I32, L), [x for p in zip(range(h), range(L, L + h), strict=True) for x in p])
    hi = ir.Constant(
        ir.VectorType(_I32, L), [x for p in zip(range(h, L), range(L + h, 2 * L), strict=True) for x in p]
    )
    r = list(rows)
    for _ in range(int(math.log2(L))):
        new: list[ir.Value] = [None] * L
        for i in range(h):
            new[2 * i] = b.shuffle_vector(r[i], r[i + h], lo)
            new[2 * i + 1] = b.shuffle_vector(r[i], r[i + h], hi)
        r = new
    return r


NO_UNROLL = "llvm.loop.unroll.disable"
# no runtime (partial) unrolling of a loop whose trip count is known only at run time; a static trip count may
# still be unrolled in full. LLVM's limit for it comes from the CPU's scheduling model (its loop buffer): on Zen 4
# it copies a vector loop's body 4-8 times where a Xeon's model leaves it whole.
NO_RUNTIME_UNROLL = "llvm.loop.unroll.runtime.disable"


def loop_md(module: ir.Module, prop: str) -> ir.Value:
    """Fresh loop metadata ``!N = !{!N, !{prop}}`` (a loop ID refers to itself), for a latch's "llvm.loop"."""
    p = module.add_metadata([ir.MetaDataString(module, prop)])
    md = ir.values.MDValue(module, [p], name=str(len(module.metadata)))
    md.operands = (md, p)
    return md


class _Loop:
    """``for i in range(start, stop, step)`` (i64, step > 0), as a context manager yielding i.

    ``unroll=False`` tells LLVM not to unroll it (where unrolled copies would cost compile time only);
    ``unroll="static"`` to unroll it only in full, where its trip count is a constant."""

    def __init__(self, b: ir.IRBuilder, start, stop, step, name: str = "i", unroll: bool | str = True):
        self.b, self.start, self.stop, self.step, self.name = b, start, stop, step, name
        self.unroll = unroll

    def __enter__(self) -> ir.Value:
        b = self.b
        fn = b.function
        self.body = fn.append_basic_block(self.name + ".body")
        self.exit = fn.append_basic_block(self.name + ".exit")
        pre = b.block
        b.cbranch(b.icmp_signed("<", self.start, self.stop), self.body, self.exit)
        b.position_at_end(self.body)
        self.i = b.phi(_I64, name=self.name)
        self.i.add_incoming(self.start, pre)
        return self.i

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return False
        b = self.b
        nxt = b.add(self.i, self.step, name=self.name + ".next")
        self.i.add_incoming(nxt, b.block)
        br = b.cbranch(b.icmp_signed("<", nxt, self.stop), self.body, self.exit)
        if self.unroll is not True:
            br.set_metadata("llvm.loop", loop_md(b.module, NO_RUNTIME_UNROLL if self.unroll == "static" else NO_UNROLL))
        b.position_at_end(self.exit)
        return False


class _Steps:
    """``for (i = 0; i < stop; i += step)`` with the step computed in the body: ``with _Steps(b, fn, stop, name)
    as s:`` ... (``s.i`` the counter) ... ``s.step(n)`` at the end of the body."""

    def __init__(self, b: ir.IRBuilder, fn: ir.Function, stop: ir.Value, name: str):
        self.b, self.fn, self.stop, self.name = b, fn, stop, name
        self._next = None

    def __enter__(self) -> _Steps:
        b = self.b
        pre = b.block
        self.body = self.fn.append_basic_block(self.name)
        self.done = self.fn.append_basic_block(self.name + ".done")
        b.cbranch(b.icmp_signed(">", self.stop, _c64(0)), self.body, self.done)
        b.position_at_end(self.body)
        self.i = b.phi(_I64, name=self.name)
        self.i.add_incoming(_c64(0), pre)
        return self

    def step(self, n: ir.Value) -> None:
        self._next = n

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return False
        b = self.b
        nxt = b.add(self.i, self._next)
        self.i.add_incoming(nxt, b.block)
        b.cbranch(b.icmp_signed("<", nxt, self.stop), self.body, self.done)
        b.position_at_end(self.done)
        return False


def _smin(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _cdiv_ir(b, x, y):
    return b.sdiv(b.add(x, b.sub(y, _c64(1))), y)


def _rup_ir(b, x, y):
    return b.mul(_cdiv_ir(b, x, y), y)


def _div1(b, op: str, x, y):
    """x sdiv (op "div") or srem (op "rem") a run-time y, branching around the division when y == 1 (one
    thread, one block): a 64-bit division costs ~15 cycles, and a small product's driver would pay for ten."""
    pre = b.block
    with b.if_then(b.icmp_signed("!=", y, _c64(1)), likely=False):
        q = b.sdiv(x, y) if op == "div" else b.srem(x, y)
        blk = b.block
    ph = b.phi(_I64)
    ph.add_incoming(x if op == "div" else _c64(0), pre)
    ph.add_incoming(q, blk)
    return ph


def _cdiv1(b, x, y):
    return _div1(b, "div", b.add(x, b.sub(y, _c64(1))), y)


def _k_block(b, K, cfg: GemmConfig):
    """The driver's K block: K cut into blocks of at most KC, balanced, rounded up to the unroll factor (a
    function of K alone, so a B packed ahead of time (`emit_prepack`) has the driver's blocks)."""
    nblk = _cdiv_ir(b, K, _c64(cfg.kc))
    return _rup_ir(b, _cdiv1(b, K, nblk), _c64(cfg.unroll))


def _share(b, total, tid, nth):
    """(first, end) of thread `tid`'s contiguous share of `total` items: near-equal, the first total mod nth
    threads one more."""
    base = _div1(b, "div", total, nth)
    extra = _div1(b, "rem", total, nth)
    first = b.add(b.mul(tid, base), _smin(b, tid, extra))
    return first, b.add(first, b.add(base, b.zext(b.icmp_signed("<", tid, extra), _I64)))


# ---------------------------------------------------------------------------------------------- packing


def _emit_pack_copy(g: _Gen, fn: ir.Function, W: int) -> None:
    """pack(dst, src, ld, kc, ncols): dst[q*W*kc + k*W + x] = src[k*ld + q*W + x], zero past ncols.

    A panel narrower than a vector (W < L: AVX2's 6-row A panels) is stored whole-vector: the L - W lanes past
    it are zeros that land on the next k's first elements, which the next k's store then writes (k is the
    outer loop, so it comes later). Only the last k is stored masked: a masked store is microcoded on AMD's
    AVX2 cores (vmaskmovps, ~20x a plain one) and was most of the packing's time there."""
    dst, src, ld, kc, ncols = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    L = g.L
    groups = [(gi * L, min(L, W - gi * L)) for gi in range(_cdiv(W, L))]
    dalign = g.valign if (W * g.esize) % g.valign == 0 else g.esize
    # k outer, panels inner: each source row is read sequentially (the hardware prefetchers follow it), where
    # a panel-at-a-time walk would hop a whole row stride per access and wait on the cache for every line.
    nfull = b.sdiv(ncols, _c64(W))
    left = b.sub(ncols, b.mul(nfull, _c64(W)))
    pmasks = [b.and_(g.lane_mask(b, off, left), g.const_mask(w)) for off, w in groups]
    pstride = b.mul(kc, _c64(W))
    overlap = W < L

    def row(k, last: bool):
        s = g.gep(b, src, b.mul(k, ld))
        d = g.gep(b, dst, b.mul(k, _c64(W)))
        with _Loop(b, _c64(0), nfull, _c64(1), "q") as q:
            sq = g.gep(b, s, b.mul(q, _c64(W)))
            dq = g.gep(b, d, b.mul(q, pstride))
            for off, w in groups:
                m = None if w == L else g.const_mask(w)
                g.store_vec(b, g.load_vec(b, sq, _c64(off), m), dq, _c64(off), m if last else None,
                            align=dalign)
        with b.if_then(b.icmp_signed(">", left, _c64(0))):
            sq = g.gep(b, s, b.mul(nfull, _c64(W)))
            dq = g.gep(b, d, b.mul(nfull, pstride))
            for (off, w), m in zip(groups, pmasks, strict=True):
                sm = None if w == L else g.const_mask(w)
                g.store_vec(b, g.load_vec(b, sq, _c64(off), m), dq, _c64(off), sm, align=dalign)

    if overlap:
        last = b.sub(kc, _c64(1))
        with _Loop(b, _c64(0), last, _c64(1), "k") as k:
            row(k, last=False)
        with b.if_then(b.icmp_signed(">=", last, _c64(0))):
            row(last, last=True)
    else:
        with _Loop(b, _c64(0), kc, _c64(1), "k") as k:
            row(k, last=True)
    b.ret_void()


def _emit_pack_trans(g: _Gen, fn: ir.Function, W: int) -> None:
    """pack(dst, src, ld, kc, ncols): dst[q*W*kc + k*W + x] = src[(q*W + x)*ld + k], zero past ncols.

    Each L-wide group of a panel's W columns is moved in L x L blocks (L loads along k, an in-register
    transpose, L stores along the panel). Full blocks take the unmasked path, the K tail and the last panel the
    masked one. Groups of the same width run as a loop (compile time: the transposes are most of the code).
    A panel narrower than a vector (W < L: one group) is stored whole-vector on the unmasked path: the zero
    lanes past it land on the next k's first elements, stored next, so only the panel's last row of k is stored
    masked (see `_emit_pack_copy`: masked stores are microcoded on AMD's AVX2 cores; they were ~70% of this
    routine's time in an LSTM step on Zen 3)."""
    dst, src, ld, kc, ncols = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    L = g.L
    dalign = g.valign if (W * g.esize) % g.valign == 0 else g.esize
    npanels = _cdiv_ir(b, ncols, _c64(W))
    kfull = b.mul(b.sdiv(kc, _c64(L)), _c64(L))
    # (first group, number of groups, width): full-width groups as one loop, a narrower last group on its own
    nwide = W // L
    runs = ([(0, nwide, L)] if nwide else []) + ([(nwide * L, 1, W % L)] if W % L else [])

    def block(s, d, k0, rowmask, kmask, kleft):
        """One L-deep slice of k for every group of the panel (src panel s, dst panel d)."""
        for first, count, w in runs:
            with _Loop(b, _c64(first), _c64(first + count * L), _c64(L), "g", unroll=False) as off:
                rows = []
                for r in range(L):
                    if r >= w:
                        rows.append(g.zero)
                        continue
                    ro = b.add(off, _c64(r))
                    m = kmask
                    if rowmask is not None:
                        m = b.and_(m, g.splat(b, b.icmp_signed("<", ro, rowmask)))
                    rows.append(g.load_vec(b, s, b.add(b.mul(ro, ld), k0), m))
                cols = g.transpose(b, rows)
                wm = None if w == L else g.const_mask(w)
                whole = W < L and kleft is None  # whole-vector stores, the panel's last row of k masked
                for kk in range(L):
                    didx = b.add(b.mul(b.add(k0, _c64(kk)), _c64(W)), off)
                    m = None if whole else wm
                    if kleft is not None:  # the K tail: rows past kc are not stored
                        ok = g.splat(b, b.icmp_signed("<", _c64(kk), kleft))
                        m = ok if m is None else b.and_(ok, m)
                    if whole and kk == L - 1:
                        with b.if_else(b.icmp_signed("<", b.add(k0, _c64(L)), kc)) as (inner, last):
                            with inner:
                                g.store_vec(b, cols[kk], d, didx, None, align=dalign)
                            with last:
                                g.store_vec(b, cols[kk], d, didx, wm, align=dalign)
                        continue
                    g.store_vec(b, cols[kk], d, didx, m, align=dalign)

    with _Loop(b, _c64(0), npanels, _c64(1), "q") as q:
        left = b.sub(ncols, b.mul(q, _c64(W)))
        d = g.gep(b, dst, b.mul(q, b.mul(kc, _c64(W))))
        s = g.gep(b, src, b.mul(q, b.mul(_c64(W), ld)))
        full = b.icmp_signed(">=", left, _c64(W))
        tail_start = b.select(full, kfull, _c64(0))
        with b.if_then(full):
            with _Loop(b, _c64(0), kfull, _c64(L), "kf") as k0:
                block(s, d, k0, None, None, None)
        with _Loop(b, tail_start, kc, _c64(L), "kt") as k0:
            kleft = b.sub(kc, k0)
            block(s, d, k0, left, g.lane_mask(b, 0, kleft), kleft)
    b.ret_void()


# ------------------------------------------------------------------------------------------ operand views
#
# An A operand may be a *view*: op(A)[r, k] = A[offset + rowoff(r) + coloff(k)], where rowoff(r) writes r in the
# mixed radix of `rows` ((size, stride) digits, outermost first) and sums stride * digit, and coloff does the
# same for k with `cols` (the outermost size is never needed: pass 0 where it is only known at run time). A
# convolution's im2col matrix is such a view of its padded image: rows (n, oh, ow), columns (kh, kw, c) for the
# forward product, the other way round for the filter gradient. The view is packed into the same KC x MR
# micro-panels as a stored A, straight from the image, so no im2col buffer of the whole batch exists and the
# product is bitwise the one over the materialized matrix.


def _digits_offset(b: ir.IRBuilder, idx: ir.Value, digits) -> ir.Value:
    """sum_j stride_j * digit_j(idx) for the mixed-radix digits ((size, stride), outermost first)."""
    acc = _c64(0)
    rem = idx
    for size, stride in reversed(digits[1:]):
        if size != 1 and stride:
            acc = b.add(acc, b.mul(b.urem(rem, _c64(size)), _c64(stride)))
        if size != 1:
            rem = b.udiv(rem, _c64(size))
    return b.add(acc, b.mul(rem, _c64(digits[0][1]))) if digits[0][1] else acc


def _view_pack_kind(view, W: int) -> str:
    """'r': row-major copy along K (the innermost K digit is contiguous), read in place by the microkernel;
    'm': k-major panels copied along M (per k, W rows at once: contiguous runs as vector loads, others
    gathered)."""
    _, rows, cols = view
    if rows[-1][1] == 1 and (rows[-1][0] >= W or len(rows) == 1):
        return "m"
    return "r" if cols[-1][1] == 1 and (cols[-1][0] > 1 or len(cols) == 1) else "m"


def _emit_view_pack_r(g: _Gen, fn: ir.Function, W: int, view) -> None:
    """pack(dst, A, row0, k0, kc, nrows) for a view whose innermost K digit has stride 1, *row-major*:
    dst[r*KC + k] = op(A)[row0 + r, k0 + k] for r < nrows rounded up to W (rows past nrows are zeros; KC the
    config's K block, so rows sit a constant distance apart). Each row is copied in runs of that digit
    (contiguous in A) by vector moves: no transposes. The microkernel reads the block at constant offsets, the
    same fused multiply-adds in the same order as from k-major panels."""
    dst, src, row0, k0, kc, nrows = fn.args
    offset, rows, cols = view
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    L = g.L
    S = cols[-1][0] or 1 << 62  # a single K digit: one run
    outer = cols[:-1]
    total = _rup_ir(b, nrows, _c64(W))
    with _Loop(b, _c64(0), total, _c64(1), "r") as r:
        ok = g.splat(b, b.icmp_signed("<", r, nrows))  # the padding rows are zeros
        roff = b.add(_digits_offset(b, b.add(row0, r), rows), _c64(offset))
        drow = g.gep(b, dst, b.mul(r, _c64(g.cfg.kc)))
        with _Steps(b, fn, kc, "run") as steps:  # one run of contiguous K elements per step
            k = steps.i
            kabs = b.add(k0, k)
            inner = b.urem(kabs, _c64(S))
            seg = _digits_offset(b, b.udiv(kabs, _c64(S)), outer) if outer else _c64(0)
            run = _smin(b, b.sub(_c64(S), inner), b.sub(kc, k))
            s0 = g.gep(b, src, b.add(roff, b.add(seg, inner)))
            d0 = g.gep(b, drow, k)
            full = b.mul(b.sdiv(run, _c64(L)), _c64(L))
            with _Loop(b, _c64(0), full, _c64(L), "kk") as kk:
                g.store_vec(b, g.load_vec(b, s0, kk, ok), d0, kk)
            with b.if_then(b.icmp_signed("<", full, run)):
                m = g.lane_mask(b, 0, b.sub(run, full))
                g.store_vec(b, g.load_vec(b, s0, full, b.and_(m, ok)), d0, full, m)
            steps.step(run)
    b.ret_void()


def _emit_view_pack_m(g: _Gen, fn: ir.Function, W: int, view, kcmax: int) -> None:
    """pack(dst, A, row0, k0, kc, nrows) for any view: the K offsets of the block are tabulated once; then per
    group of L panel rows, a group whose rows are contiguous in A (the common case when the innermost row digit
    has stride 1) is copied with one masked vector load per k, any other is gathered."""
    dst, src, row0, k0, kc, nrows = fn.args
    offset, rows, cols = view
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    L = g.L
    table = b.alloca(ir.ArrayType(_I64, kcmax), name="koff")
    table.align = 64
    table.type = _PTR
    dalign = g.valign if (W * g.esize) % g.valign == 0 else g.esize
    with _Loop(b, _c64(0), kc, _c64(1), "kt") as k:
        b.store(b.add(_digits_offset(b, b.add(k0, k), cols), _c64(offset)),
                b.gep(table, [k], inbounds=True, source_etype=_I64))
    vi64 = ir.VectorType(_I64, L)
    vptr = ir.VectorType(_PTR, L)
    gname = f"llvm.masked.gather.v{L}{'f32' if g.esize == 4 else 'f64'}.v{L}p0"
    gather = g._declare(gname, g.V, [vptr, _I32, g.M, g.V])
    npanels = _cdiv_ir(b, nrows, _c64(W))
    srcint = b.ptrtoint(src, _I64)
    with _Loop(b, _c64(0), npanels, _c64(1), "q") as q:
        r0 = b.add(row0, b.mul(q, _c64(W)))
        lim = b.sub(nrows, b.mul(q, _c64(W)))
        dq = g.gep(b, dst, b.mul(q, b.mul(kc, _c64(W))))
        for x0 in range(0, W, L):
            w = min(L, W - x0)
            offs = [_digits_offset(b, b.add(r0, _c64(x0 + x)), rows) for x in range(w)]
            vmask = b.and_(g.lane_mask(b, x0, lim), g.const_mask(w))
            contig = ir.Constant(_I1, 1)
            for x in range(1, w):
                same = b.icmp_signed("==", offs[x], b.add(offs[0], _c64(x)))
                contig = b.and_(contig, b.or_(same, b.icmp_signed(">=", _c64(x0 + x), lim)))
            ovec = ir.Constant(vi64, ir.Undefined)
            for x in range(L):
                ovec = b.insert_element(ovec, offs[min(x, w - 1)], ir.Constant(_I32, x))
            smask = None if w == L else g.const_mask(w)
            with b.if_else(contig, likely=True) as (then, other):
                with then:
                    with _Loop(b, _c64(0), kc, _c64(1), "kc") as k:
                        ko = b.load(b.gep(table, [k], inbounds=True, source_etype=_I64), typ=_I64)
                        v = g.load_vec(b, src, b.add(offs[0], ko), vmask)
                        g.store_vec(b, v, dq, b.add(b.mul(k, _c64(W)), _c64(x0)), smask, align=dalign)
                with other:
                    with _Loop(b, _c64(0), kc, _c64(1), "kg") as k:
                        ko = b.load(b.gep(table, [k], inbounds=True, source_etype=_I64), typ=_I64)
                        addr = b.add(g.splat(b, srcint), b.mul(b.add(ovec, g.splat(b, ko)),
                                                              ir.Constant(vi64, [g.esize] * L)))
                        v = b.call(gather, [b.inttoptr(addr, vptr), ir.Constant(_I32, g.esize), vmask, g.zero])
                        g.store_vec(b, v, dq, b.add(b.mul(k, _c64(W)), _c64(x0)), smask, align=dalign)
    b.ret_void()


# A view whose innermost K digit has at least this many elements is read in place by a view tile (a convolution's
# image: runs of KW*C or of an output row's pixels), not packed.
VIEW_TILE_MIN_RUN = 5
VIEW_UNROLL = 2  # k steps per trip of a view kernel (each view has its own: half the code of 4, as fast)


def _view_unroll(view) -> int:
    """k steps per trip of the view's kernel: VIEW_UNROLL where its runs are whole multiples of it, else 1 (a
    3-channel image's runs of 9: read in place one k at a time still beats packing them)."""
    run = view[2][-1][0]
    return VIEW_UNROLL if run % VIEW_UNROLL == 0 else 1


# A view whose tiles may not cross groups of fewer rows than this (output rows of 1-5 pixels) is packed instead:
# its 12-row tiles would run a third to half empty. Zen 4, 1 thread, a 3x3 conv layer's training step, packed /
# in place, in-process A/B: 3x3 maps 0.52, 5x5 maps 0.72-0.78, 8x8 stride 2 (4x4 out) 0.66-0.68; layers with
# longer rows unchanged (0.97-1.04: a filter gradient whose taps of one window row are its groups)
VIEW_TILE_MIN_GROUP = 6


def _view_tile_ok(view) -> bool:
    """Whether `view` is read in place: its innermost K digit (the runs) static and long enough. Runs are whole
    multiples of the kernel's unroll (`_view_unroll`), so are K and every K block (rounded to the microkernel's
    unroll): no unrolled step straddles two runs."""
    _, rows, cols = view
    run = cols[-1][0]
    if 0 < _view_group(view) < VIEW_TILE_MIN_GROUP:
        return False
    return bool(run) and run >= VIEW_TILE_MIN_RUN and cols[-1][1] > 0


def _view_group(view) -> int:
    """Rows of the view's innermost row digit (the pixels of an image row), when the rows of one such group lie
    equally spaced and before the next group's (a view tile inside a group is read in place; the driver does
    not let tiles cross groups); else 0 (no grouping: the tiles that cross are packed)."""
    _, rows, _ = view
    if len(rows) < 2 or not rows[-1][0] or rows[-1][0] >= 1 << 23:
        return 0
    size, stride = rows[-1]
    return size if all(s >= size * stride for _, s in rows[:-1]) else 0


def _view_kernel(g: _Gen, view, rows: int) -> ir.Function:
    """The view microkernel of `rows` rows (see `_view_tile_fn`), one per module for each distinct view: a
    convolution's forward and its input gradient read padded images of the same shape through the same view."""
    key = hashlib.sha256(repr((view, rows)).encode()).hexdigest()[:16]
    c = g.cfg
    name = f"graphc.gemm.view.{g.tag}.{c.mr}x{c.nr}.k{c.unroll}.pf{c.prefetch_c}.r{rows}.{key}"
    fn = g.module.globals.get(name)
    if fn is None:
        fn = ir.Function(g.module, _TILE_TY, name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        _emit_ukernel(g, fn, rows, view=view)
    return fn


def _view_tile_fn(g: _Gen, name: str, view) -> ir.Function:
    """tile(A, Bp, C, ldc, bstride, kc, mrem, nrem, load_old, tile, row, pc, M): the tile of op(A) rows
    row..row+mrem-1 over the K block pc..pc+kc-1 for one GEMM's A view (its digits are constants).

    A tile whose rows are equally spaced (inside one group: the pixels of one image row, or 12 of a window row's
    channels) is read where it lies by a microkernel of the view (`_view_kernel`; the narrow one where a group
    leaves tiles of at most 8 rows): K in runs along the innermost K digit, each run one stride, every
    unrolled step inside one run, the same fused multiply-adds in the same order as from a packed panel
    (bitwise the same C). Rows past mrem are computed and dropped: read only where rows of A follow (row + R <=
    M; a group's rows come before the next group's, so they lie inside A). Any other tile is packed on the
    stack by the view's packing routine and computed by the shared microkernel. A convolution thereby reads its
    image in place instead of copying every window into panels (im2col), which cost ~15% of a CIFAR training
    step."""
    cfg = g.cfg
    _, rows, _ = view
    inner = rows[-1][0] if len(rows) > 1 else None
    edge = _edge_rows(cfg)
    group = _view_group(view)
    # the narrow kernel only where tiles of at most `edge` rows come up (13-16 rows left of a group: two of them)
    narrow = edge is not None and group > 0 and (0 < group % cfg.mr <= edge or cfg.mr < group <= 2 * edge)
    kernels = [(r, _view_kernel(g, view, r)) for r in ([edge] if narrow else []) + [cfg.mr]]
    pack = _view_pack_fn(g, name + ".pack", view)
    kern = _ukernel_fn(g, None, row_major=_view_pack_kind(view, cfg.mr) == "r")
    fn = ir.Function(g.module, _TILE_TY, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    A, Bp, C, ldc, bstride, kc, mrem, nrem, load_old, tile, row, pc, M = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    buf = b.alloca(ir.ArrayType(g.T, cfg.mr * cfg.kc), name="panel")
    buf.align = 64
    buf.type = _PTR
    inside = b.icmp_signed("<=", b.add(b.urem(row, _c64(inner)), mrem), _c64(inner)) if inner else ir.Constant(_I1, 1)
    # rows past mrem lie inside A only where the groups are ordered (or there is one row digit): else exact tiles
    spill = group > 0 or inner is None
    done = fn.append_basic_block("done")
    for r, k in kernels:  # the narrowest kernel that covers mrem rows
        fits = b.and_(inside, b.icmp_signed("<=" if spill else "==", mrem, _c64(r)))
        fits = b.and_(fits, b.icmp_signed("<=", b.add(row, _c64(r)), M))
        with b.if_then(fits):
            b.call(k, list(fn.args))
            b.branch(done)
    b.call(pack, [buf, A, row, pc, kc, mrem])
    b.call(kern, [buf, Bp, C, ldc, bstride, kc, mrem, nrem, load_old, tile])
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _view_pack_fn(g: _Gen, name: str, view) -> ir.Function:
    """The packing routine of one GEMM's A view (its digits are compile-time constants): not shared."""
    fn = ir.Function(g.module, _VPACK_TY, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    W = g.cfg.mr
    if _view_pack_kind(view, W) == "r":
        _emit_view_pack_r(g, fn, W, view)
    else:
        _emit_view_pack_m(g, fn, W, view, g.cfg.kc)
    return fn


# ------------------------------------------------------------------------------------- shared functions


def _shared(g: _Gen, name: str, argt: list[ir.Type], build: Callable[[ir.Function], None]) -> ir.Function:
    """The module's function `name` (emitted by `build` on first use): one copy for every GEMM in the module.

    Internal and noinline: each copy the inliner made would cost LLVM about as much as the function itself
    (inlining the microkernel into the driver, its one call site, was measured: no faster, +40 ms)."""
    fnty = ir.FunctionType(_VOID, argt)
    fn = g.module.globals.get(name)
    if fn is not None:
        if not isinstance(fn, ir.Function) or fn.function_type != fnty:
            raise ValueError(f"module already has a {name!r} that is not the GEMM helper of that name")
        return fn
    fn = ir.Function(g.module, fnty, name)
    if g.declare:  # defined by the helper library linked with the module: nothing to emit
        return fn
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    build(fn)
    return fn


def _pack_fn(g: _Gen, copy: bool, W: int) -> ir.Function:
    """pack(dst, src, ld, kc, ncols), shared by the module's GEMMs of this dtype and width."""
    kind = "copy" if copy else "trans"
    name = f"graphc.gemm.pack_{kind}.{g.tag}.w{W}"
    emit = _emit_pack_copy if copy else _emit_pack_trans
    return _shared(g, name, [_PTR, _PTR, _I64, _I64, _I64], lambda fn: emit(g, fn, W))


def _edge_rows(cfg: GemmConfig) -> int | None:
    """Rows of the narrower microkernel for the last tile of an M range when at most that many rows remain
    (None: no such kernel). A batch of 128 rows is 10 tiles of 12 and one of 8: computed as 8 rows, not 12
    with 4 of padding, it costs 3% less. Where 13-16 rows are left (a batch of 64: 5 x 12 + 4) the driver runs
    them as two such tiles reading A in place (`split_tail`): 16 rows of multiply-adds instead of 20, a product
    of 64 rows 4% faster (an LSTM step's two recurrent products, 1 thread). AVX2's 6 x 16 tile has a 4-row one
    (8 accumulators: as many FMA chains as two pipes of 4-cycle FMAs keep busy): a batch of 32 is 4 tiles of 6
    and two of 4 (32 rows of multiply-adds, not 36), 64 is 10 of 6 and one of 4; Zen 3, the 64-128-10 MLP's
    batch-32 epoch 1.11 -> 1.19 M samples/s (its forward product 7.4 -> 6.9 us, the first weights' gradient,
    64 rows, 7.4 -> 6.9 us)."""
    return 8 if cfg.mr > 8 else 4 if cfg.mr == 6 else None


def _ukernel_fn(g: _Gen, rows: int | None = None, strided: bool = False, row_major: bool = False) -> ir.Function:
    """The microkernel, shared by the module's GEMMs of this dtype and register tile (see `_emit_ukernel`);
    `rows` < MR: the variant computing only the first `rows` rows of the tile; `strided`: the variant reading
    A in place (element strides along rows and along K as two more arguments) instead of a packed panel;
    `row_major`: the variant reading a row-major packed block (rows KC apart: constant offsets)."""
    cfg = g.cfg
    rows = rows or cfg.mr
    name = f"graphc.gemm.ukernel.{g.tag}.{cfg.mr}x{cfg.nr}.k{cfg.unroll}.pf{cfg.prefetch_c}"
    if rows != cfg.mr:
        name += f".r{rows}"
    argt = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I1, _PTR]
    if strided:
        name += ".sa"
        argt += [_I64, _I64]
    elif row_major:
        name += f".rm{cfg.kc}"
    return _shared(g, name, argt, lambda fn: _emit_ukernel(g, fn, rows, strided, row_major))


# Small products: when a thread's M range has at most SMALL_M rows (a batch of 1..16 in a forward product or
# dZ.W^T), or K is at most SMALL_K (the weight gradient X^T.dZ of such a batch), or its N range is one B panel
# (an output layer's 10 columns: a packed A panel would serve one panel of B), A is read in place by narrow
# microkernels of `small_rows` rows (the last rows of a range one at a time) instead of being packed into 12-row
# panels, where 11 of 12 rows would be zero padding at batch 1. Every element of C is still the same fmuladd
# chain over k in the same K blocks, so the results are bitwise those of the packed path (and do not depend on
# the thread count): only the work differs.
SMALL_M = 16
SMALL_K = 16


def small_rows(cfg: GemmConfig) -> tuple[int, ...]:
    """The rows of the narrow kernels reading A in place (see SMALL_M), widest first, the last 1: 8, then 1 by 1,
    where 8 rows of the tile fit the registers (AVX-512: 16 of 32 zmm); MR rows elsewhere (AVX2's 6 x 16 tile
    takes 12 of 16 ymm: an 8-row kernel spilled its accumulators, 51 stack accesses per 64 FMAs in its k loop on
    a Zen 3), then the edge kernel's 4 (`_edge_rows`), then 1 by 1."""
    first, edge = min(8, cfg.mr), _edge_rows(cfg)
    return (first, edge, 1) if edge and 1 < edge < first else (first, 1)


def small_split(rows: tuple[int, ...], rem: int) -> bool:
    """Whether a narrow chunk whose count leaves `rem` rows past its last group of rows[0] runs one group fewer
    of those, the rows[0] + rem rows going to the narrower kernels instead. A tile of one row waits on its FMAs'
    latency about as long as an edge tile of rows[1] (4 rows: 8 chains of FMAs on AVX2) takes, and a tile of
    rows[0] (6) about 1.5 of them: so 6 + 2 rows run as 4 + 4, and 6 + 3 as 4 + 4 + 1."""
    if len(rows) < 3:
        return False
    wide, edge = rows[0], rows[1]

    def cost(n: int) -> int:
        return n // edge + n % edge

    return 0 < rem and wide / edge + cost(rem) > cost(wide + rem)


SMALL_CHUNK = 64  # rows of C finished before one epilogue pass over them (a stack buffer of SMALL_CHUNK x NR)


# ------------------------------------------------------------------------------------------ microkernel


def _emit_ukernel(g: _Gen, fn: ir.Function, rows: int, strided: bool = False, row_major: bool = False,
                  view=None) -> None:
    """ukernel(Ap, Bp, C, ldc, bstride, kc, mrem, nrem, load_old, tile).

    Computes the MR x NR tile ``sum_k Ap[k*MR + i] * Bp[k*bstride + j]`` (k < kc) in registers (its first
    `rows` rows: `mrem` <= `rows`), then:

    * ``tile == null``: stores it (``+ C`` when `load_old`) to C (row stride ldc): the first `mrem` rows and
      `nrem` columns only.
    * else: stores it (``+ C`` when `load_old`, C read on the valid rows and columns only) to the MR x NR
      buffer `tile` (row stride NR): the first `mrem` rows, whole vectors, for the epilogue pass to finish.

    B rows are `bstride` elements apart: NR for a packed panel, ldb for a panel read in place.

    `view` (offset, rows, cols): the view tile (see `_view_tile_fn`): Ap is the viewed array itself and two
    more arguments, (row, pc), place the tile at op(A)[row:row+MR, pc:pc+kc]."""
    cfg = g.cfg
    MR, NR, L, U = cfg.mr, cfg.nr, g.L, cfg.unroll
    R = rows  # rows computed; the A panel keeps its MR stride
    NV = NR // L
    ap, bp, c, ldc, bstride, kc, mrem, nrem, load_old, tile = fn.args[:10]
    for a, nm in zip(fn.args, ["Ap", "Bp", "C", "ldc", "bstride", "kc", "mrem", "nrem", "load_old", "tile",
                               "a_rs" if strided else "row", "a_ks" if strided else "pc"], strict=False):
        a.name = nm
    a_ty = _PTR  # what the k loop carries for A: a pointer, or (view) an element offset along K
    if view is not None:  # op(A)[i, k] at base[i*D + koff(k)]: rows equally spaced (the caller checks); the k
        _, vrows, vcols = view  # loop carries koff, recomputed from k each trip (`kloop`'s a_at)
        KS, D = vcols[-1][1], vrows[-1][1]
        a_ty = _I64
        a_off = lambda i, kk: _c64(i * D + kk * KS)  # noqa: E731
    elif strided:  # A in place: op(A)[i, k] at Ap[i*a_rs + k*a_ks]
        a_rs, a_ks = fn.args[10:]
        a_off = lambda i, kk: b.add(b.mul(_c64(i), a_rs), b.mul(_c64(kk), a_ks))  # noqa: E731
        a_step = lambda u: b.mul(_c64(u), a_ks)  # noqa: E731
    elif row_major:  # a row-major packed block: op(A)[i, k] at Ap[i*KC + k]
        a_off = lambda i, kk: _c64(i * cfg.kc + kk)  # noqa: E731
        a_step = lambda u: _c64(u)  # noqa: E731
    else:  # a packed micro-panel: op(A)[i, k] at Ap[k*MR + i]
        a_off = lambda i, kk: _c64(kk * MR + i)  # noqa: E731
        a_step = lambda u: _c64(u * MR)  # noqa: E731
    for a in (ap, bp, c, tile):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    if view is not None:
        vbase = g.gep(b, ap, b.add(_c64(view[0]), _digits_offset(b, fn.args[10], vrows)))
        acc_buf = b.alloca(ir.ArrayType(g.T, R * NR), name="acc")
        acc_buf.align = 64
        acc_buf.type = _PTR

    def a_addr(a_base, i, kk):
        if view is not None:
            return g.gep(b, vbase, b.add(a_base, a_off(i, kk)))
        return g.gep(b, a_base, a_off(i, kk))


    if cfg.prefetch_c and (not strided or rows == MR):  # small products (narrow kernels): C mostly in L1
        for i in range(R):
            rp = b.gep(c, [b.mul(_c64(i), ldc)], source_etype=g.T)
            for off in range(0, NR, 64 // g.esize):
                p = b.gep(rp, [_c64(off)], source_etype=g.T)
                b.call(g.prefetch, [p, ir.Constant(_I32, 1), ir.Constant(_I32, cfg.prefetch_c), ir.Constant(_I32, 1)])

    def kstep(accs, a_base, b_base, kk):
        brow = g.gep(b, b_base, b.mul(_c64(kk), bstride))
        bv = [b.load(g.gep(b, brow, _c64(v * L)), typ=g.V, align=g.esize) for v in range(NV)]
        out = list(accs)
        for i in range(R):
            s = b.load(a_addr(a_base, i, kk), typ=g.T, align=g.esize)
            bc = g.splat(b, s)
            for v in range(NV):
                out[i * NV + v] = b.call(g.fmuladd, [bc, bv[v], out[i * NV + v]])
        return out

    def kloop(start_accs, a0, b0, trips, unroll, tag, a_at=None):
        """Loop `trips` times over `unroll` k steps; returns (accs, a_ptr, b_ptr) after the loop. `a_at(n)`:
        A's position at trip n, instead of stepping it."""
        pre = b.block
        body = fn.append_basic_block(tag + ".body")
        done = fn.append_basic_block(tag + ".done")
        b.cbranch(b.icmp_signed(">", trips, _c64(0)), body, done)
        b.position_at_end(body)
        n = b.phi(_I64)
        pa = b.phi(a_ty)
        pb = b.phi(_PTR)
        accs = [b.phi(g.V) for _ in start_accs]
        n.add_incoming(_c64(0), pre)
        pa.add_incoming(a0, pre)
        pb.add_incoming(b0, pre)
        for p, v in zip(accs, start_accs, strict=True):
            p.add_incoming(v, pre)
        cur = list(accs)
        for kk in range(unroll):
            cur = kstep(cur, pa, pb, kk)
        n2 = b.add(n, _c64(1))
        na = g.gep(b, pa, a_step(unroll)) if a_at is None else a_at(n2)
        nb = g.gep(b, pb, b.mul(_c64(unroll), bstride))
        last_body = b.block
        n.add_incoming(n2, last_body)
        pa.add_incoming(na, last_body)
        pb.add_incoming(nb, last_body)
        for p, v in zip(accs, cur, strict=True):
            p.add_incoming(v, last_body)
        b.cbranch(b.icmp_signed("<", n2, trips), body, done)
        b.position_at_end(done)
        out_acc = []
        for v0, v1 in zip(start_accs, cur, strict=True):
            ph = b.phi(g.V)
            ph.add_incoming(v0, pre)
            ph.add_incoming(v1, last_body)
            out_acc.append(ph)
        pa_out = b.phi(a_ty)
        pa_out.add_incoming(a0, pre)
        pa_out.add_incoming(na, last_body)
        pb_out = b.phi(_PTR)
        pb_out.add_incoming(b0, pre)
        pb_out.add_incoming(nb, last_body)
        return out_acc, pa_out, pb_out

    def klen(accs, a0, b0, count):
        """`count` k steps (unrolled by U, then the rest): (accs, b pointer after them)."""
        if U > 1:
            accs, a1, b1 = kloop(accs, a0, b0, b.sdiv(count, _c64(U)), U, "kmain")
            accs, _, b2 = kloop(accs, a1, b1, b.srem(count, _c64(U)), 1, "ktail")
            return accs, b2
        accs, _, b1 = kloop(accs, a0, b0, count, 1, "kmain")
        return accs, b1

    accs = [g.zero] * (R * NV)
    if view is None:
        accs, _ = klen(accs, ap, bp, kc)
    else:  # one k loop; each unrolled step lies in one run (`_view_tile_ok`): its offset from its k by the digits
        pc = fn.args[11]
        vu = _view_unroll(view)
        koff = lambda n: _digits_offset(b, b.add(pc, b.mul(n, _c64(vu))), vcols)  # noqa: E731
        accs, _, _ = kloop(accs, koff(_c64(0)), bp, b.sdiv(kc, _c64(vu)), vu, "kmain", koff)

    if view is None:
        _emit_store(g, b, accs, R, c, ldc, mrem, nrem, load_old, tile)
    else:  # the tile's store is shared (`_finish_fn`): the view kernels, one per view, stay small to compile
        for i, a in enumerate(accs):
            g.store_vec(b, a, acc_buf, _c64(i * L), align=g.valign)
        b.call(_finish_fn(g, R), [acc_buf, c, ldc, mrem, nrem, load_old, tile])
    b.ret_void()


def _emit_store(g: _Gen, b: ir.IRBuilder, accs, R: int, c, ldc, mrem, nrem, load_old, tile) -> None:
    """Store a finished R x NR tile (`accs`: R * NR/L vectors, row-major): to C (``+ C`` when `load_old`), or
    to the tile buffer for the epilogue pass; the first `mrem` rows and `nrem` columns (see `_emit_ukernel`)."""
    NR, L = g.cfg.nr, g.L
    NV = NR // L
    # the destination: C, or the tile buffer (row stride NR) for the epilogue pass
    to_tile = b.icmp_unsigned("!=", tile, ir.Constant(_PTR, None))
    dst = b.select(to_tile, tile, c)
    ldd = b.select(to_tile, _c64(NR), ldc)
    is_full = b.and_(b.icmp_signed("==", mrem, _c64(R)), b.icmp_signed("==", nrem, _c64(NR)))
    with b.if_else(is_full, likely=True) as (full, edge):
        with full:
            cidx = [[b.add(b.mul(_c64(i), ldc), _c64(v * L)) for v in range(NV)] for i in range(R)]
            pre = b.block
            with b.if_then(load_old):
                summed = [b.fadd(accs[i * NV + v], g.load_vec(b, c, cidx[i][v])) for i in range(R) for v in range(NV)]
                add_blk = b.block
            vals = []
            for a, sm in zip(accs, summed, strict=True):
                ph = b.phi(g.V)
                ph.add_incoming(a, pre)
                ph.add_incoming(sm, add_blk)
                vals.append(ph)
            for i in range(R):
                for v in range(NV):
                    g.store_vec(b, vals[i * NV + v], dst, b.add(b.mul(_c64(i), ldd), _c64(v * L)))
        with edge:
            none = [None] * NV
            # whole rows (a short block of rows: a Winograd product's last tiles of a tile row): plain loads and
            # stores of the first mrem rows, to C or the tile buffer
            with b.if_else(b.icmp_signed("==", nrem, _c64(NR)), likely=True) as (rows_only, cols_too):
                with rows_only:
                    _store_rows(g, b, accs, R, c, ldc, mrem, load_old, dst, ldd, none, none)
                with cols_too:
                    masks = [g.lane_mask(b, v * L, nrem) for v in range(NV)]
                    # into the tile, whole vectors (the lanes past nrem hold the zero padding's sums, not stale
                    # data): plain stores, not masked ones with every lane on (still a vmaskmovps, microcoded on
                    # AMD's AVX2 cores)
                    with b.if_else(to_tile) as (into_tile, into_c):
                        with into_tile:
                            _store_rows(g, b, accs, R, c, ldc, mrem, load_old, tile, _c64(NR), masks, none)
                        with into_c:
                            _store_rows(g, b, accs, R, c, ldc, mrem, load_old, c, ldc, masks, masks)


def _store_rows(g: _Gen, b: ir.IRBuilder, accs, R: int, c, ldc, mrem, load_old, dst, ldd, load_masks,
                store_masks) -> None:
    """The first `mrem` rows of the R x NR tile `accs` (+ C's, read with `load_masks`, when `load_old`) stored at
    `dst` (row stride `ldd`) with `store_masks` (one mask or None a vector of a row)."""
    L = g.L
    NV = g.cfg.nr // L
    for i in range(R):
        with b.if_then(b.icmp_signed("<", _c64(i), mrem)):
            for v in range(NV):
                old = g.load_vec(b, c, b.add(b.mul(_c64(i), ldc), _c64(v * L)), load_masks[v])
                val = b.select(load_old, b.fadd(accs[i * NV + v], old), accs[i * NV + v])
                g.store_vec(b, val, dst, b.add(b.mul(_c64(i), ldd), _c64(v * L)), store_masks[v])


def _finish_fn(g: _Gen, rows: int) -> ir.Function:
    """finish(acc, C, ldc, mrem, nrem, load_old, tile): `_emit_store` of the tile at `acc` (R x NR, 64-byte
    aligned), shared by the module's view kernels (in the helper library where the module links it)."""
    c = g.cfg
    name = f"graphc.gemm.ukernel.{g.tag}.{c.mr}x{c.nr}.k{c.unroll}.pf{c.prefetch_c}.finish{rows}"

    def build(fn):
        acc, cc, ldc, mrem, nrem, load_old, tile = fn.args
        for a in (acc, cc, tile):
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        accs = [g.load_vec(b, acc, _c64(i * g.L), align=g.valign) for i in range(rows * c.nr // g.L)]
        _emit_store(g, b, accs, rows, cc, ldc, mrem, nrem, load_old, tile)
        b.ret_void()

    return _shared(g, name, [_PTR, _PTR, _I64, _I64, _I64, _I1, _PTR], build)


# --------------------------------------------------------------------------------------------- epilogue


def _emit_epilogue_fn(
    g: _Gen,
    name: str,
    epilogue: Callable[[EpilogueContext], ir.Value],
    extras_t: ir.LiteralStructType,
    full_cols: bool,
    n_static: int | None = None,
) -> ir.Function:
    """epi(tile, C, ldc, mrem, nrem, row, col, extras): C[i, j] = epilogue(tile[i, j]) for the first `mrem`
    rows and `nrem` columns of an MR x NR tile (row stride NR) whose top left element is C[row, col] (C points
    at it). `extras` points at a struct of the GEMM's extra arguments (`extras_t`).

    One loop over the tile's vectors (column vectors outer, rows inner), so the epilogue is emitted once.
    `full_cols`: every tile is NR columns wide (a static N that is a multiple of NR): no masks. `n_static`: N where
    it is static."""
    cfg = g.cfg
    NR, L = cfg.nr, g.L
    # the pass proper takes the extra arguments as arguments (an epilogue may hoist code that uses them into
    # the entry block); the function the driver calls unpacks them from the struct
    fn = ir.Function(g.module, _EPI_TY, name)
    fn.linkage = "internal"
    inner = ir.Function(g.module, ir.FunctionType(_VOID, [*_EPI_TY.args[:7], *extras_t.elements]), name + ".body")
    inner.linkage = "internal"
    inner.attributes.add("alwaysinline")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    extras = [b.load(b.gep(fn.args[7], [ir.Constant(_I32, 0), ir.Constant(_I32, i)], source_etype=extras_t), typ=t)
              for i, t in enumerate(extras_t.elements)]
    b.call(inner, [*fn.args[:7], *extras])
    b.ret_void()

    tile, c, ldc, mrem, nrem, row, col = inner.args[:7]
    extras = tuple(inner.args[7:])
    for a, nm in zip(inner.args, ["tile", "C", "ldc", "mrem", "nrem", "row", "col"], strict=False):
        a.name = nm
    tile.add_attribute("noalias")
    c.add_attribute("noalias")
    b = ir.IRBuilder(inner.append_basic_block("entry"))
    ncols = _c64(NR) if full_cols else nrem
    # rows narrower than a vector (masked vectors, ldc < L): visited `hop` rows apart, so that an epilogue's masked
    # load of a row (an in-place update reading its parameter) never overlaps the masked store of the row just
    # before: a load cannot take bytes from a masked store and waits for it to reach the cache
    if full_cols or (n_static is not None and n_static >= L):
        hop = _c64(1)
    elif n_static is not None:
        hop = _c64(-(-L // n_static))
    else:
        hop = b.select(b.icmp_signed("<", ldc, _c64(L)), _cdiv_ir(b, _c64(L), _smin(b, ldc, _c64(L))), _c64(1))
    # loops over the tile unrolled only in full (a static N): runtime unrolling of the row loop made each
    # epilogue ~10x larger (300 instructions) and the 784-256-128-10 epoch's compile 0.05 s longer on Zen 4,
    # for nothing measurable (a tile's K loop outweighs its epilogue)
    with _Loop(b, _c64(0), ncols, _c64(L), "v", unroll="static") as off:
        mask = None if full_cols else g.lane_mask(b, 0, b.sub(nrem, off))
        colv = b.add(col, off)
        t0 = g.gep(b, tile, off)
        c0 = g.gep(b, c, off)
        with _Loop(b, _c64(0), hop, _c64(1), "rh", unroll="static") as first, \
                _Loop(b, first, mrem, hop, "r", unroll="static") as i:
            acc = b.load(g.gep(b, t0, b.mul(i, _c64(NR))), typ=g.V, align=g.valign)
            # a masked vector of a tile starting at column 0 (so N = nrem < NR: no other tile, no other thread, has
            # these rows' columns) that ends within the tile's rows (counted at row stride N, the narrowest: C's
            # ldc >= N, the extra stores' is N): the lanes past N are padding or the next rows' first columns,
            # this thread's (past the tile's last row they would be the next tile's, maybe another thread's)
            whole = None
            if mask is not None and g.slow_mstore:
                room = b.mul(b.sub(mrem, i), nrem)
                whole = b.and_(b.icmp_signed("==", col, _c64(0)), b.icmp_signed(">=", room, b.add(off, _c64(L))))
                # and rows of at least half a vector: a narrower row's whole vector spans several rows, and each
                # row's load would wait for the stores just before it (no forwarding from a partial overlap; a
                # regression's 1-wide output measured the same either way, within the noise)
                whole = b.and_(whole, b.icmp_signed(">=", b.mul(nrem, _c64(2)), _c64(L)))
            ctx = EpilogueContext(b, acc, b.add(row, i), colv, mask, extras, L, g.T, g, whole)
            out = epilogue(ctx)
            if out is not None:  # None: C held only the partial sums of the K blocks, which nothing reads after
                if not isinstance(out, ir.Value) or out.type != g.V:
                    raise TypeError(f"GEMM epilogue must return a {g.V} value or None, got {out!r}")
                if whole is None:
                    g.store_vec(b, out, c0, b.mul(i, ldc), mask)
                else:
                    blend_store(b, out, g.gep(b, c0, b.mul(i, ldc)), g.esize, mask, whole, g.mstore)
    b.ret_void()
    return fn


# -------------------------------------------------------------- convolution algorithms: shared parts


def _return_if_empty(b: ir.IRBuilder, lo, hi) -> None:
    """Return from the function when this thread's share [lo, hi) is empty; the builder continues after."""
    fn = b.function
    ret = fn.append_basic_block("ret")
    go = fn.append_basic_block("go")
    b.cbranch(b.icmp_signed("<", lo, hi), go, ret)
    b.position_at_end(ret)
    b.ret_void()
    b.position_at_end(go)


def _conv_fn(g: _Gen, name: str, count: str) -> tuple[ir.Function, list, ir.IRBuilder]:
    """A convolution algorithm's function, of the Winograd ones' type: (fn, its arguments A, B, C, `count` (M or
    K), ldb, ldc, ws, tid, nthreads, epi, ectx, a builder at its entry). Internal, not inlined; A, B, C and ws do
    not alias."""
    fn = ir.Function(g.module, _WINO_TY, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    for a, nm in zip(fn.args, ["A", "B", "C", count, "ldb", "ldc", "ws", "tid", "nthreads", "epi", "ectx"],
                     strict=True):
        a.name = nm
    for a in fn.args[:3] + fn.args[6:7]:
        a.add_attribute("noalias")
    return fn, list(fn.args), ir.IRBuilder(fn.append_basic_block("entry"))


# ------------------------------------------------------------------------------------------- winograd
#
# A 3x3 stride-1 convolution's product (its forward, and its input gradient: a 3x3 stride-1 convolution of the
# padded output gradient with the flipped filters) runs as Winograd's minimal filtering F(2x2, 3x3) (Lavin &
# Gray 2016): each 2x2 block of output pixels ("a tile") comes from a 4x4 patch of the image as
#
#     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A        (one such product per input channel, summed over channels)
#
# so the 16 positions ξ of the transformed 4x4 patch each make one product [tiles x C] @ [C x F] (the
# transformed filters U[ξ], C x F): 16·C·F multiply-adds per tile instead of 4·9·C·F, 2.25x fewer. The
# transforms are additions (and halvings of the filters), done in cache around the products: for a block of
# up to MR tiles along one tile row of one image, the input transform writes V[ξ] (MR rows, C channels, rows
# KC apart: the row-major block the shared row-major microkernel reads at constant offsets), 16 microkernel
# calls make M[ξ] (MR x NR), the output transform turns them into the block's 2 x 2·MR output pixels, which go
# through the GEMM's epilogue pass like any finished tile. Each thread transforms the filters into its own
# workspace at the start of a call (16·C·N elements: a few microseconds). The results are not bitwise those of
# the direct product (other roundings: the tests compare with the reference at float32 tolerance), but they
# are the same for any thread count: a thread owns whole tile rows and every output is the same operations.
WINOGRAD = True  # set False to schedule every convolution as a direct product (A/B comparisons, tests)
WINO_MAX_C = 256  # channels per product: one K block (KC) of the row-major microkernel

# 1-D transforms of F(2, 3): input (4 -> 4), filter (3 -> 4), output (4 -> 2); index lists with signs
_WINO_IN = (((0, 1), (2, -1)), ((1, 1), (2, 1)), ((2, 1), (1, -1)), ((1, 1), (3, -1)))
_WINO_OUT = (((0, 1), (1, 1), (2, 1)), ((1, 1), (2, -1), (3, -1)))


def _lin(b: ir.IRBuilder, vals, terms, half=None):
    """sum of ±vals[i] (terms: (i, sign)), or with `half` (a vector of 1/2) of weight * vals[i] for weights ±1 and
    ±1/2: one row of a transform matrix applied to vectors."""
    out = None
    for i, w in terms:
        v = vals[i] if abs(w) == 1 else b.fmul(vals[i], half)
        if out is None:
            out = v if w > 0 else b.fneg(v)
        else:
            out = b.fadd(out, v) if w > 0 else b.fsub(out, v)
    return out


def _patch_transform(g: _Gen, b: ir.IRBuilder, A, src, rs: int, cx: int) -> list:
    """Bᵀ d B of the 4x4 patch of vectors at A[src + r*rs + s*cx], as 16 vectors (ξ = 4r + s)."""
    d = [[g.load_vec(b, A, b.add(src, _c64(r * rs + s * cx))) for s in range(4)] for r in range(4)]
    e = [[_lin(b, d[r], _WINO_IN[s]) for s in range(4)] for r in range(4)]  # along s
    return [_lin(b, [e[q][s] for q in range(4)], _WINO_IN[r]) for r in range(4) for s in range(4)]  # along r


def winograd_applies(view, N, K, trans_b: bool, dtype: str, M=None) -> bool:
    """Whether the scheduler makes this product a Winograd one (`GemmKernel.algorithm`): its geometry fits the
    widest vectors of any target (16 float32 lanes, tiles 32 columns wide), so every target's config runs it."""
    lanes = 16 if dtype == "float32" else 8
    cfg = GemmConfig(mr=12, nr=2 * lanes, kc=256, mc=240, nc=2 * lanes)
    return WINOGRAD and isinstance(N, int) and _winograd_kind(view, N, K, M, trans_b, False, cfg, lanes) is not None


def conv_algorithm(view, N, K, trans_b: bool, dtype: str, M=None) -> str:
    """The algorithm the scheduler gives a product (`GemmKernel.algorithm`): "winograd", "expanded" or "" (the
    packed GEMM)."""
    if winograd_applies(view, N, K, trans_b, dtype, M):
        return "winograd"
    if rows_applies(view, N, K, trans_b, dtype, M):
        return "rows"
    return "expanded" if expanded_applies(view, N, K, trans_b, dtype, M) else ""


def _winograd_kind(view, N, K, M, trans_b, accumulate, cfg, lanes):
    """("fwd" or "dw", geometry) of a product the Winograd path computes (a convolution's forward or input
    gradient, or its filter gradient), else None."""
    geo = winograd_geometry(view, N, K, trans_b, accumulate, cfg, lanes)
    if geo is not None:
        return "fwd", geo
    geo = winograd_dw_geometry(view, N, M, trans_b, accumulate, cfg, lanes)
    return ("dw", geo) if geo is not None else None


# Output rows narrower than this (two 2x2 tiles a row) are left to the packed product: the transforms' cost is
# not repaid (Zen 4, 1 thread, a 3x3 conv layer's training step on 4x4 maps, 64 and 128 channels: 0.74x the
# time without Winograd; 6x6 maps 1.11x, 8x8 1.17x, 16x16 1.57x with it)
WINO_MIN_W = 6


def winograd_geometry(view, N: int | None, K, trans_b: bool, accumulate: bool, cfg: GemmConfig, lanes: int):
    """(C, H, W, row stride, image stride) of a 3x3 stride-1 convolution's A view that the Winograd path takes,
    else None. Taken: rows (images, H, W) with pixels C apart, K = 3 window rows (one image row apart) x 3C
    contiguous channels, H and W even (a tile's patch then lies inside the direct product's windows), C a
    multiple of the lanes up to WINO_MAX_C, N static and a multiple of NR, B not transposed, no accumulation."""
    if view is None or trans_b or accumulate or N is None or N % cfg.nr:
        return None
    _, rows, cols = view
    if len(rows) != 3 or len(cols) != 2:
        return None
    (_, img), (H, rs), (W, cx) = rows
    (kh, ks), (run, one) = cols
    if not (H and W and kh == 3 and ks == rs and one == 1 and run == 3 * cx):
        return None
    if H % 2 or W % 2 or cx > WINO_MAX_C or cx > cfg.kc or cx % lanes or W < WINO_MIN_W:
        return None
    if isinstance(K, int) and K != 9 * cx:
        return None
    if rs < W * cx or (img and img < H * rs):  # pixels, rows and images laid out in order, as a padded image is
        return None
    return cx, H, W, rs, img


def _plane_pad(esize: int) -> int:
    """Elements between the Winograd workspace's 16 planes (one a ξ) beyond their size: a cache line. Planes a
    multiple of 4 KB apart (the filter gradient's E: KB * NR elements, 4 KB on AVX2; the forward's V: 6 KB on AVX2,
    12 KB with AVX-512) put the 16 stores of a tile's transform in one or two L1 sets."""
    return 64 // esize


def _wino_slice(cx: int, N: int, cfg: GemmConfig, esize: int) -> tuple[int, int, int]:
    """(U, V, M) parts of a thread's Winograd workspace, in elements, each a multiple of 64 bytes."""
    align, pad = 64 // esize, _plane_pad(esize)
    return (_rup(16 * cx * N, align), _rup(16 * (cfg.mr * cfg.kc + pad), align), _rup(16 * cfg.mr * cfg.nr, align))


def _wino_fn(g: _Gen, view, geo, N: int) -> ir.Function:
    """wino(A, B, C, M, ldb, ldc, ws, tid, nthreads, epi, ectx): C = the view's product with B (see above), each
    finished tile through the epilogue pass `epi` (null: stored). One per module for each view and N: a
    convolution's forward and its input gradient read padded images of the same shape the same way."""
    c = g.cfg
    key = hashlib.sha256(repr((view, N)).encode()).hexdigest()[:16]
    name = f"graphc.gemm.wino.{g.tag}.{c.mr}x{c.nr}.k{c.unroll}.pf{c.prefetch_c}.kc{c.kc}.{key}"
    if name in g.module.globals:
        return g.module.globals[name]
    cfg = g.cfg
    MR, NR, KC, L = cfg.mr, cfg.nr, cfg.kc, g.L
    cx, H, W, rs, img = geo
    off = view[0]
    TW, TH = W // 2, H // 2
    nchunks = _cdiv(TW, MR)
    chunk = _cdiv(TW, nchunks)  # tiles per block, balanced along the tile row
    edge = _edge_rows(cfg)
    R = edge if edge and chunk <= edge else MR
    ukernel = _ukernel_fn(g, None if R == MR else R, row_major=True)
    # a tile row's last, shorter block (16 tiles in blocks of 6 on AVX2: 6 + 6 + 4) in the edge kernel where
    # it fits: 4 rows of multiply-adds, not 6 (conv2's 32x32 maps in the CIFAR step)
    short = TW % chunk if R == MR and edge and 0 < TW % chunk <= edge else 0
    ukernel_short = _ukernel_fn(g, edge, row_major=True) if short else None
    finish = _finish_fn(g, MR)
    ncv, njb = cx // L, N // NR
    fn, (A, B, C, Mv, ldb, ldc, ws, tid32, nth32, epi, ectx), b = _conv_fn(g, name, "M")
    has_epi = b.icmp_unsigned("!=", epi, ir.Constant(_PTR, None))
    epi = _Callee(epi, _EPI_TY)
    half = ir.Constant(g.V, [0.5] * L)
    tbuf = b.alloca(ir.ArrayType(g.T, 4 * MR * NR), name="out")  # two output rows of 2·MR pixels x NR
    tbuf.align = 64
    tbuf.type = _PTR
    tid, nth = b.sext(tid32, _I64), b.sext(nth32, _I64)
    units = b.mul(_c64(TH), b.sdiv(Mv, _c64(H * W)) if not view[1][0][0] else _c64(view[1][0][0]))
    u0, u1 = _share(b, units, tid, nth)  # tile rows
    _return_if_empty(b, u0, u1)
    su, sv, sm = _wino_slice(cx, N, cfg, g.esize)
    U = g.gep(b, ws, b.mul(tid, _c64(su + sv + sm)))
    V = g.gep(b, U, _c64(su))
    Mb = g.gep(b, V, _c64(sv))

    def ftrans(gv):  # filter transform along one axis: 3 vectors -> 4
        s = b.fadd(gv[0], gv[2])
        return [gv[0], b.fmul(b.fadd(s, gv[1]), half), b.fmul(b.fsub(s, gv[1]), half), gv[2]]

    # U[jb][ξ][c][NR] = (G g Gᵀ)[ξ] for the filters' column block jb
    with _Loop(b, _c64(0), _c64(cx), _c64(1), "fc", unroll=False) as c, \
            _Loop(b, _c64(0), _c64(N // L), _c64(1), "fv", unroll=False) as v:
        gk = [[g.load_vec(b, B, b.add(b.mul(b.add(_c64((ky * 3 + kx) * cx), c), ldb), b.mul(v, _c64(L))))
               for kx in range(3)] for ky in range(3)]
        rows_t = [ftrans(r) for r in gk]  # along kx: [ky][s]
        jb, vv = b.udiv(v, _c64(NR // L)), b.urem(v, _c64(NR // L))
        dst = b.add(b.mul(b.add(b.mul(jb, _c64(16 * cx)), c), _c64(NR)), b.mul(vv, _c64(L)))
        for s in range(4):
            col = ftrans([rows_t[ky][s] for ky in range(3)])  # along ky: [r]
            for r in range(4):
                g.store_vec(b, col[r], U, b.add(dst, _c64((r * 4 + s) * cx * NR)), align=g.valign)
    vplane = MR * KC + _plane_pad(g.esize)  # V's planes (one a ξ) a cache line more apart than their size
    # rows of V past a block's tiles are read by the microkernel (and their products dropped): zero them once
    with _Loop(b, _c64(0), _c64(16), _c64(1), "vzx", unroll=False) as xi, \
            _Loop(b, _c64(0), _c64(MR), _c64(1), "vz", unroll=False) as i, \
            _Loop(b, _c64(0), _c64(ncv * L), _c64(L), "vzc", unroll=False) as cv:
        g.store_vec(b, g.zero, V, b.add(b.add(b.mul(xi, _c64(vplane)), b.mul(i, _c64(KC))), cv), align=g.valign)

    with _Loop(b, u0, u1, _c64(1), "unit", unroll=False) as u:
        n, ty = b.udiv(u, _c64(TH)), b.urem(u, _c64(TH))
        img_base = b.add(_c64(off), b.add(b.mul(n, _c64(img)), b.mul(ty, _c64(2 * rs))))
        row0 = b.add(b.mul(n, _c64(H * W)), b.mul(ty, _c64(2 * W)))  # the output row of the tile row's first pixel
        with _Loop(b, _c64(0), _c64(TW), _c64(chunk), "blk", unroll=False) as tx0:
            nt = _smin(b, _c64(chunk), b.sub(_c64(TW), tx0))
            # input transform: V[ξ][t][c] = (Bᵀ d B)[ξ] of tile t's 4x4 patch
            with _Loop(b, _c64(0), nt, _c64(1), "t", unroll=False) as t:
                src0 = b.add(img_base, b.mul(b.add(tx0, t), _c64(2 * cx)))
                with _Loop(b, _c64(0), _c64(ncv * L), _c64(L), "cv", unroll=False) as cv:
                    vals = _patch_transform(g, b, A, b.add(src0, cv), rs, cx)
                    dst = b.add(b.mul(t, _c64(KC)), cv)
                    for xi in range(16):
                        g.store_vec(b, vals[xi], V, b.add(dst, _c64(xi * vplane)), align=g.valign)
            with _Loop(b, _c64(0), _c64(njb), _c64(1), "jb", unroll=False) as jb:
                ub = g.gep(b, U, b.mul(jb, _c64(16 * cx * NR)))

                def products(kern):
                    for xi in range(16):  # M[ξ] = V[ξ] @ U[ξ]
                        b.call(kern, [g.gep(b, V, _c64(xi * vplane)), g.gep(b, ub, _c64(xi * cx * NR)),
                                      g.gep(b, Mb, _c64(xi * MR * NR)), _c64(NR), _c64(NR), _c64(cx), nt, _c64(NR),
                                      ir.Constant(_I1, 0), ir.Constant(_PTR, None)])

                if short:
                    with b.if_else(b.icmp_signed("==", nt, _c64(short))) as (last, whole):
                        with last:
                            products(ukernel_short)
                        with whole:
                            products(ukernel)
                else:
                    products(ukernel)
                # output transform: the tile's 2x2 pixels, into two rows of pixels (tbuf rows 0.. and 2·MR..)
                with _Loop(b, _c64(0), nt, _c64(1), "to", unroll=False) as t, \
                        _Loop(b, _c64(0), _c64(NR), _c64(L), "vv", unroll=False) as vv:
                    src = b.add(b.mul(t, _c64(NR)), vv)
                    m = [[g.load_vec(b, Mb, b.add(src, _c64((r * 4 + s) * MR * NR)), align=g.valign) for s in range(4)]
                         for r in range(4)]
                    p = [[_lin(b, [m[r][s] for r in range(4)], _WINO_OUT[i]) for s in range(4)] for i in range(2)]
                    for i in range(2):
                        for j in range(2):
                            y = _lin(b, p[i], _WINO_OUT[j])
                            at = b.add(b.add(b.mul(b.add(b.mul(t, _c64(2)), _c64(j)), _c64(NR)), vv),
                                       _c64(i * 2 * MR * NR))
                            g.store_vec(b, y, tbuf, at, align=g.valign)
                # finish: each output row's 2·nt pixels, MR at a time, through the epilogue (or stored)
                col = b.mul(jb, _c64(NR))
                npix = b.mul(nt, _c64(2))
                for i in range(2):
                    prow = b.add(b.add(row0, _c64(i * W)), b.mul(tx0, _c64(2)))
                    for seg in range(2):
                        cnt = _smin(b, _c64(MR), b.sub(npix, _c64(seg * MR)))
                        with b.if_then(b.icmp_signed(">", cnt, _c64(0))):
                            r0 = b.add(prow, _c64(seg * MR))
                            tile = g.gep(b, tbuf, _c64((i * 2 + seg) * MR * NR))
                            cptr = g.gep(b, C, b.add(b.mul(r0, ldc), col))
                            with b.if_else(has_epi) as (with_epi, plain):
                                with with_epi:
                                    b.call(epi, [tile, cptr, ldc, cnt, _c64(NR), r0, col, ectx])
                                with plain:
                                    b.call(finish, [tile, cptr, ldc, cnt, _c64(NR), ir.Constant(_I1, 0),
                                                    ir.Constant(_PTR, None)])
    b.ret_void()
    return fn


# The filter gradient of such a convolution, dW[ky, kx, c, f] = sum over pixels of x[.. + ky, .. + kx, c] dy[.., f]
# (the product of the view's transpose, 9C x pixels, with the cotangent), is Winograd F(3x3, 2x2) over the same
# tiles: per 2x2 block of cotangent pixels and its 4x4 image patch, M[ξ] += (Bᵀ d B)[ξ] (C) x (A e Aᵀ)[ξ] (F)
# summed over every tile, then dW = Gᵀ M G. A thread owns whole blocks of (MR channels) x (NR filters) of M, summed
# over all tiles in the same order (K blocks of WINO_DW_KB tiles) whatever the thread count, so no sum crosses
# threads; each thread transforms the image channels of its blocks and the whole cotangent, WINO_DW_KB tiles at a
# time, into packed panels (the channels as the MR-row A panels, written by masked stores at shifted addresses;
# the filters as NR-wide B panels) that the shared microkernel accumulates into M.
WINO_DW_KB = 64
MAX_THREADS = 256  # the most threads a call runs on (the thread team's workers and the caller)
_WINO_DY = (((0, 1),), ((0, 1), (1, 1)), ((0, 1), (1, -1)), ((1, -1),))  # A (4 x 2), with signs
_WINO_DW = (((0, 1.0), (1, 0.5), (2, 0.5)), ((1, 0.5), (2, -0.5)), ((1, 0.5), (2, 0.5), (3, 1.0)))  # Gᵀ (3 x 4)


def winograd_dw_geometry(view, N: int | None, M, trans_b: bool, accumulate: bool, cfg: GemmConfig, lanes: int):
    """(C, H, W, row stride, image stride) of a 3x3 stride-1 convolution's filter gradient (op(A) = the A view's
    transpose: rows 3 window rows x 3C channels, K the pixels (images, H, W)) that the Winograd path takes, else
    None: the forward's conditions (`winograd_geometry`) on the same image."""
    if view is None or trans_b or accumulate or N is None or N % cfg.nr:
        return None
    off, rows, cols = view
    if len(rows) != 2 or len(cols) != 3 or (isinstance(M, int) and M != rows[0][0] * rows[1][0]):
        return None
    return winograd_geometry((off, cols, rows), N, None, False, False, cfg, lanes)


def _wino_dw_slice(cx: int, N: int, cfg: GemmConfig, esize: int) -> tuple[int, int, int]:
    """(V, E, M) parts of a thread's workspace for the filter gradient, in elements (multiples of 64 bytes), for
    channel blocks of MR or of the narrow kernel's rows."""
    align, pad = 64 // esize, _plane_pad(esize)
    ncb = _cdiv(cx, min(cfg.mr, _edge_rows(cfg) or cfg.mr))
    rows = max(_rup(cx, cfg.mr), _rup(cx, _edge_rows(cfg) or cfg.mr))
    return (_rup(16 * (ncb * WINO_DW_KB * cfg.mr + pad), align), _rup(16 * (WINO_DW_KB * N + pad), align),
            _rup(16 * rows * N, align))


def _wino_dw_fn(g: _Gen, name: str, view, geo, N: int, epi: ir.Function | None) -> ir.Function:
    """wino(A, B, C, K, ldb, ldc, ws, tid, nthreads, ectx): C (9C x N) = the filter gradient (see above).

    Channel blocks of MR rows, or of the narrow kernel's where that shares them out more evenly among the call's
    threads (32 channels on 2 threads: 8 + 8 | 8 + 8, not 12 + 12 | 8): every element of M is the same sum in
    the same order either way."""
    cfg = g.cfg
    MR, NR, L, KB = cfg.mr, cfg.nr, g.L, WINO_DW_KB
    cx, H, W, rs, img = geo
    off = view[0]
    TW, TH = W // 2, H // 2
    nfb = N // NR
    narrow = _edge_rows(cfg)
    finish = _finish_fn(g, MR)
    sv, se, _ = _wino_dw_slice(cx, N, cfg, g.esize)
    fn = ir.Function(g.module, ir.FunctionType(_VOID, [_PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _I32, _I32, _PTR]),
                     name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    A, B, C, Kv, ldb, ldc, ws, tid32, nth32, ectx = fn.args
    for a, nm in zip(fn.args, ["A", "B", "C", "K", "ldb", "ldc", "ws", "tid", "nthreads", "ectx"], strict=True):
        a.name = nm
    for a in (A, B, C, ws):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    half = ir.Constant(g.V, [0.5] * L)
    tbuf = b.alloca(ir.ArrayType(g.T, 9 * MR * NR), name="out")  # the 9 taps' MR x NR tiles of one block
    tbuf.align = 64
    tbuf.type = _PTR
    tid, nth = b.sext(tid32, _I64), b.sext(nth32, _I64)
    Vp = g.gep(b, ws, b.mul(tid, _c64(sum(_wino_dw_slice(cx, N, cfg, g.esize)))))
    Ep = g.gep(b, Vp, _c64(sv))
    Mp = g.gep(b, Ep, _c64(se))
    ntiles = b.mul(b.sdiv(Kv, _c64(H * W)), _c64(TH * TW))
    pad = _plane_pad(g.esize)  # V's and E's planes (one a ξ) a cache line more apart than their size
    eplane = nfb * KB * NR + pad

    def blocks(R: int) -> None:
        """The whole gradient with channel blocks of R rows (A panels keep their MR stride)."""
        ncb = _cdiv(cx, R)
        vplane = ncb * KB * MR + pad
        ukernel = _ukernel_fn(g, None if R == MR else R)
        # the last channel block in the narrow kernel where its rows fit (32 channels on AVX2: 5 x 6 + 2, computed
        # as 4 rows, not 6; 64: 10 x 6 + 4), its own product's rows only
        last = cx - (ncb - 1) * R
        ukernel_last = _ukernel_fn(g, narrow) if R == MR and narrow and last <= narrow else None
        i0, i1 = _share(b, _c64(ncb * nfb), tid, nth)  # blocks of M, channel-block major
        with b.if_then(b.icmp_signed("<", i0, i1)):
            cb_lo, cb_hi = b.udiv(i0, _c64(nfb)), b.udiv(b.sub(i1, _c64(1)), _c64(nfb))  # this thread's blocks
            # panel rows past C (the last channel block's) are read by the microkernel, their sums dropped
            with _Loop(b, _c64(0), _c64(16 * vplane), _c64(L), "vz", unroll=False) as i:
                g.store_vec(b, g.zero, Vp, i, align=g.valign)
            lane = ir.Constant(ir.VectorType(_I64, L), list(range(L)))
            with _Loop(b, _c64(0), ntiles, _c64(KB), "kb", unroll=False) as kb:
                nk = _smin(b, _c64(KB), b.sub(ntiles, kb))
                with _Loop(b, _c64(0), nk, _c64(1), "t", unroll=False) as k:
                    tile = b.add(kb, k)
                    n, rest = b.udiv(tile, _c64(TH * TW)), b.urem(tile, _c64(TH * TW))
                    ty, tx = b.udiv(rest, _c64(TW)), b.urem(rest, _c64(TW))
                    src0 = b.add(_c64(off), b.add(b.mul(n, _c64(img)),
                                                  b.add(b.mul(ty, _c64(2 * rs)), b.mul(tx, _c64(2 * cx)))))
                    with _Loop(b, _c64(0), _c64(cx), _c64(L), "cv", unroll=False) as c0:
                        first = b.udiv(c0, _c64(R))  # the channel blocks this vector's lanes fall in
                        last = b.udiv(b.add(c0, _c64(L - 1)), _c64(R))
                        need = b.and_(b.icmp_unsigned("<=", first, cb_hi), b.icmp_unsigned(">=", last, cb_lo))
                        with b.if_then(need):
                            vals = _patch_transform(g, b, A, b.add(src0, c0), rs, cx)
                            for j in range(_cdiv(L, R) + 1):  # each block the lanes reach: a masked store per ξ
                                cb = b.add(first, _c64(j))
                                mine = b.and_(b.icmp_unsigned("<=", cb, last), b.and_(
                                    b.icmp_unsigned(">=", cb, cb_lo), b.icmp_unsigned("<=", cb, cb_hi)))
                                with b.if_then(mine):
                                    shift = b.sub(c0, b.mul(cb, _c64(R)))  # lane l is row shift + l of block cb
                                    at_l = b.add(g.splat(b, shift), lane)
                                    mask = b.and_(b.icmp_signed(">=", at_l, g.splat(b, _c64(0))),
                                                  b.icmp_signed("<", at_l, g.splat(b, _c64(R))))
                                    base_k = b.add(b.mul(k, _c64(MR)), shift)
                                    for xi in range(16):
                                        at = b.add(base_k, b.add(_c64(xi * vplane), b.mul(cb, _c64(KB * MR))))
                                        p = b.gep(Vp, [at], inbounds=False, source_etype=g.T)
                                        if g.slow_mstore:  # the other lanes written back as read: this
                                            # thread's own workspace (V, or E just past it), in bounds
                                            blend_store(b, vals[xi], p, g.esize, mask, ir.Constant(_I1, 1), g.mstore)
                                        else:
                                            b.call(g.mstore, [vals[xi], p, ir.Constant(_I32, g.esize), mask])
                    p0 = b.add(b.mul(n, _c64(H * W)), b.add(b.mul(ty, _c64(2 * W)), b.mul(tx, _c64(2))))
                    with _Loop(b, _c64(0), _c64(N), _c64(L), "fv", unroll=False) as f0:
                        ev = [[g.load_vec(b, B, b.add(b.mul(b.add(p0, _c64(i * W + j)), ldb), f0))
                               for j in range(2)] for i in range(2)]
                        t = [[_lin(b, ev[i], _WINO_DY[s]) for s in range(4)] for i in range(2)]  # along x
                        vals = [_lin(b, [t[0][s], t[1][s]], _WINO_DY[r]) for r in range(4) for s in range(4)]  # along y
                        fb, vv = b.udiv(f0, _c64(NR)), b.urem(f0, _c64(NR))
                        base_k = b.add(b.add(b.mul(k, _c64(NR)), vv), b.mul(fb, _c64(KB * NR)))
                        for xi in range(16):
                            g.store_vec(b, vals[xi], Ep, b.add(base_k, _c64(xi * eplane)), align=g.valign)
                load_old = b.icmp_signed(">", kb, _c64(0))
                with _Loop(b, i0, i1, _c64(1), "it", unroll=False) as it:
                    cb, fb = b.udiv(it, _c64(nfb)), b.urem(it, _c64(nfb))
                    for xi in range(16):  # M[ξ][block rows][fb cols] += V[ξ][cb] @ E[ξ][fb] over the block's tiles
                        ap = g.gep(b, Vp, b.add(_c64(xi * vplane), b.mul(cb, _c64(KB * MR))))
                        bp = g.gep(b, Ep, b.add(_c64(xi * eplane), b.mul(fb, _c64(KB * NR))))
                        cp = g.gep(b, Mp, b.add(b.mul(b.add(_c64(xi * ncb), cb), _c64(R * N)), b.mul(fb, _c64(NR))))
                        args = [ap, bp, cp, _c64(N), _c64(NR), nk, _c64(R), _c64(NR), load_old,
                                ir.Constant(_PTR, None)]
                        if ukernel_last is None:
                            b.call(ukernel, args)
                        else:
                            with b.if_else(b.icmp_signed("==", cb, _c64(ncb - 1))) as (narrow_block, whole):
                                with narrow_block:
                                    b.call(ukernel_last, args[:6] + [_c64(narrow)] + args[7:])
                                with whole:
                                    b.call(ukernel, args)
            # dW = Gᵀ M G per block, each tap's rows through the epilogue (or stored)
            with _Loop(b, i0, i1, _c64(1), "ot", unroll=False) as it:
                cb, fb = b.udiv(it, _c64(nfb)), b.urem(it, _c64(nfb))
                cnt = _smin(b, _c64(R), b.sub(_c64(cx), b.mul(cb, _c64(R))))  # the block's channels (rows of M)
                with _Loop(b, _c64(0), cnt, _c64(1), "oi", unroll=False) as i, \
                        _Loop(b, _c64(0), _c64(NR), _c64(L), "ov", unroll=False) as vv:
                    row = b.add(b.mul(cb, _c64(R)), i)
                    src = b.add(b.add(b.mul(row, _c64(N)), b.mul(fb, _c64(NR))), vv)
                    m = [[g.load_vec(b, Mp, b.add(src, _c64((r * 4 + s) * ncb * R * N)), align=g.valign)
                          for s in range(4)] for r in range(4)]
                    p = [[_lin(b, m[r], _WINO_DW[kx], half) for kx in range(3)] for r in range(4)]
                    for ky in range(3):
                        for kx in range(3):
                            y = _lin(b, [p[r][kx] for r in range(4)], _WINO_DW[ky], half)
                            at = b.add(b.add(b.mul(i, _c64(NR)), vv), _c64((ky * 3 + kx) * MR * NR))
                            g.store_vec(b, y, tbuf, at, align=g.valign)
                col = b.mul(fb, _c64(NR))
                for tap in range(9):
                    r0 = b.add(_c64(tap * cx), b.mul(cb, _c64(R)))
                    tile = g.gep(b, tbuf, _c64(tap * MR * NR))
                    cptr = g.gep(b, C, b.add(b.mul(r0, ldc), col))
                    if epi is not None:
                        b.call(epi, [tile, cptr, ldc, cnt, _c64(NR), r0, col, ectx])
                    else:
                        b.call(finish, [tile, cptr, ldc, cnt, _c64(NR), ir.Constant(_I1, 0), ir.Constant(_PTR, None)])

    # the busiest thread's work: its blocks x rows, a row of `narrow` costing ~15% more than one of MR
    weight = {MR: 20, narrow: 23}

    def cost(R, threads):
        return _cdiv(_cdiv(cx, R) * nfb, threads) * R * weight[R]

    def busiest(R):  # cost's twin at run time
        return b.mul(_cdiv1(b, _c64(_cdiv(cx, R) * nfb), nth), _c64(R * weight[R]))

    if narrow and any(cost(narrow, t) < cost(MR, t) for t in range(2, MAX_THREADS + 1)):
        with b.if_else(b.icmp_signed("<", busiest(narrow), busiest(MR))) as (few, wide):
            with few:
                blocks(narrow)
            with wide:
                blocks(MR)
    else:
        blocks(MR)
    b.ret_void()
    return fn

# ---------------------------------------------------------------------------------------------- driver


def _ir_resident(b, M, N, K, cfg: GemmConfig, esize: int):
    """IR twin of `_resident` (an i1)."""
    cols = _smin(b, _c64(cfg.nc), _rup_ir(b, N, _c64(cfg.nr)))
    fits = b.icmp_signed("<=", b.mul(b.mul(_rup_ir(b, K, _c64(cfg.unroll)), cols), _c64(esize)),
                         _c64(RESIDENT_B_BYTES))
    return b.and_(b.and_(b.icmp_signed(">", K, _c64(cfg.kc)), b.icmp_signed(">", M, _c64(cfg.mc))), fits)


def _ir_slice(b, M, N, K, cfg: GemmConfig, esize: int):
    """IR twin of `_slice_elems`."""
    align = _c64(64 // esize)
    kcmax = _smin(b, _c64(cfg.kc), _rup_ir(b, K, _c64(cfg.unroll)))
    a = _rup_ir(b, b.mul(_smin(b, _c64(cfg.mc), _rup_ir(b, M, _c64(cfg.mr))), _c64(cfg.kc)), align)
    cols = _smin(b, _c64(cfg.nc), _rup_ir(b, N, _c64(cfg.nr)))
    bb = b.mul(kcmax, cols)
    room = b.add(_smin(b, _c64(RESIDENT_B_BYTES // esize), b.mul(_rup_ir(b, K, _c64(cfg.unroll)), cols)),
                 b.mul(_c64(cfg.unroll), cols))
    room = b.select(b.icmp_signed(">", room, bb), room, bb)
    maybe = b.and_(b.icmp_signed(">", K, _c64(cfg.kc)), b.icmp_signed(">", M, _c64(cfg.mc)))
    return a, _rup_ir(b, b.select(maybe, room, bb), align)


class _Callee:
    """An indirect callee for llvmlite's `IRBuilder.call`: a pointer value with a function type."""

    def __init__(self, value: ir.Value, fnty: ir.FunctionType):
        self.value, self.function_type, self.type = value, fnty, value.type

    def get_reference(self) -> str:
        return self.value.get_reference()


class _FnPtr:
    """A function as a ``ptr`` argument (llvmlite would print its type as a typed pointer)."""

    type = _PTR

    def __init__(self, fn: ir.Function):
        self.fn = fn

    def get_reference(self) -> str:
        return self.fn.get_reference()


_PACK_TY = ir.FunctionType(_VOID, [_PTR, _PTR, _I64, _I64, _I64])
_VPACK_TY = ir.FunctionType(_VOID, [_PTR, _PTR, _I64, _I64, _I64, _I64])  # (dst, A, row0, k0, kc, nrows)
_EPI_TY = ir.FunctionType(_VOID, [_PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _PTR])
# wino(A, B, C, M, ldb, ldc, ws, tid, nthreads, epi, ectx)
_WINO_TY = ir.FunctionType(_VOID, [_PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _I32, _I32, _PTR, _PTR])
# (A, Bp, C, ldc, bstride, kc, mrem, nrem, load_old, tile, row, pc, M): a view tile (`_view_tile_fn`)
_TILE_TY = ir.FunctionType(_VOID, [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I1, _PTR, _I64, _I64, _I64])
# flags of the shared driver; above _GROUP_SHIFT, the rows of a view tile's group (`_view_group`)
_TRANS_A, _TRANS_B, _ACCUMULATE, _VIEW_A, _VIEW_ROWS, _VIEW_TILE = 1, 2, 4, 8, 16, 32
_GROUP_SHIFT = 8


# One row of op(A) against a non-transposed B (a batch of one: inference on one example, a recurrent step at
# batch 1, a library's one-row predict) is a GEMV: B is streamed row by row, GEMV_ROWS rows at a time, along a
# chunk of GEMV_CHUNK columns whose sums stay in L1, and nothing is packed. (The blocked path packed all of B
# for one row of work: 1x1024 @ 1024x1024 took 4.3x numpy's sgemv; a register tile of 8 vectors reading B in
# place, 512 bytes a row then a jump of ldb, 1.6-1.9x; this form 1.0-1.25x, Zen 4.) Each element of C is the
# GEMM's own sum (one fmuladd chain over k in increasing order per K block, from zero; a later block added to
# C as the microkernel does; the same epilogue pass over NR-column tiles), so a row's result does not depend on
# the batch it came in (tested bitwise).
GEMV_CHUNK = 2048  # columns a pass (their sums in an 8 KB stack buffer, in L1)
GEMV_ROWS = 4  # rows of B streamed at once (2: 1.4x slower; 8: no faster)
# a thread's range of up to this many rows runs as that many GEMVs (K 256, N 1024, Zen 4: 2 rows 81 -> 37 us,
# 4 rows 102 -> 59 us; 8 rows 99 -> 124 us, where the blocked path's 8-row kernel wins)
GEMV_MAX_ROWS = 4


def _gemv_fn(g: _Gen) -> ir.Function:
    """gemv(a, a_ks, B, ldb, C, ldc, n0, n1, K, kcb, accumulate, epi, ectx, tile, row): C[0, n0:n1] (+)= a @
    B[:, n0:n1] in K blocks of kcb, then epi (if not null) on each NR-column tile, as the driver would."""
    name = f"graphc.gemm.gemv.{g.tag}.{g.cfg.nr}.c{GEMV_CHUNK}.r{GEMV_ROWS}"
    argt = [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _I64, _I1, _PTR, _PTR, _PTR, _I64]
    return _shared(g, name, argt, lambda fn: _emit_gemv(g, fn))


def _emit_gemv(g: _Gen, fn: ir.Function) -> None:
    NR, L, CH, KU = g.cfg.nr, g.L, GEMV_CHUNK, GEMV_ROWS
    a, a_ks, B, ldb, C, ldc, n0, n1, K, kcb, accumulate, epi, ectx, tile, row = fn.args
    for arg, nm in zip(fn.args, ["a", "a_ks", "B", "ldb", "C", "ldc", "n0", "n1", "K", "kcb", "accumulate", "epi",
                                 "ectx", "tile", "row"], strict=True):
        arg.name = nm
    for arg in (a, B, C, tile):
        arg.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    has_epi = b.icmp_unsigned("!=", epi, ir.Constant(_PTR, None))
    epi = _Callee(epi, _EPI_TY)
    y = b.alloca(ir.ArrayType(g.T, CH), name="y")  # the chunk's sums over one K block
    y.align = 64
    y.type = _PTR

    def vectors(count, name):
        """A loop over the chunk's first `count` columns, a vector (its first column) at a time."""
        return _Loop(b, _c64(0), count, _c64(L), name, unroll=False)

    with _Loop(b, n0, n1, _c64(CH), "gj", unroll=False) as j:
        cnt = _smin(b, _c64(CH), b.sub(n1, j))
        with _Loop(b, _c64(0), K, kcb, "gp", unroll=False) as pc:
            kend = _smin(b, b.add(pc, kcb), K)
            with vectors(cnt, "gz") as v:
                g.store_vec(b, g.zero, y, v, align=64)
            # KU rows of B at a time, each streamed along the chunk: y = fmuladd(a[k+u], B[k+u], y) for u in
            # order, so each element is still one chain over k in increasing order
            kfull = b.sub(kend, b.srem(b.sub(kend, pc), _c64(KU)))
            for step, lo, hi, name in ((KU, pc, kfull, "gk"), (1, kfull, kend, "gt")):
                with _Loop(b, lo, hi, _c64(step), name, unroll=False) as k:
                    rows = [g.gep(b, B, b.add(b.mul(b.add(k, _c64(u)), ldb), j)) for u in range(step)]
                    s = [g.splat(b, b.load(g.gep(b, a, b.mul(b.add(k, _c64(u)), a_ks)), typ=g.T, align=g.esize))
                         for u in range(step)]
                    whole = b.sub(cnt, b.srem(cnt, _c64(L)))
                    with _Loop(b, _c64(0), whole, _c64(L), name + "v") as v:  # whole vectors
                        acc = g.load_vec(b, y, v, align=64)
                        for u in range(step):
                            acc = b.call(g.fmuladd, [s[u], g.load_vec(b, rows[u], v), acc])
                        g.store_vec(b, acc, y, v, align=64)
                    with b.if_then(b.icmp_signed("<", whole, cnt)):  # the last columns, masked
                        mask = g.lane_mask(b, 0, b.sub(cnt, whole))
                        acc = g.load_vec(b, y, whole, align=64)
                        for u in range(step):
                            acc = b.call(g.fmuladd, [s[u], g.load_vec(b, rows[u], whole, mask=mask), acc])
                        g.store_vec(b, acc, y, whole, align=64)
            load_old = b.or_(accumulate, b.icmp_signed(">", pc, _c64(0)))
            finish = b.and_(has_epi, b.icmp_signed(">=", kend, K))
            with b.if_else(finish) as (to_epi, to_c):
                with to_epi:  # NR-column tiles through the epilogue pass, as the driver's tiles go
                    with _Loop(b, _c64(0), cnt, _c64(NR), "ge", unroll=False) as t:
                        col = b.add(j, t)
                        nrem = _smin(b, _c64(NR), b.sub(cnt, t))
                        for u in range(NR // L):
                            val = g.load_vec(b, y, b.add(t, _c64(u * L)), align=64)
                            mask = g.lane_mask(b, u * L, nrem)
                            with b.if_then(load_old):  # the tile's old C (the valid columns) added
                                g.store_vec(b, b.fadd(val, g.load_vec(b, C, b.add(col, _c64(u * L)), mask=mask)),
                                            y, b.add(t, _c64(u * L)), align=64)
                        b.call(epi, [g.gep(b, y, t), g.gep(b, C, col), ldc, _c64(1), nrem, row, col, ectx])
                with to_c, vectors(cnt, "gc") as v:
                    mask = g.lane_mask(b, 0, b.sub(cnt, v))
                    val = g.load_vec(b, y, v, align=64)
                    with b.if_else(load_old) as (old, fresh):
                        with old:
                            g.store_vec(b, b.fadd(val, g.load_vec(b, C, b.add(j, v), mask=mask)), C, b.add(j, v),
                                        mask=mask)
                        with fresh:
                            g.store_vec(b, val, C, b.add(j, v), mask=mask)
    b.ret_void()


def _driver_fn(g: _Gen) -> ir.Function:
    """The shared driver (see `_emit_driver`): one per module, dtype and config."""
    c = g.cfg
    name = (f"graphc.gemm.driver.{g.tag}.{c.mr}x{c.nr}.k{c.unroll}.pf{c.prefetch_c}.kc{c.kc}.mc{c.mc}.nc{c.nc}."
            f"{c.loop_order}.d{c.direct_b_max_ld}x{c.direct_b_max_m}x{c.direct_b_max_span}")
    argt = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I32, _I32, _I32, _PTR, _PTR, _PTR, _PTR,
            _PTR]
    return _shared(g, name, argt, lambda fn: _emit_driver(g, fn))


def _emit_driver(g: _Gen, fn: ir.Function) -> None:
    """driver(A, B, C, M, N, K, lda, ldb, ldc, ws, tid, nthreads, flags, packA, packB, epi, ectx, Bpre).

    The GEMM of the module docstring with everything a particular GEMM fixes passed at run time: `flags`
    (`_TRANS_A` | `_TRANS_B` | `_ACCUMULATE`), the packing routines for its transpositions, and its epilogue
    pass ``epi(tile, C, ldc, mrem, nrem, row, col, ectx)`` (null: none), run on each finished tile. `Bpre`
    (null: none) is op(B) packed ahead of time by `emit_prepack` (a loop-invariant weight matrix, packed once
    before a loop): the blocked path reads its panels there and packs nothing; B itself is still read by the
    GEMV path (a few rows), which packs nothing anyway."""
    cfg = g.cfg
    MR, NR = cfg.mr, cfg.nr
    ukernel = _ukernel_fn(g)
    edge = _edge_rows(cfg)
    ukernel_edge = _ukernel_fn(g, edge) if edge else None
    small_kernels = [(r, _ukernel_fn(g, r, strided=True)) for r in small_rows(cfg)]
    ukernel_edge_in_place = _ukernel_fn(g, edge, strided=True) if edge else None
    ukernel_in_place = _ukernel_fn(g, None, strided=True)
    ukernel_row = dict(small_kernels)[1]
    ukernel_rows = _ukernel_fn(g, None, row_major=True)  # a view packed row-major (rows KC apart)
    ukernel_rows_edge = _ukernel_fn(g, edge, row_major=True) if edge else None
    A, B, C, Mv, Nv, Kv, lda, ldb, ldc, ws, tid32, nth32, flags, pack_a, pack_b, epi, ectx, bpre = fn.args
    names = ["A", "B", "C", "M", "N", "K", "lda", "ldb", "ldc", "ws", "tid", "nthreads", "flags", "packA", "packB",
             "epi", "ectx", "Bpre"]
    for a, nm in zip(fn.args, names, strict=True):
        a.name = nm
    ws.add_attribute("noalias")
    fn.attributes.add("optsize")  # loop control and calls only: no unswitched or unrolled copies of the nest
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    null = ir.Constant(_PTR, None)
    tile_buf = b.alloca(ir.ArrayType(g.T, MR * NR), name="tile")  # a finished tile on its way to the epilogue
    tile_buf.align = 64
    tile_buf.type = _PTR  # llvmlite would print a typed pointer
    small_buf = b.alloca(ir.ArrayType(g.T, SMALL_CHUNK * NR), name="chunk")  # the small path's finished rows
    small_buf.align = 64
    small_buf.type = _PTR
    tid = b.sext(tid32, _I64)
    nth = b.sext(nth32, _I64)

    def flag(bit):
        return b.icmp_unsigned("!=", b.and_(flags, ir.Constant(_I32, bit)), ir.Constant(_I32, 0))

    trans_a, trans_b, acc_flag, view_a = flag(_TRANS_A), flag(_TRANS_B), flag(_ACCUMULATE), flag(_VIEW_A)
    view_rows = flag(_VIEW_ROWS)  # the view packs row-major: tiles read it in place (rows kc apart)
    view_tile = flag(_VIEW_TILE)  # no packing: `packA` is the view's tile function, reading A in place
    group = b.zext(b.lshr(flags, ir.Constant(_I32, _GROUP_SHIFT)), _I64)  # rows a view tile must not cross
    has_epi = b.icmp_unsigned("!=", epi, null)
    epi_ptr = epi
    tile_view = _Callee(pack_a, _TILE_TY)
    pack_view = _Callee(pack_a, _VPACK_TY)
    pack_a = _Callee(pack_a, _PACK_TY)
    pack_b = _Callee(pack_b, _PACK_TY)
    epi = _Callee(epi, _EPI_TY)

    ret = fn.append_basic_block("ret")
    work = fn.append_basic_block("work")
    positive = [b.icmp_signed(">", d, _c64(0)) for d in (Mv, Nv, Kv)]
    b.cbranch(b.and_(b.and_(positive[0], positive[1]), positive[2]), work, ret)
    b.position_at_end(ret)
    b.ret_void()
    b.position_at_end(work)

    # split the tile grid among threads. View tiles never cross a group (an image row's pixels; a filter
    # gradient's taps of one window row): where a group is at most MR rows each group is a tile, so M is shared
    # in whole groups (25 taps of a 5x5 filter: 3 groups | 2, not 24 rows | 1)
    small_groups = b.and_(view_tile, b.and_(b.icmp_signed(">", group, _c64(0)), b.icmp_signed("<=", group, _c64(MR))))
    munit = b.select(small_groups, group, _c64(MR))
    mt = _cdiv_ir(b, Mv, munit)
    nt = _cdiv_ir(b, Nv, _c64(NR))
    work_m = b.mul(_cdiv1(b, mt, nth), nt)
    work_n = b.mul(mt, _cdiv1(b, nt, nth))
    split_m = b.or_(
        b.icmp_signed("<", work_m, work_n),
        b.and_(b.icmp_signed("==", work_m, work_n), b.icmp_signed(">=", Mv, Nv)),
    )

    def part(tiles, tile, extent):
        start, end = _share(b, tiles, tid, nth)
        return _smin(b, b.mul(start, tile), extent), _smin(b, b.mul(end, tile), extent)

    mlo, mhi = part(mt, munit, Mv)
    nlo, nhi = part(nt, _c64(NR), Nv)
    m0 = b.select(split_m, mlo, _c64(0))
    m1 = b.select(split_m, mhi, Mv)
    n0 = b.select(split_m, _c64(0), nlo)
    n1 = b.select(split_m, Nv, nhi)
    empty = b.or_(b.icmp_signed(">=", m0, m1), b.icmp_signed(">=", n0, n1))
    go = fn.append_basic_block("go")
    b.cbranch(empty, ret, go)
    b.position_at_end(go)

    # workspace slice
    a_el, b_el = _ir_slice(b, Mv, Nv, Kv, cfg, g.esize)
    Ap = g.gep(b, ws, b.mul(tid, b.add(a_el, b_el)))
    Bp = g.gep(b, Ap, a_el)

    # block sizes: balanced, rounded to the tile / unroll
    def balanced(extent, cap, quantum):
        nblk = _cdiv_ir(b, extent, _c64(cap))
        return _rup_ir(b, _cdiv1(b, extent, nblk), _c64(quantum))

    group = b.select(b.icmp_signed(">", group, _c64(0)), group, b.add(Mv, _c64(1)))
    mcb = balanced(b.sub(m1, m0), cfg.mc, MR)
    # view tiles: M blocks of whole groups where a group is at most a block (a block edge would cut a tile)
    mcb = b.select(b.and_(view_tile, b.icmp_signed("<=", group, mcb)), _rup_ir(b, mcb, group), mcb)
    ncb = balanced(b.sub(n1, n0), cfg.nc, NR)
    kcb = _k_block(b, Kv, cfg)
    # narrow non-transposed B in a thread with few A panels: full B panels are read in place
    direct = ir.Constant(_I1, 0)
    if cfg.direct_b_max_ld > 0:
        direct = b.and_(b.icmp_signed("<=", ldb, _c64(cfg.direct_b_max_ld)),
                        b.icmp_signed("<=", b.sub(m1, m0), _c64(cfg.direct_b_max_m)))
        direct = b.and_(direct, b.not_(trans_b))
        if cfg.direct_b_max_span > 0:
            span = b.mul(b.mul(kcb, ldb), _c64(g.esize))
            direct = b.and_(direct, b.icmp_signed("<=", span, _c64(cfg.direct_b_max_span)))
    # element strides of op(A) along rows (M) and along K, of op(B) along K and along columns (N)
    a_rs, a_ks = b.select(trans_a, _c64(1), lda), b.select(trans_a, lda, _c64(1))
    b_ks, b_cs = b.select(trans_b, _c64(1), ldb), b.select(trans_b, ldb, _c64(1))

    def a_src(row, pc):  # element offset of op(A)[row, pc] in A
        return b.add(b.mul(row, a_rs), b.mul(pc, a_ks))

    def b_src(col, pc):  # element offset of op(B)[pc, col] in B
        return b.add(b.mul(pc, b_ks), b.mul(col, b_cs))

    # few rows, or a short K: A read in place by the narrow kernels (see SMALL_M)
    small = b.or_(b.icmp_signed("<=", b.sub(m1, m0), _c64(SMALL_M)), b.icmp_signed("<=", Kv, _c64(SMALL_K)))
    # ... or one B panel (N <= NR: an output layer of 10 classes, a thin layer): a packed A panel would be read
    # once, so packing it is a copy of A for nothing (Zen 3: 1024x256 . 256x8 33 -> 43 GFLOP/s, the 64-32-10 and
    # 64-128-10 MLPs' batch-32 epochs 4-5% faster)
    small = b.or_(small, b.icmp_signed("<=", b.sub(n1, n0), _c64(NR)))
    small = b.and_(small, b.not_(view_a))  # a view is packed whatever its size
    # a transposed A (a weight gradient's Xᵀ) is read in place by the strided kernels instead of copied into
    # panels: at each k a tile's MR rows are MR contiguous elements, as in a panel, and the transposing copy is
    # saved (the rows past the last whole tile: an `edge`-row tile where there is one, then one by one). With AVX2's
    # 6-row tiles only for one K block: each k reads 24 bytes of a 64-byte line, and over many K blocks (an LSTM's
    # Hᵀ·dZ, K = 3200) the panel read in place ran ~9% slower than packed, where a 32-row batch's weight gradients
    # (K = 32) ran ~8% faster an epoch (Zen 3, alternated runs)
    a_in_place = b.and_(trans_a, b.not_(view_a))
    if cfg.mr < 8:  # AVX2's (and SSE's) 6-row tiles
        a_in_place = b.and_(a_in_place, b.icmp_signed("<=", Kv, _c64(cfg.kc)))

    prepacked = b.and_(b.icmp_unsigned("!=", bpre, null), b.not_(direct))  # B read in place where it may be
    resident = b.and_(_ir_resident(b, Mv, Nv, Kv, cfg, g.esize), b.not_(b.or_(direct, prepacked)))
    npad = _rup_ir(b, Nv, _c64(NR))  # a prepacked B's columns: panels of NR, zero-padded

    def m_block(ic, pc, kc, bpk, nfull):
        """One M block against one K block of B (packed at `bpk`; its first `nfull` columns read in place)."""
        load_old = b.or_(acc_flag, b.icmp_signed(">", pc, _c64(0)))
        finish = b.and_(has_epi, b.icmp_signed(">=", b.add(pc, kc), Kv))  # the epilogue's K block
        tptr = b.select(finish, tile_buf, null)
        mc = _smin(b, mcb, b.sub(m1, ic))

        def panel(jr):
            """B panel jr of the block: (its first element, the stride between its rows, its first column of C,
            its valid columns); read in place among the first `nfull` columns, else from the packed block."""
            in_place = b.icmp_signed("<", jr, nfull)
            bptr = b.select(in_place, g.gep(b, B, b_src(b.add(jc, jr), pc)), g.gep(b, bpk, b.mul(jr, kc)))
            return bptr, b.select(in_place, ldb, _c64(NR)), b.add(jc, jr), _smin(b, _c64(NR), b.sub(nc, jr))

        def tile(jr, ir_, ap_panel, rows=None):
            bptr, bstride, col, nrem = panel(jr)
            row = b.add(ic, ir_)
            cptr = g.gep(b, C, b.add(b.mul(row, ldc), col))
            mrem = _smin(b, _c64(MR), b.sub(mc, ir_)) if rows is None else rows
            uargs = [ap_panel, bptr, cptr, ldc, bstride, kc, mrem, nrem, load_old, tptr]

            def run(kern, kern_edge, args):
                if kern_edge is None:
                    b.call(kern, args)
                else:  # the last rows of the M range: the narrower kernel where they fit it
                    with b.if_else(b.icmp_signed("<=", mrem, _c64(edge))) as (narrow, full):
                        with narrow:
                            b.call(kern_edge, args)
                        with full:
                            b.call(kern, args)

            if ap_panel is None:  # a view tile: A read in place
                b.call(tile_view, [A, *uargs[1:], row, pc, Mv])
            else:
                with b.if_else(view_rows) as (rowmajor, panels):
                    with rowmajor:  # the tile's rows of the row-major block
                        run(ukernel_rows, ukernel_rows_edge,
                            [g.gep(b, Ap, b.mul(ir_, _c64(cfg.kc))), *uargs[1:]])
                    with panels:
                        with b.if_else(a_in_place) as (unpacked, packed_panel):
                            with unpacked:  # whole MR-row tiles only (`rest_rows` takes the others)
                                b.call(ukernel_in_place, [g.gep(b, A, a_src(row, pc)), *uargs[1:], a_rs, a_ks])
                            with packed_panel:
                                run(ukernel, ukernel_edge, uargs)
            with b.if_then(finish):  # the tile is in tile_buf (in L1): the epilogue takes it to C
                b.call(epi, [tile_buf, cptr, ldc, mrem, nrem, row, col, ectx])

        def rest_rows(jr, ir0, count):
            """Rows [ir0, ir0 + count) (count < MR) of an A read in place, against B panel jr: an `edge`-row tile
            where they fill one, then one row at a time (only rows of A are read), the epilogue over all of them."""
            bptr, bstride, col, nrem = panel(jr)
            row0 = b.add(ic, ir0)

            def rows_at(kern, i, rows):
                row = b.add(row0, i)
                tp = b.select(finish, g.gep(b, tile_buf, b.mul(i, _c64(NR))), null)
                b.call(kern, [g.gep(b, A, a_src(row, pc)), bptr, g.gep(b, C, b.add(b.mul(row, ldc), col)), ldc,
                              bstride, kc, rows, nrem, load_old, tp, a_rs, a_ks])

            first = _c64(0)
            if edge is not None:
                wide = b.icmp_signed(">=", count, _c64(edge))
                with b.if_then(wide):
                    rows_at(ukernel_edge_in_place, _c64(0), _c64(edge))
                first = b.select(wide, _c64(edge), _c64(0))
            with _Loop(b, first, count, _c64(1), "rr") as i:
                rows_at(ukernel_row, i, _c64(1))
            with b.if_then(finish):
                b.call(epi, [tile_buf, g.gep(b, C, b.add(b.mul(row0, ldc), col)), ldc, count, nrem, row0, col, ectx])

        def split_tail(mc):
            """(rows run as MR-row panels, whether the 13-16 rows left after them run as two `edge`-row tiles
            reading A in place: 16 rows of work for 13-16, where one MR-row tile and an edge-row one do 20; None
            where there is no narrower kernel). A view is only ever read packed."""
            if edge is None or 2 * edge - MR < 1:
                return mc, None
            rem = b.srem(mc, _c64(MR))
            # a transposed A only where it is read in place anyway (AVX2: one K block; over many, the 4-row tiles'
            # rows lda apart made an LSTM's Hᵀ·dZ, K = 3200, ~10% slower than packed on a Zen 3)
            tail = b.and_(b.not_(view_a), b.or_(b.not_(trans_a), a_in_place))
            tail = b.and_(b.and_(tail, b.icmp_signed(">=", mc, _c64(MR))),
                          b.and_(b.icmp_signed(">", rem, _c64(0)), b.icmp_signed("<=", rem, _c64(2 * edge - MR))))
            return b.select(tail, b.sub(mc, b.add(rem, _c64(MR))), mc), tail

        def in_place_tile(jr, ir_, rows):
            """`edge` rows of op(A) from row ir_ of the block, read in place, against B panel jr; the first `rows`
            of them stored (each element the same fmuladd chain as the packed kernels': the same bits)."""
            bptr, bstride, col, nrem = panel(jr)
            row = b.add(ic, ir_)
            cptr = g.gep(b, C, b.add(b.mul(row, ldc), col))
            b.call(ukernel_edge_in_place, [g.gep(b, A, a_src(row, pc)), bptr, cptr, ldc, bstride, kc, rows, nrem,
                                           load_old, tptr, a_rs, a_ks])
            with b.if_then(finish):
                b.call(epi, [tile_buf, cptr, ldc, rows, nrem, row, col, ectx])

        with b.if_else(small) as (narrow, packed):
            with narrow:  # per B panel, chunks of rows: in groups of small_rows(cfg), widest first
                with _Loop(b, _c64(0), nc, _c64(NR), "sj") as jr:
                    bptr, bstride, col, nrem = panel(jr)
                    with _Loop(b, _c64(0), mc, _c64(SMALL_CHUNK), "sc") as cs:
                        cnt = _smin(b, _c64(SMALL_CHUNK), b.sub(mc, cs))
                        lo = cs
                        end = b.add(cs, cnt)
                        for q, (r, kern) in enumerate(small_kernels):  # whole groups of r of the rows left
                            hi = b.sub(end, b.srem(b.sub(end, lo), _c64(r))) if r > 1 else end
                            split = [v for v in range(1, r) if small_split(small_rows(cfg), v)] if q == 0 else []
                            if split:  # the last rows to the narrower kernels
                                rem = b.srem(cnt, _c64(r))
                                fewer = b.icmp_signed("==", rem, _c64(split[0]))
                                for v in split[1:]:
                                    fewer = b.or_(fewer, b.icmp_signed("==", rem, _c64(v)))
                                fewer = b.and_(fewer, b.icmp_signed(">=", cnt, _c64(r)))
                                hi = b.select(fewer, b.sub(hi, _c64(r)), hi)
                            with _Loop(b, lo, hi, _c64(r), f"sr{r}") as ir_:
                                row = b.add(ic, ir_)
                                cptr = g.gep(b, C, b.add(b.mul(row, ldc), col))
                                # finished rows go to the chunk's tile, for one epilogue pass per chunk
                                sptr = b.select(finish, g.gep(b, small_buf, b.mul(b.sub(ir_, cs), _c64(NR))),
                                                null)
                                b.call(kern, [g.gep(b, A, a_src(row, pc)), bptr, cptr, ldc, bstride, kc,
                                              _c64(r), nrem, load_old, sptr, a_rs, a_ks])
                            lo = hi
                        with b.if_then(finish):
                            row = b.add(ic, cs)
                            cptr = g.gep(b, C, b.add(b.mul(row, ldc), col))
                            b.call(epi, [small_buf, cptr, ldc, cnt, nrem, row, col, ectx])
            with packed:
                with b.if_then(b.not_(view_tile)), b.if_else(view_a) as (viewed, stored):
                    with viewed:
                        b.call(pack_view, [Ap, A, ic, pc, kc, mc])
                    with stored, b.if_then(b.not_(a_in_place)):
                        b.call(pack_a, [Ap, g.gep(b, A, a_src(ic, pc)), lda, kc, mc])
                with b.if_else(view_tile) as (grouped, panels):
                    # view tiles do not cross a group (an image row): MR rows or to its end
                    with grouped, _Steps(b, fn, mc, "gr") as steps:
                        ir_ = steps.i
                        left = _smin(b, b.sub(group, b.urem(b.add(ic, ir_), group)), b.sub(mc, ir_))
                        rows = _smin(b, _c64(MR), left)
                        if edge:  # 13-16 rows left: two tiles of the narrow kernel, not a wide one and a sliver
                            two = b.and_(b.icmp_signed(">", left, _c64(MR)), b.icmp_signed("<=", left, _c64(2 * edge)))
                            rows = b.select(two, _c64(edge), rows)
                        with _Loop(b, _c64(0), nc, _c64(NR), "gjr") as jr:
                            tile(jr, ir_, None, rows)
                        steps.step(rows)
                    with panels:
                        mpanels, tail = split_tail(mc)
                        # A in place: whole tiles, then the rows left (but a split tail's)
                        notail = b.not_(tail) if tail is not None else ir.Constant(_I1, 1)
                        rest = b.and_(a_in_place, notail)
                        whole = b.sub(mc, b.srem(mc, _c64(MR)))
                        mpanels = b.select(rest, whole, mpanels)
                        if cfg.loop_order == "jr_ir":
                            with _Loop(b, _c64(0), nc, _c64(NR), "jr") as jr, \
                                    _Loop(b, _c64(0), mpanels, _c64(MR), "ir") as ir_:
                                tile(jr, ir_, g.gep(b, Ap, b.mul(ir_, kc)))
                        else:
                            with _Loop(b, _c64(0), mpanels, _c64(MR), "ir") as ir_, \
                                    _Loop(b, _c64(0), nc, _c64(NR), "jr") as jr:
                                tile(jr, ir_, g.gep(b, Ap, b.mul(ir_, kc)))
                        if tail is not None:
                            with b.if_then(tail), _Loop(b, _c64(0), nc, _c64(NR), "tjr") as jr:
                                # rows [mpanels, mc): 13-16 rows as two narrow tiles reading A in place; the
                                # first stores only the rows the second (the last `edge` rows) does not
                                in_place_tile(jr, mpanels, b.sub(b.sub(mc, mpanels), _c64(edge)))
                                in_place_tile(jr, b.sub(mc, _c64(edge)), _c64(edge))
                        with b.if_then(b.and_(rest, b.icmp_signed("<", mpanels, mc))), \
                                _Loop(b, _c64(0), nc, _c64(NR), "rjr") as jr:
                            rest_rows(jr, mpanels, b.sub(mc, mpanels))
    # up to GEMV_MAX_ROWS rows of op(A) against a stored (not transposed) B: each streamed through B's rows
    gemv_ok = b.and_(b.icmp_signed("<=", b.sub(m1, m0), _c64(GEMV_MAX_ROWS)),
                     b.not_(b.or_(b.or_(trans_b, view_a), view_tile)))
    gemv_blk, blocked = fn.append_basic_block("gemv"), fn.append_basic_block("blocked")
    b.cbranch(gemv_ok, gemv_blk, blocked)
    b.position_at_end(gemv_blk)
    with _Loop(b, m0, m1, _c64(1), "gm", unroll=False) as r:  # each row a pass over B (B stays in L2 after one)
        b.call(_gemv_fn(g), [g.gep(b, A, a_src(r, _c64(0))), a_ks, B, ldb, g.gep(b, C, b.mul(r, ldc)), ldc, n0, n1,
                             Kv, kcb, acc_flag, epi_ptr, ectx, tile_buf, r])
    b.branch(ret)
    b.position_at_end(blocked)
    with _Loop(b, n0, n1, ncb, "jc") as jc:
        nc = _smin(b, ncb, b.sub(n1, jc))
        with b.if_else(resident) as (res, blis):
            with res:  # every K block of B packed first (block pc at pc * NC), then M blocks outside K blocks
                ncr = _rup_ir(b, nc, _c64(NR))
                with _Loop(b, _c64(0), Kv, kcb, "rpc") as pc:
                    kc = _smin(b, kcb, b.sub(Kv, pc))
                    b.call(pack_b, [g.gep(b, Bp, b.mul(pc, ncr)), g.gep(b, B, b_src(jc, pc)), ldb, kc, nc])
                with _Loop(b, m0, m1, mcb, "ric") as ic:
                    with _Loop(b, _c64(0), Kv, kcb, "rpk") as pc:
                        kc = _smin(b, kcb, b.sub(Kv, pc))
                        m_block(ic, pc, kc, g.gep(b, Bp, b.mul(pc, ncr)), _c64(0))
            with blis:
                with _Loop(b, _c64(0), Kv, kcb, "pc") as pc:
                    kc = _smin(b, kcb, b.sub(Kv, pc))
                    # B panels read in place: the full ones when `direct` (then only the edge panel is packed)
                    nfull = b.select(direct, b.mul(b.sdiv(nc, _c64(NR)), _c64(NR)), _c64(0))
                    with b.if_then(b.and_(b.icmp_signed("<", nfull, nc), b.not_(prepacked))):
                        b.call(pack_b, [g.gep(b, Bp, b.mul(nfull, kc)), g.gep(b, B, b_src(b.add(jc, nfull), pc)),
                                        ldb, kc, b.sub(nc, nfull)])
                    # a prepacked B: K block pc's panels start at pc * npad, column jc's at jc * kc within it
                    bsrc = b.select(prepacked, g.gep(b, bpre, b.add(b.mul(pc, npad), b.mul(jc, kc))), Bp)
                    with _Loop(b, m0, m1, mcb, "ic") as ic:
                        m_block(ic, pc, kc, bsrc, nfull)
    b.ret_void()


def emit_gemm(
    module: ir.Module,
    name: str,
    *,
    target: Target,
    M: int | None,
    N: int | None,
    K: int | None,
    trans_a: bool = False,
    trans_b: bool = False,
    dtype: str = "float32",
    accumulate: bool = False,
    epilogue: Callable[[EpilogueContext], ir.Value] | None = None,
    extra_args: Sequence[ir.Type] = (),
    config: GemmConfig | None = None,
    a_view: tuple | None = None,
    algorithm: str = "",
    declare_helpers: bool = False,
    prepacked_b: bool = False,
) -> ir.Function:
    """Add ``name`` computing C (+)= op(A) @ op(B) to `module`; see the module docstring for the contract.
    ``prepacked_b``: the wrapper takes one more pointer after ``nthreads``, op(B) as `emit_prepack`'s routine
    packed it (for the same N, K, transposition, dtype and config), read instead of packing B.

    ``a_view`` = (offset, rows, cols): op(A) is read through that view of A (see "operand views"; lda and
    trans_a are then unused): read in place by ``name.tile`` where its innermost K digit allows
    (`_view_tile_ok`: a convolution's image), else packed by ``name.pack_a``. ``algorithm``: "winograd", a 3x3
    stride-1 convolution's product (`winograd_applies`) computed as Winograd F(2x2, 3x3) by ``name.wino``;
    "expanded", the filter gradient of a one-channel convolution with a few filters (`expanded_applies`) computed
    along (pixel, filter) vectors (where this target's vectors take it; else the packed product).

    ``name`` is a small wrapper around the module's shared driver, microkernel and packing routines (added on
    first use, internal, named ``graphc.gemm.*``); with an epilogue, ``name.epilogue`` is its epilogue pass.
    """
    for dim, v in (("M", M), ("N", N), ("K", K)):
        if v is not None and (not isinstance(v, int) or v < (1 if dim == "K" else 0)):
            raise ValueError(f"GEMM static {dim} must be a positive int or None, got {v!r}")
    cfg = config or default_config(target, dtype)
    g = _Gen(module, target, dtype, cfg, declare_helpers)
    if cfg.nr % g.L:
        raise ValueError(f"nr={cfg.nr} must be a multiple of the target's {g.L} lanes")
    extra_args = list(extra_args)

    driver = _driver_fn(g)
    kind = None
    if algorithm == "expanded":
        gd = _Gen(module, target, dtype, default_config(target, dtype), declare_helpers)
        geo = expanded_geometry(a_view, N, K, M, trans_b, accumulate, gd.L, gd.esize)
        if geo is not None:
            kind = ("expanded", geo)
    if algorithm == "rows":
        gd = _Gen(module, target, dtype, default_config(target, dtype), declare_helpers)
        geo = rows_geometry(a_view, N, K, M, trans_b, accumulate, gd.L)
        if geo is not None and g.L == 8 and cfg.nr >= 8:
            kind = ("rows", geo)
        geo = rows_dw_geometry(a_view, N, K, M, trans_b, accumulate, gd.L)
        if geo is not None and g.L == 8 and cfg.nr >= 8:
            kind = ("rows_dw", geo)
    if algorithm == "winograd":
        kind = _winograd_kind(a_view, N, K, M, trans_b, accumulate, cfg, g.L)
        if kind is None:
            raise ValueError(f"{name}: a Winograd product that this config cannot run ({cfg}, {g.L} lanes)")
    if a_view is not None:
        if trans_a:
            raise ValueError("an A view already says how op(A) is read: trans_a must be False")
        pack_a = (_view_tile_fn(g, f"{name}.tile", a_view) if _view_tile_ok(a_view)
                  else _view_pack_fn(g, f"{name}.pack_a", a_view))
    else:
        pack_a = _pack_fn(g, trans_a, cfg.mr)
    pack_b = _pack_fn(g, not trans_b, cfg.nr)
    ectx_t = ir.LiteralStructType(extra_args)
    epi = None
    if epilogue is not None:
        epi = _emit_epilogue_fn(g, f"{name}.epilogue", epilogue, ectx_t, full_cols=N is not None and N % cfg.nr == 0,
                               n_static=N)

    if prepacked_b and (kind is not None or algorithm):
        raise ValueError(f"{name}: a prepacked B is for the packed product only, not {algorithm!r}")
    lead = 13 if prepacked_b else 12
    argt = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I32, _I32, *([_PTR] * prepacked_b),
            *extra_args]
    fn = ir.Function(module, ir.FunctionType(_VOID, argt), name)
    for a, nm in zip(fn.args[:lead], ["A", "B", "C", "M", "N", "K", "lda", "ldb", "ldc", "ws", "tid", "nthreads",
                                      "Bpre"], strict=False):
        a.name = nm
    A, B, C, Mr, Nr, Kr, lda, ldb, ldc, ws, tid32, nth32 = fn.args[:12]
    bpre = fn.args[12] if prepacked_b else ir.Constant(_PTR, None)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ectx = ir.Constant(_PTR, None)
    if epi is not None and extra_args:  # the extra arguments travel to the epilogue pass in a struct
        ectx = b.alloca(ectx_t, name="extras")
        ectx.type = _PTR
        for i, a in enumerate(fn.args[lead:]):
            b.store(a, b.gep(ectx, [ir.Constant(_I32, 0), ir.Constant(_I32, i)], source_etype=ectx_t))
    dims = [_c64(d) if d is not None else r for d, r in ((M, Mr), (N, Nr), (K, Kr))]
    if kind is not None:
        if kind[0] == "expanded":
            b.call(_expanded_dw_fn(g, gd, a_view, kind[1], N),
                   [A, B, C, dims[2], ldb, ldc, ws, tid32, nth32,
                    _FnPtr(epi) if epi is not None else ir.Constant(_PTR, None), ectx])
        elif kind[0] == "rows":
            b.call(_rows_fwd_fn(g, gd, a_view, kind[1], N),
                   [A, B, C, dims[0], ldb, ldc, ws, tid32, nth32,
                    _FnPtr(epi) if epi is not None else ir.Constant(_PTR, None), ectx])
        elif kind[0] == "rows_dw":
            b.call(_rows_dw_fn(g, gd, a_view, kind[1], N),
                   [A, B, C, dims[2], ldb, ldc, ws, tid32, nth32,
                    _FnPtr(epi) if epi is not None else ir.Constant(_PTR, None), ectx])
        elif kind[0] == "fwd":
            b.call(_wino_fn(g, a_view, kind[1], N), [A, B, C, dims[0], ldb, ldc, ws, tid32, nth32,
                                                     _FnPtr(epi) if epi is not None else ir.Constant(_PTR, None), ectx])
        else:
            wino = _wino_dw_fn(g, f"{name}.wino", a_view, kind[1], N, epi)
            b.call(wino, [A, B, C, dims[2], ldb, ldc, ws, tid32, nth32, ectx])
        b.ret_void()
        return fn
    flags = (_TRANS_A if trans_a else 0) | (_TRANS_B if trans_b else 0) | (_ACCUMULATE if accumulate else 0)
    if a_view is not None:
        flags |= _VIEW_A | (_VIEW_TILE | _view_group(a_view) << _GROUP_SHIFT if _view_tile_ok(a_view)
                            else _VIEW_ROWS if _view_pack_kind(a_view, cfg.mr) == "r" else 0)
    b.call(driver, [A, B, C, *dims, lda, ldb, ldc, ws, tid32, nth32, ir.Constant(_I32, flags), _FnPtr(pack_a),
                    _FnPtr(pack_b), _FnPtr(epi) if epi is not None else ir.Constant(_PTR, None), ectx, bpre])
    b.ret_void()
    return fn


# ------------------------------------------------------------------------- B packed ahead of time
#
# A loop's matrix product whose B is loop-invariant (a recurrent layer's Wh, forward; Whᵀ in the backward pass)
# would pack B on every step where the driver packs it at all (B wider than `direct_b_max_ld`, or transposed).
# Packed once before the loop instead, into a buffer laid out as the driver's blocks (`prepacked_elements`),
# every step's product reads the panels there.


def prepacked_elements(N: int, K: int, target: Target, dtype: str, config: GemmConfig | None = None) -> int:
    """Elements of op(B) (K x N) packed ahead of time: K rows of N columns rounded up to whole NR panels."""
    cfg = config or default_config(target, dtype)
    return K * (-(-N // cfg.nr) * cfg.nr)


def _prepack_fn(g: _Gen) -> ir.Function:
    """prepack(dst, B, N, K, ldb, trans_b, tid, nthreads, packB): op(B) in the driver's K blocks, each block's
    columns in NR panels (block pc at pc * Npad, its column c at c * kc within it); the threads pack disjoint
    column panels."""
    c = g.cfg
    name = f"graphc.gemm.prepack.{g.tag}.nr{c.nr}.kc{c.kc}.k{c.unroll}"
    argt = [_PTR, _PTR, _I64, _I64, _I64, _I1, _I32, _I32, _PTR]
    return _shared(g, name, argt, lambda fn: _emit_prepack(g, fn))


def _emit_prepack(g: _Gen, fn: ir.Function) -> None:
    NR = g.cfg.nr
    dst, B, N, K, ldb, trans_b, tid32, nth32, pack_b = fn.args
    for a, nm in zip(fn.args, ["dst", "B", "N", "K", "ldb", "trans_b", "tid", "nthreads", "packB"], strict=True):
        a.name = nm
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pack_b = _Callee(pack_b, _PACK_TY)
    p0, p1 = _share(b, _cdiv_ir(b, N, _c64(NR)), b.sext(tid32, _I64), b.sext(nth32, _I64))
    c0, c1 = b.mul(p0, _c64(NR)), _smin(b, b.mul(p1, _c64(NR)), N)
    npad = _rup_ir(b, N, _c64(NR))
    kcb = _k_block(b, K, g.cfg)
    with b.if_then(b.icmp_signed("<", c0, c1)), _Loop(b, _c64(0), K, kcb, "pc", unroll=False) as pc:
        kc = _smin(b, kcb, b.sub(K, pc))
        src = b.select(trans_b, b.add(b.mul(c0, ldb), pc), b.add(b.mul(pc, ldb), c0))
        b.call(pack_b, [g.gep(b, dst, b.add(b.mul(pc, npad), b.mul(c0, kc))), g.gep(b, B, src), ldb, kc,
                        b.sub(c1, c0)])
    b.ret_void()


def emit_prepack(module: ir.Module, name: str, *, target: Target, N: int | None, K: int | None,
                 trans_b: bool = False, dtype: str = "float32", config: GemmConfig | None = None,
                 declare_helpers: bool = False) -> ir.Function:
    """Add ``name(dst, B, N, K, ldb, tid, nthreads)``: op(B) packed into `dst` (`prepacked_elements`, 64-byte
    aligned) for `emit_gemm(..., prepacked_b=True)` with the same N, K, trans_b, dtype and config. Threads
    split the column panels (the caller meets them before the product reads `dst`)."""
    cfg = config or default_config(target, dtype)
    g = _Gen(module, target, dtype, cfg, declare_helpers)
    helper = _prepack_fn(g)
    pack_b = _pack_fn(g, not trans_b, cfg.nr)
    fn = ir.Function(module, ir.FunctionType(_VOID, [_PTR, _PTR, _I64, _I64, _I64, _I32, _I32]), name)
    dst, B, Nr, Kr, ldb, tid32, nth32 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    dims = [_c64(d) if d is not None else r for d, r in ((N, Nr), (K, Kr))]
    b.call(helper, [dst, B, *dims, ldb, ir.Constant(_I1, int(trans_b)), tid32, nth32, _FnPtr(pack_b)])
    b.ret_void()
    return fn


# ----------------------------------------------------------------------- expanded image, one channel
#
# The filter gradient of a stride-1 convolution of a one-channel image with a few filters (LeNet's first layer:
# 5x5, 1 -> 6 filters), dW[tap, f] = sum over every pixel of the batch of image[pixel + tap] * dY[pixel, f], is a
# product only F columns wide and KH*KW rows deep over K = all the pixels: the packed GEMM holds one pixel's F
# filters in a vector (6 of 8 lanes) and walks K one pixel at a time. Here the vectors run along an output row's
# (pixel, filter) pairs instead, F floats a pixel, as dY stores them. Per image, the image is first "expanded":
# E[r][x·F + f] = image[r][x], each pixel repeated F times (the thread's workspace, in L1). Then tap (ky, kx) of
# output row y is E's row y + ky from kx·F on, lined up lane for lane with dY's row y, and
#
#     acc[tap][v mod P] += E[y + ky][kx·F + v] * dY[y][v]      over every vector v of every row y of every image
#
# where P = F / gcd(F, lanes) is the period of the filters' pattern along a row of vectors (3 for 6 filters in 16
# lanes); at the end each tap's lanes are summed per filter. Every multiply-add uses all its lanes. A thread owns
# rows of taps (ky): each tap's sum runs over every pixel in the same order whatever the thread count, so results
# are bitwise the same on any number of threads (not bitwise the packed product's: another summation order; tested
# against the reference at float tolerance). The finished tap rows go through the GEMM's epilogue pass like any
# tile (the SGD update of the filter in place). Measured on Zen 4 (LeNet, batch 64, 1 thread): 0.38 -> 0.19 ms.
# The forward the same way (out[y][v] = sum over taps of E[y + ky][kx·F + v] * W[tap][v mod P]) measured no faster
# than the packed product there (0.23 ms either way): one load per multiply-add, most of them split across cache
# lines (kx·F floats off a vector), and Zen 4 loads one 512-bit vector a cycle, so the packed product keeps it.
# (The rows path above takes those with at most 8 float32 filters first: it measured faster on LeNet's layer.)
EXPANDED = True  # set False to run these filter gradients as packed products (A/B comparisons, tests)
EXPANDED_MAX_E_BYTES = 48 * 1024  # one image's expanded rows: L1-sized (larger images take the packed product)


def _expanded_row(win: int, F: int, lanes: int) -> int:
    """Elements of a row of E: the expanded row rounded up to vectors, and one more vector (zeros) that the taps
    at kx > 0 read past the row."""
    return _rup(win * F, lanes) + lanes


def expanded_geometry(view, N, K, M, trans_b: bool, accumulate: bool, lanes: int, esize: int = 4):
    """(KH, KW, OH, OW, row stride, image stride, P) of a filter gradient the expanded path computes, else None:
    op(A) is a view whose rows are (KH, KW) taps at the image's row stride and 1 apart (stride 1, no dilation)
    and whose K runs over (images, OH, OW) with pixels 1 apart (one channel); N static, fewer than a vector's
    lanes, with a filter pattern of at most 3 vectors; B not transposed (its rows F apart); no accumulation; an
    image's expanded rows within EXPANDED_MAX_E_BYTES."""
    if not EXPANDED or view is None or trans_b or accumulate or not isinstance(N, int) or not 1 <= N < lanes:
        return None
    P = N // math.gcd(N, lanes)
    if P > 3:
        return None
    geo = _one_channel_conv(view[2], view[1])
    if geo is None:
        return None
    KH, KW, OH, OW, rs, img = geo
    if isinstance(M, int) and M != KH * KW:
        return None
    if (OH + KH - 1) * _expanded_row(OW + KW - 1, N, lanes) * esize > EXPANDED_MAX_E_BYTES:
        return None
    return KH, KW, OH, OW, rs, img, P


def expanded_applies(view, N, K, trans_b: bool, dtype: str, M=None) -> bool:
    """Whether the scheduler makes this product an expanded one (`GemmKernel.algorithm == "expanded"`): the geometry
    fits the widest vectors of any target (16 float32 lanes), so every target runs it."""
    lanes = 16 if dtype == "float32" else 8
    return expanded_geometry(view, N, K, M, trans_b, False, lanes, 4 if dtype == "float32" else 8) is not None


def _expanded_slice(geo, N: int, lanes: int, esize: int) -> int:
    """Elements of a thread's workspace: the expanded image, then the per-tap accumulators, each a multiple of
    64 bytes."""
    KH, KW, OH, OW, _, _, P = geo
    align = 64 // esize
    e = _rup((OH + KH - 1) * _expanded_row(OW + KW - 1, N, lanes), align)
    return e + _rup(KH * KW * P * lanes, align)


def _expanded_expand(gd: _Gen, b: ir.IRBuilder, A, E, base, geo, F: int) -> None:
    """E[r][x·F + f] = A[base + r·rs + x] for the image's OH + KH - 1 rows of OW + KW - 1 pixels; zeros past them."""
    KH, KW, OH, OW, rs, _, _ = geo
    L = gd.L
    win = OW + KW - 1
    er = _expanded_row(win, F, L)
    with _Loop(b, _c64(0), _c64(OH + KH - 1), _c64(1), "er", unroll=False) as r:
        src = b.add(base, b.mul(r, _c64(rs)))
        dst = b.mul(r, _c64(er))
        for u in range(er // L):
            px0 = u * L // F
            cnt = min(L, win - px0)
            if cnt <= 0:
                gd.store_vec(b, gd.zero, E, b.add(dst, _c64(u * L)))
                continue
            s = gd.load_vec(b, A, b.add(src, _c64(px0)), mask=None if cnt == L else gd.const_mask(cnt))
            idx = ir.Constant(ir.VectorType(_I32, L), [(u * L + j) // F - px0 for j in range(L)])
            gd.store_vec(b, b.shuffle_vector(s, s, idx), E, b.add(dst, _c64(u * L)))


def _expanded_finish(g: _Gen, b, tile, C, ldc, cnt, row, F: int, epi, ectx) -> None:
    """The tile's first `cnt` rows (F columns) to C's row `row` on: through the epilogue pass, or stored."""
    cptr = g.gep(b, C, b.mul(row, ldc))
    with b.if_else(b.icmp_unsigned("!=", epi, ir.Constant(_PTR, None))) as (with_epi, plain):
        with with_epi:
            b.call(_Callee(epi, _EPI_TY), [tile, cptr, ldc, cnt, _c64(F), row, _c64(0), ectx])
        with plain:
            b.call(_finish_fn(g, g.cfg.mr), [tile, cptr, ldc, cnt, _c64(F), ir.Constant(_I1, 0),
                                             ir.Constant(_PTR, None)])


def _carried_loop(b: ir.IRBuilder, count: int, init: list, body: Callable, label: str) -> list:
    """for i in [0, count) (count >= 1, static): vals = body(i, vals), the values (vectors) carried in registers by
    phis from `init`; returns the last iteration's values."""
    fn = b.function
    pre = b.block
    loop = fn.append_basic_block(label)
    done = fn.append_basic_block(f"{label}.done")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(_I64, name=label)
    i.add_incoming(_c64(0), pre)
    phis = [b.phi(v.type) for v in init]
    for ph, v in zip(phis, init, strict=True):
        ph.add_incoming(v, pre)
    out = body(i, list(phis))
    nxt = b.add(i, _c64(1))
    i.add_incoming(nxt, b.block)
    for ph, v in zip(phis, out, strict=True):
        ph.add_incoming(v, b.block)
    b.cbranch(b.icmp_signed("<", nxt, _c64(count)), loop, done)
    b.position_at_end(done)
    return out


def _expanded_dw_fn(g: _Gen, gd: _Gen, view, geo, N: int) -> ir.Function:
    """expanded(A, B, C, K, ldb, ldc, ws, tid, nthreads, epi, ectx): C (KH·KW x F) = the filter gradient, the view's
    transpose (taps x pixels) times the cotangent B (pixels x F); a thread owns rows of taps (ky), summed over
    every image, row and vector in order, then its taps' rows go through the epilogue pass `epi` (null: stored)."""
    key = hashlib.sha256(repr((view, N)).encode()).hexdigest()[:16]
    name = f"graphc.gemm.expanded_dw.{gd.tag}.{g.tag}.{g.cfg.mr}x{g.cfg.nr}.{key}"  # its tiles: g's layout
    if name in g.module.globals:
        return g.module.globals[name]
    KH, KW, OH, OW, rs, img, P = geo
    F, L, MR = N, gd.L, g.cfg.mr
    V = _cdiv(OW * F, L)
    er = _expanded_row(OW + KW - 1, F, L)
    fn, (A, B, C, Kv, ldb, ldc, ws, tid32, nth32, epi, ectx), b = _conv_fn(g, name, "K")
    tid = b.sext(tid32, _I64)
    k0, k1 = _share(b, _c64(KH), tid, b.sext(nth32, _I64))  # the thread's rows of taps
    _return_if_empty(b, k0, k1)
    E = gd.gep(b, ws, b.mul(tid, _c64(_expanded_slice(geo, F, L, gd.esize))))  # the expanded image, then
    Acc = gd.gep(b, E, _c64(_rup((OH + KH - 1) * er, 64 // gd.esize)))  # the taps' accumulators
    nimg = _c64(view[2][0][0]) if view[2][0][0] else b.sdiv(Kv, _c64(OH * OW))
    na = KW * P  # accumulators of one row of taps
    with _Loop(b, b.mul(k0, _c64(na)), b.mul(k1, _c64(na)), _c64(1), "az", unroll=False) as i:
        gd.store_vec(b, gd.zero, Acc, b.mul(i, _c64(L)), align=gd.valign)
    off = view[0]
    masks = [None if (v + 1) * L <= OW * F else gd.const_mask(OW * F - v * L) for v in range(V)]
    with _Loop(b, _c64(0), nimg, _c64(1), "img", unroll=False) as n:
        _expanded_expand(gd, b, A, E, b.add(_c64(off), b.mul(n, _c64(img))), geo, F)
        with _Loop(b, k0, k1, _c64(1), "ky", unroll=False) as ky:
            abase = b.mul(ky, _c64(na * L))
            init = [gd.load_vec(b, Acc, b.add(abase, _c64(a * L)), align=gd.valign) for a in range(na)]

            def image_row(y, acc):  # the image's output row y: its accumulators carried by phis
                erow = b.mul(b.add(y, ky), _c64(er))
                grow = b.mul(b.add(b.mul(n, _c64(OH)), y), b.mul(_c64(OW), ldb))
                for v in range(V):
                    gv = gd.load_vec(b, B, b.add(grow, _c64(v * L)), mask=masks[v])
                    for kx in range(KW):
                        e = gd.load_vec(b, E, b.add(erow, _c64(kx * F + v * L)), mask=masks[v])
                        a = kx * P + v % P
                        acc[a] = b.call(gd.fmuladd, [e, gv, acc[a]])
                return acc

            acc = _carried_loop(b, OH, init, image_row, "dy")
            for a in range(na):
                gd.store_vec(b, acc[a], Acc, b.add(abase, _c64(a * L)), align=gd.valign)
    # each tap's lanes summed per filter (in lane order), into a tile of the thread's tap rows
    tile = b.alloca(ir.ArrayType(g.T, (KH * KW + MR) * g.cfg.nr), name="tile")  # rows NR apart, as the epilogue's
    tile.align = 64
    tile.type = _PTR
    with _Loop(b, k0, k1, _c64(1), "ry", unroll=False) as ky:
        trow = b.mul(b.sub(ky, k0), _c64(KW))
        for kx in range(KW):
            vecs = [gd.load_vec(b, Acc, b.add(b.mul(ky, _c64(KW * P * L)), _c64((kx * P + p) * L)),
                                align=gd.valign) for p in range(P)]
            for f in range(F):
                s = None
                for p in range(P):
                    for j in range(L):
                        if (p * L + j) % F == f:
                            x = b.extract_element(vecs[p], ir.Constant(_I32, j))
                            s = x if s is None else b.fadd(s, x)
                at = b.add(b.mul(b.add(trow, _c64(kx)), _c64(g.cfg.nr)), _c64(f))
                b.store(s, gd.gep(b, tile, at))
    nrows = b.mul(b.sub(k1, k0), _c64(KW))
    with _Loop(b, _c64(0), nrows, _c64(MR), "fr", unroll=False) as r:
        cnt = _smin(b, _c64(MR), b.sub(nrows, r))
        _expanded_finish(g, b, g.gep(b, tile, b.mul(r, _c64(g.cfg.nr))), C, ldc, cnt, b.add(b.mul(k0, _c64(KW)), r), F,
                       epi, ectx)
    b.ret_void()
    return fn


# ----------------------------------------------------------------------- output rows, one channel
#
# The forward of a stride-1 convolution of a one-channel image with at most 8 filters (LeNet's first layer: 5x5,
# 1 -> 6 filters over 28x28 images) is a product 25 taps deep and 6 columns wide over every pixel: the packed
# product holds one pixel's filters in a half vector (6 of 8 lanes) and reads one tap of one pixel per
# multiply-add, through packed panels of the image (~40% of the FMA peak on Zen 4, and half-width vectors run
# at half the FLOPs where a core has full-width FMA ports). Here the vectors run along an output row instead:
# for R output rows of an image at a time, and each filter f,
#
#     acc[r][v][f] += image[y + r + ky][kx + v·L .. + L] * W[ky, kx, f]      over the taps, in order
#
# (V = ceil(OW / L) vectors a row, the last one masked; two rows' last vectors share one vector where each is at
# most half full, as LeNet's 24-pixel rows' are; each filter weight broadcast once per tap for R·V vectors), all
# lanes busy on full-width vectors, the image read in place. The finished rows are turned into
# (pixel, filter) rows 8 pixels at a time (an 8x8 transpose of half vectors) and go through the GEMM's epilogue
# pass (bias, ReLU). Each output element is the packed product's own sum, one fmuladd chain over the taps in
# order from zero, so results are bitwise the packed product's, on any number of threads (a thread owns whole
# output rows). Measured on Zen 4 (LeNet, batch 64): 0.236 -> 0.133 ms on 1 thread, 0.12 -> 0.074 ms on 2.
#
# The filter gradient the same way (`_rows_dw_fn`): per image the cotangent's (pixel, filter) rows become
# per-filter planes, and acc[kx][f] += image row (shifted by kx) * plane[f], one vector accumulator per (tap,
# filter), CH taps a pass, summed over every vector of every row of every image and lane-summed at the end. It
# takes the one-channel filter gradients with at most 8 float32 filters before the expanded path below: LeNet's
# 0.19 -> 0.12 ms on 1 thread, 0.12 -> 0.075 ms on 2 (threads own runs of (ky, chunk of kx) units: bitwise the
# same on any thread count; not the expanded path's bits). The rows run in a loop, two pairs an iteration: fully
# unrolled over LeNet's 24 rows the kernel was no faster (0.13 ms) and the step's compile 1.4 s longer.
ROWS = True  # set False to run these forwards as packed products (A/B comparisons, tests)


def _rows_max_acc(lanes: int) -> int:
    """Accumulators (R·V·F vectors) the row loop keeps in registers: 24 of AVX-512's 32 (16 float32 lanes), 10
    of AVX2's 16."""
    return 24 if lanes >= 16 else 10


def _one_channel_conv(pixels, taps):
    """(KH, KW, OH, OW, row stride, image stride) of a stride-1, undilated convolution of a one-channel image,
    read from a view's digits: pixels (images, OH, OW) 1 apart, taps (KH, KW) at the image's row stride and 1
    apart, the image's rows and images laid out in order; else None."""
    if len(pixels) != 3 or len(taps) != 2:
        return None
    (_, img), (OH, rs), (OW, px) = pixels
    (KH, ks), (KW, kx) = taps
    if not (OH and OW and KH and KW and px == 1 and kx == 1 and ks == rs):
        return None
    if rs < OW + KW - 1 or (img and img < (OH + KH - 1) * rs):
        return None
    return KH, KW, OH, OW, rs, img


def _rows_view(view, N, taps, trans_b: bool, accumulate: bool, forward: bool):
    """The one-channel geometry (`_one_channel_conv`) of a product the rows path may take: the forward's view
    (pixels x taps) or its transpose (taps x pixels), `taps` (K or M) KH·KW where static, N static 1..8 filters,
    B not transposed, no accumulation; else None."""
    if not ROWS or view is None or trans_b or accumulate or not isinstance(N, int) or not 1 <= N <= 8:
        return None
    geo = _one_channel_conv(*((view[1], view[2]) if forward else (view[2], view[1])))
    if geo is None or (isinstance(taps, int) and taps != geo[0] * geo[1]):
        return None
    return geo


def rows_geometry(view, N, K, M, trans_b: bool, accumulate: bool, lanes: int):
    """(KH, KW, OH, OW, row stride, image stride, R) of a convolution forward the rows path computes, else None:
    op(A) is a view whose rows are (images, OH, OW) pixels 1 apart (one channel) and whose K runs over (KH, KW)
    taps at the image's row stride and 1 apart; N static, 1..8 filters; B not transposed; no accumulation; R·V·F
    accumulators fit in registers (R = 2 output rows a pass where they do, else 1)."""
    geo = _rows_view(view, N, K, trans_b, accumulate, forward=True)
    if geo is None:
        return None
    KH, KW, OH, OW, rs, img = geo
    V, most = _cdiv(OW, lanes), _rows_max_acc(lanes)
    if V * N > most:
        return None
    # two rows a pass where their accumulators fit, the rows' last vectors paired when each is at most half full
    two = (2 * V - 1) * N if _rows_paired(OW, lanes) else 2 * V * N
    return KH, KW, OH, OW, rs, img, 2 if two <= most else 1


def _rows_paired(OW: int, lanes: int) -> bool:
    """Whether two rows' last vectors, each at most half full, share one vector (low half: the first row's)."""
    return lanes >= 16 and 0 < OW - (_cdiv(OW, lanes) - 1) * lanes <= lanes // 2


def rows_dw_geometry(view, N, K, M, trans_b: bool, accumulate: bool, lanes: int):
    """(KH, KW, OH, OW, row stride, image stride, CH) of a filter gradient the rows path computes, else None: op(A)
    is the forward's view transposed (rows (KH, KW) taps, K (images, OH, OW) pixels 1 apart: one channel), N
    static, 1..8 filters, B (the cotangent) not transposed, no accumulation; CH taps of a row of taps a pass
    (CH·F accumulators, at most 18)."""
    geo = _rows_view(view, N, M, trans_b, accumulate, forward=False)
    if geo is None or lanes < 16:  # 18 accumulators and the loads: AVX-512's 32 registers
        return None
    KH, KW, OH, OW, rs, img = geo
    return KH, KW, OH, OW, rs, img, max(1, min(KW, 18 // N))


def rows_applies(view, N, K, trans_b: bool, dtype: str, M=None) -> bool:
    """Whether the scheduler makes this product a rows one (`GemmKernel.algorithm == "rows"`), a forward or a
    filter gradient: the geometry fits the widest vectors of any target (16 float32 lanes); float32 only (8
    filters a half vector)."""
    return dtype == "float32" and (rows_geometry(view, N, K, M, trans_b, False, 16) is not None
                                   or rows_dw_geometry(view, N, K, M, trans_b, False, 16) is not None)


def _rows_dw_slice(geo, N: int, lanes: int) -> int:
    """Elements of a thread's workspace for the rows filter gradient: one image's cotangent planes (OH rows x 8
    filters x its pixels in whole 8-pixel blocks and whole vectors), then the taps' accumulators."""
    KH, KW, OH, OW, _, _, _ = geo
    return _rup(OH * 8 * _rup(_cdiv(OW, lanes) * lanes, 8), 16) + KH * KW * N * lanes


def _rows_fwd_fn(g: _Gen, gd: _Gen, view, geo, N: int) -> ir.Function:
    """rows(A, B, C, M, ldb, ldc, ws, tid, nthreads, epi, ectx): C (pixels x F) = the view's product with the
    filters B (taps x F), R output rows of an image a pass; a thread owns a share of the passes; finished rows go
    through the epilogue pass `epi` (null: stored) in tiles of `g`'s layout (MR rows, NR = 8 columns)."""
    key = hashlib.sha256(repr((view, N)).encode()).hexdigest()[:16]
    name = f"graphc.gemm.rows_fwd.{gd.tag}.{g.tag}.{g.cfg.mr}x{g.cfg.nr}.{key}"
    if name in g.module.globals:
        return g.module.globals[name]
    KH, KW, OH, OW, rs, img, R = geo
    F, L, MR, NR, H = N, gd.L, g.cfg.mr, g.cfg.nr, g.L
    if H != 8 or NR < 8:
        raise ValueError(f"{name}: the rows path needs 8-lane tiles, got {g.L} lanes, NR={NR}")
    V = _cdiv(OW, L)
    W8 = _rup(V * L, 8)  # a finished row's floats per filter, whole 8-pixel blocks
    fn, (A, B, C, Mv, ldb, ldc, ws, tid32, nth32, epi, ectx), b = _conv_fn(g, name, "M")
    # each filter's finished rows (8 rows: the filters past F stay zero), then a tile of (pixel, filter) rows
    rows_t = ir.ArrayType(g.T, R * 8 * W8)
    fin = b.alloca(rows_t, name="rows")
    fin.align = 64
    fin.type = _PTR
    tile = b.alloca(ir.ArrayType(g.T, R * W8 * NR), name="tile")
    tile.align = 64
    tile.type = _PTR
    for i in range(R * 8 * W8 // gd.L):
        gd.store_vec(b, gd.zero, fin, _c64(i * gd.L), align=64)
    nimg = _c64(view[1][0][0]) if view[1][0][0] else b.sdiv(Mv, _c64(OH * OW))
    passes = _cdiv(OH, R)  # per image
    tid = b.sext(tid32, _I64)
    u0, u1 = _share(b, b.mul(nimg, _c64(passes)), tid, b.sext(nth32, _I64))
    masks = [None if (v + 1) * L <= OW else gd.const_mask(OW - v * L) for v in range(V)]
    with _Loop(b, u0, u1, _c64(1), "pass", unroll=False) as u:
        n = b.sdiv(u, _c64(passes))
        y0 = b.mul(b.srem(u, _c64(passes)), _c64(R))
        # the rows of this pass (a last odd row computed twice, stored once)
        ys = [_smin(b, b.add(y0, _c64(r)), _c64(OH - 1)) for r in range(R)]
        base = b.add(_c64(view[0]), b.mul(n, _c64(img)))
        # the rows' last vectors paired (R = 2, each at most half full): one vector, the first row's in its low half
        paired = R == 2 and _rows_paired(OW, L) and 2 * H == L
        full = V - 1 if paired else V
        wl = OW - full * L
        hmask = None if not paired or wl == H else g.const_mask(wl)
        both = ir.Constant(ir.VectorType(_I32, L), list(range(L)))
        halves = [ir.Constant(ir.VectorType(_I32, H), list(range(h * H, (h + 1) * H))) for h in range(2)]
        acc = [[[gd.zero] * F for _ in range(full)] for _ in range(R)]
        accp = [gd.zero] * F

        def at(r, ky, x):  # the image's element of row ys[r] + ky, column x
            return b.add(base, b.add(b.mul(b.add(ys[r], _c64(ky)), _c64(rs)), _c64(x)))

        for ky in range(KH):
            for kx in range(KW):
                xs = [[gd.load_vec(b, A, at(r, ky, kx + v * L), mask=masks[v]) for v in range(full)] for r in range(R)]
                if paired:
                    lo, hi = (g.load_vec(b, A, at(r, ky, kx + full * L), mask=hmask) for r in range(2))
                    xp = b.shuffle_vector(lo, hi, both)
                for f in range(F):
                    w = gd.splat(b, b.load(gd.gep(b, B, b.add(b.mul(_c64(ky * KW + kx), ldb), _c64(f))), typ=gd.T))
                    for r in range(R):
                        for v in range(full):
                            acc[r][v][f] = b.call(gd.fmuladd, [xs[r][v], w, acc[r][v][f]])
                    if paired:
                        accp[f] = b.call(gd.fmuladd, [xp, w, accp[f]])
        for r in range(R):
            for v in range(full):
                for f in range(F):
                    gd.store_vec(b, acc[r][v][f], fin, _c64((r * 8 + f) * W8 + v * L), align=gd.valign)
        if paired:
            for f in range(F):
                for r in range(2):
                    half = b.shuffle_vector(accp[f], ir.Constant(gd.V, ir.Undefined), halves[r])
                    g.store_vec(b, half, fin, _c64((r * 8 + f) * W8 + full * L), align=32)
        # (filter, pixel) -> (pixel, filter): 8x8 transposes of half vectors, into tile rows NR apart
        for r in range(R):
            for p0 in range(0, OW, 8):
                cols = [g.load_vec(b, fin, _c64((r * 8 + f) * W8 + p0), align=32) for f in range(8)]
                for j, vec in enumerate(lane_transpose(b, cols)):
                    if p0 + j < OW:
                        g.store_vec(b, vec, tile, _c64((r * OW + p0 + j) * NR), align=32)
        # the pass's rows of C: R·OW consecutive rows from (n·OH + y0)·OW (the rows past OH not stored)
        nrows = b.mul(b.sub(_smin(b, b.add(y0, _c64(R)), _c64(OH)), y0), _c64(OW))
        row0 = b.mul(b.add(b.mul(n, _c64(OH)), y0), _c64(OW))
        with _Loop(b, _c64(0), nrows, _c64(MR), "fr", unroll=False) as r0:
            cnt = _smin(b, _c64(MR), b.sub(nrows, r0))
            _expanded_finish(g, b, g.gep(b, tile, b.mul(r0, _c64(NR))), C, ldc, cnt, b.add(row0, r0), F, epi, ectx)
    b.ret_void()
    return fn


def _rows_dw_fn(g: _Gen, gd: _Gen, view, geo, N: int) -> ir.Function:
    """rows_dw(A, B, C, K, ldb, ldc, ws, tid, nthreads, epi, ectx): C (KH·KW x F) = the filter gradient, the view's
    transpose (taps x pixels) times the cotangent B (pixels x F). Per image, the cotangent's rows are turned into
    per-filter planes (8x8 transposes of half vectors) in the thread's workspace; then for each of the thread's
    rows of taps (ky), CH taps at a time, acc[kx][f] += image[y + ky][kx + v·L ..] * plane[y][f][v·L ..] over every
    vector v of every output row y (two rows' last vectors paired where each is at most half full), one vector
    accumulator per (tap, filter) kept across images in the workspace; at the end each accumulator's lanes are
    summed in order and the thread's rows of taps go through the epilogue pass `epi` (null: stored)."""
    key = hashlib.sha256(repr((view, N)).encode()).hexdigest()[:16]
    name = f"graphc.gemm.rows_dw.{gd.tag}.{g.tag}.{g.cfg.mr}x{g.cfg.nr}.{key}"
    if name in g.module.globals:
        return g.module.globals[name]
    KH, KW, OH, OW, rs, img, CH = geo
    F, L, MR, NR, H = N, gd.L, g.cfg.mr, g.cfg.nr, g.L
    if H != 8 or NR < 8 or L != 16:
        raise ValueError(f"{name}: the rows filter gradient needs 16-lane vectors and 8-lane tiles")
    V = _cdiv(OW, L)
    W8 = _rup(V * L, 8)
    paired = _rows_paired(OW, L)
    full = V - 1 if paired else V
    wl = OW - full * L
    fn, (A, B, C, Kv, ldb, ldc, ws, tid32, nth32, epi, ectx), b = _conv_fn(g, name, "K")
    tid = b.sext(tid32, _I64)
    # units of work: (row of taps ky, chunk of CH taps kx), ky-major; a thread's units are a run of taps
    chunks = [list(range(c0, min(KW, c0 + CH))) for c0 in range(0, KW, CH)]
    nch = len(chunks)
    u0, u1 = _share(b, _c64(KH * nch), tid, b.sext(nth32, _I64))

    def first_tap(u):
        return b.add(b.mul(b.sdiv(u, _c64(nch)), _c64(KW)), _smin(b, b.mul(b.srem(u, _c64(nch)), _c64(CH)), _c64(KW)))

    t0, t1 = first_tap(u0), first_tap(u1)
    _return_if_empty(b, t0, t1)
    P = gd.gep(b, ws, b.mul(tid, _c64(_rows_dw_slice(geo, F, L))))  # the image's planes, then the accumulators
    Acc = gd.gep(b, P, _c64(_rup(OH * 8 * W8, 16)))
    with _Loop(b, b.mul(t0, _c64(F)), b.mul(t1, _c64(F)), _c64(1), "az", unroll=False) as i:
        gd.store_vec(b, gd.zero, Acc, b.mul(i, _c64(L)), align=64)
    with _Loop(b, _c64(0), _c64(OH * 8 * W8 // H), _c64(1), "pz", unroll=False) as i:  # padding stays zero
        g.store_vec(b, g.zero, P, b.mul(i, _c64(H)), align=32)
    nimg = _c64(view[2][0][0]) if view[2][0][0] else b.sdiv(Kv, _c64(OH * OW))
    off = view[0]
    masks = [None if (v + 1) * L <= OW else gd.const_mask(OW - v * L) for v in range(V)]
    hmask = None if wl == H else g.const_mask(wl)
    both = ir.Constant(ir.VectorType(_I32, L), list(range(L)))
    fmask = None if F == NR else g.const_mask(F)

    def fma_all(acc, kxs, xv, dv):
        for kx in kxs:
            for f in range(F):
                acc[kx, f] = b.call(gd.fmuladd, [xv[kx], dv[f], acc[kx, f]])

    def chunk_pass(base, ky, kxs):
        """acc[kx][f] for kx in kxs over every output row of the image: loaded, summed into, stored."""
        def slot(kx, f):
            return b.mul(b.add(b.mul(b.add(b.mul(ky, _c64(KW)), _c64(kx)), _c64(F)), _c64(f)), _c64(L))

        def at(y, x):  # the image at row y + ky (y an i64 value), column x
            return b.add(base, b.add(b.mul(b.add(y, ky), _c64(rs)), _c64(x)))

        keys = [(kx, f) for kx in kxs for f in range(F)]
        acc = {k: gd.load_vec(b, Acc, slot(*k), align=64) for k in keys}

        def step(y, two: bool) -> None:
            """Rows y (and y + 1 when `two`) into acc; y an i64 value."""
            def plane(r, f, x):
                return b.add(b.mul(b.add(b.mul(b.add(y, _c64(r)), _c64(8)), _c64(f)), _c64(W8)), _c64(x))

            def img_at(r, x):
                return at(b.add(y, _c64(r)), x)

            for r in range(2 if two else 1):
                for v in range(full if two else V):
                    xv = {kx: gd.load_vec(b, A, img_at(r, kx + v * L), mask=masks[v]) for kx in kxs}
                    dv = [gd.load_vec(b, P, plane(r, f, v * L), align=64) for f in range(F)]
                    fma_all(acc, kxs, xv, dv)
            if two:  # the two rows' last vectors, each at most half full, as one
                xv = {kx: b.shuffle_vector(*(g.load_vec(b, A, img_at(r, kx + full * L), mask=hmask)
                                             for r in range(2)), both) for kx in kxs}
                dv = [b.shuffle_vector(*(g.load_vec(b, P, plane(r, f, full * L), align=32) for r in range(2)), both)
                      for f in range(F)]
                fma_all(acc, kxs, xv, dv)

        # the rows in a run-time loop (pairs where the tails pair), the accumulators carried by phis
        stride = 2 if paired else 1
        unroll = 2 if OH // stride >= 2 else 1  # row steps per iteration
        count = OH // (stride * unroll)
        if count:
            def rows(i, vals):
                acc.update(zip(keys, vals, strict=True))
                for q in range(unroll):
                    step(b.add(b.mul(i, _c64(stride * unroll)), _c64(q * stride)), paired)
                return [acc[k] for k in keys]

            acc.update(zip(keys, _carried_loop(b, count, [acc[k] for k in keys], rows, "rows"), strict=True))
        y = count * stride * unroll
        while y < OH:  # the rows the loop leaves: a pair, and an odd last row alone
            two = paired and y + 1 < OH
            step(_c64(y), two)
            y += 2 if two else 1
        for k, a in acc.items():
            gd.store_vec(b, a, Acc, slot(*k), align=64)

    with _Loop(b, _c64(0), nimg, _c64(1), "img", unroll=False) as n:
        # the cotangent's rows of this image as planes: P[y][f][x]
        with _Loop(b, _c64(0), _c64(OH), _c64(1), "py", unroll=False) as y:
            for p0 in range(0, OW, 8):
                rows = [g.load_vec(b, B, b.mul(b.add(b.mul(b.add(b.mul(n, _c64(OH)), y), _c64(OW)),
                                                     _c64(p0 + j)), ldb), mask=fmask)
                        if p0 + j < OW else g.zero for j in range(8)]
                for f, vec in enumerate(lane_transpose(b, rows)):
                    if f < F:
                        g.store_vec(b, vec, P, b.add(b.mul(b.add(b.mul(y, _c64(8)), _c64(f)), _c64(W8)), _c64(p0)),
                                    align=32)
        base = b.add(_c64(off), b.mul(n, _c64(img)))
        with _Loop(b, u0, u1, _c64(1), "unit", unroll=False) as u:
            ky = b.sdiv(u, _c64(nch))
            c = b.srem(u, _c64(nch))
            after = fn.append_basic_block("unit.done")
            for ci, kxs in enumerate(chunks):
                here = fn.append_basic_block(f"chunk{ci}")
                nxt = fn.append_basic_block(f"chunk{ci}.not") if ci + 1 < nch else after
                b.cbranch(b.icmp_signed("==", c, _c64(ci)), here, nxt)
                b.position_at_end(here)
                chunk_pass(base, ky, kxs)
                b.branch(after)
                b.position_at_end(nxt)  # the last test's false edge is `after` itself
    # each accumulator's lanes summed in order, into a tile of the thread's taps
    tile = b.alloca(ir.ArrayType(g.T, (KH * KW + MR) * NR), name="tile")  # rows NR apart, as the epilogue's
    tile.align = 64
    tile.type = _PTR
    with _Loop(b, t0, t1, _c64(1), "rt", unroll=False) as t:
        for f in range(F):
            vec = gd.load_vec(b, Acc, b.mul(b.add(b.mul(t, _c64(F)), _c64(f)), _c64(L)), align=64)
            s_ = b.extract_element(vec, ir.Constant(_I32, 0))
            for j in range(1, L):
                s_ = b.fadd(s_, b.extract_element(vec, ir.Constant(_I32, j)))
            b.store(s_, gd.gep(b, tile, b.add(b.mul(b.sub(t, t0), _c64(NR)), _c64(f))))
    nrows = b.sub(t1, t0)
    with _Loop(b, _c64(0), nrows, _c64(MR), "fr", unroll=False) as r:
        cnt = _smin(b, _c64(MR), b.sub(nrows, r))
        _expanded_finish(g, b, g.gep(b, tile, b.mul(r, _c64(NR))), C, ldc, cnt, b.add(t0, r), F, epi, ectx)
    b.ret_void()
    return fn


# ------------------------------------------------------------------------------------- helper library
#
# A module's shared GEMM code (drivers, microkernels, packing routines: the "helpers") depends only on the
# target, the dtype and the blocking config, and it is most of the LLVM time of a small training step (about
# 60% of the 784-256-128-10 step's). For code loaded into this process, `split_helpers` takes the helpers out
# of a module's text (leaving declarations); `helper_library` emits every helper of one config as a module of
# its own, compiled once and kept in the compile cache, and linked with each program that uses the config.

_HELPER_DEF = re.compile(r'^define internal void @"(graphc\.gemm\.(?:driver|ukernel|pack_copy|pack_trans|gemv|prepack)'
                         r'\.[^"]+)"(\([^)\n]*\))([^{\n]*)\n?\{\n.*?^\}\n', re.M | re.S)
_DRIVER_NAME = re.compile(r"^graphc\.gemm\.driver\.(f32|f64)x(\d+)\.(\d+)x(\d+)\.k(\d+)\.pf(\d+)\.kc(\d+)\.mc(\d+)"
                          r"\.nc(\d+)\.(ir_jr|jr_ir)\.d(\d+)x(\d+)x(\d+)$")


_DRIVER_DECL = re.compile(r'^declare void @"(graphc\.gemm\.driver\.[^"]+)"', re.M)


def split_helpers(ir_text: str) -> tuple[str, list[str]]:
    """(the module's text with its GEMM helpers declared instead of defined, the names of its drivers: one per
    config, each naming its config in full). A module emitted with the helpers declared only
    (``declare_helpers``: what the JIT emits where it links the helper library) comes back as it is, with the
    drivers it declares."""
    drivers: list[str] = []

    def declare(m: re.Match) -> str:
        if m.group(1).startswith("graphc.gemm.driver."):
            drivers.append(m.group(1))
        return f'declare void @"{m.group(1)}"{m.group(2)}{m.group(3).rstrip()}\n'

    text = _HELPER_DEF.sub(declare, ir_text) if 'define internal void @"graphc.gemm.' in ir_text else ir_text
    return text, drivers + [d for d in _DRIVER_DECL.findall(text) if d not in drivers]


def helper_library(target: Target, driver_name: str) -> str:
    """The IR text of every helper of the config `driver_name` names (its driver, microkernels and all four
    packing routines), defined weak_odr and hidden, for linking with the modules that declare them."""
    m = _DRIVER_NAME.match(driver_name)
    if m is None:
        raise ValueError(f"not a GEMM driver name: {driver_name!r}")
    dtype = "float32" if m.group(1) == "f32" else "float64"
    mr, nr, unroll, pf, kc, mc, nc = (int(m.group(i)) for i in range(3, 10))
    lanes = int(m.group(2))
    cfg = GemmConfig(mr=mr, nr=nr, kc=kc, mc=mc, nc=nc, unroll=unroll, prefetch_c=pf, loop_order=m.group(10),
                     direct_b_max_ld=int(m.group(11)), direct_b_max_m=int(m.group(12)),
                     direct_b_max_span=int(m.group(13)),
                     lanes=0 if lanes == _lanes(target, dtype) else lanes)
    module = ir.Module(name="graphc.gemm.helpers")
    g = _Gen(module, target, dtype, cfg)
    if g.L != int(m.group(2)):
        raise ValueError(f"{driver_name!r} is for {m.group(2)} lanes, the target has {g.L}")
    if _driver_fn(g).name != driver_name:
        raise ValueError(f"cannot rebuild {driver_name!r}")
    for copy in (True, False):
        for w in (cfg.mr, cfg.nr):
            _pack_fn(g, copy, w)
    for r in {cfg.mr, _edge_rows(cfg) or cfg.mr}:
        _finish_fn(g, r)
    _prepack_fn(g)
    # weak_odr: a name is its code (two configs' libraries both define the packing routines of a width)
    return re.sub(r'^define internal void @"graphc\.gemm\.', 'define weak_odr hidden void @"graphc.gemm.',
                  str(module), flags=re.M)
