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
    code = function[0] if isinstance(function, list) and function else function
    if not isinstance(code, str):
        return False
    try:                                                 # Keras 2: base64 of marshalled bytecode
        raw = base64.b64decode(code.encode("ascii"), validate=False)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    return name.encode() in raw


def opaque_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config fit for JSON: marshalled Lambda bytecode is named, not copied."""
    return {k: ("<bytecode>" if k == "function" and not isinstance(v, str) else v) for k, v in config.items()}


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
