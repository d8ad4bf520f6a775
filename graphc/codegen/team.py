"""A persistent thread team for a launcher (`graphc_run`, `graphc_epoch`): workers are started on the first
multi-threaded call and then wait between calls: a call within ~2 ms of the last finds them polling (a few µs),
a later one wakes them from a futex (~150 µs on a VM whose idle vCPUs halt); creating and joining threads
instead costs ~25 µs each per call.

Linux only (futex); other targets keep the spawn-per-call launcher in emit.py. One team per launcher and
module, in the module's globals:

    slot  0: gen      i32  job word: (sequence << 10) | threads of the job; only the launcher writes it
    slot  8: pending  i32  workers still running the current job
    slot 16: barrier  2 x i32 (count, generation): the program's barrier, reset before each job
    slot 24: nworkers, 25: quit, 26: sleepers, 27: pid, 28: busy (taken by the launching call; a call that
             finds it taken runs on its own thread), all i32
    slot 29-31: the job's three pointer arguments

A worker knows its thread id; it runs a job only if its id is below the job's thread count, read from the
same word as the sequence, so a worker that slept through a job never runs one it was not counted in. The
launcher waits until `pending` is 0 before it writes the next job. After fork() the child has no workers:
the launcher sees another pid and starts new ones. `graphc_shutdown()` (called before the JIT frees the code,
and as a static destructor of a shared library or binary) stops and joins every team of the module.
"""

from __future__ import annotations

from llvmlite import ir

from graphc.codegen.emit import I32, I64, PTR, VOID, Loop, ModuleEmitter, alloca, c64
from graphc.codegen.target import MAX_WORKERS

_JOB_BITS = 10  # threads per job < 1024
GEN, PENDING, BARRIER, NWORKERS, QUIT, SLEEPERS, PID, BUSY, ARGS = 0, 8, 16, 24, 25, 26, 27, 28, 29
SYS_FUTEX, FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 202, 128, 129
# A worker waiting for the next job spins with `pause` for SPIN_CYCLES time-stamp cycles (~50-100 µs), then
# polls with sched_yield (so a runnable thread that wants its core gets it) until YIELD_CYCLES (~1.5-3 ms), then
# sleeps on the futex. Waking a sleeping worker costs ~150 µs on a VM whose idle vCPUs halt: a Python loop that
# does ~1 ms of work between 2-thread calls of a training step saw 2-thread scaling drop from 1.55x to 1.14x
# with sleeping after 100 µs; polling to ~2 ms kept it at 1.5x.
SPIN_CYCLES = 200_000
YIELD_CYCLES = 4_400_000


def supported(me: ModuleEmitter) -> bool:
    t = me.target.triple
    return t.startswith("x86_64") and "linux" in t


def _c32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


class _Team:
    def __init__(self, me: ModuleEmitter, name: str):
        self.me = me
        m = me.module
        self.name = name
        ty = ir.ArrayType(I64, 40)
        g = ir.GlobalVariable(m, ty, name=f"{name}.team")
        g.initializer = ir.Constant(ty, None)
        g.linkage = "internal"
        g.align = 64
        g.type = PTR  # an opaque ptr: llvmlite would print a typed one, which LLVM 22 rejects
        self.g = g
        tty = ir.ArrayType(I64, MAX_WORKERS)
        tids = ir.GlobalVariable(m, tty, name=f"{name}.tids")
        tids.initializer = ir.Constant(tty, None)
        tids.linkage = "internal"
        tids.type = PTR
        self.tids = tids

    def slot(self, b: ir.IRBuilder, k: int) -> ir.Value:
        return b.gep(self.g, [c64(k)], source_etype=I64)

    def load(self, b, k, order="acquire"):
        return b.load_atomic(self.slot(b, k), order, 4, typ=I32)

    def store(self, b, k, v, order="release"):
        # an exchange: llvmlite's store_atomic needs typed pointers
        b.atomic_rmw("xchg", self.slot(b, k), v, order)


def _futex(me: ModuleEmitter, b: ir.IRBuilder, addr, op: int, val) -> None:
    sc = me.declare("syscall", ir.FunctionType(I64, [I64], var_arg=True))
    args = [c64(SYS_FUTEX), addr, c64(op), val]
    if op == FUTEX_WAIT_PRIVATE:
        args.append(ir.Constant(PTR, None))  # no timeout
    b.call(sc, args)  # variadic: every argument 64 bits wide, as syscall() reads them


def emit_team_launcher(me: ModuleEmitter, name: str, callee: str) -> None:
    """i32 name(ptr a, ptr b, ptr c, i32 nthreads): runs `callee(a, b, c, tid, n, barrier)` for tid < n on the
    caller and the team's workers; returns n, the thread count that ran (fewer than asked if the system
    refuses threads, or above MAX_WORKERS + 1)."""
    m = me.module
    team = _Team(me, name)
    program = m.globals[callee]
    clock = me.declare("llvm.readcyclecounter", ir.FunctionType(I64, []))
    create = me.declare("pthread_create", ir.FunctionType(I32, [PTR, PTR, PTR, PTR]))
    getpid = me.declare("getpid", ir.FunctionType(I32, []))
    yield_fn = me.declare("sched_yield", ir.FunctionType(I32, []))
    job_mask = (1 << _JOB_BITS) - 1

    # ---- worker(ptr arg): arg = id | (job word at start << 32)
    worker = ir.Function(m, ir.FunctionType(PTR, [PTR]), name=f"{name}.worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    raw = b.ptrtoint(worker.args[0], I64)
    wid = b.trunc(raw, I32)
    seen = alloca(b, I32, name="seen")
    b.store(b.trunc(b.lshr(raw, c64(32)), I32), seen)
    t0 = alloca(b, I64, name="t0")
    head = worker.append_basic_block("wait")
    spin = worker.append_basic_block("spin")
    sleep = worker.append_basic_block("sleep")
    got = worker.append_basic_block("got")
    b.store(b.call(clock, []), t0)
    b.branch(head)
    # wait until the job word changes: spin for SPIN_CYCLES, then sleep on the futex
    b.position_at_end(head)
    old = b.load(seen, typ=I32)
    cur = team.load(b, GEN)
    b.cbranch(b.icmp_unsigned("!=", cur, old), got, spin)
    b.position_at_end(spin)
    me.pause(b)
    elapsed = b.sub(b.call(clock, []), b.load(t0, typ=I64))
    polite = worker.append_basic_block("yield")
    b.cbranch(b.icmp_unsigned("<", elapsed, c64(SPIN_CYCLES)), head, polite)
    b.position_at_end(polite)
    b.call(yield_fn, [])
    b.cbranch(b.icmp_unsigned("<", elapsed, c64(YIELD_CYCLES)), head, sleep)
    b.position_at_end(sleep)
    b.atomic_rmw("add", team.slot(b, SLEEPERS), _c32(1), "seq_cst")
    again = team.load(b, GEN, "seq_cst")
    nap = worker.append_basic_block("nap")
    woke = worker.append_basic_block("woke")
    b.cbranch(b.icmp_unsigned("==", again, old), nap, woke)
    b.position_at_end(nap)
    _futex(me, b, team.slot(b, GEN), FUTEX_WAIT_PRIVATE, b.zext(old, I64))
    b.branch(woke)
    b.position_at_end(woke)
    b.atomic_rmw("sub", team.slot(b, SLEEPERS), _c32(1), "seq_cst")
    b.store(b.call(clock, []), t0)
    b.branch(head)
    # a new job word
    b.position_at_end(got)
    b.store(cur, seen)
    quit_ = worker.append_basic_block("quit")
    check = worker.append_basic_block("check")
    b.cbranch(b.icmp_unsigned("!=", team.load(b, QUIT), _c32(0)), quit_, check)
    b.position_at_end(quit_)
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(check)
    nth = b.and_(cur, _c32(job_mask))
    run = worker.append_basic_block("run")
    b.cbranch(b.icmp_signed("<", wid, nth), run, head)
    b.position_at_end(run)
    args = [b.load(team.slot(b, ARGS + k), typ=PTR) for k in range(3)]
    b.call(program, [*args, wid, nth, team.slot(b, BARRIER)])
    b.atomic_rmw("sub", team.slot(b, PENDING), _c32(1), "release")
    b.store(b.call(clock, []), t0)
    b.branch(head)

    # ---- the launcher
    fn = ir.Function(m, ir.FunctionType(I32, [PTR, PTR, PTR, I32]), name=name)
    a0, a1, a2, want = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    solo = fn.append_basic_block("solo")
    lock = fn.append_basic_block("lock")
    b.cbranch(b.icmp_signed("<=", want, _c32(1)), solo, lock)
    b.position_at_end(solo)
    bar = alloca(b, ir.ArrayType(I32, 2), name="barrier")
    b.store(ir.Constant(ir.ArrayType(I32, 2), [0, 0]), bar)
    b.call(program, [a0, a1, a2, _c32(0), _c32(1), bar])
    b.ret(_c32(1))

    # first call in this process (or in a child after fork(), where no worker exists and a lock held by a
    # thread of the parent would never be released): whoever swaps in our pid resets the team
    b.position_at_end(lock)
    pid = b.call(getpid, [])
    seen_pid = team.load(b, PID, "acquire")
    forked = fn.append_basic_block("forked")
    reset = fn.append_basic_block("reset")
    take = fn.append_basic_block("take")
    b.cbranch(b.icmp_signed("!=", seen_pid, pid), forked, take)
    b.position_at_end(forked)
    swap = b.cmpxchg(team.slot(b, PID), seen_pid, pid, "acq_rel", "monotonic")
    b.cbranch(b.extract_value(swap, 1), reset, take)
    b.position_at_end(reset)
    team.store(b, NWORKERS, _c32(0), "monotonic")
    team.store(b, SLEEPERS, _c32(0), "monotonic")
    team.store(b, BUSY, _c32(0), "release")
    b.branch(take)

    # take the team; if another thread is launching on it (a C program calling an exported library from
    # several threads), run this call on the calling thread alone: the results do not depend on the count
    b.position_at_end(take)
    spawn = fn.append_basic_block("spawn")
    res = b.cmpxchg(team.slot(b, BUSY), _c32(0), _c32(1), "acquire", "monotonic")
    b.cbranch(b.extract_value(res, 1), spawn, solo)

    # start workers up to want - 1 (and MAX_WORKERS); a refused thread stops the spawning, not the call
    b.position_at_end(spawn)
    wmax = b.select(b.icmp_signed(">", want, _c32(MAX_WORKERS + 1)), _c32(MAX_WORKERS + 1), want)
    need = b.sub(wmax, _c32(1))
    shead = fn.append_basic_block("spawn.head")
    sbody = fn.append_basic_block("spawn.body")
    sok = fn.append_basic_block("spawn.ok")
    sdone = fn.append_basic_block("spawn.done")
    b.branch(shead)
    b.position_at_end(shead)
    have = team.load(b, NWORKERS, "monotonic")
    b.cbranch(b.icmp_signed("<", have, need), sbody, sdone)
    b.position_at_end(sbody)
    word = team.load(b, GEN, "monotonic")
    arg = b.or_(b.zext(b.add(have, _c32(1)), I64), b.shl(b.zext(word, I64), c64(32)))
    tid_slot = b.gep(team.tids, [b.zext(have, I64)], source_etype=I64)
    rc = b.call(create, [tid_slot, ir.Constant(PTR, None), worker, b.inttoptr(arg, PTR)])
    b.cbranch(b.icmp_signed("==", rc, _c32(0)), sok, sdone)
    b.position_at_end(sok)
    team.store(b, NWORKERS, b.add(have, _c32(1)), "monotonic")
    b.branch(shead)

    b.position_at_end(sdone)
    have = team.load(b, NWORKERS, "monotonic")
    n_run = b.add(b.select(b.icmp_signed("<", have, need), have, need), _c32(1))
    alone = fn.append_basic_block("alone")
    publish = fn.append_basic_block("publish")
    b.cbranch(b.icmp_signed("==", n_run, _c32(1)), alone, publish)
    b.position_at_end(alone)
    b.call(program, [a0, a1, a2, _c32(0), _c32(1), team.slot(b, BARRIER)])
    team.store(b, BUSY, _c32(0))
    b.ret(_c32(1))

    # write the job, then the job word (release), then wake the sleepers
    b.position_at_end(publish)
    for k, v in enumerate((a0, a1, a2)):
        b.store(v, team.slot(b, ARGS + k))
    b.store(c64(0), team.slot(b, BARRIER))
    team.store(b, PENDING, b.sub(n_run, _c32(1)), "monotonic")
    word = team.load(b, GEN, "monotonic")
    seq = b.add(b.lshr(word, _c32(_JOB_BITS)), _c32(1))
    team.store(b, GEN, b.or_(b.shl(seq, _c32(_JOB_BITS)), n_run), "seq_cst")
    wake = fn.append_basic_block("wake")
    run0 = fn.append_basic_block("run0")
    b.cbranch(b.icmp_signed(">", team.load(b, SLEEPERS, "seq_cst"), _c32(0)), wake, run0)
    b.position_at_end(wake)
    _futex(me, b, team.slot(b, GEN), FUTEX_WAKE_PRIVATE, c64(MAX_WORKERS))
    b.branch(run0)
    b.position_at_end(run0)
    b.call(program, [a0, a1, a2, _c32(0), n_run, team.slot(b, BARRIER)])
    # wait for the workers of this job (they finish about when we do: spin, then yield)
    spins = alloca(b, I32, name="spins")
    b.store(_c32(0), spins)
    jhead = fn.append_basic_block("join.head")
    jwait = fn.append_basic_block("join.wait")
    jdone = fn.append_basic_block("join.done")
    b.branch(jhead)
    b.position_at_end(jhead)
    b.cbranch(b.icmp_signed("==", team.load(b, PENDING), _c32(0)), jdone, jwait)
    b.position_at_end(jwait)
    me.relax(b, spins)
    b.branch(jhead)
    b.position_at_end(jdone)
    team.store(b, BUSY, _c32(0))
    b.ret(n_run)

    me.teams.append(team)


def emit_shutdown(me: ModuleEmitter) -> None:
    """void graphc_shutdown(void): stop and join the workers of every team in the module (in this process);
    also registered as a static destructor, so unloading a shared library or exiting a binary joins them."""
    m = me.module
    join = me.declare("pthread_join", ir.FunctionType(I32, [I64, PTR]))
    getpid = me.declare("getpid", ir.FunctionType(I32, []))
    fn = ir.Function(m, ir.FunctionType(VOID, []), name="graphc_shutdown")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    for team in me.teams:
        live = fn.append_basic_block(f"{team.name}.live")
        nxt = fn.append_basic_block(f"{team.name}.next")
        mine = b.icmp_signed("==", team.load(b, PID, "monotonic"), b.call(getpid, []))
        some = b.icmp_signed(">", team.load(b, NWORKERS, "monotonic"), _c32(0))
        b.cbranch(b.and_(mine, some), live, nxt)
        b.position_at_end(live)
        team.store(b, QUIT, _c32(1), "seq_cst")
        word = team.load(b, GEN, "monotonic")
        seq = b.add(b.lshr(word, _c32(_JOB_BITS)), _c32(1))
        team.store(b, GEN, b.shl(seq, _c32(_JOB_BITS)), "seq_cst")  # a new job word with 0 threads: quit
        _futex(me, b, team.slot(b, GEN), FUTEX_WAKE_PRIVATE, c64(MAX_WORKERS))
        n = b.zext(team.load(b, NWORKERS, "monotonic"), I64)
        with Loop(b, c64(0), n, 1, f"{team.name}.join") as i:
            b.call(join, [b.load(b.gep(team.tids, [i], source_etype=I64), typ=I64), ir.Constant(PTR, None)])
        team.store(b, NWORKERS, _c32(0), "monotonic")
        team.store(b, QUIT, _c32(0), "seq_cst")
        b.branch(nxt)
        b.position_at_end(nxt)
    b.ret_void()
    # llvm.global_dtors: run at exit or dlclose of a binary or library built from this module
    ety = ir.LiteralStructType([I32, PTR, PTR])
    aty = ir.ArrayType(ety, 1)
    dt = ir.GlobalVariable(m, aty, name="llvm.global_dtors")
    dt.linkage = "appending"
    dt.initializer = ir.Constant(aty, [ir.Constant(ety, [_c32(65535), fn, ir.Constant(PTR, None)])])
