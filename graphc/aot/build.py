"""Standalone training binaries (`graphc build`) and inference libraries (`graphc export`).

The LLVM modules that train in process (the step program with its native epoch driver and initializer, and the
evaluation program) are renamed apart, emitted as position-independent objects and linked, with a generated C
manifest (which table slot holds what, the arena plan, the constants), against a small C driver shipped with
graphc (`driver.c`, `predict.c`), by the system C compiler. Nothing of Python is needed at run time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from graphc.codegen import epoch as drv
from graphc.codegen.memory import describe, plan
from graphc.codegen.schedule import Program
from graphc.codegen.target import Target, emit_object, level_target
from graphc.errors import GraphcError
from graphc.ops.init import distribution

SOURCES = Path(__file__).parent
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wno-unused-function")
LIBS = ("-lm", "-lpthread")
CTX_NAMES = ("TABLE", "DIMS", "WS", "X", "Y", "NSAMP", "BATCH", "EPOCH", "SEED", "PERM", "STEP0", "MAXSTEPS", "XB",
             "YB", "STEPBUF", "KEYBUF", "LOSSBUF", "LOSS_SUM", "STEPS_DONE", "STATUS", "BAD_STEP", "SHUFFLE",
             "DROP_LAST", "LOSSES", "CHECK")
TASK_CODES = {"multiclass": 0, "binary": 1, "regression": 2}
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")

# CPU features a binary checks with __builtin_cpu_supports before running LLVM code (names both GCC and clang know)
CHECKABLE = ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "bmi", "bmi2", "avx512f",
             "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512ifma", "avx512vnni",
             "avx512bitalg", "avx512vpopcntdq", "avx512vbmi2", "avx512bf16", "gfni", "vpclmulqdq", "aes", "pclmul")
_V2 = ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt")
_V3 = (*_V2, "avx", "avx2", "fma", "bmi", "bmi2")
_V4 = (*_V3, "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
LEVEL_FEATURES = {"x86-64": (), "x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}


class AotError(GraphcError):
    """A binary or library could not be built."""


def _refuse_overwriting_inputs(outputs: dict[str, str | Path | None], inputs: dict[str, object],
                               runs: tuple[str | Path, ...] = ()) -> None:
    """An output path (flag -> path) that is one of the files the command reads (flag -> a path, or a bundled
    dataset's or a function's name, skipped), another output, or a file in a run directory it reads (its
    data.json, weights...) would be overwritten: refused before anything is built."""
    read: dict[Path, str] = {}
    for flag, v in inputs.items():
        if isinstance(v, (str, Path)) and Path(v).is_file():
            read[Path(v).resolve()] = f"{flag} {v}"
    seen: dict[Path, str] = {}
    for flag, v in outputs.items():
        if v is None:
            continue
        p = Path(v).resolve()
        if p in read:
            raise AotError(f"{flag} {v}: that is {read[p]}, which this command reads; write the output elsewhere")
        if p in seen:
            raise AotError(f"{flag} {v}: {seen[p]} writes the same file; give them different paths")
        for run in runs:
            r = Path(run).resolve()
            if r.is_dir() and p.parent == r and p.exists():
                raise AotError(f"{flag} {v}: overwrites {p.name} in the run directory {run}, which this command "
                               "reads; write the output elsewhere")
        seen[p] = f"{flag} {v}"


# ------------------------------------------------------------------------------------------------ helpers


def required_features(target: Target) -> list[str]:
    """The CPU features the target's code may use, as __builtin_cpu_supports names."""
    if target.name in LEVEL_FEATURES:
        return list(LEVEL_FEATURES[target.name])
    have = {f[1:] for f in target.features.split(",") if f.startswith("+")}
    return [f for f in CHECKABLE if f in have]


_NAME = r'"(?:[^"\\]|\\.)*"|[-a-zA-Z$._][-a-zA-Z$._0-9]*'
_DEFINE = re.compile(rf"^define\b[^@\n]*@({_NAME})\(", re.M)
_GLOBAL = re.compile(rf"^@({_NAME})\s*=", re.M)
_REF = re.compile(rf"@({_NAME})")
_LOCAL_LINKAGE = ("internal", "private")
_LINKAGE = ("external", "weak", "weak_odr", "linkonce", "linkonce_odr", "common", "extern_weak", "available_externally")


def prefix_symbols(ir_text: str, prefix: str, *, hidden: bool = True) -> str:
    """Rename every symbol the module *defines* (functions and globals) to `prefix + name`, so that several
    graphc modules link into one program; declarations of what they import (pthread_create, log, llvm.*
    intrinsics) keep their names. With `hidden`, the module's non-local definitions get hidden visibility: a
    shared library exports only what its C wrapper marks."""
    defined = {_unquote(m) for m in _DEFINE.findall(ir_text)} | {_unquote(m) for m in _GLOBAL.findall(ir_text)}
    defined = {n for n in defined if not n.startswith("llvm.")}  # llvm.global_dtors: LLVM's, by name

    def ref(m: re.Match) -> str:
        name = _unquote(m.group(1))
        return f'@"{prefix}{name}"' if name in defined else m.group(0)

    out = _REF.sub(ref, ir_text)
    if hidden:
        out = re.sub(r"^(define|@\"[^\"]*\"\s*=)(\s+)(\S+)", _hide, out, flags=re.M)
    return out


def _hide(m: re.Match) -> str:
    head, space, word = m.group(1), m.group(2), m.group(3)
    if head.startswith('@"llvm.') or word in _LOCAL_LINKAGE or word in ("hidden", "protected", "default"):
        return m.group(0)
    if word in _LINKAGE or word == "dso_local":
        return f"{head}{space}{word} hidden"
    return f"{head}{space}hidden {word}"


def _unquote(tok: str) -> str:
    return tok[1:-1] if tok.startswith('"') else tok


def c_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode())
    out.append('"')
    return "".join(out)


def c_double(v: float) -> str:
    return repr(float(v)) if np.isfinite(v) else "0.0"


class Blob:
    """Constants (and, for a library, weights) as one binary file the C compiler embeds with `.incbin`: exact
    bytes, 64-byte aligned, and no multi-megabyte C array literals to parse."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, arr: np.ndarray) -> int:
        data = np.ascontiguousarray(arr).tobytes()
        pad = (-self.size) % 64
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        off = self.size
        self.parts.append(data)
        self.size += len(data)
        return off

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            for p in self.parts:
                f.write(p)
            f.write(b"\0" * 64)  # never an empty section

    def asm(self, path: Path, symbol: str) -> str:
        p = str(path).replace("\\", "\\\\").replace('"', '\\"')
        return (f'__asm__(".pushsection .rodata\\n.balign 64\\n.globl {symbol}\\n.hidden {symbol}\\n'
                f'.type {symbol}, @object\\n{symbol}:\\n.incbin \\"{p}\\"\\n.size {symbol}, .-{symbol}\\n'
                f'.popsection\\n");\n'
                f'extern const unsigned char {symbol}[] __attribute__((visibility("hidden")));\n')


def _places(items) -> str:
    rows = [f"{{{int(s)}, {int(o)}}}" for s, o in items] + ["{-1, 0}"]
    return "{" + ", ".join(rows) + "}"


def _ints(values) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def _tensor(name: str, slot: int, eval_slot: int, shape, blob: int = -1) -> str:
    dims = [int(d) for d in shape]
    if len(dims) > 8:
        raise AotError(f"{name!r} has {len(dims)} dims; the manifest holds at most 8")
    size = int(np.prod(dims, dtype=np.int64))
    return (f"{{{c_string(name)}, {slot}, {eval_slot}, {len(dims)}, {_ints(dims + [0] * (8 - len(dims)))}, {size}, "
            f"{blob}}}")


def _fewest_rows(fns, limit: int, what: str) -> tuple[int, str]:
    """The fewest rows a batch of these programs (which share one model) needs, up to `limit`, and why one row
    fewer fails, as a C string: a binary checks its batches against it before anything runs (a model that slices
    its batch axis, x[2:], needs 3 rows; the native code never reads past a batch)."""
    from graphc.errors import ShapeError

    fewest, why = 1, None
    for fn in fns:
        try:
            k, w = fn.fewest_rows(limit)
        except ShapeError as e:
            raise AotError(f"{what}: {e}") from None
        if k > fewest:
            fewest, why = k, w
    return fewest, c_string(why or "")


def _program_layout(program: Program, barriers: list[bool], target: Target, n_sym, batch: int, max_threads: int,
                    sizes: dict | None = None):
    """Arena placement for `batch` rows (valid for any smaller batch) and the workspace per thread count; `sizes`
    gives the largest value of every symbol instead (a program with several)."""
    env = sizes if sizes is not None else {s: (batch if s == n_sym else 0) for s in program.symbols}
    spec = describe(program, barriers, target)
    p = plan(spec, env, 1, target)
    ws = [0] + [plan(spec, env, t, target).workspace_bytes for t in range(1, max_threads + 1)]
    if max(p.arena_bytes, *ws) >= 1 << 62:  # sizes and offsets are int64 in the C driver: keep far from wrapping
        raise AotError(f"--max-batch {batch}: a call that large needs {max(p.arena_bytes, *ws):.3g} bytes of working "
                       "memory, beyond what 64-bit sizes hold safely; use a smaller --max-batch")
    return p, ws


def _cc() -> str:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise AotError(f"no C compiler {cc!r} on PATH: graphc build and export link with the system C compiler "
                       "(install gcc or clang, or set CC)")
    return cc


MPI_HINT = ("install the mpi extra with `pip install 'graphc[mpi]'` (mpi4py and the mpich wheel, which brings "
            "mpicc and mpirun), or put an MPI library's mpicc on PATH (or name it with MPICC)")


def mpi_compiler() -> str:
    """The `mpicc` that links a binary against the MPI library of the installed extra: $MPICC, else the one
    installed beside this Python (the mpich wheel's), else the first on PATH."""
    import sys

    named = os.environ.get("MPICC")
    if named:
        if shutil.which(named) is None:
            raise AotError(f"graphc build --mpi: MPICC={named!r} is not an executable on PATH; {MPI_HINT}")
        return named
    beside = Path(sys.executable).parent / "mpicc"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpicc")
    if found is None:
        raise AotError(f"graphc build --mpi links the binary with an MPI library through its mpicc, and none was "
                       f"found: {MPI_HINT}")
    return found


def _run_cc(cmd: list[str], what: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise AotError(f"{what}: the C compiler failed ({' '.join(cmd)}):\n{p.stderr.strip()}")


def _objects(modules: dict, target: Target, work: Path) -> list[Path]:
    """Each module, its definitions prefixed, as a position-independent object file. A module is its IR text, or
    (identity, a function giving the text) where the identity says all the text depends on (a compiled
    function's cache key, the target, its drivers): then an object compiled before for the same identity by this
    version of graphc is taken from the compile cache without emitting the text at all. A rebuild of an unchanged
    model skips LLVM and the emission (the default model: 8.4 s -> about 1 s); a text given is keyed by itself."""
    from graphc.runtime import cache as disk_cache

    paths = []
    for prefix, module in modules.items():
        identity, text_of = module if isinstance(module, tuple) else (None, None)
        text = None
        if identity is None:
            text = prefix_symbols(module, prefix)
            identity = text
        h = hashlib.sha256(f"aot-object|{disk_cache.code_version()}|{target.key()}|{prefix}|".encode())
        h.update(identity.encode())
        key = h.hexdigest()
        def make(text=text, text_of=text_of, prefix=prefix) -> bytes:
            text = text if text is not None else prefix_symbols(text_of(), prefix)
            return emit_object(text, target)  # jit=False: reloc=pic, codemodel=default

        obj = disk_cache.blob(key, make)  # made once by concurrent builds of the same model
        path = work / f"{prefix.rstrip('_')}.o"
        path.write_bytes(obj)
        paths.append(path)
    return paths


def _target(target: str | Target) -> Target:
    return target if isinstance(target, Target) else level_target(target)


def _work_dir(keep: bool | str | Path) -> tuple[Path, Callable[[], None]]:
    if keep and not isinstance(keep, bool):
        d = Path(keep)
        d.mkdir(parents=True, exist_ok=True)
        return d.resolve(), lambda: None
    d = Path(tempfile.mkdtemp(prefix="graphc-aot-"))
    return d, (lambda: None) if keep else (lambda: shutil.rmtree(d, ignore_errors=True))


# ------------------------------------------------------------------------------------------------ the model


@dataclass
class ModelSpec:
    """What a build needs to know besides the model: the task and sizes (from a dataset or given)."""

    task: str
    n_features: int
    n_outputs: int
    y_shape: tuple
    classes: list
    dataset: str
    config: object  # TrainConfig
    model_fn: Callable | None
    model_desc: str
    notes: list[str] = field(default_factory=list)
    data: dict | None = None  # the dataset's standardization and classes (graphc.fitting.data_description)
    grid: tuple | None = None  # a model that asks for `images` gets x as (N, *grid); rows stay flat in files
    model_path: str | None = None  # the model file's absolute path (a model file)


# options that shape the compiled step
BUILD_OPTIONS = ("hidden", "activation", "init", "bias_init", "optimizer", "penalize")
RUN_OPTIONS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "l2", "l1", "dropout", "early_stopping",
               "min_delta", "seed")


def model_spec(model=None, data="digits", *, task: str | None = None, n_features: int | None = None,
               n_outputs: int | None = None, label: str | None = None, features: list[str] | None = None,
               grid: tuple | None = None, **options) -> ModelSpec:
    """Resolve the model (None: the default MLP; a function; a model file) and learn the task, feature count and
    classes from `data` (a bundled dataset name, a file, a Dataset) unless `task`, `n_features` and `n_outputs`
    are all given."""
    from graphc import data as datasets
    from graphc.fitting import DATASET_DEFAULTS, OPTIMIZER_DEFAULTS, load_model_file, other_optimizers_options
    from graphc.nn.train import TrainConfig

    file_options: dict = {}
    model_fn = model
    desc = "the default MLP"
    if isinstance(model, (str, Path)):
        model_fn, file_options = load_model_file(str(model))
        desc = f"model file {Path(model).name}"
    elif model is not None:
        desc = f"model {getattr(model, '__name__', 'function')}"
    classes: list = []
    y_shape: tuple = ()
    description = None
    if task is not None and n_features is not None and n_outputs is not None:
        name = f"{task} {n_features}->{n_outputs}"
        classes = list(range(n_outputs)) if task == "multiclass" else []
        y_shape = () if task == "multiclass" or n_outputs == 1 else (n_outputs,)
    else:
        from graphc.nn.train import model_layout, takes_lengths

        tokens = model_layout(model_fn) == "tokens"
        ds = data if isinstance(data, datasets.Dataset) else datasets.load(data, label=label, features=features,
                                                                         task=task, tokens=tokens,
                                                                         lengths=takes_lengths(model_fn))
        from graphc.fitting import check_layout

        check_layout(model_fn, ds, desc)
        task, n_features, n_outputs, name = ds.task, ds.n_features, ds.n_outputs, ds.name
        classes = list(ds.classes)
        y_shape = tuple(ds.y_train.shape[1:]) if ds.task != "multiclass" else ()
        grid = grid if grid is not None else ds.grid
        from graphc.fitting import data_description

        description = data_description(ds)
    defaults = dict(DATASET_DEFAULTS.get(data, {})) if isinstance(data, str) else {}  # a copy: updated below
    if model_fn is not None:  # the default MLP's options would be silently ignored (as graphc train refuses them)
        from graphc.fitting import MLP_OPTIONS

        shaping = [MLP_OPTIONS[k] for k in MLP_OPTIONS if options.get(k) is not None or k in file_options]
        if shaping:
            raise AotError(f"{', '.join(shaping)} shape(s) the default MLP only, and {desc} defines its own layers: "
                           "it would be ignored. Drop it, or build it into the model")
        defaults = {k: v for k, v in defaults.items() if k not in MLP_OPTIONS}
    given = {k: v for k, v in options.items() if v is not None}
    file_options, dropped_note = other_optimizers_options(file_options, given, desc)  # as gc.fit leaves them out
    defaults.update(OPTIMIZER_DEFAULTS.get({**defaults, **file_options, **given}.get("optimizer", "sgd"), {}))
    merged = {**defaults, **file_options, **given}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(merged) - known
    if unknown:
        raise AotError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
    notes = []
    for k, default in (("refit", False), ("drop_last", False)):
        if merged.get(k, default) != default:
            notes.append(f"option {k}={merged[k]!r} is not supported by a standalone binary and is ignored")
            merged.pop(k)
    config = TrainConfig(**merged)
    config.validate()
    if dropped_note:
        notes.append(dropped_note(config).removeprefix("note: "))
    if model_fn is None:
        desc = f"the default MLP {'-'.join(str(d) for d in [n_features, *config.hidden, n_outputs])} " \
               f"({config.activation}, {config.init} init)"
    from graphc.nn.train import model_layout, wants_images

    if grid is not None and wants_images(model_fn):
        desc += f" on {'x'.join(map(str, grid))} images (each row one image, row-major, channels last)"
    elif grid is not None and model_layout(model_fn) == "sequences":
        desc += f" on sequences of {'x'.join(map(str, grid[:2]))} (steps x features, each row one sequence)"
    return ModelSpec(task, int(n_features), int(n_outputs), y_shape, classes, name, config, model_fn, desc, notes,
                     description, tuple(grid) if grid is not None else None,
                     str(Path(model).resolve()) if isinstance(model, (str, Path)) else None)


# ------------------------------------------------------------------------------------------------ build


@dataclass
class BuildResult:
    path: Path
    target: str
    task: str
    n_features: int
    n_outputs: int
    params: list[tuple[str, tuple]]
    step_key: str | None  # the full step's compile-cache key (host target only): equal keys, equal compiled steps
    step_digest: str  # the full step's structural hash (loss and every update)
    plain_key: str | None  # the same for the plain step (None when the binary has one step)
    plain_digest: str | None
    cpu_features: list[str]
    seconds: float
    link_command: list[str]
    work_dir: Path | None
    notes: list[str]


def _prepare(target, max_batch, max_threads, model, data, **kw) -> tuple[Target, ModelSpec]:
    """What `build` and `export` both check first: the limits, the target and the model."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise AotError(f"--max-batch must be a positive integer, got {max_batch!r}")
    if not isinstance(max_threads, int) or not 1 <= max_threads <= 1024:
        raise AotError(f"--max-threads must be in 1..1024, got {max_threads!r}")
    return _target(target), model_spec(model, data, **kw)


def step_digest(trainer) -> str:
    """A structural hash of a trainer's step: the loss and every in-place update, by parameter name."""
    import hashlib

    h = hashlib.sha256(trainer.loss.digest().encode())
    for leaf, new in sorted(trainer.updates.items(), key=lambda kv: kv[0].name):
        h.update(f"{leaf.name}={new.digest()}".encode())
    return h.hexdigest()


def build(output: str | Path, model=None, data="digits", *, target: str | Target = "native", max_batch: int = 4096,
          max_threads: int = 16, task: str | None = None, n_features: int | None = None,
          n_outputs: int | None = None, label: str | None = None, features: list[str] | None = None,
          keep: bool | str | Path = False, cflags: tuple[str, ...] = (), log: Callable[[str], None] | None = None,
          mpi: bool = False, **options) -> BuildResult:
    """Build a native executable at `output` that trains `model` (None: the default MLP; a function
    `model(x, n_outputs)`; a model file) for the task of `data` (only its task, feature count and classes are
    used). `options` are TrainConfig options: those that shape the step (hidden, activation, init, optimizer,
    penalize) are compiled in; epochs, batch_size, lr, momentum, weight_decay (adamw's), l2, l1, dropout,
    early_stopping, min_delta and seed become the binary's defaults.

    The binary holds two steps, each the LLVM module the in-process trainer compiles: the *full* step (momentum,
    L2, L1 and, for the default MLP, dropout with run-time keep probabilities: what `graphc train` builds when
    those options are set) and the *plain* step (what it builds when they are not). A run uses the plain step
    when its flags leave every extra feature at its identity value, else the full one, so it trains bitwise as
    `graphc train` does with the same flags, and as fast.

    With `mpi`, the binary is linked by the MPI extra's `mpicc` and also holds, for each step, the two programs of
    a data-parallel step (graphc.distributed: the gradients of a rank's share of the batch, and the update of a
    share of the parameters from the gradient summed over the ranks): `mpirun -n P BINARY ...` trains
    data-parallel, as `mpirun -n P graphc train` does, with bitwise the same weights."""
    from dataclasses import replace

    from graphc.nn.train import EVAL_BATCH, Trainer

    t0 = time.perf_counter()
    log = log or (lambda m: None)
    _refuse_overwriting_inputs({"-o": output}, {"--model": model, "--dataset": data})
    mpicc = mpi_compiler() if mpi else None  # before compiling anything
    tgt, spec = _prepare(target, max_batch, max_threads, model, data, task=task, n_features=n_features,
                         n_outputs=n_outputs, label=label, features=features, **options)
    for note in spec.notes:
        log(note)
    cfg = spec.config

    def trainer(config, all_features: bool):
        return Trainer(spec.model_fn, spec.task, spec.n_features, spec.n_outputs, config, y_shape=spec.y_shape,
                       log=lambda m: None, all_features=all_features, grid=spec.grid,
                       data=spec.dataset)

    tr = trainer(cfg, True)
    _check_layer_state(tr)
    keep_mu = cfg.optimizer in ("momentum", "nesterov")  # their momentum is the optimizer, not an extra feature
    plain = trainer(replace(cfg, l2=0.0, l1=0.0, dropout=None, momentum=cfg.momentum if keep_mu else 0.0), False)
    if step_digest(plain) == step_digest(tr):
        plain = None
    for t in (tr, plain):
        if t is not None and not t.native_init:
            bad = [p.name for p in t.params if p.dtype != "float32" or distribution(p.meta.get("init", "zeros"), 1, 1)
                   is None]
            raise AotError(f"parameters {bad} have no native initializer (a binary initializes parameters natively: "
                           "use a named scheme such as 'he_normal', a number, Uniform or Normal, and float32)")
    if plain is not None and [(p.name, p.shape) for p in plain.params] != [(p.name, p.shape) for p in tr.params]:
        raise AotError("internal: the plain and the full step have different parameters")
    ev = tr.eval_fn
    if len(ev.program.outputs) != 2:
        raise AotError("internal: the evaluation program should have two outputs (loss, model outputs)")
    out_node = tr.out
    if out_node.dtype != "float32" or out_node.ndim < 1 or not all(isinstance(d, int) for d in out_node.shape[1:]):
        raise AotError(f"the model must return float32 outputs of shape (N, {spec.n_outputs}), got "
                       f"{out_node.type_str}")
    if spec.task == "multiclass" and tuple(out_node.shape[1:]) != (spec.n_outputs,):
        raise AotError(f"the model returns {out_node.type_str} but the task has {spec.n_outputs} classes: expected "
                       f"(N, {spec.n_outputs}) logits")
    steps = [("train_", tr, "full")] + ([("plain_", plain, "plain")] if plain is not None else [])
    host = tgt is tr.epoch_fn.target

    def ir_of(fn, extras: bool):
        """(what the module's text depends on, a function emitting it): the program's cache key (its graph,
        options and drivers, for the host), the target and whether the drivers are in (`_objects`)."""
        if host:
            return f"{fn.cache_key}|host|{extras}", lambda: fn.llvm_ir
        # the same program, emitted for another target than the host's (the trainer compiled for the host)
        return f"{fn.cache_key}|{tgt.key()}|{extras}", lambda: fn.module_text(tgt, extras)

    parallel = None
    if mpi:
        from graphc.distributed import grad_program, slice_norm_program, slice_update_program

        parallel = [(grad_program(t), slice_update_program(t, 1), slice_norm_program(t, 1)) for _, t, _ in steps]
    work, cleanup = _work_dir(keep)
    try:
        header = _model_header(steps, tr, spec, tgt, max_batch, max_threads, EVAL_BATCH, work, parallel)
        (work / "graphc_model.h").write_text(header)
        modules = {prefix: ir_of(t.epoch_fn, True) for prefix, t, _ in steps}
        modules["eval_"] = ir_of(ev, False)
        for (prefix, _, _), ((gfn, _), (ufn, _, _), nfn) in zip(steps, parallel or [], strict=False):
            modules[f"{prefix}g_"] = ir_of(gfn, False)
            modules[f"{prefix}u_"] = ir_of(ufn, False)
            if nfn is not None:
                modules[f"{prefix}n_"] = ir_of(nfn, False)
        objs = _objects(modules, tgt, work)
        out = Path(output).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        cc = [mpicc, "-DGC_MPI=1"] if mpicc else [_cc()]
        cmd = [*cc, *CFLAGS, *cflags, f"-I{work}", f"-I{SOURCES}", "-o", str(out), str(SOURCES / "driver.c"),
               *map(str, objs), *LIBS]
        _run_cc(cmd, "graphc build --mpi" if mpi else "graphc build")
    finally:
        cleanup()
    return BuildResult(out, tgt.name, spec.task, spec.n_features, spec.n_outputs,
                       [(p.name, tuple(p.shape)) for p in tr.params], tr.epoch_fn.cache_key if host else None,
                       step_digest(tr), plain.epoch_fn.cache_key if host and plain is not None else None,
                       step_digest(plain) if plain is not None else None, required_features(tgt),
                       time.perf_counter() - t0, cmd, work if keep else None, spec.notes)


def _check_layer_state(tr) -> None:
    """The state a model's layers keep (batch norm's running statistics) is carried by the binary as float32
    arrays beside the parameters, written as <name>.npy: a float64 one is refused (the binary's arrays are
    float32), as is one whose name cannot name a file."""
    for b in tr.buffers:
        if b.dtype != "float32":
            raise AotError(f"the model keeps the state {b.name!r} as {b.type_str} (a batch norm of float64 "
                           "features); a standalone binary carries float32 state only: make the features float32")


# graphc_aot.h's GC_SCALAR_*; 4: keep.<i>
_KINDS = {"lr": 0, "momentum": 1, "l2": 2, "l1": 3, "weight_decay": 5, "clip_grad_norm": 6}


def _step_manifest(k: int, prefix: str, tr, label: str, state_names: list[str], buf_names: list[str], tgt: Target,
                   max_batch: int, max_threads: int, blob: Blob) -> tuple[list[str], str]:
    """The C declarations of one step program: (lines, its gc_step_t initializer)."""
    ef = tr.epoch_fn
    prog = ef.program
    leaves = list(ef.signature.inputs)
    slot = {leaf.name: buf.index for leaf, buf in zip(leaves, prog.inputs, strict=True)}
    x, y = tr.x, tr.y
    n_sym = x.shape[0]
    param_names = {p.name for p in tr.params}
    step_slot = key_slot = -1
    step_f64 = 0
    scalars = []
    for leaf in leaves:
        name = leaf.name
        if name in (x.name, y.name) or name in param_names or name in tr.state_inputs or name in buf_names:
            continue
        if name == "step":
            step_slot, step_f64 = slot[name], int(leaf.dtype == "float64")
            continue
        if name == "rng_key":
            if ef.training:
                key_slot = slot[name]
            continue
        if leaf.shape != () or leaf.dtype != "float32" or not (name in _KINDS or re.fullmatch(r"keep\.\d+", name)):
            raise AotError(f"the training step has an input {name!r} ({leaf.type_str}) that a standalone binary "
                           "cannot feed (it feeds lr, momentum, weight_decay, l2, l1, clip_grad_norm, keep.<i>, step "
                           "and rng_key)")
        kind = _KINDS.get(name, 4)
        index = int(name.split(".")[1]) if kind == 4 else 0
        scalars.append(f"{{{c_string(name)}, {slot[name]}, {kind}, {index}}}")
    for n in tr.state_inputs:
        if n not in state_names:
            raise AotError(f"internal: the {label} step's optimizer state {n!r} is not in the full step's")
    nkeep = 1 + max((int(s.split(".")[1]) for s in slot if re.fullmatch(r"keep\.\d+", s)), default=-1)
    tplan, tws = _program_layout(prog, ef.barriers, tgt, n_sym, max_batch, max_threads)
    consts = [(i, blob.add(a)) for i, a in sorted(prog.consts.items())]
    s = f"gc_s{k}_"
    lines = [
        f"static const gc_place_t {s}temps[] = {_places(sorted(tplan.offsets.items()))};",
        f"static const gc_place_t {s}consts[] = {_places(consts)};",
        f"static const int64_t {s}ws[] = {_ints(tws)};",
        f"static const int32_t {s}param_slots[] = {_ints(slot[p.name] for p in tr.params)};",
        f"static const int32_t {s}state_slots[] = {_ints([slot.get(n, -1) for n in state_names] or [-1])};",
        f"static const int32_t {s}buf_slots[] = {_ints([slot.get(n, -1) for n in buf_names] or [-1])};",
        f"static const gc_scalar_t {s}scalars[] = {{{', '.join(scalars or ['{0, -1, 0, 0}'])}}};",
        f"int32_t {prefix}graphc_epoch(void *ctx, void *unused1, void *unused2, int32_t nthreads);",
        f"void {prefix}graphc_init(void *table, int64_t seed);",
    ]
    init = (f"{{{c_string(label)}, {c_string(step_digest(tr)[:16])}, {len(prog.buffers)}, "
            f"{max(len(prog.symbols), 1)}, {list(prog.symbols).index(n_sym)}, {slot[x.name]}, {slot.get(y.name, -1)}, "
            f"{step_slot}, {step_f64}, {key_slot}, {prog.outputs[0].index}, {tplan.arena_bytes}, {len(scalars)}, "
            f"{int('momentum' in slot)}, {int('l2' in slot)}, {int('l1' in slot)}, {nkeep}, {s}temps, {s}consts, "
            f"{s}ws, {s}param_slots, {s}state_slots, {s}buf_slots, {s}scalars, {prefix}graphc_epoch, "
            f"{prefix}graphc_init}}")
    return lines, init


def _parallel_manifest(k: int, prefix: str, t, grad, update, norm, state_names: list[str], buf_names: list[str],
                       tgt: Target, max_batch: int, max_threads: int, blob: Blob) -> tuple[list[str], str]:
    """The C declarations of one step's data-parallel programs (graphc.distributed.grad_program,
    slice_update_program with one slot and, with gradient clipping, slice_norm_program with one slot): (lines, its
    gc_par_t initializer)."""
    (gfn, offsets), (ufn, has_pen, slot_names) = grad, update
    s = f"gc_p{k}_"
    lines = []

    def prog_decl(fn, tag: str, fprefix: str, n_sym, sizes) -> str:
        prog = fn.program
        tplan, tws = _program_layout(prog, fn.barriers, tgt, n_sym, max_batch, max_threads, sizes)
        consts = [(i, blob.add(a)) for i, a in sorted(prog.consts.items())]
        lines.extend([
            f"static const gc_place_t {s}{tag}temps[] = {_places(sorted(tplan.offsets.items()))};",
            f"static const gc_place_t {s}{tag}consts[] = {_places(consts)};",
            f"static const int64_t {s}{tag}ws[] = {_ints(tws)};",
            f"int32_t {fprefix}graphc_run(void *table, void *dims, void *ws, int32_t nthreads);"])
        return (f"{{{len(prog.buffers)}, {max(len(prog.symbols), 1)}, {tplan.arena_bytes}, {s}{tag}temps, "
                f"{s}{tag}consts, {s}{tag}ws, {fprefix}graphc_run}}")

    # the gradient program: x, y, the parameters, the layers' state (each rank's own, updated in place), grad_weight,
    # rng_key, dropout offsets, keep.<i>
    gprog = gfn.program
    gleaves = list(gfn.signature.inputs)
    gslot = {leaf.name: buf.index for leaf, buf in zip(gleaves, gprog.inputs, strict=True)}
    n_sym = t.x.shape[0]
    params = [p.name for p in t.params]
    offs = [] if offsets is None else sorted((size, node.name) for size, node in offsets.items())
    off_names = {name for _, name in offs}
    gscalars = []
    for leaf in gleaves:
        name = leaf.name
        if name in (t.x.name, t.y.name, "grad_weight", "rng_key") or name in params or name in off_names \
                or name in buf_names:
            continue
        if leaf.shape != () or leaf.dtype != "float32" or not re.fullmatch(r"keep\.\d+", name):
            raise AotError(f"the gradient program has an input {name!r} ({leaf.type_str}) that a standalone binary "
                           "cannot feed")
        gscalars.append(f"{{{c_string(name)}, {gslot[name]}, 4, {int(name.split('.')[1])}}}")
    # then the running statistics' new values, written in place into their inputs (CompiledFunction's updates)
    gouts = [b.index for b in gprog.outputs]
    if len(gouts) != 1 + len(params) + len(gfn.updates) or any(
            gouts[pos] != gprog.inputs[j].index for pos, j in gfn.updates.items()):
        raise AotError("internal: the gradient program should output the weighted loss and one gradient per parameter")
    g_init = prog_decl(gfn, "g", f"{prefix}g_", n_sym, None)
    # the update program: per parameter its share (symbol S<i>), its optimizer state and the summed gradient
    uprog = ufn.program
    uleaves = list(ufn.signature.inputs)
    uslot = {leaf.name: buf.index for leaf, buf in zip(uleaves, uprog.inputs, strict=True)}
    syms = list(uprog.symbols)
    sizes = {}
    udims = []
    for p in t.params:
        sym = next((d for leaf in uleaves if leaf.name == p.name for d in leaf.shape), None)
        udims.append(syms.index(sym) if sym in syms else -1)
        if sym is not None:
            sizes[sym] = int(np.prod(p.shape, dtype=np.int64))
    owner = {n: i for i, p in enumerate(t.params) for n in t.opt.state_names(p)}
    uscalars, ustep, ustep64 = [], -1, 0
    known = set(params) | set(owner) | {nm[0] for nm in slot_names}
    for leaf in uleaves:
        name = leaf.name
        if name in known or name == "grad_sumsq":
            continue
        if name == "step":
            ustep, ustep64 = uslot[name], int(leaf.dtype == "float64")
            continue
        if leaf.shape != () or leaf.dtype != "float32" or name not in _KINDS:
            raise AotError(f"the update program has an input {name!r} ({leaf.type_str}) that a standalone binary "
                           "cannot feed")
        uscalars.append(f"{{{c_string(name)}, {uslot[name]}, {_KINDS[name]}, 0}}")
    u_init = prog_decl(ufn, "u", f"{prefix}u_", None, sizes)
    # the norm program (clipping): the same share inputs as the update's, the share's sum of squares out
    n_init, n_out, nparams, ngrads, ndims, nscalars = "{0, 0, 0, 0, 0, 0, 0}", -1, [], [], [], []
    if norm is not None:
        nprog = norm.program
        nleaves = list(norm.signature.inputs)
        nslot = {leaf.name: buf.index for leaf, buf in zip(nleaves, nprog.inputs, strict=True)}
        nsyms = list(nprog.symbols)
        nsizes = {}
        for p, nm in zip(t.params, slot_names, strict=True):
            sym = next(d for leaf in nleaves if leaf.name == nm[0] for d in leaf.shape)
            ndims.append(nsyms.index(sym) if sym in nsyms else -1)
            nsizes[sym] = int(np.prod(p.shape, dtype=np.int64))
        nparams = [nslot.get(n, -1) for n in params]
        ngrads = [nslot.get(nm[0], -1) for nm in slot_names]
        for leaf in nleaves:
            name = leaf.name
            if name in params or name in {nm[0] for nm in slot_names}:
                continue
            if leaf.shape != () or leaf.dtype != "float32" or name not in _KINDS:
                raise AotError(f"the gradient norm program has an input {name!r} ({leaf.type_str}) that a "
                               "standalone binary cannot feed")
            nscalars.append(f"{{{c_string(name)}, {nslot[name]}, {_KINDS[name]}, 0}}")
        n_out = nprog.outputs[0].index
        n_init = prog_decl(norm, "n", f"{prefix}n_", None, nsizes)
    lines += [
        f"static const int32_t {s}gparams[] = {_ints(gslot.get(n, -1) for n in params)};",
        f"static const int32_t {s}ggrads[] = {_ints(gouts[1:1 + len(params)])};",
        f"static const int32_t {s}gbufs[] = {_ints([gslot.get(n, -1) for n in buf_names] or [-1])};",
        f"static const int32_t {s}offslots[] = {_ints([gslot[n] for _, n in offs] or [-1])};",
        f"static const int64_t {s}offsizes[] = {_ints([sz for sz, _ in offs] or [0])};",
        f"static const gc_scalar_t {s}gscalars[] = {{{', '.join(gscalars or ['{0, -1, 0, 0}'])}}};",
        f"static const int32_t {s}uparams[] = {_ints(uslot.get(n, -1) for n in params)};",
        f"static const int32_t {s}ugrads[] = {_ints(uslot.get(nm[0], -1) for nm in slot_names)};",
        f"static const int32_t {s}udims[] = {_ints(udims)};",
        f"static const int32_t {s}ustate[] = {_ints([uslot.get(n, -1) for n in state_names] or [-1])};",
        f"static const int32_t {s}ustate_param[] = {_ints([owner.get(n, -1) for n in state_names] or [-1])};",
        f"static const gc_scalar_t {s}uscalars[] = {{{', '.join(uscalars or ['{0, -1, 0, 0}'])}}};",
        f"static const int32_t {s}nparams[] = {_ints(nparams or [-1])};",
        f"static const int32_t {s}ngrads[] = {_ints(ngrads or [-1])};",
        f"static const int32_t {s}ndims[] = {_ints(ndims or [-1])};",
        f"static const gc_scalar_t {s}nscalars[] = {{{', '.join(nscalars or ['{0, -1, 0, 0}'])}}};",
    ]
    init = (f"{{{g_init}, {u_init}, {list(gprog.symbols).index(n_sym)}, {gslot[t.x.name]}, "
            f"{gslot.get(t.y.name, -1)}, {gslot['grad_weight']}, {gslot.get('rng_key', -1)}, {gouts[0]}, "
            f"{len(offs)}, {int(offsets is not None)}, {len(gscalars)}, {s}gparams, {s}ggrads, {s}gbufs, {s}offslots, "
            f"{s}offsizes, {s}gscalars, {ustep}, {ustep64}, {uprog.outputs[0].index if has_pen else -1}, "
            f"{len(uscalars)}, {s}uparams, {s}ugrads, {s}udims, {s}ustate, {s}ustate_param, {s}uscalars, "
            f"{n_init}, {int(norm is not None)}, {uslot.get('grad_sumsq', -1)}, {n_out}, {len(nscalars)}, "
            f"{s}nparams, {s}ngrads, {s}ndims, {s}nscalars}}")
    return lines, init


def _run_json(spec: ModelSpec) -> str:
    """data.json's fields that let gc.load rebuild the model a binary trained: the sizes, the grid, the model file
    (or the default MLP's shape)."""
    import json

    from graphc.fitting import MLP_OPTIONS

    cfg = {k: getattr(spec.config, k) for k in MLP_OPTIONS if k != "dropout"} if spec.model_fn is None else {}
    from graphc.nn.train import takes_lengths

    fields_ = {"n_features": spec.n_features, "n_outputs": spec.n_outputs,
               "grid": list(spec.grid) if spec.grid is not None else None, "lengths": takes_lengths(spec.model_fn),
               "model": spec.model_path or ("default MLP" if spec.model_fn is None else spec.model_desc),
               "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    return "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in fields_.items())


def _model_header(steps, tr, spec: ModelSpec, tgt: Target, max_batch: int, max_threads: int, eval_batch: int,
                  work: Path, parallel=None) -> str:
    from graphc.ir.node import topo_order

    cfg = spec.config
    ev = tr.eval_fn
    eprog = ev.program
    eleaves = list(ev.signature.inputs)
    eslot = {leaf.name: buf.index for leaf, buf in zip(eleaves, eprog.inputs, strict=True)}
    x, y = tr.x, tr.y
    n_sym = x.shape[0]
    param_names = {p.name for p in tr.params}
    state_names = list(tr.state_inputs)
    # the layers' state (batch norm's running statistics): arrays the binary keeps, saves and evaluates with
    buf_names = [b.name for b in tr.buffers]
    for leaf in eleaves:
        if leaf.name not in (x.name, y.name, "rng_key") and leaf.name not in param_names and leaf.name not in buf_names:
            raise AotError(f"the evaluation program has an unexpected input {leaf.name!r}")
    for n in [*param_names, *state_names, *buf_names]:
        if not SAFE_NAME.match(n) or n in ("history.csv", "metrics.json"):
            raise AotError(f"parameter name {n!r} cannot name a file (<name>.npy): use letters, digits, '_', "
                           "'.' and '-'")
    blob = Blob()
    L = ["/* generated by graphc build: the model's manifest (do not edit) */", "#include \"graphc_aot.h\"", ""]
    for i, nm in enumerate(CTX_NAMES):
        assert getattr(drv, nm) == i
        L.append(f"#define GC_CTX_{nm} {i}")
    L += [f"#define GC_CTX_SLOTS {drv.CTX_SLOTS}", f"#define GC_STATUS_CHECK {drv.STATUS_CHECK}", ""]
    L += ["typedef struct {",
          "    const char *label, *digest;",
          "    int32_t nbuf, nsym, ndim, x, y, step, step_f64, key, loss;",
          "    int64_t arena;",
          "    int32_t nscalars, has_momentum, has_l2, has_l1, nkeep;",
          "    const gc_place_t *temps, *consts;",
          "    const int64_t *ws;",
          "    const int32_t *param_slots, *state_slots, *buf_slots;",
          "    const gc_scalar_t *scalars;",
          "    int32_t (*epoch)(void *, void *, void *, int32_t);",
          "    void (*init)(void *, int64_t);",
          "} gc_step_t;", ""]
    inits = []
    for k, (prefix, t, label) in enumerate(steps):
        lines, init = _step_manifest(k, prefix, t, label, state_names, buf_names, tgt, max_batch, max_threads, blob)
        L += lines
        inits.append(init)
    if parallel is not None:
        from graphc.codegen.epoch_abi import KEY_MULT
        from graphc.distributed import RANK_KEY

        L += ["typedef struct {",
              "    int32_t nbuf, nsym;",
              "    int64_t arena;",
              "    const gc_place_t *temps, *consts;",
              "    const int64_t *ws;",
              "    int32_t (*run)(void *, void *, void *, int32_t);",
              "} gc_prog_t;", "",
              "typedef struct {",
              "    gc_prog_t g, u;",
              "    int32_t g_ndim, g_x, g_y, g_weight, g_key, g_loss, g_noff, g_offsets_ok, g_nscalars;",
              "    const int32_t *g_params, *g_grads, *g_bufs, *g_off_slots;",
              "    const int64_t *g_off_sizes;",
              "    const gc_scalar_t *g_scalars;",
              "    int32_t u_step, u_step_f64, u_pen, u_nscalars;",
              "    const int32_t *u_params, *u_grads, *u_dims, *u_state, *u_state_param;",
              "    const gc_scalar_t *u_scalars;",
              "    gc_prog_t n;  /* with clipping: a share's sum of squares of the gradient */",
              "    int32_t has_norm, u_sumsq, n_out, n_nscalars;",
              "    const int32_t *n_params, *n_grads, *n_dims;",
              "    const gc_scalar_t *n_scalars;",
              "} gc_par_t;", ""]
        pinits = []
        for k, ((prefix, t, _), (g, u, nrm)) in enumerate(zip(steps, parallel, strict=True)):
            lines, init = _parallel_manifest(k, prefix, t, g, u, nrm, state_names, buf_names, tgt, max_batch,
                                             max_threads, blob)
            L += lines
            pinits.append(init)
        L.append("static const gc_par_t gc_par[] = {" + ", ".join(pinits) + "};")
        # a model whose random numbers cannot follow the rows (offsets None): each rank keys its own, with the
        # warning the in-process run prints (before and after the rank count)
        from graphc.distributed import per_rank_keys_warning

        cut = "\0ranks\0"
        warn = per_rank_keys_warning(tr, cut).split(cut)
        L.append(f"#define GC_PAR_WARNING {c_string(warn[0])}")
        L.append(f"#define GC_PAR_WARNING_END {c_string(warn[1])}")
        L.append(f"#define GC_KEY_MULT {KEY_MULT}ULL")
        L.append(f"#define GC_RANK_KEY {RANK_KEY}ULL")
        L.append("")
    full_slots = {leaf.name for leaf in tr.epoch_fn.signature.inputs}
    nkeep = 1 + max((int(s.split(".")[1]) for s in full_slots if re.fullmatch(r"keep\.\d+", s)), default=-1)
    eplan, ews = _program_layout(eprog, ev.barriers, tgt, n_sym, eval_batch, max_threads)
    fewest, fewest_why = _fewest_rows([t.epoch_fn for _, t, _ in steps], max_batch, "the training step")
    e_fewest, e_fewest_why = _fewest_rows([ev], eval_batch, "the evaluation program")
    econsts = [(i, blob.add(a)) for i, a in sorted(eprog.consts.items())]
    from graphc.nn.layers import init_state

    first = init_state(tr.out)  # the state's initial values (running mean 0, variance 1), copied in at start
    bufs = [_tensor(b.name, -1, eslot.get(b.name, -1), b.shape, blob.add(first[b.name])) for b in tr.buffers]
    blob_path = work / "model.bin"
    blob.write(blob_path)
    mm = []
    for n in topo_order(tr.loss):
        if n.op.name == "matmul":
            kdim = n.inputs[0].shape[0 if n.attrs["ta"] else 1]
            mm.append([d if isinstance(d, int) else -1 for d in (*n.shape, kdim)])
    feats = required_features(tgt)
    momentum = cfg.momentum or (getattr(tr.opt, "momentum", 0.0) if cfg.optimizer in ("momentum", "nesterov")
                                else 0.0)
    keeps = list(cfg.dropout or [])
    y_dims = [int(d) for d in y.shape[1:]]
    out_row = int(np.prod([int(d) for d in tr.out.shape[1:]], dtype=np.int64))
    defs = {
        "GC_TARGET": c_string(tgt.name), "GC_TARGET_CPU": c_string(tgt.cpu),
        "GC_MODEL_DESC": c_string(spec.model_desc), "GC_DATASET": c_string(spec.dataset),
        "GC_OPTIMIZER": c_string(tr.opt.name if cfg.optimizer not in ("sgd", "gd") else "sgd"),
        "GC_TASK": TASK_CODES[spec.task], "GC_TASK_NAME": c_string(spec.task),
        "GC_N_FEATURES": spec.n_features, "GC_N_OUTPUTS": spec.n_outputs, "GC_OUT_ROW": out_row,
        "GC_N_CLASSES": spec.n_outputs if spec.task == "multiclass" else 0,
        "GC_Y_NDIM": len(y_dims), "GC_Y_ROW": int(np.prod(y_dims, dtype=np.int64)),
        "GC_MAX_BATCH": max_batch, "GC_MAX_THREADS": max_threads, "GC_EVAL_BATCH": eval_batch,
        "GC_RUN_JSON": c_string(_run_json(spec)),
        # data.json's classes as gc.fit writes them: numbers stay numbers (digits' labels were written "0".."9", so a
        # loaded binary run's predict_labels gave strings that never equal the int labels)
        "GC_CLASSES_JSON": c_string(json.dumps([_plain(c) for c in spec.classes])),
        "GC_FEWEST_ROWS": fewest, "GC_FEWEST_WHY": fewest_why, "GC_E_FEWEST_ROWS": e_fewest,
        "GC_E_FEWEST_WHY": e_fewest_why,
        "GC_DEF_EPOCHS": cfg.epochs, "GC_DEF_BATCH": cfg.batch_size, "GC_DEF_LR": c_double(cfg.lr),
        "GC_DEF_MOMENTUM": c_double(momentum), "GC_DEF_L2": c_double(cfg.l2), "GC_DEF_L1": c_double(cfg.l1),
        "GC_DEF_PATIENCE": cfg.early_stopping or 0, "GC_DEF_MIN_DELTA": c_double(cfg.min_delta),
        "GC_DEF_SEED": int(cfg.seed), "GC_DEF_SCHEDULE": ("constant", "step", "cosine").index(cfg.schedule),
        "GC_DEF_STEP_EVERY": int(cfg.step_every), "GC_DEF_STEP_GAMMA": c_double(cfg.step_gamma),
        "GC_DEF_NKEEP": len(keeps), "GC_NKEEP": nkeep, "GC_NSTEPS": len(steps),
        "GC_HAS_MOMENTUM": int("momentum" in full_slots), "GC_HAS_L2": int("l2" in full_slots),
        "GC_HAS_L1": int("l1" in full_slots), "GC_HAS_WEIGHT_DECAY": int("weight_decay" in full_slots),
        "GC_DEF_WEIGHT_DECAY": c_double(tr.scalars(0).get("weight_decay", 0.0)),
        "GC_HAS_CLIP": int("clip_grad_norm" in full_slots), "GC_DEF_CLIP": c_double(cfg.clip_grad_norm or 0.0),
        "GC_X_ROW_BYTES": int(tr.x.shape[1]) * 4, "GC_X_WIDTH": int(tr.x.shape[1]),
        "GC_LENGTHS": tr.steps if tr.lengths else 0, "GC_Y_ROW_BYTES": int(np.prod(y_dims, dtype=np.int64)) * 4,
        "GC_E_NBUF": len(eprog.buffers), "GC_E_NSYM": max(len(eprog.symbols), 1),
        "GC_E_NDIM": list(eprog.symbols).index(n_sym), "GC_E_X": eslot[x.name], "GC_E_Y": eslot.get(y.name, -1),
        "GC_E_LOSS": eprog.outputs[0].index, "GC_E_OUT": eprog.outputs[1].index, "GC_E_ARENA": eplan.arena_bytes,
        "GC_E_KEY": eslot.get("rng_key", -1),
        "GC_NPARAMS": len(tr.params), "GC_NSTATE": len(state_names), "GC_NBUFS": len(buf_names),
        "GC_ROW_NORM": c_string(tr.row_norms[0] if tr.row_norms else ""),
        "GC_NMATMUL": len(mm), "GC_NCPU": len(feats), "GC_NCLASSNAMES": len(spec.classes),
        "GC_VOCAB": (tr.vocab or 0) if tr.layout == "tokens" else 0,
    }
    L.append("")
    for k, v in defs.items():
        L.append(f"#define {k} {v}")
    L.append("")
    L.append("static const gc_step_t gc_steps[] = {" + ", ".join(inits) + "};")
    L.append("static const gc_tensor_t gc_params[] = {" + ", ".join(
        _tensor(p.name, -1, eslot.get(p.name, -1), p.shape) for p in tr.params) + "};")
    states = [_tensor(n, -1, -1, t.shape) for n, t in tr.state_inputs.items()] or ['{"", -1, -1, 0, {0}, 0, -1}']
    L.append("static const gc_tensor_t gc_state[] = {" + ", ".join(states) + "};")
    L.append("static const gc_tensor_t gc_bufs[] = {" + ", ".join(bufs or ['{"", -1, -1, 0, {0}, 0, -1}']) + "};")
    L.append(f"static const double gc_def_keep[] = {{{', '.join(c_double(k) for k in keeps) or '1.0'}}};")
    L.append(f"static const gc_place_t gc_e_temps[] = {_places(sorted(eplan.offsets.items()))};")
    L.append(f"static const gc_place_t gc_e_consts[] = {_places(econsts)};")
    L.append(f"static const int64_t gc_e_ws[] = {_ints(ews)};")
    L.append(f"static const int64_t gc_y_dims[] = {_ints(y_dims or [0])};")
    L.append("static const int64_t gc_matmul[][3] = {" + ", ".join(_ints(r) for r in mm or [[0, 0, 0]]) + "};")
    L.append("static const char *const gc_class_names[] = {" + ", ".join(
        c_string(str(_plain(c))) for c in spec.classes or [""]) + "};")
    L.append("static const char *const gc_cpu_features[] = {" + ", ".join(c_string(f) for f in feats or [""]) + "};")
    L.append("static int gc_cpu_has(int i) {\n    switch (i) {")
    for i, f in enumerate(feats):
        L.append(f"    case {i}: return GC_CPU_SUPPORTS({c_string(f)}) != 0;")
    L.append("    default: return 1;\n    }\n}")
    L.append("")
    L.append("int32_t eval_graphc_run(void *table, void *dims, void *ws, int32_t nthreads);")
    L.append(blob.asm(blob_path, "gc_blob"))
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------------------ export


@dataclass
class ExportResult:
    path: Path
    header: Path
    name: str
    n_features: int
    n_outputs: int
    max_batch: int
    params: list[str]
    seconds: float
    row: int = 0  # floats an input row holds: the features, and the row's length for a model that takes lengths


def _load_weights(directory: Path, params) -> dict[str, np.ndarray]:
    """DIR/<name>.npy for each parameter (what a training binary writes), else DIR/weights.npz (graphc train)."""
    if directory.is_file():
        raise AotError(f"--weights {directory}: a file, not a directory: pass the directory that holds it (the --out "
                       f"of the run: {directory.parent})")
    if not directory.is_dir():
        raise AotError(f"--weights {directory}: no such directory")
    npz = directory / "weights.npz"
    bundle = None
    if npz.is_file():
        if not zipfile.is_zipfile(npz):  # numpy would talk of pickles: a damaged or foreign file
            raise AotError(f"{npz}: not a readable .npz file (not a zip archive: damaged, truncated or not written by "
                           "numpy.savez)")
        try:
            bundle = np.load(npz, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise AotError(f"{npz}: not a readable .npz file ({e})") from None
    loose = [p.name for p in params if (directory / f"{p.name}.npy").is_file()]
    if bundle is not None and loose:
        raise AotError(f"{directory}: holds both weights.npz (graphc train) and {loose[0]}.npy (a training binary): "
                       "the weights of two runs, and which one its metrics describe is unknown; train again into "
                       "an empty --out (or with --overwrite)")
    out, missing = {}, []
    for p in params:
        f = directory / f"{p.name}.npy"
        where = str(f)
        if f.is_file():
            try:
                a = np.load(f, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise AotError(f"{f}: not a readable .npy file ({e})") from None
        elif bundle is not None and p.name in bundle.files:
            where = f"{npz}[{p.name!r}]"
            try:
                a = bundle[p.name]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # a truncated or damaged member
                raise AotError(f"{where}: not readable ({e})") from None
        else:
            missing.append(p.name)
            continue
        if a.dtype != np.dtype(p.dtype) or a.shape != tuple(p.shape):
            raise AotError(f"{where}: parameter {p.name!r} must be {p.dtype} of shape {tuple(p.shape)}, got "
                           f"{a.dtype} {a.shape}")
        if not np.all(np.isfinite(a)):
            raise AotError(f"{where}: parameter {p.name!r} holds non-finite values")
        out[p.name] = a
    if missing:
        raise AotError(f"--weights {directory}: no values for parameter(s) {missing} (expected <name>.npy files, "
                       "as a graphc training binary writes, or weights.npz from graphc train)")
    return out


def _recorded_run(weights: Path, model, data, task, n_features, n_outputs, options: dict) -> tuple:
    """What a graphc train --out directory recorded, for what the caller left out: the model file and the
    default MLP's shape (metrics.json), the task, feature and output counts and the grid (data.json), so that
    `graphc export --weights RUN` rebuilds the model that trained. Returns (model, data, task, n_features,
    n_outputs, grid, options)."""
    import json

    grid = None
    try:
        d = json.loads((weights / "data.json").read_text())
        m = json.loads((weights / "metrics.json").read_text()) if (weights / "metrics.json").is_file() else {}
    except (OSError, ValueError):
        return model, data, task, n_features, n_outputs, grid, options
    if not isinstance(d, dict) or d.get("task") not in ("multiclass", "binary", "regression"):
        return model, data, task, n_features, n_outputs, grid, options
    # a training binary records the model (and the default MLP's shape) in data.json, graphc train in metrics.json
    recorded = m.get("model") or d.get("model")
    if model is None and isinstance(recorded, str) and recorded.endswith(".py"):
        if not Path(recorded).is_file():
            raise AotError(f"{weights}: the run trained the model {recorded!r}, which is not there now: give "
                           "--model FILE")
        model = recorded
    if data is None and task is None and n_features is None and n_outputs is None:
        from graphc.fitting import recorded_sizes

        n_features, n_outputs, grid = recorded_sizes(d, m)
        task = d["task"] if n_features is not None else None
        n_outputs = n_outputs if n_features is not None else None
    if model is None:  # the default MLP: the shape it trained with (an option given must agree with it)
        config = m.get("config") or d.get("config") or {}
        for k in ("hidden", "activation", "init", "bias_init"):
            if config.get(k) is None:
                continue
            was = tuple(config[k]) if k == "hidden" else config[k]
            given = options.get(k)
            if given is None:
                options[k] = was
            elif (tuple(given) if k == "hidden" else given) != was:
                flag = "--" + k.replace("_", "-")
                shown = (lambda v: ",".join(map(str, v)) or "none") if k == "hidden" else str
                raise AotError(f"{weights}: the run trained the default MLP with {flag} {shown(was)}; {flag} "
                               f"{shown(given)} would build another network around its weights: leave {flag} "
                               "out (the run's is used)")
    return model, data, task, n_features, n_outputs, grid, options


def _place_outputs(items: list[tuple[Path | str, Path, str]]) -> None:
    """Write each (a built file or a text, its destination, its option) or none: an unwritable destination (a
    missing permission, a read-only file system) is an AotError naming the option and the path, and what was
    placed before it is removed (a library without its header, or an earlier export's header beside it)."""
    done: list[Path] = []
    for src, dest, opt in items:
        # a new file renamed over the old one: a process that has the old library loaded keeps its own copy
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, Path):
                shutil.copy(src, tmp)  # with its mode (executable, as the linker wrote it)
            else:
                tmp.write_text(src)
            os.replace(tmp, dest)
        except OSError as e:
            for d in (tmp, *done):
                try:
                    d.unlink(missing_ok=True)
                except OSError:
                    pass
            raise AotError(f"{opt} {dest}: cannot write it ({e.strerror or e}); choose a writable path") from None
        done.append(dest)


def export(output: str | Path, weights: str | Path, model=None, data=None, *, target: str | Target = "native",
           max_batch: int = 4096, max_threads: int = 16, task: str | None = None, n_features: int | None = None,
           n_outputs: int | None = None, label: str | None = None, features: list[str] | None = None,
           header: str | Path | None = None, keep: bool | str | Path = False, **options) -> ExportResult:
    """Build a shared library at `output` (libNAME.so) with the model's forward function and the trained
    weights (from `weights`: DIR/<name>.npy, or a graphc train --out directory) embedded, and a C header NAME.h
    declaring `int NAME_predict(const float *x, int64_t n, float *out)`. From a run's directory, what is not
    given (the model file, the default MLP's shape, the task and sizes of `data`) is what the run recorded;
    else `data` defaults to digits."""
    from graphc import ops
    from graphc.nn.train import default_model
    from graphc.runtime.jit import CompiledFunction

    t0 = time.perf_counter()
    out = Path(output).resolve()
    stem = out.name.split(".")[0]
    name = stem[3:] if stem.startswith("lib") and len(stem) > 3 else stem
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise AotError(f"-o {output}: the library's name {name!r} must be a C identifier (libNAME.so)")
    hdr = Path(header).resolve() if header else out.parent / f"{name}.h"
    _refuse_overwriting_inputs({"-o": output, "--header": header or hdr}, {"--model": model, "--dataset": data,
                                                                 "--weights": weights}, runs=(weights,))
    grid = None
    if Path(weights).is_dir() and (Path(weights) / "data.json").is_file():
        model, data, task, n_features, n_outputs, grid, options = _recorded_run(
            Path(weights), model, data, task, n_features, n_outputs, dict(options))
    if grid is not None:
        options["grid"] = grid
    tgt, spec = _prepare(target, max_batch, max_threads, model, "digits" if data is None else data, task=task,
                         n_features=n_features, n_outputs=n_outputs, label=label, features=features, **options)
    model_fn = spec.model_fn or default_model(spec.config, runtime_keeps=True)
    from graphc.nn.train import model_output, sequence_grid, takes_lengths

    # a model that takes lengths reads rows of the features and then the row's length, as in training
    lengths = takes_lengths(model_fn)
    x = ops.input("x", ("N", spec.n_features + lengths))
    # a model build: the parameter names training gave them
    y, features = model_output(model_fn, x, spec.n_features, spec.n_outputs, spec.grid, spec.dataset)
    if not hasattr(y, "op") or y.dtype != "float32" or y.ndim < 1 or y.shape[0] != x.shape[0] or \
            not all(isinstance(d, int) for d in y.shape[1:]):
        raise AotError(f"the model must return float32 outputs of shape (N, outputs), got {y!r}")
    fn = CompiledFunction([y], target=tgt, threads=1)
    from graphc.nn.train import model_layout, token_tables

    # a token model's ids come as floats: the library refuses one that is not an integer in [0, vocab)
    tables = token_tables(features, y) if model_layout(model_fn) == "tokens" else []
    steps = 0
    if lengths:
        steps = spec.n_features if model_layout(model_fn) == "tokens" else sequence_grid(spec.grid, spec.dataset)[0]
    vocab = min((int(t.inputs[0].shape[t.attrs["axis"]]) for t in tables), default=0)
    prog = fn.program
    leaves = list(fn.signature.inputs)
    from graphc.nn.layers import state_updates

    # batch norm's running statistics are the model's arrays too (the forward function is inference's)
    kept = {id(leaf) for leaf in state_updates(y)}
    params = [leaf for leaf in leaves if leaf.op.name == "param" or id(leaf) in kept]
    # gc.random's draws read the key in inference too: the library bakes in the run's evaluation key (its seed),
    # so that it predicts what gc.load(run).predict does
    key_leaf = next((leaf for leaf in leaves if leaf.name == "rng_key" and leaf.op.name == "input"), None)
    others = [leaf.name for leaf in leaves if leaf is not x and leaf is not key_leaf and leaf.op.name != "param"
              and id(leaf) not in kept]
    if others:
        raise AotError(f"the model's forward function has inputs {others} besides x and its parameters")
    values = _load_weights(Path(weights), params)
    data = _data_of(Path(weights), spec)
    key = _eval_key_of(Path(weights), data) if key_leaf is not None else None
    slot = {leaf.name: buf.index for leaf, buf in zip(leaves, prog.inputs, strict=True)}
    out_row = int(np.prod([int(d) for d in y.shape[1:]], dtype=np.int64))
    fewest, _ = _fewest_rows([fn], max_batch, "the model")
    buckets = sorted({b for b in (1, 16, 256, 4096) if fewest <= b < max_batch} | {max_batch})
    layouts = [_program_layout(prog, fn.barriers, tgt, x.shape[0], b, max_threads) for b in buckets]
    blob = Blob()
    consts = [(i, blob.add(a)) for i, a in sorted(prog.consts.items())]
    tensors = [_tensor(p.name, -1, slot[p.name], p.shape, blob.add(values[p.name])) for p in params]
    if key is not None:  # bound as the weights are: a constant int64 scalar in the blob
        tensors.append(_tensor("rng_key", -1, slot["rng_key"], (), blob.add(np.asarray(key, np.int64))))
    work, cleanup = _work_dir(keep)
    upper = name.upper()
    try:
        blob.write(work / "weights.bin")
        temps = sorted({i for p, _ in layouts for i in p.offsets})
        L = ["/* generated by graphc export: the library's manifest (do not edit) */", "#include \"graphc_aot.h\"",
             ""]
        defs = {"GC_PREDICT": f"{name}_predict", "GC_PREDICT_THREADS": f"{name}_predict_threads",
                "GC_N_FEATURES": spec.n_features, "GC_OUT_ROW": out_row, "GC_MAX_BATCH": max_batch,
                "GC_FEWEST_ROWS": fewest, "GC_MAX_THREADS": max_threads, "GC_NBUF": len(prog.buffers),
                "GC_NSYM": max(len(prog.symbols), 1),
                "GC_NDIM": list(prog.symbols).index(x.shape[0]), "GC_X": slot[x.name],
                "GC_OUT": prog.outputs[0].index, "GC_NPARAMS": len(tensors), "GC_NBUCKETS": len(buckets),
                "GC_NTEMPS": len(temps), "GC_NCPU": len(required_features(tgt)),
                "GC_PREDICT_STANDARDIZED": f"{name}_predict_standardized",
                "GC_HAS_STD": int(data is not None and data.get("x_mean") is not None),
                "GC_UNSCALE_Y": int(data is not None and spec.task == "regression" and "y_std" in data),
                "GC_Y_MEAN": c_double(data.get("y_mean", 0.0) if data else 0.0),
                "GC_Y_STD": c_double(data.get("y_std", 1.0) if data else 1.0), "GC_VOCAB": vocab,
                "GC_X_WIDTH": spec.n_features + lengths, "GC_LENGTHS": steps}
        for k, v in defs.items():
            L.append(f"#define {k} {v}")
        mean = data["x_mean"] if defs["GC_HAS_STD"] else [0.0]
        std = data["x_std"] if defs["GC_HAS_STD"] else [1.0]
        L.append(f"static const double gc_x_mean[] = {{{', '.join(c_double(v) for v in mean)}}};")
        L.append(f"static const double gc_x_std[] = {{{', '.join(c_double(v) for v in std)}}};")
        L.append("static const gc_tensor_t gc_params[] = {" + ", ".join(tensors or ['{"", -1, -1, 0, {0}, 0, -1}'])
                 + "};")
        L.append(f"static const gc_place_t gc_consts[] = {_places(consts)};")
        L.append(f"static const int32_t gc_temp_slots[] = {_ints(temps or [-1])};")
        L.append(f"static const int64_t gc_buckets[] = {_ints(buckets)};")
        L.append(f"static const int64_t gc_arena[] = {_ints(p.arena_bytes for p, _ in layouts)};")
        L.append("static const int64_t gc_temp_offsets[][GC_NTEMPS ? GC_NTEMPS : 1] = {" + ", ".join(
            _ints([p.offsets.get(i, 0) for i in temps] or [0]) for p, _ in layouts) + "};")
        L.append("static const int64_t gc_ws[][GC_MAX_THREADS + 1] = {" + ", ".join(
            _ints(ws) for _, ws in layouts) + "};")
        feats = required_features(tgt)
        L.append("static int gc_cpu_has(int i) {\n    switch (i) {")
        for i, f in enumerate(feats):
            L.append(f"    case {i}: return GC_CPU_SUPPORTS({c_string(f)}) != 0;")
        L.append("    default: return 1;\n    }\n}")
        L.append("int32_t lib_graphc_run(void *table, void *dims, void *ws, int32_t nthreads);")
        L.append(blob.asm(work / "weights.bin", "gc_blob"))
        (work / "graphc_lib.h").write_text("\n".join(L) + "\n")
        objs = _objects({"lib_": fn.llvm_ir}, tgt, work)
        built = work / f"out-{out.name}"  # linked here, then moved with the header: both or neither
        cmd = [_cc(), *CFLAGS, "-fPIC", "-shared", "-fvisibility=hidden", f"-Wl,-soname,{out.name}", f"-I{work}",
               f"-I{SOURCES}", "-o", str(built), str(SOURCES / "predict.c"), *map(str, objs), *LIBS]
        _run_cc(cmd, "graphc export")
        text = _public_header(name, upper, spec, out_row, max_batch, max_threads, tgt, [p.name for p in params],
                              data, min_batch=fewest, vocab=vocab, key=key, checked=bool(prog.checks),
                              steps=steps)
        _place_outputs([(built, out, "-o"), (text, hdr, "--header")])
    finally:
        cleanup()
    return ExportResult(out, hdr, name, spec.n_features, out_row, max_batch, [p.name for p in params],
                        time.perf_counter() - t0, spec.n_features + lengths)


def _plain(c):
    from graphc.fitting import _plain

    return _plain(c)


def _data_of(weights: Path, spec: ModelSpec) -> dict | None:
    """The standardization and class labels to embed: the training run's own (data.json beside weights.npz,
    written by graphc train), else the dataset's as graphc standardizes it (its training split), else None."""
    import json

    f = weights / "data.json"
    if f.is_file():
        try:
            d = json.loads(f.read_text())
        except ValueError as e:
            raise AotError(f"{f}: not readable JSON ({e}); it is written by graphc train with the weights") from None
        from graphc.fitting import check_standardization

        try:
            check_standardization(d if isinstance(d, dict) else {}, spec.n_features, str(f))
        except GraphcError as e:
            raise AotError(str(e)) from None
        return d
    return spec.data


def _eval_key_of(weights: Path, data: dict | None) -> int:
    """The key a model's gc.random draws take in the library: the run's evaluation key, as gc.load finds it
    (graphc.fitting.eval_key: data.json's eval_key, else metrics.json's seed, else 0)."""
    import json

    from graphc.fitting import eval_key

    try:
        m = json.loads((weights / "metrics.json").read_text()) if (weights / "metrics.json").is_file() else {}
    except (OSError, ValueError):
        m = {}
    try:
        return eval_key(data if isinstance(data, dict) else {}, m if isinstance(m, dict) else {},
                        str(weights / "data.json"))
    except GraphcError as e:
        raise AotError(str(e)) from None


def _grid_doc(upper: str, spec: ModelSpec, vocab: int = 0, lengths: bool = False) -> str:
    """The image layout, for a model that takes images: each row is one image flattened row-major."""
    from graphc.nn.train import model_layout, sequence_grid

    layout = model_layout(spec.model_fn)
    if layout == "tokens":
        return (f"\n/* Each row is one sequence of {upper}_STEPS token ids, as floats (exact integers in [0, "
                f"{upper}_VOCAB)), in step order. */\n#define {upper}_STEPS {spec.n_features}"
                + (f"\n#define {upper}_VOCAB {vocab}" if vocab else ""))
    if layout == "sequences" and spec.grid is not None:
        t, f = sequence_grid(spec.grid, spec.dataset)
        stride = f"{upper}_ROW" if lengths else f"{upper}_N_FEATURES"
        return (f"\n/* Each row is one sequence of {t} steps of {f} features, step-major: step t, feature k is\n"
                f" * x[row * {stride} + t * {f} + k]. */\n#define {upper}_STEPS {t}\n"
                f"#define {upper}_STEP_FEATURES {f}")
    if spec.grid is None or layout != "images":
        return ""
    dims = "x".join(map(str, spec.grid))
    if len(spec.grid) != 3:
        return f"\n/* Each row is one example on a {dims} grid, flattened row-major (channels last). */"
    h, w, c = spec.grid
    return (f"\n/* Each row is one {dims} image (height, width, channels), channels last (NHWC), row-major:\n"
            f" * pixel (i, j), channel k is x[row * {upper}_N_FEATURES + (i * {w} + j) * {c} + k]. */\n"
            f"#define {upper}_HEIGHT {h}\n#define {upper}_WIDTH {w}\n#define {upper}_CHANNELS {c}")


def _public_header(name: str, upper: str, spec: ModelSpec, out_row: int, max_batch: int, max_threads: int,
                   tgt: Target, params: list[str], data: dict | None = None, *, min_batch: int = 1,
                   vocab: int = 0, key: int | None = None, checked: bool = False, steps: int = 0) -> str:
    feats = ", ".join(required_features(tgt)) or "none beyond x86-64"
    std = data is not None and data.get("x_mean") is not None
    regression = spec.task == "regression"
    classes = [_plain(c) for c in (data or {}).get("classes") or spec.classes]
    extra = ""
    # the run-time checks (an index the model computes from x) report into one word per library
    serial = (" (this model has run-time checks, whose result is one word per library: its calls run one at a "
              "time)") if checked else ""
    if std:
        extra += (f"/* The training split's feature standardization: {name}_predict computes (x - MEAN) / STD. */\n"
                  f"static const double {upper}_X_MEAN[{spec.n_features}] = "
                  f"{{{', '.join(c_double(v) for v in data['x_mean'])}}};\n"
                  f"static const double {upper}_X_STD[{spec.n_features}] = "
                  f"{{{', '.join(c_double(v) for v in data['x_std'])}}};\n")
        if regression and "y_std" in data:
            extra += (f"/* Targets were standardized too: {name}_predict returns predictions * Y_STD + Y_MEAN. */\n"
                      f"#define {upper}_Y_MEAN {c_double(data['y_mean'])}\n#define {upper}_Y_STD "
                      f"{c_double(data['y_std'])}\n")
    if classes and not regression:
        what = ("output j is the logit of class label j" if spec.task == "multiclass"
                else "the output is the logit of label [1] against label [0]")
        extra += (f"/* The dataset's class labels in output order ({what}). */\n#define {upper}_N_CLASSES "
                  f"{len(classes)}\nstatic const char *const {upper}_CLASS_LABELS[{len(classes)}] = "
                  f"{{{', '.join(c_string(str(c)) for c in classes)}}};\n")
    if key is not None:
        extra += (f"/* The model draws gc.random numbers in inference too, keyed by the run's evaluation key (its "
                  f"seed), built in:\n * the same predictions as gc.load(run).predict. */\n#define {upper}_RNG_KEY "
                  f"{int(key)}\n")
    if steps:  # padded sequences: each row's length follows its features
        extra += (f"/* Padded sequences: each row of x is {upper}_N_FEATURES values and then the row's length (a "
                  f"float holding an integer in\n * [0, {upper}_STEPS]; another value is {upper}_ERR_INPUT): "
                  f"{upper}_ROW floats a row. The steps past a row's length\n * are never read (0 or garbage "
                  f"there predicts the same). */\n#define {upper}_LENGTHS 1\n#define {upper}_ROW "
                  f"({upper}_N_FEATURES + 1)\n")
    if vocab:
        raw_doc = (f"x holds n sequences of {upper}_STEPS token ids, as floats (exact integers in [0, "
                   f"{upper}_VOCAB): another value is {upper}_ERR_INPUT)")
    elif std:
        raw_doc = (f"x holds n * {upper}_N_FEATURES raw features (row-major, as in the data file: "
                   f"standardized inside with {upper}_X_MEAN and {upper}_X_STD)")
    else:
        raw_doc = (f"x holds n * {upper}_N_FEATURES features (row-major), as the model was trained on them (no "
                   "standardization was known at export)")
    row_doc = "features per input row, then its length" if steps else "floats per input row"
    out_doc = ("predictions in the target's units" if regression and std and "y_std" in (data or {})
               else ("logits" if not regression else "predictions"))
    if vocab:
        rows_doc = f" * A NaN or inf id, as any id that is not one, fails the whole call ({upper}_ERR_INPUT)."
    else:
        rows_doc = (" * Features are not checked: a row holding NaN or inf stays in that row. Its outputs are NaN or\n"
                    " * inf (or what the model makes of them), and every other row's outputs are bitwise those of a\n"
                    " * call without it, unless the model itself combines rows (a statistic over its batch).")
    return f"""/* {name}.h: {spec.model_desc}, trained weights embedded ({', '.join(params)}).
 * Generated by graphc export for target {tgt.name} (CPU features: {feats}). Link with -l{name}. */
#ifndef {upper}_H
#define {upper}_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define {upper}_N_FEATURES {spec.n_features}  /* {row_doc} */{_grid_doc(upper, spec, vocab, bool(steps))}
#define {upper}_N_OUTPUTS {out_row}  /* floats per output row ({'logits' if spec.task != 'regression'
                                                               else 'predictions'}) */
#define {upper}_MAX_BATCH {max_batch}  /* the most rows one call takes */
#define {upper}_MIN_BATCH {min_batch}  /* the fewest ({'1' if min_batch == 1 else 'the model slices its batch axis'}) */
#define {upper}_MAX_THREADS {max_threads}

/* Return codes. */
#define {upper}_OK 0
#define {upper}_ERR_NULL 1        /* x or out is NULL */
#define {upper}_ERR_N 2           /* n < {upper}_MIN_BATCH */
#define {upper}_ERR_TOO_LARGE 3   /* n > {upper}_MAX_BATCH: split the call */
#define {upper}_ERR_THREADS 4     /* nthreads outside 1..{upper}_MAX_THREADS */
#define {upper}_ERR_NOMEM 5       /* the per-call working memory could not be allocated */
#define {upper}_ERR_CPU 6         /* this CPU lacks a feature the code was compiled for */
#define {upper}_ERR_CHECK 7       /* a run-time check of the model failed (an index out of range): out is not valid */
#define {upper}_ERR_INPUT 8       /* a token id in x is not an integer in [0, the vocabulary): out is not written */

{extra}
/* The model's outputs for n rows: {raw_doc}; out receives n * {upper}_N_OUTPUTS {out_doc}.
{rows_doc}
 * Runs on the calling thread only. Thread-safe: each call allocates its own working memory, so concurrent calls
 * from several threads are fine{serial}. Returns {upper}_OK or an error code. */
int {name}_predict(const float *x, int64_t n, float *out);

/* The same for features already standardized as the model saw them in training (graphc's dataset splits,
 * FitResult.predict); out receives the model's own outputs (logits, or standardized predictions). */
int {name}_predict_standardized(const float *x, int64_t n, float *out);

/* The same, splitting the work over `nthreads` threads (results are bitwise the same for every thread count): the
 * library keeps its worker threads parked between calls, and a call that finds them busy with another thread's
 * call runs on its own thread. */
int {name}_predict_threads(const float *x, int64_t n, float *out, int nthreads);

#ifdef __cplusplus
}}
#endif

#endif
"""
