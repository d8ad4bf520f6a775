"""Inspecting compiled code: a kernel's LLVM IR and machine code, by name, for every kind of kernel."""

from __future__ import annotations

import re

import pytest

import graphc as gc


def test_kernel_ir_and_asm_of_every_kernel_including_a_loop():
    """A loop (`gc.scan`) has no function of its own: its IR is its body's kernels and the loop around them, its
    machine code the program body that runs it (the body's tanh inlined: vector multiply-adds)."""
    xs = gc.input("xs", (5, "N", 16))
    w = gc.input("w", (16, 16))

    def step(h, x):
        h = gc.tanh(h @ w + x)
        return h, h

    h_t, _ = gc.scan(step, gc.zeros(("N", 16)), xs)
    fn = gc.compile([h_t * 2.0])
    names = [k.name for k in fn.program.kernels]
    loop = next(n for n in names if n.endswith("_scan"))
    for name in names:
        ir_text = fn.kernel_ir(name)
        asm = fn.kernel_asm(name)
        assert ir_text.startswith("define") and asm.strip(), name
    ir_text = fn.kernel_ir(loop)
    defined = re.findall(r'define [^@]*@"([^"]+)"', ir_text)
    assert "graphc_program.body" in defined and any(d.startswith(f"{loop}_") for d in defined), defined
    assert "vfmadd" in fn.kernel_asm(loop)
    with pytest.raises(gc.GraphcError, match="no kernel named 'nope'"):
        fn.kernel_asm("nope")
