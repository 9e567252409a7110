"""Recognise known Lambda layers by name; never execute them.

    before:  Lambda(name="space_to_depth_x2", function=<bytecode>)
    after:   SpaceToDepth (block size 2, TensorFlow's depth order)

YAD2K's YOLOv2 passthrough is the one Lambda recognised: by its layer name (YAD2K names it
``space_to_depth``), its function name, or the function name inside the marshalled bytecode
Keras 2 stores (found by scanning the decoded bytes; the code is never unmarshalled). Any other
Lambda stays a Lambda and is exported as an opaque entry (class name and config) with a warning.
"""
from __future__ import annotations

import base64
import binascii

from ..graph import Graph

SPACE_TO_DEPTH_FUNCTIONS = ("space_to_depth_x2",)
SPACE_TO_DEPTH_LAYERS = ("space_to_depth", "space_to_depth_x2")


def _names_function(config: dict, name: str) -> bool:
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


def recognise_lambdas(graph: Graph) -> None:
    for node in graph:
        if node.kind != "Lambda":
            continue
        layer = node.layer.rsplit("/", 1)[-1]
        if layer in SPACE_TO_DEPTH_LAYERS or any(_names_function(node.config, f) for f in SPACE_TO_DEPTH_FUNCTIONS):
            node.kind = "SpaceToDepth"
            node.config = {"name": node.config.get("name", node.layer), "block_size": 2}
