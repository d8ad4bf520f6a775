"""Convolution and pooling (graphc.ops.conv): semantics against direct loops, padding rules ('same' as
TensorFlow/JAX at any stride), float64 finite-difference gradients, native code against the reference on 1-3
threads (bitwise the same across thread counts), second derivatives through a conv, and located errors."""

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc


def direct_conv(x, w, stride, pads, dilation):
    """Cross-correlation by loops over output cells: the definition, written independently of windows."""
    nsp = x.ndim - 2
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    k = w.shape[:nsp]
    out_sp = [(x.shape[1 + a] - dilation[a] * (k[a] - 1) - 1) // stride[a] + 1 for a in range(nsp)]
    out = np.zeros((x.shape[0], *out_sp, w.shape[-1]), x.dtype)
    for o in itertools.product(*map(range, out_sp)):
        for kk in itertools.product(*map(range, k)):
            pos = tuple(o[a] * stride[a] + kk[a] * dilation[a] for a in range(nsp))
            out[(slice(None), *o)] += x[(slice(None), *pos)] @ w[kk]
    return out


def direct_pool(x, window, stride, pads, kind):
    nsp = x.ndim - 2
    fill = -np.inf if kind == "max" else 0.0
    real = np.pad(np.ones(x.shape[1:1 + nsp]), pads)
    x = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    out_sp = [(x.shape[1 + a] - window[a]) // stride[a] + 1 for a in range(nsp)]
    out = np.zeros((x.shape[0], *out_sp, x.shape[-1]), x.dtype)
    for o in itertools.product(*map(range, out_sp)):
        sl = tuple(slice(o[a] * stride[a], o[a] * stride[a] + window[a]) for a in range(nsp))
        cells = x[(slice(None), *sl)]
        axes = tuple(range(1, 1 + nsp))
        out[(slice(None), *o)] = cells.max(axes) if kind == "max" else cells.sum(axes) / max(real[sl].sum(), 1)
    return out


def same_pads(sizes, k, s, d=None):
    d = d or [1] * len(sizes)
    out = []
    for n, kk, ss, dd in zip(sizes, k, s, d, strict=True):
        total = max((-(-n // ss) - 1) * ss + dd * (kk - 1) + 1 - n, 0)
        out.append((total // 2, total - total // 2))
    return out


rng = np.random.default_rng(0)

CONV2D_CASES = [  # (H, W, C, F, KH, KW, stride, padding, dilation)
    (7, 9, 3, 4, 3, 3, 1, "valid", 1),
    (7, 9, 3, 4, 3, 3, 2, "same", 1),  # odd sizes, stride 2: the odd pad cell at the bottom/right
    (8, 8, 2, 5, 5, 5, 1, "same", 1),
    (6, 5, 4, 3, 1, 1, 1, "valid", 1),  # 1x1
    (9, 7, 2, 3, 3, 2, (2, 1), ((1, 2), (0, 3)), 1),  # per-side pairs, per-axis strides
    (9, 9, 2, 3, 3, 3, 1, "same", 2),  # dilation
    (4, 4, 1, 2, 3, 3, 3, 3, 1),  # padding as large as the kernel
    (5, 6, 3, 2, 2, 3, 3, "same", (2, 1)),
    # 8+ input channels at stride 1: the input gradient is the transposed convolution (an implicit GEMM)
    (7, 6, 8, 5, 3, 3, 1, "same", 1),
    (5, 7, 9, 3, 3, 2, 1, ((3, 0), (1, 2)), 1),  # padding beyond the window on one side: the cotangent cropped
    (9, 8, 8, 4, 3, 3, 1, ((2, 2), (1, 1)), 2),  # dilated
    (6, 6, 16, 20, 5, 5, 1, "same", 1),
]


def _pads(padding, sizes, k, s, d):
    if padding == "valid":
        return [(0, 0)] * len(sizes)
    if padding == "same":
        return same_pads(sizes, k, s, d)
    if isinstance(padding, int):
        return [(padding, padding)] * len(sizes)
    return list(padding)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_matches_direct_loops_native_and_threads(case):
    h, w_, c, f, kh, kw, stride, padding, dilation = case
    x = gc.input("x", ("N", h, w_, c))
    w = gc.input("w", (kh, kw, c, f))
    y = gc.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    X = rng.standard_normal((3, h, w_, c)).astype(np.float32)
    W = rng.standard_normal((kh, kw, c, f)).astype(np.float32)
    pads = _pads(padding, (h, w_), (kh, kw), _pair(stride), _pair(dilation))
    want = direct_conv(X.astype(np.float64), W.astype(np.float64), _pair(stride), pads, _pair(dilation))
    ref = gc.evaluate(y, {"x": X, "w": W})
    assert ref.shape == want.shape == tuple(int(d) if i else 3 for i, d in enumerate(y.shape))
    np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-4)
    if padding == "same":  # TensorFlow/JAX: ceil(H / s)
        assert ref.shape[1:3] == tuple(-(-n // s) for n, s in zip((h, w_), _pair(stride), strict=True))
    loss = gc.sum(gc.tanh(y) * gc.constant(rng.standard_normal(ref.shape[1:]).astype(np.float32)))
    outs = [y, *gc.grad(loss, [x, w])]
    fn = gc.compile(outs)
    vals = {"x": X, "w": W}
    refs = gc.evaluate(outs, vals)
    one = fn(vals, threads=1)
    for g, r in zip(one, refs, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4)
    for t in (2, 3):
        for a, b in zip(one, fn(vals, threads=t), strict=True):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("stride, padding, dilation", [(1, "valid", 1), (2, "same", 1), (1, (2, 1), 2)])
def test_conv1d_matches_direct_loops(stride, padding, dilation):
    x = gc.input("x", ("N", 11, 3))
    w = gc.input("w", (3, 3, 4))
    y = gc.conv1d(x, w, stride, padding, dilation)
    X = rng.standard_normal((2, 11, 3)).astype(np.float32)
    W = rng.standard_normal((3, 3, 4)).astype(np.float32)
    pads = _pads(padding if not isinstance(padding, tuple) else [padding], (11,), (3,), (stride,), (dilation,))
    want = direct_conv(X.astype(np.float64), W.astype(np.float64), (stride,), pads, (dilation,))
    np.testing.assert_allclose(gc.evaluate(y, {"x": X, "w": W}), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gc.compile(y)({"x": X, "w": W}), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dilation", [1, 2])
def test_causal_conv1d_pads_before_only_and_sees_no_later_step(dilation):
    """Keras' padding="causal": dilation·(K-1) zeros before, none after, the output as long as the input; changing
    step 6 changes no output before it; compiled as the reference; 2-D refuses it by name."""
    x, w = gc.input("x", ("N", 11, 3)), gc.input("w", (3, 3, 4))
    y = gc.conv1d(x, w, padding="causal", dilation=dilation)
    X = rng.standard_normal((2, 11, 3)).astype(np.float32)
    W = rng.standard_normal((3, 3, 4)).astype(np.float32)
    want = direct_conv(X.astype(np.float64), W.astype(np.float64), (1,), [(2 * dilation, 0)], (dilation,))
    assert y.shape == (gc.dim("N"), 11, 4)
    np.testing.assert_allclose(gc.evaluate(y, {"x": X, "w": W}), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gc.compile(y)({"x": X, "w": W}), want, rtol=1e-4, atol=1e-4)
    X2 = X.copy()
    X2[:, 6] += 1.0
    moved = gc.evaluate(y, {"x": X2, "w": W}) != gc.evaluate(y, {"x": X, "w": W})
    assert not moved[:, :6].any() and moved[:, 6].any()
    with pytest.raises(gc.ShapeError, match=r"'causal' \(1-D only\)"):
        gc.conv2d(gc.input("im", ("N", 4, 4, 1)), gc.input("k", (3, 3, 1, 1)), padding="causal")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("window, stride, padding", [(2, None, "valid"), (3, 2, "same"), ((2, 3), (1, 2), 1),
                                                     (3, 1, "same")])
def test_pool2d_matches_direct_loops_and_compiles(kind, window, stride, padding):
    x = gc.input("x", ("N", 7, 8, 3))
    pool = gc.max_pool2d if kind == "max" else gc.avg_pool2d
    y = pool(x, window, stride, padding)
    X = rng.standard_normal((2, 7, 8, 3)).astype(np.float32)
    win = _pair(window)
    st = win if stride is None else _pair(stride)
    pads = _pads(padding, (7, 8), win, st, (1, 1))
    want = direct_pool(X.astype(np.float64), win, st, pads, kind)
    np.testing.assert_allclose(gc.evaluate(y, {"x": X}), want, rtol=1e-5, atol=1e-6)
    outs = [y, gc.grad(gc.sum(y * y), x)]
    fn = gc.compile(outs)
    refs = gc.evaluate(outs, {"x": X})
    one = fn({"x": X}, threads=1)
    for g, r in zip(one, refs, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    for a, b in zip(one, fn({"x": X}, threads=3), strict=True):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("pool, padding, ok", [(gc.max_pool2d, 1, True), (gc.max_pool2d, 2, False),
                                               (gc.max_pool2d, ((0, 0), (0, 3)), False), (gc.avg_pool2d, 2, True)])
def test_a_max_pool_window_of_padding_only_is_refused(pool, padding, ok):
    """Padding as large as the window is allowed, but a max-pool window that holds padding only came out -inf
    (NaN in any loss after it); average pooling of such a window is 0, as documented."""
    x = gc.input("x", ("N", 4, 4, 1))
    if ok:
        y = pool(x, 2, padding=padding)
        assert np.isfinite(gc.evaluate(y, {"x": np.ones((1, 4, 4, 1), np.float32)})).all()
        return
    with pytest.raises(gc.ShapeError, match=r"max_pool2d: padding \(\d, \d\) on axis \d \([HW]\) leaves output "
                                            r"position \d a window of padding only.*pad less than the window"):
        pool(x, 2, padding=padding)


def test_pool1d_and_global_average_pooling():
    x = gc.input("x", ("N", 9, 2))
    X = rng.standard_normal((2, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(gc.evaluate(gc.max_pool1d(x, 3), {"x": X}), X.reshape(2, 3, 3, 2).max(2))
    np.testing.assert_allclose(gc.evaluate(gc.avg_pool1d(x, 2, 2, "same"), {"x": X}),
                               direct_pool(X.astype(np.float64), (2,), (2,), [(0, 1)], "avg"), rtol=1e-6)
    img = gc.input("img", ("N", 4, 5, 3))
    gap = gc.mean(img, axis=(1, 2))  # global average pooling is a mean over the spatial axes
    assert gap.shape == (gc.dim("N"), 3)


def test_max_pool_routes_the_gradient_to_the_argmax_and_splits_ties():
    x = gc.input("x", (1, 2, 2, 1))
    y = gc.sum(gc.max_pool2d(x, 2))
    g = gc.evaluate(gc.grad(y, x), {"x": np.array([1.0, 3.0, 2.0, 0.0], np.float32).reshape(1, 2, 2, 1)})
    np.testing.assert_array_equal(g.ravel(), [0, 1, 0, 0])
    g = gc.evaluate(gc.grad(y, x), {"x": np.array([3.0, 3.0, 2.0, 0.0], np.float32).reshape(1, 2, 2, 1)})
    np.testing.assert_array_equal(g.ravel(), [0.5, 0.5, 0, 0])


def test_gradients_by_finite_differences_in_float64():
    x = gc.input("x", ("N", 5, 6, 2), "float64")
    w = gc.input("w", (3, 2, 2, 3), "float64")
    b = gc.input("b", (3,), "float64")
    h = gc.tanh(gc.conv2d(x, w, stride=(2, 1), padding="same", dilation=(1, 2)) + b)
    y = gc.sum(gc.avg_pool2d(gc.max_pool2d(h, 2, 1, "same"), 2, padding=1) ** 2)
    vals = {"x": rng.standard_normal((2, 5, 6, 2)), "w": rng.standard_normal((3, 2, 2, 3)),
            "b": rng.standard_normal(3)}
    gc.check_grad(y, [x, w, b], vals, rtol=1e-5, atol=1e-7)
    s = gc.input("s", ("N", 7, 2), "float64")
    k = gc.input("k", (3, 2, 2), "float64")
    z = gc.sum(gc.avg_pool1d(gc.conv1d(s, k, 2, "same") ** 2, 2, padding="same"))
    gc.check_grad(z, [s, k], {"s": rng.standard_normal((2, 7, 2)), "k": rng.standard_normal((3, 2, 2))})


def test_gradient_graph_prints_draws_and_a_hessian_vector_product_goes_through_a_conv(tmp_path):
    x = gc.input("x", ("N", 5, 5, 2), "float64")
    w = gc.input("w", (3, 3, 2, 2), "float64")
    v = gc.input("v", (3, 3, 2, 2), "float64")
    loss = gc.sum(gc.tanh(gc.conv2d(x, w, padding="same")) ** 2)
    (gw,) = gc.grad(loss, [w])
    text = gc.to_text(gw)
    assert "windows" in text and "pad" in text and "matmul" in text
    gc.draw(gw, tmp_path / "g.svg")
    assert (tmp_path / "g.svg").read_text().startswith("<")
    (hv,) = gc.grad(gc.sum(gw * v), [w])  # H v, a second reverse sweep through the conv's gradient graph
    vals = {"x": rng.standard_normal((2, 5, 5, 2)), "w": rng.standard_normal((3, 3, 2, 2)) * 0.3,
            "v": rng.standard_normal((3, 3, 2, 2))}
    eps = 1e-6
    num = (gc.evaluate(gw, {**vals, "w": vals["w"] + eps * vals["v"]}) -
           gc.evaluate(gw, {**vals, "w": vals["w"] - eps * vals["v"]})) / (2 * eps)
    np.testing.assert_allclose(gc.evaluate(hv, vals), num, rtol=1e-5, atol=1e-7)
    fn = gc.compile(hv)
    np.testing.assert_allclose(fn(vals), gc.evaluate(hv, vals), rtol=1e-10, atol=1e-10)


def test_input_gradient_is_a_transposed_convolution_with_no_col2im_and_differentiates_again():
    x = gc.input("x", ("N", 6, 5, 8), "float64")
    w = gc.input("w", (3, 3, 8, 8), "float64")
    v = gc.input("v", (3, 3, 8, 8), "float64")
    loss = gc.sum(gc.tanh(gc.conv2d(x, w, padding="same")) ** 2)
    gx, gw = gc.grad(loss, [x, w])
    ops = [n.op.name for n in gc.topo_order([gx])]
    assert ops.count("conv") == 2 and ops.count("windows") == 2  # the forward and the transposed convolution
    fn = gc.compile([gx, gw])
    # every product reads its im2col matrix as a view of a padded image: no buffer has the windows' rank
    gemms = [k for k in fn.program.kernels if type(k).__name__ == "GemmKernel"]
    assert len(gemms) == 3 and all(k.a_view is not None for k in gemms), fn.kernels
    assert max(len(b.shape) for b in fn.program.buffers) == 4, fn.kernels
    vals = {"x": rng.standard_normal((2, 6, 5, 8)), "w": rng.standard_normal((3, 3, 8, 8)) * 0.3,
            "v": rng.standard_normal((3, 3, 8, 8))}
    for got, want in zip(fn(vals), gc.evaluate([gx, gw], vals), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    (hv,) = gc.grad(gc.sum(gw * v), [w])  # the transposed convolution's own gradient rule
    eps = 1e-6
    num = (gc.evaluate(gw, {**vals, "w": vals["w"] + eps * vals["v"]}) -
           gc.evaluate(gw, {**vals, "w": vals["w"] - eps * vals["v"]})) / (2 * eps)
    np.testing.assert_allclose(gc.evaluate(hv, vals), num, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gc.compile(hv)(vals), gc.evaluate(hv, vals), rtol=1e-10, atol=1e-10)


def test_few_channels_input_gradient_is_spread_tap_major_and_differentiates_again():
    """Below TRANSPOSED_MIN_CHANNELS input channels, dx is, per image, the filter times the image's cotangent
    transposed (a batched product, tap-major: KH*KW*C rows), spread back tap by tap over (N, C, H, W) rows and
    moved to channels-last: the spread is a kernel of its own over rows (not gathers at every tap), and the whole
    is exact against finite differences and a second derivative."""
    from graphc.ops.conv import TRANSPOSED_MIN_CHANNELS

    c = TRANSPOSED_MIN_CHANNELS - 2
    x = gc.input("x", ("N", 7, 6, c), "float64")
    w = gc.input("w", (3, 2, c, 4), "float64")
    loss = gc.sum(gc.tanh(gc.conv2d(x, w, padding=((2, 1), (0, 1)), dilation=(2, 1))) ** 2)
    vals = {"x": rng.standard_normal((2, 7, 6, c)), "w": rng.standard_normal((3, 2, c, 4)) * 0.3}
    gc.check_grad(loss, [x, w], vals, rtol=1e-5, atol=1e-7)
    gx, gw = gc.grad(loss, [x, w])
    fn = gc.compile([gx, gw], threads=2)
    spread = [k for k in fn.program.kernels
              if type(k).__name__ == "LoopKernel" and str(k.domain) == f"(N, {c}, 7, 6)"]
    assert len(spread) == 1, fn.kernels  # the taps summed over rows of (N, C, H+pads, W+pads)
    per_image = [k for k in fn.program.kernels if type(k).__name__ == "GemmKernel" and k.batch]
    assert [str(k.batch) for k in per_image] == ["(N,)"], fn.kernels
    for got, want in zip(fn(vals), gc.evaluate([gx, gw], vals), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    u = gc.input("u", ("N", 7, 6, c), "float64")
    (hv,) = gc.grad(gc.sum(gx * u), [w])  # a second reverse sweep, through the spread
    vals["u"], v = rng.standard_normal((2, 7, 6, c)), rng.standard_normal((3, 2, c, 4))
    eps = 1e-6
    probe = gc.sum(gx * u)
    num = (gc.evaluate(probe, {**vals, "w": vals["w"] + eps * v}) -
           gc.evaluate(probe, {**vals, "w": vals["w"] - eps * v})) / (2 * eps)
    np.testing.assert_allclose(np.sum(gc.evaluate(hv, vals) * v), num, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gc.compile(hv)(vals), gc.evaluate(hv, vals), rtol=1e-10, atol=1e-10)


def test_kernels_show_what_a_conv_became_and_the_layer_fuses_bias_and_relu_into_the_gemm():
    x = gc.input("x", ("N", 8, 8, 3))
    layer = gc.nn.conv2d(x, 8, 3, name="c")
    fn = gc.compile(layer)
    kinds = [type(k).__name__ for k in fn.program.kernels]
    # the padded image (no im2col matrix of the batch), the GEMM reading it as a view, with its epilogue
    assert kinds == ["LoopKernel", "GemmKernel"], fn.kernels
    assert str(fn.program.kernels[0].domain) == "(N, 10, 10, 3)", fn.kernels
    assert not any(len(b.shape) > 4 for b in fn.program.buffers), fn.kernels
    assert "acc = view b" in fn.kernels and "relu(add(acc" in fn.kernels
    assert "windows" in [n.op.name for n in fn.program.kernels[1].nodes]
    X = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
    vals = {"x": X, **gc.nn.init_params(layer, seed=1)}
    vals["c.b"][:] = rng.standard_normal(8)
    np.testing.assert_allclose(fn(vals), gc.evaluate(layer, vals), rtol=1e-5, atol=1e-5)


WINOGRAD_CASES = [  # (H, W, C, F, padding, bias+relu, dtype): 3x3 stride-1 products the Winograd path takes
    (8, 20, 32, 32, "same", False, "float32"),  # 10 tiles a tile row: one block of 10 in a 12-row kernel
    (8, 8, 32, 64, "valid", True, "float32"),  # two column blocks; the input gradient pads by 2 all round (6x6
    # out: outputs under WINO_MIN_W = 6 wide are left to the packed product)
    (10, 28, 64, 96, "same", True, "float32"),  # 3 column blocks, 6 cotangent channel vectors; 14 tiles a
    # tile row: blocks of 7 in the 8-row kernel
    (6, 8, 16, 32, "same", True, "float64"),
    (4, 32, 32, 32, "same", False, "float32"),  # 16 tiles a tile row: on AVX2 blocks of 6, 6 and 4, the last in
    # the 4-row edge kernel (CIFAR's conv2); on AVX-512 two blocks of 8
]


def near_reference_and_bitwise_on_1_to_3_threads(fn, vals, want, tol):
    """fn's outputs on 1 thread (returned) within tol of the float64 reference `want` (relative to each array's
    largest value), and the same bits on 2 and 3 threads."""
    one = fn(vals, threads=1)
    for got, ref in zip(one, want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    for t in (2, 3):
        for a, b in zip(one, fn(vals, threads=t), strict=True):
            assert np.array_equal(a, b)
    return one


@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_3x3_stride_1_products_run_winograd_close_to_the_reference_and_bitwise_across_threads(case, monkeypatch):
    """The forward product and the input gradient's (a 3x3 stride-1 convolution of the padded cotangent) run as
    Winograd F(2x2, 3x3), the filter gradient as F(3x3, 2x2): not bitwise the direct products', within float
    rounding of the float64 loops, the same bits on 1-3 threads (the filter gradient's channel blocks differ
    between 1 and 2 threads: 12 + 12 + 8 rows, 8 + 8 | 8 + 8)."""
    from graphc.codegen import gemm

    h, w_, c, f, padding, act, dtype = case
    x = gc.input("x", ("N", h, w_, c), dtype)
    w = gc.input("w", (3, 3, c, f), dtype)
    bias = gc.input("b", (f,), dtype)
    y = gc.conv2d(x, w, padding=padding) + bias
    if act:
        y = gc.relu(y)
    npt = np.dtype(dtype)
    X = rng.standard_normal((3, h, w_, c)).astype(npt)
    W = (rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c)).astype(npt)
    vals = {"x": X, "w": W, "b": rng.standard_normal(f).astype(npt)}
    cot = gc.constant(rng.standard_normal(gc.evaluate(y, vals).shape[1:]).astype(npt))
    outs = [y, *gc.grad(gc.sum(y * cot), [x, w, bias])]
    fn = gc.compile(outs, cache=False)
    assert fn.kernels.count("gemm (Winograd F(2x2,3x3))") == 3, fn.kernels  # forward, input and filter gradients
    ir_text = fn.llvm_ir
    # the forward and the input gradient call a function shared per view (one, where both read alike), the
    # filter gradient its own
    assert len(re.findall(r'call void @"graphc\.gemm\.wino\.', ir_text)) == 2
    assert len(re.findall(r'call void @"k\d+_matmul\.gemm\.wino"', ir_text)) == 1
    want = gc.evaluate(outs, {k: v.astype(np.float64) for k, v in vals.items()})
    tol = 2e-5 if dtype == "float32" else 1e-11
    one = near_reference_and_bitwise_on_1_to_3_threads(fn, vals, want, tol)
    monkeypatch.setattr(gemm, "WINOGRAD", False)
    direct = gc.compile(outs, cache=False)
    assert ".wino" not in direct.llvm_ir and "Winograd" not in direct.kernels
    d = direct(vals, threads=1)
    assert not np.array_equal(d[0], one[0])  # other roundings: the forward really ran another algorithm
    for a, b in zip(d, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())



EXPANDED_CASES = [  # (H, W, KH, KW, F, padding, dtype): one-channel filter gradients the expanded path takes
    (28, 28, 5, 5, 6, "valid", "float32"),  # LeNet's first layer: 3 vectors of filter pattern, 9 vectors a row
    (9, 11, 3, 3, 4, "same", "float32"),  # a padded image; 44-float rows: the last vector of a row is partial
    (7, 12, 2, 5, 12, "valid", "float32"),  # 12 filters in 16 lanes; 2 rows of taps: a third thread has none
    (8, 8, 3, 3, 6, "same", "float64"),  # 8 lanes
]


@pytest.mark.parametrize("case", EXPANDED_CASES)
def test_one_channel_filter_gradients_run_expanded_close_to_the_reference_and_bitwise_across_threads(case,
                                                                                                     monkeypatch):
    """The filter gradient of a one-channel stride-1 convolution with fewer filters than lanes runs along (pixel,
    filter) vectors over the expanded image (`GemmKernel.algorithm == "expanded"`; the rows path, which takes
    those with at most 8 float32 filters first, switched off), fused SGD update included: within float rounding
    of the float64 loops, the same bits on 1-3 threads (threads own rows of taps), close to the packed product's."""
    from graphc.codegen import gemm

    monkeypatch.setattr(gemm, "ROWS", False)

    h, w_, kh, kw, f, padding, dtype = case
    npt = np.dtype(dtype)
    x = gc.input("x", ("N", h, w_, 1), dtype)
    w = gc.input("w", (kh, kw, 1, f), dtype)
    y = gc.relu(gc.conv2d(x, w, padding=padding))
    X = rng.standard_normal((5, h, w_, 1)).astype(npt)
    vals = {"x": X, "w": (rng.standard_normal((kh, kw, 1, f)) / np.sqrt(kh * kw)).astype(npt)}
    cot = gc.constant(rng.standard_normal(gc.evaluate(y, vals).shape[1:]).astype(npt))
    (dw,) = gc.grad(gc.sum(y * cot), [w])
    outs = [dw, w - 0.1 * dw]  # the product, and the update an epilogue fuses into it
    fn = gc.compile(outs, cache=False)
    assert fn.kernels.count("(expanded image: (pixel, filter) vectors)") == 1, fn.kernels
    want = gc.evaluate(outs, {k: v.astype(np.float64) for k, v in vals.items()})
    tol = 2e-5 if dtype == "float32" else 1e-11
    one = near_reference_and_bitwise_on_1_to_3_threads(fn, vals, want, tol)
    monkeypatch.setattr(gemm, "EXPANDED", False)
    packed = gc.compile(outs, cache=False)
    assert "expanded" not in packed.kernels
    p = packed(vals, threads=1)
    # (the kernel list above shows the expanded path ran; its bits may equal the packed product's: on AVX2's 8 lanes
    # both sum each output's pixels in the same order for some of these shapes)
    for a, b in zip(p, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_expanded_is_taken_only_by_the_filter_gradients_it_computes():
    from graphc.codegen.gemm import EXPANDED_MAX_E_BYTES, expanded_applies, expanded_geometry

    def dw(h, w, kh, kw, px=1, kx=1):  # the filter gradient's view of an (h + kh - 1) x (w + kw - 1) image
        rs = w + kw - 1
        return 0, ((kh, rs), (kw, kx)), ((0, (h + kh - 1) * rs), (h, rs), (w, px))

    assert expanded_geometry(dw(24, 24, 5, 5), 6, None, 25, False, False, 16) == (5, 5, 24, 24, 28, 784, 3)
    assert expanded_applies(dw(24, 24, 5, 5), 6, None, False, "float32", M=25)
    assert not expanded_applies(dw(24, 24, 5, 5), 16, None, False, "float32", M=25)  # a vector of filters
    assert not expanded_applies(dw(24, 24, 5, 5), 5, None, False, "float32", M=25)  # a pattern of 5 vectors
    assert not expanded_applies(dw(24, 24, 5, 5, px=2), 6, None, False, "float32", M=25)  # 2 channels / stride 2
    assert not expanded_applies(dw(24, 24, 5, 5, kx=2), 6, None, False, "float32", M=25)  # dilation
    assert not expanded_applies(dw(24, 24, 5, 5), 6, None, True, "float32", M=25)  # B transposed
    assert not expanded_geometry(dw(24, 24, 5, 5), 6, None, 25, False, True, 16)  # accumulating
    off, taps, pixels = dw(24, 24, 5, 5)
    assert not expanded_applies((off, pixels, taps), 6, 25, False, "float32")  # the forward product
    big = int((EXPANDED_MAX_E_BYTES / 4 / 6) ** 0.5) + 8  # an image whose expanded rows leave L1
    assert not expanded_applies(dw(big, big, 3, 3), 6, None, False, "float32", M=9)
    assert not expanded_applies(None, 6, 25, False, "float32")

ROWS_CASES = [  # (H, W, KH, KW, F, padding): one-channel forwards the rows path takes
    (28, 28, 5, 5, 6, "valid"),  # LeNet's first layer: 2 rows a pass, 24-pixel rows (a full and a partial vector)
    (9, 11, 3, 3, 4, "same"),  # a padded image; 9 output rows: the last pass's second row is not stored
    (6, 40, 2, 5, 8, "valid"),  # 8 filters, 36-pixel rows: 3 vectors, 24 accumulators, one row a pass
    (6, 6, 3, 3, 1, "valid"),  # one filter; 4-pixel rows: two rows share one vector
    (8, 24, 3, 5, 8, "valid"),  # 20-pixel rows: a full vector each, the two rows' last 4 pixels share one
]


@pytest.mark.parametrize("case", ROWS_CASES)
def test_one_channel_forwards_run_along_rows_close_to_the_reference_and_bitwise_across_threads(case, monkeypatch):
    """The forward of a one-channel stride-1 convolution with at most 8 filters runs along output rows
    (`GemmKernel.algorithm == "rows"`), its bias and ReLU fused: within float rounding of the float64 loops, the
    same bits on 1-3 threads (threads own whole output rows) and the packed product's bits (each output the same
    fmuladd chain over the taps in order); on AVX2 (16 registers) the accumulators of LeNet's rows do not fit, and
    the packed product runs."""
    from graphc.codegen import gemm

    h, w_, kh, kw, f, padding = case
    x = gc.input("x", ("N", h, w_, 1))
    y = gc.nn.conv2d(x, f, (kh, kw), padding=padding, name="c")  # relu(conv + b), fused into the product
    vals = {"x": rng.standard_normal((5, h, w_, 1)).astype(np.float32),
            "c.W": (rng.standard_normal((kh, kw, 1, f)) / np.sqrt(kh * kw)).astype(np.float32),
            "c.b": rng.standard_normal(f).astype(np.float32)}
    fn = gc.compile([y], cache=False)
    assert fn.kernels.count("(along output rows, one channel)") == 1, fn.kernels
    assert "relu(add(acc" in fn.kernels or f == 1  # the epilogue (a one-column product's stays a loop)
    (want,) = gc.evaluate([y], {k: v.astype(np.float64) for k, v in vals.items()})
    (one,) = near_reference_and_bitwise_on_1_to_3_threads(fn, vals, [want], 2e-5)
    monkeypatch.setattr(gemm, "ROWS", False)
    packed = gc.compile([y], cache=False)
    assert "along output rows" not in packed.kernels
    (p,) = packed(vals, threads=1)
    assert np.array_equal(p, one)  # the same fmuladd chain over the taps, in order, from zero
    monkeypatch.setattr(gemm, "ROWS", True)
    (avx2,) = gc.compile([y], target="x86-64-v3", cache=False)(vals, threads=2)
    np.testing.assert_allclose(avx2, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", ROWS_CASES)
def test_one_channel_filter_gradients_run_along_rows_close_to_the_reference_and_bitwise_across_threads(case,
                                                                                                      monkeypatch):
    """The filter gradient of the same convolutions runs along output rows too: per image the cotangent's rows
    become per-filter planes, and each (tap, filter) sums image rows times planes in full vectors (two rows' last
    half vectors paired). Fused SGD update included: within float rounding of the float64 loops, the same bits on
    1-3 threads (threads own runs of taps), close to the expanded path's (another order of the sum)."""
    from graphc.codegen import gemm

    h, w_, kh, kw, f, padding = case
    x = gc.input("x", ("N", h, w_, 1))
    w = gc.input("w", (kh, kw, 1, f))
    y = gc.relu(gc.conv2d(x, w, padding=padding))
    vals = {"x": rng.standard_normal((5, h, w_, 1)).astype(np.float32),
            "w": (rng.standard_normal((kh, kw, 1, f)) / np.sqrt(kh * kw)).astype(np.float32)}
    cot = gc.constant(rng.standard_normal(gc.evaluate(y, vals).shape[1:]).astype(np.float32))
    (dw,) = gc.grad(gc.sum(y * cot), [w])
    outs = [dw, w - 0.1 * dw]  # the product, and the update an epilogue fuses into it
    fn = gc.compile(outs, cache=False)
    assert [k.algorithm for k in fn.program.kernels if hasattr(k, "algorithm") and k.m == kh * kw] == ["rows"]
    want = gc.evaluate(outs, {k: v.astype(np.float64) for k, v in vals.items()})
    one = near_reference_and_bitwise_on_1_to_3_threads(fn, vals, want, 2e-5)
    monkeypatch.setattr(gemm, "ROWS", False)
    other = gc.compile(outs, cache=False)(vals, threads=1)
    # (the rows path ran: the algorithm list above; its bits may equal the other path's where their sums' orders
    # coincide, as on AVX2's 8 lanes for some shapes)
    for a, b in zip(other, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())


def test_rows_is_taken_only_by_the_forwards_it_computes():
    from graphc.codegen.gemm import rows_applies, rows_dw_geometry, rows_geometry

    def fwd(h, w, kh, kw, px=1, kx=1):  # the forward's view of an (h + kh - 1) x (w + kw - 1) image
        rs = w + kw - 1
        return 0, ((0, (h + kh - 1) * rs), (h, rs), (w, px)), ((kh, rs), (kw, kx))

    assert rows_geometry(fwd(24, 24, 5, 5), 6, 25, None, False, False, 16) == (5, 5, 24, 24, 28, 784, 2)
    assert rows_geometry(fwd(24, 36, 5, 5), 8, 25, None, False, False, 16)[-1] == 1  # 24 accumulators a row
    assert rows_geometry(fwd(24, 24, 5, 5), 6, 25, None, False, False, 8) is None  # AVX2: 18 > 10 registers
    assert rows_applies(fwd(24, 24, 5, 5), 6, 25, False, "float32")
    assert not rows_applies(fwd(24, 24, 5, 5), 6, 25, False, "float64")
    assert not rows_applies(fwd(24, 24, 5, 5), 9, 25, False, "float32")  # more filters than half a vector
    assert not rows_applies(fwd(24, 80, 5, 5), 6, 25, False, "float32")  # 30 accumulators a row
    assert not rows_applies(fwd(24, 24, 5, 5, px=2), 6, 25, False, "float32")  # 2 channels / stride 2
    assert not rows_applies(fwd(24, 24, 5, 5, kx=2), 6, 25, False, "float32")  # dilation
    assert not rows_applies(fwd(24, 24, 5, 5), 6, 25, True, "float32")  # B transposed
    assert rows_geometry(fwd(24, 24, 5, 5), 6, 25, None, False, True, 16) is None  # accumulating
    off, pixels, taps = fwd(24, 24, 5, 5)
    assert rows_geometry((off, taps, pixels), 6, None, 25, False, False, 16) is None  # the filter gradient's view
    assert not rows_applies(None, 6, 25, False, "float32")
    # the filter gradient: taps x pixels, the forward's view transposed
    assert rows_dw_geometry((off, taps, pixels), 6, None, 25, False, False, 16) == (5, 5, 24, 24, 28, 784, 3)
    assert rows_dw_geometry((off, taps, pixels), 8, None, 25, False, False, 16)[-1] == 2  # 18 accumulators
    assert rows_applies((off, taps, pixels), 6, None, False, "float32", M=25)
    assert rows_dw_geometry((off, taps, pixels), 6, None, 25, False, False, 8) is None  # AVX2
    assert rows_dw_geometry((off, pixels, taps), 6, 25, None, False, False, 16) is None  # the forward's view
    assert rows_dw_geometry((off, taps, pixels), 6, None, 25, False, True, 16) is None  # accumulating
    assert rows_dw_geometry((off, taps, pixels), 6, None, 25, True, False, 16) is None  # B transposed
    assert not rows_applies((off, taps, pixels), 9, None, False, "float32", M=25)
    assert not rows_applies((off, taps, pixels), 6, None, False, "float64", M=25)


@pytest.mark.parametrize("target", ["x86-64-v3", "x86-64-v2"])
def test_winograd_on_narrower_vectors_portable_targets(target):
    """AVX2 and SSE configs (6-row tiles and a 4-row edge kernel, 8 or 4 lanes) run the same Winograd
    products."""
    x = gc.input("x", ("N", 6, 10, 32))
    w = gc.input("w", (3, 3, 32, 64))
    bias = gc.input("b", (64,))
    y = gc.relu(gc.conv2d(x, w, padding="same") + bias)
    cot = gc.constant(rng.standard_normal((6, 10, 64)).astype(np.float32))
    outs = [y, *gc.grad(gc.sum(y * cot), [x, w, bias])]
    fn = gc.compile(outs, target=target, cache=False)
    assert fn.kernels.count("Winograd") == 3
    vals = {"x": rng.standard_normal((3, 6, 10, 32)).astype(np.float32),
            "w": (rng.standard_normal((3, 3, 32, 64)) / 17).astype(np.float32),
            "b": rng.standard_normal(64).astype(np.float32)}
    want = gc.evaluate(outs, {k: v.astype(np.float64) for k, v in vals.items()})
    one, three = fn(vals, threads=1), fn(vals, threads=3)
    for got, ref, other in zip(one, want, three, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
        assert np.array_equal(got, other)


def test_winograd_is_taken_only_by_the_products_it_computes():
    from graphc.codegen.gemm import GemmConfig, winograd_applies, winograd_dw_geometry, winograd_geometry

    cfg, L = GemmConfig(mr=12, nr=32, kc=256, mc=240, nc=1024), 16
    view = lambda h, w, c, ks=None, run=None, rs=None: (  # noqa: E731 - a padded image's 3x3 window view
        0, ((0, (h + 2) * (rs or (w + 2) * c)), (h, rs or (w + 2) * c), (w, c)),
        ((3, ks or rs or (w + 2) * c), (run or 3 * c, 1)))
    assert winograd_geometry(view(8, 8, 32), 32, 288, False, False, cfg, L) == (32, 8, 8, 320, 3200)
    assert winograd_geometry(view(7, 8, 32), 32, 288, False, False, cfg, L) is None  # odd H
    assert winograd_geometry(view(8, 8, 24), 32, 216, False, False, cfg, L) is None  # C not whole vectors
    assert winograd_geometry(view(8, 8, 32), 40, 288, False, False, cfg, L) is None  # N not whole tiles
    assert winograd_geometry(view(8, 8, 32), None, 288, False, False, cfg, L) is None  # N at run time
    assert winograd_geometry(view(8, 8, 32), 32, 288, True, False, cfg, L) is None  # B transposed
    assert winograd_geometry(view(8, 8, 32), 32, 288, False, True, cfg, L) is None  # accumulating
    assert winograd_geometry(view(8, 8, 32, ks=640), 32, 288, False, False, cfg, L) is None  # dilated rows
    assert winograd_geometry(view(8, 8, 32, run=64), 32, 288, False, False, cfg, L) is None  # stride 2
    assert winograd_geometry(view(8, 8, 512), 32, 9 * 512, False, False, cfg, L) is None  # over one K block
    # a filter gradient: the view transposed (rows: the 3 window rows x 3C channels; K: the pixels)
    dw = lambda h, w, c: (0, view(h, w, c)[2], view(h, w, c)[1])  # noqa: E731
    assert winograd_dw_geometry(dw(8, 8, 32), 32, 288, False, False, cfg, L) == (32, 8, 8, 320, 3200)
    assert winograd_dw_geometry(dw(8, 7, 32), 32, 288, False, False, cfg, L) is None  # odd W
    assert winograd_dw_geometry(dw(8, 8, 32), 48, 288, False, False, cfg, L) is None  # filters not whole tiles
    assert winograd_dw_geometry(view(8, 8, 32), 32, 288, False, False, cfg, L) is None  # a forward view
    assert winograd_geometry(dw(8, 8, 32), 32, 288, False, False, cfg, L) is None
    assert winograd_applies(dw(8, 8, 32), 32, None, False, "float32", M=288)
    # the scheduler's choice holds for the widest vectors: 16 channels and 32 filters at a time in float32
    assert winograd_applies(view(8, 8, 16), 32, 144, False, "float32")
    assert not winograd_applies(view(8, 8, 8), 32, 72, False, "float32")
    assert winograd_applies(view(8, 8, 8), 16, 72, False, "float64")
    assert not winograd_applies(view(8, 8, 16), 16, 144, False, "float32")
    assert not winograd_applies(None, 32, 144, False, "float32")


def test_bad_input_names_both_shapes_and_the_line():
    x = gc.input("x", ("N", 8, 8, 3))
    with pytest.raises(gc.ShapeError, match=r"conv2d: .*expects 4 input channels.*\[N,8,8,3\].*test_conv\.py:\d+"):
        gc.conv2d(x, gc.input("w", (3, 3, 4, 2)))
    with pytest.raises(gc.ShapeError, match=r"window 9 on axis 1 \(H\) is larger than the padded input "
                                            r"\(8 \+ 0 padding.*\[N,8,8,3\] and filter \[9,3,3,2\].*test_conv\.py"):
        gc.conv2d(x, gc.input("w2", (9, 3, 3, 2)))
    with pytest.raises(gc.ShapeError, match=r"dilated to 9.*test_conv\.py"):
        gc.conv2d(x, gc.input("w3", (3, 3, 3, 2)), dilation=4)
    for bad in (dict(stride=0), dict(stride=(1, -1)), dict(dilation=0), dict(stride=1.5)):
        with pytest.raises(gc.ShapeError, match=r"(stride|dilation) must be .*test_conv\.py"):
            gc.conv2d(x, gc.input("w4", (3, 3, 3, 2)), **bad)
    with pytest.raises(gc.ShapeError, match=r"4-D \(N, H, W, C\).*\[N,8,8\].*expand_dims.*test_conv\.py"):
        gc.conv2d(gc.input("g", ("N", 8, 8)), gc.input("w5", (3, 3, 1, 2)))
    with pytest.raises(gc.ShapeError, match=r"padding must be 'valid', 'same'.*'full'"):
        gc.conv2d(x, gc.input("w6", (3, 3, 3, 2)), padding="full")
    with pytest.raises(gc.ShapeError, match=r"padding must be .*pairs.*\(1, 2, 3\)"):
        gc.conv2d(x, gc.input("w7", (3, 3, 3, 2)), padding=(1, 2, 3))
    with pytest.raises(gc.ShapeError, match=r"max_pool2d: the window 9 .*\[N,8,8,3\].*test_conv\.py"):
        gc.max_pool2d(x, 9)
    with pytest.raises(gc.ShapeError, match=r"max_pool2d: window must be >= 1"):
        gc.max_pool2d(x, 0)
    with pytest.raises(gc.ShapeError, match=r"avg_pool2d: stride must be >= 1"):
        gc.avg_pool2d(x, 2, stride=0)
    with pytest.raises(gc.ShapeError, match=r"conv1d: .*3-D \(N, T, C\)"):
        gc.conv1d(x, gc.input("w8", (3, 3, 2)))
    with pytest.raises(gc.ShapeError, match=r"axis 1 \(H\) of \[N,H,8,3\] is symbolic \(H\); only the batch dim "
                                            r"\(axis 0\) may be symbolic \(inputs"):
        gc.conv2d(gc.input("s", ("N", "H", 8, 3)), gc.input("w9", (3, 3, 3, 2)))
    # one numbering in every message: tensor axes, named (the pooling ones counted spatial axes from 0)
    with pytest.raises(gc.ShapeError, match=r"max_pool2d: the window 7 on axis 2 \(W\) is larger"):
        gc.max_pool2d(gc.input("p", ("N", 8, 6, 3)), (2, 7))
    with pytest.raises(gc.ShapeError, match=r"conv2d: the filter \[0,3,3,4\] \(KH, KW, C, F\) has an empty window"):
        gc.conv2d(x, gc.input("w10", (0, 3, 3, 4)))
    with pytest.raises(gc.ShapeError, match=r"conv1d: the filter \[0,3,4\] \(K, C, F\) has an empty window"):
        gc.conv1d(gc.input("q", ("N", 8, 3)), gc.input("w11", (0, 3, 4)))


def test_a_time_major_sequence_is_told_to_transpose_not_reshape():
    """A model's `sequences` come time-major (T, N, F). The hint for rows said to reshape them to (N, T, C): a
    model that did trained on mixed examples (test accuracy 0.06 against 0.98 transposed, with no error)."""
    with pytest.raises(gc.ShapeError, match=r"max_pool1d: .*time-major, \(T, N, F\); "
                                            r"gc.transpose\(sequences, \(1, 0, 2\)\).*a reshape would mix"):
        gc.max_pool1d(gc.input("rows", ("N", 64)), 2)
    seq = gc.input("sequences", (8, "N", 8))
    with pytest.raises(gc.ShapeError, match=r"conv1d: axis 1 \(T\) of \[8,N,8\] is symbolic.*time-major.*"
                                            r"gc.transpose\(x, \(1, 0, 2\)\)"):
        gc.conv1d(seq, gc.input("k", (3, 8, 4)))
    assert gc.conv1d(gc.transpose(seq, (1, 0, 2)), gc.input("k", (3, 8, 4))).shape == (gc.dim("N"), 6, 4)


def test_a_padded_average_pool_divides_by_exact_counts_built_per_axis():
    """The count of real cells per window is a product of per-axis counts: exact in a float64 evaluation of a
    float32 graph (a table of float32 reciprocals was 1e-8 off), and small (a 1024x1024 'same' pool built an
    (OH, OW) table cell by cell in Python: 10 s)."""
    x = gc.input("x", ("N", 5, 4, 2))
    y = gc.avg_pool2d(x, 3, 1, "same")
    X = rng.standard_normal((2, 5, 4, 2))
    np.testing.assert_allclose(gc.evaluate(y, {"x": X}), direct_pool(X, (3, 3), (1, 1), [(1, 1), (1, 1)], "avg"),
                               rtol=1e-15, atol=1e-16)
    big = gc.avg_pool2d(gc.input("big", ("N", 1024, 1024, 1)), 3, 1, "same")
    consts = [n for n in gc.topo_order(big) if n.op.name == "constant"]
    assert max(int(np.prod(n.shape)) for n in consts) <= 1024
    y1 = gc.avg_pool1d(gc.input("s", ("N", 7, 1)), 4, 2, (1, 2))
    S = rng.standard_normal((1, 7, 1))
    np.testing.assert_allclose(gc.evaluate(y1, {"s": S}), direct_pool(S, (4,), (2,), [(1, 2)], "avg"), rtol=1e-15)
    # the layer wrapper takes the same (before, after) pair of numpy ints as the op
    pad = (np.int64(1), np.int64(2))
    assert gc.nn.conv1d(gc.input("t", ("N", 10, 3)), 4, 3, padding=pad, name="c").shape == (gc.dim("N"), 11, 4)


def _composition(x, w, stride, pads, dilation):
    """The strided convolution as the bare composition pad -> windows -> reshape -> matmul, without the Conv op:
    its gradient is the windows op's (a guarded sum over the taps), an oracle written independently of the
    phases."""
    from graphc.ops.linalg import matmul
    from graphc.ops.movement import _pad, reshape, windows

    nsp = x.ndim - 2
    xp = _pad(x, [0, *(p[0] for p in pads), 0], [0, *(p[1] for p in pads), 0], [0] * x.ndim, 0)
    win = windows(xp, w.shape[:nsp], stride, dilation)
    taps = int(np.prod(w.shape[:nsp])) * w.shape[nsp]
    rows = win.shape[0]
    for d in win.shape[1:1 + nsp]:
        rows = rows * d
    y = matmul(reshape(win, (rows, taps)), reshape(w, (taps, w.shape[-1])))
    return reshape(y, (*win.shape[:1 + nsp], w.shape[-1]))


STRIDED_CASES = [  # (sizes, C, F, kernel, stride, padding, dilation): C < 8 the spread, 8+ the transposed conv
    ((11,), 3, 4, (3,), (2,), [(1, 1)], (1,)),
    ((12,), 8, 3, (5,), (3,), [(2, 0)], (1,)),  # kernel not a multiple of the stride
    ((13,), 8, 2, (2,), (4,), [(0, 3)], (1,)),  # kernel < stride: phases no tap reaches are zero
    ((10,), 2, 3, (3,), (2,), [(3, 2)], (2,)),  # dilation 2, stride 2: only even phases of the padded grid
    ((9,), 9, 3, (4,), (3,), [(4, 4)], (2,)),  # padding as large as the kernel
    ((1,), 8, 2, (1,), (2,), [(1, 1)], (1,)),  # the one input cell lies between the windows: dx is zero
    ((9, 8), 3, 5, (7, 7), (2, 2), [(3, 3), (3, 3)], (1, 1)),  # a stem
    ((9, 10), 8, 4, (3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1)),
    ((11, 9), 8, 3, (5, 3), (2, 3), [(2, 2), (0, 1)], (1, 2)),
    ((12, 12), 3, 4, (11, 11), (4, 4), [(2, 2), (2, 2)], (1, 1)),  # AlexNet's first layer, small
    ((7, 9), 16, 4, (1, 1), (2, 2), [(0, 0), (0, 0)], (1, 1)),  # 1x1 stride 2 (a ResNet shortcut)
    ((8, 7), 2, 3, (2, 3), (3, 2), [(1, 0), (2, 2)], (2, 1)),
    ((6, 6), 8, 2, (4, 4), (4, 4), [(0, 0), (0, 0)], (1, 1)),  # windows that tile: patchify
]


@pytest.mark.parametrize("case", STRIDED_CASES)
def test_strided_convolutions_compile_to_the_reference_and_their_gradients_are_the_compositions(case):
    """A strided convolution's product carries the Conv op (its gradient is the transposed convolution per phase,
    or the spread per phase below 8 channels): the forward and both gradients, compiled, match gc.evaluate; the
    evaluated gradients match the bare composition's (the windows op's gradient, an independent derivation) and
    a direct loop's forward; in float64 they match finite differences."""
    sizes, c, f, k, s, pads, dil = case
    nsp = len(sizes)
    conv = gc.conv2d if nsp == 2 else gc.conv1d
    x = gc.input("x", ("N", *sizes, c))
    w = gc.input("w", (*k, c, f))
    y = conv(x, w, stride=s, padding=pads if nsp == 2 else pads[0], dilation=dil)
    ops = [n for n in gc.topo_order([y]) if n.op.name == "conv"]
    assert len(ops) == 1 and ops[0].attrs["strides"] == s
    X = rng.standard_normal((2, *sizes, c)).astype(np.float32)
    W = rng.standard_normal((*k, c, f)).astype(np.float32)
    vals = {"x": X, "w": W}
    want = direct_conv(X.astype(np.float64), W.astype(np.float64), s, pads, dil)
    np.testing.assert_allclose(gc.evaluate(y, vals), want, rtol=1e-4, atol=1e-4)
    r = gc.constant(rng.standard_normal(want.shape[1:]).astype(np.float32))
    outs = [y, *gc.grad(gc.sum(gc.tanh(y) * r), [x, w])]
    ys = _composition(x, w, s, pads, dil)
    refs = gc.evaluate(outs, vals)
    for got, comp in zip(refs[1:], gc.evaluate(gc.grad(gc.sum(gc.tanh(ys) * r), [x, w]), vals), strict=True):
        np.testing.assert_allclose(got, comp, rtol=1e-4, atol=1e-4)
    fn = gc.compile(outs)
    for got, ref in zip(fn(vals, threads=1), refs, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4)
    x64, w64 = gc.input("x", ("N", *sizes, c), "float64"), gc.input("w", (*k, c, f), "float64")
    y64 = conv(x64, w64, stride=s, padding=pads if nsp == 2 else pads[0], dilation=dil)
    loss = gc.sum(gc.tanh(y64) * gc.constant(rng.standard_normal(want.shape[1:])))
    gc.check_grad(loss, [x64, w64], {"x": rng.standard_normal((2, *sizes, c)),
                                     "w": rng.standard_normal((*k, c, f)) * 0.3}, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("c", [3, 8])
def test_a_strided_convolutions_gradient_differentiates_again(c):
    """Second derivatives through the phases: a Hessian-vector product of the filter (the filter gradient's own
    gradient) and the gradient of <dx, u> with respect to the filter (through the phase convolutions or the
    spread) match finite differences of the first derivatives, evaluated and compiled."""
    x = gc.input("x", ("N", 9, 8, c), "float64")
    w = gc.input("w", (5, 3, c, 3), "float64")
    v = gc.input("v", (5, 3, c, 3), "float64")
    u = gc.input("u", ("N", 9, 8, c), "float64")
    loss = gc.sum(gc.tanh(gc.conv2d(x, w, stride=(2, 3), padding="same", dilation=(1, 2))) ** 2)
    gx, gw = gc.grad(loss, [x, w])
    (hv,) = gc.grad(gc.sum(gw * v), [w])
    (hu,) = gc.grad(gc.sum(gx * u), [w])
    vals = {"x": rng.standard_normal((2, 9, 8, c)), "w": rng.standard_normal((5, 3, c, 3)) * 0.3,
            "v": rng.standard_normal((5, 3, c, 3)), "u": rng.standard_normal((2, 9, 8, c))}
    eps = 1e-6
    for first, second in ((gc.sum(gw * v), hv), (gc.sum(gx * u), hu)):
        num = (gc.evaluate(first, {**vals, "w": vals["w"] + eps * vals["v"]}) -
               gc.evaluate(first, {**vals, "w": vals["w"] - eps * vals["v"]})) / (2 * eps)
        got = gc.evaluate(second, vals)
        np.testing.assert_allclose(np.sum(got * vals["v"]), num, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gc.compile(second)(vals), got, rtol=1e-10, atol=1e-10)


def test_a_strided_input_gradient_is_phase_convolutions_interleaved_once():
    """At stride 2 in 2-D the input gradient is four stride-1 convolutions of the cotangent (the phases, sub-filters
    2x2, 2x1, 1x2 and 1x1 of a 3x3 filter: 9 taps in all, no product with interior zeros), each product reading one
    shared padded cotangent as a view, and one kernel interleaving them: no windows gradient (a guarded sum over
    the taps with a remainder in every term) and no product spreading the im2col matrix's cotangent."""
    x = gc.input("x", ("N", 10, 9, 16))
    w = gc.input("w", (3, 3, 16, 32))
    loss = gc.sum(gc.conv2d(x, w, stride=2, padding=1) ** 2)
    gx, gw = gc.grad(loss, [x, w])
    convs = [n for n in gc.topo_order([gx]) if n.op.name == "conv"]
    assert sorted(n.inputs[2].shape[:2] for n in convs) == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)]
    fn = gc.compile([loss, gx, gw], threads=1)
    gemms = [k for k in fn.program.kernels if type(k).__name__ == "GemmKernel"]
    assert len(gemms) == 6 and all(k.a_view is not None for k in gemms), fn.kernels  # fwd, 4 phases, dW
    assert "Mod(" not in fn.kernels.split("concat")[0], fn.kernels  # no guarded remainder before the interleave
    vals = {"x": rng.standard_normal((2, 10, 9, 16)).astype(np.float32),
            "w": rng.standard_normal((3, 3, 16, 32)).astype(np.float32) * 0.1}
    for got, want in zip(fn(vals), gc.evaluate([loss, gx, gw], vals), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)


def test_a_first_layer_computes_no_input_gradient():
    """A stem's input is data: the filter gradient alone compiles to the forward product and the filter gradient's
    (no phase products, no spread, no interleave)."""
    x = gc.input("x", ("N", 32, 32, 3))
    w = gc.input("w", (7, 7, 3, 16))
    loss = gc.sum(gc.relu(gc.conv2d(x, w, stride=2, padding=3)) ** 2)
    (gw,) = gc.grad(loss, [w])
    fn = gc.compile([loss, gw], threads=1)
    gemms = [k for k in fn.program.kernels if type(k).__name__ == "GemmKernel"]
    assert len(gemms) == 2 and not any(k.batch for k in gemms), fn.kernels
    assert "concat" not in fn.kernels and "transpose" not in fn.kernels, fn.kernels


# grouped convolutions (groups=, PyTorch's): (nsp, C, F, groups, kernel, stride, padding, dilation, dtype). The
# forms: a few channels a group are per-group Conv nodes; more than GROUPS_AS_CONVS groups one batched product;
# one channel a group (depthwise, F = m*C) the tap sum of windows times the filter, m > 1 on repeated channels
GROUPED_CASES = [
    (2, 4, 6, 2, 3, 1, "same", 1, "float32"),  # per-group convolutions
    (2, 6, 9, 3, (3, 2), 2, ((1, 0), (2, 1)), 1, "float64"),
    (2, 16, 8, 2, 3, 1, 1, 1, "float32"),  # 8 channels a group: each group's input gradient transposed
    (2, 18, 9, 9, 3, (2, 1), "same", (1, 2), "float32"),  # 9 groups of 2: the batched product
    (2, 5, 5, 5, 3, 1, "same", 1, "float32"),  # depthwise
    (2, 32, 32, 32, 3, 2, "same", 1, "float32"),  # depthwise, two vectors of channels, stride 2
    (2, 3, 6, 3, (2, 3), 1, 2, 2, "float64"),  # depthwise, channel multiplier 2, dilated
    (1, 4, 8, 2, 3, 2, "same", 1, "float32"),
    (1, 6, 12, 6, 3, 1, "causal", 2, "float64"),  # depthwise 1-D, multiplier 2
    (1, 20, 10, 10, 2, 1, 1, 1, "float32"),  # the batched product in 1-D
]


def _torch_grouped(x, w, stride, pads, dilation, groups):
    """pytorch_reference's grouped convolution (channels-first) on graphc's layouts, the padding applied first (it
    may be uneven): the output and the (input, filter) gradients for a cotangent."""
    import pytorch_reference as tref

    nsp = x.ndim - 2
    xc = np.moveaxis(np.pad(x, [(0, 0), *pads, (0, 0)]), -1, 1)
    wc = np.transpose(w, (nsp + 1, nsp, *range(nsp)))  # (F, C/g, *kernel)

    def grads(g):
        dx, dw, _ = tref.conv_grads(xc, wc, np.moveaxis(g, -1, 1), stride, 0, dilation, groups)
        crop = tuple(slice(lo, lo + d) for (lo, _), d in zip(pads, x.shape[1:-1], strict=True))
        return np.moveaxis(dx, 1, -1)[(slice(None), *crop)], np.transpose(dw, (*range(2, nsp + 2), 1, 0))

    return np.moveaxis(tref.conv(xc, wc, None, stride, 0, dilation, groups), 1, -1), grads


@pytest.mark.parametrize("case", GROUPED_CASES)
def test_grouped_conv_is_pytorchs_compiled_as_the_reference_on_1_and_2_threads(case):
    """groups= against a numpy PyTorch (F.conv1d/conv2d with groups, checked against torch where it is installed):
    the value and both gradients, in the reference evaluator and compiled (float32 within rounding, float64
    tightly), the same bits on 1 and 2 threads."""
    nsp, c, f, groups, kernel, stride, padding, dilation, dtype = case
    sizes = (7, 6)[:nsp]
    k = (kernel,) * nsp if isinstance(kernel, int) else kernel
    st, dl = ((v,) * nsp if isinstance(v, int) else v for v in (stride, dilation))
    x = gc.input("x", ("N", *sizes, c), dtype)
    w = gc.input("w", (*k, c // groups, f), dtype)
    conv = gc.conv2d if nsp == 2 else gc.conv1d
    y = conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    X = rng.standard_normal((3, *sizes, c)).astype(dtype)
    W = rng.standard_normal((*k, c // groups, f)).astype(dtype)
    pads = [(dl[0] * (k[0] - 1), 0)] if padding == "causal" else _pads(padding, sizes, k, st, dl)
    want, grads = _torch_grouped(X.astype(np.float64), W.astype(np.float64), st, pads, dl, groups)
    vals = {"x": X, "w": W}
    assert y.shape == (gc.dim("N"), *want.shape[1:])
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(gc.evaluate(y, vals), want, rtol=tol, atol=tol)
    G = rng.standard_normal(want.shape[1:]).astype(dtype)
    outs = [y, *gc.grad(gc.sum(y * gc.constant(G)), [x, w])]
    refs = gc.evaluate(outs, vals)
    for got, exp in zip(refs[1:], grads(np.broadcast_to(G.astype(np.float64), want.shape)), strict=True):
        np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * 10)
    fn = gc.compile(outs)
    one = fn(vals, threads=1)
    for got, r in zip(one, refs, strict=True):
        np.testing.assert_allclose(got, r, rtol=tol, atol=tol * 10)
    for a, b in zip(one, fn(vals, threads=2), strict=True):
        assert np.array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(nsp=st.integers(1, 2), groups=st.integers(1, 10), cg=st.integers(1, 3), fg=st.integers(1, 3),
       k=st.integers(1, 3), stride=st.integers(1, 3), dilation=st.integers(1, 2), pad=st.integers(0, 2),
       size=st.integers(5, 7))  # at least the widest dilated window, 5
def test_grouped_conv_and_its_gradients_are_pytorchs_for_any_grouping(nsp, groups, cg, fg, k, stride, dilation, pad,
                                                                     size):
    """Every form (per-group convolutions, the batched product past GROUPS_AS_CONVS, the depthwise tap sum with
    any channel multiplier) in the reference evaluator, against the numpy PyTorch, in float64."""
    c, f = cg * groups, fg * groups
    x = gc.input("x", ("N", *(size,) * nsp, c), "float64")
    w = gc.input("w", (*(k,) * nsp, cg, f), "float64")
    y = (gc.conv2d if nsp == 2 else gc.conv1d)(x, w, stride, pad, dilation, groups)
    X, W = rng.standard_normal((2, *(size,) * nsp, c)), rng.standard_normal((*(k,) * nsp, cg, f))
    want, grads = _torch_grouped(X, W, (stride,) * nsp, [(pad, pad)] * nsp, (dilation,) * nsp, groups)
    G = rng.standard_normal(want.shape)
    cot = gc.input("G", ("N", *want.shape[1:]), "float64")
    got = gc.evaluate([y, *gc.grad(gc.sum(y * cot), [x, w])], {"x": X, "w": W, "G": G})
    for a, b in zip(got, (want, *grads(G)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c, f, groups", [(4, 6, 2), (6, 6, 6), (3, 6, 3), (18, 9, 9)])
def test_grouped_gradients_by_finite_differences_in_float64(c, f, groups):
    x = gc.input("x", ("N", 5, 6, c), "float64")
    w = gc.input("w", (3, 2, c // groups, f), "float64")
    y = gc.sum(gc.tanh(gc.conv2d(x, w, stride=(2, 1), padding="same", dilation=(1, 2), groups=groups)) ** 2)
    gc.check_grad(y, [x, w], {"x": rng.standard_normal((2, 5, 6, c)),
                              "w": rng.standard_normal((3, 2, c // groups, f))}, rtol=1e-5, atol=1e-7)


def test_grouped_conv_errors_name_channels_filters_groups_and_the_line():
    x = gc.input("x", ("N", 8, 8, 6))
    with pytest.raises(gc.ShapeError, match=r"conv2d: groups=4 must divide both the input's channels C = 6 .*"
                                            r"and the filters F = 8 .*test_conv\.py:\d+"):
        gc.conv2d(x, gc.input("w", (3, 3, 1, 8)), groups=4)
    with pytest.raises(gc.ShapeError, match=r"conv2d: groups=3 must divide .*F = 4 .*test_conv\.py"):
        gc.conv2d(x, gc.input("w1", (3, 3, 2, 4)), groups=3)
    with pytest.raises(gc.ShapeError, match=r"conv2d: the filter \[3,3,6,6\] expects 6 input channels per group "
                                            r"\(groups=2: C/groups = 6/2 = 3\) but the input \[N,8,8,6\] has 6; a "
                                            r"grouped filter is \(KH, KW, C/groups, F\).*test_conv\.py"):
        gc.conv2d(x, gc.input("w2", (3, 3, 6, 6)), groups=2)
    with pytest.raises(gc.ShapeError, match=r"conv1d: .*grouped filter is \(K, C/groups, F\)"):
        gc.conv1d(gc.input("s", ("N", 8, 6)), gc.input("w3", (3, 6, 6)), groups=3)
    with pytest.raises(gc.ShapeError, match=r"conv2d: the filter \[3,3,2,4\] expects 2 input channels per group "
                                            r"\(groups=2\) but the input \[N,8,8,C\] has C"):
        gc.conv2d(gc.input("sym", ("N", 8, 8, "C")), gc.input("w5", (3, 3, 2, 4)), groups=2)
    for bad in (0, 1.5, "2", True):
        with pytest.raises(gc.ShapeError, match=r"conv2d: groups must be an int >= 1, got .*test_conv\.py"):
            gc.conv2d(x, gc.input("w4", (3, 3, 6, 6)), groups=bad)


def test_each_grouped_form_compiles_to_its_kernels():
    """Depthwise: one reduction over the taps (no GEMM, no im2col buffer); 2 groups of 4 channels: two GEMMs
    reading the image in place; 9 groups: one batched product over them."""
    x = gc.input("x", ("N", 8, 8, 18))

    def kernels(y):
        prog = gc.compile(y).program
        return [type(k).__name__ for k in prog.kernels], prog

    kinds, prog = kernels(gc.conv2d(x, gc.input("w", (3, 3, 1, 18)), padding="same", groups=18))
    assert "GemmKernel" not in kinds and kinds.count("ReduceKernel") == 1, kinds
    assert not any(len(b.shape) > 4 for b in prog.buffers)
    kinds, prog = kernels(gc.conv2d(x, gc.input("w2", (3, 3, 9, 4)), padding="same", groups=2))
    assert kinds.count("GemmKernel") == 2 and all(not k.batch for k in prog.kernels if hasattr(k, "batch")), kinds
    kinds, prog = kernels(gc.conv2d(x, gc.input("w3", (3, 3, 2, 9)), padding="same", groups=9))
    (gemm,) = [k for k in prog.kernels if type(k).__name__ == "GemmKernel"]
    assert gemm.batch == (9,)
