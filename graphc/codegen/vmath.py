"""Vectorizable math functions emitted as LLVM IR with llvmlite's IRBuilder.

LLVM does not vectorize libm calls (nor the `llvm.exp`/`llvm.log` intrinsics, which it splits into scalar
libm calls), and the bundled LLVM has no vector math library. The emitters here write exp, log, log1p,
expm1, tanh, sigmoid, softplus and erf for float32 as straight-line IR: range reduction with integer bit
manipulation, polynomials in Horner form, and `select`/`fcmp` for special cases. No calls (other than
intrinsics that lower to single instructions: sqrt, fabs, copysign) and no branches, so an emitter can be
used in any basic block, inside any loop, on any vector width, and the result stays in SIMD registers.

API: every emitter is `emitter(builder, x, target=None) -> value` with the type of `x`, one of `float`,
`double`, `<L x float>`, `<L x double>` (any L). `EMITTERS` maps names to emitters. `target` (the
`graphc.codegen.target.Target` the code is compiled for; None: any x86-64) lets an emitter use that target's
instructions: on AVX-512, exp of `<16 x float>` is 13 instructions with vscalefps instead of the portable 24
(same accuracy bound; the two forms differ in the last bit for some inputs).

Floating-point flags: only `contract` is used (so LLVM may fuse a*b+c into an FMA where the target has one;
the algorithms are accurate with or without fusion). Never `nnan`/`ninf`/`fast`: infinities and NaNs
propagate with IEEE semantics, and overflow gives inf.

float32 accuracy: max relative error against float64 truth over *all* 2^32 float32 inputs whose true result is
a normal float32 (exhaustive check, AVX-512 with FMA): exp 8.2e-8 (the vscalefps form 7.6e-8), log 7.7e-8,
log1p 1.04e-7, expm1 1.05e-7, tanh 9.8e-8, sigmoid 1.22e-7, softplus 1.19e-7, erf 7.3e-8, sqrt 6.0e-8
(correctly rounded); on SSE2 without FMA the same within 1e-8 (erf 9.0e-8, near FLT_MIN). That is at most
about 1 ulp; the budget is 2e-7. tests/codegen/test_vmath.py checks 2e-7 on several million points on
AVX-512, AVX2+FMA and SSE2 (no FMA) targets and at 1, 4, 8 and 16 lanes.

Special cases and documented deviations (float32):
  exp:      exp(-inf)=0, exp(+inf)=inf, exp(x>88.72...)=inf, subnormal results are produced (rounded once),
            results below 2^-150 are 0. NaN in -> NaN out.
  log:      log(+-0)=-inf, log(x<0)=NaN, log(inf)=inf, log(NaN)=NaN; subnormal inputs are handled exactly
            (pre-scaled by 2^23).
  log1p:    log1p(-1)=-inf, log1p(x<-1)=NaN, log1p(inf)=inf, log1p(+-0)=+-0.
  expm1:    expm1(-inf)=-1, expm1(inf)=inf, overflow to inf above ~88.72, expm1(+-0)=+-0.
  tanh:     tanh(+-inf)=+-1, tanh(+-0)=+-0, tanh(x) = x + x^3*P(x^2) for |x| < 0.75 (relative accuracy down
            to subnormal x), 1 - 2/(1 + exp(2|x|)) with the sign copied beyond; exactly +-1 for |x| > 9.01.
  sigmoid:  1/(1 + exp(-x)); exactly 1 for x > 17.33 (where it rounds to 1), 0.5 at 0. Results below FLT_MIN
            (x < -87.34) are subnormal approximations, flushed to 0 for x < -87.5.
  softplus: max(x, 0) + log1p(exp(-|x|)); equals x for large x, finite for all finite x, softplus(-inf)=0.
  erf:      odd, erf(+-inf)=+-1, erf(+-0)=+-0, x + x*P(x^2) for |x| < 0.875 (relative accuracy down to
            subnormal x), 1 - exp(Q(|x|)) beyond, exactly +-1 for |x| > 3.92.
  sqrt:     llvm.sqrt (correctly rounded, vectorizes).

float64 (`double` and `<L x double>`): correctness over speed. Each lane calls the C library (exp, log,
log1p, expm1, tanh, erf), i.e. the vector is scalarized; sigmoid and softplus are composed from those with
the same stable formulas as float32. These are real calls (the libm functions resolve in the JIT process;
ahead-of-time objects must link with -lm).

Polynomial coefficients: weighted minimax fits (Lawson's iteratively re-weighted least squares on ~4000
Chebyshev nodes, target values in 40-digit mpmath), weighted so that the error is relative to the final
function value, then rounded to float32 one coefficient at a time (lowest degree first), refitting the
remaining coefficients after each rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from llvmlite import ir

F32 = ir.FloatType()
F64 = ir.DoubleType()
I32 = ir.IntType(32)

# The only fast-math flag used anywhere: allow fusing a*b+c into an FMA.
FLAGS = ("contract",)

# emitter(builder, x, target=None): `target` (a graphc.codegen.target.Target, or None for "any x86-64") lets an
# emitter use instructions of that target where they pay (AVX-512's vscalefps for exp)
Emitter = Callable[..., ir.Value]


def _has_scalef(target, ty: ir.Type) -> bool:
    """AVX-512F (vscalefps) is available and `ty` is a full 512-bit float vector."""
    return (target is not None and target.vector_bits >= 512
            and isinstance(ty, ir.VectorType) and ty.count == 16 and isinstance(ty.element, ir.FloatType))

# ---------------------------------------------------------------------------------------------------------
# Types, constants and intrinsics
# ---------------------------------------------------------------------------------------------------------


def element_type(ty: ir.Type) -> ir.Type:
    """The scalar type of `ty` (itself when scalar)."""
    return ty.element if isinstance(ty, ir.VectorType) else ty


def like(ty: ir.Type, elem: ir.Type) -> ir.Type:
    """`elem`, or a vector of `elem` with as many lanes as `ty` has."""
    return ir.VectorType(elem, ty.count) if isinstance(ty, ir.VectorType) else elem


def const(ty: ir.Type, value) -> ir.Constant:
    """A constant of type `ty`: a scalar, or `value` splatted across every lane of a vector type."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def _type_suffix(ty: ir.Type) -> str:
    """LLVM's overload suffix for a type: f32, f64, v16f32, ..."""
    elem = element_type(ty)
    if isinstance(elem, ir.FloatType):
        s = "f32"
    elif isinstance(elem, ir.DoubleType):
        s = "f64"
    elif isinstance(elem, ir.IntType):
        s = f"i{elem.width}"
    else:
        raise TypeError(f"no intrinsic suffix for type {ty}")
    return f"v{ty.count}{s}" if isinstance(ty, ir.VectorType) else s


# Number of operands of the overloaded intrinsics we may declare (all take and return the same type).
_ARITY = {
    "llvm.fma": 3,
    "llvm.fmuladd": 3,
    "llvm.copysign": 2,
    "llvm.minnum": 2,
    "llvm.maxnum": 2,
    "llvm.minimum": 2,
    "llvm.maximum": 2,
}


def intrinsic(module: ir.Module, base_name: str, ty: ir.Type, nargs: int | None = None) -> ir.Function:
    """Declare (or reuse) the overloaded intrinsic `base_name` for type `ty`, e.g. `llvm.fma.v16f32`.

    `module.declare_intrinsic` does not know vector overloads of many intrinsics; declaring the mangled name
    as a plain function with the right type works for all of them. `nargs` defaults to the intrinsic's
    arity (1 for unary ones such as llvm.sqrt, llvm.fabs).
    """
    name = f"{base_name}.{_type_suffix(ty)}"
    if nargs is None:
        nargs = _ARITY.get(base_name, 1)
    fnty = ir.FunctionType(ty, [ty] * nargs)
    existing = module.globals.get(name)
    if existing is not None:
        if not isinstance(existing, ir.Function) or existing.function_type != fnty:
            raise TypeError(f"{name} already declared in the module with another type")
        return existing
    return ir.Function(module, fnty, name=name)


def _libm(module: ir.Module, name: str, nargs: int = 1) -> ir.Function:
    """Declare (or reuse) `double name(double, ...)` (`nargs` doubles) from the C library."""
    fnty = ir.FunctionType(F64, [F64] * nargs)
    existing = module.globals.get(name)
    if existing is not None:
        if not isinstance(existing, ir.Function) or existing.function_type != fnty:
            raise TypeError(f"{name} already declared in the module with another type")
        return existing
    return ir.Function(module, fnty, name=name)


def _check(x: ir.Value) -> ir.Type:
    elem = element_type(x.type)
    if not isinstance(elem, (ir.FloatType, ir.DoubleType)):
        raise TypeError(f"vmath emitters take float, double or vectors of them, not {x.type}")
    return elem


class _Ops:
    """Builder shorthands for one value type (scalar or vector float), with the `contract` flag."""

    def __init__(self, b: ir.IRBuilder, ty: ir.Type, scalef: bool = False):
        self.b = b
        self.ty = ty
        self.ity = like(ty, I32)
        self.scalef = scalef  # see _has_scalef

    def scale(self, p, nf):
        """p * 2^nf (nf a float holding an integer) with AVX-512's vscalefps: one rounding, subnormal results
        and overflow to inf included. Only when `self.scalef`."""
        name = "llvm.x86.avx512.mask.scalef.ps.512"
        fn = self.b.module.globals.get(name)
        if fn is None:
            i16, i32 = ir.IntType(16), ir.IntType(32)
            fn = ir.Function(self.b.module, ir.FunctionType(self.ty, [self.ty, self.ty, self.ty, i16, i32]), name)
        # all lanes (mask -1), the current rounding mode (4 = _MM_FROUND_CUR_DIRECTION)
        return self.b.call(fn, [p, nf, p, ir.Constant(ir.IntType(16), -1), ir.Constant(ir.IntType(32), 4)])

    # constants
    def c(self, v: float) -> ir.Constant:
        return const(self.ty, v)

    def ci(self, v: int) -> ir.Constant:
        return const(self.ity, v)

    # arithmetic
    def add(self, a, b):
        return self.b.fadd(a, b, flags=FLAGS)

    def sub(self, a, b):
        return self.b.fsub(a, b, flags=FLAGS)

    def mul(self, a, b):
        return self.b.fmul(a, b, flags=FLAGS)

    def div(self, a, b):
        return self.b.fdiv(a, b, flags=FLAGS)

    def fma(self, a, b, c):
        """a*b + c: two instructions marked `contract`, fused where the target has FMA."""
        return self.add(self.mul(a, b), c)

    def horner(self, x, coeffs: Sequence[float]):
        """sum(coeffs[k] * x**k), coefficients from the lowest power up."""
        acc = self.c(coeffs[-1])
        for ck in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(ck))
        return acc

    # comparisons (ordered: false when either side is NaN) and selection
    def cmp(self, op: str, a, b):
        return self.b.fcmp_ordered(op, a, b)

    def ucmp(self, op: str, a, b):
        return self.b.fcmp_unordered(op, a, b)

    def sel(self, cond, a, b):
        return self.b.select(cond, a, b)

    def clamp(self, x, lo: float, hi: float):
        """min(max(x, lo), hi) that keeps NaN."""
        x = self.sel(self.cmp("<", x, self.c(lo)), self.c(lo), x)
        return self.sel(self.cmp(">", x, self.c(hi)), self.c(hi), x)

    # bits
    def bits(self, x):
        return self.b.bitcast(x, self.ity)

    def flt(self, i):
        return self.b.bitcast(i, self.ty)

    def pow2(self, n):
        """2**n as float for an integer vector n in [-126, 127]."""
        return self.flt(self.b.shl(self.b.add(n, self.ci(127)), self.ci(23)))

    def fabs(self, x):
        return self.b.call(intrinsic(self.b.module, "llvm.fabs", self.ty), [x])

    def copysign(self, mag, sign):
        return self.b.call(intrinsic(self.b.module, "llvm.copysign", self.ty), [mag, sign])


# ---------------------------------------------------------------------------------------------------------
# float32 kernels
# ---------------------------------------------------------------------------------------------------------

_LOG2E = 1.4426950216293335  # float32(log2(e))
_MAGIC = 12582912.0  # 1.5 * 2**23: adding it rounds to an integer kept in the low mantissa bits
_MAGIC_BITS = 0x4B400000
_LN2_HI = 0.693145751953125  # 0x3f317200: 15 significant bits, so n*_LN2_HI is exact for |n| < 512
_LN2_LO = 1.428606765330187e-06  # float32(ln2 - _LN2_HI)

# exp(r) = 1 + r * P(r) on |r| <= ln2/2 (the AVX-512 exp); max relative error of the fit 3.1e-9.
_EXP_P = (
    1.0,
    0.4999999403953552,
    0.1666652262210846,
    0.04166829213500023,
    0.008368532173335552,
    0.0013818296138197184,
)

# expm1(r) = r + r^2 * P(r) on |r| <= ln2/2; max relative error of the fit 4.3e-10 (relative to expm1(r)).
_EXPM1_P = (
    0.5,
    0.1666666567325592,
    0.04166649281978607,
    0.008333545178174973,
    0.001393232960253954,
    0.0001976252970052883,
)

# log1p(f) = f - f^2/2 + f^3 * P(f) on f in [sqrt(1/2)-1, sqrt(2)-1]; fit relative error 5.8e-9.
_LOG1P_P = (
    0.3333333134651184,
    -0.2500081956386566,
    0.2000124156475067,
    -0.166234090924263,
    0.14201579988002777,
    -0.13159610331058502,
    0.12762217223644257,
    -0.07636439055204391,
)
_SQRT_HALF_BITS = 0x3F3504F3  # float32(sqrt(1/2)) = 0.70710677

# tanh(x) = x + x^3 * P(x^2) for |x| < 0.75; fit relative error 1.7e-9.
_TANH_T = 0.75
_TANH_P = (
    -0.33333316445350647,
    0.1333272010087967,
    -0.0538945347070694,
    0.021457793191075325,
    -0.007665812503546476,
    0.001741756685078144,
)

# erf(x) = x + x * P(x^2) for |x| < 0.875 (P(0) = 2/sqrt(pi) - 1); fit relative error 9.5e-9.
_ERF_T = 0.875
_ERF_SMALL_P = (
    0.12837916612625122,
    -0.3761257529258728,
    0.11282642185688019,
    -0.026797102764248848,
    0.005039580632001162,
    -0.0006238458445295691,
)
# erfc(a) = exp(Q(a - 0.875)) for 0.875 <= a <= 4; error weighted by erfc/erf (relative to erf): 1.1e-8.
_ERF_BIG_C = 0.875
_ERF_BIG_Q = (
    -1.5328243970870972,
    -2.430222988128662,
    -0.8265029788017273,
    -0.04704516381025314,
    0.011555112898349762,
    -0.002299682004377246,
    0.0002692346170078963,
)


def _exp_reduce(o: _Ops, x):
    """x = n*ln2 + r with n integer, |r| <= ln2/2 (x must satisfy |x| < 2^21). Returns (n as int, r)."""
    t = o.fma(x, o.c(_LOG2E), o.c(_MAGIC))
    nf = o.sub(t, o.c(_MAGIC))
    n = o.b.sub(o.bits(t), o.ci(_MAGIC_BITS))
    r = o.fma(nf, o.c(-_LN2_HI), x)
    r = o.fma(nf, o.c(-_LN2_LO), r)
    return n, r


def _expm1_poly(o: _Ops, r):
    """expm1(r) for |r| <= ln2/2, accurate relative to expm1(r)."""
    r2 = o.mul(r, r)
    return o.fma(r2, o.horner(r, _EXPM1_P), r)


def _exp_parts(o: _Ops, x):
    """exp(x) = 2^n * (1 + q): returns (n, q) for |x| < 2^21."""
    n, r = _exp_reduce(o, x)
    return n, _expm1_poly(o, r)


def _exp_f32_scalef(o: _Ops, x):
    """exp on AVX-512: 13 vector instructions (the portable form below takes 24). x is clamped to [-104, 89]
    (beyond, the result is 0 or inf; NaN is kept), exp(r) is one polynomial and vscalefps applies 2^n with a
    single rounding, subnormal results and overflow included."""
    x = o.clamp(x, -104.0, 89.0)
    t = o.fma(x, o.c(_LOG2E), o.c(_MAGIC))
    nf = o.sub(t, o.c(_MAGIC))
    r = o.fma(nf, o.c(-_LN2_HI), x)
    r = o.fma(nf, o.c(-_LN2_LO), r)
    return o.scale(o.fma(o.horner(r, _EXP_P), r, o.c(1.0)), nf)


def _exp_f32(o: _Ops, x):
    if o.scalef:
        return _exp_f32_scalef(o, x)
    n, q = _exp_parts(o, x)
    # 2^n as 2^n1 * 2^n2 so that n in [-150, 128] needs no out-of-range exponent: the first product is a
    # normal float, the second rounds once into the subnormal range or overflows to inf.
    n1 = o.b.ashr(n, o.ci(1))
    n2 = o.b.sub(n, n1)
    s1 = o.pow2(n1)
    y = o.mul(o.fma(s1, q, s1), o.pow2(n2))
    y = o.sel(o.cmp(">", x, o.c(88.8)), o.c(float("inf")), y)
    return o.sel(o.cmp("<", x, o.c(-104.0)), o.c(0.0), y)


def _log1p_core(o: _Ops, f, e, c=None):
    """e*ln2 + log1p(f + c) for f in [sqrt(1/2)-1, sqrt(2)-1], |c| <= ulp(f), e a float holding an integer."""
    z = o.mul(f, f)
    y = o.mul(o.mul(z, f), o.horner(f, _LOG1P_P))
    y = o.fma(e, o.c(_LN2_LO), y)
    y = o.fma(z, o.c(-0.5), y)
    if c is not None:
        # log1p(f + c) - log1p(f) = c / (1 + f) + O(c^2) = c * (1 - f + f^2) + O(c f^3)
        y = o.fma(c, o.add(o.sub(o.c(1.0), f), z), y)
    # hi + lo = e*ln2_hi + f exactly (Fast2Sum: e*ln2_hi is exact and, unless 0, larger than |f|), so the
    # cancellation between e*ln2 and log(m) costs no extra rounding.
    a = o.mul(e, o.c(_LN2_HI))
    hi = o.add(a, f)
    lo = o.sub(f, o.sub(hi, a))
    return o.add(hi, o.add(lo, y))


def _log1p_parts(o: _Ops, x):
    """1 + x = 2^e * (1 + f + c) with f + c unrounded. Returns (e as float, f, c) for x >= -1 + 2^-24."""
    u = o.add(x, o.c(1.0))
    c = o.sub(x, o.sub(u, o.c(1.0)))  # 1 + x == u + c exactly (c negligible once u >= 2^24)
    e, f = _split_mantissa(o, u)
    # c / 2^e; clamp e so that 2^-e stays a normal float (c is 0 long before that).
    ec = o.b.select(o.b.icmp_signed(">", e, o.ci(100)), o.ci(100), e)
    c = o.mul(c, o.pow2(o.b.sub(o.ci(0), ec)))
    return o.b.sitofp(e, o.ty), f, c


def _split_mantissa(o: _Ops, x):
    """x = 2^e * m, m in [sqrt(1/2), sqrt(2)), for positive normal x. Returns (e as int, m - 1)."""
    ix = o.b.sub(o.bits(x), o.ci(_SQRT_HALF_BITS))
    e = o.b.ashr(ix, o.ci(23))
    m = o.flt(o.b.add(o.b.and_(ix, o.ci(0x7FFFFF)), o.ci(_SQRT_HALF_BITS)))
    return e, o.sub(m, o.c(1.0))


def _log_f32(o: _Ops, x):
    tiny = o.cmp("<", x, o.c(1.1754943508222875e-38))  # subnormal (or <= 0, fixed up below)
    xs = o.sel(tiny, o.mul(x, o.c(8388608.0)), x)
    e, f = _split_mantissa(o, xs)
    e = o.b.add(e, o.sel(tiny, o.ci(-23), o.ci(0)))
    y = _log1p_core(o, f, o.b.sitofp(e, o.ty))
    y = o.sel(o.cmp("==", x, o.c(float("inf"))), x, y)
    y = o.sel(o.cmp("==", x, o.c(0.0)), o.c(float("-inf")), y)
    return o.sel(o.ucmp("<", x, o.c(0.0)), o.c(float("nan")), y)


def _log1p_f32(o: _Ops, x):
    e, f, c = _log1p_parts(o, x)
    y = _log1p_core(o, f, e, c)
    y = o.sel(o.cmp("==", x, o.c(float("inf"))), x, y)
    y = o.sel(o.cmp("==", x, o.c(-1.0)), o.c(float("-inf")), y)
    y = o.sel(o.cmp("==", x, o.c(0.0)), x, y)
    return o.sel(o.ucmp("<", x, o.c(-1.0)), o.c(float("nan")), y)


def _expm1_f32(o: _Ops, x):
    # Below -18 the result rounds to -1; above 88.8 it overflows. Clamping keeps n in [-26, 128].
    xc = o.clamp(x, -18.0, 88.8)
    n, q = _exp_parts(o, xc)
    # expm1(x) = 2^n * q + (2^n - 1) = k * (s*q + (s - 1/k)) with s = 2^n / k, where k = 2 when n = 128
    # (2^128 is not a float) and k = 1 otherwise (halving would lose bits of subnormal-range results).
    # s - 1/k is exact for n <= 24; beyond, the -1 moves into the multiplicand: s * (q - 2^-n) + s.
    top = o.b.icmp_signed(">", n, o.ci(127))
    s = o.pow2(o.b.sub(n, o.b.zext(top, o.ity)))
    k = o.sel(top, o.c(2.0), o.c(1.0))
    h = o.sel(top, o.c(0.5), o.c(1.0))
    far = o.b.icmp_signed(">", n, o.ci(24))
    nc = o.b.select(top, o.ci(126), n)  # 2^-126 for 2^-128: the -1 is far below rounding there
    mult = o.sel(far, o.sub(q, o.pow2(o.b.sub(o.ci(0), nc))), q)
    add = o.sel(far, s, o.sub(s, h))
    y = o.mul(o.fma(s, mult, add), k)
    return o.sel(o.cmp("==", x, o.c(0.0)), x, y)


def _recip_one_plus_exp(o: _Ops, z, relative: bool = True):
    """1 / (1 + exp(z)) for z in [-88, 87.5]: with exp(z) = 2^n (1 + q) and t = 2^-n, this is
    t / (1 + t + q): (1 + t) + q, where 1 + t is exact, for n <= 23 and 1 + (t + q) beyond (where 1 + t
    would round; only needed when the tiny result must be accurate relative to itself)."""
    n, q = _exp_parts(o, z)
    t = o.pow2(o.b.sub(o.ci(0), n))
    one = o.c(1.0)
    d = o.add(o.add(t, one), q)
    if relative:
        d = o.sel(o.b.icmp_signed(">", n, o.ci(23)), o.add(one, o.add(t, q)), d)
    return o.div(t, d)


def _tanh_f32(o: _Ops, x):
    # Both pieces are computed on a = |x| and the sign applied last (keeps tanh(-0) = -0 and exact oddness).
    a = o.fabs(x)
    x2 = o.mul(a, a)
    small = o.fma(o.mul(x2, a), o.horner(x2, _TANH_P), a)
    # tanh(a) = 1 - 2 / (1 + exp(2a)); it rounds to 1 beyond 9.01, so clamp there (NaN is kept).
    ac = o.sel(o.cmp(">", a, o.c(9.1)), o.c(9.1), a)
    r = _recip_one_plus_exp(o, o.add(ac, ac), relative=False)
    big = o.fma(r, o.c(-2.0), o.c(1.0))
    return o.copysign(o.sel(o.cmp("<", a, o.c(_TANH_T)), small, big), x)


def _sigmoid_f32(o: _Ops, x):
    # 1 / (1 + exp(-x)). -x is clamped to [-88, 87.5] to keep 2^-n a normal float; below x = -87.5 the
    # true result (< 9.9e-39) is subnormal and is flushed to 0.
    z = o.clamp(o.b.fneg(x), -88.0, 87.5)
    y = _recip_one_plus_exp(o, z)
    return o.sel(o.cmp("<", x, o.c(-87.5)), o.c(0.0), y)


def _softplus_f32(o: _Ops, x):
    # max(x, 0) + log1p(exp(-|x|)). exp(-|x|) = 2^n (w + w_err) with w = 1 + q rounded and w_err its exact
    # rounding error, so log1p sees exp(-|x|) as an unevaluated sum and its input carries no rounding.
    # |x| is clamped at 104 (exp rounds to 0 there; NaN is kept).
    a = o.fabs(x)
    a = o.sel(o.cmp(">", a, o.c(104.0)), o.c(104.0), a)
    n, q = _exp_parts(o, o.b.fneg(a))
    one = o.c(1.0)
    w = o.add(one, q)
    w_err = o.sub(q, o.sub(w, one))
    n1 = o.b.ashr(n, o.ci(1))
    s1, s2 = o.pow2(n1), o.pow2(o.b.sub(n, n1))
    e = o.mul(o.mul(s1, w), s2)  # in [0, 1]
    e_err = o.mul(o.mul(s1, w_err), s2)
    u = o.add(e, one)  # in [1, 2]: 2^ei * (1 + f) with ei = 0 or 1
    c = o.add(o.sub(e, o.sub(u, one)), e_err)
    ei, f = _split_mantissa(o, u)
    c = o.mul(c, o.pow2(o.b.sub(o.ci(0), ei)))
    lp = _log1p_core(o, f, o.b.sitofp(ei, o.ty), c)
    pos = o.sel(o.cmp(">", x, o.c(0.0)), x, o.c(0.0))
    return o.add(pos, lp)


def _erf_f32(o: _Ops, x):
    a = o.fabs(x)  # both pieces use |x|; the sign is applied last
    x2 = o.mul(a, a)
    small = o.fma(a, o.horner(x2, _ERF_SMALL_P), a)
    # erf(a) = 1 - erfc(a) = 1 - exp(Q(a)); erf rounds to 1 beyond 3.92, clamp at 4 (NaN is kept).
    ac = o.sel(o.cmp(">", a, o.c(4.0)), o.c(4.0), a)
    qv = o.horner(o.sub(ac, o.c(_ERF_BIG_C)), _ERF_BIG_Q)
    n, q = _exp_parts(o, qv)  # n in [-26, -2]
    s = o.pow2(n)
    big = o.fma(o.b.fneg(s), q, o.sub(o.c(1.0), s))  # 1 - s*(1 + q), 1 - s is exact
    return o.copysign(o.sel(o.cmp("<", a, o.c(_ERF_T)), small, big), x)


# ---------------------------------------------------------------------------------------------------------
# float64: per-lane libm calls
# ---------------------------------------------------------------------------------------------------------


def map_libm(b: ir.IRBuilder, x: ir.Value, name: str, *more: ir.Value) -> ir.Value:
    """`double name(double, ...)` of the C library on each lane of x (and of the further arguments `more`)."""
    args = (x, *more)
    fn = _libm(b.module, name, len(args))
    if not isinstance(x.type, ir.VectorType):
        return b.call(fn, list(args))
    out = ir.Constant(x.type, ir.Undefined)
    for i in range(x.type.count):
        lanes = [b.extract_element(v, const(I32, i)) for v in args]
        out = b.insert_element(out, b.call(fn, lanes), const(I32, i))
    return out


def _sigmoid_f64(b: ir.IRBuilder, x):
    o = _Ops(b, x.type)
    e = map_libm(b, b.fneg(o.fabs(x)), "exp")  # exp(-|x|) in [0, 1]
    d = o.add(e, o.c(1.0))
    return o.sel(o.cmp(">=", x, o.c(0.0)), o.div(o.c(1.0), d), o.div(e, d))


def _softplus_f64(b: ir.IRBuilder, x):
    o = _Ops(b, x.type)
    e = map_libm(b, b.fneg(o.fabs(x)), "exp")
    lp = map_libm(b, e, "log1p")
    return o.add(o.sel(o.cmp(">", x, o.c(0.0)), x, o.c(0.0)), lp)


# ---------------------------------------------------------------------------------------------------------
# Public emitters
# ---------------------------------------------------------------------------------------------------------


def _make(name: str, f32_impl, f64_impl) -> Emitter:
    def emit(builder: ir.IRBuilder, x: ir.Value, target=None) -> ir.Value:
        elem = _check(x)
        if isinstance(elem, ir.DoubleType):
            return f64_impl(builder, x)
        return f32_impl(_Ops(builder, x.type, _has_scalef(target, x.type)), x)

    emit.__name__ = name
    emit.__qualname__ = name
    emit.__doc__ = f"Emit {name}(x) for float/double scalars or vectors; returns a value of x's type."
    return emit


def _libm_impl(name: str):
    return lambda b, x: map_libm(b, x, name)


exp = _make("exp", _exp_f32, _libm_impl("exp"))
log = _make("log", _log_f32, _libm_impl("log"))
log1p = _make("log1p", _log1p_f32, _libm_impl("log1p"))
expm1 = _make("expm1", _expm1_f32, _libm_impl("expm1"))
tanh = _make("tanh", _tanh_f32, _libm_impl("tanh"))
sigmoid = _make("sigmoid", _sigmoid_f32, _sigmoid_f64)
softplus = _make("softplus", _softplus_f32, _softplus_f64)
erf = _make("erf", _erf_f32, _libm_impl("erf"))


# |x| ** y for float32 in double: log|x| to ~1e-14 (e·ln2 + 2·atanh(s), s = f / (2 + f), |s| <= 0.1716), the
# product y·log|x| rounded in double (float32 operands: exact to 2^-53 relative), exp of it with a Cody-Waite
# reduction and a degree-11 Taylor polynomial (|r| <= ln2/2), scaled by 2^n in double and rounded once to float32:
# within 0.501 ulp over the float32 range, where exp(y·log|x|) in float32 arithmetic carried log's relative
# error times |y·log|x|| (up to ~100 ulp near overflow).
_ATANH_D = tuple(2.0 / (2 * k + 1) for k in range(1, 10))  # 2/3, 2/5, ..., 2/19: log(1+f) = 2s + s·z·Σ c_k z^k
_EXP_TAYLOR_D = tuple(1.0 / math.factorial(k) for k in range(12))  # exp(r) to degree 11
_SQRT_HALF_BITS64 = 0x3FE6A09E667F3BCD
_LN2_D = 0.6931471805599453
_LN2_HI_D = 0.6931471803691238  # 0x3FE62E42FEE00000: n·_LN2_HI_D exact for |n| < 2^11
_LN2_LO_D = 1.9082149292705877e-10


def powr_f32(b: ir.IRBuilder, ax: ir.Value, y: ir.Value) -> ir.Value:
    """|x| ** y for float32 (scalars or vectors) given ax = |x| (or NaN): inf ** y and 0 ** y as exp(y·(±inf)),
    NaN in, NaN out; the caller handles y == 0, x == 1, the sign of a negative base and NaN for a non-integer
    power of one. Computed in double lanes (see above), branch-free."""
    ty = ax.type
    n_lanes = ty.count if isinstance(ty, ir.VectorType) else None
    o = _Ops(b, ir.VectorType(F64, n_lanes) if n_lanes else F64)  # arithmetic in double lanes
    ity = like(o.ty, ir.IntType(64))

    def ci(v):
        return const(ity, int(v))

    xd, yd = b.fpext(ax, o.ty), b.fpext(y, o.ty)
    ix = b.sub(b.bitcast(xd, ity), ci(_SQRT_HALF_BITS64))
    e = b.sitofp(b.ashr(ix, ci(52)), o.ty)
    f = o.sub(b.bitcast(b.add(b.and_(ix, ci((1 << 52) - 1)), ci(_SQRT_HALF_BITS64)), o.ty), o.c(1.0))
    s = o.div(f, o.add(f, o.c(2.0)))
    z = o.mul(s, s)
    logx = o.add(o.mul(e, o.c(_LN2_D)), o.add(o.add(s, s), o.mul(s, o.mul(z, o.horner(z, _ATANH_D)))))
    logx = o.sel(o.cmp("==", xd, o.c(0.0)), o.c(float("-inf")), logx)
    logx = o.sel(o.cmp("==", xd, o.c(float("inf"))), o.c(float("inf")), logx)
    logx = o.sel(o.ucmp("!=", xd, xd), xd, logx)
    t = o.mul(yd, logx)
    # beyond [-120, 100] the float32 result is 0 or inf; NaN stays NaN (and is kept away from the conversion)
    nan = o.ucmp("!=", t, t)
    tc = o.sel(nan, o.c(0.0), o.clamp(t, -120.0, 100.0))
    nf = b.call(intrinsic(b.module, "llvm.rint", o.ty), [o.mul(tc, o.c(1.4426950408889634))])
    r = b.fsub(b.fsub(tc, o.mul(nf, o.c(_LN2_HI_D))), o.mul(nf, o.c(_LN2_LO_D)))
    p = o.horner(r, _EXP_TAYLOR_D)
    scale = b.bitcast(b.shl(b.add(b.fptosi(nf, ity), ci(1023)), ci(52)), o.ty)
    return o.sel(nan, const(ty, float("nan")), b.fptrunc(o.mul(p, scale), ty))


def pow_f64(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """x ** y for double (scalars or vectors): the C library's pow on each lane (numpy's float64 power is that
    function: the same values, special cases included)."""
    return map_libm(b, x, "pow", y)


def _via_double(name: str, nargs: int = 1) -> Emitter:
    """name(x, ...) from the C library's double function for float32 too (widened, then rounded once: within an
    ulp of the true value, where a float32 polynomial would need its own argument reduction; hypot's squares cannot
    overflow in double); scalar calls per lane, correctness over speed, for the functions networks rarely spend
    their time in (trigonometric, hyperbolic, log2, exp2, atan2, hypot)."""

    def emit(builder: ir.IRBuilder, x: ir.Value, *rest, target=None) -> ir.Value:
        elem = _check(x)
        more = rest[:nargs - 1]  # a unary emitter's third positional argument is the target, unused here
        if len(more) != nargs - 1:
            raise TypeError(f"{name} takes {nargs} arguments, got {1 + len(more)}")
        if isinstance(elem, ir.DoubleType):
            return map_libm(builder, x, name, *more)
        wide = ir.VectorType(F64, x.type.count) if isinstance(x.type, ir.VectorType) else F64
        args = [builder.fpext(v, wide) for v in (x, *more)]
        return builder.fptrunc(map_libm(builder, *args[:1], name, *args[1:]), x.type)

    emit.__name__ = emit.__qualname__ = name
    return emit


LIBM = ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "log2", "log10",
        "exp2")
LIBM_BINARY = ("atan2", "hypot")


def sqrt(builder: ir.IRBuilder, x: ir.Value, target=None) -> ir.Value:
    """Emit sqrt(x) via the llvm.sqrt intrinsic (correctly rounded; vectorizes on every x86 level)."""
    _check(x)
    return builder.call(intrinsic(builder.module, "llvm.sqrt", x.type), [x])


EMITTERS: dict[str, Emitter] = {
    "exp": exp,
    "log": log,
    "log1p": log1p,
    "expm1": expm1,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "erf": erf,
    "sqrt": sqrt,
    **{name: _via_double(name) for name in LIBM},
}
# functions of two arguments: emitter(builder, x, y)
BINARY_EMITTERS: dict[str, Callable] = {name: _via_double(name, 2) for name in LIBM_BINARY}


# ---------------------------------------------------------------------------------------------------------
# A unary map kernel (used by the tests and the benchmark; handy for trying an emitter in isolation)
# ---------------------------------------------------------------------------------------------------------


def emit_unary_kernel(
    module: ir.Module, name: str, emitter: Emitter, elem: ir.Type = F32, lanes: int = 16, target=None
) -> ir.Function:
    """Define `void name(const elem* x, elem* y, i64 n)` computing y[i] = emitter(x[i]).

    The main loop handles `lanes` elements per iteration with unaligned vector loads and stores (lanes=1:
    scalar code only); a scalar loop handles the remainder. `target` is passed to the emitter (the code must be
    compiled for that target: with AVX-512 the 16-lane exp uses vscalefps).
    """
    i64 = ir.IntType(64)
    ptr = ir.PointerType()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, i64]), name=name)
    px, py, n = fn.args
    px.name, py.name, n.name = "x", "y", "n"
    for a in (px, py):
        a.attributes.add("noalias")
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    align = 4 if isinstance(elem, ir.FloatType) else 8

    def loop(start, stop, step, body_ty, tag):
        """for (i = start; i + step <= stop; i += step) y[i..] = emitter(x[i..]); returns the final i."""
        pre = b.block
        head = fn.append_basic_block(f"{tag}.head")
        body = fn.append_basic_block(f"{tag}.body")
        done = fn.append_basic_block(f"{tag}.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(i64, name=f"{tag}.i")
        i.add_incoming(start, pre)
        nxt = b.add(i, ir.Constant(i64, step))
        b.cbranch(b.icmp_signed("<=", nxt, stop), body, done)
        b.position_at_end(body)
        src = b.gep(px, [i], inbounds=True, source_etype=elem)
        dst = b.gep(py, [i], inbounds=True, source_etype=elem)
        v = b.load(src, typ=body_ty)
        v.align = align
        st = b.store(emitter(b, v, target), dst)
        st.align = align
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(done)
        return i

    i = ir.Constant(i64, 0)
    if lanes > 1:
        i = loop(i, n, lanes, ir.VectorType(elem, lanes), "vec")
    loop(i, n, 1, elem, "tail")
    b.ret_void()
    return fn
