"""Replace a directory as a whole: build beside it, then swap in one step.

On Linux (``renameat2(RENAME_EXCHANGE)``) and macOS (``renamex_np(RENAME_SWAP)``) the old and
the new directory trade places atomically: a reader sees the complete old export or the complete
new one. Elsewhere the old directory is renamed aside first (a short window where OUT is absent,
never a mix; a run killed in it is undone by the next run, see :mod:`.stale`).

OUT is resolved to an absolute path first, so ``.`` (or any directory holding the current one) can
be replaced: the staging directory goes beside it, not inside it. A shell sitting in a replaced
directory then sits in the removed old one (``cd .`` does not help, ``cd "$PWD"`` does).

Leftovers: each run first removes the staging directories of dead runs into the same OUT
(:mod:`.stale`: a staging directory is locked by its live creator). SIGINT raises
KeyboardInterrupt, which removes the staging directory on its way out (exit 130 in the CLI).
SIGTERM, in the main thread and while its disposition is the default, does the same and then
ends the process by SIGTERM as it would have (a shell shows 143, ``subprocess`` -15); the handler
is installed for the staging only, and a SIGTERM arriving during the final swap waits for it.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .stale import ASIDE, STAGE, make_locked, remove_stale

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2          # linux/fs.h
_RENAME_SWAP = 0x2            # macOS sys/stdio.h


def _libc() -> ctypes.CDLL | None:
    """The C library this process runs on (Linux, macOS: ``dlopen(NULL)``, its symbols included).
    Not ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a subprocess on Linux (~10 ms
    at the end of every export)."""
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False when the platform cannot."""
    libc = _libc()
    if libc is None:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
    else:
        return False
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):                 # EINVAL, ENOSYS, EOPNOTSUPP: fall back
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                                    # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    """Every file under ``root`` to disk, several at a time (fsync releases the GIL and the file
    system can commit them together), then every folder, deepest first (a package has folders)."""
    walked = list(os.walk(root, topdown=False))
    files = [os.path.join(folder, name) for folder, _, names in walked for name in names]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(_fsync_file, files))
    for folder, _, _ in walked:
        _fsync_dir(Path(folder))


class _Terminated(BaseException):
    """SIGTERM arrived while a staged directory was in use (BaseException: no ``except Exception``
    on the way may swallow it)."""


class _SigtermGuard:
    """Turns SIGTERM into :class:`_Terminated`, except during :meth:`swapping`, where it waits."""

    def __init__(self) -> None:
        self.swapping = self.pending = self.raised = False

    def handle(self, signum: int, frame: object) -> None:
        if self.swapping or self.raised:
            self.pending = True
            return
        self.raised = True
        raise _Terminated()

    @contextmanager
    def swap(self) -> Iterator[None]:
        self.swapping = True
        try:
            yield
        finally:
            self.swapping = False
        if self.pending and not self.raised:
            self.raised = True
            raise _Terminated()


@contextmanager
def _sigterm_cleans_up() -> Iterator[_SigtermGuard]:
    """For the block: SIGTERM unwinds it (its ``finally`` clauses run), then ends the process by
    SIGTERM. Only in the main thread and only over the default disposition: an application's own
    handler, or an ignored SIGTERM, stays as it is."""
    guard = _SigtermGuard()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield guard
        return
    signal.signal(signal.SIGTERM, guard.handle)
    try:
        yield guard
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        raise SystemExit(128 + signal.SIGTERM)      # not reached: SIGTERM's default ends the process
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _swap_in(stage: Path, out: Path, check: Callable[[Path], None] | None) -> None:
    """Put ``stage`` in ``out``'s place. Another export into the same OUT may create it (or swap it)
    meanwhile: an OUT that appeared is ``check``-ed and swapped like any OUT (the last run wins)."""
    for _ in range(10):
        if os.path.lexists(out):
            if check is not None:
                check(out)
            try:
                if exchange(stage, out):
                    return
            except FileNotFoundError:
                continue                            # gone again (another run's fallback window)
            aside, lock = make_locked(out, ASIDE)
            try:
                os.rename(out, aside / "old")
                os.rename(stage, out)
                shutil.rmtree(aside)
            finally:
                if lock is not None:
                    os.close(lock)
            return
        try:
            os.rename(stage, out)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise                               # else OUT appeared since lexists: swap with it
    raise OSError(errno.EBUSY, "OUT kept changing under other exports", str(out))


@contextmanager
def staged_directory(out: Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; on success it replaces ``out`` as a whole, on
    any error (or SIGINT, SIGTERM) it is removed and ``out`` is left exactly as it was.

    ``check(out)`` runs again right before the swap whenever OUT exists then (it may have been
    created or changed by someone else during the export); raising there aborts cleanly."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    umask = os.umask(0)
    os.umask(umask)
    with _sigterm_cleans_up() as guard:
        stage, lock = make_locked(out, STAGE)
        try:
            os.chmod(stage, 0o777 & ~umask)         # mkdtemp's 0o700 would become OUT's mode
            yield stage
            _fsync_tree(stage)
            with guard.swap():
                _swap_in(stage, out, check)
            _fsync_dir(out.parent)
        finally:
            if os.path.lexists(stage):
                shutil.rmtree(stage, ignore_errors=True)    # the failed export, or the previous one
            if lock is not None:
                os.close(lock)
