"""Worker processes that never re-run the caller's script: a small process pool on :mod:`subprocess`.

    pool = WorkerPool(2)
    fut = pool.submit(decode_task, sources, names, plan)   # a concurrent.futures.Future
    fut.result()                                           # BrokenProcessPool if its worker died
    pool.shutdown()

Why not :mod:`multiprocessing`: its ``spawn`` and ``forkserver`` start methods prepare every
worker by importing the parent's ``__main__`` again (as ``__mp_main__``; ``forkserver`` too,
whatever its preload list), so a script without ``if __name__ == "__main__":`` loads its model
and starts its run once per worker (issue 24: three model loads, two tracebacks); ``fork``
copies a process whose torch threads may hold locks. Here each worker is a fresh interpreter
(``sys.executable -c`` :data:`BOOTSTRAP`) that is given the parent's ``sys.path`` and then
functions by reference (``module:qualname``, imported in the worker) with their arguments over
its stdin: it imports the modules of those functions and nothing else, so it behaves the same
under a plain script, ``python -m``, a notebook and a REPL.

No pickle (the project's rule): messages are a JSON header plus raw byte blobs (:func:`encode`,
:func:`decode`), for None, bools, numbers, strings, bytes, lists, tuples, str-keyed dicts, numpy
arrays of plain dtypes and the dataclasses named in :data:`DATACLASSES`; anything else is refused
before it is sent. A task's exception comes back as its type name and message.

The worker's stdout carries only the results (anything the task prints goes to stderr); its
stderr goes to a temporary file whose last line names why a worker died; it ignores SIGINT
(Ctrl-C interrupts the parent, which then closes the pipes) and exits when its stdin closes,
also when the parent is killed. As with :class:`concurrent.futures.ProcessPoolExecutor`, a worker
that dies breaks the pool: its task and every task not yet finished fail with
:class:`~concurrent.futures.process.BrokenProcessPool`, and the caller starts a new pool.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, BinaryIO, Callable

import numpy as np

#: what a worker runs: take the parent's sys.path (argv[1], JSON), then serve tasks (see :func:`serve`)
BOOTSTRAP = f"import sys, json; sys.path[:] = json.loads(sys.argv[1]); from {__name__} import serve; serve()"

#: the dataclasses a message may hold, by ``module:qualname`` (rebuilt field by field in the worker)
DATACLASSES = frozenset({"engine.encoders.pixels:PixelPlan"})


# --------------------------------------------------------------------------- messages
def _ref(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _resolve(ref: str) -> Any:
    module, _, qualname = ref.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _pack(value: Any, blobs: list[bytes]) -> Any:
    """``value`` as JSON-able data; bytes and arrays go to ``blobs``. Raises TypeError for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {"bytes": len(blobs) - 1}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("an array of Python objects cannot be sent to a worker")
        blobs.append(np.ascontiguousarray(value).tobytes())
        return {"array": len(blobs) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list):
        return [_pack(v, blobs) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_pack(v, blobs) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _pack(v, blobs) for k, v in value.items()}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and _ref(type(value)) in DATACLASSES:
        return {"dataclass": _ref(type(value)),
                "fields": {f.name: _pack(getattr(value, f.name), blobs) for f in dataclasses.fields(value)}}
    raise TypeError(f"a {type(value).__name__} cannot be sent to a worker process")


def _unpack(data: Any, blobs: list[bytes]) -> Any:
    if isinstance(data, list):
        return [_unpack(v, blobs) for v in data]
    if not isinstance(data, dict):
        return data
    if "bytes" in data:
        return blobs[data["bytes"]]
    if "array" in data:
        return np.frombuffer(blobs[data["array"]], dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if "tuple" in data:
        return tuple(_unpack(v, blobs) for v in data["tuple"])
    if "dict" in data:
        return {k: _unpack(v, blobs) for k, v in data["dict"].items()}
    if "dataclass" in data and data["dataclass"] in DATACLASSES:
        return _resolve(data["dataclass"])(**{k: _unpack(v, blobs) for k, v in data["fields"].items()})
    raise ValueError(f"a malformed worker message: {sorted(data)}")


def encode(value: Any) -> bytes:
    """One message: an 8-byte header length, the JSON header (the value and its blobs' lengths), the blobs."""
    blobs: list[bytes] = []
    head = json.dumps({"value": _pack(value, blobs), "blobs": [len(b) for b in blobs]}).encode("utf-8")
    return b"".join([struct.pack("<Q", len(head)), head, *blobs])


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) < n:
        raise EOFError("the stream ended inside a message")
    return data


def decode(f: BinaryIO) -> Any:
    """The next message's value from ``f``; EOFError at the end of the stream."""
    first = f.read(8)
    if not first:
        raise EOFError("no more messages")
    if len(first) < 8:
        raise EOFError("the stream ended inside a message")
    head = json.loads(_read_exactly(f, struct.unpack("<Q", first)[0]).decode("utf-8"))
    blobs = [_read_exactly(f, n) for n in head["blobs"]]
    return _unpack(head["value"], blobs)


def _exception(type_name: str, message: str) -> BaseException:
    """A task's exception rebuilt in the parent: the built-in type of that name, else RuntimeError naming it."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001  (a built-in exception with another signature)
            pass
    return RuntimeError(f"{type_name}: {message}")


def can_start_workers() -> bool:
    """Whether worker interpreters can be started here: a runnable ``sys.executable`` that is Python
    (not a frozen application or an embedding program) on a platform with processes."""
    exe = sys.executable
    if not exe or getattr(sys, "frozen", False) or sys.platform in ("emscripten", "wasi"):
        return False
    return os.path.isfile(exe) and os.access(exe, os.X_OK)


def serve() -> None:
    """A worker's loop: ``[function ref, args]`` in on stdin, ``{"ok": result}`` or ``{"error": [type,
    message]}`` out, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (Python or C) must not corrupt the result stream
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    while True:
        try:
            ref, args = decode(inp)
        except EOFError:
            return
        try:
            data = encode({"ok": _resolve(ref)(*args)})
        except BaseException as e:  # noqa: BLE001  (the task's own exception goes back to its future)
            data = encode({"error": [type(e).__name__, str(e)]})
        out.write(data)
        out.flush()


class WorkerPool:
    """``workers`` worker interpreters (started on the first :meth:`submit`), each fed by its own thread."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers == {workers}, must be >= 1")
        self.workers = int(workers)
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._closed = False
        self._stderr = tempfile.TemporaryFile()

    def submit(self, fn: Callable, *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker; ``fn`` must be importable by its module and name (not from
        ``__main__``, which a worker never imports), and its arguments of the kinds :func:`encode` takes."""
        if fn.__module__ == "__main__" or "<locals>" in fn.__qualname__:
            raise ValueError(f"{fn.__qualname__} cannot run in a worker process: it must be importable "
                             "(defined at the top of a module other than __main__)")
        fut: Future = Future()
        with self._lock:
            if self._broken is not None or self._closed:
                fut.set_exception(BrokenProcessPool(self._broken or "the worker pool was shut down"))
                return fut
            if not self._threads:
                for k in range(self.workers):
                    t = threading.Thread(target=self._run, name=f"twentyq-worker-{k}", daemon=True)
                    self._threads.append(t)
                    t.start()
            self._tasks.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        """Stop taking tasks; cancel the queued ones (``cancel_futures``); the workers exit when their
        stdin closes. ``wait``: until the feeding threads (and so the workers) have finished."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                self._drain(lambda fut: fut.cancel())
            for _ in self._threads:
                self._tasks.put(None)
            threads = list(self._threads)
        if wait:
            for t in threads:
                t.join()

    def stderr_tail(self) -> str:
        """The last non-empty line the workers wrote to stderr ('' if none)."""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 4096))
            lines = [ln.strip() for ln in self._stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            return lines[-1] if lines else ""
        except (OSError, ValueError):
            return ""

    # -- internals -------------------------------------------------------------
    def _drain(self, fail: Callable[[Future], Any]) -> None:
        while True:
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                fail(item[0])
            else:
                self._tasks.put(None)  # a thread's stop signal stays for that thread
                return

    def _break(self, why: str) -> None:
        """A worker died: fail every queued task and stop the other workers (their tasks fail too)."""
        with self._lock:
            if self._broken is None:
                tail = self.stderr_tail()
                self._broken = why + (f" (its last words: {tail})" if tail else "")
            self._drain(lambda fut: fut.set_running_or_notify_cancel()
                        and fut.set_exception(BrokenProcessPool(self._broken)))
            for _ in self._threads:
                self._tasks.put(None)
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                p.kill()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env.pop("PYTHONSTARTUP", None)
        return subprocess.Popen([sys.executable, "-c", BOOTSTRAP, json.dumps(list(sys.path))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True)

    def _run(self) -> None:
        try:
            proc = self._start()
        except OSError as e:
            self._break(f"a worker process could not start: {e}")
            return
        with self._lock:
            self._procs.append(proc)
        try:
            while True:
                item = self._tasks.get()
                if item is None or self._broken is not None:
                    if item is not None:
                        item[0].set_running_or_notify_cancel() and item[0].set_exception(
                            BrokenProcessPool(self._broken))
                    return
                fut, fn, args = item
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    data = encode([_ref(fn), list(args)])
                except TypeError as e:  # this task cannot be sent; the worker is fine
                    fut.set_exception(e)
                    continue
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                    reply = decode(proc.stdout)
                except (EOFError, OSError, ValueError) as e:
                    try:
                        code = proc.wait(timeout=2)  # EOF comes as it exits; give it a moment to be reaped
                    except subprocess.TimeoutExpired:
                        code = None
                    why = f"a worker process died (exit code {code})" if code is not None else \
                        f"lost contact with a worker process ({type(e).__name__})"
                    self._break(why)
                    fut.set_exception(BrokenProcessPool(self._broken))
                    return
                if "ok" in reply:
                    fut.set_result(reply["ok"])
                else:
                    fut.set_exception(_exception(*reply["error"]))
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
