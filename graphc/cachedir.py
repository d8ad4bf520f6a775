"""Where graphc keeps what it computed for this machine (compiled programs, derivative trees), and the version
of graphc's code that such an entry belongs to: changing the compiler invalidates what it made before. Every
layer may use this module; it imports nothing of graphc's.

The directory is bounded: after storing, the least recently used entries (a cache hit marks its files used) are
removed until the total is at most 3/4 of `max_bytes()` (`$GRAPHC_CACHE_MAX_MB`, default 1024
MB; 0 or less: no bound), so entries of programs no longer run, and of earlier graphc versions, do not pile up.
Reading the directory costs ~9 µs a file, so a store prunes only when this process has stored 1/16 of the bound
since it last did, or when no process has pruned for an hour (`note_stored`).
Only files graphc names its own are counted or removed (`is_ours`): a directory shared with other files keeps
them.

Processes that miss the same entry at once (the ranks of an `mpirun`, pytest-xdist's workers) compile it once:
`compiling(key)` is an exclusive lock on `.lock-KEY` in the directory (fcntl.flock), held around one entry's
compile and store, under which the caller looks in the cache again before compiling."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock on this platform: concurrent processes may compile an entry twice, as before
    fcntl = None

DEFAULT_MAX_MB = 1024
STALE_TEMP_S = 3600  # a temporary file this old was left by a writer that died: garbage

# the names graphc writes: KEY.so/.sum (a shared object and its checksum), KEY.o (an object file), KEY.bin (a
# checked blob: a run-time spec, the GEMM helpers), the derivative file, the host CPU's description, temporaries,
# the compile locks (`compiling`)
_OURS = re.compile(r"[0-9a-f]{64}\.(so|sum|o|bin)|derivatives-[0-9a-f]+\.json|host-[0-9a-f]+\.txt"
                   r"|pruned\.stamp|\.tmp-.+|\.graphc-code-.+\.so|\.lock-[0-9a-f]{64}")
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


# a holder this slow may be stopped or hung (a rank under SIGSTOP, say): compile anyway (a duplicate entry, never
# a wrong one), after as long as a rank waits in a collective by default (graphc.distributed's GRAPHC_MPI_TIMEOUT)
LOCK_WAIT_S = 120
_held: dict[str, tuple[int, int]] = {}  # key -> (the lock file's descriptor, the holding thread) in this process
_held_lock = threading.Lock()


@contextmanager
def compiling(key: str) -> Iterator[bool]:
    """Hold the exclusive lock of the cache entry `key` (64 hex digits) around its compile and store, so that
    processes missing the entry at once compile it once: under the lock the caller looks in the cache again
    (another process may have stored it while this one waited). Yields whether the lock is held; where it is not
    (the directory cannot be written, no flock on this platform or file system, a wait past LOCK_WAIT_S, this
    thread holds it already) the caller compiles as it would without it. A holder that dies releases it (the
    kernel drops its flock); the lock file is removed on release, so the directory keeps none. Whatever happens
    to the file (`clear` removes it while held, say), at worst two processes compile the same entry, as without
    the lock: each file is written whole and checked when loaded, and a key's program is the same in both."""
    got = _acquire(key)
    try:
        yield got is not None
    finally:
        if got is not None:
            _release(key, *got)


def _acquire(key: str) -> tuple[int, Path, int] | None:
    if fcntl is None or _held.get(key, (0, None))[1] == threading.get_ident():
        return None
    path = directory() / f".lock-{key}"
    deadline = time.monotonic() + LOCK_WAIT_S
    pause = 0.001
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return None
        try:
            while True:  # polled rather than blocking: a wait is bounded, and a compile takes far longer
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(path) from None
                    time.sleep(pause)
                    pause = min(2 * pause, 0.05)
            try:  # the file locked is still the one at `path`: else its holder removed it on release, retry
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
        except OSError:  # TimeoutError, or a file system without flock
            os.close(fd)
            return None
        if current:
            with _held_lock:
                _held[key] = (fd, threading.get_ident())
            return fd, path, os.getpid()
        os.close(fd)


def _release(key: str, fd: int, path: Path, pid: int) -> None:
    if os.getpid() != pid:  # a child forked while the lock was held: _forget_in_child closed its copy
        return
    with _held_lock:
        _held.pop(key, None)
    try:  # removed while still locked: a waiter that locks this file then finds it gone and takes the next one
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)  # releases the flock


def _forget_in_child() -> None:
    """A forked child does not hold its parent's compile locks: its copies of their descriptors are closed (open,
    they would keep the lock held after the parent releases it, until the child exits)."""
    global _held_lock
    _held_lock = threading.Lock()  # a thread of the parent may have held it at the fork
    for fd, _thread in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


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
