"""Lambda layers, recognised by name and never executed.

    Lambda(name="space_to_depth_x2", function=<bytecode>)  ->  ops.SpaceToDepth(block=2)
    any other Lambda                                        ->  ops.Opaque (class name and config)

YAD2K's YOLOv2 passthrough is the one Lambda recognised: by its layer name (YAD2K names it
``space_to_depth``), its function name, or the function name inside the marshalled bytecode
Keras 2 stores (found by scanning the decoded bytes; the code is never unmarshalled). The
recognition is part of the lowering (not a later pass), so every layer after it sees its shape.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from .. import ops
from .base import Fields, Kind, Shape
from .reshape import SpaceToDepthParams, _s2d_shape

SPACE_TO_DEPTH_FUNCTIONS = ("space_to_depth_x2",)
SPACE_TO_DEPTH_LAYERS = ("space_to_depth", "space_to_depth_x2")


def names_function(config: dict, name: str) -> bool:
    """True when the Lambda's function is called ``name``, without executing anything."""
    function = config.get("function")
    if isinstance(function, dict):                       # Keras 3: {"class_name": ..., "config": ...}
        function = function.get("config")
    if isinstance(function, str) and function == name:
        return True
    raw = _bytecode(function[0] if isinstance(function, list) and function else function)
    return raw is not None and name.encode() in raw


def _bytecode(code: Any) -> bytes | None:
    """Keras 2's base64 of marshalled bytecode, decoded to bytes (never unmarshalled); None when
    ``code`` is not such a string."""
    if not isinstance(code, str):
        return None
    try:
        return base64.b64decode(code.encode("ascii"), validate=False)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


_STRING_TYPES = {ord(c): c for c in "zZauAt"}       # marshal's str objects (short ascii, ascii, unicode)


def _marshalled_strings(raw: bytes):
    """(start, end, text) of every plausible marshal str object in ``raw``, in order."""
    i = 0
    while i < len(raw) - 1:
        kind = _STRING_TYPES.get(raw[i] & 0x7F)              # 0x80 is marshal's FLAG_REF
        if kind is not None:
            short = kind in "zZ"
            size = raw[i + 1] if short else int.from_bytes(raw[i + 1:i + 5], "little")
            start = i + (2 if short else 5)
            if 0 < size <= 256 and start + size <= len(raw):
                try:
                    yield i, start + size, raw[start:start + size].decode("utf-8")
                except UnicodeDecodeError:
                    pass
        i += 1


def _bytecode_name(code: Any) -> str | None:
    """The function name inside Keras 2's base64 marshalled code, read as data (never unmarshalled):
    CPython writes ``co_name`` right after ``co_filename``."""
    raw = _bytecode(code)
    if raw is None:
        return None
    strings = list(_marshalled_strings(raw))
    for (_, end, text), (start, _, name) in zip(strings, strings[1:]):
        filename = text.endswith(".py") or (text.startswith("<") and text.endswith(">"))
        if filename and start == end and (name.isidentifier() or name == "<lambda>"):
            return name
    return None


def function_name(config: Any) -> str:
    """A Lambda's function as a user knows it (``space_to_depth_x2``, ``<lambda>``), for messages;
    never its bytecode."""
    if not isinstance(config, dict):
        return "<bytecode>"
    if isinstance(config.get("function_name"), str):       # an opaque entry's config (opaque_config)
        return config["function_name"][:80]
    function = config.get("function")
    if isinstance(function, dict):                       # Keras 3
        inner = function.get("config")
        if isinstance(inner, str):
            return inner[:80]
        if function.get("class_name") == "__lambda__" and isinstance(inner, dict):
            function = inner.get("code")
    if isinstance(function, str) and function.isidentifier():
        return function[:80]
    code = function[0] if isinstance(function, list) and function else function
    return _bytecode_name(code) or "<bytecode>"


def opaque_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config fit for JSON: marshalled Lambda bytecode is named (``function_name``), not copied."""
    opaque = {k: ("<bytecode>" if k == "function" and not isinstance(v, str) else v) for k, v in config.items()}
    if "function" in config:
        opaque["function_name"] = function_name(config)
    return opaque


@dataclass(frozen=True)
class LambdaParams:
    space_to_depth: bool
    config: dict[str, Any]


def _parse(f: Fields) -> LambdaParams:
    layer = (f.layer or str(f.raw.get("name", ""))).rsplit("/", 1)[-1]
    known = layer in SPACE_TO_DEPTH_LAYERS or any(names_function(f.raw, n) for n in SPACE_TO_DEPTH_FUNCTIONS)
    return LambdaParams(known, f.raw)


def _shape(p: LambdaParams, shapes: list[Shape]) -> Shape | None:
    return _s2d_shape(SpaceToDepthParams(2), shapes) if p.space_to_depth else None


def _lower(p: LambdaParams, w: Any, shapes: list[Shape]) -> ops.Op:
    if p.space_to_depth:
        return ops.SpaceToDepth(block=2)
    return ops.Opaque(class_name="Lambda", config=opaque_config(p.config))


LAMBDA = Kind(("Lambda",), _parse, _shape, _lower)

KINDS = (LAMBDA,)
