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
(``sys.executable -c`` :data:`BOOTSTRAP`) that receives the parent's ``sys.path`` and then
functions by reference (pickled, imported by module name) with their arguments over its stdin:
it imports the modules of those functions and nothing else, so it behaves the same under a
plain script, ``python -m``, a notebook and a REPL.

The worker's stdout carries only the results (anything the task prints goes to stderr); its
stderr goes to a temporary file whose last line names why a worker died; it ignores SIGINT
(Ctrl-C interrupts the parent, which then closes the pipes) and exits when its stdin closes,
also when the parent is killed. As with :class:`concurrent.futures.ProcessPoolExecutor`, a worker
that dies breaks the pool: its task and every task not yet finished fail with
:class:`~concurrent.futures.process.BrokenProcessPool`, and the caller starts a new pool.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

#: what a worker runs: read the parent's sys.path, then serve tasks (see :func:`serve`)
BOOTSTRAP = ("import sys, pickle; sys.path[:] = pickle.load(sys.stdin.buffer); "
             f"from {__name__} import serve; serve()")


def can_start_workers() -> bool:
    """Whether worker interpreters can be started here: a runnable ``sys.executable`` that is Python
    (not a frozen application or an embedding program) on a platform with processes."""
    exe = sys.executable
    if not exe or getattr(sys, "frozen", False) or sys.platform in ("emscripten", "wasi"):
        return False
    return os.path.isfile(exe) and os.access(exe, os.X_OK)


def serve() -> None:
    """A worker's loop: ``(function, args)`` in on stdin, ``(ok, result or exception)`` out, until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print (Python or C) must not corrupt the result stream
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    while True:
        try:
            fn, args = pickle.load(inp)
        except EOFError:
            return
        try:
            msg = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001  (the task's own exception goes back to its future)
            msg = (False, e)
        try:
            data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001  (an unpicklable result or exception)
            data = pickle.dumps((False, RuntimeError(f"the worker could not send its result back: {e}")))
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
        """Run ``fn(*args)`` in a worker; ``fn`` must be importable by its module and name."""
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
        proc = subprocess.Popen([sys.executable, "-c", BOOTSTRAP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._stderr, env=env, close_fds=True)
        proc.stdin.write(pickle.dumps([p for p in sys.path], pickle.HIGHEST_PROTOCOL))
        proc.stdin.flush()
        return proc

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
                    data = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
                except Exception as e:  # noqa: BLE001  (this task cannot be sent; the worker is fine)
                    fut.set_exception(e)
                    continue
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                    ok, value = pickle.load(proc.stdout)
                except (EOFError, OSError, pickle.UnpicklingError) as e:
                    try:
                        code = proc.wait(timeout=2)  # EOF comes as it exits; give it a moment to be reaped
                    except subprocess.TimeoutExpired:
                        code = None
                    why = f"a worker process died (exit code {code})" if code is not None else \
                        f"lost contact with a worker process ({type(e).__name__})"
                    self._break(why)
                    fut.set_exception(BrokenProcessPool(self._broken))
                    return
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
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
