"""numpy's names a user reaches for (gc.concat, gc.squeeze, gc.std, gc.sin, x.argmax(), round(x), ...): each gives
numpy's result in the reference and compiled, differentiates where it is smooth, and refuses what numpy refuses."""

import warnings

import numpy as np
import pytest

import graphc as gc

rng = np.random.default_rng(3)
SPECIAL = np.array([[0.5, 1.5, -2.5, 2.5, -0.5], [np.nan, np.inf, -np.inf, 0.0, -0.0], [1e-30, -3.25, 7.0, 1e6, -4.5]],
                   np.float32)


def both(outs, **values):
    """The reference's and the compiled function's results (3 threads, cache off)."""
    fn = gc.compile(outs, threads=3, cache=False)
    return gc.evaluate(outs, values), fn({k: np.asarray(v) for k, v in values.items()})


def same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and (got.dtype == want.dtype or got.dtype.kind == want.dtype.kind == "f")
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["square", "isnan", "isinf", "isfinite", "round", "flip", "squeeze"])
def test_unary_functions_match_numpy_on_special_values(name):
    x = gc.input("x", ("N", 5))
    v = SPECIAL if name != "squeeze" else SPECIAL[:, :1]
    t = x if name != "squeeze" else x[:, :1]
    out = getattr(gc, name)(t)
    with np.errstate(all="ignore"):
        want = getattr(np, name)(v)
    for got in both(out, x=SPECIAL):
        same(got, want)


@pytest.mark.parametrize("name", ["std", "any", "all"])
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
def test_reductions_match_numpy(name, axis):
    x = gc.input("x", ("N", 5))
    v = rng.normal(size=(4, 5)).astype(np.float32)
    src = x if name == "std" else x > 0.3
    for keep in (False, True):
        want = getattr(np, name)(v if name == "std" else v > 0.3, axis=axis, keepdims=keep)
        for got in both(getattr(gc, name)(src, axis=axis, keepdims=keep), x=v):
            same(got, want)


def test_logaddexp_is_numpys_and_finite_where_exp_overflows():
    a, b = gc.input("a", (6,)), gc.input("b", (6,))
    va = np.array([0.0, 100.0, -np.inf, np.inf, 3.0, -1000.0], np.float32)
    vb = np.array([0.0, 99.0, -np.inf, np.inf, -2.0, -1000.5], np.float32)
    for got in both(gc.logaddexp(a, b), a=va, b=vb):
        same(got, np.logaddexp(va, vb))
    a64, b64 = gc.input("a64", (6,), "float64"), gc.input("b64", (6,), "float64")
    vals = {"a64": rng.normal(size=6), "b64": rng.normal(size=6)}
    vals["b64"][0] = vals["a64"][0]  # a tie: half the cotangent each
    gc.check_grad(gc.sum(gc.logaddexp(a64, b64) * rng.normal(size=6)), [a64, b64], vals)


def test_structural_names():
    x = gc.input("x", ("N", 1, 3))
    v = rng.normal(size=(4, 1, 3)).astype(np.float32)
    cases = [(gc.concat([x, x * 2.0], axis=2), np.concatenate([v, v * 2], axis=2)),
             (gc.squeeze(x, 1), v.squeeze(1)), (gc.squeeze(x), v.squeeze()),
             (gc.flip(x, (0, 2)), np.flip(v, (0, 2))), (gc.flip(x), np.flip(v)),
             (gc.swapaxes(x, 0, -1), v.swapaxes(0, -1)),
             (gc.ones(("N", 2)) + gc.sum(x) * 0.0, np.ones((4, 2))),
             (gc.full((2, 3), 2.5), np.full((2, 3), 2.5, np.float32)),
             (gc.zeros_like(x) + gc.ones_like(x), np.ones_like(v))]
    for out, want in cases:
        for got in both(out, x=v):
            same(got, want)
    assert gc.full((2,), 7, "int64").dtype == "int64" and gc.ones(3, "bool").dtype == "bool"
    # gradients through the movements and the square
    x64 = gc.input("x64", (4, 1, 3), "float64")
    w = rng.normal(size=(4, 3))
    gc.check_grad(gc.sum(gc.square(gc.squeeze(gc.flip(gc.swapaxes(x64, 1, 2), 0), 2)) * w), x64,
                  {"x64": v.astype(np.float64)})


def test_tensor_methods_are_the_functions():
    x = gc.input("x", ("N", 3))
    assert x.std(axis=0) is gc.std(x, axis=0) and x.var() is gc.var(x)
    assert x.argmax(axis=1) is gc.argmax(x, axis=1) and x.argmin(axis=1) is gc.argmin(x, axis=1)
    assert x.any() is gc.any(x) and x.all(axis=0) is gc.all(x, axis=0)
    assert x.clip(0, 1) is gc.clip(x, 0, 1) and x.cumsum(axis=0) is gc.cumsum(x, axis=0)
    assert x.flatten() is gc.reshape(x, (-1,)) and x[:, :1].squeeze(1) is gc.squeeze(x[:, :1], 1)
    assert x.ravel() is x.flatten()  # ndarray's ravel (an AttributeError before)
    assert x.swapaxes(0, 1) is gc.swapaxes(x, 0, 1) and x.transpose() is x.T and x.transpose(1, 0) is x.T
    assert x.transpose((1, 0)) is x.T and x.dot(x.T) is x @ x.T
    assert round(x) is gc.round(x) and round(x, 2) is gc.round(x, 2)
    v = np.array([[0.125, 2.675, -1.005]], np.float32)
    for got in both(round(x, 2), x=v):
        same(got, np.round(v, 2))


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_round_of_ints_to_negative_decimals_is_numpys(dtype):
    """Ints to tens, hundreds, ...: ties to even multiples (15 -> 20, -25 -> -20), as numpy; they were returned
    unchanged. Beyond the dtype's range every value rounds to 0; a bool to negative decimals is refused."""
    v = np.array([15, -25, 149, 151, 1234, -15, 25, 35, -35, 5, -5, 0, 1_999_999_999, -1_500_000_000], dtype)
    x = gc.input("x", ("N",), dtype)
    for d in (-1, -2, -3, -9, -10, -12):
        want = np.round(v, d)
        for got in both(gc.round(x, d), x=v):
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, want, err_msg=f"decimals={d}")
    for got in both(gc.round(x, 2), x=v):
        np.testing.assert_array_equal(got, v)
    with pytest.raises(gc.DTypeError, match="bool tensor to decimals=-1"):
        gc.round(gc.input("b", (3,), "bool"), -1)


def test_int64_meets_floats_as_float64_everywhere():
    """One rule for ints becoming floats (graphc.ir.shapes.float_for): int64 as float64, int32 and bool as float32,
    whatever the operation and the operand order; int64 + 0.5 was float32 (16777217 + 0.5 -> 16777216)."""
    i, j = gc.input("i", (2,), "int64"), gc.input("j", (2,), "int32")
    b = gc.input("b", (2,), "bool")
    for t in (i / i, i ** 0.5, i + 0.5, 0.5 * i, i - 1.5, gc.mean(i), gc.var(i), gc.sqrt(i), gc.exp(i), gc.sin(i),
              b / i, i / b, j / i, i / j, gc.where(b, i, 0.5)):
        assert t.dtype == "float64", t
    for t in (j / j, j + 0.5, gc.mean(j), gc.sqrt(j), b / j, j / b, gc.mean(b), b + 0.5):
        assert t.dtype == "float32", t
    v = np.array([16777217, 2**40 + 1], np.int64)
    for got in both(i + 0.5, i=v):
        np.testing.assert_array_equal(got, v + 0.5)
    for got in both(gc.mean(i), i=v):
        assert float(got) == np.mean(v)


@pytest.mark.parametrize("name", ["sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh",
                                  "arccosh", "arctanh", "log2", "log10", "exp2"])
def test_trigonometric_functions_compile_within_an_ulp(name):
    """float32 through the C library's double function, rounded once: within one float32 ulp of the exact
    value on a sweep of 4099 values (vector lanes and the tail), special values as numpy's."""
    lo, hi = {"arcsin": (-1, 1), "arccos": (-1, 1), "arctanh": (-1, 1), "arccosh": (1, 50), "sinh": (-80, 80),
              "cosh": (-80, 80), "log2": (0, 3e38), "log10": (0, 1e3), "exp2": (-126, 127.9)}.get(name, (-30, 30))
    v = np.concatenate([np.linspace(lo, hi, 4096), [np.nan, np.inf, -np.inf]]).astype(np.float32)
    x = gc.input("x", ("N",))
    got = gc.compile(getattr(gc, name)(x), cache=False)({"x": v})
    with np.errstate(all="ignore"):
        exact = getattr(np, name)(v.astype(np.float64))
        ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    fin = np.isfinite(exact)
    assert np.all(np.abs(got[fin] - exact[fin]) <= ulp[fin]), name
    np.testing.assert_array_equal(got[~fin], exact[~fin].astype(np.float32))
    x64 = gc.input("x64", (7,), "float64")
    near = np.linspace(-0.9, 0.9, 7) + (2.0 if name in ("arccosh", "log2", "log10") else 0.0)  # in every domain
    gc.check_grad(gc.sum(getattr(gc, name)(x64) * rng.normal(size=7)), x64, {"x64": near})


def test_bad_arguments_name_what_and_where():
    x = gc.input("x", ("N", 3))
    with pytest.raises(gc.ShapeError, match=r"squeeze.*axis 1 of \[N,3\] has length 3, not 1") as e:
        gc.squeeze(x, 1)
    assert __file__.rsplit("/", 1)[-1] in str(e.value)
    with pytest.raises(gc.ShapeError, match="squeeze"):
        gc.squeeze(x, 0)  # the batch axis is not known to be 1
    with pytest.raises(gc.GraphcError, match="decimals must be an int"):
        gc.round(x, 1.5)
    with pytest.raises(gc.GraphcError, match="fill_value must be a number"):
        gc.full((2,), "a")
    with pytest.raises(AttributeError, match=r"did you mean gc.concatenate"):
        gc.concatenat  # noqa: B018
    # a batch dim meeting a fixed size (a JAX port's (2, 3) constant against (N, 3)): why, and the two ways out
    with pytest.raises(gc.ShapeError, match=r"\(axis -2: N vs 2\); N is symbolic .*give the other side 1 on this "
                                            r"axis .*or declare the input with 2 here"):
        x + np.ones((2, 3), np.float32)
    with pytest.raises(gc.ShapeError, match="distinct symbolic dims are different sizes"):
        x + gc.input("y", ("M", 3))


EINSUMS = [("ij,jk->ik", [(3, 4), (4, 5)]), ("ij,jk", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
           ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]), ("i,i->", [(4,), (4,)]), ("i,j->ij", [(3,), (4,)]),
           ("ij->ji", [(3, 4)]), ("ij->", [(3, 4)]), ("ijk->kj", [(2, 3, 4)]), ("ij,j->i", [(3, 4), (4,)]),
           ("ij,ij->ij", [(3, 4), (3, 4)]), ("ij,ik->jk", [(3, 4), (3, 5)]), ("ijk,jl->lik", [(2, 3, 4), (3, 5)]),
           ("ab,cd->", [(2, 3), (4, 5)]), ("abc,bcd->ad", [(2, 3, 4), (3, 4, 5)]), ("i,ij", [(3,), (3, 4)]),
           ("xyz,zy->x", [(2, 3, 4), (4, 3)]),
           # a letter twice in one operand: its diagonal (the trace when summed), as numpy
           ("ii->", [(4, 4)]), ("ii", [(4, 4)]), ("ii->i", [(4, 4)]), ("iij->ji", [(3, 3, 2)]),
           ("jii->ij", [(2, 3, 3)]), ("iij,ki->kj", [(3, 3, 2), (4, 3)]), ("ij,ii->j", [(3, 3), (3, 3)]),
           ("iijj->", [(2, 2, 3, 3)]),
           # a size-1 letter broadcasts against the other operand's, as numpy's and jax's (it was a ShapeError)
           ("bij,bjk->bik", [(2, 3, 4), (1, 4, 5)]), ("ij,jk->ik", [(3, 1), (4, 5)])]


@pytest.mark.parametrize("spec, shapes", EINSUMS, ids=[s for s, _ in EINSUMS])
def test_einsum_matches_numpy_compiled_and_differentiated(spec, shapes):
    vals = {f"e{k}": rng.normal(size=s) for k, s in enumerate(shapes)}
    ins = [gc.input(f"e{k}", s, "float64") for k, s in enumerate(shapes)]
    y = gc.einsum(spec, *ins)
    want = np.einsum(spec, *vals.values())
    for got in both(y, **vals):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    gc.check_grad(gc.sum(y * rng.normal(size=want.shape)), ins, vals)


def test_einsum_attention_scores_are_one_batched_matmul_with_a_symbolic_batch():
    q, k = gc.input("q", ("N", 3, 4, 8)), gc.input("k", ("N", 3, 6, 8))
    s = gc.einsum("bhqd,bhkd->bhqk", q, k)
    assert s.shape == (gc.dim("N"), 3, 4, 6)
    assert [n.op.name for n in gc.topo_order(s)].count("matmul") == 1
    vq, vk = rng.normal(size=(2, 3, 4, 8)).astype(np.float32), rng.normal(size=(2, 3, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(gc.compile(s)({"q": vq, "k": vk}), np.einsum("bhqd,bhkd->bhqk", vq, vk), rtol=1e-5,
                               atol=1e-5)


def test_einsum_trace_of_a_symbolic_square():
    x = gc.input("x", ("N", "N"), "float64")
    v = rng.normal(size=(5, 5))
    for got in both(gc.einsum("ii->", x), x=v):
        np.testing.assert_allclose(got, np.trace(v), rtol=1e-14)
    np.testing.assert_array_equal(gc.evaluate(gc.grad(gc.einsum("ii", x), x), {"x": v}), np.eye(5))


@pytest.mark.parametrize("spec, shapes, words", [
    ("ii->i", [(3, 4)], "letter 'i' has sizes 3 and 4"), ("...ij,jk", [(2, 3, 4), (4, 5)], "'...' is not supported"),
    ("ij,jk->ik", [(3, 4), (5, 6)], "letter 'j' has sizes 4 and 5"), ("ijk,jk", [(3, 4), (4, 5)], "names 3 axes"),
    ("ij,jk,kl", [(2, 2), (2, 2), (2, 2)], "one or two operands"), ("ij->iz", [(2, 2)], "distinct letters")])
def test_einsum_refuses_what_it_cannot_do_by_name(spec, shapes, words):
    ins = [gc.input(f"r{k}", s) for k, s in enumerate(shapes)]
    with pytest.raises(gc.ShapeError, match=words) as e:
        gc.einsum(spec, *ins)
    assert "einsum" in str(e.value) and __file__.rsplit("/", 1)[-1] in str(e.value)


def test_true_division_of_integers_is_float_division():
    """`/` of ints divides as floats (Python 3, JAX): int32 as float32, int64 as float64; `//` stays integer."""
    i, n, b = gc.input("i", (3,), "int32"), gc.input("n", (3,), "int64"), gc.input("b", (3,), "bool")
    vi, vn, vb = np.array([1, 2, -7], np.int32), np.array([2**40 + 1, 3, 5]), np.array([True, False, True])
    cases = [(i / 2, np.float32, vi / 2), (2 / i, np.float32, 2 / vi), (i / i, np.float32, vi / vi),
             (n / 3, np.float64, vn / 3), (i / n, np.float64, vi / vn), (b / 2, np.float32, vb / 2),
             (i // 2, np.int32, vi // 2)]
    for y, dtype, want in cases:
        for got in both(y, i=vi, n=vn, b=vb):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want.astype(dtype), rtol=1e-7)


def test_numpy_functions_on_a_tensor_reach_its_methods_with_numpys_signatures():
    """np.sum(x) calls x.sum(axis=None, out=None), np.std(x) x.std(axis=None, dtype=None, out=None, ddof=0), ...:
    each method takes ndarray's signature, so numpy's functions work on a tensor, and a positional
    x.sum(0, np.float64) is numpy's (axis, dtype), not keepdims."""
    x = gc.input("x", ("N", 3))
    v = rng.normal(size=(4, 3)).astype(np.float32)
    cases = [(np.sum(x), np.sum(v)), (np.mean(x, axis=0), np.mean(v, axis=0)), (np.max(x, axis=0), np.max(v, axis=0)),
             (np.min(x, 1, keepdims=True), np.min(v, 1, keepdims=True)), (np.prod(x, axis=1), np.prod(v, axis=1)),
             (np.std(x), np.std(v)), (np.var(x, axis=0, ddof=1), np.var(v, axis=0, ddof=1)),
             (np.std(x, correction=1), np.std(v, correction=1)), (np.any(x > 0, axis=0), np.any(v > 0, axis=0)),
             (np.all(x > -5), np.all(v > -5)), (np.argmax(x, axis=1), np.argmax(v, axis=1)),
             (np.argmin(x, axis=0, keepdims=True), np.argmin(v, axis=0, keepdims=True)),
             (np.cumsum(x, axis=0), np.cumsum(v, axis=0)), (np.clip(x, -0.5, 0.5), np.clip(v, -0.5, 0.5)),
             (np.clip(x, max=0.5), np.clip(v, max=0.5)), (x.clip(min=0.0), v.clip(min=0.0)),
             (gc.clip(x, None, 0.5), np.clip(v, None, 0.5)), (np.round(x, 1), np.round(v, 1)),
             (np.reshape(x, -1), np.reshape(v, -1)), (np.transpose(x), np.transpose(v)),
             (np.squeeze(x[:, :1], axis=1), np.squeeze(v[:, :1], axis=1)), (np.swapaxes(x, 0, 1), np.swapaxes(v, 0, 1))]
    for out, want in cases:
        for got in both(out, x=v):
            same(got, want)
    r = x.sum(0, np.float64)
    assert r.shape == (3,) and r.dtype == "float64"
    assert x.mean(dtype="float64").dtype == "float64" and np.sum(x, dtype=np.int32).dtype == "int32"
    got = gc.evaluate(x.mean(0, np.int64), {"x": v * 10})
    np.testing.assert_array_equal(got, (v * 10).mean(0, np.int64))
    assert x.clip() is x and x.clip(None, 1.0) is gc.clip(x, hi=1.0)
    # jnp.clip's (and numpy 2.1's) min=/max= and numpy's a_min=/a_max= name the same bounds (a TypeError before)
    assert gc.clip(x, min=0.0, max=1.0) is gc.clip(x, 0.0, 1.0) and gc.clip(x, a_max=1.0) is gc.clip(x, hi=1.0)
    for call, words in [(lambda: gc.clip(x, 0.0, min=1.0), "lower bound is given twice"),
                        (lambda: gc.clip(x, upper=1.0), "unexpected keyword upper=")]:
        with pytest.raises(gc.GraphcError, match=words):
            call()


def test_numpy_arguments_a_graph_cannot_honour_are_refused_by_name():
    x = gc.input("x", ("N", 3))
    s = gc.input("s", (2, 3))
    here = __file__.rsplit("/", 1)[-1]
    with pytest.raises(gc.GraphcError, match=r"sum: out= is not supported") as e:
        np.sum(x, out=np.zeros(3, np.float32))
    assert here in str(e.value)  # the user's line, not numpy's
    for call, words in [(lambda: np.max(x, initial=0.0), "initial="), (lambda: np.mean(x, where=x > 0), "where="),
                        (lambda: x.std(mean=x), "mean="),
                        (lambda: x.clip(0, 1, casting="no"), "casting="), (lambda: x.reshape(-1, order="F"), "order="),
                        (lambda: x.sum(0, True), r"not a dtype.*keepdims=True by name"),
                        (lambda: x.sum(0, "complex64"), "unsupported dtype"), (lambda: np.argmax(x, out=x), "out="),
                        (lambda: gc.sum(x, 0, np.float64), r"keepdims must be a bool.*gc.cast"),
                        (lambda: gc.mean(x, 0, "float64"), "keepdims must be a bool"),
                        # a DTypeError is a TypeError: numpy retries those on np.asarray(x), whose error
                        # ("tensors cannot be iterated", "not a sequence") replaced the user's
                        (lambda: np.clip(s, "a", 1), "cannot make a graphc constant from <U1 data"),
                        (lambda: np.sum(s, dtype="int8"), "unsupported dtype 'int8'"),
                        (lambda: np.cumsum(s, dtype="U3"), "unsupported dtype 'U3'")]:
        with pytest.raises(gc.GraphcError, match=words):
            call()


def test_numpy_ufuncs_on_tensors_build_the_graph_ops():
    """np.exp(x), np.maximum(x, 0), np.abs(x), an array or numpy scalar on the left of an operator: numpy's ufuncs
    dispatch to graphc's op of the same name (aliases included), with the same dtype rules as the operators; a
    ufunc graphc lacks, a ufunc method, out=/dtype=, and `array == x` are GraphcErrors naming what to use."""
    x = gc.input("x", (3, 5))
    a = rng.normal(size=(3, 5)).astype(np.float32)
    v = SPECIAL[[0, 2]].copy()
    v = np.concatenate([v, v[:1]])
    outs = [np.exp(x * 1e-5), np.maximum(x, 0), np.abs(x), np.absolute(x), np.fabs(x), a + x, a * x, np.float32(2) * x,
            np.true_divide(x, 4), np.mod(x, 3), np.power(x, 2), np.rint(x), np.positive(x), a < x, np.tanh(x),
            np.logaddexp(x, a), np.square(x), np.sign(x), np.log2(np.abs(x)), np.log10(np.abs(x)), np.exp2(x),
            np.hypot(x, a), np.arctan2(x, a), np.trunc(x), np.reciprocal(x)]
    assert all(isinstance(t, gc.Tensor) for t in outs) and (a + x).dtype == "float32"
    with np.errstate(all="ignore"):
        want = [np.exp(v * np.float32(1e-5)), np.maximum(v, 0), np.abs(v), np.abs(v), np.abs(v), a + v, a * v, 2 * v,
                v / 4, np.mod(v, 3), v ** 2, np.rint(v), v, a < v, np.tanh(v), np.logaddexp(v, a), v * v, np.sign(v),
                np.log2(np.abs(v)), np.log10(np.abs(v)), np.exp2(v), np.hypot(v, a), np.arctan2(v, a), np.trunc(v),
                np.reciprocal(v)]
    for got in both(outs, x=v):
        for g, w in zip(got, want, strict=True):
            same(g, w)
    assert (np.ones((5, 2), np.float32) @ gc.input("y", (2, 3))).shape == (5, 3)
    for call, words in ((lambda: np.add.reduce(x), r"np.add.reduce .*gc.sum"),
                        (lambda: np.exp(x, out=np.zeros((3, 5), np.float32)), r"np.exp\(..., out=\).*gc.exp"),
                        (lambda: np.add(x, x, dtype=np.float64), "dtype argument"),
                        (lambda: np.cbrt(x), "np.cbrt has no graphc counterpart"),
                        (lambda: a == x, r"use gc.equal\(a, b\)"), (lambda: a != x, r"gc.not_equal")):
        with pytest.raises(gc.GraphcError, match=words):
            call()



def test_dot_is_numpys_for_a_stack_of_matrices():
    """x.dot(y) was matmul's batched product: (2, 3, 4)·(2, 4, 5) gave (2, 3, 5) where numpy's dot pairs every row
    with every matrix, (2, 3, 2, 5). Shapes matmul agrees on stay its product; a scalar multiplies."""
    r = np.random.default_rng(6)
    for sa, sb in [((2, 3, 4), (2, 4, 5)), ((3, 4), (2, 4, 5)), ((4,), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4,)),
                   ((2, 1, 3, 4), (5, 4, 2))]:
        A, B = r.normal(size=sa), r.normal(size=sb)
        a, b = gc.input("a", sa, "float64"), gc.input("b", sb, "float64")
        for got in both(a.dot(b), a=A, b=B):
            assert got.shape == np.dot(A, B).shape
            np.testing.assert_allclose(got, np.dot(A, B), rtol=1e-12)
    c = gc.input("c", (3,))
    assert c.dot(2.0).dtype == "float32"

def test_numpys_other_functions_on_tensors_build_graphcs_ops_or_name_what_to_use():
    """np.concatenate, np.stack, np.where, np.einsum, np.dot, ... on tensors were 'tensors cannot be iterated while
    building a graph' (numpy converted them to arrays); they now build graphc's op (NEP 18's __array_function__),
    with numpy's signatures (np.take without an axis flattens). np.dot is numpy's dot (as x.dot)."""
    x, y = gc.input("x", (3, 4), "float64"), gc.input("y", (3, 4), "float64")
    s, t = gc.input("s", (2, 3, 4), "float64"), gc.input("t", (2, 4, 5), "float64")
    r = np.random.default_rng(5)
    v = {k: r.normal(size=a.shape) for k, a in dict(x=x, y=y, s=s, t=t).items()}
    X, Y, S, T = v["x"], v["y"], v["s"], v["t"]
    idx = np.array([5, 0, 11], np.int32)
    cases = [(np.concatenate([x, y], axis=1), np.concatenate([X, Y], axis=1)), (np.stack((x, y)), np.stack((X, Y))),
             (np.where(x > 0, x, y), np.where(X > 0, X, Y)),
             (np.einsum("ij,kj->ik", x, y), np.einsum("ij,kj->ik", X, Y)),
             (np.expand_dims(x, 1), np.expand_dims(X, 1)), (np.outer(x[0], y[1]), np.outer(X[0], Y[1])),
             (np.tile(x, 2), np.tile(X, 2)), (np.repeat(x, 2, axis=0), np.repeat(X, 2, axis=0)),
             (np.split(x, [1], axis=1)[1], np.split(X, [1], axis=1)[1]), (np.pad(x, 1, constant_values=2.0),
                                                                           np.pad(X, 1, constant_values=2.0)),
             (np.take(x, idx), np.take(X, idx)), (np.take(x, idx[1:2], axis=1), np.take(X, idx[1:2], axis=1)),
             (np.tril(x, -1), np.tril(X, -1)), (np.flip(x), np.flip(X)), (np.broadcast_to(x[0], (2, 4)),
                                                                        np.broadcast_to(X[0], (2, 4))),
             (np.zeros_like(x), np.zeros_like(X)), (np.full_like(x, 3.0), np.full_like(X, 3.0)),
             (np.ravel(s), np.ravel(S)), (np.dot(x, y.T), np.dot(X, Y.T)), (np.dot(s, t), np.dot(S, T)),
             (s.dot(t), S.dot(T)), (x.dot(t), X.dot(T)), (np.dot(X, t), np.dot(X, T)), (np.dot(2.0, x), 2.0 * X),
             (np.sum(x, axis=0), X.sum(0)),  # the method path as before
             (np.cumprod(x, axis=1), np.cumprod(X, axis=1)), (np.cumprod(s), np.cumprod(S)),
             (x.cumprod(0), X.cumprod(0)), (np.moveaxis(s, 0, -1), np.moveaxis(S, 0, -1)),
             (gc.moveaxis(s, [0, 2], [1, 0]), np.moveaxis(S, [0, 2], [1, 0])),
             (np.hstack([x, y]), np.hstack([X, Y])), (np.hstack([x[0], y[1, :2]]), np.hstack([X[0], Y[1, :2]])),
             (np.vstack([x, y[0]]), np.vstack([X, Y[0]])), (np.diagonal(s, 1, 1, 2), np.diagonal(S, 1, 1, 2)),
             (s.diagonal(-1, 2, 0), S.diagonal(-1, 2, 0)), (np.trace(x), np.trace(X)),
             (s.trace(0, 1, 2), S.trace(0, 1, 2)),
             (np.nansum(x, axis=1), X.sum(1)), (np.nanmean(s, (0, 2), keepdims=True), S.mean((0, 2), keepdims=True)),
             (gc.eye(3, 4, 1, "float64") + x[:, :1] * 0, np.eye(3, 4, 1)), (gc.eye(3, k=-1, dtype="float64") @ x,
                                                                            np.eye(3, k=-1) @ X),
             (gc.arange(2, 14, 3, "float64") * x, np.arange(2, 14, 3) * X)]
    outs = [g for g, _ in cases]
    assert all(isinstance(g, gc.Tensor) for g in outs)
    for got in both(outs, **v):
        for g, (_, w) in zip(got, cases, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
    for call, words in [(lambda: np.sort(x), r"np.sort on a graphc tensor: .*graphc has no counterpart"),
                        (lambda: np.linalg.norm(x), r"np.linalg.norm on a graphc tensor"),
                        # on a symbolic batch numpy's own norm returned a tensor: |x| elementwise, silently wrong
                        (lambda: np.linalg.norm(gc.input("xn", ("N", 4))), r"np.linalg.norm on a graphc tensor"),
                        (lambda: np.median(gc.input("xn", ("N", 4))), r"np.median on a graphc tensor"),
                        (lambda: np.ptp(x), r"np.ptp on a graphc tensor"),
                        (lambda: np.pad(x, 1, mode="reflect"), r"mode='reflect'.*constant only"),
                        (lambda: np.concatenate([x, y], out=np.zeros((6, 4))), r"np.concatenate on a graphc tensor: "
                                                                               r".*unexpected keyword argument 'out'"),
                        (lambda: np.where(x > 0), r"np.where on a graphc tensor: .*data-dependent shape")]:
        with pytest.raises(gc.GraphcError, match=words):
            call()


@pytest.mark.parametrize("name, args, kwargs", [
    ("tile", (2,), {}), ("tile", ((2, 1, 3),), {}), ("tile", ((1, 1),), {}), ("tile", ((0, 2),), {}),
    ("repeat", (2,), {}), ("repeat", (3,), {"axis": 1}), ("repeat", (2,), {"axis": -2}), ("tril", (), {}),
    ("tril", (-1,), {}), ("triu", (1,), {}), ("triu", (), {"k": -2}), ("outer", (), {})])
def test_tile_repeat_outer_and_triangles_are_numpys(name, args, kwargs):
    """numpy's tile, repeat (one count), outer, tril and triu: the same values in the reference and compiled (a
    static and a symbolic batch), the gradient by finite differences (copies summed, the zeroed triangle 0)."""
    v = rng.normal(size=(3, 4)).astype(np.float32)
    want = getattr(np, name)(v, v[0]) if name == "outer" else getattr(np, name)(v, *args, **kwargs)
    for shape in ((3, 4), ("N", 4)):
        x = gc.input("x", shape)
        t = gc.outer(x, x[0]) if name == "outer" else getattr(gc, name)(x, *args, **kwargs)
        for got in both(t, x=v):
            assert np.asarray(got).shape == want.shape
            np.testing.assert_array_equal(got, want)
    x64 = gc.input("x64", (3, 4), "float64")
    t = gc.outer(x64, x64[0]) if name == "outer" else getattr(gc, name)(x64, *args, **kwargs)
    if want.size:
        gc.check_grad(gc.sum(t * rng.normal(size=want.shape)), x64, {"x64": v.astype(np.float64)})


def test_tile_repeat_and_size_refuse_what_numpy_cannot_give_statically():
    x = gc.input("x", ("N", 4))
    assert gc.input("s", (2, 3, 4)).size == 24 and gc.input("z", ()).size == 1
    for call, words in ((lambda: x.size, r"symbolic dims .*gc.dim_value\(math.prod\(x.shape\), x\)"),
                        (lambda: gc.repeat(x, [1, 2, 3, 4], axis=1), "per-element counts"),
                        (lambda: gc.repeat(x, 2, axis=2), "axis"), (lambda: gc.tile(x, (2, -1)), "non-negative"),
                        (lambda: gc.tril(x[0]), "rank 2 or more"), (lambda: gc.triu(x, 0.5), "k must be an int")):
        with pytest.raises(gc.GraphcError, match=words):
            call()


def test_take_along_axis_is_numpys_checked_and_differentiable():
    """numpy.take_along_axis (the logit at each row's label, a per-row top-k's values): the other axes broadcast,
    axis=None over the flattened array, np.take_along_axis on a tensor the same; reference and compiled equal
    numpy's, the gradient by finite differences, and an index out of its axis's range is refused (naming this
    line) before anything runs, never read from the next row."""
    x = rng.normal(size=(3, 4, 5))
    X = gc.input("X", (3, 4, 5), "float64")
    for idx, axis in ((rng.integers(0, 4, (3, 2, 1)), 1), (rng.integers(0, 3, (2, 4, 5)), 0),
                      (rng.integers(0, 5, (1, 4, 7)), -1), (np.array([3, 59, 0]), None)):
        want = np.take_along_axis(x, idx, axis)
        t = gc.take_along_axis(X, idx, axis)
        for got in both(t, X=x):
            np.testing.assert_array_equal(got, want)
        assert np.take_along_axis(X, idx, axis).digest() == t.digest()
        gc.check_grad(gc.sum(t * rng.normal(size=want.shape)), X, {"X": x})
    z = gc.input("z", ("N", 5))
    labels = gc.input("labels", ("N", 1), "int32")
    fn = gc.compile(gc.take_along_axis(z, labels, 1), cache=False)
    zv = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(fn({"z": zv, "labels": np.array([[0], [4], [2], [1]], np.int32)}),
                                  zv[np.arange(4), [0, 4, 2, 1]][:, None])
    with pytest.raises(gc.InputError, match=r"take_along_axis: index 5 is out of range \[0, 5\).*nothing was run"):
        fn({"z": zv, "labels": np.array([[0], [5], [2], [1]], np.int32)})
    for call, words in ((lambda: gc.take_along_axis(z, labels[:, 0], 1), "must have arr's rank 2"),
                        (lambda: gc.take_along_axis(z, labels, 2), "axis 2 is out of range"),
                        (lambda: gc.take_along_axis(z, z, 1), "int32 or int64")):
        with pytest.raises(gc.GraphcError, match=words):
            call()


def test_nan_aware_and_tolerance_functions_are_numpys():
    """nan_to_num (numpy's defaults: the dtype's max and min), isclose (infinities, NaNs, equal_nan), nansum and
    nanmean (an all-NaN row: 0 and NaN), arange and eye (static), at NaN, ±inf and signed zeros; the gradient of
    nansum is 0 at the NaNs, of nan_to_num 0 where it replaced."""
    x, y = gc.input("x", ("N", 4)), gc.input("y", ("N", 4))
    vx = np.array([[np.nan, np.inf, -np.inf, -0.0], [1.0, 1e-9, 2.0, np.nan], [np.nan] * 4], np.float32)
    vy = np.array([[np.nan, np.inf, np.inf, 0.0], [1.0 + 1e-6, 0.0, 2.1, 3.0], [0.0] * 4], np.float32)
    outs = [gc.nan_to_num(x), gc.nan_to_num(x, nan=-1.0, posinf=9.0, neginf=-9.0), gc.isclose(x, y),
            gc.isclose(x, y, rtol=0.1, atol=0.0, equal_nan=True), gc.nansum(x, axis=1),
            gc.nansum(x, axis=0, keepdims=True), gc.nanmean(x, axis=1), gc.nanmean(x, axis=0),
            gc.arange(5) + gc.arange(10, 0, -2), gc.arange(0.0, 1.0, 0.25), gc.eye(2, 3, -1, "int32")]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nanmean of an all-NaN row
        want = [np.nan_to_num(vx), np.nan_to_num(vx, nan=-1.0, posinf=9.0, neginf=-9.0), np.isclose(vx, vy),
                np.isclose(vx, vy, rtol=0.1, atol=0.0, equal_nan=True), np.nansum(vx, 1),
                np.nansum(vx, 0, keepdims=True),
                np.nanmean(vx, 1), np.nanmean(vx, 0), (np.arange(5) + np.arange(10, 0, -2)).astype(np.int32),
                np.arange(0.0, 1.0, 0.25, dtype=np.float32), np.eye(2, 3, -1, dtype=np.int32)]
    for got in both(outs, x=vx, y=vy):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype)
            np.testing.assert_array_equal(g, w)
    i = gc.input("i", (2,), "int32")
    assert gc.arange(2**31 - 2, 2**31 + 1).dtype == "int64" and gc.nan_to_num(i) is i
    x64 = gc.input("x64", (3, 4), "float64")
    d = gc.grad(gc.sum(gc.nansum(x64, axis=0)) + gc.sum(gc.nan_to_num(x64) * 2.0), x64)
    for got in both(d, x64=vx.astype(np.float64)):
        np.testing.assert_array_equal(got, np.where(np.isnan(vx), 0.0, np.where(np.isinf(vx), 1.0, 3.0)))
    for call, words in [(lambda: gc.arange(0, 5, 0), "step must not be 0"), (lambda: gc.eye(-1), "non-negative int"),
                        (lambda: gc.moveaxis(x, 0, 5), "not an axis"), (lambda: gc.hstack(x), "list or tuple"),
                        (lambda: gc.diagonal(x[0]), "at least 2 axes"),
                        (lambda: gc.reciprocal(i), r"numpy's is an integer.*1 / x"),
                        (lambda: gc.diagonal(x, 1), "symbolic axes")]:
        with pytest.raises(gc.GraphcError, match=words) as e:
            call()
        assert __file__.rsplit("/", 1)[-1] in str(e.value)


def test_cumprod_is_numpys_bit_for_bit_and_differentiates_through_zeros():
    """A scan multiplying in numpy's order: the same values; its gradient and second derivative at zeros are the
    chain rule's (no division by x), checked by finite differences."""
    x = gc.input("x", (3, 4), "float64")
    v = rng.normal(size=(3, 4))
    v[1, 1] = v[2, 0] = 0.0
    w = rng.normal(size=(3, 4))
    for axis in (0, 1, None):
        y = gc.cumprod(x, axis)
        for got in both(y, x=v):
            np.testing.assert_array_equal(got, np.cumprod(v, axis))
        gc.check_grad(gc.sum(gc.reshape(y, (3, 4)) * w), x, {"x": v})
        g = gc.grad(gc.sum(gc.reshape(y, (3, 4)) * w), x)
        gc.check_grad(gc.sum(g * g), x, {"x": v})
    i = gc.input("i", ("N",), "int64")
    for got in both(gc.cumprod(i), i=np.arange(1, 21, dtype=np.int64)):
        np.testing.assert_array_equal(got, np.cumprod(np.arange(1, 21)))
