"""Imports point one way, down the pipeline: each layer imports with every later layer blocked (and, below the
code generator, without llvmlite); `import graphc` alone loads nothing heavy."""

import ast
import re
import subprocess
import sys

import pytest

# ir <- ops <- autodiff/passes/reference evaluator <- codegen <- runtime <- nn <- fitting <- aot <- viz, cli
LAYERS = [
    ["graphc.ir"],
    ["graphc.ops", "graphc.sym"],
    ["graphc.autodiff", "graphc.passes", "graphc.runtime.reference"],
    ["graphc.codegen"],
    ["graphc.runtime"],
    ["graphc.nn"],
    ["graphc.data", "graphc.fitting"],
    ["graphc.aot"],
    ["graphc.viz", "graphc.cli"],
]

PROBE = r"""
import importlib, importlib.abc, pkgutil, sys
allowed, blocked = {allowed!r}, {blocked!r}

def is_blocked(name):
    if any(name == a or name.startswith(a + ".") for a in allowed):
        return False
    if any(a.startswith(name + ".") for a in allowed):
        return False  # a package whose allowed submodule is being imported (its __init__ must import nothing)
    return any(name == b or name.startswith(b + ".") for b in blocked)

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if is_blocked(name):
            raise ImportError(f"{{name}} may not be imported here")
        return None

sys.meta_path.insert(0, Block())
for top in {modules!r}:
    mod = importlib.import_module(top)
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, top + "."):
            if not is_blocked(info.name):
                importlib.import_module(info.name)
"""


@pytest.mark.parametrize("i", range(len(LAYERS)), ids=[layer[0] for layer in LAYERS])
def test_each_layer_imports_with_the_later_ones_blocked(i):
    allowed = [m for layer in LAYERS[:i + 1] for m in layer]
    blocked = [m for layer in LAYERS[i + 1:] for m in layer]
    if i < 3:
        blocked.append("llvmlite")
    code = PROBE.format(allowed=allowed, blocked=blocked, modules=LAYERS[i])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_import_graphc_is_light_and_evaluate_and_draw_need_no_llvm():
    code = r"""
import sys, time
t = time.perf_counter()
import graphc as gc
t = time.perf_counter() - t
heavy = [m for m in ("sympy", "llvmlite", "numpy", "graphc.ops") if m in sys.modules]
assert not heavy, heavy
sys.modules["llvmlite"] = None  # any import of llvmlite now fails
import numpy as np
x = gc.input("x", ("N", 3))
y = gc.sum(gc.tanh(x) * 2.0)
assert gc.evaluate(y, {"x": np.zeros((2, 3), np.float32)}) == 0.0
gc.draw(gc.grad(y, x))
gc.show(y)
print(t)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 0.2


def test_dir_lists_the_public_names_and_each_resolves():
    import graphc as gc

    names = [n for n in dir(gc) if not n.startswith("_")]
    assert not {"importlib", "annotations"} & set(names)  # the module's own imports are not its API
    assert {"scan", "conv2d", "nn", "EpochFunction", "fit", "GraphcError"} <= set(names)
    for n in names:
        getattr(gc, n)


def test_only_the_reference_check_imports_the_peers():
    """PyTorch and JAX come with the bench extra only: a test that imports them fails on a dev install (at module
    level it failed the whole run's collection). The tests compare against tests/pytorch_reference.py instead; that
    module alone is checked against torch, in a module that skips without it."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    allowed = {tests / "test_references_match_pytorch.py"}
    found = []
    for path in sorted(set(tests.rglob("*.py")) - allowed):
        text = path.read_text()
        if not re.search(r"^\s*(import|from)\s.*\b(torch|jax)", text, re.MULTILINE):
            continue  # parse only the files that may import them (parsing all took 2 s)
        for node in ast.walk(ast.parse(text, str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(tests)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in ("torch", "jax", "jaxlib")]
    assert not found, f"tests importing a peer of the bench extra: {found}"
