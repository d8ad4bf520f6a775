"""Compiling one program's LLVM modules on two cores: a helper process beside the Python one.

A large program's module is emitted in parts (its kernels each in a module of their own, see
`ModuleEmitter(split=True)`); LLVM then optimizes and generates code for some of them in a helper process while
this one does the rest, and the objects are linked into one shared object. A helper *process*, not a thread:
llvmlite serializes every call into LLVM on one process-wide lock. PyTorch's inductor compiles in a pool of
worker processes for the same reason (the GIL there).

The helper (`COMMAND`) is started when a compile that will be split begins (its start-up, ~0.1 s, overlaps the
emission of the module), serves compiles one at a time (requests on its stdin, answers on a pipe of their own), and
exits when its stdin closes (this process ended) or after `IDLE_SECONDS` without work. Anything that goes wrong
with it (it cannot start, dies, is busy with another thread's compile, answers an error or garbage, is
interrupted) makes the compile run in this process, with the same result: the helper runs the same
`target.compile_texts`.

`GRAPHC_COMPILE_PROCESSES=1` turns it off; it is off where this process may use one CPU only, and for programs
of fewer than `MIN_KERNELS` kernels (their LLVM time is short; and a kernel called, not inlined, costs a call).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import struct
import subprocess
import sys
import threading

MIN_KERNELS = 12  # a program with fewer kernels (its loops' bodies' included) is compiled in one module
IDLE_SECONDS = 60.0  # the helper exits after this long without a request
ANSWER_SECONDS = 300.0  # a helper that has not answered after this long is stopped (the compile runs here)
MAX_ANSWER = 1 << 31  # an answer claiming more bytes is not one: the helper is stopped
# the helper process: graphc from where this process has it, then that directory off the path again (-P: not
# the helper's working directory first on its path, as `python -m` would put it); its answers on the file
# descriptor given as the last argument (its stdout and stderr go nowhere: nothing printed can be read as one)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = [sys.executable, "-P", "-c", f"import sys; sys.path.insert(0, {_ROOT!r}); "
           "import graphc.codegen.parallel as p; sys.path.pop(0); p._serve(int(sys.argv[-1]))"]

_lock = threading.Lock()
_proc: subprocess.Popen | None = None
served = 0  # objects the helper compiled for this process


def _forget_in_child() -> None:
    """A forked child has its parent's helper object, not its helper: it closes its copies of the pipes (the
    helper sees the end of its input when the parent's close) and starts its own."""
    global _lock, _proc, served
    if _proc is not None:
        _close_pipes(_proc)
    _lock, _proc, served = threading.Lock(), None, 0


os.register_at_fork(after_in_child=_forget_in_child)


def available() -> bool:
    """Whether compiles may use a helper process: two CPUs for this process (for each rank an MPI launcher
    started on this machine, where it says how many) and not turned off."""
    if os.environ.get("GRAPHC_COMPILE_PROCESSES", "").strip() == "1":
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1"
    try:
        ranks = max(int(local), 1)
    except ValueError:
        ranks = 1
    return cpus // ranks >= 2


def wants_split(program) -> bool:
    """Whether `program`'s module is emitted in parts, for compiling on two cores."""
    if not available():
        return False
    from graphc.codegen.kernels import all_kernels

    return sum(1 for _ in all_kernels(program.kernels)) >= MIN_KERNELS


def prestart() -> None:
    """Start the helper process now, if it is not running, so that it is ready when the module is."""
    if not _lock.acquire(blocking=False):
        return  # another thread's compile holds it
    try:
        _running()
    finally:
        _lock.release()


def _running() -> subprocess.Popen | None:
    global _proc
    if _proc is not None and _proc.poll() is None:
        return _proc
    _proc = None
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([*COMMAND, str(w)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(w,))
    except (OSError, ValueError, subprocess.SubprocessError):
        os.close(r)
        return None
    finally:
        os.close(w)
    proc.answers = os.fdopen(r, "rb")
    _proc = proc
    return _proc


class Pending:
    """An object being compiled by the helper; `result()` is its bytes, or None if the helper failed (the caller
    then compiles it itself)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def result(self) -> bytes | None:
        global served
        data, ok = b"", False
        try:
            answers = self.proc.answers
            if not select.select([answers], [], [], ANSWER_SECONDS)[0]:
                raise OSError("the compile helper did not answer")
            ok, n = struct.unpack("<?Q", _read(answers, 9))
            if n > MAX_ANSWER:
                raise ValueError(f"the compile helper's answer claims {n} bytes")
            data = _read(answers, n)
        except BaseException as e:  # an interrupt too: its answer must not be read as the next request's
            data, ok = b"", False
            _stop(self.proc)
            if not isinstance(e, (OSError, ValueError, struct.error, MemoryError)):
                raise
        finally:
            _lock.release()
        served += ok
        return data if ok else None

    def cancel(self) -> None:
        """The caller will not read the answer (its own part failed): stop the helper, whose answer would
        otherwise be read as the next request's."""
        try:
            _stop(self.proc)
        finally:
            _lock.release()


def submit(texts: list[str], target) -> Pending | None:
    """Send `texts` (modules linked into one object) to the helper for `target`'s position-independent object;
    None if the helper cannot take them (the caller compiles them itself)."""
    if not _lock.acquire(blocking=False):
        return None
    proc = _running()
    if proc is None:
        _lock.release()
        return None
    blobs = [t.encode() for t in texts]
    spec = {"name": target.name, "cpu": target.cpu, "features": target.features,
            "vector_bits": target.vector_bits, "process_triple": target.triple, "sizes": [len(b) for b in blobs]}
    request = json.dumps(spec).encode() + b"\n" + b"".join(blobs)

    def send() -> None:  # on a thread: a helper still starting reads it later, while this one compiles its part
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
        except (OSError, ValueError):
            pass  # it died: result() reads no answer

    threading.Thread(target=send, name="graphc-compile-send", daemon=True).start()
    return Pending(proc)


@atexit.register
def shutdown() -> None:
    """Stop the helper process (it also exits on its own once idle, or when this process ends)."""
    if not _lock.acquire(timeout=1.0):  # a compile on another thread holds it: its helper sees EOF at exit
        return
    try:
        if _proc is not None:
            _stop(_proc)
    finally:
        _lock.release()


def _stop(proc: subprocess.Popen) -> None:
    global _proc
    try:
        proc.kill()
        proc.wait(timeout=5)
    except (OSError, subprocess.SubprocessError):
        pass
    _close_pipes(proc)
    if _proc is proc:
        _proc = None


def _close_pipes(proc: subprocess.Popen) -> None:
    """This process's ends of the helper's pipes (its requests, its answers)."""
    for f in (proc.stdin, getattr(proc, "answers", None)):
        try:
            f.close()
        except (OSError, AttributeError, ValueError):
            pass


def _read(f, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            raise OSError("the compile helper closed its output")
        out += chunk
    return bytes(out)


def _serve(fd: int) -> None:
    """The helper's loop: a request on stdin is a JSON line (the target, the texts' sizes) and the texts; the
    answer, on `fd`, is (ok: bool, n: u64) and n bytes: the object, or the error's message."""
    from graphc.codegen.target import Target, compile_texts

    stdin, stdout = sys.stdin.buffer, os.fdopen(fd, "wb")
    while True:
        ready, _, _ = select.select([stdin], [], [], IDLE_SECONDS)
        if not ready:
            return
        line = stdin.readline()
        if not line:
            return
        spec = json.loads(line)
        texts = [_read(stdin, n).decode() for n in spec.pop("sizes")]
        try:
            out, ok = bytes(compile_texts(texts, Target(**spec))), True
        except Exception as e:  # noqa: BLE001 - any failure is the caller's to handle: it compiles them itself
            out, ok = f"{type(e).__name__}: {e}".encode(), False
        stdout.write(struct.pack("<?Q", ok, len(out)) + out)
        stdout.flush()

