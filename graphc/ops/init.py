"""Parameter initializers: named schemes drawn from a seeded generator (He, Xavier/Glorot, zeros, ...)."""

from __future__ import annotations

import zlib
from collections.abc import Callable

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


def check_init(init, shape: tuple[int, ...], where: str) -> None:
    if isinstance(init, str):
        if init not in SCHEMES:
            raise GraphcError(f"{where}: unknown init {init!r}; use one of {', '.join(SCHEMES)}, a number, "
                              "an array or a function (rng, shape) -> array")
    elif isinstance(init, np.ndarray):
        if tuple(init.shape) != tuple(shape):
            raise GraphcError(f"{where}: init array has shape {init.shape}, the parameter {tuple(shape)}")
    elif not (isinstance(init, (int, float)) or callable(init)):
        raise GraphcError(f"{where}: init must be a scheme name, a number, an array or a function")


def draw(init, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Initial values for one parameter."""
    fan_in, fan_out = _fans(shape)
    if isinstance(init, np.ndarray):
        out = init
    elif isinstance(init, (int, float)):
        out = np.full(shape, float(init))
    elif isinstance(init, str):
        if init == "zeros":
            out = np.zeros(shape)
        elif init == "ones":
            out = np.ones(shape)
        elif init == "he_normal":
            out = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif init == "he_uniform":
            lim = np.sqrt(6.0 / fan_in)
            out = rng.uniform(-lim, lim, shape)
        elif init == "xavier_normal":
            out = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)
        else:  # xavier_uniform
            lim = np.sqrt(6.0 / (fan_in + fan_out))
            out = rng.uniform(-lim, lim, shape)
    else:
        fn: Callable = init
        out = np.asarray(fn(rng, tuple(shape)))
        if out.shape != tuple(shape):
            raise GraphcError(f"init function returned shape {out.shape}, expected {tuple(shape)}")
    return np.ascontiguousarray(out, dtype=dtype)


def param_rng(seed: int, name: str) -> np.random.Generator:
    """Each parameter draws from its own stream (seed, name): adding a layer does not change the others."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])
