"""Regenerate the README's figures: python docs/make_figures.py"""

from __future__ import annotations

from pathlib import Path

import graphc as gc

HERE = Path(__file__).resolve().parent


def gradient_graph() -> Path:
    """A 2-3-1 tanh MLP's squared-error loss and its four gradients, drawn in one picture."""
    x = gc.input("x", ("N", 2))
    y = gc.input("y", ("N", 1))
    h = gc.nn.dense(x, 3, "tanh", name="hidden")
    loss = gc.nn.mse(gc.nn.dense(h, 1, name="out"), y)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    outputs = {"L": loss, **{f"∂L/∂{p.name}": g for p, g in zip(params, grads, strict=True)}}
    path = HERE / "gradient_graph.svg"
    gc.draw(outputs, path)
    return path


if __name__ == "__main__":
    print(gradient_graph())
