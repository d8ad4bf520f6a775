"""The numpy references the tests compare graphc against (tests/pytorch_reference.py) are PyTorch's: each against
torch itself, on the same weights and data, in float64. Only here is torch imported: it comes with the optional bench
extra only (not in CI's .[dev,mpi]), so where it is missing this module skips and the rest of the suite still checks
graphc against the references."""

import numpy as np
import pytest
import pytorch_reference as ref

try:  # pytest.importorskip, catching any ImportError (exc_type= needs pytest 8.2; dev asks for 8): a stand-in
    import torch  # that raises one, as tests/test_benchmarks.py blocks the peers, skips too
except ImportError:
    pytest.skip("PyTorch is in the bench extra only (pip install -e '.[bench]'): the references in "
                "tests/pytorch_reference.py are checked against it here", allow_module_level=True)

T, N, F, H = 5, 4, 3, 4
LENGTHS = np.array([5, 2, 1, 4])


def _close(got, want, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(got, want.detach().numpy() if isinstance(want, torch.Tensor) else want,
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_layers_are_torchs(kind, bidirectional):
    """nn.RNN/GRU/LSTM on the same state_dict: plain, from an initial state, and over packed sequences (the output
    padded back to T with zeros, h_n/c_n each sequence's own last step, the reverse direction from its own end)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
    layer = cls(F, H, bidirectional=bidirectional).double()
    weights = ref.recurrent_weights(kind, F, H, bidirectional, seed=1)
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    rng = np.random.default_rng(2)
    D = 2 if bidirectional else 1
    xs, h0, c0 = rng.normal(size=(T, N, F)), rng.normal(size=(D, N, H)), rng.normal(size=(D, N, H))
    tx = torch.from_numpy(xs)
    packed = pack_padded_sequence(tx, torch.from_numpy(LENGTHS), enforce_sorted=False)
    hx = (torch.from_numpy(h0), torch.from_numpy(c0)) if kind == "lstm" else torch.from_numpy(h0)
    with torch.no_grad():
        for kw, (out, state) in (({}, layer(tx)), ({"h0": h0, "c0": c0}, layer(tx, hx)),
                                 ({"lengths": LENGTHS}, layer(packed)), ({"lengths": LENGTHS, "h0": h0, "c0": c0},
                                                                          layer(packed, hx))):
            if "lengths" in kw:
                out = pad_packed_sequence(out, total_length=T)[0]
            got_out, got_h, got_c = ref.recurrent(kind, xs, weights, bidirectional=bidirectional, **kw)
            _close(got_out, out)
            _close(got_h, state[0] if kind == "lstm" else state)
            if kind == "lstm":
                _close(got_c, state[1])
            else:
                assert got_c is None


def test_cross_entropy_is_torchs_with_ignore_index_and_label_smoothing():
    rng = np.random.default_rng(3)
    z, y = rng.normal(size=(20, 6)) * 3, rng.integers(0, 6, size=20)
    y_ignored = np.where(rng.uniform(size=20) < 0.3, -100, y)
    for target in (y, y_ignored):
        for e in (0.0, 0.1, 1.0):
            want = torch.nn.CrossEntropyLoss(label_smoothing=e)(torch.from_numpy(z), torch.from_numpy(target))
            assert ref.cross_entropy(z, target, label_smoothing=e) == pytest.approx(want.item(), rel=1e-13)
    other = np.where(y == 2, 2, y + 10) % 6  # another ignore_index, inside the classes
    want = torch.nn.CrossEntropyLoss(ignore_index=2)(torch.from_numpy(z), torch.from_numpy(other))
    assert ref.cross_entropy(z, other, ignore_index=2) == pytest.approx(want.item(), rel=1e-13)


def test_bce_with_logits_is_torchs():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=30) * 4, [-800.0, 800.0, 0.0]])  # far tails: no overflow, no cancellation
    for y in ((rng.uniform(size=33) > 0.5).astype(np.float64), rng.uniform(size=33)):
        want = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(y))
        assert ref.bce_with_logits(x, y) == pytest.approx(want.item(), rel=1e-13)


def test_huber_and_l1_and_their_gradients_are_torchs():
    rng = np.random.default_rng(5)
    p, y = rng.normal(size=(7, 3)) * 2, rng.normal(size=(7, 3))
    y[0, 0] = p[0, 0]  # a zero residual: gradient 0
    for (loss, grad), tloss in ((ref.huber(p, y), torch.nn.HuberLoss()),
                                (ref.huber(p, y, delta=0.4), torch.nn.HuberLoss(delta=0.4)),
                                (ref.l1(p, y), torch.nn.L1Loss())):
        tp = torch.from_numpy(p).requires_grad_()
        want = tloss(tp, torch.from_numpy(y))
        want.backward()
        assert loss == pytest.approx(want.item(), rel=1e-13)
        _close(grad, tp.grad, rtol=1e-13, atol=1e-16)
        assert grad[0, 0] == 0


@pytest.mark.parametrize("feat", [(6,), (4, 6)])
def test_layer_norm_is_torchs(feat):
    rng = np.random.default_rng(6)
    ln = torch.nn.LayerNorm(feat).double()
    w, b = rng.normal(size=feat), rng.normal(size=feat)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(w))
        ln.bias.copy_(torch.from_numpy(b))
    X = rng.normal(size=(3, 4, 6)) * 3 + 1
    _close(ref.layer_norm(X, w, b), ln(torch.from_numpy(X)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, axis", [((6, 3), -1), ((2, 4, 5, 3), -1), ((4, 3, 5), 1)],
                         ids=["rows", "images-nhwc", "channels-first"])
def test_batch_norm_is_torchs_in_both_modes_with_its_running_statistics(shape, axis):
    """F.batch_norm (nn.BatchNorm1d/2d's) with the channels moved to axis 1 as torch has them: the output, and the
    running statistics it updates in place in training (unchanged in inference)."""
    rng = np.random.default_rng(7)
    c = shape[axis]
    X = rng.normal(size=shape) * 3 + 2
    gamma, beta, rm, rv = rng.normal(size=c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, size=c)
    for training in (True, False):
        y, new_rm, new_rv = ref.batch_norm(X, axis, gamma, beta, rm, rv, training, momentum=0.3)
        t_rm, t_rv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        want = torch.nn.functional.batch_norm(torch.from_numpy(np.moveaxis(X, axis, 1)), t_rm, t_rv,
                                              torch.from_numpy(gamma), torch.from_numpy(beta), training, 0.3, 1e-5)
        _close(y, np.moveaxis(want.numpy(), 1, axis))
        _close(new_rm, t_rm)
        _close(new_rv, t_rv)


@pytest.mark.parametrize("name, hyper", [*(pytest.param(n, {}, id=n) for n in sorted(ref.OPTIMIZERS)),
                                         pytest.param("adamw", {"weight_decay": 0.3}, id="adamw-wd0.3")])
def test_optimizer_steps_are_torch_optims(name, hyper):
    """Twenty steps on the gradients of a fixed quadratic, from the same start, the learning rate changing between
    steps as a schedule changes it; at the defaults, and AdamW with another weight_decay."""
    rng = np.random.default_rng(0)
    A, b0, w0 = rng.normal(size=(4, 4)), rng.normal(size=4), rng.normal(size=4)
    opt = ref.OPTIMIZERS[name](w0, lr=0.05, **hyper)
    wt = torch.tensor(w0.copy(), requires_grad=True)
    topt = getattr(torch.optim, type(opt).__name__)([wt], lr=0.05, **hyper)
    for step in range(20):
        opt.lr = topt.param_groups[0]["lr"] = 0.05 * 0.7 ** (step // 3)
        w = opt.step(A @ opt.param + b0)
        topt.zero_grad()
        wt.grad = torch.from_numpy(A) @ wt.detach() + torch.from_numpy(b0)
        topt.step()
        _close(w, wt, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nsp, groups, cin, filters, stride, padding, dilation", [
    (2, 1, 3, 4, 1, 0, 1), (2, 2, 4, 6, 2, 1, 1), (2, 4, 4, 8, 1, 2, 2), (1, 3, 6, 3, 2, 1, 1), (1, 5, 5, 10, 1, 0, 2)])
def test_grouped_convolutions_and_their_gradients_are_torchs(nsp, groups, cin, filters, stride, padding, dilation):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, cin, *(7,) * nsp))
    w = rng.normal(size=(filters, cin // groups, *(3,) * nsp))
    b = rng.normal(size=filters)
    tx, tw, tb = (torch.from_numpy(v).requires_grad_() for v in (x, w, b))
    fn = torch.nn.functional.conv2d if nsp == 2 else torch.nn.functional.conv1d
    ty = fn(tx, tw, tb, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = ref.conv(x, w, b, stride, padding, dilation, groups)
    _close(y, ty)
    go = rng.normal(size=y.shape)
    ty.backward(torch.from_numpy(go))
    for got, want in zip(ref.conv_grads(x, w, go, stride, padding, dilation, groups), (tx, tw, tb), strict=True):
        _close(got, want.grad)
