"""Training checkpoints: written atomically (temporary file, fsync, rename) with a checksum; a corrupt or
truncated file is refused, never loaded.

Layout: MAGIC, 8-byte header length, JSON header (metadata and the array directory), the arrays' raw bytes,
and a SHA-256 of everything before it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from graphc.errors import GraphcError

MAGIC = b"GRAPHCKP1\n"


class CheckpointError(GraphcError, ValueError):
    """A checkpoint file is missing, corrupt, truncated or for another run."""


def save(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    directory = []
    chunks = []
    offset = 0
    for name, a in arrays.items():
        a = np.asarray(a, order="C")  # not ascontiguousarray: it makes a 0-d array (a scalar parameter) 1-d
        raw = a.tobytes()
        directory.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                          "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps({"meta": meta, "arrays": directory}, sort_keys=True).encode()
    body = MAGIC + len(header).to_bytes(8, "little") + header + b"".join(chunks)
    data = body + hashlib.sha256(body).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, durable=True)


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write a file whole or not at all (a temporary file beside it, then a rename): a run killed or failing
    mid-write leaves no half-written artifact. The file gets the mode a plain open() would (0666 less the umask;
    mkstemp's own is 0600). `durable`: synced to disk, the rename too, before returning."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)  # the rename itself must survive a crash
            finally:
                os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {e.strerror or e}") from None
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a graphc checkpoint (bad magic bytes)")
    if len(data) < len(MAGIC) + 8 + 32:
        raise CheckpointError(f"{path}: the checkpoint is truncated ({len(data)} bytes)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: the checkpoint is corrupt or truncated (checksum mismatch); it was not "
                              "loaded")
    n = int.from_bytes(body[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    try:
        header = json.loads(body[start:start + n])
    except ValueError:
        raise CheckpointError(f"{path}: the checkpoint header is unreadable") from None
    base = start + n
    arrays: dict[str, np.ndarray] = {}
    for entry in header["arrays"]:
        lo = base + entry["offset"]
        raw = body[lo:lo + entry["nbytes"]]
        if len(raw) != entry["nbytes"]:
            raise CheckpointError(f"{path}: array {entry['name']!r} is cut short")
        arrays[entry["name"]] = np.frombuffer(raw, dtype=np.dtype(entry["dtype"])).reshape(entry["shape"]).copy()
    return header["meta"], arrays


def latest(directory: str | os.PathLike) -> tuple[tuple[Path, dict, dict[str, np.ndarray]] | None, list[str]]:
    """The newest checkpoint in `directory` that loads, and the reasons the newer ones were refused."""
    d = Path(directory)
    refused: list[str] = []
    if not d.is_dir():
        return None, refused
    for p in sorted(d.glob("ckpt-*.gcp"), reverse=True):
        try:
            meta, arrays = load(p)
        except CheckpointError as e:
            refused.append(str(e))
            continue
        return (p, meta, arrays), refused
    return None, refused
