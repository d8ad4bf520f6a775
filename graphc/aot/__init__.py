"""Ahead-of-time code: standalone training binaries (`graphc build`, `build`) and inference libraries
(`graphc export`, `export`), linked from graphc's LLVM objects and C drivers by the system C compiler."""

from graphc.aot.build import AotError, BuildResult, ExportResult, build, export, prefix_symbols, required_features

__all__ = ["build", "export", "BuildResult", "ExportResult", "AotError", "prefix_symbols", "required_features"]
