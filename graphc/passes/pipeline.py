"""Lowering: the one ordered list of Graph -> Graph passes. Each is pure; each stage can be printed."""

from __future__ import annotations

from collections.abc import Callable

from graphc.ir.graph import Graph
from graphc.ir.verify import verify
from graphc.passes.dce import dce
from graphc.passes.horizontal import merge_products
from graphc.passes.loops import optimize_loops, stacked_concats
from graphc.passes.simplify import simplify
from graphc.passes.stability import stability

Pass = Callable[[Graph], Graph]

PIPELINE: tuple[tuple[str, Pass], ...] = (
    ("simplify", simplify),
    ("stability", stability),
    ("dce", dce),
    ("loop bodies", optimize_loops),
    ("merge products", merge_products),
    ("stacked concatenations", stacked_concats),
    ("simplify again", simplify),
)


def lower(graph: Graph, *, check: bool = False) -> list[tuple[str, Graph]]:
    """Run the pipeline; returns every stage, the input first ("input", graph). `check` runs the verifier after
    each pass (the tests do)."""
    stages = [("input", graph)]
    for name, p in PIPELINE:
        graph = p(graph)
        if check:
            verify(graph, f"after {name}")
        stages.append((name, graph))
    return stages
