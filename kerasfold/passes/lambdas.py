"""Recognise known Lambda layers by name; never execute them.

    before:  Lambda(name="space_to_depth_x2", function=<bytecode>)
    after:   SpaceToDepth (block size 2, TensorFlow's depth order)

YAD2K's YOLOv2 passthrough is the one Lambda recognised; any other stays a Lambda and is
exported as an opaque entry (class name and config) with a warning.
"""
from __future__ import annotations

from ..graph import Graph

SPACE_TO_DEPTH_NAMES = ("space_to_depth_x2",)


def _function_name(config: dict) -> str:
    function = config.get("function")
    if isinstance(function, str):
        return function
    if isinstance(function, dict):                       # Keras 3: {"class_name": "function", "config": name}
        inner = function.get("config")
        return inner if isinstance(inner, str) else ""
    return ""


def recognise_lambdas(graph: Graph) -> None:
    for node in graph:
        if node.kind != "Lambda":
            continue
        names = (node.layer.rsplit("/", 1)[-1], _function_name(node.config))
        if any(n.startswith(known) for n in names for known in SPACE_TO_DEPTH_NAMES):
            node.kind = "SpaceToDepth"
            node.config = {"name": node.config.get("name", node.layer), "block_size": 2}
