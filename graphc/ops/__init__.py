"""The op families and the DSL functions that build them. `OPS` is the op table."""

from graphc.ops import api as _api  # noqa: F401 - installs the Tensor operators
from graphc.ops.compose import (
    all,  # noqa: A004
    any,  # noqa: A004
    arange,
    argmax,
    argmin,
    clip,
    cumprod,
    diagonal,
    eye,
    hstack,
    isclose,
    isfinite,
    isinf,
    isnan,
    log_softmax,
    logaddexp,
    logsumexp,
    mean,
    moveaxis,
    nan_to_num,
    nanmean,
    nansum,
    one_hot,
    softmax,
    square,
    std,
    trace,
    var,
    vstack,
)
from graphc.ops.control import stop_gradient
from graphc.ops.conv import avg_pool1d, avg_pool2d, conv1d, conv2d, max_pool1d, max_pool2d
from graphc.ops.core import KINDS, OPS, EvalContext, Op, Tensor, apply, as_tensor, constant
from graphc.ops.gather import scatter_add, take, take_along_axis
from graphc.ops.linalg import einsum, matmul
from graphc.ops.movement import (
    broadcast_to,
    concat,
    concatenate,
    expand_dims,
    flip,
    outer,
    pad,
    repeat,
    reshape,
    split,
    squeeze,
    stack,
    swapaxes,
    tile,
    transpose,
    tril,
    triu,
    windows,
)
from graphc.ops.pointwise import (
    ElementwiseOp,
    add,
    arccos,
    arccosh,
    arcsin,
    arcsinh,
    arctan,
    arctan2,
    arctanh,
    broadcast_like,
    cast,
    ceil,
    cos,
    cosh,
    divide,
    elementwise,
    equal,
    erf,
    exp,
    exp2,
    floor,
    full_like,
    greater,
    greater_equal,
    hypot,
    less,
    less_equal,
    log,
    log2,
    log10,
    logical_and,
    logical_not,
    logical_or,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    power,
    reciprocal,
    rsqrt,
    sign,
    sin,
    sinh,
    sqrt,
    subtract,
    tan,
    tanh,
    trunc,
    where,
)
from graphc.ops.pointwise import abs_ as abs  # noqa: A004
from graphc.ops.pointwise import expm1_ as expm1
from graphc.ops.pointwise import floor_divide_ as floor_divide
from graphc.ops.pointwise import log1p_ as log1p
from graphc.ops.pointwise import relu_ as relu
from graphc.ops.pointwise import remainder_ as remainder
from graphc.ops.pointwise import round_ as round  # noqa: A004
from graphc.ops.pointwise import sigmoid_ as sigmoid
from graphc.ops.pointwise import softplus_ as softplus
from graphc.ops.random import dropout, rng_key
from graphc.ops.reduce import cumsum, max, min, prod, sum  # noqa: A004
from graphc.ops.scan import fori_loop, full, ones, ones_like, scan, zeros, zeros_like
from graphc.ops.sources import dim_value, input, iota, param  # noqa: A004

__all__ = [
    "OPS", "KINDS", "Op", "Tensor", "EvalContext", "ElementwiseOp", "apply", "as_tensor", "constant", "abs", "add",
    "broadcast_like", "broadcast_to", "cast", "clip", "dim_value", "divide", "dropout", "elementwise", "equal",
    "erf", "exp", "expand_dims", "expm1", "full_like", "greater", "greater_equal", "input", "iota", "less",
    "less_equal", "log", "log1p", "log_softmax", "logical_and", "logical_not", "logical_or", "logsumexp", "matmul",
    "max", "maximum", "mean", "minimum", "multiply", "negative", "not_equal", "one_hot", "param", "power", "relu",
    "reshape", "rng_key", "sigmoid", "sign", "softmax", "softplus", "sqrt", "stop_gradient", "subtract", "sum",
    "tanh", "transpose", "var", "where", "argmax", "argmin", "concatenate", "cumsum", "min", "prod", "pad",
    "scatter_add", "split", "stack", "take", "windows", "scan", "zeros", "conv1d", "conv2d", "max_pool1d", "max_pool2d",
    "avg_pool1d", "avg_pool2d", "floor", "ceil", "floor_divide", "remainder",
    # numpy's names for more of the same (compositions, or elementwise ops of the C library's functions)
    "concat", "squeeze", "flip", "swapaxes", "full", "ones", "zeros_like", "ones_like", "square", "std", "logaddexp",
    "isnan", "isinf", "isfinite", "any", "all", "round", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh",
    "cosh", "arcsinh", "arccosh", "arctanh", "einsum", "fori_loop", "tile", "repeat", "outer", "tril", "triu",
    "take_along_axis",
    "log2", "log10", "exp2", "reciprocal", "rsqrt", "arctan2", "hypot", "trunc", "nan_to_num", "isclose", "nansum",
    "nanmean", "cumprod", "moveaxis", "hstack", "vstack", "arange", "eye", "diagonal", "trace",
]
