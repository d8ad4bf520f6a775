"""Variable-length sequences: masked losses against PyTorch (ignore_index, per-token means), lengths on either
time axis, gradients by finite differences, the compiled loss against the reference, and last_step against
PyTorch's packed sequences (PyTorch's losses and layers in numpy: tests/pytorch_reference.py, checked against torch
in tests/test_references_match_pytorch.py)."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import pytorch_reference as ref

import graphc as gc
from graphc.autodiff.check import check_grad

T, N, C = 5, 4, 6
LENGTHS = np.array([5, 2, 3, 1], np.int32)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, N, C)), rng.integers(0, C, size=(T, N)).astype(np.int32)


def _pytorch_ce(z, labels, lengths):
    padded = labels.copy()
    padded[np.arange(T)[:, None] >= lengths[None, :]] = -100  # PyTorch's ignore_index for the padding
    return ref.cross_entropy(z.reshape(-1, C), padded.reshape(-1), ignore_index=-100)


def test_per_token_cross_entropy_over_real_tokens_matches_pytorch():
    z, labels = _data()
    logits = gc.input("z", ("T", "N", C), "float64")
    y = gc.input("y", ("T", "N"), "int32")
    lengths = gc.input("len", ("N",), "int32")
    want = _pytorch_ce(z, labels, LENGTHS)
    by_lengths = gc.nn.softmax_cross_entropy(logits, y, lengths=lengths)
    mask = gc.nn.sequence_mask(lengths, logits.shape[0])
    by_mask = gc.nn.softmax_cross_entropy(logits, y, mask=mask)
    vals = {"z": z, "y": labels, "len": LENGTHS}
    for loss in (by_lengths, by_mask):
        assert gc.evaluate(loss, vals) == pytest.approx(want, rel=1e-12)
    padded = labels.copy()
    padded[np.arange(T)[:, None] >= LENGTHS[None, :]] = -100
    ignoring = gc.nn.softmax_cross_entropy(logits, y, ignore_index=-100)
    assert gc.evaluate(ignoring, {"z": z, "y": padded}) == pytest.approx(want, rel=1e-12)
    # unmasked: the mean over every token, as PyTorch's plain mean
    plain = ref.cross_entropy(z.reshape(-1, C), labels.reshape(-1))
    assert gc.evaluate(gc.nn.softmax_cross_entropy(logits, y), vals) == pytest.approx(plain, rel=1e-12)
    # batch-major (N, T, C) with time_axis=1 gives the same number
    zb = gc.input("zb", ("N", "T", C), "float64")
    yb = gc.input("yb", ("N", "T"), "int32")
    bm = gc.nn.softmax_cross_entropy(zb, yb, lengths=lengths, time_axis=1)
    got = gc.evaluate(bm, {"zb": z.transpose(1, 0, 2), "yb": labels.T.copy(), "len": LENGTHS})
    assert got == pytest.approx(want, rel=1e-12)


def test_masked_losses_gradients_by_finite_differences():
    z, labels = _data(1)
    logits = gc.input("z", (T, N, C), "float64")
    y = gc.input("y", (T, N), "int32")
    lengths = gc.input("len", (N,), "int32")
    w = gc.input("w", (T, N), "float64")
    vals = {"z": z, "y": labels, "len": LENGTHS, "w": np.random.default_rng(2).uniform(size=(T, N))}
    check_grad(gc.nn.softmax_cross_entropy(logits, y, lengths=lengths), [logits], vals, rtol=1e-6, atol=1e-9)
    check_grad(gc.nn.softmax_cross_entropy(logits, y, mask=w), [logits], vals, rtol=1e-6, atol=1e-9)
    target = gc.input("t", (T, N, C), "float64")
    vals["t"] = np.random.default_rng(3).normal(size=(T, N, C))
    check_grad(gc.nn.mse(logits, target, lengths=lengths), [logits], vals, rtol=1e-6, atol=1e-9)
    bits = gc.input("b", (T, N, C), "float64")
    vals["b"] = (np.random.default_rng(4).uniform(size=(T, N, C)) > 0.5).astype(np.float64)
    check_grad(gc.nn.binary_cross_entropy(logits, bits, mask=w), [logits], vals, rtol=1e-6, atol=1e-9)
    # padded steps get no gradient at all
    g = gc.evaluate(gc.grad(gc.nn.softmax_cross_entropy(logits, y, lengths=lengths), logits), vals)
    pad = np.arange(T)[:, None] >= LENGTHS[None, :]
    assert np.all(g[pad] == 0) and np.all(np.abs(g[~pad]).sum(-1) > 0)


def test_masked_mse_and_bce_count_the_real_elements_only():
    rng = np.random.default_rng(5)
    p, t = rng.normal(size=(T, N, 3)), rng.normal(size=(T, N, 3))
    pred, target = gc.input("p", ("T", "N", 3), "float64"), gc.input("t", ("T", "N", 3), "float64")
    lengths = gc.input("len", ("N",), "int32")
    real = np.arange(T)[:, None] < LENGTHS[None, :]
    got = gc.evaluate(gc.nn.mse(pred, target, lengths=lengths), {"p": p, "t": t, "len": LENGTHS})
    assert got == pytest.approx(((p - t) ** 2)[real].mean(), rel=1e-12)
    b = (t > 0).astype(np.float64)
    want = ref.bce_with_logits(p[real], b[real])
    got = gc.evaluate(gc.nn.binary_cross_entropy(pred, target, lengths=lengths), {"p": p, "t": b, "len": LENGTHS})
    assert got == pytest.approx(want, rel=1e-12)
    # a mask that counts nothing gives 0, not NaN (Keras' masked mean); the gradient is 0 too
    none = np.zeros(N, np.int32)
    loss = gc.nn.mse(pred, target, lengths=lengths)
    assert gc.evaluate(loss, {"p": p, "t": t, "len": none}) == 0.0
    assert not gc.evaluate(gc.grad(loss, pred), {"p": p, "t": t, "len": none}).any()


def test_compiled_masked_loss_and_gradient_match_the_reference():
    z, labels = _data(6)
    logits = gc.input("z", ("T", "N", C))
    y = gc.input("y", ("T", "N"), "int32")
    lengths = gc.input("len", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(logits, y, lengths=lengths)
    outs = [loss, gc.grad(loss, logits)]
    vals = {"z": z.astype(np.float32), "y": labels, "len": LENGTHS}
    got = gc.compile(outs, threads=1)(vals)
    want = gc.evaluate(outs, vals)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_last_step_is_pytorchs_packed_final_state():
    F, H = 3, 4
    layer = ref.recurrent_weights("lstm", F, H, seed=0)  # nn.LSTM(F, H)'s state_dict
    xs_np = np.random.default_rng(7).normal(size=(T, N, F))
    _, hn, _ = ref.recurrent("lstm", xs_np, layer, lengths=LENGTHS)  # over pack_padded_sequence(xs, LENGTHS)
    xs = gc.input("xs", ("T", "N", F), "float64")
    lengths = gc.input("len", ("N",), "int32")
    ys = gc.nn.lstm(xs, H, return_sequences=True, name="l")
    last = gc.nn.last_step(ys, lengths)
    assert last.shape == (gc.dim("N"), H)
    vals = {"l.Wx": layer["weight_ih_l0"].T.copy(), "l.Wh": layer["weight_hh_l0"].T.copy(),
            "l.b": layer["bias_ih_l0"] + layer["bias_hh_l0"], "xs": xs_np, "len": LENGTHS}
    np.testing.assert_allclose(gc.evaluate(last, vals), hn[0], rtol=1e-10, atol=1e-12)
    # the gradient flows into the chosen steps only (a scatter-add), checked by finite differences
    check_grad(gc.sum(last * last), [xs], vals, rtol=1e-6, atol=1e-9)
    # compiled: the same values; a length outside [1, T] is a checked error, not a wild read
    f = gc.compile([last], threads=1)
    np.testing.assert_allclose(f(vals)[0], hn[0], rtol=1e-10, atol=1e-12)
    for bad in (0, T + 1):
        with pytest.raises(gc.GraphcError, match=rf"length {bad} at row 0 is (less than 1|more than the {T} steps)"):
            gc.evaluate(last, dict(vals, len=np.array([bad, 1, 1, 1], np.int32)))
        with pytest.raises(gc.GraphcError, match=r"a length is outside \[1, T\]"):
            f(dict(vals, len=np.array([1, 1, bad, 1], np.int32)))


def test_bad_masks_are_named():
    logits = gc.input("z", ("T", "N", C))
    y = gc.input("y", ("T", "N"), "int32")
    with pytest.raises(gc.ShapeError, match=r"mask \[N,T\] does not fit the loss's elements \[T,N\]"):
        gc.nn.softmax_cross_entropy(logits, y, mask=gc.input("m", ("N", "T"), "bool"))
    with pytest.raises(gc.ShapeError, match=r"lengths must be \(N,\) = \(N,\).*got len: i32\[T\]"):
        gc.nn.softmax_cross_entropy(logits, y, lengths=gc.input("len", ("T",), "int32"))
    with pytest.raises(gc.DTypeError, match="lengths must be int32 or int64"):
        gc.nn.sequence_mask(gc.input("lf", ("N",)), 5)
    with pytest.raises(gc.ShapeError, match=r"labels \[N\] do not match logits \[T,N,6\]; expected \[T,N\]"):
        gc.nn.softmax_cross_entropy(logits, gc.input("y1", ("N",), "int32"))
    with pytest.raises(gc.ShapeError, match="batch N but lengths has"):
        gc.nn.last_step(gc.input("ys", ("T", "N", 3)), gc.input("l2", ("M",), "int32"))


def test_a_check_shared_by_two_losses_names_both_lines():
    """Two losses over the same labels share one label check (hash-consing returns the node first built); an
    error in it names the first line and the other that built it again, evaluated and compiled."""
    x, y = gc.input("x_two", ("N", 3)), gc.input("y_two", ("N",), "int32")
    first, line1 = gc.nn.softmax_cross_entropy(x, y), inspect.currentframe().f_lineno
    second, line2 = gc.nn.softmax_cross_entropy(x * 2.0, y), inspect.currentframe().f_lineno
    vals = {"x_two": np.zeros((2, 3), np.float32), "y_two": np.array([0, 5], np.int32)}
    both = rf"at test_sequence_masks.py:{line1} \(also built at test_sequence_masks.py:{line2}\)"
    with pytest.raises(gc.GraphcError, match=rf"label 5 is out of range \[0, 3\) {both}"):
        gc.evaluate(second, vals)
    with pytest.raises(gc.InputError, match=rf"label 5 is out of range \[0, 3\) {both}"):
        gc.compile(first * 1.0, cache=False)(vals)


@pytest.mark.parametrize("bad", [3, -1])
def test_a_label_outside_the_classes_is_an_error_evaluated_and_compiled(bad):
    """softmax_cross_entropy's labels must lie in [0, C): one outside used to give a zero one-hot row, a silently
    wrong loss (PyTorch raises); now an error naming the loss and the line, in the reference and in compiled code
    (the check rides in the loss's own loops: no kernel more). ignore_index stays allowed outside [0, C)."""
    # names of their own: an identical graph built by another test would be the same nodes (hash-consing), and
    # an error names the line that first built them
    x = gc.input("x_lbl", ("N", 4))
    w = gc.param("w_lbl", (4, 3))
    y = gc.input("y_lbl", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(x @ w, y)
    vals = {"x_lbl": np.ones((5, 4), np.float32), "w_lbl": np.ones((4, 3), np.float32),
            "y_lbl": np.array([0, 1, bad, 2, 1], np.int32)}
    where = "test_sequence_masks.py"
    with pytest.raises(gc.GraphcError,
                       match=rf"softmax_cross_entropy: label {bad} is out of range \[0, 3\) at {where}"):
        gc.evaluate([loss], vals)
    fn = gc.compile([loss, *gc.grad(loss, [w])])
    with pytest.raises(gc.InputError, match=rf"softmax_cross_entropy: label {bad} is out of range \[0, 3\) at {where}"):
        fn(vals)
    masked = gc.nn.softmax_cross_entropy(x @ w, y, ignore_index=bad)
    out = gc.compile([masked, *gc.grad(masked, [w])])(vals)
    ref = gc.evaluate([masked, *gc.grad(masked, [w])], vals)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [[9, 2, 3, 1], [5, -5, 3, 1]])
def test_lengths_outside_the_steps_are_errors_in_layers_losses_and_last_step(bad):
    """Lengths past T or below 0 passed silently (9 acted as T, -5 as 0), as pack_padded_sequence refuses them;
    last_step named an internal flattened index. Evaluated and compiled, with a symbolic T."""
    xs = gc.input("xs", ("T", "N", 3))
    ln = gc.input("ln", ("N",), "int32")
    z = gc.input("z", ("T", "N", C))
    y = gc.input("y", ("T", "N"), "int32")
    with gc.nn.model_build():
        h = gc.nn.lstm(xs, 2, lengths=ln, name="seq")
    loss = gc.nn.softmax_cross_entropy(z, y, lengths=ln)
    ys = gc.input("ys", ("T", "N", 2))
    last = gc.nn.last_step(ys, ln)
    v = dict(gc.nn.init_params(gc.nn.parameters(h), seed=0), xs=np.ones((T, N, 3), np.float32),
             z=np.zeros((T, N, C), np.float32), y=np.zeros((T, N), np.int32), ys=np.zeros((T, N, 2), np.float32),
             ln=np.array(bad, np.int32))
    row = 0 if bad[0] > T else 1
    shown = rf"length {bad[row]} at row {row} is " + (rf"more than the {T} steps" if row == 0 else "negative")
    for out, words in ((h, rf"lstm 'seq': {shown} \(lengths must lie in \[0, T\] = \[0, {T}\]\)"),
                       (loss, rf"softmax_cross_entropy: {shown} \(lengths must lie in \[0, T\] = \[0, {T}\]\)"),
                       (last, rf"last_step: {shown} \(lengths must lie in \[1, T\] = \[1, {T}\]\)")):
        with pytest.raises(gc.GraphcError, match=words):
            gc.evaluate(out, v)
        # lengths read from the input are checked before the call (last_step's, shifted, in its kernel, where the
        # bad value is not known: the range, with T symbolic)
        in_kernel = words.split(":")[0] + r": a length is outside \[1, T\] \(T: the steps of the sequences\) at "
        with pytest.raises(gc.GraphcError, match=in_kernel if out is last else words):
            gc.compile(out)(v)
    ok = dict(v, ln=LENGTHS)
    np.testing.assert_allclose(gc.compile(last)(ok), gc.evaluate(last, ok))
    zero = dict(v, ln=np.array([0, 2, 3, 1], np.int32))  # an empty sequence: allowed in a layer and a loss
    np.testing.assert_array_equal(gc.evaluate(h, zero)[0], 0)
    with pytest.raises(gc.GraphcError, match=r"last_step: length 0 at row 0 is less than 1 \(lengths must lie in "
                                              rf"\[1, T\] = \[1, {T}\]\)"):
        gc.evaluate(last, zero)


def test_lengths_known_when_built_are_checked_at_the_users_line_in_steps():
    """Lengths given as a numpy array against a static T were refused by the internal table check, with its
    names ("take: ... (inputs iota: i32[6], constant: i32[3])"): now in the user's terms, at their line."""
    xs = gc.input("xs_static_len", (5, 3, 2))
    z = gc.input("z_static_len", (5, 3, C))
    y = gc.input("y_static_len", (5, 3), "int32")
    line = inspect.currentframe().f_lineno + 3
    with pytest.raises(gc.ShapeError) as e:
        with gc.nn.model_build():
            gc.nn.gru(xs, 2, lengths=np.array([1, 2, 6], np.int32), name="g_static")
    assert str(e.value) == ("gru 'g_static': length 6 at row 2 is more than the 5 steps (lengths must lie in "
                            f"[0, T] = [0, 5]) at test_sequence_masks.py:{line}"), str(e.value)
    with pytest.raises(gc.ShapeError, match=r"^softmax_cross_entropy: length -1 at row 1 is negative \(lengths must "
                                            r"lie in \[0, T\] = \[0, 5\]\) at test_sequence_masks.py:\d+$"):
        gc.nn.softmax_cross_entropy(z, y, lengths=np.array([1, -1, 2], np.int64))
    with pytest.raises(gc.ShapeError, match=r"^last_step: length 0 at row 0 is less than 1 \(lengths must lie in "
                                            r"\[1, T\] = \[1, 5\]\) at test_sequence_masks.py"):
        gc.nn.last_step(xs, np.array([0, 2, 3], np.int32))
    # a static T in compiled code: the range in numbers
    ln = gc.input("ln_static_len", (3,), "int32")
    f = gc.compile(gc.nn.last_step(xs, ln))
    with pytest.raises(gc.InputError, match=r"last_step: a length is outside \[1, T\] = \[1, 5\] \(T: the steps"):
        f({"xs_static_len": np.zeros((5, 3, 2), np.float32), "ln_static_len": np.array([1, 6, 2], np.int32)})


def test_sequence_mask_refuses_a_bad_step_count_by_name():
    lengths = gc.input("L", ("N",), "int32")
    for bad in (-1, 4.0, True, None):
        with pytest.raises(gc.ShapeError, match="sequence_mask: steps must be an int >= 0 or a dim"):
            gc.nn.sequence_mask(lengths, bad)


def test_a_non_finite_value_in_sequences_is_located_on_its_grid():
    from graphc import data

    X = np.zeros((30, 3, 2), np.float32)
    X[3, 1, 1] = np.nan
    with pytest.raises(data.DataError, match=r"example 3 \(counted from 0\) has a non-finite value at \(1, 1\) "
                                             r"of its \(3, 2\) grid"):
        gc.fit(str(Path(__file__).resolve().parents[2] / "examples" / "lstm_digits_rows.py"),
               (X, np.arange(30) % 2), epochs=1, progress=False)


@pytest.mark.parametrize("pad", [np.nan, np.inf])
def test_padding_values_reach_neither_losses_nor_gradients(pad):
    """What lies past a sequence's length (NaN, inf: a padded batch's filler) is not read: the losses, an LSTM over
    `lengths=` and every gradient are those of the zero-padded batch, finite, 0 at the padding (PyTorch's packed
    sequences and ignore_index). A cotangent of 0 times the cell's derivative at a NaN input was NaN."""
    rng = np.random.default_rng(3)
    z, labels = _data(3)
    real = np.arange(T)[:, None] < LENGTHS[None, :]  # (T, N)
    xs = rng.normal(size=(T, N, 3))
    dirty_z, dirty_xs = np.where(real[..., None], z, pad), np.where(real[..., None], xs, pad)
    clean_z, clean_xs = np.where(real[..., None], z, 0.0), np.where(real[..., None], xs, 0.0)
    logits = gc.input("z", ("T", "N", C), "float64")
    x = gc.input("xs", ("T", "N", 3), "float64")
    y = gc.input("y", ("T", "N"), "int32")
    lengths = gc.input("len", ("N",), "int32")
    h = gc.nn.lstm(x, 4, lengths=lengths, return_sequences=True, name="padded")
    losses = [gc.nn.softmax_cross_entropy(logits, y, lengths=lengths),
              gc.nn.mse(logits, gc.zeros_like(logits), mask=gc.nn.sequence_mask(lengths, logits.shape[0])),
              gc.nn.binary_cross_entropy(logits, gc.ones_like(logits) * 0.3, lengths=lengths),
              gc.nn.mse(h, gc.zeros_like(h), lengths=lengths)]
    params = gc.nn.parameters(losses[-1])
    outs = [*losses, *gc.grad(sum(losses[:3]), [logits]), *gc.grad(losses[-1], [x, *params])]
    values = gc.nn.init_params(params, seed=0)
    fn = gc.compile(outs)
    for run in (lambda v: gc.evaluate(outs, v), fn):
        got = run({**values, "z": dirty_z, "xs": dirty_xs, "y": labels, "len": LENGTHS})
        want = run({**values, "z": clean_z, "xs": clean_xs, "y": labels, "len": LENGTHS})
        for g, w in zip(got, want, strict=True):
            assert np.all(np.isfinite(g))
            np.testing.assert_array_equal(g, w)
        assert np.all(got[4][~real] == 0) and np.all(got[5][~real] == 0)  # d/dz and d/dxs at the padding
    assert float(got[0]) == pytest.approx(_pytorch_ce(z, labels, LENGTHS), rel=1e-12)


def test_mask_weights_of_any_scale_give_the_same_mean():
    """sum(loss * w) / sum(w) for weights 1e-31 or 1e-300 as for 1 (the count was clamped at 1e-30)."""
    z, _ = _data(4)
    pred = gc.input("p", (T, N, C), "float64")
    w = gc.input("w", (T, N), "float64")
    loss = gc.nn.mse(pred, gc.zeros_like(pred), mask=w)
    weights = np.random.default_rng(4).uniform(0.5, 2.0, size=(T, N))
    want = np.sum(z ** 2 * weights[..., None]) / np.sum(np.broadcast_to(weights[..., None], z.shape))
    for scale in (1.0, 1e-31, 1e-300):
        assert float(gc.evaluate(loss, {"p": z, "w": weights * scale})) == pytest.approx(want, rel=1e-12)
    assert float(gc.evaluate(loss, {"p": z, "w": np.zeros((T, N))})) == 0.0


def test_label_smoothing_is_pytorchs():
    """label_smoothing=e: the target (1 - e)·one_hot + e/C, with ignore_index and lengths counting tokens as
    without it; PyTorch's CrossEntropyLoss(label_smoothing=e) gives the same number, and the gradient is right."""
    z, labels = _data(1)
    logits = gc.input("z", ("T", "N", C), "float64")
    y = gc.input("y", ("T", "N"), "int32")
    padded = labels.copy()
    padded[np.arange(T)[:, None] >= LENGTHS[None, :]] = -100
    for e in (0.0, 0.1, 1.0):
        loss = gc.nn.softmax_cross_entropy(logits, y, ignore_index=-100, label_smoothing=e)
        want = ref.cross_entropy(z.reshape(-1, C), padded.reshape(-1), ignore_index=-100, label_smoothing=e)
        vals = {"z": z, "y": padded}
        assert gc.evaluate(loss, vals) == pytest.approx(want, rel=1e-12)
        assert float(gc.compile(loss)(vals)) == pytest.approx(want, rel=1e-12)
        check_grad(loss, [logits], vals, rtol=1e-6, atol=1e-9)
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(gc.GraphcError, match=r"label_smoothing must be a number in \[0, 1\]"):
            gc.nn.softmax_cross_entropy(logits, y, label_smoothing=bad)


def test_huber_and_mae_are_pytorchs_and_count_only_the_masked_elements():
    rng = np.random.default_rng(4)
    P, Y = rng.normal(size=(T, N, 3)) * 2, rng.normal(size=(T, N, 3))
    Y[0, 0, 0] = P[0, 0, 0]  # a zero residual: both gradients 0 there, as torch's
    p, y = gc.input("p", ("T", "N", 3), "float64"), gc.input("y", ("T", "N", 3), "float64")
    lengths = gc.input("len", ("N",), "int32")
    vals = {"p": P, "y": Y, "len": LENGTHS}
    counted = np.arange(T)[:, None] < LENGTHS[None, :]  # (T, N)
    tp, ty = P[counted], Y[counted]
    for loss, (want, want_grad) in ((gc.nn.huber(p, y, lengths=lengths), ref.huber(tp, ty)),
                                    (gc.nn.huber(p, y, delta=0.4, lengths=lengths), ref.huber(tp, ty, delta=0.4)),
                                    (gc.nn.mae(p, y, lengths=lengths), ref.l1(tp, ty))):
        assert gc.evaluate(loss, vals) == pytest.approx(want, rel=1e-12)
        got, g = gc.compile([loss, gc.grad(loss, p)])(vals)
        assert float(got) == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(g[counted], want_grad, rtol=1e-10, atol=1e-15)
        assert not g[~counted].any()
    check_grad(gc.nn.huber(p, y, delta=0.4, lengths=lengths), [p], {**vals, "p": P + 0.01}, rtol=1e-6, atol=1e-9)
    for bad in (0.0, -1.0, float("inf"), "1"):
        with pytest.raises(gc.GraphcError, match="huber: delta must be a positive number"):
            gc.nn.huber(p, y, delta=bad)
