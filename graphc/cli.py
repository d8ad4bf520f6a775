"""The `graphc` command."""

from __future__ import annotations

import argparse
import sys

import graphc as gc


def _demo(args) -> int:
    """Print a small MLP's loss graph and its gradient graph."""
    x = gc.input("x", ("N", 4))
    labels = gc.input("labels", ("N",), "int32")
    logits = gc.nn.mlp(x, [8, 3], activation="relu")
    loss = gc.nn.softmax_cross_entropy(logits, labels)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    print("# forward: a 4-8-3 ReLU MLP with softmax cross-entropy")
    print(gc.to_text(loss, sources=False))
    print("\n# loss and its gradients (one backward sweep; forward values are reused)")
    print(gc.to_text([loss, *grads], sources=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphc", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="print a small MLP's graph and its gradient graph")
    demo.set_defaults(fn=_demo)
    args = parser.parse_args(argv)
    fn = getattr(args, "fn", _demo)
    try:
        return fn(args)
    except gc.GraphcError as e:
        print(f"graphc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
