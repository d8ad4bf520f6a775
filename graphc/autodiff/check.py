"""Numeric gradient checking: central finite differences in float64 through the reference evaluator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from graphc.autodiff.grad import _wrt_targets, grad
from graphc.errors import DTypeError, GradError, GraphcError
from graphc.ir.node import Node, capture_source
from graphc.ir.shapes import FLOAT_DTYPES
from graphc.ops.core import describe
from graphc.runtime.reference import evaluate


def numeric_grad(y: Node, wrt: Node, values: Mapping, eps: float = 1e-6, **kw) -> np.ndarray:
    """d y / d wrt by central differences, with every value in float64 (y must be a scalar)."""
    if not isinstance(y, Node) or y.shape != ():
        got = describe(y) if isinstance(y, Node) else repr(y)
        raise GradError(f"numeric_grad: y must be a scalar tensor, got {got}; reduce it first (gc.sum)")
    if not isinstance(wrt, Node):
        raise GradError(f"numeric_grad: wrt must be one tensor, got {type(wrt).__name__}")
    # before the values are made float64 below: an int input given a float value is refused by evaluate, which
    # blamed the user's (integer) value instead
    if wrt.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"numeric_grad: cannot differentiate with respect to {describe(wrt)}, an integer/bool "
                         f"tensor declared at {wrt.source.where()}: a derivative needs a float tensor; declare it "
                         "with a float dtype to differentiate with respect to it")
    if y.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"numeric_grad: y ({describe(y)}, from {y.label} at {y.source.where()}) is not a float "
                         "tensor: an integer or bool result has no gradient; differentiate a float tensor")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps) or eps <= 0:
        raise GradError(f"numeric_grad: eps must be a finite number > 0, got {eps!r}")
    vals = {k: (np.asarray(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else v) for k, v in values.items()}
    key = next((k for k in vals if k is wrt or k == wrt.name), None)
    if key is None:
        raise GraphcError(f"numeric_grad: no value given for {wrt!r}")
    base = np.array(vals[key], dtype=np.float64)
    out = np.zeros_like(base)
    flat = base.reshape(-1)
    g = out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        vals[key] = base.copy()
        hi = float(evaluate(y, vals, **kw))
        flat[i] = old - eps
        vals[key] = base.copy()
        lo = float(evaluate(y, vals, **kw))
        flat[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return out


def check_grad(y: Node, wrt: Sequence[Node], values: Mapping, *, eps: float = 1e-6, rtol: float = 1e-5,
               atol: float = 1e-7, **kw) -> None:
    """Assert that grad(y, wrt) evaluated in float64 matches central differences; raises AssertionError."""
    wrt = _wrt_targets(wrt, "check_grad", capture_source().where())  # nested as grad's
    vals = {k: (np.asarray(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else v) for k, v in values.items()}
    symbolic = evaluate(grad(y, wrt), vals, allow_unused=True, **kw)
    for w, s in zip(wrt, symbolic, strict=True):
        n = numeric_grad(y, w, vals, eps, **kw)
        np.testing.assert_allclose(s, n, rtol=rtol, atol=atol, err_msg=f"gradient wrt {w!r}")
