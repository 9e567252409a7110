"""Staging directories that tell whether their creator is still alive, and the removal of those
whose creator is gone.

A staging directory beside OUT (``.<OUT>.kerasfold-<pid>-<random>``, and the fallback's
``.<OUT>.old-<pid>-<random>``) is held under an exclusive ``flock`` on the directory itself by the
process that made it, for as long as it uses it. The kernel drops the lock when that process ends,
however it ends (SIGKILL, a crash): a directory whose lock can be taken belongs to nobody, and the
next export into the same OUT removes it.

Why a lock and not the pid: pids are reused, so "is pid N alive?" can keep a dead run's folder
forever, or take a live run's folder for dead; pairing the pid with its start time needs
``/proc/<pid>/stat`` (Linux only). ``flock`` behaves the same on Linux and macOS, is bound to the
open file description (another thread or process of ours never shares it), and needs no lock file:
nothing extra is written, so nothing extra can land in OUT. The pid in the name is for people.

Where the file system refuses ``flock`` (some network file systems) the directory simply stays
unlocked, and a directory that cannot be locked is never taken for stale: a dead run's folder may
then stay, a live run's folder is never removed.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:                     # not a POSIX system: no locks, nothing is ever taken for stale
    fcntl = None                        # type: ignore[assignment]

_OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
STAGE, ASIDE = "kerasfold", "old"


def prefix(out: Path, kind: str) -> str:
    """The name every ``kind`` (STAGE or ASIDE) directory of ``out`` starts with, pid included."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def _pattern(out: Path) -> re.Pattern[str]:
    return re.compile(re.escape(f".{out.name}.") + f"({STAGE}|{ASIDE})" + r"-\d+-[a-z0-9_]+")


BUSY, UNLOCKABLE = -1, -2


def _lock(path: Path) -> int:
    """Take the exclusive lock of directory ``path``: the descriptor holding it (>= 0); BUSY when
    someone else holds it or ``path`` is gone or no longer that directory; UNLOCKABLE when there
    are no locks here (no fcntl, a file system refusing them) or ``path`` is not a directory."""
    if fcntl is None:
        return UNLOCKABLE
    try:
        fd = os.open(path, _OPEN_DIR)
    except FileNotFoundError:
        return BUSY
    except OSError:
        return UNLOCKABLE
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.lstat(path)):
            return fd
        result = BUSY
    except (BlockingIOError, FileNotFoundError):
        result = BUSY
    except OSError:
        result = UNLOCKABLE
    os.close(fd)
    return result


def make_locked(out: Path, kind: str) -> tuple[Path, int | None]:
    """A new empty ``kind`` directory beside ``out`` and the descriptor holding its lock (None
    where there are no locks). A remover may find the directory in the instant between its
    creation and its locking, and remove it: then another name is tried."""
    for _ in range(100):
        path = Path(tempfile.mkdtemp(prefix=prefix(out, kind), dir=out.parent))
        fd = _lock(path)
        if fd != BUSY:
            return path, (fd if fd >= 0 else None)
    raise FileExistsError(17, "staging directories kept vanishing as they were made", str(out.parent))


def remove_stale(out: Path) -> list[str]:
    """Remove the staging (and fallback) directories of ``out`` left by dead processes: only names
    of ``out``'s own pattern, only directories (a symlink or a file is left alone), only those whose
    lock can be taken. A dead fallback run that had moved OUT aside gives it back when OUT is absent.
    Returns the names removed."""
    pattern, removed = _pattern(out), []
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if not match:
            continue
        path = out.parent / name
        fd = _lock(path)
        if fd < 0:
            continue                    # alive, or not ours to judge
        try:
            if match.group(1) == ASIDE and (path / "old").is_dir() and not os.path.lexists(out):
                try:
                    os.rename(path / "old", out)
                except OSError:
                    pass
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        finally:
            os.close(fd)
    return removed
