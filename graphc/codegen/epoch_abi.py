"""The native epoch driver's interface (see graphc.codegen.epoch, which emits it): the context slots the run time
fills, the status codes it reads back, what the driver knows of the step program (`EpochSpec`), and the sample
order it computes. The run time imports this, not the emitter (which brings the compiler with it)."""

from __future__ import annotations

from dataclasses import dataclass

# context slots
TABLE, DIMS, WS, X, Y, NSAMP, BATCH, EPOCH, SEED, PERM, STEP0, MAXSTEPS, XB, YB, STEPBUF, KEYBUF, LOSSBUF, \
    LOSS_SUM, STEPS_DONE, STATUS, BAD_STEP, SHUFFLE, DROP_LAST, LOSSES, CHECK = range(25)
CTX_SLOTS = 25
# STATUS slot values: every step ran, a step's loss was not finite, or a run-time check of a step failed (an index
# out of range in a gather: a label, a token id; CHECK holds the check's code, the program's checks[code - 1])
STATUS_OK, STATUS_NONFINITE, STATUS_CHECK = 0, 1, 2
# SHUFFLE slot values: the order is 0..n-1, a seeded shuffle of it, or the caller's (PERM already holds it)
ORDER_IOTA, ORDER_SHUFFLE, ORDER_GIVEN = 0, 1, 2
KEY_MULT = 0x9E3779B97F4A7C15  # the dropout key of a step: seed * KEY_MULT + global step (mod 2^64)


@dataclass(frozen=True)
class EpochSpec:
    """What the driver needs to know about the step program."""

    n_dim: int  # index of the batch dim N in the dims array
    x_row_bytes: int
    y_row_bytes: int
    step_dtype: str = "float32"  # the `step` input's: float32/float64 get the step as a float, int32/int64 as is
    has_step: bool = True
    has_key: bool = True


def shuffle_hash(seed: int, epoch: int, i: int) -> int:
    """The same 64-bit mix as the native shuffle (for tests and for reading an epoch's order in Python)."""
    m = (1 << 64) - 1
    z = (seed * 0xD1342543DE82EF95 + epoch * 0x9E3779B97F4A7C15 + i * 0xBF58476D1CE4E5B9 + 1) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def permutation(seed: int, epoch: int, n: int) -> list[int]:
    """The epoch's sample order, as graphc_epoch computes it."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = (shuffle_hash(seed, epoch, i) * (i + 1)) >> 64
        perm[i], perm[j] = perm[j], perm[i]
    return perm
