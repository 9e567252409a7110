"""What the last successful run of the phase saw, so that the next one can do nothing.

The stamp is a small JSON file outside OUT (FORMAT.md: nothing else is written into OUT):

    {"stamp": 1, "kerasfold": "0.1.0", "args": [...], "model": "/abs/yolo.h5", "out": "/abs/Weights",
     "bundle": null, "source": {"size": 63563448, "mtime_ns": ..., "inode": ..., "sha256": "..."},
     "files": {"manifest.json": [size, mtime_ns], "conv2d_1_W.bin": [...], ...}, "verified": false}

Up to date means: the same kerasfold version, options, paths; the model's sha256 unchanged (read
from the stamp while its size, mtime and inode are unchanged, hashed otherwise); OUT holding
exactly the files it held after the export, each with the same size and mtime. Standard library
only: this is the path every unchanged build takes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

from .. import __version__
from ..digest import file_sha256
from .settings import Settings

STAMP_VERSION = 1


def key(s: Settings) -> dict[str, Any]:
    """What must be equal for an export to be reusable, besides the model's bytes and OUT's files."""
    return {"stamp": STAMP_VERSION, "kerasfold": __version__, "args": list(s.args),
            "model": str(s.model), "out": str(s.out), "bundle": str(s.bundle) if s.bundle else None}


def source(path: Path, previous: dict[str, Any] | None, *, hash_it: bool = True) -> dict[str, Any]:
    """The model's size, mtime, inode and sha256; the sha256 is taken from ``previous`` (a stamp's
    ``source``) while size, mtime and inode are unchanged, hashed otherwise (None without
    ``hash_it``: the export about to run hashes the file anyway). Raises OSError."""
    st = os.stat(path)
    seen = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    if previous and all(previous.get(k) == v for k, v in seen.items()) and previous.get("sha256"):
        return {**seen, "sha256": previous["sha256"]}
    return {**seen, "sha256": file_sha256(path) if hash_it else None}


def files(directory: Path) -> dict[str, list[int]] | None:
    """Each entry of ``directory``: name -> [size, mtime_ns] (-1 as the size of anything but a
    regular file); None when it is not a directory."""
    try:
        with os.scandir(directory) as entries:
            seen = {}
            for e in entries:
                st = e.stat(follow_symlinks=False)
                regular = e.is_file(follow_symlinks=False)
                seen[e.name] = [st.st_size if regular else -1, st.st_mtime_ns]
            return dict(sorted(seen.items()))
    except (FileNotFoundError, NotADirectoryError):
        return None


def load(path: Path) -> dict[str, Any] | None:
    """The stamp, or None when there is none or it is unreadable (then the phase simply exports)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(path: Path, data: dict[str, Any]) -> None:
    """Write the stamp atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")     # tempfile's import costs 4 ms
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def same_settings(old: dict[str, Any] | None, s: Settings) -> bool:
    return bool(old) and all(old.get(k) == v for k, v in key(s).items())


def export_is_current(old: dict[str, Any] | None, s: Settings, src: dict[str, Any]) -> bool:
    """The stamp was written for these settings and this model, and OUT is as the export left it."""
    if not same_settings(old, s):
        return False
    if src["sha256"] is None or (old.get("source") or {}).get("sha256") != src["sha256"]:
        return False
    return old.get("files") is not None and files(s.out) == old["files"]
