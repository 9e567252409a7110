"""Damaged HDF5 files: errors raised inside h5py, and a deadline on the HDF5 library itself.

A corrupt object header can send the HDF5 C library into an endless loop (seen in fuzzing: a
3-bit flip, ``attrs.get`` spinning for over ten minutes) or crash it, and neither can be
interrupted from Python. :func:`probe` walks the file's structure in a forked child first, under
a deadline: a file whose structure does not read in time, or that kills the child, is refused
before the real read starts.

:class:`ReadBeside` goes further for an export's lazy read: its child reads the model (what it
sends back is picklable, the kernels as offsets into the file), under the same deadline, then
hashes it, each answer sent through a pipe as soon as it is known. The process that exports never
calls the HDF5 library, nor imports h5py (the child does: ~60 ms), and its own work (importing the
rest of kerasfold, lowering the model) runs meanwhile on the other core; it reads the kernels'
bytes at their offsets. Only when it will read a kernel through h5py (chunked, compressed,
converted) does the child walk the whole file first, as the probe does: that walk is what keeps
the library from hanging or crashing in this process. Without it, the parts of the file the read
did not touch are never read by anyone (the walk cost ~45 ms of CPU beside the writing).
"""
from __future__ import annotations

import os
import select
import signal
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ExportError
from ..forked import Piped, kill, receive, send, silent_child

if TYPE_CHECKING:
    import h5py

PROBE_SECONDS = 10.0


def raised_by_h5py(err: BaseException) -> bool:
    """Whether ``err`` comes from inside h5py (its innermost frame is h5py's): a damaged file."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    where = frames[-1].filename.replace("\\", "/")
    return "/h5py/" in where or where.startswith("h5py/")


def _walk(f: h5py.File) -> None:
    """Touch every object header, attribute and chunk index (contiguous data is a plain read)."""
    import h5py
    def visit(_name: str, obj: h5py.HLObject) -> None:
        for key in obj.attrs:
            obj.attrs[key]
        if isinstance(obj, h5py.Dataset):
            obj.shape, obj.dtype
            if obj.chunks is not None:
                obj[()]
    for key in f.attrs:
        f.attrs[key]
    f.visititems(visit)


def probe(open_file: Callable[[], h5py.File], seconds: float | None = None,
          forked: Callable[[], None] | None = None) -> None:
    """Raise :class:`ExportError` when walking the file opened by ``open_file`` hangs or crashes.
    Any Python-level error is left to the real read, which reports it precisely. ``forked`` is
    called once the child is forked (or at once where ``os.fork`` is missing: Windows, where the
    probe is a no-op), to start work beside the wait; no thread runs while forking."""
    if not hasattr(os, "fork"):
        if forked is not None:
            forked()
        return
    seconds = PROBE_SECONDS if seconds is None else seconds
    done_r, done_w = os.pipe()                         # EOF on done_r: the child has ended
    pid = os.fork()
    if pid == 0:                                       # the child: walk, then leave at once
        code = 0
        try:
            os.close(done_r)
            _child_setup(seconds)
            with open_file() as f:
                _walk(f)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(done_w)
    try:
        if forked is not None:
            forked()
        ended, _, _ = select.select([done_r], [], [], seconds)
    finally:
        os.close(done_r)
    if not ended:
        kill(pid)
        raise _hangs(seconds)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise _crashes(status)


def _child_setup(seconds: float) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)      # never outlive the parent's deadline by
    signal.alarm(int(seconds) + 2)                     # much, even orphaned and spinning in C
    silent_child()                                     # a crash here is reported by the parent, in one line


def _hangs(seconds: float) -> ExportError:
    return ExportError(f"expected an HDF5 file whose structure reads in {seconds:g} s, received "
                       "one whose reading does not end (damaged HDF5 metadata)")


def _crashes(status: int) -> ExportError:
    return ExportError("expected a readable HDF5 file, received one that crashes the HDF5 library "
                       f"(signal {os.WTERMSIG(status)}): a damaged file")


class ReadBeside(Piped):
    """A legacy ``.h5`` read, probed and hashed in a forked child, started now.

    The child calls ``read()``: its value, or the :class:`ExportError` it raised, is the first
    answer (:meth:`read`). Then, when ``needs_walk(value)`` (the caller will read the file
    through h5py), it walks the file as :func:`probe` does; either way it then says so
    (:meth:`walked`). The read and the walk are under the probe's deadline, counted from the fork.
    Then it sends the file's sha256, ``digest()`` (:meth:`digest`; None: no hash). A child that
    hangs or crashes in the read or the walk is refused as the probe refuses it; a child that
    fails otherwise (a bug of ours, a hash it could not finish) answers nothing, and the caller
    does that work itself. Only fork where no other thread runs (``kerasfold.forked.can_fork``)."""

    def __init__(self, open_file: Callable[[], h5py.File], read: Callable[[], Any],
                 digest: Callable[[], str] | None, seconds: float | None = None,
                 needs_walk: Callable[[Any], bool] = lambda value: True) -> None:
        self.seconds = PROBE_SECONDS if seconds is None else seconds
        super().__init__(lambda fd: _read_in_child(open_file, read, digest, self.seconds, fd, needs_walk))
        self._deadline = time.monotonic() + self.seconds
        self._walked = False
        self._refused: ExportError | None = None

    def _next(self) -> tuple[str, Any] | None:
        """The child's next answer under the deadline; None when it ended without one (not by a
        signal); the probe's errors for a child that hangs or crashes."""
        try:
            answer = receive(self._fd, self._deadline)
        except TimeoutError:
            self.cancel()
            raise _hangs(self.seconds) from None
        if answer is None:                             # the child ended: a crash, or a bug of ours
            status = self._reap()
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
                raise _hangs(self.seconds)             # its own deadline ended it
            if os.WIFSIGNALED(status):
                raise _crashes(status)
        return answer

    def read(self) -> tuple[bool, Any]:
        """(True, the child's ``read()``), or (False, None) when it could not answer; raises
        its ExportError, or the probe's error for a file that hangs or crashes the child."""
        answer = self._next()
        if answer is None:
            return False, None
        kind, value = answer
        if kind == "error":
            self.cancel()
            raise value
        if kind != "read":
            self.cancel()
            return False, None
        return True, value

    def walked(self) -> None:
        """Return once the child has walked the file, or found no need to (after :meth:`read`
        answered); the probe's errors for a file whose walk hangs or crashes, again at every
        later call."""
        if self._walked:
            return
        if self._refused is not None:
            raise self._refused
        try:
            answer = self._next() if self._fd is not None else None
        except ExportError as err:
            self._refused = err
            raise
        if answer is None or answer[0] != "walked":    # not a signal, not the file: a bug of ours
            self.cancel()
            raise RuntimeError(f"the reading child ended before walking the file (it said {answer!r:.80})")
        self._walked = True

    def digest(self) -> str | None:
        """The child's sha256 of the file (waits for it, the walk's verdict first), or None when
        it sent none."""
        self.walked()
        if self._fd is None:
            return None
        try:
            answer = receive(self._fd, None)
        finally:
            self.cancel()
        if answer is not None and answer[0] == "error":
            raise answer[1]
        return answer[1] if answer is not None and answer[0] == "sha256" else None


def _read_in_child(open_file: Callable[[], h5py.File], read: Callable[[], Any],
                   digest: Callable[[], str] | None, seconds: float, fd: int,
                   needs_walk: Callable[[Any], bool]) -> None:
    code = 1
    try:
        _child_setup(seconds)
        try:
            answer: tuple[str, Any] = ("read", read())
        except ExportError as err:
            answer = ("error", err)
        send(fd, answer)
        if answer[0] == "read":
            try:
                if needs_walk(answer[1]):
                    with open_file() as f:
                        _walk(f)
            except Exception:                          # Python-level: the read reports what it reads
                pass
            send(fd, ("walked", None))
            signal.alarm(0)                            # the read and the walk are done: no deadline
            try:
                if digest is not None:
                    send(fd, ("sha256", digest()))
            except ExportError as err:
                send(fd, ("error", err))
        code = 0
    except BaseException:
        pass
    os._exit(code)
