"""Which loops LLVM may unroll at run time: only those of kernels doing a noticeable share of a program's work.

Runtime (partial) unrolling copies a loop body several times with a remainder loop; on CPUs whose scheduling model
declares a large loop buffer (Zen 4) LLVM did it to every elementwise loop of an MLP step, doubling the module and
the LLVM part of its cold compile, for loops that take a sliver of the step. The policy (emit.MINOR_SHARE): a
top-level loop kernel doing less than 1/64 of the work of the program's largest kernel, the GEMM epilogues and
the epoch driver's loops get "llvm.loop.unroll.runtime.disable"; scan bodies and the large kernels do not."""

from __future__ import annotations

import re

import graphc as gc
from graphc.codegen import emit
from graphc.codegen.gemm import NO_RUNTIME_UNROLL, split_helpers
from graphc.codegen.kernels import GemmKernel, ScanKernel, all_kernels
from graphc.codegen.target import optimize, parse

# block names LLVM gives a runtime-unrolled loop's remainder (".epil", ".prol") and its exits ("unr-lcssa")
RUNTIME_UNROLLED = re.compile(r"^\S*(\.epil[.:]|\.prol[.:]|unr-lcssa)", re.M)


def _mlp_epoch():
    x = gc.input("x", ("N", 784))
    t = gc.input("y", ("N",), "int32")
    lr = gc.input("lr", (), "float32")
    loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(x, [256, 128, 10]), t)
    params = gc.nn.parameters(loss)
    updates = {p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)}
    return gc.EpochFunction(loss, updates, x=x, y=t, threads=1, cache=False)


def test_an_mlp_step_has_no_runtime_unrolled_loop():
    ef = _mlp_epoch()
    kernels = ef.program.kernels
    minor = emit._minor_kernels(kernels)
    # every elementwise and reduction kernel of this step is minor next to its 128 x 784 x 256 products
    assert minor and all(not isinstance(k, GemmKernel) for k in minor)
    assert {k.name for k in minor} == {k.name for k in kernels if not isinstance(k, GemmKernel)}
    text = ef.module_text()
    assert NO_RUNTIME_UNROLL in text
    mod = parse(split_helpers(text)[0], ef.target)
    optimize(mod, ef.target)
    assert not RUNTIME_UNROLLED.findall(str(mod))


def test_a_kernel_with_a_large_share_keeps_runtime_unrolling():
    """An elementwise kernel as large as the program's product, and an LSTM's step (a scan body, run T times),
    are left to LLVM."""
    x = gc.input("x", ("N", 64))
    w = gc.input("w", (64, 8))
    fn = gc.compile([gc.tanh(x) * 2.0 + 1.0, x @ w], cache=False)
    loops = [k for k in fn.program.kernels if not isinstance(k, GemmKernel)]
    assert loops and not set(map(id, emit._minor_kernels(fn.program.kernels))) & set(map(id, loops))

    xs = gc.input("xs", ("T", "N", 8))
    h = gc.nn.lstm(xs, 16, name="l")
    loss = gc.sum(h * h)
    params = gc.nn.parameters(loss)
    fn = gc.compile([loss, *gc.grad(loss, params)], cache=False)
    scans = [k for k in fn.program.kernels if isinstance(k, ScanKernel)]
    assert scans
    body = {id(k) for s in scans for k in all_kernels(s.body.kernels)}
    assert not body & set(map(id, emit._minor_kernels(fn.program.kernels)))


def test_minor_kernels_compute_what_they_did():
    """Metadata only: the step's results are those of the reference evaluator."""
    import numpy as np

    x = gc.input("x", ("N", 300))
    w = gc.input("w", (300, 200))
    y = gc.relu(x @ w)
    out = gc.sum(y, axis=1) + gc.max(y, axis=1)  # two reductions and an add over N: minor kernels
    fn = gc.compile([out], cache=False)
    assert emit._minor_kernels(fn.program.kernels)
    rng = np.random.default_rng(0)
    for n in (1, 7, 33):
        vals = {"x": rng.standard_normal((n, 300)).astype(np.float32),
                "w": rng.standard_normal((300, 200)).astype(np.float32)}
        np.testing.assert_allclose(fn(vals)[0], gc.evaluate([out], vals)[0], rtol=1e-4, atol=1e-3)
