"""graphc's exception hierarchy: every error a user can cause is a GraphcError naming what, where and how to fix."""

from __future__ import annotations


class GraphcError(Exception):
    """Base class of every error a user of graphc can cause."""


class ShapeError(GraphcError, ValueError):
    """Shapes do not fit together (at graph-building time or against a value's actual shape)."""


class DTypeError(GraphcError, TypeError):
    """A dtype is not allowed where it was used."""


class InputError(GraphcError, KeyError):
    """A value is missing, unknown, or unusable for the tensor it is bound to."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class GradError(GraphcError, ValueError):
    """A gradient was asked for in a way that has no answer."""


class CompileError(GraphcError, RuntimeError):
    """A graph could not be lowered to native code."""


class NumericalError(GraphcError, FloatingPointError):
    """A value became non-finite where finiteness was asked for."""
