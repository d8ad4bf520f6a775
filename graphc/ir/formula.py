"""Scalar formulas as graphc's own small expression trees (`Term`): what an elementwise op, a reduction's combine
rule, dropout's mask and the kernel IR's `checked` helper compute at one point, in the vocabulary the native code
emitter knows, so lowering and code emission need no sympy.

A term is already in the shape its code takes: a sum says which terms it subtracts, a product with a denominator
is a division, x ** 0.5 is a square root. graphc.ops.scalar.to_term makes one from an op's sympy formula;
`to_plain` / `from_plain` carry it through JSON (the per-machine file of graphc.ops.pointwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# the unary functions of vector math (polynomial forms) and of the C library (lane by lane), by name
VMATH_FUNCTIONS = ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "erf")
LIBM_FUNCTIONS = ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "log2",
                  "log10", "exp2")
# the C library's functions of two arguments (lane by lane): atan2(y, x), hypot(x, y)
LIBM_BINARY = ("atan2", "hypot")
SALTED = ("keep_bit", "rand_uniform", "rand_normal")  # the ops whose value is a random stream's salt
COMPARES = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}

_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731

# op -> (number of arguments, None for one or more; the type check of its value, None for no value)
VOCABULARY: dict[str, tuple[int | None, Callable[[Any], bool] | None]] = {
    "sym": (0, lambda v: isinstance(v, str) and v != ""),  # an argument, by name
    "num": (0, _number),  # an int or a float, in the type of the formula's numbers
    "bool": (0, lambda v: isinstance(v, bool)),
    "add": (None, _int),  # the first `value` arguments added, the rest subtracted (value 0: the first negated)
    "neg": (1, None),
    "mul": (None, None),
    "div": (2, None),
    "powi": (1, _int),  # to the integer power `value` (by repeated squaring; a negative one: its reciprocal)
    "sqrt": (1, None),
    "rsqrt": (1, None),  # x ** -0.5
    "pow": (2, None),
    "select": (3, None),  # (condition, value where true, value where false)
    **{op: (2, None) for op in COMPARES},
    "not": (1, None),
    "and": (None, None),
    "or": (None, None),
    "max": (None, None),  # numpy's maximum and minimum (nan propagates)
    "min": (None, None),
    "relu": (1, None),
    "abs": (1, None),
    "sign": (1, None),
    "heaviside": (1, _number),  # value: the value at 0
    "rint": (1, None),
    "floor": (1, None),
    "ceil": (1, None),
    "floor_divide": (2, None),
    "remainder": (2, None),
    "keep_bit": (3, _int),  # dropout's mask bit of (element index, key, threshold); value: the salt
    # gc.random's draws at (low or mean, scale or std, element index, key); value: the salt (graphc.ops.random)
    "rand_uniform": (4, _int),
    "rand_normal": (4, _int),
    **{fn: (1, None) for fn in VMATH_FUNCTIONS + LIBM_FUNCTIONS},
    **{fn: (2, None) for fn in LIBM_BINARY},
}


def _binary(op: str, value: int | None = None, reverse: bool = False):
    """The method of a Python operator building `op` of (self, other), or (other, self) when reflected."""

    def method(self, other):
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            other = num(other)
        elif not isinstance(other, Term):
            return NotImplemented
        return Term(op, (other, self) if reverse else (self, other), value)

    return method


class Term:
    """One node of a scalar formula: `op` (a name of VOCABULARY), its argument terms and its value (a symbol's
    name, a number, ...). Immutable and hashable by structure (the hash computed once, from the arguments'), so
    the emitter computes a sub-term that occurs twice once."""

    __slots__ = ("op", "args", "value", "_key", "_hash")

    def __init__(self, op: str, args: tuple[Term, ...] = (), value: Any = None):
        spec = VOCABULARY.get(op)
        if spec is None:
            raise ValueError(f"no formula op {op!r}")
        arity, check = spec
        args = tuple(args)
        if (len(args) != arity) if arity is not None else not args:
            raise ValueError(f"{op} takes {arity if arity is not None else 'one or more'} arguments, got {len(args)}")
        if not all(isinstance(a, Term) for a in args):
            raise ValueError(f"{op}'s arguments must be terms, got {args!r}")
        if (value is not None or check is not None) and (check is None or not check(value)):
            raise ValueError(f"{op} cannot have the value {value!r}")
        if op == "add" and not 0 <= value <= len(args):
            raise ValueError(f"add of {len(args)} terms cannot add the first {value}")
        # floats compare by repr: nan equals nan (its emitted constant is the same) and 2.0 is not 2
        key = (op, type(value).__name__, repr(value) if isinstance(value, float) else value)
        set_ = object.__setattr__
        set_(self, "op", op)
        set_(self, "args", args)
        set_(self, "value", value)
        set_(self, "_key", key)
        set_(self, "_hash", hash((key, args)))

    def __setattr__(self, name, value):
        raise AttributeError("a formula term is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Term) or self._hash != other._hash:
            return False
        return self._key == other._key and self.args == other.args

    def __reduce__(self):
        return Term, (self.op, self.args, self.value)

    def __repr__(self) -> str:
        return show(self)

    # building terms in Python: a + b, a - b, a * b, a / b, -a (numbers become `num` terms)
    __add__, __radd__ = _binary("add", 2), _binary("add", 2, reverse=True)
    __sub__, __rsub__ = _binary("add", 1), _binary("add", 1, reverse=True)
    __mul__, __rmul__ = _binary("mul"), _binary("mul", reverse=True)
    __truediv__, __rtruediv__ = _binary("div"), _binary("div", reverse=True)

    def __neg__(self) -> Term:
        return Term("neg", (self,))


def sym(name: str) -> Term:
    return Term("sym", (), name)


def num(value: int | float) -> Term:
    return Term("num", (), value)


def symbols(t: Term) -> set[str]:
    """The names of the arguments `t` uses."""
    out, seen, stack = set(), set(), [t]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if x.op == "sym":
            out.add(x.value)
        stack.extend(x.args)
    return out


# ----------------------------------------------------------------------------------------------------- printing

_PREC = {"or": 1, "and": 2, "not": 3, **dict.fromkeys(COMPARES, 4), "add": 5, "mul": 6, "div": 6, "neg": 7,
         "powi": 8, "pow": 8}
_ATOM = 9


def show(t: Term) -> str:
    """`t` as Python-like text: x0*x1 - 2.5, where(x0 > 0, x0, 0), exp(-x0)."""
    memo: dict[int, str] = {}

    def text(x: Term) -> str:
        s = memo.get(id(x))
        if s is None:
            s = memo[id(x)] = _show(x, text)
        return s

    return text(t)


def _show(t: Term, text) -> str:
    op, a = t.op, t.args

    def wrap(x: Term, prec: int) -> str:
        s = text(x)
        return f"({s})" if _PREC.get(x.op, _ATOM) < prec else s

    if op == "sym":
        return t.value
    if op in ("num", "bool"):
        return repr(t.value)
    if op == "add":
        first = wrap(a[0], 5) if t.value else "-" + wrap(a[0], 6)
        rest = "".join((" + " if k < t.value else " - ") + wrap(x, 5 if k < t.value else 6)
                       for k, x in enumerate(a[1:], 1))
        return first + rest
    if op == "neg":
        return "-" + wrap(a[0], 7)
    if op == "mul":
        return "*".join(wrap(x, 6) for x in a)
    if op == "div":
        return f"{wrap(a[0], 6)}/{wrap(a[1], 7)}"
    if op == "powi":
        return f"{wrap(a[0], 9)}**{t.value}"
    if op == "pow":
        return f"{wrap(a[0], 9)}**{wrap(a[1], 8)}"
    if op in COMPARES:
        return f"{wrap(a[0], 5)} {COMPARES[op]} {wrap(a[1], 5)}"
    if op == "not":
        return "~" + wrap(a[0], 4)
    if op in ("and", "or"):
        return (" & " if op == "and" else " | ").join(wrap(x, _PREC[op] + 1) for x in a)
    name = {"select": "where"}.get(op, op)
    extra = [] if t.value is None else [f"{'salt' if op in SALTED else 'at0'}={t.value!r}"]
    return f"{name}({', '.join([text(x) for x in a] + extra)})"


# ----------------------------------------------------------------------------------------------------- plain data


def to_plain(t: Term) -> list:
    """`t` as JSON-able nested lists: [op, value (for ops that have one), *arguments]."""
    memo: dict[int, list] = {}
    for x in _postorder(t):
        head = [x.op] if VOCABULARY[x.op][1] is None else [x.op, x.value]
        memo[id(x)] = head + [memo[id(c)] for c in x.args]
    return memo[id(t)]


def from_plain(data) -> Term:
    """The term `to_plain` gave `data` for; ValueError for anything else (a damaged file entry)."""
    if not isinstance(data, list) or not data or not isinstance(data[0], str) or data[0] not in VOCABULARY:
        raise ValueError(f"not a formula term: {data!r}"[:200])
    op = data[0]
    has_value = VOCABULARY[op][1] is not None
    if has_value and len(data) < 2:
        raise ValueError(f"{op} without its value")
    value = data[1] if has_value else None
    return Term(op, tuple(from_plain(c) for c in data[1 + has_value:]), value)


def _postorder(t: Term):
    """Every distinct node of `t` once, arguments first (iteratively)."""
    seen: set[int] = set()
    stack = [(t, False)]
    while stack:
        x, done = stack.pop()
        if done:
            yield x
        elif id(x) not in seen:
            seen.add(id(x))
            stack.append((x, True))
            stack.extend((c, False) for c in reversed(x.args))
