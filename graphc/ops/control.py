"""stop_gradient: the identity whose gradient is zero (used where a value is a constant of the math)."""

from __future__ import annotations

from graphc.ops.core import Op, Tensor, apply, as_tensor, register


class StopGradient(Op):
    name = "stop_gradient"
    kind = "identity"

    def infer(self, inputs, attrs):
        (x,) = inputs
        return x.shape, x.dtype

    def reference(self, node, args, ctx):
        return args[0]

    def vjp(self, node, g):
        return (None,)

    def lower(self, node, lx):
        return lx.input(0)


STOP_GRADIENT = register(StopGradient())


def stop_gradient(x) -> Tensor:
    x = as_tensor(x)
    if x.op is STOP_GRADIENT:
        return x
    return apply(STOP_GRADIENT, (x,))
