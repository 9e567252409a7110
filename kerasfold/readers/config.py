"""``model_config`` JSON (Keras 2 or 3) -> nodes and edges. Reads JSON only; executes nothing.

Keras 2 writes a call's inputs as ``[["layer", node_index, tensor_index, {kwargs}], ...]``;
Keras 3 as ``{"args": [...], "kwargs": {...}}`` with ``__keras_tensor__`` dicts holding
``keras_history: [layer, node_index, tensor_index]``. Each call of a layer becomes one node:
the first call keeps the layer's name, call ``k`` is named ``layer@k``.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import ExportError
from ..graph import Node

MODEL_CLASSES = ("Functional", "Model", "Sequential")


def node_name(layer: str, call: int) -> str:
    return layer if call == 0 else f"{layer}@{call}"


def _keras3_history(obj: Any) -> Iterable[list]:
    """Every ``keras_history`` in a Keras 3 call's args/kwargs, in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            yield obj["config"]["keras_history"]
            return
        for value in obj.values():
            yield from _keras3_history(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _keras3_history(value)


def _call_inputs(call: Any, layer: str) -> list[str]:
    if isinstance(call, dict):                      # Keras 3
        history = list(_keras3_history([call.get("args", []), call.get("kwargs", {})]))
    elif isinstance(call, list):                    # Keras 2
        history = call
    else:
        raise ExportError(f"expected inbound nodes as a list or dict, received {type(call).__name__}",
                          layer=layer)
    names = []
    for entry in history:
        producer, call_index, tensor_index = entry[0], int(entry[1]), int(entry[2])
        if tensor_index != 0:
            raise ExportError(f"expected single-output producers, received output {tensor_index} "
                              f"of '{producer}'", layer=layer)
        names.append(node_name(producer, call_index))
    return names


def _layer_refs(refs: Any) -> list[str]:
    """``input_layers`` / ``output_layers``: ``[[name, node, tensor], ...]`` or one ``[name, node, tensor]``."""
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [node_name(r[0], int(r[1])) for r in refs]


def input_shape(config: dict[str, Any]) -> tuple | None:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    return tuple(shape[1:]) if shape else None


def _input_node(name: str, shape: tuple | None) -> Node:
    return Node(name=name, kind="InputLayer", config={"name": name, "shape": shape},
                inputs=[], output_shape=shape)


def _sequential(layers: list[dict[str, Any]]) -> tuple[list[Node], list[str], list[str]]:
    nodes: list[Node] = []
    if not layers:
        raise ExportError("expected a Sequential model with layers, received none")
    first = layers[0]
    if first["class_name"] != "InputLayer":
        shape = input_shape(first["config"])
        nodes.append(_input_node(f"{first['config']['name']}_input", shape))
    for spec in layers:
        name = spec["config"]["name"]
        if spec["class_name"] == "InputLayer":
            nodes.append(_input_node(name, input_shape(spec["config"])))
            continue
        nodes.append(Node(name=name, kind=spec["class_name"], config=spec["config"],
                          inputs=[nodes[-1].name]))
    return nodes, [nodes[0].name], [nodes[-1].name]


def _functional(config: dict[str, Any]) -> tuple[list[Node], list[str], list[str]]:
    nodes: list[Node] = []
    for spec in config["layers"]:
        layer = spec.get("name") or spec["config"]["name"]
        if spec["class_name"] == "InputLayer":
            nodes.append(_input_node(layer, input_shape(spec["config"])))
            continue
        calls = spec.get("inbound_nodes") or []
        if not calls:
            raise ExportError("expected the layer to be called in the model, received no inbound "
                              "nodes", layer=layer)
        for k, call in enumerate(calls):
            nodes.append(Node(name=node_name(layer, k), kind=spec["class_name"],
                              config=spec["config"], inputs=_call_inputs(call, layer), layer=layer))
    return nodes, _layer_refs(config["input_layers"]), _layer_refs(config["output_layers"])


def topological(nodes: list[Node]) -> list[Node]:
    """Stable topological order (Kahn's algorithm, ties broken by the file's order)."""
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i not in by_name:
                raise ExportError(f"expected input '{i}' to be a layer of the model, received an "
                                  "unknown name", layer=n.name)
    placed: dict[str, Node] = {}
    while len(placed) < len(nodes):
        ready = [n for n in nodes if n.name not in placed and all(i in placed for i in n.inputs)]
        if not ready:
            raise ExportError("expected an acyclic graph, received a cycle")
        for n in ready:
            placed[n.name] = n
    return list(placed.values())


def parse_model_config(model_config: Any) -> tuple[list[Node], list[str], list[str]]:
    """Return (nodes in topological order, input node names, output node names)."""
    if isinstance(model_config, list):              # Keras 1/2.0 Sequential: a bare layer list
        nodes, ins, outs = _sequential(model_config)
    else:
        if not isinstance(model_config, dict) or "class_name" not in model_config:
            raise ExportError("expected model_config to describe a model, received "
                              f"{type(model_config).__name__}")
        kind, config = model_config["class_name"], model_config.get("config", {})
        if kind not in MODEL_CLASSES:
            raise ExportError(f"expected a Functional or Sequential model, received '{kind}'")
        if isinstance(config, list):
            nodes, ins, outs = _sequential(config)
        elif kind == "Sequential":
            nodes, ins, outs = _sequential(config.get("layers", []))
        else:
            nodes, ins, outs = _functional(config)
    for n in nodes:
        if n.kind in MODEL_CLASSES:
            raise ExportError("expected plain layers, received a nested model (not supported yet)",
                              layer=n.name)
    return topological(nodes), ins, outs
