"""Walk the op table: every op has its rules, and every differentiable op's gradient matches central finite
differences in float64 on hypothesis-generated shapes and values."""

import numpy as np
import pytest
from cases import make_cases
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.autodiff.check import check_grad
from graphc.ops.core import KINDS, OPS, Op

CASES = make_cases("float64")


def builtin_ops():
    return {name: op for name, op in OPS.items() if not getattr(op, "user", False) and not name.startswith("fn<")}


def test_every_op_has_its_rules_and_a_case():
    ops = builtin_ops()
    assert set(ops) == set(CASES), f"ops without test cases: {set(ops) - set(CASES)}"
    for name, op in ops.items():
        assert op.kind in KINDS, name
        cls = type(op)
        for rule in ("infer", "reference"):
            assert getattr(cls, rule) is not getattr(Op, rule), f"{name} lacks {rule}"
        if op.differentiable:
            assert cls.vjp is not Op.vjp, f"{name} lacks a vjp"
        # its lowering: the rule its kind needs (leaves are the caller's arrays, never computed)
        rule = {"reduce": "reduce_rule", "contract": "contract_rule", "scatter": "scatter_rule",
                "loop": "loop_rule"}.get(op.kind, "lower")
        if not op.leaf:
            assert getattr(cls, rule) is not getattr(Op, rule), f"{name} ({op.kind}) lacks its lowering {rule}"


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=50)
@given(data=st.data())
def test_op_gradient_matches_finite_differences(name, data):
    out, values, wrt = data.draw(CASES[name])
    training = "rng_key" in values
    ops_used = {n.op.name for n in gc.topo_order(out)}
    assert name in ops_used, f"the case for {name} does not use it"
    # the shape rule agrees with what the reference computes
    res = gc.evaluate(out, values, training=training)
    dims = {}
    for n in gc.topo_order(out):
        if n.op.name == "input" and n.name in values:
            for d, a in zip(n.shape, np.shape(values[n.name]), strict=True):
                if not isinstance(d, int):
                    dims[d] = a
    assert res.shape == tuple(int(d.subs(dims)) if not isinstance(d, int) else d for d in out.shape)
    if out.dtype not in ("float32", "float64") or not wrt:
        return
    # a random cotangent checks the whole Jacobian, not just its column sums
    r = np.random.default_rng(len(name)).normal(size=res.shape)
    y = gc.sum(out * gc.constant(r, out.dtype))
    if name == "stop_gradient":  # d/dx [stop(x) * x] = stop(x): the stopped factor contributes nothing
        g = gc.evaluate(gc.grad(y, wrt[0]), values)
        np.testing.assert_allclose(g, values["a0"] * r)
        return
    check_grad(y, wrt, values, rtol=1e-5, atol=1e-6, training=training)
