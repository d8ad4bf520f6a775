"""Running graphs: the numpy reference evaluator (the oracle), and the JIT runtime."""
