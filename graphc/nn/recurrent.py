"""Recurrent layers on gc.scan: Elman RNN, GRU and LSTM (cells and time-major sequence wrappers), and embeddings.

Sequences are time-major, xs of shape (T, N, F) (T may be symbolic). Each sequence layer computes the input
projection of ALL steps as one matrix product before the loop ((T·N, F) @ Wx), so the loop body holds only the
recurrent product h @ Wh and the gates; with `checkpoint=k` (gc.scan's: store every k-th carry, recompute the
rest in the gradient) the projection moves into the step, so that no buffer grows with T but the xs and the
k-th carries. Parameters, per layer NAME (PyTorch's gate orders):

    rnn   NAME.Wx (F, H)   NAME.Wh (H, H)   NAME.b (H,)          h' = tanh(x Wx + h Wh + b)
    gru   NAME.Wx (F, 3H)  NAME.Wh (H, 3H)  NAME.b (3H,) NAME.bh (3H,)   gates r, z, n
    lstm  NAME.Wx (F, 4H)  NAME.Wh (H, 4H)  NAME.b (4H,)          gates i, f, g, o

A bidirectional layer adds the same set named NAME_reverse, run from the last step to the first; its outputs
are concatenated after the forward ones on the feature axis.

`lengths=` (N,) int: a padded batch of sequences of those lengths. Past its end a sequence's carry is held and
its outputs are 0 (PyTorch's packed sequences, Keras' masking): the last h is each sequence's own last real
step, and the reverse pass starts from each sequence's own end, not from the padding."""

from __future__ import annotations

import math

import numpy as np

from graphc import ops
from graphc.errors import DTypeError, GraphcError
from graphc.ir.dims import Dim
from graphc.ir.node import scope
from graphc.ir.shapes import INT_DTYPES
from graphc.nn.layers import _located, layer_name, note_unnamed_use
from graphc.nn.sequence import kept
from graphc.ops.core import describe
from graphc.ops.gather import TAKE
from graphc.ops.init import Normal, Uniform, ZeroRow

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _params(kind: str, name: str, features: int, hidden: int, dtype: str):
    """Wx, Wh, b (and bh for a GRU), initialized as PyTorch's: U(-1/sqrt(H), 1/sqrt(H))."""
    g = GATES[kind]
    init = Uniform(1.0 / math.sqrt(hidden))
    wx = ops.param(f"{name}.Wx", (features, g * hidden), init=init, dtype=dtype)
    wh = ops.param(f"{name}.Wh", (hidden, g * hidden), init=init, dtype=dtype)
    b = ops.param(f"{name}.b", (g * hidden,), init=init, dtype=dtype)
    bh = ops.param(f"{name}.bh", (g * hidden,), init=init, dtype=dtype) if kind == "gru" else None
    return wx, wh, b, bh


def _cols(z, k: int, hidden: int):
    return z[:, k * hidden:(k + 1) * hidden]


def _step(kind: str, hidden: int, wh, bh):
    """The cell as a step function over the projected input xp_t = x_t Wx + b (already computed)."""
    if kind == "rnn":
        def rnn_step(h, xp):
            h = ops.tanh(xp + h @ wh)
            return h, h
        return rnn_step
    if kind == "gru":
        def gru_step(h, xp):
            hp = h @ wh + bh
            r = ops.sigmoid(_cols(xp, 0, hidden) + _cols(hp, 0, hidden))
            z = ops.sigmoid(_cols(xp, 1, hidden) + _cols(hp, 1, hidden))
            n = ops.tanh(_cols(xp, 2, hidden) + r * _cols(hp, 2, hidden))
            h = (1.0 - z) * n + z * h
            return h, h
        return gru_step

    def lstm_step(carry, xp):
        h, c = carry
        zz = xp + h @ wh
        i = ops.sigmoid(_cols(zz, 0, hidden))
        f = ops.sigmoid(_cols(zz, 1, hidden))
        g = ops.tanh(_cols(zz, 2, hidden))
        o = ops.sigmoid(_cols(zz, 3, hidden))
        c = f * c + i * g
        h = o * ops.tanh(c)
        return (h, c), h
    return lstm_step


def _check(kind: str, xs, hidden, name):
    xs = ops.as_tensor(xs)
    if xs.ndim != 3:
        raise GraphcError(f"{kind} {name!r}: xs must be time-major (T, N, F), got {describe(xs)}")
    t, n = xs.shape[0], xs.shape[1]
    if isinstance(t, Dim) and t.is_symbol and t.name == "N" and not (isinstance(n, Dim) and n.is_symbol
                                                                       and n.name == "N"):
        # the batch dim on the time axis: read as time-major, the loop would run over the batch and mix the
        # sequences together, silently
        raise GraphcError(f"{kind} {name!r}: xs must be time-major (T, N, F), but its first axis is the batch dim N "
                          f"({describe(xs)}): for batch-first data (PyTorch's batch_first=True) pass "
                          f"gc.transpose(xs, (1, 0, 2))")
    if not isinstance(xs.shape[2], int):
        raise GraphcError(f"{kind} {name!r}: the feature dim of xs must be known, got {describe(xs)}")
    if xs.dtype not in ("float32", "float64"):
        raise DTypeError(f"{kind} {name!r}: xs must be float, got {describe(xs)}; token ids go through "
                         "gc.nn.embedding first")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise GraphcError(f"{kind} {name!r}: hidden must be a positive int, got {hidden!r}")
    return xs


def _masked(cell):
    """The cell on a padded batch: where a sequence has ended (m false) its carry passes through unchanged and its
    output is 0, so the forward pass ends on each sequence's last real step and the reverse pass starts on it."""
    def step(carry, x):
        x, m = x
        new, y = cell(carry, x)
        if isinstance(carry, tuple):
            new = tuple(ops.where(m, a, b) for a, b in zip(new, carry, strict=True))
        else:
            new = ops.where(m, new, carry)
        return new, ops.where(m, y, 0.0)
    return step


def _initial(kind: str, state, xs, hidden: int, name: str, what: str):
    """A layer's initial carry from the user's `initial_state` (None: zeros): h (N, H) for rnn and gru, (h, c)
    for lstm, each of xs's batch and dtype."""
    from graphc.ir.shapes import dims_equal

    N = xs.shape[1]
    if state is None:
        h0 = ops.zeros((N, hidden), xs.dtype)
        return (h0, h0) if kind == "lstm" else h0
    want = "a pair (h0, c0)" if kind == "lstm" else "h0"
    parts = state if kind == "lstm" else (state,)
    if kind == "lstm" and (not isinstance(state, (tuple, list)) or len(state) != 2):
        raise GraphcError(f"{kind} {name!r}: {what} must be {want}, each (N, {hidden}), got {state!r}")
    out = []
    for p in parts:
        p = ops.as_tensor(p)
        if p.ndim != 2 or not dims_equal(p.shape[0], N) or not dims_equal(p.shape[1], hidden) or p.dtype != xs.dtype:
            raise GraphcError(f"{kind} {name!r}: {what} must be {want}, each {xs.dtype} (N, H) = ({N}, {hidden}) "
                              f"as xs {describe(xs)} and hidden={hidden}; got {describe(p)}")
        out.append(p)
    return tuple(out) if kind == "lstm" else out[0]


def _h(kind: str, carry):
    """The hidden state of a layer's carry ((h, c) for an LSTM)."""
    return carry[0] if kind == "lstm" else carry


def _run(kind: str, xs, hidden: int, name: str, reverse: bool, checkpoint, mask=None, unnamed: bool = False,
         init=None):
    T, N, F = xs.shape
    with scope(name):
        wx, wh, b, bh = _params(kind, name, F, hidden, xs.dtype)
        cell = _step(kind, hidden, wh, bh)
        if checkpoint is None:
            # the input projection of every step at once: one (T·N, F) @ (F, G·H) product before the loop
            xp = ops.reshape(ops.reshape(xs, (T * N, F)) @ wx + b, (T, N, GATES[kind] * hidden))
            if mask is None:
                carry, ys = ops.scan(cell, init, xp, reverse=reverse)
            else:
                carry, ys = ops.scan(_masked(cell), init, (xp, mask), reverse=reverse)
        else:
            # checkpointed: the projection inside the step. Hoisted, it and its gradient are two (T, N, G·H)
            # buffers that checkpointing cannot shrink (the LSTM at T=500, batch 64, H=128: 125 MB of 144);
            # per step they are (N, G·H), and Wx's gradient accumulates in the reverse loop's carry
            def step(carry, x):
                return cell(carry, x @ wx + b)

            if mask is None:
                carry, ys = ops.scan(step, init, xs, reverse=reverse, checkpoint=checkpoint)
            else:
                carry, ys = ops.scan(_masked(step), init, (xs, mask), reverse=reverse, checkpoint=checkpoint)
    if unnamed:
        note_unnamed_use(wx, _h(kind, carry), ys)
    return carry, ys


def _sequence(kind, xs, hidden, return_sequences, bidirectional, name, checkpoint, lengths=None,
              initial_state=None, return_state=False):
    for flag, v in (("return_sequences", return_sequences), ("bidirectional", bidirectional),
                    ("return_state", return_state)):
        if not isinstance(v, (bool, np.bool_)):
            raise GraphcError(f"{kind}: {flag} must be True or False, got {v!r}")
    name, unnamed = layer_name(name, kind)
    xs = _check(kind, xs, hidden, name)
    mask = None
    if lengths is not None:
        from graphc.ir.shapes import dims_equal
        from graphc.nn.sequence import _lengths, kept, sequence_mask

        lengths = _lengths(lengths, f"{kind} {name!r}", xs.shape[0])  # each in [0, T]
        mask = sequence_mask(lengths, xs.shape[0])  # (T, N): t < lengths[n]
        if not dims_equal(mask.shape[1], xs.shape[1]):
            raise GraphcError(f"{kind} {name!r}: lengths has {mask.shape[1]} sequences but xs {describe(xs)} has "
                              f"{xs.shape[1]} (xs is time-major: (T, N, F))")
        xs = kept(xs, mask)  # padded steps are not read: NaN there reaches neither the outputs nor the gradients
        mask = ops.expand_dims(mask, 2)  # (T, N, 1): broadcast over the hidden units
    if bidirectional and initial_state is not None and (not isinstance(initial_state, (tuple, list))
                                                         or len(initial_state) != 2):
        raise GraphcError(f"{kind} {name!r}: a bidirectional layer's initial_state is a pair (the forward pass's "
                          f"state, the reverse pass's), got {initial_state!r}")
    states = initial_state if bidirectional and initial_state is not None else (initial_state, None)
    init = _initial(kind, states[0], xs, hidden, name, "initial_state" + ("[0]" if bidirectional else ""))
    carry, ys = _run(kind, xs, hidden, name, False, checkpoint, mask, unnamed, init)
    h = _h(kind, carry)
    if not bidirectional:
        out = ys if return_sequences else h
        return (out, carry) if return_state else out
    init_r = _initial(kind, states[1], xs, hidden, name, "initial_state[1]")
    carry_r, ysr = _run(kind, xs, hidden, f"{name}_reverse", True, checkpoint, mask, unnamed, init_r)
    hr = _h(kind, carry_r)
    out = ops.concatenate([ys, ysr], axis=2) if return_sequences else ops.concatenate([h, hr], axis=1)
    return (out, (carry, carry_r)) if return_state else out


def rnn(xs, hidden: int, *, return_sequences: bool = False, bidirectional: bool = False, name: str | None = None,
        checkpoint: int | None = None, lengths=None, initial_state=None, return_state: bool = False):
    """An Elman RNN over time-major xs (T, N, F): h_t = tanh(x_t Wx + h_{t-1} Wh + b), h_0 = 0. Returns the last
    h (N, H), or every h (T, N, H) with return_sequences; bidirectional concatenates a reverse pass (2H)."""
    return _sequence("rnn", xs, hidden, return_sequences, bidirectional, name, checkpoint, lengths, initial_state,
                     return_state)


def gru(xs, hidden: int, *, return_sequences: bool = False, bidirectional: bool = False, name: str | None = None,
        checkpoint: int | None = None, lengths=None, initial_state=None, return_state: bool = False):
    """A GRU over time-major xs (T, N, F), PyTorch's formulation (r, z, n gates; n = tanh(x Wn + b_n + r·(h Whn +
    bh_n))), fused parameters NAME.Wx (F, 3H), NAME.Wh (H, 3H), NAME.b (3H,) and NAME.bh (3H,) (PyTorch's b_ih and
    b_hh). Returns the last h (N, H), or every h (T, N, H) with return_sequences."""
    return _sequence("gru", xs, hidden, return_sequences, bidirectional, name, checkpoint, lengths, initial_state,
                     return_state)


def lstm(xs, hidden: int, *, return_sequences: bool = False, bidirectional: bool = False, name: str | None = None,
         checkpoint: int | None = None, lengths=None, initial_state=None, return_state: bool = False):
    """An LSTM over time-major xs (T, N, F), gates i, f, g, o as PyTorch's, fused parameters NAME.Wx (F, 4H),
    NAME.Wh (H, 4H), NAME.b (4H,). Returns the last h (N, H), or every h (T, N, H) with return_sequences.

    `initial_state` (PyTorch's (h0, c0); h0 for rnn and gru): the carry the first step reads (default zeros),
    each (N, H); bidirectional: a pair (the forward pass's, the reverse pass's). `return_state=True` returns
    (output, final state) with the state in that form (an encoder's state for a decoder)."""
    return _sequence("lstm", xs, hidden, return_sequences, bidirectional, name, checkpoint, lengths, initial_state,
                     return_state)


def _cell(kind, x, state, hidden, name):
    x = ops.as_tensor(x)
    if x.ndim != 2 or not isinstance(x.shape[1], int):
        raise GraphcError(f"{kind}_cell {name!r}: x must be (N, F) with a known F, got {describe(x)}")
    with scope(name):
        wx, wh, b, bh = _params(kind, name, x.shape[1], hidden, x.dtype)
        return _step(kind, hidden, wh, bh)(state, x @ wx + b)[0]


def rnn_cell(x, h, hidden: int, *, name: str = "rnn"):
    """One Elman step: the new h (parameters as gc.nn.rnn's, so a step function for gc.scan)."""
    return _cell("rnn", x, h, hidden, name)


def gru_cell(x, h, hidden: int, *, name: str = "gru"):
    """One GRU step: the new h."""
    return _cell("gru", x, h, hidden, name)


def lstm_cell(x, state, hidden: int, *, name: str = "lstm"):
    """One LSTM step: state = (h, c) -> the new (h, c)."""
    return _cell("lstm", x, tuple(state), hidden, name)


def embedding(ids, vocab: int, dim: int, *, name: str | None = None, dtype: str = "float32",
              padding_idx: int | None = None):
    """Rows of a (vocab, dim) table NAME.E for integer ids of any shape: shape ids.shape + (dim,). A gather
    (gc.take) whose gradient is a scatter-add (repeated ids accumulate); an id outside [0, vocab) is an error
    when evaluated, and a checked error in compiled code.

    `padding_idx` (PyTorch's nn.Embedding padding_idx; negative counts from the end, padding_idx + vocab): that
    row starts at zero and gets no gradient from this lookup, so it stays zero under SGD, momentum, Adam and
    AdamW. It is done in the graph, so it holds wherever the graph runs (evaluated, compiled, gc.fit, a
    standalone binary): the looked-up rows are masked by `ids != padding_idx`. The one difference from
    PyTorch, whose forward returns the row itself: the padding id's output is zero whatever the row holds, also
    if you write a nonzero row yourself (PyTorch would return it)."""
    ids = ops.as_tensor(ids)
    name, unnamed = layer_name(name, "embedding")
    if ids.dtype not in INT_DTYPES:
        raise DTypeError(f"embedding {name!r}: ids must be int32 or int64, got {describe(ids)} (declared at "
                         f"{ids.source.where()})")
    for v, what in ((vocab, "vocab"), (dim, "dim")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise GraphcError(f"embedding {name!r}: {what} must be a positive int, got {v!r}")
    init = Normal(1.0)
    if padding_idx is not None:
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
            raise _located(f"embedding {name!r}: padding_idx must be an int (a row of the table) or None, got "
                           f"{padding_idx!r}")
        if not -vocab <= padding_idx < vocab:
            raise _located(f"embedding {name!r}: padding_idx {padding_idx} is out of range for vocab {vocab}; "
                           f"use a row in [0, {vocab}) or count from the end in [-{vocab}, -1]")
        padding_idx = int(padding_idx) % vocab  # PyTorch's padding_idx + num_embeddings for a negative one
        init = ZeroRow(init, padding_idx)
    with scope(name):
        table = ops.param(f"{name}.E", (vocab, dim), init=init, dtype=dtype)
        rows = ops.apply(TAKE, (table, ids), axis=0, what=f"embedding {name!r}: id")
        if padding_idx is not None:
            rows = kept(rows, ops.not_equal(ids, ops.constant(padding_idx, ids.dtype)))
        if unnamed:
            note_unnamed_use(table, rows)
        return rows


__all__ = ["rnn", "gru", "lstm", "rnn_cell", "gru_cell", "lstm_cell", "embedding"]
