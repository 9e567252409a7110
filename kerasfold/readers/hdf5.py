"""Damaged HDF5 files: errors raised inside h5py, and a deadline on the HDF5 library itself.

A corrupt object header can send the HDF5 C library into an endless loop (seen in fuzzing: a
3-bit flip, ``attrs.get`` spinning for over ten minutes) or crash it, and neither can be
interrupted from Python. :func:`probe` walks the file's structure in a forked child first, under
a deadline: a file whose structure does not read in time, or that kills the child, is refused
before the real read starts.
"""
from __future__ import annotations

import faulthandler
import os
import select
import signal
import traceback
from typing import Callable

import h5py

from ..errors import ExportError

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
            signal.signal(signal.SIGALRM, signal.SIG_DFL)   # never outlive the parent's deadline by
            signal.alarm(int(seconds) + 2)                  # much, even orphaned and spinning in C
            faulthandler.disable()                     # a crash here is reported by the parent, in one line
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
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
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise ExportError(f"expected an HDF5 file whose structure reads in {seconds:g} s, received "
                          "one whose reading does not end (damaged HDF5 metadata)")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise ExportError("expected a readable HDF5 file, received one that crashes the HDF5 library "
                          f"(signal {os.WTERMSIG(status)}): a damaged file")
