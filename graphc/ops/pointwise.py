"""Elementwise (pointwise) ops, each one sympy scalar expression with numpy-style broadcasting of its inputs.

From the one expression come the numpy reference (lambdify), the partial derivatives (sympy.diff, with the
op's own output substituted back where it appears, so exp' reuses exp's value), and the scalar code the native
backend emits. A derivative is kept as a plain tree of names and numbers (`to_tree`) and turned into graph nodes by
`from_tree`, so the gradient of an elementwise op is made of ordinary elementwise ops that fuse like any other.

Building graphs needs no sympy: a built-in op's formula is built on first use of `op.expr` (the reference
evaluator, a derivative), and derivative trees and the formulas as graphc terms (what lowering emits code from,
`term`) are kept per machine beside the compile cache, so a process whose derivatives and formulas were computed
before differentiates nothing and compiles without building a sympy formula.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from graphc import cachedir
from graphc.errors import DTypeError, GraphcError
from graphc.ir.formula import Term, from_plain, to_plain
from graphc.ir.node import Node
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, as_dtype, broadcast_shapes, eval_shape, float_for
from graphc.ops import numeric
from graphc.ops.core import OPS, Op, Tensor, apply, as_tensor, constant, describe, int_fits, located, register
from graphc.ops.reduce import sum_to_shape

if TYPE_CHECKING:
    import sympy

NUMERIC = FLOAT_DTYPES + INT_DTYPES


@functools.cache
def formula_names() -> types.SimpleNamespace:
    """What formulas are written with, imported on first use: sympy's names, graphc's scalar functions
    (graphc.ops.scalar), the input symbols `X` (x0, x1, ...), the op's own output `Y` (for derivatives that reuse
    it), the incoming cotangent `G` and a parameter `P`."""
    import sympy

    from graphc.ops import scalar

    names = {k: v for k, v in vars(sympy).items() if not k.startswith("_")}
    names.update((k, getattr(scalar, k)) for k in scalar.__all__)
    xs = sympy.symbols("x0:4", real=True)
    names.update(sympy=sympy, X=xs, x0=xs[0], x1=xs[1], x2=xs[2], Y=sympy.Symbol("y", real=True),
                 G=sympy.Symbol("g", real=True), P=sympy.Symbol("p", real=True))
    return types.SimpleNamespace(**names)


def _parse_formula(text: str) -> sympy.Expr:
    """The expression whose `sympy.srepr` is `text` (srepr is made to be read back by eval over sympy's names)."""
    return eval(text, dict(vars(formula_names())))  # noqa: S307 - srepr text graphc wrote (see `to_tree`)


def __getattr__(name: str) -> Any:
    """The formula symbols `X`, `Y`, `G` and the table `SYMPY_OPS`, importable as names, made on first use."""
    if name in ("X", "Y", "G"):
        return getattr(formula_names(), name)
    if name == "SYMPY_OPS":
        return sympy_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ElementwiseOp(Op):
    """out = expr(x0, x1, ...) elementwise, inputs broadcast numpy-style.

    `expr` is the formula: a sympy expression (a user's), a function of `formula_names()` that builds it (a
    built-in's: called on first use of `op.expr`, so that building graphs needs no sympy), or its `sympy.srepr`
    text (an op made for a piece of a derivative, see `to_tree`). `domain` is the dtypes the inputs may have (all
    inputs share one dtype, except a bool condition at `bool_inputs`, whose symbol is a plain, not a real, one);
    `out_dtype` is "same" or a dtype name. `params` are attribute names whose values are substituted into `expr`
    (e.g. the exponent of `powc`). `partials` overrides sympy's derivatives ({input: formula}, or a function of
    `formula_names()` giving that); `sympy_fn` names the sympy function a unary op computes (a derivative that
    uses it becomes this op)."""

    kind = "elementwise"

    def __init__(
        self,
        name: str,
        arity: int,
        expr: sympy.Expr | str | Callable[[types.SimpleNamespace], sympy.Expr],
        *,
        domain: tuple[str, ...] = FLOAT_DTYPES,
        out_dtype: str = "same",
        differentiable: bool = True,
        bool_inputs: tuple[int, ...] = (),
        shape_inputs: tuple[int, ...] = (),
        params: tuple[str, ...] = (),
        partials: dict[int, sympy.Expr] | Callable[[types.SimpleNamespace], dict] | None = None,
        sympy_fn: str | None = None,
        simplify: bool = False,
        user: bool = False,
        numpy_fn: Callable | None = None,
    ):
        self.name = name
        self.arity = arity
        self._formula = expr
        self._expr = expr if not isinstance(expr, (str, types.FunctionType)) else None
        self._text = expr if isinstance(expr, str) else None
        self.domain = domain
        self.out_dtype = out_dtype
        self.differentiable = differentiable
        self.bool_inputs = bool_inputs
        self.shape_inputs = shape_inputs  # inputs read for their shape only (they broadcast the result)
        self.params = params
        self._overrides = partials
        self.sympy_fn = sympy_fn
        self.simplify = simplify
        self.user = user
        self.numpy_fn = numpy_fn  # where lambdify's rendering of the formula does not broadcast
        self._lock = threading.Lock()
        self._lambdas: dict = {}
        self._partials: dict = {}  # (params, k) -> derivative tree
        self._partial_exprs: dict = {}  # (params, k) -> sympy derivative
        self._terms: dict = {}  # repr(params) -> the formula as a graphc term

    @property
    def expr(self) -> sympy.Expr:
        """The formula (sympy), built or read back from its text on first use."""
        if self._expr is None:
            f = self._formula
            self._expr = _parse_formula(f) if isinstance(f, str) else f(formula_names())
        return self._expr

    @functools.cached_property
    def args(self) -> tuple:
        """The formula's input symbols: x0, x1, ... (real), a bool input's a plain symbol of its name."""
        from sympy import Symbol

        xs = formula_names().X[:self.arity]
        return tuple(Symbol(x.name) if k in self.bool_inputs else x for k, x in enumerate(xs))

    @functools.cached_property
    def partial_overrides(self) -> dict:
        o = self._overrides
        return o(formula_names()) if isinstance(o, types.FunctionType) else dict(o or {})

    def fingerprint(self) -> str:
        if isinstance(self._formula, types.FunctionType):
            # a built-in's formula is fixed by graphc's source, which the compile cache's key holds already
            return f"{self.name}({','.join(self.params)})"
        if self._text is None:
            from sympy import srepr

            self._text = srepr(self.expr)
        return f"{self.name}:{self._text}"

    def expr_for(self, attrs) -> sympy.Expr:
        """The scalar expression with this node's attribute values substituted."""
        if not self.params:
            return self.expr
        return self.expr.subs(_param_values(self.params, attrs))

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
        """8 for a formula with a transcendental function, a division or a power (worth computing once), else 1.
        Read by the scheduler and by a scan's gradient (store or recompute); from the formula, kept per machine
        beside the derivatives (a process that found them builds no formula)."""
        name = f"cost|{self.fingerprint()}"
        c = _DERIVATIVES.get(name, lambda v: v in (1, 8))
        if c is None:
            s = formula_names()
            cheap = (s.Max, s.Min, s.Piecewise, s.Abs, s.sign, s.Heaviside, s.relu)
            e = self.expr
            c = 8 if any(not isinstance(f, cheap) for f in e.atoms(s.Function)) or e.atoms(s.Pow) else 1
            _DERIVATIVES.put(name, c)
        return c

    def term(self, attrs) -> Term:
        """The formula with this node's attribute values substituted, as a graphc term (graphc.ir.formula: what
        the native code is emitted from): from memory, else from this machine's file (`_DERIVATIVES`), else
        converted from the sympy formula (`graphc.ops.scalar.to_term`) and added to the file."""
        key = repr(tuple(sorted((p, attrs[p]) for p in self.params)))  # by repr: p=2 (powi) is not p=2.0 (pow)
        with self._lock:
            t = self._terms.get(key)
        if t is None:
            name = f"formula|{self.fingerprint()}|{key}"
            t = _term_entry(_DERIVATIVES.get(name, valid=lambda v: True))
            if t is None:
                from graphc.ops.scalar import to_term

                t = to_term(self.expr_for(attrs))
                _DERIVATIVES.put(name, to_plain(t))
            with self._lock:
                self._terms[key] = t
        return t

    def lower(self, node, lx):
        keep = [k for k in range(len(node.inputs)) if k not in self.shape_inputs]
        shown = "".join(f"[{k}={node.attrs[k]}]" for k in self.params)
        return lx.formula(self.name + shown, self.term(node.attrs), [f"x{k}" for k in keep],
                          [lx.input(k) for k in keep], node.dtype)

    # -- reference semantics
    def lambdified(self, attrs) -> Callable:
        key = tuple(sorted((p, attrs[p]) for p in self.params))
        fn = self._lambdas.get(key)
        if fn is None and self.numpy_fn is not None:
            fn = self._lambdas[key] = self.numpy_fn
        if fn is None:
            fn = _lambdify(self.args, self.expr_for(attrs))
            self._lambdas[key] = fn
        return fn

    def reference(self, node, args, ctx):
        with np.errstate(all="ignore"):  # IEEE inf/nan propagate as in native code; the checked path reports
            out = self.lambdified(node.attrs)(*args)
        return _shaped(out, node, ctx)

    def fold(self, node, args, ctx):
        """The formula's term (what the native code computes) evaluated with numpy: constant folding builds no
        sympy formula, as the rest of a compile whose derivatives and terms this machine has computed before."""
        if self.numpy_fn is not None:
            return self.reference(node, args, ctx)
        env = {f"x{k}": a for k, a in enumerate(args) if k not in self.shape_inputs}
        with np.errstate(all="ignore"):
            out = numeric.evaluate(self.term(node.attrs), env)
        return _shaped(out, node, ctx)

    # -- derivative
    def partial(self, attrs, k: int) -> list:
        """g * d(expr)/d(x_k) as a tree (see `to_tree`): from memory, else from this machine's derivative file
        (`_DERIVATIVES`), else computed by `partial_expr` (sympy) and added to the file."""
        key = (tuple(sorted((p, attrs[p]) for p in self.params)), k)
        with self._lock:
            tree = self._partials.get(key)
        if tree is None:
            name = f"{self.fingerprint()}|{key[0]!r}|{k}"
            tree = _DERIVATIVES.get(name)
            if tree is None:
                tree = to_tree(self.partial_expr(attrs, k))
                _DERIVATIVES.put(name, tree)
            with self._lock:
                self._partials[key] = tree
        return tree

    def partial_expr(self, attrs, k: int) -> sympy.Expr:
        """g * d(expr)/d(x_k) (sympy), with Heaviside/Piecewise folded so `g * [x > 0]` reads `where(x > 0, g, 0)`."""
        import sympy

        key = (tuple(sorted((p, attrs[p]) for p in self.params)), k)
        with self._lock:
            if key in self._partial_exprs:
                return self._partial_exprs[key]
        s = formula_names()
        expr = self.expr_for(attrs)
        if k in self.partial_overrides:
            d = self.partial_overrides[k]
            if self.params:
                d = d.subs(_param_values(self.params, attrs))
        else:
            plain = sympy.diff(expr, self.args[k])
            forms = _simplifications(plain) if self.simplify else [plain]
            # each written with the op's own output y where it appears (exp' reads exp's value), and as it is
            candidates = [c.subs(expr, s.Y) for c in forms] + forms if expr not in self.args else forms
            d = candidates[0] if self.bool_inputs else _safest(expr, self.args, plain, candidates)
        d = _without_singular_parts(d)
        d = d.rewrite(sympy.Heaviside, sympy.Piecewise) if d.has(sympy.Heaviside) else d
        d = d.replace(lambda e: isinstance(e, sympy.Heaviside), lambda e: e.rewrite(sympy.Piecewise))
        # an override's Piecewise is placed where it is written (folding pow's safe log(where(x0 = 0, 1, x0))
        # out to where(x0 = 0, 0, log(x0)) would put log(0) back into the branch not taken)
        out = s.G * d if k in self.partial_overrides else sympy.piecewise_fold(s.G * d)
        with self._lock:
            self._partial_exprs[key] = out
        return out

    def vjp(self, node, g):
        out: list[Node | None] = []
        env = {"y": node, "g": g}
        env.update((f"x{k}", i) for k, i in enumerate(node.inputs))
        for k, x in enumerate(node.inputs):
            if k in self.bool_inputs + self.shape_inputs or x.dtype not in FLOAT_DTYPES:
                out.append(None)
                continue
            tree = self.partial(node.attrs, k)
            if tree[0] == "num" and tree[1] == 0:
                out.append(None)
                continue
            out.append(sum_to_shape(from_tree(tree, env, g.dtype, node.shape), x.shape))
        return out


def _lambdify(args: tuple, expr: sympy.Expr) -> Callable:
    """`expr` as a numpy function of `args` (graphc's stable forms of its scalar functions, huge rational
    constants as their doubles: `scalar.double_constants`)."""
    import sympy

    from graphc.ops.scalar import NUMPY, double_constants

    return sympy.lambdify(args, double_constants(expr), modules=[NUMPY, "numpy"])


def _shaped(out, node, ctx) -> np.ndarray:
    """An elementwise op's value `out` in the node's dtype, broadcast to its shape."""
    out = np.asarray(out, dtype=ctx.dtype(node.dtype))
    shape = eval_shape(node.shape, ctx.dims)
    return out if out.shape == shape else np.broadcast_to(out, shape).copy()


def _param_values(params: tuple[str, ...], attrs) -> dict:
    """{parameter symbol: its value} for `expr.subs`."""
    import sympy

    return {sympy.Symbol(p, real=True): sympy.sympify(attrs[p]) for p in params}


# ---------------------------------------------------------------------------------------------------------
# derivatives kept per machine


class _DerivativeFile:
    """The derivative trees (and formula costs and terms) computed on this machine, in one JSON file in the compile
    cache's directory, named by graphc's code version (edited formulas never meet stale derivatives):
    {"code_version": ..., "entries": {op fingerprint|params|input: tree, "cost|" op fingerprint: its cost,
    "formula|" op fingerprint|params: its term (graphc.ir.formula.to_plain)}}. Read once per process;
    each new entry is merged into what the file holds now and written back atomically (last writer wins, a lost
    entry is computed again). A file that cannot be read or parsed counts as empty, a directory that cannot be
    written means no file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict | None = None
        self._version = ""

    def _path(self):
        self._version = cachedir.code_version()
        return cachedir.directory() / f"derivatives-{self._version[:24]}.json"

    def _read(self, path) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than json can read
            return {}
        ok = isinstance(data, dict) and data.get("code_version") == self._version
        entries = data.get("entries") if ok else None
        if not isinstance(entries, dict) or data.get("sha256") != _digest(entries):
            return {}  # damaged (a changed number would be a wrong gradient, not an error): computed again
        cachedir.touch(path)  # used: the cache's bound removes least recently used files first
        return entries

    def get(self, name: str, valid=None):
        """The entry `name` if it passes `valid` (default: is a derivative tree), else None."""
        with self._lock:
            if self._entries is None:
                self._entries = self._read(self._path())
            value = self._entries.get(name)
        return value if value is not None and (valid or _is_tree)(value) else None

    def put(self, name: str, value) -> None:
        with self._lock:
            if self._entries is None:
                self._entries = self._read(self._path())
            self._entries[name] = value
            path = self._path()
            try:
                merged = {**self._read(path), **self._entries}
                path.parent.mkdir(parents=True, exist_ok=True)
                data = json.dumps({"code_version": self._version, "entries": merged, "sha256": _digest(merged)},
                                  separators=(",", ":"))
                cachedir.atomic_write(path, data.encode())
            except OSError:
                return


def _digest(entries: dict) -> str:
    """A checksum of the entries (their canonical JSON): the file is trusted only whole."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_DERIVATIVES = _DerivativeFile()


def _term_entry(plain) -> Term | None:
    """The formula term a file entry holds (see `to_plain`), or None for a missing or damaged one."""
    if plain is None:
        return None
    try:
        return from_plain(plain)
    except (ValueError, TypeError, RecursionError):
        return None


def _is_tree(t) -> bool:
    """Whether `t` (read from the derivative file) is a tree `from_tree` can build."""
    if not isinstance(t, list) or not t:
        return False
    tag, n = t[0], len(t)
    if tag == "num":
        return n == 2 and isinstance(t[1], (int, float)) and not isinstance(t[1], bool)
    if tag == "sym":
        return n == 2 and isinstance(t[1], str)
    if tag == "op":
        return (n == 4 and isinstance(OPS.get(t[1]), ElementwiseOp) and isinstance(t[2], dict)
                and isinstance(t[3], list) and all(_is_tree(c) for c in t[3]))
    if tag == "fn":
        return (n == 4 and isinstance(t[1], str) and isinstance(t[2], str) and isinstance(t[3], list)
                and all(_is_tree(c) for c in t[3]))
    return False


# ---------------------------------------------------------------------------------------------------------
# sympy expression -> tree -> graph nodes


@functools.cache
def sympy_ops() -> dict[type, ElementwiseOp]:
    """sympy function class -> the built-in op that computes it."""
    s = formula_names()
    return {getattr(s, op.sympy_fn): op for op in list(OPS.values())
            if isinstance(op, ElementwiseOp) and op.sympy_fn is not None}


def to_tree(expr: sympy.Expr) -> list:
    """The graph ops computing `expr`, as plain data (nested lists, as JSON reads them back) that `from_tree`
    builds without sympy:
      ["num", value]                   a constant (in the dtype the tree is built in)
      ["sym", name]                    a symbol: x0, x1, ... (the op's inputs), y (its output), g (the cotangent)
      ["op", op name, {attrs}, [args]] a graph op of the built-in op table
      ["fn", op name, srepr, [args]]   a sub-expression with no graph op of its own, as one elementwise op
    Sums become add/sub/neg, products mul/div/neg, powers div/mul/sqrt/powc/pow, Max/Min chains of
    maximum/minimum, Piecewise nested wheres (conditions simplified, then compared)."""
    import sympy

    from graphc.ops.scalar import double_constants, numer_denom

    ops = sympy_ops()
    memo: dict = {}

    def node(op: ElementwiseOp, *args, **attrs) -> list:
        return ["op", op.name, attrs, list(args)]

    def num(v) -> list:
        return ["num", float(v)]

    def build(e) -> list:
        if e not in memo:
            memo[e] = _build(e)
        return memo[e]

    def _build(e) -> list:
        if isinstance(e, sympy.Symbol):
            return ["sym", e.name]
        if e.is_Number or e in (sympy.pi, sympy.E):
            return num(e)
        if isinstance(e, sympy.Piecewise):
            (val, cond), rest = e.args[0], e.args[1:]
            if not isinstance(cond, sympy.Symbol):
                cond = _simplified_condition(cond)
            if cond == sympy.true or not rest:
                return build(val)
            if cond == sympy.false:  # a branch that never holds (sympy leaves some in derivatives of Max/Min)
                return build(sympy.Piecewise(*rest))
            other = build(sympy.Piecewise(*rest))
            return node(WHERE, build_cond(cond), build(val), other)
        if e.is_Add:
            pos = [t for t in e.args if not t.could_extract_minus_sign()]
            neg = [-t for t in e.args if t.could_extract_minus_sign()]
            if not pos:
                acc = node(NEG, build(neg[0]))
                neg = neg[1:]
            else:
                acc = build(pos[0])
                for t in pos[1:]:
                    acc = node(ADD, acc, build(t))
            for t in neg:
                acc = node(SUB, acc, build(t))
            return acc
        if e.is_Mul:
            if e.could_extract_minus_sign():
                return node(NEG, build(-e))
            consts = [t for t in e.args if t.is_number]
            if len(consts) > 1:  # 2/sqrt(pi): one constant, not a multiply and a division in every element's code
                rest = [t for t in e.args if not t.is_number]
                return build(sympy.Mul(sympy.Mul(*consts).evalf(17), *rest, evaluate=False))
            n, d = numer_denom(e)
            if d != 1:
                return node(DIV, build(n), build(d))
            factors = sorted(e.args, key=lambda t: (not t.is_Number, sympy.default_sort_key(t)))
            acc = build(factors[0])
            for t in factors[1:]:
                acc = node(MUL, acc, build(t))
            return acc
        if e.is_Pow:
            b, p = e.args
            if p == -1:
                return node(DIV, num(1), build(b))
            if p.is_Number and p < 0:
                return node(DIV, num(1), build(b ** (-p)))
            if p == 2:
                bb = build(b)
                return node(MUL, bb, bb)
            if p == sympy.Rational(1, 2):
                return node(SQRT, build(b))
            if p.is_Number:
                return node(POWC, build(b), p=float(p) if not p.is_Integer else int(p))
            return node(POW, build(b), build(p))
        if isinstance(e, (sympy.Max, sympy.Min)):
            op = MAXIMUM if isinstance(e, sympy.Max) else MINIMUM
            args = sorted(e.args, key=sympy.default_sort_key)
            acc = build(args[0])
            for t in args[1:]:
                acc = node(op, acc, build(t))
            return acc
        if isinstance(e, sympy.exp) and e.args[0] == 1:
            return num(sympy.E)
        fn = type(e)
        if fn in ops and len(e.args) == 1:
            return node(ops[fn], build(e.args[0]))
        # a sub-expression with no graph op of its own: one elementwise op over its free symbols
        free = sorted(e.free_symbols, key=lambda s: s.name)
        body = e.xreplace({s: formula_names().X[i] for i, s in enumerate(free)})
        return ["fn", f"fn<{sympy.sstr(body)}>", sympy.srepr(body), [build(s) for s in free]]

    def build_cond(c) -> list:
        c = _simplified_condition(c) if not isinstance(c, sympy.Symbol) else c
        if isinstance(c, sympy.Symbol):
            return ["sym", c.name]
        if isinstance(c, (sympy.And, sympy.Or)):  # conjunctions and disjunctions: logical ops over the parts
            parts = [build_cond(a) for a in sorted(c.args, key=sympy.default_sort_key)]
            acc = parts[0]
            for q in parts[1:]:
                acc = node(AND if isinstance(c, sympy.And) else OR, acc, q)
            return acc
        if isinstance(c, sympy.Not):
            return node(NOT, build_cond(c.args[0]))
        rel = {sympy.StrictLessThan: LT, sympy.LessThan: LE, sympy.StrictGreaterThan: GT,
               sympy.GreaterThan: GE, sympy.Equality: EQ, sympy.Unequality: NE}
        for cls, op in rel.items():
            if isinstance(c, cls):
                return node(op, build(c.lhs), build(c.rhs))
        raise GraphcError(f"cannot lower the condition {c} to graph ops")

    return build(double_constants(sympy.sympify(expr)))


_anon_lock = threading.Lock()


def from_tree(tree, env: dict[str, Tensor], dtype: str, shape) -> Tensor:
    """Build the graph nodes of `tree` (see `to_tree`), with symbols bound to nodes by name in `env`, numbers in
    `dtype`, broadcast to `shape`. Needs no sympy: a "fn" op's formula is read from its text when it is lowered
    or evaluated."""
    memo: dict[int, Tensor] = {}

    def build(t) -> Tensor:
        r = memo.get(id(t))
        if r is None:
            r = memo[id(t)] = _build(t)
        return r

    def _build(t) -> Tensor:
        tag = t[0]
        if tag == "num":
            return constant(float(t[1]), dtype)
        if tag == "sym":
            return env[t[1]]
        if tag == "op":
            return apply(OPS[t[1]], tuple(build(a) for a in t[3]), **t[2])
        name, text, args = t[1], t[2], t[3]
        with _anon_lock:
            op = OPS.get(name)
            if op is None:
                op = register(ElementwiseOp(name, len(args), text, simplify=False))
        return apply(op, tuple(build(a) for a in args))

    out = build(tree)
    if tuple(out.shape) != tuple(shape):
        from graphc.ops.movement import broadcast_to

        out = broadcast_to(out, broadcast_shapes([out.shape, shape], "derivative"))
    return out


def from_sympy(expr: sympy.Expr, env: dict, dtype: str, shape) -> Tensor:
    """Build graph nodes computing `expr`, with symbols bound to nodes by `env` ({symbol: node}), numbers in
    `dtype`."""
    return from_tree(to_tree(expr), {s.name: n for s, n in env.items()}, dtype, shape)


@functools.lru_cache(maxsize=1024)
def _simplified_condition(c):
    """sympy.simplify of a derivative's condition (x0 - x1 > 0 -> x0 > x1): ~60 ms each, and the same few
    conditions come back with every gradient through a maximum, a minimum or a where (pure: cached)."""
    import sympy

    return sympy.simplify(c)


def _lowerable(e: sympy.Expr) -> bool:
    """Only functions that have graph ops: sympy.simplify likes cosh, which would become an opaque op."""
    import sympy

    structural = (sympy.Add, sympy.Mul, sympy.Pow, sympy.Piecewise, sympy.Max, sympy.Min, sympy.Heaviside,
                  sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)
    ops = sympy_ops()
    for f in e.atoms(sympy.Function):
        if type(f) not in ops and not isinstance(f, structural):
            return False
    return True


def _exp_of_one_plus(e: sympy.Expr):
    """a when e is 1 + exp(a), else None."""
    import sympy

    if isinstance(e, sympy.Add) and len(e.args) == 2 and sympy.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sympy.exp):
            return other.args[0]
    return None


def _stable_formula(expr: sympy.Expr) -> sympy.Expr:
    """A user's formula with 1 / (1 + exp(a)) as sigmoid(-a) and log(1 + exp(a)) as softplus(a) (the graph's
    stability rewrites, applied to the formula): swish z / (1 + exp(-z)) then has the derivative
    sigmoid(z) + z sigmoid(z) sigmoid(-z), finite everywhere, where exp(-z) overflowed the formula's own."""
    import sympy

    from graphc.ops.scalar import sigmoid as s_sigmoid
    from graphc.ops.scalar import softplus as s_softplus

    def recip(e):
        return isinstance(e, sympy.Pow) and e.exp == -1 and _exp_of_one_plus(e.base) is not None

    def soft(e):
        return isinstance(e, sympy.log) and _exp_of_one_plus(e.args[0]) is not None

    expr = expr.replace(recip, lambda e: s_sigmoid(-_exp_of_one_plus(e.base)))
    return expr.replace(soft, lambda e: s_softplus(_exp_of_one_plus(e.args[0])))


def _simplifications(d: sympy.Expr) -> list:
    """A few simplifications of a derivative that stay within functions graphc has as ops (d among them), the
    smallest first."""
    import sympy

    candidates = [d]
    for f in (sympy.simplify, sympy.cancel, sympy.factor, sympy.together):
        try:
            candidates.append(f(d))
        except Exception:  # a simplifier giving up is not an error; keep the others
            continue
    ok = list(dict.fromkeys(c for c in candidates if _lowerable(c))) or [d]
    return sorted(ok, key=lambda c: (sympy.count_ops(c), len(sympy.srepr(c))))


def _without_singular_parts(d: sympy.Expr) -> sympy.Expr:
    """d with sympy's distributions and unevaluated pieces made plain: DiracDelta is 0 (almost everywhere), so are
    the derivatives of floor and ceiling (steps, left unevaluated by sympy), and the chain rule's Subs evaluated."""
    import sympy

    d = d.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.Integer(0))
    d = d.replace(lambda e: isinstance(e, sympy.Derivative) and isinstance(e.expr, (sympy.floor, sympy.ceiling)),
                  lambda e: sympy.Integer(0))
    return d.replace(lambda e: isinstance(e, sympy.Subs), lambda e: e.doit())


# Where a derivative's forms are compared: 0, tiny, ordinary and huge magnitudes of both signs (float64 adds
# magnitudes beyond float32's range); more inputs than one meet on at most _SAMPLE_CAP combinations.
_SAMPLES = (0.0, 1e-30, 1e-6, 0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 30.0, 100.0, 1e3, 1e6, 1e15, 1e26, 3e38)
_SAMPLES_F64 = (1e100, 1e200, 1e300)
_SAMPLE_CAP = 4096


def _sample_points(arity: int, dtype: str) -> list[np.ndarray]:
    base = _SAMPLES + (_SAMPLES_F64 if dtype == "float64" else ())
    vals = np.array(sorted({v for b in base for v in (b, -b)}), dtype)
    if len(vals) ** arity <= _SAMPLE_CAP:
        grid = np.meshgrid(*[vals] * arity, indexing="ij")
        return [g.ravel() for g in grid]
    picks = np.random.default_rng(0).integers(0, len(vals), size=(_SAMPLE_CAP, arity))
    return [vals[picks[:, j]] for j in range(arity)]


def _safest(expr: sympy.Expr, args: tuple, plain: sympy.Expr, candidates: list) -> sympy.Expr:
    """The first of `candidates` (forms of the derivative `plain` of `expr`, some written with the op's output y)
    that is finite and close to `plain` wherever `plain` is, evaluated in float32 and float64 at sample points, or
    else the one that misses fewest of them.

    Forms equal as formulas differ in floating point: sympy's smallest form of |x|**1.5's derivative,
    1.5 y**(1/3) sign(x), overflows with y where 1.5 sqrt(|x|) sign(x) does not; a simplification may take a root
    of a negative number that the plain derivative does not. The reference is `plain` in float64 (rounded to the
    dtype): where even that is not finite, no form is asked to be."""
    y = formula_names().Y
    fns = []
    try:
        forward = _lambdify(args, _without_singular_parts(expr))
        reference = _lambdify(args, _without_singular_parts(plain))
    except Exception:  # a formula numpy cannot evaluate: nothing to compare with
        return candidates[0]

    def misses(k: int) -> int:
        while len(fns) <= k:
            try:
                fns.append(_lambdify(args + (y,), _without_singular_parts(candidates[len(fns)])))
            except Exception:
                fns.append(None)
        if fns[k] is None:
            return _SAMPLE_CAP * 2 + 1
        n = 0
        for dtype, rtol, atol in (("float32", 1e-3, 1e-6), ("float64", 1e-8, 1e-12)):
            pts = _sample_points(len(args), dtype)
            try:
                with np.errstate(all="ignore"):
                    want = np.asarray(reference(*(p.astype(np.float64) for p in pts)), np.float64).astype(dtype)
                    out = np.asarray(forward(*pts), dtype)
                    got = np.asarray(fns[k](*pts, np.broadcast_to(out, pts[0].shape)), dtype)
            except Exception:  # this form cannot be evaluated by numpy: count every point missed
                return _SAMPLE_CAP * 2 + 1
            want, got = np.broadcast_to(want, pts[0].shape), np.broadcast_to(got, pts[0].shape)
            finite = np.isfinite(want)
            with np.errstate(all="ignore"):
                close = np.abs(got - want) <= rtol * np.abs(want) + atol
            n += int(np.count_nonzero(finite & ~close))
        return n

    if misses(0) == 0:
        return candidates[0]
    scores = [misses(k) for k in range(len(candidates))]
    return candidates[scores.index(min(scores))]


# ---------------------------------------------------------------------------------------------------------
# the built-in elementwise ops: each formula a function of `formula_names()` (s), built on first use


def _ew(name, arity, expr, sympy_fn=None, **kw) -> ElementwiseOp:
    return register(ElementwiseOp(name, arity, expr, sympy_fn=sympy_fn, **kw))


ADD = _ew("add", 2, lambda s: s.x0 + s.x1, domain=NUMERIC)
SUB = _ew("sub", 2, lambda s: s.x0 - s.x1, domain=NUMERIC)
MUL = _ew("mul", 2, lambda s: s.x0 * s.x1, domain=NUMERIC)
DIV = _ew("div", 2, lambda s: s.x0 / s.x1)
NEG = _ew("neg", 1, lambda s: -s.x0, domain=NUMERIC)
# pow's sympy derivatives x1*x0**x1/x0 and y*log(x0) are nan at x0 = 0; these are not (for x1 > 1, x0 >= 0). The
# log reads a 1 where x0 = 0, not only the outer branch: the derivative of the branch not taken still meets the
# cotangent (0 there), and 0 * log(0) made the Hessian's d/dx0 d/dx1 entry nan where d/dx1 d/dx0 is 0
POW = _ew("pow", 2, lambda s: s.x0 ** s.x1, partials=lambda s: {
    0: s.x1 * s.x0 ** (s.x1 - 1),
    1: s.Piecewise((0, s.Eq(s.x0, 0)),
                   (s.x0 ** s.x1 * s.log(s.Piecewise((1, s.Eq(s.x0, 0)), (s.x0, True))), True)),
})
# ints too, for a non-negative integer p (power() sends only those): exact, by repeated squaring in native code
POWC = _ew("powc", 1, lambda s: s.x0 ** s.P, params=("p",), partials=lambda s: {0: s.P * s.x0 ** (s.P - 1)},
           domain=NUMERIC)
EXP = _ew("exp", 1, lambda s: s.exp(s.x0), "exp")
LOG = _ew("log", 1, lambda s: s.log(s.x0), "log")
LOG1P = _ew("log1p", 1, lambda s: s.log1p(s.x0), "log1p")
EXPM1 = _ew("expm1", 1, lambda s: s.expm1(s.x0), "expm1", partials=lambda s: {0: s.Y + 1})
SQRT = _ew("sqrt", 1, lambda s: s.sqrt(s.x0))
ABS = _ew("abs", 1, lambda s: s.Abs(s.x0), "Abs", domain=NUMERIC)
SIGN = _ew("sign", 1, lambda s: s.sign(s.x0), "sign", domain=NUMERIC, partials=lambda s: {0: s.Integer(0)})
TANH = _ew("tanh", 1, lambda s: s.tanh(s.x0), "tanh")
SIGMOID = _ew("sigmoid", 1, lambda s: s.sigmoid(s.x0), "sigmoid")
SOFTPLUS = _ew("softplus", 1, lambda s: s.softplus(s.x0), "softplus")
RELU = _ew("relu", 1, lambda s: s.relu(s.x0), "relu", domain=NUMERIC)
ERF = _ew("erf", 1, lambda s: s.erf(s.x0), "erf")
# trigonometric and hyperbolic functions under numpy's names, sympy's in the formulas (native code: the C
# library's, lane by lane)
TRIG = {name: _ew(name, 1, lambda s, fn=fn: getattr(s, fn)(s.x0), fn) for name, fn in (
    ("sin", "sin"), ("cos", "cos"), ("tan", "tan"), ("arcsin", "asin"), ("arccos", "acos"), ("arctan", "atan"),
    ("sinh", "sinh"), ("cosh", "cosh"), ("arcsinh", "asinh"), ("arccosh", "acosh"), ("arctanh", "atanh"))}
# numpy's log2, log10, exp2 (the C library's, through double for float32: within an ulp, exact at powers of 2
# where log(x)/log(2) was not); derivatives with the constants 1/ln 2, 1/ln 10, ln 2 as one number each
_LN2, _LN10 = 0.6931471805599453, 2.302585092994046
LOG2 = _ew("log2", 1, lambda s: s.log2(s.x0), "log2", partials=lambda s: {0: s.Float(1 / _LN2, 17) / s.x0})
LOG10 = _ew("log10", 1, lambda s: s.log10(s.x0), "log10", partials=lambda s: {0: s.Float(1 / _LN10, 17) / s.x0})
EXP2 = _ew("exp2", 1, lambda s: s.exp2(s.x0), "exp2", partials=lambda s: {0: s.Float(_LN2, 17) * s.Y})
# numpy's arctan2(y, x) and hypot(x, y): the C library's (hypot never overflows where the result is finite). At the
# origin, where neither is differentiable, their partials are 0 (as abs'(0) = 0: hypot(x, 0) is |x|)
ATAN2 = _ew("arctan2", 2, lambda s: s.atan2(s.x0, s.x1), partials=lambda s: {
    0: s.Piecewise((0, s.Eq(s.hypot(s.x0, s.x1), 0)), (s.x1 / s.hypot(s.x0, s.x1) ** 2, True)),
    1: s.Piecewise((0, s.Eq(s.hypot(s.x0, s.x1), 0)), (-s.x0 / s.hypot(s.x0, s.x1) ** 2, True))})
HYPOT = _ew("hypot", 2, lambda s: s.hypot(s.x0, s.x1), partials=lambda s: {
    0: s.Piecewise((0, s.Eq(s.Y, 0)), (s.x0 / s.Y, True)), 1: s.Piecewise((0, s.Eq(s.Y, 0)), (s.x1 / s.Y, True))})
# piecewise constant: their derivatives are 0 (where defined); remainder's are 1 and -floor_divide
FLOOR = _ew("floor", 1, lambda s: s.floor(s.x0), "floor", partials=lambda s: {0: s.Integer(0)})
CEIL = _ew("ceil", 1, lambda s: s.ceiling(s.x0), "ceiling", partials=lambda s: {0: s.Integer(0)})
ROUND = _ew("round", 1, lambda s: s.rint(s.x0), "rint",  # ties to even, as numpy.round
            partials=lambda s: {0: s.Integer(0)})
FLOORDIV = _ew("floor_divide", 2, lambda s: s.floor_divide(s.x0, s.x1), "floor_divide", domain=NUMERIC,
               partials=lambda s: {0: s.Integer(0), 1: s.Integer(0)})
REM = _ew("remainder", 2, lambda s: s.remainder(s.x0, s.x1), "remainder", domain=NUMERIC,
          partials=lambda s: {0: s.Integer(1), 1: -s.floor_divide(s.x0, s.x1)})
# ties split the cotangent evenly: d max(a, b)/da = 1/2 at a == b (sympy's Heaviside(0) = 1/2)
MAXIMUM = _ew("maximum", 2, lambda s: s.Max(s.x0, s.x1), domain=NUMERIC)
MINIMUM = _ew("minimum", 2, lambda s: s.Min(s.x0, s.x1), domain=NUMERIC)
# where's condition (and the logical ops' inputs) are bool inputs: plain symbols, by the names the lambdified
# function expects
WHERE = _ew("where", 3, lambda s: s.Piecewise((s.x1, s.Symbol("x0")), (s.x2, True)), domain=NUMERIC + ("bool",),
            bool_inputs=(0,), numpy_fn=np.where)
# Ops that read an input only for its shape. They keep the tensor that binds a symbolic dim (the batch N) in a
# gradient graph, where a free-standing broadcast to (N, k) would leave N unbound (Theano's `second`).
FULL_LIKE = _ew("full_like", 1, lambda s: s.P, params=("p",), shape_inputs=(0,), out_dtype="param")
BROADCAST_LIKE = _ew("broadcast_like", 2, lambda s: s.x0, shape_inputs=(1,), domain=NUMERIC + ("bool",))
_cmp = dict(domain=NUMERIC + ("bool",), out_dtype="bool", differentiable=False)
LT = _ew("lt", 2, lambda s: s.StrictLessThan(s.x0, s.x1), **_cmp)
LE = _ew("le", 2, lambda s: s.LessThan(s.x0, s.x1), **_cmp)
GT = _ew("gt", 2, lambda s: s.StrictGreaterThan(s.x0, s.x1), **_cmp)
GE = _ew("ge", 2, lambda s: s.GreaterThan(s.x0, s.x1), **_cmp)
EQ = _ew("eq", 2, lambda s: s.Eq(s.x0, s.x1, evaluate=False), **_cmp)
NE = _ew("ne", 2, lambda s: s.Ne(s.x0, s.x1, evaluate=False), **_cmp)
NOT = _ew("logical_not", 1, lambda s: s.Not(s.Symbol("x0")), domain=("bool",), out_dtype="bool",
          differentiable=False, bool_inputs=(0,), numpy_fn=np.logical_not)
AND = _ew("logical_and", 2, lambda s: s.And(s.Symbol("x0"), s.Symbol("x1")), domain=("bool",),
          out_dtype="bool", differentiable=False, bool_inputs=(0, 1), numpy_fn=np.logical_and)
OR = _ew("logical_or", 2, lambda s: s.Or(s.Symbol("x0"), s.Symbol("x1")), domain=("bool",),
         out_dtype="bool", differentiable=False, bool_inputs=(0, 1), numpy_fn=np.logical_or)


class Cast(ElementwiseOp):
    """Change dtype. Float-to-float casts pass gradients (cast back); casts from or to ints and bools do not."""

    hidden_attrs = ("dtype",)

    def __init__(self):
        super().__init__("cast", 1, lambda s: s.x0, domain=NUMERIC + ("bool",), out_dtype="param", params=())

    def infer(self, inputs, attrs):
        (x,) = inputs
        return x.shape, attrs["dtype"]

    def reference(self, node, args, ctx):
        return np.asarray(args[0]).astype(ctx.dtype(node.dtype))

    def fold(self, node, args, ctx):
        return self.reference(node, args, ctx)

    def vjp(self, node, g):
        x = node.inputs[0]
        if x.dtype in FLOAT_DTYPES and node.dtype in FLOAT_DTYPES:
            return (cast(g, x.dtype),)
        return (None,)

    cost = 1

    def lower(self, node, lx):
        return lx.convert(lx.input(0), node.dtype)


CAST = register(Cast())


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
            x = cast(x, float_for(x.dtype))
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
        to = float_for(*(t.dtype for t in ts))
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
    _f.__doc__ = f"numpy's {_f.__name__}, elementwise (int32 promoted to float32, int64 to float64)."


log2, log10, exp2 = _unary(LOG2), _unary(LOG10), _unary(EXP2)
for _f in (log2, log10, exp2):
    _f.__doc__ = (f"numpy's {_f.__name__}, elementwise: the C library's (float32 through double, rounded once: within "
                  "an ulp, exact at powers of 2); int32 promoted to float32, int64 to float64.")


def _float_binary(op: ElementwiseOp, doc: str):
    def fn(a, b) -> Tensor:
        try:
            ts = _promote([a, b])
        except DTypeError as err:
            raise located(err, [x for x in (a, b) if isinstance(x, Node)], op.name) from None
        if ts[0].dtype not in FLOAT_DTYPES:  # ints (and bools) as floats, as numpy and gc.exp promote them
            to = float_for(*(t.dtype for t in ts))
            ts = [cast(t, to) for t in ts]
        return apply(op, ts)

    fn.__name__ = op.name
    fn.__doc__ = doc
    return fn


arctan2 = _float_binary(ATAN2, "numpy's arctan2(y, x): the angle of the point (x, y) in [-pi, pi], signed zeros and "
                        "infinities as the C library's atan2. Its gradient at the origin is 0.")
hypot = _float_binary(HYPOT, "numpy's hypot(x, y) = sqrt(x**2 + y**2) without overflow or underflow in the squares "
                      "(hypot(3e38, 4e38) is 5e38 in float32); hypot(inf, nan) is inf, as numpy's. Its gradient "
                      "(x/h, y/h) is 0 at the origin, as abs'(0).")


def reciprocal(x) -> Tensor:
    """numpy's reciprocal, 1 / x for floats (correctly rounded, as numpy's). numpy's reciprocal of an int is an int
    (np.reciprocal(2) is 0), which graphc refuses: write 1 / x (true division) or cast first."""
    x = as_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
        raise located(DTypeError(f"reciprocal of a {x.dtype} tensor: numpy's is an integer (1/2 is 0); write "
                                 "1 / x for float division, or gc.cast(x, 'float32') first"), (x,), "reciprocal")
    return apply(DIV, (constant(1.0, x.dtype), x))


def rsqrt(x) -> Tensor:
    """jax.lax.rsqrt, 1 / sqrt(x), as x ** -0.5 (1/sqrt(x) in native code: within an ulp): numpy's x ** -0.5 at the
    edges, inf at both zeros (jax's 1/sqrt(-0.0) is -inf), 0 at inf, nan below 0. Ints promoted to floats."""
    return power(x, -0.5)


def trunc(x) -> Tensor:
    """numpy's trunc: toward zero (floor above 0, ceil below; -0.5 gives -0.0), exact. Ints and bools are returned as
    they are, as numpy 2 does. Its gradient is 0."""
    x = as_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
        return x
    return where(less(x, 0.0), ceil(x), floor(x))


def _round_int(x: Tensor, q: int) -> Tensor:
    """Ints x to the nearest multiple of q (a power of 10), ties to even multiples, without leaving the dtype:
    q beyond the dtype's range rounds everything to 0 (as numpy's int32 result)."""
    if q > np.iinfo(x.dtype).max:
        return full_like(x, 0)
    qc = as_tensor(q, x)
    r = floor_divide_(x, qc)
    rem = x - r * qc  # in [0, q)
    half = qc - rem  # compared with rem instead of 2 * rem, which could overflow
    odd = not_equal(remainder_(r, as_tensor(2, x)), as_tensor(0, x))
    up = logical_or(greater(rem, half), logical_and(equal(rem, half), odd))
    return (r + cast(up, x.dtype)) * qc


def round_(x, decimals: int = 0) -> Tensor:
    """numpy.round: to the nearest integer, ties to even (0.5 -> 0, 1.5 -> 2), or to `decimals` places (x * 10**d
    rounded, then divided back, as numpy does). Ints are returned as they are for decimals >= 0; for decimals < 0
    they round to a multiple of 10**-decimals, ties to even, in exact integer arithmetic (numpy goes through
    float64, which agrees wherever float64 holds the ints exactly). Its gradient is 0."""
    x = as_tensor(x)
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)):
        raise GraphcError(f"round: decimals must be an int, got {decimals!r}")
    if decimals < 0 and x.dtype == "bool":
        raise located(DTypeError(f"round: a bool tensor to decimals={decimals} (numpy refuses it too); cast it "
                                 "to an int or float dtype first"), (x,), "round")
    if x.dtype in INT_DTYPES and decimals < 0:
        return _round_int(x, 10 ** -int(decimals))
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
        try:
            integral = float(b).is_integer()
        except OverflowError:  # an int beyond a double's range
            raise located(DTypeError(f"the exponent, an int of {len(str(abs(b)))} digits, is beyond float64's "
                                     "range (numpy refuses it too); write float('inf') for an infinite one"),
                          (a,), "pow") from None
        if a.dtype in INT_DTYPES and integral:
            if b < 0:
                raise located(DTypeError(f"an integer to the negative power {b} is not an integer (numpy refuses "
                                         f"it too); cast first: gc.cast(x, 'float32') ** {b}"), (a,), "pow")
            return apply(POWC, (a,), p=int(b)) if int(b) != 1 else a
        if a.dtype not in FLOAT_DTYPES:
            a = cast(a, float_for(a.dtype))
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
    import sympy  # the user's formula is sympy's

    X = formula_names().X  # noqa: N806 - the formulas' input symbols
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
