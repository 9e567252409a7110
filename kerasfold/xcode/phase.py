"""The Run Script phase: nothing when up to date; else export, verify when asked, copy when asked.

Diagnostics are the lines Xcode's issue navigator shows, ``PATH: error: message`` and
``PATH: warning: message``, PATH being the file the message is about (the model, OUT, a file list).
Exit codes as the command line's: 0 success, 1 parity check failed, 2 bad input, 3 internal error.
On any failure OUT is left as it was (the export replaces it atomically) and no stamp is written,
so the next build tries again.

Sandbox (``ENABLE_USER_SCRIPT_SANDBOXING=YES``): the phase reads the model and writes OUT (through a
staging folder beside it, swapped in and gone before the phase ends), the stamp and the bundle
copy. Keras is pointed at no home folder (no ``~/.keras/keras.json``) and Python writes no bytecode.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import stamp
from .settings import Settings, SettingsError, settings

if TYPE_CHECKING:
    import argparse
    from typing import Any

# Imported where used, not here: argparse, shutil, traceback (the up-to-date path needs none of them).
EXIT_OK, EXIT_PARITY, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class PhaseError(Exception):
    def __init__(self, path: Path | str, message: str, code: int = EXIT_INPUT):
        super().__init__(message)
        self.path, self.message, self.code = str(path), message, code


def diagnostic(path: Path | str, severity: str, message: str) -> None:
    from ..errors import one_line
    print(f"{one_line(str(path))}: {severity}: {one_line(message)}", file=sys.stderr)


def _options(s: Settings) -> argparse.Namespace:
    """KERASFOLD_ARGS parsed as ``yolo2metal``'s options; a bad one is a PhaseError, not a usage dump."""
    from ..yolo2metal import parser

    p = parser()

    def refuse(message: str) -> None:
        raise PhaseError(s.model, f"expected KERASFOLD_ARGS to hold options of kerasfold, received "
                                  f"{' '.join(s.args)!r} ({message})")

    p.error = refuse                                         # type: ignore[method-assign]
    if any(a in ("-h", "--help") for a in s.args):
        refuse("--help is not an export option")
    return p.parse_args([str(s.model), str(s.out), *s.args])


def _export(s: Settings, args: argparse.Namespace) -> str:
    """Export; returns the sha256 of the bytes exported (the stamp's, so the model is hashed once)."""
    from ..pipeline import export
    from ..yolo2metal import export_options

    result = export(s.model, s.out, export_options(args), remember=s.verify)
    for line in result.warnings():
        diagnostic(s.model, "warning", line)
    print(result.summary())
    return result.manifest["source"]["sha256"]


def _verify(s: Settings, args: argparse.Namespace) -> None:
    os.environ["KERAS_HOME"] = os.path.join(os.devnull, "keras")   # no ~/.keras/keras.json, read or written
    from ..verify import verify_export

    report = verify_export(s.model, s.out, tolerance=args.tolerance, input_size=args.input_size)
    print(report.text())
    if not report.passed:
        failed = next((line for line in report.text().splitlines() if "FAIL" in line or "mismatch" in line),
                      "parity check failed")
        raise PhaseError(s.model, f"the export does not reproduce the model: {failed}", EXIT_PARITY)


def _copy_to_bundle(out: Path, bundle: Path) -> None:
    """OUT's files into the app bundle, replacing the previous copy as a whole (mtimes kept, so the
    next build can tell the copy is current without reading it)."""
    import shutil

    from ..targets.mps.atomic import staged_directory

    with staged_directory(bundle) as stage:
        for f in sorted(out.iterdir()):
            shutil.copy2(f, stage / f.name)


def run(s: Settings) -> int:
    try:
        old = stamp.load(s.stamp)
        try:
            src = stamp.source(s.model, (old or {}).get("source"), hash_it=stamp.same_settings(old, s))
        except OSError as err:
            raise PhaseError(s.model, f"expected the Keras model file (SCRIPT_INPUT_FILE_0, KERASFOLD_MODEL "
                                      f"or $SRCROOT/Models/yolo.h5), received {err.strerror or err}") from None
        current = stamp.export_is_current(old, s, src)
        verified = current and bool(old and old.get("verified"))
        copied = s.bundle is None or (current and stamp.files(s.bundle) == stamp.files(s.out))
        if current and (verified or not s.verify) and copied:
            if old and old.get("source") != src:           # touched, same bytes: remember the new mtime
                stamp.save(s.stamp, {**old, "source": src})
            return EXIT_OK
        args = _options(s) if not current or s.verify else None
        if not current:
            src["sha256"] = _export(s, args)
            verified = False
        if s.verify and not verified:
            _verify(s, args)
            verified = True
        if s.bundle is not None and not (current and copied):
            _copy_to_bundle(s.out, s.bundle)
        stamp.save(s.stamp, {**stamp.key(s), "source": src, "files": stamp.files(s.out),
                             "verified": verified})
        return EXIT_OK
    except PhaseError as err:
        diagnostic(err.path, "error", err.message)
        return err.code


def _located(err: Any, fallback: Path) -> tuple[str, str]:
    """An ExportError as (path, message): the file it names (the model, OUT) and the rest."""
    message = f"layer '{err.layer}': {err.message}" if err.layer else err.message
    return (err.file or str(fallback)), message


def main() -> int:
    try:
        s = settings()
    except SettingsError as err:
        diagnostic(err.path, "error", err.message)
        return EXIT_INPUT
    from ..errors import ExportError                     # stdlib only: the up-to-date path stays light

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = run(s)
        except ExportError as err:
            path, message = _located(err, s.model)
            diagnostic(path, "error", message)
            code = EXIT_INPUT
        except MemoryError:
            diagnostic(s.model, "error", "expected a network that fits in memory, received one whose "
                                         "tensors do not (MemoryError)")
            code = EXIT_INPUT
        except KeyboardInterrupt:
            code = 130
        except Exception:
            import traceback
            traceback.print_exc()
            diagnostic(s.model, "error", "internal error in kerasfold (please report it with the trace above)")
            code = EXIT_INTERNAL
    if code != EXIT_INPUT:
        for w in caught:
            if w.category.__module__.startswith("kerasfold"):
                diagnostic(s.model, "warning", str(w.message))
    return code
