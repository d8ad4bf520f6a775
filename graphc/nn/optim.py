"""Optimizers and learning-rate schedules. An update is graph ops, so it compiles into the training step.

Each optimizer declares its state (velocity, Adam's moments) as graph inputs named after the parameter, and
builds the new parameter and state values from the gradients, the step number `t` (a scalar input, 1 for the
first step) and the learning rate (a scalar input, so a schedule changes it between epochs without
recompiling)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graphc import ops
from graphc.errors import GraphcError
from graphc.ir.node import Node
from graphc.runtime.buffers import aligned_empty


@dataclass(frozen=True)
class Optimizer:
    """Base: plain (stochastic) gradient descent, θ ← θ - lr·g."""

    name = "sgd"

    def state_names(self, p: Node) -> list[str]:
        return []

    def init_state(self, params: list[Node]) -> dict[str, np.ndarray]:
        out = {}
        for p in params:
            for s in self.state_names(p):
                out[s] = aligned_empty(p.shape, p.dtype)  # 64-byte aligned, like the parameters
                out[s][...] = 0
        return out

    def state_inputs(self, params: list[Node]) -> dict[str, Node]:
        return {s: ops.input(s, p.shape, p.dtype) for p in params for s in self.state_names(p)}

    def step(self, p: Node, g: Node, state: dict[str, Node], t: Node, lr: Node,
             hyper: dict[str, Node] | None = None) -> tuple[Node, dict[str, Node]]:
        """New value of p and of its state. `hyper` may hold hyperparameters as scalar inputs (momentum)."""
        return p - ops.cast(lr, p.dtype) * g, {}


@dataclass(frozen=True)
class SGD(Optimizer):
    """SGD with optional (heavy-ball or Nesterov) momentum: v ← μv + g; θ ← θ - lr·v (Nesterov: θ - lr(g + μv)).

    This is PyTorch's formulation (dampening 0), so a schedule that changes lr does not rescale velocity."""

    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        if not 0.0 <= self.momentum < 1.0:
            raise GraphcError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0.0:
            raise GraphcError("Nesterov momentum needs momentum > 0")

    @property
    def name(self) -> str:  # type: ignore[override]
        return "nesterov" if self.nesterov else ("momentum" if self.momentum else "sgd")

    def state_names(self, p: Node) -> list[str]:
        return [f"opt.v.{p.name}"] if self.momentum else []

    def step(self, p, g, state, t, lr, hyper=None):
        lr = ops.cast(lr, p.dtype)
        if not self.momentum:
            return p - lr * g, {}
        (vname,) = self.state_names(p)
        mu = (hyper or {}).get("momentum", self.momentum)
        if isinstance(mu, Node) and mu.dtype != p.dtype:  # a float32 input driving a float64 parameter
            mu = ops.cast(mu, p.dtype)
        v = mu * state[vname] + g
        direction = g + mu * v if self.nesterov else v
        return p - lr * direction, {vname: v}


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba): bias-corrected first and second moments."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    name = "adam"

    def state_names(self, p: Node) -> list[str]:
        return [f"opt.m.{p.name}", f"opt.v.{p.name}"]

    def step(self, p, g, state, t, lr, hyper=None):
        return self._adam(p, p, g, state, t, lr)

    def _adam(self, p, start, g, state, t, lr):
        """The Adam step of p's moments, applied to `start` (p itself, or AdamW's decayed p)."""
        mname, vname = self.state_names(p)
        m = self.beta1 * state[mname] + (1.0 - self.beta1) * g
        v = self.beta2 * state[vname] + (1.0 - self.beta2) * (g * g)
        # the bias corrections 1 - beta^t in float64, as PyTorch computes them (in Python floats): in float32,
        # 1 - 0.999 is 9.99987e-4, every update 1.3e-5 off relative to torch.optim.Adam's
        tt = ops.cast(t, "float64")
        c1 = ops.cast(1.0 - ops.power(ops.constant(self.beta1, "float64"), tt), p.dtype)
        c2 = ops.cast(1.0 - ops.power(ops.constant(self.beta2, "float64"), tt), p.dtype)
        mhat = m / c1
        vhat = v / c2
        return start - ops.cast(lr, p.dtype) * mhat / (ops.sqrt(vhat) + self.eps), {mname: m, vname: v}


@dataclass(frozen=True)
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter) as PyTorch's torch.optim.AdamW: decoupled weight decay, then the Adam step.

        θ ← θ·(1 - lr·weight_decay)
        θ ← θ - lr·m̂ / (√v̂ + eps)        (m̂, v̂: Adam's bias-corrected moments of the gradient alone)

    The decay shrinks the parameter itself, outside the moments: unlike an L2 penalty (gc.nn.l2, `l2=`, which
    is PyTorch's Adam(weight_decay=)), it is not rescaled by 1/√v̂. It uses the learning rate of the step, so a
    schedule that lowers lr lowers the decay with it, as in PyTorch. Every parameter the optimizer steps decays:
    graphc has no parameter groups, and the trainer steps all of a model's parameters, biases included, as
    torch.optim.AdamW(model.parameters()) does (TrainConfig.penalize selects for the l2/l1 penalties only).

    `weight_decay` is the default value; the trainer feeds it as a scalar input `hyper["weight_decay"]` (as lr),
    so one compiled step serves any value (a standalone binary's --weight-decay)."""

    weight_decay: float = 0.01
    name = "adamw"

    def __post_init__(self):
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise GraphcError(f"AdamW: weight_decay must be a finite number >= 0, got {wd!r}")

    def step(self, p, g, state, t, lr, hyper=None):
        wd = (hyper or {}).get("weight_decay", self.weight_decay)
        # 1 - lr·wd in float64, as PyTorch computes it (Python floats), then rounded once to the parameter's type
        wd64 = ops.cast(wd, "float64") if isinstance(wd, Node) else ops.constant(float(wd), "float64")
        keep = ops.cast(1.0 - ops.cast(lr, "float64") * wd64, p.dtype)
        return self._adam(p, p * keep, g, state, t, lr)


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """RMSprop as PyTorch's (not centered, no momentum): v ← αv + (1-α)g²; θ ← θ - lr·g / (√v + eps)."""

    alpha: float = 0.99
    eps: float = 1e-8
    name = "rmsprop"

    def state_names(self, p: Node) -> list[str]:
        return [f"opt.v.{p.name}"]

    def step(self, p, g, state, t, lr, hyper=None):
        (vname,) = self.state_names(p)
        v = self.alpha * state[vname] + (1.0 - self.alpha) * (g * g)
        return p - ops.cast(lr, p.dtype) * g / (ops.sqrt(v) + self.eps), {vname: v}


@dataclass(frozen=True)
class Adagrad(Optimizer):
    """Adagrad as PyTorch's (no decay, accumulator from 0): s ← s + g²; θ ← θ - lr·g / (√s + eps)."""

    eps: float = 1e-10
    name = "adagrad"

    def state_names(self, p: Node) -> list[str]:
        return [f"opt.s.{p.name}"]

    def step(self, p, g, state, t, lr, hyper=None):
        (sname,) = self.state_names(p)
        acc = state[sname] + g * g
        return p - ops.cast(lr, p.dtype) * g / (ops.sqrt(acc) + self.eps), {sname: acc}


# name -> (the optimizer for a momentum value, its default learning rate where it is not the training default)
OPTIMIZERS = {
    "sgd": (lambda mu: SGD(momentum=mu), None),
    "gd": (lambda mu: SGD(momentum=mu), None),
    "momentum": (lambda mu: SGD(momentum=mu or 0.9), None),
    "nesterov": (lambda mu: SGD(momentum=mu or 0.9, nesterov=True), None),
    "adam": (lambda mu: Adam(), 0.001),
    "adamw": (lambda mu: AdamW(), 0.001),
    "rmsprop": (lambda mu: RMSprop(), 0.01),
    "adagrad": (lambda mu: Adagrad(), 0.01),
}


def make(name: str, momentum: float = 0.0, weight_decay: float | None = None) -> Optimizer:
    """An optimizer by name: "gd"/"sgd" (plain), "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad".
    `weight_decay` is AdamW's (None: its default, 0.01); the others have no decoupled decay and refuse one (a
    coupled L2 penalty, PyTorch's Adam(weight_decay=) or SGD(weight_decay=), is gc.nn.l2 / the `l2` option)."""
    if name not in OPTIMIZERS:
        raise GraphcError(f"unknown optimizer {name!r}; use {', '.join(OPTIMIZERS)}")
    if name == "adamw":
        return AdamW() if weight_decay is None else AdamW(weight_decay=weight_decay)
    if weight_decay:
        raise GraphcError(f"weight_decay {weight_decay} is AdamW's decoupled decay and {name} has none: use "
                          f"optimizer 'adamw', or a coupled L2 penalty (l2=NU: the gradient NU·w that PyTorch's "
                          f"SGD/Adam(weight_decay=NU) adds)")
    return OPTIMIZERS[name][0](momentum)


def clip_grad_norm(grads, max_norm, *, eps: float = 1e-6):
    """torch.nn.utils.clip_grad_norm_ as graph ops: the gradients scaled together by min(1, max_norm / (‖g‖ +
    eps)), where ‖g‖ is the 2-norm of all of them at once (one vector). Returns (the clipped gradients in the
    order given, as a list; the total norm before clipping, a scalar tensor), so an update is written as
    `clipped, norm = clip_grad_norm(gc.grad(loss, params), 1.0)` then `p - lr * g` over the pairs.
    `max_norm` is a number > 0 or a scalar float tensor (an input: changed without recompiling). Clipping each
    element instead (torch's clip_grad_value_) is `gc.clip(g, -v, v)`."""
    single = isinstance(grads, Node)
    grads = [grads] if single else list(grads)
    if not grads:
        raise GraphcError("clip_grad_norm: grads must be a gradient tensor or a non-empty list of them (gc.grad's "
                          "result)")
    grads = [ops.as_tensor(g) for g in grads]
    for i, g in enumerate(grads):
        if g.dtype not in ("float32", "float64"):
            raise GraphcError(f"clip_grad_norm: grads[{i}] is {g.dtype}, not a float gradient")
    if isinstance(max_norm, Node):
        if max_norm.ndim != 0 or max_norm.dtype not in ("float32", "float64"):
            raise GraphcError(f"clip_grad_norm: max_norm must be a number > 0 or a scalar float tensor, got a "
                              f"{max_norm.dtype} tensor of shape {max_norm.shape}")
    elif (isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating))
          or not (0 < float(max_norm) < math.inf)):
        raise GraphcError(f"clip_grad_norm: max_norm must be a finite number > 0 (PyTorch's max_norm), got "
                          f"{max_norm!r}")
    total = grad_sumsq(grads)
    coef, norm = clip_coefficient(total, max_norm, eps=eps)
    clipped = [g * ops.cast(coef, g.dtype) for g in grads]
    return (clipped[0] if single else clipped), norm


def grad_sumsq(grads) -> Node:
    """The sum of the squares of every element of `grads` (one scalar, float64 if any gradient is): the square of
    clip_grad_norm's total norm. Data-parallel training sums these over the ranks' shares of the parameters."""
    dtype = "float64" if any(g.dtype == "float64" for g in grads) else "float32"
    squares = [ops.cast(ops.sum(g * g), dtype) for g in grads]
    total = squares[0]
    for sq in squares[1:]:
        total = total + sq
    return total


def clip_coefficient(sumsq: Node, max_norm, *, eps: float = 1e-6) -> tuple[Node, Node]:
    """clip_grad_norm's factor from the gradients' sum of squares (`grad_sumsq`, possibly summed over ranks):
    (min(1, max_norm / (sqrt(sumsq) + eps)), the norm sqrt(sumsq)), in sumsq's dtype."""
    dtype = sumsq.dtype
    norm = ops.sqrt(sumsq)
    limit = ops.cast(max_norm, dtype) if isinstance(max_norm, Node) else ops.constant(float(max_norm), dtype)
    coef = ops.minimum(limit / (norm + ops.constant(float(eps), dtype)), ops.constant(1.0, dtype))
    return coef, norm


@dataclass(frozen=True)
class Schedule:
    """The learning rate for each epoch: constant, step decay (× gamma every `every` epochs), or cosine
    annealing from lr to lr_min over `epochs` epochs."""

    kind: str = "constant"
    gamma: float = 0.1
    every: int = 10
    epochs: int = 1
    lr_min: float = 0.0

    def __post_init__(self):
        if self.kind not in ("constant", "step", "cosine"):
            raise GraphcError(f"unknown schedule {self.kind!r}; use constant, step or cosine")
        if self.every < 1 or self.epochs < 1:
            raise GraphcError("schedule: every and epochs must be >= 1")

    def lr(self, base: float, epoch: int) -> float:
        if self.kind == "constant":
            return base
        if self.kind == "step":
            return base * self.gamma ** (epoch // self.every)
        frac = min(epoch, self.epochs) / self.epochs
        return self.lr_min + 0.5 * (base - self.lr_min) * (1.0 + math.cos(math.pi * frac))
