"""Replace a directory as a whole: build beside it, then swap in one step.

On Linux (``renameat2(RENAME_EXCHANGE)``) and macOS (``renamex_np(RENAME_SWAP)``) the old and
the new directory trade places atomically: a reader sees the complete old export or the complete
new one. Elsewhere the old directory is renamed aside first (a short window where OUT is absent,
never a mix).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2          # linux/fs.h
_RENAME_SWAP = 0x2            # macOS sys/stdio.h


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
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


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; on success it replaces ``out`` as a whole, on
    any error it is removed and ``out`` is left exactly as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.kerasfold-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(stage, 0o777 & ~umask)         # mkdtemp's 0o700 would become OUT's mode
        yield stage
        for f in stage.iterdir():
            with f.open("rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(stage)
        if not out.exists():
            os.rename(stage, out)
        elif exchange(stage, out):
            shutil.rmtree(stage)                # now holds the previous export
        else:
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, aside / "old")
            os.rename(stage, out)
            shutil.rmtree(aside)
        _fsync_dir(out.parent)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
