"""The lowering protocol on its own: an op's own rules decide its native code (never its name), an op without a
rule is a compile error naming it, and general addressing (index expressions, guards, gathers with run-time
bounds checks, scatter-adds) works for ops defined outside graphc."""

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.codegen import stages
from graphc.codegen.kernels import GemmKernel, Guard, Load, LoopKernel, ReduceKernel, walk
from graphc.codegen.memory import barriers, describe, plan
from graphc.codegen.schedule import schedule
from graphc.codegen.target import host_target
from graphc.errors import CompileError, InputError
from graphc.ir import index as ix
from graphc.ir.graph import Graph
from graphc.ir.lowering import ACC, NEXT, ReduceRule, ScatterRule, floordiv
from graphc.ops.core import OPS, Op, apply, register


def _op(cls):
    """Register a test op once (the op table is process-wide)."""
    return OPS.get(cls.name) or register(cls())


class _MinNoRule(Op):
    """A reduction given only its shape rule, reference and vjp: the defect the protocol closes (it used to
    compile as a sum)."""

    name = "test_min_no_rule"
    kind = "reduce"
    user = True  # not a built-in: the op-table test leaves it out

    def infer(self, inputs, attrs):
        return inputs[0].shape[:-1], inputs[0].dtype

    def reference(self, node, args, ctx):
        return np.min(args[0], axis=-1)

    def vjp(self, node, g):
        return (None,)


class _Prod(_MinNoRule):
    name = "test_prod"

    def reference(self, node, args, ctx):
        return np.prod(args[0], axis=-1)

    def reduce_rule(self, node):
        return ReduceRule("prod", ACC * NEXT, 1.0, (node.inputs[0].ndim - 1,))


def test_a_reduction_without_its_rule_is_a_compile_error_naming_it():
    x = gc.input("x", ("N", 5))
    y = apply(_op(_MinNoRule), (x,))
    with pytest.raises(CompileError, match="test_min_no_rule.*no native lowering.*reduce_rule"):
        gc.compile(y, cache=False)


def test_a_reduction_brings_its_own_combine_and_identity():
    x = gc.input("x", ("N", 7))
    y = apply(_op(_Prod), (x,))
    fn = gc.compile(y, cache=False)
    v = np.random.default_rng(0).uniform(0.5, 1.5, (9, 7)).astype(np.float32)
    np.testing.assert_allclose(fn(x=v), np.prod(v, axis=-1), rtol=1e-5)
    assert "prod reduce" in fn.kernels


class _Reverse(Op):
    """x[..., ::-1] as an index map: the last axis read at n - 1 - i."""

    name = "test_reverse"
    kind = "movement"
    user = True

    def infer(self, inputs, attrs):
        return inputs[0].shape, inputs[0].dtype

    def reference(self, node, args, ctx):
        return args[0][..., ::-1]

    def vjp(self, node, g):
        return (apply(self, (g,)),)

    def lower(self, node, lx):
        n = node.shape[-1]
        return lx.at(0, [*lx.out[:-1], n - 1 - lx.out[-1]])


class _PadDilate(Op):
    """Pad the last axis by `lo` zeros and insert `interior` zeros between elements (XLA's pad): a guard with a
    floor division, so a read that is dilated and bounds-checked."""

    name = "test_pad_dilate"
    kind = "movement"
    user = True

    def infer(self, inputs, attrs):
        (x,) = inputs
        n = x.shape[-1]
        return x.shape[:-1] + (attrs["lo"] + n + (n - 1) * attrs["interior"],), x.dtype

    def reference(self, node, args, ctx):
        x = args[0]
        lo, r = node.attrs["lo"], node.attrs["interior"] + 1
        out = np.zeros(x.shape[:-1] + (node.shape[-1],), x.dtype)
        out[..., lo::r] = x
        return out

    def vjp(self, node, g):
        return (None,)

    def lower(self, node, lx):
        lo, r = node.attrs["lo"], node.attrs["interior"] + 1
        i = floordiv(lx.out[-1] - lo, r)
        index = [*lx.out[:-1], i]
        return lx.guard(lx.in_range(index, node.inputs[0].shape), lx.at(0, index), lx.const(0.0, node.dtype))


class _Take(Op):
    """x[indices] along axis 0, by a bounds-checked gather."""

    name = "test_take"
    kind = "movement"
    user = True

    def infer(self, inputs, attrs):
        x, idx = inputs
        return idx.shape + x.shape[1:], x.dtype

    def reference(self, node, args, ctx):
        x, idx = args
        if np.any((idx < 0) | (idx >= x.shape[0])):
            raise gc.GraphcError("index out of range")
        return x[idx]

    def vjp(self, node, g):
        return (None, None)

    def lower(self, node, lx):
        x, idx = node.inputs
        k = idx.ndim
        j = lx.gather(1, lx.out[:k], x.shape[0])
        return lx.at(0, [j, *lx.out[k:]])


class _ScatterAdd(Op):
    name = "test_scatter_add"
    kind = "scatter"
    user = True

    def infer(self, inputs, attrs):
        return inputs[0].shape, inputs[0].dtype

    def reference(self, node, args, ctx):
        out = args[0].copy()
        np.add.at(out, args[1], args[2])
        return out

    def vjp(self, node, g):
        return (None, None, None)

    def scatter_rule(self, node):
        return ScatterRule(0)


def test_an_index_map_op_lowers_to_strided_reads_without_a_copy():
    x = gc.input("x", ("N", 6))
    y = apply(_op(_Reverse), (gc.exp(x),)) * 2.0
    fn = gc.compile(y, cache=False)
    v = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_allclose(fn(x=v), np.exp(v)[:, ::-1] * 2, rtol=1e-6)
    assert len(fn.program.kernels) == 1  # exp, the reversed read and the product: one loop
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(fn(x=v, threads=threads), fn(x=v, threads=1))


@pytest.mark.parametrize("lo,interior,n", [(0, 1, 5), (2, 2, 9), (3, 0, 17), (1, 3, 33)])
def test_a_guarded_dilated_read_matches_the_reference(lo, interior, n):
    x = gc.input("x", ("N", n))
    y = apply(_op(_PadDilate), (x + 1.0,), lo=lo, interior=interior)
    fn = gc.compile(y, cache=False)
    v = np.random.default_rng(2).standard_normal((3, n)).astype(np.float32)
    ref = gc.evaluate(y, {"x": v})
    for threads in (1, 3):
        np.testing.assert_array_equal(fn(x=v, threads=threads), ref)
    guards = [e for k in fn.program.kernels for s in k.stores for e in walk(s.value) if isinstance(e, Guard)]
    assert guards and all(isinstance(e, Load) and e.checked for g in guards for e in walk(g.value)
                          if isinstance(e, Load))


@pytest.mark.parametrize("n", [1, 3])  # one row: the split axis is also the one the threads share
def test_a_concatenation_runs_each_range_of_its_axis_without_guards(n):
    from graphc.codegen.emit import _guard_pieces

    x, y = gc.input("x", (n, 40)), gc.input("y", (n, 27))
    out = gc.concatenate([gc.exp(x), gc.tanh(y) * 2.0, x[:, :5] - 1.0], axis=1) * 3.0
    fn = gc.compile(out, cache=False)
    rng = np.random.default_rng(3)
    v = {"x": rng.standard_normal((n, 40)).astype(np.float32), "y": rng.standard_normal((n, 27)).astype(np.float32)}
    want = gc.evaluate(out, v)
    for threads in (1, 2, 3):
        np.testing.assert_allclose(fn(v, threads=threads), want, rtol=1e-6)
    (k,) = fn.program.kernels
    pieces = _guard_pieces(k.stores, 1, 72)
    assert [(lo, hi) for lo, hi, _ in pieces] == [(0, 40), (40, 67), (67, 72)]
    for _, _, stores in pieces:  # each range computes its own branch only, with plain loads
        exprs = [e for s in stores for e in walk(s.value)]
        assert not [e for e in exprs if isinstance(e, Guard) or (isinstance(e, Load) and e.checked)]


@pytest.mark.parametrize("w,k", [(3, 2), (8, 5), (12, 4), (21, 3)])
def test_shifted_padded_rows_summed_match_numpy_at_every_edge(w, k):
    """A col2im-like sum of k*k shifted pads of a row tensor: every term is a guarded read whose lanes run off
    both ends of its buffer (the first and last rows), tested in i32 lanes against an interval and read with the
    guard as the load's mask, on rows shorter and longer than a vector, 1 and 3 threads."""
    from graphc.ops.movement import _pad

    x = gc.input("x", ("N", 3, w))
    terms = [_pad(x * float(i + 1), [0, a, b], [0, k - 1 - a, k - 1 - b], [0, 0, 0], 0)
             for i, (a, b) in enumerate((a, b) for a in range(k) for b in range(k))]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    fn = gc.compile(total, cache=False)
    v = np.random.default_rng(4).standard_normal((2, 3, w)).astype(np.float32)
    want = np.zeros((2, 3 + k - 1, w + k - 1), np.float64)
    for i, (a, b) in enumerate((a, b) for a in range(k) for b in range(k)):
        want[:, a:a + 3, b:b + w] += v * (i + 1)
    for threads in (1, 3):
        np.testing.assert_allclose(fn(x=v, threads=threads), want, rtol=1e-5, atol=1e-5)
    assert [type(kk).__name__ for kk in fn.program.kernels] == ["LoopKernel"]


def test_a_gather_is_bounds_checked_in_compiled_code():
    x = gc.input("x", (10, 4))
    idx = gc.input("idx", ("B",), "int32")
    y = apply(_op(_Take), (x, idx)) * 3.0
    fn = gc.compile(y, cache=False)
    xv = np.arange(40, dtype=np.float32).reshape(10, 4)
    iv = np.array([3, 0, 9, 3, 7], dtype=np.int32)
    np.testing.assert_array_equal(fn(x=xv, idx=iv), xv[iv] * 3)
    for bad in (10, -1, 2**31 - 1):
        with pytest.raises(InputError, match="test_take.*out of range"):
            fn(x=xv, idx=np.array([1, bad, 2], dtype=np.int32))
    np.testing.assert_array_equal(fn(x=xv, idx=iv), xv[iv] * 3)  # the error word was cleared


def test_a_scatter_add_accumulates_duplicates_in_one_order_on_any_thread_count():
    x = gc.input("x", (6, 33))
    idx = gc.input("idx", ("B",), "int64")
    upd = gc.input("upd", ("B", 33))
    y = apply(_op(_ScatterAdd), (x, idx, upd))
    fn = gc.compile(y, cache=False)
    rng = np.random.default_rng(3)
    xv = rng.standard_normal((6, 33)).astype(np.float32)
    iv = rng.integers(0, 6, 50)
    uv = rng.standard_normal((50, 33)).astype(np.float32)
    ref = xv.copy()
    for i, j in enumerate(iv):  # numpy's np.add.at order: the updates in order
        ref[j] += uv[i]
    got = fn(x=xv, idx=iv, upd=uv, threads=1)
    np.testing.assert_array_equal(got, ref)
    for threads in (2, 3):
        np.testing.assert_array_equal(fn(x=xv, idx=iv, upd=uv, threads=threads), got)
    with pytest.raises(InputError, match="test_scatter_add.*out of range"):
        fn(x=xv, idx=np.array([0, 6]), upd=uv[:2])


# ---------------------------------------------------------------------------------------------------------
# the scheduler, fusion and the memory plan, each on its own


def _mlp_step():
    x = gc.input("x", ("N", 16))
    w = gc.param("W", (16, 8), init="zeros")
    b = gc.param("b", (8,), init="zeros")
    h = gc.relu(x @ w + b)
    loss = gc.mean(gc.sum(h * h, axis=1))
    return Graph.of([loss, *gc.grad(loss, [w, b])])


def test_schedule_materializes_products_and_reductions_and_inlines_elementwise_chains():
    g = _mlp_step()
    prog = schedule(g, fuse=False)
    kinds = [type(k).__name__ for k in prog.kernels]
    assert kinds.count("GemmKernel") == 2  # x @ W, and xᵀ @ dZ for dW
    assert any(isinstance(k, ReduceKernel) for k in prog.kernels)
    # relu(x @ W + b) is read by several kernels: it is materialized once, the add and relu fused in one loop
    loops = [k for k in prog.kernels if isinstance(k, LoopKernel)]
    assert any({"add", "relu"} <= {n.op.name for n in k.nodes} for k in loops)
    assert all(k.nodes for k in prog.kernels)


def test_fusion_moves_bias_and_activation_into_the_products_epilogue():
    x = gc.input("x", ("N", 16))
    w = gc.param("W", (16, 8), init="zeros")
    b = gc.param("b", (8,), init="zeros")
    comp = stages.run(Graph.of(gc.tanh(x @ w + b)), stages.Options(host_target()), code=False)
    before, after = comp.value("schedule"), comp.value("fusion")
    gemm = next(k for k in after.kernels if isinstance(k, GemmKernel))
    assert len(after.kernels) < len(before.kernels)
    assert {"add", "tanh"} <= {n.op.name for n in gemm.nodes}
    # fusion made a new program: the schedule's value is unchanged
    assert len(next(k for k in before.kernels if isinstance(k, GemmKernel)).stores) == 1


def test_memory_plan_shares_storage_only_across_barriers():
    g = _mlp_step()
    prog = stages.fusion(stages.schedule(g, stages.Options(host_target())), stages.Options(host_target()))
    flags = barriers(prog)
    assert flags[0] is False
    p = plan(describe(prog, flags, host_target()), {s: 64 for s in prog.symbols}, 2, host_target())
    assert p.arena_bytes <= p.unshared_bytes
    spans = {}
    for i, k in enumerate(prog.kernels):
        for buf in k.reads + k.writes:
            if buf.kind == "temp":
                lo, hi = spans.get(buf.index, (i, i))
                spans[buf.index] = (min(lo, i), max(hi, i))
    for a in p.offsets:  # two temporaries whose bytes overlap never live at once without a barrier between
        for b in p.offsets:
            if a >= b:
                continue
            overlap = p.offsets[a] < p.offsets[b] + p.sizes[b] and p.offsets[b] < p.offsets[a] + p.sizes[a]
            if overlap:
                (a0, a1), (b0, b1) = spans[a], spans[b]
                first, second = ((a1, b0) if a1 < b0 else (b1, a0))
                assert first < second and any(flags[m] for m in range(first + 1, second + 1))


def test_memory_plan_staggers_large_temporaries_across_a_page():
    """Temporaries of a page or more start at distinct offsets modulo 4 KB (distinct L1 sets, no 4K aliasing
    between the streams of one loop): the LSTM step's ten per-step histories, written by one loop, would otherwise
    all sit page-aligned."""
    from graphc.codegen.memory import PAGE

    xs = gc.input("xs", (6, "N", 5))
    h = gc.nn.lstm(xs, 32, name="lstm")
    loss = gc.sum(h * h)
    params = gc.nn.parameters(loss)
    fn = gc.compile([loss, *gc.grad(loss, params)], threads=1, cache=False)
    values = gc.nn.init_params(params, seed=0)
    values["xs"] = np.zeros((6, 64, 5), np.float32)
    fn(values)
    p = fn.memory_plan
    large = [(label, off) for label, off, n in p.placement() if n >= PAGE]
    assert len(large) >= 10, large
    residues = [off % PAGE for _, off in large]
    assert len(set(residues)) == len(residues), large
    assert all(off % 64 == 0 for _, off, _ in p.placement())
    assert p.arena_bytes <= p.unshared_bytes + PAGE * len(large)  # the stagger costs under a page each


def test_a_value_several_stores_of_one_loop_share_is_emitted_once():
    x = gc.input("x", ("N", 16))
    s = gc.sigmoid(x)
    one = gc.compile([s * 2.0], cache=False, threads=1)
    two = gc.compile([s * 2.0, s + 1.0], cache=False, threads=1)
    assert len(two.program.kernels) == 1  # one loop, two stores
    assert two.module_text().count("fdiv") == one.module_text().count("fdiv")
    v = np.linspace(-30, 30, 48, dtype=np.float32).reshape(3, 16)
    a, b = two({"x": v})
    ref = 1 / (1 + np.exp(-v.astype(np.float64)))
    np.testing.assert_allclose(a, 2 * ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(b, ref + 1, rtol=1e-6, atol=0)


def test_a_merged_loop_uses_stored_values_instead_of_reading_them_back():
    """The LSTM's forward step loop (gates, cell, stored intermediates, carry copies): no store of it reads a buffer
    an earlier store wrote, and the new carries, read only by their copies, are not stored."""
    from graphc.codegen.kernels import Load, LoopKernel, ScanKernel, all_kernels, walk

    xs = gc.input("xs", (4, "N", 3))
    h = gc.nn.lstm(xs, 16, name="lstm")
    loss = gc.sum(h * h)
    params = gc.nn.parameters(loss)
    fn = gc.compile([loss, *gc.grad(loss, params)], threads=1, cache=False)
    scans = [k for k in all_kernels(fn.program.kernels) if isinstance(k, ScanKernel)]
    assert {k.reverse for k in scans} == {False, True}
    for scan in scans:
        loops = [k for k in all_kernels(scan.body.kernels) if isinstance(k, LoopKernel) and len(k.stores) > 2]
        assert loops
        for k in loops if not scan.reverse else ():  # (the backward's carry reads the old dh in a value it shares)
            written = set()
            for store in k.stores:
                assert not any(isinstance(x, Load) and x.buf in written for x in walk(store.value)), (k.name, store)
                written.add(store.buf)
        stored = {scan.binds[b.index].parent.label for k in all_kernels(scan.body.kernels) for b in k.writes}
        if not scan.reverse:  # h and c are written straight into the carry
            assert not any("_next" in label for label in stored), stored
    placed = {label for label, *_ in fn.memory_plan.placement()}
    forward = next(k for k in scans if not k.reverse)
    assert not any(label.startswith(f"{forward.name}_next") for label in placed), placed


@pytest.mark.parametrize("shape,dtype", [((64, 48), "float32"), ((128, 512), "float32"), ((32, 64), "float64"),
                                         ((40, 24), "float32"), ((40, 20), "float32"), ((48, 32), "int32")])
def test_a_materialized_transpose_runs_in_register_blocks(shape, dtype):
    """A stored transposed view (the LSTM gradient's W_hᵀ, stored once before the loop) is copied in lanes x lanes
    blocks transposed in registers where the dims are whole blocks of the target's lanes (40 x 24 float32 is on
    AVX2's 8 lanes, not on AVX-512's 16; 40 x 20 on neither), element for element the same on 1-3 threads."""
    from graphc.codegen.target import host_target

    lanes = host_target().vector_bits // (8 * np.dtype(dtype).itemsize)
    blocked = all(d % lanes == 0 for d in shape)
    x = gc.input("x", shape, dtype)
    v = (np.random.default_rng(0).standard_normal(shape) * 100).astype(dtype)
    for threads in (1, 2, 3):
        fn = gc.compile(gc.transpose(x), cache=False, threads=threads)
        out = fn({"x": v})
        np.testing.assert_array_equal(out, v.T)
        assert ("tr_i.head" in fn.module_text()) == blocked


def test_compilation_is_one_list_of_named_stages():
    x = gc.input("x", ("N", 3))
    fn = gc.compile(gc.sum(gc.log(gc.sigmoid(x)) * 1.0), cache=False)
    names = [n for n, _ in fn.stages]
    assert names[:11] == ["input", "modes", "simplify", "stability", "dce", "loop bodies", "merge products",
                          "stacked concatenations", "simplify again", "schedule", "fusion"]
    assert names[11] == "memory"
    text = fn.stages_text()
    assert "after schedule" in text and "after memory" in text and "barriers" in text
    assert fn.signature.inputs == (x,)
    _ = fn.llvm_ir
    assert [n for n, _ in fn.stages][-2:] == ["llvm", "object"] or fn.from_cache


def test_products_sharing_their_left_operand_run_as_one_gemm():
    """An LSTM-like step with one weight matrix per gate: four products of h become one (forward), and the
    four weight gradients hᵀ·dZ_i another (backward)."""
    h = gc.input("h", ("N", 12))
    ws = [gc.param(f"gate{i}", (12, 7), init="xavier_uniform") for i in range(4)]
    i, f, g, o = (h @ w for w in ws)
    c = gc.sigmoid(f) * gc.tanh(g) + gc.sigmoid(i)
    loss = gc.sum(gc.sigmoid(o) * gc.tanh(c))
    outs = [loss, *gc.grad(loss, ws)]
    fn = gc.compile(outs, cache=False)
    gemms = [k for k in fn.program.kernels if isinstance(k, GemmKernel)]
    assert len(gemms) == 2  # h·[Wi Wf Wg Wo] and hᵀ·[dZi dZf dZg dZo] (no dh: h is not differentiated)
    vals = dict(gc.nn.init_params(ws, seed=0), h=np.random.default_rng(4).standard_normal((9, 12)).astype(np.float32))
    for got, ref in zip(fn(vals), gc.evaluate(outs, vals), strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6)


def test_a_regrouped_transpose_is_read_by_index_arithmetic_not_stored():
    """The max-pool gradient routes each window's cotangent back to its image through a transpose of the window
    axes and a reshape merging them into rows (N, OH, KH, OW, KW, C) -> (N, H, W, C): the reshape reads the
    transpose's input at floor-divided indices, so no transposed copy is stored; matches the reference."""
    from graphc.codegen.kernels import LoopKernel
    from graphc.ops.movement import _inner_regroup

    N = sympy.Symbol("N")
    assert _inner_regroup((N, 4, 2, 3, 2, 5), (N, 8, 6, 5)) == [([0], [0]), ([1, 2], [1]), ([3, 4], [2]), ([5], [3])]
    assert _inner_regroup((N, 16, 2, 5), (32 * N, 5)) == [([0, 1, 2], [0]), ([3], [1])]
    assert _inner_regroup((6, 4), (4, 6)) is None  # the innermost axis changes: the storage is read
    x = gc.input("x", ("N", 6, 10, 3))
    y = gc.nn.max_pool2d(gc.relu(x), 2)
    loss = gc.sum(y * y)
    outs = [loss, *gc.grad(loss, [x])]
    fn = gc.compile(outs, threads=2)
    assert not [k for k in fn.program.kernels if isinstance(k, LoopKernel) and "transpose" in k.name]
    rng = np.random.default_rng(0)
    v = {"x": rng.normal(size=(3, 6, 10, 3)).astype(np.float32)}
    v["x"][0, 0, :2, 0] = 0.5  # a tie: the cotangent splits
    want = gc.evaluate(outs, {"x": v["x"].astype(np.float64)})
    for got, w in zip(fn(v), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_digits_split_and_merged_again_read_as_one_affine_index():
    """A number's mixed-radix digits recombined (c*Mod(q, r) + c*r*floordiv(q, r) = c*q, nested) give back the
    number, for negative values too; the max-pool gradient read back in a convolution product's rows
    (N*H*W, C) then loads the product's output with strides, a contiguous vector, not a gather per lane."""
    from graphc.codegen.schedule import merge_digits, split_affine

    i, j = ix.var("i"), ix.var("j")
    q1 = floordiv(i, 2)
    q2 = floordiv(q1, 12)
    e = j + 6 * ix.mod(i, 2) + 12 * ix.mod(q1, 12) + 144 * ix.mod(q2, 2) + 288 * floordiv(q2, 2)
    assert merge_digits(e) == 6 * i + j
    assert merge_digits(5 * ix.mod(i, 3) + 10 * floordiv(i, 3)) == 5 * ix.mod(i, 3) + 10 * floordiv(i, 3)
    for v in range(-50, 50):  # the identity the merge relies on, numerically
        assert 6 * (v % 2) + 12 * ((v // 2) % 12) + 144 * ((v // 24) % 2) + 288 * (v // 48) == 6 * v
    from graphc.codegen.schedule import LOOP

    assert split_affine(ix.subs(e, {i: LOOP[0], j: LOOP[1]})) == ({0: 6, 1: 1}, 0)
    x = gc.input("x", ("N", 12, 12, 1))
    c = gc.nn.conv2d(x, 6, 5, padding="valid", name="c")  # relu(product + b): the product's (N*8*8, 6) rows
    loss = gc.sum(gc.nn.max_pool2d(c, 2) ** 2)
    params = gc.nn.parameters(loss)
    outs = [loss, *gc.grad(loss, params)]
    fn = gc.compile(outs, threads=2)
    routed = [k for k in fn.program.kernels if isinstance(k, LoopKernel) and "where" in k.name
              and len(k.domain) == 2]
    assert routed, fn.kernels
    loads = [x for k in routed for s in k.stores for x in walk(s.value) if isinstance(x, Load)]
    assert loads and not [ld for ld in loads if ld.buf.shape == routed[0].domain and ld.terms], fn.kernels
    rng = np.random.default_rng(0)
    v = {**gc.nn.init_params(params, seed=1), "x": rng.normal(size=(3, 12, 12, 1)).astype(np.float32)}
    want = gc.evaluate(outs, {k: a.astype(np.float64) for k, a in v.items()})
    for got, w in zip(fn(v), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(radices=st.lists(st.integers(1, 7), min_size=1, max_size=4),
       weights=st.lists(st.one_of(st.just(0), st.just(0), st.integers(-3, 3)), min_size=5, max_size=5),
       scale=st.integers(1, 5), keep=st.lists(st.one_of(st.just(True), st.booleans()), min_size=5, max_size=5))
def test_merging_digits_never_changes_an_index(radices, weights, scale, keep):
    """Digits of a mixed radix (mostly with the place values that recombine them, else other coefficients), some
    terms dropped: whatever merge_digits rewrites, the expression's value at every integer (negative ones too)
    stays; where every digit and the quotient are kept at their place values, it is scale * i."""
    from graphc.codegen.schedule import merge_digits

    i = ix.var("i")
    terms, q, place = [], i, scale
    for k, r in enumerate(radices):
        # the place value that recombines this digit, or an arbitrary coefficient
        c = place if weights[k] == 0 else weights[k]
        if keep[k]:
            terms.append(c * ix.mod(q, r))
        q, place = floordiv(q, r), place * r
    if keep[-1]:
        terms.append((place if weights[-1] == 0 else weights[-1]) * q)
    e = sum(terms, 0)
    m = merge_digits(e)
    for v in range(-40, 41, 3):
        assert ix.evaluate(e, {i: v}) == ix.evaluate(m, {i: v}), (e, m, v)
    if all(keep) and not any(weights):
        assert m == scale * i, (e, m)


def test_a_fused_formula_shaped_as_a_deep_dag_lowers_and_prints_in_linear_work(monkeypatch):
    """Each level uses the one below twice (y*0.5 + y*y*0.1): the fused formula is a DAG 12 deep, a tree of 2**12
    nodes. Its loop axes (for hoisting) and its printed form are computed once per node (the build of a layer-norm
    model with Adam took minutes in the axes walk); the print is bounded."""
    from graphc.codegen import kernels

    calls = {"axes": 0}
    real = kernels.Apply.axes

    def counted(self):
        calls["axes"] += 1
        return real(self)

    monkeypatch.setattr(kernels.Apply, "axes", counted)
    x = gc.input("x", ("N", 16))
    y = x
    for _ in range(12):
        y = gc.tanh(y * 0.5 + y * y * 0.1)
    fn = gc.compile(y, cache=False)
    assert calls["axes"] < 5_000, calls  # walked as a tree: over a million
    text = str(fn.kernels)
    assert "…" in text and len(text) < 20_000
    v = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_allclose(fn({"x": v}), gc.evaluate(y, {"x": v}), rtol=1e-4, atol=1e-5)


def _deep_chain(n: int):
    x = gc.input("x", ("N", 4))
    h = x
    for i in range(n):
        h = gc.tanh(h * 1.0001 + float(i % 7) / 7)
    loss = gc.sum(h)
    return x, loss, gc.grad(loss, [x])[0]


def test_a_deep_elementwise_chain_compiles_in_work_linear_in_its_length(monkeypatch):
    """Fusing a long chain once walked every store's expression from scratch at every merge (a 1000-layer chain
    and its gradient did not compile in 500 s): the expression visits of scheduling, fusion and emission now
    grow linearly with the depth, and no fused loop holds more than MAX_FUSED_NODES graph nodes (LLVM's time on
    one function grows faster than its length)."""
    from graphc.codegen import emit, kernels
    from graphc.codegen import schedule as sched
    from graphc.codegen.kernels import all_kernels

    visits = [0]
    real = kernels.walk_all

    def counting(exprs, into_guards=True, skip=()):
        for x in real(exprs, into_guards, skip):
            visits[0] += 1
            yield x

    for mod in (kernels, sched, emit):
        monkeypatch.setattr(mod, "walk_all", counting)
    counts = {}
    for n in (40, 80, 160):
        x, loss, g = _deep_chain(n)
        visits[0] = 0
        fn = gc.compile([loss, g], cache=False, threads=1)
        counts[n] = visits[0]
        loops = [k for k in all_kernels(fn.program.kernels) if isinstance(k, LoopKernel)]
        assert max(len(k.nodes) for k in loops) <= sched.MAX_FUSED_NODES
    assert counts[160] < 2.4 * counts[80] < 2.4 ** 2 * counts[40], counts
    v = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    got = fn({"x": v})
    want = gc.evaluate([loss, g], {"x": v})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)
