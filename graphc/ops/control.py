"""Control of what is differentiated and computed: stop_gradient (the identity whose gradient is zero),
training_switch (one value in training, another in inference) and with_updates (a value that carries the
in-place updates of a layer's non-trainable state, e.g. batch norm's running statistics)."""

from __future__ import annotations

from graphc.errors import GraphcError
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


class TrainingSwitch(Op):
    """Input 0 in training, input 1 in inference (batch norm: the batch's statistics, or the running ones). The
    mode is the evaluator's (`evaluate(..., training=)`) or the compiled program's (`gc.compile(..., training=)`):
    the first compile stage (`modes`) replaces every switch by the branch of its mode, so the other branch is
    never computed; lowered as is, a switch is its training branch (as dropout lowers its training form)."""
    training_mode = True

    name = "training_switch"
    kind = "identity"

    def infer(self, inputs, attrs):
        a, b = inputs
        if a.shape != b.shape or a.dtype != b.dtype:
            raise GraphcError(f"training_switch: both branches must have one shape and dtype, got {a.type_str} "
                              f"and {b.type_str}")
        return a.shape, a.dtype

    def in_mode(self, node, training):
        return node.inputs[0 if training else 1]

    def reference(self, node, args, ctx):
        return args[0] if ctx.training else args[1]

    def vjp(self, node, g):
        # the cotangent goes to the branch the mode takes: the same switch over (g, 0) and (0, g)
        from graphc.ops.pointwise import full_like

        zero = full_like(g, 0)
        return apply(TRAINING_SWITCH, (g, zero)), apply(TRAINING_SWITCH, (zero, g))

    def lower(self, node, lx):
        return lx.input(0)


TRAINING_SWITCH = register(TrainingSwitch())


def training_switch(in_training, in_inference) -> Tensor:
    """`in_training` when evaluated or compiled with training=True, else `in_inference` (one shape and dtype)."""
    a, b = as_tensor(in_training), as_tensor(in_inference)
    if a is b:
        return a
    return apply(TRAINING_SWITCH, (a, b))


class WithUpdates(Op):
    """Input 0, carrying state updates: inputs (value, leaf_1, new_1, leaf_2, new_2, ...) say that running the
    layer that made `value` in training replaces each leaf (an input: non-trainable state) by its new value;
    the attribute `init` holds each leaf's initial value (a number: the array is filled with it).
    Nothing is differentiated through the updates (only `value` gets the cotangent). `gc.nn.state_updates`
    collects them for `gc.compile(..., updates=)`; the trainer writes them in place every step. Compiling
    strips the node (the `modes` stage): an update is computed only where it is passed as an update."""

    name = "with_updates"
    kind = "identity"

    def infer(self, inputs, attrs):
        if len(inputs) < 3 or len(inputs) % 2 != 1:
            raise GraphcError("with_updates: takes a value and (state, new value) pairs")
        if len(attrs.get("init", ())) != len(inputs) // 2:
            raise GraphcError("with_updates: give one initial value (init) per updated state")
        for leaf, new in zip(inputs[1::2], inputs[2::2], strict=True):
            if leaf.op.name != "input":
                raise GraphcError(f"with_updates: the updated state must be an input, got {leaf.op.name} "
                                  f"{leaf.type_str}")
            if new.shape != leaf.shape or new.dtype != leaf.dtype:
                raise GraphcError(f"with_updates: the new value of {leaf.name!r} ({leaf.type_str}) must have its "
                                  f"shape and dtype, got {new.type_str}")
        return inputs[0].shape, inputs[0].dtype

    def in_mode(self, node, training):  # both modes: an update is computed only where it is passed as one
        return node.inputs[0]

    def reference(self, node, args, ctx):
        return args[0]

    def vjp(self, node, g):
        return (g, *([None] * (len(node.inputs) - 1)))

    def lower(self, node, lx):
        return lx.input(0)

    def pairs(self, node) -> list[tuple]:
        """[(state leaf, its new value), ...]."""
        return list(zip(node.inputs[1::2], node.inputs[2::2], strict=True))


WITH_UPDATES = register(WithUpdates())


def with_updates(value, updates: dict, init: dict) -> Tensor:
    """`value`, carrying `updates` {state input: its new value}, each state starting at `init[state]` (a number;
    see WithUpdates)."""
    flat = []
    for leaf, new in updates.items():
        flat += [as_tensor(leaf), as_tensor(new)]
    return apply(WITH_UPDATES, (as_tensor(value), *flat), init=tuple(float(init[leaf]) for leaf in updates))
