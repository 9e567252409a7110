"""Typed operations -> manifest entries (FORMAT.md), one function per operation class.

An entry is the manifest dict of one layer plus its tensors in MPS layout; the writer adds the
file names and hashes. Ops the passes always rewrite (``ops.REWRITTEN``) never get here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ... import ops
from ...deferred import Deferred
from ...errors import ExportError
from ...graph import Graph, Node
from . import layouts
from .float16 import HalfStats, half_stats
from .offsets import mps_offset


@dataclass
class Tensor:
    array: np.ndarray | Deferred      # a deferred weight is read, folded and laid out when written
    layout: str | None = None         # "OHWI", "OHW", ...; None for biases


@dataclass
class Entry:
    meta: dict[str, Any]
    tensors: dict[str, Tensor] = field(default_factory=dict)   # "weights", "bias"
    half: HalfStats | None = None                               # float16 exports: what half does

    @property
    def name(self) -> str:
        return self.meta["name"]


def _pad(pad: tuple) -> list[int]:
    if any(p is None for p in pad):
        raise ExportError("expected a known input size to compute 'same' padding with stride > 1, "
                          "received an input of unknown size; pass --input-size HxW")
    return [int(p) for p in pad]


def _offset(kernel: tuple, strides: tuple, dilation: tuple, pad: list[int]) -> dict[str, int]:
    """MPSCNN's ``offset`` {"x", "y"} that reproduces the explicit ``pad`` (offsets.py)."""
    return {"x": mps_offset(kernel[1], strides[1], dilation[1], pad[2]),
            "y": mps_offset(kernel[0], strides[0], dilation[0], pad[0])}


def _meta(node: Node, kind: str, **fields: Any) -> dict[str, Any]:
    meta = {"name": node.name, "type": kind, "keras_class": node.keras_class, "inputs": list(node.inputs),
            "folded": list(node.folded)}
    constants = getattr(node.op, "constants", ())
    if constants:          # x + 3.0: the scalar operands, by argument position
        meta["constants"] = [{"position": p, "value": v} for p, v in constants]
    shape = node.shape
    meta.update({"activation": dict(node.op.activation), "output_shape": None if shape is None else list(shape)})
    meta.update(fields)
    return meta


def _bias(bias: np.ndarray | None, channels: int) -> Tensor:
    return Tensor(np.zeros(channels, np.float32) if bias is None else bias.astype(np.float32))


def _conv2d(node: Node, op: ops.Conv2D) -> Entry:
    kernel = tuple(op.kernel.shape[:2])                         # (kh, kw, in/groups, out)
    pad = _pad(op.pad)
    meta = _meta(node, "conv2d", kernel=list(kernel), strides=list(op.strides), dilation=list(op.dilation),
                 groups=op.groups, padding=op.padding, pad=pad, offset=_offset(kernel, op.strides, op.dilation, pad))
    return Entry(meta, {"weights": Tensor(layouts.conv2d_ohwi(op.kernel), "OHWI"),
                        "bias": _bias(op.bias, op.kernel.shape[-1])})


def _depthwise(node: Node, op: ops.DepthwiseConv2D) -> Entry:
    kh, kw, c, m = op.kernel.shape                              # (kh, kw, C, M)
    pad = _pad(op.pad)
    meta = _meta(node, "depthwise_conv2d", kernel=[kh, kw], strides=list(op.strides), dilation=list(op.dilation),
                 depth_multiplier=m, padding=op.padding, pad=pad,
                 offset=_offset((kh, kw), op.strides, op.dilation, pad))
    return Entry(meta, {"weights": Tensor(layouts.depthwise_ohw(op.kernel), "OHW"), "bias": _bias(op.bias, c * m)})


def _transpose(node: Node, op: ops.Conv2DTranspose) -> Entry:
    meta = _meta(node, "conv2d_transpose", kernel=list(op.kernel.shape[:2]), strides=list(op.strides),
                 padding=op.padding, crop=[int(x) for x in op.crop])
    return Entry(meta, {"weights": Tensor(layouts.transpose_ohwi(op.kernel), "OHWI"),   # (kh, kw, out, in)
                        "bias": _bias(op.bias, op.kernel.shape[2])})


def _dense(node: Node, op: ops.Dense) -> Entry:
    meta = _meta(node, "dense", units=int(op.kernel.shape[1]))                           # (in, out)
    return Entry(meta, {"weights": Tensor(layouts.dense_oi(op.kernel), "OI"), "bias": _bias(op.bias, op.kernel.shape[1])})


def _prelu(node: Node, op: ops.PReLU) -> Entry:
    return Entry(_meta(node, "prelu", shared_axes=op.shared_axes),
                 {"weights": Tensor(op.alpha.astype(np.float32), "HWC")})


def _pool(node: Node, op: ops.Pool2D) -> Entry:
    pad = _pad(op.pad)
    return Entry(_meta(node, f"{op.mode}_pool2d", pool_size=list(op.size), strides=list(op.strides),
                       padding=op.padding, pad=pad, offset=_offset(op.size, op.strides, (1, 1), pad)))


def _batch_norm(node: Node, op: ops.BatchNorm) -> Entry:
    raise ExportError(f"expected BatchNormalization over the channel axis, received axis {op.axis}")


def _simple(kind: str | Callable[[Any], str], **fields: Callable[[Any], Any]) -> Callable[[Node, ops.Op], Entry]:
    """An entry without tensors: its type, and ``fields`` read off the operation."""
    def emit(node: Node, op: ops.Op) -> Entry:
        name = kind(op) if callable(kind) else kind
        return Entry(_meta(node, name, **{k: f(op) for k, f in fields.items()}))
    return emit


EMITTERS: dict[type, Callable[[Node, Any], Entry]] = {
    ops.Conv2D: _conv2d,
    ops.DepthwiseConv2D: _depthwise,
    ops.Conv2DTranspose: _transpose,
    ops.Dense: _dense,
    ops.PReLU: _prelu,
    ops.Pool2D: _pool,
    ops.BatchNorm: _batch_norm,
    ops.GlobalPool2D: _simple(lambda op: f"global_{op.mode}_pool2d", keepdims=lambda op: op.keepdims),
    ops.Pad: _simple("zero_padding2d", pad=lambda op: list(op.pad)),
    ops.Crop: _simple("cropping2d", crop=lambda op: list(op.crop)),
    ops.Resize: _simple("upsampling2d", size=lambda op: list(op.size), interpolation=lambda op: op.interpolation),
    ops.Elementwise: _simple(lambda op: op.mode),
    ops.Concat: _simple("concatenate", axis=lambda op: op.axis),
    ops.Flatten: _simple("flatten"),
    ops.Reshape: _simple("reshape", target_shape=lambda op: list(op.target)),
    ops.Softmax: _simple("softmax", axis=lambda op: op.axis),
    ops.SpaceToDepth: _simple("space_to_depth", block_size=lambda op: op.block),
    ops.Rescaling: _simple("rescaling", scale=lambda op: op.scale, offset=lambda op: op.offset),
    ops.Activation: _simple("activation"),
    ops.Opaque: _simple("keras_layer", class_name=lambda op: op.class_name, config=lambda op: op.config),
}


def emit(graph: Graph, dtype: str = "float32") -> list[Entry]:
    """Manifest entries of every node, in topological order. ``output_of`` names the original
    layer whose output the entry reproduces (for layer-by-layer comparisons); float16 exports
    check each entry's weights (range, flush to zero, subnormal) as they are emitted."""
    entries = []
    for node in graph:
        try:
            entry = EMITTERS[type(node.op)](node, node.op)
            entry.meta["output_of"] = graph.output_of(node.name)
            weights = entry.tensors.get("weights")
            if dtype == "float16" and weights is not None and isinstance(weights.array, Deferred):
                entry.meta["float16"] = None             # known once written (targets/mps/stream)
            elif dtype == "float16" and weights is not None:
                entry.half = stats = half_stats(node.name, weights.array)
                entry.meta["float16"] = {"flushed_to_zero": stats.flushed, "subnormal": stats.subnormal}
            entries.append(entry)
        except ExportError as err:
            raise err.at(layer=node.name)
    return entries
