"""The registry of layer kinds, and the lowering of a model's layer calls into typed operations.

    lower(model, input_size) -> Graph        every layer call: config parsed and validated once,
                                             weights checked against the config, shape inferred,
                                             lowered to one ``kerasfold.ops`` operation

A kind (``kinds/<family>.py``) is the one place that knows a Keras layer family. A class with no
kind, or a Lambda that is not recognised, is an :class:`UnsupportedLayer` error listing the
supported classes; with ``allow_opaque`` a weightless one becomes an opaque entry (with a warning)
that no target and no check can run.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from .. import ops
from ..deferred import checked
from ..errors import ConfigError, ExportError, UnsupportedLayer
from ..graph import Graph, Node, Shape
from ..readers.layers import Layer, Model
from . import activation, conv, identity, lambdas, merge, norm, pool, reshape
from .base import MAX_SIZE, Fields, Kind, no_variables

FAMILIES = (conv, norm, pool, merge, reshape, activation, identity, lambdas)
KINDS: dict[str, Kind] = {name: kind for family in FAMILIES for kind in family.KINDS for name in kind.classes}


class UnknownLayerWarning(UserWarning):
    """A weightless layer kerasfold has no rule for: exported by class name and config."""


def weighted_classes() -> list[str]:
    """Keras classes with weights that kerasfold supports."""
    return sorted({kind.classes[0] for kind in KINDS.values() if kind.variables is not no_variables})


def variable_names(class_name: str, config: Any, count: int, layer: str) -> list[str]:
    """Names for ``count`` unnamed variables (a ``.keras`` file stores them by index), in the
    order the layer created them. Unknown classes get ``var0``, ``var1``, ... (refused later)."""
    kind = KINDS.get(class_name)
    if kind is None:
        return [f"var{i}" for i in range(count)]
    names = list(kind.variables(kind.parse(Fields(config, class_name, layer=layer)), None))
    if len(names) != count:
        raise ExportError(f"expected {len(names)} weights {names} for a {class_name}, received {count}")
    return names


def _matches(expected: tuple, actual: tuple) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


def check_weights(expected: dict[str, tuple | None], weights: dict[str, np.ndarray], layer: str | None = None) -> None:
    """The weights the config implies, of the right shapes, all finite (checked when read, for a
    deferred weight: ``weights`` then holds it with the check recorded)."""
    if set(expected) != set(weights):
        raise ExportError(f"expected weights {sorted(expected)} from the config, received {sorted(weights)}")
    for key, shape in expected.items():
        actual = weights[key].shape
        if shape is not None and not _matches(shape, actual):
            want = tuple("?" if s is None else s for s in shape)
            raise ExportError(f"expected {key} of shape {want} from the config, received {actual}")
    for key, arr in weights.items():
        if np.issubdtype(arr.dtype, np.floating):
            weights[key] = checked(arr, functools.partial(_finite, key, layer))


def _finite(key: str, layer: str | None, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ExportError(f"expected finite {key}, received {bad} NaN/Inf values", layer=layer)


def supported_classes() -> list[str]:
    return sorted(KINDS)


def _opaque(layer: Layer, what: str, allow_opaque: bool) -> None:
    """Refuse a layer kerasfold cannot run, or (``allow_opaque``) warn that it is written opaque."""
    if not allow_opaque:
        raise UnsupportedLayer(f"expected a layer kerasfold can run ({', '.join(supported_classes())}), "
                               f"received {what}; --allow-opaque writes it as an opaque keras_layer "
                               "entry that nothing can check")
    warnings.warn(f"layer '{layer.name}': no rule for {what}; exported by class name and config "
                  "(an opaque entry: no check runs through it)", UnknownLayerWarning, stacklevel=3)


def lower_layer(layer: Layer, shapes: list[Shape | None],
                allow_opaque: bool = False) -> tuple[ops.Op, Shape | None]:
    """One layer call -> (operation, output shape). Raises ExportError naming the field."""
    if not shapes:
        raise ConfigError(f"expected the {layer.kind} layer called on at least one input (inbound_nodes), "
                          "received none")
    kind = KINDS.get(layer.kind)
    if kind is None:
        if layer.weights:
            raise UnsupportedLayer(f"expected a layer the exporter supports ({', '.join(weighted_classes())}), "
                                   f"received {layer.kind} with weights {sorted(layer.weights)}")
        _opaque(layer, layer.kind, allow_opaque)
        config = layer.config if isinstance(layer.config, dict) else {}
        return ops.Opaque(class_name=layer.kind, config=lambdas.opaque_config(config)), None
    params = kind.parse(Fields(layer.config, layer.kind, layer=layer.layer, constants=tuple(layer.constants)))
    if layer.kind == "Lambda" and not params.space_to_depth:
        _opaque(layer, f"Lambda '{lambdas.function_name(layer.config)}'", allow_opaque)
    cin = shapes[0][-1] if shapes and shapes[0] else None
    check_weights(kind.variables(params, cin), layer.weights, layer.name)
    shape = kind.shape(params, shapes)
    if shape is not None and any(d is not None and not 1 <= d <= MAX_SIZE for d in shape):
        raise ExportError(f"expected an output shape of sizes in 1..{MAX_SIZE}, received {tuple(shape)}")
    return kind.lower(params, layer.weights, shapes), (None if shape is None else tuple(shape))


def apply_input_size(model: Model, size: tuple[int, int] | None) -> dict[str, Shape]:
    """The model's input shapes, with ``--input-size`` filling in (or checking) H and W."""
    shapes = {}
    for name in model.inputs:
        shape = model[name].output_shape
        if shape is None:
            raise ExportError("expected the input's shape in the model config, received none", layer=name)
        if size is not None and len(shape) == 3:
            if any(s is not None and s != t for s, t in zip(shape[:2], size)):
                raise ExportError(f"expected --input-size to match the model's input {shape[:2]}, "
                                  f"received {size}", layer=name)
            shape = (size[0], size[1], shape[2])
        shapes[name] = tuple(shape)
    return shapes


def lower(model: Model, input_size: tuple[int, int] | None = None, allow_opaque: bool = False) -> Graph:
    """Every layer call of ``model`` as a typed operation, in topological order; ``allow_opaque``:
    see :func:`lower_layer`."""
    inputs = apply_input_size(model, input_size)
    graph = Graph(inputs=inputs, nodes={}, outputs=list(model.outputs), source=model.source)
    for layer in model:
        if layer.is_input:
            continue
        try:
            op, shape = lower_layer(layer, [graph.shape(i) for i in layer.inputs], allow_opaque)
        except ExportError as err:
            raise err.at(layer=layer.name)
        graph.nodes[layer.name] = Node(name=layer.name, op=op, inputs=list(layer.inputs), shape=shape,
                                       layer=layer.layer, keras_class=layer.kind)
    return graph


__all__ = ["KINDS", "ConfigError", "Kind", "UnknownLayerWarning", "lower", "variable_names"]
