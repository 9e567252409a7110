"""The phase's settings, read from the environment Xcode gives a Run Script phase.

- the model: ``SCRIPT_INPUT_FILE_0``, else the first line of the input file list
  (``SCRIPT_INPUT_FILE_LIST_0``, Xcode's resolved copy of the ``.xcfilelist``), else
  ``KERASFOLD_MODEL``, else ``$SRCROOT/Models/yolo.h5``;
- OUT: ``SCRIPT_OUTPUT_FILE_0``, else the first line of the output file list, else ``KERASFOLD_OUT``,
  else ``$SRCROOT/Weights``; a declared ``OUT/manifest.json`` (the usual way, since Xcode tracks
  files) means OUT;
- the stamp: ``$DERIVED_FILE_DIR/kerasfold-<OUT's name>.stamp.json`` (declare it as an output too),
  or beside OUT as ``.<OUT's name>.kerasfold-stamp.json`` outside Xcode; ``KERASFOLD_STAMP`` overrides;
- ``KERASFOLD_ARGS``: options of ``python -m kerasfold.yolo2metal`` (``--dtype float16``, ...);
- ``KERASFOLD_VERIFY=1``: run the parity check too (CI builds);
- ``KERASFOLD_COPY_TO_BUNDLE=1``: copy OUT into ``$TARGET_BUILD_DIR/$UNLOCALIZED_RESOURCES_FOLDER_PATH``.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Mapping

TRUE = ("1", "yes", "true", "on")


class SettingsError(Exception):
    """A setting the phase cannot use; ``path`` is what the error line names."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


class Settings:
    """Where things are and what to do (a plain class: dataclasses' import costs 6 ms on every build)."""

    __slots__ = ("model", "out", "stamp", "args", "verify", "bundle")

    def __init__(self, *, model: Path, out: Path, stamp: Path, args: tuple[str, ...], verify: bool,
                 bundle: Path | None):
        self.model, self.out, self.stamp, self.args = model, out, stamp, args
        self.verify = verify
        self.bundle = bundle               # where OUT is copied inside the app bundle, when asked


def _first_listed(env: Mapping[str, str], kind: str) -> str | None:
    """``SCRIPT_<KIND>_FILE_0``, else the first path in ``SCRIPT_<KIND>_FILE_LIST_0``."""
    direct = env.get(f"SCRIPT_{kind}_FILE_0")
    if direct:
        return direct
    listed = env.get(f"SCRIPT_{kind}_FILE_LIST_0")
    if not listed:
        return None
    try:
        lines = Path(listed).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(listed, f"expected a readable file list, received {type(err).__name__}: "
                                    f"{err.strerror if isinstance(err, OSError) else err}") from None
    paths = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise SettingsError(listed, "expected a file list naming at least one path, received an empty one")
    return paths[0]


def _absolute(path: str, env: Mapping[str, str]) -> Path:
    """Relative paths are taken from the project folder, as Xcode's own settings are."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(env.get("SRCROOT") or env.get("PROJECT_DIR") or os.getcwd()) / p
    return Path(os.path.normpath(p))


def settings(env: Mapping[str, str] = os.environ) -> Settings:  # type: ignore[assignment]
    srcroot = env.get("SRCROOT") or env.get("PROJECT_DIR") or "."
    model = _absolute(_first_listed(env, "INPUT") or env.get("KERASFOLD_MODEL")
                      or os.path.join(srcroot, "Models", "yolo.h5"), env)
    out = _absolute(_first_listed(env, "OUTPUT") or env.get("KERASFOLD_OUT")
                    or os.path.join(srcroot, "Weights"), env)
    if out.name == "manifest.json":
        out = out.parent
    if env.get("KERASFOLD_STAMP"):
        stamp = _absolute(env["KERASFOLD_STAMP"], env)
    elif env.get("DERIVED_FILE_DIR"):
        stamp = _absolute(env["DERIVED_FILE_DIR"], env) / f"kerasfold-{out.name}.stamp.json"
    else:
        stamp = out.parent / f".{out.name}.kerasfold-stamp.json"
    try:
        args = tuple(shlex.split(env.get("KERASFOLD_ARGS", "")))
    except ValueError as err:
        raise SettingsError(str(model), f"expected KERASFOLD_ARGS to be shell words, received "
                                        f"{env['KERASFOLD_ARGS']!r} ({err})") from None
    bundle = None
    if env.get("KERASFOLD_COPY_TO_BUNDLE", "").lower() in TRUE:
        target, resources = env.get("TARGET_BUILD_DIR"), env.get("UNLOCALIZED_RESOURCES_FOLDER_PATH")
        if not target or not resources:
            raise SettingsError(str(out), "expected TARGET_BUILD_DIR and UNLOCALIZED_RESOURCES_FOLDER_PATH "
                                          "for KERASFOLD_COPY_TO_BUNDLE=1, received them unset")
        bundle = _absolute(os.path.join(target, resources, out.name), env)
    return Settings(model=model, out=out, stamp=stamp, args=args,
                    verify=env.get("KERASFOLD_VERIFY", "").lower() in TRUE or "--verify" in args,
                    bundle=bundle)
