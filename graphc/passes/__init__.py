"""Graph -> Graph passes and the one ordered pipeline that runs them (see pipeline.py)."""

from graphc.passes.pipeline import PIPELINE, lower

__all__ = ["PIPELINE", "lower"]
