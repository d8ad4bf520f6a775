"""The compile cache: machine code on disk, keyed by the graph's structural hash, the target CPU and its
features, and graphc's own code, so a second process skips LLVM. An entry is a shared object (`KEY.so`, with
`KEY.sum`: its key and checksum), loaded by the system's dynamic loader without LLVM, where a C compiler
linked it; else an object file for LLVM's MCJIT (`KEY.o`, key and checksum in its header). A corrupt,
truncated or foreign entry is deleted and rebuilt, never loaded. A hit marks its files used and a store keeps the
directory within its bound (graphc.cachedir: least recently used entries go first)."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path

from graphc.cachedir import atomic_write, code_version, compiling, directory, note_stored, touch
from graphc.codegen.target import Engine, SharedObject, SharedObjectCode, Target
from graphc.ir.node import Node

MAGIC = b"GRAPHC01"
SO_MAGIC = b"GRAPHCSO1"


def key(outputs: list[Node], training: bool, target: Target, updates=(), variant: str = "") -> str:
    h = hashlib.sha256()
    for part in (code_version(), target.key(), f"training={training}", f"updates={list(updates)}", variant,
                 *(o.digest() for o in outputs)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


_HEAD = len(MAGIC) + 32 + 64  # an entry's header: magic, sha256 of the payload, the 64-character key


def _path(k: str) -> Path:
    return directory() / f"{k}.o"


def _unlink(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _load_shared(k: str, target: Target) -> SharedObject | None:
    """KEY.so, if KEY.sum vouches for it (this key, this checksum); a bad pair is deleted."""
    so, summ = directory() / f"{k}.so", directory() / f"{k}.sum"
    try:
        meta = summ.read_bytes()
    except OSError:
        return None
    try:
        data = so.read_bytes()
    except OSError:
        _unlink(summ)
        return None
    ok = meta == SO_MAGIC + k.encode("ascii") + hashlib.sha256(data).digest()
    lib = SharedObject.from_bytes(data, target) if ok else None
    if lib is None:
        _unlink(so, summ)
    else:
        touch(so, summ)
    return lib


def load(k: str, target: Target) -> Engine | SharedObject | None:
    lib = _load_shared(k, target)
    if lib is not None:
        return lib
    p = _path(k)
    try:
        data = p.read_bytes()
    except OSError:
        return None
    head = _HEAD
    ok = (len(data) > head and data.startswith(MAGIC) and data[len(MAGIC) + 32:head].decode("ascii", "replace") == k
          and hashlib.sha256(data[head:]).digest() == data[len(MAGIC):len(MAGIC) + 32])
    if not ok:
        _unlink(p)
        return None
    try:
        engine = Engine.from_object(data[head:], target)
    except Exception:  # an entry LLVM cannot load is as bad as a corrupt one
        _unlink(p)
        return None
    touch(p)
    return engine


def stored(k: str) -> bytes | None:
    """The machine code the cache holds for `k` (the shared object, else the object file), unchecked: for showing
    what a cache hit ran, not for loading."""
    for p, skip in ((directory() / f"{k}.so", 0), (_path(k), _HEAD)):
        try:
            return p.read_bytes()[skip:]
        except OSError:
            continue
    return None


def store(k: str, obj: bytes) -> None:
    """Write atomically (temporary file, fsync, rename); a cache that cannot be written is skipped. Code linked
    into a shared object is kept as that (a copy: the process has the linked file mapped), else as an object."""
    d = directory()
    try:
        d.mkdir(parents=True, exist_ok=True)
        data = obj.so_bytes if isinstance(obj, SharedObjectCode) else None
        if data is None and isinstance(obj, SharedObjectCode) and obj.helpers:
            return  # not linked (the C compiler failed): the object alone lacks the GEMM helpers it calls
        if data is not None:
            atomic_write(d / f"{k}.so", data)
            atomic_write(d / f"{k}.sum", SO_MAGIC + k.encode("ascii") + hashlib.sha256(data).digest())
        else:
            atomic_write(_path(k), MAGIC + hashlib.sha256(obj).digest() + k.encode("ascii") + bytes(obj))
    except OSError:
        return
    note_stored(len(data) if data is not None else len(obj), keep=(k,))


def load_blob(k: str) -> bytes | None:
    """A checked entry `KEY.bin` (what `store_blob` wrote), or None; a bad one is deleted."""
    p = directory() / f"{k}.bin"
    try:
        data = p.read_bytes()
    except OSError:
        return None
    head = _HEAD
    if (len(data) > head and data.startswith(MAGIC) and data[len(MAGIC) + 32:head] == k.encode("ascii")
            and hashlib.sha256(data[head:]).digest() == data[len(MAGIC):len(MAGIC) + 32]):
        touch(p)
        return data[head:]
    _unlink(p)
    return None


def store_blob(k: str, data: bytes) -> None:
    try:
        directory().mkdir(parents=True, exist_ok=True)
        atomic_write(directory() / f"{k}.bin", MAGIC + hashlib.sha256(data).digest() + k.encode("ascii") + data)
    except OSError:
        return
    note_stored(len(data), keep=(k,))


def blob(k: str, make: Callable[[], bytes]) -> bytes:
    """The checked entry `KEY.bin`, else `make()`, stored: under the entry's compile lock, so that processes
    missing it at once make it once (see cachedir.compiling)."""
    data = load_blob(k)
    if data is None:
        with compiling(k):
            data = load_blob(k)  # another process may have stored it while this one waited
            if data is None:
                data = make()
                store_blob(k, data)
    return data


def _spec_key(k: str) -> str:
    return hashlib.sha256(f"{k}:runtime-spec".encode()).hexdigest()


def store_spec(k: str, spec, kept_inputs: tuple[int, ...]) -> None:
    """Beside the machine code of `k`: what running it needs (a codegen.memory.ProgramSpec, and which inputs of
    the compiled graph the call takes), so that a later process runs it without the compiler's stages."""
    store_blob(_spec_key(k), pickle.dumps((spec, tuple(kept_inputs)), protocol=pickle.HIGHEST_PROTOCOL))


def load_spec(k: str):
    """(ProgramSpec, kept inputs) stored for `k`, or None (none stored, or an entry that does not load: it is
    deleted and the program compiled again)."""
    data = load_blob(_spec_key(k))
    if data is None:
        return None
    try:
        spec, kept = pickle.loads(data)
    except Exception:  # written by another graphc (the key says not) or damaged past its checksum: rebuild
        _unlink(directory() / f"{_spec_key(k)}.bin")
        return None
    return spec, kept
