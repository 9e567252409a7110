"""OUT before an export replaces it: only an empty directory or exactly a previous export may be
replaced (a user's file inside an old export, or a foreign manifest.json, would be deleted with it).

The check reads and validates a previous manifest (~5 ms with the generated check, ~0.15 s when
jsonschema must say what is wrong). It is started first and runs beside the export, in a child
process where possible (``kerasfold.forked``), so as not to hold the GIL against the writing; at
the swap, OUT must be as the check saw it (:func:`_fingerprint`), or it is checked again.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import ExportError
from ...forked import Pending, beside, now
from .schema import MANIFEST, read_manifest


def _export_files(out: Path) -> set[str] | None:
    """The file names of the kerasfold export in ``out`` (manifest included), or None when it
    holds no manifest.json. A manifest.json that is not a valid kerasfold manifest is refused."""
    if not (out / MANIFEST).exists() and not (out / MANIFEST).is_symlink():
        return None
    try:
        manifest = read_manifest(out)
    except ExportError as err:
        raise ExportError("expected OUT to be empty or a previous kerasfold export, received a "
                          f"manifest.json that is not kerasfold's ({err.message}); refusing to replace it",
                          file=str(out)) from err
    names = {MANIFEST}
    for layer in manifest["layers"]:
        names.update(layer[key]["file"] for key in ("weights", "bias") if key in layer)
    return names


Seen = tuple                       # what OUT held when checked (_fingerprint)


def _fingerprint(out: Path) -> Seen | None:
    """OUT's file names and its manifest's identity (inode, size, times): equal means unchanged."""
    try:
        names = frozenset(os.listdir(out))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return ("not a directory",)
    if MANIFEST not in names:
        return names, None
    st = os.lstat(out / MANIFEST)
    return names, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_out_dir(out: Path, validate: bool = True) -> Seen | None:
    """Refuse to replace anything but an empty directory or exactly a previous export: a foreign
    manifest.json, or a user's file put inside an old export, would be deleted with it. What was
    checked is returned (:func:`_fingerprint`). ``validate=False``: all but reading the manifest
    (quick: any manifest.json is taken to be an export's)."""
    seen = _fingerprint(out)
    if not out.exists():
        return seen
    if not out.is_dir():
        raise ExportError("expected OUT to be a directory, received a file", file=str(out))
    present = {p.name for p in out.iterdir()}
    if not present:
        return seen
    if not validate and MANIFEST in present:
        return seen
    known = _export_files(out)
    others = sorted(present - known) if known is not None else sorted(present)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ExportError("expected OUT to be empty or a previous kerasfold export, received a "
                          f"directory also holding {shown}; refusing to replace it", file=str(out))
    return seen


def target(out: Path) -> Path:
    """The directory an export into ``out`` replaces: a symbolic link's target (the link stays)."""
    if not out.is_symlink():
        return out
    try:
        return out.resolve()
    except (OSError, RuntimeError) as err:       # RuntimeError: a loop (Python 3.11's resolve)
        raise ExportError("expected OUT to be a directory or a link to one, received a symbolic link "
                          "that does not resolve (a loop)", file=str(out)) from err


def start_out_check(out: Path) -> Pending:
    """OUT's check (:func:`check_out_dir`), started beside the export, its answer wanted at the
    swap (:func:`confirm`). Started before any thread, it can fork: the export starts it first."""
    try:
        out = target(out)
    except ExportError:                          # said by write_export, after the model's own errors
        return now(target, out)
    if not os.path.lexists(out / MANIFEST):      # nothing to validate: quick
        return now(check_out_dir, out)
    return beside(check_out_dir, out)


def confirm(checked: Pending, out: Path) -> None:
    """Right before the swap: OUT as the check beside the writing found it, or checked again."""
    if _fingerprint(out) != checked.result():
        check_out_dir(out)
