"""LLVM targets: the host CPU (or a portable x86-64 level), the optimization pipeline, JIT engines, and compiled
code loaded as a shared object by the system's dynamic loader.

Only codegen and the runtime's JIT use LLVM; this module is the one place that sets it up, and imports
llvmlite.binding (LLVM itself, ~100 MB mapped) only when something is compiled: a program found in the compile
cache as a shared object runs without it (see `SharedObject` and `host_target`).
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MAX_WORKERS = 255  # the native thread team's workers (graphc.codegen.team), besides the calling thread

_init_lock = threading.Lock()
_initialized = False

# Portable x86-64 micro-architecture levels, as (LLVM cpu name, SIMD width in float32 lanes).
LEVELS: dict[str, tuple[str, int]] = {
    "x86-64": ("x86-64", 4),
    "x86-64-v2": ("x86-64-v2", 4),
    "x86-64-v3": ("x86-64-v3", 8),
    "x86-64-v4": ("x86-64-v4", 16),
}


def _llvm():
    """llvmlite.binding, imported on first use (it loads LLVM)."""
    import llvmlite.binding as llvm

    return llvm


def ensure_llvm():
    """Initialize LLVM's native target once per process (llvm.initialize() raises in llvmlite >= 0.44); returns
    llvmlite.binding."""
    global _initialized
    llvm = _llvm()
    if _initialized:
        return llvm
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialized = True
    return llvm


def load_llvm_in_background() -> None:
    """Start loading and initializing LLVM on another thread: a compile that missed the cache calls this before it
    emits its module, which then overlaps the load (~0.04 s of a 0.5 s cold compile; the shared library's loading
    and set-up run without the GIL). A cache hit never calls it: cached code runs without LLVM."""
    if not _initialized:
        threading.Thread(target=ensure_llvm, name="graphc-llvm-load", daemon=True).start()


@dataclass(frozen=True)
class Target:
    """A code-generation target: which CPU, which features, and the SIMD width to emit for."""

    name: str  # "native" or one of LEVELS
    cpu: str
    features: str
    vector_bits: int  # widest float vector register used: 512 (AVX-512), 256 (AVX2) or 128 (SSE)
    process_triple: str = ""  # the host's triple where known without LLVM (a cached host description)

    @property
    def f32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def f64_lanes(self) -> int:
        return self.vector_bits // 64

    @property
    def triple(self) -> str:
        return self.process_triple or _process_triple()

    def key(self) -> str:
        """What identifies this target in a cache key."""
        return f"{self.triple}|{self.cpu}|{self.features}"

    def create_target_machine(self, *, jit: bool = True, opt: int = 2):
        """A fresh TargetMachine. Never share one between engines: an engine owns the one it is given.

        `opt` is the code generator's level (the IR optimization level is `optimize`'s): 3 over 2 only adds
        aggressive tail duplication, which changed ~20 of 4,000 instructions of the MLP epoch (spin loops) and
        of the GEMM helper library, for ~15% more code generation time."""
        llvm = ensure_llvm()
        t = llvm.Target.from_triple(self.triple)
        if jit:
            return t.create_target_machine(cpu=self.cpu, features=self.features, opt=opt, jit=True)
        return t.create_target_machine(
            cpu=self.cpu, features=self.features, opt=opt, reloc="pic", codemodel="default", jit=False
        )


def _vector_bits(features: str) -> int:
    flags = set(features.split(","))
    if "+avx512f" in flags:
        return 512
    if "+avx2" in flags or "+avx" in flags:
        return 256
    return 128


@cache
def _process_triple() -> str:
    return ensure_llvm().get_process_triple()


HOST_MAGIC = "graphc-host-2"


def _cpu_fingerprint() -> str | None:
    """What identifies this CPU to LLVM's host detection, read without LLVM: the first processor's vendor,
    family, model, stepping and flags from /proc/cpuinfo, with the machine, the platform and llvmlite's version
    (a newer LLVM may name the same CPU otherwise). None where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    first = text.split("\n\n", 1)[0]
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "isa", "features", "cpu")
    lines = sorted(ln.strip() for ln in first.splitlines() if ln.split(":", 1)[0].strip() in keep)
    if not lines:
        return None
    try:  # the package's own attribute: importlib.metadata scans every installed distribution (~20 ms)
        import llvmlite

        llvmlite_version = llvmlite.__version__
    except Exception:
        llvmlite_version = "?"
    h = hashlib.sha256("\n".join([*lines, os.uname().machine, sys.platform, llvmlite_version]).encode())
    return h.hexdigest()[:32]


def _host_file(fp: str) -> Path:
    from graphc.runtime.cache import directory

    return directory() / f"host-{fp}.txt"


def _read_host(fp: str) -> Target | None:
    try:
        lines = _host_file(fp).read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) < 5 or lines[0] != HOST_MAGIC or not lines[1] or not lines[2]:
        return None
    triple, cpu, features = lines[1], lines[2], lines[3]
    if lines[4] != _host_sum(fp, triple, cpu, features) or triple.split("-")[0] != os.uname().machine:
        return None  # damaged (a feature this CPU lacks would be SIGILL in every cached program), or foreign
    if features and not all(f[:1] in "+-" and len(f) > 1 for f in features.split(",")):
        return None
    return Target("native", cpu, features, _vector_bits(features), triple)


def _host_sum(fp: str, triple: str, cpu: str, features: str) -> str:
    return hashlib.sha256(f"{fp}\n{triple}\n{cpu}\n{features}".encode()).hexdigest()


def _write_host(fp: str, t: Target) -> None:
    path = _host_file(fp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-host-")
        with os.fdopen(fd, "w") as f:
            f.write(f"{HOST_MAGIC}\n{t.triple}\n{t.cpu}\n{t.features}\n{_host_sum(fp, t.triple, t.cpu, t.features)}\n")
        os.replace(tmp, path)
    except OSError:
        pass


@cache
def host_target() -> Target:
    """The machine we are running on, with all its features (AVX-512 where present). LLVM's description of it
    is kept in the compile cache, keyed by the CPU's identity (`_cpu_fingerprint`), so that a process running
    only cached code never loads LLVM."""
    fp = _cpu_fingerprint()
    if fp is not None:
        found = _read_host(fp)
        if found is not None:
            return found
    llvm = ensure_llvm()
    features = llvm.get_host_cpu_features().flatten()
    t = Target("native", llvm.get_host_cpu_name(), features, _vector_bits(features), llvm.get_process_triple())
    if fp is not None:
        _write_host(fp, t)
    return t


@cache
def level_target(level: str) -> Target:
    """A portable target: `x86-64` (SSE2), `x86-64-v2` (SSE4.2), `x86-64-v3` (AVX2+FMA), `x86-64-v4` (AVX-512)."""
    from graphc.errors import GraphcError

    if level == "native":
        return host_target()
    if level not in LEVELS:
        raise GraphcError(
            f"unknown target {level!r}: choose 'native' or one of {', '.join(LEVELS)}"
        )
    cpu, lanes = LEVELS[level]
    return Target(level, cpu, "", lanes * 32, host_target().process_triple)


def optimize(module, target: Target, *, speed_level: int = 3) -> None:
    """Run LLVM's new-pass-manager O3 pipeline with loop and SLP vectorization, in place."""
    llvm = ensure_llvm()
    tm = target.create_target_machine()
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)  # a new builder per module: reuse slows every run
    pb.getModulePassManager().run(module, pb)


def parse(ir_text: str, target: Target):
    mod = ensure_llvm().parse_assembly(ir_text)
    mod.triple = target.triple
    mod.verify()
    return mod


_ENGINES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """At exit, before the interpreter tears objects down in no particular order (llvmlite may free an engine's
    code before our __del__ runs): join every live engine's worker threads."""
    for e in list(_ENGINES):
        e.close()


class Engine:
    """An MCJIT engine owning its module and target machine; function pointers live as long as it does."""

    def __init__(self, module, target: Target, objects: tuple[bytes, ...] = ()):
        llvm = ensure_llvm()
        self.target = target
        self._tm = target.create_target_machine()
        module.triple = target.triple
        module.data_layout = str(self._tm.target_data)
        self._engine = llvm.create_mcjit_compiler(module, self._tm)
        for obj in objects:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self._engine.run_static_constructors()
        self.module = module
        _ENGINES.add(self)

    def close(self) -> None:
        """Stop and join the module's worker threads (`graphc_shutdown`, where the module has thread teams):
        they are parked in this engine's code, which is freed with it."""
        eng = getattr(self, "_engine", None)
        if eng is None:
            return
        try:
            addr = eng.get_function_address("graphc_shutdown")
            if addr:
                ctypes.CFUNCTYPE(None)(addr)()
        except Exception:  # interpreter shutdown: modules half torn down; the process is ending anyway
            pass

    def __del__(self):
        self.close()

    @classmethod
    def from_object(cls, obj: bytes, target: Target):
        """Load machine code made by `emit_object` (fresh, or from the disk cache) without running LLVM's
        optimizer or code generator: a position-independent object (`SharedObjectCode`) is linked into a shared
        object by the system C compiler and loaded by the dynamic loader (a `SharedObject`); anything else, or
        where linking fails, by LLVM's MCJIT."""
        objects: tuple[bytes, ...] = (obj,)
        if isinstance(obj, SharedObjectCode):
            so = obj.load(target)
            if so is not None:
                return so
            objects = (bytes(obj), *obj.helpers)
        empty = ensure_llvm().parse_assembly("")
        return cls(empty, target, objects)

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        assert addr, f"symbol {name} not found in JIT module"
        return addr

    def global_address(self, name: str) -> int:
        """The address of a global variable of the module (0 if it has none)."""
        return self._engine.get_global_value_address(name)

    def function(self, name: str, restype, *argtypes):
        """A ctypes callable for `name`. CFUNCTYPE releases the GIL while native code runs."""
        proto = ctypes.CFUNCTYPE(restype, *argtypes)
        fn = proto(self.address(name))
        fn._engine = self  # keep the engine (and so the code) alive as long as the callable
        return fn


def compile_ir(ir_text: str, target: Target | None = None, *, opt: bool = True) -> Engine:
    """Parse, optimize and JIT-compile textual LLVM IR for `target` (default: the host)."""
    target = target or host_target()
    mod = parse(ir_text, target)
    if opt:
        optimize(mod, target)
    return Engine(mod, target)


class HelpersUnavailable(Exception):
    """A module that only declares its GEMM helpers, where their library could not be had: emit it whole."""


def links_helpers() -> bool:
    """Whether code for this process is linked with the GEMM helper libraries (where a C compiler links shared
    objects): the JIT then emits modules that only declare the helpers."""
    return shared_linker() is not None


def emit_object(ir_text: str, target: Target, *, jit: bool = False, parts: tuple[str, ...] = ()) -> bytes:
    """An ELF object: for this process (`jit=True`, loaded with `Engine.from_object`), or position-independent
    for ahead-of-time linking. For this process it is position-independent too (a `SharedObjectCode`, linked
    into a shared object) where a C compiler is available, else an MCJIT object. Raises `HelpersUnavailable`
    for a module that declares its GEMM helpers when their library cannot be had.

    `parts`: modules of the program's kernels that `ir_text` calls (a split emission, for this process's shared
    object only): a helper process compiles about half of them, by cost, into an object of their own while this
    one links the rest into `ir_text`'s module, where they are inlined as one module's would be."""
    pic = not jit or links_helpers()
    helpers: list[bytes] = []
    if parts and not (jit and pic):
        raise ValueError("a module emitted in parts is linked into a shared object for this process only")
    if jit and pic:  # the GEMM helpers come from the library compiled once per config (gemm.helper_library)
        from graphc.codegen.gemm import split_helpers

        text, drivers = split_helpers(ir_text)
        for p in parts:
            drivers += [d for d in split_helpers(p)[1] if d not in drivers]
        try:
            helpers = [_helper_object(target, d) for d in drivers]
            ir_text = text
        except Exception as e:  # a helper library that cannot be built: compile the module whole
            if (text is ir_text and drivers) or parts:  # nothing to compile whole: the helpers were only declared
                raise HelpersUnavailable(str(e)) from e
            helpers = []
    elif 'declare void @"graphc.gemm.driver.' in ir_text:
        raise HelpersUnavailable("a module that declares its GEMM helpers needs their library linked")
    if not parts:
        obj = compile_texts([ir_text], target, pic=pic)
    else:
        obj, side = _compile_split(ir_text, list(parts), target)
        helpers = helpers + side
    if not (jit and pic):
        return obj
    code = SharedObjectCode(obj)
    code.helpers = helpers
    return code


def compile_texts(texts: list[str], target: Target, *, pic: bool = True, inline: tuple[str, ...] = ()) -> bytes:
    """One object from the IR modules `texts`, linked into one module, optimized and compiled for `target`
    (position-independent unless `pic` is False: an MCJIT object). `inline`: functions defined by the linked
    modules for the first one's callers only (internal once linked: inlined into them, no copy of their own)."""
    mod = parse(texts[0], target)
    for t in texts[1:]:
        mod.link_in(parse(t, target))
    llvm = ensure_llvm()
    for name in inline:
        mod.get_function(name).linkage = llvm.Linkage.internal
    optimize(mod, target)
    tm = target.create_target_machine(jit=not pic)
    mod.data_layout = str(tm.target_data)
    return tm.emit_object(mod)


def _kernel_name(text: str) -> str:
    """The kernel a part of a split module defines (its one hidden function)."""
    i = text.index('define hidden void @"') + len('define hidden void @"')
    return text[i:text.index('"', i)]


def _compile_split(main: str, parts: list[str], target: Target) -> tuple[bytes, list[bytes]]:
    """(the object of `main` with the parts it keeps, the helper process's object of the others): the parts go to
    the helper, costliest first, while its share of the work stays under this process's. LLVM's time for a kernel
    is ~6.6 ms plus 0.57 us a byte of its text (the 784-256-128-10 epoch's 24 kernels and the LSTM step's 26, on
    the Emerald Rapids Xeon: a small kernel costs 2 us a byte), so a part weighs its length plus 11,600 bytes; the
    program's module (drivers, thread launchers) 5 times its length (3.6 in the LSTM step, 5.5 with the epoch
    driver; the helper's start and the transfer are not free)."""
    from graphc.codegen import parallel

    mine, theirs, size = [], [], [5 * len(main), 0.0]
    for p in sorted(parts, key=len, reverse=True):
        cost = len(p) + 11_600
        side = 1 if size[1] + cost <= size[0] else 0
        (theirs if side else mine).append(p)
        size[side] += cost
    pending = parallel.submit(theirs, target) if theirs else None
    if pending is None:
        mine, theirs = mine + theirs, []
    try:
        obj = compile_texts([main, *mine], target, inline=tuple(_kernel_name(p) for p in mine))
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
    if pending is None:
        return obj, []
    side_obj = pending.result()
    if side_obj is None:  # the helper failed: compile its share here
        side_obj = compile_texts(theirs, target)
    return obj, [side_obj]


_HELPERS: dict[tuple[str, str], bytes] = {}


def _helper_object(target: Target, driver: str) -> bytes:
    """The position-independent object of the GEMM helper library of `driver`'s config: from memory, the compile
    cache, or compiled (and kept there)."""
    from graphc.runtime import cache as disk_cache

    mem = (target.key(), driver)
    obj = _HELPERS.get(mem)
    if obj is not None:
        return obj
    k = hashlib.sha256(f"{disk_cache.code_version()}|{target.key()}|{driver}".encode()).hexdigest()
    obj = _HELPERS[mem] = disk_cache.blob(k, lambda: _compile_helpers(target, driver))
    return obj


def _compile_helpers(target: Target, driver: str) -> bytes:
    from graphc.codegen.gemm import helper_library

    mod = parse(helper_library(target, driver), target)
    optimize(mod, target)
    tm = target.create_target_machine(jit=False)
    mod.data_layout = str(tm.target_data)
    return tm.emit_object(mod)


def assembly(ir_text: str, target: Target | None = None) -> str:
    """Optimized assembly for inspection."""
    target = target or host_target()
    mod = parse(ir_text, target)
    optimize(mod, target)
    tm = target.create_target_machine(jit=False)
    return tm.emit_assembly(mod)


# ------------------------------------------------------------------------------------------ shared objects


def shared_linker() -> str | None:
    """The C compiler that links shared objects (`$CC`, else `cc`), or None where there is none."""
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


class SharedObjectCode(bytes):
    """A position-independent object for this process: linked into a shared object when loaded."""

    so_bytes: bytes | None = None  # the linked shared object, once linked (what the compile cache keeps)
    helpers: list[bytes] = []  # objects linked with it: the GEMM helper libraries it declares

    def load(self, target: Target) -> SharedObject | None:
        """Link with `cc -shared` in a temporary directory and load the result; None if either fails."""
        cc = shared_linker()
        if cc is None:
            return None
        work = Path(tempfile.mkdtemp(prefix="graphc-link-"))
        obj, so = work / "code.o", work / "code.so"
        try:
            obj.write_bytes(bytes(self))
            objs = [str(obj)]
            for i, h in enumerate(self.helpers):
                (work / f"helpers{i}.o").write_bytes(h)
                objs.append(str(work / f"helpers{i}.o"))
            r = subprocess.run([cc, "-shared", "-o", str(so), *objs, "-lm", "-lpthread"], capture_output=True,
                               timeout=120)
            if r.returncode != 0:
                return None
            data = so.read_bytes()
            lib = SharedObject.from_bytes(data, target)
            if lib is not None:
                self.so_bytes = data
            return lib
        except (OSError, subprocess.SubprocessError):
            return None
        finally:
            shutil.rmtree(work, ignore_errors=True)


class SharedObject:
    """Compiled code in a shared object loaded by the system's dynamic loader (ctypes): the interface of an
    `Engine` (`function`, `address`, `close`) without LLVM. Each load is a private copy (its own globals and
    thread team, as each MCJIT engine has), which stays mapped until the process ends."""

    def __init__(self, lib: ctypes.CDLL, target: Target):
        self.lib, self.target = lib, target
        _ENGINES.add(self)

    @classmethod
    def from_bytes(cls, data: bytes, target: Target) -> SharedObject | None:
        """Load a shared object's bytes from a temporary file of a new name (the loader would return the same
        handle for a name it has loaded), removed once mapped: exactly these bytes, loaded afresh. Tried in the
        temporary directory, then in the cache's (a temporary directory may be mounted noexec). None if the
        loader refuses it."""
        from graphc.runtime.cache import directory

        mode = getattr(os, "RTLD_LOCAL", 0) | getattr(os, "RTLD_NOW", 2)
        for d in (None, directory()):
            try:
                fd, tmp = tempfile.mkstemp(prefix=".graphc-code-", suffix=".so", dir=d)
            except OSError:
                continue
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return cls(ctypes.CDLL(tmp, mode=mode), target)
            except OSError:
                continue
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return None

    def get_function_address(self, name: str) -> int:
        try:
            return ctypes.cast(getattr(self.lib, name), ctypes.c_void_p).value or 0
        except AttributeError:
            return 0

    def global_address(self, name: str) -> int:
        """The address of a global variable of the module (0 if it has none)."""
        try:
            return ctypes.addressof(ctypes.c_char.in_dll(self.lib, name))
        except ValueError:
            return 0

    def address(self, name: str) -> int:
        addr = self.get_function_address(name)
        assert addr, f"symbol {name} not found in the shared object"
        return addr

    def function(self, name: str, restype, *argtypes):
        """A ctypes callable for `name` (CFUNCTYPE: the GIL is released while native code runs)."""
        fn = ctypes.CFUNCTYPE(restype, *argtypes)(self.address(name))
        fn._engine = self
        return fn

    def close(self) -> bool:
        """Stop and join the module's worker threads (`graphc_shutdown`, where it has thread teams); whether that
        is known to have happened."""
        addr = self.get_function_address("graphc_shutdown")
        if addr:
            try:
                ctypes.CFUNCTYPE(None)(addr)()
            except Exception:  # interpreter shutdown
                return False
        return True

    def __del__(self):
        # unloaded once nothing refers to it: every ctypes function made from it holds this object (`function`),
        # and its worker threads, parked in its code, are joined first. Left loaded, each cache hit's copy stayed
        # mapped until the process ended (5 mappings and ~55 KB a compile)
        if self.close() and not sys.is_finalizing():
            handle = getattr(self.lib, "_handle", None)
            if handle:
                try:
                    _ctypes.dlclose(handle)
                except OSError:
                    pass
