"""The kernel IR's integer index algebra, without sympy: index expressions are `Dim` polynomials (graphc.ir.dims)
over dim symbols and index variables (`var`: loop indices, gathered values; any integer, 0 and negatives
included), with the floor division and remainder of an index by a positive int kept whole (`fdiv`, `mod`), and
conditions on them (`rel`: a comparison, `TRUE`, `FALSE`, `And`).

The compiler used sympy for this; what sympy decided at construction (Mod(i + 3, 2) is Mod(i + 1, 2), Mod(x, 4)
>= 0 holds) is decided here the same way, and `show` prints an expression as sympy printed it, so the kernel IR
reads as before. `sympy_args` gives the operands of a sum or product in the order sympy kept them, the order the
emitter computes them in."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from graphc.ir.dims import Dim, Func, Symbol, Var, _atom_dim, var
from graphc.ir.dims import symbols_in_order as _dim_symbols

__all__ = ["FALSE", "TRUE", "And", "Rel", "conj", "eq", "evaluate", "fdiv", "floor_parts", "free_symbols",
           "is_index", "mod", "norm", "rel", "show", "subs", "sympy_args", "symbols_in_order", "var"]


def norm(x):
    """An int where x is an integer number, else x."""
    if isinstance(x, (bool, np.bool_)):
        return x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Fraction) and x.denominator == 1:
        return int(x)
    return x


def _index_atom(a) -> bool:
    return isinstance(a, Var) or (isinstance(a, Func) and a.kind in ("floordiv", "mod"))


def is_index(x) -> bool:
    """Whether x is an index expression (it holds an index variable, a floor division or a remainder), not a dim."""
    return isinstance(x, Dim) and any(_index_atom(a) for m, _ in x.terms for a, _ in m)


# -------------------------------------------------------------------------------------------- floordiv, Mod


def fdiv(a, b: int):
    """floor(a / b) for an integer expression a and an int b > 0, kept whole (an atom), as the kernel IR needs it:
    a floor of a sum is not taken apart, so `merge_digits` finds the digits it was split into."""
    a = norm(a)
    if isinstance(a, int):
        return a // b
    assert isinstance(b, int) and b > 0, b
    if b == 1:
        return a
    return _atom_dim(Func("floordiv", (a, b)))


def _coeffs(d: Dim):
    return [c for _, c in d.terms]


def mod(p, q: int):
    """p mod q (in [0, q)) for an integer expression p and an int q > 0, simplified as sympy's Mod is: a multiple
    of q is 0, a remainder of a remainder by a multiple of q is the inner one taken by q, the integer content
    common to p and q comes out (Mod(2i + 2, 4) is 2*Mod(i + 1, 2)), the terms that are multiples of q drop out
    of a sum and its constant is taken mod q, a single term's coefficient is taken mod q."""
    p = norm(p)
    assert isinstance(q, int) and q > 0, q
    if isinstance(p, int):
        return p % q
    if q == 1:
        return 0
    if all(isinstance(c, int) and c % q == 0 for c in _coeffs(p)):
        return 0
    single = _single_atom(p)
    if single is not None and isinstance(single, Func) and single.kind == "mod":
        inner, qi = single.args
        if qi % q == 0:
            return mod(inner, q)
        if qi < q:
            return p
    if len(p.terms) == 1:  # a product: its coefficient mod q (Mod(-i, 4) is Mod(3*i, 4))
        (m, c), = p.terms
        if isinstance(c, int):
            c = c % q
            if c == 0:
                return 0
            p = Dim.make({m: c})
    else:
        mods = [a for m, c in p.terms if c == 1 and len(m) == 1 and m[0][1] == 1
                for a in (m[0][0],) if isinstance(a, Func) and a.kind == "mod"]
        if mods and all(a.args[1] == q for a in mods):
            net = p
            for a in mods:
                net = net - _atom_dim(a) + a.args[0]
            return mod(net, q)
    g = math.gcd(q, *(c for c in _coeffs(p) if isinstance(c, int)))
    if g > 1 and all(isinstance(c, int) for c in _coeffs(p)):
        p, q = Dim.make({m: c // g for m, c in p.terms}), q // g
    else:
        g = 1
    if len(p.terms) > 1:
        kept = {}
        for m, c in p.terms:
            if not m:
                c = c % q
            elif isinstance(c, int) and c % q == 0:
                continue
            kept[m] = c
        simpler = Dim.make(kept)
        if simpler != p:  # simplified again, as sympy evaluates the Mod it made (Mod(-i + 2j, 2) is Mod(i, 2))
            return g * mod(simpler, q)
    if all(isinstance(c, int) and c % q == 0 for c in _coeffs(p)):
        return 0
    if q == 1:
        return 0
    return g * _atom_dim(Func("mod", (p, q)))


def _single_atom(d):
    """The atom a is, when d is exactly one atom (coefficient 1, power 1), else None."""
    if isinstance(d, Dim) and len(d.terms) == 1:
        m, c = d.terms[0]
        if c == 1 and len(m) == 1 and m[0][1] == 1:
            return m[0][0]
    return None


def floor_parts(e):
    """(numerator, denominator) when e is fdiv(numerator, denominator), else (e, None)."""
    a = _single_atom(e)
    if isinstance(a, Func) and a.kind == "floordiv":
        return a.args[0], a.args[1]
    return e, None


# -------------------------------------------------------------------------------------------- conditions


class _Bool:
    __slots__ = ("value",)

    def __init__(self, value: bool):
        self.value = value

    def __bool__(self) -> bool:
        return self.value

    def __repr__(self) -> str:
        return str(self.value)

    __str__ = __repr__

    @property
    def free_symbols(self) -> frozenset:
        return frozenset()

    def __reduce__(self):
        return (_bool, (self.value,))


TRUE, FALSE = _Bool(True), _Bool(False)


def _bool(value: bool) -> _Bool:
    return TRUE if value else FALSE


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}


class Rel:
    """lhs (op) rhs, op one of < <= > >= ==, over index expressions: a guard's condition. Kept as written (its
    printed form is the kernel IR's)."""

    __slots__ = ("op", "lhs", "rhs", "_hash")

    def __init__(self, op: str, lhs, rhs):
        self.op, self.lhs, self.rhs = op, lhs, rhs
        self._hash = hash((op, lhs, rhs))

    def __eq__(self, other) -> bool:
        return isinstance(other, Rel) and (self.op, self.lhs, self.rhs) == (other.op, other.lhs, other.rhs)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (Rel, (self.op, self.lhs, self.rhs))

    def __bool__(self) -> bool:
        raise TypeError(f"cannot decide {self} for every value of its symbols")

    @property
    def free_symbols(self) -> frozenset:
        return free_symbols(self.lhs) | free_symbols(self.rhs)

    def __str__(self) -> str:
        if self.op == "==":
            return f"Eq({show(self.lhs)}, {show(self.rhs)})"
        return f"{show(self.lhs)} {self.op} {show(self.rhs)}"

    __repr__ = __str__


class And:
    """The conjunction of conditions (build with `conj`)."""

    __slots__ = ("args", "_hash")

    def __init__(self, args: tuple):
        self.args = args
        self._hash = hash(("and", args))

    def __eq__(self, other) -> bool:
        return isinstance(other, And) and self.args == other.args

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (And, (self.args,))

    def __bool__(self) -> bool:
        raise TypeError(f"cannot decide {self} for every value of its symbols")

    @property
    def free_symbols(self) -> frozenset:
        return frozenset().union(*(free_symbols(a) for a in self.args))

    def __str__(self) -> str:
        return " & ".join(f"({a})" for a in self.args)

    __repr__ = __str__


def conj(*conds):
    """All of `conds`: TRUE where none is left, FALSE where one is FALSE."""
    kept: list = []
    for c in conds:
        if c is FALSE or c is False:
            return FALSE
        if c is TRUE or c is True:
            continue
        for a in (c.args if isinstance(c, And) else (c,)):
            if a not in kept:
                kept.append(a)
    if not kept:
        return TRUE
    return kept[0] if len(kept) == 1 else And(tuple(kept))


def _lower_bound(d) -> Fraction | int | None:
    """A lower bound of d for every value of its symbols (dims >= 1, remainders >= 0) when every non-constant
    term has a positive coefficient and only dim symbols and remainders as factors; None otherwise."""
    if not isinstance(d, Dim):
        return d
    lb = 0
    for m, c in d.terms:
        if not m:
            lb += c
            continue
        if c <= 0:
            return None
        low = c
        for a, _ in m:
            if isinstance(a, Symbol):
                continue
            if isinstance(a, Func) and a.kind == "mod":
                low = 0
                continue
            return None
        lb += low
    return lb


def rel(op: str, a, b):
    """a (op) b as a condition: TRUE or FALSE where it is decided for every value of the symbols (as sympy
    decided it: numbers, N - 1 >= 0, Mod(i, 4) >= 0), else a `Rel`."""
    a, b = norm(a), norm(b)
    d = a - b
    if isinstance(d, (int, Fraction)):
        return _bool({"<": d < 0, "<=": d <= 0, ">": d > 0, ">=": d >= 0, "==": d == 0}[op])
    if op == "==":
        return Rel(op, a, b)
    lo, hi = _lower_bound(d), _lower_bound(-d)  # d >= lo, -d >= hi
    if op in ("<", ">="):
        if lo is not None and lo >= 0:
            return _bool(op == ">=")
        if hi is not None and hi > 0:
            return _bool(op == "<")
    else:
        if lo is not None and lo > 0:
            return _bool(op == ">")
        if hi is not None and hi >= 0:
            return _bool(op == "<=")
    return Rel(op, a, b)


def eq(a, b):
    return rel("==", a, b)


# -------------------------------------------------------------------------------------------- queries


def free_symbols(e) -> frozenset:
    """The symbols (dims and index variables, each as a `Dim`) of an index expression or condition."""
    if isinstance(e, (Dim, Rel, And, _Bool)):
        return e.free_symbols
    return frozenset()


def symbols_in_order(e) -> list:
    """The symbols of an index expression or condition, each once, in the order its terms hold them."""
    if isinstance(e, Rel):
        parts = [e.lhs, e.rhs]
    elif isinstance(e, And):
        parts = list(e.args)
    else:
        return _dim_symbols(e)
    return list(dict.fromkeys(s for x in parts for s in symbols_in_order(x)))


def subs(e, mapping: dict):
    """e with each symbol in `mapping` (a symbol `Dim` -> an expression) replaced, simplified again."""
    if not mapping:
        return e
    if isinstance(e, Rel):
        return rel(e.op, subs(e.lhs, mapping), subs(e.rhs, mapping))
    if isinstance(e, And):
        return conj(*(subs(a, mapping) for a in e.args))
    if not isinstance(e, Dim):
        return e
    total = 0
    for m, c in e.terms:
        t = c
        for a, p in m:
            t = t * _subs_atom(a, mapping) ** p
        total = total + t
    return norm(total)


def _subs_atom(a, mapping: dict):
    if isinstance(a, Var):
        v = var(a.name)
        return mapping.get(v, v)
    if isinstance(a, Symbol):
        from graphc.ir.dims import symbol

        s = symbol(a.name)
        return mapping.get(s, s)
    if a.kind == "floordiv":
        return fdiv(subs(a.args[0], mapping), a.args[1])
    if a.kind == "mod":
        return mod(subs(a.args[0], mapping), a.args[1])
    args = tuple(subs(x, mapping) for x in a.args)
    if args == a.args:
        return _atom_dim(a)
    from graphc.ir.dims import ceil_div, dim_max, dim_min, floor_div

    return {"floor": floor_div, "ceil": ceil_div}[a.kind](*args) if a.kind in ("floor", "ceil") else \
        (dim_max if a.kind == "max" else dim_min)(*args)


def evaluate(e, env: dict):
    """The value of an index expression or condition for the symbols' values in `env` (symbol `Dim` -> int)."""
    if isinstance(e, _Bool):
        return e.value
    if isinstance(e, Rel):
        x, y = evaluate(e.lhs, env), evaluate(e.rhs, env)
        return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "==": x == y}[e.op]
    if isinstance(e, And):
        return all(evaluate(a, env) for a in e.args)
    if isinstance(e, Dim):
        return e.value(env)
    return e


def terms(e) -> list:
    """The terms of a sum (each a `Dim` or int), as sympy's Add.make_args gives them (any order)."""
    if not isinstance(e, Dim):
        return [e] if e != 0 else []
    return [Dim.make({m: c}) for m, c in e.terms]


def coeff_term(t) -> tuple:
    """(the number, the rest) of one term: 6*N*i is (6, N*i)."""
    if not isinstance(t, Dim):
        return t, 1
    (m, c), = t.terms
    return c, Dim.make({m: 1})


# ------------------------------------------------------------------------- sympy's order and printing

_ONE_SK = ((1, 0, "Number"), (0, ()), (), 1)


def _num_sk(n) -> tuple:
    return ((1, 0, "Number"), (0, ()), (), n)


def _class_key(a) -> tuple:
    if isinstance(a, Symbol):
        return (2, 0, "DimSymbol")
    if isinstance(a, Var):
        return (2, 0, "Symbol")
    return (4, 10000, {"floordiv": "floordiv", "mod": "Mod", "floor": "floor", "ceil": "ceiling", "max": "Max",
                       "min": "Min"}[a.kind])


def _atom_args_sk(a) -> tuple:
    if isinstance(a, (Symbol, Var)):
        return (1, (a.name,))
    return (len(a.args), tuple(sort_key(x) for x in a.args))


def _atom_sk(a) -> tuple:
    return (_class_key(a), _atom_args_sk(a), _ONE_SK, 1)


def sort_key(e) -> tuple:
    """sympy's default_sort_key of the expression e (for printing in sympy's order)."""
    e = norm(e)
    if not isinstance(e, Dim):
        return _num_sk(e)
    if len(e.terms) > 1:
        ordered = _ordered_terms(e)
        return ((3, 1, "Add"), (len(ordered), tuple(sort_key(Dim.make({m: c})) for m, c in ordered)), _ONE_SK, 1)
    (m, c), = e.terms
    if len(m) == 1:
        a, p = m[0]
        return (_class_key(a), _atom_args_sk(a), _num_sk(p), c)
    factors = sorted(m, key=_factor_sk)
    return ((3, 0, "Mul"), (len(factors), tuple(_factor_sk(f) for f in factors)), _ONE_SK, c)


def _factor_sk(f) -> tuple:
    a, p = f
    return (_class_key(a), _atom_args_sk(a), _num_sk(p), 1)


def _ordered_terms(d: Dim) -> list:
    """d's terms in the order sympy prints them: lexicographic in the exponents of its factors (sorted by their
    sort keys), highest first."""
    if len(d.terms) == 2:  # sympy's special case: 1 - x, not -x + 1
        (m, c), (m0, c0) = d.terms
        if not m0 and c0 > 0 and c < 0 and len(m) == 1:
            return [d.terms[1], d.terms[0]]
    gens = sorted({a for m, _ in d.terms for a, _ in m}, key=_atom_sk)
    pos = {a: k for k, a in enumerate(gens)}

    def key(t):
        vec = [0] * len(gens)
        for a, p in t[0]:
            vec[pos[a]] = p
        return tuple(-v for v in vec)

    return sorted(d.terms, key=key)


def show(e) -> str:
    """The expression or condition as sympy's str printed it (the kernel IR's text)."""
    if isinstance(e, (Rel, And, _Bool)):
        return str(e)
    e = norm(e)
    if not isinstance(e, Dim):
        return str(e)
    if len(e.terms) == 1:
        return _show_term(*e.terms[0])
    out: list[str] = []
    for m, c in _ordered_terms(e):
        s = _show_term(m, c)
        if s.startswith("-"):
            out += ["-", s[1:]]
        else:
            out += ["+", s]
    sign = out.pop(0)
    return ("" if sign == "+" else sign) + " ".join(out)


def _show_atom(a) -> str:
    if isinstance(a, (Symbol, Var)):
        return a.name
    if a.kind == "floordiv":
        return f"floordiv({show(a.args[0])}, {show(a.args[1])})"
    if a.kind == "mod":
        return f"Mod({show(a.args[0])}, {show(a.args[1])})"
    if a.kind in ("floor", "ceil"):
        num, den = a.args
        inner = show(norm(Fraction(1, den) * num)) if isinstance(den, int) else f"{show(num)}/{show(den)}"
        return f"{'floor' if a.kind == 'floor' else 'ceiling'}({inner})"
    return f"{'Max' if a.kind == 'max' else 'Min'}({', '.join(show(x) for x in a.args)})"


def _show_term(m, c) -> str:
    """One term as sympy's Mul printer writes it: the coefficient first, the factors in sort order, a remainder
    in parentheses where the product (with a coefficient >= 0) binds tighter than it."""
    if not m:
        return str(c)
    neg = c < 0
    mag = -c if neg else c
    num, den = (mag.numerator, mag.denominator) if isinstance(mag, Fraction) else (mag, 1)
    items = [str(num)] if num != 1 else []
    prec = 40 if neg else 50  # a product with a negative coefficient has the precedence of a sum
    several = len(m) + len(items) > 1
    for a, p in sorted(m, key=_factor_sk):
        s = _show_atom(a)
        is_mod = isinstance(a, Func) and a.kind == "mod"
        if p != 1:
            items.append((f"({s})" if is_mod else s) + f"**{p}")
        else:
            items.append(f"({s})" if is_mod and several and prec >= 50 else s)
    body = "*".join(items)
    if den != 1:
        body += f"/{den}"
    return ("-" if neg else "") + body


# ---------------------------------------------------------------------- sympy's operand order (emission)

_CLASSES = ["Zero", "One", "Half", "Infinity", "NaN", "NegativeOne", "NegativeInfinity", "Integer", "Rational",
            "Float", "Exp1", "Pi", "ImaginaryUnit", "Symbol", "Wild", "Pow", "Mul", "Add"]
_RANK = {n: k for k, n in enumerate(_CLASSES)}
_UNKNOWN = 100


def _rank(name: str) -> tuple:
    r = _RANK.get(name)
    return (_UNKNOWN, name) if r is None else (r, "")


def _cmp_key(e) -> tuple:
    """A key ordering expressions as sympy's Basic.compare does (the order of a sum's or product's args)."""
    e = norm(e)
    if isinstance(e, int):
        name = {0: "Zero", 1: "One", -1: "NegativeOne"}.get(e, "Integer")
        return (*_rank(name), 1, (e,))
    if isinstance(e, Fraction):
        return (*_rank("Rational"), 2, (e.numerator, e.denominator))
    kind, args = sympy_args(e)
    if kind == "atom":
        a = args
        if isinstance(a, Symbol):
            return (*_rank("DimSymbol"), 1, (a.name,))
        if isinstance(a, Var):
            return (*_rank("Symbol"), 1, (a.name,))
        name = {"floordiv": "floordiv", "mod": "Mod", "floor": "floor", "ceil": "ceiling", "max": "Max",
                "min": "Min"}[a.kind]
        return (*_rank(name), len(a.args), tuple(_cmp_key(x) for x in a.args))
    name = {"add": "Add", "mul": "Mul", "pow": "Pow"}[kind]
    return (*_rank(name), len(args), tuple(_cmp_key(x) for x in args))


def sympy_args(e) -> tuple[str, object]:
    """How sympy held the index expression e (a `Dim`): ("add", terms), ("mul", factors) or ("pow", (base, exp)),
    operands in sympy's order, or ("atom", the Atom)."""
    if len(e.terms) > 1:
        parts = [Dim.make({m: c}) for m, c in e.terms]
        return "add", sorted((norm(p) for p in parts), key=_cmp_key)
    (m, c), = e.terms
    if c == 1 and len(m) == 1:
        a, p = m[0]
        if p == 1:
            return "atom", a
        return "pow", (_atom_dim(a), p)
    factors = [_atom_dim(a) if p == 1 else Dim.make({((a, p),): 1}) for a, p in m]
    if c != 1:
        factors.append(c)
    return "mul", sorted(factors, key=_cmp_key)
