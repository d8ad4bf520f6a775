"""Dropout, with its mask from a counter-based hash RNG: mask(key, salt, i) depends on nothing else, so the
native backend reproduces the reference bit for bit and a run is repeatable from its seed."""

from __future__ import annotations

import zlib

import numpy as np

from graphc.errors import GraphcError
from graphc.ir.formula import Term, num, sym
from graphc.ir.node import Node
from graphc.ir.shapes import FLOAT_DTYPES, eval_shape
from graphc.ops.core import Op, Tensor, apply, as_tensor, register
from graphc.ops.sources import input as _input

KEY_NAME = "rng_key"
GOLDEN = 0x9E3779B9
M1, M2 = 0x7FEB352D, 0x846CA68B


def lowbias32(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (Chris Wellons' lowbias32): full avalanche, cheap in SIMD."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(M1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(M2)
    x ^= x >> np.uint32(16)
    return x


def stream(key: int, salt: int) -> int:
    """The per-(step, layer) stream constant."""
    k = np.uint64(np.int64(key).view(np.uint64))
    lo, hi = np.uint32(k & np.uint64(0xFFFFFFFF)), np.uint32(k >> np.uint64(32))
    s = lowbias32(np.asarray([lo ^ lowbias32(np.asarray([hi]))[0]], dtype=np.uint32))[0]
    return int(lowbias32(np.asarray([s ^ np.uint32(salt)], dtype=np.uint32))[0])


def threshold(keep_prob: float) -> int:
    """Element i is kept when the top 24 bits of its hash are below this (exact in any backend)."""
    return int(round(keep_prob * (1 << 24)))


def bits24(key: int, salt: int, i) -> np.ndarray:
    """The counter hash's top 24 bits for the element indices `i` (any integers, taken mod 2^32): what dropout's
    mask compares with its threshold and what gc.random's draws are made of (uint32 in [0, 2^24))."""
    s = np.uint32(stream(key, salt))
    with np.errstate(over="ignore"):
        ii = np.asarray(i).astype(np.uint64).astype(np.uint32)
        h = lowbias32(lowbias32(ii * np.uint32(GOLDEN) + s) ^ s)
    return h >> np.uint32(8)


def keep_mask(key: int, salt: int, keep_prob: float | None, n: int, thresh: int | None = None,
              offset: int = 0) -> np.ndarray:
    thresh = threshold(keep_prob) if thresh is None else thresh
    return bits24(key, salt, np.arange(n, dtype=np.uint64) + np.uint64(offset % 2**64)) < np.uint32(thresh)


class Dropout(Op):
    """x * mask / keep in training; the identity in inference. Inputs: (x, rng key) with the keep probability
    an attribute, or (x, rng key, keep) with it a float32 scalar read at run time (a standalone training
    binary takes it as a command-line value). With the attribute `offset`, a last int64 scalar input is added to
    every element's index: a data-parallel rank whose share of the batch starts at row r passes r * (row size),
    so its rows get the masks they have in the whole batch."""
    training_mode = True

    name = "dropout"
    kind = "random"

    def infer(self, inputs, attrs):
        x, key = inputs[:2]
        if attrs.get("offset"):
            off, inputs = inputs[-1], inputs[:-1]
            if off.shape != () or off.dtype != "int64":
                raise GraphcError("dropout's index offset must be a scalar int64 tensor")
        if x.dtype not in FLOAT_DTYPES:
            raise GraphcError(f"dropout needs a float tensor, got {x.dtype}")
        if key.shape != () or key.dtype != "int64":
            raise GraphcError("dropout's key must be a scalar int64 tensor")
        if len(inputs) == 3 and (inputs[2].shape != () or inputs[2].dtype != "float32"):
            raise GraphcError("dropout's run-time keep probability must be a float32 scalar")
        return x.shape, x.dtype

    def in_mode(self, node, training):  # the identity outside training: neither key nor keep is read
        return None if training else node.inputs[0]

    def reference(self, node, args, ctx):
        x = args[0]
        if not ctx.training:
            return x
        shape = eval_shape(node.shape, ctx.dims)
        n = int(np.prod(shape))
        offset = 0
        if node.attrs.get("offset"):
            offset, args = int(args[-1]), args[:-1]
        if len(args) == 3:
            keep32 = np.float32(args[2])
            mask = keep_mask(int(args[1]), node.attrs["salt"], None, n, int(np.rint(keep32 * np.float32(1 << 24))),
                             offset)
            keep = np.asarray(keep32, dtype=x.dtype)
        else:
            mask = keep_mask(int(args[1]), node.attrs["salt"], node.attrs["keep_prob"], n, offset=offset)
            keep = np.asarray(node.attrs["keep_prob"], dtype=x.dtype)
        return np.where(mask.reshape(shape), x / keep, np.zeros((), x.dtype)).astype(x.dtype)

    def vjp(self, node, g):
        # the same mask (same key, salt and element index) scales the cotangent
        return (apply(DROPOUT, (g, *node.inputs[1:]), **node.attrs), *([None] * (len(node.inputs) - 1)))

    def lower(self, node, lx):
        """keep_bit(flat index, key, salt, threshold) chooses x / keep or 0; the threshold is rint(keep * 2^24)
        of a run-time keep probability, or the constant `threshold(keep_prob)`."""
        x0, x1, x2, b = sym("x0"), sym("x1"), sym("x2"), sym("b")
        x, key = lx.input(0), lx.input(1)
        index = lx.flat_index("int64")
        n_in = len(node.inputs)
        if node.attrs.get("offset"):
            n_in -= 1
            index = lx.formula("offset_index", x0 + x1, ["x0", "x1"], [index, lx.input(n_in)], "int64")
        if n_in == 3:
            keep = lx.input(2)
            thresh = lx.formula("threshold", Term("rint", ((1 << 24) * x0,)), ["x0"], [keep], "float32")
            divisor = lx.convert(keep, node.dtype)
        else:
            thresh = lx.const(float(threshold(node.attrs["keep_prob"])), "float32")
            divisor = lx.const(node.attrs["keep_prob"], node.dtype)
        bit = lx.formula(f"keep_bit[salt={node.attrs['salt']}]", Term("keep_bit", (x0, x1, x2), node.attrs["salt"]),
                         ["x0", "x1", "x2"], [index, key, thresh], "bool")
        return lx.formula("dropout", Term("select", (b, x0 / x1, num(0))), ["x0", "x1", "b"], [x, divisor, bit],
                          node.dtype)


DROPOUT = register(Dropout())


def rng_key() -> Tensor:
    """The scalar int64 input that seeds every dropout mask; the training loop feeds a fresh one per step."""
    return _input(KEY_NAME, (), "int64")


def dropout(x, keep_prob=None, salt: int | None = None, *, p: float | None = None) -> Tensor:
    """Inverted dropout: keep each element with probability `keep_prob` and scale it by 1/keep_prob. Or, as
    PyTorch's `F.dropout(x, p)`, give the probability of dropping: `p=` (keyword only, so that the two are never
    confused: `dropout(x, 0.2)` keeps 20%, `dropout(x, p=0.2)` keeps 80%).

    The mask is a hash of (rng key, salt, element index). `salt` tells layers apart; by default it is derived
    from x's structure, so two dropouts of the very same tensor share a mask unless given different salts.
    `keep_prob` may be a float32 scalar tensor (an input), read at run time."""
    if (keep_prob is None) == (p is None):
        raise GraphcError("dropout: give the keep probability (dropout(x, keep_prob)) or PyTorch's drop "
                          f"probability (dropout(x, p=...)), one of them; got keep_prob={keep_prob!r}, p={p!r}")
    if p is not None:
        if isinstance(p, Node) or isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise GraphcError(f"dropout: p (the probability of dropping an element) must be a number in [0, 1), "
                              f"got {p!r}")
        keep_prob = 1.0 - float(p)
    x = as_tensor(x)
    if isinstance(keep_prob, Node):
        if salt is None:
            salt = zlib.crc32(x.digest().encode())
        return apply(DROPOUT, (x, rng_key(), keep_prob), salt=int(salt) & 0xFFFFFFFF)
    keep_prob = float(keep_prob)
    if not 0.0 < keep_prob <= 1.0:
        raise GraphcError(f"dropout: keep_prob must be in (0, 1], got {keep_prob}")
    if keep_prob == 1.0:
        return x
    if salt is None:
        salt = zlib.crc32(x.digest().encode())
    return apply(DROPOUT, (x, rng_key()), keep_prob=keep_prob, salt=int(salt) & 0xFFFFFFFF)


# ------------------------------------------------------------------------------------------------- gc.random

# Each distribution hashes the user's salt with its own constant, so a draw never shares its stream with a
# dropout mask (whose salts are small layer numbers or crc32s of tensors) or with a draw of another distribution
# given the same salt. The normal's second uniform comes from a further stream of the same hash.
_DOMAIN = {"uniform": 0x55A1F0E3, "normal": 0x4E0B3A7D, "bernoulli": 0x2B9C6D15}
_SECOND = 0x68E31DA4
DISTRIBUTIONS = tuple(_DOMAIN)


def _mix(v: int) -> int:
    return int(lowbias32(np.asarray([v & 0xFFFFFFFF], dtype=np.uint32))[0])


def second_salt(salt: int) -> int:
    """The stream of a normal draw's second uniform (the angle of Box-Muller)."""
    return _mix(salt ^ _SECOND)


def draw_salt(dist: str, salt, where: str) -> int:
    """The stream salt of a draw of `dist` with the user's salt (an int, or a str: its crc32)."""
    if isinstance(salt, str):
        user = zlib.crc32(salt.encode())
    elif isinstance(salt, (int, np.integer)) and not isinstance(salt, (bool, np.bool_)):
        user = int(salt) & 0xFFFFFFFF
    else:
        raise GraphcError(f"{where}: salt must be an int or a str (it names the draw: draws with different salts "
                          f"are independent, the same salt and key give the same numbers), got {salt!r}")
    return _mix(user ^ _DOMAIN[dist])


class RandomDraw(Op):
    """A draw of gc.random: uniform (attrs `a`, `b`: low and high - low) or normal (`a`, `b`: mean and standard
    deviation) numbers of the attribute `shape` and float `dtype`, element i a function of (rng key, salt, i)
    alone. Inputs: the rng key, and optionally a tensor of the same shape that only binds its symbolic dims (the
    `_like` forms). Its value does not depend on its inputs' values differentiably: no gradient."""
    training_mode = True

    name = "random"
    kind = "random"
    differentiable = False
    hidden_attrs = ("dtype",)

    def infer(self, inputs, attrs):
        key = inputs[0]
        if key.shape != () or key.dtype != "int64":
            raise GraphcError("a random draw's key must be a scalar int64 tensor (gc.rng_key())")
        if len(inputs) > 2 or (len(inputs) == 2 and tuple(inputs[1].shape) != tuple(attrs["shape"])):
            raise GraphcError("a random draw takes its key and at most one tensor of its own shape")
        if attrs["dist"] not in ("uniform", "normal") or attrs["dtype"] not in FLOAT_DTYPES:
            raise GraphcError(f"no random draw {attrs['dist']} of {attrs['dtype']}")
        return attrs["shape"], attrs["dtype"]

    def reference(self, node, args, ctx):
        from graphc.ops import numeric

        shape = eval_shape(node.shape, ctx.dims)
        fn = numeric.rand_uniform if node.attrs["dist"] == "uniform" else numeric.rand_normal
        a = np.asarray(node.attrs["a"], dtype=node.dtype)
        v = fn(a, np.asarray(node.attrs["b"], dtype=node.dtype), np.arange(int(np.prod(shape)), dtype=np.int64),
               int(args[0]), node.attrs["salt"])
        return np.asarray(v, dtype=node.dtype).reshape(shape).astype(ctx.dtype(node.dtype))

    def vjp(self, node, g):
        return (None,) * len(node.inputs)

    def lower(self, node, lx):
        x0, x1, x2, x3 = sym("x0"), sym("x1"), sym("x2"), sym("x3")
        dist, salt = node.attrs["dist"], node.attrs["salt"]
        args = [lx.const(node.attrs["a"], node.dtype), lx.const(node.attrs["b"], node.dtype), lx.flat_index("int64"),
                lx.input(0)]
        return lx.formula(f"{dist}[salt={salt}]", Term(f"rand_{dist}", (x0, x1, x2, x3), salt),
                          ["x0", "x1", "x2", "x3"], args, node.dtype)


RANDOM = register(RandomDraw())


def _shape_of(shape, like, what: str):
    """(shape, the tensor that binds its dims or None) from exactly one of `shape` and `like`."""
    from graphc.ir.shapes import as_shape

    if (shape is None) == (like is None):
        raise GraphcError(f"{what}: give the shape (a tuple of ints and dim names, e.g. ('N', 16)) or like= (a "
                          f"tensor whose shape to take), one of them; got shape={shape!r}, like={like!r}")
    if like is not None:
        like = as_tensor(like)
        return tuple(like.shape), like
    if isinstance(shape, Node):
        raise GraphcError(f"{what}: the shape must be a tuple of ints and dim names, got a tensor; to draw in a "
                          "tensor's shape, pass it as like=")
    return as_shape(shape, what), None


def _float_dtype(dtype, like, what: str) -> str:
    from graphc.ir.shapes import as_dtype

    if dtype is None:
        dtype = like.dtype if like is not None and like.dtype in FLOAT_DTYPES else "float32"
    dtype = as_dtype(dtype, what)
    if dtype not in FLOAT_DTYPES:
        raise GraphcError(f"{what}: dtype must be float32 or float64, got {dtype} (for integers or booleans, cast "
                          "a uniform draw, or use gc.random.bernoulli)")
    return dtype


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _draw(dist: str, shape, like, dtype, salt, a: float, b: float, what: str, domain: str | None = None) -> Tensor:
    shape, like = _shape_of(shape, like, what)
    dtype = _float_dtype(dtype, like, what)
    if salt is None:  # a draw's default name: its distribution (and shape, through the node's identity)
        salt = 0
    inputs = (rng_key(),) if like is None else (rng_key(), like)
    return apply(RANDOM, inputs, dist=dist, shape=shape, dtype=dtype, salt=draw_salt(domain or dist, salt, what),
                 a=float(a), b=float(b))


def _param(v, name: str, what: str):
    if _number(v):
        if not np.isfinite(v):
            raise GraphcError(f"{what}: {name} must be finite, got {v!r}")
        return float(v)
    if isinstance(v, Node):
        if v.dtype not in FLOAT_DTYPES:
            raise GraphcError(f"{what}: {name} must be a float tensor or a number, got {v.type_str}")
        return v
    raise GraphcError(f"{what}: {name} must be a number or a float tensor, got {type(v).__name__} {v!r}")


def uniform(shape=None, *, low=0.0, high=1.0, dtype=None, salt=None, like=None) -> Tensor:
    """Uniform numbers in [low, high) of `shape` (ints and dim names: ('N', 16) is sized by whatever input
    binds N) or of `like`'s shape (`like=x`, whose values are not read; its float dtype is the default dtype).

    Element i is low + (high - low) * u with u = h(rng key, salt, i) / 2^24, the top 24 bits of dropout's
    counter hash: the same numbers in gc.evaluate and compiled code at any thread count, and, for an element of
    a batch, whatever the batch size. `salt` (an int or a str) names the draw, as a split key names one in JAX:
    different salts give independent numbers, the same salt and key the same numbers (salt=None is salt 0). The
    key is gc.rng_key(), an input fed per call (training feeds a fresh one per step). `low` and `high` may be
    tensors: the result is then that arithmetic, differentiable in them."""
    what = "gc.random.uniform"
    low, high = _param(low, "low", what), _param(high, "high", what)
    if isinstance(low, float) and isinstance(high, float):
        if not low < high:
            raise GraphcError(f"{what}: low must be below high, got low={low}, high={high}")
        return _draw("uniform", shape, like, dtype, salt, low, high - low, what)
    u = _draw("uniform", shape, like, dtype, salt, 0.0, 1.0, what)
    return low + (high - low) * u


def normal(shape=None, *, mean=0.0, std=1.0, dtype=None, salt=None, like=None) -> Tensor:
    """Normal numbers of mean `mean` and standard deviation `std`, of `shape` or of `like`'s shape (as
    gc.random.uniform; keys and salts alike). Box-Muller on two 24-bit uniforms of the counter hash, computed in
    float64: sqrt(-2 log u1) * cos(2 pi u2) with u1 in (0, 1] (so |z| <= 5.77: the tails beyond are not drawn,
    a 1e-8 mass). With tensors for `mean` or `std` the draw is mean + std * (a standard normal): the
    reparameterization, whose gradient flows to mean and std."""
    what = "gc.random.normal"
    mean, std = _param(mean, "mean", what), _param(std, "std", what)
    if isinstance(mean, float) and isinstance(std, float):
        if std < 0:
            raise GraphcError(f"{what}: std must be >= 0, got {std}")
        return _draw("normal", shape, like, dtype, salt, mean, std, what)
    z = _draw("normal", shape, like, dtype, salt, 0.0, 1.0, what)
    return mean + std * z


def bernoulli(p, shape=None, *, salt=None, like=None) -> Tensor:
    """Booleans that are True with probability `p` (a number in [0, 1], or a float tensor broadcasting to the
    shape), of `shape` or of `like`'s shape: u < p for a uniform draw u of 24 bits (so p is taken to 2^-24).
    Keys and salts as gc.random.uniform's; not differentiable in p."""
    from graphc.ops.pointwise import less

    what = "gc.random.bernoulli"
    p = _param(p, "p", what)
    if isinstance(p, float) and not 0.0 <= p <= 1.0:
        raise GraphcError(f"{what}: p must be a probability in [0, 1], got {p}")
    u = _draw("uniform", shape, like, "float32", salt, 0.0, 1.0, what, domain="bernoulli")
    return less(u, p)


def uniform_like(x, *, low=0.0, high=1.0, dtype=None, salt=None) -> Tensor:
    """gc.random.uniform(like=x, ...): x's shape and (float) dtype."""
    return uniform(low=low, high=high, dtype=dtype, salt=salt, like=x)


def normal_like(x, *, mean=0.0, std=1.0, dtype=None, salt=None) -> Tensor:
    """gc.random.normal(like=x, ...): x's shape and (float) dtype, e.g. the noise of a reparameterized sample
    mu + sigma * gc.random.normal_like(mu)."""
    return normal(mean=mean, std=std, dtype=dtype, salt=salt, like=x)


def bernoulli_like(x, p, *, salt=None) -> Tensor:
    """gc.random.bernoulli(p, like=x): x's shape."""
    return bernoulli(p, salt=salt, like=x)


__all__ = ["uniform", "normal", "bernoulli", "uniform_like", "normal_like", "bernoulli_like", "rng_key", "dropout"]
