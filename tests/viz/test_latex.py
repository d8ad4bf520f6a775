"""The maths of a graph: graphc's gradient graphs, read back as sympy, equal sympy's own derivatives; the
chain-rule form of an MLP's gradients is read off the gradient graph (transposes, ⊙ f', column sums)."""

import random

import pytest
import sympy

import graphc as gc
from graphc.errors import GraphcError
from graphc.viz import Latex, latex, to_sympy

w_, x_, b_ = (sympy.Symbol(n, real=True) for n in "wxb")


def scalars():
    return gc.input("w", ()), gc.input("x", ()), gc.input("b", ())


SMOOTH = {
    "tanh(wx+b)^2": lambda w, x, b: gc.tanh(w * x + b) ** 2,
    "sigmoid(wx)*b": lambda w, x, b: gc.sigmoid(w * x) * b,
    "log(1+exp(wx))/b": lambda w, x, b: gc.log(1.0 + gc.exp(w * x)) / b,
    "softplus(w-x)*sqrt(b*b+1)": lambda w, x, b: gc.softplus(w - x) * gc.sqrt(b * b + 1.0),
}


@pytest.mark.parametrize("name", list(SMOOTH))
def test_gradient_graph_equals_sympys_derivative(name):
    w, x, b = scalars()
    y = SMOOTH[name](w, x, b)
    value = to_sympy(y)
    for leaf, sym in ((w, w_), (x, x_), (b, b_)):
        g = to_sympy(gc.grad(y, leaf))
        assert sympy.simplify((g - sympy.diff(value, sym)).rewrite(sympy.exp)) == 0, (name, sym)


def test_relu_gradient_matches_away_from_the_kink():
    w, x, b = scalars()
    y = gc.relu(w * x + b) * w
    value = to_sympy(y)
    grads = [to_sympy(g) for g in gc.grad(y, [w, x, b])]
    rng = random.Random(0)
    for _ in range(20):
        point = {w_: rng.uniform(-2, 2), x_: rng.uniform(-2, 2), b_: rng.uniform(-2, 2)}
        if abs(float((w_ * x_ + b_).subs(point))) < 1e-3:
            continue
        for g, sym in zip(grads, (w_, x_, b_), strict=True):
            want = sympy.diff(value, sym).subs(point).rewrite(sympy.Max).rewrite(sympy.Piecewise)
            assert float(g.rewrite(sympy.Max).subs(point)) == pytest.approx(float(want), abs=1e-9)


def test_latex_scalar_form():
    w, x, b = scalars()
    y = gc.tanh(w * x + b) ** 2
    out = latex(y, [w, b])
    assert isinstance(out, Latex) and out.mode == "scalar"
    src = str(out)
    assert src.startswith("\\begin{aligned}") and out._repr_latex_().startswith("$$")
    assert r"\frac{\partial L}{\partial w}" in src and r"\frac{\partial L}{\partial b}" in src
    assert r"\tanh" in src and "x" in src
    value = out.exprs["L"]
    assert sympy.simplify(value - sympy.tanh(w_ * x_ + b_) ** 2) == 0
    assert sympy.simplify(out.exprs[r"\frac{\partial L}{\partial w}"] - sympy.diff(value, w_)) == 0
    assert balanced(src)


def test_latex_few_elements_gives_vectors_and_jacobians():
    v = gc.param("v", (2,))
    a = gc.input("a", ())
    out = latex(gc.tanh(v * a))
    jac = out.exprs[r"\frac{\partial L}{\partial v}"]
    v1, v2, a_ = (sympy.Symbol(n, real=True) for n in ("v_1", "v_2", "a"))
    want = sympy.Matrix([[sympy.diff(sympy.tanh(v1 * a_), s) for s in (v1, v2)],
                         [sympy.diff(sympy.tanh(v2 * a_), s) for s in (v1, v2)]])
    assert (jac - want).applyfunc(lambda e: sympy.simplify(e.rewrite(sympy.exp))) == sympy.zeros(2, 2)


@pytest.fixture(scope="module")
def mlp2_latex():
    x = gc.input("x", ("N", 4))
    logits = gc.nn.mlp(x, [8, 3])
    loss = gc.nn.softmax_cross_entropy(logits, gc.input("labels", ("N",), "int32"))
    return latex(loss)


def test_mlp_chain_rule_structure(mlp2_latex):
    out = mlp2_latex
    assert out.mode == "matrix"
    eq = dict(out.lines)
    # forward: layers named by their scope, the activation after the pre-activation
    assert eq["z_{1}"] == r"x W_{1} + b_{1}"
    assert eq["h_{1}"] == r"\mathrm{relu}\left(z_{1}\right)"
    assert eq["z_{2}"] == r"h_{1} W_{2} + b_{2}"
    # backward: the transposes of matmul's flags, the activation's derivative, the column sums of the biases
    assert eq[r"\frac{\partial L}{\partial W_{2}}"] == r"h_{1}^{\top} \delta_{2}"
    assert eq[r"\frac{\partial L}{\partial b_{2}}"] == r"\sum_{\mathrm{rows}} \delta_{2}"
    assert eq[r"\delta_{1}"] == (r"\frac{\partial L}{\partial z_{1}} = \left(\delta_{2} W_{2}^{\top}\right) \odot "
                                 r"\mathrm{relu}'\left(z_{1}\right)")
    assert eq[r"\frac{\partial L}{\partial W_{1}}"] == r"x^{\top} \delta_{1}"
    assert eq[r"\frac{\partial L}{\partial b_{1}}"] == r"\sum_{\mathrm{rows}} \delta_{1}"
    assert eq[r"\mathrm{relu}'\left(u\right)"] == r"\mathbf{1}\left[u > 0\right]"
    # the loss's own gradient is the softmax minus the one-hot labels, over N
    assert r"\delta_{2}" in eq and r"\frac{\partial L}{\partial z_{2}}" in eq[r"\delta_{2}"]
    lhs = [lhs for lhs, _ in out.lines]
    assert lhs.index(r"\delta_{2}") < lhs.index(r"\frac{\partial L}{\partial W_{2}}") < lhs.index(r"\delta_{1}")
    assert balanced(str(out))


def test_chain_rule_is_read_from_the_graph_not_a_template():
    x = gc.input("x", ("N", 3))
    with gc.scope("enc"):
        w = gc.param("enc.W", (2, 3))  # stored transposed: z = x Wᵀ
        z = gc.matmul(x, w, tb=True)
        h = gc.tanh(z)
    v = gc.param("v", (2, 1))
    loss = gc.mean((h @ v) ** 2) + gc.nn.l2([w], 0.02)
    eq = dict(latex(loss).lines)
    assert eq["z_{1}"] == r"x W_{1}^{\top}"
    assert eq[r"\frac{\partial L}{\partial W_{1}}"].startswith(r"\delta_{1}^{\top} x")  # (x Wᵀ)' is δᵀ x
    assert r"\frac{W_{1}}{50}" in eq[r"\frac{\partial L}{\partial W_{1}}"]  # the penalty's gradient, nu W
    assert r"\tanh'\left(z_{1}\right)" in eq[r"\delta_{1}"]
    assert eq[r"\tanh'\left(u\right)"] == r"1 - \tanh^{2}{\left(u \right)}"


def test_unscoped_layers_are_recognized():
    x = gc.input("x", ("N", 5))
    W, b, V = gc.param("W", (5, 3)), gc.param("b", (3,)), gc.param("V", (3, 1))
    loss = gc.nn.binary_cross_entropy(gc.sigmoid(x @ W + b) @ V, gc.input("y", ("N",)))
    eq = dict(latex(loss).lines)
    assert eq["z_{1}"] == "x W + b" and eq["h_{1}"] == r"\sigma\left(z_{1}\right)"
    assert eq[r"\frac{\partial L}{\partial W}"] == r"x^{\top} \delta_{1}"
    assert eq[r"\frac{\partial L}{\partial V}"] == r"h_{1}^{\top} \delta_{2}"


def test_errors():
    x = gc.input("x", ("N", 2))
    with pytest.raises(GraphcError, match="scalar"):
        latex(gc.tanh(x), mode="matrix")
    with pytest.raises(GraphcError, match="mode"):
        latex(gc.sum(x), mode="fancy")
    with pytest.raises(GraphcError, match="symbolic shape"):
        to_sympy(gc.tanh(x))


def balanced(src: str) -> bool:
    depth = 0
    for ch in src.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0 and src.count(r"\left") == src.count(r"\right")


def test_names_with_latex_special_characters_stay_names():
    """`&` would add a column to the aligned block, `%` comment out the rest of the line, `#` and `$` stop LaTeX."""
    x = gc.input("R&D %#$", ("N", 2))
    w = gc.param("W{1}^~\\", (2, 3))
    for mode in ("scalar", "matrix"):
        text = str(gc.latex(gc.mean(gc.relu(x @ w)), mode=mode)) if mode == "matrix" else str(
            gc.latex(gc.sum(gc.input("a&b%c", (2,)) * gc.param("w", (2,))), mode=mode))
        for line in text.splitlines():
            stripped = line.replace(r"\&", "").replace(r"\%", "").replace(r"\#", "").replace(r"\$", "")
            assert "%" not in stripped and "#" not in stripped and "$" not in stripped
            assert stripped.count("&") <= 1  # the one alignment column
    text = str(gc.latex(gc.mean(gc.relu(x @ w)), mode="matrix"))
    assert r"\mathrm{R\&D \%\#\$}" in text
    assert r"\mathrm{W\{1\}\hat{}\sim{}\backslash{}}" in text


def test_values_of_one_scan_are_told_apart_by_their_output_index():
    xs = gc.input("xs", ("T", "N", 4))
    h = gc.nn.lstm(xs, 8, name="l")
    text = str(latex(gc.sum(h * h)))
    rhs = [line.split(" &= ", 1)[1] for line in text.splitlines()[1:-1] if " &= " in line]
    outputs = {r.rstrip(" \\") for r in rhs if r.startswith(r"\mathrm{scan\_output}")}
    assert len(outputs) >= 2  # distinct outputs, distinct right-hand sides
    assert r"\mathrm{scan\_output}_{0}" in text


def test_a_graph_too_deep_to_write_is_refused_with_advice():
    x = gc.input("x", ("N", 4))
    h = x
    for i in range(400):
        h = gc.tanh(h * 1.0001 + float(i % 7))
    with pytest.raises(GraphcError, match=r"latex: y is \d+ operations deep.*gc.show\(y\) or gc.draw\(y\)"):
        latex(gc.sum(h))
    h = x
    for i in range(80):  # just under the limit: written out, no RecursionError
        h = gc.tanh(h * 1.0001 + float(i % 7))
    assert r"\tanh" in str(latex(gc.sum(h)))


def test_a_symbolic_denominator_is_printed():
    """N != 1 read False (a sympy dim symbol's `not NotImplemented`), so the matrix chain rule of a mean lost its
    1/N: dL/dz printed as h ⊙ tanh'(z)."""
    from graphc.ir.dims import dim_symbol_class

    N = dim_symbol_class()("N")
    assert (N != 1) is True and (N == 1) is False and (N != N) is False
    X = gc.input("X", ("N", 3))
    W = gc.param("W", (3, 2))
    text = str(gc.latex(gc.mean(gc.tanh(X @ W) ** 2), mode="matrix"))
    assert r"= \frac{h_{1} \odot \tanh'\left(z_{1}\right)}{N}" in text, text


def test_a_non_finite_constant_prints():
    """An attention mask's where(mask, s, -inf): gc.latex raised a bare TypeError ('invalid input: -inf')."""
    x = gc.input("x", ("N", 3))
    mask = gc.input("mask", ("N", 3), "bool")
    W = gc.param("W", (3, 3))
    y = gc.sum(gc.log_softmax(gc.where(mask, x @ W, float("-inf")), axis=1))
    text = str(gc.latex(y, mode="matrix"))
    assert r"-\infty" in text, text
    nan = str(gc.latex(gc.sum(gc.where(mask, x, float("nan"))), mode="matrix"))
    assert r"\text{NaN}" in nan or "nan" in nan.lower(), nan


def test_the_max_of_a_few_elements_is_written_without_simplifying_its_tie_splits(monkeypatch):
    """sympy.simplify folded the gradient's sum of tie indicators (a Piecewise each) into 2**n branches: the max of
    3 elements took a minute, of 4 three. Above SIMPLIFY_MAX_PIECEWISE only the parts without one are simplified;
    a formula with one or two (a maximum, a where) is still simplified whole."""
    real_simplify = sympy.simplify
    seen = []

    def simplify(e, *args, **kw):
        seen.append(len(e.atoms(sympy.Piecewise)) if isinstance(e, sympy.Basic) else 0)
        if seen[-1] > 2:  # minutes: give up at once (_tidy takes that as a simplifier giving up)
            raise RuntimeError(f"sympy.simplify of {seen[-1]} Piecewise")
        return real_simplify(e, *args, **kw)

    monkeypatch.setattr(sympy, "simplify", simplify)
    x = gc.input("x", (4,))
    out = latex(gc.max(x))
    assert seen and max(seen) <= 2, seen
    xs = sympy.symbols("x_1:5", real=True)
    grad = out.exprs[r"\frac{\partial L}{\partial x}"]
    at = dict(zip(xs, [1.0, 3.0, 3.0, 2.0], strict=True))
    assert [float(g.subs(at)) for g in grad] == [0.0, 0.5, 0.5, 0.0]
    # a maximum of two: still simplified whole (x moves into the branches, the nested Piecewise flattens)
    seen.clear()
    w, x1, b = scalars()
    gb = latex(gc.maximum(w, x1 * b)).exprs[r"\frac{\partial L}{\partial b}"]
    assert 2 in seen and gb == sympy.Piecewise((0, w_ > b_ * x_), (x_ / 2, sympy.Eq(w_, b_ * x_)), (x_, True))


def test_auto_mode_writes_the_matrix_form_where_an_op_has_no_element_formula():
    """A few-element graph with a cumsum (or a scan) chose the element-wise form and then failed on the cumsum."""
    x = gc.input("X", (2,))
    w = gc.param("w", ())
    out = latex(gc.sum(gc.cumsum(x, axis=0) * w))
    assert out.mode == "matrix" and r"\mathrm{cumsum}" in str(out) and r"\frac{\partial L}{\partial w}" in str(out)
    with pytest.raises(GraphcError, match=r"cumsum \(f32\[2\], at test_latex.py:\d+\) has no element formula"):
        latex(gc.sum(gc.cumsum(x, axis=0) * w), mode="scalar")
    with pytest.raises(GraphcError, match=r"cumsum .* has no element formula, so y \(f32\[2\]\) cannot be written "
                                          r"element by element.*reduce y first"):
        latex(gc.cumsum(x * w, axis=0))
