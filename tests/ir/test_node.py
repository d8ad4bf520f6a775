import sys

import networkx as nx
import numpy as np
import pytest

import graphc as gc
from graphc.ir.node import topo_order


def test_identical_subexpressions_are_one_node():
    a = gc.input("a", (3,))
    b = gc.input("b", (3,))
    y = a * b + a * b
    assert y.inputs[0] is y.inputs[1]
    muls = [n for n in topo_order(y) if n.op.name == "mul"]
    assert len(muls) == 1
    assert (a * b) is (a * b)
    assert gc.input("a", (3,)) is a  # same declaration, same node


def test_source_is_not_part_of_identity_and_first_creator_is_kept():
    a = gc.input("a", (2,))
    first = gc.exp(a)
    line = sys._getframe().f_lineno - 1
    again = gc.exp(a)
    assert again is first
    assert again.source.line == line
    assert again.source.file == __file__


def test_nodes_are_immutable():
    a = gc.input("a", (2,))
    with pytest.raises(AttributeError):
        a.shape = (3,)
    with pytest.raises(TypeError):
        a.attrs["name"] = "b"


def test_thousand_layer_chain_does_not_recurse():
    x = gc.input("x", (4,))
    w = gc.param("w", (4,), init="ones")
    h = x
    for _ in range(1000):
        h = gc.tanh(h * w)
    loss = gc.sum(h)
    assert len(topo_order(loss)) == 2 + 2 * 1000 + 1
    gw = gc.grad(loss, w)
    text = gc.to_text([loss, gw])
    assert text.count("\n") > 3000
    out = gc.evaluate([loss, gw], {"x": np.full(4, 0.5, np.float32), "w": np.ones(4, np.float32)})
    assert np.all(np.isfinite(out[1]))
    assert len(gw.digest()) == 64


def test_digest_is_structural():
    x = gc.input("x", (2, 3))
    d1 = gc.sum(gc.exp(x)).digest()
    d2 = gc.sum(gc.exp(gc.input("x", (2, 3)))).digest()
    d3 = gc.sum(gc.log(x)).digest()
    assert d1 == d2 and d1 != d3


def test_text_printout_one_line_per_node_with_shape():
    x = gc.input("x", ("N", 3))
    w = gc.param("w_print", (3, 2))
    y = gc.relu(x @ w)
    text = gc.to_text(y)
    lines = text.splitlines()
    assert lines[0].startswith("graph {") and "x: f32[N,3]" in lines[0] and "w_print: f32[3,2]" in lines[0]
    assert any("f32[N,2] = matmul x w_print" in line for line in lines)
    assert any("= relu %0" in line for line in lines)
    assert lines[-2].strip() == "return %1"
    assert "test_node.py:" in text  # the user's line is shown


def test_networkx_view():
    x = gc.input("x", (2,))
    y = x * x + gc.exp(x)
    g = gc.to_networkx(y)
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_nodes() == len(topo_order(y))
    assert g.number_of_edges() == sum(len(n.inputs) for n in topo_order(y))  # x*x: two edges
    assert nx.is_directed_acyclic_graph(g)
    assert list(nx.topological_generations(g))[0] == [id(x)]


def test_bool_of_tensor_is_a_clear_error():
    x = gc.input("x", (2,))
    with pytest.raises(gc.GraphcError, match="truth value"):
        if x > 0:
            pass


def test_equality_is_structural_identity():
    x = gc.input("x", (2,))
    assert (x + 1) == (x + 1)
    assert (x + 1) != (x + 2)
    assert {x: 1}[gc.input("x", (2,))] == 1


@pytest.mark.parametrize("bad", [3, None, "x", b"x", {"y": 1}, [3], (1.0,)], ids=repr)
def test_outputs_that_are_not_tensors_are_clear_errors(bad):
    """compile and evaluate name what they got when `outputs` is not a tensor or a list of tensors (a bare int
    used to reach `list(3)` in compile: a TypeError from deep inside)."""
    for what, call in (("compile", lambda: gc.compile(bad)), ("evaluate", lambda: gc.evaluate(bad, {}))):
        with pytest.raises(gc.GraphcError, match=f"{what}: outputs must be"):
            call()


def test_other_entry_points_name_a_bad_argument():
    x = gc.input("x", (2,))
    for call, words in ((lambda: gc.show(3), "show: outputs must be"),
                        (lambda: gc.to_networkx(None), "to_networkx: outputs must be"),
                        (lambda: gc.to_text(3), "to_text: outputs must be"),
                        (lambda: gc.show(np.ones(3)), "show: outputs must be .* got ndarray .an array holds values"),
                        (lambda: gc.grad(gc.sum(x), 3), "grad: wrt must be a tensor"),
                        (lambda: gc.compile(gc.sum(x), updates=[x]), "compile: updates must be a dict")):
        with pytest.raises(gc.GraphcError, match=words):
            call()


def test_draw_latex_and_check_grad_arguments(tmp_path):
    x = gc.input("x", ("N", 3))
    y = gc.sum(gc.tanh(x))
    with pytest.raises(gc.GraphcError, match=r"draw: cannot write a .xyz file"):
        gc.draw(y, tmp_path / "g.xyz")  # it used to write SVG under any suffix
    assert not (tmp_path / "g.xyz").exists()
    gc.draw(y, tmp_path / "g")  # no suffix: SVG
    assert (tmp_path / "g").read_text().startswith("<svg")
    with pytest.raises(gc.GraphcError, match="latex: wrt must be a tensor, a list of tensors or a dict of them, "
                                             "got int"):
        gc.latex(y, wrt=3)
    gc.check_grad(y, x, {"x": np.linspace(-1, 1, 6).reshape(2, 3)})  # one tensor, as grad takes it
