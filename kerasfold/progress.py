"""A progress line on an interactive terminal: ``kerasfold: layer i/N, X MB written``.

Shown only when stderr is a TTY, not with ``-q``, and only once the command has run for
:data:`AFTER` seconds (a fast export prints nothing but its result); rewritten in place with
``\\r`` and erased before the summary. ``KERASFOLD_PROGRESS_AFTER`` overrides the delay (tests).
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

AFTER = 1.0


class ProgressLine:
    def __init__(self, prog: str, stream: TextIO, after: float):
        self.prog, self.stream, self.after = prog, stream, after
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int, written: int) -> None:
        if not self.shown and time.monotonic() - self.start < self.after:
            return
        self.shown = True
        self.stream.write(f"\r{self.prog}: layer {done}/{total}, {written / 1e6:.1f} MB written")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def progress_line(prog: str, *, quiet: bool, stream: TextIO | None = None) -> ProgressLine | None:
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return None
    try:
        after = float(os.environ.get("KERASFOLD_PROGRESS_AFTER", AFTER))
    except ValueError:
        after = AFTER
    return ProgressLine(prog, stream, after)
