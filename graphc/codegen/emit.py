"""LLVM IR emission: a scheduled Program becomes one module of SIMD loops.

Each kernel is a function `void k(ptr bufs, ptr dims, ptr ws, i32 tid, i32 nthreads)` that does its share
of the work (split over the outermost loop, or over output tiles for matrix products). `graphc_program` runs
the kernels in order with a barrier where a kernel needs what another thread just wrote, and `graphc_run`
starts the threads. Every value is computed the same way whatever the thread count, so results are bitwise
independent of it.

Scalar code comes from each op's formula, a graphc term (`ScalarEmitter`), applied to vectors of the target's width;
transcendental functions come from `vmath` (vector polynomials), matrix products from `gemm` (or, with one row
of op(A) or K = 1, inline vector loops computing the same sums: `_emit_thin_gemm`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from llvmlite import ir

from graphc.codegen import gemm as gemm_mod
from graphc.codegen import vmath
from graphc.codegen.kernels import (
    LOOP,
    LOOP_AXIS,
    Acc,
    Apply,
    Buffer,
    Const,
    Convert,
    DimValue,
    Expr,
    GemmKernel,
    Guard,
    Index,
    Load,
    LoopKernel,
    PackKernel,
    ReduceKernel,
    ScanKernel,
    ScatterKernel,
    Store,
    all_kernels,
    kernel_work,
    loop_axes,
    split_rows,
    walk,
    walk_all,
)
from graphc.codegen.schedule import Program, split_affine
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.ir import index as ix
from graphc.ir.dims import Dim as _Dim
from graphc.ir.formula import COMPARES, Term
from graphc.ir.shapes import ITEMSIZE, Dim, size
from graphc.ops import random as rng_mod

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
VOID = ir.VoidType()
FLAGS = ("contract",)  # FMA contraction only; inf and nan keep IEEE semantics

SCALAR = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I1}
MEMORY = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I8}
KERNEL_ARGS = [PTR, PTR, PTR, I32, I32]


def alloca(b: ir.IRBuilder, ty: ir.Type, size=None, name: str = "") -> ir.Value:
    """Stack memory as an opaque `ptr` (llvmlite would print a typed pointer, which LLVM 22 rejects)."""
    a = b.alloca(ty, size=size, name=name)
    a.type = PTR
    return a


def c64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _vec(ty: ir.Type, lanes: int | None) -> ir.Type:
    return ty if lanes is None else ir.VectorType(ty, lanes)


def _is_float(ty: ir.Type) -> bool:
    return isinstance(vmath.element_type(ty), (ir.FloatType, ir.DoubleType))


# ------------------------------------------------------------------------------------------------- loops

# LLVM's runtime unrolling copies a loop whose trip count is known only at run time several times, with a
# remainder. How far it goes comes from the CPU's scheduling model: on Zen 4 (a large loop buffer) it copied the
# 784-256-128-10 epoch's elementwise loops 4-8 times, doubling the module (6,200 instructions, 2,750 without)
# and the LLVM part of its cold compile (0.54 -> 0.34 s); a Xeon's model leaves most of them whole. It pays
# where a loop takes a noticeable share of the time (an LSTM step's elementwise loop: 4-6% slower without, a
# CIFAR step's pads and masks ~2%), not in a kernel doing a sliver of the program's work: a kernel doing less
# than 1/MINOR_SHARE of the work of the largest top-level kernel keeps only full unrolling of constant trip
# counts. (Scan bodies run many times and are left to LLVM.)
MINOR_SHARE = 64
# a batched product whose one product has at most this many multiply-adds runs its batch points shared out over
# the threads, each product on one thread (see EmitModule.emit_gemm)
BATCH_SPLIT_MAX = 1 << 21
_NOMINAL_DIM = 64  # a symbolic dim's value where works are compared (the batch dim cancels in the usual case)


def _minor_kernels(kernels) -> list:
    works = [float(w.value({s: _NOMINAL_DIM for s in w.free_symbols}) if isinstance(w, _Dim) else w)
             for w in map(kernel_work, kernels)]
    top = max(works, default=0.0)
    return [k for k, w in zip(kernels, works, strict=True)
            if w * MINOR_SHARE < top and isinstance(k, (LoopKernel, ReduceKernel, ScatterKernel))]


def static_unroll_only(fn: ir.Function) -> None:
    """Mark every loop of `fn` (a back edge: a branch to a block at or before its own) "no runtime unrolling",
    where it has no loop metadata yet."""
    place = {id(blk): i for i, blk in enumerate(fn.blocks)}
    for i, blk in enumerate(fn.blocks):
        t = blk.instructions[-1] if blk.instructions else None
        if isinstance(t, (ir.Branch, ir.ConditionalBranch)) and "llvm.loop" not in t.metadata and any(
                isinstance(o, ir.Block) and place.get(id(o), i + 1) <= i for o in t.operands):
            t.set_metadata("llvm.loop", gemm_mod.loop_md(fn.module, gemm_mod.NO_RUNTIME_UNROLL))


class Loop:
    """for (i = start; i < stop; i += step) as a context manager; `i` is the induction variable."""

    def __init__(self, b: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: int, name: str,
                 md: str | None = None):
        self.b, self.start, self.stop, self.step, self.name = b, start, stop, step, name
        self.md = md  # a loop property for the latch ("llvm.loop.unroll.disable")

    def __enter__(self) -> ir.Value:
        b = self.b
        fn = b.function
        self.pre = b.block
        self.head = fn.append_basic_block(f"{self.name}.head")
        self.body = fn.append_basic_block(f"{self.name}.body")
        self.exit = fn.append_basic_block(f"{self.name}.exit")
        b.branch(self.head)
        b.position_at_end(self.head)
        self.i = b.phi(I64, name=self.name)
        self.i.add_incoming(self.start, self.pre)
        b.cbranch(b.icmp_signed("<", self.i, self.stop), self.body, self.exit)
        b.position_at_end(self.body)
        return self.i

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        b = self.b
        nxt = b.add(self.i, c64(self.step))
        self.i.add_incoming(nxt, b.block)
        latch = b.branch(self.head)
        if self.md is not None:
            latch.set_metadata("llvm.loop", gemm_mod.loop_md(b.module, self.md))
        b.position_at_end(self.exit)


# ------------------------------------------------------------------------------------------------- scalar code


class ScalarEmitter:
    """Emit an op's formula term (graphc.ir.formula) on LLVM values (scalars or vectors, floats, ints or i1)."""

    def __init__(self, b: ir.IRBuilder, module: ir.Module, target: Target | None = None):
        self.b, self.module, self.target = b, module, target

    def const(self, ty: ir.Type, v) -> ir.Constant:
        elem = vmath.element_type(ty)
        if isinstance(elem, ir.IntType):
            v = int(v) if elem.width > 1 else bool(v)
        else:
            v = float(v)
        return vmath.const(ty, v)

    def formula(self, expr: Term, env: dict[str, ir.Value], ty: ir.Type) -> ir.Value:
        """`expr` with its arguments bound by name by `env` to values; numbers are of type `ty`. A sub-term that
        occurs more than once is computed once."""
        memo: dict[Term, ir.Value] = {}

        def go(t: Term) -> ir.Value:
            r = memo.get(t)
            if r is None:
                r = memo[t] = self._emit(t, go, env, ty)
            return r

        return go(expr)

    def _emit(self, t: Term, go, env: dict, ty: ir.Type) -> ir.Value:
        b, op, args = self.b, t.op, t.args
        if op == "sym":
            v = env.get(t.value)
            if v is None:
                raise CompileError(f"internal: the formula uses {t.value}, not one of its arguments {sorted(env)}")
            return v
        if op == "num":
            return self.const(ty, float(t.value) if _is_float(ty) else int(t.value))
        if op == "bool":
            return self.const(vmath.like(ty, I1), t.value)
        if op == "add":
            acc = go(args[0]) if t.value else self.neg(go(args[0]))
            for k, a in enumerate(args[1:], 1):
                acc = self.add(acc, go(a)) if k < t.value else self.sub(acc, go(a))
            return acc
        if op == "neg":
            return self.neg(go(args[0]))
        if op == "mul":
            acc = None
            for a in args:
                v = go(a)
                acc = v if acc is None else self.mul(acc, v)
            return acc
        if op == "div":
            return self.div(go(args[0]), go(args[1]))
        if op == "powi":
            x = go(args[0])
            r = self._ipow(x, abs(t.value))
            return self.div(self.const(x.type, 1.0), r) if t.value < 0 else r
        if op == "sqrt":  # x ** 0.5: correctly rounded, as numpy's
            return self.call_intrinsic("llvm.sqrt", go(args[0]))
        if op == "rsqrt":  # 1/sqrt(x), with pow's values at -0.0 (inf) and -inf (0)
            x = go(args[0])
            r = self.div(self.const(x.type, 1.0), self.call_intrinsic("llvm.sqrt", b.fadd(x, self.const(x.type, 0.0))))
            return b.select(b.fcmp_ordered("==", x, self.const(x.type, float("-inf"))), self.const(x.type, 0.0), r)
        if op == "pow":
            x = go(args[0])
            p = args[1]
            # a tensor exponent, or a non-integer constant one (its integer-exponent work folds away)
            return self._pow(x, go(p) if p.op != "num" else self.const(x.type, float(p.value)))
        if op == "select":
            return b.select(go(args[0]), go(args[1]), go(args[2]))
        if op in COMPARES:
            return self.compare(COMPARES[op], go(args[0]), go(args[1]))
        if op == "not":
            x = go(args[0])
            return b.xor(x, self.const(x.type, True))
        if op in ("and", "or", "max", "min"):
            vals = [go(a) for a in args]
            acc = vals[0]
            for v in vals[1:]:
                if op == "and":
                    acc = b.and_(acc, v)
                elif op == "or":
                    acc = b.or_(acc, v)
                else:
                    acc = self.maxmin(acc, v, op == "max")
            return acc
        if op == "relu":
            x = go(args[0])
            return self.maxmin(x, self.const(x.type, 0), True)
        if op == "abs":
            x = go(args[0])
            if _is_float(x.type):
                return self.call_intrinsic("llvm.fabs", x)
            neg = b.icmp_signed("<", x, self.const(x.type, 0))
            return b.select(neg, b.sub(self.const(x.type, 0), x), x)
        if op == "sign":
            x = go(args[0])
            zero, one = self.const(x.type, 0), self.const(x.type, 1)
            gt = self.compare(">", x, zero)
            lt = self.compare("<", x, zero)
            # sign(nan) is nan, sign(+-0) is +0 (numpy's): x + 0 gives all three (x * 0 kept -0)
            rest = b.fadd(x, zero) if _is_float(x.type) else zero
            return b.select(gt, one, b.select(lt, self.neg(one), rest))
        if op == "heaviside":
            x = go(args[0])
            zero = self.const(x.type, 0)
            return b.select(self.compare(">", x, zero), self.const(x.type, 1),
                            b.select(self.compare("==", x, zero), self.const(x.type, float(t.value)), zero))
        if op == "rint":
            return self.call_intrinsic("llvm.rint", go(args[0]))
        if op in ("floor", "ceil"):
            x = go(args[0])
            if not _is_float(x.type):
                return x
            return self.call_intrinsic("llvm." + op, x)
        if op in ("floor_divide", "remainder"):
            return self.floor_mod(go(args[0]), go(args[1]), op == "remainder")
        if op == "keep_bit":
            return self.keep_bit(go(args[0]), go(args[1]), t.value, go(args[2]))
        if op in ("rand_uniform", "rand_normal"):
            return self.random(op, *(go(a) for a in args), t.value)
        if op in vmath.BINARY_EMITTERS:
            return vmath.BINARY_EMITTERS[op](b, go(args[0]), go(args[1]))
        fn = vmath.EMITTERS.get(op)
        if fn is None:
            raise CompileError(f"internal: the formula op {op} has no native code")
        return fn(b, go(args[0]), self.target)

    # typed arithmetic
    def add(self, x, y):
        return self.b.fadd(x, y, flags=FLAGS) if _is_float(x.type) else self.b.add(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y, flags=FLAGS) if _is_float(x.type) else self.b.sub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y, flags=FLAGS) if _is_float(x.type) else self.b.mul(x, y)

    def div(self, x, y):
        if not _is_float(x.type):
            raise CompileError("integer division has no native lowering")
        return self.b.fdiv(x, y, flags=FLAGS)

    def neg(self, x):
        return self.b.fneg(x, flags=FLAGS) if _is_float(x.type) else self.b.sub(self.const(x.type, 0), x)

    def _ipow(self, x, k: int):
        if k == 0:
            return self.const(x.type, 1)
        result, base = None, x
        while k:
            if k & 1:
                result = base if result is None else self.mul(result, base)
            k >>= 1
            if k:
                base = self.mul(base, base)
        return result

    def maxmin(self, x, y, is_max: bool):
        if _is_float(x.type):
            # numpy's maximum/minimum: x where x wins or is nan, else y (so y where they are equal: maximum(0.0, -0.0)
            # is -0.0, minimum(-0.0, 0.0) is 0.0; llvm.maximum/minimum order -0.0 below 0.0 instead). The select
            # on an ordered compare is one max/min instruction (x86's maxps picks y on a tie or a nan); the nan
            # check puts x's nan back.
            b = self.b
            r = b.select(b.fcmp_ordered(">" if is_max else "<", x, y), x, y)
            return b.select(b.fcmp_unordered("uno", x, x), x, r)
        return self.b.select(self.b.icmp_signed(">" if is_max else "<", x, y), x, y)

    def _pow(self, x, y):
        """x ** y for a tensor exponent with numpy's values. float64: the C library's pow per lane (numpy's own);
        float32: |x| ** y computed in double (vmath.powr_f32: within about half an ulp), negated for a negative
        base and an odd integer exponent, NaN for a negative base and a non-integer one, 1 where y == 0 or
        x == 1."""
        b = self.b
        ty = x.type
        if isinstance(vmath.element_type(ty), ir.DoubleType):
            return vmath.pow_f64(b, x, y)
        ax = self.call_intrinsic("llvm.fabs", x)
        r = vmath.powr_f32(b, ax, y)
        fy = self.call_intrinsic("llvm.floor", y)
        integral = b.fcmp_ordered("==", fy, y)
        ay = self.call_intrinsic("llvm.fabs", y)
        half = self.call_intrinsic("llvm.floor", b.fmul(y, self.const(ty, 0.5)))
        odd = b.fcmp_ordered("!=", b.fsub(y, b.fmul(half, self.const(ty, 2.0))), self.const(ty, 0.0))
        # an odd integer exponent keeps the base's sign (-0.0 ** -1 = -inf)
        sign = b.call(vmath.intrinsic(self.module, "llvm.copysign", ty, 2), [r, x])
        r = b.select(b.and_(integral, odd), sign, r)
        # a finite negative base to a non-integer power is NaN; -inf's is |x| ** y (inf or 0), as numpy's
        negative = b.and_(b.fcmp_ordered("<", x, self.const(ty, 0.0)),
                          b.fcmp_ordered("!=", x, self.const(ty, float("-inf"))))
        r = b.select(b.and_(negative, b.xor(integral, self.const(integral.type, True))),
                     self.const(ty, float("nan")), r)
        inf_y = b.fcmp_ordered("==", ay, self.const(ty, float("inf")))
        one = b.or_(b.or_(b.fcmp_ordered("==", y, self.const(ty, 0.0)), b.fcmp_ordered("==", x, self.const(ty, 1.0))),
                    b.and_(b.fcmp_ordered("==", x, self.const(ty, -1.0)), inf_y))  # (-1) ** +-inf = 1
        return b.select(one, self.const(ty, 1.0), r)

    def compare(self, op: str, x, y):
        """x op y (op: <, <=, >, >=, ==, !=), numpy's: a float comparison with nan is false, except !=."""
        if _is_float(x.type):
            if op == "!=":
                return self.b.fcmp_unordered("!=", x, y)
            return self.b.fcmp_ordered(op, x, y)
        if vmath.element_type(x.type).width == 1:
            return self.b.icmp_unsigned(op, x, y)
        return self.b.icmp_signed(op, x, y)

    def floor_mod(self, a, d, want_mod: bool):
        """numpy's floor_divide / remainder of a by d. Floats as numpy's npy_divmod: fmod, the quotient of
        a - fmod, the remainder moved to the divisor's sign, the quotient snapped to an integer; d = 0 gives a / d
        and nan. Ints rounded down, d = 0 giving 0 (numpy's result) and d = -1 no overflow trap."""
        b = self.b
        ty = a.type
        if not _is_float(ty):
            zero, one = self.const(ty, 0), self.const(ty, 1)
            bad = b.or_(b.icmp_signed("==", d, zero), b.icmp_signed("==", d, self.const(ty, -1)))
            dd = b.select(bad, one, d)  # no division by 0, and no INT_MIN / -1
            q, r = b.sdiv(a, dd), b.srem(a, dd)
            fix = b.and_(b.icmp_signed("!=", r, zero),
                         b.icmp_unsigned("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", d, zero)))
            if want_mod:
                return b.select(bad, zero, b.select(fix, b.add(r, d), r))
            q = b.select(fix, b.sub(q, one), q)
            return b.select(b.icmp_signed("==", d, zero), zero,
                            b.select(b.icmp_signed("==", d, self.const(ty, -1)), b.sub(zero, a), q))
        zero, one, half = self.const(ty, 0.0), self.const(ty, 1.0), self.const(ty, 0.5)

        def copysign(mag, sign):
            return b.call(vmath.intrinsic(self.module, "llvm.copysign", ty, 2), [mag, sign])

        mod = b.frem(a, d)
        d_zero = b.fcmp_ordered("==", d, zero)
        nonzero = b.fcmp_unordered("!=", mod, zero)  # C's `if (mod)`: nan counts
        fix = b.and_(nonzero, b.icmp_unsigned("!=", b.fcmp_ordered("<", d, zero), b.fcmp_ordered("<", mod, zero)))
        if want_mod:
            m = b.select(nonzero, b.select(fix, b.fadd(mod, d), mod), copysign(zero, d))
            return b.select(d_zero, mod, m)
        div = b.fdiv(b.fsub(a, mod), d)
        div = b.select(fix, b.fsub(div, one), div)
        fl = self.call_intrinsic("llvm.floor", div)
        fl = b.select(b.fcmp_ordered(">", b.fsub(div, fl), half), b.fadd(fl, one), fl)
        q = b.select(b.fcmp_unordered("!=", div, zero), fl, copysign(zero, b.fdiv(a, d)))
        return b.select(d_zero, b.fdiv(a, d), q)

    def call_intrinsic(self, name: str, x):
        return self.b.call(vmath.intrinsic(self.module, name, x.type), [x])

    def keep_bit(self, index, key, salt: int, threshold):
        """rng.keep_mask's bit in integer SIMD: lowbias32(lowbias32(i * G + s) ^ s) >> 8 < threshold, where
        s = stream(key, salt); `index` is an i64 (vector), `key` an i64 (the same in every lane), `threshold` an
        integer-valued float."""
        b = self.b
        lanes = index.type.count if isinstance(index.type, ir.VectorType) else None
        t = b.fptoui(threshold, _vec(I32, threshold.type.count if isinstance(threshold.type, ir.VectorType)
                                     else None))
        if lanes is not None and not isinstance(t.type, ir.VectorType):
            t = _splat(b, t, lanes)
        return b.icmp_unsigned("<", self.bits24(index, key, salt), t)

    def bits24(self, index, key, salt: int):
        """rng.bits24 in integer SIMD: lowbias32(lowbias32(i * G + s) ^ s) >> 8 (an i32 per lane of `index`, an
        i64), where s = stream(key, salt) and `key` is an i64 (the same in every lane)."""
        b = self.b
        lanes = index.type.count if isinstance(index.type, ir.VectorType) else None
        key64 = b.extract_element(key, ir.Constant(I32, 0)) if isinstance(key.type, ir.VectorType) else key
        lo = b.trunc(key64, I32)
        hi = b.trunc(b.lshr(key64, c64(32)), I32)
        st = self._lowbias(b.xor(self._lowbias(hi), lo))
        st = self._lowbias(b.xor(st, ir.Constant(I32, salt & 0xFFFFFFFF)))
        i32v = b.trunc(index, _vec(I32, lanes))
        if lanes is not None:
            st = _splat(b, st, lanes)
        h = self._lowbias(b.add(b.mul(i32v, vmath.const(i32v.type, rng_mod.GOLDEN)), st))
        h = self._lowbias(b.xor(h, st))
        return b.lshr(h, vmath.const(h.type, 8))

    def random(self, op: str, a, c, index, key, salt: int):
        """gc.random's draws, as numeric.rand_uniform / rand_normal compute them: `a` is the low end (the mean) and
        `c` the width (the standard deviation), of the draw's float type. No fast-math flags: each operation is
        rounded as numpy rounds it (an FMA would round once), so a uniform is bitwise numpy's and a normal (in
        double) differs only where the C library's log or cos does from numpy's."""
        b = self.b
        ty = a.type
        if op == "rand_uniform":
            u = b.fmul(b.uitofp(self.bits24(index, key, salt), ty), vmath.const(ty, 2.0 ** -24))
            return b.fadd(a, b.fmul(c, u))
        dty = vmath.like(ty, F64)
        wide = (lambda v: v) if dty == ty else (lambda v: b.fpext(v, dty))  # noqa: E731
        k = self.const(dty, 2.0 ** -24)
        u1 = b.fmul(b.fadd(b.uitofp(self.bits24(index, key, salt), dty), self.const(dty, 1.0)), k)
        u2 = b.fmul(b.uitofp(self.bits24(index, key, rng_mod.second_salt(salt)), dty), k)
        r = self.call_intrinsic("llvm.sqrt", b.fmul(self.const(dty, -2.0), vmath.map_libm(b, u1, "log")))
        z = b.fmul(r, vmath.map_libm(b, b.fmul(self.const(dty, 2.0 * math.pi), u2), "cos"))
        v = b.fadd(wide(a), b.fmul(wide(c), z))
        return v if dty == ty else b.fptrunc(v, ty)

    def _lowbias(self, x):
        b = self.b
        c = lambda v: vmath.const(x.type, v)  # noqa: E731
        x = b.xor(x, b.lshr(x, c(16)))
        x = b.mul(x, c(rng_mod.M1))
        x = b.xor(x, b.lshr(x, c(15)))
        x = b.mul(x, c(rng_mod.M2))
        return b.xor(x, b.lshr(x, c(16)))


def _splat(b: ir.IRBuilder, v: ir.Value, lanes: int) -> ir.Value:
    vty = ir.VectorType(v.type, lanes)
    x = b.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(x, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def cast_value(b: ir.IRBuilder, x: ir.Value, src: str, dst: str) -> ir.Value:
    """numpy's astype semantics: float->int truncates toward zero, bool is 0/1, nonzero -> True."""
    lanes = x.type.count if isinstance(x.type, ir.VectorType) else None
    to = _vec(SCALAR[dst], lanes)
    if src == dst:
        return x
    fsrc, fdst = src.startswith("float"), dst.startswith("float")
    if fsrc and fdst:
        return b.fpext(x, to) if dst == "float64" else b.fptrunc(x, to)
    if dst == "bool":
        zero = vmath.const(x.type, 0.0 if fsrc else 0)
        return b.fcmp_unordered("!=", x, zero) if fsrc else b.icmp_unsigned("!=", x, zero)
    if src == "bool":
        return b.uitofp(x, to) if fdst else b.zext(x, to)
    if fsrc:
        return b.fptosi(x, to)
    if fdst:
        return b.sitofp(x, to)
    return b.sext(x, to) if ITEMSIZE[dst] > ITEMSIZE[src] else b.trunc(x, to)


# ------------------------------------------------------------------------------------------------- kernels


@dataclass
class Point:
    """Where in the loop domain a value is evaluated: an index per axis (i64 values; the vector axis holds
    the first lane's index), which axis is vectorized with how many lanes, and the lane mask on edges."""

    index: dict[int, ir.Value]
    vec_axis: int | None = None
    lanes: int | None = None
    mask: ir.Value | None = None
    vec_extent: int | None = None  # the vector axis's extent when it is static (its indices then fit an i32)


def partition(b: ir.IRBuilder, total: ir.Value, tid: ir.Value, nth: ir.Value, align: int) -> tuple[ir.Value, ir.Value]:
    """Thread `tid` of `nth`'s [lo, hi) of range(total) (all i64), in chunks that are multiples of `align`."""
    # one thread: no division (~12 cycles each, in every kernel of a step that may last 0.4 us)
    pre = b.block
    with b.if_then(b.icmp_signed("!=", nth, c64(1)), likely=False):
        split = b.sdiv(b.add(total, b.sub(nth, c64(1))), nth)
        split_blk = b.block
    per = b.phi(I64)
    per.add_incoming(total, pre)
    per.add_incoming(split, split_blk)
    if align > 1:
        per = b.mul(b.sdiv(b.add(per, c64(align - 1)), c64(align)), c64(align))
    lo = b.mul(tid, per)
    lo = b.select(b.icmp_signed("<", lo, total), lo, total)
    hi = b.add(lo, per)
    hi = b.select(b.icmp_signed("<", hi, total), hi, total)
    return lo, hi


def int_dim(b: ir.IRBuilder, dims: ir.Value, symbols, d) -> ir.Value:
    """A dim expression's run-time value (i64), its symbols read from a program's dims array (`symbols` their
    order): integers, sums, products, positive powers, the floor or ceiling of a quotient (a checkpointed
    scan's ceiling(T/k) segments), a remainder, a max or a min. Sums and products are computed in the order of
    their operands that the kernel IR has always used (graphc.ir.index.sympy_args)."""
    d = ix.norm(d)
    if isinstance(d, int):
        return c64(d)
    if not isinstance(d, _Dim):
        raise CompileError(f"cannot compute the dim expression {d} at run time")
    kind, args = ix.sympy_args(d)
    if kind == "atom":
        a = args
        if isinstance(a, ix.Symbol):
            e = _atom(a)
            k = symbols.index(e)
            return b.load(b.gep(dims, [c64(k)], source_etype=I64), typ=I64, name=a.name)
        if a.kind in ("max", "min"):  # the interior padding of a symbolic axis: max(N - 1, 0) * interior
            vals = [int_dim(b, dims, symbols, x) for x in a.args]
            acc = vals[0]
            for v in vals[1:]:
                acc = b.select(b.icmp_signed(">" if a.kind == "max" else "<", acc, v), acc, v)
            return acc
        num, den = a.args[:2]
        if a.kind in ("ceil", "floor"):
            n, dd = int_dim(b, dims, symbols, num), int_dim(b, dims, symbols, den)
            if a.kind == "ceil":
                n = b.add(n, b.sub(dd, c64(1)))
            return b.sdiv(n, dd)  # dims are positive: truncation is the floor
        if a.kind in ("floordiv", "mod"):  # of an expression that may be negative: rounded down, in [0, den)
            n, dd = int_dim(b, dims, symbols, num), int_dim(b, dims, symbols, den)
            r = b.srem(n, dd)
            neg = b.icmp_signed("<", r, c64(0))
            if a.kind == "mod":
                return b.select(neg, b.add(r, dd), r)
            return b.sub(b.sdiv(n, dd), b.zext(neg, I64))
        raise CompileError(f"cannot compute the dim expression {ix.show(d)} at run time")
    if kind == "pow":
        base = int_dim(b, dims, symbols, args[0])
        acc = base
        for _ in range(args[1] - 1):
            acc = b.mul(acc, base)
        return acc
    vals = [int_dim(b, dims, symbols, a) for a in args]
    acc = vals[0]
    for v in vals[1:]:
        acc = b.add(acc, v) if kind == "add" else b.mul(acc, v)
    return acc


def _atom(a) -> Dim:
    return _Dim(((((a, 1),), 1),))


class FunctionEmitter:
    """Emits expressions inside one kernel function."""

    def __init__(self, mod: ModuleEmitter, fn: ir.Function):
        self.mod = mod
        self.fn = fn
        self.bufs, self.dims, self.ws, self.tid32, self.nth32 = fn.args[:5]
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.sc = ScalarEmitter(self.b, mod.module, mod.target)
        self._dim_cache: dict = {}
        self._ptr_cache: dict = {}

    # run-time values
    def dim(self, d: Dim) -> ir.Value:
        if isinstance(d, int):
            return c64(d)
        key = ix.norm(d)
        if isinstance(key, int):
            return c64(key)
        if key in self._dim_cache:
            return self._dim_cache[key]
        with self.b.goto_block(self.fn.entry_basic_block):
            self.b.position_at_start(self.fn.entry_basic_block)
            v = self._int_expr(key)
        self._dim_cache[key] = v
        return v

    def _int_expr(self, e) -> ir.Value:
        return int_dim(self.b, self.dims, self.mod.program.symbols, e)

    def buf_ptr(self, index: int) -> ir.Value:
        if index not in self._ptr_cache:
            with self.b.goto_block(self.fn.entry_basic_block):
                self.b.position_at_start(self.fn.entry_basic_block)
                p = self.b.gep(self.bufs, [c64(index)], source_etype=PTR)
                self._ptr_cache[index] = self.b.load(p, typ=PTR, name=f"b{index}")
        return self._ptr_cache[index]

    def threads(self) -> tuple[ir.Value, ir.Value]:
        return self.b.sext(self.tid32, I64), self.b.sext(self.nth32, I64)

    def partition(self, total: ir.Value, align: int) -> tuple[ir.Value, ir.Value]:
        """This thread's [lo, hi) of range(total), in chunks that are multiples of `align`."""
        return partition(self.b, total, *self.threads(), align)

    def one_thread(self) -> tuple[ir.Value, ir.Value]:
        """[lo, hi) = [0, 1) on thread 0 and empty elsewhere: work that runs once, in a fixed order."""
        tid, _ = self.threads()
        return c64(0), self.b.select(self.b.icmp_signed("==", tid, c64(0)), c64(1), c64(0))

    def when(self, cond: ir.Value, emit, name: str = "when") -> None:
        """Code from `emit()` that runs only where `cond` holds."""
        b = self.b
        yes = b.function.append_basic_block(name)
        done = b.function.append_basic_block(f"{name}.done")
        b.cbranch(cond, yes, done)
        b.position_at_end(yes)
        emit()
        b.branch(done)
        b.position_at_end(done)

    # addresses
    def offset(self, strides, point: Point) -> ir.Value:
        """sum(stride_j * i_j) over the axes that have an index (the vector axis: its first lane)."""
        b = self.b
        acc = c64(0)
        for j, s in enumerate(strides):
            if isinstance(s, int) and s == 0:
                continue
            if j not in point.index:
                raise CompileError("internal: a load depends on an axis without an index")
            term = point.index[j] if (isinstance(s, int) and s == 1) else b.mul(point.index[j], self.dim(s))
            acc = term if isinstance(acc, ir.Constant) and acc.constant == 0 else b.add(acc, term)
        return acc

    def _binop(self, op: str, x: ir.Value, y: ir.Value) -> ir.Value:
        """An integer operation on two values, a scalar meeting a vector splatted to it."""
        b = self.b
        xv, yv = isinstance(x.type, ir.VectorType), isinstance(y.type, ir.VectorType)
        if xv and not yv:
            y = self.splat(y, x.type.count)
        elif yv and not xv:
            x = self.splat(x, y.type.count)
        if op in ("<", "<=", ">", ">=", "==", "!="):
            return b.icmp_signed(op, x, y)
        return {"+": b.add, "*": b.mul, "&": b.and_, "|": b.or_, "/": b.sdiv, "%": b.srem, "sel": None}[op](x, y)

    def int_value(self, e, point: Point, memo: dict, gathers: dict | None = None) -> ir.Value:
        """An integer index expression (of loop indices, dims and gathered values) at `point`: an i64 (or i1 for
        a condition), a vector of them when it depends on the vectorized axis."""
        b = self.b
        gathers = gathers or {}

        def go(x):
            if x is ix.TRUE or x is ix.FALSE or isinstance(x, bool):
                return ir.Constant(I1, bool(x))
            if isinstance(x, ix.Rel):
                return self._binop(x.op, go(ix.norm(x.lhs)), go(ix.norm(x.rhs)))
            if isinstance(x, ix.And):
                vals = [go(a) for a in x.args]
                acc = vals[0]
                for v in vals[1:]:
                    acc = self._binop("&", acc, v)
                return acc
            x = ix.norm(x)
            if isinstance(x, int):
                return c64(x)
            kind, args = ix.sympy_args(x)
            if kind == "atom":
                a = args
                if isinstance(a, ix.Var):
                    j = LOOP_AXIS.get(x)
                    if j is not None:
                        if j not in point.index:
                            raise CompileError("internal: an index expression uses an axis without an index")
                        i = point.index[j]
                        if point.lanes is not None and j == point.vec_axis:
                            return self.lane_index(i, point.lanes, I64)
                        return i
                    if x in gathers:
                        return self.gathered(gathers[x], point, memo)
                    raise CompileError(f"internal: the index variable {a} is neither a loop index nor gathered")
                if isinstance(a, ix.Symbol) or a.kind not in ("floordiv", "mod"):
                    return self.dim(x)  # of dims only: a slice's run-time length, ceiling((N - 1)/2)
                if a.kind == "floordiv":  # floor division by a positive constant
                    n, d = go(a.args[0]), c64(a.args[1])
                    q, r = self._binop("/", n, d), self._binop("%", n, d)
                    neg = self._binop("<", r, c64(0))
                    return b.sub(q, b.zext(neg, q.type))
                n, d = go(a.args[0]), go(a.args[1])
                r = self._binop("%", n, d)
                neg = self._binop("<", r, c64(0))
                dd = d if not isinstance(r.type, ir.VectorType) or isinstance(d.type, ir.VectorType) else \
                    self.splat(d, r.type.count)
                return b.select(neg, b.add(r, dd), r)
            if kind == "pow":
                base = go(args[0])
                acc = base
                for _ in range(args[1] - 1):
                    acc = self._binop("*", acc, base)
                return acc
            vals = [go(a) for a in args]
            acc = vals[0]
            for v in vals[1:]:
                acc = self._binop("+" if kind == "add" else "*", acc, v)
            return acc

        return go(e)

    def gathered(self, g, point: Point, memo: dict) -> ir.Value:
        """A gathered index as i64 (vector): checked against its bound; out of range sets the program's error
        code and reads index 0 instead."""
        b = self.b
        v = self.value(g.index, point, memo)
        elem = vmath.element_type(v.type)
        if elem.width < 64:
            v = b.sext(v, _vec(I64, v.type.count if isinstance(v.type, ir.VectorType) else None))
        bound = self.dim(g.bound)
        bad = self._binop("|", self._binop("<", v, c64(0)), self._binop(">=", v, bound))
        if isinstance(bad.type, ir.VectorType):
            if point.mask is not None:
                bad = b.and_(bad, point.mask)
            any_bad = b.icmp_unsigned("!=", b.bitcast(bad, ir.IntType(bad.type.count)),
                                      ir.Constant(ir.IntType(bad.type.count), 0))
            zero = vmath.const(v.type, 0)
        else:
            any_bad, zero = bad, c64(0)
        self.flag_error(any_bad, g.site)
        return b.select(bad, zero, v)

    def flag_error(self, cond: ir.Value, code: int) -> None:
        """Where `cond` holds, record error `code` in the module's error word (read after the call) unless an
        earlier check already did: the message names the first failure (an embedding's id, not the scatter-add
        of its gradient that reads the same id later)."""
        self.when(cond, lambda: self.b.cmpxchg(self.mod.error_word(), ir.Constant(I32, 0), ir.Constant(I32, code),
                                               "monotonic", "monotonic"), "error")

    def load(self, e: Load, point: Point, memo: dict | None = None) -> ir.Value:
        b = self.b
        mty = MEMORY[e.dtype]
        base = self.buf_ptr(e.buf.index)
        off = self.offset(e.strides, point)
        if not (isinstance(e.offset, int) and e.offset == 0):
            off = b.add(off, self.dim(e.offset))
        lanes = point.lanes
        vstride = e.strides[point.vec_axis] if point.vec_axis is not None and point.vec_axis < len(e.strides) else 0
        align = ITEMSIZE[e.dtype]
        if not e.affine:
            return self._general_load(e, point, memo if memo is not None else {}, base, off, vstride)
        ptr = b.gep(base, [off], inbounds=True, source_etype=mty)
        if lanes is None or (isinstance(vstride, int) and vstride == 0):
            v = b.load(ptr, typ=mty, align=align)
            v = self._from_memory(v, e.dtype)
            return self.splat(v, lanes) if lanes is not None else v
        vty = ir.VectorType(mty, lanes)
        if isinstance(vstride, int) and vstride == 1:
            if point.mask is None:
                v = b.load(ptr, typ=vty, align=align)
            else:
                fn = self.mod.masked_load(vty)
                v = b.call(fn, [ptr, ir.Constant(I32, align), point.mask, vmath.const(vty, 0)])
            return self._from_memory(v, e.dtype)
        # a strided vector (a transposed view): gather lane by lane
        step = self.dim(vstride)
        v = ir.Constant(vty, ir.Undefined)
        for lane in range(lanes):
            p = b.gep(ptr, [b.mul(step, c64(lane))], source_etype=mty)
            if point.mask is not None:
                lane_ok = b.extract_element(point.mask, ir.Constant(I32, lane))
                p = b.select(lane_ok, p, ptr)
            v = b.insert_element(v, b.load(p, typ=mty, align=align), ir.Constant(I32, lane))
        return self._from_memory(v, e.dtype)

    def _general_load(self, e: Load, point: Point, memo: dict, base, off, vstride) -> ir.Value:
        """A load with non-affine terms (dilation, gathers) or bounds masking. Where the terms do not vary along
        the vector axis the lanes are still contiguous (or all one element): a masked vector load (or one scalar
        load); else a per-lane gather. Lanes outside the buffer (when checked) or off the point's mask read 0
        and touch no memory."""
        b = self.b
        mty = MEMORY[e.dtype]
        align = ITEMSIZE[e.dtype]
        lanes = point.lanes
        gathers = {g.sym: g for g in e.gathers}
        va = point.vec_axis
        varying = lanes is not None and va is not None and (
            any(va in loop_axes(t) for t, _ in e.terms) or any(va in g.index.axes() for g in e.gathers))
        for t, stride in e.terms:  # the first lane's offset, when the terms are the same in every lane
            v = self.int_value(t, point, memo, gathers)
            if isinstance(v.type, ir.VectorType) and not varying:
                v = b.extract_element(v, ir.Constant(I32, 0))
            if not (isinstance(stride, int) and stride == 1):
                v = self._binop("*", v, self.dim(stride))
            off = self._binop("+", off, v)
        size = self.dim(e.buf.size())
        flat = isinstance(vstride, int) and vstride == 0
        if lanes is None or (flat and not varying):  # one element (splat to the lanes)
            ok = self._binop("&", self._binop(">=", off, c64(0)), self._binop("<", off, size)) if e.checked else None
            addr = off if ok is None else b.select(ok, off, c64(0))
            v = b.load(b.gep(base, [addr], inbounds=True, source_etype=mty), typ=mty, align=align)
            if ok is not None:
                v = b.select(ok, v, vmath.const(v.type, 0))
            v = self._from_memory(v, e.dtype)
            return self.splat(v, lanes) if lanes is not None else v
        vty = ir.VectorType(mty, lanes)
        contiguous = not varying and isinstance(vstride, int) and vstride == 1
        lane_off = None
        if not e.checked:
            ok = None
        elif contiguous and not isinstance(off.type, ir.VectorType):
            ok = self._contiguous_bounds(off, size, lanes)
        else:
            lane_off = self._lane_offsets(off, vstride, lanes)
            ok = self._binop("&", self._binop(">=", lane_off, c64(0)), self._binop("<", lane_off, size))
        if point.mask is not None:
            ok = point.mask if ok is None else b.and_(ok, point.mask)
        if contiguous:  # contiguous lanes: one (masked) load
            ptr = b.gep(base, [off], source_etype=mty)  # not inbounds: masked-off lanes may lie outside
            if ok is None:
                v = b.load(ptr, typ=vty, align=align)
            else:  # masked-off lanes are not read
                v = b.call(self.mod.masked_load(vty), [ptr, ir.Constant(I32, align), ok, vmath.const(vty, 0)])
            return self._from_memory(v, e.dtype)
        if lane_off is None:
            lane_off = self._lane_offsets(off, vstride, lanes)
        v = ir.Constant(vty, ir.Undefined)
        for lane in range(lanes):
            li = ir.Constant(I32, lane)
            o = b.extract_element(lane_off, li)
            if ok is not None:
                o = b.select(b.extract_element(ok, li), o, c64(0))
            x = b.load(b.gep(base, [o], inbounds=True, source_etype=mty), typ=mty, align=align)
            v = b.insert_element(v, x, li)
        if ok is not None:
            v = b.select(ok, v, vmath.const(vty, 0))
        return self._from_memory(v, e.dtype)

    def _lane_offsets(self, off, vstride, lanes: int) -> ir.Value:
        """Each lane's element offset: off + lane * vstride (i64 lanes)."""
        b = self.b
        return self._binop("+", self.splat(off, lanes) if not isinstance(off.type, ir.VectorType) else off,
                           b.mul(self.lane_index(c64(0), lanes, I64), self.splat(self.dim(vstride), lanes)))

    def _contiguous_bounds(self, off: ir.Value, size: ir.Value, lanes: int) -> ir.Value:
        """The lanes of a contiguous vector at scalar `off` inside [0, size): the lanes [-off, size - off), clamped
        to the vector in scalars, so that the mask is one unsigned compare of i32 lanes (not four of i64 halves)."""
        b = self.b
        lanes_c = c64(lanes)

        def clamp(v):
            v = b.select(b.icmp_signed("<", v, c64(0)), c64(0), v)
            return b.select(b.icmp_signed(">", v, lanes_c), lanes_c, v)

        first, stop = clamp(b.neg(off)), clamp(b.sub(size, off))
        width = b.sub(stop, first)
        width = b.select(b.icmp_signed("<", width, c64(0)), c64(0), width)
        idx = ir.Constant(ir.VectorType(I32, lanes), list(range(lanes)))
        rel = b.sub(idx, self.splat(b.trunc(first, I32), lanes))
        return b.icmp_unsigned("<", rel, self.splat(b.trunc(width, I32), lanes))

    def _from_memory(self, v, dtype):
        if dtype == "bool":
            return self.b.icmp_unsigned("!=", v, vmath.const(v.type, 0))
        return v

    def store(self, buf_index: int, dtype: str, off: ir.Value, value: ir.Value, mask=None, whole_ok=None) -> None:
        """value at buffer[off ...]; `mask`: only its lanes; `whole_ok` (i1, with a mask): where set, the other
        lanes may be written back as read (gemm.blend_store: a plain store where masked ones are slow)."""
        b = self.b
        mty = MEMORY[dtype]
        if dtype == "bool":
            value = b.zext(value, vmath.like(value.type, I8))
        ptr = b.gep(self.buf_ptr(buf_index), [off], inbounds=True, source_etype=mty)
        if mask is None:
            b.store(value, ptr, align=ITEMSIZE[dtype])
        elif whole_ok is not None:
            gemm_mod.blend_store(b, value, ptr, ITEMSIZE[dtype], mask, whole_ok, self.mod.masked_store(value.type))
        else:
            b.call(self.mod.masked_store(value.type), [value, ptr, ir.Constant(I32, ITEMSIZE[dtype]), mask])

    def splat(self, v: ir.Value, lanes: int) -> ir.Value:
        return _splat(self.b, v, lanes)

    def lane_index(self, base: ir.Value, lanes: int, ty: ir.Type) -> ir.Value:
        """<base, base+1, ...> as a vector of `ty` (i32 or i64)."""
        b = self.b
        v = self.splat(b.trunc(base, ty) if ty.width < 64 else base, lanes)
        return b.add(v, ir.Constant(ir.VectorType(ty, lanes), list(range(lanes))))

    # expressions
    def value(self, e: Expr, point: Point, memo: dict, acc: ir.Value | None = None) -> ir.Value:
        """e at `point`; `memo` holds values already emitted in this scope (by expr identity)."""
        order = list(walk_all((e,), skip=memo))
        deferred = self._guarded_loads(order) if point.lanes is not None else ()
        for x in order:
            if id(x) not in deferred:
                memo[id(x)] = self._value(x, point, memo, acc)
        return memo[id(e)]

    @staticmethod
    def _guarded_loads(order: list) -> set[int]:
        """The checked loads (in vector code) read only as a guard's value: the guard's emission loads them with
        its own condition as the lane mask (the lanes where it holds are in bounds: that is what a pad's or a
        concatenation's guard is), instead of a mask of their own from the buffer's bounds."""
        guards = [x for x in order if isinstance(x, Guard) and isinstance(x.value, Load) and x.value.checked]
        if not guards:
            return set()
        uses: dict[int, int] = {}
        for x in order:
            for k in x.children():
                uses[id(k)] = uses.get(id(k), 0) + 1
        return {id(g.value) for g in guards if uses.get(id(g.value)) == 1}

    def _value(self, e: Expr, point: Point, memo: dict, acc) -> ir.Value:
        b = self.b
        lanes = point.lanes
        if isinstance(e, Load):
            return self.load(e, point, memo)
        if isinstance(e, Const):
            ty = _vec(SCALAR[e.dtype], lanes)
            return self.sc.const(ty, e.value)
        if isinstance(e, DimValue):
            v = self._int_expr(e.expr) if not isinstance(e.expr, int) else c64(e.expr)
            v = cast_value(b, v, "int64", e.dtype)
            return self.splat(v, lanes) if lanes is not None else v
        if isinstance(e, Index):
            v = self.int_value(e.expr, point, memo, {g.sym: g for g in e.gathers})
            v = cast_value(b, v, "int64", e.dtype)
            return self.splat(v, lanes) if lanes is not None and not isinstance(v.type, ir.VectorType) else v
        if isinstance(e, Acc):
            return acc
        if isinstance(e, Apply):
            return self.apply(e, [memo[id(a)] for a in e.args], lanes)
        if isinstance(e, Convert):
            return cast_value(b, memo[id(e.x)], e.x.dtype, e.dtype)
        if isinstance(e, Guard):
            cond, conds = None, e.conds
            if lanes is not None and point.vec_extent is not None:
                cond, conds = self._lane_interval(conds, point, memo)
            gathers = {g.sym: g for g in e.gathers}
            for c in conds:
                v = self.int_value(c, point, memo, gathers)
                cond = v if cond is None else self._binop("&", cond, v)
            if id(e.value) not in memo:  # a checked load deferred by `value`: read where the guard holds
                plain = replace(e.value, checked=False)
                va = point.vec_axis
                vs = plain.strides[va] if va is not None and va < len(plain.strides) else 0
                if plain.affine and not (isinstance(vs, int) and vs == 0):  # lanes that read lanes' addresses
                    m = cond if isinstance(cond.type, ir.VectorType) else self.splat(cond, lanes)
                    memo[id(e.value)] = self.load(plain, Point(
                        point.index, va, lanes, m if point.mask is None else b.and_(m, point.mask),
                        point.vec_extent), memo)
                else:  # one address for all lanes: read it checked
                    memo[id(e.value)] = self._value(e.value, point, memo, acc)
            val, other = memo[id(e.value)], memo[id(e.otherwise)]
            if lanes is not None:
                cond = cond if isinstance(cond.type, ir.VectorType) else self.splat(cond, lanes)
                val = val if isinstance(val.type, ir.VectorType) else self.splat(val, lanes)
                other = other if isinstance(other.type, ir.VectorType) else self.splat(other, lanes)
            return b.select(cond, val, other)
        raise CompileError(f"internal: no emission for {type(e).__name__}")

    _I32_SAFE = 1 << 30

    def _lane_interval(self, conds, point: Point, memo: dict) -> tuple[ir.Value | None, list]:
        """(the lane mask of the conditions that bound the vector axis's index by constants, the others). The
        bounds (a pad's, a col2im tap's) make one interval, tested with one unsigned compare of i32 lanes: in
        i64 lanes each bound is two compares of half vectors and a mask merge, and a col2im's 25 taps of two
        bounds each spent most of their kernel's time there."""
        sym = LOOP[point.vec_axis]
        lo, hi, rest = None, None, []
        for c in conds:
            iv = _interval(c, sym)
            if iv is None:
                rest.append(c)
                continue
            if iv[0] is not None:
                lo = iv[0] if lo is None else max(lo, iv[0])
            if iv[1] is not None:
                hi = iv[1] if hi is None else min(hi, iv[1])
        bounds = [v for v in (lo, hi) if v is not None]
        if not bounds or point.vec_extent >= self._I32_SAFE or any(abs(v) >= self._I32_SAFE for v in bounds):
            return None, list(conds)
        b, lanes = self.b, point.lanes
        idx = memo.get("lane32")
        if idx is None:
            idx = memo["lane32"] = self.lane_index(point.index[point.vec_axis], lanes, I32)
        vty = ir.VectorType(I32, lanes)
        if lo is not None and hi is not None:
            if hi <= lo:
                return ir.Constant(ir.VectorType(I1, lanes), [0] * lanes), rest
            off = b.sub(idx, ir.Constant(vty, [lo] * lanes))  # lo <= i < hi  <=>  (unsigned) i - lo < hi - lo
            return b.icmp_unsigned("<", off, ir.Constant(vty, [hi - lo] * lanes)), rest
        if lo is not None:
            return b.icmp_signed(">=", idx, ir.Constant(vty, [lo] * lanes)), rest
        return b.icmp_signed("<", idx, ir.Constant(vty, [hi] * lanes)), rest

    def apply(self, e: Apply, args: list[ir.Value], lanes: int | None) -> ir.Value:
        if lanes is not None:
            args = [a if isinstance(a.type, ir.VectorType) else self.splat(a, lanes) for a in args]
        env = dict(zip(e.fn.syms, args, strict=True))
        # numbers in the formula take the type of its first non-bool operand (a comparison: the compared values')
        ty = next((a.type for a in args if vmath.element_type(a.type) != I1), _vec(SCALAR[e.dtype], lanes))
        return self.sc.formula(e.fn.expr, env, ty)


def _interval(cond, sym) -> tuple[int | None, int | None] | None:
    """The values of `sym` a condition admits, as a half-open [lo, hi) (None: unbounded on that side), when it is
    a bound on `sym` alone with unit coefficient and integer constants (a pad's or a concatenation's guard)."""
    if not isinstance(cond, ix.Rel) or cond.op == "==":
        return None
    d = cond.lhs - cond.rhs
    c = d - sym  # cond: sym + c (op) 0
    if not isinstance(c, int):
        return None
    if cond.op == ">=":
        return -c, None
    if cond.op == ">":
        return -c + 1, None
    if cond.op == "<":
        return None, -c
    return None, -c + 1


def _multiple_of(extent, lanes: int) -> bool:
    """Whether a loop extent (an int or a product of dims) is a multiple of `lanes` for every value of its dims:
    its constant factor is (e.g. 128*N for 16 lanes)."""
    if isinstance(extent, int):
        return extent % lanes == 0
    if len(extent.terms) != 1:
        return False  # sympy's as_coeff_Mul of a sum: coefficient 1
    coeff = extent.terms[0][1]
    return isinstance(coeff, int) and coeff % lanes == 0


def _guard_pieces(stores: list[Store], axis: int, size, lanes: int = 1) -> list[tuple[int, int, list[Store]]] | None:
    """Index-set splitting: when guards test the innermost index `axis` against constants (concatenations,
    pads), the ranges between their bounds, each with the stores its guards resolve to there (a branch that
    is off is not computed at all; loads that no guard protects any more are plain). None when nothing splits,
    or when the pieces would be many more passes than the row's vectors of `lanes` (a col2im's 25 shifted taps
    of a 12-wide row cut it at 9 places: 9 partial vectors instead of one whose lanes select)."""


    if not isinstance(size, int):
        return None
    sym = LOOP[axis]
    cuts = {0, size}
    split: dict[int, list] = {}
    for x in walk_all(st.value for st in stores):
        if isinstance(x, Guard) and id(x) not in split:
            ivs = [_interval(c, sym) for c in x.conds]
            if all(iv is not None for iv in ivs):
                split[id(x)] = ivs
                cuts |= {v for iv in ivs for v in iv if v is not None and 0 < v < size}
    if len(cuts) <= 2 or len(cuts) > 17 or len(cuts) - 1 > -(-size // lanes) + 2:
        return None
    points = sorted(cuts)
    pieces = []
    for lo, hi in zip(points, points[1:], strict=False):
        memo: dict[int, Expr] = {}
        out = [Store(st.buf, _settle(st.value, split, lo, memo, False)) for st in stores]
        if not any(isinstance(x, Guard) for x in walk_all(st.value for st in out)):
            # no guard left: every checked load was protected by one that holds here, so it reads plainly
            memo = {}
            out = [Store(st.buf, _settle(st.value, split, lo, memo, True)) for st in stores]
        pieces.append((lo, hi, out))
    return pieces


def _settle(e: Expr, split: dict, lo: int, memo: dict, uncheck: bool) -> Expr:
    """e with the guards in `split` (id -> the intervals of their conditions) resolved where the index is `lo`
    (and on the rest of its range), and with `uncheck` its checked loads plain; sub-expressions where nothing
    changes are kept as they are (their hoisted values stay valid)."""
    from dataclasses import replace

    if id(e) in memo:
        return memo[id(e)]
    if isinstance(e, Guard) and id(e) in split:
        on = all((a is None or lo >= a) and (b is None or lo < b) for a, b in split[id(e)])
        r = _settle(e.value if on else e.otherwise, split, lo, memo, uncheck)
    else:
        kids = e.children()
        new = tuple(_settle(k, split, lo, memo, uncheck) for k in kids)
        if isinstance(e, Load) and uncheck and e.checked:
            r = replace(e, checked=False, gathers=tuple(replace(g, index=i)
                                                        for g, i in zip(e.gathers, new, strict=True)))
        elif all(a is b for a, b in zip(new, kids, strict=True)):
            r = e
        elif isinstance(e, Apply):
            r = replace(e, args=new)
        elif isinstance(e, Convert):
            r = replace(e, x=new[0])
        elif isinstance(e, Guard):
            r = replace(e, value=new[0], otherwise=new[1],
                        gathers=tuple(replace(g, index=i) for g, i in zip(e.gathers, new[2:], strict=True)))
        elif isinstance(e, (Load, Index)):  # an index read through a gather (one-hot labels: idx(_g0) == i1)
            r = replace(e, gathers=tuple(replace(g, index=i) for g, i in zip(e.gathers, new, strict=True)))
        else:
            raise CompileError(f"internal: cannot rebuild {type(e).__name__} while splitting guards")
    memo[id(e)] = r
    return r


def _dtype_of(ty: ir.Type) -> str:
    elem = vmath.element_type(ty)
    if isinstance(elem, ir.FloatType):
        return "float32"
    if isinstance(elem, ir.DoubleType):
        return "float64"
    return {1: "bool", 8: "bool", 32: "int32", 64: "int64"}[elem.width]


def _level(e: Expr, depth: int) -> int:
    """How many loops (outermost first) must be open before e can be computed."""
    axes = e.axes()
    if -1 in axes:
        return depth
    return max((a + 1 for a in axes), default=0)


# functions whose vector code is a long dependent chain (a polynomial, a division)
_TRANSCENDENTAL = frozenset({"exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "erf"})
HEAVY_CALLS = 3


def _heavy(stores) -> bool:
    """A loop computing at least HEAVY_CALLS transcendental functions a point (an LSTM's cell: 3 sigmoids, 2 tanh)
    runs two vectors a step on 16-register AVX2 targets: each value is two registers, so the two halves' chains
    interleave in the instruction stream. One 8-lane step of the LSTM cell is ~250 instructions with a dependent
    path of ~100 cycles through two functions, which the reorder window cannot overlap with the next step's
    (LSTM step on Zen 3, four alternated runs: forward cell 3.21 -> 2.44 ms, backward 1.30 -> 1.16 ms, the step
    24.1 -> 22.5 ms; four registers a value measured the same)."""
    n = 0
    for x in walk_all(s.value for s in stores):
        if isinstance(x, Apply) and x.fn.name in _TRANSCENDENTAL:
            n += 1
            if n >= HEAVY_CALLS:
                return True
    return False


def _collapse(domain: tuple, exprs: list[Expr], keep_separate: set[int] = frozenset()) -> list[list[int]]:
    """Groups of adjacent domain axes that can run as one loop: every address is linear across them. Axes of
    size 1 belong to no group."""
    groups: list[list[int]] = []
    strides_sets = []
    keep_separate = set(keep_separate)
    for x in walk_all(exprs):
        if isinstance(x, Load):
            strides_sets.append(x.strides)
            for t, _ in x.terms:
                keep_separate |= loop_axes(t)
        elif isinstance(x, Index):
            aff = split_affine(x.expr)
            if aff is None:
                keep_separate |= loop_axes(x.expr)
            else:
                strides_sets.append(tuple(aff[0].get(j, 0) for j in range(len(domain))))
        elif isinstance(x, Guard):
            for c in x.conds:
                keep_separate |= loop_axes(c)
    for a in range(len(domain)):
        if isinstance(domain[a], int) and domain[a] == 1:
            continue  # its index is always 0: no loop, and its strides never matter
        if groups and a not in keep_separate and groups[-1][-1] not in keep_separate:
            prev = groups[-1][-1]
            ok = all(ix.norm(st[prev] - st[a] * domain[a]) == 0 for st in strides_sets)
            if ok:
                groups[-1].append(a)
                continue
        groups.append([a])
    return groups


def _transposed_copy(stores: list[Store], domain: list, lanes: int) -> Load | None:
    """The source of a loop that only copies a transposed 2-D view: one store of a plain load with strides
    (1, S), S a whole row of at least `lanes` elements, over a static domain of whole lanes x lanes blocks, in a
    dtype of 4 or 8 bytes. None for any other loop."""
    if len(stores) != 1 or len(domain) != 2 or not all(isinstance(d, int) and d % lanes == 0 for d in domain):
        return None
    v = stores[0].value
    if not isinstance(v, Load) or not v.affine or v.gathers or v.dtype != stores[0].buf.dtype:
        return None
    if v.dtype not in ("float32", "float64", "int32", "int64") or lanes & (lanes - 1):
        return None
    if not (isinstance(v.offset, int) and v.offset == 0) or len(v.strides) != 2:
        return None
    s0, s1 = v.strides
    if not (isinstance(s0, int) and s0 == 1 and isinstance(s1, int) and s1 >= domain[0]):
        return None
    return v


def _regroup(e: Expr, groups: list[list[int]], cache: dict) -> Expr:
    """e over the collapsed axes: each group keeps its innermost stride; index expressions (which only use axes
    that are groups of their own) are renamed to the group's axis."""
    from dataclasses import replace

    from graphc.codegen.kernels import rebuild

    rename = {}
    for k, g in enumerate(groups):
        for a in g:
            rename[LOOP[a]] = LOOP[k] if len(g) == 1 else LOOP[a]
    inner = [g[-1] for g in groups]

    def sub(x: Expr) -> Expr:
        if isinstance(x, Load):
            return replace(x, strides=tuple(x.strides[a] if a < len(x.strides) else 0 for a in inner),
                           terms=tuple((ix.subs(t, rename), s) for t, s in x.terms))
        if isinstance(x, Index):
            aff = split_affine(x.expr)
            if aff is not None:
                coeffs, const = aff
                flat = sum((coeffs.get(a, 0) * LOOP[k] for k, a in enumerate(inner)), 0)
                return replace(x, expr=ix.norm(const + flat))
            return replace(x, expr=ix.subs(x.expr, rename))
        if isinstance(x, Guard):
            return replace(x, conds=tuple(ix.subs(c, rename) for c in x.conds))
        return x

    key = id(e)
    if key not in cache:  # one node memo for all the kernel's stores: what they share stays shared
        cache[key] = rebuild(e, sub, cache.setdefault("nodes", {}))
    return cache[key]


SUM_BLOCK = 64  # vectors a float sum accumulates plainly before adding them into its compensated total
REDUCE_BLOCK = 8  # vectors of outputs a reduction over outer axes accumulates side by side (small bodies)


class ModuleEmitter:
    def __init__(self, program: Program, target: Target, name: str = "graphc", profile: bool = False,
                 declare_helpers: bool = False, split: bool = False):
        """`profile` counts thread 0's time-stamp cycles in each kernel and in the barrier before it, into the
        global i64 array `graphc_profile` (2 per kernel: kernel, wait; a loop's body kernels have slots of their
        own after the loop's, in `all_kernels` order, and the loop's slot holds all its steps). With
        `declare_helpers` the GEMMs' shared helpers are declared, not defined: the module is for linking with
        their helper library (`gemm.helper_library`), and emitting, printing and parsing them is skipped.
        With `split` each kernel is a module of its own (`parts`), defined hidden and declared where it is called,
        for compiling on two cores (`target.emit_object`'s parts; not with `profile`)."""
        self.profile = profile
        self.declare_helpers = declare_helpers
        self._prof = None  # (slots, counts, clock) while the program is emitted with profiling
        self._small: bool | None = None  # every product small enough for a thin path (_small_products)
        self.program = program
        self.target = target
        self.module = ir.Module(name=name)
        self.module.triple = target.triple
        self.main = self.module  # the program's module; `module` is a kernel's own while one is emitted in parts
        self.split = split and not profile
        self.parts: list[ir.Module] = []
        self.teams: list = []  # the persistent thread teams of this module's launchers (graphc.codegen.team)

    def declare(self, name: str, fnty: ir.FunctionType) -> ir.Function:
        f = self.module.globals.get(name)
        return f if f is not None else ir.Function(self.module, fnty, name=name)

    def masked_load(self, vty: ir.VectorType) -> ir.Function:
        mty = ir.VectorType(I1, vty.count)
        return self.declare(f"llvm.masked.load.{vmath._type_suffix(vty)}.p0",
                             ir.FunctionType(vty, [PTR, I32, mty, vty]))

    def masked_store(self, vty: ir.VectorType) -> ir.Function:
        mty = ir.VectorType(I1, vty.count)
        return self.declare(f"llvm.masked.store.{vmath._type_suffix(vty)}.p0",
                             ir.FunctionType(VOID, [vty, PTR, I32, mty]))

    def lanes(self, dtype: str) -> int:
        return self.target.f64_lanes if ITEMSIZE[dtype] == 8 else self.target.f32_lanes

    # --------------------------------------------------------------------------------------------- loops
    def emit_loop(self, k: LoopKernel) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(VOID, KERNEL_ARGS), name=k.name)
        fn.linkage = "internal"
        fe = FunctionEmitter(self, fn)
        b = fe.b
        groups = _collapse(k.domain, [s.value for s in k.stores])
        cache: dict = {}
        stores = [Store(s.buf, _regroup(s.value, groups, cache)) for s in k.stores]
        domain = [ix.norm(size([k.domain[a] for a in g])) for g in groups]
        depth = len(domain)
        dtypes = {s.buf.dtype for s in stores}
        lanes = min(self.lanes(d) for d in dtypes | {"float32"})
        if _heavy(stores) and self.target.vector_bits == 256:
            lanes *= 2  # two registers a value: see _heavy
        out_strides = _rowmajor_dims(domain)
        if depth == 0:
            tid, _ = fe.threads()
            work = fn.append_basic_block("work")
            done = fn.append_basic_block("done")
            b.cbranch(b.icmp_signed("==", tid, c64(0)), work, done)
            b.position_at_end(work)
            point = Point({})
            memo: dict = {}
            for s in stores:
                fe.store(s.buf.index, s.buf.dtype, c64(0), fe.value(s.value, point, memo))
            b.branch(done)
            b.position_at_end(done)
            b.ret_void()
            return fn
        sizes = [fe.dim(d) for d in domain]
        src = _transposed_copy(stores, domain, lanes)
        if src is not None:
            self._emit_transpose(fe, stores[0].buf, src, domain, lanes)
            b.ret_void()
            return fn
        # split the outermost loop over threads (in multiples of the vector width when it is the only loop)
        lo, hi = fe.partition(sizes[0], lanes if depth == 1 else 1)
        # where masked stores are slow, a row's masked tail may store whole vectors up to the end of this thread's
        # rows (gemm.blend_store: the lanes past the row, the next row's first elements, written back as read)
        thread_end = None
        if depth > 1 and gemm_mod.slow_masked_stores(self.target):
            thread_end = hi
            for sz in sizes[1:]:
                thread_end = b.mul(thread_end, sz)
        by_level: dict[int, list[Expr]] = {}
        for x in walk_all(s.value for s in stores):
            by_level.setdefault(_level(x, depth), []).append(x)
        scalar_memo: dict = {}

        def emit_level(level: int, point: Point, memo: dict) -> None:
            for x in by_level.get(level, []):
                fe.value(x, point, memo)

        point = Point({})
        emit_level(0, point, scalar_memo)
        pieces = _guard_pieces(stores, depth - 1, domain[-1], lanes)

        def loops(axis: int, point: Point, memo: dict) -> None:
            start = lo if axis == 0 else c64(0)
            stop = hi if axis == 0 else sizes[axis]
            if axis < depth - 1:
                with Loop(b, start, stop, 1, f"l{axis}") as i:
                    p = Point({**point.index, axis: i})
                    m = dict(memo)
                    emit_level(axis + 1, p, m)
                    loops(axis + 1, p, m)
                return
            # innermost: vector body then scalar tail, per range of the index where the guards are settled
            # whole vectors only: the range's length is always a multiple of the lanes (the innermost extent is;
            # a single loop's thread ranges are cut in multiples of the lanes), so no tail is emitted
            whole = _multiple_of(domain[axis], lanes)
            if pieces is None:
                innermost(axis, point, memo, start, stop, stores, whole)
                return
            for p_lo, p_hi, p_stores in pieces:
                a = c64(p_lo) if axis else b.select(b.icmp_signed(">", start, c64(p_lo)), start, c64(p_lo))
                z = c64(p_hi) if axis else b.select(b.icmp_signed("<", stop, c64(p_hi)), stop, c64(p_hi))
                z = b.select(b.icmp_signed("<", z, a), a, z)
                innermost(axis, point, memo, a, z, p_stores, whole and p_lo % lanes == 0 and p_hi % lanes == 0)

        def innermost(axis: int, point: Point, memo: dict, start, stop, stores, whole: bool) -> None:
            extent = domain[axis] if isinstance(domain[axis], int) else None
            n = b.sub(stop, start)
            vec_stop = stop if whole else b.add(start, b.mul(b.sdiv(n, c64(lanes)), c64(lanes)))
            with Loop(b, start, vec_stop, lanes, f"v{axis}") as i:
                p = Point({**point.index, axis: i}, vec_axis=axis, lanes=lanes, vec_extent=extent)
                vm = {key: (fe.splat(v, lanes) if not isinstance(v.type, ir.VectorType) else v)
                      for key, v in memo.items()}
                self._stores(fe, stores, p, vm, out_strides)
            if whole:
                return
            # the remainder: one masked vector step (the same code as the body, so every element is computed
            # the same way wherever the partition boundaries fall)
            rem = b.sub(stop, vec_stop)
            tail = b.function.append_basic_block(f"t{axis}")
            after = b.function.append_basic_block(f"t{axis}.done")
            b.cbranch(b.icmp_signed(">", rem, c64(0)), tail, after)
            b.position_at_end(tail)
            p = Point({**point.index, axis: vec_stop}, vec_axis=axis, lanes=lanes, mask=self._lane_mask(fe, rem, lanes),
                      vec_extent=extent)
            vm = {key: (fe.splat(v, lanes) if not isinstance(v.type, ir.VectorType) else v) for key, v in memo.items()}
            # whole-vector tails only for rows of at least half a vector (see gemm's epilogue: narrower ones
            # overlap several rows, whose loads then wait on the stores before them)
            dense = None if thread_end is None else b.icmp_signed(">=", b.mul(sizes[axis], c64(2)), c64(lanes))
            self._stores(fe, stores, p, vm, out_strides, thread_end, dense)
            b.branch(after)
            b.position_at_end(after)

        loops(0, point, scalar_memo)
        b.ret_void()
        return fn

    def _emit_transpose(self, fe: FunctionEmitter, out: Buffer, src: Load, domain: list, lanes: int) -> None:
        """out[i, j] = src[j*S + i] (a materialized transposed view) in lanes x lanes blocks: `lanes` contiguous
        vectors of the source's rows, transposed in registers, stored as `lanes` contiguous vectors of out's rows
        (the loop emitter would read each output vector as `lanes` strided scalars). Threads split out's rows in
        whole blocks."""
        b = fe.b
        R, C = domain
        S = src.strides[1]
        mty = MEMORY[out.dtype]
        vty = ir.VectorType(mty, lanes)
        lo, hi = fe.partition(c64(R), lanes)
        with Loop(b, lo, hi, lanes, "tr_i") as i, Loop(b, c64(0), c64(C), lanes, "tr_j") as j:
            rows = []
            for r in range(lanes):
                off = b.add(b.mul(b.add(j, c64(r)), c64(S)), i)
                rows.append(b.load(b.gep(fe.buf_ptr(src.buf.index), [off], inbounds=True, source_etype=mty),
                                   typ=vty, align=ITEMSIZE[out.dtype]))
            for r, v in enumerate(gemm_mod.lane_transpose(b, rows)):
                off = b.add(b.mul(b.add(i, c64(r)), c64(C)), j)
                b.store(v, b.gep(fe.buf_ptr(out.index), [off], inbounds=True, source_etype=mty),
                        align=ITEMSIZE[out.dtype])

    @staticmethod
    def _lane_mask(fe: FunctionEmitter, count: ir.Value, lanes: int) -> ir.Value:
        """<lanes x i1>: lane l is on when l < count."""
        ids = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        return fe.b.icmp_signed("<", ids, fe.splat(count, lanes))

    def _stores(self, fe: FunctionEmitter, stores: list[Store], point: Point, memo: dict, out_strides,
                thread_end=None, dense=None) -> None:
        """The loop's stores at `point` (row-major in the domain: one offset for all). `thread_end`: the end of
        this thread's share of the domain, as an offset; a masked vector that ends within it (and where `dense`,
        an i1) may be stored whole, the lanes past the mask written back as read (`FunctionEmitter.store`'s
        `whole_ok`)."""
        off = fe.offset(out_strides, point)
        whole_ok = None
        if point.mask is not None and thread_end is not None:
            whole_ok = fe.b.and_(dense, fe.b.icmp_signed("<=", fe.b.add(off, c64(point.lanes)), thread_end))
        for s in stores:
            v = fe.value(s.value, point, memo)
            if point.lanes is not None and not isinstance(v.type, ir.VectorType):
                v = fe.splat(v, point.lanes)
            fe.store(s.buf.index, s.buf.dtype, off, v, point.mask, whole_ok)

    # --------------------------------------------------------------------------------------------- reductions
    def emit_reduce(self, k: ReduceKernel) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(VOID, KERNEL_ARGS), name=k.name)
        fn.linkage = "internal"
        fe = FunctionEmitter(self, fn)
        b = fe.b
        kept, axes = k.kept, k.axes
        acc_dtype = k.body.dtype
        lanes = self.lanes(acc_dtype)
        sizes = {a: fe.dim(d) for a, d in enumerate(k.domain)}
        out_strides_kept = _rowmajor_dims([k.domain[a] for a in kept])
        out_strides = [0] * len(k.domain)
        for a, s in zip(kept, out_strides_kept, strict=True):
            out_strides[a] = s
        inner_reduced = bool(axes) and (len(k.domain) - 1) in axes
        ety = SCALAR[acc_dtype]
        rdn = k.reduction
        fml = rdn.combine

        def identity(ty):
            v = rdn.identity
            if _is_float(ty):
                return vmath.const(ty, v)
            elem = vmath.element_type(ty)
            if v == float("-inf"):
                return vmath.const(ty, -(1 << (elem.width - 1)))
            if v == float("inf"):
                return vmath.const(ty, (1 << (elem.width - 1)) - 1)
            return vmath.const(ty, int(v))

        def combine(x, y):
            if rdn.label == "sum" and _is_float(x.type):
                # not `contract`: fused with the value's last product (acc + a*b as one FMA), a sum's bits would
                # depend on which loop LLVM fuses in (vectorized body or remainder, set by the rows a thread
                # gets): a cumsum differed between 1 and 3 threads. numpy rounds the product first, too.
                return fe.sc.b.fadd(x, y)
            return fe.sc.formula(fml.expr, dict(zip(fml.syms, (x, y), strict=True)), x.type)

        if k.scan:
            self._emit_scan(k, fe, identity, combine)
            b.ret_void()
            return fn

        def epilogue(point: Point, accv) -> None:
            off = fe.offset(out_strides, point)
            memo: dict = {}
            for s in k.stores:
                v = fe.value(s.value, point, memo, accv)
                if s.value.dtype != acc_dtype and isinstance(s.value, Acc):
                    v = cast_value(b, v, acc_dtype, s.value.dtype)
                fe.store(s.buf.index, s.buf.dtype, off, v, point.mask)

        kept_outer = list(kept) if inner_reduced else list(kept[:-1])
        # thread split: outermost kept loop (or, with none, the vector chunks of the inner kept axis)
        if kept_outer:
            lo, hi = fe.partition(sizes[kept_outer[0]], 1)
        elif not inner_reduced:
            lo, hi = fe.partition(sizes[kept[-1]], lanes)
        else:  # full reduction: one thread
            lo, hi = fe.one_thread()

        def over_kept(idx: int, point: Point, body) -> None:
            if idx == len(kept_outer):
                if not kept_outer and inner_reduced:  # a full reduction: thread 0 alone, in a fixed order
                    fe.when(b.icmp_signed("<", lo, hi), lambda: body(point), "one")
                    return
                body(point)
                return
            a = kept_outer[idx]
            start, stop = (lo, hi) if idx == 0 else (c64(0), sizes[a])
            with Loop(b, start, stop, 1, f"k{a}") as i:
                over_kept(idx + 1, Point({**point.index, a: i}), body)

        red = list(axes)

        def accumulate(point_base: Point, vec_axis, lanes_, mask, accp) -> None:
            """for reduced axes (nested): accp = combine(accp, body)"""
            def rec(idx: int, point: Point):
                if idx == len(red):
                    memo: dict = {}
                    v = fe.value(k.body, point, memo)
                    if lanes_ is not None and not isinstance(v.type, ir.VectorType):
                        v = fe.splat(v, lanes_)
                    if mask is not None:
                        v = b.select(mask, v, identity(v.type))
                    cur = b.load(accp, typ=v.type)
                    b.store(combine(cur, v), accp)
                    return
                a = red[idx]
                with Loop(b, c64(0), sizes[a], 1, f"r{a}") as i:
                    rec(idx + 1, Point({**point.index, a: i}, point_base.vec_axis, point_base.lanes,
                                       point_base.mask))
            rec(0, point_base)

        if inner_reduced:
            # vector accumulator along the innermost (reduced) axis, then a fixed-order horizontal sum
            last = len(k.domain) - 1
            red = [a for a in axes if a != last]
            vty = ir.VectorType(ety, lanes)
            # a float sum: the vector accumulator runs over SUM_BLOCK vectors at most, then is added into a
            # compensated (Kahan) total -- a plain running sum of 4M float32 values near 1000 is off by 3e-3
            # (numpy sums pairwise); max and min, and integer sums, are exact in any order
            compensated = rdn.label == "sum" and _is_float(ety)
            with b.goto_entry_block():
                accv_p = alloca(b, vty, name="accv")
                if compensated:
                    tot_p, comp_p = alloca(b, vty, name="tot"), alloca(b, vty, name="comp")

            def fold() -> None:
                y = b.fsub(b.load(accv_p, typ=vty), b.load(comp_p, typ=vty))
                tot = b.load(tot_p, typ=vty)
                t = b.fadd(tot, y)
                c = b.fsub(b.fsub(t, tot), y)
                # an infinite total (an inf element, or an overflow) has no rounding error to carry: inf - inf
                # would make the compensation, and then the sum, NaN where numpy's is inf
                finite = b.fcmp_ordered("<", fe.sc.call_intrinsic("llvm.fabs", c), vmath.const(vty, float("inf")))
                b.store(b.select(finite, c, identity(vty)), comp_p)
                b.store(t, tot_p)
                b.store(identity(vty), accv_p)

            def body(point: Point) -> None:
                b.store(identity(vty), accv_p)
                if compensated:
                    b.store(identity(vty), tot_p)
                    b.store(identity(vty), comp_p)
                n = sizes[last]
                vec_stop = b.mul(b.sdiv(n, c64(lanes)), c64(lanes))

                def vectors(p: Point, start, stop):
                    with Loop(b, start, stop, lanes, "rv") as i:
                        q = Point({**p.index, last: i}, last, lanes)
                        memo: dict = {}
                        v = fe.value(k.body, q, memo)
                        if not isinstance(v.type, ir.VectorType):
                            v = fe.splat(v, lanes)
                        b.store(combine(b.load(accv_p, typ=vty), v), accv_p)

                def inner(p: Point):
                    if compensated:
                        chunk = SUM_BLOCK * lanes
                        with Loop(b, c64(0), vec_stop, chunk, "rc") as j0:
                            j1 = b.add(j0, c64(chunk))
                            vectors(p, j0, b.select(b.icmp_signed("<", j1, vec_stop), j1, vec_stop))
                            fold()
                    else:
                        vectors(p, c64(0), vec_stop)
                    rem = b.sub(n, vec_stop)
                    tail = fn.append_basic_block("rt")
                    after = fn.append_basic_block("rt.done")
                    b.cbranch(b.icmp_signed(">", rem, c64(0)), tail, after)
                    b.position_at_end(tail)
                    mask = self._lane_mask(fe, rem, lanes)
                    q = Point({**p.index, last: vec_stop}, last, lanes, mask)
                    v = fe.value(k.body, q, {})
                    if not isinstance(v.type, ir.VectorType):
                        v = fe.splat(v, lanes)
                    v = b.select(mask, v, identity(vty))
                    b.store(combine(b.load(accv_p, typ=vty), v), accv_p)
                    if compensated:
                        fold()
                    b.branch(after)
                    b.position_at_end(after)

                def rec(idx: int, p: Point):
                    if idx == len(red):
                        inner(p)
                        return
                    a = red[idx]
                    with Loop(b, c64(0), sizes[a], 1, f"r{a}") as i:
                        rec(idx + 1, Point({**p.index, a: i}))

                rec(0, point)
                vec = b.load(tot_p if compensated else accv_p, typ=vty)
                width = lanes  # halve in a fixed tree: log2(lanes) steps, the same order every run
                while width > 1:
                    width //= 2
                    lo = b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, width), list(range(width))))
                    hi = b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, width),
                                                                list(range(width, 2 * width))))
                    vec = combine(lo, hi)
                total = b.extract_element(vec, ir.Constant(I32, 0))
                epilogue(point, total)

            over_kept(0, Point({}), body)
        else:
            # vectorize over the innermost kept axis: a vector of outputs accumulates over the reduced axes
            last = kept[-1]
            vty = ir.VectorType(ety, lanes)
            with b.goto_entry_block():
                accp = alloca(b, vty, name="accv")

            # blocks of REDUCE_BLOCK vectors of outputs first: each step over the reduced axes reads that many
            # adjacent vectors (a row of a column sum: one pass over the rows per block, not one per vector);
            # every output is still combined in the same order, so the results do not change
            size = sum(1 for _ in walk(k.body))
            nblock = REDUCE_BLOCK if size <= 16 else REDUCE_BLOCK // 2 if size <= 64 else 1
            inner = k.domain[last]
            if isinstance(inner, int) and lanes <= inner < nblock * lanes:
                # a kept axis shorter than a block (a depthwise filter gradient's 64 channels: 4 vectors) in one
                # block of its whole vectors, not a pass over the reduced axes per vector
                nblock = inner // lanes
            with b.goto_entry_block():
                block_accs = [alloca(b, vty, name=f"accb{v}") for v in range(nblock)]

            def block(point: Point, j) -> None:
                for accv in block_accs:
                    b.store(identity(vty), accv)
                pts = [Point({**point.index, last: b.add(j, c64(v * lanes))}, last, lanes)
                       for v in range(nblock)]

                def rec(idx: int, ps: list[Point]):
                    if idx == len(red):
                        for q, accv in zip(ps, block_accs, strict=True):
                            v = fe.value(k.body, q, {})
                            if not isinstance(v.type, ir.VectorType):
                                v = fe.splat(v, lanes)
                            b.store(combine(b.load(accv, typ=vty), v), accv)
                        return
                    a = red[idx]
                    with Loop(b, c64(0), sizes[a], 1, f"rb{a}") as i:
                        rec(idx + 1, [Point({**q.index, a: i}, q.vec_axis, q.lanes) for q in ps])

                rec(0, pts)
                for q, accv in zip(pts, block_accs, strict=True):
                    epilogue(q, b.load(accv, typ=vty))

            def body(point: Point) -> None:
                start, stop = (lo, hi) if not kept_outer else (c64(0), sizes[last])
                if nblock > 1:
                    width = c64(lanes * nblock)
                    blocks_stop = b.add(start, b.mul(b.sdiv(b.sub(stop, start), width), width))
                    with Loop(b, start, blocks_stop, lanes * nblock, "kb") as j:
                        block(point, j)
                    start = blocks_stop
                with Loop(b, start, stop, lanes, "kv") as j:
                    remaining = b.sub(stop, j)
                    full = b.icmp_signed(">=", remaining, c64(lanes))
                    lane_ids = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
                    mask = b.icmp_signed("<", lane_ids, fe.splat(remaining, lanes))
                    mask = b.select(full, vmath.const(mask.type, True), mask)
                    p = Point({**point.index, last: j}, last, lanes, mask)
                    b.store(identity(vty), accp)
                    accumulate(p, last, lanes, mask, accp)
                    epilogue(p, b.load(accp, typ=vty))

            over_kept(0, Point({}), body)
        b.ret_void()
        return fn

    def _emit_scan(self, k: ReduceKernel, fe: FunctionEmitter, identity, combine) -> None:
        """Running values along one axis, stored at every point: vectors along the innermost axis when the scan
        runs over another one, else a scalar walk per row. Threads split the other positions; every running
        value is computed in the same order on any thread count."""
        b = fe.b
        (axis,) = k.axes
        nd = len(k.domain)
        dtype = k.body.dtype
        sizes = {a: fe.dim(d) for a, d in enumerate(k.domain)}
        out_strides = _rowmajor_dims(k.domain)
        vec_axis = nd - 1 if axis != nd - 1 else None
        lanes = self.lanes(dtype) if vec_axis is not None else None
        outer = [a for a in range(nd) if a != axis and a != vec_axis]
        ty = _vec(SCALAR[dtype], lanes)
        with b.goto_entry_block():
            accp = alloca(b, ty, name="scan")
        if outer:
            lo, hi = fe.partition(sizes[outer[0]], 1)
        elif vec_axis is not None:
            lo, hi = fe.partition(sizes[vec_axis], lanes)
        else:
            lo, hi = fe.one_thread()

        def walk_axis(point: Point) -> None:
            b.store(identity(ty), accp)
            n = sizes[axis]
            with Loop(b, c64(0), n, 1, "s") as t:
                i = b.sub(b.sub(n, c64(1)), t) if k.reverse else t
                p = Point({**point.index, axis: i}, point.vec_axis, point.lanes, point.mask)
                v = fe.value(k.body, p, {})
                if lanes is not None and not isinstance(v.type, ir.VectorType):
                    v = fe.splat(v, lanes)
                acc = combine(b.load(accp, typ=ty), v)
                b.store(acc, accp)
                off = fe.offset(out_strides, p)
                memo: dict = {}
                for st in k.stores:
                    val = fe.value(st.value, p, memo, acc)
                    fe.store(st.buf.index, st.buf.dtype, off, val, p.mask)

        def over(idx: int, point: Point) -> None:
            if idx == len(outer):
                if vec_axis is None:
                    if not outer:  # one row: thread 0 alone
                        fe.when(b.icmp_signed("<", lo, hi), lambda: walk_axis(point), "one")
                        return
                    walk_axis(point)
                    return
                start, stop = (lo, hi) if not outer else (c64(0), sizes[vec_axis])
                with Loop(b, start, stop, lanes, "sv") as j:
                    remaining = b.sub(stop, j)
                    ids = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
                    mask = b.icmp_signed("<", ids, fe.splat(remaining, lanes))
                    walk_axis(Point({**point.index, vec_axis: j}, vec_axis, lanes, mask))
                return
            a = outer[idx]
            start, stop = (lo, hi) if idx == 0 else (c64(0), sizes[a])
            with Loop(b, start, stop, 1, f"o{a}") as i:
                over(idx + 1, Point({**point.index, a: i}))

        over(0, Point({}))

    # --------------------------------------------------------------------------------------------- scatter
    def emit_scatter(self, k: ScatterKernel) -> ir.Function:
        """target[lead, index(i), trail] += value(i): threads split the lead positions (or, with none, the trail
        positions); each thread walks the index axes in order, so duplicates add up in one fixed order."""
        fn = ir.Function(self.module, ir.FunctionType(VOID, KERNEL_ARGS), name=k.name)
        fn.linkage = "internal"
        fe = FunctionEmitter(self, fn)
        b = fe.b
        dom = k.domain
        lead = list(range(k.lead))
        idx_axes = list(range(k.lead, k.lead + k.nidx))
        trail = list(range(k.lead + k.nidx, len(dom)))
        sizes = {a: fe.dim(d) for a, d in enumerate(dom)}
        tstrides = _rowmajor_dims(k.shape)
        dtype = k.target.dtype
        mty = MEMORY[dtype]
        bound = fe.dim(k.bound)
        if lead:
            lo, hi = fe.partition(sizes[lead[0]], 1)
        elif trail:
            lo, hi = fe.partition(sizes[trail[0]], 1)
        else:
            lo, hi = fe.one_thread()
        split = lead[0] if lead else (trail[0] if trail else None)
        order = lead + idx_axes + trail

        def body(point: Point) -> None:
            memo: dict = {}
            j = fe.value(k.index, point, memo)
            j = b.sext(j, I64) if vmath.element_type(j.type).width < 64 else j
            bad = b.or_(b.icmp_signed("<", j, c64(0)), b.icmp_signed(">=", j, bound))
            fe.flag_error(bad, k.site)
            j = b.select(bad, c64(0), j)
            v = fe.value(k.value, point, memo)
            off = c64(0)
            for a in lead:
                off = b.add(off, b.mul(point.index[a], fe.dim(tstrides[a])))
            off = b.add(off, b.mul(j, fe.dim(tstrides[k.lead])))
            for t, a in enumerate(trail):
                off = b.add(off, b.mul(point.index[a], fe.dim(tstrides[k.lead + 1 + t])))
            ptr = b.gep(fe.buf_ptr(k.target.index), [off], inbounds=True, source_etype=mty)
            old = b.load(ptr, typ=mty)
            b.store(fe.sc.add(old, v), ptr)

        def loops(pos: int, point: Point) -> None:
            if pos == len(order):
                body(point)
                return
            a = order[pos]
            start, stop = (lo, hi) if a == split else (c64(0), sizes[a])
            with Loop(b, start, stop, 1, f"s{a}") as i:
                loops(pos + 1, Point({**point.index, a: i}))

        if split is None:
            fe.when(b.icmp_signed("<", lo, hi), lambda: loops(0, Point({})), "one")
        else:
            loops(0, Point({}))
        b.ret_void()
        return fn

    def error_word(self) -> ir.GlobalVariable:
        """The module's i32 error code (0: none): a run-time check that fails stores its code here; the caller
        reads and clears it after the call (`graphc_error`)."""
        g = self.module.globals.get("graphc_error")
        if g is None:
            g = ir.GlobalVariable(self.module, I32, name="graphc_error")
            if self.module is self.main:
                g.initializer = ir.Constant(I32, 0)
            else:  # a kernel's own module (`split`): the program's module defines it
                g.linkage = "external"
                self.main.globals.get("graphc_error") or self._main_error_word()
            g.type = PTR  # an opaque ptr: llvmlite would print a typed one, which LLVM 22 rejects
        return g

    def _main_error_word(self) -> None:
        kernel, self.module = self.module, self.main
        try:
            self.error_word()
        finally:
            self.module = kernel

    # --------------------------------------------------------------------------------------------- gemm
    def emit_gemm(self, k: GemmKernel) -> ir.Function:
        dtype = k.a.dtype
        static = lambda d: d if isinstance(d, int) else None  # noqa: E731
        c_store = k.stores[-1]
        owner = self

        def epilogue(ctx: gemm_mod.EpilogueContext) -> ir.Value:
            fe = owner._current_fe
            saved = fe.b
            fe.b = ctx.builder
            fe.sc.b = ctx.builder
            try:
                return owner._gemm_epilogue(fe, k, ctx.row, ctx.col, ctx.mask, ctx.acc, ctx.lanes, ctx.whole_ok)
            finally:
                fe.b = saved
                fe.sc.b = saved

        # the kernel wrapper: pointers and dims from the tables, then the gemm function
        fn = ir.Function(self.module, ir.FunctionType(VOID, KERNEL_ARGS), name=k.name)
        fn.linkage = "internal"
        fe = FunctionEmitter(self, fn)
        self._current_fe = fe
        cfg = gemm_mod.config_for(self.target, dtype, static(k.n))
        # epilogue code runs inside the gemm function: it needs the tables; pass them as extra args
        inner = gemm_mod.emit_gemm(
            self.module, f"{k.name}.gemm", target=self.target, M=static(k.m), N=static(k.n), K=static(k.k),
            trans_a=k.ta, trans_b=k.tb, dtype=dtype, epilogue=None if _trivial(k) else self._wrap_epilogue(k, epilogue),
            extra_args=[PTR, PTR], config=cfg, a_view=k.a_view, algorithm=k.algorithm,
            declare_helpers=self.declare_helpers, prepacked_b=k.b_packed is not None,
        )
        b = fe.b
        lda, ldb = fe.dim(k.lda), fe.dim(k.ldb)
        ety = MEMORY[dtype]
        ptrs = [fe.buf_ptr(k.a.index), fe.buf_ptr(k.b.index), fe.buf_ptr(c_store.buf.index)]

        def call(offs, own=None) -> None:
            a, bb, c = (p if off is None else b.gep(p, [off], inbounds=True, source_etype=ety)
                        for p, off in zip(ptrs, offs, strict=True))
            ws, tid, nth = own or (fe.ws, fe.tid32, fe.nth32)
            pre = [fe.buf_ptr(k.b_packed.index)] if k.b_packed is not None else []  # B packed before the loop
            b.call(inner, [a, bb, c, fe.dim(k.m), fe.dim(k.n), fe.dim(k.k), lda, ldb, fe.dim(k.n), ws, tid, nth,
                           *pre, fe.bufs, fe.dims])

        def batch_loop(j: int, offs, own=None) -> None:
            """One product per batch point, each split over the threads as usual (no synchronization needed), or
            with `own` (a thread's workspace slice, thread 0 of 1) whole on this thread."""
            if j == len(k.batch):
                call(offs, own)
                return
            lo, hi = c64(0), fe.dim(k.batch[j])
            if j == 0 and own is not None:
                lo, hi = fe.partition(hi, 1)
            with Loop(b, lo, hi, 1, f"batch{j}") as i:
                new = []
                for off, st in zip(offs, (k.a_batch[j], k.b_batch[j], k.c_batch[j]), strict=True):
                    if isinstance(st, int) and st == 0:
                        new.append(off)
                        continue
                    t = b.mul(i, fe.dim(st))
                    new.append(t if off is None else b.add(off, t))
                batch_loop(j + 1, new, own)

        def products() -> None:
            """Small products, at least as many as threads in the outer batch dim: the threads share out the batch
            points, each product whole on one thread (split over the threads, a product of ~0.1 MFLOP costs more
            in per-call set-up than in arithmetic: LeNet's per-image filter-times-cotangent products, 64 of
            150x64x16, took 0.40 ms on 2 threads against 0.21 on 1). The same sums in the same order either way."""
            dims = [k.m, k.n, k.k]
            if not k.batch or not all(isinstance(d, int) for d in dims) or math.prod(dims) > BATCH_SPLIT_MAX:
                batch_loop(0, [None, None, None])
                return
            tid, nth = fe.threads()
            split = b.icmp_signed(">=", fe.dim(k.batch[0]), nth)
            slice_bytes = gemm_mod.workspace_bytes(*dims, 1, self.target, dtype, cfg, k.a_view, k.algorithm)
            own = (b.gep(fe.ws, [b.mul(tid, c64(slice_bytes))], source_etype=I8), ir.Constant(I32, 0),
                   ir.Constant(I32, 1))
            with b.if_else(split) as (yes, no):
                with yes:
                    batch_loop(0, [None, None, None], own)
                with no:
                    batch_loop(0, [None, None, None])

        thin = self._thin_condition(fe, k, cfg) if self._small_products() else None
        if thin is None:
            products()
        else:  # one row, or a rank-1 update: inline loops, no call into the GEMM driver
            with b.if_else(thin, likely=True) as (yes, no):
                with yes:
                    self._emit_thin_gemm(fe, k, ptrs, cfg)
                with no:
                    products()
        self._current_fe = fe
        b.ret_void()
        return fn

    def emit_pack(self, k: PackKernel) -> ir.Function:
        """A loop product's loop-invariant B packed once before the loop (`GemmKernel.b_packed`), with the
        product's own GEMM config; the threads pack disjoint column panels."""
        g = k.gemm
        dtype = g.a.dtype
        fn = ir.Function(self.module, ir.FunctionType(VOID, KERNEL_ARGS), name=k.name)
        fn.linkage = "internal"
        fe = FunctionEmitter(self, fn)
        self._current_fe = fe
        static = lambda d: d if isinstance(d, int) else None  # noqa: E731
        cfg = gemm_mod.config_for(self.target, dtype, static(g.n))
        pack = gemm_mod.emit_prepack(self.module, f"{k.name}.prepack", target=self.target, N=static(g.n),
                                     K=static(g.k), trans_b=g.tb, dtype=dtype, config=cfg,
                                     declare_helpers=self.declare_helpers)
        b = fe.b
        b.call(pack, [fe.buf_ptr(k.dst.index), fe.buf_ptr(k.src.index), fe.dim(g.n), fe.dim(g.k), fe.dim(g.ldb),
                      fe.tid32, fe.nth32])
        b.ret_void()
        return fn

    def _gemm_epilogue(self, fe: FunctionEmitter, k: GemmKernel, row, col, mask, acc, lanes: int, whole_ok=None):
        """A GEMM's epilogue at (row, col .. col + lanes - 1) of C for the finished sums `acc`: its extra stores
        are made (row-major, C's shape: `whole_ok` as for C, see gemm.EpilogueContext), the value for C (None: C
        is scratch) returned."""
        b = fe.b
        point = Point({0: row, 1: col}, vec_axis=1, lanes=lanes, mask=mask)
        memo: dict = {}
        row_off = b.add(b.mul(row, fe.dim(k.n)), col)
        extra = k.stores[:-1]
        # every value before any store: an in-place update must not see another's new value
        values = [fe.value(s.value, point, memo, acc) for s in extra]
        out = None if k.c_scratch else fe.value(k.stores[-1].value, point, memo, acc)
        for s, v in zip(extra, values, strict=True):
            fe.store(s.buf.index, s.buf.dtype, row_off, v, mask, whole_ok)
        return out

    def _small_products(self) -> bool:
        """Whether every matrix product of the program is small enough for a thin path (`_thin_shapes`): only
        then do thin paths pay for the code they add (a step of a small net at batch 1 lasts ~0.4 us, of which
        the GEMM driver's set-up would be a quarter per product; beside one large product, whose GEMM call runs
        anyway, they save a few percent and cost compile time: the 784-256-128-10 epoch's 0.48 -> 0.52 s)."""
        if self._small is None:
            self._small = all(any(_thin_shapes(k, gemm_mod.config_for(self.target, k.a.dtype,
                                                                         k.n if isinstance(k.n, int) else None)))
                              for k in all_kernels(self.program.kernels) if isinstance(k, GemmKernel))
        return self._small

    @staticmethod
    def _thin_condition(fe: FunctionEmitter, k: GemmKernel, cfg) -> ir.Value | None:
        """When a product runs as inline loops (`_emit_thin_gemm`): an i1, or None where it never does. One row
        of op(A) (a batch of 1 forward, or its input gradient) or K = 1 (the weight gradient of a batch of 1,
        a rank-1 update), with K in one K block."""
        row, rank1 = _thin_shapes(k, cfg)
        if not (row or rank1):
            return None
        b = fe.b
        M, K = fe.dim(k.m), fe.dim(k.k)
        cases = ([b.icmp_signed("==", M, c64(1))] if row else []) + ([b.icmp_signed("==", K, c64(1))] if rank1 else [])
        thin = cases[0] if len(cases) == 1 else b.or_(*cases)
        return b.and_(thin, b.icmp_signed("<=", K, c64(cfg.kc)))

    def _emit_thin_gemm(self, fe: FunctionEmitter, k: GemmKernel, ptrs: list, cfg) -> None:
        """C = op(A) @ op(B) with its epilogue for one row of op(A) or K = 1, as plain vector loops in the
        kernel (a GEMM call costs ~100 ns of set-up: driver, tile buffer, epilogue pass, for as little as 10
        FMAs). Every element is the GEMM's own sum: one fmuladd chain over k in increasing order from zero (K is
        one K block), then the same epilogue, so the results are bitwise the GEMM's. Threads split the columns
        (one row) or the rows (in vectors of the GEMM's NR columns)."""
        b = fe.b
        dtype = k.a.dtype
        L = cfg.lanes or self.lanes(dtype)
        NR = cfg.nr
        NV = NR // L
        T = SCALAR[dtype]
        V = ir.VectorType(T, L)
        MT = ir.VectorType(I1, L)
        esize = ITEMSIZE[dtype]
        fmuladd = self.declare(f"llvm.fmuladd.{vmath._type_suffix(V)}", ir.FunctionType(V, [V, V, V]))
        A, B, C = ptrs
        M, N, K = fe.dim(k.m), fe.dim(k.n), fe.dim(k.k)
        lda, ldb = fe.dim(k.lda), fe.dim(k.ldb)
        a_rs, a_ks = (c64(1), lda) if k.ta else (lda, c64(1))
        one_row = b.icmp_signed("==", M, c64(1))
        clo, chi = fe.partition(N, NR)
        rlo, rhi = fe.partition(M, 1)
        rlo, rhi = b.select(one_row, c64(0), rlo), b.select(one_row, c64(1), rhi)
        clo, chi = b.select(one_row, clo, c64(0)), b.select(one_row, chi, N)
        full = isinstance(k.n, int) and k.n % NR == 0  # every vector whole (a thread's columns: whole NR blocks)
        with b.goto_block(fe.fn.entry_basic_block):
            b.position_at_start(fe.fn.entry_basic_block)
            accs = alloca(b, V, c64(NV), name="thin.acc")
        accp = [b.gep(accs, [c64(v)], source_etype=V) for v in range(NV)]
        lane_ids = ir.Constant(ir.VectorType(I64, L), list(range(L)))
        if k.tb:
            # the lanes' offsets from the first: i32 where they fit (one 16-lane gather, not two of 8)
            if isinstance(k.ldb, int) and k.ldb * L < 2**31:
                lane_step = ir.Constant(ir.VectorType(I32, L), [i * k.ldb for i in range(L)])
            else:
                lane_step = b.mul(lane_ids, fe.splat(ldb, L))
            gather = self.declare(f"llvm.masked.gather.{vmath._type_suffix(V)}.v{L}p0",
                                  ir.FunctionType(V, [ir.VectorType(PTR, L), I32, MT, V]))
        # rows narrower than a vector (N static): visited `hop` rows apart, so that no row's vector loads overlap the
        # masked stores of the row just before (a load cannot take its bytes from a masked store: it waits for the
        # store to reach the cache, a stall on every row)
        hop = 1 if full or not isinstance(k.n, int) else -(-L // k.n)
        with Loop(b, c64(0), c64(hop), 1, "thin.hop") as first, Loop(b, b.add(rlo, first), rhi, hop, "thin.i") as i:
            arow = b.gep(A, [b.mul(i, a_rs)], inbounds=True, source_etype=T)
            with Loop(b, clo, chi, NR, "thin.j") as j:
                cols = [b.add(j, c64(v * L)) for v in range(NV)]
                masks = [None if full else b.icmp_signed("<", b.add(fe.splat(c, L), lane_ids), fe.splat(chi, L))
                         for c in cols]
                for p in accp:
                    b.store(ir.Constant(V, None), p)
                with Loop(b, c64(0), K, 1, "thin.k") as kk:
                    a = fe.splat(b.load(b.gep(arow, [b.mul(kk, a_ks)], inbounds=True, source_etype=T), typ=T,
                                        align=esize), L)
                    for v in range(NV):
                        if k.tb:  # op(B)[k, c] = B[c * ldb + k]: lanes ldb apart
                            base = b.gep(B, [b.add(b.mul(cols[v], ldb), kk)], source_etype=T)
                            ptrv = b.gep(base, [lane_step], source_etype=T)
                            ptrv.type = ir.VectorType(PTR, L)  # llvmlite types a vector-indexed GEP as ptr
                            m = masks[v] if masks[v] is not None else ir.Constant(MT, [1] * L)
                            bv = b.call(gather, [ptrv, ir.Constant(I32, esize), m, ir.Constant(V, None)])
                        else:
                            p = b.gep(B, [b.add(b.mul(kk, ldb), cols[v])], source_etype=T)
                            if masks[v] is None:
                                bv = b.load(p, typ=V, align=esize)
                            else:
                                bv = b.call(self.masked_load(V), [p, ir.Constant(I32, esize), masks[v],
                                                                  ir.Constant(V, None)])
                        b.store(b.call(fmuladd, [a, bv, b.load(accp[v], typ=V)]), accp[v])
                # the epilogue once, in a loop over the block's vectors that hold columns (a vector wholly past
                # the columns touches nothing)
                nv = c64(NV) if full else b.select(b.icmp_signed("<", b.sub(chi, j), c64(NR)),
                                                   b.sdiv(b.add(b.sub(chi, j), c64(L - 1)), c64(L)), c64(NV))
                with Loop(b, c64(0), nv, 1, "thin.v") as v:
                    col = b.add(j, b.mul(v, c64(L)))
                    mask = None if full else b.icmp_signed("<", b.add(fe.splat(col, L), lane_ids), fe.splat(chi, L))
                    acc = b.load(b.gep(accs, [v], source_etype=V), typ=V)
                    out = acc if _trivial(k) else self._gemm_epilogue(fe, k, i, col, mask, acc, L)
                    if out is not None:
                        fe.store(k.stores[-1].buf.index, dtype, b.add(b.mul(i, N), col), out, mask)

    def _wrap_epilogue(self, k: GemmKernel, epilogue):
        """Inside the gemm function the tables are its two extra arguments: re-point a FunctionEmitter."""
        owner = self

        def wrapped(ctx: gemm_mod.EpilogueContext) -> ir.Value:
            fn = ctx.builder.function
            key = (id(k), fn.name)
            fe = owner._epi_emitters.get(key)
            if fe is None:
                fe = FunctionEmitter.__new__(FunctionEmitter)
                fe.mod = owner
                fe.fn = fn
                fe.bufs, fe.dims = ctx.extra_args
                fe.ws = None
                fe.tid32 = fe.nth32 = None
                fe.b = ctx.builder
                fe.sc = ScalarEmitter(ctx.builder, owner.module, owner.target)
                fe._dim_cache = {}
                fe._ptr_cache = {}
                owner._epi_emitters[key] = fe
            owner._current_fe = fe
            return epilogue(ctx)

        return wrapped

    # --------------------------------------------------------------------------------------------- program
    def emit(self, barriers: list[bool], extras: tuple = ()) -> str:
        """The module's IR text: kernels, `graphc_program`, `graphc_run`, and what each of `extras` (functions
        taking this emitter, e.g. the training-epoch driver) adds."""
        self._epi_emitters: dict = {}
        if self.program.checks:  # the caller reads the error word whenever the program has checks
            self._main_error_word()
        fns = [self.emit_kernel(k) for k in self.program.kernels]
        minor = {id(k) for k in _minor_kernels(self.program.kernels)}
        for k, f in zip(self.program.kernels, fns, strict=True):
            if id(k) in minor:
                static_unroll_only(f)
        self._emit_program(fns, barriers)
        self.emit_launcher("graphc_run", "graphc_program")
        for extra in extras:
            extra(self)
        if self.teams:
            from graphc.codegen.team import emit_shutdown

            emit_shutdown(self)
        return str(self.module)

    def emit_kernel(self, k):
        """A kernel's function; for a loop (ScanKernel), (the kernel, its body's entries, their barriers): a loop
        is emitted inline where the program runs it (see _emit_loop_inline)."""
        lower = next((fn for cls, fn in ((LoopKernel, self.emit_loop), (ReduceKernel, self.emit_reduce),
                                         (GemmKernel, self.emit_gemm), (ScatterKernel, self.emit_scatter),
                                         (PackKernel, self.emit_pack))
                      if isinstance(k, cls)), None)
        if lower is not None:
            if not self.split:
                f = lower(k)
            else:  # in a module of its own, external and hidden: linked with its caller's or into another object
                caller = self.module
                self.module = ir.Module(name=k.name)
                self.module.triple = caller.triple
                try:
                    f = lower(k)
                finally:
                    self.parts.append(self.module)
                    self.module = caller
                f.linkage = "hidden"
            # inlined into its one caller (the program or a loop's step) before LLVM simplifies anything, not
            # simplified alone first and again once inlined: the 784-256-128-10 epoch's LLVM optimization
            # 0.23 -> 0.18 s on Zen 4, the same code after it
            f.attributes.add("alwaysinline")
            return f
        if isinstance(k, ScanKernel):
            from graphc.codegen.memory import barriers

            flags = barriers(k.body)
            if flags:
                flags[0] = True  # the step before wrote the carry the first kernel may read
            return (k, [self.emit_kernel(x) for x in k.body.kernels], flags)
        raise CompileError(f"internal: unknown kernel {k}")

    def run_kernel(self, b: ir.IRBuilder, f, args: list) -> None:
        """Call a kernel function with (bufs, dims, ws, tid, nth), or run a loop inline (args + the barrier)."""
        if isinstance(f, tuple):
            self._emit_loop_inline(b, f, args)
        else:
            b.call(self._here(f), args[:5])

    def _here(self, f: ir.Function) -> ir.Function:
        """`f`, or its declaration in the module being emitted where it is defined in another (`split`)."""
        if f.module is self.module:
            return f
        d = self.module.globals.get(f.name)
        if d is None:
            d = ir.Function(self.module, f.ftype, name=f.name)
            d.linkage = "hidden"
        return d

    def _emit_loop_inline(self, b: ir.IRBuilder, entry, args: list) -> None:
        """for j in [0, length): bind the body's buffers for this step (a pointer table on this thread's stack),
        then run the body's kernels, meeting where they need it. No Python and no unrolling per step.

        A loop whose sequences are independent (`split_rows`) runs on disjoint row ranges of its batch instead:
        each thread the whole loop over its rows, as one thread over a smaller batch (its own rows of every
        batch-row buffer, the batch dim set to its row count, its own GEMM workspace slice), with no barrier
        inside the loop. The same sums in the same order per row, so the results do not depend on the split."""
        k, fns, flags = entry
        bufs, dims, ws, tid, nth, bar = args
        fn = b.function
        with b.goto_block(fn.entry_basic_block):
            b.position_at_start(fn.entry_basic_block)
            table = alloca(b, PTR, c64(max(len(k.binds), 1)), name=f"{k.name}_bufs")
        length = self._dim_at(b, dims, k.length)
        split = split_rows(k)
        run_args = None
        if split is not None:
            from graphc.codegen.memory import rows_workspace_bytes

            D, row_elems = split
            # rows per thread: a multiple of 8 (the GEMM's narrow tile), the last thread takes what is left
            r0, r1 = partition(b, self._dim_at(b, dims, D), b.sext(tid, I64), b.sext(nth, I64), 8)
            nsym = max(len(self.program.symbols), 1)
            with b.goto_block(fn.entry_basic_block):
                b.position_at_start(fn.entry_basic_block)
                own_dims = alloca(b, I64, c64(nsym), name=f"{k.name}_dims")
            for q in range(len(self.program.symbols)):
                src = b.gep(dims, [c64(q)], source_etype=I64)
                b.store(b.load(src, typ=I64), b.gep(own_dims, [c64(q)], source_etype=I64))
            b.store(b.sub(r1, r0), b.gep(own_dims, [c64(self.program.symbols.index(D))], source_etype=I64))
            own_ws = b.gep(ws, [b.mul(b.sext(tid, I64), c64(rows_workspace_bytes(k, self.target)))],
                           source_etype=I8)
            run_args = [table, own_dims, own_ws, ir.Constant(I32, 0), ir.Constant(I32, 1), bar]
            length = b.select(b.icmp_signed(">", r1, r0), length, c64(0))
        static_ptrs = {}
        for i, bind in enumerate(k.binds):  # pointers that do not move with the step: set once
            p = b.load(b.gep(bufs, [c64(bind.parent.index)], source_etype=PTR), typ=PTR)
            if split is not None and i in row_elems:  # this thread's first row
                p = b.gep(p, [b.mul(r0, c64(row_elems[i] * ITEMSIZE[bind.parent.dtype]))], source_etype=I8)
            static_ptrs[i] = p
            if bind.by == "none":
                b.store(p, b.gep(table, [c64(i)], source_etype=PTR))
        self.sync(b, bar, nth)
        if split is not None:  # each thread on its own rows: no meeting inside the loop
            flags = [False] * len(fns)
        # never unrolled: a scan of a few (constant) steps, such as a checkpointed segment's, copied per step by
        # LLVM's full unrolling costs compile time (the kernels inlined into every copy) and gains nothing
        with Loop(b, c64(0), length, 1, k.name, md=gemm_mod.NO_UNROLL) as j:
            t = b.sub(b.sub(length, c64(1)), j) if k.reverse else j
            every = None
            for i, bind in enumerate(k.binds):
                if bind.by == "none":
                    continue
                if bind.by == "every":
                    every = every if every is not None else b.sdiv(j, c64(k.every))
                    step = every
                else:
                    step = t
                # the whole batch's strides (`dims`), also in a row-split loop
                off = b.mul(b.mul(step, self._dim_at(b, dims, bind.step)), c64(ITEMSIZE[bind.parent.dtype]))
                b.store(b.gep(static_ptrs[i], [off], source_etype=I8),
                        b.gep(table, [c64(i)], source_etype=PTR))
            inner = [table, dims, ws, tid, nth, bar]
            for idx, (f, need) in enumerate(zip(fns, flags, strict=True)):
                kernel = k.body.kernels[idx]
                if idx < k.every_kernels and k.every > 1:
                    if need:
                        self.sync(b, bar, nth)
                    on = b.icmp_signed("==", b.srem(j, c64(k.every)), c64(0))
                    with b.if_then(on):
                        self._run_counted(b, kernel, f, False, inner, run_args)
                else:
                    self._run_counted(b, kernel, f, need, inner, run_args)
            if split is None:
                self.sync(b, bar, nth)
        if split is not None:
            self.sync(b, bar, nth)

    def _dim_at(self, b: ir.IRBuilder, dims: ir.Value, d) -> ir.Value:
        return int_dim(b, dims, self.program.symbols, d)

    def sync(self, b: ir.IRBuilder, bar: ir.Value, nth: ir.Value) -> None:
        """All threads meet here (nothing to do on one thread)."""
        fn = b.function
        sync = fn.append_basic_block("sync")
        cont = fn.append_basic_block("cont")
        b.cbranch(b.icmp_signed(">", nth, ir.Constant(I32, 1)), sync, cont)
        b.position_at_end(sync)
        b.call(self.barrier_fn(), [bar, nth])
        b.branch(cont)
        b.position_at_end(cont)

    def barrier_fn(self) -> ir.Function:
        f = self.module.globals.get("graphc_barrier")
        return f if f is not None else self._emit_barrier_fn()

    def _emit_barrier_fn(self) -> ir.Function:
        """void barrier(ptr bar, i32 nth): a counter and a generation number; the last arrival bumps the
        generation, the others spin (with pause) until it changes."""
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR, I32]), name="graphc_barrier")
        fn.linkage = "internal"
        bar, nth = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        count = bar
        gen = b.gep(bar, [ir.Constant(I32, 1)], source_etype=I32)
        g0 = b.load_atomic(gen, "acquire", 4, typ=I32)
        old = b.atomic_rmw("add", count, ir.Constant(I32, 1), "acq_rel")
        last = b.icmp_signed("==", old, b.sub(nth, ir.Constant(I32, 1)))
        release = fn.append_basic_block("release")
        wait = fn.append_basic_block("wait")
        done = fn.append_basic_block("done")
        b.cbranch(last, release, wait)
        b.position_at_end(release)
        b.atomic_rmw("xchg", count, ir.Constant(I32, 0), "monotonic")
        b.atomic_rmw("add", gen, ir.Constant(I32, 1), "release")
        b.branch(done)
        b.position_at_end(wait)
        spins = alloca(b, I32, name="spins")
        b.store(ir.Constant(I32, 0), spins)
        check = fn.append_basic_block("check")
        b.branch(check)
        b.position_at_end(check)
        self.relax(b, spins)
        g = b.load_atomic(gen, "acquire", 4, typ=I32)
        b.cbranch(b.icmp_signed("==", g, g0), check, done)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def relax(self, b: ir.IRBuilder, spins: ir.Value) -> None:
        """One step of waiting: a `pause` for the first few thousand tries, then give the core away
        (sched_yield), so a waiting thread never starves the one it waits for on a busy machine."""
        n = b.load(spins, typ=I32)
        b.store(b.add(n, ir.Constant(I32, 1)), spins)
        fn = b.function
        short = fn.append_basic_block("relax.pause")
        long = fn.append_basic_block("relax.yield")
        after = fn.append_basic_block("relax.done")
        b.cbranch(b.icmp_signed("<", n, ir.Constant(I32, 4000)), short, long)
        b.position_at_end(short)
        self.pause(b)
        b.branch(after)
        b.position_at_end(long)
        yf = self.module.globals.get("sched_yield")
        if yf is None:
            yf = ir.Function(self.module, ir.FunctionType(I32, []), name="sched_yield")
        b.call(yf, [])
        b.branch(after)
        b.position_at_end(after)

    def pause(self, b: ir.IRBuilder) -> None:
        if self.target.triple.startswith("x86_64"):
            f = self.module.globals.get("llvm.x86.sse2.pause")
            if f is None:
                f = ir.Function(self.module, ir.FunctionType(VOID, []), name="llvm.x86.sse2.pause")
            b.call(f, [])

    # the program's kernels, without the floating-point environment: what a caller that sets it once for many
    # calls runs (the training epoch: MXCSR loads wait for every floating-point operation in flight, so setting and
    # restoring it around each step kept one step from overlapping the next; ~10% of a per-sample SGD step)
    PROGRAM_BODY = "graphc_program.body"

    def _emit_program(self, fns: list[ir.Function], barriers: list[bool]) -> None:
        fnty = ir.FunctionType(VOID, [PTR, PTR, PTR, I32, I32, PTR])
        fn = ir.Function(self.module, fnty, name=self.PROGRAM_BODY)
        fn.linkage = "internal"
        # noduplicate: no second copy of the whole program. LLVM's O3 function specialization otherwise clones it
        # for the one-thread call of graphc_run (tid 0, 1 thread): a third of the LSTM step's optimized IR and
        # ~0.13 s of its 0.5 s in LLVM, for no measured speed (the kernels inside are the same loops). noinline:
        # nor inlined into each of its callers (graphc_program, the epoch driver).
        fn.attributes.add("noduplicate")
        fn.attributes.add("noinline")
        outer = ir.Function(self.module, fnty, name="graphc_program")
        ob = ir.IRBuilder(outer.append_basic_block("entry"))
        saved = self.flush_denormals(ob)
        ob.call(fn, list(outer.args))
        self.restore_fp_env(ob, saved)
        ob.ret_void()
        bufs, dims, ws, tid, nth, bar = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        self._prof = None
        if self.profile:  # a slot pair per kernel, loops' body kernels included (all_kernels order)
            slots = {id(k): i for i, k in enumerate(all_kernels(self.program.kernels))}
            aty = ir.ArrayType(I64, 2 * max(len(slots), 1))
            counts = ir.GlobalVariable(self.module, aty, name="graphc_profile")
            counts.initializer = ir.Constant(aty, None)
            counts.type = PTR  # an opaque ptr: llvmlite would print a typed one, which LLVM 22 rejects
            clock = ir.Function(self.module, ir.FunctionType(I64, []), name="llvm.readcyclecounter")
            self._prof = (slots, counts, clock)
        for k, (f, need) in enumerate(zip(fns, barriers, strict=True)):
            self._run_counted(b, self.program.kernels[k], f, need, [bufs, dims, ws, tid, nth, bar])
        b.ret_void()

    # MXCSR bits: FTZ (results that would be denormal are 0) and DAZ (denormal operands read as 0)
    _FTZ_DAZ = 0x8040

    def flush_denormals(self, b: ir.IRBuilder) -> ir.Value | None:
        """Every thread runs the program with denormal floats flushed to zero (x86: MXCSR FTZ and DAZ), as XLA
        does: an operation on a denormal costs ~100 cycles in microcode, and a gradient that decays through a long
        recurrence or a deep net spends most of its time there (an LSTM at T = 500 trained 7x slower). Returns the
        caller's MXCSR for `restore_fp_env`, so that a caller (Python, an exported library's user) keeps its own
        floating-point environment. None on other targets (they keep IEEE denormals)."""
        if not self.target.triple.startswith("x86_64"):
            return None
        st = self._declare_intrinsic("llvm.x86.sse.stmxcsr")
        ld = self._declare_intrinsic("llvm.x86.sse.ldmxcsr")
        saved = alloca(b, I32, name="mxcsr.saved")
        b.call(st, [saved])
        mine = alloca(b, I32, name="mxcsr.mine")
        b.store(b.or_(b.load(saved, typ=I32), ir.Constant(I32, self._FTZ_DAZ)), mine)
        b.call(ld, [mine])
        return saved

    def restore_fp_env(self, b: ir.IRBuilder, saved: ir.Value | None) -> None:
        if saved is not None:
            b.call(self._declare_intrinsic("llvm.x86.sse.ldmxcsr"), [saved])

    def _declare_intrinsic(self, name: str) -> ir.Function:
        f = self.module.globals.get(name)
        return f if f is not None else ir.Function(self.module, ir.FunctionType(VOID, [PTR]), name=name)

    def _run_counted(self, b: ir.IRBuilder, kernel, f, need: bool, args: list, run_args: list | None = None) -> None:
        """Meet the other threads if `need`, then run the kernel (with `run_args` when given: a row-split loop's
        thread-private view); with profiling, thread 0 adds the cycles of the wait and of the kernel to the
        kernel's slots."""
        run_args = args if run_args is None else run_args
        if self._prof is None:
            if need:
                self.sync(b, args[5], args[4])
            self.run_kernel(b, f, run_args)
            return
        slots, counts, clock = self._prof
        slot = slots[id(kernel)]
        is0 = b.icmp_signed("==", args[3], ir.Constant(I32, 0))

        def tally(s: int, since: ir.Value) -> ir.Value:
            now = b.call(clock, [])
            p = b.gep(counts, [c64(s)], source_etype=I64)
            old = b.load(p, typ=I64)
            b.store(b.select(is0, b.add(old, b.sub(now, since)), old), p)
            return now

        t0 = b.call(clock, [])
        if need:
            self.sync(b, args[5], args[4])
        t0 = tally(2 * slot + 1, t0)
        self.run_kernel(b, f, run_args)
        tally(2 * slot, t0)

    def emit_launcher(self, name: str, callee: str) -> None:
        """i32 name(ptr a, ptr b, ptr c, i32 nthreads) runs `callee(a, b, c, tid, nthreads, barrier)` on a team
        of threads and returns the thread count that ran: a persistent team where futexes exist (Linux,
        graphc.codegen.team), else threads started and joined by each call (below)."""
        from graphc.codegen import team

        if team.supported(self):
            team.emit_team_launcher(self, name, callee)
        else:
            self._emit_spawn_launcher(name, callee)

    def _emit_spawn_launcher(self, name: str, callee: str) -> None:
        """The launcher without a persistent team: each call starts nthreads - 1 threads and joins them.

        Workers wait at a gate until every thread that could be started is; if the system refuses some, the
        others run with the smaller count (nothing waits for a thread that does not exist)."""
        m = self.module
        job_t = ir.LiteralStructType([PTR, PTR, PTR, I32, I32, PTR, PTR])  # a b c tid nth bar gate

        create = self.declare("pthread_create", ir.FunctionType(I32, [PTR, PTR, PTR, PTR]))
        join = self.declare("pthread_join", ir.FunctionType(I32, [I64, PTR]))
        program = m.globals[callee]

        worker = ir.Function(m, ir.FunctionType(PTR, [PTR]), name=f"{name}.worker")
        worker.linkage = "internal"
        (job,) = worker.args
        b = ir.IRBuilder(worker.append_basic_block("entry"))

        def field_ptr(bb, j, k):
            return bb.gep(j, [ir.Constant(I32, 0), ir.Constant(I32, k)], source_etype=job_t)

        gate = b.load(field_ptr(b, job, 6), typ=PTR)
        spins = alloca(b, I32, name="spins")
        b.store(ir.Constant(I32, 0), spins)
        spin = worker.append_basic_block("spin")
        go = worker.append_basic_block("go")
        b.branch(spin)
        b.position_at_end(spin)
        self.relax(b, spins)
        open_ = b.load_atomic(gate, "acquire", 4, typ=I32)
        b.cbranch(b.icmp_signed("!=", open_, ir.Constant(I32, 0)), go, spin)
        b.position_at_end(go)
        vals = [b.load(field_ptr(b, job, k), typ=t) for k, t in enumerate([PTR, PTR, PTR, I32, I32, PTR])]
        run_me = b.icmp_signed(">=", vals[3], ir.Constant(I32, 0))
        call_bb = worker.append_basic_block("call")
        out_bb = worker.append_basic_block("out")
        b.cbranch(run_me, call_bb, out_bb)
        b.position_at_end(call_bb)
        b.call(program, vals)
        b.branch(out_bb)
        b.position_at_end(out_bb)
        b.ret(ir.Constant(PTR, None))

        fn = ir.Function(m, ir.FunctionType(I32, [PTR, PTR, PTR, I32]), name=name)
        bufs, dims, ws, nth = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        bar = alloca(b, ir.ArrayType(I32, 2), name="barrier")
        b.store(ir.Constant(ir.ArrayType(I32, 2), [0, 0]), bar)
        gate = alloca(b, I32, name="gate")
        b.store(ir.Constant(I32, 0), gate)
        jobs = alloca(b, job_t, size=nth, name="jobs")
        tids = alloca(b, I64, size=nth, name="threads")
        ok = alloca(b, I32, size=nth, name="started")
        started = alloca(b, I32, name="nstarted")
        b.store(ir.Constant(I32, 1), started)
        with Loop(b, c64(1), b.sext(nth, I64), 1, "spawn") as t:
            j = b.gep(jobs, [t], source_etype=job_t)
            b.store(ir.Constant(I32, -1), field_ptr(b, j, 3))
            b.store(gate, field_ptr(b, j, 6))
            rc = b.call(create, [b.gep(tids, [t], source_etype=I64), ir.Constant(PTR, None), worker, j])
            good = b.icmp_signed("==", rc, ir.Constant(I32, 0))
            b.store(b.zext(good, I32), b.gep(ok, [t], source_etype=I32))
            cnt = b.load(started, typ=I32)
            b.store(b.add(cnt, b.zext(good, I32)), started)
        n_run = b.load(started, typ=I32)
        # number the started workers 1..n_run-1 and fill their jobs before opening the gate
        nextid = alloca(b, I32, name="nextid")
        b.store(ir.Constant(I32, 1), nextid)
        with Loop(b, c64(1), b.sext(nth, I64), 1, "assign") as t:
            good = b.icmp_signed("!=", b.load(b.gep(ok, [t], source_etype=I32), typ=I32), ir.Constant(I32, 0))
            yes = fn.append_basic_block("assign.yes")
            cont = fn.append_basic_block("assign.cont")
            b.cbranch(good, yes, cont)
            b.position_at_end(yes)
            j = b.gep(jobs, [t], source_etype=job_t)
            b.store(bufs, field_ptr(b, j, 0))
            b.store(dims, field_ptr(b, j, 1))
            b.store(ws, field_ptr(b, j, 2))
            tid = b.load(nextid, typ=I32)
            b.store(tid, field_ptr(b, j, 3))
            b.store(n_run, field_ptr(b, j, 4))
            b.store(bar, field_ptr(b, j, 5))
            b.store(b.add(tid, ir.Constant(I32, 1)), nextid)
            b.branch(cont)
            b.position_at_end(cont)
        b.atomic_rmw("xchg", gate, ir.Constant(I32, 1), "release")
        b.call(program, [bufs, dims, ws, ir.Constant(I32, 0), n_run, bar])
        with Loop(b, c64(1), b.sext(nth, I64), 1, "join") as t:
            good = b.icmp_signed("!=", b.load(b.gep(ok, [t], source_etype=I32), typ=I32), ir.Constant(I32, 0))
            yes = fn.append_basic_block("join.yes")
            cont = fn.append_basic_block("join.cont")
            b.cbranch(good, yes, cont)
            b.position_at_end(yes)
            b.call(join, [b.load(b.gep(tids, [t], source_etype=I64), typ=I64), ir.Constant(PTR, None)])
            b.branch(cont)
            b.position_at_end(cont)
        b.ret(n_run)


# A thin product (one row of op(A), or K = 1) runs as inline loops when its multiply-adds in that shape are at most
# this many: ~16k FMAs take ~0.3 us, where the GEMM driver's ~0.1 us of set-up weighs; beyond, the thin path's code
# (compiled whether or not a batch of 1 comes) is not worth its compile time.
THIN_WORK = 16384


def _thin_shapes(k: GemmKernel, cfg) -> tuple[bool, bool]:
    """(one row of op(A), K = 1): the thin shapes product k may run in (`_emit_thin_gemm`), each only where the
    driver's set-up would weigh: at most THIN_WORK multiply-adds in that shape, K in one K block (each thin path
    is code LLVM compiles whether or not a batch of 1 ever comes)."""
    if k.batch or k.a_view is not None:
        return False, False
    static = lambda d: d if isinstance(d, int) else None  # noqa: E731
    m, n, kk = static(k.m), static(k.n), static(k.k)
    if kk is not None and kk > cfg.kc:
        return False, False
    row = m in (None, 1) and n is not None and kk is not None and n * kk <= THIN_WORK
    rank1 = kk in (None, 1) and m is not None and n is not None and m * n <= THIN_WORK
    return row, rank1


def _trivial(k: GemmKernel) -> bool:
    return len(k.stores) == 1 and isinstance(k.stores[0].value, Acc)


def _rowmajor_dims(shape) -> list:
    out = []
    acc = 1
    for d in reversed(list(shape)):
        out.append(acc)
        acc = acc * d
    out.reverse()
    return [ix.norm(s) for s in out]
