"""Convolution and pooling on channels-last data, as compositions of primitives: pad -> windows (the im2col
view) -> reshape -> matmul for a convolution; pad -> windows -> max / sum for pooling.

They are not new ops, so their gradients are graphs of existing primitives for free (the input gradient of a
convolution is the product with the filter's transpose spread back by the windows' gradient, a sum of
interior-padded slices: the transposed convolution; the filter gradient is the product of the im2col matrix
with the cotangent, a correlation of input and cotangent), and everything compiles natively: the regrouping
reshape makes the scheduler materialize the im2col matrix and the product runs on the packed GEMM.

Layouts are channels-last, as TensorFlow/Keras and JAX's "NHWC"/"HWIO": images x (N, H, W, C), filters
w (KH, KW, C, F); sequences x (N, T, C), filters (K, C, F). Channels-last makes the im2col row of one output
cell a run of KW*C contiguous floats per kernel row, and the product's output (N*OH*OW, F) is already the
next layer's (N, OH, OW, F) image without a transpose.

Grouped convolutions (groups=, PyTorch's) are compositions too: a few groups of several channels one Conv per
group, many one batched product, depthwise ones (a channel a group) a sum over the taps of the windows times the
filter (see `_grouped`).

Padding: "valid" (none), "same" (TensorFlow/JAX at any stride: output ceil(D/s), the odd pad cell at the
bottom/right), an int (every side), or one (before, after) pair per spatial axis.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir.shapes import FLOAT_DTYPES, fmt_shape
from graphc.ops.core import Op, Tensor, apply, as_tensor, constant, located, register

__all__ = ["conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d"]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# rows of features reaching a convolution: a model file gets its data on the grid by naming its first parameter
ROWS_HINT = {2: " (rows of features: a model file or gc.fit model whose first parameter is named `images` gets "
                 "the data as (N, H, W, C) on the dataset's grid)",
              1: " (rows of features: a model whose first parameter is named `sequences` gets the data time-major, "
                 "(T, N, F); gc.transpose(sequences, (1, 0, 2)) makes it the (N, T, C) this takes — a reshape would "
                 "mix the examples)"}


def one_axis_padding(padding):
    """A 1-D op's padding: one (before, after) pair may be given bare, as (1, 2), for ((1, 2),)."""
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(p) for p in padding):
        return (tuple(padding),)
    return padding


def _axis(nsp: int, a: int) -> str:
    """Tensor axis a (1 .. nsp, the spatial ones) with its name: 'axis 1 (H)'."""
    return f"axis {a} ({'HW'[a - 1] if nsp == 2 else 'T'})"


def _per_axis(v, n: int, what: str, lo: int = 1) -> tuple[int, ...]:
    """An int or one int per spatial axis (a tuple, list or 1-D integer array), each >= lo."""
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu":
        v = [int(k) for k in v]
    vals = (v,) * n if _is_int(v) else tuple(v) if isinstance(v, (tuple, list)) else None
    if vals is None or len(vals) != n or not all(_is_int(k) for k in vals):
        raise ShapeError(f"{what} must be an int or {n} ints, got {v!r}")
    if any(k < lo for k in vals):
        raise ShapeError(f"{what} must be >= {lo}, got {v!r}")
    return tuple(int(k) for k in vals)


def _padding(padding, sizes, window, strides, dilation) -> list[tuple[int, int]]:
    """(before, after) per spatial axis."""
    if isinstance(padding, np.ndarray) and padding.dtype.kind in "iu":  # as the list it holds
        padding = padding.tolist()
    n = len(sizes)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return [(0, 0)] * n
        if mode == "same":  # TensorFlow/JAX: output ceil(D/s); the odd cell after
            out = []
            for d, k, s, dl in zip(sizes, window, strides, dilation, strict=True):
                span = dl * (k - 1) + 1
                total = max((-(-d // s) - 1) * s + span - d, 0)
                out.append((total // 2, total - total // 2))
            return out
        if mode == "causal" and n == 1:  # Keras': every output sees only its own and earlier steps
            return [(dilation[0] * (window[0] - 1), 0)]
        causal = ", 'causal' (1-D only)" if mode == "causal" or n == 1 else ""
        raise ShapeError(f"padding must be 'valid', 'same'{causal}, an int or {n} (before, after) pairs, got "
                         f"{padding!r}")
    if _is_int(padding):
        if padding < 0:
            raise ShapeError(f"padding must be >= 0, got {padding!r}")
        return [(int(padding), int(padding))] * n
    bad = ShapeError(f"padding must be 'valid', 'same', an int or {n} (before, after) pairs of ints >= 0, "
                     f"got {padding!r}")
    if not isinstance(padding, (tuple, list)) or len(padding) != n:
        raise bad
    out = []
    for p in padding:
        if _is_int(p):
            p = (p, p)
        if not isinstance(p, (tuple, list)) or len(p) != 2 or not all(_is_int(v) and v >= 0 for v in p):
            raise bad
        out.append((int(p[0]), int(p[1])))
    return out


def _geometry(x: Tensor, nsp: int, window, strides, dilation, padding, what: str, w: Tensor | None = None):
    """Checks the spatial axes of x against the window; returns (window, strides, dilation, pads, out sizes)."""
    sizes = x.shape[1:1 + nsp]
    for a, d in enumerate(sizes, start=1):
        if not isinstance(d, int):
            time_major = nsp == 1 and a == 1 and isinstance(x.shape[0], int)
            raise ShapeError(f"{_axis(nsp, a)} of {fmt_shape(x.shape)} is symbolic ({d}); only the batch dim "
                             "(axis 0) may be symbolic" + (
                                 "; a time-major (T, N, F) sequence (a model's `sequences`) needs "
                                 "gc.transpose(x, (1, 0, 2)) to be (N, T, F)" if time_major else ""))
    pads = _padding(padding, sizes, window, strides, dilation)
    out = []
    for a, (d, k, s, dl, (lo, hi)) in enumerate(zip(sizes, window, strides, dilation, pads, strict=True), start=1):
        span = dl * (k - 1) + 1
        if d + lo + hi < span:
            other = f" and filter {fmt_shape(w.shape)}" if w is not None else ""
            raise ShapeError(f"the window {k}" + (f" (dilated to {span})" if dl > 1 else "") +
                             f" on {_axis(nsp, a)} is larger than the padded input ({d} + {lo + hi} padding = "
                             f"{d + lo + hi}) of input {fmt_shape(x.shape)}{other}; pad more or use a smaller "
                             "window")
        out.append((d + lo + hi - span) // s + 1)
    return pads, out


def _padded_windows(x, pads, window, strides, dilation) -> Tensor:
    """The windows view (N, *out, *window, C) of x zero-padded by `pads` on its spatial axes: the im2col view."""
    from graphc.ops.movement import _pad, windows

    xp = _pad(x, [0, *(p[0] for p in pads), 0], [0, *(p[1] for p in pads), 0], [0] * x.ndim, 0)
    return windows(xp, window, strides, dilation)


def _fail(err: GraphcError, inputs, what: str) -> GraphcError:
    return located(err, inputs, what)


def _conv(x, w, nsp: int, stride, padding, dilation, what: str, groups=1) -> Tensor:
    from graphc.ops.movement import reshape

    y, shape = conv_matrix(x, w, nsp, stride, padding, dilation, what, groups)
    return reshape(y, shape)


# The input gradient is a transposed convolution (a product with c columns) from this many input channels on:
# below, its product would fill too little of a SIMD vector, and the input gradient is the product of the filter
# with the cotangent, tap-major, spread back (`_spread_input_grad`) (measured on LeNet-5's 6-channel second
# layer, per step: the transposed convolution 1.6 ms, the composition's product and spread back 0.8 ms).
TRANSPOSED_MIN_CHANNELS = 8


class Conv(Op):
    """A convolution's product (N*O.., F) with the convolution's own gradient rule: the value is input 0, the
    product the composition pad -> windows -> reshape -> matmul computes (this op emits no code: it lowers to its
    input 0); inputs 1 and 2 are the image x and the filter w, attrs `pads` ((before, after) per spatial axis),
    `strides` and `dilation`. The gradient does not go back through the composition (whose input gradient would
    spread the im2col matrix's cotangent back tap by tap from rows only C channels long, a col2im of guarded
    gathers, and at stride s > 1 with a floor division and a remainder in every one of the KH*KW terms): the input
    gradient is the transposed convolution. At stride 1 it is one convolution of the cotangent (padded by the
    dilated window minus the padding) with the flipped filter, its channel axes swapped
    (`_transposed_input_grad`); at stride s it is that per phase (the sub-pixel decomposition, as oneDNN and
    XNNPACK deconvolve): the input rows s*q + r (one phase r per residue, s**nsp phases) receive only the taps
    whose offset lands on that residue, a sub-filter of every s-th tap, so each phase is a stride-1 convolution of
    the unpadded cotangent with its sub-filter, and the phases are interleaved back (no multiplication by the
    zeros an interior-padded cotangent would hold). With fewer than TRANSPOSED_MIN_CHANNELS input channels the
    input gradient is the tap-major product spread back along image rows, phase by phase
    (`_spread_input_grad`). The filter gradient is the correlation of the padded image with the cotangent, the
    (strided) im2col matrix's transpose times the cotangent, an implicit GEMM (no im2col buffer). All
    differentiate again: the phases are Conv nodes of their own."""

    name = "conv"
    kind = "identity"

    def infer(self, inputs, attrs):
        prod, x, w = inputs
        nsp = x.ndim - 2
        strides = attrs.get("strides", (1,) * nsp)
        if w.ndim != nsp + 2 or len(attrs["pads"]) != nsp or len(attrs["dilation"]) != nsp or prod.ndim != 2 \
                or len(strides) != nsp or not all(isinstance(v, int) and v >= 1 for v in strides):
            raise ShapeError(f"conv: product {fmt_shape(prod.shape)}, image {fmt_shape(x.shape)} and filter "
                             f"{fmt_shape(w.shape)} do not make a convolution with pads {attrs['pads']} and "
                             f"strides {strides}")
        return prod.shape, prod.dtype

    def reference(self, node, args, ctx):
        return args[0]

    def is_view(self, node):
        return True

    def lower(self, node, lx):
        return lx.input(0)

    def vjp(self, node, g):
        from graphc.ops.linalg import matmul
        from graphc.ops.movement import reshape

        _, x, w = node.inputs
        nsp = x.ndim - 2
        pads, dil = node.attrs["pads"], node.attrs["dilation"]
        strides = node.attrs.get("strides", (1,) * nsp)
        window = w.shape[:nsp]
        out = [(d + lo + hi - dl * (k - 1) - 1) // s + 1
               for d, (lo, hi), k, s, dl in zip(x.shape[1:1 + nsp], pads, window, strides, dil, strict=True)]
        if w.shape[nsp] < TRANSPOSED_MIN_CHANNELS:
            dx = _spread_input_grad(g, x, w, pads, strides, dil, out)
        else:
            dx = _transposed_input_grad(g, x, w, pads, strides, dil, out)
        # dw: the im2col matrix of the padded image (the forward's own view), transposed, times the cotangent
        cols = reshape(_padded_windows(x, pads, window, strides, dil), (g.shape[0], math.prod(window) * w.shape[nsp]))
        dw = reshape(matmul(cols, g, ta=True), w.shape)
        return None, dx, dw


CONV = register(Conv())


class _Phase(NamedTuple):
    """One spatial axis of one phase of a convolution's input gradient: the input positions i = s*q + r receive
    g[q - shift - dil*j] * w[k0 + step*j] for j < taps."""

    k0: int
    step: int
    taps: int
    dil: int
    shift: int

    def sub_window(self) -> int:
        """The phase's dilated sub-filter's span minus 1: how far its transposed convolution reaches back."""
        return self.dil * (self.taps - 1)


def _phase(size: int, lo: int, k: int, s: int, dl: int, o: int, rp: int) -> _Phase | None:
    """One spatial axis of a stride-s convolution's input gradient (input size `size`, padding `lo` before, kernel k
    dilated by dl, o outputs), for the input positions i = s*q + rp: those receive only the taps whose dilated
    offset lands on i's residue modulo s, every (s / gcd(dl, s))-th one from the first such k0, and from outputs
    shifted by a fixed amount. None where no tap or no output reaches the phase (a tap lands on residue r only
    where gcd(dl, s) divides r; a kernel shorter than the stride leaves phases uncovered). At stride 1 the one
    phase is the plain transposed convolution: k0 = 0, step 1, all k taps, dilation dl, shift -lo."""
    q = -(-(size - rp) // s)  # the phase's positions in the input
    if q <= 0:
        return None
    e, r = divmod(rp + lo, s)  # i + lo = s*(q + e) + r on the padded grid, which the windows start at s*o
    gg = math.gcd(dl, s)
    ks, dd = s // gg, dl // gg
    if r % gg:
        return None
    k0 = (r // gg) * pow(dd, -1, ks) % ks  # dl*k0 = r (mod s), the first such tap
    if k0 >= k:
        return None
    j = (k - k0 - 1) // ks + 1
    m = (dl * k0 - r) // s - e  # s*o + dl*(k0 + ks*jj) = s*(q + e) + r  <=>  o = q - m - dd*jj
    if q - 1 - m < 0 or -m - dd * (j - 1) > o - 1:  # every g index it would read lies outside the output
        return None
    return _Phase(k0, ks, j, dd, m)


def _phases(x, w, pads, strides, dil, out):
    """{rp: per-axis _phase} for every input phase rp (one residue per spatial axis) that some tap reaches."""
    nsp = x.ndim - 2
    found = {}
    for rp in np.ndindex(*strides):
        axes = [_phase(d, lo, k, s, dl, o, r) for d, (lo, _), k, s, dl, o, r in
                zip(x.shape[1:1 + nsp], pads, w.shape[:nsp], strides, dil, out, rp, strict=True)]
        if all(a is not None for a in axes):
            found[rp] = axes
    return found


def _shift(t, axes, low, size):
    """t with each of `axes` moved `low` places along (zeros in front; cropped where low < 0) and cut or
    zero-padded to `size` places."""
    from graphc.ops.movement import _pad, _slice

    lo_pad, hi_pad, start, stop = [0] * t.ndim, [0] * t.ndim, [0] * t.ndim, list(t.shape)
    for a, lw, n in zip(axes, low, size, strict=True):
        hi = n - t.shape[a] - lw
        lo_pad[a], hi_pad[a] = max(lw, 0), max(hi, 0)
        start[a] = max(-lw, 0)
        stop[a] = t.shape[a] + lo_pad[a] + hi_pad[a] - max(-hi, 0)
    t = _pad(t, lo_pad, hi_pad, [0] * t.ndim, 0)
    return _slice(t, start, [t.shape[i] if i not in axes else stop[i] for i in range(t.ndim)], [1] * t.ndim)


def _pairwise_sum(parts):
    """Summed pairwise: a chain of many dependent adds would wait on each add's latency."""
    while len(parts) > 1:
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def _interleave(parts: dict, q, strides, sizes, like):
    """The input gradient (N, *sizes, C) from its phases, each channels-last (N, *q, C): phase rp's value at q goes
    to position s*q + rp of each axis. The phases are stacked beside their axes, (N, Q1, s1, Q2, s2, C), which a
    reshape merges into (N, Q1*s1, Q2*s2, C) (cut to the sizes): each phase read once, where it lands, in vectors
    along the channels (a pad per phase with s - 1 zeros between elements, summed, would read every phase at
    every position, each read guarded by a remainder: 1.6x the time at stride 2 in 2-D, s**nsp reads at s).
    Phases no tap reaches are zero."""
    from graphc.ops.movement import _slice, reshape, stack
    from graphc.ops.pointwise import broadcast_like, full_like

    nsp = len(strides)
    if not parts:  # (the zeros read x's shape, which binds its batch dim, not a broadcast to a bare symbol)
        return full_like(like, 0)
    if all(s == 1 for s in strides):
        return parts[(0,) * nsp]
    some = next(iter(parts.values()))

    def build(prefix):
        a = len(prefix)
        if a == nsp:
            return parts[prefix] if prefix in parts else broadcast_like(constant(0, like.dtype), some)
        pieces = [build((*prefix, r)) for r in range(strides[a])]
        return pieces[0] if strides[a] == 1 else stack(pieces, axis=2 + a)

    full = reshape(build(()), (like.shape[0], *(n * s for n, s in zip(q, strides, strict=True)), like.shape[-1]))
    return _slice(full, [0] * full.ndim, [like.shape[0], *sizes, like.shape[-1]], [1] * full.ndim)


def _transposed_input_grad(g, x, w, pads, strides, dil, out) -> Tensor:
    """dx as the transposed convolution, per phase (see Conv): the cotangent shifted by the phase's offset plus
    its dilated sub-window (cropped where that is negative), convolved with the phase's flipped sub-filter
    (J.., F, C): an implicit GEMM c columns wide. At stride 1, one phase: the whole transposed convolution."""
    from graphc.ops.movement import _reverse, _slice, reshape, transpose

    nsp = x.ndim - 2
    sp = list(range(1, nsp + 1))
    gi = reshape(g, (x.shape[0], *out, w.shape[-1]))
    perm = (*range(nsp), nsp + 1, nsp)
    q = [-(-d // s) for d, s in zip(x.shape[1:1 + nsp], strides, strict=True)]
    parts = {}
    for rp, ph in _phases(x, w, pads, strides, dil, out).items():
        stop = [p.k0 + p.step * (p.taps - 1) + 1 for p in ph] + list(w.shape[nsp:])
        sub = _slice(w, [p.k0 for p in ph] + [0, 0], stop, [p.step for p in ph] + [1, 1])  # every step-th tap
        wt = transpose(_reverse(sub, tuple(range(nsp))), perm)
        # the cotangent moved by the phase's offset plus its dilated sub-window, cut to q plus that window (a phase
        # reads a padded copy of its own, as a stride-1 convolution does: one shared padded cotangent would be
        # inlined into each phase's product operand all the same)
        gp = _shift(gi, sp, [p.shift + p.sub_window() for p in ph],
                    [n + p.sub_window() for n, p in zip(q, ph, strict=True)])
        parts[rp] = _conv(gp, wt, nsp, 1, "valid", tuple(p.dil for p in ph), "conv2d" if nsp == 2 else "conv1d")
    return _interleave(parts, q, strides, x.shape[1:1 + nsp], x)


def _spread_input_grad(g, x, w, pads, strides, dil, out) -> Tensor:
    """dx for few input channels: per image, the product of the filter with the image's cotangent transposed,
    tap-major (N, KH*KW*C, OH*OW), spread back tap by tap (each tap's slice shifted onto its phase of the input
    grid and summed: at stride s only the taps of a phase, every s-th one, each a plain shift), the phases
    interleaved and moved to channels-last. Tap-major, a tap's slice runs along the output width, so the sum reads
    contiguous rows; the product's usual layout (N*OH*OW, KH*KW*C) would make every term a gather (the channel run
    is only C long). Per image (a batched product) rather than one product over the batch (KH*KW*C, N*OH*OW): the
    sum for one image then reads one block of KH*KW*C*OH*OW values instead of KH*KW streams a batch of images
    apart (LeNet's second layer, batch 64, Zen 4: the spread 0.25 -> 0.08 ms). (The transposed convolution would
    be a product C columns wide: mostly padding.)"""
    from graphc.ops.linalg import matmul
    from graphc.ops.movement import _slice, reshape, transpose

    nsp = x.ndim - 2
    window, c, f = w.shape[:nsp], w.shape[nsp], w.shape[nsp + 1]
    n = x.shape[0]
    sp = list(range(2, nsp + 2))
    gi = reshape(g, (n, math.prod(out), f))
    taps = matmul(reshape(w, (math.prod(window) * c, f)), gi, tb=True)  # (N, KH*KW*C, OH*OW)
    taps = reshape(taps, (n, *window, c, *out))
    q = [-(-d // s) for d, s in zip(x.shape[1:1 + nsp], strides, strict=True)]
    parts = {}
    for rp, ph in _phases(x, w, pads, strides, dil, out).items():
        terms = []
        for js in np.ndindex(*(p.taps for p in ph)):
            ks = [p.k0 + p.step * j for p, j in zip(ph, js, strict=True)]
            part = _slice(taps, [0, *ks, 0, *([0] * nsp)], [n, *(k + 1 for k in ks), c, *out], [1] * taps.ndim)
            part = reshape(part, (n, c, *out))
            terms.append(_shift(part, sp, [p.shift + p.dil * j for p, j in zip(ph, js, strict=True)], q))
        # summed over rows of the phase (N, C, *q), then moved to channels-last for the interleave
        parts[rp] = transpose(_pairwise_sum(terms), (0, *range(2, nsp + 2), 1))
    return _interleave(parts, q, strides, x.shape[1:1 + nsp], x)


def conv_matrix(x, w, nsp: int, stride, padding, dilation, what: str, groups=1) -> tuple[Tensor, tuple]:
    """The convolution as the product (N*OH*OW, KH*KW*C) @ (KH*KW*C, F), before the reshape to (N, OH, OW, F),
    and that shape. A layer adds its bias and activation to the product itself, so they become the GEMM's fused
    epilogue. With `groups` g > 1 the filter is (KH, KW, C/g, F) and the (N*OH*OW, F) matrix is the grouped
    convolution's (see `_grouped`)."""
    from graphc.ops.linalg import matmul
    from graphc.ops.movement import reshape

    x = as_tensor(x)
    w = as_tensor(w, x)
    names = "(N, H, W, C)" if nsp == 2 else "(N, T, C)"
    wnames = "(KH, KW, C, F)" if nsp == 2 else "(K, C, F)"
    try:
        if x.ndim != nsp + 2:
            raise ShapeError(f"the input must be {nsp + 2}-D {names} (channels last), got {fmt_shape(x.shape)}"
                             + (" (add a channel axis of 1 with gc.expand_dims(x, -1))" if x.ndim == nsp + 1
                                else ROWS_HINT[nsp] if x.ndim == 2 else ""))
        if w.ndim != nsp + 2:
            raise ShapeError(f"the filter must be {nsp + 2}-D {wnames}, got {fmt_shape(w.shape)} (input "
                             f"{fmt_shape(x.shape)})")
        if x.dtype not in FLOAT_DTYPES or x.dtype != w.dtype:
            raise DTypeError(f"needs a float input and filter of one dtype, got {x.dtype} and {w.dtype}")
        window = tuple(w.shape[:nsp])
        c, f = w.shape[nsp], w.shape[nsp + 1]
        if not all(isinstance(k, int) for k in (*window, c, f)):
            raise ShapeError(f"the filter's dims must be known, got {fmt_shape(w.shape)}")
        if not all(k >= 1 for k in window):
            raise ShapeError(f"the filter {fmt_shape(w.shape)} {wnames} has an empty window: its spatial dims must "
                             "be >= 1")
        g = _groups(groups)
        cin = x.shape[-1]  # (a symbolic one is refused below, as without groups)
        if g > 1 and ((isinstance(cin, int) and cin % g) or f % g):
            raise ShapeError(f"groups={g} must divide both the input's channels C = {cin} (input "
                             f"{fmt_shape(x.shape)}) and the filters F = {f} (filter {fmt_shape(w.shape)}); "
                             "pick groups dividing both (depthwise: groups = C, F a multiple of C)")
        if cin != c * g:
            per = f" per group (groups={g}" + (f": C/groups = {cin}/{g} = {cin // g})" if isinstance(cin, int)
                                                else ")") if g > 1 else ""
            raise ShapeError(f"the filter {fmt_shape(w.shape)} expects {c} input channels{per} but the input "
                             f"{fmt_shape(x.shape)} has {cin}" +
                             (f"; a grouped filter is {wnames[:-5]}C/groups, F)" if g > 1 else ""))
        strides = _per_axis(stride, nsp, "stride")
        dilation = _per_axis(dilation, nsp, "dilation")
        pads, out = _geometry(x, nsp, window, strides, dilation, padding, what, w)
    except GraphcError as err:
        raise _fail(err, (x, w), what) from None
    n = x.shape[0]
    rows = n
    for o in out:
        rows = rows * o
    if g > 1:
        return _grouped(x, w, g, strides, dilation, pads, what, rows), (n, *out, f)
    win = _padded_windows(x, pads, window, strides, dilation)  # (N, *out, *window, C)
    cols = reshape(win, (rows, math.prod(window) * c))
    prod = matmul(cols, reshape(w, (math.prod(window) * c, f)))
    # the gradient of Conv: the transposed convolution (per phase at stride > 1), not the composition's
    prod = apply(CONV, (prod, x, w), pads=tuple(tuple(p) for p in pads), strides=tuple(strides),
                 dilation=tuple(dilation))
    return prod, (n, *out, f)


def _groups(groups) -> int:
    if not _is_int(groups) or groups < 1:
        raise ShapeError(f"groups must be an int >= 1, got {groups!r}")
    return int(groups)


# a grouped convolution with several channels a group is this many Conv nodes at most, else one batched product
GROUPS_AS_CONVS = 8


def _grouped(x, w, g: int, strides, dilation, pads, what: str, rows) -> Tensor:
    """The grouped convolution's (N*O.., F) matrix of x (N, *sizes, C) and the filter w (*window, C/g, F), with
    PyTorch's grouping: input channels i*C/g + c and filters i*F/g + j form group i.

    With several channels a group and at most GROUPS_AS_CONVS groups, each group is a convolution of its own (a
    channel slice of x, a filter slice of w), so the Conv op and its paths serve it (the product read from the
    image in place, Winograd, the transposed input gradient), and the groups' products are concatenated. With more
    groups, one batched product over them, (g, N*O.., taps*C/g) @ (g, taps*C/g, F/g): the windows of the image
    made group-major first (one copy of the image), so the stored operand is the windows' own layout (an einsum of
    the channels-last windows stored the im2col matrix, then its group-major copy: 1.08-1.35x this step's time at
    9-32 groups). Measured on Zen 4 (N = 16, 14x14, 64 channels, 3x3, 1 thread, one training step, rough: a
    loaded machine): that einsum's batched product took 2.8x the per-group convolutions' time at 2 groups and 4.1x
    at 8 (a group's Conv reads the image in place), about the same at 16 groups, where the per-group form compiled
    3x longer (22 s against 7.7: each group's products and gradients are kernels of their own).

    With one channel a group (depthwise: g = C, F = m*C) a group's product would be KH*KW deep and m wide, all
    packing and no GEMM, and C of them. The taps are summed elementwise instead (the memory-bound
    multiply-accumulate every framework's depthwise kernel is): the windows view times the filter, summed over the
    window axes, vectorized along the channels; with m > 1 each channel is first repeated m times, so output c*m + j
    reads channel c. The filter is broadcast over the batch before the product so that its gradient, the sum of
    windows times cotangent, is summed per image first (an image's windows stay in cache while all the taps are
    summed) and then over the batch: summed over the whole batch at once it walked the batch once per tap (N = 32,
    28x28, 64 channels, 3x3, 1 thread: that kernel 28.5 -> 9.6 ms, the step 44 -> 16 ms, rough). Against the
    grouped product (an einsum as above, C products 9 deep) the same step took 1/20 of the time, and 1/2.6 with
    a channel multiplier of 2 at stride 2 (N = 32, 28x28, 32 channels). All these forms are compositions: their
    gradients are those ops' (the depthwise input gradient the windows' spread back). (The tap sum for several
    channels a group, on the channels transposed group-minor and repeated per filter, summed over the taps and a
    group's channels, was tried for the many-groups case: 0.75x the batched product's step at 32 groups of 4, but
    9.5x at 9 groups of 4 -> 8 filters, its windows' cotangent stored (N, O.., taps, C/g, F); not taken.)"""
    from graphc.ops.linalg import matmul
    from graphc.ops.movement import _pad, _slice, broadcast_to, concatenate, repeat, reshape, transpose, windows
    from graphc.ops.reduce import sum as reduce_sum

    nsp = x.ndim - 2
    window, cg, f = tuple(w.shape[:nsp]), w.shape[nsp], w.shape[nsp + 1]
    fg = f // g
    if 1 < cg and g <= GROUPS_AS_CONVS:
        parts = []
        for i in range(g):
            xi = _slice(x, [0] * (x.ndim - 1) + [i * cg], [*x.shape[:-1], (i + 1) * cg], [1] * x.ndim)
            wi = _slice(w, [0] * (nsp + 1) + [i * fg], [*w.shape[:-1], (i + 1) * fg], [1] * w.ndim)
            parts.append(conv_matrix(xi, wi, nsp, strides, pads, dilation, what)[0])
        return concatenate(parts, axis=1)
    if cg > 1:  # the image group-major (g, N, *sizes, C/g), so its windows are the product's operand as they are
        xg = transpose(reshape(x, (*x.shape[:-1], g, cg)), (1 + nsp, *range(1 + nsp), 2 + nsp))
        xp = _pad(xg, [0, 0, *(p[0] for p in pads), 0], [0, 0, *(p[1] for p in pads), 0], [0] * xg.ndim, 0)
        cols = reshape(windows(xp, window, strides, dilation, axes=tuple(range(2, 2 + nsp))),
                       (g, rows, math.prod(window) * cg))  # (g, N*O.., taps*C/g)
        filt = transpose(reshape(w, (math.prod(window) * cg, g, fg)), (1, 0, 2))  # (g, taps*C/g, F/g)
        return reshape(transpose(matmul(cols, filt), (1, 0, 2)), (rows, f))
    if fg > 1:
        x = repeat(x, fg, axis=-1)
    n = x.shape[0]
    win = _padded_windows(x, pads, window, strides, dilation)  # (N, *out, *window, F)
    wb = broadcast_to(reshape(w, (1,) * (1 + nsp) + (*window, f)), (n,) + (1,) * nsp + (*window, f))
    return reshape(reduce_sum(win * wb, tuple(range(1 + nsp, 1 + 2 * nsp))), (rows, f))


def conv2d(x, w, stride=1, padding="valid", dilation=1, groups=1) -> Tensor:
    """The 2-D convolution (cross-correlation, as in every deep-learning framework) of channels-last images
    x (N, H, W, C) with filters w (KH, KW, C, F): (N, OH, OW, F). `stride` and `dilation` are an int or a pair;
    `padding` is "valid", "same" (TensorFlow/JAX: output ceil(H/s), the odd cell at the bottom/right), an int
    (every side) or ((top, bottom), (left, right)). `groups` g (PyTorch's): the channels are split into g
    groups of C/g and the filters into g groups of F/g, filter group i seeing channel group i only; w is then
    (KH, KW, C/g, F). groups=C is a depthwise convolution (F = m*C: m filters per channel, output c*m + j)."""
    return _conv(x, w, 2, stride, padding, dilation, "conv2d", groups)


def conv1d(x, w, stride=1, padding="valid", dilation=1, groups=1) -> Tensor:
    """The 1-D convolution of sequences x (N, T, C) with filters w (K, C, F): (N, OT, F); arguments as for
    conv2d with one spatial axis (padding: a string, an int or one (before, after) pair). padding="causal" (Keras')
    pads dilation·(K-1) steps before and none after: output t sees inputs t and earlier only (WaveNet, TCNs).
    `groups` as conv2d's: w is (K, C/groups, F)."""
    padding = one_axis_padding(padding)
    return _conv(x, w, 1, stride, padding, dilation, "conv1d", groups)


def _pool(x, nsp: int, window, stride, padding, kind: str, what: str) -> Tensor:
    from graphc.ops import reduce
    from graphc.ops.movement import _pad, reshape, windows

    x = as_tensor(x)
    try:
        if x.ndim != nsp + 2:
            names = "(N, H, W, C)" if nsp == 2 else "(N, T, C)"
            raise ShapeError(f"the input must be {nsp + 2}-D {names} (channels last), got {fmt_shape(x.shape)}"
                             + (ROWS_HINT[nsp] if x.ndim == 2 else ""))
        if x.dtype not in FLOAT_DTYPES and not (kind == "max" and x.dtype in ("int32", "int64")):
            raise DTypeError(f"needs a float input, got {x.dtype}")
        win = _per_axis(window, nsp, "window")
        strides = win if stride is None else _per_axis(stride, nsp, "stride")
        pads, out = _geometry(x, nsp, win, strides, (1,) * nsp, padding, what)
        if kind == "max":  # a window of padding alone has no max: -inf would flow on (NaN in any loss)
            for a, ((lo, _), k, st, o) in enumerate(zip(pads, win, strides, out, strict=True)):
                size = x.shape[1 + a]
                empty = [i for i in range(o) if i * st + k <= lo or i * st >= lo + size]
                if empty:
                    raise ShapeError(f"padding {pads[a]} on {_axis(nsp, a + 1)} leaves output position {empty[0]} a "
                                     f"window of padding only (window {k}, stride {st}, size {size}): its max "
                                     "would be -inf; pad less than the window")
    except GraphcError as err:
        raise _fail(err, (x,), what) from None
    low, high = [0, *(p[0] for p in pads), 0], [0, *(p[1] for p in pads), 0]
    axes = tuple(range(1 + nsp, 1 + 2 * nsp))  # the window offset axes of the windows view
    if kind == "max":
        fill = float("-inf") if x.dtype in FLOAT_DTYPES else int(np.iinfo(x.dtype).min)
        return reduce.max(windows(_pad(x, low, high, [0] * x.ndim, fill), win, strides), axes)
    total = reduce.sum(windows(_pad(x, low, high, [0] * x.ndim, 0), win, strides), axes)
    if not any(lo or hi for lo, hi in pads):
        return total / float(math.prod(win))
    # The count of real (unpadded) cells in each window, known when the graph is built: a product of one count
    # per axis (a window is a box), so a broadcast product of small integer vectors, exact in any float dtype
    # (a float64 evaluation divides in float64), not a table of OH·OW reciprocals built cell by cell.
    count = None
    for a, ((lo, _), k, st, o) in enumerate(zip(pads, win, strides, out, strict=True)):
        start = np.arange(o) * st - lo
        real = np.minimum(start + k, x.shape[1 + a]) - np.maximum(start, 0)
        c = reshape(constant(np.maximum(real, 1).astype(x.dtype)),  # padding only: 0 / 1, the mean 0
                    tuple(o if i == 1 + a else 1 for i in range(x.ndim)))
        count = c if count is None else count * c
    return total / count


def max_pool2d(x, window, stride=None, padding="valid") -> Tensor:
    """The max over each window of channels-last images x (N, H, W, C); `stride` defaults to the window (as
    PyTorch and Keras). Padding cells are -inf, so they never win unless a window holds nothing else. The
    gradient goes to the arg-max; ties share it evenly (the `max` op's rule)."""
    return _pool(x, 2, window, stride, padding, "max", "max_pool2d")


def avg_pool2d(x, window, stride=None, padding="valid") -> Tensor:
    """The mean over each window of x (N, H, W, C), counting only real (unpadded) cells."""
    return _pool(x, 2, window, stride, padding, "avg", "avg_pool2d")


def max_pool1d(x, window, stride=None, padding="valid") -> Tensor:
    """max_pool2d for sequences x (N, T, C)."""
    padding = one_axis_padding(padding)
    return _pool(x, 1, window, stride, padding, "max", "max_pool1d")


def avg_pool1d(x, window, stride=None, padding="valid") -> Tensor:
    """avg_pool2d for sequences x (N, T, C)."""
    padding = one_axis_padding(padding)
    return _pool(x, 1, window, stride, padding, "avg", "avg_pool1d")
