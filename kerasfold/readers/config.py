"""``model_config`` JSON (Keras 2 or 3) -> nodes and edges. Reads JSON only; executes nothing.

Keras 2 writes a call's inputs as ``[["layer", node_index, tensor_index, {kwargs}], ...]``;
Keras 3 as ``{"args": [...], "kwargs": {...}}`` with ``__keras_tensor__`` dicts holding
``keras_history: [layer, node_index, tensor_index]``. Each call of a layer becomes one node:
the first call keeps the layer's name, call ``k`` is named ``layer@k``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import ExportError
from .layers import Layer as Node

MODEL_CLASSES = ("Functional", "Model", "Sequential")


MAX_DEPTH = 32                                  # nested models deeper than this are refused


def _obj(value: Any, what: str, layer: str | None = None) -> dict:
    if not isinstance(value, dict):
        raise ExportError(f"expected {what} as an object, received {type(value).__name__}", layer=layer)
    return value


def _list(value: Any, what: str, layer: str | None = None) -> list:
    if not isinstance(value, list):
        raise ExportError(f"expected {what} as a list, received {type(value).__name__}", layer=layer)
    return value


def class_of(spec: Any) -> str:
    kind = _obj(spec, "a layer").get("class_name")
    if not isinstance(kind, str) or not kind:
        raise ExportError(f"expected a layer's class_name as a string, received {kind!r}"[:120])
    return kind


def name_of(spec: Any) -> str:
    """A layer's name: ``spec["name"]`` (Keras 3) or ``spec["config"]["name"]``."""
    name = _obj(spec, "a layer").get("name") or _obj(spec.get("config"), "a layer config").get("name")
    if not isinstance(name, str) or not name:
        raise ExportError(f"expected a layer name as a non-empty string, received {name!r}"[:120])
    return name


def _ref(h: Any, layer: str | None) -> tuple[str, int, int]:
    if not (isinstance(h, (list, tuple)) and len(h) >= 3 and isinstance(h[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in h[1:3])):
        raise ExportError(f"expected a tensor reference [layer, node, tensor], received {h!r}"[:120], layer=layer)
    return (h[0], int(h[1]), int(h[2]))


def node_name(layer: str, call: int) -> str:
    return layer if call == 0 else f"{layer}@{call}"


def _keras3_history(obj: Any) -> Iterable[list]:
    """Every ``keras_history`` in a Keras 3 call's args/kwargs, in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            yield _obj(obj.get("config"), "a __keras_tensor__ config").get("keras_history")
            return
        for value in obj.values():
            yield from _keras3_history(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _keras3_history(value)


Ref = tuple  # (layer, call index, tensor index) inside one model config


def _call_refs(call: Any, layer: str) -> list[Ref]:
    if isinstance(call, dict):                      # Keras 3
        history = list(_keras3_history([call.get("args", []), call.get("kwargs", {})]))
    elif isinstance(call, list):                    # Keras 2
        history = [h[:3] if isinstance(h, list) else h for h in call]
    else:
        raise ExportError(f"expected inbound nodes as a list or dict, received {type(call).__name__}",
                          layer=layer)
    return [_ref(h, layer) for h in history]


def _call_constants(call: Any) -> list[tuple[int, float]]:
    """Scalar arguments of a Keras 3 op recorded as a node (``x + 3.0``): (position, value)."""
    if not isinstance(call, dict) or not isinstance(call.get("args", []), list):
        return []
    return [(i, float(a)) for i, a in enumerate(call.get("args", []))
            if isinstance(a, (int, float)) and not isinstance(a, bool)]


def _refs(refs: Any) -> list[Ref]:
    """``input_layers`` / ``output_layers``: ``[[name, node, tensor], ...]`` or one ``[name, node, tensor]``."""
    refs = _list(refs, "input_layers/output_layers")
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [_ref(r, None) for r in refs]


def input_shape(config: Any, layer: str | None = None) -> tuple | None:
    if not isinstance(config, dict):
        return None
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if not shape:
        return None
    if not isinstance(shape, list) or not all(d is None or (isinstance(d, int) and not isinstance(d, bool)
                                                             and d >= 1) for d in shape[1:]):
        raise ExportError(f"expected an input shape of positive sizes, received {shape!r}"[:120], layer=layer)
    return tuple(shape[1:])


def _input_node(name: str, shape: tuple | None, layer: str) -> Node:
    return Node(name=name, kind="InputLayer", config={"name": name, "shape": shape},
                inputs=[], layer=layer, output_shape=shape)


@dataclass
class _Model:
    """One parsed model config: nodes (inputs resolved), its input and output node names."""
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]


def _sequential(layers: Any, prefix: str, scope: str, depth: int) -> _Model:
    nodes: list[Node] = []
    if not _list(layers, "a Sequential model's layers"):
        raise ExportError("expected a Sequential model with layers, received none")
    first = layers[0]
    if class_of(first) != "InputLayer":
        name = f"{name_of(first)}_input"
        nodes.append(_input_node(prefix + name, input_shape(first.get("config"), prefix + name), scope + name))
    for spec in layers:
        name = name_of(spec)
        if class_of(spec) == "InputLayer":
            nodes.append(_input_node(prefix + name, input_shape(spec.get("config"), prefix + name), scope + name))
            continue
        if spec["class_name"] in MODEL_CLASSES:
            sub = _model(spec, prefix + name + "/", scope + name + "/", depth + 1)
            _bind(sub, [nodes[-1].name])
            nodes += [n for n in sub.nodes if not n.is_input]
            nodes.append(Node(name=prefix + name, kind="Identity", config={"name": name},
                              inputs=[sub.outputs[0]], layer=scope + name))   # removed by a pass
            continue
        nodes.append(Node(name=prefix + name, kind=spec["class_name"], config=spec.get("config"),
                          inputs=[nodes[-1].name], layer=scope + name))
    return _Model(nodes, [nodes[0].name], [nodes[-1].name])


def _bind(sub: _Model, names: list[str]) -> None:
    """Connect a nested model's inputs to the caller's tensors (its InputLayer nodes drop out)."""
    if len(names) != len(sub.inputs):
        raise ExportError(f"expected {len(sub.inputs)} inputs for a nested model, received {len(names)}")
    mapping = dict(zip(sub.inputs, names))
    for n in sub.nodes:
        n.inputs = [mapping.get(i, i) for i in n.inputs]
    sub.outputs = [mapping.get(o, o) for o in sub.outputs]


def _skips_first_node(spec: dict[str, Any], keras2: bool) -> bool:
    """Keras 2 numbers a nested Functional's calls from 1 (node 0 is its own Input -> output node)."""
    if not keras2:
        return False
    config = spec.get("config")
    layers = config.get("layers") if isinstance(config, dict) else config
    return isinstance(layers, list) and bool(layers) and (class_of(layers[0]) == "InputLayer"
                                                          or input_shape(layers[0].get("config")) is not None)


def _functional(config: dict[str, Any], prefix: str, scope: str, depth: int) -> _Model:
    specs = _list(config.get("layers"), "a Functional model's layers")
    for spec in specs:
        class_of(spec)
    keras2 = any(isinstance(s.get("inbound_nodes"), list) and s["inbound_nodes"]
                 and isinstance(s["inbound_nodes"][0], list) for s in specs)
    resolve: dict[Ref, str] = {}
    pending: list[tuple[list[Node], list[Ref], _Model | None]] = []
    nodes: list[Node] = []
    seen: set[str] = set()
    for spec in specs:
        layer = name_of(spec)
        if layer in seen:
            raise ExportError("expected unique layer names, received a second layer of this name",
                              layer=prefix + layer)
        seen.add(layer)
        if spec["class_name"] == "InputLayer":
            node = _input_node(prefix + layer, input_shape(spec.get("config"), prefix + layer), scope + layer)
            nodes.append(node)
            resolve[(layer, 0, 0)] = node.name
            continue
        calls = _list(spec.get("inbound_nodes") or [], "inbound_nodes", prefix + layer)
        if not calls:
            raise ExportError("expected the layer to be called in the model, received no inbound "
                              "nodes", layer=prefix + layer)
        offset = 1 if spec["class_name"] in MODEL_CLASSES and _skips_first_node(spec, keras2) else 0
        for k, call in enumerate(calls):
            name = prefix + node_name(layer, k)
            refs = _call_refs(call, name)
            if spec["class_name"] in MODEL_CLASSES:
                sub = _model(spec, name + "/", scope + layer + "/", depth + 1)
                for t, out in enumerate(sub.outputs):
                    resolve[(layer, k + offset, t)] = out
                pending.append(([], refs, sub))
                continue
            node = Node(name=name, kind=spec["class_name"], config=spec.get("config"), inputs=[],
                        layer=scope + layer, constants=_call_constants(call))
            resolve[(layer, k, 0)] = name
            pending.append(([node], refs, None))
    for own, refs, sub in pending:
        names = []
        for ref in refs:
            if ref not in resolve:
                where = own[0].name if own else "a nested model"
                raise ExportError(f"expected input {list(ref)} to be a tensor of the model, received "
                                  "an unknown reference", layer=where)
            names.append(resolve[ref])
        if sub is None:
            own[0].inputs = names
            nodes += own
        else:
            _bind(sub, names)
            nodes += [n for n in sub.nodes if not n.is_input]
    ends = []
    for key in ("input_layers", "output_layers"):
        refs = _refs(config.get(key))
        missing = [list(r) for r in refs if r not in resolve]
        if missing or not refs:
            raise ExportError(f"expected {key} naming tensors of the model, received {missing or refs}"[:160])
        ends.append([resolve[r] for r in refs])
    return _Model(nodes, ends[0], ends[1])


def _model(spec: Any, prefix: str = "", scope: str = "", depth: int = 0) -> _Model:
    if depth > MAX_DEPTH:
        raise ExportError(f"expected models nested at most {MAX_DEPTH} deep, received deeper nesting")
    if isinstance(spec, list):                      # Keras 1/2.0 Sequential: a bare layer list
        return _sequential(spec, prefix, scope, depth)
    if not isinstance(spec, dict) or "class_name" not in spec:
        raise ExportError(f"expected model_config to describe a model, received {type(spec).__name__}")
    kind, config = spec["class_name"], spec.get("config", {})
    if kind not in MODEL_CLASSES:
        raise ExportError(f"expected a Functional or Sequential model, received '{kind}'")
    if isinstance(config, list):
        return _sequential(config, prefix, scope, depth)
    config = _obj(config, f"the {kind} config")
    if kind == "Sequential":
        return _sequential(config.get("layers", []), prefix, scope, depth)
    return _functional(config, prefix, scope, depth)


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
            stuck = ", ".join(f"'{n.name}'" for n in nodes if n.name not in placed)
            raise ExportError(f"expected an acyclic graph, received a cycle among {stuck}"[:200])
        for n in ready:
            placed[n.name] = n
    return list(placed.values())


def parse_model_config(model_config: Any) -> tuple[list[Node], list[str], list[str]]:
    """Return (nodes in topological order, input node names, output node names). Nested models
    are inlined: their nodes are named ``<call>/<layer>``, their weights ``<model>/<layer>``."""
    model = _model(model_config)
    return topological(model.nodes), model.inputs, model.outputs
