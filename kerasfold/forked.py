"""Work started beside the export, its answer asked for later: in a forked child process when
that is safe, else in a thread.

A child has a GIL of its own. OUT's manifest validation (jsonschema's import and the validation:
~0.15 s of Python) run in a thread beside the writing held the GIL against the fold pass and
made a plain export of tiny-yolo-voc over a previous OUT ~0.1 s slower.

    pending = beside(check_out_dir, out)      # forked when no other thread runs
    seen = pending.result()                   # its value, or the ExportError it raised
    pending.cancel()                          # idempotent: a child still running is killed and reaped

A fork happens only where ``os.fork`` exists and no other thread runs (a thread holding a lock at
the fork would leave it held in the child). A child that does not answer with a value or an
ExportError (it crashed, was killed, or raised anything else) has its work done again in this
process when the result is asked for: the answer is always the function's own.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from .errors import ExportError


NICE = 10


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
        pool = ThreadPoolExecutor(max_workers=1)
        self._future: Future = pool.submit(fn, *args)
        pool.shutdown(wait=False)              # the thread ends with its one task

    def result(self) -> Any:
        return self._future.result()

    def cancel(self) -> None:
        if not self._future.cancel():
            futures.wait([self._future])       # no thread of ours outlives the caller's work


class _Child(Pending):
    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self._fn, self._args = fn, args
        self._answer: tuple[str, Any] | None = None
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:                           # the child: answer through the pipe, leave at once
            _answer_and_exit(fn, args, read, write)
        os.close(write)
        self._pid: int | None = pid
        self._read: int | None = read

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
        with os.fdopen(self._read, "rb") as pipe:     # end of file: the child has ended
            self._read = None
            data = pipe.read()
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if status != 0:
            return "none", None
        try:
            kind, value = pickle.loads(data)
        except Exception:
            return "none", None
        return (kind, value) if kind in ("value", "error") else ("none", None)

    def cancel(self) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self._pid, 0)
            self._pid = None
        if self._read is not None:
            os.close(self._read)
            self._read = None


def _answer_and_exit(fn: Callable[..., Any], args: tuple, read: int, write: int) -> None:
    code = 1
    try:
        os.close(read)
        os.nice(NICE)                          # work beside the export: the export goes first
        faulthandler.disable()                 # a crash here is the parent's to handle, silently
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            answer: tuple[str, Any] = ("value", fn(*args))
        except ExportError as err:
            answer = ("error", err)
        data = pickle.dumps(answer)
        with os.fdopen(write, "wb") as pipe:
            pipe.write(data)
        code = 0
    except BaseException:
        pass
    os._exit(code)


def can_fork() -> bool:
    """Whether forking is available and safe now: no other thread runs in this process."""
    return hasattr(os, "fork") and threading.active_count() == 1


def beside(fn: Callable[..., Any], *args: Any) -> Pending:
    """``fn(*args)`` started beside the caller: forked where :func:`can_fork`, else in a thread."""
    return _Child(fn, args) if can_fork() else _Thread(fn, args)


def now(fn: Callable[..., Any], *args: Any) -> Pending:
    """``fn(*args)`` done now (work too small to start anything for), its ExportError raised
    when the result is asked for, as :func:`beside`'s would be."""
    return _Done(fn, args)
