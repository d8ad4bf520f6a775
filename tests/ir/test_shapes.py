import sys

import numpy as np
import pytest
import sympy

import graphc as gc


def test_symbolic_broadcasting_unifies():
    x = gc.input("x", ("N", 3))
    b = gc.input("b", (3,))
    assert (x + b).shape == (gc.dim("N"), 3)
    col = gc.input("c", ("N", 1))
    assert (x * col).shape == (gc.dim("N"), 3)
    assert (gc.sum(x, 0, keepdims=True) + x).shape == (gc.dim("N"), 3)


def test_mismatch_names_op_shapes_and_line():
    x = gc.input("x", ("N", 3))
    y = gc.input("y", ("N", 4))
    with pytest.raises(gc.ShapeError) as e:
        x + y
    line = sys._getframe().f_lineno - 1
    msg = str(e.value)
    assert msg.startswith("add:")
    assert "[N,3]" in msg and "[N,4]" in msg
    assert f"test_shapes.py:{line}" in msg
    assert isinstance(e.value, gc.GraphcError)


AXIS_FUNCTIONS = {
    "sum": lambda x, a: gc.sum(x, axis=a), "mean": lambda x, a: gc.mean(x, axis=a),
    "max": lambda x, a: gc.max(x, axis=a), "min": lambda x, a: gc.min(x, axis=a),
    "cumsum": lambda x, a: gc.cumsum(x, axis=a), "var": lambda x, a: gc.var(x, axis=a),
    "logsumexp": lambda x, a: gc.logsumexp(x, axis=a), "softmax": lambda x, a: gc.softmax(x, axis=a),
    "log_softmax": lambda x, a: gc.log_softmax(x, axis=a),
}


@pytest.mark.parametrize("name", sorted(AXIS_FUNCTIONS))
@pytest.mark.parametrize("axis,message", [(2, r"axis 2 is out of range for a rank-2 tensor \(axes -2 to 1\)"),
                                          (-3, "axis -3 is out of range"), ("a", "axis must be an int"),
                                          (1.0, "axis must be an int"), (True, "axis must be an int"),
                                          ((1, -1), r"repeated axis in \(1, -1\)")])
def test_a_bad_axis_names_the_function_the_tensor_and_the_line(name, axis, message):
    x = gc.input("x", ("N", 3))
    if name == "cumsum" and not isinstance(axis, int):
        message = "axis must be an int or None"  # one axis
    with pytest.raises(gc.ShapeError, match=rf"^{name}: .*{message}.*x: f32\[N,3\].* at test_shapes.py:\d+"):
        AXIS_FUNCTIONS[name](x, axis)


def test_batch_dim_does_not_unify_with_a_feature_dim():
    x = gc.input("x", ("N", 3))
    w = gc.input("w", (5, 3))
    with pytest.raises(gc.ShapeError, match="N vs 5"):
        x + w
    m = gc.input("m", ("M", 3))
    with pytest.raises(gc.ShapeError):
        x - m


def test_matmul_inner_dims():
    x = gc.input("x", ("N", 784))
    w = gc.param("w_bad", (256, 128))
    with pytest.raises(gc.ShapeError, match="inner dims differ") as e:
        x @ w
    assert "test_shapes.py" in str(e.value) and "w_bad: f32[256,128]" in str(e.value)
    assert gc.matmul(x, gc.param("w_ok", (256, 784)), tb=True).shape == (gc.dim("N"), 256)


def test_reshape_checks_symbolic_sizes():
    x = gc.input("x", ("N", 4, 3))
    assert gc.reshape(x, ("N", 12)).shape == (gc.dim("N"), 12)
    assert gc.reshape(x, (-1, 12)).shape[0] == gc.dim("N")
    with pytest.raises(gc.ShapeError, match="cannot reshape"):
        gc.reshape(x, ("N", 11))


def test_dtype_errors():
    x = gc.input("x", (3,))
    d = gc.input("d", (3,), "float64")
    with pytest.raises(gc.DTypeError, match="different dtypes"):
        x + d
    i = gc.input("i", (3,), "int32")
    with pytest.raises(gc.DTypeError):
        gc.matmul(gc.reshape(i, (1, 3)), gc.reshape(x, (3, 1)))
    assert (x + i).dtype == "float32"  # ints meeting floats become floats
    with pytest.raises(gc.DTypeError, match="bool"):
        gc.where(x, x, x)
    with pytest.raises(gc.ShapeError):
        gc.input("bad", (-1, 3))
    with pytest.raises(gc.DTypeError):
        gc.input("bad", (3,), "complex64")


def test_numpy_scalars_are_numbers_and_numpy_arrays_keep_their_dtype():
    """A numpy scalar (np.sqrt(d_head), np.float32(lr)) meets a tensor as a Python number does, taking its dtype
    (PyTorch's rule); a numpy array, 0-d included, is a tensor of its own dtype and mixing precisions stays an
    error."""
    x = gc.input("x", (3,))
    d = gc.input("d", (3,), "float64")
    i = gc.input("i", (3,), "int32")
    assert (x / np.sqrt(8.0)).dtype == "float32" and (np.float64(2.0) * x).dtype == "float32"
    assert (d * np.float32(0.1)).dtype == "float64" and (x + np.int64(1)).dtype == "float32"
    assert (i + np.int64(2)).dtype == "int32" and (i * np.float64(0.5)).dtype == "float32"
    v = {"x": np.array([1.0, 2.0, 4.0], np.float32), "d": np.ones(3), "i": np.arange(3, dtype=np.int32)}
    np.testing.assert_allclose(gc.evaluate(x / np.sqrt(4.0), v), [0.5, 1.0, 2.0])
    np.testing.assert_array_equal(gc.compile(i + np.int64(2))(v), [2, 3, 4])
    with pytest.raises(gc.DTypeError, match="different dtypes"):
        x + np.array(2.0)  # a 0-d float64 array
    with pytest.raises(gc.DTypeError, match="different dtypes"):
        x * np.ones(3)



class OtherLibraryArray:
    """An array of another library (a jnp or torch array): not an ndarray, but __array__ and a dtype of its own."""

    def __init__(self, a):
        self._a, self.dtype, self.shape = a, a.dtype, a.shape

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_other_libraries_arrays_keep_their_dtype_as_numpy_arrays():
    """gc.constant(jnp.arange(3.0)) with JAX's x64 was a float32 constant (read as a Python list), and a float64
    jnp array met a float32 tensor as a number, silently rounded; they now keep their dtype, as numpy arrays."""
    x = gc.input("x", (3,))
    d = gc.input("d", (3,), "float64")
    c = gc.constant(OtherLibraryArray(np.array([1.0, 2.0, 1e-40])))
    assert c.dtype == "float64" and gc.constant(OtherLibraryArray(np.arange(3))).dtype == "int64"
    assert gc.evaluate(c, {})[2] == 1e-40
    assert (d * OtherLibraryArray(np.ones(3))).dtype == "float64"
    with pytest.raises(gc.DTypeError, match="different dtypes"):
        x * OtherLibraryArray(np.ones(3))


def test_dims_are_positive_integer_symbols():
    n = gc.dim("N")
    assert n.is_symbol and n.name == "N" and n / n == 1 and n - n == 0
    s = sympy.sympify(n)  # the compiler's index algebra sees a positive integer, equal to the dim
    assert s.is_integer and s.is_positive and s == n and hash(s) == hash(n)
    assert sympy.simplify(s / s) == 1


def test_a_symbolic_tensor_has_no_float_or_int_value():
    x = gc.input("x", ())
    for conv in (float, int):
        with pytest.raises(gc.GraphcError, match=rf"{conv.__name__}\(\) of a symbolic tensor \(mul: f32\[\]\).*"
                                                 r"gc\.evaluate"):
            conv(x * 2.0)
