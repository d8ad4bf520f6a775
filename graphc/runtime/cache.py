"""The compile cache: machine code on disk, keyed by the graph's structural hash, the target CPU and its
features, and graphc's own code, so a second process skips LLVM. An entry carries its key and a checksum;
a corrupt, truncated or foreign entry is deleted and rebuilt, never loaded."""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import cache
from pathlib import Path

from graphc.codegen.target import Engine, Target
from graphc.ir.node import Node

MAGIC = b"GRAPHC01"


@cache
def _code_version() -> str:
    """A hash of graphc's sources: changing the compiler invalidates what it compiled before."""
    import graphc

    root = Path(graphc.__file__).parent
    h = hashlib.sha256(graphc.__version__.encode())
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def directory() -> Path:
    env = os.environ.get("GRAPHC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphc"


def key(outputs: list[Node], training: bool, target: Target, updates=(), variant: str = "") -> str:
    h = hashlib.sha256()
    for part in (_code_version(), target.key(), f"training={training}", f"updates={list(updates)}", variant,
                 *(o.digest() for o in outputs)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _path(k: str) -> Path:
    return directory() / f"{k}.o"


def load(k: str, target: Target) -> Engine | None:
    p = _path(k)
    try:
        data = p.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 32 + 64
    ok = (len(data) > head and data.startswith(MAGIC) and data[len(MAGIC) + 32:head].decode("ascii", "replace") == k
          and hashlib.sha256(data[head:]).digest() == data[len(MAGIC):len(MAGIC) + 32])
    if not ok:
        try:
            p.unlink()
        except OSError:
            pass
        return None
    try:
        return Engine.from_object(data[head:], target)
    except Exception:  # an entry LLVM cannot load is as bad as a corrupt one
        try:
            p.unlink()
        except OSError:
            pass
        return None


def store(k: str, obj: bytes) -> None:
    """Write atomically (temporary file, fsync, rename); a cache that cannot be written is skipped."""
    d = directory()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(obj).digest() + k.encode("ascii") + obj)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _path(k))
    except OSError:
        return
