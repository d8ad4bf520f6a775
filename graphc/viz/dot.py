"""An optional layout by graphviz's `dot` (only when it is installed and the caller asks for engine="dot"): dot
places the boxes and routes the splines; graphc's renderers still draw them, so the picture looks the same."""

from __future__ import annotations

import shlex
import shutil
import subprocess

from graphc.errors import GraphcError
from graphc.viz.layout import Placed, Route


def dot_layout(sizes: list[tuple[float, float]], links: list[tuple[int, int]]) -> tuple[list[Placed], list[Route]]:
    exe = shutil.which("dot")
    if exe is None:
        raise GraphcError("draw: engine='dot' needs graphviz's `dot` on the PATH, and it is not installed; "
                          "the default engine='builtin' needs nothing")
    # sizes in inches at 72 per inch, so dot's coordinates come back in the renderers' units
    src = ["digraph G {", "graph [rankdir=TB, nodesep=0.35, ranksep=0.5];",
           'node [shape=box, fixedsize=true, label=""];']
    src += [f"n{i} [width={w / 72:.4f}, height={h / 72:.4f}];" for i, (w, h) in enumerate(sizes)]
    src += [f"n{a} -> n{b};" for a, b in links if a != b]
    src.append("}")
    try:
        res = subprocess.run([exe, "-Tplain"], input="\n".join(src), capture_output=True, text=True, timeout=120,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GraphcError(f"draw: running dot failed: {e}") from None
    if res.returncode != 0:
        raise GraphcError(f"draw: dot failed: {res.stderr.strip()[:500]}")
    height = 0.0
    centers: dict[int, tuple[float, float]] = {}
    splines: dict[tuple[int, int], list[list[tuple[float, float]]]] = {}
    for raw in res.stdout.splitlines():
        f = shlex.split(raw)
        if not f:
            continue
        if f[0] == "graph":
            height = float(f[3]) * 72
        elif f[0] == "node":
            centers[int(f[1][1:])] = (float(f[2]) * 72, height - float(f[3]) * 72)
        elif f[0] == "edge":
            k = int(f[3])
            pts = [(float(f[4 + 2 * i]) * 72, height - float(f[5 + 2 * i]) * 72) for i in range(k)]
            splines.setdefault((int(f[1][1:]), int(f[2][1:])), []).append(pts)
    boxes = []
    for i, (w, h) in enumerate(sizes):
        cx, cy = centers.get(i, (w / 2, h / 2))
        boxes.append(Placed(cx - w / 2, cy - h / 2, w, h))
    routes = []
    for k, (a, b) in enumerate(links):
        options = splines.get((a, b))
        if a == b or not options:
            continue
        routes.append(Route(k, options.pop(0), bezier=True))
    return boxes, routes
