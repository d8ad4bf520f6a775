"""The chain rule of a gradient graph in matrix notation (z₁ = x W₁ + b₁, δ₁ = (δ₂ W₂ᵀ) ⊙ relu'(z₁), ...).

Forward values are named after their layer scope (z_k before an activation, h_k after it) and each named
value's adjoint (δ_k for z_k) is found in the gradient graph itself: hash-consing makes `grad(y, z_k)` the very
node the backward pass built. The gradient nodes are then read back: matmul flags become transposes, sums
over the batch become Σ_rows, reshapes and broadcasts vanish, and an elementwise op's vector-Jacobian product
becomes ⊙ f'(z)."""

from __future__ import annotations

import re

import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

from graphc.errors import GraphcError
from graphc.ir.node import Node, topo_order
from graphc.ir.shapes import FLOAT_DTYPES
from graphc.ops.pointwise import ElementwiseOp, G, Y
from graphc.ops.scalar import relu

LEAVES = ("input", "param")
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "nu", "sigma", "tau", "phi", "omega",
         "eta", "kappa", "rho", "xi", "zeta", "psi", "chi", "pi"}


def latex_name(name: str) -> str:
    """A user's name as LaTeX: `w` stays w, `W1` / `W_1` become W_{1}, `alpha` becomes α, others go upright."""
    m = re.fullmatch(r"([A-Za-z]+?)_?(\d+)", name) or re.fullmatch(r"([A-Za-z]+)_([A-Za-z0-9]+)", name)
    base, sub = (m.group(1), m.group(2)) if m else (name, "")
    if base in GREEK:
        base = "\\" + base
    elif len(base) > 1 or not base.isalpha():
        base = r"\mathrm{" + _escape(base) + "}"
    return f"{base}_{{{sub}}}" if sub else base


# LaTeX's special characters in text: a name holding them stays a name (`&` would add a column to an aligned
# block, `%` comment out the rest of its line, `#` and `$` stop LaTeX), control characters and line breaks a space
_SPECIAL = {"\\": r"\backslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "^": r"\hat{}", "~": r"\sim{}"}


def _escape(text: str) -> str:
    return "".join(_SPECIAL.get(c, " " if c.isspace() or not c.isprintable() else c) for c in text)


# ------------------------------------------------------------------------------------------------ matrix algebra
# Unevaluated functions for what sympy has no elementwise word for. Elementwise algebra stays sympy's own
# (Hadamard products commute), so sympy may still collect and cancel it.


class _Fn(sympy.Function):
    is_commutative = True  # as a factor of an elementwise product; a function's own arguments keep their order
    is_real = True


class MatMul(_Fn):
    precedence = PRECEDENCE["Mul"]
    matrix = True


class T(_Fn):  # transpose
    precedence = PRECEDENCE["Pow"]
    matrix = True


class SumRows(_Fn):  # over axis 0 of a matrix: column sums
    precedence = PRECEDENCE["Mul"]
    matrix = True
    word = r"\sum_{\mathrm{rows}}"


class SumCols(_Fn):  # over axis 1: row sums
    precedence = PRECEDENCE["Mul"]
    matrix = True
    word = r"\sum_{\mathrm{cols}}"


class SumAll(_Fn):
    precedence = PRECEDENCE["Mul"]
    matrix = False
    word = r"\sum"


class MaxRows(_Fn):
    precedence = PRECEDENCE["Mul"]
    matrix = True
    word = r"\max_{\mathrm{rows}}"


class MaxCols(_Fn):
    precedence = PRECEDENCE["Mul"]
    matrix = True
    word = r"\max_{\mathrm{cols}}"


class MaxAll(_Fn):
    precedence = PRECEDENCE["Mul"]
    matrix = False
    word = r"\max"


class Iverson(_Fn):
    """1 where the condition holds, else 0 (a cast of a comparison)."""

    matrix = None  # as its argument


class Opaque(_Fn):
    """An op with no formula here: printed by name, arguments in order (the name is the first argument)."""

    matrix = None


# One class per op for the whole process: sympy caches expressions by class, so a fresh class per call would
# leak through its cache, and two classes for one op would not compare equal.
_primes: dict[str, type] = {}


def prime_of(op_name: str) -> type:
    """f' for an elementwise op f, as an unevaluated function printed \\mathrm{f}'(u)."""
    cls = _primes.get(op_name)
    if cls is None:
        cls = type(f"Prime_{re.sub(r'[^0-9A-Za-z_]', '_', op_name)}", (_Fn,), {"op_name": op_name, "matrix": None})
        cls = _primes.setdefault(op_name, cls)
    return cls


FUNCTION_TEX = {"tanh": r"\tanh", "sigmoid": r"\sigma", "exp": r"\exp", "log": r"\log", "sqrt": r"\sqrt{}"}


class Printer(LatexPrinter):
    """sympy's LaTeX with names for graph values, ⊙ between matrix factors, and the functions above."""

    def __init__(self, names: dict[sympy.Symbol, str], matrices: set[sympy.Symbol]):
        super().__init__({"mul_symbol": None})
        self.names = names
        self.matrices = matrices

    def is_matrix(self, e) -> bool:
        if isinstance(e, sympy.Symbol):
            return e in self.matrices
        m = getattr(type(e), "matrix", None)
        if m is not None and isinstance(e, sympy.Function):
            return bool(m)
        if isinstance(e, Opaque):
            return any(self.is_matrix(a) for a in e.args[1:])
        return any(self.is_matrix(a) for a in getattr(e, "args", ()) if isinstance(a, sympy.Basic))

    def _print_Symbol(self, expr, style="plain"):
        name = self.names.get(expr)
        return name if name is not None else super()._print_Symbol(expr)

    def _as_ordered_terms(self, expr, order=None):
        # products of matrices first and subtracted terms last: x W + b, e/s - a
        terms = super()._as_ordered_terms(expr, order=order)
        return sorted(terms, key=lambda t: (2 if t.could_extract_minus_sign() else 0 if t.has(MatMul, SumRows, SumCols)
                                            else 1))

    def _print_Mul(self, expr):
        if expr.could_extract_minus_sign():
            inner = -expr
            tex = self._print(inner)
            return "- " + (r"\left(" + tex + r"\right)" if inner.is_Add else tex)
        num, den = sympy.fraction(expr, exact=True)
        if den != 1:
            if isinstance(num, (SumAll, SumRows, SumCols)):  # a mean reads (1/N) Σ ..., not Σ ... / N
                return r"\frac{1}{" + self._print(den) + "} " + self._print(num)
            return r"\frac{" + self._print(num) + "}{" + self._print(den) + "}"
        factors = list(num.as_ordered_factors()) if num.is_Mul else [num]
        mats = [f for f in factors if self.is_matrix(f)]
        if len(mats) < 2:
            return super()._print_Mul(expr)
        scal = [f for f in factors if not self.is_matrix(f)]
        head = ""
        if scal:
            s = sympy.Mul(*scal)
            head = (r"\left(" + self._print(s) + r"\right)" if s.is_Add else self._print(s)) + " "
        return head + r" \odot ".join(self.parenthesize(m, PRECEDENCE["Mul"]) for m in mats)

    def _operand(self, e) -> str:
        tex = self._print(e)
        if isinstance(e, (MatMul, T)) or self._prec(e) > PRECEDENCE["Mul"]:
            return tex
        return r"\left(" + tex + r"\right)"

    @staticmethod
    def _prec(e) -> int:
        from sympy.printing.precedence import precedence

        return precedence(e)

    @staticmethod
    def _power(tex: str, exp) -> str:
        """sympy prints f(x)**2 by asking f for its LaTeX with `exp`."""
        return tex if exp is None else r"\left(" + tex + r"\right)^{" + exp + "}"

    def _print_MatMul(self, expr, exp=None):
        return self._power(" ".join(self._operand(a) for a in expr.args), exp)

    def _print_T(self, expr, exp=None):
        (a,) = expr.args
        tex = self._print(a)
        if not (isinstance(a, sympy.Symbol) or self._prec(a) >= PRECEDENCE["Func"]):
            tex = r"\left(" + tex + r"\right)"
        return self._power(tex + r"^{\top}", exp)

    def _reduction(self, expr, exp=None):
        (a,) = expr.args
        tex = self._print(a)
        if self._prec(a) < PRECEDENCE["Pow"] and not isinstance(a, sympy.Symbol):
            tex = r"\left(" + tex + r"\right)"
        return self._power(type(expr).word + " " + tex, exp)

    _print_SumRows = _print_SumCols = _print_SumAll = _reduction
    _print_MaxRows = _print_MaxCols = _print_MaxAll = _reduction

    def _print_Iverson(self, expr, exp=None):
        tex = r"\mathbf{1}\left[" + self._print(expr.args[0]) + r"\right]"
        return tex if exp is None else tex + "^{" + exp + "}"

    def _print_Opaque(self, expr, exp=None):
        name, _, sub = str(expr.args[0]).partition("|")
        tex = r"\mathrm{" + _escape(name) + "}" + (f"_{{{_escape(sub)}}}" if sub else "")
        tex += r"\left(" + ", ".join(self._print(a) for a in expr.args[1:]) + r"\right)"
        return tex if exp is None else tex + "^{" + exp + "}"

    def _print_Function(self, expr, exp=None):
        name = getattr(type(expr), "op_name", None)
        if name is not None:
            word = FUNCTION_TEX.get(name) or r"\mathrm{" + name.replace("_", r"\_") + "}"
            tex = word + r"'\left(" + ", ".join(self._print(a) for a in expr.args) + r"\right)"
            return tex if exp is None else tex + "^{" + exp + "}"
        return super()._print_Function(expr, exp)

    def _print_relu(self, expr, exp=None):
        tex = r"\mathrm{relu}\left(" + self._print(expr.args[0]) + r"\right)"
        return tex if exp is None else tex + "^{" + exp + "}"

    def _print_sigmoid(self, expr, exp=None):
        tex = r"\sigma\left(" + self._print(expr.args[0]) + r"\right)"
        return tex if exp is None else tex + "^{" + exp + "}"

    def _print_softplus(self, expr, exp=None):
        tex = r"\mathrm{softplus}\left(" + self._print(expr.args[0]) + r"\right)"
        return tex if exp is None else tex + "^{" + exp + "}"


# ------------------------------------------------------------------------------------------------ reading graphs

def _squeeze_only(src, dst) -> bool:
    a = [d for d in src if not (isinstance(d, int) and d == 1)]
    b = [d for d in dst if not (isinstance(d, int) and d == 1)]
    return a == b


def _transparent(n: Node) -> bool:
    """Ops that change nothing a formula shows: squeezes, broadcasts (numpy's rules read naturally), casts
    between floats, and stop_gradient (the same value)."""
    name = n.op.name
    if name == "reshape":
        return _squeeze_only(n.inputs[0].shape, n.shape)
    if name in ("broadcast_to", "broadcast_like", "stop_gradient"):
        return True
    return name == "cast" and n.dtype in FLOAT_DTYPES and n.inputs[0].dtype in FLOAT_DTYPES


def resolve(n: Node) -> Node:
    while _transparent(n):
        n = n.inputs[0]
    return n


def _number(v, dtype: str):
    import numpy as np

    if dtype == "bool":
        return sympy.true if bool(v) else sympy.false
    if dtype.startswith("int"):
        return sympy.Integer(int(v))
    f = float(v)
    if not np.isfinite(f):  # an attention mask's -inf, a NaN fill: sympy's, not a Rational of "-inf"
        return sympy.nan if f != f else sympy.oo if f > 0 else -sympy.oo
    text = np.format_float_positional(np.float32(v) if dtype == "float32" else np.float64(v), trim="-")
    return sympy.Rational(text) if len(text) <= 10 else sympy.Float(text, 6)


def _nontrivial_derivative(p: sympy.Expr, args) -> bool:
    """Whether f'(u) reads better than the formula g ⊙ f'(u) expands to (relu's cases, tanh's 1 - y², ...)."""
    if p.has(sympy.Piecewise):
        return True
    if any(not isinstance(f, (sympy.sign, sympy.Abs)) for f in p.atoms(sympy.Function)):
        return True
    try:
        return sympy.Poly(p, *args).total_degree() >= 2
    except sympy.PolynomialError:
        return False


def _attr_subscript(n: Node) -> str:
    """An op without a formula here is written by name: its index or axes (a scan output's index) become a
    subscript, so two different such values do not print alike. "|" separates it from the name."""
    parts = []
    for k, v in n.attrs.items():
        if k not in ("index", "axis", "axes") or isinstance(v, bool):
            continue
        if isinstance(v, int) or (isinstance(v, tuple) and v and all(isinstance(x, int) for x in v)):
            parts.append(",".join(map(str, v)) if isinstance(v, tuple) else str(v))
    text = ";".join(parts)
    return "|" + text if text and len(text) <= 24 else ""


class ChainRule:
    """Names, definitions and derivative recognition for one scalar y and the tensors it is differentiated by."""

    def __init__(self, y: Node, wrt: list[Node], y_name: str = "L"):
        from graphc.autodiff.grad import grad

        if y.shape != () or y.dtype not in FLOAT_DTYPES:
            raise GraphcError(f"latex: y must be a float scalar (a loss), got {y.type_str}")
        self.y, self.wrt = y, wrt
        self.fwd = topo_order(y)
        self.fwd_ids = {id(n) for n in self.fwd}
        self.names: dict[int, str] = {}
        self.kind: dict[int, str] = {}  # "fwd" or "adj" for named values
        self.syms: dict[int, sympy.Symbol] = {}
        self.matrices: set[sympy.Symbol] = set()
        self.cache: dict[int, sympy.Expr] = {}
        self.primes: dict[str, Node] = {}  # op name -> a forward node using it (for the f' footnote)
        self.grads = grad(y, wrt)
        for n in topo_order([y] + list(self.grads)):
            if n.op.name == "iota":  # 0..n-1 along the last axis: a column index
                self._name(n, "j", "leaf")
            elif n.op.name == "constant" and n.attrs["value"].array.size > 1:
                self._name(n, r"\mathrm{const}_{" + r"\times ".join(map(str, n.shape)) + "}", "leaf")
        self._name_forward(y_name)
        self._find_adjoints()

    # -- naming
    def _name(self, n: Node, tex: str, kind: str) -> None:
        if id(n) not in self.names:
            self.names[id(n)] = tex
            self.kind[id(n)] = kind

    def _name_forward(self, y_name: str) -> None:
        scopes: dict[str, int] = {}
        members: dict[str, list[Node]] = {}
        for n in self.fwd:
            if n.op.name in LEAVES or n.op.name == "constant" or not n.source.scope:
                continue
            scopes.setdefault(n.source.scope, len(scopes) + 1)
            members.setdefault(n.source.scope, []).append(n)
        for n in self.fwd:
            if n.op.name in LEAVES:
                prefix = n.source.scope + "."
                if n.op.name == "param" and n.source.scope in scopes and n.name.startswith(prefix):
                    self._name(n, f"{latex_name(n.name[len(prefix):])}_{{{scopes[n.source.scope]}}}", "leaf")
                else:
                    self._name(n, latex_name(n.name), "leaf")
        self._name(self.y, y_name, "fwd")
        users: dict[int, list[Node]] = {id(n): [] for n in self.fwd}
        for n in self.fwd:
            for i in n.inputs:
                users[id(i)].append(n)
        for scope, k in scopes.items():
            inside = {id(n) for n in members[scope]}
            outs = [resolve(n) for n in members[scope]
                    if n is self.y or any(id(u) not in inside for u in users[id(n)])]
            outs = list({id(o): o for o in outs if id(o) in inside}.values())
            for j, o in enumerate(outs):
                sub = f"{k}" if len(outs) == 1 else f"{k},{j + 1}"
                if self._activation(o, inside):
                    self._name(o, f"h_{{{sub}}}", "fwd")
                    self._name(resolve(o.inputs[0]), f"z_{{{sub}}}", "fwd")
                else:
                    self._name(o, f"z_{{{sub}}}", "fwd")
        # outside any scope, a layer is recognized by its shape: the top of x W (+ b), and the activation on it
        k = len(scopes)
        unscoped = {id(n) for n in self.fwd if not n.source.scope and n.op.name not in LEAVES}
        for n in self.fwd:
            if id(n) not in unscoped or id(n) in self.names or _transparent(n) or not self._linear(n):
                continue
            if n.op.name == "matmul" and any(u.op.name == "add" and id(u) in unscoped for u in self._readers(n, users)):
                continue  # the bias add on top of it is the layer's value
            k += 1
            self._name(n, f"z_{{{k}}}", "fwd")
            readers = self._readers(n, users)
            if len(readers) == 1 and self._activation(readers[0], unscoped):
                self._name(readers[0], f"h_{{{k}}}", "fwd")

    @staticmethod
    def _readers(n: Node, users: dict[int, list[Node]]) -> list[Node]:
        """The users of n, looking through transparent ops (a reshape of n is still n)."""
        out, stack = [], list(users[id(n)])
        while stack:
            u = stack.pop()
            if _transparent(u):
                stack.extend(users[id(u)])
            else:
                out.append(u)
        return out

    @staticmethod
    def _activation(o: Node, inside: set[int]) -> bool:
        op = o.op
        return (isinstance(op, ElementwiseOp) and op.arity == 1 and op.name not in ("cast", "neg")
                and o.dtype in FLOAT_DTYPES and id(resolve(o.inputs[0])) in inside)

    @staticmethod
    def _linear(n: Node) -> bool:
        """x W, or x W + b: what a dense layer computes before its activation."""
        n = resolve(n)
        if n.op.name == "matmul":
            return True
        return n.op.name == "add" and any(resolve(i).op.name == "matmul" for i in n.inputs)

    def _find_adjoints(self) -> None:
        from graphc.autodiff.grad import grad

        wants = [n for n in self.fwd if n.dtype in FLOAT_DTYPES and n is not self.y and n.op.name != "constant"]
        adjoints = dict(zip((id(n) for n in wants), grad(self.y, wants) if wants else [], strict=True))
        self.adjoint: dict[int, Node] = {}
        owner: dict[int, Node] = {}
        # named values first, so a node that is the adjoint of several (z = m + b: m and z share it) takes z's
        for n in sorted(wants, key=lambda n: 0 if self.kind.get(id(n)) == "fwd" else 1):
            a = adjoints[id(n)]
            if a.op.name in ("full_like", "constant"):
                continue
            self.adjoint[id(n)] = a
            owner.setdefault(id(a), n)
        self.owner = owner
        for n in self.fwd:  # δ_k for the adjoint of each pre-activation z_k (and of the layer outputs)
            tex = self.names.get(id(n))
            if tex is None or self.kind[id(n)] != "fwd" or id(n) not in self.adjoint or n is self.y:
                continue
            a = self.adjoint[id(n)]
            if owner.get(id(a)) is not n:
                continue
            if tex.startswith("z_"):
                self._name(a, r"\delta" + tex[1:], "adj")
        # an elementwise op's vjp, found by rebuilding it (hash-consing returns the node grad made)
        self.recognized: dict[int, tuple[Node, Node, Node]] = {}  # id(vjp node) -> (it, forward node, adjoint)
        for v in self.fwd:
            op = v.op
            if not isinstance(op, ElementwiseOp) or op.arity != 1 or op.name == "cast" or id(v) not in self.adjoint:
                continue
            if v.inputs[0].dtype not in FLOAT_DTYPES:
                continue
            p = op.partial_expr(v.attrs, 0).subs(G, 1)
            if not _nontrivial_derivative(p, (op.args[0], Y)):
                continue
            c = op.vjp(v, self.adjoint[id(v)])[0]
            if c is not None:  # c is held here: a node rebuilt outside the graph must not die and lend its id
                self.recognized.setdefault(id(c), (c, v, self.adjoint[id(v)]))

    # -- converting
    def symbol(self, n: Node) -> sympy.Symbol:
        s = self.syms.get(id(n))
        if s is None:
            s = sympy.Symbol(f"v{len(self.syms)}", real=True)
            self.syms[id(n)] = s
            if n.shape != ():
                self.matrices.add(s)
        return s

    def expr(self, n: Node, top: bool = False) -> sympy.Expr:
        """n as a formula over named values (a named n is its symbol unless `top`, i.e. its definition)."""
        if not top and id(n) in self.names:
            return self.symbol(n)
        if not top and id(n) in self.cache:
            return self.cache[id(n)]
        out = self._convert(n)
        if not top:
            self.cache[id(n)] = out
        return out

    def _convert(self, n: Node) -> sympy.Expr:
        if id(n) in self.recognized:
            _, v, g = self.recognized[id(n)]
            self.primes.setdefault(v.op.name, v)
            return self.expr(g) * prime_of(v.op.name)(self.expr(v.inputs[0]))
        op = n.op
        name = op.name
        if name in LEAVES:
            return self.symbol(n)
        if _transparent(n):
            return self.expr(n.inputs[0])
        if name == "constant":
            a = n.attrs["value"].array
            if a.size == 1:
                return _number(a.reshape(()).item(), n.dtype)
            return self.symbol(n)
        if name == "dim":
            return sympy.sympify(n.attrs["expr"])
        if name == "iota":
            return self.symbol(n)
        if name == "matmul":
            a, b = (self.expr(i) for i in n.inputs)
            return MatMul(T(a) if n.attrs["ta"] else a, T(b) if n.attrs["tb"] else b)
        if name == "transpose":
            return T(self.expr(n.inputs[0]))
        if name in ("sum", "max"):
            x = n.inputs[0]
            axes = tuple(n.attrs["axes"])
            inner = self.expr(x)
            if len(axes) == x.ndim:
                return (SumAll if name == "sum" else MaxAll)(inner)
            if x.ndim == 2:
                fn = {("sum", (0,)): SumRows, ("sum", (1,)): SumCols, ("max", (0,)): MaxRows,
                      ("max", (1,)): MaxCols}[(name, axes)]
                return fn(inner)
            return Opaque(sympy.Symbol(name + _attr_subscript(n)), inner)
        if name == "cast":
            x = n.inputs[0]
            inner = self.expr(x)
            if x.dtype == "bool":
                return Iverson(inner)
            return inner
        if isinstance(op, ElementwiseOp) and op.user:  # the user's own activation, by its name
            return Opaque(sympy.Symbol(name), *(self.expr(i) for i in n.inputs))
        if isinstance(op, ElementwiseOp):
            sub = {}
            for k, (a, x) in enumerate(zip(op.args, n.inputs, strict=True)):
                if k in op.shape_inputs:
                    continue
                sub[a] = self.expr(x)
            e = op.expr_for(n.attrs).xreplace(sub)
            return e
        return Opaque(sympy.Symbol(name + _attr_subscript(n)), *(self.expr(i) for i in n.inputs))

    # -- which values the formulas name
    def children(self, n: Node) -> list[Node]:
        if id(n) in self.recognized:
            _, v, g = self.recognized[id(n)]
            return [g, v.inputs[0]]
        if n.op.name in LEAVES or n.op.name in ("constant", "dim", "iota"):
            return []
        if isinstance(n.op, ElementwiseOp):
            return [x for k, x in enumerate(n.inputs) if k not in n.op.shape_inputs]
        if _transparent(n):
            return [n.inputs[0]]
        return list(n.inputs)

    def share(self, roots: list[Node]) -> None:
        """Name unnamed values that several formulas use (so each is written once): adjoints of named values
        get a bar, forward values a letter by op, gradient values g_k."""
        parents: dict[int, set[int]] = {}
        nodes: dict[int, Node] = {}
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for c in self.children(n):
                c = self._skip(c)
                parents.setdefault(id(c), set()).add(id(n))
                nodes[id(c)] = c
                stack.append(c)
        counters: dict[str, int] = {}
        for n in topo_order(roots):
            if id(n) in self.names or len(parents.get(id(n), ())) < 2 or self._tiny(n):
                continue
            owner = self.owner.get(id(n))
            if owner is not None and id(owner) in self.names and self.kind[id(owner)] == "fwd":
                self._name(n, r"\bar{" + self.names[id(owner)] + "}", "adj")
                continue
            if id(n) in self.fwd_ids:
                letter = {"max": "m", "sum": "s"}.get(n.op.name, "a")
            else:
                letter = "g"
            counters[letter] = counters.get(letter, 0) + 1
            self._name(n, f"{letter}_{{{counters[letter]}}}", "fwd" if id(n) in self.fwd_ids else "adj")
        self.cache.clear()

    def _skip(self, n: Node) -> Node:
        while id(n) not in self.names and id(n) not in self.recognized and _transparent(n):
            n = n.inputs[0]
        return n

    def _tiny(self, n: Node) -> bool:
        if n.op.name in LEAVES or n.op.name in ("constant", "dim", "iota") or n.dtype == "bool":
            return True  # a condition reads better where it is used ([z = m]) than under a name
        e = self._convert(n)
        return sympy.count_ops(e) <= 2 and not any(s in self.matrices for s in e.free_symbols) and not (
            e.atoms(MatMul, SumRows, SumCols))

    # -- the equations
    def equations(self, wrt_names: list[str]) -> list[tuple[str, str]]:
        grads = list(self.grads)
        roots = [self.y] + grads
        self.share(roots + [n for n in self._named_nodes() if self.kind[id(n)] != "leaf"])
        named = self._reached(roots, transitive=True)
        for n in self._named_nodes():
            self.symbol(n)
        printer = Printer({self.symbol(n): self.names[id(n)] for n in self._named_nodes()}, self.matrices)
        y_tex = self.names[id(self.y)]
        lines: list[tuple[str, str]] = []
        for n in self.fwd:
            if id(n) in named and self.kind.get(id(n)) == "fwd":
                lines.append((self.names[id(n)], printer.doprint(self.expr(n, top=True))))
        # backward: each definition where it is computed, each gradient after the last value it reads
        position = {id(n): i for i, n in enumerate(topo_order(grads))}
        back: list[tuple[tuple, str, str]] = []
        for n in self._named_nodes():
            if self.kind[id(n)] != "adj" or id(n) not in named:
                continue
            rhs = printer.doprint(self.expr(n, top=True))
            owner = self.owner.get(id(n))
            if owner is not None and id(owner) in self.names and self.names[id(n)].startswith(r"\delta"):
                rhs = rf"\frac{{\partial {y_tex}}}{{\partial {self.names[id(owner)]}}} = " + rhs
            back.append(((position.get(id(n), -1), 0, 0), self.names[id(n)], rhs))
        for k, g in enumerate(grads):
            refs = [position.get(i, -1) for i in self._reached([g], transitive=False) if self.kind.get(i) == "adj"]
            lhs = rf"\frac{{\partial {y_tex}}}{{\partial {wrt_names[k]}}}"
            back.append(((max(refs, default=position.get(id(g), -1)), 1, k), lhs, printer.doprint(self.expr(g))))
        back.sort(key=lambda t: t[0])
        lines += [(lhs, rhs) for _, lhs, rhs in back]
        u = sympy.Symbol("u", real=True)
        for op_name, v in self.primes.items():  # what each f' stands for, from the op's own derivative
            x0 = v.op.args[0]
            p = v.op.partial_expr(v.attrs, 0).subs(G, 1)
            p = p.xreplace({x0: u, Y: v.op.expr_for(v.attrs).xreplace({x0: u})})
            # relu' is written on relu's output (relu(u) > 0); for the reader that is u > 0
            p = p.replace(lambda e: isinstance(e, (sympy.StrictGreaterThan, sympy.LessThan)) and isinstance(e.lhs, relu)
                          and e.rhs == 0, lambda e: e.func(e.lhs.args[0], 0))
            lines.append((printer.doprint(prime_of(op_name)(u)), printer.doprint(_iverson(p))))
        return lines

    def _named_nodes(self) -> list[Node]:
        by_id = {}
        for n in topo_order([self.y] + list(self.grads)):
            if id(n) in self.names:
                by_id[id(n)] = n
        return list(by_id.values())

    def _reached(self, roots: list[Node], transitive: bool) -> set[int]:
        """Ids of the named values the formulas of `roots` mention (and, if `transitive`, those that the
        definitions of the mentioned ones mention, and so on)."""
        out: set[int] = set()
        seen: set[int] = set()
        stack = [(r, True) for r in roots]
        while stack:
            n, root = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if id(n) in self.names:
                out.add(id(n))
                if not root and not transitive:
                    continue
            stack.extend((c, False) for c in self.children(n))
        return out


def _iverson(p: sympy.Expr) -> sympy.Expr:
    """Piecewise((0, c), (1, True)) reads as 1[not c]."""
    if isinstance(p, sympy.Piecewise) and len(p.args) == 2 and p.args[1].cond == sympy.true:
        (a, c), (b, _) = p.args
        if a == 0 and b == 1:
            return Iverson(c.negated if hasattr(c, "negated") else sympy.Not(c))
        if a == 1 and b == 0:
            return Iverson(c)
    return p
