"""Errors by type. The command lines map them to exit codes (``kerasfold.cli``):

- :class:`ExportError` and its subclasses are bad input: exit 2, one line;
- anything else raised inside kerasfold is a bug: exit 3 with the trace, never turned into exit 2.
"""
from __future__ import annotations


class ExportError(Exception):
    """Bad input: a file, a layer or an output directory kerasfold cannot use.

    The message says what was expected and what was received; ``file`` and ``layer``
    locate it. ``str(err)`` is the one line a user sees.
    """

    def __init__(self, message: str, *, file: str | None = None, layer: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.layer = layer

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.layer:
            where.append(f"layer '{self.layer}'")
        text = f"{': '.join(where)}: {self.message}" if where else self.message
        return one_line(text)

    def at(self, *, file: str | None = None, layer: str | None = None) -> "ExportError":
        """The same error with the file and/or layer filled in where still unknown."""
        self.file = self.file or file
        self.layer = self.layer or layer
        return self


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, carriage return, other controls, line
    separators) escaped as ``repr`` would, so that a layer name from a file cannot break the line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class ConfigError(ExportError):
    """A layer config field of the wrong type, range or value (names the field)."""


class UnsupportedLayer(ExportError):
    """A layer (or an export entry) no registry has a rule for; the message lists what is supported."""


class MissingDependency(ExportError):
    """An optional package is not installed; the message says what to install."""
