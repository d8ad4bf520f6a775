"""Parameter initializers: named schemes drawn from a seeded generator (He, Xavier/Glorot, zeros, ...)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graphc.errors import GraphcError

SCHEMES = ("he_normal", "he_uniform", "xavier_normal", "xavier_uniform", "zeros", "ones")


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[0] * receptive, shape[1] * receptive  # (in, out) for x @ W with W: (in, out)


def _check_scale(what: str, v) -> None:
    if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
        raise GraphcError(f"{what} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class Uniform:
    """Uniform in [-limit, limit] (the form of any uniform scheme once its fans are known)."""

    limit: float

    def __post_init__(self):
        _check_scale("Uniform(limit): limit", self.limit)


@dataclass(frozen=True)
class Normal:
    """Normal with mean 0 and standard deviation `std`."""

    std: float

    def __post_init__(self):
        _check_scale("Normal(std): std", self.std)


@dataclass(frozen=True)
class ZeroRow:
    """`base` (a scheme name, a number, Uniform or Normal) with row `row` (along axis 0, in [0, rows)) set to
    zero: an embedding's padding row (PyTorch's nn.Embedding(padding_idx=...) zeroes it at init)."""

    base: object
    row: int


def zeroed_rows(init, shape: tuple[int, ...]) -> tuple[int, int]:
    """The flat element range [start, stop) an initializer sets to zero after drawing (empty: (0, 0))."""
    if not isinstance(init, ZeroRow):
        return 0, 0
    width = int(np.prod(shape[1:], dtype=np.int64))
    return init.row * width, (init.row + 1) * width


def distribution(init, fan_in: int, fan_out: int) -> tuple[str, float] | None:
    """("const", value), ("uniform", limit) or ("normal", std) for a scheme name, a number, Uniform or
    Normal, with the given fans; None for arrays and functions. The one place a scheme's formula lives:
    numpy draws and native initialization both read it. A ZeroRow has its base's distribution (outside the
    zeroed row, which `zeroed_rows` gives)."""
    if isinstance(init, ZeroRow):
        return distribution(init.base, fan_in, fan_out)
    if isinstance(init, bool):
        return None
    if isinstance(init, (int, float)):
        return "const", float(init)
    if isinstance(init, Uniform):
        return "uniform", float(init.limit)
    if isinstance(init, Normal):
        return "normal", float(init.std)
    if not isinstance(init, str):
        return None
    return {
        "zeros": ("const", 0.0),
        "ones": ("const", 1.0),
        "he_normal": ("normal", float(np.sqrt(2.0 / fan_in))),
        "he_uniform": ("uniform", float(np.sqrt(6.0 / fan_in))),
        "xavier_normal": ("normal", float(np.sqrt(2.0 / (fan_in + fan_out)))),
        "xavier_uniform": ("uniform", float(np.sqrt(6.0 / (fan_in + fan_out)))),
    }.get(init)


def like(scheme, fan_in: int, fan_out: int) -> Uniform | Normal | float:
    """The distribution a scheme has for a layer with these fans, as an init of its own: a bias drawn "like
    the weights" (scikit-learn's and PyTorch's default) gets `like(weight_scheme, in, out)`."""
    d = distribution(scheme, fan_in, fan_out)
    if d is None:
        raise GraphcError(f"bias init 'like_weights' needs a named weight scheme or a number, got {scheme!r}")
    kind, v = d
    return v if kind == "const" else Uniform(v) if kind == "uniform" else Normal(v)


def check_init(init, shape: tuple[int, ...], where: str) -> None:
    if isinstance(init, ZeroRow):
        if distribution(init.base, 1, 1) is None:
            raise GraphcError(f"{where}: ZeroRow's base must be a scheme name, a number, Uniform or Normal, "
                              f"got {init.base!r}")
        if len(shape) < 1 or isinstance(init.row, bool) or not isinstance(init.row, int) \
                or not 0 <= init.row < shape[0]:
            raise GraphcError(f"{where}: ZeroRow row {init.row!r} is not a row of shape {tuple(shape)}")
        check_init(init.base, shape, where)
        return
    if isinstance(init, (bool, np.bool_)):
        raise GraphcError(f"{where}: init={init!r} is not an initializer; use a scheme name, a number, "
                          "Uniform(limit), Normal(std), an array or a function (rng, shape) -> array")
    if isinstance(init, (int, float, np.integer, np.floating)) and not np.isfinite(init):
        raise GraphcError(f"{where}: init={init!r}: a constant initial value must be finite")
    if isinstance(init, np.ndarray) and init.dtype.kind in "fc" and init.shape == tuple(shape) \
            and not np.isfinite(init).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(init))[0])
        raise GraphcError(f"{where}: the init array holds {init[bad]} at index {bad}: initial values must be finite")
    if isinstance(init, str):
        if init not in SCHEMES:
            raise GraphcError(f"{where}: unknown init {init!r}; use one of {', '.join(SCHEMES)}, a number, "
                              "Uniform(limit), Normal(std), an array or a function (rng, shape) -> array")
    elif isinstance(init, np.ndarray):
        if tuple(init.shape) != tuple(shape):
            raise GraphcError(f"{where}: init array has shape {init.shape}, the parameter {tuple(shape)}")
    elif not (isinstance(init, (int, float, Uniform, Normal)) or callable(init)):
        raise GraphcError(f"{where}: init must be a scheme name, a number, Uniform/Normal, an array or a function")


def draw(init, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Initial values for one parameter."""
    if isinstance(init, np.ndarray):
        out = init
    elif (d := distribution(init, *_fans(shape))) is not None:
        kind, v = d
        if kind == "const":
            out = np.full(shape, v)
        elif kind == "uniform":
            out = rng.uniform(-v, v, shape)
        else:
            out = rng.normal(0.0, v, shape)
        start, stop = zeroed_rows(init, shape)
        out.reshape(-1)[start:stop] = 0.0
    else:
        fn: Callable = init
        out = np.asarray(fn(rng, tuple(shape)))
        if out.shape != tuple(shape):
            raise GraphcError(f"init function returned shape {out.shape}, expected {tuple(shape)}")
    return np.array(out, dtype=dtype, order="C")  # (ascontiguousarray would make a 0-d value 1-d)


def check_seed(seed, what: str) -> int:
    """`seed` as a Python int: a non-negative int (or numpy int), as numpy's default_rng takes, below 2**63 as
    gc.fit, run_epoch and the native initializer take it (64 bits). None is refused, not fresh entropy: graphc's
    runs are reproducible by design. Anything else is a GraphcError naming `what`."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        hint = "; graphc draws reproducibly from a seed: pass an int (e.g. seed=0, or secrets.randbits(63) for " \
               "fresh values each run)" if seed is None else ""
        raise GraphcError(f"{what}: seed must be an int in [0, 2**63), got {seed!r}{hint}")
    return int(seed)


def param_rng(seed: int, name: str) -> np.random.Generator:
    """Each parameter draws from its own stream (seed, name): adding a layer does not change the others."""
    seed = int(seed)  # all of it: seeds 0 and 2**32 drew the same weights (the high word joins when non-zero, so
    # seeds below 2**32 draw what they always did)
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode()), *([seed >> 32] if seed >> 32 else [])])
