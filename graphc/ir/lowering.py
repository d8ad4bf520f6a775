"""The vocabulary ops use to say how they lower, without knowing the back end: rules for the kernel forms that
are not a value at a point (reductions and scans, contractions, scatter-adds), as plain data.

An op of kind "reduce" gives a `ReduceRule`, "contract" a `ContractRule`, "scatter" a `ScatterRule`; every other
op gives its value at a point of a loop nest through `Op.lower(node, lx)` (see graphc.codegen.schedule.Lowering
for what `lx` offers: inputs at index expressions, formulas, guards, gathers)."""

from __future__ import annotations

from dataclasses import dataclass

from graphc.ir.formula import Term, sym
from graphc.ir.index import fdiv as floordiv  # floor(a / b) of an index expression, kept whole

__all__ = ["ACC", "NEXT", "ContractRule", "LoopRule", "ReduceRule", "ScatterRule", "floordiv"]

# the arguments of a reduction's combine formula: the accumulated value and the next one
ACC, NEXT = sym("acc"), sym("next")


@dataclass(frozen=True)
class ReduceRule:
    """Reduce input 0 over `axes` with `combine`, a formula of `ACC` and `NEXT`, from `identity` (the value an
    empty position holds: 0.0, or -inf / inf, which integer dtypes read as their smallest / largest value). A
    `scan` (one axis) keeps every running value."""

    label: str
    combine: Term
    identity: float
    axes: tuple[int, ...]
    scan: bool = False
    reverse: bool = False


@dataclass(frozen=True)
class ContractRule:
    """out = op(in0) @ op(in1) over the last two axes (leading axes are batch dims, broadcast numpy-style), where
    op transposes the last two axes when `ta` / `tb` is set."""

    ta: bool
    tb: bool


@dataclass(frozen=True)
class ScatterRule:
    """out = in0 with in2 (updates) added at the positions in1 (indices) names along `axis`; duplicates add up."""

    axis: int


@dataclass(frozen=True)
class LoopRule:
    """A loop (kind "loop", the scan op): run `body` (a graph over placeholders: carries, per-step slices of the
    xs, loop-invariant captures) `length` times, the carries feeding the next step; `reverse` walks the steps
    from the last; `checkpoint` (None or k) keeps every k-th carry for the gradient instead of all."""

    body: object
    n_carry: int
    n_x: int
    length: object
    reverse: bool
    checkpoint: int | None
