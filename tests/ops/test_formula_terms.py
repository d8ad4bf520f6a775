"""Elementwise formulas as graphc terms (what lowering hands the emitter): every built-in op's formula converts
from sympy and round-trips through the per-machine file's JSON, a damaged or stale entry is computed again, a
user's op goes the same way, and a process whose file is warm compiles without building a sympy formula."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.errors import CompileError
from graphc.ir.formula import Term, from_plain, num, show, sym, to_plain
from graphc.ir.lowering import ACC, NEXT
from graphc.ops import pointwise
from graphc.ops.core import OPS
from graphc.ops.pointwise import ElementwiseOp, _DerivativeFile, _digest
from graphc.ops.reduce import CUMSUM, MAX, MIN, PROD, SUM
from graphc.ops.scalar import to_term
from graphc.runtime import cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the parameter values a parametrized op is lowered with (an integer power is repeated squaring, 0.5 sqrt, ...)
PARAMS = {"powc": [{"p": 2}, {"p": 0}, {"p": -1}, {"p": 3.0}, {"p": 0.5}, {"p": -0.5}, {"p": 2.5}],
          "full_like": [{"p": 1.5}, {"p": 3}]}


def builtin_ops():
    return sorted(name for name, op in OPS.items()
                  if isinstance(op, ElementwiseOp) and not op.user and not name.startswith("fn<"))


@pytest.mark.parametrize("name", builtin_ops())
def test_each_builtin_formula_is_a_term_that_round_trips_through_json(name):
    op = OPS[name]
    for attrs in PARAMS.get(name, [{}]):
        t = op.term(attrs)
        assert isinstance(t, Term)
        assert t == to_term(op.expr_for(attrs))
        assert op.term(attrs) is t  # kept in memory
        stored = json.loads(json.dumps(to_plain(t)))  # what the per-machine file gives back
        back = from_plain(stored)
        assert back == t and hash(back) == hash(t) and show(back) == show(t)
        # the arguments are the op's inputs by name (a bool input's too)
        used = {s.value for s in _leaves(t) if s.op == "sym"}
        assert used <= {f"x{k}" for k in range(op.arity)}, (name, used)


def _leaves(t):
    stack, out = [t], []
    while stack:
        x = stack.pop()
        stack.extend(x.args)
        if not x.args:
            out.append(x)
    return out


@pytest.mark.parametrize(("name", "attrs", "text"), [
    ("sub", {}, "x0 - x1"),
    ("div", {}, "x0/x1"),
    ("neg", {}, "-x0"),
    ("where", {}, "where(x0, x1, x2)"),
    ("maximum", {}, "max(x0, x1)"),
    ("ge", {}, "x0 >= x1"),
    ("ne", {}, "x0 != x1"),
    ("logical_and", {}, "x0 & x1"),
    ("logical_not", {}, "~x0"),
    ("softplus", {}, "softplus(x0)"),
    ("arcsinh", {}, "asinh(x0)"),
    ("ceil", {}, "ceil(x0)"),
    ("round", {}, "rint(x0)"),
    ("powc", {"p": 2}, "x0**2"),
    ("powc", {"p": -1}, "x0**-1"),
    ("powc", {"p": 0.5}, "sqrt(x0)"),
    ("powc", {"p": -0.5}, "rsqrt(x0)"),
    ("powc", {"p": 2.5}, "x0**2.5"),
    ("powc", {"p": 3.0}, "x0**3.0"),  # sympy's Float exponent: pow, not repeated squaring, as before
    ("full_like", {"p": 1.5}, "1.5"),
])
def test_builtin_formulas_read_as_their_code(name, attrs, text):
    assert show(OPS[name].term(attrs)) == text


def test_a_sympy_sum_and_product_keep_their_order_and_their_signs():
    x, y, z = sympy.symbols("x0:3", real=True)
    assert to_term(x - 2 * y * z) == Term("add", (sym("x0"), Term("mul", (num(2), sym("x1"), sym("x2")))), 1)
    assert to_term(-x - y) == Term("add", (sym("x0"), sym("x1")), 0)
    assert to_term(-x * y / z) == Term("neg", (Term("div", (Term("mul", (sym("x0"), sym("x1"))), sym("x2"))),))
    assert to_term(sympy.Piecewise((x, y > 0), (z, z < 0), (1, True))) == Term(
        "select", (Term("gt", (sym("x1"), num(0))), sym("x0"),
                   Term("select", (Term("lt", (sym("x2"), num(0))), sym("x2"), num(1)))))
    assert to_term(sympy.Heaviside(x)) == Term("heaviside", (sym("x0"),), 0.5)
    assert to_term(sympy.pi * x + sympy.Rational(1, 3)) == num(1 / 3) + Term("mul", (num(float(sympy.pi)), sym("x0")))


def test_a_formula_with_two_symbols_of_one_name_is_refused():
    with pytest.raises(CompileError, match="two different symbols named x0"):
        to_term(sympy.Symbol("x0", real=True) + sympy.Symbol("x0"))


def test_reduction_rules_are_terms_of_acc_and_next():
    x = gc.input("x", (2, 3))
    want = [(gc.sum, SUM, ACC + NEXT), (gc.prod, PROD, ACC * NEXT), (gc.max, MAX, Term("max", (ACC, NEXT))),
            (gc.min, MIN, Term("min", (ACC, NEXT))), (gc.cumsum, CUMSUM, ACC + NEXT)]
    for fn, op, combine in want:
        node = fn(x, axis=1)
        assert node.op is op and op.reduce_rule(node).combine == combine
    assert (ACC.value, NEXT.value) == ("acc", "next")


# ---------------------------------------------------------------------------------------------------------
# the per-machine file


@pytest.fixture
def fresh_file(tmp_path, monkeypatch):
    """The per-machine file in a directory of the test's own, read afresh."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    f = _DerivativeFile()
    monkeypatch.setattr(pointwise, "_DERIVATIVES", f)
    return f


def _square_plus_exp():
    return ElementwiseOp("t_square_plus_exp", 1, lambda s: s.x0 ** 2 + s.exp(s.x0))  # not registered


def _write(f: _DerivativeFile, entries: dict, version: str | None = None, digest: str | None = None):
    data = {"code_version": version or cache.code_version(), "entries": entries,
            "sha256": digest or _digest(entries)}
    f._path().write_text(json.dumps(data))


def test_a_term_is_stored_in_the_file_and_read_back_by_another_process(fresh_file):
    op = _square_plus_exp()
    t = op.term({})
    assert show(t) == "x0**2 + exp(x0)"
    key = "formula|t_square_plus_exp()|()"
    assert json.loads(fresh_file._path().read_text())["entries"][key] == to_plain(t)
    # another process: the entry, not the formula
    pointwise._DERIVATIVES = _DerivativeFile()
    other = ElementwiseOp("t_square_plus_exp", 1, lambda s: pytest.fail("the formula was built"))
    assert other.term({}) == t


@pytest.mark.parametrize("bad", [
    ["add", 5, ["sym", "x0"]],  # malformed
    ["nope", ["sym", "x0"]],  # an op the vocabulary does not have
    "x0**2",
    None,
])
def test_a_damaged_entry_is_computed_again_and_replaced(fresh_file, bad):
    op = _square_plus_exp()
    key = "formula|t_square_plus_exp()|()"
    _write(fresh_file, {key: bad, "other": ["sym", "g"]})
    t = op.term({})
    assert t == to_term(op.expr)
    entries = json.loads(fresh_file._path().read_text())["entries"]
    assert entries == {key: to_plain(t), "other": ["sym", "g"]}


def test_a_stale_or_tampered_file_is_not_trusted(fresh_file):
    wrong = to_plain(sym("x0") + 1)
    key = "formula|t_square_plus_exp()|()"
    for version, digest in ((cache.code_version()[::-1], None), (None, "0" * 64)):
        _write(fresh_file, {key: wrong}, version, digest)
        fresh = _DerivativeFile()
        pointwise._DERIVATIVES = fresh
        assert show(_square_plus_exp().term({})) == "x0**2 + exp(x0)"


def test_each_parameter_value_has_its_own_entry(fresh_file):
    op = OPS["powc"]
    op._terms.clear()
    assert show(op.term({"p": 2})) == "x0**2" and show(op.term({"p": 2.0})) == "x0**2.0"
    entries = json.loads(fresh_file._path().read_text())["entries"]
    assert {k for k in entries if k.startswith("formula|")} == {"formula|powc(p)|(('p', 2),)",
                                                                "formula|powc(p)|(('p', 2.0),)"}


# ---------------------------------------------------------------------------------------------------------
# a user's op


def test_a_user_op_is_converted_like_a_builtin_and_compiles(fresh_file):
    swish = gc.elementwise("term_swish", lambda z: z / (1 + sympy.exp(-z)) + sympy.Max(z, 0) ** 3)
    op = swish.op
    t = op.term({})
    assert t == to_term(op.expr)
    assert show(t) == "max(0, x0)**3 + x0*sigmoid(x0)"  # the stable form, in sympy's argument order
    assert f"formula|{op.fingerprint()}|()" in json.loads(fresh_file._path().read_text())["entries"]
    x = gc.input("x", ("N", 5), "float64")
    y = swish(x)
    (g,) = gc.grad(gc.sum(y), [x])
    fn = gc.compile([y, g], threads=1)
    v = np.linspace(-3, 3, 10).reshape(2, 5)
    got = fn({"x": v})
    want = [gc.evaluate(o, {"x": v}) for o in (y, g)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_a_user_function_without_native_code_is_a_compile_error_naming_it():
    cot = gc.elementwise("term_cot", lambda z: sympy.cot(z) + z)
    x = gc.input("x", (3,), "float64")
    y = cot(x)
    v = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(gc.evaluate(y, {"x": v}), 1 / np.tan(v) + v)  # the reference has it
    with pytest.raises(CompileError, match="the function cot in cot\\(x0\\) has no native code"):
        gc.compile([y])


# ---------------------------------------------------------------------------------------------------------
# processes

SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import graphc as gc
    from graphc.ops import pointwise

    x = gc.input("x", ("N", 6))
    t = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    h = gc.nn.mlp(x, [8, 4], name="net")
    z = (gc.tanh(h) * gc.sigmoid(h) + gc.softplus(h) - gc.abs(h) ** 2 + gc.where(h > 0, gc.exp(-h), gc.log1p(gc.abs(h)))
         + gc.maximum(h, 0.1) ** 2.5 + gc.sqrt(gc.abs(h) + 1) / (h * h + 1) + gc.sin(h) + gc.remainder(h, 0.75))
    loss = (gc.nn.softmax_cross_entropy(z, t) + gc.mean(gc.nn.dropout(h, 0.8, salt=3) ** 2)
            + gc.mean(gc.max(gc.relu(h), axis=1)) + gc.mean(gc.min(h, axis=1) * gc.cumsum(h, axis=1)[:, -1]))
    params = gc.nn.parameters(loss)
    updates = {p: p - lr * g for p, g in zip(params, gc.grad(loss, params))}
    ef = gc.EpochFunction(loss, updates, x=x, y=t, threads=1)
    rng = np.random.default_rng(0)
    state = {p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32) for p in params}
    X, Y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 4, 32).astype(np.int32)
    stats = ef.run_epoch(X, Y, state, batch=8, seed=1, scalars={"lr": 0.05})
    # (before fn.llvm_ir, which would emit the module again)
    report = {"from_cache": ef.from_cache, "formulas": pointwise.formula_names.cache_info().misses,
              "scalar": "graphc.ops.scalar" in sys.modules, "losses": np.asarray(stats.losses).tolist()}
    print(json.dumps(report | {"llvm": ef.llvm_ir}))
""")


def run_script(cache_dir) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_cold_compile_with_a_warm_file_builds_no_sympy_formula(tmp_path):
    first = run_script(tmp_path)
    assert not first["from_cache"] and first["formulas"] == 1 and first["scalar"]  # the check is not vacuous
    compiled = [p for p in tmp_path.iterdir() if p.suffix in (".so", ".sum")]
    assert compiled
    for p in compiled:  # the program leaves the compile cache; the per-machine file stays
        p.unlink()
    second = run_script(tmp_path)
    assert not second["from_cache"]  # compiled again
    assert second["formulas"] == 0 and not second["scalar"]  # from the file's terms: no formula, no to_term
    assert second["llvm"] == first["llvm"] and second["losses"] == first["losses"]


def _folded_and_reference(op, attrs, args, dtypes, float_dtype):
    from graphc.ops.core import EvalContext, apply

    node = apply(op, tuple(gc.constant(a, d) for a, d in zip(args, dtypes, strict=True)), **attrs)
    ctx = EvalContext(np.dtype(float_dtype), False, {})
    vals = [i.op.reference(i, [], ctx) for i in node.inputs]
    with np.errstate(all="ignore"):
        return np.asarray(op.fold(node, vals, ctx)), np.asarray(op.reference(node, vals, ctx))


@pytest.mark.parametrize("name", builtin_ops())
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_folding_an_op_of_constants_computes_its_term_as_the_reference_does(name, data):
    """Constant folding computes an elementwise op's formula term with numpy (graphc.ops.numeric), not its sympy
    formula through lambdify: the same values, for every built-in op, dtype and parameter, at any inputs."""
    op = OPS[name]
    dtype = data.draw(st.sampled_from([d for d in op.domain if d != "bool"] or ["bool"]))
    n = 6
    if dtype in ("float32", "float64"):
        width = 32 if dtype == "float32" else 64
        elems = st.floats(allow_nan=True, allow_infinity=True, width=width)
    else:
        elems = st.integers(-60, 60)
    args, dtypes = [], []
    for k in range(op.arity):
        if k in op.bool_inputs or dtype == "bool":
            args.append(np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))))
            dtypes.append("bool")
        else:
            args.append(np.array(data.draw(st.lists(elems, min_size=n, max_size=n)), dtype))
            dtypes.append(dtype)
    attrs = dict(data.draw(st.sampled_from(PARAMS.get(name, [{}]))))
    if op.out_dtype == "param":
        attrs["dtype"] = dtype
    if name == "powc" and dtype not in ("float32", "float64"):
        attrs = {"p": 2}
    folded, want = _folded_and_reference(op, attrs, args, dtypes, "float64" if dtype == "float64" else "float32")
    assert folded.dtype == want.dtype and folded.shape == want.shape
    if want.dtype.kind == "f":
        rtol = 2e-6 if want.dtype == np.float32 else 1e-13
        np.testing.assert_allclose(folded, want, rtol=rtol, atol=1e-300 if want.dtype == np.float64 else 1e-37)
    else:
        np.testing.assert_array_equal(folded, want)


def test_folding_a_users_op_of_constants_computes_its_term():
    bump = gc.elementwise("folded_bump_u", lambda z: sympy.Piecewise((sympy.exp(-1 / (1 - z * z)), sympy.Abs(z) < 1),
                                                                     (0, True)) + gc.sym.softplus(z) * z)
    v = np.array([-2.0, -0.5, 0.0, 0.3, 0.99, 1.0, 40.0, np.nan])
    folded, want = _folded_and_reference(bump.op, {}, [v], ["float64"], "float64")
    np.testing.assert_allclose(folded, want, rtol=1e-13)
