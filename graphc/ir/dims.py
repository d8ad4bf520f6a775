"""Symbolic dims without sympy: a dim is an int or a `Dim`, a polynomial with rational coefficients over named
positive-integer symbols (the batch `N`, a length `T`) and a few integer-valued functions of them (floor and
ceiling of a quotient, max, min).

Shapes are built, compared and evaluated on every graph a user writes, and most dims are `N`, `50*N` or an int;
sympy (34 MB and 0.2 s to import) is loaded only where the compiler does index arithmetic, through `_sympy_`
(which sympy calls when a `Dim` meets its expressions) and `from_sympy` on the way back.

A `Dim` is kept in a canonical form (terms sorted, integer parts taken out of a floor), so equal polynomials are
equal objects and hash alike; a `Dim` that turns out constant becomes an int. Equality of dims that hold floors
or maxima is decided by the canonical form where it can be, else by sympy (`dims_equal` in graphc.ir.shapes)."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache

import numpy as np

Number = int | Fraction


class Atom:
    """A factor of a monomial: a symbol, or an integer-valued function of dims."""

    __slots__ = ()

    def sort_key(self) -> tuple:
        raise NotImplementedError


class Symbol(Atom):
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def sort_key(self) -> tuple:
        return (0, self.name)

    def __eq__(self, other) -> bool:
        return isinstance(other, Symbol) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("sym", self.name))

    def __str__(self) -> str:
        return self.name


class Var(Atom):
    """An integer index variable of the kernel IR (a loop index, a value read from an index buffer): unlike a dim
    symbol it may be 0 or negative, so nothing that assumes positivity (`_nonneg`, max / min) decides on it."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def sort_key(self) -> tuple:
        return (0, self.name, 1)

    def __eq__(self, other) -> bool:
        return isinstance(other, Var) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("var", self.name))

    def __str__(self) -> str:
        return self.name


class Func(Atom):
    """floor(num / den) or ceiling(num / den) ("floor", "ceil": den an int > 1 or a dim), or max / min of dims;
    in index expressions ("floordiv", "mod": den an int > 1) the floor division and remainder of an integer
    expression kept whole (graphc.ir.index: not rewritten, so digits split by them can be merged again)."""

    __slots__ = ("kind", "args", "_hash")

    def __init__(self, kind: str, args: tuple):
        self.kind = kind
        self.args = args
        self._hash = hash((kind, args))

    def sort_key(self) -> tuple:
        return (1, self.kind, tuple(str(a) for a in self.args))

    def __eq__(self, other) -> bool:
        return isinstance(other, Func) and other.kind == self.kind and other.args == self.args

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (Func, (self.kind, self.args))  # the hash is recomputed: string hashes differ between processes

    def __str__(self) -> str:
        if self.kind in ("floordiv", "mod"):
            return f"{'floordiv' if self.kind == 'floordiv' else 'Mod'}({self.args[0]}, {self.args[1]})"
        if self.kind in ("floor", "ceil"):
            num, den = self.args
            return f"{'floor' if self.kind == 'floor' else 'ceiling'}({_wrap(num)}/{_wrap(den)})"
        return f"{'Max' if self.kind == 'max' else 'Min'}({', '.join(map(str, self.args))})"


Monomial = tuple[tuple[Atom, int], ...]  # (atom, power), sorted by atom


def _wrap(x) -> str:
    s = str(x)
    return s if isinstance(x, int) or (isinstance(x, Dim) and len(x.terms) == 1 and x.terms[0][1] == 1) else f"({s})"


class Dim:
    """A symbolic dim: sum of coefficient * monomial. Immutable; build with `symbol(name)` and arithmetic."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: tuple[tuple[Monomial, Number], ...]):
        self.terms = terms  # sorted, no zero coefficients, the constant term (monomial ()) last
        self._hash = hash(terms)

    # -- construction
    @staticmethod
    def make(poly: dict[Monomial, Number]) -> int | Fraction | Dim:
        terms = [(m, c) for m, c in poly.items() if c != 0]
        if all(not m for m, _ in terms):
            c = sum((c for _, c in terms), 0)
            return int(c) if isinstance(c, int) or c.denominator == 1 else c
        terms.sort(key=lambda t: (not t[0], -sum(p for _, p in t[0]), [(a.sort_key(), p) for a, p in t[0]]))
        return Dim(tuple((m, int(c) if isinstance(c, Fraction) and c.denominator == 1 else c) for m, c in terms))

    def poly(self) -> dict[Monomial, Number]:
        return dict(self.terms)

    # -- what code asks of a dim
    @property
    def free_symbols(self) -> frozenset[Dim]:
        """The symbols this dim depends on, each as a `Dim` (the keys of an environment of dim values; an index
        expression's index variables too)."""
        return _free(self)

    @property
    def is_symbol(self) -> bool:
        return len(self.terms) == 1 and self.terms[0][1] == 1 and len(self.terms[0][0]) == 1 \
            and self.terms[0][0][0][1] == 1 and isinstance(self.terms[0][0][0][0], Symbol)

    @property
    def name(self) -> str:
        if not self.is_symbol:
            raise AttributeError(f"the dim {self} is not a symbol and has no name")
        return self.terms[0][0][0][0].name

    @property
    def is_integral(self) -> bool:
        """Integer coefficients (floors and ceilings are whole): a whole number for every value of the symbols.
        (N/2 is not, though N*(N + 1)/2 would be: such dims are refused, write them with a floor division.)"""
        return all(isinstance(c, int) for _, c in self.terms)

    @property
    def is_polynomial(self) -> bool:
        """No floor, max or min in it."""
        return all(isinstance(a, Symbol) for m, _ in self.terms for a, _ in m)

    def value(self, env) -> int | Fraction:
        """The exact value for the symbols' values in `env` (an int where it is whole)."""
        v = _value(self, env)
        return int(v) if isinstance(v, Fraction) and v.denominator == 1 else v

    def evaluate(self, env) -> int:
        """The value for the symbols' values in `env` (symbol dim -> int); KeyError for a missing one."""
        v = _value(self, env)
        if isinstance(v, Fraction):
            if v.denominator != 1:
                raise ValueError(f"the dim {self} is not an integer ({v}) for {_show_env(env)}")
            return int(v)
        return v

    # -- arithmetic (ints, Fractions and dims; anything else, e.g. a sympy expression, is left to its own
    # reflected operator)
    def __add__(self, other):
        o = _poly(other)
        if o is None:
            return NotImplemented
        p = self.poly()
        for m, c in o.items():
            p[m] = p.get(m, 0) + c
        return Dim.make(p)

    __radd__ = __add__

    def __neg__(self):
        return Dim.make({m: -c for m, c in self.terms})

    def __sub__(self, other):
        o = _poly(other)
        if o is None:
            return NotImplemented
        return self + Dim.make({m: -c for m, c in o.items()})

    def __rsub__(self, other):
        if _poly(other) is None:
            return NotImplemented
        return (-self) + other

    def __mul__(self, other):
        o = _poly(other)
        if o is None:
            return NotImplemented
        out: dict[Monomial, Number] = {}
        for m1, c1 in self.terms:
            for m2, c2 in o.items():
                m = _mono_mul(m1, m2)
                out[m] = out.get(m, 0) + c1 * c2
        return Dim.make(out)

    __rmul__ = __mul__

    def __truediv__(self, other):
        """Division by a number (rational coefficients; floor or ceil it), or exactly by a dim that divides."""
        if isinstance(other, (int, Fraction)) and not isinstance(other, bool):
            if other == 0:
                raise ZeroDivisionError("dim divided by 0")
            return self if other == 1 else Dim.make({m: Fraction(c) / other for m, c in self.terms})
        if isinstance(other, Dim):
            q = exact_div(self, other)
            if q is None:
                raise ValueError(f"the dim {self} is not a multiple of {other}")
            return q
        return NotImplemented

    def __rtruediv__(self, other):
        if isinstance(other, (int, Fraction)) and not isinstance(other, bool):
            raise ValueError(f"{other} / {self}: a number divided by a symbolic dim is not a dim")
        return NotImplemented

    def __floordiv__(self, other):
        if _poly(other) is None:
            return NotImplemented
        return floor_div(self, other)

    def __rfloordiv__(self, other):
        if _poly(other) is None:
            return NotImplemented
        return floor_div(other, self)

    def __mod__(self, other):
        if _poly(other) is None:
            return NotImplemented
        return self - other * floor_div(self, other)

    def __rmod__(self, other):
        if _poly(other) is None:
            return NotImplemented
        return other - self * floor_div(other, self)

    def __pow__(self, e):
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            return NotImplemented
        out: int | Dim = 1
        for _ in range(e):
            out = out * self
        return out

    # -- comparison: only equality is decidable for every value of the symbols
    def __eq__(self, other) -> bool:
        if isinstance(other, Dim):
            return self.terms == other.terms
        if isinstance(other, (int, Fraction, float)):
            return False  # a Dim is never constant
        return NotImplemented

    def __ne__(self, other) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __hash__(self) -> int:
        return self._hash

    def _order(self, other, op: str):
        names = ", ".join(sorted(map(str, self.free_symbols)))
        raise TypeError(f"cannot decide {self} {op} {other} for every value of {names}; symbolic dims only compare "
                        "for equality")

    # an index expression (graphc.ir.index) compares into a condition of the kernel IR
    def __lt__(self, other):
        return _relation(self, other, "<") if _indexed(self, other) else self._order(other, "<")

    def __le__(self, other):
        return _relation(self, other, "<=") if _indexed(self, other) else self._order(other, "<=")

    def __gt__(self, other):
        return _relation(self, other, ">") if _indexed(self, other) else self._order(other, ">")

    def __ge__(self, other):
        return _relation(self, other, ">=") if _indexed(self, other) else self._order(other, ">=")

    def __bool__(self) -> bool:
        return True  # never zero: a zero polynomial is the int 0

    def __int__(self):
        from graphc.errors import DTypeError  # a TypeError too: Python's int()/float()/index protocols expect one

        raise DTypeError(f"the symbolic dim {self} has no int value until its symbols are bound (at a call); in the "
                         f"graph, arithmetic with a tensor reads it (gc.sum(x) / x.shape[0]), and "
                         f"gc.dim_value({str(self)!r}, x) is its value as a scalar tensor")

    __index__ = __int__

    def __reduce__(self):
        return (Dim, (self.terms,))  # the hash is recomputed: string hashes differ between processes

    # -- printing, as sympy prints the same expression (shapes read the same as before)
    def __str__(self) -> str:
        out = ""
        for i, (m, c) in enumerate(self.terms):
            neg = c < 0
            mag = -c if neg else c
            if not m:
                body = str(mag)
            else:
                factors = "*".join(str(a) if p == 1 else f"{a}**{p}" for a, p in m)
                if mag == 1:
                    body = factors
                elif isinstance(mag, Fraction):
                    body = f"{mag.numerator}*{factors}/{mag.denominator}" if mag.numerator != 1 \
                        else f"{factors}/{mag.denominator}"
                else:
                    body = f"{mag}*{factors}"
            if i == 0:
                out = f"-{body}" if neg else body
            else:
                out += f" - {body}" if neg else f" + {body}"
        return out

    __repr__ = __str__

    # -- sympy, where the compiler needs it
    def _sympy_(self):
        return to_sympy(self)


def _indexed(a, b) -> bool:
    from graphc.ir.index import is_index

    return is_index(a) or is_index(b)


def _relation(a, b, op: str):
    from graphc.ir.index import rel

    if _poly(b) is None:
        return NotImplemented
    return rel(op, a, b)


def _show_env(env) -> str:
    return ", ".join(f"{k} = {v}" for k, v in env.items())


def _poly(x) -> dict[Monomial, Number] | None:
    if isinstance(x, Dim):
        return x.poly()
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, Fraction)):
        return {(): x}
    if isinstance(x, np.integer):
        return {(): int(x)}
    return None


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    powers: dict[Atom, int] = dict(a)
    for atom, p in b:
        powers[atom] = powers.get(atom, 0) + p
    return tuple(sorted(powers.items(), key=lambda t: t[0].sort_key()))


@cache
def symbol(name: str) -> Dim:
    """The dim symbol called `name` (a positive integer)."""
    monomial = ((Symbol(name), 1),)
    return Dim(((monomial, 1),))


@cache
def var(name: str) -> Dim:
    """The index variable called `name` (an integer of any sign: see `Var`)."""
    monomial = ((Var(name), 1),)
    return Dim(((monomial, 1),))


def symbols_in_order(d) -> list:
    """The symbols of d (dims and index variables, each as a `Dim`), each once, in the order its terms hold them
    (deterministic, unlike a set's)."""
    out: dict = {}

    def walk(x) -> None:
        if not isinstance(x, Dim):
            return
        for m, _ in x.terms:
            for a, _ in m:
                if isinstance(a, Symbol):
                    out.setdefault(symbol(a.name))
                elif isinstance(a, Var):
                    out.setdefault(var(a.name))
                else:
                    for y in a.args:
                        walk(y)

    walk(d)
    return list(out)


def _free(d) -> frozenset:
    return frozenset(symbols_in_order(d))


def _value(d, env):
    if not isinstance(d, Dim):
        return d
    total: Number = 0
    for m, c in d.terms:
        v: Number = c
        for a, p in m:
            v = v * _atom_value(a, env) ** p
        total = total + v
    return total


def _atom_value(a: Atom, env) -> int:
    if isinstance(a, Symbol):
        return env[symbol(a.name)]
    if isinstance(a, Var):
        return env[var(a.name)]
    vals = [_value(x, env) for x in a.args]
    if a.kind == "floordiv":
        return vals[0] // vals[1]
    if a.kind == "mod":
        return vals[0] % vals[1]
    if a.kind == "floor":
        return math.floor(Fraction(vals[0]) / vals[1])
    if a.kind == "ceil":
        return math.ceil(Fraction(vals[0]) / vals[1])
    return max(vals) if a.kind == "max" else min(vals)


def _atom_dim(a: Atom) -> Dim:
    monomial = ((a, 1),)
    return Dim(((monomial, 1),))


def _split_integral(p: dict[Monomial, Number]) -> tuple[dict, dict]:
    """p = whole + frac, whole with integer coefficients; frac's coefficients of symbols in [0, 1), its constant
    in (-1, 1) with the constant's sign (ceiling((N - 1)/2) stays that, not ceiling((N + 1)/2) - 1)."""
    whole: dict = {}
    frac: dict = {}
    for m, c in p.items():
        f = math.floor(c) if m else math.trunc(c)
        if f:
            whole[m] = f
        if c - f:
            frac[m] = c - f
    return whole, frac


def floor_div(a, b):
    """floor(a / b) for dims or ints, b > 0."""
    return _rounded_div(a, b, "floor")


def ceil_div(a, b):
    """ceiling(a / b) for dims or ints, b > 0."""
    return _rounded_div(a, b, "ceil")


def _rounded_div(a, b, kind: str):
    if isinstance(a, (int, Fraction)) and isinstance(b, int):
        return math.floor(Fraction(a) / b) if kind == "floor" else math.ceil(Fraction(a) / b)
    if isinstance(b, int):
        if b <= 0:
            raise ValueError(f"division of the dim {a} by {b}: the divisor must be positive")
        pa = _poly(a)
        if b == 1 and all(Fraction(c).denominator == 1 for c in pa.values()):
            return a
        # a / b = whole + frac (see _split_integral); whole is an integer for integer symbols
        whole, frac = _split_integral({m: Fraction(c) / b for m, c in pa.items()})
        out = Dim.make(whole)
        if set(frac) == {()}:  # a constant in (-1, 1), not 0
            return out + (math.floor(frac[()]) if kind == "floor" else math.ceil(frac[()]))
        if frac:
            den = b * math.lcm(*(Fraction(c).denominator for c in pa.values()))
            coeffs = {m: int(c * den) for m, c in frac.items()}  # integers, with no factor common to all and den
            g = math.gcd(den, *coeffs.values())
            out = out + _atom_dim(Func(kind, (Dim.make({m: c // g for m, c in coeffs.items()}), den // g)))
        return out
    q = exact_div(a, b)
    if q is not None:
        return q
    return _atom_dim(Func(kind, (a, b)))


def exact_div(a, b) -> int | Dim | None:
    """a / b when b divides a as polynomials (every value of the symbols), else None."""
    if isinstance(b, int):
        if b == 0:
            return None
        pa = _poly(a)
        if pa is None or any(Fraction(c) / b != int(Fraction(c) / b) for c in pa.values()):
            return None
        return Dim.make({m: int(Fraction(c) / b) for m, c in pa.items()})
    pb = b.poly()
    if len(pb) != 1:  # a polynomial divisor: only a constant multiple of it
        pa = _poly(a)
        if pa is None or set(pa) != set(pb):
            return None
        ratios = {Fraction(pa[m]) / c for m, c in pb.items()}
        r = ratios.pop()
        return int(r) if not ratios and r.denominator == 1 else None
    (mb, cb), = pb.items()
    pa = _poly(a)
    if pa is None:
        return None
    out: dict = {}
    need = dict(mb)
    for m, c in pa.items():
        have = dict(m)
        if any(have.get(atom, 0) < p for atom, p in need.items()):
            return None
        rest = {atom: p - need.get(atom, 0) for atom, p in have.items() if p - need.get(atom, 0)}
        q = Fraction(c) / cb
        if q.denominator != 1:
            return None
        out[tuple(sorted(rest.items(), key=lambda t: t[0].sort_key()))] = int(q)
    return Dim.make(out)


def dim_max(*args):
    return _extreme("max", args)


def dim_min(*args):
    return _extreme("min", args)


def _extreme(kind: str, args):
    """max / min of dims and ints: decided where the difference of two has one sign for every value of the
    symbols (N - 1 >= 0, since symbols are >= 1), else a max / min atom of what is left."""
    kept: list = []
    for a in args:
        for i, k in enumerate(kept):
            if _nonneg(a - k):  # a >= k
                if kind == "max":
                    kept[i] = a
                break
            if _nonneg(k - a):
                if kind == "min":
                    kept[i] = a
                break
        else:
            kept.append(a)
    if len(kept) == 1:
        return kept[0]
    return _atom_dim(Func(kind, tuple(sorted(kept, key=str))))


def size_max0(d):
    """max(d, 0) for a count that a size of 0 at run time may make negative (N - 1 for an empty batch): a max
    atom unless d >= 0 for every value >= 0 of its symbols. `dim_max` decides with symbols >= 1 (the algebra's
    assumption, and sympy's), which reads max(N - 1, 0) as N - 1: wrong for the interior padding of an empty axis,
    which the JIT and the reference do run."""
    if not isinstance(d, Dim):
        return max(d, 0)
    if d.is_polynomial and all(c >= 0 for m, c in d.terms if m) and dict(d.terms).get((), 0) >= 0:
        return d
    return _atom_dim(Func("max", tuple(sorted((d, 0), key=str))))


def _nonneg(d) -> bool:
    """Whether d >= 0 for every value >= 1 of its symbols (a sufficient test: a polynomial whose non-constant
    coefficients are >= 0 is smallest with every symbol at 1)."""
    if not isinstance(d, Dim):
        return d >= 0
    if not d.is_polynomial or any(c < 0 for m, c in d.terms if m):
        return False
    return sum(c for _, c in d.terms) >= 0


# ---------------------------------------------------------------------------------------------------------- sympy


def to_sympy(d):
    """The sympy expression of a dim (symbols are positive integers, as the compiler's index algebra assumes)."""
    import sympy

    if not isinstance(d, Dim):
        return sympy.Rational(d.numerator, d.denominator) if isinstance(d, Fraction) else sympy.Integer(d)
    return _to_sympy_cached(d)


@cache
def _to_sympy_cached(d: Dim):
    import sympy

    total = sympy.Integer(0)
    for m, c in d.terms:
        term = sympy.Rational(c.numerator, c.denominator) if isinstance(c, Fraction) else sympy.Integer(c)
        for a, p in m:
            term = term * _atom_sympy(a) ** p
        total = total + term
    return total


def _atom_sympy(a: Atom):
    import sympy

    if isinstance(a, Symbol):
        return dim_symbol_class()(a.name)
    if isinstance(a, Var):
        return sympy.Symbol(a.name, integer=True)
    args = [to_sympy(x) for x in a.args]
    if a.kind == "floordiv":
        return sympy.floor(args[0] / args[1])
    if a.kind == "mod":
        return sympy.Mod(*args)
    if a.kind == "floor":
        return sympy.floor(args[0] / args[1])
    if a.kind == "ceil":
        return sympy.ceiling(args[0] / args[1])
    return sympy.Max(*args) if a.kind == "max" else sympy.Min(*args)


@cache
def dim_symbol_class():
    """sympy's Symbol for a dim: a positive integer that is equal to, and hashes as, graphc's `symbol(name)`, so
    an environment of dim values answers either, and a set of symbols holds each dim once whichever side made it
    (the compiler's index expressions are sympy; shapes and the run time's environments are `Dim`s)."""
    import sympy

    class DimSymbol(sympy.Symbol):
        def __new__(cls, name: str):
            return super().__new__(cls, name, integer=True, positive=True)

        def __eq__(self, other):
            if isinstance(other, Dim):
                return other.is_symbol and other.name == self.name
            return super().__eq__(other)

        def __ne__(self, other):
            # sympy answers NotImplemented for a non-sympy operand (an int): `not` of it was False, so N != 1
            # read False and printers dropped a /N (gc.latex's backward equations of a mean)
            r = self.__eq__(other)
            return r if r is NotImplemented else not r

        def __hash__(self):
            return hash(symbol(self.name))

        def __reduce__(self):
            return (_dim_symbol, (self.name,))

    return DimSymbol


def _dim_symbol(name: str):
    return dim_symbol_class()(name)


def from_sympy(e):
    """A dim from a sympy integer expression of dim symbols (what the compiler's index algebra returns)."""
    import sympy

    e = sympy.sympify(e)
    if e.is_Integer:
        return int(e)
    if e.is_Rational:
        return Fraction(int(e.p), int(e.q))
    if e.is_Symbol:
        return symbol(e.name)
    if isinstance(e, (sympy.floor, sympy.ceiling)):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return _rounded_div(from_sympy(num), from_sympy(den), "floor" if isinstance(e, sympy.floor) else "ceil")
    args = [from_sympy(a) for a in e.args]
    if e.is_Add:
        return sum(args[1:], args[0])
    if e.is_Mul:
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if e.is_Pow and e.exp.is_Integer and e.exp >= 0:
        return args[0] ** int(e.exp)
    if isinstance(e, sympy.Max):
        return dim_max(*args)
    if isinstance(e, sympy.Min):
        return dim_min(*args)
    raise ValueError(f"{e} is not a dim graphc can represent (polynomials, floor, ceiling, Max, Min)")
