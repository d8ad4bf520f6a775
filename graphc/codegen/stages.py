"""Compilation as one ordered list of named stages, each a function from one artifact to the next:

    graph -> modes -> simplify -> stability -> dce -> simplify again      (Graph -> Graph)
          -> schedule (Program) -> fusion (Program) -> memory (Layout) -> llvm (Module) -> object (ObjectCode)

Every stage's value prints, and `CompiledFunction.stages` keeps them all. The JIT, the training-epoch driver and
`graphc build` / `graphc export` consume the same `Compilation` through its public fields. With `verify` (the
tests set GRAPHC_VERIFY=1) the IR verifier runs after every graph stage."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from graphc.codegen.memory import ProgramSpec, barriers, describe
from graphc.codegen.schedule import Program, fuse_epilogues, fuse_loops
from graphc.codegen.schedule import schedule as _schedule
from graphc.codegen.target import HelpersUnavailable, Target, emit_object, links_helpers
from graphc.ir.graph import Graph
from graphc.ir.node import Node, topo_order
from graphc.ir.verify import verify as _verify
from graphc.passes.pipeline import PIPELINE


def verify_default() -> bool:
    return os.environ.get("GRAPHC_VERIFY", "") not in ("", "0")


@dataclass(frozen=True)
class Options:
    """What a compilation is for. `updates` maps an output position to the leaf it overwrites in place."""

    target: Target
    training: bool = False
    updates: tuple[tuple[int, Node], ...] = ()
    profile: bool = False
    extras: tuple[Callable, ...] = ()  # functions that add to the module (the epoch driver, the initializer)
    verify: bool = field(default_factory=verify_default)
    # code for this process, linked with the GEMM helper libraries where it can be (`target.links_helpers`): the
    # module only declares the helpers (the llvm stage skips emitting them; `Module.full` has them all)
    link_helpers: bool = False


@dataclass
class Layout:
    """The memory stage: the program with its barriers decided (where threads meet); the arena is placed per call,
    for the dims it sees (`codegen.memory.plan` of the program's `spec`), since sizes depend on the batch dim."""

    program: Program
    barriers: list[bool]
    _spec: ProgramSpec | None = field(default=None, repr=False)

    def spec(self, target: Target) -> ProgramSpec:
        """What the run time needs of the program (see codegen.memory.ProgramSpec)."""
        if self._spec is None:
            self._spec = describe(self.program, self.barriers, target)
        return self._spec

    def __str__(self) -> str:
        marks = [k.name for k, need in zip(self.program.kernels, self.barriers, strict=True) if need]
        return f"{len(marks)} barriers, before: {', '.join(marks) or '(none)'}"

    @property
    def summary(self) -> str:
        return f"{sum(self.barriers)} barriers"


@dataclass
class Module:
    """LLVM IR text, as emitted (LLVM optimizes it in the object stage). `helpers_declared`: the GEMM helpers
    are declared only (`Options.link_helpers`). `parts`: the kernels' modules where the program's was emitted in
    parts, for compiling on two cores (`codegen.parallel`); `text` then declares them."""

    text: str
    helpers_declared: bool = False
    parts: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\n".join((self.text, *self.parts))

    @property
    def summary(self) -> str:
        lines = sum(t.count(chr(10)) for t in (self.text, *self.parts))
        return f"{lines} lines of LLVM IR" + (f" in {1 + len(self.parts)} modules" if self.parts else "")


@dataclass
class ObjectCode:
    data: bytes
    cached: bool = False  # read back from the compile cache (a linked shared object, or an object file)

    def __str__(self) -> str:
        return f"<{self.summary}>"

    @property
    def summary(self) -> str:
        return f"{len(self.data)} bytes of machine code" + (" (from the compile cache)" if self.cached else "")


# ------------------------------------------------------------------------------------------------ the stages


def modes(graph: Graph, opts: Options) -> Graph:
    """Each training_switch becomes its mode's branch and with_updates its value (graphc.passes.modes). Inference
    also drops dropout (the identity outside training); its key and keep inputs leave the signature unless
    something else reads them. Leaves updated in place stay in it. In training the signature is kept whole."""
    from graphc.passes.modes import inference, training

    if opts.training:
        out = training(graph)
        return Graph(out.outputs, graph.inputs)

    out = inference(graph)
    live = {id(n) for n in topo_order(out.outputs)} | {id(leaf) for _, leaf in opts.updates}
    return Graph(out.outputs, tuple(leaf for leaf in graph.inputs if id(leaf) in live))


def _graph_pass(fn: Callable[[Graph], Graph]) -> Callable[[Graph, Options], Graph]:
    return lambda graph, opts: fn(graph)


def schedule(graph: Graph, opts: Options) -> Program:
    position = {id(leaf): i for i, leaf in enumerate(graph.inputs)}
    return _schedule(graph, {pos: position[id(leaf)] for pos, leaf in opts.updates}, fuse=False)


def fusion(program: Program, opts: Options) -> Program:
    """Elementwise kernels that read a matrix product's result become its epilogue, then elementwise loops over
    one domain that read each other's values only at the same point merge into one loop (a new Program)."""
    kernels = [replace(k, stores=list(k.stores), nodes=list(k.nodes), reads=list(k.reads))
               if hasattr(k, "stores") else k for k in program.kernels]
    fuse_epilogues(kernels)
    fuse_loops(kernels)
    return replace(program, kernels=kernels)


def memory(program: Program, opts: Options) -> Layout:
    return Layout(program, barriers(program))


def llvm(layout: Layout, opts: Options) -> Module:
    from graphc.codegen import parallel
    from graphc.codegen.emit import ModuleEmitter

    declare = opts.link_helpers and links_helpers()
    em = ModuleEmitter(layout.program, opts.target, profile=opts.profile, declare_helpers=declare,
                       split=declare and parallel.wants_split(layout.program))
    text = em.emit(layout.barriers, opts.extras)
    return Module(text, declare, tuple(str(m) for m in em.parts))


def machine_code(module: Module, opts: Options, layout: Layout | None = None) -> ObjectCode:
    """The module's machine code for this process. A module that declares its GEMM helpers when their library
    cannot be had after all (`HelpersUnavailable`) is emitted again whole, from `layout`."""
    try:
        return ObjectCode(emit_object(module.text, opts.target, jit=True, parts=module.parts))
    except HelpersUnavailable:
        if layout is None:
            raise
        return ObjectCode(emit_object(llvm(layout, replace(opts, link_helpers=False)).text, opts.target, jit=True))


GRAPH_STAGES: tuple[tuple[str, Callable], ...] = (("modes", modes),) + tuple(
    (name, _graph_pass(p)) for name, p in PIPELINE)
STAGES: tuple[tuple[str, Callable], ...] = GRAPH_STAGES + (
    ("schedule", schedule),
    ("fusion", fusion),
    ("memory", memory),
    ("llvm", llvm),
    ("object", machine_code),
)
CODE_STAGES = ("llvm", "object")  # what a disk-cache hit skips


@dataclass
class Compilation:
    """Every stage's value, in order: `stages[i] = (name, value)`; the ones the JIT and the AOT builders read
    have names of their own."""

    options: Options
    stages: list[tuple[str, object]]

    def value(self, name: str):
        for n, v in self.stages:
            if n == name:
                return v
        raise KeyError(name)

    @property
    def signature(self) -> Graph:
        """The graph after the mode stage: its inputs are what a call feeds, in table order."""
        return self.value("modes")

    @property
    def graph(self) -> Graph:
        return [v for n, v in self.stages if isinstance(v, Graph)][-1]

    @property
    def program(self) -> Program:
        return self.value("memory").program

    @property
    def layout(self) -> Layout:
        return self.value("memory")

    @property
    def barriers(self) -> list[bool]:
        return self.layout.barriers

    def module(self) -> Module:
        """The LLVM module (emitted now if the compilation stopped before it, e.g. on a cache hit)."""
        for n, v in self.stages:
            if n == "llvm":
                return v
        m = llvm(self.layout, self.options)
        self.stages.append(("llvm", m))
        return m

    def object_code(self) -> ObjectCode:
        for n, v in self.stages:
            if n == "object":
                return v
        o = machine_code(self.module(), self.options, self.layout)
        self.stages.append(("object", o))
        return o

    def text(self) -> str:
        return "\n\n".join(f"# after {name}\n{value}" for name, value in self.stages
                           if not isinstance(value, (Module, ObjectCode)))


def run(graph: Graph, opts: Options, *, code: bool = True) -> Compilation:
    """Run the stages in order on `graph` (the code stages only with `code`)."""
    stages: list[tuple[str, object]] = [("input", graph)]
    value: object = graph
    for name, stage in STAGES:
        if not code and name in CODE_STAGES:
            break
        value = stage(value, opts)
        if opts.verify and isinstance(value, Graph):
            _verify(value, f"after {name}")
        stages.append((name, value))
    return Compilation(opts, stages)
