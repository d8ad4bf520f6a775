"""sympy functions for elementwise formulas, e.g.
`gc.elementwise("mish", lambda z: z * sympy.tanh(gc.sym.softplus(z)))`."""

from graphc.ops.scalar import expm1, log1p, relu, sigmoid, softplus

__all__ = ["sigmoid", "softplus", "relu", "log1p", "expm1"]
