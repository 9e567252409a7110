"""Graph nodes -> manifest entries: one function per Keras class, found by name.

An entry is the manifest dict of one layer plus its tensors in device layout; the writer adds
the file names and hashes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import layout
from .mps import offset_for
from .activations import ACTIVATION_LAYERS, from_layer
from .errors import ExportError
from .graph import Graph, Node
from .shapes import channel_axis, conv_geometry, four_sides, pair, pool_geometry, transpose_geometry


@dataclass
class Tensor:
    array: np.ndarray
    layout: str | None = None         # "OHWI", "OHW", ...; None for biases


@dataclass
class Entry:
    meta: dict[str, Any]
    tensors: dict[str, Tensor] = field(default_factory=dict)   # "weights", "bias"

    @property
    def name(self) -> str:
        return self.meta["name"]


class UnknownLayerWarning(UserWarning):
    """A parameterless layer the exporter has no rule for: exported by class name and config."""


def _pad(node: Node, pad: list) -> list[int]:
    if any(p is None for p in pad):
        raise ExportError("expected a known input size to compute 'same' padding with stride > 1, "
                          "received an input of unknown size; pass --input-size HxW", layer=node.name)
    return [int(p) for p in pad]


def _with_offset(entry: Entry) -> Entry:
    """MPSCNN's ``offset`` {"x", "y"} that reproduces the entry's explicit ``pad`` (mps.py)."""
    entry.meta["offset"] = offset_for(entry.meta)
    return entry


def _base(node: Node, kind: str) -> dict[str, Any]:
    meta = {"name": node.name, "type": kind, "keras_class": node.origin or node.kind, "inputs": list(node.inputs),
            "folded": list(node.folded)}
    if node.constants:          # x + 3.0: the scalar operands, by argument position
        meta["constants"] = [{"position": p, "value": v} for p, v in node.constants]
    return meta


def _tail(node: Node) -> dict[str, Any]:
    shape = node.output_shape
    return {"activation": dict(node.activation), "output_shape": None if shape is None else list(shape)}


def _bias(node: Node, channels: int) -> Tensor:
    bias = node.weights.get("bias")
    return Tensor(np.zeros(channels, np.float32) if bias is None else bias.astype(np.float32))


def _conv2d(node: Node, graph: Graph) -> Entry:
    c = node.config
    pad, _ = conv_geometry(node, graph[node.inputs[0]].output_shape)
    meta = {**_base(node, "conv2d"), **_tail(node), "kernel": list(pair(c["kernel_size"])),
            "strides": list(pair(c.get("strides", 1))), "dilation": list(pair(c.get("dilation_rate", 1))),
            "groups": int(c.get("groups", 1) or 1), "padding": c.get("padding", "valid"),
            "pad": _pad(node, pad)}
    kernel = node.weights["kernel"]                                   # (kh, kw, in/groups, out)
    return _with_offset(Entry(meta, {"weights": Tensor(layout.conv2d_ohwi(kernel), "OHWI"),
                                     "bias": _bias(node, kernel.shape[-1])}))


def _depthwise(node: Node, graph: Graph) -> Entry:
    c = node.config
    in_shape = graph[node.inputs[0]].output_shape
    # a per-channel BN on a (C,) tensor (after a Dense) has no spatial geometry
    pad, _ = conv_geometry(node, in_shape) if in_shape is None or len(in_shape) == 3 else ([0] * 4, None)
    meta = {**_base(node, "depthwise_conv2d"), **_tail(node), "kernel": list(pair(c["kernel_size"])),
            "strides": list(pair(c.get("strides", 1))), "dilation": list(pair(c.get("dilation_rate", 1))),
            "depth_multiplier": int(c.get("depth_multiplier", 1)), "padding": c.get("padding", "valid"),
            "pad": _pad(node, pad)}
    kernel = node.weights["depthwise_kernel"]                         # (kh, kw, C, M)
    return _with_offset(Entry(meta, {"weights": Tensor(layout.depthwise_ohw(kernel), "OHW"),
                                     "bias": _bias(node, kernel.shape[2] * kernel.shape[3])}))


def _pool(kind: str) -> Callable[[Node, Graph], Entry]:
    def emit(node: Node, graph: Graph) -> Entry:
        c = node.config
        pad, _ = pool_geometry(node, graph[node.inputs[0]].output_shape)
        size = pair(c.get("pool_size", 2))
        strides = pair(c["strides"]) if c.get("strides") is not None else size
        return _with_offset(Entry({**_base(node, kind), **_tail(node), "pool_size": list(size),
                                   "strides": list(strides), "padding": c.get("padding", "valid"),
                                   "pad": _pad(node, pad)}))
    return emit


def _transpose(node: Node, graph: Graph) -> Entry:
    c = node.config
    crop, _ = transpose_geometry(node, graph[node.inputs[0]].output_shape)
    meta = {**_base(node, "conv2d_transpose"), **_tail(node), "kernel": list(pair(c["kernel_size"])),
            "strides": list(pair(c.get("strides", 1))), "padding": c.get("padding", "valid"),
            "crop": [int(x) for x in crop]}
    kernel = node.weights["kernel"]                                   # (kh, kw, out, in)
    return Entry(meta, {"weights": Tensor(layout.transpose_ohwi(kernel), "OHWI"),
                        "bias": _bias(node, kernel.shape[2])})


def _dense(node: Node, graph: Graph) -> Entry:
    kernel = node.weights["kernel"]                                   # (in, out)
    meta = {**_base(node, "dense"), **_tail(node), "units": int(kernel.shape[1])}
    return Entry(meta, {"weights": Tensor(layout.dense_oi(kernel), "OI"),
                        "bias": _bias(node, kernel.shape[1])})


def _prelu(node: Node, graph: Graph) -> Entry:
    alpha = node.weights["alpha"]
    meta = {**_base(node, "prelu"), **_tail(node), "shared_axes": node.config.get("shared_axes")}
    return Entry(meta, {"weights": Tensor(alpha.astype(np.float32), "HWC")})


def _params(kind: str, **fields: Callable[[Node, Graph], Any]) -> Callable[[Node, Graph], Entry]:
    """An emitter for a parameterless layer: its base fields plus ``fields`` computed per node."""
    def emit(node: Node, graph: Graph) -> Entry:
        return Entry({**_base(node, kind), **_tail(node), **{k: f(node, graph) for k, f in fields.items()}})
    return emit


def _rank(node: Node, graph: Graph) -> int:
    shape = graph[node.inputs[0]].output_shape
    if shape is None:
        raise ExportError("expected a known input rank for the axis, received an unknown shape")
    return len(shape)


def _activation(node: Node, graph: Graph) -> Entry:
    meta = {**_base(node, "activation"), **_tail(node)}
    meta["activation"] = from_layer(node.kind, node.config, node.name)
    return Entry(meta)


def _batch_norm(node: Node, graph: Graph) -> Entry:
    raise ExportError(f"expected BatchNormalization over the channel axis, received axis "
                      f"{node.config.get('axis')}", layer=node.name)


def _opaque_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config fit for JSON: marshalled Lambda bytecode is named, not copied."""
    return {k: ("<bytecode>" if k == "function" and not isinstance(v, str) else v) for k, v in config.items()}


def _unknown(node: Node, graph: Graph) -> Entry:
    what = f"Lambda '{node.config.get('function')}'" if node.kind == "Lambda" else node.kind
    warnings.warn(f"layer '{node.name}': no rule for {what}; exported by class name and config",
                  UnknownLayerWarning, stacklevel=2)
    return Entry({**_base(node, "keras_layer"), **_tail(node), "class_name": node.kind,
                  "config": _opaque_config(node.config)})


def _pad_of(key: str, default: Any) -> Callable[[Node, Graph], list[int]]:
    return lambda node, graph: four_sides(node.config.get(key, default))


EMITTERS: dict[str, Callable[[Node, Graph], Entry]] = {
    "Conv2D": _conv2d,
    "DepthwiseConv2D": _depthwise,
    "Conv2DTranspose": _transpose,
    "Dense": _dense,
    "PReLU": _prelu,
    "MaxPooling2D": _pool("max_pool2d"),
    "AveragePooling2D": _pool("avg_pool2d"),
    "GlobalAveragePooling2D": _params("global_avg_pool2d", keepdims=lambda n, g: bool(n.config.get("keepdims"))),
    "GlobalMaxPooling2D": _params("global_max_pool2d", keepdims=lambda n, g: bool(n.config.get("keepdims"))),
    "ZeroPadding2D": _params("zero_padding2d", pad=_pad_of("padding", 1)),
    "Cropping2D": _params("cropping2d", crop=_pad_of("cropping", 0)),
    "UpSampling2D": _params("upsampling2d", size=lambda n, g: list(pair(n.config.get("size", 2))),
                            interpolation=lambda n, g: n.config.get("interpolation", "nearest")),
    "Add": _params("add"),
    "Subtract": _params("subtract"),
    "Multiply": _params("multiply"),
    "Divide": _params("divide"),
    "TrueDivide": _params("divide"),
    "Concatenate": _params("concatenate", axis=lambda n, g: channel_axis(n, _rank(n, g))),
    "Flatten": _params("flatten"),
    "Reshape": _params("reshape", target_shape=lambda n, g: list(n.output_shape or n.config["target_shape"])),
    "Softmax": _params("softmax", axis=lambda n, g: channel_axis(n, _rank(n, g))),
    "SpaceToDepth": _params("space_to_depth", block_size=lambda n, g: 2),
    "Rescaling": _params("rescaling", scale=lambda n, g: n.config.get("scale", 1.0),
                         offset=lambda n, g: n.config.get("offset", 0.0)),
    "BatchNormalization": _batch_norm,
    **{k: _activation for k in ACTIVATION_LAYERS},
}


def emit(graph: Graph) -> list[Entry]:
    """Manifest entries of every non-input node, in topological order. ``output_of`` names the
    original layer whose output the entry reproduces (for layer-by-layer comparisons)."""
    entries = []
    for node in graph:
        if node.is_input:
            continue
        try:
            entry = EMITTERS.get(node.kind, _unknown)(node, graph)
            entry.meta["output_of"] = graph.output_of(node.name)
            entries.append(entry)
        except ExportError as err:
            raise err.at(layer=node.name)
    return entries
