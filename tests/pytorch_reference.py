"""PyTorch's layers, losses and optimizers in numpy, written from its documented equations, for the tests to compare
graphc against without PyTorch installed (it is only in the optional bench extra; `pip install -e '.[dev]'` then
`pytest` must run everywhere).

Every function here follows the torch API it names (arguments, defaults, weight layout, return values) and is
checked against the real PyTorch in tests/test_references_match_pytorch.py, which runs wherever torch is installed
(the bench extra) and skips elsewhere. Everything is float64.

- recurrent(kind, xs, weights, ...): nn.RNN (tanh) / nn.GRU / nn.LSTM, one layer, time-major, optionally
  bidirectional, with an initial state, and with per-sequence lengths as pack_padded_sequence / pad_packed_sequence
  give them; recurrent_weights() draws parameters under PyTorch's names and layout
- cross_entropy, bce_with_logits, huber, l1, layer_norm, batch_norm: nn.CrossEntropyLoss,
  F.binary_cross_entropy_with_logits, nn.HuberLoss, nn.L1Loss (mean reduction; the last two with their gradient),
  nn.LayerNorm, nn.BatchNorm (both modes, the running statistics' update)
- conv(input, weight, ...), conv_grads(...): F.conv1d / F.conv2d channels-first with groups, and the gradients
  autograd gives for the input, the weight and the bias
- Adam, AdamW, RMSprop, Adagrad: torch.optim's steps on one parameter array (its .lr may change between steps, as
  a schedule sets param_groups[0]["lr"])
"""

from __future__ import annotations

import numpy as np

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # rows of weight_ih / weight_hh: G * H


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def recurrent_weights(kind: str, features: int, hidden: int, bidirectional: bool = False, seed: int = 0) -> dict:
    """A one-layer nn.RNN/GRU/LSTM's parameters as its state_dict names them (weight_ih_l0 (G*H, F), weight_hh_l0
    (G*H, H), bias_ih_l0, bias_hh_l0 (G*H,), and the same with _reverse), drawn as PyTorch initializes them:
    U(-1/sqrt(H), 1/sqrt(H))."""
    rng = np.random.default_rng(seed)
    k, gh = 1.0 / np.sqrt(hidden), GATES[kind] * hidden
    out = {}
    for suffix in ("", "_reverse") if bidirectional else ("",):
        for name, shape in (("weight_ih", (gh, features)), ("weight_hh", (gh, hidden)), ("bias_ih", (gh,)),
                            ("bias_hh", (gh,))):
            out[f"{name}_l0{suffix}"] = rng.uniform(-k, k, size=shape)
    return out


def _cell(kind, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step of the documented cell: (h', c'); c is None except for the LSTM."""
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    if kind == "rnn":  # h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
        return np.tanh(gi + gh), None
    if kind == "gru":  # rows (r, z, n); r multiplies (W_hn h + b_hn), the hidden bias included
        ir, iz, in_ = np.split(gi, 3, axis=-1)
        hr, hz, hn = np.split(gh, 3, axis=-1)
        r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
        n = np.tanh(in_ + r * hn)
        return (1.0 - z) * n + z * h, None
    # lstm: rows (i, f, g, o); c' = f c + i g, h' = o tanh(c')
    i, f, g, o = np.split(gi + gh, 4, axis=-1)
    c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c_new), c_new


def recurrent(kind: str, xs, weights: dict, *, bidirectional: bool = False, lengths=None, h0=None, c0=None):
    """nn.RNN/GRU/LSTM(F, H, bidirectional=...)(xs, hx) for time-major xs (T, N, F): (output (T, N, D*H), h_n
    (D, N, H), c_n (D, N, H) for the LSTM, else None), D = 2 if bidirectional.

    h0, c0 (D, N, H): the initial state (zeros by default). lengths (N,): the batch as a packed sequence
    (pack_padded_sequence(xs, lengths, enforce_sorted=False), the output through pad_packed_sequence(...,
    total_length=T)): sequence n runs over its first lengths[n] steps only, its outputs past them are 0, its h_n
    (and c_n) is the state after its own last step, and the reverse direction starts at that step, from h0."""
    xs = np.asarray(xs, np.float64)
    T, N, _ = xs.shape
    H = weights["weight_hh_l0"].shape[1]
    D = 2 if bidirectional else 1
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    h0 = np.zeros((D, N, H)) if h0 is None else np.asarray(h0, np.float64)
    c0 = np.zeros((D, N, H)) if c0 is None else np.asarray(c0, np.float64)
    outs, hs, cs = [], [], []
    for d, suffix in enumerate(("", "_reverse")[:D]):
        w = [weights[f"{n}_l0{suffix}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, c = h0[d], (c0[d] if kind == "lstm" else None)
        out = np.zeros((T, N, H))
        for t in (range(T) if d == 0 else reversed(range(T))):
            live = (t < lengths)[:, None]  # a step past a sequence's end: its state held, its output 0
            h_new, c_new = _cell(kind, xs[t], h, c, *w)
            h = np.where(live, h_new, h)
            c = np.where(live, c_new, c) if kind == "lstm" else None
            out[t] = np.where(live, h_new, 0.0)
        outs.append(out)
        hs.append(h)
        cs.append(c)
    return np.concatenate(outs, axis=-1), np.stack(hs), (np.stack(cs) if kind == "lstm" else None)


def cross_entropy(logits, target, *, ignore_index: int = -100, label_smoothing: float = 0.0) -> float:
    """nn.CrossEntropyLoss(ignore_index=, label_smoothing=) on logits (M, C) and class indices (M,), mean reduction:
    l_m = -sum_c y_mc log softmax(x_m)_c with y_m = (1 - e) one_hot(t_m) + e / C, averaged over the rows whose
    target is not ignore_index."""
    x = np.asarray(logits, np.float64)
    t = np.asarray(target)
    C = x.shape[1]
    keep = t != ignore_index
    x, t = x[keep], t[keep]
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.full(x.shape, label_smoothing / C)
    y[np.arange(len(t)), t] += 1.0 - label_smoothing
    return float(-(y * logp).sum() / len(t))


def bce_with_logits(x, y) -> float:
    """F.binary_cross_entropy_with_logits(x, y), mean: -[y log s(x) + (1 - y) log(1 - s(x))], s the sigmoid, in
    the form that neither overflows nor cancels: max(x, 0) - x y + log(1 + exp(-|x|))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.mean(np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))))


def huber(input, target, delta: float = 1.0):
    """nn.HuberLoss(delta=), mean: 0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), d = input - target.
    Returns (loss, d loss / d input): clip(d, -delta, delta) / count."""
    d = np.asarray(input, np.float64) - np.asarray(target, np.float64)
    a = np.abs(d)
    loss = np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    return float(loss.mean()), np.clip(d, -delta, delta) / d.size


def l1(input, target):
    """nn.L1Loss(), mean: |input - target|. Returns (loss, d loss / d input): sign(d) / count (0 where d = 0)."""
    d = np.asarray(input, np.float64) - np.asarray(target, np.float64)
    return float(np.abs(d).mean()), np.sign(d) / d.size


def layer_norm(x, weight, bias, eps: float = 1e-5):
    """nn.LayerNorm(weight.shape, eps=) with elementwise affine: over the trailing weight.ndim axes,
    (x - mean) / sqrt(var + eps) * weight + bias, the variance biased (divided by the count)."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - np.ndim(weight), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def batch_norm(X, axis, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    """nn.BatchNorm1d/2d (F.batch_norm) with its channels on `axis`: (y, new running mean, new running var). In
    training, the batch's statistics over every other axis normalize (the variance biased) and the running ones
    move by momentum toward them (the variance unbiased, n / (n - 1)); in inference the running ones normalize and
    stay."""
    red = tuple(a for a in range(X.ndim) if a != axis % X.ndim)
    shape = [1] * X.ndim
    shape[axis] = -1

    def c(v):
        return np.reshape(v, shape)

    if not training:
        return (X - c(rm)) / np.sqrt(c(rv) + eps) * c(gamma) + c(beta), rm, rv
    mu, var = X.mean(axis=red), X.var(axis=red)
    n = X.size // X.shape[axis]
    y = (X - c(mu)) / np.sqrt(c(var) + eps) * c(gamma) + c(beta)
    return y, (1 - momentum) * rm + momentum * mu, (1 - momentum) * rv + momentum * var * n / (n - 1)


class Adam:
    """torch.optim.Adam([param], lr=, betas=, eps=) (no weight decay, not amsgrad): step(grad) does
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; param <- param - lr m^ / (sqrt(v^) + eps), with the bias
    corrections m^ = m / (1 - b1^t), v^ = v / (1 - b2^t) at step t = 1, 2, ..."""

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.param = np.array(param, np.float64)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.m, self.v, self.t = np.zeros_like(self.param), np.zeros_like(self.param), 0

    def step(self, grad):
        self.t += 1
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1.0 - self.beta2) * grad * grad
        m_hat, v_hat = self.m / (1.0 - self.beta1 ** self.t), self.v / (1.0 - self.beta2 ** self.t)
        self.param = self.param - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return self.param


class AdamW(Adam):
    """torch.optim.AdamW([param], lr=, betas=, eps=, weight_decay=) (not amsgrad): the decay decoupled from the
    gradient, at the step's lr, param <- param (1 - lr wd), then Adam's step."""

    def __init__(self, param, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(param, lr, betas, eps)
        self.weight_decay = weight_decay

    def step(self, grad):
        self.param = self.param * (1.0 - self.lr * self.weight_decay)
        return super().step(grad)


class RMSprop:
    """torch.optim.RMSprop([param], lr=, alpha=, eps=) (not centered, no momentum or weight decay):
    v <- alpha v + (1 - alpha) g^2; param <- param - lr g / (sqrt(v) + eps)."""

    def __init__(self, param, lr=1e-2, alpha=0.99, eps=1e-8):
        self.param = np.array(param, np.float64)
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.v = np.zeros_like(self.param)

    def step(self, grad):
        self.v = self.alpha * self.v + (1.0 - self.alpha) * grad * grad
        self.param = self.param - self.lr * grad / (np.sqrt(self.v) + self.eps)
        return self.param


class Adagrad:
    """torch.optim.Adagrad([param], lr=, eps=) (no lr decay or weight decay, the accumulator from 0):
    s <- s + g^2; param <- param - lr g / (sqrt(s) + eps)."""

    def __init__(self, param, lr=1e-2, eps=1e-10):
        self.param = np.array(param, np.float64)
        self.lr, self.eps = lr, eps
        self.s = np.zeros_like(self.param)

    def step(self, grad):
        self.s = self.s + grad * grad
        self.param = self.param - self.lr * grad / (np.sqrt(self.s) + self.eps)
        return self.param


OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}  # graphc's names -> torch.optim's


def _conv_geometry(x, weight, stride, padding, dilation):
    nsp = x.ndim - 2

    def per_axis(v):
        return (v,) * nsp if np.ndim(v) == 0 else tuple(v)

    st, pd, dl = per_axis(stride), per_axis(padding), per_axis(dilation)
    k = weight.shape[2:]
    out = [(x.shape[2 + a] + 2 * pd[a] - dl[a] * (k[a] - 1) - 1) // st[a] + 1 for a in range(nsp)]

    def taps():  # (tap, the input slice it reads of the padded input's spatial axes)
        for tap in np.ndindex(*k):
            yield tap, tuple(slice(dl[a] * tap[a], dl[a] * tap[a] + st[a] * (out[a] - 1) + 1, st[a])
                             for a in range(nsp))

    return pd, out, taps


def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """F.conv1d / F.conv2d (by the input's rank): input (N, C, *spatial), weight (F, C/groups, *kernel), bias (F,);
    padding an int or one per spatial axis, on both sides. Channel group g (C/groups channels from g*C/groups)
    feeds filter group g (F/groups filters from g*F/groups) alone."""
    x, weight = np.asarray(input, np.float64), np.asarray(weight, np.float64)
    pd, out, taps = _conv_geometry(x, weight, stride, padding, dilation)
    xp = np.pad(x, [(0, 0), (0, 0), *((p, p) for p in pd)])
    cg, fg = weight.shape[1], weight.shape[0] // groups
    y = np.zeros((x.shape[0], weight.shape[0], *out))
    for g in range(groups):
        for tap, sl in taps():
            y[:, g * fg:(g + 1) * fg] += np.einsum("nc...,fc->nf...", xp[(slice(None), slice(g * cg, (g + 1) * cg),
                                                                          *sl)],
                                                   weight[(slice(g * fg, (g + 1) * fg), slice(None), *tap)])
    if bias is not None:
        y += np.reshape(bias, (1, -1) + (1,) * (x.ndim - 2))
    return y


def conv_grads(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """The gradients of `conv` (y) for the cotangent grad_output (dL/dy): (dL/dinput, dL/dweight, dL/dbias), as
    y.backward(grad_output) leaves them in .grad."""
    x, weight = np.asarray(input, np.float64), np.asarray(weight, np.float64)
    go = np.asarray(grad_output, np.float64)
    pd, _, taps = _conv_geometry(x, weight, stride, padding, dilation)
    cg, fg = weight.shape[1], weight.shape[0] // groups
    xp = np.pad(x, [(0, 0), (0, 0), *((p, p) for p in pd)])
    dxp, dw = np.zeros_like(xp), np.zeros_like(weight)
    for g in range(groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for tap, sl in taps():
            dxp[(slice(None), cs, *sl)] += np.einsum("nf...,fc->nc...", go[:, fs], weight[(fs, slice(None), *tap)])
            xs = xp[(slice(None), cs, *sl)]
            dw[(fs, slice(None), *tap)] += np.tensordot(go[:, fs], xs, axes=([0, *range(2, xs.ndim)],) * 2)
    crop = tuple(slice(p, p + d) for p, d in zip(pd, x.shape[2:], strict=True))
    return dxp[(slice(None), slice(None), *crop)], dw, go.sum(axis=(0, *range(2, go.ndim)))
