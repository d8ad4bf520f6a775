"""Elementwise derivatives as plain trees: to_tree / from_tree build the graph from_sympy builds, the trees survive
the per-machine derivative file (JSON), and a process whose derivatives are in that file builds graphs and their
gradients without sympy differentiating anything or graphc's formulas being built."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy

import graphc as gc
from graphc.ops.core import OPS
from graphc.ops.pointwise import ElementwiseOp, _DerivativeFile, _digest, formula_names, from_sympy, from_tree, to_tree
from graphc.ops.scalar import NUMPY
from graphc.runtime import cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# inputs where every op is defined and smooth (arccosh needs x > 1); a tie at index 1 for maximum and minimum
VALUES = [np.array([0.2, 0.45, 0.7]), np.array([0.6, 0.45, 0.1]), np.array([0.3, -0.8, 0.55])]
ATTRS = {"powc": {"p": 2.5}, "full_like": {"p": 1.0, "dtype": "float64"}}


def differentiable_partials():
    for name, op in sorted(OPS.items()):
        if (not isinstance(op, ElementwiseOp) or not op.differentiable or op.user or name.startswith("fn<")
                or name == "cast"):
            continue
        for k in range(op.arity):
            if k not in op.bool_inputs + op.shape_inputs:
                yield name, k


@pytest.mark.parametrize(("name", "k"), list(differentiable_partials()))
def test_each_builtin_partial_round_trips_exactly_through_its_tree_and_json(name, k):
    op = OPS[name]
    attrs = ATTRS.get(name, {})
    shift = 1.0 if name == "arccosh" else 0.0
    values = [v + shift for v in VALUES[:op.arity]]
    inputs = [gc.input(f"t{j}", (3,), "float64") for j in range(op.arity)]
    for j in op.bool_inputs:
        inputs[j] = gc.input(f"b{j}", (3,), "bool")
        values[j] = np.array([True, False, True])
    y = gc.apply(op, inputs, **attrs)
    g = gc.input("cot", (3,), "float64")
    expr = op.partial_expr(attrs, k)
    tree = op.partial(attrs, k)
    assert tree == to_tree(expr)
    stored = json.loads(json.dumps(tree))  # what the derivative file gives back
    s = formula_names()
    by_symbol = {s.Y: y, s.G: g, **dict(zip(op.args, inputs, strict=True))}
    by_name = {sym.name: node for sym, node in by_symbol.items()}
    built = from_tree(stored, by_name, "float64", y.shape)
    assert built is from_sympy(expr, by_symbol, "float64", y.shape)
    assert built is from_tree(tree, by_name, "float64", y.shape)
    # and it computes sympy's derivative (lambdified on its own, the op's output and the cotangent given)
    feed = {i.name: v for i, v in zip(inputs, values, strict=True)}
    cot = np.array([1.0, -2.0, 0.5])
    y_val = gc.evaluate(y, feed)
    want = sympy.lambdify([*op.args, s.Y, s.G], expr, modules=[NUMPY, "numpy"])(*values, y_val, cot)
    got = gc.evaluate(built, feed | {"cot": cot})
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-12, atol=1e-12)


def test_a_user_ops_partial_is_cached_under_its_formula():
    swish = gc.elementwise("swish_tree", lambda z: z / (1 + sympy.exp(-z)))
    op = swish.op
    assert op.fingerprint() == f"swish_tree:{sympy.srepr(op.expr)}"
    tree = op.partial({}, 0)
    x = gc.input("z", (4,), "float64")
    y = swish(x)
    g = gc.input("cot", (4,), "float64")
    s = formula_names()
    assert (from_tree(json.loads(json.dumps(tree)), {"x0": x, "y": y, "g": g}, "float64", (4,))
            is from_sympy(op.partial_expr({}, 0), {s.X[0]: x, s.Y: y, s.G: g}, "float64", (4,)))


def test_an_expression_without_a_graph_op_becomes_one_op_whose_formula_is_read_back_from_its_text():
    s = formula_names()
    e = s.G * s.floor_divide(s.X[0], s.X[1])  # floor_divide is binary: no unary op computes it
    tree = json.loads(json.dumps(to_tree(e)))
    a, b, g = (gc.input(n, (3,), "float64") for n in ("fa", "fb", "fg"))
    out = from_tree(tree, {"x0": a, "x1": b, "g": g}, "float64", (3,))
    (anon,) = [n for n in out.inputs if n.op.name.startswith("fn<")]
    assert anon.op.fingerprint() == f"{anon.op.name}:{sympy.srepr(s.floor_divide(s.X[0], s.X[1]))}"
    assert anon.op.expr == s.floor_divide(s.X[0], s.X[1])
    feed = {"fa": np.array([7.0, -7.0, 1.0]), "fb": np.array([2.0, 2.0, 0.1]), "fg": np.array([1.0, 2.0, 3.0])}
    np.testing.assert_array_equal(gc.evaluate(out, feed), feed["fg"] * np.floor_divide(feed["fa"], feed["fb"]))


def _ops_in(tree) -> list:
    return [tree[1]] + [o for a in tree[3] for o in _ops_in(a)] if tree[0] in ("op", "fn") else []


def test_exp_of_a_negative_argument_stays_in_the_numerator_and_constants_are_one_number():
    # sympy.fraction writes exp(-a) as 1/exp(a), which overflows where exp(-a) is 0; both the tree (graph ops)
    # and the term (native code of a formula) keep it as written
    from graphc.ops.scalar import numer_denom, to_term

    s = formula_names()
    x, g = s.X[0], s.G
    e = 2 * g * s.exp(-x ** 2) / s.sqrt(s.pi) / (1 + x ** 2)
    n, d = numer_denom(e)
    assert n.has(s.exp) and not d.has(s.exp) and d == s.sqrt(s.pi) * (1 + x ** 2)
    term = to_term(e)
    assert term.op == "div" and "exp" in repr(term.args[0]) and "exp" not in repr(term.args[1])
    tree = to_tree(e)
    assert tree[1] == "div" and "exp" not in _ops_in(tree[3][1])  # only 1 + x0**2 below the line
    assert _ops_in(to_tree(2 * g * s.exp(-x ** 2) / s.sqrt(s.pi))).count("div") == 0  # 2/sqrt(pi) one number
    xs = gc.input("xs", (3,), "float64")
    out = from_tree(tree, {"x0": xs, "g": gc.input("gs", (3,), "float64")}, "float64", (3,))
    v = np.array([0.5, 30.0, -40.0])
    np.testing.assert_allclose(gc.evaluate(out, {"xs": v, "gs": np.ones(3)}),
                               2 * np.exp(-v ** 2) / np.sqrt(np.pi) / (1 + v ** 2), rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------------------
# the derivative file


def test_a_corrupt_derivative_file_is_ignored_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    tree = ["op", "mul", {}, [["sym", "g"], ["num", 2.0]]]
    for junk in (b"{\"code_version\": \"", b"\xff\xfe not json", b"[1, 2, 3]",
                 json.dumps({"code_version": "another version", "entries": {"k": ["sym", "g"]}}).encode(),
                 b"[" * 100000 + b"]" * 100000):  # nested past the recursion limit (json.load: RecursionError)
        f = _DerivativeFile()
        path = f._path()
        path.write_bytes(junk)
        assert f.get("k") is None
        f.put("k", tree)
        data = json.loads(path.read_text())
        assert data == {"code_version": cache.code_version(), "entries": {"k": tree}, "sha256": _digest({"k": tree})}
        assert _DerivativeFile().get("k") == tree


def test_an_entry_that_is_not_a_tree_counts_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    f = _DerivativeFile()
    bad = {"a": ["op", "no_such_op", {}, []], "b": ["num", "2"], "c": ["sym"], "d": ["op", "add", {}, [["x"]]],
           "e": ["fn", "fn<x>", 3, []], "f": 7, "ok": ["op", "neg", {}, [["sym", "g"]]]}
    f._path().write_text(json.dumps({"code_version": cache.code_version(), "entries": bad, "sha256": _digest(bad)}))
    assert [k for k in bad if f.get(k) is not None] == ["ok"]


def test_a_changed_number_in_the_derivative_file_is_not_trusted(tmp_path):
    """A damaged entry that still parses (a digit changed) would be a wrong gradient, not an error: the file is
    checksummed, and one that does not match is computed again (in a fresh process, as a later run would)."""
    code = ("import numpy as np, graphc as gc; x = gc.input('x', (3,), 'float64'); "
            "print(list(gc.evaluate(gc.grad(gc.sum(x ** 2), x), {'x': np.array([1.0, 2.0, 3.0])})))")
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path))
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: E731
                                 check=True).stdout.strip()
    assert run() == "[np.float64(2.0), np.float64(4.0), np.float64(6.0)]"
    (path,) = tmp_path.glob("derivatives-*.json")
    text = path.read_text()
    assert '["num",2.0]' in text or '["num",2]' in text
    path.write_text(text.replace('["num",2.0]', '["num",3.0]').replace('["num",2]', '["num",3]'))
    assert run() == "[np.float64(2.0), np.float64(4.0), np.float64(6.0)]"


def test_entries_of_other_processes_are_kept_when_one_is_added(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    first, second = _DerivativeFile(), _DerivativeFile()
    assert first.get("a") is None and second.get("b") is None  # both read the (missing) file
    first.put("a", ["sym", "g"])
    second.put("b", ["num", 1.0])
    assert json.loads(second._path().read_text())["entries"] == {"a": ["sym", "g"], "b": ["num", 1.0]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no temporary file left behind


def test_an_unwritable_cache_directory_means_no_file(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "a_file" / "cache"))  # cannot be created
    f = _DerivativeFile()
    assert f.get("k") is None
    f.put("k", ["sym", "g"])
    assert f.get("k") == ["sym", "g"]  # kept in memory all the same


# ---------------------------------------------------------------------------------------------------------
# processes

SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    import numpy as np
    import graphc as gc
    from graphc.ops import pointwise

    guarded = os.environ.get("GUARD") == "1"
    if guarded:
        import sympy

        # graphc's dims are still sympy (their own module moves them off it): they may sympify, nothing else may
        DIMS = ("graphc/ir/shapes.py", "graphc/ops/sources.py", "graphc/ops/movement.py")
        real = {n: getattr(sympy, n) for n in ("diff", "simplify", "sympify", "lambdify", "srepr",
                                               "piecewise_fold")}

        def guard(name):
            def call(*args, **kwargs):
                caller = sys._getframe(1).f_code.co_filename.replace(os.sep, "/")
                if name == "sympify" and caller.endswith(DIMS):
                    return real[name](*args, **kwargs)
                raise AssertionError(f"sympy.{name} called from {caller}")
            return call

        for n in real:
            setattr(sympy, n, guard(n))

    x = gc.input("x", ("N", 3))
    w = gc.param("w", (3,))
    z = x * w
    pos = gc.exp(z) + 1.5
    terms = [gc.tanh(z), gc.sigmoid(z), gc.softplus(z), gc.relu(z), gc.log(pos), gc.sqrt(pos), gc.abs(z),
             gc.maximum(z, 0.1), gc.minimum(z, x), gc.where(z > 0, z, z * 0.5), z ** 3, pos ** 2.5,
             pos ** z, z / pos, gc.erf(z), gc.sin(z), gc.cos(z), gc.arctan(z), gc.expm1(z),
             gc.log1p(pos), gc.remainder(z, pos), gc.floor(z), gc.square(z), gc.logsumexp(z, axis=1),
             gc.softmax(z, axis=1), gc.log_softmax(z, axis=1)]
    loss = gc.sum(gc.stack([gc.sum(t) for t in terms]))
    h = gc.nn.mlp(x, [5, 4], name="net")
    loss = loss + gc.nn.softmax_cross_entropy(h, gc.input("labels", ("N",), "int32"))
    wrt = [w, *gc.nn.parameters(h)]
    grads = gc.grad(loss, wrt)
    digests = [g.digest() for g in grads]
    scalar_loaded = "graphc.ops.scalar" in sys.modules
    formulas_built = pointwise.formula_names.cache_info().misses
    if guarded:
        for n, f in real.items():
            setattr(sympy, n, f)
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((4, 3)), "labels": np.array([0, 3, 1, 2], np.int32), "w": rng.standard_normal(3)}
    feed |= {p.name: rng.standard_normal(p.shape) for p in gc.nn.parameters(h)}
    feed = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feed.items()}
    values = [gc.evaluate(g, feed).tolist() for g in grads]
    print(json.dumps({"digests": digests, "values": values, "scalar": scalar_loaded,
                      "formulas": formulas_built}))
""")


def run_script(code: str, cache_dir, **env) -> dict:
    e = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT, **env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_warm_process_takes_gradients_without_sympy_and_gets_the_same_graph(tmp_path):
    cold = run_script(SCRIPT, tmp_path)
    assert cold["formulas"] == 1  # the first process built formulas and differentiated them
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("derivatives-")]
    warm = run_script(SCRIPT, tmp_path, GUARD="1")
    assert warm["formulas"] == 0 and not warm["scalar"]
    assert warm["digests"] == cold["digests"]
    for a, b in zip(warm["values"], cold["values"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_guard_catches_a_process_that_differentiates(tmp_path):
    # the same check with an empty derivative file must fail: the guard is not vacuous
    e = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT, GUARD="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=e, timeout=300)
    assert r.returncode != 0 and "sympy.diff called from" in r.stderr


def test_gradients_with_a_corrupt_or_unwritable_derivative_file(tmp_path):
    want = run_script(SCRIPT, tmp_path / "good")
    (tmp_path / "good").rename(tmp_path / "bad")
    for p in (tmp_path / "bad").glob("derivatives-*.json"):
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # a torn file (not something graphc writes)
    assert run_script(SCRIPT, tmp_path / "bad")["digests"] == want["digests"]
    assert [json.loads(p.read_text()) for p in (tmp_path / "bad").glob("derivatives-*.json")]  # rewritten
    (tmp_path / "a_file").write_text("")
    assert run_script(SCRIPT, tmp_path / "a_file" / "cache")["digests"] == want["digests"]


def test_importing_pointwise_and_building_graphs_builds_no_formula():
    code = textwrap.dedent("""
        import sys
        import graphc.ops.pointwise as pw
        assert "graphc.ops.scalar" not in sys.modules
        import graphc as gc
        x = gc.input("x", ("N", 3))
        y = gc.where(x > 0, gc.tanh(x) * 2.0 + gc.sigmoid(x), -x) ** 2 / gc.exp(x)
        y.digest()
        assert "graphc.ops.scalar" not in sys.modules
        assert pw.formula_names.cache_info().misses == 0
        assert pw.TANH.expr == pw.formula_names().tanh(pw.formula_names().x0)  # built on first use
        assert "graphc.ops.scalar" in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
