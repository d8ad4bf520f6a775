"""Parameter initialization in native code, so that a training run and a standalone training binary start
from bit-identical values for the same seed.

Element i of parameter p gets u = (top 24 bits of a 64-bit hash of (seed, crc32(name), i) + 1/2) / 2^24, a
uniform number in (0, 1); uniform schemes scale 2u - 1, normal schemes take the inverse normal CDF of u
(Acklam's rational approximation, relative error ~1e-9, in float64 with the C library's log). A ZeroRow's
row (an embedding's padding row) is then set to zero."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from graphc.errors import CompileError
from graphc.ops.init import _fans, distribution, zeroed_rows

A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
     -3.066479806614716e01, 2.506628277459239e00)
B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
     -1.328068155288572e01)
C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
     4.374664141464968e00, 2.938163982698783e00)
D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
P_LOW = 0.02425


@dataclass(frozen=True)
class InitSpec:
    slot: int  # the parameter's buffer index
    size: int
    kind: int  # 0: constant `scale`; 1: uniform in [-scale, scale]; 2: normal with std `scale`
    scale: float
    name_hash: int
    zero_start: int = 0  # elements [zero_start, zero_stop) are set to zero after the draw (a ZeroRow's row)
    zero_stop: int = 0


def spec_for(slot: int, name: str, shape: tuple[int, ...], init) -> InitSpec:
    """The native form of a named initializer (arrays and functions have none)."""
    size = int(np.prod(shape, dtype=np.int64))
    d = distribution(init, *_fans(shape))
    if d is None:
        raise CompileError(f"parameter {name!r}: native initialization supports the named schemes, numbers, "
                           f"Uniform and Normal, not {type(init).__name__}")
    kind = {"const": 0, "uniform": 1, "normal": 2}[d[0]]
    return InitSpec(slot, size, kind, d[1], zlib.crc32(name.encode()), *zeroed_rows(init, shape))


def emit_init(specs: list[InitSpec]):
    """An `extras` hook adding `void graphc_init(ptr table, i64 seed)`."""

    def extra(me) -> None:
        _emit(me, specs)

    return extra


def _emit(me, specs: list[InitSpec]) -> None:
    from graphc.codegen.emit import F32, F64, I64, PTR, VOID, Loop, c64  # the compiler, when one is emitted

    m = me.module
    fn = ir.Function(m, ir.FunctionType(VOID, [PTR, I64]), name="graphc_init")
    table, seed = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    log = m.globals.get("log") or ir.Function(m, ir.FunctionType(F64, [F64]), name="log")
    sqrt = m.globals.get("llvm.sqrt.f64") or ir.Function(m, ir.FunctionType(F64, [F64]), name="llvm.sqrt.f64")

    def f(v: float) -> ir.Constant:
        return ir.Constant(F64, v)

    def poly(x, coeffs):
        acc = f(coeffs[0])
        for c in coeffs[1:]:
            acc = b.fadd(b.fmul(acc, x), f(c))
        return acc

    for sp in specs:
        ptr = b.load(b.gep(table, [c64(sp.slot)], source_etype=PTR), typ=PTR)
        with Loop(b, c64(0), c64(sp.size), 1, f"init{sp.slot}") as i:
            if sp.kind == 0:
                val = f(sp.scale)
            else:
                z = b.add(b.add(b.mul(seed, c64(0x9E3779B97F4A7C15)), c64(sp.name_hash * 0xBF58476D1CE4E5B9
                                                                              & (2**64 - 1))),
                          b.mul(i, c64(0xD1342543DE82EF95)))
                z = b.mul(b.xor(z, b.lshr(z, c64(30))), c64(0xBF58476D1CE4E5B9))
                z = b.mul(b.xor(z, b.lshr(z, c64(27))), c64(0x94D049BB133111EB))
                z = b.xor(z, b.lshr(z, c64(31)))
                u = b.fmul(b.fadd(b.uitofp(b.lshr(z, c64(40)), F64), f(0.5)), f(2.0**-24))
                if sp.kind == 1:
                    val = b.fmul(b.fsub(b.fmul(u, f(2.0)), f(1.0)), f(sp.scale))
                else:
                    val = b.fmul(_inverse_normal(b, u, log, sqrt, f, poly), f(sp.scale))
            b.store(b.fptrunc(val, F32), b.gep(ptr, [i], source_etype=F32))
        if sp.zero_stop > sp.zero_start:
            with Loop(b, c64(sp.zero_start), c64(sp.zero_stop), 1, f"zero{sp.slot}") as i:
                b.store(ir.Constant(F32, 0.0), b.gep(ptr, [i], source_etype=F32))
    b.ret_void()


def _inverse_normal(b, p, log, sqrt, f, poly):
    """Acklam: a rational function in the middle, in sqrt(-2 log p) in the tails."""
    q = b.fsub(p, f(0.5))
    r = b.fmul(q, q)
    mid = b.fdiv(b.fmul(poly(r, A), q), b.fadd(b.fmul(poly(r, B), r), f(1.0)))
    low = b.fcmp_ordered("<", p, f(P_LOW))
    tail_p = b.select(low, p, b.fsub(f(1.0), p))
    t = b.call(sqrt, [b.fmul(f(-2.0), b.call(log, [tail_p]))])
    tail = b.fdiv(poly(t, C), b.fadd(b.fmul(poly(t, D), t), f(1.0)))
    tail = b.select(low, tail, b.fneg(tail))
    in_mid = b.and_(b.fcmp_ordered(">=", p, f(P_LOW)), b.fcmp_ordered("<=", p, f(1.0 - P_LOW)))
    return b.select(in_mid, mid, tail)


def reference(spec: InitSpec, seed: int) -> np.ndarray:
    """The same values in numpy (float64 then rounded to float32), for tests."""
    m = (1 << 64) - 1
    i = np.arange(spec.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (np.uint64((seed * 0x9E3779B97F4A7C15) & m) + np.uint64(spec.name_hash * 0xBF58476D1CE4E5B9 & m)
             + i * np.uint64(0xD1342543DE82EF95))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(40)).astype(np.float64) + 0.5) * 2.0**-24
    if spec.kind == 0:
        out = np.full(spec.size, spec.scale, np.float32)
    elif spec.kind == 1:
        out = ((u * 2.0 - 1.0) * spec.scale).astype(np.float32)
    else:
        out = _normal(u, spec.scale)
    out[spec.zero_start:spec.zero_stop] = 0.0
    return out


def _normal(u: np.ndarray, scale: float) -> np.ndarray:
    q = u - 0.5
    r = q * q
    mid = np.polyval(A, r) * q / (np.polyval(B, r) * r + 1.0)
    tp = np.where(u < P_LOW, u, 1.0 - u)
    t = np.sqrt(-2.0 * np.log(tp))
    tail = np.polyval(C, t) / (np.polyval(D, t) * t + 1.0)
    tail = np.where(u < P_LOW, tail, -tail)
    x = np.where((u >= P_LOW) & (u <= 1 - P_LOW), mid, tail)
    return (x * scale).astype(np.float32)
