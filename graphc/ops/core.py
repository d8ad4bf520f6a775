"""The op protocol, the op table, the user-facing Tensor handle, and node construction with located errors.

Every op is one object with its shape rule (`infer`), its numpy reference semantics (`reference`), its
vector-Jacobian product written with other graph ops (`vjp`), and its lowering: its value at a point of a loop
nest (`lower`, for elementwise, movement, source and random ops) or, by its `kind`, a rule for the kernel it
becomes (`reduce_rule`, `contract_rule`, `scatter_rule`, `loop_rule`; see graphc.ir.lowering). The op table `OPS` lists
them all; a test walks it and compiles every op.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from graphc.errors import CompileError, DTypeError, GraphcError, ShapeError
from graphc.ir.node import ArrayValue, Node, capture_source
from graphc.ir.shapes import FLOAT_DTYPES, INT_DTYPES, Shape, as_dtype, float_for

KINDS = ("source", "elementwise", "reduce", "contract", "movement", "scatter", "random", "identity", "loop")

OPS: dict[str, Op] = {}


@dataclass
class EvalContext:
    """What the reference evaluator tells an op besides its inputs."""

    float_dtype: np.dtype  # float32, or float64 when any float value fed in is float64
    training: bool
    dims: dict  # symbol -> int, bound from the inputs' shapes

    def dtype(self, dtype: str) -> np.dtype:
        return self.float_dtype if dtype in FLOAT_DTYPES else np.dtype(dtype)


class Op:
    """One primitive. Subclasses fill in the rules; one instance per op (or per parametrization)."""

    name: str
    kind: ClassVar[str]
    differentiable: bool = True
    hidden_attrs: tuple[str, ...] = ()
    # the op's value depends on the mode (dropout, batch norm's switch) or on the key training feeds per step
    # (gc.random's draws): a graph holding one trains in training mode (`ir.node.needs_training_mode`)
    training_mode: ClassVar[bool] = False

    def in_mode(self, node: Node, training: bool) -> Node | None:
        """What a program of one mode computes in place of `node` (None: the node itself): a mode-dependent op
        says which of its inputs it is in that mode. The compiler's modes stage rewrites by it, and the reference
        evaluator walks by it (what a mode reads, e.g. whether it reads the random key)."""
        return None

    def infer(self, inputs: Sequence[Node], attrs: dict) -> tuple[Shape, str]:
        raise NotImplementedError

    def reference(self, node: Node, args: list[np.ndarray], ctx: EvalContext) -> np.ndarray:
        raise NotImplementedError

    def fold(self, node: Node, args: list[np.ndarray], ctx: EvalContext) -> np.ndarray:
        """The node's value for constant inputs, as the compiler's constant folding computes it: the reference's,
        unless the op can give it with less (an elementwise op computes its formula term, with no sympy)."""
        return self.reference(node, args, ctx)

    def vjp(self, node: Node, g: Node) -> Sequence[Node | None]:
        """Cotangents for each input given the output's cotangent `g` (None: no gradient flows there)."""
        raise NotImplementedError

    # -- lowering (the back end asks; an op that cannot answer is a compile error naming it, never a default)
    leaf: ClassVar[bool] = False  # an input or a parameter: the caller's array, never computed
    cost: int = 1  # what computing one element inline costs (1: an add; 8: a transcendental function)

    def lower(self, node: Node, lx) -> Any:
        """The node's value at one point of a kernel's loop nest, built with the lowering context `lx`."""
        raise self._no_lowering(node, "lower")

    def reduce_rule(self, node: Node):
        raise self._no_lowering(node, "reduce_rule")

    def contract_rule(self, node: Node):
        raise self._no_lowering(node, "contract_rule")

    def scatter_rule(self, node: Node):
        raise self._no_lowering(node, "scatter_rule")

    def loop_rule(self, node: Node):
        raise self._no_lowering(node, "loop_rule")

    def needs_memory(self, node: Node) -> tuple[int, ...]:
        """Inputs that must be in memory (row-major arrays) for this op's kernel."""
        return ()

    def is_view(self, node: Node) -> bool:
        """Whether the node's row-major elements are its input 0's, in the same order (a reshape)."""
        return False

    def moves_inner_axis(self, node: Node) -> bool:
        """Whether reading the node along its last axis reads input 0 along another axis (a transpose that moves
        the last axis): inlined, input 0's expression would be evaluated at strided points, not in vectors."""
        return False

    def constant_array(self, node: Node) -> np.ndarray | None:
        """The data of a constant leaf (None for every other op)."""
        return None

    def _no_lowering(self, node: Node, rule: str) -> CompileError:
        return CompileError(f"the op {self.name!r} ({node.type_str}, at {node.source.where()}) has no native "
                            f"lowering: its class {type(self).__name__} defines no `{rule}` for its kind "
                            f"{self.kind!r}; evaluate it with gc.evaluate, or give the op that rule")

    def fingerprint(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def register(op: Op) -> Op:
    if op.name in OPS and OPS[op.name] is not op:
        raise GraphcError(f"an op named {op.name!r} already exists; choose another name")
    OPS[op.name] = op
    return op


def describe(node: Node) -> str:
    """How an error message names a tensor: its name if it has one, else its op, with its type."""
    label = node.name or node.label
    return f"{label}: {node.type_str}"


class Tensor(Node):
    """The user's handle on a graph node. Arithmetic operators build new nodes (see graphc.ops.api).

    `==` is structural identity, as for any hash-consed node (building `a*b` twice gives the same tensor);
    use `gc.equal` / `gc.not_equal` for elementwise comparison. `<`, `<=`, `>`, `>=` build comparison nodes."""

    __slots__ = ()

    def __bool__(self) -> bool:
        raise GraphcError(
            f"the truth value of a symbolic tensor ({describe(self)}) is unknown while building the graph; "
            "use gc.where(cond, a, b) for a data-dependent choice"
        )

    def _no_value(self, what: str):
        raise GraphcError(f"{what}() of a symbolic tensor ({describe(self)}): it has no value while the graph is "
                          "built; evaluate it first (gc.evaluate(t, values), or a compiled function's result), or keep "
                          "it a tensor (gc.cast(t, 'float32') for a dtype)")

    def __float__(self) -> float:
        self._no_value("float")

    def __int__(self) -> int:
        self._no_value("int")

    def __complex__(self) -> complex:
        self._no_value("complex")

    def __len__(self) -> int:
        _reraise_numpy_retry()
        if not self.shape:
            raise GraphcError(f"len() of a 0-d tensor ({describe(self)})")
        d = self.shape[0]
        if not isinstance(d, int):
            raise GraphcError(f"len() of a tensor whose first dim is symbolic ({describe(self)})")
        return d

    def __iter__(self):
        _reraise_numpy_retry()
        raise GraphcError(f"tensors cannot be iterated while building a graph ({describe(self)})")

    def _repr_svg_(self):  # notebooks: draw lazily, viz sits above ops
        from graphc.viz import svg

        return svg.to_svg(self)


def _reraise_numpy_retry() -> None:
    """numpy's functions (np.clip, np.sum, ...) call the tensor's method of that name and, on a TypeError,
    retry on np.asarray(tensor) from inside their except clause (a method whose signature differs from
    ndarray's, pandas' case). A graphc DTypeError is a TypeError: that retry would replace its message by this
    iteration's. Inside that retry (numpy's `_wrapit` calling, and our error being handled: not any `len(t)` in
    an except block), the user's error is what reaches them (as a GraphcError: a TypeError raised here would read
    to numpy's converter as "not a sequence")."""
    err = sys.exc_info()[1]
    if not isinstance(err, GraphcError):
        return
    f = sys._getframe(2)  # past this helper and __len__/__iter__: numpy's converter is C, its caller _wrapit
    if f.f_code.co_name == "_wrapit" and "numpy" in f.f_code.co_filename:
        raise (err if not isinstance(err, TypeError) else GraphcError(str(err))) from err


def located(err: GraphcError, node_inputs: Sequence[Node], op_name: str) -> GraphcError:
    src = capture_source()
    where = src.where()
    names = ", ".join(describe(i) for i in node_inputs)
    msg = f"{op_name}: {err} (inputs {names}) at {where}" if names else f"{op_name}: {err} at {where}"
    return type(err)(msg)


def apply(op: Op, inputs: Sequence[Node], meta: dict | None = None, **attrs: Any) -> Tensor:
    """Build (or find) the node `op(inputs, attrs)`, checking shapes and dtypes now, at the user's line."""
    inputs = tuple(inputs)
    try:
        shape, dtype = op.infer(inputs, attrs)
    except (ShapeError, DTypeError) as err:
        raise located(err, inputs, op.name) from None
    return Tensor.make(op, inputs, shape, dtype, attrs, meta)


def is_tensor(x: Any) -> bool:
    return isinstance(x, Node)


def _default_dtype(arr: np.ndarray, weak: bool) -> str:
    """Weak (Python) numbers default to float32/int32; numpy arrays keep their own dtype."""
    kind = arr.dtype.kind
    if kind == "b":
        return "bool"
    if kind == "f":
        return "float32" if weak else as_dtype(arr.dtype)
    if kind in "iu":
        if weak:  # a Python int: int32 where it fits (2**40 is int64, not wrapped)
            return "int32" if int_fits(arr, "int32") else "int64"
        return "int64" if arr.dtype.itemsize == 8 else "int32"
    raise DTypeError(f"cannot make a graphc constant from {arr.dtype} data")


def int_fits(arr: np.ndarray, dtype: str) -> bool:
    """Whether the integers in `arr` are values of the int `dtype`."""
    if arr.size == 0:
        return True
    info = np.iinfo(dtype)
    return bool(info.min <= arr.min() and arr.max() <= info.max)


def _out_of_range_int(arr: np.ndarray, dtype: str) -> str:
    info = np.iinfo(dtype)
    bad = arr.ravel()[np.flatnonzero((arr < info.min) | (arr > info.max))[0]]
    return f"{int(bad)} does not fit {dtype} ({info.min} to {info.max})"


def _array_like(x: Any) -> bool:
    """A numpy array, or another library's array (JAX's, PyTorch's: an object with __array__ and a dtype): it has
    a dtype of its own, kept as a numpy array's is (a float64 jnp array was a float32 constant, as a Python list)."""
    if isinstance(x, np.ndarray):
        return True
    return not isinstance(x, (np.generic, list, tuple, str, bytes, int, float, complex)) and \
        hasattr(x, "__array__") and hasattr(x, "dtype")


def _dim_tensor(d, like: Node | None) -> Tensor:
    """A symbolic dim met in arithmetic (`gc.sum(x) / x.shape[0]` with a batch "N", JAX's static `x.shape[0]`): its
    run-time value, a weak number taking the dtype of the tensor it meets, read from the shape of a tensor that
    `like` is computed from and whose shape has the dim's symbols."""
    from graphc.ir.node import topo_order
    from graphc.ir.shapes import free_symbols
    from graphc.ops.sources import dim_value

    need = d.free_symbols
    if like is not None:
        dtype = like.dtype if like.dtype in FLOAT_DTYPES or like.dtype in INT_DTYPES else "int32"
        for n in (like, *reversed(topo_order([like]))):
            if need <= free_symbols(n.shape):
                return dim_value(d, n, dtype)
    where = "no tensor it meets is computed from" if like is not None else "it meets no tensor, so nothing gives it"
    raise ShapeError(f"the symbolic dim {d} is used as a number, but {where} a tensor with {d} in its shape; use "
                     f"gc.dim_value({str(d)!r}, x) with such an x (an input) (at {capture_source().where()})")


def constant(value: Any, dtype: str | None = None) -> Tensor:
    """A constant tensor. Python numbers and lists default to float32 (int32 for integers); numpy arrays (and
    other libraries' arrays: JAX's, PyTorch's) keep their dtype unless `dtype` is given."""
    from graphc.ops.sources import CONSTANT

    if isinstance(value, Node):
        raise GraphcError("gc.constant() takes a number or an array, not a tensor")
    from graphc.ir.dims import Dim

    if isinstance(value, Dim):
        raise ShapeError(f"gc.constant({value}): a symbolic dim has no value while the graph is built; "
                         f"gc.dim_value({str(value)!r}, x) is its value in the graph (x: an input with {value} in its "
                         f"shape) (at {capture_source().where()})")
    try:
        arr = np.asarray(value)
    except Exception:
        raise DTypeError(f"gc.constant: cannot make a constant from {type(value).__name__}") from None
    dtype = as_dtype(dtype, "gc.constant") if dtype is not None else _default_dtype(
        arr, not (isinstance(value, np.generic) or _array_like(value)))
    if arr.dtype.kind in "iu" and dtype in ("int32", "int64") and not int_fits(arr, dtype):
        raise DTypeError(f"gc.constant: {_out_of_range_int(arr, dtype)}: it would wrap around; use a wider dtype")
    return apply(CONSTANT, (), value=ArrayValue(arr.astype(dtype)))


def as_tensor(x: Any, like: Node | None = None) -> Tensor:
    """A tensor for `x`. Python numbers and lists, and numpy scalars (`np.sqrt(d)`, `np.float32(lr)`: numbers to
    a PyTorch user, as torch treats them), are weakly typed: they take the dtype of the tensor they meet when that
    dtype can hold them (a float meeting an int tensor is the float that int becomes: `float_for`). numpy arrays,
    0-d ones too, keep their dtype, as do other libraries' arrays (JAX's, PyTorch's)."""
    if isinstance(x, Node):
        return x  # type: ignore[return-value]
    from graphc.ir.dims import Dim

    if isinstance(x, Dim):
        return _dim_tensor(x, like)
    weak = not _array_like(x)
    if weak and like is not None:
        try:
            arr = np.asarray(x)
        except Exception:
            raise DTypeError(f"cannot use {type(x).__name__} as a tensor") from None
        own = _default_dtype(arr, True)
        if arr.dtype.kind in "iu" and like.dtype in ("int32", "int64") and not int_fits(arr, like.dtype):
            # numpy 2 raises OverflowError; wrapping it would compute with another number
            raise DTypeError(f"the Python int {_out_of_range_int(arr, like.dtype)}, the dtype of {describe(like)} "
                             f"it meets (numpy raises OverflowError); cast that tensor first: gc.cast(t, 'int64') "
                             f"or gc.cast(t, 'float64')")
        if like.dtype in FLOAT_DTYPES or own == like.dtype or (own == "int32" and like.dtype == "int64"):
            return constant(arr, like.dtype)
        if own in FLOAT_DTYPES and like.dtype in INT_DTYPES:
            own = float_for(like.dtype)
        return constant(arr, own)
    return constant(x)
