"""Where graphc keeps what it computed for this machine (compiled programs, derivative trees), and the version
of graphc's code that such an entry belongs to: changing the compiler invalidates what it made before. Every
layer may use this module; it imports nothing of graphc's."""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import cache
from pathlib import Path


@cache
def code_version() -> str:
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


def atomic_write(path: Path, payload: bytes) -> None:
    """Write `path` whole or not at all (a temporary file in its directory, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
