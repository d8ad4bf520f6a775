"""The JIT: `gc.compile(outputs)` lowers a graph to native code and returns a callable with the contract of
`gc.evaluate` (same values mapping, same results), checked at the boundary so native code never sees
unchecked input.

Inspection: `fn.stages` (the graph after each pass), `fn.kernels` (the loop-level kernel IR), `fn.llvm_ir`,
`fn.asm`, `fn.memory_plan` (the arena's peak bytes and which temporaries share storage)."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import replace
from fractions import Fraction

import numpy as np

from graphc.codegen.memory import MemoryPlan
from graphc.codegen.memory import plan as memory_plan
from graphc.codegen.target import (
    MAX_WORKERS,
    Engine,
    Target,
    assembly,
    host_target,
    level_target,
    load_llvm_in_background,
)
from graphc.errors import CompileError, DTypeError, GraphcError, InputError, NumericalError, ShapeError
from graphc.ir.graph import Graph
from graphc.ir.node import (
    Node,
    capture_source,
    nodes_in_mode,
    nodes_within,
    output_form,
    output_nodes,
    shaped_like,
    topo_order,
)
from graphc.ir.shapes import FLOAT_DTYPES
from graphc.ops.random import KEY_NAME
from graphc.runtime import cache as disk_cache
from graphc.runtime.buffers import aligned_bytes
from graphc.runtime.reference import bind_values, check_dims_bound, key_hint, leaves_by_name


def _stages():
    """The compiler's stages (kernel IR, sympy, LLVM IR): imported when a program is compiled or inspected, not
    when one found in the disk cache runs."""
    from graphc.codegen import stages

    return stages


RUN_ARGS = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)


# What a call costs, roughly, for choosing how many threads it uses (measured here on a 2-vCPU Xeon): starting
# and joining a worker thread, one thread's GEMM rate, and one element of a fused loop or reduction.
SPAWN_SECONDS = 25e-6
GEMM_FLOPS = 150e9
LOOP_SECONDS = 0.5e-9


def default_threads() -> int:
    env = os.environ.get("GRAPHC_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise GraphcError(f"GRAPHC_THREADS must be an integer, got {env!r}") from None
        if not 1 <= n <= MAX_THREADS:
            raise GraphcError(f"GRAPHC_THREADS must be from 1 to {MAX_THREADS}, got {env!r}")
        return n
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


MAX_THREADS = MAX_WORKERS + 1  # the native thread team's limit: its workers and the calling thread


def check_threads(threads, where: str) -> int | None:
    """`threads` as an int in [1, MAX_THREADS], or None (automatic); anything else is the caller's mistake."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
        raise InputError(f"{where}: threads must be an int from 1 to {MAX_THREADS}, or None for the default "
                         f"(the CPUs this process may use); got {threads!r}")
    return int(threads)


def _probe_data_offset() -> int | None:
    """Where CPython keeps an ndarray's data pointer inside the array object (numpy's PyArrayObject_fields:
    `data` right after the object header), checked on this interpreter and numpy build against
    ``__array_interface__``; None (other interpreters, free-threaded builds, a different layout): not used."""
    if sys.implementation.name != "cpython":
        return None
    off = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type
    try:
        base = np.arange(24, dtype=np.float64).reshape(4, 6)
        for a in (np.empty(5, np.float32), base, base[1:], base[::2, 3:], base.T, np.asarray(base, np.int32)):
            if ctypes.c_void_p.from_address(id(a) + off).value != a.__array_interface__["data"][0]:
                return None
    except Exception:  # pragma: no cover - depends on the interpreter
        return None
    return off


_DATA_OFFSET = _probe_data_offset()
_from_address = ctypes.c_void_p.from_address


def data_address(a: np.ndarray) -> int:
    """The address of `a`'s first element: read from the array object where that was verified at import (0.1 µs;
    ``a.ctypes.data`` and ``__array_interface__`` take 0.8-0.9 µs, paid per array and call)."""
    if _DATA_OFFSET is None:
        return a.__array_interface__["data"][0]
    return _from_address(id(a) + _DATA_OFFSET).value or 0


_get_ident = threading.get_ident


class CallLock:
    """One call (or epoch) of a compiled function at a time. Other threads wait; the thread already inside a call
    entering again (a signal handler, a callback run from the call) would wait on itself forever, and cannot be
    let in either (the call in progress owns the arena its results are still being copied out of): an error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> CallLock:
        me = _get_ident()
        if self._owner == me:
            raise GraphcError("a compiled function was called again from inside one of its own calls on the same "
                              "thread (a signal handler or a callback that runs during the call): it cannot run "
                              "while its arena is in use; call it after the outer call returns, or from another "
                              "compiled function (gc.compile the graph again)")
        self._lock.acquire()
        self._owner = me
        return self

    def __exit__(self, *exc) -> None:
        self._owner = None
        self._lock.release()


# gc.compile's options: given to a call by mistake, they are not value names
COMPILE_OPTIONS = ("updates", "training", "check_finite", "target", "cache", "profile")


class CompiledFunction:
    """A graph compiled to native code. Call it like `gc.evaluate`: `fn(values)` or `fn(**values)`."""

    def __init__(self, outputs, *, updates: Mapping | None = None, training: bool = False,
                 threads: int | None = None, check_finite: bool = False, target: Target | str | None = None,
                 cache: bool = True, profile: bool = False):
        self.profile = profile
        self._single = isinstance(outputs, Node)
        # the form the results come back in (shaped_like): the one tensor, or a copy of the caller's nesting
        outs = output_nodes(outputs, "compile")  # checked first: output_form takes a well-formed nesting
        self._form = output_form(outputs) if not isinstance(outputs, Iterator) else None
        self._n_results = len(outs)
        update_leaves: list[Node] = []
        if updates is not None and not isinstance(updates, Mapping):
            raise GraphcError(f"compile: updates must be a dict {{input or param: its new value}}, got "
                              f"{type(updates).__name__}")
        self._update_ids = {id(leaf) for leaf in (updates or {})}
        for leaf, value in (updates or {}).items():
            if not isinstance(leaf, Node) or leaf.op.name not in ("input", "param"):
                raise GraphcError(f"compile: updates must map inputs or parameters to new values, got key {leaf!r}")
            if not isinstance(value, Node) or value.shape != leaf.shape or value.dtype != leaf.dtype:
                raise GraphcError(f"compile: the update of {leaf.name!r} ({leaf.type_str}) must be a tensor of the "
                                  f"same shape and dtype, got {value!r}")
            update_leaves.append(leaf)
            outs = outs + [value]
        if updates and not training:
            _refuse_state_updates_in_inference(outs[:self._n_results], updates)
        self.training = training
        self._outputs = outs  # the results, then the updates' values: what a call with an empty dim evaluates
        self.check_finite = check_finite
        threads = check_threads(threads, "compile")
        self.threads = threads or default_threads()
        self._auto_threads = threads is None  # then small calls run on fewer threads (see _threads_for)
        self._thread_memo: dict = {}
        self._cost_terms: list | None = None
        self.last_threads = 0  # how many threads the last call ran on
        if isinstance(target, str):
            target = level_target(target)
        self.target = target or host_target()
        graph = Graph.of(outs)
        order = topo_order(outs)
        leaves_by_name(order)  # two leaves of one name could not be told apart in `values`
        check_dims_bound(order, {s for n in order if n.op.name in ("input", "param") for d in n.shape
                                 if not isinstance(d, int) for s in d.free_symbols}, "compile")
        extra = tuple(leaf for leaf in update_leaves if all(leaf is not i for i in graph.inputs))
        graph = Graph(graph.outputs, graph.inputs + extra)
        updated = tuple((self._n_results + k, leaf) for k, leaf in enumerate(update_leaves))
        self._graph, self._updated = graph, updated
        self._compilation = None
        self._lock = CallLock()  # a call, or a whole epoch (EpochFunction.run_epoch), at a time
        _LIVE.add(self)
        self._plan: MemoryPlan | None = None
        self._fits_env: list[int] | None = None  # dims the current plan was last checked to hold
        self._env_checked: list[int] | None = None  # the last dims _check_env accepted, and its verdict
        self._env_empty = False
        self._dim_checks: tuple | None = None
        self._plan_threads = 0
        self._arena: np.ndarray | None = None
        self._ws: np.ndarray | None = None
        position = {id(leaf): i for i, leaf in enumerate(graph.inputs)}
        key = disk_cache.key(outs, self.training, self.target,
                             [(pos, position[id(leaf)]) for pos, leaf in updated], self.variant())
        self.cache_key = key
        # a program in the disk cache runs from its machine code and its run-time spec: no stage runs (the stages
        # run when something asks for them: fn.stages, fn.kernels, fn.llvm_ir)
        # on a miss, processes compiling the same program at once (ranks, test workers) compile it once: under its
        # lock (held until stored) the cache is read again, another process may have stored it in the meantime
        with ExitStack() as locked:
            found, engine = self._cached(key) if cache else (None, None)
            if engine is None and cache and locked.enter_context(disk_cache.compiling(key)):
                found, engine = self._cached(key)
            self.from_cache = engine is not None
            if engine is None:
                c = self.compilation  # every stage up to the memory layout
                spec = c.layout.spec(self.target)
                if spec.checks:  # their source lines as references to this graph's nodes (see check_message)
                    spec = replace(spec, checks=[_check_template(m, order) for m in spec.checks])
                read = {id(n) for n in nodes_within(topo_order(c.graph.outputs))}  # after every graph pass
                spec = replace(spec, unread=tuple(i for i, leaf in enumerate(c.signature.inputs)
                                                  if id(leaf) not in read))
                found = (spec, tuple(position[id(leaf)] for leaf in c.signature.inputs))
            self.rt, kept = found  # what a call needs of the program (codegen.memory.ProgramSpec)
            self.signature = Graph(graph.outputs, tuple(graph.inputs[i] for i in kept))  # what a call feeds, in order
            slot = {id(leaf): i for i, leaf in enumerate(self.signature.inputs)}
            self.updates = {pos: slot[id(leaf)] for pos, leaf in updated}  # output -> signature slot
            # a training signature is kept whole (the epoch driver, graphc build and the data-parallel trainer find
            # their slots by it), so its key may be a slot the program never reads: a call need not give it then
            self._key_leaf = next((leaf for leaf in self.signature.inputs if leaf.name == KEY_NAME), None)
            self._reads_key = self._key_leaf is not None and slot[id(self._key_leaf)] not in self.rt.unread
            if engine is None:
                obj = self._build()
                engine = Engine.from_object(obj, self.target)
                if cache:
                    disk_cache.store(key, obj)
                    disk_cache.store_spec(key, *found)
        self._engine = engine
        self._run = engine.function("graphc_run", ctypes.c_int32, *RUN_ARGS)
        self._nbuf = len(self.rt.buffers)
        self._consts = self.rt.consts
        self._prepare_fast_path()
        # the run-time checks' error word (an index out of range in a gather or scatter), read after each call
        self._error = None
        if self.rt.checks:
            addr = engine.global_address("graphc_error")
            if not addr:
                raise CompileError("internal: the program has run-time checks but no error word (graphc_error)")
            self._error = ctypes.c_int32.from_address(addr)

    def _cached(self, key: str) -> tuple:
        """(run-time spec, engine) of the program `key` from the disk cache; the engine None on a miss."""
        found = disk_cache.load_spec(key)
        return found, disk_cache.load(key, self.target) if found is not None else None

    @property
    def compilation(self):
        """Every stage's value (a codegen.stages.Compilation); run on first use for a program found in the disk
        cache (the compiler's stages, and sympy with them, are imported only then)."""
        if self._compilation is None:
            stages = _stages()
            options = stages.Options(self.target, self.training, self._updated, self.profile, link_helpers=True)
            self._compilation = stages.run(self._graph, options, code=False)
        return self._compilation

    @property
    def program(self):
        """The scheduled program (the kernel IR)."""
        return self.compilation.program

    @property
    def barriers(self) -> list[bool]:
        return self.rt.barriers

    # ------------------------------------------------------------------------------------------ building
    @property
    def stages(self) -> list[tuple[str, object]]:
        """(name, value) after every stage of the compilation, the input graph first (see codegen.stages). A
        program found in the compile cache ran no code stages: its LLVM module is emitted now (as `llvm_ir` does)
        and its machine code read back from the cache, so the list is the same either way."""
        c = self.compilation
        if self.from_cache and not any(n == "object" for n, _ in c.stages):
            self._module()
            c.stages.append(("object", _stages().ObjectCode(disk_cache.stored(self.cache_key) or b"", cached=True)))
        return c.stages

    @property
    def graph(self):
        """The graph after the last graph pass (what the schedule lowered)."""
        return self.compilation.graph

    def variant(self) -> str:
        """What else the module holds besides the program (subclasses add drivers); part of the cache key."""
        return "profile" if self.profile else ""

    def extras(self) -> tuple:
        """Functions that add to the module besides the program (subclasses: the epoch driver, the initializer)."""
        return ()

    def profile_report(self, reset: bool = True) -> list[tuple[str, float, float]]:
        """With `profile=True`: (kernel, seconds in it, seconds waiting at the barrier before it) for thread 0,
        summed over the calls since the last report, slowest first. A loop's body kernels are rows of their own
        (their names start with the loop's); the loop's row holds its whole run, the body kernels included."""
        if not self.profile:
            raise GraphcError("compile with profile=True to count time per kernel")
        names = self.rt.kernel_names
        n = len(names)
        addr = self._engine.global_address("graphc_profile")
        counts = np.ctypeslib.as_array((ctypes.c_int64 * (2 * n)).from_address(addr))
        hz = _tsc_hz()
        rows = [(name, counts[2 * i] / hz, counts[2 * i + 1] / hz) for i, name in enumerate(names)]
        if reset:
            counts[:] = 0
        return sorted(rows, key=lambda r: -r[1])

    def module_text(self, target: Target | None = None, extras: bool = True) -> str:
        """The LLVM IR of this program (with the subclass's drivers unless `extras` is False), for `target`
        (default: the one compiled for)."""
        if (target is None or target is self.target) and extras:
            return self.llvm_ir
        opts = replace(self.compilation.options, target=target or self.target,
                       extras=self.extras() if extras else (), link_helpers=False)
        return _stages().llvm(self.compilation.layout, opts).text

    def _module(self):
        """The program's LLVM module with the subclass's drivers (emitted on first use)."""
        self.compilation.options = replace(self.compilation.options, extras=self.extras())
        return self.compilation.module()

    def _build(self) -> bytes:
        load_llvm_in_background()  # while the module is emitted
        from graphc.codegen import parallel

        if parallel.wants_split(self.program):
            parallel.prestart()  # the helper process that compiles part of it, also while it is emitted
        try:
            self._module()
        except CompileError:
            raise
        except Exception as e:  # an emission bug: say what failed, briefly (the chained exception has the rest)
            msg = str(e)
            msg = msg if len(msg) <= 300 else msg[:300] + " ..."
            outs = ", ".join(o.type_str for o in self.signature.outputs[:4])
            raise CompileError(f"compile: code generation failed ({type(e).__name__}: {msg}) for a graph with "
                               f"outputs {outs}; this is a graphc bug: please report it with the graph "
                               "(gc.show(outputs))") from e
        return self.compilation.object_code().data

    # ------------------------------------------------------------------------------------------ inspection
    @property
    def kernels(self) -> str:
        """The loop-level kernel IR, one block per kernel, in execution order."""
        return str(self.program)

    @property
    def llvm_ir(self) -> str:
        """The LLVM IR as emitted (before LLVM's optimizer), the GEMM helpers defined in it (the module compiled
        for this process may only declare them: it is linked with their library)."""
        module = self._module()
        if module.helpers_declared or module.parts:
            return _stages().llvm(self.compilation.layout, replace(self.compilation.options, link_helpers=False)).text
        return module.text

    @property
    def asm(self) -> str:
        """The optimized machine code for the target, as assembly."""
        return assembly(self.llvm_ir, self.target)

    @property
    def memory_plan(self) -> MemoryPlan:
        """The arena plan of the last call (or, before any call, for every symbolic dim = 1)."""
        return self._plan or memory_plan(self.rt, {s: 1 for s in self.rt.symbols}, self.threads, self.target)

    def _repr_svg_(self) -> str:  # notebooks: draw the fused kernels lazily; viz sits above the runtime
        from graphc.viz import svg

        return svg.to_svg(self)

    def _kernel(self, name: str):
        for k in self.program.kernels:
            if k.name == name:
                return k
        raise GraphcError(f"no kernel named {name!r}; the kernels are {[k.name for k in self.program.kernels]}")

    def kernel_ir(self, name: str) -> str:
        """The LLVM IR of one kernel (as emitted, before optimization), e.g. fn.kernel_ir("k0_matmul"). A loop
        (`gc.scan`) has no function of its own: its IR is its body's kernels and the loop around them, in the
        program's body function of a program made of that loop alone."""
        k = self._kernel(name)
        text = self.llvm_ir
        if f'@"{name}"(' not in text:
            text = self._alone_ir(k)
            return "\n".join(_defines(text, lambda f: f.startswith(f"{name}_") or f == "graphc_program.body"))
        start = text.index(f'@"{name}"(')
        start = text.rindex("define", 0, start)
        return text[start:text.index("\n}\n", start) + 2]

    def _alone_ir(self, k) -> str:
        from dataclasses import replace

        alone = replace(self.program, kernels=[k])
        stages = _stages()
        return stages.llvm(stages.Layout(alone, [False]), replace(self.compilation.options, extras=(),
                                                                  profile=False, link_helpers=False)).text

    def kernel_asm(self, name: str) -> str:
        """The optimized machine code of one kernel alone (in the whole program LLVM may inline it); of a loop
        (`gc.scan`), the program body that runs it, its body's kernels inlined (the GEMMs stay calls)."""
        k = self._kernel(name)
        text = self._alone_ir(k).replace(f'define internal void @"{name}"', f'define void @"{name}"')
        asm = assembly(text, self.target)
        label = f"{name}:" if f"\n{name}:" in asm else "graphc_program.body:"
        start = asm.index(label)
        end = asm.find(".Lfunc_end", start)
        return asm[start:end if end > 0 else None]

    def stages_text(self) -> str:
        """The value after each stage of the compilation (graphs, kernels, barriers), as text."""
        return self.compilation.text()

    def show_stages(self) -> None:
        """Print the graph after each pass (see `stages_text`)."""
        print(self.stages_text())

    def check_message(self, code: int) -> str:
        """What run-time check `code` (1-based) found, located at the lines that built THIS graph: a program from
        the disk cache was compiled for a graph of the same structure, maybe built by other lines or files."""
        return _render_check(self.rt.checks[code - 1], topo_order(self._graph.outputs))

    # ------------------------------------------------------------------------------------------ calling
    def _prepare_fast_path(self) -> None:
        """Per-call checks precomputed: which leaf each key names, what each dim must be, how to size
        outputs. Anything unusual falls back to the full (slow, precise) check, which raises."""
        prog = self.rt
        g = self.signature
        self._symbols = list(prog.symbols)
        sym_index = {s: i for i, s in enumerate(self._symbols)}
        self._leaf_specs = []  # (leaf, table slot, dtype, [(int dim) or (symbol index as -1-k)])
        self._by_key: dict = {}
        for leaf, buf in zip(g.inputs, [prog.buffers[i] for i in prog.inputs], strict=True):
            dims = []
            for d in leaf.shape:
                if isinstance(d, int):
                    dims.append(d)
                elif d in sym_index:
                    dims.append(-1 - sym_index[d])
                else:
                    dims = None
                    break
            spec = (leaf, buf.index, np.dtype(leaf.dtype), dims)
            self._leaf_specs.append(spec)
            self._by_key[leaf.name] = spec
            self._by_key[id(leaf)] = spec
        self._out_specs = []
        outputs = [prog.buffers[i] for i in prog.outputs]
        for buf in outputs[:self._n_results]:
            self._out_specs.append((buf.index, np.dtype(buf.dtype), [self._dim_fn(d) for d in buf.shape]))
        self._written = {prog.inputs[j] for j in self.updates.values()}
        # (table slot, array, address) bound for an unread key that a call leaves out
        self._spare_key = None
        if self._key_leaf is not None and not self._reads_key:
            zero = np.zeros((), dtype=self._key_leaf.dtype)
            self._spare_key = (self._by_key[id(self._key_leaf)][1], zero, data_address(zero))
        self._apart: tuple | None = None  # the input spans last found apart from the arrays updated in place
        slots = [spec[0] for spec in self._out_specs]
        # an output that repeats an earlier one (the same tensor asked for twice): (its index, the earlier's)
        self._repeats = [(k, slots.index(s)) for k, s in enumerate(slots) if slots.index(s) < k]
        self._repeated = frozenset(k for k, _ in self._repeats)
        # the large output arrays of the last call, reused by the next one where the caller dropped them
        self._recycle: list[np.ndarray | None] = [None] * len(self._out_specs)
        # output shapes known without the runtime dims (None where one depends on them)
        self._static_out_shapes = [tuple(f(None) for f in dims) if all(isinstance(d, int) for d in buf.shape)
                                   else None for (_, _, dims), buf in zip(self._out_specs, outputs, strict=False)]
        base = np.zeros(self._nbuf, dtype=np.uintp)
        for idx, a in self._consts.items():
            base[idx] = a.ctypes.data
        self._base_table = base
        self._index_checks = self._input_indices()
        # a program whose kernels check indices no call checks first (computed ones): the arrays it writes in place
        # and the caller's out= arrays are copied before each call and restored if a check fails
        self._keep_on_check = bool(self.rt.checks) and self._checks_computed_indices()

    def _checks_computed_indices(self) -> bool:
        """Whether some gather or scatter reads indices that `_input_indices` does not check before a call (a
        computed index, labels shifted by `low`), in a loop's body too."""
        from graphc.ops.gather import SCATTER_ADD, TAKE

        pre = {slot for _, slot, _ in self._index_checks}
        return any((n.op is TAKE and n.attrs.get("low", 0)) or self._index_slot(n) not in pre
                   for n in nodes_within(topo_order(self._graph.outputs)) if n.op is TAKE or n.op is SCATTER_ADD)

    def _index_slot(self, n: Node) -> int | None:
        """The table slot of the input whose values are gather or scatter `n`'s indices (through reshapes), or None
        where they are computed."""
        leaf = n.inputs[1]
        while leaf.op.name == "reshape":
            leaf = leaf.inputs[0]
        spec = self._by_key.get(id(leaf)) if leaf.op.name == "input" else None
        return None if spec is None else spec[1]

    def _input_indices(self) -> list:
        """The gathers whose indices are an input's values (embedding ids, class labels): (the gather, its table
        slot, the range's size as a function of the dims). A call checks them before any native code runs, so a bad
        id changes nothing; inside the kernels (where computed indices are checked) it is found only after the
        step has run, with parameters updated in place and `out=` arrays written."""
        from graphc.ops.gather import TAKE

        found, seen = [], set()
        for n in topo_order(self._graph.outputs):
            if n.op is not TAKE or n.attrs.get("low", 0):
                continue
            slot = self._index_slot(n)
            size = n.inputs[0].shape[n.attrs["axis"]]
            if slot is not None and (slot, size) not in seen:
                seen.add((slot, size))
                found.append((n, slot, self._dim_fn(size)))
        return found

    def _check_input_indices(self, bound: dict, env: list[int]) -> None:
        from graphc.ops.gather import _in_range

        for node, slot, size in self._index_checks:
            a = bound[slot][0]
            if not a.size:
                continue
            if a.size <= 64:  # a batch's labels: Python's min and max of a list cost half of numpy's reductions
                v = a.ravel().tolist()
                lo, hi = min(v), max(v)
            else:
                lo, hi = a.min(), a.max()
            n = size(env)
            if lo < 0 or hi >= n:
                try:
                    _in_range(node, a, n)
                except InputError as e:
                    raise InputError(f"compiled function: {e}; nothing was run (no parameter updated, no output "
                                     "written)") from None

    def _fast_bind(self, values: Mapping):
        """(table slot -> array, dims) when every value is exactly right, else None."""
        spare = self._spare_key
        n = len(self._leaf_specs)
        if len(values) != n and (spare is None or len(values) != n - 1) or self.check_finite:
            return None
        env = [0] * len(self._symbols)
        seen = [False] * len(self._symbols)
        bound = {}
        for key, a in values.items():
            spec = self._by_key.get(key if isinstance(key, str) else id(key))
            if spec is None:
                return None
            leaf, slot, dtype, dims = spec
            if type(a) is not np.ndarray:
                # a scalar for a 0-d input (a learning rate): a Python number adopts the input's dtype (weakly
                # typed, as in JAX), a numpy scalar must have it
                if (dims != [] or slot in self._written  # updated in place: only an array receives it
                        or not _weak_ok(a, dtype) and not (isinstance(a, np.generic) and a.dtype == dtype)):
                    return None  # anything else: the slow path accepts it or says why
                a = np.array(a, dtype=dtype)
            if a.dtype != dtype or dims is None or a.ndim != len(dims) or not a.flags.c_contiguous or slot in bound:
                return None
            for want, got in zip(dims, a.shape, strict=True):
                if want >= 0:
                    if want != got:
                        return None
                else:
                    k = -1 - want
                    if seen[k] and env[k] != got:
                        return None
                    env[k], seen[k] = got, True
            addr = data_address(a)
            if addr % dtype.itemsize or (slot in self._written and not a.flags.writeable):
                return None
            bound[slot] = (a, addr)
        if spare is not None and spare[0] not in bound:
            bound[spare[0]] = (spare[1], spare[2])
        if len(bound) != n or not all(seen) or 0 in env:
            return None
        return bound, env

    def __call__(self, values: Mapping | None = None, /, *, threads: int | None = None, out=None, **kw):
        """Run on `values` (name or tensor -> array, as for `gc.evaluate`). `out`: an array (a function of one
        output) or a list with an array or None per output, written in place and returned (as numpy's `out=`):
        the exact dtype and shape, C-contiguous, writable, sharing no memory with an input. Without `out`, a large
        output array of the last call that nothing refers to any more is written again instead of a new one."""
        self._compile_options_as_values(kw, "called")
        if values is None:
            values = kw
        elif kw:
            values = {**values, **kw}
        bound, env, nthreads, given = self._prepare(values, threads, out, "called")
        with self._lock:
            return self._execute(bound, env, nthreads, given)

    def bind(self, values: Mapping | None = None, /, *, threads: int | None = None, out=None, **kw) -> BoundCall:
        """The call `fn(values, threads=, out=)` checked once, to be run many times: `bound()` runs it on the
        same arrays (whose contents may change between runs; the arrays themselves are held, so their shapes
        cannot). For a loop that calls a function on the same buffers each step (a training step's batch, its
        gradient buffers), where checking the arguments costs as much as a small product."""
        self._compile_options_as_values(kw, "bound")
        if values is None:
            values = kw
        elif kw:
            values = {**values, **kw}
        return BoundCall(self, *self._prepare(values, threads, out, "bound"))

    def __copy__(self):  # the same function (its code, arena and lock shared), as before pickling was refused
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __reduce__(self):
        raise GraphcError("a compiled function cannot be pickled (for multiprocessing, say): it is native code "
                          "loaded into this process. Build the graph and gc.compile it in the worker process (the "
                          "compile cache on disk makes that a load of the stored machine code), and send the "
                          "parameter arrays")

    def _compile_options_as_values(self, kw: Mapping, how: str) -> None:
        """A keyword that is an option of gc.compile (not of a call) and names no input: said as such, rather than
        as an unknown value name."""
        if not kw:
            return
        names = {leaf.name for leaf in self.signature.inputs}
        wrong = [k for k in kw if k in COMPILE_OPTIONS and k not in names]
        if wrong:
            raise GraphcError(f"compiled function {how} at {capture_source().where()}: {', '.join(wrong)} "
                              f"{'is an option' if len(wrong) == 1 else 'are options'} of gc.compile, not of a call "
                              f"(a call takes values, threads= and out=): gc.compile(outputs, {wrong[0]}=...)")

    def _prepare(self, values, threads, out, how: str):
        """(table slot -> (array, address), dims, threads, the caller's outputs) of a checked call."""
        fast = self._fast_bind(values) if isinstance(values, dict) else None
        if fast is None:
            where = f"compiled function {how} at {capture_source().where()}"
            arrays, envd = self._check(values, where)
            g = self.signature
            fast = ({buf: (arrays[id(leaf)], data_address(arrays[id(leaf)]))
                     for leaf, buf in zip(g.inputs, self.rt.inputs, strict=True) if id(leaf) in arrays},
                    [envd[s] for s in self._symbols])
        if threads is None and self._auto_threads:
            nthreads = self._threads_for(fast[1], self.threads)
        else:
            nthreads = check_threads(threads, f"compiled function {how}") or self.threads
        given = self._check_out(out, fast[0], fast[1]) if out is not None else None
        if self._written:
            self._check_written_apart(fast[0])
        return fast[0], fast[1], nthreads, given

    def _check_written_apart(self, bound: dict) -> None:
        """An array updated in place must share no memory with another input's: the update would change that
        input while the call still reads it (or two parameters would be one)."""
        key = tuple((addr, a.nbytes) for a, addr in bound.values())
        if key == self._apart:
            return
        spans = sorted((addr, addr + a.nbytes, slot) for slot, (a, addr) in bound.items() if a.nbytes)
        active: list[tuple[int, int]] = []  # (end, slot) of the spans begun and not ended
        for start, end, b in spans:
            active = [(e, a) for e, a in active if e > start]
            for _, a in active:
                if a in self._written or b in self._written:
                    first, second = (a, b) if a in self._written else (b, a)
                    names = [self.rt.buffers[x].label for x in (first, second)]
                    raise InputError(f"compiled function called at {capture_source().where()}: the array given for "
                                     f"{names[0]!r}, updated in place, shares memory with the one for {names[1]!r}: "
                                     "the update would change it while it is read; pass a copy (np.array(...)) for "
                                     "one of them")
            active.append((end, b))
        self._apart = key

    def _check_out(self, out, bound: dict, env: list[int]) -> list:
        """`out` as a list of arrays (or None) per output, each checked against the output it receives."""
        n = len(self._out_specs)
        outs = [out] if self._single and not isinstance(out, (list, tuple)) else out
        if isinstance(self._form, dict) and isinstance(out, Mapping):  # out= as a dict: by the outputs' keys
            unknown = [k for k in out if k not in self._form]
            if unknown:
                keys = ", ".join(map(repr, self._form))
                raise InputError(f"out: {unknown[0]!r} is not a key of the outputs ({keys})")
            outs = [out.get(k) for k in self._form]
        if not isinstance(outs, (list, tuple)) or len(outs) != n:
            raise InputError(f"out: expected {'an array' if self._single else f'a list of {n} arrays (or None)'}, "
                             f"got {type(out).__name__}" + (f" of {len(outs)}" if isinstance(outs, (list, tuple))
                                                            else ""))
        spans = []  # (start, end) of each checked output's bytes
        for i, (o, (_, dtype, dims), static) in enumerate(zip(outs, self._out_specs, self._static_out_shapes,
                                                              strict=True)):
            if o is None:
                continue
            shape = static if static is not None else tuple(f(env) for f in dims)
            where = f"out[{i}]" if not self._single else "out"
            if not isinstance(o, np.ndarray):
                raise InputError(f"{where}: expected a numpy array, got {type(o).__name__}")
            if o.dtype != dtype or o.shape != shape:
                raise InputError(f"{where}: the output is {dtype}{list(shape)}, the array given is "
                                 f"{o.dtype}{list(o.shape)}; pass np.empty({shape}, np.{dtype})")
            flags = o.flags
            addr = data_address(o)
            if not flags.c_contiguous or not flags.writeable or addr % o.itemsize:
                raise InputError(f"{where}: the array must be C-contiguous, writable and aligned to its items")
            # a contiguous output's bytes are [addr, addr + nbytes); the fast path's inputs are contiguous too
            end = addr + o.nbytes
            for a, a_addr in bound.values():
                if a_addr < end and addr < a_addr + a.nbytes and a.nbytes and o.nbytes:
                    raise InputError(f"{where}: the array shares memory with an input; outputs are written while "
                                     "inputs are still being read: pass a separate array")
            for j, (s0, s1) in spans:
                if s0 < end and addr < s1 and o.nbytes:
                    raise InputError(f"{where}: the array shares memory with out[{j}]")
            spans.append((i, (addr, end)))
        return list(outs)

    def _threads_for(self, env: list[int], most: int) -> int:
        """How many threads a call with these dims should use, at most `most`: each worker thread costs about
        SPAWN_SECONDS to start and join, so k threads pay off when the estimated one-thread time T exceeds
        k(k-1) of that (T/k + (k-1)s < T/(k-1) + (k-2)s). Memoized per dims."""
        key = (tuple(env), most)
        n = self._thread_memo.get(key)
        if n is None:
            t = self._estimate_seconds(env)
            n = 1
            while n < most and t > (n + 1) * n * SPAWN_SECONDS:
                n += 1
            if len(self._thread_memo) > 4096:  # many distinct batch sizes: forget, do not grow without bound
                self._thread_memo.clear()
            self._thread_memo[key] = n
        return n

    def _dim_fn(self, d):
        """env (the runtime dims, in self._symbols order) -> the value of dim `d` (a cost model's term may be a
        fraction: a loop step's work counts its products' multiply-adds at 1/8)."""
        if isinstance(d, (int, Fraction)):
            return lambda env: d
        if d in self._symbols:
            k = self._symbols.index(d)
            return lambda env: env[k]
        symbols = self._symbols
        return lambda env: d.value(dict(zip(symbols, env, strict=True)))

    def _estimate_seconds(self, env: list[int]) -> float:
        """A rough one-thread time for the program at these dims: GEMMs at GEMM_FLOPS, everything else at
        LOOP_SECONDS per element of its loop domain."""
        if self._cost_terms is None:  # (seconds per unit, dims whose product is the units), built once
            self._cost_terms = [(2.0 / GEMM_FLOPS if kind == "gemm" else LOOP_SECONDS, [self._dim_fn(d) for d in dims])
                                for kind, dims in self.rt.costs]
        t = 0.0
        for w, dims in self._cost_terms:
            size = 1
            for f in dims:
                size *= f(env)
            t += w * size
        return t

    def _check(self, values: Mapping, where: str) -> tuple[dict[int, np.ndarray], dict]:
        g = self.signature
        if not isinstance(values, Mapping):
            raise InputError(f"{where}: values must be a dict of name (or tensor) -> array, got "
                             f"{type(values).__name__}")
        scalar_leaves = {leaf.name: leaf for leaf in g.inputs if leaf.shape == ()}
        raw = values
        values = {k: np.array(v, dtype=scalar_leaves[k].dtype)
                  if isinstance(k, str) and k in scalar_leaves and _weak_ok(v, np.dtype(scalar_leaves[k].dtype))
                  else v for k, v in values.items()}
        order = g.nodes()
        seen = {id(n) for n in order}
        # a leaf updated in place that the graph does not read (its new value does not depend on it) is an input
        # too: its array receives the update (unbound, the call wrote through a null address)
        order = order + [leaf for leaf in g.inputs if id(leaf) not in seen]
        arrays, env, _ = bind_values(order, values, training=self.training, allow_unused=False, what=where,
                                     exact=True, reads_key=self._reads_key)
        by_name = {leaf.name: id(leaf) for leaf in g.inputs}
        given = {(by_name.get(k) if isinstance(k, str) else id(k)): v for k, v in raw.items()}
        for leaf in g.inputs:
            label = f"{leaf.op.name} {leaf.name!r} ({leaf.type_str}, declared at {leaf.source.where()})"
            if id(leaf) not in arrays and leaf is self._key_leaf and not self._reads_key:
                arrays[id(leaf)] = self._spare_key[1]  # a slot the program never reads, bound all the same
            if id(leaf) not in arrays:  # native code never runs with an input slot unbound
                draws = leaf is self._key_leaf and any(n.op.name == "random"
                                                       for n in nodes_in_mode(order, self.training))
                raise InputError(f"{where}: missing value for {label}, which this compiled program reads"
                                 + (key_hint(draws) if leaf is self._key_leaf else ""))
            a = arrays[id(leaf)]
            if a.dtype != np.dtype(leaf.dtype):
                hint = f"pass .astype(np.{leaf.dtype})" if leaf.dtype in FLOAT_DTYPES or a.dtype.kind in "iu" else ""
                raise DTypeError(f"{where}: {label} got a {a.dtype} array; a compiled function takes exactly "
                                 f"its declared dtype {leaf.dtype} ({hint})")
            if not a.flags.c_contiguous:
                raise InputError(f"{where}: {label} got a non-contiguous array (strides {a.strides}); pass "
                                 "np.ascontiguousarray(value)")
            if a.ctypes.data % a.dtype.itemsize:
                raise InputError(f"{where}: {label} got an array whose data is not aligned to its {a.dtype} "
                                 "items; pass a copy (np.array(value))")
            if id(leaf) in self._update_ids and not a.flags.writeable:
                raise InputError(f"{where}: {label} is updated in place but the array is read-only")
            if id(leaf) in self._update_ids and not isinstance(given.get(id(leaf)), np.ndarray):
                raise InputError(f"{where}: {label} is updated in place, so its value must be a numpy array (got "
                                 f"{type(given.get(id(leaf))).__name__}, whose copy would receive the update and be "
                                 f"lost): pass np.array(value, dtype=np.{leaf.dtype})")
            if self.check_finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                bad = np.argwhere(~np.isfinite(a))[0]
                raise NumericalError(f"{where}: {label} has a non-finite value {a[tuple(bad)]} at index "
                                     f"{tuple(int(i) for i in bad)}")
        for s in self.rt.symbols:
            if s not in env:
                raise ShapeError(f"{where}: no input binds dim {s}")
        return arrays, env

    def _ensure_plan(self, env: list[int], nthreads: int) -> None:
        """An arena and workspace big enough for these dims and threads (grown, never shrunk)."""
        if env == self._fits_env and nthreads <= self._plan_threads:
            return
        if self._plan is None or nthreads > self._plan_threads or any(
                v > self._plan.env.get(s, 0) for s, v in zip(self._symbols, env, strict=True)):
            old = self._plan.env if self._plan else {}
            now = dict(zip(self._symbols, env, strict=True))
            grow = {s: max(v, old.get(s, 0)) for s, v in now.items()}
            threads = max(nthreads, getattr(self, "_plan_threads", 0))
            plan = memory_plan(self.rt, grow, threads, self.target)
            if grow != now:
                # the dims' maxima hold every call seen so far, without planning again when they come back; but
                # maxima of different calls (A large then B large) can need far more than any call: then this call's
                plan_now = memory_plan(self.rt, now, threads, self.target)
                own = plan_now.arena_bytes + plan_now.workspace_bytes
                held = self._plan.arena_bytes + self._plan.workspace_bytes if self._plan else 0
                if plan.arena_bytes + plan.workspace_bytes > 2 * max(own, held):
                    plan = plan_now
            try:  # nothing is replaced until both are allocated: a MemoryError leaves the old plan in use
                arena = aligned_bytes(max(plan.arena_bytes, 64))
                ws = aligned_bytes(max(plan.workspace_bytes, 64))
            except (MemoryError, ValueError):  # ValueError: numpy's limit on an array's size
                dims = ", ".join(f"{s}={v}" for s, v in zip(self._symbols, env, strict=True)) or "static dims"
                raise MemoryError(f"compiled function: its working memory at {dims} ({threads} thread(s)) is "
                                  f"{(plan.arena_bytes + plan.workspace_bytes) / 2**30:.1f} GiB, more than this "
                                  "machine can allocate; call it on smaller dims (a smaller batch)") from None
            self._plan, self._plan_threads, self._arena, self._ws = plan, threads, arena, ws
            table = self._base_table.copy()
            base = self._arena.ctypes.data
            for idx, off in self._plan.offsets.items():
                table[idx] = base + off
            self._base_table = table
            # the call table, reused by every call (calls hold self._lock): arena and constant slots are fixed,
            # input and output slots are written by each call
            self._call_table = (ctypes.c_uint64 * len(table))(*[int(v) for v in table])
            self._call_dims = (ctypes.c_int64 * max(len(env), 1))()
            self._call_addrs = (ctypes.addressof(self._call_table), ctypes.addressof(self._call_dims),
                                self._ws.ctypes.data)
        self._fits_env = list(env)

    # Outputs from this many bytes up are recycled (smaller ones come from malloc's free lists at no cost).
    RECYCLE_BYTES = 1 << 16

    def _new_output(self, k: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """Output `k`'s array for this call: the last call's where nothing else refers to it any more (the caller
        dropped it), else a new one. A fresh large array is fresh pages: writing it faults every 4 KiB page in,
        and the faults of the threads of a multi-threaded call queue on the process's page-table lock (a 3x3
        conv layer's forward and gradients at batch 32, three outputs of 25 MB: 112 ms instead of 87 ms on 2
        threads). PyTorch's and glibc's allocators keep freed blocks for the same reason; like them this keeps
        one set of large outputs alive between calls."""
        old = self._recycle[k]
        # 3 references: the list slot, `old`, getrefcount's argument; a weak reference could revive it
        if (old is not None and old.shape == shape and sys.getrefcount(old) == 3
                and weakref.getweakrefcount(old) == 0):
            return old
        r = np.empty(shape, dtype=dtype)
        self._recycle[k] = r if r.nbytes >= self.RECYCLE_BYTES else None
        return r

    def _execute(self, bound: dict[int, tuple[np.ndarray, int]], env: list[int], nthreads: int,
                 given: list | None = None):
        """Run with `bound` (table slot -> (array, its data address)) and the caller's checked output arrays
        (`given`, or None); the caller holds self._lock."""
        if env != self._env_checked:
            self._env_empty = self._check_env(env)
            self._env_checked = list(env)
        if self._env_empty:
            return self._execute_empty(bound, given)
        self._ensure_plan(env, nthreads)
        table = self._call_table
        for slot, (_, addr) in bound.items():
            table[slot] = addr
        outs = list(given) if given is not None else [None] * len(self._out_specs)  # the caller's, or new arrays
        for k, (slot, dtype, dims) in enumerate(self._out_specs):
            if k in self._repeated:
                continue
            r = outs[k]
            if r is None:
                r = outs[k] = self._new_output(k, tuple(f(env) for f in dims), dtype)
            table[slot] = data_address(r)
        cd = self._call_dims
        for k, v in enumerate(env):
            cd[k] = v
        if self._index_checks:
            self._check_input_indices(bound, env)
        kept = None
        if self._keep_on_check:  # what this call writes in place, as it was (restored if a check fails)
            kept = [(a, a.copy()) for slot, (a, _) in bound.items() if slot in self._written]
            kept += [(a, a.copy()) for a in given or () if a is not None]
        t_addr, d_addr, w_addr = self._call_addrs
        self.last_threads = self._run(t_addr, d_addr, w_addr, nthreads)
        if self._error is not None and self._error.value:
            code, self._error.value = self._error.value, 0
            for a, before in kept or ():
                a[...] = before
            raise InputError(f"compiled function: {self.check_message(code)}; no result is returned, and the arrays "
                             "it writes in place (parameters updated, out=) hold their values from before the call")
        for k, first in self._repeats:  # a repeated output: a copy, or written into the caller's array for it
            if outs[k] is None:
                outs[k] = outs[first].copy()
            else:
                outs[k][...] = outs[first]
        return shaped_like(self._form, outs)

    def _check_env(self, env: list[int]) -> bool:
        """Whether these dims leave some tensor empty (then the reference evaluates the call); a ShapeError where
        they do not fit the graph: a slice of a symbolic axis that reaches past its end (x[5:] with N = 3). Run
        when the dims change, not every call."""
        if self._dim_checks is None:  # the nodes that check dims, and the dims derived from the symbols
            known = set(self._symbols)
            checks, derived = [], set()
            for n in topo_order(self._outputs):
                if any(not isinstance(d, int) and d not in known for d in n.shape):
                    derived.update(d for d in n.shape if not isinstance(d, int) and d.free_symbols <= known)
                if getattr(n.op, "check_dims", None) is not None and (any(
                        not isinstance(d, int) for i in (n, *n.inputs) for d in i.shape) or (
                        n.op.name == "scan" and not isinstance(n.attrs["length"], int))):
                    checks.append(n)
            self._dim_checks = (tuple(checks), tuple(self._dim_fn(d) for d in derived))
        checks, derived = self._dim_checks
        if checks:
            dims = dict(zip(self._symbols, env, strict=True))
            for n in checks:
                why = n.op.check_dims(n, dims)
                if why is not None:
                    raise ShapeError(f"compiled function: {why}")
        return 0 in env or any(f(env) <= 0 for f in derived)

    def check_batches(self, sizes, what: str = "training") -> None:
        """For a program whose one symbol is the batch: each of these batch sizes must fit the graph (a slice of
        the batch axis such as x[2:] needs 3 rows) and leave no tensor empty (the native kernels need a row);
        else a ShapeError before anything runs."""
        if len(self._symbols) != 1:
            return
        for rows in sorted(sizes):
            try:
                empty = self._check_env([rows])
            except ShapeError as e:
                raise ShapeError(f"{what}: a batch of {rows} row(s): {e}") from None
            if empty:
                raise ShapeError(f"{what}: a batch of {rows} row(s) leaves a tensor of the step empty (a slice of "
                                 "the batch axis); use a larger batch, or drop_last=True for a short last batch")

    def fewest_rows(self, limit: int) -> tuple[int, str | None]:
        """For a program whose one symbol is the batch (a standalone binary's): the fewest rows from which every
        batch up to `limit` runs natively — fits the graph's slices of the batch axis (x[2:] needs 3 rows) and
        leaves no tensor empty — and why one row fewer does not (None: any batch runs). Code that runs the
        program without Python checks its batches against it. A ShapeError where the batches that run are not
        all those from some count on (a model whose slices need, say, an even batch)."""
        if len(self._symbols) != 1:
            raise ShapeError(f"a program with the dims {', '.join(map(str, self._symbols))}: a binary binds the "
                             "batch alone")
        if self._dim_checks is None:
            try:
                self._check_env([limit])  # builds the checks
            except ShapeError:
                pass
        checks, derived = self._dim_checks
        if not checks and not derived:
            return 1, None
        why = {}
        for rows in range(1, limit + 1):
            try:
                if self._check_env([rows]):
                    why[rows] = (f"a batch of {rows} row(s) leaves a tensor of the step empty (a slice of the batch "
                                 "axis)")
            except ShapeError as e:
                why[rows] = str(e).removeprefix("compiled function: ")
        first = max(why, default=0) + 1
        if len(why) != first - 1:
            raise ShapeError(f"this model runs on some batch sizes but not on others below them ({why[max(why)]}); "
                             "a binary needs every batch from some size on to fit")
        if first > limit:
            raise ShapeError(f"no batch up to {limit} rows fits the model ({why[limit]})")
        return first, why.get(first - 1)

    def _execute_empty(self, bound: dict[int, tuple[np.ndarray, int]], given: list | None):
        """A call where a dim is 0 (no rows, no steps): nothing to compute natively — the kernels and their
        thread splits are built for at least one — so the numpy reference evaluates the graph: empty outputs of
        their shapes, sums over nothing 0 and means NaN as numpy gives them (a max over nothing is an error, as
        in numpy), and the updates written in place."""
        import warnings

        from graphc.runtime.reference import evaluate

        leaf_at = {buf: leaf for leaf, buf in zip(self.signature.inputs, self.rt.inputs, strict=True)}
        values = {leaf_at[slot].name: a for slot, (a, _) in bound.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the mean of nothing
            got = evaluate(self._outputs, values, training=self.training, allow_unused=True)
        outs = list(given) if given is not None else [None] * self._n_results
        for k, v in enumerate(got):
            if k >= self._n_results:  # an update of an input, in place
                arr = bound[self.rt.inputs[self.updates[k]]][0]
                np.copyto(arr, v, casting="unsafe")
            elif outs[k] is None:
                outs[k] = np.array(v, dtype=self._out_specs[k][1])  # a copy, 0-d stays 0-d
            else:
                np.copyto(outs[k], v, casting="unsafe")
        return shaped_like(self._form, outs[:self._n_results])


class BoundCall:
    """A compiled function's call with its arguments checked once (`CompiledFunction.bind`)."""

    __slots__ = ("fn", "_bound", "_env", "_threads", "_given")

    def __init__(self, fn: CompiledFunction, bound: dict, env: list[int], nthreads: int, given: list | None):
        self.fn, self._bound, self._env, self._threads, self._given = fn, bound, env, nthreads, given

    def __call__(self):
        """Run; returns what the call returns (the `out` arrays where given)."""
        fn = self.fn
        with fn._lock:
            return fn._execute(self._bound, self._env, self._threads, self._given)


# Every compiled function's call lock, renewed in a child after fork(): a thread of the parent that was inside a
# call holds it, and does not exist in the child (the native thread team resets itself the same way).
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _renew_locks() -> None:
    for fn in list(_LIVE):
        fn._lock = CallLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks)


def _defines(text: str, keep) -> list[str]:
    """The function definitions of LLVM IR `text` whose names `keep` accepts."""
    out = []
    for part in text.split("\ndefine ")[1:]:
        at = part.find('@"')
        fname = part[at + 2:part.find('"', at + 2)]
        if keep(fname):
            out.append("define " + part[:part.find("\n}\n") + 2])
    return out


def _weak_ok(v, dtype: np.dtype) -> bool:
    """A Python number that a 0-d input of `dtype` takes as its own dtype: ints for any numeric input (those in an
    int dtype's range: one outside goes on to check_value, which says so, as evaluate does), floats for float
    inputs (never bools, never a float for an int input)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, np.generic):
        return False
    if dtype.kind in "iu":
        lo, hi = _int_range(dtype)
        return isinstance(v, int) and lo <= v <= hi
    return dtype.kind == "f"


@functools.cache
def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)  # ~1.4 us to make: once per dtype, not per call
    return int(info.min), int(info.max)


_TSC: list[float] = []


def _tsc_hz() -> float:
    """The time-stamp counter's rate, measured once against the wall clock."""
    if not _TSC:
        from graphc.codegen.target import compile_ir

        e = compile_ir("declare i64 @llvm.readcyclecounter()\ndefine i64 @c() {\n"
                       "  %t = call i64 @llvm.readcyclecounter()\n  ret i64 %t\n}\n")
        f = e.function("c", ctypes.c_int64)
        import time

        t0, c0 = time.perf_counter(), f()
        time.sleep(0.05)
        _TSC.append((f() - c0) / (time.perf_counter() - t0))
    return _TSC[0]


_REF = re.compile("\x00([ws])(\\d+)\x00")


def _check_template(message: str, order: list[Node]) -> str:
    """A run-time check's message with each place it names (`node.where()` or its source's) replaced by a
    reference to the first node of the input graph (topological order: the same for every graph of one
    structure, i.e. one cache key) built there."""
    refs: dict[str, str] = {}
    for k, n in enumerate(order):
        refs.setdefault(n.where(), f"\x00w{k}\x00")
        refs.setdefault(n.source.where(), f"\x00s{k}\x00")
    for w in sorted(refs, key=len, reverse=True):  # the longest first: a.py:12 is not a.py:1 followed by 2
        message = re.sub(re.escape(f" at {w}") + r"(?![\w])", lambda _m, r=refs[w]: f" at {r}", message)
    return message


def _render_check(template: str, order: list[Node]) -> str:
    def where(m: re.Match) -> str:
        k = int(m.group(2))
        if k >= len(order):
            return "?"
        n = order[k]
        return n.where() if m.group(1) == "w" else n.source.where()

    return _REF.sub(where, template)


def _refuse_state_updates_in_inference(outs: list[Node], updates: Mapping) -> None:
    """A layer's training-mode state update (batch norm's running statistics from the batch: gc.nn.state_updates)
    passed to a program compiled for inference: PyTorch's eval() reads the running statistics and updates
    nothing, while this program would have written the batch's statistics into them."""
    from graphc.ops.control import WITH_UPDATES

    order = nodes_within(topo_order([*outs, *updates.values()]))
    layer = {(id(leaf), id(new)) for n in order if n.op is WITH_UPDATES for leaf, new in n.op.pairs(n)}
    for leaf, value in updates.items():
        if (id(leaf), id(value)) in layer:
            raise GraphcError(f"compile at {capture_source().where()}: the update of {leaf.name!r} is a layer's "
                              "training-mode state update (gc.nn.state_updates: batch norm's running statistics "
                              "from the batch), but the "
                              "program is compiled for inference (training=False), where the running statistics "
                              "are read, not updated (PyTorch's eval()): compile the training step with "
                              "training=True, or leave gc.nn.state_updates out of an inference program's updates")


def compile(outputs, *, updates: Mapping | None = None, training: bool = False,  # noqa: A001
            threads: int | None = None, check_finite: bool = False, target: Target | str | None = None,
            cache: bool = True, profile: bool = False) -> CompiledFunction:
    """Compile `outputs` (a tensor or a list) to native code for the host CPU (or `target`: "x86-64",
    "x86-64-v2", "x86-64-v3", "x86-64-v4"). The result is called like `gc.evaluate`.

    `updates` maps parameters (or inputs) to new values computed in the same call and written *in place* into
    the arrays passed for them (as PyTensor's `updates`): a training step without copies. `training=True`
    keeps dropout (feed `rng_key`); `threads` defaults to the CPUs this process may use; `check_finite`
    rejects inputs holding nan or inf; `profile` counts time per kernel (see `profile_report`)."""
    return CompiledFunction(outputs, updates=updates, training=training, threads=threads,
                            check_finite=check_finite, target=target, cache=cache, profile=profile)

