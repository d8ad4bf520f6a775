"""Lowering to native code: loop-level kernel IR, scheduling, LLVM IR emission, targets."""
