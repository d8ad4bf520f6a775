"""The structural ops as a user meets them: numpy's names and results (numpy is the oracle here), errors that
name the op, the shapes and the user's line, symbolic batch dims, and second derivatives through them."""

import numpy as np
import pytest

import graphc as gc

HERE = "test_structural.py"
rng = np.random.default_rng(11)


def ev(out, **values):
    return gc.evaluate(out, values)


# ---------------------------------------------------------------------------------------------------------
# basic indexing


KEYS = [
    (slice(1, 3),), (2,), (-1,), (slice(None, None, -1),), (slice(None, None, -2), 1), (Ellipsis, 0),
    (None, slice(1, None), None), (0, Ellipsis, slice(3, 0, -2)), (slice(-2, None), None, -3), (slice(5, 1),),
    (slice(-100, 100, 3), slice(None), slice(None, 1)), (1, 2, 3), (Ellipsis,), (slice(None),),
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_basic_indexing_matches_numpy(key):
    v = rng.normal(size=(3, 4, 5))
    x = gc.input("x", v.shape, "float64")
    out = x[key]
    np.testing.assert_array_equal(ev(out, x=v), v[key])
    assert out.shape == v[key].shape


def test_one_selection_is_one_node_and_the_whole_tensor_is_itself():
    x = gc.input("x", (6, 4))
    assert x[0:4:2] is x[0:3:2]  # the same elements: the same (hash-consed) node
    assert x[:] is x and x[...] is x and x[::1, :] is x


def test_symbolic_batch_axis_is_taken_whole():
    x = gc.input("xb", ("N", 5), "float64")
    y = x[:, 1:4:2] * 2.0
    assert y.shape == (gc.dim("N"), 2)
    for n in (1, 3, 8):
        v = rng.normal(size=(n, 5))
        np.testing.assert_allclose(ev(y, xb=v), v[:, 1:4:2] * 2.0)
        np.testing.assert_allclose(ev(x[::-1], xb=v), v[::-1])
    g = gc.grad(gc.sum(gc.tanh(x[::-1, 1:4])), x)
    v = rng.normal(size=(4, 5))
    want = np.zeros_like(v)
    want[:, 1:4] = 1 - np.tanh(v[:, 1:4]) ** 2
    np.testing.assert_allclose(ev(g, xb=v), want)


@pytest.mark.parametrize("key, words", [
    ((3,), r"indexing: index 3 is out of range for axis 0 with size 3 \(of \[3,4\]\)"),
    ((0, -5), "index -5 is out of range for axis 1 with size 4"),
    ((0, 0, 0), r"too many indices: 3 for a rank-2 tensor \[3,4\]"),
    ((slice(None, None, 0),), "step cannot be zero"),
    ((Ellipsis, Ellipsis), "single ellipsis"),
    (([0, 2],), "gc.take"),
    ((np.array([True, False, True]),), "gc.take"),
    ((slice(0.5, None),), "slice bounds must be ints"),
])
def test_bad_indexing_is_an_error_at_the_users_line(key, words):
    x = gc.input("x", (3, 4))
    with pytest.raises(gc.GraphcError, match=words) as err:
        x[key]
    assert HERE in str(err.value) and "x: f32[3,4]" in str(err.value)


def test_indexing_with_a_tensor_is_take_on_its_axis_and_otherwise_points_to_take():
    """x[i] and x[:, i] with an integer tensor are gc.take along that axis (as numpy's advanced indexing there);
    mixed with an int or a slice it is refused, pointing to gc.take."""
    x, i = gc.input("x", (3, 4)), gc.input("i", (2,), "int32")
    assert x[i] is gc.take(x, i, axis=0) and x[:, i] is gc.take(x, i, axis=1)
    v = rng.normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(ev(x[:, i], x=v, i=np.array([3, 1], np.int32)), v[:, [3, 1]])
    with pytest.raises(gc.GraphcError, match=r"index i: i32\[2\].*use gc.take\(x, indices, axis\)"):
        x[i, 0]
    with pytest.raises(gc.GraphcError, match=r"use gc.take"):
        x[1:, i]


SYMBOLIC_KEYS = [slice(1, None), slice(None, -1), slice(-2, None), slice(1, -1), slice(None, None, 2),
                 slice(1, None, 3), slice(None, None, -2), slice(-1, None, -2), slice(2, 5), slice(-3, -1), 0, -1, 3]


@pytest.mark.parametrize("key", SYMBOLIC_KEYS, ids=repr)
def test_slices_and_indices_of_a_symbolic_axis_match_numpy_compiled_and_differentiated(key):
    """On a symbolic axis (a batch N, a length T) slices and indices are dims (x[1:] has N - 1 rows, x[-1] is row
    N - 1): the reference, the compiled function on 1-3 threads (bitwise) and the gradient (finite differences)
    agree with numpy for every N the selection fits."""
    x = gc.input("xs", ("N", 3))
    y = gc.tanh(x[key]) * 2.0
    loss = gc.sum(y * y)
    fn = gc.compile([y, gc.grad(loss, x)], threads=3)
    for n in (5, 6, 9):
        v = rng.normal(size=(n, 3))
        want = np.tanh(v[key]) * 2.0
        np.testing.assert_allclose(ev(y, xs=v), want, rtol=1e-12)
        outs = [fn({"xs": v.astype(np.float32)}, threads=t) for t in (1, 2, 3)]
        np.testing.assert_allclose(outs[0][0], want, rtol=1e-5, atol=1e-6)
        for o in outs[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(o, outs[0], strict=True))
        gc.check_grad(loss, x, {"xs": v})


def test_a_selection_past_the_end_of_a_symbolic_axis_is_an_error_when_its_size_is_known():
    """numpy clips slice bounds to the axis; on a symbolic axis they are not clipped (the dims are N - 5, not
    max(N - 5, 0)): a call whose axis is too short is a ShapeError naming the selection's line, in the reference,
    the compiled function and training, never a read outside the array."""
    x = gc.input("xs", ("N", 3))
    for sel, n, words in ((x[5:], 3, "from index 5 on"), (x[3], 3, "index 3"), (x[-4], 2, "index -2"),
                          (x[1:7:2], 5, "indices 1 to 5 by 2")):
        v = np.ones((n, 3), np.float32)
        also = r"( \(also built at [^)]*\))?"  # another test here may build the same slice node
        with pytest.raises(gc.ShapeError, match=rf"slice at {HERE}:\d+{also}: axis 0 of \[N,3\] has {n} "
                                                rf"element.*{words}.*not clipped"):
            ev(sel, xs=v)
        with pytest.raises(gc.ShapeError, match=rf"compiled function: slice at {HERE}.*{words}"):
            gc.compile(sel * 1.0)({"xs": v})
    assert gc.compile(x[5:] * 1.0)({"xs": np.ones((5, 3), np.float32)}).shape == (0, 3)  # fits, and is empty
    assert gc.compile(x[1:] * 1.0)({"xs": np.ones((1, 3), np.float32)}).shape == (0, 3)


def test_an_epoch_refuses_a_batch_its_slices_do_not_fit():
    x, t = gc.input("x", ("N", 4)), gc.input("t", ("N",))
    w = gc.param("w", (4,), init=np.ones(4, np.float32) * 0.1)
    d = gc.matmul(x, w) - t
    loss = gc.mean((d[1:] - d[:-1]) ** 2) + gc.mean(d[2:] * d[2:])  # needs 3 rows a batch
    ef = gc.EpochFunction(loss, {w: w - 0.01 * gc.grad(loss, w)}, x=x, y=t)
    X, T = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    state = gc.nn.init_params([w], seed=0)
    with pytest.raises(gc.ShapeError, match=r"training: a batch of 1 row\(s\):.*slice at .*index 2"):
        ef.run_epoch(X, T, state, batch=3)  # 10 rows: a last batch of 1
    with pytest.raises(gc.ShapeError, match="a batch of 2 row"):
        ef.run_epoch(X, T, state, batch=2)  # d[2:] of 2 rows is empty
    before = state["w"].copy()
    st = ef.run_epoch(X, T, state, batch=3, drop_last=True)
    assert st.steps == 3 and not np.array_equal(state["w"], before)
    # what a standalone binary checks its batches against: 3 rows from here on, and why 2 do not run
    assert ef.fewest_rows(4096) == (3, "a batch of 2 row(s) leaves a tensor of the step empty (a slice of the "
                                       "batch axis)")
    assert gc.EpochFunction(gc.mean(d * d), {w: w - 0.01 * gc.grad(gc.mean(d * d), w)}, x=x,
                            y=t).fewest_rows(4096) == (1, None)


def test_fewest_rows_of_a_program_no_batch_fits():
    x = gc.input("x", ("N", 2))
    assert gc.compile(gc.sum(x[1::2]) + gc.sum(x[-1])).fewest_rows(64) == (
        2, "a batch of 1 row(s) leaves a tensor of the step empty (a slice of the batch axis)")
    with pytest.raises(gc.ShapeError, match=r"no batch up to 4 rows fits the model \(slice at .*index 4"):
        gc.compile(gc.sum(x[4])).fewest_rows(4)


def test_split_of_a_symbolic_axis_at_indices():
    """gc.split at indices on a symbolic axis: its slices (dims T - 3), numpy's pieces, compiled too; equal
    sections of a symbolic axis are refused (nothing says they divide it)."""
    x = gc.input("xt", ("T", 3), "float64")
    parts = gc.split(x, [1, -2], axis=0)
    assert [p.shape[0] for p in parts] == [1, gc.dim("T") - 3, 2]
    for T in (3, 5, 8):
        v = rng.normal(size=(T, 3))
        for got in (ev(parts, xt=v), gc.compile([p * 1.0 for p in parts])({"xt": v})):
            for g, w in zip(got, np.split(v, [1, -2], axis=0), strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-12)
    with pytest.raises(gc.ShapeError, match=r"symbolic \(T\): it cannot be split into equal sections"):
        gc.split(x, 2)


def test_sequence_shifts_along_a_symbolic_time_axis():
    """A language model's inputs and targets, ids[:-1] and ids[1:] along a symbolic T, and a scan's last output
    ys[-1]: compiled equal to the reference for several T."""
    xs = gc.input("xs", ("T", "N", 3))
    _, ys = gc.scan(lambda h, x: (gc.tanh(h + x), gc.tanh(h + x)), gc.zeros(("N", 3), "float32"), xs[:-1])
    out = gc.sum((ys - xs[1:]) ** 2) + gc.sum(ys[-1])
    fn = gc.compile(out)
    for T in (2, 3, 7):
        v = rng.normal(size=(T, 2, 3)).astype(np.float32)
        np.testing.assert_allclose(fn({"xs": v}), ev(out, xs=v), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# pad, concatenate, stack, split


@pytest.mark.parametrize("width", [1, (1, 2), ((0, 1), (2, 0)), [[1], [0]], ((3,),)], ids=repr)
def test_pad_matches_numpy(width):
    v = rng.normal(size=(2, 3))
    x = gc.input("x", v.shape, "float64")
    np.testing.assert_array_equal(ev(gc.pad(x, width, constant_values=-1.5), x=v),
                                  np.pad(v, width, constant_values=-1.5))


def test_pad_interior_spreads_elements_out():
    x = gc.input("x", (2, 3), "int32")
    out = gc.pad(x, ((1, 0), (0, 0)), constant_values=9, interior=(1, 2))
    want = np.full((4, 7), 9)
    want[1::2, ::3] = [[1, 2, 3], [4, 5, 6]]
    assert out.dtype == "int32"
    np.testing.assert_array_equal(ev(out, x=np.array([[1, 2, 3], [4, 5, 6]], np.int32)), want)


@pytest.mark.parametrize("batch", [2, "N"])
@pytest.mark.parametrize("rows, take", [(1, slice(None, None, 2)), (1, slice(1, 2)), (2, slice(None, None, 3)),
                                        (3, slice(1, None, 2))])
def test_interior_padding_read_at_a_position_known_in_advance_is_the_pad_value(batch, rows, take):
    """The gradient of a strided slice is an interior pad; read back at one position (an axis of length 1 after
    the slice), the position is a number when lowered, and padding between two elements was read as an element
    (compiled only, with a symbolic batch): the input gradient of a stride-2 conv on a 1-pixel-high image."""
    x = gc.input("x", (batch, rows, 4))
    padded = gc.pad(x, ((0, 0), (1, 1), (0, 0)), interior=(0, 1, 0), constant_values=7.0)
    out = padded[:, take] * np.float32(3)
    g = gc.grad(gc.sum(gc.pad(x, ((0, 0), (1, 1), (0, 0)))[:, take] * np.float32(3)), x)
    v = rng.normal(size=(2, rows, 4)).astype(np.float32)
    want = np.pad(np.zeros((2, 2 * rows - 1, 4), np.float32), ((0, 0), (1, 1), (0, 0)), constant_values=7.0)
    want[:, 1:-1:2] = v
    np.testing.assert_array_equal(gc.compile(out)(x=v), want[:, take] * 3)
    np.testing.assert_array_equal(gc.compile(g)(x=v), ev(g, x=v))



def _lax_pad(v, value, config):
    """XLA's (lax.pad's) interior padding in numpy: lo + d + max(d - 1, 0) * interior + hi values per axis."""
    shape = [lo + d + max(d - 1, 0) * i + hi for d, (lo, hi, i) in zip(v.shape, config, strict=True)]
    out = np.full(shape, value, v.dtype)
    out[tuple(slice(lo, lo + d * (i + 1), i + 1) for d, (lo, _, i) in zip(v.shape, config, strict=True))] = v
    return out


@pytest.mark.parametrize("rows", [0, 1, 3])
@pytest.mark.parametrize("low, high, interior", [(1, 2, 3), (0, 0, 5), (2, 0, 1)])
def test_interior_padding_of_a_symbolic_axis_that_is_empty_adds_none(rows, low, high, interior):
    """Interior values go between elements: an empty axis gets low + high values (lax.pad). The symbolic shape
    was low + high + (N - 1) * interior + N, interior too few at N = 0 (a shape of -5 for (0, 0, 5))."""
    x = gc.input("x", ("N", 2))
    y = gc.pad(x, ((low, high), (0, 1)), constant_values=7.0, interior=(interior, 1))
    v = (np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) + 1)
    want = _lax_pad(v, 7.0, [(low, high, interior), (0, 1, 1)])
    g = gc.grad(gc.sum(y * y), x)
    for got, dg in (ev([y, g], x=v), gc.compile([y, g], cache=False)(x=v)):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(dg, 2 * v)


@pytest.mark.parametrize("rows", [0, 1, 2, 5])
@pytest.mark.parametrize("take", [slice(None, None, 2), slice(1, None, 3), slice(None, None, -2)])
def test_the_gradient_of_a_strided_slice_of_a_symbolic_axis_is_its_size_for_any_rows(rows, take):
    """The gradient pads the slice's cotangent back to N rows; its high padding counts the interior values as
    the pad does (max(n - 1, 0) gaps), so the shapes meet for every N, an empty selection included."""
    x = gc.input("x", ("N", 2), "float64")
    g = gc.grad(gc.sum(x[take] ** 2), x)
    v = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2) + 1
    want = np.zeros_like(v)
    want[take] = 2 * v[take]
    for got in (ev(g, x=v), gc.compile(g, cache=False)(x=v)):
        np.testing.assert_array_equal(got, want)

def test_strided_same_conv_on_a_one_pixel_image_has_the_reference_gradient():
    x = gc.input("x", ("N", 1, 1, 8))
    w = gc.input("w", (3, 3, 8, 4))
    gx, gw = gc.grad(gc.sum(gc.sin(gc.conv2d(x, w, stride=2, padding="same"))), [x, w])
    v = dict(x=rng.normal(size=(2, 1, 1, 8)).astype(np.float32), w=rng.normal(size=(3, 3, 8, 4)).astype(np.float32))
    for got, want in zip(gc.compile([gx, gw])(v), gc.evaluate([gx, gw], v), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width, words", [((-1, 0), "pad_width must be"), (((1, 1),) * 3, "pad_width must be"),
                                          ((1.5, 0), "pad_width must be")])
def test_bad_pad_width_is_an_error(width, words):
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError, match=words) as err:
        gc.pad(x, width)
    assert err.value.args[0].startswith("pad: ") and HERE in str(err.value)


def test_pad_of_an_int_tensor_with_a_fraction_is_an_error():
    with pytest.raises(gc.DTypeError, match="constant_values 0.5 does not fit an int32 tensor"):
        gc.pad(gc.input("k", (2,), "int32"), 1, constant_values=0.5)


def test_concatenate_stack_split_match_numpy():
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 5))
    x, y = gc.input("x", a.shape, "float64"), gc.input("y", b.shape, "float64")
    np.testing.assert_array_equal(ev(gc.concatenate([x, y], axis=-1), x=a, y=b), np.concatenate([a, b], -1))
    np.testing.assert_array_equal(ev(gc.concatenate([x, y], axis=None), x=a, y=b), np.concatenate([a, b], None))
    np.testing.assert_array_equal(ev(gc.stack([x, x * 2.0, x], axis=1), x=a), np.stack([a, a * 2, a], 1))
    np.testing.assert_array_equal(ev(gc.stack([x, x], axis=-1), x=a), np.stack([a, a], -1))
    for spec in (5, [1, 3], [4, 2], [-1], [0, 9], [2, 2]):
        parts = gc.split(y, spec, axis=1)
        want = np.split(b, spec, axis=1)
        assert len(parts) == len(want)
        for p, w in zip(parts, want, strict=True):
            np.testing.assert_array_equal(ev(p, y=b), w)
    # joined back, the parts are the tensor; the gradient of the parts is the cotangent cut the same way
    parts = gc.split(y, [1, 3], axis=1)
    np.testing.assert_array_equal(ev(gc.concatenate(parts, 1), y=b), b)
    g = gc.grad(gc.sum(parts[0]) + gc.sum(parts[2] * 3.0), y)
    np.testing.assert_array_equal(ev(g, y=b), [[1, 0, 0, 3, 3]] * 2)


def test_concatenate_along_the_batch_axis():
    x = gc.input("xb", ("N", 2), "float64")
    out = gc.concatenate([x, x * 2.0], 0)
    assert out.shape == (2 * gc.dim("N"), 2)
    v = rng.normal(size=(3, 2))
    np.testing.assert_allclose(ev(out, xb=v), np.concatenate([v, 2 * v]))
    np.testing.assert_allclose(ev(gc.grad(gc.sum(out * out), x), xb=v), 2 * v + 8 * v)


def test_concatenate_errors_name_the_op_the_shapes_and_the_line():
    x, y = gc.input("x", (2, 3)), gc.input("y", (3, 3))
    with pytest.raises(gc.ShapeError, match=r"concat: shapes \[2,3\] and \[3,3\] \(input 1\) differ off the "
                                            r"concatenation axis 1 \(inputs x: f32\[2,3\], y: f32\[3,3\]\)") as e:
        gc.concatenate([x, y], axis=1)
    assert HERE in str(e.value)
    with pytest.raises(gc.DTypeError, match="concat: tensors have dtypes float32 and float64"):
        gc.concatenate([x, gc.input("z", (2, 3), "float64")])
    with pytest.raises(gc.ShapeError, match="concat: axis 2 is out of range for a rank-2 tensor"):
        gc.concatenate([x, x], axis=2)
    with pytest.raises(gc.ShapeError, match=r"stack: all tensors must have the same shape: \[2,3\] and \[3,3\]"):
        gc.stack([x, y])
    with pytest.raises(gc.ShapeError, match="split: 2 sections do not divide axis 0 of size 3 equally"):
        gc.split(y, 2)
    with pytest.raises(gc.ShapeError, match=r"split: axis 0 of \[N,3\] is symbolic"):
        gc.split(gc.input("b", ("N", 3)), 2)


# ---------------------------------------------------------------------------------------------------------
# take and scatter_add


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_take_matches_numpy_for_any_index_rank(axis):
    v = rng.normal(size=(3, 4, 2))
    x = gc.input("x", v.shape, "float64")
    for idx in (np.array(1), np.array([0, 1, 1]), np.array([[0, 1], [1, 0], [0, 0]])):
        i = gc.input("i", idx.shape, "int64")
        out = gc.take(x, i, axis)
        np.testing.assert_array_equal(ev(out, x=v, i=idx), np.take(v, idx, axis))


def test_embedding_lookup_over_a_batch_and_its_gradient_accumulates_repeats():
    table = gc.input("table", (5, 3), "float64")
    ids = gc.input("ids", ("N", 4), "int32")
    emb = gc.take(table, ids)
    assert emb.shape == (gc.dim("N"), 4, 3)
    tv, iv = rng.normal(size=(5, 3)), np.array([[0, 2, 2, 4], [2, 1, 0, 0]], np.int32)
    np.testing.assert_array_equal(ev(emb, table=tv, ids=iv), tv[iv])
    g = ev(gc.grad(gc.sum(emb), table), table=tv, ids=iv)
    np.testing.assert_array_equal(g[:, 0], np.bincount(iv.ravel(), minlength=5))


@pytest.mark.parametrize("bad", [5, -1])
def test_an_index_out_of_range_is_an_error_naming_the_value_and_the_axis(bad):
    x = gc.input("x", (3, 5))
    i = gc.input("i", (2,), "int32")
    out = gc.take(x, i, axis=1)
    with pytest.raises(gc.InputError, match=rf"take: index {bad} is out of range for axis 1 with size 5 .*"
                                             rf"negative indices are not counted from the end\) at {HERE}"):
        ev(out, x=np.zeros((3, 5), np.float32), i=np.array([0, bad], np.int32))
    upd = gc.input("u", (3, 2))
    with pytest.raises(gc.InputError, match=rf"scatter_add: index {bad} is out of range for axis 1 with size 5"):
        ev(gc.scatter_add(x, i, upd, 1), x=np.zeros((3, 5), np.float32), i=np.array([bad, 0], np.int32),
           u=np.ones((3, 2), np.float32))


@pytest.mark.parametrize("bad", [5, -1])
def test_constant_indices_out_of_range_are_an_error_when_the_graph_is_built(bad):
    """Indices known when the graph is built (a numpy array) are checked then, at the user's line, as an
    embedding's ids are; before, only evaluating or running the graph found them."""
    x = gc.input("x", (3, 5))
    with pytest.raises(gc.ShapeError, match=rf"take: index {bad} is out of range for axis 1 with size 5 .* at {HERE}"):
        gc.take(x, np.array([0, bad]), axis=1)
    with pytest.raises(gc.ShapeError, match=rf"embedding 'emb': id {bad} is out of range \[0, 5\)"):
        gc.nn.embedding(np.array([[1, bad]]), 5, 2, name="emb")
    with pytest.raises(gc.ShapeError, match=rf"softmax_cross_entropy: label {bad} is out of range \[0, 5\)"):
        gc.nn.softmax_cross_entropy(gc.input("z", (2, 5)), np.array([0, bad], np.int32))
    assert gc.take(x, np.array([0, 4]), axis=1).shape == (3, 2)


@pytest.mark.parametrize("bad", [3, -1])
def test_take_of_an_iota_compiles_and_checks_its_indices(bad):
    """An iota (compiled as an index expression, not a buffer) read through a take: the index expression uses the
    gathered value (it failed code generation: the gather's symbol was read as a dim), checked like any gather."""
    i = gc.input("i", ("N",), "int32")
    # computed indices (an input's are checked before the call): the gather's own check is what this tests
    out = gc.take(gc.cast(gc.iota(3, "int32"), "float32"), gc.maximum(i, -100)) * 2.0
    fn = gc.compile([out])
    idx = np.array([0, 2, 1, 2, 0], np.int32)
    np.testing.assert_array_equal(fn({"i": idx})[0], 2.0 * idx)
    with pytest.raises(gc.InputError, match=rf"take \(f32\[N\]\) at {HERE}.*out of range \[0, 3\)"):
        fn({"i": np.array([0, bad, 1], np.int32)})


@pytest.mark.parametrize("threads", [1, 2])
def test_a_take_from_a_broadcast_still_checks_its_indices(threads):
    """Along a broadcast axis every index reads the same element, so the index drops out of the address; the
    range check stayed with it and the call read the error word at address 0 (a segfault)."""
    x = gc.input("x", (6, 4))
    i = gc.input("i", ("K",), "int32")
    rows = gc.take(gc.broadcast_to(x[0:1], (6, 4)), i, axis=0)
    cols = gc.take(gc.broadcast_to(x[:, 0:1], (6, 4)), i, axis=1)
    fn = gc.compile([rows, cols], threads=threads, cache=False)
    xv = np.arange(24, dtype=np.float32).reshape(6, 4)
    iv = np.array([0, 2, 1, 3], np.int32)
    got = fn({"x": xv, "i": iv})
    np.testing.assert_array_equal(got[0], np.broadcast_to(xv[0:1], (6, 4))[iv])
    np.testing.assert_array_equal(got[1], np.broadcast_to(xv[:, 0:1], (6, 4))[:, iv])
    for bad in (6, -1):
        with pytest.raises(gc.InputError, match="out of range"):
            fn({"x": xv, "i": np.array([0, bad], np.int32)})


@pytest.mark.parametrize("source", ["concatenate", "pad"])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_take_from_a_concatenation_or_padding_matches_numpy(source, axis):
    """The concatenation's (or pad's) guard tests the gathered index: its condition needs the gathered value (code
    generation failed: the gather's symbol was read as a dim)."""
    x = gc.input("x", ("N", 3))
    i = gc.input("i", (5,), "int32")
    whole = (gc.concatenate([x, x * 2.0], axis=axis) if source == "concatenate"
             else gc.pad(x, ((1, 2), (2, 1))))
    out = gc.take(whole, i, axis=axis)
    fn = gc.compile([out], threads=2, cache=False)
    xv = np.arange(12, dtype=np.float32).reshape(4, 3)
    ref = np.concatenate([xv, xv * 2], axis=axis) if source == "concatenate" else np.pad(xv, ((1, 2), (2, 1)))
    iv = np.array([0, ref.shape[axis] - 1, 2, 1, 3], np.int32)
    np.testing.assert_array_equal(fn({"x": xv, "i": iv})[0], np.take(ref, iv, axis=axis))
    with pytest.raises(gc.InputError, match="out of range"):
        fn({"x": xv, "i": np.array([0, ref.shape[axis], 0, 0, 0], np.int32)})


def test_take_and_scatter_add_check_their_arguments():
    x = gc.input("x", (3, 5))
    with pytest.raises(gc.DTypeError, match=r"take: indices must be int32 or int64, got f: f32\[2\]"):
        gc.take(x, gc.input("f", (2,)))
    with pytest.raises(gc.ShapeError, match="take: axis 2 is out of range for a rank-2 tensor"):
        gc.take(x, [0], axis=2)
    with pytest.raises(gc.ShapeError, match=r"scatter_add: updates must have shape x.shape\[:axis\] \+ "
                                            r"indices.shape \+ x.shape\[axis\+1:\] = \[3,2\], got \[2,3\]") as e:
        gc.scatter_add(x, np.array([0, 1]), gc.input("u", (2, 3)), axis=1)
    assert HERE in str(e.value)


def test_scatter_add_accumulates_repeated_indices_like_add_at():
    v, u = rng.normal(size=(4, 3)), rng.normal(size=(2, 2, 3))
    idx = np.array([[1, 1], [3, 1]])
    x, upd = gc.input("x", v.shape, "float64"), gc.input("u", u.shape, "float64")
    want = v.copy()
    np.add.at(want, idx, u)
    np.testing.assert_allclose(ev(gc.scatter_add(x, idx, upd), x=v, u=u), want)



@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2)])
def test_a_scatter_into_a_reshaped_tensor_addresses_the_reshape(shape):
    # the compiled gradient of take from a flattened tensor scattered with the tensor's own strides: only index 0
    # landed, the others outside the buffer
    v = rng.normal(size=shape)
    x = gc.input("x", shape, "float64")
    idx = np.array([0, 11, 5, 11])
    flat = gc.reshape(x, (-1,))
    outs = [gc.grad(gc.sum(gc.take(x, idx, axis=None) * np.arange(1.0, 5.0)), [x])[0],
            gc.reshape(gc.scatter_add(flat, idx, gc.take(flat, idx)), shape)]
    want_grad = np.zeros(v.size)
    np.add.at(want_grad, idx, np.arange(1.0, 5.0))
    want_scatter = v.ravel().copy()
    np.add.at(want_scatter, idx, v.ravel()[idx])
    for got in (gc.evaluate(outs, {"x": v}), gc.compile(outs, cache=False)({"x": v})):
        np.testing.assert_allclose(got[0], want_grad.reshape(shape))
        np.testing.assert_allclose(got[1], want_scatter.reshape(shape))


# ---------------------------------------------------------------------------------------------------------
# windows


def test_windows_is_the_im2col_view():
    v = rng.normal(size=(2, 7, 8, 3))
    x = gc.input("img", v.shape, "float64")
    w = gc.windows(x, (3, 2), strides=(2, 3), dilation=(1, 2))
    assert w.shape == (2, 3, 2, 3, 2, 3)  # (N, OH, OW, KH, KW, C)
    got = ev(w, img=v)
    for oh, ow, kh, kw in np.ndindex(3, 2, 3, 2):
        np.testing.assert_array_equal(got[:, oh, ow, kh, kw], v[:, 2 * oh + kh, 3 * ow + 2 * kw])


def test_windows_in_one_dimension_and_over_chosen_axes():
    v = rng.normal(size=(2, 6, 3))
    x = gc.input("seq", v.shape, "float64")
    np.testing.assert_array_equal(ev(gc.windows(x, 3), seq=v),
                                  np.lib.stride_tricks.sliding_window_view(v, 3, axis=1).transpose(0, 1, 3, 2))
    w = gc.windows(x, (2, 2), axes=(2, 0))  # axes in any order: each keeps its own window
    assert w.shape == (1, 6, 2, 2, 2)
    np.testing.assert_array_equal(ev(w, seq=v)[0, :, :, 1, 0], v[1, :, 0:2])


def test_a_convolution_from_pad_windows_and_matmul():
    v, k = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(3, 3, 3, 4))
    x, w = gc.input("img", v.shape, "float64"), gc.input("k", k.shape, "float64")
    cols = gc.windows(gc.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3))  # "same" padding
    y = gc.reshape(cols, (2, 5, 5, 27)) @ gc.reshape(w, (27, 4))
    padded = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.einsum("nhwklc,klco->nhwo",
                     np.stack([np.stack([padded[:, i:i + 5, j:j + 5] for j in range(3)], 3) for i in range(3)], 3), k)
    np.testing.assert_allclose(ev(y, img=v, k=k), want)
    gc.check_grad(gc.sum(gc.tanh(y)), [x, w], {"img": v, "k": k})


def test_a_window_larger_than_its_axis_is_an_error_that_suggests_pad():
    x = gc.input("img", (2, 4, 4, 3))
    with pytest.raises(gc.ShapeError, match=r"windows: window 3 \(dilated to 5\) is larger than axis 1 of size 4 "
                                            r"of \[2,4,4,3\]; pad it first \(gc.pad\)") as e:
        gc.windows(x, 3, dilation=2)
    assert HERE in str(e.value)
    with pytest.raises(gc.ShapeError, match="windows: strides must be ints >= 1"):
        gc.windows(x, 2, strides=0)
    with pytest.raises(gc.ShapeError, match=r"windows: axis 0 of \[N,4,3\] is symbolic"):
        gc.windows(gc.input("b", ("N", 4, 3)), 2, axes=(0, 1))


# ---------------------------------------------------------------------------------------------------------
# min, argmax, argmin, cumsum


def test_min_ties_share_the_cotangent_evenly():
    x = gc.input("x", (2, 3), "float64")
    v = np.array([[1.0, -2.0, -2.0], [0.5, 3.0, 1.0]])
    np.testing.assert_array_equal(ev(gc.min(x, 1), x=v), [-2.0, 0.5])
    np.testing.assert_array_equal(ev(x.min(), x=v), -2.0)
    np.testing.assert_array_equal(ev(gc.grad(gc.sum(gc.min(x, 1)), x), x=v), [[0, 0.5, 0.5], [1, 0, 0]])
    with pytest.raises(gc.ShapeError, match=r"min: min over the empty axis 0 of \[0,3\]"):
        gc.min(gc.input("e", (0, 3)), 0)


@pytest.mark.parametrize("fn, ref", [(gc.argmax, np.argmax), (gc.argmin, np.argmin)])
def test_argmax_argmin_match_numpy_on_ties_and_nans(fn, ref):
    v = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, np.nan, 5.0, np.nan], [-1.0, -1.0, -1.0, -1.0]])
    x = gc.input("x", v.shape, "float64")
    for axis in (None, 0, 1, -1):
        got = ev(fn(x, axis), x=v)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ref(v, axis))
        np.testing.assert_array_equal(ev(fn(x, axis, keepdims=True), x=v), ref(v, axis, keepdims=True))
    k = gc.input("k", (5,), "int32")
    np.testing.assert_array_equal(ev(fn(k), k=np.array([3, 7, 7, -2, 7], np.int32)),
                                  ref(np.array([3, 7, 7, -2, 7])))


@pytest.mark.parametrize("fn, ref", [(gc.argmax, np.argmax), (gc.argmin, np.argmin)])
def test_argmax_argmin_over_a_symbolic_axis(fn, ref):
    """Over the batch axis (or the flattened tensor) the positions are an iota of the symbolic length: numpy's
    results, NaN first, compiled too, for any N."""
    x = gc.input("b", ("N", 3))
    for axis in (0, None):
        y = fn(x, axis)
        fn_c = gc.compile(y, cache=False)
        for n in (1, 4, 7):
            v = rng.normal(size=(n, 3)).astype(np.float32)
            if n == 4:
                v[2, 1] = np.nan
            np.testing.assert_array_equal(ev(y, b=v), ref(v, axis))
            np.testing.assert_array_equal(fn_c({"b": v}), ref(v, axis))


def test_argmax_errors():
    with pytest.raises(gc.ShapeError, match=r"argmax: axis 0 of \[0,3\] is empty: it has no argmax"):
        gc.argmax(gc.input("e", (0, 3)), 0)
    with pytest.raises(gc.ShapeError, match="argmax: axis 2 is out of range for a rank-2 tensor"):
        gc.argmax(gc.input("x", (2, 3)), 2)


def test_cumsum_matches_numpy():
    v = rng.normal(size=(3, 4))
    x = gc.input("x", v.shape, "float64")
    for axis in (None, 0, 1, -1):
        np.testing.assert_allclose(ev(gc.cumsum(x, axis), x=v), np.cumsum(v, axis))
    np.testing.assert_allclose(ev(gc.cumsum(x, 1, reverse=True), x=v), np.cumsum(v[:, ::-1], 1)[:, ::-1])
    k = gc.input("k", (4,), "int64")
    np.testing.assert_array_equal(ev(gc.cumsum(k), k=np.array([1, 2, 3, 4])), [1, 3, 6, 10])
    with pytest.raises(gc.ShapeError, match="cumsum: axis must be an int or None"):
        gc.cumsum(x, (0, 1))


# ---------------------------------------------------------------------------------------------------------
# batched matmul


def test_batched_matmul_broadcasts_batch_dims_like_numpy():
    a, b = rng.normal(size=(2, 1, 3, 4)), rng.normal(size=(5, 4, 2))
    x, y = gc.input("a", a.shape, "float64"), gc.input("b", b.shape, "float64")
    np.testing.assert_allclose(ev(x @ y, a=a, b=b), a @ b)
    np.testing.assert_allclose(ev(gc.matmul(y, x, ta=True, tb=True), a=a, b=b),
                               np.swapaxes(b, -1, -2) @ np.swapaxes(a, -1, -2))
    v = rng.normal(size=4)
    z = gc.input("v", (4,), "float64")
    np.testing.assert_allclose(ev(x @ z, a=a, v=v), a @ v)
    np.testing.assert_allclose(ev(z @ y, b=b, v=v), v @ b)
    gc.check_grad(gc.sum(gc.tanh(x @ y)), [x, y], {"a": a, "b": b})


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False)])
def test_compiled_batched_matmul_shares_out_batch_points_bitwise_on_1_to_3_threads(monkeypatch, ta, tb):
    """Small products of a batch run whole, one per thread, their batch points shared out over the threads
    (fewer points than threads: each product split over the threads as usual); the same sums either way, so the
    results match numpy and are bitwise the same on 1-3 threads, with the split on or off, with an operand
    broadcast over the batch."""
    import graphc.codegen.emit as emit

    a = rng.normal(size=(5, 3) + ((9, 13) if ta else (13, 9))).astype(np.float32)
    w = rng.normal(size=(20, 9) if tb else (9, 20)).astype(np.float32)
    x = gc.input("a", ("N", 3) + a.shape[2:])
    y = gc.input("w", w.shape)
    out = gc.tanh(gc.matmul(x, y, ta=ta, tb=tb)) * 2.0  # the epilogue: tanh, times 2
    want = np.tanh(np.swapaxes(a, -1, -2) @ (w.T if tb else w) if ta else a @ (w.T if tb else w)) * 2.0
    split_max = emit.BATCH_SPLIT_MAX
    assert 13 * 20 * 9 <= split_max
    for n in (1, 2, 5):
        runs = []
        for limit in (split_max, 0):
            monkeypatch.setattr(emit, "BATCH_SPLIT_MAX", limit)
            for threads in (1, 2, 3):
                (got,) = gc.compile([out], threads=threads, cache=False)({"a": a[:n], "w": w})
                np.testing.assert_allclose(got, want[:n], rtol=2e-5, atol=2e-6)
                runs.append(got)
        for got in runs[1:]:
            np.testing.assert_array_equal(got, runs[0])


def test_two_dimensional_matmul_is_unchanged():
    x, w = gc.input("x", ("N", 3)), gc.input("w", (3, 2))
    out = x @ w
    assert out.op.name == "matmul" and dict(out.attrs) == {"ta": False, "tb": False} and out.shape[1] == 2
    ga, gb = gc.grad(gc.sum(out), [x, w])
    assert {ga.op.name, gb.op.name} == {"matmul"}  # no batch sum for 2-D operands


def test_batched_matmul_errors_name_both_shapes():
    x, y = gc.input("a", (2, 3, 4)), gc.input("b", (3, 4, 5))
    with pytest.raises(gc.ShapeError, match=r"matmul: batch dims: shapes \[2\] and \[3\] do not broadcast .*"
                                            r"\(inputs a: f32\[2,3,4\], b: f32\[3,4,5\]\)") as e:
        x @ y
    assert HERE in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# second derivatives through the structural ops


HVP = {
    "slice": lambda x: x[1:4:2, ::-1],
    "pad": lambda x: gc.pad(x, ((1, 0), (2, 1)), constant_values=0.5, interior=(1, 0)),
    "take": lambda x: gc.take(x, np.array([[2, 0], [2, 3]]), axis=0),
    "windows": lambda x: gc.windows(gc.reshape(x, (1, 4, 3, 1)), (2, 2), strides=(2, 1)),
    "scatter_add": lambda x: gc.scatter_add(x, np.array([1, 1]), x[0:2] * x[2:4], axis=0),
    "concat": lambda x: gc.concatenate([x, x[::-1]], axis=1),
    "cumsum": lambda x: gc.cumsum(x, 0, reverse=True),
    "min": lambda x: gc.min(x, 1),
}


@pytest.mark.parametrize("name", sorted(HVP))
def test_hessian_vector_product_through_the_op(name):
    x = gc.input("x", (4, 3), "float64")
    y = gc.sum(gc.tanh(HVP[name](x)) ** 2)
    v = gc.input("v", (4, 3), "float64")
    hv = gc.grad(gc.sum(gc.grad(y, x) * v), x)
    xv, vv = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    gx = gc.grad(y, x)
    h = 1e-5
    num = (ev(gx, x=xv + h * vv) - ev(gx, x=xv - h * vv)) / (2 * h)
    got = gc.evaluate(hv, {"x": xv, "v": vv})
    assert np.abs(got).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-8)


def test_sign_and_cumsum_keep_numpys_signed_zeros():
    x = gc.input("x", (2, 3))
    outs = [gc.sign(x), gc.cumsum(x, axis=1), gc.cumsum(x, axis=1, reverse=True)]
    xv = np.array([[-0.0, 1.0, np.nan], [-0.0, -0.0, -0.0]], np.float32)
    want = [np.sign(xv), np.cumsum(xv, axis=1), np.flip(np.cumsum(np.flip(xv, 1), axis=1), 1)]
    for got in (gc.compile(outs, cache=False)({"x": xv}), gc.evaluate(outs, {"x": xv})):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
            assert (np.signbit(g) == np.signbit(w)).all()


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_a_constant_position_of_a_concatenation_along_a_symbolic_axis(n):
    """Which piece holds a fixed position depends on N at run time (it failed to compile: a TypeError comparing
    dims); an empty forward slice at some N is empty (its stop below 0 read as 'to the end')."""
    x = gc.input("x", ("N",), "float32")
    outs = [gc.concatenate([x, x])[0], gc.concatenate([x, x])[-1], gc.concatenate([x[1:], x])[0],
            gc.concatenate([x[::2], x])[1], gc.concatenate([x, 2 * x])[1:2], gc.sum(x[:-1:2]) + x[0]]
    v = {"x": np.arange(1.0, n + 1, dtype=np.float32)}
    a = v["x"]
    want = [a[0], a[-1], np.concatenate([a[1:], a])[0], np.concatenate([a[::2], a])[1],
            np.concatenate([a, 2 * a])[1:2], np.sum(a[:-1:2]) + a[0]]
    for got, ev, w in zip(gc.compile(outs, cache=False)(v), gc.evaluate(outs, v), want, strict=True):
        np.testing.assert_array_equal(got, w)
        np.testing.assert_array_equal(ev, w)


def test_one_hot_labels_over_a_column_slice_compile():
    """Cross-entropy of the first C columns of wider logits: the slice's guards split the class loop, and the
    one-hot's index read through the labels' gather (idx(_g0) == i1) had no rebuild there ('cannot rebuild
    Index while splitting guards', an internal error at compile)."""
    ids = gc.input("ids_cs", ("T", "N"), "int64")
    lab = gc.input("lab_cs", ("N",), "int32")
    e = gc.nn.embedding(ids, 9, 4, name="emb_cs")
    loss = gc.nn.softmax_cross_entropy(gc.sum(e, axis=0)[:, :3], lab)
    (table,) = gc.nn.parameters(loss)
    outs = [loss, gc.grad(loss, table)]
    r = np.random.default_rng(2)
    v = {"ids_cs": r.integers(0, 9, (5, 7)), "lab_cs": r.integers(0, 3, 7).astype(np.int32),
         "emb_cs.E": r.normal(size=(9, 4)).astype(np.float32)}
    for got, want in zip(gc.compile(outs, cache=False)(v), gc.evaluate(outs, v), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
