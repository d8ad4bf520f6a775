"""The training-epoch driver in LLVM IR: one native call runs a whole epoch.

`graphc_epoch(ctx, -, -, nthreads)` takes the sample order (0..n-1, a Fisher-Yates shuffle driven by a
counter-based hash of (seed, epoch, i), so an epoch's order depends on nothing else, or the caller's order),
then for every mini-batch gathers its rows into the batch buffers, sets the batch size, the step number and the
dropout key, runs the program's body (forward, backward and the in-place parameter update), and checks the loss
(kept per step where LOSSES points at n_steps floats). A non-finite loss stops the epoch and reports the step; so
does a failed run-time check of the step (the program's error word, read and cleared after every step).
Python runs only between epochs.

The context is an array of int64 slots (pointers as integers), filled by graphc.runtime.epoch."""

from __future__ import annotations

from llvmlite import ir

from graphc.codegen.emit import F32, F64, I1, I32, I64, PTR, VOID, Loop, ModuleEmitter, c64, static_unroll_only
from graphc.codegen.epoch_abi import (  # noqa: F401 - the driver's interface, re-exported with its emitter
    BAD_STEP,
    BATCH,
    CHECK,
    CTX_SLOTS,
    DIMS,
    DROP_LAST,
    EPOCH,
    KEY_MULT,
    KEYBUF,
    LOSS_SUM,
    LOSSBUF,
    LOSSES,
    MAXSTEPS,
    NSAMP,
    ORDER_GIVEN,
    ORDER_IOTA,
    ORDER_SHUFFLE,
    PERM,
    SEED,
    SHUFFLE,
    STATUS,
    STATUS_CHECK,
    STATUS_NONFINITE,
    STATUS_OK,
    STEP0,
    STEPBUF,
    STEPS_DONE,
    TABLE,
    WS,
    XB,
    YB,
    EpochSpec,
    X,
    Y,
    permutation,
    shuffle_hash,
)


def emit_epoch(spec: EpochSpec):
    """An `extras` hook for ModuleEmitter.emit that adds graphc_epoch."""

    def extra(me: ModuleEmitter) -> None:
        _emit(me, spec)

    return extra


def _emit(me: ModuleEmitter, spec: EpochSpec) -> None:
    m = me.module
    program = m.globals[me.PROGRAM_BODY]  # the floating-point environment is set once, for the whole epoch
    memcpy = ir.Function(m, ir.FunctionType(VOID, [PTR, PTR, I64, I1]), name="llvm.memcpy.p0.p0.i64")
    fn = ir.Function(m, ir.FunctionType(VOID, [PTR, PTR, PTR, I32, I32, PTR]), name="graphc_epoch_worker")
    fn.linkage = "internal"
    ctx, _, _, tid, nth, bar = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    saved_fp = me.flush_denormals(b)

    def slot(k):
        return b.gep(ctx, [c64(k)], source_etype=I64)

    def get(k):
        return b.load(slot(k), typ=I64)

    def getp(k):
        return b.load(slot(k), typ=PTR)

    def put(k, v):
        b.store(v, slot(k))

    def barrier():
        me.sync(b, bar, nth)

    def if_tid0(body):
        yes = fn.append_basic_block("t0")
        cont = fn.append_basic_block("t0.cont")
        b.cbranch(b.icmp_signed("==", tid, ir.Constant(I32, 0)), yes, cont)
        b.position_at_end(yes)
        body()
        b.branch(cont)
        b.position_at_end(cont)

    table, dims, ws = getp(TABLE), getp(DIMS), getp(WS)
    xsrc, ysrc, perm = getp(X), getp(Y), getp(PERM)
    xb, yb = getp(XB), getp(YB)
    n, batch, epoch, seed = get(NSAMP), get(BATCH), get(EPOCH), get(SEED)
    step0, maxsteps = get(STEP0), get(MAXSTEPS)

    # --- shuffle (thread 0), everyone waits for the order
    def shuffle():
        mode = get(SHUFFLE)
        fill = fn.append_basic_block("iota")
        filled = fn.append_basic_block("iota.done")
        b.cbranch(b.icmp_signed("!=", mode, c64(ORDER_GIVEN)), fill, filled)  # a given order is in PERM already
        b.position_at_end(fill)
        with Loop(b, c64(0), n, 1, "iota") as i:
            b.store(i, b.gep(perm, [i], source_etype=I64))
        b.branch(filled)
        b.position_at_end(filled)
        on = b.icmp_signed("==", mode, c64(ORDER_SHUFFLE))
        do = fn.append_basic_block("shuffle")
        done = fn.append_basic_block("shuffle.done")
        b.cbranch(on, do, done)
        b.position_at_end(do)
        # i from n-1 down to 1: k = n-1-i runs up from 0
        with Loop(b, c64(0), b.sub(n, c64(1)), 1, "fy") as k:
            i = b.sub(b.sub(n, c64(1)), k)
            z = b.add(b.add(b.add(b.mul(seed, c64(0xD1342543DE82EF95)), b.mul(epoch, c64(0x9E3779B97F4A7C15))),
                            b.mul(i, c64(0xBF58476D1CE4E5B9))), c64(1))
            z = b.mul(b.xor(z, b.lshr(z, c64(30))), c64(0xBF58476D1CE4E5B9))
            z = b.mul(b.xor(z, b.lshr(z, c64(27))), c64(0x94D049BB133111EB))
            z = b.xor(z, b.lshr(z, c64(31)))
            i128 = ir.IntType(128)
            j = b.trunc(b.lshr(b.mul(b.zext(z, i128), b.zext(b.add(i, c64(1)), i128)), ir.Constant(i128, 64)), I64)
            pi = b.gep(perm, [i], source_etype=I64)
            pj = b.gep(perm, [j], source_etype=I64)
            vi, vj = b.load(pi, typ=I64), b.load(pj, typ=I64)
            b.store(vj, pi)
            b.store(vi, pj)
        b.branch(done)
        b.position_at_end(done)
        put(LOSS_SUM, c64(0))
        put(STEPS_DONE, c64(0))
        put(STATUS, c64(STATUS_OK))
        put(BAD_STEP, c64(-1))
        put(CHECK, c64(0))

    if_tid0(shuffle)
    barrier()

    full = b.sdiv(n, batch)
    partial = b.icmp_signed("!=", b.srem(n, batch), c64(0))
    keep_last = b.and_(partial, b.icmp_signed("==", get(DROP_LAST), c64(0)))
    nsteps = b.add(full, b.zext(keep_last, I64))
    limited = b.icmp_signed(">=", maxsteps, c64(0))
    nsteps = b.select(b.and_(limited, b.icmp_signed("<", maxsteps, nsteps)), maxsteps, nsteps)
    xrow, yrow = c64(spec.x_row_bytes), c64(spec.y_row_bytes)
    dim_ptr = b.gep(dims, [c64(spec.n_dim)], source_etype=I64)

    loop_exit = fn.append_basic_block("epoch.exit")
    word = m.globals.get("graphc_error")  # the body's run-time checks' error word, where it has checks
    with Loop(b, c64(0), nsteps, 1, "step") as s:
        start = b.mul(s, batch)
        rest = b.sub(n, start)
        nb = b.select(b.icmp_signed("<", rest, batch), rest, batch)

        def setup():
            b.store(nb, dim_ptr)
            gstep = b.add(b.add(step0, s), c64(1))  # 1 for the first step ever (Adam's bias correction)
            if spec.has_step:
                sp = getp(STEPBUF)
                if spec.step_dtype in ("float32", "float64"):
                    val = b.sitofp(gstep, F64 if spec.step_dtype == "float64" else F32)
                else:  # an integer step (int32 wraps past 2**31 - 1 steps, as an int32 counter would)
                    val = b.trunc(gstep, I32) if spec.step_dtype == "int32" else gstep
                b.store(val, sp)
            if spec.has_key:
                key = b.add(b.mul(seed, c64(KEY_MULT)), b.add(step0, s))
                b.store(key, getp(KEYBUF))

        if_tid0(setup)
        # gather this batch's rows, split over the threads
        tid64 = b.sext(tid, I64)
        nth64 = b.sext(nth, I64)
        per = b.sdiv(b.add(nb, b.sub(nth64, c64(1))), nth64)
        lo = b.mul(tid64, per)
        lo = b.select(b.icmp_signed("<", lo, nb), lo, nb)
        hi = b.add(lo, per)
        hi = b.select(b.icmp_signed("<", hi, nb), hi, nb)
        with Loop(b, lo, hi, 1, "row") as r:
            src = b.load(b.gep(perm, [b.add(start, r)], source_etype=I64), typ=I64)
            b.call(memcpy, [b.gep(xb, [b.mul(r, xrow)], source_etype=ir.IntType(8)),
                            b.gep(xsrc, [b.mul(src, xrow)], source_etype=ir.IntType(8)), xrow,
                            ir.Constant(I1, 0)])
            if spec.y_row_bytes:
                b.call(memcpy, [b.gep(yb, [b.mul(r, yrow)], source_etype=ir.IntType(8)),
                                b.gep(ysrc, [b.mul(src, yrow)], source_etype=ir.IntType(8)), yrow,
                                ir.Constant(I1, 0)])
        barrier()
        # a non-finite loss or a failed check seen by thread 0 after the previous step stops everyone here, together
        stop = b.icmp_signed("!=", get(STATUS), c64(STATUS_OK))
        go = fn.append_basic_block("step.run")
        b.cbranch(stop, loop_exit, go)
        b.position_at_end(go)
        b.call(program, [table, dims, ws, tid, nth, bar])
        barrier()

        def check():
            after = fn.append_basic_block("check.after")
            if word is not None:
                # a failed index check (a label or token id out of range): the step read clamped rows, so
                # neither its loss nor its update is to be trusted; the epoch stops before the next step
                code = b.load(word, typ=I32)
                failed = fn.append_basic_block("check.failed")
                passed = fn.append_basic_block("check.passed")
                b.cbranch(b.icmp_signed("!=", code, ir.Constant(I32, 0)), failed, passed)
                b.position_at_end(failed)
                b.store(ir.Constant(I32, 0), word)
                put(STATUS, c64(STATUS_CHECK))
                put(BAD_STEP, s)
                put(CHECK, b.sext(code, I64))
                b.branch(after)
                b.position_at_end(passed)
            loss = b.load(getp(LOSSBUF), typ=F32)
            ok = b.fcmp_ordered("<", b.call(_fabs(m), [loss]), ir.Constant(F32, float("inf")))
            good = fn.append_basic_block("loss.ok")
            bad = fn.append_basic_block("loss.bad")
            b.cbranch(ok, good, bad)
            b.position_at_end(good)
            acc_p = slot(LOSS_SUM)
            acc = b.bitcast(b.load(acc_p, typ=I64), F64)
            acc = b.fadd(acc, b.fmul(b.fpext(loss, F64), b.sitofp(nb, F64)))
            b.store(b.bitcast(acc, I64), acc_p)
            put(STEPS_DONE, b.add(s, c64(1)))
            losses = getp(LOSSES)  # the per-step losses, where the caller asked for them
            keep = fn.append_basic_block("loss.keep")
            kept = fn.append_basic_block("loss.kept")
            b.cbranch(b.icmp_unsigned("!=", losses, ir.Constant(PTR, None)), keep, kept)
            b.position_at_end(keep)
            b.store(loss, b.gep(losses, [s], source_etype=F32))
            b.branch(kept)
            b.position_at_end(kept)
            b.branch(after)
            b.position_at_end(bad)
            put(STATUS, c64(STATUS_NONFINITE))
            put(BAD_STEP, s)
            b.branch(after)
            b.position_at_end(after)

        if_tid0(check)
    b.branch(loop_exit)
    b.position_at_end(loop_exit)
    me.restore_fp_env(b, saved_fp)
    b.ret_void()
    static_unroll_only(fn)  # its loops run once a step or an epoch: copies of them would cost compile time only
    me.emit_launcher("graphc_epoch", "graphc_epoch_worker")



def _fabs(m: ir.Module) -> ir.Function:
    f = m.globals.get("llvm.fabs.f32")
    return f if f is not None else ir.Function(m, ir.FunctionType(F32, [F32]), name="llvm.fabs.f32")
