"""LLVM targets: the host CPU (or a portable x86-64 level), the optimization pipeline, and JIT engines.

Only codegen and the runtime's JIT import llvmlite; this module is the one place that sets LLVM up.
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import weakref
from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm

_init_lock = threading.Lock()
_initialized = False

# Portable x86-64 micro-architecture levels, as (LLVM cpu name, SIMD width in float32 lanes).
LEVELS: dict[str, tuple[str, int]] = {
    "x86-64": ("x86-64", 4),
    "x86-64-v2": ("x86-64-v2", 4),
    "x86-64-v3": ("x86-64-v3", 8),
    "x86-64-v4": ("x86-64-v4", 16),
}


def ensure_llvm() -> None:
    """Initialize LLVM's native target once per process (llvm.initialize() raises in llvmlite >= 0.44)."""
    global _initialized
    if _initialized:
        return
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialized = True


@dataclass(frozen=True)
class Target:
    """A code-generation target: which CPU, which features, and the SIMD width to emit for."""

    name: str  # "native" or one of LEVELS
    cpu: str
    features: str
    vector_bits: int  # widest float vector register used: 512 (AVX-512), 256 (AVX2) or 128 (SSE)

    @property
    def f32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def f64_lanes(self) -> int:
        return self.vector_bits // 64

    @property
    def triple(self) -> str:
        return llvm.get_process_triple()

    def key(self) -> str:
        """What identifies this target in a cache key."""
        return f"{self.triple}|{self.cpu}|{self.features}"

    def create_target_machine(self, *, jit: bool = True, opt: int = 3) -> llvm.TargetMachine:
        """A fresh TargetMachine. Never share one between engines: an engine owns the one it is given."""
        ensure_llvm()
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
def host_target() -> Target:
    """The machine we are running on, with all its features (AVX-512 where present)."""
    ensure_llvm()
    features = llvm.get_host_cpu_features().flatten()
    return Target("native", llvm.get_host_cpu_name(), features, _vector_bits(features))


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
    return Target(level, cpu, "", lanes * 32)


def optimize(module: llvm.ModuleRef, target: Target, *, speed_level: int = 3) -> None:
    """Run LLVM's new-pass-manager O3 pipeline with loop and SLP vectorization, in place."""
    tm = target.create_target_machine()
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)  # a new builder per module: reuse slows every run
    pb.getModulePassManager().run(module, pb)


def parse(ir_text: str, target: Target) -> llvm.ModuleRef:
    ensure_llvm()
    mod = llvm.parse_assembly(ir_text)
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

    def __init__(self, module: llvm.ModuleRef, target: Target, objects: tuple[bytes, ...] = ()):
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
    def from_object(cls, obj: bytes, target: Target) -> Engine:
        """Load machine code made by `emit_object` (fresh, or from the disk cache) without running LLVM."""
        ensure_llvm()
        empty = llvm.parse_assembly("")
        return cls(empty, target, (obj,))

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


def emit_object(ir_text: str, target: Target, *, jit: bool = False) -> bytes:
    """An ELF object: for the JIT (`jit=True`, loaded with `Engine.from_object`), or position-independent
    for ahead-of-time linking."""
    mod = parse(ir_text, target)
    optimize(mod, target)
    tm = target.create_target_machine(jit=jit)
    mod.data_layout = str(tm.target_data)
    return tm.emit_object(mod)


def assembly(ir_text: str, target: Target | None = None) -> str:
    """Optimized assembly for inspection."""
    target = target or host_target()
    mod = parse(ir_text, target)
    optimize(mod, target)
    tm = target.create_target_machine(jit=False)
    return tm.emit_assembly(mod)
