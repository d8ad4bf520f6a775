"""Where graphc keeps what it computed for this machine (compiled programs, derivative trees), and the version
of graphc's code that such an entry belongs to: changing the compiler invalidates what it made before. Every
layer may use this module; it imports nothing of graphc's.

The directory is bounded: after storing, the least recently used entries (a cache hit marks its files used) are
removed until the total is at most 3/4 of `max_bytes()` (`$GRAPHC_CACHE_MAX_MB`, default 1024
MB; 0 or less: no bound), so entries of programs no longer run, and of earlier graphc versions, do not pile up.
Reading the directory costs ~9 µs a file, so a store prunes only when this process has stored 1/16 of the bound
since it last did, or when no process has pruned for an hour (`note_stored`).
Only files graphc names its own are counted or removed (`is_ours`): a directory shared with other files keeps
them."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import warnings
from functools import cache
from pathlib import Path

DEFAULT_MAX_MB = 1024
STALE_TEMP_S = 3600  # a temporary file this old was left by a writer that died: garbage

# the names graphc writes: KEY.so/.sum (a shared object and its checksum), KEY.o (an object file), KEY.bin (a
# checked blob: a run-time spec, the GEMM helpers), the derivative file, the host CPU's description, temporaries
_OURS = re.compile(r"[0-9a-f]{64}\.(so|sum|o|bin)|derivatives-[0-9a-f]+\.json|host-[0-9a-f]+\.txt"
                   r"|pruned\.stamp|\.tmp-.+|\.graphc-code-.+\.so")
STAMP = "pruned.stamp"  # its time: when the directory was last pruned (by any process)
PRUNE_EVERY_S = 3600
_stored_since_prune = 0  # bytes this process stored since it last pruned


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


def max_bytes() -> int | None:
    """The cache's bound in bytes from `$GRAPHC_CACHE_MAX_MB` (default DEFAULT_MAX_MB), None for no bound (0 or
    less). A value that is not a number is reported (a warning) and the default used."""
    text = os.environ.get("GRAPHC_CACHE_MAX_MB", "").strip()
    if not text:
        return DEFAULT_MAX_MB << 20
    try:
        mb = float(text)
    except ValueError:
        warnings.warn(f"GRAPHC_CACHE_MAX_MB={text!r} is not a number of megabytes; the compile cache keeps its "
                      f"default bound of {DEFAULT_MAX_MB} MB", stacklevel=2)
        return DEFAULT_MAX_MB << 20
    return int(mb * 2**20) if mb > 0 else None


def is_ours(name: str) -> bool:
    """Whether a file name in the cache directory is one graphc writes."""
    return _OURS.fullmatch(name) is not None


def entries(d: Path | None = None) -> list[tuple[str, list[Path], int, float]]:
    """graphc's files in the cache directory as entries (stem, paths, bytes, last use): KEY.so and KEY.sum are
    one entry, whose last use is its newest file's modification time (a hit sets it: `touch`)."""
    d = directory() if d is None else d
    groups: dict[str, tuple[list[Path], int, float]] = {}
    try:
        it = os.scandir(d)
    except OSError:
        return []
    with it:
        for e in it:
            if not is_ours(e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not e.is_file(follow_symlinks=False):
                continue
            stem = e.name.split(".")[0] if not e.name.startswith(".") else e.name
            paths, size, used = groups.get(stem, ([], 0, 0.0))
            groups[stem] = ([*paths, Path(e.path)], size + st.st_size, max(used, st.st_mtime))
    return [(stem, *v) for stem, v in groups.items()]


def touch(*paths: Path) -> None:
    """Mark cache files used now (what the bound's least-recently-used order reads); best effort."""
    for p in paths:
        try:
            os.utime(p)
        except OSError:
            pass


def _remove(paths: list[Path]) -> int:
    freed = 0
    for p in paths:
        try:
            size = p.stat().st_size
            p.unlink()
            freed += size
        except OSError:
            pass
    return freed


def prune(keep: tuple[str, ...] = (), limit: int | None = -1) -> int:
    """Keep the cache within its bound (`limit`: bytes, None for none; default `max_bytes()`): temporaries older
    than STALE_TEMP_S go, then, while the total exceeds the bound, the least recently used entries until it is at
    most 3/4 of it; the entries named in `keep` (stems: what was just stored) stay. The bytes removed."""
    global _stored_since_prune
    limit = max_bytes() if limit == -1 else limit
    now = time.time()
    found = entries()
    freed = 0
    live = []
    for stem, paths, size, used in found:
        if stem.startswith(".") and now - used > STALE_TEMP_S:
            freed += _remove(paths)
        elif not stem.startswith((".", "host-", "pruned")):  # the host CPU's description spares LLVM's load
            live.append((used, stem, paths, size))
    _stored_since_prune = 0
    try:
        (directory() / STAMP).touch()
    except OSError:
        pass
    total = sum(e[3] for e in live)
    if limit is None or total <= limit:
        return freed
    for _used, stem, paths, size in sorted(live):
        if total <= limit * 3 // 4:
            break
        if stem in keep:
            continue
        freed += _remove(paths)
        total -= size
    return freed


def note_stored(nbytes: int, keep: tuple[str, ...] = ()) -> None:
    """After storing `nbytes` (the entries `keep`): prune when this process has stored 1/16 of the bound since it
    last pruned, or when the directory was last pruned (by any process) over PRUNE_EVERY_S ago or never."""
    global _stored_since_prune
    _stored_since_prune += nbytes
    limit = max_bytes()
    if limit is None:
        return
    if _stored_since_prune < limit // 16:
        try:
            if time.time() - (directory() / STAMP).stat().st_mtime < PRUNE_EVERY_S:
                return
        except OSError:
            pass  # never pruned here
    prune(keep, limit)


def clear() -> tuple[int, int]:
    """Remove every file graphc wrote in the cache directory (others are left alone): (files, bytes) removed.
    A process running cached code keeps running it (its code is mapped from a private copy)."""
    n = size = 0
    for _stem, paths, _bytes, _used in entries():
        for p in paths:
            got = _remove([p])
            if got or not p.exists():
                n += 1
                size += got
    return n, size
