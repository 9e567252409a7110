"""Work started beside the export, its answer asked for later: in a forked child process when
that is safe, else in a thread.

A child has a GIL of its own. OUT's manifest validation, when it ran jsonschema (its import and
the validation: ~0.15 s of Python; now only for a manifest the generated check refuses), run in a
thread beside the writing held the GIL against the fold pass and made a plain export of
tiny-yolo-voc over a previous OUT ~0.1 s slower. The source's hash and an export's second writer
run in children for the same reason.

    pending = beside(check_out_dir, out)      # forked when no other thread runs
    seen = pending.result()                   # its value, or the ExportError it raised
    pending.cancel()                          # idempotent: a child still running is killed and reaped

A fork happens only where ``os.fork`` exists and no other thread runs (a thread holding a lock at
the fork would leave it held in the child). A child that does not answer with a value or an
ExportError (it crashed, was killed, or raised anything else) has its work done again in this
process when the result is asked for: the answer is always the function's own.

:func:`send` and :func:`receive` carry answers through a pipe (``readers/hdf5.py``'s reading
child uses them too).
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .errors import ExportError

if TYPE_CHECKING:
    from concurrent.futures import Future


NICE = 10                                      # beside()'s default: work off the critical path


class Pending:
    """The answer of ``fn(*args)``, computed beside the caller."""

    def result(self) -> Any:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop waiting for the answer (a child is killed); harmless after :meth:`result`."""


class _Done(Pending):
    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self._answer: tuple[bool, Any] = (True, fn(*args))
        except ExportError as err:
            self._answer = (False, err)

    def result(self) -> Any:
        ok, value = self._answer
        if not ok:
            raise value
        return value


class _Thread(Pending):
    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        from concurrent.futures import ThreadPoolExecutor   # not before numpy: the command line
        pool = ThreadPoolExecutor(max_workers=1)             # forks its children first (~9 ms)
        self._future: Future = pool.submit(fn, *args)
        pool.shutdown(wait=False)              # the thread ends with its one task

    def result(self) -> Any:
        return self._future.result()

    def cancel(self) -> None:
        if not self._future.cancel():
            from concurrent import futures
            futures.wait([self._future])       # no thread of ours outlives the caller's work


class Piped:
    """A forked child that answers through a pipe (:func:`send`, :func:`receive` on ``_fd``).
    ``run(fd)`` is the child's whole life: it writes to ``fd`` and leaves by ``os._exit``."""

    def __init__(self, run: Callable[[int], None]) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            run(write)
            os._exit(1)                        # not reached: ``run`` leaves by itself
        os.close(write)
        self._pid: int | None = pid
        self._fd: int | None = read

    def _reap(self) -> int:
        """Close the pipe and wait for the child (it has ended); its exit status."""
        os.close(self._fd)
        self._fd = None
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        return status

    def cancel(self) -> None:
        """Close the pipe, kill the child if it still runs, and reap it; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._pid is not None:
            kill(self._pid)
            self._pid = None


class _Child(Piped, Pending):
    def __init__(self, fn: Callable[..., Any], args: tuple, nice: int = 0) -> None:
        self._fn, self._args = fn, args
        self._answer: tuple[str, Any] | None = None
        super().__init__(lambda fd: _answer_and_exit(fn, args, fd, nice))

    def result(self) -> Any:
        if self._answer is None:
            self._answer = self._collect()
        kind, value = self._answer
        if kind == "value":
            return value
        if kind == "error":
            raise value
        return self._fn(*self._args)           # no answer from the child: the same work, here

    def _collect(self) -> tuple[str, Any]:
        try:
            answer = receive(self._fd, None)
        except Exception:                      # a message cut short
            answer = None
        self.cancel()
        return answer if answer is not None and answer[0] in ("value", "error") else ("none", None)


def _answer_and_exit(fn: Callable[..., Any], args: tuple, fd: int, nice: int) -> None:
    code = 1
    try:
        if nice:
            os.nice(nice)
        silent_child()
        try:
            answer: tuple[str, Any] = ("value", fn(*args))
        except ExportError as err:
            answer = ("error", err)
        send(fd, answer)
        code = 0
    except BaseException:
        pass
    os._exit(code)


def silent_child() -> None:
    """In a forked child: no traceback or crash report of its own (the parent reports)."""
    faulthandler.disable()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)       # not the parent's handler: its cleanup is the parent's


def kill(pid: int) -> None:
    """Kill a child (if it still runs) and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


_LENGTH = struct.Struct("<Q")


def send(fd: int, answer: tuple[str, Any]) -> None:
    """One answer through a pipe: its pickle's length, then the pickle."""
    data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int, deadline: float | None) -> tuple[str, Any] | None:
    """The next answer :func:`send` put on ``fd``; None at end of file (the child ended without
    one); TimeoutError past ``deadline`` (``time.monotonic()``; None: no deadline)."""
    def exactly(n: int) -> bytes | None:
        parts, left = [], n
        while left:
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise TimeoutError
            part = os.read(fd, min(left, 1 << 20))
            if not part:
                return None
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
    head = exactly(_LENGTH.size)
    body = None if head is None else exactly(_LENGTH.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def can_fork() -> bool:
    """Whether forking is available and safe now: no other thread runs in this process."""
    return hasattr(os, "fork") and threading.active_count() == 1


def beside(fn: Callable[..., Any], *args: Any, nice: int = NICE) -> Pending:
    """``fn(*args)`` started beside the caller: forked where :func:`can_fork` (at ``nice``: by
    default work that may wait), else in a thread."""
    return _Child(fn, args, nice) if can_fork() else _Thread(fn, args)


def now(fn: Callable[..., Any], *args: Any) -> Pending:
    """``fn(*args)`` done now (work too small to start anything for), its ExportError raised
    when the result is asked for, as :func:`beside`'s would be."""
    return _Done(fn, args)
