"""graphc's formula terms: checked when built, equal and hashed by structure, printed readably, and carried through
JSON (the per-machine file) and pickle unchanged."""

import json
import math
import pickle

import pytest

from graphc.ir.formula import VOCABULARY, Term, from_plain, num, show, sym, symbols, to_plain

x0, x1, b = sym("x0"), sym("x1"), sym("b")


def test_terms_are_equal_and_hashed_by_structure():
    a = Term("select", (Term("gt", (x0, num(0))), x0 * 2 - x1 / 3, -(x0 + x1)))
    again = Term("select", (Term("gt", (sym("x0"), num(0))), sym("x0") * 2 - sym("x1") / 3, -(sym("x0") + x1)))
    assert a == again and hash(a) == hash(again) and a is not again
    assert {a: 1}[again] == 1
    assert num(2) != num(2.0)  # an integer and a float constant are different terms (as sympy's 2 and 2.0)
    assert num(float("nan")) == num(float("nan"))  # the same constant is emitted for both
    assert Term("heaviside", (x0,), 0.5) != Term("heaviside", (x0,), 1.0)
    assert sym("x0") != Term("bool", (), True) and num(1) != Term("bool", (), True)


def test_python_operators_build_terms_in_their_operand_order():
    assert x0 + x1 == Term("add", (x0, x1), 2)
    assert x0 - 1 == Term("add", (x0, num(1)), 1)
    assert 1 - x0 == Term("add", (num(1), x0), 1)
    assert 3 * x0 == Term("mul", (num(3), x0))
    assert 2.5 / x0 == Term("div", (num(2.5), x0))
    assert -x0 == Term("neg", (x0,))
    with pytest.raises(TypeError):
        x0 + "x1"
    with pytest.raises(TypeError):
        x0 * True  # a bool is not a number here


@pytest.mark.parametrize(("args", "message"), [
    (("nope",), "no formula op"),
    (("add", (x0, x1), 3), "cannot add the first 3"),
    (("add", (x0, x1)), "cannot have the value None"),
    (("neg", (x0, x1)), "neg takes 1 arguments, got 2"),
    (("mul", ()), "one or more"),
    (("sym", (), ""), "cannot have the value"),
    (("num", (), True), "cannot have the value True"),
    (("powi", (x0,), 2.0), "cannot have the value 2.0"),
    (("exp", (x0,), 1), "cannot have the value 1"),
    (("div", (x0, 2)), "must be terms"),
])
def test_a_malformed_term_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        Term(*args)


def test_terms_are_immutable():
    with pytest.raises(AttributeError):
        x0.op = "num"


@pytest.mark.parametrize(("term", "text"), [
    (x0 * x1 - 2.5, "x0*x1 - 2.5"),
    ((x0 + x1) * (x0 - x1), "(x0 + x1)*(x0 - x1)"),
    (x0 - (x1 - x0), "x0 - (x1 - x0)"),
    (x0 / (x1 * x0), "x0/(x1*x0)"),
    (Term("add", (x0, x1), 0), "-x0 - x1"),
    (-(x0 + x1), "-(x0 + x1)"),
    (Term("powi", (x0 + 1,), -2), "(x0 + 1)**-2"),
    (Term("select", (b, x0 / x1, num(0))), "where(b, x0/x1, 0)"),
    (Term("and", (Term("or", (b, Term("lt", (x0, x1)))), Term("not", (b,)))), "(b | x0 < x1) & ~b"),
    (Term("exp", (-x0,)), "exp(-x0)"),
    (Term("max", (x0, x1, num(0))), "max(x0, x1, 0)"),
    (Term("heaviside", (x0,), 0.5), "heaviside(x0, at0=0.5)"),
    (Term("keep_bit", (x0, x1, sym("x2")), 7), "keep_bit(x0, x1, x2, salt=7)"),
    (Term("rand_normal", (x0, x1, sym("i"), sym("k")), 9), "rand_normal(x0, x1, i, k, salt=9)"),
    (Term("bool", (), False), "False"),
])
def test_terms_print_as_python_like_text(term, text):
    assert show(term) == text == repr(term)


def every_op():
    """One term of each op of the vocabulary, with a shared argument and every kind of value."""
    for op, (arity, check) in VOCABULARY.items():
        if op in ("sym", "num", "bool"):
            continue
        value = {"add": 1, "powi": -3, "heaviside": 0.5, "keep_bit": 12345, "rand_uniform": 7, "rand_normal": 8}.get(op)
        assert (value is None) == (check is None), op
        yield Term(op, (x0, x1 * x0, x0, x1)[:arity or 3], value)


def test_every_op_survives_json_and_pickle():
    leaves = [num(3), num(-2.5), num(float("inf")), num(float("nan")), num(2 ** 70), Term("bool", (), True)]
    whole = Term("mul", (*every_op(), *leaves))
    plain = json.loads(json.dumps(to_plain(whole)))
    back = from_plain(plain)
    assert back == whole and hash(back) == hash(whole) and show(back) == show(whole)
    assert [type(t.value) for t in back.args[-6:]] == [int, float, float, float, int, bool]
    assert math.isnan(back.args[-3].value)
    assert pickle.loads(pickle.dumps(whole)) == whole
    assert symbols(whole) == {"x0", "x1"}


@pytest.mark.parametrize("plain", [
    None, [], "x0", [3], ["nope", 1], ["sym"], ["sym", 3], ["num", "2"], ["num", True], ["bool", 1],
    ["add", 3, ["sym", "x0"]], ["neg"], ["neg", ["sym", "x0"], ["sym", "x1"]], ["exp", ["sym", "x0"], 1],
    ["div", ["sym", "x0"], "x1"], ["powi", ["sym", "x0"]],
])
def test_damaged_plain_data_is_a_value_error(plain):
    with pytest.raises(ValueError):
        from_plain(plain)


def test_a_shared_sub_term_is_walked_once():
    t = x0
    for _ in range(200):  # 2**200 paths through a DAG: every walk must visit each node once
        t = t * t
    assert symbols(t) == {"x0"}
    assert t == t.args[0] * t.args[1]  # equal by structure, compared through the shared nodes
