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


def keep_mask(key: int, salt: int, keep_prob: float | None, n: int, thresh: int | None = None,
              offset: int = 0) -> np.ndarray:
    s = np.uint32(stream(key, salt))
    thresh = threshold(keep_prob) if thresh is None else thresh
    i = (np.arange(n, dtype=np.uint64) + np.uint64(offset % 2**64)).astype(np.uint32)
    with np.errstate(over="ignore"):
        h = lowbias32(lowbias32(i * np.uint32(GOLDEN) + s) ^ s)
    return (h >> np.uint32(8)) < np.uint32(thresh)


class Dropout(Op):
    """x * mask / keep in training; the identity in inference. Inputs: (x, rng key) with the keep probability
    an attribute, or (x, rng key, keep) with it a float32 scalar read at run time (a standalone training
    binary takes it as a command-line value). With the attribute `offset`, a last int64 scalar input is added to
    every element's index: a data-parallel rank whose share of the batch starts at row r passes r * (row size),
    so its rows get the masks they have in the whole batch."""

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
