"""Elementwise (pointwise) ops, each one sympy scalar expression with numpy-style broadcasting of its inputs.

From the one expression come the numpy reference (lambdify), the partial derivatives (sympy.diff, with the
op's own output substituted back where it appears, so exp' reuses exp's value), and the scalar code the native
backend emits. Derivatives are turned back into graph nodes by `from_sympy`, so the gradient of an elementwise
op is made of ordinary elementwise ops that fuse like any other.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence

import numpy as np
import sympy

from graphc.errors import DTypeError, GraphcError
from graphc.ir.node import Node
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, as_dtype, broadcast_shapes, eval_shape
from graphc.ops.core import OPS, Op, Tensor, apply, as_tensor, constant, describe, int_fits, located, register
from graphc.ops.reduce import sum_to_shape
from graphc.ops.scalar import NUMPY, expm1, floor_divide, log1p, relu, remainder, rint, sigmoid, softplus

X = sympy.symbols("x0:4", real=True)
Y = sympy.Symbol("y", real=True)  # the op's own output, for derivatives that reuse it
G = sympy.Symbol("g", real=True)  # the incoming cotangent

NUMERIC = FLOAT_DTYPES + INT_DTYPES


class ElementwiseOp(Op):
    """out = expr(x0, x1, ...) elementwise, inputs broadcast numpy-style.

    `domain` is the dtypes the inputs may have (all inputs share one dtype, except a bool condition at
    `bool_inputs`); `out_dtype` is "same" or a dtype name. `params` are attribute names whose values are
    substituted into `expr` (e.g. the exponent of `powc`)."""

    kind = "elementwise"

    def __init__(
        self,
        name: str,
        arity: int,
        expr: sympy.Expr,
        *,
        domain: tuple[str, ...] = FLOAT_DTYPES,
        out_dtype: str = "same",
        differentiable: bool = True,
        bool_inputs: tuple[int, ...] = (),
        shape_inputs: tuple[int, ...] = (),
        params: tuple[str, ...] = (),
        partials: dict[int, sympy.Expr] | None = None,
        simplify: bool = False,
        user: bool = False,
        numpy_fn: Callable | None = None,
    ):
        self.name = name
        self.arity = arity
        self.args = X[:arity]
        self.expr = expr
        self.domain = domain
        self.out_dtype = out_dtype
        self.differentiable = differentiable
        self.bool_inputs = bool_inputs
        self.shape_inputs = shape_inputs  # inputs read for their shape only (they broadcast the result)
        self.params = params
        self.partial_overrides = partials or {}
        self.simplify = simplify
        self.user = user
        self.numpy_fn = numpy_fn  # where lambdify's rendering of the formula does not broadcast
        self._lock = threading.Lock()
        self._lambdas: dict = {}
        self._partials: dict = {}

    def fingerprint(self) -> str:
        return f"{self.name}:{sympy.srepr(self.expr)}"

    def expr_for(self, attrs) -> sympy.Expr:
        """The scalar expression with this node's attribute values substituted."""
        if not self.params:
            return self.expr
        return self.expr.subs({sympy.Symbol(p, real=True): sympy.sympify(attrs[p]) for p in self.params})

    # -- shape and dtype rule
    def infer(self, inputs, attrs):
        if len(inputs) != self.arity:
            raise GraphcError(f"takes {self.arity} inputs, got {len(inputs)}")
        shape = broadcast_shapes([i.shape for i in inputs], "broadcasting")
        dtypes = {i.dtype for k, i in enumerate(inputs) if k not in self.bool_inputs + self.shape_inputs}
        for k in self.bool_inputs:
            if inputs[k].dtype != "bool":
                raise DTypeError(f"input {k} must be bool, got {inputs[k].dtype} ({describe(inputs[k])})")
        if len(dtypes) > 1:
            raise DTypeError(
                f"inputs have different dtypes {sorted(dtypes)}; graphc does not mix precisions silently: "
                "use gc.cast(x, dtype) on one of them"
            )
        if self.out_dtype == "param":
            return shape, attrs["dtype"]
        dtype = dtypes.pop() if dtypes else "bool"
        if dtype not in self.domain:
            raise DTypeError(f"is not defined for {dtype} inputs (allowed: {', '.join(self.domain)}); "
                             "use gc.cast(x, 'float32') first")
        return shape, dtype if self.out_dtype == "same" else self.out_dtype

    # -- lowering: the formula, applied to the inputs broadcast to the output's shape
    @property
    def cost(self) -> int:
        """8 for a formula with a transcendental function, a division or a power (worth computing once), else 1."""
        cheap = (sympy.Max, sympy.Min, sympy.Piecewise, sympy.Abs, sympy.sign, sympy.Heaviside, relu)
        e = self.expr
        if any(not isinstance(f, cheap) for f in e.atoms(sympy.Function)) or e.atoms(sympy.Pow):
            return 8
        return 1

    def lower(self, node, lx):
        keep = [k for k in range(len(node.inputs)) if k not in self.shape_inputs]
        shown = "".join(f"[{k}={node.attrs[k]}]" for k in self.params)
        return lx.formula(self.name + shown, self.expr_for(node.attrs), [self.args[k] for k in keep],
                          [lx.input(k) for k in keep], node.dtype)

    # -- reference semantics
    def lambdified(self, attrs) -> Callable:
        key = tuple(sorted((p, attrs[p]) for p in self.params))
        fn = self._lambdas.get(key)
        if fn is None and self.numpy_fn is not None:
            fn = self._lambdas[key] = self.numpy_fn
        if fn is None:
            fn = sympy.lambdify(self.args, self.expr_for(attrs), modules=[NUMPY, "numpy"])
            self._lambdas[key] = fn
        return fn

    def reference(self, node, args, ctx):
        with np.errstate(all="ignore"):  # IEEE inf/nan propagate as in native code; the checked path reports
            out = self.lambdified(node.attrs)(*args)
        out = np.asarray(out, dtype=ctx.dtype(node.dtype))
        shape = eval_shape(node.shape, ctx.dims)
        return out if out.shape == shape else np.broadcast_to(out, shape).copy()

    # -- derivative
    def partial(self, attrs, k: int) -> sympy.Expr:
        """g * d(expr)/d(x_k), with Heaviside/Piecewise folded so `g * [x > 0]` reads `where(x > 0, g, 0)`."""
        key = (tuple(sorted((p, attrs[p]) for p in self.params)), k)
        with self._lock:
            if key in self._partials:
                return self._partials[key]
        expr = self.expr_for(attrs)
        if k in self.partial_overrides:
            d = self.partial_overrides[k]
            if self.params:
                d = d.subs({sympy.Symbol(p, real=True): sympy.sympify(attrs[p]) for p in self.params})
        else:
            d = sympy.diff(expr, self.args[k])
            if self.simplify:
                d = _simplest(d)
            if expr not in self.args:
                d = d.subs(expr, Y)
        d = d.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.Integer(0))
        d = d.rewrite(sympy.Heaviside, sympy.Piecewise) if d.has(sympy.Heaviside) else d
        d = d.replace(lambda e: isinstance(e, sympy.Heaviside), lambda e: e.rewrite(sympy.Piecewise))
        out = sympy.piecewise_fold(G * d)
        with self._lock:
            self._partials[key] = out
        return out

    def vjp(self, node, g):
        out: list[Node | None] = []
        env = {Y: node, G: g}
        env.update({a: i for a, i in zip(self.args, node.inputs, strict=True)})
        for k, x in enumerate(node.inputs):
            if k in self.bool_inputs + self.shape_inputs or x.dtype not in FLOAT_DTYPES:
                out.append(None)
                continue
            e = self.partial(node.attrs, k)
            if e == 0:
                out.append(None)
                continue
            out.append(sum_to_shape(from_sympy(e, env, g.dtype, node.shape), x.shape))
        return out


# ---------------------------------------------------------------------------------------------------------
# sympy expression -> graph nodes


SYMPY_OPS: dict[type, ElementwiseOp] = {}  # sympy function class -> the unary op that computes it


def from_sympy(expr: sympy.Expr, env: dict, dtype: str, shape) -> Tensor:
    """Build graph nodes computing `expr`, with symbols bound to nodes by `env`, numbers in `dtype`."""
    cache: dict = {}

    def num(v) -> Tensor:
        return constant(float(v), dtype)

    def build(e) -> Tensor:
        if e in cache:
            return cache[e]
        r = _build(e)
        cache[e] = r
        return r

    def _build(e) -> Tensor:
        if e in env:
            return env[e]
        if e.is_Number or e in (sympy.pi, sympy.E):
            return num(e)
        if isinstance(e, sympy.Piecewise):
            (val, cond), rest = e.args[0], e.args[1:]
            if cond == sympy.true or not rest:
                return build(val)
            other = build(sympy.Piecewise(*rest))
            return apply(WHERE, (build_cond(cond), build(val), other))
        if e.is_Add:
            pos = [t for t in e.args if not t.could_extract_minus_sign()]
            neg = [-t for t in e.args if t.could_extract_minus_sign()]
            if not pos:
                acc = apply(NEG, (build(neg[0]),))
                neg = neg[1:]
            else:
                acc = build(pos[0])
                for t in pos[1:]:
                    acc = apply(ADD, (acc, build(t)))
            for t in neg:
                acc = apply(SUB, (acc, build(t)))
            return acc
        if e.is_Mul:
            if e.could_extract_minus_sign():
                return apply(NEG, (build(-e),))
            n, d = sympy.fraction(e)
            if d != 1:
                return apply(DIV, (build(n), build(d)))
            factors = sorted(e.args, key=lambda t: (not t.is_Number, sympy.default_sort_key(t)))
            acc = build(factors[0])
            for t in factors[1:]:
                acc = apply(MUL, (acc, build(t)))
            return acc
        if e.is_Pow:
            b, p = e.args
            if p == -1:
                return apply(DIV, (num(1), build(b)))
            if p.is_Number and p < 0:
                return apply(DIV, (num(1), build(b ** (-p))))
            if p == 2:
                bb = build(b)
                return apply(MUL, (bb, bb))
            if p == sympy.Rational(1, 2):
                return apply(SQRT, (build(b),))
            if p.is_Number:
                return apply(POWC, (build(b),), p=float(p) if not p.is_Integer else int(p))
            return apply(POW, (build(b), build(p)))
        if isinstance(e, (sympy.Max, sympy.Min)):
            op = MAXIMUM if isinstance(e, sympy.Max) else MINIMUM
            args = sorted(e.args, key=sympy.default_sort_key)
            acc = build(args[0])
            for t in args[1:]:
                acc = apply(op, (acc, build(t)))
            return acc
        if isinstance(e, sympy.exp) and e.args[0] == 1:
            return num(sympy.E)
        fn = type(e)
        if fn in SYMPY_OPS and len(e.args) == 1:
            return apply(SYMPY_OPS[fn], (build(e.args[0]),))
        return _anonymous(e, build)

    def build_cond(c) -> Tensor:
        c = _simplified_condition(c) if not isinstance(c, sympy.Symbol) else c
        if c in env:
            return env[c]
        if isinstance(c, sympy.And):
            raise GraphcError(f"cannot lower the condition {c} (a conjunction) to graph ops")
        rel = {sympy.StrictLessThan: LT, sympy.LessThan: LE, sympy.StrictGreaterThan: GT,
               sympy.GreaterThan: GE, sympy.Equality: EQ, sympy.Unequality: NE}
        for cls, op in rel.items():
            if isinstance(c, cls):
                return apply(op, (build(c.lhs), build(c.rhs)))
        raise GraphcError(f"cannot lower the condition {c} to graph ops")

    out = build(sympy.sympify(expr))
    if tuple(out.shape) != tuple(shape):
        from graphc.ops.movement import broadcast_to

        out = broadcast_to(out, broadcast_shapes([out.shape, shape], "derivative"))
    return out


_anon_lock = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _simplified_condition(c):
    """sympy.simplify of a derivative's condition (x0 - x1 > 0 -> x0 > x1): ~60 ms each, and the same few
    conditions come back with every gradient through a maximum, a minimum or a where (pure: cached)."""
    return sympy.simplify(c)


_STRUCTURAL = (sympy.Add, sympy.Mul, sympy.Pow, sympy.Piecewise, sympy.Max, sympy.Min, sympy.Heaviside,
               sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)


def _lowerable(e: sympy.Expr) -> bool:
    """Only functions that have graph ops: sympy.simplify likes cosh, which would become an opaque op."""
    for f in e.atoms(sympy.Function):
        if type(f) not in SYMPY_OPS and not isinstance(f, _STRUCTURAL):
            return False
    return True


def _exp_of_one_plus(e: sympy.Expr):
    """a when e is 1 + exp(a), else None."""
    if isinstance(e, sympy.Add) and len(e.args) == 2 and sympy.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sympy.exp):
            return other.args[0]
    return None


def _stable_formula(expr: sympy.Expr) -> sympy.Expr:
    """A user's formula with 1 / (1 + exp(a)) as sigmoid(-a) and log(1 + exp(a)) as softplus(a) (the graph's
    stability rewrites, applied to the formula): swish z / (1 + exp(-z)) then has the derivative
    sigmoid(z) + z sigmoid(z) sigmoid(-z), finite everywhere, where exp(-z) overflowed the formula's own."""
    from graphc.ops.scalar import sigmoid as s_sigmoid
    from graphc.ops.scalar import softplus as s_softplus

    def recip(e):
        return isinstance(e, sympy.Pow) and e.exp == -1 and _exp_of_one_plus(e.base) is not None

    def soft(e):
        return isinstance(e, sympy.log) and _exp_of_one_plus(e.args[0]) is not None

    expr = expr.replace(recip, lambda e: s_sigmoid(-_exp_of_one_plus(e.base)))
    return expr.replace(soft, lambda e: s_softplus(_exp_of_one_plus(e.args[0])))


def _simplest(d: sympy.Expr) -> sympy.Expr:
    """The smallest of a few simplifications of a derivative that stays within functions graphc has as ops."""
    candidates = [d]
    for f in (sympy.simplify, sympy.cancel, sympy.factor, sympy.together):
        try:
            candidates.append(f(d))
        except Exception:  # a simplifier giving up is not an error; keep the others
            continue
    ok = [c for c in candidates if _lowerable(c)] or [d]
    return min(ok, key=lambda c: (sympy.count_ops(c), len(sympy.srepr(c))))


def _anonymous(e: sympy.Expr, build) -> Tensor:
    """An expression with no graph op of its own becomes one elementwise op over its free symbols."""
    free = sorted(e.free_symbols, key=lambda s: s.name)
    sub = {s: X[i] for i, s in enumerate(free)}
    body = e.xreplace(sub)
    name = f"fn<{sympy.sstr(body)}>"
    with _anon_lock:
        op = OPS.get(name)
        if op is None:
            op = register(ElementwiseOp(name, len(free), body, simplify=False))
    return apply(op, tuple(build(s) for s in free))


# ---------------------------------------------------------------------------------------------------------
# the built-in elementwise ops

x0, x1, x2 = X[:3]
_P = sympy.Symbol("p", real=True)


def _ew(name, arity, expr, sympy_fn=None, **kw) -> ElementwiseOp:
    op = register(ElementwiseOp(name, arity, expr, **kw))
    if sympy_fn is not None:
        SYMPY_OPS[sympy_fn] = op
    return op


ADD = _ew("add", 2, x0 + x1, domain=NUMERIC)
SUB = _ew("sub", 2, x0 - x1, domain=NUMERIC)
MUL = _ew("mul", 2, x0 * x1, domain=NUMERIC)
DIV = _ew("div", 2, x0 / x1)
NEG = _ew("neg", 1, -x0, domain=NUMERIC)
# pow's sympy derivatives x1*x0**x1/x0 and y*log(x0) are nan at x0 = 0; these are not (for x1 > 1, x0 >= 0)
POW = _ew("pow", 2, x0 ** x1, partials={
    0: x1 * x0 ** (x1 - 1),
    1: sympy.Piecewise((0, sympy.Eq(x0, 0)), (x0 ** x1 * sympy.log(x0), True)),
})
# ints too, for a non-negative integer p (power() sends only those): exact, by repeated squaring in native code
POWC = _ew("powc", 1, x0 ** _P, params=("p",), partials={0: _P * x0 ** (_P - 1)}, domain=NUMERIC)
EXP = _ew("exp", 1, sympy.exp(x0), sympy.exp)
LOG = _ew("log", 1, sympy.log(x0), sympy.log)
LOG1P = _ew("log1p", 1, log1p(x0), log1p)
EXPM1 = _ew("expm1", 1, expm1(x0), expm1, partials={0: Y + 1})
SQRT = _ew("sqrt", 1, sympy.sqrt(x0))
ABS = _ew("abs", 1, sympy.Abs(x0), sympy.Abs, domain=NUMERIC)
SIGN = _ew("sign", 1, sympy.sign(x0), sympy.sign, domain=NUMERIC, partials={0: sympy.Integer(0)})
TANH = _ew("tanh", 1, sympy.tanh(x0), sympy.tanh)
SIGMOID = _ew("sigmoid", 1, sigmoid(x0), sigmoid)
SOFTPLUS = _ew("softplus", 1, softplus(x0), softplus)
RELU = _ew("relu", 1, relu(x0), relu, domain=NUMERIC)
ERF = _ew("erf", 1, sympy.erf(x0), sympy.erf)
# trigonometric and hyperbolic functions under numpy's names (native code: the C library's, lane by lane)
TRIG = {name: _ew(name, 1, fn(x0), fn) for name, fn in (
    ("sin", sympy.sin), ("cos", sympy.cos), ("tan", sympy.tan), ("arcsin", sympy.asin), ("arccos", sympy.acos),
    ("arctan", sympy.atan), ("sinh", sympy.sinh), ("cosh", sympy.cosh), ("arcsinh", sympy.asinh),
    ("arccosh", sympy.acosh), ("arctanh", sympy.atanh))}
# piecewise constant: their derivatives are 0 (where defined); remainder's are 1 and -floor_divide
FLOOR = _ew("floor", 1, sympy.floor(x0), sympy.floor, partials={0: sympy.Integer(0)})
CEIL = _ew("ceil", 1, sympy.ceiling(x0), sympy.ceiling, partials={0: sympy.Integer(0)})
ROUND = _ew("round", 1, rint(x0), rint, partials={0: sympy.Integer(0)})  # ties to even, as numpy.round
FLOORDIV = _ew("floor_divide", 2, floor_divide(x0, x1), floor_divide, domain=NUMERIC,
               partials={0: sympy.Integer(0), 1: sympy.Integer(0)})
REM = _ew("remainder", 2, remainder(x0, x1), remainder, domain=NUMERIC,
          partials={0: sympy.Integer(1), 1: -floor_divide(x0, x1)})
# ties split the cotangent evenly: d max(a, b)/da = 1/2 at a == b (sympy's Heaviside(0) = 1/2)
MAXIMUM = _ew("maximum", 2, sympy.Max(x0, x1), domain=NUMERIC)
MINIMUM = _ew("minimum", 2, sympy.Min(x0, x1), domain=NUMERIC)
WHERE = _ew("where", 3, sympy.Piecewise((x1, sympy.Symbol("x0")), (x2, True)), domain=NUMERIC + ("bool",),
            bool_inputs=(0,), numpy_fn=np.where)
# Ops that read an input only for its shape. They keep the tensor that binds a symbolic dim (the batch N) in a
# gradient graph, where a free-standing broadcast to (N, k) would leave N unbound (Theano's `second`).
FULL_LIKE = _ew("full_like", 1, _P, params=("p",), shape_inputs=(0,), out_dtype="param")
BROADCAST_LIKE = _ew("broadcast_like", 2, x0, shape_inputs=(1,), domain=NUMERIC + ("bool",))
_cmp = dict(domain=NUMERIC + ("bool",), out_dtype="bool", differentiable=False)
LT = _ew("lt", 2, sympy.StrictLessThan(x0, x1), **_cmp)
LE = _ew("le", 2, sympy.LessThan(x0, x1), **_cmp)
GT = _ew("gt", 2, sympy.StrictGreaterThan(x0, x1), **_cmp)
GE = _ew("ge", 2, sympy.GreaterThan(x0, x1), **_cmp)
EQ = _ew("eq", 2, sympy.Eq(x0, x1, evaluate=False), **_cmp)
NE = _ew("ne", 2, sympy.Ne(x0, x1, evaluate=False), **_cmp)
NOT = _ew("logical_not", 1, sympy.Not(sympy.Symbol("x0")), domain=("bool",), out_dtype="bool",
          differentiable=False, bool_inputs=(0,), numpy_fn=np.logical_not)
AND = _ew("logical_and", 2, sympy.And(sympy.Symbol("x0"), sympy.Symbol("x1")), domain=("bool",),
          out_dtype="bool", differentiable=False, bool_inputs=(0, 1), numpy_fn=np.logical_and)
OR = _ew("logical_or", 2, sympy.Or(sympy.Symbol("x0"), sympy.Symbol("x1")), domain=("bool",),
         out_dtype="bool", differentiable=False, bool_inputs=(0, 1), numpy_fn=np.logical_or)


class Cast(ElementwiseOp):
    """Change dtype. Float-to-float casts pass gradients (cast back); casts from or to ints and bools do not."""

    hidden_attrs = ("dtype",)

    def __init__(self):
        super().__init__("cast", 1, x0, domain=NUMERIC + ("bool",), out_dtype="param", params=())

    def infer(self, inputs, attrs):
        (x,) = inputs
        return x.shape, attrs["dtype"]

    def reference(self, node, args, ctx):
        return np.asarray(args[0]).astype(ctx.dtype(node.dtype))

    def vjp(self, node, g):
        x = node.inputs[0]
        if x.dtype in FLOAT_DTYPES and node.dtype in FLOAT_DTYPES:
            return (cast(g, x.dtype),)
        return (None,)

    cost = 1

    def lower(self, node, lx):
        return lx.convert(lx.input(0), node.dtype)


CAST = register(Cast())

# where's condition is a plain (bool) symbol; give it the name the lambdified function expects
WHERE.args = (sympy.Symbol("x0"), x1, x2)
NOT.args = (sympy.Symbol("x0"),)
AND.args = OR.args = (sympy.Symbol("x0"), sympy.Symbol("x1"))


# ---------------------------------------------------------------------------------------------------------
# the DSL functions


def _promote(args: Sequence, bool_ok: bool = False) -> list[Tensor]:
    """Tensors for the arguments: numbers take the tensors' dtype; ints and bools meeting floats become floats."""
    like = next((a for a in args if isinstance(a, Node) and a.dtype in FLOAT_DTYPES), None)
    if like is None:
        like = next((a for a in args if isinstance(a, Node)), None)
    ts = [as_tensor(a, like) for a in args]
    floats = {t.dtype for t in ts if t.dtype in FLOAT_DTYPES}
    if len(floats) == 1:
        f = floats.pop()
        ts = [cast(t, f) if t.dtype not in FLOAT_DTYPES and not (bool_ok and t.dtype == "bool") else t for t in ts]
    else:
        ints = {t.dtype for t in ts if t.dtype in INT_DTYPES}
        if ints == {"int32", "int64"}:
            ts = [cast(t, "int64") if t.dtype == "int32" else t for t in ts]
    return ts


def _binary(op: ElementwiseOp):
    compares = op in (LT, LE, GT, GE, EQ, NE)

    def fn(a, b) -> Tensor:
        if compares:  # an int32 tensor against a Python int beyond int32 compares as int64 (as numpy 2)
            a, b = (cast(x, "int64") if isinstance(x, Node) and x.dtype == "int32" and _wide_int(y) else x
                    for x, y in ((a, b), (b, a)))
        try:
            ts = _promote([a, b])
        except DTypeError as err:
            raise located(err, [x for x in (a, b) if isinstance(x, Node)], op.name) from None
        return apply(op, ts)

    fn.__name__ = op.name
    fn.__doc__ = f"Elementwise {op.name} with numpy broadcasting."
    return fn


def clip_finite(x: Tensor) -> Tensor:
    """x with +-inf clamped to the largest finite float of its dtype (NaN kept)."""
    top = float(np.finfo(x.dtype).max)
    return minimum(maximum(x, -top), top)


def _wide_int(x) -> bool:
    """A Python int (or list of them) beyond int32."""
    if isinstance(x, Node) or isinstance(x, (np.ndarray, np.generic, bool, float)):
        return False
    try:
        arr = np.asarray(x)
    except Exception:
        return False
    return arr.dtype.kind in "iu" and not int_fits(arr, "int32")


def _unary(op: ElementwiseOp, promote_ints: bool = True):
    def fn(x) -> Tensor:
        x = as_tensor(x)
        if promote_ints and x.dtype not in op.domain and x.dtype != "bool":
            x = cast(x, "float32")
        return apply(op, (x,))

    fn.__name__ = op.name
    fn.__doc__ = f"Elementwise {op.name}."
    return fn


add, subtract, multiply = _binary(ADD), _binary(SUB), _binary(MUL)


def divide(a, b) -> Tensor:
    """True division `a / b` with numpy broadcasting. Integer (and bool) operands divide as floats, as in Python 3
    and JAX: int32 as float32, int64 as float64 (so no integer above 2**24 is rounded first); `//` is floor
    division."""
    ts = _promote([a, b])
    if ts[0].dtype not in FLOAT_DTYPES:
        to = "float64" if ts[0].dtype == "int64" else "float32"
        ts = [cast(t, to) for t in ts]
    return apply(DIV, ts)
floor_divide_, remainder_ = _binary(FLOORDIV), _binary(REM)
floor, ceil = _unary(FLOOR), _unary(CEIL)
maximum, minimum = _binary(MAXIMUM), _binary(MINIMUM)
less, less_equal, greater, greater_equal = _binary(LT), _binary(LE), _binary(GT), _binary(GE)
equal, not_equal = _binary(EQ), _binary(NE)
exp, log, log1p_, expm1_, sqrt = _unary(EXP), _unary(LOG), _unary(LOG1P), _unary(EXPM1), _unary(SQRT)
tanh, sigmoid_, softplus_, erf = _unary(TANH), _unary(SIGMOID), _unary(SOFTPLUS), _unary(ERF)
abs_, sign, relu_ = _unary(ABS), _unary(SIGN), _unary(RELU)
sin, cos, tan, arcsin, arccos, arctan, sinh, cosh, arcsinh, arccosh, arctanh = (_unary(op) for op in TRIG.values())
for _f in (sin, cos, tan, arcsin, arccos, arctan, sinh, cosh, arcsinh, arccosh, arctanh):
    _f.__doc__ = f"numpy's {_f.__name__}, elementwise (ints promoted to float32)."


def round_(x, decimals: int = 0) -> Tensor:
    """numpy.round: to the nearest integer, ties to even (0.5 -> 0, 1.5 -> 2), or to `decimals` places (x * 10**d
    rounded, then divided back, as numpy does); ints are returned as they are. Its gradient is 0."""
    x = as_tensor(x)
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)):
        raise GraphcError(f"round: decimals must be an int, got {decimals!r}")
    if x.dtype in INT_DTYPES or x.dtype == "bool":
        return x
    if decimals == 0:
        return apply(ROUND, (x,))
    scale = 10.0 ** abs(int(decimals))
    return apply(ROUND, (x * scale,)) / scale if decimals > 0 else apply(ROUND, (x / scale,)) * scale
for _f, _n in ((floor_divide_, "floor_divide"), (remainder_, "remainder"), (log1p_, "log1p"), (expm1_, "expm1"),
               (sigmoid_, "sigmoid"), (softplus_, "softplus"), (abs_, "abs"), (relu_, "relu")):
    _f.__name__ = _n


def negative(x) -> Tensor:
    return apply(NEG, (as_tensor(x),))


def power(a, b) -> Tensor:
    """a ** b. A Python number exponent gives `powc` (x**2 is differentiated as 2x, with no log). An int tensor to
    a non-negative int power stays an int (exact, as numpy: 100003 ** 2 in int64); to a float power it becomes a
    float (int32 as float32, int64 as float64)."""
    if isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool):
        a = as_tensor(a)
        integral = float(b).is_integer()
        if a.dtype in INT_DTYPES and integral:
            if b < 0:
                raise located(DTypeError(f"an integer to the negative power {b} is not an integer (numpy refuses "
                                         f"it too); cast first: gc.cast(x, 'float32') ** {b}"), (a,), "pow")
            return apply(POWC, (a,), p=int(b)) if int(b) != 1 else a
        if a.dtype not in FLOAT_DTYPES:
            a = cast(a, "float64" if a.dtype == "int64" else "float32")
        p = int(b) if integral else float(b)
        if p == 1:
            return a
        return apply(POWC, (a,), p=p)
    return apply(POW, _promote([a, b]))


def where(cond, a, b) -> Tensor:
    """a where cond is true, else b (cond is a bool tensor, e.g. from a comparison)."""
    cond = as_tensor(cond)
    if cond.dtype != "bool":
        raise DTypeError(f"where: the condition must be a bool tensor, got {describe(cond)}; compare it first")
    a, b = _promote([a, b])
    return apply(WHERE, (cond, a, b))


def full_like(x, value: float) -> Tensor:
    """A tensor of x's shape and dtype filled with `value` (its gradient is zero)."""
    x = as_tensor(x)
    return apply(FULL_LIKE, (x,), p=float(value) if x.dtype in FLOAT_DTYPES else int(value), dtype=x.dtype)


def broadcast_like(value, like) -> Tensor:
    """`value` broadcast to the shape of `like` (whose values are not read)."""
    value, like = as_tensor(value), as_tensor(like)
    if value.shape == like.shape:
        return value
    return apply(BROADCAST_LIKE, (value, like))


def logical_not(x) -> Tensor:
    return apply(NOT, (as_tensor(x),))


def logical_and(a, b) -> Tensor:
    return apply(AND, (as_tensor(a), as_tensor(b)))


def logical_or(a, b) -> Tensor:
    return apply(OR, (as_tensor(a), as_tensor(b)))


def cast(x, dtype: str) -> Tensor:
    x = as_tensor(x)
    dtype = as_dtype(dtype, "cast")
    if x.dtype == dtype:
        return x
    return apply(CAST, (x,), dtype=dtype)


def elementwise(name: str, fn: Callable[..., sympy.Expr] | sympy.Expr, nargs: int | None = None) -> Callable:
    """Declare an elementwise function from a sympy formula, e.g.
    `swish = gc.elementwise("swish", lambda z: z / (1 + sympy.exp(-z)))`.

    Its numpy reference, its derivative (sympy.diff, simplified) and its native code all come from the formula.
    Returns the DSL function; declaring the same name again with the same formula returns an equal function."""
    if not isinstance(name, str) or not name.isidentifier():
        raise GraphcError(f"gc.elementwise: the name must be an identifier, got {name!r}")
    if nargs is not None and (isinstance(nargs, bool) or not isinstance(nargs, int) or nargs < 0):
        raise GraphcError(f"gc.elementwise({name!r}): nargs must be a non-negative int, got {nargs!r}")
    try:
        if callable(fn):
            import inspect

            k = nargs if nargs is not None else len(inspect.signature(fn).parameters)
            expr = sympy.sympify(fn(*X[:k]))
        else:
            expr = sympy.sympify(fn)
    except Exception as e:  # the user's formula, called on sympy symbols
        raise GraphcError(
            f"gc.elementwise({name!r}): the formula failed on sympy symbols ({type(e).__name__}: {e}); write it "
            "with sympy's functions (sympy.exp, sympy.log, gc.sym.sigmoid, ...) and operators, not numpy's or "
            "graphc's tensor functions") from e
    if not callable(fn):
        k = nargs if nargs is not None else len(expr.free_symbols)
        expr = expr.xreplace({s: X[i] for i, s in enumerate(sorted(expr.free_symbols, key=lambda s: s.name))})
    if not isinstance(expr, sympy.Expr):
        raise GraphcError(f"gc.elementwise({name!r}): the formula must be a sympy expression, got {expr!r}")
    extra = expr.free_symbols - set(X[:k])
    if extra:
        raise GraphcError(f"gc.elementwise({name!r}): the formula uses unknown symbols {sorted(map(str, extra))}")
    expr = _stable_formula(expr)
    existing = OPS.get(name)
    if existing is not None:
        if not (isinstance(existing, ElementwiseOp) and existing.user and existing.expr == expr):
            raise GraphcError(f"gc.elementwise: {name!r} is already an op with a different definition")
        op = existing
    else:
        op = register(ElementwiseOp(name, k, expr, simplify=True, user=True))

    def apply_fn(*args) -> Tensor:
        if len(args) != k:
            raise GraphcError(f"{name} takes {k} arguments, got {len(args)}")
        ts = _promote(list(args))
        ts = [cast(t, "float32") if t.dtype not in FLOAT_DTYPES else t for t in ts]
        return apply(op, ts)

    apply_fn.__name__ = name
    apply_fn.op = op  # type: ignore[attr-defined]
    return apply_fn
