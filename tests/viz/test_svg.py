"""Drawings: well-formed self-contained SVG, the user's names on the boxes, forward and gradient told apart,
forward values reused by backprop marked, layers collapsed when large, compiled kernels, PNG, the layout."""

import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import graphc as gc
from graphc.errors import GraphcError
from graphc.viz import SVG, draw, to_svg
from graphc.viz.layout import layered

NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def mlp2():
    x = gc.input("x", ("N", 4))
    logits = gc.nn.mlp(x, [8, 3])
    loss = gc.nn.softmax_cross_entropy(logits, gc.input("labels", ("N",), "int32"))
    return loss, gc.grad(loss, gc.nn.parameters(loss))


@pytest.fixture(scope="module")
def mlp3():
    x = gc.input("x", ("N", 12))
    logits = gc.nn.mlp(x, [16, 16, 5])
    loss = gc.nn.softmax_cross_entropy(logits, gc.input("labels", ("N",), "int32"))
    return loss, gc.grad(loss, gc.nn.parameters(loss))


def parse(svg) -> ET.Element:
    return ET.fromstring(str(svg))


def nodes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{NS}g") if "node" in g.get("class", "").split()]


def label(g: ET.Element) -> str:
    """The first line of a box: its <text> with the spans joined."""
    return "".join(g.find(f"{NS}text").itertext())


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{NS}text")]


def test_well_formed_self_contained_svg(mlp2):
    loss, grads = mlp2
    svg = draw([loss, *grads])
    root = parse(svg)
    assert root.tag == f"{NS}svg"
    w, h = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}" and w > 0 and h > 0
    text = str(svg)
    assert "href" not in text and "url(" not in text and "<style" not in text and "<script" not in text
    assert svg._repr_svg_() == text and isinstance(to_svg(loss), str)
    for g in nodes(root):  # every box inside the canvas
        r = g.find(f"{NS}rect")
        assert 0 <= float(r.get("x")) and float(r.get("x")) + float(r.get("width")) <= w
        assert 0 <= float(r.get("y")) and float(r.get("y")) + float(r.get("height")) <= h


def test_boxes_carry_the_users_names_op_and_shape(mlp2):
    loss, grads = mlp2
    root = parse(draw([loss, *grads]))
    labels = {label(g) for g in nodes(root)}
    for expected in ("x  f32[N,4]", "labels  i32[N]", "mlp.0.W  f32[4,8]", "mlp.1.b  f32[3]",
                     "matmul  f32[N,8]", "relu  f32[N,8]", "matmul[ta]  f32[4,8]", "matmul[tb]  f32[N,8]"):
        assert expected in labels
    all_text = texts(root)
    assert "mlp.0" in all_text  # the layer's scope under its nodes
    assert "mlp.0 · grad of relu" in all_text
    assert "le(·, 0.0)" in all_text  # the constant folded into its reader's label
    assert not any(t.startswith("constant") for t in labels)


def test_forward_and_gradient_are_coloured_apart_with_a_legend(mlp2):
    loss, grads = mlp2
    root = parse(draw([loss, *grads]))
    fills = {}
    for g in nodes(root):
        kind = "grad" if "grad" in g.get("class").split() else "forward" if "forward" in g.get("class") else None
        if kind:
            fills.setdefault(kind, set()).add(g.find(f"{NS}rect").get("fill"))
    assert len(fills["grad"]) == 1 and len(fills["forward"]) == 1 and fills["grad"] != fills["forward"]
    grad_matmuls = [g for g in nodes(root) if label(g) == "matmul[ta]  f32[4,8]"]
    assert grad_matmuls and "grad" in grad_matmuls[0].get("class").split()
    legend = texts(next(g for g in root.iter(f"{NS}g") if g.get("class") == "legend"))
    assert "forward" in legend and "gradient (built by grad)" in legend
    assert "forward value reused by backprop" in legend


def test_forward_values_backprop_reads_are_marked(mlp2):
    loss, grads = mlp2
    root = parse(draw([loss, *grads]))
    reused = {label(g) for g in nodes(root) if "reused" in g.get("class").split()}
    # relu's output feeds dW2 = h1ᵀ δ2 and relu's own derivative (relu(z) > 0), exp feeds softmax's
    assert {"relu  f32[N,8]", "exp  f32[N,3]"} <= reused
    assert "add  f32[N,8]" not in reused  # so the pre-activation need not be kept
    assert not any(lbl.startswith(("x ", "mlp.")) for lbl in reused)  # leaves are not "kept" values
    for g in nodes(root):
        if "reused" in g.get("class").split():
            assert len(g.findall(f"{NS}rect")) == 2  # the double border
    # read only for its shape (broadcast_like's model) is not a reuse
    per_sample = [g for g in nodes(root) if label(g) == "sub  f32[N]"]
    assert per_sample and "reused" not in per_sample[0].get("class").split()


def test_large_graphs_collapse_layers_and_expand_on_request(mlp3):
    loss, grads = mlp3
    assert len(gc.topo_order([loss, *grads])) > 60
    svg = draw([loss, *grads])
    root = parse(svg)
    groups = {label(g) for g in nodes(root) if "group" in g.get("class").split()}
    assert groups == {"mlp.0", "mlp.1", "mlp.2", "∂ mlp.0", "∂ mlp.1", "∂ mlp.2"}
    assert "mlp.0.W  f32[12,16]" in {label(g) for g in nodes(root)}  # parameters stay visible by name
    assert not any(label(g) == "relu  f32[N,16]" for g in nodes(root))
    assert "collapsed layer (scope)" in texts(root)

    opened = parse(draw([loss, *grads], expand=["mlp.1"]))
    groups = {label(g) for g in nodes(opened) if "group" in g.get("class").split()}
    assert groups == {"mlp.0", "mlp.2", "∂ mlp.0", "∂ mlp.2"}
    assert any("mlp.1" in "".join(t.itertext()) for g in nodes(opened) for t in g.iter(f"{NS}text"))

    full = parse(draw([loss, *grads], expand=True))
    assert not any("group" in g.get("class").split() for g in nodes(full))
    assert len(nodes(full)) > len(nodes(root))


def test_a_dict_labels_its_outputs(mlp2):
    loss, grads = mlp2
    root = parse(draw({"loss": loss, "dW1": grads[0]}))
    assert "⇒ loss" in texts(root) and "⇒ dW1" in texts(root)
    outs = [g for g in nodes(root) if "output" in g.get("class").split()]
    assert len(outs) == 2


def test_compiled_function_draws_one_box_per_kernel():
    x = gc.input("x", ("N", 3))
    w = gc.param("w_k", (3, 2))
    loss = gc.mean(gc.tanh(x @ w) ** 2)
    g = gc.grad(loss, w)
    fn = gc.compile([loss, g], training=True, cache=False)
    kernels = fn.program.kernels
    root = parse(draw(fn))
    boxes = {b.get("data-name"): b for b in nodes(root)}
    for k in kernels:
        box = boxes[k.name]
        words = " ".join(texts(box))
        assert k.name in words
        for n in k.nodes:  # the ops fused into it are listed
            assert n.op.name in words
    kinds = {b.get("class").split()[1] for name, b in boxes.items() if name in {k.name for k in kernels}}
    assert "forward" in kinds and kinds & {"grad", "mixed"}
    assert {"x  f32[N,3]", "w_k  f32[3,2]"} <= {label(b) for b in nodes(root)}
    # edges follow buffers: every kernel that reads another's output has an incoming edge
    assert len([e for e in root.iter(f"{NS}g") if e.get("class", "").startswith("edge ")]) >= len(kernels)


def test_files_svg_and_png(tmp_path, mlp2):
    loss, grads = mlp2
    out = draw([loss, *grads], tmp_path / "g.svg")
    assert isinstance(out, SVG)
    ET.parse(tmp_path / "g.svg")
    pytest.importorskip("matplotlib")
    draw(loss, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out.save(tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_tensor_displays_itself_in_notebooks(mlp2):
    loss, _ = mlp2
    svg = loss._repr_svg_()
    assert svg.startswith("<svg") and "x  f32[N,4]" in "".join(parse(svg).itertext())


@pytest.mark.parametrize("edges", ["curved", "straight", "orthogonal"])
def test_edge_styles(edges, mlp2):
    loss, grads = mlp2
    root = parse(draw([loss, *grads], edges=edges))
    paths = [p.get("d") for p in root.iter(f"{NS}path")]
    assert paths and all(d.startswith("M ") for d in paths)
    assert any(" C " in d for d in paths) == (edges == "curved")


def test_a_thousand_node_chain_is_drawn_without_recursion():
    y = gc.input("c", (3,))
    for i in range(1200):
        y = gc.tanh(y) if i % 2 else y * 1.5
    root = parse(draw(y))
    assert len(nodes(root)) == 1201
    tops = [float(g.find(f"{NS}rect").get("y")) for g in nodes(root)]
    assert tops == sorted(tops)  # a chain reads top to bottom


def test_errors_a_user_can_act_on(mlp2):
    loss, _ = mlp2
    with pytest.raises(GraphcError, match="draw: expected a tensor"):
        draw(42)
    with pytest.raises(GraphcError, match="format"):
        draw(loss, format="jpg")
    with pytest.raises(GraphcError, match="edges"):
        draw(loss, edges="wiggly")
    for bad in ("x", -1, True, 2.5):
        with pytest.raises(GraphcError, match="collapse_over must be a node count"):
            draw(loss, collapse_over=bad)
    with pytest.raises(GraphcError, match="expand must be"):
        draw(loss, expand=3)
    with pytest.raises(GraphcError, match="expand must list scope names"):
        draw(loss, expand=["mlp.0", 1])
    with pytest.raises(GraphcError, match="expand names the scope 'mlp.7'.*its scopes: mlp.0, mlp.1"):
        draw(loss, expand=["mlp.7"])
    for dpi in (0, -5, float("nan"), "high"):
        with pytest.raises(GraphcError, match="dpi must be"):
            draw(loss).png(dpi=dpi)
    assert gc.topo_order([[loss]]) == gc.topo_order([loss])  # nested lists of outputs are outputs
    for bad in (None, 5, np.ones(3), [loss, 3], [[loss, 3]], "loss"):
        with pytest.raises(GraphcError, match="topo_order: outputs must be"):
            gc.topo_order(bad)
        with pytest.raises(GraphcError, match="to_sympy: outputs must be"):
            gc.viz.to_sympy(bad)
    if shutil.which("dot") is None:
        with pytest.raises(GraphcError, match="graphviz"):
            draw(loss, engine="dot")


def test_names_with_characters_xml_forbids_are_refused_or_escaped():
    """Control characters and lone surrogates are refused when the tensor is named (they broke every listing);
    XML's markup characters, printable, are escaped."""
    for name in ("a\x1bb", "nul\x00", "tab\tand\x0bvt", "s\ud800"):
        with pytest.raises(gc.GraphcError, match="unprintable character"):
            gc.input(name, (2,))
    svg = draw(gc.sum(gc.input("<&>\"'", (2,)) * 2.0))
    ET.fromstring(svg.text)  # parses
    assert "&lt;&amp;&gt;" in svg.text


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_dot_engine_when_installed(mlp2):
    loss, grads = mlp2
    root = parse(draw([loss, *grads], engine="dot"))
    assert len(nodes(root)) == len(nodes(parse(draw([loss, *grads]))))


def crossings(boxes, links) -> int:
    out = 0
    for a, b in links:
        for c, d in links:
            same_layers = boxes[a].y == boxes[c].y and boxes[b].y == boxes[d].y
            if same_layers and len({a, b, c, d}) == 4 and (boxes[a].cx - boxes[c].cx) * (boxes[b].cx - boxes[d].cx) < 0:
                out += 1
    return out // 2


def test_layout_layers_sweeps_and_spacing():
    # two layers whose first order crosses every edge: a barycenter sweep undoes it
    sizes = [(40.0, 20.0)] * 8
    links = [(0, 7), (1, 6), (2, 5), (3, 4), (0, 6)]
    boxes, routes = layered(sizes, links)
    assert crossings(boxes, links) == 0
    assert {boxes[v].y for v in range(4)} == {0.0} and len({boxes[v].y for v in range(4, 8)}) == 1
    # longest path layering, leaves just above their first reader, no overlaps within a layer
    sizes = [(60.0, 20.0)] * 5
    links = [(0, 1), (1, 2), (2, 3), (4, 3)]
    boxes, routes = layered(sizes, links)
    assert boxes[0].y < boxes[1].y < boxes[2].y < boxes[3].y
    assert boxes[4].y == boxes[2].y  # a leaf read at the bottom is drawn there, not at the top
    same = sorted((b for b in boxes if b.y == boxes[2].y), key=lambda b: b.x)
    assert all(p.x + p.w <= q.x for p, q in zip(same, same[1:], strict=False))
    assert len(routes) == len(links) and all(r.points[0][1] < r.points[-1][1] for r in routes)


def test_long_edges_route_around_boxes():
    sizes = [(50.0, 20.0)] * 5
    links = [(0, 1), (1, 2), (2, 3), (0, 3)]  # 0 -> 3 passes two layers with boxes in them
    boxes, routes = layered(sizes, links + [(4, 3)])
    long_edge = next(r for r in routes if r.edge == 3)
    assert len(long_edge.points) == 2 + 2 * 2  # through one dummy per layer passed
    for x, y in long_edge.points[1:-1]:
        for b in (boxes[1], boxes[2]):
            assert not (b.x < x < b.x + b.w and b.y < y < b.y + b.h)


def test_drawings_are_deterministic(mlp2):
    loss, grads = mlp2
    assert to_svg([loss, *grads]) == to_svg([loss, *grads])


def test_png_without_matplotlib_says_so(monkeypatch, tmp_path, mlp2):
    loss, _ = mlp2
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(GraphcError, match="matplotlib"):
        draw(loss, tmp_path / "g.png")
    draw(loss, tmp_path / "g.svg")  # SVG needs nothing


def test_every_character_a_drawing_uses_has_a_glyph_in_the_png_font():
    """The PNG is drawn with style.MPL_FONT: a symbol it lacks (the loop's ⟲ was one) renders as an empty box."""
    pytest.importorskip("matplotlib")
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from graphc.viz import style

    xs = gc.input("xs", (3, "N", 2))
    h = gc.nn.rnn(xs, 4, name="r")
    loss = gc.sum(h * h)
    svg = draw([loss, *gc.grad(loss, gc.nn.parameters(loss))], expand=True)
    chars = {c for t in parse(svg).iter(f"{NS}text") for c in "".join(t.itertext()) if not c.isspace()}
    font = FT2Font(font_manager.findfont(style.MPL_FONT))
    missing = sorted(c for c in chars if font.get_char_index(ord(c)) == 0)
    assert "↻" in chars and not missing, missing


def test_a_drawing_too_large_to_read_is_refused_quickly_unless_asked_for():
    x = gc.input("x", ("N", 2))
    h = x
    for _ in range(700):
        h = gc.tanh(h)
    loss = gc.sum(h)
    with pytest.raises(GraphcError, match=r"draw: the drawing would have \d+ boxes, over max_boxes=2000"):
        draw([loss, *gc.grad(loss, [x])])
    with pytest.raises(GraphcError, match="over max_boxes=500"):
        draw(h, max_boxes=500)
    assert len(nodes(parse(draw(h, max_boxes=None)))) > 700  # one box per tanh, on request
    with pytest.raises(GraphcError, match="max_boxes must be a positive int or None"):
        draw(loss, max_boxes=0)


def test_a_drawing_into_a_missing_folder_or_onto_a_file_is_refused_before_the_layout(tmp_path, mlp2):
    """A bare FileNotFoundError from open(), after the layout."""
    loss, _ = mlp2
    missing = tmp_path / "no" / "such" / "g.svg"
    with pytest.raises(GraphcError, match=r"its folder '.*such' does not exist; create it first \(os.makedirs"):
        draw(loss, missing)
    (tmp_path / "f").write_text("")
    with pytest.raises(GraphcError, match="is a file, not a folder"):
        draw(loss, tmp_path / "f" / "g.png")
    with pytest.raises(GraphcError, match="does not exist"):
        draw(loss).save(missing)
    with pytest.raises(GraphcError, match="cannot write the drawing to .*: Is a directory"):
        draw(loss).save(tmp_path, "svg")
    assert not missing.parent.exists()
