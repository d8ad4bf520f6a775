"""Reverse-mode differentiation that emits ordinary graph nodes, and numeric gradient checking."""

from graphc.autodiff.grad import grad

__all__ = ["grad"]
