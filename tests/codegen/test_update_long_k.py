"""A parameter update fused into the epilogue of the product that computes its gradient, when that product's K
(the batch, for dW = Xᵀ·dZ) is longer than one K block: the partial sums must not pass through the parameter's
own buffer, which the update reads (the bug: batches over 256 rows trained on garbage, Adam on NaN)."""

import numpy as np
import pytest

import graphc as gc
from graphc.nn.optim import make


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("batch", [200, 600])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_update_with_a_long_k_matches_the_reference(optimizer, batch, threads):
    x = gc.input("x", ("N", 20))
    y = gc.input("y", ("N",), "int32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.nn.dense(x, 24, "tanh", name="h"), 5, name="d"), y)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    opt = make(optimizer)
    state_in = opt.state_inputs(params)
    lr, t = gc.input("lr", (), "float32"), gc.input("step", (), "float32")
    updates = {}
    for p, g in zip(params, grads, strict=True):
        new_p, new_s = opt.step(p, g, state_in, t, lr)
        updates[p] = new_p
        updates.update({state_in[k]: v for k, v in new_s.items()})
    ef = gc.EpochFunction(loss, updates, x=x, y=y, threads=threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 20)).astype(np.float32)
    Y = rng.integers(0, 5, batch).astype(np.int32)
    state = ef.aligned(gc.nn.init_params(params, seed=0))
    state.update(opt.init_state(params))
    values = dict(state, x=X, y=Y, lr=np.float32(0.1), step=np.float32(1))
    want = gc.evaluate(list(updates.values()), values)
    ef.run_epoch(X, Y, state, batch=batch, scalars={"lr": 0.1}, shuffle=False, threads=threads)
    for leaf, w in zip(updates, want, strict=True):
        np.testing.assert_allclose(state[leaf.name], w, rtol=2e-4, atol=1e-6, err_msg=leaf.name)
