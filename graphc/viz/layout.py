"""Layered (Sugiyama-style) layout of a view, shared by the SVG and PNG renderers: layers by longest path
from the leaves, dummy vertices on long edges, barycenter sweeps against crossings, and x positions by
weighted isotonic regression towards each vertex's neighbours. Every step is iterative."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from graphc.errors import GraphcError
from graphc.viz import style
from graphc.viz.view import View

HGAP = 26.0  # between boxes in a layer
VGAP = 42.0  # between layers
DUMMY_GAP = 10.0  # between edges passing through a layer
MARGIN = 12.0
EDGE_MODES = ("curved", "straight", "orthogonal")


@dataclass
class Placed:
    x: float  # left
    y: float  # top
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass
class Route:
    edge: int  # index into view.edges
    points: list[tuple[float, float]]
    bezier: bool = False  # points are a cubic Bézier chain (p0, then c1 c2 p per piece), as graphviz gives them


@dataclass
class LegendItem:
    key: str
    x: float  # swatch's left
    y: float  # row's top
    text: str


@dataclass
class Layout:
    width: float
    height: float
    boxes: list[Placed]  # parallel to view.boxes
    routes: list[Route]
    legend: list[LegendItem] = field(default_factory=list)
    edges: str = "curved"


LEGEND_ROW = 18.0
SWATCH_W, SWATCH_H = 22.0, 12.0


def layout(view: View, *, edges: str = "curved", legend: bool = True, engine: str = "builtin") -> Layout:
    if edges not in EDGE_MODES:
        raise GraphcError(f"draw: edges must be one of {', '.join(EDGE_MODES)}, got {edges!r}")
    sizes = [(b.width, b.height) for b in view.boxes]
    links = [(e.src, e.dst) for e in view.edges]
    if engine == "builtin":
        boxes, routes = layered(sizes, links, [b.floating for b in view.boxes])
    elif engine == "dot":
        from graphc.viz.dot import dot_layout

        boxes, routes = dot_layout(sizes, links)
    else:
        raise GraphcError(f"draw: engine must be 'builtin' or 'dot', got {engine!r}")
    # the origin at the top-left corner of what was placed, whatever the engine's coordinates
    x0 = min([b.x for b in boxes] + [x for r in routes for x, _ in r.points], default=0.0)
    y0 = min([b.y for b in boxes] + [y for r in routes for _, y in r.points], default=0.0)
    for b in boxes:
        b.x, b.y = b.x - x0, b.y - y0
    for r in routes:
        r.points = [(x - x0, y - y0) for x, y in r.points]
    gw = max((b.x + b.w for b in boxes), default=0.0)
    gh = max((b.y + b.h for b in boxes), default=0.0)
    for r in routes:
        for x, y in r.points:
            gw, gh = max(gw, x), max(gh, y)
    items: list[LegendItem] = []
    top = MARGIN
    if legend:
        keys = view.legend()
        row_w = max(gw, 420.0)
        x, y = MARGIN, MARGIN
        for k in keys:
            text = style.LEGEND_TEXT[k]
            w = SWATCH_W + 6 + style.text_width(text, "small")
            if x > MARGIN and x + w > MARGIN + row_w:
                x, y = MARGIN, y + LEGEND_ROW
            items.append(LegendItem(k, x, y, text))
            x += w + 18
        if items:
            top = y + LEGEND_ROW + 10
    for b in boxes:
        b.x += MARGIN
        b.y += top
    for r in routes:
        r.points = [(x + MARGIN, y + top) for x, y in r.points]
    width = max(gw + 2 * MARGIN, max((it.x + SWATCH_W + 6 + style.text_width(it.text, "small") for it in items),
                                     default=0.0) + MARGIN)
    return Layout(math.ceil(width), math.ceil(gh + top + MARGIN), boxes, routes, items, edges)


# ------------------------------------------------------------------------------------------------ the algorithm


def layered(sizes: list[tuple[float, float]], links: list[tuple[int, int]], floating: list[bool] | None = None, *,
            sweeps: int = 8, passes: int = 10) -> tuple[list[Placed], list[Route]]:
    """Place boxes of the given sizes (top to bottom, sources first) and route each link through the layers.

    A vertex is placed at its longest path from the sources; sources, and vertices marked `floating`, sink to
    just above their first reader instead."""
    n = len(sizes)
    order = _topological(n, links)
    pos = {v: i for i, v in enumerate(order)}
    oriented = [(a, b, False) if pos[a] < pos[b] else (b, a, True) for a, b in links if a != b]
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b, _ in oriented:
        preds[b].append(a)
        succs[a].append(b)
    layer = [0] * n
    for v in order:
        layer[v] = max((layer[p] + 1 for p in preds[v]), default=0)
    for v in reversed(order):  # a leaf sits just above its first reader, not at the top of the drawing
        if succs[v] and (not preds[v] or (floating is not None and floating[v])):
            layer[v] = max(layer[v], min(layer[s] for s in succs[v]) - 1)

    # vertices: the boxes, then one dummy per layer an edge passes through
    vlayer = list(layer)
    vkey = [float(pos[v]) for v in range(n)]
    up: list[list[int]] = [[] for _ in range(n)]
    down: list[list[int]] = [[] for _ in range(n)]
    chains: list[list[int]] = []
    for a, b, _ in oriented:
        chain = [a]
        for L in range(layer[a] + 1, layer[b]):
            vlayer.append(L)
            vkey.append(pos[a] + 0.5)
            up.append([])
            down.append([])
            chain.append(len(vlayer) - 1)
        chain.append(b)
        for u, w in zip(chain, chain[1:], strict=False):
            down[u].append(w)
            up[w].append(u)
        chains.append(chain)
    nv = len(vlayer)
    nlayers = max(vlayer, default=-1) + 1
    layers: list[list[int]] = [[] for _ in range(nlayers)]
    for v in sorted(range(nv), key=lambda v: vkey[v]):
        layers[vlayer[v]].append(v)

    # ordering: barycenter sweeps, keeping the best ordering seen
    index = [0] * nv

    def renumber(L: int) -> None:
        for i, v in enumerate(layers[L]):
            index[v] = i

    for L in range(nlayers):
        if L > 0:
            _sort_by_barycenter(layers[L], up, index)
        renumber(L)
    best = [list(ly) for ly in layers]
    best_cross = _total_crossings(layers, down, index)
    for s in range(sweeps):
        if best_cross == 0:
            break
        rng = range(1, nlayers) if s % 2 == 0 else range(nlayers - 2, -1, -1)
        nbrs = up if s % 2 == 0 else down
        for L in rng:
            _sort_by_barycenter(layers[L], nbrs, index)
            renumber(L)
        c = _total_crossings(layers, down, index)
        if c < best_cross:
            best, best_cross = [list(ly) for ly in layers], c
    layers = best
    for L in range(nlayers):
        renumber(L)

    # x: pack, then pull each vertex towards its neighbours keeping the order and the gaps
    width = [sizes[v][0] if v < n else 2.0 for v in range(nv)]
    x = [0.0] * nv
    for ly in layers:
        acc = 0.0
        for i, v in enumerate(ly):
            if i:
                acc += _sep(ly[i - 1], v, width, n)
            x[v] = acc
    for p in range(passes):
        mode = p % 3  # 0: follow the layer above, 1: the layer below, 2: both
        rng = range(nlayers) if mode != 1 else range(nlayers - 1, -1, -1)
        for L in rng:
            ly = layers[L]
            if not ly:
                continue
            targets, weights = [], []
            for v in ly:
                nb = up[v] if mode == 0 else down[v] if mode == 1 else up[v] + down[v]
                targets.append(sum(x[u] for u in nb) / len(nb) if nb else x[v])
                weights.append((4.0 if v >= n else 1.0) * (1.0 if nb else 0.05))
            seps = [_sep(ly[i], ly[i + 1], width, n) for i in range(len(ly) - 1)]
            for v, xv in zip(ly, _isotonic(targets, weights, seps), strict=True):
                x[v] = xv
    left = min((x[v] - width[v] / 2 for v in range(nv)), default=0.0)

    # y: one band per layer, as tall as its tallest box
    band_h = [0.0] * nlayers
    for v in range(n):
        band_h[vlayer[v]] = max(band_h[vlayer[v]], sizes[v][1])
    band_top = [0.0] * nlayers
    acc = 0.0
    for L in range(nlayers):
        band_top[L] = acc
        acc += band_h[L] + VGAP
    boxes = []
    for v in range(n):
        w, h = sizes[v]
        L = vlayer[v]
        boxes.append(Placed(x[v] - w / 2 - left, band_top[L] + (band_h[L] - h) / 2, w, h))

    # ports: edges leave and enter a box at points spread along its bottom and top, in the order of their ends
    out_port: dict[tuple[int, int], float] = {}
    in_port: dict[tuple[int, int], float] = {}
    for v in range(n):
        for ports, nbrs, side in ((out_port, down[v], 0), (in_port, up[v], 1)):
            if not nbrs:
                continue
            ends = sorted(range(len(nbrs)), key=lambda k: x[nbrs[k]])
            step = min(14.0, sizes[v][0] * 0.7 / max(len(nbrs) - 1, 1))
            for rank, k in enumerate(ends):
                key = (v, nbrs[k]) if side == 0 else (nbrs[k], v)
                ports.setdefault(key, x[v] - left + (rank - (len(nbrs) - 1) / 2) * step)
    routes = []
    edge_ids = [k for k, (a, b) in enumerate(links) if a != b]
    for k, chain, (_, _, rev) in zip(edge_ids, chains, oriented, strict=True):
        a, b = chain[0], chain[-1]
        pts = [(out_port[(a, chain[1])], boxes[a].y + boxes[a].h)]
        for d in chain[1:-1]:
            L = vlayer[d]
            pts.append((x[d] - left, band_top[L]))
            pts.append((x[d] - left, band_top[L] + band_h[L]))
        pts.append((in_port[(chain[-2], b)], boxes[b].y))
        if rev:
            pts.reverse()
        routes.append(Route(k, pts))
    return boxes, routes


def _topological(n: int, links: list[tuple[int, int]]) -> list[int]:
    """Kahn's order, smallest index first among the ready; vertices on a cycle follow in index order."""
    indeg = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for a, b in links:
        if a != b:
            out[a].append(b)
            indeg[b] += 1
    ready = [v for v in range(n) if indeg[v] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        v = heapq.heappop(ready)
        order.append(v)
        for w in out[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                heapq.heappush(ready, w)
    if len(order) < n:
        seen = set(order)
        order += [v for v in range(n) if v not in seen]
    return order


def _sort_by_barycenter(ly: list[int], nbrs: list[list[int]], index: list[int]) -> None:
    keys = {}
    for v in ly:
        nb = nbrs[v]
        keys[v] = sum(index[u] for u in nb) / len(nb) if nb else float(index[v])
    ly.sort(key=lambda v: (keys[v], index[v]))


def _total_crossings(layers: list[list[int]], down: list[list[int]], index: list[int]) -> int:
    total = 0
    for ly in layers:
        pairs = sorted((index[u], index[w]) for u in ly for w in down[u])
        if len(pairs) < 2:
            continue
        size = max(j for _, j in pairs) + 1
        tree = [0] * (size + 1)  # a Fenwick tree over the lower ends seen so far
        seen = 0
        for _, j in pairs:
            k, below = j + 1, 0
            while k > 0:
                below += tree[k]
                k -= k & -k
            total += seen - below
            k = j + 1
            while k <= size:
                tree[k] += 1
                k += k & -k
            seen += 1
    return total


def _sep(a: int, b: int, width: list[float], n: int) -> float:
    gap = HGAP if a < n and b < n else DUMMY_GAP if a >= n and b >= n else HGAP / 2
    return (width[a] + width[b]) / 2 + gap


def _isotonic(targets: list[float], weights: list[float], seps: list[float]) -> list[float]:
    """argmin sum w (x - t)^2 subject to x[i+1] - x[i] >= seps[i] (pool adjacent violators on x - offset)."""
    offs = [0.0]
    for s in seps:
        offs.append(offs[-1] + s)
    blocks: list[list[float]] = []  # [weight, weighted sum, count]
    for t, w, o in zip(targets, weights, offs, strict=True):
        blocks.append([w, w * (t - o), 1])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] > blocks[-1][1] / blocks[-1][0]:
            w2, s2, c2 = blocks.pop()
            blocks[-1][0] += w2
            blocks[-1][1] += s2
            blocks[-1][2] += c2
    out: list[float] = []
    for w, s, c in blocks:
        out.extend([s / w] * int(c))
    return [y + o for y, o in zip(out, offs, strict=True)]


# ------------------------------------------------------------------------------------------------ edge geometry

ARROW_LEN, ARROW_HALF = 7.0, 3.5

Command = tuple[str, tuple[float, ...]]  # ("M", (x, y)), ("L", (x, y)) or ("C", (x1, y1, x2, y2, x, y))


def edge_geometry(route: Route, mode: str) -> tuple[list[Command], list[tuple[float, float]]]:
    """The path of an edge (shortened by the arrowhead) and the arrowhead's triangle, for any renderer."""
    pts = list(route.points)
    if route.bezier:
        tip, prev = pts[-1], pts[-2]
    elif mode == "straight":
        tip, prev = pts[-1], pts[-2]
    else:
        down = 1.0 if pts[-1][1] >= pts[-2][1] else -1.0  # curved and orthogonal edges arrive vertically
        tip, prev = pts[-1], (pts[-1][0], pts[-1][1] - down)
    dx, dy = tip[0] - prev[0], tip[1] - prev[1]
    norm = math.hypot(dx, dy) or 1.0
    ux, uy = dx / norm, dy / norm
    base = (tip[0] - ux * ARROW_LEN, tip[1] - uy * ARROW_LEN)
    arrow = [tip, (base[0] - uy * ARROW_HALF, base[1] + ux * ARROW_HALF),
             (base[0] + uy * ARROW_HALF, base[1] - ux * ARROW_HALF)]
    pts[-1] = base
    cmds: list[Command] = [("M", pts[0])]
    if route.bezier:
        for i in range(1, len(pts) - 2, 3):
            cmds.append(("C", (*pts[i], *pts[i + 1], *pts[i + 2])))
        return cmds, arrow
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if mode == "straight" or abs(x1 - x0) < 0.5:
            cmds.append(("L", (x1, y1)))
        elif mode == "orthogonal":
            ym = (y0 + y1) / 2
            cmds += [("L", (x0, ym)), ("L", (x1, ym)), ("L", (x1, y1))]
        else:
            ym = (y0 + y1) / 2
            cmds.append(("C", (x0, ym, x1, ym, x1, y1)))
    return cmds, arrow
